//! Accounts, packages, resellers, audit and job history over real sockets, against a real
//! Redis and a real SQLite store (seeded by `common::seed`: package `basic`; resellers r1, r2;
//! customers a1, a2 under r1, b1 under r2, solo under the root admin).

mod common;

use api::Role;
use common::*;
use hyper::StatusCode;
use queue::JobKind;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use workers::{JobContext, JobError, Registry};

const S: Duration = Duration::from_secs(5);

async fn never_runs(_: JobContext) -> Result<Value, JobError> {
    Err(JobError::Permanent("workers are off in this test".into()))
}

/// A server whose queue accepts `provision` jobs (no workers run them: they stay queued).
async fn with_provision(postgres: bool) -> Server {
    start(Opts {
        registry: Registry::builtin().register(JobKind::Provision, never_runs),
        workers: false,
        postgres,
        ..Opts::default()
    })
    .await
}

/// Each test body runs on SQLite, and again on PostgreSQL when it is configured.
macro_rules! both_backends {
    ($name:ident, $pg:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $body(false).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pg() {
            if postgres_available() {
                $body(true).await;
            }
        }
    };
}

both_backends!(
    hierarchy_rbac_matrix,
    hierarchy_rbac_matrix_pg,
    rbac_matrix_on
);
both_backends!(
    creating_accounts_checks_everything_first,
    creating_accounts_pg,
    creating_accounts_on
);
both_backends!(packages_and_features, packages_and_features_pg, packages_on);
both_backends!(
    audit_search_export_verify,
    audit_search_export_verify_pg,
    audit_on
);
both_backends!(
    history_outlives_redis,
    history_outlives_redis_pg,
    history_on
);

fn ids(v: &Value, key: &str) -> BTreeSet<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Wait until the audit log (as admin) has a record with `action` for `account`.
async fn audit_record(srv: &Server, action: &str, account: &str) -> Value {
    let admin = token(Role::Admin, None, None);
    let t = std::time::Instant::now();
    loop {
        let r = srv
            .req(
                "GET",
                &format!("/api/audit?action={action}&account={account}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        if let Some(rec) = r.json["records"].as_array().and_then(|a| a.first()) {
            return rec.clone();
        }
        assert!(t.elapsed() < S, "no {action} record for {account}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The hierarchy over every account route: who sees and changes whom.
async fn rbac_matrix_on(pg: bool) {
    let srv = with_provision(pg).await;
    let admin = token(Role::Admin, None, None);
    let r1 = token(Role::Reseller, None, Some("r1"));
    let r2 = token(Role::Reseller, None, Some("r2"));
    let a1 = token(Role::Customer, Some("a1"), None);
    let b1 = token(Role::Customer, Some("b1"), Some("r2"));
    let solo = token(Role::Customer, Some("solo"), None);

    // Lists.
    for (tok, want) in [
        (&admin, set(&["a1", "a2", "b1", "r1", "r2", "solo"])),
        (&r1, set(&["a1", "a2"])),
        (&r2, set(&["b1"])),
        (&a1, set(&["a1"])),
        (&solo, set(&["solo"])),
    ] {
        let r = srv.req("GET", "/api/accounts", Some(tok), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        assert_eq!(ids(&r.json, "accounts"), want);
    }
    // One account: visible ones 200, everything else 404 (like a missing one).
    let all = ["a1", "a2", "b1", "r1", "r2", "solo", "nobody1"];
    for (name, tok, visible) in [
        ("admin", &admin, &["a1", "a2", "b1", "r1", "r2", "solo"][..]),
        ("r1", &r1, &["a1", "a2", "r1"][..]),
        ("r2", &r2, &["b1", "r2"][..]),
        ("a1", &a1, &["a1"][..]),
        ("b1", &b1, &["b1"][..]),
    ] {
        for id in all {
            let r = srv
                .req("GET", &format!("/api/accounts/{id}"), Some(tok), None)
                .await;
            let want = if visible.contains(&id) {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            assert_eq!(r.status, want, "{name} GET {id}: {}", r.json);
            if want == StatusCode::OK && id == "a1" {
                assert_eq!(r.json["reseller"], "r1");
                assert_eq!(r.json["package"], "basic");
                assert_eq!(r.json["limits"]["disk_mb"], 1000);
            }
        }
    }
    // Suspend: admins anyone, resellers their customers, customers nobody.
    for (name, tok, id, want) in [
        ("r1", &r1, "b1", StatusCode::NOT_FOUND),
        ("r2", &r2, "a1", StatusCode::NOT_FOUND),
        ("r1", &r1, "r1", StatusCode::FORBIDDEN),
        ("a1", &a1, "a1", StatusCode::FORBIDDEN),
        ("r1", &r1, "a1", StatusCode::ACCEPTED),
        ("admin", &admin, "b1", StatusCode::ACCEPTED),
    ] {
        let r = srv
            .req(
                "POST",
                &format!("/api/accounts/{id}/suspend"),
                Some(tok),
                Some(r#"{"reason": "unpaid"}"#),
            )
            .await;
        assert_eq!(r.status, want, "{name} suspends {id}: {}", r.json);
        if want == StatusCode::ACCEPTED {
            let job = &r.json["job"];
            assert_eq!(job["kind"], "provision");
            let j = srv.queue.get(job["id"].as_str().unwrap()).await.unwrap();
            assert_eq!(j.payload["action"], "suspend");
            assert_eq!(j.payload["reason"], "unpaid");
            assert_eq!(j.account.as_deref(), Some(id));
        }
    }
    // Unsuspend of an account that is not suspended (the job has not run): 409.
    let r = srv
        .req("POST", "/api/accounts/a2/unsuspend", Some(&r1), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    // Passwords: customers their own; weak ones refused; never echoed anywhere.
    let weak = srv
        .req(
            "POST",
            "/api/accounts/a1/password",
            Some(&a1),
            Some(r#"{"password": "short"}"#),
        )
        .await;
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    let pw = r#"{"password": "Correct-Horse-9-Battery"}"#;
    let ok = srv
        .req("POST", "/api/accounts/a1/password", Some(&a1), Some(pw))
        .await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.json);
    let other = srv
        .req("POST", "/api/accounts/b1/password", Some(&a1), Some(pw))
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let job_id = ok.json["job"]["id"].as_str().unwrap().to_string();
    let shown = srv
        .req("GET", &format!("/api/jobs/{job_id}"), Some(&a1), None)
        .await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(
        !shown.json.to_string().contains("Correct-Horse"),
        "{}",
        shown.json
    );
    assert_eq!(shown.json["payload"]["password"], "**REDACTED**");
    // Change package within the allowance; unknown package 422.
    let r = srv
        .req(
            "POST",
            "/api/accounts/a2/change-package",
            Some(&r1),
            Some(r#"{"package": "nope"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    let r = srv
        .req(
            "POST",
            "/api/accounts/a2/change-package",
            Some(&r1),
            Some(r#"{"package": "basic"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    // Reseller summary: its own and admins only.
    let r = srv
        .req("GET", "/api/resellers/r1/summary", Some(&r1), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["accounts"], 2);
    assert_eq!(
        srv.req("GET", "/api/resellers/r1/summary", Some(&r2), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        srv.req("GET", "/api/resellers/r1/summary", Some(&a1), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Allowance: admins only.
    let body = r#"{"max_accounts": 3, "disk_mb": null, "bandwidth_mb": null}"#;
    assert_eq!(
        srv.req("PUT", "/api/resellers/r1/allowance", Some(&r1), Some(body))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let r = srv
        .req(
            "PUT",
            "/api/resellers/r1/allowance",
            Some(&admin),
            Some(body),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["allowance"]["max_accounts"], 3);
    // The customers' jobs follow the same rules as every job.
    let r = srv.req("GET", "/api/jobs", Some(&r2), None).await;
    assert!(
        r.json["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["reseller"] == "r2"),
        "{}",
        r.json
    );
}

/// Creating accounts: hierarchy, names and allowances, each refused with nothing written.
async fn creating_accounts_on(pg: bool) {
    let srv = with_provision(pg).await;
    let admin = token(Role::Admin, None, None);
    let r1 = token(Role::Reseller, None, Some("r1"));
    let a1 = token(Role::Customer, Some("a1"), None);
    let create = |tok: String, body: Value| {
        let srv = &srv;
        async move {
            srv.req("POST", "/api/accounts", Some(&tok), Some(&body.to_string()))
                .await
        }
    };
    // A reseller creates its customer: the account is recorded pending, its job queued.
    let r = create(r1.clone(), json!({"id": "c1", "package": "basic", "domain": "c1.example", "password": "Correct-Horse-9-Battery"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    assert_eq!(r.json["account"]["status"], "pending");
    assert_eq!(r.json["account"]["parent"], "r1");
    assert_eq!(r.json["account"]["reseller"], "r1");
    let job = srv
        .queue
        .get(r.json["job"]["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (job.account.as_deref(), job.reseller.as_deref()),
        (Some("c1"), Some("r1"))
    );
    assert_eq!(job.payload["action"], "create");
    // Refusals.
    for (who, tok, body, status, code) in [
        (
            "reseller makes a reseller",
            r1.clone(),
            json!({"id": "rr", "type": "reseller", "allowance": {"max_accounts": 1}}),
            403,
            "forbidden",
        ),
        (
            "reseller under another",
            r1.clone(),
            json!({"id": "c2", "parent": "r2", "package": "basic"}),
            403,
            "forbidden",
        ),
        (
            "customer creates",
            a1.clone(),
            json!({"id": "c3", "package": "basic"}),
            403,
            "forbidden",
        ),
        (
            "duplicate",
            admin.clone(),
            json!({"id": "a1", "package": "basic"}),
            409,
            "conflict",
        ),
        (
            "reserved",
            admin.clone(),
            json!({"id": "root", "package": "basic"}),
            422,
            "invalid_request",
        ),
        (
            "invalid",
            admin.clone(),
            json!({"id": "Bad_Name", "package": "basic"}),
            422,
            "invalid_request",
        ),
        (
            "fourth level",
            admin.clone(),
            json!({"id": "deep", "parent": "a1", "package": "basic"}),
            422,
            "invalid_request",
        ),
        (
            "reseller under reseller",
            admin.clone(),
            json!({"id": "rr", "type": "reseller", "parent": "r1", "allowance": {"max_accounts": 1}}),
            422,
            "invalid_request",
        ),
        (
            "too many accounts",
            admin.clone(),
            json!({"id": "rr", "type": "reseller", "allowance": {"max_accounts": 1001}}),
            422,
            "invalid_request",
        ),
        (
            "unknown package",
            admin.clone(),
            json!({"id": "c4", "package": "nope"}),
            422,
            "invalid_request",
        ),
        (
            "weak password",
            admin.clone(),
            json!({"id": "c5", "package": "basic", "password": "abc"}),
            422,
            "invalid_request",
        ),
        (
            "bad domain",
            admin.clone(),
            json!({"id": "c6", "package": "basic", "domain": "nodot"}),
            422,
            "invalid_request",
        ),
    ] {
        let r = create(tok, body.clone()).await;
        assert_eq!(r.status.as_u16(), status, "{who}: {}", r.json);
        assert_eq!(r.json["error"], code, "{who}: {}", r.json);
        if let Some(id) = body["id"].as_str().filter(|id| !["a1"].contains(id)) {
            let gone = srv
                .req("GET", &format!("/api/accounts/{id}"), Some(&admin), None)
                .await;
            assert_eq!(
                gone.status,
                StatusCode::NOT_FOUND,
                "{who}: {id} was written"
            );
        }
    }
    // The allowance: r1 may have 3 customers (a1, a2, c1 now); the fourth is refused.
    let r = srv
        .req(
            "PUT",
            "/api/resellers/r1/allowance",
            Some(&admin),
            Some(r#"{"max_accounts": 3}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = create(r1.clone(), json!({"id": "c7", "package": "basic"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    assert_eq!(r.json["error"], "allowance_exceeded");
    assert_eq!(
        srv.req("GET", "/api/accounts/c7", Some(&admin), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Every attempt is audited, refusals included (denied / failure).
    let rec = audit_record(&srv, "account_created", "c1").await;
    assert_eq!(rec["result"], "success");
    assert_eq!(rec["actor"]["type"], "reseller");
    assert_eq!(rec["job_id"], json!(job.id));
    assert!(rec["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    let denied = audit_record(&srv, "account_created", "c3").await;
    assert_eq!(denied["result"], "denied");
    let failed = audit_record(&srv, "account_created", "c7").await;
    assert_eq!(failed["result"], "failure");
    assert!(!failed.to_string().contains("Correct-Horse"));
}

/// Without a provision handler, account actions answer 501 and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_provisioning_nothing_is_half_written() {
    let srv = start(Opts {
        workers: false,
        ..Opts::default()
    })
    .await;
    let admin = token(Role::Admin, None, None);
    let r = srv
        .req(
            "POST",
            "/api/accounts",
            Some(&admin),
            Some(r#"{"id": "c1", "package": "basic"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.json);
    assert_eq!(
        srv.req("GET", "/api/accounts/c1", Some(&admin), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Validation still comes first.
    let r = srv
        .req(
            "POST",
            "/api/accounts",
            Some(&admin),
            Some(r#"{"id": "root", "package": "basic"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = srv
        .req("POST", "/api/accounts/a1/suspend", Some(&admin), Some("{}"))
        .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED);
    let a = srv.req("GET", "/api/accounts/a1", Some(&admin), None).await;
    assert_eq!(a.json["status"], "pending");
    // A package update that would re-apply to accounts is refused before it changes anything.
    let r = srv
        .req(
            "PUT",
            "/api/packages/basic",
            Some(&admin),
            Some(r#"{"name": "Basic 2", "apply_to_existing": true}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED);
    let p = srv
        .req("GET", "/api/packages/basic", Some(&admin), None)
        .await;
    assert_eq!(
        (p.json["version"].as_i64(), p.json["name"].as_str()),
        (Some(1), Some("basic"))
    );
}

/// Packages: ownership, lifecycle, versions, one re-apply job, feature checks.
async fn packages_on(pg: bool) {
    let srv = with_provision(pg).await;
    let admin = token(Role::Admin, None, None);
    let r1 = token(Role::Reseller, None, Some("r1"));
    let r2 = token(Role::Reseller, None, Some("r2"));
    let a1 = token(Role::Customer, Some("a1"), None);
    let body = json!({"id": "r1gold", "limits": {"disk_mb": 500, "bandwidth_mb": null}, "features": ["ssh", "ftp"], "disabled_features": ["ftp"]});
    let r = srv
        .req("POST", "/api/packages", Some(&r1), Some(&body.to_string()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_eq!(
        (r.json["status"].as_str(), r.json["owner"].as_str()),
        (Some("draft"), Some("r1"))
    );
    // Visibility: r2 and customers not on it cannot see it.
    assert_eq!(
        srv.req("GET", "/api/packages/r1gold", Some(&r2), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        srv.req("GET", "/api/packages/r1gold", Some(&a1), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        srv.req("GET", "/api/packages/basic", Some(&a1), None)
            .await
            .status,
        StatusCode::OK
    );
    let list = srv.req("GET", "/api/packages", Some(&r2), None).await;
    assert_eq!(ids(&list.json, "packages"), set(&["basic"]));
    let list = srv.req("GET", "/api/packages", Some(&r1), None).await;
    assert_eq!(ids(&list.json, "packages"), set(&["basic", "r1gold"]));
    // Resellers cannot change global packages; customers nothing.
    assert_eq!(
        srv.req("POST", "/api/packages/basic/deprecate", Some(&r1), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        srv.req("POST", "/api/packages", Some(&a1), Some(r#"{"id": "x"}"#))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // Draft takes no accounts; activated, it does.
    let c = json!({"id": "c1", "package": "r1gold"}).to_string();
    assert_eq!(
        srv.req("POST", "/api/accounts", Some(&r1), Some(&c))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let r = srv
        .req("POST", "/api/packages/r1gold/activate", Some(&r1), None)
        .await;
    assert_eq!(r.json["status"], "active", "{}", r.json);
    assert_eq!(
        srv.req("POST", "/api/accounts", Some(&r1), Some(&c))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    // r2 cannot put its customer on r1's package.
    let r = srv
        .req(
            "POST",
            "/api/accounts/b1/change-package",
            Some(&r2),
            Some(r#"{"package": "r1gold"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    // Update with apply_to_existing: a new version and exactly one provision job.
    let before = srv.queue.stats().await.unwrap().kinds["provision"].pending;
    let r = srv
        .req(
            "PUT",
            "/api/packages/r1gold",
            Some(&r1),
            Some(r#"{"limits": {"disk_mb": 600}, "apply_to_existing": true}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["package"]["version"], 2);
    assert_eq!(r.json["accounts"], 1);
    let job = srv
        .queue
        .get(r.json["job"]["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(job.payload["action"], "reapply_package");
    assert_eq!(job.payload["package"], "r1gold");
    assert_eq!(
        srv.queue.stats().await.unwrap().kinds["provision"].pending,
        before + 1
    );
    // Bad input: unknown feature, oversize, duplicate.
    let bad = srv
        .req(
            "POST",
            "/api/packages",
            Some(&admin),
            Some(r#"{"id": "p2", "features": ["teleport"]}"#),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.json["message"].as_str().unwrap().contains("teleport"));
    let big = json!({"id": "p3", "pricing": {"notes": "x".repeat(60_000)}}).to_string();
    let r = srv
        .req("POST", "/api/packages", Some(&admin), Some(&big))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    assert_eq!(
        srv.req(
            "POST",
            "/api/packages",
            Some(&admin),
            Some(r#"{"id": "basic"}"#)
        )
        .await
        .status,
        StatusCode::CONFLICT
    );
    // Delete in use: deprecated instead; unused: deleted.
    let r = srv
        .req("DELETE", "/api/packages/basic", Some(&admin), None)
        .await;
    assert_eq!(
        (
            r.json["deleted"].as_bool(),
            r.json["package"]["status"].as_str()
        ),
        (Some(false), Some("deprecated")),
        "{}",
        r.json
    );
    srv.req(
        "POST",
        "/api/packages",
        Some(&admin),
        Some(r#"{"id": "tmp"}"#),
    )
    .await;
    let r = srv
        .req("DELETE", "/api/packages/tmp", Some(&admin), None)
        .await;
    assert_eq!(r.json["deleted"], true);
    // Feature checks: granted 200, disabled 403 naming the package, unknown 422, foreign 404.
    let r = srv
        .req("GET", "/api/accounts/a1/features/ssh", Some(&a1), None)
        .await;
    assert_eq!(
        (r.status, r.json["enabled"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let r = srv
        .req("GET", "/api/accounts/a1/features/ftp", Some(&a1), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json["error"], "feature_disabled");
    assert!(r.json["message"].as_str().unwrap().contains("basic"));
    let r = srv
        .req("GET", "/api/accounts/c1/features/ftp", Some(&r1), None)
        .await;
    assert_eq!(r.json["error"], "feature_disabled", "disabled_features win");
    assert_eq!(
        srv.req("GET", "/api/accounts/a1/features/teleport", Some(&a1), None)
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        srv.req("GET", "/api/accounts/a1/features/ssh", Some(&r2), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

/// The audit log over HTTP: tenant filtering, cursors, export, verify, tamper detection.
async fn audit_on(pg: bool) {
    let srv = with_provision(pg).await;
    let admin = token(Role::Admin, None, None);
    let r1 = token(Role::Reseller, None, Some("r1"));
    let a1 = token(Role::Customer, Some("a1"), None);
    for id in ["a1", "a2", "b1"] {
        let r = srv
            .req(
                "POST",
                &format!("/api/accounts/{id}/suspend"),
                Some(&admin),
                Some("{}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    let r = srv
        .req(
            "PUT",
            "/api/admin/concurrency/restore",
            Some(&admin),
            Some(r#"{"limit": 4}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    audit_record(&srv, "account_suspended", "b1").await;
    let rec = {
        let t = std::time::Instant::now();
        loop {
            let r = srv
                .req("GET", "/api/audit?action=concurrency", Some(&admin), None)
                .await;
            if let Some(x) = r.json["records"].as_array().and_then(|a| a.first()) {
                break x.clone();
            }
            assert!(t.elapsed() < S);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(rec["changes"]["after"]["limit"], 4);
    assert_eq!(rec["resource"]["type"], "queue");
    let accounts = |v: &Value| -> BTreeSet<String> {
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["account"].as_str().map(String::from))
            .collect()
    };
    let r = srv
        .req("GET", "/api/audit?action=account_", Some(&r1), None)
        .await;
    assert_eq!(accounts(&r.json), set(&["a1", "a2"]));
    let r = srv.req("GET", "/api/audit", Some(&a1), None).await;
    assert_eq!(accounts(&r.json), set(&["a1"]));
    assert!(r.json["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["action"] != "concurrency_changed"));
    let r = srv
        .req("GET", "/api/audit?account=b1", Some(&a1), None)
        .await;
    assert_eq!(r.json["records"].as_array().unwrap().len(), 0);
    // Keyset pages cover everything once.
    let p1 = srv
        .req("GET", "/api/audit?limit=2", Some(&admin), None)
        .await;
    let cursor = p1.json["next_cursor"].as_str().unwrap().to_string();
    let p2 = srv
        .req(
            "GET",
            &format!("/api/audit?limit=100&cursor={cursor}"),
            Some(&admin),
            None,
        )
        .await;
    let seqs: Vec<i64> = p1.json["records"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2.json["records"].as_array().unwrap())
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 4);
    assert!(seqs.windows(2).all(|w| w[0] > w[1]));
    // Tampered cursors and bad filters are clear 400s.
    let mut bad = cursor.clone();
    bad.replace_range(2..3, if &bad[2..3] == "A" { "B" } else { "A" });
    for q in [
        format!("cursor={bad}"),
        "cursor=x".into(),
        "result=maybe".into(),
        "from=yesterday".into(),
    ] {
        let r = srv
            .req("GET", &format!("/api/audit?{q}"), Some(&admin), None)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.json);
    }
    let r = srv
        .req(
            "GET",
            &format!("/api/jobs?cursor={bad}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // One record with its related ones (the other records of the same job).
    let rid = rec["id"].as_str().unwrap();
    let d = srv
        .req("GET", &format!("/api/audit/{rid}"), Some(&admin), None)
        .await;
    assert_eq!(d.json["record"]["id"], rec["id"]);
    assert_eq!(
        srv.req("GET", &format!("/api/audit/{rid}"), Some(&a1), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Export: CSV with a header, JSON as an array; tenant-filtered.
    let csv = srv
        .req("GET", "/api/audit/export?format=csv", Some(&r1), None)
        .await;
    assert_eq!(csv.status, StatusCode::OK);
    let text = csv.json.as_str().unwrap().to_string();
    let mut lines = text.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("seq,id,timestamp,account"));
    assert_eq!(lines.count(), 2, "{text}");
    let js = srv
        .req("GET", "/api/audit/export?format=json", Some(&admin), None)
        .await;
    assert_eq!(js.json.as_array().map(Vec::len), Some(4), "{}", js.json);
    assert_eq!(
        srv.req("GET", "/api/audit/export?format=xml", Some(&admin), None)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    // Verify: admins only; a tampered record is found.
    assert_eq!(
        srv.req("GET", "/api/audit/verify", Some(&r1), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let v = srv
        .req("GET", "/api/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(
        (v.json["ok"].as_bool(), v.json["checked"].as_u64()),
        (Some(true), Some(4)),
        "{}",
        v.json
    );
    srv.store
        .execute_for_tests("UPDATE audit SET doc = REPLACE(doc, '\"limit\":4', '\"limit\":40') WHERE action = 'concurrency_changed'")
        .await
        .unwrap();
    // The default walks only what came after the last verification (the edit is behind it);
    // a full walk finds it.
    let v = srv
        .req("GET", "/api/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(
        (v.json["ok"].as_bool(), v.json["checked"].as_u64()),
        (Some(true), Some(0)),
        "{}",
        v.json
    );
    let v = srv
        .req("GET", "/api/audit/verify?full=true", Some(&admin), None)
        .await;
    assert_eq!(v.json["ok"], false);
    assert_eq!(v.json["broken_at"], rec["seq"]);
}

/// Finished jobs are archived and stay readable (GET, list, WebSocket) after Redis forgets them.
async fn history_on(pg: bool) {
    let srv = start(Opts {
        postgres: pg,
        ..Opts::default()
    })
    .await;
    let admin = token(Role::Admin, None, None);
    let a1 = token(Role::Customer, Some("a1"), None);
    let id = srv
        .enqueue(json!({"kind": "restore", "payload": {"archive": "steps:1:1"}, "account": "a1", "reseller": "r1"}))
        .await;
    srv.wait_final(&id).await;
    // Wait for the archiver, then make Redis forget the job as its retention would.
    let t = std::time::Instant::now();
    while srv.store.history_job(&id).await.unwrap().is_none() {
        assert!(t.elapsed() < S, "not archived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = srv.queue.prefix().to_string();
    let _: () = srv
        .queue
        .raw(
            redis::cmd("DEL")
                .arg(format!("{p}job:{id}"))
                .arg(format!("{p}log:{id}")),
        )
        .await
        .unwrap();
    let _: () = srv
        .queue
        .raw(redis::cmd("ZREM").arg(format!("{p}finished")).arg(&id))
        .await
        .unwrap();
    assert!(srv.queue.get(&id).await.is_err());
    let r = srv
        .req("GET", &format!("/api/jobs/{id}"), Some(&a1), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["status"], "succeeded");
    assert!(!r.json["log_tail"].as_array().unwrap().is_empty());
    let b1 = token(Role::Customer, Some("b1"), None);
    assert_eq!(
        srv.req("GET", &format!("/api/jobs/{id}"), Some(&b1), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = srv
        .req("GET", "/api/jobs?account=a1", Some(&admin), None)
        .await;
    assert!(r.json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == json!(id)));
    assert_eq!(
        srv.req(
            "POST",
            &format!("/api/jobs/{id}/cancel"),
            Some(&admin),
            None
        )
        .await
        .status,
        StatusCode::CONFLICT
    );
    // The one-job stream answers from the history: snapshot then complete.
    let mut ws = srv
        .ws(&format!("/api/jobs/{id}/live"), Some(&a1))
        .await
        .unwrap();
    let first = ws.next(S).await.unwrap();
    assert_eq!(first["type"], "snapshot");
    assert_eq!(first["job"]["status"], "succeeded");
    assert_eq!(ws.next(S).await.unwrap()["type"], "complete");
    // Another tenant cannot open it (404 like a missing job).
    let refused = srv.ws(&format!("/api/jobs/{id}/live"), Some(&b1)).await;
    assert_eq!(refused.err().map(|e| e.0), Some(404));
    // The all-jobs snapshot includes it for its tenant only.
    let mut all = srv.ws("/api/events/live", Some(&a1)).await.unwrap();
    let snap = all.next(S).await.unwrap();
    assert!(
        snap["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == json!(id)),
        "{snap}"
    );
    let mut other = srv.ws("/api/events/live", Some(&b1)).await.unwrap();
    let snap = other.next(S).await.unwrap();
    assert!(!snap.to_string().contains(&id));
    // The finished restore was audited as a job transition, once.
    let rec = audit_record(&srv, "restore_succeeded", "a1").await;
    assert_eq!(rec["job_id"], json!(id));
    assert_eq!(rec["actor"]["type"], "system");
}

/// Pages of jobs across Redis and the history: newest first, each job once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_pages_join_live_and_history() {
    let srv = start(Opts::default()).await;
    let admin = token(Role::Admin, None, None);
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(
            srv.enqueue(json!({"kind": "diagnostic", "payload": {}}))
                .await,
        );
    }
    for id in &ids {
        srv.wait_final(id).await;
    }
    // Some archived, some maybe not yet: pages must still be exact.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/jobs?kind=diagnostic&limit=3&cursor={c}"),
            None => "/api/jobs?kind=diagnostic&limit=3".into(),
        };
        let r = srv.req("GET", &path, Some(&admin), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        for j in r.json["jobs"].as_array().unwrap() {
            seen.push(j["id"].as_str().unwrap().to_string());
        }
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut want = ids.clone();
    want.reverse();
    assert_eq!(seen, want);
}

/// A store that is down: 503 `unavailable` on store routes, nothing lost from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_answers_503() {
    let srv = start(Opts::default()).await;
    let admin = token(Role::Admin, None, None);
    let a1 = token(Role::Customer, Some("a1"), None);
    let id = srv
        .enqueue(json!({"kind": "diagnostic", "payload": {}}))
        .await;
    srv.wait_final(&id).await;
    srv.store.close().await;
    for (tok, path) in [
        (&admin, "/api/accounts"),
        (&admin, "/api/audit"),
        (&admin, "/api/jobs"),
        (&a1, "/api/jobs"),
    ] {
        let r = srv.req("GET", path, Some(tok), None).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {}",
            r.json
        );
        assert_eq!(r.json["error"], "unavailable");
        assert!(r.headers.contains_key("retry-after"));
    }
    let r = srv.req("GET", "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // Live work goes on: the job is still in Redis, and new jobs are accepted and run.
    assert!(srv.queue.get(&id).await.is_ok());
    let id2 = srv
        .enqueue(json!({"kind": "diagnostic", "payload": {}}))
        .await;
    assert!(srv.wait_final(&id2).await.status.is_final());
    let r = srv
        .req("GET", &format!("/api/jobs/{id2}"), Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
}
