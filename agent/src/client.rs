//! The async client the workers use to talk to the agent.
//!
//! Each call opens a fresh connection (cheap on a Unix socket, and it makes
//! the client indifferent to agent restarts), sends one request line, reads
//! one answer line, and gives up after the client's timeout.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::account::AccountName;
use crate::error::AgentError;
use crate::protocol::{
    DiskUsage, KillMethod, LimitsPatch, LimitsReport, Pong, Reply, Request, RequestEnvelope,
    Response, ResponseBody, Usage, MAX_LINE_BYTES, PROTOCOL_VERSION,
};

/// A client for the agent's socket.
#[derive(Debug)]
pub struct AgentClient {
    socket: PathBuf,
    timeout: Duration,
    next_id: AtomicU64,
}

/// Result of a kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillOutcome {
    pub method: KillMethod,
    pub pids_signalled: u32,
    pub emptied: bool,
}

impl AgentClient {
    /// A client for the agent listening on `socket`; every call fails with a
    /// timeout error after `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
            next_id: AtomicU64::new(1),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and returns the agent's reply; a typed error answer
    /// becomes [`AgentError::Remote`].
    pub async fn request(&self, request: &Request) -> Result<Reply, AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut line = serde_json::to_string(&RequestEnvelope {
            v: PROTOCOL_VERSION,
            id: Some(id),
            request,
        })
        .map_err(|e| AgentError::Protocol(format!("cannot encode request: {e}")))?;
        line.push('\n');
        let answer = send_line(&self.socket, &line, self.timeout).await?;
        let response: Response = serde_json::from_str(&answer)
            .map_err(|e| AgentError::Protocol(format!("bad answer {answer:?}: {e}")))?;
        if response.v != PROTOCOL_VERSION {
            return Err(AgentError::Protocol(format!(
                "agent speaks protocol v{}, this client v{PROTOCOL_VERSION}",
                response.v
            )));
        }
        if response.id.is_some() && response.id != Some(id) {
            return Err(AgentError::Protocol(format!(
                "answer for request {:?}, expected {id}",
                response.id
            )));
        }
        match response.body {
            ResponseBody::Ok(reply) => Ok(reply),
            ResponseBody::Error(e) => Err(AgentError::Remote(e)),
        }
    }

    pub async fn ping(&self) -> Result<Pong, AgentError> {
        match self.request(&Request::Ping).await? {
            Reply::Pong(p) => Ok(p),
            other => Err(unexpected("ping", &other)),
        }
    }

    pub async fn apply_limits(
        &self,
        account: &AccountName,
        limits: LimitsPatch,
    ) -> Result<LimitsReport, AgentError> {
        let req = Request::ApplyLimits {
            account: account.clone(),
            limits,
        };
        match self.request(&req).await? {
            Reply::LimitsApplied(r) => Ok(r),
            other => Err(unexpected("apply_limits", &other)),
        }
    }

    pub async fn freeze(&self, account: &AccountName) -> Result<(), AgentError> {
        let req = Request::Freeze {
            account: account.clone(),
        };
        match self.request(&req).await? {
            Reply::Frozen { .. } => Ok(()),
            other => Err(unexpected("freeze", &other)),
        }
    }

    pub async fn thaw(&self, account: &AccountName) -> Result<(), AgentError> {
        let req = Request::Thaw {
            account: account.clone(),
        };
        match self.request(&req).await? {
            Reply::Thawed { .. } => Ok(()),
            other => Err(unexpected("thaw", &other)),
        }
    }

    pub async fn kill(&self, account: &AccountName) -> Result<KillOutcome, AgentError> {
        let req = Request::Kill {
            account: account.clone(),
        };
        match self.request(&req).await? {
            Reply::Killed {
                method,
                pids_signalled,
                emptied,
                ..
            } => Ok(KillOutcome {
                method,
                pids_signalled,
                emptied,
            }),
            other => Err(unexpected("kill", &other)),
        }
    }

    /// Removes the account's cgroup; `Ok(false)` if there was none.
    pub async fn remove(&self, account: &AccountName) -> Result<bool, AgentError> {
        let req = Request::Remove {
            account: account.clone(),
        };
        match self.request(&req).await? {
            Reply::Removed { existed, .. } => Ok(existed),
            other => Err(unexpected("remove", &other)),
        }
    }

    pub async fn usage(&self, account: &AccountName) -> Result<Usage, AgentError> {
        let req = Request::Usage {
            account: account.clone(),
        };
        match self.request(&req).await? {
            Reply::Usage(u) => Ok(u),
            other => Err(unexpected("usage", &other)),
        }
    }

    pub async fn disk_usage(&self, account: &AccountName) -> Result<DiskUsage, AgentError> {
        let req = Request::DiskUsage {
            account: account.clone(),
        };
        match self.request(&req).await? {
            Reply::DiskUsage(d) => Ok(d),
            other => Err(unexpected("disk_usage", &other)),
        }
    }

    /// Creates the account's home directory; returns its path.
    pub async fn prepare_home(
        &self,
        account: &AccountName,
        uid: u32,
        gid: u32,
    ) -> Result<PathBuf, AgentError> {
        let req = Request::PrepareHome {
            account: account.clone(),
            uid,
            gid,
        };
        match self.request(&req).await? {
            Reply::HomePrepared { path, .. } => Ok(PathBuf::from(path)),
            other => Err(unexpected("prepare_home", &other)),
        }
    }
}

fn unexpected(op: &str, reply: &Reply) -> AgentError {
    AgentError::Protocol(format!("unexpected answer to {op}: {reply:?}"))
}

/// Sends one raw line (newline added if missing) and returns the one answer
/// line, all within `timeout`. For tools and tests that need to send lines
/// the typed client would never produce.
pub async fn send_line(socket: &Path, line: &str, timeout: Duration) -> Result<String, AgentError> {
    let work = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| AgentError::Connect {
                path: socket.to_path_buf(),
                source: e,
            })?;
        let (r, mut w) = stream.into_split();
        w.write_all(line.as_bytes())
            .await
            .map_err(|e| AgentError::io(socket, e))?;
        if !line.ends_with('\n') {
            w.write_all(b"\n")
                .await
                .map_err(|e| AgentError::io(socket, e))?;
        }
        let mut reader = BufReader::new(r);
        let mut answer = String::new();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 * 16)
            .read_line(&mut answer)
            .await
            .map_err(|e| AgentError::io(socket, e))?;
        if n == 0 {
            return Err(AgentError::Protocol(
                "the agent closed the connection without answering".into(),
            ));
        }
        Ok(answer.trim_end().to_string())
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        AgentError::Timeout(format!(
            "no answer from {} within {timeout:?}",
            socket.display()
        ))
    })?
}
