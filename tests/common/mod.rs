//! Shared by the binary's integration tests: a real `npanel serve` on a free port.
#![allow(dead_code)]

use queue::testing;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_npanel");

/// A running `npanel serve`, killed on drop.
pub struct Serve(pub Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `npanel serve` on 127.0.0.1:0 with its data in `data` (the embedded host default
/// under it) and a fresh queue name (`hint`); returns it and its base URL (from its log).
pub fn serve(data: &Path, hint: &str) -> (Serve, String) {
    let (srv, url, _) = serve_queue(data, hint);
    (srv, url)
}

/// [`serve`], and the queue settings (Redis URL, queue name) it runs with, for tests that
/// reach its Redis the way a command on the same host would.
pub fn serve_queue(data: &Path, hint: &str) -> (Serve, String, queue::QueueConfig) {
    let cfg = testing::config(hint);
    let (srv, url) = serve_with(data, &cfg, &[]);
    (srv, url, cfg)
}

/// `npanel serve` on the queue `cfg` (a restart uses the same one) with `extra` environment.
pub fn serve_with(
    data: &Path,
    cfg: &queue::QueueConfig,
    extra: &[(&str, &str)],
) -> (Serve, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("REDIS_URL", &cfg.redis_url)
        .env("NPANEL_QUEUE__NAME", &cfg.name)
        .env("NPANEL_SCHEDULER__ENABLED", "false")
        // The machine's cgroup tree is left alone (the agent's own tests cover cgroups).
        .env("NPANEL_HOST__CGROUPS", "false")
        .env("NPANEL_LOG", "info")
        .env_remove("NPANEL_API__JWT_SECRET")
        .env_remove("DATABASE_URL")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start npanel serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("API listening on ") {
                let url = line[i + 17..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string();
                let _ = tx.send(url);
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("serve logged its address");
    (Serve(child), url)
}

pub mod browser;
