//! An account's domains beyond its primary one (`account_domains`, schema 12; DESIGN §10, §11,
//! §13, issue 9): addon domains, counted against the package's `addon_domains`.
//!
//! # Why this shape
//! - **One owner per domain, checked in one place.** A domain is a zone file, a web root and
//!   the mailbox logins `box@domain`; two accounts owning one would hand one's mail to the
//!   other. The table's key makes an extra domain unique across every account, and
//!   [`Store::add_addon_domain`] also refuses any live account's primary domain
//!   (`accounts.domain`), which no constraint can say. Domains are stored lower case.
//! - **The limit is held where the row is written.** [`Store::add_addon_domain`] counts the
//!   account's addon domains and inserts in one write transaction (SQLite's `BEGIN IMMEDIATE`;
//!   on PostgreSQL the account's row is locked first), so two concurrent jobs cannot both take
//!   the last slot. The API checks the same thing first ([`Store::check_addon_domain`]) to
//!   answer 409 before it enqueues anything.
//! - **Idempotent for jobs.** Adding a domain the account already has is "already so", not an
//!   error, so a retried `provision/add_domain` job finishes the work; removing one that is
//!   gone answers `false`.
//! - **Typed refusals.** [`DomainError`] separates "taken" from "limit reached" from the
//!   store's own errors, so the API maps each to its code without reading messages.
//! - **Validation matches the agent's.** [`normalize_domain`] applies the same rules as the
//!   agent's `Domain::parse` (the host refuses what this lets through otherwise); a test in
//!   `workers` checks that they agree.

use crate::{ms_to_rfc3339, now_ms, Backend, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::HashMap;

/// Longest domain name.
pub const MAX_DOMAIN_LEN: usize = 253;
/// Longest label of a domain name.
pub const MAX_DOMAIN_LABEL_LEN: usize = 63;

/// What an extra domain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainKind {
    /// A site of its own (web root, zone, mail); counted against `addon_domains`.
    Addon,
    /// Another name for the primary domain (not counted).
    Parked,
    /// A subdomain of one of the account's domains (not counted).
    Sub,
}

impl DomainKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainKind::Addon => "addon",
            DomainKind::Parked => "parked",
            DomainKind::Sub => "sub",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "addon" => Ok(DomainKind::Addon),
            "parked" => Ok(DomainKind::Parked),
            "sub" => Ok(DomainKind::Sub),
            _ => Err(StoreError::Database(format!("stored domain kind {s:?}"))),
        }
    }
}

/// One extra domain of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountDomain {
    /// The domain, lower case.
    pub domain: String,
    /// The account owning it.
    pub account: String,
    /// `addon` (or `parked`, `sub`).
    pub kind: DomainKind,
    /// When it was added.
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Why a domain was not added.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The domain belongs to an account already (as an extra or a primary domain).
    #[error("domain {domain} is already in use{}", if *.same_account { " by this account" } else { "" })]
    Taken {
        /// The domain.
        domain: String,
        /// Whether the account asking owns it already (another account's name is not told).
        same_account: bool,
    },
    /// The account has as many addon domains as its package allows; nothing was written.
    #[error("account {account} has {used} addon domain(s) and its package allows {limit}; remove one before adding another")]
    LimitReached {
        /// The account.
        account: String,
        /// Addon domains it has.
        used: i64,
        /// The package's `addon_domains`.
        limit: u64,
    },
    /// Bad input (an invalid domain: [`StoreError::Invalid`]) or the store's own trouble.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for DomainError {
    fn from(e: sqlx::Error) -> Self {
        DomainError::Store(e.into())
    }
}

/// `name` as stored (lower case) if it is a valid domain name: at least two labels of letters,
/// digits and inner hyphens (≤ 63 each, ≤ 253 in all), not ending in an all-digit label.
///
/// # Errors
/// [`StoreError::Invalid`] saying what is wrong.
pub fn normalize_domain(name: &str) -> Result<String> {
    let bad = |why: String| Err(StoreError::Invalid(why));
    if name.is_empty() {
        return bad("domain is empty".into());
    }
    if name.len() > MAX_DOMAIN_LEN {
        return bad(format!("domain is longer than {MAX_DOMAIN_LEN} characters"));
    }
    let lower = name.to_ascii_lowercase();
    let labels: Vec<&str> = lower.split('.').collect();
    if labels.len() < 2 {
        return bad(format!(
            "domain {name:?} needs at least two labels (like example.com)"
        ));
    }
    for label in &labels {
        if label.is_empty() {
            return bad(format!(
                "domain {name:?} has an empty label (a leading, trailing or double dot)"
            ));
        }
        if label.len() > MAX_DOMAIN_LABEL_LEN {
            return bad(format!(
                "domain {name:?}: label {label:?} is longer than {MAX_DOMAIN_LABEL_LEN} characters"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return bad(format!(
                "domain {name:?}: only letters, digits, '-' and '.' are allowed (found {c:?})"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad(format!(
                "domain {name:?}: label {label:?} starts or ends with '-'"
            ));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return bad(format!(
            "domain {name:?}: the last label is all digits (an IP address is not a domain)"
        ));
    }
    Ok(lower)
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<AccountDomain> {
    Ok(AccountDomain {
        domain: r.try_get("domain")?,
        account: r.try_get("account")?,
        kind: DomainKind::parse(&r.try_get::<String, _>("kind")?)?,
        created_at: ms_to_rfc3339(Some(r.try_get::<i64, _>("created_at")?)),
    })
}

impl Store {
    /// The account's extra domains (every kind), by name.
    pub async fn account_domains(&self, account: &str) -> Result<Vec<AccountDomain>> {
        let rows = sqlx::query(
            "SELECT domain, account, kind, created_at FROM account_domains WHERE account = $1 ORDER BY domain",
        )
        .bind(account)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Every domain of the account: its primary one first (when it has one), then its extra
    /// ones by name. What its mail policy maps to it.
    pub async fn all_domains(&self, account: &str) -> Result<Vec<String>> {
        let primary: Option<Option<String>> =
            sqlx::query_scalar("SELECT domain FROM accounts WHERE id = $1")
                .bind(account)
                .fetch_optional(self.pool())
                .await?;
        let mut out: Vec<String> = primary
            .flatten()
            .map(|d| d.to_ascii_lowercase())
            .into_iter()
            .collect();
        for d in self.account_domains(account).await? {
            if !out.contains(&d.domain) {
                out.push(d.domain);
            }
        }
        Ok(out)
    }

    /// Addon domains per account (accounts without any are absent): what the quota sweep
    /// holds against the packages' `addon_domains`.
    pub async fn addon_domain_counts(&self) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT account, COUNT(*) AS n FROM account_domains WHERE kind = 'addon' GROUP BY account",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
            .collect()
    }

    /// Every check of [`Store::add_addon_domain`], writing nothing; unlike it, a domain the
    /// account has already is refused too (`Taken { same_account: true }`): a new request
    /// for it is a conflict, a retried job is not. `limit` is the package's `addon_domains`
    /// (`None`: unlimited; `Some(0)`: none allowed).
    pub async fn check_addon_domain(
        &self,
        account: &str,
        domain: &str,
        limit: Option<u64>,
    ) -> Result<(), DomainError> {
        let domain = normalize_domain(domain)?;
        let mut conn = self.pool().acquire().await.map_err(StoreError::from)?;
        if let Some(owner) = owner_on(&mut conn, &domain).await? {
            return Err(DomainError::Taken {
                same_account: owner == account,
                domain,
            });
        }
        if foreign_relative(&mut conn, &domain, account)
            .await?
            .is_some()
        {
            return Err(DomainError::Taken {
                same_account: false,
                domain,
            });
        }
        check_limit(&mut conn, account, limit).await
    }

    /// Record `domain` as an addon domain of `account`, within `limit` (the package's
    /// `addon_domains`; `None`: unlimited), counted and written in one transaction. A domain
    /// the account has already is returned as it is (idempotent).
    ///
    /// # Errors
    /// [`DomainError::Taken`] when another account owns it (as an extra or a live primary
    /// domain, or it is this account's primary domain); [`DomainError::LimitReached`];
    /// [`StoreError::Invalid`] for an invalid name.
    pub async fn add_addon_domain(
        &self,
        account: &str,
        domain: &str,
        limit: Option<u64>,
    ) -> Result<AccountDomain, DomainError> {
        let domain = normalize_domain(domain)?;
        let mut tx = self.write_tx().await?;
        if self.backend() == Backend::Postgres {
            // Serialises the account's concurrent adds, so the count below stays true.
            sqlx::query("SELECT id FROM accounts WHERE id = $1 FOR UPDATE")
                .bind(account)
                .execute(&mut *tx)
                .await?;
        }
        let existing = sqlx::query(
            "SELECT domain, account, kind, created_at FROM account_domains WHERE domain = $1",
        )
        .bind(&domain)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = existing {
            let d = from_row(&r)?;
            if d.account == account && d.kind == DomainKind::Addon {
                return Ok(d);
            }
            return Err(DomainError::Taken {
                same_account: d.account == account,
                domain,
            });
        }
        if foreign_relative(&mut tx, &domain, account).await?.is_some() {
            return Err(DomainError::Taken {
                same_account: false,
                domain,
            });
        }
        if let Some(owner) = owner_on(&mut tx, &domain).await? {
            return Err(DomainError::Taken {
                same_account: owner == account,
                domain,
            });
        }
        check_limit(&mut tx, account, limit).await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO account_domains (domain, account, kind, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&domain)
        .bind(account)
        .bind(DomainKind::Addon.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| match StoreError::from(e) {
            // A concurrent add of the same domain by another account won the race.
            StoreError::Conflict(_) => DomainError::Taken {
                domain: domain.clone(),
                same_account: false,
            },
            e => e.into(),
        })?;
        tx.commit().await?;
        Ok(AccountDomain {
            domain,
            account: account.to_string(),
            kind: DomainKind::Addon,
            created_at: ms_to_rfc3339(Some(now)),
        })
    }

    /// Forget one of the account's extra domains; `false` when it had no such domain.
    pub async fn remove_account_domain(&self, account: &str, domain: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM account_domains WHERE account = $1 AND domain = $2")
            .bind(account)
            .bind(domain.to_ascii_lowercase())
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(n > 0)
    }
}

/// The account owning `domain` as an extra domain, or as the primary domain of an account
/// that is not terminated.
/// Another live account that owns a parent of `domain` (`victim.com` for `www.victim.com`) or
/// a name under it (`www.victim.com` for `victim.com`), as a primary or an extra domain: the
/// zone of one would answer for the other, so a domain related to another tenant's is refused
/// (cPanel's default too). Returns that account and its domain.
pub(crate) async fn foreign_relative(
    conn: &mut sqlx::AnyConnection,
    domain: &str,
    account: &str,
) -> Result<Option<(String, String)>> {
    let labels: Vec<&str> = domain.split('.').collect();
    // Parents with at least two labels.
    for i in 1..labels.len().saturating_sub(1) {
        let parent = labels[i..].join(".");
        if let Some(owner) = owner_on(conn, &parent).await? {
            if owner != account {
                return Ok(Some((owner, parent)));
            }
        }
    }
    let pattern = format!("%.{domain}");
    let extra: Option<(String, String)> = sqlx::query_as(
        "SELECT account, domain FROM account_domains WHERE domain LIKE $1 AND account <> $2 LIMIT 1",
    )
    .bind(&pattern)
    .bind(account)
    .fetch_optional(&mut *conn)
    .await?;
    if extra.is_some() {
        return Ok(extra);
    }
    Ok(sqlx::query_as(
        "SELECT id, LOWER(domain) FROM accounts WHERE LOWER(domain) LIKE $1 AND id <> $2 AND status <> 'terminated' LIMIT 1",
    )
    .bind(&pattern)
    .bind(account)
    .fetch_optional(&mut *conn)
    .await?)
}

async fn owner_on(conn: &mut sqlx::AnyConnection, domain: &str) -> Result<Option<String>> {
    let extra: Option<String> =
        sqlx::query_scalar("SELECT account FROM account_domains WHERE domain = $1")
            .bind(domain)
            .fetch_optional(&mut *conn)
            .await?;
    if extra.is_some() {
        return Ok(extra);
    }
    Ok(sqlx::query_scalar(
        "SELECT id FROM accounts WHERE LOWER(domain) = $1 AND status <> 'terminated' ORDER BY id LIMIT 1",
    )
    .bind(domain)
    .fetch_optional(&mut *conn)
    .await?)
}

async fn check_limit(
    conn: &mut sqlx::AnyConnection,
    account: &str,
    limit: Option<u64>,
) -> Result<(), DomainError> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let used: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM account_domains WHERE account = $1 AND kind = 'addon'",
    )
    .bind(account)
    .fetch_one(&mut *conn)
    .await?;
    if u64::try_from(used).unwrap_or(0) >= limit {
        return Err(DomainError::LimitReached {
            account: account.to_string(),
            used,
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::normalize_domain;

    #[test]
    fn domains_are_validated_and_lowered() {
        assert_eq!(normalize_domain("Shop.Example").unwrap(), "shop.example");
        for bad in [
            "",
            "localhost",
            ".example",
            "a..example",
            "-a.example",
            "a_b.example",
            "1.2.3.4",
            "a.example.",
        ] {
            assert!(normalize_domain(bad).is_err(), "{bad:?}");
        }
        assert!(normalize_domain(&format!("{}.example", "a".repeat(64))).is_err());
    }
}
