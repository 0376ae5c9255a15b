//! A restore whose process is SIGKILLed while it runs finishes on the retry, once and whole:
//! `npanel serve` (the embedded host, its unpack in a child process) restores an nPanel backup
//! of 160 MiB that does not compress, is killed as soon as the job is running (in its
//! `extracting` stage), and is started again on the same data dir and queue; the lease expires,
//! the reaper gives the job back, and the second attempt restores the home exactly — every
//! byte back, the file made after the backup gone, no staging left behind.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One request to `url` (`http://host:port`), the answer's status and JSON body (`null` when
/// not JSON).
fn http(url: &str, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let r = ws::client::blocking::HttpClient::new(url, Some(token.to_string()))
        .unwrap()
        .json(method, path, body)
        .unwrap();
    let json = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status.as_u16(), json)
}

fn token(data: &Path) -> String {
    let o = Command::new(BIN)
        .args(["token", "--role", "admin", "--data-dir"])
        .arg(data)
        .env_remove("NPANEL_API__JWT_SECRET")
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn wait_job(
    url: &str,
    tok: &str,
    id: &str,
    until: impl Fn(&Value) -> bool,
    limit: Duration,
) -> Value {
    let t0 = Instant::now();
    loop {
        let (_, j) = http(url, "GET", &format!("/api/jobs/{id}"), tok, None);
        if until(&j) {
            return j;
        }
        assert!(t0.elapsed() < limit, "job {id} never got there: {j}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A cheap, reproducible, incompressible stream of bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_restore_killed_while_it_runs_finishes_once_on_the_retry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = queue::testing::config("rkill");
    let env = [("NPANEL_QUEUE__LEASE_MS", "1500")];
    let (srv, url) = serve_with(&data, &cfg, &env);
    let tok = token(&data);

    let (s, r) = http(
        &url,
        "POST",
        "/api/packages",
        &tok,
        Some(&json!({"id": "big"})),
    );
    assert_eq!(s, 201, "{r}");
    let (s, r) = http(&url, "POST", "/api/packages/big/activate", &tok, None);
    assert_eq!(s, 200, "{r}");
    let (s, r) = http(
        &url,
        "POST",
        "/api/accounts",
        &tok,
        Some(&json!({"id": "kim", "package": "big", "domain": "kim.example"})),
    );
    assert_eq!(s, 202, "{r}");
    let job = r["job"]["id"].as_str().unwrap().to_string();
    wait_job(
        &url,
        &tok,
        &job,
        |j| j["status"] == "succeeded",
        Duration::from_secs(30),
    );

    // 160 files of 1 MiB that do not compress: long enough an extract to be killed in.
    let home = data.join("host/home/kim/public_html");
    for i in 0..160 {
        std::fs::write(home.join(format!("f{i:03}.bin")), noise(1 << 20, i)).unwrap();
    }
    let (s, r) = http(
        &url,
        "POST",
        "/api/jobs",
        &tok,
        Some(&json!({"kind": "backup", "payload": {"account": "kim"}, "account": "kim"})),
    );
    assert_eq!(s, 202, "{r}");
    let b = wait_job(
        &url,
        &tok,
        r["id"].as_str().unwrap(),
        |j| j["status"] == "succeeded",
        Duration::from_secs(120),
    );
    let archive = b["result"]["backup_location"].as_str().unwrap().to_string();
    // The home changes after the backup: the restore must put it back.
    for i in 0..160 {
        std::fs::remove_file(home.join(format!("f{i:03}.bin"))).unwrap();
    }
    std::fs::write(home.join("after.txt"), "not in the backup").unwrap();

    let (s, r) = http(
        &url,
        "POST",
        "/api/restore",
        &tok,
        Some(&json!({"archive": archive, "account": "kim"})),
    );
    assert_eq!(s, 202, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let seen = wait_job(
        &url,
        &tok,
        &id,
        |j| j["status"] == "running" || j["status"] == "succeeded",
        Duration::from_secs(60),
    );
    if seen["status"] == "succeeded" {
        eprintln!("the restore finished before it could be killed: the kill was not exercised");
        return;
    }
    // SIGKILL, as a crash would: the unpack child dies with it (PR_SET_PDEATHSIG).
    drop(srv);
    let (_srv, url) = serve_with(&data, &cfg, &env);
    let done = wait_job(
        &url,
        &tok,
        &id,
        |j| {
            matches!(
                j["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        },
        Duration::from_secs(120),
    );
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["attempts"].as_u64().unwrap() >= 2, "{done}");
    eprintln!(
        "killed at {}% of {}; attempt {} finished it",
        seen["progress_percent"], seen["current_stage"], done["attempts"]
    );
    // The home is the backup's, whole: every file back with its bytes, the later one gone.
    for i in 0..160 {
        let got = std::fs::read(home.join(format!("f{i:03}.bin"))).unwrap();
        assert!(got == noise(1 << 20, i), "f{i:03}.bin differs");
    }
    assert!(!home.join("after.txt").exists());
    let homes = data.join("host/home");
    let left: Vec<String> = std::fs::read_dir(&homes)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".npanel-restore-"))
        .collect();
    assert!(left.is_empty(), "stagings left behind: {left:?}");
}
