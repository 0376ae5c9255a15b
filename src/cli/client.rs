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
    timeout: Duration,
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
            timeout: Duration::from_secs(30),
        })
    }

    /// The same client with another bound on waiting for an answer's head (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Api {
        self.timeout = timeout;
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

    /// Send one request; the response head within the timeout (30 s by default).
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
        tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| anyhow!("{} did not answer within {:?}", self.base, self.timeout))?
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

    /// `POST path` of a body that makes something (a job) and carries an idempotency key:
    /// a request that got no answer (timed out, connection lost: it may have run) or a 503
    /// `unavailable` is sent again, with the same key, up to `attempts` times in all — so a
    /// retry finds the job the first try made instead of making a second.
    pub async fn post_idempotent(
        &self,
        path: &str,
        body: Value,
        attempts: u32,
    ) -> anyhow::Result<Value> {
        let mut pause = Duration::from_millis(500);
        let mut last = None;
        for attempt in 1..=attempts.max(1) {
            match self.send("POST", path, Some(body.clone())).await {
                Ok(resp) if resp.status().is_success() => {
                    let bytes = resp.into_body().collect().await?.to_bytes();
                    return Ok(parse(&bytes));
                }
                Ok(resp) => {
                    let e = Api::failure(resp).await;
                    let unavailable = e
                        .downcast_ref::<ApiError>()
                        .is_some_and(|a| a.status == 503 && a.code == "unavailable");
                    if !unavailable {
                        return Err(e);
                    }
                    last = Some(e);
                }
                Err(e) => last = Some(e),
            }
            if attempt < attempts {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no attempt was made")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads one HTTP request from `s`; returns its body.
    async fn read_request(s: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client hung up before its request was whole");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(i) = text.find("\r\n\r\n") {
                let len: usize = text[..i]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= i + 4 + len {
                    return String::from_utf8_lossy(&buf[i + 4..i + 4 + len]).to_string();
                }
            }
        }
    }

    /// An enqueue whose first try got no answer (it may have run) is sent again with the same
    /// idempotency key, so the server finds the job instead of making a second one.
    #[tokio::test]
    async fn a_post_that_got_no_answer_is_sent_again_with_the_same_key() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut bodies = Vec::new();
            // The first try: read, then say nothing (as a server that ran it but whose answer
            // was lost), until the client gives up.
            let (mut s, _) = listener.accept().await.unwrap();
            bodies.push(read_request(&mut s).await);
            // The second: answer.
            let (mut s2, _) = listener.accept().await.unwrap();
            bodies.push(read_request(&mut s2).await);
            let body = r#"{"id":"J1","status":"queued"}"#;
            s2.write_all(
                format!(
                    "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            drop(s);
            bodies
        });
        let api = Api::new(&format!("http://{addr}"), Some("t".into()))
            .unwrap()
            .with_timeout(Duration::from_millis(300));
        let v = api
            .post_idempotent(
                "/api/jobs",
                serde_json::json!({"kind": "diagnostic", "idempotency_key": "cli-K1"}),
                3,
            )
            .await
            .unwrap();
        assert_eq!(v["id"], "J1");
        let bodies = server.await.unwrap();
        assert_eq!(bodies.len(), 2);
        for b in &bodies {
            let v: Value = serde_json::from_str(b).unwrap();
            assert_eq!(v["idempotency_key"], "cli-K1", "{b}");
        }
    }
}
