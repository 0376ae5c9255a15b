//! The API and its WebSocket streams over real sockets, against a real Redis and real workers.

mod common;

use api::Role;
use common::*;
use hyper::StatusCode;
use queue::JobKind;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use workers::Registry;

const S: Duration = Duration::from_secs(5);

/// Three roles × own / other tenant × every route and both WS endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_matrix() {
    let srv = start(Opts::default()).await;
    // Tenant 1: reseller r1, customer a1. Tenant 2: reseller r2, customer b1.
    let mine = srv
        .enqueue(json!({"kind": "restore", "payload": {"archive": "x"}, "account": "a1", "reseller": "r1"}))
        .await;
    let theirs = srv
        .enqueue(json!({"kind": "restore", "payload": {"archive": "x"}, "account": "b1", "reseller": "r2"}))
        .await;
    srv.wait_final(&mine).await;
    srv.wait_final(&theirs).await;
    let admin = token(Role::Admin, None, None);
    let reseller = token(Role::Reseller, None, Some("r1"));
    let customer = token(Role::Customer, Some("a1"), Some("r1"));
    // A customer of the same reseller but another account must not see a1's jobs either.
    let sibling = token(Role::Customer, Some("a2"), Some("r1"));

    for (name, tok, sees_mine, sees_theirs) in [
        ("admin", &admin, true, true),
        ("reseller", &reseller, true, false),
        ("customer", &customer, true, false),
        ("sibling", &sibling, false, false),
    ] {
        for (id, visible) in [(&mine, sees_mine), (&theirs, sees_theirs)] {
            let ctx = format!("{name} on {id}");
            let get = srv
                .req("GET", &format!("/api/jobs/{id}"), Some(tok), None)
                .await;
            let prog = srv
                .req(
                    "GET",
                    &format!("/api/restore/{id}/progress"),
                    Some(tok),
                    None,
                )
                .await;
            let cancel = srv
                .req("POST", &format!("/api/jobs/{id}/cancel"), Some(tok), None)
                .await;
            let ws1 = srv.ws(&format!("/api/jobs/{id}/live"), Some(tok)).await;
            let ws2 = srv.ws(&format!("/api/restore/{id}/live"), Some(tok)).await;
            if visible {
                assert_eq!(get.status, StatusCode::OK, "{ctx}");
                assert_eq!(get.json["id"], id.as_str());
                assert_eq!(prog.status, StatusCode::OK, "{ctx}");
                assert_eq!(prog.json["progress_percent"], 100.0, "{ctx}");
                for k in [
                    "id",
                    "status",
                    "progress_percent",
                    "current_stage",
                    "bytes_total",
                    "bytes_processed",
                    "speed_mbps",
                    "eta_seconds",
                    "log_tail",
                ] {
                    assert!(prog.json.get(k).is_some(), "{ctx}: progress lacks {k}");
                }
                // Finished: cancel is a conflict, not a 404.
                assert_eq!(cancel.status, StatusCode::CONFLICT, "{ctx}");
                for ws in [ws1, ws2] {
                    let mut ws = ws.unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
                    let snap = ws.next(S).await.unwrap();
                    assert_eq!(snap["type"], "snapshot");
                    assert_eq!(snap["job"]["id"], id.as_str());
                    let done = ws.next(S).await.unwrap();
                    assert_eq!(done["type"], "complete");
                    assert_eq!(done["success"], true);
                }
            } else {
                for r in [&get, &prog, &cancel] {
                    assert_eq!(r.status, StatusCode::NOT_FOUND, "{ctx}: {}", r.json);
                    assert_eq!(r.json["error"], "not_found");
                    assert!(!r.json.to_string().contains("b1"), "{ctx}: leaked");
                }
                assert_eq!(ws1.err().unwrap().0, 404, "{ctx}");
                assert_eq!(ws2.err().unwrap().0, 404, "{ctx}");
            }
            let retry = srv
                .req("POST", &format!("/api/jobs/{id}/retry"), Some(tok), None)
                .await;
            if visible {
                // Succeeded jobs cannot be re-run: conflict, which proves the route saw the job.
                assert_eq!(retry.status, StatusCode::CONFLICT, "{ctx}: {}", retry.json);
            } else {
                assert_eq!(retry.status, StatusCode::NOT_FOUND, "{ctx}");
            }
        }
        // List: exactly the visible jobs.
        let list = srv.req("GET", "/api/jobs", Some(tok), None).await;
        assert_eq!(list.status, StatusCode::OK);
        let ids: BTreeSet<String> = list.json["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.contains(&mine), sees_mine, "{name} list");
        assert_eq!(ids.contains(&theirs), sees_theirs, "{name} list");
        let other = srv
            .req("GET", "/api/jobs?account=b1", Some(tok), None)
            .await;
        assert_eq!(
            other.json["jobs"].as_array().unwrap().is_empty(),
            !sees_theirs,
            "{name}"
        );

        // Admin routes and generic enqueue: admins only.
        let is_admin = name == "admin";
        let want = |ok: StatusCode| if is_admin { ok } else { StatusCode::FORBIDDEN };
        for (m, p, b, ok) in [
            ("GET", "/api/admin/queue", None, StatusCode::OK),
            (
                "PUT",
                "/api/admin/concurrency/diagnostic",
                Some(r#"{"limit": 10}"#),
                StatusCode::OK,
            ),
            ("POST", "/api/admin/queue/pause", None, StatusCode::OK),
            ("POST", "/api/admin/queue/resume", None, StatusCode::OK),
            (
                "POST",
                "/api/jobs",
                Some(r#"{"kind": "diagnostic"}"#),
                StatusCode::ACCEPTED,
            ),
        ] {
            let r = srv.req(m, p, Some(tok), b).await;
            assert_eq!(r.status, want(ok), "{name} {m} {p}: {}", r.json);
        }
        // Health report of a migration nobody ran: 404 for all; running one: not in this build.
        let h = srv
            .req("GET", "/api/migration/m1/health", Some(tok), None)
            .await;
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        let h = srv
            .req(
                "POST",
                "/api/migration/m1/health",
                Some(tok),
                Some(r#"{"account": "a1"}"#),
            )
            .await;
        let expect = if name == "sibling" {
            // a customer acts for its own account only (r1 owns a1, so the reseller may)
            StatusCode::FORBIDDEN
        } else {
            StatusCode::NOT_IMPLEMENTED
        };
        assert_eq!(h.status, expect, "{name}: {}", h.json);
    }

    // Starting a restore: customers for their own account only; resellers record their id.
    let r = srv
        .req(
            "POST",
            "/api/restore",
            Some(&customer),
            Some(r#"{"archive": "y"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let j = srv.queue.get(r.json["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(
        (j.account.as_deref(), j.reseller.as_deref()),
        (Some("a1"), Some("r1"))
    );
    let r = srv
        .req(
            "POST",
            "/api/restore",
            Some(&customer),
            Some(r#"{"archive": "y", "account": "b1"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A reseller names its own customers only (checked against the store); another
    // reseller's customer answers like a missing one.
    for (acct, want) in [
        ("a9", StatusCode::NOT_FOUND),
        ("b1", StatusCode::NOT_FOUND),
        ("r1", StatusCode::FORBIDDEN),
        ("a2", StatusCode::ACCEPTED),
    ] {
        let body = json!({"archive": "y", "account": acct}).to_string();
        let r = srv
            .req("POST", "/api/restore", Some(&reseller), Some(&body))
            .await;
        assert_eq!(r.status, want, "{acct}: {}", r.json);
        if want == StatusCode::ACCEPTED {
            let j = srv.queue.get(r.json["id"].as_str().unwrap()).await.unwrap();
            assert_eq!(
                (j.account.as_deref(), j.reseller.as_deref()),
                (Some("a2"), Some("r1"))
            );
        }
    }
    // Customers name one of their backups, never a server path.
    for archive in ["/home/other/secret.tar", "../x.tar", "a/b.tar"] {
        let body = serde_json::json!({ "archive": archive }).to_string();
        let r = srv
            .req("POST", "/api/restore", Some(&customer), Some(&body))
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{archive}: {}",
            r.json
        );
    }
    // Idempotency keys are per tenant: the same key from two customers makes two jobs, and
    // neither learns of the other's.
    let other = token(Role::Customer, Some("b1"), Some("r2"));
    let body = r#"{"archive": "nightly.tar", "idempotency_key": "nightly"}"#;
    let a = srv
        .req("POST", "/api/restore", Some(&customer), Some(body))
        .await;
    let b = srv
        .req("POST", "/api/restore", Some(&other), Some(body))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    assert_eq!(b.status, StatusCode::ACCEPTED, "{}", b.json);
    assert_ne!(a.json["id"], b.json["id"]);
    assert_eq!(b.json["existed"], false);
    let again = srv
        .req("POST", "/api/restore", Some(&customer), Some(body))
        .await;
    assert_eq!(again.json["id"], a.json["id"]);
    assert_eq!(again.json["existed"], true);

    // No token at all: 401 on every /api route.
    for (m, p) in [
        ("GET", "/api/jobs"),
        ("GET", &*format!("/api/jobs/{mine}")),
        ("GET", "/api/admin/queue"),
    ] {
        assert_eq!(
            srv.req(m, p, None, None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(srv.ws("/api/events/live", None).await.err().unwrap().0, 401);
}

/// `/api/events/live` carries only the caller's tenant's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_is_filtered_by_tenant() {
    let srv = start(Opts::default()).await;
    let customer = token(Role::Customer, Some("a1"), Some("r1"));
    let reseller2 = token(Role::Reseller, None, Some("r2"));
    // ?token= works for browsers.
    let mut c = srv
        .ws(&format!("/api/events/live?token={customer}"), None)
        .await
        .unwrap();
    let mut r2 = srv.ws("/api/events/live", Some(&reseller2)).await.unwrap();
    let mut adm = srv
        .ws("/api/events/live", Some(&token(Role::Admin, None, None)))
        .await
        .unwrap();
    for ws in [&mut c, &mut r2, &mut adm] {
        assert_eq!(ws.next(S).await.unwrap()["type"], "snapshot");
    }
    let mine = srv.enqueue(json!({"kind": "restore", "payload": {"archive": "x"}, "account": "a1", "reseller": "r1"})).await;
    let theirs = srv.enqueue(json!({"kind": "restore", "payload": {"archive": "x"}, "account": "b1", "reseller": "r2"})).await;
    srv.wait_final(&mine).await;
    srv.wait_final(&theirs).await;
    // One marker job per tenant, enqueued once both jobs have ended. A socket gets the event
    // stream in its order, so once it has a marker's `complete` it has everything of the two
    // jobs it would ever get: read up to there instead of until a moment of silence.
    let mark_a = srv.enqueue(json!({"kind": "restore", "payload": {"archive": "steps:1:1"}, "account": "a1", "reseller": "r1"})).await;
    let mark_b = srv.enqueue(json!({"kind": "restore", "payload": {"archive": "steps:1:1"}, "account": "b1", "reseller": "r2"})).await;
    let ids = |msgs: Vec<Value>| -> BTreeSet<String> {
        msgs.iter()
            .map(|m| m["job_id"].as_str().unwrap().to_string())
            .collect()
    };
    let complete_of = |id: &str, m: &Value| m["job_id"] == id && m["type"] == "complete";
    let within = Duration::from_secs(20);
    let seen_c = ids(c.until(within, |m| complete_of(&mark_a, m)).await);
    let seen_r2 = ids(r2.until(within, |m| complete_of(&mark_b, m)).await);
    let mut left = BTreeSet::from([mark_a.clone(), mark_b.clone()]);
    let seen_adm = ids(adm
        .until(within, |m| {
            if m["type"] == "complete" {
                left.remove(m["job_id"].as_str().unwrap());
            }
            left.is_empty()
        })
        .await);
    assert_eq!(seen_c, BTreeSet::from([mine.clone(), mark_a.clone()]));
    assert_eq!(seen_r2, BTreeSet::from([theirs.clone(), mark_b.clone()]));
    assert_eq!(seen_adm, BTreeSet::from([mine, theirs, mark_a, mark_b]));
}

/// Drop a live connection mid-job, reconnect with `?since=`: nothing missed, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_a_dropped_connection() {
    let srv = start(Opts::default()).await;
    let admin = token(Role::Admin, None, None);
    let id = srv
        .enqueue(json!({"kind": "restore", "payload": {"archive": "steps:6:40"}, "account": "a1"}))
        .await;
    let mut ws = srv
        .ws(&format!("/api/jobs/{id}/live"), Some(&admin))
        .await
        .unwrap();
    let snap = ws.next(S).await.unwrap();
    assert_eq!(snap["type"], "snapshot");
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(ws.next(S).await.expect("events before the drop"));
    }
    drop(ws); // no close handshake: as a network drop
    let last = got.last().unwrap()["seq"].as_str().unwrap().to_string();
    // Events keep coming meanwhile: reconnect once the stream holds one of the job's events
    // after the last one seen, so the replay has something it missed to catch up on.
    let t = std::time::Instant::now();
    loop {
        let after = srv.queue.events_since(&last, 10_000).await.unwrap();
        if after.iter().any(|e| e.job_id == id) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no event after {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ws = srv
        .ws(&format!("/api/jobs/{id}/live?since={last}"), Some(&admin))
        .await
        .unwrap();
    let rest = ws.drain(S).await;
    assert_eq!(rest.last().unwrap()["type"], "complete", "{rest:?}");
    assert!(
        rest.iter().all(|m| m["type"] != "snapshot"),
        "replay, not snapshot"
    );
    got.extend(rest);
    // Exactly the job's events after the snapshot, in order.
    let from = seq(&snap);
    let want: Vec<String> = srv
        .queue
        .events_since("0", 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.job_id == id && ws::parse_seq(&e.seq).unwrap() > from)
        .map(|e| e.seq)
        .collect();
    let seen: Vec<String> = got
        .iter()
        .map(|m| m["seq"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, want);
    assert!(got
        .iter()
        .any(|m| m["type"] == "stage" && m["current_stage"] == "restoring_data"));
    assert!(got.iter().any(|m| m["type"] == "log"));
    let c = got.last().unwrap();
    assert_eq!(c["success"], true);

    // Reconnecting after the end (since = the complete's seq) gets a complete and a close,
    // not a socket that waits forever.
    let end = c["seq"].as_str().unwrap().to_string();
    let mut ws = srv
        .ws(&format!("/api/jobs/{id}/live?since={end}"), Some(&admin))
        .await
        .unwrap();
    let after = ws.drain(S).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["type"], "complete");
    assert_eq!(after[0]["success"], true);
}

async fn fast_reporter(ctx: workers::JobContext) -> Result<Value, workers::JobError> {
    // 1000 progress steps per second for 3 s.
    let total = 3000u64;
    for i in 0..=total {
        ctx.progress("restoring_data", i, total);
        if i % 10 == 0 {
            ctx.sleep(Duration::from_millis(10)).await?;
        }
    }
    Ok(json!({}))
}

/// A handler reporting ~1000 steps/s yields about one `progress` message per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_coalesced_to_about_one_per_second() {
    let srv = start(Opts {
        registry: Registry::new().register(JobKind::Restore, fast_reporter),
        ..Opts::default()
    })
    .await;
    let admin = token(Role::Admin, None, None);
    let mut all = srv.ws("/api/events/live", Some(&admin)).await.unwrap();
    assert_eq!(all.next(S).await.unwrap()["type"], "snapshot");
    let id = srv
        .enqueue(json!({"kind": "restore", "payload": {"archive": "x"}}))
        .await;
    // Up to the job's `complete` (not until a silence, which a slow machine can make early).
    let msgs = all
        .until(Duration::from_secs(30), |m| {
            m["job_id"] == id.as_str() && m["type"] == "complete"
        })
        .await;
    let job = srv.wait_final(&id).await;
    let secs =
        (job.finished_at.unwrap() - job.started_at.unwrap()).num_milliseconds() as f64 / 1000.0;
    let progress = msgs
        .iter()
        .filter(|m| m["job_id"] == id.as_str() && m["type"] == "progress")
        .count();
    assert!(secs >= 2.5, "handler ran {secs}s");
    assert!(
        (secs as usize).saturating_sub(1) <= progress && progress <= secs.ceil() as usize + 1,
        "{progress} progress messages in {secs}s"
    );
    assert!(msgs
        .iter()
        .any(|m| m["job_id"] == id.as_str() && m["type"] == "complete"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_is_503_with_retry_after_and_nothing_is_lost() {
    let mut cfg = queue::testing::config("full");
    cfg.max_pending = 2;
    let srv = start(Opts {
        workers: false,
        queue: Some(cfg),
        ..Opts::default()
    })
    .await;
    let admin = token(Role::Admin, None, None);
    let body = r#"{"kind": "diagnostic"}"#;
    for _ in 0..2 {
        assert_eq!(
            srv.req("POST", "/api/jobs", Some(&admin), Some(body))
                .await
                .status,
            StatusCode::ACCEPTED
        );
    }
    let r = srv.req("POST", "/api/jobs", Some(&admin), Some(body)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json["error"], "queue_full");
    let ra: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(ra >= 1);
    assert_eq!(srv.queue.stats().await.unwrap().pending, 2);
}

/// A Redis out of memory is 503 `unavailable` that says so; one of the queue's keys holding the
/// wrong type (a bug, not an outage) is 500 `internal`, which clients do not retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_and_wrong_types_are_told_apart() {
    let r = queue::testing::PrivateRedis::start();
    let mut cfg = queue::testing::config("oomapi");
    cfg.redis_url = r.url();
    let srv = start(Opts {
        workers: false,
        queue: Some(cfg),
        ..Opts::default()
    })
    .await;
    let admin = token(Role::Admin, None, None);
    let body = r#"{"kind": "diagnostic"}"#;
    let ok = srv.req("POST", "/api/jobs", Some(&admin), Some(body)).await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.json);
    // Every key of the queue holds a string now.
    let keys: Vec<String> = srv
        .queue
        .raw(redis::cmd("KEYS").arg(format!("{}*", srv.queue.prefix())))
        .await
        .unwrap();
    for k in &keys {
        let _: () = srv.queue.raw(redis::cmd("DEL").arg(k)).await.unwrap();
        let _: () = srv
            .queue
            .raw(redis::cmd("SET").arg(k).arg("x"))
            .await
            .unwrap();
    }
    let bad = srv.req("POST", "/api/jobs", Some(&admin), Some(body)).await;
    assert_eq!(
        bad.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        bad.json
    );
    assert_eq!(bad.json["error"], "internal");
    for k in &keys {
        let _: () = srv.queue.raw(redis::cmd("DEL").arg(k)).await.unwrap();
    }
    // Full: every write refused.
    let _: () = srv
        .queue
        .raw(redis::cmd("SET").arg("filler").arg(vec![b'x'; 4 << 20]))
        .await
        .unwrap();
    let _: () = srv
        .queue
        .raw(
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg("noeviction"),
        )
        .await
        .unwrap();
    let _: () = srv
        .queue
        .raw(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1mb"))
        .await
        .unwrap();
    let full = srv.req("POST", "/api/jobs", Some(&admin), Some(body)).await;
    assert_eq!(
        full.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        full.json
    );
    assert_eq!(full.json["error"], "unavailable");
    assert!(
        full.json["message"]
            .as_str()
            .unwrap()
            .contains("out of memory"),
        "{}",
        full.json
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after_and_spare_admins() {
    let srv = start(Opts {
        workers: false,
        api: api::ApiConfig {
            rate_limit: api::limit::RateLimitConfig {
                per_ip_per_minute: 5,
                per_account_per_minute: 3,
            },
            ..Default::default()
        },
        ..Opts::default()
    })
    .await;
    let admin = token(Role::Admin, None, None);
    for _ in 0..20 {
        assert_eq!(
            srv.req("GET", "/api/jobs", Some(&admin), None).await.status,
            StatusCode::OK
        );
    }
    // Per account: the 4th call of one customer is refused.
    let cust = token(Role::Customer, Some("a1"), None);
    for _ in 0..3 {
        assert_eq!(
            srv.req("GET", "/api/jobs", Some(&cust), None).await.status,
            StatusCode::OK
        );
    }
    let r = srv.req("GET", "/api/jobs", Some(&cust), None).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json["error"], "rate_limited");
    assert!(
        r.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Another tenant behind the same IP is not held back by the first one.
    let other = token(Role::Customer, Some("b1"), None);
    assert_eq!(
        srv.req("GET", "/api/jobs", Some(&other), None).await.status,
        StatusCode::OK
    );
    // Per IP: calls without a valid token share the IP bucket (5 a minute here).
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(srv.req("GET", "/api/jobs", None, None).await.status);
    }
    assert_eq!(codes[..5], [StatusCode::UNAUTHORIZED; 5], "{codes:?}");
    assert_eq!(codes[5], StatusCode::TOO_MANY_REQUESTS, "{codes:?}");
    // Probes are never limited.
    assert_eq!(
        srv.req("GET", "/healthz", None, None).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let srv = start(Opts {
        workers: false,
        registry: Registry::builtin(), // like the shipped binary: no restore handler
        api: api::ApiConfig {
            body_limit_bytes: 2048,
            rate_limit: api::limit::RateLimitConfig {
                per_ip_per_minute: 0,
                per_account_per_minute: 0,
            },
            ..Default::default()
        },
        ..Opts::default()
    })
    .await;
    let admin = token(Role::Admin, None, None);
    let post = |b: String| {
        let (srv, admin) = (&srv, admin.clone());
        async move { srv.req("POST", "/api/jobs", Some(&admin), Some(&b)).await }
    };
    let r = post("{not json".into()).await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let r = post(r#"{"kind": "backups"}"#.into()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("unknown job type"),
        "{}",
        r.json
    );
    let r = post(r#"{"kind": "diagnostic", "payload": {"duration": 1}}"#.into()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = post(format!(
        r#"{{"kind": "diagnostic", "payload": {{"x": "{}"}}}}"#,
        "a".repeat(4096)
    ))
    .await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    let r = post(r#"{"kind": "restore", "payload": {"archive": "/b.tar"}}"#.into()).await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (StatusCode::NOT_IMPLEMENTED, Some("not_available"))
    );
    assert!(r.json["message"]
        .as_str()
        .unwrap()
        .contains("not available in this build"));
    let r = srv
        .req(
            "POST",
            "/api/restore",
            Some(&admin),
            Some(r#"{"archive": "/b.tar"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED);
    let r = srv
        .req("GET", "/api/jobs?status=sleeping", Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        srv.queue.stats().await.unwrap().pending,
        0,
        "nothing enqueued by bad input"
    );

    // Bad, foreign-signed and expired tokens all get the same 401 body as a missing one.
    let missing = srv.req("GET", "/api/jobs", None, None).await;
    let c = api::auth::Claims::new("t", Role::Admin, None, None, Duration::from_secs(60)).unwrap();
    let foreign = api::auth::Auth::new(b"some other secret, 32 bytes long!")
        .mint(&c)
        .unwrap();
    let mut old = c.clone();
    old.iat -= 3600;
    old.exp = old.iat + 60;
    let expired = api::auth::Auth::new(SECRET).mint(&old).unwrap();
    for t in ["garbage", foreign.as_str(), expired.as_str()] {
        let r = srv.req("GET", "/api/jobs", Some(t), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json, missing.json);
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    assert_eq!(missing.json["error"], "unauthorized");
    // Unknown route and wrong method speak the table too.
    let r = srv.req("GET", "/api/nope", Some(&admin), None).await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let r = srv.req("DELETE", "/api/jobs", Some(&admin), None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    // A plain GET on a WebSocket route.
    let id = srv.enqueue(json!({"kind": "diagnostic"})).await;
    let r = srv
        .req("GET", &format!("/api/jobs/{id}/live"), Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = srv
        .ws(
            &format!("/api/jobs/{id}/live?since=yesterday"),
            Some(&admin),
        )
        .await;
    assert_eq!(r.err().unwrap().0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_are_capped_cleanly() {
    let srv = start(Opts {
        workers: false,
        hub: api::HubConfig {
            max_connections: 1,
            ..Default::default()
        },
        ..Opts::default()
    })
    .await;
    let admin = token(Role::Admin, None, None);
    let mut first = srv.ws("/api/events/live", Some(&admin)).await.unwrap();
    assert_eq!(first.next(S).await.unwrap()["type"], "snapshot");
    let (code, body) = srv
        .ws("/api/events/live", Some(&admin))
        .await
        .err()
        .unwrap();
    assert_eq!(code, 503);
    assert_eq!(body["error"], "too_many_connections");
    first.close().await;
    let t = std::time::Instant::now();
    while srv.state.hub.connections() > 0 {
        assert!(t.elapsed() < S);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(srv.ws("/api/events/live", Some(&admin)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_take_every_websocket() {
    let srv = start(Opts {
        workers: false,
        hub: api::HubConfig {
            max_per_tenant: 2,
            ..Default::default()
        },
        ..Opts::default()
    })
    .await;
    let a1 = token(Role::Customer, Some("a1"), Some("r1"));
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut w = srv.ws("/api/events/live", Some(&a1)).await.unwrap();
        assert_eq!(w.next(S).await.unwrap()["type"], "snapshot");
        open.push(w);
    }
    let (code, body) = srv.ws("/api/events/live", Some(&a1)).await.err().unwrap();
    assert_eq!(code, 429);
    assert_eq!(body["error"], "too_many_connections");
    // other tenants and admins still get in
    let b1 = token(Role::Customer, Some("b1"), Some("r2"));
    assert!(srv.ws("/api/events/live", Some(&b1)).await.is_ok());
    let admin = token(Role::Admin, None, None);
    assert!(srv.ws("/api/events/live", Some(&admin)).await.is_ok());
    // closing one frees a slot for the tenant
    open.pop().unwrap().close().await;
    let t = std::time::Instant::now();
    loop {
        match srv.ws("/api/events/live", Some(&a1)).await {
            Ok(_) => break,
            Err(_) if t.elapsed() < S => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("slot never freed: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route() {
    let srv = start(Opts {
        workers: false,
        ..Opts::default()
    })
    .await;
    let r = srv.req("GET", "/api/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let mut listed = BTreeSet::new();
    for (path, item) in r.json["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            listed.insert(format!("{} {path}", m.to_uppercase()));
        }
    }
    let want: BTreeSet<String> = [
        "POST /api/jobs",
        "GET /api/jobs",
        "GET /api/jobs/{id}",
        "POST /api/jobs/{id}/cancel",
        "POST /api/jobs/{id}/retry",
        "GET /api/jobs/{id}/live",
        "GET /api/events/live",
        "POST /api/restore",
        "GET /api/restore/{id}/progress",
        "GET /api/restore/{id}/live",
        "POST /api/migration/{id}/health",
        "GET /api/migration/{id}/health",
        "GET /api/admin/queue",
        "PUT /api/admin/concurrency/{kind}",
        "POST /api/admin/queue/pause",
        "POST /api/admin/queue/resume",
        "GET /api/admin/upgrade",
        "POST /api/admin/upgrade",
        "GET /api/admin/upgrade/preflight",
        "GET /metrics",
        "GET /healthz",
        "GET /readyz",
        "GET /api/openapi.json",
        "GET /api/accounts",
        "POST /api/accounts",
        "GET /api/accounts/{id}",
        "POST /api/accounts/{id}/suspend",
        "POST /api/accounts/{id}/unsuspend",
        "POST /api/accounts/{id}/terminate",
        "POST /api/accounts/{id}/change-package",
        "POST /api/accounts/{id}/password",
        "GET /api/accounts/{id}/security-policy",
        "POST /api/accounts/{id}/security-policy",
        "GET /api/accounts/{id}/email-policy",
        "PUT /api/accounts/{id}/email-policy",
        "GET /api/accounts/{id}/features/{feature}",
        "PUT /api/resellers/{id}/allowance",
        "GET /api/resellers/{id}/summary",
        "GET /api/packages",
        "POST /api/packages",
        "GET /api/packages/{id}",
        "PUT /api/packages/{id}",
        "DELETE /api/packages/{id}",
        "POST /api/packages/{id}/activate",
        "POST /api/packages/{id}/deprecate",
        "GET /api/audit",
        "GET /api/audit/{id}",
        "GET /api/audit/export",
        "GET /api/audit/verify",
        "GET /api/jobs/{id}/wait",
        "POST /api/whmcs/create-account",
        "POST /api/whmcs/suspend-account",
        "POST /api/whmcs/unsuspend-account",
        "POST /api/whmcs/upgrade-package",
        "POST /api/whmcs/terminate-account",
        "POST /api/whmcs/change-password",
        "GET /api/whmcs/account/{id}/status",
        "GET /api/whmcs/account/{id}/usage",
        "GET /api/whmcs/usage",
        "GET /api/whmcs/accounts",
        "POST /api/whmcs/account/{service_id}/sso",
        "GET /api/accounts/{id}/usage",
        "PUT /api/accounts/{id}/usage-override",
        "DELETE /api/accounts/{id}/usage-override",
        "GET /api/accounts/{id}/notifications",
        "GET /api/accounts/{id}/domains",
        "POST /api/accounts/{id}/domains",
        "DELETE /api/accounts/{id}/domains/{domain}",
        "GET /api/accounts/{id}/databases",
        "POST /api/accounts/{id}/databases",
        "POST /api/auth/login",
        "GET /login",
        "GET /login.js",
        "GET /",
        "GET /dashboard.js",
        "GET /dashboard.css",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(listed, want);
    // And every listed route is mounted (none answers the router's 404 fallback).
    let admin = token(Role::Admin, None, None);
    for route in &want {
        let (m, p) = route.split_once(' ').unwrap();
        let p = p
            .replace("{id}", "01NOSUCHJOB")
            .replace("{kind}", "diagnostic")
            .replace("{service_id}", "1")
            .replace("{domain}", "x.example");
        let r = srv.req(m, &p, Some(&admin), Some("{}")).await;
        assert_ne!(r.json["message"], "no such route", "{route}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_routes_and_request_ids() {
    let srv = start(Opts {
        workers: false,
        ..Opts::default()
    })
    .await;
    let admin = token(Role::Admin, None, None);
    let r = srv.req("GET", "/readyz", None, None).await;
    assert_eq!(
        (r.status, r.json["redis"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    assert_eq!(
        srv.req("GET", "/healthz", None, None).await.json["status"],
        "ok"
    );
    let r = srv
        .req_headers(
            "GET",
            "/api/admin/queue",
            Some(&admin),
            None,
            &[("x-request-id", "abc-123")],
        )
        .await;
    assert_eq!(r.headers["x-request-id"], "abc-123");
    assert_eq!(r.json["max_pending"], 100);
    let r = srv.req("GET", "/api/jobs", Some(&admin), None).await;
    assert_eq!(r.headers["x-request-id"].len(), 26, "a generated ULID");
    let m = srv.req("GET", "/metrics", None, None).await;
    let text = m.json.as_str().unwrap();
    assert!(text.contains("npanel_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/api/admin/queue\""));
    assert!(text.contains("npanel_queue_max_pending"));
    // Runtime concurrency through the API reaches the queue.
    let r = srv
        .req(
            "PUT",
            "/api/admin/concurrency/restore",
            Some(&admin),
            Some(r#"{"limit": 7}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(srv.queue.stats().await.unwrap().kinds["restore"].limit, 7);
    let r = srv
        .req("POST", "/api/admin/queue/pause", Some(&admin), None)
        .await;
    assert_eq!(r.json["paused"], true);
    assert!(srv.queue.stats().await.unwrap().paused);
}
