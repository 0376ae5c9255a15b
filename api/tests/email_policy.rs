//! Per-account email limits (DESIGN §13, issue 9) through the API for real: the effective
//! policy and its sources, overrides stored and audited field by field, the real `provision`
//! handler writing the policy and the Exim ACL under a temp host root (the embedded default;
//! `exim -bV` checks it where Exim is installed), the files following create, change and
//! terminate. Real Redis, real SQLite, and PostgreSQL when `NPANEL_TEST_POSTGRES_URL` is set.

mod common;

use api::Role;
use common::*;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::path::Path;

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

async fn get(srv: &Server, tok: &str, id: &str) -> Resp {
    srv.req(
        "GET",
        &format!("/api/accounts/{id}/email-policy"),
        Some(tok),
        None,
    )
    .await
}

async fn put(srv: &Server, tok: &str, id: &str, body: Value) -> Resp {
    srv.req(
        "PUT",
        &format!("/api/accounts/{id}/email-policy"),
        Some(tok),
        Some(&body.to_string()),
    )
    .await
}

/// The account's `email_policy_changed` records, once there are at least `n` (newest first).
async fn audit(srv: &Server, account: &str, n: usize) -> Vec<Value> {
    srv.audit_at_least(&format!("action=email_policy_changed&account={account}"), n)
        .await
}

async fn job_ok(srv: &Server, job: &Value) -> Value {
    let job = srv.wait_final(job["id"].as_str().unwrap()).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    job.result.unwrap()
}

async fn email_policy_on(pg: bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let srv = server(root, pg).await;
    let admin = token(Role::Admin, None, None);
    let r1 = token(Role::Reseller, None, Some("r1"));
    let r2 = token(Role::Reseller, None, Some("r2"));
    let a1 = token(Role::Customer, Some("a1"), None);
    let npanel = root.join("etc/exim4/npanel");

    // A package with its own hourly limit; an account on it, created for real.
    let r = srv
        .req(
            "POST",
            "/api/packages",
            Some(&admin),
            Some(
                &json!({"id": "mailer", "limits": {"email_per_hour": 1000, "email_mb_per_hour": 200}})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let r = srv
        .req("POST", "/api/packages/mailer/activate", Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = srv
        .req(
            "POST",
            "/api/accounts",
            Some(&r1),
            Some(
                &json!({"id": "carol", "package": "mailer", "domain": "carol.example"}).to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let created = job_ok(&srv, &r.json["job"]).await;
    assert_eq!(created["account_id"], "carol");
    // The create job wrote the policy and the ACL.
    let policy_file = npanel.join("policies/carol.conf");
    let text = read(&policy_file);
    assert!(text.contains("per_hour = 1000\n"), "{text}");
    assert!(text.contains("burst_per_15min = 100\n"), "{text}");
    assert!(text.contains("mb_per_hour = 200\n"), "{text}");
    assert!(text.contains("domains = carol.example\n"), "{text}");
    assert!(read(&npanel.join("acl_ratelimit.conf")).contains("set acl_m_npanel_account = carol"));

    // GET: values and sources.
    let r = get(&srv, &admin, "carol").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(
        r.json["policy"],
        json!({"per_hour": 1000, "burst_per_15min": 100, "mb_per_hour": 200, "max_connections": 10})
    );
    assert_eq!(
        r.json["sources"],
        json!({"per_hour": "package", "burst_per_15min": "default", "mb_per_hour": "package", "max_connections": "default"})
    );
    assert_eq!(r.json["overrides"], json!({}));
    assert_eq!(r.json["package"], "mailer");
    assert_eq!(
        r.json["defaults"],
        json!({"per_hour": 500, "burst_per_15min": 100, "mb_per_hour": 50, "max_connections": 10})
    );
    // Seeded a1 (package basic, no email limits): all defaults; its customer sees it, others 404.
    let r = get(&srv, &a1, "a1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["policy"]["per_hour"], 500);
    assert_eq!(r.json["sources"]["per_hour"], "default");
    assert_eq!(get(&srv, &a1, "a2").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&srv, &r2, "a1").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&srv, &admin, "nobody").await.status,
        StatusCode::NOT_FOUND
    );

    // PUT by the reseller: a tiny hourly limit; the inherited burst follows it down.
    let r = put(
        &srv,
        &r1,
        "carol",
        json!({"policy": {"per_hour": 2, "max_connections": 3}, "reason": "spam complaint #12"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(
        r.json["changed"],
        json!(["per_hour", "burst_per_15min", "max_connections"])
    );
    assert_eq!(r.json["policy"]["policy"]["per_hour"], 2);
    assert_eq!(r.json["policy"]["policy"]["burst_per_15min"], 2);
    assert_eq!(r.json["policy"]["sources"]["per_hour"], "account");
    assert_eq!(r.json["policy"]["sources"]["burst_per_15min"], "default");
    assert_eq!(
        r.json["policy"]["overrides"],
        json!({"per_hour": 2, "max_connections": 3})
    );
    let done = job_ok(&srv, &r.json["job"]).await;
    assert_eq!(done["policy"]["per_hour"], 2);
    assert_eq!(done["changed"], true);
    let text = read(&policy_file);
    assert!(
        text.contains("per_hour = 2\nburst_per_15min = 2\n"),
        "{text}"
    );
    assert!(text.contains("max_connections = 3\n"), "{text}");
    assert!(read(&npanel.join("acl_ratelimit.conf")).contains("set acl_m_npanel_per_hour = 2\n"));

    // The audit record: who, why, each changed field before → after.
    let recs = audit(&srv, "carol", 1).await;
    let rec = &recs[0];
    assert_eq!(rec["result"], "success");
    assert_eq!(rec["actor"]["type"], "reseller");
    assert_eq!(rec["resource"]["type"], "email_policy");
    assert_eq!(rec["job_id"], r.json["job"]["id"]);
    let ch = &rec["changes"];
    assert_eq!(ch["reason"], "spam complaint #12");
    assert_eq!(
        ch["before"],
        json!({"per_hour": 1000, "burst_per_15min": 100, "max_connections": 10})
    );
    assert_eq!(
        ch["after"],
        json!({"per_hour": 2, "burst_per_15min": 2, "max_connections": 3})
    );
    assert_eq!(
        ch["fields"][0],
        json!({"field": "per_hour", "before": 1000, "after": 2, "source_before": "package", "source_after": "account"})
    );

    // Refusals: nothing stored, the policy as it was.
    for (body, want) in [
        (
            json!({"policy": {"per_day": 5}, "reason": "x"}),
            "unknown field policy.per_day",
        ),
        (
            json!({"policy": {"per_hour": 0}, "reason": "x"}),
            "per_hour is 0",
        ),
        (
            json!({"policy": {"mb_per_hour": 999999}, "reason": "x"}),
            "mb_per_hour is 999999",
        ),
        (
            json!({"policy": {"burst_per_15min": 5}, "reason": "x"}),
            "must not exceed per_hour",
        ),
        (
            json!({"policy": {"per_hour": "many"}, "reason": "x"}),
            "whole number",
        ),
        (json!({"policy": {"per_hour": 5}, "reason": " "}), "reason"),
        (json!({"policy": {"per_hour": 5}}), "reason"),
        (
            json!({"policy": {"per_hour": 5}, "reason": "x", "extra": 1}),
            "extra",
        ),
    ] {
        let r = put(&srv, &admin, "carol", body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.json
        );
        assert!(
            r.json["message"].as_str().unwrap().contains(want),
            "{body}: {}",
            r.json
        );
    }
    assert_eq!(
        put(
            &srv,
            &a1,
            "a1",
            json!({"policy": {"per_hour": 5}, "reason": "x"})
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        put(
            &srv,
            &r2,
            "carol",
            json!({"policy": {"per_hour": 5}, "reason": "x"})
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let r = get(&srv, &admin, "carol").await;
    assert_eq!(r.json["policy"]["per_hour"], 2);

    // null drops an override (back to the package); the same values again start no job.
    let r = put(
        &srv,
        &admin,
        "carol",
        json!({"policy": {"per_hour": null}, "reason": "resolved"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["policy"]["policy"]["per_hour"], 1000);
    assert_eq!(r.json["policy"]["sources"]["per_hour"], "package");
    assert_eq!(r.json["policy"]["overrides"], json!({"max_connections": 3}));
    job_ok(&srv, &r.json["job"]).await;
    assert!(read(&policy_file).contains("per_hour = 1000\n"));
    let r = put(
        &srv,
        &admin,
        "carol",
        json!({"policy": {"max_connections": 3}, "reason": "again"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["changed"], json!([]));
    assert_eq!(r.json["job"], Value::Null);
    // 1 + 6 refused once the body parsed (failure) + 2.
    let recs = audit(&srv, "carol", 9).await;
    let again = recs
        .iter()
        .find(|r| r["changes"]["reason"] == "again")
        .unwrap_or_else(|| panic!("{recs:#?}"));
    assert_eq!(again["changes"]["before"], json!({}));
    assert_eq!(again["job_id"], Value::Null);
    assert_eq!(
        recs.iter().filter(|r| r["result"] == "failure").count(),
        6,
        "{recs:?}"
    );

    // Terminate: the policy and its ACL stanza go.
    let r = srv
        .req(
            "POST",
            "/api/accounts/carol/terminate",
            Some(&admin),
            Some("{}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    job_ok(&srv, &r.json["job"]).await;
    assert!(!policy_file.exists());
    assert!(!read(&npanel.join("acl_ratelimit.conf")).contains("carol"));
    // A terminated account's policy cannot change.
    let r = put(
        &srv,
        &admin,
        "carol",
        json!({"policy": {"per_hour": 5}, "reason": "x"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_policy_routes_on_sqlite() {
    email_policy_on(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_policy_routes_on_postgres() {
    if !postgres_available() {
        return;
    }
    email_policy_on(true).await;
}

/// Exim's deferrals in its main log: one `email_limit_reached` record per account, limit and
/// window, however many messages were deferred; a re-read log audits nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_incidents_are_audited_once_per_window() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), false).await;
    let log = dir.path().join("mainlog");
    let line = |t: &str, who: &str, what: &str| {
        format!(
            "2026-12-01 {t} H=(x.example) [203.0.113.5] F=<info@{who}.example> temporarily rejected RCPT <d@b.example>: 452 4.5.3 {what} limit of account {who} reached (3.0/1h, max 2)\n"
        )
    };
    let append = |text: &str| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    append(
        &(line("05:07:39", "a1", "Hourly sending")
            + &line("05:07:40", "a1", "Hourly sending")
            + &line("05:20:00", "a1", "15-minute sending")
            + "2026-12-01 05:30:00 1a-0001-AB <= x@a1.example U=a1 P=local S=300\n"
            + &line("05:31:00", "b1", "Hourly sending")),
    );
    let s = workers::mail_incidents::scan_mail_log(&srv.store, &log)
        .await
        .unwrap();
    assert_eq!(
        (s.lines, s.deferrals, s.incidents, s.audited),
        (5, 4, 3, 3),
        "{s:?}"
    );
    // More deferrals in the same windows: counted, not audited; a new hour: audited.
    append(&(line("05:50:00", "a1", "Hourly sending") + &line("06:00:01", "a1", "Hourly sending")));
    let s = workers::mail_incidents::scan_mail_log(&srv.store, &log)
        .await
        .unwrap();
    assert_eq!((s.lines, s.deferrals, s.audited), (2, 2, 1), "{s:?}");
    // The log read again from its start (a lost cursor): nothing audited twice.
    srv.store
        .set_usage_cursors(&[(format!("mail_incidents:{}", log.display()), 0, 0)])
        .await
        .unwrap();
    let s = workers::mail_incidents::scan_mail_log(&srv.store, &log)
        .await
        .unwrap();
    assert_eq!((s.lines, s.audited), (7, 0), "{s:?}");
    let inc = srv.store.email_incidents("a1", 0).await.unwrap();
    assert_eq!(inc.len(), 3, "{inc:?}");
    let five = inc
        .iter()
        .find(|i| i.kind == "per_hour" && i.deferrals >= 3)
        .unwrap();
    assert_eq!(five.first_at % 1000, 0);

    // Through the API: a1's reseller sees a1's records, with the window and the 452 line.
    let r1 = token(Role::Reseller, None, Some("r1"));
    let r = srv
        .req(
            "GET",
            "/api/audit?action=email_limit_reached&account=a1",
            Some(&r1),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let recs = r.json["records"].as_array().unwrap();
    assert_eq!(recs.len(), 3, "{}", r.json);
    let rec = recs
        .iter()
        .find(|r| r["changes"]["window_start"] == "2026-12-01T05:00:00+00:00")
        .unwrap_or_else(|| panic!("{recs:?}"));
    assert_eq!(rec["actor"]["type"], "system");
    assert_eq!(rec["changes"]["limit"], "per_hour");
    assert_eq!(rec["result"], "denied");
    assert!(rec["related_logs"][0]
        .as_str()
        .unwrap()
        .starts_with("452 4.5.3 Hourly sending limit of account a1"));
}
