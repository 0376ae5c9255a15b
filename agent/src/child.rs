//! A restore's unpack in a child process of its own, inside the account's cgroup
//! (DESIGN §12: "it runs inside the account's cgroup").
//!
//! **Why a process.** A cgroup holds processes, not threads: to bound an unpack by the
//! account's limits and to stop it for sure, it must be a process. The agent (or the embedded
//! host) starts its own binary again with [`HELPER_ARG`]; the child is placed in
//! `<cgroup root>/<account>/job-<restore id>` between `fork` and `exec`, before it runs any of
//! its own code. The account's limits are set on the parent cgroup, so they bound the job; a
//! cancel writes `1` to the job cgroup's `cgroup.kill`, which kills every process in it — a
//! process that left its session with `setsid()` too — and nothing else of the account's
//! (its web server keeps running). Where no cgroup can be used, the child is still a process
//! of its own and a cancel sends it SIGKILL.
//!
//! **Protocol.** The parent writes one JSON [`ChildRequest`] on the child's stdin and closes
//! it. The child answers JSON lines on stdout: its counters every 100 ms, then one `done`
//! line with the outcome and the cgroup it ran in (read from `/proc/self/cgroup`, so the
//! placement is reported, not assumed). The child dies with the thread that started it
//! (`PR_SET_PDEATHSIG`), so an agent that dies leaves no unpack behind.

use std::ffi::{CString, OsStr};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::unpack::{unpack, UnpackError, UnpackOptions, UnpackProgress, Unpacked};

/// The first argument that makes an nPanel binary the unpack child instead of itself.
pub const HELPER_ARG: &str = "__npanel-unpack";

/// How often the child reports its counters.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Most bytes of the child's stderr kept for an error message.
const STDERR_TAIL: usize = 4096;

/// What the child is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildRequest {
    pub archive: PathBuf,
    pub home: PathBuf,
    pub meta: PathBuf,
    pub opts: UnpackOptions,
}

/// The counters of a running unpack, as the child reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    archive_read: u64,
    files: u64,
    bytes: u64,
    scan_read: u64,
    total_files: u64,
    total_bytes: u64,
    scanned: bool,
    last_file: Option<(String, u64)>,
}

/// One line from the child.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum ChildLine {
    Progress(Counters),
    Done {
        result: Result<Unpacked, Failure>,
        /// The child's cgroup v2 path (`/proc/self/cgroup`'s `0::` line).
        cgroup: Option<String>,
    },
}

/// An [`UnpackError`] that crosses the pipe.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Failure {
    TooLarge {
        limit: u64,
    },
    TooManyEntries {
        limit: u64,
    },
    Corrupt(String),
    Cancelled,
    Io {
        path: PathBuf,
        os: Option<i32>,
        message: String,
    },
}

impl From<UnpackError> for Failure {
    fn from(e: UnpackError) -> Self {
        match e {
            UnpackError::TooLarge { limit } => Failure::TooLarge { limit },
            UnpackError::TooManyEntries { limit } => Failure::TooManyEntries { limit },
            UnpackError::Corrupt(m) => Failure::Corrupt(m),
            UnpackError::Cancelled => Failure::Cancelled,
            UnpackError::Io { path, source } => Failure::Io {
                path,
                os: source.raw_os_error(),
                message: source.to_string(),
            },
        }
    }
}

impl From<Failure> for UnpackError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::TooLarge { limit } => UnpackError::TooLarge { limit },
            Failure::TooManyEntries { limit } => UnpackError::TooManyEntries { limit },
            Failure::Corrupt(m) => UnpackError::Corrupt(m),
            Failure::Cancelled => UnpackError::Cancelled,
            Failure::Io { path, os, message } => UnpackError::Io {
                path,
                source: match os {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::other(message),
                },
            },
        }
    }
}

/// Set by [`run_if_asked`]: this binary can be the child.
static CAN_BE_CHILD: AtomicBool = AtomicBool::new(false);

/// For `main` of every binary that may be the helper: if the first argument is
/// [`HELPER_ARG`], be the unpack child and exit; otherwise remember that this binary can be
/// the child ([`default_helper`]) and return.
pub fn run_if_asked() {
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(HELPER_ARG)) {
        std::process::exit(child_main());
    }
    CAN_BE_CHILD.store(true, Ordering::Relaxed);
}

/// The running binary (`/proc/self/exe`: the same build even if the file was replaced by an
/// upgrade since) when it called [`run_if_asked`]; `None` otherwise (a test harness).
pub fn default_helper() -> Option<PathBuf> {
    CAN_BE_CHILD
        .load(Ordering::Relaxed)
        .then(|| PathBuf::from("/proc/self/exe"))
}

fn child_main() -> i32 {
    let mut input = String::new();
    if let Err(e) = io::stdin().take(1 << 20).read_to_string(&mut input) {
        eprintln!("unpack child: cannot read its request: {e}");
        return 2;
    }
    let req: ChildRequest = match serde_json::from_str(&input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("unpack child: bad request: {e}");
            return 2;
        }
    };
    let progress = Arc::new(UnpackProgress::default());
    let last_file = Arc::new(Mutex::new(None));
    let finished = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(io::stdout()));
    let reporter = {
        let (progress, last_file, finished, out) = (
            progress.clone(),
            last_file.clone(),
            finished.clone(),
            out.clone(),
        );
        thread::spawn(move || {
            while !finished.load(Ordering::Relaxed) {
                thread::sleep(REPORT_EVERY);
                let line = ChildLine::Progress(counters(&progress, &last_file));
                if send(&out, &line).is_err() {
                    // The parent is gone: nobody waits for this unpack any more.
                    std::process::exit(3);
                }
            }
        })
    };
    let never = AtomicBool::new(false);
    let result = unpack(
        &req.archive,
        &req.home,
        &req.meta,
        &req.opts,
        &progress,
        &never,
        &mut |path, n| {
            *last_file.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((path.display().to_string(), n));
        },
    );
    finished.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        });
    let lines = [
        ChildLine::Progress(counters(&progress, &last_file)),
        ChildLine::Done {
            result: result.map_err(Failure::from),
            cgroup,
        },
    ];
    for line in &lines {
        if send(&out, line).is_err() {
            return 3;
        }
    }
    0
}

fn counters(p: &UnpackProgress, last_file: &Mutex<Option<(String, u64)>>) -> Counters {
    Counters {
        archive_read: p.archive_read.load(Ordering::Relaxed),
        files: p.files.load(Ordering::Relaxed),
        bytes: p.bytes.load(Ordering::Relaxed),
        scan_read: p.scan_read.load(Ordering::Relaxed),
        total_files: p.total_files.load(Ordering::Relaxed),
        total_bytes: p.total_bytes.load(Ordering::Relaxed),
        scanned: p.scanned.load(Ordering::Relaxed),
        last_file: last_file.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}

fn send(out: &Mutex<io::Stdout>, line: &ChildLine) -> io::Result<()> {
    let mut text = serde_json::to_string(line).map_err(io::Error::other)?;
    text.push('\n');
    let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// A started child, for a cancel to kill.
#[derive(Debug, Clone)]
pub struct ChildHandle {
    pub pid: i32,
    /// Its job cgroup, when it runs in one.
    pub cgroup: Option<PathBuf>,
}

/// How a child unpack ended.
#[derive(Debug)]
pub struct ChildOutcome {
    pub result: Result<Unpacked, UnpackError>,
    /// The cgroup the child reported it ran in.
    pub cgroup: Option<String>,
}

/// Runs `req` in a child (`helper` with [`HELPER_ARG`]), placed in `cgroup` when given. The
/// child's counters go into `progress` and `last_file` as they come. `started` is told the
/// child's handle as soon as it runs, and told `None` before the child is reaped (so a pid
/// is never signalled after the kernel may have reused it). A child that ends without its
/// `done` line (killed, crashed) is an error that says how it ended; `cancelled` tells a
/// kill that was asked for from one that was not.
pub fn run(
    helper: &Path,
    cgroup: Option<&Path>,
    req: &ChildRequest,
    progress: &UnpackProgress,
    last_file: &Mutex<Option<(String, u64)>>,
    started: &dyn Fn(Option<ChildHandle>),
    cancelled: &AtomicBool,
) -> Result<ChildOutcome, io::Error> {
    let mut cmd = Command::new(helper);
    cmd.arg(HELPER_ARG)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let procs = match cgroup {
        Some(dir) => Some(
            CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                .map_err(io::Error::other)?,
        ),
        None => None,
    };
    let parent = nix::unistd::getpid();
    // SAFETY: between fork and exec only async-signal-safe calls are made (prctl, getppid,
    // open, write, close) on memory allocated before the fork.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if nix::unistd::getppid() != parent {
                // The parent died before the unpack started (no allocation here: after fork).
                return Err(nix::errno::Errno::ESRCH.into());
            }
            if let Some(procs) = &procs {
                let fd = nix::fcntl::open(
                    procs.as_c_str(),
                    nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )?;
                // "0" moves the writing process: this child, before it runs any of its code.
                nix::unistd::write(&fd, b"0")?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot start the unpack process {}{}: {e}",
                helper.display(),
                cgroup
                    .map(|c| format!(" in cgroup {}", c.display()))
                    .unwrap_or_default()
            ),
        )
    })?;
    started(Some(ChildHandle {
        pid: child.id() as i32,
        cgroup: cgroup.map(Path::to_path_buf),
    }));
    let stderr_tail = {
        let mut err = child.stderr.take().expect("stderr is piped");
        thread::spawn(move || {
            let mut tail = Vec::new();
            let mut buf = [0u8; 1024];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
            String::from_utf8_lossy(&tail).trim().to_string()
        })
    };
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let wrote = serde_json::to_vec(req)
        .map_err(io::Error::other)
        .and_then(|body| stdin.write_all(&body));
    drop(stdin);
    let mut done = None;
    if wrote.is_ok() {
        let reader = BufReader::new(child.stdout.take().expect("stdout is piped"));
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            match serde_json::from_slice::<ChildLine>(&line) {
                Ok(ChildLine::Progress(c)) => store(progress, last_file, c),
                Ok(ChildLine::Done { result, cgroup }) => done = Some((result, cgroup)),
                Err(e) => tracing::warn!("unpack child sent a line that is not JSON: {e}"),
            }
        }
    }
    started(None);
    let status = child.wait()?;
    let stderr = stderr_tail.join().unwrap_or_default();
    if let Some((result, cgroup)) = done {
        return Ok(ChildOutcome {
            result: result.map_err(UnpackError::from),
            cgroup,
        });
    }
    if cancelled.load(Ordering::Relaxed) {
        return Ok(ChildOutcome {
            result: Err(UnpackError::Cancelled),
            cgroup: None,
        });
    }
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(9)) => {
            "signal 9 (SIGKILL: the account's memory limit, or the kernel's OOM killer)".into()
        }
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "an unknown status".to_string(),
    };
    let stderr = if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    };
    Err(io::Error::other(format!(
        "the unpack process ended with {how} before it answered{stderr}"
    )))
}

fn store(p: &UnpackProgress, last_file: &Mutex<Option<(String, u64)>>, c: Counters) {
    p.archive_read.store(c.archive_read, Ordering::Relaxed);
    p.files.store(c.files, Ordering::Relaxed);
    p.bytes.store(c.bytes, Ordering::Relaxed);
    p.scan_read.store(c.scan_read, Ordering::Relaxed);
    p.total_files.store(c.total_files, Ordering::Relaxed);
    p.total_bytes.store(c.total_bytes, Ordering::Relaxed);
    p.scanned.store(c.scanned, Ordering::Relaxed);
    if c.last_file.is_some() {
        *last_file.lock().unwrap_or_else(|p| p.into_inner()) = c.last_file;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_cross_the_pipe_with_their_meaning() {
        let cases = [
            UnpackError::TooLarge { limit: 5 },
            UnpackError::TooManyEntries { limit: 7 },
            UnpackError::Corrupt("cut short".into()),
            UnpackError::Cancelled,
            UnpackError::Io {
                path: "/x".into(),
                source: io::Error::from_raw_os_error(28),
            },
        ];
        for e in cases {
            let before = e.to_string();
            let text = serde_json::to_string(&Failure::from(e)).unwrap();
            let back: UnpackError = serde_json::from_str::<Failure>(&text).unwrap().into();
            assert_eq!(back.to_string(), before);
        }
    }
}
