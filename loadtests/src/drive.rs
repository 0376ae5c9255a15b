//! Driving and checking the real service from outside, shared by `npanel-chaos` and
//! `npanel-soak`: enqueueing with back-pressure (the 100-job cap answers 503 `queue_full`, and
//! a Redis outage 503 `unavailable`; both are waited out and retried with the same idempotency
//! key, so a retried POST can never make a second job), creating accounts, waiting for the
//! queue to drain, and verifying every job from three independent places: the API
//! (`GET /api/jobs/{id}`), the event stream in Redis (how many `complete` events each job
//! got: more than one is a double terminal effect), and the store (job history and audit
//! records, read from the SQLite file after the archiver has run).

use hyper::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::procs::{log, Api};

/// `--key value` / `--flag` arguments.
#[derive(Clone, Debug, Default)]
pub struct Args(pub BTreeMap<String, String>);

impl Args {
    /// From the process arguments; `--help` prints `usage` and exits.
    pub fn parse(usage: &str) -> Args {
        let mut m = BTreeMap::new();
        let mut it = std::env::args().skip(1).peekable();
        while let Some(a) = it.next() {
            if a == "--help" || a == "-h" {
                println!("{usage}");
                std::process::exit(0);
            }
            let Some(k) = a.strip_prefix("--") else {
                eprintln!("unexpected argument {a:?}\n\n{usage}");
                std::process::exit(2);
            };
            if let Some((k, v)) = k.split_once('=') {
                m.insert(k.to_string(), v.to_string());
            } else if it.peek().is_some_and(|n| !n.starts_with("--")) {
                m.insert(k.to_string(), it.next().unwrap_or_default());
            } else {
                m.insert(k.to_string(), "true".into());
            }
        }
        Args(m)
    }
    /// A number, or `d`; a value that is not a number stops the run with a clear message.
    pub fn num(&self, k: &str, d: f64) -> f64 {
        match self.0.get(k) {
            None => d,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{k} {v:?} is not a number");
                std::process::exit(2)
            }),
        }
    }
    /// A string.
    pub fn str(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    /// A flag.
    pub fn flag(&self, k: &str) -> bool {
        self.0.get(k).is_some_and(|v| v != "false" && v != "0")
    }
}

/// How submissions went.
#[derive(Default)]
pub struct SubmitStats {
    pub accepted: AtomicU64,
    pub queue_full: AtomicU64,
    pub unavailable: AtomicU64,
    pub rate_limited: AtomicU64,
    pub other: AtomicU64,
    pub transport: AtomicU64,
}

impl SubmitStats {
    pub fn json(&self) -> Value {
        json!({
            "accepted": self.accepted.load(Ordering::Relaxed),
            "queue_full_503": self.queue_full.load(Ordering::Relaxed),
            "unavailable_503": self.unavailable.load(Ordering::Relaxed),
            "rate_limited_429": self.rate_limited.load(Ordering::Relaxed),
            "other_refusals": self.other.load(Ordering::Relaxed),
            "transport_errors": self.transport.load(Ordering::Relaxed),
        })
    }
}

/// An answer the driver did not expect (kept for the report).
pub type Oddities = Arc<std::sync::Mutex<Vec<String>>>;

/// POSTs `body` to `path` until it is accepted (2xx), waiting out `queue_full`, `unavailable`,
/// rate limits and transport errors (same body, so the same idempotency key). Returns the
/// answer's JSON, or `None` after `give_up`. Other refusals (4xx) are returned as `Err` with the
/// answer: retrying them would not help.
pub async fn submit(
    api: &Api,
    path: &str,
    body: &Value,
    stats: &SubmitStats,
    odd: &Oddities,
    give_up: Duration,
) -> Result<Option<Value>, (u16, Value)> {
    let t0 = Instant::now();
    let mut backoff = 0.05f64;
    loop {
        match api.post(path, body).await {
            Ok(r) if r.status.is_success() => {
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(r.json()));
            }
            Ok(r) => {
                let code = r.code();
                let s = r.status.as_u16();
                match (s, code.as_str()) {
                    (503, "queue_full") => {
                        stats.queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                    (503, _) => {
                        stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    (429, _) => {
                        stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    }
                    (500..=599, _) => {
                        stats.other.fetch_add(1, Ordering::Relaxed);
                        odd.lock().unwrap().push(format!(
                            "POST {path} answered {s}: {}",
                            String::from_utf8_lossy(&r.body)
                        ));
                    }
                    _ => {
                        stats.other.fetch_add(1, Ordering::Relaxed);
                        return Err((s, r.json()));
                    }
                }
                // Retry-After is whole seconds; the cap frees up as jobs finish, so wait a bit
                // less than it says but back off when it keeps refusing.
                let wait = r.retry_after.unwrap_or(backoff).min(backoff.max(0.05));
                backoff = (backoff * 1.5).min(1.0);
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            }
            Err(e) => {
                stats.transport.fetch_add(1, Ordering::Relaxed);
                odd.lock().unwrap().push(format!("POST {path}: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if t0.elapsed() > give_up {
            return Ok(None);
        }
    }
}

/// Polls `GET /api/admin/queue` until nothing is pending or running three times in a row, or
/// `limit` passes. Returns the last view and whether it drained.
pub async fn wait_drained(api: &Api, limit: Duration) -> (Value, bool) {
    let deadline = Instant::now() + limit;
    let mut quiet = 0;
    let mut last = Value::Null;
    let mut next_log = Instant::now();
    loop {
        if let Ok(r) = api.get("/api/admin/queue").await {
            if r.status == StatusCode::OK {
                last = r.json();
                let pending = last["pending"].as_u64().unwrap_or(u64::MAX);
                let running: u64 = last["kinds"]
                    .as_object()
                    .map(|m| m.values().filter_map(|k| k["running"].as_u64()).sum())
                    .unwrap_or(u64::MAX);
                if Instant::now() > next_log {
                    log(format!("draining: pending {pending}, running {running}"));
                    next_log = Instant::now() + Duration::from_secs(10);
                }
                if pending == 0 && running == 0 {
                    quiet += 1;
                    if quiet >= 3 {
                        return (last, true);
                    }
                } else {
                    quiet = 0;
                }
            }
        }
        if Instant::now() > deadline {
            return (last, false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One job as the API sees it at the end.
#[derive(Clone, Debug)]
pub struct Seen {
    pub id: String,
    /// `None`: 404 (lost) or no answer.
    pub status: Option<String>,
    pub attempts: u64,
    pub error: Option<String>,
    pub http: u16,
}

/// `GET /api/jobs/{id}` for every id, `conc` at a time.
pub async fn read_jobs(api: &Api, ids: &[String], conc: usize) -> Vec<Seen> {
    let sem = Arc::new(tokio::sync::Semaphore::new(conc));
    let mut set = tokio::task::JoinSet::new();
    for id in ids {
        let (api, id, sem) = (api.clone(), id.clone(), sem.clone());
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            let mut tries = 0;
            loop {
                tries += 1;
                match api.get(&format!("/api/jobs/{id}")).await {
                    Ok(r) if r.status == StatusCode::OK => {
                        let j = r.json();
                        return Seen {
                            id,
                            status: j["status"].as_str().map(str::to_string),
                            attempts: j["attempts"].as_u64().unwrap_or(0),
                            error: j["error"].as_str().map(str::to_string),
                            http: 200,
                        };
                    }
                    Ok(r) if r.status == StatusCode::NOT_FOUND || tries >= 5 => {
                        return Seen {
                            id,
                            status: None,
                            attempts: 0,
                            error: Some(String::from_utf8_lossy(&r.body).to_string()),
                            http: r.status.as_u16(),
                        }
                    }
                    Err(e) if tries >= 5 => {
                        return Seen {
                            id,
                            status: None,
                            attempts: 0,
                            error: Some(e.to_string()),
                            http: 0,
                        }
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
    }
    let mut out = Vec::with_capacity(ids.len());
    while let Some(r) = set.join_next().await {
        if let Ok(s) = r {
            out.push(s);
        }
    }
    out
}

/// Terminal job states.
pub fn terminal(s: &str) -> bool {
    matches!(s, "succeeded" | "failed" | "cancelled")
}

/// `complete` events per job id in the queue's Redis stream (`np:{name}:events`), read with
/// `XRANGE` pages; and the stream's first id (to tell a trimmed stream from a missing event).
pub async fn complete_events(
    redis_url: &str,
    queue: &str,
) -> Result<(HashMap<String, u32>, u64), String> {
    let client = redis::Client::open(redis_url).map_err(|e| e.to_string())?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let key = format!("np:{{{queue}}}:events");
    let mut counts = HashMap::new();
    let mut start = "-".to_string();
    let mut entries = 0u64;
    loop {
        type Entry = (String, Vec<String>);
        let page: Vec<Entry> = redis::cmd("XRANGE")
            .arg(&key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut con)
            .await
            .map_err(|e| e.to_string())?;
        let n = page.len();
        for (id, fields) in &page {
            entries += 1;
            let mut job = None;
            let mut kind = None;
            for kv in fields.chunks(2) {
                if let [k, v] = kv {
                    match k.as_str() {
                        "job" => job = Some(v.clone()),
                        "type" => kind = Some(v.clone()),
                        _ => {}
                    }
                }
            }
            if let (Some(j), Some("complete")) = (job, kind.as_deref()) {
                *counts.entry(j).or_insert(0) += 1;
            }
            start = format!("({id}");
        }
        if n < 5000 {
            break;
        }
    }
    Ok((counts, entries))
}

/// The store as the verification reads it (the SQLite file `npanel serve` writes).
pub struct StoreView {
    pool: sqlx::SqlitePool,
}

impl StoreView {
    /// Opens `<data_dir>/npanel.db` read-only.
    pub async fn open(data_dir: &Path) -> Result<StoreView, String> {
        let url = format!("sqlite://{}?mode=ro", data_dir.join("npanel.db").display());
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        Ok(StoreView { pool })
    }

    /// `id → status` of the archived jobs.
    pub async fn history(&self) -> Result<HashMap<String, String>, String> {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, status FROM job_history")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows.into_iter().collect())
    }

    /// `(job_id, action) → count` of the audit records that name a job.
    pub async fn audit_by_job(&self) -> Result<HashMap<(String, String), i64>, String> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT job_id, action, COUNT(*) FROM audit WHERE job_id IS NOT NULL GROUP BY job_id, action",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        Ok(rows.into_iter().map(|(j, a, n)| ((j, a), n)).collect())
    }

    /// `PRAGMA integrity_check` (`ok` when the file is sound).
    pub async fn integrity(&self) -> Result<String, String> {
        let rows: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows.into_iter().map(|r| r.0).collect::<Vec<_>>().join("; "))
    }

    /// `account id → status` of the accounts with this prefix.
    pub async fn accounts(&self, prefix: &str) -> Result<HashMap<String, String>, String> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, status FROM accounts WHERE id LIKE ?")
                .bind(format!("{prefix}%"))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| e.to_string())?;
        Ok(rows.into_iter().collect())
    }
}

/// Waits until every id of `ids` is in the store's job history (the archiver runs every few
/// seconds), or `limit` passes; returns the history.
pub async fn wait_archived(
    store: &StoreView,
    ids: &[String],
    limit: Duration,
) -> HashMap<String, String> {
    let deadline = Instant::now() + limit;
    loop {
        let h = store.history().await.unwrap_or_default();
        let missing = ids.iter().filter(|i| !h.contains_key(*i)).count();
        if missing == 0 || Instant::now() > deadline {
            if missing > 0 {
                log(format!("{missing} jobs not archived after {limit:?}"));
            }
            return h;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// An account body for `POST /api/accounts` (package `basic` from `packages/`).
pub fn account_body(id: &str) -> Value {
    json!({"id": id, "package": "basic", "domain": format!("{id}.example"),
        "email": format!("admin@{id}.example"), "password": "Chaos-Horse-9-Battery"})
}

/// Creates account `id`, waiting out the cap and outages. The provisioning job's id: from the
/// answer, or (when an earlier attempt of this call got through but its answer was lost: 409)
/// from `GET /api/jobs?account=<id>&kind=provision`.
pub async fn create_account(
    api: &Api,
    id: &str,
    stats: &SubmitStats,
    odd: &Oddities,
) -> Result<Option<String>, String> {
    match submit(
        api,
        "/api/accounts",
        &account_body(id),
        stats,
        odd,
        Duration::from_secs(600),
    )
    .await
    {
        Ok(Some(v)) => Ok(v["job"]["id"].as_str().map(str::to_string)),
        Ok(None) => Ok(None),
        Err((409, _)) => {
            let r = api
                .get(&format!("/api/jobs?account={id}&kind=provision&limit=10"))
                .await
                .map_err(|e| e.to_string())?;
            let j = r.json();
            Ok(j["jobs"]
                .as_array()
                .and_then(|a| a.last())
                .and_then(|j| j["id"].as_str())
                .map(str::to_string))
        }
        Err((s, v)) => Err(format!("POST /api/accounts {id}: {s} {v}")),
    }
}

/// Counts by value.
pub fn tally<'a>(it: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for s in it {
        *m.entry(s.to_string()).or_insert(0) += 1;
    }
    m
}

/// The first `complete` event in the queue's stream stamped after `after_ms` (Unix ms, Redis's
/// clock = ours, same machine): its stamp in Unix ms. Polls until `limit` passes.
pub async fn first_complete_after(
    redis_url: &str,
    queue: &str,
    after_ms: u64,
    limit: Duration,
) -> Option<u64> {
    let deadline = Instant::now() + limit;
    let key = format!("np:{{{queue}}}:events");
    let mut start = format!("{after_ms}-0");
    while Instant::now() < deadline {
        let got = async {
            let client = redis::Client::open(redis_url).ok()?;
            let mut con = client.get_multiplexed_async_connection().await.ok()?;
            loop {
                type Entry = (String, Vec<String>);
                let page: Vec<Entry> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut con)
                    .await
                    .ok()?;
                if page.is_empty() {
                    return Some(None);
                }
                for (id, fields) in &page {
                    start = format!("({id}");
                    if fields.chunks(2).any(|kv| kv == ["type", "complete"]) {
                        return Some(id.split('-').next().and_then(|m| m.parse().ok()));
                    }
                }
            }
        }
        .await;
        if let Some(Some(ms)) = got {
            return Some(ms);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
