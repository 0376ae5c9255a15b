//! Security defaults and per-account overrides (DESIGN §13, issue 9).
//!
//! # Why this shape
//! - **One typed list of settings** ([`SecuritySettings`]): what the agent's fragments under
//!   `etc/npanel/accounts/<user>/` write (PHP, SSH, cron, home mode, database and relay policy)
//!   plus the password rules the API and WHMCS enforce. The store owns the templates because
//!   both the API (showing, validating, checking passwords) and the workers (writing the host
//!   fragments) need the same values, and the store is the one crate both depend on.
//! - **Effective = template < overrides.** An account stores only its chosen template (`None`:
//!   the host's `host.security_profile`) and the settings it pins ([`SecurityOverrides`]); the
//!   effective value of each setting says where it comes from (`template:strict` or
//!   `override`), so a template change reaches every account that did not pin a value.
//! - **Validated before anything is written.** Unknown keys and out-of-range values are refused
//!   with the setting named ([`SecurityError`]); the same bounds hold on the host side (the
//!   agent re-validates what it writes into a file).
//! - **Stored per account** in `account_security` (migration 0010), read-modify-written in one
//!   transaction so two concurrent changes cannot lose each other's fields.

use crate::{now_ms, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sqlx::Row;

/// The templates of DESIGN §13.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityPolicy {
    /// The default: the seed's list (12+ character mixed-case passwords, SSH key only, 0750
    /// homes, PHP `disable_functions`, no DROP, no open relay).
    #[default]
    Strict,
    /// Passwords of 10+, SSH passwords allowed, fewer PHP functions disabled.
    Moderate,
    /// For old sites that need it: 8+ character passwords, `0711` homes, only `dl` disabled.
    Legacy,
}

impl SecurityPolicy {
    /// Every template, strictest first.
    pub const ALL: [SecurityPolicy; 3] = [
        SecurityPolicy::Strict,
        SecurityPolicy::Moderate,
        SecurityPolicy::Legacy,
    ];

    /// Its name (`strict`, `moderate`, `legacy`).
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::Strict => "strict",
            SecurityPolicy::Moderate => "moderate",
            SecurityPolicy::Legacy => "legacy",
        }
    }

    /// Parse a name.
    pub fn parse(s: &str) -> Option<SecurityPolicy> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The template's settings.
    pub fn template(self) -> SecuritySettings {
        let strict_php = "exec,passthru,shell_exec,system,proc_open,popen,pcntl_exec,pcntl_fork,proc_nice,proc_terminate,proc_get_status,posix_kill,posix_setuid,posix_setgid,posix_mkfifo,dl,show_source,symlink,link";
        let moderate_php =
            "exec,passthru,shell_exec,system,proc_open,popen,pcntl_exec,dl,show_source";
        let list = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        match self {
            SecurityPolicy::Strict => SecuritySettings {
                password_min_length: 12,
                password_min_classes: 3,
                password_mixed_case: true,
                ssh_password_auth: false,
                ssh_tcp_forwarding: TcpForwarding::No,
                home_mode: "0750".into(),
                php_disable_functions: list(strict_php),
                php_allow_url_fopen: false,
                php_open_basedir: OpenBasedir::Home,
                cron: true,
                db_drop_privilege: false,
                mail_relay: MailRelay::Authenticated,
            },
            SecurityPolicy::Moderate => SecuritySettings {
                password_min_length: 10,
                password_min_classes: 3,
                password_mixed_case: true,
                ssh_password_auth: true,
                ssh_tcp_forwarding: TcpForwarding::No,
                home_mode: "0750".into(),
                php_disable_functions: list(moderate_php),
                php_allow_url_fopen: true,
                php_open_basedir: OpenBasedir::HomeAndTmp,
                cron: true,
                db_drop_privilege: false,
                mail_relay: MailRelay::Authenticated,
            },
            SecurityPolicy::Legacy => SecuritySettings {
                password_min_length: 8,
                password_min_classes: 2,
                password_mixed_case: false,
                ssh_password_auth: true,
                ssh_tcp_forwarding: TcpForwarding::Local,
                home_mode: "0711".into(),
                php_disable_functions: list("dl"),
                php_allow_url_fopen: true,
                php_open_basedir: OpenBasedir::Off,
                cron: true,
                db_drop_privilege: true,
                mail_relay: MailRelay::Local,
            },
        }
    }
}

/// sshd `AllowTcpForwarding` for the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpForwarding {
    /// None.
    No,
    /// Local forwarding only.
    Local,
    /// Local and remote.
    Yes,
}

/// PHP `open_basedir` for the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenBasedir {
    /// `<home>/` only.
    Home,
    /// `<home>/:/tmp/`.
    HomeAndTmp,
    /// Not set.
    Off,
}

/// Who may send mail through the host as this account. There is no "open" value: an open relay
/// is never allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailRelay {
    /// SMTP-authenticated senders only.
    Authenticated,
    /// Authenticated senders and the account's own local scripts (`sendmail`).
    Local,
}

/// Every setting of a security policy, with its effective value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// Shortest password accepted (8-128).
    pub password_min_length: u32,
    /// How many of lowercase, uppercase, digits, symbols a password needs (1-4).
    pub password_min_classes: u32,
    /// Whether a password needs both a lowercase and an uppercase letter.
    pub password_mixed_case: bool,
    /// sshd `PasswordAuthentication` (false: key only).
    pub ssh_password_auth: bool,
    /// sshd `AllowTcpForwarding`.
    pub ssh_tcp_forwarding: TcpForwarding,
    /// Mode of the home directory, octal (`0700`, `0710`, `0711`, `0750`, `0751`, `0755`).
    pub home_mode: String,
    /// PHP `disable_functions` (function names, at most 200).
    pub php_disable_functions: Vec<String>,
    /// PHP `allow_url_fopen`.
    pub php_allow_url_fopen: bool,
    /// PHP `open_basedir`.
    pub php_open_basedir: OpenBasedir,
    /// Whether the account may use cron (`cron.allow`).
    pub cron: bool,
    /// Whether the account's database users get DROP.
    pub db_drop_privilege: bool,
    /// Who may relay mail as the account (never open).
    pub mail_relay: MailRelay,
}

/// The settings' names, in display order.
pub const SECURITY_SETTINGS: &[&str] = &[
    "password_min_length",
    "password_min_classes",
    "password_mixed_case",
    "ssh_password_auth",
    "ssh_tcp_forwarding",
    "home_mode",
    "php_disable_functions",
    "php_allow_url_fopen",
    "php_open_basedir",
    "cron",
    "db_drop_privilege",
    "mail_relay",
];

/// Home modes an account may have: the owner keeps full access, nobody else may write, no
/// special bits.
pub const HOME_MODES: &[&str] = &["0700", "0710", "0711", "0750", "0751", "0755"];

/// Longest password anyone may set (the agent's limit is higher; this one is the panel's).
pub const PASSWORD_MAX_LENGTH: usize = 128;

/// Why a policy change or a password was refused. Each names the setting (or the rule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    /// A key that is no setting.
    #[error("settings.{0} is not a security setting; the settings are: {list}", list = SECURITY_SETTINGS.join(", "))]
    UnknownSetting(String),
    /// A value of the wrong type or out of range.
    #[error("settings.{field}: {message}")]
    InvalidValue {
        /// The setting.
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// An unknown template name.
    #[error("policy {0:?} is not a security template; use strict, moderate or legacy")]
    UnknownPolicy(String),
    /// A password that breaks one of the policy's rules.
    #[error("the password breaks the {policy} security policy's rule {rule}: {message}")]
    Password {
        /// The effective policy's template.
        policy: &'static str,
        /// The rule (a setting name, or `password_characters` / `password_max_length`).
        rule: &'static str,
        /// What the rule asks.
        message: String,
    },
}

impl From<SecurityError> for StoreError {
    fn from(e: SecurityError) -> Self {
        StoreError::Invalid(e.to_string())
    }
}

fn invalid(field: &str, message: impl Into<String>) -> SecurityError {
    SecurityError::InvalidValue {
        field: field.into(),
        message: message.into(),
    }
}

/// A PHP function name: `[a-z_][a-z0-9_]*`, at most 64 bytes (it goes into `php.ini`).
fn php_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && (s.as_bytes()[0].is_ascii_lowercase() || s.as_bytes()[0] == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Parse one setting's value from JSON, checking its range.
fn parse_setting(field: &str, v: &Value) -> std::result::Result<Value, SecurityError> {
    let ty = |what: &str| invalid(field, format!("{v} is not {what}"));
    match field {
        "password_min_length" => {
            let n = v.as_u64().ok_or_else(|| ty("a whole number"))?;
            if !(8..=PASSWORD_MAX_LENGTH as u64).contains(&n) {
                return Err(invalid(
                    field,
                    format!("{n} is out of range: 8 to {PASSWORD_MAX_LENGTH}"),
                ));
            }
            Ok(json!(n))
        }
        "password_min_classes" => {
            let n = v.as_u64().ok_or_else(|| ty("a whole number"))?;
            if !(1..=4).contains(&n) {
                return Err(invalid(
                    field,
                    format!(
                        "{n} is out of range: 1 to 4 (of lowercase, uppercase, digits, symbols)"
                    ),
                ));
            }
            Ok(json!(n))
        }
        "password_mixed_case"
        | "ssh_password_auth"
        | "php_allow_url_fopen"
        | "cron"
        | "db_drop_privilege" => Ok(json!(v.as_bool().ok_or_else(|| ty("true or false"))?)),
        "ssh_tcp_forwarding" => serde_json::from_value::<TcpForwarding>(v.clone())
            .map(|x| json!(x))
            .map_err(|_| invalid(field, format!("{v} is not one of no, local, yes"))),
        "php_open_basedir" => serde_json::from_value::<OpenBasedir>(v.clone())
            .map(|x| json!(x))
            .map_err(|_| invalid(field, format!("{v} is not one of home, home_and_tmp, off"))),
        "mail_relay" => {
            if v.as_str() == Some("open") {
                return Err(invalid(
                    field,
                    "an open relay is never allowed; use authenticated or local",
                ));
            }
            serde_json::from_value::<MailRelay>(v.clone())
                .map(|x| json!(x))
                .map_err(|_| invalid(field, format!("{v} is not one of authenticated, local")))
        }
        "home_mode" => {
            let s = v
                .as_str()
                .ok_or_else(|| ty("an octal mode string like \"0750\""))?;
            if !HOME_MODES.contains(&s) {
                return Err(invalid(
                    field,
                    format!(
                        "{s:?} is not allowed; use one of {} (the owner keeps rwx, nobody else may write)",
                        HOME_MODES.join(", ")
                    ),
                ));
            }
            Ok(json!(s))
        }
        "php_disable_functions" => {
            let items = v
                .as_array()
                .ok_or_else(|| ty("a list of PHP function names"))?;
            if items.len() > 200 {
                return Err(invalid(
                    field,
                    format!("{} names; at most 200", items.len()),
                ));
            }
            let mut out: Vec<String> = Vec::with_capacity(items.len());
            for i in items {
                let s = i
                    .as_str()
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| php_name_ok(s))
                    .ok_or_else(|| {
                        invalid(field, format!("{i} is not a PHP function name ([a-z_][a-z0-9_]*, at most 64 characters)"))
                    })?;
                if !out.contains(&s) {
                    out.push(s);
                }
            }
            Ok(json!(out))
        }
        other => Err(SecurityError::UnknownSetting(other.to_string())),
    }
}

/// The settings an account pins, by name (each value already validated).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecurityOverrides(pub Map<String, Value>);

impl SecurityOverrides {
    /// Apply a patch from an API body: each key must be a setting; `null` removes the
    /// override (back to the template). Nothing is applied when any key is refused.
    pub fn patched(&self, patch: &Map<String, Value>) -> std::result::Result<Self, SecurityError> {
        let mut out = self.0.clone();
        for (k, v) in patch {
            if !SECURITY_SETTINGS.contains(&k.as_str()) {
                return Err(SecurityError::UnknownSetting(k.clone()));
            }
            if v.is_null() {
                out.remove(k);
            } else {
                out.insert(k.clone(), parse_setting(k, v)?);
            }
        }
        Ok(SecurityOverrides(out))
    }
}

/// What an account stores: its template (`None`: the host default) and its overrides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AccountSecurity {
    /// The chosen template; `None` follows `host.security_profile`.
    pub policy: Option<SecurityPolicy>,
    /// The pinned settings.
    pub overrides: SecurityOverrides,
}

/// Where an effective value comes from.
pub fn template_source(p: SecurityPolicy) -> String {
    format!("template:{}", p.as_str())
}

/// An account's effective security policy.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectiveSecurity {
    /// The template in force.
    pub policy: SecurityPolicy,
    /// `account` (chosen for the account) or `host_default` (`host.security_profile`).
    pub policy_source: &'static str,
    /// The effective values.
    pub settings: SecuritySettings,
    /// Per setting: `template:<name>` or `override`.
    pub sources: Map<String, Value>,
}

impl AccountSecurity {
    /// The effective policy with `host_default` as the template when none is chosen.
    pub fn effective(&self, host_default: SecurityPolicy) -> EffectiveSecurity {
        let policy = self.policy.unwrap_or(host_default);
        let mut doc = match serde_json::to_value(policy.template()) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let mut sources = Map::new();
        for name in SECURITY_SETTINGS {
            let src = match self.overrides.0.get(*name) {
                Some(v) => {
                    doc.insert((*name).into(), v.clone());
                    "override".to_string()
                }
                None => template_source(policy),
            };
            sources.insert((*name).into(), json!(src));
        }
        // Stored overrides were validated on the way in; a row from a newer version with a
        // value this one cannot read falls back to the template rather than failing reads.
        let settings = serde_json::from_value(Value::Object(doc)).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "stored security overrides do not parse; using the template");
            policy.template()
        });
        EffectiveSecurity {
            policy,
            policy_source: if self.policy.is_some() {
                "account"
            } else {
                "host_default"
            },
            settings,
            sources,
        }
    }
}

impl EffectiveSecurity {
    /// `{name: {"value", "source"}}`, in [`SECURITY_SETTINGS`] order.
    pub fn settings_view(&self) -> Map<String, Value> {
        let values = match serde_json::to_value(&self.settings) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        SECURITY_SETTINGS
            .iter()
            .map(|n| {
                (
                    (*n).to_string(),
                    json!({"value": values.get(*n), "source": self.sources.get(*n)}),
                )
            })
            .collect()
    }

    /// The fields that differ between `self` (before) and `after`: the template, and each
    /// setting whose value or source changed, as `{field, before, after, source_before,
    /// source_after}`.
    pub fn diff(&self, after: &EffectiveSecurity) -> Vec<Value> {
        let mut out = Vec::new();
        if self.policy != after.policy || self.policy_source != after.policy_source {
            out.push(
                json!({"field": "policy", "before": self.policy, "after": after.policy,
                "source_before": self.policy_source, "source_after": after.policy_source}),
            );
        }
        let (b, a) = (self.settings_view(), after.settings_view());
        for n in SECURITY_SETTINGS {
            let (bv, av) = (&b[*n], &a[*n]);
            if bv != av {
                out.push(
                    json!({"field": n, "before": bv["value"], "after": av["value"],
                    "source_before": bv["source"], "source_after": av["source"]}),
                );
            }
        }
        out
    }

    /// Whether the host's fragments must be written again to go from `self` to `after`
    /// (a host-side value or the template name changed; password rules live in the panel).
    pub fn host_differs(&self, after: &EffectiveSecurity) -> bool {
        let host = |e: &EffectiveSecurity| {
            let mut v = serde_json::to_value(&e.settings).unwrap_or(Value::Null);
            if let Some(m) = v.as_object_mut() {
                m.retain(|k, _| !k.starts_with("password_"));
            }
            (e.policy, v)
        };
        host(self) != host(after)
    }

    /// Check a password against the policy's rules; the error names the rule it breaks.
    pub fn check_password(&self, p: &str) -> std::result::Result<(), SecurityError> {
        let s = &self.settings;
        let policy = self.policy.as_str();
        let err = |rule: &'static str, message: String| SecurityError::Password {
            policy,
            rule,
            message,
        };
        if p.contains(['\n', '\r', ':', '\0']) {
            return Err(err(
                "password_characters",
                "no ':' , line breaks or NUL characters".into(),
            ));
        }
        let n = p.chars().count();
        if n > PASSWORD_MAX_LENGTH {
            return Err(err(
                "password_max_length",
                format!("at most {PASSWORD_MAX_LENGTH} characters (this one has {n})"),
            ));
        }
        if n < s.password_min_length as usize {
            return Err(err(
                "password_min_length",
                format!(
                    "at least {} characters (this one has {n})",
                    s.password_min_length
                ),
            ));
        }
        let (lower, upper) = (
            p.chars().any(|c| c.is_lowercase()),
            p.chars().any(|c| c.is_uppercase()),
        );
        if s.password_mixed_case && !(lower && upper) {
            return Err(err(
                "password_mixed_case",
                "both lowercase and uppercase letters".into(),
            ));
        }
        let classes = [
            lower,
            upper,
            p.chars().any(|c| c.is_ascii_digit()),
            p.chars().any(|c| !c.is_alphanumeric()),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if classes < s.password_min_classes as usize {
            return Err(err(
                "password_min_classes",
                format!(
                    "at least {} of: lowercase, uppercase, digits, symbols (this one has {classes})",
                    s.password_min_classes
                ),
            ));
        }
        Ok(())
    }
}

impl Store {
    /// What `account` stores (the default — host template, no overrides — when nothing is).
    pub async fn account_security(&self, account: &str) -> Result<AccountSecurity> {
        let row = sqlx::query("SELECT policy, settings FROM account_security WHERE account = $1")
            .bind(account)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| security_from_row(&r))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Change what `account` stores with `f` in one transaction (so concurrent changes do not
    /// lose each other's fields); answers (before, after). Writes nothing when `f` fails or
    /// changes nothing. The account must exist.
    pub async fn update_account_security<F>(
        &self,
        account: &str,
        f: F,
    ) -> Result<(AccountSecurity, AccountSecurity)>
    where
        F: FnOnce(&AccountSecurity) -> Result<AccountSecurity>,
    {
        let mut tx = self.write_tx().await?;
        let lock = match self.backend() {
            crate::Backend::Postgres => "SELECT id FROM accounts WHERE id = $1 FOR UPDATE",
            crate::Backend::Sqlite => "SELECT id FROM accounts WHERE id = $1",
        };
        if sqlx::query(lock)
            .bind(account)
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound(format!("account {account} not found")));
        }
        let before =
            match sqlx::query("SELECT policy, settings FROM account_security WHERE account = $1")
                .bind(account)
                .fetch_optional(&mut *tx)
                .await?
            {
                Some(r) => security_from_row(&r)?,
                None => AccountSecurity::default(),
            };
        let after = f(&before)?;
        if after != before {
            sqlx::query(
                "INSERT INTO account_security (account, policy, settings, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (account) DO UPDATE SET policy = excluded.policy, settings = excluded.settings, updated_at = excluded.updated_at",
            )
            .bind(account)
            .bind(after.policy.map(|p| p.as_str().to_string()))
            .bind(serde_json::to_string(&after.overrides)?)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((before, after))
    }

    /// Put back what [`Store::update_account_security`] replaced (a change whose host work
    /// could not be started).
    pub async fn restore_account_security(
        &self,
        account: &str,
        previous: &AccountSecurity,
    ) -> Result<()> {
        let prev = previous.clone();
        self.update_account_security(account, move |_| Ok(prev))
            .await
            .map(|_| ())
    }
}

fn security_from_row(r: &sqlx::any::AnyRow) -> Result<AccountSecurity> {
    let policy: Option<String> = r.try_get("policy")?;
    let settings: String = r.try_get("settings")?;
    Ok(AccountSecurity {
        policy: match policy {
            Some(p) => Some(
                SecurityPolicy::parse(&p)
                    .ok_or_else(|| StoreError::Database(format!("stored security policy {p:?}")))?,
            ),
            None => None,
        },
        overrides: serde_json::from_str(&settings)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_validate_against_their_own_rules() {
        for p in SecurityPolicy::ALL {
            let v = serde_json::to_value(p.template()).unwrap();
            let patch = v.as_object().unwrap().clone();
            let o = SecurityOverrides::default().patched(&patch).unwrap();
            assert_eq!(o.0.len(), SECURITY_SETTINGS.len(), "{p:?}");
            let e = AccountSecurity {
                policy: Some(p),
                overrides: o,
            }
            .effective(SecurityPolicy::Strict);
            assert_eq!(e.settings, p.template());
        }
    }

    #[test]
    fn refusals_name_the_setting() {
        let base = SecurityOverrides::default();
        let bad = |k: &str, v: Value| {
            let mut m = Map::new();
            m.insert(k.into(), v);
            base.patched(&m).unwrap_err().to_string()
        };
        assert!(bad("nope", json!(1)).starts_with("settings.nope is not"));
        assert!(
            bad("password_min_length", json!(4)).contains("password_min_length: 4 is out of range")
        );
        assert!(bad("home_mode", json!("0777")).contains("home_mode"));
        assert!(bad("mail_relay", json!("open")).contains("never allowed"));
        assert!(bad("php_disable_functions", json!(["exec\"\n"])).contains("php_disable_functions"));
    }

    #[test]
    fn passwords_follow_the_effective_rules() {
        let strict = AccountSecurity::default().effective(SecurityPolicy::Strict);
        let legacy = AccountSecurity::default().effective(SecurityPolicy::Legacy);
        let e = strict.check_password("Short-pw1").unwrap_err().to_string();
        assert!(e.contains("password_min_length"), "{e}");
        assert!(legacy.check_password("Short-pw1").is_ok());
        let e = strict
            .check_password("all-lowercase-999")
            .unwrap_err()
            .to_string();
        assert!(e.contains("password_mixed_case"), "{e}");
        assert!(strict.check_password("Correct-Horse-9").is_ok());
        assert!(legacy.check_password("bad:password1").is_err());
    }

    #[test]
    fn diff_lists_value_and_source_changes() {
        let before = AccountSecurity::default().effective(SecurityPolicy::Strict);
        let mut m = Map::new();
        m.insert("cron".into(), json!(false));
        let after = AccountSecurity {
            policy: None,
            overrides: SecurityOverrides::default().patched(&m).unwrap(),
        }
        .effective(SecurityPolicy::Strict);
        let d = before.diff(&after);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0]["field"], "cron");
        assert_eq!(
            (d[0]["before"].clone(), d[0]["after"].clone()),
            (json!(true), json!(false))
        );
        assert!(before.host_differs(&after));
        assert!(before.diff(&before).is_empty());
    }
}
