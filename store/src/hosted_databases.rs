//! The accounts' own MariaDB/MySQL databases (DESIGN §11, §13; issue 9): named
//! `<account>_<name>`, on the server at `databases.url`, listed with their sizes and created
//! within the package's `databases` limit.
//!
//! # Why this lives in the store crate
//! Both the API (list, and the limit checked before a job is enqueued) and the `provision`
//! job (the create, the limit checked again) need it, and the API never links `workers`
//! (STYLE.md §1). The store is where the workspace's sqlx lives; this module is its one use of
//! the MySQL driver and shares nothing else with the system of record. The server is not
//! root-privileged: a login with `CREATE` and global read of `information_schema` is enough.
//!
//! # Why this shape
//! - **The server is the record.** There is no table of databases: what exists is what
//!   `information_schema.schemata` lists under the account's prefix, so a database made by a
//!   restore or by hand counts the same. Account names are `[a-z][a-z0-9]*` (no `_`), so the
//!   owner of `<account>_<name>` is the part before the first `_`; the prefix is matched with
//!   `_` escaped, since `LIKE` reads it as "any character".
//! - **The limit holds under races.** [`HostedDatabases::create`] takes a server-side named
//!   lock per account (`GET_LOCK`) on a connection of its own, then counts and creates: two
//!   jobs (on two workers) cannot both take the last slot. The lock goes with the connection.
//! - **Idempotent.** A database that exists already is "already so" (`created: false`), never
//!   refused by the limit, so a retried job finishes instead of failing on what it made.
//! - **Lazy.** [`HostedDatabases::new`] opens nothing: a server that is down makes the calls
//!   that need it answer [`DatabaseError::Unavailable`], never the panel's start.

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, Row};
use std::str::FromStr;
use std::time::Duration;

/// Longest database name the server takes (the whole `<account>_<name>`).
pub const MAX_DATABASE_NAME_LEN: usize = 64;

/// What went wrong with a hosted database.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// A bad name (or URL); the message says which rule.
    #[error("{0}")]
    Invalid(String),
    /// The account has as many databases as its package allows; nothing was created.
    #[error("account {account} has {used} database(s) and its package allows {limit}; remove one before creating another")]
    LimitReached {
        /// The account.
        account: String,
        /// Databases it has.
        used: i64,
        /// The package's `databases`.
        limit: u64,
    },
    /// The server cannot be reached (or is busy with the account): retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The server refused (privileges, a bug).
    #[error("the database server refused: {0}")]
    Server(String),
}

impl From<sqlx::Error> for DatabaseError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) => DatabaseError::Server(d.message().to_string()),
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_) => {
                DatabaseError::Unavailable(format!("the database server is unavailable: {e}"))
            }
            _ => DatabaseError::Server(e.to_string()),
        }
    }
}

/// One of an account's databases.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostedDatabase {
    /// The full name, `<account>_<name>`.
    pub name: String,
    /// The part after `<account>_`.
    pub short_name: String,
    /// Data and indexes, as the server accounts them (0 for a database without tables).
    pub size_bytes: i64,
    /// Tables (and views) in it.
    pub tables: i64,
}

/// What [`HostedDatabases::create`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CreatedDatabase {
    /// The full name.
    pub name: String,
    /// false when it existed already.
    pub created: bool,
}

/// `<account>_<name>`, if `name` is 1 or more of `[a-z0-9_]` and the whole is at most
/// [`MAX_DATABASE_NAME_LEN`] characters.
///
/// # Errors
/// [`DatabaseError::Invalid`] saying which rule.
pub fn hosted_database_name(account: &str, name: &str) -> Result<String, DatabaseError> {
    crate::validate_username(account)
        .map_err(|e| DatabaseError::Invalid(format!("account: {e}")))?;
    if name.is_empty() {
        return Err(DatabaseError::Invalid("the database name is empty".into()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(DatabaseError::Invalid(format!(
            "database name {name:?}: only a-z, 0-9 and _ are allowed (found {c:?})"
        )));
    }
    let full = format!("{account}_{name}");
    if full.len() > MAX_DATABASE_NAME_LEN {
        return Err(DatabaseError::Invalid(format!(
            "database name {full:?} is {} characters; with the \"{account}_\" prefix it may be at most {MAX_DATABASE_NAME_LEN}",
            full.len()
        )));
    }
    Ok(full)
}

/// `s` for a `LIKE … ESCAPE '!'` pattern, matched literally.
fn like_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '!' | '_' | '%') {
            out.push('!');
        }
        out.push(c);
    }
    out
}

/// The server at `databases.url`. Cheap to clone (a pool).
#[derive(Clone)]
pub struct HostedDatabases {
    pool: MySqlPool,
    opts: MySqlConnectOptions,
    url: String,
}

impl std::fmt::Debug for HostedDatabases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedDatabases")
            .field("url", &self.url)
            .finish()
    }
}

impl HostedDatabases {
    /// The server at `url` (`mysql://user:password@host:3306`, or `mariadb://…`); connects on
    /// first use.
    ///
    /// # Errors
    /// [`DatabaseError::Invalid`] for a URL that is not a MySQL one.
    pub fn new(url: &str) -> Result<HostedDatabases, DatabaseError> {
        if !(url.starts_with("mysql://") || url.starts_with("mariadb://")) {
            return Err(DatabaseError::Invalid(format!(
                "databases.url {:?} is not a mysql:// URL",
                crate::redact_url(url)
            )));
        }
        let opts = MySqlConnectOptions::from_str(url).map_err(|e| {
            DatabaseError::Invalid(format!(
                "databases.url {:?} is not a mysql:// URL: {e}",
                crate::redact_url(url)
            ))
        })?;
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy_with(opts.clone());
        Ok(HostedDatabases {
            pool,
            opts,
            url: crate::redact_url(url),
        })
    }

    /// The account's databases with their sizes, by name.
    pub async fn list(&self, account: &str) -> Result<Vec<HostedDatabase>, DatabaseError> {
        crate::validate_username(account)
            .map_err(|e| DatabaseError::Invalid(format!("account: {e}")))?;
        let rows = sqlx::query(
            "SELECT s.schema_name, CAST(COALESCE(SUM(t.data_length + t.index_length), 0) AS SIGNED), \
             COUNT(t.table_name) \
             FROM information_schema.schemata s LEFT JOIN information_schema.tables t \
             ON t.table_schema = s.schema_name \
             WHERE s.schema_name LIKE ? ESCAPE '!' GROUP BY s.schema_name ORDER BY s.schema_name",
        )
        .bind(format!("{}%", like_literal(&format!("{account}_"))))
        .fetch_all(&self.pool)
        .await?;
        let prefix = format!("{account}_");
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r.try_get(0)?;
            let Some(short) = name.strip_prefix(&prefix) else {
                continue; // a collation that folds case matched another case; not ours
            };
            out.push(HostedDatabase {
                short_name: short.to_string(),
                size_bytes: r.try_get::<Option<i64>, _>(1)?.unwrap_or(0),
                tables: r.try_get(2)?,
                name,
            });
        }
        Ok(out)
    }

    /// How many databases the account has.
    pub async fn count(&self, account: &str) -> Result<i64, DatabaseError> {
        Ok(self.list(account).await?.len() as i64)
    }

    /// Whether a database of this full name exists.
    pub async fn exists(&self, full_name: &str) -> Result<bool, DatabaseError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?",
        )
        .bind(full_name)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Create `<account>_<name>` unless the account already has `limit` databases (the
    /// package's `databases`; `None`: unlimited). A database that exists is left as it is
    /// (`created: false`), whatever the limit.
    ///
    /// # Errors
    /// [`DatabaseError::Invalid`] (the name), [`DatabaseError::LimitReached`] (nothing
    /// created), [`DatabaseError::Unavailable`] (retry), [`DatabaseError::Server`].
    pub async fn create(
        &self,
        account: &str,
        name: &str,
        limit: Option<u64>,
    ) -> Result<CreatedDatabase, DatabaseError> {
        let full = hosted_database_name(account, name)?;
        // A connection of its own: the named lock is the connection's, and closing it
        // releases the lock whatever happens below.
        let mut conn = tokio::time::timeout(Duration::from_secs(5), self.opts.connect())
            .await
            .map_err(|_| {
                DatabaseError::Unavailable(format!(
                    "the database server at {} did not answer within 5 s",
                    self.url
                ))
            })??;
        let res = self.create_locked(&mut conn, account, &full, limit).await;
        let _ = conn.close().await;
        res
    }

    async fn create_locked(
        &self,
        conn: &mut sqlx::MySqlConnection,
        account: &str,
        full: &str,
        limit: Option<u64>,
    ) -> Result<CreatedDatabase, DatabaseError> {
        let lock = format!("npanel_db_{account}");
        let got: Option<i64> = sqlx::query_scalar("SELECT CAST(GET_LOCK(?, 10) AS SIGNED)")
            .bind(&lock)
            .fetch_one(&mut *conn)
            .await?;
        if got != Some(1) {
            return Err(DatabaseError::Unavailable(format!(
                "another database of account {account} is being created; retry shortly"
            )));
        }
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?",
        )
        .bind(full)
        .fetch_one(&mut *conn)
        .await?;
        if n > 0 {
            return Ok(CreatedDatabase {
                name: full.to_string(),
                created: false,
            });
        }
        if let Some(limit) = limit {
            let used: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE ? ESCAPE '!'",
            )
            .bind(format!("{}%", like_literal(&format!("{account}_"))))
            .fetch_one(&mut *conn)
            .await?;
            if u64::try_from(used).unwrap_or(0) >= limit {
                return Err(DatabaseError::LimitReached {
                    account: account.to_string(),
                    used,
                    limit,
                });
            }
        }
        // The name is `[a-z0-9_]` only (checked above): safe between backquotes.
        sqlx::query(&format!(
            "CREATE DATABASE IF NOT EXISTS `{full}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))
        .execute(&mut *conn)
        .await?;
        Ok(CreatedDatabase {
            name: full.to_string(),
            created: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(hosted_database_name("bob", "wp_1").unwrap(), "bob_wp_1");
        for bad in ["", "WP", "a-b", "a b", "é", "x;drop"] {
            assert!(hosted_database_name("bob", bad).is_err(), "{bad:?}");
        }
        assert!(hosted_database_name("bob", &"x".repeat(60)).is_ok());
        assert!(hosted_database_name("bob", &"x".repeat(61)).is_err());
        assert!(hosted_database_name("Bob", "x").is_err());
        assert_eq!(like_literal("a_b%!"), "a!_b!%!!");
    }
}
