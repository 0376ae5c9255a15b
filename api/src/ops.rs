//! Operations routes: `/healthz` (the process answers), `/readyz` (Redis and the store
//! answer), `/metrics` (Prometheus text; queue gauges sampled at each scrape),
//! `/api/openapi.json` (generated from the handlers' annotations). No auth, no rate limit:
//! they carry no tenant data and probes must not be throttled.

use crate::error::{ApiError, ErrorBody};
use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

/// Liveness/readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: &'static str,
    /// Redis check (`ok`), readiness only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<&'static str>,
    /// Store check (`ok`, readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<&'static str>,
    /// WebSocket connections open in this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_connections: Option<usize>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        redis: None,
        store: None,
        ws_connections: None,
    })
}

/// Ready to serve: Redis and the store answer within 2 s each.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody, description = "unavailable")))]
pub async fn readyz(State(st): State<AppState>) -> Result<Json<Health>, ApiError> {
    match tokio::time::timeout(Duration::from_secs(2), st.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(ApiError::Unavailable(
                "the store did not answer within 2s".into(),
            ))
        }
    }
    match tokio::time::timeout(Duration::from_secs(2), st.queue.ping()).await {
        Ok(Ok(())) => Ok(Json(Health {
            status: "ready",
            redis: Some("ok"),
            store: Some("ok"),
            ws_connections: Some(st.hub.connections()),
        })),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ApiError::Unavailable(
            "redis did not answer within 2s".into(),
        )),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(st): State<AppState>) -> Response {
    let store_up = matches!(
        tokio::time::timeout(Duration::from_secs(1), st.store.ping()).await,
        Ok(Ok(()))
    );
    metrics::gauge!(crate::metrics::STORE_UP).set(if store_up { 1.0 } else { 0.0 });
    if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), st.queue.stats()).await {
        use crate::metrics::*;
        metrics::gauge!(QUEUE_PENDING).set(f64::from(s.pending));
        metrics::gauge!(QUEUE_MAX_PENDING).set(f64::from(s.max_pending));
        metrics::gauge!(QUEUE_PAUSED).set(if s.paused { 1.0 } else { 0.0 });
        for (k, v) in &s.kinds {
            metrics::gauge!(QUEUE_RUNNING, "kind" => k.clone()).set(f64::from(v.running));
            metrics::gauge!(QUEUE_LIMIT, "kind" => k.clone()).set(f64::from(v.limit));
            metrics::gauge!(QUEUE_KIND_PENDING, "kind" => k.clone()).set(f64::from(v.pending));
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.prometheus.render(),
    )
        .into_response()
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "ops", responses((status = 200, body = Object)))]
pub async fn openapi(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        st.openapi.get().cloned().unwrap_or_default(),
    )
        .into_response()
}
