//! `npanel-whmcs-load`: the WHMCS provisioning benchmark of issue 8 (loadtests/WHMCS.md).
//!
//! It starts a real `npanel serve` (release binary, a temp data dir, its embedded host default
//! under it, a fresh queue name on `REDIS_URL`), imports the example packages, makes `KEYS`
//! WHMCS keys with `npanel whmcs key create`, and then, over real HTTP with signed requests:
//!
//! 1. **latency**: `SERIAL` create-account calls one after the other: the end-to-end time a
//!    billing system waits for a new account (the job runs and the account exists on disk
//!    before the answer); target p99 < 500 ms;
//! 2. **load**: an open loop of `RATE` create-account calls per second for `SECS` seconds,
//!    spread round-robin over the keys (so each key is at `RATE / KEYS` per second, against its
//!    limit of 10/s): every answer is counted by status; the promise is that the only refusals
//!    are the designed ones (429 `rate_limited`, 503 `queue_full`) and the 202 `pending` answer,
//!    never a 5xx other than 503 or a transport error.
//!
//! Environment: `REDIS_URL` (default `redis://127.0.0.1:6379`), `NPANEL_BIN`, `KEYS` (10),
//! `RATE` (100), `SECS` (60), `SERIAL` (200).

use hyper::body::Bytes;
use loadtests::serve::{clean_env, start, Http};
use loadtests::{env_u64, npanel_bin, pct};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use ws::client::HttpClient;

fn log(msg: impl AsRef<str>) {
    eprintln!("[whmcs-load] {}", msg.as_ref());
}

fn packages_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packages");
    if here.is_dir() {
        here
    } else {
        PathBuf::from("packages")
    }
}

#[derive(Clone)]
struct Key {
    id: String,
    secret: String,
}

fn sign(key: &Key, method: &str, path: &str, body: &[u8]) -> (String, String) {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let sig = api::whmcs::sign(&key.secret, &ts, method, path, body);
    (ts, sig)
}

/// One signed create-account call: `(status, ms, body)` or a transport error.
async fn create(http: &Http, base: &str, key: &Key, n: u64) -> Result<(u16, f64, String), String> {
    let user = format!("w{n:07}");
    let body = json!({
        "service_id": 100_000 + n,
        "username": user,
        "password": "Correct-Horse-9-Battery",
        "email": format!("{user}@example.test"),
        "package_id": "basic",
        "domain": format!("{user}.example.test"),
    })
    .to_string();
    let path = "/api/whmcs/create-account";
    let (ts, sig) = sign(key, "POST", path, body.as_bytes());
    let client = HttpClient::with_pool(base, Some(key.id.clone()), http.clone())
        .map_err(|e| e.to_string())?;
    let headers = [
        ("x-whmcs-timestamp", ts.as_str()),
        ("x-whmcs-signature", &sig),
    ];
    let t = Instant::now();
    let r = client
        .request("POST", path, &headers, Some(Bytes::from(body)))
        .await
        .map_err(|e| e.to_string())?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    Ok((
        r.status.as_u16(),
        ms,
        String::from_utf8_lossy(&r.body).into_owned(),
    ))
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let keys_n = env_u64("KEYS", 10) as usize;
    let rate = env_u64("RATE", 100);
    let secs = env_u64("SECS", 60);
    let serial = env_u64("SERIAL", 200);
    let http: Http = loadtests::serve::http();
    let srv = start(&http).await;
    log(format!("npanel serve ready on {}", srv.base));
    let pk = packages_dir();
    let token = srv.admin_token();
    let mut imp = Command::new(npanel_bin());
    imp.args([
        "packages",
        "import",
        &pk.display().to_string(),
        "--activate",
    ]);
    let mut env = srv.env.clone();
    env.push(("NPANEL_URL".into(), srv.base.clone()));
    env.push(("NPANEL_TOKEN".into(), token));
    clean_env(&mut imp, &env);
    let out = imp.output().expect("packages import");
    assert!(
        out.status.success(),
        "packages import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut keys = Vec::new();
    for i in 0..keys_n {
        let out = srv.command(&["whmcs", "key", "create", "--note", &format!("load {i}")]);
        assert!(
            out.status.success(),
            "key create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        keys.push(Key {
            id: field("key_id:"),
            secret: field("secret:"),
        });
    }
    let counter = Arc::new(AtomicU64::new(0));

    // Phase 1: serial creates.
    let mut lat = Vec::new();
    let mut bad = BTreeMap::<u16, u64>::new();
    for i in 0..serial {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        match create(&http, &srv.base, &keys[i as usize % keys.len()], n).await {
            Ok((200, ms, _)) => lat.push(ms),
            Ok((s, _, b)) => {
                *bad.entry(s).or_default() += 1;
                if bad.values().sum::<u64>() <= 3 {
                    log(format!("serial create answered {s}: {b}"));
                }
            }
            Err(e) => log(format!("serial create failed: {e}")),
        }
        // Stay under each key's 10/s.
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let lat = sorted(lat);
    let homes = std::fs::read_dir(srv.dir.path().join("host/home"))
        .map(|d| d.count())
        .unwrap_or(0);
    println!(
        "serial create-account (end to end, account built on disk before the answer): n={} p50={:.1} ms p95={:.1} ms p99={:.1} ms max={:.1} ms; non-200: {bad:?}; homes on disk: {homes}",
        lat.len(),
        pct(&lat, 50.0),
        pct(&lat, 95.0),
        pct(&lat, 99.0),
        lat.last().copied().unwrap_or(f64::NAN)
    );

    // Phase 2: open loop at `rate` for `secs`.
    let statuses = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let lat2 = Arc::new(Mutex::new(Vec::<f64>::new()));
    let started = Instant::now();
    let total = rate * secs;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let (http, base, key) = (
            http.clone(),
            srv.base.clone(),
            keys[i as usize % keys.len()].clone(),
        );
        let (statuses, lat2, counter) = (statuses.clone(), lat2.clone(), counter.clone());
        tasks.spawn(async move {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let label = match create(&http, &base, &key, n).await {
                Ok((s, ms, body)) => {
                    lat2.lock().unwrap().push(ms);
                    let code = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| {
                            v["error"]
                                .as_str()
                                .or(v["status"].as_str())
                                .map(str::to_string)
                        })
                        .unwrap_or_default();
                    format!("{s} {code}")
                }
                Err(e) => format!("transport error: {e}"),
            };
            *statuses.lock().unwrap().entry(label).or_default() += 1;
        });
    }
    while tasks.join_next().await.is_some() {}
    let wall = started.elapsed().as_secs_f64();
    let lat2 = sorted(lat2.lock().unwrap().clone());
    let st = statuses.lock().unwrap().clone();
    let undesigned: u64 = st
        .iter()
        .filter(|(k, _)| {
            !(k.starts_with("200 ")
                || k.starts_with("202 ")
                || k.starts_with("429 ")
                || k == &"503 queue_full")
        })
        .map(|(_, v)| *v)
        .sum();
    println!(
        "open loop: {total} create-account calls at {rate}/s over {} keys in {wall:.1} s; latency p50={:.1} ms p99={:.1} ms; answers: {st:?}; undesigned answers: {undesigned}",
        keys.len(),
        pct(&lat2, 50.0),
        pct(&lat2, 99.0),
    );
    let log_text = std::fs::read_to_string(srv.dir.path().join("serve.log")).unwrap_or_default();
    let problems: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    println!("server log: {} WARN/ERROR lines", problems.len());
    let mut seen = std::collections::BTreeSet::new();
    for l in &problems {
        // One line per distinct message (the text after the level and target).
        let key: String = l
            .split_whitespace()
            .skip(2)
            .take(12)
            .collect::<Vec<_>>()
            .join(" ");
        if seen.insert(key) && seen.len() <= 12 {
            println!("  {}", l.chars().take(400).collect::<String>());
        }
    }
    if undesigned > 0 {
        // `exit` skips destructors: stop the server first.
        drop(srv);
        std::process::exit(1);
    }
}
