//! Per-account outbound mail limits (DESIGN §13, issue 9): what an account may send, from where
//! each value comes, and the per-account overrides (`email_policies`, schema 9).
//!
//! # Why this shape
//! - **Three layers, one answer.** The effective policy is the defaults (500 recipients an
//!   hour, a burst of 100 per 15 minutes, 50 MB an hour, 10 connections), then the package's
//!   `email_*` limits, then the account's override; every value says which layer it came from,
//!   so `GET /api/accounts/{id}/email-policy` explains itself.
//! - **A package's `null` means "the default", not "unlimited"** for these four values:
//!   unlimited outbound mail is how a compromised site becomes a spam cannon, so there is no
//!   such setting; the largest values are bounded instead ([`EmailPolicy::problems`]).
//! - **An override stores only what it overrides**, so a later package change still reaches
//!   the fields the account did not pin.
//! - **Incidents are kept per window** (`email_incidents`): Exim defers by itself; whoever reads
//!   its log ([`Store::add_email_incidents`]) records one row per account, limit and window, so
//!   the incident is audited once per window, not once per deferred message.
//! - **The burst never exceeds the hourly limit.** An inherited burst above an (overridden or
//!   package) hourly limit is lowered to it; a burst the account itself sets above it is an
//!   error.

use crate::packages::Limits;
use crate::{now_ms, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::BTreeMap;

/// The defaults of DESIGN §13.
pub const DEFAULT_EMAIL_POLICY: EmailPolicy = EmailPolicy {
    per_hour: 500,
    burst_per_15min: 100,
    mb_per_hour: 50,
    max_connections: 10,
};

/// The four fields, in order.
pub const EMAIL_POLICY_FIELDS: [&str; 4] = [
    "per_hour",
    "burst_per_15min",
    "mb_per_hour",
    "max_connections",
];

/// Largest `per_hour` and `burst_per_15min`.
pub const MAX_EMAIL_PER_HOUR: u32 = 100_000;
/// Largest `mb_per_hour`.
pub const MAX_EMAIL_MB_PER_HOUR: u32 = 102_400;
/// Largest `max_connections`.
pub const MAX_EMAIL_CONNECTIONS: u32 = 1_000;

fn max_of(field: &str) -> u32 {
    match field {
        "mb_per_hour" => MAX_EMAIL_MB_PER_HOUR,
        "max_connections" => MAX_EMAIL_CONNECTIONS,
        _ => MAX_EMAIL_PER_HOUR,
    }
}

/// An account's outbound mail limits (the agent's `write_mail_policy` takes the same fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailPolicy {
    /// Recipients per hour.
    pub per_hour: u32,
    /// Recipients per 15 minutes.
    pub burst_per_15min: u32,
    /// Megabytes of mail per hour.
    pub mb_per_hour: u32,
    /// Simultaneous SMTP connections.
    pub max_connections: u32,
}

impl Default for EmailPolicy {
    fn default() -> Self {
        DEFAULT_EMAIL_POLICY
    }
}

impl EmailPolicy {
    /// The value of `field` (one of [`EMAIL_POLICY_FIELDS`]).
    pub fn get(&self, field: &str) -> Option<u32> {
        match field {
            "per_hour" => Some(self.per_hour),
            "burst_per_15min" => Some(self.burst_per_15min),
            "mb_per_hour" => Some(self.mb_per_hour),
            "max_connections" => Some(self.max_connections),
            _ => None,
        }
    }

    fn slot(&mut self, field: &str) -> &mut u32 {
        match field {
            "per_hour" => &mut self.per_hour,
            "burst_per_15min" => &mut self.burst_per_15min,
            "mb_per_hour" => &mut self.mb_per_hour,
            _ => &mut self.max_connections,
        }
    }

    /// One sentence per value out of range.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for f in EMAIL_POLICY_FIELDS {
            let v = self.get(f).unwrap_or_default();
            if !(1..=max_of(f)).contains(&v) {
                p.push(format!(
                    "{f} is {v}; it must be between 1 and {}",
                    max_of(f)
                ));
            }
        }
        if self.burst_per_15min > self.per_hour {
            p.push(format!(
                "burst_per_15min ({}) must not exceed per_hour ({})",
                self.burst_per_15min, self.per_hour
            ));
        }
        p
    }
}

/// A per-account override: only the fields set are overridden.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailPolicyOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_per_15min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mb_per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

impl EmailPolicyOverride {
    /// The override of `field`.
    pub fn get(&self, field: &str) -> Option<u32> {
        match field {
            "per_hour" => self.per_hour,
            "burst_per_15min" => self.burst_per_15min,
            "mb_per_hour" => self.mb_per_hour,
            "max_connections" => self.max_connections,
            _ => None,
        }
    }

    /// Sets (or with `None` clears) the override of `field`; false for an unknown field.
    pub fn set(&mut self, field: &str, v: Option<u32>) -> bool {
        let slot = match field {
            "per_hour" => &mut self.per_hour,
            "burst_per_15min" => &mut self.burst_per_15min,
            "mb_per_hour" => &mut self.mb_per_hour,
            "max_connections" => &mut self.max_connections,
            _ => return false,
        };
        *slot = v;
        true
    }

    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        EMAIL_POLICY_FIELDS.iter().all(|f| self.get(f).is_none())
    }
}

/// Where an effective value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicySource {
    /// The built-in default.
    Default,
    /// The account's package.
    Package,
    /// The account's own override.
    Account,
}

/// The policy in force and where each value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EffectiveEmailPolicy {
    /// The values.
    pub policy: EmailPolicy,
    /// Per field: `default`, `package` or `account`.
    pub sources: BTreeMap<&'static str, PolicySource>,
    /// The account's override as stored (only the fields it sets).
    pub overrides: EmailPolicyOverride,
}

/// A package's value of `field`, if it sets a usable one.
fn package_value(limits: &Limits, field: &str) -> Option<u32> {
    let v = match field {
        "per_hour" => limits.email_per_hour,
        "burst_per_15min" => limits.email_burst_per_15min,
        "mb_per_hour" => limits.email_mb_per_hour,
        _ => limits.email_max_connections,
    }?;
    // Packages are validated on write (`Limits::problems`); a value out of range that got in
    // anyway is not used.
    u32::try_from(v)
        .ok()
        .filter(|v| (1..=max_of(field)).contains(v))
}

/// The effective policy of an account on a package with `limits` (`None`: no package) and
/// with override `ov`. Errors (422-worthy) when the account's own values conflict.
pub fn effective_email_policy(
    limits: Option<&Limits>,
    ov: &EmailPolicyOverride,
) -> std::result::Result<EffectiveEmailPolicy, Vec<String>> {
    let mut policy = DEFAULT_EMAIL_POLICY;
    let mut sources = BTreeMap::new();
    for f in EMAIL_POLICY_FIELDS {
        let (v, src) = match (ov.get(f), limits.and_then(|l| package_value(l, f))) {
            (Some(v), _) => (v, PolicySource::Account),
            (None, Some(v)) => (v, PolicySource::Package),
            (None, None) => (
                DEFAULT_EMAIL_POLICY.get(f).unwrap_or_default(),
                PolicySource::Default,
            ),
        };
        *policy.slot(f) = v;
        sources.insert(f, src);
    }
    if policy.burst_per_15min > policy.per_hour
        && sources.get("burst_per_15min") != Some(&PolicySource::Account)
    {
        // An inherited burst cannot allow more than the hour does.
        policy.burst_per_15min = policy.per_hour;
    }
    let problems = policy.problems();
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(EffectiveEmailPolicy {
        policy,
        sources,
        overrides: *ov,
    })
}

impl Store {
    /// The account's override (empty when it has none).
    pub async fn email_policy_override(&self, account: &str) -> Result<EmailPolicyOverride> {
        let row = sqlx::query("SELECT doc FROM email_policies WHERE account = $1")
            .bind(account)
            .fetch_optional(self.pool())
            .await?;
        match row {
            Some(r) => {
                let doc: String = r.try_get("doc")?;
                Ok(serde_json::from_str(&doc)?)
            }
            None => Ok(EmailPolicyOverride::default()),
        }
    }

    /// Replaces the account's override; an empty one removes the row.
    pub async fn set_email_policy_override(
        &self,
        account: &str,
        ov: &EmailPolicyOverride,
    ) -> Result<()> {
        if ov.is_empty() {
            sqlx::query("DELETE FROM email_policies WHERE account = $1")
                .bind(account)
                .execute(self.pool())
                .await?;
            return Ok(());
        }
        let doc = serde_json::to_string(ov)
            .map_err(|e| StoreError::Database(format!("encoding an email policy: {e}")))?;
        sqlx::query(
            "INSERT INTO email_policies (account, doc, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (account) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at",
        )
        .bind(account)
        .bind(doc)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The effective policy of `account` (its package's limits as joined into it, and its
    /// stored override). A stored combination that no longer holds (the package's hourly
    /// limit fell below the account's own burst) is [`StoreError::Invalid`].
    pub async fn effective_email_policy(
        &self,
        account: &crate::Account,
    ) -> Result<EffectiveEmailPolicy> {
        let ov = self.email_policy_override(&account.id).await?;
        effective_email_policy(account.limits.as_ref(), &ov).map_err(|p| {
            StoreError::Invalid(format!(
                "the email policy of account {} does not hold: {}",
                account.id,
                p.join("; ")
            ))
        })
    }
}

/// Deferrals of one account for one limit in one window (the incident's key and its counts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EmailIncident {
    pub account: String,
    /// `per_hour`, `burst_per_15min` or `mb_per_hour`.
    pub kind: String,
    /// Start of the limit's window (Unix ms): the hour, or the quarter hour for the burst.
    pub window_start: i64,
    /// First and last deferral seen in it (Unix ms).
    pub first_at: i64,
    pub last_at: i64,
    /// Messages (recipients) deferred.
    pub deferrals: i64,
}

impl Store {
    /// Which of these incidents' windows are already recorded.
    pub async fn known_email_incidents(&self, incidents: &[EmailIncident]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(incidents.len());
        for i in incidents {
            let row = sqlx::query(
                "SELECT 1 FROM email_incidents WHERE account = $1 AND kind = $2 AND window_start = $3",
            )
            .bind(&i.account)
            .bind(&i.kind)
            .bind(i.window_start)
            .fetch_optional(self.pool())
            .await?;
            out.push(row.is_some());
        }
        Ok(out)
    }

    /// Adds deferrals to their windows (a new window is created; a known one counts on).
    pub async fn add_email_incidents(&self, incidents: &[EmailIncident]) -> Result<()> {
        self.add_email_incidents_at(incidents, None).await
    }

    /// [`Store::add_email_incidents`], and the log's cursor (source, inode, offset) moved in
    /// the same transaction: a scan that stops between the two never counts a deferral twice.
    pub async fn add_email_incidents_at(
        &self,
        incidents: &[EmailIncident],
        cursor: Option<(&str, u64, u64)>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        if let Some((source, inode, pos)) = cursor {
            crate::usage::upsert_cursor(&mut tx, source, inode, pos).await?;
        }
        for i in incidents {
            sqlx::query(
                "INSERT INTO email_incidents (account, kind, window_start, first_at, last_at, deferrals) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account, kind, window_start) DO UPDATE SET \
                 first_at = CASE WHEN excluded.first_at < email_incidents.first_at THEN excluded.first_at ELSE email_incidents.first_at END, \
                 last_at = CASE WHEN excluded.last_at > email_incidents.last_at THEN excluded.last_at ELSE email_incidents.last_at END, \
                 deferrals = email_incidents.deferrals + excluded.deferrals",
            )
            .bind(&i.account)
            .bind(&i.kind)
            .bind(i.window_start)
            .bind(i.first_at)
            .bind(i.last_at)
            .bind(i.deferrals)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The account's incidents since `from` (Unix ms), newest first.
    pub async fn email_incidents(&self, account: &str, from: i64) -> Result<Vec<EmailIncident>> {
        let rows = sqlx::query(
            "SELECT account, kind, window_start, first_at, last_at, deferrals FROM email_incidents \
             WHERE account = $1 AND window_start >= $2 ORDER BY window_start DESC, kind",
        )
        .bind(account)
        .bind(from)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EmailIncident {
                    account: r.try_get("account")?,
                    kind: r.try_get("kind")?,
                    window_start: r.try_get("window_start")?,
                    first_at: r.try_get("first_at")?,
                    last_at: r.try_get("last_at")?,
                    deferrals: r.try_get("deferrals")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_defaults_then_package_then_account() {
        let e = effective_email_policy(None, &EmailPolicyOverride::default()).unwrap();
        assert_eq!(e.policy, DEFAULT_EMAIL_POLICY);
        assert!(e.sources.values().all(|s| *s == PolicySource::Default));

        let pkg = Limits {
            email_per_hour: Some(1000),
            email_mb_per_hour: Some(200),
            ..Limits::default()
        };
        let ov = EmailPolicyOverride {
            mb_per_hour: Some(20),
            ..Default::default()
        };
        let e = effective_email_policy(Some(&pkg), &ov).unwrap();
        assert_eq!(
            e.policy,
            EmailPolicy {
                per_hour: 1000,
                burst_per_15min: 100,
                mb_per_hour: 20,
                max_connections: 10
            }
        );
        assert_eq!(e.sources["per_hour"], PolicySource::Package);
        assert_eq!(e.sources["burst_per_15min"], PolicySource::Default);
        assert_eq!(e.sources["mb_per_hour"], PolicySource::Account);
        assert_eq!(e.sources["max_connections"], PolicySource::Default);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["sources"]["mb_per_hour"], "account");
        assert_eq!(json["overrides"], serde_json::json!({"mb_per_hour": 20}));
    }

    #[test]
    fn an_inherited_burst_is_capped_an_own_one_refused() {
        let ov = EmailPolicyOverride {
            per_hour: Some(2),
            ..Default::default()
        };
        let e = effective_email_policy(None, &ov).unwrap();
        assert_eq!((e.policy.per_hour, e.policy.burst_per_15min), (2, 2));
        let ov = EmailPolicyOverride {
            per_hour: Some(2),
            burst_per_15min: Some(3),
            ..Default::default()
        };
        let p = effective_email_policy(None, &ov).unwrap_err();
        assert!(p[0].contains("must not exceed per_hour"), "{p:?}");
        let ov = EmailPolicyOverride {
            max_connections: Some(0),
            mb_per_hour: Some(MAX_EMAIL_MB_PER_HOUR + 1),
            ..Default::default()
        };
        let p = effective_email_policy(None, &ov).unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn overrides_refuse_unknown_fields() {
        let e = serde_json::from_str::<EmailPolicyOverride>(r#"{"per_day": 5}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let mut ov = EmailPolicyOverride::default();
        assert!(ov.is_empty());
        assert!(ov.set("per_hour", Some(5)));
        assert!(!ov.set("colour", Some(5)));
        assert_eq!(serde_json::to_string(&ov).unwrap(), r#"{"per_hour":5}"#);
    }
}
