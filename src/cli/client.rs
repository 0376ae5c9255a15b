//! A small HTTP client for the CLI (hyper; `http://` only, see the module above).

use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
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

    /// Call the API; a non-2xx answer becomes an error `"<code>: <message>"`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("accept", "application/json");
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
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| anyhow!("{} did not answer within 30s", self.base))?
            .with_context(|| format!("cannot reach the API at {} (is `npanel serve` running? set --url or NPANEL_URL)", self.base))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        if status.is_success() {
            return Ok(v);
        }
        let code = v["error"].as_str().unwrap_or("http_error");
        let msg = v["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| status.to_string());
        match retry_after {
            Some(r) => bail!("{code}: {msg} (retry after {r}s)"),
            None if code == "unauthorized" => {
                bail!("{code}: {msg} (set --token or NPANEL_TOKEN; mint one with `npanel token`)")
            }
            None => bail!("{code}: {msg}"),
        }
    }
}
