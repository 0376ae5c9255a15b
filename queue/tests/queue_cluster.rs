//! The queue on a Redis Cluster (issue 12): the shared suite (`suite/`) on a private
//! three-master cluster (`testing::PrivateCluster`, or `REDIS_CLUSTER_URL`), plus what only a
//! cluster shows: every key of a queue on one node and in one slot, pub/sub heard through any
//! node, blocking waits on their own connections, and a cluster that is down.

use futures::StreamExt;
use queue::testing;
use queue::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

mod suite;

/// The suite's queues: on this binary's private Redis Cluster.
fn config(hint: &str) -> QueueConfig {
    testing::cluster_config(hint)
}

fn q(hint: &str) -> Queue {
    Queue::new(config(hint)).unwrap()
}

fn diag() -> NewJob {
    NewJob::typed(&Diagnostic::default())
}

/// The masters of the cluster `q` is on, as `host:port`, from `CLUSTER NODES`.
async fn masters(q: &Queue) -> Vec<String> {
    let nodes: String = q.raw(redis::cmd("CLUSTER").arg("NODES")).await.unwrap();
    let mut out: Vec<String> = nodes
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = f.get(2)?;
            (flags.split(',').any(|x| x == "master") && !flags.contains("fail")).then(|| {
                f[1].split(['@', ','])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
        })
        .collect();
    out.sort();
    out
}

async fn node(addr: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every key on the node at `addr` that contains `needle`, by `SCAN` (all of them, cursor to 0).
async fn scan(addr: &str, needle: &str) -> Vec<String> {
    let mut c = node(addr).await;
    let mut cursor = 0u64;
    let mut out = Vec::new();
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("*{needle}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .unwrap();
        out.extend(page);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

#[tokio::test]
async fn the_private_cluster_has_three_masters_sharing_every_slot() {
    let q = q("shape");
    let info: String = q.raw(redis::cmd("CLUSTER").arg("INFO")).await.unwrap();
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    assert!(q.is_cluster());
    if std::env::var("REDIS_CLUSTER_URL").is_err() {
        assert_eq!(masters(&q).await.len(), 3);
    }
}

/// The proof: exercise every part of the queue that writes a key (jobs, logs, the
/// bound, per-account order, limits, pause, leases, events, idempotency, cancel, the reaper,
/// rerun, the archiver's watermark, the outbox, one-time tokens, stashes, the scheduler's
/// lock, ticks and last runs, blocking waits), then SCAN every master: all the queue's keys
/// are on one of them, all in the slot of its hash tag.
#[tokio::test]
async fn every_key_of_a_queue_is_on_one_node_and_in_one_slot() {
    let q = Queue::new(QueueConfig {
        max_pending: 50,
        ..config("slot")
    })
    .unwrap();
    let name = q.config().name.clone();
    let k = JobKind::Diagnostic;
    let mut reader = EventReader::new(&q, "0");
    let waiter = Waiter::new(&q).unwrap();

    let a = q
        .enqueue(diag().account("acme").reseller("r1").idempotency_key("k1"))
        .await
        .unwrap()
        .id;
    let b = q.enqueue(diag().account("acme")).await.unwrap().id;
    let c = q.enqueue(diag().max_attempts(1)).await.unwrap().id;
    let d = q.enqueue(diag()).await.unwrap().id;
    q.set_limit(k, 5).await.unwrap();
    q.pause().await.unwrap();
    assert!(q.claim("w", &[k], 10).await.unwrap().paused);
    q.resume().await.unwrap();
    let claimed = q.claim("w", &[k], 10).await.unwrap().jobs;
    assert_eq!(claimed.len(), 3, "b waits behind a (same account)");
    let tok = |id: &str| claimed.iter().find(|x| x.id == id).unwrap().token.clone();
    let w = progress::ProgressWrite {
        logs: vec!["hello".into()],
        ..Default::default()
    };
    assert_eq!(
        q.write_progress(&a, &tok(&a), &w).await.unwrap(),
        (true, false)
    );
    q.renew(&[(a.clone(), tok(&a))]).await.unwrap();
    q.complete(&a, &tok(&a), k, Outcome::Succeeded(json!({"ok": 1})))
        .await
        .unwrap();
    q.complete(&c, &tok(&c), k, Outcome::Failed("no".into()))
        .await
        .unwrap();
    assert_eq!(q.cancel(&d).await.unwrap(), CancelOutcome::Cancelling);
    q.complete(&d, &tok(&d), k, Outcome::Cancelled("asked".into()))
        .await
        .unwrap();
    q.rerun(&c).await.unwrap();
    q.cancel(&c).await.unwrap();
    q.cancel(&b).await.unwrap();
    q.reap().await.unwrap();
    match waiter.wait(&a, Duration::from_secs(5)).await.unwrap() {
        WaitOutcome::Finished(j) => assert_eq!(j.status, JobStatus::Succeeded),
        o => panic!("{o:?}"),
    }
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !events
        .iter()
        .any(|e: &Event| e.job_id == b && e.kind == "complete")
    {
        assert!(
            Instant::now() < deadline,
            "events never arrived: {events:?}"
        );
        events.extend(
            reader
                .next_batch(Duration::from_secs(1), 100)
                .await
                .unwrap(),
        );
    }
    assert!(q.events_since("0", 100).await.unwrap().len() >= events.len());
    q.stats().await.unwrap();
    q.list(&ListFilter::default()).await.unwrap();
    q.get_at(&a).await.unwrap();
    q.mark_archived(now_ms()).await.unwrap();
    let e = q.outbox_push("mail", "{}").await.unwrap();
    q.outbox_push("mail", "{}").await.unwrap();
    q.outbox_ack("mail", &[e]).await.unwrap();
    assert!(q
        .remember_once("sig", "abc", Duration::from_secs(60))
        .await
        .unwrap());
    assert!(q
        .stash("login", "digest", "v", Duration::from_secs(60))
        .await
        .unwrap());
    assert!(q.hold_leader("me", Duration::from_secs(60)).await.unwrap());
    q.set_schedule_last("sweep", 1, false).await.unwrap();
    assert!(q.claim_tick("sweep", 60, "me").await.unwrap());
    assert_eq!(q.job_for_key("k1").await.unwrap(), Some(a.clone()));
    // Jobs left queued, running and retrying, so their keys exist when we look.
    let f = q.enqueue(diag()).await.unwrap().id;
    let g = q.enqueue(diag()).await.unwrap().id;
    let later = q.claim("w", &[k], 10).await.unwrap().jobs;
    assert_eq!(later.len(), 2);
    let g_token = later.iter().find(|x| x.id == g).unwrap().token.clone();
    let retry = Outcome::Retry {
        error: "later".into(),
        delay: Duration::from_secs(600),
    };
    q.complete(&g, &g_token, k, retry).await.unwrap();
    q.enqueue(diag().account("zed")).await.unwrap();
    assert_eq!(q.get(&f).await.unwrap().status, JobStatus::Running);

    // Every key, found node by node.
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in masters(&q).await {
        let keys = scan(&m, &name).await;
        if !keys.is_empty() {
            by_node.insert(m, keys);
        }
    }
    assert_eq!(
        by_node.len(),
        1,
        "the queue's keys are spread over several nodes: {by_node:?}"
    );
    let (owner, keys) = by_node.into_iter().next().unwrap();
    let kinds: BTreeSet<&str> = keys
        .iter()
        .map(|k| {
            k.trim_start_matches(q.prefix())
                .split(':')
                .next()
                .unwrap_or_default()
        })
        .collect();
    for expected in [
        "job", "log", "pending", "ready", "acct", "delayed", "leases", "running", "limits",
        "finished", "events", "idem", "outbox", "once", "stash", "sched", "archived",
    ] {
        assert!(
            kinds.contains(expected),
            "no {expected} key was written: {kinds:?}"
        );
    }
    let mut c = node(&owner).await;
    let tag_slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(format!("{{{name}}}"))
        .query_async(&mut c)
        .await
        .unwrap();
    for key in &keys {
        assert!(key.starts_with(q.prefix()), "{key}");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(slot, tag_slot, "{key} is in slot {slot}, not {tag_slot}");
    }
    // ... and that one node is the one the cluster says owns the slot.
    let owned: Vec<String> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(tag_slot)
        .arg(100_000)
        .query_async(&mut c)
        .await
        .unwrap();
    let owned: BTreeSet<&String> = owned.iter().filter(|k| k.contains(&name)).collect();
    assert_eq!(owned, keys.iter().collect::<BTreeSet<_>>());
}

/// The wake-up and cancel channels are heard whichever node the subscription is on: `PUBLISH`
/// from a script on the slot's node reaches every node. The queue subscribes on the first seed,
/// so listing each master first in turn covers every node.
#[tokio::test]
async fn pub_sub_is_heard_through_every_node() {
    let probe = q("pubsub");
    let masters = masters(&probe).await;
    for first in 0..masters.len() {
        let mut seeds = masters.clone();
        seeds.rotate_left(first);
        let q = Queue::new(QueueConfig {
            redis_url: format!("redis+cluster://{}", seeds.join(",")),
            ..config("pubsub")
        })
        .unwrap();
        let mut ps = q.subscribe_wake_and_cancel().await.unwrap();
        let id = q.enqueue(diag()).await.unwrap().id;
        let c = q.claim("w", &[JobKind::Diagnostic], 1).await.unwrap().jobs;
        assert_eq!(c.len(), 1);
        q.cancel(&id).await.unwrap();
        let mut msgs = ps.on_message();
        let (mut woke, mut cancelled) = (false, false);
        while !(woke && cancelled) {
            let m = tokio::time::timeout(Duration::from_secs(20), msgs.next())
                .await
                .unwrap_or_else(|_| panic!("no message through {} first", seeds[0]))
                .expect("subscription open");
            if m.get_channel_name() == q.wake_channel() {
                woke = true;
            } else if m.get_channel_name() == q.cancel_channel() {
                assert_eq!(m.get_payload::<String>().unwrap(), id);
                cancelled = true;
            }
        }
    }
}

#[tokio::test]
async fn waits_hold_their_own_connections_on_a_cluster() {
    let q = Queue::new(QueueConfig {
        wait_connections: 1,
        ..config("wait")
    })
    .unwrap();
    let w = Waiter::new(&q).unwrap();
    let id = q.enqueue(diag()).await.unwrap().id;
    let (w2, id2) = (w.clone(), id.clone());
    let holder = tokio::spawn(async move { w2.wait(&id2, Duration::from_secs(30)).await });
    let t = Instant::now();
    while w.in_use().0 < 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the wait never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The pool's one connection is taken: a second wait answers at once ...
    match w.wait(&id, Duration::from_secs(30)).await.unwrap() {
        WaitOutcome::Pending(j) => assert_eq!(j.status, JobStatus::Queued),
        o => panic!("{o:?}"),
    }
    // ... and the shared connections are not blocked by the first: the job runs and ends.
    let c = q.claim("w", &[JobKind::Diagnostic], 1).await.unwrap().jobs;
    q.complete(
        &id,
        &c[0].token,
        JobKind::Diagnostic,
        Outcome::Succeeded(json!({"n": 2})),
    )
    .await
    .unwrap();
    match holder.await.unwrap().unwrap() {
        WaitOutcome::Finished(j) => assert_eq!(j.result, Some(json!({"n": 2}))),
        o => panic!("{o:?}"),
    }
    assert_eq!(w.in_use().0, 0, "the connection went back to the pool");
}

#[tokio::test]
async fn a_cluster_that_is_down_is_a_typed_error_not_a_panic() {
    // Ports that were free a moment ago: nothing listens there.
    let ports: Vec<u16> = {
        let ls: Vec<_> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
    };
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let q = Queue::new(QueueConfig {
        redis_url: format!("redis+cluster://{}", nodes.join(",")),
        name: "down".into(),
        ..QueueConfig::default()
    })
    .unwrap();
    let t = Instant::now();
    let e = q.enqueue(diag()).await.unwrap_err();
    assert!(matches!(e, QueueError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().starts_with("redis is unavailable"), "{e}");
    assert!(matches!(q.stats().await, Err(QueueError::Unavailable(_))));
    assert!(matches!(
        q.claim("w", &[JobKind::Diagnostic], 1).await,
        Err(QueueError::Unavailable(_))
    ));
    assert!(matches!(
        q.subscribe_wake_and_cancel().await,
        Err(QueueError::Unavailable(_))
    ));
    assert!(matches!(
        EventReader::new(&q, "0")
            .next_batch(Duration::from_millis(10), 1)
            .await,
        Err(QueueError::Unavailable(_))
    ));
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "a down cluster took {:?} to say so",
        t.elapsed()
    );
}

#[test]
fn bad_cluster_urls_are_refused_in_one_sentence() {
    for (url, says) in [
        ("redis+cluster://", "names no node"),
        ("redis+cluster://10.0.0.1", "needs a port"),
        ("redis+cluster://10.0.0.1:7000/2", "only database 0"),
    ] {
        let e = Queue::new(QueueConfig {
            redis_url: url.into(),
            ..QueueConfig::default()
        })
        .unwrap_err();
        assert!(matches!(e, QueueError::Invalid(_)), "{e:?}");
        assert!(e.to_string().contains(says), "{url}: {e}");
    }
}
