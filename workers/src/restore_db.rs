//! A restore's databases (DESIGN §11, §12): each `mysql/<db>.sql` of the archive imported into
//! `<account>_<name>` on the server at `databases.url`, and its application users
//! (`mysql.sql` grants with `mysql.sql-auth.json` hashes) created without `DROP`.
//!
//! # Safety
//! A dump is text from somebody else's server: it could say `USE other_db` or `DROP DATABASE`.
//! So the import does not run as the configured (administrative) user: each database gets a
//! temporary user with privileges on that database only, the dump runs through it, and the
//! user is dropped afterwards. A statement the server refuses (a broken `CREATE TABLE`, a
//! privilege the temporary user lacks) is listed in `skipped` and the import goes on.
//!
//! # Never over somebody's data
//! A database that exists already is left alone (listed as skipped) unless an earlier attempt
//! of this same restore created it (a marker table names the restore until the restore
//! finishes, [`finish`]): then it is dropped and imported again, so a retried restore doubles
//! nothing. A cancelled or failed restore drops what it created ([`drop_created`]).
//!
//! # The dump's bytes
//! The staging is the agent's (root's); the worker reads each dump through the host in 1 MiB
//! chunks (`read_restore_file`) and splits it into statements as it streams (quotes, comments
//! and `DELIMITER` respected), so memory stays bounded whatever the dump's size.

use crate::provision::HostOps;
use crate::{JobContext, JobError};
use agent::{AccountName, Reply, Request};
use serde_json::{json, Value};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};
use std::str::FromStr;
use std::time::Duration;

/// The table that marks a database this restore is importing.
const MARKER: &str = "_npanel_restore_in_progress";
/// Statement errors listed per database (all are counted).
const MAX_ERRORS: usize = 20;
/// The privileges an application user gets: everything but `DROP` (and `GRANT`).
const APP_PRIVILEGES: &str = "SELECT, INSERT, UPDATE, DELETE, CREATE, INDEX, ALTER, \
    CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, \
    ALTER ROUTINE, EVENT, TRIGGER, REFERENCES";

/// What restoring the databases did.
#[derive(Debug, Default)]
pub struct DbRestored {
    /// Databases created (and imported) by this restore.
    pub created: Vec<String>,
    /// Application users created.
    pub users: Vec<String>,
    /// Per database: statements run and refused.
    pub report: Vec<Value>,
}

/// `<archive user>_<name>` → `<account>_<name>`; any other name → `<account>_<name>`.
pub fn target_name(account: &str, archive_user: Option<&str>, db: &str) -> Option<String> {
    let rest = match archive_user {
        Some(u) if db.starts_with(&format!("{u}_")) => &db[u.len() + 1..],
        _ => db,
    };
    store::hosted_database_name(account, rest).ok()
}

/// Longest statement (and line) imported: what is longer fails that dump's import.
const MAX_STATEMENT: usize = 64 << 20;

/// One statement of a dump: the SQL to run, or why it is not run (its bytes are not UTF-8:
/// run through a `&str` they would be changed, so it is listed instead).
pub type Statement = Result<String, String>;

/// Splits a SQL stream into statements: the delimiter in force (`;`, or what a `DELIMITER`
/// line sets) outside quotes and comments ends one. Fed line by line, so a `DELIMITER` line is
/// seen whole. [`Splitter::finish`] gives what the last line completes and what is left (a
/// dump cut off mid-statement). A line or a statement over [`MAX_STATEMENT`] stops it
/// ([`Splitter::broken`]): memory stays bounded whatever the dump holds.
pub struct Splitter {
    /// The statement so far.
    cur: Vec<u8>,
    /// A line not ended yet.
    line: Vec<u8>,
    quote: Option<u8>,
    escaped: bool,
    block_comment: bool,
    delimiter: Vec<u8>,
    broken: Option<String>,
}

impl Default for Splitter {
    fn default() -> Self {
        Self::new()
    }
}

impl Splitter {
    pub fn new() -> Self {
        Splitter {
            cur: Vec::new(),
            line: Vec::new(),
            quote: None,
            escaped: false,
            block_comment: false,
            delimiter: b";".to_vec(),
            broken: None,
        }
    }

    /// Why the rest of the dump cannot be split (a line or a statement too long).
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// The statements `bytes` completes.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Statement> {
        let mut out = Vec::new();
        for &c in bytes {
            if self.broken.is_some() {
                break;
            }
            self.line.push(c);
            if c == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.feed_line(&line, &mut out);
            } else if self.line.len() > MAX_STATEMENT {
                self.broken = Some(format!(
                    "a line of over {} MiB: the rest of the dump is not imported",
                    MAX_STATEMENT >> 20
                ));
            }
        }
        out
    }

    fn feed_line(&mut self, line: &[u8], out: &mut Vec<Statement>) {
        let idle = self.quote.is_none()
            && !self.block_comment
            && self.cur.iter().all(u8::is_ascii_whitespace);
        if idle {
            let t = line.trim_ascii();
            if t.len() > 10 && t[..10].eq_ignore_ascii_case(b"DELIMITER ") {
                let d = t[10..].trim_ascii();
                if !d.is_empty() {
                    self.delimiter = d.to_vec();
                }
                return;
            }
            // A comment line between statements is not part of the next one.
            if t.starts_with(b"--") || t.starts_with(b"#") {
                self.cur.clear();
                return;
            }
        }
        let mut line_comment = false;
        for &c in line {
            self.cur.push(c);
            if line_comment {
                continue;
            }
            if self.block_comment {
                if self.cur.ends_with(b"*/") {
                    self.block_comment = false;
                }
                continue;
            }
            if let Some(q) = self.quote {
                if self.escaped {
                    self.escaped = false;
                } else if c == b'\\' && q != b'`' {
                    self.escaped = true;
                } else if c == q {
                    self.quote = None;
                }
                continue;
            }
            match c {
                b'\'' | b'"' | b'`' => self.quote = Some(c),
                // `-- ` (with its space) starts a comment in MySQL; `a--1` does not.
                b' ' | b'\t'
                    if self.cur.len() >= 3 && self.cur[..self.cur.len() - 1].ends_with(b"--") =>
                {
                    line_comment = true
                }
                b'#' => line_comment = true,
                // Also `/*!40101 … */`, MySQL's versioned code: kept in the statement (the
                // server runs it), only never split inside.
                b'*' if self.cur.ends_with(b"/*") => self.block_comment = true,
                _ => {}
            }
            if !self.delimiter.is_empty() && self.cur.ends_with(&self.delimiter) {
                let n = self.cur.len() - self.delimiter.len();
                let bytes = self.cur[..n].trim_ascii().to_vec();
                self.cur.clear();
                match String::from_utf8(bytes) {
                    Ok(stmt) if is_only_comments(&stmt) => {}
                    Ok(stmt) => out.push(Ok(stmt)),
                    Err(e) => out.push(Err(format!(
                        "{}: bytes that are not UTF-8 (binary or latin1 data; dump with --hex-blob and utf8mb4): not imported",
                        head(&String::from_utf8_lossy(e.as_bytes()))
                    ))),
                }
            }
        }
        if self.cur.len() > MAX_STATEMENT {
            self.broken = Some(format!(
                "a statement of over {} MiB: the rest of the dump is not imported",
                MAX_STATEMENT >> 20
            ));
            self.cur.clear();
        }
    }

    /// What the last line completes, and a statement left without its end (the dump was
    /// cut), if any.
    pub fn finish(mut self) -> (Vec<Statement>, Option<String>) {
        let line = std::mem::take(&mut self.line);
        let mut out = Vec::new();
        if self.broken.is_none() {
            self.feed_line(&line, &mut out);
        }
        let rest = String::from_utf8_lossy(&self.cur).trim().to_string();
        let cut = (!rest.is_empty() && !is_only_comments(&rest)).then_some(rest);
        (out, cut)
    }
}

fn is_only_comments(s: &str) -> bool {
    let plain_block = s.starts_with("/*")
        && !s.starts_with("/*!")
        && s.find("*/").is_some_and(|i| i + 2 == s.len());
    plain_block
        || s.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with("--") || l.starts_with('#')
        })
}

/// Runs one statement on the import connection: (ran, with a collation rewritten, why not).
async fn run_statement(
    conn: &mut sqlx::MySqlConnection,
    stmt: Statement,
    owner: Option<&str>,
) -> (bool, bool, Option<String>) {
    let stmt = match stmt {
        Ok(s) => s,
        Err(why) => return (false, false, Some(why)),
    };
    // Views, triggers, routines and events name their owner: always the account's own
    // application user here, never what the dump says (`root@localhost` would run them with
    // the server's rights).
    let stmt = match definers(&stmt, owner) {
        Ok(Some(rewritten)) => rewritten,
        Ok(None) => stmt,
        Err(why) => return (false, false, Some(format!("{}: {why}", head(&stmt)))),
    };
    let mut r = conn.execute(stmt.as_str()).await.map(|_| ());
    let mut collation = false;
    // MySQL 8's collations (`utf8mb4_0900_ai_ci`, …) are unknown to MariaDB: the statement
    // again with the nearest one it has.
    if let Err(e) = &r {
        if e.to_string().contains("Unknown collation") && stmt.contains("_0900_") {
            if let Some(fixed) = mariadb_collations(&stmt) {
                r = conn.execute(fixed.as_str()).await.map(|_| ());
                collation = r.is_ok();
            }
        }
    }
    match r {
        Ok(()) => (true, collation, None),
        Err(e) => (false, false, Some(format!("{}: {e}", head(&stmt)))),
    }
}

/// Whether `stmt` creates or alters an object that has a definer (a view, trigger, routine or
/// event): its first keyword, also inside mysqldump's versioned comments (`/*!50001 CREATE`),
/// is `CREATE` or `ALTER`. Data statements (`INSERT …`, the bulk of a dump) are never scanned.
fn defines_objects(stmt: &str) -> bool {
    let mut t = stmt.trim_start();
    loop {
        if let Some(rest) = t.strip_prefix("/*!").or_else(|| t.strip_prefix("/*M!")) {
            t = rest
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
        } else if t.starts_with("--") || t.starts_with('#') {
            t = t.split_once('\n').map_or("", |x| x.1).trim_start();
        } else if let Some(rest) = t.strip_prefix("/*") {
            t = rest.split_once("*/").map_or("", |x| x.1).trim_start();
        } else {
            break;
        }
    }
    let word: String = t
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    word == "CREATE" || word == "ALTER"
}

/// `stmt` with every `DEFINER = <user>` clause naming `owner` (`'user'@'localhost'`);
/// `Ok(None)` when there is nothing to rewrite. A clause outside quotes is rewritten whatever
/// its form (`` `u`@`h` ``, `'u'@'h'`, `u@h`, `CURRENT_USER[()]`), also inside versioned
/// comments; without an owner, or when a clause cannot be read, the statement is refused.
fn definers(stmt: &str, owner: Option<&str>) -> Result<Option<String>, String> {
    if !defines_objects(stmt) {
        return Ok(None);
    }
    let b = stmt.as_bytes();
    let mut out = String::with_capacity(stmt.len() + 32);
    let (mut i, mut copied, mut changed) = (0usize, 0usize, false);
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' | b'`' => {
                // Skip the quoted text (a doubled quote or a backslash escapes).
                i += 1;
                while i < b.len() {
                    if b[i] == b'\\' && c != b'`' {
                        i += 2;
                        continue;
                    }
                    if b[i] == c {
                        if b.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'd' | b'D'
                if b.len() - i >= 7
                    && b[i..i + 7].eq_ignore_ascii_case(b"DEFINER")
                    && (i == 0 || !is_word(b[i - 1]))
                    && !b.get(i + 7).is_some_and(|&x| is_word(x)) =>
            {
                let mut j = i + 7;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                if b.get(j) != Some(&b'=') {
                    // `SQL SECURITY DEFINER`: not a clause.
                    i += 7;
                    continue;
                }
                j += 1;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let end = user_spec_end(b, j).ok_or("a DEFINER clause that cannot be read")?;
                let owner = owner.ok_or(
                    "it names a DEFINER and the archive grants no application user on this database to own it",
                )?;
                out.push_str(&stmt[copied..j]);
                out.push_str(owner);
                copied = end;
                changed = true;
                i = end;
            }
            _ => i += 1,
        }
    }
    if !changed {
        return Ok(None);
    }
    out.push_str(&stmt[copied..]);
    Ok(Some(out))
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$'
}

/// The end of a user spec starting at `j`: `CURRENT_USER[()]`, or a name and an optional
/// `@host`, each quoted (`` ` ``, `'`, `"`) or bare.
fn user_spec_end(b: &[u8], j: usize) -> Option<usize> {
    let part = |k: usize| -> Option<usize> {
        match *b.get(k)? {
            q @ (b'`' | b'\'' | b'"') => {
                let mut m = k + 1;
                loop {
                    match *b.get(m)? {
                        x if x == q && b.get(m + 1) == Some(&q) => m += 2,
                        x if x == q => return Some(m + 1),
                        _ => m += 1,
                    }
                }
            }
            _ => {
                let mut m = k;
                while m < b.len() && (is_word(b[m]) || b[m] == b'.' || b[m] == b'-' || b[m] == b'%')
                {
                    m += 1;
                }
                (m > k).then_some(m)
            }
        }
    };
    if b.len() - j >= 12 && b[j..j + 12].eq_ignore_ascii_case(b"CURRENT_USER") {
        let mut m = j + 12;
        if b[m..].starts_with(b"()") {
            m += 2;
        }
        return Some(m);
    }
    let mut m = part(j)?;
    if b.get(m) == Some(&b'@') {
        m = part(m + 1)?;
    }
    Some(m)
}

/// The statement's first words, for messages: its kind and object, never its data (cut at
/// `VALUES`, a `(` or 48 characters).
fn head(stmt: &str) -> String {
    let upper = stmt.to_ascii_uppercase();
    let mut end = stmt.len().min(48);
    for stop in [upper.find("VALUES"), stmt.find('(')].into_iter().flatten() {
        end = end.min(stop);
    }
    while !stmt.is_char_boundary(end) {
        end -= 1;
    }
    let mut h = stmt[..end].trim_end().replace('\n', " ");
    if end < stmt.len() {
        h.push_str(" …");
    }
    h
}

/// `meta/<path>` of a restore, read through the host in chunks.
struct Chunks<'a> {
    host: &'a dyn HostOps,
    restore_id: &'a str,
    path: String,
    offset: u64,
    done: bool,
}

impl<'a> Chunks<'a> {
    fn new(host: &'a dyn HostOps, restore_id: &'a str, path: &str) -> Self {
        Chunks {
            host,
            restore_id,
            path: path.to_string(),
            offset: 0,
            done: false,
        }
    }

    /// The next chunk; `None` at the end.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        use base64::Engine;
        if self.done {
            return Ok(None);
        }
        let req = Request::ReadRestoreFile {
            restore_id: self.restore_id.to_string(),
            path: self.path.clone(),
            offset: self.offset,
            len: agent::restore_meta::MAX_CHUNK,
        };
        match self.host.call(req).await {
            Ok(Reply::RestoreFileChunk { data, size }) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|e| format!("read_restore_file: {e}"))?;
                self.offset += bytes.len() as u64;
                if bytes.is_empty() || self.offset >= size {
                    self.done = true;
                }
                Ok((!bytes.is_empty()).then_some(bytes))
            }
            Ok(other) => Err(format!("read_restore_file: unexpected answer {other:?}")),
            Err(e) => Err(format!("read_restore_file {}: {e}", self.path)),
        }
    }

    /// The whole file (small ones: `mysql.sql`, the auth JSON); `None` when missing.
    async fn all(mut self) -> Option<String> {
        let mut out = Vec::new();
        while let Ok(Some(b)) = self.next().await {
            out.extend_from_slice(&b);
            if out.len() > 16 << 20 {
                return None;
            }
        }
        (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
    }
}

/// Restores the archive's databases into `account`'s (see the module docs). `limit` is the
/// package's `databases`. What could not be restored goes to `skipped`.
#[allow(clippy::too_many_arguments)]
pub async fn restore_databases(
    ctx: &JobContext,
    host: &dyn HostOps,
    url: &str,
    account: &AccountName,
    restore_id: &str,
    archive_user: Option<&str>,
    limit: Option<u64>,
    out: &mut DbRestored,
    skipped: &mut Vec<Value>,
) -> Result<(), JobError> {
    let files = match host
        .call(Request::ListRestoreMeta {
            restore_id: restore_id.to_string(),
            dir: "mysql".into(),
        })
        .await
    {
        Ok(Reply::RestoreMetaList { files }) => files,
        Ok(other) => {
            return Err(JobError::Permanent(format!(
                "list_restore_meta: unexpected answer {other:?}"
            )))
        }
        Err(e) => return Err(JobError::Transient(format!("list_restore_meta: {e}"))),
    };
    let dumps: Vec<String> = files
        .iter()
        .filter(|f| f.name.ends_with(".sql"))
        .map(|f| f.name.trim_end_matches(".sql").to_string())
        .collect();
    // The stage's units are the dumps' bytes, so a big import moves the bar and its MB/s.
    let total: u64 = files
        .iter()
        .filter(|f| f.name.ends_with(".sql"))
        .map(|f| f.size)
        .sum::<u64>()
        .max(1);
    let mut done = 0u64;
    if dumps.is_empty() {
        return Ok(());
    }
    // No statement reaches the log: dumps are customer data, and the import user's password
    // is in a statement.
    let admin_opts = MySqlConnectOptions::from_str(url)
        .map_err(|e| JobError::Permanent(format!("databases.url: {e}")))?
        .disable_statement_logging();
    let admin = MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(admin_opts.clone())
        .await
        .map_err(|e| JobError::Transient(format!("the database server does not answer: {e}")))?;
    let hosted = store::HostedDatabases::new(url)
        .map_err(|e| JobError::Permanent(format!("databases.url: {e}")))?;
    // A killed earlier attempt of this restore may have left its import users behind.
    drop_import_users(&admin, restore_id).await;
    // Who owns each database's views, triggers and routines: its first application user in
    // the archive's grants, under the account's name.
    let grants_sql = Chunks::new(host, restore_id, "mysql.sql")
        .all()
        .await
        .unwrap_or_default();
    let owner_of = |db: &str| -> Option<String> {
        grants_sql
            .lines()
            .filter_map(parse_grant)
            .find_map(|(d, u)| {
                (d == db)
                    .then(|| target_name(account.as_str(), archive_user, &u))
                    .flatten()
                    .filter(|u| u.len() <= 80)
            })
    };
    for (n, db) in dumps.iter().enumerate() {
        let Some(target) = target_name(account.as_str(), archive_user, db) else {
            skipped.push(json!({"what": "database", "database": db,
                "reason": format!("{db}: no valid name for it under {account}_")}));
            continue;
        };
        // Ours from an earlier attempt (its marker is there)? Then again from scratch.
        let exists: Option<String> = sqlx::query_scalar(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name = ?",
        )
        .bind(&target)
        .fetch_optional(&admin)
        .await
        .map_err(|e| JobError::Transient(e.to_string()))?;
        if exists.is_some() {
            let marked: Option<String> = sqlx::query_scalar(&format!(
                "SELECT restore_id FROM `{target}`.`{MARKER}` LIMIT 1"
            ))
            .fetch_optional(&admin)
            .await
            .ok()
            .flatten();
            if marked.as_deref() == Some(restore_id) {
                ctx.log(format!(
                    "{target}: an earlier attempt's import is dropped and done again"
                ));
                admin
                    .execute(format!("DROP DATABASE `{target}`").as_str())
                    .await
                    .map_err(|e| JobError::Transient(e.to_string()))?;
            } else {
                skipped.push(json!({"what": "database", "database": target,
                    "reason": "it exists on the server already: left as it is, not overwritten"}));
                continue;
            }
        }
        let short = &target[account.as_str().len() + 1..];
        match hosted.create(account.as_str(), short, limit).await {
            Ok(c) if !c.created => {
                // It appeared since the check above: somebody else's, left alone.
                skipped.push(json!({"what": "database", "database": target,
                    "reason": "it exists on the server already: left as it is, not overwritten"}));
                continue;
            }
            Ok(_) => {}
            Err(store::DatabaseError::LimitReached { .. }) => {
                skipped.push(json!({"what": "database", "database": target,
                    "reason": format!("over the package's databases limit ({})", limit.unwrap_or(0))}));
                continue;
            }
            Err(e) => return Err(JobError::Transient(format!("create {target}: {e}"))),
        }
        out.created.push(target.clone());
        for stmt in [
            format!("CREATE TABLE `{target}`.`{MARKER}` (restore_id VARCHAR(128))"),
            format!(
                "INSERT INTO `{target}`.`{MARKER}` VALUES ('{}')",
                restore_id.replace(['\'', '\\'], "")
            ),
        ] {
            admin
                .execute(stmt.as_str())
                .await
                .map_err(|e| JobError::Transient(e.to_string()))?;
        }
        // The marker stays until the restore finishes ([`finish`]): a retry of this restore
        // redoes the import, anyone else's restore leaves the database alone.
        let report = import(
            ctx,
            host,
            (&admin, &admin_opts),
            &import_user(restore_id, n),
            db,
            &target,
            owner_of(db).as_deref(),
            (&mut done, total),
            skipped,
        )
        .await?;
        out.report.push(report);
    }
    grants(
        ctx,
        host,
        &admin,
        account,
        restore_id,
        archive_user,
        out,
        skipped,
    )
    .await;
    admin.close().await;
    Ok(())
}

/// One dump through a temporary user that may touch `target` only.
#[allow(clippy::too_many_arguments)]
async fn import(
    ctx: &JobContext,
    host: &dyn HostOps,
    (admin, admin_opts): (&sqlx::MySqlPool, &MySqlConnectOptions),
    user: &str,
    db: &str,
    target: &str,
    owner_user: Option<&str>,
    (done, total): (&mut u64, u64),
    skipped: &mut Vec<Value>,
) -> Result<Value, JobError> {
    let restore_id = ctx.id.as_str();
    let password = ulid::Ulid::new().to_string();
    for setup in [
        format!("DROP USER IF EXISTS '{user}'@'%'"),
        format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"),
        format!("GRANT ALL PRIVILEGES ON `{target}`.* TO '{user}'@'%'"),
    ] {
        admin
            .execute(setup.as_str())
            .await
            .map_err(|e| JobError::Transient(format!("temporary import user: {e}")))?;
    }
    // Naming another user as a definer needs `SET USER` (MariaDB 10.5.2+; MySQL 8's
    // `SET_ANY_DEFINER`, earlier `SET_USER_ID`). Every DEFINER clause the import runs names
    // the account's own user ([`definers`]); what still names anybody else is dropped after
    // the import ([`foreign_definers`]).
    let owner = match owner_user {
        Some(u) => {
            let mut granted = false;
            for p in ["SET USER", "SET_ANY_DEFINER", "SET_USER_ID"] {
                if admin
                    .execute(format!("GRANT {p} ON *.* TO '{user}'@'%'").as_str())
                    .await
                    .is_ok()
                {
                    granted = true;
                    break;
                }
            }
            if !granted {
                ctx.log(format!(
                    "{target}: this database server cannot let the import name {u} as the owner of views, triggers and routines; they are listed, not restored"
                ));
            }
            Some(format!("'{u}'@'localhost'"))
        }
        None => None,
    };
    let result = async {
        let mut conn = admin_opts
            .clone()
            .username(user)
            .password(&password)
            .database(target)
            .connect()
            .await
            .map_err(|e| JobError::Transient(format!("connect as the import user: {e}")))?;
        let (mut ran, mut refused, mut rewritten) = (0u64, 0u64, 0u64);
        let mut errors: Vec<String> = Vec::new();
        let mut splitter = Splitter::new();
        let mut chunks = Chunks::new(host, restore_id, &format!("mysql/{db}.sql"));
        let mut tally = |(ok, collation, error): (bool, bool, Option<String>)| {
            if ok {
                ran += 1;
            } else {
                refused += 1;
            }
            if collation {
                rewritten += 1;
            }
            if let Some(e) = error {
                if errors.len() < MAX_ERRORS {
                    errors.push(e);
                }
            }
        };
        while let Some(chunk) = chunks.next().await.map_err(JobError::Transient)? {
            *done += chunk.len() as u64;
            ctx.progress("creating_accounts", (*done).min(total), total);
            for stmt in splitter.push(&chunk) {
                if ctx.is_cancelled() {
                    return Err(JobError::Cancelled);
                }
                tally(run_statement(&mut conn, stmt, owner.as_deref()).await);
            }
            if splitter.broken().is_some() {
                break;
            }
        }
        if let Some(why) = splitter.broken() {
            tally((false, false, Some(why.to_string())));
        }
        let (last, cut) = splitter.finish();
        for stmt in last {
            tally(run_statement(&mut conn, stmt, owner.as_deref()).await);
        }
        if let Some(rest) = &cut {
            tally((
                false,
                false,
                Some(format!("the dump ends inside a statement: {}", head(rest))),
            ));
        }
        let _ = conn.close().await;
        if rewritten > 0 {
            ctx.log(format!(
                "{target}: {rewritten} statements used MySQL 8 collations; run with utf8mb4_unicode_ci"
            ));
        }
        Ok::<_, JobError>((ran, refused, errors))
    }
    .await;
    let _ = admin
        .execute(format!("DROP USER IF EXISTS '{user}'@'%'").as_str())
        .await;
    let (ran, refused, mut errors) = result?;
    let allowed = owner_user.map(|u| format!("{u}@localhost"));
    for (kind, name, definer) in foreign_definers(admin, target, allowed.as_deref()).await {
        let _ = admin
            .execute(format!("DROP {kind} IF EXISTS `{target}`.`{name}`").as_str())
            .await;
        errors.push(format!(
            "{} {name}: owned by {definer}, not by the account: dropped",
            kind.to_ascii_lowercase()
        ));
    }
    ctx.log(format!(
        "Restored database {target} from {db}.sql ({ran} statements{})",
        if refused > 0 {
            format!(", {refused} refused")
        } else {
            String::new()
        }
    ));
    for e in &errors {
        skipped.push(json!({"what": "sql statement", "database": target, "reason": e}));
    }
    Ok(
        json!({"database": target, "from": format!("{db}.sql"), "statements": ran, "refused": refused}),
    )
}

/// The temporary user importing the `n`th dump of `restore_id`: named after the restore, so a
/// retry after a killed worker finds (and drops) what the killed attempt left.
fn import_user(restore_id: &str, n: usize) -> String {
    let id: String = restore_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(40)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("npr_{id}_{n}")
}

/// Drops every temporary import user of `restore_id` (best effort).
async fn drop_import_users(admin: &sqlx::MySqlPool, restore_id: &str) {
    let prefix = import_user(restore_id, 0);
    let prefix = &prefix[..prefix.len() - 1];
    let users: Vec<(String, String)> =
        sqlx::query_as("SELECT user, host FROM mysql.user WHERE LEFT(user, CHAR_LENGTH(?)) = ?")
            .bind(prefix)
            .bind(prefix)
            .fetch_all(admin)
            .await
            .unwrap_or_default();
    for (u, h) in users {
        let _ = admin
            .execute(format!("DROP USER IF EXISTS '{u}'@'{h}'").as_str())
            .await;
    }
}

/// The views, triggers, routines and events of `db` whose definer is not `allowed`
/// (`user@host`): (kind for `DROP`, name, definer).
async fn foreign_definers(
    admin: &sqlx::MySqlPool,
    db: &str,
    allowed: Option<&str>,
) -> Vec<(&'static str, String, String)> {
    let queries: [(&str, &str); 4] = [
        ("VIEW", "SELECT table_name, definer FROM information_schema.views WHERE table_schema = ?"),
        ("TRIGGER", "SELECT trigger_name, definer FROM information_schema.triggers WHERE trigger_schema = ?"),
        ("ROUTINE", "SELECT CONCAT(routine_type, ' ', routine_name), definer FROM information_schema.routines WHERE routine_schema = ?"),
        ("EVENT", "SELECT event_name, definer FROM information_schema.events WHERE event_schema = ?"),
    ];
    let mut out = Vec::new();
    for (kind, q) in queries {
        let rows: Vec<(String, String)> = sqlx::query_as(q)
            .bind(db)
            .fetch_all(admin)
            .await
            .unwrap_or_default();
        for (name, definer) in rows {
            if Some(definer.as_str()) == allowed {
                continue;
            }
            let (kind, name) = match kind {
                "ROUTINE" => match name.split_once(' ') {
                    Some(("FUNCTION", n)) => ("FUNCTION", n.to_string()),
                    Some((_, n)) => ("PROCEDURE", n.to_string()),
                    None => continue,
                },
                k => (k, name),
            };
            out.push((kind, name, definer));
        }
    }
    out
}

/// The archive's application users (`mysql.sql` grants on its databases, hashes from
/// `mysql.sql-auth.json`), renamed to the account and granted everything but `DROP` on the
/// databases this restore created.
#[allow(clippy::too_many_arguments)]
async fn grants(
    ctx: &JobContext,
    host: &dyn HostOps,
    admin: &sqlx::MySqlPool,
    account: &AccountName,
    restore_id: &str,
    archive_user: Option<&str>,
    out: &mut DbRestored,
    skipped: &mut Vec<Value>,
) {
    let Some(sql) = Chunks::new(host, restore_id, "mysql.sql").all().await else {
        return;
    };
    let auth: Value = Chunks::new(host, restore_id, "mysql.sql-auth.json")
        .all()
        .await
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    for line in sql.lines() {
        let Some((db, user)) = parse_grant(line) else {
            continue;
        };
        let Some(target) = target_name(account.as_str(), archive_user, &db) else {
            continue;
        };
        if !out.created.contains(&target) {
            continue;
        }
        let Some(new_user) = target_name(account.as_str(), archive_user, &user) else {
            continue;
        };
        if new_user.len() > 80 {
            continue;
        }
        let hash = auth[&user]
            .as_object()
            .and_then(|hosts| hosts.values().next())
            .filter(|h| h["auth_plugin"] == "mysql_native_password")
            .and_then(|h| h["pass_hash"].as_str())
            .filter(|h| {
                h.len() == 41 && h.starts_with('*') && h[1..].chars().all(|c| c.is_ascii_hexdigit())
            });
        let Some(hash) = hash else {
            skipped.push(json!({"what": "database user", "user": new_user,
                "reason": "no mysql_native_password hash in mysql.sql-auth.json: set its password by hand"}));
            continue;
        };
        let existed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mysql.user WHERE user = ?")
            .bind(&new_user)
            .fetch_one(admin)
            .await
            .unwrap_or(1);
        if existed > 0 && out.users.contains(&new_user) {
            // This restore made it for an earlier database: the grant on this one too.
            for h in ["localhost", "127.0.0.1"] {
                let _ = admin
                    .execute(
                        format!("GRANT {APP_PRIVILEGES} ON `{target}`.* TO '{new_user}'@'{h}'")
                            .as_str(),
                    )
                    .await;
            }
            continue;
        }
        if existed > 0 {
            // Somebody's already (an earlier restore's, or one made by hand): its password is
            // not ours to change; it only gets the grant on the restored database.
            for h in ["localhost", "127.0.0.1"] {
                let _ = admin
                    .execute(
                        format!("GRANT {APP_PRIVILEGES} ON `{target}`.* TO '{new_user}'@'{h}'")
                            .as_str(),
                    )
                    .await;
            }
            skipped.push(json!({"what": "database user", "user": new_user,
                "reason": format!("it exists already: its password was kept, it was granted {target}")}));
            continue;
        }
        let stmts = [
            format!("CREATE USER '{new_user}'@'localhost' IDENTIFIED BY PASSWORD '{hash}'"),
            format!("CREATE USER '{new_user}'@'127.0.0.1' IDENTIFIED BY PASSWORD '{hash}'"),
            format!("GRANT {APP_PRIVILEGES} ON `{target}`.* TO '{new_user}'@'localhost'"),
            format!("GRANT {APP_PRIVILEGES} ON `{target}`.* TO '{new_user}'@'127.0.0.1'"),
        ];
        let mut ok = true;
        // Created by this restore from here on (dropped again if it fails).
        out.users.push(new_user.clone());
        for s in &stmts {
            if let Err(e) = admin.execute(s.as_str()).await {
                skipped.push(
                    json!({"what": "database user", "user": new_user, "reason": e.to_string()}),
                );
                ok = false;
                break;
            }
        }
        if ok {
            ctx.log(format!(
                "Restored database user {new_user} (on {target}, without DROP)"
            ));
        }
    }
}

/// `stmt` with MySQL 8's `utf8mb4_0900_*` collations as `utf8mb4_unicode_ci` (MariaDB has
/// none of them); `None` when there is nothing to change.
fn mariadb_collations(stmt: &str) -> Option<String> {
    let mut out = String::with_capacity(stmt.len());
    let mut rest = stmt;
    let mut changed = false;
    while let Some(i) = rest.find("utf8mb4_0900_") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push_str("utf8mb4_unicode_ci");
        rest = &tail[end..];
        changed = true;
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// `GRANT … ON `db`.* TO 'user'@'host'` → (db, user), `\_` unescaped.
fn parse_grant(line: &str) -> Option<(String, String)> {
    let l = line.trim();
    if !l.to_ascii_uppercase().starts_with("GRANT ") {
        return None;
    }
    let on = l.find(" ON `")? + 5;
    let end = on + l[on..].find('`')?;
    let db = l[on..end].replace("\\_", "_").replace("\\%", "%");
    if db.contains('%') {
        return None;
    }
    let to = l.find(" TO '")? + 5;
    let uend = to + l[to..].find('\'')?;
    Some((db, l[to..uend].to_string()))
}

/// The restore is done: the marker tables of the databases it created go.
pub async fn finish(url: &str, created: &DbRestored) -> Result<(), JobError> {
    if created.created.is_empty() {
        return Ok(());
    }
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| JobError::Transient(format!("the database server does not answer: {e}")))?;
    for db in &created.created {
        pool.execute(format!("DROP TABLE IF EXISTS `{db}`.`{MARKER}`").as_str())
            .await
            .map_err(|e| JobError::Transient(e.to_string()))?;
    }
    pool.close().await;
    Ok(())
}

/// Drops the databases and users a cancelled or failed restore created (best effort).
pub async fn drop_created(url: &str, created: &DbRestored) {
    let Ok(pool) = MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
    else {
        return;
    };
    for db in &created.created {
        let _ = pool
            .execute(format!("DROP DATABASE IF EXISTS `{db}`").as_str())
            .await;
    }
    for u in &created.users {
        for h in ["localhost", "127.0.0.1"] {
            let _ = pool
                .execute(format!("DROP USER IF EXISTS '{u}'@'{h}'").as_str())
                .await;
        }
    }
    pool.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_comments_and_with_delimiters() {
        let mut s = Splitter::new();
        let mut got: Vec<String> = s.push(b"-- a; comment\nSET NAMES utf8mb4;\n/*!40101 SET x=1 */;\nINSERT INTO t VALUES ('a;b'),('it\\'s');\nDELIMITER ;;\nCREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN SET @a=1; END ;;\nDELIMITER ;\nCREATE TABLE `x;y` (id int);\nINSERT INTO t VAL").into_iter().map(Result::unwrap).collect();
        got.extend(s.push(b"UES (1)").into_iter().map(Result::unwrap));
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0], "SET NAMES utf8mb4");
        assert_eq!(got[1], "/*!40101 SET x=1 */");
        assert_eq!(got[2], "INSERT INTO t VALUES ('a;b'),('it\\'s')");
        assert!(
            got[3].starts_with("CREATE TRIGGER") && got[3].ends_with("END"),
            "{got:?}"
        );
        assert_eq!(got[4], "CREATE TABLE `x;y` (id int)");
        assert_eq!(
            s.finish(),
            (vec![], Some("INSERT INTO t VALUES (1)".to_string()))
        );

        // The last line without a newline: every statement on it runs, none is lost.
        let mut s = Splitter::new();
        assert!(s.push(b"SELECT 1; SELECT 2;").is_empty());
        let (last, cut) = s.finish();
        assert_eq!(
            last,
            vec![Ok("SELECT 1".to_string()), Ok("SELECT 2".to_string())]
        );
        assert_eq!(cut, None);
        // A UTF-8 comment between statements, a comment inside one, `a--1`, bytes that are
        // not UTF-8 (listed, not run), and a statement between block comments.
        let mut s = Splitter::new();
        let got = s.push(
            "-- Структура таблицы\nSELECT 2--1;\nSELECT 'a' -- x;\n;\n/* a */ SELECT 3 /* b */;\n"
                .as_bytes(),
        );
        assert_eq!(got[0], Ok("SELECT 2--1".to_string()));
        assert!(
            got[1].as_ref().unwrap().starts_with("SELECT 'a' -- x;"),
            "{got:?}"
        );
        assert_eq!(got[2], Ok("/* a */ SELECT 3 /* b */".to_string()));
        let got = s.push(b"INSERT INTO t VALUES ('\xe9t\xe9');\n");
        assert!(
            got[0].as_ref().unwrap_err().contains("not UTF-8"),
            "{got:?}"
        );
        assert!(
            !got[0].as_ref().unwrap_err().contains("t\u{fffd}"),
            "no data in the message"
        );
        // A line with no end is bounded.
        let mut s = Splitter::new();
        let big = vec![b'x'; MAX_STATEMENT + 2];
        assert!(s.push(&big).is_empty());
        assert!(s.broken().is_some());
    }

    #[test]
    fn every_definer_clause_names_the_accounts_user() {
        let me = Some("'acct_wp'@'localhost'");
        // mysqldump's forms: a view and a trigger in versioned comments, a routine, an event.
        let view = "/*!50001 CREATE ALGORITHM=UNDEFINED */\n/*!50013 DEFINER=`root`@`localhost` SQL SECURITY DEFINER */\n/*!50001 VIEW `v` AS select 1 AS `x` */";
        assert_eq!(
            definers(view, me).unwrap().unwrap(),
            "/*!50001 CREATE ALGORITHM=UNDEFINED */\n/*!50013 DEFINER='acct_wp'@'localhost' SQL SECURITY DEFINER */\n/*!50001 VIEW `v` AS select 1 AS `x` */"
        );
        let trigger = "/*!50003 CREATE*/ /*!50017 DEFINER=`cp`@`%`*/ /*!50003 TRIGGER t BEFORE INSERT ON a FOR EACH ROW SET NEW.t = 'DEFINER=`root`@`x`' */";
        let t = definers(trigger, me).unwrap().unwrap();
        assert!(
            t.contains("/*!50017 DEFINER='acct_wp'@'localhost'*/"),
            "{t}"
        );
        assert!(
            t.contains("'DEFINER=`root`@`x`'"),
            "a string's text is data: {t}"
        );
        for (stmt, want) in [
            ("CREATE DEFINER=root@localhost PROCEDURE p() SELECT 1", "CREATE DEFINER='acct_wp'@'localhost' PROCEDURE p() SELECT 1"),
            ("create definer = 'a''b'@'h' function f() returns int return 1", "create definer = 'acct_wp'@'localhost' function f() returns int return 1"),
            ("ALTER DEFINER=CURRENT_USER() VIEW v AS SELECT 1", "ALTER DEFINER='acct_wp'@'localhost' VIEW v AS SELECT 1"),
            ("/*!50106 CREATE*/ /*!50117 DEFINER=\"x\"@\"192.168.1.%\"*/ /*!50106 EVENT e ON SCHEDULE EVERY 1 DAY DO SELECT 1 */", "/*!50106 CREATE*/ /*!50117 DEFINER='acct_wp'@'localhost'*/ /*!50106 EVENT e ON SCHEDULE EVERY 1 DAY DO SELECT 1 */"),
        ] {
            assert_eq!(definers(stmt, me).unwrap().as_deref(), Some(want));
        }
        // Nothing to do: data, SQL SECURITY alone, a table.
        for stmt in [
            "INSERT INTO a VALUES ('CREATE DEFINER=root@x')",
            "CREATE SQL SECURITY DEFINER VIEW v AS SELECT 1",
            "CREATE TABLE `definer` (`definer` int)",
        ] {
            assert_eq!(definers(stmt, me).unwrap(), None, "{stmt}");
        }
        // No owner: refused, with why.
        let e = definers(
            "CREATE DEFINER=`root`@`localhost` PROCEDURE p() SELECT 1",
            None,
        )
        .unwrap_err();
        assert!(e.contains("no application user"), "{e}");
        assert!(definers("CREATE DEFINER=`root@localhost PROCEDURE p() SELECT 1", me).is_err());
    }

    #[test]
    fn import_users_are_named_after_their_restore() {
        assert_eq!(import_user("01KX7ZQ-abc", 2), "npr_01kx7zqabc_2");
        assert!(import_user(&"A".repeat(99), 99).len() <= 80);
    }

    #[test]
    fn mysql8_collations_become_mariadbs() {
        assert_eq!(
            mariadb_collations("CREATE TABLE t (b longtext COLLATE utf8mb4_0900_ai_ci) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_as_cs").as_deref(),
            Some("CREATE TABLE t (b longtext COLLATE utf8mb4_unicode_ci) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci")
        );
        assert_eq!(mariadb_collations("SELECT 1"), None);
    }

    #[test]
    fn names_and_grants_map_to_the_account() {
        assert_eq!(
            target_name("bob", Some("alice"), "alice_wp").as_deref(),
            Some("bob_wp")
        );
        assert_eq!(
            target_name("bob", Some("alice"), "shop").as_deref(),
            Some("bob_shop")
        );
        assert_eq!(target_name("bob", None, "Bad-Name"), None);
        assert_eq!(
            parse_grant("GRANT ALL PRIVILEGES ON `alice\\_wp`.* TO 'alice_wp'@'localhost';"),
            Some(("alice_wp".into(), "alice_wp".into()))
        );
        assert_eq!(
            parse_grant("GRANT USAGE ON *.* TO 'alice_wp'@'localhost';"),
            None
        );
    }
}
