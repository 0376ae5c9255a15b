//! Helpers shared by the integration tests: temp dirs shaped like cgroupfs,
//! agent processes with their own config and socket, raw socket I/O.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod archive;
pub mod cgroups;

pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_npanel-agent");
pub const WATCHDOG_BIN: &str = env!("CARGO_BIN_EXE_npanel-watchdog");

/// Creates a directory shaped like a cgroup v2 root with every controller
/// available and enabled, plus cgroup.freeze and cgroup.kill.
pub fn fake_cgroup_root(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
    std::fs::write(dir.join("cgroup.subtree_control"), "cpu io memory pids\n").unwrap();
    std::fs::write(dir.join("cgroup.freeze"), "0\n").unwrap();
    std::fs::write(dir.join("cgroup.kill"), "").unwrap();
}

/// Files the kernel would create in an account cgroup.
pub fn fake_account_cgroup(dir: &Path, populated: bool, with_kill: bool) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cgroup.freeze"), "0\n").unwrap();
    std::fs::write(
        dir.join("cgroup.events"),
        format!("populated {}\nfrozen 0\n", u8::from(populated)),
    )
    .unwrap();
    std::fs::write(dir.join("cgroup.procs"), "").unwrap();
    if with_kill {
        std::fs::write(dir.join("cgroup.kill"), "").unwrap();
    }
}

/// A test sandbox: temp dir with a fake cgroup root, a home root and a config.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("npanel-agent-test")
            .tempdir()
            .unwrap();
        // traversable, so tests running a client as another uid can reach the socket
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        fake_cgroup_root(&dir.path().join("cg"));
        std::fs::create_dir(dir.path().join("home")).unwrap();
        Self { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn socket(&self) -> PathBuf {
        self.path().join("agent.sock")
    }
    pub fn cgroot(&self) -> PathBuf {
        self.path().join("cg")
    }
    pub fn home(&self) -> PathBuf {
        self.path().join("home")
    }
    pub fn config_path(&self) -> PathBuf {
        self.path().join("agent.toml")
    }
    /// Writes the config file: base settings for this sandbox plus `extra`
    /// (TOML top-level keys; `[limits]` etc. may follow).
    pub fn write_config(&self, extra: &str) {
        // top-level keys must come before any [table] of `extra`
        let text = format!(
            "socket_path = {:?}\ncgroup_root = {:?}\nhome_root = {:?}\nhome_device = \"8:0\"\n{extra}\n",
            self.socket(),
            self.cgroot(),
            self.home()
        );
        std::fs::write(self.config_path(), text).unwrap();
    }
}

/// A running `npanel-agent`, killed on drop.
pub struct AgentProc {
    pub child: Child,
    pub socket: PathBuf,
    tap: Option<StderrTap>,
}

/// A process's stderr, collected by a thread as it is written.
#[derive(Clone)]
pub struct StderrTap {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StderrTap {
    pub fn new(mut from: impl std::io::Read + Send + 'static) -> Self {
        let tap = Self {
            text: Default::default(),
            closed: Default::default(),
        };
        let t = tap.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => t
                        .text
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            t.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        tap
    }
    /// All written so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }
    /// Waits (up to 10 s) until the writer has closed its end.
    pub fn wait_closed(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.closed.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl AgentProc {
    pub fn start(sb: &Sandbox) -> Self {
        Self::start_with_env(sb, &[])
    }
    pub fn start_with_env(sb: &Sandbox, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(AGENT_BIN);
        cmd.arg("--config")
            .arg(sb.config_path())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut me = Self {
            child,
            socket: sb.socket(),
            tap: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = me.child.try_wait().unwrap() {
                panic!("agent exited at start ({st}): {}", me.stderr());
            }
            if let Ok(v) = try_request(
                &me.socket,
                r#"{"v":1,"op":"ping"}"#,
                Duration::from_millis(500),
            ) {
                if v.get("ok").is_some() {
                    return me;
                }
            }
            assert!(
                Instant::now() < deadline,
                "agent did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    /// What the agent wrote to stderr (once it has exited).
    fn stderr(&mut self) -> String {
        if let Some(tap) = &self.tap {
            tap.wait_closed();
            return tap.text();
        }
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        err
    }
    /// Reads the agent's stderr as it comes, to wait for a line it logs (an event) instead of
    /// for some time; [`Self::wait_exit`] still returns all of it.
    pub fn tap_stderr(&mut self) -> StderrTap {
        let tap = StderrTap::new(self.child.stderr.take().expect("stderr not taken yet"));
        self.tap = Some(tap.clone());
        tap
    }
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }
    /// Waits for exit (with a deadline) and returns the status and stderr.
    pub fn wait_exit(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One connection, one request line, one answer.
pub fn try_request(socket: &Path, line: &str, timeout: Duration) -> std::io::Result<Value> {
    let mut conn = Conn::open_timeout(socket, timeout)?;
    conn.send(line)
}

pub fn request(socket: &Path, line: &str) -> Value {
    try_request(socket, line, Duration::from_secs(10)).unwrap()
}

/// A connection for several request lines.
pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    pub fn open(socket: &Path) -> Self {
        Self::open_timeout(socket, Duration::from_secs(10)).unwrap()
    }
    pub fn open_timeout(socket: &Path, timeout: Duration) -> std::io::Result<Self> {
        let s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Self {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }
    pub fn send(&mut self, line: &str) -> std::io::Result<Value> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")?;
        self.read()
    }
    /// Write a line without waiting for the answer.
    pub fn send_only(&mut self, line: &str) -> std::io::Result<()> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")
    }
    pub fn read(&mut self) -> std::io::Result<Value> {
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        serde_json::from_str(&answer)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// The error code of an answer (panics on an ok answer).
pub fn error_code(v: &Value) -> String {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error answer, got {v}"))
        .to_string()
}

/// The ok body of an answer (panics on an error answer).
pub fn ok(v: &Value) -> &Value {
    v.get("ok")
        .unwrap_or_else(|| panic!("expected an ok answer, got {v}"))
}

/// A test that cannot run here: a SKIP line on a developer's machine, a failure in CI (`CI`
/// set, as `.ci/run` does), where the machine is meant to offer what the test needs.
pub fn skip(test: &str, why: &str) {
    assert!(
        std::env::var("CI").map_or(true, |v| v.is_empty()),
        "{test} cannot run in CI: {why}"
    );
    eprintln!("SKIP {test}: {why}");
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A sandbox whose config puts `host.root` in the temp dir (homes at `<root>/home`, like the
/// sandbox's home root).
pub fn host_sandbox(system_users: bool) -> Sandbox {
    let sb = Sandbox::new();
    sb.write_config(&format!(
        "[host]\nroot = {:?}\nsystem_users = {system_users}",
        sb.path()
    ));
    sb
}

/// Send one request (the protocol version is added) and read the answer.
pub fn send(agent: &AgentProc, v: Value) -> Value {
    let mut line = v;
    line["v"] = serde_json::json!(1);
    request(&agent.socket, &line.to_string())
}

/// Permission bits of `p` (not following a symlink).
pub fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Deletes the test user (and its group and home) however the test ends.
pub struct UserGuard(pub String);

impl Drop for UserGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .args(["-r", "-f", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::process::Command::new("groupdel")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}
