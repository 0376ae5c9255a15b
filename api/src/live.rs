//! The WebSocket routes: auth, tenant check and the connection limit happen here, before the
//! upgrade, so every refusal is an ordinary HTTP answer from the error table; `ws` serves the
//! upgraded socket.

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use crate::jobs::visible_job;
use crate::restore::visible_restore;
use crate::AppState;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;
use ws::{parse_seq, Scope};

/// Query of the live routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiveQuery {
    /// Replay everything after this `seq` (a previous message's), then continue live.
    pub since: Option<String>,
    /// The JWT, for clients that cannot set headers (browsers).
    pub token: Option<String>,
}

pub(crate) fn upgrade(
    st: &AppState,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    caller: Caller,
    scope: Scope,
    since: Option<String>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|e| {
        ApiError::BadRequest(format!("this is a WebSocket endpoint: {}", e.body_text()))
    })?;
    if let Some(s) = &since {
        if parse_seq(s).is_none() {
            return Err(ApiError::BadRequest(format!(
                "since {s:?} is not a seq like 1732240000000-0"
            )));
        }
    }
    let guard = st.hub.try_acquire_for(&caller.0).map_err(|r| match r {
        ws::Refused::Full(n) => ApiError::TooManyConnections(n),
        ws::Refused::Tenant(n) => ApiError::TooManyTenantConnections(n),
    })?;
    let hub = st.hub.clone();
    // tungstenite's default 128 KiB read buffer is zero-filled before every read, so it is all
    // resident and costs a memset per poll: 137 KiB and most of the server's CPU per socket at
    // 1000 watchers (loadtests/API.md). Clients send almost nothing; 4 KiB is plenty.
    let ws = ws.read_buffer_size(4 * 1024);
    Ok(ws.on_upgrade(move |socket| ws::serve_socket(socket, hub, caller.0, scope, since, guard)))
}

/// Live events of one job (WebSocket): snapshot, progress, stage, log, complete.
#[utoipa::path(get, path = "/api/jobs/{id}/live", tag = "live",
    params(("id" = String, Path, description = "Job id"), LiveQuery),
    responses((status = 101, description = "WebSocket stream (DESIGN §4)"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody, description = "too_many_connections")))]
pub async fn job_live(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LiveQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    visible_job(&st, &caller, &id).await?;
    upgrade(&st, ws, caller, Scope::Job(id), q.since)
}

/// Live events of a restore (WebSocket).
#[utoipa::path(get, path = "/api/restore/{id}/live", tag = "restore",
    params(("id" = String, Path, description = "Restore job id"), LiveQuery),
    responses((status = 101, description = "WebSocket stream (DESIGN §4)"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn restore_live(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LiveQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    visible_restore(&st, &caller, &id).await?;
    upgrade(&st, ws, caller, Scope::Job(id), q.since)
}

/// Live events of every job the caller may see (WebSocket; dashboards).
#[utoipa::path(get, path = "/api/events/live", tag = "live", params(LiveQuery),
    responses((status = 101, description = "WebSocket stream; the snapshot carries `jobs`"), (status = 401, body = ErrorBody)))]
pub async fn events_live(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<LiveQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    upgrade(&st, ws, caller, Scope::All, q.since)
}
