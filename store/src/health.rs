//! Migrations and their health reports (DESIGN §12).
//!
//! A **migration** is a restore that finished: the restore handler records its account, the
//! archive and its summary (counts, and what it did not restore and why), so that a
//! `health_check` run later — 30 s after the restore, or whenever someone asks — compares the
//! account with the archive it came from and knows which checks cannot apply yet. A **health
//! report** is one check's result (score and the report JSON); the newest one of a migration is
//! what `GET /api/migration/{id}/health` shows. Reports older than [`HEALTH_KEEP_DAYS`] are
//! dropped by the retention job.

use crate::error::Result;
use crate::{now_ms, Store};
use serde::Serialize;
use sqlx::Row;

/// How long health reports are kept.
pub const HEALTH_KEEP_DAYS: i64 = 30;

/// A restore that finished.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Migration {
    /// The restore job's id.
    pub id: String,
    pub account: String,
    /// The archive's path on the server.
    pub archive: String,
    pub restored_at: chrono::DateTime<chrono::Utc>,
    /// The restore's result.
    pub summary: serde_json::Value,
}

/// One health check's report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthReportRow {
    /// The health-check job's id.
    pub id: String,
    pub migration_id: String,
    pub account: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub score: i64,
    pub report: serde_json::Value,
}

impl Store {
    /// Record (or record again, for a retried restore) a finished restore.
    pub async fn record_migration(
        &self,
        id: &str,
        account: &str,
        archive: &str,
        summary: &serde_json::Value,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO migrations (id, account, archive, restored_at, summary) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET account = excluded.account, archive = excluded.archive, \
             restored_at = excluded.restored_at, summary = excluded.summary",
        )
        .bind(id)
        .bind(account)
        .bind(archive)
        .bind(now_ms())
        .bind(summary.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The migration `id`, if a restore of that id finished.
    pub async fn migration(&self, id: &str) -> Result<Option<Migration>> {
        let row = sqlx::query(
            "SELECT id, account, archive, restored_at, summary FROM migrations WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(Migration {
                id: r.try_get(0)?,
                account: r.try_get(1)?,
                archive: r.try_get(2)?,
                restored_at: ms_to_time(r.try_get::<i64, _>(3)?),
                summary: serde_json::from_str(&r.try_get::<String, _>(4)?)
                    .unwrap_or(serde_json::Value::Null),
            })
        })
        .transpose()
    }

    /// Store a health report (a retried check writes its row again).
    pub async fn add_health_report(
        &self,
        id: &str,
        migration_id: &str,
        account: &str,
        score: i64,
        report: &serde_json::Value,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO health_reports (id, migration_id, account, created_at, score, report) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at, score = excluded.score, report = excluded.report",
        )
        .bind(id)
        .bind(migration_id)
        .bind(account)
        .bind(now_ms())
        .bind(score)
        .bind(report.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The newest health report of a migration.
    pub async fn latest_health_report(
        &self,
        migration_id: &str,
    ) -> Result<Option<HealthReportRow>> {
        let row = sqlx::query(
            "SELECT id, migration_id, account, created_at, score, report FROM health_reports \
             WHERE migration_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(migration_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(HealthReportRow {
                id: r.try_get(0)?,
                migration_id: r.try_get(1)?,
                account: r.try_get(2)?,
                created_at: ms_to_time(r.try_get::<i64, _>(3)?),
                score: r.try_get(4)?,
                report: serde_json::from_str(&r.try_get::<String, _>(5)?)
                    .unwrap_or(serde_json::Value::Null),
            })
        })
        .transpose()
    }

    /// Drop migrations restored before `before` (Unix ms; the retention job passes the job
    /// history's horizon): their health can no longer be checked. How many.
    pub async fn prune_migrations(&self, before: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM migrations WHERE restored_at < $1")
            .bind(before)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected())
    }

    /// Drop health reports made before `before` (Unix ms); how many.
    pub async fn prune_health_reports(&self, before: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM health_reports WHERE created_at < $1")
            .bind(before)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected())
    }
}

fn ms_to_time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use crate::now_ms;

    #[tokio::test]
    async fn migrations_and_reports_round_trip_and_old_reports_go() {
        for t in crate::testing::all().await {
            let store = &t.store;
            let summary = serde_json::json!({"files": 3, "skipped": [{"what": "databases"}]});
            store
                .record_migration("r1", "alice", "/srv/cpmove-alice.tar.gz", &summary)
                .await
                .unwrap();
            let m = store.migration("r1").await.unwrap().unwrap();
            assert_eq!((m.account.as_str(), m.summary.clone()), ("alice", summary));
            assert!(store.migration("r2").await.unwrap().is_none());
            assert!(store.latest_health_report("r1").await.unwrap().is_none());
            store
                .add_health_report("h1", "r1", "alice", 80, &serde_json::json!({"score": 80}))
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            store
                .add_health_report("h2", "r1", "alice", 100, &serde_json::json!({"score": 100}))
                .await
                .unwrap();
            let h = store.latest_health_report("r1").await.unwrap().unwrap();
            assert_eq!((h.id.as_str(), h.score), ("h2", 100));
            assert_eq!(h.report["score"], 100);
            let gone = store.prune_health_reports(now_ms() + 1).await.unwrap();
            assert_eq!(gone, 2);
            assert!(store.latest_health_report("r1").await.unwrap().is_none());
            assert_eq!(store.prune_migrations(now_ms() + 1).await.unwrap(), 1);
            assert!(store.migration("r1").await.unwrap().is_none());
        }
    }
}
