//! `npanel-bench`: the queue benchmark (issue 2). A release binary, not a test.
//!
//! Measures, with the full contract on (bound, leases, per-kind limits, per-account order,
//! events), against one Redis:
//! - enqueue rate, one by one (each awaited) and in bulk (`BULK` jobs per script);
//! - processing throughput of no-op `diagnostic` jobs at concurrency 1 and 50;
//! - pickup latency p50/p99 for `TRICKLE` jobs sent at `RATE`/s to idle workers;
//! - an idle worker pool's CPU over `IDLE_SECS` (and the Redis commands it issued);
//! - per-job cost with a `BACKLOG`-job backlog versus an `N`-job one.
//!
//! Jobs carry the peers' shape: a u64 (the send time, for latency) and a 64-byte string.
//! Accounts rotate over 1000 names, so per-account ordering is exercised without serialising.
//!
//! `npanel-bench` prints a markdown table; `npanel-bench --json` prints the JSON lines that
//! `../shared/bench/peers/run.sh` reads (`NPANEL_BENCH_CMD`). `REDIS_URL` selects the Redis;
//! without it a private redis-server is started on a Unix socket.

use loadtests::PrivateRedis;
use loadtests::{cpu_ticks, env_u64, pct, phase_on};
use queue::{Diagnostic, JobKind, NewJob, Queue, QueueConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use workers::{Pool, PoolConfig, Registry};

struct Bench {
    url: String,
    json: bool,
    rows: Vec<(String, String)>,
}

impl Bench {
    fn emit(&mut self, metric: &str, value: f64, shown: String) {
        if self.json {
            println!("{{\"system\":\"npanel\",\"metric\":\"{metric}\",\"value\":{value:.3}}}");
        }
        eprintln!("[bench] {metric}: {shown}");
        self.rows.push((metric.to_string(), shown));
    }

    fn queue(&self, max_pending: u32) -> Queue {
        Queue::new(QueueConfig {
            redis_url: self.url.clone(),
            name: format!("bench-{}", ulid::Ulid::new()),
            max_pending,
            max_finished: 1_000_000,
            events_maxlen: 10_000,
            pool_size: 4,
            ..QueueConfig::default()
        })
        .expect("queue")
    }
}

fn job(i: u64, id: u64) -> NewJob {
    NewJob::typed(&Diagnostic {
        id: Some(id),
        note: Some("x".repeat(64)),
        ..Default::default()
    })
    .account(format!("acct{}", i % 1000))
}

async fn cleanup(q: &Queue) {
    let keys: Vec<String> = q
        .raw(redis::cmd("KEYS").arg(format!("{}*", q.prefix())))
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(1000) {
        let _: Result<i64, _> = q.raw(redis::cmd("UNLINK").arg(chunk)).await;
    }
}

async fn enqueue_seq(q: &Queue, n: u64) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        q.enqueue(job(i, i)).await.expect("enqueue");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn enqueue_bulk(q: &Queue, n: u64, bulk: u64) -> f64 {
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + bulk).min(n);
        q.enqueue_bulk((i..end).map(|j| job(j, j)).collect())
            .await
            .expect("enqueue_bulk");
        i = end;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

struct Counters {
    first: OnceLock<Instant>,
    lats: Mutex<Vec<f64>>,
    seen: AtomicU64,
}

fn registry(c: Arc<Counters>, base: Instant, latency: bool) -> Registry {
    Registry::new().register(JobKind::Diagnostic, move |ctx| {
        let c = c.clone();
        async move {
            let now = Instant::now();
            let _ = c.first.set(now);
            if latency {
                let sent = ctx.raw_payload["id"].as_u64().unwrap_or(0);
                let ns = (now - base).as_nanos() as u64;
                c.lats
                    .lock()
                    .unwrap()
                    .push(ns.saturating_sub(sent) as f64 / 1e6);
            }
            c.seen.fetch_add(1, Ordering::Relaxed);
            Ok(serde_json::Value::Null)
        }
    })
}

fn start_pool(
    q: &Queue,
    reg: Registry,
    c: usize,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let pool = Pool::new(
        q.clone(),
        reg,
        PoolConfig {
            concurrency: c,
            claim_batch: c.clamp(1, 50),
            ..PoolConfig::default()
        },
    );
    let s = stop.clone();
    (
        stop,
        tokio::spawn(async move { pool.run(s).await.unwrap() }),
    )
}

async fn finished(q: &Queue) -> u64 {
    q.raw(redis::cmd("ZCARD").arg(format!("{}finished", q.prefix())))
        .await
        .unwrap_or(0)
}

/// The sum of `fields` in Redis's `INFO section` (0 where Redis cannot be read).
async fn info_sum(q: &Queue, section: &str, fields: &[&str]) -> f64 {
    let s: String = q
        .raw(redis::cmd("INFO").arg(section))
        .await
        .unwrap_or_default();
    s.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| fields.contains(k))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// Redis's own CPU time so far (user + system), in seconds.
async fn redis_cpu(q: &Queue) -> f64 {
    info_sum(q, "cpu", &["used_cpu_user", "used_cpu_sys"]).await
}

/// Process `n` pre-enqueued jobs at concurrency `c`.
/// Jobs per second from the first job started to the `n`th finished, and Redis CPU time per
/// job (µs) over the same run: the queue's cost on the shared server, which noise on the
/// machine moves far less than throughput.
async fn process(b: &Bench, n: u64, backlog: u64, c: usize) -> (f64, f64) {
    let q = b.queue((backlog + 1) as u32);
    q.set_limit(JobKind::Diagnostic, c as u32).await.unwrap();
    enqueue_bulk(&q, backlog, 1000).await;
    let counters = Arc::new(Counters {
        first: OnceLock::new(),
        lats: Mutex::new(Vec::new()),
        seen: AtomicU64::new(0),
    });
    let cpu0 = redis_cpu(&q).await;
    let (stop, h) = start_pool(&q, registry(counters.clone(), Instant::now(), false), c);
    let end = loop {
        if finished(&q).await >= n {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let cpu_us = (redis_cpu(&q).await - cpu0) * 1e6 / n as f64;
    stop.cancel();
    // Jobs still running at this point are requeued (backlog runs); that is fine.
    let _ = tokio::time::timeout(Duration::from_secs(60), h).await;
    let rate = n as f64 / (end - *counters.first.get().unwrap()).as_secs_f64();
    cleanup(&q).await;
    (rate, cpu_us)
}

async fn latency(b: &Bench, m: u64, rate: u64, c: usize) -> (f64, f64) {
    let q = b.queue((m + 1) as u32);
    q.set_limit(JobKind::Diagnostic, c as u32).await.unwrap();
    let base = Instant::now();
    let counters = Arc::new(Counters {
        first: OnceLock::new(),
        lats: Mutex::new(Vec::with_capacity(m as usize)),
        seen: AtomicU64::new(0),
    });
    let (stop, h) = start_pool(&q, registry(counters.clone(), base, true), c);
    tokio::time::sleep(Duration::from_millis(500)).await; // idle, blocked on pub/sub
                                                          // Producer on its own OS thread and runtime, like a separate client process.
    let pq = Queue::new(q.config().clone()).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            pq.ping().await.unwrap();
            let t0 = Instant::now();
            let period = Duration::from_nanos(1_000_000_000 / rate);
            for i in 0..m {
                tokio::time::sleep_until((t0 + period * i as u32).into()).await;
                let id = base.elapsed().as_nanos() as u64;
                pq.enqueue(job(i, id)).await.expect("enqueue");
            }
        });
    })
    .join()
    .unwrap();
    while counters.seen.load(Ordering::Relaxed) < m {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    let _ = h.await;
    let mut v = counters.lats.lock().unwrap().clone();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    cleanup(&q).await;
    (pct(&v, 50.0), pct(&v, 99.0))
}

async fn commands(q: &Queue) -> u64 {
    info_sum(q, "stats", &["total_commands_processed"]).await as u64
}

async fn idle(b: &Bench, secs: u64) -> (f64, u64) {
    let q = b.queue(100);
    let counters = Arc::new(Counters {
        first: OnceLock::new(),
        lats: Mutex::new(Vec::new()),
        seen: AtomicU64::new(0),
    });
    let (stop, h) = start_pool(&q, registry(counters, Instant::now(), false), 64);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c0 = commands(&q).await;
    let t0 = cpu_ticks(std::process::id()).unwrap_or(0) as f64 / 100.0;
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let cpu = ((cpu_ticks(std::process::id()).unwrap_or(0) as f64 / 100.0) - t0)
        / w0.elapsed().as_secs_f64()
        * 100.0;
    let cmds = commands(&q).await.saturating_sub(c0 + 1);
    stop.cancel();
    let _ = h.await;
    cleanup(&q).await;
    (cpu, cmds)
}

fn rate_str(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1}k jobs/s", v / 1000.0)
    } else {
        format!("{v:.0} jobs/s")
    }
}

#[tokio::main]
async fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let (url, _private) = match std::env::var("REDIS_URL") {
        Ok(u) if !u.is_empty() => (u, None),
        _ => {
            let r = PrivateRedis::start();
            (r.url.clone(), Some(r))
        }
    };
    let n = env_u64("N", 20_000);
    let m = env_u64("TRICKLE", 1000);
    let rate = env_u64("RATE", 200);
    let bulk = env_u64("BULK", 1000);
    let backlog = env_u64("BACKLOG", 100_000);
    let idle_secs = env_u64("IDLE_SECS", 30);
    let mut b = Bench {
        url,
        json,
        rows: Vec::new(),
    };

    if phase_on("enqueue") {
        let q = b.queue((n + 1) as u32);
        let r = enqueue_seq(&q, n).await;
        b.emit("enqueue", r, rate_str(r));
        cleanup(&q).await;
        let q = b.queue((n + 1) as u32);
        let r = enqueue_bulk(&q, n, bulk).await;
        b.emit("enqueue_bulk", r, rate_str(r));
        cleanup(&q).await;
    }
    if phase_on("proc") {
        for c in [1usize, 50] {
            let (r, cpu) = process(&b, n, n, c).await;
            b.emit(&format!("proc_c{c}"), r, rate_str(r));
            b.emit(
                &format!("redis_us_per_job_c{c}"),
                cpu,
                format!("{cpu:.1} µs of Redis CPU per job"),
            );
        }
    }
    if phase_on("lat") {
        for c in [1usize, 50] {
            let (p50, p99) = latency(&b, m, rate, c).await;
            b.emit(&format!("lat_c{c}_p50"), p50, format!("{p50:.3} ms"));
            b.emit(&format!("lat_c{c}_p99"), p99, format!("{p99:.3} ms"));
        }
    }
    if phase_on("backlog") {
        let (r, _) = process(&b, n, backlog, 50).await;
        b.emit(
            "proc_c50_backlog",
            r,
            format!("{} (first {n} of a {backlog}-job backlog)", rate_str(r)),
        );
    }
    if phase_on("idle") {
        let (cpu, cmds) = idle(&b, idle_secs).await;
        b.emit(
            "idle_cpu_pct",
            cpu,
            format!("{cpu:.3} % of one core over {idle_secs} s, {cmds} Redis commands"),
        );
    }
    if !json {
        println!("| metric | value |\n|---|---|");
        for (k, v) in &b.rows {
            println!("| {k} | {v} |");
        }
    }
}
