//! The handler runtime: apalis 1.0 runs the handlers; the pool keeps every queue transition.
//!
//! ```text
//! dispatcher (pool.rs): claim across kinds, sized by free slots, in one script
//!   │  Rt::admit: lease-table entry, progress reporter, span, slot taken
//!   │  Task<JobKind> carrying Data<JobContext> and the attempt's RunRef
//!   ▼  one unbounded channel per kind
//! KindBackend (Backend, Error = Infallible, Ephemeral)
//!   ▼  one apalis Worker per kind ("<worker id>:<kind>"), all under one Monitor
//! JobLayer      backend middleware: spawns the attempt, gives a cancelled handler
//!               `cancel_grace`, decides the queue transition (ack, retry after, permanent,
//!               requeue without an attempt, nothing when the lease was lost), records it,
//!               releases the slot
//! TimeoutLayer  PoolConfig::job_timeout (tower)
//! TraceLayer    the job's span: job_id, kind, attempt
//! CatchPanic    a panic becomes an error carrying its message
//! handler       the Registry's function, given Data<JobContext>
//! ```
//!
//! Why this shape (see `../shared/research/apalis-integration.md`, and `README.md`):
//! - **Our own [`Backend`], not apalis-redis or `Persistence`.** Claims must be sized by the
//!   free slots across every kind and made in one script; apalis pulls per worker. So the
//!   dispatcher claims and the backend is only a channel. Its error type is [`Infallible`]:
//!   a backend error ends an apalis worker. It is [`Ephemeral`]: a `Durable` backend decodes
//!   payloads in `poll_next`, and one bad payload would stop the worker; here the handler
//!   decodes (`JobContext::payload`) and a bad payload is a permanent failure of that job.
//! - **The backend's layer decides transitions.** apalis places it outside the user layers, so
//!   it sees the final result after timeout and panic capture, and apalis persists nothing
//!   itself. Retries are queue transitions (backoff in Redis, `max_attempts`), so there is no
//!   apalis retry layer, and no `.concurrency(n)`: a per-worker limit would let claimed jobs
//!   wait in a channel while holding a global slot.
//! - **One tokio task per attempt, spawned by [`JobLayer`].** Every worker of a Monitor is
//!   polled inside the Monitor's one task; the layer spawns the whole attempt (handler stack and
//!   transition) so jobs run on every core, as before. The handle aborts the task when dropped
//!   (a bare `JoinHandle` would detach it), so the Monitor's last-resort timeout still stops
//!   everything.
//! - **Leases, renewal, cancel and the reaper stay ours.** apalis's task cancel is a flag seen
//!   only when the future is polled and reaches no child process; the job's
//!   `CancellationToken` (in [`JobContext`]) does, and the renewer and pub/sub listener fire it.

use crate::pool::{Local, Table, STOP_CANCEL, STOP_LOST, STOP_NONE, STOP_SHUTDOWN};
use crate::{backoff, metrics as m, JobContext, JobError, PoolConfig};
use apalis::layers::catch_panic::{CatchPanicLayer, PanicError};
use apalis::layers::tracing::TraceLayer;
use apalis::layers::TimeoutLayer;
use apalis::prelude::{BoxDynError, Data, Monitor, Task, TaskBuilder, TaskId, WorkerBuilder};
use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::layers::{Layer, Service};
use apalis_core::worker::context::WorkerContext;
use futures::future::BoxFuture;
use futures::FutureExt;
use queue::{Claimed, Completion, Flusher, JobKind, JobStatus, Outcome, Queue};
use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info_span, warn, Instrument, Span};

/// An outcome waiting to be recorded, and who waits for the answer.
pub(crate) type Pending = (Completion, oneshot::Sender<Option<Option<JobStatus>>>);

/// Claimed jobs of one kind on their way to that kind's worker. Shared so that a worker the
/// Monitor restarts reads the same channel, and so that the pool can requeue what is left.
pub(crate) type Rx = Arc<Mutex<mpsc::UnboundedReceiver<Task<JobKind>>>>;

/// What the dispatcher, the backends and the job layer share.
pub(crate) struct Rt {
    pub(crate) queue: Queue,
    pub(crate) cfg: PoolConfig,
    pub(crate) table: Table,
    done: mpsc::UnboundedSender<Pending>,
    /// Attempts holding a slot: admitted and not yet finished.
    running: AtomicUsize,
    /// Slots promised to a claim in flight in the completer (claim-on-complete): not free for
    /// the dispatcher until that claim's jobs are admitted or found absent.
    reserved: AtomicUsize,
    /// Notified whenever a slot frees.
    pub(crate) freed: Notify,
}

impl Rt {
    pub(crate) fn new(
        queue: Queue,
        cfg: PoolConfig,
        table: Table,
        done: mpsc::UnboundedSender<Pending>,
    ) -> Arc<Rt> {
        Arc::new(Rt {
            queue,
            cfg,
            table,
            done,
            running: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Slots this process may still fill.
    pub(crate) fn free_slots(&self) -> usize {
        self.cfg.concurrency.saturating_sub(
            self.running.load(Ordering::SeqCst) + self.reserved.load(Ordering::SeqCst),
        )
    }

    /// Promise `n` slots to a claim in flight (see [`Rt::unreserve`]).
    pub(crate) fn reserve(&self, n: usize) {
        self.reserved.fetch_add(n, Ordering::SeqCst);
    }

    /// Give back `n` promised slots: the claim's jobs are admitted by now (they hold slots of
    /// their own) or never came. Wakes the dispatcher, which may now claim what is left.
    pub(crate) fn unreserve(&self, n: usize) {
        self.reserved.fetch_sub(n, Ordering::SeqCst);
        self.slot_freed();
    }

    /// Wake the dispatcher if it has a slot to fill. With none free (a busy pool, whose slots
    /// the completer refills itself) a wake-up would only find nothing to do; it is woken by
    /// whichever change frees one.
    fn slot_freed(&self) {
        if self.free_slots() > 0 {
            self.freed.notify_one();
        }
    }

    /// Attempts holding a slot.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Take a claimed job into a slot: its lease goes into the table at once (so it is renewed
    /// and can be cancelled even before its worker starts it), and it becomes an apalis task
    /// whose data holds the handler's [`JobContext`] and the pool's [`RunRef`].
    pub(crate) fn admit(self: &Arc<Self>, job: Claimed) -> Task<JobKind> {
        self.running.fetch_add(1, Ordering::SeqCst);
        let cancel = CancellationToken::new();
        let why = Arc::new(AtomicU8::new(STOP_NONE));
        {
            let mut t = self.table.lock().expect("table");
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
        let (progress, flusher) = Flusher::new(
            self.queue.clone(),
            job.id.clone(),
            job.token.clone(),
            job.kind,
            job.attempt,
            cancel.clone(),
        );
        let span = info_span!("job", job_id = %job.id, kind = %job.kind, attempt = job.attempt);
        let run = RunRef(Arc::new(Run {
            rt: self.clone(),
            id: job.id.clone(),
            token: job.token,
            kind: job.kind,
            attempt: job.attempt,
            cancel: cancel.clone(),
            why,
            flusher: Mutex::new(Some(flusher)),
            span,
            finished: AtomicBool::new(false),
        }));
        let task_id = TaskId::from_string(job.id.clone());
        let ctx = JobContext {
            id: job.id,
            kind: job.kind,
            raw_payload: job.payload,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            account: job.account,
            progress,
            cancel,
        };
        TaskBuilder::new(job.kind)
            .task_id(task_id)
            // apalis counts the attempt up when the task is first polled.
            .attempt(job.attempt.saturating_sub(1) as usize)
            .max_attempts(job.max_attempts as usize)
            .data(ctx)
            .data(run)
            .build()
    }

    /// Hand `c` to the completer and wait: `Some(Some(status))` recorded, `Some(None)` the
    /// lease had moved on, `None` not recorded (Redis unreachable, or the pool is gone).
    async fn record(&self, c: Completion) -> Option<Option<JobStatus>> {
        let (tx, rx) = oneshot::channel();
        self.done.send((c, tx)).ok()?;
        rx.await.ok().flatten()
    }
}

/// One admitted attempt, from the claim to its recorded outcome.
pub(crate) struct Run {
    rt: Arc<Rt>,
    id: String,
    token: String,
    kind: JobKind,
    attempt: u32,
    cancel: CancellationToken,
    /// Why it is being stopped (`STOP_*`), shared with its table entry.
    why: Arc<AtomicU8>,
    /// Taken when the attempt starts.
    flusher: Mutex<Option<Flusher>>,
    span: Span,
    finished: AtomicBool,
}

impl Run {
    /// Leave the lease table and free the slot; once. Called when the outcome is recorded (the
    /// lease is renewed until then, so a slow Redis cannot make a finished job run again), and
    /// at the latest when the last reference goes.
    fn finish(&self) {
        if self.finished.swap(true, Ordering::SeqCst) {
            return;
        }
        self.rt
            .table
            .lock()
            .expect("table")
            .remove(&(self.id.clone(), self.token.clone()));
        self.rt.running.fetch_sub(1, Ordering::SeqCst);
        self.rt.slot_freed();
    }

    fn completion(&self, outcome: Outcome) -> Completion {
        Completion {
            id: self.id.clone(),
            token: self.token.clone(),
            kind: self.kind,
            outcome,
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The pool's handle on an attempt, carried in the apalis task's data.
#[derive(Clone)]
pub(crate) struct RunRef(Arc<Run>);

/// The apalis backend of one kind: the receiving end of the dispatcher's channel.
pub(crate) struct KindBackend {
    rx: Rx,
    closing: Option<BoxFuture<'static, ()>>,
}

impl KindBackend {
    pub(crate) fn new(rx: Rx) -> Self {
        KindBackend { rx, closing: None }
    }
}

impl Backend for KindBackend {
    type Task = Task<JobKind>;
    /// Never returned: any backend error would end the apalis worker.
    type Error = Infallible;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Task<JobKind>, Infallible>>> {
        self.rx
            .lock()
            .expect("receiver")
            .poll_recv(cx)
            .map(|t| t.map(Ok))
    }

    /// Jobs still in the channel were claimed but never started: they go back to the queue
    /// without using an attempt (or are recorded cancelled, if that was asked meanwhile).
    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Infallible>> {
        let rx = &self.rx;
        self.closing
            .get_or_insert_with(|| requeue_unstarted(drain(rx)).boxed())
            .poll_unpin(cx)
            .map(Ok)
    }
}

impl BackendConfig for KindBackend {
    type Args = JobKind;
    type Id = String;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = JobLayer;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> JobLayer {
        JobLayer
    }
}

/// Everything left in a kind's channel.
pub(crate) fn drain(rx: &Rx) -> Vec<RunRef> {
    let mut rx = rx.lock().expect("receiver");
    let mut left = Vec::new();
    while let Ok(task) = rx.try_recv() {
        if let Some(run) = task.data().get::<RunRef>() {
            left.push(run.clone());
        }
    }
    left
}

/// The attempts of `tasks` (claimed jobs that never reached their worker).
pub(crate) fn runs_of(tasks: impl IntoIterator<Item = Task<JobKind>>) -> Vec<RunRef> {
    tasks
        .into_iter()
        .filter_map(|t| t.data().get::<RunRef>().cloned())
        .collect()
}

/// Like [`requeue_unstarted`], straight to Redis: for what is left once the completer has
/// ended (a claim-on-complete that was in flight when the pool stopped).
pub(crate) async fn requeue_direct(queue: &Queue, left: Vec<RunRef>) {
    let items: Vec<Completion> = left
        .iter()
        .filter(|RunRef(run)| run.why.load(Ordering::SeqCst) != STOP_LOST)
        .map(|RunRef(run)| run.completion(Outcome::Requeue))
        .collect();
    if !items.is_empty() {
        if let Err(e) = queue.complete_many(&items).await {
            warn!(error = %e, jobs = items.len(), "Could not requeue claimed jobs; their leases will expire.");
        }
    }
    for RunRef(run) in left {
        run.finish();
    }
}

/// Record attempts that never started: requeued without an attempt, cancelled if a cancel
/// came meanwhile, nothing if the lease was lost.
pub(crate) async fn requeue_unstarted(left: Vec<RunRef>) {
    futures::future::join_all(left.into_iter().map(|RunRef(run)| async move {
        let outcome = match run.why.load(Ordering::SeqCst) {
            STOP_LOST => None,
            STOP_CANCEL => Some(Outcome::Cancelled("cancelled by request".into())),
            _ => Some(Outcome::Requeue),
        };
        if let Some(o) = outcome {
            let outcome = label(Some(&o));
            metrics::counter!(m::JOB_ATTEMPTS_TOTAL, "kind" => run.kind.as_str(), "outcome" => outcome)
                .increment(1);
            let _ = run.rt.record(run.completion(o)).await;
        }
        run.finish();
    }))
    .await;
}

/// The backend's middleware: runs each attempt on its own task and decides its transition.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JobLayer;

impl<S> Layer<S> for JobLayer {
    type Service = JobService<S>;

    fn layer(&self, inner: S) -> JobService<S> {
        JobService { inner }
    }
}

/// See [`JobLayer`].
#[derive(Clone, Debug)]
pub(crate) struct JobService<S> {
    inner: S,
}

/// What apalis sees of an attempt: `Ok` when it succeeded, else the outcome that was recorded.
type Attempted = Result<(), BoxDynError>;

fn joined(r: Result<Attempted, JoinError>) -> Attempted {
    r.map_err(|e| -> BoxDynError { Box::new(e) })?
}

impl<S> Service<Task<JobKind>> for JobService<S>
where
    S: Service<Task<JobKind>, Response = serde_json::Value>,
    S::Error: Into<BoxDynError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxDynError;
    type Future = futures::future::Map<
        AbortOnDropHandle<Attempted>,
        fn(Result<Attempted, JoinError>) -> Attempted,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<JobKind>) -> Self::Future {
        let run = task.data().get::<RunRef>().cloned();
        // Called synchronously: apalis registers the task with its worker here.
        let fut = self.inner.call(task);
        let handle = tokio::spawn(async move {
            let Some(RunRef(run)) = run else {
                return Err(
                    "task without a claimed attempt (only the dispatcher makes tasks)".into(),
                );
            };
            let span = run.span.clone();
            attempt(run, fut).instrument(span).await
        });
        AbortOnDropHandle::new(handle).map(joined as fn(_) -> _)
    }
}

/// How the handler stack ended.
enum Ended {
    /// It returned.
    Returned(Result<serde_json::Value, JobError>),
    /// It did not stop within `cancel_grace` of a cancel and was dropped.
    Dropped,
    /// It ran past `job_timeout` and was dropped.
    TimedOut(Duration),
}

/// One attempt: run the handler stack (giving it `cancel_grace` after a cancel), decide the
/// transition, record it, free the slot.
async fn attempt<F, E>(run: Arc<Run>, fut: F) -> Attempted
where
    F: Future<Output = Result<serde_json::Value, E>>,
    E: Into<BoxDynError>,
{
    let rt = run.rt.clone();
    let started = Instant::now();
    // The progress flusher runs beside the handler in this task (not a task of its own: that
    // cost a spawn and a cross-task wake-up per job), and makes its last write once the
    // handler has ended.
    let flusher = run.flusher.lock().expect("flusher").take();
    let stop_flush = CancellationToken::new();
    let handler_running = HandlerRunning::new();
    let handler = async {
        let ended = {
            tokio::pin!(fut);
            let r = tokio::select! {
                r = &mut fut => Some(r),
                _ = run.cancel.cancelled() => {
                    tokio::time::timeout(rt.cfg.cancel_grace, &mut fut).await.ok()
                }
            };
            // Leaving this block drops a handler that did not stop: its process groups are
            // killed.
            match r {
                None => Ended::Dropped,
                Some(Ok(v)) => Ended::Returned(Ok(v)),
                Some(Err(e)) => classify(e.into(), rt.cfg.job_timeout),
            }
        };
        stop_flush.cancel();
        ended
    };
    let flush = async {
        if let Some(f) = flusher {
            f.run(stop_flush.clone()).await;
        }
    };
    let (ended, ()) = tokio::join!(handler, flush);
    drop(handler_running);
    let why = run.why.load(Ordering::SeqCst);
    let retry = |e: String| Outcome::Retry {
        error: e,
        delay: backoff(run.attempt, rt.cfg.backoff_base, rt.cfg.backoff_max),
    };
    // A result the handler returned wins over a cancel or shutdown that came too late to stop
    // it: the work is done and must not run again.
    let outcome = match (why, ended) {
        (STOP_LOST, _) => None,
        (_, Ended::Returned(Ok(v))) => Some(Outcome::Succeeded(v)),
        (STOP_SHUTDOWN, _) => Some(Outcome::Requeue),
        (STOP_CANCEL, _) | (_, Ended::Returned(Err(JobError::Cancelled))) | (_, Ended::Dropped) => {
            Some(Outcome::Cancelled("cancelled by request".into()))
        }
        (_, Ended::Returned(Err(JobError::Permanent(e)))) => Some(Outcome::Failed(e)),
        (_, Ended::Returned(Err(JobError::RetryAfter(d, e)))) => {
            Some(Outcome::Retry { error: e, delay: d })
        }
        (_, Ended::Returned(Err(JobError::Transient(e)))) => Some(retry(e)),
        (_, Ended::TimedOut(t)) => Some(retry(format!("timed out after {t:?}"))),
    };
    let label = label(outcome.as_ref());
    metrics::counter!(m::JOB_ATTEMPTS_TOTAL, "kind" => run.kind.as_str(), "outcome" => label)
        .increment(1);
    metrics::histogram!(m::JOB_DURATION_SECONDS, "kind" => run.kind.as_str())
        .record(started.elapsed().as_secs_f64());
    let Some(outcome) = outcome else {
        run.finish();
        warn!("Lease lost while running; another attempt owns the job now.");
        return Err(AttemptEnded(label).into());
    };
    if let Outcome::Retry { error, .. } | Outcome::Failed(error) = &outcome {
        warn!(error = %error, "Attempt failed.");
    }
    let recorded = rt.record(run.completion(outcome)).await;
    run.finish();
    match recorded {
        Some(Some(st)) => debug!(status = %st, "Job attempt recorded."),
        Some(None) => warn!("Outcome not recorded: the lease had moved on."),
        None => warn!(
            "Outcome not recorded (redis unreachable); the lease will expire and the job run again."
        ),
    }
    if label == "succeeded" {
        Ok(())
    } else {
        Err(AttemptEnded(label).into())
    }
}

/// While a handler runs the running gauge is up; also when the attempt itself is dropped (the
/// Monitor's last resort), which drops its flusher with it.
struct HandlerRunning;

impl HandlerRunning {
    fn new() -> Self {
        metrics::gauge!(m::JOBS_RUNNING).increment(1.0);
        HandlerRunning
    }
}

impl Drop for HandlerRunning {
    fn drop(&mut self) {
        metrics::gauge!(m::JOBS_RUNNING).decrement(1.0);
    }
}

/// Reported to apalis for an attempt that did not succeed (its transition is already recorded).
#[derive(Debug, thiserror::Error)]
#[error("attempt ended: {0}")]
struct AttemptEnded(&'static str);

/// What an error from the handler stack means for the job.
fn classify(e: BoxDynError, timeout: Duration) -> Ended {
    let e = match e.downcast::<JobError>() {
        Ok(j) => return Ended::Returned(Err(*j)),
        Err(e) => e,
    };
    if e.is::<tower::timeout::error::Elapsed>() {
        return Ended::TimedOut(timeout);
    }
    let msg = match e.downcast::<PanicError>() {
        Ok(p) => format!("handler panicked: {}", p.0),
        Err(e) => e.to_string(),
    };
    Ended::Returned(Err(JobError::Transient(msg)))
}

fn label(o: Option<&Outcome>) -> &'static str {
    match o {
        None => "lost",
        Some(Outcome::Succeeded(_)) => "succeeded",
        Some(Outcome::Failed(_)) => "failed",
        Some(Outcome::Retry { .. }) => "retry",
        Some(Outcome::Cancelled(_)) => "cancelled",
        Some(Outcome::Requeue) => "requeued",
    }
}

/// The panic's message, as the old pool reported it.
fn panic_message(p: &Box<dyn Any + Send>) -> PanicError {
    PanicError(
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into()),
    )
}

/// The job's span, made once at admission: [`JobLayer`]'s own lines and the handler's share it.
fn job_span(task: &Task<JobKind>) -> Span {
    task.data()
        .get::<RunRef>()
        .map(|r| r.0.span.clone())
        .unwrap_or_else(Span::none)
}

/// Register the apalis worker of `kind` on `monitor`: [`KindBackend`] over `rx`, the user
/// layers (timeout, span, panic capture) and `handler`, which takes `Data<JobContext>`.
pub(crate) fn register<H, Fut>(
    monitor: Monitor,
    name: String,
    rx: Rx,
    timeout: Duration,
    handler: H,
) -> Monitor
where
    H: FnMut(JobKind, Data<JobContext>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<serde_json::Value, JobError>> + Send + 'static,
{
    monitor.register(move |_restarts| {
        WorkerBuilder::new(name.as_str())
            .backend(KindBackend::new(rx.clone()))
            .layer(TimeoutLayer::new(timeout))
            .layer(
                TraceLayer::new()
                    .make_span_with(job_span as fn(&Task<JobKind>) -> Span)
                    .on_request(|_: &Task<JobKind>, _: &Span| debug!("Job started."))
                    // JobLayer logs the outcome once it is decided.
                    .on_response(())
                    .on_failure(()),
            )
            .layer(CatchPanicLayer::with_panic_handler(
                panic_message as fn(&Box<dyn Any + Send>) -> PanicError,
            ))
            .build(handler.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use queue::testing;
    use queue::{CancelOutcome, Diagnostic, NewJob};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_backend_requeues_jobs_it_never_started_without_an_attempt() {
        let q = Queue::new(testing::config("unstarted")).unwrap();
        let waiting = q
            .enqueue(NewJob::typed(&Diagnostic::default()))
            .await
            .unwrap()
            .id;
        let cancelled = q
            .enqueue(NewJob::typed(&Diagnostic::default()))
            .await
            .unwrap()
            .id;
        let batch = q.claim("w", &[JobKind::Diagnostic], 2).await.unwrap();
        assert_eq!(batch.jobs.len(), 2);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let completer = tokio::spawn(crate::pool::completer(
            q.clone(),
            done_rx,
            stop.clone(),
            None,
        ));
        let rt = Rt::new(q.clone(), PoolConfig::default(), Table::default(), done_tx);
        let (tx, rx) = mpsc::unbounded_channel();
        for job in batch.jobs {
            tx.send(rt.admit(job)).unwrap();
        }
        assert_eq!(rt.running(), 2);
        assert_eq!(
            rt.table.lock().unwrap().len(),
            2,
            "leases renewed while waiting"
        );
        // A cancel reaches one of them while it waits (as the listener would deliver it).
        assert_eq!(
            q.cancel(&cancelled).await.unwrap(),
            CancelOutcome::Cancelling
        );
        for l in rt
            .table
            .lock()
            .unwrap()
            .values()
            .filter(|l| l.id == cancelled)
        {
            l.stop(STOP_CANCEL);
        }
        // The worker shuts down before taking them.
        let mut backend = KindBackend::new(Arc::new(Mutex::new(rx)));
        let worker = WorkerContext::new("test");
        futures::future::poll_fn(|cx| backend.poll_close(cx, &worker))
            .await
            .unwrap();
        assert_eq!(rt.running(), 0, "slots freed");
        assert!(rt.table.lock().unwrap().is_empty(), "leases released");
        let j = q.get(&waiting).await.unwrap();
        assert_eq!(j.status, JobStatus::Queued);
        assert_eq!(j.attempts, 0);
        let j = q.get(&cancelled).await.unwrap();
        assert_eq!(j.status, JobStatus::Cancelled);
        stop.cancel();
        completer.await.unwrap();
        q.cancel(&waiting).await.unwrap();
    }

    #[test]
    fn errors_of_the_layers_map_to_job_errors() {
        let t = Duration::from_secs(7);
        let e: BoxDynError = Box::new(JobError::Permanent("bad".into()));
        assert!(
            matches!(classify(e, t), Ended::Returned(Err(JobError::Permanent(m))) if m == "bad")
        );
        let e: BoxDynError = Box::<tower::timeout::error::Elapsed>::default();
        assert!(matches!(classify(e, t), Ended::TimedOut(d) if d == t));
        let transient = |e: BoxDynError| match classify(e, t) {
            Ended::Returned(Err(JobError::Transient(m))) => m,
            _ => panic!("not a transient failure"),
        };
        assert_eq!(
            transient(Box::new(PanicError("boom".into()))),
            "handler panicked: boom"
        );
        assert_eq!(transient("something else".into()), "something else");
    }
}
