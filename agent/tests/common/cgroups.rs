//! A real cgroup v2 root for one test, where the host offers one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::cgroup::{cgroup2_mounts, read_event};

use super::is_root;

/// A real cgroup root for one test, removed (with everything in it) on drop.
pub struct RealRoot {
    pub root: PathBuf,
}

impl RealRoot {
    pub fn probe(test: &str) -> Option<Self> {
        if !is_root() {
            super::skip(test, "not running as root");
            return None;
        }
        let mounts = cgroup2_mounts();
        if mounts.is_empty() {
            super::skip(test, "no cgroup2 filesystem in /proc/mounts");
            return None;
        }
        for m in &mounts {
            let root = m.join(format!("npanel-test-{test}-{}", std::process::id()));
            match std::fs::create_dir(&root) {
                Ok(()) => {
                    eprintln!("{test}: using real cgroup2 root {}", root.display());
                    return Some(Self { root });
                }
                Err(e) => eprintln!("{test}: cannot mkdir under {}: {e}", m.display()),
            }
        }
        super::skip(
            test,
            &format!("no cgroup2 mount lets us create a cgroup ({mounts:?})"),
        );
        None
    }
}

pub fn kill_and_remove(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                kill_and_remove(&e.path());
            }
        }
    }
    let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        if let Ok(p) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in p.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while read_event(dir, "populated") == Some(true) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for RealRoot {
    fn drop(&mut self) {
        kill_and_remove(&self.root);
        if self.root.exists() {
            eprintln!("WARNING: could not remove {}", self.root.display());
        }
    }
}
