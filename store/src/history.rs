//! Job history: finished jobs, archived from Redis before Redis forgets them (DESIGN §10).
//!
//! The archiver (in `api`) reads finished jobs after a watermark and calls
//! [`Store::archive_jobs`], which upserts the jobs **and** moves the watermark in one
//! transaction. A crash before the commit archives nothing and moves nothing (the next pass does
//! it again); a crash after it leaves the jobs archived and the watermark past them. An upsert by
//! id means a job archived twice (say, finished again after a retry) is one row, never two.

use crate::{get_opt_str, Result, Store};
use serde_json::Value;
use sqlx::Row;

/// One finished job.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryRow {
    /// Job id (a ULID: sorts by creation).
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Final status.
    pub status: String,
    /// Account.
    pub account: Option<String>,
    /// Reseller.
    pub reseller: Option<String>,
    /// Finish time, Unix ms.
    pub finished_at: i64,
    /// The whole job object (DESIGN §3 shape), secrets already removed.
    pub doc: Value,
}

/// History list filters; newest first, keyset on id.
#[derive(Clone, Debug, Default)]
pub struct HistoryFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Only this account.
    pub account: Option<String>,
    /// Only this reseller's.
    pub reseller: Option<String>,
    /// Ids strictly below this one.
    pub before: Option<String>,
    /// Page size.
    pub limit: i64,
}

impl Store {
    /// The archive watermark `(finish time ms, last id)` called `name`.
    pub async fn archive_mark(&self, name: &str) -> Result<(i64, String)> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT score, last FROM archive_marks WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.unwrap_or((0, String::new())))
    }

    /// Upsert `rows` and move watermark `name` to `mark`, atomically.
    pub async fn archive_jobs(
        &self,
        name: &str,
        rows: &[HistoryRow],
        mark: (i64, &str),
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO job_history (id, kind, status, account, reseller, finished_at, doc) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, finished_at = excluded.finished_at, doc = excluded.doc",
            )
            .bind(&r.id)
            .bind(&r.kind)
            .bind(&r.status)
            .bind(r.account.clone())
            .bind(r.reseller.clone())
            .bind(r.finished_at)
            .bind(r.doc.to_string())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO archive_marks (name, score, last) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET score = excluded.score, last = excluded.last",
        )
        .bind(name)
        .bind(mark.0)
        .bind(mark.1)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One archived job.
    pub async fn history_job(&self, id: &str) -> Result<Option<Value>> {
        let row = sqlx::query("SELECT doc FROM job_history WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| Ok(serde_json::from_str(&r.try_get::<String, _>("doc")?)?))
            .transpose()
    }

    /// Archived jobs, newest first (by id), `limit` at most.
    pub async fn list_history(&self, f: &HistoryFilter) -> Result<Vec<HistoryRow>> {
        let mut sql = String::from(
            "SELECT id, kind, status, account, reseller, finished_at, doc FROM job_history WHERE id < $1",
        );
        let mut binds: Vec<&str> = Vec::new();
        for (col, v) in [
            ("kind", &f.kind),
            ("status", &f.status),
            ("account", &f.account),
            ("reseller", &f.reseller),
        ] {
            if let Some(v) = v {
                binds.push(v);
                sql.push_str(&format!(" AND {col} = ${}", binds.len() + 1));
            }
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", binds.len() + 2));
        let mut q = sqlx::query(&sql).bind(f.before.clone().unwrap_or_else(|| "~".into()));
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.bind(f.limit).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryRow {
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    status: r.try_get("status")?,
                    account: get_opt_str(r, "account")?,
                    reseller: get_opt_str(r, "reseller")?,
                    finished_at: r.try_get("finished_at")?,
                    doc: serde_json::from_str(&r.try_get::<String, _>("doc")?)?,
                })
            })
            .collect()
    }

    /// Forget jobs that finished before `cutoff_ms` (history retention). Returns how many.
    pub async fn purge_history(&self, cutoff_ms: i64) -> Result<u64> {
        let n = sqlx::query("DELETE FROM job_history WHERE finished_at < $1")
            .bind(cutoff_ms)
            .execute(self.pool())
            .await?;
        Ok(n.rows_affected())
    }
}
