//! Metric names: a contract with `dashboards/`. Labels are low-cardinality (kind, status), never
//! a job id or account.

/// Jobs accepted, by `kind`.
pub const JOBS_ENQUEUED_TOTAL: &str = "npanel_jobs_enqueued_total";
/// Enqueues refused because the bound was reached.
pub const QUEUE_FULL_TOTAL: &str = "npanel_queue_full_total";
/// Jobs that reached a final state, by `kind` and `status`.
pub const JOBS_FINISHED_TOTAL: &str = "npanel_jobs_finished_total";
/// Leases that expired (worker lost) and were handled by the reaper.
pub const LEASES_EXPIRED_TOTAL: &str = "npanel_leases_expired_total";
/// Waits answered "pending" at once because every wait connection was taken.
pub const WAITS_BUSY_TOTAL: &str = "npanel_waits_busy_total";
