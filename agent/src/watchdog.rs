//! The watchdog: keeps one agent process alive, and says why it was not.
//!
//! It launches the agent itself (a configured argv), keeps the last
//! [`LOG_TAIL_LINES`] lines of its stdout/stderr in a ring buffer, pings it
//! every `ping_interval` (timeout `ping_timeout`), and on a failed ping waits
//! `confirm_delay` and pings again. A second failure, an exit of the agent,
//! or an agent that does not come up within `startup_timeout` is a failure:
//! the agent is SIGKILLed if still there, the failure is appended as one JSON
//! line to `<data_dir>/failures.jsonl` (time, reason, exit status or signal,
//! log tail) and counted in [`METRIC_FAILURES`], and the agent is restarted
//! ([`METRIC_RESTARTS`]). After `max_restarts` restarts within the sliding
//! `window` it gives up: logs at error level, records a `give_up` line and
//! [`run`] returns [`Outcome::GaveUp`] (the binary exits non-zero).

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::client::AgentClient;
use crate::error::AgentError;
use std::os::unix::fs::OpenOptionsExt;

/// Counter: agent restarts done by the watchdog.
pub const METRIC_RESTARTS: &str = "npanel_agent_restarts_total";
/// Counter: agent failures seen, label `reason`.
pub const METRIC_FAILURES: &str = "npanel_agent_failures_total";
/// Counter: times the watchdog gave up.
pub const METRIC_GAVE_UP: &str = "npanel_agent_watchdog_gave_up_total";
/// Lines of agent output kept for a failure record.
pub const LOG_TAIL_LINES: usize = 100;
/// File (under the data dir) the failure records go to.
pub const FAILURES_FILE: &str = "failures.jsonl";
/// Prometheus text file (under the data dir) with the watchdog's counters, rewritten atomically
/// after every failure: point node_exporter's textfile collector at it. The watchdog has no
/// HTTP server on purpose (small, nothing listening beside a root process).
pub const METRICS_FILE: &str = "watchdog.prom";

/// The watchdog's counters, mirrored to [`METRICS_FILE`].
#[derive(Debug, Default)]
struct Counters {
    failures: std::collections::BTreeMap<&'static str, u64>,
    restarts: u64,
    gave_up: u64,
}

impl Counters {
    fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "# HELP {METRIC_FAILURES} Agent failures seen by the watchdog, by reason.\n# TYPE {METRIC_FAILURES} counter\n"
        ));
        for reason in ["exited", "unresponsive", "startup_timeout", "spawn_failed"] {
            let n = self.failures.get(reason).copied().unwrap_or(0);
            out.push_str(&format!("{METRIC_FAILURES}{{reason=\"{reason}\"}} {n}\n"));
        }
        out.push_str(&format!(
            "# HELP {METRIC_RESTARTS} Agent restarts done by the watchdog.\n# TYPE {METRIC_RESTARTS} counter\n{METRIC_RESTARTS} {}\n",
            self.restarts
        ));
        out.push_str(&format!(
            "# HELP {METRIC_GAVE_UP} Times the watchdog gave up (restart cap reached).\n# TYPE {METRIC_GAVE_UP} counter\n{METRIC_GAVE_UP} {}\n",
            self.gave_up
        ));
        out
    }

    fn write(&self, dir: &std::path::Path) {
        // A fresh, exclusively created temp file (never an existing path or a symlink: the
        // watchdog runs as root), then an atomic rename over the real name.
        let tmp = dir.join(format!("{METRICS_FILE}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let res = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&tmp)
            .and_then(|mut f| f.write_all(self.render().as_bytes()))
            .and_then(|_| std::fs::rename(&tmp, dir.join(METRICS_FILE)));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            tracing::error!("cannot write {METRICS_FILE}: {e}");
        }
    }
}

/// Watchdog settings; the defaults are those of DESIGN §6.
#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    /// The agent's argv (program first).
    pub agent_command: Vec<String>,
    /// The agent's socket.
    pub socket: PathBuf,
    /// Where `failures.jsonl` goes.
    pub data_dir: PathBuf,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub confirm_delay: Duration,
    pub startup_timeout: Duration,
    pub restart_delay: Duration,
    pub max_restarts: usize,
    pub window: Duration,
    /// Copy the agent's output lines to the watchdog's stderr.
    pub echo_agent_output: bool,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            agent_command: vec!["/usr/local/bin/npanel-agent".into()],
            socket: crate::config::DEFAULT_SOCKET_PATH.into(),
            data_dir: "/var/lib/npanel-watchdog".into(),
            ping_interval: Duration::from_secs(2),
            ping_timeout: Duration::from_secs(1),
            confirm_delay: Duration::from_secs(3),
            startup_timeout: Duration::from_secs(10),
            restart_delay: Duration::from_millis(100),
            max_restarts: 5,
            window: Duration::from_secs(3600),
            echo_agent_output: true,
        }
    }
}

/// Why the agent was declared failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The agent process exited (or was killed by someone else).
    Exited,
    /// Two pings `confirm_delay` apart both failed: hung.
    Unresponsive,
    /// It never answered within `startup_timeout`.
    StartupTimeout,
    /// It could not be started at all.
    SpawnFailed,
}

impl FailureReason {
    fn as_str(self) -> &'static str {
        match self {
            FailureReason::Exited => "exited",
            FailureReason::Unresponsive => "unresponsive",
            FailureReason::StartupTimeout => "startup_timeout",
            FailureReason::SpawnFailed => "spawn_failed",
        }
    }
}

/// What was done about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    Restart,
    GiveUp,
}

/// One line of `failures.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub time_unix_ms: u64,
    /// The same instant as RFC 3339 UTC.
    pub time: String,
    pub reason: FailureReason,
    pub detail: String,
    pub agent_pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Restarts within the window before this failure.
    pub restarts_in_window: usize,
    pub action: FailureAction,
    /// Last lines of the agent's stdout/stderr.
    pub log_tail: Vec<String>,
}

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Shut down on request (the agent was stopped with SIGTERM).
    Stopped,
    /// Too many restarts within the window.
    GaveUp { restarts: usize },
}

struct Failure {
    reason: FailureReason,
    detail: String,
    status: Option<ExitStatus>,
}

enum Supervised {
    Failed(Failure),
    Stopped,
}

type Ring = Arc<Mutex<VecDeque<String>>>;

/// Runs the watchdog until shutdown or until it gives up. `current_pid` is
/// kept at the running agent's pid (0 while there is none), e.g. so a SIGHUP
/// can be forwarded to it.
pub async fn run(
    cfg: WatchdogConfig,
    shutdown: CancellationToken,
    current_pid: Arc<AtomicU32>,
) -> Result<Outcome, AgentError> {
    if cfg.agent_command.is_empty() {
        return Err(AgentError::Config("the agent command is empty".into()));
    }
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| AgentError::io(&cfg.data_dir, e))?;
    check_data_dir(&cfg.data_dir)?;
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    let mut counters = Counters::default();
    counters.write(&cfg.data_dir);
    loop {
        let ring: Ring = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL_LINES)));
        let mut readers = Vec::new();
        let mut cmd = Command::new(&cfg.agent_command[0]);
        cmd.args(&cfg.agent_command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut agent_pid = None;
        let (mut child, supervised) = match cmd.spawn() {
            Ok(mut child) => {
                agent_pid = child.id();
                current_pid.store(agent_pid.unwrap_or(0), Ordering::SeqCst);
                if let Some(out) = child.stdout.take() {
                    readers.push(tokio::spawn(pump(out, ring.clone(), cfg.echo_agent_output)));
                }
                if let Some(err) = child.stderr.take() {
                    readers.push(tokio::spawn(pump(err, ring.clone(), cfg.echo_agent_output)));
                }
                tracing::info!(pid = ?child.id(), "agent started");
                let s = supervise(&mut child, &cfg, &shutdown).await;
                (Some(child), s)
            }
            Err(e) => (
                None,
                Supervised::Failed(Failure {
                    reason: FailureReason::SpawnFailed,
                    detail: format!("cannot start {:?}: {e}", cfg.agent_command),
                    status: None,
                }),
            ),
        };

        current_pid.store(0, Ordering::SeqCst);
        let mut failure = match supervised {
            Supervised::Stopped => {
                if let Some(child) = child.as_mut() {
                    stop_child(child).await;
                }
                return Ok(Outcome::Stopped);
            }
            Supervised::Failed(f) => f,
        };
        if let Some(child) = child.as_mut() {
            if failure.status.is_none() {
                // Hung or never came up: no second chance, SIGKILL.
                let _ = child.start_kill();
                failure.status = child.wait().await.ok();
            }
        }
        for r in readers {
            let _ = tokio::time::timeout(Duration::from_millis(500), r).await;
        }
        let log_tail: Vec<String> = ring
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();

        let now = Instant::now();
        while restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > cfg.window)
        {
            restarts.pop_front();
        }
        let give_up = restarts.len() >= cfg.max_restarts;
        let record = FailureRecord {
            time_unix_ms: unix_ms(),
            time: rfc3339(SystemTime::now()),
            reason: failure.reason,
            detail: failure.detail.clone(),
            agent_pid,
            exit_code: failure.status.and_then(|s| s.code()),
            signal: failure.status.and_then(|s| s.signal()),
            restarts_in_window: restarts.len(),
            action: if give_up {
                FailureAction::GiveUp
            } else {
                FailureAction::Restart
            },
            log_tail,
        };
        metrics::counter!(METRIC_FAILURES, "reason" => failure.reason.as_str()).increment(1);
        *counters
            .failures
            .entry(failure.reason.as_str())
            .or_default() += 1;
        if let Err(e) = append_record(&cfg, &record) {
            tracing::error!("cannot record the failure: {e}");
        }
        if give_up {
            metrics::counter!(METRIC_GAVE_UP).increment(1);
            counters.gave_up += 1;
            counters.write(&cfg.data_dir);
            tracing::error!(
                restarts = restarts.len(),
                window_s = cfg.window.as_secs(),
                reason = failure.reason.as_str(),
                "agent failed again after {} restarts within {:?}: giving up",
                restarts.len(),
                cfg.window
            );
            return Ok(Outcome::GaveUp {
                restarts: restarts.len(),
            });
        }
        tracing::warn!(
            reason = failure.reason.as_str(),
            status = ?failure.status,
            "agent failed: {}; restarting",
            failure.detail
        );
        restarts.push_back(Instant::now());
        metrics::counter!(METRIC_RESTARTS).increment(1);
        counters.restarts += 1;
        counters.write(&cfg.data_dir);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Outcome::Stopped),
            _ = tokio::time::sleep(cfg.restart_delay) => {}
        }
    }
}

async fn supervise(
    child: &mut Child,
    cfg: &WatchdogConfig,
    shutdown: &CancellationToken,
) -> Supervised {
    let client = AgentClient::new(&cfg.socket, cfg.ping_timeout);

    // Startup: poll until it answers.
    let deadline = Instant::now() + cfg.startup_timeout;
    loop {
        if let Some(end) = pause(child, shutdown, Duration::from_millis(20)).await {
            return end;
        }
        let last_err = match client.ping().await {
            Ok(p) => {
                tracing::info!(pid = p.pid, "agent answers");
                break;
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Supervised::Failed(Failure {
                reason: FailureReason::StartupTimeout,
                detail: format!(
                    "agent did not answer within {:?} of starting: {last_err}",
                    cfg.startup_timeout
                ),
                status: None,
            });
        }
    }

    loop {
        if let Some(end) = pause(child, shutdown, cfg.ping_interval).await {
            return end;
        }
        let first = match client.ping().await {
            Ok(_) => continue,
            Err(e) => e,
        };
        tracing::warn!(
            "ping failed: {first}; confirming in {:?}",
            cfg.confirm_delay
        );
        if let Some(end) = pause(child, shutdown, cfg.confirm_delay).await {
            return end;
        }
        match client.ping().await {
            Ok(_) => tracing::info!("agent answers again; no restart"),
            Err(second) => {
                return Supervised::Failed(Failure {
                    reason: FailureReason::Unresponsive,
                    detail: format!(
                        "ping failed ({first}) and again {:?} later ({second})",
                        cfg.confirm_delay
                    ),
                    status: None,
                })
            }
        }
    }
}

/// Sleeps for `d`; `Some` if shutdown was requested or the agent exited meanwhile.
async fn pause(child: &mut Child, shutdown: &CancellationToken, d: Duration) -> Option<Supervised> {
    tokio::select! {
        _ = shutdown.cancelled() => Some(Supervised::Stopped),
        status = child.wait() => Some(Supervised::Failed(Failure {
            reason: FailureReason::Exited,
            detail: match &status {
                Ok(s) => format!("agent exited: {s}"),
                Err(e) => format!("cannot wait for the agent: {e}"),
            },
            status: status.ok(),
        })),
        _ = tokio::time::sleep(d) => None,
    }
}

/// SIGTERM, then SIGKILL after 5 s.
async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

async fn pump<R: AsyncRead + Unpin>(reader: R, ring: Ring, echo: bool) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if echo {
            eprintln!("[agent] {line}");
        }
        if let Ok(mut r) = ring.lock() {
            if r.len() == LOG_TAIL_LINES {
                r.pop_front();
            }
            r.push_back(line);
        }
    }
}

/// Running as root, the watchdog writes only into a directory nobody else can change: owned
/// by root, not a symlink, not writable by group or others (else an unprivileged user could
/// plant links that make root overwrite arbitrary files).
fn check_data_dir(dir: &std::path::Path) -> Result<(), AgentError> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| AgentError::io(dir, e))?;
    if !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0 {
        return Err(AgentError::Config(format!(
            "the watchdog's data dir {} must be a directory owned by root and not writable by group or others",
            dir.display()
        )));
    }
    Ok(())
}

fn append_record(cfg: &WatchdogConfig, record: &FailureRecord) -> Result<(), AgentError> {
    let path = cfg.data_dir.join(FAILURES_FILE);
    let mut line =
        serde_json::to_string(record).map_err(|e| AgentError::Internal(e.to_string()))?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&path)
        .map_err(|e| AgentError::io(&path, e))?;
    f.write_all(line.as_bytes())
        .map_err(|e| AgentError::io(&path, e))?;
    f.sync_data().map_err(|e| AgentError::io(&path, e))
}

/// Reads all records of a failures file.
pub fn read_records(path: &std::path::Path) -> Result<Vec<FailureRecord>, AgentError> {
    let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| AgentError::Protocol(format!("{l:?}: {e}"))))
        .collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, e.g. `2024-05-01T12:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_250); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.250Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000Z");
    }
}
