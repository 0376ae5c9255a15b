//! `/api/jobs`: enqueue (admins), list, read, wait for, cancel, retry, all under the tenant
//! rules.

use crate::audit::Ctx;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, PageRequest};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use queue::{CancelOutcome, Job, JobKind, JobStatus, ListFilter, NewJob};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

/// `POST /api/jobs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// Job type.
    #[schema(schema_with = crate::openapi::job_kind)]
    pub kind: String,
    /// The kind's payload (checked against its type).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
    /// The account the job concerns.
    #[schema(min_length = 1, max_length = 64)]
    pub account: Option<String>,
    /// That account's reseller.
    pub reseller: Option<String>,
    /// Same key within its TTL returns the existing job.
    pub idempotency_key: Option<String>,
    /// Overrides the kind's default attempts (1-100).
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
}

/// Links of an accepted job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Links {
    /// `GET` the job.
    #[serde(rename = "self")]
    pub self_: String,
    /// Its WebSocket stream.
    pub live: String,
    /// Restore progress (restores only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
}

/// `202` answer of an enqueue.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Job id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Status now.
    pub status: String,
    /// Account.
    pub account: Option<String>,
    /// True when an idempotency key matched an existing job.
    pub existed: bool,
    /// Links.
    pub links: Links,
}

/// Enqueue `job` and answer 202 with links.
///
/// Idempotency keys are scoped to the caller's tenant and the job kind, so one tenant's key can
/// never match (and so reveal or suppress) another tenant's job.
pub(crate) async fn accept(
    st: &AppState,
    caller: &Caller,
    job: NewJob,
    live_base: &str,
) -> Result<Response, ApiError> {
    let body = accept_inner(st, caller, job, live_base).await?;
    let self_ = body.links.self_.clone();
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, self_)],
        Json(body),
    )
        .into_response())
}

/// [`accept`], answering the accepted job as JSON (for routes that embed it).
pub(crate) async fn accept_json(
    st: &AppState,
    caller: &Caller,
    job: NewJob,
    live_base: &str,
) -> Result<Value, ApiError> {
    let body = accept_inner(st, caller, job, live_base).await?;
    serde_json::to_value(body).map_err(|e| ApiError::Internal(e.to_string()))
}

async fn accept_inner(
    st: &AppState,
    caller: &Caller,
    mut job: NewJob,
    live_base: &str,
) -> Result<Accepted, ApiError> {
    let kind = job.kind;
    if let Some(key) = job.idempotency_key.take() {
        let tenant = caller.0.tenant().unwrap_or_else(|| "admin".into());
        job.idempotency_key = Some(format!("api|{tenant}|{kind}|{key}"));
    }
    let mut account = job.account.clone();
    let e = st.queue.enqueue(job).await?;
    let status = if e.existed {
        match st.queue.get(&e.id).await {
            Ok(j) if caller.0.can_see_job(&j) => {
                account = j.account.clone();
                j.status.to_string()
            }
            // The same tenant's key can only name the same tenant's job; anything else is
            // answered as a conflict without details.
            Ok(_) => {
                return Err(ApiError::Conflict(
                    "this idempotency key is already in use".into(),
                ))
            }
            Err(_) => "queued".into(),
        }
    } else {
        JobStatus::Queued.to_string()
    };
    let self_ = format!("/api/jobs/{}", e.id);
    let body = Accepted {
        kind: kind.to_string(),
        status,
        account,
        existed: e.existed,
        links: Links {
            self_: self_.clone(),
            live: format!("{live_base}/{}/live", e.id),
            progress: (kind == JobKind::Restore).then(|| format!("/api/restore/{}/progress", e.id)),
        },
        id: e.id,
    };
    Ok(body)
}

/// Enqueue any job type (admins).
#[utoipa::path(post, path = "/api/jobs", tag = "jobs", request_body = EnqueueRequest,
    responses((status = 202, body = Accepted), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 501, body = ErrorBody), (status = 503, body = ErrorBody, description = "queue_full, with Retry-After")))]
pub async fn enqueue(
    State(st): State<AppState>,
    ctx: Ctx,
    ApiJson(req): ApiJson<EnqueueRequest>,
) -> Result<Response, ApiError> {
    let (account, reseller, kind) = (req.account.clone(), req.reseller.clone(), req.kind.clone());
    let res = enqueue_inner(&st, &ctx.caller, req).await;
    let action = format!(
        "{}_started",
        kind.chars()
            .filter(|c| c.is_ascii_lowercase() || *c == '_')
            .take(32)
            .collect::<String>()
    );
    let id = job_id_of(&res);
    audit_started(
        &st,
        &ctx,
        &action,
        &kind,
        account,
        reseller,
        id,
        res.as_ref().err(),
    )
    .await;
    res
}

/// The job id of an accepted job's answer (from its `Location`).
pub(crate) fn job_id_of(res: &Result<Response, ApiError>) -> Option<String> {
    res.as_ref()
        .ok()
        .and_then(|r| r.headers().get(header::LOCATION))
        .and_then(|l| l.to_str().ok())
        .and_then(|l| l.rsplit('/').next())
        .map(String::from)
}

/// The audit record of a route that started a job (`<kind>_started`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn audit_started(
    st: &AppState,
    ctx: &Ctx,
    action: &str,
    kind: &str,
    account: Option<String>,
    reseller: Option<String>,
    job_id: Option<String>,
    error: Option<&ApiError>,
) {
    ctx.audit(
        st,
        action,
        json!({"type": "job", "id": job_id, "name": kind}),
        account.as_deref(),
        reseller.as_deref(),
        Value::Null,
        job_id.as_deref(),
        error,
    )
    .await;
}

async fn enqueue_inner(
    st: &AppState,
    caller: &Caller,
    req: EnqueueRequest,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let kind: JobKind = req
        .kind
        .parse()
        .map_err(|e: queue::UnknownKind| ApiError::Unprocessable(e.to_string()))?;
    // A provisioning job's account comes from its payload, so per-account order (a suspend
    // never overtakes the create it follows) holds however the job was enqueued.
    let mut account = req.account;
    if kind == JobKind::Provision {
        if let Some(a) = req.payload["account"].as_str().filter(|a| !a.is_empty()) {
            if account.as_deref().is_some_and(|x| x != a) {
                return Err(ApiError::Unprocessable(format!(
                    "account {:?} differs from the payload's account {a:?}",
                    account.unwrap_or_default()
                )));
            }
            account = Some(a.to_string());
        }
    }
    let reseller = match (&account, req.reseller) {
        (Some(a), None) => match st.store.account(a).await {
            Ok(acc) => acc.reseller,
            Err(store::StoreError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        },
        (_, r) => r,
    };
    let mut job = NewJob::new(kind, req.payload);
    job.account = account;
    job.reseller = reseller;
    job.idempotency_key = req.idempotency_key;
    job.max_attempts = req.max_attempts;
    tracing::info!(target: "audit", actor = %caller.0.subject, %kind, "Job enqueued by an admin.");
    accept(st, caller, job, "/api/jobs").await
}

/// `GET /api/jobs` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this status.
    #[param(schema_with = crate::openapi::job_status)]
    pub status: Option<String>,
    /// Only this kind.
    #[param(schema_with = crate::openapi::job_kind)]
    pub kind: Option<String>,
    /// Only this account.
    pub account: Option<String>,
    /// Only this reseller.
    pub reseller: Option<String>,
    /// At most this many (default 100, max 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// `GET /api/jobs` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Newest first: live work from Redis and history from the store.
    #[schema(value_type = Vec<Object>)]
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; null at the end.
    pub next_cursor: Option<String>,
}

/// List the jobs the caller may see.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    Caller(viewer): Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let status = q
        .status
        .map(|s| {
            JobStatus::parse(&s).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "unknown status {s:?}; statuses are queued, running, retrying, succeeded, failed, cancelled"
                ))
            })
        })
        .transpose()?;
    let kind = q
        .kind
        .map(|k| {
            k.parse::<JobKind>()
                .map_err(|e| ApiError::BadRequest(e.to_string()))
        })
        .transpose()?;
    let page = PageRequest::parse(
        q.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
        q.cursor.as_deref(),
        "jobs",
    )?;
    let limit = page.limit as usize;
    let before = page.after.clone();
    let f = ListFilter {
        status,
        kind,
        account: q.account,
        reseller: q.reseller,
        limit: Some(limit),
        finished_after: None,
    };
    let (mut jobs, more) =
        crate::history::list_jobs(&st.queue, &st.store, &viewer, f, before.as_deref(), limit)
            .await?;
    for j in &mut jobs {
        j.log_tail.clear();
    }
    let next_cursor = more
        .then(|| jobs.last().map(|j| store::Cursor::encode("jobs", &j.id)))
        .flatten(); // "more" comes from the merge, not from a full page
    Ok(Json(JobList { jobs, next_cursor }))
}

/// A job the caller may see, or 404 (also for another tenant's job).
pub(crate) async fn visible_job(st: &AppState, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    if id.is_empty() || id.len() > 64 {
        return Err(ApiError::job_not_found(id));
    }
    let job = crate::history::find_job(st, id).await?;
    if caller.0.can_see_job(&job) {
        Ok(job)
    } else {
        Err(ApiError::job_not_found(id))
    }
}

/// One job: status, stage, percent, bytes, speed, ETA, attempts, timestamps, error, result, log tail.
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Object, description = "The job (DESIGN §3 shape)"), (status = 404, body = ErrorBody)))]
pub async fn get_job(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(visible_job(&st, &caller, &id).await?))
}

/// Longest `GET /api/jobs/{id}/wait` may wait, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;

/// `GET /api/jobs/{id}/wait` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Seconds to wait for the job to end (0-60, default 25).
    #[param(minimum = 0, maximum = 60)]
    pub timeout: Option<u64>,
}

/// Long-poll: wait until the job ends or `timeout` passes, then answer the job either way
/// (look at its `status`). The wait holds one of the server's dedicated wait connections; when
/// none is free it answers at once with the job as it is.
#[utoipa::path(get, path = "/api/jobs/{id}/wait", tag = "jobs", params(("id" = String, Path, description = "Job id"), WaitQuery),
    responses((status = 200, body = Object, description = "The job (DESIGN §3 shape), finished or not"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn wait(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<Json<Job>, ApiError> {
    let secs = q.timeout.unwrap_or(25);
    if secs > MAX_WAIT_SECS {
        return Err(ApiError::BadRequest(format!(
            "timeout must be 0 to {MAX_WAIT_SECS} seconds"
        )));
    }
    let job = visible_job(&st, &caller, &id).await?;
    if job.status.is_final() {
        return Ok(Json(job));
    }
    match st
        .waiter
        .wait(&id, std::time::Duration::from_secs(secs))
        .await
    {
        Ok(outcome) => Ok(Json(outcome.job().clone())),
        // Archived and dropped from Redis meanwhile: the history has it.
        Err(queue::QueueError::NotFound(_)) => Ok(Json(visible_job(&st, &caller, &id).await?)),
        Err(e) => Err(e.into()),
    }
}

/// Answer of cancel and retry.
#[derive(Debug, Serialize, ToSchema)]
pub struct Transition {
    /// Job id.
    pub id: String,
    /// `cancelled`, `cancelling` (its worker is stopping it) or `queued`.
    pub status: String,
}

/// Cancel a queued, retrying or running job.
#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 202, body = Transition), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Transition>), ApiError> {
    let job = visible_job(&st, &ctx.caller, &id).await?;
    let res = async {
        if job.status.is_final() {
            return Err(ApiError::Conflict(format!(
                "job {id} already ended ({}); nothing to cancel",
                job.status
            )));
        }
        Ok(match st.queue.cancel(&id).await? {
            CancelOutcome::Cancelled => "cancelled",
            CancelOutcome::Cancelling => "cancelling",
        })
    }
    .await;
    transition_audit(&st, &ctx, &job, "job_cancel_requested", res.as_ref().err()).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(Transition {
            id,
            status: res?.into(),
        }),
    ))
}

async fn transition_audit(
    st: &AppState,
    ctx: &Ctx,
    job: &Job,
    action: &str,
    error: Option<&ApiError>,
) {
    ctx.audit(
        st,
        action,
        json!({"type": "job", "id": job.id, "name": job.kind.as_str()}),
        job.account.as_deref(),
        job.reseller.as_deref(),
        json!({"before": {"status": job.status}, "after": null}),
        Some(&job.id),
        error,
    )
    .await;
}

/// Run a failed or cancelled job again.
#[utoipa::path(post, path = "/api/jobs/{id}/retry", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 202, body = Transition), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 501, body = ErrorBody, description = "not_available: the job's type has no handler in this build"),
        (status = 503, body = ErrorBody, description = "queue_full, with Retry-After")))]
pub async fn retry(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Transition>), ApiError> {
    let job = visible_job(&st, &ctx.caller, &id).await?;
    let res = async {
        if !st.queue.is_available(job.kind) {
            return Err(queue::QueueError::KindNotAvailable(job.kind).into());
        }
        match st.queue.rerun(&id).await {
            Err(queue::QueueError::NotFound(_)) => Err(ApiError::Conflict(format!(
                "job {id} is past the queue's retention and only in the history; enqueue a new job instead"
            ))),
            r => Ok(r?),
        }
    }
    .await;
    transition_audit(&st, &ctx, &job, "job_retry_requested", res.as_ref().err()).await;
    res?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Transition {
            id,
            status: "queued".into(),
        }),
    ))
}
