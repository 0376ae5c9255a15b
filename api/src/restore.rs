//! Restore and post-migration health routes. They enqueue `restore` and `health_check` jobs
//! (a build without their handlers answers 501 `not_available`). A restore queues its health
//! check with it, to run 30 s after it ([`HEALTH_AFTER_RESTORE_SECS`]); the report is read
//! from the store (kept 30 days), else from the check's job while it runs or if it failed.
//!
//! Which account a job concerns: a customer's own (a different `account` is 403); a reseller
//! names one of its own customers (checked against the store; another's is 404, like a missing
//! one); an admin names any account, and its reseller is taken from the store when the account
//! is there.

use crate::audit::Ctx;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::jobs::{accept, audit_started, job_id_of, visible_job, Accepted};
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use queue::{HealthCheck, Job, JobKind, JobStatus, ListFilter, NewJob, Restore};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/restore` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Path of the backup archive on the server (not blank; customers and resellers: the
    /// file name of one of the account's backups, no path).
    #[schema(min_length = 1, pattern = r"\S")]
    pub archive: String,
    /// Account to restore into (customers: their own, the default).
    #[schema(min_length = 1, max_length = 64)]
    pub account: Option<String>,
    /// The account's reseller (admins only).
    pub reseller: Option<String>,
    /// Same key within its TTL returns the existing job.
    pub idempotency_key: Option<String>,
    /// Admins: the package of the account, when the restore creates it (the account is not
    /// in the store); default: the archive's plan, if a package of that name is active.
    pub package: Option<String>,
}

/// Account and reseller of a job a caller starts, under the tenant rules.
async fn owner(
    st: &AppState,
    caller: &Caller,
    account: Option<String>,
    reseller: Option<String>,
) -> Result<(Option<String>, Option<String>), ApiError> {
    let v = &caller.0;
    match v.role {
        Role::Admin => match &account {
            Some(a) if reseller.is_none() => match st.store.account(a).await {
                Ok(acc) => Ok((account, acc.reseller)),
                Err(store::StoreError::NotFound(_)) => Ok((account, None)),
                Err(e) => Err(e.into()),
            },
            _ => Ok((account, reseller)),
        },
        Role::Reseller => {
            let Some(a) = account else {
                return Err(ApiError::Unprocessable(
                    "name the account (one of your customers)".into(),
                ));
            };
            if reseller.is_some() && reseller != v.reseller {
                return Err(ApiError::Forbidden(
                    "resellers act for their own customers only".into(),
                ));
            }
            let acc = crate::accounts::visible_account(st, caller, &a).await?;
            if acc.kind != store::AccountType::Customer {
                return Err(ApiError::Forbidden(
                    "resellers start jobs for their customers' accounts only".into(),
                ));
            }
            Ok((Some(a), acc.reseller))
        }
        Role::Customer => {
            if account
                .as_ref()
                .is_some_and(|a| Some(a) != v.account.as_ref())
                || reseller.is_some_and(|r| Some(&r) != v.reseller.as_ref())
            {
                return Err(ApiError::Forbidden(
                    "customers act for their own account only".into(),
                ));
            }
            Ok((v.account.clone(), v.reseller.clone()))
        }
    }
}

/// Start a restore.
#[utoipa::path(post, path = "/api/restore", tag = "restore", request_body = RestoreRequest,
    responses((status = 202, body = Accepted), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 501, body = ErrorBody, description = "not_available: no restore handler in this build"),
        (status = 503, body = ErrorBody, description = "queue_full, with Retry-After")))]
pub async fn start(
    State(st): State<AppState>,
    ctx: Ctx,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> Result<Response, ApiError> {
    let account = req.account.clone().or(ctx.caller.0.account.clone());
    let reseller = ctx.caller.0.reseller.clone();
    let res = start_inner(&st, &ctx.caller, req).await;
    let id = job_id_of(&res);
    let err = res.as_ref().err();
    audit_started(
        &st,
        &ctx,
        "restore_started",
        "restore",
        account,
        reseller,
        id,
        err,
    )
    .await;
    res
}

async fn start_inner(
    st: &AppState,
    caller: &Caller,
    req: RestoreRequest,
) -> Result<Response, ApiError> {
    if req.archive.trim().is_empty() {
        return Err(ApiError::Unprocessable("archive must not be empty".into()));
    }
    // Only admins name a path on the server; everyone else names a file of their own backups
    // (resolved by the restore handler inside the account's backup directory).
    if caller.0.role != Role::Admin
        && (req.archive.contains('/') || req.archive.starts_with('.') || req.archive.len() > 255)
    {
        return Err(ApiError::Unprocessable(
            "archive must be the file name of one of your backups (no path)".into(),
        ));
    }
    // An admin who names no account restores into the one the archive's name names (as the
    // worker would): the job is that account's, so its health check queues behind it.
    let named = match (req.account, caller.0.role) {
        (None, Role::Admin) => queue::account_from_archive_name(&req.archive),
        (named, _) => named,
    };
    let (account, reseller) = owner(st, caller, named, req.reseller).await?;
    if req.package.is_some() && caller.0.role != Role::Admin {
        return Err(ApiError::Forbidden(
            "only admins choose the package of an account a restore creates".into(),
        ));
    }
    let mut job = NewJob::typed(&Restore {
        archive: req.archive,
        account: account.clone(),
        package: req.package,
    });
    job.account = account.clone();
    job.reseller = reseller.clone();
    job.idempotency_key = req.idempotency_key;
    let mut body = crate::jobs::accept_json(st, caller, job, "/api/restore").await?;
    // The post-migration health check, queued behind the restore (jobs of one account run in
    // order) and told to wait until 30 s after it (DESIGN §12). Keyed by the restore, so a
    // repeated request does not queue a second one. A build without the handler, or a full
    // queue, costs the check, never the restore.
    if let Some(id) = body["id"].as_str().map(str::to_string) {
        let mut check = NewJob::typed(&HealthCheck {
            migration_id: id.clone(),
            wait_secs: st.cfg.health_check_after_restore_secs,
        });
        check.account = account;
        check.reseller = reseller;
        check.idempotency_key = Some(format!("health-after-restore|{id}"));
        match st.queue.enqueue(check).await {
            Ok(e) => {
                body["health_check"] = serde_json::json!({"id": e.id, "wait_secs": st.cfg.health_check_after_restore_secs})
            }
            Err(e) => {
                tracing::warn!(restore = %id, "the health check after this restore was not queued: {e}")
            }
        }
    }
    let location = body["links"]["self"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((
        axum::http::StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// How long after a restore its health check runs, by default (`api.health_check_after_restore_secs`).
pub const HEALTH_AFTER_RESTORE_SECS: u64 = 30;

/// The restore progress shape (field names are the product spec's).
#[derive(Debug, Serialize, ToSchema)]
pub struct RestoreProgress {
    /// Job id.
    pub id: String,
    /// Status.
    pub status: String,
    /// 0–100 across the restore's weighted stages.
    pub progress_percent: f64,
    /// extracting, validating, creating_accounts, restoring_data, finalizing.
    pub current_stage: Option<String>,
    /// Units of the current stage in total (bytes for byte-counting stages).
    pub bytes_total: Option<u64>,
    /// Units done.
    pub bytes_processed: Option<u64>,
    /// MB/s of the current stage.
    pub speed_mbps: Option<f64>,
    /// Seconds left (server-side estimate).
    pub eta_seconds: Option<f64>,
    /// Last log lines.
    pub log_tail: Vec<String>,
}

impl From<Job> for RestoreProgress {
    fn from(j: Job) -> Self {
        RestoreProgress {
            id: j.id,
            status: j.status.to_string(),
            progress_percent: j.progress_percent,
            current_stage: j.current_stage,
            bytes_total: j.bytes_total,
            bytes_processed: j.bytes_processed,
            speed_mbps: j.speed_mbps,
            eta_seconds: j.eta_seconds,
            log_tail: j.log_tail,
        }
    }
}

/// A restore's progress.
#[utoipa::path(get, path = "/api/restore/{id}/progress", tag = "restore",
    params(("id" = String, Path, description = "Restore job id")),
    responses((status = 200, body = RestoreProgress), (status = 404, body = ErrorBody)))]
pub async fn progress(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RestoreProgress>, ApiError> {
    Ok(Json(visible_restore(&st, &caller, &id).await?.into()))
}

/// A restore job the caller may see, or 404 (also for a job of another kind).
pub(crate) async fn visible_restore(
    st: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Job, ApiError> {
    let job = visible_job(st, caller, id).await?;
    if job.kind != JobKind::Restore {
        return Err(ApiError::NotFound(format!("restore {id} not found")));
    }
    Ok(job)
}

/// `POST /api/migration/{id}/health` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthRequest {
    /// The migrated account.
    #[schema(min_length = 1, max_length = 64)]
    pub account: Option<String>,
    /// Its reseller (admins only).
    pub reseller: Option<String>,
}

/// Run the post-migration health check of a migration.
#[utoipa::path(post, path = "/api/migration/{id}/health", tag = "migration",
    params(("id" = String, Path, description = "Migration id")), request_body(content = Option<HealthRequest>, description = "optional"),
    responses((status = 202, body = Accepted), (status = 501, body = ErrorBody, description = "not_available: no health_check handler in this build"),
        (status = 503, body = ErrorBody, description = "queue_full, with Retry-After")))]
pub async fn run_health(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let account = ctx.caller.0.account.clone();
    let reseller = ctx.caller.0.reseller.clone();
    let res = run_health_inner(&st, &ctx.caller, id, body).await;
    let id = job_id_of(&res);
    let err = res.as_ref().err();
    audit_started(
        &st,
        &ctx,
        "health_check_started",
        "health_check",
        account,
        reseller,
        id,
        err,
    )
    .await;
    res
}

async fn run_health_inner(
    st: &AppState,
    caller: &Caller,
    id: String,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    if id.is_empty() || id.len() > 128 {
        return Err(ApiError::Unprocessable(
            "migration id must be 1 to 128 characters".into(),
        ));
    }
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(st.cfg.body_limit_bytes)
        } else {
            ApiError::BadRequest(format!("cannot read the body: {}", e.body_text()))
        }
    })?;
    // No body, or JSON `null`: the defaults (the document says `HealthRequest` or null).
    let value: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?
    };
    let req: HealthRequest = if value.is_null() {
        HealthRequest::default()
    } else {
        crate::openapi::check_body_shape(
            &axum::http::Method::POST,
            "/api/migration/{id}/health",
            &value,
        )
        .and_then(|()| serde_json::from_value(value).map_err(|e| e.to_string()))
        .map_err(|e| ApiError::Unprocessable(format!("the JSON body does not match: {e}")))?
    };
    // A migration that exists is checked as its own account's, by whoever may see that
    // account (another tenant's is 404, like a missing one).
    let (account, reseller) = match st.store.migration(&id).await? {
        Some(m) => {
            let a = crate::accounts::visible_account(st, caller, &m.account).await?;
            (Some(a.id), a.reseller)
        }
        None => owner(st, caller, req.account, req.reseller).await?,
    };
    let mut job = NewJob::typed(&HealthCheck {
        migration_id: id,
        wait_secs: 0,
    });
    job.account = account;
    job.reseller = reseller;
    accept(st, caller, job, "/api/jobs").await
}

/// The latest health report of a migration.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthReport {
    /// Migration id.
    pub migration_id: String,
    /// The health-check job.
    pub job_id: String,
    /// Its status.
    pub status: String,
    /// The report (the job's result) once it succeeded.
    #[schema(value_type = Option<Object>)]
    pub report: Option<serde_json::Value>,
    /// Error of a failed check.
    pub error: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
}

/// Read the latest post-migration health report.
#[utoipa::path(get, path = "/api/migration/{id}/health", tag = "migration",
    params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, body = HealthReport), (status = 404, body = ErrorBody)))]
pub async fn get_health(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<HealthReport>, ApiError> {
    // The stored report (kept 30 days), if the caller may see its account.
    if let Some(r) = st.store.latest_health_report(&id).await? {
        if crate::accounts::visible_account(&st, &caller, &r.account)
            .await
            .is_ok()
        {
            return Ok(Json(HealthReport {
                migration_id: id,
                job_id: r.id,
                status: JobStatus::Succeeded.to_string(),
                report: Some(r.report),
                error: None,
                finished_at: Some(r.created_at.to_rfc3339()),
            }));
        }
    }
    let viewer = caller.0;
    let f = ListFilter {
        kind: Some(JobKind::HealthCheck),
        limit: Some(1000),
        ..Default::default()
    };
    let job = crate::history::list_jobs(&st.queue, &st.store, &viewer, f, None, 1000)
        .await?
        .0
        .into_iter()
        .find(|j| j.payload["migration_id"] == id.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("no health check for migration {id}")))?;
    Ok(Json(HealthReport {
        migration_id: id,
        job_id: job.id,
        status: job.status.to_string(),
        report: job.result.filter(|_| job.status == JobStatus::Succeeded),
        error: job.error,
        finished_at: job.finished_at.map(|t| t.to_rfc3339()),
    }))
}
