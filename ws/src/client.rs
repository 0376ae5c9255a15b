//! The client side: one HTTP client and one WebSocket connect for the API, used by the CLI
//! (`npanel ...`), the load drivers (`loadtests`) and the tests — instead of one of each per
//! caller.
//!
//! - [`HttpClient`]: `http://` only (the API listens on loopback; TLS is the proxy's job),
//!   over hyper-util's pooled client ([`pool`]): a base URL, an optional bearer token, a bound on
//!   waiting for an answer's head (30 s by default), idle keep-alive connections reaped after
//!   [`IDLE_TIMEOUT`]. [`HttpClient::request`] gives any answer whole ([`Response`]);
//!   [`HttpClient::call`] turns a non-2xx one into an [`ApiError`] (`{"error", "message"}` and
//!   `Retry-After`).
//! - [`HttpClient::connect_ws`]: `ws://` from the same base and token, `?since=<seq>` to resume;
//!   a refused upgrade is the same [`ApiError`] (status, code, message, Retry-After).
//! - [`blocking::HttpClient`]: the same on a private current-thread runtime, for synchronous
//!   callers (tests on std threads).
//!
//! It lives in `ws` because this crate already owns the wire format of `/api/live` and
//! `/api/jobs/{id}/live`, and its dependencies (`queue` only) stay small enough for the drivers,
//! which DESIGN §1 keeps off the server crates ("`loadtests` only talks HTTP/WS").

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{HeaderMap, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use tokio_tungstenite::tungstenite;

/// hyper-util's pooled client, as built by [`pool`].
pub type Pool = Client<HttpConnector, Full<Bytes>>;

/// An open WebSocket to the API.
pub type WsStream = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// How long an idle keep-alive connection is kept (as a browser's or a proxy's): without the
/// pool's timer idle connections are never reaped (the pool reuses the newest first), so the
/// server's open fds follow the highest concurrency a client ever reached.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// The default bound on waiting for an answer's head.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A pooled HTTP/1 client: up to 512 idle connections per host, no Nagle delay, idle ones
/// closed after [`IDLE_TIMEOUT`].
pub fn pool() -> Pool {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(512)
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .build(conn)
}

/// Percent-encode a query or path value (everything but `A-Z a-z 0-9 - _ . ~`).
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// JSON if it is, else the text as a JSON string (`null` when empty).
pub fn parse(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into()))
    }
}

/// Why a request or a connect failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not `http://host:port`.
    #[error("{0}")]
    BadUrl(String),
    /// The request could not be built (a bad header value, say).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No answer's head within the timeout.
    #[error("{base} did not answer within {timeout:?}")]
    Timeout { base: String, timeout: Duration },
    /// Nothing answered (refused, reset, the connection lost before an answer).
    #[error("cannot reach the API at {base} (is `npanel serve` running? set --url or NPANEL_URL)")]
    Connect {
        base: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The answer's body broke off.
    #[error("the API answered {status} and then failed: {source}")]
    Body {
        status: StatusCode,
        #[source]
        source: hyper::Error,
    },
    /// A non-2xx answer, or a refused WebSocket upgrade.
    #[error(transparent)]
    Api(Box<ApiError>),
    /// The WebSocket connection or its handshake failed.
    #[error("websocket: {0}")]
    Ws(Box<tungstenite::Error>),
}

impl From<ApiError> for ClientError {
    fn from(e: ApiError) -> ClientError {
        ClientError::Api(Box::new(e))
    }
}

impl ClientError {
    /// The API's answer, for a non-2xx answer or a refused upgrade.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api(a) => Some(a),
            _ => None,
        }
    }
}

/// An error answer of the API (`{"error": code, "message"}`), typed so a caller can tell, say,
/// a `conflict` from other failures.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The stable error code (`conflict`, `not_found`, ...; `http_error` when the body has none).
    pub code: String,
    /// The sentence for people (the status line when the body has none).
    pub message: String,
    /// `Retry-After`, when given.
    pub retry_after: Option<String>,
    /// The whole body (JSON, or the text as a JSON string, `null` when empty).
    pub body: Value,
}

impl ApiError {
    /// From an answer's status, headers and body.
    pub fn new(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ApiError {
        let body = parse(body);
        ApiError {
            status: status.as_u16(),
            code: body["error"].as_str().unwrap_or("http_error").to_string(),
            message: body["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| status.to_string()),
            retry_after: headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body,
        }
    }

    /// The error of a non-2xx answer, its body read.
    pub async fn from_response(resp: hyper::Response<Incoming>) -> ClientError {
        let (head, body) = resp.into_parts();
        match body.collect().await {
            Ok(b) => ApiError::new(head.status, &head.headers, &b.to_bytes()).into(),
            Err(source) => ClientError::Body {
                status: head.status,
                source,
            },
        }
    }

    /// `Retry-After` in whole seconds, when it is a number.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.as_deref()?.trim().parse().ok()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        match &self.retry_after {
            Some(r) => write!(f, " (retry after {r}s)"),
            None if self.code == "unauthorized" => {
                write!(
                    f,
                    " (set --token or NPANEL_TOKEN; mint one with `npanel token`)"
                )
            }
            None => Ok(()),
        }
    }
}

impl std::error::Error for ApiError {}

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body as JSON (see [`parse`]).
    pub fn json(&self) -> Value {
        parse(&self.body)
    }

    /// The body, for a 2xx answer; else its [`ApiError`].
    pub fn ok(self) -> Result<Value, ClientError> {
        if self.status.is_success() {
            Ok(self.json())
        } else {
            Err(ApiError::new(self.status, &self.headers, &self.body).into())
        }
    }
}

/// Where the API is and who we are (see the module docs). Cheap to clone: clones share the
/// connection pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    base: String,
    token: Option<String>,
    client: Pool,
    timeout: Duration,
    user_agent: String,
}

impl HttpClient {
    /// A client of `url` (e.g. `http://127.0.0.1:8080`); an empty token is none.
    pub fn new(url: &str, token: Option<String>) -> Result<HttpClient, ClientError> {
        HttpClient::with_pool(url, token, pool())
    }

    /// The same on an existing pool (to share its connections with other clients).
    pub fn with_pool(
        url: &str,
        token: Option<String>,
        client: Pool,
    ) -> Result<HttpClient, ClientError> {
        let base = url.trim_end_matches('/').to_string();
        if base.starts_with("https://") {
            return Err(ClientError::BadUrl(format!("{url}: this CLI speaks plain http:// only; use the API's loopback address on the panel host")));
        }
        if !base.starts_with("http://") {
            return Err(ClientError::BadUrl(format!(
                "{url} is not a URL like http://127.0.0.1:8080"
            )));
        }
        Ok(HttpClient {
            base,
            token: token.filter(|t| !t.is_empty()),
            client,
            timeout: DEFAULT_TIMEOUT,
            user_agent: concat!("npanel-client/", env!("CARGO_PKG_VERSION")).into(),
        })
    }

    /// The same client with another bound on waiting for an answer's head.
    pub fn with_timeout(mut self, timeout: Duration) -> HttpClient {
        self.timeout = timeout;
        self
    }

    /// The same client (same pool) with another token (`None` or empty: none).
    pub fn with_token(&self, token: Option<&str>) -> HttpClient {
        HttpClient {
            token: token.filter(|t| !t.is_empty()).map(str::to_string),
            ..self.clone()
        }
    }

    /// The same client sending another `User-Agent`.
    pub fn with_user_agent(mut self, user_agent: &str) -> HttpClient {
        self.user_agent = user_agent.to_string();
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `ws://` form of the base URL.
    pub fn ws_base(&self) -> String {
        format!("ws://{}", self.base.trim_start_matches("http://"))
    }

    /// Send one request; the answer's head within the timeout, its body unread. `headers` are
    /// added after the defaults (`accept: application/json` unless given, `user-agent`,
    /// `authorization` from the token); a body is sent as `content-type: application/json`
    /// unless `headers` name another.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let given = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("user-agent", self.user_agent.as_str());
        if !given("accept") {
            req = req.header("accept", "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() && !given("content-type") {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| ClientError::BadRequest(e.to_string()))?;
        tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| ClientError::Timeout {
                base: self.base.clone(),
                timeout: self.timeout,
            })?
            .map_err(|e| ClientError::Connect {
                base: self.base.clone(),
                source: Box::new(e),
            })
    }

    /// [`send`](Self::send) and read the whole answer, whatever its status.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Response, ClientError> {
        let (head, body) = self.send(method, path, headers, body).await?.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|source| ClientError::Body {
                status: head.status,
                source,
            })?
            .to_bytes();
        Ok(Response {
            status: head.status,
            headers: head.headers,
            body,
        })
    }

    /// A JSON request (or none), the whole answer whatever its status.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, ClientError> {
        let body = body.map(|v| Bytes::from(v.to_string()));
        self.request(method, path, &[], body).await
    }

    /// Call the API: the JSON of a 2xx answer; any other is an [`ApiError`].
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        self.json(method, path, body).await?.ok()
    }

    /// Open the WebSocket at `path` (`/api/jobs/{id}/live`, `/api/live`), after `since` when
    /// given (the `seq` of the last message seen). A refused upgrade is an [`ApiError`].
    pub async fn connect_ws(
        &self,
        path: &str,
        since: Option<&str>,
    ) -> Result<WsStream, ClientError> {
        self.connect_ws_with(path, since, None).await
    }

    /// [`connect_ws`](Self::connect_ws) with tungstenite's `config` (buffer sizes, say).
    pub async fn connect_ws_with(
        &self,
        path: &str,
        since: Option<&str>,
        config: Option<WebSocketConfig>,
    ) -> Result<WsStream, ClientError> {
        let mut url = format!("{}{path}", self.ws_base());
        if let Some(s) = since {
            url.push(if path.contains('?') { '&' } else { '?' });
            url.push_str(&format!("since={}", encode(s)));
        }
        let mut req = url
            .into_client_request()
            .map_err(|e| ClientError::BadRequest(e.to_string()))?;
        if let Some(t) = &self.token {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| ClientError::BadRequest("a token is not a header value".into()))?;
            req.headers_mut().insert("authorization", v);
        }
        match tokio_tungstenite::connect_async_with_config(req, config, true).await {
            Ok((s, _)) => Ok(s),
            Err(tungstenite::Error::Http(resp)) => Err(ApiError::new(
                resp.status(),
                resp.headers(),
                resp.body().as_deref().unwrap_or_default(),
            )
            .into()),
            Err(e) => Err(ClientError::Ws(Box::new(e))),
        }
    }
}

/// [`HttpClient`](super::HttpClient) for synchronous callers: each request runs to completion
/// on the client's own current-thread runtime (so never call it from inside a runtime).
pub mod blocking {
    use super::{Bytes, ClientError, Response, Value};
    use std::sync::Arc;
    use std::time::Duration;

    /// See the module docs.
    #[derive(Clone)]
    pub struct HttpClient {
        inner: super::HttpClient,
        rt: Arc<tokio::runtime::Runtime>,
    }

    impl HttpClient {
        /// A client of `url`; its pool lives on the client's own runtime.
        pub fn new(url: &str, token: Option<String>) -> Result<HttpClient, ClientError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ClientError::BadRequest(format!("runtime: {e}")))?;
            // The pool's timer and executor are the runtime's: build it inside.
            let inner = {
                let _g = rt.enter();
                super::HttpClient::new(url, token)?
            };
            Ok(HttpClient {
                inner,
                rt: Arc::new(rt),
            })
        }

        /// The same with another bound on waiting for an answer's head.
        pub fn with_timeout(mut self, timeout: Duration) -> HttpClient {
            self.inner = self.inner.with_timeout(timeout);
            self
        }

        /// The same (same pool) with another token.
        pub fn with_token(&self, token: Option<&str>) -> HttpClient {
            HttpClient {
                inner: self.inner.with_token(token),
                rt: self.rt.clone(),
            }
        }

        /// See [`super::HttpClient::request`].
        pub fn request(
            &self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: Option<Bytes>,
        ) -> Result<Response, ClientError> {
            self.rt
                .block_on(self.inner.request(method, path, headers, body))
        }

        /// See [`super::HttpClient::json`].
        pub fn json(
            &self,
            method: &str,
            path: &str,
            body: Option<&Value>,
        ) -> Result<Response, ClientError> {
            self.rt.block_on(self.inner.json(method, path, body))
        }

        /// See [`super::HttpClient::call`].
        pub fn call(
            &self,
            method: &str,
            path: &str,
            body: Option<&Value>,
        ) -> Result<Value, ClientError> {
            self.rt.block_on(self.inner.call(method, path, body))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_keeps_unreserved_bytes_only() {
        assert_eq!(encode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(encode("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
    }

    #[test]
    fn an_error_answer_reads_code_message_and_retry_after() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        let e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"error":"rate_limited","message":"slow down"}"#,
        );
        assert_eq!((e.status, e.code.as_str()), (429, "rate_limited"));
        assert_eq!(e.retry_after_secs(), Some(7));
        assert_eq!(e.to_string(), "rate_limited: slow down (retry after 7s)");
        // Not JSON: the status stands in for the message.
        let e = ApiError::new(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"upstream");
        assert_eq!(e.code, "http_error");
        assert_eq!(e.message, "502 Bad Gateway");
        assert_eq!(e.body, Value::String("upstream".into()));
    }

    #[test]
    fn only_plain_http_bases() {
        assert!(matches!(
            HttpClient::new("https://x", None),
            Err(ClientError::BadUrl(_))
        ));
        assert!(matches!(
            HttpClient::new("127.0.0.1:8080", None),
            Err(ClientError::BadUrl(_))
        ));
    }
}
