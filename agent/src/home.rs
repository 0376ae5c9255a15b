//! Home directories: creation with owner and mode 0750, and disk usage.

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::account::AccountName;
use crate::error::{AgentError, Result};
use crate::protocol::DiskUsage;

/// Mode of a prepared home directory.
pub const HOME_MODE: u32 = 0o750;

/// Creates `<home_root>/<account>` (or takes the existing directory, never
/// following a symlink) and sets its owner to `uid:gid` and its mode to 0750.
/// Owners below `min_uid` (root, system users) are refused.
pub fn prepare_home(
    home_root: &Path,
    account: &AccountName,
    uid: u32,
    gid: u32,
    min_uid: u32,
) -> Result<PathBuf> {
    if uid < min_uid || gid < min_uid || uid == u32::MAX || gid == u32::MAX {
        return Err(AgentError::InvalidRequest(format!(
            "owner {uid}:{gid} refused: home directories are owned by account ids >= {min_uid}"
        )));
    }
    if !home_root.is_dir() {
        return Err(AgentError::NotFound {
            what: format!("home root {}", home_root.display()),
        });
    }
    let path = home_root.join(account);
    let created = match fs::create_dir(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(AgentError::io(&path, e)),
    };
    // O_NOFOLLOW|O_DIRECTORY: if someone swapped in a symlink, this fails
    // instead of chowning the symlink's target.
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_DIRECTORY)
        .open(&path)
        .map_err(|e| AgentError::io(&path, e))?;
    if !created {
        // Never hand over someone else's directory (an account named like an existing user):
        // an existing home is accepted only if it already belongs to uid:gid, or is an empty
        // root-owned one left by an interrupted earlier call.
        let m = dir.metadata().map_err(|e| AgentError::io(&path, e))?;
        let ours = m.uid() == uid && m.gid() == gid;
        let empty_root = m.uid() == 0
            && fs::read_dir(&path)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !ours && !empty_root {
            return Err(AgentError::Busy(format!(
                "{} already exists and belongs to {}:{}; refusing to hand it to {uid}:{gid}",
                path.display(),
                m.uid(),
                m.gid()
            )));
        }
    }
    std::os::unix::fs::fchown(&dir, Some(uid), Some(gid)).map_err(|e| AgentError::io(&path, e))?;
    dir.set_permissions(fs::Permissions::from_mode(HOME_MODE))
        .map_err(|e| AgentError::io(&path, e))?;
    tracing::info!(account = %account, path = %path.display(), uid, gid, "home prepared");
    Ok(path)
}

/// Longest one disk-usage walk may take.
const DISK_USAGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);
/// Most entries one disk-usage walk looks at.
const DISK_USAGE_MAX_ENTRIES: u64 = 5_000_000;

/// Walks `<home_root>/<account>` without following symlinks or crossing
/// filesystems and adds up sizes.
pub fn disk_usage(home_root: &Path, account: &AccountName) -> Result<DiskUsage> {
    let path = home_root.join(account);
    let meta = fs::symlink_metadata(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AgentError::NotFound {
            what: format!("home of {account} ({})", path.display()),
        },
        _ => AgentError::io(&path, e),
    })?;
    if !meta.is_dir() {
        return Err(AgentError::InvalidRequest(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    let mut du = DiskUsage {
        account: account.clone(),
        path: path.display().to_string(),
        apparent_bytes: 0,
        allocated_bytes: 0,
        files: 0,
        dirs: 0,
    };
    let dev = meta.dev();
    let mut stack = vec![path.clone()];
    // A bound on one walk, so a huge (or hostile) home cannot hold a worker thread forever.
    let started = std::time::Instant::now();
    let mut entries_seen: u64 = 0;
    while let Some(dir) = stack.pop() {
        if started.elapsed() > DISK_USAGE_DEADLINE || entries_seen > DISK_USAGE_MAX_ENTRIES {
            return Err(AgentError::Timeout(format!(
                "disk usage of {} stopped after {entries_seen} entries / {:?}",
                path.display(),
                started.elapsed()
            )));
        }
        du.dirs += 1;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "disk usage: cannot read: {e}");
                continue;
            }
        };
        for entry in entries.flatten() {
            entries_seen += 1;
            let Ok(m) = entry.metadata() else { continue };
            if m.is_dir() {
                if m.dev() == dev {
                    stack.push(entry.path());
                }
                continue;
            }
            du.files += 1;
            du.apparent_bytes = du.apparent_bytes.saturating_add(m.len());
            du.allocated_bytes = du
                .allocated_bytes
                .saturating_add(m.blocks().saturating_mul(512));
        }
    }
    // the top directory's own blocks are not counted, like `du --apparent`
    Ok(du)
}
