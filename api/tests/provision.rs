//! Provisioning for real: the API records the account, the `provision` job builds it on a host
//! root (the embedded default: the agent's operations in-process under a temp dir), and every
//! action walks the account through its states. Real Redis, real SQLite, real files.

mod common;

use api::Role;
use common::*;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const S: Duration = Duration::from_secs(10);

async fn server(root: &Path) -> Server {
    start(Opts {
        provision_root: Some(root.to_path_buf()),
        ..Opts::default()
    })
    .await
}

/// POST an account action and wait for its job; returns the finished job.
async fn act(srv: &Server, tok: &str, path: &str, body: Value) -> queue::Job {
    let r = srv
        .req("POST", path, Some(tok), Some(&body.to_string()))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{path}: {}", r.json);
    let id = r.json["job"]["id"].as_str().unwrap().to_string();
    srv.wait_final(&id).await
}

async fn account(srv: &Server, id: &str) -> Value {
    let admin = token(Role::Admin, None, None);
    srv.req("GET", &format!("/api/accounts/{id}"), Some(&admin), None)
        .await
        .json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_from_create_to_terminate() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let srv = server(root).await;
    let r1 = token(Role::Reseller, None, Some("r1"));
    let job = act(
        &srv,
        &r1,
        "/api/accounts",
        json!({"id": "carol", "package": "basic", "domain": "carol.example", "password": "Correct-Horse-9-Battery"}),
    )
    .await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    let res = job.result.unwrap();
    assert_eq!(res["account_id"], "carol");
    assert!(res["next_steps"].as_array().is_some_and(|s| !s.is_empty()));
    assert!(!res.to_string().contains("Correct-Horse"), "{res}");
    let a = account(&srv, "carol").await;
    assert_eq!(a["status"], "active");
    assert!(a["uid"].as_i64().is_some_and(|u| u >= 1000), "{a}");
    // The cPanel-compatible layout and the zone exist.
    let home = root.join("home/carol");
    for p in [
        "public_html",
        "mail/carol.example",
        "etc/carol.example/passwd",
        "tmp",
        "logs",
    ] {
        assert!(home.join(p).exists(), "{p} missing");
    }
    assert!(root.join("var/named/carol.example.db").is_file());
    assert!(root.join("etc/npanel/accounts/carol").is_dir());

    // Suspend: the flag exists, the store says so; a second suspend is refused (409) by the API.
    let job = act(
        &srv,
        &r1,
        "/api/accounts/carol/suspend",
        json!({"reason": "unpaid"}),
    )
    .await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    assert!(job.result.unwrap()["suspended_at"].is_string());
    assert!(root.join("etc/npanel/accounts/carol/suspended").exists());
    let a = account(&srv, "carol").await;
    assert_eq!(
        (a["status"].as_str(), a["suspend_reason"].as_str()),
        (Some("suspended"), Some("unpaid"))
    );
    let again = srv
        .req("POST", "/api/accounts/carol/suspend", Some(&r1), Some("{}"))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    // Unsuspend reverses exactly that.
    let job = act(&srv, &r1, "/api/accounts/carol/unsuspend", json!({})).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    assert!(!root.join("etc/npanel/accounts/carol/suspended").exists());
    assert_eq!(account(&srv, "carol").await["status"], "active");
    // A customer changes its own password.
    let carol = token(Role::Customer, Some("carol"), None);
    let job = act(
        &srv,
        &carol,
        "/api/accounts/carol/password",
        json!({"password": "Another-Horse-7-Battery"}),
    )
    .await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    // Terminate: a backup first, then nothing left but the record.
    let job = act(
        &srv,
        &r1,
        "/api/accounts/carol/terminate",
        json!({"reason": "cancelled"}),
    )
    .await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    let backup = job.result.unwrap()["backup_location"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(Path::new(&backup).is_file(), "{backup}");
    assert!(backup.ends_with(".tar.zst"));
    assert!(!home.exists());
    assert!(!root.join("var/named/carol.example.db").exists());
    let a = account(&srv, "carol").await;
    assert_eq!(a["status"], "terminated");
    // The token of a terminated account no longer works.
    let r = srv.req("GET", "/api/jobs", Some(&carol), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// A step that fails midway leaves a state the retried job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_is_finished_by_its_retry() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let srv = server(root).await;
    let admin = token(Role::Admin, None, None);
    // Sabotage the zone step: a file where the zone directory belongs.
    std::fs::create_dir_all(root.join("var")).unwrap();
    std::fs::write(root.join("var/named"), b"not a directory").unwrap();
    let r = srv
        .req(
            "POST",
            "/api/accounts",
            Some(&admin),
            Some(r#"{"id": "dave", "package": "basic", "domain": "dave.example"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let id = r.json["job"]["id"].as_str().unwrap().to_string();
    let job = srv.wait_final(&id).await;
    assert_eq!(job.status, queue::JobStatus::Failed);
    assert!(
        job.error.as_deref().unwrap_or("").contains("write_zone"),
        "{:?}",
        job.error
    );
    // Half-built: user and home exist, the account is still pending (not active).
    assert_eq!(account(&srv, "dave").await["status"], "pending");
    assert!(root.join("home/dave/public_html").is_dir());
    // Fix the host, retry the same job: every step is idempotent, so it completes.
    std::fs::remove_file(root.join("var/named")).unwrap();
    let r = srv
        .req("POST", &format!("/api/jobs/{id}/retry"), Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let t = std::time::Instant::now();
    let job = loop {
        let j = srv.queue.get(&id).await.unwrap();
        if j.status == queue::JobStatus::Succeeded || t.elapsed() > S {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    let a = account(&srv, "dave").await;
    assert_eq!(a["status"], "active");
    assert!(root.join("var/named/dave.example.db").is_file());
}

/// A suspend enqueued right behind its create never overtakes it (per-account order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_never_overtakes_its_create() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path()).await;
    let admin = token(Role::Admin, None, None);
    let r = srv
        .req(
            "POST",
            "/api/accounts",
            Some(&admin),
            Some(r#"{"id": "erin", "package": "basic", "domain": "erin.example"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let create = r.json["job"]["id"].as_str().unwrap().to_string();
    // Straight behind it, through the generic route (the account comes from the payload).
    let r = srv
        .req("POST", "/api/jobs", Some(&admin), Some(r#"{"kind": "provision", "payload": {"action": "suspend", "account": "erin", "reason": "test"}}"#))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    assert_eq!(r.json["account"], "erin");
    let suspend = r.json["id"].as_str().unwrap().to_string();
    let c = srv.wait_final(&create).await;
    let s = srv.wait_final(&suspend).await;
    assert_eq!(
        (c.status, s.status),
        (queue::JobStatus::Succeeded, queue::JobStatus::Succeeded)
    );
    assert!(
        s.started_at.unwrap() >= c.finished_at.unwrap(),
        "suspend started before create ended"
    );
    assert_eq!(account(&srv, "erin").await["status"], "suspended");
}

/// A package update with apply_to_existing: one job walks every account on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapply_package_walks_its_accounts_in_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path()).await;
    let admin = token(Role::Admin, None, None);
    for id in ["fay", "gus"] {
        let job = act(
            &srv,
            &admin,
            "/api/accounts",
            json!({"id": id, "package": "basic"}),
        )
        .await;
        assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    }
    let r = srv
        .req(
            "PUT",
            "/api/packages/basic",
            Some(&admin),
            Some(r#"{"limits": {"disk_mb": 2000, "pids": 64}, "apply_to_existing": true}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let job = srv.wait_final(r.json["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    let res = job.result.unwrap();
    // The seed's a1, a2, b1, solo are on basic too (never provisioned: each one's steps run
    // or are reported, and the job still succeeds).
    assert_eq!(res["accounts"], 6, "{res}");
    assert_eq!(res["version"], 2);
}
