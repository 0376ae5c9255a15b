//! Per-account outbound mail limits for Exim (DESIGN §11, §13; research: wave2-anchors §4).
//!
//! # What is written
//!
//! | file (under `host.root`) | what |
//! | --- | --- |
//! | `etc/exim4/npanel/policies/<account>.conf` | the account's policy, `key = value` lines: the agent's own record, read back to build the ACL |
//! | `etc/exim4/npanel/acl_ratelimit.conf` | one ACL include generated from **all** policy files: two named ACLs, `npanel_ratelimit_rcpt` and `npanel_ratelimit_data` |
//!
//! Exim's own config hooks them in with three lines (see the agent README): `.include` of the
//! file in its `begin acl` section, `require acl = npanel_ratelimit_rcpt` in its RCPT ACL and
//! `require acl = npanel_ratelimit_data` in its DATA ACL.
//!
//! # Why it is shaped like this
//!
//! - **Keyed by the account, not the envelope sender.** The sender address is whatever the
//!   client claims; `$authenticated_id` is who logged in. For a local submission (PHP `mail()`)
//!   it is the calling Unix login, which is the account's name; for SMTP AUTH it is the mailbox
//!   login `box@domain`, mapped to the account through the account's domains. The rate key is
//!   `npanel_<account>`, so every identity of one account shares one budget (wave2-anchors
//!   §4.2). Account names and domains are validated types, so nothing from a request can
//!   inject Exim expansion syntax.
//! - **Deferred, not refused.** Over a limit the RCPT (or DATA) ACL answers
//!   `452 4.5.3 …`: a temporary failure, so a legitimate client retries later; the rate is
//!   `leaky` (Exim's default), which stops counting while the client is over the limit, the
//!   mode the Exim spec recommends when the countermeasure is refusal and clients retry.
//! - **Per hour and burst count recipients** (`per_rcpt` in the RCPT ACL: a spam run is many
//!   recipients, not many messages); **MB per hour counts the message's real size**
//!   (`per_byte` in the DATA ACL, where `$message_size` is known — in the RCPT ACL it would
//!   only be the client's optional `SIZE=` claim).
//! - **`max_connections` is counted by the agent.** Exim has no per-user concurrency counter
//!   (`smtp_accept_max_per_host` is per IP, and the user is unknown at connect time). Exim
//!   forks one process per SMTP connection, so the RCPT ACL asks the agent's counter
//!   ([`crate::smtpconns`], one `${readsocket}` line per connection) to count this process for
//!   the account; over the account's maximum the recipient is deferred with 452. The counter
//!   forgets a connection when its process is gone, so nothing has to release it. When the
//!   counter does not answer, mail goes on (fail open: a limit is not worth an outage).
//! - **Suspended and held accounts.** The ACL also checks two flag files the agent keeps in
//!   the account's fragment directory ([`crate::hostfiles`]): `suspended` (outgoing mail
//!   refused with 550 while the account is suspended) and `mail_held` (deferred with 452: the
//!   quota sweep found the account over its hourly limit for a whole hour; the next sweep that
//!   finds it under lifts it). They are checked at run time, so setting one needs no new ACL,
//!   no `exim -bV` and no reload.
//! - **Validated before it is swapped in.** The candidate ACL is written beside the live one,
//!   Exim checks a main config that includes the candidate (`exim -bV -C`), and only then is
//!   the candidate renamed over the live file (atomic). A config Exim rejects is refused
//!   ([`AgentError::ConfigRejected`]) and the live files stay as they were. Without an Exim
//!   binary the files are still written and the answer says `validated: false` and why.
//! - **Reloaded gracefully.** After a change, the running daemon (its pid file) gets SIGHUP,
//!   which makes Exim re-exec itself with the new config without dropping connections; a pid
//!   that is not an Exim process is never signalled.
//! - **One writer at a time**: every change holds an exclusive `flock` of
//!   `etc/exim4/npanel/.lock`, so two accounts' writes never lose each other's ACL stanza.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::account::AccountName;
use crate::config::AgentConfig;
use crate::error::{AgentError, Result};
use crate::fsx::{self, DirHandle};
use crate::names::Domain;

/// Default recipients per hour.
pub const DEFAULT_PER_HOUR: u32 = 500;
/// Default recipients per 15 minutes.
pub const DEFAULT_BURST_PER_15MIN: u32 = 100;
/// Default megabytes per hour.
pub const DEFAULT_MB_PER_HOUR: u32 = 50;
/// Default simultaneous connections.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// Largest `per_hour` and `burst_per_15min`.
pub const MAX_PER_HOUR: u32 = 100_000;
/// Largest `mb_per_hour` (100 GiB).
pub const MAX_MB_PER_HOUR: u32 = 102_400;
/// Largest `max_connections`.
pub const MAX_CONNECTIONS: u32 = 1_000;

/// Most domains one policy maps to its account.
pub const MAX_DOMAINS: usize = 1_000;

/// `etc/exim4/npanel` below the host root.
pub const NPANEL_DIR: &str = "etc/exim4/npanel";
/// The generated ACL include, in [`NPANEL_DIR`].
pub const ACL_FILE: &str = "acl_ratelimit.conf";
/// The per-account policy files, in [`NPANEL_DIR`].
pub const POLICIES_DIR: &str = "policies";
const LOCK_FILE: &str = ".lock";
const MAX_POLICY_BYTES: u64 = 64 * 1024;
/// How long `exim -bV` may take.
const EXIM_TIMEOUT: Duration = Duration::from_secs(20);

/// An account's outbound mail limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailPolicy {
    /// Recipients per hour.
    #[serde(default = "default_per_hour")]
    pub per_hour: u32,
    /// Recipients per 15 minutes.
    #[serde(default = "default_burst")]
    pub burst_per_15min: u32,
    /// Megabytes of mail per hour.
    #[serde(default = "default_mb")]
    pub mb_per_hour: u32,
    /// Simultaneous SMTP connections (counted by [`crate::smtpconns`]).
    #[serde(default = "default_conns")]
    pub max_connections: u32,
}

fn default_per_hour() -> u32 {
    DEFAULT_PER_HOUR
}
fn default_burst() -> u32 {
    DEFAULT_BURST_PER_15MIN
}
fn default_mb() -> u32 {
    DEFAULT_MB_PER_HOUR
}
fn default_conns() -> u32 {
    DEFAULT_MAX_CONNECTIONS
}

impl Default for MailPolicy {
    fn default() -> Self {
        Self {
            per_hour: DEFAULT_PER_HOUR,
            burst_per_15min: DEFAULT_BURST_PER_15MIN,
            mb_per_hour: DEFAULT_MB_PER_HOUR,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl MailPolicy {
    /// Refuses values out of range, one sentence naming the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let range = |name: &str, v: u32, max: u32| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} is {v}; it must be between 1 and {max}"))
            }
        };
        range("per_hour", self.per_hour, MAX_PER_HOUR)?;
        range("burst_per_15min", self.burst_per_15min, MAX_PER_HOUR)?;
        range("mb_per_hour", self.mb_per_hour, MAX_MB_PER_HOUR)?;
        range("max_connections", self.max_connections, MAX_CONNECTIONS)?;
        if self.burst_per_15min > self.per_hour {
            return Err(format!(
                "burst_per_15min ({}) must not exceed per_hour ({})",
                self.burst_per_15min, self.per_hour
            ));
        }
        Ok(())
    }
}

/// Whether Exim checked the config, and how the daemon was told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailPolicyReport {
    pub account: AccountName,
    /// The policy now in force for the account (`None` after a remove).
    pub policy: Option<MailPolicy>,
    /// The account's policy file.
    pub path: String,
    /// The ACL include.
    pub acl_path: String,
    /// Accounts with a policy in the ACL now.
    pub accounts: usize,
    /// false when the files already said exactly this (idempotent repeat).
    pub changed: bool,
    /// true: `exim -bV` accepted a config including the ACL before it was swapped in.
    pub validated: bool,
    /// The Exim binary that validated, or why nothing was validated.
    pub validation: String,
    /// true: SIGHUP was sent to the running Exim daemon.
    pub reloaded: bool,
    /// What the reload did, or why there was none.
    pub reload: String,
}

/// `<host_root>/etc/exim4/npanel`.
pub fn npanel_dir(host_root: &Path) -> PathBuf {
    host_root.join(NPANEL_DIR)
}

/// `<host_root>/etc/exim4/npanel/acl_ratelimit.conf`.
pub fn acl_path(host_root: &Path) -> PathBuf {
    npanel_dir(host_root).join(ACL_FILE)
}

/// One account's entry: its limits and the domains whose mailbox logins are its.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    pub policy: MailPolicy,
    pub domains: Vec<Domain>,
}

const HEADER: &str = "# npanel mail policy, written by npanel-agent: edits here are overwritten";

/// The policy file of `account`.
fn render_policy(account: &AccountName, e: &PolicyEntry) -> String {
    let p = &e.policy;
    let domains: Vec<&str> = e.domains.iter().map(|d| d.as_str()).collect();
    format!(
        "{HEADER}\naccount = {account}\nper_hour = {}\nburst_per_15min = {}\nmb_per_hour = {}\nmax_connections = {}\ndomains = {}\n",
        p.per_hour,
        p.burst_per_15min,
        p.mb_per_hour,
        p.max_connections,
        domains.join(" ")
    )
}

/// Reads back a policy file the agent wrote (named `<account>.conf`).
fn parse_policy(file: &str, text: &str) -> std::result::Result<(AccountName, PolicyEntry), String> {
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("{file} line {}: expected `key = value`", n + 1))?;
        if fields.insert(k.trim(), v.trim()).is_some() {
            return Err(format!("{file} line {}: {} given twice", n + 1, k.trim()));
        }
    }
    let get = |k: &str| fields.get(k).copied();
    let num = |k: &str| -> std::result::Result<u32, String> {
        get(k)
            .ok_or_else(|| format!("{file}: {k} is missing"))?
            .parse()
            .map_err(|_| format!("{file}: {k} is not a number"))
    };
    let account = AccountName::parse(get("account").unwrap_or_default())
        .map_err(|e| format!("{file}: account: {e}"))?;
    if file != format!("{account}.conf") {
        return Err(format!("{file}: it names account {account}"));
    }
    for k in fields.keys() {
        if ![
            "account",
            "per_hour",
            "burst_per_15min",
            "mb_per_hour",
            "max_connections",
            "domains",
        ]
        .contains(k)
        {
            return Err(format!("{file}: unknown key {k}"));
        }
    }
    let policy = MailPolicy {
        per_hour: num("per_hour")?,
        burst_per_15min: num("burst_per_15min")?,
        mb_per_hour: num("mb_per_hour")?,
        max_connections: num("max_connections")?,
    };
    policy.validate().map_err(|e| format!("{file}: {e}"))?;
    let domains = get("domains")
        .unwrap_or_default()
        .split_whitespace()
        .map(Domain::parse)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("{file}: domains: {e}"))?;
    Ok((account, PolicyEntry { policy, domains }))
}

/// The ACL include for every account's policy (sorted by account, so the same policies always
/// give the same bytes). Two named ACLs:
///
/// - `npanel_ratelimit_rcpt` finds the sending account from `$authenticated_id` (the account
///   name itself, or a mailbox login `box@domain` of one of its domains), keeps it and its
///   limits in `$acl_m_npanel_*` for the rest of the message, and defers the recipient with
///   452 when the hourly or the 15-minute recipient rate is over the limit;
/// - `npanel_ratelimit_data` defers the message with 452 when the account's bytes per hour
///   are over the limit.
///
/// A sender that is no account's (not authenticated, or unknown) is accepted unchanged.
pub fn render_acl(policies: &BTreeMap<AccountName, PolicyEntry>, paths: &AclPaths) -> String {
    let mut s = String::new();
    s.push_str(
        "# npanel per-account mail limits, generated by npanel-agent from policies/*.conf:\n\
         # edits here are overwritten. Include it in the `begin acl` section and call\n\
         # `require acl = npanel_ratelimit_rcpt` from the RCPT ACL,\n\
         # `require acl = npanel_ratelimit_data` from the DATA ACL and\n\
         # `require acl = npanel_ratelimit_not_smtp` from acl_not_smtp (sendmail -t, PHP mail()).\n\n",
    );
    s.push_str("npanel_ratelimit_rcpt:\n");
    s.push_str("  warn    set acl_m_npanel_sender = ${lc:$authenticated_id}\n");
    for (account, e) in policies {
        let mut who = format!("{{eq{{$acl_m_npanel_sender}}{{{account}}}}}");
        if !e.domains.is_empty() {
            let list: Vec<&str> = e.domains.iter().map(|d| d.as_str()).collect();
            who.push_str(&format!(
                "{{match_domain{{${{domain:$acl_m_npanel_sender}}}}{{{}}}}}",
                list.join(" : ")
            ));
        }
        set_account(&mut s, account, &e.policy, &format!("or{{{who}}}"));
    }
    s.push_str(NO_ACCOUNT);
    flags(&mut s, paths, "defer");
    // One counter request per connection (the process is the connection); deferred RCPTs
    // ask again.
    s.push_str(&format!(
        "  defer   condition = ${{if !def:acl_c_npanel_conn}}\n\
         \x20         condition = ${{if match{{${{readsocket{{{}}}{{acquire $acl_m_npanel_account $pid $acl_m_npanel_conns\\n}}{{2s}}{{}}{{ok}}}}}}{{^full}}}}\n\
         \x20         message = 452 4.5.3 Too many simultaneous connections of account $acl_m_npanel_account (at most $acl_m_npanel_conns)\n\
         \x20 warn    set acl_c_npanel_conn = 1\n",
        paths.conn_socket
    ));
    limit(&mut s, "defer", HOURLY);
    limit(&mut s, "defer", BURST);
    s.push_str("  accept\n\n");
    s.push_str("npanel_ratelimit_data:\n");
    s.push_str(NO_ACCOUNT);
    limit(&mut s, "defer", VOLUME);
    s.push_str("  accept\n\n");
    // Mail handed to Exim without SMTP (`sendmail -t`, PHP's mail()): `$authenticated_id` is
    // the calling user's login, so the account is known by its name; the message is whole
    // here, so recipients and bytes are counted at once, against the same budgets.
    s.push_str("npanel_ratelimit_not_smtp:\n");
    for (account, e) in policies {
        let who = format!("eq{{${{lc:$authenticated_id}}}}{{{account}}}");
        set_account(&mut s, account, &e.policy, &who);
    }
    s.push_str(NO_ACCOUNT);
    flags(&mut s, paths, "deny");
    limit(&mut s, "deny", HOURLY);
    limit(&mut s, "deny", BURST);
    limit(&mut s, "deny", VOLUME);
    s.push_str("  accept\n");
    s
}

/// Run-time paths the ACL names, escaped for Exim's string expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclPaths {
    /// `<host root>/etc/npanel/accounts`: each account's `suspended` and `mail_held` flags.
    pub accounts_dir: String,
    /// The SMTP connection counter's socket.
    pub conn_socket: String,
}

impl AclPaths {
    /// The paths of `cfg`'s host.
    pub fn of(cfg: &AgentConfig) -> Self {
        Self {
            accounts_dir: exim_escape(&crate::hostfiles::accounts_dir(&cfg.host.root)),
            conn_socket: exim_escape(&cfg.conn_socket()),
        }
    }
}

/// A path as literal text inside an Exim expansion: `\`, `$`, `{` and `}` escaped (a newline
/// cannot be in a config line at all and is replaced).
fn exim_escape(p: &Path) -> String {
    let mut out = String::new();
    for c in p.display().to_string().chars() {
        match c {
            '\\' | '$' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// The account's `suspended` (refused) and `mail_held` (deferred, or refused without SMTP)
/// flags, checked at run time. `verb` is what a held account gets: `defer` over SMTP.
fn flags(s: &mut String, paths: &AclPaths, verb: &str) {
    let dir = &paths.accounts_dir;
    s.push_str(&format!(
        "  deny    condition = ${{if exists{{{dir}/$acl_m_npanel_account/{}}}}}\n\
         \x20         message = 550 5.7.1 Account $acl_m_npanel_account is suspended: its outgoing mail is refused\n\
         \x20 {verb:<7} condition = ${{if exists{{{dir}/$acl_m_npanel_account/{}}}}}\n\
         \x20         message = 452 4.5.3 Outgoing mail of account $acl_m_npanel_account is paused: it sent more than its hourly limit; the next usage check lifts the pause once it sends less\n",
        crate::hostfiles::SUSPENDED_FLAG,
        crate::hostfiles::MAIL_HELD_FLAG,
    ));
}

/// Leave an ACL at once when the sender is no account's.
const NO_ACCOUNT: &str = "  accept  condition = ${if !def:acl_m_npanel_account}\n";
/// The three limits: (ratelimit, what the 452 names).
const HOURLY: (&str, &str) = (
    "$acl_m_npanel_per_hour / 1h / per_rcpt",
    "Hourly sending limit",
);
const BURST: (&str, &str) = (
    "$acl_m_npanel_burst / 15m / per_rcpt",
    "15-minute sending limit",
);
const VOLUME: (&str, &str) = ("${acl_m_npanel_mb}M / 1h / per_byte", "Hourly volume limit");

/// One limit, `verb` (`defer` over SMTP, `deny` without) with its 452 message.
fn limit(s: &mut String, verb: &str, (rate, what): (&str, &str)) {
    s.push_str(&format!(
        "  {verb:<7} ratelimit = {rate} / npanel_$acl_m_npanel_account\n\
         \x20         message = 452 4.5.3 {what} of account $acl_m_npanel_account reached ($sender_rate/$sender_rate_period, max $sender_rate_limit)\n"
    ));
}

/// The `warn` that names the account (the first whose `who` condition holds) and its limits.
fn set_account(s: &mut String, account: &AccountName, p: &MailPolicy, who: &str) {
    s.push_str(&format!(
        "  warn    condition = ${{if and{{{{!def:acl_m_npanel_account}}{{{who}}}}}}}\n\
         \x20         set acl_m_npanel_account = {account}\n\
         \x20         set acl_m_npanel_per_hour = {}\n\
         \x20         set acl_m_npanel_burst = {}\n\
         \x20         set acl_m_npanel_mb = {}\n\
         \x20         set acl_m_npanel_conns = {}\n",
        p.per_hour, p.burst_per_15min, p.mb_per_hour, p.max_connections
    ));
}

/// A minimal Exim main config that includes `acl` and calls its two ACLs the way a real
/// config does: what the agent validates when no `mail.exim_config` is set, and what the
/// tests run `exim -bh` sessions against (with their own spool).
pub fn harness_config(acl: &Path, spool: Option<&Path>) -> String {
    let mut s = String::from(
        "# npanel-agent: a harness that checks the mail policy ACL; never used to deliver mail\n\
         primary_hostname = npanel.invalid\n\
         keep_environment =\n\
         acl_smtp_rcpt = npanel_check_rcpt\n\
         acl_smtp_data = npanel_check_data\n\
         acl_not_smtp = npanel_check_not_smtp\n",
    );
    if let Some(spool) = spool {
        s.push_str(&format!("spool_directory = {}\n", spool.display()));
    }
    s.push_str(&format!(
        "\nbegin acl\n\n.include {}\n\n\
         npanel_check_rcpt:\n  require acl = npanel_ratelimit_rcpt\n  accept\n\n\
         npanel_check_data:\n  require acl = npanel_ratelimit_data\n  accept\n\n\
         npanel_check_not_smtp:\n  require acl = npanel_ratelimit_not_smtp\n  accept\n",
        acl.display()
    ));
    s
}

/// The Exim binary to validate with: `mail.exim` (`none` disables validation; a path is used
/// as it is), or with `auto` `exim4` then `exim` on `PATH` and in the sbin directories.
pub fn find_exim(cfg: &AgentConfig) -> std::result::Result<PathBuf, String> {
    match cfg.mail.exim.as_str() {
        "none" => Err("mail.exim is \"none\": validation is off".into()),
        "auto" | "" => {
            let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default();
            for d in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
                dirs.push(d.into());
            }
            for name in ["exim4", "exim"] {
                if let Some(p) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
                    return Ok(p);
                }
            }
            Err("no Exim binary (exim4 or exim) on PATH or in /usr/sbin, /usr/bin, /sbin, /bin: the files were written but not checked".into())
        }
        path => {
            let p = PathBuf::from(path);
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "mail.exim {path} does not exist: the files were written but not checked"
                ))
            }
        }
    }
}

/// Runs `exim -bV -C <config>`; `Err` carries Exim's complaint.
fn exim_check(exim: &Path, config: &Path) -> Result<std::result::Result<(), String>> {
    let mut child = Command::new(exim)
        .args([
            OsString::from("-bV"),
            OsString::from("-C"),
            config.as_os_str().to_owned(),
        ])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| AgentError::ToolFailed(format!("cannot start {}: {e}", exim.display())))?;
    // Read both pipes on threads so a chatty Exim cannot block on a full pipe.
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let _ = r.take(256 * 1024).read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() > EXIM_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(AgentError::ToolFailed(format!(
                    "{} -bV did not finish within {EXIM_TIMEOUT:?}",
                    exim.display()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                return Err(AgentError::ToolFailed(format!(
                    "waiting for {}: {e}",
                    exim.display()
                )))
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        return Ok(Ok(()));
    }
    // Exim's complaint, without its environment warnings.
    let complaint: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| {
            !l.contains("Warning: purging the environment") && !l.contains("keep_environment")
        })
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Ok(Err(format!(
        "{} -bV refused the config (exit {}): {}",
        exim.display(),
        status
            .code()
            .map_or("by signal".to_string(), |c| c.to_string()),
        if complaint.is_empty() {
            "no message".to_string()
        } else {
            complaint.join(" / ")
        }
    )))
}

/// SIGHUPs the Exim daemon named by the pid file, if one runs. Never fails the request: what
/// happened is the answer.
fn reload_exim(cfg: &AgentConfig) -> (bool, String) {
    let pid_file = cfg
        .mail
        .exim_pid_file
        .clone()
        .unwrap_or_else(|| cfg.host.root.join("run/exim4/exim.pid"));
    let text = match std::fs::read_to_string(&pid_file) {
        Ok(t) => t,
        Err(_) => {
            return (
                false,
                format!(
                    "skipped: no Exim daemon is running (no pid file {})",
                    pid_file.display()
                ),
            )
        }
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return (
            false,
            format!("skipped: {} does not hold a pid", pid_file.display()),
        );
    };
    if pid <= 1 {
        return (
            false,
            format!("skipped: {} holds pid {pid}", pid_file.display()),
        );
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let comm = comm.trim();
    if comm.is_empty() {
        return (
            false,
            format!(
                "skipped: pid {pid} from {} is not running (stale pid file)",
                pid_file.display()
            ),
        );
    }
    if !comm.starts_with("exim") {
        return (
            false,
            format!("skipped: pid {pid} is {comm:?}, not Exim; not signalled"),
        );
    }
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    ) {
        Ok(()) => (
            true,
            format!("SIGHUP sent to Exim (pid {pid}): it re-reads its config"),
        ),
        Err(e) => (false, format!("failed: SIGHUP to Exim pid {pid}: {e}")),
    }
}

/// Reads every policy file of the directory.
fn read_policies(dir: &DirHandle) -> Result<BTreeMap<AccountName, PolicyEntry>> {
    let mut names = Vec::new();
    {
        let listing = dir
            .file
            .try_clone()
            .map_err(|e| AgentError::io(&dir.path, e))?;
        let mut d = nix::dir::Dir::from_fd(listing.into())
            .map_err(|e| AgentError::io(&dir.path, std::io::Error::from(e)))?;
        for entry in d.iter() {
            let entry = entry.map_err(|e| AgentError::io(&dir.path, std::io::Error::from(e)))?;
            let n = entry.file_name().to_bytes();
            if n.starts_with(b".") || !n.ends_with(b".conf") {
                continue; // temp files of an interrupted write, and anything else
            }
            names.push(String::from_utf8_lossy(n).into_owned());
        }
    }
    let mut out = BTreeMap::new();
    for name in names {
        let Some(bytes) = dir.read_file(&name, MAX_POLICY_BYTES)? else {
            continue; // removed meanwhile
        };
        let text = String::from_utf8_lossy(&bytes);
        let (account, entry) = parse_policy(&name, &text).map_err(|e| {
            AgentError::Config(format!(
                "{}: {e}; fix or remove the file (the agent writes these files itself)",
                dir.path.display()
            ))
        })?;
        out.insert(account, entry);
    }
    Ok(out)
}

fn temp_name(what: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        ".{what}.candidate-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes a file of `dir` when dropped (the candidate files).
struct Cleanup<'a> {
    dir: &'a DirHandle,
    names: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = self.dir.remove_file(n);
        }
    }
}

/// Writes (`Some`) or removes (`None`) the policy of `account` and regenerates the ACL; see
/// the module docs for the order of the steps.
pub fn apply(
    cfg: &AgentConfig,
    account: &AccountName,
    change: Option<(MailPolicy, Vec<Domain>)>,
) -> Result<MailPolicyReport> {
    if let Some((policy, domains)) = &change {
        policy.validate().map_err(AgentError::InvalidRequest)?;
        if domains.len() > MAX_DOMAINS {
            return Err(AgentError::InvalidRequest(format!(
                "{} domains given; at most {MAX_DOMAINS}",
                domains.len()
            )));
        }
    }
    let host_root = &cfg.host.root;
    let base = fsx::ensure_base(&npanel_dir(host_root), 0o755)?;
    let (lock_file, _) = base.ensure_file(LOCK_FILE, 0o600)?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| AgentError::io(base.path.join(LOCK_FILE), e.into()))?;
    let (policies, _) = base.ensure_dir(POLICIES_DIR, 0o755)?;
    let mut all = read_policies(&policies)?;
    let file = format!("{account}.conf");
    let policy_text = match change {
        Some((policy, mut domains)) => {
            domains.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            domains.dedup();
            let e = PolicyEntry { policy, domains };
            let text = render_policy(account, &e);
            all.insert(account.clone(), e);
            Some(text)
        }
        None => {
            all.remove(account);
            None
        }
    };
    let acl = render_acl(&all, &AclPaths::of(cfg));
    let current_policy = match policies.read_file(&file, MAX_POLICY_BYTES) {
        Ok(c) => c,
        Err(AgentError::UnsafePath(_)) => Some(Vec::new()), // replaced or removed below
        Err(e) => return Err(e),
    };
    let policy_changed = match &policy_text {
        Some(t) => current_policy.as_deref() != Some(t.as_bytes()),
        None => current_policy.is_some(),
    };
    let current_acl = match base.read_file(ACL_FILE, acl.len() as u64 + 1) {
        Ok(c) => c,
        Err(AgentError::UnsafePath(_)) => None,
        Err(e) => return Err(e),
    };
    let acl_changed = current_acl.as_deref() != Some(acl.as_bytes());

    // The candidate ACL, beside the live one (same filesystem: the rename is atomic).
    let candidate = temp_name(ACL_FILE);
    let mut cleanup = Cleanup {
        dir: &base,
        names: vec![candidate.clone()],
    };
    base.write_atomic(&candidate, acl.as_bytes(), 0o644)?;
    let (validated, validation) = match find_exim(cfg) {
        Err(why) => (false, why),
        Ok(exim) => {
            let candidate_path = base.path.join(&candidate);
            let live = acl_path(host_root).display().to_string();
            // The real main config, pointed at the candidate instead of the live ACL; one that
            // does not include the ACL would check nothing of it, so then the harness is used.
            let (main, what) = match &cfg.mail.exim_config {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
                    if text.contains(&live) {
                        (
                            text.replace(&live, &candidate_path.display().to_string()),
                            path.display().to_string(),
                        )
                    } else {
                        (
                            harness_config(&candidate_path, None),
                            format!(
                                "a harness config ({} does not include {live})",
                                path.display()
                            ),
                        )
                    }
                }
                None => (
                    harness_config(&candidate_path, None),
                    "a harness config".to_string(),
                ),
            };
            let main_name = temp_name("exim.conf");
            cleanup.names.push(main_name.clone());
            base.write_atomic(&main_name, main.as_bytes(), 0o644)?;
            match exim_check(&exim, &base.path.join(&main_name))? {
                Ok(()) => (
                    true,
                    format!(
                        "{} -bV accepted {what} including the new ACL",
                        exim.display()
                    ),
                ),
                Err(complaint) => {
                    tracing::warn!(account = %account, "mail policy refused: {complaint}");
                    return Err(AgentError::ConfigRejected(format!(
                        "{complaint}; nothing was changed"
                    )));
                }
            }
        }
    };
    // Swap in: the account's policy first, then the ACL (what Exim reads) by renaming the
    // very candidate Exim checked.
    if policy_changed {
        match &policy_text {
            Some(t) => policies.write_atomic(&file, t.as_bytes(), 0o644)?,
            None => {
                policies.remove_file(&file)?;
            }
        }
    }
    if acl_changed {
        nix::fcntl::renameat(&base.file, candidate.as_str(), &base.file, ACL_FILE)
            .map_err(|e| AgentError::io(base.path.join(ACL_FILE), std::io::Error::from(e)))?;
        let _ = base.file.sync_all();
    }
    drop(cleanup);
    let changed = policy_changed || acl_changed;
    let (reloaded, reload) = if changed {
        reload_exim(cfg)
    } else {
        (false, "not needed: nothing changed".to_string())
    };
    if changed {
        tracing::info!(account = %account, validated, reloaded, "mail policy {}", if policy_text.is_some() { "written" } else { "removed" });
    }
    Ok(MailPolicyReport {
        account: account.clone(),
        policy: all.get(account).map(|e| e.policy),
        path: policies.path.join(&file).display().to_string(),
        acl_path: base.path.join(ACL_FILE).display().to_string(),
        accounts: all.len(),
        changed,
        validated,
        validation,
        reloaded,
        reload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(s: &str) -> AccountName {
        AccountName::parse(s).unwrap()
    }

    #[test]
    fn defaults_and_ranges() {
        let p = MailPolicy::default();
        assert_eq!(
            (
                p.per_hour,
                p.burst_per_15min,
                p.mb_per_hour,
                p.max_connections
            ),
            (500, 100, 50, 10)
        );
        assert!(p.validate().is_ok());
        let bad = |f: fn(&mut MailPolicy)| {
            let mut p = MailPolicy::default();
            f(&mut p);
            p.validate().unwrap_err()
        };
        assert!(bad(|p| p.per_hour = 0).contains("per_hour is 0"));
        assert!(bad(|p| p.mb_per_hour = MAX_MB_PER_HOUR + 1).contains("mb_per_hour"));
        assert!(bad(|p| p.max_connections = 0).contains("max_connections"));
        assert!(bad(|p| p.burst_per_15min = 501).contains("must not exceed per_hour"));
        let e = serde_json::from_str::<MailPolicy>(r#"{"per_hour": 5, "perhour": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
        let p: MailPolicy =
            serde_json::from_str(r#"{"per_hour": 5, "burst_per_15min": 2}"#).unwrap();
        assert_eq!((p.per_hour, p.mb_per_hour), (5, 50));
    }

    #[test]
    fn policy_files_round_trip() {
        let e = PolicyEntry {
            policy: MailPolicy {
                per_hour: 7,
                burst_per_15min: 3,
                mb_per_hour: 9,
                max_connections: 2,
            },
            domains: vec![Domain::parse("alice.example").unwrap()],
        };
        let text = render_policy(&acct("alice"), &e);
        assert_eq!(
            parse_policy("alice.conf", &text).unwrap(),
            (acct("alice"), e)
        );
        assert!(parse_policy("bob.conf", &text)
            .unwrap_err()
            .contains("names account alice"));
        assert!(
            parse_policy("alice.conf", &text.replace("per_hour = 7", "per_hour = x"))
                .unwrap_err()
                .contains("not a number")
        );
        assert!(parse_policy("alice.conf", &format!("{text}colour = red\n"))
            .unwrap_err()
            .contains("unknown key"));
    }

    #[test]
    fn acl_names_each_account_and_its_domains() {
        let mut m = BTreeMap::new();
        m.insert(
            acct("bob"),
            PolicyEntry {
                policy: MailPolicy::default(),
                domains: vec![],
            },
        );
        m.insert(
            acct("alice"),
            PolicyEntry {
                policy: MailPolicy {
                    per_hour: 2,
                    ..MailPolicy::default()
                },
                domains: vec![
                    Domain::parse("alice.example").unwrap(),
                    Domain::parse("shop.example").unwrap(),
                ],
            },
        );
        let paths = AclPaths {
            accounts_dir: exim_escape(Path::new("/h/etc/npanel/accounts")),
            conn_socket: exim_escape(Path::new("/h/run/c$x{}.sock")),
        };
        let acl = render_acl(&m, &paths);
        let alice = acl.find("set acl_m_npanel_account = alice").unwrap();
        let bob = acl.find("set acl_m_npanel_account = bob").unwrap();
        assert!(alice < bob, "sorted by account");
        assert!(acl.contains(
            "{match_domain{${domain:$acl_m_npanel_sender}}{alice.example : shop.example}}"
        ));
        assert!(acl.contains("set acl_m_npanel_per_hour = 2\n"));
        assert!(acl.contains("per_rcpt / npanel_$acl_m_npanel_account"));
        assert!(acl.contains("${acl_m_npanel_mb}M / 1h / per_byte"));
        assert!(acl.contains("message = 452 4.5.3 Hourly sending limit"));
        assert!(acl.contains("set acl_m_npanel_conns = 10\n"));
        assert!(acl.contains("${readsocket{/h/run/c\\$x\\{\\}.sock}{acquire $acl_m_npanel_account $pid $acl_m_npanel_conns\\n}{2s}{}{ok}}}{^full}}"), "{acl}");
        assert!(
            acl.contains("${if exists{/h/etc/npanel/accounts/$acl_m_npanel_account/suspended}}")
        );
        assert!(acl.contains("  defer   condition = ${if exists{/h/etc/npanel/accounts/$acl_m_npanel_account/mail_held}}"));
        assert!(acl.contains("  deny    condition = ${if exists{/h/etc/npanel/accounts/$acl_m_npanel_account/mail_held}}"), "held mail without SMTP is refused");
        assert_eq!(acl, render_acl(&m, &paths), "deterministic");
    }
}
