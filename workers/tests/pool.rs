//! The worker pool against a real Redis: wake-up, retries, cancel (with child processes),
//! shutdown requeue, panics, progress coalescing, per-account order, Redis restarts.

use queue::testing::{self, wait_for_status as wait_status, PrivateRedis};
use queue::*;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use workers::{JobContext, JobError, Pool, PoolConfig, Registry};

fn fast() -> PoolConfig {
    PoolConfig {
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(5),
        ..PoolConfig::default()
    }
}

struct Running {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("pool stops")
            .unwrap();
    }
}

fn start(q: &Queue, reg: Registry, cfg: PoolConfig) -> Running {
    let stop = CancellationToken::new();
    let pool = Pool::new(q.clone(), reg, cfg);
    let s = stop.clone();
    let handle = tokio::spawn(async move { pool.run(s).await.unwrap() });
    Running { stop, handle }
}

fn diag(duration_ms: u64, steps: u32, fail_attempts: u32) -> NewJob {
    NewJob::typed(&Diagnostic {
        duration_ms,
        steps,
        fail_attempts,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostic_runs_end_to_end_with_progress() {
    let q = Queue::new(testing::config("diag")).unwrap();
    let p = start(&q, Registry::builtin(), fast());
    let id = q.enqueue(diag(300, 3, 0)).await.unwrap().id;
    let j = wait_status(&q, &id, JobStatus::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(j.result.unwrap()["steps"], 3);
    assert_eq!(j.progress_percent, 100.0);
    assert_eq!(j.attempts, 1);
    let ev = q.events_since("0", 100).await.unwrap();
    assert!(ev
        .iter()
        .any(|e| e.kind == "stage" && e.data["current_stage"] == "sleeping"));
    assert_eq!(ev.last().unwrap().kind, "complete");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_worker_wakes_at_once_without_polling() {
    let mut r = PrivateRedis::start();
    let cfg = QueueConfig {
        redis_url: r.url(),
        ..QueueConfig::default()
    };
    let q = Queue::new(cfg).unwrap();
    let started = Arc::new(Mutex::new(None::<Instant>));
    let s = started.clone();
    let reg = Registry::new().register(JobKind::Diagnostic, move |_ctx| {
        let s = s.clone();
        async move {
            *s.lock().unwrap() = Some(Instant::now());
            Ok(json!(null))
        }
    });
    // Safety-net poll of 30 s and a reaper every 60 s: only pub/sub can explain a fast pickup.
    let p = start(
        &q,
        reg,
        PoolConfig {
            idle_poll: Duration::from_secs(30),
            reap_interval: Duration::from_secs(60),
            ..fast()
        },
    );
    let info = |q: Queue| async move {
        let s: String = q.raw(redis::cmd("INFO").arg("stats")).await.unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    // Started and settled however slow the machine: subscribed to the wake-ups, then quiet for
    // a moment (the claim that follows the subscription is done). A pool that keeps polling
    // never gets past this.
    let t = Instant::now();
    loop {
        let listening = testing::wake_listeners(&q).await;
        let a = info(q.clone()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = info(q.clone()).await;
        if listening >= 1 && b - a <= 3 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the pool never went idle"
        );
    }
    let before = info(q.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = info(q.clone()).await;
    // The INFO call itself counts; an idle pool adds nothing else in 2 s.
    assert!(
        after - before <= 3,
        "idle pool issued {} commands in 2 s",
        after - before
    );
    let t0 = Instant::now();
    let id = q.enqueue(diag(0, 0, 0)).await.unwrap().id;
    wait_status(&q, &id, JobStatus::Succeeded, Duration::from_secs(5)).await;
    let pickup = started.lock().unwrap().unwrap() - t0;
    assert!(pickup < Duration::from_secs(2), "pickup took {pickup:?}");
    p.shutdown().await;
    r.stop();
}

/// Claim-on-complete: a pool with a backlog records each outcome and claims the next job in
/// the same script, so a run of jobs at concurrency 1 costs about one script per job (two
/// before: a completion, then a claim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_costs_one_script_per_job() {
    let r = PrivateRedis::start();
    let q = Queue::new(QueueConfig {
        redis_url: r.url(),
        ..QueueConfig::default()
    })
    .unwrap();
    const JOBS: u64 = 60;
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        ids.push(q.enqueue(diag(0, 0, 0)).await.unwrap().id);
    }
    let scripts = |q: Queue| async move {
        let s: String = q.raw(redis::cmd("INFO").arg("commandstats")).await.unwrap();
        s.lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>()
    };
    let before = scripts(q.clone()).await;
    // Concurrency 1, and no reaper or idle poll during the run: every script is a claim, a
    // completion or both.
    let p = start(
        &q,
        Registry::builtin(),
        PoolConfig {
            concurrency: 1,
            idle_poll: Duration::from_secs(30),
            reap_interval: Duration::from_secs(60),
            ..fast()
        },
    );
    for id in &ids {
        wait_status(&q, id, JobStatus::Succeeded, Duration::from_secs(30)).await;
    }
    let used = scripts(q.clone()).await - before;
    p.shutdown().await;
    // The first claim, one script per job, and a few for lease renewals or a claim that found
    // nothing; two per job would be 120.
    assert!(
        used <= JOBS + 15,
        "{used} scripts for {JOBS} jobs: not claimed on completion"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_attempts_retry_with_backoff_until_success() {
    let q = Queue::new(testing::config("retry")).unwrap();
    let p = start(&q, Registry::builtin(), fast());
    let id = q.enqueue(diag(0, 0, 2)).await.unwrap().id;
    let j = wait_status(&q, &id, JobStatus::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(j.attempts, 3);
    let id = q.enqueue(diag(0, 0, 5).max_attempts(2)).await.unwrap().id;
    let j = wait_status(&q, &id, JobStatus::Failed, Duration::from_secs(10)).await;
    assert_eq!(j.attempts, 2);
    assert!(j.error.unwrap().contains("told to fail attempt 2"));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_and_panics() {
    let q = Queue::new(testing::config("panic")).unwrap();
    let reg = Registry::new()
        .register(JobKind::Diagnostic, |ctx: JobContext| async move {
            if ctx.attempt == 1 {
                panic!("boom in handler");
            }
            Ok(json!("second time lucky"))
        })
        .register(JobKind::Restore, |_ctx| async move {
            Err::<serde_json::Value, _>(JobError::Permanent("archive is corrupt".into()))
        });
    let p = start(&q, reg, fast());
    let id = q.enqueue(diag(0, 0, 0)).await.unwrap().id;
    let j = wait_status(&q, &id, JobStatus::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(j.attempts, 2);
    assert_eq!(j.result.unwrap(), "second time lucky");
    let id = q
        .enqueue(NewJob::new(JobKind::Restore, json!({"archive": "/b.tar"})))
        .await
        .unwrap()
        .id;
    let j = wait_status(&q, &id, JobStatus::Failed, Duration::from_secs(10)).await;
    assert_eq!(j.attempts, 1);
    assert_eq!(j.error.as_deref(), Some("archive is corrupt"));
    p.shutdown().await;
}

fn group_alive(pgid: i32) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_another_process_stops_the_job_and_its_children_within_2s() {
    let cfg = testing::config("cancel");
    let q = Queue::new(cfg.clone()).unwrap();
    let pgid = Arc::new(Mutex::new(None::<i32>));
    let pg = pgid.clone();
    let reg = Registry::new().register(JobKind::Diagnostic, move |ctx: JobContext| {
        let pg = pg.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let pidfile = dir.path().join("pid");
            // A shell that leaves grandchildren behind: both sleeps must die too.
            let mut cmd = tokio::process::Command::new("sh");
            cmd.arg("-c").arg(format!(
                "echo $$ > {}; sleep 600 & sleep 600; wait",
                pidfile.display()
            ));
            let ctx2 = ctx.clone();
            let watcher = async move {
                loop {
                    if let Ok(s) = std::fs::read_to_string(&pidfile) {
                        if let Ok(p) = s.trim().parse::<i32>() {
                            *pg.lock().unwrap() = Some(p);
                            ctx2.log(format!("spawned group {p}"));
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                r = ctx.run_command(cmd) => r.map(|_| json!("exited")),
                _ = watcher => unreachable!(),
            }
        }
    });
    let p = start(&q, reg, fast());
    let id = q.enqueue(diag(0, 0, 0)).await.unwrap().id;
    wait_status(&q, &id, JobStatus::Running, Duration::from_secs(5)).await;
    let t = Instant::now();
    let group = loop {
        if let Some(g) = *pgid.lock().unwrap() {
            break g;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "command never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(group_alive(group));
    // "Another process": a separate queue handle with its own connections.
    let other = Queue::new(cfg).unwrap();
    let t0 = Instant::now();
    assert_eq!(other.cancel(&id).await.unwrap(), CancelOutcome::Cancelling);
    let j = wait_status(&q, &id, JobStatus::Cancelled, Duration::from_secs(2)).await;
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(j.error.as_deref(), Some("cancelled by request"));
    let t1 = Instant::now();
    while group_alive(group) && t1.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !group_alive(group),
        "process group {group} survived the cancel"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_requeues_running_jobs_without_using_an_attempt() {
    let q = Queue::new(testing::config("shutdown")).unwrap();
    let p = start(
        &q,
        Registry::builtin(),
        PoolConfig {
            shutdown_grace: Duration::from_millis(200),
            ..fast()
        },
    );
    let long = q.enqueue(diag(60_000, 60, 0)).await.unwrap().id;
    let short = q.enqueue(diag(100, 1, 0)).await.unwrap().id;
    wait_status(&q, &long, JobStatus::Running, Duration::from_secs(5)).await;
    wait_status(&q, &short, JobStatus::Succeeded, Duration::from_secs(5)).await;
    p.shutdown().await;
    let j = q.get(&long).await.unwrap();
    assert_eq!(j.status, JobStatus::Queued);
    assert_eq!(j.attempts, 0);
    assert_eq!(q.stats().await.unwrap().kinds["diagnostic"].running, 0);
    // another worker takes it over as attempt 1
    q.cancel(&long).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_coalesced_to_about_one_event_per_second() {
    let q = Queue::new(testing::config("coalesce")).unwrap();
    let reg = Registry::new().register(JobKind::Diagnostic, |ctx: JobContext| async move {
        // 1000 progress reports per second for 3 s
        for i in 0..3000u64 {
            ctx.progress("copying", i + 1, 3000);
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(json!(null))
    });
    let p = start(&q, reg, fast());
    let id = q.enqueue(diag(0, 0, 0)).await.unwrap().id;
    let j = wait_status(&q, &id, JobStatus::Succeeded, Duration::from_secs(20)).await;
    let ev = q.events_since("0", 10_000).await.unwrap();
    let progress = ev.iter().filter(|e| e.kind == "progress").count();
    let stages = ev.iter().filter(|e| e.kind == "stage").count();
    assert_eq!(stages, 1);
    let secs = (j.finished_at.unwrap() - j.started_at.unwrap()).num_milliseconds() as f64 / 1000.0;
    assert!(
        progress as f64 <= secs + 2.0 && progress >= 1,
        "{progress} progress events in {secs:.1} s"
    );
    // the stored state got the final report (written when the handler returned)
    assert_eq!(j.bytes_processed, Some(3000));
    assert_eq!(j.current_stage.as_deref(), Some("copying"));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_at_a_time_in_order_while_others_flow() {
    let q = Queue::new(testing::config("order")).unwrap();
    let log = Arc::new(Mutex::new(Vec::<(String, &'static str, Instant)>::new()));
    let l = log.clone();
    // acme's first job (steps = 1) holds acme's line until zeta's job has finished: zeta can
    // only finish first if it did not wait for acme's line (else it times out), whatever the
    // machine's speed.
    let zeta_done = Arc::new(tokio::sync::Notify::new());
    let zd = zeta_done.clone();
    let reg = Registry::new().register(JobKind::Diagnostic, move |ctx: JobContext| {
        let (l, zd) = (l.clone(), zd.clone());
        async move {
            let n = ctx.raw_payload["duration_ms"].as_u64().unwrap();
            l.lock()
                .unwrap()
                .push((ctx.id.clone(), "start", Instant::now()));
            if ctx.raw_payload["steps"] == 1 {
                let _ = tokio::time::timeout(Duration::from_secs(20), zd.notified()).await;
            }
            tokio::time::sleep(Duration::from_millis(n)).await;
            l.lock()
                .unwrap()
                .push((ctx.id.clone(), "end", Instant::now()));
            if ctx.raw_payload["steps"] == 2 {
                zd.notify_one();
            }
            Ok(json!(null))
        }
    });
    let p = start(&q, reg, fast());
    let mut acme = Vec::new();
    for i in 0..4 {
        acme.push(
            q.enqueue(diag(150 - i * 30, u32::from(i == 0), 0).account("acme"))
                .await
                .unwrap()
                .id,
        );
    }
    let other = q.enqueue(diag(10, 2, 0).account("zeta")).await.unwrap().id;
    for id in acme.iter().chain([&other]) {
        wait_status(&q, id, JobStatus::Succeeded, Duration::from_secs(10)).await;
    }
    let log = log.lock().unwrap().clone();
    let acme_events: Vec<_> = log.iter().filter(|(id, _, _)| acme.contains(id)).collect();
    // strictly start, end, start, end ... in enqueue order
    for (i, pair) in acme_events.chunks(2).enumerate() {
        assert_eq!(pair[0].0, acme[i]);
        assert_eq!((pair[0].1, pair[1].1), ("start", "end"));
        assert_eq!(pair[1].0, acme[i]);
    }
    // zeta did not wait for acme's line
    let zeta_end = log
        .iter()
        .find(|(id, e, _)| *id == other && *e == "end")
        .unwrap()
        .2;
    let acme_first_end = acme_events[1].2;
    assert!(zeta_end < acme_first_end);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_reaper_reconnect_after_a_redis_restart() {
    let mut r = PrivateRedis::start();
    let cfg = QueueConfig {
        redis_url: r.url(),
        lease_ms: 600,
        ..QueueConfig::default()
    };
    let q = Queue::new(cfg).unwrap();
    let p = start(
        &q,
        Registry::builtin(),
        PoolConfig {
            reap_interval: Duration::from_millis(200),
            ..fast()
        },
    );
    let id = q.enqueue(diag(0, 0, 0)).await.unwrap().id;
    wait_status(&q, &id, JobStatus::Succeeded, Duration::from_secs(5)).await;
    r.stop();
    assert!(matches!(
        q.enqueue(diag(0, 0, 0)).await,
        Err(QueueError::Unavailable(_))
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await; // claim, renew, reap all fail meanwhile
    r.restart();
    // The restarted server is empty (no persistence in tests): new work flows again.
    let t = Instant::now();
    let id = loop {
        match q.enqueue(diag(0, 0, 0)).await {
            Ok(e) => break e.id,
            Err(_) if t.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("redis never came back: {e}"),
        }
    };
    wait_status(&q, &id, JobStatus::Succeeded, Duration::from_secs(15)).await;
    // The reaper works again too: a job held by a worker that vanished (a kind this pool does
    // not run, so only the reaper can move it) comes back once its lease expires.
    let orphan = q
        .enqueue(NewJob::new(JobKind::Restore, json!({"archive": "x.tar"})))
        .await
        .unwrap()
        .id;
    let held = q.claim("ghost", &[JobKind::Restore], 1).await.unwrap();
    assert_eq!(held.jobs.len(), 1);
    let j = wait_status(&q, &orphan, JobStatus::Queued, Duration::from_secs(10)).await;
    assert_eq!(j.attempts, 1);
    assert_eq!(j.error.as_deref(), Some("lease expired: worker lost"));
    p.shutdown().await;
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_and_timeouts_are_honoured() {
    let q = Queue::new(testing::config("retryafter")).unwrap();
    let returned = Arc::new(Mutex::new(None::<chrono::DateTime<chrono::Utc>>));
    let r = returned.clone();
    let reg = Registry::new()
        .register(JobKind::Diagnostic, move |ctx: JobContext| {
            let r = r.clone();
            async move {
                if ctx.attempt == 1 {
                    *r.lock().unwrap() = Some(chrono::Utc::now());
                    return Err(JobError::RetryAfter(
                        Duration::from_millis(700),
                        "remote busy".into(),
                    ));
                }
                Ok(json!("done"))
            }
        })
        .register(JobKind::Restore, |ctx: JobContext| async move {
            // never returns on its own
            ctx.cancelled().await;
            Ok(json!(null))
        });
    let p = start(
        &q,
        reg,
        PoolConfig {
            job_timeout: Duration::from_millis(300),
            ..fast()
        },
    );
    let id = q.enqueue(diag(0, 0, 0)).await.unwrap().id;
    let j = wait_status(&q, &id, JobStatus::Retrying, Duration::from_secs(5)).await;
    let seen = chrono::Utc::now();
    assert_eq!(j.error.as_deref(), Some("remote busy"));
    // The retry is due 700 ms after the attempt ended (not the pool's 10-50 ms backoff):
    // at least 700 ms after the handler returned, at most 700 ms after we saw it retrying.
    // Both bounds hold however slow the machine (a 2 ms allowance for Redis's ms clock).
    let run_at = j.run_at.unwrap();
    let after_return = run_at - returned.lock().unwrap().unwrap();
    let after_seen = run_at - seen;
    assert!(
        after_return.num_milliseconds() >= 698 && after_seen.num_milliseconds() <= 702,
        "retry scheduled {after_return} after the handler returned, {after_seen} after it was seen"
    );
    let j = wait_status(&q, &id, JobStatus::Succeeded, Duration::from_secs(5)).await;
    assert_eq!(j.attempts, 2);
    let id = q
        .enqueue(NewJob::new(JobKind::Restore, json!({"archive": "/x"})).max_attempts(2))
        .await
        .unwrap()
        .id;
    let j = wait_status(&q, &id, JobStatus::Failed, Duration::from_secs(10)).await;
    assert_eq!(j.attempts, 2);
    assert!(j.error.unwrap().contains("timed out after 300ms"));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_next_job_of_another_kind_starts_at_once() {
    let q = Queue::new(testing::config("cross-kind")).unwrap();
    let reg = Registry::new()
        .register(JobKind::Diagnostic, |_c: JobContext| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(json!({}))
        })
        .register(JobKind::HealthCheck, |_c: JobContext| async move {
            Ok(json!({}))
        });
    let p = start(
        &q,
        reg,
        PoolConfig {
            idle_poll: Duration::from_secs(30),
            ..fast()
        },
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = q.enqueue(diag(0, 0, 0).account("acme")).await.unwrap().id;
    let hc = q
        .enqueue(
            NewJob::typed(&HealthCheck {
                migration_id: "m".into(),
                wait_secs: 0,
            })
            .account("acme"),
        )
        .await
        .unwrap()
        .id;
    wait_status(&q, &a, JobStatus::Succeeded, Duration::from_secs(5)).await;
    wait_status(&q, &hc, JobStatus::Succeeded, Duration::from_secs(2)).await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_returned_after_shutdown_or_cancel_is_kept() {
    let q = Queue::new(testing::config("late-ok")).unwrap();
    let runs = Arc::new(Mutex::new(0u32));
    let r = runs.clone();
    let reg = Registry::new().register(JobKind::Diagnostic, move |_c: JobContext| {
        let r = r.clone();
        async move {
            // does its work and ignores the cancel it is sent
            tokio::time::sleep(Duration::from_millis(700)).await;
            *r.lock().unwrap() += 1;
            Ok(json!({"done": true}))
        }
    });
    let cfg = PoolConfig {
        shutdown_grace: Duration::from_millis(300),
        cancel_grace: Duration::from_secs(2),
        ..fast()
    };
    // shutdown while it runs
    let p = start(&q, reg.clone(), cfg.clone());
    let id = q.enqueue(diag(0, 0, 0)).await.unwrap().id;
    wait_status(&q, &id, JobStatus::Running, Duration::from_secs(5)).await;
    p.shutdown().await;
    let j = q.get(&id).await.unwrap();
    assert_eq!(j.status, JobStatus::Succeeded, "not requeued to run twice");
    assert_eq!(j.result.unwrap()["done"], true);
    // cancel while it runs
    let p = start(&q, reg, cfg);
    let id = q.enqueue(diag(0, 0, 0)).await.unwrap().id;
    wait_status(&q, &id, JobStatus::Running, Duration::from_secs(5)).await;
    q.cancel(&id).await.unwrap();
    let j = wait_status(&q, &id, JobStatus::Succeeded, Duration::from_secs(5)).await;
    assert_eq!(j.result.unwrap()["done"], true);
    assert_eq!(*runs.lock().unwrap(), 2);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_attempt_reclaimed_by_the_same_pool_never_overlaps() {
    let mut cfg = testing::config("reclaim");
    cfg.lease_ms = 1500;
    let q = Queue::new(cfg).unwrap();
    let active = Arc::new(Mutex::new((0u32, 0u32))); // (now, max) of attempts >= 2
    let a = active.clone();
    let reg = Registry::new().register(JobKind::Diagnostic, move |c: JobContext| {
        let a = a.clone();
        async move {
            if c.attempt == 1 {
                // still in its handler when attempt 2 starts, however long that takes
                let t = Instant::now();
                while a.lock().unwrap().1 == 0 && t.elapsed() < Duration::from_secs(20) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                return Ok(json!(1));
            }
            {
                let mut g = a.lock().unwrap();
                g.0 += 1;
                g.1 = g.1.max(g.0);
            }
            tokio::time::sleep(Duration::from_millis(2500)).await;
            a.lock().unwrap().0 -= 1;
            Ok(json!(c.attempt))
        }
    });
    let p = start(
        &q,
        reg,
        PoolConfig {
            reap_interval: Duration::from_millis(100),
            ..fast()
        },
    );
    let id = q
        .enqueue(NewJob::typed(&Diagnostic::default()).max_attempts(10))
        .await
        .unwrap()
        .id;
    wait_status(&q, &id, JobStatus::Running, Duration::from_secs(5)).await;
    // attempt 1 misses its lease (as in a network blip): the reaper requeues the job and this
    // same pool claims attempt 2 while attempt 1 is still in its handler
    let _: i64 = q
        .raw(
            redis::cmd("ZADD")
                .arg(format!("{}leases", q.prefix()))
                .arg(0)
                .arg(&id),
        )
        .await
        .unwrap();
    let j = wait_status(&q, &id, JobStatus::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(j.attempts, 2, "attempt 2's lease kept being renewed");
    assert_eq!(j.result.unwrap(), 2);
    assert_eq!(
        active.lock().unwrap().1,
        1,
        "no third attempt overlapped the second"
    );
    p.shutdown().await;
}

/// Sets its flag when dropped: shows a handler's future was dropped, not left running.
struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A restore handler that ignores cancels and never returns by itself.
fn stubborn(dropped: Arc<std::sync::atomic::AtomicBool>) -> Registry {
    Registry::new()
        .register(JobKind::Restore, move |_ctx: JobContext| {
            let flag = DropFlag(dropped.clone());
            async move {
                let _flag = flag;
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok(json!("never"))
            }
        })
        .register(JobKind::Diagnostic, |_ctx: JobContext| async move {
            Ok(json!("ran"))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_the_attempt_with_its_message_and_frees_the_slot() {
    let q = Queue::new(testing::config("panic-slot")).unwrap();
    let reg = Registry::new().register(JobKind::Diagnostic, |ctx: JobContext| async move {
        if ctx.raw_payload["fail_attempts"].as_u64() == Some(1) {
            panic!("boom for {}", ctx.id);
        }
        Ok(json!("fine"))
    });
    // One slot: the second job can only run if the panicking one gave its slot back.
    let p = start(
        &q,
        reg,
        PoolConfig {
            concurrency: 1,
            ..fast()
        },
    );
    let bad = q.enqueue(diag(0, 0, 1).max_attempts(1)).await.unwrap().id;
    let j = wait_status(&q, &bad, JobStatus::Failed, Duration::from_secs(10)).await;
    assert_eq!(j.attempts, 1);
    assert_eq!(
        j.error.as_deref(),
        Some(format!("handler panicked: boom for {bad}").as_str())
    );
    let good = q.enqueue(diag(0, 0, 0)).await.unwrap().id;
    let j = wait_status(&q, &good, JobStatus::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(j.result.unwrap(), "fine");
    assert_eq!(q.stats().await.unwrap().kinds["diagnostic"].running, 0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_layer_drops_a_stuck_handler_and_frees_its_slot() {
    let q = Queue::new(testing::config("timeout-slot")).unwrap();
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let p = start(
        &q,
        stubborn(dropped.clone()),
        PoolConfig {
            concurrency: 1,
            job_timeout: Duration::from_millis(300),
            ..fast()
        },
    );
    let id = q
        .enqueue(NewJob::new(JobKind::Restore, json!({"archive": "/x"})).max_attempts(1))
        .await
        .unwrap()
        .id;
    let j = wait_status(&q, &id, JobStatus::Failed, Duration::from_secs(10)).await;
    assert_eq!(j.attempts, 1);
    assert_eq!(j.error.as_deref(), Some("timed out after 300ms"));
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    let next = q.enqueue(diag(0, 0, 0)).await.unwrap().id;
    wait_status(&q, &next, JobStatus::Succeeded, Duration::from_secs(10)).await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_requeues_a_handler_that_ignores_the_cancel_before_the_last_resort() {
    let q = Queue::new(testing::config("shutdown-stubborn")).unwrap();
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let p = start(
        &q,
        stubborn(dropped.clone()),
        PoolConfig {
            shutdown_grace: Duration::from_millis(200),
            cancel_grace: Duration::from_millis(200),
            ..fast()
        },
    );
    let id = q
        .enqueue(NewJob::new(JobKind::Restore, json!({"archive": "/x"})))
        .await
        .unwrap()
        .id;
    wait_status(&q, &id, JobStatus::Running, Duration::from_secs(5)).await;
    let t = Instant::now();
    p.shutdown().await;
    // Grace, then cancel with the shutdown reason, then cancel grace: the Monitor's own
    // timeout (10 s later still) never had to drop anything.
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    let j = q.get(&id).await.unwrap();
    assert_eq!(j.status, JobStatus::Queued);
    assert_eq!(j.attempts, 0, "the interrupted attempt was not counted");
    assert_eq!(q.stats().await.unwrap().kinds["restore"].running, 0);
    q.cancel(&id).await.unwrap();
}
