//! The WHMCS API (DESIGN §5): signed requests from the billing system's server module.
//!
//! # Auth: signed requests, not JWTs
//! `Authorization: Bearer <key id>`, `X-WHMCS-Timestamp: <unix seconds>` and
//! `X-WHMCS-Signature: hex(HMAC-SHA256(secret, "<timestamp>.<METHOD>.<path?query>.<raw body>"))`,
//! where the secret (64 hex characters) is used as it is printed, as the HMAC key's bytes.
//! [`authenticate`] checks, in order: the headers, the timestamp (±300 s), the key (exists, not
//! revoked: one indexed store read), the signature against each secret in force (constant time,
//! `hmac`'s `verify_slice`), and that the signature was never accepted before (a replay cache in
//! Redis, 600 s: longer than any timestamp stays acceptable). Every failure answers the same 401
//! body and is audited as `denied` with its real reason; an address that keeps failing gets 429
//! instead (`whmcs.failed_auth_per_ip_per_minute`), so nobody can flood the audit log. These
//! routes bypass the JWT middleware and its per-IP limiter; a verified key is limited to
//! `whmcs.per_key_per_second` (default 10) requests per second → 429 with `Retry-After`.
//!
//! # Scope
//! A key scoped to a reseller reaches only that reseller's customers (another account answers
//! 404, exactly like a missing one) and creates accounts under that reseller, within its
//! allowance (`allowance_exceeded`). An unscoped key acts as the panel's admin.
//!
//! # Every change is a job, idempotent on (service id, action)
//! Each mutating call enqueues one `provision` job for the account (so per-account order holds:
//! a suspend never overtakes the create it follows) with the idempotency key
//! `whmcs|<scope>|<service_id>|<action>` (plus the package for an upgrade and a digest of the
//! password for a password change, so a *different* change is a new job). Then:
//! - a repeat while the job runs gets the same job and waits for it;
//! - a repeat after success answers success with the same outputs: the account is checked first
//!   (already suspended, already on that package, ...) and answers at once without a job;
//! - a repeat after a failure (or after a success that a later change undid, e.g. suspend →
//!   unsuspend → suspend) starts a new job, keyed `<key>|after|<previous job id>`, so
//!   concurrent repeats still share one job.
//!
//! # Waiting
//! The call waits for its job up to `whmcs.wait_secs` (default 25, below PHP's limits) on a
//! dedicated connection ([`queue::Waiter`]) and answers the final result; still running (or no
//! wait connection free) → `202 {"status": "pending", "job_id", "message"}`, and the Module
//! Queue's retry finishes it. Never "success" before the job succeeded.
//!
//! # Single sign-on
//! `POST /api/whmcs/account/{service_id}/sso` (body `{"account_id"?}`) answers a one-time
//! login link for the service's customer account, `{"status": "success", "url":
//! "<base>/login#code=<code>", "expires_in": 60, "account_id"}` ([`crate::login`]: 60 s, single
//! use). The account is resolved like the other routes (another scope's or a missing one: the
//! same 404); a terminated one is refused (409). It is audited as `login_link_created`, never
//! with the code.
//!
//! # Answers
//! `{"status": "success", ...outputs}` or `{"status": "error", "error": code, "message"}` with
//! the status of the error table (`crate::error`), plus `job_failed` (502) when the job itself
//! failed.

use crate::error::ApiError;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac};
use queue::{Job, JobStatus, NewJob, Provision, ProvisionAction, QueueError, WaitOutcome};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Account, AccountStatus, AccountType, Actor, NewAccount, NewAudit, StoreError};
use utoipa::ToSchema;

/// Largest clock difference accepted between WHMCS and this server, in seconds.
pub const MAX_SKEW_SECS: u64 = 300;
/// How long an accepted signature is remembered (covers every timestamp still acceptable).
pub const REPLAY_TTL: Duration = Duration::from_secs(600);
/// The one message of every authentication failure.
pub const UNAUTHORIZED_MESSAGE: &str = "the request is not signed with an active nPanel WHMCS key: check the key id and secret in the server's settings and that the WHMCS server's clock is right (within 5 minutes)";

/// WHMCS settings (`api.whmcs.*`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WhmcsConfig {
    /// Longest a call waits for its job before answering `pending`, in seconds (0-60, and
    /// below `api.request_timeout_secs`). Default 25.
    pub wait_secs: u64,
    /// Requests per second per key (burst: the same number). 0 disables. Default 10.
    pub per_key_per_second: u32,
    /// Failed authentications per client address per minute before it gets 429 (and no
    /// more audit records). 0 disables. Default 60.
    pub failed_auth_per_ip_per_minute: u32,
    /// The panel's login address, given to WHMCS in `credentials.login_url`. Unset: omitted.
    pub login_url: Option<String>,
}

impl Default for WhmcsConfig {
    fn default() -> Self {
        WhmcsConfig {
            wait_secs: 25,
            per_key_per_second: 10,
            failed_auth_per_ip_per_minute: 60,
            login_url: None,
        }
    }
}

impl WhmcsConfig {
    /// One plain sentence per problem (`request_timeout_secs`: the API's).
    pub fn validate(&self, request_timeout_secs: u64) -> Vec<String> {
        let mut p = Vec::new();
        if self.wait_secs > 60 || self.wait_secs >= request_timeout_secs {
            p.push(format!(
                "api.whmcs.wait_secs is {}; it must be at most 60 and below api.request_timeout_secs ({request_timeout_secs}).",
                self.wait_secs
            ));
        }
        if self
            .login_url
            .as_deref()
            .is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            p.push("api.whmcs.login_url must start with http:// or https://.".into());
        }
        p
    }
}

/// The WHMCS limiters of one process.
pub struct Limits {
    per_key: Option<DefaultKeyedRateLimiter<String>>,
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("whmcs::Limits")
    }
}

impl Limits {
    /// Limiters for `cfg`; idle keys are forgotten every minute while they live.
    pub fn new(cfg: &WhmcsConfig) -> Arc<Limits> {
        let l = Arc::new(Limits {
            per_key: NonZeroU32::new(cfg.per_key_per_second)
                .map(|n| RateLimiter::keyed(Quota::per_second(n))),
            failures: NonZeroU32::new(cfg.failed_auth_per_ip_per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            clock: DefaultClock::default(),
        });
        let weak = Arc::downgrade(&l);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(60));
            t.tick().await;
            loop {
                t.tick().await;
                let Some(l) = weak.upgrade() else { return };
                if let Some(k) = &l.per_key {
                    k.retain_recent();
                    k.shrink_to_fit();
                }
                if let Some(k) = &l.failures {
                    k.retain_recent();
                    k.shrink_to_fit();
                }
            }
        });
        l
    }

    fn check_key(&self, key: &str) -> Result<(), ApiError> {
        if let Some(l) = &self.per_key {
            l.check_key(&key.to_string()).map_err(|n| {
                metrics::counter!(crate::metrics::RATE_LIMITED_TOTAL, "scope" => "whmcs_key")
                    .increment(1);
                ApiError::RateLimited(n.wait_time_from(self.clock.now()))
            })?;
        }
        Ok(())
    }

    fn check_failure(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        if let (Some(l), Some(ip)) = (&self.failures, ip) {
            l.check_key(&ip).map_err(|n| {
                metrics::counter!(crate::metrics::RATE_LIMITED_TOTAL, "scope" => "whmcs_auth")
                    .increment(1);
                ApiError::RateLimited(n.wait_time_from(self.clock.now()))
            })?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Signatures

/// `hex(HMAC-SHA256(secret, "<timestamp>.<METHOD>.<path?query>.<body>"))`: what WHMCS sends.
pub fn sign(secret: &str, timestamp: &str, method: &str, path_query: &str, body: &[u8]) -> String {
    hex::encode(
        mac(secret, timestamp, method, path_query, body)
            .finalize()
            .into_bytes(),
    )
}

fn mac(secret: &str, timestamp: &str, method: &str, path_query: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    m.update(timestamp.as_bytes());
    m.update(b".");
    m.update(method.as_bytes());
    m.update(b".");
    m.update(path_query.as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// Whether `signature` (hex) is the signature of the request under one of `secrets`. The
/// comparison is constant-time (`verify_slice`).
pub fn verify_signature(
    secrets: &[String],
    timestamp: &str,
    method: &str,
    path_query: &str,
    body: &[u8],
    signature: &str,
) -> bool {
    let Ok(sig) = hex::decode(signature) else {
        return false;
    };
    if sig.len() != 32 {
        return false;
    }
    secrets.iter().any(|s| {
        mac(s, timestamp, method, path_query, body)
            .verify_slice(&sig)
            .is_ok()
    })
}

/// A verified key, in the request's extensions.
#[derive(Clone, Debug)]
pub struct WhmcsAuth {
    /// Key id.
    pub key: String,
    /// Its reseller scope (`None`: admin).
    pub reseller: Option<String>,
}

enum Denied {
    /// Not authenticated: the one 401, audited with this reason.
    Refused(&'static str),
    /// A dependency is down (503): not the caller's fault, not audited as denied.
    Down(ApiError),
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    let (scheme, v) = header_str(h, header::AUTHORIZATION.as_str())?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(v.trim())
}

async fn verify(st: &AppState, parts: &Parts, body: &[u8]) -> Result<WhmcsAuth, Denied> {
    let h = &parts.headers;
    let (Some(key_id), Some(ts), Some(sig)) = (
        bearer(h),
        header_str(h, "x-whmcs-timestamp"),
        header_str(h, "x-whmcs-signature"),
    ) else {
        return Err(Denied::Refused(
            "missing Authorization, X-WHMCS-Timestamp or X-WHMCS-Signature header",
        ));
    };
    let Ok(t) = ts.parse::<i64>() else {
        return Err(Denied::Refused("X-WHMCS-Timestamp is not unix seconds"));
    };
    if chrono::Utc::now().timestamp().abs_diff(t) > MAX_SKEW_SECS {
        return Err(Denied::Refused(
            "timestamp more than 300 s from the server's clock",
        ));
    }
    let key = match st.store.whmcs_key_secrets(key_id).await {
        Ok(Some(k)) => k,
        Ok(None) => return Err(Denied::Refused("unknown or revoked key")),
        Err(e) => return Err(Denied::Down(e.into())),
    };
    let path_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if !verify_signature(
        &key.secrets,
        ts,
        parts.method.as_str(),
        path_query,
        body,
        sig,
    ) {
        return Err(Denied::Refused("bad signature"));
    }
    match st
        .queue
        .remember_once("whmcs-sig", &sig.to_ascii_lowercase(), REPLAY_TTL)
        .await
    {
        Ok(true) => Ok(WhmcsAuth {
            key: key.id,
            reseller: key.reseller,
        }),
        Ok(false) => Err(Denied::Refused("replayed signature")),
        Err(e) => Err(Denied::Down(e.into())),
    }
}

/// The middleware of every `/api/whmcs` route: verify, audit refusals, limit per key.
pub async fn authenticate(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let limit = st.cfg.body_limit_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return WhmcsError(ApiError::PayloadTooLarge(limit)).into_response(),
    };
    match verify(&st, &parts, &bytes).await {
        Ok(auth) => {
            if let Err(e) = st.whmcs.check_key(&auth.key) {
                return WhmcsError(e).into_response();
            }
            tracing::Span::current().record("role", "whmcs");
            let mut req = Request::from_parts(parts, Body::from(bytes));
            req.extensions_mut().insert(auth);
            next.run(req).await
        }
        Err(Denied::Down(e)) => WhmcsError(e).into_response(),
        Err(Denied::Refused(reason)) => {
            let ctx = Whmcs::from_parts(&parts, None, started);
            if let Err(e) = st
                .whmcs
                .check_failure(ctx.ip.as_deref().and_then(|i| i.parse().ok()))
            {
                return WhmcsError(e).into_response();
            }
            let key_id: String = bearer(&parts.headers)
                .unwrap_or("")
                .chars()
                .take(64)
                .collect();
            let mut r = ctx.record("whmcs_request_denied", "denied");
            r.actor.id = key_id.clone();
            r.resource = json!({"type": "whmcs_key", "id": key_id, "name": key_id});
            r.related_logs = vec![reason.to_string()];
            r.impact = json!({"accounts_affected": 0, "resources_changed": 0});
            st.auditor.write(r).await;
            tracing::info!(reason, "WHMCS request refused.");
            WhmcsError(ApiError::Unauthorized).into_response()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Answers

/// An error in the WHMCS shape: `{"status": "error", "error", "message"}`, with the status and
/// headers (`Retry-After`, `WWW-Authenticate`) of the error table.
#[derive(Debug)]
pub struct WhmcsError(pub ApiError);

impl From<ApiError> for WhmcsError {
    fn from(e: ApiError) -> Self {
        WhmcsError(e)
    }
}

impl From<StoreError> for WhmcsError {
    fn from(e: StoreError) -> Self {
        WhmcsError(e.into())
    }
}

impl From<QueueError> for WhmcsError {
    fn from(e: QueueError) -> Self {
        WhmcsError(e.into())
    }
}

impl IntoResponse for WhmcsError {
    fn into_response(self) -> Response {
        let (code, _) = self.0.code_status();
        let message = match &self.0 {
            ApiError::Unauthorized => UNAUTHORIZED_MESSAGE.to_string(),
            ApiError::Internal(_) => "an internal error occurred on the nPanel server; retry, and tell its administrator if it happens again".into(),
            e => e.to_string(),
        };
        // The table's status, headers and logging; our body.
        let (mut parts, _) = self.0.into_response().into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = json!({"status": "error", "error": code, "message": message});
        Response::from_parts(parts, Body::from(body.to_string()))
    }
}

fn answer(status: StatusCode, mut fields: Map<String, Value>, kind: &str) -> Response {
    let mut out = Map::new();
    out.insert("status".into(), json!(kind));
    out.append(&mut fields);
    (status, axum::Json(Value::Object(out))).into_response()
}

fn success(fields: Map<String, Value>) -> Response {
    answer(StatusCode::OK, fields, "success")
}

/// Answer of a call whose job is still running.
#[derive(Debug, Serialize, ToSchema)]
pub struct PendingAnswer {
    /// `pending`.
    pub status: String,
    /// The job doing the work (`GET /api/jobs/{id}` with a panel token, or repeat the call).
    pub job_id: String,
    /// What to do.
    pub message: String,
}

/// An error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhmcsErrorBody {
    /// `error`.
    pub status: String,
    /// Stable code (the API's error table, plus `job_failed`).
    pub error: String,
    /// A sentence a billing admin can act on.
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// The caller

/// A verified WHMCS caller, with what its audit records need.
#[derive(Clone, Debug)]
pub struct Whmcs {
    /// The key, when verified.
    pub auth: Option<WhmcsAuth>,
    ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    endpoint: String,
    started: Instant,
}

impl Whmcs {
    fn from_parts(parts: &Parts, auth: Option<WhmcsAuth>, started: Instant) -> Whmcs {
        let client = crate::audit::Client::of(parts);
        Whmcs {
            auth,
            ip: client.ip,
            user_agent: client.user_agent,
            request_id: client.request_id,
            endpoint: format!("{} {}", parts.method, parts.uri.path()),
            started,
        }
    }

    fn key(&self) -> &WhmcsAuth {
        self.auth.as_ref().expect("extracted only when verified")
    }

    fn scope(&self) -> &str {
        self.key().reseller.as_deref().unwrap_or("admin")
    }

    fn record(&self, action: &str, result: &str) -> NewAudit {
        let mut r = NewAudit::new(
            action,
            Actor {
                kind: "whmcs".into(),
                id: self
                    .auth
                    .as_ref()
                    .map(|a| a.key.clone())
                    .unwrap_or_default(),
                ip: self.ip.clone(),
                user_agent: self.user_agent.clone(),
            },
            result,
        );
        r.request_id = self.request_id.clone();
        r.source = json!({"method": "WHMCS", "endpoint": self.endpoint});
        r.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        r
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Whmcs {
    type Rejection = WhmcsError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, WhmcsError> {
        match parts.extensions.get::<WhmcsAuth>().cloned() {
            Some(a) => Ok(Whmcs::from_parts(parts, Some(a), Instant::now())),
            None => Err(WhmcsError(ApiError::Unauthorized)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request bodies

/// A WHMCS service id: a number, sent as a JSON number or a string of digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[schema(value_type = u64)]
pub struct ServiceId(pub u64);

impl<'de> Deserialize<'de> for ServiceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ServiceId(n)),
            Raw::S(s) => {
                s.trim().parse().map(ServiceId).map_err(|_| {
                    serde::de::Error::custom(format!("service_id {s:?} is not a number"))
                })
            }
        }
    }
}

/// `POST /api/whmcs/create-account`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateAccountRequest {
    /// WHMCS service id.
    pub service_id: ServiceId,
    /// Username: `^[a-z][a-z0-9]{0,15}$`, not reserved.
    pub username: String,
    /// Initial password, by the host template's rules (`host.security_profile`; strict: 12+
    /// characters, mixed case, three character classes). Never stored or shown.
    pub password: String,
    /// Contact e-mail.
    pub email: String,
    /// Package id (active; global or the key's reseller's).
    pub package_id: String,
    /// Main domain.
    pub domain: String,
}

/// `POST /api/whmcs/suspend-account` (and unsuspend, terminate).
#[derive(Debug, Deserialize, ToSchema)]
pub struct AccountRequest {
    /// WHMCS service id.
    pub service_id: ServiceId,
    /// The account (username).
    pub account_id: String,
    /// Why (suspend, terminate).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /api/whmcs/upgrade-package`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpgradeRequest {
    /// WHMCS service id.
    pub service_id: ServiceId,
    /// The account (username).
    pub account_id: String,
    /// The new package id.
    pub package_id: String,
}

/// `POST /api/whmcs/change-password`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PasswordRequest {
    /// WHMCS service id.
    pub service_id: ServiceId,
    /// The account (username).
    pub account_id: String,
    /// The new password, by the account's effective security policy (strict: 12+ characters,
    /// mixed case, three character classes).
    pub password: String,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, WhmcsError> {
    serde_json::from_slice(body).map_err(|e| {
        WhmcsError(match e.classify() {
            serde_json::error::Category::Data => {
                ApiError::Unprocessable(format!("the request does not match: {e}"))
            }
            _ => ApiError::BadRequest(format!("the body is not valid JSON: {e}")),
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Actions

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Create,
    Suspend,
    Unsuspend,
    Upgrade,
    Terminate,
    ChangePassword,
}

impl Act {
    fn name(self) -> &'static str {
        match self {
            Act::Create => "create",
            Act::Suspend => "suspend",
            Act::Unsuspend => "unsuspend",
            Act::Upgrade => "upgrade",
            Act::Terminate => "terminate",
            Act::ChangePassword => "change_password",
        }
    }

    fn provision(self) -> ProvisionAction {
        match self {
            Act::Create => ProvisionAction::Create,
            Act::Suspend => ProvisionAction::Suspend,
            Act::Unsuspend => ProvisionAction::Unsuspend,
            Act::Upgrade => ProvisionAction::ChangePackage,
            Act::Terminate => ProvisionAction::Terminate,
            Act::ChangePassword => ProvisionAction::ChangePassword,
        }
    }

    fn audit_action(self) -> &'static str {
        match self {
            Act::Create => "account_created",
            Act::Suspend => "account_suspended",
            Act::Unsuspend => "account_unsuspended",
            Act::Upgrade => "package_changed",
            Act::Terminate => "account_terminated",
            Act::ChangePassword => "password_changed",
        }
    }

    /// Whether `a` already is what this action makes it (`package`: an upgrade's target).
    fn done(self, a: &Account, package: Option<&str>) -> bool {
        use AccountStatus as S;
        match self {
            Act::Create => matches!(a.status, S::Active | S::Suspended),
            Act::Suspend => a.status == S::Suspended,
            Act::Unsuspend => a.status == S::Active,
            Act::Upgrade => {
                matches!(a.status, S::Active | S::Suspended) && a.package.as_deref() == package
            }
            Act::Terminate => a.status == S::Terminated,
            // Its key carries the password's digest: a succeeded job under it set it.
            Act::ChangePassword => true,
        }
    }
}

/// What a call is about to do.
struct Plan {
    act: Act,
    account: Account,
    payload: Provision,
    key: String,
    package: Option<String>,
}

fn base_payload(act: Act, account: &Account, service_id: ServiceId) -> Provision {
    Provision {
        action: act.provision(),
        account: account.id.clone(),
        package: None,
        domain: None,
        service_id: Some(service_id.0),
        reason: None,
        password: None,
        package_version: None,
        database: None,
    }
}

fn idem_key(w: &Whmcs, service_id: ServiceId, act: Act, extra: Option<&str>) -> String {
    let mut k = format!("whmcs|{}|{}|{}", w.scope(), service_id.0, act.name());
    if let Some(x) = extra {
        k.push('|');
        k.push_str(x);
    }
    k
}

/// Enqueue the plan's job, or find the one its key names (see the module docs). Returns the
/// job id.
async fn enqueue(st: &AppState, plan: &Plan) -> Result<String, WhmcsError> {
    let mut key = plan.key.clone();
    for _ in 0..16 {
        let mut job = NewJob::typed(&plan.payload);
        job.account = Some(plan.account.id.clone());
        job.reseller = plan.account.reseller.clone();
        job.idempotency_key = Some(key.clone());
        let e = st.queue.enqueue(job).await?;
        if !e.existed {
            return Ok(e.id);
        }
        let j = match st.queue.get(&e.id).await {
            Ok(j) => j,
            Err(QueueError::NotFound(_)) => {
                key = format!("{}|after|{}", plan.key, e.id);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let current = match j.status {
            JobStatus::Queued | JobStatus::Running | JobStatus::Retrying => return Ok(e.id),
            JobStatus::Succeeded => {
                let a = st.store.account(&plan.account.id).await?;
                plan.act.done(&a, plan.package.as_deref())
            }
            JobStatus::Failed | JobStatus::Cancelled => false,
        };
        if current {
            return Ok(e.id);
        }
        // A new attempt; callers racing here derive the same key, so they share it.
        key = format!("{}|after|{}", plan.key, e.id);
    }
    Err(WhmcsError(ApiError::Conflict(format!(
        "too many attempts of this {} for WHMCS service {}; check the account in nPanel",
        plan.act.name(),
        plan.payload.service_id.unwrap_or_default()
    ))))
}

fn pending(job: &Job, act: Act, account: &str) -> Response {
    let mut m = Map::new();
    m.insert("job_id".into(), json!(job.id));
    m.insert("account_id".into(), json!(account));
    m.insert(
        "message".into(),
        json!(format!(
            "the {} of account {account} is still in progress (job {}, {}); nothing failed: a Module Queue retry will finish it",
            act.name().replace('_', " "),
            job.id,
            job.status
        )),
    );
    answer(StatusCode::ACCEPTED, m, "pending")
}

/// The outputs of a finished action on `a` (re-read after the job).
fn outputs(st: &AppState, act: Act, a: &Account, job: Option<&Job>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("account_id".into(), json!(a.id));
    m.insert("account_status".into(), json!(a.status));
    m.insert("job_id".into(), json!(job.map(|j| j.id.clone())));
    match act {
        Act::Create => {
            let mut cred = Map::new();
            cred.insert("username".into(), json!(a.id));
            cred.insert("domain".into(), json!(a.domain));
            if let Some(u) = &st.cfg.whmcs.login_url {
                cred.insert("login_url".into(), json!(u));
            }
            m.insert("credentials".into(), Value::Object(cred));
            let domain = a.domain.as_deref().unwrap_or("the account's domain");
            m.insert(
                "next_steps".into(),
                json!([
                    format!("Point {domain}'s DNS (A record, or the name servers) at this server."),
                    format!(
                        "Log in to nPanel{} as {} with the password set in WHMCS.",
                        st.cfg
                            .whmcs
                            .login_url
                            .as_deref()
                            .map(|u| format!(" at {u}"))
                            .unwrap_or_default(),
                        a.id
                    ),
                    "Upload the site's files or install an application, then add mailboxes."
                ]),
            );
        }
        Act::Suspend => {
            m.insert("suspended_at".into(), json!(a.suspended_at));
            m.insert("suspend_reason".into(), json!(a.suspend_reason));
        }
        Act::Unsuspend | Act::ChangePassword => {}
        Act::Upgrade => {
            m.insert("package".into(), json!(a.package));
            m.insert("new_limits".into(), json!(a.limits));
        }
        Act::Terminate => {
            let loc = job
                .and_then(|j| j.result.as_ref())
                .and_then(|r| r.get("backup_location"))
                .cloned()
                .unwrap_or(Value::Null);
            m.insert("backup_location".into(), loc);
            m.insert("terminated_at".into(), json!(a.terminated_at));
        }
    }
    m
}

/// The last job of a key chain (see [`enqueue`]) if it succeeded: the outputs of an action that
/// was already done (a terminate's `backup_location`) come from it.
async fn earlier_job(st: &AppState, base: &str) -> Option<Job> {
    let mut key = base.to_string();
    let mut last = None;
    for _ in 0..16 {
        let Ok(Some(id)) = st.queue.job_for_key(&key).await else {
            break;
        };
        let Ok(j) = crate::history::find_job(st, &id).await else {
            break;
        };
        key = format!("{base}|after|{}", j.id);
        last = Some(j);
    }
    last.filter(|j| j.status == JobStatus::Succeeded)
}

/// What a call did: its answer and the account it concerned.
type Done = (Response, Account);

/// Answer at once when the account already is what the action makes it; else enqueue (or
/// find) the job and wait for it up to `whmcs.wait_secs`. The job id is returned either way.
async fn execute(
    st: &AppState,
    plan: &Plan,
    created_row: bool,
) -> (Option<String>, Result<Done, WhmcsError>) {
    if plan.act != Act::ChangePassword && plan.act.done(&plan.account, plan.package.as_deref()) {
        let job = match plan.act {
            Act::Terminate => earlier_job(st, &plan.key).await,
            _ => None,
        };
        let resp = success(outputs(st, plan.act, &plan.account, job.as_ref()));
        return (job.map(|j| j.id), Ok((resp, plan.account.clone())));
    }
    let id = match enqueue(st, plan).await {
        Ok(id) => id,
        Err(e) => {
            if created_row {
                // Nothing half-written: the row goes with the job that could not start.
                if let Err(e2) = st.store.forget_pending_account(&plan.account.id).await {
                    tracing::error!(account = %plan.account.id, error = %e2, "Could not remove the account row of a WHMCS create that failed to enqueue.");
                }
            }
            return (None, Err(e));
        }
    };
    let wait = Duration::from_secs(st.cfg.whmcs.wait_secs);
    let res = async {
        match st.waiter.wait(&id, wait).await? {
            WaitOutcome::Finished(j) if j.status == JobStatus::Succeeded => {
                let a = st.store.account(&plan.account.id).await?;
                Ok((success(outputs(st, plan.act, &a, Some(&j))), a))
            }
            WaitOutcome::Finished(j) => Err(WhmcsError(ApiError::JobFailed(format!(
                "the {} of account {} failed ({}, job {}): {}. Fix the cause, then press Retry in the Module Queue: a retry starts a new attempt",
                plan.act.name().replace('_', " "),
                plan.account.id,
                j.status,
                j.id,
                j.error.as_deref().unwrap_or("no reason recorded")
            )))),
            WaitOutcome::Pending(j) => Ok((
                pending(&j, plan.act, &plan.account.id),
                plan.account.clone(),
            )),
        }
    }
    .await;
    (Some(id), res)
}

/// Check, enqueue, wait, answer and audit one mutating call.
async fn perform(
    st: &AppState,
    w: &Whmcs,
    plan: Result<Plan, WhmcsError>,
    changes: Value,
    created_row: bool,
) -> Response {
    let (act, job_id, planned, res) = match plan {
        Err(e) => (None, None, None, Err(e)),
        Ok(plan) => {
            let (job_id, res) = execute(st, &plan, created_row).await;
            (Some(plan.act), job_id, Some(plan.account), res)
        }
    };
    let action = act.map(Act::audit_action).unwrap_or("whmcs_request");
    let (result, err) = match &res {
        Ok(_) => ("success", None),
        Err(WhmcsError(e @ ApiError::NotFound(_))) => ("denied", Some(e.to_string())),
        Err(WhmcsError(e)) => ("failure", Some(e.to_string())),
    };
    let mut r = w.record(action, result);
    let account = res.as_ref().ok().map(|d| &d.1).or(planned.as_ref());
    let id = account.map(|a| a.id.clone());
    r.account = id.clone();
    r.reseller = account
        .and_then(|a| a.reseller.clone())
        .or_else(|| w.key().reseller.clone());
    r.resource = json!({"type": "account", "id": id, "name": id});
    r.changes = changes;
    r.job_id = job_id;
    r.related_logs = err.into_iter().collect();
    r.impact = json!({"accounts_affected": u8::from(id.is_some()), "resources_changed": u8::from(result == "success")});
    st.auditor.write(r).await;
    match res {
        Ok((resp, _)) => resp,
        Err(e) => e.into_response(),
    }
}

/// The password rules of `account`'s effective security policy (a new account: the host's
/// template), with what to do in WHMCS.
async fn check_password(st: &AppState, account: Option<&str>, p: &str) -> Result<(), WhmcsError> {
    crate::security::check_password(st, account, p)
        .await
        .map_err(|e| match e {
            ApiError::Unprocessable(m) => WhmcsError(ApiError::Unprocessable(format!(
                "{m}; set a password that follows it in WHMCS and retry"
            ))),
            e => WhmcsError(e),
        })
}

/// The account `id` if the key may act on it: its reseller's customers, or (admin scope)
/// any account but admins. Anything else is 404, like a missing one.
async fn reachable(st: &AppState, w: &Whmcs, id: &str) -> Result<Account, WhmcsError> {
    let not_found = || {
        WhmcsError(ApiError::NotFound(format!(
            "account {id} does not exist on this nPanel server (or this API key may not manage it)"
        )))
    };
    if id.is_empty() || id.len() > 64 {
        return Err(not_found());
    }
    let a = match st.store.account(id).await {
        Ok(a) => a,
        Err(StoreError::NotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    let ok = match &w.key().reseller {
        Some(r) => a.kind == AccountType::Customer && a.reseller.as_ref() == Some(r),
        None => a.kind != AccountType::Admin,
    };
    if ok {
        Ok(a)
    } else {
        Err(not_found())
    }
}

/// The account must belong to `service_id` when it records one.
fn check_service(a: &Account, service_id: ServiceId) -> Result<(), WhmcsError> {
    match &a.whmcs_service_id {
        Some(s) if s != &service_id.0.to_string() => Err(WhmcsError(ApiError::Conflict(format!(
            "account {} belongs to WHMCS service {s}, not {}; check the service's username",
            a.id, service_id.0
        )))),
        _ => Ok(()),
    }
}

/// [`reachable`], and the account must belong to `service_id` when it records one.
async fn service_account(
    st: &AppState,
    w: &Whmcs,
    id: &str,
    service_id: ServiceId,
    act: Act,
) -> Result<Account, WhmcsError> {
    let a = reachable(st, w, id).await?;
    check_service(&a, service_id)?;
    if a.status == AccountStatus::Terminated && act != Act::Terminate {
        return Err(WhmcsError(ApiError::Conflict(format!(
            "account {id} is terminated; it cannot be changed (create a new account instead)"
        ))));
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// Routes

/// Create an account: records it (pending) and runs `provision/create`.
#[utoipa::path(post, path = "/api/whmcs/create-account", tag = "whmcs", request_body = CreateAccountRequest,
    responses((status = 200, description = "{status: success, account_id, credentials {username, domain, login_url?}, next_steps}"),
        (status = 202, body = PendingAnswer), (status = 401, body = WhmcsErrorBody), (status = 409, body = WhmcsErrorBody, description = "conflict or allowance_exceeded"),
        (status = 422, body = WhmcsErrorBody), (status = 429, body = WhmcsErrorBody), (status = 502, body = WhmcsErrorBody, description = "job_failed"),
        (status = 503, body = WhmcsErrorBody)))]
pub async fn create_account(State(st): State<AppState>, w: Whmcs, body: Bytes) -> Response {
    let mut created = false;
    let plan = async {
        let req: CreateAccountRequest = parse(&body)?;
        store::validate_username(&req.username).map_err(|e| {
            WhmcsError(ApiError::Unprocessable(format!(
                "{e}; change the service's username in WHMCS and retry"
            )))
        })?;
        check_password(&st, None, &req.password).await?;
        let d = req.domain.trim().to_ascii_lowercase();
        if d.len() > 253 || !d.contains('.') || d.starts_with('.') || d.contains("..") {
            return Err(WhmcsError(ApiError::Unprocessable(format!(
                "domain {d:?} is not a domain name; correct the service's domain in WHMCS"
            ))));
        }
        if !req.email.contains('@') || req.email.len() > 254 {
            return Err(WhmcsError(ApiError::Unprocessable(format!(
                "e-mail {:?} is not an address; correct the client's e-mail in WHMCS",
                req.email
            ))));
        }
        let sid = req.service_id.0.to_string();
        let scope = w.key().reseller.clone();
        let live = |a: Option<Account>| a.filter(|a| a.status != AccountStatus::Terminated);
        let account = match live(st.store.whmcs_account(&sid, scope.as_deref()).await?) {
            Some(a) => a,
            None => {
                let new = NewAccount {
                    id: req.username.clone(),
                    kind: Some(AccountType::Customer),
                    parent: scope.clone(),
                    package: Some(req.package_id.clone()),
                    domain: Some(d.clone()),
                    email: Some(req.email.clone()),
                    allowance: None,
                    whmcs_service_id: Some(sid.clone()),
                };
                match st.store.create_account(&new).await {
                    Ok(a) => {
                        created = true;
                        a
                    }
                    // A concurrent call for the same service may have just recorded it.
                    Err(StoreError::Conflict(m)) => {
                        match live(st.store.whmcs_account(&sid, scope.as_deref()).await?) {
                            Some(a) => a,
                            None => {
                                return Err(WhmcsError(ApiError::Conflict(format!(
                                    "{m}; choose another username for the service in WHMCS and retry"
                                ))))
                            }
                        }
                    }
                    Err(StoreError::Invalid(m)) => {
                        return Err(WhmcsError(ApiError::Unprocessable(format!(
                            "{m}; correct the product's nPanel package (or the service) in WHMCS and retry"
                        ))))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let mut payload = base_payload(Act::Create, &account, req.service_id);
        payload.package = account.package.clone();
        payload.domain = account.domain.clone();
        payload.password = Some(req.password);
        Ok(Plan {
            act: Act::Create,
            key: idem_key(&w, req.service_id, Act::Create, None),
            account,
            payload,
            package: None,
        })
    }
    .await;
    let changes = match &plan {
        Ok(p) => {
            json!({"before": null, "after": {"account": p.account.id, "package": p.account.package,
            "domain": p.account.domain, "service_id": p.payload.service_id, "password": "**REDACTED**"}})
        }
        Err(_) => Value::Null,
    };
    perform(&st, &w, plan, changes, created).await
}

async fn account_action(
    st: &AppState,
    w: &Whmcs,
    body: &[u8],
    act: Act,
) -> Result<(Plan, Value), WhmcsError> {
    let req: AccountRequest = parse(body)?;
    let a = service_account(st, w, &req.account_id, req.service_id, act).await?;
    let mut p = base_payload(act, &a, req.service_id);
    p.reason = req.reason.clone();
    let after = match act {
        Act::Suspend => json!({"status": "suspended", "reason": req.reason}),
        Act::Unsuspend => json!({"status": "active"}),
        _ => json!({"status": "terminated", "reason": req.reason}),
    };
    let changes = json!({"before": {"status": a.status}, "after": after});
    Ok((
        Plan {
            act,
            key: idem_key(w, req.service_id, act, None),
            account: a,
            payload: p,
            package: None,
        },
        changes,
    ))
}

async fn simple(st: AppState, w: Whmcs, body: Bytes, act: Act) -> Response {
    match account_action(&st, &w, &body, act).await {
        Ok((plan, changes)) => perform(&st, &w, Ok(plan), changes, false).await,
        Err(e) => perform(&st, &w, Err(e), Value::Null, false).await,
    }
}

/// Suspend an account (`provision/suspend`).
#[utoipa::path(post, path = "/api/whmcs/suspend-account", tag = "whmcs", request_body = AccountRequest,
    responses((status = 200, description = "{status: success, account_id, suspended_at}"), (status = 202, body = PendingAnswer),
        (status = 401, body = WhmcsErrorBody), (status = 404, body = WhmcsErrorBody), (status = 409, body = WhmcsErrorBody),
        (status = 429, body = WhmcsErrorBody), (status = 502, body = WhmcsErrorBody)))]
pub async fn suspend_account(State(st): State<AppState>, w: Whmcs, body: Bytes) -> Response {
    simple(st, w, body, Act::Suspend).await
}

/// Unsuspend an account (`provision/unsuspend`).
#[utoipa::path(post, path = "/api/whmcs/unsuspend-account", tag = "whmcs", request_body = AccountRequest,
    responses((status = 200, description = "{status: success, account_id}"), (status = 202, body = PendingAnswer),
        (status = 401, body = WhmcsErrorBody), (status = 404, body = WhmcsErrorBody), (status = 409, body = WhmcsErrorBody),
        (status = 429, body = WhmcsErrorBody), (status = 502, body = WhmcsErrorBody)))]
pub async fn unsuspend_account(State(st): State<AppState>, w: Whmcs, body: Bytes) -> Response {
    simple(st, w, body, Act::Unsuspend).await
}

/// Terminate an account (`provision/terminate`; the job backs the home up first).
#[utoipa::path(post, path = "/api/whmcs/terminate-account", tag = "whmcs", request_body = AccountRequest,
    responses((status = 200, description = "{status: success, account_id, backup_location}"), (status = 202, body = PendingAnswer),
        (status = 401, body = WhmcsErrorBody), (status = 404, body = WhmcsErrorBody), (status = 409, body = WhmcsErrorBody),
        (status = 429, body = WhmcsErrorBody), (status = 502, body = WhmcsErrorBody)))]
pub async fn terminate_account(State(st): State<AppState>, w: Whmcs, body: Bytes) -> Response {
    simple(st, w, body, Act::Terminate).await
}

/// Move an account to another package (`provision/change_package`, within the allowance).
#[utoipa::path(post, path = "/api/whmcs/upgrade-package", tag = "whmcs", request_body = UpgradeRequest,
    responses((status = 200, description = "{status: success, account_id, package, new_limits}"), (status = 202, body = PendingAnswer),
        (status = 401, body = WhmcsErrorBody), (status = 404, body = WhmcsErrorBody), (status = 409, body = WhmcsErrorBody),
        (status = 422, body = WhmcsErrorBody), (status = 429, body = WhmcsErrorBody), (status = 502, body = WhmcsErrorBody)))]
pub async fn upgrade_package(State(st): State<AppState>, w: Whmcs, body: Bytes) -> Response {
    let plan = async {
        let req: UpgradeRequest = parse(&body)?;
        let a = service_account(&st, &w, &req.account_id, req.service_id, Act::Upgrade).await?;
        if a.package.as_deref() != Some(req.package_id.as_str()) {
            st.store
                .check_package_change(&a, &req.package_id)
                .await
                .map_err(|e| match e {
                    StoreError::Invalid(m) => WhmcsError(ApiError::Unprocessable(format!(
                        "{m}; correct the product's nPanel package in WHMCS and retry"
                    ))),
                    e => e.into(),
                })?;
        }
        let mut p = base_payload(Act::Upgrade, &a, req.service_id);
        p.package = Some(req.package_id.clone());
        let changes =
            json!({"before": {"package": a.package}, "after": {"package": req.package_id}});
        Ok((
            Plan {
                act: Act::Upgrade,
                key: idem_key(&w, req.service_id, Act::Upgrade, Some(&req.package_id)),
                account: a,
                payload: p,
                package: Some(req.package_id),
            },
            changes,
        ))
    }
    .await;
    match plan {
        Ok((plan, changes)) => perform(&st, &w, Ok(plan), changes, false).await,
        Err(e) => perform(&st, &w, Err(e), Value::Null, false).await,
    }
}

/// Set an account's password (`provision/change_password`).
#[utoipa::path(post, path = "/api/whmcs/change-password", tag = "whmcs", request_body = PasswordRequest,
    responses((status = 200, description = "{status: success, account_id}"), (status = 202, body = PendingAnswer),
        (status = 401, body = WhmcsErrorBody), (status = 404, body = WhmcsErrorBody), (status = 409, body = WhmcsErrorBody),
        (status = 422, body = WhmcsErrorBody), (status = 429, body = WhmcsErrorBody), (status = 502, body = WhmcsErrorBody)))]
pub async fn change_password(State(st): State<AppState>, w: Whmcs, body: Bytes) -> Response {
    let plan = async {
        let req: PasswordRequest = parse(&body)?;
        let a = service_account(
            &st,
            &w,
            &req.account_id,
            req.service_id,
            Act::ChangePassword,
        )
        .await?;
        check_password(&st, Some(&a.id), &req.password).await?;
        let mut p = base_payload(Act::ChangePassword, &a, req.service_id);
        // Whoever reads Redis reads the job's payload too, so a digest in the key adds
        // nothing to what Redis holds; it makes a *different* password a new job.
        let digest = hex::encode(&Sha256::digest(req.password.as_bytes())[..8]);
        p.password = Some(req.password);
        Ok(Plan {
            act: Act::ChangePassword,
            key: idem_key(&w, req.service_id, Act::ChangePassword, Some(&digest)),
            account: a,
            payload: p,
            package: None,
        })
    }
    .await;
    let changes =
        json!({"before": {"password": "**REDACTED**"}, "after": {"password": "**REDACTED**"}});
    perform(&st, &w, plan, changes, false).await
}

/// One account, as the panel shows it.
#[utoipa::path(get, path = "/api/whmcs/account/{id}/status", tag = "whmcs", params(("id" = String, Path, description = "Username")),
    responses((status = 200, description = "{status: success, account_status, account: {...}}"), (status = 401, body = WhmcsErrorBody),
        (status = 404, body = WhmcsErrorBody)))]
pub async fn account_status(
    State(st): State<AppState>,
    w: Whmcs,
    Path(id): Path<String>,
) -> Result<Response, WhmcsError> {
    let a = reachable(&st, &w, &id).await?;
    let mut m = Map::new();
    m.insert("account_id".into(), json!(a.id));
    m.insert("account_status".into(), json!(a.status));
    m.insert("account".into(), json!(a));
    Ok(success(m))
}

/// Disk and bandwidth of one account, in MB (0 = unlimited).
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Username.
    pub account_id: String,
    /// The WHMCS service id, when WHMCS created it.
    pub service_id: Option<String>,
    /// Its status.
    pub account_status: String,
    /// Its package.
    pub package: Option<String>,
    /// Disk used, MB (rounded up; 0 until measured).
    pub disk_used_mb: u64,
    /// Disk limit, MB; 0 = unlimited.
    pub disk_limit_mb: u64,
    /// Bandwidth used this month (UTC), MB (rounded up; 0 until measured).
    pub bandwidth_used_mb: u64,
    /// Bandwidth limit, MB; 0 = unlimited.
    pub bandwidth_limit_mb: u64,
    /// False while no quota sweep has measured the account: the `used` figures are 0.
    pub measured: bool,
    /// When the quota sweep last measured it.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub measured_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Whole MB, rounded up (a few KB used is 1 MB, not 0).
fn mb_up(bytes: i64) -> u64 {
    (bytes.max(0) as u64).div_ceil(1 << 20)
}

fn usage_of(a: &Account, now: Option<&store::UsageNow>) -> Usage {
    let limits = a.limits.clone().unwrap_or_default();
    Usage {
        account_id: a.id.clone(),
        service_id: a.whmcs_service_id.clone(),
        account_status: a.status.as_str().into(),
        package: a.package.clone(),
        disk_used_mb: now.map_or(0, |u| mb_up(u.disk_bytes)),
        disk_limit_mb: limits.disk_mb.unwrap_or(0),
        bandwidth_used_mb: now.map_or(0, |u| mb_up(u.bandwidth_month_bytes)),
        bandwidth_limit_mb: limits.bandwidth_mb.unwrap_or(0),
        measured: now.is_some(),
        measured_at: now.map(|u| u.measured_at),
    }
}

fn usage_fields(u: &Usage) -> Map<String, Value> {
    match serde_json::to_value(u) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// One account's disk and bandwidth (MB, 0 = unlimited).
#[utoipa::path(get, path = "/api/whmcs/account/{id}/usage", tag = "whmcs", params(("id" = String, Path, description = "Username")),
    responses((status = 200, description = "{status: success, account_id, disk_used_mb, disk_limit_mb, bandwidth_used_mb, bandwidth_limit_mb, measured, measured_at}"),
        (status = 401, body = WhmcsErrorBody), (status = 404, body = WhmcsErrorBody)))]
pub async fn account_usage(
    State(st): State<AppState>,
    w: Whmcs,
    Path(id): Path<String>,
) -> Result<Response, WhmcsError> {
    let a = reachable(&st, &w, &id).await?;
    let now = st
        .store
        .usage_now(Some(std::slice::from_ref(&a.id)))
        .await?;
    Ok(success(usage_fields(&usage_of(&a, now.get(&a.id)))))
}

/// Every account of the key's scope that is not terminated, by id.
async fn scope_accounts(st: &AppState, w: &Whmcs) -> Result<Vec<Account>, WhmcsError> {
    let reseller = w.key().reseller.clone();
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = st
            .store
            .list_accounts(reseller.as_deref(), None, after.as_deref(), 1000)
            .await?;
        let n = page.len();
        after = page.last().map(|a| a.id.clone());
        out.extend(
            page.into_iter()
                .filter(|a| a.kind != AccountType::Admin && a.status != AccountStatus::Terminated),
        );
        if n < 1000 || out.len() >= 100_000 {
            return Ok(out);
        }
    }
}

/// Disk and bandwidth of every account of the key's scope, for WHMCS's daily `UsageUpdate`.
#[utoipa::path(get, path = "/api/whmcs/usage", tag = "whmcs",
    responses((status = 200, description = "{status: success, measured, accounts: [{account_id, service_id, disk_used_mb, disk_limit_mb, bandwidth_used_mb, bandwidth_limit_mb, measured}]}"),
        (status = 401, body = WhmcsErrorBody)))]
pub async fn usage(State(st): State<AppState>, w: Whmcs) -> Result<Response, WhmcsError> {
    // Every measured account's figures in two queries, then the key's scope picked out.
    let measured = st.store.usage_now(None).await?;
    let all: Vec<Usage> = scope_accounts(&st, &w)
        .await?
        .iter()
        .map(|a| usage_of(a, measured.get(&a.id)))
        .collect();
    let mut m = Map::new();
    m.insert("measured".into(), json!(all.iter().any(|u| u.measured)));
    m.insert("accounts".into(), json!(all));
    Ok(success(m))
}

/// Every account of the key's scope, for WHMCS's Server Sync.
#[utoipa::path(get, path = "/api/whmcs/accounts", tag = "whmcs",
    responses((status = 200, description = "{status: success, accounts: [{id, domain, status, package, service_id, email, created_at}]}"),
        (status = 401, body = WhmcsErrorBody)))]
pub async fn accounts(State(st): State<AppState>, w: Whmcs) -> Result<Response, WhmcsError> {
    let list: Vec<Value> = scope_accounts(&st, &w)
        .await?
        .into_iter()
        .map(|a| {
            json!({"id": a.id, "domain": a.domain, "status": a.status, "package": a.package,
                "service_id": a.whmcs_service_id, "email": a.email, "created_at": a.created_at})
        })
        .collect();
    let mut m = Map::new();
    m.insert("accounts".into(), json!(list));
    Ok(success(m))
}

// ---------------------------------------------------------------------------------------------
// Single sign-on

/// `POST /api/whmcs/account/{service_id}/sso` (the body may be empty).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SsoRequest {
    /// The account (username). Given: resolved like the other routes (and it must belong to
    /// the service when it records one). Absent: the key's account of the service.
    #[serde(default)]
    pub account_id: Option<String>,
}

/// The account a single sign-on is for (see [`SsoRequest`]).
async fn sso_account(
    st: &AppState,
    w: &Whmcs,
    service_id: &str,
    body: &[u8],
) -> Result<Account, WhmcsError> {
    let req: SsoRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SsoRequest::default()
    } else {
        parse(body)?
    };
    let sid = service_id
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(ServiceId);
    let a = match (req.account_id.as_deref().map(str::trim), sid) {
        (Some(id), Some(sid)) if !id.is_empty() => {
            let a = reachable(st, w, id).await?;
            check_service(&a, sid)?;
            a
        }
        (_, sid) => {
            let found = match sid {
                Some(sid) => {
                    st.store
                        .whmcs_account(&sid.0.to_string(), w.key().reseller.as_deref())
                        .await?
                }
                None => None,
            };
            found.ok_or_else(|| {
                WhmcsError(ApiError::NotFound(format!(
                    "no account of WHMCS service {} exists on this nPanel server (or this API key may not manage it); send the service's username as account_id",
                    service_id.chars().take(32).collect::<String>()
                )))
            })?
        }
    };
    Ok(a)
}

/// Whether `a` can be logged in to: a customer account that is not terminated.
fn sso_allowed(a: &Account) -> Result<(), WhmcsError> {
    if a.status == AccountStatus::Terminated {
        return Err(WhmcsError(ApiError::Conflict(format!(
            "account {} is terminated, so there is nothing to log in to; create a new service for the client",
            a.id
        ))));
    }
    if a.kind != AccountType::Customer {
        return Err(WhmcsError(ApiError::Conflict(format!(
            "account {} is a {} account; single sign-on logs in customer accounts only",
            a.id,
            a.kind.as_str()
        ))));
    }
    Ok(())
}

/// `<base>` of a login link: `api.public_url`, else `http://` and the request's Host header.
fn public_base(st: &AppState, headers: &HeaderMap) -> Result<String, WhmcsError> {
    if let Some(u) = &st.cfg.public_url {
        return Ok(u.trim_end_matches('/').to_string());
    }
    let host = header_str(headers, header::HOST.as_str()).filter(|h| {
        h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    });
    match host {
        Some(h) => Ok(format!("http://{h}")),
        None => Err(WhmcsError(ApiError::Unprocessable(
            "the request has no usable Host header to build the login address from; set api.public_url on the nPanel server".into(),
        ))),
    }
}

/// A one-time login link for a customer account: `<base>/login#code=<code>`, good once, for
/// 60 s (see [`crate::login`]). The code is never logged or audited.
#[utoipa::path(post, path = "/api/whmcs/account/{service_id}/sso", tag = "whmcs", request_body = SsoRequest,
    params(("service_id" = u64, Path, description = "WHMCS service id")),
    responses((status = 200, description = "{status: success, url, expires_in, account_id}"),
        (status = 401, body = WhmcsErrorBody), (status = 404, body = WhmcsErrorBody),
        (status = 409, body = WhmcsErrorBody, description = "terminated, or not a customer account, or another service's account"),
        (status = 422, body = WhmcsErrorBody), (status = 429, body = WhmcsErrorBody), (status = 503, body = WhmcsErrorBody)))]
pub async fn single_sign_on(
    State(st): State<AppState>,
    w: Whmcs,
    Path(service_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut account = None;
    let res = async {
        let a = sso_account(&st, &w, &service_id, &body).await?;
        account = Some(a.clone());
        sso_allowed(&a)?;
        let base = public_base(&st, &headers)?;
        let grant = crate::login::LoginGrant::customer(
            &a.id,
            a.reseller.clone(),
            &format!("whmcs:{}", w.key().key),
        );
        let code = crate::login::issue(&st.queue, &grant, crate::login::CODE_TTL)
            .await
            .map_err(|e| WhmcsError(e.into()))?;
        let mut m = Map::new();
        m.insert("account_id".into(), json!(a.id));
        m.insert("url".into(), json!(crate::login::login_url(&base, &code)));
        m.insert("expires_in".into(), json!(crate::login::CODE_TTL.as_secs()));
        Ok::<_, WhmcsError>(m)
    }
    .await;
    let (result, err) = match &res {
        Ok(_) => ("success", None),
        Err(WhmcsError(e @ ApiError::NotFound(_))) => ("denied", Some(e.to_string())),
        Err(WhmcsError(e)) => ("failure", Some(e.to_string())),
    };
    let mut r = w.record("login_link_created", result);
    let id = account.as_ref().map(|a| a.id.clone());
    r.account = id.clone();
    r.reseller = account
        .as_ref()
        .and_then(|a| a.reseller.clone())
        .or_else(|| w.key().reseller.clone());
    r.resource = json!({"type": "account", "id": id, "name": id});
    let sid: String = service_id.chars().take(32).collect();
    r.changes = json!({"service_id": sid, "expires_in": crate::login::CODE_TTL.as_secs()});
    r.related_logs = err.into_iter().collect();
    r.impact = json!({"accounts_affected": u8::from(id.is_some()), "resources_changed": 0});
    st.auditor.write(r).await;
    match res {
        Ok(m) => {
            let mut resp = success(m);
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            resp
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_any_active_secret_only() {
        let s1 = "a".repeat(64);
        let s2 = "b".repeat(64);
        let sig = sign(&s1, "1700000000", "POST", "/api/whmcs/x?y=1", b"{}");
        assert_eq!(sig.len(), 64);
        let both = [s2.clone(), s1.clone()];
        assert!(verify_signature(
            &both,
            "1700000000",
            "POST",
            "/api/whmcs/x?y=1",
            b"{}",
            &sig
        ));
        assert!(verify_signature(
            &both,
            "1700000000",
            "POST",
            "/api/whmcs/x?y=1",
            b"{}",
            &sig.to_uppercase()
        ));
        assert!(!verify_signature(
            &[s2],
            "1700000000",
            "POST",
            "/api/whmcs/x?y=1",
            b"{}",
            &sig
        ));
        for (ts, m, pq, body) in [
            ("1700000001", "POST", "/api/whmcs/x?y=1", &b"{}"[..]),
            ("1700000000", "GET", "/api/whmcs/x?y=1", b"{}"),
            ("1700000000", "POST", "/api/whmcs/x?y=2", b"{}"),
            ("1700000000", "POST", "/api/whmcs/x?y=1", b"{ }"),
        ] {
            assert!(!verify_signature(&both, ts, m, pq, body, &sig));
        }
        assert!(!verify_signature(
            &both,
            "1700000000",
            "POST",
            "/api/whmcs/x?y=1",
            b"{}",
            "zz"
        ));
        assert!(!verify_signature(
            &both,
            "1700000000",
            "POST",
            "/api/whmcs/x?y=1",
            b"{}",
            &sig[..62]
        ));
    }

    #[test]
    fn service_ids_take_numbers_and_digit_strings() {
        let n: ServiceId = serde_json::from_str("42").unwrap();
        let s: ServiceId = serde_json::from_str("\" 42\"").unwrap();
        assert_eq!(n, s);
        assert!(serde_json::from_str::<ServiceId>("\"x\"").is_err());
        assert!(serde_json::from_str::<ServiceId>("-1").is_err());
    }

    #[test]
    fn wait_must_fit_in_the_request_timeout() {
        assert!(WhmcsConfig::default().validate(30).is_empty());
        assert_eq!(WhmcsConfig::default().validate(25).len(), 1);
    }
}
