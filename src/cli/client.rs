//! The CLI's view of the API: [`ws::client::HttpClient`] (the one HTTP client of the CLI, the
//! load drivers and the tests; `http://` only, see the module above) with errors as `anyhow`,
//! an idempotent POST that retries, and a streaming download.

use anyhow::{anyhow, bail, Context};
use http_body_util::BodyExt;
use serde_json::Value;
use std::io::Write;
use std::time::Duration;
use ws::client::{ClientError, HttpClient};

pub use ws::client::{encode, ApiError};

/// Where the API is and who we are.
#[derive(Clone, Debug)]
pub struct Api {
    http: HttpClient,
}

/// A client error as `anyhow`, an API answer kept as an [`ApiError`] (`downcast_ref`-able).
fn error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Api(a) => (*a).into(),
        e => e.into(),
    }
}

impl Api {
    /// A client of `url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Api> {
        let http = HttpClient::new(url, token)
            .map_err(error)?
            .with_user_agent(concat!("npanel-cli/", env!("CARGO_PKG_VERSION")));
        Ok(Api { http })
    }

    /// The same client with another bound on waiting for an answer's head (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Api {
        self.http = self.http.with_timeout(timeout);
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        self.http.base()
    }

    /// The token, if any.
    pub fn token(&self) -> Option<&str> {
        self.http.token()
    }

    /// The underlying client (for its WebSocket connect).
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// Call the API; a non-2xx answer becomes an [`ApiError`] (shown as `"<code>: <message>"`).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.http
            .call(method, path, body.as_ref())
            .await
            .map_err(error)
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
            match self.http.call("POST", path, Some(&body)).await {
                Ok(v) => return Ok(v),
                Err(ClientError::Api(a)) if !(a.status == 503 && a.code == "unavailable") => {
                    return Err((*a).into())
                }
                // An answer that broke off is not sent again (as before the move).
                Err(e @ ClientError::Body { .. }) => return Err(error(e)),
                Err(e) => last = Some(error(e)),
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
        let resp = self
            .http
            .send("GET", path, &[], None)
            .await
            .map_err(error)?;
        if !resp.status().is_success() {
            return Err(error(ApiError::from_response(resp).await));
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
