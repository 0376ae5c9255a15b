//! Queue semantics against a real Redis (DESIGN §2): the shared suite (`suite/`) on one private
//! redis-server, plus what only one server shows (a missing socket, a server out of memory).

use queue::testing;
use queue::*;
use std::time::Duration;

mod suite;

/// The suite's queues: on this binary's private redis-server.
fn config(hint: &str) -> QueueConfig {
    testing::config(hint)
}

fn q(hint: &str) -> Queue {
    Queue::new(config(hint)).unwrap()
}

fn diag() -> NewJob {
    NewJob::typed(&Diagnostic::default())
}

async fn keys(q: &Queue) -> Vec<String> {
    q.raw(redis::cmd("KEYS").arg(format!("{}*", q.prefix())))
        .await
        .unwrap()
}

#[tokio::test]
async fn redis_down_is_a_typed_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = QueueConfig {
        redis_url: format!("redis+unix://{}/none.sock", dir.path().display()),
        ..QueueConfig::default()
    };
    c.name = "down".into();
    let q = Queue::new(c).unwrap();
    let t = std::time::Instant::now();
    let e = q.enqueue(diag()).await.unwrap_err();
    assert!(matches!(e, QueueError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().starts_with("redis is unavailable"));
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(matches!(q.stats().await, Err(QueueError::Unavailable(_))));
    assert!(matches!(
        q.claim("w", &[JobKind::Diagnostic], 1).await,
        Err(QueueError::Unavailable(_))
    ));
}

#[test]
fn settings_that_would_break_scripts_are_refused() {
    let c = QueueConfig {
        idempotency_ttl_secs: 0,
        max_finished: 0,
        ..QueueConfig::default()
    };
    let errs = c.validate();
    assert!(errs.iter().any(|e| e.contains("idempotency_ttl_secs")));
    assert!(errs.iter().any(|e| e.contains("max_finished")));
    assert!(matches!(Queue::new(c), Err(QueueError::Invalid(_))));
}

/// What a retry may fix is told apart from what it cannot: one of our keys holding the wrong
/// type (a bug, or a foreign writer) is `Protocol` — the API's 500 `internal` — and a Redis
/// out of memory is `OutOfMemory`, not the `Unavailable` of a connection that failed.
#[tokio::test]
async fn redis_errors_are_told_apart() {
    let q = q("wrongtype");
    q.enqueue(diag()).await.unwrap();
    for k in keys(&q).await {
        let _: () = q.raw(redis::cmd("DEL").arg(&k)).await.unwrap();
        let _: () = q.raw(redis::cmd("SET").arg(&k).arg("x")).await.unwrap();
    }
    let e = q.enqueue(diag()).await.unwrap_err();
    assert!(matches!(e, QueueError::Protocol(_)), "{e:?}");
    assert!(e.to_string().contains("WRONGTYPE"), "{e}");

    // A Redis of its own, full: every write is refused with OOM.
    let r = testing::PrivateRedis::start();
    let mut c = testing::config("oom");
    c.redis_url = r.url();
    let q = Queue::new(c).unwrap();
    let _: () = q
        .raw(redis::cmd("SET").arg("filler").arg(vec![b'x'; 4 << 20]))
        .await
        .unwrap();
    let _: () = q
        .raw(
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg("noeviction"),
        )
        .await
        .unwrap();
    let _: () = q
        .raw(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1mb"))
        .await
        .unwrap();
    let e = q.enqueue(diag()).await.unwrap_err();
    assert!(matches!(e, QueueError::OutOfMemory(_)), "{e:?}");
    assert!(e.to_string().contains("out of memory"), "{e}");
}
