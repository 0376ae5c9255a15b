//! nPanel's system of record (DESIGN §7, §10): accounts and the reseller hierarchy, packages, job
//! history, the audit log, WHMCS API keys, per-account security and email policies and the
//! accounts' extra domains, over sqlx; and, apart from those, the accounts' own MariaDB/MySQL
//! databases ([`HostedDatabases`]), which the API and the workers both need.
//!
//! # Why this shape
//! - **One code path for two databases.** SQLite is the default (`<data_dir>/npanel.db`, WAL,
//!   created on first start: zero set-up); PostgreSQL is chosen by `DATABASE_URL` for several
//!   hosts. Both go through sqlx's `Any` driver with portable SQL (`$n` placeholders, `ON
//!   CONFLICT`, `TEXT`/`BIGINT` columns, times as Unix milliseconds, documents as JSON text), so
//!   the same tests prove both. Each backend has its own embedded migration directory so a
//!   future migration can use a dialect where it must.
//! - **Redis holds live work, the store holds records.** Nothing here knows Redis: the API moves
//!   finished jobs in ([`Store::archive_jobs`]) and drains the audit outbox into
//!   [`Store::append_audit`].
//! - **Errors say what to do.** [`StoreError`] separates "the database is down" (the API answers
//!   503) from bad input (422/409) and from bugs (500).

mod accounts;
mod audit;
mod config_versions;
mod cursor;
mod domains;
mod email_policy;
mod error;
mod health;
mod history;
mod hosted_databases;
mod packages;
mod security;
#[cfg(feature = "test-support")]
pub mod testing;
mod usage;
mod whmcs;

pub use accounts::{
    validate_username, Account, AccountStatus, AccountType, Allowance, NewAccount, ResellerSummary,
    RESERVED_NAMES,
};
pub use audit::{ms_time, Actor, AuditFilter, AuditRecord, NewAudit, Verification};
pub use config_versions::{ConfigVersion, NewConfigVersion};
pub use cursor::Cursor;
pub use domains::{
    normalize_domain, AccountDomain, DomainError, DomainKind, MAX_DOMAIN_LABEL_LEN, MAX_DOMAIN_LEN,
};
pub use email_policy::{
    effective_email_policy, EffectiveEmailPolicy, EmailIncident, EmailPolicy, EmailPolicyOverride,
    PolicySource, DEFAULT_EMAIL_POLICY, EMAIL_POLICY_FIELDS, MAX_EMAIL_CONNECTIONS,
    MAX_EMAIL_MB_PER_HOUR, MAX_EMAIL_PER_HOUR,
};
pub use error::{Result, StoreError};
pub use health::{HealthReportRow, Migration, HEALTH_KEEP_DAYS};
pub use history::{HistoryFilter, HistoryRow};
pub use hosted_databases::{
    hosted_database_name, CreatedDatabase, DatabaseError, HostedDatabase, HostedDatabases,
    MAX_DATABASE_NAME_LEN,
};
pub use packages::{
    parse_package_yaml, Limits, NewPackage, Package, PackageStatus, PackageUpdate, FEATURES,
    MAX_PACKAGES, MAX_PACKAGE_BYTES,
};
pub use security::{
    template_source, AccountSecurity, EffectiveSecurity, MailRelay, OpenBasedir, SecurityError,
    SecurityOverrides, SecurityPolicy, SecuritySettings, TcpForwarding, HOME_MODES,
    PASSWORD_MAX_LENGTH, SECURITY_SETTINGS,
};
pub use usage::{
    month_start_ms, Notification, UsageLevel, UsageNow, UsageOverride, UsagePoint, UsageSample,
    DAY_MS, HOURLY_KEEP_MS, HOUR_MS, USAGE_KEEP_MS,
};
pub use whmcs::{ActiveKey, WhmcsKey, DEFAULT_ROTATION_GRACE};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor};
use std::path::Path;
use std::time::Duration;

/// Which database is behind the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file (the default).
    Sqlite,
    /// PostgreSQL (`DATABASE_URL`).
    Postgres,
}

/// The store. Cheap to clone (a pool).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Open the SQLite file at `path` (created with its directory if missing) and migrate it.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let store = Store::connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
        restrict(path);
        Ok(store)
    }

    /// Connect to `url` (`sqlite://…` or `postgres://…`) and run the embedded migrations.
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, true).await
    }

    /// Connect to `url` as it is, running no migration: for read-only tools (`npanel config
    /// diff|versions`) that must not change a store another version of the binary serves.
    pub async fn connect_existing(url: &str) -> Result<Store> {
        Store::connect_with(url, false).await
    }

    async fn connect_with(url: &str, migrate: bool) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Invalid(format!(
                "unsupported database URL {:?}: use sqlite://PATH or postgres://…",
                redact_url(url)
            )));
        };
        let mut opts = AnyPoolOptions::new()
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Some(Duration::from_secs(300)));
        if backend == Backend::Sqlite {
            // One writer at a time is SQLite's rule; a few readers beside it are plenty.
            opts = opts.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;")
                        .await?;
                    Ok(())
                })
            });
        } else {
            opts = opts.max_connections(16);
        }
        let pool = opts.connect(url).await.map_err(|e| {
            StoreError::Unavailable(format!("cannot open the store at {}: {e}", redact_url(url)))
        })?;
        if backend == Backend::Sqlite {
            if let Some(p) = url
                .strip_prefix("sqlite://")
                .map(|p| p.split('?').next().unwrap_or(p))
            {
                restrict(Path::new(p));
            }
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        if migrate {
            migrator
                .run(&pool)
                .await
                .map_err(|e| StoreError::Unavailable(format!("store migration failed: {e}")))?;
        }
        Ok(Store { pool, backend })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// One round trip (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Close the pool (tests simulate a store that is down with it).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads and then writes fails at once
    /// with "database is locked" when another writer committed in between, whereas an
    /// immediate one waits its turn (`busy_timeout`).
    pub(crate) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }
}

/// Accounts, e-mail addresses and the audit log are private: the database file is the owner's
/// only (SQLite gives its `-wal`/`-shm` files the same mode).
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

/// A URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub(crate) fn get_opt_str(row: &AnyRow, col: &str) -> Result<Option<String>> {
    use sqlx::Row;
    Ok(row.try_get::<Option<String>, _>(col)?)
}

pub(crate) fn ms_to_rfc3339(ms: Option<i64>) -> Option<chrono::DateTime<chrono::Utc>> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
}

/// `url` (a PostgreSQL URL) pointed at database `db`, its query string kept.
pub fn with_database(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            super::redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
