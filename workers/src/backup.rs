//! The `backup` handler (DESIGN §12): an account's home archived by the host as nPanel's
//! `.tar.zst`, `manifest.json` first.
//!
//! The manifest says what the archive holds before a byte of it is read: the account, its
//! package, domain and mailboxes, and the home's file count and bytes (measured just before),
//! so a restore of it knows its totals from the first entry. The archive is written by the
//! agent (`backup_home`: a temp file linked under its final name when complete, so a name
//! that exists is a whole archive); databases are not in it yet (listed in the result).

use crate::provision::{host_err, store_err, HostOps};
use crate::{JobContext, JobError};
use agent::{AccountName, Domain, Reply, Request};
use queue::Backup;
use serde_json::{json, Value};
use std::sync::Arc;
use store::{AccountStatus, Store};

/// The handler's dependencies.
pub struct BackupMaker {
    store: Store,
    host: Arc<dyn HostOps>,
}

impl BackupMaker {
    /// A backup maker over `store` and `host`.
    pub fn new(store: Store, host: Arc<dyn HostOps>) -> Arc<BackupMaker> {
        Arc::new(BackupMaker { store, host })
    }
}

/// Run one `backup` job.
pub async fn run(ctx: JobContext, b: Arc<BackupMaker>) -> Result<Value, JobError> {
    let job: Backup = ctx.payload()?;
    let account = AccountName::parse(&job.account)
        .map_err(|e| JobError::Permanent(format!("account {:?}: {e}", job.account)))?;
    let a = b.store.account(&job.account).await.map_err(store_err)?;
    if a.status == AccountStatus::Terminated {
        return Err(JobError::Permanent(format!(
            "account {} is terminated (its last backup was made then)",
            a.id
        )));
    }
    ctx.progress("measuring", 0, 2);
    let usage = match b
        .host
        .call(Request::DiskUsage {
            account: account.clone(),
        })
        .await
    {
        Ok(Reply::DiskUsage(u)) => u,
        Ok(other) => {
            return Err(JobError::Permanent(format!(
                "disk_usage: unexpected answer {other:?}"
            )))
        }
        Err(e) => return Err(host_err("disk_usage", e)),
    };
    ctx.progress("measuring", 1, 2);
    let mut mailboxes: Vec<String> = Vec::new();
    if let Some(d) = a.domain.as_deref().and_then(|d| Domain::parse(d).ok()) {
        match b
            .host
            .call(Request::ListMailboxes {
                account: account.clone(),
                domain: d.clone(),
            })
            .await
        {
            Ok(Reply::Mailboxes { mailboxes: m, .. }) => {
                mailboxes = m.iter().map(|m| format!("{m}@{d}")).collect();
            }
            Ok(_) => {}
            Err(e) => ctx.log(format!("mailboxes of {d} not listed: {e}")),
        }
    }
    ctx.progress("measuring", 2, 2);
    let manifest = json!({
        "format": "npanel-backup",
        "version": 1,
        "account": a.id,
        "package": a.package,
        "domains": a.domain.iter().collect::<Vec<_>>(),
        "mailboxes": mailboxes,
        "databases": [],
        "files": usage.files,
        "dirs": usage.dirs,
        "bytes": usage.apparent_bytes,
        "created_at": chrono::Utc::now().to_rfc3339(),
        "job_id": ctx.id,
        "created_by": "npanel backup",
    });
    ctx.log(format!(
        "Archiving {} files ({} bytes) of {}",
        usage.files, usage.apparent_bytes, a.id
    ));
    ctx.progress("archiving", 0, 1);
    let made = match b
        .host
        .call(Request::BackupHome {
            account: account.clone(),
            manifest: Some(manifest.clone()),
        })
        .await
    {
        Ok(Reply::HomeBackedUp(h)) => h,
        Ok(other) => {
            return Err(JobError::Permanent(format!(
                "backup_home: unexpected answer {other:?}"
            )))
        }
        Err(e) => return Err(host_err("backup_home", e)),
    };
    ctx.progress("archiving", 1, 1);
    ctx.log(format!("Wrote {} ({} bytes)", made.path, made.bytes));
    let name = std::path::Path::new(&made.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    Ok(json!({
        "account": a.id,
        "backup_location": made.path,
        "backup_name": name,
        "bytes": made.bytes,
        "source_bytes": made.source_bytes,
        "files": made.files,
        "dirs": made.dirs,
        "symlinks": made.symlinks,
        "mailboxes": manifest["mailboxes"],
        "skipped": made.skipped,
        "not_included": ["databases"],
    }))
}
