//! Metric names (a contract with `dashboards/`). Labels: `kind`, `outcome`; never ids.

/// Attempts that ended, by `kind` and `outcome` (succeeded, failed, retry, cancelled, requeued, lost).
pub const JOB_ATTEMPTS_TOTAL: &str = "npanel_job_attempts_total";
/// Wall time of an attempt in seconds, by `kind`.
pub const JOB_DURATION_SECONDS: &str = "npanel_job_duration_seconds";
/// Jobs running in this process.
pub const JOBS_RUNNING: &str = "npanel_worker_jobs_running";
