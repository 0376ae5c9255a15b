//! `npanel-store-bench`: the store benchmarks (accounts, audit log, job history). A release
//! binary, not a test; see `loadtests/STORE.md` for how to run it and the figures.
//!
//! Phases (`PHASES=write,accounts,history,audit`, all by default), each on a **fresh** database
//! per backend (`--backends sqlite,postgres`): an SQLite file in a temp dir, or a new PostgreSQL
//! database on `POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) that is
//! dropped afterwards.
//!
//! - `write`: the audit write on the request path, `api::audit::Auditor::write` (one Redis
//!   `XADD` through `Queue::outbox_push`), one at a time and 32 at once; then the outbox drained
//!   into the store with `Auditor::drain_once` (500 records per call). Own queue name on
//!   `REDIS_URL` (default `redis://127.0.0.1:6379`); its keys are deleted afterwards.
//! - `accounts`: 1 reseller (allowance 1000) with 1000 customers on one package, beside
//!   `--other-accounts` others; `Store::list_accounts(Some(reseller), None, None, 1000)`,
//!   `Store::account(id)` (the auth middleware's per-request check), `Store::reseller_summary`.
//! - `history`: `api::history::list_jobs` (what `GET /api/jobs` and WebSocket snapshots call)
//!   for an admin, a reseller and a customer with 50 and then 50 000 finished jobs archived with
//!   `Store::archive_jobs` (500 per call, the archiver's batch).
//! - `audit`: `--records` (3 650 000 = 10 000 a day for a year) realistic records appended with
//!   `Store::append_audit` in batches of `--batch` (5000), then `Store::search_audit` for the
//!   query shapes `GET /api/audit` serves, page size 100, and `Store::verify_audit` once.
//!
//! Each figure is p50 / p99 over repeated calls (`--iters`, default 100, or as many as fit in
//! `--budget-secs` per shape, at least 5), parameters rotating (another account, reseller,
//! week, ...) on every call. Plans: `--explain` prints SQLite's `EXPLAIN QUERY PLAN` and
//! PostgreSQL's `EXPLAIN (ANALYZE, BUFFERS)` for every audit shape (always for a shape over its
//! target). The SQL for the plans is rebuilt here the way `store/src/audit.rs` builds it.

use api::audit::Auditor;
use api::{Role, Viewer};
use loadtests::{pct, phase_on, Rng};
use queue::{Job, JobKind, JobStatus, ListFilter, Queue, QueueConfig};
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{
    AccountType, Actor, Allowance, AuditFilter, Backend, HistoryRow, Limits, NewAccount, NewAudit,
    NewPackage, PackageStatus, Store,
};

const DAY_MS: i64 = 86_400_000;
const PAGE: i64 = 100;
const TARGET_AUDIT_MS: f64 = 500.0;
const TARGET_LIST_MS: f64 = 20.0;
const TARGET_ACCOUNT_MS: f64 = 1.0;
const TARGET_WRITE_MS: f64 = 1.0;

fn log(msg: impl AsRef<str>) {
    eprintln!("[store-bench] {}", msg.as_ref());
}

// ---------------------------------------------------------------------------------------------
// Options

struct Opts {
    records: u64,
    batch: usize,
    backends: Vec<Backend>,
    iters: usize,
    budget: Duration,
    explain: bool,
    verify: bool,
    keep: bool,
    /// Keep the word index during the load (the append path as the product runs it: slower).
    index_during_load: bool,
    write_rate: u64,
    writes: usize,
    other_accounts: usize,
    pg_url: String,
    redis_url: String,
}

const USAGE: &str =
    "npanel-store-bench [--records N] [--batch N] [--backends sqlite,postgres] [--iters N]
                   [--budget-secs S] [--writes N] [--write-rate N] [--other-accounts N] [--explain]
                   [--no-verify] [--keep] [--index-during-load]
  PHASES=write,accounts,history,audit (default all); POSTGRES_URL (default
  postgres://postgres@127.0.0.1:5432/postgres); REDIS_URL (default redis://127.0.0.1:6379).";

fn parse_args() -> Opts {
    let mut o = Opts {
        records: 3_650_000,
        batch: 5000,
        backends: vec![Backend::Sqlite, Backend::Postgres],
        iters: 100,
        budget: Duration::from_secs(30),
        explain: false,
        verify: true,
        keep: false,
        index_during_load: false,
        write_rate: 1000,
        writes: 10_000,
        other_accounts: 2000,
        pg_url: std::env::var("POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        redis_url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    };
    let mut args = std::env::args().skip(1);
    let num = |v: Option<String>, name: &str| -> u64 {
        v.and_then(|s| s.replace('_', "").parse().ok())
            .unwrap_or_else(|| {
                eprintln!("{name} needs a number\n{USAGE}");
                std::process::exit(2)
            })
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--records" => o.records = num(args.next(), "--records"),
            "--batch" => o.batch = num(args.next(), "--batch").max(1) as usize,
            "--iters" => o.iters = num(args.next(), "--iters").max(1) as usize,
            "--budget-secs" => o.budget = Duration::from_secs(num(args.next(), "--budget-secs")),
            "--writes" => o.writes = num(args.next(), "--writes").max(100) as usize,
            "--other-accounts" => o.other_accounts = num(args.next(), "--other-accounts") as usize,
            "--explain" => o.explain = true,
            "--no-verify" => o.verify = false,
            "--keep" => o.keep = true,
            "--index-during-load" => o.index_during_load = true,
            "--write-rate" => o.write_rate = num(args.next(), "--write-rate").max(1),
            "--backends" => {
                let v = args.next().unwrap_or_default();
                o.backends = v
                    .split(',')
                    .map(|b| match b.trim() {
                        "sqlite" => Backend::Sqlite,
                        "postgres" | "pg" => Backend::Postgres,
                        other => {
                            eprintln!("unknown backend {other:?}\n{USAGE}");
                            std::process::exit(2)
                        }
                    })
                    .collect();
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                std::process::exit(2)
            }
        }
    }
    o
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL",
    }
}

// ---------------------------------------------------------------------------------------------
// Clean-up of what we create outside the process (also on Ctrl-C / SIGTERM)

static PG_DBS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
static REDIS_PREFIXES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

async fn drop_pg(base: &str, name: &str) {
    match sqlx::AnyConnection::connect(base).await {
        Ok(mut c) => {
            if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut c)
                .await
            {
                log(format!("could not drop database {name}: {e}"));
            }
        }
        Err(e) => log(format!("could not drop database {name}: {e}")),
    }
    PG_DBS.lock().unwrap().retain(|(_, n)| n != name);
}

async fn drop_redis_keys(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        log(format!("could not delete Redis keys {prefix}*"));
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let r: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await;
        let Ok((next, keys)) = r else { break };
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> =
                redis::cmd("UNLINK").arg(&keys).query_async(&mut c).await;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    REDIS_PREFIXES.lock().unwrap().retain(|(_, p)| p != prefix);
}

async fn cleanup_all() {
    let dbs = PG_DBS.lock().unwrap().clone();
    for (base, name) in dbs {
        drop_pg(&base, &name).await;
    }
    let prefixes = REDIS_PREFIXES.lock().unwrap().clone();
    for (url, p) in prefixes {
        drop_redis_keys(&url, &p).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Databases

struct Db {
    store: Store,
    backend: Backend,
    /// A URL for our own connections (plans, sizes, VACUUM).
    url: String,
    path: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

async fn open_db(o: &Opts, b: Backend) -> Db {
    sqlx::any::install_default_drivers();
    match b {
        Backend::Sqlite => {
            let dir = tempfile::Builder::new()
                .prefix("npanel-store-bench-")
                .tempdir()
                .expect("temp dir");
            let path = dir.path().join("npanel.db");
            let store = Store::open_sqlite(&path).await.expect("open SQLite store");
            Db {
                store,
                backend: b,
                url: format!("sqlite://{}", path.display()),
                path: Some(path),
                _dir: Some(dir),
                pg: None,
            }
        }
        Backend::Postgres => {
            let name = format!(
                "npanel_bench_{}",
                ulid::Ulid::new().to_string().to_lowercase()
            );
            let mut admin = sqlx::AnyConnection::connect(&o.pg_url)
                .await
                .unwrap_or_else(|e| panic!("connect to POSTGRES_URL {}: {e}", o.pg_url));
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .expect("create the benchmark database");
            PG_DBS
                .lock()
                .unwrap()
                .push((o.pg_url.clone(), name.clone()));
            let url = store::with_database(&o.pg_url, &name);
            let store = Store::connect(&url).await.expect("open PostgreSQL store");
            log(format!("PostgreSQL database {name}"));
            Db {
                store,
                backend: b,
                url,
                path: None,
                _dir: None,
                pg: Some((o.pg_url.clone(), name)),
            }
        }
    }
}

async fn close_db(o: &Opts, mut db: Db) {
    db.store.close().await;
    if o.keep {
        match (&db.pg, db._dir.take()) {
            (Some((_, name)), _) => {
                PG_DBS.lock().unwrap().retain(|(_, n)| n != name);
                log(format!(
                    "kept PostgreSQL database {name} (drop it yourself)"
                ));
            }
            (None, Some(dir)) => log(format!("kept {}", dir.keep().join("npanel.db").display())),
            _ => {}
        }
        return;
    }
    if let Some((base, name)) = &db.pg {
        drop_pg(base, name).await;
    }
}

/// The database's size on disk, MiB.
async fn db_size_mib(db: &Db) -> f64 {
    match db.backend {
        Backend::Sqlite => {
            let p = db.path.clone().unwrap_or_default();
            let mut total = 0u64;
            for suffix in ["", "-wal", "-shm"] {
                let f = PathBuf::from(format!("{}{suffix}", p.display()));
                total += std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            }
            total as f64 / 1048576.0
        }
        Backend::Postgres => {
            let Ok(mut c) = sqlx::AnyConnection::connect(&db.url).await else {
                return f64::NAN;
            };
            let r: Result<(i64,), _> =
                sqlx::query_as("SELECT pg_database_size(current_database())::BIGINT")
                    .fetch_one(&mut c)
                    .await;
            r.map(|r| r.0 as f64 / 1048576.0).unwrap_or(f64::NAN)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling

#[derive(Clone, Copy)]
struct Stat {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Stat {
    fn ms(&self) -> String {
        format!("{} / {}", fmt_ms(self.p50), fmt_ms(self.p99))
    }
}

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v < 1.0 {
        format!("{v:.3}")
    } else if v < 100.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(|a, b| a.total_cmp(b));
    Stat {
        n: v.len(),
        p50: pct(&v, 50.0),
        p99: pct(&v, 99.0),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

/// Repeated calls: `iters` of them, or fewer when `budget` runs out (at least `min`).
struct Sampler {
    t0: Instant,
    v: Vec<f64>,
    iters: usize,
    budget: Duration,
    min: usize,
}

impl Sampler {
    fn new(iters: usize, budget: Duration) -> Sampler {
        Sampler {
            t0: Instant::now(),
            v: Vec::with_capacity(iters),
            iters,
            budget,
            min: 5.min(iters),
        }
    }
    fn more(&self) -> bool {
        self.v.len() < self.iters && (self.v.len() < self.min || self.t0.elapsed() < self.budget)
    }
    fn push(&mut self, d: Duration) {
        self.v.push(d.as_secs_f64() * 1000.0);
    }
    fn stat(self) -> Stat {
        stat(self.v)
    }
}

/// Markdown output, printed at the end (and as it goes to stderr).
#[derive(Default)]
struct Report {
    sections: Vec<(String, Vec<String>)>,
}

impl Report {
    fn section(&mut self, title: &str, header: &str) {
        let cols = header.matches('|').count() - 1;
        self.sections.push((
            title.to_string(),
            vec![header.to_string(), format!("|{}", "---|".repeat(cols))],
        ));
    }
    fn row(&mut self, line: String) {
        log(&line);
        self.sections.last_mut().expect("a section").1.push(line);
    }
    fn note(&mut self, line: String) {
        log(&line);
        self.sections.push((String::new(), vec![line]));
    }
    fn print(&self) {
        for (title, lines) in &self.sections {
            if !title.is_empty() {
                println!("\n### {title}\n");
            } else {
                println!();
            }
            for l in lines {
                println!("{l}");
            }
        }
    }
}

/// `/proc/loadavg`'s 1, 5 and 15 minute figures (the machine is shared).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn verdict(v: f64, target: f64) -> &'static str {
    if v <= target {
        "✅"
    } else {
        "❌"
    }
}

// ---------------------------------------------------------------------------------------------
// A realistic panel: 1000 customers (800 under 50 resellers), 5 admins

struct Customer {
    id: String,
    reseller: Option<String>,
    domain: String,
    ip: String,
}

struct World {
    customers: Vec<Customer>,
    resellers: Vec<String>,
    admins: Vec<&'static str>,
}

impl World {
    fn new() -> World {
        let resellers: Vec<String> = (1..=50).map(|i| format!("res{i:02}")).collect();
        let customers = (0..1000)
            .map(|i| {
                let id = format!("cust{:04}", i + 1);
                Customer {
                    reseller: (i < 800).then(|| resellers[i % 50].clone()),
                    domain: format!("{id}-site.example"),
                    // Unique and never a substring of another (three-digit last octet).
                    ip: format!("198.51.{}.{}", i / 150, 100 + i % 150),
                    id,
                }
            })
            .collect();
        World {
            customers,
            resellers,
            admins: vec!["admin", "ops1", "ops2", "ops3", "ops4"],
        }
    }

    fn customers_of(&self, r: &str) -> Vec<&Customer> {
        self.customers
            .iter()
            .filter(|c| c.reseller.as_deref() == Some(r))
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Who {
    /// A job transition written by the archiver (`system`/`worker`).
    Job,
    /// The customer itself (or occasionally its reseller/admin).
    Customer,
    /// The customer's reseller, an admin or WHMCS.
    Manager,
    /// An admin, on something global.
    Admin,
}

/// The action mix: name, weight (per ~7200), who does it.
const ACTIONS: &[(&str, u32, Who)] = &[
    ("provision_succeeded", 2400, Who::Job),
    ("provision_failed", 60, Who::Job),
    ("restore_succeeded", 500, Who::Job),
    ("restore_failed", 40, Who::Job),
    ("health_check_succeeded", 300, Who::Job),
    ("health_check_failed", 30, Who::Job),
    ("quota_sweep_succeeded", 24, Who::Job),
    ("retention_succeeded", 1, Who::Job),
    ("account_created", 800, Who::Manager),
    ("account_suspended", 300, Who::Manager),
    ("account_unsuspended", 250, Who::Manager),
    ("account_terminated", 150, Who::Manager),
    ("package_changed", 300, Who::Manager),
    ("password_changed", 900, Who::Customer),
    ("restore_started", 600, Who::Customer),
    ("health_check_started", 350, Who::Customer),
    ("job_cancel_requested", 80, Who::Customer),
    ("job_retry_requested", 60, Who::Manager),
    ("package_created", 20, Who::Admin),
    ("package_updated", 30, Who::Admin),
    ("package_activated", 15, Who::Admin),
    ("package_deprecated", 5, Who::Admin),
    ("package_deleted", 3, Who::Admin),
    ("allowance_changed", 10, Who::Admin),
    ("concurrency_changed", 8, Who::Admin),
    ("queue_paused", 1, Who::Admin),
    ("queue_resumed", 1, Who::Admin),
];

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "npanel-cli/0.1",
];

const PACKAGES: &[&str] = &["starter", "basic", "pro", "business"];

fn uuid(rng: &mut Rng) -> String {
    let a = rng.next();
    let b = rng.next();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

fn job_ulid(rng: &mut Rng, ts: i64) -> String {
    ulid::Ulid::from_parts(ts.max(0) as u64, u128::from(rng.next()) << 16).to_string()
}

/// One record as the API or the archiver would write it.
fn audit_record(rng: &mut Rng, w: &World, ts: i64, total_weight: u32) -> NewAudit {
    let mut x = rng.below(u64::from(total_weight)) as u32;
    let &(action, _, who) = ACTIONS
        .iter()
        .find(|(_, wt, _)| {
            if x < *wt {
                true
            } else {
                x -= wt;
                false
            }
        })
        .expect("weights");
    let c = rng.pick(&w.customers);
    let mut r = NewAudit::new(action, Actor::default(), "success");
    r.id = ulid::Ulid::from_parts(ts as u64, u128::from(rng.next()) << 16).to_string();
    r.timestamp = store::ms_time(ts);
    r.request_id = Some(uuid(rng));
    let web_actor = |rng: &mut Rng, kind: &str, id: &str, ip: String| Actor {
        kind: kind.into(),
        id: id.into(),
        ip: Some(ip),
        user_agent: Some(rng.pick(USER_AGENTS).to_string()),
    };
    let api_result = |rng: &mut Rng| {
        if rng.chance(0.04) {
            "failure"
        } else if rng.chance(0.03) {
            "denied"
        } else {
            "success"
        }
    };
    match who {
        Who::Job => {
            let (kind, status) = action.rsplit_once('_').expect("kind_status");
            let global = matches!(kind, "quota_sweep" | "retention");
            let started = ts - 1000 - rng.below(600_000) as i64;
            let job = job_ulid(rng, started);
            r.id = format!("job-{job}-{status}-{ts}");
            r.actor = Actor {
                kind: "system".into(),
                id: "worker".into(),
                ..Actor::default()
            };
            r.result = if status == "succeeded" {
                "success"
            } else {
                "failure"
            }
            .into();
            if !global {
                r.account = Some(c.id.clone());
                r.reseller = c.reseller.clone();
            }
            r.resource = json!({"type": "job", "id": job, "name": kind});
            let error = (status == "failed").then(|| {
                format!(
                    "{kind} for {} failed: agent answered exit status {}",
                    c.id,
                    1 + rng.below(9)
                )
            });
            r.changes = json!({"before": null, "after": {"status": status, "attempts": 1 + rng.below(3),
                "error": error, "result": if status == "succeeded" { json!({"changed": true}) } else { Value::Null }}});
            r.source = json!({"method": "JOB", "endpoint": kind});
            r.job_id = Some(job);
            r.duration_ms = Some(200 + rng.below(300_000));
            r.impact = json!({"accounts_affected": u8::from(!global), "resources_changed": 1});
            if let Some(e) = error {
                r.related_logs = vec![e];
            }
        }
        Who::Customer | Who::Manager => {
            let by_customer = who == Who::Customer && rng.chance(0.85);
            r.actor = if by_customer {
                web_actor(rng, "customer", &c.id, c.ip.clone())
            } else if let (Some(res), true) = (&c.reseller, rng.chance(0.6)) {
                let ip = format!("203.0.113.{}", 10 + res[3..].parse::<u32>().unwrap_or(0));
                web_actor(rng, "reseller", res, ip)
            } else if action.starts_with("account_") && rng.chance(0.3) {
                Actor {
                    kind: "whmcs".into(),
                    id: "whmcs-billing".into(),
                    ip: Some("192.0.2.10".into()),
                    user_agent: Some("WHMCS/8.11".into()),
                }
            } else {
                let a = *rng.pick(&w.admins);
                web_actor(rng, "admin", a, format!("192.0.2.{}", 20 + a.len()))
            };
            let result = api_result(rng);
            r.result = result.into();
            r.account = Some(c.id.clone());
            r.reseller = c.reseller.clone();
            let starts_job = !matches!(action, "job_cancel_requested" | "job_retry_requested");
            let job = job_ulid(rng, ts);
            let (resource, changes, endpoint) = match action {
                "account_created" => (
                    json!({"type": "account", "id": c.id, "name": c.id}),
                    json!({"before": null, "after": {"id": c.id, "type": "customer", "parent": c.reseller,
                        "reseller": c.reseller, "package": rng.pick(PACKAGES), "status": "pending",
                        "domain": c.domain, "email": format!("owner@{}", c.domain), "created_at": ts,
                        "whmcs_service_id": null, "features": ["backups", "cron", "databases", "dns", "email", "php", "ssl", "webmail"]}}),
                    "POST /api/accounts".to_string(),
                ),
                "account_suspended" => (
                    json!({"type": "account", "id": c.id, "name": c.id}),
                    json!({"before": {"status": "active"}, "after": {"status": "suspended", "reason": "invoice overdue"}}),
                    format!("POST /api/accounts/{}/suspend", c.id),
                ),
                "account_unsuspended" => (
                    json!({"type": "account", "id": c.id, "name": c.id}),
                    json!({"before": {"status": "suspended"}, "after": {"status": "active"}}),
                    format!("POST /api/accounts/{}/unsuspend", c.id),
                ),
                "account_terminated" => (
                    json!({"type": "account", "id": c.id, "name": c.id}),
                    json!({"before": {"status": "active"}, "after": {"status": "terminated"}}),
                    format!("POST /api/accounts/{}/terminate", c.id),
                ),
                "package_changed" => (
                    json!({"type": "account", "id": c.id, "name": c.id}),
                    json!({"before": {"package": rng.pick(PACKAGES)}, "after": {"package": rng.pick(PACKAGES)}}),
                    format!("POST /api/accounts/{}/change-package", c.id),
                ),
                "password_changed" => (
                    json!({"type": "account", "id": c.id, "name": c.id}),
                    json!({"before": null, "after": {"password": "**REDACTED**"}}),
                    format!("POST /api/accounts/{}/password", c.id),
                ),
                "restore_started" => (
                    json!({"type": "job", "id": job, "name": "restore"}),
                    json!({"before": null, "after": {"backup": format!("backup-{}.tar.zst", ts / DAY_MS), "target": "home"}}),
                    "POST /api/restore".to_string(),
                ),
                "health_check_started" => (
                    json!({"type": "job", "id": job, "name": "health_check"}),
                    Value::Null,
                    format!("POST /api/migration/{job}/health"),
                ),
                _ => (
                    json!({"type": "job", "id": job, "name": "provision"}),
                    Value::Null,
                    format!(
                        "POST /api/jobs/{job}/{}",
                        if action == "job_cancel_requested" {
                            "cancel"
                        } else {
                            "retry"
                        }
                    ),
                ),
            };
            r.resource = resource;
            r.changes = changes;
            r.source = json!({"method": if r.actor.kind == "whmcs" { "WHMCS" } else { "API" }, "endpoint": endpoint});
            if result == "success" && starts_job {
                r.job_id = Some(job);
            }
            if result != "success" {
                r.related_logs = vec![if result == "denied" {
                    "the role may not use the route".to_string()
                } else {
                    format!("reseller allowance exceeded for {}", c.id)
                }];
            }
            r.duration_ms = Some(1 + rng.below(40));
            r.impact =
                json!({"accounts_affected": 1, "resources_changed": u8::from(result == "success")});
        }
        Who::Admin => {
            let a = *rng.pick(&w.admins);
            r.actor = web_actor(rng, "admin", a, format!("192.0.2.{}", 20 + a.len()));
            r.result = if rng.chance(0.03) {
                "failure"
            } else {
                "success"
            }
            .into();
            let pkg = rng.pick(PACKAGES);
            let (resource, changes, endpoint) = match action {
                "allowance_changed" => {
                    let res = rng.pick(&w.resellers).clone();
                    r.account = Some(res.clone());
                    r.reseller = Some(res.clone());
                    (
                        json!({"type": "reseller", "id": res, "name": res}),
                        json!({"before": {"max_accounts": 100}, "after": {"max_accounts": 200, "disk_mb": 512000}}),
                        format!("PUT /api/resellers/{res}/allowance"),
                    )
                }
                "concurrency_changed" => (
                    json!({"type": "queue", "id": "restore", "name": "restore"}),
                    json!({"before": {"limit": 3}, "after": {"limit": 5}}),
                    "PUT /api/admin/concurrency/restore".to_string(),
                ),
                "queue_paused" | "queue_resumed" => (
                    json!({"type": "queue", "id": "jobs", "name": "jobs"}),
                    Value::Null,
                    format!(
                        "POST /api/admin/queue/{}",
                        &action["queue_".len()..action.len() - 1]
                    ),
                ),
                _ => (
                    json!({"type": "package", "id": pkg, "name": pkg}),
                    json!({"before": {"version": 3}, "after": {"version": 4, "limits": {"disk_mb": 20480}}}),
                    format!("PUT /api/packages/{pkg}"),
                ),
            };
            r.resource = resource;
            r.changes = changes;
            r.source = json!({"method": "API", "endpoint": endpoint});
            r.duration_ms = Some(1 + rng.below(20));
            r.impact = json!({"accounts_affected": 0, "resources_changed": 1});
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Phase `write`: the audit write on the request path, and the drain

async fn phase_write(o: &Opts, db: &Db, rep: &mut Report) {
    let name = format!("storebench-{}", ulid::Ulid::new());
    let q = Queue::new(QueueConfig {
        redis_url: o.redis_url.clone(),
        name,
        ..QueueConfig::default()
    })
    .expect("queue");
    let prefix = q.prefix().to_string();
    REDIS_PREFIXES
        .lock()
        .unwrap()
        .push((o.redis_url.clone(), prefix.clone()));
    let auditor = Auditor::new(q.clone(), db.store.clone());
    let w = World::new();
    let mut rng = Rng(0x5eed_0001);
    let total: u32 = ACTIONS.iter().map(|a| a.1).sum();
    let now = store::now_ms();
    let mut recs: Vec<NewAudit> = (0..o.writes)
        .map(|_| audit_record(&mut rng, &w, now, total))
        .collect();
    let bytes: usize = recs
        .iter()
        .map(|r| serde_json::to_string(r).map(|s| s.len()).unwrap_or(0))
        .sum::<usize>()
        / recs.len();
    // Warm the connection pool.
    for r in recs.iter().take(200) {
        auditor.write(r.clone()).await;
    }
    let mut seq = Vec::with_capacity(recs.len());
    for r in recs.drain(..) {
        let t = Instant::now();
        auditor.write(r).await;
        seq.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let seq = stat(seq);
    // outbox_push alone (the record already serialised).
    let text = serde_json::to_string(&audit_record(&mut rng, &w, now, total)).unwrap();
    let mut raw = Vec::with_capacity(o.writes);
    for _ in 0..o.writes {
        let t = Instant::now();
        q.outbox_push(api::audit::OUTBOX, &text)
            .await
            .expect("outbox_push");
        raw.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let raw = stat(raw);
    // Open loop at `write_rate`/s: each write spawned as its own task (as request handlers
    // are) whether or not the earlier ones finished; timed from the spawn to completion
    // (tokio's timer ticks by the millisecond, so the pacer's own lateness is left out).
    let n_paced = o.writes;
    let period = Duration::from_secs_f64(1.0 / o.write_rate as f64);
    let t_paced = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(n_paced);
    for i in 0..n_paced {
        let at = t_paced + period * i as u32;
        tokio::time::sleep_until(at).await;
        let auditor = auditor.clone();
        let r = audit_record(&mut rng, &w, now, total);
        let t = Instant::now();
        handles.push(tokio::spawn(async move {
            auditor.write(r).await;
            t.elapsed().as_secs_f64() * 1000.0
        }));
    }
    let mut paced = Vec::with_capacity(n_paced);
    for h in handles {
        paced.push(h.await.expect("paced writer"));
    }
    let paced_rate = n_paced as f64 / t_paced.elapsed().as_secs_f64();
    let paced = stat(paced);
    // 32 request handlers writing at once, as fast as they can (a stress figure).
    let tasks = 32;
    let per = o.writes / tasks;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let auditor = auditor.clone();
        let mine: Vec<NewAudit> = (0..per)
            .map(|_| audit_record(&mut rng, &w, now, total))
            .collect();
        handles.push(tokio::spawn(async move {
            let mut v = Vec::with_capacity(mine.len());
            for r in mine {
                let t = Instant::now();
                auditor.write(r).await;
                v.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            v
        }));
    }
    let t_conc = Instant::now();
    let mut conc = Vec::new();
    for h in handles {
        conc.extend(h.await.expect("writer task"));
    }
    let conc_rate = conc.len() as f64 / t_conc.elapsed().as_secs_f64();
    let conc = stat(conc);
    // Drain everything written into the store, 500 per call.
    let mut drain = Vec::new();
    let mut drained = 0usize;
    let t_drain = Instant::now();
    loop {
        let t = Instant::now();
        let n = auditor.drain_once().await.expect("drain");
        if n == 0 {
            break;
        }
        drained += n;
        drain.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let drain_rate = drained as f64 / t_drain.elapsed().as_secs_f64();
    let drain = stat(drain);
    let b = backend_name(db.backend);
    rep.row(format!(
        "| {b} | `Auditor::write` one at a time ({} writes, ~{bytes} B records) | {} | {} |",
        seq.n,
        seq.ms(),
        verdict(seq.p99, TARGET_WRITE_MS)
    ));
    rep.row(format!(
        "| {b} | `Queue::outbox_push` alone (pre-serialised) | {} | {} |",
        raw.ms(),
        verdict(raw.p99, TARGET_WRITE_MS)
    ));
    rep.row(format!(
        "| {b} | `Auditor::write`, open loop at {} writes/s, each its own task ({:.0}/s achieved) | {} | {} |",
        o.write_rate,
        paced_rate,
        paced.ms(),
        verdict(paced.p99, TARGET_WRITE_MS)
    ));
    rep.row(format!(
        "| {b} | `Auditor::write`, 32 writers in a closed loop (saturation: {:.0} writes/s in total) | {} | (stress, no target) |",
        conc_rate,
        conc.ms(),
    ));
    rep.row(format!(
        "| {b} | drain: `Auditor::drain_once` (500 records → store) — {drained} records, {:.0} records/s | {} | |",
        drain_rate,
        drain.ms()
    ));
    drop(auditor);
    drop_redis_keys(&o.redis_url, &prefix).await;
}

// ---------------------------------------------------------------------------------------------
// Phase `accounts`: a reseller's 1000 customers, and the per-request account lookup

async fn phase_accounts(o: &Opts, db: &Db, rep: &mut Report) {
    let s = &db.store;
    let limits = Limits {
        disk_mb: Some(10_240),
        bandwidth_mb: Some(102_400),
        email_accounts: Some(50),
        databases: Some(10),
        addon_domains: Some(5),
        email_per_hour: Some(300),
        email_burst_per_15min: Some(100),
        email_mb_per_hour: None,
        email_max_connections: None,
        cpu_percent: Some(100),
        memory_mb: Some(1024),
        io_mbps: Some(20),
        pids: Some(100),
    };
    for p in ["basic", "pro"] {
        s.create_package(NewPackage {
            id: p.into(),
            name: Some(format!("{p} hosting")),
            limits: limits.clone(),
            features: vec!["everything".into()],
            disabled_features: vec!["ssh".into()],
            pricing: Some(json!({"monthly": 9.99, "currency": "EUR"})),
            owner: None,
        })
        .await
        .expect("create package");
        s.set_package_status(p, PackageStatus::Active)
            .await
            .expect("activate package");
    }
    let reseller = |id: &str, max: u32| NewAccount {
        id: id.into(),
        kind: Some(AccountType::Reseller),
        email: Some(format!("sales@{id}.example")),
        allowance: Some(Allowance {
            max_accounts: max,
            disk_mb: None,
            bandwidth_mb: None,
        }),
        ..NewAccount::default()
    };
    let customer = |id: String, parent: Option<&str>, pkg: &str| NewAccount {
        domain: Some(format!("{id}-site.example")),
        email: Some(format!("owner@{id}-site.example")),
        id,
        kind: Some(AccountType::Customer),
        parent: parent.map(str::to_string),
        package: Some(pkg.into()),
        ..NewAccount::default()
    };
    // Others first, so the reseller's rows are not the whole table: 4 resellers with a quarter
    // of them each, the rest directly under the admin.
    let t_other = Instant::now();
    let others = o.other_accounts;
    for r in 2..=5 {
        s.create_account(&reseller(&format!("res{r}"), 1000))
            .await
            .expect("create reseller");
    }
    let mut all_ids: Vec<String> = Vec::new();
    for i in 0..others {
        let (id, parent) = if i % 2 == 0 {
            (format!("d{:05}", i), None)
        } else {
            let r = 2 + (i / 2) % 4;
            (format!("r{r}c{:05}", i), Some(format!("res{r}")))
        };
        s.create_account(&customer(id.clone(), parent.as_deref(), "pro"))
            .await
            .expect("create customer");
        all_ids.push(id);
    }
    let other_secs = t_other.elapsed().as_secs_f64();
    s.create_account(&reseller("res1", 1000))
        .await
        .expect("create reseller");
    let mut create = Vec::new();
    for i in 1..=1000 {
        let id = format!("r1c{i:04}");
        let t = Instant::now();
        s.create_account(&customer(id.clone(), Some("res1"), "basic"))
            .await
            .expect("create customer of res1");
        create.push(t.elapsed().as_secs_f64() * 1000.0);
        all_ids.push(id);
    }
    // The 1001st is refused (allowance).
    let refused = s
        .create_account(&customer("r1c1001".into(), Some("res1"), "basic"))
        .await
        .is_err();
    let first = stat(create[..100].to_vec());
    let last = stat(create[900..].to_vec());
    let t_act = Instant::now();
    for id in &all_ids {
        s.set_account_status(id, store::AccountStatus::Active, None)
            .await
            .expect("activate");
    }
    log(format!(
        "accounts: {} others in {other_secs:.1} s, 1000 customers of res1, {} activated in {:.1} s; 1001st refused: {refused}",
        others,
        all_ids.len(),
        t_act.elapsed().as_secs_f64()
    ));

    let mut rng = Rng(0x5eed_0003);
    // Warm-up.
    for _ in 0..3 {
        let _ = s.list_accounts(Some("res1"), None, None, 1000).await;
    }
    let mut smp = Sampler::new(o.iters.max(200), o.budget);
    let mut n_rows = 0;
    let mut json_ms = Vec::new();
    let mut json_bytes = 0;
    while smp.more() {
        let t = Instant::now();
        let v = s
            .list_accounts(Some("res1"), None, None, 1000)
            .await
            .expect("list_accounts");
        smp.push(t.elapsed());
        n_rows = v.len();
        let t = Instant::now();
        // As the handler answers: typed accounts serialised straight to bytes (the page's
        // `{"accounts": …, "next_cursor": …}` around them is a few bytes more).
        let body = serde_json::to_vec(&v).unwrap();
        json_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        json_bytes = body.len();
    }
    let list = smp.stat();
    let json_stat = stat(json_ms);
    let mut smp = Sampler::new(o.iters.max(200), o.budget);
    while smp.more() {
        let t = Instant::now();
        let _ = s
            .list_accounts(None, None, None, 100)
            .await
            .expect("list_accounts");
        smp.push(t.elapsed());
    }
    let admin_page = smp.stat();
    let mut smp = Sampler::new(o.iters.max(200), o.budget);
    while smp.more() {
        let id = rng.pick(&all_ids[all_ids.len() - 1000..]).clone();
        let t = Instant::now();
        let v = s
            .list_accounts(Some("res1"), None, Some(&id), 100)
            .await
            .expect("list_accounts");
        smp.push(t.elapsed());
        std::hint::black_box(v);
    }
    let res_page = smp.stat();
    let mut smp = Sampler::new(o.iters.max(2000), o.budget);
    while smp.more() {
        let id = rng.pick(&all_ids);
        let t = Instant::now();
        let a = s.account(id).await.expect("account");
        smp.push(t.elapsed());
        std::hint::black_box(a);
    }
    let one = smp.stat();
    let mut smp = Sampler::new(o.iters, o.budget);
    while smp.more() {
        let t = Instant::now();
        let v = s.reseller_summary("res1").await.expect("summary");
        smp.push(t.elapsed());
        std::hint::black_box(v);
    }
    let summary = smp.stat();
    // Where the time goes: the same SELECT on our own connection, rows fetched but not decoded
    // into accounts, through sqlx's `Any` driver (as the store) and its native driver.
    let sql = "SELECT a.id, a.type, a.parent, a.reseller, a.package, a.status, a.domain, a.email, a.created_at, a.suspended_at, a.suspend_reason, a.terminated_at, a.whmcs_service_id, a.allowance, p.limits AS p_limits, p.features AS p_features, p.disabled_features AS p_disabled FROM accounts a LEFT JOIN packages p ON p.id = a.package WHERE a.id > $1 AND a.reseller = $2 AND a.type = 'customer' ORDER BY a.id LIMIT $3";
    macro_rules! raw_loop {
        ($conn:expr) => {{
            let mut c = $conn;
            let mut smp = Sampler::new(o.iters.max(200), o.budget);
            while smp.more() {
                let t = Instant::now();
                let rows = sqlx::query(sql)
                    .bind("")
                    .bind("res1")
                    .bind(1000i64)
                    .fetch_all(&mut c)
                    .await
                    .expect("raw select");
                // Read every column, as `from_row` does (JSON parsing excluded).
                let mut bytes = 0usize;
                for r in &rows {
                    for i in 0..17 {
                        if matches!(i, 8 | 9 | 11) {
                            bytes +=
                                r.try_get::<Option<i64>, _>(i).expect("int").is_some() as usize;
                        } else {
                            bytes += r
                                .try_get::<Option<String>, _>(i)
                                .expect("text")
                                .map_or(0, |s| s.len());
                        }
                    }
                }
                smp.push(t.elapsed());
                std::hint::black_box(bytes);
            }
            smp.stat()
        }};
    }
    let raw_any = raw_loop!(sqlx::AnyConnection::connect(&db.url)
        .await
        .expect("connect"));
    let raw_native = match db.backend {
        Backend::Sqlite => raw_loop!(sqlx::SqliteConnection::connect(&db.url)
            .await
            .expect("connect")),
        Backend::Postgres => {
            raw_loop!(sqlx::PgConnection::connect(&db.url).await.expect("connect"))
        }
    };
    let b = backend_name(db.backend);
    rep.row(format!(
        "| {b} | `list_accounts(Some(reseller), None, None, 1000)` → {n_rows} accounts | {} | p99 < 20 ms | {} |",
        list.ms(),
        verdict(list.p99, TARGET_LIST_MS)
    ));
    rep.row(format!(
        "| {b} | … + `serde_json` of that page (the handler's extra work; {:.0} KiB) | {} | | |",
        json_bytes as f64 / 1024.0,
        json_stat.ms()
    ));
    rep.row(format!(
        "| {b} | … its SELECT alone on our own connection, 1000 rows, columns read, JSON not parsed: sqlx `Any` driver / native driver | {} / {} | | |",
        raw_any.ms(),
        raw_native.ms()
    ));
    rep.row(format!(
        "| {b} | `list_accounts(Some(reseller), …, after, 100)` (a page of 100 from a cursor) | {} | | |",
        res_page.ms()
    ));
    rep.row(format!(
        "| {b} | `list_accounts(None, …, 100)` (admin, first page of {}) | {} | | |",
        all_ids.len() + 5,
        admin_page.ms()
    ));
    rep.row(format!(
        "| {b} | `account(id)` (auth middleware's hierarchy check), random of {} | {} | < 1 ms | {} |",
        all_ids.len(),
        one.ms(),
        verdict(one.p99, TARGET_ACCOUNT_MS)
    ));
    rep.row(format!(
        "| {b} | `reseller_summary` (1000 customers) | {} | | |",
        summary.ms()
    ));
    rep.row(format!(
        "| {b} | `create_account` of the reseller's customer #1–100 / #901–1000 (p50 each; allowance check reads all its customers) | {} / {} | | |",
        fmt_ms(first.p50),
        fmt_ms(last.p50)
    ));
}

// ---------------------------------------------------------------------------------------------
// Phase `history`: GET /api/jobs with 50 vs 50 000 archived jobs

fn dt(ms: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms)
}

fn history_job(rng: &mut Rng, w: &World, created: i64) -> Job {
    let kind = match rng.below(100) {
        0..=69 => JobKind::Provision,
        70..=84 => JobKind::Restore,
        85..=94 => JobKind::HealthCheck,
        95..=97 => JobKind::QuotaSweep,
        98 => JobKind::Retention,
        _ => JobKind::Upgrade,
    };
    let status = match rng.below(100) {
        0..=89 => JobStatus::Succeeded,
        90..=97 => JobStatus::Failed,
        _ => JobStatus::Cancelled,
    };
    let global = matches!(
        kind,
        JobKind::QuotaSweep | JobKind::Retention | JobKind::Upgrade
    );
    let c = rng.pick(&w.customers);
    let started = created + 50 + rng.below(2000) as i64;
    let finished = started + 500 + rng.below(300_000) as i64;
    let payload = match kind {
        JobKind::Provision => {
            json!({"action": "create", "account": c.id, "package": "basic", "domain": c.domain, "password": "x"})
        }
        JobKind::Restore => {
            json!({"account": c.id, "backup": format!("backup-{}.tar.zst", created / DAY_MS), "target": "home"})
        }
        JobKind::HealthCheck => json!({"account": c.id, "migration_id": job_ulid(rng, created)}),
        _ => json!({}),
    };
    Job {
        id: job_ulid(rng, created),
        kind,
        status,
        account: (!global).then(|| c.id.clone()),
        reseller: if global { None } else { c.reseller.clone() },
        attempts: 1 + (status == JobStatus::Failed) as u32 * 2,
        max_attempts: 3,
        created_at: dt(created),
        started_at: dt(started),
        finished_at: dt(finished),
        progress_percent: if status == JobStatus::Succeeded {
            100.0
        } else {
            42.0
        },
        current_stage: Some("finalize".into()),
        bytes_total: None,
        bytes_processed: None,
        speed_mbps: None,
        eta_seconds: None,
        error: (status == JobStatus::Failed)
            .then(|| "agent answered exit status 9: quota exceeded".to_string()),
        result: (status == JobStatus::Succeeded).then(|| json!({"changed": true})),
        log_tail: vec![
            "prepare: checking the account".into(),
            "prepare: done".into(),
            "apply: writing limits".into(),
            "apply: reloading services".into(),
            "finalize: done".into(),
        ],
        payload,
        cancel_requested: status == JobStatus::Cancelled,
        run_at: None,
    }
}

fn history_row(job: &Job) -> HistoryRow {
    HistoryRow {
        id: job.id.clone(),
        kind: job.kind.to_string(),
        status: job.status.to_string(),
        account: job.account.clone(),
        reseller: job.reseller.clone(),
        finished_at: job.finished_at.map(|t| t.timestamp_millis()).unwrap_or(0),
        doc: serde_json::to_value(job).unwrap_or_default(),
    }
}

async fn phase_history(o: &Opts, db: &Db, rep: &mut Report) {
    let q = Queue::new(QueueConfig {
        redis_url: o.redis_url.clone(),
        name: format!("storebench-{}", ulid::Ulid::new()),
        ..QueueConfig::default()
    })
    .expect("queue");
    let prefix = q.prefix().to_string();
    REDIS_PREFIXES
        .lock()
        .unwrap()
        .push((o.redis_url.clone(), prefix.clone()));
    let w = World::new();
    let mut rng = Rng(0x5eed_0004);
    let total = 50_000usize;
    // 50 000 jobs over the last 90 days (history_days), oldest first.
    let start = store::now_ms() - 90 * DAY_MS;
    let step = 90 * DAY_MS / total as i64;
    let jobs: Vec<Job> = (0..total)
        .map(|i| history_job(&mut rng, &w, start + i as i64 * step))
        .collect();
    let rows: Vec<HistoryRow> = jobs.iter().map(history_row).collect();
    // A reseller and a customer that already have jobs among the first 50.
    let res = rows[..50]
        .iter()
        .rev()
        .find_map(|r| r.reseller.clone())
        .expect("a reseller's job in the first 50");
    let cust = rows[..50]
        .iter()
        .rev()
        .find(|r| r.account.is_some() && r.reseller.is_some())
        .expect("a customer's job in the first 50");
    let viewers: Vec<(String, Viewer, usize)> = vec![
        ("admin, limit 100".into(), Viewer::admin("admin"), 100),
        (
            "admin, limit 50 (the same page size both times)".into(),
            Viewer::admin("admin"),
            50,
        ),
        (
            format!("reseller {res}, limit 100"),
            Viewer {
                role: Role::Reseller,
                subject: res.clone(),
                account: None,
                reseller: Some(res.clone()),
            },
            100,
        ),
        (
            format!(
                "customer {}, limit 100",
                cust.account.clone().unwrap_or_default()
            ),
            Viewer {
                role: Role::Customer,
                subject: cust.account.clone().unwrap_or_default(),
                account: cust.account.clone(),
                reseller: cust.reseller.clone(),
            },
            100,
        ),
    ];
    let mut archive_ms = Vec::new();
    let mut archived = 0usize;
    let mut results: Vec<(usize, String, Stat, usize)> = Vec::new();
    for target in [50usize, total] {
        while archived < target {
            let end = (archived + api::history::BATCH).min(target);
            let chunk = &rows[archived..end];
            let last = chunk.last().expect("rows");
            let t = Instant::now();
            db.store
                .archive_jobs(api::history::MARK, chunk, (last.finished_at, &last.id))
                .await
                .expect("archive_jobs");
            if chunk.len() == api::history::BATCH {
                archive_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            archived = end;
        }
        for (name, v, limit) in &viewers {
            for _ in 0..3 {
                let _ =
                    api::history::list_jobs(&q, &db.store, v, ListFilter::default(), None, *limit)
                        .await;
            }
            let mut smp = Sampler::new(o.iters.max(200), o.budget);
            let mut n = 0;
            while smp.more() {
                let t = Instant::now();
                let (page, _) =
                    api::history::list_jobs(&q, &db.store, v, ListFilter::default(), None, *limit)
                        .await
                        .expect("list_jobs");
                smp.push(t.elapsed());
                n = page.len();
            }
            results.push((target, name.clone(), smp.stat(), n));
        }
        // Page 2 for the admin: from the 100th newest (or the middle when there are fewer).
        let cursor = rows[archived.saturating_sub(100).max(archived / 2)]
            .id
            .clone();
        let mut smp = Sampler::new(o.iters.max(200), o.budget);
        let mut n = 0;
        while smp.more() {
            let t = Instant::now();
            let (page, _) = api::history::list_jobs(
                &q,
                &db.store,
                &viewers[0].1,
                ListFilter::default(),
                Some(&cursor),
                100,
            )
            .await
            .expect("list_jobs");
            smp.push(t.elapsed());
            n = page.len();
        }
        results.push((
            target,
            "admin, next page (cursor), limit 100".into(),
            smp.stat(),
            n,
        ));
        let mut smp = Sampler::new(o.iters.max(200), o.budget);
        while smp.more() {
            let id = &rows[rng.below(archived as u64) as usize].id;
            let t = Instant::now();
            let j = db.store.history_job(id).await.expect("history_job");
            smp.push(t.elapsed());
            std::hint::black_box(j);
        }
        results.push((
            target,
            "one archived job (`history_job`)".into(),
            smp.stat(),
            1,
        ));
    }
    let b = backend_name(db.backend);
    for small in results.iter().filter(|r| r.0 == 50) {
        let name = &small.1;
        let big = results
            .iter()
            .find(|r| r.0 == total && r.1 == *name)
            .expect("pair");
        rep.row(format!(
            "| {b} | {name} | {} ({} jobs) | {} ({} jobs) |",
            small.2.ms(),
            small.3,
            big.2.ms(),
            big.3
        ));
    }
    let a = stat(archive_ms);
    rep.row(format!(
        "| {b} | `archive_jobs` of 500 (the archiver's pass), while growing to 50 000 | {} | |",
        a.ms()
    ));
    drop_redis_keys(&o.redis_url, &prefix).await;
}

// ---------------------------------------------------------------------------------------------
// Phase `audit`: a year of records, then the search shapes

struct GenStats {
    actions: std::collections::BTreeMap<&'static str, u64>,
    results: std::collections::BTreeMap<String, u64>,
}

/// Append `n` records spread over the year before now, `batch` per `append_audit` call;
/// records are built on another thread meanwhile.
async fn generate(o: &Opts, db: &Db) -> (f64, GenStats, i64, i64) {
    let n = o.records;
    let batch = o.batch;
    let end = store::now_ms();
    let start = end - 365 * DAY_MS;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<NewAudit>>(2);
    let producer = std::thread::spawn(move || {
        let w = World::new();
        let mut rng = Rng(0x5eed_0002);
        let total: u32 = ACTIONS.iter().map(|a| a.1).sum();
        let step = (365 * DAY_MS) as f64 / n.max(1) as f64;
        let mut stats = GenStats {
            actions: Default::default(),
            results: Default::default(),
        };
        let mut i = 0u64;
        while i < n {
            let m = (n - i).min(batch as u64);
            let mut v = Vec::with_capacity(m as usize);
            for _ in 0..m {
                let ts = start + (i as f64 * step) as i64;
                let r = audit_record(&mut rng, &w, ts, total);
                let name = ACTIONS.iter().find(|a| a.0 == r.action).expect("action").0;
                *stats.actions.entry(name).or_default() += 1;
                *stats.results.entry(r.result.clone()).or_default() += 1;
                v.push(r);
                i += 1;
            }
            if tx.blocking_send(v).is_err() {
                break;
            }
        }
        stats
    });
    let t0 = Instant::now();
    let mut done = 0u64;
    let mut next_report = n / 20;
    while let Some(v) = rx.recv().await {
        let k = db.store.append_audit(&v).await.expect("append_audit");
        done += k as u64;
        if done >= next_report {
            let el = t0.elapsed().as_secs_f64();
            log(format!(
                "{}: {done} / {n} records, {:.0} records/s, {:.0} s so far, ~{:.0} s left",
                backend_name(db.backend),
                done as f64 / el,
                el,
                (n - done) as f64 / (done as f64 / el)
            ));
            next_report += n / 20;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let stats = producer.join().expect("producer");
    (secs, stats, start, end)
}

#[derive(Clone)]
enum Bind {
    I(i64),
    S(String),
}

/// The SQL `Store::search_audit` runs for `f` (mirrors store/src/audit.rs), for plans.
fn audit_sql(f: &AuditFilter) -> (String, Vec<Bind>) {
    let mut wh: Vec<String> = Vec::new();
    let mut binds: Vec<Bind> = Vec::new();
    let mut add = |cond: &str, b: Bind| {
        binds.push(b);
        wh.push(cond.replace('?', &format!("${}", binds.len())));
    };
    let esc = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    };
    if let Some(v) = f.before_seq {
        add("seq < ?", Bind::I(v));
    }
    if let Some(v) = f.from {
        add("ts >= ?", Bind::I(v));
    }
    if let Some(v) = f.to {
        add("ts < ?", Bind::I(v));
    }
    if let Some(v) = &f.action {
        add("action LIKE ? ESCAPE '\\'", Bind::S(format!("{}%", esc(v))));
    }
    if let Some(v) = &f.account {
        add("account = ?", Bind::S(v.clone()));
    }
    if let Some(v) = &f.reseller {
        add("reseller = ?", Bind::S(v.clone()));
    }
    if let Some(v) = &f.actor {
        add("actor_id = ?", Bind::S(v.clone()));
    }
    if let Some(v) = &f.result {
        add("result = ?", Bind::S(v.clone()));
    }
    if let Some(v) = &f.resource_type {
        add("resource_type = ?", Bind::S(v.clone()));
    }
    if let Some(v) = &f.text {
        add(
            "LOWER(doc) LIKE ? ESCAPE '\\'",
            Bind::S(format!("%{}%", esc(&v.to_lowercase()))),
        );
    }
    let mut sql =
        "SELECT seq, id, ts, account, actor_id, action, result, doc, prev_hash, hash FROM audit"
            .to_string();
    if !wh.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&wh.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", binds.len() + 1));
    binds.push(Bind::I(f.limit));
    (sql, binds)
}

async fn plan(db: &Db, f: &AuditFilter) -> String {
    let (sql, binds) = audit_sql(f);
    let prefix = match db.backend {
        Backend::Sqlite => "EXPLAIN QUERY PLAN ",
        Backend::Postgres => "EXPLAIN (ANALYZE, BUFFERS) ",
    };
    let full = format!("{prefix}{sql}");
    let mut c = match sqlx::AnyConnection::connect(&db.url).await {
        Ok(c) => c,
        Err(e) => return format!("(no plan: {e})"),
    };
    let mut q = sqlx::query(&full);
    for b in binds {
        q = match b {
            Bind::I(i) => q.bind(i),
            Bind::S(s) => q.bind(s),
        };
    }
    let col = match db.backend {
        Backend::Sqlite => "detail",
        Backend::Postgres => "QUERY PLAN",
    };
    match q.fetch_all(&mut c).await {
        Ok(rows) => rows
            .iter()
            .map(|r| r.try_get::<String, _>(col).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("(no plan: {e})"),
    }
}

type MakeFilter = Box<dyn Fn(&mut Rng) -> AuditFilter>;

struct Shape {
    name: &'static str,
    make: MakeFilter,
    /// Time the page after the one `make` describes (before_seq = its last seq).
    page2: bool,
}

/// Take the free-text word index out for the bulk load (`build` = false) and build it
/// afterwards with its migration's own statements (`build` = true: SQLite's migration 4,
/// PostgreSQL's migration 7). Loading 3.65 M records
/// through the index costs 4–5× the time of loading them without it (the index is then built
/// in one pass, as an upgrade builds it over an existing store); `--index-during-load` keeps it.
async fn word_index(db: &Db, build: bool) {
    let mut c = sqlx::AnyConnection::connect(&db.url)
        .await
        .expect("connect for the word index");
    let sql = match (db.backend, build) {
        // The store's append writes to `audit_words`: a table that ignores those writes
        // stands in for the index during the load.
        (Backend::Sqlite, false) => "DROP TABLE audit_words; \
             CREATE TABLE audit_words (doc TEXT); \
             CREATE TRIGGER audit_words_skip BEFORE INSERT ON audit_words BEGIN SELECT RAISE(IGNORE); END;",
        (Backend::Sqlite, true) => concat!(
            "DROP TABLE audit_words; ",
            include_str!("../../../store/migrations/sqlite/0004_audit_text.sql")
        ),
        // The append fills `terms` either way; only its index is taken out.
        (Backend::Postgres, false) => "DROP INDEX audit_terms",
        (Backend::Postgres, true) => concat!(
            "SET maintenance_work_mem = '256MB'; ",
            include_str!("../../../store/migrations/postgres/0007_audit_terms_index.sql")
        ),
    };
    sqlx::raw_sql(sql)
        .execute(&mut c)
        .await
        .expect("word index statements");
}

async fn phase_audit(
    o: &Opts,
    db: &Db,
    notes: &mut Vec<String>,
    rows_out: &mut Vec<String>,
    plans: &mut Vec<String>,
) {
    let b = backend_name(db.backend);
    log(format!("{b}: generating {} audit records…", o.records));
    if !o.index_during_load {
        word_index(db, false).await;
    }
    let (gen_secs, gs, start, end) = generate(o, db).await;
    let mut words = String::new();
    if !o.index_during_load {
        log(format!("{b}: building the word index…"));
        let t = Instant::now();
        word_index(db, true).await;
        words = format!(
            "; the word index built afterwards, as its migration builds it over an existing store: {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
    let load_after_gen = loadavg();
    let size = db_size_mib(db).await;
    let mut maint = String::new();
    if db.backend == Backend::Postgres {
        // What autovacuum does to an insert-only table soon after a bulk load; done here so
        // the plans do not depend on when autovacuum last ran.
        let t = Instant::now();
        if let Ok(mut c) = sqlx::AnyConnection::connect(&db.url).await {
            let _ = sqlx::query("VACUUM (ANALYZE) audit").execute(&mut c).await;
        }
        maint = format!(
            "; then `VACUUM (ANALYZE) audit` {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
    let n = o.records;
    let total = gs.actions.values().sum::<u64>().max(1) as f64;
    let share = |p: &str| {
        gs.actions
            .iter()
            .filter(|(a, _)| a.starts_with(p))
            .map(|(_, v)| *v)
            .sum::<u64>() as f64
            / total
            * 100.0
    };
    notes.push(format!(
        "**{b}, audit generation:** {n} records ({:.0}/day over 365 days) in {:.0} s ({:.0} records/s, batches of {}){words}, database {:.0} MiB{maint}; load average after it {load_after_gen}. Mix: `account_` {:.1} %, `package_` {:.1} %, `queue_` {:.3} %; results {}.",
        n as f64 / 365.0,
        gen_secs,
        n as f64 / gen_secs,
        o.batch,
        size,
        share("account_"),
        share("package_"),
        share("queue_"),
        gs.results
            .iter()
            .map(|(k, v)| format!("{k} {:.1} %", *v as f64 / total * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if o.verify {
        let t = Instant::now();
        let v = db.store.verify_audit().await.expect("verify");
        notes.push(format!(
            "**{b}, `verify_audit` (GET /api/audit/verify) over {} records:** {:.1} s, ok = {} (the API's request timeout is 30 s)",
            v.checked,
            t.elapsed().as_secs_f64(),
            v.ok
        ));
    }

    let w = Arc::new(World::new());
    let span = end - start;
    let week = move |rng: &mut Rng| {
        let from = start + rng.below((span - 7 * DAY_MS) as u64) as i64;
        (from, from + 7 * DAY_MS)
    };
    let max_seq = n as i64;
    let base = || AuditFilter {
        limit: PAGE,
        ..AuditFilter::default()
    };
    let w1 = w.clone();
    let w2 = w.clone();
    let w3 = w.clone();
    let w4 = w.clone();
    let w5 = w.clone();
    let w6 = w.clone();
    let w7 = w.clone();
    let w8 = w.clone();
    let shapes: Vec<Shape> = vec![
        Shape {
            name: "newest page, no filter",
            make: Box::new(move |_| base()),
            page2: false,
        },
        Shape {
            name: "page 2 via before_seq, no filter",
            make: Box::new(move |_| base()),
            page2: true,
        },
        Shape {
            name: "deep page: before_seq anywhere in the year",
            make: Box::new(move |rng| AuditFilter {
                before_seq: Some(1 + rng.below(max_seq.max(1) as u64) as i64),
                ..base()
            }),
            page2: false,
        },
        Shape {
            name: "action prefix `account_` (common)",
            make: Box::new(move |_| AuditFilter {
                action: Some("account_".into()),
                ..base()
            }),
            page2: false,
        },
        Shape {
            name: "action prefix `package_`",
            make: Box::new(move |_| AuditFilter {
                action: Some("package_".into()),
                ..base()
            }),
            page2: false,
        },
        Shape {
            name: "action prefix `queue_` (rare: ~2 a day)",
            make: Box::new(move |_| AuditFilter {
                action: Some("queue_".into()),
                ..base()
            }),
            page2: false,
        },
        Shape {
            name: "one account",
            make: Box::new(move |rng| AuditFilter {
                account: Some(rng.pick(&w1.customers).id.clone()),
                ..base()
            }),
            page2: false,
        },
        Shape {
            name: "page 2 via before_seq, one account",
            make: Box::new(move |rng| AuditFilter {
                account: Some(rng.pick(&w2.customers).id.clone()),
                ..base()
            }),
            page2: true,
        },
        Shape {
            name: "one reseller (what every reseller query adds)",
            make: Box::new(move |rng| AuditFilter {
                reseller: Some(rng.pick(&w3.resellers).clone()),
                ..base()
            }),
            page2: false,
        },
        Shape {
            name: "actor: an admin",
            make: Box::new(move |rng| AuditFilter {
                actor: Some(rng.pick(&w4.admins).to_string()),
                ..base()
            }),
            page2: false,
        },
        Shape {
            name: "actor: one customer",
            make: Box::new(move |rng| AuditFilter {
                actor: Some(rng.pick(&w5.customers).id.clone()),
                ..base()
            }),
            page2: false,
        },
        Shape {
            name: "result = failure",
            make: Box::new(move |_| AuditFilter {
                result: Some("failure".into()),
                ..base()
            }),
            page2: false,
        },
        Shape {
            name: "result = denied",
            make: Box::new(move |_| AuditFilter {
                result: Some("denied".into()),
                ..base()
            }),
            page2: false,
        },
        Shape {
            name: "7-day range (random week)",
            make: Box::new(move |rng| {
                let (from, to) = week(rng);
                AuditFilter {
                    from: Some(from),
                    to: Some(to),
                    ..base()
                }
            }),
            page2: false,
        },
        Shape {
            name: "7-day range, last week",
            make: Box::new(move |_| AuditFilter {
                from: Some(end - 7 * DAY_MS),
                to: Some(end + 1),
                ..base()
            }),
            page2: false,
        },
        Shape {
            name: "q = a customer's IP (~1000 matches a year)",
            make: Box::new(move |rng| AuditFilter {
                text: Some(rng.pick(&w6.customers).ip.clone()),
                ..base()
            }),
            page2: false,
        },
        Shape {
            name: "q = no match (a typo), whole year",
            make: Box::new(move |rng| AuditFilter {
                text: Some(format!("nosuchterm{}", rng.below(1000))),
                ..base()
            }),
            page2: false,
        },
        Shape {
            name: "q = no match + 7-day range",
            make: Box::new(move |rng| {
                let (from, to) = week(rng);
                AuditFilter {
                    from: Some(from),
                    to: Some(to),
                    text: Some(format!("nosuchterm{}", rng.below(1000))),
                    ..base()
                }
            }),
            page2: false,
        },
        Shape {
            name: "q = a customer's IP + 7-day range",
            make: Box::new(move |rng| {
                let (from, to) = week(rng);
                AuditFilter {
                    from: Some(from),
                    to: Some(to),
                    text: Some(rng.pick(&w7.customers).ip.clone()),
                    ..base()
                }
            }),
            page2: false,
        },
        Shape {
            name: "reseller + 7-day range (random week)",
            make: Box::new(move |rng| {
                let (from, to) = week(rng);
                AuditFilter {
                    from: Some(from),
                    to: Some(to),
                    reseller: Some(rng.pick(&w8.resellers).clone()),
                    ..base()
                }
            }),
            page2: false,
        },
        Shape {
            name: "reseller + q = one of its customers' IP",
            make: Box::new({
                let w = w.clone();
                move |rng| {
                    let r = rng.pick(&w.resellers).clone();
                    let cs = w.customers_of(&r);
                    let ip = rng.pick(&cs).ip.clone();
                    AuditFilter {
                        reseller: Some(r),
                        text: Some(ip),
                        ..base()
                    }
                }
            }),
            page2: false,
        },
        Shape {
            name: "reseller + action prefix `account_`",
            make: Box::new({
                let w = w.clone();
                move |rng| AuditFilter {
                    reseller: Some(rng.pick(&w.resellers).clone()),
                    action: Some("account_".into()),
                    ..base()
                }
            }),
            page2: false,
        },
    ];
    let mut rng = Rng(0x5eed_0005);
    for sh in &shapes {
        // Warm-up (not counted).
        let f = (sh.make)(&mut rng);
        let _ = db.store.search_audit(&f).await.expect("search");
        let mut smp = Sampler::new(o.iters, o.budget);
        let mut rows = 0usize;
        let mut last_f = f;
        while smp.more() {
            let mut f = (sh.make)(&mut rng);
            if sh.page2 {
                let first = db.store.search_audit(&f).await.expect("search");
                f.before_seq = first.last().map(|r| r.seq);
            }
            let t = Instant::now();
            let v = db.store.search_audit(&f).await.expect("search");
            smp.push(t.elapsed());
            rows += v.len();
            last_f = f;
        }
        let n_calls = smp.v.len();
        let s = smp.stat();
        let miss = s.p99 > TARGET_AUDIT_MS;
        let line = format!(
            "| {b} | {} | {} | {} | {} | {} | {:.0} | {} |",
            sh.name,
            fmt_ms(s.p50),
            fmt_ms(s.p99),
            fmt_ms(s.max),
            s.n,
            rows as f64 / n_calls.max(1) as f64,
            verdict(s.p99, TARGET_AUDIT_MS)
        );
        log(&line);
        rows_out.push(line);
        if o.explain || miss {
            let p = plan(db, &last_f).await;
            let (sql, _) = audit_sql(&last_f);
            let mut t = String::new();
            let _ = writeln!(
                t,
                "**{b} — {}** (p99 {} ms)\n\n```\n{sql}\n--\n{p}\n```",
                sh.name,
                fmt_ms(s.p99)
            );
            plans.push(t);
        }
    }
}

// ---------------------------------------------------------------------------------------------

async fn run(o: Opts) {
    let mut rep = Report::default();
    let mut plans: Vec<String> = Vec::new();
    rep.note(format!(
        "Run started {} (load average {}), git {}; `{}`",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        loadavg(),
        std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        std::env::args().collect::<Vec<_>>().join(" ")
    ));
    log(format!(
        "backends {:?}, records {}, iters {}, budget {:?} per shape",
        o.backends
            .iter()
            .map(|b| backend_name(*b))
            .collect::<Vec<_>>(),
        o.records,
        o.iters,
        o.budget
    ));
    if phase_on("write") {
        rep.section(
            "Audit write on the request path (target: p99 < 1 ms)",
            "| backend | what | p50 / p99 ms | |",
        );
        for &b in &o.backends {
            let db = open_db(&o, b).await;
            phase_write(&o, &db, &mut rep).await;
            close_db(&o, db).await;
        }
    }
    if phase_on("accounts") {
        rep.section(
            "Accounts: a reseller with 1000 customers",
            "| backend | call | p50 / p99 ms | target | |",
        );
        for &b in &o.backends {
            let db = open_db(&o, b).await;
            phase_accounts(&o, &db, &mut rep).await;
            close_db(&o, db).await;
        }
    }
    if phase_on("history") {
        rep.section(
            "Job history: `api::history::list_jobs` (GET /api/jobs, limit 100) with 50 vs 50 000 archived jobs",
            "| backend | viewer | 50 jobs: p50 / p99 ms | 50 000 jobs: p50 / p99 ms |",
        );
        for &b in &o.backends {
            let db = open_db(&o, b).await;
            phase_history(&o, &db, &mut rep).await;
            close_db(&o, db).await;
        }
    }
    if phase_on("audit") {
        let mut rows: Vec<String> = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        for &b in &o.backends {
            let db = open_db(&o, b).await;
            phase_audit(&o, &db, &mut notes, &mut rows, &mut plans).await;
            close_db(&o, db).await;
        }
        for n in notes {
            rep.note(n);
        }
        rep.section(
            &format!(
                "Audit search, {} records, page of {PAGE} (target: p99 < 500 ms)",
                o.records
            ),
            "| backend | shape | p50 ms | p99 ms | max ms | calls | rows/call | |",
        );
        for r in rows {
            rep.sections.last_mut().expect("section").1.push(r);
        }
    }
    rep.note(format!(
        "Run ended {} (load average {})",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        loadavg()
    ));
    rep.print();
    if !plans.is_empty() {
        println!("\n### Plans\n");
        for p in plans {
            println!("{p}");
        }
    }
}

fn main() {
    let o = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = run(o) => {}
            _ = tokio::signal::ctrl_c() => log("interrupted; cleaning up"),
            _ = term.recv() => log("terminated; cleaning up"),
        }
        cleanup_all().await;
    });
}
