//! Test support (feature `test-support`): a real Redis for tests (DESIGN §8).
//!
//! `REDIS_URL` when set; otherwise one private `redis-server` per test binary, on a Unix socket
//! in a temp dir, started on first use. It dies with the test process: it runs under a small
//! `sh` that waits on a pipe from us and kills the server when the pipe closes. Each test gets
//! its own queue name, so nothing ever needs a FLUSHALL.

use crate::{Job, JobStatus, Queue, QueueConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A redis-server owned by the test process.
pub struct PrivateRedis {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Start a new private server on a Unix socket in a fresh temp dir.
    pub fn start() -> PrivateRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = PrivateRedis { dir, child: None };
        r.restart();
        r
    }

    /// Socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// `redis+unix://` URL.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Stop the server (SIGKILL, as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Closing the pipe makes the guard shell kill the server.
            drop(c.stdin.take());
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.socket().exists() && Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// (Re)start the server on the same socket.
    pub fn restart(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(self.socket());
        let bin = std::env::var("NPANEL_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let dir = self.dir.path();
        let script = format!(
            "{bin} --port 0 --unixsocket {sock} --unixsocketperm 700 --save '' --appendonly no \
             --dir {dir} --logfile {dir}/redis.log & pid=$!; read _; kill -9 $pid",
            sock = self.socket().display(),
            dir = dir.display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run sh for redis-server");
        self.child = Some(child);
        wait_for_socket(&self.socket(), dir);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for_socket(sock: &Path, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) {
            if s.write_all(b"PING\r\n").is_ok() {
                return;
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            panic!(
                "redis-server did not start on {} (is redis-server installed? set REDIS_URL to use \
                 another). Log:\n{log}",
                sock.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// URL of the Redis shared by the tests of this binary.
pub fn redis_url() -> String {
    static SHARED: OnceLock<(String, Option<PrivateRedisHolder>)> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var("REDIS_URL") {
            Ok(u) if !u.is_empty() => (u, None),
            _ => {
                let r = PrivateRedis::start();
                (r.url(), Some(PrivateRedisHolder(r)))
            }
        })
        .0
        .clone()
}

struct PrivateRedisHolder(#[allow(dead_code)] PrivateRedis);

/// A queue config on the shared test Redis with a queue name of its own.
pub fn config(hint: &str) -> QueueConfig {
    QueueConfig {
        redis_url: redis_url(),
        name: format!("t-{hint}-{}", ulid::Ulid::new()),
        ..QueueConfig::default()
    }
}

/// Poll until job `id` has status `want`; panics with the job's state after `within`.
pub async fn wait_for_status(q: &Queue, id: &str, want: JobStatus, within: Duration) -> Job {
    let t = Instant::now();
    loop {
        let j = q.get(id).await.expect("job readable");
        if j.status == want {
            return j;
        }
        assert!(
            t.elapsed() < within,
            "job {id} is {} not {want} after {within:?}: {j:?}",
            j.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
