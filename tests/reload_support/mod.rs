//! Shared by `tests/reload*.rs` and `tests/config_versions.rs`: a real `npanel serve` whose
//! whole log is kept (reloads are observed through it), started either on its own port or on a
//! listening socket passed the way systemd passes one (fd 3, `LISTEN_FDS=1`, `LISTEN_PID` = the
//! server's own pid), and HTTP over ws::client (one connection per request).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_npanel");

/// A config file for a test: its own data dir and queue on the tests' Redis. `extra` is TOML
/// appended (sections of its own).
pub fn config_text(data: &Path, queue: &queue::QueueConfig, top: &str, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{top}\n[scheduler]\nenabled = false\n\n[host]\ncgroups = false\n\n[queue]\nname = \"{}\"\nredis_url = \"{}\"\n{extra}",
        data.display(),
        queue.name,
        queue.redis_url
    )
}

/// `npanel` with nothing of the caller's environment that would change its configuration.
pub fn npanel() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("NPANEL_") || k == "REDIS_URL" || k == "DATABASE_URL" || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

/// Run `npanel --config <config> <args>`.
pub fn run(config: &Path, args: &[&str]) -> Output {
    npanel()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// stdout and stderr of `o`.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An admin token for the service of `config`.
pub fn admin_token(config: &Path) -> String {
    let o = run(config, &["token", "--role", "admin", "--subject", "test"]);
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A running `npanel serve`, killed on drop; every log line kept.
pub struct Serve {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub addr: SocketAddr,
    /// Its log has been read to the end (the process closed its stderr).
    log_read: Arc<AtomicBool>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// `npanel --config <config> serve`; on `socket` (as systemd passes one) when given.
    pub fn start(config: &Path, socket: Option<&TcpListener>) -> Serve {
        let mut s = Serve::spawn(config, socket);
        s.wait_listening();
        s
    }

    /// Wait for "API listening on" and note the address.
    pub fn wait_listening(&mut self) {
        let i = self.wait_line(0, "API listening on ", Duration::from_secs(60));
        let line = self.log.lock().unwrap()[i].clone();
        let url = &line[line.find("http://").unwrap() + 7..];
        self.addr = url.split_whitespace().next().unwrap().parse().unwrap();
    }

    /// As [`Serve::start`], without waiting for it to listen.
    pub fn spawn(config: &Path, socket: Option<&TcpListener>) -> Serve {
        let mut c = match socket {
            None => {
                let mut c = npanel();
                c.arg("--config").arg(config).arg("serve");
                c
            }
            Some(l) => {
                // What systemd does between fork and exec, in sh: the socket (given as stdin)
                // moved to fd 3, LISTEN_PID set to the pid that `exec` keeps.
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg("exec 3<&0 0</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$@\"")
                    .arg("sh")
                    .arg(BIN)
                    .arg("--config")
                    .arg(config)
                    .arg("serve")
                    .stdin(Stdio::from(std::os::fd::OwnedFd::from(
                        l.try_clone().unwrap(),
                    )));
                for (k, _) in std::env::vars() {
                    if k.starts_with("NPANEL_")
                        || k == "REDIS_URL"
                        || k == "DATABASE_URL"
                        || k == "RUST_LOG"
                    {
                        c.env_remove(k);
                    }
                }
                c
            }
        };
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start npanel serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let log_read = Arc::new(AtomicBool::new(false));
        let (l2, r2, stderr) = (log.clone(), log_read.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("NPANEL_TEST_SHOW_LOG").is_some() {
                    eprintln!("serve: {line}");
                }
                l2.lock().unwrap().push(line);
            }
            r2.store(true, Ordering::Release);
        });
        Serve {
            child,
            log,
            addr: "127.0.0.1:1".parse().unwrap(),
            log_read,
        }
    }

    /// Lines logged so far.
    pub fn lines(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Index of the first line at or after `from` containing `needle`; panics with the log
    /// after `within`, or once the process has exited and its whole log was read without it.
    pub fn wait_line(&mut self, from: usize, needle: &str, within: Duration) -> usize {
        let t = Instant::now();
        loop {
            // Known before the log is searched: a line logged just before the exit is in it
            // then (was: a 200 ms sleep after seeing the exit, and no second look).
            let exited =
                self.child.try_wait().unwrap().is_some() && self.log_read.load(Ordering::Acquire);
            {
                let log = self.log.lock().unwrap();
                if let Some(i) = log.iter().skip(from).position(|l| l.contains(needle)) {
                    return from + i;
                }
            }
            if exited || t.elapsed() > within {
                panic!(
                    "no log line with {needle:?} (exited: {exited}); log:\n{}",
                    self.log.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a line at or after `from` contains `needle`.
    pub fn logged_since(&self, from: usize, needle: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .skip(from)
            .any(|l| l.contains(needle))
    }

    /// Send `sig`.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

/// One request on a new connection (`connection: close`: across a restart each request meets
/// whichever server holds the socket then), with ws::client's blocking client: status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let body = match body {
        Some(b) if !b.is_empty() => Some(b.to_string()),
        _ if method == "POST" => Some(String::new()),
        _ => None,
    };
    let r = ws::client::blocking::HttpClient::new(&format!("http://{addr}"), None)
        .map_err(std::io::Error::other)?
        .with_token(token)
        .with_timeout(Duration::from_secs(60))
        .request(
            method,
            path,
            &[("connection", "close")],
            body.map(Into::into),
        )
        .map_err(std::io::Error::other)?;
    Ok((
        r.status.as_u16(),
        String::from_utf8_lossy(&r.body).into_owned(),
    ))
}

/// Raw on purpose: holds an upgraded connection open with no WebSocket client behind it (no
/// reads, no pongs), to fill `ws.max_connections` slots.
/// A WebSocket upgrade on `path`: the status of the answer and the open connection.
pub fn ws_upgrade(addr: SocketAddr, path: &str, token: &str) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone().unwrap());
    r.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    (status, s)
}

/// A scratch directory holding the data dir and the config file.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub config: PathBuf,
}

impl Dirs {
    pub fn new() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let config = tmp.path().join("npanel.toml");
        Dirs { tmp, data, config }
    }
}
