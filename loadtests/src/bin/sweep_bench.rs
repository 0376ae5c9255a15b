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

use loadtests::serve::{http, start_in};
use loadtests::{cpu_ticks, env_u64};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use ws::client::HttpClient;

fn log(msg: impl AsRef<str>) {
    eprintln!("[sweep-bench] {}", msg.as_ref());
}

async fn call(client: &HttpClient, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let r = client.json(method, path, body).await.expect("request");
    (r.status.as_u16(), r.json())
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
    // A year of hourly rows for the first account: what the usage route reads at worst.
    let now = store::now_ms();
    let hour = now - now.rem_euclid(store::HOUR_MS);
    let year: Vec<store::UsageSample> = (0..8760)
        .map(|h| store::UsageSample {
            account: "sb00000".into(),
            at: hour - h * store::HOUR_MS,
            disk_bytes: 1 << 30,
            disk_files: 1000,
            bandwidth_bytes: 1 << 20,
            mail_sent: 5,
            db_bytes: None,
            addon_domains: 0,
            measured_at: hour - h * store::HOUR_MS,
        })
        .collect();
    s.record_usage(&year).await.expect("year of usage");
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
    let client =
        HttpClient::with_pool(&srv.base, Some(token), http.clone()).expect("an http:// base");
    log(format!("npanel serve ready on {}", srv.base));
    let mut times = Vec::new();
    for run in 0..runs {
        let t0 = Instant::now();
        let (status, r) = call(
            &client,
            "POST",
            "/api/jobs",
            Some(&json!({"kind": "quota_sweep", "payload": {"tick": 1_796_000_400 + 3600 * run as i64}})),
        )
        .await;
        assert_eq!(status, 202, "{r}");
        let id = r["id"].as_str().unwrap().to_string();
        let job = loop {
            let (_, j) = call(&client, "GET", &format!("/api/jobs/{id}"), None).await;
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
    // The usage route over a year of hourly rows (8 760 points by the hour, 366 by the day).
    let n = env_u64("USAGE_REQUESTS", 200);
    let to = chrono::Utc::now();
    let from = to - chrono::Duration::days(365);
    for step in ["hour", "day"] {
        let path = format!(
            "/api/accounts/sb00000/usage?from={}&to={}&step={step}",
            from.format("%Y-%m-%dT%H:%M:%SZ"),
            to.format("%Y-%m-%dT%H:%M:%SZ")
        );
        let mut ms = Vec::new();
        let mut points = 0;
        for _ in 0..n {
            let t = Instant::now();
            let (status, body) = call(&client, "GET", &path, None).await;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, 200, "{body}");
            points = body["points"].as_array().map_or(0, |p| p.len());
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        log(format!(
            "GET usage, a year by the {step} ({points} points): p50 {:.1} ms, p99 {:.1} ms over {n} requests (target p99 < 50 ms)",
            loadtests::pct(&ms, 50.0),
            loadtests::pct(&ms, 99.0)
        ));
    }
    // Idle: CPU and Redis commands while nothing is due.
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let pid = srv.child.id();
    let queue = srv
        .env
        .iter()
        .find(|(k, _)| k == "NPANEL_QUEUE__NAME")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    // This server's own commands: what `redis-cli monitor` shows naming its queue's keys.
    let monitor = std::process::Command::new("redis-cli")
        .args(["-u", &redis, "monitor"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok();
    let (c0, r0) = (cpu_ticks(pid), redis_commands(&redis));
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (c1, r1) = (cpu_ticks(pid), redis_commands(&redis));
    if let Some(mut m) = monitor {
        let _ = m.kill();
        let out = m.wait_with_output().map(|o| o.stdout).unwrap_or_default();
        let text = String::from_utf8_lossy(&out);
        let ours: Vec<&str> = text.lines().filter(|l| l.contains(&queue)).collect();
        let mut by_cmd: std::collections::BTreeMap<String, u64> = Default::default();
        for l in &ours {
            let cmd = l.split('"').nth(1).unwrap_or("?").to_ascii_uppercase();
            *by_cmd.entry(cmd).or_default() += 1;
        }
        log(format!(
            "idle {idle_secs} s: {} Redis commands named this server's queue {queue} ({by_cmd:?})",
            ours.len()
        ));
    }
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
