//! Admin routes: the queue at a glance, runtime concurrency limits (audited), pause/resume.

use crate::audit::Ctx;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::AppState;
use axum::extract::{Path, State};
use axum::Json;
use queue::{JobKind, QueueStats};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

/// The queue view.
#[utoipa::path(get, path = "/api/admin/queue", tag = "admin",
    responses((status = 200, body = Object, description = "{pending, max_pending, paused, kinds: {<kind>: {limit, running, pending}}}"),
        (status = 403, body = ErrorBody)))]
pub async fn queue_view(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<QueueStats>, ApiError> {
    caller.require_admin()?;
    Ok(Json(st.queue.stats().await?))
}

/// `PUT /api/admin/concurrency/{kind}` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitBody {
    /// Jobs of this kind that may run at once across every worker (0 stops claiming it; at
    /// most 10000).
    #[schema(maximum = 10000)]
    pub limit: u32,
}

/// Answer of a limit change.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitSet {
    /// Kind.
    pub kind: String,
    /// New limit (in force within a second, running jobs untouched).
    pub limit: u32,
}

/// Set a kind's concurrency limit at runtime.
#[utoipa::path(put, path = "/api/admin/concurrency/{kind}", tag = "admin",
    params(("kind" = inline(crate::openapi::KindName), Path, description = "Job type")), request_body = LimitBody,
    responses((status = 200, body = LimitSet), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_concurrency(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(kind): Path<String>,
    ApiJson(body): ApiJson<LimitBody>,
) -> Result<Json<LimitSet>, ApiError> {
    let mut before = None;
    let res = async {
        ctx.caller.require_admin()?;
        let k: JobKind = kind
            .parse()
            .map_err(|e: queue::UnknownKind| ApiError::Unprocessable(e.to_string()))?;
        before = st
            .queue
            .stats()
            .await
            .ok()
            .and_then(|s| s.kinds.get(k.as_str()).map(|x| x.limit));
        st.queue.set_limit(k, body.limit).await?;
        tracing::info!(target: "audit", actor = %ctx.caller.0.subject, kind = %k, ?before, after = body.limit,
            "Concurrency limit changed.");
        Ok(LimitSet {
            kind: k.to_string(),
            limit: body.limit,
        })
    }
    .await;
    ctx.audit(
        &st,
        "concurrency_changed",
        json!({"type": "queue", "id": kind, "name": kind}),
        None,
        None,
        json!({"before": {"limit": before}, "after": {"limit": body.limit}}),
        None,
        res.as_ref().err(),
    )
    .await;
    Ok(Json(res?))
}

/// Answer of pause/resume.
#[derive(Debug, Serialize, ToSchema)]
pub struct PauseState {
    /// Claiming is stopped.
    pub paused: bool,
}

/// Stop claiming everywhere (running jobs go on).
#[utoipa::path(post, path = "/api/admin/queue/pause", tag = "admin",
    responses((status = 200, body = PauseState), (status = 403, body = ErrorBody)))]
pub async fn pause(State(st): State<AppState>, ctx: Ctx) -> Result<Json<PauseState>, ApiError> {
    let res = async {
        ctx.caller.require_admin()?;
        st.queue.pause().await?;
        Ok(PauseState { paused: true })
    }
    .await;
    ctx.audit(
        &st,
        "queue_paused",
        json!({"type": "queue", "id": "queue", "name": "queue"}),
        None,
        None,
        json!({"before": {"paused": false}, "after": {"paused": true}}),
        None,
        res.as_ref().err(),
    )
    .await;
    Ok(Json(res?))
}

/// Resume claiming.
#[utoipa::path(post, path = "/api/admin/queue/resume", tag = "admin",
    responses((status = 200, body = PauseState), (status = 403, body = ErrorBody)))]
pub async fn resume(State(st): State<AppState>, ctx: Ctx) -> Result<Json<PauseState>, ApiError> {
    let res = async {
        ctx.caller.require_admin()?;
        st.queue.resume().await?;
        Ok(PauseState { paused: false })
    }
    .await;
    ctx.audit(
        &st,
        "queue_resumed",
        json!({"type": "queue", "id": "queue", "name": "queue"}),
        None,
        None,
        json!({"before": {"paused": true}, "after": {"paused": false}}),
        None,
        res.as_ref().err(),
    )
    .await;
    Ok(Json(res?))
}
