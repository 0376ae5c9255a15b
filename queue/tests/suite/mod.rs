//! The queue's semantics against a real Redis (DESIGN §2), written once and run twice: on one
//! server (`tests/queue.rs`) and on a three-master Redis Cluster (`tests/queue_cluster.rs`).
//! Each binary's root defines `config(hint)`, the queue config of its kind of Redis.

use queue::*;
use serde_json::json;
use std::time::Duration;

fn q(hint: &str) -> Queue {
    Queue::new(crate::config(hint)).unwrap()
}

fn qc(hint: &str, f: impl FnOnce(&mut QueueConfig)) -> Queue {
    let mut c = crate::config(hint);
    f(&mut c);
    Queue::new(c).unwrap()
}

fn diag() -> NewJob {
    NewJob::typed(&Diagnostic::default())
}

async fn claim_all(q: &Queue, kinds: &[JobKind]) -> Vec<Claimed> {
    q.claim("w1", kinds, 1000).await.unwrap().jobs
}

async fn keys(q: &Queue) -> Vec<String> {
    q.raw(redis::cmd("KEYS").arg(format!("{}*", q.prefix())))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bound_holds_under_500_concurrent_enqueuers() {
    let q = q("bound");
    let mut tasks = Vec::new();
    for i in 0..500 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            q.enqueue(diag().account(format!("acct{}", i % 7))).await
        }));
    }
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(QueueError::Full {
                limit,
                pending,
                retry_after,
            }) => {
                assert_eq!(limit, 100);
                assert!(pending >= 100);
                assert!(retry_after >= Duration::from_secs(1));
                full += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(ok, 100);
    assert_eq!(full, 400);
    assert_eq!(q.stats().await.unwrap().pending, 100);
    // A bulk that does not fit is refused whole.
    let err = q.enqueue_bulk(vec![diag(), diag()]).await.unwrap_err();
    assert!(matches!(err, QueueError::Full { .. }));
    assert_eq!(q.stats().await.unwrap().pending, 100);
}

#[tokio::test]
async fn retries_requeues_and_orphans_are_never_refused_above_the_bound() {
    let q = qc("over", |c| {
        c.max_pending = 3;
        c.lease_ms = 300;
    });
    for _ in 0..3 {
        q.enqueue(diag()).await.unwrap();
    }
    let jobs = q.claim("w", &[JobKind::Diagnostic], 3).await.unwrap().jobs;
    assert_eq!(jobs.len(), 3);
    for _ in 0..3 {
        q.enqueue(diag()).await.unwrap();
    }
    assert!(matches!(
        q.enqueue(diag()).await,
        Err(QueueError::Full { .. })
    ));
    // retry, requeue and lease expiry all go above the bound
    let k = JobKind::Diagnostic;
    let retry = Outcome::Retry {
        error: "boom".into(),
        delay: Duration::from_secs(60),
    };
    assert_eq!(
        q.complete(&jobs[0].id, &jobs[0].token, k, retry)
            .await
            .unwrap(),
        Some(JobStatus::Retrying)
    );
    assert_eq!(
        q.complete(&jobs[1].id, &jobs[1].token, k, Outcome::Requeue)
            .await
            .unwrap(),
        Some(JobStatus::Queued)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(q.reap().await.unwrap(), 1);
    assert_eq!(q.stats().await.unwrap().pending, 6);
    let j1 = q.get(&jobs[1].id).await.unwrap();
    assert_eq!(j1.attempts, 0, "a shutdown requeue does not use an attempt");
    let j2 = q.get(&jobs[2].id).await.unwrap();
    assert_eq!(j2.status, JobStatus::Queued);
    assert_eq!(j2.attempts, 1);
}

#[tokio::test]
async fn per_kind_limit_is_enforced_at_claim_and_changes_at_runtime() {
    let q = q("limit");
    q.set_limit(JobKind::Diagnostic, 2).await.unwrap();
    for _ in 0..6 {
        q.enqueue(diag()).await.unwrap();
    }
    let a = claim_all(&q, &[JobKind::Diagnostic]).await;
    assert_eq!(a.len(), 2);
    // another "process" sees the same limit
    let other = Queue::new(q.config().clone()).unwrap();
    assert!(claim_all(&other, &[JobKind::Diagnostic]).await.is_empty());
    q.complete(
        &a[0].id,
        &a[0].token,
        JobKind::Diagnostic,
        Outcome::Succeeded(json!({})),
    )
    .await
    .unwrap();
    assert_eq!(claim_all(&other, &[JobKind::Diagnostic]).await.len(), 1);
    q.set_limit(JobKind::Diagnostic, 4).await.unwrap();
    assert_eq!(claim_all(&other, &[JobKind::Diagnostic]).await.len(), 2);
    let st = q.stats().await.unwrap();
    let d = &st.kinds["diagnostic"];
    assert_eq!((d.limit, d.running, d.pending), (4, 4, 1));
    // lowering the limit stops nothing that runs
    q.set_limit(JobKind::Diagnostic, 1).await.unwrap();
    assert!(claim_all(&q, &[JobKind::Diagnostic]).await.is_empty());
    assert_eq!(q.stats().await.unwrap().kinds["diagnostic"].running, 4);
    // defaults for kinds nobody set
    assert_eq!(st.kinds["restore"].limit, 3);
    assert_eq!(st.kinds["provision"].limit, 10);
}

#[tokio::test]
async fn jobs_of_one_account_run_one_at_a_time_in_order() {
    let q = q("acct");
    let k = JobKind::Diagnostic;
    let a1 = q.enqueue(diag().account("acme")).await.unwrap().id;
    let a2 = q.enqueue(diag().account("acme")).await.unwrap().id;
    let b1 = q.enqueue(diag().account("beta")).await.unwrap().id;
    let a3 = q.enqueue(diag().account("acme")).await.unwrap().id;
    let c = claim_all(&q, &[k]).await;
    let ids: Vec<_> = c.iter().map(|j| j.id.clone()).collect();
    assert_eq!(ids, vec![a1.clone(), b1.clone()], "only account heads run");
    // a1 fails and retries: a2 must still wait behind it
    let retry = Outcome::Retry {
        error: "x".into(),
        delay: Duration::ZERO,
    };
    q.complete(&a1, &c[0].token, k, retry).await.unwrap();
    let c2 = claim_all(&q, &[k]).await;
    assert_eq!(c2.len(), 1);
    assert_eq!(c2[0].id, a1, "the retry of a1 runs before a2");
    assert_eq!(c2[0].attempt, 2);
    q.complete(&a1, &c2[0].token, k, Outcome::Succeeded(json!(1)))
        .await
        .unwrap();
    let c3 = claim_all(&q, &[k]).await;
    assert_eq!(c3.len(), 1);
    assert_eq!(c3[0].id, a2);
    // cancelling a queued job further back keeps the line intact
    assert_eq!(q.cancel(&a3).await.unwrap(), CancelOutcome::Cancelled);
    q.complete(&a2, &c3[0].token, k, Outcome::Succeeded(json!(2)))
        .await
        .unwrap();
    assert!(claim_all(&q, &[k]).await.is_empty());
    let keys = keys(&q).await;
    assert!(
        !keys.iter().any(|k| k.ends_with("acct:acme")),
        "empty account lines are removed: {keys:?}"
    );
}

/// Account lines written by an earlier version hold bare ids (now `kind:id`): they still
/// advance, and a cancel further back still finds its entry.
#[tokio::test]
async fn account_lines_of_bare_ids_still_advance() {
    let q = q("acct-legacy");
    let k = JobKind::Diagnostic;
    let a1 = q.enqueue(diag().account("old")).await.unwrap().id;
    let a2 = q.enqueue(diag().account("old")).await.unwrap().id;
    let a3 = q.enqueue(diag().account("old")).await.unwrap().id;
    let key = format!("{}acct:old", q.prefix());
    let line: Vec<String> = q
        .raw(redis::cmd("LRANGE").arg(&key).arg(0).arg(-1))
        .await
        .unwrap();
    assert_eq!(
        line,
        vec![
            format!("diagnostic:{a1}"),
            format!("diagnostic:{a2}"),
            format!("diagnostic:{a3}")
        ]
    );
    let _: i64 = q.raw(redis::cmd("DEL").arg(&key)).await.unwrap();
    let _: i64 = q
        .raw(redis::cmd("RPUSH").arg(&key).arg(&a1).arg(&a2).arg(&a3))
        .await
        .unwrap();
    assert_eq!(q.cancel(&a3).await.unwrap(), CancelOutcome::Cancelled);
    let c = claim_all(&q, &[k]).await;
    assert_eq!(c.len(), 1);
    q.complete(&a1, &c[0].token, k, Outcome::Succeeded(json!(1)))
        .await
        .unwrap();
    let c = claim_all(&q, &[k]).await;
    assert_eq!(
        c.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        vec![a2.clone()]
    );
    q.complete(&a2, &c[0].token, k, Outcome::Succeeded(json!(2)))
        .await
        .unwrap();
    assert!(!keys(&q).await.iter().any(|k| k.ends_with("acct:old")));
}

/// Lease of the tests that renew one: renewals every `RENEW_EVERY_MS` keep a margin of over a
/// second to it however slow the machine is.
const LEASE_MS: u64 = 1500;
const RENEW_EVERY_MS: u64 = 300;

/// Reap until the one lease last set (claimed or renewed) at or after `set` has expired: it must
/// not be reaped before a whole lease has passed since then, and must be within seconds after.
async fn reap_one_expired(q: &Queue, set: std::time::Instant) {
    loop {
        let n = q.reap().await.unwrap();
        if n > 0 {
            assert_eq!(n, 1);
            break;
        }
        assert!(
            set.elapsed() < Duration::from_millis(LEASE_MS) + Duration::from_secs(10),
            "the lease was never reaped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Redis's clock and ours may differ by a clock tick
    assert!(
        set.elapsed() + Duration::from_millis(5) >= Duration::from_millis(LEASE_MS),
        "reaped {:?} after the lease was set, before the lease ran out",
        set.elapsed()
    );
}

#[tokio::test]
async fn expired_leases_are_reaped_and_stale_owners_are_ignored() {
    let q = qc("lease", |c| c.lease_ms = LEASE_MS);
    let k = JobKind::Diagnostic;
    let id = q.enqueue(diag().max_attempts(2)).await.unwrap().id;
    let claimed = std::time::Instant::now();
    let first = claim_all(&q, &[k]).await.remove(0);
    // renewing keeps it alive past the lease (renewals 1.2 s inside the lease)
    let mut renewed = claimed;
    while claimed.elapsed() < Duration::from_millis(LEASE_MS + RENEW_EVERY_MS) {
        tokio::time::sleep(Duration::from_millis(RENEW_EVERY_MS)).await;
        renewed = std::time::Instant::now();
        let r = q
            .renew(&[(first.id.clone(), first.token.clone())])
            .await
            .unwrap();
        assert!(r.lost.is_empty() && r.cancelled.is_empty());
        assert_eq!(q.reap().await.unwrap(), 0);
    }
    reap_one_expired(&q, renewed).await;
    let claimed_again = std::time::Instant::now();
    let second = claim_all(&q, &[k]).await.remove(0);
    assert_eq!(second.attempt, 2);
    // the first owner comes back: nothing it says counts any more
    let r = q
        .renew(&[(first.id.clone(), first.token.clone())])
        .await
        .unwrap();
    assert_eq!(r.lost, vec![(id.clone(), first.token.clone())]);
    assert_eq!(
        q.complete(&id, &first.token, k, Outcome::Succeeded(json!(0)))
            .await
            .unwrap(),
        None
    );
    // the second attempt is the last one: its expiry fails the job
    reap_one_expired(&q, claimed_again).await;
    let j = q.get(&id).await.unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    assert!(j.error.unwrap().contains("lease expired"));
    assert_eq!(q.stats().await.unwrap().kinds["diagnostic"].running, 0);
}

#[tokio::test]
async fn max_attempts_backoff_permanent_failure_and_rerun() {
    let q = q("attempts");
    let k = JobKind::Diagnostic;
    // long enough that "not due yet" right after the retry holds on a slow machine
    let delay = Duration::from_millis(1200);
    let id = q.enqueue(diag().max_attempts(3)).await.unwrap().id;
    let mut retried: Option<std::time::Instant> = None;
    for attempt in 1..=3 {
        let mut c = claim_all(&q, &[k]).await;
        while c.is_empty() {
            let t = retried.expect("the first attempt is claimed at once");
            assert!(
                t.elapsed() < delay + Duration::from_secs(10),
                "retry never due"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            c = claim_all(&q, &[k]).await;
        }
        if let Some(t) = retried {
            assert!(
                t.elapsed() + Duration::from_millis(5) >= delay,
                "due before its delay"
            );
        }
        assert_eq!(c.len(), 1, "attempt {attempt}");
        assert_eq!(c[0].attempt, attempt);
        retried = Some(std::time::Instant::now());
        let st = q
            .complete(
                &id,
                &c[0].token,
                k,
                Outcome::Retry {
                    error: format!("fail {attempt}"),
                    delay,
                },
            )
            .await
            .unwrap();
        let want = if attempt < 3 {
            JobStatus::Retrying
        } else {
            JobStatus::Failed
        };
        assert_eq!(st, Some(want));
        if attempt < 3 {
            // not due yet
            assert!(claim_all(&q, &[k]).await.is_empty());
            let j = q.get(&id).await.unwrap();
            assert!(j.run_at.is_some());
        }
    }
    let j = q.get(&id).await.unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.error.as_deref(), Some("fail 3"));
    assert_eq!(q.stats().await.unwrap().pending, 0);
    // re-run it
    q.rerun(&id).await.unwrap();
    let c = claim_all(&q, &[k]).await;
    assert_eq!(c[0].attempt, 1);
    // a permanent failure ends at once
    q.complete(&id, &c[0].token, k, Outcome::Failed("bad input".into()))
        .await
        .unwrap();
    assert_eq!(q.get(&id).await.unwrap().status, JobStatus::Failed);
    let err = q.rerun(&ulid::Ulid::new().to_string()).await.unwrap_err();
    assert!(matches!(err, QueueError::NotFound(_)));
}

#[tokio::test]
async fn rerun_of_a_running_job_is_a_conflict() {
    let q = q("rerun-conflict");
    let id = q.enqueue(diag()).await.unwrap().id;
    claim_all(&q, &[JobKind::Diagnostic]).await;
    assert!(matches!(
        q.rerun(&id).await,
        Err(QueueError::Conflict { .. })
    ));
}

#[tokio::test]
async fn idempotency_key_returns_the_existing_job() {
    let q = q("idem");
    let a = q
        .enqueue(diag().idempotency_key("svc-42:create"))
        .await
        .unwrap();
    let b = q
        .enqueue(diag().idempotency_key("svc-42:create"))
        .await
        .unwrap();
    let c = q
        .enqueue(diag().idempotency_key("svc-42:suspend"))
        .await
        .unwrap();
    assert!(!a.existed);
    assert_eq!(
        b,
        Enqueued {
            id: a.id.clone(),
            existed: true
        }
    );
    assert_ne!(c.id, a.id);
    assert_eq!(q.stats().await.unwrap().pending, 2);
}

#[tokio::test]
async fn cancel_queued_running_finished_and_unknown() {
    let q = q("cancel");
    let k = JobKind::Diagnostic;
    let queued = q.enqueue(diag()).await.unwrap().id;
    assert_eq!(q.cancel(&queued).await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(q.get(&queued).await.unwrap().status, JobStatus::Cancelled);
    let running = q.enqueue(diag()).await.unwrap().id;
    let c = claim_all(&q, &[k]).await.remove(0);
    assert_eq!(q.cancel(&running).await.unwrap(), CancelOutcome::Cancelling);
    let r = q.renew(&[(c.id.clone(), c.token.clone())]).await.unwrap();
    assert_eq!(r.cancelled, vec![(running.clone(), c.token.clone())]);
    // a retry request from a cancelled job ends it as cancelled
    q.complete(
        &running,
        &c.token,
        k,
        Outcome::Retry {
            error: "x".into(),
            delay: Duration::ZERO,
        },
    )
    .await
    .unwrap();
    assert_eq!(q.get(&running).await.unwrap().status, JobStatus::Cancelled);
    assert!(matches!(
        q.cancel(&running).await,
        Err(QueueError::Conflict { .. })
    ));
    assert!(matches!(
        q.cancel("nope").await,
        Err(QueueError::NotFound(_))
    ));
    let ev = q.events_since("0", 100).await.unwrap();
    let completes: Vec<_> = ev.iter().filter(|e| e.kind == "complete").collect();
    assert_eq!(completes.len(), 2);
    assert_eq!(completes[0].data["success"], false);
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_enqueues_nothing() {
    let q = q("badinput").with_available_kinds([JobKind::Diagnostic]);
    let e = q
        .enqueue(NewJob::new(JobKind::Restore, json!({"archive": "/x"})))
        .await
        .unwrap_err();
    assert!(matches!(e, QueueError::KindNotAvailable(JobKind::Restore)));
    assert!(e.to_string().contains("not available in this build"));
    let e = q
        .enqueue(NewJob::new(
            JobKind::Diagnostic,
            json!({"duration_ms": "soon"}),
        ))
        .await
        .unwrap_err();
    assert!(matches!(e, QueueError::InvalidPayload { .. }));
    let e = q.enqueue(diag().max_attempts(0)).await.unwrap_err();
    assert!(matches!(e, QueueError::Invalid(_)));
    // An account is at most 64 characters, counted as characters (the API's schema counts
    // them so), not bytes.
    let e = q.enqueue(diag().account("é".repeat(65))).await.unwrap_err();
    assert!(matches!(e, QueueError::Invalid(_)), "{e}");
    assert!("teleport".parse::<JobKind>().is_err());
    assert_eq!(q.stats().await.unwrap().pending, 0);
    assert!(matches!(
        q.get("missing").await,
        Err(QueueError::NotFound(_))
    ));
    // ... and 64 two-byte characters are fine.
    q.enqueue(diag().account("é".repeat(64))).await.unwrap();
    assert_eq!(q.stats().await.unwrap().pending, 1);
}

#[tokio::test]
async fn progress_writes_keep_the_last_100_log_lines_and_renew_the_lease() {
    let q = qc("logs", |c| c.lease_ms = LEASE_MS);
    let k = JobKind::Diagnostic;
    let id = q.enqueue(diag()).await.unwrap().id;
    let c = claim_all(&q, &[k]).await.remove(0);
    for i in 0..150 {
        let w = progress::ProgressWrite {
            logs: vec![format!("line {i}")],
            ..Default::default()
        };
        let (owned, cancel) = q.write_progress(&id, &c.token, &w).await.unwrap();
        assert!(owned && !cancel);
    }
    let j = q.get(&id).await.unwrap();
    assert_eq!(j.log_tail.len(), 100);
    assert_eq!(j.log_tail[0], "line 50");
    assert_eq!(j.log_tail[99], "line 149");
    // progress writes alone keep the lease alive (well past one lease)
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_millis(LEASE_MS + RENEW_EVERY_MS) {
        tokio::time::sleep(Duration::from_millis(RENEW_EVERY_MS)).await;
        q.write_progress(&id, &c.token, &Default::default())
            .await
            .unwrap();
        assert_eq!(q.reap().await.unwrap(), 0);
    }
    // a stale token is told it lost the job
    let (owned, _) = q
        .write_progress(&id, "someone-else/1", &Default::default())
        .await
        .unwrap();
    assert!(!owned);
}

#[tokio::test]
async fn ten_thousand_finished_jobs_leave_redis_bounded() {
    let q = qc("retention", |c| {
        c.max_pending = 1000;
        c.max_finished = 200;
    });
    let k = JobKind::Diagnostic;
    for _ in 0..10 {
        let batch: Vec<_> = (0..1000).map(|_| diag()).collect();
        q.enqueue_bulk(batch).await.unwrap();
        let claimed = q.claim("w", &[k], 1000).await;
        let mut claimed = claimed.unwrap().jobs;
        while !claimed.is_empty() {
            let mut futs = Vec::new();
            for c in &claimed {
                futs.push(q.complete(&c.id, &c.token, k, Outcome::Succeeded(json!({"ok": true}))));
            }
            for r in futures::future::join_all(futs).await {
                assert_eq!(r.unwrap(), Some(JobStatus::Succeeded));
            }
            claimed = q.claim("w", &[k], 1000).await.unwrap().jobs;
        }
    }
    q.reap().await.unwrap(); // the reaper applies the count cap
    let ks = keys(&q).await;
    // 200 finished jobs (hash; no logs) + fixed keys (pending, finished, events, running, ...)
    assert!(ks.len() <= 200 + 10, "{} keys", ks.len());
    let xlen: u64 = q
        .raw(redis::cmd("XLEN").arg(format!("{}events", q.prefix())))
        .await
        .unwrap();
    assert!(xlen <= 10_000 + 200, "event stream is capped: {xlen}");
    let finished = q
        .list(&ListFilter {
            status: Some(JobStatus::Succeeded),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(finished.len(), 200);
}

#[tokio::test]
async fn finished_jobs_expire_after_the_retention_period() {
    let q = qc("ttl", |c| c.retention_secs = 1);
    let k = JobKind::Diagnostic;
    let id = q.enqueue(diag()).await.unwrap().id;
    let c = claim_all(&q, &[k]).await.remove(0);
    q.complete(&id, &c.token, k, Outcome::Succeeded(json!(1)))
        .await
        .unwrap();
    assert_eq!(q.get(&id).await.unwrap().status, JobStatus::Succeeded);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    q.reap().await.unwrap();
    assert!(matches!(q.get(&id).await, Err(QueueError::NotFound(_))));
    let finished: u64 = q
        .raw(redis::cmd("ZCARD").arg(format!("{}finished", q.prefix())))
        .await
        .unwrap();
    assert_eq!(finished, 0);
}

#[tokio::test]
async fn every_key_shares_one_hash_tag() {
    let q = q("tag");
    let k = JobKind::Diagnostic;
    let id = q
        .enqueue(diag().account("acme").idempotency_key("k1"))
        .await
        .unwrap()
        .id;
    q.enqueue(diag().account("acme")).await.unwrap();
    q.pause().await.unwrap();
    q.resume().await.unwrap();
    q.set_limit(k, 3).await.unwrap();
    let c = claim_all(&q, &[k]).await.remove(0);
    let w = progress::ProgressWrite {
        logs: vec!["hi".into()],
        ..Default::default()
    };
    q.write_progress(&id, &c.token, &w).await.unwrap();
    q.complete(
        &id,
        &c.token,
        k,
        Outcome::Retry {
            error: "e".into(),
            delay: Duration::from_secs(9),
        },
    )
    .await
    .unwrap();
    let name = &q.config().name;
    let all: Vec<String> = q
        .raw(redis::cmd("KEYS").arg(format!("*{name}*")))
        .await
        .unwrap();
    assert!(all.len() >= 8, "{all:?}");
    let tag = format!("{{{name}}}");
    for key in &all {
        assert!(key.starts_with(&format!("np:{tag}:")), "{key}");
        // the hash tag is the first {...} in the key, so it decides the slot
        assert_eq!(key.find('{'), Some(3));
    }
}

#[tokio::test]
async fn pause_stops_claiming_until_resume() {
    let q = q("pause");
    q.enqueue(diag()).await.unwrap();
    q.pause().await.unwrap();
    let b = q.claim("w", &[JobKind::Diagnostic], 10).await.unwrap();
    assert!(b.paused && b.jobs.is_empty());
    assert!(q.stats().await.unwrap().paused);
    q.resume().await.unwrap();
    assert_eq!(claim_all(&q, &[JobKind::Diagnostic]).await.len(), 1);
}

#[tokio::test]
async fn events_carry_seq_and_replay_from_it() {
    let q = q("events");
    let id = q.enqueue(diag()).await.unwrap().id;
    let c = claim_all(&q, &[JobKind::Diagnostic]).await.remove(0);
    q.complete(
        &id,
        &c.token,
        JobKind::Diagnostic,
        Outcome::Succeeded(json!({"n": 1})),
    )
    .await
    .unwrap();
    let all = q.events_since("0", 100).await.unwrap();
    let types: Vec<_> = all.iter().map(|e| e.kind.as_str()).collect();
    // queued, then complete: the claim publishes no `running` (see the next test).
    assert_eq!(types, vec!["status", "complete"]);
    assert!(all.iter().all(|e| e.job_id == id));
    assert_eq!(all[1].data["summary"]["n"], 1);
    let after = q.events_since(&all[0].seq, 100).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].seq, all[1].seq);
}

/// The `running` event comes from the attempt's progress flusher: once the attempt has run
/// `ANNOUNCE_AFTER` with nothing to report, or with its first report; never from an attempt
/// that ended sooner without reporting.
#[tokio::test]
async fn running_is_announced_by_attempts_that_last_or_report() {
    use tokio_util::sync::CancellationToken;
    let q = q("announce");
    let k = JobKind::Diagnostic;
    let running = |q: Queue, id: String| async move {
        q.events_since("0", 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.job_id == id && e.kind == "status" && e.data["status"] == "running")
            .map(|e| e.data["attempt"].as_u64())
            .collect::<Vec<_>>()
    };
    let flusher = |c: &Claimed| {
        Flusher::new(
            q.clone(),
            c.id.clone(),
            c.token.clone(),
            k,
            c.attempt,
            CancellationToken::new(),
        )
    };

    // Silent and over at once: nothing written, so no `running`.
    let quick = q.enqueue(diag()).await.unwrap().id;
    let c = claim_all(&q, &[k]).await.remove(0);
    let (_, f) = flusher(&c);
    let stop = CancellationToken::new();
    stop.cancel();
    f.run(stop).await;
    assert!(running(q.clone(), quick).await.is_empty());

    // Silent but still running after ANNOUNCE_AFTER: announced, with its attempt number.
    let slow = q.enqueue(diag()).await.unwrap().id;
    let c = claim_all(&q, &[k]).await.remove(0);
    let (_p, f) = flusher(&c);
    let stop = CancellationToken::new();
    let t = std::time::Instant::now();
    let task = tokio::spawn(f.run(stop.clone()));
    let mut seen = Vec::new();
    while seen.is_empty() && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = running(q.clone(), slow.clone()).await;
    }
    assert_eq!(seen, vec![Some(1)]);
    assert!(
        t.elapsed() >= progress::ANNOUNCE_AFTER,
        "not before ANNOUNCE_AFTER"
    );
    stop.cancel();
    task.await.unwrap();
    assert_eq!(running(q.clone(), slow).await.len(), 1, "announced once");

    // Reports at once: announced with that first write, before its stage event.
    let busy = q.enqueue(diag()).await.unwrap().id;
    let c = claim_all(&q, &[k]).await.remove(0);
    let (p, f) = flusher(&c);
    p.report("working", 0, 10);
    let stop = CancellationToken::new();
    stop.cancel();
    f.run(stop).await;
    let types: Vec<_> = q
        .events_since("0", 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.job_id == busy)
        .map(|e| format!("{}:{}", e.kind, e.data["status"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(types, vec!["status:queued", "status:running", "stage:"]);
}

#[tokio::test]
async fn event_reader_blocks_until_events_arrive_and_misses_nothing() {
    let q = q("reader");
    q.enqueue(diag()).await.unwrap(); // before the reader: not seen with "$"
    let mut r = EventReader::new(&q, "$");
    let t = std::time::Instant::now();
    assert!(r
        .next_batch(Duration::from_millis(200), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(t.elapsed() >= Duration::from_millis(150), "it blocked");
    let id = q
        .enqueue(diag().account("acme").reseller("r1"))
        .await
        .unwrap()
        .id;
    let q2 = q.clone();
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        q2.cancel(&id).await.unwrap();
    });
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(r.next_batch(Duration::from_secs(2), 10).await.unwrap());
    }
    later.await.unwrap();
    assert_eq!(got[0].kind, "status");
    assert_eq!(got[0].account.as_deref(), Some("acme"));
    assert_eq!(got[0].reseller.as_deref(), Some("r1"));
    assert_eq!(got[1].kind, "complete");
    assert_eq!(r.last_seq(), got[1].seq);
}

#[tokio::test]
async fn complete_many_records_each_outcome_and_flags_stale_ones() {
    let q = q("many");
    let k = JobKind::Diagnostic;
    for _ in 0..4 {
        q.enqueue(diag().max_attempts(1)).await.unwrap();
    }
    let c = claim_all(&q, &[k]).await;
    let item = |j: &Claimed, token: &str, outcome: Outcome| Completion {
        id: j.id.clone(),
        token: token.to_string(),
        kind: k,
        outcome,
    };
    let res = q
        .complete_many(&[
            item(&c[0], &c[0].token, Outcome::Succeeded(json!({"a": 1}))),
            item(&c[1], "someone-else/1", Outcome::Succeeded(json!(null))),
            item(
                &c[2],
                &c[2].token,
                Outcome::Retry {
                    error: "last attempt".into(),
                    delay: Duration::ZERO,
                },
            ),
            item(&c[3], &c[3].token, Outcome::Requeue),
        ])
        .await
        .unwrap();
    assert_eq!(
        res,
        vec![
            Some(JobStatus::Succeeded),
            None,
            Some(JobStatus::Failed),
            Some(JobStatus::Queued)
        ]
    );
    assert_eq!(q.get(&c[0].id).await.unwrap().result.unwrap()["a"], 1);
    assert_eq!(q.get(&c[1].id).await.unwrap().status, JobStatus::Running);
    let st = q.stats().await.unwrap();
    assert_eq!(
        st.kinds["diagnostic"].running, 1,
        "only the stale one still counts"
    );
    assert_eq!(st.pending, 1);
}

#[tokio::test]
async fn complete_and_claim_fills_the_freed_slot_in_one_call() {
    let q = q("complete-claim");
    let k = JobKind::Diagnostic;
    q.set_limit(k, 1).await.unwrap();
    let a1 = q.enqueue(diag().account("acme")).await.unwrap().id;
    let a2 = q.enqueue(diag().account("acme")).await.unwrap().id;
    let b1 = q.enqueue(diag().account("beta")).await.unwrap().id;
    let c = claim_all(&q, &[k]).await;
    assert_eq!(c.len(), 1, "limit 1");
    assert_eq!(c[0].id, a1);
    let done = |j: &Claimed, token: &str| Completion {
        id: j.id.clone(),
        token: token.to_string(),
        kind: k,
        outcome: Outcome::Succeeded(json!({"n": 1})),
    };
    // The completion frees the kind's one slot and advances acme's line; the claim in the
    // same call sees both: a2 (acme's new head, ready behind b1) or b1, never more than one.
    let (st, b) = q
        .complete_and_claim(&[done(&c[0], &c[0].token)], "w1", &[k], 5)
        .await
        .unwrap();
    assert_eq!(st, vec![Some(JobStatus::Succeeded)]);
    assert_eq!(b.jobs.len(), 1, "{:?}", b.jobs);
    assert_eq!(b.jobs[0].id, b1, "ready order: b1 was ready before a2");
    let b1_token = b.jobs[0].token.clone();
    assert_eq!(q.get(&a1).await.unwrap().status, JobStatus::Succeeded);
    assert_eq!(q.get(&b1).await.unwrap().status, JobStatus::Running);
    assert_eq!(q.stats().await.unwrap().kinds["diagnostic"].running, 1);
    // A stale completion changes nothing, and the claim respects the limit b1 still holds.
    let (st, b) = q
        .complete_and_claim(&[done(&c[0], "someone-else/1")], "w1", &[k], 5)
        .await
        .unwrap();
    assert_eq!(st, vec![None]);
    assert!(b.jobs.is_empty(), "limit still held by b1");
    // b1 done, a2 claimed; then a2 done and nothing left.
    let item = Completion {
        id: b1.clone(),
        ..done(&c[0], &b1_token)
    };
    let (st, b) = q.complete_and_claim(&[item], "w1", &[k], 5).await.unwrap();
    assert_eq!(st, vec![Some(JobStatus::Succeeded)]);
    assert_eq!(b.jobs.len(), 1);
    assert_eq!(b.jobs[0].id, a2);
    let item = Completion {
        id: a2.clone(),
        ..done(&c[0], &b.jobs[0].token)
    };
    let (st, b) = q.complete_and_claim(&[item], "w1", &[k], 5).await.unwrap();
    assert_eq!(st, vec![Some(JobStatus::Succeeded)]);
    assert!(b.jobs.is_empty());
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.pending, stats.kinds["diagnostic"].running), (0, 0));
}

#[tokio::test]
async fn a_cancel_wins_over_a_shutdown_requeue() {
    let q = q("cancel-requeue");
    let id = q.enqueue(diag()).await.unwrap().id;
    let c = claim_all(&q, &[JobKind::Diagnostic]).await.remove(0);
    assert_eq!(q.cancel(&id).await.unwrap(), CancelOutcome::Cancelling);
    let st = q
        .complete(&c.id, &c.token, c.kind, Outcome::Requeue)
        .await
        .unwrap();
    assert_eq!(st, Some(JobStatus::Cancelled));
    assert!(claim_all(&q, &[JobKind::Diagnostic]).await.is_empty());
}

#[tokio::test]
async fn one_idempotency_key_twice_in_a_batch_is_one_job() {
    let q = q("idem-batch");
    let v = q
        .enqueue_bulk(vec![
            diag().idempotency_key("k"),
            diag().idempotency_key("k"),
            diag(),
        ])
        .await
        .unwrap();
    assert_eq!(v[0].id, v[1].id);
    assert!(!v[0].existed && v[1].existed && !v[2].existed);
    assert_eq!(q.stats().await.unwrap().pending, 2);
}

#[tokio::test]
async fn retries_that_fall_due_together_keep_their_order() {
    let q = q("due-order");
    let k = JobKind::Diagnostic;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(q.enqueue(diag()).await.unwrap().id);
    }
    let c = claim_all(&q, &[k]).await;
    for (i, j) in c.iter().enumerate() {
        let delay = Duration::from_millis(10 + 10 * i as u64);
        q.complete(
            &j.id,
            &j.token,
            k,
            Outcome::Retry {
                error: "x".into(),
                delay,
            },
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again: Vec<String> = q
        .claim("w", &[k], 1)
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(again, vec![ids[0].clone()], "the earliest due runs first");
}

#[tokio::test]
async fn renew_answers_per_attempt_even_for_jobs_claimed_together() {
    let q = q("renew-pairs");
    let a = q.enqueue(diag()).await.unwrap().id;
    let b = q.enqueue(diag()).await.unwrap().id;
    let c = claim_all(&q, &[JobKind::Diagnostic]).await;
    assert_eq!(c.len(), 2);
    q.cancel(&b).await.unwrap();
    let pairs: Vec<_> = c.iter().map(|j| (j.id.clone(), j.token.clone())).collect();
    let r = q.renew(&pairs).await.unwrap();
    let tb = c.iter().find(|j| j.id == b).unwrap().token.clone();
    assert_eq!(r.cancelled, vec![(b.clone(), tb)]);
    assert!(r.lost.is_empty());
    let ta = c.iter().find(|j| j.id == a).unwrap().token.clone();
    q.complete(&a, &ta, JobKind::Diagnostic, Outcome::Succeeded(json!(1)))
        .await
        .unwrap();
    let r = q.renew(&pairs).await.unwrap();
    assert_eq!(r.lost, vec![(a, ta)]);
}

#[tokio::test]
async fn get_at_reads_state_and_stream_position_together() {
    let q = q("get-at");
    let id = q.enqueue(diag()).await.unwrap().id;
    let (job, seq) = q.get_at(&id).await.unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    let ev = q.events_since("0", 10).await.unwrap();
    assert_eq!(
        seq,
        ev.last().unwrap().seq,
        "the newest event is the enqueue's"
    );
    assert!(q.events_since(&seq, 10).await.unwrap().is_empty());
    assert!(matches!(
        q.get_at("nope").await,
        Err(QueueError::NotFound(_))
    ));
}

#[tokio::test]
async fn stream_ends_name_the_oldest_and_newest_events() {
    let q = q("stream-ends");
    assert_eq!(q.latest_seq().await.unwrap(), "0-0");
    assert_eq!(q.oldest_seq().await.unwrap(), None);
    q.enqueue(diag()).await.unwrap();
    q.enqueue(diag()).await.unwrap();
    let ev = q.events_since("0", 10).await.unwrap();
    assert_eq!(
        q.oldest_seq().await.unwrap().as_deref(),
        Some(ev[0].seq.as_str())
    );
    assert_eq!(q.latest_seq().await.unwrap(), ev[1].seq);
}

/// A slot freed and refilled in the same claim-on-complete call wakes nobody when no one else
/// could take anything (the kind is at its limit); it does wake idle workers when work is left
/// that the kind's limit still allows someone else to take.
///
/// Every wake here is published by a script on the queue's one node (on a cluster, the slot's
/// master), so the barrier's wake arrives after all that came before it; `set_limit`'s own
/// PUBLISH may leave from another cluster node, so the test keeps the kind's default limit.
#[tokio::test]
async fn a_refilled_slot_wakes_only_when_others_could_claim() {
    use futures::StreamExt;
    let q = q("refill-wake");
    let k = JobKind::Diagnostic;
    let limit = k.default_limit() as usize;
    let mut ps = q.subscribe_wake_and_cancel().await.unwrap();
    let mut msgs = Box::pin(ps.on_message());
    // A job of another kind made ready; returns the wakes that came before its own.
    async fn barrier(
        q: &Queue,
        msgs: &mut (impl futures::Stream<Item = redis::Msg> + Unpin),
    ) -> Vec<String> {
        q.enqueue(NewJob::new(JobKind::Backup, json!({"account": "x"})))
            .await
            .unwrap();
        let mut before = Vec::new();
        loop {
            let m: String = msgs.next().await.unwrap().get_payload().unwrap();
            if m == "backup" {
                return before;
            }
            before.push(m);
        }
    }
    for _ in 0..limit + 3 {
        q.enqueue(diag()).await.unwrap();
    }
    barrier(&q, &mut msgs).await;
    let done = |c: &Claimed| Completion {
        id: c.id.clone(),
        token: c.token.clone(),
        kind: k,
        outcome: Outcome::Succeeded(json!(null)),
    };

    // w1 holds every slot of the kind; refilling one leaves it at its limit → no wake.
    let held = q.claim("w1", &[k], limit).await.unwrap().jobs;
    assert_eq!(held.len(), limit);
    let (_, b) = q
        .complete_and_claim(&[done(&held[0])], "w1", &[k], 1)
        .await
        .unwrap();
    assert_eq!(b.jobs.len(), 1);
    assert_eq!(
        barrier(&q, &mut msgs).await,
        Vec::<String>::new(),
        "no wake at the limit"
    );

    // Two slots freed, one refilled: one job is left that someone else may take → a wake.
    let (_, b) = q
        .complete_and_claim(&[done(&held[1]), done(&held[2])], "w1", &[k], 1)
        .await
        .unwrap();
    assert_eq!(b.jobs.len(), 1);
    assert_eq!(barrier(&q, &mut msgs).await, vec!["diagnostic".to_string()]);
}
