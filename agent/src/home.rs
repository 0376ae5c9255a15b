//! Home directories: creation with owner and mode 0750, the cPanel-compatible
//! layout, removal, and disk usage.

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::account::AccountName;
use crate::error::{AgentError, Result};
use crate::fsx;
use crate::names::Domain;
use crate::protocol::{DiskUsage, HomeBuilt};

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

/// Mode of the directories of the layout that others (the web server's
/// group) may later be given: `public_html`, `mail`, `etc` and the per-domain
/// directories.
pub const LAYOUT_DIR_MODE: u32 = 0o750;
/// Mode of the account's private directories `tmp` and `logs`.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of `etc/<domain>/{passwd,shadow,quota}`.
pub const MAIL_FILE_MODE: u32 = 0o640;

/// One entry of the home layout, relative to the home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Dir(u32),
    File(u32),
}

/// The cPanel-compatible layout (DESIGN §11): the domain-independent part,
/// then the part for `domain`.
fn layout(domain: Option<&Domain>) -> Vec<(Vec<String>, Entry)> {
    let mut v: Vec<(Vec<String>, Entry)> = [
        ("public_html", LAYOUT_DIR_MODE),
        ("mail", LAYOUT_DIR_MODE),
        ("etc", LAYOUT_DIR_MODE),
        ("tmp", PRIVATE_DIR_MODE),
        ("logs", PRIVATE_DIR_MODE),
    ]
    .into_iter()
    .map(|(n, m)| (vec![n.to_string()], Entry::Dir(m)))
    .collect();
    if let Some(d) = domain {
        let d = d.as_str().to_string();
        v.push((vec!["mail".into(), d.clone()], Entry::Dir(LAYOUT_DIR_MODE)));
        v.push((vec!["etc".into(), d.clone()], Entry::Dir(LAYOUT_DIR_MODE)));
        for f in ["passwd", "shadow", "quota"] {
            v.push((
                vec!["etc".into(), d.clone(), f.to_string()],
                Entry::File(MAIL_FILE_MODE),
            ));
        }
    }
    v
}

/// Whether, and as whom, the agent can set owners: root sets any owner; an
/// unprivileged process (the embedded default) only its own ids, and
/// otherwise leaves ownership alone and says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerPlan {
    pub uid: u32,
    pub gid: u32,
    pub apply: bool,
    pub note: Option<String>,
}

impl OwnerPlan {
    pub fn new(uid: u32, gid: u32) -> Self {
        let euid = nix::unistd::geteuid().as_raw();
        let egid = nix::unistd::getegid().as_raw();
        if euid == 0 || (uid == euid && gid == egid) {
            return Self {
                uid,
                gid,
                apply: true,
                note: None,
            };
        }
        Self {
            uid,
            gid,
            apply: false,
            note: Some(format!(
                "not running as root: the tree is left owned by {euid}:{egid} (this process) instead of {uid}:{gid}"
            )),
        }
    }

    pub(crate) fn set(&self, file: &fs::File, path: &Path, mode: u32) -> Result<()> {
        if self.apply {
            std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid))
                .map_err(|e| AgentError::io(path, e))?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| AgentError::io(path, e))
    }
}

/// Checks a home's owner ids.
fn check_ids(uid: u32, gid: u32, min_uid: u32) -> Result<()> {
    if uid < min_uid || gid < min_uid || uid == u32::MAX || gid == u32::MAX {
        return Err(AgentError::InvalidRequest(format!(
            "owner {uid}:{gid} refused: home directories are owned by account ids >= {min_uid}"
        )));
    }
    Ok(())
}

/// Builds (or completes) `<home_root>/<account>` with the cPanel-compatible
/// layout, for `domain` when given: `public_html/`, `mail/<domain>/`,
/// `etc/<domain>/{passwd,shadow,quota}`, `tmp/`, `logs/`, all owned
/// `uid:gid` (see [`OwnerPlan`]). Idempotent: existing entries are kept
/// (files never truncated) and their owner and mode set again. Every step
/// below the home root is taken without following symlinks
/// ([`crate::fsx`]); an existing home that belongs to someone else is
/// refused ([`AgentError::Busy`]). `home_root` is created if missing.
pub fn build_home(
    home_root: &Path,
    account: &AccountName,
    uid: u32,
    gid: u32,
    min_uid: u32,
    domain: Option<&Domain>,
) -> Result<HomeBuilt> {
    check_ids(uid, gid, min_uid)?;
    let owner = OwnerPlan::new(uid, gid);
    let root = fsx::ensure_base(home_root, 0o755)?;
    let (home, created) = root.ensure_dir(account.as_str(), HOME_MODE)?;
    if !created {
        let m = home
            .file
            .metadata()
            .map_err(|e| AgentError::io(&home.path, e))?;
        let ours = m.uid() == uid && m.gid() == gid;
        let euid = nix::unistd::geteuid().as_raw();
        // unprivileged: a home this process made (it could not give it away)
        let made_by_us = !owner.apply && euid != 0 && m.uid() == euid;
        let empty_root = m.uid() == 0
            && fs::read_dir(&home.path)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !ours && !made_by_us && !empty_root {
            return Err(AgentError::Busy(format!(
                "{} already exists and belongs to {}:{}; refusing to hand it to {uid}:{gid}",
                home.path.display(),
                m.uid(),
                m.gid()
            )));
        }
    }
    owner.set(&home.file, &home.path, HOME_MODE)?;
    let mut made = Vec::new();
    if created {
        made.push(".".to_string());
    }
    for (parts, entry) in layout(domain) {
        // walk to the parent, one no-follow step at a time
        let (last, dirs) = parts.split_last().expect("layout entries are not empty");
        let mut parent: Option<fsx::DirHandle> = None;
        for d in dirs {
            let next = parent
                .as_ref()
                .unwrap_or(&home)
                .open_dir(d)?
                .ok_or_else(|| AgentError::NotFound {
                    what: home.path.join(d).display().to_string(),
                })?;
            parent = Some(next);
        }
        let parent = parent.as_ref().unwrap_or(&home);
        let rel = parts.join("/");
        match entry {
            Entry::Dir(mode) => {
                let (dir, created) = parent.ensure_dir(last, mode)?;
                owner.set(&dir.file, &dir.path, mode)?;
                if created {
                    made.push(rel);
                }
            }
            Entry::File(mode) => {
                let path = parent.path.join(last);
                let (file, created) = parent.ensure_file(last, mode)?;
                owner.set(&file, &path, mode)?;
                if created {
                    made.push(rel);
                }
            }
        }
    }
    tracing::info!(
        account = %account,
        path = %home.path.display(),
        uid,
        gid,
        created = made.len(),
        owner_applied = owner.apply,
        "home built"
    );
    Ok(HomeBuilt {
        account: account.clone(),
        path: home.path.display().to_string(),
        uid,
        gid,
        created: made,
        owner_applied: owner.apply,
        note: owner.note,
    })
}

/// Deletes the home tree `<home_root>/<account>`. A symlink or a
/// non-directory in its place is refused ([`AgentError::UnsafePath`]);
/// a missing home answers `false`. The tree is removed without following
/// any symlink inside it (`std::fs::remove_dir_all` works from directory
/// descriptors).
pub fn remove_home(home_root: &Path, account: &AccountName) -> Result<(PathBuf, bool)> {
    let path = home_root.join(account);
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((path, false)),
        Err(e) => return Err(AgentError::io(&path, e)),
    };
    if meta.file_type().is_symlink() {
        return Err(AgentError::UnsafePath(format!(
            "{} is a symlink: refused, not followed",
            path.display()
        )));
    }
    if !meta.is_dir() {
        return Err(AgentError::UnsafePath(format!(
            "{} is not a directory: refused",
            path.display()
        )));
    }
    fs::remove_dir_all(&path).map_err(|e| AgentError::io(&path, e))?;
    tracing::info!(account = %account, path = %path.display(), "home removed");
    Ok((path, true))
}
