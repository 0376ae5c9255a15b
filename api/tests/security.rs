//! Security defaults and per-account overrides (DESIGN §13, issue 9) for real: the API records
//! the policy, the real `provision` handler writes the fragments under a temp host root (the
//! embedded default), the audit log says what changed. Real Redis, real SQLite, and PostgreSQL
//! when `NPANEL_TEST_POSTGRES_URL` is set.

mod common;

use api::Role;
use common::*;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const SETTINGS: &[&str] = &[
    "password_min_length",
    "password_min_classes",
    "password_mixed_case",
    "ssh_password_auth",
    "ssh_tcp_forwarding",
    "home_mode",
    "php_disable_functions",
    "php_allow_url_fopen",
    "php_open_basedir",
    "cron",
    "db_drop_privilege",
    "mail_relay",
];

async fn server(root: &Path, postgres: bool) -> Server {
    start(Opts {
        provision_root: Some(root.to_path_buf()),
        postgres,
        ..Opts::default()
    })
    .await
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

async fn post(srv: &Server, tok: &str, path: &str, body: Value) -> Resp {
    srv.req("POST", path, Some(tok), Some(&body.to_string()))
        .await
}

async fn policy(srv: &Server, tok: &str, id: &str) -> Resp {
    srv.req(
        "GET",
        &format!("/api/accounts/{id}/security-policy"),
        Some(tok),
        None,
    )
    .await
}

/// The account's `security_policy_changed` records, once there are at least `n`.
async fn audit(srv: &Server, account: &str, n: usize) -> Vec<Value> {
    srv.audit_at_least(
        &format!("action=security_policy_changed&account={account}"),
        n,
    )
    .await
}

async fn security_policy_on(pg: bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let srv = server(root, pg).await;
    let admin = token(Role::Admin, None, None);
    let r1 = token(Role::Reseller, None, Some("r1"));
    let r2 = token(Role::Reseller, None, Some("r2"));
    let dave = token(Role::Customer, Some("dave"), None);
    let frag = root.join("etc/npanel/accounts/dave");
    let home = root.join("home/dave");

    // Creating with a password that breaks the host's template (strict) is refused, naming
    // the rule; nothing is recorded.
    let r = post(
        &srv,
        &r1,
        "/api/accounts",
        json!({"id": "dave", "package": "basic",
        "domain": "dave.example", "password": "Short-pw1"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("password_min_length"),
        "{}",
        r.json
    );
    assert_eq!(
        policy(&srv, &admin, "dave").await.status,
        StatusCode::NOT_FOUND
    );

    // Created: the strict template's fragments are on disk.
    let r = post(
        &srv,
        &r1,
        "/api/accounts",
        json!({"id": "dave", "package": "basic",
        "domain": "dave.example", "password": "Correct-Horse-9-Battery"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = srv.wait_final(r.json["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    assert_eq!(read(&frag.join("profile")), "strict\n");
    let php = read(&frag.join("php.ini"));
    assert!(
        php.contains("disable_functions = \"exec,passthru,shell_exec,system,"),
        "{php}"
    );
    assert!(read(&frag.join("ssh.conf")).contains("PasswordAuthentication no\n"));
    let pol = read(&frag.join("policy.conf"));
    assert!(
        pol.contains("db_drop_privilege = no\n") && pol.contains("mail_open_relay = no\n"),
        "{pol}"
    );
    assert_eq!(mode(&home), 0o750);

    // GET: the template, where it comes from, every setting with its source.
    let g = policy(&srv, &dave, "dave").await;
    assert_eq!(g.status, StatusCode::OK, "{}", g.json);
    assert_eq!(g.json["policy"], "strict");
    assert_eq!(g.json["policy_source"], "host_default");
    let settings = g.json["settings"].as_object().unwrap();
    assert_eq!(settings.len(), SETTINGS.len(), "{}", g.json);
    for name in SETTINGS {
        assert_eq!(settings[*name]["source"], "template:strict", "{name}");
        assert!(!settings[*name]["value"].is_null(), "{name}");
    }
    assert_eq!(settings["password_min_length"]["value"], 12);
    assert_eq!(settings["ssh_password_auth"]["value"], false);
    assert_eq!(settings["home_mode"]["value"], "0750");
    assert_eq!(settings["db_drop_privilege"]["value"], false);
    assert_eq!(settings["mail_relay"]["value"], "authenticated");
    // Another reseller's view: 404, like a missing account.
    assert_eq!(
        policy(&srv, &r2, "dave").await.status,
        StatusCode::NOT_FOUND
    );

    // The account's reseller overrides three settings: 200, each change listed, one job that
    // rewrites the files.
    let path = "/api/accounts/dave/security-policy";
    let change = json!({"settings": {"ssh_password_auth": true, "home_mode": "0711",
        "php_disable_functions": ["exec", "system"]}, "reason": "ticket 4711: SFTP with passwords"});
    let r = post(&srv, &r1, path, change.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let changed = r.json["changed"].as_array().unwrap().clone();
    let fields: Vec<&str> = changed
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["ssh_password_auth", "home_mode", "php_disable_functions"],
        "{}",
        r.json
    );
    assert_eq!(
        (changed[0]["before"].clone(), changed[0]["after"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(
        (changed[1]["before"].clone(), changed[1]["after"].clone()),
        (json!("0750"), json!("0711"))
    );
    assert_eq!(
        r.json["settings"]["ssh_password_auth"]["source"],
        "override"
    );
    assert_eq!(r.json["reason"], "ticket 4711: SFTP with passwords");
    let job = srv.wait_final(r.json["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    assert_eq!(job.result.unwrap()["changed"], true);
    assert!(read(&frag.join("ssh.conf")).contains("PasswordAuthentication yes\n"));
    assert!(read(&frag.join("php.ini")).contains("disable_functions = \"exec,system\"\n"));
    assert_eq!(read(&frag.join("profile")), "strict\n");
    assert_eq!(mode(&home), 0o711);
    let g = policy(&srv, &admin, "dave").await;
    assert_eq!(g.json["settings"]["home_mode"]["value"], "0711");
    assert_eq!(g.json["settings"]["home_mode"]["source"], "override");
    assert_eq!(
        g.json["settings"]["password_min_length"]["source"],
        "template:strict"
    );

    // One audit record for the call: the reason and each field, before -> after.
    let recs = audit(&srv, "dave", 1).await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    let rec = &recs[0];
    assert_eq!(rec["result"], "success");
    assert_eq!(rec["actor"]["type"], "reseller");
    assert_eq!(rec["job_id"], job.id.as_str());
    assert_eq!(rec["changes"]["reason"], "ticket 4711: SFTP with passwords");
    let logged = rec["changes"]["fields"].as_array().unwrap();
    assert_eq!(logged.len(), 3, "{rec}");
    assert!(logged
        .iter()
        .any(|f| f["field"] == "ssh_password_auth" && f["before"] == false && f["after"] == true));
    assert_eq!(rec["changes"]["before"]["home_mode"], "0750");
    assert_eq!(rec["changes"]["after"]["home_mode"], "0711");

    // The same request again changes nothing: 200, changed [], no job, files as they were.
    let php_before = read(&frag.join("php.ini"));
    let r = post(&srv, &r1, path, change).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["changed"], json!([]));
    assert!(r.json["job"].is_null(), "{}", r.json);
    assert_eq!(read(&frag.join("php.ini")), php_before);

    // Refusals change nothing: an unknown key, a value out of range (named), a bad value next
    // to a good one, no reason; a customer is 403, another reseller 404.
    let before = policy(&srv, &admin, "dave").await.json;
    for (who, tok, body, status, needle) in [
        (
            "unknown key",
            &admin,
            json!({"settings": {"nope": 1}, "reason": "x"}),
            422,
            "settings.nope",
        ),
        (
            "out of range",
            &admin,
            json!({"settings": {"password_min_length": 4}, "reason": "x"}),
            422,
            "password_min_length",
        ),
        (
            "good and bad",
            &admin,
            json!({"settings": {"cron": false, "home_mode": "0777"}, "reason": "x"}),
            422,
            "home_mode",
        ),
        (
            "open relay",
            &admin,
            json!({"settings": {"mail_relay": "open"}, "reason": "x"}),
            422,
            "mail_relay",
        ),
        (
            "unknown template",
            &admin,
            json!({"policy": "lax", "reason": "x"}),
            422,
            "lax",
        ),
        (
            "no reason",
            &admin,
            json!({"settings": {"cron": false}}),
            422,
            "reason",
        ),
        (
            "customer",
            &dave,
            json!({"settings": {"cron": false}, "reason": "x"}),
            403,
            "",
        ),
        (
            "foreign reseller",
            &r2,
            json!({"settings": {"cron": false}, "reason": "x"}),
            404,
            "",
        ),
    ] {
        let r = post(&srv, tok, path, body).await;
        assert_eq!(r.status.as_u16(), status, "{who}: {}", r.json);
        assert!(
            r.json["message"].as_str().unwrap_or("").contains(needle),
            "{who}: {}",
            r.json
        );
        assert_eq!(policy(&srv, &admin, "dave").await.json, before, "{who}");
    }
    assert!(frag.join("cron.allow").exists());

    // Passwords follow the account's effective policy: strict refuses a short one and a
    // one-case one, naming the rule ...
    let pw = "/api/accounts/dave/password";
    let r = post(&srv, &dave, pw, json!({"password": "Short-pw1"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("strict security policy's rule password_min_length"),
        "{}",
        r.json
    );
    let r = post(&srv, &dave, pw, json!({"password": "all-lowercase-pass-1"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("password_mixed_case"),
        "{}",
        r.json
    );
    // ... the legacy template (shorter minimum) accepts what strict refused.
    let r = post(
        &srv,
        &admin,
        path,
        json!({"policy": "legacy", "reason": "old CMS needs it"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["policy"], "legacy");
    assert_eq!(r.json["policy_source"], "account");
    assert_eq!(
        r.json["settings"]["password_min_length"],
        json!({"value": 8, "source": "template:legacy"})
    );
    // The overrides stay pinned over the new template.
    assert_eq!(
        r.json["settings"]["home_mode"],
        json!({"value": "0711", "source": "override"})
    );
    let job = srv.wait_final(r.json["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    assert_eq!(read(&frag.join("profile")), "legacy\n");
    assert!(read(&frag.join("policy.conf")).contains("db_drop_privilege = yes\n"));
    let r = post(&srv, &dave, pw, json!({"password": "Short-pw1"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = srv.wait_final(r.json["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    // A password-rule-only override needs no host work.
    let r = post(
        &srv,
        &admin,
        path,
        json!({"settings": {"password_min_length": 16}, "reason": "PCI review"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["changed"][0]["field"], "password_min_length");
    assert!(r.json["job"].is_null(), "{}", r.json);
    let r = post(&srv, &dave, pw, json!({"password": "Short-pw1"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    // Un-pinning (null) and back to the host default.
    let r = post(
        &srv,
        &admin,
        path,
        json!({"policy": "default", "settings": {"password_min_length": null,
            "ssh_password_auth": null, "home_mode": null, "php_disable_functions": null},
            "reason": "review done"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["policy_source"], "host_default");
    for name in SETTINGS {
        assert_eq!(
            r.json["settings"][*name]["source"], "template:strict",
            "{name}"
        );
    }
    let job = srv.wait_final(r.json["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    assert!(read(&frag.join("ssh.conf")).contains("PasswordAuthentication no\n"));
    assert_eq!(mode(&home), 0o750);
    // Every call that reached the policy left exactly one record (4 changes, 1 no-op, 6
    // refusals, 1 denied; another tenant's 404 leaves none).
    // Counted once the outbox is empty: every record the calls wrote is in the store by then,
    // so a 13th cannot arrive after the count.
    srv.audit_delivered().await;
    let recs = audit(&srv, "dave", 12).await;
    assert_eq!(recs.len(), 12, "{recs:?}");
    assert_eq!(
        recs.iter().filter(|r| r["result"] == "denied").count(),
        1,
        "the customer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_policy_sqlite() {
    security_policy_on(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_policy_postgres() {
    if postgres_available() {
        security_policy_on(true).await;
    }
}
