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
        let route = req
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|m| (req.method().clone(), m.as_str().to_string()));
        // Read as a JSON value first: a number written `5.0` is the integer 5 (JSON, and the
        // JSON Schema our document states, make no difference), which serde would refuse for
        // an integer field.
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(mut v)) => {
                if let Some((method, path)) = &route {
                    crate::openapi::check_body_shape(method, path, &v).map_err(|m| {
                        ApiError::Unprocessable(format!("the JSON body does not match: {m}"))
                    })?;
                }
                integral_floats_to_ints(&mut v);
                if let Some(n) = too_large_integer(&v) {
                    return Err(ApiError::Unprocessable(format!(
                        "the JSON body does not match: {n} is larger than the largest whole number accepted, {}",
                        i64::MAX
                    )));
                }
                serde_json::from_value(v).map(ApiJson).map_err(|e| {
                    ApiError::Unprocessable(format!("the JSON body does not match: {e}"))
                })
            }
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

/// Turn every number with no fractional part that fits an `i64`/`u64` (`5.0`, `-2.0`) into
/// that integer, in place.
fn integral_floats_to_ints(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) {
                if f >= 0.0 && f < u64::MAX as f64 {
                    *v = Value::from(f as u64);
                } else if f < 0.0 && f >= i64::MIN as f64 {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats_to_ints),
        Value::Object(o) => o.values_mut().for_each(integral_floats_to_ints),
        _ => {}
    }
}

/// The first whole number above `i64::MAX` in `v`: the document declares every integer
/// `int64`, so none is accepted, even where the field is unsigned.
fn too_large_integer(v: &serde_json::Value) -> Option<u64> {
    use serde_json::Value;
    match v {
        Value::Number(n) => n.as_u64().filter(|&n| n > i64::MAX as u64),
        Value::Array(a) => a.iter().find_map(too_large_integer),
        Value::Object(o) => o.values().find_map(too_large_integer),
        _ => None,
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
