//! `npanel-soak`: the seed's four soak scenarios (issue 13), each with a short mode (≤ 5
//! minutes, a smoke run) and a long mode (hours), against the real release binaries:
//!
//! - `normal`: 1000 accounts created through the API, then `--rate` (100) API requests/s open
//!   loop (job reads, account reads, queue views, job lists, diagnostic enqueues), jobs flowing
//!   through `npanel serve` + one `npanel worker`, `--watchers` (50) WebSocket watchers on
//!   `/api/events/live`. Promises: error rate, p99, RSS drift < 5 % after warm-up, fds flat,
//!   p99 flat, watchers alive, every job finished.
//! - `agent`: the privileged `npanel-agent` under `npanel-watchdog` (root; a temp host root,
//!   pseudo users, a cgroup v2 tree of its own), `npanel serve` pointed at its socket,
//!   provisioning (create, suspend, unsuspend, password) flowing while the agent is SIGKILLed
//!   every `--kill-every` s. Promises: the watchdog brings it back every time, no job lost,
//!   one terminal audit record per job, none failed.
//! - `exhaustion`: the host root on a small tmpfs (root): backups fill it; a job on a full disk
//!   fails with an error naming the lack of space, and succeeds when retried after space is
//!   freed; no half-written archive, store integrity intact. Then memory pressure on a worker
//!   (a cgroup memory limit below its needs where the kernel charges the cgroup, else its
//!   address-space limit at what it has mapped, while jobs with 256 KiB payloads arrive): it
//!   fails (killed, or aborting on an allocation), its jobs are recovered by the others,
//!   nothing lost.
//! - `storm`: `--conns` (10 000) concurrent connections (half WebSocket upgrades, half plain
//!   HTTP keep-alive) against serve: WebSockets beyond `ws.max_connections` refused cleanly
//!   (an HTTP status or a close frame, never a reset or a hang), the server's fds below its
//!   limit, `/healthz` answering throughout, fds back to baseline afterwards.
//!
//! Every run writes `metrics.jsonl` (every 10 s), `summary.md`/`summary.json` (pass/fail per
//! promise, with the ids and log lines of any failure) and `plot.png` into `--out` (default
//! `target/chaos/soak-<scenario>-<time>/`). Exit status 0 when every promise held.

use anyhow::{bail, Context};
use futures::StreamExt;
use loadtests::drive::{self, Args, Oddities, SubmitStats};
use loadtests::metrics::{self, PidBoard, Promise, Recorder, Sample, Sampler};
use loadtests::procs::{self, log, Api, Proc, Stack, StackOpts};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use ws::client::{ClientError, HttpClient};

const USAGE: &str = "npanel-soak --scenario normal|agent|exhaustion|storm [--mode short|long]
  [--duration SECS] [--out DIR] [--keep]
normal:     [--accounts 1000] [--rate 100] [--watchers 50] [--warmup SECS]
agent:      [--kill-every SECS (short 10, long 180)] [--ops 4]
exhaustion: [--tmpfs-mb 64]
storm:      [--conns 10000] [--hold SECS]
Starts private redis-server + npanel serve (+ workers, agent) from target/release; see
loadtests/CHAOS.md.";

fn main() -> anyhow::Result<()> {
    let args = Args::parse(USAGE);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    let ok = rt.block_on(run(args))?;
    std::process::exit(if ok { 0 } else { 1 });
}

/// What every scenario shares: the stack, the API, the sampler.
struct Run {
    out: PathBuf,
    stack: Arc<Mutex<Stack>>,
    api: Api,
    rec: Recorder,
    board: PidBoard,
    stats: Arc<SubmitStats>,
    odd: Oddities,
}

impl Run {
    fn pids(&self) {
        let p = self.stack.lock().unwrap().pids();
        let mut b = self.board.lock().unwrap();
        // Keep extra entries (the agent) the scenario added.
        b.retain(|(n, _)| n.starts_with("agent"));
        b.extend(p);
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let scenario = args.str("scenario").unwrap_or("").to_string();
    let long = match args.str("mode").unwrap_or("short") {
        "short" => false,
        "long" => true,
        m => bail!("--mode {m:?}: use short or long"),
    };
    let default_secs = match (scenario.as_str(), long) {
        ("normal", false) => 150.0,
        ("agent", false) => 120.0,
        ("exhaustion", false) => 0.0,
        ("storm", false) => 60.0,
        (_, true) => 4.0 * 3600.0,
        _ => 0.0,
    };
    if !matches!(
        scenario.as_str(),
        "normal" | "agent" | "exhaustion" | "storm"
    ) {
        bail!("--scenario {scenario:?}: use normal, agent, exhaustion or storm\n\n{USAGE}");
    }
    let duration = Duration::from_secs_f64(args.num("duration", default_secs));
    let out = procs::out_dir(args.str("out"), &format!("soak-{scenario}"));
    log(format!(
        "scenario {scenario}, {} mode, {:.0} s, output in {}",
        if long { "long" } else { "short" },
        duration.as_secs_f64(),
        out.display()
    ));
    let needs_root = matches!(scenario.as_str(), "agent" | "exhaustion");
    if needs_root && !nix::unistd::Uid::effective().is_root() {
        bail!("the {scenario} scenario needs root (the agent / a tmpfs mount / cgroups)");
    }
    let tag = format!("{:04}", (procs::unix_secs() as u64) % 10_000);
    let started = Instant::now();
    let (promises, info, samples) = match scenario.as_str() {
        "normal" => normal(&args, &out, long, duration, tag).await?,
        "agent" => agent(&args, &out, long, duration, tag).await?,
        "exhaustion" => exhaustion(&args, &out, long, tag).await?,
        _ => storm(&args, &out, long, duration).await?,
    };
    let mut info = info;
    info["scenario"] = json!(scenario);
    info["mode"] = json!(if long { "long" } else { "short" });
    info["wall_seconds"] = json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    info["load_average_at_end"] = json!(std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim());
    let loads: Vec<f64> = samples
        .iter()
        .map(|s| s.load1)
        .filter(|x| x.is_finite())
        .collect();
    if !loads.is_empty() {
        info["load1_mean_max"] = json!([
            (loads.iter().sum::<f64>() / loads.len() as f64 * 100.0).round() / 100.0,
            loads.iter().cloned().fold(0.0, f64::max)
        ]);
    }
    let md = metrics::write_summary(&out, &format!("npanel-soak: {scenario}"), &info, &promises);
    match loadtests::plot::draw(
        &out.join("plot.png"),
        &format!("npanel-soak {scenario}"),
        &samples,
    ) {
        Ok(true) => {}
        Ok(false) => log("plot drawn without text (no font found; set PLOT_FONT)"),
        Err(e) => log(format!("plot: {e}")),
    }
    println!("{md}");
    for p in metrics::outputs(&out) {
        log(format!("wrote {}", p.display()));
    }
    Ok(promises.iter().all(|p| p.pass))
}

type Outcome = (Vec<Promise>, Value, Vec<Sample>);

/// Starts the stack (serve + `workers` workers) and the sampler's prerequisites.
async fn setup(out: &Path, opts: StackOpts, workers: usize) -> anyhow::Result<Run> {
    let mut s = Stack::new(&out.join("run"), &opts).context("starting Redis")?;
    let http = loadtests::serve::http();
    s.start_serve(&http).await.context("npanel serve")?;
    for i in 0..workers {
        s.start_worker(i, &[])?;
    }
    procs::import_packages(&s).context("packages import")?;
    let rec = Recorder::default();
    let api = Api::new(http, &s, rec.clone());
    let board: PidBoard = Arc::new(Mutex::new(s.pids()));
    Ok(Run {
        out: out.to_path_buf(),
        stack: Arc::new(Mutex::new(s)),
        api,
        rec,
        board,
        stats: Arc::default(),
        odd: Arc::default(),
    })
}

fn sampler(r: &Run, extra: metrics::Extra) -> Sampler {
    let port = r.stack.lock().unwrap().port;
    Sampler::start(
        &r.out,
        Duration::from_secs(10),
        r.board.clone(),
        port,
        r.api.clone(),
        r.rec.clone(),
        extra,
    )
}

/// Creates `n` accounts `<prefix><i>` with `conc` producers; their provisioning job ids.
async fn create_accounts(r: &Run, prefix: &str, n: usize, conc: usize) -> Vec<(String, String)> {
    let next = Arc::new(AtomicU64::new(0));
    let out: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (api, next, out, stats, odd, prefix) = (
            r.api.clone(),
            next.clone(),
            out.clone(),
            r.stats.clone(),
            r.odd.clone(),
            prefix.to_string(),
        );
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    break;
                }
                let id = format!("{prefix}{i}");
                match drive::create_account(&api, &id, &stats, &odd).await {
                    Ok(Some(job)) => out.lock().unwrap().push((id, job)),
                    Ok(None) => odd.lock().unwrap().push(format!("{id}: not accepted")),
                    Err(e) => odd.lock().unwrap().push(e),
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let v = out.lock().unwrap().clone();
    v
}

/// The end of every scenario: drain, read every job back, the common promises.
async fn verify_jobs(r: &Run, ids: &[String], expect_success: bool) -> Vec<Promise> {
    let (qview, drained) = drive::wait_drained(&r.api, Duration::from_secs(300)).await;
    let seen = drive::read_jobs(&r.api, ids, 32).await;
    let statuses = drive::tally(
        seen.iter()
            .map(|s| s.status.as_deref().unwrap_or("missing")),
    );
    let lost: Vec<String> = seen
        .iter()
        .filter(|s| s.status.is_none())
        .map(|s| format!("{} lost: {:?}", s.id, s.error))
        .collect();
    let stuck: Vec<String> = seen
        .iter()
        .filter(|s| s.status.as_deref().is_some_and(|x| !drive::terminal(x)))
        .map(|s| format!("{} still {:?}", s.id, s.status))
        .collect();
    let failed: Vec<String> = seen
        .iter()
        .filter(|s| s.status.as_deref() == Some("failed"))
        .map(|s| {
            format!(
                "{} failed after {} attempts: {:?}",
                s.id, s.attempts, s.error
            )
        })
        .collect();
    let logs = r.stack.lock().unwrap().log_files();
    let with_logs = |mut v: Vec<String>| {
        let ids: Vec<String> = v
            .iter()
            .take(10)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        v.extend(procs::grep_logs(&logs, &ids, 30));
        v
    };
    let mut p = vec![Promise::new(
        "every job finished, none lost",
        "0 lost, 0 stuck after the drain",
        format!(
            "{} jobs: {statuses:?}; queue drained: {drained} ({})",
            ids.len(),
            qview
        ),
        lost.is_empty() && stuck.is_empty() && drained,
    )
    .evidence(with_logs(lost.into_iter().chain(stuck).collect()))];
    if expect_success {
        p.push(
            Promise::new(
                "no job failed",
                "0 failed",
                format!("{}", failed.len()),
                failed.is_empty(),
            )
            .evidence(with_logs(failed)),
        );
    }
    let (n, err, n500, n503, n429, tr) = r.rec.totals();
    p.push(Promise::new(
        "no 500s",
        "0 × 500",
        format!("{n} requests: {n500} × 500, {} errors (5xx other than 503, transport), {n503} × 503, {n429} × 429, {tr} transport", err),
        n500 == 0,
    )
    .evidence(r.odd.lock().unwrap().clone()));
    let data_dir = r.stack.lock().unwrap().data_dir();
    if let Ok(st) = drive::StoreView::open(&data_dir).await {
        let ic = st.integrity().await.unwrap_or_else(|e| e);
        p.push(Promise::new(
            "store intact",
            "PRAGMA integrity_check = ok",
            ic.clone(),
            ic == "ok",
        ));
    }
    p
}

/// Drift promises of a long run's samples, after `warmup`.
fn drift_promises(samples: &[Sample], warmup: f64, proc_name: &str) -> Vec<Promise> {
    let after: Vec<&Sample> = samples.iter().filter(|s| s.elapsed_s >= warmup).collect();
    let series = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> {
        after.iter().filter_map(|s| f(s)).collect()
    };
    let rss = series(&|s| s.proc_f(proc_name, "rss_kib"));
    let fds = series(&|s| s.proc_f(proc_name, "fds"));
    // The server's own descriptors: without the clients' connections, whose number the
    // driver's load decides (shown beside, not judged).
    let own = series(&|s| Some(s.proc_f(proc_name, "fds")? - s.conns as f64));
    let conns = series(&|s| Some(s.conns as f64));
    let p99 = series(&|s| s.api_f("p99_ms"));
    // Which part moved: the heap (anonymous) or mapped files (shown beside, not judged).
    let part = |key: &str| match metrics::drift(&series(&|s| s.proc_f(proc_name, key))) {
        Some((_, a, b)) => format!("{:+.1} MiB", (b - a) / 1024.0),
        None => "?".into(),
    };
    let parts = format!(
        "anonymous {}, file {}, shmem {}",
        part("rss_anon_kib"),
        part("rss_file_kib"),
        part("rss_shmem_kib")
    );
    let mut v = Vec::new();
    match metrics::drift(&rss) {
        Some((d, a, b)) => v.push(Promise::new(
            &format!("RSS of {proc_name} flat after warm-up"),
            "drift < 5 % (mean of the last fifth vs the first fifth)",
            format!(
                "{:+.2} % ({:.1} → {:.1} MiB, {} samples after {warmup:.0} s; {parts})",
                d * 100.0,
                a / 1024.0,
                b / 1024.0,
                rss.len()
            ),
            d < 0.05,
        )),
        None => v.push(Promise::new(
            &format!("RSS of {proc_name} flat after warm-up"),
            "drift < 5 %",
            format!("only {} samples after warm-up", rss.len()),
            false,
        )),
    }
    if let (Some((d, a, b)), Some((_, ta, tb)), Some((_, ca, cb))) = (
        metrics::drift(&own),
        metrics::drift(&fds),
        metrics::drift(&conns),
    ) {
        v.push(Promise::new(
            &format!("open fds of {proc_name} flat"),
            "its own (all but the clients' connections): last fifth ≤ first fifth + 10 % + 5",
            format!(
                "{a:.1} → {b:.1} ({:+.1} %); all fds {ta:.1} → {tb:.1}, client connections {ca:.1} → {cb:.1}",
                d * 100.0
            ),
            b <= a * 1.1 + 5.0,
        ));
    }
    if let Some((d, a, b)) = metrics::drift(&p99) {
        v.push(Promise::new(
            "API p99 flat",
            "last fifth ≤ 1.5 × first fifth + 5 ms",
            format!("{a:.2} → {b:.2} ms ({:+.0} %)", d * 100.0),
            b <= a * 1.5 + 5.0,
        ));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// WebSocket watchers

#[derive(Default)]
struct Watch {
    messages: AtomicU64,
    connected: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
}

/// A watcher on `/api/events/live` that reconnects (with `?since=` the last seq) when dropped.
fn spawn_watcher(
    client: HttpClient,
    w: Arc<Watch>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut since: Option<String> = None;
        let mut first = true;
        while !stop.load(Ordering::Relaxed) {
            if !first {
                w.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            let ws = tokio::time::timeout(
                Duration::from_secs(10),
                client.connect_ws("/api/events/live", since.as_deref()),
            )
            .await;
            let mut ws = match ws {
                Ok(Ok(ws)) => ws,
                _ => {
                    w.connect_failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            w.connected.fetch_add(1, Ordering::Relaxed);
            loop {
                if stop.load(Ordering::Relaxed) {
                    let _ = ws.close(None).await;
                    w.connected.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
                    Err(_) => continue,
                    Ok(Some(Ok(Message::Text(t)))) => {
                        w.messages.fetch_add(1, Ordering::Relaxed);
                        if let Ok(v) = serde_json::from_str::<Value>(&t) {
                            if let Some(s) = v["seq"].as_str() {
                                since = Some(s.to_string());
                            }
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(None) | Ok(Some(Err(_))) => break,
                }
            }
            w.connected.fetch_sub(1, Ordering::Relaxed);
        }
    })
}

// ---------------------------------------------------------------------------------------------
// normal

async fn normal(
    args: &Args,
    out: &Path,
    long: bool,
    duration: Duration,
    tag: String,
) -> anyhow::Result<Outcome> {
    let n_accounts = args.num("accounts", 1000.0) as usize;
    let rate = args.num("rate", 100.0);
    let n_watchers = args.num("watchers", 50.0) as usize;
    let warmup = args.num(
        "warmup",
        if long {
            300.0
        } else {
            duration.as_secs_f64() / 3.0
        },
    );
    let opts = StackOpts {
        env: vec![("NPANEL_HOST__CGROUPS".into(), "false".into())],
        log: None,
    };
    let r = setup(out, opts, 1).await?;
    let t_setup = Instant::now();
    let prefix = format!("sn{tag}x");
    let accts = create_accounts(&r, &prefix, n_accounts, 8).await;
    let (_, drained) = drive::wait_drained(&r.api, Duration::from_secs(600)).await;
    let setup_s = t_setup.elapsed().as_secs_f64();
    log(format!(
        "{} accounts created in {setup_s:.1} s (drained: {drained})",
        accts.len()
    ));
    let mut job_ids: Vec<String> = accts.iter().map(|(_, j)| j.clone()).collect();

    let watch = Arc::new(Watch::default());
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let st = r.stack.lock().unwrap();
        HttpClient::with_pool(&st.base, Some(st.token.clone()), r.api.http.clone())?
    };
    let watchers: Vec<_> = (0..n_watchers)
        .map(|_| spawn_watcher(client.clone(), watch.clone(), stop.clone()))
        .collect();
    let enq: Arc<Mutex<Vec<String>>> = Arc::default();
    let extra = {
        let (w, e) = (watch.clone(), enq.clone());
        Arc::new(move || {
            json!({"ws_connected": w.connected.load(Ordering::Relaxed), "ws_messages": w.messages.load(Ordering::Relaxed),
                "ws_reconnects": w.reconnects.load(Ordering::Relaxed), "jobs_enqueued": e.lock().unwrap().len()})
        })
    };
    let sam = sampler(&r, extra);

    // Open loop at `rate`: each request scheduled on a fixed timetable.
    let names: Arc<Vec<String>> = Arc::new(accts.iter().map(|(a, _)| a.clone()).collect());
    let t0 = Instant::now();
    let mut i: u64 = 0;
    let mut rng = loadtests::Rng(0x5eed ^ procs::unix_secs() as u64);
    let mut tasks = tokio::task::JoinSet::new();
    log(format!(
        "load: {rate} req/s for {:.0} s, {n_watchers} watchers",
        duration.as_secs_f64()
    ));
    while t0.elapsed() < duration {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        i += 1;
        let pick = rng.below(100);
        let (api, enq, names) = (r.api.clone(), enq.clone(), names.clone());
        let acct = if names.is_empty() {
            String::new()
        } else {
            rng.pick(&names).clone()
        };
        let recent = {
            let e = enq.lock().unwrap();
            if e.is_empty() {
                None
            } else {
                Some(e[e.len() - 1 - (rng.below(e.len().min(256) as u64) as usize)].clone())
            }
        };
        tasks.spawn(async move {
            let _ = match (pick, recent) {
                (0..=39, Some(id)) => api.get(&format!("/api/jobs/{id}")).await,
                (0..=59, _) if !acct.is_empty() => api.get(&format!("/api/accounts/{acct}")).await,
                (0..=69, _) => api.get("/api/admin/queue").await,
                (0..=79, _) => api.get("/api/jobs?limit=20").await,
                (0..=84, _) => api.get("/api/accounts?limit=50").await,
                _ => {
                    let r = api
                        .post("/api/jobs", &json!({"kind": "diagnostic", "payload": {"duration_ms": 200, "steps": 2}}))
                        .await;
                    if let Ok(resp) = &r {
                        if let Some(id) = resp.json()["id"].as_str() {
                            enq.lock().unwrap().push(id.to_string());
                        }
                    }
                    r
                }
            };
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let ws_alive = watch.connected.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for w in watchers {
        let _ = w.await;
    }
    job_ids.extend(enq.lock().unwrap().iter().cloned());
    let samples = sam.finish().await;
    let mut promises = verify_jobs(&r, &job_ids, true).await;
    let (n, err, ..) = r.rec.totals();
    let (p50, p95, p99) = r.rec.overall();
    let er = if n > 0 { err as f64 / n as f64 } else { 0.0 };
    promises.push(Promise::new(
        "error rate",
        "< 0.1 % (transport errors and 5xx)",
        format!("{:.4} % of {n}", er * 100.0),
        er < 0.001,
    ));
    promises.push(Promise::new(
        "API p99",
        "< 200 ms (whole run)",
        format!("p50 {p50:.2} / p95 {p95:.2} / p99 {p99:.2} ms"),
        p99 < 200.0,
    ));
    promises.push(Promise::new(
        "WebSocket watchers",
        "all connected at the end, messages flowing",
        format!(
            "{ws_alive}/{n_watchers} connected, {} messages, {} reconnects, {} failed connects",
            watch.messages.load(Ordering::Relaxed),
            watch.reconnects.load(Ordering::Relaxed),
            watch.connect_failures.load(Ordering::Relaxed)
        ),
        ws_alive as usize == n_watchers && watch.messages.load(Ordering::Relaxed) > 0,
    ));
    promises.push(Promise::new(
        "accounts created",
        &format!("{n_accounts}"),
        format!("{} in {setup_s:.1} s", accts.len()),
        accts.len() == n_accounts,
    ));
    promises.extend(drift_promises(&samples, warmup, "serve"));
    let info = json!({"accounts": n_accounts, "rate": rate, "watchers": n_watchers, "duration_s": duration.as_secs_f64(),
        "warmup_s": warmup, "setup_s": setup_s, "requests_sent": i, "jobs": job_ids.len(),
        "submissions": r.stats.json()});
    r.stack.lock().unwrap().stop();
    Ok((promises, info, samples))
}

// ---------------------------------------------------------------------------------------------
// agent

/// Pings the agent on `sock`; its pid.
async fn agent_pid(sock: &Path) -> Option<u32> {
    let fut = async {
        let mut s = tokio::net::UnixStream::connect(sock).await.ok()?;
        s.write_all(b"{\"v\":1,\"op\":\"ping\"}\n").await.ok()?;
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        loop {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.contains(&b'\n') {
                break;
            }
        }
        let v: Value = serde_json::from_slice(got.split(|b| *b == b'\n').next()?).ok()?;
        v["ok"]["pid"].as_u64().map(|p| p as u32)
    };
    tokio::time::timeout(Duration::from_secs(1), fut)
        .await
        .ok()
        .flatten()
}

fn release_bin(name: &str) -> PathBuf {
    loadtests::npanel_bin().with_file_name(name)
}

/// Removes a cgroup tree bottom-up (the cgroups must be empty of processes).
fn remove_cgroup_tree(p: &Path) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

async fn agent(
    args: &Args,
    out: &Path,
    long: bool,
    duration: Duration,
    tag: String,
) -> anyhow::Result<Outcome> {
    let kill_every = args.num("kill-every", if long { 180.0 } else { 10.0 });
    let ops = args.num("ops", 4.0) as usize;
    let base = out.join("run");
    std::fs::create_dir_all(&base)?;
    let agent_dir = base.join("agent");
    std::fs::create_dir_all(agent_dir.join("wd"))?;
    let host_root = agent_dir.join("host");
    std::fs::create_dir_all(&host_root)?;
    let sock = agent_dir.join("agent.sock");
    // The agent's own cgroup tree on the machine's cgroup2 mount, removed at the end.
    let cg_mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists())
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
    let cg_root = cg_mount.join(format!("npanel-soak-{tag}"));
    let cfg = agent_dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "socket_path = {:?}\ncgroup_root = {:?}\n[host]\nroot = {:?}\nsystem_users = false\n[mail]\nexim = \"none\"\n",
            sock, cg_root, host_root
        ),
    )?;
    let wd_log = agent_dir.join("watchdog.log");
    let mut c = std::process::Command::new(release_bin("npanel-watchdog"));
    c.args(["--max-restarts", "100000", "--window-secs", "3600"])
        .arg("--socket")
        .arg(&sock)
        .arg("--data-dir")
        .arg(agent_dir.join("wd"))
        .arg("--")
        .arg(release_bin("npanel-agent"))
        .arg("--config")
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&wd_log)?)
        .stderr(std::fs::File::create(agent_dir.join("watchdog.err"))?);
    let wd_child = c
        .spawn()
        .context("npanel-watchdog (build it: cargo build --release -p agent)")?;
    let mut watchdog = Proc {
        name: "npanel-watchdog".into(),
        child: wd_child,
        log: wd_log,
        started: Instant::now(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pid = None;
    while pid.is_none() && Instant::now() < deadline {
        pid = agent_pid(&sock).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(mut apid) = pid else {
        bail!(
            "the agent did not answer on {} within 20 s; {}",
            sock.display(),
            procs::tail(&agent_dir.join("watchdog.err"), 20)
        );
    };
    log(format!(
        "agent pid {apid} answering on {} (watchdog {})",
        sock.display(),
        watchdog.pid()
    ));

    let opts = StackOpts {
        env: vec![(
            "NPANEL_HOST__AGENT_SOCKET".into(),
            sock.display().to_string(),
        )],
        log: None,
    };
    let r = setup(out, opts, 1).await?;
    r.stack
        .lock()
        .unwrap()
        .logs
        .lock()
        .unwrap()
        .push(agent_dir.join("watchdog.err"));
    r.board.lock().unwrap().push(("agent".into(), apid));
    let kills = Arc::new(AtomicU64::new(0));
    let extra = {
        let k = kills.clone();
        Arc::new(move || json!({"agent_kills": k.load(Ordering::Relaxed)}))
    };
    let sam = sampler(&r, extra);
    let stop = Arc::new(AtomicBool::new(false));
    let jobs: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut set = tokio::task::JoinSet::new();
    for o in 0..ops {
        let (api, stop, jobs, stats, odd) = (
            r.api.clone(),
            stop.clone(),
            jobs.clone(),
            r.stats.clone(),
            r.odd.clone(),
        );
        let prefix = format!("sa{tag}o{o}n");
        set.spawn(async move {
            let mut n = 0u64;
            let mut mine: Vec<String> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // A create, then on one of this loop's accounts: suspend, unsuspend, password.
                let step = n % 4;
                n += 1;
                let (path, body) = if step == 0 || mine.is_empty() {
                    let id = format!("{prefix}{}", mine.len());
                    mine.push(id.clone());
                    ("/api/accounts".to_string(), drive::account_body(&id))
                } else {
                    let a = &mine[(n as usize / 4) % mine.len()];
                    match step {
                        1 => (
                            format!("/api/accounts/{a}/suspend"),
                            json!({"reason": "soak"}),
                        ),
                        2 => (format!("/api/accounts/{a}/unsuspend"), json!({})),
                        _ => (
                            format!("/api/accounts/{a}/password"),
                            json!({"password": format!("Soak-Horse-{n}-Battery")}),
                        ),
                    }
                };
                match drive::submit(&api, &path, &body, &stats, &odd, Duration::from_secs(120))
                    .await
                {
                    Ok(Some(v)) => {
                        if let Some(id) = v["job"]["id"].as_str() {
                            jobs.lock().unwrap().push(id.to_string());
                            // Wait for it: the next action on this account needs it done.
                            let _ = api.get(&format!("/api/jobs/{id}/wait?timeout=60")).await;
                        }
                    }
                    Ok(None) => odd
                        .lock()
                        .unwrap()
                        .push(format!("{path}: not accepted in 120 s")),
                    // 409: an action that does not apply now (suspend of a suspended account
                    // after a retry); not an error of the system.
                    Err((409, _)) => {}
                    Err((s, v)) => odd.lock().unwrap().push(format!("{path}: {s} {v}")),
                }
            }
        });
    }
    // The killer.
    let mut recoveries: Vec<f64> = Vec::new();
    let mut not_recovered = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs_f64(kill_every)).await;
        if t0.elapsed() >= duration {
            break;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(apid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        kills.fetch_add(1, Ordering::Relaxed);
        let tk = Instant::now();
        let mut newpid = None;
        while tk.elapsed() < Duration::from_secs(30) {
            if let Some(p) = agent_pid(&sock).await.filter(|p| *p != apid) {
                newpid = Some(p);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match newpid {
            Some(p) => {
                recoveries.push(tk.elapsed().as_secs_f64());
                log(format!(
                    "agent {apid} SIGKILLed; {p} answering after {:.0} ms",
                    tk.elapsed().as_secs_f64() * 1000.0
                ));
                apid = p;
                let mut b = r.board.lock().unwrap();
                b.retain(|(n, _)| n != "agent");
                b.push(("agent".into(), apid));
            }
            None => {
                not_recovered.push(format!(
                    "agent {apid} killed at {:.0} s: no new agent within 30 s",
                    t0.elapsed().as_secs_f64()
                ));
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    while set.join_next().await.is_some() {}
    let samples = sam.finish().await;
    let ids = jobs.lock().unwrap().clone();
    let mut promises = verify_jobs(&r, &ids, true).await;
    // Audit: one terminal record per job.
    let data_dir = r.stack.lock().unwrap().data_dir();
    if let Ok(st) = drive::StoreView::open(&data_dir).await {
        let _ = drive::wait_archived(&st, &ids, Duration::from_secs(60)).await;
        let audit = st.audit_by_job().await.unwrap_or_default();
        let mut missing = Vec::new();
        let mut doubles = Vec::new();
        for id in &ids {
            let n: i64 = audit
                .iter()
                .filter(|((j, a), _)| {
                    j == id && (a.ends_with("_succeeded") || a.ends_with("_failed"))
                })
                .map(|(_, n)| *n)
                .sum();
            if n == 0 {
                missing.push(format!("{id}: no terminal audit record"));
            } else if n > 1 {
                doubles.push(format!("{id}: {n} terminal audit records"));
            }
        }
        promises.push(
            Promise::new(
                "no audit record lost or doubled",
                "exactly one terminal audit record per job",
                format!(
                    "{} jobs: {} without, {} with more",
                    ids.len(),
                    missing.len(),
                    doubles.len()
                ),
                missing.is_empty() && doubles.is_empty(),
            )
            .evidence(missing.into_iter().chain(doubles).collect()),
        );
    }
    let recs: Vec<Value> = std::fs::read_to_string(agent_dir.join("wd/failures.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let gave_up = recs.iter().filter(|r| r["action"] == "give_up").count();
    let mut rs = recoveries.clone();
    rs.sort_by(|a, b| a.total_cmp(b));
    let k = kills.load(Ordering::Relaxed);
    promises.push(
        Promise::new(
            "the watchdog recovers the agent every time",
            "every SIGKILL → a new agent answering; one failure record per kill; never gives up",
            format!(
                "{k} kills, {} recoveries (p50 {:.0} ms, max {:.0} ms), {} watchdog records, {gave_up} give-ups",
                rs.len(),
                loadtests::pct(&rs, 50.0) * 1000.0,
                rs.last().copied().unwrap_or(f64::NAN) * 1000.0,
                recs.len()
            ),
            not_recovered.is_empty() && rs.len() as u64 == k && recs.len() as u64 >= k && gave_up == 0 && k > 0,
        )
        .evidence(not_recovered),
    );
    let info = json!({"kill_every_s": kill_every, "ops_loops": ops, "duration_s": duration.as_secs_f64(), "jobs": ids.len(),
        "agent_kills": k, "host_root": host_root, "cgroup_root": cg_root, "submissions": r.stats.json()});
    r.stack.lock().unwrap().stop();
    watchdog.stop(Duration::from_secs(10));
    remove_cgroup_tree(&cg_root);
    if cg_root.exists() {
        log(format!(
            "could not remove {} (processes left in it?)",
            cg_root.display()
        ));
    }
    Ok((promises, info, samples))
}

// ---------------------------------------------------------------------------------------------
// exhaustion

/// A tmpfs mounted at `dir` for the run, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mb: u64) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mb}m,mode=0755"),
                "npanel-soak",
            ])
            .arg(dir)
            .status()?;
        if !st.success() {
            bail!("mount -t tmpfs on {} failed ({st})", dir.display());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system of `path` with a file until `ENOSPC`; its size.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let Ok(mut f) = std::fs::File::create(path) else {
        return 0;
    };
    let chunk = vec![0x5au8; 1 << 20];
    let mut n = 0;
    while let Ok(k) = f.write(&chunk) {
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    let _ = f.sync_all();
    n
}

async fn wait_job(api: &Api, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(r) = api.get(&format!("/api/jobs/{id}/wait?timeout=30")).await {
            let j = r.json();
            if j["status"].as_str().is_some_and(drive::terminal) || Instant::now() > deadline {
                return j;
            }
        }
        if Instant::now() > deadline {
            return Value::Null;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where the memory cgroup of the worker goes: cgroup v2 if it has the memory controller, else
/// v1's memory hierarchy. `(dir, limit file, events file)`.
fn memory_cgroup(tag: &str) -> Option<(PathBuf, &'static str, &'static str)> {
    let v2 = Path::new("/sys/fs/cgroup");
    if std::fs::read_to_string(v2.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
    {
        return Some((
            v2.join(format!("npanel-soak-{tag}")),
            "memory.max",
            "memory.events",
        ));
    }
    let v1 = Path::new("/sys/fs/cgroup/memory");
    v1.join("memory.limit_in_bytes").exists().then(|| {
        (
            v1.join(format!("npanel-soak-{tag}")),
            "memory.limit_in_bytes",
            "memory.oom_control",
        )
    })
}

/// How a worker was squeezed.
struct Squeeze {
    how: String,
    limit: u64,
}

/// Moves `pid` (just started) into memory cgroup `cg`, lets it come up (its charge there
/// settles), then limits the cgroup to 2 MiB above that charge: the worker's next growth
/// meets the limit. Fails where no limit can squeeze it (nothing charged, a limit refused),
/// instead of passing on an idle worker.
async fn squeeze_cgroup(cg: &Path, limit_file: &str, pid: u32) -> Result<Squeeze, String> {
    std::fs::create_dir_all(cg).map_err(|e| format!("mkdir {}: {e}", cg.display()))?;
    std::fs::write(cg.join("cgroup.procs"), pid.to_string())
        .map_err(|e| format!("moving the worker into {}: {e}", cg.display()))?;
    let usage_file = if limit_file == "memory.max" {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    let charged = || {
        std::fs::read_to_string(cg.join(usage_file))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Up: connected to Redis and idle. Its charge stops growing within a few seconds.
    let mut last = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = charged();
        if now > 0 && now == last {
            break;
        }
        last = now;
    }
    let charged = charged();
    if charged == 0 {
        return Err(format!(
            "{usage_file} is 0: this kernel's memory cgroup charges nothing"
        ));
    }
    let lim = charged + (2 << 20);
    std::fs::write(cg.join(limit_file), lim.to_string())
        .map_err(|e| format!("{limit_file} = {lim}: {e}"))?;
    let now = std::fs::read_to_string(cg.join(limit_file)).unwrap_or_default();
    match now.trim().parse::<u64>() {
        Ok(v) if v <= lim + 4096 => Ok(Squeeze {
            how: format!(
                "cgroup {} charged {:.1} MiB, {limit_file} = {:.1} MiB",
                cg.display(),
                charged as f64 / 1048576.0,
                v as f64 / 1048576.0
            ),
            limit: v,
        }),
        _ => Err(format!("{limit_file} reads back as {}", now.trim())),
    }
}

async fn exhaustion(args: &Args, out: &Path, _long: bool, tag: String) -> anyhow::Result<Outcome> {
    let mb = args.num("tmpfs-mb", 64.0) as u64;
    let host = out.join("run-hostfs");
    let fs = Tmpfs::mount(&host, mb)?;
    let opts = StackOpts {
        env: vec![
            ("NPANEL_HOST__ROOT".into(), host.display().to_string()),
            ("NPANEL_HOST__CGROUPS".into(), "false".into()),
            ("NPANEL_QUEUE__LEASE_MS".into(), "3000".into()),
        ],
        log: None,
    };
    let r = setup(out, opts, 1).await?;
    let sam = sampler(&r, Arc::new(|| Value::Null));
    let mut promises = Vec::new();
    let mut ids = Vec::new();
    let mut info = json!({"tmpfs_mb": mb});

    // --- disk
    let accts = create_accounts(&r, &format!("se{tag}x"), 3, 3).await;
    ids.extend(accts.iter().map(|(_, j)| j.clone()));
    let _ = drive::wait_drained(&r.api, Duration::from_secs(60)).await;
    let a0 = accts.first().map(|(a, _)| a.clone()).unwrap_or_default();
    // Incompressible content in the home: the backup archive is as big as it. A quarter of the
    // disk: the home and the first backup take half, so once the filler is gone the retried
    // backup fits (at 35 % it could not: three copies need 105 %).
    let big = host.join(format!("home/{a0}/public_html/big.bin"));
    {
        let mut rng = loadtests::Rng(7);
        let bytes: Vec<u8> = (0..(mb as usize * 1024 * 1024 * 25 / 100))
            .map(|_| rng.next() as u8)
            .collect();
        std::fs::write(&big, bytes).context("writing the account's big file")?;
    }
    let backup = |a: String| {
        let api = r.api.clone();
        let (stats, odd) = (r.stats.clone(), r.odd.clone());
        async move {
            drive::submit(
                &api,
                "/api/jobs",
                &json!({"kind": "backup", "payload": {"account": a}}),
                &stats,
                &odd,
                Duration::from_secs(60),
            )
            .await
            .ok()
            .flatten()
            .and_then(|v| v["id"].as_str().map(str::to_string))
        }
    };
    let b1 = backup(a0.clone()).await.unwrap_or_default();
    let j1 = wait_job(&r.api, &b1).await;
    log(format!("backup 1: {} {}", j1["status"], j1["error"]));
    // Now the rest of the disk: a filler, then a second backup and a new account must fail.
    let filler = host.join("filler.bin");
    let filled = fill(&filler);
    log(format!(
        "filled the {mb} MiB tmpfs with {} MiB more",
        filled >> 20
    ));
    let b2 = backup(a0.clone()).await.unwrap_or_default();
    let new_acct = format!("se{tag}full");
    let c2 = drive::create_account(&r.api, &new_acct, &r.stats, &r.odd)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let j2 = wait_job(&r.api, &b2).await;
    let jc = wait_job(&r.api, &c2).await;
    ids.extend([b1.clone(), b2.clone(), c2.clone()]);
    let err2 = j2["error"].as_str().unwrap_or("").to_string();
    let errc = jc["error"].as_str().unwrap_or("").to_string();
    let names_space = |e: &str| {
        let e = e.to_lowercase();
        e.contains("no space")
            || e.contains("disk full")
            || e.contains("enospc")
            || e.contains("space left")
    };
    log(format!(
        "on a full disk: backup {} {:?}; create {} {:?}",
        j2["status"], err2, jc["status"], errc
    ));
    let backups_dir = host.join("backups");
    let list = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let left_while_full = list(&backups_dir);
    promises.push(Promise::new(
        "full disk: a clear error",
        "the failing jobs' error names the lack of space",
        format!(
            "backup: {} ({err2:?}); account create: {} ({errc:?})",
            j2["status"], jc["status"]
        ),
        j2["status"] == "failed"
            && names_space(&err2)
            && (jc["status"] == "succeeded" || names_space(&errc)),
    ));
    // Free the space, retry.
    let _ = std::fs::remove_file(&filler);
    let mut retried = Vec::new();
    for id in [&b2, &c2] {
        let j = r
            .api
            .get(&format!("/api/jobs/{id}"))
            .await
            .map(|r| r.json())
            .unwrap_or_default();
        if j["status"] == "failed" {
            let rr = r
                .api
                .post(&format!("/api/jobs/{id}/retry"), &json!({}))
                .await;
            let new_id = rr
                .ok()
                .and_then(|x| x.json()["id"].as_str().map(str::to_string))
                .unwrap_or_else(|| id.clone());
            let j = wait_job(&r.api, &new_id).await;
            retried.push(format!("{id} → {} {}", j["status"], j["error"]));
            if new_id != *id {
                ids.push(new_id);
            }
        }
    }
    let acct_state = r
        .api
        .get(&format!("/api/accounts/{new_acct}"))
        .await
        .map(|r| r.json()["status"].clone())
        .unwrap_or_default();
    let after = list(&backups_dir);
    let stray: Vec<String> = after
        .iter()
        .filter(|f| !f.ends_with(".tar.zst"))
        .cloned()
        .collect();
    promises.push(Promise::new(
        "recovery once space is back",
        "the failed jobs succeed when retried; the account ends active",
        format!("{retried:?}; account {new_acct}: {acct_state}"),
        retried
            .iter()
            .all(|l| l.contains("\"succeeded\"") || l.contains("succeeded"))
            && acct_state == "active",
    ));
    promises.push(Promise::new(
        "no half-written archive",
        "backups/ holds only complete .tar.zst files",
        format!("while full: {left_while_full:?}; after: {after:?}"),
        stray.is_empty() && left_while_full.iter().all(|f| f.ends_with(".tar.zst")),
    ));
    info["disk"] = json!({"backup1": j1["status"], "filled_mib": filled >> 20, "backup_full": j2["status"], "backup_full_error": err2,
        "create_full": jc["status"], "create_full_error": errc});

    // --- memory: a worker in a memory cgroup limited to just above what it is charged, while
    // jobs with large payloads arrive. The worker is started afresh and moved in at once: its
    // memory is charged to the cgroup as it allocates (recent kernels no longer move a task's
    // earlier charges with it, v1's `move_charge_at_immigrate` notwithstanding, so moving a
    // worker that has run a while leaves the cgroup charged next to nothing).
    let cgroup = memory_cgroup(&tag);
    let (mut wpid, mut wlog) = (0, None);
    let squeezed = match &cgroup {
        None => Err("no memory controller on this machine".to_string()),
        Some((cg, limit_file, _)) => {
            let started = r.stack.lock().unwrap().start_worker(0, &[]);
            match started {
                Err(e) => Err(format!("restarting the worker: {e}")),
                Ok(pid) => {
                    wpid = pid;
                    wlog = r.stack.lock().unwrap().workers[0]
                        .as_ref()
                        .map(|p| p.log.clone());
                    squeeze_cgroup(cg, limit_file, pid).await
                }
            }
        }
    };
    r.pids();
    let rss = metrics::rss_kib(wpid).unwrap_or(0) * 1024;
    log(format!(
        "worker {wpid} (RSS {} MiB): {}",
        rss >> 20,
        match &squeezed {
            Ok(s) => s.how.clone(),
            Err(e) => format!("no pressure applied: {e}"),
        }
    ));
    // Jobs whose payloads the worker must decode and copy: each needs fresh large allocations.
    let pad = "m".repeat(256 * 1024);
    let mut mem_ids = Vec::new();
    for i in 0..60 {
        if let Ok(Some(v)) = drive::submit(&r.api, "/api/jobs", &json!({"kind": "diagnostic", "payload": {"duration_ms": 300, "steps": 3, "note": pad}, "idempotency_key": format!("mem-{tag}-{i}")}), &r.stats, &r.odd, Duration::from_secs(60)).await {
            if let Some(id) = v["id"].as_str() {
                mem_ids.push(id.to_string());
            }
        }
    }
    let (_, drained) = drive::wait_drained(&r.api, Duration::from_secs(120)).await;
    let worker_dead = !r.stack.lock().unwrap().workers[0]
        .as_mut()
        .is_some_and(|p| p.alive());
    let events = match (&cgroup, &squeezed) {
        (Some((cg, _, events_file)), Ok(_)) => format!(
            "{}; failcnt {}",
            std::fs::read_to_string(cg.join(events_file))
                .unwrap_or_default()
                .replace('\n', " "),
            std::fs::read_to_string(cg.join("memory.failcnt"))
                .unwrap_or_default()
                .trim()
        ),
        _ => String::new(),
    };
    // What the worker said as it failed to get memory (the allocator's abort, a failed
    // thread spawn, an error a job recorded).
    let said: Vec<String> = wlog
        .and_then(|l| std::fs::read_to_string(l).ok())
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("memory allocation")
                || l.contains("out of memory")
                || l.contains("cannot allocate")
        })
        .take(3)
        .map(str::to_owned)
        .collect();
    let seen = drive::read_jobs(&r.api, &mem_ids, 16).await;
    let ok = seen
        .iter()
        .filter(|s| s.status.as_deref() == Some("succeeded"))
        .count();
    // Jobs the killed worker held, finished by another claim.
    let again = seen.iter().filter(|s| s.attempts > 1).count();
    // Memory back: lift the limit, restart the worker (outside the cgroup); the run goes on.
    if let (Some((cg, limit_file, _)), Ok(_)) = (&cgroup, &squeezed) {
        let _ = std::fs::write(
            cg.join(limit_file),
            if *limit_file == "memory.max" {
                "max"
            } else {
                "-1"
            },
        );
    }
    {
        let mut s = r.stack.lock().unwrap();
        let _ = s.start_worker(0, &[]);
    }
    r.pids();
    let felt = worker_dead || !said.is_empty();
    promises.push(Promise::new(
        "memory pressure on a worker: nothing lost",
        "the squeezed worker fails (killed, or says it is out of memory) and all 60 jobs still succeed (the others take over its jobs); the run goes on",
        format!(
            "{}; worker died: {worker_dead}; it said: {said:?}; {ok}/{} succeeded ({again} on a second attempt); drained {drained}{}",
            match &squeezed {
                Ok(s) => s.how.clone(),
                Err(e) => format!("no pressure applied: {e}"),
            },
            mem_ids.len(),
            if events.is_empty() { String::new() } else { format!("; events: {events}") }
        ),
        ok == mem_ids.len() && drained && squeezed.is_ok() && felt,
    ));
    ids.extend(mem_ids);
    if let Some((cg, _, _)) = &cgroup {
        // The cgroup is left empty once the old worker is gone; remove it.
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir(cg);
    }
    info["memory"] = json!({
        "how": squeezed.as_ref().map(|s| s.how.clone()).unwrap_or_else(|e| e.clone()),
        "limit_bytes": squeezed.as_ref().map(|s| s.limit).unwrap_or(0),
        "worker_rss_bytes": rss, "worker_died": worker_dead, "jobs_on_a_second_attempt": again, "worker_said": said, "events": events,
    });
    let samples = sam.finish().await;
    promises.extend(verify_jobs(&r, &ids, false).await);
    r.stack.lock().unwrap().stop();
    drop(fs);
    Ok((promises, info, samples))
}

// ---------------------------------------------------------------------------------------------
// storm

#[derive(Default)]
struct StormCounts {
    ws_open: AtomicU64,
    ws_refused_status: Mutex<std::collections::BTreeMap<u16, u64>>,
    ws_closed_with_reason: AtomicU64,
    ws_unclean: AtomicU64,
    http_ok: AtomicU64,
    http_refused: Mutex<std::collections::BTreeMap<u16, u64>>,
    http_unclean: AtomicU64,
    unclean_samples: Mutex<Vec<String>>,
}

fn raise_nofile(n: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    if soft >= n {
        return soft;
    }
    // Root may raise the hard limit too.
    if setrlimit(Resource::RLIMIT_NOFILE, n, n.max(hard)).is_ok() {
        return n;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    hard
}

async fn storm(args: &Args, out: &Path, long: bool, duration: Duration) -> anyhow::Result<Outcome> {
    let conns = args.num("conns", 10_000.0) as usize;
    let hold = args.num("hold", 20.0);
    let opts = StackOpts {
        env: vec![],
        log: None,
    };
    // serve gets the machine's default fd limit (started before we raise ours).
    let r = setup(out, opts, 0).await?;
    let spid = r.stack.lock().unwrap().serve_pid().unwrap_or(0);
    let serve_limit = metrics::nofile_limit(spid).unwrap_or(0);
    let ours = raise_nofile(conns as u64 * 2 + 2048);
    let (base_url, token, port) = {
        let s = r.stack.lock().unwrap();
        (s.base.clone(), s.token.clone(), s.port)
    };
    let client = HttpClient::with_pool(&base_url, Some(token.clone()), r.api.http.clone())?;
    let ws_cap: u64 = 1000;
    let baseline_fds = metrics::fds(spid).unwrap_or(0);
    log(format!(
        "serve pid {spid}: fd limit {serve_limit}, {baseline_fds} fds at rest; our limit {ours}"
    ));
    let sam = sampler(&r, Arc::new(|| Value::Null));

    // /healthz prober: a fresh connection each time, every 200 ms. Raw on purpose: each probe
    // must go through accept() under the storm, not ride a pooled connection.
    let stop = Arc::new(AtomicBool::new(false));
    // (answered, failed, latencies in ms, failure lines)
    type Health = (u64, u64, Vec<f64>, Vec<String>);
    let health: Arc<Mutex<Health>> = Arc::default();
    let prober = {
        let (stop, health) = (stop.clone(), health.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let res = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .await?;
                    let mut b = Vec::new();
                    s.read_to_end(&mut b).await?;
                    Ok::<_, std::io::Error>(b)
                })
                .await;
                {
                    let mut h = health.lock().unwrap();
                    h.0 += 1;
                    match res {
                        Ok(Ok(b)) if b.starts_with(b"HTTP/1.1 200") => {
                            h.1 += 1;
                            h.2.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        Ok(Ok(b)) => h.3.push(format!(
                            "healthz: {}",
                            String::from_utf8_lossy(&b[..b.len().min(80)])
                        )),
                        Ok(Err(e)) => h.3.push(format!("healthz: {e}")),
                        Err(_) => h.3.push("healthz: no answer in 5 s".into()),
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let mut cycles = 0;
    let mut max_fds = baseline_fds;
    let mut max_conns = 0;
    let counts = Arc::new(StormCounts::default());
    let t0 = Instant::now();
    loop {
        cycles += 1;
        log(format!("storm {cycles}: opening {conns} connections"));
        let release = Arc::new(tokio::sync::Notify::new());
        let released = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(tokio::sync::Semaphore::new(1000));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..conns {
            let (counts, release, released, gate) = (
                counts.clone(),
                release.clone(),
                released.clone(),
                gate.clone(),
            );
            let client = client.clone();
            set.spawn(async move {
                let permit = gate.acquire_owned().await;
                if i % 2 == 0 {
                    match tokio::time::timeout(Duration::from_secs(30), client.connect_ws("/api/events/live", None)).await {
                        Ok(Ok(mut ws)) => {
                            drop(permit);
                            counts.ws_open.fetch_add(1, Ordering::Relaxed);
                            // Hold it, reading, until released or closed by the server.
                            loop {
                                if released.load(Ordering::Relaxed) {
                                    let _ = ws.close(None).await;
                                    break;
                                }
                                tokio::select! {
                                    _ = release.notified() => {}
                                    m = ws.next() => match m {
                                        Some(Ok(Message::Close(f))) => {
                                            if f.is_some() {
                                                counts.ws_closed_with_reason.fetch_add(1, Ordering::Relaxed);
                                            } else {
                                                counts.ws_unclean.fetch_add(1, Ordering::Relaxed);
                                            }
                                            break;
                                        }
                                        Some(Ok(_)) => {}
                                        None | Some(Err(_)) => {
                                            counts.ws_unclean.fetch_add(1, Ordering::Relaxed);
                                            break;
                                        }
                                    }
                                }
                            }
                            counts.ws_open.fetch_sub(1, Ordering::Relaxed);
                        }
                        Ok(Err(ClientError::Api(refused))) => {
                            *counts.ws_refused_status.lock().unwrap().entry(refused.status).or_insert(0) += 1;
                        }
                        Ok(Err(e)) => {
                            counts.ws_unclean.fetch_add(1, Ordering::Relaxed);
                            let mut u = counts.unclean_samples.lock().unwrap();
                            if u.len() < 20 {
                                u.push(format!("ws: {e}"));
                            }
                        }
                        Err(_) => {
                            counts.ws_unclean.fetch_add(1, Ordering::Relaxed);
                            let mut u = counts.unclean_samples.lock().unwrap();
                            if u.len() < 20 {
                                u.push("ws: no handshake answer in 30 s".into());
                            }
                        }
                    }
                } else {
                    // Plain HTTP keep-alive: one request answered, then the connection held.
                    // Raw on purpose: the storm needs this very socket held open, which a
                    // pooled client would reuse or reap.
                    let res = tokio::time::timeout(Duration::from_secs(30), async {
                        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
                        let mut b = vec![0u8; 1024];
                        let n = s.read(&mut b).await?;
                        Ok::<_, std::io::Error>((s, String::from_utf8_lossy(&b[..n]).to_string()))
                    })
                    .await;
                    drop(permit);
                    match res {
                        Ok(Ok((s, head))) => {
                            let code: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                            if code == 200 {
                                counts.http_ok.fetch_add(1, Ordering::Relaxed);
                            } else if code > 0 {
                                *counts.http_refused.lock().unwrap().entry(code).or_insert(0) += 1;
                            } else {
                                counts.http_unclean.fetch_add(1, Ordering::Relaxed);
                            }
                            if !released.load(Ordering::Relaxed) {
                                release.notified().await;
                            }
                            drop(s);
                        }
                        Ok(Err(e)) => {
                            counts.http_unclean.fetch_add(1, Ordering::Relaxed);
                            let mut u = counts.unclean_samples.lock().unwrap();
                            if u.len() < 20 {
                                u.push(format!("http: {e}"));
                            }
                        }
                        Err(_) => {
                            counts.http_unclean.fetch_add(1, Ordering::Relaxed);
                            let mut u = counts.unclean_samples.lock().unwrap();
                            if u.len() < 20 {
                                u.push("http: no answer in 30 s".into());
                            }
                        }
                    }
                }
            });
        }
        // Hold: sample the server's fds and connections.
        let th = Instant::now();
        while th.elapsed().as_secs_f64() < hold {
            max_fds = max_fds.max(metrics::fds(spid).unwrap_or(0));
            max_conns = max_conns.max(metrics::established(port));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        log(format!(
            "storm {cycles}: {} WebSockets open, {} HTTP answered 200; server fds max {max_fds}, established max {max_conns}",
            counts.ws_open.load(Ordering::Relaxed),
            counts.http_ok.load(Ordering::Relaxed)
        ));
        released.store(true, Ordering::Relaxed);
        release.notify_waiters();
        // notify_waiters only wakes current waiters; repeat until every task is done.
        while !set.is_empty() {
            release.notify_waiters();
            let _ = tokio::time::timeout(Duration::from_millis(200), set.join_next()).await;
        }
        if !long || t0.elapsed() >= duration {
            break;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    // Back to rest.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rest_fds = metrics::fds(spid).unwrap_or(0);
    let rest_conns = metrics::established(port);
    stop.store(true, Ordering::Relaxed);
    let _ = prober.await;
    let alive = r
        .stack
        .lock()
        .unwrap()
        .serve
        .as_mut()
        .is_some_and(|p| p.alive());
    let samples = sam.finish().await;
    let (hn, hok, mut hl, herr) = health.lock().unwrap().clone();
    hl.sort_by(|a, b| a.total_cmp(b));
    let refused_ws: u64 = counts.ws_refused_status.lock().unwrap().values().sum();
    let total_ws = conns.div_ceil(2) as u64 * cycles;
    let ws_accepted = total_ws - refused_ws - counts.ws_unclean.load(Ordering::Relaxed);
    let unclean =
        counts.ws_unclean.load(Ordering::Relaxed) + counts.http_unclean.load(Ordering::Relaxed);
    let _ = base_url;
    let mut promises = vec![
        Promise::new(
            "connections over the cap refused cleanly",
            "WebSockets over ws.max_connections (1000) answered with an HTTP status or a close frame; no reset, no hang",
            format!(
                "{cycles} storm(s) of {conns}: WS accepted {} (per storm ≤ {ws_cap}), refused {:?}, closed with a reason {}, unclean {}; HTTP 200 {}, refused {:?}, unclean {}",
                ws_accepted,
                counts.ws_refused_status.lock().unwrap(),
                counts.ws_closed_with_reason.load(Ordering::Relaxed),
                counts.ws_unclean.load(Ordering::Relaxed),
                counts.http_ok.load(Ordering::Relaxed),
                counts.http_refused.lock().unwrap(),
                counts.http_unclean.load(Ordering::Relaxed)
            ),
            unclean == 0 && ws_accepted <= ws_cap * cycles,
        )
        .evidence(counts.unclean_samples.lock().unwrap().clone()),
        Promise::new(
            "no fd exhaustion",
            "server fds < its RLIMIT_NOFILE throughout; back to rest after",
            format!("limit {serve_limit}; at rest {baseline_fds}, max {max_fds}, after {rest_fds}; established max {max_conns}, after {rest_conns}"),
            max_fds < serve_limit && rest_fds <= baseline_fds + 20,
        ),
        Promise::new(
            "service answers throughout",
            "/healthz (fresh connection every 200 ms) always 200 within 5 s; serve alive",
            format!("{hok}/{hn} answered, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; serve alive: {alive}", loadtests::pct(&hl, 50.0), loadtests::pct(&hl, 99.0), hl.last().copied().unwrap_or(f64::NAN)),
            hok == hn && hn > 0 && alive,
        )
        .evidence(herr.into_iter().take(20).collect()),
    ];
    let (n, _, n500, ..) = r.rec.totals();
    promises.push(Promise::new(
        "no 500s",
        "0 × 500 on the driver's API calls",
        format!("{n} calls, {n500} × 500"),
        n500 == 0,
    ));
    let info = json!({"conns": conns, "hold_s": hold, "cycles": cycles, "serve_nofile": serve_limit, "driver_nofile": ours});
    r.stack.lock().unwrap().stop();
    Ok((promises, info, samples))
}
