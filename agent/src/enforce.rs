//! A home made read-only, and given back (DESIGN §13): how the quota sweep enforces a disk
//! limit where the filesystem has no quotas to refuse writes.
//!
//! **Read-only**: every directory and regular file in the home loses its write bits; the
//! modes it had are recorded in `<host_root>/etc/npanel/accounts/<account>/readonly.list`
//! (one line per entry: the octal mode and the path in the home, hex-encoded, so any name
//! survives), each line written before its entry's mode changes, so a walk that stops half-way
//! can still be undone. The account can then create no file and write none of its files —
//! until it gives itself the write bits back (`chmod`), which its owner may: so the sweep makes
//! the home read-only again on every sweep while the disk is over its limit (at most an hour of
//! writes). Entries on another filesystem, and other owners' files linked from elsewhere too,
//! are left alone. **Lifted**: each
//! recorded entry gets its first recorded mode back if nobody changed it since, and the list is
//! deleted. Lifting without a list is a no-op.
//!
//! **Safety**: the walk goes from descriptors, never follows a symlink (`O_NOFOLLOW` on every
//! step), changes modes through an open descriptor of the entry itself after checking with
//! `fstat` that it is a directory or a regular file (so a swapped-in symlink, FIFO or device is
//! never touched), and stays below a depth bound.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use crate::account::AccountName;
use crate::error::{AgentError, Result};
use crate::fsx;

/// Deepest directory walked.
const MAX_DEPTH: usize = 256;
/// The record of changed modes, in the account's fragment directory.
const LIST: &str = "readonly.list";
/// Most bytes of a record read back.
const MAX_LIST: u64 = 1 << 30;

/// What making a home read-only (or lifting it) did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOnlyReport {
    pub account: AccountName,
    /// Whether the home is read-only now.
    pub read_only: bool,
    /// Entries whose mode this call changed.
    pub changed: u64,
    /// Entries left as they were on a lift because their mode was changed since.
    #[serde(default)]
    pub kept: u64,
    /// False when there was no home (nothing to do).
    pub home_found: bool,
}

fn open_nofollow(dir: &File, name: &OsStr, flags: OFlag) -> nix::Result<File> {
    openat(
        dir,
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map(File::from)
}

/// Makes `account`'s home read-only (`read_only`) or gives it its modes back.
pub fn set_read_only(
    host_root: &Path,
    home_root: &Path,
    account: &AccountName,
    read_only: bool,
) -> Result<ReadOnlyReport> {
    let base = match fsx::open_base(home_root) {
        Ok(b) => b,
        Err(AgentError::NotFound { .. }) => return Ok(no_home(account, read_only)),
        Err(e) => return Err(e),
    };
    let Some(home) = base.open_dir(account.as_str())? else {
        return Ok(no_home(account, read_only));
    };
    let frag = crate::hostfiles::account_dir(host_root, account)?;
    if read_only {
        // Every entry is written to the list before its mode changes (a journal): a walk that
        // stops half-way (an error, a crash) leaves a list a lift can still give back. A home
        // read-only already is walked again, so write bits its owner gave back are taken again.
        let fd = openat(
            &frag.file,
            LIST,
            OFlag::O_WRONLY
                | OFlag::O_APPEND
                | OFlag::O_CREAT
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| fsx::nofollow_err(&frag.path.join(LIST), e))?;
        let mut journal = File::from(fd);
        let home_meta = home
            .file
            .metadata()
            .map_err(|e| AgentError::io(&home.path, e))?;
        let (dev, owner) = (home_meta.dev(), home_meta.uid());
        let mut changed = 0;
        walk(
            &home.file,
            &home.path,
            Path::new(""),
            0,
            &mut |file, rel| {
                let meta = file.metadata()?;
                // Another filesystem (a mount inside the home), or another owner's file that
                // is also linked elsewhere (a hard link to a file outside the home), is left
                // alone.
                if meta.dev() != dev || (meta.is_file() && meta.uid() != owner && meta.nlink() > 1)
                {
                    return Ok(());
                }
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o222 != 0 {
                    journal.write_all(
                        format!("{mode:o} {}\n", hex(rel.as_os_str().as_bytes())).as_bytes(),
                    )?;
                    file.set_permissions(std::fs::Permissions::from_mode(mode & !0o222))?;
                    changed += 1;
                }
                Ok(())
            },
        )?;
        journal
            .sync_all()
            .map_err(|e| AgentError::io(frag.path.join(LIST), e))?;
        tracing::info!(account = %account, changed, "home made read-only");
        return Ok(ReadOnlyReport {
            account: account.clone(),
            read_only: true,
            changed,
            kept: 0,
            home_found: true,
        });
    }
    let existing = frag.read_file(LIST, MAX_LIST)?;
    let Some(list) = existing else {
        return Ok(ReadOnlyReport {
            account: account.clone(),
            read_only: false,
            changed: 0,
            kept: 0,
            home_found: true,
        });
    };
    let (mut changed, mut kept) = (0, 0);
    // An entry made read-only again after its owner gave the write bits back is listed more
    // than once: its first line holds the mode it had before any of this, its last the mode
    // it was taken from the last time (so the one it must still have, without write bits).
    let mut order: Vec<Vec<u8>> = Vec::new();
    let mut modes: std::collections::HashMap<Vec<u8>, (u32, u32)> = Default::default();
    for line in list.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let text = String::from_utf8_lossy(line);
        let Some((mode, path)) = text.split_once(' ') else {
            continue;
        };
        let (Ok(mode), Some(path)) = (u32::from_str_radix(mode, 8), unhex(path)) else {
            continue;
        };
        match modes.get_mut(&path) {
            Some(m) => m.1 = mode,
            None => {
                modes.insert(path.clone(), (mode, mode));
                order.push(path);
            }
        }
    }
    for path in order {
        let (first, last) = modes[&path];
        match restore_one(&home.file, Path::new(OsStr::from_bytes(&path)), first, last) {
            Ok(true) => changed += 1,
            Ok(false) => kept += 1,
            // Gone since (deleted by the owner): nothing to give back.
            Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(AgentError::io(
                    home.path.join(OsStr::from_bytes(&path)),
                    std::io::Error::from(e),
                ))
            }
        }
    }
    frag.remove_file(LIST)?;
    tracing::info!(account = %account, changed, kept, "home writable again");
    Ok(ReadOnlyReport {
        account: account.clone(),
        read_only: false,
        changed,
        kept,
        home_found: true,
    })
}

fn no_home(account: &AccountName, read_only: bool) -> ReadOnlyReport {
    ReadOnlyReport {
        account: account.clone(),
        read_only,
        changed: 0,
        kept: 0,
        home_found: false,
    }
}

/// Calls `f` with an open descriptor of the home itself and of every directory and regular
/// file below it (checked by `fstat` on that descriptor), and its path in the home.
fn walk(
    dir: &File,
    path: &Path,
    rel: &Path,
    depth: usize,
    f: &mut dyn FnMut(&File, &Path) -> std::io::Result<()>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(AgentError::UnsafePath(format!(
            "{} is nested deeper than {MAX_DEPTH} directories",
            path.display()
        )));
    }
    let mut names = Vec::new();
    {
        // Listed first and closed before going down: one descriptor per level, not two.
        let listing = dir.try_clone().map_err(|e| AgentError::io(path, e))?;
        let mut d = nix::dir::Dir::from_fd(listing.into())
            .map_err(|e| AgentError::io(path, std::io::Error::from(e)))?;
        for entry in d.iter() {
            let entry = entry.map_err(|e| AgentError::io(path, std::io::Error::from(e)))?;
            let n = entry.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(OsStr::from_bytes(n).to_os_string());
            }
        }
    }
    for name in names {
        let child_path = path.join(&name);
        let file = match open_nofollow(dir, &name, OFlag::O_RDONLY) {
            Ok(f) => f,
            // A symlink (ELOOP), or gone since the listing: left alone.
            Err(Errno::ELOOP | Errno::ENOENT | Errno::ENXIO | Errno::EACCES) => continue,
            Err(e) => return Err(AgentError::io(&child_path, std::io::Error::from(e))),
        };
        let meta = file
            .metadata()
            .map_err(|e| AgentError::io(&child_path, e))?;
        let child_rel: PathBuf = rel.join(&name);
        if meta.is_dir() {
            walk(&file, &child_path, &child_rel, depth + 1, f)?;
        } else if meta.is_file() {
            f(&file, &child_rel).map_err(|e| AgentError::io(&child_path, e))?;
        }
    }
    // The directory last, so its entries could still be opened while it was writable.
    f(dir, rel).map_err(|e| AgentError::io(path, e))
}

/// Gives `rel` (a path in the home) mode `mode` back if its mode is still `last` without the
/// write bits (as the last enforcement left it); `Ok(false)` if it was changed since.
fn restore_one(home: &File, rel: &Path, mode: u32, last: u32) -> std::result::Result<bool, Errno> {
    let mut cur = home.try_clone().map_err(|_| Errno::EBADF)?;
    let parts: Vec<&OsStr> = rel.iter().collect();
    for part in &parts {
        cur = open_nofollow(&cur, part, OFlag::O_RDONLY)?;
    }
    let meta = cur.metadata().map_err(|_| Errno::EIO)?;
    if !(meta.is_dir() || meta.is_file()) {
        return Ok(false);
    }
    if meta.mode() & 0o7777 != last & !0o222 {
        return Ok(false);
    }
    cur.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32)))?;
    Ok(true)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_through_hex() {
        let p = b"a b\n\xff/c";
        assert_eq!(unhex(&hex(p)).unwrap(), p);
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
