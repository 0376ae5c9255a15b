//! `npanel-chaos`: queue chaos (issue 13). Drives the real release binaries from outside —
//! HTTP, the Redis protocol for reading the event stream, the SQLite file for the store, and
//! signals — and proves, in figures, that nothing is lost under faults:
//!
//! - `--jobs` (10 000) jobs through `npanel serve` + `--workers` (2) `npanel worker`s on one
//!   private Redis: `diagnostic` jobs of `--job-ms` (100) in 2 steps, and every
//!   `--provision-every` (50)th job a `POST /api/accounts` (a provisioning job that builds the
//!   account on the embedded host root). Producers keep the queue at its cap (100 pending):
//!   `503 queue_full` is waited out and the same body (same idempotency key) sent again.
//! - Every `--kill-every` (5) s one worker is SIGKILLed and started again at once.
//! - At `--redis-kill-at` (0.4) of the jobs accepted, Redis is SIGKILLed, left down
//!   `--redis-down` (3) s while every API answer is recorded (must be 503 `unavailable`, never
//!   500, never a hang), then restarted on the same dir and socket (append-only file). Recovery
//!   = restart to the first job enqueued after it finishing.
//! - Then: the queue drains; every job is read back from the API (exactly one terminal state,
//!   none lost), from the event stream (`complete` events per job: more than one is a double
//!   terminal effect), and from the store (job history; audit records per job id; each account
//!   once in the store, once on the host root, one `provision_succeeded` record).
//!
//! Output (`--out`, default `target/chaos/chaos-<time>/`): `summary.md`, `summary.json`,
//! `metrics.jsonl` (every 10 s), `plot.png`, and the logs of every process. Exit status 0
//! when every promise held, 1 otherwise.

use anyhow::Context;
use hyper::StatusCode;
use loadtests::drive::{self, Args, Oddities, SubmitStats};
use loadtests::metrics::{self, PidBoard, Promise, Recorder, Sampler};
use loadtests::procs::{self, log, Api, Stack, StackOpts};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USAGE: &str = "npanel-chaos [--jobs 10000] [--workers 2] [--kill-every 5] [--job-ms 100]
  [--provision-every 50] [--redis-kill-at 0.4 (0 = no Redis kill)] [--redis-down 3]
  [--producers 16] [--limit 20] [--lease-ms 3000] [--drain-secs 600] [--out DIR] [--keep]
Starts a private redis-server, npanel serve and the workers from target/release (NPANEL_BIN),
kills them as described in loadtests/CHAOS.md, and verifies every job afterwards.";

/// What happened around the Redis kill.
#[derive(Default)]
struct Outage {
    killed_at_accepted: u64,
    /// Answers during the outage: `status code → count`, and by error code.
    by_status: HashMap<String, u64>,
    max_ms: f64,
    n: u64,
    bad: Vec<String>,
    api_back_s: Option<f64>,
    job_done_s: Option<f64>,
    first_done_s: Option<f64>,
    probe_job: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse(USAGE);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    let ok = rt.block_on(run(args))?;
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let started = Instant::now();
    let n_jobs = args.num("jobs", 10_000.0) as usize;
    let n_workers = args.num("workers", 2.0) as usize;
    let kill_every = args.num("kill-every", 5.0);
    let job_ms = args.num("job-ms", 100.0) as u64;
    let prov_every = args.num("provision-every", 50.0) as usize;
    let redis_kill_at = args.num("redis-kill-at", 0.4);
    let redis_down = args.num("redis-down", 3.0);
    let producers = args.num("producers", 16.0) as usize;
    let limit = args.num("limit", 20.0) as u64;
    let lease_ms = args.num("lease-ms", 3000.0) as u64;
    let drain_secs = args.num("drain-secs", 600.0);
    let out = procs::out_dir(args.str("out"), "chaos");
    log(format!("output in {}", out.display()));
    let run_tag = format!("{:04}", (procs::unix_secs() as u64) % 10_000);

    let opts = StackOpts {
        env: vec![
            ("NPANEL_QUEUE__LEASE_MS".into(), lease_ms.to_string()),
            ("NPANEL_QUEUE__LIMITS__DIAGNOSTIC".into(), limit.to_string()),
            // Keep every event of the run, to count `complete` events per job.
            (
                "NPANEL_QUEUE__EVENTS_MAXLEN".into(),
                (n_jobs as u64 * 10 + 10_000).to_string(),
            ),
            (
                "NPANEL_QUEUE__MAX_FINISHED".into(),
                (n_jobs as u64 * 2 + 1000).to_string(),
            ),
            // The embedded host root, off the machine's cgroup tree.
            ("NPANEL_HOST__CGROUPS".into(), "false".into()),
        ],
        log: None,
    };
    let mut s = Stack::new(&out.join("run"), &opts).context("starting Redis and the stack")?;
    let max_pending: u64 = 100;
    let http = loadtests::serve::http();
    s.start_serve(&http).await.context("npanel serve")?;
    for i in 0..n_workers {
        s.start_worker(i, &[])?;
    }
    procs::import_packages(&s).context("packages import")?;
    let rec = Recorder::default();
    let api = Api::new(http.clone(), &s, rec.clone());
    let board: PidBoard = Arc::new(Mutex::new(s.pids()));
    let port = s.port;
    let redis_url = s.redis.url.clone();
    let queue_name = s.queue_name();
    let data_dir = s.data_dir();
    let stack = Arc::new(Mutex::new(s));
    log(format!(
        "stack up: serve + {n_workers} workers, queue {queue_name}, {n_jobs} jobs, a worker killed every {kill_every} s"
    ));

    let stats = Arc::new(SubmitStats::default());
    let odd: Oddities = Arc::default();
    let kills = Arc::new(AtomicU64::new(0));
    let max_seen_pending = Arc::new(AtomicU64::new(0));
    let over_cap = Arc::new(Mutex::new(Vec::<String>::new()));
    let extra = {
        let (stats, kills, maxp) = (stats.clone(), kills.clone(), max_seen_pending.clone());
        Arc::new(move || {
            json!({"submit": stats.json(), "worker_kills": kills.load(Ordering::Relaxed),
                "max_pending_seen": maxp.load(Ordering::Relaxed)})
        })
    };
    let sampler = Sampler::start(
        &out,
        Duration::from_secs(10),
        board.clone(),
        port,
        api.clone(),
        rec.clone(),
        extra,
    );

    // ids[i]: the job of item i; accounts[i]: the account item i created.
    let ids: Arc<Vec<Mutex<Option<String>>>> =
        Arc::new((0..n_jobs).map(|_| Mutex::new(None)).collect());
    let accounts: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let done_submitting = Arc::new(AtomicBool::new(false));
    let redis_down_now = Arc::new(AtomicBool::new(false));

    // The cap: sample the queue view 4 times a second.
    let cap_task = {
        let (api, maxp, over, stop, down) = (
            api.clone(),
            max_seen_pending.clone(),
            over_cap.clone(),
            done_submitting.clone(),
            redis_down_now.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if !down.load(Ordering::Relaxed) {
                    if let Ok(r) = api.get("/api/admin/queue").await {
                        if r.status == StatusCode::OK {
                            let v = r.json();
                            let p = v["pending"].as_u64().unwrap_or(0);
                            maxp.fetch_max(p, Ordering::Relaxed);
                            // DESIGN §3: retries, recovered orphans and requeues are never
                            // refused, even above the bound; only new enqueues are. So at most
                            // the bound plus every job that can be running (the sum of the
                            // kinds' limits) may wait; anything above is a new enqueue let in.
                            let running_cap: u64 = v["kinds"]
                                .as_object()
                                .map(|k| k.values().filter_map(|x| x["limit"].as_u64()).sum())
                                .unwrap_or(0);
                            if p > max_pending + running_cap {
                                over.lock().unwrap().push(format!(
                                    "{:.1}s pending {p} > {max_pending} + {running_cap}: {v}",
                                    started.elapsed().as_secs_f64()
                                ));
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // The killer: one worker every `kill_every` s, restarted at once.
    let killer = {
        let (stack, board, kills, stop) = (
            stack.clone(),
            board.clone(),
            kills.clone(),
            done_submitting.clone(),
        );
        tokio::spawn(async move {
            let mut k = 0usize;
            if kill_every <= 0.0 {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_secs_f64(kill_every)).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = k % n_workers.max(1);
                k += 1;
                let mut s = stack.lock().unwrap();
                if let Some(pid) = s.kill_worker(i) {
                    kills.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = s.start_worker(i, &[]) {
                        log(format!("cannot restart worker{i}: {e}"));
                    }
                    log(format!(
                        "SIGKILLed worker{i} (pid {pid}); restarted as {:?}",
                        s.workers[i].as_ref().map(|p| p.pid())
                    ));
                }
                let pids = s.pids();
                drop(s);
                // Never hold `stack` while taking `board` (the sampler takes `board` alone).
                *board.lock().unwrap() = pids;
            }
        })
    };

    // Producers.
    let mut prods = tokio::task::JoinSet::new();
    for _ in 0..producers {
        let (api, stats, odd, ids, accounts, next, refused) = (
            api.clone(),
            stats.clone(),
            odd.clone(),
            ids.clone(),
            accounts.clone(),
            next.clone(),
            refused.clone(),
        );
        let tag = run_tag.clone();
        prods.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n_jobs {
                    break;
                }
                if prov_every > 0 && i % prov_every == 0 {
                    let acct = format!("cx{tag}{i}");
                    match drive::create_account(&api, &acct, &stats, &odd).await {
                        Ok(Some(job)) => {
                            *ids[i].lock().unwrap() = Some(job);
                            accounts.lock().unwrap().push((i, acct));
                        }
                        Ok(None) => refused
                            .lock()
                            .unwrap()
                            .push(format!("{acct}: no answer in 600 s")),
                        Err(e) => refused.lock().unwrap().push(e),
                    }
                    continue;
                }
                let body = json!({"kind": "diagnostic",
                    "payload": {"duration_ms": job_ms, "steps": 2},
                    "idempotency_key": format!("chaos-{tag}-{i}")});
                match drive::submit(
                    &api,
                    "/api/jobs",
                    &body,
                    &stats,
                    &odd,
                    Duration::from_secs(600),
                )
                .await
                {
                    Ok(Some(v)) => match v["id"].as_str() {
                        Some(id) => *ids[i].lock().unwrap() = Some(id.to_string()),
                        None => refused
                            .lock()
                            .unwrap()
                            .push(format!("item {i}: 2xx without id: {v}")),
                    },
                    Ok(None) => refused
                        .lock()
                        .unwrap()
                        .push(format!("item {i}: not accepted in 600 s")),
                    Err((s, v)) => refused.lock().unwrap().push(format!("item {i}: {s} {v}")),
                }
            }
        });
    }

    // The Redis kill, once `redis_kill_at` of the jobs were accepted.
    let mut outage = Outage::default();
    if redis_kill_at > 0.0 {
        let at = (n_jobs as f64 * redis_kill_at) as u64;
        while stats.accepted.load(Ordering::Relaxed) < at && !prods.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        outage.killed_at_accepted = stats.accepted.load(Ordering::Relaxed);
        let acked_before: Vec<String> = ids
            .iter()
            .filter_map(|m| m.lock().unwrap().clone())
            .collect();
        log(format!(
            "SIGKILL redis-server after {} accepted jobs",
            outage.killed_at_accepted
        ));
        redis_down_now.store(true, Ordering::Relaxed);
        stack.lock().unwrap().redis.sigkill();
        let kill_t = Instant::now();
        // Probe the API while Redis is down: a read of the queue, a job read, an enqueue.
        let probe_job = acked_before.last().cloned().unwrap_or_default();
        while kill_t.elapsed().as_secs_f64() < redis_down {
            let paths: [(&str, Option<Value>); 3] = [
                ("/api/admin/queue", None),
                (&format!("/api/jobs/{probe_job}"), None),
                (
                    "/api/jobs",
                    Some(
                        json!({"kind": "diagnostic", "payload": {}, "idempotency_key": format!("chaos-{run_tag}-outage")}),
                    ),
                ),
            ];
            for (p, body) in paths.iter() {
                let r = match body {
                    Some(b) => api.post(p, b).await,
                    None => api.get(p).await,
                };
                outage.n += 1;
                let label = match &r {
                    Ok(resp) => {
                        outage.max_ms = outage.max_ms.max(resp.ms);
                        let l = format!("{} {}", resp.status.as_u16(), resp.code());
                        if !(resp.status == StatusCode::SERVICE_UNAVAILABLE
                            && resp.code() == "unavailable")
                        {
                            outage.bad.push(format!(
                                "{p}: {} {}",
                                resp.status,
                                String::from_utf8_lossy(&resp.body)
                            ));
                        }
                        l
                    }
                    Err(e) => {
                        outage.bad.push(format!("{p}: {e}"));
                        "no answer".to_string()
                    }
                };
                *outage.by_status.entry(label).or_insert(0) += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let restarted = stack
            .lock()
            .unwrap()
            .redis
            .restart()
            .context("restarting Redis")?;
        let pids = stack.lock().unwrap().pids();
        *board.lock().unwrap() = pids;
        redis_down_now.store(false, Ordering::Relaxed);
        log(format!(
            "redis-server restarted after {:.1} s down (append-only file reloaded)",
            kill_t.elapsed().as_secs_f64()
        ));
        // Recovery: the first job to finish after the restart (from the event stream, stamped
        // by Redis), the API answering again, and a job enqueued now finishing (behind the
        // backlog the cap holds).
        let restart_ms =
            (procs::unix_secs() * 1000.0) as u64 - restarted.elapsed().as_millis() as u64;
        let first_done = {
            let (u, q) = (redis_url.clone(), queue_name.clone());
            tokio::spawn(async move {
                drive::first_complete_after(&u, &q, restart_ms, Duration::from_secs(60)).await
            })
        };
        let rec_deadline = restarted + Duration::from_secs(60);
        loop {
            if let Ok(r) = api.get("/api/admin/queue").await {
                if r.status == StatusCode::OK {
                    outage.api_back_s = Some(restarted.elapsed().as_secs_f64());
                    break;
                }
            }
            if Instant::now() > rec_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A probe job with its own key; the cap may be full, so it waits its turn like any job.
        let body = json!({"kind": "diagnostic", "payload": {}, "idempotency_key": format!("chaos-{run_tag}-recovery")});
        if let Ok(Some(v)) = drive::submit(
            &api,
            "/api/jobs",
            &body,
            &stats,
            &odd,
            Duration::from_secs(60),
        )
        .await
        {
            let id = v["id"].as_str().unwrap_or_default().to_string();
            outage.probe_job = Some(id.clone());
            while Instant::now() < rec_deadline {
                if let Ok(r) = api.get(&format!("/api/jobs/{id}")).await {
                    if r.json()["status"].as_str().is_some_and(drive::terminal) {
                        outage.job_done_s = Some(restarted.elapsed().as_secs_f64());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        outage.first_done_s = first_done
            .await
            .ok()
            .flatten()
            .map(|ms| ms.saturating_sub(restart_ms) as f64 / 1000.0);
        log(format!(
            "after the Redis restart: first job finished after {:?} s, API answering after {:?} s, a job enqueued after the restart done after {:?} s",
            outage.first_done_s, outage.api_back_s, outage.job_done_s
        ));
    }
    while prods.join_next().await.is_some() {}
    done_submitting.store(true, Ordering::Relaxed);
    let submit_s = started.elapsed().as_secs_f64();
    log(format!(
        "all {n_jobs} items submitted in {submit_s:.0} s; draining"
    ));
    let _ = killer.await;
    let _ = cap_task.await;
    let pids = stack.lock().unwrap().pids();
    *board.lock().unwrap() = pids;
    let (qview, drained) = drive::wait_drained(&api, Duration::from_secs_f64(drain_secs)).await;
    let drain_s = started.elapsed().as_secs_f64() - submit_s;

    // ---- verification
    let all_ids: Vec<String> = ids
        .iter()
        .filter_map(|m| m.lock().unwrap().clone())
        .collect();
    let mut seen = drive::read_jobs(&api, &all_ids, 32).await;
    seen.sort_by(|a, b| a.id.cmp(&b.id));
    let statuses = drive::tally(
        seen.iter()
            .map(|s| s.status.as_deref().unwrap_or("missing")),
    );
    let lost: Vec<&drive::Seen> = seen.iter().filter(|s| s.status.is_none()).collect();
    let stuck: Vec<&drive::Seen> = seen
        .iter()
        .filter(|s| s.status.as_deref().is_some_and(|x| !drive::terminal(x)))
        .collect();
    let failed: Vec<&drive::Seen> = seen
        .iter()
        .filter(|s| s.status.as_deref() == Some("failed"))
        .collect();
    let retried = seen.iter().filter(|s| s.attempts > 1).count();
    let mut dup_ids = HashMap::<&str, u32>::new();
    for id in &all_ids {
        *dup_ids.entry(id.as_str()).or_insert(0) += 1;
    }
    let dup_enqueues: Vec<String> = dup_ids
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| format!("{id} returned for {n} items"))
        .collect();

    let (completes, stream_len) = drive::complete_events(&redis_url, &queue_name)
        .await
        .unwrap_or_else(|e| {
            log(format!("cannot read the event stream: {e}"));
            (HashMap::new(), 0)
        });
    let doubles: Vec<String> = all_ids
        .iter()
        .filter_map(|id| {
            completes
                .get(id)
                .filter(|n| **n > 1)
                .map(|n| format!("{id}: {n} complete events"))
        })
        .collect();
    let no_complete: Vec<&String> = all_ids
        .iter()
        .filter(|id| !completes.contains_key(*id))
        .collect();

    let store = drive::StoreView::open(&data_dir).await;
    let (history, audit, accts_store, integrity) = match &store {
        Ok(st) => (
            drive::wait_archived(st, &all_ids, Duration::from_secs(60)).await,
            st.audit_by_job().await.unwrap_or_default(),
            st.accounts(&format!("cx{run_tag}"))
                .await
                .unwrap_or_default(),
            st.integrity().await.unwrap_or_else(|e| e),
        ),
        Err(e) => {
            log(format!("cannot open the store: {e}"));
            (HashMap::new(), HashMap::new(), HashMap::new(), e.clone())
        }
    };
    let not_archived: Vec<&String> = all_ids
        .iter()
        .filter(|i| !history.contains_key(*i))
        .collect();
    let history_mismatch: Vec<String> = seen
        .iter()
        .filter_map(|s| {
            let h = history.get(&s.id)?;
            (Some(h.as_str()) != s.status.as_deref())
                .then(|| format!("{}: API {:?}, store {h}", s.id, s.status))
        })
        .collect();
    // Provisioning effects: account once in the store and on the host, one terminal audit record.
    let accts = accounts.lock().unwrap().clone();
    let host_home = data_dir.join("host/home");
    let pseudo = std::fs::read_to_string(data_dir.join("host/etc/npanel/pseudo-users.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .unwrap_or(Value::Null);
    let mut prov_bad = Vec::new();
    for (i, a) in &accts {
        let job = ids[*i].lock().unwrap().clone().unwrap_or_default();
        if accts_store.get(a).map(String::as_str) != Some("active") {
            prov_bad.push(format!(
                "{a} (job {job}): store status {:?}",
                accts_store.get(a)
            ));
        }
        if !host_home.join(a).is_dir() {
            prov_bad.push(format!("{a} (job {job}): no home on the host root"));
        }
        if pseudo["users"].get(a).is_none() {
            prov_bad.push(format!("{a} (job {job}): not in pseudo-users.json"));
        }
        let ok_records = audit
            .get(&(job.clone(), "provision_succeeded".to_string()))
            .copied()
            .unwrap_or(0);
        if ok_records != 1 {
            prov_bad.push(format!(
                "{a} (job {job}): {ok_records} provision_succeeded audit records"
            ));
        }
    }
    let audit_doubles: Vec<String> = audit
        .iter()
        .filter(|((_, a), n)| **n > 1 && (a.ends_with("_succeeded") || a.ends_with("_failed")))
        .map(|((j, a), n)| format!("{j}: {n} × {a}"))
        .collect();

    let samples = sampler.finish().await;
    let (n_req, n_err, n500, n503, n429, n_transport) = rec.totals();
    let logs = stack.lock().unwrap().log_files();
    let around = |ids: Vec<String>| -> Vec<String> {
        let mut v = ids.iter().take(10).cloned().collect::<Vec<_>>();
        v.extend(procs::grep_logs(
            &logs,
            &ids.into_iter().take(10).collect::<Vec<_>>(),
            30,
        ));
        v
    };
    let err_lines = procs::grep_logs(&logs, &["ERROR".to_string(), "panicked".to_string()], 30);

    // Snapshots: a guard taken inside the `vec!` below would live to its end, and a second
    // `lock()` of the same mutex in it would deadlock.
    let refused = refused.lock().unwrap().clone();
    let over_cap = over_cap.lock().unwrap().clone();
    let odd_lines = odd.lock().unwrap().clone();
    let mut promises = vec![
        Promise::new(
            "every job reached exactly one terminal state",
            "0 lost, 0 stuck",
            format!("{} jobs: {statuses:?}; lost {}, not terminal {}; retried after a kill: {retried}", all_ids.len(), lost.len(), stuck.len()),
            lost.is_empty() && stuck.is_empty() && drained,
        )
        .evidence(around(lost.iter().chain(stuck.iter()).map(|s| format!("{} {:?} {:?}", s.id, s.status, s.error)).collect())),
        Promise::new(
            "every accepted enqueue is one job",
            "0 items without a job, 0 jobs shared by two items",
            format!("{} items, {} jobs accepted, {} refused, {} shared", n_jobs, all_ids.len(), refused.len(), dup_enqueues.len()),
            all_ids.len() == n_jobs && dup_enqueues.is_empty(),
        )
        .evidence(refused.iter().cloned().chain(dup_enqueues.clone()).collect()),
        Promise::new(
            "no double terminal effect (event stream)",
            "exactly 1 `complete` event per job",
            format!("{} jobs with >1, {} with none ({} stream entries)", doubles.len(), no_complete.len(), stream_len),
            doubles.is_empty() && no_complete.is_empty(),
        )
        .evidence(around(doubles.iter().cloned().chain(no_complete.iter().map(|s| format!("{s}: no complete event"))).collect())),
        Promise::new(
            "no double terminal effect (store audit)",
            "≤ 1 terminal audit record per job id",
            format!("{} job ids with more", audit_doubles.len()),
            audit_doubles.is_empty(),
        )
        .evidence(audit_doubles.clone()),
        Promise::new(
            "job history in the store matches the API",
            "every job archived, same final status",
            format!("{} not archived, {} differ; integrity_check: {integrity}", not_archived.len(), history_mismatch.len()),
            not_archived.is_empty() && history_mismatch.is_empty() && integrity == "ok",
        )
        .evidence(not_archived.iter().map(|s| s.to_string()).chain(history_mismatch.clone()).collect()),
        Promise::new(
            "provisioned accounts created exactly once",
            "each: active in the store, one home, one pseudo user, one provision_succeeded record",
            format!("{} accounts, {} problems", accts.len(), prov_bad.len()),
            prov_bad.is_empty(),
        )
        .evidence(prov_bad.clone()),
        Promise::new(
            "the cap held",
            &format!("pending ≤ {max_pending} + the jobs that can be running (requeued orphans may exceed the bound, DESIGN §3; sampled every 250 ms)"),
            format!("max pending seen {}; {} samples over", max_seen_pending.load(Ordering::Relaxed), over_cap.len()),
            over_cap.is_empty(),
        )
        .evidence(over_cap.clone()),
        Promise::new(
            "no 500s",
            "0 × 500, 0 transport errors outside the Redis outage",
            format!("{n_req} requests: {n500} × 500, {} other 5xx (not 503), {n503} × 503, {n429} × 429, {n_transport} transport errors", n_err - n500 - n_transport),
            n500 == 0 && n_err == n_transport && odd_lines.iter().all(|l| !l.contains("answered 5")),
        )
        .evidence(odd_lines.clone()),
        Promise::new(
            "failed jobs",
            "0 (diagnostic jobs never fail by themselves; a kill costs an attempt)",
            format!("{}", failed.len()),
            failed.is_empty(),
        )
        .evidence(around(failed.iter().map(|s| format!("{} attempts {} error {:?}", s.id, s.attempts, s.error)).collect())),
    ];
    if redis_kill_at > 0.0 {
        promises.push(
            Promise::new(
                "Redis down: 503 `unavailable`, never 500, never a hang",
                "every answer 503 unavailable, none slower than the API timeout (30 s)",
                format!(
                    "{} requests during {redis_down} s: {:?}; slowest {:.0} ms",
                    outage.n, outage.by_status, outage.max_ms
                ),
                outage.bad.is_empty() && outage.max_ms < 30_000.0,
            )
            .evidence(outage.bad.clone()),
        );
        promises.push(Promise::new(
            "work resumes after the Redis restart",
            "≤ 5 s from restart to the first job finished",
            format!(
                "first job finished after {:?} s; API answering after {:?} s; a job enqueued after the restart ({:?}, behind the capped backlog) finished after {:?} s",
                outage.first_done_s.map(|x| (x * 1000.0).round() / 1000.0),
                outage.api_back_s.map(|x| (x * 1000.0).round() / 1000.0),
                outage.probe_job,
                outage.job_done_s.map(|x| (x * 1000.0).round() / 1000.0)
            ),
            outage.first_done_s.is_some_and(|s| s <= 5.0),
        ));
    }
    if !err_lines.is_empty() {
        log(format!(
            "{} ERROR/panic lines in the logs (see summary)",
            err_lines.len()
        ));
    }
    let info = json!({
        "jobs": n_jobs, "workers": n_workers, "worker_kills": kills.load(Ordering::Relaxed),
        "job_ms": job_ms, "diagnostic_limit": limit, "lease_ms": lease_ms,
        "submit_seconds": (submit_s * 10.0).round() / 10.0,
        "drain_seconds": (drain_s * 10.0).round() / 10.0,
        "total_seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "submissions": stats.json(),
        "queue_at_end": qview,
        "api_p50_p95_p99_ms": rec.overall(),
        "load_average_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "redis_killed_after_accepted": outage.killed_at_accepted,
        "error_lines_in_logs": err_lines,
    });
    let md = metrics::write_summary(&out, "npanel-chaos: queue chaos", &info, &promises);
    match loadtests::plot::draw(&out.join("plot.png"), "npanel-chaos", &samples) {
        Ok(true) => {}
        Ok(false) => log("plot drawn without text (no font found; set PLOT_FONT)"),
        Err(e) => log(format!("plot: {e}")),
    }
    println!("{md}");
    let ok = promises.iter().all(|p| p.pass);
    stack.lock().unwrap().stop();
    if ok && !args.flag("keep") {
        let _ = std::fs::remove_dir_all(out.join("run/data/host"));
    }
    for p in metrics::outputs(&out) {
        log(format!("wrote {}", p.display()));
    }
    Ok(ok)
}
