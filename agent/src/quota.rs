//! Filesystem disk quota of an account (DESIGN §11, §13).
//!
//! Applied with `setquota -u <account> <KiB> <KiB> 0 0 <mount>` (soft = hard
//! limit, no inode limit; `disk_mb: None` writes 0 = unlimited) when all of
//! these hold; otherwise the answer is `skipped` with the reason, never an
//! error, because the quota sweep (§13) enforces disk where the kernel
//! cannot:
//!
//! * system users are on (a pseudo uid has no kernel quota);
//! * `setquota` is installed;
//! * the filesystem holding the home root is mounted with user quotas
//!   (`usrquota`, `usrjquota=…`, `quota` or `uquota` in `/proc/mounts`).
//!
//! A failing `setquota` on such a mount is an error (`tool_failed`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::account::AccountName;
use crate::cgroup::unescape_mount;
use crate::config::AgentConfig;
use crate::error::{AgentError, Result};
use crate::protocol::{QuotaReport, QuotaStatus};
use crate::users::{find_tool, run_tool_at};

/// Mount options that mean "user quotas are on".
const USER_QUOTA_OPTS: [&str; 4] = ["usrquota", "usrjquota", "quota", "uquota"];

/// The mount point holding `path` and its options (longest match in
/// `mounts`, the text of `/proc/mounts`).
pub fn mount_of(mounts: &str, path: &Path) -> Option<(PathBuf, Vec<String>)> {
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 {
                return None;
            }
            Some((
                PathBuf::from(unescape_mount(f[1])),
                f[3].split(',').map(str::to_string).collect::<Vec<_>>(),
            ))
        })
        .filter(|(target, _)| path.starts_with(target))
        .max_by_key(|(target, _)| target.as_os_str().len())
}

/// Whether mount options enable user quotas.
pub fn has_user_quota(opts: &[String]) -> bool {
    opts.iter().any(|o| {
        let key = o.split('=').next().unwrap_or("");
        USER_QUOTA_OPTS.contains(&key)
    })
}

fn skipped(account: &AccountName, disk_mb: Option<u64>, reason: String) -> QuotaReport {
    tracing::info!(account = %account, "quota skipped: {reason}");
    QuotaReport {
        account: account.clone(),
        disk_mb,
        status: QuotaStatus::Skipped,
        mount: None,
        reason: Some(reason),
    }
}

/// Sets the account's disk quota where the host can enforce it.
pub fn set_quota(
    cfg: &AgentConfig,
    account: &AccountName,
    disk_mb: Option<u64>,
) -> Result<QuotaReport> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    apply_quota(cfg, account, disk_mb, &mounts, find_tool("setquota"))
}

/// [`set_quota`] with the mount table (`/proc/mounts` text) and the `setquota` executable
/// given: what a host whose kernel has quotas would see, for a test on one that has none.
pub fn apply_quota(
    cfg: &AgentConfig,
    account: &AccountName,
    disk_mb: Option<u64>,
    mounts: &str,
    setquota: Option<PathBuf>,
) -> Result<QuotaReport> {
    if !cfg.host.system_users {
        return Ok(skipped(
            account,
            disk_mb,
            "system users are off: a pseudo uid has no kernel quota; the quota sweep enforces disk"
                .into(),
        ));
    }
    let Some(setquota) = setquota else {
        return Ok(skipped(
            account,
            disk_mb,
            "setquota is not installed (Debian/Ubuntu: apt-get install quota); the quota sweep enforces disk".into(),
        ));
    };
    let home_root = cfg.home_root();
    let probe = std::fs::canonicalize(&home_root).unwrap_or(home_root.clone());
    let Some((mount, opts)) = mount_of(mounts, &probe) else {
        return Ok(skipped(
            account,
            disk_mb,
            format!("no mount found for {}", probe.display()),
        ));
    };
    if !has_user_quota(&opts) {
        return Ok(skipped(
            account,
            disk_mb,
            format!(
                "{} is on {}, mounted without user quotas (no usrquota/usrjquota/quota/uquota); the quota sweep enforces disk",
                home_root.display(),
                mount.display()
            ),
        ));
    }
    match nix::unistd::User::from_name(account.as_str()) {
        Ok(Some(u)) if u.uid.as_raw() >= cfg.min_account_uid => {}
        Ok(Some(u)) => {
            return Err(AgentError::Busy(format!(
                "user {account} is a system account (uid {}): refused",
                u.uid
            )))
        }
        _ => {
            return Err(AgentError::NotFound {
                what: format!("user {account}"),
            })
        }
    }
    let kib = disk_mb
        .map(|mb| mb.saturating_mul(1024))
        .unwrap_or(0)
        .to_string();
    let args: Vec<OsString> = vec![
        "-u".into(),
        account.as_str().into(),
        kib.clone().into(),
        kib.into(),
        "0".into(),
        "0".into(),
        mount.clone().into_os_string(),
    ];
    let run = run_tool_at(&setquota, &args, None, None)?;
    if run.code != Some(0) {
        return Err(AgentError::ToolFailed(format!(
            "setquota failed (exit {:?}): {}",
            run.code, run.stderr
        )));
    }
    tracing::info!(account = %account, ?disk_mb, mount = %mount.display(), "quota applied");
    Ok(QuotaReport {
        account: account.clone(),
        disk_mb,
        status: QuotaStatus::Applied,
        mount: Some(mount.display().to_string()),
        reason: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mount_and_its_quota_options() {
        let mounts = "/dev/vda / ext4 rw,relatime 0 0\n\
                      /dev/vdb /home ext4 rw,relatime,usrjquota=aquota.user,jqfmt=vfsv1 0 0\n\
                      /dev/vdc /home2 xfs rw,uquota 0 0\n\
                      /dev/vdd /srv/my\\040data ext4 rw 0 0\n";
        let (m, o) = mount_of(mounts, Path::new("/home/alice")).unwrap();
        assert_eq!(m, Path::new("/home"));
        assert!(has_user_quota(&o));
        let (m, o) = mount_of(mounts, Path::new("/home2")).unwrap();
        assert_eq!(m, Path::new("/home2"));
        assert!(has_user_quota(&o));
        let (m, o) = mount_of(mounts, Path::new("/var/lib")).unwrap();
        assert_eq!(m, Path::new("/"));
        assert!(!has_user_quota(&o));
        let (m, _) = mount_of(mounts, Path::new("/srv/my data/x")).unwrap();
        assert_eq!(m, Path::new("/srv/my data"));
        // "/home2" does not hold "/home"
        let (m, _) = mount_of(mounts, Path::new("/home")).unwrap();
        assert_eq!(m, Path::new("/home"));
        assert!(!has_user_quota(&["grpquota".to_string()]));
    }
}
