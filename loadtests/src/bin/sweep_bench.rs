//! `npanel-sweep-bench`: the quota sweep benchmark of issue 9 (loadtests/QUOTA.md).
//!
//! It builds a synthetic host under a temp data dir — `ACCOUNTS` (10 000) customer accounts in
//! the SQLite store, each with a home of `FILES` (20) files of `FILE_BYTES` (4096) in two
//! directories, an access log of `LOG_LINES` (50) lines, and one Exim main log with a line per
//! account — then starts a real `npanel serve` on it (release binary, the embedded host) and,
//! over HTTP as an admin, enqueues `quota_sweep` `RUNS` (2) times (the second with warm caches)
//! and reports each sweep's time from start to finish as the job records it, the disk source
//! and what it measured. `DROP_CACHES=1` (root) empties the page cache before the first sweep.
//!
//! Then it watches the idle server for `IDLE_SECS` (30): its CPU time, and the commands Redis
//! processed in that time (`INFO stats`; use a Redis nothing else talks to for that figure).
//!
//! Environment: `REDIS_URL` (default `redis://127.0.0.1:6379`), `NPANEL_BIN`, and the above.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use loadtests::serve::{http, start_in, Http};
use loadtests::{cpu_ticks, env_u64};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

fn log(msg: impl AsRef<str>) {
    eprintln!("[sweep-bench] {}", msg.as_ref());
}

async fn call(
    http: &Http,
    method: &str,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let resp = http.request(req).await.expect("request");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The store and the host of `accounts` synthetic accounts under `data_dir`.
async fn build_host(data_dir: &Path, accounts: u64, files: u64, file_bytes: u64, log_lines: u64) {
    let t0 = Instant::now();
    let s = store::Store::open_sqlite(&data_dir.join("npanel.db"))
        .await
        .expect("store");
    s.create_package(store::NewPackage {
        id: "sweepbench".into(),
        limits: store::Limits {
            disk_mb: Some(1024),
            bandwidth_mb: Some(10_240),
            ..store::Limits::default()
        },
        ..store::NewPackage::default()
    })
    .await
    .expect("package");
    s.set_package_status("sweepbench", store::PackageStatus::Active)
        .await
        .expect("activate");
    let homes = data_dir.join("host/home");
    let logs = data_dir.join("host/var/log/domlogs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(data_dir.join("host/var/log/exim4")).unwrap();
    let mut mainlog = std::io::BufWriter::new(
        std::fs::File::create(data_dir.join("host/var/log/exim4/mainlog")).unwrap(),
    );
    let body = vec![b'x'; file_bytes as usize];
    for i in 0..accounts {
        let id = format!("sb{i:05}");
        let domain = format!("{id}.example");
        s.create_account(&store::NewAccount {
            id: id.clone(),
            kind: Some(store::AccountType::Customer),
            package: Some("sweepbench".into()),
            domain: Some(domain.clone()),
            ..store::NewAccount::default()
        })
        .await
        .expect("account");
        s.set_account_status(&id, store::AccountStatus::Active, None)
            .await
            .expect("status");
        let home = homes.join(&id);
        for d in ["public_html", "mail"] {
            std::fs::create_dir_all(home.join(d)).unwrap();
        }
        for f in 0..files {
            let dir = if f % 2 == 0 { "public_html" } else { "mail" };
            std::fs::write(home.join(dir).join(format!("f{f}")), &body).unwrap();
        }
        let mut l = std::io::BufWriter::new(std::fs::File::create(logs.join(&domain)).unwrap());
        for n in 0..log_lines {
            writeln!(
                l,
                "203.0.113.{} - - [01/Dec/2026:04:00:00 +0000] \"GET /p{n} HTTP/1.1\" 200 {} \"-\" \"bench\"",
                n % 250,
                1000 + n
            )
            .unwrap();
        }
        writeln!(
            mainlog,
            "2026-12-01 04:00:00 1a-{i:06}-AB <= {id}@{domain} U={id} P=local S=500"
        )
        .unwrap();
        if (i + 1) % 2000 == 0 {
            log(format!(
                "built {} accounts ({:.0} s)",
                i + 1,
                t0.elapsed().as_secs_f64()
            ));
        }
    }
    s.close().await;
    log(format!(
        "synthetic host: {accounts} accounts × {files} files of {file_bytes} B, {log_lines} log lines each, built in {:.0} s",
        t0.elapsed().as_secs_f64()
    ));
}

fn redis_commands(url: &str) -> Option<u64> {
    let client = redis::Client::open(url).ok()?;
    let mut c = client.get_connection().ok()?;
    let info: String = redis::cmd("INFO").arg("stats").query(&mut c).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let accounts = env_u64("ACCOUNTS", 10_000);
    let files = env_u64("FILES", 20);
    let file_bytes = env_u64("FILE_BYTES", 4096);
    let log_lines = env_u64("LOG_LINES", 50);
    let runs = env_u64("RUNS", 2);
    let idle_secs = env_u64("IDLE_SECS", 30);
    let dir = tempfile::tempdir().expect("temp dir");
    build_host(dir.path(), accounts, files, file_bytes, log_lines).await;
    if std::env::var("DROP_CACHES").as_deref() == Ok("1") {
        let _ = std::process::Command::new("sync").status();
        match std::fs::write("/proc/sys/vm/drop_caches", "3") {
            Ok(()) => log("page cache dropped before the first sweep"),
            Err(e) => log(format!("cannot drop the page cache: {e}")),
        }
    }
    let http = http();
    let srv = start_in(&http, dir, &[]).await;
    let token = srv.admin_token();
    log(format!("npanel serve ready on {}", srv.base));
    let mut times = Vec::new();
    for run in 0..runs {
        let t0 = Instant::now();
        let (status, r) = call(
            &http,
            "POST",
            &format!("{}/api/jobs", srv.base),
            &token,
            Some(json!({"kind": "quota_sweep", "payload": {"tick": 1_796_000_400 + 3600 * run as i64}})),
        )
        .await;
        assert_eq!(status, 202, "{r}");
        let id = r["id"].as_str().unwrap().to_string();
        let job = loop {
            let (_, j) = call(
                &http,
                "GET",
                &format!("{}/api/jobs/{id}", srv.base),
                &token,
                None,
            )
            .await;
            if matches!(
                j["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                break j;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let wall = t0.elapsed().as_secs_f64();
        assert_eq!(job["status"], "succeeded", "{job}");
        let res = &job["result"];
        let secs = res["seconds"].as_f64().unwrap_or(wall);
        times.push(secs);
        log(format!(
            "sweep {}: {:.1} s in the job ({wall:.1} s enqueue to final seen), measured {} of {} accounts, {} skipped, disk source {}, {} files, {} bytes on disk; {}; {}",
            run + 1,
            secs,
            res["measured"],
            res["accounts"],
            res["skipped_count"],
            res["disk_source"],
            res["files"],
            res["disk_bytes"],
            res["bandwidth_source"],
            res["mail_source"],
        ));
    }
    // Idle: CPU and Redis commands while nothing is due.
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let pid = srv.child.id();
    let (c0, r0) = (cpu_ticks(pid), redis_commands(&redis));
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (c1, r1) = (cpu_ticks(pid), redis_commands(&redis));
    if let (Some(a), Some(b)) = (c0, c1) {
        log(format!(
            "idle {idle_secs} s: server CPU {:.3} % of a core",
            (b - a) as f64 / 100.0 / idle_secs as f64 * 100.0
        ));
    }
    if let (Some(a), Some(b)) = (r0, r1) {
        log(format!(
            "idle {idle_secs} s: Redis processed {} commands ({:.2}/s, every client of that Redis)",
            b - a,
            (b - a) as f64 / idle_secs as f64
        ));
    }
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "{}",
        json!({"accounts": accounts, "files_per_home": files, "sweeps_seconds": times, "best": best, "target_seconds": 60})
    );
}
