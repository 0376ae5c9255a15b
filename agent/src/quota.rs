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

/// Disk use by user from the kernel's quota accounting (`repquota`), for the quota sweep.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuotaUsage {
    /// `applied`: `users` holds the report; `skipped`: see `reason` (the sweep walks homes).
    pub status: QuotaStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes (1 KiB blocks × 1024) and files used, by user name.
    #[serde(default)]
    pub users: std::collections::BTreeMap<String, (u64, u64)>,
}

fn usage_skipped(reason: String) -> QuotaUsage {
    QuotaUsage {
        status: QuotaStatus::Skipped,
        mount: None,
        reason: Some(reason),
        users: Default::default(),
    }
}

/// Every user's disk use on the homes' filesystem from the kernel's quota report, where the
/// host keeps one (the same conditions as [`set_quota`]); skipped with the reason otherwise.
pub fn quota_usage(cfg: &AgentConfig) -> Result<QuotaUsage> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    read_quota_usage(cfg, &mounts, find_tool("repquota"))
}

/// [`quota_usage`] with the mount table and the `repquota` executable given.
pub fn read_quota_usage(
    cfg: &AgentConfig,
    mounts: &str,
    repquota: Option<PathBuf>,
) -> Result<QuotaUsage> {
    if !cfg.host.system_users {
        return Ok(usage_skipped(
            "system users are off: pseudo uids have no kernel quota".into(),
        ));
    }
    let Some(repquota) = repquota else {
        return Ok(usage_skipped(
            "repquota is not installed (Debian/Ubuntu: apt-get install quota)".into(),
        ));
    };
    let home_root = cfg.home_root();
    let probe = std::fs::canonicalize(&home_root).unwrap_or(home_root.clone());
    let Some((mount, opts)) = mount_of(mounts, &probe) else {
        return Ok(usage_skipped(format!(
            "no mount found for {}",
            probe.display()
        )));
    };
    if !has_user_quota(&opts) {
        return Ok(usage_skipped(format!(
            "{} is mounted without user quotas",
            mount.display()
        )));
    }
    let args: Vec<OsString> = vec![
        "-u".into(),
        "-O".into(),
        "csv".into(),
        mount.clone().into_os_string(),
    ];
    let (run, out) = crate::users::run_tool_output(&repquota, &args)?;
    if run.code != Some(0) {
        return Err(AgentError::ToolFailed(format!(
            "repquota failed (exit {:?}): {}",
            run.code, run.stderr
        )));
    }
    Ok(QuotaUsage {
        status: QuotaStatus::Applied,
        mount: Some(mount.display().to_string()),
        reason: None,
        users: parse_repquota_csv(&out)?,
    })
}

/// `repquota -u -O csv` output: a header naming the columns, then a row per user. Block counts
/// are 1 KiB blocks.
pub fn parse_repquota_csv(text: &str) -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| AgentError::ToolFailed("repquota printed nothing".into()))?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                AgentError::ToolFailed(format!("repquota's CSV has no {name} column: {header:?}"))
            })
    };
    let (user, blocks, files) = (col("User")?, col("BlockUsed")?, col("FileUsed")?);
    let mut out = std::collections::BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').map(str::trim).collect();
        let (Some(u), Some(b), Some(n)) = (f.get(user), f.get(blocks), f.get(files)) else {
            continue;
        };
        if let (Ok(b), Ok(n)) = (b.parse::<u64>(), n.parse::<u64>()) {
            out.insert(u.trim_start_matches('#').to_string(), (b * 1024, n));
        }
    }
    Ok(out)
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

    #[test]
    fn repquota_csv_is_read_by_its_header() {
        let csv = "User,BlockStatus,FileStatus,BlockUsed,BlockSoftLimit,BlockHardLimit,BlockGrace,FileUsed,FileSoftLimit,FileHardLimit,FileGrace\n\
                   root,ok,ok,2048,0,0,,12,0,0,\n\
                   alice,+,ok,10240,10240,10240,6days,300,0,0,\n";
        let m = parse_repquota_csv(csv).unwrap();
        assert_eq!(m["alice"], (10240 * 1024, 300));
        assert_eq!(m["root"], (2048 * 1024, 12));
        assert!(parse_repquota_csv("Name,Other\nx,1\n").is_err());
    }
}
