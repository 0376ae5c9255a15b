//! WHMCS API keys (DESIGN §5): a public id (`wk_<ulid>`, sent as `Authorization: Bearer`) and
//! one or more secrets that sign requests (HMAC-SHA256).
//!
//! - **Scope.** A key is either the panel's (no reseller: it acts as admin) or one reseller's
//!   (it reaches only that reseller's customers and creates accounts under it).
//! - **Rotation without downtime.** [`Store::rotate_whmcs_key`] adds a new secret and gives the
//!   ones in force a grace period (default 24 h) after which they are ignored, so WHMCS can be
//!   switched to the new secret at leisure. Expired secrets are dropped at the next rotation.
//! - **Secrets are stored as they are**: verifying an HMAC needs the secret itself (the database
//!   file is the owner's only). They are shown once, when made, and never listed.

use crate::{AccountStatus, AccountType, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// The default grace period of a rotated secret.
pub const DEFAULT_ROTATION_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// One secret of a key, as stored (JSON in `whmcs_keys.secrets`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSecret {
    secret: String,
    created_at: i64,
    /// Unix ms after which the secret is ignored; `None` while it is the current one.
    #[serde(default)]
    expires_at: Option<i64>,
}

impl StoredSecret {
    fn active(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

/// A key as listed: never its secrets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WhmcsKey {
    /// Public id (`wk_…`), sent as the Bearer token.
    pub id: String,
    /// The reseller it is scoped to; `None`: the panel's own key (admin scope).
    pub reseller: Option<String>,
    /// A note for operators.
    pub note: Option<String>,
    /// Created at.
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Revoked at (a revoked key answers 401 to everything).
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Secrets that sign requests now (the current one plus those in their grace period; none
    /// once revoked).
    pub active_secrets: usize,
    /// When the last secret still in its grace period stops being accepted.
    pub grace_until: Option<chrono::DateTime<chrono::Utc>>,
}

/// What the signature check needs: the key's scope and its secrets in force.
#[derive(Clone, PartialEq, Eq)]
pub struct ActiveKey {
    /// Key id.
    pub id: String,
    /// Reseller scope (`None`: admin).
    pub reseller: Option<String>,
    /// Secrets in force, newest first.
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for ActiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveKey")
            .field("id", &self.id)
            .field("reseller", &self.reseller)
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

fn new_secret() -> String {
    let mut b = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    hex::encode(b)
}

fn parse_secrets(text: &str) -> Result<Vec<StoredSecret>> {
    Ok(serde_json::from_str(text)?)
}

fn key_from_row(r: &sqlx::any::AnyRow, now: i64) -> Result<WhmcsKey> {
    let secrets = parse_secrets(&r.try_get::<String, _>("secrets")?)?;
    let revoked: Option<i64> = r.try_get("revoked_at")?;
    let active: Vec<&StoredSecret> = secrets
        .iter()
        .filter(|s| revoked.is_none() && s.active(now))
        .collect();
    Ok(WhmcsKey {
        id: r.try_get("id")?,
        reseller: crate::get_opt_str(r, "reseller")?,
        note: crate::get_opt_str(r, "note")?,
        created_at: crate::ms_to_rfc3339(r.try_get("created_at")?),
        revoked_at: crate::ms_to_rfc3339(revoked),
        active_secrets: active.len(),
        grace_until: crate::ms_to_rfc3339(active.iter().filter_map(|s| s.expires_at).max()),
    })
}

const KEY_COLS: &str = "id, reseller, secrets, created_at, revoked_at, note";

impl Store {
    /// Make a key (optionally scoped to `reseller`, which must be a reseller that is not
    /// terminated). Returns the key and its secret: the only time the secret is shown.
    pub async fn create_whmcs_key(
        &self,
        reseller: Option<&str>,
        note: Option<&str>,
    ) -> Result<(WhmcsKey, String)> {
        if let Some(r) = reseller {
            let a = self.account(r).await.map_err(|e| match e {
                StoreError::NotFound(_) => {
                    StoreError::Invalid(format!("reseller {r:?} does not exist"))
                }
                e => e,
            })?;
            if a.kind != AccountType::Reseller {
                return Err(StoreError::Invalid(format!(
                    "{r} is a {}, not a reseller",
                    a.kind.as_str()
                )));
            }
            if a.status == AccountStatus::Terminated {
                return Err(StoreError::Invalid(format!("reseller {r} is terminated")));
            }
        }
        if note.is_some_and(|n| n.chars().count() > 200) {
            return Err(StoreError::Invalid(
                "a key's note is at most 200 characters".into(),
            ));
        }
        let id = format!("wk_{}", ulid::Ulid::new().to_string().to_lowercase());
        let secret = new_secret();
        let now = crate::now_ms();
        let secrets = vec![StoredSecret {
            secret: secret.clone(),
            created_at: now,
            expires_at: None,
        }];
        sqlx::query(
            "INSERT INTO whmcs_keys (id, reseller, secrets, created_at, revoked_at, note) VALUES ($1, $2, $3, $4, NULL, $5)",
        )
        .bind(&id)
        .bind(reseller.map(str::to_string))
        .bind(serde_json::to_string(&secrets)?)
        .bind(now)
        .bind(note.map(str::to_string))
        .execute(self.pool())
        .await?;
        Ok((self.whmcs_key(&id).await?, secret))
    }

    /// One key (revoked ones too), without its secrets.
    pub async fn whmcs_key(&self, id: &str) -> Result<WhmcsKey> {
        let row = sqlx::query(&format!("SELECT {KEY_COLS} FROM whmcs_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no WHMCS key {id:?}")))?;
        key_from_row(&row, crate::now_ms())
    }

    /// Add a new secret to key `id`; the secrets in force stay valid for `grace`, then are
    /// ignored. Returns the key and the new secret (shown once). A revoked key is a conflict.
    pub async fn rotate_whmcs_key(
        &self,
        id: &str,
        grace: std::time::Duration,
    ) -> Result<(WhmcsKey, String)> {
        let mut tx = self.write_tx().await?;
        let row: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT secrets, revoked_at FROM whmcs_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let (text, revoked) =
            row.ok_or_else(|| StoreError::NotFound(format!("no WHMCS key {id:?}")))?;
        if revoked.is_some() {
            return Err(StoreError::Conflict(format!(
                "WHMCS key {id} is revoked; create a new key instead"
            )));
        }
        let now = crate::now_ms();
        let until = now.saturating_add(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
        let mut secrets: Vec<StoredSecret> = parse_secrets(&text)?
            .into_iter()
            .filter(|s| s.active(now))
            .map(|mut s| {
                s.expires_at = Some(s.expires_at.map_or(until, |e| e.min(until)));
                s
            })
            .collect();
        let secret = new_secret();
        secrets.insert(
            0,
            StoredSecret {
                secret: secret.clone(),
                created_at: now,
                expires_at: None,
            },
        );
        sqlx::query("UPDATE whmcs_keys SET secrets = $1 WHERE id = $2")
            .bind(serde_json::to_string(&secrets)?)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((self.whmcs_key(id).await?, secret))
    }

    /// Revoke key `id`: every request signed with it is refused from now on. Revoking a
    /// revoked key changes nothing.
    pub async fn revoke_whmcs_key(&self, id: &str) -> Result<WhmcsKey> {
        sqlx::query("UPDATE whmcs_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(crate::now_ms())
            .bind(id)
            .execute(self.pool())
            .await?;
        self.whmcs_key(id).await
    }

    /// Every key, oldest first, without secrets.
    pub async fn list_whmcs_keys(&self) -> Result<Vec<WhmcsKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLS} FROM whmcs_keys ORDER BY created_at, id"
        ))
        .fetch_all(self.pool())
        .await?;
        let now = crate::now_ms();
        rows.iter().map(|r| key_from_row(r, now)).collect()
    }

    /// The scope and secrets in force of key `id`; `None` when it does not exist, is revoked,
    /// or has no secret in force. One indexed read (the signature check's).
    pub async fn whmcs_key_secrets(&self, id: &str) -> Result<Option<ActiveKey>> {
        if id.is_empty() || id.len() > 64 {
            return Ok(None);
        }
        let row: Option<(Option<String>, String, Option<i64>)> =
            sqlx::query_as("SELECT reseller, secrets, revoked_at FROM whmcs_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        let Some((reseller, text, None)) = row else {
            return Ok(None);
        };
        let now = crate::now_ms();
        let secrets: Vec<String> = parse_secrets(&text)?
            .into_iter()
            .filter(|s| s.active(now))
            .map(|s| s.secret)
            .collect();
        Ok((!secrets.is_empty()).then(|| ActiveKey {
            id: id.to_string(),
            reseller,
            secrets,
        }))
    }

    /// The newest account WHMCS created for `service_id` within a key's scope: that reseller's
    /// customers, or (admin scope) accounts outside any reseller. Two WHMCS installations may
    /// use the same service ids, so the scope is part of the lookup.
    pub async fn whmcs_account(
        &self,
        service_id: &str,
        reseller: Option<&str>,
    ) -> Result<Option<crate::Account>> {
        let q = match reseller {
            Some(r) => sqlx::query(
                "SELECT id FROM accounts WHERE whmcs_service_id = $1 AND reseller = $2 AND type = 'customer' ORDER BY created_at DESC, id DESC LIMIT 1",
            )
            .bind(service_id)
            .bind(r.to_string()),
            None => sqlx::query(
                "SELECT id FROM accounts WHERE whmcs_service_id = $1 AND reseller IS NULL ORDER BY created_at DESC, id DESC LIMIT 1",
            )
            .bind(service_id),
        };
        match q.fetch_optional(self.pool()).await? {
            Some(row) => {
                let id: String = row.try_get("id")?;
                match self.account(&id).await {
                    Ok(a) => Ok(Some(a)),
                    Err(StoreError::NotFound(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            None => Ok(None),
        }
    }
}
