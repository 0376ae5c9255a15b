//! A home made read-only over its disk limit, and given back, through the embedded host (the
//! same handler the socket serves), on real files under a temp host root. As root, the
//! account's writes are tried as an unprivileged uid (root ignores modes).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use agent::{AccountName, LocalHost, Reply, Request};
use common::is_root;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

async fn set(host: &LocalHost, read_only: bool) -> agent::enforce::ReadOnlyReport {
    match host
        .call(Request::SetReadOnly {
            account: AccountName::parse("alice").unwrap(),
            read_only,
        })
        .await
        .unwrap()
    {
        Reply::ReadOnlySet(r) => r,
        other => panic!("{other:?}"),
    }
}

/// Whether uid 65534 may append to `file`.
fn nobody_can_write(file: &Path) -> bool {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("echo x >> '{}'", file.display()))
        .uid(65534)
        .gid(65534)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn a_home_is_made_read_only_and_given_its_modes_back() {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let host = LocalHost::new(root.path()).unwrap();
    let home = root.path().join("home/alice");
    std::fs::create_dir_all(home.join("public_html/img")).unwrap();
    std::fs::write(home.join("public_html/index.html"), "hi").unwrap();
    std::fs::write(home.join("public_html/img/a.png"), "png").unwrap();
    std::fs::write(home.join("notes.txt"), "mine").unwrap();
    std::fs::set_permissions(
        home.join("notes.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o750)).unwrap();
    // A symlink to a file outside the home: never followed, its target never touched.
    let outside = root.path().join("outside.txt");
    std::fs::write(&outside, "not alice's").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::symlink(&outside, home.join("public_html/link")).unwrap();
    if is_root() {
        Command::new("chown")
            .args(["-R", "-h", "65534:65534"])
            .arg(&home)
            .status()
            .unwrap();
        std::fs::set_permissions(
            root.path().join("home"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert!(nobody_can_write(&home.join("notes.txt")), "writable before");
    }

    let r = set(&host, true).await;
    assert!(r.home_found && r.read_only);
    assert_eq!(r.changed, 6, "{r:?}"); // home, public_html, img, 3 files
    assert_eq!(mode(&home), 0o550);
    assert_eq!(mode(&home.join("public_html/index.html")), 0o444);
    assert_eq!(mode(&home.join("notes.txt")), 0o400);
    assert_eq!(mode(&outside), 0o666, "a symlink's target is never touched");
    let list = root.path().join("etc/npanel/accounts/alice/readonly.list");
    assert!(list.exists());
    if is_root() {
        assert!(
            !nobody_can_write(&home.join("notes.txt")),
            "a file cannot be written"
        );
        assert!(
            !nobody_can_write(&home.join("public_html/new.html")),
            "no file can be made"
        );
    }
    // Again: nothing to do.
    assert_eq!(set(&host, true).await.changed, 0);
    // The owner gives itself a write bit back: the next enforcement takes it again, and the
    // lift still gives back the mode from before.
    std::fs::set_permissions(
        home.join("notes.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert_eq!(set(&host, true).await.changed, 1);
    assert_eq!(mode(&home.join("notes.txt")), 0o444);

    // The owner's later change is kept; a file deleted meanwhile is no error.
    std::fs::set_permissions(
        home.join("public_html/img/a.png"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    if is_root() {
        // (root may delete in a read-only directory; the account would do it through the panel)
        std::fs::remove_file(home.join("public_html/index.html")).unwrap();
    }
    let r = set(&host, false).await;
    assert!(!r.read_only);
    assert_eq!(r.kept, 1, "{r:?}");
    assert_eq!(mode(&home), 0o750);
    assert_eq!(mode(&home.join("notes.txt")), 0o600);
    assert_eq!(mode(&home.join("public_html/img/a.png")), 0o400);
    assert!(!list.exists());
    if is_root() {
        assert!(nobody_can_write(&home.join("notes.txt")), "writable again");
    }
    // Lifting again, or for an account without a home: nothing to do.
    assert_eq!(set(&host, false).await.changed, 0);
    std::fs::remove_dir_all(&home).unwrap();
    assert!(!set(&host, true).await.home_found);
}
