//! The hourly quota sweep for real: accounts provisioned on a temp host root, files in their
//! homes, access and Exim logs beside them, the `quota_sweep` job measuring all of it into the
//! store, and `GET /api/accounts/{id}/usage` and the WHMCS usage routes reading it back.
//! Real Redis, real SQLite, real files.

mod common;

use api::Role;
use common::*;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;

async fn server(root: &Path) -> Server {
    start(Opts {
        provision_root: Some(root.to_path_buf()),
        registry: workers::Registry::builtin(),
        ..Opts::default()
    })
    .await
}

fn append(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn access_line(bytes: u64) -> String {
    format!(
        "203.0.113.7 - - [01/Dec/2026:04:00:00 +0000] \"GET /x HTTP/1.1\" 200 {bytes} \"-\" \"curl/8\"\n"
    )
}

async fn sweep(srv: &Server, tick: i64) -> Value {
    let id = srv
        .enqueue(json!({"kind": "quota_sweep", "payload": {"tick": tick}}))
        .await;
    let job = srv.wait_final(&id).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    job.result.unwrap()
}

#[tokio::test]
async fn the_sweep_measures_disk_traffic_and_mail_once_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let srv = server(root).await;
    let alice = provisioned(&srv, root, "alice", "basic").await;
    let bob = provisioned(&srv, root, "bob", "basic").await;
    std::fs::write(alice.join("public_html/big.bin"), vec![7u8; 3 << 20]).unwrap();
    let logs = root.join("var/log/domlogs");
    append(
        &logs.join("alice.example"),
        &(access_line(1000) + &access_line(2345)),
    );
    append(&logs.join("www.bob.example-ssl_log"), &access_line(10));
    append(&logs.join("stranger.example.log"), &access_line(99));
    let mainlog = root.join("var/log/exim4/mainlog");
    for i in 0..3 {
        append(
            &mainlog,
            &format!("2026-12-01 04:00:0{i} 1a-00000{i}-AB <= alice@alice.example U=alice P=local S=300\n"),
        );
    }
    append(&mainlog, "2026-12-01 04:00:05 1a-000009-AB <= x@y H=(h) [203.0.113.1] P=esmtpsa A=dovecot_plain:info@bob.example S=900\n");
    append(
        &mainlog,
        "2026-12-01 04:00:06 1a-000009-AB => z@else.example R=dnslookup\n",
    );
    // Exim deferred alice three times in one hour over her hourly limit: one incident.
    for s in 7..10 {
        append(
            &mainlog,
            &format!("2026-12-01 04:00:0{s} H=(x.example) [203.0.113.5] F=<info@alice.example> temporarily rejected RCPT <d@b.example>: 452 4.5.3 Hourly sending limit of account alice reached (3.0/1h, max 2)\n"),
        );
    }

    let hour = 1_796_000_400; // an hour boundary (unix seconds)
    assert_eq!(hour % 3600, 0);
    let r = sweep(&srv, hour).await;
    // alice and bob live on the host; the seeded customers were never provisioned (pending).
    assert_eq!(r["accounts"], 2, "{r}");
    assert_eq!(r["measured"], 2, "{r}");
    assert_eq!(r["skipped_count"], 0, "{r}");
    // The embedded host has no system users, so no kernel quota report: each home is walked.
    assert!(
        r["disk_source"]
            .as_str()
            .unwrap()
            .starts_with("walk (system users are off"),
        "{r}"
    );
    assert!(
        r["bandwidth_source"].as_str().unwrap().contains("3 files"),
        "{r}"
    );
    assert_eq!(r["mail_incidents"]["audited"], 1, "{r}");

    let admin = token(Role::Admin, None, None);
    let from = chrono::DateTime::from_timestamp(hour - 3600, 0)
        .unwrap()
        .to_rfc3339();
    let to = chrono::DateTime::from_timestamp(hour + 7200, 0)
        .unwrap()
        .to_rfc3339();
    let q = format!("from={}&to={}", urlencode(&from), urlencode(&to));
    let u = usage(&srv, "alice", &q).await;
    assert_eq!(u.status, StatusCode::OK, "{}", u.json);
    let points = u.json["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{}", u.json);
    assert!(
        points[0]["disk_bytes"].as_i64().unwrap() >= 3 << 20,
        "{}",
        u.json
    );
    assert_eq!(points[0]["bandwidth_bytes"], 3345);
    assert_eq!(points[0]["mail_sent"], 3);
    assert_eq!(u.json["disk_limit_mb"], 1000);
    let b = usage(&srv, "bob", &q).await;
    assert_eq!(b.json["points"][0]["bandwidth_bytes"], 10, "{}", b.json);
    assert_eq!(b.json["points"][0]["mail_sent"], 1, "{}", b.json);

    // Customers see their own usage only.
    let own = token(Role::Customer, Some("alice"), None);
    let r2 = srv
        .req("GET", "/api/accounts/alice/usage", Some(&own), None)
        .await;
    assert_eq!(r2.status, StatusCode::OK);
    let other = srv
        .req("GET", "/api/accounts/bob/usage", Some(&own), None)
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND, "{}", other.json);
    // Bad parameters are clear errors.
    for (qs, code) in [
        ("step=week", StatusCode::BAD_REQUEST),
        ("step=90", StatusCode::UNPROCESSABLE_ENTITY),
        ("from=yesterday", StatusCode::BAD_REQUEST),
        ("nonsense=1", StatusCode::BAD_REQUEST),
        (
            "from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let r = srv
            .req(
                "GET",
                &format!("/api/accounts/alice/usage?{qs}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(r.status, code, "{qs}: {}", r.json);
        assert!(r.json["error"].is_string(), "{qs}: {}", r.json);
    }

    // The next hour counts only what the logs added since; a half-written line waits.
    append(&logs.join("alice.example"), &access_line(500));
    append(
        &logs.join("alice.example"),
        "203.0.113.7 - - [01/Dec/2026:05:00:00 +0000] \"GET /y HT",
    );
    let r = sweep(&srv, hour + 3600).await;
    assert_eq!(r["measured"], 2, "{r}");
    assert_eq!(r["mail_incidents"]["audited"], 0, "audited once: {r}");
    let u = usage(&srv, "alice", &q).await;
    let points = u.json["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{}", u.json);
    assert_eq!(points[1]["bandwidth_bytes"], 500, "{}", u.json);
    assert_eq!(points[1]["mail_sent"], 0, "{}", u.json);
    // The rest of that line arrives.
    append(
        &logs.join("alice.example"),
        "TP/1.1\" 200 70 \"-\" \"ua\"\n",
    );
    let r = sweep(&srv, hour + 7200).await;
    assert_eq!(r["measured"], 2, "{r}");
    // A resumed sweep: alice was measured for this hour by an earlier attempt.
    srv.store
        .record_usage(&[store::UsageSample {
            account: "alice".into(),
            at: (hour + 10_800) * 1000,
            disk_bytes: 1,
            disk_files: 1,
            bandwidth_bytes: 0,
            mail_sent: 0,
            db_bytes: None,
            addon_domains: 0,
            measured_at: store::now_ms(),
        }])
        .await
        .unwrap();
    let r = sweep(&srv, hour + 10_800).await;
    assert_eq!(r["already_measured"], 1, "{r}");
    assert_eq!(r["measured"], 1, "{r}");
    let to = chrono::DateTime::from_timestamp(hour + 14_400, 0)
        .unwrap()
        .to_rfc3339();
    let q = format!("from={}&to={}", urlencode(&from), urlencode(&to));
    let u = usage(&srv, "alice", &q).await;
    let points = u.json["points"].as_array().unwrap();
    assert_eq!(points.len(), 4, "{}", u.json);
    assert_eq!(
        points[2]["bandwidth_bytes"], 70,
        "the completed line: {}",
        u.json
    );
    assert_eq!(
        points[3]["disk_bytes"], 1,
        "the earlier attempt's row is kept"
    );
    // By the day: one bucket, traffic summed.
    let u = usage(&srv, "alice", &format!("{q}&step=day")).await;
    let points = u.json["points"].as_array().unwrap();
    let total: i64 = points
        .iter()
        .map(|p| p["bandwidth_bytes"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 3345 + 500 + 70, "{}", u.json);

    // A home that vanishes is a recorded skip, not a failed sweep.
    std::fs::remove_dir_all(&bob).unwrap();
    std::fs::rename(logs.join("alice.example"), logs.join("alice.example.1")).unwrap();
    append(&logs.join("alice.example"), &access_line(5));
    let r = sweep(&srv, hour + 14_400).await;
    assert_eq!(r["measured"], 1, "{r}");
    let listed: Vec<&str> = r["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["account"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&"bob"), "{r}");
    // The rotated log's new file was read from its start.
    let to = chrono::DateTime::from_timestamp(hour + 18_000, 0)
        .unwrap()
        .to_rfc3339();
    let q = format!("from={}&to={}", urlencode(&from), urlencode(&to));
    let u = usage(&srv, "alice", &q).await;
    let last = u.json["points"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["bandwidth_bytes"], 5, "{}", u.json);
}

/// `GET /api/accounts/{account}/usage?{query}` as an admin.
async fn usage(srv: &Server, account: &str, query: &str) -> Resp {
    let admin = token(Role::Admin, None, None);
    srv.req(
        "GET",
        &format!("/api/accounts/{account}/usage?{query}"),
        Some(&admin),
        None,
    )
    .await
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

async fn notifications(srv: &Server, account: &str) -> Vec<Value> {
    let admin = token(Role::Admin, None, None);
    let r = srv
        .req(
            "GET",
            &format!("/api/accounts/{account}/notifications"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    r.json["notifications"].as_array().unwrap().clone()
}

fn writable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o222 != 0
}

#[tokio::test]
async fn limits_warn_enforce_and_lift_with_overrides_and_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let srv = server(root).await;
    active_package(&srv, "tiny5", Some(5), Some(1)).await;
    let home = provisioned(&srv, root, "carol", "tiny5").await;
    let admin = token(Role::Admin, None, None);
    // Hours of this month (bandwidth is counted per calendar month): its second hour on.
    let hour = store::month_start_ms(store::now_ms()) / 1000 + 3600;

    // 4.2 MB of 5: a warning at 80 %, nothing enforced.
    std::fs::write(home.join("public_html/a.bin"), vec![1u8; 4_200_000]).unwrap();
    let r = sweep(&srv, hour).await;
    assert_eq!(r["levels_changed"][0]["after"], 80, "{r}");
    let n = notifications(&srv, "carol").await;
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0]["kind"], "usage_warning");
    assert!(
        n[0]["message"]
            .as_str()
            .unwrap()
            .contains("% of its disk limit"),
        "{n:?}"
    );
    assert!(writable(&home));

    // Over 5 MB: the home is made read-only; the next sweep, unchanged, adds nothing. Over
    // its 1 MB of bandwidth too: its sites are throttled.
    std::fs::write(home.join("public_html/b.bin"), vec![1u8; 1_200_000]).unwrap();
    append(
        &root.join("var/log/domlogs/carol.example"),
        &access_line(1_100_000),
    );
    let throttled = root.join("etc/npanel/accounts/carol/throttled");
    let r = sweep(&srv, hour + 3600).await;
    assert_eq!(r["newly_enforced"], json!(["carol"]), "{r}");
    assert!(!writable(&home));
    assert!(!writable(&home.join("public_html/a.bin")));
    assert!(
        std::fs::read_to_string(&throttled)
            .unwrap()
            .contains("bandwidth"),
        "the throttled flag"
    );
    let u = srv
        .req("GET", "/api/accounts/carol/usage", Some(&admin), None)
        .await;
    let disk = u.json["levels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["resource"] == "disk")
        .unwrap()
        .clone();
    assert_eq!(
        (disk["level"].clone(), disk["enforced"].clone()),
        (json!(100), json!(true))
    );
    sweep(&srv, hour + 7200).await;
    let n = notifications(&srv, "carol").await;
    assert_eq!(n.len(), 3, "one notice per change, not per sweep: {n:?}");
    assert_eq!(n[0]["kind"], "usage_over");

    // Only admins set overrides, with a reason.
    let own = token(Role::Customer, Some("carol"), None);
    let body = json!({"disk_mb": 100, "bandwidth_mb": 100, "reason": "upgrade agreed by phone"})
        .to_string();
    let r = srv
        .req(
            "PUT",
            "/api/accounts/carol/usage-override",
            Some(&own),
            Some(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let r = srv
        .req(
            "PUT",
            "/api/accounts/carol/usage-override",
            Some(&admin),
            Some(&json!({"disk_mb": 100, "reason": " "}).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    let r = srv
        .req(
            "PUT",
            "/api/accounts/carol/usage-override",
            Some(&admin),
            Some(&json!({"disk_mb": 100, "colour": "red", "reason": "x"}).to_string()),
        )
        .await;
    assert!(r.status.is_client_error(), "{}", r.json);
    let r = srv
        .req(
            "PUT",
            "/api/accounts/carol/usage-override",
            Some(&admin),
            Some(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    // The next sweep lifts it: the home's modes are back, and it says so.
    let r = sweep(&srv, hour + 10_800).await;
    assert_eq!(r["levels_changed"][0]["after"], 0, "{r}");
    assert!(writable(&home));
    assert!(writable(&home.join("public_html/a.bin")));
    assert!(!throttled.exists(), "no longer throttled");
    assert_eq!(
        notifications(&srv, "carol").await[0]["kind"],
        "usage_normal"
    );

    // Over again, but in a grace period: recorded, not enforced.
    let r = srv
        .req(
            "PUT",
            "/api/accounts/carol/usage-override",
            Some(&admin),
            Some(&json!({"disk_mb": 1, "grace_hours": 24, "reason": "moving sites"}).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = sweep(&srv, hour + 14_400).await;
    assert_eq!(r["in_grace"], json!(["carol"]), "{r}");
    assert!(writable(&home));
    assert!(notifications(&srv, "carol").await[0]["message"]
        .as_str()
        .unwrap()
        .contains("grace period"));
    // Both override changes and the levels are in the audit log, before → after.
    let a = srv
        .req(
            "GET",
            "/api/audit?account=carol&action=usage_",
            Some(&admin),
            None,
        )
        .await;
    let actions: Vec<&str> = a.json["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for want in [
        "usage_warning",
        "usage_over",
        "usage_normal",
        "usage_override_set",
    ] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    // Removing the override: the package's limits again.
    let r = srv
        .req(
            "DELETE",
            "/api/accounts/carol/usage-override",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.json["removed"], true, "{}", r.json);
    // A customer reads their own notices, not another's.
    let r = srv
        .req("GET", "/api/accounts/carol/notifications", Some(&own), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = srv
        .req("GET", "/api/accounts/a1/notifications", Some(&own), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn database_sizes_come_from_the_servers_information_schema() {
    let Ok(url) = std::env::var("NPANEL_TEST_MYSQL_URL") else {
        eprintln!("SKIP database_sizes_come_from_the_servers_information_schema: NPANEL_TEST_MYSQL_URL is not set");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let srv = server(root).await;
    // A name of its own, so parallel runs on one server never share a database.
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let user = format!("qdb{}", n % 1_000_000_000);
    srv.store
        .create_package(store::NewPackage {
            id: "onedb".into(),
            limits: store::Limits {
                databases: Some(1),
                ..store::Limits::default()
            },
            ..store::NewPackage::default()
        })
        .await
        .unwrap();
    srv.store
        .set_package_status("onedb", store::PackageStatus::Active)
        .await
        .unwrap();
    provisioned(&srv, root, &user, "onedb").await;
    let db = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("the test MariaDB answers");
    let schema = format!("{user}_wp");
    let _cleanup = DropDbs(url.clone(), vec![schema.clone()]);
    sqlx::query(&format!("CREATE DATABASE `{schema}`"))
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE `{schema}`.posts (id INT PRIMARY KEY AUTO_INCREMENT, body TEXT) ENGINE=InnoDB"
    ))
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO `{schema}`.posts (body) SELECT REPEAT('x', 200) FROM `{schema}`.seq_1_to_2000"
    ))
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(&format!("ANALYZE TABLE `{schema}`.posts"))
        .execute(&db)
        .await
        .unwrap();
    let r = sweep(&srv, 1_796_000_400).await;
    assert_eq!(
        r["databases"], "information_schema of the database server",
        "{r}"
    );
    let u = usage(&srv, &user, "").await;
    let bytes = u.json["now"]["db_bytes"].as_i64().unwrap_or(0);
    // 2 000 rows of 200 bytes: far more than an empty table's first 16 KiB page.
    assert!(bytes >= 256 * 1024, "{}", u.json);
    // One database of one allowed: at the limit, said once (the creation path refuses more).
    let n = notifications(&srv, &user).await;
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0]["resource"], "databases");
    assert_eq!(n[0]["level"], 100);
    assert!(
        n[0]["message"]
            .as_str()
            .unwrap()
            .contains("(1 of 1): no new databases can be created"),
        "{n:?}"
    );
}

#[tokio::test]
async fn mail_sent_addon_domains_and_databases_are_held_to_their_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let srv = server(root).await;
    srv.store
        .create_package(store::NewPackage {
            id: "mailer".into(),
            limits: store::Limits {
                email_per_hour: Some(5),
                email_burst_per_15min: Some(5),
                addon_domains: Some(1),
                ..store::Limits::default()
            },
            ..store::NewPackage::default()
        })
        .await
        .unwrap();
    srv.store
        .set_package_status("mailer", store::PackageStatus::Active)
        .await
        .unwrap();
    provisioned(&srv, root, "dave", "mailer").await;
    provisioned(&srv, root, "erin", "mailer").await;
    srv.store
        .add_addon_domain("dave", "dave-shop.example", Some(1))
        .await
        .unwrap();
    let hour = store::month_start_ms(store::now_ms()) / 1000 + 3600;
    // dave sent 6 messages in the hour (over his 5), erin 4 (80 %: a warning; 5, his limit, would not pause him).
    let mainlog = root.join("var/log/exim4/mainlog");
    for (who, n) in [("dave", 6), ("erin", 4)] {
        for i in 0..n {
            append(
                &mainlog,
                &format!("2026-12-01 04:00:0{i} 1a-00000{i}-AB <= {who}@{who}.example U={who} P=local S=300\n"),
            );
        }
    }
    let held = root.join("etc/npanel/accounts/dave/mail_held");
    let r = sweep(&srv, hour).await;
    assert_eq!(r["addon_domains"], "the store's addon domains", "{r}");
    assert!(held.exists(), "dave's outgoing mail is paused: {r}");
    assert!(!root.join("etc/npanel/accounts/erin/mail_held").exists());
    let n = notifications(&srv, "dave").await;
    let by = |resource: &str| {
        n.iter()
            .find(|x| x["resource"] == resource)
            .unwrap_or_else(|| panic!("no {resource} notice: {n:?}"))
            .clone()
    };
    let mail = by("email");
    assert_eq!(mail["kind"], "usage_over");
    assert!(
        mail["message"]
            .as_str()
            .unwrap()
            .contains("6 messages an hour of 5 per hour): its outgoing mail is paused"),
        "{mail}"
    );
    let addon = by("addon_domains");
    assert_eq!(addon["level"], 100);
    assert!(
        addon["message"]
            .as_str()
            .unwrap()
            .contains("no new addon domains can be added"),
        "{addon}"
    );
    let erin = notifications(&srv, "erin").await;
    assert_eq!(erin.len(), 1, "{erin:?}");
    assert_eq!(erin[0]["kind"], "usage_warning");
    assert_eq!(erin[0]["level"], 80);
    let audit = srv
        .store
        .search_audit(&store::AuditFilter {
            action: Some("usage_over".into()),
            account: Some("dave".into()),
            limit: 100,
            ..store::AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 2, "email and addon_domains, once each");

    // The next hour dave sent nothing: the pause is lifted, said once; the addon domains stay.
    let r = sweep(&srv, hour + 3600).await;
    assert!(!held.exists(), "lifted: {r}");
    let n = notifications(&srv, "dave").await;
    assert!(
        n.iter()
            .any(|x| x["resource"] == "email" && x["kind"] == "usage_normal"),
        "{n:?}"
    );
    assert_eq!(n.len(), 3, "nothing new for the addon domains: {n:?}");
    let r = sweep(&srv, hour + 7200).await;
    assert_eq!(r["levels_changed"], json!([]), "{r}");
}
