//! A real `npanel serve` for the load drivers: release binary, a temp data dir (or one the
//! driver prepared), a fresh queue name on `REDIS_URL`, stopped with SIGTERM on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, npanel_bin};

/// The drivers' HTTP connection pool: [`ws::client::pool`], shared by every driver's requests
/// (through [`ws::client::HttpClient::with_pool`] or [`crate::procs::request`]).
pub type Http = ws::client::Pool;

/// [`ws::client::pool`]: many idle connections per host, no Nagle delay, idle connections
/// closed after 15 s as a browser's or a proxy's are (without the pool's timer they were never
/// reaped, so the server's open fds followed the highest concurrency the driver ever reached,
/// which a soak then read as a leak).
pub fn http() -> Http {
    ws::client::pool()
}

/// `npanel serve` under test, stopped on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// The environment it was started with (for `npanel` commands against it).
    pub env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
}

impl Server {
    /// Runs `npanel ARGS` with the server's environment.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new(npanel_bin());
        c.args(args);
        clean_env(&mut c, &self.env);
        c.output().expect("run npanel")
    }

    /// An admin token for this server.
    pub fn admin_token(&self) -> String {
        let out = self.command(&["token", "--role", "admin", "--ttl", "2h"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// `c` without the caller's `NPANEL_*`, `RUST_LOG` and `DATABASE_URL`, with `env` instead.
pub fn clean_env(c: &mut Command, env: &[(String, String)]) {
    for (k, _) in std::env::vars() {
        if k.starts_with("NPANEL_") || k == "RUST_LOG" || k == "DATABASE_URL" {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
}

/// Starts `npanel serve` in a new temp data dir and waits for `/readyz`.
pub async fn start(http: &Http) -> Server {
    start_in(http, tempfile::tempdir().expect("temp dir"), &[]).await
}

/// Starts `npanel serve` with `dir` as its data dir and `extra` environment, and waits for
/// `/readyz`.
pub async fn start_in(http: &Http, dir: tempfile::TempDir, extra: &[(&str, &str)]) -> Server {
    let port = free_port();
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut env: Vec<(String, String)> = vec![
        ("NPANEL_LISTEN".into(), format!("127.0.0.1:{port}")),
        ("NPANEL_DATA_DIR".into(), dir.path().display().to_string()),
        ("REDIS_URL".into(), redis),
        (
            "NPANEL_QUEUE__NAME".into(),
            format!("load-{}", ulid::Ulid::new()),
        ),
        ("NPANEL_WORKERS__SHUTDOWN_GRACE_SECS".into(), "2".into()),
        ("NPANEL_LOG".into(), "warn".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let logf = std::fs::File::create(dir.path().join("serve.log")).expect("log");
    let mut cmd = Command::new(npanel_bin());
    cmd.arg("serve")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("log"))
        .stderr(logf);
    clean_env(&mut cmd, &env);
    let child = cmd.spawn().expect("start npanel serve");
    let s = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        env,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = ws::client::HttpClient::with_pool(&s.base, None, http.clone())
        .expect("an http:// base")
        .with_timeout(Duration::from_secs(2));
    loop {
        if let Ok(r) = client.request("GET", "/readyz", &[], None).await {
            if r.status == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "npanel serve did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s
}
