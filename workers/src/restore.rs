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
//!   (`queue::JobKind::stages`): `extracting` is the pass itself (archive bytes read of its
//!   size, so percent, MB/s and the ETA follow the disk), `validating` checks what came out
//!   against the account, `creating_accounts` is where mail accounts and databases will be
//!   made, `restoring_data` installs the home (ownership, rename), `finalizing` deletes the
//!   staging and the replaced home. `log_tail` gets a line for a restored file at each poll
//!   (the counts of all of them are in the result).
//! - **Retries** (a killed worker) start the pass again from an empty staging, unless the
//!   staged home was installed already: then they go on from there, so nothing is doubled.
//!
//! # Not in this build (listed in the result's `skipped`)
//! Databases, mail accounts and mailboxes, DNS zones, cron and TLS are read into the staging
//! (`meta/`) but not yet applied; an account missing from the store is not created (create it
//! through `POST /api/accounts` or WHMCS first); the unpack does not run inside the account's
//! cgroup yet.

use crate::{JobContext, JobError};
use agent::restore::{ArchiveUnpacked, UnpackStatus};
use agent::{AccountName, AgentError, ErrorCode, Reply, Request};
use queue::Restore;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{AccountStatus, Store, StoreError};

use crate::provision::HostOps;

/// How often the handler reads the unpack's counters.
const POLL: Duration = Duration::from_millis(250);

/// The handler's dependencies.
pub struct Restorer {
    store: Store,
    host: Arc<dyn HostOps>,
    /// Where nPanel backups are (`<host_root>/backups`): a bare archive name is looked up
    /// here, and must be one of the account's (`<account>-…`).
    backups: PathBuf,
}

impl Restorer {
    /// A restorer over `store` and `host`, finding backups in `backups`.
    pub fn new(store: Store, host: Arc<dyn HostOps>, backups: PathBuf) -> Arc<Restorer> {
        Arc::new(Restorer {
            store,
            host,
            backups,
        })
    }
}

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

fn store_err(e: StoreError) -> JobError {
    match e {
        StoreError::Unavailable(m) => JobError::Transient(m),
        other => JobError::Permanent(other.to_string()),
    }
}

/// The account an archive's file name names: `cpmove-USER[.tar[.gz]]`, `USER.tar[.gz]`,
/// `backup-…_USER.tar[.gz]`, or nPanel's `USER-<UTC>.tar.zst`.
pub fn account_from_archive_name(path: &str) -> Option<String> {
    let name = Path::new(path).file_name()?.to_str()?;
    let stem = [".tar.gz", ".tgz", ".tar.zst", ".tar"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(name);
    let user = if let Some(u) = stem.strip_prefix("cpmove-") {
        u
    } else if let Some(rest) = stem.strip_prefix("backup-") {
        rest.rsplit_once('_')?.1
    } else if name.ends_with(".tar.zst") {
        // `<account>-<YYYYMMDDTHHMMSSZ>[-N]`: the account is what comes before the stamp.
        let mut parts: Vec<&str> = stem.split('-').collect();
        if parts.len() > 2 && parts.last()?.bytes().all(|b| b.is_ascii_digit()) {
            parts.pop();
        }
        let stamp = parts.pop()?;
        if stamp.len() != 16 || !stamp.ends_with('Z') {
            return None;
        }
        &stem[..parts.join("-").len()]
    } else {
        stem
    };
    AccountName::parse(user)
        .ok()
        .map(|a| a.as_str().to_string())
}

/// Human bytes for log lines.
fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{} KB", n >> 10),
        n => format!("{n} B"),
    }
}

/// Run one `restore` job.
pub async fn run(ctx: JobContext, r: Arc<Restorer>) -> Result<Value, JobError> {
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
        if !job.archive.starts_with(&format!("{account_id}-")) || job.archive.starts_with('.') {
            return Err(JobError::Permanent(format!(
                "{:?} is not one of {account_id}'s backups (their names start with \"{account_id}-\")",
                job.archive
            )));
        }
        r.backups.join(&job.archive)
    };
    ctx.progress("extracting", 0, 1);
    let a = r.store.account(&account_id).await.map_err(|e| match e {
        StoreError::NotFound(_) => JobError::Permanent(format!(
            "account {account_id} is not in the store: create it (POST /api/accounts or WHMCS), then restore into it"
        )),
        e => store_err(e),
    })?;
    if a.status == AccountStatus::Terminated {
        return Err(JobError::Permanent(format!(
            "account {account_id} is terminated"
        )));
    }
    let disk_mb = match &a.package {
        Some(p) => r.store.package(p).await.map_err(store_err)?.limits.disk_mb,
        None => None,
    };
    let owner = a.uid.zip(a.gid).map(|(u, g)| (u as u32, g as u32));
    let restore_id = ctx.id.clone();

    let status = status(&r, &restore_id).await?;
    let unpacked = if status.installed {
        ctx.log("the staged home was installed by an earlier attempt; going on from there");
        None
    } else {
        Some(extract(&ctx, &r, &account, &restore_id, &archive, disk_mb, owner).await?)
    };

    // validating: what came out, against the account.
    ctx.progress("validating", 0, 1);
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
    ctx.progress("validating", 1, 1);
    // creating_accounts: this build restores into an existing account only.
    ctx.progress("creating_accounts", 0, 1);
    for what in [
        "databases",
        "mail accounts",
        "dns zones",
        "cron",
        "tls certificates",
    ] {
        skipped.push(
            json!({"what": what, "reason": "kept in the archive; not restored by this build yet"}),
        );
    }
    ctx.progress("creating_accounts", 1, 1);
    if ctx.is_cancelled() {
        discard(&r, &restore_id).await;
        return Err(JobError::Cancelled);
    }

    // restoring_data: install the staged home (ownership when the unpack could not set it).
    ctx.progress("restoring_data", 0, 1);
    if unpacked.is_some() {
        // Ownership was set by the unpack where it could be; the install only renames.
        let req = Request::InstallHome {
            account: account.clone(),
            restore_id: restore_id.clone(),
            uid: None,
            gid: None,
        };
        if let Err(e) = r.host.call(req).await {
            discard(&r, &restore_id).await;
            return Err(host_err("install_home", e));
        }
    }
    ctx.progress("restoring_data", 1, 1);
    if ctx.is_cancelled() {
        let _ = r
            .host
            .call(Request::RevertHome {
                account: account.clone(),
                restore_id: restore_id.clone(),
            })
            .await;
        discard(&r, &restore_id).await;
        return Err(JobError::Cancelled);
    }

    // finalizing: the staging and the replaced home go.
    ctx.progress("finalizing", 0, 1);
    discard(&r, &restore_id).await;
    ctx.progress("finalizing", 1, 1);
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
    Ok(json!({
        "account": account_id,
        "archive": archive,
        "compression": unpacked.as_ref().and_then(|u| u.unpacked.compression),
        "total_time": started.elapsed().as_secs_f64(),
        "data_restored": bytes,
        "data_restored_human": human(bytes),
        "accounts_created": 0,
        "files": files,
        "directories": dirs,
        "links": links,
        "databases": 0,
        "mailboxes": 0,
        "skipped": skipped,
    }))
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
    };
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
                        ctx.progress("extracting", s.archive_read, s.archive_bytes.max(1));
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
            ctx.log(format!(
                "Extracted {} files ({}) and {} metadata files; {} entries skipped",
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(a("Not A Name.tar.gz"), None);
    }
}
