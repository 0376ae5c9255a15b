//! The agent's server: Unix socket, peer credentials, typed requests.
//!
//! Each connection is served by its own task, so requests from different
//! callers run concurrently; each request gets the config's request timeout.
//! The filesystem work runs on the blocking pool. Every request takes a
//! snapshot of the current [`State`], so a config reload (SIGHUP) never
//! disturbs requests already in flight.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cgroup::{resolve_io_device, CgroupManager};
use crate::config::{parse_dev, AgentConfig};
use crate::error::AgentError;
use crate::protocol::{
    parse_request_line, ErrorCode, Pong, Reply, Request, Response, UserCreated, MAX_LINE_BYTES,
    PROTOCOL_VERSION,
};
use crate::unpack::UnpackOptions;
use crate::{backup, home, hostfiles, mail, mailpolicy, quota, restore, users};

/// Config plus what was derived from it.
#[derive(Debug)]
pub struct State {
    pub config: AgentConfig,
    pub cgroups: CgroupManager,
}

impl State {
    /// Probes the host for the config's cgroup root and home device.
    pub fn new(config: AgentConfig) -> Self {
        let cgroups = CgroupManager::open(
            &config.cgroup_root,
            Self::io_device(&config),
            config.fallback,
        );
        Self { config, cgroups }
    }

    /// A state with a cgroup manager built elsewhere (the embedded default
    /// picks its own root, see [`crate::local::LocalHost`]).
    pub fn with_cgroups(config: AgentConfig, cgroups: CgroupManager) -> Self {
        Self { config, cgroups }
    }

    /// The `io.max` device for a config: `home_device`, else the disk
    /// holding the home root.
    pub fn io_device(config: &AgentConfig) -> std::result::Result<(u32, u32), String> {
        let configured = config
            .home_device
            .as_deref()
            .and_then(|d| parse_dev(d).ok());
        resolve_io_device(configured, &config.home_root())
    }
}

/// The state shared by all connections, swappable on reload.
#[derive(Debug, Clone)]
pub struct Shared {
    inner: Arc<RwLock<Arc<State>>>,
    started: Instant,
}

impl Shared {
    pub fn new(state: State) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Arc::new(state))),
            started: Instant::now(),
        }
    }

    /// The current state (requests keep the snapshot they started with).
    pub fn current(&self) -> Arc<State> {
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the config. A config that fails validation, or that changes
    /// the socket path (which needs a restart), is refused and the old one
    /// stays.
    pub fn reload(&self, config: AgentConfig) -> Result<(), AgentError> {
        config.validate()?;
        let old = self.current();
        if config.socket_path != old.config.socket_path {
            return Err(AgentError::Config(format!(
                "socket_path cannot change on reload ({} -> {}); restart the agent",
                old.config.socket_path.display(),
                config.socket_path.display()
            )));
        }
        set_socket_owner(&config)?;
        let state = State::new(config);
        state.cgroups.log_capabilities();
        match self.inner.write() {
            Ok(mut g) => *g = Arc::new(state),
            Err(p) => *p.into_inner() = Arc::new(state),
        }
        Ok(())
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Binds the socket: creates the parent directory, removes a stale socket
/// (refusing if another agent answers on it, or if the path is not a socket),
/// and sets mode 0660 and the configured group.
pub fn bind(config: &AgentConfig) -> Result<UnixListener, AgentError> {
    let path = &config.socket_path;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| AgentError::io(parent, e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(AgentError::Busy(format!(
                    "another process is listening on {}",
                    path.display()
                )));
            }
            tracing::info!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(|e| AgentError::io(path, e))?;
        }
        Ok(_) => {
            return Err(AgentError::Config(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )))
        }
        Err(_) => {}
    }
    // Create the socket with no access for others from the start.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|e| AgentError::io(path, e))?;
    set_socket_owner(config)?;
    Ok(listener)
}

fn set_socket_owner(config: &AgentConfig) -> Result<(), AgentError> {
    let path = &config.socket_path;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| AgentError::io(path, e))?;
    if let Some(gid) = config.socket_gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| AgentError::io(path, e))?;
    }
    Ok(())
}

/// Accepts connections until `shutdown` is cancelled, then waits (up to the
/// request timeout plus a second) for in-flight requests and removes the
/// socket.
pub async fn serve(listener: UnixListener, shared: Shared, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(ConnSlots::default());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    let stop = shutdown.clone();
                    let slots = slots.clone();
                    tracker.spawn(async move { serve_connection(stream, shared, stop, slots).await });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    let state = shared.current();
    let path = state.config.socket_path.clone();
    drop(listener);
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(socket = %path.display(), "cannot remove socket: {e}");
    }
    tracker.close();
    let grace = state.config.request_timeout() + Duration::from_secs(1);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("in-flight requests did not finish within {grace:?}");
    }
    tracing::info!("server stopped");
}

/// Most connections open at once (root's are not counted, so the watchdog's ping always gets
/// through), and most per non-root uid: an allowed-but-hostile caller cannot use up the
/// agent's file descriptors.
const MAX_CONNECTIONS: usize = 256;
const MAX_CONNECTIONS_PER_UID: usize = 32;
/// A connection that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct ConnSlots {
    per_uid: std::sync::Mutex<std::collections::HashMap<u32, usize>>,
}

struct Slot(Arc<ConnSlots>, u32);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.0.per_uid.lock().expect("slots");
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

impl ConnSlots {
    fn take(self: &Arc<Self>, uid: u32) -> Option<Slot> {
        if uid == 0 {
            // never counted (the Drop of a u32::MAX slot finds nothing to decrement)
            return Some(Slot(self.clone(), u32::MAX));
        }
        let mut m = self.per_uid.lock().expect("slots");
        let total: usize = m.values().sum();
        let n = m.entry(uid).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_UID || total >= MAX_CONNECTIONS {
            if *n == 0 {
                m.remove(&uid);
            }
            return None;
        }
        *n += 1;
        Some(Slot(self.clone(), uid))
    }
}

async fn serve_connection(
    stream: UnixStream,
    shared: Shared,
    shutdown: CancellationToken,
    slots: Arc<ConnSlots>,
) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot read peer credentials: {e}");
            return;
        }
    };
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    let _slot = match slots.take(uid) {
        Some(s) => s,
        None => {
            tracing::warn!(uid, "connection refused: too many open connections");
            return;
        }
    };
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut limited = (&mut reader).take(MAX_LINE_BYTES as u64);
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(IDLE_TIMEOUT) => {
                tracing::debug!(uid, "idle connection closed");
                return;
            }
            r = limited.read_until(b'\n', &mut buf) => r,
        };
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("read error: {e}");
                return;
            }
        }
        // Checked per request, so a reload that drops a caller takes effect
        // on open connections too. The answer comes after reading the line,
        // so the caller sees it instead of a broken pipe.
        let state = shared.current();
        if !state.config.peer_allowed(uid, gid) {
            tracing::warn!(uid, gid, ?pid, "caller refused: not on the allow list");
            let resp = Response::error(
                None,
                ErrorCode::NotPermitted,
                format!("uid {uid} / gid {gid} is not allowed to use the agent"),
            );
            let _ = w.write_all(resp.to_line().as_bytes()).await;
            return;
        }
        if buf.last() != Some(&b'\n') && buf.len() >= MAX_LINE_BYTES {
            let resp = Response::error(
                None,
                ErrorCode::Malformed,
                format!("request line longer than {MAX_LINE_BYTES} bytes; closing"),
            );
            let _ = w.write_all(resp.to_line().as_bytes()).await;
            return;
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let response = match parse_request_line(&buf) {
            Err(rej) => {
                tracing::info!(uid, code = %rej.error.code, "rejected request: {:?}", rej.error.message);
                Response {
                    v: PROTOCOL_VERSION,
                    id: rej.id,
                    body: crate::protocol::ResponseBody::Error(rej.error),
                }
            }
            Ok((id, request)) => {
                let op = request.op();
                let t0 = Instant::now();
                let resp = match handle_with_timeout(state.clone(), &shared, request).await {
                    Ok(reply) => Response::ok(id, reply),
                    Err(e) => Response::error(id, e.code(), e.to_string()),
                };
                tracing::info!(
                    uid,
                    op,
                    ms = t0.elapsed().as_millis() as u64,
                    ok = matches!(resp.body, crate::protocol::ResponseBody::Ok(_)),
                    "request"
                );
                resp
            }
        };
        if w.write_all(response.to_line().as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Carries out one request within its timeout (the config's
/// `request_timeout_ms`, or `long_request_timeout_ms` for the long ones):
/// what the socket server does for each request line, and what
/// [`crate::local::LocalHost`] does in-process.
pub async fn handle_with_timeout(
    state: Arc<State>,
    shared: &Shared,
    request: Request,
) -> Result<Reply, AgentError> {
    let op = request.op();
    let timeout = state.config.timeout_for(&request);
    match tokio::time::timeout(timeout, handle(state, shared, request)).await {
        Ok(result) => result,
        Err(_) => Err(AgentError::Timeout(format!(
            "{op} did not finish within the request timeout of {timeout:?}"
        ))),
    }
}

/// Carries out one request.
pub async fn handle(
    state: Arc<State>,
    shared: &Shared,
    request: Request,
) -> Result<Reply, AgentError> {
    if let Request::Ping = request {
        return Ok(Reply::Pong(Pong {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_ms: shared.uptime().as_millis() as u64,
            capabilities: state.cgroups.capabilities().clone(),
        }));
    }
    tokio::task::spawn_blocking(move || handle_blocking(&state, request))
        .await
        .map_err(|e| AgentError::Internal(format!("request task failed: {e}")))?
}

/// Carries out one request on the calling thread (it may block: tools,
/// filesystem walks).
pub fn handle_blocking(state: &State, request: Request) -> Result<Reply, AgentError> {
    let cfg = &state.config;
    let cg = &state.cgroups;
    let system_user = cfg.host.system_users;
    // cgroup operations on a host without a usable cgroup root: nothing to do
    if let Some(reason) = cg.unusable_reason() {
        match &request {
            Request::Freeze { account }
            | Request::Thaw { account }
            | Request::Kill { account }
            | Request::Remove { account }
            | Request::Usage { account } => {
                return Ok(Reply::Skipped {
                    op: request.op().to_string(),
                    account: account.clone(),
                    reason,
                })
            }
            _ => {}
        }
    }
    match request {
        Request::Ping => Err(AgentError::Internal("ping is answered elsewhere".into())),
        Request::ApplyLimits { account, limits } => {
            let limits = cfg.limits.patched(&limits);
            limits.validate().map_err(AgentError::InvalidRequest)?;
            Ok(Reply::LimitsApplied(cg.apply_limits(&account, &limits)?))
        }
        Request::Freeze { account } => {
            cg.freeze(&account, cfg.freeze_timeout())?;
            Ok(Reply::Frozen { account })
        }
        Request::Thaw { account } => {
            cg.thaw(&account, cfg.freeze_timeout())?;
            Ok(Reply::Thawed { account })
        }
        Request::Kill { account } => {
            let (method, pids_signalled, emptied) = cg.kill(&account, cfg.freeze_timeout())?;
            Ok(Reply::Killed {
                account,
                method,
                pids_signalled,
                emptied,
            })
        }
        Request::Remove { account } => {
            let existed = cg.remove(&account, cfg.freeze_timeout())?;
            Ok(Reply::Removed { account, existed })
        }
        Request::Usage { account } => Ok(Reply::Usage(cg.usage(&account)?)),
        Request::DiskUsage { account } => Ok(Reply::DiskUsage(home::disk_usage(
            &cfg.home_root(),
            &account,
        )?)),
        Request::PrepareHome { account, uid, gid } => {
            let path =
                home::prepare_home(&cfg.home_root(), &account, uid, gid, cfg.min_account_uid)?;
            Ok(Reply::HomePrepared {
                account,
                path: path.display().to_string(),
                uid,
                gid,
                mode: home::HOME_MODE,
            })
        }
        Request::CreateUser {
            account,
            home_layout,
        } => {
            let (uid, gid, created) = users::create_user(cfg, &account)?;
            let home = if home_layout {
                Some(home::build_home(
                    &cfg.home_root(),
                    &account,
                    uid,
                    gid,
                    cfg.min_account_uid,
                    None,
                )?)
            } else {
                None
            };
            Ok(Reply::UserCreated(UserCreated {
                account,
                uid,
                gid,
                created,
                system_user,
                home,
            }))
        }
        Request::LockUser { account } => {
            users::set_locked(cfg, &account, true)?;
            Ok(Reply::UserLocked {
                account,
                system_user,
            })
        }
        Request::UnlockUser { account } => {
            users::set_locked(cfg, &account, false)?;
            Ok(Reply::UserUnlocked {
                account,
                system_user,
            })
        }
        Request::DeleteUser { account } => {
            let existed = users::delete_user(cfg, &account)?;
            Ok(Reply::UserDeleted {
                account,
                system_user,
                existed,
            })
        }
        Request::SetPassword { account, password } => {
            users::set_password(cfg, &account, &password)?;
            Ok(Reply::PasswordSet {
                account,
                system_user,
            })
        }
        Request::BuildHome {
            account,
            uid,
            gid,
            domain,
        } => Ok(Reply::HomeBuilt(home::build_home(
            &cfg.home_root(),
            &account,
            uid,
            gid,
            cfg.min_account_uid,
            Some(&domain),
        )?)),
        Request::WriteZone {
            account,
            domain,
            ipv4,
        } => Ok(Reply::ZoneWritten(hostfiles::write_zone(
            &cfg.host.root,
            &cfg.host.nameservers,
            &account,
            &domain,
            ipv4,
        )?)),
        Request::RemoveZone { domain, account } => {
            let (path, existed) =
                hostfiles::remove_zone(&cfg.host.root, &domain, account.as_ref())?;
            Ok(Reply::ZoneRemoved {
                domain,
                path: path.display().to_string(),
                existed,
            })
        }
        Request::WriteSecurity {
            account,
            profile,
            cron,
            settings,
        } => Ok(Reply::SecurityWritten(hostfiles::write_security(
            &cfg.host.root,
            &cfg.home_root(),
            &account,
            profile,
            cron.unwrap_or(true),
            settings.as_ref(),
        )?)),
        Request::SetThrottled { account, throttled } => {
            let (path, changed) = hostfiles::set_throttled(&cfg.host.root, &account, throttled)?;
            Ok(Reply::ThrottleSet {
                account,
                throttled,
                changed,
                path: path.display().to_string(),
            })
        }
        Request::ApplyRestoreMeta {
            account,
            restore_id,
            domains,
            ipv4,
            cron,
        } => Ok(Reply::RestoreMetaApplied(
            crate::restore_meta::apply_restore_meta(
                cfg,
                &account,
                &restore_id,
                &domains,
                ipv4,
                cron,
            )?,
        )),
        Request::ReadArchiveMeta { archive, dir } => Ok(Reply::ArchiveMetaFile {
            file: crate::inspect::archive_meta_file(&archive, &dir)?,
        }),
        Request::ListRestoreMeta { restore_id, dir } => Ok(Reply::RestoreMetaList {
            files: crate::restore_meta::list_restore_meta(cfg, &restore_id, &dir)?,
        }),
        Request::ReadRestoreFile {
            restore_id,
            path,
            offset,
            len,
        } => {
            use base64::Engine;
            let (data, size) =
                crate::restore_meta::read_restore_file(cfg, &restore_id, &path, offset, len)?;
            Ok(Reply::RestoreFileChunk {
                data: base64::engine::general_purpose::STANDARD.encode(data),
                size,
            })
        }
        Request::InspectMigration { account, archive } => Ok(Reply::MigrationInspected(Box::new(
            crate::inspect::inspect_migration(cfg, &account, &archive)?,
        ))),
        Request::SetMailHeld { account, held } => {
            let (path, changed) = hostfiles::set_mail_held(&cfg.host.root, &account, held)?;
            Ok(Reply::MailHeldSet {
                account,
                held,
                changed,
                path: path.display().to_string(),
            })
        }
        Request::SetReadOnly { account, read_only } => Ok(Reply::ReadOnlySet(
            crate::enforce::set_read_only(&cfg.host.root, &cfg.home_root(), &account, read_only)?,
        )),
        Request::SetSuspended { account, suspended } => {
            let (path, changed) = hostfiles::set_suspended(&cfg.host.root, &account, suspended)?;
            Ok(Reply::SuspensionSet {
                account,
                suspended,
                changed,
                path: path.display().to_string(),
            })
        }
        Request::QuotaUsage => Ok(Reply::QuotaUsage(quota::quota_usage(cfg)?)),
        Request::SetQuota { account, disk_mb } => {
            Ok(Reply::Quota(quota::set_quota(cfg, &account, disk_mb)?))
        }
        Request::BackupHome { account, manifest } => Ok(Reply::HomeBackedUp(backup::backup_home(
            &cfg.host.root,
            &cfg.home_root(),
            &account,
            manifest.as_ref(),
        )?)),
        Request::RemoveHome { account } => {
            let (path, existed) = home::remove_home(&cfg.home_root(), &account)?;
            Ok(Reply::HomeRemoved {
                account,
                path: path.display().to_string(),
                existed,
            })
        }
        Request::CreateMailbox {
            account,
            domain,
            mailbox,
            password,
        } => Ok(Reply::MailboxCreated(mail::create_mailbox(
            &cfg.home_root(),
            &account,
            &domain,
            &mailbox,
            &password,
            cfg.min_account_uid,
        )?)),
        Request::DeleteMailbox {
            account,
            domain,
            mailbox,
        } => {
            let (path, existed) =
                mail::delete_mailbox(&cfg.home_root(), &account, &domain, &mailbox)?;
            Ok(Reply::MailboxDeleted {
                account,
                domain,
                mailbox,
                path: path.display().to_string(),
                existed,
            })
        }
        Request::ListMailboxes { account, domain } => {
            let mailboxes = mail::list_mailboxes(&cfg.home_root(), &account, &domain)?;
            Ok(Reply::Mailboxes {
                account,
                domain,
                mailboxes,
            })
        }
        Request::UnpackArchive {
            account,
            restore_id,
            archive,
            max_bytes,
            source_home,
            uid,
            gid,
            scan_first,
        } => {
            // Without system users (the embedded host) files stay the server's user's.
            let opts = UnpackOptions {
                owner: uid.zip(gid).filter(|_| system_user),
                max_bytes: max_bytes.unwrap_or(u64::MAX),
                source_home: source_home.map(Into::into),
                scan_first,
                ..UnpackOptions::default()
            };
            let helper = cfg
                .unpack_helper
                .clone()
                .or_else(crate::child::default_helper);
            let in_child = helper.as_deref().map(|helper| restore::InChild {
                helper,
                cgroups: cg,
                account: &account,
            });
            Ok(Reply::ArchiveUnpacked(restore::unpack_archive(
                &cfg.home_root(),
                &restore_id,
                Path::new(&archive),
                &opts,
                in_child,
            )?))
        }
        Request::UnpackStatus { restore_id } => Ok(Reply::UnpackStatus(restore::unpack_status(
            &cfg.home_root(),
            &restore_id,
        )?)),
        Request::CancelUnpack { restore_id } => {
            let running = restore::cancel_unpack(cg, &restore_id);
            Ok(Reply::UnpackCancelled {
                restore_id,
                running,
            })
        }
        Request::InstallHome {
            account,
            restore_id,
            uid,
            gid,
        } => Ok(Reply::HomeInstalled(restore::install_home(
            &cfg.home_root(),
            &account,
            &restore_id,
            uid.zip(gid).filter(|_| system_user),
        )?)),
        Request::RevertHome {
            account,
            restore_id,
        } => {
            let reverted = restore::revert_home(&cfg.home_root(), &account, &restore_id)?;
            Ok(Reply::HomeReverted { account, reverted })
        }
        Request::DiscardRestore { restore_id } => {
            let existed = restore::discard_restore(&cfg.home_root(), cg, &restore_id)?;
            Ok(Reply::RestoreDiscarded {
                restore_id,
                existed,
            })
        }
        Request::WriteMailPolicy {
            account,
            policy,
            domains,
        } => Ok(Reply::MailPolicyWritten(mailpolicy::apply(
            cfg,
            &account,
            Some((policy, domains)),
        )?)),
        Request::RemoveMailPolicy { account } => Ok(Reply::MailPolicyRemoved(mailpolicy::apply(
            cfg, &account, None,
        )?)),
    }
}

/// Whether a path is a Unix socket (for tests and tools).
pub fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}
