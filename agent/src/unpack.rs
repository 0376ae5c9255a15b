//! Unpacking an account archive into fresh directories, safely (DESIGN §12).
//!
//! A restore reads archives nobody here wrote: a cPanel `cpmove` (`.tar.gz`, `.tar`, a
//! `homedir.tar` inside it) or nPanel's own `.tar.zst`. The archive is unpacked in **one
//! streaming pass** (optionally after a headers-only pass that counts it, for progress): the
//! home's entries (`homedir/…`) go into `home`, everything else (`cp/USER`,
//! `mysql/…`, `manifest.json`, …) into `meta`, both fresh directories the caller swaps in or
//! throws away (so a failed or cancelled restore changes nothing of the account).
//!
//! # What is refused, and how
//! Every entry is written from directory descriptors with `O_NOFOLLOW` (`mkdirat`, `openat`
//! with `O_EXCL`, `symlinkat`, `linkat`), never by path, so no entry can reach outside its
//! directory through a symlink another entry made. Entries that could not be restored as they
//! are are **skipped and listed** with the reason, never fatal:
//! - a path that is absolute or climbs with `..`;
//! - a path through a symlink the archive made (`O_NOFOLLOW` refuses it);
//! - a symlink whose target leaves the tree: targets must be `../` steps followed by plain
//!   names (the form `ln -s` makes) and climb no higher than the tree's top; an absolute
//!   target inside the archive's own home (`source_home`) is made relative, any other is
//!   refused. By induction every symlink then resolves inside the tree;
//! - a hard link to anything but a regular file unpacked before it in the same tree;
//! - devices, FIFOs and sockets;
//! - setuid and setgid bits (the file is kept, the bits are removed: listed as well).
//!
//! What **fails** the unpack: more uncompressed bytes than `max_bytes` (checked against each
//! entry's announced size before a byte of it is written, so a bomb fails early), more entries
//! than `max_entries`, a corrupt archive, a cancel, and I/O errors.
//!
//! # Layout
//! A wrapper directory (`cpmove-USER/`, `backup-…_USER/`) and leading `./` are dropped.
//! Then `homedir/X` is the home's `X`; `homedir.tar` is unpacked into the home as it streams
//! past; anything else is metadata.
//!
//! Ownership: with `owner` set (the agent, as root) every object is given to the account
//! (`fchown` on the descriptor, `AT_SYMLINK_NOFOLLOW` for links); without it (the embedded
//! host, unprivileged) objects stay the caller's. Directory modes and times are applied last,
//! deepest first, so a read-only directory in the archive does not stop its own contents.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{futimens, mkdirat, Mode};
use nix::sys::time::TimeSpec;
use nix::unistd::{linkat, symlinkat, unlinkat, UnlinkatFlags};
use serde::{Deserialize, Serialize};
use tar::EntryType;

/// Why an unpack stopped.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive holds more than the bound (a bomb, or an account over its package).
    #[error("the archive unpacks to more than {limit} bytes (the account's disk limit): stopped before writing past it")]
    TooLarge {
        /// The bound, in bytes.
        limit: u64,
    },
    /// More entries than the bound.
    #[error("the archive holds more than {limit} entries: stopped")]
    TooManyEntries {
        /// The bound.
        limit: u64,
    },
    /// Not an archive we can read, or cut short.
    #[error("the archive cannot be read: {0}")]
    Corrupt(String),
    /// The caller cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Reading the archive or writing the tree failed.
    #[error("{path}: {source}")]
    Io {
        /// What was being read or written.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: impl Into<PathBuf>, e: impl Into<io::Error>) -> UnpackError {
    UnpackError::Io {
        path: path.into(),
        source: e.into(),
    }
}

/// How the archive's bytes are compressed, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`.tar.gz`, cPanel's usual form).
    Gzip,
    /// zstd (nPanel's `.tar.zst`).
    Zstd,
}

impl Compression {
    /// Recognises gzip and zstd by their magic numbers; anything else is read as a plain tar.
    pub fn detect(first: &[u8]) -> Compression {
        if first.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if first.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Bounds and ownership of an unpack.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnpackOptions {
    /// Owner given to everything written (`None`: left as the caller).
    pub owner: Option<(u32, u32)>,
    /// Most uncompressed bytes of file content, home and metadata together.
    pub max_bytes: u64,
    /// Most entries.
    pub max_entries: u64,
    /// The home's path on the server the archive came from (`/home/alice`): absolute symlink
    /// targets inside it are made relative.
    pub source_home: Option<PathBuf>,
    /// Read the archive's headers once before unpacking (inflating, writing nothing), so the
    /// home's file count and bytes are known from the start: a progress that follows time
    /// needs them, because creating a file can cost as much as writing a megabyte.
    pub scan_first: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            owner: None,
            max_bytes: u64::MAX,
            max_entries: 10_000_000,
            source_home: None,
            scan_first: false,
        }
    }
}

/// Counters another thread reads while the unpack runs (the job's progress).
#[derive(Debug, Default)]
pub struct UnpackProgress {
    /// Bytes of the archive file read so far (of its size on disk: the honest percentage).
    pub archive_read: AtomicU64,
    /// Files written so far (the home's and the metadata's).
    pub files: AtomicU64,
    /// Bytes of file content written so far.
    pub bytes: AtomicU64,
    /// With [`UnpackOptions::scan_first`]: bytes of the archive read by the scan so far.
    pub scan_read: AtomicU64,
    /// Files and their bytes the scan found, the home's and the metadata's (so far, then in
    /// all).
    pub total_files: AtomicU64,
    pub total_bytes: AtomicU64,
    /// The scan is over: the totals are the archive's.
    pub scanned: AtomicBool,
}

/// An entry that was not restored as it was, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The entry's path in the archive.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// What an unpack wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unpacked {
    /// Regular files written into the home.
    pub home_files: u64,
    /// Their bytes.
    pub home_bytes: u64,
    /// Directories, symlinks and hard links made in the home.
    pub home_dirs: u64,
    /// Symlinks made in the home.
    pub home_symlinks: u64,
    /// Hard links made in the home.
    pub home_hardlinks: u64,
    /// Metadata files written (`cp/USER`, `mysql/…`, …).
    pub meta_files: u64,
    /// Their bytes.
    pub meta_bytes: u64,
    /// Whether the home came as a `homedir.tar` inside the archive.
    pub nested_home_tar: bool,
    /// The compression found.
    pub compression: Option<Compression>,
    /// Entries not restored as they were.
    pub skipped: Vec<Skipped>,
}

/// Called once per file written into the home: its path in the home and its size.
pub type OnFile<'a> = &'a mut dyn FnMut(&Path, u64);

/// Unpack `archive` into `home` and `meta` (existing, empty directories). See the module
/// docs for what is refused and what fails.
pub fn unpack(
    archive: &Path,
    home: &Path,
    meta: &Path,
    opts: &UnpackOptions,
    progress: &UnpackProgress,
    cancel: &AtomicBool,
    on_file: OnFile<'_>,
) -> Result<Unpacked, UnpackError> {
    let file = open_archive(archive)?;
    if opts.scan_first {
        scan(&file, archive, opts, progress, cancel)?;
    }
    let (compression, mut stream) = open(&file, archive, opts, &progress.archive_read)?;
    let mut u = Unpacker {
        home: Tree::open(home, opts.owner)?,
        meta: Tree::open(meta, opts.owner)?,
        opts,
        progress,
        cancel,
        on_file,
        entries: 0,
        total: 0,
        buf: vec![0u8; CHUNK],
        out: Unpacked {
            compression: Some(compression),
            ..Unpacked::default()
        },
    };
    u.archive(&mut stream, Place::Top)?;
    u.home.finish()?;
    u.meta.finish()?;
    Ok(u.out)
}

/// The archive, opened once without following a symlink in its place (an account could swap
/// its own archive for a link to another's) and without blocking on a FIFO; it must be a
/// regular file. Both passes read this descriptor.
fn open_archive(archive: &Path) -> Result<File, UnpackError> {
    let fd = nix::fcntl::open(
        archive,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP => UnpackError::Corrupt(format!(
            "{} is a symlink: refused, not followed",
            archive.display()
        )),
        other => io_err(archive, other),
    })?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| io_err(archive, e))?;
    if !meta.is_file() {
        return Err(UnpackError::Corrupt(format!(
            "{} is not a regular file",
            archive.display()
        )));
    }
    Ok(file)
}

/// Decompressed bytes a pass may read past the content bound: headers, padding, metadata
/// entries the tar reader holds whole (long names, PAX).
const HEADER_ALLOWANCE: u64 = 64 << 20;

/// The archive's decompressed stream from its start, its bytes read counted in `counter`, and
/// its decompressed bytes bounded (a bomb, or a giant header read whole, stops early).
fn open<'a>(
    file: &File,
    archive: &Path,
    opts: &UnpackOptions,
    counter: &'a AtomicU64,
) -> Result<(Compression, Box<dyn Read + 'a>), UnpackError> {
    use std::io::Seek;
    let mut file = file.try_clone().map_err(|e| io_err(archive, e))?;
    file.rewind().map_err(|e| io_err(archive, e))?;
    let mut reader = BufReader::with_capacity(
        256 * 1024,
        Counting {
            inner: file,
            counter,
        },
    );
    let first = {
        use std::io::BufRead;
        reader.fill_buf().map_err(|e| io_err(archive, e))?.to_vec()
    };
    let compression = Compression::detect(&first);
    let stream: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader).map_err(|e| io_err(archive, e))?,
        ),
    };
    let limit = opts.max_bytes.saturating_add(HEADER_ALLOWANCE);
    Ok((
        compression,
        Box::new(Bounded {
            inner: stream,
            left: limit,
        }),
    ))
}

/// Fails a read past `left` decompressed bytes (reported as [`UnpackError::TooLarge`]).
struct Bounded<R> {
    inner: R,
    left: u64,
}

/// The message a [`Bounded`] read fails with, recognised when mapping errors.
const BOUND_HIT: &str = "decompressed past the bound";

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other(BOUND_HIT));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A read error of a pass: the bound, or a corrupt archive.
fn read_err(e: impl std::fmt::Display, opts: &UnpackOptions) -> UnpackError {
    let msg = e.to_string();
    if msg.contains(BOUND_HIT) {
        UnpackError::TooLarge {
            limit: opts.max_bytes,
        }
    } else {
        UnpackError::Corrupt(msg)
    }
}

/// The headers-only pass of [`UnpackOptions::scan_first`]: counts the home's regular files and
/// their bytes into `progress` (a `homedir.tar` inside included), writing nothing.
fn scan(
    file: &File,
    archive: &Path,
    opts: &UnpackOptions,
    progress: &UnpackProgress,
    cancel: &AtomicBool,
) -> Result<(), UnpackError> {
    fn walk(
        stream: &mut dyn Read,
        place: Place,
        opts: &UnpackOptions,
        progress: &UnpackProgress,
        cancel: &AtomicBool,
        entries: &mut u64,
    ) -> Result<(), UnpackError> {
        let mut ar = tar::Archive::new(stream);
        for entry in ar.entries().map_err(|e| read_err(e, opts))? {
            if cancel.load(Ordering::Relaxed) {
                return Err(UnpackError::Cancelled);
            }
            let mut entry = entry.map_err(|e| read_err(e, opts))?;
            *entries += 1;
            if *entries > opts.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: opts.max_entries,
                });
            }
            let Some(parts) = entry.path().ok().as_deref().and_then(plain_parts) else {
                continue;
            };
            if place == Place::Top {
                if let Top::HomeTar = split_top(parts) {
                    if entry.header().entry_type().is_file() {
                        walk(&mut entry, Place::Home, opts, progress, cancel, entries)?;
                    }
                    continue;
                }
            }
            // Every regular file counts, the home's and the metadata's: both are written.
            let kind = entry.header().entry_type();
            if matches!(
                kind,
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
            ) {
                progress.total_files.fetch_add(1, Ordering::Relaxed);
                let total = progress
                    .total_bytes
                    .fetch_add(entry.size(), Ordering::Relaxed)
                    + entry.size();
                if total > opts.max_bytes {
                    return Err(UnpackError::TooLarge {
                        limit: opts.max_bytes,
                    });
                }
            }
        }
        Ok(())
    }
    let (_, mut stream) = open(file, archive, opts, &progress.scan_read)?;
    let mut entries = 0;
    walk(
        &mut stream,
        Place::Top,
        opts,
        progress,
        cancel,
        &mut entries,
    )?;
    progress.scanned.store(true, Ordering::Relaxed);
    Ok(())
}

/// One entry of an archive, as [`walk_archive`] shows it.
#[derive(Debug)]
pub struct Listed<'a> {
    /// The home's (`homedir/…` or inside `homedir.tar`), else metadata (`cp/USER`, `mysql/…`).
    pub home: bool,
    /// Its path below its tree, `/`-separated (a wrapper directory dropped).
    pub path: &'a str,
    pub kind: EntryType,
    /// Content bytes.
    pub size: u64,
    /// A symlink's target.
    pub link: Option<String>,
    /// Permission bits.
    pub mode: u32,
}

/// Reads every entry of `archive` in the layout [`unpack`] uses (wrapper dropped, `homedir/`
/// and a `homedir.tar` inside are the home's), writing nothing: `visit` sees each entry with a
/// reader of its content (what it does not read is skipped). Entries with absolute or climbing
/// paths are not shown. At most `max_bytes` are decompressed (a bomb stops early).
pub fn walk_archive(
    archive: &Path,
    max_bytes: u64,
    visit: &mut dyn FnMut(&Listed<'_>, &mut dyn Read) -> io::Result<()>,
) -> Result<Compression, UnpackError> {
    fn walk(
        stream: &mut dyn Read,
        place: Place,
        opts: &UnpackOptions,
        visit: &mut dyn FnMut(&Listed<'_>, &mut dyn Read) -> io::Result<()>,
    ) -> Result<(), UnpackError> {
        let mut ar = tar::Archive::new(stream);
        for entry in ar.entries().map_err(|e| read_err(e, opts))? {
            let mut entry = entry.map_err(|e| read_err(e, opts))?;
            let Some(parts) = entry.path().ok().as_deref().and_then(plain_parts) else {
                continue;
            };
            let (home, rel) = match place {
                Place::Home => (true, parts),
                Place::Top => match split_top(parts) {
                    Top::Home(rel) => (true, rel),
                    Top::HomeTar => {
                        if entry.header().entry_type().is_file() {
                            walk(&mut entry, Place::Home, opts, visit)?;
                        }
                        continue;
                    }
                    Top::Meta(rel) => (false, rel),
                    Top::Nothing => continue,
                },
            };
            if rel.is_empty() {
                continue;
            }
            let path = rel
                .iter()
                .map(|p| p.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let link = entry
                .link_name()
                .ok()
                .flatten()
                .map(|l| l.display().to_string());
            let listed = Listed {
                home,
                path: &path,
                kind: entry.header().entry_type(),
                size: entry.size(),
                link,
                mode: entry.header().mode().unwrap_or(0) & 0o7777,
            };
            visit(&listed, &mut entry).map_err(|e| read_err(e, opts))?;
        }
        Ok(())
    }
    let file = open_archive(archive)?;
    let opts = UnpackOptions {
        max_bytes,
        ..UnpackOptions::default()
    };
    let read = AtomicU64::new(0);
    let (compression, mut stream) = open(&file, archive, &opts, &read)?;
    walk(&mut stream, Place::Top, &opts, visit)?;
    Ok(compression)
}

/// Counts the bytes read through it.
struct Counting<'a, R> {
    inner: R,
    counter: &'a AtomicU64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Where a tar's entries go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The archive itself: wrapper, `homedir/`, metadata.
    Top,
    /// A `homedir.tar`: everything is the home's.
    Home,
}

/// Which tree an entry lands in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    Home,
    Meta,
}

struct Unpacker<'a, 'f> {
    home: Tree,
    meta: Tree,
    opts: &'a UnpackOptions,
    progress: &'a UnpackProgress,
    cancel: &'a AtomicBool,
    on_file: OnFile<'f>,
    entries: u64,
    total: u64,
    /// The copy buffer, allocated once (zeroing 256 KiB per file cost as much as a small
    /// file's write).
    buf: Vec<u8>,
    out: Unpacked,
}

/// Deepest entry (path components below its tree) restored; deeper ones are listed as
/// skipped (the staging must stay removable, and removing walks at most 256 levels).
const MAX_DEPTH: usize = 200;

/// Bytes copied per read of an entry (the cancel is checked between them).
const CHUNK: usize = 256 * 1024;

impl Unpacker<'_, '_> {
    fn archive(&mut self, stream: &mut dyn Read, place: Place) -> Result<(), UnpackError> {
        let mut ar = tar::Archive::new(stream);
        let entries = ar.entries().map_err(|e| read_err(e, self.opts))?;
        for entry in entries {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(UnpackError::Cancelled);
            }
            let mut entry = entry.map_err(|e| read_err(e, self.opts))?;
            self.entries += 1;
            if self.entries > self.opts.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: self.opts.max_entries,
                });
            }
            let raw = entry
                .path()
                .map_err(|e| read_err(e, self.opts))?
                .into_owned();
            let shown = raw.display().to_string();
            let Some(parts) = plain_parts(&raw) else {
                self.skip(&shown, "the path is absolute or climbs out with `..`");
                continue;
            };
            let (which, rel) = match place {
                Place::Home => (Which::Home, parts),
                Place::Top => match split_top(parts) {
                    Top::Home(rel) => (Which::Home, rel),
                    Top::HomeTar => {
                        if entry.header().entry_type().is_file() {
                            self.out.nested_home_tar = true;
                            self.archive(&mut entry as &mut dyn Read, Place::Home)?;
                        } else {
                            self.skip(&shown, "homedir.tar is not a file");
                        }
                        continue;
                    }
                    Top::Meta(rel) => (Which::Meta, rel),
                    Top::Nothing => continue,
                },
            };
            if rel.is_empty() {
                // The tree's own top (`homedir/`): exists already.
                continue;
            }
            if rel.len() > MAX_DEPTH {
                self.skip(
                    &shown,
                    &format!("nested deeper than {MAX_DEPTH} directories"),
                );
                continue;
            }
            self.entry(&mut entry, which, place, &rel, &shown)?;
        }
        Ok(())
    }

    fn skip(&mut self, path: &str, reason: &str) {
        self.out.skipped.push(Skipped {
            path: path.to_string(),
            reason: reason.to_string(),
        });
    }

    fn tree(&mut self, which: Which) -> &mut Tree {
        match which {
            Which::Home => &mut self.home,
            Which::Meta => &mut self.meta,
        }
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        which: Which,
        place: Place,
        rel: &[OsString],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = header.mtime().unwrap_or(0) as i64;
        let (parent, name) = rel.split_at(rel.len() - 1);
        let name = name[0].clone();
        let owner = self.opts.owner;
        match kind {
            EntryType::Directory => {
                match self.tree(which).dir(parent, &name) {
                    Ok(path) => {
                        self.tree(which).dir_attrs(path, mode & 0o777, mtime)?;
                        if which == Which::Home {
                            self.out.home_dirs += 1;
                        }
                    }
                    Err(Fail::Refused(why)) => self.skip(shown, &why),
                    Err(Fail::Error(e)) => return Err(e),
                }
                if mode & 0o6000 != 0 {
                    self.skip(shown, "setuid/setgid bit removed");
                }
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = entry.size();
                if self.total.saturating_add(size) > self.opts.max_bytes {
                    return Err(UnpackError::TooLarge {
                        limit: self.opts.max_bytes,
                    });
                }
                let (mut file, path) = match self.tree(which).create_file(parent, &name) {
                    Ok(f) => f,
                    Err(Fail::Refused(why)) => {
                        self.skip(shown, &why);
                        return Ok(());
                    }
                    Err(Fail::Error(e)) => return Err(e),
                };
                let written = self.copy(entry, &mut file, &path)?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                        .map_err(|e| io_err(&path, e))?;
                }
                file.set_permissions(std::fs::Permissions::from_mode(mode & 0o1777))
                    .map_err(|e| io_err(&path, e))?;
                let t = TimeSpec::new(mtime, 0);
                futimens(&file, &t, &t).map_err(|e| io_err(&path, e))?;
                if mode & 0o6000 != 0 {
                    self.skip(shown, "setuid/setgid bit removed");
                }
                match which {
                    Which::Home => {
                        self.out.home_files += 1;
                        self.out.home_bytes += written;
                        self.progress.files.fetch_add(1, Ordering::Relaxed);
                        let inside: PathBuf = rel.iter().collect();
                        (self.on_file)(&inside, written);
                    }
                    Which::Meta => {
                        self.out.meta_files += 1;
                        self.out.meta_bytes += written;
                        self.progress.files.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            EntryType::Symlink => {
                let target = match entry.link_name() {
                    Ok(Some(t)) => t.into_owned(),
                    _ => {
                        self.skip(shown, "a symlink without a target");
                        return Ok(());
                    }
                };
                if which == Which::Meta {
                    self.skip(shown, "a symlink outside the home");
                    return Ok(());
                }
                let Some(target) = safe_target(&target, parent.len(), &self.opts.source_home)
                else {
                    self.skip(
                        shown,
                        &format!("a symlink to {} leaves the home", target.display()),
                    );
                    return Ok(());
                };
                match self.home.symlink(parent, &name, &target) {
                    Ok(()) => self.out.home_symlinks += 1,
                    Err(Fail::Refused(why)) => self.skip(shown, &why),
                    Err(Fail::Error(e)) => return Err(e),
                }
            }
            EntryType::Link => {
                let target = entry.link_name().ok().flatten().map(|t| t.into_owned());
                // A link's target is a path of the same tar: inside a `homedir.tar` already
                // the home's.
                let target = target
                    .as_deref()
                    .and_then(plain_parts)
                    .map(|p| match (place, split_top(p.clone())) {
                        (Place::Home, _) => p,
                        (Place::Top, Top::Home(rel)) if which == Which::Home => rel,
                        (Place::Top, Top::Meta(rel)) if which == Which::Meta => rel,
                        _ => Vec::new(),
                    })
                    .filter(|p| !p.is_empty());
                let Some(target) = target else {
                    self.skip(shown, "a hard link to something outside its tree");
                    return Ok(());
                };
                match self.tree(which).hardlink(&target, parent, &name) {
                    Ok(()) => self.out.home_hardlinks += u64::from(which == Which::Home),
                    Err(Fail::Refused(why)) => self.skip(shown, &why),
                    Err(Fail::Error(e)) => return Err(e),
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.skip(shown, "a device node or FIFO: never restored");
            }
            // PAX and GNU long-name headers are read by the tar crate itself; anything left
            // is a kind we do not restore.
            other => self.skip(shown, &format!("an entry of type {other:?}: not restored")),
        }
        Ok(())
    }

    /// Copies the entry into `file` a chunk at a time, checking the bound and the cancel.
    fn copy(
        &mut self,
        entry: &mut impl Read,
        file: &mut File,
        path: &Path,
    ) -> Result<u64, UnpackError> {
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.copy_with(entry, file, path, &mut buf);
        self.buf = buf;
        result
    }

    fn copy_with(
        &mut self,
        entry: &mut impl Read,
        file: &mut File,
        path: &Path,
        buf: &mut [u8],
    ) -> Result<u64, UnpackError> {
        let mut written = 0u64;
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(UnpackError::Cancelled);
            }
            let n = match entry.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e, self.opts)),
            };
            self.total += n as u64;
            if self.total > self.opts.max_bytes {
                return Err(UnpackError::TooLarge {
                    limit: self.opts.max_bytes,
                });
            }
            file.write_all(&buf[..n]).map_err(|e| io_err(path, e))?;
            written += n as u64;
            self.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(written)
    }
}

/// The path's plain components (`.` dropped); `None` if it is absolute or has `..`.
fn plain_parts(p: &Path) -> Option<Vec<OsString>> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

enum Top {
    Home(Vec<OsString>),
    HomeTar,
    Meta(Vec<OsString>),
    Nothing,
}

/// Where a top-level path belongs, a wrapper directory (`cpmove-USER`, `backup-…_USER`)
/// dropped first.
fn split_top(mut parts: Vec<OsString>) -> Top {
    let wrapper = |s: &OsStr| {
        let b = s.as_bytes();
        b.starts_with(b"cpmove-") || b.starts_with(b"backup-")
    };
    if parts.first().is_some_and(|p| wrapper(p)) {
        parts.remove(0);
    }
    match parts.first().map(|p| p.as_bytes()) {
        None => Top::Nothing,
        Some(b"homedir") => Top::Home(parts.split_off(1)),
        Some(b"homedir.tar") if parts.len() == 1 => Top::HomeTar,
        Some(_) => Top::Meta(parts),
    }
}

/// A symlink target that stays inside the tree, for a link whose directory is `depth` levels
/// below the top: `../` steps then plain names, climbing at most `depth`. An absolute target
/// inside `source_home` is rewritten relative to the link. `None` when it would leave.
fn safe_target(target: &Path, depth: usize, source_home: &Option<PathBuf>) -> Option<PathBuf> {
    let rel: PathBuf = if target.is_absolute() {
        let inside = source_home
            .as_ref()
            .and_then(|h| target.strip_prefix(h).ok())?;
        let mut p: PathBuf = std::iter::repeat_n(OsStr::new(".."), depth).collect();
        p.push(inside);
        if p.as_os_str().is_empty() {
            p.push(".");
        }
        p
    } else {
        target.to_path_buf()
    };
    let mut climbing = true;
    let mut up = 0usize;
    for c in rel.components() {
        match c {
            Component::ParentDir if climbing => up += 1,
            Component::ParentDir => return None,
            Component::CurDir => {}
            Component::Normal(_) => climbing = false,
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (up <= depth).then_some(rel)
}

/// Why a tree could not take an entry: a refusal the unpack lists and goes on from, or an
/// error that stops it.
enum Fail {
    Refused(String),
    Error(UnpackError),
}

/// Most directory descriptors a tree keeps open (the cache is emptied when full).
const OPEN_DIRS: usize = 256;

/// Most directories whose mode and time wait for the end; past it they are set at once (root
/// is not stopped by a read-only directory; the unprivileged embedded host could be, and its
/// directory times may then move), so memory stays bounded whatever the archive holds.
const DEFERRED_DIRS: usize = 65_536;

/// A directory being filled, walked from descriptors without following symlinks.
struct Tree {
    root: File,
    /// Given everything made (`None`: left as the caller).
    owner: Option<(u32, u32)>,
    path: PathBuf,
    /// Directories opened lately, by their path below the root (most entries share a few);
    /// at most [`OPEN_DIRS`], so a home of a million directories does not hold a million
    /// descriptors.
    dirs: HashMap<Vec<OsString>, File>,
    /// Directories to give their mode and time at the end: (path below root, mode, mtime).
    later: Vec<(Vec<OsString>, u32, i64)>,
}

impl Tree {
    fn open(path: &Path, owner: Option<(u32, u32)>) -> Result<Tree, UnpackError> {
        let root = File::from(
            nix::fcntl::open(
                path,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(path, e))?,
        );
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&root, Some(uid), Some(gid)).map_err(|e| io_err(path, e))?;
        }
        Ok(Tree {
            root,
            owner,
            path: path.to_path_buf(),
            dirs: HashMap::new(),
            later: Vec::new(),
        })
    }

    fn shown(&self, parts: &[OsString]) -> PathBuf {
        let mut p = self.path.clone();
        p.extend(parts);
        p
    }

    /// The directory `parts` below the root, created (0755 until [`Tree::finish`]) where
    /// missing; a symlink or a non-directory on the way is refused.
    fn parent(&mut self, parts: &[OsString]) -> Result<&File, Fail> {
        if parts.is_empty() {
            return Ok(&self.root);
        }
        if !self.dirs.contains_key(parts) {
            let mut at: Option<File> = None;
            for i in 0..parts.len() {
                if let Some(f) = self.dirs.get(&parts[..=i]) {
                    at = Some(f.try_clone().map_err(|e| Fail::Refused(e.to_string()))?);
                    continue;
                }
                let base = at.as_ref().unwrap_or(&self.root);
                let name = parts[i].as_os_str();
                let created = match mkdirat(base, name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) => true,
                    Err(Errno::EEXIST) => false,
                    Err(e) => return Err(Fail::Refused(format!("cannot create a directory: {e}"))),
                };
                let fd = openat(
                    base,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| match e {
                    Errno::ELOOP | Errno::ENOTDIR => Fail::Refused(format!(
                        "{} is a symlink or not a directory: not followed",
                        self.shown(&parts[..=i]).display()
                    )),
                    other => Fail::Refused(format!("cannot open a directory: {other}")),
                })?;
                let dir = File::from(fd);
                if let (true, Some((uid, gid))) = (created, self.owner) {
                    std::os::unix::fs::fchown(&dir, Some(uid), Some(gid))
                        .map_err(|e| Fail::Refused(format!("cannot chown a directory: {e}")))?;
                }
                let keep = dir.try_clone().map_err(|e| Fail::Refused(e.to_string()))?;
                if self.dirs.len() >= OPEN_DIRS {
                    self.dirs.clear();
                }
                self.dirs.insert(parts[..=i].to_vec(), keep);
                at = Some(dir);
            }
        }
        Ok(&self.dirs[parts])
    }

    fn dir(&mut self, parent: &[OsString], name: &OsString) -> Result<Vec<OsString>, Fail> {
        let mut full = parent.to_vec();
        full.push(name.clone());
        self.parent(&full)?;
        Ok(full)
    }

    /// A new regular file `name` (a file or symlink of the same name unpacked earlier is
    /// replaced: the later entry wins, as with `tar -x`).
    fn create_file(
        &mut self,
        parent: &[OsString],
        name: &OsString,
    ) -> Result<(File, PathBuf), Fail> {
        let shown = {
            let mut p = parent.to_vec();
            p.push(name.clone());
            self.shown(&p)
        };
        let dir = self.parent(parent)?;
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(0o600);
        let fd = match openat(dir, name.as_os_str(), flags, mode) {
            Err(Errno::EEXIST) => {
                match unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) => {}
                    Err(Errno::EISDIR) | Err(Errno::EPERM) => {
                        return Err(Fail::Refused("a directory already has this name".into()))
                    }
                    Err(e) => return Err(Fail::Error(io_err(&shown, e))),
                }
                openat(dir, name.as_os_str(), flags, mode)
            }
            other => other,
        };
        match fd {
            Ok(fd) => Ok((File::from(fd), shown)),
            Err(e) => Err(Fail::Error(io_err(&shown, e))),
        }
    }

    fn symlink(&mut self, parent: &[OsString], name: &OsString, target: &Path) -> Result<(), Fail> {
        let owner = self.owner;
        let dir = self.parent(parent)?;
        let _ = unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        symlinkat(target, dir, name.as_os_str())
            .map_err(|e| Fail::Refused(format!("cannot make the symlink: {e}")))?;
        if let Some((uid, gid)) = owner {
            crate::fsx::chown_at(dir, name, uid, gid)
                .map_err(|e| Fail::Refused(format!("cannot chown the symlink: {e}")))?;
        }
        Ok(())
    }

    /// A hard link to `target` (a regular file already unpacked into this tree).
    fn hardlink(
        &mut self,
        target: &[OsString],
        parent: &[OsString],
        name: &OsString,
    ) -> Result<(), Fail> {
        let (tparent, tname) = target.split_at(target.len() - 1);
        let tdir = self
            .parent(tparent)?
            .try_clone()
            .map_err(|e| Fail::Refused(e.to_string()))?;
        let st = nix::sys::stat::fstatat(&tdir, tname[0].as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|_| Fail::Refused("a hard link to a file not unpacked before it".into()))?;
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
            return Err(Fail::Refused(
                "a hard link to something that is not a file".into(),
            ));
        }
        let dir = self.parent(parent)?;
        let _ = unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        linkat(
            &tdir,
            tname[0].as_os_str(),
            dir,
            name.as_os_str(),
            AtFlags::empty(),
        )
        .map_err(|e| Fail::Refused(format!("cannot make the hard link: {e}")))
    }

    /// A directory entry's owner, mode and time: at the end ([`Tree::finish`]), or now when
    /// [`DEFERRED_DIRS`] already wait.
    fn dir_attrs(
        &mut self,
        parts: Vec<OsString>,
        mode: u32,
        mtime: i64,
    ) -> Result<(), UnpackError> {
        if self.later.len() < DEFERRED_DIRS {
            self.later.push((parts, mode, mtime));
            Ok(())
        } else {
            self.apply(&parts, mode, mtime)
        }
    }

    fn apply(&mut self, parts: &[OsString], mode: u32, mtime: i64) -> Result<(), UnpackError> {
        let shown = self.shown(parts);
        let owner = self.owner;
        let dir = match self.parent(parts) {
            Ok(d) => d,
            Err(Fail::Refused(why)) => return Err(io_err(&shown, io::Error::other(why))),
            Err(Fail::Error(e)) => return Err(e),
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(dir, Some(uid), Some(gid)).map_err(|e| io_err(&shown, e))?;
        }
        dir.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_err(&shown, e))?;
        let t = TimeSpec::new(mtime, 0);
        futimens(dir, &t, &t).map_err(|e| io_err(&shown, e))
    }

    /// Directory modes and times, deepest first.
    fn finish(&mut self) -> Result<(), UnpackError> {
        let mut later = std::mem::take(&mut self.later);
        later.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.len()));
        for (parts, mode, mtime) in later {
            self.apply(&parts, mode, mtime)?;
        }
        Ok(())
    }
}
