//! A restore's metadata applied once its home is installed (DESIGN §12): the archive's DNS
//! zones and the account's crontab, read from the staging's `meta/`
//! ([`crate::restore::staging_dir`]).
//!
//! - **Zones** (`meta/dnszones/<domain>.db`): only for the account's own domains (the caller
//!   names them; an archive cannot install a zone for someone else's domain). The old
//!   server's address (`IP=` in `meta/cp/<user>`) is replaced by this server's in the
//!   records; the zone must parse ([`crate::inspect::zone_problems`]) and must not belong to
//!   another account; it gets the owner line every zone the agent writes has and is written
//!   atomically to `var/named/<domain>.db`. A zone that fails any of this is listed with the
//!   reason and the host's zone stays as it was.
//! - **TLS** (`meta/apache_tls/<domain>`: key, certificate, chain in one PEM): for the
//!   account's domains, when the certificate matches its key, has not expired and names the
//!   domain ([`crate::tls`]), installed to `etc/ssl/npanel/<domain>.pem` (0600); else listed
//!   with the reason. Older archives' `meta/sslcerts/<name>.crt` and `meta/sslkeys/<name>.key`
//!   are matched by public key ([`crate::tls::pair`]; the names do not say which key is
//!   whose), each certificate installed the same way, with the same checks, for every
//!   account domain it names (a `sslcerts/<name>.cabundle` beside it is its chain), unless
//!   `apache_tls/` brought that domain's already; every file that could not be used is listed
//!   with the reason.
//! - **Crontab** (`meta/cron/<user>`): when the account may use cron, written to
//!   `var/spool/cron/crontabs/<account>` (Debian's place, mode 0600, the account's when system
//!   users are on), with the old home path made the account's and cPanel's PHP binaries
//!   (`/opt/cpanel/ea-phpNN/root/usr/bin/php`, `/usr/local/bin/ea-phpNN`) made `/usr/bin/php`.
//!
//! Both are read with `O_NOFOLLOW` from directory descriptors: a symlink the archive placed in
//! `meta/` is refused, never followed.
//!
//! The databases are the workers' (with sqlx, DESIGN §11): [`list_restore_meta`] and
//! [`read_restore_file`] hand them the staging's dumps in chunks, so the staging stays the
//! agent's (root's) while an unprivileged worker imports.

use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};
use crate::fsx;
use crate::{AccountName, AgentConfig, Domain};

const MAX_META: u64 = 1 << 20;

/// One zone of the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneApplied {
    pub domain: String,
    pub installed: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The crontab.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronApplied {
    pub installed: bool,
    /// Jobs (non-comment, non-variable lines).
    pub jobs: u64,
    /// Lines whose paths were rewritten.
    pub rewritten: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One TLS certificate of the archive (`apache_tls/<domain>`, or a `sslcerts/` file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsApplied {
    /// The domain it serves (for a file that serves none: the file, `sslcerts/<name>`).
    pub domain: String,
    pub installed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The archive's files it came from, when not `apache_tls/<domain>`
    /// (`sslcerts/<name> + sslkeys/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// What [`apply_restore_meta`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaApplied {
    pub zones: Vec<ZoneApplied>,
    pub cron: CronApplied,
    #[serde(default)]
    pub tls: Vec<TlsApplied>,
    /// Mail accounts the installed home has (`etc/<domain>/passwd` lines): they came back
    /// with the home.
    #[serde(default)]
    pub mailboxes: u64,
}

/// Where a restored TLS bundle (key, certificate, chain) of `domain` is installed.
pub fn tls_path(host_root: &Path, domain: &str) -> std::path::PathBuf {
    host_root
        .join("etc/ssl/npanel")
        .join(format!("{domain}.pem"))
}

/// The crontab's place for `account`.
pub fn crontab_path(host_root: &Path, account: &AccountName) -> std::path::PathBuf {
    host_root
        .join("var/spool/cron/crontabs")
        .join(account.as_str())
}

/// Apply the zones and the crontab of restore `restore_id`'s staging to `account`.
pub fn apply_restore_meta(
    cfg: &AgentConfig,
    account: &AccountName,
    restore_id: &str,
    domains: &[Domain],
    ipv4: Ipv4Addr,
    cron_allowed: bool,
) -> Result<MetaApplied> {
    crate::restore::check_id(restore_id)?;
    let staging = crate::restore::staging_dir(&cfg.home_root(), restore_id);
    let base = fsx::open_base(&staging)?;
    let Some(meta) = base.open_dir("meta")? else {
        return Err(AgentError::NotFound {
            what: format!("{}/meta", staging.display()),
        });
    };
    // The archive's user and its server's address, from `cp/<user>`.
    let (mut old_user, mut old_ip) = (None, None);
    if let Some(cp) = meta.open_dir("cp")? {
        let names: Vec<String> = std::fs::read_dir(&cp.path)
            .map_err(|e| AgentError::io(&cp.path, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        if let Some(user) = names.first() {
            if let Ok(Some(text)) = cp.read_file(user, MAX_META) {
                let text = String::from_utf8_lossy(&text);
                old_ip = text
                    .lines()
                    .find_map(|l| l.strip_prefix("IP="))
                    .and_then(|ip| ip.trim().parse::<Ipv4Addr>().ok());
            }
            old_user = Some(user.clone());
        }
    }
    let mut out = MetaApplied::default();
    if let Some(zones) = meta.open_dir("dnszones")? {
        let mut names: Vec<String> = std::fs::read_dir(&zones.path)
            .map_err(|e| AgentError::io(&zones.path, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".db"))
            .collect();
        names.sort();
        for name in names {
            let domain = name.trim_end_matches(".db").to_ascii_lowercase();
            let applied = match zone(cfg, account, &zones, &name, &domain, domains, old_ip, ipv4) {
                Ok(()) => ZoneApplied {
                    domain,
                    installed: true,
                    reason: None,
                },
                Err(reason) => ZoneApplied {
                    domain,
                    installed: false,
                    reason: Some(reason),
                },
            };
            out.zones.push(applied);
        }
    }
    out.cron = cron(cfg, account, &meta, old_user.as_deref(), cron_allowed)?;
    // The mail accounts the home brought, read from descriptors: no symlink followed, no
    // FIFO waited on, at most 1 MiB a file (the account owns these files).
    if let Ok(home) = fsx::open_base(&cfg.home_root().join(account.as_str())) {
        if let Ok(Some(etc)) = home.open_dir("etc") {
            if let Ok(domains) = std::fs::read_dir(&etc.path) {
                for d in domains.flatten() {
                    let Ok(name) = d.file_name().into_string() else {
                        continue;
                    };
                    let Ok(Some(dir)) = etc.open_dir(name.as_str()) else {
                        continue;
                    };
                    if let Ok(Some(text)) = dir.read_private_file("passwd", MAX_META) {
                        out.mailboxes += String::from_utf8_lossy(&text)
                            .lines()
                            .filter(|l| l.split(':').next().is_some_and(|n| !n.trim().is_empty()))
                            .count() as u64;
                    }
                }
            }
        }
    }
    if let Some(dir) = meta.open_dir("apache_tls")? {
        let mut names: Vec<String> = std::fs::read_dir(&dir.path)
            .map_err(|e| AgentError::io(&dir.path, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            let domain = name.to_ascii_lowercase();
            let r = tls(cfg, &dir, &name, &domain, domains);
            out.tls.push(TlsApplied {
                domain,
                installed: r.is_ok(),
                reason: r.err(),
                source: None,
            });
        }
    }
    let done: Vec<String> = out
        .tls
        .iter()
        .filter(|t| t.installed)
        .map(|t| t.domain.clone())
        .collect();
    out.tls.extend(legacy_tls(cfg, &meta, domains, &done)?);
    Ok(out)
}

/// Most files read from each of `sslcerts/` and `sslkeys/`.
const MAX_TLS_FILES: usize = 256;

/// The regular files of `meta/<dir>` whose names end in one of `ends`, with their text
/// (sorted by name, at most [`MAX_TLS_FILES`], each at most [`MAX_META`]).
fn pem_files(
    meta: &fsx::DirHandle,
    dir: &str,
    ends: &[&str],
    skipped: &mut Vec<TlsApplied>,
) -> Result<Vec<(String, String)>> {
    let Some(d) = meta.open_dir(dir)? else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = std::fs::read_dir(&d.path)
        .map_err(|e| AgentError::io(&d.path, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| ends.iter().any(|e| n.ends_with(e)))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let reason = if i >= MAX_TLS_FILES {
            Some(format!(
                "more than {MAX_TLS_FILES} files in {dir}/: not read"
            ))
        } else {
            match d.read_file(&name, MAX_META) {
                Ok(Some(b)) => {
                    out.push((name.clone(), String::from_utf8_lossy(&b).into_owned()));
                    None
                }
                Ok(None) => Some("gone from the staging".into()),
                Err(e) => Some(e.to_string()),
            }
        };
        if let Some(reason) = reason {
            skipped.push(TlsApplied {
                domain: format!("{dir}/{name}"),
                installed: false,
                reason: Some(reason),
                source: Some(format!("{dir}/{name}")),
            });
        }
    }
    Ok(out)
}

/// The older `sslcerts/` + `sslkeys/` of an archive (module docs): each certificate paired
/// with its key by public key, then checked and installed as `apache_tls/` bundles are, for
/// each of the account's domains it names that `done` (installed from `apache_tls/`) lacks.
fn legacy_tls(
    cfg: &AgentConfig,
    meta: &fsx::DirHandle,
    domains: &[Domain],
    done: &[String],
) -> Result<Vec<TlsApplied>> {
    let mut out = Vec::new();
    let certs = pem_files(meta, "sslcerts", &[".crt", ".pem", ".cert"], &mut out)?;
    let keys = pem_files(meta, "sslkeys", &[".key", ".pem"], &mut out)?;
    if certs.is_empty() && keys.is_empty() {
        return Ok(out);
    }
    let chains = pem_files(meta, "sslcerts", &[".cabundle"], &mut out)?;
    let text = |list: &[(String, String)], name: &str| -> String {
        list.iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    };
    let mine = |names: &[String]| -> Vec<String> {
        domains
            .iter()
            .map(|d| d.as_str().to_ascii_lowercase())
            .filter(|d| names.iter().any(|n| crate::tls::covers(n, d)))
            .collect()
    };
    let pairing = crate::tls::pair(&certs, &keys);
    let mut installed: Vec<String> = done.to_vec();
    for p in &pairing.pairs {
        let source = format!("sslcerts/{} + sslkeys/{}", p.cert, p.key);
        let cert = crate::tls::split(&text(&certs, &p.cert));
        let mut bundle = crate::tls::Bundle {
            key: crate::tls::split(&text(&keys, &p.key)).key,
            certs: cert.certs,
        };
        let stem = p.cert.rsplit_once('.').map_or(p.cert.as_str(), |(s, _)| s);
        bundle
            .certs
            .extend(crate::tls::split(&text(&chains, &format!("{stem}.cabundle"))).certs);
        let names = match bundle.certs.first().map(|c| crate::tls::dns_names(c)) {
            Some(Ok(n)) => n,
            Some(Err(why)) => {
                out.push(TlsApplied {
                    domain: format!("sslcerts/{}", p.cert),
                    installed: false,
                    reason: Some(why),
                    source: Some(source),
                });
                continue;
            }
            None => continue,
        };
        let targets: Vec<String> = mine(&names)
            .into_iter()
            .filter(|d| !installed.contains(d))
            .collect();
        if targets.is_empty() && !mine(&names).is_empty() {
            // Its domains' certificates came from `apache_tls/` (or an earlier pair).
            continue;
        }
        if targets.is_empty() {
            out.push(TlsApplied {
                domain: names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| format!("sslcerts/{}", p.cert)),
                installed: false,
                reason: Some(format!(
                    "names none of the account's domains ({}): left alone",
                    names.join(", ")
                )),
                source: Some(source),
            });
            continue;
        }
        for d in targets {
            let r = crate::tls::check(&bundle, &d).and_then(|()| install_tls(cfg, &d, &bundle));
            if r.is_ok() {
                installed.push(d.clone());
            }
            out.push(TlsApplied {
                domain: d,
                installed: r.is_ok(),
                reason: r.err(),
                source: Some(source.clone()),
            });
        }
    }
    for (file, why) in pairing.unused {
        // A certificate without its key is listed under the account domain it names, so the
        // health check sees the domain's certificate was not restored.
        let domain = match file.strip_prefix("sslcerts/") {
            Some(name) => crate::tls::split(&text(&certs, name))
                .certs
                .first()
                .and_then(|c| crate::tls::dns_names(c).ok())
                .and_then(|n| mine(&n).into_iter().find(|d| !installed.contains(d))),
            None => None,
        };
        out.push(TlsApplied {
            domain: domain.unwrap_or_else(|| file.clone()),
            installed: false,
            reason: Some(why),
            source: Some(file),
        });
    }
    Ok(out)
}

/// Writes `bundle` (key, certificate, chain) for `domain` to [`tls_path`], mode 0600.
fn install_tls(
    cfg: &AgentConfig,
    domain: &str,
    bundle: &crate::tls::Bundle,
) -> std::result::Result<(), String> {
    let path = tls_path(&cfg.host.root, domain);
    let parent = path.parent().unwrap_or(Path::new("/"));
    let out = fsx::ensure_base(parent, 0o700).map_err(|e| e.to_string())?;
    let mut body = bundle.key.clone().unwrap_or_default();
    for c in &bundle.certs {
        body.push_str(c);
    }
    out.write_atomic(&format!("{domain}.pem"), body.as_bytes(), 0o600)
        .map_err(|e| e.to_string())?;
    tracing::info!(domain, "TLS certificate restored");
    Ok(())
}

/// `apache_tls/<domain>`: checked ([`crate::tls::check`]) and installed (mode 0600) for one
/// of the account's domains.
fn tls(
    cfg: &AgentConfig,
    dir: &fsx::DirHandle,
    name: &str,
    domain: &str,
    domains: &[Domain],
) -> std::result::Result<(), String> {
    let d = Domain::parse(domain).map_err(|e| format!("not a domain name: {e}"))?;
    if !domains.contains(&d) {
        return Err("not one of the account's domains: left alone".into());
    }
    let text = match dir.read_file(name, MAX_META) {
        Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(None) => return Err("gone from the staging".into()),
        Err(e) => return Err(e.to_string()),
    };
    let bundle = crate::tls::split(&text);
    crate::tls::check(&bundle, domain)?;
    install_tls(cfg, domain, &bundle)
}

#[allow(clippy::too_many_arguments)]
fn zone(
    cfg: &AgentConfig,
    account: &AccountName,
    zones: &fsx::DirHandle,
    name: &str,
    domain: &str,
    domains: &[Domain],
    old_ip: Option<Ipv4Addr>,
    ipv4: Ipv4Addr,
) -> std::result::Result<(), String> {
    let d = Domain::parse(domain).map_err(|e| format!("not a domain name: {e}"))?;
    if !domains.contains(&d) {
        return Err("not one of the account's domains: left alone".into());
    }
    let text = match zones.read_file(name, MAX_META) {
        Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(None) => return Err("gone from the staging".into()),
        Err(e) => return Err(e.to_string()),
    };
    // The old server's address becomes this one's, token by token.
    let text: String = match old_ip {
        Some(old) if old != ipv4 => {
            let (old, new) = (old.to_string(), ipv4.to_string());
            text.lines()
                .map(|l| {
                    l.split_inclusive(char::is_whitespace)
                        .map(|t| {
                            let w = t.trim_end();
                            // An A record's address, or an SPF `ip4:` mechanism.
                            if w == old || w.trim_matches('"').ends_with(&format!("ip4:{old}")) {
                                t.replacen(&old, &new, 1)
                            } else {
                                t.to_string()
                            }
                        })
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        }
        _ => text,
    };
    // A restored zone may not make the name server read or generate anything else.
    if text.lines().any(|l| {
        let t = l.trim_start().to_ascii_uppercase();
        t.starts_with("$INCLUDE") || t.starts_with("$GENERATE")
    }) {
        return Err(
            "it uses $INCLUDE or $GENERATE, which a restored zone may not: the server's zone is kept"
                .into(),
        );
    }
    let problems = crate::inspect::zone_problems(&text);
    if !problems.is_empty() {
        return Err(format!(
            "does not parse ({}): the server's zone is kept",
            problems.join("; ")
        ));
    }
    let dir = fsx::ensure_base(&crate::hostfiles::zone_dir(&cfg.host.root), 0o755)
        .map_err(|e| e.to_string())?;
    let file = format!("{domain}.db");
    if let Ok(Some(existing)) = dir.read_file(&file, MAX_META) {
        let existing = String::from_utf8_lossy(&existing);
        if let Some(owner) = crate::hostfiles::zone_owner(&existing) {
            if owner != account.as_str() {
                return Err(format!("the zone belongs to account {owner:?}"));
            }
        }
    }
    let body = format!(
        "{}{account}\n; zone of {domain}, restored from the account's archive by npanel-agent\n{text}",
        crate::hostfiles::ZONE_OWNER_PREFIX
    );
    dir.write_atomic(&file, body.as_bytes(), 0o644)
        .map_err(|e| e.to_string())?;
    tracing::info!(account = %account, domain, "zone restored");
    Ok(())
}

fn cron(
    cfg: &AgentConfig,
    account: &AccountName,
    meta: &fsx::DirHandle,
    old_user: Option<&str>,
    allowed: bool,
) -> Result<CronApplied> {
    let mut c = CronApplied::default();
    let Some(dir) = meta.open_dir("cron")? else {
        c.reason = Some("the archive has no crontab".into());
        return Ok(c);
    };
    let name = old_user.unwrap_or(account.as_str());
    let text = match dir.read_file(name, MAX_META) {
        Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(None) => {
            c.reason = Some(format!("the archive has no crontab for {name}"));
            return Ok(c);
        }
        Err(e) => {
            c.reason = Some(e.to_string());
            return Ok(c);
        }
    };
    let home = cfg.home_root().join(account.as_str()).display().to_string();
    let mut lines = Vec::new();
    for l in text.lines() {
        let mut line = l.to_string();
        if let Some(old) = old_user {
            let from = format!("/home/{old}/");
            if line.contains(&from) {
                line = line.replace(&from, &format!("{home}/"));
            }
        }
        line = php_path(&line);
        if line != l {
            c.rewritten += 1;
        }
        let t = line.trim();
        if !t.is_empty() && !t.starts_with('#') && !crate::inspect::is_cron_env(t) {
            c.jobs += 1;
        }
        lines.push(line);
    }
    if !allowed {
        c.reason =
            Some("cron is not allowed for the account (its security policy or package)".into());
        return Ok(c);
    }
    let path = crontab_path(&cfg.host.root, account);
    let parent = path.parent().unwrap_or(Path::new("/"));
    let made = !parent.is_dir();
    let d = fsx::ensure_base(parent, 0o730)?;
    if made {
        spool_mode(parent);
    }
    let body = format!(
        "# crontab of {account}, restored from its archive by npanel-agent\n{}\n",
        lines.join("\n")
    );
    let owner = if cfg.host.system_users {
        match nix::unistd::User::from_name(account.as_str())
            .ok()
            .flatten()
        {
            // Never a system account's crontab (root's, daemon's …): only a user the panel
            // made (uid at or above min_account_uid).
            Some(u) if u.uid.as_raw() >= cfg.min_account_uid => {
                Some((u.uid.as_raw(), u.gid.as_raw()))
            }
            Some(u) => {
                c.reason = Some(format!(
                    "{account} is a system user (uid {}): its crontab is never written",
                    u.uid
                ));
                return Ok(c);
            }
            None => {
                c.reason = Some(format!("{account} has no system user"));
                return Ok(c);
            }
        }
    } else {
        None
    };
    d.write_atomic_owned(account.as_str(), body.as_bytes(), 0o600, owner)?;
    c.installed = true;
    c.path = Some(path.display().to_string());
    Ok(c)
}

/// A crontab spool directory the restore had to create gets what Debian's `cron` package gives
/// it: group `crontab` (the `crontab` command is setgid to it) and mode 1730, so users can
/// still edit their own crontab afterwards. Best effort: without the group, 1730 and root's.
fn spool_mode(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(Some(g)) = nix::unistd::Group::from_name("crontab") {
        if let Err(e) = nix::unistd::chown(dir, None, Some(g.gid)) {
            tracing::warn!(dir = %dir.display(), "crontab spool group: {e}");
        }
    }
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1730)) {
        tracing::warn!(dir = %dir.display(), "crontab spool mode: {e}");
    }
}

/// cPanel's PHP binaries as this server's.
fn php_path(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for (i, tok) in line.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let is_ea = (tok.starts_with("/opt/cpanel/ea-php") && tok.ends_with("/usr/bin/php"))
            || (tok.starts_with("/usr/local/bin/ea-php")
                && tok["/usr/local/bin/ea-php".len()..]
                    .chars()
                    .all(|c| c.is_ascii_digit()));
        out.push_str(if is_ea { "/usr/bin/php" } else { tok });
    }
    out
}

/// A file of a staging's `meta/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    pub name: String,
    pub size: u64,
}

/// Largest chunk [`read_restore_file`] returns.
pub const MAX_CHUNK: u32 = 1 << 20;

/// The staging's `meta/` walked to the directory of `rel` (plain components only, no symlink
/// followed); `None` when a directory on the way is missing.
fn meta_dir(cfg: &AgentConfig, restore_id: &str, rel: &[&str]) -> Result<Option<fsx::DirHandle>> {
    crate::restore::check_id(restore_id)?;
    let staging = crate::restore::staging_dir(&cfg.home_root(), restore_id);
    let base = fsx::open_base(&staging)?;
    let Some(mut dir) = base.open_dir("meta")? else {
        return Ok(None);
    };
    for part in rel {
        if part.is_empty() || *part == "." || *part == ".." || part.contains('\0') {
            return Err(AgentError::InvalidRequest(format!(
                "{:?} is not a plain path inside the staging",
                rel.join("/")
            )));
        }
        match dir.open_dir(*part)? {
            Some(d) => dir = d,
            None => return Ok(None),
        }
    }
    Ok(Some(dir))
}

/// The regular files (not symlinks) in `meta/<dir>` of restore `restore_id`, by name.
pub fn list_restore_meta(cfg: &AgentConfig, restore_id: &str, dir: &str) -> Result<Vec<MetaFile>> {
    let parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    let Some(d) = meta_dir(cfg, restore_id, &parts)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(&d.path).map_err(|e| AgentError::io(&d.path, e))? {
        let e = e.map_err(|e| AgentError::io(&d.path, e))?;
        let Ok(m) = e.metadata() else { continue };
        if m.file_type().is_file() {
            if let Ok(name) = e.file_name().into_string() {
                out.push(MetaFile {
                    name,
                    size: m.len(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Up to `len` bytes (at most [`MAX_CHUNK`]) of `meta/<path>` from `offset`, and the file's
/// size. A symlink anywhere on the way is refused.
pub fn read_restore_file(
    cfg: &AgentConfig,
    restore_id: &str,
    path: &str,
    offset: u64,
    len: u32,
) -> Result<(Vec<u8>, u64)> {
    use nix::fcntl::{openat, OFlag};
    use std::io::{Read, Seek, SeekFrom};
    let parts: Vec<&str> = path.split('/').collect();
    let (name, dirs) = parts.split_last().unwrap_or((&"", &[]));
    let Some(d) = meta_dir(cfg, restore_id, dirs)? else {
        return Err(AgentError::NotFound {
            what: format!("meta/{path}"),
        });
    };
    if name.is_empty() || *name == "." || *name == ".." {
        return Err(AgentError::InvalidRequest(format!(
            "{path:?} names no file"
        )));
    }
    let fd = openat(
        &d.file,
        *name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ENOENT => AgentError::NotFound {
            what: format!("meta/{path}"),
        },
        other => fsx::nofollow_err(&d.path.join(name), other),
    })?;
    let mut f = std::fs::File::from(fd);
    let m = f.metadata().map_err(|e| AgentError::io(&d.path, e))?;
    if !m.is_file() {
        return Err(AgentError::InvalidRequest(format!(
            "meta/{path} is not a file"
        )));
    }
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| AgentError::io(&d.path, e))?;
    let mut buf = Vec::with_capacity(len.min(MAX_CHUNK) as usize);
    f.take(u64::from(len.min(MAX_CHUNK)))
        .read_to_end(&mut buf)
        .map_err(|e| AgentError::io(&d.path, e))?;
    Ok((buf, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpanel_php_paths_become_this_servers() {
        assert_eq!(
            php_path("*/5 * * * * /usr/local/bin/ea-php81 /home/a/cron.php"),
            "*/5 * * * * /usr/bin/php /home/a/cron.php"
        );
        assert_eq!(
            php_path("0 1 * * * /opt/cpanel/ea-php74/root/usr/bin/php x.php"),
            "0 1 * * * /usr/bin/php x.php"
        );
        assert_eq!(
            php_path("0 1 * * * /usr/local/bin/ea-phpx"),
            "0 1 * * * /usr/local/bin/ea-phpx"
        );
    }
}
