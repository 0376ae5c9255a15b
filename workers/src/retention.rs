//! The `retention` handler: the store forgets finished jobs after `history_days` and audit
//! records after `audit_days` (DESIGN §10: 90 days and 2 years by default), post-migration
//! health reports after 30 days (DESIGN §12). The scheduler
//! enqueues it daily; it is idempotent, so a repeat or a retry does no harm.

use crate::{JobContext, JobError};
use queue::Retention;
use serde_json::json;
use store::{Store, StoreError};

/// The defaults a payload may override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionDays {
    /// Finished jobs, days.
    pub history: u32,
    /// Audit records, days.
    pub audit: u32,
}

impl Default for RetentionDays {
    fn default() -> Self {
        RetentionDays {
            history: 90,
            audit: 730,
        }
    }
}

fn store_err(e: StoreError) -> JobError {
    match e {
        StoreError::Unavailable(m) => JobError::Transient(m),
        other => JobError::Permanent(other.to_string()),
    }
}

/// Run one retention pass.
pub async fn run(
    ctx: JobContext,
    store: Store,
    days: RetentionDays,
) -> Result<serde_json::Value, JobError> {
    let p: Retention = ctx.payload()?;
    let history = p.history_days.unwrap_or(days.history).max(1);
    let audit = p.audit_days.unwrap_or(days.audit).max(1);
    let day_ms = 86_400_000i64;
    let now = store::now_ms();
    ctx.progress("history", 0, 2);
    let jobs = store
        .purge_history(now - i64::from(history) * day_ms)
        .await
        .map_err(store_err)?;
    ctx.log(format!(
        "removed {jobs} finished jobs older than {history} days"
    ));
    ctx.progress("audit", 1, 2);
    let records = store
        .purge_audit(now - i64::from(audit) * day_ms)
        .await
        .map_err(store_err)?;
    ctx.log(format!(
        "removed {records} audit records older than {audit} days"
    ));
    let reports = store
        .prune_health_reports(now - store::HEALTH_KEEP_DAYS * day_ms)
        .await
        .map_err(store_err)?;
    // Migrations as long as job history (a restore's record goes with its job).
    let migrations = store
        .prune_migrations(now - i64::from(history) * day_ms)
        .await
        .map_err(store_err)?;
    if migrations > 0 {
        ctx.log(format!(
            "removed {migrations} migrations restored over {history} days ago"
        ));
    }
    if reports > 0 {
        ctx.log(format!(
            "removed {reports} health reports older than {} days",
            store::HEALTH_KEEP_DAYS
        ));
    }
    // Verify what came since yesterday, so the chain is checked daily and an admin's
    // `GET /api/audit/verify` only walks today's records.
    let v = store.verify_audit_incremental().await.map_err(store_err)?;
    if v.ok {
        ctx.log(format!(
            "audit chain verified: {} new records, head {}",
            v.checked,
            v.head_hash.clone().unwrap_or_default()
        ));
    } else {
        tracing::error!(broken_at = ?v.broken_at, reason = ?v.reason, "The audit chain does not verify.");
        ctx.log(format!(
            "AUDIT CHAIN BROKEN at record {:?}: {}",
            v.broken_at,
            v.reason.clone().unwrap_or_default()
        ));
    }
    ctx.progress("audit", 2, 2);
    Ok(
        json!({"jobs_removed": jobs, "audit_records_removed": records, "health_reports_removed": reports,
        "history_days": history, "audit_days": audit,
        "audit_chain_ok": v.ok, "audit_broken_at": v.broken_at}),
    )
}
