//! The binary's configuration: built-in defaults < config file < `NPANEL_*` environment <
//! flags, validated after merging with one plain sentence per problem (STYLE.md §4).
//!
//! Environment keys nest with `__`: `NPANEL_QUEUE__MAX_PENDING=200`,
//! `NPANEL_QUEUE__LIMITS__RESTORE=5`, `NPANEL_WORKERS__CONCURRENCY=32`. `REDIS_URL` keeps its
//! usual name and sets `queue.redis_url`.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use queue::QueueConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `npanel` reads.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listen address of the API and WebSocket. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Where nPanel keeps its files (a private Redis's data, the JWT secret, the SQLite store).
    /// Default `./npanel-data`.
    pub data_dir: PathBuf,
    /// Where `serve` looks for a local Redis when `REDIS_URL` is unset. Default `127.0.0.1:6379`.
    pub local_redis: String,
    /// The queue.
    pub queue: QueueConfig,
    /// The worker pool.
    pub workers: WorkersConfig,
    /// The scheduler.
    pub scheduler: SchedulerConfig,
    /// The HTTP API (auth secret, rate limits, timeouts, body limit).
    pub api: api::ApiConfig,
    /// The WebSocket fan-out.
    pub ws: WsConfig,
    /// The store (system of record).
    pub store: StoreConfig,
    /// Where accounts live: the privileged agent, or the embedded default.
    pub host: HostSettings,
    /// The hourly quota sweep: where it reads traffic, how many homes it walks at once.
    pub quota: QuotaSettings,
    /// The MariaDB/MySQL server of the accounts' databases.
    pub databases: DatabasesConfig,
    /// Log filter (`RUST_LOG` syntax). Default `info`.
    pub log: String,
    /// `npanel worker` only: serve `GET /metrics` (Prometheus) on this address. Unset by
    /// default (several workers may share a host); `serve` has `/metrics` on `listen`.
    pub metrics_listen: Option<String>,
}

/// Worker pool settings (see `workers::PoolConfig`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// Jobs this process runs at once. Default 64.
    pub concurrency: usize,
    /// Seconds running jobs get to finish on shutdown before they are requeued. Default 30.
    pub shutdown_grace_secs: u64,
    /// Longest one attempt may run, in seconds. Default 3600.
    pub job_timeout_secs: u64,
    /// First retry delay in milliseconds (doubles per attempt). Default 1000.
    pub backoff_base_ms: u64,
    /// Longest retry delay in seconds. Default 600.
    pub backoff_max_secs: u64,
    /// How often expired leases are looked for, in milliseconds. Default 1000.
    pub reap_interval_ms: u64,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            concurrency: 64,
            shutdown_grace_secs: 30,
            job_timeout_secs: 3600,
            backoff_base_ms: 1000,
            backoff_max_secs: 600,
            reap_interval_ms: 1000,
        }
    }
}

impl WorkersConfig {
    /// As the pool wants it.
    pub fn pool(&self) -> workers::PoolConfig {
        workers::PoolConfig {
            concurrency: self.concurrency,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            job_timeout: Duration::from_secs(self.job_timeout_secs),
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_max: Duration::from_secs(self.backoff_max_secs),
            reap_interval: Duration::from_millis(self.reap_interval_ms),
            ..workers::PoolConfig::default()
        }
    }
}

/// Scheduler settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Run the scheduler in `serve`. Default true.
    pub enabled: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { enabled: true }
    }
}

/// Store settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Database URL (`DATABASE_URL`): `postgres://…` for several hosts, `sqlite://PATH`.
    /// Unset: the SQLite file `<data_dir>/npanel.db`, created on first start.
    pub url: Option<String>,
    /// Days finished jobs stay readable in the history. Default 90.
    pub history_days: u32,
    /// Days audit records are kept. Default 730 (2 years).
    pub audit_days: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            history_days: 90,
            audit_days: 730,
        }
    }
}

impl StoreConfig {
    /// The URL to open for `data_dir`.
    pub fn url_for(&self, data_dir: &Path) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}?mode=rwc", data_dir.join("npanel.db").display()),
        }
    }

    /// The retention defaults for the `retention` job.
    pub fn days(&self) -> workers::retention::RetentionDays {
        workers::retention::RetentionDays {
            history: self.history_days,
            audit: self.audit_days,
        }
    }
}

/// Host settings (DESIGN §11).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HostSettings {
    /// The privileged agent's Unix socket (production: `/run/npanel/agent.sock`). Unset: the
    /// embedded default — provisioning runs the agent's operations in-process against
    /// `root`, with system users off and cgroups only where this process may write them.
    pub agent_socket: Option<PathBuf>,
    /// Embedded default only: the host root. Default `<data_dir>/host`.
    pub root: Option<PathBuf>,
    /// The address zone files point new domains at. Default `127.0.0.1`.
    pub ipv4: Option<std::net::Ipv4Addr>,
    /// Security template of new accounts: `strict` (default), `moderate`, `legacy`.
    pub security_profile: Option<String>,
    /// Embedded default only: `false` keeps the in-process host off the machine's cgroup tree
    /// (limits reported with their rlimit fallback, a restore's unpack outside any cgroup).
    /// Default `true`: cgroups where this process may write them.
    pub cgroups: Option<bool>,
}

impl HostSettings {
    /// The embedded default's root for `data_dir`.
    pub fn root_for(&self, data_dir: &Path) -> PathBuf {
        self.root.clone().unwrap_or_else(|| data_dir.join("host"))
    }

    /// As the provisioning job wants it.
    pub fn provision(&self) -> workers::provision::ProvisionConfig {
        let d = workers::provision::ProvisionConfig::default();
        workers::provision::ProvisionConfig {
            ipv4: self.ipv4.unwrap_or(d.ipv4),
            security_profile: self
                .security_profile
                .as_deref()
                .and_then(store::SecurityPolicy::parse)
                .unwrap_or(d.security_profile),
        }
    }
}

/// The accounts' database server (DESIGN §11).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabasesConfig {
    /// `mysql://user:password@host:3306` (MariaDB or MySQL). Unset: database sizes are not
    /// measured, and the sweep says so.
    pub url: Option<String>,
}

/// Quota sweep settings (DESIGN §13).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaSettings {
    /// Directory of per-domain access logs (`<domain>`, `<domain>.log`, `<domain>-ssl_log`).
    /// Default `<host root>/var/log/domlogs` (`/var/log/domlogs` with the agent).
    pub access_logs: Option<PathBuf>,
    /// Exim's main log. Default `<host root>/var/log/exim4/mainlog`.
    pub mail_log: Option<PathBuf>,
    /// Homes walked at once. Default 4.
    pub parallel: usize,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        QuotaSettings {
            access_logs: None,
            mail_log: None,
            parallel: 4,
        }
    }
}

impl QuotaSettings {
    /// As the sweep wants it, for a host whose root is `host_root`.
    pub fn sweep(
        &self,
        host_root: &Path,
        databases: &DatabasesConfig,
        security_default: store::SecurityPolicy,
    ) -> workers::quota::SweepConfig {
        workers::quota::SweepConfig {
            access_logs: self
                .access_logs
                .clone()
                .unwrap_or_else(|| host_root.join("var/log/domlogs")),
            mail_log: self
                .mail_log
                .clone()
                .unwrap_or_else(|| host_root.join("var/log/exim4/mainlog")),
            parallel: self.parallel,
            databases_url: databases.url.clone(),
            security_default,
        }
    }
}

/// WebSocket settings (see `ws::HubConfig`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Most open WebSockets per process; the next upgrade gets 503 `too_many_connections`.
    /// Default 1000.
    pub max_connections: usize,
    /// Most open WebSockets of one customer account or reseller (admins not counted), so one
    /// tenant cannot take every slot; 0 = no cap. Default 100.
    pub max_per_tenant: usize,
    /// Seconds between pings; a socket that missed the previous pong is closed. Default 30.
    pub ping_interval_secs: u64,
    /// Events buffered per process for slow sockets before they get a fresh snapshot.
    /// Default 1024.
    pub buffer: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_connections: 1000,
            max_per_tenant: 100,
            ping_interval_secs: 30,
            buffer: 1024,
        }
    }
}

impl WsConfig {
    /// As the hub wants it.
    pub fn hub(&self) -> ws::HubConfig {
        ws::HubConfig {
            max_connections: self.max_connections,
            max_per_tenant: self.max_per_tenant,
            ping_interval: Duration::from_secs(self.ping_interval_secs),
            buffer: self.buffer,
            ..ws::HubConfig::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("npanel-data"),
            local_redis: "127.0.0.1:6379".into(),
            queue: QueueConfig::default(),
            workers: WorkersConfig::default(),
            scheduler: SchedulerConfig::default(),
            api: api::ApiConfig::default(),
            ws: WsConfig::default(),
            store: StoreConfig::default(),
            host: HostSettings::default(),
            quota: QuotaSettings::default(),
            databases: DatabasesConfig::default(),
            log: "info".into(),
            metrics_listen: None,
        }
    }
}

/// Flag overrides (highest precedence).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

/// Config loading errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named file is missing or unreadable.
    #[error("config file {0} cannot be read: {1}")]
    File(PathBuf, String),
    /// A value has the wrong type or a key is unknown.
    #[error("configuration error: {0}")]
    Parse(String),
    /// Values that parse but make no sense together.
    #[error("invalid configuration: {}", .0.join(" "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Merge defaults, `file`, the environment and `flags`, then validate.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            std::fs::metadata(f).map_err(|e| ConfigError::File(f.to_path_buf(), e.to_string()))?;
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(
            Env::prefixed("NPANEL_")
                // Secrets are taken verbatim below: parsed as TOML, a numeric secret would be
                // refused with the secret quoted in the error.
                .filter(|k| k != "api__jwt_secret")
                .split("__")
                .ignore(&[
                    "config",
                    "redis_server",
                    "bench_cmd",
                    // The CLI client's settings, not the service's.
                    "url",
                    "token",
                    // Test-suite settings (DESIGN §8), often exported in the same shell.
                    "test_postgres_url",
                    "test_mysql_url",
                ]),
        );
        if let Ok(secret) = std::env::var("NPANEL_API__JWT_SECRET") {
            if !secret.is_empty() {
                fig = fig.merge(("api.jwt_secret", secret));
            }
        }
        if let Ok(url) = std::env::var("REDIS_URL") {
            if !url.is_empty() {
                fig = fig.merge(("queue.redis_url", url));
            }
        }
        if let Ok(url) = std::env::var("DATABASE_URL") {
            if !url.is_empty() {
                fig = fig.merge(("store.url", url));
            }
        }
        fig = fig.merge(Serialized::defaults(flags));
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// One plain sentence per problem.
    pub fn validate(&self) -> Vec<String> {
        let mut p = self.queue.validate();
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "listen {:?} is not an address like 127.0.0.1:8080.",
                self.listen
            ));
        }
        if let Some(m) = &self.metrics_listen {
            if m.parse::<std::net::SocketAddr>().is_err() {
                p.push(format!(
                    "metrics_listen {m:?} is not an address like 127.0.0.1:9465."
                ));
            }
        }
        p.extend(self.api.validate());
        if self.ws.max_connections == 0 {
            p.push("ws.max_connections must be at least 1.".into());
        }
        if let Some(u) = &self.databases.url {
            if !(u.starts_with("mysql://") || u.starts_with("mariadb://")) {
                p.push(format!(
                    "databases.url {:?} is not a mysql:// URL.",
                    redact_url(u)
                ));
            }
        }
        if !(1..=64).contains(&self.quota.parallel) {
            p.push(format!(
                "quota.parallel {} must be between 1 and 64.",
                self.quota.parallel
            ));
        }
        if self.ws.ping_interval_secs == 0 {
            p.push("ws.ping_interval_secs must be at least 1.".into());
        }
        if let Some(u) = &self.store.url {
            if !(u.starts_with("sqlite:")
                || u.starts_with("postgres:")
                || u.starts_with("postgresql:"))
            {
                p.push(format!(
                    "store.url {:?} is not a sqlite:// or postgres:// URL.",
                    redact_url(u)
                ));
            }
        }
        if let Some(prof) = &self.host.security_profile {
            if store::SecurityPolicy::parse(prof).is_none() {
                p.push(format!(
                    "host.security_profile {prof:?} is not strict, moderate or legacy."
                ));
            }
        }
        if self.store.history_days == 0 || self.store.audit_days == 0 {
            p.push("store.history_days and store.audit_days must be at least 1.".into());
        }
        if self.workers.concurrency == 0 {
            p.push("workers.concurrency must be at least 1.".into());
        }
        if self.workers.job_timeout_secs == 0 {
            p.push("workers.job_timeout_secs must be at least 1.".into());
        }
        if self.workers.reap_interval_ms == 0 {
            p.push("workers.reap_interval_ms must be at least 1.".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            p.push(format!("log {:?} is not a valid log filter.", self.log));
        }
        p
    }

    /// Every setting whose value differs from the built-in default, as (dotted key, value,
    /// default) in TOML syntax, secrets hidden; a default that is unset reads `unset`.
    pub fn diff_from_defaults(&self) -> Vec<(String, String, String)> {
        fn flat(
            prefix: &str,
            v: &toml::Value,
            out: &mut std::collections::BTreeMap<String, String>,
        ) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        flat(&key, v, out);
                    }
                }
                other => {
                    out.insert(prefix.to_string(), other.to_string());
                }
            }
        }
        let table = |c: &Config| {
            let mut out = std::collections::BTreeMap::new();
            if let Ok(v) = toml::Value::try_from(c.redacted()) {
                flat("", &v, &mut out);
            }
            out
        };
        let (now, defaults) = (table(self), table(&Config::default()));
        now.iter()
            .filter(|(k, v)| defaults.get(*k) != Some(*v))
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.clone(),
                    defaults.get(k).cloned().unwrap_or_else(|| "unset".into()),
                )
            })
            .collect()
    }

    fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.queue.redis_url = redact_url(&c.queue.redis_url);
        c.store.url = c.store.url.as_deref().map(redact_url);
        c.databases.url = c.databases.url.as_deref().map(redact_url);
        if c.api.jwt_secret.is_some() {
            c.api.jwt_secret = Some("**REDACTED**".into());
        }
        c
    }

    /// The configuration as TOML, with the Redis password (if any) hidden.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(&self.redacted()).unwrap_or_default()
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.rsplit_once('@') {
            let user = creds.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("redis://u:pw@h"), "redis://u:***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn layers_merge_in_order_and_validate() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "n.toml",
                "listen = \"127.0.0.1:9000\"\n[queue]\nmax_pending = 50\nlease_ms = 5000\n",
            )?;
            jail.set_env("NPANEL_QUEUE__MAX_PENDING", "70");
            jail.set_env("NPANEL_QUEUE__LIMITS__RESTORE", "7");
            let flags = Overrides {
                listen: Some("127.0.0.1:9100".into()),
                data_dir: None,
            };
            let c = Config::load(Some(Path::new("n.toml")), &flags).unwrap();
            assert_eq!(c.listen, "127.0.0.1:9100"); // flag > file
            assert_eq!(c.queue.max_pending, 70); // env > file
            assert_eq!(c.queue.lease_ms, 5000); // file > default
            assert_eq!(c.queue.limits[&queue::JobKind::Restore], 7);
            assert_eq!(c.workers.concurrency, 64); // default
            jail.set_env("NPANEL_API__JWT_SECRET", "4823749823749823");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.api.jwt_secret.as_deref(), Some("4823749823749823"));
            jail.set_env("NPANEL_QUEUE__MAX_PENDING", "0");
            jail.set_env("NPANEL_LISTEN", "nowhere");
            let e = Config::load(None, &Overrides::default()).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("queue.max_pending must be at least 1."),
                "{msg}"
            );
            assert!(msg.contains("listen \"nowhere\""), "{msg}");
            jail.create_file("bad.toml", "[queue]\nmax_pendin = 5\n")?;
            let e = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("max_pendin"), "{e}");
            let e =
                Config::load(Some(Path::new("missing.toml")), &Overrides::default()).unwrap_err();
            assert!(matches!(e, ConfigError::File(..)));
            Ok(())
        });
    }
}
