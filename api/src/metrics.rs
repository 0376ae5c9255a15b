//! Metric names of the API (a contract with `dashboards/`), the Prometheus recorder, and the
//! per-request metrics middleware. Labels: method, route template, status; never ids.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

/// HTTP requests by `method`, `route` (template) and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "npanel_http_requests_total";
/// HTTP request latency by `method` and `route` (histogram).
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "npanel_http_request_duration_seconds";
/// Requests refused by a rate limit, by `scope` (`ip`, `account`).
pub const RATE_LIMITED_TOTAL: &str = "npanel_rate_limited_total";
/// Jobs pending (queued + retrying), sampled at each scrape.
pub const QUEUE_PENDING: &str = "npanel_queue_pending";
/// The pending bound.
pub const QUEUE_MAX_PENDING: &str = "npanel_queue_max_pending";
/// 1 while claiming is paused.
pub const QUEUE_PAUSED: &str = "npanel_queue_paused";
/// Running jobs by `kind`, across all workers.
pub const QUEUE_RUNNING: &str = "npanel_queue_running";
/// Concurrency limit by `kind`.
pub const QUEUE_LIMIT: &str = "npanel_queue_limit";
/// Pending jobs by `kind`.
pub const QUEUE_KIND_PENDING: &str = "npanel_queue_kind_pending";

/// 1 when the store answered at the last scrape, else 0.
pub const STORE_UP: &str = "npanel_store_up";
/// Audit records delivered from the outbox to the store.
pub const AUDIT_RECORDS_TOTAL: &str = "npanel_audit_records_total";
/// Audit records written to the store directly because the outbox (Redis) refused them.
pub const AUDIT_OUTBOX_FALLBACK_TOTAL: &str = "npanel_audit_outbox_fallback_total";
/// Finished jobs archived into the store's history.
pub const HISTORY_ARCHIVED_TOTAL: &str = "npanel_history_archived_total";
/// Age of the oldest finished job not yet archived (0 when none waits), seconds.
pub const HISTORY_ARCHIVE_LAG_SECONDS: &str = "npanel_history_archive_lag_seconds";

/// Install the process-wide Prometheus recorder once (binaries and tests call this; a second
/// call returns the same handle). If another recorder is already installed, returns a handle
/// that renders only what this exporter sees.
pub fn install_prometheus() -> PrometheusHandle {
    static H: OnceLock<PrometheusHandle> = OnceLock::new();
    H.get_or_init(|| {
        let b = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0, 1800.0, 3600.0,
                ],
            )
            .expect("non-empty buckets");
        match b.install_recorder() {
            Ok(h) => h,
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
    .clone()
}

/// Count and time every request under its route template.
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    // A fixed set: arbitrary methods from unauthenticated clients must not mint new series.
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}
