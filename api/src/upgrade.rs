//! Admin upgrade routes (DESIGN §14): start an `upgrade` job, run only its verify + preflight
//! and answer the report, and say which version serves (what the upgrade's validate stage and
//! its rollback read back).
//!
//! The work is the `upgrade` job's (workers/src/upgrade.rs), never the request's: the preflight
//! route enqueues a `dry_run` job and waits for it (preflight of a healthy host takes well under
//! 5 s), so the same checks run in the same place whichever way they are asked for.

use crate::audit::Ctx;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::AppState;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use queue::{JobStatus, NewJob, Upgrade};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// An upgrade job gets this many attempts: each restart it causes hands it to the restarted
/// process (see the job's docs); real failures are never retried.
pub const UPGRADE_ATTEMPTS: u32 = 5;

/// How long `GET /api/admin/upgrade/preflight` waits for its dry run.
pub const PREFLIGHT_WAIT_SECS: u64 = 25;

/// `POST /api/admin/upgrade` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// The release tarball's path on the server (`npanel-<version>.tar.gz`).
    #[schema(pattern = "^/")]
    pub tarball: String,
    /// Its minisign signature's path (default `<tarball>.minisig`).
    #[serde(default)]
    pub signature: Option<String>,
    /// Allow a downgrade or reinstalling the running version.
    #[serde(default)]
    pub force: bool,
    /// Verify and preflight only.
    #[serde(default)]
    pub dry_run: bool,
}

/// `GET /api/admin/upgrade/preflight` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PreflightQuery {
    /// The release tarball's path on the server.
    #[param(pattern = "^/")]
    pub tarball: String,
    /// Its signature's path (default `<tarball>.minisig`).
    pub signature: Option<String>,
    /// Check as if the upgrade were forced (a downgrade).
    pub force: Option<bool>,
}

/// What serves.
#[derive(Debug, Serialize, ToSchema)]
pub struct Running {
    /// The version this process runs.
    pub version: String,
    /// Its process id.
    pub pid: u32,
}

/// Refused before any job is queued: a relative path, or one that names no file on the server
/// (answered at once, so a typo never waits for a job to say it).
fn check_tarball(t: &str) -> Result<(), ApiError> {
    if !t.starts_with('/') || t.contains('\0') {
        return Err(ApiError::Unprocessable(
            "tarball must be an absolute path on the server".into(),
        ));
    }
    if !std::path::Path::new(t).is_file() {
        return Err(ApiError::Unprocessable(format!(
            "tarball {t} is not a file on the server"
        )));
    }
    Ok(())
}

/// The version that serves (admins).
#[utoipa::path(get, path = "/api/admin/upgrade", tag = "admin",
    responses((status = 200, body = Running), (status = 403, body = ErrorBody)))]
pub async fn running(caller: Caller) -> Result<Json<Running>, ApiError> {
    caller.require_admin()?;
    Ok(Json(Running {
        version: Upgrade::running_version(),
        pid: std::process::id(),
    }))
}

/// Start an upgrade (admins): 202 with the job; follow it as any job (`/api/jobs/{id}/live`).
#[utoipa::path(post, path = "/api/admin/upgrade", tag = "admin", request_body = UpgradeRequest,
    responses((status = 202, body = crate::jobs::Accepted), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 501, body = ErrorBody, description = "not_available: no upgrade handler in this build")))]
pub async fn start(
    State(st): State<AppState>,
    ctx: Ctx,
    ApiJson(body): ApiJson<UpgradeRequest>,
) -> Result<Response, ApiError> {
    let mut job_id = None;
    let res = async {
        ctx.caller.require_admin()?;
        check_tarball(&body.tarball)?;
        let mut job = NewJob::typed(&Upgrade {
            tarball: body.tarball.clone(),
            signature: body.signature.clone(),
            force: body.force,
            dry_run: body.dry_run,
        });
        job.max_attempts = Some(UPGRADE_ATTEMPTS);
        let r = crate::jobs::accept_json(&st, &ctx.caller, job, "/api/jobs").await?;
        job_id = r["id"].as_str().map(str::to_string);
        Ok(r)
    }
    .await;
    ctx.audit(
        &st,
        "upgrade_requested",
        json!({"type": "release", "id": body.tarball, "name": body.tarball}),
        None,
        None,
        json!({"after": {"tarball": body.tarball, "force": body.force, "dry_run": body.dry_run}}),
        job_id.as_deref(),
        res.as_ref().err(),
    )
    .await;
    let v = res?;
    use axum::response::IntoResponse;
    let location = v["links"]["self"].as_str().unwrap_or("").to_string();
    Ok((
        axum::http::StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, location)],
        Json(v),
    )
        .into_response())
}

/// Verify and preflight a release without changing anything (admins): the PASS/WARN/FAIL/SKIP
/// report with counts. A release that fails verification is 422 with the reason.
#[utoipa::path(get, path = "/api/admin/upgrade/preflight", tag = "admin", params(PreflightQuery),
    responses((status = 200, body = Object, description = "{from_version, to_version, ok, counts: {total, pass, warn, fail, skip}, summary, checks: [{name, status, message}], job_id}"),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "timeout: the dry run did not finish in time (another upgrade runs?)")))]
pub async fn preflight(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PreflightQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    check_tarball(&q.tarball)?;
    let mut job = NewJob::typed(&Upgrade {
        tarball: q.tarball.clone(),
        signature: q.signature.clone(),
        force: q.force.unwrap_or(false),
        dry_run: true,
    });
    job.max_attempts = Some(1);
    let e = st.queue.enqueue(job).await?;
    let out = st
        .waiter
        .wait(&e.id, Duration::from_secs(PREFLIGHT_WAIT_SECS))
        .await?;
    let job = out.job();
    match job.status {
        JobStatus::Succeeded => {
            let mut report = job
                .result
                .as_ref()
                .map(|r| r["preflight"].clone())
                .unwrap_or(Value::Null);
            if let Some(o) = report.as_object_mut() {
                o.insert("job_id".into(), json!(e.id));
            }
            Ok(Json(report))
        }
        JobStatus::Failed | JobStatus::Cancelled => Err(ApiError::Unprocessable(
            job.error
                .clone()
                .unwrap_or_else(|| "the release was refused".into()),
        )),
        _ => Err(ApiError::Unavailable(format!(
            "the preflight job {} did not finish within {PREFLIGHT_WAIT_SECS} s (another upgrade may be running); follow it at /api/jobs/{}",
            e.id, e.id
        ))),
    }
}
