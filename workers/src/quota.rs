//! The `quota_sweep` handler (DESIGN §13): one job, hourly, measures every hosted account and
//! writes one row per account into the store's usage time series.
//!
//! - **Disk**: the kernel's quota report (`repquota`, one call for every account) where the
//!   homes' filesystem has user quotas and system users are on; else the host's walk of each
//!   home (`disk_usage`: allocated blocks, as `du` counts them; files and directories), several
//!   homes at once (`parallel`, default 4). The result's `disk_source` says which, and why.
//! - **Bandwidth**: the bytes field of each access log line (common/combined format) in
//!   `access_logs/<domain>` (also `<domain>.log`, `<domain>-ssl_log`, `www.` folded), added
//!   since the last sweep.
//! - **Mail sent**: arrivals (`<=`) in Exim's main log since the last sweep, by the local user
//!   (`U=`) or the authenticated sender (`A=…:box@domain` or `A=…:user`).
//! - **Logs are counted once**: each log's inode and offset are kept in the store and moved on
//!   only after the samples that counted them are written; a rotated log (another inode, or
//!   shorter) is read from its start. A partial last line is left for the next sweep.
//! - **Resume**: samples are written in batches as accounts finish; a retried sweep of the
//!   same hour skips the accounts that have one. A vanished account, a missing home or an
//!   unreadable log is a recorded skip, never a failed sweep for everyone.
//! - **Limits** (`hold_to_limits`): each account's disk, this month's bandwidth, the mail it
//!   sent in the last hour, its databases and its addon domains against its limits (an admin's
//!   override first, then the package's; for mail the account's effective email policy). A
//!   level that moves — 80 %, 95 %, 100 %, or back under 80 % — is stored, notified
//!   (`notifications`) and audited once, not every hour. At 100 % outside a grace period:
//!   - disk: the home made read-only through the host (`set_read_only`, modes recorded and
//!     given back when the use drops);
//!   - bandwidth: the account's `throttled` flag file, which the web server reads as it reads
//!     `suspended` (this build drives no web server itself);
//!   - mail: the account's `mail_held` flag (`set_mail_held`), which the mail policy ACL reads
//!     at run time: its outgoing mail is deferred with 452 until a sweep finds the last hour
//!     under the limit. Exim's own rate limits defer within the hour; this pause is for an
//!     account that kept sending at its limit for a whole hour (a compromised one, likely).
//!     The log counts messages while the rate limit counts recipients, so the figure is a
//!     floor;
//!   - databases and addon domains: their creation paths refuse a new one at the limit
//!     (409 `limit_reached`); the sweep records and says the level.
//! - **Databases**: `information_schema` sizes and number of `<account>_<name>` schemas on the
//!   server at `databases.url` (not measured, and said so, without one or when it does not
//!   answer).
//! - **Addon domains**: counted from the store.

use crate::provision::{host_err, store_err, HostOps};
use crate::restore::human;
use crate::{JobContext, JobError};
use agent::{AccountName, Reply, Request};
use futures::StreamExt;
use queue::QuotaSweep;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use store::{Store, UsageSample, HOUR_MS};

/// Where the sweep reads and how hard it works.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    /// Directory of per-domain access logs.
    pub access_logs: PathBuf,
    /// Exim's main log.
    pub mail_log: PathBuf,
    /// Homes walked at once.
    pub parallel: usize,
    /// MariaDB/MySQL holding the accounts' databases (`<account>_<name>`), for their sizes.
    pub databases_url: Option<String>,
    /// The host's security template, for the security files written again when a read-only
    /// home is given back (a policy change meanwhile left its home mode pending).
    pub security_default: store::SecurityPolicy,
}

/// The handler's dependencies.
pub struct QuotaSweeper {
    store: Store,
    host: Arc<dyn HostOps>,
    cfg: SweepConfig,
}

impl QuotaSweeper {
    pub fn new(store: Store, host: Arc<dyn HostOps>, cfg: SweepConfig) -> Arc<QuotaSweeper> {
        Arc::new(QuotaSweeper { store, host, cfg })
    }
}

/// Samples written per store transaction (the resume granularity).
const BATCH: usize = 200;
/// Skipped accounts listed in the result (all are counted).
const MAX_LISTED: usize = 50;

/// Run one sweep.
pub async fn run(ctx: JobContext, s: Arc<QuotaSweeper>) -> Result<Value, JobError> {
    let job: QuotaSweep = ctx.payload()?;
    let started = std::time::Instant::now();
    let now = store::now_ms();
    let at = job.tick.map(|t| t * 1000).unwrap_or(now);
    let hour = at - at.rem_euclid(HOUR_MS);

    ctx.progress("listing", 0, 1);
    let mut accounts = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .store
            .hosted_accounts(after.as_deref(), 1000)
            .await
            .map_err(store_err)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        accounts.extend(page);
    }
    let done = s.store.usage_measured_at(hour).await.map_err(store_err)?;
    let todo: Vec<_> = accounts
        .iter()
        .filter(|a| !done.contains(&a.id))
        .cloned()
        .collect();
    ctx.log(format!(
        "Sweeping {} accounts for the hour of {} ({} measured already by an earlier attempt)",
        todo.len(),
        chrono::DateTime::from_timestamp_millis(hour).unwrap_or_default(),
        accounts.len() - todo.len()
    ));

    // Traffic since the last sweep, from the logs (blocking reads, off the runtime).
    let by_domain: HashMap<String, String> = accounts
        .iter()
        .filter_map(|a| {
            a.domain
                .as_ref()
                .map(|d| (d.to_ascii_lowercase(), a.id.clone()))
        })
        .collect();
    let access_cursors = cursors_of(&s.store, &s.cfg.access_logs, "access").await?;
    let mail_cursor = s
        .store
        .usage_cursor(&cursor_name("mail", &s.cfg.mail_log))
        .await
        .map_err(store_err)?;
    let (dir, mail_log) = (s.cfg.access_logs.clone(), s.cfg.mail_log.clone());
    let names = Names {
        accounts: names_of(&accounts),
        by_domain: by_domain.clone(),
    };
    let logs = tokio::task::spawn_blocking(move || {
        let web = count_access_logs(&dir, &access_cursors);
        let mail = count_mail_log(&mail_log, mail_cursor, &names);
        (web, mail)
    })
    .await
    .map_err(|e| JobError::Transient(format!("log reader: {e}")))?;
    let (web, mail) = logs;
    let (db_sizes, db_source) = match &s.cfg.databases_url {
        None => (
            None,
            "not measured: no database server configured (databases.url)".to_string(),
        ),
        Some(url) => match database_sizes(url, &names_of(&accounts)).await {
            Ok(m) => (
                Some(m),
                "information_schema of the database server".to_string(),
            ),
            Err(e) => (None, format!("not measured: {e}")),
        },
    };
    let addon: HashMap<String, i64> = s.store.addon_domain_counts().await.map_err(store_err)?;
    // What the logs added, by account, waits in the store for each account's next sample; the
    // logs' cursors move in the same transaction (counted once, lost never).
    let mut traffic: HashMap<String, (i64, i64)> = HashMap::new();
    let mut unattributed = 0u64;
    for (domain, bytes) in &web.by_key {
        match by_domain.get(domain) {
            Some(acct) => traffic.entry(acct.clone()).or_default().0 += *bytes as i64,
            None => unattributed += *bytes,
        }
    }
    for (acct, n) in &mail.by_key {
        traffic.entry(acct.clone()).or_default().1 += *n as i64;
    }
    let deltas: Vec<(String, i64, i64)> =
        traffic.into_iter().map(|(a, (bw, m))| (a, bw, m)).collect();
    let mut cursors = web.cursors.clone();
    cursors.extend(mail.cursors.iter().cloned());
    s.store
        .add_pending_usage(&deltas, &cursors)
        .await
        .map_err(store_err)?;

    // Disk, several homes at once; samples written in batches as they come.
    let total = todo.len() as u64;
    ctx.progress("measuring", 0, total.max(1));
    // The kernel's quota report where the homes' filesystem keeps one (one call for every
    // account), else a walk of each home.
    let (report, disk_source) = match s.host.call(Request::QuotaUsage).await {
        Ok(Reply::QuotaUsage(q)) if q.status == agent::protocol::QuotaStatus::Applied => {
            let src = format!("quota report ({})", q.mount.as_deref().unwrap_or("?"));
            (q.users, src)
        }
        Ok(Reply::QuotaUsage(q)) => (
            Default::default(),
            format!(
                "walk ({})",
                q.reason.as_deref().unwrap_or("no quota report")
            ),
        ),
        Ok(other) => {
            return Err(JobError::Permanent(format!(
                "quota_usage: unexpected answer {other:?}"
            )))
        }
        Err(e @ (agent::AgentError::Connect { .. } | agent::AgentError::Protocol(_))) => {
            return Err(host_err("quota_usage", e))
        }
        Err(e) => (
            Default::default(),
            format!("walk (quota report failed: {e})"),
        ),
    };
    let report = Arc::new(report);
    let parallel = s.cfg.parallel.max(1);
    let mut walks = futures::stream::iter(todo.into_iter().map(|a| {
        let host = s.host.clone();
        let report = report.clone();
        async move {
            let r = match AccountName::parse(&a.id) {
                Ok(name) => match report.get(&a.id) {
                    // From the quota report: blocks and files as the kernel counts them.
                    Some((bytes, files)) => Ok(Reply::DiskUsage(agent::protocol::DiskUsage {
                        path: String::new(),
                        account: name,
                        apparent_bytes: *bytes,
                        allocated_bytes: *bytes,
                        files: *files,
                        dirs: 0,
                    })),
                    None => host.call(Request::DiskUsage { account: name }).await,
                },
                Err(e) => Err(agent::AgentError::InvalidRequest(e.to_string())),
            };
            (a, r)
        }
    }))
    .buffer_unordered(parallel);
    let mut batch = Vec::with_capacity(BATCH);
    let (mut measured, mut finished) = (0u64, 0u64);
    let mut skipped: Vec<Value> = Vec::new();
    let mut skipped_count = 0u64;
    let (mut disk_total, mut files_total) = (0u64, 0u64);
    while let Some((a, r)) = walks.next().await {
        if ctx.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        finished += 1;
        match r {
            Ok(Reply::DiskUsage(u)) => {
                measured += 1;
                disk_total += u.allocated_bytes;
                files_total += u.files + u.dirs;
                batch.push(UsageSample {
                    account: a.id.clone(),
                    at: hour,
                    disk_bytes: u.allocated_bytes as i64,
                    disk_files: (u.files + u.dirs) as i64,
                    // The traffic counted for it since its last sample is added by the store.
                    bandwidth_bytes: 0,
                    mail_sent: 0,
                    db_bytes: db_sizes.as_ref().map(|m| m.get(&a.id).map_or(0, |d| d.0)),
                    addon_domains: addon.get(&a.id).copied().unwrap_or(0),
                    measured_at: store::now_ms(),
                });
            }
            Ok(other) => {
                return Err(JobError::Permanent(format!(
                    "disk_usage: unexpected answer {other:?}"
                )))
            }
            // The host itself is unreachable: every account would fail; try again later.
            Err(e @ (agent::AgentError::Connect { .. } | agent::AgentError::Protocol(_))) => {
                return Err(host_err("disk_usage", e))
            }
            // One home that cannot be measured (vanished mid-sweep, never built, unreadable,
            // too slow to walk) is a recorded skip, never a failed sweep for everyone.
            Err(e) => {
                skipped_count += 1;
                if skipped.len() < MAX_LISTED {
                    skipped
                        .push(json!({"account": a.id, "code": e.code(), "reason": e.to_string()}));
                }
            }
        }
        if batch.len() >= BATCH {
            s.store
                .record_usage_taking_pending(&batch)
                .await
                .map_err(store_err)?;
            batch.clear();
        }
        ctx.progress("measuring", finished, total.max(1));
    }
    drop(walks);
    if !batch.is_empty() {
        s.store
            .record_usage_taking_pending(&batch)
            .await
            .map_err(store_err)?;
    }
    let counts: HashMap<String, Counts> = accounts
        .iter()
        .map(|a| {
            let c = Counts {
                databases: db_sizes.as_ref().map(|m| m.get(&a.id).map_or(0, |d| d.1)),
                addon_domains: addon.get(&a.id).copied().unwrap_or(0),
            };
            (a.id.clone(), c)
        })
        .collect();
    let held = hold_to_limits(&ctx, &s, &accounts, &counts).await?;
    // Mail deferred over its hourly limits: one audit record per account, limit and window.
    let incidents = match crate::mail_incidents::scan_mail_log(&s.store, &s.cfg.mail_log).await {
        Ok(sum) => {
            json!({"deferrals": sum.deferrals, "windows": sum.incidents, "audited": sum.audited})
        }
        // A missing or unreadable log is a note, not a failed sweep.
        Err(crate::mail_incidents::ScanError::Io { path, source }) => {
            json!({"skipped": format!("{path}: {source}")})
        }
        Err(crate::mail_incidents::ScanError::Store(e)) => return Err(store_err(e)),
    };
    let (rolled, dropped) = s.store.roll_up_usage(now).await.map_err(store_err)?;
    ctx.progress("measuring", total.max(1), total.max(1));
    let took = started.elapsed().as_secs_f64();
    ctx.log(format!(
        "Measured {measured} accounts in {took:.1} s: {} on disk, {} log bytes served, {} mails sent; {skipped_count} skipped",
        human(disk_total),
        web.by_key.values().sum::<u64>(),
        mail.by_key.values().sum::<u64>(),
    ));
    let mut notes = web.notes.clone();
    notes.extend(mail.notes.iter().cloned());
    Ok(json!({
        "hour": chrono::DateTime::from_timestamp_millis(hour).unwrap_or_default(),
        "accounts": accounts.len(),
        "measured": measured,
        "already_measured": done.len(),
        "skipped_count": skipped_count,
        "skipped": skipped,
        "disk_source": disk_source,
        "disk_bytes": disk_total,
        "files": files_total,
        "bandwidth_source": web.source,
        "mail_source": mail.source,
        "databases": db_source,
        "addon_domains": "the store's addon domains",
        "log_notes": notes,
        "unattributed_log_bytes": unattributed,
        "mail_incidents": incidents,
        "levels_changed": held.changed,
        "over_limit": held.over,
        "newly_enforced": held.enforced,
        "in_grace": held.in_grace,
        "enforcement_failed": held.failed,
        "rolled_up_rows": rolled,
        "dropped_rows": dropped,
        "seconds": took,
    }))
}

fn names_of(accounts: &[store::Account]) -> std::collections::HashSet<String> {
    accounts.iter().map(|a| a.id.clone()).collect()
}

/// Bytes and number of every account's databases (`<account>_<name>`, DESIGN §11), from the
/// server's `information_schema` (data and indexes, as the server accounts them; a database
/// without tables counts, with 0 bytes).
async fn database_sizes(
    url: &str,
    accounts: &std::collections::HashSet<String>,
) -> Result<HashMap<String, (i64, i64)>, String> {
    use sqlx::Row;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| format!("cannot reach the database server: {e}"))?;
    let rows = sqlx::query(
        "SELECT s.schema_name, CAST(COALESCE(SUM(t.data_length + t.index_length), 0) AS SIGNED) \
         FROM information_schema.schemata s LEFT JOIN information_schema.tables t \
         ON t.table_schema = s.schema_name GROUP BY s.schema_name",
    )
    .fetch_all(&pool)
    .await
    .map_err(|e| format!("information_schema: {e}"));
    pool.close().await;
    let mut out: HashMap<String, (i64, i64)> = HashMap::new();
    for r in rows? {
        let schema: String = r.try_get(0).map_err(|e| e.to_string())?;
        let bytes: Option<i64> = r.try_get(1).map_err(|e| e.to_string())?;
        if let Some((owner, _)) = schema.split_once('_') {
            if accounts.contains(owner) {
                let e = out.entry(owner.to_string()).or_default();
                e.0 += bytes.unwrap_or(0);
                e.1 += 1;
            }
        }
    }
    Ok(out)
}

/// What holding the accounts to their limits changed.
#[derive(Debug, Default)]
struct Held {
    /// (account, resource, before, after) of every level that moved.
    changed: Vec<Value>,
    /// Accounts over a limit now.
    over: Vec<String>,
    /// Accounts whose home this sweep made read-only (disk over its limit, no grace).
    enforced: Vec<String>,
    /// Accounts over a limit whose grace period is running.
    in_grace: Vec<String>,
    /// Accounts whose enforcement could not be changed this time (tried again next sweep).
    failed: Vec<Value>,
}

/// The level of `percent`: 0, 80, 95 or 100.
pub fn level_of(percent: u64) -> i64 {
    match percent {
        p if p >= 100 => 100,
        p if p >= 95 => 95,
        p if p >= 80 => 80,
        _ => 0,
    }
}

/// Counts the sweep takes from elsewhere than the samples, by account.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// Databases (`<account>_<name>` schemas); `None` when not measured.
    databases: Option<i64>,
    /// Addon domains in the store.
    addon_domains: i64,
}

/// One resource held to a limit: its name, what is used and the limit, in one unit (`unit`
/// bytes per limit unit: MB for disk and bandwidth, 1 for counts).
struct Check {
    resource: &'static str,
    used: i64,
    limit: Option<u64>,
    unit: u64,
}

impl Check {
    fn used_text(&self) -> String {
        match self.resource {
            "disk" | "bandwidth" => human(self.used.max(0) as u64),
            "email" => format!("{} messages an hour", self.used),
            _ => self.used.to_string(),
        }
    }
    fn limit_text(&self) -> String {
        match (self.limit, self.resource) {
            (None, _) => "unlimited".into(),
            (Some(l), "disk" | "bandwidth") => format!("{l} MB"),
            (Some(l), "email") => format!("{l} per hour"),
            (Some(l), _) => l.to_string(),
        }
    }
    /// What 100 % means for the account, said in its notification.
    fn enforced_text(&self) -> &'static str {
        match self.resource {
            "disk" => "its home is read-only until it uses less",
            "bandwidth" => "its sites are throttled (its `throttled` flag for the web server) until the month ends or the limit rises",
            "email" => "its outgoing mail is paused (deferred with 452) until a usage check finds it under its hourly limit",
            "databases" => "no new databases can be created until it has fewer",
            _ => "no new addon domains can be added until it has fewer",
        }
    }
}

/// Compares each measured account's use with its limits (an admin's override first, then the
/// package's): at 80 % and 95 % a warning, at 100 % the limit enforced — the home made
/// read-only for disk, the `throttled` flag for the web server for bandwidth, the `mail_held`
/// flag the mail policy ACL reads for mail sent in the last hour; databases and addon domains
/// are refused by their creation paths at their limits, so there the level is recorded and
/// said — and lifted when the use drops back. Only changes are written: a level that moved
/// is stored, notified and audited once, not every hour.
async fn hold_to_limits(
    ctx: &JobContext,
    s: &QuotaSweeper,
    accounts: &[store::Account],
    counts: &HashMap<String, Counts>,
) -> Result<Held, JobError> {
    let usage = s.store.usage_now(None).await.map_err(store_err)?;
    let overrides = s.store.usage_overrides().await.map_err(store_err)?;
    let levels: HashMap<(String, String), store::UsageLevel> = s
        .store
        .usage_levels(None)
        .await
        .map_err(store_err)?
        .into_iter()
        .map(|l| ((l.account.clone(), l.resource.clone()), l))
        .collect();
    let now = chrono::Utc::now();
    let mut held = Held::default();
    for a in accounts {
        let Some(u) = usage.get(&a.id) else { continue };
        let ov = overrides.get(&a.id);
        let limits = a.limits.clone().unwrap_or_default();
        let grace = ov.and_then(|o| o.grace_until).filter(|g| *g > now);
        let count = counts.get(&a.id).copied().unwrap_or_default();
        let mb = 1 << 20;
        let mut checks = vec![
            Check {
                resource: "disk",
                used: u.disk_bytes,
                limit: ov.and_then(|o| o.disk_mb).or(limits.disk_mb),
                unit: mb,
            },
            Check {
                resource: "bandwidth",
                used: u.bandwidth_month_bytes,
                limit: ov.and_then(|o| o.bandwidth_mb).or(limits.bandwidth_mb),
                unit: mb,
            },
            Check {
                resource: "addon_domains",
                used: count.addon_domains,
                limit: limits.addon_domains,
                unit: 1,
            },
        ];
        if let Some(n) = count.databases {
            checks.push(Check {
                resource: "databases",
                used: n,
                limit: limits.databases,
                unit: 1,
            });
        }
        // Mail: the messages of the last hour against the hourly limit of the account's
        // effective email policy (read only for an account that sent any, or is held).
        let mail_prev = levels.get(&(a.id.clone(), "email".to_string()));
        if u.mail_last > 0 || mail_prev.is_some_and(|l| l.level > 0 || l.enforced) {
            let ov = s
                .store
                .email_policy_override(&a.id)
                .await
                .map_err(store_err)?;
            let per_hour = store::effective_email_policy(a.limits.as_ref(), &ov)
                .map(|e| e.policy.per_hour as u64)
                .unwrap_or(store::DEFAULT_EMAIL_POLICY.per_hour as u64);
            // The last sample holds the mail since the one before it: after a sweep that did
            // not run for hours, that is several hours of mail, held to that many hours' limit.
            let hours = match s
                .store
                .previous_sample_at(&a.id, u.measured_hour)
                .await
                .map_err(store_err)?
            {
                Some(prev) => ((u.measured_hour - prev) / HOUR_MS).clamp(1, 24 * 31),
                None => 1,
            };
            checks.push(Check {
                resource: "email",
                used: u.mail_last / hours,
                limit: Some(per_hour),
                unit: 1,
            });
        }
        let name = AccountName::parse(&a.id)
            .map_err(|e| JobError::Permanent(format!("account {}: {e}", a.id)))?;
        let mut over = false;
        for c in &checks {
            let resource = c.resource;
            let limit_mb = c.limit;
            let used = c.used;
            let (percent, level) = match c.limit {
                // Mail is held only when over its hourly limit: sending exactly the allowance
                // is what the limit allows (the ACL defers past it within the hour).
                Some(l) if l > 0 && resource == "email" => {
                    let p = (used.max(0) as u128 * 100 / l as u128) as u64;
                    (
                        p,
                        if used.max(0) as u64 > l {
                            100
                        } else {
                            level_of(p.min(99))
                        },
                    )
                }
                Some(l) if l > 0 => {
                    let p = (used.max(0) as u128 * 100 / (l as u128 * c.unit as u128)) as u64;
                    (p, level_of(p))
                }
                // A count limit of 0 allows none: any use is over it (a size of 0 MB is
                // unlimited, as everywhere else).
                Some(_) if used > 0 && c.unit == 1 => (100, 100),
                _ => (0, 0),
            };
            over |= level == 100;
            let enforce = level == 100 && grace.is_none();
            let prev = levels.get(&(a.id.clone(), resource.to_string()));
            let (prev_level, prev_enforced) = prev.map_or((0, false), |p| (p.level, p.enforced));
            let unchanged = prev_level == level && prev_enforced == enforce;
            // Disk over its limit is enforced again every sweep, not only when it starts (the
            // owner may have given write bits back since); bandwidth by the account's
            // `throttled` flag, for the web server, and mail by its `mail_held` flag, for the
            // ACL, when that changes.
            let call = match resource {
                "disk" if prev_enforced != enforce || (enforce && unchanged) => {
                    Some(Request::SetReadOnly {
                        account: name.clone(),
                        read_only: enforce,
                    })
                }
                "bandwidth" if prev_enforced != enforce => Some(Request::SetThrottled {
                    account: name.clone(),
                    throttled: enforce,
                }),
                "email" if prev_enforced != enforce => Some(Request::SetMailHeld {
                    account: name.clone(),
                    held: enforce,
                }),
                _ => None,
            };
            if let Some(req) = call {
                let op = req.op();
                match s.host.call(req).await {
                    Ok(Reply::ReadOnlySet(r)) if unchanged && r.changed > 0 => ctx.log(format!(
                        "{}: {} entries of its read-only home had been made writable again: read-only again",
                        a.id, r.changed
                    )),
                    Ok(_) if unchanged => {}
                    Ok(_) => ctx.log(format!(
                        "{}: {}",
                        a.id,
                        match (resource, enforce) {
                            ("disk", true) => "home made read-only (disk over its limit)",
                            ("disk", false) => "home writable again",
                            ("email", true) => "outgoing mail paused (over its hourly limit)",
                            ("email", false) => "outgoing mail no longer paused",
                            (_, true) => "sites throttled (bandwidth over its limit)",
                            (_, false) => "sites no longer throttled",
                        }
                    )),
                    Err(
                        e @ (agent::AgentError::Connect { .. } | agent::AgentError::Protocol(_)),
                    ) => return Err(host_err(op, e)),
                    // This account's enforcement could not be changed: its level is not
                    // recorded, so the next sweep tries again; the others go on.
                    Err(e) => {
                        ctx.log(format!("{}: {op} failed: {e}", a.id));
                        held.failed
                            .push(json!({"account": a.id, "reason": e.to_string()}));
                        continue;
                    }
                }
            }
            if unchanged {
                continue;
            }
            if resource == "disk" && prev_enforced && !enforce {
                // The security files again: a home mode changed while it was read-only lands now.
                let req =
                    crate::provision::security_request(&s.store, s.cfg.security_default, &a.id)
                        .await?;
                match serde_json::from_value::<Request>(req) {
                    Ok(req) => {
                        if let Err(e) = s.host.call(req).await {
                            ctx.log(format!("{}: security files not rewritten: {e}", a.id));
                        }
                    }
                    Err(e) => ctx.log(format!("{}: security request: {e}", a.id)),
                }
            }
            let (used_txt, limit_txt) = (c.used_text(), c.limit_text());
            let (kind, message) = match level {
                0 => (
                    "usage_normal",
                    format!("{} is back under 80 % of its {resource} limit ({used_txt} of {limit_txt})", a.id),
                ),
                100 if grace.is_some() => (
                    "usage_over",
                    format!(
                        "{} is over its {resource} limit ({used_txt} of {limit_txt}); not enforced during its grace period until {}",
                        a.id,
                        grace.map(|g| g.to_rfc3339()).unwrap_or_default()
                    ),
                ),
                100 => (
                    "usage_over",
                    format!(
                        "{} is at or over its {resource} limit ({used_txt} of {limit_txt}): {}",
                        a.id,
                        c.enforced_text()
                    ),
                ),
                l => (
                    "usage_warning",
                    format!("{} uses {percent} % of its {resource} limit ({used_txt} of {limit_txt}; warning at {l} %)", a.id),
                ),
            };
            s.store
                .add_notification(&a.id, kind, Some(resource), Some(level), &message)
                .await
                .map_err(store_err)?;
            s.store
                .set_usage_level(&store::UsageLevel {
                    account: a.id.clone(),
                    resource: resource.into(),
                    level,
                    percent: percent as i64,
                    since: now,
                    enforced: enforce,
                })
                .await
                .map_err(store_err)?;
            let mut r = store::NewAudit::new(
                kind,
                store::Actor {
                    kind: "system".into(),
                    id: "quota_sweep".into(),
                    ..store::Actor::default()
                },
                "success",
            );
            r.account = Some(a.id.clone());
            r.reseller = a.reseller.clone();
            r.resource = json!({"type": "account", "id": a.id, "name": resource});
            r.changes = json!({
                "before": {"level": prev_level, "enforced": prev_enforced},
                "after": {"level": level, "percent": percent, "enforced": enforce, "used": used, "limit": limit_mb, "unit": if c.unit == 1 { "count" } else { "MB" }},
            });
            r.source = json!({"method": "JOB", "endpoint": "quota_sweep"});
            r.job_id = Some(ctx.id.clone());
            r.related_logs = vec![message.clone()];
            // Written with the level it records, not at the end: a sweep stopped later loses
            // none of the records of the changes it made.
            s.store.append_audit(&[r]).await.map_err(store_err)?;
            ctx.log(message);
            held.changed.push(json!({"account": a.id, "resource": resource, "before": prev_level, "after": level, "enforced": enforce}));
            if enforce && resource == "disk" {
                held.enforced.push(a.id.clone());
            }
        }
        if over {
            held.over.push(a.id.clone());
            if grace.is_some() {
                held.in_grace.push(a.id.clone());
            }
        }
    }
    Ok(held)
}

/// What counting one kind of log found.
#[derive(Debug, Default)]
struct Counted {
    /// Bytes by domain (access logs) or messages by account (mail).
    by_key: HashMap<String, u64>,
    /// New cursors: (source, inode, offset).
    cursors: Vec<(String, u64, u64)>,
    /// Which files were read, or why none.
    source: String,
    /// Unreadable files, unparseable lines.
    notes: Vec<String>,
}

fn cursor_name(kind: &str, path: &Path) -> String {
    format!("{kind}:{}", path.display())
}

/// The stored cursors of every file in `dir`.
async fn cursors_of(
    store: &Store,
    dir: &Path,
    kind: &str,
) -> Result<HashMap<PathBuf, (u64, u64)>, JobError> {
    // One query for the directory's cursors, not one per log file.
    let prefix = cursor_name(kind, &dir.join(""));
    Ok(store
        .usage_cursors_under(&prefix)
        .await
        .map_err(store_err)?
        .into_iter()
        .filter_map(|(source, c)| {
            let path = source.strip_prefix(&format!("{kind}:"))?;
            Some((PathBuf::from(path), c))
        })
        .collect())
}

/// The domain an access log file is for: `example.com`, `example.com.log`,
/// `example.com-ssl_log`, `www.example.com` all count for `example.com`.
fn log_domain(name: &str) -> Option<String> {
    let mut d = name.to_ascii_lowercase();
    for suffix in [
        "-ssl_log",
        "-access.log",
        ".access.log",
        "-access_log",
        ".log",
    ] {
        if let Some(s) = d.strip_suffix(suffix) {
            d = s.to_string();
            break;
        }
    }
    if d.ends_with(".gz") || d.ends_with(".bz2") || d.ends_with(".xz") || d.ends_with(".zst") {
        return None;
    }
    // A rotated copy (`example.com.log.1`, `example.com-ssl_log.2`): its lines were counted
    // while it was the live log.
    if d.rsplit_once('.')
        .is_some_and(|(_, n)| n.bytes().all(|b| b.is_ascii_digit()))
        || name
            .rsplit_once('.')
            .is_some_and(|(_, n)| n.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let d = d.strip_prefix("www.").unwrap_or(&d).to_string();
    (d.contains('.') && !d.starts_with('.')).then_some(d)
}

/// The bytes sent of one common/combined log line: the number after the status that follows
/// the quoted request. `None` for a line that is not in that format.
fn access_line_bytes(line: &str) -> Option<u64> {
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    // The request ends at a quote followed by a space and a three-digit status.
    let mut from = 0;
    while let Some(q) = rest[from..].find("\" ") {
        let after = &rest[from + q + 2..];
        let mut fields = after.split_ascii_whitespace();
        if let (Some(status), Some(bytes)) = (fields.next(), fields.next()) {
            if status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit()) {
                return if bytes == "-" {
                    Some(0)
                } else {
                    bytes.parse().ok()
                };
            }
        }
        from += q + 2;
    }
    None
}

/// Reads `path` from its cursor (from the start if it was rotated) to its last whole line,
/// calling `line` for each; returns the new cursor (inode, offset).
fn read_new_lines(
    path: &Path,
    cursor: Option<(u64, u64)>,
    mut line: impl FnMut(&str),
) -> std::io::Result<(u64, u64)> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let inode = meta.ino();
    let start = match cursor {
        Some((ino, pos)) if ino == inode && pos <= meta.len() => pos,
        _ => 0,
    };
    f.seek(SeekFrom::Start(start))?;
    let mut r = BufReader::with_capacity(64 << 10, f);
    let mut pos = start;
    let mut buf = Vec::with_capacity(512);
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            // End, or a line still being written: left for the next sweep.
            break;
        }
        pos += n as u64;
        line(&String::from_utf8_lossy(&buf));
    }
    Ok((inode, pos))
}

fn count_access_logs(dir: &Path, cursors: &HashMap<PathBuf, (u64, u64)>) -> Counted {
    let mut c = Counted::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            c.source = format!("none: {}: {e}", dir.display());
            return c;
        }
    };
    let mut files = 0;
    let mut bad = 0u64;
    for e in entries.flatten() {
        let path = e.path();
        let Some(domain) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(log_domain)
        else {
            continue;
        };
        if !e.file_type().map(|t| t.is_file()).unwrap_or(false) {
            continue;
        }
        let mut bytes = 0u64;
        match read_new_lines(
            &path,
            cursors.get(&path).copied(),
            |l| match access_line_bytes(l) {
                Some(b) => bytes += b,
                None => bad += 1,
            },
        ) {
            Ok((inode, pos)) => {
                files += 1;
                *c.by_key.entry(domain).or_default() += bytes;
                c.cursors.push((cursor_name("access", &path), inode, pos));
            }
            Err(e) => c.notes.push(format!("{}: {e}", path.display())),
        }
    }
    if bad > 0 {
        c.notes.push(format!(
            "{bad} access log lines not in common/combined format were not counted"
        ));
    }
    c.source = format!("access logs: {files} files in {}", dir.display());
    c
}

/// Accounts by name and by domain, for attributing log lines.
#[derive(Debug, Default)]
struct Names {
    accounts: std::collections::HashSet<String>,
    by_domain: HashMap<String, String>,
}

/// Who sent the message of an Exim arrival line (`<=`): the local user (`U=`) when it is an
/// account, else the authenticated id (`A=name:id`) as an account or a mailbox's domain.
fn mail_sender(line: &str, names: &Names) -> Option<String> {
    if !line.contains(" <= ") {
        return None;
    }
    for field in line.split_ascii_whitespace() {
        if let Some(auth) = field.strip_prefix("A=") {
            let id = auth.split_once(':').map(|(_, id)| id).unwrap_or(auth);
            if let Some((_, domain)) = id.rsplit_once('@') {
                return names.by_domain.get(&domain.to_ascii_lowercase()).cloned();
            }
            if names.accounts.contains(id) {
                return Some(id.to_string());
            }
        }
    }
    for field in line.split_ascii_whitespace() {
        if let Some(user) = field.strip_prefix("U=") {
            if names.accounts.contains(user) {
                return Some(user.to_string());
            }
        }
    }
    None
}

fn count_mail_log(path: &Path, cursor: Option<(u64, u64)>, names: &Names) -> Counted {
    let mut c = Counted::default();
    let mut by_key: HashMap<String, u64> = HashMap::new();
    match read_new_lines(path, cursor, |l| {
        if let Some(who) = mail_sender(l, names) {
            *by_key.entry(who).or_default() += 1;
        }
    }) {
        Ok((inode, pos)) => {
            c.cursors.push((cursor_name("mail", path), inode, pos));
            c.source = format!("exim main log {}", path.display());
        }
        Err(e) => c.source = format!("none: {}: {e}", path.display()),
    }
    c.by_key = by_key;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_give_their_bytes() {
        let l = r#"203.0.113.9 - - [01/Dec/2026:04:00:00 +0000] "GET /a\" b HTTP/1.1" 200 5120 "-" "curl/8""#;
        assert_eq!(access_line_bytes(l), Some(5120));
        let l = r#"::1 - bob [01/Dec/2026:04:00:00 +0000] "POST /x HTTP/2" 304 - "https://r" "ua""#;
        assert_eq!(access_line_bytes(l), Some(0));
        assert_eq!(access_line_bytes("garbage"), None);
    }

    #[test]
    fn log_files_name_their_domain() {
        assert_eq!(log_domain("alice.example"), Some("alice.example".into()));
        assert_eq!(
            log_domain("www.alice.example.log"),
            Some("alice.example".into())
        );
        assert_eq!(
            log_domain("alice.example-ssl_log"),
            Some("alice.example".into())
        );
        assert_eq!(log_domain("alice.example.log.1.gz"), None);
        assert_eq!(log_domain("alice.example.log.1"), None);
        assert_eq!(log_domain("alice.example-ssl_log.2"), None);
        assert_eq!(log_domain("README"), None);
    }

    #[test]
    fn mail_arrivals_are_attributed() {
        let map = Names {
            accounts: ["alice".to_string()].into(),
            by_domain: [("alice.example".to_string(), "alice".to_string())].into(),
        };
        let local =
            "2026-12-01 04:00:00 1abc-000001-AB <= alice@alice.example U=alice P=local S=300";
        assert_eq!(mail_sender(local, &map), Some("alice".into()));
        let auth = "2026-12-01 04:00:01 1abc-000002-AB <= x@y H=(h) [203.0.113.1] P=esmtpsa A=dovecot_plain:info@alice.example S=900";
        assert_eq!(mail_sender(auth, &map), Some("alice".into()));
        let delivery = "2026-12-01 04:00:02 1abc-000002-AB => bob@else.example R=dnslookup";
        assert_eq!(mail_sender(delivery, &map), None);
        let stranger = "2026-12-01 04:00:03 1abc-000003-AB <= root@host U=root P=local S=1";
        assert_eq!(mail_sender(stranger, &map), None);
    }
}
