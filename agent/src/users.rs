//! The account's login user.
//!
//! With `host.system_users` on (the default) these are real users, changed
//! only through the shadow tools, each run with explicit arguments (no
//! shell), a clean environment and `LC_ALL=C`:
//!
//! | op | command |
//! | --- | --- |
//! | create | `useradd --home-dir <home_root>/<account> --no-create-home --shell /usr/sbin/nologin --user-group --comment "nPanel account" -K UID_MIN=<min_account_uid> -K GID_MIN=<min_account_uid> -- <account>` |
//! | lock | `usermod --lock --expiredate 1 -- <account>` (password *and* key logins refused) |
//! | unlock | `usermod --unlock --expiredate "" -- <account>` |
//! | delete | `userdel -- <account>` (the home is `remove_home`'s job) |
//! | password | `chpasswd`, reading `<account>:<password>` on stdin |
//!
//! The comment `nPanel account` marks the users nPanel made: an existing user
//! without it, or with a uid below `min_account_uid` (`root`, `daemon`, a
//! human's login), is never locked, changed or deleted ([`AgentError::Busy`]).
//!
//! With system users off (the embedded default, which is not root) the same
//! operations keep a small registry, `<host_root>/etc/npanel/pseudo-users.json`:
//! per account a pseudo uid = gid allocated from a counter that starts at
//! `min_account_uid` and never goes back (a deleted account's id is not
//! reused, so files it left behind never change hands), the `locked` flag
//! and when the password was last set (never the password). The file is
//! rewritten atomically under an exclusive `flock` of
//! `pseudo-users.lock`, so concurrent calls never hand out one id twice.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::account::AccountName;
use crate::config::AgentConfig;
use crate::error::{AgentError, Result};
use crate::fsx;
use crate::names::Password;

/// The GECOS comment of every user nPanel creates.
pub const ACCOUNT_MARKER: &str = "nPanel account";
/// The login shell of account users.
pub const NOLOGIN: &str = "/usr/sbin/nologin";

/// Finds a system tool in the standard sbin/bin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn tool(name: &str) -> Result<PathBuf> {
    find_tool(name).ok_or_else(|| {
        AgentError::ToolFailed(format!(
            "{name} is not installed (looked in /usr/sbin, /sbin, /usr/bin, /bin)"
        ))
    })
}

/// Exit code and stderr of a finished tool.
pub(crate) struct ToolRun {
    pub code: Option<i32>,
    pub stderr: String,
}

/// Runs `name` with `args` (no shell), stdin from `input`, a clean
/// environment. `secret`, when given, is scrubbed from the stderr kept.
pub(crate) fn run_tool(
    name: &str,
    args: &[OsString],
    input: Option<&[u8]>,
    secret: Option<&str>,
) -> Result<ToolRun> {
    run_tool_at(&tool(name)?, args, input, secret)
}

/// Runs the executable at `path` with `args` (no shell, clean environment) and returns its
/// exit status, stderr and stdout.
pub(crate) fn run_tool_output(path: &Path, args: &[OsString]) -> Result<(ToolRun, String)> {
    let out = Command::new(path)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| AgentError::ToolFailed(format!("cannot run {}: {e}", path.display())))?;
    Ok((
        ToolRun {
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        },
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// [`run_tool`] of the executable at `path`.
pub(crate) fn run_tool_at(
    path: &Path,
    args: &[OsString],
    input: Option<&[u8]>,
    secret: Option<&str>,
) -> Result<ToolRun> {
    let mut child = Command::new(path)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| AgentError::ToolFailed(format!("cannot start {}: {e}", path.display())))?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        // a tool that exits early closes its stdin: the exit status says why
        let _ = stdin.write_all(data);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| AgentError::ToolFailed(format!("waiting for {}: {e}", path.display())))?;
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if let Some(s) = secret.filter(|s| !s.is_empty()) {
        stderr = stderr.replace(s, "***");
    }
    Ok(ToolRun {
        code: out.status.code(),
        stderr,
    })
}

fn failed(name: &str, run: &ToolRun) -> AgentError {
    AgentError::ToolFailed(format!(
        "{name} failed (exit {}): {}",
        run.code.map_or("by signal".to_string(), |c| c.to_string()),
        if run.stderr.is_empty() {
            "no message"
        } else {
            &run.stderr
        }
    ))
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// The passwd entry of `account`, if any.
fn lookup(account: &AccountName) -> Result<Option<nix::unistd::User>> {
    nix::unistd::User::from_name(account.as_str()).map_err(|e| {
        AgentError::io(
            format!("passwd entry of {account}"),
            std::io::Error::from(e),
        )
    })
}

/// Refuses a user nPanel did not make.
fn check_ours(account: &AccountName, user: &nix::unistd::User, min_uid: u32) -> Result<()> {
    let uid = user.uid.as_raw();
    if uid < min_uid {
        return Err(AgentError::Busy(format!(
            "user {account} is a system account (uid {uid} < min_account_uid {min_uid}): not an nPanel account, refused"
        )));
    }
    let gecos = user.gecos.to_string_lossy();
    if gecos != ACCOUNT_MARKER {
        return Err(AgentError::Busy(format!(
            "user {account} exists but was not created by nPanel (comment {gecos:?}, not {ACCOUNT_MARKER:?}): refused"
        )));
    }
    Ok(())
}

fn existing_ours(cfg: &AgentConfig, account: &AccountName) -> Result<nix::unistd::User> {
    let user = lookup(account)?.ok_or_else(|| AgentError::NotFound {
        what: format!("user {account}"),
    })?;
    check_ours(account, &user, cfg.min_account_uid)?;
    Ok(user)
}

/// The shadow fields of `account` (root only; `None` when unreadable).
pub fn shadow_fields(account: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string("/etc/shadow").ok()?;
    text.lines()
        .find(|l| l.split(':').next() == Some(account))
        .map(|l| l.split(':').map(str::to_string).collect())
}

/// Creates the user; returns `(uid, gid, created)`.
pub fn create_user(cfg: &AgentConfig, account: &AccountName) -> Result<(u32, u32, bool)> {
    if !cfg.host.system_users {
        return pseudo_create(cfg, account);
    }
    if let Some(u) = lookup(account)? {
        check_ours(account, &u, cfg.min_account_uid)?;
        return Ok((u.uid.as_raw(), u.gid.as_raw(), false));
    }
    let home = cfg.home_root().join(account);
    let min = cfg.min_account_uid.to_string();
    let mut args = os(&["--home-dir"]);
    args.push(home.into_os_string());
    args.extend(os(&[
        "--no-create-home",
        "--shell",
        NOLOGIN,
        "--user-group",
        "--comment",
        ACCOUNT_MARKER,
        "-K",
        &format!("UID_MIN={min}"),
        "-K",
        &format!("GID_MIN={min}"),
        "--",
        account.as_str(),
    ]));
    let run = run_tool("useradd", &args, None, None)?;
    let created = match run.code {
        Some(0) => true,
        // 9: the name is taken (a concurrent create): answer its ids
        Some(9) => false,
        _ => return Err(failed("useradd", &run)),
    };
    let u = lookup(account)?.ok_or_else(|| {
        AgentError::Internal(format!(
            "useradd succeeded but {account} has no passwd entry"
        ))
    })?;
    check_ours(account, &u, cfg.min_account_uid)?;
    if created {
        tracing::info!(account = %account, uid = u.uid.as_raw(), "system user created");
    }
    Ok((u.uid.as_raw(), u.gid.as_raw(), created))
}

/// Locks (`true`) or unlocks the login.
pub fn set_locked(cfg: &AgentConfig, account: &AccountName, locked: bool) -> Result<()> {
    if !cfg.host.system_users {
        return pseudo_update(cfg, account, |u| u.locked = locked);
    }
    existing_ours(cfg, account)?;
    let args = if locked {
        os(&["--lock", "--expiredate", "1", "--", account.as_str()])
    } else {
        os(&["--unlock", "--expiredate", "", "--", account.as_str()])
    };
    let run = run_tool("usermod", &args, None, None)?;
    match run.code {
        Some(0) => {
            tracing::info!(account = %account, locked, "login lock set");
            Ok(())
        }
        Some(6) => Err(AgentError::NotFound {
            what: format!("user {account}"),
        }),
        _ => Err(failed("usermod", &run)),
    }
}

/// Deletes the user; `false` if there was none.
pub fn delete_user(cfg: &AgentConfig, account: &AccountName) -> Result<bool> {
    if !cfg.host.system_users {
        return pseudo_delete(cfg, account);
    }
    let Some(u) = lookup(account)? else {
        return Ok(false);
    };
    check_ours(account, &u, cfg.min_account_uid)?;
    let run = run_tool("userdel", &os(&["--", account.as_str()]), None, None)?;
    match run.code {
        Some(0) => {
            tracing::info!(account = %account, "system user deleted");
            Ok(true)
        }
        Some(6) => Ok(false),
        Some(8) => Err(AgentError::Busy(format!(
            "user {account} still has processes or is logged in; kill them first: {}",
            run.stderr
        ))),
        _ => Err(failed("userdel", &run)),
    }
}

/// Sets the login password. A locked user stays locked.
pub fn set_password(cfg: &AgentConfig, account: &AccountName, password: &Password) -> Result<()> {
    if !cfg.host.system_users {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        return pseudo_update(cfg, account, |u| u.password_set_at = Some(now.clone()));
    }
    existing_ours(cfg, account)?;
    // lock_user sets the expiry date to day 1; chpasswd writes a hash without
    // the '!', so the lock is put back below
    let locked = shadow_fields(account.as_str())
        .and_then(|f| f.get(7).cloned())
        .is_some_and(|e| e == "1");
    let line = format!("{account}:{}\n", password.expose());
    let run = run_tool(
        "chpasswd",
        &[],
        Some(line.as_bytes()),
        Some(password.expose()),
    )?;
    if run.code != Some(0) {
        return Err(failed("chpasswd", &run));
    }
    if locked {
        set_locked(cfg, account, true)?;
    }
    tracing::info!(account = %account, "password set");
    Ok(())
}

/// One account of the pseudo-user registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PseudoUser {
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub locked: bool,
    #[serde(default)]
    pub password_set_at: Option<String>,
}

/// `<host_root>/etc/npanel/pseudo-users.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PseudoRegistry {
    /// The next id to hand out (never decreases).
    pub next_id: u32,
    pub users: BTreeMap<String, PseudoUser>,
}

const REGISTRY: &str = "pseudo-users.json";
const REGISTRY_LOCK: &str = "pseudo-users.lock";

/// Reads the pseudo-user registry under `host_root` (empty if none).
pub fn read_registry(host_root: &Path) -> Result<PseudoRegistry> {
    let dir = match fsx::open_base(&host_root.join("etc/npanel")) {
        Ok(d) => d,
        Err(AgentError::NotFound { .. }) => return Ok(PseudoRegistry::default()),
        Err(e) => return Err(e),
    };
    match dir.read_file(REGISTRY, 64 << 20)? {
        None => Ok(PseudoRegistry::default()),
        Some(b) => serde_json::from_slice(&b).map_err(|e| {
            AgentError::Internal(format!(
                "{}: not a pseudo-user registry: {e}",
                dir.path.join(REGISTRY).display()
            ))
        }),
    }
}

/// Runs `f` on the registry under an exclusive lock; writes it back when
/// `f` says it changed it.
fn with_registry<T>(
    cfg: &AgentConfig,
    f: impl FnOnce(&mut PseudoRegistry) -> Result<(T, bool)>,
) -> Result<T> {
    let dir = fsx::ensure_base(&cfg.host.root.join("etc/npanel"), 0o755)?;
    let (lock_file, _) = dir.ensure_file(REGISTRY_LOCK, 0o600)?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| AgentError::io(dir.path.join(REGISTRY_LOCK), e.into()))?;
    let mut reg = read_registry(&cfg.host.root)?;
    let (out, changed) = f(&mut reg)?;
    if changed {
        let mut text = serde_json::to_vec_pretty(&reg)
            .map_err(|e| AgentError::Internal(format!("encoding the registry: {e}")))?;
        text.push(b'\n');
        dir.write_atomic(REGISTRY, &text, 0o600)?;
    }
    Ok(out)
}

fn pseudo_create(cfg: &AgentConfig, account: &AccountName) -> Result<(u32, u32, bool)> {
    with_registry(cfg, |reg| {
        if let Some(u) = reg.users.get(account.as_str()) {
            return Ok(((u.uid, u.gid, false), false));
        }
        let id = reg.next_id.max(cfg.min_account_uid);
        if id >= u32::MAX - 1 {
            return Err(AgentError::Internal("pseudo uid space exhausted".into()));
        }
        reg.next_id = id + 1;
        reg.users.insert(
            account.to_string(),
            PseudoUser {
                uid: id,
                gid: id,
                locked: false,
                password_set_at: None,
            },
        );
        tracing::info!(account = %account, uid = id, "pseudo user created");
        Ok(((id, id, true), true))
    })
}

fn pseudo_update(
    cfg: &AgentConfig,
    account: &AccountName,
    f: impl FnOnce(&mut PseudoUser),
) -> Result<()> {
    with_registry(cfg, |reg| {
        let u = reg
            .users
            .get_mut(account.as_str())
            .ok_or_else(|| AgentError::NotFound {
                what: format!("user {account} (pseudo-user registry)"),
            })?;
        let before = u.clone();
        f(u);
        let changed = *u != before;
        Ok(((), changed))
    })
}

fn pseudo_delete(cfg: &AgentConfig, account: &AccountName) -> Result<bool> {
    with_registry(cfg, |reg| {
        let existed = reg.users.remove(account.as_str()).is_some();
        Ok((existed, existed))
    })
}
