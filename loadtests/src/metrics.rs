//! What a chaos or soak run measures, every 10 s, as JSON lines: per process (serve, workers,
//! Redis, agent) CPU % of one core, RSS and open fds from `/proc`; established TCP connections
//! to the server's port from `/proc/net/tcp{,6}`; the driver's own API latency percentiles,
//! error rate and 5xx/503 counts over the interval; the queue's depth from `GET
//! /api/admin/queue`; the load average (the machine is shared, so noise is recorded, not
//! guessed). At the end: a summary with pass/fail per promise (JSON + Markdown) and the drift
//! plot (`plot.rs`).
//!
//! Latencies come from the driver's requests (send to last byte), not from the server's own
//! metrics: that is what a client sees, and a stalled server cannot under-report it.

use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::procs::{unix_secs, ReqError, Resp};

#[derive(Default)]
struct Window {
    lat: Vec<f64>,
    n: u64,
    errors: u64,
    s5xx: u64,
    s500: u64,
    s503: u64,
    s429: u64,
}

#[derive(Default)]
struct Totals {
    n: u64,
    errors: u64,
    s500: u64,
    s503: u64,
    s429: u64,
    transport: u64,
    all_lat: Vec<f32>,
}

/// Every request the driver makes, by interval and in total. Cheap to clone.
#[derive(Clone, Default)]
pub struct Recorder {
    win: Arc<Mutex<Window>>,
    tot: Arc<Mutex<Totals>>,
}

impl Recorder {
    /// Records one outcome. An error is a transport failure, a timeout or a 5xx other than 503
    /// (503 is the contract's answer for "queue full" and "Redis unavailable"; counted apart).
    pub fn record(&self, r: &Result<Resp, ReqError>) {
        let mut w = self.win.lock().unwrap();
        let mut t = self.tot.lock().unwrap();
        w.n += 1;
        t.n += 1;
        match r {
            Ok(resp) => {
                w.lat.push(resp.ms);
                t.all_lat.push(resp.ms as f32);
                let s = resp.status.as_u16();
                if s >= 500 {
                    w.s5xx += 1;
                }
                match s {
                    503 => {
                        w.s503 += 1;
                        t.s503 += 1;
                    }
                    429 => {
                        w.s429 += 1;
                        t.s429 += 1;
                    }
                    500..=599 => {
                        w.errors += 1;
                        t.errors += 1;
                        if s == 500 {
                            w.s500 += 1;
                            t.s500 += 1;
                        }
                    }
                    _ => {}
                }
            }
            Err(_) => {
                w.errors += 1;
                t.errors += 1;
                t.transport += 1;
            }
        }
    }

    /// The interval's figures, and a new interval.
    fn take(&self) -> Value {
        let w = std::mem::take(&mut *self.win.lock().unwrap());
        let mut lat = w.lat;
        lat.sort_by(|a, b| a.total_cmp(b));
        json!({
            "n": w.n,
            "p50_ms": nan_null(crate::pct(&lat, 50.0)),
            "p95_ms": nan_null(crate::pct(&lat, 95.0)),
            "p99_ms": nan_null(crate::pct(&lat, 99.0)),
            "max_ms": lat.last().copied(),
            "errors": w.errors,
            "error_rate": if w.n > 0 { w.errors as f64 / w.n as f64 } else { 0.0 },
            "s5xx": w.s5xx, "s500": w.s500, "s503": w.s503, "s429": w.s429,
        })
    }

    /// Totals of the whole run: `(requests, errors, 500s, 503s, 429s, transport errors)`.
    pub fn totals(&self) -> (u64, u64, u64, u64, u64, u64) {
        let t = self.tot.lock().unwrap();
        (t.n, t.errors, t.s500, t.s503, t.s429, t.transport)
    }

    /// p50/p95/p99 of the whole run, in ms.
    pub fn overall(&self) -> (f64, f64, f64) {
        let mut v: Vec<f64> = self
            .tot
            .lock()
            .unwrap()
            .all_lat
            .iter()
            .map(|x| *x as f64)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        (
            crate::pct(&v, 50.0),
            crate::pct(&v, 95.0),
            crate::pct(&v, 99.0),
        )
    }
}

fn nan_null(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// The processes under test, updated by the driver whenever one is restarted.
pub type PidBoard = Arc<Mutex<Vec<(String, u32)>>>;

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `RssAnon`, `RssFile` and `RssShmem` of `pid` in KiB: which part of the RSS moves (heap and
/// allocator arenas, mapped files such as SQLite's, or shared memory) when it drifts.
pub fn rss_parts_kib(pid: u32) -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some((field("RssAnon:")?, field("RssFile:")?, field("RssShmem:")?))
}

/// Open file descriptors of `pid`.
pub fn fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The soft `Max open files` of `pid`.
pub fn nofile_limit(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
}

/// Established TCP connections whose local port is `port` (the server's side of each client
/// connection), from `/proc/net/tcp` and `/proc/net/tcp6`.
pub fn established(port: u16) -> u64 {
    let mut n = 0;
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(s) = std::fs::read_to_string(f) else {
            continue;
        };
        for l in s.lines().skip(1) {
            let mut it = l.split_whitespace();
            let (Some(_), Some(local), Some(_), Some(st)) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                continue;
            };
            let lport = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if lport == Some(port) && st == "01" {
                n += 1;
            }
        }
    }
    n
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// One interval's record (one JSON line).
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub t: f64,
    /// Seconds since the run started.
    pub elapsed_s: f64,
    pub load1: f64,
    /// Per process: `{pid, cpu_pct, rss_kib, rss_anon_kib, rss_file_kib, rss_shmem_kib, fds}`.
    pub procs: BTreeMap<String, Value>,
    /// Established connections to the server's port.
    pub conns: u64,
    pub api: Value,
    /// `GET /api/admin/queue` (null when it did not answer).
    pub queue: Value,
    /// The driver's own counters (kills, watchers, ...).
    pub extra: Value,
}

impl Sample {
    /// A figure of process `name` (`rss_kib`, `fds`, `cpu_pct`).
    pub fn proc_f(&self, name: &str, key: &str) -> Option<f64> {
        self.procs.get(name)?.get(key)?.as_f64()
    }
    /// An API figure (`p99_ms`, ...).
    pub fn api_f(&self, key: &str) -> Option<f64> {
        self.api.get(key)?.as_f64()
    }
}

/// Driver-supplied extra figures for each sample.
pub type Extra = Arc<dyn Fn() -> Value + Send + Sync>;

/// The 10-second sampler: writes `metrics.jsonl` in the run's output dir and keeps the samples.
pub struct Sampler {
    pub samples: Arc<Mutex<Vec<Sample>>>,
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling every `every` until [`Sampler::finish`].
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        out: &Path,
        every: Duration,
        board: PidBoard,
        port: u16,
        api: crate::procs::Api,
        rec: Recorder,
        extra: Extra,
    ) -> Sampler {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let stop = tokio_util::sync::CancellationToken::new();
        let path = out.join("metrics.jsonl");
        let (s2, stop2) = (samples.clone(), stop.clone());
        let t0 = Instant::now();
        let task = tokio::spawn(async move {
            let mut file = std::fs::File::create(&path).ok();
            let mut prev: BTreeMap<u32, (u64, Instant)> = BTreeMap::new();
            let tick = clk_tck();
            // The first interval starts now: CPU baselines and a fresh latency window.
            for (_, pid) in board.lock().unwrap().iter() {
                if let Some(c) = crate::cpu_ticks(*pid) {
                    prev.insert(*pid, (c, Instant::now()));
                }
            }
            rec.take();
            loop {
                tokio::select! {
                    _ = stop2.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let mut procs = BTreeMap::new();
                let list = board.lock().unwrap().clone();
                let mut next = BTreeMap::new();
                for (name, pid) in list {
                    let now = Instant::now();
                    let c = crate::cpu_ticks(pid);
                    let cpu = match (c, prev.get(&pid)) {
                        (Some(c), Some((p, t))) => {
                            let secs = now.duration_since(*t).as_secs_f64().max(0.001);
                            Some((c.saturating_sub(*p)) as f64 / tick / secs * 100.0)
                        }
                        _ => None,
                    };
                    if let Some(c) = c {
                        next.insert(pid, (c, now));
                    }
                    let (anon, file, shmem) = match rss_parts_kib(pid) {
                        Some((a, f, s)) => (Some(a), Some(f), Some(s)),
                        None => (None, None, None),
                    };
                    procs.insert(
                        name,
                        json!({"pid": pid, "cpu_pct": cpu, "rss_kib": rss_kib(pid),
                               "rss_anon_kib": anon, "rss_file_kib": file,
                               "rss_shmem_kib": shmem, "fds": fds(pid)}),
                    );
                }
                prev = next;
                let queue = match api.get("/api/admin/queue").await {
                    Ok(r) if r.status.is_success() => r.json(),
                    _ => Value::Null,
                };
                let s = Sample {
                    t: unix_secs(),
                    elapsed_s: t0.elapsed().as_secs_f64(),
                    load1: load1(),
                    procs,
                    conns: established(port),
                    api: rec.take(),
                    queue,
                    extra: extra(),
                };
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{}", serde_json::to_string(&s).unwrap_or_default());
                    let _ = f.flush();
                }
                s2.lock().unwrap().push(s);
            }
        });
        Sampler {
            samples,
            stop,
            task: Some(task),
        }
    }

    /// Stops and returns every sample.
    pub async fn finish(mut self) -> Vec<Sample> {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.samples.lock().unwrap().clone()
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ: 100 on every Linux ABI we run on).
fn clk_tck() -> f64 {
    100.0
}

/// Drift of a series after warm-up: (mean of the last fifth − mean of the first fifth) / mean
/// of the first fifth, plus the two means. `None` with fewer than 5 points.
pub fn drift(points: &[f64]) -> Option<(f64, f64, f64)> {
    if points.len() < 5 {
        return None;
    }
    let k = (points.len() / 5).max(1);
    let first: f64 = points[..k].iter().sum::<f64>() / k as f64;
    let last: f64 = points[points.len() - k..].iter().sum::<f64>() / k as f64;
    if first == 0.0 {
        return Some((if last == 0.0 { 0.0 } else { f64::INFINITY }, first, last));
    }
    Some(((last - first) / first, first, last))
}

/// One promise of the run, judged.
#[derive(Clone, Debug, Serialize)]
pub struct Promise {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub pass: bool,
    /// What was lost or broken, ids involved, log lines (empty when it passed).
    pub evidence: Vec<String>,
}

impl Promise {
    /// A promise with its figures.
    pub fn new(name: &str, target: &str, measured: String, pass: bool) -> Promise {
        Promise {
            name: name.into(),
            target: target.into(),
            measured,
            pass,
            evidence: Vec::new(),
        }
    }
    /// Adds evidence (kept only for a failure, at most 50 lines).
    pub fn evidence(mut self, lines: Vec<String>) -> Promise {
        if !self.pass {
            self.evidence.extend(lines.into_iter().take(50));
        }
        self
    }
}

/// Writes `summary.json` and `summary.md` into `out`; returns the Markdown.
pub fn write_summary(out: &Path, title: &str, info: &Value, promises: &[Promise]) -> String {
    let all = promises.iter().all(|p| p.pass);
    let j = json!({"title": title, "pass": all, "info": info, "promises": promises});
    let _ = std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&j).unwrap_or_default(),
    );
    let mut md = format!("# {title}: {}\n\n", if all { "PASS" } else { "FAIL" });
    if let Some(o) = info.as_object() {
        for (k, v) in o {
            md.push_str(&format!("- {k}: {}\n", v.to_string().trim_matches('"')));
        }
        md.push('\n');
    }
    md.push_str("| promise | target | measured | |\n|---|---|---|---|\n");
    for p in promises {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            p.name,
            p.target,
            p.measured,
            if p.pass { "pass" } else { "**FAIL**" }
        ));
    }
    for p in promises
        .iter()
        .filter(|p| !p.pass && !p.evidence.is_empty())
    {
        md.push_str(&format!("\n## {} — evidence\n\n```text\n", p.name));
        for l in &p.evidence {
            md.push_str(l);
            md.push('\n');
        }
        md.push_str("```\n");
    }
    let _ = std::fs::write(out.join("summary.md"), &md);
    md
}

/// The run's output files (for the final message).
pub fn outputs(out: &Path) -> Vec<PathBuf> {
    ["summary.md", "summary.json", "metrics.jsonl", "plot.png"]
        .iter()
        .map(|f| out.join(f))
        .filter(|p| p.exists())
        .collect()
}
