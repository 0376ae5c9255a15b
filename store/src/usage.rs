//! The usage time series the quota sweep writes (DESIGN §13): what each account used, per hour
//! for 30 days, then per day for two years.
//!
//! - **A row per account and period** (`usage_samples`, key `(account, step, at)`): disk,
//!   files, database bytes and addon domains as measured; bandwidth and mail as what the period
//!   added. Writing the same hour again replaces it, so a sweep that is retried after its worker
//!   died writes each account once, and [`Store::usage_measured_at`] tells it which accounts
//!   are done already.
//! - **Reading any step** is one `GROUP BY` over both hourly and daily rows: the bucket's
//!   largest disk figure and the sum of its traffic. A year of hourly rows is at most 8 760
//!   rows of one account, read by the primary key.
//! - **Roll-up** ([`Store::roll_up_usage`]) turns whole days older than 30 days into one row
//!   each and drops everything older than two years.
//! - **Log cursors** (`usage_cursors`): how far the sweep has counted each log, by inode and
//!   offset, so bandwidth and mail are counted once.

use crate::{now_ms, Result, Store};
use serde::Serialize;
use sqlx::Row;
use std::collections::{HashMap, HashSet};

/// One hour, in ms: the step of the rows the sweep writes.
pub const HOUR_MS: i64 = 3_600_000;
/// One day, in ms: the step of rolled-up rows.
pub const DAY_MS: i64 = 86_400_000;
/// Hourly rows are kept this long, then rolled up into days.
pub const HOURLY_KEEP_MS: i64 = 30 * DAY_MS;
/// Nothing older is kept.
pub const USAGE_KEEP_MS: i64 = 730 * DAY_MS;

/// What one account used in one hour, as the sweep measured it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageSample {
    pub account: String,
    /// Start of the hour, Unix ms (a multiple of [`HOUR_MS`]).
    pub at: i64,
    pub disk_bytes: i64,
    pub disk_files: i64,
    /// Bytes served since the previous sweep.
    pub bandwidth_bytes: i64,
    /// Messages sent since the previous sweep.
    pub mail_sent: i64,
    /// Database bytes, where they could be measured.
    pub db_bytes: Option<i64>,
    pub addon_domains: i64,
    /// When it was measured, Unix ms.
    pub measured_at: i64,
}

/// One bucket of a usage series.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsagePoint {
    /// Start of the bucket.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The largest disk use measured in it.
    pub disk_bytes: i64,
    pub disk_files: i64,
    /// Bytes served in it.
    pub bandwidth_bytes: i64,
    /// Messages sent in it.
    pub mail_sent: i64,
    pub db_bytes: Option<i64>,
    pub addon_domains: i64,
}

/// An account's usage now: the last measurement, and this month's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageNow {
    pub disk_bytes: i64,
    pub disk_files: i64,
    pub db_bytes: Option<i64>,
    pub addon_domains: i64,
    /// Bytes served since the start of the month (UTC).
    pub bandwidth_month_bytes: i64,
    /// Messages sent since the start of the month (UTC).
    pub mail_month: i64,
    /// Messages counted in the last measurement (sent since the one before it: about an hour).
    pub mail_last: i64,
    /// The hour (Unix ms) of the last measurement.
    pub measured_hour: i64,
    /// When the last measurement was made.
    pub measured_at: chrono::DateTime<chrono::Utc>,
}

fn ms_to_time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Move the cursor of the log `source` to (`inode`, `pos`), inside `tx`.
pub(crate) async fn upsert_cursor(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    source: &str,
    inode: u64,
    pos: u64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO usage_cursors (source, inode, pos, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (source) DO UPDATE SET inode = excluded.inode, pos = excluded.pos, updated_at = excluded.updated_at",
    )
    .bind(source)
    .bind(inode as i64)
    .bind(pos as i64)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn override_from_row(r: &sqlx::any::AnyRow) -> Result<UsageOverride> {
    Ok(UsageOverride {
        account: r.try_get(0)?,
        disk_mb: r.try_get::<Option<i64>, _>(1)?.map(|v| v as u64),
        bandwidth_mb: r.try_get::<Option<i64>, _>(2)?.map(|v| v as u64),
        grace_until: r.try_get::<Option<i64>, _>(3)?.map(ms_to_time),
        reason: r.try_get(4)?,
        updated_at: ms_to_time(r.try_get::<i64, _>(5)?),
    })
}

fn pending_seen(bw: i64, mail: i64) -> bool {
    bw != 0 || mail != 0
}

/// Start of the UTC month holding `ms`.
pub fn month_start_ms(ms: i64) -> i64 {
    use chrono::Datelike;
    let t = ms_to_time(ms);
    chrono::NaiveDate::from_ymd_opt(t.year(), t.month(), 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc().timestamp_millis())
        .unwrap_or(0)
}

impl Store {
    /// Write hourly samples (one transaction; an hour written again is replaced).
    pub async fn record_usage(&self, samples: &[UsageSample]) -> Result<()> {
        self.write_samples(samples, false).await
    }

    /// Write hourly samples the sweep measured, each taking the traffic counted for its account
    /// since its last sample ([`Store::add_pending_usage`]) in the same transaction: an hour
    /// written again keeps the traffic it had and adds what was counted since.
    pub async fn record_usage_taking_pending(&self, samples: &[UsageSample]) -> Result<()> {
        self.write_samples(samples, true).await
    }

    async fn write_samples(&self, samples: &[UsageSample], take_pending: bool) -> Result<()> {
        // Traffic replaced (a sample as given) or added to (the sweep's, with its pending share).
        let traffic = if take_pending {
            "bandwidth_bytes = usage_samples.bandwidth_bytes + excluded.bandwidth_bytes, \
             mail_sent = usage_samples.mail_sent + excluded.mail_sent"
        } else {
            "bandwidth_bytes = excluded.bandwidth_bytes, mail_sent = excluded.mail_sent"
        };
        let sql = format!(
            "INSERT INTO usage_samples (account, step, at, disk_bytes, disk_files, bandwidth_bytes, mail_sent, db_bytes, addon_domains, measured_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (account, step, at) DO UPDATE SET disk_bytes = excluded.disk_bytes, disk_files = excluded.disk_files, \
             {traffic}, db_bytes = excluded.db_bytes, addon_domains = excluded.addon_domains, measured_at = excluded.measured_at"
        );
        let mut tx = self.write_tx().await?;
        for s in samples {
            let (mut bw, mut mail) = (0, 0);
            if take_pending {
                let pending = sqlx::query(
                    "DELETE FROM usage_pending WHERE account = $1 RETURNING bandwidth_bytes, mail_sent",
                )
                .bind(&s.account)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(r) = pending {
                    (bw, mail) = (r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?);
                }
            }
            sqlx::query(&sql)
                .bind(&s.account)
                .bind(HOUR_MS)
                .bind(s.at - s.at.rem_euclid(HOUR_MS))
                .bind(s.disk_bytes)
                .bind(s.disk_files)
                .bind(s.bandwidth_bytes + bw)
                .bind(s.mail_sent + mail)
                .bind(s.db_bytes)
                .bind(s.addon_domains)
                .bind(s.measured_at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Add traffic counted from the logs (account, bytes served, mails sent) to what waits for
    /// the accounts' next samples, and move the logs' cursors, in one transaction.
    pub async fn add_pending_usage(
        &self,
        deltas: &[(String, i64, i64)],
        cursors: &[(String, u64, u64)],
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for (account, bw, mail) in deltas.iter().filter(|d| pending_seen(d.1, d.2)) {
            sqlx::query(
                "INSERT INTO usage_pending (account, bandwidth_bytes, mail_sent) VALUES ($1, $2, $3) \
                 ON CONFLICT (account) DO UPDATE SET bandwidth_bytes = usage_pending.bandwidth_bytes + excluded.bandwidth_bytes, \
                 mail_sent = usage_pending.mail_sent + excluded.mail_sent",
            )
            .bind(account)
            .bind(*bw)
            .bind(*mail)
            .execute(&mut *tx)
            .await?;
        }
        for (source, inode, pos) in cursors {
            upsert_cursor(&mut tx, source, *inode, *pos).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The accounts that have an hourly sample at `at` already (a resumed sweep skips them).
    pub async fn usage_measured_at(&self, at: i64) -> Result<HashSet<String>> {
        let rows = sqlx::query("SELECT account FROM usage_samples WHERE step = $1 AND at = $2")
            .bind(HOUR_MS)
            .bind(at - at.rem_euclid(HOUR_MS))
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }

    /// `account`'s usage from `from` to `to` (Unix ms, `to` excluded) in buckets of `step_ms`
    /// (a whole number of hours), oldest first; buckets without a row are left out.
    pub async fn usage_series(
        &self,
        account: &str,
        from: i64,
        to: i64,
        step_ms: i64,
    ) -> Result<Vec<UsagePoint>> {
        let step_ms = step_ms.max(HOUR_MS);
        let rows = sqlx::query(
            "SELECT at - (at % $1) AS bucket, MAX(disk_bytes), MAX(disk_files), CAST(SUM(bandwidth_bytes) AS BIGINT), \
             CAST(SUM(mail_sent) AS BIGINT), MAX(db_bytes), MAX(addon_domains) \
             FROM usage_samples WHERE account = $2 AND at >= $3 AND at < $4 \
             GROUP BY 1 ORDER BY 1",
        )
        .bind(step_ms)
        .bind(account)
        .bind(from)
        .bind(to)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UsagePoint {
                    at: ms_to_time(r.try_get::<i64, _>(0)?),
                    disk_bytes: r.try_get::<i64, _>(1)?,
                    disk_files: r.try_get::<i64, _>(2)?,
                    bandwidth_bytes: r.try_get::<i64, _>(3)?,
                    mail_sent: r.try_get::<i64, _>(4)?,
                    db_bytes: r.try_get::<Option<i64>, _>(5)?,
                    addon_domains: r.try_get::<i64, _>(6)?,
                })
            })
            .collect()
    }

    /// The usage now of `accounts` (every measured account when `None`): the last hourly
    /// sample, and the traffic since the start of this UTC month. Accounts never measured are
    /// absent.
    pub async fn usage_now(
        &self,
        accounts: Option<&[String]>,
    ) -> Result<HashMap<String, UsageNow>> {
        self.usage_at(accounts, now_ms()).await
    }

    /// [`Store::usage_now`] as of `now_ms` (which month's traffic counts): the clock is the
    /// caller's, so a test is not at the mercy of a month turning mid-test.
    pub async fn usage_at(
        &self,
        accounts: Option<&[String]>,
        now_ms: i64,
    ) -> Result<HashMap<String, UsageNow>> {
        let filter = |col: &str, first: usize| match accounts {
            None => String::new(),
            Some(a) => {
                let marks: Vec<String> = (0..a.len()).map(|i| format!("${}", first + i)).collect();
                format!(" AND {col} IN ({})", marks.join(", "))
            }
        };
        if accounts.is_some_and(|a| a.is_empty()) {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT u.account, u.disk_bytes, u.disk_files, u.db_bytes, u.addon_domains, u.measured_at, u.mail_sent, u.at \
             FROM usage_samples u JOIN (SELECT account, MAX(at) AS at FROM usage_samples WHERE step = $1{} GROUP BY account) m \
             ON m.account = u.account AND m.at = u.at WHERE u.step = $2",
            filter("account", 3)
        );
        let mut q = sqlx::query(&sql).bind(HOUR_MS).bind(HOUR_MS);
        for a in accounts.unwrap_or_default() {
            q = q.bind(a);
        }
        let mut out = HashMap::new();
        for r in q.fetch_all(self.pool()).await? {
            out.insert(
                r.try_get::<String, _>(0)?,
                UsageNow {
                    disk_bytes: r.try_get::<i64, _>(1)?,
                    disk_files: r.try_get::<i64, _>(2)?,
                    db_bytes: r.try_get::<Option<i64>, _>(3)?,
                    addon_domains: r.try_get::<i64, _>(4)?,
                    bandwidth_month_bytes: 0,
                    mail_month: 0,
                    mail_last: r.try_get::<i64, _>(6)?,
                    measured_hour: r.try_get::<i64, _>(7)?,
                    measured_at: ms_to_time(r.try_get::<i64, _>(5)?),
                },
            );
        }
        let sql = format!(
            "SELECT account, CAST(SUM(bandwidth_bytes) AS BIGINT), CAST(SUM(mail_sent) AS BIGINT) FROM usage_samples WHERE at >= $1{} GROUP BY account",
            filter("account", 2)
        );
        let mut q = sqlx::query(&sql).bind(month_start_ms(now_ms));
        for a in accounts.unwrap_or_default() {
            q = q.bind(a);
        }
        for r in q.fetch_all(self.pool()).await? {
            let account = r.try_get::<String, _>(0)?;
            if let Some(u) = out.get_mut(&account) {
                u.bandwidth_month_bytes = r.try_get::<i64, _>(1)?;
                u.mail_month = r.try_get::<i64, _>(2)?;
            }
        }
        Ok(out)
    }

    /// The hour (Unix ms) of `account`'s hourly sample before `at`, if any.
    pub async fn previous_sample_at(&self, account: &str, at: i64) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MAX(at) FROM usage_samples WHERE account = $1 AND step = $2 AND at < $3",
        )
        .bind(account)
        .bind(HOUR_MS)
        .bind(at)
        .fetch_one(self.pool())
        .await?)
    }

    /// Roll whole days of hourly rows older than 30 days (before `now`) into daily rows, and
    /// drop rows older than two years. Returns (hourly rows rolled up, rows dropped).
    pub async fn roll_up_usage(&self, now: i64) -> Result<(u64, u64)> {
        let cutoff = now - HOURLY_KEEP_MS;
        let cutoff = cutoff - cutoff.rem_euclid(DAY_MS);
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO usage_samples (account, step, at, disk_bytes, disk_files, bandwidth_bytes, mail_sent, db_bytes, addon_domains, measured_at) \
             SELECT account, CAST($1 AS BIGINT), at - (at % $2), MAX(disk_bytes), MAX(disk_files), SUM(bandwidth_bytes), SUM(mail_sent), MAX(db_bytes), \
             MAX(addon_domains), MAX(measured_at) FROM usage_samples WHERE step = $3 AND at < $4 \
             GROUP BY 1, 2, 3 \
             ON CONFLICT (account, step, at) DO UPDATE SET \
             disk_bytes = CASE WHEN excluded.disk_bytes > usage_samples.disk_bytes THEN excluded.disk_bytes ELSE usage_samples.disk_bytes END, \
             disk_files = CASE WHEN excluded.disk_files > usage_samples.disk_files THEN excluded.disk_files ELSE usage_samples.disk_files END, \
             bandwidth_bytes = usage_samples.bandwidth_bytes + excluded.bandwidth_bytes, \
             mail_sent = usage_samples.mail_sent + excluded.mail_sent, \
             measured_at = excluded.measured_at",
        )
        .bind(DAY_MS)
        .bind(DAY_MS)
        .bind(HOUR_MS)
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        let rolled = sqlx::query("DELETE FROM usage_samples WHERE step = $1 AND at < $2")
            .bind(HOUR_MS)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let dropped = sqlx::query("DELETE FROM usage_samples WHERE at < $1")
            .bind(now - USAGE_KEEP_MS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok((rolled, dropped))
    }

    /// How far the sweep has counted the log `source`: its inode and byte offset.
    pub async fn usage_cursor(&self, source: &str) -> Result<Option<(u64, u64)>> {
        let row = sqlx::query("SELECT inode, pos FROM usage_cursors WHERE source = $1")
            .bind(source)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            Ok((
                r.try_get::<i64, _>(0)? as u64,
                r.try_get::<i64, _>(1)? as u64,
            ))
        })
        .transpose()
    }

    /// Every cursor whose source starts with `prefix`, by source.
    pub async fn usage_cursors_under(&self, prefix: &str) -> Result<HashMap<String, (u64, u64)>> {
        // `substr` rather than LIKE: a path may hold `%` or `_`.
        let rows = sqlx::query(
            "SELECT source, inode, pos FROM usage_cursors WHERE substr(source, 1, CAST($1 AS INTEGER)) = $2",
        )
        .bind(prefix.chars().count() as i64)
        .bind(prefix)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>(0)?,
                    (
                        r.try_get::<i64, _>(1)? as u64,
                        r.try_get::<i64, _>(2)? as u64,
                    ),
                ))
            })
            .collect()
    }

    /// Record how far logs have been counted (after the samples that counted them).
    pub async fn set_usage_cursors(&self, cursors: &[(String, u64, u64)]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for (source, inode, pos) in cursors {
            upsert_cursor(&mut tx, source, *inode, *pos).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Where an account stands against one limit, as the last sweep found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageLevel {
    pub account: String,
    /// `disk` or `bandwidth`.
    pub resource: String,
    /// 0 (under 80 %), 80, 95 or 100.
    pub level: i64,
    /// Use as a percentage of the limit, rounded down.
    pub percent: i64,
    /// Since when it is at this level.
    pub since: chrono::DateTime<chrono::Utc>,
    /// Whether the host enforces the limit now (level 100, no grace).
    pub enforced: bool,
}

/// An admin's per-account override of the limits the sweep holds the account to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageOverride {
    pub account: String,
    /// Disk limit instead of the package's, MB.
    pub disk_mb: Option<u64>,
    /// Monthly bandwidth limit instead of the package's, MB.
    pub bandwidth_mb: Option<u64>,
    /// Until then, nothing is enforced (warnings still are recorded).
    pub grace_until: Option<chrono::DateTime<chrono::Utc>>,
    pub reason: String,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// A notice for an account's owner and its admins (the panel and the dashboard show them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Notification {
    pub id: String,
    pub account: String,
    pub ts: chrono::DateTime<chrono::Utc>,
    /// `usage_warning`, `usage_over` or `usage_normal`.
    pub kind: String,
    pub resource: Option<String>,
    pub level: Option<i64>,
    pub message: String,
}

impl Store {
    /// Every stored level (of `account` only, when given).
    pub async fn usage_levels(&self, account: Option<&str>) -> Result<Vec<UsageLevel>> {
        let rows = sqlx::query(
            "SELECT account, resource, level, percent, since, enforced FROM usage_levels \
             WHERE ($1 = '' OR account = $2) ORDER BY account, resource",
        )
        .bind(account.unwrap_or(""))
        .bind(account.unwrap_or(""))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageLevel {
                    account: r.try_get(0)?,
                    resource: r.try_get(1)?,
                    level: r.try_get::<i64, _>(2)?,
                    percent: r.try_get::<i64, _>(3)?,
                    since: ms_to_time(r.try_get::<i64, _>(4)?),
                    enforced: r.try_get::<i64, _>(5)? != 0,
                })
            })
            .collect()
    }

    /// Record where an account stands against one limit.
    pub async fn set_usage_level(&self, l: &UsageLevel) -> Result<()> {
        sqlx::query(
            "INSERT INTO usage_levels (account, resource, level, percent, since, enforced) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (account, resource) DO UPDATE SET level = excluded.level, percent = excluded.percent, \
             since = excluded.since, enforced = excluded.enforced",
        )
        .bind(&l.account)
        .bind(&l.resource)
        .bind(l.level)
        .bind(l.percent)
        .bind(l.since.timestamp_millis())
        .bind(l.enforced as i64)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// `account`'s override, if it has one.
    pub async fn usage_override(&self, account: &str) -> Result<Option<UsageOverride>> {
        let row = sqlx::query(
            "SELECT account, disk_mb, bandwidth_mb, grace_until, reason, updated_at FROM usage_overrides WHERE account = $1",
        )
        .bind(account)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| override_from_row(&r)).transpose()
    }

    /// Every override, by account.
    pub async fn usage_overrides(&self) -> Result<HashMap<String, UsageOverride>> {
        let rows = sqlx::query(
            "SELECT account, disk_mb, bandwidth_mb, grace_until, reason, updated_at FROM usage_overrides",
        )
        .fetch_all(self.pool())
        .await?;
        let mut out = HashMap::new();
        for r in rows {
            let o = override_from_row(&r)?;
            out.insert(o.account.clone(), o);
        }
        Ok(out)
    }

    /// Set (or, with `None`, remove) an account's override.
    pub async fn set_usage_override(&self, account: &str, o: Option<&UsageOverride>) -> Result<()> {
        match o {
            None => {
                sqlx::query("DELETE FROM usage_overrides WHERE account = $1")
                    .bind(account)
                    .execute(self.pool())
                    .await?;
            }
            Some(o) => {
                sqlx::query(
                    "INSERT INTO usage_overrides (account, disk_mb, bandwidth_mb, grace_until, reason, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account) DO UPDATE SET disk_mb = excluded.disk_mb, \
                     bandwidth_mb = excluded.bandwidth_mb, grace_until = excluded.grace_until, reason = excluded.reason, \
                     updated_at = excluded.updated_at",
                )
                .bind(account)
                .bind(o.disk_mb.map(|v| v as i64))
                .bind(o.bandwidth_mb.map(|v| v as i64))
                .bind(o.grace_until.map(|t| t.timestamp_millis()))
                .bind(&o.reason)
                .bind(o.updated_at.timestamp_millis())
                .execute(self.pool())
                .await?;
            }
        }
        Ok(())
    }

    /// Add a notification; returns it.
    pub async fn add_notification(
        &self,
        account: &str,
        kind: &str,
        resource: Option<&str>,
        level: Option<i64>,
        message: &str,
    ) -> Result<Notification> {
        let n = Notification {
            id: format!("nt_{}", ulid::Ulid::new()),
            account: account.into(),
            ts: ms_to_time(now_ms()),
            kind: kind.into(),
            resource: resource.map(Into::into),
            level,
            message: message.into(),
        };
        sqlx::query(
            "INSERT INTO notifications (id, account, ts, kind, resource, level, message) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&n.id)
        .bind(&n.account)
        .bind(n.ts.timestamp_millis())
        .bind(&n.kind)
        .bind(&n.resource)
        .bind(n.level)
        .bind(&n.message)
        .execute(self.pool())
        .await?;
        Ok(n)
    }

    /// The newest `limit` notifications (of `account` only, when given), newest first.
    pub async fn notifications(
        &self,
        account: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Notification>> {
        let rows = sqlx::query(
            "SELECT id, account, ts, kind, resource, level, message FROM notifications \
             WHERE ($1 = '' OR account = $2) ORDER BY ts DESC, id DESC LIMIT $3",
        )
        .bind(account.unwrap_or(""))
        .bind(account.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Notification {
                    id: r.try_get(0)?,
                    account: r.try_get(1)?,
                    ts: ms_to_time(r.try_get::<i64, _>(2)?),
                    kind: r.try_get(3)?,
                    resource: r.try_get(4)?,
                    level: r.try_get(5)?,
                    message: r.try_get(6)?,
                })
            })
            .collect()
    }
}
