//! Job kinds and their payload types.
//!
//! Every kind has a stable string (`KIND`) that is what Redis stores: renaming a Rust type never
//! moves a queue (River's rule, see STYLE.md §2). Payloads are plain serde structs so that
//! `api` and `scheduler` can enqueue without linking any handler.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The closed set of job kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Account provisioning: create, suspend, unsuspend, change_package, terminate, change_password.
    Provision,
    /// Backup restore.
    Restore,
    /// Post-migration health check.
    HealthCheck,
    /// The hourly quota sweep.
    QuotaSweep,
    /// Install a signed release: verify, preflight, backup, deploy, validate, rollback,
    /// cleanup.
    Upgrade,
    /// Admin smoke-test job: sleeps, reports progress, can be told to fail.
    Diagnostic,
    /// Daily store retention: job history past `history_days`, audit records past
    /// `audit_days`.
    Retention,
    /// An account's home archived as nPanel's `.tar.zst` with `manifest.json` first.
    Backup,
}

/// One stage of a job and the slice of the overall percentage it covers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StageWeight {
    /// Stage name as handlers report it.
    pub name: &'static str,
    /// Percent at which the stage starts.
    pub start: f64,
    /// Percent at which it ends.
    pub end: f64,
}

const fn sw(name: &'static str, start: f64, end: f64) -> StageWeight {
    StageWeight { name, start, end }
}

/// The seed's five restore stages, in its order, weighted by where a restore spends its time.
/// A deliberate deviation from the seed's weights (extracting 0–20, validating 20–30,
/// creating accounts 30–50, restoring data 50–90, finalizing 90–100), which assume the
/// archive is first extracted and its data then copied: nPanel reads the archive once and
/// writes the home's files as they stream past (into a staging beside the home, see
/// `agent::restore`), so extracting *is* the data's restore and takes nearly all the time,
/// while installing the staged home is a rename. Percent, and so the ETA, follow time only
/// when the weights do: with the seed's, a restore's ETA would be off by 4× during
/// extraction.
const RESTORE_STAGES: &[StageWeight] = &[
    sw("extracting", 0.0, 90.0),
    sw("validating", 90.0, 92.0),
    sw("creating_accounts", 92.0, 95.0),
    sw("restoring_data", 95.0, 99.0),
    sw("finalizing", 99.0, 100.0),
];
/// Verify and preflight are quick; the backup copies the store; deploy and validate wait on
/// restarts and a job round trip.
const UPGRADE_STAGES: &[StageWeight] = &[
    sw("verify", 0.0, 5.0),
    sw("preflight", 5.0, 15.0),
    sw("backup", 15.0, 35.0),
    sw("deploy", 35.0, 60.0),
    sw("validate", 60.0, 90.0),
    sw("rollback", 90.0, 95.0),
    sw("cleanup", 95.0, 100.0),
];

impl JobKind {
    /// Every kind, in a fixed order.
    pub const ALL: [JobKind; 8] = [
        JobKind::Provision,
        JobKind::Restore,
        JobKind::HealthCheck,
        JobKind::QuotaSweep,
        JobKind::Upgrade,
        JobKind::Diagnostic,
        JobKind::Retention,
        JobKind::Backup,
    ];

    /// The stable kind string stored in Redis and used on the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobKind::Provision => "provision",
            JobKind::Restore => "restore",
            JobKind::HealthCheck => "health_check",
            JobKind::QuotaSweep => "quota_sweep",
            JobKind::Upgrade => "upgrade",
            JobKind::Diagnostic => "diagnostic",
            JobKind::Retention => "retention",
            JobKind::Backup => "backup",
        }
    }

    /// Default concurrency limit across all worker processes (DESIGN §2).
    pub const fn default_limit(self) -> u32 {
        match self {
            JobKind::Provision => 10,
            JobKind::Restore => 3,
            JobKind::HealthCheck => 5,
            JobKind::QuotaSweep => 1,
            JobKind::Upgrade => 1,
            JobKind::Diagnostic => 10,
            JobKind::Retention => 1,
            JobKind::Backup => 2,
        }
    }

    /// Default number of attempts before a job is `failed`.
    pub const fn default_max_attempts(self) -> u32 {
        match self {
            JobKind::Provision => 5,
            JobKind::Restore => 3,
            JobKind::HealthCheck => 3,
            JobKind::QuotaSweep => 3,
            // Never retried after a failure (its handler fails permanently); the extra
            // attempts are for the restarts it causes: each hands the job to the restarted
            // process, which resumes following the detached deploy (workers/src/upgrade.rs).
            JobKind::Upgrade => 5,
            JobKind::Diagnostic => 3,
            JobKind::Retention => 3,
            JobKind::Backup => 3,
        }
    }

    /// How the overall percentage is split across stages. Empty: one stage, 0–100.
    pub const fn stages(self) -> &'static [StageWeight] {
        match self {
            JobKind::Restore => RESTORE_STAGES,
            JobKind::Upgrade => UPGRADE_STAGES,
            _ => &[],
        }
    }

    /// Check that `payload` is a valid payload of this kind, and normalise it.
    pub fn validate_payload(self, payload: serde_json::Value) -> Result<serde_json::Value, String> {
        fn check<T: JobPayload>(v: serde_json::Value) -> Result<serde_json::Value, String> {
            let t: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
            serde_json::to_value(t).map_err(|e| e.to_string())
        }
        let payload = if payload.is_null() {
            serde_json::json!({})
        } else {
            payload
        };
        match self {
            JobKind::Provision => check::<Provision>(payload),
            JobKind::Restore => check::<Restore>(payload),
            JobKind::HealthCheck => check::<HealthCheck>(payload),
            JobKind::QuotaSweep => check::<QuotaSweep>(payload),
            JobKind::Upgrade => check::<Upgrade>(payload),
            JobKind::Diagnostic => check::<Diagnostic>(payload),
            JobKind::Retention => check::<Retention>(payload),
            JobKind::Backup => check::<Backup>(payload),
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a kind string that names no job type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job type {0:?}; known types: provision, restore, health_check, quota_sweep, upgrade, diagnostic, retention, backup")]
pub struct UnknownKind(pub String);

impl FromStr for JobKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// A typed payload bound to its kind.
pub trait JobPayload: Serialize + DeserializeOwned + Send + 'static {
    /// The kind this payload belongs to.
    const KIND: JobKind;
}

/// `diagnostic`: sleeps `duration_ms` in `steps` progress steps and fails its first
/// `fail_attempts` attempts. Operators use it to check a deployment end to end.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Diagnostic {
    /// Total sleep in milliseconds.
    pub duration_ms: u64,
    /// Number of progress steps (0 = report only at the end).
    pub steps: u32,
    /// How many attempts fail before one succeeds.
    pub fail_attempts: u32,
    /// Free number, ignored by the handler: load tests carry a send timestamp here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Free text, ignored by the handler: load tests pad jobs to the peers' job shape with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}
impl JobPayload for Diagnostic {
    const KIND: JobKind = JobKind::Diagnostic;
}

/// The provisioning actions WHMCS drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionAction {
    /// Create the account.
    Create,
    /// Suspend it.
    Suspend,
    /// Unsuspend it.
    Unsuspend,
    /// Move it to another package.
    ChangePackage,
    /// Remove it.
    Terminate,
    /// Set a new password.
    ChangePassword,
    /// Re-apply a package's (changed) limits to every account on it: one job, walking them.
    ReapplyPackage,
    /// Write the account's security fragments again from its effective security policy (the
    /// store's), after `POST /api/accounts/{id}/security-policy` changed it.
    ApplySecurity,
    /// Write the account's effective email policy (the store's: defaults < package < the
    /// account's override) to the host and reload Exim, after
    /// `PUT /api/accounts/{id}/email-policy` changed it.
    ApplyEmailPolicy,
    /// Give the account the addon domain `domain`: the store's row (within the package's
    /// `addon_domains`), its zone file, and its mailbox logins counted as the account's.
    AddDomain,
    /// Take the addon domain `domain` away again (zone, row, mail policy).
    RemoveDomain,
    /// Create the MariaDB/MySQL database `<account>_<database>` (within the package's
    /// `databases`).
    CreateDatabase,
}

/// `provision`: one action on one account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provision {
    /// What to do.
    pub action: ProvisionAction,
    /// The account (system user name); empty for `reapply_package`, which names a package.
    #[serde(default)]
    pub account: String,
    /// Package name, for create and change_package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// Primary domain, for create; the addon domain, for add_domain and remove_domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The database's name without the `<account>_` prefix, for create_database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// WHMCS service id, when WHMCS asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<u64>,
    /// Why (suspend, terminate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The new password (create, change_password). Never shown: a job's payload is
    /// serialised with secrets redacted (see `job::redact_secrets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The package's version being applied (reapply_package).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_version: Option<i64>,
}
impl JobPayload for Provision {
    const KIND: JobKind = JobKind::Provision;
}

/// `backup`: archive an account's home (`<host_root>/backups/<account>-<UTC>.tar.zst`, its
/// `manifest.json` first: account, package, domains, mailboxes, file count and bytes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// The account.
    pub account: String,
}
impl JobPayload for Backup {
    const KIND: JobKind = JobKind::Backup;
}

/// `retention`: forget what is past its retention in the store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep finished jobs this many days (default: the configured `store.history_days`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_days: Option<u32>,
    /// Keep audit records this many days (default: `store.audit_days`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_days: Option<u32>,
}
impl JobPayload for Retention {
    const KIND: JobKind = JobKind::Retention;
}

/// `restore`: restore an account from a backup archive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restore {
    /// Path of the archive on the server.
    pub archive: String,
    /// Account to restore into (defaults to the one in the archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The package of an account the restore creates (when it is not in the store); default:
    /// the archive's `PLAN` when a package of that id is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}
impl JobPayload for Restore {
    const KIND: JobKind = JobKind::Restore;
}

/// The account an archive's file name names: `cpmove-USER[.tar[.gz]]`, `USER.tar[.gz]`,
/// `backup-…_USER.tar[.gz]`, or nPanel's `USER-<UTC>.tar.zst`.
pub fn account_from_archive_name(path: &str) -> Option<String> {
    let name = std::path::Path::new(path).file_name()?.to_str()?;
    let stem = [".tar.gz", ".tgz", ".tar.zst", ".tar"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(name);
    // nPanel's `<account>-<YYYYMMDDTHHMMSSZ>[-N]`: the account is what comes before the stamp.
    let npanel = || {
        let mut parts: Vec<&str> = stem.split('-').collect();
        if parts.len() > 2 && parts.last()?.bytes().all(|b| b.is_ascii_digit()) {
            parts.pop();
        }
        let stamp = parts.pop()?;
        let is_stamp = stamp.len() == 16
            && stamp.as_bytes()[8] == b'T'
            && stamp.ends_with('Z')
            && stamp.bytes().filter(u8::is_ascii_digit).count() == 14;
        (is_stamp && !parts.is_empty()).then(|| &stem[..parts.join("-").len()])
    };
    let user = if let Some(u) = stem.strip_prefix("cpmove-") {
        u
    } else if let Some(rest) = stem.strip_prefix("backup-") {
        rest.rsplit_once('_')?.1
    } else if let Some(u) = npanel() {
        u
    } else {
        stem
    };
    // A host account name, as the agent takes it (lower-case letter first, then letters,
    // digits, `_` and `-`, at most 32); the store's rules are stricter and are checked where
    // the account is looked up.
    let ok = (1..=32).contains(&user.len())
        && user.as_bytes()[0].is_ascii_lowercase()
        && user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    ok.then(|| user.to_string())
}

/// `health_check`: the post-migration health report of one migration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Migration id (the restore job's id).
    pub migration_id: String,
    /// Wait until this long after the restore finished (the check enqueued with a restore
    /// waits 30 s); 0: at once.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wait_secs: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
impl JobPayload for HealthCheck {
    const KIND: JobKind = JobKind::HealthCheck;
}

/// `quota_sweep`: measure every account's disk and bandwidth use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaSweep {
    /// The scheduled tick this sweep belongs to (unix seconds), when the scheduler enqueued it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tick: Option<i64>,
}
impl JobPayload for QuotaSweep {
    const KIND: JobKind = JobKind::QuotaSweep;
}

/// The stages of an upgrade, in order (`rollback` only when a stage after `backup` failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeStage {
    /// The tarball's minisign signature, its trusted version, no downgrade without force.
    Verify,
    /// Checks before anything changes (PASS/WARN/FAIL/SKIP).
    Preflight,
    /// Store, config and Redis snapshot, with checksums.
    Backup,
    /// `releases/<version>/`, the `current` swap, migrations, restart.
    Deploy,
    /// Health, version, one `diagnostic` round trip, error rate.
    Validate,
    /// The previous release back (and the store, when migrations changed it).
    Rollback,
    /// Keep the newest releases and backups.
    Cleanup,
}

impl UpgradeStage {
    /// Every stage, in order.
    pub const ALL: [UpgradeStage; 7] = [
        UpgradeStage::Verify,
        UpgradeStage::Preflight,
        UpgradeStage::Backup,
        UpgradeStage::Deploy,
        UpgradeStage::Validate,
        UpgradeStage::Rollback,
        UpgradeStage::Cleanup,
    ];

    /// The stage name progress and audit records use.
    pub const fn as_str(self) -> &'static str {
        match self {
            UpgradeStage::Verify => "verify",
            UpgradeStage::Preflight => "preflight",
            UpgradeStage::Backup => "backup",
            UpgradeStage::Deploy => "deploy",
            UpgradeStage::Validate => "validate",
            UpgradeStage::Rollback => "rollback",
            UpgradeStage::Cleanup => "cleanup",
        }
    }
}

/// `upgrade`: install a signed release tarball (DESIGN §14; admin only, limit 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upgrade {
    /// Path of the release tarball (`npanel-<version>.tar.gz`) on the server.
    pub tarball: String,
    /// Path of its minisign signature; default `<tarball>.minisig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Allow a downgrade (or reinstalling the running version).
    #[serde(default, skip_serializing_if = "is_false")]
    pub force: bool,
    /// Verify and preflight only: change nothing, answer the report.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
}

fn is_false(v: &bool) -> bool {
    !*v
}

impl Upgrade {
    /// The version this build reports (`npanel --version`, `GET /api/admin/upgrade`, an
    /// upgrade's from-version): `NPANEL_BUILD_VERSION` at run time (a packaged wrapper may set
    /// it), else at build time (release builds stamp it), else the crate's version.
    pub fn running_version() -> String {
        std::env::var("NPANEL_BUILD_VERSION")
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| option_env!("NPANEL_BUILD_VERSION").map(str::to_string))
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
    }
}
impl JobPayload for Upgrade {
    const KIND: JobKind = JobKind::Upgrade;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_strings_are_stable_and_round_trip() {
        let names: Vec<_> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "provision",
                "restore",
                "health_check",
                "quota_sweep",
                "upgrade",
                "diagnostic",
                "retention",
                "backup"
            ]
        );
        for k in JobKind::ALL {
            assert_eq!(k.as_str().parse::<JobKind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        let err = "backups".parse::<JobKind>().unwrap_err();
        assert!(err.to_string().contains("unknown job type \"backups\""));
    }

    #[test]
    fn payloads_are_validated() {
        let ok = JobKind::Diagnostic
            .validate_payload(serde_json::json!({"duration_ms": 5}))
            .unwrap();
        assert_eq!(ok["duration_ms"], 5);
        assert_eq!(ok["steps"], 0);
        assert!(JobKind::Diagnostic
            .validate_payload(serde_json::json!({"duration": 5}))
            .is_err());
        assert!(JobKind::Provision
            .validate_payload(serde_json::json!({"action": "explode", "account": "a"}))
            .is_err());
        assert!(JobKind::Diagnostic
            .validate_payload(serde_json::Value::Null)
            .is_ok());
    }

    #[test]
    fn restore_and_upgrade_stage_weights_cover_0_to_100() {
        for kind in [JobKind::Restore, JobKind::Upgrade] {
            let s = kind.stages();
            assert_eq!(s.first().unwrap().start, 0.0);
            assert_eq!(s.last().unwrap().end, 100.0);
            for w in s.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
        }
        let names: Vec<_> = JobKind::Upgrade.stages().iter().map(|w| w.name).collect();
        let stages: Vec<_> = UpgradeStage::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, stages);
    }

    #[test]
    fn upgrade_payload_names_a_tarball() {
        let v = JobKind::Upgrade
            .validate_payload(serde_json::json!({"tarball": "/srv/npanel-1.2.0.tar.gz"}))
            .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"tarball": "/srv/npanel-1.2.0.tar.gz"})
        );
        let v = JobKind::Upgrade
            .validate_payload(
                serde_json::json!({"tarball": "t", "force": true, "dry_run": true,
                "signature": "t.sig"}),
            )
            .unwrap();
        assert_eq!(v["force"], true);
        assert_eq!(v["dry_run"], true);
        assert!(JobKind::Upgrade
            .validate_payload(serde_json::json!({"stage": "deploy", "version": "1"}))
            .is_err());
        assert!(JobKind::Upgrade
            .validate_payload(serde_json::Value::Null)
            .is_err());
    }
}
