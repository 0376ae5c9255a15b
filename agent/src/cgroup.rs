//! The cgroup v2 manager.
//!
//! Per account it manages one directory `<root>/<account>` holding the
//! limits `cpu.max`, `memory.max`, `io.max` and `pids.max`, and uses
//! `cgroup.freeze`/`cgroup.events` to freeze, `cgroup.kill` (or SIGKILL of
//! every pid in `cgroup.procs`) to kill, and `rmdir` to remove.
//!
//! It works on **any directory root**. On the real cgroup v2 hierarchy the
//! kernel creates the control files and enforces the values; on a plain
//! directory shaped like cgroupfs (as the tests use where this host lacks
//! controllers) it writes and reads the same files, and the
//! [`Capabilities`] say that nothing is enforced by the kernel there.
//!
//! At start ([`CgroupManager::open`]) it finds the cgroup2 mount from
//! `/proc/mounts`, creates the root if needed, reads which controllers the
//! root may hand to its children (`cgroup.controllers`), enables the ones it
//! wants in the root's `cgroup.subtree_control`, and records for each limit
//! whether the cgroup controller enforces it or the rlimit fallback
//! ([`crate::rlimit`]) has to.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::account::AccountName;
use crate::config::Fallback;
use crate::error::{AgentError, Result};
use crate::protocol::{
    AppliedLimit, Capabilities, CpuMax, CpuStat, Enforcement, IoStat, KillMethod, LimitCapability,
    LimitKind, Limits, LimitsReport, Usage,
};
use crate::rlimit::RlimitPlan;

/// Controllers the agent wants for account cgroups.
pub const WANTED_CONTROLLERS: [&str; 4] = ["cpu", "memory", "io", "pids"];

/// Kernel page size assumed when comparing `memory.max` read-backs (the kernel
/// rounds the value down to whole pages).
const PAGE: u64 = 4096;

/// A mount line from `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
}

/// Parses `/proc/mounts` text (octal escapes like `\040` decoded).
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let source = unescape_mount(f.next()?);
            let target = PathBuf::from(unescape_mount(f.next()?));
            let fstype = f.next()?.to_owned();
            Some(Mount {
                source,
                target,
                fstype,
            })
        })
        .collect()
}

pub(crate) fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount point that holds `path` (the longest matching one).
pub fn cgroup2_mount_for(mounts: &[Mount], path: &Path) -> Option<PathBuf> {
    mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2" && path.starts_with(&m.target))
        .max_by_key(|m| m.target.as_os_str().len())
        .map(|m| m.target.clone())
}

/// All cgroup2 mount points of this host.
pub fn cgroup2_mounts() -> Vec<PathBuf> {
    fs::read_to_string("/proc/mounts")
        .map(|t| {
            parse_mounts(&t)
                .into_iter()
                .filter(|m| m.fstype == "cgroup2")
                .map(|m| m.target)
                .collect()
        })
        .unwrap_or_default()
}

/// `(major, minor)` of a `st_dev` value (glibc's encoding).
pub fn dev_major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    (major as u32, minor as u32)
}

/// Finds the block device for `io.max`: the configured one, else the whole
/// disk holding `home_root` (io.max refuses partitions). Returns the device
/// or a reason why there is none.
pub fn resolve_io_device(
    configured: Option<(u32, u32)>,
    home_root: &Path,
) -> std::result::Result<(u32, u32), String> {
    if let Some(d) = configured {
        return Ok(d);
    }
    let meta = fs::metadata(home_root)
        .map_err(|e| format!("cannot stat home_root {}: {e}", home_root.display()))?;
    let (maj, min) = dev_major_minor(meta.dev());
    if maj == 0 {
        return Err(format!(
            "home_root {} is on a virtual filesystem (device 0:{min}); set home_device",
            home_root.display()
        ));
    }
    let sys = PathBuf::from(format!("/sys/dev/block/{maj}:{min}"));
    if !sys.join("partition").exists() {
        return Ok((maj, min));
    }
    // a partition: its sysfs directory sits inside the whole disk's
    let whole_disk = || {
        let real = fs::canonicalize(&sys).ok()?;
        let dev = fs::read_to_string(real.parent()?.join("dev")).ok()?;
        crate::config::parse_dev(dev.trim()).ok()
    };
    Ok(whole_disk().unwrap_or((maj, min)))
}

/// How each limit is enforced, given the controllers enabled for account
/// cgroups and the `io.max` device.
fn limit_capabilities(
    enabled: &[String],
    io_device: Option<(u32, u32)>,
    fallback: &Fallback,
) -> Vec<LimitCapability> {
    LimitKind::ALL
        .iter()
        .map(|&kind| {
            let has = enabled.iter().any(|c| c == kind.controller());
            let (enforcement, detail) = match kind {
                LimitKind::Io if has && io_device.is_some() => {
                    let (a, b) = io_device.unwrap_or_default();
                    (Enforcement::Cgroup, format!("io.max on device {a}:{b}"))
                }
                LimitKind::Io => (
                    Enforcement::None,
                    if has {
                        "io controller present but no home device is known".to_string()
                    } else {
                        "io controller missing and there is no rlimit for I/O bandwidth".to_string()
                    },
                ),
                _ if has => (Enforcement::Cgroup, format!("{} in the account cgroup", kind.file())),
                LimitKind::Cpu => (
                    Enforcement::Rlimit,
                    format!(
                        "cpu controller missing: RLIMIT_CPU={}s per process started through npanel-agent exec (total CPU time, not a rate)",
                        fallback.cpu_seconds
                    ),
                ),
                LimitKind::Memory => (
                    Enforcement::Rlimit,
                    "memory controller missing: RLIMIT_AS=memory_max per process started through npanel-agent exec (virtual, per process)".to_string(),
                ),
                LimitKind::Pids => (
                    Enforcement::Rlimit,
                    "pids controller missing: RLIMIT_NPROC=pids_max for processes started through npanel-agent exec (counts all processes of the uid; root is exempt)".to_string(),
                ),
            };
            LimitCapability {
                kind,
                enforcement,
                detail,
            }
        })
        .collect()
}

/// Manages the account cgroups under one root directory.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    root: PathBuf,
    caps: Capabilities,
    io_device: Option<(u32, u32)>,
    /// The root is not on a cgroup2 mount: files are plain files.
    plain_tree: bool,
    fallback: Fallback,
}

impl CgroupManager {
    /// Opens (creating if needed) the cgroup root, probing this host's
    /// `/proc/mounts`. Never fails: what is missing is recorded in the
    /// capabilities and logged.
    pub fn open(
        root: &Path,
        io_device: std::result::Result<(u32, u32), String>,
        fallback: Fallback,
    ) -> Self {
        let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
        Self::open_with_mounts(root, &parse_mounts(&mounts), io_device, fallback)
    }

    /// Like [`CgroupManager::open`] with an explicit mount table.
    pub fn open_with_mounts(
        root: &Path,
        mounts: &[Mount],
        io_device: std::result::Result<(u32, u32), String>,
        fallback: Fallback,
    ) -> Self {
        let mut notes = Vec::new();
        let mount = cgroup2_mount_for(mounts, root);
        let any_cgroup2 = mounts.iter().any(|m| m.fstype == "cgroup2");
        let plain_tree = mount.is_none();
        match &mount {
            Some(m) => notes.push(format!("cgroup root {} is on the cgroup2 mount {}", root.display(), m.display())),
            None if any_cgroup2 => notes.push(format!(
                "cgroup root {} is not on a cgroup2 mount: it is treated as a plain directory tree, nothing written there is enforced by the kernel",
                root.display()
            )),
            None => notes.push(format!(
                "no cgroup2 filesystem is mounted; {} is treated as a plain directory tree, nothing written there is enforced by the kernel",
                root.display()
            )),
        }

        let mut usable = root.is_dir();
        if !usable {
            match fs::create_dir(root) {
                Ok(()) => usable = true,
                Err(e) => notes.push(format!("cannot create cgroup root {}: {e}", root.display())),
            }
        } else if let Err(e) = nix::unistd::access(root, nix::unistd::AccessFlags::W_OK) {
            usable = false;
            notes.push(format!(
                "cgroup root {} is not writable by this process: {e}",
                root.display()
            ));
        }

        let mut enabled = Vec::new();
        let mut freeze = false;
        let mut cgroup_kill = false;
        if usable {
            let parent = root.parent().unwrap_or(root);
            let mut available = read_words(&root.join("cgroup.controllers"));
            let mut subtree = read_words(&root.join("cgroup.subtree_control"));
            for c in WANTED_CONTROLLERS {
                if subtree.iter().any(|s| s == c) {
                    continue;
                }
                if !available.iter().any(|s| s == c) {
                    // The root gets a controller only if its parent enables it
                    // for its children; try that where the parent has it.
                    let parent_has = read_words(&parent.join("cgroup.controllers"))
                        .iter()
                        .any(|s| s == c);
                    if parent_has && !plain_tree {
                        let f = parent.join("cgroup.subtree_control");
                        if let Err(e) = write_file(&f, &format!("+{c}"), false) {
                            notes.push(format!(
                                "cannot enable controller {c} in {}: {e}",
                                f.display()
                            ));
                        }
                        available = read_words(&root.join("cgroup.controllers"));
                    }
                    if !available.iter().any(|s| s == c) {
                        notes.push(if parent_has {
                            format!(
                                "controller {c} is in {}/cgroup.controllers but could not be delegated to the root",
                                parent.display()
                            )
                        } else {
                            format!(
                                "controller {c} is not available: not in {}/cgroup.controllers (bound to a cgroup v1 hierarchy, or not delegated to this subtree)",
                                parent.display()
                            )
                        });
                        continue;
                    }
                }
                if plain_tree {
                    continue;
                }
                if let Err(e) = write_file(
                    &root.join("cgroup.subtree_control"),
                    &format!("+{c}"),
                    false,
                ) {
                    notes.push(format!(
                        "cannot enable controller {c} in {}: {e}",
                        root.display()
                    ));
                }
            }
            if !plain_tree {
                subtree = read_words(&root.join("cgroup.subtree_control"));
            }
            enabled = WANTED_CONTROLLERS
                .iter()
                .filter(|c| subtree.iter().any(|s| s == *c))
                .map(|c| c.to_string())
                .collect();
            freeze = root.join("cgroup.freeze").exists();
            cgroup_kill = root.join("cgroup.kill").exists();
            if !freeze {
                notes.push("cgroup.freeze is missing: freeze/thaw are unsupported".into());
            }
            if !cgroup_kill {
                notes.push("cgroup.kill is missing: kill falls back to SIGKILL of every pid in cgroup.procs".into());
            }
        }

        let io_device = match io_device {
            Ok(d) => Some(d),
            Err(why) => {
                notes.push(format!("io.max cannot be applied: {why}"));
                None
            }
        };

        let limits = limit_capabilities(&enabled, io_device, &fallback);

        let caps = Capabilities {
            cgroup_root: root.display().to_string(),
            cgroup2_mount: mount.map(|m| m.display().to_string()),
            cgroup_usable: usable,
            controllers: enabled,
            freeze,
            cgroup_kill,
            limits,
            notes,
        };
        Self {
            root: root.to_path_buf(),
            caps,
            io_device,
            plain_tree,
            fallback,
        }
    }

    /// A manager that uses no cgroups at all (the unprivileged embedded
    /// default on a host whose cgroup v2 tree it may not write): limits are
    /// reported with their rlimit fallback, and freeze/thaw/kill/remove/usage
    /// are answered as skipped with `reason`.
    pub fn disabled(root: &Path, reason: String, fallback: Fallback) -> Self {
        let caps = Capabilities {
            cgroup_root: root.display().to_string(),
            cgroup2_mount: None,
            cgroup_usable: false,
            controllers: Vec::new(),
            freeze: false,
            cgroup_kill: false,
            limits: limit_capabilities(&[], None, &fallback),
            notes: vec![reason],
        };
        Self {
            root: root.to_path_buf(),
            caps,
            io_device: None,
            plain_tree: false,
            fallback,
        }
    }

    /// Why account cgroups cannot be used here, or `None` when they can.
    pub fn unusable_reason(&self) -> Option<String> {
        if self.caps.cgroup_usable {
            return None;
        }
        Some(format!(
            "no usable cgroup root ({}): {}",
            self.caps.cgroup_root,
            self.caps.notes.join("; ")
        ))
    }

    /// Logs what is enforced and how.
    pub fn log_capabilities(&self) {
        let c = &self.caps;
        tracing::info!(
            root = %c.cgroup_root,
            cgroup2_mount = ?c.cgroup2_mount,
            usable = c.cgroup_usable,
            controllers = ?c.controllers,
            freeze = c.freeze,
            cgroup_kill = c.cgroup_kill,
            "cgroup capabilities"
        );
        for l in &c.limits {
            match l.enforcement {
                Enforcement::Cgroup => {
                    tracing::info!(limit = ?l.kind, "enforced by cgroup v2: {}", l.detail)
                }
                Enforcement::Rlimit => {
                    tracing::warn!(limit = ?l.kind, "NOT enforced by cgroup, rlimit fallback: {}", l.detail)
                }
                Enforcement::None => tracing::warn!(limit = ?l.kind, "NOT enforced: {}", l.detail),
            }
        }
        for n in &c.notes {
            tracing::info!("{n}");
        }
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether the root is a plain directory tree rather than cgroupfs.
    pub fn is_plain_tree(&self) -> bool {
        self.plain_tree
    }

    /// `<root>/<account>`.
    pub fn account_dir(&self, account: &AccountName) -> PathBuf {
        self.root.join(account)
    }

    fn existing_dir(&self, account: &AccountName) -> Result<PathBuf> {
        let dir = self.account_dir(account);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(AgentError::NotFound {
                what: format!("cgroup of account {account} ({})", dir.display()),
            })
        }
    }

    /// The account's cgroup directory and its `cgroup.freeze`, which must exist.
    fn freezer(&self, account: &AccountName) -> Result<(PathBuf, PathBuf)> {
        let dir = self.existing_dir(account)?;
        let file = dir.join("cgroup.freeze");
        if !file.exists() {
            return Err(AgentError::Unsupported(format!(
                "{} is missing: this kernel has no cgroup v2 freezer",
                file.display()
            )));
        }
        Ok((dir, file))
    }

    /// The rlimits that stand in for missing controllers.
    pub fn rlimit_plan(&self, limits: &Limits) -> RlimitPlan {
        RlimitPlan::for_capabilities(&self.caps, limits, &self.fallback)
    }

    /// Creates the account cgroup if needed and writes every limit its
    /// controller enforces, reading each back and comparing.
    pub fn apply_limits(&self, account: &AccountName, limits: &Limits) -> Result<LimitsReport> {
        if !self.caps.cgroup_usable {
            let plan = self.rlimit_plan(limits);
            return Ok(LimitsReport {
                account: account.clone(),
                requested: *limits,
                applied: plan.as_applied(&self.caps),
            });
        }
        let dir = self.account_dir(account);
        match fs::create_dir(&dir) {
            Ok(()) => {
                tracing::info!(account = %account, dir = %dir.display(), "created account cgroup")
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(AgentError::io(&dir, e)),
        }
        let fallback = self.rlimit_plan(limits).as_applied(&self.caps);
        let mut applied = Vec::new();
        for kind in LimitKind::ALL {
            match self.caps.enforcement(kind) {
                Enforcement::Cgroup => {
                    let value = match kind {
                        LimitKind::Cpu => limits.cpu_max.to_string(),
                        LimitKind::Memory => limits.memory_max.to_string(),
                        LimitKind::Pids => limits.pids_max.to_string(),
                        LimitKind::Io => {
                            let (a, b) = self.io_device.unwrap_or_default();
                            format!("{a}:{b} rbps={} wbps={}", limits.io_rbps, limits.io_wbps)
                        }
                    };
                    let path = dir.join(kind.file());
                    write_file(&path, &value, self.plain_tree)
                        .map_err(|e| AgentError::io(&path, e))?;
                    let read = fs::read_to_string(&path).map_err(|e| AgentError::io(&path, e))?;
                    let read = read.trim().to_string();
                    if !self.read_back_matches(kind, limits, &read) {
                        return Err(AgentError::VerifyMismatch {
                            file: path,
                            wrote: value,
                            read,
                        });
                    }
                    applied.push(AppliedLimit {
                        kind,
                        enforcement: Enforcement::Cgroup,
                        value,
                        read_back: Some(read),
                        note: None,
                    });
                }
                _ => applied.extend(fallback.iter().filter(|a| a.kind == kind).cloned()),
            }
        }
        tracing::info!(account = %account, ?limits, "limits applied");
        Ok(LimitsReport {
            account: account.clone(),
            requested: *limits,
            applied,
        })
    }

    fn read_back_matches(&self, kind: LimitKind, limits: &Limits, read: &str) -> bool {
        match kind {
            LimitKind::Cpu => read.parse::<CpuMax>().ok() == Some(limits.cpu_max),
            LimitKind::Memory => read
                .parse::<u64>()
                .map(|r| r == limits.memory_max || r == limits.memory_max / PAGE * PAGE)
                .unwrap_or(false),
            LimitKind::Pids => read.parse::<u64>().ok() == Some(limits.pids_max),
            LimitKind::Io => {
                let (a, b) = self.io_device.unwrap_or_default();
                let dev = format!("{a}:{b}");
                read.lines().any(|l| {
                    let mut f = l.split_whitespace();
                    if f.next() != Some(dev.as_str()) {
                        return false;
                    }
                    let kv: Vec<(&str, &str)> = f.filter_map(|p| p.split_once('=')).collect();
                    let get = |k: &str| kv.iter().find(|(kk, _)| *kk == k).map(|(_, v)| *v);
                    get("rbps") == Some(limits.io_rbps.to_string().as_str())
                        && get("wbps") == Some(limits.io_wbps.to_string().as_str())
                })
            }
        }
    }

    /// Freezes the account: writes `cgroup.freeze` 1 and waits until
    /// `cgroup.events` shows `frozen 1`. On timeout it thaws again and fails.
    pub fn freeze(&self, account: &AccountName, timeout: Duration) -> Result<()> {
        let (dir, file) = self.freezer(account)?;
        write_file(&file, "1", false).map_err(|e| AgentError::io(&file, e))?;
        if wait_event(&dir, "frozen", true, timeout) {
            tracing::info!(account = %account, "frozen");
            return Ok(());
        }
        if let Err(e) = write_file(&file, "0", false) {
            tracing::error!(account = %account, "thawing after a failed freeze failed too: {e}");
        }
        Err(AgentError::Timeout(format!(
            "freeze of {account} did not complete within {} ms (cgroup.events never showed frozen 1); thawed again",
            timeout.as_millis()
        )))
    }

    /// Thaws the account: writes `cgroup.freeze` 0 and waits for `frozen 0`.
    pub fn thaw(&self, account: &AccountName, timeout: Duration) -> Result<()> {
        let (dir, file) = self.freezer(account)?;
        write_file(&file, "0", false).map_err(|e| AgentError::io(&file, e))?;
        if wait_event(&dir, "frozen", false, timeout) {
            tracing::info!(account = %account, "thawed");
            Ok(())
        } else {
            Err(AgentError::Timeout(format!(
                "thaw of {account}: cgroup.events still shows frozen 1 after {} ms",
                timeout.as_millis()
            )))
        }
    }

    /// Kills every process of the account: `cgroup.kill` where the kernel has
    /// it, else SIGKILL of every pid in `cgroup.procs` (of the account cgroup
    /// and its children), repeated until no new pid shows up. Returns the
    /// method, how many pids the fallback signalled, and whether the cgroup
    /// was empty (`populated 0`) afterwards.
    pub fn kill(
        &self,
        account: &AccountName,
        timeout: Duration,
    ) -> Result<(KillMethod, u32, bool)> {
        let dir = self.existing_dir(account)?;
        let deadline = Instant::now() + timeout;
        let kill_file = dir.join("cgroup.kill");
        let (method, signalled) = if kill_file.exists() {
            write_file(&kill_file, "1", false).map_err(|e| AgentError::io(&kill_file, e))?;
            (KillMethod::CgroupKill, 0)
        } else {
            let mut done: Vec<i32> = Vec::new();
            loop {
                let pids = procs_recursive(&dir)?;
                let fresh: Vec<i32> = pids.into_iter().filter(|p| !done.contains(p)).collect();
                if fresh.is_empty() {
                    break;
                }
                for pid in fresh {
                    if pid > 0 {
                        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                            Err(e) => {
                                tracing::warn!(account = %account, pid, "SIGKILL failed: {e}")
                            }
                        }
                    }
                    done.push(pid);
                }
                if Instant::now() >= deadline {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            (KillMethod::Sigkill, done.len() as u32)
        };
        let emptied = if self.plain_tree {
            read_event(&dir, "populated") == Some(false)
        } else {
            wait_event(
                &dir,
                "populated",
                false,
                deadline.saturating_duration_since(Instant::now()),
            )
        };
        tracing::info!(account = %account, ?method, signalled, emptied, "killed");
        Ok((method, signalled, emptied))
    }

    /// Removes the account cgroup (and any child cgroups) once it is empty
    /// (`populated 0`, waited for up to `timeout`). `Ok(false)` if it did not
    /// exist.
    pub fn remove(&self, account: &AccountName, timeout: Duration) -> Result<bool> {
        let dir = self.account_dir(account);
        if !dir.is_dir() {
            return Ok(false);
        }
        if !wait_event(&dir, "populated", false, timeout)
            && read_event(&dir, "populated") == Some(true)
        {
            return Err(AgentError::Busy(format!(
                "cgroup of {account} still has processes (populated 1); kill it first"
            )));
        }
        remove_tree(&dir, self.plain_tree)?;
        tracing::info!(account = %account, "cgroup removed");
        Ok(true)
    }

    /// A cgroup of its own for one job of the account, `<root>/<account>/job-<id>`, created
    /// inside the account's cgroup (`None` if the account has none). The account's limits, set
    /// on the parent, bound the job too; killing the job's cgroup leaves the account's other
    /// processes alone. `None` where processes cannot be placed in cgroups: no usable
    /// cgroup v2 root, or a plain directory tree standing in for one.
    pub fn job_cgroup(&self, account: &AccountName, job: &str) -> Result<Option<PathBuf>> {
        if !self.caps.cgroup_usable || self.plain_tree {
            return Ok(None);
        }
        if job.is_empty() || !job.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(AgentError::InvalidRequest(format!(
                "job id {job:?}: letters and digits only"
            )));
        }
        // Only inside the account's cgroup as provisioning made it (with its limits): one made
        // here would have none.
        if !self.account_dir(account).is_dir() {
            tracing::warn!(account = %account, job, "no cgroup for the account: the job runs in a process of its own, outside any account cgroup");
            return Ok(None);
        }
        let dir = self.account_dir(account).join(format!("job-{job}"));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(AgentError::io(&dir, e)),
        }
        Ok(Some(dir))
    }

    /// Kills every process in a job's cgroup (see [`CgroupManager::job_cgroup`]):
    /// `cgroup.kill` where the kernel has it, so a process that left its session with
    /// `setsid()` dies too; else SIGKILL of every pid listed.
    pub fn kill_job(&self, dir: &Path) -> Result<KillMethod> {
        let kill_file = dir.join("cgroup.kill");
        if kill_file.exists() {
            write_file(&kill_file, "1", false).map_err(|e| AgentError::io(&kill_file, e))?;
            return Ok(KillMethod::CgroupKill);
        }
        for pid in procs_recursive(dir)? {
            if pid > 0 {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        Ok(KillMethod::Sigkill)
    }

    /// Removes a job's cgroup: whatever still runs in it is killed first, then it is
    /// removed once empty (waited for up to `timeout`).
    pub fn remove_job(&self, dir: &Path, timeout: Duration) -> Result<()> {
        if !dir.is_dir() {
            return Ok(());
        }
        if read_event(dir, "populated") == Some(true) {
            self.kill_job(dir)?;
            if !wait_event(dir, "populated", false, timeout) {
                return Err(AgentError::Busy(format!(
                    "job cgroup {} still has processes after kill",
                    dir.display()
                )));
            }
        }
        remove_tree(dir, self.plain_tree)
    }

    /// The pids in the account cgroup (not its children).
    pub fn procs(&self, account: &AccountName) -> Result<Vec<i32>> {
        let dir = self.existing_dir(account)?;
        read_pids(&dir.join("cgroup.procs"))
    }

    /// Moves process `pid` into the account cgroup.
    pub fn add_process(&self, account: &AccountName, pid: u32) -> Result<()> {
        let dir = self.existing_dir(account)?;
        let f = dir.join("cgroup.procs");
        write_file(&f, &pid.to_string(), self.plain_tree).map_err(|e| AgentError::io(&f, e))
    }

    /// Usage counters of the account.
    pub fn usage(&self, account: &AccountName) -> Result<Usage> {
        let dir = self.existing_dir(account)?;
        let kv = |name: &str| read_kv(&dir.join(name));
        let cpu = kv("cpu.stat").map(|m| {
            let g = |k: &str| m.iter().find(|(kk, _)| kk == k).map(|(_, v)| *v);
            CpuStat {
                usage_usec: g("usage_usec").unwrap_or(0),
                user_usec: g("user_usec").unwrap_or(0),
                system_usec: g("system_usec").unwrap_or(0),
                nr_periods: g("nr_periods"),
                nr_throttled: g("nr_throttled"),
                throttled_usec: g("throttled_usec"),
            }
        });
        let get = |m: &Option<Vec<(String, u64)>>, k: &str| {
            m.as_ref()
                .and_then(|m| m.iter().find(|(kk, _)| kk == k).map(|(_, v)| *v))
        };
        let mem_events = kv("memory.events");
        let pids_events = kv("pids.events");
        let io = fs::read_to_string(dir.join("io.stat"))
            .map(|t| parse_io_stat(&t))
            .unwrap_or_default();
        Ok(Usage {
            account: account.to_string(),
            cpu,
            memory_current: read_u64(&dir.join("memory.current")),
            memory_oom: get(&mem_events, "oom"),
            memory_oom_kill: get(&mem_events, "oom_kill"),
            pids_current: read_u64(&dir.join("pids.current")),
            pids_max_events: get(&pids_events, "max"),
            io,
            populated: read_event(&dir, "populated"),
            frozen: read_event(&dir, "frozen"),
        })
    }
}

/// Writes `value` to a control file. On cgroupfs the file must exist (a
/// missing file means a missing controller); in a plain tree it is created.
fn write_file(path: &Path, value: &str, create: bool) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(create)
        .open(path)?;
    f.write_all(value.as_bytes())
}

fn read_words(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|t| t.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (cpu.stat, memory.events, pids.events, cgroup.events).
fn read_kv(path: &Path) -> Option<Vec<(String, u64)>> {
    let text = fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// Reads `key` (`populated`/`frozen`) from `cgroup.events`.
pub fn read_event(dir: &Path, key: &str) -> Option<bool> {
    read_kv(&dir.join("cgroup.events"))?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v != 0)
}

/// Polls `cgroup.events` until `key` has `want`, or the timeout passes.
fn wait_event(dir: &Path, key: &str, want: bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if read_event(dir, key) == Some(want) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

fn read_pids(path: &Path) -> Result<Vec<i32>> {
    let text = fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
    Ok(text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

fn procs_recursive(dir: &Path) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    let procs = dir.join("cgroup.procs");
    if procs.exists() {
        out.extend(read_pids(&procs)?);
    }
    for entry in fs::read_dir(dir).map_err(|e| AgentError::io(dir, e))? {
        let entry = entry.map_err(|e| AgentError::io(dir, e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(procs_recursive(&entry.path())?);
        }
    }
    Ok(out)
}

/// Removes a cgroup directory bottom-up. On cgroupfs only `rmdir` is allowed
/// (the control files go with the directory); in a plain tree the files are
/// removed first.
fn remove_tree(dir: &Path, plain: bool) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| AgentError::io(dir, e))? {
        let entry = entry.map_err(|e| AgentError::io(dir, e))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| AgentError::io(&path, e))?;
        if ft.is_dir() {
            remove_tree(&path, plain)?;
        } else if plain {
            fs::remove_file(&path).map_err(|e| AgentError::io(&path, e))?;
        }
    }
    fs::remove_dir(dir).map_err(|e| AgentError::io(dir, e))
}

/// Parses `io.stat` lines: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...`.
pub fn parse_io_stat(text: &str) -> Vec<IoStat> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let device = f.next()?.to_owned();
            let mut s = IoStat {
                device,
                ..Default::default()
            };
            for kv in f {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => s.rbytes = v,
                    "wbytes" => s.wbytes = v,
                    "rios" => s.rios = v,
                    "wios" => s.wios = v,
                    _ => {}
                }
            }
            Some(s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_parsed_and_matched() {
        let text = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                    cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n\
                    cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                    none /mnt/with\\040space cgroup2 rw 0 0\n";
        let m = parse_mounts(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[3].target, Path::new("/mnt/with space"));
        assert_eq!(
            cgroup2_mount_for(&m, Path::new("/sys/fs/cgroup/unified/npanel.slice")),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount_for(&m, Path::new("/sys/fs/cgroup/npanel.slice")),
            None
        );
        assert_eq!(
            cgroup2_mount_for(&m, Path::new("/sys/fs/cgroup/pids/x")),
            None
        );
    }

    #[test]
    fn dev_numbers_decode() {
        // makedev(254, 0) and makedev(8, 17)
        assert_eq!(dev_major_minor(0xfe00), (254, 0));
        assert_eq!(dev_major_minor((8 << 8) | 17), (8, 17));
        // makedev(259, 300): minor bits above 0xff live at bit 20
        assert_eq!(dev_major_minor((259 << 8) | 44 | (256 << 12)), (259, 300));
    }

    #[test]
    fn io_stat_parses() {
        let s = parse_io_stat(
            "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n254:0 rbytes=5\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].device, "8:0");
        assert_eq!(
            (s[0].rbytes, s[0].wbytes, s[0].rios, s[0].wios),
            (10, 20, 1, 2)
        );
        assert_eq!(s[1].rbytes, 5);
    }
}
