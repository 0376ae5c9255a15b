//! The `upgrade` job (DESIGN §14): install a signed release tarball with stages, and go back to
//! the previous release when any stage after the backup fails.
//!
//! # Stages
//! | stage | what | a failure |
//! |---|---|---|
//! | verify | the tarball's minisign signature (Ed25519, prehashed `ED`) with `upgrade.public_key`, the *global* signature included (it covers the trusted comment); the trusted comment's `version:X` (and `file:NAME`, when present, must be the tarball's name); no downgrade nor reinstall without `force` | the job fails; nothing was written |
//! | preflight | a PASS/WARN/FAIL/SKIP report with counts ([`preflight`]): free space ≥ 2 × (release + backup) in bytes and ≥ `min_free_bytes`, the new binary's `--version` and `config check` against the live config, its pending store migrations, the queue drained or paused, Redis and the store reachable, how the store and Redis will be backed up, how the service will be restarted | any FAIL: the job fails; the staged copy is removed |
//! | backup | `<root>/backups/<UTC>-<from>-to-<to>/`: the store (`VACUUM INTO` / `pg_dump -Fc`), the config file, a Redis snapshot (`redis-cli --rdb`), `SHA256SUMS` and `backup.json` | the job fails; nothing was deployed |
//! | deploy | `releases/<version>/`; stop the service; `current` swapped atomically (a new symlink renamed over it); the new binary's `store migrate`; start | rollback |
//! | validate | `/healthz` answers within `validate_timeout_secs`; the version it reports is the new one; one `diagnostic` job enqueued through the API finishes; the share of 5xx answers in `/metrics` is at most `max_error_rate` | rollback |
//! | rollback | stop; `current` back to the previous release; the store restored from the backup when its schema changed (checksum checked first); start; the old version answers | the job fails with the failing check |
//! | cleanup | keep the newest `keep_releases` releases (never the current one) and `keep_backups` backups and job directories | logged only |
//!
//! Every stage writes an audit record (`upgrade_<stage>`, success or failure, the failing check
//! in `related_logs`). `dry_run` stops after preflight and answers the report
//! (`GET /api/admin/upgrade/preflight`, `npanel upgrade --dry-run`).
//!
//! # Surviving the restart it causes
//! The job runs inside `npanel serve` (or `npanel worker`), and deploy restarts that service.
//! So verify, preflight and backup run in the handler, and then the handler *hands off*: it
//! writes `plan.json` into `<root>/upgrades/<job>/` and starts `npanel upgrade-apply --plan …`
//! detached from the service, which does deploy, validate, rollback and cleanup and writes its
//! progress, log lines and audit records into `state.json` there (written whole, then renamed).
//! Detached means: under systemd (PID 1, and no `control_command`), a transient unit
//! (`systemd-run --unit npanel-upgrade-<job> --collect`), so stopping the service's unit
//! cannot kill it (FreedomBox's dist-upgrade does the same); otherwise a process in its own
//! process group, which the control command's stop does not reach.
//! The handler follows `state.json`, relaying stage, progress and log lines to the job and
//! appending the audit records to the store (by id, so twice is once). When the service is
//! being stopped, the handler answers "retry in 1 s" (the job keeps its place; an upgrade has
//! 5 attempts for these hand-overs, and is never retried after a real failure: those are
//! permanent), and the restarted service's worker claims the job again, finds the job's
//! `state.json` and resumes following it. The result is the same whichever process reports it.
//! A cancel after the hand-off stops the following, not the apply process: a deploy half done
//! must end in validate or rollback. The new version's handler may be the one that resumes, so
//! `plan.json` and `state.json` ([`Plan`], [`ApplyState`]) are a format between versions: add
//! fields with defaults, never rename.
//!
//! # Restarting the service
//! `upgrade.control_command`, when set, is run as `<command> stop` and `<command> start` (an
//! init script's interface). Otherwise, under systemd, `systemctl stop|start <systemd_unit>`.
//! Neither: preflight FAILs. Stop before the swap and start after the migrations, so the old
//! binary never runs against a migrated store. From before the stop until just before the
//! start (deploy's, and rollback's again) the apply process holds `<data_dir>/upgrade.hold`
//! ([`Hold`]): under socket activation a connection in that window starts the service anyway,
//! and that `serve` waits for the hold to go and then starts over from the binary `current`
//! points at, on the same socket (connections wait in its backlog; none is refused).
//!
//! # Releases in the way
//! A forced downgrade to a release still kept, or a forced reinstall of the serving version,
//! finds `releases/<version>/` taken: it is moved aside (`releases/.<version>.aside-<job>`),
//! put back by a rollback and removed by cleanup once the new copy serves.
//!
//! # The store
//! SQLite is copied with `VACUUM INTO` (a consistent copy while the service writes) and
//! restored by renaming the copy over the file while the service is stopped (its `-wal` and
//! `-shm` removed). PostgreSQL is dumped with `pg_dump -Fc` and restored in one transaction
//! (`psql --single-transaction`: the store's `current_schema()` dropped and recreated, then the
//! dump's SQL from `pg_restore -f`), so a restore that fails leaves the store as it was.
//! Without `pg_dump` preflight WARNs, and FAILs when the new release
//! has migrations to run (no deploy may change a store it cannot put back). The store is
//! restored on rollback only when its schema fingerprint changed since the backup: otherwise
//! what was written meanwhile stays. Pending migrations are what the *new* binary lists
//! (`npanel store pending`, the migrations embedded in it against `_sqlx_migrations`).
//!
//! # Redis
//! A snapshot is taken for the operator (`redis-cli --rdb`, which works for a remote Redis
//! too); when `redis-cli` is missing it is a WARN and the backup says it skipped it. It is never
//! restored automatically: the queue's keys are versioned with the job kinds, and restoring
//! Redis would drop the jobs enqueued meanwhile.

mod apply;
mod files;
mod hold;
pub mod preflight;
mod verify;

pub use apply::{apply, ApplyState, Control, Plan};
pub use files::{pending_migrations, schema_fingerprint, sqlite_path, Migration};
pub use hold::{holder, Hold, HOLD_FILE};
pub use preflight::{Check, Report, Status};
pub use verify::{compare_versions, parse_trusted_comment, verify, Verified, VerifyError};

use crate::{JobContext, JobError};
use queue::{Queue, Upgrade, UpgradeStage};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Actor, NewAudit, Store};
use tokio_util::sync::CancellationToken;

/// `[upgrade]` in the config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpgradeConfig {
    /// Where releases live: `releases/<version>/`, `current -> releases/<v>`,
    /// `backups/<UTC>-<from>-to-<to>/`, `shared/config.toml`, `upgrades/<job>/`.
    /// Default `/opt/npanel`.
    pub install_root: PathBuf,
    /// The minisign public key releases are signed with: base64, the second line of
    /// `minisign.pub`. Empty (the default): upgrades are refused.
    pub public_key: String,
    /// The config file the service runs with (backed up, and checked with the new binary).
    /// Default `<install_root>/shared/config.toml`.
    pub config_file: Option<PathBuf>,
    /// Releases kept (the current one always). Default 5.
    pub keep_releases: usize,
    /// Backups (and job directories) kept. Default 5.
    pub keep_backups: usize,
    /// The service's systemd unit. Default `npanel`.
    pub systemd_unit: String,
    /// A program run as `<it> stop` and `<it> start` to restart the service without systemd
    /// (wins over systemd when set).
    pub control_command: Option<PathBuf>,
    /// Where validate finds the service: `http://host:port`. Default `http://<listen>`.
    pub health_url: Option<String>,
    /// How long the new version has to answer and finish its diagnostic job. Default 60.
    pub validate_timeout_secs: u64,
    /// Largest share of 5xx answers the new version may show while validated. Default 0.05.
    pub max_error_rate: f64,
    /// Free bytes the install root must keep besides 2 × (release + backup). Default 1 GiB.
    pub min_free_bytes: u64,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            install_root: PathBuf::from("/opt/npanel"),
            public_key: String::new(),
            config_file: None,
            keep_releases: 5,
            keep_backups: 5,
            systemd_unit: "npanel".into(),
            control_command: None,
            health_url: None,
            validate_timeout_secs: 60,
            max_error_rate: 0.05,
            min_free_bytes: 1 << 30,
        }
    }
}

impl UpgradeConfig {
    /// One plain sentence per problem.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.install_root.is_absolute() {
            p.push(format!(
                "upgrade.install_root {} must be an absolute path.",
                self.install_root.display()
            ));
        }
        if self.keep_releases < 2 {
            p.push(
                "upgrade.keep_releases must be at least 2 (the current and the previous release)."
                    .into(),
            );
        }
        if self.keep_backups < 1 {
            p.push("upgrade.keep_backups must be at least 1.".into());
        }
        if self.validate_timeout_secs == 0 {
            p.push("upgrade.validate_timeout_secs must be at least 1.".into());
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            p.push("upgrade.max_error_rate must be between 0 and 1.".into());
        }
        if let Some(u) = &self.health_url {
            if !u.starts_with("http://") {
                p.push(format!(
                    "upgrade.health_url {u:?} must be a plain http:// address of the service (e.g. http://127.0.0.1:8080)."
                ));
            }
        }
        if !self.public_key.is_empty()
            && minisign_verify::PublicKey::from_base64(self.public_key.trim()).is_err()
        {
            p.push("upgrade.public_key is not a minisign public key (base64, the second line of minisign.pub).".into());
        }
        p
    }

    /// The config file the service runs with.
    pub fn config_path(&self) -> PathBuf {
        self.config_file
            .clone()
            .unwrap_or_else(|| self.install_root.join("shared/config.toml"))
    }
}

/// Everything the handler needs besides the job.
pub struct Upgrader {
    pub(crate) cfg: UpgradeConfig,
    pub(crate) store: Store,
    pub(crate) store_url: String,
    pub(crate) redis_url: String,
    pub(crate) queue: Queue,
    pub(crate) exe: PathBuf,
    pub(crate) health_url: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) shutdown: CancellationToken,
}

impl Upgrader {
    /// An upgrader for this process. `exe` is the binary that runs `upgrade-apply` (this one);
    /// `shutdown` is the process's shutdown token (the handler hands the job over when it
    /// fires); `listen` is the service's address, the default health URL; `data_dir` is the
    /// service's (the apply process finds the token secret there).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: UpgradeConfig,
        store: Store,
        store_url: String,
        redis_url: String,
        queue: Queue,
        exe: PathBuf,
        listen: &str,
        data_dir: PathBuf,
        shutdown: CancellationToken,
    ) -> Arc<Upgrader> {
        let health_url = cfg
            .health_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}"));
        Arc::new(Upgrader {
            cfg,
            store,
            store_url,
            redis_url,
            queue,
            exe,
            health_url,
            data_dir,
            shutdown,
        })
    }
}

/// The version this process runs (see [`queue::Upgrade::running_version`]).
pub fn running_version() -> String {
    Upgrade::running_version()
}

/// The directory of one job's plan, state and staged release.
pub fn job_dir(root: &Path, job_id: &str) -> PathBuf {
    root.join("upgrades").join(job_id)
}

/// An audit record of one stage.
#[allow(clippy::too_many_arguments)]
pub fn stage_audit(
    stage: UpgradeStage,
    job_id: &str,
    from: &str,
    to: &str,
    ok: bool,
    started: Instant,
    detail: Value,
    logs: Vec<String>,
) -> NewAudit {
    let mut r = NewAudit::new(
        format!("upgrade_{}", stage.as_str()),
        Actor {
            kind: "system".into(),
            id: "upgrade".into(),
            ..Actor::default()
        },
        if ok { "success" } else { "failure" },
    );
    r.resource = json!({"type": "release", "id": to, "name": format!("npanel {to}")});
    r.changes = json!({"before": {"version": from}, "after": {"version": to}, "detail": detail});
    r.source = json!({"method": "JOB", "endpoint": "upgrade"});
    r.job_id = Some(job_id.to_string());
    r.duration_ms = Some(started.elapsed().as_millis() as u64);
    r.related_logs = logs;
    r
}

async fn audit(up: &Upgrader, r: NewAudit) -> Result<(), JobError> {
    up.store
        .append_audit(std::slice::from_ref(&r))
        .await
        .map(|_| ())
        .map_err(|e| JobError::Transient(format!("audit record not written: {e}")))
}

async fn audit_kept(up: &Upgrader, kept: &mut Vec<NewAudit>, r: NewAudit) -> Result<(), JobError> {
    audit(up, r.clone()).await?;
    kept.push(r);
    Ok(())
}

/// Run one `upgrade` job.
#[tracing::instrument(skip_all, fields(job = %ctx.id))]
pub async fn run(ctx: JobContext, up: Arc<Upgrader>) -> Result<Value, JobError> {
    let job: Upgrade = ctx.payload()?;
    let root = up.cfg.install_root.clone();
    let dir = job_dir(&root, &ctx.id);
    // A later attempt of a job that was handed off: the apply process owns it; follow it.
    if dir.join("state.json").exists() {
        ctx.log(format!(
            "Attempt {}: resuming after a restart; following the deploy",
            ctx.attempt
        ));
        return follow(&ctx, &up, &dir).await;
    }
    let from = running_version();
    let tarball = PathBuf::from(&job.tarball);
    let sig = job
        .signature
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("{}.minisig", job.tarball)));

    // verify
    let t = Instant::now();
    ctx.progress(UpgradeStage::Verify.as_str(), 0, 1);
    // Reading and hashing a tarball is blocking work: off the runtime's threads.
    let checked = {
        let (tarball, sig, key, from, force) = (
            tarball.clone(),
            sig.clone(),
            up.cfg.public_key.clone(),
            from.clone(),
            job.force,
        );
        tokio::task::spawn_blocking(move || verify(&tarball, &sig, &key, &from, force))
            .await
            .map_err(|e| JobError::Permanent(format!("verify stopped: {e}")))?
    };
    let verified = match checked {
        Ok(v) => v,
        Err(e) => {
            let msg = e.to_string();
            ctx.log(format!("verify FAILED: {msg}"));
            audit(
                &up,
                stage_audit(
                    UpgradeStage::Verify,
                    &ctx.id,
                    &from,
                    "unknown",
                    false,
                    t,
                    json!({"tarball": job.tarball, "check": e.check()}),
                    vec![msg.clone()],
                ),
            )
            .await?;
            return Err(JobError::Permanent(format!("verify: {msg}")));
        }
    };
    let to = verified.version.clone();
    ctx.log(format!(
        "verify PASS: {} signed for version {to} (sha256 {})",
        tarball.display(),
        verified.sha256
    ));
    ctx.progress(UpgradeStage::Verify.as_str(), 1, 1);
    // This job's records so far, handed to the apply process too (see `ApplyState::audits`).
    let mut written: Vec<NewAudit> = Vec::new();
    audit_kept(
        &up,
        &mut written,
        stage_audit(
            UpgradeStage::Verify,
            &ctx.id,
            &from,
            &to,
            true,
            t,
            json!({"tarball": job.tarball, "sha256": verified.sha256, "force": job.force, "trusted_comment": verified.trusted_comment}),
            vec![],
        ),
    )
    .await?;

    // preflight
    let t = Instant::now();
    ctx.progress(UpgradeStage::Preflight.as_str(), 0, 1);
    let staged = dir.join("release");
    let report = preflight::run(&up, &verified, &staged).await;
    for c in &report.checks {
        ctx.log(format!("{}: {} — {}", c.status, c.name, c.message));
    }
    ctx.log(report.summary());
    ctx.progress(UpgradeStage::Preflight.as_str(), 1, 1);
    let failing: Vec<String> = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| format!("{}: {}", c.name, c.message))
        .collect();
    audit_kept(
        &up,
        &mut written,
        stage_audit(
            UpgradeStage::Preflight,
            &ctx.id,
            &from,
            &to,
            failing.is_empty(),
            t,
            json!({"counts": report.counts(), "dry_run": job.dry_run}),
            failing.clone(),
        ),
    )
    .await?;
    let report_json = report.to_json(&from, &to);
    if !failing.is_empty() || job.dry_run {
        let _ = std::fs::remove_dir_all(&dir);
        // A dry run's answer is the report, FAILs included.
        if job.dry_run {
            return Ok(
                json!({"dry_run": true, "from_version": from, "to_version": to, "preflight": report_json}),
            );
        }
        return Err(JobError::Permanent(format!(
            "preflight failed ({}): {}",
            report.summary(),
            failing.join("; ")
        )));
    }

    // backup
    let t = Instant::now();
    ctx.progress(UpgradeStage::Backup.as_str(), 0, 1);
    let backup = match files::backup(&up, &from, &to).await {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            ctx.log(format!("backup FAILED: {e}"));
            audit(
                &up,
                stage_audit(
                    UpgradeStage::Backup,
                    &ctx.id,
                    &from,
                    &to,
                    false,
                    t,
                    json!({}),
                    vec![e.to_string()],
                ),
            )
            .await?;
            return Err(JobError::Permanent(format!("backup: {e}")));
        }
    };
    for s in &backup.skipped {
        ctx.log(format!("backup: skipped {s}"));
    }
    ctx.log(format!(
        "backup: {} ({} files, sha256 in SHA256SUMS)",
        backup.dir.display(),
        backup.files.len()
    ));
    ctx.progress(UpgradeStage::Backup.as_str(), 1, 1);
    audit_kept(
        &up,
        &mut written,
        stage_audit(
            UpgradeStage::Backup,
            &ctx.id,
            &from,
            &to,
            true,
            t,
            json!({"dir": backup.dir, "files": backup.files, "skipped": backup.skipped}),
            vec![],
        ),
    )
    .await?;

    // hand off deploy, validate, rollback and cleanup to a detached process
    let control = match preflight::control(&up.cfg) {
        Ok(c) => c,
        Err(e) => return Err(JobError::Permanent(e)),
    };
    let plan = Plan {
        job_id: ctx.id.clone(),
        from_version: from.clone(),
        to_version: to.clone(),
        install_root: root.clone(),
        staged: staged.clone(),
        backup_dir: backup.dir.clone(),
        store_url: up.store_url.clone(),
        store_backup: backup.store_file.clone(),
        schema_before: backup.schema.clone(),
        config_file: Some(up.cfg.config_path()).filter(|p| p.exists()),
        control,
        health_url: up.health_url.clone(),
        data_dir: up.data_dir.clone(),
        validate_timeout_secs: up.cfg.validate_timeout_secs,
        max_error_rate: up.cfg.max_error_rate,
        keep_releases: up.cfg.keep_releases,
        keep_backups: up.cfg.keep_backups,
    };
    files::write_json(&dir.join("plan.json"), &plan)
        .map_err(|e| JobError::Permanent(format!("cannot write the plan: {e}")))?;
    let seed = ApplyState {
        audits: written,
        ..ApplyState::default()
    };
    files::write_json(&dir.join("state.json"), &seed)
        .map_err(|e| JobError::Permanent(format!("cannot write the state: {e}")))?;
    if let Err(e) = apply::spawn_detached(&up.exe, &plan, &dir).await {
        let _ = std::fs::remove_file(dir.join("state.json"));
        return Err(JobError::Permanent(format!(
            "cannot start the deploy process: {e}"
        )));
    }
    ctx.log("deploy handed to the detached `npanel upgrade-apply` process");
    follow(&ctx, &up, &dir).await
}

/// Follow the apply process's `state.json` until it finishes.
async fn follow(ctx: &JobContext, up: &Upgrader, dir: &Path) -> Result<Value, JobError> {
    let mut logged = 0usize;
    let mut audited = 0usize;
    let state_path = dir.join("state.json");
    let mut last_change = Instant::now();
    let mut last_seen = String::new();
    let mut after_restore = false;
    loop {
        let state: ApplyState = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for line in state.log.iter().skip(logged) {
            ctx.log(line.clone());
        }
        logged = logged.max(state.log.len());
        if state.store_restored && !after_restore {
            // Records written after the backup went with the restored store: again, all.
            after_restore = true;
            audited = 0;
        }
        if state.audits.len() > audited {
            let new: Vec<NewAudit> = state.audits[audited..].to_vec();
            if up.store.append_audit(&new).await.is_ok() {
                audited = state.audits.len();
            }
        }
        if !state.stage.is_empty() {
            ctx.progress(&state.stage, state.done, state.total.max(1));
        }
        if let Some(end) = &state.finished {
            return if end.success {
                Ok(end.result.clone())
            } else {
                Err(JobError::Permanent(
                    end.error.clone().unwrap_or_else(|| "upgrade failed".into()),
                ))
            };
        }
        // The apply process rewrites its state at least every few seconds while it works; a
        // state that has not moved for long, with its process gone, is an apply that died.
        let seen = format!("{}:{}:{}", state.stage, state.done, state.log.len());
        if seen != last_seen {
            last_seen = seen;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(30) && !apply::alive(&state) {
            return Err(JobError::Permanent(format!(
                "the deploy process stopped without finishing (see {})",
                dir.join("apply.log").display()
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = up.shutdown.cancelled() => {
                // The service is being stopped (by this very deploy, most likely): hand the
                // job to the restarted process, which resumes following.
                return Err(JobError::RetryAfter(
                    Duration::from_secs(1),
                    "the service restarted during the upgrade; the next process resumes it".into(),
                ));
            }
            _ = ctx.cancelled() => {
                ctx.log("cancelled: no longer following; the deploy process finishes (deploy and validate, or rollback)");
                return Err(JobError::Cancelled);
            }
        }
    }
}
