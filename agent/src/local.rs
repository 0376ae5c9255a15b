//! The host operations without a socket: the embedded default (DESIGN §11),
//! and one type for callers that should not care which.
//!
//! `npanel serve` with no agent socket configured runs the agent's
//! operations itself, as its own (unprivileged) user, against
//! `<data_dir>/host` as the host root: system users off (pseudo uids from a
//! registry file), homes left owned by the serving user, and cgroups only
//! where this process may write a cgroup v2 tree. [`LocalHost`] is that: it
//! builds the same [`State`] the agent builds from its config and calls the
//! same [`crate::server::handle_with_timeout`], so a [`Request`] gets the same
//! [`Reply`] (or the same typed error) as over the socket.
//!
//! [`Host`] is what the workers hold: `Host::Remote` (the root agent, over
//! its socket) or `Host::Local`, with one `call` and the same typed methods
//! as [`AgentClient`]. Errors from either side answer [`AgentError::code`]
//! with the protocol's [`crate::ErrorCode`], so callers match on that.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cgroup::{cgroup2_mount_for, parse_mounts, CgroupManager};
use crate::client::AgentClient;
use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::protocol::{Reply, Request};
use crate::server::{handle_with_timeout, Shared, State};

/// The agent's operations, in-process.
#[derive(Debug, Clone)]
pub struct LocalHost {
    shared: Shared,
}

impl LocalHost {
    /// The embedded default: [`AgentConfig::embedded`] on `host_root`
    /// (system users off), and the cgroup root `<cgroup2 mount>/npanel.slice`
    /// only if this process may write it; otherwise cgroup operations are
    /// answered [`Reply::Skipped`] and limits report their rlimit fallback.
    /// Creates `host_root` if missing. Never needs root.
    pub fn new(host_root: impl Into<PathBuf>) -> Result<Self, AgentError> {
        Self::embedded(host_root.into(), embedded_cgroups)
    }

    /// [`LocalHost::new`] without cgroups, whatever this process may write: for tests that
    /// must leave the machine's cgroup tree alone (cgroup operations are answered skipped and
    /// a restore's unpack runs outside any cgroup).
    pub fn without_cgroups(host_root: impl Into<PathBuf>) -> Result<Self, AgentError> {
        Self::embedded(host_root.into(), |config| {
            CgroupManager::disabled(
                &config.cgroup_root,
                "cgroups off for this host (tests)".into(),
                config.fallback,
            )
        })
    }

    /// [`AgentConfig::embedded`] on `host_root` (created if missing), with the cgroup manager
    /// `cgroups` makes for it.
    fn embedded(
        host_root: PathBuf,
        cgroups: impl FnOnce(&AgentConfig) -> CgroupManager,
    ) -> Result<Self, AgentError> {
        let config = AgentConfig::embedded(absolute(&host_root)?);
        config.validate()?;
        std::fs::create_dir_all(&config.host.root)
            .map_err(|e| AgentError::io(&config.host.root, e))?;
        let cgroups = cgroups(&config);
        Ok(Self::from_state(State::with_cgroups(config, cgroups)))
    }

    /// In-process operations with an explicit config (tests, or a host
    /// that wants system users without a separate agent process).
    pub fn with_config(config: AgentConfig) -> Result<Self, AgentError> {
        config.validate()?;
        Ok(Self::from_state(State::new(config)))
    }

    fn from_state(state: State) -> Self {
        Self {
            shared: Shared::new(state),
        }
    }

    /// The state the operations run with.
    pub fn state(&self) -> Arc<State> {
        self.shared.current()
    }

    /// One line saying what this host does, for the start-up log.
    pub fn summary(&self) -> String {
        let state = self.state();
        let cfg = &state.config;
        let cgroups = match state.cgroups.unusable_reason() {
            None => format!("cgroups under {}", state.cgroups.capabilities().cgroup_root),
            Some(_) => {
                "no cgroups (not writable here: limits are not enforced, freeze/kill are skipped)"
                    .to_string()
            }
        };
        format!(
            "host operations run in-process under {} (homes in {}), system users {}, {cgroups}",
            cfg.host.root.display(),
            cfg.home_root().display(),
            if cfg.host.system_users { "on" } else { "off" },
        )
    }

    /// Carries out one request, exactly as the agent would.
    pub async fn call(&self, request: Request) -> Result<Reply, AgentError> {
        handle_with_timeout(self.shared.current(), &self.shared, request).await
    }

    crate::client::typed_host_ops!();
}

fn absolute(p: &Path) -> Result<PathBuf, AgentError> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| AgentError::io(".", e))?;
    Ok(cwd.join(p))
}

/// The cgroup manager of the embedded default: `<mount>/npanel.slice` on the
/// cgroup2 mount (`/sys/fs/cgroup` when it is one, else the first, like the
/// `unified` mount of a hybrid host) when this process may create or write
/// it; otherwise a disabled manager that says why.
fn embedded_cgroups(config: &AgentConfig) -> CgroupManager {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounts = parse_mounts(&text);
    let preferred = Path::new("/sys/fs/cgroup");
    let mount = if cgroup2_mount_for(&mounts, preferred).as_deref() == Some(preferred) {
        Some(preferred.to_path_buf())
    } else {
        mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .map(|m| m.target.clone())
    };
    let Some(mount) = mount else {
        return CgroupManager::disabled(
            &config.cgroup_root,
            "no cgroup v2 filesystem is mounted".into(),
            config.fallback,
        );
    };
    let root = mount.join("npanel.slice");
    let probe = if root.is_dir() { &root } else { &mount };
    if let Err(e) = nix::unistd::access(probe, nix::unistd::AccessFlags::W_OK) {
        return CgroupManager::disabled(
            &root,
            format!(
                "{} is not writable by this process (uid {}): {e}; the root agent applies cgroup limits",
                probe.display(),
                nix::unistd::geteuid()
            ),
            config.fallback,
        );
    }
    CgroupManager::open_with_mounts(&root, &mounts, State::io_device(config), config.fallback)
}

/// Where the host operations run: the root agent over its socket, or
/// in-process (the embedded default). Same requests, same replies.
#[derive(Debug)]
pub enum Host {
    Remote(AgentClient),
    Local(LocalHost),
}

impl Host {
    /// Carries out one request on whichever host this is.
    pub async fn call(&self, request: Request) -> Result<Reply, AgentError> {
        match self {
            Host::Remote(c) => c.call(request).await,
            Host::Local(l) => l.call(request).await,
        }
    }

    /// Whether the operations run in-process.
    pub fn is_local(&self) -> bool {
        matches!(self, Host::Local(_))
    }

    crate::client::typed_host_ops!();
}

impl From<AgentClient> for Host {
    fn from(c: AgentClient) -> Self {
        Host::Remote(c)
    }
}

impl From<LocalHost> for Host {
    fn from(l: LocalHost) -> Self {
        Host::Local(l)
    }
}

/// Compile-time check: the futures a worker awaits are `Send` (they run on
/// a multi-threaded runtime and behind `BoxFuture`s).
#[allow(dead_code)]
fn futures_are_send(host: &Host, account: &crate::AccountName) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&host.call(Request::Ping));
    is_send(&host.create_user(account, true));
    is_send(&host.backup_home(account, None));
    is_send(&host.freeze(account));
}
