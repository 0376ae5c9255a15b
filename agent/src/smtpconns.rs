//! The SMTP connection counter behind the mail policy's `max_connections` (DESIGN §13).
//!
//! # Why the agent counts
//! Exim can limit connections per client address (`smtp_accept_max_per_host`), not per
//! account: at connect time nobody has logged in yet. It does fork one process per
//! connection, though, so "how many connections does this account have" is "how many live
//! Exim processes have sent mail as it". The mail policy ACL ([`crate::mailpolicy`]) asks
//! this counter once per connection, with one `${readsocket}` line:
//!
//! ```text
//! acquire <account> <exim pid> <max>      →  ok | full
//! ```
//!
//! `ok` counts the process for the account (asking again from the same process is `ok`);
//! `full` means `max` other live processes are counted already, and the ACL defers the
//! recipient with 452.
//!
//! # Nothing to release
//! A connection ends when its process does, so the counter needs no "release" call that a
//! crashed process would never send: before it counts, it drops every process of the account
//! that is gone. A process is named by its pid *and* its start time (`/proc/<pid>/stat`), so a
//! recycled pid is a new process. If the counter restarts it starts empty: connections open at
//! that moment are not counted until they ask again (a short undercount, never a refusal).
//!
//! # Who may ask
//! The socket is `0666` so that Exim, which runs as its own user, can connect; the peer's
//! credentials (`SO_PEERCRED`) must be root, this process's user or Exim's user
//! (`Debian-exim` or `exim`), else the connection is closed unanswered. Otherwise any local
//! user could fill another account's slots.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::AccountName;

/// Longest request line.
const MAX_LINE: usize = 256;
/// How long one client may take to send its line.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Live connections by account: pid → the process's start time.
#[derive(Debug, Default)]
pub struct ConnCounter {
    live: Mutex<HashMap<String, HashMap<u32, u64>>>,
}

impl ConnCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts process `pid`'s connection for `account` unless `max` other live ones are
    /// counted; true when it is counted (now or before). A process that does not exist is
    /// not counted and not refused.
    pub fn acquire(&self, account: &str, pid: u32, max: u32) -> bool {
        let Some(start) = start_time(pid) else {
            return true;
        };
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let conns = live.entry(account.to_string()).or_default();
        conns.retain(|p, st| start_time(*p) == Some(*st));
        let ok = if conns.get(&pid) == Some(&start) {
            true
        } else if conns.len() >= max as usize {
            false
        } else {
            conns.insert(pid, start);
            true
        };
        if conns.is_empty() {
            live.remove(account);
        }
        ok
    }

    /// Live connections counted for `account` (gone processes dropped first).
    pub fn live(&self, account: &str) -> usize {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match live.get_mut(account) {
            Some(conns) => {
                conns.retain(|p, st| start_time(*p) == Some(*st));
                conns.len()
            }
            None => 0,
        }
    }

    /// The answer to one request line: `ok`, `full`, or `error <why>` (which the ACL treats
    /// like `ok`: a malformed question never blocks mail).
    pub fn answer(&self, line: &str) -> String {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [verb, account, pid, max] = parts.as_slice() else {
            return "error expected: acquire <account> <pid> <max>".into();
        };
        if *verb != "acquire" {
            return format!("error unknown request {verb:?}");
        }
        let Ok(account) = AccountName::parse(account) else {
            return "error not an account name".into();
        };
        let (Ok(pid), Ok(max)) = (pid.parse::<u32>(), max.parse::<u32>()) else {
            return "error pid and max must be numbers".into();
        };
        if self.acquire(account.as_str(), pid, max) {
            "ok".into()
        } else {
            tracing::info!(account = %account, pid, max, "SMTP connection over the account's maximum: deferred");
            "full".into()
        }
    }
}

/// The start time of process `pid` (clock ticks after boot, field 22 of `/proc/<pid>/stat`),
/// or `None` when there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The users whose processes may ask: root, this process's user, and Exim's.
pub fn allowed_uids() -> Vec<u32> {
    let mut uids = vec![0, nix::unistd::geteuid().as_raw()];
    for name in ["Debian-exim", "exim"] {
        if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
            uids.push(u.uid.as_raw());
        }
    }
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// Binds the counter's socket at `path` (its directory made `0755` when missing; a stale
/// socket replaced), open to every local user (the peer check is in [`serve`]).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Answers requests on `listener` until `shutdown`, one line per connection.
pub async fn serve(
    listener: UnixListener,
    counter: Arc<ConnCounter>,
    allowed: Vec<u32>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("SMTP connection counter: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match stream.peer_cred() {
            Ok(c) if allowed.contains(&c.uid()) => {}
            Ok(c) => {
                tracing::warn!(
                    uid = c.uid(),
                    "SMTP connection counter: refused a client of another user"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!("SMTP connection counter: no peer credentials: {e}");
                continue;
            }
        }
        let counter = counter.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let mut buf = Vec::with_capacity(64);
            let read = tokio::time::timeout(READ_TIMEOUT, async {
                let mut chunk = [0u8; 64];
                while buf.len() < MAX_LINE && !buf.contains(&b'\n') {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.lines().next().unwrap_or_default();
            let mut answer = counter.answer(line);
            answer.push('\n');
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Starts the counter for `cfg`'s host on its socket ([`crate::AgentConfig::conn_socket`]);
/// `None`, with a warning, when the socket cannot be bound (mail then goes on uncounted: the
/// ACL fails open).
pub fn spawn(
    cfg: &crate::AgentConfig,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let path = cfg.conn_socket();
    match bind(&path) {
        Ok(listener) => {
            tracing::info!(socket = %path.display(), "SMTP connection counter listening");
            Some(tokio::spawn(serve(
                listener,
                Arc::new(ConnCounter::new()),
                allowed_uids(),
                shutdown,
            )))
        }
        Err(e) => {
            tracing::warn!(socket = %path.display(), "SMTP connection counter not started (max_connections not enforced): {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_live_processes_up_to_the_maximum_and_forgets_the_dead() {
        let c = ConnCounter::new();
        let me = std::process::id();
        let mut a = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut b = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(c.acquire("dora", a.id(), 2));
        assert!(c.acquire("dora", a.id(), 2), "the same process again");
        assert!(c.acquire("dora", b.id(), 2));
        assert!(!c.acquire("dora", me, 2), "a third live process is over 2");
        assert!(c.acquire("eve", me, 2), "another account has its own count");
        assert_eq!(c.live("dora"), 2);
        a.kill().unwrap();
        a.wait().unwrap();
        assert_eq!(c.live("dora"), 1, "a dead process is dropped");
        assert!(c.acquire("dora", me, 2), "its slot is free again");
        b.kill().unwrap();
        b.wait().unwrap();
    }

    #[test]
    fn answers_and_malformed_lines() {
        let c = ConnCounter::new();
        let me = std::process::id();
        assert_eq!(c.answer(&format!("acquire dora {me} 1")), "ok");
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert_eq!(c.answer(&format!("acquire dora {} 1", other.id())), "full");
        assert!(c.answer("acquire").starts_with("error"));
        assert!(c.answer("release dora 1 1").starts_with("error"));
        assert!(c
            .answer(&format!("acquire ../x {me} 1"))
            .starts_with("error"));
        assert!(c.answer("acquire dora x 1").starts_with("error"));
        assert_eq!(
            c.answer("acquire dora 4294967 1"),
            "ok",
            "no such process: not counted"
        );
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn start_time_reads_past_a_command_name_with_spaces() {
        assert!(start_time(std::process::id()).is_some());
        assert!(start_time(u32::MAX).is_none());
    }
}
