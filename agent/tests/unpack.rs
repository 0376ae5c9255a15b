//! Unpacking archives nobody here wrote: every layout a restore meets and every hostile entry,
//! on real files in temp dirs.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use agent::unpack::{unpack, Compression, UnpackError, UnpackOptions, UnpackProgress, Unpacked};
use common::archive::{gzip, Tar};
use tar::EntryType;

struct Out {
    _dir: tempfile::TempDir,
    home: PathBuf,
    meta: PathBuf,
    files: Vec<(PathBuf, u64)>,
    progress: UnpackProgress,
    result: Result<Unpacked, UnpackError>,
}

fn run(archive: &[u8], opts: &UnpackOptions) -> Out {
    run_with(archive, opts, &AtomicBool::new(false))
}

fn run_with(archive: &[u8], opts: &UnpackOptions, cancel: &AtomicBool) -> Out {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cpmove-alice.tar.gz");
    std::fs::write(&file, archive).unwrap();
    let (home, meta) = (dir.path().join("home"), dir.path().join("meta"));
    std::fs::create_dir(&home).unwrap();
    std::fs::create_dir(&meta).unwrap();
    let progress = UnpackProgress::default();
    let mut files = Vec::new();
    let result = unpack(
        &file,
        &home,
        &meta,
        opts,
        &progress,
        cancel,
        &mut |p: &Path, n| files.push((p.to_path_buf(), n)),
    );
    Out {
        _dir: dir,
        home,
        meta,
        files,
        progress,
        result,
    }
}

fn reasons(u: &Unpacked) -> Vec<(String, String)> {
    u.skipped
        .iter()
        .map(|s| (s.path.clone(), s.reason.clone()))
        .collect()
}

#[test]
fn a_cpmove_archive_lands_in_home_and_meta() {
    let tar = Tar::new()
        .dir("cpmove-alice/", 0o711)
        .file("cpmove-alice/cp/alice", b"USER=alice\nDNS=example.com\n")
        .file(
            "cpmove-alice/mysql/alice_wp.sql",
            b"CREATE TABLE t (x int);\n",
        )
        .dir("cpmove-alice/homedir/", 0o711)
        .dir("cpmove-alice/homedir/public_html/", 0o750)
        .file(
            "cpmove-alice/homedir/public_html/index.php",
            b"<?php echo 1;",
        )
        .link(
            "cpmove-alice/homedir/www",
            EntryType::Symlink,
            "public_html",
        )
        .link(
            "cpmove-alice/homedir/public_html/same.php",
            EntryType::Link,
            "cpmove-alice/homedir/public_html/index.php",
        )
        .file("./cpmove-alice/homedir/.bashrc", b"export A=1\n")
        .bytes();
    let archive = gzip(&tar);
    let out = run(&archive, &UnpackOptions::default());
    let u = out.result.unwrap();
    assert_eq!(u.compression, Some(Compression::Gzip));
    assert!(u.skipped.is_empty(), "{:?}", u.skipped);
    assert_eq!((u.home_files, u.home_bytes), (2, 13 + 11));
    assert_eq!((u.home_symlinks, u.home_hardlinks), (1, 1));
    assert_eq!(u.meta_files, 2);
    let index = out.home.join("public_html/index.php");
    assert_eq!(std::fs::read(&index).unwrap(), b"<?php echo 1;");
    assert_eq!(
        std::fs::read_link(out.home.join("www")).unwrap(),
        PathBuf::from("public_html")
    );
    assert_eq!(
        std::fs::metadata(out.home.join("public_html/same.php"))
            .unwrap()
            .ino(),
        std::fs::metadata(&index).unwrap().ino()
    );
    assert_eq!(
        std::fs::read_to_string(out.meta.join("cp/alice")).unwrap(),
        "USER=alice\nDNS=example.com\n"
    );
    // Directory modes and times are the archive's, set after their contents.
    let ph = std::fs::metadata(out.home.join("public_html")).unwrap();
    assert_eq!(ph.permissions().mode() & 0o7777, 0o750);
    assert_eq!(ph.mtime(), 1_700_000_000);
    assert_eq!(std::fs::metadata(&index).unwrap().mtime(), 1_700_000_000);
    // Progress: every byte of the archive read, every file and byte counted, one call per
    // home file.
    assert_eq!(
        out.progress.archive_read.load(Ordering::Relaxed),
        archive.len() as u64
    );
    // Files written: the home's two and the metadata's two.
    assert_eq!(out.progress.files.load(Ordering::Relaxed), 4);
    assert_eq!(
        out.files,
        vec![
            (PathBuf::from("public_html/index.php"), 13),
            (PathBuf::from(".bashrc"), 11)
        ]
    );
}

#[test]
fn hostile_entries_are_refused_and_listed() {
    let tar = Tar::new()
        .file("cpmove-alice/homedir/../../etc/cron.d/evil", b"x")
        .file("/etc/evil", b"x")
        .file("cpmove-alice/../evil", b"x")
        // Symlinks that leave the home, directly or through another link.
        .link("cpmove-alice/homedir/up", EntryType::Symlink, "../../etc")
        .link(
            "cpmove-alice/homedir/abs",
            EntryType::Symlink,
            "/etc/passwd",
        )
        .link("cpmove-alice/homedir/d/parent", EntryType::Symlink, "..")
        .link(
            "cpmove-alice/homedir/sneak",
            EntryType::Symlink,
            "d/parent/..",
        )
        // A symlink inside is fine, but nothing is written through it.
        .dir("cpmove-alice/homedir/public_html/", 0o755)
        .link(
            "cpmove-alice/homedir/inner",
            EntryType::Symlink,
            "public_html",
        )
        .file("cpmove-alice/homedir/inner/through.php", b"x")
        // Hard links to outside, to nothing, to a directory.
        .link(
            "cpmove-alice/homedir/shadow",
            EntryType::Link,
            "/etc/shadow",
        )
        .link(
            "cpmove-alice/homedir/ghost",
            EntryType::Link,
            "cpmove-alice/homedir/not-there",
        )
        .link(
            "cpmove-alice/homedir/dirlink",
            EntryType::Link,
            "cpmove-alice/homedir/public_html",
        )
        .special("cpmove-alice/homedir/dev", EntryType::Char)
        .special("cpmove-alice/homedir/fifo", EntryType::Fifo)
        .file_mode("cpmove-alice/homedir/suid", b"#!/bin/sh\n", 0o4755)
        .file("cpmove-alice/homedir/twice", b"first")
        .file("cpmove-alice/homedir/twice", b"second")
        .link(
            "cpmove-alice/homedir/d/ok",
            EntryType::Symlink,
            "../public_html",
        )
        .bytes();
    let out = run(&tar, &UnpackOptions::default());
    let u = out.result.unwrap();
    assert_eq!(u.compression, Some(Compression::None));
    let r = reasons(&u);
    let refused = |path: &str, why: &str| {
        assert!(
            r.iter().any(|(p, w)| p == path && w.contains(why)),
            "{path}: expected `{why}` in {r:#?}"
        )
    };
    refused("cpmove-alice/homedir/../../etc/cron.d/evil", "climbs");
    refused("/etc/evil", "absolute");
    refused("cpmove-alice/../evil", "climbs");
    refused("cpmove-alice/homedir/up", "leaves the home");
    refused("cpmove-alice/homedir/abs", "leaves the home");
    refused("cpmove-alice/homedir/sneak", "leaves the home");
    refused("cpmove-alice/homedir/inner/through.php", "not followed");
    refused("cpmove-alice/homedir/shadow", "outside its tree");
    refused("cpmove-alice/homedir/ghost", "not unpacked before it");
    refused("cpmove-alice/homedir/dirlink", "not a file");
    refused("cpmove-alice/homedir/dev", "device");
    refused("cpmove-alice/homedir/fifo", "FIFO");
    refused("cpmove-alice/homedir/suid", "setuid");
    assert_eq!(r.len(), 13, "{r:#?}");
    // Nothing landed outside the home; what was allowed is there.
    let top = out.home.parent().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(top)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cpmove-alice.tar.gz", "home", "meta"]);
    assert!(std::fs::read_dir(&out.meta).unwrap().next().is_none());
    assert!(!out.home.join("public_html/through.php").exists());
    assert_eq!(
        std::fs::read_link(out.home.join("d/parent")).unwrap(),
        PathBuf::from("..")
    );
    assert_eq!(
        std::fs::read_link(out.home.join("d/ok")).unwrap(),
        PathBuf::from("../public_html")
    );
    let suid = std::fs::metadata(out.home.join("suid")).unwrap();
    assert_eq!(suid.permissions().mode() & 0o7777, 0o755, "setuid removed");
    assert_eq!(std::fs::read(out.home.join("twice")).unwrap(), b"second");
}

#[test]
fn an_absolute_link_into_the_source_home_is_made_relative() {
    let tar = Tar::new()
        .dir("homedir/public_html/", 0o755)
        .link(
            "homedir/public_html/blog",
            EntryType::Symlink,
            "/home/alice/public_html",
        )
        .link("homedir/www", EntryType::Symlink, "/home/alice/public_html")
        .link("homedir/other", EntryType::Symlink, "/home/bob/public_html")
        .bytes();
    let out = run(
        &tar,
        &UnpackOptions {
            source_home: Some("/home/alice".into()),
            ..UnpackOptions::default()
        },
    );
    let u = out.result.unwrap();
    assert_eq!(
        std::fs::read_link(out.home.join("public_html/blog")).unwrap(),
        PathBuf::from("../public_html")
    );
    assert_eq!(
        std::fs::read_link(out.home.join("www")).unwrap(),
        PathBuf::from("public_html")
    );
    assert_eq!(reasons(&u).len(), 1, "{:?}", u.skipped);
    assert_eq!(u.skipped[0].path, "homedir/other");
}

#[test]
fn a_bomb_fails_before_writing_past_the_limit() {
    // 16 MiB of zeros: a few KiB of gzip.
    let big = vec![0u8; 16 << 20];
    let tar = Tar::new()
        .file("cpmove-alice/homedir/small", b"hello")
        .file("cpmove-alice/homedir/zeros", &big)
        .bytes();
    let archive = gzip(&tar);
    assert!(archive.len() < 1 << 20);
    let out = run(
        &archive,
        &UnpackOptions {
            max_bytes: 4 << 20,
            ..UnpackOptions::default()
        },
    );
    match out.result {
        Err(UnpackError::TooLarge { limit }) => assert_eq!(limit, 4 << 20),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The header announced 16 MiB: not a byte of it was written.
    assert!(!out.home.join("zeros").exists());
    assert_eq!(out.progress.bytes.load(Ordering::Relaxed), 5);
}

#[test]
fn too_many_entries_fail() {
    let mut t = Tar::new();
    for i in 0..20 {
        t = t.file(&format!("homedir/f{i}"), b"x");
    }
    let out = run(
        &t.bytes(),
        &UnpackOptions {
            max_entries: 10,
            ..UnpackOptions::default()
        },
    );
    assert!(matches!(
        out.result,
        Err(UnpackError::TooManyEntries { limit: 10 })
    ));
}

#[test]
fn a_home_tar_inside_the_archive_is_unpacked_into_the_home() {
    let inner = Tar::new()
        .dir("public_html/", 0o755)
        .file("public_html/index.html", b"<h1>hi</h1>")
        .file("../escape", b"x")
        .bytes();
    let outer = Tar::new()
        .file("cpmove-alice/cp/alice", b"USER=alice\n")
        .file("cpmove-alice/homedir.tar", &inner)
        .bytes();
    let out = run(&gzip(&outer), &UnpackOptions::default());
    let u = out.result.unwrap();
    assert!(u.nested_home_tar);
    assert_eq!(
        std::fs::read(out.home.join("public_html/index.html")).unwrap(),
        b"<h1>hi</h1>"
    );
    assert_eq!(
        reasons(&u),
        vec![(
            "../escape".into(),
            "the path is absolute or climbs out with `..`".into()
        )]
    );
    assert!(out.meta.join("cp/alice").exists());
    assert!(!out.meta.join("homedir.tar").exists());
}

#[test]
fn an_npanel_backup_is_zstd_with_its_manifest() {
    let tar = Tar::new()
        .file("manifest.json", br#"{"account":"alice"}"#)
        .file("homedir/notes.txt", b"n")
        .bytes();
    let archive = zstd::encode_all(&tar[..], 3).unwrap();
    let out = run(&archive, &UnpackOptions::default());
    let u = out.result.unwrap();
    assert_eq!(u.compression, Some(Compression::Zstd));
    assert_eq!(
        std::fs::read_to_string(out.meta.join("manifest.json")).unwrap(),
        r#"{"account":"alice"}"#
    );
    assert!(out.home.join("notes.txt").exists());
}

#[test]
fn a_cut_archive_is_corrupt_and_a_cancel_stops() {
    let tar = Tar::new()
        .file("homedir/a", &vec![7u8; 300_000])
        .file("homedir/b", b"b")
        .bytes();
    let archive = gzip(&tar);
    let out = run(&archive[..archive.len() / 2], &UnpackOptions::default());
    assert!(
        matches!(out.result, Err(UnpackError::Corrupt(_))),
        "{:?}",
        out.result
    );
    let out = run_with(&archive, &UnpackOptions::default(), &AtomicBool::new(true));
    assert!(matches!(out.result, Err(UnpackError::Cancelled)));
}

#[test]
fn everything_is_given_to_the_owner_when_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let tar = Tar::new()
        .dir("homedir/public_html/", 0o755)
        .file("homedir/public_html/index.php", b"x")
        .link("homedir/www", EntryType::Symlink, "public_html")
        .file("homedir/deep/er/file", b"y")
        .bytes();
    let owner = (54_321, 54_322);
    let out = run(
        &tar,
        &UnpackOptions {
            owner: Some(owner),
            ..UnpackOptions::default()
        },
    );
    out.result.unwrap();
    for p in [
        "public_html",
        "public_html/index.php",
        "www",
        "deep",
        "deep/er",
        "deep/er/file",
    ] {
        let m = std::fs::symlink_metadata(out.home.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), owner, "{p}");
    }
}

/// A home of many directories: every one restored with its mode, while the unpack holds a
/// bounded number of descriptors (it would run out of them on a large home otherwise).
#[test]
fn many_directories_hold_few_descriptors() {
    let mut t = Tar::new();
    for i in 0..700 {
        t = t
            .dir(&format!("homedir/d{i:03}/"), 0o750)
            .file(&format!("homedir/d{i:03}/sub/f"), b"x");
    }
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = fds();
    let mut most = 0;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar");
    std::fs::write(&archive, t.bytes()).unwrap();
    let (home, meta) = (dir.path().join("home"), dir.path().join("meta"));
    std::fs::create_dir(&home).unwrap();
    std::fs::create_dir(&meta).unwrap();
    let u = unpack(
        &archive,
        &home,
        &meta,
        &UnpackOptions::default(),
        &UnpackProgress::default(),
        &AtomicBool::new(false),
        &mut |_, _| most = most.max(fds()),
    )
    .unwrap();
    assert_eq!(u.home_files, 700);
    assert!(
        most < before + 300,
        "{most} descriptors open (from {before})"
    );
    for i in [0, 299, 699] {
        let m = std::fs::metadata(home.join(format!("d{i:03}"))).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o750, "d{i:03}");
        assert_eq!(m.mtime(), 1_700_000_000);
    }
}

/// `scan_first` counts the files and bytes before writing anything (a `homedir.tar` inside
/// included), so progress knows its totals.
#[test]
fn a_scan_first_counts_the_home() {
    let inner = Tar::new()
        .file("public_html/a", &[1u8; 1000])
        .file("public_html/b", &[2u8; 500])
        .bytes();
    let outer = Tar::new()
        .file("cpmove-alice/cp/alice", b"USER=alice\n")
        .file("cpmove-alice/homedir.tar", &inner)
        .bytes();
    let archive = gzip(&outer);
    let out = run(
        &archive,
        &UnpackOptions {
            scan_first: true,
            ..UnpackOptions::default()
        },
    );
    out.result.unwrap();
    let p = &out.progress;
    assert!(p.scanned.load(Ordering::Relaxed));
    // The home's two files and `cp/alice` (11 bytes): everything that is written.
    assert_eq!(p.total_files.load(Ordering::Relaxed), 3);
    assert_eq!(p.total_bytes.load(Ordering::Relaxed), 1511);
    assert_eq!(p.scan_read.load(Ordering::Relaxed), archive.len() as u64);
    assert_eq!(p.files.load(Ordering::Relaxed), 3);
}

/// The archive itself: a symlink in its place is refused (an account could point its own
/// archive at another's), a FIFO does not hang the unpack; a scanned bomb fails in the scan.
#[test]
fn the_archive_must_be_a_plain_file_and_a_scanned_bomb_fails_early() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.tar");
    std::fs::write(&real, Tar::new().file("homedir/a", b"a").bytes()).unwrap();
    let link = dir.path().join("cpmove-alice.tar");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let fifo = dir.path().join("fifo.tar");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (home, meta) = (dir.path().join("home"), dir.path().join("meta"));
    std::fs::create_dir(&home).unwrap();
    std::fs::create_dir(&meta).unwrap();
    for (archive, why) in [(&link, "symlink"), (&fifo, "not a regular file")] {
        let r = unpack(
            archive,
            &home,
            &meta,
            &UnpackOptions::default(),
            &UnpackProgress::default(),
            &AtomicBool::new(false),
            &mut |_, _| {},
        );
        match r {
            Err(UnpackError::Corrupt(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    // 16 MiB of zeros behind a 4 MiB bound: the scan stops it before anything is written.
    let bomb = gzip(
        &Tar::new()
            .file("homedir/zeros", &vec![0u8; 16 << 20])
            .bytes(),
    );
    let out = run(
        &bomb,
        &UnpackOptions {
            max_bytes: 4 << 20,
            scan_first: true,
            ..UnpackOptions::default()
        },
    );
    assert!(
        matches!(out.result, Err(UnpackError::TooLarge { .. })),
        "{:?}",
        out.result
    );
    assert_eq!(out.progress.bytes.load(Ordering::Relaxed), 0);
}

/// Hard links inside a `homedir.tar` point at the home's own paths; entries nested deeper
/// than the unpack takes are listed, not written.
#[test]
fn nested_hard_links_and_deep_paths() {
    let deep = (0..210)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/");
    let inner = Tar::new()
        .file("mail/a", b"message")
        .link("mail/b", EntryType::Link, "mail/a")
        .file_long(&format!("{deep}/f"), b"x")
        .bytes();
    let outer = Tar::new().file("cpmove-alice/homedir.tar", &inner).bytes();
    let out = run(&outer, &UnpackOptions::default());
    let u = out.result.unwrap();
    assert_eq!(u.home_hardlinks, 1, "{:?}", u.skipped);
    assert_eq!(std::fs::read(out.home.join("mail/b")).unwrap(), b"message");
    assert_eq!(u.skipped.len(), 1, "{:?}", u.skipped);
    assert!(u.skipped[0].reason.contains("deeper"), "{:?}", u.skipped);
}
