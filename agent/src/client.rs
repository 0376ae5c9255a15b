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

use crate::error::AgentError;
use crate::protocol::{
    KillMethod, Reply, Request, RequestEnvelope, Response, ResponseBody, MAX_LINE_BYTES,
    PROTOCOL_VERSION,
};

/// A client for the agent's socket.
#[derive(Debug)]
pub struct AgentClient {
    socket: PathBuf,
    timeout: Duration,
    long_timeout: Duration,
    next_id: AtomicU64,
}

/// How long a client waits for a long request ([`Request::is_long`]:
/// backup_home, remove_home, disk_usage) unless told otherwise.
pub const DEFAULT_LONG_TIMEOUT: Duration = Duration::from_secs(3600);

/// Result of a kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillOutcome {
    pub method: KillMethod,
    pub pids_signalled: u32,
    pub emptied: bool,
}

impl AgentClient {
    /// A client for the agent listening on `socket`; every call fails with a
    /// timeout error after `timeout`, except the long ones
    /// ([`Request::is_long`]), which wait up to [`DEFAULT_LONG_TIMEOUT`]
    /// (or `timeout` if longer).
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
            long_timeout: DEFAULT_LONG_TIMEOUT.max(timeout),
            next_id: AtomicU64::new(1),
        }
    }

    /// Sets how long the long requests may take.
    pub fn with_long_timeout(mut self, long_timeout: Duration) -> Self {
        self.long_timeout = long_timeout;
        self
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
        let timeout = if request.is_long() {
            self.long_timeout
        } else {
            self.timeout
        };
        let answer = send_line(&self.socket, &line, timeout).await?;
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

    /// Sends one request and returns the agent's reply (the same signature
    /// as [`crate::local::Host::call`] and [`crate::local::LocalHost::call`]).
    pub async fn call(&self, request: Request) -> Result<Reply, AgentError> {
        self.request(&request).await
    }

    crate::client::typed_host_ops!();
}

/// The outcome of a cgroup operation the host may not support: done, or
/// skipped with the reason (no writable cgroup v2 root, e.g. the
/// unprivileged embedded default; see [`Reply::Skipped`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    Done(T),
    Skipped(String),
}

impl<T> Outcome<T> {
    /// The value when done.
    pub fn done(self) -> Option<T> {
        match self {
            Outcome::Done(t) => Some(t),
            Outcome::Skipped(_) => None,
        }
    }

    /// The reason when skipped.
    pub fn skipped(&self) -> Option<&str> {
        match self {
            Outcome::Done(_) => None,
            Outcome::Skipped(r) => Some(r),
        }
    }
}

/// The typed methods shared by [`AgentClient`], [`crate::local::LocalHost`]
/// and [`crate::local::Host`]: each builds one [`Request`], sends it through
/// `self.call` and unpacks the expected [`Reply`].
macro_rules! typed_host_ops {
    () => {
        pub async fn ping(&self) -> Result<$crate::protocol::Pong, $crate::AgentError> {
            match self.call($crate::Request::Ping).await? {
                $crate::Reply::Pong(p) => Ok(p),
                other => Err($crate::client::unexpected("ping", &other)),
            }
        }

        /// Writes the account's cgroup limits (config defaults overridden
        /// by `limits`); where cgroups are unusable the report says how each
        /// limit is enforced instead (rlimit / none).
        pub async fn apply_limits(
            &self,
            account: &$crate::AccountName,
            limits: $crate::protocol::LimitsPatch,
        ) -> Result<$crate::protocol::LimitsReport, $crate::AgentError> {
            let req = $crate::Request::ApplyLimits {
                account: account.clone(),
                limits,
            };
            match self.call(req).await? {
                $crate::Reply::LimitsApplied(r) => Ok(r),
                other => Err($crate::client::unexpected("apply_limits", &other)),
            }
        }

        pub async fn freeze(
            &self,
            account: &$crate::AccountName,
        ) -> Result<$crate::client::Outcome<()>, $crate::AgentError> {
            let req = $crate::Request::Freeze {
                account: account.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::Frozen { .. } => Ok($crate::client::Outcome::Done(())),
                $crate::Reply::Skipped { reason, .. } => {
                    Ok($crate::client::Outcome::Skipped(reason))
                }
                other => Err($crate::client::unexpected("freeze", &other)),
            }
        }

        pub async fn thaw(
            &self,
            account: &$crate::AccountName,
        ) -> Result<$crate::client::Outcome<()>, $crate::AgentError> {
            let req = $crate::Request::Thaw {
                account: account.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::Thawed { .. } => Ok($crate::client::Outcome::Done(())),
                $crate::Reply::Skipped { reason, .. } => {
                    Ok($crate::client::Outcome::Skipped(reason))
                }
                other => Err($crate::client::unexpected("thaw", &other)),
            }
        }

        pub async fn kill(
            &self,
            account: &$crate::AccountName,
        ) -> Result<$crate::client::Outcome<$crate::client::KillOutcome>, $crate::AgentError> {
            let req = $crate::Request::Kill {
                account: account.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::Killed {
                    method,
                    pids_signalled,
                    emptied,
                    ..
                } => Ok($crate::client::Outcome::Done($crate::client::KillOutcome {
                    method,
                    pids_signalled,
                    emptied,
                })),
                $crate::Reply::Skipped { reason, .. } => {
                    Ok($crate::client::Outcome::Skipped(reason))
                }
                other => Err($crate::client::unexpected("kill", &other)),
            }
        }

        /// Removes the account's cgroup; `Done(false)` if there was none.
        pub async fn remove(
            &self,
            account: &$crate::AccountName,
        ) -> Result<$crate::client::Outcome<bool>, $crate::AgentError> {
            let req = $crate::Request::Remove {
                account: account.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::Removed { existed, .. } => {
                    Ok($crate::client::Outcome::Done(existed))
                }
                $crate::Reply::Skipped { reason, .. } => {
                    Ok($crate::client::Outcome::Skipped(reason))
                }
                other => Err($crate::client::unexpected("remove", &other)),
            }
        }

        pub async fn usage(
            &self,
            account: &$crate::AccountName,
        ) -> Result<$crate::client::Outcome<$crate::protocol::Usage>, $crate::AgentError> {
            let req = $crate::Request::Usage {
                account: account.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::Usage(u) => Ok($crate::client::Outcome::Done(u)),
                $crate::Reply::Skipped { reason, .. } => {
                    Ok($crate::client::Outcome::Skipped(reason))
                }
                other => Err($crate::client::unexpected("usage", &other)),
            }
        }

        pub async fn disk_usage(
            &self,
            account: &$crate::AccountName,
        ) -> Result<$crate::protocol::DiskUsage, $crate::AgentError> {
            let req = $crate::Request::DiskUsage {
                account: account.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::DiskUsage(d) => Ok(d),
                other => Err($crate::client::unexpected("disk_usage", &other)),
            }
        }

        /// Creates the account's home directory; returns its path.
        pub async fn prepare_home(
            &self,
            account: &$crate::AccountName,
            uid: u32,
            gid: u32,
        ) -> Result<std::path::PathBuf, $crate::AgentError> {
            let req = $crate::Request::PrepareHome {
                account: account.clone(),
                uid,
                gid,
            };
            match self.call(req).await? {
                $crate::Reply::HomePrepared { path, .. } => Ok(std::path::PathBuf::from(path)),
                other => Err($crate::client::unexpected("prepare_home", &other)),
            }
        }

        /// Creates the login user (or answers the existing one's ids);
        /// `home_layout` also builds the domain-independent home layout.
        pub async fn create_user(
            &self,
            account: &$crate::AccountName,
            home_layout: bool,
        ) -> Result<$crate::protocol::UserCreated, $crate::AgentError> {
            let req = $crate::Request::CreateUser {
                account: account.clone(),
                home_layout,
            };
            match self.call(req).await? {
                $crate::Reply::UserCreated(u) => Ok(u),
                other => Err($crate::client::unexpected("create_user", &other)),
            }
        }

        /// Locks the login (password and keys).
        pub async fn lock_user(
            &self,
            account: &$crate::AccountName,
        ) -> Result<(), $crate::AgentError> {
            let req = $crate::Request::LockUser {
                account: account.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::UserLocked { .. } => Ok(()),
                other => Err($crate::client::unexpected("lock_user", &other)),
            }
        }

        pub async fn unlock_user(
            &self,
            account: &$crate::AccountName,
        ) -> Result<(), $crate::AgentError> {
            let req = $crate::Request::UnlockUser {
                account: account.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::UserUnlocked { .. } => Ok(()),
                other => Err($crate::client::unexpected("unlock_user", &other)),
            }
        }

        /// Deletes the login user; `false` if there was none.
        pub async fn delete_user(
            &self,
            account: &$crate::AccountName,
        ) -> Result<bool, $crate::AgentError> {
            let req = $crate::Request::DeleteUser {
                account: account.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::UserDeleted { existed, .. } => Ok(existed),
                other => Err($crate::client::unexpected("delete_user", &other)),
            }
        }

        pub async fn set_password(
            &self,
            account: &$crate::AccountName,
            password: &$crate::names::Password,
        ) -> Result<(), $crate::AgentError> {
            let req = $crate::Request::SetPassword {
                account: account.clone(),
                password: password.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::PasswordSet { .. } => Ok(()),
                other => Err($crate::client::unexpected("set_password", &other)),
            }
        }

        /// The cPanel-compatible home layout for `domain`, owned `uid:gid`.
        pub async fn build_home(
            &self,
            account: &$crate::AccountName,
            uid: u32,
            gid: u32,
            domain: &$crate::names::Domain,
        ) -> Result<$crate::protocol::HomeBuilt, $crate::AgentError> {
            let req = $crate::Request::BuildHome {
                account: account.clone(),
                uid,
                gid,
                domain: domain.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::HomeBuilt(h) => Ok(h),
                other => Err($crate::client::unexpected("build_home", &other)),
            }
        }

        pub async fn write_zone(
            &self,
            account: &$crate::AccountName,
            domain: &$crate::names::Domain,
            ipv4: std::net::Ipv4Addr,
        ) -> Result<$crate::protocol::ZoneWritten, $crate::AgentError> {
            let req = $crate::Request::WriteZone {
                account: account.clone(),
                domain: domain.clone(),
                ipv4,
            };
            match self.call(req).await? {
                $crate::Reply::ZoneWritten(z) => Ok(z),
                other => Err($crate::client::unexpected("write_zone", &other)),
            }
        }

        /// Removes the zone (only `account`'s, when given); `false` if there
        /// was none.
        pub async fn remove_zone(
            &self,
            domain: &$crate::names::Domain,
            account: Option<&$crate::AccountName>,
        ) -> Result<bool, $crate::AgentError> {
            let req = $crate::Request::RemoveZone {
                domain: domain.clone(),
                account: account.cloned(),
            };
            match self.call(req).await? {
                $crate::Reply::ZoneRemoved { existed, .. } => Ok(existed),
                other => Err($crate::client::unexpected("remove_zone", &other)),
            }
        }

        /// Writes the security fragments; `cron` defaults to allowed.
        pub async fn write_security(
            &self,
            account: &$crate::AccountName,
            profile: $crate::protocol::SecurityProfile,
            cron: Option<bool>,
        ) -> Result<$crate::protocol::SecurityWritten, $crate::AgentError> {
            let req = $crate::Request::WriteSecurity {
                account: account.clone(),
                profile,
                cron,
                settings: None,
            };
            match self.call(req).await? {
                $crate::Reply::SecurityWritten(s) => Ok(s),
                other => Err($crate::client::unexpected("write_security", &other)),
            }
        }

        /// Sets or clears the suspended flag; returns whether it changed.
        pub async fn set_suspended(
            &self,
            account: &$crate::AccountName,
            suspended: bool,
        ) -> Result<bool, $crate::AgentError> {
            let req = $crate::Request::SetSuspended {
                account: account.clone(),
                suspended,
            };
            match self.call(req).await? {
                $crate::Reply::SuspensionSet { changed, .. } => Ok(changed),
                other => Err($crate::client::unexpected("set_suspended", &other)),
            }
        }

        /// Sets the disk quota where the host enforces quotas (`applied`),
        /// else answers `skipped` with the reason.
        pub async fn set_quota(
            &self,
            account: &$crate::AccountName,
            disk_mb: Option<u64>,
        ) -> Result<$crate::protocol::QuotaReport, $crate::AgentError> {
            let req = $crate::Request::SetQuota {
                account: account.clone(),
                disk_mb,
            };
            match self.call(req).await? {
                $crate::Reply::Quota(q) => Ok(q),
                other => Err($crate::client::unexpected("set_quota", &other)),
            }
        }

        /// Archives the home (`manifest`, when given, first as
        /// `manifest.json`); returns where and how big.
        pub async fn backup_home(
            &self,
            account: &$crate::AccountName,
            manifest: Option<serde_json::Value>,
        ) -> Result<$crate::protocol::HomeBackup, $crate::AgentError> {
            let req = $crate::Request::BackupHome {
                account: account.clone(),
                manifest,
            };
            match self.call(req).await? {
                $crate::Reply::HomeBackedUp(b) => Ok(b),
                other => Err($crate::client::unexpected("backup_home", &other)),
            }
        }

        /// Deletes the home tree; `false` if there was none.
        pub async fn remove_home(
            &self,
            account: &$crate::AccountName,
        ) -> Result<bool, $crate::AgentError> {
            let req = $crate::Request::RemoveHome {
                account: account.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::HomeRemoved { existed, .. } => Ok(existed),
                other => Err($crate::client::unexpected("remove_home", &other)),
            }
        }

        /// Creates the mailbox `mailbox@domain` (Maildir, `passwd` and
        /// `shadow` lines), or sets its password again (`created: false`).
        pub async fn create_mailbox(
            &self,
            account: &$crate::AccountName,
            domain: &$crate::names::Domain,
            mailbox: &$crate::names::Mailbox,
            password: &$crate::names::Password,
        ) -> Result<$crate::protocol::MailboxCreated, $crate::AgentError> {
            let req = $crate::Request::CreateMailbox {
                account: account.clone(),
                domain: domain.clone(),
                mailbox: mailbox.clone(),
                password: password.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::MailboxCreated(m) => Ok(m),
                other => Err($crate::client::unexpected("create_mailbox", &other)),
            }
        }

        /// Removes the mailbox (its lines and its Maildir); `false` if there
        /// was none.
        pub async fn delete_mailbox(
            &self,
            account: &$crate::AccountName,
            domain: &$crate::names::Domain,
            mailbox: &$crate::names::Mailbox,
        ) -> Result<bool, $crate::AgentError> {
            let req = $crate::Request::DeleteMailbox {
                account: account.clone(),
                domain: domain.clone(),
                mailbox: mailbox.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::MailboxDeleted { existed, .. } => Ok(existed),
                other => Err($crate::client::unexpected("delete_mailbox", &other)),
            }
        }

        /// The mailbox names of `domain`, sorted.
        pub async fn list_mailboxes(
            &self,
            account: &$crate::AccountName,
            domain: &$crate::names::Domain,
        ) -> Result<Vec<$crate::names::Mailbox>, $crate::AgentError> {
            let req = $crate::Request::ListMailboxes {
                account: account.clone(),
                domain: domain.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::Mailboxes { mailboxes, .. } => Ok(mailboxes),
                other => Err($crate::client::unexpected("list_mailboxes", &other)),
            }
        }

        /// Writes the account's mail policy and the Exim ACL from every policy (checked by
        /// `exim -bV` where Exim is installed, then swapped in and Exim reloaded).
        pub async fn write_mail_policy(
            &self,
            account: &$crate::AccountName,
            policy: $crate::mailpolicy::MailPolicy,
            domains: Vec<$crate::names::Domain>,
        ) -> Result<$crate::mailpolicy::MailPolicyReport, $crate::AgentError> {
            let req = $crate::Request::WriteMailPolicy {
                account: account.clone(),
                policy,
                domains,
            };
            match self.call(req).await? {
                $crate::Reply::MailPolicyWritten(r) => Ok(r),
                other => Err($crate::client::unexpected("write_mail_policy", &other)),
            }
        }

        /// Removes the account's mail policy and its ACL stanza (`changed: false` if none).
        pub async fn remove_mail_policy(
            &self,
            account: &$crate::AccountName,
        ) -> Result<$crate::mailpolicy::MailPolicyReport, $crate::AgentError> {
            let req = $crate::Request::RemoveMailPolicy {
                account: account.clone(),
            };
            match self.call(req).await? {
                $crate::Reply::MailPolicyRemoved(r) => Ok(r),
                other => Err($crate::client::unexpected("remove_mail_policy", &other)),
            }
        }
    };
}
pub(crate) use typed_host_ops;

#[doc(hidden)]
pub fn unexpected(op: &str, reply: &Reply) -> AgentError {
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
