//! The agent's side of a restore (DESIGN §12): unpack an archive into a staging area beside
//! the homes, install the staged home with one rename, or throw the staging away.
//!
//! - **Staging.** `<home_root>/.npanel-restore-<restore_id>/` (root, 0700) holds `home/` and
//!   `meta/` ([`crate::unpack`]). It is on the homes' filesystem, so installing is a rename,
//!   and until then the account's home is untouched: a failed or cancelled restore is undone
//!   by deleting the staging. Unpacking again with the same id starts from an empty staging
//!   (a retried job never finds half of an earlier try).
//! - **Install.** The current home (if any) is renamed to `<staging>/previous`, the staged
//!   home into its place. [`revert_home`] swaps them back; [`discard_restore`] deletes the
//!   staging, and the previous home with it.
//! - **In the account's cgroup.** Given an [`InChild`], the unpack runs as a child process in
//!   the job cgroup `<account>/job-<restore_id>` ([`crate::child`]); without one (a test
//!   harness, no helper binary) on the calling thread.
//! - **Progress and cancel** go through a registry of running unpacks in this process, so they
//!   work the same over the socket and in the embedded host: [`unpack_status`] reads the
//!   counters; [`cancel_unpack`] kills the child's cgroup (`cgroup.kill`, so whatever it
//!   started dies too) or the child, or sets the flag a thread's unpack checks between chunks.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::account::AccountName;
use crate::cgroup::CgroupManager;
use crate::child::{self, ChildHandle, ChildRequest};
use crate::error::{AgentError, Result};
use crate::fsx;
use crate::unpack::{unpack, UnpackError, UnpackOptions, UnpackProgress, Unpacked};

/// How long a job cgroup may take to empty after its child ended or was killed.
const JOB_CGROUP_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Run the unpack as a child process ([`crate::child`]), in the account's cgroup where the
/// manager can place processes.
#[derive(Debug, Clone, Copy)]
pub struct InChild<'a> {
    /// The executable started with [`child::HELPER_ARG`].
    pub helper: &'a Path,
    pub cgroups: &'a CgroupManager,
    pub account: &'a AccountName,
}

/// Answer to an unpack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveUnpacked {
    pub restore_id: String,
    /// The staging directory (`home/` and `meta/` inside).
    pub staging: String,
    /// Size of the archive file.
    pub archive_bytes: u64,
    pub unpacked: Unpacked,
    /// Whether the unpack ran as a child process of its own.
    #[serde(default)]
    pub child_process: bool,
    /// The cgroup the child reported it ran in (`/npanel.slice/alice/job-…`), where it ran in
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// Counters of a running unpack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackStatus {
    pub restore_id: String,
    /// Whether an unpack with this id is running in this agent.
    pub running: bool,
    pub archive_bytes: u64,
    pub archive_read: u64,
    pub files: u64,
    pub bytes: u64,
    /// The home file written last (its path in the home) and its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_file: Option<(String, u64)>,
    /// Whether the staged home was installed already (the staging holds the home it
    /// replaced, or no staged home is left): a retried restore goes on from there.
    #[serde(default)]
    pub installed: bool,
    /// With `scan_first`: archive bytes the headers-only scan has read, and whether it is
    /// over (then `total_files` and `total_bytes` are the home's).
    #[serde(default)]
    pub scan_read: u64,
    #[serde(default)]
    pub scanned: bool,
    #[serde(default)]
    pub total_files: u64,
    #[serde(default)]
    pub total_bytes: u64,
}

/// Answer to an install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeInstalled {
    pub account: AccountName,
    pub path: String,
    /// Where the home it replaced is kept until the staging is discarded.
    pub previous: Option<String>,
}

struct Running {
    progress: Arc<UnpackProgress>,
    cancel: Arc<AtomicBool>,
    archive_bytes: u64,
    last_file: Arc<Mutex<Option<(String, u64)>>>,
    /// The child process doing the unpack, while it runs.
    child: Arc<Mutex<Option<ChildHandle>>>,
}

fn running() -> &'static Mutex<HashMap<String, Running>> {
    static R: OnceLock<Mutex<HashMap<String, Running>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// A restore id is a job id: letters and digits, at most 64.
pub(crate) fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AgentError::InvalidRequest(format!(
            "restore id {id:?}: letters and digits, 1 to 64"
        )));
    }
    Ok(())
}

/// The staging directory of `restore_id`.
pub fn staging_dir(home_root: &Path, restore_id: &str) -> PathBuf {
    home_root.join(format!(".npanel-restore-{restore_id}"))
}

/// Unpack `archive` into a fresh staging for `restore_id` (see the module docs). The staging
/// is removed again if the unpack fails or is cancelled.
pub fn unpack_archive(
    home_root: &Path,
    restore_id: &str,
    archive: &Path,
    opts: &UnpackOptions,
    in_child: Option<InChild<'_>>,
) -> Result<ArchiveUnpacked> {
    check_id(restore_id)?;
    let meta = std::fs::symlink_metadata(archive).map_err(|e| AgentError::io(archive, e))?;
    if !meta.is_file() {
        return Err(AgentError::InvalidRequest(format!(
            "{} is not a file",
            archive.display()
        )));
    }
    if unpack_status(home_root, restore_id)?.installed {
        return Err(AgentError::Busy(format!(
            "restore {restore_id} was installed already: revert or discard it first"
        )));
    }
    // The id is taken before the staging is touched: a retry while an earlier unpack of the
    // same restore still runs is refused instead of deleting the staging under it.
    let progress = Arc::new(UnpackProgress::default());
    let cancel = Arc::new(AtomicBool::new(false));
    let last_file = Arc::new(Mutex::new(None));
    let child_slot = Arc::new(Mutex::new(None));
    {
        let mut r = running().lock().unwrap_or_else(|p| p.into_inner());
        if r.contains_key(restore_id) {
            return Err(AgentError::Busy(format!(
                "restore {restore_id} is already unpacking"
            )));
        }
        r.insert(
            restore_id.to_string(),
            Running {
                progress: progress.clone(),
                cancel: cancel.clone(),
                archive_bytes: meta.len(),
                last_file: last_file.clone(),
                child: child_slot.clone(),
            },
        );
    }
    let release = || {
        running()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(restore_id);
    };
    let name = format!(".npanel-restore-{restore_id}");
    let prepared = (|| {
        let base = fsx::ensure_base(home_root, 0o755)?;
        base.remove_tree(&name)?;
        let (staging, _) = base.ensure_dir(&name, 0o700)?;
        staging.ensure_dir("home", 0o700)?;
        staging.ensure_dir("meta", 0o700)?;
        Ok::<_, AgentError>((base, staging))
    })();
    let (base, staging) = match prepared {
        Ok(x) => x,
        Err(e) => {
            release();
            return Err(e);
        }
    };
    // Never more than the disk can take: the bound asked for, or the free space.
    let mut opts = opts.clone();
    if let Some(free) = free_bytes(home_root) {
        opts.max_bytes = opts.max_bytes.min(free);
    }
    let (home, meta_dir) = (staging.path.join("home"), staging.path.join("meta"));
    let (result, cgroup) = match in_child {
        None => {
            let result = unpack(
                archive,
                &home,
                &meta_dir,
                &opts,
                &progress,
                &cancel,
                &mut |path, n| {
                    *last_file.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((path.display().to_string(), n));
                },
            );
            (result, None)
        }
        Some(c) => {
            let req = ChildRequest {
                archive: archive.to_path_buf(),
                home,
                meta: meta_dir,
                opts,
            };
            match unpack_in_child(
                c,
                restore_id,
                &req,
                &progress,
                &last_file,
                &cancel,
                &child_slot,
            ) {
                Ok(x) => x,
                Err(e) => {
                    release();
                    let _ = base.remove_tree(&name);
                    return Err(e);
                }
            }
        }
    };
    release();
    match result {
        Ok(unpacked) => Ok(ArchiveUnpacked {
            restore_id: restore_id.to_string(),
            staging: staging.path.display().to_string(),
            archive_bytes: meta.len(),
            unpacked,
            child_process: in_child.is_some(),
            cgroup,
        }),
        Err(e) => {
            let _ = base.remove_tree(&name);
            Err(match e {
                UnpackError::Cancelled => AgentError::Cancelled(format!(
                    "restore {restore_id}: unpack cancelled, staging removed"
                )),
                UnpackError::Io { path, source } => AgentError::Io { path, source },
                refused => AgentError::InvalidRequest(refused.to_string()),
            })
        }
    }
}

/// The unpack as a child process in the job cgroup of `restore_id` (removed again after):
/// the unpack's own outcome and the cgroup the child ran in, or why the child failed.
fn unpack_in_child(
    c: InChild<'_>,
    restore_id: &str,
    req: &ChildRequest,
    progress: &UnpackProgress,
    last_file: &Mutex<Option<(String, u64)>>,
    cancel: &AtomicBool,
    slot: &Mutex<Option<ChildHandle>>,
) -> Result<(std::result::Result<Unpacked, UnpackError>, Option<String>)> {
    let cgroup = c.cgroups.job_cgroup(c.account, restore_id)?;
    let started = |handle: Option<ChildHandle>| {
        let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
        *s = handle;
        // A cancel that came before the child existed kills it as soon as it does.
        if let Some(h) = s.as_ref().filter(|_| cancel.load(Ordering::Relaxed)) {
            kill_child(c.cgroups, h);
        }
    };
    let outcome = child::run(
        c.helper,
        cgroup.as_deref(),
        req,
        progress,
        last_file,
        &started,
        cancel,
    );
    if let Some(dir) = &cgroup {
        if let Err(e) = c.cgroups.remove_job(dir, JOB_CGROUP_DRAIN) {
            tracing::warn!(restore_id, "job cgroup left behind: {e}");
        }
    }
    let outcome = outcome.map_err(|e| match e.raw_os_error() {
        // Out of processes (the account's `pids.max`), memory or descriptors right now:
        // worth another try.
        Some(code)
            if [Errno::EAGAIN, Errno::ENOMEM, Errno::EMFILE]
                .iter()
                .any(|e| *e as i32 == code) =>
        {
            AgentError::Busy(format!("restore {restore_id}: {e}"))
        }
        // It died without answering (a kill under the account's `memory.max` is SIGKILL).
        _ => AgentError::ToolFailed(format!("restore {restore_id}: {e}")),
    })?;
    Ok((outcome.result, outcome.cgroup))
}

/// Kills a running child: its whole job cgroup where it has one, else the process.
fn kill_child(cgroups: &CgroupManager, h: &ChildHandle) {
    if let Some(dir) = &h.cgroup {
        match cgroups.kill_job(dir) {
            Ok(_) => return,
            Err(e) => tracing::warn!(pid = h.pid, "cannot kill job cgroup {}: {e}", dir.display()),
        }
    }
    let _ = nix::sys::signal::kill(Pid::from_raw(h.pid), Signal::SIGKILL);
}

/// Bytes an unprivileged user may still write on the filesystem of `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// The counters of the unpack of `restore_id` (zeros and `running: false` when none runs),
/// and whether its staged home was installed already.
pub fn unpack_status(home_root: &Path, restore_id: &str) -> Result<UnpackStatus> {
    check_id(restore_id)?;
    let staging = staging_dir(home_root, restore_id);
    let installed = staging.join("previous").exists()
        || (staging.join("meta").is_dir() && !staging.join("home").exists());
    let r = running().lock().unwrap_or_else(|p| p.into_inner());
    Ok(match r.get(restore_id) {
        Some(u) => UnpackStatus {
            restore_id: restore_id.to_string(),
            running: true,
            archive_bytes: u.archive_bytes,
            archive_read: u.progress.archive_read.load(Ordering::Relaxed),
            files: u.progress.files.load(Ordering::Relaxed),
            bytes: u.progress.bytes.load(Ordering::Relaxed),
            last_file: u
                .last_file
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            installed: false,
            scan_read: u.progress.scan_read.load(Ordering::Relaxed),
            scanned: u.progress.scanned.load(Ordering::Relaxed),
            total_files: u.progress.total_files.load(Ordering::Relaxed),
            total_bytes: u.progress.total_bytes.load(Ordering::Relaxed),
        },
        None => UnpackStatus {
            restore_id: restore_id.to_string(),
            running: false,
            archive_bytes: 0,
            archive_read: 0,
            files: 0,
            bytes: 0,
            last_file: None,
            installed,
            scan_read: 0,
            scanned: false,
            total_files: 0,
            total_bytes: 0,
        },
    })
}

/// Stop the unpack of `restore_id`: its child process killed with everything in its job
/// cgroup, or the flag set that a thread's unpack checks. `false` if none runs.
pub fn cancel_unpack(cgroups: &CgroupManager, restore_id: &str) -> bool {
    let r = running().lock().unwrap_or_else(|p| p.into_inner());
    match r.get(restore_id) {
        Some(u) => {
            u.cancel.store(true, Ordering::Relaxed);
            if let Some(h) = u.child.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                kill_child(cgroups, h);
            }
            true
        }
        None => false,
    }
}

/// Put the staged home of `restore_id` in place of the account's home (kept as
/// `<staging>/previous`), owned by `owner` when given (every entry, links not followed).
pub fn install_home(
    home_root: &Path,
    account: &AccountName,
    restore_id: &str,
    owner: Option<(u32, u32)>,
) -> Result<HomeInstalled> {
    check_id(restore_id)?;
    let base = fsx::open_base(home_root)?;
    let name = format!(".npanel-restore-{restore_id}");
    let staging = base.open_dir(&name)?.ok_or_else(|| AgentError::NotFound {
        what: format!("staging of restore {restore_id}"),
    })?;
    let staged = staging
        .open_dir("home")?
        .ok_or_else(|| AgentError::NotFound {
            what: format!("staged home of restore {restore_id} (installed already?)"),
        })?;
    if let Some((uid, gid)) = owner {
        chown_tree(&staged.file, &staged.path, uid, gid, 0)?;
    }
    let staged_mode = 0o750;
    std::fs::set_permissions(
        &staged.path,
        std::os::unix::fs::PermissionsExt::from_mode(staged_mode),
    )
    .map_err(|e| AgentError::io(&staged.path, e))?;
    let home = home_root.join(account.as_str());
    let previous = match base.is_dir_entry(account.as_str())? {
        Some(_) => {
            nix::fcntl::renameat(&base.file, account.as_str(), &staging.file, "previous")
                .map_err(|e| AgentError::io(&home, std::io::Error::from(e)))?;
            Some(staging.path.join("previous").display().to_string())
        }
        None => None,
    };
    nix::fcntl::renameat(&staging.file, "home", &base.file, account.as_str())
        .map_err(|e| AgentError::io(&home, std::io::Error::from(e)))?;
    let _ = base.file.sync_all();
    Ok(HomeInstalled {
        account: account.clone(),
        path: home.display().to_string(),
        previous,
    })
}

/// Undo [`install_home`]: the home it replaced (kept as `<staging>/previous`) back in place,
/// the restored one (if it got there) back in the staging. Also after an install that stopped
/// between its two renames. `false` if there is nothing to undo.
pub fn revert_home(home_root: &Path, account: &AccountName, restore_id: &str) -> Result<bool> {
    check_id(restore_id)?;
    let base = fsx::open_base(home_root)?;
    let Some(staging) = base.open_dir(&format!(".npanel-restore-{restore_id}"))? else {
        return Ok(false);
    };
    if staging.is_dir_entry("previous")?.is_none() {
        return Ok(false);
    }
    let home = home_root.join(account.as_str());
    if base.is_dir_entry(account.as_str())?.is_some() {
        if staging.is_dir_entry("home")?.is_some() {
            return Err(AgentError::Busy(format!(
                "{} exists while restore {restore_id} still holds both the staged and the previous home: not reverted",
                home.display()
            )));
        }
        nix::fcntl::renameat(&base.file, account.as_str(), &staging.file, "home")
            .map_err(|e| AgentError::io(&home, std::io::Error::from(e)))?;
    }
    nix::fcntl::renameat(&staging.file, "previous", &base.file, account.as_str())
        .map_err(|e| AgentError::io(&home, std::io::Error::from(e)))?;
    let _ = base.file.sync_all();
    Ok(true)
}

/// Delete the staging of `restore_id` (and the home an install replaced); `false` if there
/// was none.
pub fn discard_restore(
    home_root: &Path,
    cgroups: &CgroupManager,
    restore_id: &str,
) -> Result<bool> {
    check_id(restore_id)?;
    cancel_unpack(cgroups, restore_id);
    let base = match fsx::open_base(home_root) {
        Ok(b) => b,
        Err(AgentError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    base.remove_tree(&format!(".npanel-restore-{restore_id}"))
}

/// Deepest directory [`chown_tree`] descends into.
const MAX_DEPTH: usize = 256;

/// `fchownat` of every entry below `dir` (links not followed), walking from descriptors.
fn chown_tree(dir: &std::fs::File, path: &Path, uid: u32, gid: u32, depth: usize) -> Result<()> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    use std::os::unix::ffi::OsStrExt;
    if depth > MAX_DEPTH {
        return Err(AgentError::UnsafePath(format!(
            "{} is nested deeper than {MAX_DEPTH} directories",
            path.display()
        )));
    }
    std::os::unix::fs::fchown(dir, Some(uid), Some(gid)).map_err(|e| AgentError::io(path, e))?;
    let listing = dir.try_clone().map_err(|e| AgentError::io(path, e))?;
    let mut d = nix::dir::Dir::from_fd(listing.into())
        .map_err(|e| AgentError::io(path, std::io::Error::from(e)))?;
    let mut subdirs = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(|e| AgentError::io(path, std::io::Error::from(e)))?;
        let n = entry.file_name();
        if n.to_bytes() == b"." || n.to_bytes() == b".." {
            continue;
        }
        let name = OsStr::from_bytes(n.to_bytes()).to_os_string();
        if entry.file_type() == Some(nix::dir::Type::Directory) {
            subdirs.push(name);
        } else {
            fsx::chown_at(dir, &name, uid, gid)
                .map_err(|e| AgentError::io(path.join(&name), std::io::Error::from(e)))?;
        }
    }
    for name in subdirs {
        let fd = openat(
            dir,
            name.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fsx::nofollow_err(&path.join(&name), e))?;
        let child = std::fs::File::from(fd);
        chown_tree(&child, &path.join(&name), uid, gid, depth + 1)?;
    }
    Ok(())
}
