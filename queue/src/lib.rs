//! nPanel's job queue: bounded, leased, progress-streaming, on Redis (DESIGN §2).
//!
//! # Why our own Redis layer
//! apalis-redis 1.0 has no cap, no progress, no cross-process limits, ignores `max_attempts`,
//! and starts a job pushed to an idle worker only on its 30 s heartbeat. Here every state change
//! is one Lua script (`lua/`), so the bound, the per-kind limits, per-account order and leases
//! hold atomically across any number of processes sharing one Redis.
//!
//! # Layout in Redis (prefix `np:{name}:`, one hash tag so Redis Cluster keeps it in one slot)
//! | key | type | holds |
//! |---|---|---|
//! | `job:<id>` | hash | the job (status, attempts, progress, error, result, lease token) |
//! | `log:<id>` | list | its last 100 log lines |
//! | `pending` | zset | queued + retrying jobs: its size is what the bound checks |
//! | `ready:<kind>` | list | claimable jobs of a kind, FIFO |
//! | `acct:<account>` | list | an account's unfinished jobs in order, as `kind:id`; only the head is ever ready |
//! | `delayed` | zset | retrying jobs by due time |
//! | `leases` | zset | running jobs by lease expiry (the reaper's input) |
//! | `running` | hash | running count per kind, checked against `limits` at claim |
//! | `limits` | hash | per-kind concurrency set at runtime |
//! | `finished` | zset | finished jobs by end time (trimmed by age and count) |
//! | `events` | stream | capped event log; stream ids are the WebSocket `seq` |
//! | `idem:<key>` | string | idempotency key → job id, with a TTL |
//! | `once:<kind>:<token>` | string | a token accepted once ([`Queue::remember_once`]: WHMCS signatures), with a TTL |
//! | `stash:<kind>:<key>` | string | a value kept for a TTL and taken once ([`Queue::stash`], [`Queue::take_stashed`]: one-time login codes by digest) |
//! | `paused` | string | present while claiming is paused |
//!
//! Pub/sub channels `wake` (work may be claimable) and `cancel` (a running job was cancelled)
//! let idle workers block instead of polling.
//!
//! # Deviation from DESIGN §2: no deadpool-redis
//! DESIGN names deadpool-redis for connections. deadpool-redis checks every connection with a
//! `PING` round trip on each checkout, which doubled the round trips of every queue operation:
//! measured with `npanel-bench` on this 2-core machine, processing at concurrency 50 went from
//! 7.3k to 14.1k jobs/s and pickup p99 from 4.3 ms to 0.47 ms when we replaced it. A redis-rs
//! multiplexed connection already pipelines every concurrent request, so there is nothing to
//! check out: the queue keeps `pool_size` (default 4) auto-reconnecting
//! `redis::aio::ConnectionManager`s and uses them round-robin. A Redis that is down yields
//! [`QueueError::Unavailable`] and the connections come back by themselves.
//!
//! # Redis Cluster
//! `redis_url = "redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000"` (seed nodes,
//! optionally `user:password@` before the first) puts the queue on a Redis Cluster. Every key
//! of a queue carries its hash tag, so the whole queue lives in one slot on one master and
//! every script stays atomic there; a cluster spreads *queues* (names), not one queue's load.
//! Commands go over cluster connections (redis-rs `cluster-async`), blocking reads over
//! dedicated ones, pub/sub over a plain connection to one seed node (see `conn.rs` for why
//! that is enough). `tests/queue_cluster.rs` runs the whole suite on a private three-master
//! cluster and proves the one-slot layout node by node.
//!
//! # Costs per job
//! enqueue, claim and complete are one script each (claims and completions batched under load);
//! each appends one event. Writes several jobs share (ready-list pushes, lease and finish
//! entries) are made once per call. The finished-job count and age caps are applied by the
//! reaper (once a second), not by a TTL per job.

pub mod config;
mod conn;
pub mod error;
pub mod events;
pub mod job;
pub mod kind;
pub mod metrics;
pub mod progress;
mod queue;
mod sched;
mod scripts;
#[cfg(feature = "test-support")]
pub mod testing;
mod wait;

pub use config::{QueueConfig, RedisTarget};
pub use error::{QueueError, Result};
pub use events::{Event, EventReader};
pub use job::{Job, JobStatus, KindStats, QueueStats};
pub use kind::{
    account_from_archive_name, Backup, Diagnostic, HealthCheck, JobKind, JobPayload, Provision,
    ProvisionAction, QuotaSweep, Restore, Retention, StageWeight, UnknownKind, Upgrade,
    UpgradeStage,
};
pub use progress::{EtaEstimator, Flusher, Progress};
pub use queue::{
    CancelOutcome, ClaimBatch, Claimed, Completion, Enqueued, ListFilter, NewJob, Outcome, Queue,
    Renewed,
};
pub use wait::{WaitOutcome, Waiter};

/// Wall-clock Unix milliseconds on this host.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
