//! Archiving a home: `<host_root>/backups/<account>-<UTC>.tar.zst`.
//!
//! The archive is a tar stream (GNU headers: long names, big files)
//! compressed with zstd (level 3). Its entries are `manifest.json` first
//! when the caller gave one, then the home under `homedir/` (the directory
//! name cPanel's `cpmove` archives use), with modes, owners and mtimes.
//!
//! The home belongs to the account, who can change it while the agent (root)
//! reads it, so the walk never resolves a path by name: it goes from
//! directory descriptor to directory descriptor with `O_NOFOLLOW`
//! (`openat`), looks at each entry with `fstatat(AT_SYMLINK_NOFOLLOW)`, and
//! takes the header of a file from the descriptor it then reads. A symlink
//! is stored as a symlink (its target is never read, wherever it points);
//! sockets, FIFOs and devices, directories on another filesystem and
//! directories nested deeper than [`MAX_DEPTH`] are left out and listed in
//! the answer's `skipped`. A file that shrinks while it is read is padded
//! with zeros to the size its header announced, so the archive stays valid.
//!
//! The archive is written to a hidden temp file (mode 0600) in the backups
//! directory and only linked under its final name when complete, so a name
//! that exists is always a whole archive; two backups in the same second get
//! `-2`, `-3`, ... suffixes.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{linkat, unlinkat, UnlinkatFlags};
use serde_json::Value;
use tar::{EntryType, Header, HeaderMode};

use crate::account::AccountName;
use crate::error::{AgentError, Result};
use crate::fsx::{self, DirHandle};
use crate::protocol::HomeBackup;

/// Directories nested deeper than this are left out.
pub const MAX_DEPTH: usize = 256;
/// zstd level of the archives.
pub const ZSTD_LEVEL: i32 = 3;
/// Entries listed in `skipped` at most.
const MAX_SKIPPED_LISTED: usize = 100;
/// The directory of the home inside the archive.
pub const HOME_PREFIX: &str = "homedir";

/// `<host_root>/backups`.
pub fn backups_dir(host_root: &Path) -> PathBuf {
    host_root.join("backups")
}

struct Walk {
    files: u64,
    dirs: u64,
    symlinks: u64,
    source_bytes: u64,
    skipped: Vec<String>,
    skipped_total: usize,
    dev: u64,
}

impl Walk {
    fn skip(&mut self, rel: &Path, why: &str) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_SKIPPED_LISTED {
            let rel = rel.strip_prefix(HOME_PREFIX).unwrap_or(rel);
            self.skipped.push(format!("{} ({why})", rel.display()));
        }
    }
}

/// Reads exactly `size` bytes: the file's first `size` bytes, then zeros if
/// it ended early.
struct Exact<R> {
    inner: R,
    remaining: u64,
    ended: bool,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.remaining) as usize;
        if want == 0 {
            return Ok(0);
        }
        if !self.ended {
            let n = self.inner.read(&mut buf[..want])?;
            if n > 0 {
                self.remaining -= n as u64;
                return Ok(n);
            }
            self.ended = true;
        }
        buf[..want].fill(0);
        self.remaining -= want as u64;
        Ok(want)
    }
}

fn tar_err(path: &Path, e: io::Error) -> AgentError {
    AgentError::io(path, e)
}

/// The names in an open directory, sorted (`.` and `..` left out).
fn list(dir: &DirHandle) -> Result<Vec<CString>> {
    let fd = openat(
        &dir.file,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| AgentError::io(&dir.path, e.into()))?;
    let mut d = nix::dir::Dir::from_fd(fd).map_err(|e| AgentError::io(&dir.path, e.into()))?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(|e| AgentError::io(&dir.path, e.into()))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        names.push(name.to_owned());
    }
    names.sort();
    Ok(names)
}

fn walk<W: io::Write>(
    b: &mut tar::Builder<W>,
    dir: &DirHandle,
    rel: &Path,
    depth: usize,
    w: &mut Walk,
) -> Result<()> {
    let meta = dir
        .file
        .metadata()
        .map_err(|e| AgentError::io(&dir.path, e))?;
    let mut h = Header::new_gnu();
    h.set_metadata_in_mode(&meta, HeaderMode::Complete);
    h.set_entry_type(EntryType::Directory);
    h.set_size(0);
    b.append_data(&mut h, rel, io::empty())
        .map_err(|e| tar_err(&dir.path, e))?;
    w.dirs += 1;
    for name in list(dir)? {
        let os_name = OsStr::from_bytes(name.to_bytes());
        let child_rel = rel.join(os_name);
        let child_path = dir.path.join(os_name);
        let st = match fstatat(&dir.file, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // gone since the listing
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(AgentError::io(&child_path, e.into())),
        };
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFDIR {
            if st.st_dev != w.dev {
                w.skip(&child_rel, "another filesystem");
                continue;
            }
            if depth + 1 > MAX_DEPTH {
                w.skip(&child_rel, "nested too deep");
                continue;
            }
            match dir.open_dir(os_name) {
                Ok(Some(child)) => walk(b, &child, &child_rel, depth + 1, w)?,
                Ok(None) => continue,
                // swapped for a symlink or a file since the fstatat: not followed
                Err(AgentError::UnsafePath(_)) => w.skip(&child_rel, "changed while read"),
                Err(e) => return Err(e),
            }
        } else if kind == SFlag::S_IFREG {
            let fd = match openat(
                &dir.file,
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => continue,
                Err(Errno::ELOOP) => {
                    w.skip(&child_rel, "changed while read");
                    continue;
                }
                Err(e) => return Err(AgentError::io(&child_path, e.into())),
            };
            let file = File::from(fd);
            let m = file
                .metadata()
                .map_err(|e| AgentError::io(&child_path, e))?;
            if !m.is_file() {
                w.skip(&child_rel, "changed while read");
                continue;
            }
            let mut h = Header::new_gnu();
            h.set_metadata_in_mode(&m, HeaderMode::Complete);
            let size = m.len();
            let data = Exact {
                inner: file.take(size),
                remaining: size,
                ended: false,
            };
            b.append_data(&mut h, &child_rel, data)
                .map_err(|e| tar_err(&child_path, e))?;
            w.files += 1;
            w.source_bytes = w.source_bytes.saturating_add(size);
        } else if kind == SFlag::S_IFLNK {
            let target = match nix::fcntl::readlinkat(&dir.file, name.as_c_str()) {
                Ok(t) => t,
                Err(Errno::ENOENT) => continue,
                Err(Errno::EINVAL) => {
                    w.skip(&child_rel, "changed while read");
                    continue;
                }
                Err(e) => return Err(AgentError::io(&child_path, e.into())),
            };
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Symlink);
            h.set_mode(st.st_mode & 0o7777);
            h.set_uid(u64::from(st.st_uid));
            h.set_gid(u64::from(st.st_gid));
            h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
            h.set_size(0);
            b.append_link(&mut h, &child_rel, Path::new(&target))
                .map_err(|e| tar_err(&child_path, e))?;
            w.symlinks += 1;
        } else {
            let what = if kind == SFlag::S_IFSOCK {
                "socket"
            } else if kind == SFlag::S_IFIFO {
                "fifo"
            } else {
                "device"
            };
            w.skip(&child_rel, what);
        }
    }
    Ok(())
}

/// Archives `<home_root>/<account>` into `<host_root>/backups/`.
pub fn backup_home(
    host_root: &Path,
    home_root: &Path,
    account: &AccountName,
    manifest: Option<&Value>,
) -> Result<HomeBackup> {
    let root = fsx::open_base(home_root)?;
    let home = root
        .open_dir(account.as_str())?
        .ok_or_else(|| AgentError::NotFound {
            what: format!("home of {account} ({})", root.path.join(account).display()),
        })?;
    let dev = {
        use std::os::unix::fs::MetadataExt;
        home.file
            .metadata()
            .map_err(|e| AgentError::io(&home.path, e))?
            .dev()
    };
    let backups = fsx::ensure_base(&backups_dir(host_root), 0o700)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = format!(
        ".{account}-{stamp}.partial-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let tmp_path = backups.path.join(&tmp);
    let fd = openat(
        &backups.file,
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| fsx::nofollow_err(&tmp_path, e))?;
    let file = File::from(fd);
    let mut w = Walk {
        files: 0,
        dirs: 0,
        symlinks: 0,
        source_bytes: 0,
        skipped: Vec::new(),
        skipped_total: 0,
        dev,
    };
    let written = (|| -> Result<File> {
        let enc = zstd::stream::write::Encoder::new(file, ZSTD_LEVEL)
            .map_err(|e| AgentError::io(&tmp_path, e))?;
        let mut b = tar::Builder::new(enc);
        if let Some(m) = manifest {
            let text = serde_json::to_vec_pretty(m)
                .map_err(|e| AgentError::Internal(format!("encoding the manifest: {e}")))?;
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(text.len() as u64);
            h.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
            b.append_data(&mut h, "manifest.json", text.as_slice())
                .map_err(|e| AgentError::io(&tmp_path, e))?;
        }
        walk(&mut b, &home, Path::new(HOME_PREFIX), 0, &mut w)?;
        let enc = b.into_inner().map_err(|e| AgentError::io(&tmp_path, e))?;
        let file = enc.finish().map_err(|e| AgentError::io(&tmp_path, e))?;
        file.sync_all().map_err(|e| AgentError::io(&tmp_path, e))?;
        Ok(file)
    })();
    let remove_tmp = || {
        let _ = unlinkat(&backups.file, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    };
    let file = match written {
        Ok(f) => f,
        Err(e) => {
            remove_tmp();
            return Err(e);
        }
    };
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    // link under the final name without ever replacing an existing archive
    let mut n = 1;
    let name = loop {
        let name: OsString = if n == 1 {
            format!("{account}-{stamp}.tar.zst").into()
        } else {
            format!("{account}-{stamp}-{n}.tar.zst").into()
        };
        match linkat(
            &backups.file,
            tmp.as_str(),
            &backups.file,
            name.as_os_str(),
            AtFlags::empty(),
        ) {
            Ok(()) => break name,
            Err(Errno::EEXIST) if n < 1000 => n += 1,
            Err(e) => {
                remove_tmp();
                return Err(AgentError::io(backups.path.join(&name), e.into()));
            }
        }
    };
    remove_tmp();
    let _ = backups.file.sync_all();
    if w.skipped_total > w.skipped.len() {
        let more = w.skipped_total - w.skipped.len();
        w.skipped.push(format!("... and {more} more"));
    }
    let path = backups.path.join(&name);
    tracing::info!(
        account = %account,
        path = %path.display(),
        bytes,
        files = w.files,
        skipped = w.skipped_total,
        "home backed up"
    );
    Ok(HomeBackup {
        account: account.clone(),
        path: path.display().to_string(),
        bytes,
        source_bytes: w.source_bytes,
        files: w.files,
        dirs: w.dirs,
        symlinks: w.symlinks,
        skipped: w.skipped,
    })
}
