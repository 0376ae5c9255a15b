//! The `restore` handler (DESIGN §12): an account's home from a cPanel `cpmove` archive or an
//! nPanel backup, with stage, percent, MB/s and an ETA a user can trust.
//!
//! # Shape
//! - **One pass, on the host.** The agent reads the archive once and writes the home's files
//!   as they stream past into a staging beside the homes (`agent::restore`, safety in
//!   `agent::unpack`): the handler never touches the account's files itself. Nothing of the
//!   account changes until the staged home is installed with one rename; a cancel or a failure
//!   before that deletes the staging, after it reverts the rename. So a cancelled or failed
//!   restore leaves the account as it was.
//! - **Stages** are the seed's five in its order, weighted by where the time goes
//!   (`queue::JobKind::stages`): `extracting` is the pass itself (a headers-only scan, then
//!   the writes; percent and the ETA from the time `Pace` predicts, MB/s from the bytes
//!   written), `validating` checks what came out
//!   against the account, `creating_accounts` is where mail accounts and databases will be
//!   made, `restoring_data` installs the home (ownership, rename), `finalizing` deletes the
//!   staging and the replaced home. `log_tail` gets a line for a restored file at each poll
//!   (the counts of all of them are in the result).
//! - **Retries** (a killed worker) start the pass again from an empty staging, unless the
//!   staged home was installed already: then they go on from there, so nothing is doubled.
//!
//! - **Databases** (`creating_accounts`, with `databases.url`): `restore_db` imports each dump
//!   through a temporary user that may touch only its database, before the home is installed;
//!   a cancel or a failure drops what it created. **Zones, TLS and the crontab**
//!   (`finalizing`, after the install): `apply_restore_meta` on the host.
//! - **Afterwards**: the restore records itself as a migration (`store::Migration`) for the
//!   `health_check` the API queued with it.
//!
//! - **A missing account** is created first from the archive's `cp/<user>` (read without
//!   unpacking) and provisioned with provisioning's own `create` steps. The new row is marked
//!   as this job's in the audit log (`account_created_by_restore`, with the job id and the
//!   row's creation time), so a retried attempt knows the account is its own; one it did not
//!   create (no mark, another job's, or another row under the name) is never removed. When
//!   the restore then fails for good or is cancelled, the account goes again: its host side
//!   (provisioning's, as `terminate` removes it, without a backup: it never held anything of
//!   its own) and its store row (`Store::delete_restored_account`), audited as
//!   `restore_created_account_removed`.
//!
//! # Not in this build
//! The undo leaves the account's security fragments (`etc/npanel/accounts/<user>/`: no host
//! operation removes them; `terminate` leaves them too), and a TLS certificate or crontab the
//! finalizing step installed before a later step failed.

use crate::{JobContext, JobError};
use agent::restore::{ArchiveUnpacked, UnpackStatus};
use agent::{AccountName, AgentError, ErrorCode, Reply, Request};
use queue::Restore;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{AccountStatus, Store, StoreError};

use crate::provision::{store_err, HostOps};

/// How often the handler reads the unpack's counters.
const POLL: Duration = Duration::from_millis(250);

/// The handler's dependencies.
pub struct Restorer {
    store: Store,
    host: Arc<dyn HostOps>,
    /// Where nPanel backups are (`<host_root>/backups`): a bare archive name is looked up
    /// here, and must be one of the account's (`<account>-…`).
    backups: PathBuf,
    /// This server's address: a restored zone's records of the old server point here.
    ipv4: std::net::Ipv4Addr,
    /// The host's security template (whether a restored crontab may be installed).
    security_default: store::SecurityPolicy,
    /// The database server the archive's databases are restored into (`databases.url`).
    databases_url: Option<String>,
    /// Creates an account that is not in the store yet, with provisioning's own steps.
    provisioner: Option<Arc<crate::provision::Provisioner>>,
}

impl Restorer {
    /// A restorer over `store` and `host`, finding backups in `backups` (zones restored to
    /// 127.0.0.1, the strict template's cron setting).
    pub fn new(store: Store, host: Arc<dyn HostOps>, backups: PathBuf) -> Arc<Restorer> {
        Self::with_host(
            store,
            host,
            backups,
            std::net::Ipv4Addr::LOCALHOST,
            store::SecurityPolicy::Strict,
            None,
            None,
        )
    }

    /// A restorer with this server's address and security template (`host.*` settings), the
    /// database server the archive's databases go to, and the provisioner that creates an
    /// account missing from the store.
    pub fn with_host(
        store: Store,
        host: Arc<dyn HostOps>,
        backups: PathBuf,
        ipv4: std::net::Ipv4Addr,
        security_default: store::SecurityPolicy,
        databases_url: Option<String>,
        provisioner: Option<Arc<crate::provision::Provisioner>>,
    ) -> Arc<Restorer> {
        Arc::new(Restorer {
            store,
            host,
            backups,
            ipv4,
            security_default,
            databases_url,
            provisioner,
        })
    }
}

/// Unlike provisioning's (`provision::host_err`), a cancelled unpack is the job's cancel, and
/// a missing or unreadable archive will not appear by retrying.
fn host_err(op: &str, e: AgentError) -> JobError {
    let msg = format!("{op}: {e}");
    match e.code() {
        ErrorCode::Cancelled => JobError::Cancelled,
        ErrorCode::InvalidRequest
        | ErrorCode::InvalidAccount
        | ErrorCode::UnsafePath
        | ErrorCode::NotPermitted
        | ErrorCode::NotFound
        | ErrorCode::Io => JobError::Permanent(msg),
        _ => JobError::Transient(msg),
    }
}

/// The account an archive's file name names ([`queue::account_from_archive_name`]), as the
/// host's account name.
pub fn account_from_archive_name(path: &str) -> Option<String> {
    let user = queue::account_from_archive_name(path)?;
    AccountName::parse(&user)
        .ok()
        .map(|a| a.as_str().to_string())
}

/// Human bytes for log lines.
/// Bytes for people: `512 B`, `12 KB`, `4.0 MB`, `1.5 GB` (log lines of restores and sweeps).
pub(crate) fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{} KB", n >> 10),
        n => format!("{n} B"),
    }
}

/// The audit action that marks an account as created by a restore job (its `job_id`), with
/// the row's `created_at_ms`: how a retried attempt knows the account is its own to undo.
pub const CREATED_MARK: &str = "account_created_by_restore";

/// The audit action of an undo: the account a failed or cancelled restore had created is gone.
pub const UNDONE_MARK: &str = "restore_created_account_removed";

/// An account this restore job created (this attempt or an earlier one).
#[derive(Clone, Debug)]
struct Created {
    account: AccountName,
    /// The store row's `created_at` (Unix ms): the delete touches that row only.
    created_at_ms: i64,
    domain: Option<String>,
    /// The durable mark ([`CREATED_MARK`]) is written: a retry will know.
    marked: bool,
}

/// Run one `restore` job. When it fails for good (a permanent error, a cancel, or the last
/// attempt's transient error) after it created the account, the account is removed again
/// ([`undo_created`]): the name is as free as before the restore.
pub async fn run(ctx: JobContext, r: Arc<Restorer>) -> Result<Value, JobError> {
    let mut made = None;
    let res = restore(ctx.clone(), r.clone(), &mut made).await;
    let (Err(e), Some(c)) = (&res, &made) else {
        return res;
    };
    let undo = match e {
        JobError::Permanent(_) | JobError::Cancelled => true,
        // A retry follows, and finds the account by its mark; without the mark it could not
        // tell the account from somebody else's, so it is removed now and made again.
        JobError::Transient(_) | JobError::RetryAfter(..) => {
            ctx.attempt >= ctx.max_attempts || !c.marked
        }
    };
    if undo {
        // In a task of its own: the undo finishes even if this handler is dropped meanwhile
        // (one that outlives the pool's cancel grace is).
        let (ctx, c, why) = (ctx.clone(), c.clone(), e.to_string());
        let _ = tokio::spawn(async move { undo_created(&ctx, &r, &c, &why).await }).await;
    }
    res
}

async fn restore(
    ctx: JobContext,
    r: Arc<Restorer>,
    made: &mut Option<Created>,
) -> Result<Value, JobError> {
    let started = Instant::now();
    let job: Restore = ctx.payload()?;
    let account_id = job
        .account
        .clone()
        .or_else(|| ctx.account.clone())
        .or_else(|| account_from_archive_name(&job.archive))
        .ok_or_else(|| {
            JobError::Permanent(format!(
                "name the account to restore into: none given and none in the name {:?}",
                job.archive
            ))
        })?;
    let account = AccountName::parse(&account_id)
        .map_err(|e| JobError::Permanent(format!("account {account_id:?}: {e}")))?;
    // The archive: a path (admins), or the name of one of the account's backups.
    let archive = if job.archive.contains('/') {
        PathBuf::from(&job.archive)
    } else {
        // The name must be the account's own backup: `<account>-<stamp>…` read back to the
        // account (a prefix check would give `my` the backups of `my-site`).
        if account_from_archive_name(&job.archive).as_deref() != Some(account_id.as_str()) {
            return Err(JobError::Permanent(format!(
                "{:?} is not one of {account_id}'s backups (their names start with \"{account_id}-\")",
                job.archive
            )));
        }
        r.backups.join(&job.archive)
    };
    ctx.progress("extracting", 0, 1);
    let a = match r.store.account(&account_id).await {
        Ok(a) if a.status == AccountStatus::Pending && r.provisioner.is_some() => {
            // An earlier attempt created it and stopped before its host was ready (or it
            // waits for its own create job): the steps again; it is this job's to undo only
            // when its mark says so.
            *made = created_by(&ctx, &r, &account, &a).await?;
            create_account(&ctx, &r, &account_id, &archive, job.package.as_deref(), None).await?
        }
        Ok(a) => {
            *made = created_by(&ctx, &r, &account, &a).await?;
            a
        }
        Err(StoreError::NotFound(_)) if r.provisioner.is_some() => {
            create_account(
                &ctx,
                &r,
                &account_id,
                &archive,
                job.package.as_deref(),
                Some(made),
            )
            .await?
        }
        Err(StoreError::NotFound(_)) => {
            return Err(JobError::Permanent(format!(
                "account {account_id} is not in the store: create it (POST /api/accounts or WHMCS), then restore into it"
            )))
        }
        Err(e) => return Err(store_err(e)),
    };
    if a.status == AccountStatus::Terminated {
        return Err(JobError::Permanent(format!(
            "account {account_id} is terminated"
        )));
    }
    // The bound is the account's disk limit: an admin's override (the quota sweep's), else
    // its package's.
    let package_mb = match &a.package {
        Some(p) => r.store.package(p).await.map_err(store_err)?.limits.disk_mb,
        None => None,
    };
    let disk_mb = r
        .store
        .usage_override(&a.id)
        .await
        .map_err(store_err)?
        .and_then(|o| o.disk_mb)
        .or(package_mb);
    let owner = a.uid.zip(a.gid).map(|(u, g)| (u as u32, g as u32));
    let restore_id = ctx.id.clone();

    let status = status(&r, &restore_id).await?;
    let unpacked = if status.installed {
        ctx.log("the staged home was installed by an earlier attempt; going on from there");
        None
    } else {
        Some(extract(&ctx, &r, &account, &restore_id, &archive, disk_mb, owner).await?)
    };

    // The short stages after the pass show the bytes restored as their units (done = total:
    // "1 of 1" read as bytes and an MB/s of a step made no sense on the progress route).
    let restored = unpacked.as_ref().map_or(1, |u| {
        (u.unpacked.home_bytes + u.unpacked.meta_bytes).max(1)
    });
    let step = |stage: &str| ctx.progress(stage, restored, restored);
    // validating: what came out, against the account.
    step("validating");
    let mut skipped: Vec<Value> = Vec::new();
    if let Some(u) = &unpacked {
        for s in &u.unpacked.skipped {
            skipped.push(json!({"path": s.path, "reason": s.reason}));
        }
        let meta = Path::new(&u.staging).join("meta");
        if let Ok(cp) = std::fs::read_dir(meta.join("cp")) {
            let users: Vec<String> = cp
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            if !users.is_empty() && !users.contains(&account_id) {
                ctx.log(format!(
                    "the archive is of {} and is restored into {account_id}",
                    users.join(", ")
                ));
            }
        }
    }
    // creating_accounts: this build restores into an existing account only.
    step("creating_accounts");
    let dbs = databases(&ctx, &r, &account, &restore_id, &a, &mut skipped).await;
    let dbs = match dbs {
        Ok(d) => d,
        Err(e) => {
            // What the import created is dropped already; a cancel also undoes an install
            // an earlier attempt made.
            if matches!(e, JobError::Cancelled) && unpacked.is_none() {
                revert(&r, &account, &restore_id).await?;
            }
            if unpacked.is_some() || matches!(e, JobError::Cancelled) {
                discard(&r, &restore_id).await;
            }
            return Err(e);
        }
    };
    let undo_dbs = || async {
        if let (Some(url), Some(d)) = (&r.databases_url, &dbs) {
            crate::restore_db::drop_created(url, d).await;
        }
    };
    if ctx.is_cancelled() {
        // An earlier attempt may have installed already: undo that too.
        if unpacked.is_none() {
            revert(&r, &account, &restore_id).await?;
        }
        undo_dbs().await;
        discard(&r, &restore_id).await;
        return Err(JobError::Cancelled);
    }

    // restoring_data: install the staged home (ownership when the unpack could not set it).
    step("restoring_data");
    if unpacked.is_some() {
        // Ownership was set by the unpack where it could be; the install only renames.
        let req = Request::InstallHome {
            account: account.clone(),
            restore_id: restore_id.clone(),
            uid: None,
            gid: None,
        };
        if let Err(e) = r.host.call(req).await {
            // The install may have stopped between its renames: put the home back first.
            revert(&r, &account, &restore_id).await?;
            undo_dbs().await;
            discard(&r, &restore_id).await;
            return Err(host_err("install_home", e));
        }
    }
    if ctx.is_cancelled() {
        revert(&r, &account, &restore_id).await?;
        undo_dbs().await;
        discard(&r, &restore_id).await;
        return Err(JobError::Cancelled);
    }

    // finalizing: the archive's zones and crontab, then the staging and the replaced home go.
    step("finalizing");
    let meta = apply_meta(&ctx, &r, &account, &restore_id, &mut skipped).await?;
    if let (Some(url), Some(d)) = (&r.databases_url, &dbs) {
        crate::restore_db::finish(url, d).await?;
    }
    discard(&r, &restore_id).await;
    let (files, bytes, dirs, links) = unpacked
        .as_ref()
        .map(|u| {
            let x = &u.unpacked;
            (
                x.home_files,
                x.home_bytes,
                x.home_dirs,
                x.home_symlinks + x.home_hardlinks,
            )
        })
        .unwrap_or_default();
    ctx.log(format!(
        "Restored {files} files ({}) into {account_id}",
        human(bytes)
    ));
    let result = json!({
        "account": account_id,
        "archive": archive,
        "compression": unpacked.as_ref().and_then(|u| u.unpacked.compression),
        "unpack_cgroup": unpacked.as_ref().and_then(|u| u.cgroup.clone()),
        "total_time": started.elapsed().as_secs_f64(),
        "data_restored": bytes,
        "data_restored_human": human(bytes),
        "accounts_created": u64::from(made.is_some()),
        "files": files,
        "directories": dirs,
        "links": links,
        "databases": dbs.as_ref().map_or(0, |d| d.created.len()),
        "database_users": dbs.as_ref().map_or(0, |d| d.users.len()),
        "database_imports": dbs.as_ref().map(|d| d.report.clone()),
        "mailboxes": meta.as_ref().map_or(0, |m| m.mailboxes),
        "zones": meta.as_ref().map(|m| m.zones.iter().filter(|z| z.installed).count()),
        "tls_certificates": meta.as_ref().map(|m| m.tls.iter().filter(|t| t.installed).count()),
        "cron_jobs": meta.as_ref().map(|m| if m.cron.installed { m.cron.jobs } else { 0 }),
        "skipped": skipped,
    });
    // The migration a health check compares with its archive later (DESIGN §12).
    r.store
        .record_migration(
            &ctx.id,
            &account_id,
            &archive.display().to_string(),
            &result,
        )
        .await
        .map_err(store_err)?;
    Ok(result)
}

/// Creates `account_id` from the archive's `cp/<user>` (domain `DNS=`, contact
/// `CONTACTEMAIL=`, package: `package`, else the archive's `PLAN=` when such a package is
/// active) and provisions it with provisioning's own `create` steps (system user, home, zone,
/// limits, security, mail policy). With `made: None` the store's row exists already (a
/// retried attempt): only the steps run again. With `made`, the new row is recorded there as
/// this job's, and marked so in the audit log ([`CREATED_MARK`]) before any host step runs.
async fn create_account(
    ctx: &JobContext,
    r: &Restorer,
    account_id: &str,
    archive: &Path,
    package: Option<&str>,
    made: Option<&mut Option<Created>>,
) -> Result<store::Account, JobError> {
    let p = r.provisioner.as_ref().expect("checked by the caller");
    let cp = match r
        .host
        .call(Request::ReadArchiveMeta {
            archive: archive.to_path_buf(),
            dir: "cp".into(),
        })
        .await
    {
        Ok(Reply::ArchiveMetaFile { file }) => file,
        Ok(other) => {
            return Err(JobError::Permanent(format!(
                "read_archive_meta: unexpected answer {other:?}"
            )))
        }
        Err(e) => return Err(host_err("read_archive_meta", e)),
    };
    let fields: std::collections::HashMap<String, String> = cp
        .as_ref()
        .map(|(_, text)| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(made) = made {
        let plan = fields.get("PLAN").cloned();
        let package = match (package, plan) {
            (Some(p), _) => p.to_string(),
            (None, Some(plan)) if r
                .store
                .package(&plan)
                .await
                .is_ok_and(|p| p.status == store::PackageStatus::Active) =>
            {
                plan
            }
            (None, plan) => {
                return Err(JobError::Permanent(format!(
                    "account {account_id} is not in the store and the archive's plan {} is no active package here: name one (\"package\" in POST /api/restore) or create the account first",
                    plan.as_deref().unwrap_or("(none)")
                )))
            }
        };
        let new = store::NewAccount {
            id: account_id.to_string(),
            package: Some(package.clone()),
            domain: fields.get("DNS").cloned(),
            email: fields.get("CONTACTEMAIL").cloned(),
            ..store::NewAccount::default()
        };
        let row = r.store.create_account(&new).await.map_err(|e| match e {
            StoreError::Unavailable(m) => JobError::Transient(m),
            other => JobError::Permanent(format!("creating account {account_id}: {other}")),
        })?;
        let c = made.insert(Created {
            account: AccountName::parse(account_id)
                .map_err(|e| JobError::Permanent(format!("account {account_id:?}: {e}")))?,
            created_at_ms: row.created_at.map_or(0, |t| t.timestamp_millis()),
            domain: row.domain.clone(),
            marked: false,
        });
        mark_created(ctx, r, c).await?;
        ctx.log(format!(
            "Created account {account_id} from the archive (package {package}, domain {})",
            fields.get("DNS").map_or("none", String::as_str)
        ));
    }
    let a = r.store.account(account_id).await.map_err(store_err)?;
    let job = queue::Provision {
        action: queue::ProvisionAction::Create,
        account: account_id.to_string(),
        package: a.package.clone(),
        domain: a.domain.clone(),
        database: None,
        service_id: None,
        reason: None,
        password: None,
        package_version: None,
    };
    crate::provision::create(ctx, p, &job).await?;
    if fields.get("SUSPENDED").is_some_and(|v| v == "1") {
        ctx.log(format!(
            "the archive says {account_id} was suspended on the old server; it is restored active here"
        ));
    }
    r.store.account(account_id).await.map_err(store_err)
}

fn system_actor() -> store::Actor {
    store::Actor {
        kind: "system".into(),
        id: "restore".into(),
        ..store::Actor::default()
    }
}

/// Writes [`CREATED_MARK`] for `c` (the durable half of "this job created the account").
async fn mark_created(ctx: &JobContext, r: &Restorer, c: &mut Created) -> Result<(), JobError> {
    let mut rec = store::NewAudit::new(CREATED_MARK, system_actor(), "success");
    rec.account = Some(c.account.to_string());
    rec.resource = json!({"type": "account", "id": c.account.as_str(), "name": c.account.as_str()});
    rec.changes = json!({"after": {"created_at_ms": c.created_at_ms, "domain": c.domain}});
    rec.source = json!({"method": "JOB", "endpoint": "restore"});
    rec.job_id = Some(ctx.id.clone());
    r.store.append_audit(&[rec]).await.map_err(store_err)?;
    c.marked = true;
    Ok(())
}

/// Whether `a` is the account this job created in an earlier attempt: the newest
/// [`CREATED_MARK`] of the name is this job's and names this very row (its `created_at`). An
/// account anybody else created has no such mark, or another job's, or another row's time.
async fn created_by(
    ctx: &JobContext,
    r: &Restorer,
    account: &AccountName,
    a: &store::Account,
) -> Result<Option<Created>, JobError> {
    let marks = r
        .store
        .search_audit(&store::AuditFilter {
            action: Some(CREATED_MARK.into()),
            account: Some(a.id.clone()),
            limit: 1,
            ..store::AuditFilter::default()
        })
        .await
        .map_err(store_err)?;
    let Some(m) = marks.into_iter().next() else {
        return Ok(None);
    };
    let at = a.created_at.map(|t| t.timestamp_millis());
    let ours = m.record.action == CREATED_MARK
        && m.record.job_id.as_deref() == Some(ctx.id.as_str())
        && m.record.changes["after"]["created_at_ms"].as_i64() == at;
    Ok(ours.then(|| {
        ctx.log(format!(
            "{account} was created by an earlier attempt of this restore"
        ));
        Created {
            account: account.clone(),
            created_at_ms: at.unwrap_or(0),
            domain: a.domain.clone(),
            marked: true,
        }
    }))
}

/// Removes the account this restore created, after it failed for good or was cancelled: on
/// the host what provisioning made (processes, zone, mail policy, cgroup, system user, home;
/// no backup: it never held anything of its own), then the store's row
/// ([`Store::delete_restored_account`], which keeps it if anything else came to depend on
/// it). Every step is idempotent; what could not be undone is logged and audited, and the
/// job's own error stands.
async fn undo_created(ctx: &JobContext, r: &Restorer, c: &Created, why: &str) {
    use agent::ErrorCode as C;
    let account = c.account.clone();
    let mut steps: Vec<Request> = vec![Request::Kill {
        account: account.clone(),
    }];
    if let Some(d) = c
        .domain
        .as_deref()
        .and_then(|d| agent::Domain::parse(d).ok())
    {
        steps.push(Request::RemoveZone {
            domain: d,
            account: Some(account.clone()),
        });
    }
    steps.extend([
        Request::RemoveMailPolicy {
            account: account.clone(),
        },
        Request::Remove {
            account: account.clone(),
        },
        Request::DeleteUser {
            account: account.clone(),
        },
        Request::RemoveHome {
            account: account.clone(),
        },
    ]);
    let mut problems = Vec::new();
    for req in steps {
        let op = req.op();
        match r.host.call(req).await {
            Ok(_) => {}
            // No cgroup (a host without them, or gone already): nothing to undo there.
            Err(e)
                if matches!(op, "kill" | "remove")
                    && matches!(e.code(), C::NotFound | C::Unsupported) => {}
            Err(e) => problems.push(format!("{op}: {e}")),
        }
    }
    let removed = if problems.is_empty() {
        match r
            .store
            .delete_restored_account(account.as_str(), c.created_at_ms)
            .await
        {
            Ok(_) => true,
            Err(e) => {
                problems.push(format!("store: {e}"));
                false
            }
        }
    } else {
        // The row stays while the host still has part of the account: a retried restore or
        // a terminate finds it.
        false
    };
    let msg = if removed {
        format!("Removed account {account}, which this restore had created (the restore did not finish: {why})")
    } else {
        format!(
            "Could not remove account {account}, which this restore had created: {}",
            problems.join("; ")
        )
    };
    ctx.log(msg.clone());
    if removed {
        tracing::info!(account = %account, job = %ctx.id, "restore: the account it created is removed again");
    } else {
        tracing::warn!(account = %account, job = %ctx.id, problems = ?problems, "restore: the account it created could not be removed");
    }
    let mut rec = store::NewAudit::new(
        UNDONE_MARK,
        system_actor(),
        if removed { "success" } else { "failure" },
    );
    rec.account = Some(account.to_string());
    rec.resource = json!({"type": "account", "id": account.as_str(), "name": account.as_str()});
    rec.changes = json!({"before": {"created_at_ms": c.created_at_ms, "domain": c.domain}, "after": if removed { Value::Null } else { json!({"kept": true}) }});
    rec.source = json!({"method": "JOB", "endpoint": "restore"});
    rec.job_id = Some(ctx.id.clone());
    rec.related_logs = vec![msg];
    rec.impact = json!({"accounts_affected": 1});
    if let Err(e) = r.store.append_audit(&[rec]).await {
        tracing::warn!(account = %account, "could not audit the undo of a restore's account: {e}");
    }
}

/// The archive's databases into the account's (`restore_db`); `None` when the staging is gone
/// (an earlier attempt finished this step and discarded it). Without a database server, or
/// over the package's limit, the dumps are listed in `skipped`.
async fn databases(
    ctx: &JobContext,
    r: &Restorer,
    account: &AccountName,
    restore_id: &str,
    a: &store::Account,
    skipped: &mut Vec<Value>,
) -> Result<Option<crate::restore_db::DbRestored>, JobError> {
    let list = |dir: &str| Request::ListRestoreMeta {
        restore_id: restore_id.to_string(),
        dir: dir.to_string(),
    };
    let names = |reply| match reply {
        Ok(Reply::RestoreMetaList { files }) => Ok(files),
        Ok(other) => Err(JobError::Permanent(format!(
            "list_restore_meta: unexpected answer {other:?}"
        ))),
        Err(e) if agent::AgentError::code(&e) == ErrorCode::NotFound => Ok(Vec::new()),
        Err(e) => Err(host_err("list_restore_meta", e)),
    };
    let dumps = names(r.host.call(list("mysql")).await)?;
    if !dumps.iter().any(|f| f.name.ends_with(".sql")) {
        return Ok(None);
    }
    let Some(url) = &r.databases_url else {
        skipped.push(json!({"what": "databases", "reason": "no database server is configured (databases.url): the dumps are kept in the archive"}));
        return Ok(None);
    };
    let archive_user = names(r.host.call(list("cp")).await)?
        .into_iter()
        .map(|f| f.name)
        .next();
    // The account's own limits, as the API and the quota sweep read them.
    let limit = a.limits.as_ref().and_then(|l| l.databases);
    let mut d = crate::restore_db::DbRestored::default();
    let result = crate::restore_db::restore_databases(
        ctx,
        r.host.as_ref(),
        url,
        account,
        restore_id,
        archive_user.as_deref(),
        limit,
        &mut d,
        skipped,
    )
    .await;
    if let Err(e) = result {
        // A cancel or a failure mid-import: what this restore created goes again.
        crate::restore_db::drop_created(url, &d).await;
        return Err(e);
    }
    Ok(Some(d))
}

/// The archive's DNS zones (of the account's domains) and crontab (when its security policy
/// allows cron), applied from the staging after the home is installed. What was not applied
/// is listed in `skipped` with the reason; `None` when the staging has no metadata (an
/// earlier attempt applied it and discarded the staging).
async fn apply_meta(
    ctx: &JobContext,
    r: &Restorer,
    account: &AccountName,
    restore_id: &str,
    skipped: &mut Vec<Value>,
) -> Result<Option<agent::restore_meta::MetaApplied>, JobError> {
    let domains: Vec<agent::Domain> = r
        .store
        .all_domains(account.as_str())
        .await
        .map_err(store_err)?
        .iter()
        .filter_map(|d| agent::Domain::parse(d).ok())
        .collect();
    let cron = r
        .store
        .account_security(account.as_str())
        .await
        .map_err(store_err)?
        .effective(r.security_default)
        .settings
        .cron;
    let req = Request::ApplyRestoreMeta {
        account: account.clone(),
        restore_id: restore_id.to_string(),
        domains,
        ipv4: r.ipv4,
        cron,
    };
    let m = match r.host.call(req).await {
        Ok(Reply::RestoreMetaApplied(m)) => m,
        Ok(other) => {
            return Err(JobError::Permanent(format!(
                "apply_restore_meta: unexpected answer {other:?}"
            )))
        }
        Err(e) if e.code() == ErrorCode::NotFound => {
            ctx.log("the archive's zones and crontab were applied by an earlier attempt");
            return Ok(None);
        }
        Err(e) => return Err(host_err("apply_restore_meta", e)),
    };
    for z in &m.zones {
        match &z.reason {
            None => ctx.log(format!("Restored the DNS zone of {}", z.domain)),
            Some(why) => {
                skipped.push(json!({"what": "dns zone", "domain": z.domain, "reason": why}))
            }
        }
    }
    for t in &m.tls {
        match &t.reason {
            None => ctx.log(format!("Restored the TLS certificate of {}", t.domain)),
            Some(why) => {
                let mut s = json!({"what": "tls certificate", "domain": t.domain, "reason": why});
                if let Some(src) = &t.source {
                    s["source"] = json!(src);
                }
                skipped.push(s)
            }
        }
    }
    match (&m.cron.reason, m.cron.installed) {
        (_, true) => ctx.log(format!(
            "Restored the crontab ({} jobs, {} lines rewritten for this server)",
            m.cron.jobs, m.cron.rewritten
        )),
        (Some(why), false) if m.cron.jobs > 0 => {
            skipped.push(json!({"what": "cron", "reason": why}));
        }
        _ => {}
    }
    Ok(Some(m))
}

async fn status(r: &Restorer, restore_id: &str) -> Result<UnpackStatus, JobError> {
    match r
        .host
        .call(Request::UnpackStatus {
            restore_id: restore_id.to_string(),
        })
        .await
    {
        Ok(Reply::UnpackStatus(s)) => Ok(s),
        Ok(other) => Err(JobError::Permanent(format!(
            "unpack_status: unexpected answer {other:?}"
        ))),
        Err(e) => Err(host_err("unpack_status", e)),
    }
}

/// Undo an install. If that fails the staging is kept (the home it replaced is there) and the
/// job fails saying where, so nothing is deleted that cannot be found again.
async fn revert(r: &Restorer, account: &AccountName, restore_id: &str) -> Result<(), JobError> {
    match r
        .host
        .call(Request::RevertHome {
            account: account.clone(),
            restore_id: restore_id.to_string(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(JobError::Permanent(format!(
            "could not put {account}'s home back ({e}); it is kept in the restore's staging \
             (.npanel-restore-{restore_id} beside the homes): move it back by hand"
        ))),
    }
}

async fn discard(r: &Restorer, restore_id: &str) {
    if let Err(e) = r
        .host
        .call(Request::DiscardRestore {
            restore_id: restore_id.to_string(),
        })
        .await
    {
        tracing::warn!(restore_id, error = %e, "could not delete a restore's staging");
    }
}

/// The pass: the agent unpacks while this reports its counters; a cancel stops it.
async fn extract(
    ctx: &JobContext,
    r: &Arc<Restorer>,
    account: &AccountName,
    restore_id: &str,
    archive: &Path,
    disk_mb: Option<u64>,
    owner: Option<(u32, u32)>,
) -> Result<ArchiveUnpacked, JobError> {
    let size = std::fs::metadata(archive)
        .map_err(|e| JobError::Permanent(format!("archive {}: {e}", archive.display())))?
        .len();
    ctx.log(format!(
        "Extracting {} ({})",
        archive.display(),
        human(size)
    ));
    let req = Request::UnpackArchive {
        account: account.clone(),
        restore_id: restore_id.to_string(),
        archive: archive.display().to_string(),
        max_bytes: disk_mb.map(|mb| mb.saturating_mul(1 << 20)),
        source_home: Some(format!("/home/{account}")),
        uid: owner.map(|o| o.0),
        gid: owner.map(|o| o.1),
        scan_first: true,
    };
    let mut pace = Pace::new();
    let mut counted = false;
    let host = r.clone();
    let mut pass = tokio::spawn(async move { host.host.call(req).await });
    let mut last_logged = None;
    let mut tick = tokio::time::interval(POLL);
    let home = format!("/home/{account}");
    let result = loop {
        tokio::select! {
            res = &mut pass => break res,
            _ = ctx.cancelled() => {
                let _ = r.host.call(Request::CancelUnpack { restore_id: restore_id.to_string() }).await;
                let _ = (&mut pass).await;
                discard(r, restore_id).await;
                return Err(JobError::Cancelled);
            }
            _ = tick.tick() => {
                if let Ok(s) = status(r, restore_id).await {
                    if s.running {
                        if s.scanned && !counted {
                            counted = true;
                            ctx.log(format!(
                                "The archive holds {} files ({}) to restore",
                                s.total_files,
                                human(s.total_bytes)
                            ));
                        }
                        let (spent, total) = pace.progress(&s, Instant::now());
                        // Bytes written for speed and display; time for percent and ETA.
                        ctx.progress_time(
                            "extracting",
                            s.bytes,
                            s.total_bytes.max(s.bytes),
                            spent as f64 / 1000.0,
                            total.saturating_sub(spent) as f64 / 1000.0,
                        );
                        if s.last_file.is_some() && s.last_file != last_logged {
                            if let Some((path, n)) = &s.last_file {
                                ctx.log(format!("Restored {home}/{path} ({})", human(*n)));
                            }
                            last_logged = s.last_file;
                        }
                    }
                }
            }
        }
    };
    let reply = match result {
        Ok(reply) => reply,
        Err(e) => {
            discard(r, restore_id).await;
            return Err(JobError::Transient(format!("unpack task: {e}")));
        }
    };
    match reply {
        Ok(Reply::ArchiveUnpacked(u)) => {
            ctx.progress("extracting", size.max(1), size.max(1));
            let place = match (&u.cgroup, u.child_process) {
                (Some(cg), _) => format!(" in cgroup {cg}"),
                (None, true) => " in a process of its own (no cgroup here)".to_string(),
                (None, false) => String::new(),
            };
            ctx.log(format!(
                "Extracted {} files ({}) and {} metadata files{place}; {} entries skipped",
                u.unpacked.home_files,
                human(u.unpacked.home_bytes),
                u.unpacked.meta_files,
                u.unpacked.skipped.len()
            ));
            for s in u.unpacked.skipped.iter().take(20) {
                ctx.log(format!("Skipped {}: {}", s.path, s.reason));
            }
            Ok(u)
        }
        Ok(other) => Err(JobError::Permanent(format!(
            "unpack_archive: unexpected answer {other:?}"
        ))),
        Err(e) => Err(host_err("unpack_archive", e)),
    }
}

/// Seconds per file and per MB assumed before the restore has measured its own (500 MB/s,
/// 0.2 ms a file), each counting as much as 100 files or 100 MB of measurement: enough to
/// split a cost the writes cannot split themselves, too little to outweigh them.
const PRIOR_FILE_S: f64 = 0.000_2;
const PRIOR_MB_S: f64 = 0.002;
const PRIOR_WEIGHT_FILES: f64 = 100.0;
const PRIOR_WEIGHT_MB: f64 = 100.0;

/// Writing measured for less than this: the disk is not known yet (progress held under a
/// tenth of the stage).
const MEASURE_S: f64 = 0.5;

/// Turns the unpack's counters into progress that follows time, so the queue's ETA (a rate
/// of percent) is honest: `done` = milliseconds spent, `total` = spent + predicted left.
///
/// Time follows files as much as bytes (creating a file cost 1 ms on the disk this was
/// measured on; writing a MB, 1.25 ms), and a cPanel archive's small files and big uploads
/// come in runs, so bytes alone mispredict by several times. The unpack first counts the
/// home's files and bytes in a headers-only pass; then the seconds per file and per MB are
/// fitted to what the restore has written so far (least squares through the origin over
/// every poll, with the priors above as pseudo-observations: a run of files of one size
/// cannot tell the two apart, so the prior settles the split), and what is left is priced
/// with them. During the pass nothing is known of this disk yet: progress stays under a
/// tenth of the stage.
struct Pace {
    start: Instant,
    write_start: Option<Instant>,
    /// Sums for the fit: Σf², Σfm, Σm², Σft, Σmt.
    sums: [f64; 5],
}

impl Pace {
    fn new() -> Pace {
        Pace {
            start: Instant::now(),
            write_start: None,
            sums: [0.0; 5],
        }
    }

    /// Seconds per file and per MB that fit the restore's writes so far.
    fn costs(&self) -> (f64, f64) {
        let [ff, fm, mm, ft, mt] = self.sums;
        let (wf, wm) = (PRIOR_WEIGHT_FILES.powi(2), PRIOR_WEIGHT_MB.powi(2));
        let (a11, a12, a22) = (ff + wf, fm, mm + wm);
        let (r1, r2) = (ft + wf * PRIOR_FILE_S, mt + wm * PRIOR_MB_S);
        let det = a11 * a22 - a12 * a12;
        let (cf, cm) = ((r1 * a22 - r2 * a12) / det, (a11 * r2 - a12 * r1) / det);
        // A negative cost is the fit leaning on noise: keep the other, refit alone.
        match (cf >= 0.0, cm >= 0.0) {
            (true, true) => (cf, cm),
            (false, _) => (0.0, r2 / a22),
            (_, false) => (r1 / a11, 0.0),
        }
    }

    /// `(done, total)` in milliseconds for the counters `s` read at `now`.
    fn progress(&mut self, s: &UnpackStatus, now: Instant) -> (u64, u64) {
        let spent = now.duration_since(self.start).as_secs_f64();
        let measured = self
            .write_start
            .is_some_and(|w| now.duration_since(w).as_secs_f64() >= MEASURE_S);
        let left = if !s.scanned {
            let read = (s.scan_read as f64 / s.archive_bytes.max(1) as f64).clamp(1e-3, 1.0);
            let scan_left = spent * (1.0 - read) / read;
            let files = s.total_files as f64 / read;
            let mb = s.total_bytes as f64 / read / 1e6;
            // Under a tenth of the stage until the disk has been measured.
            (scan_left + files * PRIOR_FILE_S + mb * PRIOR_MB_S).max(spent * 9.0)
        } else {
            let t = now
                .duration_since(*self.write_start.get_or_insert(now))
                .as_secs_f64();
            let (f, m) = (s.files as f64, s.bytes as f64 / 1e6);
            if t > 0.0 {
                let [ff, fm, mm, ft, mt] = &mut self.sums;
                *ff += f * f;
                *fm += f * m;
                *mm += m * m;
                *ft += f * t;
                *mt += m * t;
            }
            let (cf, cm) = self.costs();
            let files_left = (s.total_files as f64 - f).max(0.0);
            let mb_left = (s.total_bytes as f64 / 1e6 - m).max(0.0);
            let left = files_left * cf + mb_left * cm;
            if measured {
                left
            } else {
                left.max(spent * 9.0)
            }
        };
        let ms = |x: f64| (x * 1000.0) as u64;
        (ms(spent), ms(spent + left).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(scanned: bool, files: u64, mb: u64, total_files: u64, total_mb: u64) -> UnpackStatus {
        UnpackStatus {
            restore_id: "r".into(),
            running: true,
            archive_bytes: 1_000_000_000,
            archive_read: 0,
            files,
            bytes: mb * 1_000_000,
            last_file: None,
            installed: false,
            scan_read: 1_000_000_000,
            scanned,
            total_files,
            total_bytes: total_mb * 1_000_000,
        }
    }

    /// 10 000 small files first (1 ms each, 0.03 MB), then 1000 MB of uploads in 200 files
    /// (1.25 ms a MB): once the small files have been measured, what is left is priced at
    /// their cost and the uploads near the prior bandwidth; the prediction lands within 10 %
    /// of the job's length long before the end.
    #[test]
    fn the_pace_prices_files_and_bytes_as_measured() {
        let mut p = Pace::new();
        let t0 = p.start;
        let (total_files, total_mb) = (10_200u64, 1_300u64);
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        // The scan: 2 s, done.
        let mut worst: f64 = 0.0;
        let truth_end = 2.0 + 10.0 + 1.25 + 0.2 * 1e-3 * 200.0;
        // Predictions made once writing has been measured (before, progress is held under a
        // tenth of the stage).
        let check = |p: &mut Pace, s: &UnpackStatus, now: f64, worst: &mut f64| {
            let (done, total) = p.progress(s, at(now));
            let predicted_end = now + (total - done) as f64 / 1000.0;
            if now >= 2.0 + MEASURE_S {
                *worst = worst.max((predicted_end - truth_end).abs() / truth_end);
            } else {
                assert!(done * 10 <= total, "held under a tenth: {done} of {total}");
            }
        };
        check(
            &mut p,
            &status(true, 0, 0, total_files, total_mb),
            2.0,
            &mut worst,
        );
        let mut t = 2.0;
        for k in 1..=40 {
            t = 2.0 + 0.25 * k as f64;
            let files = 250 * k;
            check(
                &mut p,
                &status(true, files, files * 3 / 100, total_files, total_mb),
                t,
                &mut worst,
            );
        }
        assert!(worst < 0.10, "worst {worst:.3} during the small files");
        for k in 1..=5 {
            let now = t + 0.25 * k as f64;
            let mb = 300 + 200 * k;
            check(
                &mut p,
                &status(
                    true,
                    10_000 + 40 * k,
                    mb.min(total_mb),
                    total_files,
                    total_mb,
                ),
                now,
                &mut worst,
            );
        }
        assert!(worst < 0.10, "worst {worst:.3}");
    }

    #[test]
    fn archive_names_name_their_account() {
        let a = |n: &str| account_from_archive_name(n);
        assert_eq!(a("/home/cpmove-alice.tar.gz").as_deref(), Some("alice"));
        assert_eq!(a("cpmove-alice.tar").as_deref(), Some("alice"));
        assert_eq!(a("/root/cpmove-bob").as_deref(), Some("bob"));
        assert_eq!(a("carol.tar.gz").as_deref(), Some("carol"));
        assert_eq!(
            a("backup-3.11.2024_10-22-01_dave.tar.gz").as_deref(),
            Some("dave")
        );
        assert_eq!(a("erin-20261201T021500Z.tar.zst").as_deref(), Some("erin"));
        assert_eq!(
            a("my-site-20261201T021500Z-2.tar.zst").as_deref(),
            Some("my-site")
        );
        assert_eq!(a("dave-20261201T000000Z.tar.gz").as_deref(), Some("dave"));
        assert_eq!(a("Not A Name.tar.gz"), None);
    }
}
