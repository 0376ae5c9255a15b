//! Accounts and the reseller hierarchy (DESIGN §10).
//!
//! Depth is at most three: admin → reseller → customer, and a customer may hang directly under
//! an admin (or under nobody, meaning the panel's root admin). Every account row stores its
//! `reseller` (the reseller that owns it, or its own id for a reseller), so "is this account
//! one of reseller R's" is one indexed lookup, and lists by reseller are one index range.
//!
//! Creation checks everything before writing anything: the name, the parent's type, the
//! package (active, global or the reseller's own) and the reseller's allowance. Writes that
//! check an allowance are serialised (a process-wide lock, plus `FOR UPDATE` on the reseller's
//! row on PostgreSQL) so two concurrent creates cannot both take the last slot.

use crate::packages::{Limits, Package, PackageStatus};
use crate::{get_opt_str, ms_to_rfc3339, now_ms, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::OnceLock;
use tokio::sync::Mutex;

/// Names never given to an account (system users and words that confuse people).
pub const RESERVED_NAMES: &[&str] = &[
    "root",
    "admin",
    "administrator",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www",
    "wwwdata",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "systemd",
    "messagebus",
    "sshd",
    "mysql",
    "postgres",
    "redis",
    "exim",
    "dovecot",
    "named",
    "bind",
    "ftp",
    "nginx",
    "apache",
    "httpd",
    "npanel",
    "cpanel",
    "whm",
    "test",
    "all",
    "virtfs",
    "reseller",
    "customer",
    "system",
    "support",
    "abuse",
    "postmaster",
    "hostmaster",
    "webmaster",
    "localhost",
];

/// A terminated name may be taken again after this many days.
pub const NAME_REUSE_DAYS: i64 = 30;

/// `^[a-z][a-z0-9]{0,15}$` and not reserved.
pub fn validate_username(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 16
        && id.as_bytes()[0].is_ascii_lowercase()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        return Err(StoreError::Invalid(format!(
            "username {id:?} is invalid: 1-16 characters, a lowercase letter first, then lowercase letters or digits"
        )));
    }
    if RESERVED_NAMES.contains(&id) {
        return Err(StoreError::Invalid(format!(
            "username {id:?} is reserved; choose another"
        )));
    }
    Ok(())
}

/// Place in the hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountType {
    /// Top level.
    Admin,
    /// Sells to customers, within an allowance.
    Reseller,
    /// Has a home, sites and mail.
    Customer,
}

impl AccountType {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountType::Admin => "admin",
            AccountType::Reseller => "reseller",
            AccountType::Customer => "customer",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        match s {
            "admin" => Ok(AccountType::Admin),
            "reseller" => Ok(AccountType::Reseller),
            "customer" => Ok(AccountType::Customer),
            _ => Err(StoreError::Database(format!("stored account type {s:?}"))),
        }
    }
}

/// Lifecycle of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    /// Recorded; its `provision/create` job has not finished.
    Pending,
    /// Live.
    Active,
    /// Suspended.
    Suspended,
    /// Gone (the row stays for history and the name-reuse rule).
    Terminated,
}

impl AccountStatus {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Pending => "pending",
            AccountStatus::Active => "active",
            AccountStatus::Suspended => "suspended",
            AccountStatus::Terminated => "terminated",
        }
    }
    /// Parse the stored or query form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(AccountStatus::Pending),
            "active" => Some(AccountStatus::Active),
            "suspended" => Some(AccountStatus::Suspended),
            "terminated" => Some(AccountStatus::Terminated),
            _ => None,
        }
    }
}

/// A reseller's allowance: `None` is unlimited (max_accounts is never above 1000).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allowance {
    /// Customers it may have (≤ 1000).
    pub max_accounts: u32,
    /// Disk it may hand out, MB (sum of its customers' package quotas).
    #[serde(default)]
    pub disk_mb: Option<u64>,
    /// Bandwidth it may hand out, MB.
    #[serde(default)]
    pub bandwidth_mb: Option<u64>,
}

impl Allowance {
    /// The hard ceiling on `max_accounts`.
    pub const MAX_ACCOUNTS: u32 = 1000;

    fn check(&self) -> Result<()> {
        if self.max_accounts > Self::MAX_ACCOUNTS {
            return Err(StoreError::Invalid(format!(
                "allowance.max_accounts is {}; a reseller may have at most {} accounts",
                self.max_accounts,
                Self::MAX_ACCOUNTS
            )));
        }
        Ok(())
    }
}

/// An account as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Username.
    pub id: String,
    /// Place in the hierarchy.
    #[serde(rename = "type")]
    pub kind: AccountType,
    /// Parent account (`None`: the panel's root admin).
    pub parent: Option<String>,
    /// The reseller that owns it (its own id for a reseller).
    pub reseller: Option<String>,
    /// Package id.
    pub package: Option<String>,
    /// Lifecycle state.
    pub status: AccountStatus,
    /// Main domain.
    pub domain: Option<String>,
    /// Contact e-mail.
    pub email: Option<String>,
    /// Times (RFC 3339).
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Suspended since.
    pub suspended_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why.
    pub suspend_reason: Option<String>,
    /// Terminated at.
    pub terminated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// WHMCS service id, when WHMCS created it.
    pub whmcs_service_id: Option<String>,
    /// System user id on the host, once provisioned.
    pub uid: Option<i64>,
    /// System group id on the host, once provisioned.
    pub gid: Option<i64>,
    /// Effective limits (the package's; `null` values are unlimited).
    pub limits: Option<Limits>,
    /// Effective features (the package's granted minus disabled).
    pub features: Vec<String>,
    /// Allowance (resellers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowance: Option<Allowance>,
}

/// `POST /api/accounts` after the API has applied the caller's scope.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NewAccount {
    /// Username.
    pub id: String,
    /// Type (`customer` when absent in the API).
    pub kind: Option<AccountType>,
    /// Parent.
    pub parent: Option<String>,
    /// Package.
    pub package: Option<String>,
    /// Domain.
    pub domain: Option<String>,
    /// E-mail.
    pub email: Option<String>,
    /// Reseller allowance.
    pub allowance: Option<Allowance>,
    /// WHMCS service id.
    pub whmcs_service_id: Option<String>,
}

/// `GET /api/resellers/{id}/summary`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResellerSummary {
    /// Reseller id.
    pub reseller: String,
    /// Its allowance.
    pub allowance: Allowance,
    /// Customers that are not terminated.
    pub accounts: i64,
    /// Of which pending (creation not finished).
    pub pending: i64,
    /// Of which suspended.
    pub suspended: i64,
    /// Disk handed out (sum of its customers' package quotas, MB); `None` if one is unlimited.
    pub disk_mb_allocated: Option<u64>,
    /// Bandwidth handed out, MB; `None` if one is unlimited.
    pub bandwidth_mb_allocated: Option<u64>,
}

const ACCOUNT_COLS: &str = "a.id, a.type, a.parent, a.reseller, a.package, a.status, a.domain, a.email, a.created_at, a.suspended_at, a.suspend_reason, a.terminated_at, a.whmcs_service_id, a.allowance, a.uid, a.gid";
const COLS: &str = "a.id, a.type, a.parent, a.reseller, a.package, a.status, a.domain, a.email, a.created_at, a.suspended_at, a.suspend_reason, a.terminated_at, a.whmcs_service_id, a.allowance, a.uid, a.gid, p.limits AS p_limits, p.features AS p_features, p.disabled_features AS p_disabled";

/// What an account takes from its package: parsed once per package, not once per row.
#[derive(Clone, Default)]
struct PackageView {
    limits: Option<Limits>,
    features: Vec<String>,
}

impl PackageView {
    fn parse(
        limits: Option<String>,
        features: Option<String>,
        disabled: Option<String>,
    ) -> Result<PackageView> {
        let features: Vec<String> = match features {
            Some(f) => serde_json::from_str(&f)?,
            None => Vec::new(),
        };
        let disabled: Vec<String> = match disabled {
            Some(f) => serde_json::from_str(&f)?,
            None => Vec::new(),
        };
        Ok(PackageView {
            limits: limits.map(|l| serde_json::from_str(&l)).transpose()?,
            features: features
                .into_iter()
                .filter(|f| !disabled.contains(f))
                .collect(),
        })
    }
}

/// An account row joined with its package (`COLS`).
fn from_row(r: &AnyRow) -> Result<Account> {
    let view = PackageView::parse(
        get_opt_str(r, "p_limits")?,
        get_opt_str(r, "p_features")?,
        get_opt_str(r, "p_disabled")?,
    )?;
    account_from_row(r, view)
}

/// An account row (`ACCOUNT_COLS`) with its package's view.
fn account_from_row(r: &AnyRow, view: PackageView) -> Result<Account> {
    AccountCols {
        id: r.try_get("id")?,
        kind: r.try_get("type")?,
        parent: get_opt_str(r, "parent")?,
        reseller: get_opt_str(r, "reseller")?,
        package: get_opt_str(r, "package")?,
        status: r.try_get("status")?,
        domain: get_opt_str(r, "domain")?,
        email: get_opt_str(r, "email")?,
        created_at: r.try_get("created_at")?,
        suspended_at: r.try_get("suspended_at")?,
        suspend_reason: get_opt_str(r, "suspend_reason")?,
        terminated_at: r.try_get("terminated_at")?,
        whmcs_service_id: get_opt_str(r, "whmcs_service_id")?,
        allowance: get_opt_str(r, "allowance")?,
        uid: r.try_get("uid")?,
        gid: r.try_get("gid")?,
    }
    .into_account(view)
}

/// The columns of `ACCOUNT_COLS` as stored: read from a row, or from the JSON objects a list
/// is read as ([`Store::list_accounts`]).
#[derive(Deserialize)]
struct AccountCols {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    parent: Option<String>,
    reseller: Option<String>,
    package: Option<String>,
    status: String,
    domain: Option<String>,
    email: Option<String>,
    created_at: Option<i64>,
    suspended_at: Option<i64>,
    suspend_reason: Option<String>,
    terminated_at: Option<i64>,
    whmcs_service_id: Option<String>,
    allowance: Option<String>,
    uid: Option<i64>,
    gid: Option<i64>,
}

impl AccountCols {
    fn into_account(self, view: PackageView) -> Result<Account> {
        Ok(Account {
            id: self.id,
            kind: AccountType::parse(&self.kind)?,
            parent: self.parent,
            reseller: self.reseller,
            package: self.package,
            status: AccountStatus::parse(&self.status)
                .ok_or_else(|| StoreError::Database("stored account status".into()))?,
            domain: self.domain,
            email: self.email,
            created_at: ms_to_rfc3339(self.created_at),
            suspended_at: ms_to_rfc3339(self.suspended_at),
            suspend_reason: self.suspend_reason,
            terminated_at: ms_to_rfc3339(self.terminated_at),
            whmcs_service_id: self.whmcs_service_id,
            uid: self.uid,
            gid: self.gid,
            limits: view.limits,
            features: view.features,
            allowance: self
                .allowance
                .map(|a| serde_json::from_str(&a))
                .transpose()?,
        })
    }
}

/// `ACCOUNT_COLS` of the rows `inner` selects (aliased `a`), as one JSON array of objects in
/// its order. See [`Store::list_accounts`] for why.
fn accounts_as_json(backend: crate::Backend, inner: &str) -> String {
    match backend {
        crate::Backend::Sqlite => {
            let fields: Vec<String> = ACCOUNT_COLS
                .split(", ")
                .map(|c| {
                    let name = c.trim_start_matches("a.");
                    format!("'{name}', a.{name}")
                })
                .collect();
            format!(
                "SELECT json_group_array(json_object({}) ORDER BY a.id) FROM ({inner}) a",
                fields.join(", ")
            )
        }
        // The row as it is (its column names are the keys): `json_build_object` cost
        // PostgreSQL more than sending the rows.
        crate::Backend::Postgres => {
            format!("SELECT COALESCE(json_agg(a ORDER BY a.id), '[]')::text FROM ({inner}) a")
        }
    }
}

fn write_lock() -> &'static Mutex<()> {
    static L: OnceLock<Mutex<()>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(()))
}

fn sum_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(a?.saturating_add(b?))
}

impl Store {
    /// One account (any status).
    pub async fn account(&self, id: &str) -> Result<Account> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM accounts a LEFT JOIN packages p ON p.id = a.package WHERE a.id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no account {id:?}")))?;
        from_row(&row)
    }

    /// Accounts, keyset by id after `after`: all (`reseller` = None) or one reseller's
    /// customers; optionally one status.
    pub async fn list_accounts(
        &self,
        reseller: Option<&str>,
        status: Option<AccountStatus>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Account>> {
        // Accounts alone, then each package they are on once: a reseller's thousand
        // customers share a few packages, and joining copied (and parsed) the package's
        // limits and features into every row. The page comes back as one JSON array made by
        // the database: a row per account cost SQLite (through sqlx's `Any` driver) more than
        // the query itself (a page of 1000: 16 / 32 ms, p50 / p99).
        let mut sql = format!("SELECT {ACCOUNT_COLS} FROM accounts a WHERE a.id > $1");
        let mut n = 2;
        if reseller.is_some() {
            sql.push_str(&format!(" AND a.reseller = ${n} AND a.type = 'customer'"));
            n += 1;
        }
        if status.is_some() {
            sql.push_str(&format!(" AND a.status = ${n}"));
            n += 1;
        }
        sql.push_str(&format!(" ORDER BY a.id LIMIT ${n}"));
        let sql = accounts_as_json(self.backend(), &sql);
        let mut q = sqlx::query_scalar::<_, String>(&sql).bind(after.unwrap_or(""));
        if let Some(r) = reseller {
            q = q.bind(r);
        }
        if let Some(s) = status {
            q = q.bind(s.as_str());
        }
        let json = q.bind(limit).fetch_one(self.pool()).await?;
        let rows: Vec<AccountCols> = serde_json::from_str(&json)?;
        let mut views: HashMap<String, PackageView> = HashMap::new();
        for p in rows.iter().filter_map(|r| r.package.as_ref()) {
            if !views.contains_key(p) {
                views.insert(p.clone(), self.package_view(p).await?);
            }
        }
        rows.into_iter()
            .map(|r| {
                let view = r
                    .package
                    .as_ref()
                    .and_then(|p| views.get(p).cloned())
                    .unwrap_or_default();
                r.into_account(view)
            })
            .collect()
    }

    async fn package_view(&self, id: &str) -> Result<PackageView> {
        let row: Option<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT limits, features, disabled_features FROM packages WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some((l, f, d)) => PackageView::parse(l, f, d),
            None => Ok(PackageView::default()),
        }
    }

    /// Record a new account as `pending`, after every check (see the module docs). The
    /// `provision/create` job turns it `active`.
    pub async fn create_account(&self, new: &NewAccount) -> Result<Account> {
        self.admit_account(new, true).await?;
        self.account(&new.id).await
    }

    /// Every check of [`Store::create_account`], writing nothing.
    pub async fn check_new_account(&self, new: &NewAccount) -> Result<()> {
        self.admit_account(new, false).await
    }

    async fn admit_account(&self, new: &NewAccount, insert: bool) -> Result<()> {
        validate_username(&new.id)?;
        let kind = new.kind.unwrap_or(AccountType::Customer);
        let _g = write_lock().lock().await;
        let mut tx = self.write_tx().await?;
        // The name: unique, and a terminated one only after NAME_REUSE_DAYS.
        let old: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT status, terminated_at FROM accounts WHERE id = $1")
                .bind(&new.id)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((status, terminated_at)) = old {
            let free_at = terminated_at.map(|t| t + NAME_REUSE_DAYS * 86_400_000);
            match (status.as_str(), free_at) {
                ("terminated", Some(f)) if f <= now_ms() => {
                    sqlx::query("DELETE FROM accounts WHERE id = $1")
                        .bind(&new.id)
                        .execute(&mut *tx)
                        .await?;
                    // A new account under an old name starts from the host's security
                    // template, not the old account's overrides (SQLite does not cascade).
                    sqlx::query("DELETE FROM account_security WHERE account = $1")
                        .bind(&new.id)
                        .execute(&mut *tx)
                        .await?;
                }
                ("terminated", _) => {
                    return Err(StoreError::Conflict(format!(
                        "username {} belonged to an account terminated less than {NAME_REUSE_DAYS} days ago; choose another",
                        new.id
                    )))
                }
                _ => {
                    return Err(StoreError::Conflict(format!(
                        "username {} is taken",
                        new.id
                    )))
                }
            }
        }
        // The primary domain must not be another account's addon domain (its zone is that
        // account's: the create job could never write its own).
        if let Some(domain) = new.domain.as_deref() {
            let owner: Option<(String,)> =
                sqlx::query_as("SELECT account FROM account_domains WHERE domain = $1")
                    .bind(domain.to_ascii_lowercase())
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((owner,)) = owner {
                if owner != new.id {
                    return Err(StoreError::Conflict(format!(
                        "domain {domain} is an addon domain of another account"
                    )));
                }
            }
            if let Some((_, other)) =
                crate::domains::foreign_relative(&mut tx, &domain.to_ascii_lowercase(), &new.id)
                    .await?
            {
                return Err(StoreError::Conflict(format!(
                    "domain {domain} is related to {other}, another account's domain (a subdomain or a parent of it)"
                )));
            }
        }
        // The parent and the depth.
        let parent = match &new.parent {
            None => None,
            Some(p) => {
                let sql = if self.backend() == crate::Backend::Postgres {
                    "SELECT type, status, allowance FROM accounts WHERE id = $1 FOR UPDATE"
                } else {
                    "SELECT type, status, allowance FROM accounts WHERE id = $1"
                };
                let row: Option<(String, String, Option<String>)> =
                    sqlx::query_as(sql).bind(p).fetch_optional(&mut *tx).await?;
                let (t, s, a) = row.ok_or_else(|| {
                    StoreError::Invalid(format!("parent account {p:?} does not exist"))
                })?;
                if s == "terminated" {
                    return Err(StoreError::Invalid(format!(
                        "parent account {p} is terminated"
                    )));
                }
                Some((p.clone(), AccountType::parse(&t)?, a))
            }
        };
        let ptype = parent.as_ref().map(|p| p.1);
        match (kind, ptype) {
            (AccountType::Admin, None) => {}
            (AccountType::Admin, Some(_)) => {
                return Err(StoreError::Invalid(
                    "an admin account has no parent".into(),
                ))
            }
            (AccountType::Reseller, None | Some(AccountType::Admin)) => {}
            (AccountType::Reseller, Some(_)) => {
                return Err(StoreError::Invalid(
                    "a reseller hangs under an admin (or the root); resellers cannot create resellers"
                        .into(),
                ))
            }
            (AccountType::Customer, None | Some(AccountType::Admin | AccountType::Reseller)) => {}
            (AccountType::Customer, Some(AccountType::Customer)) => {
                return Err(StoreError::Invalid(
                    "a customer cannot have sub-accounts: the hierarchy is at most admin → reseller → customer"
                        .into(),
                ))
            }
        }
        let reseller = match (kind, &parent) {
            (AccountType::Reseller, _) => Some(new.id.clone()),
            (AccountType::Customer, Some((p, AccountType::Reseller, _))) => Some(p.clone()),
            _ => None,
        };
        if kind == AccountType::Reseller {
            new.allowance
                .as_ref()
                .ok_or_else(|| {
                    StoreError::Invalid(
                        "a reseller needs an allowance {max_accounts, disk_mb, bandwidth_mb}"
                            .into(),
                    )
                })?
                .check()?;
        } else if new.allowance.is_some() {
            return Err(StoreError::Invalid(
                "only resellers have an allowance".into(),
            ));
        }
        // The package: active, and global or the owning reseller's.
        let package = match &new.package {
            None if kind == AccountType::Customer => {
                return Err(StoreError::Invalid(
                    "a customer account needs a package".into(),
                ))
            }
            None => None,
            Some(id) => {
                let p = crate::packages::package_on(&mut *tx, id)
                    .await
                    .map_err(|e| match e {
                        StoreError::NotFound(_) => {
                            StoreError::Invalid(format!("package {id:?} does not exist"))
                        }
                        e => e,
                    })?;
                if p.status != PackageStatus::Active {
                    return Err(StoreError::Invalid(format!(
                        "package {id} is {}; only active packages take new accounts",
                        p.status.as_str()
                    )));
                }
                if p.owner.is_some() && p.owner != reseller {
                    return Err(StoreError::Invalid(format!(
                        "package {id} belongs to another reseller"
                    )));
                }
                Some(p)
            }
        };
        // The reseller's allowance.
        if kind == AccountType::Customer {
            if let Some((rid, AccountType::Reseller, allowance)) = &parent {
                let allowance: Allowance = allowance
                    .as_deref()
                    .map(serde_json::from_str)
                    .transpose()?
                    .unwrap_or_default();
                check_allowance(&mut tx, rid, &allowance, package.as_ref(), None).await?;
            }
        }
        if !insert {
            return Ok(()); // dropping the transaction rolls back the name's clean-up too
        }
        let now = now_ms();
        sqlx::query(
            "INSERT INTO accounts (id, type, parent, reseller, package, status, domain, email, created_at, whmcs_service_id, allowance) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&new.id)
        .bind(kind.as_str())
        .bind(new.parent.clone())
        .bind(reseller)
        .bind(new.package.clone())
        .bind(AccountStatus::Pending.as_str())
        .bind(new.domain.clone())
        .bind(new.email.clone())
        .bind(now)
        .bind(new.whmcs_service_id.clone())
        .bind(new.allowance.as_ref().map(serde_json::to_string).transpose()?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Check that moving `account` (a reseller's customer) to `package` stays within the
    /// reseller's allowance. Admin-level accounts always pass.
    pub async fn check_package_change(&self, account: &Account, package: &str) -> Result<()> {
        let p = self.package(package).await.map_err(|e| match e {
            StoreError::NotFound(_) => {
                StoreError::Invalid(format!("package {package:?} does not exist"))
            }
            e => e,
        })?;
        if p.status != PackageStatus::Active {
            return Err(StoreError::Invalid(format!(
                "package {package} is {}; only active packages take accounts",
                p.status.as_str()
            )));
        }
        if p.owner.is_some() && p.owner != account.reseller {
            return Err(StoreError::Invalid(format!(
                "package {package} belongs to another reseller"
            )));
        }
        if let (AccountType::Customer, Some(r)) = (account.kind, &account.reseller) {
            let reseller = self.account(r).await?;
            let mut tx = self.write_tx().await?;
            check_allowance(
                &mut tx,
                r,
                &reseller.allowance.unwrap_or_default(),
                Some(&p),
                Some(&account.id),
            )
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Set an account's status (and the matching timestamps).
    pub async fn set_account_status(
        &self,
        id: &str,
        status: AccountStatus,
        reason: Option<&str>,
    ) -> Result<Account> {
        let now = now_ms();
        let q = match status {
            AccountStatus::Suspended | AccountStatus::Terminated => {
                let col = if status == AccountStatus::Suspended {
                    "suspended_at"
                } else {
                    "terminated_at"
                };
                sqlx::query(&format!(
                    "UPDATE accounts SET status = $1, {col} = $2, suspend_reason = $3 WHERE id = $4"
                ))
                .bind(status.as_str())
                .bind(now)
                .bind(reason.map(str::to_string))
                .bind(id)
                .execute(self.pool())
                .await?
            }
            _ => {
                sqlx::query(
                    "UPDATE accounts SET status = $1, suspended_at = NULL, suspend_reason = NULL WHERE id = $2",
                )
                .bind(status.as_str())
                .bind(id)
                .execute(self.pool())
                .await?
            }
        };
        let n = q;
        if n.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no account {id:?}")));
        }
        self.account(id).await
    }

    /// Remove an account that is still `pending` (its create job could not be enqueued).
    pub async fn forget_pending_account(&self, id: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM accounts WHERE id = $1 AND status = 'pending'")
            .bind(id)
            .execute(self.pool())
            .await?;
        if n.rows_affected() > 0 {
            sqlx::query("DELETE FROM account_security WHERE account = $1")
                .bind(id)
                .execute(self.pool())
                .await?;
        }
        Ok(n.rows_affected() > 0)
    }

    /// Delete the row of an account a restore created and could not finish (DESIGN §12: a
    /// failed or cancelled restore leaves things as they were, so the name is free again),
    /// with the per-account rows that would otherwise dangle (security and mail overrides,
    /// usage samples, levels and notifications, health reports). The audit log and the job
    /// history keep what happened.
    ///
    /// Only when it is safe, all checked in the statement that deletes: the row is the one
    /// created at `created_at_ms` (not a later account under the same name), it is `pending`
    /// or `active` (nobody suspended or terminated it), it has no child accounts, no WHMCS
    /// service, no addon domains and no finished restore (`migrations`). Anything else is a
    /// [`StoreError::Conflict`] saying why, and nothing is deleted. `Ok(false)`: the row is
    /// gone already (a retried undo).
    pub async fn delete_restored_account(&self, id: &str, created_at_ms: i64) -> Result<bool> {
        let _g = write_lock().lock().await;
        let mut tx = self.write_tx().await?;
        let row: Option<(String, i64, Option<String>)> = sqlx::query_as(
            "SELECT status, created_at, whmcs_service_id FROM accounts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((status, created_at, service)) = row else {
            return Ok(false);
        };
        let refuse =
            |why: String| Err(StoreError::Conflict(format!("account {id} is kept: {why}")));
        if created_at != created_at_ms {
            return refuse(format!(
                "it was created at {created_at} ms, not at {created_at_ms} ms (another account under the same name)"
            ));
        }
        if status != "pending" && status != "active" {
            return refuse(format!("it is {status}"));
        }
        if let Some(s) = service {
            return refuse(format!("it is WHMCS service {s}"));
        }
        for (table, col, what) in [
            ("accounts", "parent", "it has child accounts"),
            ("account_domains", "account", "it has addon domains"),
            ("migrations", "account", "a restore into it has finished"),
        ] {
            let n: i64 =
                sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE {col} = $1"))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            if n > 0 {
                return refuse(what.to_string());
            }
        }
        // The same conditions again in the statement itself (PostgreSQL: another process may
        // have written since the reads above).
        let n = sqlx::query(
            "DELETE FROM accounts WHERE id = $1 AND created_at = $2 \
             AND status IN ('pending', 'active') AND whmcs_service_id IS NULL \
             AND NOT EXISTS (SELECT 1 FROM accounts c WHERE c.parent = $1) \
             AND NOT EXISTS (SELECT 1 FROM account_domains d WHERE d.account = $1) \
             AND NOT EXISTS (SELECT 1 FROM migrations m WHERE m.account = $1)",
        )
        .bind(id)
        .bind(created_at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return refuse("it changed while it was being deleted".into());
        }
        for table in [
            "account_security",
            "email_policies",
            "email_incidents",
            "usage_samples",
            "usage_levels",
            "usage_overrides",
            "usage_pending",
            "notifications",
            "health_reports",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE account = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Record the system user the host gave an account.
    pub async fn set_account_host(&self, id: &str, uid: i64, gid: i64) -> Result<()> {
        sqlx::query("UPDATE accounts SET uid = $1, gid = $2 WHERE id = $3")
            .bind(uid)
            .bind(gid)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The account WHMCS created for `service_id`, if any (the newest one).
    pub async fn account_by_service(&self, service_id: &str) -> Result<Option<Account>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM accounts a LEFT JOIN packages p ON p.id = a.package WHERE a.whmcs_service_id = $1 ORDER BY a.created_at DESC LIMIT 1"
        ))
        .bind(service_id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Accounts (not terminated) on `package`, keyset by id: what `reapply_package` walks.
    pub async fn accounts_on_package(
        &self,
        package: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Account>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM accounts a LEFT JOIN packages p ON p.id = a.package WHERE a.package = $1 AND a.status <> 'terminated' AND a.id > $2 ORDER BY a.id LIMIT $3"
        ))
        .bind(package)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Customer accounts that live on the host (active or suspended), keyset by id: what the
    /// quota sweep walks.
    pub async fn hosted_accounts(&self, after: Option<&str>, limit: i64) -> Result<Vec<Account>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM accounts a LEFT JOIN packages p ON p.id = a.package WHERE a.type = 'customer' AND a.status IN ('active', 'suspended') AND a.id > $1 ORDER BY a.id LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Point an account at another package (after [`Store::check_package_change`]).
    pub async fn set_account_package(&self, id: &str, package: &str) -> Result<Account> {
        sqlx::query("UPDATE accounts SET package = $1 WHERE id = $2")
            .bind(package)
            .bind(id)
            .execute(self.pool())
            .await?;
        self.account(id).await
    }

    /// Replace a reseller's allowance (refused below what it already uses).
    pub async fn set_allowance(&self, id: &str, allowance: &Allowance) -> Result<Account> {
        allowance.check()?;
        let _g = write_lock().lock().await;
        let a = self.account(id).await?;
        if a.kind != AccountType::Reseller {
            return Err(StoreError::Invalid(format!("{id} is not a reseller")));
        }
        let s = self.reseller_summary(id).await?;
        if s.accounts > allowance.max_accounts as i64 {
            return Err(StoreError::AllowanceExceeded(format!(
                "reseller {id} already has {} accounts; the new allowance of {} is below that",
                s.accounts, allowance.max_accounts
            )));
        }
        sqlx::query("UPDATE accounts SET allowance = $1 WHERE id = $2")
            .bind(serde_json::to_string(allowance)?)
            .bind(id)
            .execute(self.pool())
            .await?;
        self.account(id).await
    }

    /// What a reseller uses against its allowance.
    pub async fn reseller_summary(&self, id: &str) -> Result<ResellerSummary> {
        let a = self.account(id).await?;
        if a.kind != AccountType::Reseller {
            return Err(StoreError::NotFound(format!("no reseller {id:?}")));
        }
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT a.status, p.limits FROM accounts a LEFT JOIN packages p ON p.id = a.package WHERE a.reseller = $1 AND a.type = 'customer' AND a.status <> 'terminated'",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        let pending = rows.iter().filter(|r| r.0 == "pending").count() as i64;
        let suspended = rows.iter().filter(|r| r.0 == "suspended").count() as i64;
        let (disk, bw) = handed_out(rows.iter().map(|r| r.1.as_deref()))?;
        Ok(ResellerSummary {
            reseller: id.to_string(),
            allowance: a.allowance.unwrap_or_default(),
            accounts: rows.len() as i64,
            pending,
            suspended,
            disk_mb_allocated: disk,
            bandwidth_mb_allocated: bw,
        })
    }
}

/// Disk and bandwidth handed out by packages (stored limits JSON); `None` once one of them is
/// unlimited.
fn handed_out<'a>(
    limits: impl Iterator<Item = Option<&'a str>>,
) -> Result<(Option<u64>, Option<u64>)> {
    let (mut disk, mut bw) = (Some(0u64), Some(0u64));
    for l in limits {
        let l: Limits = l.map(serde_json::from_str).transpose()?.unwrap_or_default();
        disk = sum_opt(disk, l.disk_mb);
        bw = sum_opt(bw, l.bandwidth_mb);
    }
    Ok((disk, bw))
}

/// Refuse when adding `package` (instead of `replacing`'s current one) would exceed the
/// reseller's allowance.
async fn check_allowance(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    reseller: &str,
    allowance: &Allowance,
    package: Option<&Package>,
    replacing: Option<&str>,
) -> Result<()> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT a.id, p.limits FROM accounts a LEFT JOIN packages p ON p.id = a.package WHERE a.reseller = $1 AND a.type = 'customer' AND a.status <> 'terminated'",
    )
    .bind(reseller)
    .fetch_all(&mut **tx)
    .await?;
    let others = rows.iter().filter(|(id, _)| Some(id.as_str()) != replacing);
    let count = others.clone().count() as u64 + 1;
    if count > allowance.max_accounts as u64 {
        return Err(StoreError::AllowanceExceeded(format!(
            "reseller {reseller} may have {} accounts and already has {}; nothing was created",
            allowance.max_accounts,
            count - 1
        )));
    }
    let (disk, bw) = handed_out(others.map(|r| r.1.as_deref()))?;
    let new = package.map(|p| p.limits.clone()).unwrap_or_default();
    for (what, used, add, cap) in [
        ("disk", disk, new.disk_mb, allowance.disk_mb),
        ("bandwidth", bw, new.bandwidth_mb, allowance.bandwidth_mb),
    ] {
        if let Some(cap) = cap {
            match sum_opt(used, add) {
                Some(total) if total <= cap => {}
                Some(total) => {
                    return Err(StoreError::AllowanceExceeded(format!(
                        "reseller {reseller}'s {what} allowance is {cap} MB; this would hand out {total} MB"
                    )))
                }
                None => {
                    return Err(StoreError::AllowanceExceeded(format!(
                        "reseller {reseller}'s {what} allowance is {cap} MB; an unlimited package cannot fit in it"
                    )))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(validate_username("acme1").is_ok());
        for bad in [
            "",
            "1abc",
            "Acme",
            "a-b",
            "abcdefghijklmnopq",
            "root",
            "mysql",
        ] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }
}
