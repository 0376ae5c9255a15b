//! Applied configuration versions (schema 14; DESIGN §7).
//!
//! `npanel serve` records the configuration it runs with each time it starts or reloads
//! (SIGHUP), but only when it differs from the newest version: a restart with the same file adds
//! nothing. `npanel config versions` lists them and `npanel config rollback` writes an older
//! one's file text back. What is kept, and why:
//! - **the file's text, secrets redacted** — what rollback writes back (the caller restores the
//!   secrets from the live file; a secret is never stored in clear);
//! - **the effective merged configuration** (defaults < file < `config.env` < environment <
//!   flags), redacted, as TOML — what was actually applied, for `versions` and audits;
//! - **the built-in defaults of the binary that applied it**, as flattened `key → value` JSON —
//!   so a newer binary's `config diff` can say "the default of X changed from A to B since the
//!   version that wrote this configuration";
//! - who (`actor`), why (`reason`: `start`, `reload`, ...), when and with which binary version.
//!
//! Version numbers are 1, 2, 3, ... per store; the digest (SHA-256 of the redacted file text and
//! the effective configuration) decides whether anything changed.

use crate::error::{Result, StoreError};
use crate::{ms_to_rfc3339, now_ms, Store};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

/// A configuration to record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewConfigVersion {
    /// The applying binary's version (`CARGO_PKG_VERSION`).
    pub binary_version: String,
    /// Who applied it (`serve pid 123 (user npanel)`, `cli`).
    pub actor: String,
    /// Why (`start`, `reload`, `rollback`).
    pub reason: String,
    /// The config file, when there is one.
    pub file_path: Option<String>,
    /// Its text, secrets redacted.
    pub file_text: Option<String>,
    /// The effective merged configuration (TOML), secrets redacted.
    pub effective: String,
    /// The applying binary's built-in defaults, flattened (`queue.max_pending` → `100`).
    pub defaults: std::collections::BTreeMap<String, String>,
}

impl NewConfigVersion {
    /// SHA-256 (hex) of what makes two versions different: the file text and the effective
    /// configuration. Who, why and the binary version do not count.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.file_text.as_deref().unwrap_or("").as_bytes());
        h.update([0u8]);
        h.update(self.effective.as_bytes());
        hex::encode(h.finalize())
    }
}

/// A recorded configuration version.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfigVersion {
    /// 1, 2, 3, ...
    pub version: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub binary_version: String,
    pub actor: String,
    pub reason: String,
    pub file_path: Option<String>,
    pub file_text: Option<String>,
    pub effective: String,
    pub defaults: std::collections::BTreeMap<String, String>,
    pub digest: String,
}

const COLUMNS: &str = "version, created_at, binary_version, actor, reason, file_path, file_text, \
                       effective, defaults, digest";

fn row_to_version(r: &sqlx::any::AnyRow) -> Result<ConfigVersion> {
    let defaults: String = r.try_get(8)?;
    Ok(ConfigVersion {
        version: r.try_get(0)?,
        created_at: ms_to_rfc3339(Some(r.try_get::<i64, _>(1)?)).unwrap_or_default(),
        binary_version: r.try_get(2)?,
        actor: r.try_get(3)?,
        reason: r.try_get(4)?,
        file_path: r.try_get(5)?,
        file_text: r.try_get(6)?,
        effective: r.try_get(7)?,
        defaults: serde_json::from_str(&defaults).map_err(|e| {
            StoreError::Database(format!("config version defaults are not JSON: {e}"))
        })?,
        digest: r.try_get(9)?,
    })
}

impl Store {
    /// Record `v` as the next version unless the newest version has the same digest. Returns
    /// the new version number, or `None` when nothing changed.
    pub async fn record_config_version(&self, v: &NewConfigVersion) -> Result<Option<i64>> {
        let digest = v.digest();
        let defaults = serde_json::to_string(&v.defaults)
            .map_err(|e| StoreError::Invalid(format!("defaults do not serialise: {e}")))?;
        // Two processes recording at once (PostgreSQL) may pick the same number: the loser's
        // insert is a unique violation, and it tries again with the next number.
        let mut last = None;
        for _ in 0..5 {
            let mut tx = self.write_tx().await?;
            let newest = sqlx::query(
                "SELECT version, digest FROM config_versions ORDER BY version DESC LIMIT 1",
            )
            .fetch_optional(&mut *tx)
            .await?;
            let next = match newest {
                Some(r) if r.try_get::<String, _>(1)? == digest => return Ok(None),
                Some(r) => r.try_get::<i64, _>(0)? + 1,
                None => 1,
            };
            let res = sqlx::query(&format!(
                "INSERT INTO config_versions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ))
            .bind(next)
            .bind(now_ms())
            .bind(&v.binary_version)
            .bind(&v.actor)
            .bind(&v.reason)
            .bind(v.file_path.as_deref())
            .bind(v.file_text.as_deref())
            .bind(&v.effective)
            .bind(&defaults)
            .bind(&digest)
            .execute(&mut *tx)
            .await;
            match res.map_err(StoreError::from) {
                Ok(_) => {
                    tx.commit().await?;
                    return Ok(Some(next));
                }
                Err(StoreError::Conflict(e)) => last = Some(StoreError::Conflict(e)),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Conflict("config version race".into())))
    }

    /// The newest `limit` versions, newest first.
    pub async fn config_versions(&self, limit: i64) -> Result<Vec<ConfigVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM config_versions ORDER BY version DESC LIMIT $1"
        ))
        .bind(limit.clamp(1, 10_000))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(row_to_version).collect()
    }

    /// Version `version`, if recorded.
    pub async fn config_version(&self, version: i64) -> Result<Option<ConfigVersion>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM config_versions WHERE version = $1"
        ))
        .bind(version)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(row_to_version).transpose()
    }

    /// The newest version, if any.
    pub async fn latest_config_version(&self) -> Result<Option<ConfigVersion>> {
        Ok(self.config_versions(1).await?.into_iter().next())
    }
}
