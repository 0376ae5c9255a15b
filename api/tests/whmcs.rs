//! The WHMCS API over real sockets, against a real Redis, a real store (SQLite; the main flows
//! again on PostgreSQL when it is configured) and real workers running a test `provision`
//! handler that does to the store what the real one does (active / suspended / package /
//! terminated with a `backup_location`), can be slowed down or told to fail, and logs what it
//! saw. Requests are signed here independently of the server's code, exactly as DESIGN §5 says.

mod common;

use api::Role;
use common::*;
use hmac::{Hmac, Mac};
use hyper::StatusCode;
use queue::{JobKind, JobStatus, ListFilter, Provision, ProvisionAction};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use store::{AccountStatus, Allowance, Limits, NewPackage, PackageStatus};
use workers::{JobContext, JobError, Registry};

// ---------------------------------------------------------------------------------------------
// The test host: what the real provision handler will do to the store.

#[derive(Default)]
struct Host {
    store: OnceLock<store::Store>,
    delay_ms: AtomicU64,
    fail_next: AtomicU32,
    /// `action account status-at-start`, in the order the handler ran them.
    log: Mutex<Vec<String>>,
    /// While set, each handler waits here once it has logged its start, until the test closes
    /// it: a job that is still running for as long as the test needs, without a timed margin.
    gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl Host {
    fn ran(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Hold every handler from now on; closing the returned gate lets them all go.
    fn hold(&self) -> Arc<tokio::sync::Semaphore> {
        let g = Arc::new(tokio::sync::Semaphore::new(0));
        *self.gate.lock().unwrap() = Some(g.clone());
        g
    }
}

async fn provision(ctx: JobContext, h: Arc<Host>) -> Result<Value, JobError> {
    let p: Provision = ctx.payload()?;
    let s = h.store.get().expect("store set after start").clone();
    let err = |e: store::StoreError| JobError::Permanent(e.to_string());
    let before = s.account(&p.account).await.map_err(err)?;
    h.log.lock().unwrap().push(format!(
        "{:?} {} {}",
        p.action,
        p.account,
        before.status.as_str()
    ));
    let gate = h.gate.lock().unwrap().clone();
    if let Some(g) = gate {
        // No permits: this waits until the gate is closed (acquire fails then, for everyone).
        let _ = g.acquire().await;
    }
    let d = h.delay_ms.load(Ordering::SeqCst);
    if d > 0 {
        ctx.sleep(Duration::from_millis(d)).await?;
    }
    if h.fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return Err(JobError::Permanent(
            "host step create_user failed: disk full".into(),
        ));
    }
    let a = &p.account;
    Ok(match p.action {
        ProvisionAction::Create => {
            s.set_account_status(a, AccountStatus::Active, None)
                .await
                .map_err(err)?;
            json!({"account_id": a})
        }
        ProvisionAction::Suspend => {
            s.set_account_status(a, AccountStatus::Suspended, p.reason.as_deref())
                .await
                .map_err(err)?;
            json!({"account_id": a, "status": "suspended"})
        }
        ProvisionAction::Unsuspend => {
            s.set_account_status(a, AccountStatus::Active, None)
                .await
                .map_err(err)?;
            json!({"account_id": a, "status": "active"})
        }
        ProvisionAction::ChangePackage => {
            s.set_account_package(a, p.package.as_deref().unwrap_or_default())
                .await
                .map_err(err)?;
            json!({"account_id": a})
        }
        ProvisionAction::Terminate => {
            s.set_account_status(a, AccountStatus::Terminated, p.reason.as_deref())
                .await
                .map_err(err)?;
            json!({"account_id": a, "backup_location": format!("/backup/terminated/{a}.tar.zst")})
        }
        ProvisionAction::ChangePassword => {
            assert!(p.password.is_some(), "the job carries the password");
            json!({"account_id": a, "password_changed": true})
        }
        ProvisionAction::ReapplyPackage => json!({}),
        ProvisionAction::ApplySecurity => json!({}),
        ProvisionAction::ApplyEmailPolicy
        | ProvisionAction::AddDomain
        | ProvisionAction::RemoveDomain
        | ProvisionAction::CreateDatabase => json!({}),
    })
}

struct Setup {
    wait_secs: u64,
    per_key: u32,
    waiters: usize,
    postgres: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            wait_secs: 10,
            per_key: 1000,
            waiters: 64,
            postgres: false,
        }
    }
}

async fn server(o: Setup) -> (Server, Arc<Host>) {
    let host = Arc::new(Host::default());
    let h = host.clone();
    let mut api = Opts::default().api;
    api.whmcs.wait_secs = o.wait_secs;
    api.whmcs.per_key_per_second = o.per_key;
    api.whmcs.login_url = Some("https://panel.example.net:2083".into());
    let mut qc = queue::testing::config("whmcs");
    qc.wait_connections = o.waiters;
    let srv = start(Opts {
        registry: Registry::builtin()
            .register(JobKind::Provision, move |ctx| provision(ctx, h.clone())),
        api,
        queue: Some(qc),
        postgres: o.postgres,
        ..Opts::default()
    })
    .await;
    host.store.set(srv.store.clone()).ok();
    // A second package to upgrade to.
    srv.store
        .create_package(NewPackage {
            id: "pro".into(),
            limits: Limits {
                disk_mb: Some(5000),
                bandwidth_mb: None,
                ..Limits::default()
            },
            ..NewPackage::default()
        })
        .await
        .unwrap();
    srv.store
        .set_package_status("pro", PackageStatus::Active)
        .await
        .unwrap();
    (srv, host)
}

// ---------------------------------------------------------------------------------------------
// Signed calls

#[derive(Clone)]
struct Key {
    id: String,
    secret: String,
}

async fn key(srv: &Server, reseller: Option<&str>) -> Key {
    let (k, secret) = srv
        .store
        .create_whmcs_key(reseller, Some("test"))
        .await
        .unwrap();
    Key { id: k.id, secret }
}

fn signature(secret: &str, ts: &str, method: &str, path: &str, body: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(format!("{ts}.{method}.{path}.{body}").as_bytes());
    hex::encode(m.finalize().into_bytes())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A request signed with `secret` at `ts` (sent as given).
async fn signed(
    srv: &Server,
    key_id: &str,
    secret: &str,
    ts: i64,
    method: &str,
    path: &str,
    body: &str,
) -> Resp {
    let ts = ts.to_string();
    let sig = signature(secret, &ts, method, path, body);
    srv.req_headers(
        method,
        path,
        Some(key_id),
        (!body.is_empty()).then_some(body),
        &[("x-whmcs-timestamp", &ts), ("x-whmcs-signature", &sig)],
    )
    .await
}

/// A signed call now; a GET gets a fresh `nonce` query parameter (see [`post`]).
async fn call(srv: &Server, k: &Key, method: &str, path: &str, body: Option<Value>) -> Resp {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let path = if method == "GET" {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{path}{sep}nonce={}", ulid::Ulid::new())
    } else {
        path.to_string()
    };
    signed(srv, &k.id, &k.secret, now(), method, &path, &body).await
}

/// A signed POST. Each carries a fresh `nonce` (ignored by the server) as a real module should:
/// two identical bodies signed in the same second are the same signature, which the replay
/// cache accepts once.
async fn post(srv: &Server, k: &Key, action: &str, mut body: Value) -> Resp {
    if let Some(o) = body.as_object_mut() {
        o.insert("nonce".into(), json!(ulid::Ulid::new().to_string()));
    }
    call(srv, k, "POST", &format!("/api/whmcs/{action}"), Some(body)).await
}

fn create_body(sid: u64, user: &str) -> Value {
    json!({"service_id": sid, "username": user, "password": "Correct-Horse-9",
        "email": format!("{user}@example.com"), "package_id": "basic", "domain": format!("{user}.example.org")})
}

async fn provision_jobs(srv: &Server, account: &str) -> Vec<queue::Job> {
    srv.queue
        .list(&ListFilter {
            kind: Some(JobKind::Provision),
            account: Some(account.into()),
            ..ListFilter::default()
        })
        .await
        .unwrap()
}

fn assert_unauthorized(r: &Resp, what: &str, first: &Value) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.json);
    assert_eq!(&r.json, first, "{what}: one body for every failure");
}

/// Wait until the audit log has `n` records of `action` (admin view).
async fn audit_count(srv: &Server, action: &str, n: usize) -> Vec<Value> {
    srv.audit_at_least(&format!("action={action}"), n).await
}

// ---------------------------------------------------------------------------------------------
// Auth

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_failure_is_one_401_and_audited_as_denied() {
    let (srv, _) = server(Setup::default()).await;
    let k = key(&srv, None).await;
    let path = "/api/whmcs/accounts";
    // A good request, to compare with.
    let ok = call(&srv, &k, "GET", path, None).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.json);
    assert_eq!(ok.json["status"], "success");

    let bad = signed(&srv, &k.id, &"0".repeat(64), now(), "GET", path, "").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let one = bad.json.clone();
    assert_eq!(one["status"], "error");
    assert_eq!(one["error"], "unauthorized");
    assert!(one["message"].as_str().unwrap().contains("clock"), "{one}");

    // Stale: 301 s either way; 299 s is fine.
    let r = signed(&srv, &k.id, &k.secret, now() - 301, "GET", path, "").await;
    assert_unauthorized(&r, "301 s old", &one);
    let r = signed(&srv, &k.id, &k.secret, now() + 301, "GET", path, "").await;
    assert_unauthorized(&r, "301 s ahead", &one);
    let r = signed(&srv, &k.id, &k.secret, now() - 299, "GET", path, "").await;
    assert_eq!(r.status, StatusCode::OK, "299 s old is within tolerance");

    // Replayed: the very same signed request twice.
    let ts = now().to_string();
    let sig = signature(&k.secret, &ts, "GET", "/api/whmcs/accounts?x=1", "");
    let h = [
        ("x-whmcs-timestamp", ts.as_str()),
        ("x-whmcs-signature", sig.as_str()),
    ];
    let r = srv
        .req_headers("GET", "/api/whmcs/accounts?x=1", Some(&k.id), None, &h)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = srv
        .req_headers("GET", "/api/whmcs/accounts?x=1", Some(&k.id), None, &h)
        .await;
    assert_unauthorized(&r, "replayed", &one);

    // The signature covers method, path and query, and body.
    let sig = signature(&k.secret, &ts, "GET", "/api/whmcs/usage", "");
    let h = [
        ("x-whmcs-timestamp", ts.as_str()),
        ("x-whmcs-signature", sig.as_str()),
    ];
    let r = srv
        .req_headers("GET", "/api/whmcs/accounts", Some(&k.id), None, &h)
        .await;
    assert_unauthorized(&r, "signed for another path", &one);

    // Missing headers, one at a time.
    let ts = now().to_string();
    let sig = signature(&k.secret, &ts, "GET", path, "");
    for (what, tok, hs) in [
        (
            "no Authorization",
            None,
            vec![
                ("x-whmcs-timestamp", ts.as_str()),
                ("x-whmcs-signature", sig.as_str()),
            ],
        ),
        (
            "no timestamp",
            Some(k.id.as_str()),
            vec![("x-whmcs-signature", sig.as_str())],
        ),
        (
            "no signature",
            Some(k.id.as_str()),
            vec![("x-whmcs-timestamp", ts.as_str())],
        ),
        ("no headers at all", None, vec![]),
    ] {
        let r = srv.req_headers("GET", path, tok, None, &hs).await;
        assert_unauthorized(&r, what, &one);
    }

    // Unknown key; a panel JWT is not a WHMCS key.
    let r = signed(&srv, "wk_nobody", &k.secret, now(), "GET", path, "").await;
    assert_unauthorized(&r, "unknown key", &one);
    let admin = token(Role::Admin, None, None);
    let r = srv.req("GET", path, Some(&admin), None).await;
    assert_unauthorized(&r, "a JWT", &one);

    // Revoked.
    srv.store.revoke_whmcs_key(&k.id).await.unwrap();
    let r = call(&srv, &k, "GET", path, None).await;
    assert_unauthorized(&r, "revoked", &one);

    // Each refusal is in the audit log as denied, with its reason (never the secret).
    let recs = audit_count(&srv, "whmcs_request_denied", 11).await;
    let text = serde_json::to_string(&recs).unwrap();
    assert!(recs.iter().all(|r| r["result"] == "denied"));
    assert!(recs.iter().all(|r| r["source"]["method"] == "WHMCS"));
    for reason in [
        "bad signature",
        "timestamp more than 300 s",
        "replayed signature",
        "missing Authorization",
        "unknown or revoked key",
    ] {
        assert!(text.contains(reason), "no {reason:?} record in {text}");
    }
    assert!(!text.contains(&k.secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_works_for_its_grace_then_stops() {
    let (srv, _) = server(Setup::default()).await;
    let old = key(&srv, None).await;
    let (_, new_secret) = srv
        .store
        .rotate_whmcs_key(&old.id, Duration::from_millis(1500))
        .await
        .unwrap();
    let new = Key {
        id: old.id.clone(),
        secret: new_secret,
    };
    let path = "/api/whmcs/accounts";
    assert_eq!(
        call(&srv, &old, "GET", path, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&srv, &new, "GET", &format!("{path}?n=1"), None)
            .await
            .status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let r = call(&srv, &old, "GET", &format!("{path}?n=2"), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.json);
    assert_eq!(
        call(&srv, &new, "GET", &format!("{path}?n=3"), None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reseller_key_reaches_only_its_customers() {
    let (srv, _) = server(Setup::default()).await;
    let r1 = key(&srv, Some("r1")).await;
    let admin = key(&srv, None).await;
    // Its own customer: yes.
    let r = call(&srv, &r1, "GET", "/api/whmcs/account/a1/status", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["account"]["id"], "a1");
    // Another reseller's customer, the reseller itself, a root customer, a missing one:
    // the same 404.
    for id in ["b1", "r1", "solo", "ghost"] {
        let r = call(
            &srv,
            &r1,
            "GET",
            &format!("/api/whmcs/account/{id}/status"),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{id}: {}", r.json);
        assert_eq!(r.json["error"], "not_found");
        assert_eq!(
            r.json["message"].as_str().unwrap().replace(id, "X"),
            "account X does not exist on this nPanel server (or this API key may not manage it)"
        );
        let r = post(
            &srv,
            &r1,
            "suspend-account",
            json!({"service_id": 1, "account_id": id}),
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{id}: {}", r.json);
    }
    assert!(provision_jobs(&srv, "b1").await.is_empty());
    // The lists are scoped too.
    let r = call(&srv, &r1, "GET", "/api/whmcs/accounts", None).await;
    let ids: Vec<&str> = r.json["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1", "a2"]);
    let r = call(&srv, &admin, "GET", "/api/whmcs/usage", None).await;
    assert_eq!(
        r.json["accounts"].as_array().unwrap().len(),
        6,
        "{}",
        r.json
    );
    // The admin key reaches any account.
    let r = call(&srv, &admin, "GET", "/api/whmcs/account/b1/usage", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["disk_limit_mb"], 1000);
    assert_eq!(r.json["bandwidth_limit_mb"], 10000);
    assert_eq!(r.json["disk_used_mb"], 0);
    assert_eq!(r.json["measured"], false);
    // Once the quota sweep has measured b1 (its row written as the sweep writes it), the
    // figures are its: disk now, bandwidth since the start of the month, MB rounded up.
    let now = store::now_ms();
    srv.store
        .record_usage(&[store::UsageSample {
            account: "b1".into(),
            at: now,
            disk_bytes: 5 * (1 << 20) + 1,
            disk_files: 10,
            bandwidth_bytes: 3 << 20,
            mail_sent: 2,
            db_bytes: None,
            addon_domains: 0,
            measured_at: now,
        }])
        .await
        .unwrap();
    let r = call(&srv, &admin, "GET", "/api/whmcs/account/b1/usage", None).await;
    assert_eq!(r.json["measured"], true, "{}", r.json);
    assert_eq!(r.json["disk_used_mb"], 6, "{}", r.json);
    assert_eq!(r.json["bandwidth_used_mb"], 3, "{}", r.json);
    assert!(r.json["measured_at"].is_string(), "{}", r.json);
    let r = call(&srv, &admin, "GET", "/api/whmcs/usage", None).await;
    assert_eq!(r.json["measured"], true);
    let rows = r.json["accounts"].as_array().unwrap();
    let b1 = rows.iter().find(|a| a["account_id"] == "b1").unwrap();
    assert_eq!(b1["disk_used_mb"], 6);
    let a1 = rows.iter().find(|a| a["account_id"] == "a1").unwrap();
    assert_eq!(a1["measured"], false, "a1 was not measured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_requests_per_second_per_key() {
    let (srv, _) = server(Setup {
        per_key: 10,
        ..Setup::default()
    })
    .await;
    let k = key(&srv, None).await;
    let other = key(&srv, None).await;
    // One burst, every request at once: the limiter sees them faster than 10 a second however
    // slow the machine, unless the whole burst spreads over more than 5 s (one after the
    // other, 30 were limited only if each took under ~66 ms, as the budget refills meanwhile).
    let burst = futures::future::join_all((0..60).map(|i| {
        let (srv, k) = (&srv, &k);
        async move { call(srv, k, "GET", &format!("/api/whmcs/accounts?i={i}"), None).await }
    }))
    .await;
    let statuses: Vec<StatusCode> = burst.iter().map(|r| r.status).collect();
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let mut limited = burst
        .into_iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS);
    let r = limited
        .next()
        .expect("60 requests in a burst were not limited");
    assert_eq!(
        ok + 1 + limited.count(),
        statuses.len(),
        "each one answered or limited: {statuses:?}"
    );
    assert!(ok >= 10, "a burst of 10 is allowed: {statuses:?}");
    assert_eq!(r.json["status"], "error");
    assert_eq!(r.json["error"], "rate_limited");
    assert!(r.headers.get("retry-after").is_some());
    // Another key has its own budget.
    let r = call(&srv, &other, "GET", "/api/whmcs/accounts", None).await;
    assert_eq!(r.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// Idempotency, waiting, order

/// Two concurrent creates of one service: one job, both succeed; a repeat after success: no
/// new job; the outputs carry no password.
async fn create_idempotent_on(pg: bool) {
    let (srv, host) = server(Setup {
        postgres: pg,
        ..Setup::default()
    })
    .await;
    host.delay_ms.store(400, Ordering::SeqCst);
    let k = key(&srv, Some("r1")).await;
    let (a, b) = tokio::join!(
        post(&srv, &k, "create-account", create_body(501, "shop1")),
        post(&srv, &k, "create-account", create_body(501, "shop1"))
    );
    for r in [&a, &b] {
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        assert_eq!(r.json["status"], "success");
        assert_eq!(r.json["account_id"], "shop1");
        assert_eq!(r.json["credentials"]["username"], "shop1");
        assert_eq!(r.json["credentials"]["domain"], "shop1.example.org");
        assert_eq!(
            r.json["credentials"]["login_url"],
            "https://panel.example.net:2083"
        );
        assert!(r.json["next_steps"]
            .as_array()
            .is_some_and(|s| !s.is_empty()));
        assert!(!r.json.to_string().contains("Correct-Horse-9"));
    }
    assert_eq!(a.json["job_id"], b.json["job_id"]);
    assert_eq!(provision_jobs(&srv, "shop1").await.len(), 1);
    let acct = srv.store.account("shop1").await.unwrap();
    assert_eq!(acct.status, AccountStatus::Active);
    assert_eq!(acct.whmcs_service_id.as_deref(), Some("501"));
    assert_eq!(acct.reseller.as_deref(), Some("r1"));

    // After success: success again at once, no new job.
    let r = post(&srv, &k, "create-account", create_body(501, "shop1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["account_id"], "shop1");
    assert_eq!(provision_jobs(&srv, "shop1").await.len(), 1);
    assert_eq!(host.ran().len(), 1);

    // Another service cannot take the name.
    let r = post(&srv, &k, "create-account", create_body(502, "shop1")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    assert_eq!(r.json["error"], "conflict");
    assert!(r.json["message"]
        .as_str()
        .unwrap()
        .contains("choose another username"));

    // The audit log has the call, by the key, from WHMCS, with the password redacted.
    let recs = audit_count(&srv, "account_created", 3).await;
    assert!(recs
        .iter()
        .all(|r| r["actor"]["type"] == "whmcs" && r["actor"]["id"] == k.id.as_str()));
    assert!(recs.iter().all(|r| r["source"]["method"] == "WHMCS"));
    assert!(!serde_json::to_string(&recs)
        .unwrap()
        .contains("Correct-Horse-9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_while_running_and_after_success() {
    create_idempotent_on(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_while_running_and_after_success_pg() {
    if postgres_available() {
        create_idempotent_on(true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_after_failure_starts_a_new_attempt() {
    let (srv, host) = server(Setup::default()).await;
    let k = key(&srv, None).await;
    host.fail_next.store(1, Ordering::SeqCst);
    let r = post(&srv, &k, "create-account", create_body(601, "flaky")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.json);
    assert_eq!(r.json["status"], "error");
    assert_eq!(r.json["error"], "job_failed");
    let msg = r.json["message"].as_str().unwrap();
    assert!(msg.contains("disk full") && msg.contains("Retry"), "{msg}");
    // The row stays pending for the retry to finish; nothing is active before success.
    assert_eq!(
        srv.store.account("flaky").await.unwrap().status,
        AccountStatus::Pending
    );
    let first = provision_jobs(&srv, "flaky").await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].status, JobStatus::Failed);

    let r = post(&srv, &k, "create-account", create_body(601, "flaky")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_ne!(r.json["job_id"], json!(first[0].id), "a new attempt");
    assert_eq!(provision_jobs(&srv, "flaky").await.len(), 2);
    assert_eq!(
        srv.store.account("flaky").await.unwrap().status,
        AccountStatus::Active
    );

    // A failed suspend, retried, the same way.
    host.fail_next.store(1, Ordering::SeqCst);
    let body = json!({"service_id": 601, "account_id": "flaky", "reason": "unpaid"});
    let r = post(&srv, &k, "suspend-account", body.clone()).await;
    assert_eq!(r.json["error"], "job_failed", "{}", r.json);
    let r = post(&srv, &k, "suspend-account", body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert!(r.json["suspended_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slower_than_the_wait_is_pending_and_order_is_kept() {
    let (srv, host) = server(Setup {
        wait_secs: 1,
        ..Setup::default()
    })
    .await;
    // The create is held until the test lets it go: it cannot finish within the 1 s wait nor
    // before the checks below, however slow the machine (was: a 1.5 s job, 0.5 s of margin).
    let gate = host.hold();
    let k = key(&srv, Some("r1")).await;
    let r = post(&srv, &k, "create-account", create_body(701, "slow1")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    assert_eq!(r.json["status"], "pending");
    let create_job = r.json["job_id"].as_str().unwrap().to_string();
    assert!(r.json["message"]
        .as_str()
        .unwrap()
        .contains("Module Queue retry will finish it"));
    assert_eq!(
        srv.store.account("slow1").await.unwrap().status,
        AccountStatus::Pending,
        "never success before the job succeeded"
    );
    // A suspend right behind it: waits for its turn, never overtakes the create.
    let body = json!({"service_id": 701, "account_id": "slow1", "reason": "fraud check"});
    let r = post(&srv, &k, "suspend-account", body.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let suspend_job = r.json["job_id"].as_str().unwrap().to_string();
    assert_ne!(create_job, suspend_job);
    // A repeat while the create is still held: pending, the same job.
    let r = post(&srv, &k, "suspend-account", body.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    assert_eq!(
        r.json["job_id"],
        json!(suspend_job),
        "a repeat waits for the same job"
    );
    gate.close();
    // The Module Queue's retries: pending while running, then success with the outputs.
    let t = Instant::now();
    let done = loop {
        let r = post(&srv, &k, "suspend-account", body.clone()).await;
        if r.status == StatusCode::OK {
            break r;
        }
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
        assert_eq!(
            r.json["job_id"],
            json!(suspend_job),
            "a repeat waits for the same job"
        );
        assert!(t.elapsed() < Duration::from_secs(20));
    };
    assert!(done.json["suspended_at"].is_string(), "{}", done.json);
    assert_eq!(done.json["suspend_reason"], "fraud check");
    assert_eq!(
        host.ran(),
        ["Create slow1 pending", "Suspend slow1 active"],
        "the suspend ran after the create had finished"
    );
    let r = post(&srv, &k, "create-account", create_body(701, "slow1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["account_status"], "suspended");
    assert_eq!(provision_jobs(&srv, "slow1").await.len(), 2);
}

/// Every action with its outputs, repeats that answer at once, and repeats that must not.
async fn actions_on(pg: bool) {
    let (srv, host) = server(Setup {
        postgres: pg,
        ..Setup::default()
    })
    .await;
    let k = key(&srv, Some("r1")).await;
    let r = post(&srv, &k, "create-account", create_body(801, "life1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let jobs = || async { provision_jobs(&srv, "life1").await.len() };
    let sid = json!(801);

    // Suspend, and its repeat: the same suspended_at, no job.
    let r = post(
        &srv,
        &k,
        "suspend-account",
        json!({"service_id": sid, "account_id": "life1", "reason": "unpaid"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let at = r.json["suspended_at"].clone();
    assert!(at.is_string());
    let r = post(
        &srv,
        &k,
        "suspend-account",
        json!({"service_id": "801", "account_id": "life1"}),
    )
    .await;
    assert_eq!(r.json["suspended_at"], at, "{}", r.json);
    assert_eq!(jobs().await, 2);

    // Unsuspend, then suspend again: a later change undid the first suspend, so a new job.
    let r = post(
        &srv,
        &k,
        "unsuspend-account",
        json!({"service_id": sid, "account_id": "life1"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["account_status"], "active");
    let r = post(
        &srv,
        &k,
        "suspend-account",
        json!({"service_id": sid, "account_id": "life1"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["account_status"], "suspended");
    assert_eq!(jobs().await, 4);
    let r = post(
        &srv,
        &k,
        "unsuspend-account",
        json!({"service_id": sid, "account_id": "life1"}),
    )
    .await;
    assert_eq!(r.json["account_status"], "active", "{}", r.json);
    assert_eq!(jobs().await, 5);

    // Upgrade: the new limits; repeat: no job; an unknown package: 422.
    let r = post(
        &srv,
        &k,
        "upgrade-package",
        json!({"service_id": sid, "account_id": "life1", "package_id": "pro"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["package"], "pro");
    assert_eq!(r.json["new_limits"]["disk_mb"], 5000);
    let r = post(
        &srv,
        &k,
        "upgrade-package",
        json!({"service_id": sid, "account_id": "life1", "package_id": "pro"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(jobs().await, 6);
    let r = post(
        &srv,
        &k,
        "upgrade-package",
        json!({"service_id": sid, "account_id": "life1", "package_id": "gold"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    assert_eq!(r.json["error"], "invalid_request");

    // Passwords: a repeat of the same change is no new job, a different one is.
    let pw = |p: &str| json!({"service_id": sid, "account_id": "life1", "password": p});
    let r = post(&srv, &k, "change-password", pw("Another-Secret-7")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    post(&srv, &k, "change-password", pw("Another-Secret-7")).await;
    assert_eq!(jobs().await, 7);
    post(&srv, &k, "change-password", pw("Third-Secret-77")).await;
    assert_eq!(jobs().await, 8);
    let r = post(&srv, &k, "change-password", pw("short")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);

    // The wrong service for the account is refused.
    let r = post(
        &srv,
        &k,
        "suspend-account",
        json!({"service_id": 999, "account_id": "life1"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);

    // Status, usage, lists.
    let r = call(&srv, &k, "GET", "/api/whmcs/account/life1/status", None).await;
    assert_eq!(r.json["account_status"], "active");
    assert_eq!(r.json["account"]["whmcs_service_id"], "801");
    let r = call(&srv, &k, "GET", "/api/whmcs/account/life1/usage", None).await;
    assert_eq!(r.json["disk_limit_mb"], 5000);
    assert_eq!(r.json["bandwidth_limit_mb"], 0, "0 = unlimited");
    assert_eq!(r.json["measured"], false);
    let r = call(&srv, &k, "GET", "/api/whmcs/usage", None).await;
    let all = r.json["accounts"].as_array().unwrap();
    assert_eq!(all.len(), 3, "{}", r.json);
    assert!(all
        .iter()
        .any(|u| u["account_id"] == "life1" && u["service_id"] == "801"));
    let r = call(&srv, &k, "GET", "/api/whmcs/accounts", None).await;
    let life = r.json["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "life1")
        .cloned()
        .unwrap();
    assert_eq!(life["service_id"], "801");
    assert_eq!(life["package"], "pro");
    assert_eq!(life["domain"], "life1.example.org");

    // Terminate: the backup's location; a repeat gives it again without a job.
    let r = post(
        &srv,
        &k,
        "terminate-account",
        json!({"service_id": sid, "account_id": "life1"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(
        r.json["backup_location"],
        "/backup/terminated/life1.tar.zst"
    );
    let r = post(
        &srv,
        &k,
        "terminate-account",
        json!({"service_id": sid, "account_id": "life1"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(
        r.json["backup_location"],
        "/backup/terminated/life1.tar.zst"
    );
    assert_eq!(jobs().await, 9);
    let r = post(
        &srv,
        &k,
        "suspend-account",
        json!({"service_id": sid, "account_id": "life1"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    let r = call(&srv, &k, "GET", "/api/whmcs/accounts", None).await;
    assert!(
        !r.json.to_string().contains("life1"),
        "terminated accounts are not listed"
    );
    assert_eq!(host.ran().len(), 9);

    // Bad bodies: the WHMCS shape too.
    let r = post(&srv, &k, "create-account", json!({"service_id": "x"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    assert_eq!(r.json["status"], "error");
    let r = post(&srv, &k, "create-account", json!({"service_id": 802, "username": "Bad Name",
        "password": "Correct-Horse-9", "email": "x@example.com", "package_id": "basic", "domain": "x.example.org"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    assert!(r.json["message"].as_str().unwrap().contains("username"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_answers_its_outputs() {
    actions_on(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_answers_its_outputs_pg() {
    if postgres_available() {
        actions_on(true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reseller_key_creates_within_the_allowance() {
    let (srv, host) = server(Setup::default()).await;
    let k = key(&srv, Some("r1")).await;
    srv.store
        .set_allowance(
            "r1",
            &Allowance {
                max_accounts: 3,
                ..Allowance::default()
            },
        )
        .await
        .unwrap();
    let r = post(&srv, &k, "create-account", create_body(901, "third")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = post(&srv, &k, "create-account", create_body(902, "fourth")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    assert_eq!(r.json["error"], "allowance_exceeded");
    assert!(
        srv.store.account("fourth").await.is_err(),
        "nothing was created"
    );
    assert_eq!(host.ran().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Waiting

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_answers_the_job_finished_or_not() {
    let (srv, _) = server(Setup::default()).await;
    let admin = token(Role::Admin, None, None);
    let quick = srv
        .enqueue(json!({"kind": "diagnostic", "payload": {"duration_ms": 300, "steps": 3}}))
        .await;
    let r = srv
        .req(
            "GET",
            &format!("/api/jobs/{quick}/wait?timeout=20"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["status"], "succeeded");
    assert_eq!(r.json["id"], quick.as_str());

    let slow = srv
        .enqueue(json!({"kind": "diagnostic", "payload": {"duration_ms": 4000, "steps": 4}}))
        .await;
    let r = srv
        .req(
            "GET",
            &format!("/api/jobs/{slow}/wait?timeout=1"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert!(
        matches!(r.json["status"].as_str(), Some("queued" | "running")),
        "{}",
        r.json
    );
    // Tenant rules as GET /api/jobs/{id}; a bad timeout is 400.
    let cust = token(Role::Customer, Some("a1"), None);
    let r = srv
        .req(
            "GET",
            &format!("/api/jobs/{slow}/wait?timeout=1"),
            Some(&cust),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = srv
        .req(
            "GET",
            &format!("/api/jobs/{slow}/wait?timeout=61"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = srv
        .req("GET", "/api/jobs/nope/wait", Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_wait_pool_answers_pending_at_once() {
    let (srv, host) = server(Setup {
        waiters: 1,
        wait_secs: 20,
        ..Setup::default()
    })
    .await;
    host.delay_ms.store(3000, Ordering::SeqCst);
    let admin = token(Role::Admin, None, None);
    // One long poll holds the only wait connection.
    let slow = srv
        .enqueue(json!({"kind": "diagnostic", "payload": {"duration_ms": 5000, "steps": 5}}))
        .await;
    let path = format!("/api/jobs/{slow}/wait?timeout=20");
    let addr_srv = &srv;
    let holder = async {
        let r = addr_srv.req("GET", &path, Some(&admin), None).await;
        assert_eq!(r.json["status"], "succeeded", "{}", r.json);
    };
    let k = key(&srv, None).await;
    let caller = async {
        let t = Instant::now();
        while srv.state.waiter.in_use().0 < 1 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the long poll never started"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = Instant::now();
        let r = post(&srv, &k, "create-account", create_body(1001, "busy1")).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
        assert_eq!(r.json["status"], "pending");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "answered at once, not after wait_secs (20 s)"
        );
    };
    tokio::join!(holder, caller);
    // Once the pool is free, a repeat waits and succeeds.
    let r = post(&srv, &k, "create-account", create_body(1001, "busy1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
}

// ---------------------------------------------------------------------------------------------
// Single sign-on: one-time login links

/// `POST /api/whmcs/account/{service_id}/sso`, signed.
async fn sso(srv: &Server, k: &Key, service_id: &str, body: Value) -> Resp {
    post(srv, k, &format!("account/{service_id}/sso"), body).await
}

/// The code of a login link (after `#code=`).
fn code_of(url: &str) -> String {
    url.split_once("#code=")
        .unwrap_or_else(|| panic!("no #code= in {url}"))
        .1
        .to_string()
}

async fn exchange(srv: &Server, code: &str) -> Resp {
    srv.req(
        "POST",
        "/api/auth/login",
        None,
        Some(&json!({ "code": code }).to_string()),
    )
    .await
}

/// What every refused exchange answers: the API's one 401.
fn assert_login_refused(r: &Resp, what: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.json);
    assert_eq!(
        r.json,
        json!({"error": "unauthorized", "message": "missing, invalid or expired token"}),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sso_link_logs_in_once_as_that_customer_only() {
    let (srv, _) = server(Setup::default()).await;
    let r1 = key(&srv, Some("r1")).await;
    let r = sso(&srv, &r1, "77", json!({"account_id": "a1"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["status"], "success");
    assert_eq!(r.json["account_id"], "a1");
    assert_eq!(r.json["expires_in"], 60);
    assert_eq!(r.headers["cache-control"], "no-store");
    // No api.public_url here: http:// and the Host header the request came with.
    let url = r.json["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://{}/login#code=", srv.addr)),
        "{url}"
    );
    let code = code_of(url);
    assert_eq!(code.len(), 43, "32 bytes, base64url: {code}");
    assert!(code
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));

    // The code is a customer token for a1, once.
    let r = exchange(&srv, &code).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.json["role"], "customer");
    assert_eq!(r.json["account"], "a1");
    assert_eq!(r.json["expires_in"], 24 * 3600, "npanel token's default");
    let tok = r.json["token"].as_str().unwrap().to_string();
    let r = srv.req("GET", "/api/accounts/a1", Some(&tok), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["id"], "a1");
    for other in ["a2", "b1"] {
        let r = srv
            .req("GET", &format!("/api/accounts/{other}"), Some(&tok), None)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{other}: {}", r.json);
    }
    assert_login_refused(&exchange(&srv, &code).await, "second use");

    // Audited: the link (by the key) and the login (by the customer), never with the code.
    let links = audit_count(&srv, "login_link_created", 1).await;
    assert_eq!(links[0]["result"], "success");
    assert_eq!(links[0]["actor"]["id"], r1.id.as_str());
    assert_eq!(links[0]["account"], "a1");
    let logins = audit_count(&srv, "auth_login", 1).await;
    assert_eq!(logins.len(), 1, "the refused second use is not a login");
    assert_eq!(logins[0]["result"], "success");
    assert_eq!(logins[0]["account"], "a1");
    assert_eq!(logins[0]["reseller"], "r1");
    assert_eq!(logins[0]["actor"]["type"], "customer");
    assert_eq!(
        logins[0]["source"]["login_link_from"],
        format!("whmcs:{}", r1.id)
    );
    let text = serde_json::to_string(&(links, logins)).unwrap();
    assert!(!text.contains(&code), "a code in the audit log: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_codes_expire_are_stored_as_digests_and_die_with_the_account() {
    let (srv, _) = server(Setup::default()).await;
    let grant = api::login::LoginGrant::customer("a1", Some("r1".into()), "test");
    let digest_of = |code: &str| hex::encode(<Sha256 as sha2::Digest>::digest(code.as_bytes()));
    // A short TTL instead of waiting 60 s: the code is tried once Redis has let it go (polled,
    // not a sleep that the TTL has to fit in), and not before the TTL has passed.
    let ttl = Duration::from_millis(200);
    let t0 = Instant::now();
    let short = api::login::issue(&srv.queue, &grant, ttl).await.unwrap();
    let pattern = format!("{}stash:login:*{}", srv.queue.prefix(), digest_of(&short));
    loop {
        let left: Vec<String> = srv
            .queue
            .raw(redis::cmd("KEYS").arg(&pattern))
            .await
            .unwrap();
        if left.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the code outlived its TTL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A few ms of allowance: Redis keeps expiry times in whole ms of its own clock.
    assert!(
        t0.elapsed() + Duration::from_millis(5) >= ttl,
        "gone after {:?}, before its TTL",
        t0.elapsed()
    );
    assert_login_refused(&exchange(&srv, &short).await, "expired");

    // A live code: Redis holds the code's SHA-256, not the code.
    let code = api::login::issue(&srv.queue, &grant, api::login::CODE_TTL)
        .await
        .unwrap();
    let keys: Vec<String> = srv
        .queue
        .raw(redis::cmd("KEYS").arg(format!("{}stash:login:*", srv.queue.prefix())))
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].ends_with(&digest_of(&code)), "{keys:?}");
    assert!(!keys[0].contains(&code));
    let stored: String = srv
        .queue
        .raw(redis::cmd("GET").arg(&keys[0]))
        .await
        .unwrap();
    assert!(!stored.contains(&code), "{stored}");

    // The live code, its account terminated before it is used.
    srv.store
        .set_account_status("a1", AccountStatus::Terminated, Some("test"))
        .await
        .unwrap();
    assert_login_refused(&exchange(&srv, &code).await, "terminated since");
    // Unknown and malformed codes.
    assert_login_refused(&exchange(&srv, &"A".repeat(43)).await, "unknown");
    assert_login_refused(&exchange(&srv, "not a code").await, "not a code");
    // A grant a token cannot be made of is refused when the code is made.
    let bad = api::login::LoginGrant {
        account: None,
        ..grant
    };
    assert!(api::login::issue(&srv.queue, &bad, api::login::CODE_TTL)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_is_signed_scoped_and_refuses_terminated_accounts() {
    let (srv, _) = server(Setup::default()).await;
    let r1 = key(&srv, Some("r1")).await;
    let admin = key(&srv, None).await;

    // Another reseller's account, a reseller, a missing one: the 404 of every other route.
    for id in ["b1", "r2", "ghost"] {
        let other = call(
            &srv,
            &r1,
            "GET",
            &format!("/api/whmcs/account/{id}/status"),
            None,
        )
        .await;
        assert_eq!(other.status, StatusCode::NOT_FOUND);
        let r = sso(&srv, &r1, "5", json!({"account_id": id})).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{id}: {}", r.json);
        assert_eq!(
            r.json, other.json,
            "{id}: the same body as the status route"
        );
        assert!(r.json.get("url").is_none());
    }
    // By service id alone: a service the key has no account for.
    let r = sso(&srv, &r1, "999", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);
    assert_eq!(r.json["error"], "not_found");

    // Unsigned or badly signed: the one WHMCS 401, and no link.
    let path = "/api/whmcs/account/5/sso";
    let body = json!({"account_id": "a1", "nonce": "n1"}).to_string();
    let r = signed(&srv, &r1.id, &"0".repeat(64), now(), "POST", path, &body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.json);
    assert_eq!(r.json["status"], "error");
    assert_eq!(r.json["error"], "unauthorized");
    let r = srv.req("POST", path, None, Some(&body)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.json);

    // A service created through WHMCS is found by its service id alone; another service's id
    // with its username is a conflict, as on the other routes.
    let r = post(&srv, &admin, "create-account", create_body(4242, "ssoone")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = sso(&srv, &admin, "4242", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["account_id"], "ssoone");
    let login = exchange(&srv, &code_of(r.json["url"].as_str().unwrap())).await;
    assert_eq!(login.json["account"], "ssoone", "{}", login.json);
    let r = sso(&srv, &admin, "4243", json!({"account_id": "ssoone"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);

    // A terminated account: refused, saying why.
    srv.store
        .set_account_status("solo", AccountStatus::Terminated, Some("test"))
        .await
        .unwrap();
    let r = sso(&srv, &admin, "6", json!({"account_id": "solo"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    assert_eq!(r.json["error"], "conflict");
    assert!(
        r.json["message"].as_str().unwrap().contains("terminated"),
        "{}",
        r.json
    );
    // Not a customer: an admin key reaching a reseller account cannot log in as it.
    let r = sso(&srv, &admin, "7", json!({"account_id": "r1"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);

    // Each call is audited, refusals as denied (404) or failure (409).
    let denied = audit_count(&srv, "login_link_created", 8).await;
    assert!(denied
        .iter()
        .any(|r| r["result"] == "denied" && r["actor"]["id"] == r1.id.as_str()));
    assert!(denied
        .iter()
        .any(|r| r["result"] == "failure" && r["account"] == "solo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_url_is_the_base_of_login_links() {
    let mut api = Opts::default().api;
    api.public_url = Some("https://panel.example.net/".into());
    let srv = start(Opts {
        api,
        workers: false,
        ..Opts::default()
    })
    .await;
    let k = key(&srv, None).await;
    let r = sso(&srv, &k, "1", json!({"account_id": "solo"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let url = r.json["url"].as_str().unwrap();
    assert!(
        url.starts_with("https://panel.example.net/login#code="),
        "{url}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_page_and_the_exchange_route() {
    let mut api = Opts::default().api;
    api.rate_limit.per_ip_per_minute = 5;
    let srv = start(Opts {
        api,
        workers: false,
        ..Opts::default()
    })
    .await;
    // The page: HTML under a strict policy, its script served alongside.
    let r = srv.req("GET", "/login", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    for d in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(d), "{d} not in {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(r.headers["referrer-policy"], "no-referrer");
    let html = r.json.as_str().unwrap();
    assert!(html.contains(r#"<script src="/login.js" defer></script>"#));
    let r = srv.req("GET", "/login.js", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let js = r.json.as_str().unwrap();
    for needle in [
        "history.replaceState",
        "sessionStorage",
        "/api/auth/login",
        "This login link was already used or has expired: ask for a new one.",
    ] {
        assert!(js.contains(needle), "{needle} not in login.js");
    }
    assert!(!js.contains("localStorage"));

    // The exchange's errors are the API's JSON ones.
    let r = srv
        .req("POST", "/api/auth/login", None, Some("{\"code\": "))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    assert_eq!(r.json["error"], "invalid_request");
    assert!(r.json["message"].is_string());
    let r = srv
        .req("POST", "/api/auth/login", None, Some(r#"{"token": "x"}"#))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    assert_eq!(r.json["error"], "invalid_request");
    assert_login_refused(&exchange(&srv, &"B".repeat(43)).await, "unknown");
    // Without a token it is limited per client address like any call without one (5 a
    // minute here; three calls above).
    let mut limited = None;
    for _ in 0..5 {
        let r = exchange(&srv, &"C".repeat(43)).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = limited.expect("the per-IP limit applies to /api/auth/login");
    assert_eq!(r.json["error"], "rate_limited");
    assert!(r.headers.get("retry-after").is_some());
}

/// Both WHMCS routes that set a password follow the account's effective security policy: the
/// host template's rules at create, the account's own at a change (a legacy account accepts
/// what strict refuses); each refusal names the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_follow_the_security_policy() {
    let (srv, _host) = server(Setup::default()).await;
    let k = key(&srv, Some("r1")).await;
    let mut body = create_body(801, "pol1");
    body["password"] = json!("Short-pw1");
    let r = post(&srv, &k, "create-account", body).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    let msg = r.json["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("strict security policy's rule password_min_length") && msg.contains("WHMCS"),
        "{msg}"
    );
    assert!(srv.store.account("pol1").await.is_err(), "nothing recorded");
    let r = post(&srv, &k, "create-account", create_body(801, "pol1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);

    let pw = |p: &str| json!({"service_id": 801, "account_id": "pol1", "password": p});
    let r = post(&srv, &k, "change-password", pw("Short-pw1")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    assert!(r.json["message"]
        .as_str()
        .unwrap()
        .contains("password_min_length"));
    let r = post(&srv, &k, "change-password", pw("lowercase-only-pass-1")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    assert!(r.json["message"]
        .as_str()
        .unwrap()
        .contains("password_mixed_case"));
    srv.store
        .update_account_security("pol1", |_| {
            Ok(store::AccountSecurity {
                policy: Some(store::SecurityPolicy::Legacy),
                ..Default::default()
            })
        })
        .await
        .unwrap();
    let r = post(&srv, &k, "change-password", pw("Short-pw1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["status"], "success");
}
