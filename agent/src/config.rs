//! The agent's config file (TOML).
//!
//! ```toml
//! socket_path = "/run/npanel/agent.sock"
//! socket_gid = 990            # group owner of the socket (mode 0660); optional
//! allowed_uids = [990]        # callers allowed by uid (SO_PEERCRED)
//! allowed_gids = [990]        # callers allowed by primary gid
//! allow_root = true           # uid 0 is always allowed unless set to false
//! request_timeout_ms = 5000
//! long_request_timeout_ms = 3600000   # backup_home, remove_home, disk_usage
//! freeze_timeout_ms = 2000
//! cgroup_root = "/sys/fs/cgroup/npanel.slice"
//! home_root = "/home"         # default: <host.root>/home
//! home_device = "8:0"         # MAJ:MIN for io.max; default: the disk holding home_root
//! min_account_uid = 1000      # homes and users refuse ids below this
//!
//! [host]                      # what an account is on disk (DESIGN §11)
//! root = "/"                  # every host path is under it (tests: a temp dir)
//! system_users = true         # useradd & co.; false: pseudo uids from a registry file
//! nameservers = []            # NS of written zones; empty: ns1/ns2.<domain> with glue
//!
//! [limits]                    # defaults for apply_limits
//! cpu_max = "50000 100000"
//! memory_max = 536870912
//! io_rbps = 52428800
//! io_wbps = 52428800
//! pids_max = 256
//!
//! [fallback]                  # rlimits where a controller is missing
//! cpu_seconds = 3600
//!
//! [mail]                      # per-account Exim limits (write_mail_policy)
//! exim = "auto"               # "auto": exim4/exim on PATH; "none": never validate; or a path
//! exim_pid_file = "/run/exim4/exim.pid"   # default: <host.root>/run/exim4/exim.pid
//! conn_socket = "/run/npanel/smtp-conns.sock" # default: <host.root>/run/npanel/smtp-conns.sock
//! exim_config = "/etc/exim4/exim4.conf"   # optional: validate this main config (with the candidate ACL)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::protocol::Limits;

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/npanel/agent.toml";
/// Default socket path.
pub const DEFAULT_SOCKET_PATH: &str = "/run/npanel/agent.sock";
/// Default cgroup root.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup/npanel.slice";

/// The agent's configuration. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub socket_path: PathBuf,
    /// Group owner of the socket; the socket is mode 0660, so this is the
    /// group whose members can connect at all (the allow lists then decide).
    pub socket_gid: Option<u32>,
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    /// uid 0 is allowed unless this is false: root can do everything the
    /// agent does anyway, and the watchdog (root) must be able to ping.
    pub allow_root: bool,
    pub request_timeout_ms: u64,
    /// Timeout of the requests whose work grows with a home's size
    /// ([`crate::protocol::Request::is_long`]).
    pub long_request_timeout_ms: u64,
    pub freeze_timeout_ms: u64,
    pub cgroup_root: PathBuf,
    /// Parent of the home directories; `None`: `<host.root>/home`. Use
    /// [`AgentConfig::home_root`].
    pub home_root: Option<PathBuf>,
    /// `MAJ:MIN` of the block device for `io.max`; default: the whole disk
    /// holding `home_root`.
    pub home_device: Option<String>,
    pub min_account_uid: u32,
    pub limits: Limits,
    pub fallback: Fallback,
    pub host: HostConfig,
    /// The executable a restore's unpack runs as, a child process inside the account's
    /// cgroup ([`crate::child`]). `None`: the running binary itself when it can be that child
    /// (`npanel-agent`, `npanel`), else a thread of this process.
    pub unpack_helper: Option<PathBuf>,
    /// The `[mail]` table: how mail policies are checked and Exim reloaded.
    pub mail: MailConfig,
}

/// The `[mail]` table ([`crate::mailpolicy`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// `auto` (default): `exim4` or `exim` on `PATH` and in the sbin directories; `none`:
    /// never validate (the files are written, the answer says `validated: false`); else the
    /// binary's path.
    pub exim: String,
    /// Pid file of the running Exim daemon (SIGHUP after a change); `None`:
    /// `<host.root>/run/exim4/exim.pid` (Debian's).
    pub exim_pid_file: Option<PathBuf>,
    /// Exim's main config. When set, `exim -bV` checks a copy of it in which the live ACL
    /// path is replaced by the candidate's; unset, a minimal harness that includes the
    /// candidate the same way.
    pub exim_config: Option<PathBuf>,
    /// The socket of the SMTP connection counter the ACL asks (`max_connections`,
    /// [`crate::smtpconns`]); `None`: `<host.root>/run/npanel/smtp-conns.sock`.
    pub conn_socket: Option<PathBuf>,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            exim: "auto".into(),
            exim_pid_file: None,
            exim_config: None,
            conn_socket: None,
        }
    }
}

/// The `[host]` table: where and how account resources live on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Every host path (homes, zones, fragments, backups) is under it.
    pub root: PathBuf,
    /// Real system users (`useradd`, `usermod`, `userdel`, `chpasswd`,
    /// `setquota`); false: pseudo uids/gids recorded under the root.
    pub system_users: bool,
    /// NS records of written zones; empty: `ns1.<domain>` and
    /// `ns2.<domain>` with A records to the account's address.
    pub nameservers: Vec<String>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            root: "/".into(),
            system_users: true,
            nameservers: Vec::new(),
        }
    }
}

/// rlimit fallback settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fallback {
    /// RLIMIT_CPU (total CPU seconds of one process) used when the `cpu`
    /// controller is missing. Not a rate limit: a different, cruder guard.
    pub cpu_seconds: u64,
}

impl Default for Fallback {
    fn default() -> Self {
        Self { cpu_seconds: 3600 }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            socket_path: DEFAULT_SOCKET_PATH.into(),
            socket_gid: None,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            allow_root: true,
            request_timeout_ms: 5_000,
            long_request_timeout_ms: 3_600_000,
            freeze_timeout_ms: 2_000,
            cgroup_root: DEFAULT_CGROUP_ROOT.into(),
            home_root: None,
            home_device: None,
            min_account_uid: 1000,
            limits: Limits::default(),
            fallback: Fallback::default(),
            host: HostConfig::default(),
            unpack_helper: None,
            mail: MailConfig::default(),
        }
    }
}

impl AgentConfig {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, AgentError> {
        let cfg: AgentConfig =
            toml::from_str(text).map_err(|e| AgentError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
        Self::from_toml(&text).map_err(|e| AgentError::Config(format!("{}: {e}", path.display())))
    }

    /// Checks the values for sense.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |m: String| Err(AgentError::Config(m));
        if !self.socket_path.is_absolute() {
            return bad(format!(
                "socket_path {} must be absolute",
                self.socket_path.display()
            ));
        }
        if !self.cgroup_root.is_absolute() || self.cgroup_root.parent().is_none() {
            return bad(format!(
                "cgroup_root {} must be an absolute path below /",
                self.cgroup_root.display()
            ));
        }
        if !self.host.root.is_absolute() {
            return bad(format!(
                "host.root {} must be absolute",
                self.host.root.display()
            ));
        }
        if let Some(home) = &self.home_root {
            if !home.is_absolute() || home.parent().is_none() {
                return bad(format!(
                    "home_root {} must be an absolute path below /",
                    home.display()
                ));
            }
        }
        for ns in &self.host.nameservers {
            crate::names::Domain::parse(ns)
                .map_err(|e| AgentError::Config(format!("host.nameservers: {e}")))?;
        }
        if self.request_timeout_ms == 0
            || self.freeze_timeout_ms == 0
            || self.long_request_timeout_ms == 0
        {
            return bad(
                "request_timeout_ms, long_request_timeout_ms and freeze_timeout_ms must be > 0"
                    .into(),
            );
        }
        if let Some(dev) = &self.home_device {
            parse_dev(dev).map_err(AgentError::Config)?;
        }
        if self.min_account_uid == 0 {
            return bad("min_account_uid must be > 0 (homes are never owned by root)".into());
        }
        self.limits.validate().map_err(AgentError::Config)?;
        if self.mail.exim.is_empty() {
            return bad("mail.exim must be \"auto\", \"none\" or a path".into());
        }
        for (name, p) in [
            ("mail.exim_pid_file", &self.mail.exim_pid_file),
            ("mail.exim_config", &self.mail.exim_config),
        ] {
            if p.as_ref().is_some_and(|p| !p.is_absolute()) {
                return bad(format!("{name} must be an absolute path"));
            }
        }
        Ok(())
    }

    /// The config of the embedded default (DESIGN §11): host operations run
    /// in-process against `host_root`, with system users off. Everything
    /// else keeps its default; the cgroup root is chosen by
    /// [`crate::local::LocalHost`].
    pub fn embedded(host_root: impl Into<PathBuf>) -> Self {
        Self {
            host: HostConfig {
                root: host_root.into(),
                system_users: false,
                nameservers: Vec::new(),
            },
            ..Self::default()
        }
    }

    /// The parent of the home directories: `home_root`, else
    /// `<host.root>/home`.
    pub fn home_root(&self) -> PathBuf {
        match &self.home_root {
            Some(h) => h.clone(),
            None => self.host.root.join("home"),
        }
    }

    /// The SMTP connection counter's socket: `mail.conn_socket`, else
    /// `<host.root>/run/npanel/smtp-conns.sock`.
    pub fn conn_socket(&self) -> PathBuf {
        match &self.mail.conn_socket {
            Some(p) => p.clone(),
            None => self.host.root.join("run/npanel/smtp-conns.sock"),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn long_request_timeout(&self) -> Duration {
        Duration::from_millis(self.long_request_timeout_ms)
    }

    /// The timeout for one request.
    pub fn timeout_for(&self, request: &crate::protocol::Request) -> Duration {
        if request.is_long() {
            self.long_request_timeout().max(self.request_timeout())
        } else {
            self.request_timeout()
        }
    }

    pub fn freeze_timeout(&self) -> Duration {
        Duration::from_millis(self.freeze_timeout_ms)
    }

    /// Whether a peer with these credentials may talk to the agent.
    pub fn peer_allowed(&self, uid: u32, gid: u32) -> bool {
        (uid == 0 && self.allow_root)
            || self.allowed_uids.contains(&uid)
            || self.allowed_gids.contains(&gid)
    }
}

/// Parses `MAJ:MIN`.
pub fn parse_dev(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("device {s:?} is not MAJ:MIN"))?;
    let maj = a
        .parse()
        .map_err(|_| format!("device {s:?}: bad major number"))?;
    let min = b
        .parse()
        .map_err(|_| format!("device {s:?}: bad minor number"))?;
    Ok((maj, min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_documented_defaults() {
        let c = AgentConfig::from_toml("").unwrap();
        assert_eq!(c.cgroup_root, Path::new("/sys/fs/cgroup/npanel.slice"));
        assert_eq!(c.limits.cpu_max.to_string(), "50000 100000");
        assert_eq!(c.limits.memory_max, 536_870_912);
        assert_eq!(c.limits.io_rbps, 52_428_800);
        assert_eq!(c.limits.pids_max, 256);
        assert_eq!(c.host.root, Path::new("/"));
        assert!(c.host.system_users);
        assert_eq!(c.home_root(), Path::new("/home"));
        assert!(c.allow_root);
        assert!(c.peer_allowed(0, 0));
        assert!(!c.peer_allowed(1000, 1000));
    }

    #[test]
    fn full_config_parses() {
        let c = AgentConfig::from_toml(
            r#"
            socket_path = "/tmp/x.sock"
            socket_gid = 990
            allowed_uids = [1000]
            allowed_gids = [990]
            allow_root = false
            request_timeout_ms = 100
            cgroup_root = "/tmp/cg"
            home_device = "8:0"
            [limits]
            pids_max = 20
            cpu_max = "max 100000"
            [fallback]
            cpu_seconds = 5
            [host]
            root = "/srv/h"
            system_users = false
            nameservers = ["ns1.example.net", "ns2.example.net"]
            "#,
        )
        .unwrap();
        assert_eq!(c.home_root(), Path::new("/srv/h/home"));
        assert!(!c.host.system_users);
        assert_eq!(c.host.nameservers.len(), 2);
        assert_eq!(c.limits.pids_max, 20);
        assert_eq!(c.limits.cpu_max.quota_us, None);
        assert_eq!(c.fallback.cpu_seconds, 5);
        assert!(!c.peer_allowed(0, 0));
        assert!(c.peer_allowed(1000, 5));
        assert!(c.peer_allowed(5, 990));
        assert!(!c.peer_allowed(5, 5));
    }

    #[test]
    fn invalid_configs_are_refused() {
        for bad in [
            "socket_path = \"relative.sock\"",
            "cgroup_root = \"/\"",
            "request_timeout_ms = 0",
            "home_device = \"sda\"",
            "[limits]\npids_max = 0",
            "[limits]\ncpu_max = \"lots\"",
            "unknown_key = 1",
            "[host]\nroot = \"relative\"",
            "[host]\nnameservers = [\"not a domain\"]",
            "[host]\nsurprise = 1",
            "[mail]\nexim = \"\"",
            "[mail]\nexim_config = \"relative.conf\"",
            "[mail]\nsurprise = 1",
            "home_root = \"/\"",
            "long_request_timeout_ms = 0",
            "socket_path = [",
        ] {
            assert!(AgentConfig::from_toml(bad).is_err(), "accepted: {bad}");
        }
    }
}
