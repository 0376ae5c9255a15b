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

    /// Writes `name` atomically (temp file, fsync, rename, fsync of the
    /// directory) with mode `mode`. The rename replaces whatever `name` was,
    /// a symlink included, without following it.
    pub fn write_atomic(&self, name: &str, content: &[u8], mode: u32) -> Result<()> {
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
}
