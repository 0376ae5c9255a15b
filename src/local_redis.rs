//! Finding a Redis for `npanel serve` (DESIGN §8): `REDIS_URL` (or `queue.redis_url`) when set;
//! else one answering on `local_redis` (127.0.0.1:6379); else a private `redis-server` from
//! `PATH`, on a Unix socket under the data dir (loopback only, append-only file on), stopped
//! on exit; else one sentence saying how to get one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Why no Redis could be had.
#[derive(Debug, thiserror::Error)]
pub enum LocalRedisError {
    /// Nothing to connect to and nothing to start.
    #[error("no Redis found: set REDIS_URL (e.g. REDIS_URL=redis://127.0.0.1:6379), or install redis-server (Debian/Ubuntu: apt-get install redis-server) so npanel serve can start a private one")]
    NotFound,
    /// redis-server was found but did not come up.
    #[error("could not start redis-server: {0}")]
    Start(String),
}

/// A private redis-server we started; stopped (SIGTERM, then wait) by [`LocalRedis::stop`] or
/// killed on drop.
#[derive(Debug)]
pub struct LocalRedis {
    child: Child,
    /// Its URL.
    pub url: String,
}

impl LocalRedis {
    /// Stop it cleanly.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The Redis URL to use, and the private server if we started one.
pub async fn resolve(
    configured: &str,
    probe: &str,
    data_dir: &Path,
    may_start: bool,
) -> Result<(String, Option<LocalRedis>), LocalRedisError> {
    if !configured.is_empty() {
        return Ok((configured.to_string(), None));
    }
    let answers = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(probe),
    )
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false);
    if answers {
        return Ok((format!("redis://{probe}"), None));
    }
    if !may_start {
        return Err(LocalRedisError::NotFound);
    }
    let Some(bin) = find_in_path("redis-server") else {
        return Err(LocalRedisError::NotFound);
    };
    let started = start(&bin, data_dir).await?;
    Ok((started.url.clone(), Some(started)))
}

/// The private redis-server a running `npanel serve` started under `data_dir`, if one answers
/// on its socket (commands run next to `serve`, like `npanel token --login-link`, use it).
pub async fn running_private(data_dir: &Path) -> Option<String> {
    let sock = data_dir.join("redis").join(SOCKET);
    let answers = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::UnixStream::connect(&sock),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let sock = sock.canonicalize().ok()?;
    answers.then(|| format!("redis+unix://{}", sock.display()))
}

/// The socket file of the private server, in `<data_dir>/redis/`.
const SOCKET: &str = "redis.sock";

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

async fn start(bin: &Path, data_dir: &Path) -> Result<LocalRedis, LocalRedisError> {
    let dir = data_dir.join("redis");
    std::fs::create_dir_all(&dir)
        .map_err(|e| LocalRedisError::Start(format!("{}: {e}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| LocalRedisError::Start(e.to_string()))?;
    let sock = dir.join(SOCKET);
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(bin)
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--unixsocketperm",
            "700",
        ])
        .arg("--unixsocket")
        .arg(&sock)
        .arg("--dir")
        .arg(&dir)
        .args(["--appendonly", "yes", "--save", ""])
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| LocalRedisError::Start(format!("{}: {e}", bin.display())))?;
    let url = format!("redis+unix://{}", sock.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::UnixStream::connect(&sock).await.is_ok() {
            tracing::info!(socket = %sock.display(), "Started a private redis-server.");
            return Ok(LocalRedis { child, url });
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            let last = log.lines().last().unwrap_or("no log").to_string();
            return Err(LocalRedisError::Start(format!(
                "it did not listen on {} within 10 s ({last})",
                sock.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
