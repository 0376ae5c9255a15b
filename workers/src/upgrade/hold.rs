//! The deploy window's hold: `<data_dir>/upgrade.hold`, holding the apply process's pid, exists
//! while the service is stopped for a swap (deploy's stop → swap → migrate, rollback's stop →
//! swap back → store restore) and is removed just before each start.
//!
//! Why: under socket activation (`npanel.socket`) any connection during that window makes
//! systemd start the service again, and the apply process cannot stop it. Without the hold that
//! start would run the old binary against a store being migrated, or write to a store being
//! put back. With it, a `serve` or `worker` that finds a live holder waits for the hold to go
//! (connections wait in the socket's backlog meanwhile) and then starts over from the binary
//! `current` points at (see `npanel`'s `reload::wait_out_upgrade`). A hold whose pid is gone
//! (an apply process that was killed), or now belongs to a process that is not an
//! `upgrade-apply` (the pid was reused), is stale and ignored: a start never waits forever.

use std::path::{Path, PathBuf};

/// The hold's file name in the data dir.
pub const HOLD_FILE: &str = "upgrade.hold";

/// The hold, removed when released or dropped.
#[derive(Debug)]
pub struct Hold {
    path: PathBuf,
}

impl Hold {
    /// Write `<data_dir>/upgrade.hold` with this process's pid (a new file renamed into place).
    pub fn take(data_dir: &Path) -> Result<Hold, String> {
        let path = data_dir.join(HOLD_FILE);
        let tmp = data_dir.join(format!("{HOLD_FILE}.{}", std::process::id()));
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("cannot write {}: {e}", path.display())
            })?;
        Ok(Hold { path })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pid of a live `upgrade-apply` process (not this one) holding `<data_dir>`'s hold, if any.
pub fn holder(data_dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(data_dir.join(HOLD_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (pid > 0 && pid != std::process::id() && super::apply::pid_alive(pid) && is_apply(pid))
        .then_some(pid)
}

/// Whether `pid` runs `upgrade-apply` (one of its arguments). Where `/proc` cannot say (another
/// user's process on a hardened `/proc`), it is taken to be one: waiting is the safe side.
fn is_apply(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline.split(|b| *b == 0).any(|a| a == b"upgrade-apply"),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_holder_is_seen_and_a_released_or_dead_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(holder(d.path()), None);
        // This process's own hold is not a holder for it (the apply process never waits on
        // itself) ...
        let h = Hold::take(d.path()).unwrap();
        assert!(h.path().exists());
        assert_eq!(holder(d.path()), None);
        drop(h);
        assert!(!d.path().join(HOLD_FILE).exists());
        // ... another live `upgrade-apply`'s is ...
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :", "upgrade-apply"])
            .spawn()
            .unwrap();
        // Until it has exec'd, its arguments are this test binary's.
        while !is_apply(child.id()) {
            std::thread::yield_now();
        }
        std::fs::write(d.path().join(HOLD_FILE), child.id().to_string()).unwrap();
        assert_eq!(holder(d.path()), Some(child.id()));
        // ... a live process that is not one (its pid reused) is not ...
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(d.path().join(HOLD_FILE), other.id().to_string()).unwrap();
        assert_eq!(holder(d.path()), None);
        other.kill().unwrap();
        other.wait().unwrap();
        // ... and a dead one's is stale.
        std::fs::write(d.path().join(HOLD_FILE), child.id().to_string()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(holder(d.path()), None);
    }
}
