//! glibc malloc, tuned for a long-running server.
//!
//! With glibc's defaults, `serve`'s RSS climbed in steps over an hour of steady load (+11.3 %
//! and +7.8 % in two 1-hour soaks, `loadtests/CHAOS.md`): up to 8 arenas per core, each keeping
//! its high-water mark, and a mmap threshold that rises after every large free, so that later
//! large buffers land in the arenas and fragment them. Two arenas and fixed 128 KiB mmap and
//! trim thresholds held it flat, and lower than mimalloc, which was soaked beside it.
//! `GLIBC_TUNABLES`, when set, is the operator's and wins.

/// Apply the settings. Call it first thing in `main`, before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() {
    use nix::libc::{mallopt, M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD};
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    // SAFETY: mallopt only sets allocator parameters, and nothing else allocates concurrently
    // this early.
    #[allow(unsafe_code)]
    unsafe {
        mallopt(M_ARENA_MAX, 2);
        mallopt(M_MMAP_THRESHOLD, 128 * 1024);
        mallopt(M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// Other targets keep their allocator's defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}
