//! Cron schedules that enqueue jobs (DESIGN §7).
//!
//! Any number of processes may run a [`Scheduler`]; each tick fires exactly once:
//! - a **leader lock** (`np:{name}:sched:leader`, renewed while held) means only one instance
//!   evaluates schedules at a time;
//! - a **per-tick dedup key** (`sched:tick:<name>:<unix>` set NX) plus an idempotency key on the
//!   enqueue guard the hand-over between leaders;
//! - the **last run** of each schedule is stored in Redis, so a tick missed while everything was
//!   down fires **once** on start (not once per missed tick). A schedule never seen before
//!   starts from now and fires nothing in the past.
//!
//! The scheduler owns timing only; what a job does belongs to its handler in `workers`.

use chrono::{DateTime, TimeZone, Utc};
use queue::{JobKind, NewJob, Queue, QueueError};
use serde::Serialize;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// One schedule.
#[derive(Clone, Debug, Serialize)]
pub struct ScheduleSpec {
    /// Stable name (keys are derived from it).
    pub name: String,
    /// Cron expression with seconds: `sec min hour day-of-month month day-of-week`.
    pub cron: String,
    /// Kind to enqueue.
    pub kind: JobKind,
    /// Payload to enqueue; `tick` (unix seconds) is added for `quota_sweep`.
    pub payload: serde_json::Value,
    /// Disabled schedules are listed but never fire.
    pub enabled: bool,
    /// Why it is disabled, or any other note for operators.
    pub note: Option<String>,
}

/// The schedules that ship with nPanel.
pub fn builtin() -> Vec<ScheduleSpec> {
    vec![
        ScheduleSpec {
            name: "retention".into(),
            cron: "0 30 3 * * *".into(),
            kind: JobKind::Retention,
            payload: serde_json::json!({}),
            enabled: true,
            note: Some(
                "daily: job history past store.history_days, audit records past store.audit_days"
                    .into(),
            ),
        },
        ScheduleSpec {
            name: "quota_sweep".into(),
            cron: "0 0 * * * *".into(),
            kind: JobKind::QuotaSweep,
            payload: serde_json::json!({}),
            enabled: true,
            note: Some(
                "hourly: every hosted account's disk, bandwidth and mail into the usage series"
                    .into(),
            ),
        },
    ]
}

/// Scheduler errors.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A cron expression does not parse.
    #[error("schedule {name:?} has an invalid cron expression {cron:?}: {reason}")]
    BadCron {
        /// Schedule name.
        name: String,
        /// The expression.
        cron: String,
        /// Parser message.
        reason: String,
    },
    /// Redis trouble.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What `npanel schedules` shows.
#[derive(Clone, Debug, Serialize)]
pub struct ScheduleStatus {
    /// Name.
    pub name: String,
    /// Cron expression.
    pub cron: String,
    /// Kind.
    pub kind: JobKind,
    /// Enabled.
    pub enabled: bool,
    /// Note.
    pub note: Option<String>,
    /// Last tick that fired.
    pub last_run: Option<DateTime<Utc>>,
    /// Next tick.
    pub next_run: Option<DateTime<Utc>>,
}

/// A tick that fired.
#[derive(Clone, Debug, PartialEq)]
pub struct Fired {
    /// Schedule name.
    pub schedule: String,
    /// The tick.
    pub tick: DateTime<Utc>,
    /// The job enqueued.
    pub job_id: String,
}

type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Runs schedules against one queue.
pub struct Scheduler {
    queue: Queue,
    schedules: Vec<(ScheduleSpec, cron::Schedule)>,
    instance: String,
    lock_ttl: Duration,
    clock: Clock,
}

impl Scheduler {
    /// A scheduler for `specs`. Every cron expression is checked here.
    pub fn new(queue: Queue, specs: Vec<ScheduleSpec>) -> Result<Scheduler, SchedulerError> {
        let mut schedules = Vec::new();
        for s in specs {
            let parsed =
                cron::Schedule::from_str(&s.cron).map_err(|e| SchedulerError::BadCron {
                    name: s.name.clone(),
                    cron: s.cron.clone(),
                    reason: e.to_string(),
                })?;
            schedules.push((s, parsed));
        }
        Ok(Scheduler {
            queue,
            schedules,
            instance: ulid::Ulid::new().to_string(),
            lock_ttl: Duration::from_secs(10),
            clock: Arc::new(Utc::now),
        })
    }

    /// Use another clock (tests).
    pub fn with_clock(mut self, clock: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long the leader lock lasts without renewal (default 10 s).
    pub fn with_lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// Take or renew the leader lock.
    pub async fn lead(&self) -> Result<bool, SchedulerError> {
        Ok(self
            .queue
            .hold_leader(&self.instance, self.lock_ttl)
            .await?)
    }

    async fn last_run(&self, name: &str) -> Result<Option<i64>, SchedulerError> {
        Ok(self.queue.schedule_last(name).await?)
    }

    /// Evaluate every schedule once (if this instance leads). Returns what fired.
    pub async fn tick(&self) -> Result<Vec<Fired>, SchedulerError> {
        if !self.lead().await? {
            return Ok(Vec::new());
        }
        let now = (self.clock)();
        let mut fired = Vec::new();
        for (spec, sched) in &self.schedules {
            if !spec.enabled {
                continue;
            }
            let Some(last) = self.last_run(&spec.name).await? else {
                // First time this schedule is seen: start from now, fire nothing in the past.
                self.queue
                    .set_schedule_last(&spec.name, now.timestamp(), true)
                    .await?;
                continue;
            };
            let from = Utc.timestamp_opt(last, 0).single().unwrap_or(now);
            // The latest tick in (last, now]: missed ticks collapse into one run.
            let Some(due) = sched.after(&from).take_while(|t| *t <= now).last() else {
                continue;
            };
            if !self
                .queue
                .claim_tick(&spec.name, due.timestamp(), &self.instance)
                .await?
            {
                continue;
            }
            let mut payload = spec.payload.clone();
            if spec.kind == JobKind::QuotaSweep {
                if let Some(obj) = payload.as_object_mut() {
                    obj.insert("tick".into(), due.timestamp().into());
                }
            }
            let job = NewJob::new(spec.kind, payload).idempotency_key(format!(
                "sched:{}:{}",
                spec.name,
                due.timestamp()
            ));
            match self.queue.enqueue(job).await {
                Ok(e) => {
                    self.queue
                        .set_schedule_last(&spec.name, due.timestamp(), false)
                        .await?;
                    info!(schedule = %spec.name, tick = %due, job_id = %e.id, "Schedule fired.");
                    fired.push(Fired {
                        schedule: spec.name.clone(),
                        tick: due,
                        job_id: e.id,
                    });
                }
                Err(e) => {
                    // Let the next evaluation try the same tick again.
                    self.queue.release_tick(&spec.name, due.timestamp()).await?;
                    warn!(schedule = %spec.name, tick = %due, error = %e, "Schedule could not enqueue; will retry.");
                }
            }
        }
        Ok(fired)
    }

    /// Last and next runs of every schedule.
    pub async fn status(&self) -> Result<Vec<ScheduleStatus>, SchedulerError> {
        let now = (self.clock)();
        let mut out = Vec::new();
        for (spec, sched) in &self.schedules {
            let last = self.last_run(&spec.name).await?;
            out.push(ScheduleStatus {
                name: spec.name.clone(),
                cron: spec.cron.clone(),
                kind: spec.kind,
                enabled: spec.enabled,
                note: spec.note.clone(),
                last_run: last.and_then(|l| Utc.timestamp_opt(l, 0).single()),
                next_run: if spec.enabled {
                    sched.after(&now).next()
                } else {
                    None
                },
            });
        }
        Ok(out)
    }

    /// Evaluate until `shutdown`, sleeping until the next tick (or the lock renewal, whichever
    /// is sooner); then give up the leader lock.
    pub async fn run(self, shutdown: CancellationToken) {
        let enabled = self.schedules.iter().filter(|(s, _)| s.enabled).count();
        info!(
            schedules = self.schedules.len(),
            enabled, "Scheduler started."
        );
        let mut backoff = Duration::from_millis(200);
        loop {
            let wait = match self.tick().await {
                Ok(_) => {
                    backoff = Duration::from_millis(200);
                    self.until_next()
                }
                Err(e) => {
                    warn!(error = %e, "Scheduler could not evaluate; retrying.");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        let _ = self.release().await;
        info!("Scheduler stopped.");
    }

    /// Give up the leader lock if this instance holds it.
    pub async fn release(&self) -> Result<(), SchedulerError> {
        Ok(self.queue.release_leader(&self.instance).await?)
    }

    fn until_next(&self) -> Duration {
        let now = (self.clock)();
        let mut wait = self.lock_ttl / 3;
        for (spec, sched) in &self.schedules {
            if !spec.enabled {
                continue;
            }
            if let Some(next) = sched.after(&now).next() {
                let d = (next - now).to_std().unwrap_or_default() + Duration::from_millis(5);
                wait = wait.min(d);
            }
        }
        wait.max(Duration::from_millis(5))
    }
}
