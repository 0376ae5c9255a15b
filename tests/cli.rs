//! The CLI against a live `npanel serve` process (real Redis, real workers, real sockets):
//! `token`, `jobs`, `admin`, and `watch` with its exit status.

use queue::testing;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_npanel");

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `npanel serve` on 127.0.0.1:0; returns it and its base URL (from its log).
fn serve(data: &Path) -> (Serve, String) {
    let cfg = testing::config("cli");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("REDIS_URL", &cfg.redis_url)
        .env("NPANEL_QUEUE__NAME", &cfg.name)
        .env("NPANEL_SCHEDULER__ENABLED", "false")
        .env("NPANEL_LOG", "info")
        .env_remove("NPANEL_API__JWT_SECRET")
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

fn npanel(args: &[&str], url: &str, token: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("NPANEL_URL", url)
        .env("NPANEL_TOKEN", token)
        .env("NPANEL_LOG", "warn")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn token(data: &Path, args: &[&str]) -> String {
    let o = Command::new(BIN)
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("NPANEL_API__JWT_SECRET")
        .env("NPANEL_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn enqueue(url: &str, tok: &str, payload: &str, extra: &[&str]) -> String {
    let mut args = vec!["jobs", "enqueue", "diagnostic", "--payload", payload];
    args.extend_from_slice(extra);
    let o = npanel(&args, url, tok);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn cli_against_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_srv, url) = serve(&data);
    // The secret was generated at first start, private to its owner.
    let secret = data.join("jwt.secret");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let admin = token(&data, &["--role", "admin", "--ttl", "10m"]);
    assert!(!text(&npanel(&["config"], &url, &admin))
        .contains(&std::fs::read_to_string(&secret).unwrap()));

    // watch: a job that succeeds exits 0 and shows progress lines.
    let ok = enqueue(&url, &admin, r#"{"duration_ms": 1200, "steps": 4}"#, &[]);
    let o = npanel(&["watch", &ok], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("{ok} succeeded")),
        "{}",
        text(&o)
    );

    // watch: a job that fails for good exits non-zero.
    let bad = enqueue(
        &url,
        &admin,
        r#"{"duration_ms": 100, "steps": 1, "fail_attempts": 5}"#,
        &["--max-attempts", "1"],
    );
    let o = npanel(&["watch", &bad], &url, &admin);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("{bad} failed")), "{}", text(&o));

    // watch: a cancelled job exits non-zero too.
    let long = enqueue(&url, &admin, r#"{"duration_ms": 20000, "steps": 20}"#, &[]);
    let watcher = Command::new(BIN)
        .args(["watch", &long])
        .env("NPANEL_URL", &url)
        .env("NPANEL_TOKEN", &admin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let o = npanel(&["jobs", "cancel", &long], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));
    let o = watcher.wait_with_output().unwrap();
    assert!(!o.status.success(), "{}", text(&o));

    // jobs list / show.
    let o = npanel(&["jobs", "list", "--kind", "diagnostic"], &url, &admin);
    assert!(o.status.success());
    for id in [&ok, &bad, &long] {
        assert!(text(&o).contains(id.as_str()));
    }
    let o = npanel(&["jobs", "show", &ok], &url, &admin);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["progress_percent"], 100.0);

    // jobs retry: the failed one runs again.
    let o = npanel(&["jobs", "retry", &bad], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));

    // admin: concurrency set/show, pause/resume, queue view.
    let o = npanel(
        &["admin", "concurrency", "set", "diagnostic", "4"],
        &url,
        &admin,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = npanel(&["admin", "concurrency"], &url, &admin);
    let line = text(&o)
        .lines()
        .find(|l| l.starts_with("diagnostic"))
        .unwrap()
        .to_string();
    assert_eq!(line.split_whitespace().nth(1), Some("4"), "{line}");
    assert!(npanel(&["admin", "pause"], &url, &admin).status.success());
    assert!(text(&npanel(&["admin", "queue"], &url, &admin)).contains("(PAUSED)"));
    assert!(npanel(&["admin", "resume"], &url, &admin).status.success());

    // A customer may not enqueue or administer, and may not watch another account's job.
    let cust = token(&data, &["--role", "customer", "--account", "acme"]);
    let o = npanel(&["jobs", "enqueue", "diagnostic"], &url, &cust);
    assert!(!o.status.success());
    assert!(text(&o).contains("forbidden"), "{}", text(&o));
    let o = npanel(&["watch", &ok], &url, &cust);
    assert!(!o.status.success());
    assert!(text(&o).contains("not_found"), "{}", text(&o));
    // No token: one clear sentence.
    let o = npanel(&["admin", "queue"], &url, "");
    assert!(text(&o).contains("unauthorized"), "{}", text(&o));
    // Bad token options are refused before anything is signed.
    let o = Command::new(BIN)
        .args(["token", "--role", "customer"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("--account"), "{}", text(&o));
}
