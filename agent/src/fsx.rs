//! Filesystem steps that never follow a symlink where an account could have
//! planted one.
//!
//! The agent runs as root inside directories that accounts control (their
//! homes). A path like `<home>/etc/example.com/passwd` walked by name would
//! follow a symlink the account put at any component, so everything below a
//! trusted base (the home root, `var/named`, `etc/npanel/accounts`) is walked
//! one component at a time from directory descriptors with `O_NOFOLLOW`
//! (`openat`, `mkdirat`, `renameat`, `unlinkat`). A symlink, or a file where
//! a directory belongs, is refused with [`AgentError::UnsafePath`]; ownership
//! and modes are set on the opened descriptor (`fchown`, `fchmod`), so they
//! land on exactly the object that was checked.
//!
//! Files are written atomically: a fresh temp file (`O_EXCL`) in the same
//! directory, `fsync`, `renameat` over the name (which replaces a symlink
//! rather than following it), `fsync` of the directory.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::{AgentError, Result};

/// An open directory and the path it was reached by (for messages).
#[derive(Debug)]
pub struct DirHandle {
    pub file: File,
    pub path: PathBuf,
}

/// Maps an errno from a no-follow step on `path` to a typed error.
pub fn nofollow_err(path: &Path, e: Errno) -> AgentError {
    match e {
        Errno::ELOOP => AgentError::UnsafePath(format!(
            "{} is a symlink: refused, not followed",
            path.display()
        )),
        Errno::ENOTDIR => AgentError::UnsafePath(format!(
            "{} is not a directory (or a component of it is not)",
            path.display()
        )),
        Errno::ENOENT => AgentError::NotFound {
            what: path.display().to_string(),
        },
        other => AgentError::io(path, std::io::Error::from(other)),
    }
}

/// Gives `name` in `dir` to `uid:gid` without following it if it is a symlink.
pub fn chown_at(dir: &File, name: &OsStr, uid: u32, gid: u32) -> nix::Result<()> {
    nix::unistd::fchownat(
        dir,
        name,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// Opens a trusted directory by path (symlinks followed: this is the
/// admin-configured part, like `home_root` or `<host_root>/var/named`).
pub fn open_base(path: &Path) -> Result<DirHandle> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT => AgentError::NotFound {
            what: path.display().to_string(),
        },
        other => AgentError::io(path, std::io::Error::from(other)),
    })?;
    Ok(DirHandle {
        file: File::from(fd),
        path: path.to_path_buf(),
    })
}

/// Creates a trusted directory and its parents (mode for the ones created)
/// and opens it.
pub fn ensure_base(path: &Path, mode: u32) -> Result<DirHandle> {
    if !path.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| AgentError::io(path, e))?;
    }
    open_base(path)
}

impl DirHandle {
    fn child_path(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Opens the subdirectory `name` without following a symlink; `None` if
    /// it does not exist.
    pub fn open_dir(&self, name: &(impl AsRef<OsStr> + ?Sized)) -> Result<Option<DirHandle>> {
        let name = name.as_ref();
        let path = self.child_path(name);
        match openat(
            &self.file,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(DirHandle {
                file: File::from(fd),
                path,
            })),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(nofollow_err(&path, e)),
        }
    }

    /// Creates (mode `mode`, before umask) or opens the subdirectory `name`,
    /// never following a symlink. Returns the handle and whether it was
    /// created.
    pub fn ensure_dir(&self, name: &str, mode: u32) -> Result<(DirHandle, bool)> {
        let path = self.child_path(name);
        let created = match mkdirat(&self.file, name, Mode::from_bits_truncate(mode)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(nofollow_err(&path, e)),
        };
        match self.open_dir(name)? {
            Some(d) => Ok((d, created)),
            None => Err(AgentError::Io {
                path,
                source: std::io::Error::other("directory vanished while it was being opened"),
            }),
        }
    }

    /// Creates an empty regular file `name` if missing (never truncating an
    /// existing one), never following a symlink and never blocking on a
    /// FIFO. Returns the open file and whether it was created. An existing
    /// file must be a regular file with one link (a hard link could make a
    /// later `fchown` hand over a file from elsewhere).
    pub fn ensure_file(&self, name: &str, mode: u32) -> Result<(File, bool)> {
        let path = self.child_path(name);
        let base = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let (fd, created) = match openat(
            &self.file,
            name,
            base | OFlag::O_CREAT | OFlag::O_EXCL,
            Mode::from_bits_truncate(mode),
        ) {
            Ok(fd) => (fd, true),
            Err(Errno::EEXIST) => (
                openat(&self.file, name, base, Mode::empty())
                    .map_err(|e| nofollow_err(&path, e))?,
                false,
            ),
            Err(e) => return Err(nofollow_err(&path, e)),
        };
        let file = File::from(fd);
        if !created {
            let m = file.metadata().map_err(|e| AgentError::io(&path, e))?;
            if !m.is_file() {
                return Err(AgentError::UnsafePath(format!(
                    "{} is not a regular file",
                    path.display()
                )));
            }
            if m.nlink() > 1 {
                return Err(AgentError::UnsafePath(format!(
                    "{} has {} hard links: refused (it could be a file from elsewhere)",
                    path.display(),
                    m.nlink()
                )));
            }
        }
        Ok((file, created))
    }

    /// Reads the regular file `name`; `None` if it does not exist. A symlink
    /// is refused.
    pub fn read_file(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let path = self.child_path(name);
        let fd = match openat(
            &self.file,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(nofollow_err(&path, e)),
        };
        let file = File::from(fd);
        let m = file.metadata().map_err(|e| AgentError::io(&path, e))?;
        if !m.is_file() {
            return Err(AgentError::UnsafePath(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let mut buf = Vec::new();
        file.take(max)
            .read_to_end(&mut buf)
            .map_err(|e| AgentError::io(&path, e))?;
        Ok(Some(buf))
    }

    /// Reads the regular file `name` like [`DirHandle::read_file`], also
    /// refusing a file with more than one hard link (it could be a file from
    /// elsewhere, like `/etc/shadow`, whose content must not be copied into
    /// an account's files) and one longer than `max` bytes.
    pub fn read_private_file(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let path = self.child_path(name);
        let fd = match openat(
            &self.file,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(nofollow_err(&path, e)),
        };
        let file = File::from(fd);
        let m = file.metadata().map_err(|e| AgentError::io(&path, e))?;
        if !m.is_file() {
            return Err(AgentError::UnsafePath(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        if m.nlink() > 1 {
            return Err(AgentError::UnsafePath(format!(
                "{} has {} hard links: refused (it could be a file from elsewhere)",
                path.display(),
                m.nlink()
            )));
        }
        if m.len() > max {
            return Err(AgentError::InvalidRequest(format!(
                "{} is larger than {max} bytes",
                path.display()
            )));
        }
        let mut buf = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| AgentError::io(&path, e))?;
        if buf.len() as u64 > max {
            return Err(AgentError::InvalidRequest(format!(
                "{} is larger than {max} bytes",
                path.display()
            )));
        }
        Ok(Some(buf))
    }

    /// Writes `name` atomically (temp file, fsync, rename, fsync of the
    /// directory) with mode `mode`. The rename replaces whatever `name` was,
    /// a symlink included, without following it.
    pub fn write_atomic(&self, name: &str, content: &[u8], mode: u32) -> Result<()> {
        self.write_atomic_owned(name, content, mode, None)
    }

    /// [`DirHandle::write_atomic`], the temp file given the owner `uid:gid`
    /// (`fchown` on its descriptor) before it is renamed over `name`.
    pub fn write_atomic_owned(
        &self,
        name: &str,
        content: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<()> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tmp_path = self.child_path(&tmp);
        let fd = openat(
            &self.file,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(|e| nofollow_err(&tmp_path, e))?;
        let mut file = File::from(fd);
        let written = (|| {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            }
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.write_all(content)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = unlinkat(&self.file, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(AgentError::io(&tmp_path, e));
        }
        drop(file);
        if let Err(e) = renameat(&self.file, tmp.as_str(), &self.file, name) {
            let _ = unlinkat(&self.file, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(AgentError::io(
                self.child_path(name),
                std::io::Error::from(e),
            ));
        }
        let _ = self.file.sync_all();
        Ok(())
    }

    /// Writes `name` atomically unless it already holds exactly `content`
    /// with mode `mode`. Returns whether it wrote.
    pub fn write_if_changed(&self, name: &str, content: &[u8], mode: u32) -> Result<bool> {
        let current = match self.read_file(name, content.len() as u64 + 1) {
            Ok(c) => c,
            // a symlink or a non-file there: replace it (rename does not follow)
            Err(AgentError::UnsafePath(_)) => None,
            Err(e) => return Err(e),
        };
        if current.as_deref() == Some(content) && self.mode_of(name) == Some(mode) {
            return Ok(false);
        }
        self.write_atomic(name, content, mode)?;
        Ok(true)
    }

    fn mode_of(&self, name: &str) -> Option<u32> {
        nix::sys::stat::fstatat(&self.file, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| st.st_mode & 0o7777)
    }

    /// Removes the file (or symlink) `name`; false if it did not exist. A
    /// directory is refused.
    pub fn remove_file(&self, name: &str) -> Result<bool> {
        let path = self.child_path(name);
        match unlinkat(&self.file, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => {
                let _ = self.file.sync_all();
                Ok(true)
            }
            Err(Errno::ENOENT) => Ok(false),
            Err(Errno::EISDIR) | Err(Errno::EPERM)
                if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) =>
            {
                Err(AgentError::UnsafePath(format!(
                    "{} is a directory",
                    path.display()
                )))
            }
            Err(e) => Err(AgentError::io(&path, std::io::Error::from(e))),
        }
    }

    /// Whether `name` is a directory (not following a symlink): `None` if
    /// it does not exist.
    pub fn is_dir_entry(&self, name: &str) -> Result<Option<bool>> {
        match nix::sys::stat::fstatat(&self.file, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(
                nix::sys::stat::SFlag::from_bits_truncate(st.st_mode & nix::libc::S_IFMT)
                    == nix::sys::stat::SFlag::S_IFDIR,
            )),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(nofollow_err(&self.child_path(name), e)),
        }
    }

    /// Removes the directory tree `name` from this directory, walking it
    /// from directory descriptors (`openat` with `O_NOFOLLOW`, `unlinkat`):
    /// a symlink inside is removed, never followed. A symlink or a
    /// non-directory in `name`'s place is refused. `false` if it did not
    /// exist.
    pub fn remove_tree(&self, name: &str) -> Result<bool> {
        let removed = remove_tree_at(&self.file, &self.child_path(name), OsStr::new(name), 0)?;
        if removed {
            let _ = self.file.sync_all();
        }
        Ok(removed)
    }
}

/// Deepest directory [`DirHandle::remove_tree`] descends into.
const MAX_TREE_DEPTH: usize = 256;

fn remove_tree_at(parent: &File, path: &Path, name: &OsStr, depth: usize) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    if depth > MAX_TREE_DEPTH {
        return Err(AgentError::UnsafePath(format!(
            "{} is nested deeper than {MAX_TREE_DEPTH} directories: refused",
            path.display()
        )));
    }
    let fd = match openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(nofollow_err(path, e)),
    };
    let dir = File::from(fd);
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    {
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
    for n in &names {
        let child = path.join(n);
        match unlinkat(&dir, n.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::EISDIR) => {
                remove_tree_at(&dir, &child, n, depth + 1)?;
            }
            Err(e) => return Err(AgentError::io(&child, std::io::Error::from(e))),
        }
    }
    drop(dir);
    match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(true),
        Err(e) => Err(AgentError::io(path, std::io::Error::from(e))),
    }
}
