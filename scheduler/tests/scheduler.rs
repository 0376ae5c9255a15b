//! Schedules against a real Redis: exactly once across instances, missed ticks, disabled ones.

use chrono::{Duration as Cd, Utc};
use queue::{testing, JobKind, JobStatus, ListFilter, Queue};
use scheduler::{builtin, ScheduleSpec, Scheduler};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn every_second() -> ScheduleSpec {
    ScheduleSpec {
        name: "tick".into(),
        cron: "* * * * * *".into(),
        kind: JobKind::Diagnostic,
        payload: serde_json::json!({}),
        enabled: true,
        note: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_fire_each_tick_exactly_once() {
    let mut cfg = testing::config("sched3");
    cfg.max_pending = 1000;
    let q = Queue::new(cfg.clone()).unwrap();
    let stop = CancellationToken::new();
    let started = Utc::now();
    let t0 = std::time::Instant::now();
    let mut handles = Vec::new();
    for _ in 0..3 {
        // separate handles, as separate processes would have; a short lock so leaders can change
        let s = Scheduler::new(Queue::new(cfg.clone()).unwrap(), vec![every_second()])
            .unwrap()
            .with_lock_ttl(Duration::from_millis(600));
        handles.push(tokio::spawn(s.run(stop.clone())));
    }
    let list = || async {
        q.list(&ListFilter {
            kind: Some(JobKind::Diagnostic),
            ..Default::default()
        })
        .await
        .unwrap()
    };
    // Run for 4.5 s at least, and on until 3 ticks have fired (a slow machine may collapse
    // some ticks into one run).
    tokio::time::sleep(Duration::from_millis(4500)).await;
    while list().await.len() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "ticks fired: {}",
            list().await.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    for h in handles {
        h.await.unwrap();
    }
    let ended = Utc::now();
    let jobs = list().await;
    // One job per tick: the tick is in the idempotency key. Every job is the one of a tick
    // (whole seconds) within the run, and no two jobs share one.
    let mut per_tick: HashMap<String, i64> = HashMap::new();
    for tick in started.timestamp() - 1..=ended.timestamp() + 1 {
        if let Some(id) = q.job_for_key(&format!("sched:tick:{tick}")).await.unwrap() {
            assert!(
                per_tick.insert(id.clone(), tick).is_none(),
                "job {id} is the one of two ticks"
            );
        }
    }
    for j in &jobs {
        assert_eq!(j.status, JobStatus::Queued);
        assert!(
            per_tick.contains_key(&j.id),
            "job {} is no tick's: {per_tick:?}",
            j.id
        );
    }
    assert!(jobs.len() >= 3, "ticks fired: {}", jobs.len());
    // ticks are whole seconds in (first sight, end]: at most one per second of the run
    let run = ended - started;
    assert!(
        jobs.len() as i64 <= run.num_seconds() + 1,
        "at most one per second over {run}: {}",
        jobs.len()
    );
}

#[tokio::test]
async fn a_tick_missed_while_down_fires_once_on_start() {
    let q = Queue::new(testing::config("missed")).unwrap();
    let hourly = ScheduleSpec {
        name: "hourly".into(),
        cron: "0 0 * * * *".into(),
        ..every_second()
    };
    // The scheduler's clock is frozen at `now`: no hour may turn between its reads and ours.
    let now = Utc::now();
    // Last ran 5 hours ago: 4-5 ticks were missed while "everything was down".
    let last = (now - Cd::hours(5)).timestamp();
    q.set_schedule_last("hourly", last, false).await.unwrap();
    let s = Scheduler::new(q.clone(), vec![hourly.clone()])
        .unwrap()
        .with_clock(move || now);
    let fired = s.tick().await.unwrap();
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(fired[0].tick <= now && now - fired[0].tick < Cd::hours(1));
    assert!(
        s.tick().await.unwrap().is_empty(),
        "nothing more until the next hour"
    );
    let st = s.status().await.unwrap();
    assert_eq!(st[0].last_run.unwrap(), fired[0].tick);
    assert!(st[0].next_run.unwrap() > now);
    // A brand-new schedule does not fire for the past (another instance takes over the lead).
    s.release().await.unwrap();
    let fresh = ScheduleSpec {
        name: "fresh".into(),
        ..hourly
    };
    let s2 = Scheduler::new(q.clone(), vec![fresh])
        .unwrap()
        .with_clock(move || now);
    assert!(s2.tick().await.unwrap().is_empty());
    assert!(s2.status().await.unwrap()[0].last_run.is_some());
}

#[tokio::test]
async fn injected_clock_fires_the_next_tick_once() {
    let q = Queue::new(testing::config("clock")).unwrap();
    let base = Utc::now();
    let t = std::sync::Arc::new(std::sync::Mutex::new(base));
    let tc = t.clone();
    let s = Scheduler::new(
        q.clone(),
        vec![ScheduleSpec {
            name: "m".into(),
            cron: "0 * * * * *".into(),
            ..every_second()
        }],
    )
    .unwrap()
    .with_clock(move || *tc.lock().unwrap());
    assert!(s.tick().await.unwrap().is_empty()); // first sight
    *t.lock().unwrap() = base + Cd::seconds(61);
    assert_eq!(s.tick().await.unwrap().len(), 1);
    assert!(s.tick().await.unwrap().is_empty());
    *t.lock().unwrap() = base + Cd::seconds(121);
    assert_eq!(s.tick().await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_quota_sweep_runs_hourly_and_bad_cron_is_refused() {
    let q = Queue::new(testing::config("builtin")).unwrap();
    let s = Scheduler::new(q.clone(), builtin()).unwrap();
    assert!(s.tick().await.unwrap().is_empty());
    let st = s.status().await.unwrap();
    let sweep = st.iter().find(|x| x.name == "quota_sweep").unwrap();
    assert!(sweep.enabled);
    assert!(sweep.note.as_deref().unwrap().contains("hourly"));
    let next = sweep.next_run.expect("the sweep is scheduled");
    assert_eq!(next.timestamp() % 3600, 0, "on the hour: {next}");
    // The store's daily retention is on.
    let retention = st.iter().find(|x| x.name == "retention").unwrap();
    assert!(retention.enabled);
    assert!(retention.next_run.is_some());
    let bad = ScheduleSpec {
        cron: "every hour".into(),
        ..every_second()
    };
    let e = Scheduler::new(q, vec![bad]).err().unwrap();
    assert!(e.to_string().contains("invalid cron expression"));
}

/// Only the leader evaluates: an instance that does not hold the lock fires nothing, even a
/// tick nobody has fired yet (so this fails if the lock were gone and only the per-tick dedup
/// remained), and it takes over once the leader lets go.
#[tokio::test]
async fn only_the_lock_holder_fires() {
    let q = Queue::new(testing::config("leader")).unwrap();
    let base = Utc::now();
    let t = std::sync::Arc::new(std::sync::Mutex::new(base));
    let spec = ScheduleSpec {
        name: "m".into(),
        cron: "0 * * * * *".into(),
        ..every_second()
    };
    let make = |clock: std::sync::Arc<std::sync::Mutex<chrono::DateTime<Utc>>>| {
        Scheduler::new(q.clone(), vec![spec.clone()])
            .unwrap()
            .with_lock_ttl(Duration::from_secs(60))
            .with_clock(move || *clock.lock().unwrap())
    };
    let a = make(t.clone());
    let b = make(t.clone());
    assert!(a.lead().await.unwrap(), "a takes the lock");
    assert!(!b.lead().await.unwrap(), "b does not");
    // First sight of the schedule, by the leader.
    assert!(a.tick().await.unwrap().is_empty());
    *t.lock().unwrap() = base + Cd::seconds(61);
    // A tick is due and nobody fired it: b still fires nothing.
    assert!(b.tick().await.unwrap().is_empty(), "a non-leader fired");
    a.release().await.unwrap();
    let fired = b.tick().await.unwrap();
    assert_eq!(fired.len(), 1, "b leads once a let go: {fired:?}");
}
