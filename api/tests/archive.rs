//! Archiving finished jobs from Redis into the store, with a crash between every two steps:
//! nothing lost, nothing doubled, and Redis's count cap never drops an unarchived job.

use api::history::{archive_once, MARK};
use queue::{testing, Queue};
use serde_json::json;
use std::time::Duration;
use store::{HistoryFilter, Store};
use tokio_util::sync::CancellationToken;
use workers::{Pool, PoolConfig, Registry};

async fn finished_in_redis(q: &Queue) -> i64 {
    q.raw(redis::cmd("ZCARD").arg(format!("{}finished", q.prefix())))
        .await
        .unwrap()
}

/// Finished jobs Redis holds that finished before `ms`.
async fn finished_before(q: &Queue, ms: i64) -> i64 {
    q.raw(
        redis::cmd("ZCOUNT")
            .arg(format!("{}finished", q.prefix()))
            .arg("-inf")
            .arg(format!("({ms}")),
    )
    .await
    .unwrap()
}

async fn history_len(s: &Store) -> usize {
    s.list_history(&HistoryFilter {
        limit: 1000,
        ..HistoryFilter::default()
    })
    .await
    .unwrap()
    .len()
}

async fn run_jobs(q: &Queue, n: usize) {
    let mut ids = Vec::new();
    for _ in 0..n {
        let e = q
            .enqueue(queue::NewJob::new(queue::JobKind::Diagnostic, json!({})))
            .await
            .unwrap();
        ids.push(e.id);
    }
    for id in ids {
        testing::wait_for_status(q, &id, queue::JobStatus::Succeeded, Duration::from_secs(10))
            .await;
    }
}

/// One pass of the reaper, which applies the count cap: what the pool's reaper runs every
/// `reap_interval`, here done when this returns (not hoped to have come round within a sleep).
async fn let_reaper_run(q: &Queue) {
    q.reap().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_steps_loses_and_doubles_nothing() {
    let mut cfg = testing::config("archive");
    cfg.max_finished = 3;
    let q = Queue::new(cfg).unwrap();
    let stop = CancellationToken::new();
    let pool = Pool::new(
        q.clone(),
        Registry::builtin(),
        PoolConfig {
            reap_interval: Duration::from_millis(50),
            ..PoolConfig::default()
        },
    );
    tokio::spawn(pool.run(stop.clone()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("npanel.db");
    let store_a = Store::open_sqlite(&path).await.unwrap();
    // What `npanel serve` does first: tell Redis nothing is archived yet.
    q.mark_archived(store_a.archive_mark(MARK).await.unwrap().0)
        .await
        .unwrap();

    run_jobs(&q, 5).await;
    let_reaper_run(&q).await;
    assert_eq!(
        finished_in_redis(&q).await,
        5,
        "the cap dropped unarchived jobs"
    );

    // Step 1 commits to the store; the "crash" comes before Redis hears of it.
    let (n, (mark, _)) = archive_once(&q, &store_a).await.unwrap();
    assert_eq!(n, 5);
    let_reaper_run(&q).await;
    assert_eq!(
        finished_in_redis(&q).await,
        5,
        "Redis must not trim before it is told"
    );
    // The next pass (after a restart) finds nothing new: nothing doubled.
    let (n, again) = archive_once(&q, &store_a).await.unwrap();
    assert_eq!((n, again.0), (0, mark));
    assert_eq!(history_len(&store_a).await, 5);
    // Redis told: the cap (3) applies to archived jobs only, i.e. those finished before the
    // watermark's own millisecond (completions are batched, so several may share it).
    let before_mark = finished_before(&q, mark).await;
    q.mark_archived(mark).await.unwrap();
    let_reaper_run(&q).await;
    let dropped = before_mark.min(2);
    assert_eq!(finished_before(&q, mark).await, before_mark - dropped);
    assert_eq!(finished_in_redis(&q).await, 5 - dropped);

    // A crash before the commit: the store is gone mid-pass. Nothing moves.
    store_a.close().await;
    run_jobs(&q, 2).await;
    assert!(archive_once(&q, &store_a).await.is_err());
    let_reaper_run(&q).await;
    assert!(finished_in_redis(&q).await >= 2);
    // Restarted on the same file: the two are archived exactly once.
    let store_b = Store::open_sqlite(&path).await.unwrap();
    let (n, _) = archive_once(&q, &store_b).await.unwrap();
    assert_eq!(n, 2);
    assert_eq!(history_len(&store_b).await, 7);
    assert_eq!(archive_once(&q, &store_b).await.unwrap().0, 0);
    // Each archived job is whole: status, times, result.
    let rows = store_b
        .list_history(&HistoryFilter {
            limit: 10,
            ..HistoryFilter::default()
        })
        .await
        .unwrap();
    assert!(rows
        .iter()
        .all(|r| r.status == "succeeded" && r.finished_at > 0 && r.doc["result"]["attempt"] == 1));
    stop.cancel();
}

/// The daily `retention` job forgets history and audit records past their days, and the audit
/// chain still verifies afterwards (it starts at the oldest record kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_job_forgets_what_is_old() {
    use store::{Actor, HistoryRow, NewAudit};
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_sqlite(&dir.path().join("npanel.db"))
        .await
        .unwrap();
    let day = 86_400_000i64;
    let now = store::now_ms();
    let row = |id: &str, at: i64| HistoryRow {
        id: id.into(),
        kind: "diagnostic".into(),
        status: "succeeded".into(),
        account: None,
        reseller: None,
        finished_at: at,
        doc: json!({"id": id}),
    };
    s.archive_jobs(
        MARK,
        &[row("01OLD", now - 10 * day), row("01NEW", now)],
        (now, "01NEW"),
    )
    .await
    .unwrap();
    let rec = |age_days: i64| {
        let mut r = NewAudit::new("account_created", Actor::default(), "success");
        r.timestamp = store::ms_time(now - age_days * day);
        r
    };
    s.append_audit(&[rec(40), rec(35), rec(1), rec(0)])
        .await
        .unwrap();

    let q = Queue::new(testing::config("retention")).unwrap();
    let stop = CancellationToken::new();
    let days = workers::retention::RetentionDays {
        history: 5,
        audit: 30,
    };
    let registry = Registry::builtin().with_store(s.clone(), days);
    let q = q.with_available_kinds(registry.kinds());
    tokio::spawn(Pool::new(q.clone(), registry, PoolConfig::default()).run(stop.clone()));
    let e = q
        .enqueue(queue::NewJob::new(queue::JobKind::Retention, json!({})))
        .await
        .unwrap();
    let job = testing::wait_for_status(
        &q,
        &e.id,
        queue::JobStatus::Succeeded,
        Duration::from_secs(10),
    )
    .await;
    let result = job.result.unwrap();
    assert_eq!(result["jobs_removed"], 1);
    assert_eq!(result["audit_records_removed"], 2);
    assert_eq!(history_len(&s).await, 1);
    let v = s.verify_audit().await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!((v.checked, v.first_seq), (2, Some(3)));
    // A payload overrides the configured days; unknown fields are refused at enqueue.
    assert!(q
        .enqueue(queue::NewJob::new(
            queue::JobKind::Retention,
            json!({"forever": true})
        ))
        .await
        .is_err());
    stop.cancel();
}
