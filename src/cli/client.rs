//! A small HTTP client for the CLI (hyper; `http://` only, see the module above).

use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

/// Where the API is and who we are.
#[derive(Clone, Debug)]
pub struct Api {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Percent-encode a query or path value.
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

impl Api {
    /// A client of `url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Api> {
        let base = url.trim_end_matches('/').to_string();
        if base.starts_with("https://") {
            bail!("{url}: this CLI speaks plain http:// only; use the API's loopback address on the panel host");
        }
        if !base.starts_with("http://") {
            bail!("{url} is not a URL like http://127.0.0.1:8080");
        }
        Ok(Api {
            base,
            token: token.filter(|t| !t.is_empty()),
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
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

    /// Send one request; the response head within 30 s.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("accept", "application/json")
            .header(
                "user-agent",
                concat!("npanel-cli/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).context("bad request")?;
        tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| anyhow!("{} did not answer within 30s", self.base))?
            .with_context(|| format!("cannot reach the API at {} (is `npanel serve` running? set --url or NPANEL_URL)", self.base))
    }

    /// The [`ApiError`] of a non-2xx answer.
    async fn failure(resp: hyper::Response<Incoming>) -> anyhow::Error {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let v = match resp.into_body().collect().await {
            Ok(b) => parse(&b.to_bytes()),
            Err(e) => return anyhow!("the API answered {status} and then failed: {e}"),
        };
        ApiError {
            status: status.as_u16(),
            code: v["error"].as_str().unwrap_or("http_error").to_string(),
            message: v["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| status.to_string()),
            retry_after,
        }
        .into()
    }

    /// Call the API; a non-2xx answer becomes an [`ApiError`] (shown as `"<code>: <message>"`).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let resp = self.send(method, path, body).await?;
        if !resp.status().is_success() {
            return Err(Api::failure(resp).await);
        }
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok(parse(&bytes))
    }

    /// `GET path` and copy the body to `out` as it arrives (nothing is held in memory beyond
    /// one chunk); returns the bytes written. A stream that stalls for 60 s, or breaks, is an
    /// error. A reader of `out` that went away (`npanel ... | head`) ends the copy quietly.
    /// (`out` is written synchronously: the CLI does nothing else meanwhile.)
    pub async fn download(&self, path: &str, out: &mut dyn Write) -> anyhow::Result<u64> {
        let resp = self.send("GET", path, None).await?;
        if !resp.status().is_success() {
            return Err(Api::failure(resp).await);
        }
        let mut body = resp.into_body();
        let mut n = 0u64;
        loop {
            let frame = match tokio::time::timeout(Duration::from_secs(60), body.frame()).await {
                Err(_) => bail!("the API sent nothing for 60s; the download is incomplete"),
                Ok(None) => break,
                Ok(Some(f)) => {
                    f.context("the API stopped mid-stream; the download is incomplete")?
                }
            };
            if let Ok(data) = frame.into_data() {
                match out.write_all(&data) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(n),
                    r => r?,
                }
                n += data.len() as u64;
            }
        }
        match out.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r?,
        }
        Ok(n)
    }
}

/// JSON if it is, else the text as a JSON string (`null` when empty).
fn parse(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into()))
    }
}

/// An error answer of the API (`{"error": code, "message"}`), typed so a caller can tell, say,
/// a `conflict` from other failures (`err.downcast_ref::<ApiError>()`).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The stable error code (`conflict`, `not_found`, ...).
    pub code: String,
    /// The sentence for people.
    pub message: String,
    /// `Retry-After`, when given.
    pub retry_after: Option<String>,
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
