//! What a post-migration health check needs from the host (DESIGN §12): the facts of the
//! archive an account came from, and the same facts of the account as it is now.
//!
//! The agent gathers both because both need root: the archive may be readable by root only,
//! and the home belongs to the account. It judges nothing — the `health_check` handler
//! compares and scores — so this module only counts, in one pass over the archive
//! ([`crate::unpack::walk_archive`], the layout the restore uses) and one walk of the home
//! (never following a symlink, bounded in entries and depth):
//!
//! - files and bytes of the home;
//! - mail accounts (`etc/<domain>/passwd`) and messages per mailbox: for Maildir the files in
//!   `cur/` and `new/` under `mail/<domain>/<box>/`, Maildir++ folders included; for Dovecot
//!   mdbox the messages inside `mail/<domain>/<box>/storage/m.*` ([`count_dbox`]). An mdbox
//!   account's folders share those files and which folder a message is in is written only in
//!   the binary index (`mailboxes/<name>/dbox-Mails/dovecot.index`), so both sides count the
//!   mail account's total, the same granularity as a Maildir's sum over its folders;
//! - databases in the archive (`mysql/<db>.sql`: `CREATE TABLE` statements, rows in `INSERT`s,
//!   and whether the dump ends with a whole statement);
//! - zones: the archive's `dnszones/<domain>.db` names, and for each the host's
//!   `var/named/<domain>.db`: present, and whether it parses (SOA, NS, record syntax);
//! - world-writable entries and broken symlinks in the home;
//! - the system user: present, its shell, and whether it is in an admin group (`sudo`,
//!   `wheel`, `admin`), when system users are on.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};
use crate::unpack::{walk_archive, UnpackError};
use crate::AgentConfig;
use crate::{AccountName, Domain};

/// Most entries walked in a home.
const MAX_ENTRIES: u64 = 5_000_000;
/// Deepest directory walked.
const MAX_DEPTH: usize = 200;
/// Examples listed per finding.
const EXAMPLES: usize = 10;
/// Largest small file read whole (passwd files, zones).
const SMALL: u64 = 4 << 20;
/// Most messages counted in one mdbox storage file (Dovecot rotates them at 2 MiB by default:
/// a few hundred messages); past it the file's count stops, marked incomplete.
const MAX_DBOX_MESSAGES: u64 = 1_000_000;
/// Longest dbox header or metadata line read (bytes), and most metadata lines of a message.
const MAX_DBOX_LINE: u64 = 64 << 10;
const MAX_DBOX_META_LINES: u32 = 1024;

/// A database dump in the archive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpFacts {
    pub tables: u64,
    pub rows: u64,
    /// Rows by table (every created table, with 0 when it has none).
    #[serde(default)]
    pub table_rows: BTreeMap<String, u64>,
    /// The dump ends with a whole statement (false: cut off).
    pub complete: bool,
}

/// The archive's side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveFacts {
    pub home_files: u64,
    pub home_bytes: u64,
    /// Mail accounts by domain (`etc/<domain>/passwd`).
    pub mail_accounts: BTreeMap<String, BTreeSet<String>>,
    /// Messages by mailbox (`box@domain`): Maildir files, and messages in mdbox storage files.
    pub mailboxes: BTreeMap<String, u64>,
    /// Mailboxes whose messages were counted in mdbox storage files (`storage/m.*`).
    #[serde(default)]
    pub mdbox: BTreeSet<String>,
    /// mdbox storage files that did not read to their end as dbox (`box@domain: path: why`).
    #[serde(default)]
    pub mdbox_damaged: Vec<String>,
    /// Database dumps by database name.
    pub databases: BTreeMap<String, DumpFacts>,
    /// Domains with a zone file (`dnszones/<domain>.db`).
    pub zones: BTreeSet<String>,
    /// Certificates (`sslcerts/*`) and keys (`sslkeys/*`).
    pub certs: u64,
    pub keys: u64,
    /// Domains with a TLS certificate: `apache_tls/<domain>`, and the names the certificates of
    /// `sslcerts/` are for (wildcards left out: they name no one domain).
    #[serde(default)]
    pub tls: BTreeSet<String>,
    /// Non-comment lines of the account's crontab (`cron/<user>`).
    pub cron_lines: u64,
}

/// The home's side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeFacts {
    pub exists: bool,
    pub files: u64,
    pub bytes: u64,
    pub mail_accounts: BTreeMap<String, BTreeSet<String>>,
    /// Messages by mailbox, counted as the archive's ([`ArchiveFacts::mailboxes`]).
    pub mailboxes: BTreeMap<String, u64>,
    /// Mailboxes (`box@domain`) with a store: a Maildir (`mail/<domain>/<box>/cur`) or Dovecot
    /// mdbox (`mail/<domain>/<box>/storage`).
    pub maildirs: BTreeSet<String>,
    /// Mailboxes whose messages were counted in mdbox storage files.
    #[serde(default)]
    pub mdbox: BTreeSet<String>,
    /// mdbox storage files that did not read to their end as dbox.
    #[serde(default)]
    pub mdbox_damaged: Vec<String>,
    /// Entries anyone may write (mode `o+w`, not a symlink, no sticky bit).
    pub world_writable: u64,
    pub world_writable_examples: Vec<String>,
    /// Symlinks whose target does not exist (or leaves the home).
    pub broken_symlinks: u64,
    pub broken_symlink_examples: Vec<String>,
    /// Entries not owned by the account's user (only when system users are on).
    pub foreign_owned: Option<u64>,
    /// The walk stopped at its bound.
    pub truncated: bool,
    /// Database credentials of applications (`wp-config.php`, `.env` up to two levels
    /// below `public_html` or the home).
    pub app_credentials: Vec<AppCredentials>,
}

/// One zone the archive has, as the host has it now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneFacts {
    pub domain: String,
    pub present: bool,
    /// Why it does not parse (empty: it does).
    pub problems: Vec<String>,
}

/// One TLS bundle the archive has, as the host has it now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFacts {
    pub domain: String,
    pub present: bool,
    /// Why the installed bundle cannot serve the domain (`None`: it can, or it is absent).
    pub problem: Option<String>,
}

/// The system user, when system users are on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFacts {
    pub exists: bool,
    pub shell: Option<String>,
    /// Admin groups (`sudo`, `wheel`, `admin`) it is in.
    pub admin_groups: Vec<String>,
}

/// Database credentials an application in the home uses (`wp-config.php`, `.env`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCredentials {
    /// The file, relative to the home.
    pub file: String,
    pub database: String,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("file", &self.file)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &"**REDACTED**")
            .finish()
    }
}

/// The credentials in a `wp-config.php` (`define('DB_NAME', '…')`) or an `.env`
/// (`DB_DATABASE=…`), when it names a database, a user and a password.
pub fn app_credentials(file: &str, text: &str) -> Option<AppCredentials> {
    let mut v: BTreeMap<&str, String> = BTreeMap::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("define(") {
            // define('DB_NAME', 'value');
            let parts: Vec<&str> = rest.splitn(2, ',').collect();
            if parts.len() == 2 {
                let key = parts[0].trim().trim_matches(['\'', '"']);
                let val = parts[1]
                    .trim()
                    .trim_end_matches(';')
                    .trim_end_matches(')')
                    .trim()
                    .trim_matches(['\'', '"']);
                for k in ["DB_NAME", "DB_USER", "DB_PASSWORD"] {
                    if key == k {
                        v.insert(k, val.to_string());
                    }
                }
            }
        } else if let Some((k, val)) = l.split_once('=') {
            let val = val.trim().trim_matches(['\'', '"']).to_string();
            match k.trim() {
                "DB_DATABASE" => {
                    v.insert("DB_NAME", val);
                }
                "DB_USERNAME" => {
                    v.insert("DB_USER", val);
                }
                "DB_PASSWORD" => {
                    v.insert("DB_PASSWORD", val);
                }
                _ => {}
            }
        }
    }
    Some(AppCredentials {
        file: file.to_string(),
        database: v.remove("DB_NAME").filter(|s| !s.is_empty())?,
        user: v.remove("DB_USER").filter(|s| !s.is_empty())?,
        password: v.remove("DB_PASSWORD")?,
    })
}

/// The account's crontab on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrontabFacts {
    /// Jobs (non-comment, non-variable lines).
    pub jobs: u64,
    /// Jobs still naming cPanel's paths (`ea-php`, `/usr/local/cpanel`).
    pub cpanel_paths: u64,
}

/// What [`inspect_migration`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationFacts {
    pub account: String,
    pub archive: ArchiveFacts,
    pub home: HomeFacts,
    pub zones: Vec<ZoneFacts>,
    /// `None`: system users are off on this host.
    pub user: Option<UserFacts>,
    /// `None`: the account has no crontab.
    pub crontab: Option<CrontabFacts>,
    /// The archive's TLS bundles, installed or not.
    #[serde(default)]
    pub tls: Vec<TlsFacts>,
}

/// The archive's facts and the account's, for a health check.
pub fn inspect_migration(
    cfg: &AgentConfig,
    account: &AccountName,
    archive: &Path,
) -> Result<MigrationFacts> {
    let archive = archive_facts(archive, account)?;
    let home_dir = cfg.home_root().join(account.as_str());
    let uid = if cfg.host.system_users {
        nix::unistd::User::from_name(account.as_str())
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    } else {
        None
    };
    let home = home_facts(&home_dir, uid, cfg.host.system_users)?;
    let zones = archive
        .zones
        .iter()
        .map(|d| zone_facts(&cfg.host.root, d))
        .collect();
    let user = cfg
        .host
        .system_users
        .then(|| user_facts(&cfg.host.root, account.as_str()));
    let crontab =
        read_small(&crate::restore_meta::crontab_path(&cfg.host.root, account)).map(|t| {
            let jobs: Vec<&str> = t
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#') && !is_cron_env(l))
                .collect();
            CrontabFacts {
                jobs: jobs.len() as u64,
                cpanel_paths: jobs
                    .iter()
                    .filter(|l| l.contains("ea-php") || l.contains("/usr/local/cpanel"))
                    .count() as u64,
            }
        });
    let tls = archive
        .tls
        .iter()
        .map(|d| {
            let text = read_small(&crate::restore_meta::tls_path(&cfg.host.root, d));
            TlsFacts {
                domain: d.clone(),
                present: text.is_some(),
                problem: text.and_then(|t| crate::tls::check(&crate::tls::split(&t), d).err()),
            }
        })
        .collect();
    Ok(MigrationFacts {
        account: account.to_string(),
        archive,
        home,
        zones,
        user,
        crontab,
        tls,
    })
}

/// The first regular file of the archive's metadata directory `dir` (`cp` gives `cp/<user>`):
/// its name and content (at most 64 KiB). The archive is read only as far as that entry.
pub fn archive_meta_file(archive: &Path, dir: &str) -> Result<Option<(String, String)>> {
    if dir != "cp" {
        return Err(AgentError::InvalidRequest(format!(
            "read_archive_meta reads the account's cp/ file only, not {dir:?}"
        )));
    }
    const FOUND: &str = "npanel: entry found";
    let mut found = None;
    let mut visit = |e: &crate::unpack::Listed<'_>, r: &mut dyn Read| -> io::Result<()> {
        if e.home || !e.kind.is_file() {
            return Ok(());
        }
        if let Some(name) = e.path.strip_prefix(dir).and_then(|p| p.strip_prefix('/')) {
            if !name.is_empty() && !name.contains('/') {
                let mut text = String::new();
                r.take(64 << 10).read_to_string(&mut text).ok();
                found = Some((name.to_string(), text));
                return Err(io::Error::other(FOUND));
            }
        }
        Ok(())
    };
    match walk_archive(archive, u64::MAX / 4, &mut visit) {
        Ok(_) => Ok(found),
        Err(_) if found.is_some() => Ok(found),
        Err(UnpackError::Io { path, source }) => Err(AgentError::io(path, source)),
        Err(other) => Err(AgentError::InvalidRequest(format!(
            "cannot read the archive {}: {other}",
            archive.display()
        ))),
    }
}

/// Reads the archive once.
pub fn archive_facts(archive: &Path, account: &AccountName) -> Result<ArchiveFacts> {
    let mut f = ArchiveFacts::default();
    // `sslcerts/` certificates, read whole (small), whose names are asked of `openssl` after
    // the pass.
    let mut certs: Vec<String> = Vec::new();
    let mut visit = |e: &crate::unpack::Listed<'_>, r: &mut dyn Read| -> io::Result<()> {
        let parts: Vec<&str> = e.path.split('/').collect();
        let regular = e.kind.is_file();
        if e.home {
            if !regular {
                return Ok(());
            }
            f.home_files += 1;
            f.home_bytes += e.size;
            if let Some((boxname, domain)) = message_of(&parts) {
                *f.mailboxes
                    .entry(format!("{boxname}@{domain}"))
                    .or_default() += 1;
            } else if let Some(key) = dbox_file_of(&parts) {
                let mut br = BufReader::with_capacity(64 << 10, r);
                let c = count_dbox(&mut br, |br, n| io::copy(&mut br.take(n), &mut io::sink()))?;
                *f.mailboxes.entry(key.clone()).or_default() += c.messages;
                if let Some(why) = c.problem {
                    f.mdbox_damaged
                        .push(format!("{key}: {}: {why}", parts[3..].join("/")));
                }
                f.mdbox.insert(key);
            } else if let ["etc", domain, "passwd"] = parts.as_slice() {
                if e.size <= SMALL {
                    let mut text = String::new();
                    r.take(SMALL).read_to_string(&mut text).ok();
                    f.mail_accounts
                        .insert(domain.to_ascii_lowercase(), passwd_names(&text));
                }
            }
            return Ok(());
        }
        if !regular {
            return Ok(());
        }
        match parts.as_slice() {
            ["mysql", name] if name.ends_with(".sql") => {
                let db = name.trim_end_matches(".sql").to_string();
                f.databases.insert(db, dump_facts(r)?);
            }
            ["dnszones", name] if name.ends_with(".db") => {
                f.zones
                    .insert(name.trim_end_matches(".db").to_ascii_lowercase());
            }
            ["sslcerts", name] => {
                f.certs += 1;
                let pem = [".crt", ".pem", ".cert"].iter().any(|x| name.ends_with(x));
                if pem && certs.len() < 256 && e.size <= 64 << 10 {
                    let mut text = String::new();
                    r.take(64 << 10).read_to_string(&mut text).ok();
                    certs.push(text);
                }
            }
            ["apache_tls", domain] => {
                f.tls.insert(domain.to_ascii_lowercase());
            }
            ["sslkeys", _] => f.keys += 1,
            ["cron", user] if *user == account.as_str() || parts.len() == 2 => {
                let mut text = String::new();
                r.take(SMALL).read_to_string(&mut text).ok();
                f.cron_lines += text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#') && !is_cron_env(l))
                    .count() as u64;
            }
            _ => {}
        }
        Ok(())
    };
    walk_archive(archive, u64::MAX / 4, &mut visit).map_err(|e| match e {
        UnpackError::Io { path, source } => AgentError::io(path, source),
        other => AgentError::InvalidRequest(format!(
            "cannot read the archive {}: {other}",
            archive.display()
        )),
    })?;
    for text in &certs {
        if let Some(Ok(names)) = crate::tls::split(text)
            .certs
            .first()
            .map(|c| crate::tls::dns_names(c))
        {
            f.tls
                .extend(names.into_iter().filter(|n| !n.starts_with("*.")));
        }
    }
    Ok(f)
}

/// `mail/<domain>/<box>/[.<folder>/]{cur,new}/<file>` → (box, domain).
fn message_of<'a>(parts: &[&'a str]) -> Option<(&'a str, &'a str)> {
    if parts.len() < 5 || parts[0] != "mail" {
        return None;
    }
    let dir = parts[parts.len() - 2];
    if dir != "cur" && dir != "new" {
        return None;
    }
    let (domain, boxname) = (parts[1], parts[2]);
    // A Maildir folder is `.Name`; the box itself is a plain name.
    if boxname.starts_with('.') || !domain.contains('.') {
        return None;
    }
    let between = &parts[3..parts.len() - 2];
    if between.len() > 1 || between.iter().any(|p| !p.starts_with('.')) {
        return None;
    }
    Some((boxname, domain))
}

/// `mail/<domain>/<box>/storage/m.<N>` (a Dovecot mdbox storage file) → `box@domain`.
fn dbox_file_of(parts: &[&str]) -> Option<String> {
    let ["mail", domain, boxname, "storage", file] = parts else {
        return None;
    };
    let n = file.strip_prefix("m.")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if boxname.starts_with('.') || !domain.contains('.') {
        return None;
    }
    Some(format!("{boxname}@{domain}"))
}

/// What [`count_dbox`] found in one storage file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DboxCount {
    /// Whole messages (header, body and metadata block all there).
    pub messages: u64,
    /// Why the file did not read to its end as dbox (`None`: it did).
    pub problem: Option<String>,
}

/// Counts the messages of a Dovecot dbox (v2, as mdbox writes it) storage file in one
/// streaming pass, reading only headers and metadata: a file header line (`2 M<hex> C<hex>…`),
/// then per message a header line starting with `0x01 0x02`, its type (`N`, or `E` for
/// external parts) and, as its last field, the message's size in 16 hex digits; the message
/// (skipped with `skip`, which returns the bytes it skipped); the metadata block
/// (`LF 0x01 0x03 LF`) and its `<key><value>` lines up to an empty one. Lines are read up to
/// [`MAX_DBOX_LINE`], at most [`MAX_DBOX_MESSAGES`] messages are counted: memory is bounded,
/// and time is one header per message (plus the skips). A file that stops being dbox stops
/// the count there, saying where.
pub fn count_dbox<R: BufRead>(
    r: &mut R,
    mut skip: impl FnMut(&mut R, u64) -> io::Result<u64>,
) -> io::Result<DboxCount> {
    let mut c = DboxCount::default();
    let mut line = Vec::new();
    let read_line = |r: &mut R, line: &mut Vec<u8>| -> io::Result<bool> {
        line.clear();
        let n = r.take(MAX_DBOX_LINE).read_until(b'\n', line)?;
        Ok(n > 0 && line.last() == Some(&b'\n'))
    };
    if !read_line(r, &mut line)? || !line.starts_with(b"2 ") {
        c.problem = Some("no dbox v2 file header".into());
        return Ok(c);
    }
    loop {
        // The message header, or the end of the file.
        if r.fill_buf()?.is_empty() {
            return Ok(c);
        }
        if c.messages >= MAX_DBOX_MESSAGES {
            c.problem = Some(format!(
                "more than {MAX_DBOX_MESSAGES} messages: not counted further"
            ));
            return Ok(c);
        }
        let at = c.messages + 1;
        if !read_line(r, &mut line)? || !line.starts_with(b"\x01\x02") || line.len() < 4 {
            c.problem = Some(format!("message {at}: no dbox message header"));
            return Ok(c);
        }
        let size = std::str::from_utf8(&line[3..line.len() - 1])
            .ok()
            .and_then(|f| f.split_ascii_whitespace().last())
            .filter(|h| h.len() == 16)
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        let Some(size) = size else {
            c.problem = Some(format!("message {at}: no size in its header"));
            return Ok(c);
        };
        if skip(r, size)? < size {
            c.problem = Some(format!("message {at}: cut off"));
            return Ok(c);
        }
        let mut magic = [0u8; 4];
        if r.read_exact(&mut magic).is_err() || &magic != b"\n\x01\x03\n" {
            c.problem = Some(format!("message {at}: no metadata block after it"));
            return Ok(c);
        }
        let mut ended = false;
        for _ in 0..MAX_DBOX_META_LINES {
            if !read_line(r, &mut line)? {
                break;
            }
            // An empty line (or, as dbox v1 wrote it, spaces) ends the block.
            if line.iter().all(|&b| b == b' ' || b == b'\n') {
                ended = true;
                break;
            }
        }
        if !ended {
            c.problem = Some(format!("message {at}: its metadata block does not end"));
            return Ok(c);
        }
        c.messages += 1;
    }
}

/// [`count_dbox`] of a storage file in the home: opened without following a symlink or
/// blocking on a FIFO, the messages skipped by seeking (one header read per message).
fn count_dbox_file(path: &Path) -> DboxCount {
    use nix::fcntl::OFlag;
    use std::io::Seek;
    let fail = |why: String| DboxCount {
        messages: 0,
        problem: Some(why),
    };
    let fd = match nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => return fail(format!("cannot open it: {e}")),
    };
    let f = std::fs::File::from(fd);
    let len = match f.metadata() {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => return fail("not a regular file".into()),
        Err(e) => return fail(e.to_string()),
    };
    let mut br = BufReader::with_capacity(16 << 10, f);
    let skip = |br: &mut BufReader<std::fs::File>, n: u64| -> io::Result<u64> {
        let pos = br.stream_position()?;
        let k = n.min(len.saturating_sub(pos));
        br.seek_relative(k as i64)?;
        Ok(k)
    };
    count_dbox(&mut br, skip).unwrap_or_else(|e| fail(e.to_string()))
}

/// The account names of a cPanel `etc/<domain>/passwd`.
fn passwd_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty() && !n.starts_with('#'))
        .collect()
}

pub(crate) fn is_cron_env(line: &str) -> bool {
    let head = line.split_whitespace().next().unwrap_or_default();
    head.contains('=') && !head.starts_with('*') && !head.starts_with('@')
}

/// Counts a SQL dump's `CREATE TABLE` statements and the rows of its `INSERT`s (top-level
/// tuples after `VALUES`), outside quotes and comments, in one streaming pass.
pub fn dump_facts(r: &mut dyn Read) -> io::Result<DumpFacts> {
    let mut f = DumpFacts {
        complete: true,
        ..DumpFacts::default()
    };
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    let mut depth = 0i64;
    let mut head = String::new(); // the statement's first words, upper case
    let mut window: Vec<u8> = Vec::with_capacity(8); // the last bytes outside quotes
    let mut after_values = false;
    let mut line_comment = false;
    let mut pending = false; // a statement has started and not ended
    let mut prev = 0u8;
    // The statement's table (its first backquoted name after CREATE TABLE / INSERT INTO).
    let mut name: Option<Vec<u8>> = None;
    let mut naming = false;
    let mut block_comment = false;
    let mut before_prev = 0u8;
    let mut reader = BufReader::with_capacity(256 * 1024, r);
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        for &c in buf {
            // The byte two back (for `-- `).
            let p2 = before_prev;
            before_prev = prev;
            if line_comment {
                if c == b'\n' {
                    line_comment = false;
                }
                prev = c;
                continue;
            }
            if block_comment {
                if prev == b'*' && c == b'/' {
                    block_comment = false;
                    prev = 0;
                } else {
                    prev = c;
                }
                continue;
            }
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if c == b'\\' && q != b'`' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    naming = false;
                } else if naming {
                    if let Some(n) = name.as_mut() {
                        if n.len() < 256 {
                            n.push(c);
                        }
                    }
                }
                prev = c;
                continue;
            }
            match c {
                b'\'' | b'"' | b'`' => {
                    quote = Some(c);
                    pending = true;
                    let h = head.trim_end();
                    if c == b'`'
                        && name.is_none()
                        && (h == "CREATE TABLE"
                            || h == "CREATE TABLE IF NOT EXISTS"
                            || h == "INSERT INTO"
                            || h == "INSERT IGNORE INTO"
                            || h == "REPLACE INTO")
                    {
                        name = Some(Vec::new());
                        naming = true;
                    }
                }
                // `-- ` and `#` start a comment anywhere outside quotes, `/* … */` too (the
                // versioned `/*!…*/` holds no table or row of its own in a dump).
                b' ' | b'\t' | b'\n' | b'\r' if prev == b'-' && p2 == b'-' => {
                    line_comment = c != b'\n';
                }
                b'-' if prev == b'-' && !pending => {
                    line_comment = true;
                }
                b'#' => line_comment = true,
                b'*' if prev == b'/' => {
                    // The `/` was taken for the statement's start: it was the comment's.
                    if head.ends_with('/') {
                        head.pop();
                    }
                    if head.trim().is_empty() {
                        head.clear();
                        pending = false;
                    }
                    block_comment = true;
                    prev = 0;
                    continue;
                }
                b';' => {
                    if head.starts_with("CREATE TABLE") {
                        f.tables += 1;
                        if let Some(n) = name.take() {
                            f.table_rows
                                .entry(String::from_utf8_lossy(&n).into_owned())
                                .or_default();
                        }
                    }
                    name = None;
                    naming = false;
                    head.clear();
                    window.clear();
                    after_values = false;
                    depth = 0;
                    pending = false;
                }
                b'(' => {
                    if depth == 0 && after_values {
                        f.rows += 1;
                        if let Some(n) = &name {
                            *f.table_rows
                                .entry(String::from_utf8_lossy(n).into_owned())
                                .or_default() += 1;
                        }
                    }
                    depth += 1;
                    pending = true;
                }
                b')' => {
                    depth -= 1;
                    pending = true;
                }
                _ => {
                    if !c.is_ascii_whitespace() && c != b'-' {
                        pending = true;
                    }
                    if pending && head.len() < 32 {
                        let up = c.to_ascii_uppercase() as char;
                        if !(up.is_whitespace() && (head.is_empty() || head.ends_with(' '))) {
                            head.push(if up.is_whitespace() { ' ' } else { up });
                        }
                    }
                    if head.starts_with("INSERT") || head.starts_with("REPLACE") {
                        window.push(c.to_ascii_uppercase());
                        if window.len() > 6 {
                            window.remove(0);
                        }
                        if depth == 0 && window == b"VALUES" {
                            after_values = true;
                        }
                    }
                }
            }
            prev = c;
        }
        reader.consume(n);
    }
    if pending || quote.is_some() {
        f.complete = false;
    }
    Ok(f)
}

/// Walks the home without following symlinks.
pub fn home_facts(home: &Path, uid: Option<u32>, system_users: bool) -> Result<HomeFacts> {
    let mut h = HomeFacts::default();
    let meta = match std::fs::symlink_metadata(home) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => return Ok(h),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(h),
        Err(e) => return Err(AgentError::io(home, e)),
    };
    h.exists = true;
    if system_users {
        h.foreign_owned = Some(0);
    }
    let mut entries = 0u64;
    let mut stack = vec![(home.to_path_buf(), Vec::<String>::new(), meta)];
    while let Some((dir, rel, seen)) = stack.pop() {
        // The account may swap a directory for a symlink while the agent walks: each one is
        // opened without following a link and must be the very directory seen (device and
        // inode); its entries are then reached through that descriptor (`/proc/self/fd/N`),
        // so nothing outside the home is walked or read.
        let Some(fd) = open_seen_dir(&dir, &seen) else {
            continue;
        };
        let via = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let rd = match std::fs::read_dir(&via) {
            Ok(rd) => rd,
            Err(e) => return Err(AgentError::io(&dir, e)),
        };
        for ent in rd {
            let ent = ent.map_err(|e| AgentError::io(&dir, e))?;
            entries += 1;
            if entries > MAX_ENTRIES {
                h.truncated = true;
                return Ok(h);
            }
            let path = via.join(ent.file_name());
            let real = dir.join(ent.file_name());
            let name = ent.file_name().to_string_lossy().into_owned();
            let mut parts = rel.clone();
            parts.push(name);
            let shown = parts.join("/");
            let m = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(AgentError::io(&path, e)),
            };
            if let (Some(uid), Some(n)) = (uid, h.foreign_owned.as_mut()) {
                if m.uid() != uid {
                    *n += 1;
                }
            } else if let (None, Some(n)) = (uid, h.foreign_owned.as_mut()) {
                // System users are on but the account has none: everything is foreign.
                *n += 1;
            }
            let ft = m.file_type();
            let mode = m.permissions().mode();
            if !ft.is_symlink() && mode & 0o002 != 0 && mode & 0o1000 == 0 {
                h.world_writable += 1;
                if h.world_writable_examples.len() < EXAMPLES {
                    h.world_writable_examples.push(shown.clone());
                }
            }
            if ft.is_symlink() {
                if !symlink_resolves(home, &path) {
                    h.broken_symlinks += 1;
                    if h.broken_symlink_examples.len() < EXAMPLES {
                        h.broken_symlink_examples.push(shown.clone());
                    }
                }
            } else if ft.is_dir() {
                let path = real;
                // A mailbox's store: a Maildir (`cur/`) or Dovecot mdbox (`storage/`).
                if let [m, domain, boxname, store] = parts.as_slice() {
                    if m == "mail"
                        && (store == "cur" || store == "storage")
                        && domain.contains('.')
                        && !boxname.starts_with('.')
                    {
                        h.maildirs.insert(format!("{boxname}@{domain}"));
                    }
                }
                if parts.len() < MAX_DEPTH {
                    stack.push((path, parts, m));
                } else {
                    h.truncated = true;
                }
            } else if ft.is_file() {
                h.files += 1;
                h.bytes += m.len();
                let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
                let last = refs.last().copied().unwrap_or_default();
                if (last == "wp-config.php" || last == ".env")
                    && refs.len() <= 3
                    && m.len() <= SMALL
                    && h.app_credentials.len() < EXAMPLES
                {
                    if let Some(c) = read_small(&path).and_then(|t| app_credentials(&shown, &t)) {
                        h.app_credentials.push(c);
                    }
                }
                if let Some((boxname, domain)) = message_of(&refs) {
                    *h.mailboxes
                        .entry(format!("{boxname}@{domain}"))
                        .or_default() += 1;
                } else if let Some(key) = dbox_file_of(&refs) {
                    let c = count_dbox_file(&path);
                    *h.mailboxes.entry(key.clone()).or_default() += c.messages;
                    if let Some(why) = c.problem {
                        h.mdbox_damaged
                            .push(format!("{key}: {}: {why}", refs[3..].join("/")));
                    }
                    h.mdbox.insert(key);
                } else if let ["etc", domain, "passwd"] = refs.as_slice() {
                    let text = read_small(&path).unwrap_or_default();
                    h.mail_accounts
                        .insert(domain.to_ascii_lowercase(), passwd_names(&text));
                }
            }
        }
    }
    Ok(h)
}

/// `dir` opened as a directory without following a symlink, if it is still the one `seen`.
fn open_seen_dir(dir: &Path, seen: &std::fs::Metadata) -> Option<std::os::fd::OwnedFd> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let st = nix::sys::stat::fstat(&fd).ok()?;
    (st.st_dev as u64 == seen.dev() && st.st_ino as u64 == seen.ino()).then_some(fd)
}

/// Whether the symlink at `link` leads to something that exists inside `home`.
fn symlink_resolves(home: &Path, link: &Path) -> bool {
    match (std::fs::canonicalize(link), std::fs::canonicalize(home)) {
        (Ok(target), Ok(home)) => target.starts_with(home),
        _ => false,
    }
}

/// A small regular file's text (at most [`SMALL`] bytes): opened without following a symlink
/// in its place and without blocking on a FIFO, and refused unless it is a regular file. The
/// account can change its home while the agent reads it.
pub(crate) fn read_small(path: &Path) -> Option<String> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let f = std::fs::File::from(fd);
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    f.take(SMALL).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The host's zone of `domain` (`var/named/<domain>.db`): present, and its problems.
pub fn zone_facts(host_root: &Path, domain: &str) -> ZoneFacts {
    let mut z = ZoneFacts {
        domain: domain.to_string(),
        ..ZoneFacts::default()
    };
    if Domain::parse(domain).is_err() {
        z.problems.push(format!("{domain:?} is not a domain name"));
        return z;
    }
    let path = host_root.join("var/named").join(format!("{domain}.db"));
    match read_small(&path) {
        Some(text) => {
            z.present = true;
            z.problems = zone_problems(&text);
        }
        None => z.present = false,
    }
    z
}

/// Why a zone file does not parse: unbalanced parentheses, unknown record types, records
/// without their data, no SOA or more than one, no NS. Empty when it parses.
pub fn zone_problems(text: &str) -> Vec<String> {
    const TYPES: &[(&str, usize)] = &[
        ("SOA", 7),
        ("NS", 1),
        ("A", 1),
        ("AAAA", 1),
        ("CNAME", 1),
        ("MX", 2),
        ("TXT", 1),
        ("SRV", 4),
        ("CAA", 3),
        ("PTR", 1),
        ("SPF", 1),
        ("DS", 4),
        ("DNSKEY", 4),
        ("TLSA", 4),
        ("NAPTR", 6),
        ("SSHFP", 3),
        ("HTTPS", 2),
        ("SVCB", 2),
        ("DNAME", 1),
        ("HINFO", 2),
        ("LOC", 6),
        ("RP", 2),
        ("URI", 3),
        ("CDS", 4),
        ("CDNSKEY", 4),
        ("SMIMEA", 4),
        ("OPENPGPKEY", 1),
    ];
    let mut problems = Vec::new();
    let (mut soa, mut ns) = (0, 0);
    // Logical records: comments dropped, parenthesised continuations joined.
    let mut records: Vec<(usize, String)> = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    let mut open = 0i32;
    for (i, line) in text.lines().enumerate() {
        let mut code = String::new();
        let mut in_quote = false;
        let mut escaped = false;
        for c in line.chars() {
            if escaped {
                escaped = false;
                code.push(c);
                continue;
            }
            match c {
                // `\"` and `\;` inside a string are the characters, not its end or a comment.
                '\\' => {
                    escaped = true;
                    code.push(c);
                }
                '"' => {
                    in_quote = !in_quote;
                    code.push(c);
                }
                ';' if !in_quote => break,
                '(' if !in_quote => {
                    open += 1;
                    code.push(' ');
                }
                ')' if !in_quote => {
                    open -= 1;
                    code.push(' ');
                }
                c => code.push(c),
            }
        }
        if current.is_empty() {
            start = i + 1;
            current = code;
        } else {
            current.push(' ');
            current.push_str(&code);
        }
        if open <= 0 {
            if open < 0 {
                problems.push(format!("line {}: `)` without `(`", i + 1));
                open = 0;
            }
            if !current.trim().is_empty() {
                records.push((start, std::mem::take(&mut current)));
            }
            current.clear();
        }
    }
    if open > 0 {
        problems.push(format!("line {start}: `(` never closed"));
    }
    for (line, rec) in records {
        let owner_given = !rec.starts_with(char::is_whitespace);
        let mut tokens: Vec<&str> = rec.split_whitespace().collect();
        if tokens.first().is_some_and(|t| t.starts_with('$')) {
            if !matches!(tokens[0], "$TTL" | "$ORIGIN" | "$INCLUDE" | "$GENERATE") {
                problems.push(format!("line {line}: unknown directive {}", tokens[0]));
            }
            continue;
        }
        if owner_given && !tokens.is_empty() {
            tokens.remove(0);
        }
        // TTL (seconds, or BIND's units: `1h`, `1d2h`, `1W`) and class, in either order.
        for _ in 0..2 {
            if let Some(t) = tokens.first() {
                if is_ttl(t) || matches!(t.to_ascii_uppercase().as_str(), "IN" | "CH" | "HS") {
                    tokens.remove(0);
                }
            }
        }
        let Some(kind) = tokens.first().map(|t| t.to_ascii_uppercase()) else {
            problems.push(format!("line {line}: a record without a type"));
            continue;
        };
        // RFC 3597's generic `TYPEnnn` takes `\\# <len> <hex>`.
        let generic = kind
            .strip_prefix("TYPE")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let Some((_, need)) = TYPES
            .iter()
            .find(|(t, _)| *t == kind)
            .or(generic.then_some(&("TYPE", 1)))
        else {
            problems.push(format!("line {line}: unknown record type {kind}"));
            continue;
        };
        let data = &tokens[1..];
        if data.len() < *need {
            problems.push(format!(
                "line {line}: {kind} needs {need} fields, has {}",
                data.len()
            ));
            continue;
        }
        match kind.as_str() {
            "SOA" => soa += 1,
            "NS" => ns += 1,
            "A" if data[0].parse::<std::net::Ipv4Addr>().is_err() => {
                problems.push(format!("line {line}: A {} is not an IPv4 address", data[0]))
            }
            "AAAA" if data[0].parse::<std::net::Ipv6Addr>().is_err() => problems.push(format!(
                "line {line}: AAAA {} is not an IPv6 address",
                data[0]
            )),
            _ => {}
        }
    }
    if soa != 1 {
        problems.push(format!("{soa} SOA records (a zone has exactly one)"));
    }
    if ns == 0 {
        problems.push("no NS record".into());
    }
    problems
}

/// A TTL: seconds, or BIND's units (`1h`, `1d2h30m`, `2W`).
fn is_ttl(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_digit() || b"sSmMhHdDwW".contains(c))
        && (b.last().is_some_and(u8::is_ascii_alphabetic) || b.iter().all(u8::is_ascii_digit))
}

/// The system user in `<host_root>/etc/passwd` and its admin groups in `etc/group`.
fn user_facts(host_root: &Path, user: &str) -> UserFacts {
    let mut u = UserFacts::default();
    if let Some(passwd) = read_small(&host_root.join("etc/passwd")) {
        if let Some(line) = passwd.lines().find(|l| l.split(':').next() == Some(user)) {
            u.exists = true;
            u.shell = line.split(':').nth(6).map(str::to_string);
        }
    }
    if let Some(group) = read_small(&host_root.join("etc/group")) {
        for l in group.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4
                && matches!(f[0], "sudo" | "wheel" | "admin")
                && f[3].split(',').any(|m| m.trim() == user)
            {
                u.admin_groups.push(f[0].to_string());
            }
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_count_tables_rows_and_see_a_cut() {
        let sql = "-- dump; with a semicolon\nSET NAMES utf8mb4;\n\
            CREATE TABLE `a` (`id` int, `b` text, PRIMARY KEY (`id`));\n\
            INSERT INTO `a` VALUES (1,'x;(y)'),(2,'it\\'s'),(3,NULL);\n\
            CREATE TABLE `b` (`id` int);\n\
            INSERT INTO `b` (`id`) VALUES (7);\n";
        let f = dump_facts(&mut sql.as_bytes()).unwrap();
        assert_eq!((f.tables, f.rows, f.complete), (2, 4, true));
        assert_eq!(
            f.table_rows,
            BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 1)])
        );
        let cut = &sql[..sql.len() - 8];
        let f = dump_facts(&mut cut.as_bytes()).unwrap();
        assert!(!f.complete);
        // Comments anywhere, a UTF-8 table name.
        let f = dump_facts(
            &mut "/* don't; */ CREATE TABLE `tablé` (id int); -- a (1);\nINSERT INTO `tablé` VALUES (1) # (2)\n;\n"
                .as_bytes(),
        )
        .unwrap();
        assert_eq!((f.tables, f.rows, f.complete), (1, 1, true), "{f:?}");
        assert_eq!(f.table_rows.get("tablé"), Some(&1), "{f:?}");
        // A broken CREATE still counts as one the archive has.
        let f = dump_facts(&mut "CREATE TABLE `x` (`id` int,, PRIMARY KEY (`id`));".as_bytes())
            .unwrap();
        assert_eq!(f.tables, 1);
    }

    #[test]
    fn credentials_of_wordpress_and_dotenv() {
        let wp = "<?php\ndefine('DB_NAME', 'alice_wp');\ndefine( \"DB_USER\", \"alice_wp\" );\ndefine('DB_PASSWORD', 'pw');\n";
        let c = app_credentials("public_html/wp-config.php", wp).unwrap();
        assert_eq!(
            (c.database.as_str(), c.user.as_str(), c.password.as_str()),
            ("alice_wp", "alice_wp", "pw")
        );
        assert!(
            !format!("{c:?}").contains("pw\""),
            "the password is never printed"
        );
        let env =
            "APP_KEY=x\nDB_DATABASE=alice_app\nDB_USERNAME=\"alice_app\"\nDB_PASSWORD=s3cret\n";
        let c = app_credentials(".env", env).unwrap();
        assert_eq!(c.database, "alice_app");
        assert!(app_credentials(".env", "DB_DATABASE=x\n").is_none());
    }

    #[test]
    fn zones_parse_or_say_why() {
        let good = "$TTL 14400\nex.com. 86400 IN SOA ns1.ex.com. h.ex.com. (\n 2024031101 ; serial\n 3600 1800 1209600 86400 )\n\
            ex.com. IN NS ns1.ex.com.\nwww 14400 IN CNAME ex.com.\nex.com. IN MX 0 ex.com.\nex.com. IN A 203.0.113.10\n\
            ex.com. IN TXT \"v=spf1 +a ; not a comment\"\n";
        assert_eq!(zone_problems(good), Vec::<String>::new());
        let bad = "$TTL 14400\nex.com. IN SOA ns1.ex.com. (broken\n";
        let p = zone_problems(bad);
        assert!(p.iter().any(|x| x.contains("never closed")), "{p:?}");
        assert!(p.iter().any(|x| x.contains("no NS")), "{p:?}");
        let p = zone_problems(
            "ex.com. IN SOA a. b. 1 2 3 4 5\nex.com. IN NS a.\nx IN A 300.1.1.1\ny IN BOGUS z\n",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        // TTL units, newer types, a generic type, an escaped quote before a `;`.
        let modern = "$ORIGIN ex.com.\n@ 1h IN SOA ns1 h 1 2 3 4 5\n@ 1D IN NS ns1\n@ 300 IN HTTPS 1 . alpn=h2\n\
                      w 1h30m IN TXT \"say \\\"hi\\\"; ok\" \"two\"\nx IN TYPE65534 \\# 0\nd IN DNAME other.net.\n";
        assert_eq!(zone_problems(modern), Vec::<String>::new());
    }

    #[test]
    fn messages_are_found_in_boxes_and_folders_only() {
        fn m(p: &'static str) -> Option<(&'static str, &'static str)> {
            message_of(&p.split('/').collect::<Vec<_>>())
        }
        assert_eq!(m("mail/ex.com/info/cur/1.x"), Some(("info", "ex.com")));
        assert_eq!(m("mail/ex.com/info/new/1.x"), Some(("info", "ex.com")));
        assert_eq!(
            m("mail/ex.com/info/.Sent/cur/1.x"),
            Some(("info", "ex.com"))
        );
        assert_eq!(m("mail/ex.com/info/tmp/1.x"), None);
        assert_eq!(m("mail/cur/x/cur/1"), None);
        assert_eq!(m("mail/ex.com/info/a/b/cur/1"), None);
    }

    /// A dbox v2 storage file as Dovecot writes it: `2 M1e C<time>`, then per message the
    /// 30-byte header (`0x01 0x02`, type, space, 8 hex of the v1 UID, space, 16 hex of the
    /// size, LF), the message, `LF 0x01 0x03 LF`, metadata lines and an empty line.
    fn dbox(messages: &[&[u8]], short_header: bool) -> Vec<u8> {
        let mut f = b"2 M1e C6553f100\n".to_vec();
        for (i, m) in messages.iter().enumerate() {
            if short_header {
                f.extend_from_slice(format!("\x01\x02N {:016x}\n", m.len()).as_bytes());
            } else {
                f.extend_from_slice(format!("\x01\x02N 00000000 {:016x}\n", m.len()).as_bytes());
            }
            f.extend_from_slice(m);
            f.extend_from_slice(
                format!("\n\x01\x03\nG{i:032x}\nR6553f1{i:02x}\nZ{:x}\n\n", m.len()).as_bytes(),
            );
        }
        f
    }

    fn count(bytes: &[u8]) -> DboxCount {
        let mut r = io::Cursor::new(bytes);
        count_dbox(&mut r, |r, n| io::copy(&mut r.take(n), &mut io::sink())).unwrap()
    }

    #[test]
    fn dbox_files_count_whole_messages_and_say_where_they_stop() {
        // Bodies that look like headers and metadata are skipped by their size, not parsed.
        let tricky: &[u8] = b"From: a\r\n\r\n\x01\x02N 00000000 0000000000000001\n\n\x01\x03\n\n";
        let msgs: Vec<&[u8]> = vec![b"From: a\r\n\r\nhi", tricky, b""];
        for short in [false, true] {
            let f = dbox(&msgs, short);
            assert_eq!(
                count(&f),
                DboxCount {
                    messages: 3,
                    problem: None
                }
            );
            // Cut inside the last message: the two before it count.
            let c = count(&f[..f.len() - 20]);
            assert_eq!(c.messages, 2, "{c:?}");
            assert!(c.problem.unwrap().contains("message 3"));
        }
        assert_eq!(count(b"2 M1e C1\n"), DboxCount::default());
        let c = count(b"not dbox at all");
        assert_eq!(c.messages, 0);
        assert!(c.problem.unwrap().contains("file header"));
        // A file (seeking over the bodies) counts as the stream does.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.1");
        std::fs::write(&path, dbox(&msgs, false)).unwrap();
        assert_eq!(count_dbox_file(&path).messages, 3);
        std::os::unix::fs::symlink(&path, dir.path().join("m.2")).unwrap();
        assert!(count_dbox_file(&dir.path().join("m.2")).problem.is_some());
        assert_eq!(
            dbox_file_of(&["mail", "ex.com", "sales", "storage", "m.12"]),
            Some("sales@ex.com".into())
        );
        assert_eq!(
            dbox_file_of(&["mail", "ex.com", "sales", "storage", "dovecot.map.index"]),
            None
        );
        assert_eq!(
            dbox_file_of(&["mail", "ex.com", "sales", "storage", "m."]),
            None
        );
    }
}
