//! The binary's configuration: built-in defaults < config file < `config.env` < `NPANEL_*`
//! environment < flags, validated after merging with one plain sentence per problem (STYLE.md §4).
//!
//! Environment keys nest with `__`: `NPANEL_QUEUE__MAX_PENDING=200`,
//! `NPANEL_QUEUE__LIMITS__RESTORE=5`, `NPANEL_WORKERS__CONCURRENCY=32`. `REDIS_URL` keeps its
//! usual name and sets `queue.redis_url`.
//!
//! # `config.env`
//! `KEY=VALUE` lines with the same keys as the environment (`NPANEL_*`, `REDIS_URL`,
//! `DATABASE_URL`; `#` comments, an optional `export `, optional quotes), between the file and
//! the real environment: the place for secrets (mode 0600) and for what a package's defaults
//! file would hold, so the TOML file itself can be versioned verbatim. It is
//! `$NPANEL_CONFIG_ENV` when set (empty: none), else `config.env` next to the config file when
//! there is one (`/etc/npanel/config.env` beside `/etc/npanel/npanel.toml`). A key that the real
//! environment also sets is taken from the environment. Any other key is refused: a typo there
//! would otherwise be ignored silently.
//!
//! # Versions, and defaults that change between versions
//! `npanel serve` records each configuration it applies (start, SIGHUP) in the store when it
//! differs from the newest recorded one (`store::NewConfigVersion`): the **file's text with
//! secrets redacted** ([`redact_file_text`]; verbatim when it holds no secret, else re-serialised
//! without comments), the effective merged configuration redacted, and the binary's own
//! **built-in defaults** ([`defaults_flat`]). Secrets are never stored in clear: `npanel config
//! rollback` puts them back from the live file ([`restore_secrets`]). Because every version
//! carries the defaults of the binary that applied it, `npanel config diff` on a newer binary
//! compares its defaults with those and says which changed since ([`default_changes`]): a
//! setting left at its default silently takes the new value, one set explicitly does not. This
//! needs no hand-kept table of past releases that could drift from the code.

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
    /// The `upgrade` job: install root, release signing key, restarts, validation (DESIGN §14).
    pub upgrade: workers::upgrade::UpgradeConfig,
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
    /// The job kinds this process's workers claim. Empty (the default): every kind it has a
    /// handler for. On several hosts, the kinds that work on accounts (`provision`, `backup`,
    /// `restore`, `quota_sweep`, `health_check`) belong to the host that holds the accounts
    /// (README, "Several hosts"); the API still accepts every kind this build handles.
    pub kinds: Vec<queue::JobKind>,
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
            kinds: Vec::new(),
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
            upgrade: workers::upgrade::UpgradeConfig::default(),
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
    /// A `config.env` line that is not `NPANEL_*=value` (or `REDIS_URL`, `DATABASE_URL`).
    #[error("{}:{}: {}", .0.display(), .1, .2)]
    EnvFile(PathBuf, usize, String),
}

/// Keys of the environment that are not service settings (the CLI client's, the test suite's,
/// the config file's own name). Lower case, without `NPANEL_`.
const IGNORED_ENV: &[&str] = &[
    "config",
    "config_env",
    "redis_server",
    "bench_cmd",
    // The CLI client's settings, not the service's.
    "url",
    "token",
    // Test-suite settings (DESIGN §8), often exported in the same shell.
    "test_postgres_url",
    "test_mysql_url",
    // The version a packaged wrapper stamps at run time (`npanel --version`, upgrades).
    "build_version",
];

/// The `config.env` that [`Config::load`] reads for `file` (see the module docs), if any.
pub fn env_file_for(file: Option<&Path>) -> Option<PathBuf> {
    match std::env::var_os("NPANEL_CONFIG_ENV") {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(PathBuf::from(p)),
        None => file
            .and_then(|f| f.parent())
            .map(|d| {
                if d.as_os_str().is_empty() {
                    Path::new(".").join("config.env")
                } else {
                    d.join("config.env")
                }
            })
            .filter(|p| p.exists()),
    }
}

/// The `KEY=VALUE` pairs of a `config.env` text, in order; a bad line is an error naming it.
pub fn parse_env_file(path: &Path, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let bad = |m: String| ConfigError::EnvFile(path.to_path_buf(), i + 1, m);
        let Some((k, v)) = line.split_once('=') else {
            return Err(bad(format!("{line:?} is not KEY=VALUE")));
        };
        let k = k.trim();
        if !(k.starts_with("NPANEL_") || k == "REDIS_URL" || k == "DATABASE_URL") {
            return Err(bad(format!(
                "{k} is not an nPanel setting (NPANEL_*, REDIS_URL or DATABASE_URL)"
            )));
        }
        let v = v.trim();
        let v = match (v.chars().next(), v.chars().last()) {
            (Some(q @ ('"' | '\'')), Some(e)) if v.len() >= 2 && q == e => &v[1..v.len() - 1],
            _ => v,
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Merge `config.env` pairs the way the environment is merged (keys the real environment
/// sets are left to it).
fn merge_env_pairs(mut fig: Figment, pairs: &[(String, String)]) -> Figment {
    for (k, v) in pairs {
        if std::env::var_os(k).is_some_and(|e| !e.is_empty()) {
            continue;
        }
        match k.as_str() {
            "REDIS_URL" if !v.is_empty() => fig = fig.merge(("queue.redis_url", v.clone())),
            "DATABASE_URL" if !v.is_empty() => fig = fig.merge(("store.url", v.clone())),
            "NPANEL_API__JWT_SECRET" if !v.is_empty() => {
                fig = fig.merge(("api.jwt_secret", v.clone()))
            }
            _ => {
                let Some(key) = k.strip_prefix("NPANEL_").map(str::to_lowercase) else {
                    continue;
                };
                if key.is_empty() || IGNORED_ENV.contains(&key.as_str()) || v.is_empty() {
                    continue;
                }
                let value: figment::value::Value = v.parse().expect("infallible");
                fig = fig.merge((key.replace("__", "."), value));
            }
        }
    }
    fig
}

/// Dotted keys whose values are secrets or URLs that may carry one.
const SECRET_KEYS: &[&str] = &["api.jwt_secret"];
const URL_KEYS: &[&str] = &["queue.redis_url", "store.url", "databases.url"];
/// What a redacted secret reads in stored text.
pub const REDACTED: &str = "**REDACTED**";

fn table_get<'a>(t: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut cur = t.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_table()?.get(p)?;
    }
    Some(cur)
}

fn table_get_mut<'a>(t: &'a mut toml::Table, dotted: &str) -> Option<&'a mut toml::Value> {
    let mut parts = dotted.split('.');
    let mut cur = t.get_mut(parts.next()?)?;
    for p in parts {
        cur = cur.as_table_mut()?.get_mut(p)?;
    }
    Some(cur)
}

/// A config file's text as it may be stored: verbatim when it holds no secret; else parsed,
/// its secrets replaced by [`REDACTED`] (URLs: their password by `***`) and written out again
/// (comments are then lost). Text that is not TOML is returned as an error.
pub fn redact_file_text(text: &str) -> Result<String, ConfigError> {
    let mut t: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
    let mut changed = false;
    for k in SECRET_KEYS {
        if let Some(v) = table_get_mut(&mut t, k) {
            *v = toml::Value::String(REDACTED.into());
            changed = true;
        }
    }
    for k in URL_KEYS {
        if let Some(toml::Value::String(u)) = table_get_mut(&mut t, k) {
            let r = redact_url(u);
            if r != *u {
                *u = r;
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(text.to_string());
    }
    Ok(format!(
        "# Secrets redacted by npanel (comments of the original were not kept).\n{}",
        toml::to_string_pretty(&t).map_err(|e| ConfigError::Parse(e.to_string()))?
    ))
}

/// Put back into `stored` (a text from [`redact_file_text`]) the secrets it had redacted,
/// taking them from `live` (the file's text now) where the redacted forms match. A redacted
/// secret that `live` no longer holds is an error naming the key: writing the placeholder
/// would break the service.
pub fn restore_secrets(stored: &str, live: Option<&str>) -> Result<String, ConfigError> {
    if !stored.contains(REDACTED) && !stored.contains(":***@") {
        return Ok(stored.to_string());
    }
    let mut t: toml::Table = stored
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
    let live: toml::Table = match live {
        Some(l) => l
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?,
        None => toml::Table::new(),
    };
    let mut missing = Vec::new();
    for k in SECRET_KEYS.iter().chain(URL_KEYS) {
        let Some(toml::Value::String(v)) = table_get_mut(&mut t, k) else {
            continue;
        };
        let redacted = v == REDACTED || v.contains(":***@");
        if !redacted {
            continue;
        }
        match table_get(&live, k).and_then(|x| x.as_str()) {
            Some(l) if SECRET_KEYS.contains(k) || redact_url(l) == *v => *v = l.to_string(),
            _ => missing.push(format!(
                "{k} was a secret in that version and the live file does not hold the same one; set it in the file (or config.env) by hand."
            )),
        }
    }
    if !missing.is_empty() {
        return Err(ConfigError::Invalid(missing));
    }
    let body = toml::to_string_pretty(&t).map_err(|e| ConfigError::Parse(e.to_string()))?;
    Ok(body)
}

/// A configuration flattened to dotted keys and TOML values (`queue.max_pending` → `100`),
/// secrets redacted; a value that is unset is absent.
pub fn flatten(c: &Config) -> std::collections::BTreeMap<String, String> {
    fn flat(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
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
    let mut out = std::collections::BTreeMap::new();
    if let Ok(v) = toml::Value::try_from(c.redacted()) {
        flat("", &v, &mut out);
    }
    out
}

/// This binary's built-in defaults, flattened ([`flatten`]).
pub fn defaults_flat() -> std::collections::BTreeMap<String, String> {
    flatten(&Config::default())
}

/// Defaults that differ between `recorded` (the defaults of the binary that applied a stored
/// version) and this binary's: (key, then, now), `unset` for a default that has none (or a
/// setting that is gone).
pub fn default_changes(
    recorded: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String, String)> {
    let now = defaults_flat();
    let mut keys: std::collections::BTreeSet<&String> = now.keys().collect();
    keys.extend(recorded.keys());
    keys.into_iter()
        .filter_map(|k| {
            let then = recorded.get(k);
            let cur = now.get(k);
            (then != cur).then(|| {
                (
                    k.clone(),
                    then.cloned().unwrap_or_else(|| "unset".into()),
                    cur.cloned().unwrap_or_else(|| "unset".into()),
                )
            })
        })
        .collect()
}

impl Config {
    /// Merge defaults, `file`, the environment and `flags`, then validate.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            std::fs::metadata(f).map_err(|e| ConfigError::File(f.to_path_buf(), e.to_string()))?;
            fig = fig.merge(Toml::file(f));
        }
        if let Some(env_file) = env_file_for(file) {
            let text = std::fs::read_to_string(&env_file)
                .map_err(|e| ConfigError::File(env_file.clone(), e.to_string()))?;
            fig = merge_env_pairs(fig, &parse_env_file(&env_file, &text)?);
        }
        fig = fig.merge(
            Env::prefixed("NPANEL_")
                // Secrets are taken verbatim below: parsed as TOML, a numeric secret would be
                // refused with the secret quoted in the error.
                .filter(|k| k != "api__jwt_secret")
                .split("__")
                .ignore(IGNORED_ENV),
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
        p.extend(self.upgrade.validate());
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            p.push(format!("log {:?} is not a valid log filter.", self.log));
        }
        p
    }

    /// Every setting whose value differs from the built-in default, as (dotted key, value,
    /// default) in TOML syntax, secrets hidden; a default that is unset reads `unset`.
    pub fn diff_from_defaults(&self) -> Vec<(String, String, String)> {
        let (now, defaults) = (flatten(self), defaults_flat());
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
    fn secrets_are_redacted_for_storage_and_restored_from_the_live_file() {
        let plain = "# comment kept\n[queue]\nmax_pending = 5\n";
        assert_eq!(redact_file_text(plain).unwrap(), plain);
        let live = "[api]\njwt_secret = \"0123456789abcdefXYZ\"\n[store]\nurl = \"postgres://np:pw@db/np\"\n";
        let stored = redact_file_text(live).unwrap();
        assert!(!stored.contains("0123456789abcdefXYZ") && !stored.contains(":pw@"));
        assert!(stored.contains(REDACTED) && stored.contains("postgres://np:***@db/np"));
        let back = restore_secrets(&stored, Some(live)).unwrap();
        assert!(back.contains("0123456789abcdefXYZ") && back.contains("postgres://np:pw@db/np"));
        // The live file lost the database password: refused, naming the key.
        let e = restore_secrets(
            &stored,
            Some("[api]\njwt_secret = \"x123456789abcdefXYZ\"\n"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("store.url"), "{e}");
    }

    #[test]
    fn env_file_lines_are_parsed_or_named() {
        let p = Path::new("/etc/npanel/config.env");
        let v = parse_env_file(
            p,
            "# c\n\nexport NPANEL_LOG=debug\nREDIS_URL='redis://h'\nNPANEL_X=\"a b\"\n",
        )
        .unwrap();
        assert_eq!(
            v,
            vec![
                ("NPANEL_LOG".into(), "debug".into()),
                ("REDIS_URL".into(), "redis://h".into()),
                ("NPANEL_X".into(), "a b".into())
            ]
        );
        let e = parse_env_file(p, "NPANEL_LOG=info\nHOME=/root\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/npanel/config.env:2: HOME is not an nPanel setting (NPANEL_*, REDIS_URL or DATABASE_URL)"
        );
        assert!(parse_env_file(p, "just words\n").is_err());
    }

    #[test]
    fn changed_defaults_are_listed() {
        let mut then = defaults_flat();
        then.insert("ws.buffer".into(), "512".into());
        then.insert("gone.key".into(), "1".into());
        let c = default_changes(&then);
        assert!(c.contains(&("ws.buffer".into(), "512".into(), "1024".into())));
        assert!(c.contains(&("gone.key".into(), "1".into(), "unset".into())));
        assert_eq!(c.len(), 2);
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
