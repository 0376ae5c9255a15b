//! Stage 2: can this host take the release? A report of PASS/WARN/FAIL/SKIP lines with counts,
//! in the shape of Proxmox's `pve7to8`. Any FAIL stops the upgrade before anything changes;
//! a WARN is shown and the upgrade goes on. Space is computed in bytes (Discourse's check
//! compared kilobytes with a number of megabytes). The new binary is asked itself: its
//! `--version` (a binary that does not run on this host fails here, not after the swap), its
//! `config check` against the live config file and environment (GitLab's check against the new
//! version), and its pending store migrations.

use super::files::{self, tree_bytes};
use super::{Control, Upgrader, Verified};
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Fine.
    Pass,
    /// Worth knowing; does not stop the upgrade.
    Warn,
    /// Stops the upgrade before anything changes.
    Fail,
    /// Not checked here, with the reason.
    Skip,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        })
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Stable name.
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub message: String,
}

/// The report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Every check, in order.
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, name: &str, status: Status, message: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            status,
            message: message.into(),
        });
    }

    fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }

    /// `{"total", "pass", "warn", "fail", "skip"}`.
    pub fn counts(&self) -> Value {
        json!({"total": self.checks.len(), "pass": self.count(Status::Pass),
            "warn": self.count(Status::Warn), "fail": self.count(Status::Fail),
            "skip": self.count(Status::Skip)})
    }

    /// `TOTAL 12: 10 PASS, 1 WARN, 0 FAIL, 1 SKIP`.
    pub fn summary(&self) -> String {
        format!(
            "TOTAL {}: {} PASS, {} WARN, {} FAIL, {} SKIP",
            self.checks.len(),
            self.count(Status::Pass),
            self.count(Status::Warn),
            self.count(Status::Fail),
            self.count(Status::Skip)
        )
    }

    /// Whether nothing FAILed.
    pub fn ok(&self) -> bool {
        self.count(Status::Fail) == 0
    }

    /// The report as the API and the job's result show it.
    pub fn to_json(&self, from: &str, to: &str) -> Value {
        json!({"from_version": from, "to_version": to, "ok": self.ok(),
            "counts": self.counts(), "summary": self.summary(), "checks": self.checks})
    }
}

/// How the service is restarted, or why it cannot be.
pub fn control(cfg: &super::UpgradeConfig) -> Result<Control, String> {
    if let Some(c) = &cfg.control_command {
        return if c.is_file() {
            Ok(Control::Command(c.clone()))
        } else {
            Err(format!(
                "upgrade.control_command {} does not exist",
                c.display()
            ))
        };
    }
    if Path::new("/run/systemd/system").exists() {
        return Ok(Control::Systemd(cfg.systemd_unit.clone()));
    }
    Err("no way to restart the service: systemd is not running and upgrade.control_command is unset".into())
}

/// Run `bin args…` (the new binary) with the store's URL in `DATABASE_URL`; its stdout, or
/// why it failed.
async fn ask(
    bin: &Path,
    args: &[&str],
    store_url: &str,
    config: Option<&Path>,
) -> Result<String, String> {
    let mut c = tokio::process::Command::new(bin);
    if let Some(f) = config {
        c.arg("--config").arg(f);
    }
    c.args(args)
        .env("DATABASE_URL", store_url)
        .env_remove("NPANEL_BUILD_VERSION")
        .env("NPANEL_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), c.output())
        .await
        .map_err(|_| "did not answer within 20 s".to_string())?
        .map_err(|e| format!("does not start: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        Err(format!(
            "exited with {}: {}",
            out.status,
            if err.is_empty() { "(no output)" } else { err }
        ))
    }
}

/// The nearest existing ancestor of `p` (for free space of a root not made yet).
fn existing(p: &Path) -> PathBuf {
    let mut p = p.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

/// Run every check. The release is unpacked into `staged` (removed by the caller on failure).
pub async fn run(up: &Upgrader, v: &Verified, staged: &Path) -> Report {
    let mut r = Report::default();
    let root = &up.cfg.install_root;
    // The layout first: the other checks need the unpacked release (blocking work: off the
    // runtime's threads).
    let unpacked = {
        let (t, h, s) = (v.tarball.clone(), v.sha256.clone(), staged.to_path_buf());
        tokio::task::spawn_blocking(move || files::unpack(&t, &h, &s))
            .await
            .unwrap_or_else(|e| Err(format!("unpacking stopped: {e}")))
    };
    let bin = staged.join("bin/npanel");
    match &unpacked {
        Err(e) => r.add("release_layout", Status::Fail, e.clone()),
        Ok(()) => {
            let version_file = std::fs::read_to_string(staged.join("VERSION"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            if !bin.is_file() {
                r.add(
                    "release_layout",
                    Status::Fail,
                    "the tarball has no bin/npanel",
                );
            } else if version_file != v.version {
                r.add(
                    "release_layout",
                    Status::Fail,
                    format!(
                        "its VERSION file says {version_file:?}, the signature {:?}",
                        v.version
                    ),
                );
            } else {
                r.add(
                    "release_layout",
                    Status::Pass,
                    format!("bin/npanel and VERSION {}", v.version),
                );
            }
        }
    }
    match super::apply::current_release(root) {
        Some(p) => r.add(
            "current_release",
            Status::Pass,
            format!("{} → {} (the rollback target)", root.join("current").display(), p.display()),
        ),
        None => r.add(
            "current_release",
            Status::Fail,
            format!(
                "{} is not a symlink to a release directory: nothing to roll back to (install with releases/<version>/ and current -> releases/<version>)",
                root.join("current").display()
            ),
        ),
    }
    let layout_ok = r
        .checks
        .iter()
        .all(|c| c.name != "release_layout" || c.status == Status::Pass);
    // Space: the release, the backup (store + config), twice, and the floor.
    let release_bytes = if layout_ok {
        tree_bytes(staged)
    } else {
        v.bytes * 3
    };
    let store_bytes = files::sqlite_path(&up.store_url)
        .map(|p| {
            let wal = {
                let mut w = p.clone().into_os_string();
                w.push("-wal");
                tree_bytes(Path::new(&w))
            };
            tree_bytes(&p) + wal
        })
        .unwrap_or(0);
    let config_bytes = tree_bytes(&up.cfg.config_path());
    let need = 2 * (release_bytes + store_bytes + config_bytes) + up.cfg.min_free_bytes;
    if !root.exists() {
        r.add(
            "free_space",
            Status::Fail,
            format!("the install root {} does not exist", root.display()),
        );
    } else {
        match nix::sys::statvfs::statvfs(&existing(root)) {
            Ok(s) => {
                // fsblkcnt_t and c_ulong are not u64 on every platform.
                #[allow(clippy::unnecessary_cast)]
                let free = s.blocks_available() as u64 * s.fragment_size() as u64;
                let msg = format!(
                    "{free} bytes free on {}; needs {need} (2 × ({release_bytes} release + {store_bytes} store + {config_bytes} config) + {} floor)",
                    root.display(),
                    up.cfg.min_free_bytes
                );
                r.add(
                    "free_space",
                    if free >= need {
                        Status::Pass
                    } else {
                        Status::Fail
                    },
                    msg,
                );
            }
            Err(e) => r.add("free_space", Status::Fail, format!("statvfs: {e}")),
        }
    }
    // The new binary: version, config check, pending migrations, at once.
    let cfg_file = up.cfg.config_path();
    let cfg_file = cfg_file.exists().then_some(cfg_file);
    let mut pending_count = 0usize;
    if layout_ok {
        let (ver, check, pending) = tokio::join!(
            ask(&bin, &["--version"], &up.store_url, None),
            ask(
                &bin,
                &["config", "check"],
                &up.store_url,
                cfg_file.as_deref()
            ),
            ask(
                &bin,
                &["store", "pending"],
                &up.store_url,
                cfg_file.as_deref()
            ),
        );
        match ver {
            Ok(out) if out.split_whitespace().any(|w| w == v.version) => {
                r.add("new_binary_version", Status::Pass, out)
            }
            Ok(out) => r.add(
                "new_binary_version",
                Status::Fail,
                format!("the new binary says {out:?}, not {}", v.version),
            ),
            Err(e) => r.add(
                "new_binary_version",
                Status::Fail,
                format!("the new binary {e}"),
            ),
        }
        let against = cfg_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the environment (no config file)".into());
        match check {
            Ok(_) => r.add(
                "config_check",
                Status::Pass,
                format!("the new binary accepts {against}"),
            ),
            Err(e) => r.add(
                "config_check",
                Status::Fail,
                format!("the new binary refuses {against}: {e}"),
            ),
        }
        match pending.map(|out| serde_json::from_str::<Vec<files::Migration>>(&out)) {
            Ok(Ok(list)) => {
                pending_count = list.len();
                let names: Vec<String> = list
                    .iter()
                    .map(|m| format!("{} {}", m.version, m.description))
                    .collect();
                r.add(
                    "pending_migrations",
                    Status::Pass,
                    if list.is_empty() {
                        "none: the store's schema stays as it is".to_string()
                    } else {
                        format!("{} to apply: {}", list.len(), names.join(", "))
                    },
                );
            }
            Ok(Err(e)) => r.add(
                "pending_migrations",
                Status::Fail,
                format!("the new binary's list does not parse: {e}"),
            ),
            Err(e) => r.add(
                "pending_migrations",
                Status::Fail,
                format!("the new binary cannot list them: {e}"),
            ),
        }
    } else {
        for name in ["new_binary_version", "config_check", "pending_migrations"] {
            r.add(name, Status::Skip, "the release did not unpack");
        }
    }
    // Another upgrade's detached apply still working (the queue shows it as not running while
    // the service restarts, so the queue check alone would let a second upgrade in).
    let others = other_upgrades(root, staged);
    if others.is_empty() {
        r.add("other_upgrade", Status::Pass, "none in progress");
    } else {
        r.add(
            "other_upgrade",
            Status::Fail,
            format!(
                "another upgrade is still deploying, validating or rolling back: {}",
                others.join(", ")
            ),
        );
    }
    // The queue: nothing else running (the restart would interrupt it), pending jobs noted.
    match up.queue.stats().await {
        Ok(s) => {
            let running: u32 = s.kinds.values().map(|k| k.running).sum();
            let others = running.saturating_sub(1);
            if others > 0 {
                let busy: Vec<String> = s
                    .kinds
                    .iter()
                    .filter(|(_, k)| k.running > 0)
                    .map(|(n, k)| format!("{n} {}", k.running))
                    .collect();
                r.add(
                    "queue",
                    Status::Fail,
                    format!(
                        "{others} other job(s) running ({}): pause the queue and let them finish, then upgrade",
                        busy.join(", ")
                    ),
                );
            } else if s.paused {
                r.add(
                    "queue",
                    Status::Pass,
                    format!("paused, {} pending", s.pending),
                );
            } else if s.pending > 0 {
                r.add(
                    "queue",
                    Status::Warn,
                    format!(
                        "{} job(s) pending: they will run on the new version",
                        s.pending
                    ),
                );
            } else {
                r.add("queue", Status::Pass, "drained");
            }
            r.add("redis", Status::Pass, "reachable");
        }
        Err(e) => {
            r.add("queue", Status::Skip, "Redis does not answer");
            r.add("redis", Status::Fail, format!("unreachable: {e}"));
        }
    }
    match tokio::time::timeout(Duration::from_secs(2), up.store.ping()).await {
        Ok(Ok(())) => r.add("store", Status::Pass, "reachable"),
        Ok(Err(e)) => r.add("store", Status::Fail, format!("unreachable: {e}")),
        Err(_) => r.add("store", Status::Fail, "did not answer within 2 s"),
    }
    if files::sqlite_path(&up.store_url).is_some() {
        r.add("store_backup", Status::Pass, "SQLite: VACUUM INTO a copy");
    } else if files::on_path("pg_dump") && files::on_path("pg_restore") {
        r.add(
            "store_backup",
            Status::Pass,
            "PostgreSQL: pg_dump -Fc, pg_restore on rollback",
        );
    } else if pending_count > 0 {
        r.add(
            "store_backup",
            Status::Fail,
            "PostgreSQL without pg_dump/pg_restore, and the new release migrates the store: it could not be put back",
        );
    } else {
        r.add(
            "store_backup",
            Status::Warn,
            "PostgreSQL without pg_dump/pg_restore: no store backup (no migration pending)",
        );
    }
    match files::redis_snapshot_possible(&up.redis_url) {
        Ok(()) => r.add("redis_snapshot", Status::Pass, "redis-cli --rdb"),
        Err(e) => r.add("redis_snapshot", Status::Warn, format!("no snapshot: {e}")),
    }
    match control(&up.cfg) {
        Ok(Control::Command(c)) => r.add(
            "service_control",
            Status::Pass,
            format!("{} stop / start", c.display()),
        ),
        Ok(Control::Systemd(unit)) => {
            let loaded = tokio::process::Command::new("systemctl")
                .args(["show", "-p", "LoadState", "--value", &unit])
                .output()
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "loaded")
                .unwrap_or(false);
            let uid = nix::unistd::geteuid();
            if loaded && !uid.is_root() {
                // The shipped unit runs serve as `npanel`: systemd refuses it `systemctl stop`
                // and `systemd-run` unless a polkit rule grants them (README, Upgrades). Without
                // one the deploy's stop fails and the job rolls back; say so before it starts.
                r.add(
                    "service_control",
                    Status::Warn,
                    format!("systemctl stop/start {unit} and systemd-run as uid {uid}: they need a polkit rule for this user (see the README's Upgrades), else the deploy fails and rolls back"),
                );
            } else if loaded {
                r.add(
                    "service_control",
                    Status::Pass,
                    format!("systemctl stop/start {unit}"),
                );
            } else {
                r.add(
                    "service_control",
                    Status::Fail,
                    format!("systemd has no unit {unit} (set upgrade.systemd_unit or upgrade.control_command)"),
                );
            }
        }
        Err(e) => r.add("service_control", Status::Fail, e),
    }
    r
}

/// The job directories under `<root>/upgrades` (other than the one holding `staged`) whose
/// apply process has not finished and still runs.
fn other_upgrades(root: &Path, staged: &Path) -> Vec<String> {
    let mine = staged.parent();
    let Ok(rd) = std::fs::read_dir(root.join("upgrades")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| Some(e.path().as_path()) != mine)
        .filter_map(|e| {
            let b = std::fs::read(e.path().join("state.json")).ok()?;
            let st: super::ApplyState = serde_json::from_slice(&b).ok()?;
            (st.finished.is_none() && super::apply::alive(&st))
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unfinished apply whose process runs blocks a second upgrade; a finished one, a dead
    /// one and this job's own directory do not.
    #[test]
    fn other_upgrades_in_progress_are_found() {
        let root = tempfile::tempdir().unwrap();
        let ups = root.path().join("upgrades");
        let write = |job: &str, st: &super::super::ApplyState| {
            std::fs::create_dir_all(ups.join(job)).unwrap();
            std::fs::write(
                ups.join(job).join("state.json"),
                serde_json::to_vec(st).unwrap(),
            )
            .unwrap();
        };
        let me = std::process::id();
        let running = super::super::ApplyState {
            pid: me,
            ..Default::default()
        };
        write("mine", &running);
        let staged = ups.join("mine").join("release");
        assert!(other_upgrades(root.path(), &staged).is_empty());
        write(
            "dead",
            &super::super::ApplyState {
                pid: u32::MAX / 2,
                ..Default::default()
            },
        );
        assert!(other_upgrades(root.path(), &staged).is_empty());
        write("other", &running);
        assert_eq!(
            other_upgrades(root.path(), &staged),
            vec!["other".to_string()]
        );
    }
}
