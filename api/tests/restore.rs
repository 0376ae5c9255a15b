//! Restores for real: `POST /api/restore` with a cPanel archive, the `restore` job unpacking it
//! through the host (the embedded default: the agent's operations in-process under a temp
//! dir) into an account provisioned the same way. Real Redis, real SQLite, real files.

mod common;

use api::Role;
use common::*;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tar::{EntryType, Header};

async fn server(root: &Path) -> Server {
    start(Opts {
        provision_root: Some(root.to_path_buf()),
        registry: workers::Registry::builtin(),
        ..Opts::default()
    })
    .await
}

/// A `cpmove-USER.tar.gz` with a site, a mailbox, metadata and one hostile entry.
fn cpmove(dir: &Path, user: &str, big: usize) -> PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, body: &[u8], kind: EntryType| {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, body).unwrap();
    };
    let top = format!("cpmove-{user}");
    add(
        &format!("{top}/cp/{user}"),
        format!("USER={user}\nDNS={user}.example\n").as_bytes(),
        EntryType::Regular,
    );
    add(
        &format!("{top}/mysql/{user}_wp.sql"),
        b"CREATE TABLE t (x int);",
        EntryType::Regular,
    );
    add(
        &format!("{top}/homedir/public_html/index.php"),
        b"<?php echo 'restored';",
        EntryType::Regular,
    );
    add(
        &format!("{top}/homedir/mail/{user}.example/info/cur/1.M1P1.host,S=5:2,S"),
        b"hello",
        EntryType::Regular,
    );
    add(
        &format!("{top}/homedir/public_html/big.bin"),
        &vec![7u8; big],
        EntryType::Regular,
    );
    add("../../etc/cron.d/evil", b"x", EntryType::Regular);
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let path = dir.join(format!("cpmove-{user}.tar.gz"));
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    path
}

/// `POST /api/restore`, expected to be accepted: the job's id.
async fn started(srv: &Server, tok: &str, body: Value) -> String {
    let (st, body) = restore(srv, tok, body).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn restore(srv: &Server, tok: &str, body: Value) -> (StatusCode, Value) {
    let r = srv
        .req("POST", "/api/restore", Some(tok), Some(&body.to_string()))
        .await;
    (r.status, r.json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpmove_archive_is_restored_into_its_account() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let srv = server(root).await;
    let home = provisioned(&srv, root, "carol", "basic").await;
    let archive = cpmove(root, "carol", 64 << 10);
    let admin = token(Role::Admin, None, None);
    let id = started(
        &srv,
        &admin,
        json!({"archive": archive, "account": "carol"}),
    )
    .await;
    let job = srv.wait_final(&id).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    let res = job.result.unwrap();
    assert_eq!(res["files"], 3, "{res}");
    assert_eq!(res["data_restored"], 22 + 5 + (64 << 10), "{res}");
    let skipped = res["skipped"].as_array().unwrap();
    assert!(
        skipped.iter().any(|s| s["path"] == "../../etc/cron.d/evil"
            && s["reason"].as_str().unwrap().contains("climbs")),
        "{res}"
    );
    assert!(skipped.iter().any(|s| s["what"] == "databases"), "{res}");
    // The home is the archive's; nothing escaped; no staging is left.
    assert_eq!(
        std::fs::read_to_string(home.join("public_html/index.php")).unwrap(),
        "<?php echo 'restored';"
    );
    assert!(home
        .join("mail/carol.example/info/cur/1.M1P1.host,S=5:2,S")
        .exists());
    assert!(!home.join("before-restore.txt").exists());
    assert!(!root.join("etc/cron.d/evil").exists());
    let leftovers: Vec<_> = std::fs::read_dir(root.join("home"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".npanel-restore")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The progress route: finished, every stage walked, lines for the restored files.
    let p = srv
        .req(
            "GET",
            &format!("/api/restore/{id}/progress"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(p.json["status"], "succeeded");
    assert_eq!(p.json["progress_percent"], 100.0);
    assert_eq!(p.json["current_stage"], "finalizing");
    // The last stage's units are the bytes restored (home and metadata), not "1 of 1".
    assert_eq!(p.json["bytes_total"], p.json["bytes_processed"]);
    assert!(
        p.json["bytes_total"].as_u64().unwrap() > 64 << 10,
        "{}",
        p.json
    );
    let log = p.json["log_tail"].to_string();
    assert!(log.contains("Extracting"), "{log}");
    assert!(log.contains("Restored 3 files"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_restore_their_own_backups_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let srv = server(root).await;
    let home = provisioned(&srv, root, "dave", "basic").await;
    std::fs::create_dir_all(root.join("backups")).unwrap();
    let archive = cpmove(root, "dave", 10);
    std::fs::rename(&archive, root.join("backups/dave-20261201T000000Z.tar.gz")).unwrap();
    let dave = token(Role::Customer, Some("dave"), None);
    // A path is refused by the API, another account's backup by the job.
    let (st, body) = restore(&srv, &dave, json!({"archive": "/etc/passwd"})).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let id = started(
        &srv,
        &dave,
        json!({"archive": "erin-20261201T000000Z.tar.gz"}),
    )
    .await;
    let job = srv.wait_final(&id).await;
    assert_eq!(job.status, queue::JobStatus::Failed);
    assert!(
        job.error
            .as_deref()
            .unwrap_or("")
            .contains("not one of dave's backups"),
        "{:?}",
        job.error
    );
    assert!(home.join("before-restore.txt").exists());
    // Its own backup, by name.
    let id = started(
        &srv,
        &dave,
        json!({"archive": "dave-20261201T000000Z.tar.gz"}),
    )
    .await;
    let job = srv.wait_final(&id).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    assert!(home.join("public_html/index.php").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bomb_or_a_cancel_leaves_the_account_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let srv = server(root).await;
    // A 1 MB package, and an archive of 4 MB (a few KB compressed).
    active_package(&srv, "tiny", Some(1), None).await;
    let home = provisioned(&srv, root, "erin", "tiny").await;
    let archive = cpmove(root, "erin", 4 << 20);
    let admin = token(Role::Admin, None, None);
    let id = started(&srv, &admin, json!({"archive": archive, "account": "erin"})).await;
    let job = srv.wait_final(&id).await;
    assert_eq!(job.status, queue::JobStatus::Failed);
    assert!(
        job.error
            .as_deref()
            .unwrap_or("")
            .contains("more than 1048576 bytes"),
        "{:?}",
        job.error
    );
    assert!(home.join("before-restore.txt").exists());
    assert!(!home.join("public_html/index.php").exists());
    // An admin's override of erin's disk limit (the quota sweep's) is the bound instead.
    srv.store
        .set_usage_override(
            "erin",
            Some(&store::UsageOverride {
                account: "erin".into(),
                disk_mb: Some(10),
                bandwidth_mb: None,
                grace_until: None,
                reason: "room for the migration".into(),
                updated_at: chrono::Utc::now(),
            }),
        )
        .await
        .unwrap();
    let id = started(&srv, &admin, json!({"archive": archive, "account": "erin"})).await;
    let job = srv.wait_final(&id).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    assert!(home.join("public_html/index.php").exists());

    // Cancel mid-extract: a 300 MB archive into an account with room for it.
    let frank = provisioned(&srv, root, "frank", "basic").await;
    let archive = cpmove(root, "frank", 300 << 20);
    let id = started(
        &srv,
        &admin,
        json!({"archive": archive, "account": "frank"}),
    )
    .await;
    // Wait until it is extracting, then cancel.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let j = srv.queue.get(&id).await.unwrap();
        // Running is enough: waiting for a published percent (flushed once a second) let a
        // fast machine finish the 300 MB before the cancel.
        if j.status == queue::JobStatus::Running || j.status.is_final() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = srv
        .req(
            "POST",
            &format!("/api/jobs/{id}/cancel"),
            Some(&admin),
            None,
        )
        .await;
    assert!(r.status.is_success(), "{} {}", r.status, r.json);
    let job = srv.wait_final(&id).await;
    assert_eq!(job.status, queue::JobStatus::Cancelled, "{:?}", job.error);
    assert!(frank.join("before-restore.txt").exists());
    assert!(!frank.join("public_html/big.bin").exists());
    let staging = std::fs::read_dir(root.join("home"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".npanel-restore")
        });
    assert!(!staging, "the staging of a cancelled restore is removed");
}

/// An nPanel backup made by the `backup` job is restored by name by its customer: the home
/// comes back as it was when it was archived, the manifest first in the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_its_home() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let srv = server(root).await;
    let home = provisioned(&srv, root, "gina", "basic").await;
    std::fs::write(home.join("public_html/index.php"), "<?php echo 'v1';").unwrap();
    std::os::unix::fs::symlink("public_html", home.join("www")).unwrap();
    let admin = token(Role::Admin, None, None);
    let r = srv
        .req(
            "POST",
            "/api/jobs",
            Some(&admin),
            Some(
                &json!({"kind": "backup", "payload": {"account": "gina"}, "account": "gina"})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = srv.wait_final(r.json["id"].as_str().unwrap()).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    let res = job.result.unwrap();
    let name = res["backup_name"].as_str().unwrap().to_string();
    assert!(
        name.starts_with("gina-") && name.ends_with(".tar.zst"),
        "{res}"
    );
    assert!(res["files"].as_u64().unwrap() >= 2, "{res}");
    // The manifest is the archive's first entry and names the account and its totals.
    let f = std::fs::File::open(res["backup_location"].as_str().unwrap()).unwrap();
    let mut ar = tar::Archive::new(zstd_reader(f));
    let mut first = ar.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(first.path().unwrap().to_str(), Some("manifest.json"));
    let mut m = String::new();
    std::io::Read::read_to_string(&mut first, &mut m).unwrap();
    let m: Value = serde_json::from_str(&m).unwrap();
    assert_eq!(m["account"], "gina");
    assert_eq!(m["domains"], json!(["gina.example"]));
    assert!(m["files"].as_u64().unwrap() >= 2, "{m}");

    // Change the home, then the customer restores the backup by name.
    std::fs::write(home.join("public_html/index.php"), "<?php echo 'v2';").unwrap();
    std::fs::write(home.join("public_html/new.php"), "x").unwrap();
    let gina = token(Role::Customer, Some("gina"), None);
    let id = started(&srv, &gina, json!({"archive": name})).await;
    let job = srv.wait_final(&id).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    assert_eq!(job.result.as_ref().unwrap()["compression"], "zstd");
    assert_eq!(
        std::fs::read_to_string(home.join("public_html/index.php")).unwrap(),
        "<?php echo 'v1';"
    );
    assert!(!home.join("public_html/new.php").exists());
    assert_eq!(
        std::fs::read_link(home.join("www")).unwrap(),
        Path::new("public_html")
    );
    assert!(
        home.join("before-restore.txt").exists(),
        "it was in the backup"
    );
}

fn zstd_reader(f: std::fs::File) -> impl std::io::Read {
    zstd::stream::read::Decoder::new(f).unwrap()
}

/// A restore retried after its worker died (the queue pauses here so the "earlier attempt" can
/// be staged by hand): a half-written staging is thrown away and the archive unpacked again; a
/// home the earlier attempt already installed is kept and the job goes on from there. Either
/// way the home ends up the archive's once, and no staging is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_restore_finishes_what_an_earlier_attempt_left() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let srv = server(root).await;
    let admin = token(Role::Admin, None, None);
    let host = agent::LocalHost::without_cgroups(root).unwrap();
    for (acct, installed) in [("hal", false), ("ivy", true)] {
        let home = provisioned(&srv, root, acct, "basic").await;
        let archive = cpmove(root, acct, 1000);
        let r = srv
            .req("POST", "/api/admin/queue/pause", Some(&admin), None)
            .await;
        assert!(r.status.is_success(), "{}", r.json);
        let id = started(&srv, &admin, json!({"archive": archive, "account": acct})).await;
        let staging = root.join("home").join(format!(".npanel-restore-{id}"));
        if installed {
            // The earlier attempt unpacked and installed, then died before cleaning up.
            host.call(agent::Request::UnpackArchive {
                account: agent::AccountName::parse(acct).unwrap(),
                restore_id: id.clone(),
                archive: archive.display().to_string(),
                max_bytes: None,
                source_home: None,
                uid: None,
                gid: None,
                scan_first: false,
            })
            .await
            .unwrap();
            host.call(agent::Request::InstallHome {
                account: agent::AccountName::parse(acct).unwrap(),
                restore_id: id.clone(),
                uid: None,
                gid: None,
            })
            .await
            .unwrap();
            std::fs::write(home.join("public_html/after-install.txt"), "kept").unwrap();
        } else {
            // The earlier attempt died halfway through unpacking.
            std::fs::create_dir_all(staging.join("home/public_html")).unwrap();
            std::fs::write(staging.join("home/public_html/half.txt"), "junk").unwrap();
        }
        let r = srv
            .req("POST", "/api/admin/queue/resume", Some(&admin), None)
            .await;
        assert!(r.status.is_success(), "{}", r.json);
        let job = srv.wait_final(&id).await;
        assert_eq!(
            job.status,
            queue::JobStatus::Succeeded,
            "{acct}: {:?}",
            job.error
        );
        assert_eq!(
            std::fs::read_to_string(home.join("public_html/index.php")).unwrap(),
            "<?php echo 'restored';",
            "{acct}"
        );
        assert!(!home.join("public_html/half.txt").exists(), "{acct}");
        assert!(!home.join("before-restore.txt").exists(), "{acct}");
        // Installed by the earlier attempt: not unpacked and installed a second time.
        assert_eq!(
            home.join("public_html/after-install.txt").exists(),
            installed,
            "{acct}"
        );
        assert!(!staging.exists(), "{acct}: staging left");
    }
}
