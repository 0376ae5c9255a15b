//! Host files of an account outside its home (DESIGN §11): the DNS zone, the
//! security fragments and the suspended flag. Each is written atomically and
//! only when its content changes, so every operation is idempotent.
//!
//! | what | where |
//! | --- | --- |
//! | zone | `<host_root>/var/named/<domain>.db` (0644) |
//! | security | `<host_root>/etc/npanel/accounts/<account>/{profile,php.ini,ssh.conf,policy.conf,cron.allow}` (0644); the home's mode |
//! | suspended flag | `<host_root>/etc/npanel/accounts/<account>/suspended` (0644) |

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::account::AccountName;
use crate::error::{AgentError, Result};
use crate::fsx::{self, DirHandle};
use crate::names::Domain;
use crate::protocol::{SecurityProfile, SecurityWritten, ZoneWritten};
use serde::{Deserialize, Serialize};

/// `<host_root>/var/named`.
pub fn zone_dir(host_root: &Path) -> PathBuf {
    host_root.join("var/named")
}

/// `<host_root>/etc/npanel/accounts`.
pub fn accounts_dir(host_root: &Path) -> PathBuf {
    host_root.join("etc/npanel/accounts")
}

/// The first line of every zone the agent writes: who it belongs to.
pub(crate) const ZONE_OWNER_PREFIX: &str = "; npanel-account: ";
/// Biggest zone file the agent reads back.
const MAX_ZONE_BYTES: u64 = 1 << 20;

fn zone_file_name(domain: &Domain) -> String {
    format!("{domain}.db")
}

/// The account named on a zone's first line.
pub(crate) fn zone_owner(text: &str) -> Option<&str> {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix(ZONE_OWNER_PREFIX))
        .map(str::trim)
}

/// The SOA serial of a zone the agent wrote.
fn zone_serial(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.trim_end().ends_with("; serial"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
}

/// Today's first serial, `YYYYMMDD00` (UTC).
fn todays_first_serial() -> u64 {
    let day: u64 = chrono::Utc::now()
        .format("%Y%m%d")
        .to_string()
        .parse()
        .unwrap_or(19_700_101);
    day * 100
}

/// The zone text: SOA, NS, A for `@`, `www` and `mail`, MX to
/// `mail.<domain>.`; with no configured nameservers, `ns1`/`ns2.<domain>`
/// with A records (glue) to the same address.
pub fn render_zone(
    account: &AccountName,
    domain: &Domain,
    ipv4: Ipv4Addr,
    nameservers: &[String],
    serial: u64,
) -> String {
    let (ns, glue): (Vec<String>, bool) = if nameservers.is_empty() {
        (
            vec![format!("ns1.{domain}."), format!("ns2.{domain}.")],
            true,
        )
    } else {
        (
            nameservers
                .iter()
                .map(|n| format!("{}.", n.to_ascii_lowercase()))
                .collect(),
            false,
        )
    };
    let mut z = String::new();
    z.push_str(&format!("{ZONE_OWNER_PREFIX}{account}\n"));
    z.push_str(&format!(
        "; zone of {domain}, written by npanel-agent: edits here are overwritten\n"
    ));
    z.push_str(&format!("$ORIGIN {domain}.\n$TTL 14400\n"));
    z.push_str(&format!(
        "@\t86400\tIN\tSOA\t{} hostmaster.{domain}. (\n",
        ns[0]
    ));
    z.push_str(&format!("\t\t\t{serial}\t; serial\n"));
    z.push_str("\t\t\t3600\t; refresh\n");
    z.push_str("\t\t\t1800\t; retry\n");
    z.push_str("\t\t\t1209600\t; expire\n");
    z.push_str("\t\t\t86400 )\t; minimum\n");
    for n in &ns {
        z.push_str(&format!("@\t86400\tIN\tNS\t{n}\n"));
    }
    z.push_str(&format!("@\t\tIN\tA\t{ipv4}\n"));
    z.push_str(&format!("www\t\tIN\tA\t{ipv4}\n"));
    z.push_str(&format!("mail\t\tIN\tA\t{ipv4}\n"));
    if glue {
        z.push_str(&format!("ns1\t\tIN\tA\t{ipv4}\n"));
        z.push_str(&format!("ns2\t\tIN\tA\t{ipv4}\n"));
    }
    z.push_str(&format!("@\t\tIN\tMX\t10\tmail.{domain}.\n"));
    z
}

/// Writes `<host_root>/var/named/<domain>.db` for `account`. A zone written
/// for another account is refused ([`AgentError::Busy`]). When the file
/// already says the same (apart from nothing: the serial is kept), nothing
/// is written (`changed: false`); otherwise the serial becomes
/// `max(today's YYYYMMDD00, old + 1)`.
pub fn write_zone(
    host_root: &Path,
    nameservers: &[String],
    account: &AccountName,
    domain: &Domain,
    ipv4: Ipv4Addr,
) -> Result<ZoneWritten> {
    let dir = fsx::ensure_base(&zone_dir(host_root), 0o755)?;
    let name = zone_file_name(domain);
    let existing = match dir.read_file(&name, MAX_ZONE_BYTES) {
        Ok(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
        Ok(None) => None,
        // a symlink or a non-file in its place: replaced by the rename
        Err(AgentError::UnsafePath(_)) => None,
        Err(e) => return Err(e),
    };
    let old_serial = existing.as_deref().and_then(zone_serial);
    if let Some(text) = &existing {
        if let Some(owner) = zone_owner(text) {
            if owner != account.as_str() {
                return Err(AgentError::Busy(format!(
                    "the zone of {domain} belongs to account {owner:?}, not {account}"
                )));
            }
        }
        if let Some(serial) = old_serial {
            if *text == render_zone(account, domain, ipv4, nameservers, serial) {
                return Ok(ZoneWritten {
                    domain: domain.clone(),
                    path: dir.path.join(&name).display().to_string(),
                    serial,
                    changed: false,
                });
            }
        }
    }
    let serial = match old_serial {
        Some(old) => todays_first_serial().max(old + 1),
        None => todays_first_serial(),
    };
    let text = render_zone(account, domain, ipv4, nameservers, serial);
    dir.write_atomic(&name, text.as_bytes(), 0o644)?;
    tracing::info!(account = %account, domain = %domain, serial, "zone written");
    Ok(ZoneWritten {
        domain: domain.clone(),
        path: dir.path.join(&name).display().to_string(),
        serial,
        changed: true,
    })
}

/// Removes `<host_root>/var/named/<domain>.db`; with `account`, a zone
/// written for another account is refused. Returns the path and whether
/// it existed.
pub fn remove_zone(
    host_root: &Path,
    domain: &Domain,
    account: Option<&AccountName>,
) -> Result<(PathBuf, bool)> {
    let path = zone_dir(host_root).join(zone_file_name(domain));
    let dir = match fsx::open_base(&zone_dir(host_root)) {
        Ok(d) => d,
        Err(AgentError::NotFound { .. }) => return Ok((path, false)),
        Err(e) => return Err(e),
    };
    let name = zone_file_name(domain);
    if let Some(account) = account {
        if let Ok(Some(b)) = dir.read_file(&name, MAX_ZONE_BYTES) {
            let text = String::from_utf8_lossy(&b);
            if let Some(owner) = zone_owner(&text) {
                if owner != account.as_str() {
                    return Err(AgentError::Busy(format!(
                        "the zone of {domain} belongs to account {owner:?}, not {account}"
                    )));
                }
            }
        }
    }
    let existed = dir.remove_file(&name)?;
    if existed {
        tracing::info!(domain = %domain, "zone removed");
    }
    Ok((path, existed))
}

/// Opens (creating) `<host_root>/etc/npanel/accounts/<account>/`, the
/// account component without following a symlink.
pub(crate) fn account_dir(host_root: &Path, account: &AccountName) -> Result<DirHandle> {
    let base = fsx::ensure_base(&accounts_dir(host_root), 0o755)?;
    let (dir, _) = base.ensure_dir(account.as_str(), 0o755)?;
    Ok(dir)
}

/// PHP functions disabled per profile.
pub fn disabled_php_functions(profile: SecurityProfile) -> &'static str {
    match profile {
        SecurityProfile::Strict => "exec,passthru,shell_exec,system,proc_open,popen,pcntl_exec,pcntl_fork,proc_nice,proc_terminate,proc_get_status,posix_kill,posix_setuid,posix_setgid,posix_mkfifo,dl,show_source,symlink,link",
        SecurityProfile::Moderate => {
            "exec,passthru,shell_exec,system,proc_open,popen,pcntl_exec,dl,show_source"
        }
        SecurityProfile::Legacy => "dl",
    }
}

/// sshd `AllowTcpForwarding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpForwarding {
    No,
    Local,
    Yes,
}

/// PHP `open_basedir`: the home, the home and `/tmp/`, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenBasedir {
    Home,
    HomeAndTmp,
    Off,
}

/// Who may relay mail as the account; there is no open relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailRelay {
    Authenticated,
    Local,
}

/// The optional `settings` of `write_security`: the account's effective values (the panel's
/// template plus its per-account overrides, DESIGN §13). Each field given replaces the
/// profile's template value; absent fields keep it, so a caller that sends none (or an older
/// caller) gets exactly the profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// PHP `disable_functions` (names `[a-z_][a-z0-9_]*`, at most 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub php_disable_functions: Option<Vec<String>>,
    /// PHP `allow_url_fopen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub php_allow_url_fopen: Option<bool>,
    /// PHP `open_basedir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub php_open_basedir: Option<OpenBasedir>,
    /// sshd `PasswordAuthentication` (false: key only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_password_auth: Option<bool>,
    /// sshd `AllowTcpForwarding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_tcp_forwarding: Option<TcpForwarding>,
    /// Mode of `<home_root>/<account>`: one of [`HOME_MODES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_mode: Option<String>,
    /// Whether the account's database users get DROP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_drop_privilege: Option<bool>,
    /// Who may relay mail as the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_relay: Option<MailRelay>,
}

/// Home modes `write_security` sets: the owner keeps rwx, nobody else may write, no special
/// bits.
pub const HOME_MODES: &[&str] = &["0700", "0710", "0711", "0750", "0751", "0755"];

/// Every value of an account's fragments, after the template and the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSecurity {
    pub profile: SecurityProfile,
    pub php_disable_functions: String,
    pub php_allow_url_fopen: bool,
    pub php_open_basedir: OpenBasedir,
    pub ssh_password_auth: bool,
    pub ssh_tcp_forwarding: TcpForwarding,
    pub home_mode: u32,
    pub db_drop_privilege: bool,
    pub mail_relay: MailRelay,
}

impl ResolvedSecurity {
    /// The template of `profile` (what `write_security` writes without `settings`).
    pub fn template(profile: SecurityProfile) -> ResolvedSecurity {
        use SecurityProfile as P;
        ResolvedSecurity {
            profile,
            php_disable_functions: disabled_php_functions(profile).to_string(),
            php_allow_url_fopen: profile != P::Strict,
            php_open_basedir: match profile {
                P::Strict => OpenBasedir::Home,
                P::Moderate => OpenBasedir::HomeAndTmp,
                P::Legacy => OpenBasedir::Off,
            },
            ssh_password_auth: profile != P::Strict,
            ssh_tcp_forwarding: if profile == P::Legacy {
                TcpForwarding::Local
            } else {
                TcpForwarding::No
            },
            home_mode: if profile == P::Legacy { 0o711 } else { 0o750 },
            db_drop_privilege: profile == P::Legacy,
            mail_relay: if profile == P::Legacy {
                MailRelay::Local
            } else {
                MailRelay::Authenticated
            },
        }
    }

    /// The template of `profile` with `settings` applied; a value that cannot go into a file
    /// safely is refused ([`AgentError::InvalidRequest`]).
    pub fn resolve(
        profile: SecurityProfile,
        settings: Option<&SecuritySettings>,
    ) -> Result<ResolvedSecurity> {
        let mut r = Self::template(profile);
        let Some(s) = settings else { return Ok(r) };
        if let Some(list) = &s.php_disable_functions {
            if list.len() > 200 {
                return Err(AgentError::InvalidRequest(format!(
                    "settings.php_disable_functions has {} names; at most 200",
                    list.len()
                )));
            }
            for f in list {
                let ok = !f.is_empty()
                    && f.len() <= 64
                    && (f.as_bytes()[0].is_ascii_lowercase() || f.as_bytes()[0] == b'_')
                    && f.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !ok {
                    return Err(AgentError::InvalidRequest(format!(
                        "settings.php_disable_functions: {f:?} is not a PHP function name ([a-z_][a-z0-9_]*, at most 64 characters)"
                    )));
                }
            }
            r.php_disable_functions = list.join(",");
        }
        if let Some(m) = &s.home_mode {
            if !HOME_MODES.contains(&m.as_str()) {
                return Err(AgentError::InvalidRequest(format!(
                    "settings.home_mode {m:?} is not one of {}",
                    HOME_MODES.join(", ")
                )));
            }
            r.home_mode = u32::from_str_radix(m, 8).unwrap_or(0o750);
        }
        r.php_allow_url_fopen = s.php_allow_url_fopen.unwrap_or(r.php_allow_url_fopen);
        r.php_open_basedir = s.php_open_basedir.unwrap_or(r.php_open_basedir);
        r.ssh_password_auth = s.ssh_password_auth.unwrap_or(r.ssh_password_auth);
        r.ssh_tcp_forwarding = s.ssh_tcp_forwarding.unwrap_or(r.ssh_tcp_forwarding);
        r.db_drop_privilege = s.db_drop_privilege.unwrap_or(r.db_drop_privilege);
        r.mail_relay = s.mail_relay.unwrap_or(r.mail_relay);
        Ok(r)
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "On"
    } else {
        "Off"
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The `php.ini` fragment.
pub fn render_php_ini(account: &AccountName, home: &Path, sec: &ResolvedSecurity) -> String {
    let p = sec.profile.as_str();
    let mut s = format!(
        "; npanel security profile {p} of account {account}, written by npanel-agent: edits here are overwritten\n"
    );
    s.push_str(&format!(
        "disable_functions = \"{}\"\n",
        sec.php_disable_functions
    ));
    s.push_str(&format!(
        "allow_url_fopen = {}\n",
        on_off(sec.php_allow_url_fopen)
    ));
    s.push_str("allow_url_include = Off\n");
    s.push_str("expose_php = Off\n");
    let home = home.display();
    match sec.php_open_basedir {
        OpenBasedir::Home => s.push_str(&format!("open_basedir = \"{home}/\"\n")),
        OpenBasedir::HomeAndTmp => s.push_str(&format!("open_basedir = \"{home}/:/tmp/\"\n")),
        OpenBasedir::Off => {}
    }
    s
}

/// The sshd `Match User` fragment.
pub fn render_ssh_conf(account: &AccountName, sec: &ResolvedSecurity) -> String {
    let p = sec.profile.as_str();
    let password = yes_no(sec.ssh_password_auth);
    let forwarding = match sec.ssh_tcp_forwarding {
        TcpForwarding::No => "no",
        TcpForwarding::Local => "local",
        TcpForwarding::Yes => "yes",
    };
    format!(
        "# npanel security profile {p} of account {account}, written by npanel-agent: edits here are overwritten\n\
         Match User {account}\n\
         \x20   PubkeyAuthentication yes\n\
         \x20   PasswordAuthentication {password}\n\
         \x20   KbdInteractiveAuthentication no\n\
         \x20   AllowTcpForwarding {forwarding}\n\
         \x20   AllowAgentForwarding no\n\
         \x20   X11Forwarding no\n\
         \x20   PermitTunnel no\n"
    )
}

/// The `policy.conf` fragment: what the database grants, the mail server and the home follow.
pub fn render_policy_conf(account: &AccountName, sec: &ResolvedSecurity) -> String {
    let relay = match sec.mail_relay {
        MailRelay::Authenticated => "authenticated",
        MailRelay::Local => "local",
    };
    format!(
        "# npanel security profile {p} of account {account}, written by npanel-agent: edits here are overwritten\n\
         profile = {p}\n\
         home_mode = {mode:04o}\n\
         db_drop_privilege = {drop}\n\
         mail_relay = {relay}\n\
         mail_open_relay = no\n",
        p = sec.profile.as_str(),
        mode = sec.home_mode,
        drop = yes_no(sec.db_drop_privilege),
    )
}

/// Sets the mode of `<home_root>/<account>` (opened without following a symlink) when it
/// exists; answers whether it changed. An absent home is fine (created later by
/// `prepare_home`/`create_user`, then set again by the next `write_security`).
fn set_home_mode(home_root: &Path, account: &AccountName, mode: u32) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let base = match fsx::open_base(home_root) {
        Ok(b) => b,
        Err(AgentError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    let Some(home) = base.open_dir(account.as_str())? else {
        return Ok(false);
    };
    let meta = home
        .file
        .metadata()
        .map_err(|e| AgentError::io(&home.path, e))?;
    if meta.permissions().mode() & 0o7777 == mode {
        return Ok(false);
    }
    home.file
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| AgentError::io(&home.path, e))?;
    Ok(true)
}

/// Writes the security fragments of `account` (see the README for their
/// content): the profile's template with `settings` applied. `cron` (default
/// true) decides whether `cron.allow` exists. The home gets the mode of the
/// result when it exists and the quota sweep does not hold it read-only.
pub fn write_security(
    host_root: &Path,
    home_root: &Path,
    account: &AccountName,
    profile: SecurityProfile,
    cron: bool,
    settings: Option<&SecuritySettings>,
) -> Result<SecurityWritten> {
    let sec = ResolvedSecurity::resolve(profile, settings)?;
    let home = home_root.join(account.as_str());
    let dir = account_dir(host_root, account)?;
    let mut changed = false;
    changed |= dir.write_if_changed(
        "profile",
        format!("{}\n", profile.as_str()).as_bytes(),
        0o644,
    )?;
    changed |= dir.write_if_changed(
        "php.ini",
        render_php_ini(account, &home, &sec).as_bytes(),
        0o644,
    )?;
    changed |=
        dir.write_if_changed("ssh.conf", render_ssh_conf(account, &sec).as_bytes(), 0o644)?;
    changed |= dir.write_if_changed(
        "policy.conf",
        render_policy_conf(account, &sec).as_bytes(),
        0o644,
    )?;
    let mut files = vec!["profile", "php.ini", "ssh.conf", "policy.conf"];
    if cron {
        changed |= dir.write_if_changed("cron.allow", format!("{account}\n").as_bytes(), 0o644)?;
        files.push("cron.allow");
    } else {
        changed |= dir.remove_file("cron.allow")?;
    }
    // While the quota sweep holds the home read-only (`readonly.list`, see `enforce`), its
    // modes are the sweep's: a chmod here would give the write bit back. The policy's mode is
    // applied by the next `write_security` after the lift.
    if dir.is_dir_entry("readonly.list")?.is_none() {
        changed |= set_home_mode(home_root, account, sec.home_mode)?;
    } else {
        tracing::info!(account = %account, "home is read-only (disk limit): its mode is left to the quota sweep");
    }
    if changed {
        tracing::info!(account = %account, profile = profile.as_str(), cron, "security fragments written");
    }
    Ok(SecurityWritten {
        account: account.clone(),
        profile,
        dir: dir.path.display().to_string(),
        files: files
            .into_iter()
            .map(|f| dir.path.join(f).display().to_string())
            .collect(),
        changed,
    })
}

/// Creates or removes `<host_root>/etc/npanel/accounts/<account>/suspended`
/// (content: `suspended_at=<RFC 3339 UTC>`; an existing flag keeps its
/// time). Returns the path and whether anything changed.
pub fn set_suspended(
    host_root: &Path,
    account: &AccountName,
    suspended: bool,
) -> Result<(PathBuf, bool)> {
    set_flag(host_root, account, SUSPENDED_FLAG, suspended, "")
}

/// Creates or removes `<host_root>/etc/npanel/accounts/<account>/throttled`: the account is
/// over its monthly bandwidth limit, for the web server to serve it slowly (as `suspended`
/// tells it to answer with the suspended page).
pub fn set_throttled(
    host_root: &Path,
    account: &AccountName,
    throttled: bool,
) -> Result<(PathBuf, bool)> {
    set_flag(
        host_root,
        account,
        "throttled",
        throttled,
        "reason=over its monthly bandwidth limit\n",
    )
}

/// Creates or removes `<host_root>/etc/npanel/accounts/<account>/mail_held`: the account sent
/// more mail in the last hour than its policy allows, so the mail policy ACL defers its
/// outgoing mail until the next quota sweep finds it under the limit ([`crate::mailpolicy`]).
pub fn set_mail_held(
    host_root: &Path,
    account: &AccountName,
    held: bool,
) -> Result<(PathBuf, bool)> {
    set_flag(
        host_root,
        account,
        MAIL_HELD_FLAG,
        held,
        "reason=over its hourly sending limit\n",
    )
}

/// The flag file of [`set_mail_held`].
pub const MAIL_HELD_FLAG: &str = "mail_held";
/// The flag file of [`set_suspended`].
pub const SUSPENDED_FLAG: &str = "suspended";

/// A flag file `name` in the account's fragment directory (`<name>_at=<UTC>` and `extra`),
/// created or removed; whether that changed anything.
fn set_flag(
    host_root: &Path,
    account: &AccountName,
    name: &str,
    on: bool,
    extra: &str,
) -> Result<(PathBuf, bool)> {
    let dir = account_dir(host_root, account)?;
    let path = dir.path.join(name);
    let changed = if on {
        match dir.read_file(name, 4096) {
            Ok(Some(_)) => false,
            Ok(None) | Err(AgentError::UnsafePath(_)) => {
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                dir.write_atomic(name, format!("{name}_at={now}\n{extra}").as_bytes(), 0o644)?;
                true
            }
            Err(e) => return Err(e),
        }
    } else {
        dir.remove_file(name)?
    };
    if changed {
        tracing::info!(account = %account, flag = name, on, "flag set");
    }
    Ok((path, changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_text_has_the_records_and_parses_back() {
        let a = AccountName::parse("alice").unwrap();
        let d = Domain::parse("example.com").unwrap();
        let z = render_zone(&a, &d, "192.0.2.7".parse().unwrap(), &[], 2024010203);
        assert_eq!(zone_owner(&z), Some("alice"));
        assert_eq!(zone_serial(&z), Some(2024010203));
        for want in [
            "SOA\tns1.example.com. hostmaster.example.com.",
            "@\t86400\tIN\tNS\tns1.example.com.",
            "@\t\tIN\tA\t192.0.2.7",
            "www\t\tIN\tA\t192.0.2.7",
            "mail\t\tIN\tA\t192.0.2.7",
            "ns2\t\tIN\tA\t192.0.2.7",
            "@\t\tIN\tMX\t10\tmail.example.com.",
        ] {
            assert!(z.contains(want), "{want:?} missing in\n{z}");
        }
        let z = render_zone(
            &a,
            &d,
            "192.0.2.7".parse().unwrap(),
            &["NS1.host.net".into()],
            1,
        );
        assert!(z.contains("NS\tns1.host.net."));
        assert!(!z.contains("ns1\t\tIN\tA"));
        assert!(todays_first_serial() > 2_024_010_100);
    }
}
