//! nPanel's HTTP API (DESIGN §3): jobs, restore, migration health, admin, auth, rate limits,
//! metrics, OpenAPI; the WebSocket routes are mounted from `ws`.
//!
//! # Layout
//! - [`router`] builds the whole app from an [`AppState`], so tests serve it on `127.0.0.1:0`
//!   exactly as `npanel serve` does ([`serve`]).
//! - Middleware, outermost first (one `ServiceBuilder`, STYLE.md §10): request id (`x-request-id`,
//!   generated as a ULID when absent, echoed back) → a tracing span per request (method, route,
//!   request id, role; never the query string, which may hold a token) → metrics → timeout →
//!   body limit; then on `/api/*` only: [`auth::authenticate`] → [`limit::rate_limit`], except
//!   `/api/whmcs/*`, which takes signed requests instead ([`whmcs::authenticate`], its own
//!   per-key limit). `POST /api/auth/login` is an `/api` route like the others: without a token
//!   it is limited per client IP. `GET /login` and `/login.js` are the page of one-time login
//!   links ([`login`]), static and unauthenticated like the operations routes; so are the web
//!   dashboard's `/`, `/dashboard.js` and `/dashboard.css` ([`dashboard`]).
//! - [`error`] holds the one error type and its table of stable codes.
//! - Every route is registered through `utoipa-axum`, so `/api/openapi.json` is generated from
//!   the same annotations that mount the handlers and cannot drift from them.
//!
//! # Tenancy
//! A job records its account and that account's reseller. [`ws::Viewer`] is the one rule: admins
//! see all, resellers jobs whose reseller is theirs, customers their account's. Another
//! tenant's job is `404 not_found`, exactly like a missing one. Admin routes answer 403 to others.
//! `POST /api/jobs` (any kind, any account) is admin-only, as DESIGN §3 says; customers and
//! resellers start work through the typed routes (`/api/restore`, `/api/migration/{id}/health`).

pub mod accounts;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod dashboard;
pub mod databases;
pub mod domains;
pub mod email_policy;
pub mod error;
pub mod extract;
pub mod history;
pub mod jobs;
pub mod limit;
pub mod live;
pub mod login;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod packages;
pub mod restore;
pub mod security;
pub mod upgrade;
pub mod usage;
pub mod whmcs;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use error::ApiError;
use metrics_exporter_prometheus::PrometheusHandle;
use queue::Queue;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
pub use ws::{Hub, HubConfig, Role, Viewer};

/// API settings (`api.*` in the binary's config).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// HS256 secret for tokens (`NPANEL_API__JWT_SECRET`). Unset: generated into
    /// `<data_dir>/jwt.secret` (mode 0600) on first start. Never printed.
    pub jwt_secret: Option<String>,
    /// Rate limits.
    pub rate_limit: limit::RateLimitConfig,
    /// Longest a request may take, in seconds (WebSocket streams are not limited). Default 30.
    pub request_timeout_secs: u64,
    /// Largest request body in bytes; larger is 413. Default 1 MiB.
    pub body_limit_bytes: usize,
    /// The WHMCS API (wait bound, per-key limit, login URL).
    pub whmcs: whmcs::WhmcsConfig,
    /// The panel's address as browsers reach it (`https://panel.example.net`), the base of
    /// one-time login links. Unset: `http://` and the Host header of the request asking for
    /// the link (`npanel token --login-link`: `http://` and `listen`).
    pub public_url: Option<String>,
    /// Seconds after a restore its post-migration health check runs (queued with the restore;
    /// DESIGN §12). Default 30; 0: as soon as the restore has finished.
    pub health_check_after_restore_secs: u64,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "**REDACTED**"),
            )
            .field("rate_limit", &self.rate_limit)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("body_limit_bytes", &self.body_limit_bytes)
            .field("whmcs", &self.whmcs)
            .field("public_url", &self.public_url)
            .field(
                "health_check_after_restore_secs",
                &self.health_check_after_restore_secs,
            )
            .finish()
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            jwt_secret: None,
            rate_limit: limit::RateLimitConfig::default(),
            request_timeout_secs: 30,
            body_limit_bytes: 1024 * 1024,
            whmcs: whmcs::WhmcsConfig::default(),
            public_url: None,
            health_check_after_restore_secs: restore::HEALTH_AFTER_RESTORE_SECS,
        }
    }
}

impl ApiConfig {
    /// One plain sentence per problem.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.request_timeout_secs == 0 {
            p.push("api.request_timeout_secs must be at least 1.".into());
        }
        if self.body_limit_bytes < 1024 {
            p.push("api.body_limit_bytes must be at least 1024.".into());
        }
        if self.jwt_secret.as_ref().is_some_and(|s| s.len() < 16) {
            p.push(
                "api.jwt_secret must be at least 16 characters (or unset, to generate one).".into(),
            );
        }
        if self.public_url.as_deref().is_some_and(|u| {
            !(u.starts_with("http://") || u.starts_with("https://")) || u.contains(['#', '?', ' '])
        }) {
            p.push(
                "api.public_url must be an http:// or https:// address without a query or fragment, e.g. https://panel.example.net."
                    .into(),
            );
        }
        p.extend(self.whmcs.validate(self.request_timeout_secs));
        p
    }
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The queue (built with the kinds this build can run).
    pub queue: Queue,
    /// The WebSocket fan-out.
    pub hub: Hub,
    /// The system of record.
    pub store: store::Store,
    /// The audit log's write path.
    pub auditor: Arc<audit::Auditor>,
    /// Waits for jobs on dedicated connections (WHMCS calls, `GET /api/jobs/{id}/wait`).
    pub waiter: queue::Waiter,
    pub(crate) whmcs: Arc<whmcs::Limits>,
    pub(crate) auth: Arc<auth::Auth>,
    pub(crate) limits: Arc<limit::Limiters>,
    pub(crate) prometheus: PrometheusHandle,
    pub(crate) cfg: Arc<ApiConfig>,
    pub(crate) openapi: Arc<OnceLock<String>>,
    /// Template of accounts that chose none (`host.security_profile`).
    pub(crate) security_default: store::SecurityPolicy,
    /// The accounts' database server (`databases.url`; [`AppState::with_databases`]).
    pub(crate) databases: Option<store::HostedDatabases>,
}

impl AppState {
    /// State over `queue`, `hub` and `store`, signing tokens with `secret`. Connects the hub's
    /// snapshots to the store's job history. The background tasks (archiver, audit drain) are
    /// started by [`AppState::spawn_background`].
    pub fn new(
        queue: Queue,
        hub: Hub,
        store: store::Store,
        secret: &[u8],
        cfg: ApiConfig,
        prometheus: PrometheusHandle,
    ) -> AppState {
        let limits = Arc::new(limit::Limiters::new(&cfg.rate_limit));
        limit::spawn_janitor(&limits);
        history::attach(&hub, queue.clone(), store.clone());
        let waiter = queue::Waiter::new(&queue).expect("the queue accepted this Redis URL already");
        AppState {
            waiter,
            whmcs: whmcs::Limits::new(&cfg.whmcs),
            auditor: audit::Auditor::new(queue.clone(), store.clone()),
            store,
            queue,
            hub,
            auth: Arc::new(auth::Auth::new(secret)),
            limits,
            prometheus,
            cfg: Arc::new(cfg),
            openapi: Arc::new(OnceLock::new()),
            security_default: store::SecurityPolicy::default(),
            databases: None,
        }
    }

    /// The security template of accounts that chose none (`host.security_profile`; default
    /// `strict`): what `GET /api/accounts/{id}/security-policy` shows and what passwords are
    /// checked against.
    pub fn with_security_default(mut self, policy: store::SecurityPolicy) -> AppState {
        self.security_default = policy;
        self
    }

    /// Start the archiver (finished jobs → history) and the audit outbox drain; both stop
    /// with `stop` (the drain after one last pass).
    pub fn spawn_background(&self, stop: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(history::run_archiver(
                self.queue.clone(),
                self.store.clone(),
                stop.clone(),
            )),
            tokio::spawn(self.auditor.clone().run(stop)),
        ]
    }

    /// Apply new rate limits while serving (`npanel serve` on SIGHUP); whether they changed.
    pub fn set_rate_limits(&self, cfg: &limit::RateLimitConfig) -> bool {
        self.limits.reconfigure(cfg)
    }

    /// The token signer (tests and `npanel token` use the same keys).
    pub fn auth(&self) -> &auth::Auth {
        &self.auth
    }
}

#[derive(Clone, Copy)]
struct MakeUlid;

impl MakeRequestId for MakeUlid {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&ulid::Ulid::new().to_string())
            .ok()
            .map(RequestId::new)
    }
}

async fn timeout(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let mut d = Duration::from_secs(st.cfg.request_timeout_secs);
    if req.uri().path().ends_with("/wait") {
        // A long poll bounds itself (at most jobs::MAX_WAIT_SECS).
        d = d.max(Duration::from_secs(jobs::MAX_WAIT_SECS + 5));
    }
    if req.uri().path() == "/api/audit/verify" {
        // A first (or full) verification walks the whole log: about a minute per year.
        d = d.max(Duration::from_secs(audit::VERIFY_TIMEOUT_SECS));
    }
    match tokio::time::timeout(d, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// The routes: JWT ones, WHMCS ones, operations; and their OpenAPI document, from the same
/// registrations.
type Routes = (
    Router<AppState>,
    Router<AppState>,
    Router<AppState>,
    utoipa::openapi::OpenApi,
);

fn routes() -> Routes {
    let (api, mut doc) = OpenApiRouter::<AppState>::new()
        .routes(routes!(jobs::enqueue, jobs::list))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::wait))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::retry))
        .routes(routes!(live::job_live))
        .routes(routes!(live::events_live))
        .routes(routes!(restore::start))
        .routes(routes!(restore::progress))
        .routes(routes!(live::restore_live))
        .routes(routes!(restore::run_health, restore::get_health))
        .routes(routes!(admin::queue_view))
        .routes(routes!(admin::set_concurrency))
        .routes(routes!(admin::pause))
        .routes(routes!(admin::resume))
        .routes(routes!(upgrade::running, upgrade::start))
        .routes(routes!(upgrade::preflight))
        .routes(routes!(accounts::list, accounts::create))
        .routes(routes!(accounts::get_account))
        .routes(routes!(usage::account_usage))
        .routes(routes!(usage::set_override, usage::remove_override))
        .routes(routes!(usage::notifications))
        .routes(routes!(accounts::suspend))
        .routes(routes!(accounts::unsuspend))
        .routes(routes!(accounts::terminate))
        .routes(routes!(accounts::change_package))
        .routes(routes!(accounts::password))
        .routes(routes!(domains::list, domains::add))
        .routes(routes!(domains::remove))
        .routes(routes!(databases::list, databases::create))
        .routes(routes!(security::get_policy, security::set_policy))
        .routes(routes!(email_policy::get_policy, email_policy::put_policy))
        .routes(routes!(accounts::feature))
        .routes(routes!(accounts::set_allowance))
        .routes(routes!(accounts::reseller_summary))
        .routes(routes!(packages::list, packages::create))
        .routes(routes!(
            packages::get_package,
            packages::update,
            packages::delete
        ))
        .routes(routes!(packages::activate))
        .routes(routes!(packages::deprecate))
        .routes(routes!(audit::search))
        .routes(routes!(audit::export))
        .routes(routes!(audit::verify))
        .routes(routes!(audit::get_record))
        .routes(routes!(login::exchange))
        .split_for_parts();
    let (ops, ops_doc) = OpenApiRouter::<AppState>::new()
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(login::page))
        .routes(routes!(login::script))
        .routes(routes!(dashboard::page))
        .routes(routes!(dashboard::script))
        .routes(routes!(dashboard::style))
        .split_for_parts();
    let (whmcs, whmcs_doc) = OpenApiRouter::<AppState>::new()
        .routes(routes!(whmcs::create_account))
        .routes(routes!(whmcs::suspend_account))
        .routes(routes!(whmcs::unsuspend_account))
        .routes(routes!(whmcs::upgrade_package))
        .routes(routes!(whmcs::terminate_account))
        .routes(routes!(whmcs::change_password))
        .routes(routes!(whmcs::account_status))
        .routes(routes!(whmcs::account_usage))
        .routes(routes!(whmcs::usage))
        .routes(routes!(whmcs::accounts))
        .routes(routes!(whmcs::single_sign_on))
        .split_for_parts();
    doc.merge(ops_doc);
    doc.merge(whmcs_doc);
    doc.info.title = "nPanel jobs API".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.contact = None;
    doc.info.license = Some(utoipa::openapi::License::new("MIT"));
    doc.info.description = Some(
        "Bearer JWT on every /api route (roles admin, reseller, customer) but /api/whmcs, which \
         takes requests signed with a WHMCS key (Bearer key id, X-WHMCS-Timestamp, \
         X-WHMCS-Signature), and POST /api/auth/login, which takes a one-time login code \
         instead; errors are {\"error\": code, \"message\"} (WHMCS: {\"status\": \
         \"error\", \"error\", \"message\"})."
            .into(),
    );
    document_common_errors(&mut doc);
    openapi::document_links(&mut doc);
    openapi::document_rules(&mut doc);
    (api, whmcs, ops, doc)
}

/// The error answers every route can give whatever its handler does, added to each operation
/// that does not list them already: the body and query extractors' 400 (malformed JSON, a body
/// without `Content-Type: application/json`, a bad query string), 413 (`api.body_limit_bytes`)
/// and 422 for routes that take a body; 401 and 429 (rate limits) for every `/api` route; 503
/// (Redis or the store unreachable) for every route but the operations ones. The document then
/// lists every status a client can meet, as a schema-driven tester checks.
fn document_common_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, ResponseBuilder};
    let error = |what: &str, whmcs: bool| {
        let schema = if whmcs { "WhmcsErrorBody" } else { "ErrorBody" };
        RefOr::T(
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name(schema)))
                        .build(),
                )
                .build(),
        )
    };
    let has_whmcs_schema = doc
        .components
        .as_ref()
        .is_some_and(|c| c.schemas.contains_key("WhmcsErrorBody"));
    for (path, item) in doc.paths.paths.iter_mut() {
        let api = path.starts_with("/api/") && path != "/api/openapi.json";
        let whmcs = path.starts_with("/api/whmcs/") && has_whmcs_schema;
        for op in [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            let mut add = |code: &str, what: &str| {
                op.responses
                    .responses
                    .entry(code.to_string())
                    .or_insert_with(|| error(what, whmcs));
            };
            let body = op.request_body.is_some();
            let query = op.parameters.as_ref().is_some_and(|p| {
                p.iter().any(|p| {
                    matches!(p, RefOr::T(p) if p.parameter_in == utoipa::openapi::path::ParameterIn::Query)
                })
            });
            if body || query {
                add("400", "invalid_request: malformed JSON or query, or a body that is not application/json");
            }
            if body {
                add(
                    "413",
                    "payload_too_large: the body is over api.body_limit_bytes",
                );
                add("422", "invalid_request: the body does not match the schema");
            }
            if api {
                add(
                    "401",
                    "unauthorized: missing, invalid or expired credentials",
                );
                add("429", "rate_limited, with Retry-After");
                add("503", "unavailable (Redis or the store), with Retry-After");
            }
        }
    }
}

/// The OpenAPI document (as served at `/api/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().3
}

/// The whole app.
pub fn router(state: AppState) -> Router {
    let (api, whmcs, ops, doc) = routes();
    let _ = state
        .openapi
        .set(serde_json::to_string(&doc).expect("openapi serialises"));
    let api = api.layer(
        ServiceBuilder::new()
            .layer(from_fn_with_state(state.clone(), auth::authenticate))
            .layer(from_fn_with_state(state.clone(), limit::rate_limit)),
    );
    // Signed requests, not JWTs: neither the JWT middleware nor its per-IP limiter.
    let whmcs = whmcs.layer(from_fn_with_state(state.clone(), whmcs::authenticate));
    let body_limit = state.cfg.body_limit_bytes;
    Router::new()
        .merge(api)
        .merge(whmcs)
        .merge(ops)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeUlid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(make_span)
                        // Expected refusals (501, 503 queue_full) are not errors an operator
                        // must act on; real internal errors are logged by `ApiError`.
                        .on_failure(
                            tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                        ),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(from_fn(metrics::track))
                .layer(from_fn_with_state(state.clone(), timeout))
                .layer(axum::Extension(extract::BodyLimit(body_limit)))
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .with_state(state)
}

fn make_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let rid = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str())
        .unwrap_or("");
    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), route, request_id = rid,
        role = tracing::field::Empty)
}

/// How long connections accepted just before shutdown keep being served after accepting
/// stops. hyper's graceful shutdown closes a connection whose first request it has not read
/// yet, which would drop a request that was already accepted; in this window it is read and
/// answered (then graceful shutdown finishes whatever is still in flight).
const ACCEPTED_GRACE: Duration = Duration::from_secs(1);

/// A listener that stops accepting, and closes its descriptor, when `stop` fires: with a socket
/// that outlives the process (systemd socket activation), new connections then wait in the
/// socket's backlog for the next process instead of being accepted by this one.
struct StopAccepting {
    inner: Option<tokio::net::TcpListener>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl axum::serve::Listener for StopAccepting {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some(l) = self.inner.as_mut() else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = self.stop.cancelled() => self.inner = None,
                c = axum::serve::Listener::accept(l) => return c,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// Serve `state` on `listener` until `shutdown` fires (open WebSockets are closed by the hub
/// on the same token): accepting stops at once, requests in flight and on connections already
/// accepted are answered ([`ACCEPTED_GRACE`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let listener = StopAccepting {
        addr: listener.local_addr()?,
        inner: Some(listener),
        stop: shutdown.clone(),
    }
    // `tap_io` only to reuse axum's `ConnectInfo<SocketAddr>` for any listener.
    .tap_io(|_| {});
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(ACCEPTED_GRACE).await;
        })
        .await
}
