//! A small `npanel-chaos` run end to end: 200 jobs (4 of them provisioning), workers SIGKILLed
//! every 2 s, Redis SIGKILLed and restarted once; the driver's own verification must pass
//! (nothing lost, no double effect, no 500, work resumed). Real binaries, real Redis, real
//! SQLite; about 30 s.
//!
//! Needs the `npanel` binary: `NPANEL_BIN`, else the one next to this build's driver, else
//! `target/release/npanel` or `target/debug/npanel` (`cargo build -p npanel` first).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Waits for `child` at most `limit`; past it the whole process group is SIGKILLed and the
/// test fails with what the driver printed (a hung driver must not hang the suite).
fn bounded(mut child: Child, limit: Duration) -> Output {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > limit {
            // kill(1) of the process group this test created, driver and children.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            let (o, e) = (o.join().unwrap(), e.join().unwrap());
            panic!(
                "npanel-chaos still ran after {limit:?}; killed.\n{}\n{}",
                String::from_utf8_lossy(&o),
                String::from_utf8_lossy(&e)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

fn npanel() -> PathBuf {
    if let Ok(p) = std::env::var("NPANEL_BIN") {
        return p.into();
    }
    // The `npanel` of this build's profile first (`cargo test --workspace` builds it next to
    // the driver), never a stale one from another profile when this one exists.
    let here = PathBuf::from(env!("CARGO_BIN_EXE_npanel-chaos"));
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    for p in [
        here.with_file_name("npanel"),
        target.join("release/npanel"),
        target.join("debug/npanel"),
    ] {
        if p.is_file() {
            return p;
        }
    }
    panic!("no npanel binary: run `cargo build -p npanel` (or set NPANEL_BIN)");
}

#[test]
fn two_hundred_jobs_survive_worker_and_redis_kills() {
    let out = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_npanel-chaos"))
        .args([
            "--jobs",
            "200",
            "--workers",
            "2",
            "--kill-every",
            "2",
            "--job-ms",
            "200",
            "--limit",
            "4",
            "--provision-every",
            "50",
            "--redis-kill-at",
            "0.5",
            "--redis-down",
            "1",
            "--producers",
            "4",
            "--drain-secs",
            "120",
        ])
        .arg("--out")
        .arg(out.path())
        .env("NPANEL_BIN", npanel())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: on a hang the driver and every process it started go together.
        .process_group(0)
        .spawn()
        .expect("run npanel-chaos");
    let res = bounded(child, Duration::from_secs(300));
    let summary = std::fs::read_to_string(out.path().join("summary.json")).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        res.status.success(),
        "npanel-chaos failed ({}):\n{}\n{stderr}",
        res.status,
        String::from_utf8_lossy(&res.stdout)
    );
    let v: serde_json::Value = serde_json::from_str(&summary).expect("summary.json");
    assert_eq!(v["pass"], true, "{summary}");
    assert!(
        v["info"]["worker_kills"].as_u64().unwrap_or(0) >= 1,
        "no worker was killed: {summary}"
    );
    assert!(
        v["promises"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"].as_str().unwrap_or("").starts_with("Redis down")),
        "{summary}"
    );
    for f in ["summary.md", "metrics.jsonl", "plot.png"] {
        assert!(out.path().join(f).exists(), "{f} missing");
    }
    eprintln!("chaos smoke: {:.1} s", t0.elapsed().as_secs_f64());
}
