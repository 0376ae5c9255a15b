//! The queue client: every state change is one Lua script (see `lua/`), so every transition is
//! atomic, and any number of API and worker processes can share one Redis.

use crate::conn::{Conn, Redis};
use crate::events::Event;
use crate::job::{Job, JobStatus, KindStats, QueueStats};
use crate::progress::ProgressWrite;
use crate::scripts;
use crate::{JobKind, JobPayload, QueueConfig, QueueError, Result};
use redis::{AsyncCommands, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A job to enqueue.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// Kind.
    pub kind: JobKind,
    /// Payload, validated against the kind's payload type at enqueue.
    pub payload: serde_json::Value,
    /// The account it concerns: jobs of one account run one at a time, in enqueue order.
    pub account: Option<String>,
    /// That account's reseller (for tenant filtering).
    pub reseller: Option<String>,
    /// Same key within its TTL returns the existing job instead of a new one.
    pub idempotency_key: Option<String>,
    /// Overrides the kind's default.
    pub max_attempts: Option<u32>,
}

impl NewJob {
    /// A job from an untyped payload (checked at enqueue).
    pub fn new(kind: JobKind, payload: serde_json::Value) -> Self {
        NewJob {
            kind,
            payload,
            account: None,
            reseller: None,
            idempotency_key: None,
            max_attempts: None,
        }
    }

    /// A job from a typed payload.
    pub fn typed<T: JobPayload>(payload: &T) -> Self {
        NewJob::new(
            T::KIND,
            serde_json::to_value(payload).expect("payload types serialise"),
        )
    }

    /// Set the account.
    pub fn account(mut self, account: impl Into<String>) -> Self {
        self.account = Some(account.into());
        self
    }

    /// Set the reseller.
    pub fn reseller(mut self, reseller: impl Into<String>) -> Self {
        self.reseller = Some(reseller.into());
        self
    }

    /// Set an idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Set max attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }
}

/// Result of an enqueue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// Job id.
    pub id: String,
    /// True when an idempotency key matched an existing job (nothing new was queued).
    pub existed: bool,
}

/// A job claimed by a worker. `token` proves ownership of the current attempt.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// Job id.
    pub id: String,
    /// Kind.
    pub kind: JobKind,
    /// Payload.
    pub payload: serde_json::Value,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Account, if any.
    pub account: Option<String>,
    /// Lease token of this attempt.
    pub token: String,
}

/// What one claim call returned.
#[derive(Clone, Debug, Default)]
pub struct ClaimBatch {
    /// Claimed jobs (possibly none).
    pub jobs: Vec<Claimed>,
    /// When the earliest retrying job becomes due (unix ms), if any.
    pub next_due_ms: Option<i64>,
    /// Claiming is paused by an admin.
    pub paused: bool,
    /// Redis's clock when the claim ran (unix ms), to compare with `next_due_ms`.
    pub redis_now_ms: i64,
}

/// How an attempt ended, as the worker reports it.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Done, with a result.
    Succeeded(serde_json::Value),
    /// Failed for good (no retry).
    Failed(String),
    /// Failed; retry after `delay` unless out of attempts.
    Retry {
        /// Error text.
        error: String,
        /// Backoff before the next attempt.
        delay: Duration,
    },
    /// Stopped because someone cancelled it.
    Cancelled(String),
    /// Interrupted by worker shutdown: back to the queue without using an attempt.
    Requeue,
}

/// One outcome for [`Queue::complete_many`].
#[derive(Clone, Debug)]
pub struct Completion {
    /// Job id.
    pub id: String,
    /// Lease token of the attempt.
    pub token: String,
    /// Kind (for metrics).
    pub kind: JobKind,
    /// How it ended.
    pub outcome: Outcome,
}

/// Result of a cancel request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued or retrying and is now cancelled.
    Cancelled,
    /// It is running; its worker has been told and will stop it.
    Cancelling,
}

/// Result of a lease renewal: `(id, token)` pairs as they were passed in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Renewed {
    /// Attempts whose job was asked to cancel.
    pub cancelled: Vec<(String, String)>,
    /// Attempts that no longer own their job (lease expired and moved on).
    pub lost: Vec<(String, String)>,
}

/// Filters for [`Queue::list`].
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<JobStatus>,
    /// Only this kind.
    pub kind: Option<JobKind>,
    /// Only this account.
    pub account: Option<String>,
    /// Only this reseller.
    pub reseller: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<usize>,
    /// Read only finished jobs that finished after this time (Unix ms): callers that keep the
    /// older ones elsewhere (the store's history) pass the archive watermark, so a list reads
    /// pending, running and not-yet-archived jobs only, whatever the retention holds.
    pub finished_after: Option<i64>,
}

/// A few auto-reconnecting multiplexed connections, used round-robin. Each pipelines every
/// concurrent request on it, so no checkout is needed: see the crate docs for why this replaced
/// deadpool-redis. On a Redis Cluster each is a cluster connection (see `conn.rs`).
struct Conns {
    redis: Arc<Redis>,
    slots: Vec<OnceLock<Conn>>,
    next: AtomicUsize,
}

impl Conns {
    fn get(&self) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slots[i].get_or_init(|| self.redis.shared()).clone()
    }
}

struct Inner {
    conns: Arc<Conns>,
    redis: Arc<Redis>,
    cfg: QueueConfig,
    prefix: String,
    available: Option<HashSet<JobKind>>,
}

/// A handle on one queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

fn bad(v: impl std::fmt::Debug) -> QueueError {
    QueueError::Protocol(format!("{v:?}"))
}

fn as_str(v: &Value) -> Result<String> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(bad(other)),
    }
}

fn as_int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        other => as_str(other)?.parse().map_err(|_| bad(other)),
    }
}

fn as_array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(bad(other)),
    }
}

/// The completion script's arguments: the count, then 6 per item (see `lua/complete_fn.lua`).
fn completion_args(inv: &mut redis::ScriptInvocation<'_>, items: &[Completion]) {
    inv.arg(items.len());
    for it in items {
        let (name, text, delay, okjson) = match &it.outcome {
            Outcome::Succeeded(v) => (
                "succeeded",
                v.to_string(),
                0,
                serde_json::json!({"success": true, "summary": v}).to_string(),
            ),
            Outcome::Failed(e) => ("failed", e.clone(), 0, String::new()),
            Outcome::Retry { error, delay } => (
                "retry",
                error.clone(),
                delay.as_millis() as u64,
                String::new(),
            ),
            Outcome::Cancelled(e) => ("cancelled", e.clone(), 0, String::new()),
            Outcome::Requeue => ("requeue", String::new(), 0, String::new()),
        };
        inv.arg(&it.id)
            .arg(&it.token)
            .arg(name)
            .arg(text)
            .arg(delay)
            .arg(okjson);
    }
}

/// One status per item from the completion script's reply (`None`: no longer ours).
fn parse_completions(items: &[Completion], reply: Vec<Value>) -> Result<Vec<Option<JobStatus>>> {
    if reply.len() != items.len() {
        return Err(bad(reply));
    }
    let mut out = Vec::with_capacity(items.len());
    for (it, st) in items.iter().zip(reply) {
        let st = as_str(&st)?;
        if st == "stale" {
            out.push(None);
            continue;
        }
        let st = JobStatus::parse(&st).ok_or_else(|| bad(&st))?;
        if st.is_final() {
            metrics::counter!(crate::metrics::JOBS_FINISHED_TOTAL, "kind" => it.kind.as_str(), "status" => st.as_str())
                .increment(1);
        }
        out.push(Some(st));
    }
    Ok(out)
}

/// The claim script's reply: next due retry, paused, Redis's clock, then 7 fields per job.
fn parse_claim(reply: Vec<Value>) -> Result<ClaimBatch> {
    if reply.len() < 3 {
        return Err(bad(reply));
    }
    let due = as_int(&reply[0])?;
    let mut batch = ClaimBatch {
        jobs: Vec::new(),
        next_due_ms: (due >= 0).then_some(due),
        paused: as_int(&reply[1])? == 1,
        redis_now_ms: as_int(&reply[2])?,
    };
    for f in reply[3..].chunks(7) {
        if f.len() < 7 {
            return Err(bad(f));
        }
        let account = as_str(&f[5])?;
        batch.jobs.push(Claimed {
            id: as_str(&f[0])?,
            kind: as_str(&f[1])?.parse()?,
            payload: serde_json::from_str(&as_str(&f[2])?).unwrap_or_default(),
            attempt: as_int(&f[3])? as u32,
            max_attempts: as_int(&f[4])? as u32,
            account: (!account.is_empty()).then_some(account),
            token: as_str(&f[6])?,
        });
    }
    Ok(batch)
}

impl Queue {
    /// Build a handle. Does no I/O: Redis may be down now and come back later; calls fail with
    /// [`QueueError::Unavailable`] meanwhile.
    pub fn new(cfg: QueueConfig) -> Result<Queue> {
        let errs = cfg.validate();
        if !errs.is_empty() {
            return Err(QueueError::Invalid(errs.join(" ")));
        }
        let redis = Arc::new(
            Redis::open(&cfg.redis_url)
                .map_err(|e| QueueError::Invalid(format!("bad redis url: {e}")))?,
        );
        let conns = Arc::new(Conns {
            redis: redis.clone(),
            slots: (0..cfg.pool_size).map(|_| OnceLock::new()).collect(),
            next: AtomicUsize::new(0),
        });
        let prefix = cfg.prefix();
        Ok(Queue {
            inner: Arc::new(Inner {
                conns,
                redis,
                cfg,
                prefix,
                available: None,
            }),
        })
    }

    /// Refuse enqueues of kinds outside `kinds` with [`QueueError::KindNotAvailable`]: the
    /// binary passes the kinds it has handlers for.
    pub fn with_available_kinds(self, kinds: impl IntoIterator<Item = JobKind>) -> Queue {
        let inner = Inner {
            conns: self.inner.conns.clone(),
            redis: self.inner.redis.clone(),
            cfg: self.inner.cfg.clone(),
            prefix: self.inner.prefix.clone(),
            available: Some(kinds.into_iter().collect()),
        };
        Queue {
            inner: Arc::new(inner),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.inner.cfg
    }

    /// Key prefix (`np:{name}:`).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Whether `kind` can be enqueued in this build.
    pub fn is_available(&self, kind: JobKind) -> bool {
        self.inner
            .available
            .as_ref()
            .is_none_or(|s| s.contains(&kind))
    }

    /// The Redis client of the server, or of the first seed node of a Redis Cluster: only fit
    /// for what any one node answers alike (pub/sub). Queue operations go through the queue.
    pub fn client(&self) -> &redis::Client {
        self.inner.redis.first_client()
    }

    /// Whether this queue is on a Redis Cluster (`redis+cluster://`).
    pub fn is_cluster(&self) -> bool {
        self.inner.redis.cluster_seeds().is_some()
    }

    pub(crate) fn redis(&self) -> &Redis {
        &self.inner.redis
    }

    /// Pub/sub channel that announces claimable work.
    pub fn wake_channel(&self) -> String {
        format!("{}wake", self.inner.prefix)
    }

    /// Pub/sub channel that announces cancel requests (message: job id).
    pub fn cancel_channel(&self) -> String {
        format!("{}cancel", self.inner.prefix)
    }

    async fn conn(&self) -> Result<Conn> {
        Ok(self.inner.conns.get())
    }

    fn script<'a>(&self, s: &'a redis::Script) -> redis::ScriptInvocation<'a> {
        let c = &self.inner.cfg;
        let mut inv = s.key(format!("{}pending", self.inner.prefix));
        inv.arg(&self.inner.prefix)
            .arg(c.events_maxlen)
            .arg(c.retention_secs.saturating_mul(1000))
            .arg(c.max_finished);
        inv
    }

    /// Check Redis answers.
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Enqueue one job.
    ///
    /// # Errors
    /// [`QueueError::Full`] when `max_pending` jobs are already waiting; `UnknownKind`,
    /// `KindNotAvailable` and `InvalidPayload` for bad input; `Unavailable` when Redis is down.
    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        let mut v = self.enqueue_bulk(vec![job]).await?;
        Ok(v.remove(0))
    }

    /// Enqueue several jobs in one script: all are accepted or, when they do not all fit under
    /// the bound, none (never a silent partial drop).
    pub async fn enqueue_bulk(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Err(QueueError::Invalid("nothing to enqueue".into()));
        }
        let cfg = &self.inner.cfg;
        let mut inv = self.script(&scripts::ENQUEUE);
        inv.arg(cfg.max_pending)
            .arg(cfg.idempotency_ttl_secs.saturating_mul(1000))
            .arg(jobs.len());
        for job in &jobs {
            if !self.is_available(job.kind) {
                return Err(QueueError::KindNotAvailable(job.kind));
            }
            let payload = job
                .kind
                .validate_payload(job.payload.clone())
                .map_err(|reason| QueueError::InvalidPayload {
                    kind: job.kind,
                    reason,
                })?;
            if let Some(a) = &job.account {
                // Characters, as the API's schema counts them (`maxLength`), not bytes.
                if a.is_empty() || a.chars().count() > 64 {
                    return Err(QueueError::Invalid(
                        "account must be 1 to 64 characters".into(),
                    ));
                }
            }
            let max_attempts = job.max_attempts.unwrap_or(job.kind.default_max_attempts());
            if max_attempts == 0 || max_attempts > 100 {
                return Err(QueueError::Invalid(
                    "max_attempts must be between 1 and 100".into(),
                ));
            }
            inv.arg(ulid::Ulid::new().to_string())
                .arg(job.kind.as_str())
                .arg(payload.to_string())
                .arg(job.account.as_deref().unwrap_or(""))
                .arg(job.reseller.as_deref().unwrap_or(""))
                .arg(max_attempts)
                .arg(job.idempotency_key.as_deref().unwrap_or(""));
        }
        let mut c = self.conn().await?;
        let reply = as_array(inv.invoke_async(&mut c).await?)?;
        match reply.first().map(as_str).transpose()?.as_deref() {
            Some("ok") => {
                let mut out = Vec::with_capacity(jobs.len());
                for (i, pair) in reply[1..].chunks(2).enumerate() {
                    let id = as_str(&pair[0])?;
                    let existed = as_int(&pair[1])? == 1;
                    if !existed {
                        metrics::counter!(crate::metrics::JOBS_ENQUEUED_TOTAL, "kind" => jobs[i].kind.as_str())
                            .increment(1);
                    }
                    out.push(Enqueued { id, existed });
                }
                Ok(out)
            }
            Some("full") => {
                metrics::counter!(crate::metrics::QUEUE_FULL_TOTAL).increment(1);
                Err(QueueError::Full {
                    limit: cfg.max_pending,
                    pending: as_int(&reply[1])? as u32,
                    retry_after: Duration::from_secs(as_int(&reply[2])?.max(1) as u64),
                })
            }
            _ => Err(bad(reply)),
        }
    }

    /// Claim up to `n` jobs of `kinds` for `worker`, within each kind's global limit.
    pub async fn claim(&self, worker: &str, kinds: &[JobKind], n: usize) -> Result<ClaimBatch> {
        let mut inv = self.script(&scripts::CLAIM);
        self.claim_args(&mut inv, worker, kinds, n);
        let mut c = self.conn().await?;
        parse_claim(as_array(inv.invoke_async(&mut c).await?)?)
    }

    /// Record `items` and claim up to `n` jobs of `kinds` for `worker`, in one script call
    /// (claim-on-complete): the slots the recorded attempts free are filled in the same round
    /// trip, and the claim sees them freed (and the next job of each account they advanced).
    /// One status per item, as [`Queue::complete_many`]; the claim as [`Queue::claim`].
    pub async fn complete_and_claim(
        &self,
        items: &[Completion],
        worker: &str,
        kinds: &[JobKind],
        n: usize,
    ) -> Result<(Vec<Option<JobStatus>>, ClaimBatch)> {
        let mut inv = self.script(&scripts::COMPLETE_CLAIM);
        completion_args(&mut inv, items);
        self.claim_args(&mut inv, worker, kinds, n);
        let mut c = self.conn().await?;
        let mut reply = as_array(inv.invoke_async(&mut c).await?)?;
        if reply.len() != 2 {
            return Err(bad(reply));
        }
        let claimed = parse_claim(as_array(reply.pop().expect("two"))?)?;
        let statuses = parse_completions(items, as_array(reply.pop().expect("two"))?)?;
        Ok((statuses, claimed))
    }

    fn claim_args(
        &self,
        inv: &mut redis::ScriptInvocation<'_>,
        worker: &str,
        kinds: &[JobKind],
        n: usize,
    ) {
        inv.arg(worker).arg(self.inner.cfg.lease_ms).arg(n);
        for k in kinds {
            inv.arg(k.as_str()).arg(self.inner.cfg.default_limit(*k));
        }
    }

    /// Record how an attempt ended. Returns the job's new status, or `None` when this worker no
    /// longer owned it (its lease expired and another attempt took over): nothing is changed then.
    pub async fn complete(
        &self,
        id: &str,
        token: &str,
        kind: JobKind,
        outcome: Outcome,
    ) -> Result<Option<JobStatus>> {
        let mut v = self
            .complete_many(&[Completion {
                id: id.to_string(),
                token: token.to_string(),
                kind,
                outcome,
            }])
            .await?;
        Ok(v.remove(0))
    }

    /// Record several outcomes in one script (the pool batches completions under load).
    /// One entry per input, as [`Queue::complete`] returns.
    pub async fn complete_many(&self, items: &[Completion]) -> Result<Vec<Option<JobStatus>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.script(&scripts::COMPLETE);
        completion_args(&mut inv, items);
        let mut c = self.conn().await?;
        parse_completions(items, as_array(inv.invoke_async(&mut c).await?)?)
    }

    /// Renew the leases of `(id, token)` pairs this worker holds.
    pub async fn renew(&self, leases: &[(String, String)]) -> Result<Renewed> {
        if leases.is_empty() {
            return Ok(Renewed::default());
        }
        let mut inv = self.script(&scripts::RENEW);
        inv.arg(self.inner.cfg.lease_ms);
        for (id, token) in leases {
            inv.arg(id).arg(token);
        }
        let mut c = self.conn().await?;
        let (cancelled, lost): (Vec<usize>, Vec<usize>) = inv.invoke_async(&mut c).await?;
        let pick = |v: Vec<usize>| {
            v.into_iter()
                .filter_map(|i| leases.get(i.wrapping_sub(1)).cloned())
                .collect()
        };
        Ok(Renewed {
            cancelled: pick(cancelled),
            lost: pick(lost),
        })
    }

    /// Store progress (and renew the lease). Returns `(still owned, cancel requested)`.
    pub async fn write_progress(
        &self,
        id: &str,
        token: &str,
        w: &ProgressWrite,
    ) -> Result<(bool, bool)> {
        let mut inv = self.script(&scripts::PROGRESS);
        inv.arg(id)
            .arg(token)
            .arg(self.inner.cfg.lease_ms)
            .arg(w.event_type)
            .arg(w.event_data.to_string())
            .arg(w.announce.unwrap_or(0))
            .arg(w.fields.len());
        for (k, v) in &w.fields {
            inv.arg(*k).arg(v);
        }
        for l in &w.logs {
            inv.arg(l);
        }
        let mut c = self.conn().await?;
        let (owned, cancel): (i64, i64) = inv.invoke_async(&mut c).await?;
        Ok((owned == 1, cancel == 1))
    }

    /// Return expired leases to the queue (or fail them after `max_attempts`) and forget old
    /// finished jobs. Returns how many leases had expired.
    pub async fn reap(&self) -> Result<u64> {
        let mut inv = self.script(&scripts::REAP);
        inv.arg(500);
        let mut c = self.conn().await?;
        let n: i64 = inv.invoke_async(&mut c).await?;
        if n > 0 {
            metrics::counter!(crate::metrics::LEASES_EXPIRED_TOTAL).increment(n as u64);
        }
        Ok(n as u64)
    }

    /// Cancel a job from any process.
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome> {
        let mut inv = self.script(&scripts::CANCEL);
        inv.arg(id);
        let mut c = self.conn().await?;
        let (tag, status): (String, String) = inv.invoke_async(&mut c).await?;
        match tag.as_str() {
            "cancelled" => Ok(CancelOutcome::Cancelled),
            "cancelling" => Ok(CancelOutcome::Cancelling),
            "not_found" => Err(QueueError::NotFound(id.into())),
            _ => Err(QueueError::Conflict {
                id: id.into(),
                status,
                action: "cancel",
            }),
        }
    }

    /// Run a failed or cancelled job again (attempts start over; the bound applies).
    pub async fn rerun(&self, id: &str) -> Result<()> {
        let mut inv = self.script(&scripts::RERUN);
        inv.arg(id).arg(self.inner.cfg.max_pending);
        let mut c = self.conn().await?;
        let reply = as_array(inv.invoke_async(&mut c).await?)?;
        match as_str(reply.first().ok_or_else(|| bad("empty"))?)?.as_str() {
            "ok" => Ok(()),
            "not_found" => Err(QueueError::NotFound(id.into())),
            "conflict" => Err(QueueError::Conflict {
                id: id.into(),
                status: as_str(&reply[1])?,
                action: "retry",
            }),
            "full" => Err(QueueError::Full {
                limit: self.inner.cfg.max_pending,
                pending: as_int(&reply[1])? as u32,
                retry_after: Duration::from_secs(as_int(&reply[2])? as u64),
            }),
            _ => Err(bad(reply)),
        }
    }

    /// Read one job.
    pub async fn get(&self, id: &str) -> Result<Job> {
        let mut c = self.conn().await?;
        let p = &self.inner.prefix;
        let (h, log): (HashMap<String, String>, Vec<String>) = redis::pipe()
            .hgetall(format!("{p}job:{id}"))
            .lrange(format!("{p}log:{id}"), 0, -1)
            .query_async(&mut c)
            .await?;
        Job::from_hash(&h, log).ok_or_else(|| QueueError::NotFound(id.into()))
    }

    /// Read one job together with the id of the newest event, atomically (MULTI/EXEC): every
    /// event after that id happened after this state. WebSocket snapshots use it so that
    /// nothing is shown twice or missed between the snapshot and the live stream.
    pub async fn get_at(&self, id: &str) -> Result<(Job, String)> {
        let mut c = self.conn().await?;
        let p = &self.inner.prefix;
        type Reply = (
            HashMap<String, String>,
            Vec<String>,
            Vec<(String, Vec<(String, String)>)>,
        );
        let (h, log, top): Reply = redis::pipe()
            .atomic()
            .hgetall(format!("{p}job:{id}"))
            .lrange(format!("{p}log:{id}"), 0, -1)
            .cmd("XREVRANGE")
            .arg(format!("{p}events"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await?;
        let job = Job::from_hash(&h, log).ok_or_else(|| QueueError::NotFound(id.into()))?;
        let seq = top
            .first()
            .map(|t| t.0.clone())
            .unwrap_or_else(|| "0-0".into());
        Ok((job, seq))
    }

    /// List jobs, newest first: pending and running ones, then finished ones.
    pub async fn list(&self, f: &ListFilter) -> Result<Vec<Job>> {
        let limit = f.limit.unwrap_or(100).min(1000);
        let p = &self.inner.prefix;
        let mut c = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.zrevrange(format!("{p}pending"), 0, -1)
            .zrevrange(format!("{p}leases"), 0, -1);
        match f.finished_after {
            Some(after) => pipe.zrevrangebyscore_limit(
                format!("{p}finished"),
                "+inf",
                format!("({after}"),
                0,
                5000,
            ),
            None => pipe.zrevrange(format!("{p}finished"), 0, 4999),
        };
        let (mut ids, leased, finished): (Vec<String>, Vec<String>, Vec<String>) =
            pipe.query_async(&mut c).await?;
        ids.extend(leased);
        ids.extend(finished);
        ids.sort_unstable_by(|a, b| b.cmp(a)); // ULIDs sort by creation time
        ids.dedup();
        let mut out = Vec::new();
        for chunk in ids.chunks(200) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hgetall(format!("{p}job:{id}"));
            }
            let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut c).await?;
            for h in hashes {
                let Some(job) = Job::from_hash(&h, Vec::new()) else {
                    continue;
                };
                if f.status.is_some_and(|s| s != job.status)
                    || f.kind.is_some_and(|k| k != job.kind)
                    || f.account
                        .as_ref()
                        .is_some_and(|a| job.account.as_ref() != Some(a))
                    || f.reseller
                        .as_ref()
                        .is_some_and(|r| job.reseller.as_ref() != Some(r))
                {
                    continue;
                }
                out.push(job);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// The queue at a glance.
    pub async fn stats(&self) -> Result<QueueStats> {
        let inv = self.script(&scripts::STATS);
        let mut c = self.conn().await?;
        type Reply = (
            u32,
            i64,
            HashMap<String, i64>,
            HashMap<String, u32>,
            HashMap<String, u32>,
        );
        let (pending, paused, running, limits, by_kind): Reply = inv.invoke_async(&mut c).await?;
        let mut kinds = BTreeMap::new();
        for k in JobKind::ALL {
            let name = k.as_str();
            kinds.insert(
                name.to_string(),
                KindStats {
                    limit: limits
                        .get(name)
                        .copied()
                        .unwrap_or(self.inner.cfg.default_limit(k)),
                    running: running.get(name).copied().unwrap_or(0).max(0) as u32,
                    pending: by_kind.get(name).copied().unwrap_or(0),
                },
            );
        }
        Ok(QueueStats {
            pending,
            max_pending: self.inner.cfg.max_pending,
            paused: paused == 1,
            kinds,
        })
    }

    /// Set a kind's concurrency limit at runtime; every worker process honours it at its next
    /// claim (and is woken now). Running jobs are never stopped by a lower limit.
    pub async fn set_limit(&self, kind: JobKind, limit: u32) -> Result<()> {
        if limit > 10_000 {
            return Err(QueueError::Invalid("limit must be at most 10000".into()));
        }
        let p = &self.inner.prefix;
        let mut c = self.conn().await?;
        let _: () = redis::pipe()
            .atomic()
            .hset(format!("{p}limits"), kind.as_str(), limit)
            .publish(self.wake_channel(), kind.as_str())
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Stop claiming everywhere (running jobs go on).
    pub async fn pause(&self) -> Result<()> {
        let mut c = self.conn().await?;
        let _: () = c.set(format!("{}paused", self.inner.prefix), 1).await?;
        Ok(())
    }

    /// Resume claiming.
    pub async fn resume(&self) -> Result<()> {
        let mut c = self.conn().await?;
        let _: () = redis::pipe()
            .del(format!("{}paused", self.inner.prefix))
            .publish(self.wake_channel(), "*")
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Events after `since` (exclusive; `"0"` for the oldest kept), at most `count`.
    pub async fn events_since(&self, since: &str, count: usize) -> Result<Vec<Event>> {
        let mut c = self.conn().await?;
        let start = format!("({since}");
        let start = if since == "0" { "-" } else { start.as_str() };
        let raw: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(format!("{}events", self.inner.prefix))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut c)
            .await?;
        Ok(raw
            .into_iter()
            .map(|(id, f)| Event::from_stream(id, &f))
            .collect())
    }

    /// Id of the newest event kept (`"0-0"` when the stream is empty): "now" for a reader.
    pub async fn latest_seq(&self) -> Result<String> {
        Ok(self
            .stream_end("XREVRANGE", "+", "-")
            .await?
            .unwrap_or_else(|| "0-0".into()))
    }

    /// Id of the oldest event still kept, if any: a `since` older than it was trimmed away.
    pub async fn oldest_seq(&self) -> Result<Option<String>> {
        self.stream_end("XRANGE", "-", "+").await
    }

    async fn stream_end(&self, cmd: &str, from: &str, to: &str) -> Result<Option<String>> {
        let mut c = self.conn().await?;
        let v: Vec<(String, Vec<(String, String)>)> = redis::cmd(cmd)
            .arg(format!("{}events", self.inner.prefix))
            .arg(from)
            .arg(to)
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await?;
        Ok(v.into_iter().next().map(|e| e.0))
    }

    /// Finished jobs after the watermark `(score, last)` in finish order (`score` = finish
    /// time in ms; ties are ordered by id, as Redis orders equal scores), at most `n`, with
    /// their finish times. The archiver's read.
    pub async fn finished_after(
        &self,
        score: i64,
        last: &str,
        n: usize,
    ) -> Result<Vec<(String, i64)>> {
        let mut c = self.conn().await?;
        let key = format!("{}finished", self.inner.prefix);
        let mut offset = 0;
        loop {
            let page: Vec<(String, i64)> = redis::cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg(score)
                .arg("+inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(offset)
                .arg(n)
                .query_async(&mut c)
                .await?;
            let got = page.len();
            let out: Vec<(String, i64)> = page
                .into_iter()
                .filter(|(id, s)| *s > score || id.as_str() > last)
                .collect();
            if !out.is_empty() || got < n {
                return Ok(out);
            }
            // A whole page at the watermark's own time, all archived: look further.
            offset += n;
        }
    }

    /// Several jobs with their log tails, in the order asked; missing ones are left out.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Job>> {
        let mut c = self.conn().await?;
        let p = &self.inner.prefix;
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(format!("{p}job:{id}"))
                .lrange(format!("{p}log:{id}"), 0, -1);
        }
        let raw: Vec<redis::Value> = pipe.query_async(&mut c).await?;
        let mut out = Vec::with_capacity(ids.len());
        for pair in raw.chunks(2) {
            let h: HashMap<String, String> =
                redis::from_redis_value(pair[0].clone()).map_err(bad)?;
            let log: Vec<String> = redis::from_redis_value(pair[1].clone()).map_err(bad)?;
            if let Some(j) = Job::from_hash(&h, log) {
                out.push(j);
            }
        }
        Ok(out)
    }

    /// Record that every job finished before `score` (ms) is archived: from then on the count
    /// cap drops only those (see `trim_finished` in `lua/common.lua`).
    pub async fn mark_archived(&self, score: i64) -> Result<()> {
        let mut c = self.conn().await?;
        let _: () = redis::cmd("SET")
            .arg(format!("{}archived", self.inner.prefix))
            .arg(score)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Append an entry to the durable outbox stream `name` (written with the append-only file
    /// when Redis has one). Returns the entry id.
    pub async fn outbox_push(&self, name: &str, payload: &str) -> Result<String> {
        let mut c = self.conn().await?;
        Ok(redis::cmd("XADD")
            .arg(format!("{}outbox:{name}", self.inner.prefix))
            .arg("*")
            .arg("d")
            .arg(payload)
            .query_async(&mut c)
            .await?)
    }

    /// The oldest `n` entries of outbox `name`: `(entry id, payload)`.
    pub async fn outbox_read(&self, name: &str, n: usize) -> Result<Vec<(String, String)>> {
        let mut c = self.conn().await?;
        let raw: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(format!("{}outbox:{name}", self.inner.prefix))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(n)
            .query_async(&mut c)
            .await?;
        Ok(raw
            .into_iter()
            .map(|(id, f)| {
                let d = f.into_iter().find(|(k, _)| k == "d").map(|(_, v)| v);
                (id, d.unwrap_or_default())
            })
            .collect())
    }

    /// Remove delivered entries from outbox `name`.
    pub async fn outbox_ack(&self, name: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let _: i64 = redis::cmd("XDEL")
            .arg(format!("{}outbox:{name}", self.inner.prefix))
            .arg(ids)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Run a raw command on a pooled connection (tests and tools).
    pub async fn raw<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut c = self.conn().await?;
        Ok(cmd.query_async(&mut c).await?)
    }
}
