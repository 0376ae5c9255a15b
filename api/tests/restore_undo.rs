//! A restore that created its account and then failed or was cancelled takes the account away
//! again (DESIGN §12: "a cancelled or failed restore leaves the account as it was before"):
//! `POST /api/restore` into a name that is not in the store, the real `restore` job creating
//! the account through provisioning's steps on the embedded host (a temp dir), then failing
//! (the archive is bigger than its package allows) or being cancelled mid-extract. Real Redis,
//! real SQLite, real files. An account that existed before the restore, or that somebody else
//! created, is never removed.

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

/// A `cpmove-USER.tar.gz` of plan `plan` with a site, a zone and a `big`-byte upload.
fn cpmove(dir: &Path, user: &str, plan: &str, big: usize) -> PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, body: &[u8]| {
        let mut h = Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(EntryType::Regular);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, body).unwrap();
    };
    let top = format!("cpmove-{user}");
    add(
        &format!("{top}/cp/{user}"),
        format!("USER={user}\nDNS={user}.example\nPLAN={plan}\nCONTACTEMAIL={user}@example.net\n")
            .as_bytes(),
    );
    add(
        &format!("{top}/dnszones/{user}.example.db"),
        format!("$TTL 300\n@ IN SOA ns1.{user}.example. h.{user}.example. 1 2 3 4 5\n@ IN NS ns1.{user}.example.\n").as_bytes(),
    );
    add(
        &format!("{top}/homedir/public_html/index.php"),
        b"<?php echo 'restored';",
    );
    add(
        &format!("{top}/homedir/public_html/big.bin"),
        &vec![7u8; big],
    );
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let path = dir.join(format!("cpmove-{user}.tar.gz"));
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    path
}

async fn restore(srv: &Server, body: Value) -> String {
    let admin = token(Role::Admin, None, None);
    let r = srv
        .req(
            "POST",
            "/api/restore",
            Some(&admin),
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    r.json["id"].as_str().unwrap().to_string()
}

/// Every path under the host root that names `account` (the archives aside).
fn traces(root: &Path, account: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("cpmove-") {
                continue;
            }
            if name.contains(account) {
                out.push(rel.clone());
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if e.file_type().unwrap().is_file()
                && std::fs::metadata(&p).unwrap().len() < 1 << 20
            {
                // Registries and ACL includes that list accounts by name.
                if std::fs::read_to_string(&p).is_ok_and(|t| {
                    t.lines().any(|l| {
                        l.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                            .any(|w| w == account)
                    })
                }) {
                    out.push(format!("{rel} (mentions it)"));
                }
            }
        }
    }
    out.sort();
    out
}

/// The audit records of `account` with `action`, as (job id, result).
async fn audits(srv: &Server, account: &str, action: &str) -> Vec<(Option<String>, String)> {
    srv.store
        .search_audit(&store::AuditFilter {
            action: Some(action.into()),
            account: Some(account.into()),
            limit: 10,
            ..store::AuditFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.record.action == action)
        .map(|r| (r.record.job_id, r.record.result))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_removes_the_account_it_created_and_only_that() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let srv = server(root).await;
    // A 1 MB package, and an archive of that plan with 4 MB inside (a few KB compressed).
    active_package(&srv, "tiny", Some(1), None).await;
    let archive = cpmove(root, "ivan", "tiny", 4 << 20);
    let before = traces(root, "ivan");

    let id = restore(&srv, json!({"archive": archive, "account": "ivan"})).await;
    let job = srv.wait_final(&id).await;
    assert_eq!(job.status, queue::JobStatus::Failed, "{job:?}");
    let error = job.error.clone().unwrap_or_default();
    assert!(error.contains("more than 1048576 bytes"), "{error}");
    // The account was created (and marked as this job's), then removed again.
    assert_eq!(
        audits(&srv, "ivan", workers::restore::CREATED_MARK).await,
        vec![(Some(id.clone()), "success".to_string())]
    );
    assert_eq!(
        audits(&srv, "ivan", workers::restore::UNDONE_MARK).await,
        vec![(Some(id.clone()), "success".to_string())]
    );
    assert!(
        matches!(
            srv.store.account("ivan").await,
            Err(store::StoreError::NotFound(_))
        ),
        "the store's row is gone"
    );
    let p = srv
        .req(
            "GET",
            &format!("/api/restore/{id}/progress"),
            Some(&token(Role::Admin, None, None)),
            None,
        )
        .await;
    let log = p.json["log_tail"].to_string();
    assert!(log.contains("Created account ivan"), "{log}");
    assert!(log.contains("Removed account ivan"), "{log}");
    // Nothing of it is left on the host but the security fragments, which no host operation
    // removes yet (terminate leaves them too).
    let left: Vec<String> = traces(root, "ivan")
        .into_iter()
        .filter(|p| !before.contains(p) && !p.starts_with("etc/npanel/accounts/ivan"))
        .collect();
    assert!(left.is_empty(), "left on the host: {left:?}");
    assert!(!root.join("home/ivan").exists());
    assert!(!root.join("var/named/ivan.example.db").exists());
    // The name is free again.
    srv.store
        .check_new_account(&store::NewAccount {
            id: "ivan".into(),
            package: Some("tiny".into()),
            domain: Some("ivan.example".into()),
            ..store::NewAccount::default()
        })
        .await
        .unwrap();

    // The same archive into an account that existed before: it fails the same way, and the
    // account stays as it was (its row, its home, its zone).
    let home = provisioned(&srv, root, "ivan", "tiny").await;
    let id = restore(&srv, json!({"archive": archive, "account": "ivan"})).await;
    let job = srv.wait_final(&id).await;
    assert_eq!(job.status, queue::JobStatus::Failed, "{job:?}");
    let a = srv.store.account("ivan").await.unwrap();
    assert_eq!(a.status, store::AccountStatus::Active);
    assert!(home.join("before-restore.txt").exists());
    assert!(!home.join("public_html/index.php").exists());
    assert!(root.join("var/named/ivan.example.db").exists());
    assert_eq!(
        audits(&srv, "ivan", workers::restore::UNDONE_MARK)
            .await
            .len(),
        1
    );

    // Somebody else's account still waiting for its create job (pending, no mark of this
    // restore): the restore runs the steps for it, fails, and leaves it.
    srv.store
        .create_account(&store::NewAccount {
            id: "judy".into(),
            package: Some("tiny".into()),
            domain: Some("judy.example".into()),
            ..store::NewAccount::default()
        })
        .await
        .unwrap();
    let archive = cpmove(root, "judy", "tiny", 4 << 20);
    let id = restore(&srv, json!({"archive": archive, "account": "judy"})).await;
    let job = srv.wait_final(&id).await;
    assert_eq!(job.status, queue::JobStatus::Failed, "{job:?}");
    assert!(srv.store.account("judy").await.is_ok(), "judy is kept");
    assert!(root.join("home/judy").is_dir());
    assert!(audits(&srv, "judy", workers::restore::UNDONE_MARK)
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_restore_removes_the_account_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let srv = server(root).await;
    let admin = token(Role::Admin, None, None);
    // 300 MB into the 1000 MB package `basic`: long enough to cancel while extracting.
    let archive = cpmove(root, "kim", "basic", 300 << 20);
    let id = restore(&srv, json!({"archive": archive, "account": "kim"})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // Cancel as soon as the restore has created the account and its home: waiting for a
        // published percent (flushed once a second) let a fast machine finish the 300 MB first.
        let j = srv.queue.get(&id).await.unwrap();
        if (root.join("home/kim").exists() && srv.store.account("kim").await.is_ok())
            || j.status.is_final()
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(srv.store.account("kim").await.is_ok(), "created first");
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
    assert!(matches!(
        srv.store.account("kim").await,
        Err(store::StoreError::NotFound(_))
    ));
    assert!(!root.join("home/kim").exists());
    let staging = std::fs::read_dir(root.join("home"))
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".npanel-restore")
        });
    assert!(!staging, "the staging of a cancelled restore is removed");
    assert_eq!(
        audits(&srv, "kim", workers::restore::UNDONE_MARK).await,
        vec![(Some(id), "success".to_string())]
    );
}
