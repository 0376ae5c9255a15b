//! What a handler sees: its job, progress reporting, cancellation, and child processes.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use queue::{JobKind, Progress};
use serde::de::DeserializeOwned;
use std::process::ExitStatus;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a handler says an attempt failed. Retry decisions live here, in one place.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Will never succeed: no retry.
    #[error("{0}")]
    Permanent(String),
    /// Retry after the given delay (still bounded by `max_attempts`).
    #[error("{1} (retry after {0:?})")]
    RetryAfter(Duration, String),
    /// Retry with the pool's exponential backoff.
    #[error("{0}")]
    Transient(String),
    /// The handler stopped because it was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// A running job, as its handler sees it.
#[derive(Clone, Debug)]
pub struct JobContext {
    /// Job id.
    pub id: String,
    /// Kind.
    pub kind: JobKind,
    /// Raw payload (see [`JobContext::payload`]).
    pub raw_payload: serde_json::Value,
    /// This attempt, from 1.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Account, if any.
    pub account: Option<String>,
    pub(crate) progress: Progress,
    pub(crate) cancel: CancellationToken,
}

/// Grace between SIGTERM and SIGKILL for a cancelled job's processes.
const KILL_GRACE: Duration = Duration::from_millis(500);

impl JobContext {
    /// The payload as its type.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_value(self.raw_payload.clone())
            .map_err(|e| JobError::Permanent(format!("bad payload: {e}")))
    }

    /// Report `done` of `total` units in `stage` (cheap; written at most once a second, stage
    /// changes at once).
    pub fn progress(&self, stage: &str, done: u64, total: u64) {
        self.progress.report(stage, done, total);
    }

    /// Report progress whose time the handler predicts (see [`queue::Progress::report_time`]):
    /// units for speed and display, `spent` and `left` seconds for percent and ETA.
    pub fn progress_time(&self, stage: &str, done: u64, total: u64, spent: f64, left: f64) {
        self.progress.report_time(stage, done, total, spent, left);
    }

    /// Add a log line to the job.
    pub fn log(&self, line: impl Into<String>) {
        self.progress.log(line);
    }

    /// True once the job was cancelled (or the worker is shutting down hard).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the job is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Sleep, returning `Err(Cancelled)` early if the job is cancelled.
    pub async fn sleep(&self, d: Duration) -> Result<(), JobError> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancel.cancelled() => Err(JobError::Cancelled),
        }
    }

    /// Run a command in its own process group. If the job is cancelled (or this future is
    /// dropped), the whole group gets SIGTERM, then SIGKILL after a short grace, so nothing
    /// the command spawned outlives the job.
    pub async fn run_command(
        &self,
        mut cmd: tokio::process::Command,
    ) -> Result<ExitStatus, JobError> {
        cmd.process_group(0).kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| JobError::Transient(format!("could not start command: {e}")))?;
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        let guard = GroupGuard(pgid);
        tokio::select! {
            st = child.wait() => {
                let st = st.map_err(|e| JobError::Transient(format!("command wait: {e}")))?;
                // The leader exited; anything it left behind in its group goes too.
                drop(guard);
                Ok(st)
            }
            _ = self.cancel.cancelled() => {
                if let Some(pg) = pgid {
                    let _ = killpg(pg, Signal::SIGTERM);
                    let _ = tokio::time::timeout(KILL_GRACE, child.wait()).await;
                }
                drop(guard);
                let _ = child.wait().await;
                Err(JobError::Cancelled)
            }
        }
    }
}

/// SIGKILLs a process group when dropped.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pg) = self.0 {
            let _ = killpg(pg, Signal::SIGKILL);
        }
    }
}
