//! The API's one error type and its one table of stable codes (DESIGN §3, STYLE.md §3).
//!
//! Every failure leaves the API as `{"error": "<code>", "message": "..."}`. Clients branch on the
//! code, never on the message. The table (also in the README):
//!
//! | variant | code | status | extra |
//! |---|---|---|---|
//! | `Unauthorized` | `unauthorized` | 401 | one body for every auth failure; `WWW-Authenticate: Bearer` |
//! | `Forbidden` | `forbidden` | 403 | role may not use the route (e.g. admin routes) |
//! | `NotFound` | `not_found` | 404 | unknown route or job, and any job of another tenant |
//! | `MethodNotAllowed` | `method_not_allowed` | 405 | |
//! | `BadRequest` | `invalid_request` | 400 | malformed JSON, bad query string, not a WebSocket upgrade |
//! | `Unprocessable` | `invalid_request` | 422 | well-formed but invalid: unknown job type, payload mismatch, bad values |
//! | `Conflict` | `conflict` | 409 | job not in a state that allows the action; a name taken |
//! | `AllowanceExceeded` | `allowance_exceeded` | 409 | a reseller's allowance would be exceeded; nothing written |
//! | `LimitReached` | `limit_reached` | 409 | the account's package limit (`addon_domains`, `databases`) is reached; nothing created |
//! | `FeatureDisabled` | `feature_disabled` | 403 | the account's package does not grant the feature |
//! | `PayloadTooLarge` | `payload_too_large` | 413 | body over `api.body_limit_bytes` |
//! | `RateLimited` | `rate_limited` | 429 | `Retry-After` |
//! | `NotAvailable` | `not_available` | 501 | the job type has no handler in this build |
//! | `QueueFull` | `queue_full` | 503 | `Retry-After` (the queue's estimate) |
//! | `TooManyConnections` | `too_many_connections` | 503 | `Retry-After`; `ws.max_connections` reached |
//! | `TooManyTenantConnections` | `too_many_connections` | 429 | `Retry-After`; `ws.max_per_tenant` reached |
//! | `Unavailable` | `unavailable` | 503 | `Retry-After`; Redis unreachable |
//! | `Timeout` | `timeout` | 503 | request took longer than `api.request_timeout_secs` |
//! | `JobFailed` | `job_failed` | 502 | the job doing the work failed (WHMCS calls that wait for their job) |
//! | `Internal` | `internal` | 500 | details only in the log, inside the request's span |

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use queue::QueueError;
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, malformed, badly signed or expired token (deliberately one message).
    #[error("missing, invalid or expired token")]
    Unauthorized,
    /// Authenticated, but the role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing (or not yours).
    #[error("{0}")]
    NotFound(String),
    /// Route exists, method does not.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// Malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but invalid request.
    #[error("{0}")]
    Unprocessable(String),
    /// Wrong state for the action.
    #[error("{0}")]
    Conflict(String),
    /// A reseller's allowance would be exceeded.
    #[error("{0}")]
    AllowanceExceeded(String),
    /// The account already has as many of something (addon domains, databases) as its
    /// package allows.
    #[error("{0}")]
    LimitReached(String),
    /// The account's package does not grant a feature.
    #[error("{0}")]
    FeatureDisabled(String),
    /// Body too large.
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// Rate limit hit.
    #[error("rate limit exceeded; retry in {}s", retry_secs(*.0))]
    RateLimited(Duration),
    /// The job type has no handler in this build.
    #[error("{0}")]
    NotAvailable(String),
    /// The queue's bound is reached.
    #[error("the queue is full ({pending} of {limit} jobs pending); nothing was enqueued, retry in about {}s", retry_secs(*.retry_after))]
    QueueFull {
        /// Pending jobs.
        pending: u32,
        /// The bound.
        limit: u32,
        /// Estimate.
        retry_after: Duration,
    },
    /// `ws.max_connections` reached.
    #[error("too many live connections on this server ({0}); retry later")]
    TooManyConnections(usize),
    /// `ws.max_per_tenant` reached for the caller's account or reseller.
    #[error("your account already has {0} live connections open; close one and retry")]
    TooManyTenantConnections(usize),
    /// A dependency is down.
    #[error("{0}")]
    Unavailable(String),
    /// The request took too long.
    #[error("the request took too long and was abandoned")]
    Timeout,
    /// The job doing the work failed (a WHMCS call waited for it); the message says why.
    #[error("{0}")]
    JobFailed(String),
    /// A bug or an unexpected reply; the detail is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

fn retry_secs(d: Duration) -> u64 {
    (d.as_millis().div_ceil(1000) as u64).max(1)
}

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code.
    pub error: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// The table: stable code and status of each variant.
    pub fn code_status(&self) -> (&'static str, StatusCode) {
        use ApiError::*;
        match self {
            Unauthorized => ("unauthorized", StatusCode::UNAUTHORIZED),
            Forbidden(_) => ("forbidden", StatusCode::FORBIDDEN),
            NotFound(_) => ("not_found", StatusCode::NOT_FOUND),
            MethodNotAllowed => ("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED),
            BadRequest(_) => ("invalid_request", StatusCode::BAD_REQUEST),
            Unprocessable(_) => ("invalid_request", StatusCode::UNPROCESSABLE_ENTITY),
            Conflict(_) => ("conflict", StatusCode::CONFLICT),
            AllowanceExceeded(_) => ("allowance_exceeded", StatusCode::CONFLICT),
            LimitReached(_) => ("limit_reached", StatusCode::CONFLICT),
            FeatureDisabled(_) => ("feature_disabled", StatusCode::FORBIDDEN),
            PayloadTooLarge(_) => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            RateLimited(_) => ("rate_limited", StatusCode::TOO_MANY_REQUESTS),
            NotAvailable(_) => ("not_available", StatusCode::NOT_IMPLEMENTED),
            QueueFull { .. } => ("queue_full", StatusCode::SERVICE_UNAVAILABLE),
            TooManyConnections(_) => ("too_many_connections", StatusCode::SERVICE_UNAVAILABLE),
            TooManyTenantConnections(_) => ("too_many_connections", StatusCode::TOO_MANY_REQUESTS),
            Unavailable(_) => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
            Timeout => ("timeout", StatusCode::SERVICE_UNAVAILABLE),
            JobFailed(_) => ("job_failed", StatusCode::BAD_GATEWAY),
            Internal(_) => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited(d) => Some(retry_secs(*d)),
            ApiError::QueueFull { retry_after, .. } => Some(retry_secs(*retry_after)),
            ApiError::TooManyConnections(_)
            | ApiError::TooManyTenantConnections(_)
            | ApiError::Unavailable(_)
            | ApiError::Timeout => Some(5),
            _ => None,
        }
    }

    /// A job that does not exist or belongs to another tenant: the same answer for both.
    pub fn job_not_found(id: &str) -> ApiError {
        ApiError::NotFound(format!("job {id} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code_status();
        match &self {
            ApiError::Internal(detail) => tracing::error!(%detail, "Internal error."),
            ApiError::Unavailable(detail) => tracing::warn!(%detail, "Dependency unavailable."),
            _ => {}
        }
        let body = ErrorBody {
            error: code,
            message: self.to_string(),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Full {
                limit,
                pending,
                retry_after,
            } => ApiError::QueueFull {
                pending,
                limit,
                retry_after,
            },
            QueueError::Unavailable(d) => {
                tracing::warn!(detail = %d, "Redis unavailable.");
                ApiError::Unavailable("the job queue is unavailable; retry shortly".into())
            }
            QueueError::OutOfMemory(d) => {
                tracing::error!(detail = %d, "Redis is out of memory.");
                ApiError::Unavailable(
                    "the job queue's Redis is out of memory (maxmemory reached): nothing was written; free memory or raise maxmemory, then retry"
                        .into(),
                )
            }
            QueueError::UnknownKind(k) => ApiError::Unprocessable(k.to_string()),
            e @ QueueError::KindNotAvailable(_) => ApiError::NotAvailable(e.to_string()),
            e @ QueueError::InvalidPayload { .. } => ApiError::Unprocessable(e.to_string()),
            QueueError::NotFound(id) => ApiError::job_not_found(&id),
            e @ QueueError::Conflict { .. } => ApiError::Conflict(e.to_string()),
            QueueError::Invalid(m) => ApiError::Unprocessable(m),
            QueueError::Protocol(m) => ApiError::Internal(m),
        }
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        use store::StoreError as S;
        match e {
            S::Unavailable(d) => {
                tracing::warn!(detail = %d, "Store unavailable.");
                ApiError::Unavailable("the store (database) is unavailable; retry shortly".into())
            }
            S::NotFound(m) => ApiError::NotFound(m),
            S::Conflict(m) => ApiError::Conflict(m),
            S::AllowanceExceeded(m) => ApiError::AllowanceExceeded(m),
            S::Invalid(m) => ApiError::Unprocessable(m),
            S::Database(m) => ApiError::Internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_design_codes() {
        let full = ApiError::QueueFull {
            pending: 100,
            limit: 100,
            retry_after: Duration::from_millis(2500),
        };
        assert_eq!(
            full.code_status(),
            ("queue_full", StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(full.retry_after(), Some(3));
        let r = ApiError::RateLimited(Duration::from_millis(10));
        assert_eq!(r.code_status().1, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.retry_after(), Some(1));
        assert_eq!(
            ApiError::Unauthorized.code_status().1,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            ApiError::PayloadTooLarge(1).code_status(),
            ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE)
        );
        let na: ApiError = QueueError::KindNotAvailable(queue::JobKind::Restore).into();
        assert_eq!(na.code_status().0, "not_available");
        assert!(na.to_string().contains("not available in this build"));
    }
}
