//! The `diagnostic` handler: an admin smoke test that exercises the whole path (claim, progress,
//! events, retries, completion). It sleeps `duration_ms` in `steps` steps, reporting progress
//! after each, and fails its first `fail_attempts` attempts.

use crate::{JobContext, JobError};
use queue::Diagnostic;
use serde_json::json;
use std::time::Duration;

/// Run one diagnostic job.
pub async fn run(ctx: JobContext) -> Result<serde_json::Value, JobError> {
    let p: Diagnostic = ctx.payload()?;
    let steps = p.steps.max(1);
    let step = Duration::from_millis(p.duration_ms) / steps;
    if p.steps > 0 {
        ctx.progress("sleeping", 0, u64::from(steps));
    }
    for i in 1..=steps {
        if !step.is_zero() {
            ctx.sleep(step).await?;
        }
        if p.steps > 0 {
            ctx.progress("sleeping", u64::from(i), u64::from(steps));
        }
    }
    if ctx.attempt <= p.fail_attempts {
        return Err(JobError::Transient(format!(
            "diagnostic told to fail attempt {} (fails the first {})",
            ctx.attempt, p.fail_attempts
        )));
    }
    Ok(json!({"slept_ms": p.duration_ms, "steps": p.steps, "attempt": ctx.attempt}))
}
