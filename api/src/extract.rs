//! Extractors whose rejections speak the error table (JSON bodies, never axum's plain text).

use crate::error::ApiError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// `Json<T>` with table errors: 413 `payload_too_large`, 400 for syntax or content type, 422
/// for well-formed JSON of the wrong shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|b| b.0)
            .unwrap_or_default();
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge(limit))
            }
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Unprocessable(format!(
                "the JSON body does not match: {}",
                e.body_text()
            ))),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadRequest(
                "expected a JSON body with Content-Type: application/json".into(),
            )),
            Err(r) => Err(ApiError::BadRequest(format!(
                "malformed JSON body: {}",
                r.body_text()
            ))),
        }
    }
}

/// The body limit in force, for the 413 message.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// `Query<T>` with table errors (400).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::BadRequest(
                format!("bad query string: {}", e.body_text()),
            )),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// A keyset page request: `?limit` (1-1000, default 100) and `?cursor` (from the previous
/// page's `next_cursor`, checked against the list it came from).
#[derive(Debug)]
pub struct PageRequest {
    /// Page size.
    pub limit: i64,
    /// The last key of the previous page.
    pub after: Option<String>,
}

impl PageRequest {
    /// Parse the page parameters of the list called `scope`; bad ones are 400.
    pub fn parse(limit: Option<i64>, cursor: Option<&str>, scope: &str) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::BadRequest("limit must be 1 to 1000".into()));
        }
        let after = cursor
            .map(|c| store::Cursor::decode(scope, c).map(|c| c.0))
            .transpose()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(PageRequest { limit, after })
    }

    /// The `next_cursor` of a page of `items`: set when the page is full.
    pub fn next<T>(&self, items: &[T], scope: &str, key: impl Fn(&T) -> String) -> Option<String> {
        (items.len() as i64 == self.limit)
            .then(|| items.last().map(|x| store::Cursor::encode(scope, &key(x))))
            .flatten()
    }
}
