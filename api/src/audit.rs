//! The audit log's write path and routes (DESIGN §10).
//!
//! # Write path: an outbox, off the request path
//! A route builds its record from [`Ctx`] (who, from where, which request, how long) and hands
//! it to [`Auditor::write`], which appends it to a Redis stream (`outbox:audit`, persisted with
//! Redis's append-only file) — one round trip, no SQL on the request path. [`Auditor::run`]
//! drains the outbox into the store in order (the store assigns `seq` and chains the hash),
//! then deletes what it delivered. A crash between the store's commit and the delete
//! re-delivers those entries; their ids are already stored, so they are skipped: nothing lost,
//! nothing doubled. If Redis refuses the append, the record goes to the store directly from a
//! background task, so a Redis outage loses no record either; an audit failure never fails
//! the action it describes.
//!
//! # Routes
//! `GET /api/audit` (filters, keyset cursor), `GET /api/audit/{id}` (with related records),
//! `GET /api/audit/export?format=csv|json` (streamed, ≤ 100 MB), `GET /api/audit/verify`
//! (admins). Admins see every record, resellers their own and their customers', customers
//! their account's.

use crate::auth::{Authn, Caller, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use crate::AppState;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use queue::Queue;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Actor, AuditFilter, AuditRecord, Cursor, NewAudit, Store, Verification};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

/// Outbox stream name.
pub const OUTBOX: &str = "audit";
/// Largest export.
pub const EXPORT_LIMIT_BYTES: usize = 100 * 1024 * 1024;

/// Writes audit records through the outbox and drains it into the store.
#[derive(Debug)]
pub struct Auditor {
    queue: Queue,
    store: Store,
    wake: Notify,
}

impl Auditor {
    /// An auditor over `queue`'s Redis and `store`.
    pub fn new(queue: Queue, store: Store) -> Arc<Auditor> {
        Arc::new(Auditor {
            queue,
            store,
            wake: Notify::new(),
        })
    }

    /// Record `rec`. Never fails the caller: see the module docs for where it goes when Redis
    /// refuses it.
    pub async fn write(&self, rec: NewAudit) {
        let text = match serde_json::to_string(&rec) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "Audit record does not serialise; dropped.");
                return;
            }
        };
        match self.queue.outbox_push(OUTBOX, &text).await {
            Ok(_) => self.wake.notify_one(),
            Err(e) => {
                metrics::counter!(crate::metrics::AUDIT_OUTBOX_FALLBACK_TOTAL).increment(1);
                tracing::warn!(error = %e, action = %rec.action, "Audit outbox unavailable; writing the record to the store directly.");
                let store = self.store.clone();
                tokio::spawn(async move {
                    for attempt in 0..30u64 {
                        match store.append_audit(std::slice::from_ref(&rec)).await {
                            Ok(_) => return,
                            Err(e) => {
                                tracing::warn!(error = %e, attempt, "Audit record not stored yet; retrying.");
                                tokio::time::sleep(Duration::from_secs(1 + attempt)).await;
                            }
                        }
                    }
                    tracing::error!(record = %serde_json::to_string(&rec).unwrap_or_default(),
                        "Audit record could not be stored; it is in this log line.");
                });
            }
        }
    }

    /// Move up to 500 outbox entries into the store. Returns how many entries were handled.
    pub async fn drain_once(&self) -> Result<usize, ApiError> {
        let entries = self.queue.outbox_read(OUTBOX, 500).await?;
        if entries.is_empty() {
            return Ok(0);
        }
        let mut recs = Vec::with_capacity(entries.len());
        for (id, text) in &entries {
            match serde_json::from_str::<NewAudit>(text) {
                Ok(r) => recs.push(r),
                Err(e) => {
                    tracing::error!(entry = %id, error = %e, %text, "Unreadable audit outbox entry; kept in this log line and removed.")
                }
            }
        }
        let written = self.store.append_audit(&recs).await?;
        metrics::counter!(crate::metrics::AUDIT_RECORDS_TOTAL).increment(written as u64);
        let ids: Vec<String> = entries.into_iter().map(|e| e.0).collect();
        self.queue.outbox_ack(OUTBOX, &ids).await?;
        Ok(ids.len())
    }

    /// Drain until `stop`: at once after a local write, else every 5 s (other processes'
    /// writes; each process drains its own writes at once), backing off while Redis or the
    /// store is down.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            match self.drain_once().await {
                Ok(500) => continue,
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(60) {
                        tracing::warn!(error = %e, "Audit outbox not drained; retrying.");
                    }
                }
            }
            let pause = Duration::from_secs(if failures == 0 {
                5
            } else {
                u64::from(failures.min(10))
            });
            tokio::select! {
                _ = stop.cancelled() => {
                    // Last pass so a clean shutdown leaves nothing behind.
                    let _ = self.drain_once().await;
                    return;
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Who is asking, from where, for the audit record of a mutating request.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The caller.
    pub caller: Caller,
    ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    method: String,
    endpoint: String,
    started: Instant,
}

/// What an audit record says about the client of a request: its address, user agent and
/// request id (headers cut to 256 characters).
pub(crate) struct Client {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl Client {
    pub(crate) fn of(parts: &Parts) -> Client {
        let h: &HeaderMap = &parts.headers;
        let text = |k: &str| {
            h.get(k)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(256).collect::<String>())
        };
        Client {
            ip: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
            user_agent: text("user-agent"),
            request_id: text("x-request-id"),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let caller = match parts.extensions.get::<Authn>() {
            Some(Authn::Ok(v)) => Caller(v.clone()),
            Some(Authn::StoreDown) => {
                return Err(ApiError::Unavailable(
                    "the store (database) is unavailable; retry shortly".into(),
                ))
            }
            _ => return Err(ApiError::Unauthorized),
        };
        let client = Client::of(parts);
        Ok(Ctx {
            caller,
            ip: client.ip,
            user_agent: client.user_agent,
            request_id: client.request_id,
            method: parts.method.to_string(),
            endpoint: parts.uri.path().to_string(),
            started: Instant::now(),
        })
    }
}

impl Ctx {
    /// A record of `action` by this caller with `result` (`success`, `failure`, `denied`).
    pub fn record(&self, action: &str, result: &str) -> NewAudit {
        let v = &self.caller.0;
        let mut r = NewAudit::new(
            action,
            Actor {
                kind: v.role.as_str().into(),
                id: v.subject.clone(),
                ip: self.ip.clone(),
                user_agent: self.user_agent.clone(),
            },
            result,
        );
        r.request_id = self.request_id.clone();
        r.source =
            json!({"method": "API", "endpoint": format!("{} {}", self.method, self.endpoint)});
        r.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        r
    }

    /// Record the outcome of an action on `resource` (`{"type", "id"}`) for `account`: success
    /// with `changes` (`error` = None), or the error as `failure` / `denied`.
    #[allow(clippy::too_many_arguments)]
    pub async fn audit(
        &self,
        st: &AppState,
        action: &str,
        resource: Value,
        account: Option<&str>,
        reseller: Option<&str>,
        changes: Value,
        job_id: Option<&str>,
        error: Option<&ApiError>,
    ) {
        let result = match error {
            None => "success",
            Some(ApiError::Forbidden(_)) | Some(ApiError::FeatureDisabled(_)) => "denied",
            Some(ApiError::NotFound(_)) => return, // another tenant's or nothing: no record to leak
            Some(_) => "failure",
        };
        let mut r = self.record(action, result);
        r.resource = resource;
        r.account = account.map(str::to_string);
        r.reseller = reseller.map(str::to_string);
        r.changes = changes;
        r.job_id = job_id.map(str::to_string);
        if let Some(e) = error {
            r.related_logs = vec![e.to_string()];
        }
        r.impact = json!({"accounts_affected": u8::from(account.is_some()), "resources_changed": u8::from(result == "success")});
        st.auditor.write(r).await;
    }
}

/// `GET /api/audit` filters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// From (RFC 3339), inclusive.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// To (RFC 3339), exclusive.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Action prefix (`account_` matches every account action).
    pub action: Option<String>,
    /// Account.
    pub account: Option<String>,
    /// Actor id.
    pub actor: Option<String>,
    /// `success`, `failure` or `denied`.
    #[param(schema_with = audit_result)]
    pub result: Option<String>,
    /// Resource type (`account`, `package`, `job`, `queue`, ...).
    pub resource_type: Option<String>,
    /// Free text, case-insensitive, found where it starts a word of the record (`198.51.3`,
    /// `3.105`, `cust004` and `created` match; `ustomer` does not).
    pub q: Option<String>,
    /// Page size (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Export only: `csv` or `json` (default).
    #[param(schema_with = export_format)]
    pub format: Option<String>,
}

fn audit_result() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(AUDIT_RESULTS))
        .build()
}

fn export_format() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["csv", "json"]))
        .build()
}

const AUDIT_RESULTS: [&str; 3] = ["success", "failure", "denied"];

pub(crate) fn parse_time(name: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    v.as_deref()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|_| {
                    ApiError::BadRequest(format!(
                        "{name} must be an RFC 3339 time such as 2026-11-30T00:00:00Z"
                    ))
                })
        })
        .transpose()
}

/// The filter for `q`, narrowed to what `caller` may see.
fn filter(caller: &Caller, q: &AuditQuery) -> Result<AuditFilter, ApiError> {
    // A cursor is `<seq>`, or `<ts>.<seq>` for pages ordered by time (a time range).
    let position = q
        .cursor
        .as_deref()
        .map(|c| {
            Cursor::decode("audit", c).and_then(|c| {
                let bad = || store::StoreError::Invalid("bad cursor".into());
                match c.0.split_once('.') {
                    Some((ts, seq)) => Ok((
                        Some(ts.parse::<i64>().map_err(|_| bad())?),
                        seq.parse::<i64>().map_err(|_| bad())?,
                    )),
                    None => Ok((None, c.0.parse::<i64>().map_err(|_| bad())?)),
                }
            })
        })
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (before_ts, before_seq) = match position {
        Some((ts, seq)) => (ts, Some(seq)),
        None => (None, None),
    };
    if let Some(f) = q.format.as_deref().filter(|f| !["csv", "json"].contains(f)) {
        return Err(ApiError::BadRequest(format!(
            "format {f:?} is not csv or json"
        )));
    }
    if let Some(r) = &q.result {
        if !AUDIT_RESULTS.contains(&r.as_str()) {
            return Err(ApiError::BadRequest(
                "result must be success, failure or denied".into(),
            ));
        }
    }
    let mut f = AuditFilter {
        from: parse_time("from", &q.from)?,
        to: parse_time("to", &q.to)?,
        action: q.action.clone(),
        account: q.account.clone(),
        reseller: None,
        actor: q.actor.clone(),
        result: q.result.clone(),
        resource_type: q.resource_type.clone(),
        text: q.q.clone().filter(|t| !t.is_empty()),
        before_seq,
        before_ts,
        limit: crate::extract::PageRequest::parse(q.limit, None, "audit")?.limit,
    };
    let v = &caller.0;
    match v.role {
        Role::Admin => {}
        Role::Reseller => f.reseller = v.reseller.clone(),
        Role::Customer => {
            if f.account
                .as_ref()
                .is_some_and(|a| Some(a) != v.account.as_ref())
            {
                f.account = Some(String::new()); // another account: nothing
            } else {
                f.account = v.account.clone();
            }
        }
    }
    Ok(f)
}

fn visible(caller: &Caller, r: &AuditRecord) -> bool {
    caller
        .0
        .can_see(r.record.account.as_deref(), r.record.reseller.as_deref())
        || (caller.0.role == Role::Reseller
            && r.record.actor.kind == "reseller"
            && caller.0.reseller.as_deref() == Some(r.record.actor.id.as_str())
            && r.record.reseller.as_deref() == caller.0.reseller.as_deref())
}

/// Where a page ended, as its cursor says it: `<seq>`, or `<ts>.<seq>` when pages are
/// ordered by time (a time range).
fn position_of(f: &AuditFilter, r: &AuditRecord) -> String {
    if f.from.is_some() || f.to.is_some() {
        format!("{}.{}", r.record.timestamp.timestamp_millis(), r.seq)
    } else {
        r.seq.to_string()
    }
}

/// A page of audit records.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<AuditRecord>,
    /// Pass as `cursor` for the next page; null at the end.
    pub next_cursor: Option<String>,
}

/// Search the audit log.
#[utoipa::path(get, path = "/api/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn search(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let f = filter(&caller, &q)?;
    let records = st.store.search_audit(&f).await?;
    let next_cursor = (records.len() as i64 == f.limit)
        .then(|| {
            records
                .last()
                .map(|r| Cursor::encode("audit", &position_of(&f, r)))
        })
        .flatten();
    Ok(Json(AuditPage {
        records,
        next_cursor,
    }))
}

/// A record with its related ones.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditDetail {
    /// The record.
    #[schema(value_type = Object)]
    pub record: AuditRecord,
    /// Its parent, children and the other records of the same job, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub related: Vec<AuditRecord>,
}

/// One audit record with related records.
#[utoipa::path(get, path = "/api/audit/{id}", tag = "audit", params(("id" = String, Path, description = "Record id")),
    responses((status = 200, body = AuditDetail), (status = 404, body = ErrorBody)))]
pub async fn get_record(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AuditDetail>, ApiError> {
    let (record, related) = st.store.audit_record(&id).await?;
    if !visible(&caller, &record) {
        return Err(ApiError::NotFound(format!("no audit record {id:?}")));
    }
    let related = related
        .into_iter()
        .filter(|r| visible(&caller, r))
        .collect();
    Ok(Json(AuditDetail { record, related }))
}

/// `GET /api/audit/verify` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    /// Walk the whole chain instead of what came after the last verification.
    pub full: Option<bool>,
}

/// Longest a verification may run (a full walk of a year of records takes about a minute).
pub const VERIFY_TIMEOUT_SECS: u64 = 600;

/// Check the hash chain (admins): by default what came after the last verification (each
/// verification, and the daily retention job, leaves a checkpoint), `?full=true` all of it.
#[utoipa::path(get, path = "/api/audit/verify", tag = "audit", params(VerifyQuery),
    responses((status = 200, body = Object, description = "{ok, checked, first_seq, last_seq, head_hash, broken_at, reason, from_checkpoint}"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn verify(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<VerifyQuery>,
) -> Result<Json<Verification>, ApiError> {
    caller.require_admin()?;
    Ok(Json(if q.full.unwrap_or(false) {
        st.store.verify_audit().await?
    } else {
        st.store.verify_audit_incremental().await?
    }))
}

const CSV_HEADER: &[&str] = &[
    "seq",
    "id",
    "timestamp",
    "account",
    "actor_type",
    "actor_id",
    "actor_ip",
    "action",
    "resource_type",
    "resource_id",
    "result",
    "duration_ms",
    "job_id",
    "request_id",
    "changes",
    "hash",
];

fn csv_row(w: &mut csv::Writer<Vec<u8>>, r: &AuditRecord) -> csv::Result<()> {
    let rec = &r.record;
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let ts = rec
        .timestamp
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    w.write_record([
        r.seq.to_string(),
        rec.id.clone(),
        ts,
        s(&rec.account),
        rec.actor.kind.clone(),
        rec.actor.id.clone(),
        s(&rec.actor.ip),
        rec.action.clone(),
        rec.resource["type"].as_str().unwrap_or("").to_string(),
        rec.resource["id"].as_str().unwrap_or("").to_string(),
        rec.result.clone(),
        rec.duration_ms.map(|d| d.to_string()).unwrap_or_default(),
        s(&rec.job_id),
        s(&rec.request_id),
        if rec.changes.is_null() {
            String::new()
        } else {
            rec.changes.to_string()
        },
        r.hash.clone(),
    ])
}

/// Stream the matching records as CSV or JSON lines... as one JSON array, newest first.
#[utoipa::path(get, path = "/api/audit/export", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "CSV with a header row (format=csv), or a JSON array of records (format=json, the default)",
            content((String = "text/csv"), (Vec<Object> = "application/json"))),
        (status = 400, body = ErrorBody)))]
pub async fn export(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let csv_format = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "format {other:?} is not csv or json"
            )))
        }
    };
    let mut f = filter(&caller, &q)?;
    f.limit = 1000;
    // First page now, so a dead store is a clean 503 rather than a broken stream.
    let first = st.store.search_audit(&f).await?;
    let store = st.store.clone();
    struct S {
        store: Store,
        f: AuditFilter,
        page: Option<Vec<AuditRecord>>,
        sent: usize,
        started: bool,
        done: bool,
        csv: bool,
    }
    let state = S {
        store,
        f,
        page: Some(first),
        sent: 0,
        started: false,
        done: false,
        csv: csv_format,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let page = match s.page.take() {
            Some(p) => p,
            None => match s.store.search_audit(&s.f).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "Audit export stopped: the store failed mid-stream.");
                    s.done = true;
                    return Some((Err(std::io::Error::other(e.to_string())), s));
                }
            },
        };
        let mut out: Vec<u8> = Vec::new();
        if !s.started {
            s.started = true;
            if s.csv {
                let mut w = csv::Writer::from_writer(Vec::new());
                let _ = w.write_record(CSV_HEADER);
                out.extend(w.into_inner().unwrap_or_default());
            } else {
                out.push(b'[');
            }
        }
        let full = page.len() as i64 == s.f.limit;
        if let Some(last) = page.last() {
            s.f.before_seq = Some(last.seq);
            s.f.before_ts = Some(last.record.timestamp.timestamp_millis());
        }
        if s.csv {
            let mut w = csv::Writer::from_writer(Vec::new());
            for r in &page {
                let _ = csv_row(&mut w, r);
            }
            out.extend(w.into_inner().unwrap_or_default());
        } else {
            for r in &page {
                if s.sent > 0 || out.len() > 1 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(r).unwrap_or_default());
                out.push(b'\n');
            }
        }
        s.sent += out.len();
        if !full || s.sent >= EXPORT_LIMIT_BYTES {
            s.done = true;
            if !s.csv {
                out.push(b']');
            }
        }
        Some((Ok::<_, std::io::Error>(out), s))
    });
    let (ctype, ext) = if csv_format {
        ("text/csv; charset=utf-8", "csv")
    } else {
        ("application/json", "json")
    };
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"npanel-audit.{ext}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
