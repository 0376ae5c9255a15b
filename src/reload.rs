//! Live reconfiguration (SIGHUP), configuration versions, and the listening socket that
//! survives a restart.
//!
//! # SIGHUP
//! `npanel serve` (and `npanel worker`) re-read the configuration exactly as at start — the
//! file, `config.env`, the environment, the flags — and validate it. An invalid one is refused:
//! the running configuration stays, the reason is logged at `error` and audited
//! (`config_reload_refused`, result `failure`). A valid one is applied where that can be done
//! while serving:
//! - `log` — through the `tracing_subscriber` reload handle (unless `RUST_LOG` is set, which
//!   wins at start and therefore on reload too);
//! - `api.rate_limit.*` — the governor limiters are replaced (a changed limit starts afresh);
//! - `ws.max_connections`, `ws.max_per_tenant` — the hub's caps (open sockets stay);
//! - `queue.limits.*` — each kind whose configured limit changed gets it as its runtime limit in
//!   Redis, exactly as `npanel admin concurrency set` does, so every worker process follows;
//!   kinds whose configured limit did not change keep whatever an admin set at runtime.
//!
//! Every other setting that differs is logged as "needs a restart" (and listed in the audit
//! record); it stays at its running value and is reported again on the next reload until the
//! process restarts. A reload that changed something is audited (`config_reloaded`, before and
//! after of each changed key, secrets redacted) and recorded as a configuration version.
//!
//! # Versions
//! At start and after each applied reload the configuration is recorded in the store
//! (`store::NewConfigVersion`; what is kept is described in [`crate::config`]) when it differs
//! from the newest version. `npanel config rollback` writes an older version's file back; it
//! finds the running `serve` through the pid file `<data_dir>/npanel.pid` and sends it SIGHUP.
//!
//! # Restarts that drop nothing
//! When systemd passes a listening socket (`LISTEN_PID`/`LISTEN_FDS`, fd 3: `npanel.socket`),
//! `serve` accepts on it instead of binding ([`inherited_listener`]). The socket then belongs to
//! systemd and outlives the process: during a restart new connections wait in its backlog and
//! are accepted by the next process; SIGTERM stops accepting, lets in-flight requests finish and
//! closes WebSockets (1001), whose clients reconnect with `?since=` and miss nothing. The check
//! is hand-written on top of `sd-notify` (already a dependency of the agent, and the crate
//! DESIGN §9 names for systemd), which validates `LISTEN_PID` and sets close-on-exec; turning
//! the descriptor into a listener is one `unsafe` line, after which the descriptor is checked to
//! be a listening TCP socket.

use crate::config::{flatten, Config, Overrides};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// The log filter, changeable while running.
#[derive(Clone)]
pub struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: it keeps precedence over `log`.
    rust_log: bool,
}

impl std::fmt::Debug for Logging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logging")
            .field("rust_log", &self.rust_log)
            .finish()
    }
}

impl Logging {
    /// Install the global subscriber: `RUST_LOG` when set and valid, else `log`; to stderr.
    pub fn init(log: &str) -> Logging {
        let from_env = EnvFilter::try_from_env("RUST_LOG").ok();
        let rust_log = from_env.is_some();
        let filter = from_env.unwrap_or_else(|| EnvFilter::new(log));
        let (layer, handle) = reload::Layer::new(filter);
        tracing_subscriber::registry()
            .with(layer)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init();
        Logging { handle, rust_log }
    }

    /// Use `log` from now on. `Ok(false)`: `RUST_LOG` rules, nothing changed.
    pub fn set(&self, log: &str) -> Result<bool, String> {
        if self.rust_log {
            return Ok(false);
        }
        let f = EnvFilter::try_new(log).map_err(|e| e.to_string())?;
        self.handle.reload(f).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

/// Settings applied while running; anything else needs a restart.
fn is_live(key: &str) -> bool {
    key == "log"
        || key.starts_with("api.rate_limit.")
        || key == "ws.max_connections"
        || key == "ws.max_per_tenant"
        || key.starts_with("queue.limits.")
}

/// What a reload did.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    /// Keys applied live: (key, before, after).
    pub live: Vec<(String, String, String)>,
    /// Keys that differ from the running values but need a restart: (key, running, file).
    pub restart: Vec<(String, String, String)>,
    /// Live keys that could not be applied, with why.
    pub failed: Vec<String>,
    /// The configuration version recorded, if a new one was.
    pub version: Option<i64>,
}

/// Everything a reload touches. One per process.
pub struct Live {
    file: Option<PathBuf>,
    flags: Overrides,
    logging: Option<Logging>,
    queue: queue::Queue,
    state: Option<api::AppState>,
    store: Option<store::Store>,
    /// The configuration in force: the start one with the live keys of each reload applied.
    running: tokio::sync::Mutex<Config>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("file", &self.file).finish()
    }
}

/// Who applies configurations in this process, for versions and audit records.
fn actor() -> String {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    format!("npanel serve pid {} (user {user})", std::process::id())
}

/// The record of `cfg` as loaded from `file`, for the store.
pub fn version_of(cfg: &Config, file: Option<&Path>, reason: &str) -> store::NewConfigVersion {
    let file_text = file
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|t| crate::config::redact_file_text(&t).unwrap_or_else(|_| "# (not TOML)\n".into()));
    store::NewConfigVersion {
        binary_version: env!("CARGO_PKG_VERSION").into(),
        actor: actor(),
        reason: reason.into(),
        file_path: file.map(|f| {
            std::path::absolute(f)
                .unwrap_or_else(|_| f.to_path_buf())
                .display()
                .to_string()
        }),
        file_text,
        effective: cfg.to_redacted_toml(),
        defaults: crate::config::defaults_flat(),
    }
}

impl Live {
    /// Reload state for a process started with `cfg` from `file` and `flags`.
    pub fn new(
        cfg: Config,
        file: Option<PathBuf>,
        flags: Overrides,
        logging: Option<Logging>,
        queue: queue::Queue,
        state: Option<api::AppState>,
        store: Option<store::Store>,
    ) -> Live {
        Live {
            file,
            flags,
            logging,
            queue,
            state,
            store,
            running: tokio::sync::Mutex::new(cfg),
        }
    }

    /// Record the running configuration as a version (at start). Failures are logged: a store
    /// that is down must not stop the service.
    pub async fn record(&self, reason: &str) -> Option<i64> {
        let cfg = self.running.lock().await.clone();
        self.record_config(&cfg, reason).await
    }

    /// Record `cfg` (as loaded from the file: what applies now, or after the next restart for
    /// the settings that need one) unless the newest version is the same.
    async fn record_config(&self, cfg: &Config, reason: &str) -> Option<i64> {
        let store = self.store.as_ref()?;
        let v = version_of(cfg, self.file.as_deref(), reason);
        match store.record_config_version(&v).await {
            Ok(Some(n)) => {
                info!(
                    version = n,
                    reason, "Configuration recorded as version {n}."
                );
                Some(n)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "Could not record the configuration version.");
                None
            }
        }
    }

    /// Re-read and apply (see the module docs). `Err`: refused, the running one kept.
    #[tracing::instrument(skip(self), name = "config_reload")]
    pub async fn reload(&self) -> Result<Applied, String> {
        let new = match Config::load(self.file.as_deref(), &self.flags) {
            Ok(c) => c,
            Err(e) => {
                let reason = e.to_string();
                error!(reason = %reason, "Configuration reload refused; the running configuration is kept.");
                self.audit("config_reload_refused", "failure", |r| {
                    r.related_logs = vec![reason.clone()];
                    r.changes = serde_json::json!({"error": reason});
                })
                .await;
                return Err(reason);
            }
        };
        let mut running = self.running.lock().await;
        let (before, after) = (flatten(&running), flatten(&new));
        let mut keys: std::collections::BTreeSet<&String> = before.keys().collect();
        keys.extend(after.keys());
        let unset = || "unset".to_string();
        let mut applied = Applied::default();
        for k in keys {
            let (b, a) = (before.get(k), after.get(k));
            if b == a {
                continue;
            }
            let row = (
                k.clone(),
                b.cloned().unwrap_or_else(unset),
                a.cloned().unwrap_or_else(unset),
            );
            if is_live(k) {
                applied.live.push(row);
            } else {
                applied.restart.push(row);
            }
        }
        // Apply the live part.
        if running.log != new.log {
            match self.logging.as_ref().map(|l| l.set(&new.log)) {
                Some(Ok(true)) | None => {}
                Some(Ok(false)) => applied
                    .failed
                    .push("log: RUST_LOG is set and keeps precedence".into()),
                Some(Err(e)) => applied.failed.push(format!("log: {e}")),
            }
            running.log = new.log.clone();
        }
        if let Some(st) = &self.state {
            st.set_rate_limits(&new.api.rate_limit);
            st.hub
                .set_caps(new.ws.max_connections, new.ws.max_per_tenant);
        }
        running.api.rate_limit = new.api.rate_limit.clone();
        running.ws.max_connections = new.ws.max_connections;
        running.ws.max_per_tenant = new.ws.max_per_tenant;
        for kind in queue::JobKind::ALL {
            let (was, now) = (
                running.queue.default_limit(kind),
                new.queue.default_limit(kind),
            );
            if was == now {
                continue;
            }
            match self.queue.set_limit(kind, now).await {
                Ok(()) => {}
                Err(e) => applied
                    .failed
                    .push(format!("queue.limits.{}: {e}", kind.as_str())),
            }
        }
        if applied
            .failed
            .iter()
            .all(|f| !f.starts_with("queue.limits."))
        {
            running.queue.limits = new.queue.limits.clone();
        }
        for (k, was, now) in &applied.restart {
            warn!(key = %k, running = %was, configured = %now, "Setting changed but needs a restart to take effect.");
        }
        for f in &applied.failed {
            warn!(problem = %f, "A live setting could not be applied.");
        }
        let changed_live: Vec<String> = applied.live.iter().map(|(k, ..)| k.clone()).collect();
        info!(
            live = ?changed_live,
            needs_restart = applied.restart.len(),
            "Configuration reloaded."
        );
        drop(running);
        // The file may differ from the newest version even when nothing differs from what is
        // running (a rollback to values still pending a restart): recorded either way.
        applied.version = self.record_config(&new, "reload").await;
        if !applied.live.is_empty() || !applied.restart.is_empty() {
            let (b, a): (BTreeMap<_, _>, BTreeMap<_, _>) = applied
                .live
                .iter()
                .chain(&applied.restart)
                .map(|(k, b, a)| ((k.clone(), b.clone()), (k.clone(), a.clone())))
                .unzip();
            let restart: Vec<String> = applied
                .restart
                .iter()
                .map(|(k, ..)| format!("{k} needs a restart"))
                .chain(applied.failed.iter().cloned())
                .collect();
            let version = applied.version;
            self.audit("config_reloaded", "success", |r| {
                r.changes = serde_json::json!({"before": b, "after": a});
                r.related_logs = restart;
                r.resource =
                    serde_json::json!({"type": "config", "id": version.map(|v| v.to_string())});
            })
            .await;
        }
        Ok(applied)
    }

    async fn audit(&self, action: &str, result: &str, fill: impl FnOnce(&mut store::NewAudit)) {
        let mut r = store::NewAudit::new(
            action,
            store::Actor {
                kind: "system".into(),
                id: "npanel serve".into(),
                ..store::Actor::default()
            },
            result,
        );
        r.resource = serde_json::json!({"type": "config", "id": null});
        r.source = serde_json::json!({"method": "SIGNAL", "endpoint": "SIGHUP"});
        fill(&mut r);
        if let Some(st) = &self.state {
            st.auditor.write(r).await;
        } else if let Some(s) = &self.store {
            if let Err(e) = s.append_audit(&[r]).await {
                warn!(error = %e, "Could not write the audit record of the reload.");
            }
        }
    }
}

/// Take SIGHUP over from its default action (which ends the process). Call before anything
/// tells the world the process is up; signals that arrive before [`on_sighup`] are kept.
pub fn catch_sighup() -> anyhow::Result<tokio::signal::unix::Signal> {
    Ok(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::hangup(),
    )?)
}

/// Reload on every SIGHUP (`hup`, from [`catch_sighup`]) until `shutdown`.
pub fn on_sighup(
    live: Arc<Live>,
    mut hup: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = hup.recv() => if r.is_none() { return },
            }
            info!("SIGHUP: reloading the configuration.");
            let _ = live.reload().await;
        }
    });
}

/// `<data_dir>/npanel.pid`: how `npanel config rollback` finds the running `serve`.
pub fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("npanel.pid")
}

/// Writes the pid file; removes it on drop if it still names this process (a newer `serve`
/// started on the same socket may have written its own).
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl PidFile {
    /// Write this process's pid to `path`.
    pub fn write(path: PathBuf) -> std::io::Result<PidFile> {
        std::fs::write(&path, format!("{}\n", std::process::id()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            == Some(std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The pid in `data_dir`'s pid file if it is a running `npanel serve`.
pub fn running_serve(data_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(data_dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // A stale file may name a pid reused by something else: only an `npanel … serve` is ours.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_npanel = args
        .first()
        .is_some_and(|a| String::from_utf8_lossy(a).ends_with("npanel"));
    (is_npanel && args.contains(&b"serve".as_slice())).then_some(pid)
}

/// Wait while an upgrade's apply process holds the deploy window (`<data_dir>/upgrade.hold`,
/// see `workers::upgrade::Hold`): a start in that window — under socket activation any
/// connection makes one — must not run the binary being replaced against a store being
/// migrated or put back. Returns whether it waited; the caller then starts over from the
/// binary `current` points at now ([`restart_from_current`]). Runs before the inherited socket
/// is taken, so the socket (without close-on-exec until then) passes to the new image.
pub async fn wait_out_upgrade(data_dir: &Path) -> bool {
    let Some(pid) = workers::upgrade::holder(data_dir) else {
        return false;
    };
    warn!(
        apply_pid = pid,
        hold = %data_dir.join(workers::upgrade::HOLD_FILE).display(),
        "An upgrade is deploying (the service is meant to be stopped); waiting for it before starting."
    );
    let mut said = std::time::Instant::now();
    while workers::upgrade::holder(data_dir).is_some() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if said.elapsed() >= std::time::Duration::from_secs(30) {
            info!(
                apply_pid = pid,
                "Still waiting for the upgrade's deploy window to end."
            );
            said = std::time::Instant::now();
        }
    }
    info!("The upgrade's deploy window ended; starting over from the installed binary.");
    true
}

/// Replace this process with a fresh start of the same command line: `argv[0]` is looked up
/// again, so a swapped `current` symlink gives the new release's binary. Returns only on error.
pub fn restart_from_current() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let Some(argv0) = args.next() else {
        return anyhow::anyhow!("no argv[0] to start over from");
    };
    let err = std::process::Command::new(&argv0).args(args).exec();
    anyhow::anyhow!("cannot start over as {}: {err}", argv0.to_string_lossy())
}

/// The listening socket systemd passed (`LISTEN_PID` = this process, `LISTEN_FDS` ≥ 1, fd 3),
/// if any. An fd that is not a listening TCP socket is an error, not ignored.
pub fn inherited_listener() -> anyhow::Result<Option<std::net::TcpListener>> {
    use nix::sys::socket::{getsockopt, sockopt, SockType};
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = sd_notify::listen_fds_with_names(false)?;
    let Some((fd, name)) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        warn!(
            extra = fds.len(),
            "systemd passed more than one socket; using the first."
        );
    }
    // SAFETY: sd-notify returned fd 3 only because LISTEN_PID names this process, i.e. the
    // service manager (or a harness acting as one) opened it for us; nothing else in this
    // process owns it, and it is taken exactly once (before anything else runs).
    #[allow(unsafe_code)]
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let kind = getsockopt(&owned, sockopt::SockType)
        .map_err(|e| anyhow::anyhow!("fd {fd} from systemd is not a socket: {e}"))?;
    let listening = getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false);
    if kind != SockType::Stream || !listening {
        anyhow::bail!("fd {fd} from systemd ({name}) is not a listening stream socket");
    }
    let l = std::net::TcpListener::from(owned);
    let addr = l.local_addr().map_err(|e| {
        anyhow::anyhow!("fd {fd} from systemd ({name}) is not a TCP socket (ListenStream= must be an address): {e}")
    })?;
    l.set_nonblocking(true)?;
    info!(%addr, "Using the listening socket passed by systemd.");
    Ok(Some(l))
}
