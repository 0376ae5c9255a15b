//! The worker pool.
//!
//! Four loops share one process-local table of running jobs:
//! - **dispatcher**: claims as many jobs as there are free local slots, in one script call,
//!   for the kinds this pool handles (rotated for fairness); when nothing is claimable it
//!   blocks until a pub/sub wake-up, a local slot frees, the next retry falls due, or a long
//!   safety interval passes. No busy loop.
//! - **listener**: one pub/sub connection; `wake` messages wake the dispatcher, `cancel`
//!   messages cancel the local job at once. Reconnects by itself.
//! - **renewer**: renews all local leases every third of the lease, in one script call; learns
//!   of cancels and lost leases there too (the fallback if a pub/sub message was missed).
//! - **reaper**: returns expired leases of dead workers to the queue. Every process runs one;
//!   the script is atomic, so several reapers are harmless.

use crate::{backoff, metrics as m, JobContext, JobError, Registry};
use futures::FutureExt;
use queue::{Claimed, Completion, Flusher, JobStatus, Outcome, Queue};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

/// Pool settings.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Jobs this process runs at once, across kinds (the per-kind limits are global and live in
    /// Redis). Default 64.
    pub concurrency: usize,
    /// On shutdown, how long running jobs may take to finish before they are stopped and
    /// requeued. Default 30 s.
    pub shutdown_grace: Duration,
    /// After a cancel, how long a handler may take to stop by itself before it is dropped.
    /// Default 1 s.
    pub cancel_grace: Duration,
    /// First retry delay; doubles per attempt. Default 1 s.
    pub backoff_base: Duration,
    /// Longest retry delay. Default 10 min.
    pub backoff_max: Duration,
    /// How often this process looks for expired leases. Default 1 s.
    pub reap_interval: Duration,
    /// Longest an idle dispatcher sleeps without any wake-up (a safety net only). Default 30 s.
    pub idle_poll: Duration,
    /// Longest one attempt may run. Default 1 h.
    pub job_timeout: Duration,
    /// Most jobs claimed per script call. Default 50.
    pub claim_batch: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            concurrency: 64,
            shutdown_grace: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            reap_interval: Duration::from_secs(1),
            idle_poll: Duration::from_secs(30),
            job_timeout: Duration::from_secs(3600),
            claim_batch: 50,
        }
    }
}

const STOP_NONE: u8 = 0;
const STOP_CANCEL: u8 = 1;
const STOP_SHUTDOWN: u8 = 2;
const STOP_LOST: u8 = 3;

struct Local {
    id: String,
    cancel: CancellationToken,
    why: Arc<AtomicU8>,
}

impl Local {
    /// Record why the job is being stopped; the first reason wins, except that a lost lease
    /// overrides everything (nothing may be recorded for it any more).
    fn stop(&self, why: u8) {
        if why == STOP_LOST {
            self.why.store(STOP_LOST, Ordering::SeqCst);
        } else {
            let _ = self
                .why
                .compare_exchange(STOP_NONE, why, Ordering::SeqCst, Ordering::SeqCst);
        }
        self.cancel.cancel();
    }
}

/// Running attempts of this process, keyed by (job id, lease token): the same job may briefly
/// have an old attempt that lost its lease and a new one.
type Table = Arc<Mutex<HashMap<(String, String), Local>>>;

/// How the handler ended.
enum Ended {
    /// It returned.
    Returned(Result<serde_json::Value, JobError>),
    /// It did not stop within `cancel_grace` of a cancel and was dropped.
    Dropped,
    /// It ran past `job_timeout` and was dropped.
    TimedOut(Duration),
}

/// An outcome waiting to be recorded, and who waits for the answer.
type Pending = (Completion, oneshot::Sender<Option<Option<JobStatus>>>);

/// Error that stops the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Nothing to do.
    #[error("the pool has no handlers")]
    NoHandlers,
}

/// A worker pool over one queue.
pub struct Pool {
    queue: Queue,
    registry: Registry,
    cfg: PoolConfig,
    worker_id: String,
}

impl Pool {
    /// A pool running `registry`'s handlers on `queue`.
    pub fn new(queue: Queue, registry: Registry, cfg: PoolConfig) -> Pool {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "host".into());
        let worker_id = format!("{host}:{}:{}", std::process::id(), ulid::Ulid::new());
        Pool {
            queue,
            registry,
            cfg,
            worker_id,
        }
    }

    /// This worker's id (recorded on the jobs it claims).
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Run until `shutdown` fires; then stop claiming, let running jobs finish within
    /// `shutdown_grace`, and requeue the rest without using an attempt.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), PoolError> {
        let kinds = self.registry.kinds();
        if kinds.is_empty() {
            return Err(PoolError::NoHandlers);
        }
        let table: Table = Arc::default();
        let wake = Arc::new(Notify::new());
        let bg = CancellationToken::new();
        let tracker = TaskTracker::new();
        let background = TaskTracker::new();
        background.spawn(listener(
            self.queue.clone(),
            table.clone(),
            wake.clone(),
            bg.clone(),
        ));
        background.spawn(renewer(self.queue.clone(), table.clone(), bg.clone()));
        background.spawn(reaper(
            self.queue.clone(),
            self.cfg.reap_interval,
            bg.clone(),
        ));
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Pending>();
        background.spawn(completer(self.queue.clone(), done_rx));
        info!(worker = %self.worker_id, kinds = ?kinds, concurrency = self.cfg.concurrency, "Worker pool started.");

        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.cfg.concurrency));
        let freed = Arc::new(Notify::new());
        let mut order = kinds.clone();
        let mut err_backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = freed.notified() => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            order.rotate_left(1);
            let n = free.min(this.cfg.claim_batch);
            let batch = match this.queue.claim(&this.worker_id, &order, n).await {
                Ok(b) => {
                    err_backoff = Duration::from_millis(100);
                    b
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?err_backoff, "Claim failed; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(err_backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    err_backoff = (err_backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if batch.jobs.is_empty() {
                let mut sleep = this.cfg.idle_poll;
                if let Some(due) = batch.next_due_ms {
                    // Both times are Redis's clock: skew between hosts does not matter.
                    let wait = (due - batch.redis_now_ms).max(1) as u64;
                    sleep = sleep.min(Duration::from_millis(wait));
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = freed.notified() => {}
                    _ = tokio::time::sleep(sleep) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            for job in batch.jobs {
                let permit = slots
                    .clone()
                    .try_acquire_owned()
                    .expect("claimed within free slots");
                let this = this.clone();
                let table = table.clone();
                let freed = freed.clone();
                let done = done_tx.clone();
                tracker.spawn(async move {
                    this.run_job(job, table, done).await;
                    drop(permit);
                    freed.notify_one();
                });
            }
        }

        // Shutdown: no more claims. Soft deadline, then stop and requeue what is left.
        tracker.close();
        let running = table.lock().expect("table").len();
        info!(running, grace = ?this.cfg.shutdown_grace, "Worker pool stopping: no new claims.");
        if tokio::time::timeout(this.cfg.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            let left: Vec<_> = {
                let t = table.lock().expect("table");
                t.values()
                    .map(|l| {
                        l.stop(STOP_SHUTDOWN);
                        l.id.clone()
                    })
                    .collect()
            };
            warn!(jobs = ?left, "Shutdown grace over: stopping and requeueing running jobs.");
            tracker.wait().await;
        }
        drop(done_tx); // the completer ends once every outcome is recorded
        bg.cancel();
        background.close();
        background.wait().await;
        info!("Worker pool stopped.");
        Ok(())
    }

    async fn run_job(&self, job: Claimed, table: Table, done: mpsc::UnboundedSender<Pending>) {
        let span = info_span!("job", job_id = %job.id, kind = %job.kind, attempt = job.attempt);
        async {
            let started = Instant::now();
            let cancel = CancellationToken::new();
            let why = Arc::new(AtomicU8::new(STOP_NONE));
            {
                let mut t = table.lock().expect("table");
                // An older attempt of this job still running here has lost its lease.
                for l in t.values().filter(|l| l.id == job.id) {
                    l.stop(STOP_LOST);
                }
                t.insert(
                    (job.id.clone(), job.token.clone()),
                    Local {
                        id: job.id.clone(),
                        cancel: cancel.clone(),
                        why: why.clone(),
                    },
                );
            }
            metrics::gauge!(m::JOBS_RUNNING).increment(1.0);
            let (progress, flusher) = Flusher::new(
                self.queue.clone(),
                job.id.clone(),
                job.token.clone(),
                job.kind,
                cancel.clone(),
            );
            let stop_flush = CancellationToken::new();
            let flush_task = tokio::spawn(flusher.run(stop_flush.clone()));
            let ctx = JobContext {
                id: job.id.clone(),
                kind: job.kind,
                raw_payload: job.payload.clone(),
                attempt: job.attempt,
                max_attempts: job.max_attempts,
                account: job.account.clone(),
                progress,
                cancel: cancel.clone(),
            };
            debug!("Job started.");
            let ended = self.execute(ctx, &cancel).await;
            stop_flush.cancel();
            let _ = flush_task.await;
            metrics::gauge!(m::JOBS_RUNNING).decrement(1.0);
            let why = why.load(Ordering::SeqCst);
            let retry = |e: String| Outcome::Retry {
                error: e,
                delay: backoff(job.attempt, self.cfg.backoff_base, self.cfg.backoff_max),
            };
            // A result the handler returned wins over a cancel or shutdown that came too late
            // to stop it: the work is done and must not run again.
            let outcome = match (why, ended) {
                (STOP_LOST, _) => None,
                (_, Ended::Returned(Ok(v))) => Some(Outcome::Succeeded(v)),
                (STOP_SHUTDOWN, _) => Some(Outcome::Requeue),
                (STOP_CANCEL, _)
                | (_, Ended::Returned(Err(JobError::Cancelled)))
                | (_, Ended::Dropped) => Some(Outcome::Cancelled("cancelled by request".into())),
                (_, Ended::Returned(Err(JobError::Permanent(e)))) => Some(Outcome::Failed(e)),
                (_, Ended::Returned(Err(JobError::RetryAfter(d, e)))) => {
                    Some(Outcome::Retry { error: e, delay: d })
                }
                (_, Ended::Returned(Err(JobError::Transient(e)))) => Some(retry(e)),
                (_, Ended::TimedOut(t)) => Some(retry(format!("timed out after {t:?}"))),
            };
            let label = match &outcome {
                None => "lost",
                Some(Outcome::Succeeded(_)) => "succeeded",
                Some(Outcome::Failed(_)) => "failed",
                Some(Outcome::Retry { .. }) => "retry",
                Some(Outcome::Cancelled(_)) => "cancelled",
                Some(Outcome::Requeue) => "requeued",
            };
            metrics::counter!(m::JOB_ATTEMPTS_TOTAL, "kind" => job.kind.as_str(), "outcome" => label)
                .increment(1);
            metrics::histogram!(m::JOB_DURATION_SECONDS, "kind" => job.kind.as_str())
                .record(started.elapsed().as_secs_f64());
            let Some(outcome) = outcome else {
                table.lock().expect("table").remove(&(job.id.clone(), job.token.clone()));
                warn!("Lease lost while running; another attempt owns the job now.");
                return;
            };
            if let Some(Outcome::Retry { error, .. } | Outcome::Failed(error)) = Some(&outcome) {
                warn!(error = %error, "Attempt failed.");
            }
            let (tx, rx) = oneshot::channel();
            let c = Completion {
                id: job.id.clone(),
                token: job.token.clone(),
                kind: job.kind,
                outcome,
            };
            // The lease keeps being renewed (the entry stays in the table) until the outcome
            // is recorded, so a slow Redis cannot make a finished job run again.
            if done.send((c, tx)).is_err() {
                table.lock().expect("table").remove(&(job.id.clone(), job.token.clone()));
                return;
            }
            let recorded = rx.await;
            table.lock().expect("table").remove(&(job.id.clone(), job.token.clone()));
            match recorded {
                Ok(Some(Some(st))) => debug!(status = %st, "Job attempt recorded."),
                Ok(Some(None)) => warn!("Outcome not recorded: the lease had moved on."),
                _ => warn!("Outcome not recorded (redis unreachable); the lease will expire and the job run again."),
            }
        }
        .instrument(span)
        .await
    }

    /// Run the handler with a timeout, catching panics; on cancel, give it `cancel_grace` to
    /// return by itself, then drop it (which kills its process groups).
    async fn execute(&self, ctx: JobContext, cancel: &CancellationToken) -> Ended {
        let Some(handler) = self.registry.get(ctx.kind) else {
            return Ended::Returned(Err(JobError::Permanent(format!(
                "no handler for job type {} in this worker",
                ctx.kind
            ))));
        };
        let timeout = self.cfg.job_timeout;
        let fut = AssertUnwindSafe(handler(ctx)).catch_unwind();
        tokio::pin!(fut);
        let joined = tokio::select! {
            r = tokio::time::timeout(timeout, &mut fut) => r.ok(),
            _ = cancel.cancelled() => {
                tokio::time::timeout(self.cfg.cancel_grace, &mut fut).await.ok()
            }
        };
        match joined {
            None if cancel.is_cancelled() => Ended::Dropped,
            None => Ended::TimedOut(timeout),
            Some(Ok(r)) => Ended::Returned(r),
            Some(Err(panic)) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Ended::Returned(Err(JobError::Transient(format!("handler panicked: {msg}"))))
            }
        }
    }
}

/// Records outcomes, batching whatever has piled up while the previous batch was in flight
/// (one script call for many jobs under load, one per job when quiet). Retries while Redis is
/// unreachable; if it stays so, the leases expire and the reaper of some process reruns the
/// jobs: at least once.
async fn completer(queue: Queue, mut rx: mpsc::UnboundedReceiver<Pending>) {
    const MAX_BATCH: usize = 128;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let items: Vec<Completion> = batch.iter().map(|(c, _)| c.clone()).collect();
        let mut delay = Duration::from_millis(100);
        let mut result = None;
        for _ in 0..20 {
            match queue.complete_many(&items).await {
                Ok(r) => {
                    result = Some(r);
                    break;
                }
                Err(e) => {
                    warn!(error = %e, jobs = items.len(), "Could not record outcomes; retrying.");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        match result {
            Some(r) => {
                for ((_, tx), st) in batch.into_iter().zip(r) {
                    let _ = tx.send(Some(st));
                }
            }
            None => {
                for (_, tx) in batch {
                    let _ = tx.send(None);
                }
            }
        }
    }
}

async fn listener(queue: Queue, table: Table, wake: Arc<Notify>, stop: CancellationToken) {
    use futures::StreamExt;
    let cancel_ch = queue.cancel_channel();
    let mut delay = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let conn = queue.subscribe_wake_and_cancel();
        let mut ps = tokio::select! {
            r = conn => match r {
                Ok(ps) => ps,
                Err(e) => {
                    debug!(error = %e, "Pub/sub connect failed; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        delay = Duration::from_millis(100);
        // Anything published while we were not subscribed is picked up by this claim.
        wake.notify_one();
        let mut msgs = ps.on_message();
        loop {
            let msg = tokio::select! {
                m = msgs.next() => m,
                _ = stop.cancelled() => return,
            };
            let Some(msg) = msg else {
                warn!("Pub/sub connection lost; reconnecting.");
                break;
            };
            if msg.get_channel_name() == cancel_ch {
                let id: String = msg.get_payload().unwrap_or_default();
                for l in table.lock().expect("table").values().filter(|l| l.id == id) {
                    info!(job_id = %id, "Cancel requested; stopping the job.");
                    l.stop(STOP_CANCEL);
                }
            } else {
                wake.notify_one();
            }
        }
    }
}

async fn renewer(queue: Queue, table: Table, stop: CancellationToken) {
    // A third of the lease, and at least once a second so that a cancel whose pub/sub message
    // was missed still stops the job within about a second.
    let every = Duration::from_millis((queue.config().lease_ms / 3).clamp(100, 1000));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let leases: Vec<(String, String)> = table.lock().expect("table").keys().cloned().collect();
        if leases.is_empty() {
            continue;
        }
        match queue.renew(&leases).await {
            Ok(r) => {
                let t = table.lock().expect("table");
                for key in r.cancelled {
                    if let Some(l) = t.get(&key) {
                        l.stop(STOP_CANCEL);
                    }
                }
                for key in r.lost {
                    if let Some(l) = t.get(&key) {
                        l.stop(STOP_LOST);
                    }
                }
            }
            Err(e) => warn!(error = %e, "Lease renewal failed; retrying."),
        }
    }
}

async fn reaper(queue: Queue, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match queue.reap().await {
            Ok(0) => {}
            Ok(n) => info!(expired = n, "Returned jobs of lost workers to the queue."),
            Err(e) => debug!(error = %e, "Reaper could not reach redis."),
        }
    }
}
