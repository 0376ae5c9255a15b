//! Waiting for a job's end on behalf of a caller (a WHMCS call, `GET /api/jobs/{id}/wait`), and
//! "accept once" tokens (the WHMCS replay cache).
//!
//! # Why a pool of its own (DESIGN §2, §9)
//! A wait is a blocking read (`XREAD BLOCK`) of the events stream, which holds its connection
//! for as long as it blocks. On the shared multiplexed connections it would stall every other
//! request pipelined behind it, so waits take a dedicated connection from a bounded
//! **deadpool-redis** pool (`queue.wait_connections`, default 64). The pool bounds how many
//! callers wait at once: when every connection is taken, [`Waiter::wait`] answers
//! [`WaitOutcome::Pending`] at once rather than queueing the caller behind the others. On a
//! Redis Cluster the pool holds cluster connections (deadpool-redis's `cluster` pool): each is
//! still one caller's alone, and the read goes to the node owning the queue's slot.
//!
//! # No event missed
//! The job and the newest event id are read together ([`Queue::get_at`], one MULTI/EXEC), then
//! the stream is read from that id: the job's `complete` event is after it whenever the job was
//! not final in that read. The job is read again at the end, so a wait never reports a state
//! older than the job's.

use crate::{Job, Queue, QueueError, Result};
use deadpool_redis::{Manager, Pool, PoolError, Runtime, Timeouts};
use std::time::{Duration, Instant};

/// The bounded pool of wait connections, on one server or on a cluster.
#[derive(Clone)]
enum WaitPool {
    Node(Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// A connection taken from [`WaitPool`].
enum Held {
    Node(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

impl Held {
    /// Close it instead of returning it to the pool (its state is unknown after an error or a
    /// read that did not answer).
    fn discard(self) {
        match self {
            Held::Node(c) => drop(deadpool_redis::Connection::take(c)),
            Held::Cluster(c) => drop(deadpool_redis::cluster::Connection::take(c)),
        }
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Held::Node(c) => cmd.query_async(&mut **c).await,
            Held::Cluster(c) => cmd.query_async(&mut **c).await,
        }
    }
}

impl WaitPool {
    fn status(&self) -> deadpool_redis::Status {
        match self {
            WaitPool::Node(p) => p.status(),
            WaitPool::Cluster(p) => p.status(),
        }
    }

    /// A free connection now, or `Ok(None)` when every one is taken.
    async fn try_get(&self) -> Result<Option<Held>> {
        let now_only = Timeouts {
            wait: Some(Duration::ZERO),
            create: Some(Duration::from_secs(2)),
            recycle: Some(Duration::from_secs(2)),
        };
        let got = match self {
            WaitPool::Node(p) => p.timeout_get(&now_only).await.map(Held::Node),
            WaitPool::Cluster(p) => p.timeout_get(&now_only).await.map(Held::Cluster),
        };
        match got {
            Ok(c) => Ok(Some(c)),
            Err(PoolError::Timeout(deadpool_redis::TimeoutType::Wait)) => Ok(None),
            Err(e) => Err(QueueError::Unavailable(format!("wait connection: {e}"))),
        }
    }
}

/// How a wait ended.
#[derive(Clone, Debug)]
pub enum WaitOutcome {
    /// The job ended (succeeded, failed or cancelled).
    Finished(Job),
    /// Still queued or running when the timeout passed, or no connection was free to wait on
    /// (the job as it is now).
    Pending(Job),
}

impl WaitOutcome {
    /// The job, either way.
    pub fn job(&self) -> &Job {
        match self {
            WaitOutcome::Finished(j) | WaitOutcome::Pending(j) => j,
        }
    }
}

/// Waits for jobs to finish on dedicated connections. Cheap to clone (one pool).
#[derive(Clone)]
pub struct Waiter {
    queue: Queue,
    pool: WaitPool,
    key: String,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.pool.status();
        f.debug_struct("Waiter")
            .field("max_size", &s.max_size)
            .field("available", &s.available)
            .finish()
    }
}

/// `XREAD` reply: streams → entries → (id, fields).
type XReadReply = Vec<(String, Vec<(String, Vec<(String, String)>)>)>;

impl Waiter {
    /// A waiter over `queue`'s Redis with at most `queue.wait_connections` blocking waits at
    /// once. Does no I/O (connections are made on first use).
    pub fn new(queue: &Queue) -> Result<Waiter> {
        let max = queue.config().wait_connections.max(1);
        let pool = match queue.redis().cluster_seeds() {
            None => {
                // No response timeout: a blocking read is as long as it is asked to be (each
                // read is bounded by a local timeout instead, see `wait`).
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_response_timeout(None)
                    .set_connection_timeout(Some(Duration::from_secs(2)));
                let manager =
                    Manager::new_with_config(queue.client().get_connection_info().clone(), cfg)
                        .map_err(|e| QueueError::Invalid(format!("bad redis url: {e}")))?;
                WaitPool::Node(
                    Pool::builder(manager)
                        .max_size(max)
                        .runtime(Runtime::Tokio1)
                        .build()
                        .map_err(|e| QueueError::Invalid(format!("wait pool: {e}")))?,
                )
            }
            Some(seeds) => {
                // Its cluster client has no response timeout either.
                let manager = deadpool_redis::cluster::Manager::new(seeds.to_vec(), false)
                    .map_err(|e| QueueError::Invalid(format!("bad redis url: {e}")))?;
                WaitPool::Cluster(
                    deadpool_redis::cluster::Pool::builder(manager)
                        .max_size(max)
                        .runtime(Runtime::Tokio1)
                        .build()
                        .map_err(|e| QueueError::Invalid(format!("wait pool: {e}")))?,
                )
            }
        };
        Ok(Waiter {
            queue: queue.clone(),
            key: format!("{}events", queue.prefix()),
            pool,
        })
    }

    /// Waits in progress and the pool's size.
    pub fn in_use(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.size.saturating_sub(s.available), s.max_size)
    }

    /// Wait up to `timeout` for job `id` to end. `NotFound` when Redis does not hold the job
    /// (callers look in the history for archived ones).
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<WaitOutcome> {
        let (job, mut seq) = self.queue.get_at(id).await?;
        if job.status.is_final() {
            return Ok(WaitOutcome::Finished(job));
        }
        if timeout.is_zero() {
            return Ok(WaitOutcome::Pending(job));
        }
        let Some(mut conn) = self.pool.try_get().await? else {
            metrics::counter!(crate::metrics::WAITS_BUSY_TOTAL).increment(1);
            return Ok(WaitOutcome::Pending(job));
        };
        let deadline = Instant::now() + timeout;
        'read: loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(500)
                .arg("BLOCK")
                .arg(left.as_millis().max(1) as u64)
                .arg("STREAMS")
                .arg(&self.key)
                .arg(&seq);
            let read = conn.query::<Option<XReadReply>>(&cmd);
            // A connection that stops answering (a partition) must not hold the caller.
            let reply = match tokio::time::timeout(left + Duration::from_secs(2), read).await {
                Ok(Ok(r)) => r.unwrap_or_default(),
                Ok(Err(e)) => {
                    conn.discard();
                    return Err(e.into());
                }
                Err(_) => {
                    conn.discard();
                    break 'read;
                }
            };
            for (_, entries) in reply {
                for (eid, fields) in entries {
                    seq = eid;
                    let field = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v);
                    if field("job").is_some_and(|j| j == id)
                        && field("type").is_some_and(|t| t == "complete")
                    {
                        break 'read;
                    }
                }
            }
        }
        let job = self.queue.get(id).await?;
        Ok(if job.status.is_final() {
            WaitOutcome::Finished(job)
        } else {
            WaitOutcome::Pending(job)
        })
    }
}

impl Queue {
    /// Remember `token` under `kind` for `ttl`: true the first time, false while it is
    /// remembered (one `SET NX EX`). The WHMCS replay cache accepts each signature once with it.
    pub async fn remember_once(&self, kind: &str, token: &str, ttl: Duration) -> Result<bool> {
        let set: Option<String> = self
            .raw(
                redis::cmd("SET")
                    .arg(format!("{}once:{kind}:{token}", self.prefix()))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl.as_secs().max(1)),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Keep `value` under `kind` and `key` for `ttl` (at least 1 ms), unless something is
    /// already kept there: true when stored (one `SET NX PX`). One-time login codes are kept
    /// with it, under the code's digest.
    pub async fn stash(&self, kind: &str, key: &str, value: &str, ttl: Duration) -> Result<bool> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .raw(
                redis::cmd("SET")
                    .arg(format!("{}stash:{kind}:{key}", self.prefix()))
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Take what [`Queue::stash`] kept under `kind` and `key`, deleting it in the same step
    /// (`GETDEL`, Redis 6.2+): of two concurrent takers one gets it, the other `None`, as does
    /// anyone after its TTL.
    pub async fn take_stashed(&self, kind: &str, key: &str) -> Result<Option<String>> {
        self.raw(redis::cmd("GETDEL").arg(format!("{}stash:{kind}:{key}", self.prefix())))
            .await
    }

    /// The job an idempotency key maps to while the key lives (see [`crate::NewJob`]), if any.
    pub async fn job_for_key(&self, key: &str) -> Result<Option<String>> {
        self.raw(redis::cmd("GET").arg(format!("{}idem:{key}", self.prefix())))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{testing, JobKind, JobStatus, NewJob, Outcome};
    use serde_json::json;

    async fn queue(hint: &str, waiters: usize) -> Queue {
        let mut cfg = testing::config(hint);
        cfg.wait_connections = waiters;
        Queue::new(cfg).unwrap()
    }

    async fn enqueue(q: &Queue) -> String {
        q.enqueue(NewJob::new(JobKind::Diagnostic, json!({})))
            .await
            .unwrap()
            .id
    }

    async fn finish(q: &Queue, id: &str) {
        let c = q.claim("w", &[JobKind::Diagnostic], 10).await.unwrap().jobs;
        let c = c.iter().find(|c| c.id == id).expect("claimed");
        q.complete(
            id,
            &c.token,
            JobKind::Diagnostic,
            Outcome::Succeeded(json!({"ok": 1})),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_wait_ends_with_the_job_or_its_timeout() {
        let q = queue("wait", 4).await;
        let w = Waiter::new(&q).unwrap();
        let id = enqueue(&q).await;
        // Not finished within the timeout: the job as it is.
        match w.wait(&id, Duration::from_millis(150)).await.unwrap() {
            WaitOutcome::Pending(j) => assert_eq!(j.status, JobStatus::Queued),
            o => panic!("{o:?}"),
        }
        // Other jobs' events do not end the wait; this job's completion does.
        let (q2, id2) = (q.clone(), id.clone());
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            enqueue(&q2).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            finish(&q2, &id2).await;
        });
        match w.wait(&id, Duration::from_secs(20)).await.unwrap() {
            WaitOutcome::Finished(j) => {
                assert_eq!(j.status, JobStatus::Succeeded);
                assert_eq!(j.result, Some(json!({"ok": 1})));
            }
            o => panic!("{o:?}"),
        }
        finisher.await.unwrap();
        // Already finished: at once, without a connection.
        assert!(matches!(
            w.wait(&id, Duration::from_secs(20)).await.unwrap(),
            WaitOutcome::Finished(_)
        ));
        assert!(matches!(
            w.wait("nope", Duration::from_millis(10)).await,
            Err(QueueError::NotFound(_))
        ));
        assert_eq!(w.in_use().0, 0, "connections went back to the pool");
    }

    #[tokio::test]
    async fn an_exhausted_pool_answers_pending_at_once() {
        let q = queue("waitbusy", 1).await;
        let w = Waiter::new(&q).unwrap();
        let id = enqueue(&q).await;
        let (w2, id2) = (w.clone(), id.clone());
        let holder = tokio::spawn(async move { w2.wait(&id2, Duration::from_secs(20)).await });
        let t = Instant::now();
        while w.in_use().0 < 1 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the first wait never started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t = Instant::now();
        match w.wait(&id, Duration::from_secs(20)).await.unwrap() {
            WaitOutcome::Pending(j) => assert_eq!(j.id, id),
            o => panic!("{o:?}"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "did not wait for a connection"
        );
        finish(&q, &id).await;
        assert!(matches!(
            holder.await.unwrap().unwrap(),
            WaitOutcome::Finished(_)
        ));
    }

    #[tokio::test]
    async fn tokens_are_accepted_once() {
        let q = queue("once", 1).await;
        let ttl = Duration::from_secs(60);
        assert!(q.remember_once("sig", "abc", ttl).await.unwrap());
        assert!(!q.remember_once("sig", "abc", ttl).await.unwrap());
        assert!(q.remember_once("other", "abc", ttl).await.unwrap());
        let id = q
            .enqueue(NewJob::new(JobKind::Diagnostic, json!({})).idempotency_key("k1"))
            .await
            .unwrap()
            .id;
        assert_eq!(q.job_for_key("k1").await.unwrap(), Some(id));
        assert_eq!(q.job_for_key("k2").await.unwrap(), None);
    }

    #[tokio::test]
    async fn stashed_values_are_taken_once_and_expire() {
        let q = queue("stash", 1).await;
        let ttl = Duration::from_secs(60);
        assert!(q.stash("code", "k", "v1", ttl).await.unwrap());
        assert!(!q.stash("code", "k", "v2", ttl).await.unwrap(), "NX");
        assert_eq!(q.take_stashed("other", "k").await.unwrap(), None);
        assert_eq!(
            q.take_stashed("code", "k").await.unwrap().as_deref(),
            Some("v1")
        );
        assert_eq!(
            q.take_stashed("code", "k").await.unwrap(),
            None,
            "taken once"
        );
        assert!(q
            .stash("code", "short", "v", Duration::from_millis(50))
            .await
            .unwrap());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            q.take_stashed("code", "short").await.unwrap(),
            None,
            "expired"
        );
    }
}
