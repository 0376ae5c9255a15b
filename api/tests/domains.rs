//! Addon domains and databases (DESIGN §10, §11, §13; issue 9) through the API for real: the
//! package's limits refused with 409 `limit_reached` and nothing created (at the API, and in
//! the job when a request got past it), taken domains 409, bad names 4xx, another tenant's
//! account 404, and the real `provision` handler writing the zone and the mail policy under a
//! temp host root and creating the database on the test MariaDB (`NPANEL_TEST_MYSQL_URL`).
//! Real Redis, real SQLite, and PostgreSQL when `NPANEL_TEST_POSTGRES_URL` is set.

mod common;

use api::Role;
use common::*;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::path::Path;

async fn server(root: &Path, postgres: bool, databases_url: Option<String>) -> Server {
    start(Opts {
        provision_root: Some(root.to_path_buf()),
        postgres,
        databases_url,
        ..Opts::default()
    })
    .await
}

/// An active package with these addon-domain and database limits.
async fn package(srv: &Server, id: &str, addon_domains: Option<u64>, databases: Option<u64>) {
    srv.store
        .create_package(store::NewPackage {
            id: id.into(),
            limits: store::Limits {
                addon_domains,
                databases,
                ..store::Limits::default()
            },
            ..store::NewPackage::default()
        })
        .await
        .unwrap();
    srv.store
        .set_package_status(id, store::PackageStatus::Active)
        .await
        .unwrap();
}

async fn post(srv: &Server, tok: &str, path: &str, body: Value) -> Resp {
    srv.req("POST", path, Some(tok), Some(&body.to_string()))
        .await
}

async fn job_final(srv: &Server, job: &Value) -> queue::Job {
    srv.wait_final(job["id"].as_str().unwrap()).await
}

async fn job_ok(srv: &Server, job: &Value) -> Value {
    let job = job_final(srv, job).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    job.result.unwrap()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn zone(root: &Path, domain: &str) -> std::path::PathBuf {
    root.join("var/named").join(format!("{domain}.db"))
}

fn mail_policy(root: &Path, account: &str) -> String {
    read(
        &root
            .join("etc/exim4/npanel/policies")
            .join(format!("{account}.conf")),
    )
}

async fn addon_domains_on(pg: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let srv = server(root, pg, None).await;
    package(&srv, "one", Some(1), None).await;
    package(&srv, "none", Some(0), None).await;
    provisioned(&srv, root, "dom", "one").await;
    provisioned(&srv, root, "zero", "none").await;
    provisioned(&srv, root, "dtwo", "basic").await;
    let admin = token(Role::Admin, None, None);
    let own = token(Role::Customer, Some("dom"), None);
    let other = token(Role::Customer, Some("a1"), Some("r1"));
    let reseller = token(Role::Reseller, None, Some("r1"));

    // Nothing yet; the limit is the package's.
    let r = srv
        .req("GET", "/api/accounts/dom/domains", Some(&own), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["primary"], "dom.example");
    assert_eq!(r.json["domains"], json!([]));
    assert_eq!(
        (
            r.json["addon_domains_used"].clone(),
            r.json["addon_domains_limit"].clone()
        ),
        (json!(0), json!(1))
    );

    // Another tenant's account is 404 for every verb, like a missing one.
    for tok in [&other, &reseller] {
        let r = srv
            .req("GET", "/api/accounts/dom/domains", Some(tok), None)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);
        let r = post(
            &srv,
            tok,
            "/api/accounts/dom/domains",
            json!({"domain": "x.example"}),
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);
    }
    let r = srv
        .req(
            "DELETE",
            "/api/accounts/dom/domains/x.example",
            Some(&other),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Invalid names: 422 (and a body that is not the shape: 422 too).
    for bad in ["not a domain", "localhost", "a..example", "1.2.3.4", ""] {
        let r = post(
            &srv,
            &own,
            "/api/accounts/dom/domains",
            json!({"domain": bad}),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.json
        );
        assert_eq!(r.json["error"], "invalid_request");
    }
    let r = post(
        &srv,
        &own,
        "/api/accounts/dom/domains",
        json!({"name": "x"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);

    // Anyone's primary domain is taken.
    for d in ["a1.example", "dom.example", "ZERO.example"] {
        let r = post(
            &srv,
            &own,
            "/api/accounts/dom/domains",
            json!({"domain": d}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{d}: {}", r.json);
        assert_eq!(r.json["error"], "conflict");
    }

    // The customer adds one: the job writes the row, the zone and the mail policy.
    let r = post(
        &srv,
        &own,
        "/api/accounts/dom/domains",
        json!({"domain": "Shop.Example"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    assert_eq!(r.json["domain"], "shop.example");
    let res = job_ok(&srv, &r.json["job"]).await;
    assert_eq!(
        res["domains"],
        json!(["dom.example", "shop.example"]),
        "{res}"
    );
    let z = read(&zone(root, "shop.example"));
    assert!(z.contains("shop.example"), "{z}");
    let policy = mail_policy(root, "dom");
    assert!(
        policy
            .lines()
            .any(|l| l.starts_with("domains") && l.contains("shop.example")),
        "{policy}"
    );
    let r = srv
        .req("GET", "/api/accounts/dom/domains", Some(&own), None)
        .await;
    assert_eq!(r.json["domains"][0]["domain"], "shop.example", "{}", r.json);
    assert_eq!(r.json["domains"][0]["kind"], "addon");
    assert_eq!(r.json["addon_domains_used"], 1);

    // The same job again (a retry) finishes without error and changes nothing.
    let id = srv
        .enqueue(json!({"kind": "provision", "payload": {"action": "add_domain", "account": "dom", "domain": "shop.example"}}))
        .await;
    let j = srv.wait_final(&id).await;
    assert_eq!(j.status, queue::JobStatus::Succeeded, "{:?}", j.error);
    assert_eq!(srv.store.account_domains("dom").await.unwrap().len(), 1);

    // Taken: by this account again, and for another account.
    let r = post(
        &srv,
        &own,
        "/api/accounts/dom/domains",
        json!({"domain": "shop.example"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    let r = post(
        &srv,
        &admin,
        "/api/accounts/dtwo/domains",
        json!({"domain": "shop.example"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    assert_eq!(r.json["error"], "conflict");

    // At the limit: 409 limit_reached, nothing enqueued, nothing written.
    let r = post(
        &srv,
        &own,
        "/api/accounts/dom/domains",
        json!({"domain": "two.example"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    assert_eq!(r.json["error"], "limit_reached", "{}", r.json);
    // 0 allows none.
    let r = post(
        &srv,
        &admin,
        "/api/accounts/zero/domains",
        json!({"domain": "z.example"}),
    )
    .await;
    assert_eq!(r.json["error"], "limit_reached", "{}", r.json);
    // A job that got past the API (two requests at once) is refused where the row is written.
    let id = srv
        .enqueue(json!({"kind": "provision", "max_attempts": 1, "payload": {"action": "add_domain", "account": "dom", "domain": "two.example"}}))
        .await;
    let j = srv.wait_final(&id).await;
    assert_eq!(j.status, queue::JobStatus::Failed);
    assert!(
        j.error.as_deref().unwrap_or("").contains("allows 1"),
        "{:?}",
        j.error
    );
    assert_eq!(srv.store.account_domains("dom").await.unwrap().len(), 1);
    assert_eq!(srv.store.account_domains("zero").await.unwrap().len(), 0);
    assert!(!zone(root, "two.example").exists());
    assert!(!zone(root, "z.example").exists());
    assert_eq!(srv.store.addon_domain_counts().await.unwrap()["dom"], 1);

    // Removing: not the primary, not one it lacks; then the zone, the row and the policy go.
    let r = srv
        .req(
            "DELETE",
            "/api/accounts/dom/domains/dom.example",
            Some(&own),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    let r = srv
        .req(
            "DELETE",
            "/api/accounts/dom/domains/nope.example",
            Some(&own),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);
    let r = srv
        .req(
            "DELETE",
            "/api/accounts/dom/domains/shop.example",
            Some(&own),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let res = job_ok(&srv, &r.json["job"]).await;
    assert_eq!(res["removed"], true, "{res}");
    assert!(!zone(root, "shop.example").exists());
    assert!(!mail_policy(root, "dom").contains("shop.example"));
    assert!(srv.store.account_domains("dom").await.unwrap().is_empty());
    // The slot is free again: another account may now have the name.
    let r = post(
        &srv,
        &admin,
        "/api/accounts/dtwo/domains",
        json!({"domain": "shop.example"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    job_ok(&srv, &r.json["job"]).await;

    // Audited: who asked, success and failure.
    let recs = srv
        .audit_at_least("action=domain_added&account=dom", 2)
        .await;
    assert!(recs.iter().any(|r| r["result"] == "success"
        && r["resource"]["id"] == "shop.example"
        && r["actor"]["type"] == "customer"));
    assert!(recs.iter().any(|r| r["result"] == "failure"));
    let recs = srv
        .audit_at_least("action=domain_removed&account=dom", 1)
        .await;
    assert!(recs.iter().any(|r| r["result"] == "success"));

    // Terminating an account frees its addon domains (zone and row).
    let r = post(
        &srv,
        &admin,
        "/api/accounts/dtwo/terminate",
        json!({"reason": "test"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    job_ok(&srv, &r.json["job"]).await;
    assert!(srv.store.account_domains("dtwo").await.unwrap().is_empty());
    assert!(!zone(root, "shop.example").exists());
}

#[tokio::test]
async fn addon_domains_limits_jobs_and_visibility() {
    addon_domains_on(false).await;
}

#[tokio::test]
async fn addon_domains_on_postgres() {
    if !postgres_available() {
        return;
    }
    addon_domains_on(true).await;
}

/// A username of this run, so parallel runs on one MariaDB never share a database.
fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}", n % 1_000_000_000_000)
}

async fn schemas(url: &str, account: &str) -> Vec<String> {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let v: Vec<String> = sqlx::query_scalar(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE ? ESCAPE '!' ORDER BY 1",
    )
    .bind(format!("{account}!_%"))
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    v
}

/// Drops the account's databases however the test ends (its own connection and runtime).
struct DropAccountDbs(String, String);
impl Drop for DropAccountDbs {
    fn drop(&mut self) {
        let (url, account) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    for n in schemas(&url, &account).await {
                        if let Ok(pool) = sqlx::mysql::MySqlPoolOptions::new()
                            .max_connections(1)
                            .connect(&url)
                            .await
                        {
                            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{n}`"))
                                .execute(&pool)
                                .await;
                            pool.close().await;
                        }
                    }
                })
        })
        .join();
    }
}

#[tokio::test]
async fn databases_are_created_listed_and_limited() {
    let Ok(url) = std::env::var("NPANEL_TEST_MYSQL_URL") else {
        eprintln!(
            "SKIP databases_are_created_listed_and_limited: NPANEL_TEST_MYSQL_URL is not set"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let srv = server(root, false, Some(url.clone())).await;
    package(&srv, "onedb", None, Some(1)).await;
    let user = unique("db");
    let _cleanup = DropAccountDbs(url.clone(), user.clone());
    provisioned(&srv, root, &user, "onedb").await;
    let own = token(Role::Customer, Some(&user), None);
    let other = token(Role::Customer, Some("a1"), Some("r1"));
    let path = format!("/api/accounts/{user}/databases");

    let r = srv.req("GET", &path, Some(&own), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(
        (r.json["databases"].clone(), r.json["limit"].clone()),
        (json!([]), json!(1))
    );

    // Another tenant: 404.
    let r = srv.req("GET", &path, Some(&other), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post(&srv, &other, &path, json!({"name": "wp"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Bad names: 422, nothing created.
    for bad in [
        json!("Bad-Name"),
        json!(""),
        json!("a b"),
        json!("x".repeat(64)),
        json!("wp;drop"),
    ] {
        let r = post(&srv, &own, &path, json!({"name": bad})).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.json
        );
    }
    assert!(schemas(&url, &user).await.is_empty());

    // Created by the job, then listed with its size.
    let r = post(&srv, &own, &path, json!({"name": "wp"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let full = format!("{user}_wp");
    assert_eq!(r.json["database"], full);
    let res = job_ok(&srv, &r.json["job"]).await;
    assert_eq!(
        (res["database"].clone(), res["created"].clone()),
        (json!(full), json!(true))
    );
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE `{full}`.posts (id INT PRIMARY KEY AUTO_INCREMENT, body TEXT) ENGINE=InnoDB"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO `{full}`.posts (body) SELECT REPEAT('x', 200) FROM `{full}`.seq_1_to_2000"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(&format!("ANALYZE TABLE `{full}`.posts"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let r = srv.req("GET", &path, Some(&own), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let d = &r.json["databases"][0];
    assert_eq!(
        (d["name"].clone(), d["short_name"].clone()),
        (json!(full), json!("wp"))
    );
    assert!(
        d["size_bytes"].as_i64().unwrap() >= 256 * 1024,
        "{}",
        r.json
    );
    assert_eq!(r.json["used"], 1);

    // It exists: 409 conflict. At the limit: 409 limit_reached, nothing created.
    let r = post(&srv, &own, &path, json!({"name": "wp"})).await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (StatusCode::CONFLICT, json!("conflict")),
        "{}",
        r.json
    );
    let r = post(&srv, &own, &path, json!({"name": "second"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    assert_eq!(r.json["error"], "limit_reached", "{}", r.json);
    // A job that got past the API is refused under the server's lock, nothing created; the
    // same job for the database that exists is "already so".
    let id = srv
        .enqueue(json!({"kind": "provision", "max_attempts": 1, "payload": {"action": "create_database", "account": user, "database": "third"}}))
        .await;
    let j = srv.wait_final(&id).await;
    assert_eq!(j.status, queue::JobStatus::Failed);
    assert!(
        j.error.as_deref().unwrap_or("").contains("allows 1"),
        "{:?}",
        j.error
    );
    let id = srv
        .enqueue(json!({"kind": "provision", "payload": {"action": "create_database", "account": user, "database": "wp"}}))
        .await;
    let j = srv.wait_final(&id).await;
    assert_eq!(j.status, queue::JobStatus::Succeeded, "{:?}", j.error);
    assert_eq!(j.result.unwrap()["created"], false);
    assert_eq!(schemas(&url, &user).await, vec![full.clone()]);

    // Audited.
    let recs = srv
        .audit_at_least(&format!("action=database_created&account={user}"), 3)
        .await;
    assert!(recs
        .iter()
        .any(|r| r["result"] == "success" && r["resource"]["id"] == json!(full)));
    assert!(recs.iter().any(|r| r["result"] == "failure"));
}

#[tokio::test]
async fn databases_need_a_configured_server() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path(), false, None).await;
    let own = token(Role::Customer, Some("a1"), Some("r1"));
    let r = srv
        .req("GET", "/api/accounts/a1/databases", Some(&own), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.json);
    assert_eq!(r.json["error"], "not_available");
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("databases.url"),
        "{}",
        r.json
    );
    let r = post(
        &srv,
        &own,
        "/api/accounts/a1/databases",
        json!({"name": "wp"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.json);
    // Bad input is still told first.
    let r = post(
        &srv,
        &own,
        "/api/accounts/a1/databases",
        json!({"name": "Nope!"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    // Another tenant's account is still 404, not a hint that it exists.
    let r = srv
        .req("GET", "/api/accounts/b1/databases", Some(&own), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
