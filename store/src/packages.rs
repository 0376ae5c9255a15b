//! Packages (DESIGN §10): limits with "unlimited", features, lifecycle draft → active →
//! deprecated, versions, and the seed's YAML.
//!
//! A limit of `None` (JSON `null`, YAML `unlimited`) is unlimited. Sizes are megabytes in the
//! API (`disk_mb`) and may be written with units in YAML (`disk_quota: "10 GB"`).

use crate::{get_opt_str, ms_to_rfc3339, now_ms, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::BTreeSet;

/// At most this many packages.
pub const MAX_PACKAGES: i64 = 1000;
/// At most this many bytes per package document.
pub const MAX_PACKAGE_BYTES: usize = 50 * 1024;

/// Every feature a package may grant. `everything` in YAML means all of them.
pub const FEATURES: &[&str] = &[
    "addon_domains",
    "api_access",
    "backups",
    "cron",
    "databases",
    "dns",
    "email",
    "file_manager",
    "ftp",
    "git",
    "nodejs",
    "php",
    "python",
    "redirects",
    "spam_filter",
    "ssh",
    "ssl",
    "subdomains",
    "webmail",
    "wordpress",
];

/// Resource limits; `None` is unlimited.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Disk quota, MB.
    #[serde(default)]
    pub disk_mb: Option<u64>,
    /// Monthly bandwidth, MB.
    #[serde(default)]
    pub bandwidth_mb: Option<u64>,
    /// Mailboxes.
    #[serde(default)]
    pub email_accounts: Option<u64>,
    /// Databases.
    #[serde(default)]
    pub databases: Option<u64>,
    /// Addon domains.
    #[serde(default)]
    pub addon_domains: Option<u64>,
    /// Outgoing mail per hour.
    #[serde(default)]
    pub email_per_hour: Option<u64>,
    /// Outgoing mail burst per 15 minutes.
    #[serde(default)]
    pub email_burst_per_15min: Option<u64>,
    /// Outgoing mail volume per hour, MB. For the four `email_*` sending limits `None` means
    /// the default (see `email_policy`), never unlimited.
    #[serde(default)]
    pub email_mb_per_hour: Option<u64>,
    /// Simultaneous SMTP connections.
    #[serde(default)]
    pub email_max_connections: Option<u64>,
    /// CPU, percent of one core.
    #[serde(default)]
    pub cpu_percent: Option<u64>,
    /// Memory, MB.
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Disk I/O, MB/s.
    #[serde(default)]
    pub io_mbps: Option<u64>,
    /// Processes.
    #[serde(default)]
    pub pids: Option<u64>,
}

impl Limits {
    /// Problems with the values (one sentence each).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut zero = |name: &str, v: Option<u64>| {
            if v == Some(0) && !matches!(name, "addon_domains" | "databases" | "email_accounts") {
                p.push(format!(
                    "limits.{name} is 0, which would make the account unusable; use null for unlimited"
                ));
            }
        };
        zero("disk_mb", self.disk_mb);
        zero("bandwidth_mb", self.bandwidth_mb);
        zero("cpu_percent", self.cpu_percent);
        zero("memory_mb", self.memory_mb);
        zero("pids", self.pids);
        if self.cpu_percent.is_some_and(|c| c > 100 * 1024) {
            p.push("limits.cpu_percent is above 102400 (1024 cores)".into());
        }
        if self.memory_mb.is_some_and(|m| m < 16) {
            p.push("limits.memory_mb must be at least 16".into());
        }
        if self.pids.is_some_and(|m| m < 8) {
            p.push("limits.pids must be at least 8".into());
        }
        for (name, v, max) in [
            (
                "email_per_hour",
                self.email_per_hour,
                crate::MAX_EMAIL_PER_HOUR,
            ),
            (
                "email_burst_per_15min",
                self.email_burst_per_15min,
                crate::MAX_EMAIL_PER_HOUR,
            ),
            (
                "email_mb_per_hour",
                self.email_mb_per_hour,
                crate::MAX_EMAIL_MB_PER_HOUR,
            ),
            (
                "email_max_connections",
                self.email_max_connections,
                crate::MAX_EMAIL_CONNECTIONS,
            ),
        ] {
            if v.is_some_and(|v| v == 0 || v > u64::from(max)) {
                p.push(format!(
                    "limits.{name} must be between 1 and {max} (null: the default)"
                ));
            }
        }
        if let (Some(b), Some(h)) = (self.email_burst_per_15min, self.email_per_hour) {
            if b > h {
                p.push(format!(
                    "limits.email_burst_per_15min ({b}) must not exceed limits.email_per_hour ({h})"
                ));
            }
        }
        p
    }
}

/// Lifecycle of a package.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageStatus {
    /// Created, not yet usable for accounts.
    Draft,
    /// Validated; new accounts may use it.
    Active,
    /// Kept for the accounts on it; no new accounts.
    Deprecated,
}

impl PackageStatus {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            PackageStatus::Draft => "draft",
            PackageStatus::Active => "active",
            PackageStatus::Deprecated => "deprecated",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        match s {
            "draft" => Ok(PackageStatus::Draft),
            "active" => Ok(PackageStatus::Active),
            "deprecated" => Ok(PackageStatus::Deprecated),
            _ => Err(StoreError::Database(format!(
                "stored package status {s:?} is unknown"
            ))),
        }
    }
}

/// A package as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Package {
    /// Identifier (`^[a-z][a-z0-9_-]{0,31}$`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Bumped by every update.
    pub version: i64,
    /// Lifecycle state.
    pub status: PackageStatus,
    /// `None`: global; else the reseller that owns it.
    pub owner: Option<String>,
    /// Limits.
    pub limits: Limits,
    /// Granted features.
    pub features: Vec<String>,
    /// Features explicitly disabled (win over `features`).
    pub disabled_features: Vec<String>,
    /// Free-form pricing for billing (not interpreted).
    pub pricing: Option<serde_json::Value>,
    /// Created.
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Last change.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Package {
    /// Whether an account on this package has `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
            && !self.disabled_features.iter().any(|f| f == feature)
    }

    /// Granted features minus disabled ones.
    pub fn effective_features(&self) -> Vec<String> {
        self.features
            .iter()
            .filter(|f| !self.disabled_features.contains(f))
            .cloned()
            .collect()
    }
}

/// `POST /api/packages` body (also what YAML import produces).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPackage {
    /// Identifier.
    pub id: String,
    /// Display name (defaults to the id).
    #[serde(default)]
    pub name: Option<String>,
    /// Limits (missing = unlimited).
    #[serde(default)]
    pub limits: Limits,
    /// Features.
    #[serde(default)]
    pub features: Vec<String>,
    /// Disabled features.
    #[serde(default)]
    pub disabled_features: Vec<String>,
    /// Pricing.
    #[serde(default)]
    pub pricing: Option<serde_json::Value>,
    /// Owner reseller (admins only; resellers always own what they create).
    #[serde(default)]
    pub owner: Option<String>,
}

/// `PUT /api/packages/{id}` body: fields to change; `apply_to_existing` is the API's business.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageUpdate {
    /// New display name.
    #[serde(default)]
    pub name: Option<String>,
    /// New limits (replaces all of them).
    #[serde(default)]
    pub limits: Option<Limits>,
    /// New features.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// New disabled features.
    #[serde(default)]
    pub disabled_features: Option<Vec<String>>,
    /// New pricing.
    #[serde(default)]
    pub pricing: Option<serde_json::Value>,
    /// Enqueue one `provision/reapply_package` job for the accounts on it.
    #[serde(default)]
    pub apply_to_existing: bool,
}

fn validate_package_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id.as_bytes()[0].is_ascii_lowercase()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "package id {id:?} is invalid: 1-32 characters, a lowercase letter first, then lowercase letters, digits, '_' or '-'"
        )))
    }
}

/// A package's display name: 1 to 200 characters (characters, as the API's schema counts them,
/// not bytes), not only blanks. The same rule on create and on update.
fn validate_package_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(StoreError::Invalid(
            "name must be 1-200 characters".to_string(),
        ));
    }
    Ok(())
}

fn check_features(list: &[String], field: &str) -> Result<Vec<String>> {
    let mut out = BTreeSet::new();
    for f in list {
        if f == "everything" {
            out.extend(FEATURES.iter().map(|s| s.to_string()));
        } else if FEATURES.contains(&f.as_str()) {
            out.insert(f.clone());
        } else {
            return Err(StoreError::Invalid(format!(
                "{field} names an unknown feature {f:?}; features are: everything, {}",
                FEATURES.join(", ")
            )));
        }
    }
    Ok(out.into_iter().collect())
}

fn check_limits(l: &Limits) -> Result<()> {
    let p = l.problems();
    if p.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(p.join(" ")))
    }
}

fn check_size(p: &Package) -> Result<()> {
    let n = serde_json::to_vec(p)?.len();
    if n > MAX_PACKAGE_BYTES {
        return Err(StoreError::Invalid(format!(
            "package {} is {n} bytes; the most a package may be is {MAX_PACKAGE_BYTES} bytes (50 KiB)",
            p.id
        )));
    }
    Ok(())
}

const COLS: &str = "id, name, version, status, owner, limits, features, disabled_features, pricing, created_at, updated_at";

fn from_row(r: &AnyRow) -> Result<Package> {
    let pricing: Option<String> = get_opt_str(r, "pricing")?;
    Ok(Package {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        version: r.try_get("version")?,
        status: PackageStatus::parse(&r.try_get::<String, _>("status")?)?,
        owner: get_opt_str(r, "owner")?,
        limits: serde_json::from_str(&r.try_get::<String, _>("limits")?)?,
        features: serde_json::from_str(&r.try_get::<String, _>("features")?)?,
        disabled_features: serde_json::from_str(&r.try_get::<String, _>("disabled_features")?)?,
        pricing: pricing.map(|p| serde_json::from_str(&p)).transpose()?,
        created_at: ms_to_rfc3339(Some(r.try_get("created_at")?)),
        updated_at: ms_to_rfc3339(Some(r.try_get("updated_at")?)),
    })
}

/// One package, read through `exec` (inside a transaction, its own connection: a transaction
/// that asked the pool for a second connection could wait on itself).
pub(crate) async fn package_on<'e, E>(exec: E, id: &str) -> Result<Package>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!("SELECT {COLS} FROM packages WHERE id = $1"))
        .bind(id)
        .fetch_optional(exec)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no package {id:?}")))?;
    from_row(&row)
}

impl Store {
    /// Create a package as a draft. Errors: invalid id, limits or features; a duplicate id;
    /// more than [`MAX_PACKAGES`]; a document over [`MAX_PACKAGE_BYTES`].
    pub async fn create_package(&self, new: NewPackage) -> Result<Package> {
        validate_package_id(&new.id)?;
        if let Some(n) = &new.name {
            validate_package_name(n)?;
        }
        check_limits(&new.limits)?;
        let now = now_ms();
        let pkg = Package {
            name: new.name.clone().unwrap_or_else(|| new.id.clone()),
            id: new.id,
            version: 1,
            status: PackageStatus::Draft,
            owner: new.owner,
            limits: new.limits,
            features: check_features(&new.features, "features")?,
            disabled_features: check_features(&new.disabled_features, "disabled_features")?,
            pricing: new.pricing,
            created_at: ms_to_rfc3339(Some(now)),
            updated_at: ms_to_rfc3339(Some(now)),
        };
        check_size(&pkg)?;
        let mut tx = self.write_tx().await?;
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM packages")
            .fetch_one(&mut *tx)
            .await?;
        if n >= MAX_PACKAGES {
            return Err(StoreError::Conflict(format!(
                "there are already {n} packages, the most allowed ({MAX_PACKAGES}); delete unused ones first"
            )));
        }
        let exists = sqlx::query("SELECT 1 FROM packages WHERE id = $1")
            .bind(&pkg.id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::Conflict(format!(
                "package {} already exists",
                pkg.id
            )));
        }
        sqlx::query(&format!(
            "INSERT INTO packages ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&pkg.id)
        .bind(&pkg.name)
        .bind(pkg.version)
        .bind(pkg.status.as_str())
        .bind(pkg.owner.clone())
        .bind(serde_json::to_string(&pkg.limits)?)
        .bind(serde_json::to_string(&pkg.features)?)
        .bind(serde_json::to_string(&pkg.disabled_features)?)
        .bind(pkg.pricing.as_ref().map(|p| p.to_string()))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(pkg)
    }

    /// One package.
    pub async fn package(&self, id: &str) -> Result<Package> {
        package_on(self.pool(), id).await
    }

    /// Packages visible to `owner_scope` (`None`: all; `Some(r)`: global ones and r's),
    /// keyset by id after `after`.
    pub async fn list_packages(
        &self,
        owner_scope: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Package>> {
        let after = after.unwrap_or("");
        let rows = match owner_scope {
            None => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM packages WHERE id > $1 ORDER BY id LIMIT $2"
                ))
                .bind(after)
                .bind(limit)
                .fetch_all(self.pool())
                .await?
            }
            Some(r) => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM packages WHERE id > $1 AND (owner IS NULL OR owner = $2) ORDER BY id LIMIT $3"
                ))
                .bind(after)
                .bind(r)
                .bind(limit)
                .fetch_all(self.pool())
                .await?
            }
        };
        rows.iter().map(from_row).collect()
    }

    /// Move a package to `status`. Activation re-validates it; a deprecated package can be
    /// activated again; nothing goes back to draft.
    pub async fn set_package_status(&self, id: &str, status: PackageStatus) -> Result<Package> {
        let mut p = self.package(id).await?;
        if status == PackageStatus::Draft && p.status != PackageStatus::Draft {
            return Err(StoreError::Conflict(format!(
                "package {id} is {}; a package never goes back to draft",
                p.status.as_str()
            )));
        }
        if status == PackageStatus::Active {
            check_limits(&p.limits)?;
            check_features(&p.features, "features")?;
            check_features(&p.disabled_features, "disabled_features")?;
        }
        let now = now_ms();
        sqlx::query("UPDATE packages SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status.as_str())
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        p.status = status;
        p.updated_at = ms_to_rfc3339(Some(now));
        Ok(p)
    }

    /// Apply an update: bumps `version`. Returns the package before and after.
    pub async fn update_package(&self, id: &str, u: &PackageUpdate) -> Result<(Package, Package)> {
        let before = self.package(id).await?;
        let mut p = before.clone();
        if let Some(n) = &u.name {
            validate_package_name(n)?;
            p.name = n.clone();
        }
        if let Some(l) = &u.limits {
            check_limits(l)?;
            p.limits = l.clone();
        }
        if let Some(f) = &u.features {
            p.features = check_features(f, "features")?;
        }
        if let Some(f) = &u.disabled_features {
            p.disabled_features = check_features(f, "disabled_features")?;
        }
        if u.pricing.is_some() {
            p.pricing = u.pricing.clone();
        }
        p.version += 1;
        let now = now_ms();
        p.updated_at = ms_to_rfc3339(Some(now));
        check_size(&p)?;
        // Optimistic: the version we read must still be there.
        let done = sqlx::query(
            "UPDATE packages SET name = $1, version = $2, limits = $3, features = $4, disabled_features = $5, pricing = $6, updated_at = $7 WHERE id = $8 AND version = $9",
        )
        .bind(&p.name)
        .bind(p.version)
        .bind(serde_json::to_string(&p.limits)?)
        .bind(serde_json::to_string(&p.features)?)
        .bind(serde_json::to_string(&p.disabled_features)?)
        .bind(p.pricing.as_ref().map(|v| v.to_string()))
        .bind(now)
        .bind(id)
        .bind(before.version)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "package {id} was changed meanwhile; read it again and retry"
            )));
        }
        Ok((before, p))
    }

    /// Accounts (not terminated) on a package.
    pub async fn package_usage(&self, id: &str) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM accounts WHERE package = $1 AND status <> 'terminated'",
        )
        .bind(id)
        .fetch_one(self.pool())
        .await?;
        Ok(n)
    }

    /// Delete a package; one that accounts still use is deprecated instead. Returns `None`
    /// when deleted, `Some(package)` (now deprecated) when kept.
    pub async fn delete_package(&self, id: &str) -> Result<Option<Package>> {
        self.package(id).await?;
        let used = self.package_usage(id).await?;
        if used > 0 {
            return self
                .set_package_status(id, PackageStatus::Deprecated)
                .await
                .map(Some);
        }
        let n = sqlx::query(
            "DELETE FROM packages WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM accounts WHERE package = $2 AND status <> 'terminated')",
        )
        .bind(id)
        .bind(id)
        .execute(self.pool())
        .await?;
        if n.rows_affected() == 0 {
            // An account arrived between the two statements: keep it, deprecated.
            return self
                .set_package_status(id, PackageStatus::Deprecated)
                .await
                .map(Some);
        }
        Ok(None)
    }
}

/// The seed's YAML for one package:
///
/// ```yaml
/// id: basic
/// name: Basic
/// limits:
///   disk_quota: "10 GB"      # or disk_mb: 10240
///   bandwidth: "100 GB"      # or bandwidth_mb
///   email_accounts: 10
///   databases: unlimited
///   memory: "512 MB"         # or memory_mb
/// features: [everything]
/// disabled_features: [ssh]
/// pricing: {monthly: 4.99, currency: USD}
/// ```
///
/// Errors name the line where YAML reports one.
pub fn parse_package_yaml(text: &str) -> Result<NewPackage> {
    if text.len() > MAX_PACKAGE_BYTES {
        return Err(StoreError::Invalid(format!(
            "the file is {} bytes; a package may be at most {MAX_PACKAGE_BYTES} bytes",
            text.len()
        )));
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        id: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        limits: serde_yaml_ng::Mapping,
        #[serde(default)]
        features: Vec<String>,
        #[serde(default)]
        disabled_features: Vec<String>,
        #[serde(default)]
        pricing: Option<serde_json::Value>,
        #[serde(default)]
        owner: Option<String>,
    }
    let doc: Doc = serde_yaml_ng::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("line {}, column {}: ", l.line(), l.column()))
            .unwrap_or_default();
        StoreError::Invalid(format!("{at}{e}"))
    })?;
    let mut limits = Limits::default();
    for (k, v) in &doc.limits {
        let key = k
            .as_str()
            .ok_or_else(|| StoreError::Invalid("limit names must be strings".into()))?;
        let (slot, size): (&mut Option<u64>, bool) = match key {
            "disk_mb" => (&mut limits.disk_mb, false),
            "disk_quota" | "disk" => (&mut limits.disk_mb, true),
            "bandwidth_mb" => (&mut limits.bandwidth_mb, false),
            "bandwidth" => (&mut limits.bandwidth_mb, true),
            "email_accounts" => (&mut limits.email_accounts, false),
            "databases" => (&mut limits.databases, false),
            "addon_domains" => (&mut limits.addon_domains, false),
            "email_per_hour" => (&mut limits.email_per_hour, false),
            "email_burst_per_15min" => (&mut limits.email_burst_per_15min, false),
            "email_mb_per_hour" => (&mut limits.email_mb_per_hour, false),
            "email_max_connections" => (&mut limits.email_max_connections, false),
            "cpu_percent" | "cpu" => (&mut limits.cpu_percent, false),
            "memory_mb" => (&mut limits.memory_mb, false),
            "memory" => (&mut limits.memory_mb, true),
            "io_mbps" | "io" => (&mut limits.io_mbps, false),
            "pids" | "processes" => (&mut limits.pids, false),
            other => {
                return Err(StoreError::Invalid(format!(
                    "unknown limit {other:?} in package {}",
                    doc.id
                )))
            }
        };
        *slot = parse_limit(key, v, size)?;
    }
    Ok(NewPackage {
        id: doc.id,
        name: doc.name,
        limits,
        features: doc.features,
        disabled_features: doc.disabled_features,
        pricing: doc.pricing,
        owner: doc.owner,
    })
}

fn parse_limit(key: &str, v: &serde_yaml_ng::Value, size: bool) -> Result<Option<u64>> {
    use serde_yaml_ng::Value;
    let bad = || {
        StoreError::Invalid(format!(
            "limit {key}: {v:?} is not a number{}, or \"unlimited\"",
            if size { " with a unit (\"10 GB\")" } else { "" }
        ))
    };
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_u64().map(Some).ok_or_else(bad),
        Value::String(s) if s.trim().eq_ignore_ascii_case("unlimited") => Ok(None),
        Value::String(s) => {
            let s = s.trim();
            let split = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let num: f64 = num.parse().map_err(|_| bad())?;
            let mult = match unit.trim().to_ascii_uppercase().as_str() {
                "" if !size => 1.0,
                "" | "MB" | "M" | "MIB" => 1.0,
                "GB" | "G" | "GIB" => 1024.0,
                "TB" | "T" | "TIB" => 1024.0 * 1024.0,
                "MB/S" if key.starts_with("io") => 1.0,
                _ => return Err(bad()),
            };
            Ok(Some((num * mult).round() as u64))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_units_unlimited_and_errors() {
        let p = parse_package_yaml(
            "id: basic\nlimits:\n  disk_quota: \"10 GB\"\n  databases: unlimited\n  email_accounts: 5\nfeatures: [everything]\n",
        )
        .unwrap();
        assert_eq!(p.limits.disk_mb, Some(10240));
        assert_eq!(p.limits.databases, None);
        assert_eq!(p.limits.email_accounts, Some(5));
        assert_eq!(
            check_features(&p.features, "f").unwrap().len(),
            FEATURES.len()
        );
        let e = parse_package_yaml("id: x\nlimits:\n  disk_quota: [1\n").unwrap_err();
        assert!(e.to_string().contains("line"), "{e}");
        let e = parse_package_yaml("id: x\nlimits:\n  disk_quota: \"ten\"\n").unwrap_err();
        assert!(e.to_string().contains("disk_quota"), "{e}");
        assert!(check_features(&["teleport".into()], "features").is_err());
    }
}
