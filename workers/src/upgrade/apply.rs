//! Stages 4–7, in the detached `npanel upgrade-apply` process: deploy, validate, rollback,
//! cleanup. Progress, log lines and audit records go to `state.json` (written whole, then
//! renamed), which the job's handler follows and relays (see the module docs of `upgrade`).

use super::files::{self, check_sum, prune, restore_store, schema_fingerprint};
use super::hold::Hold;
use super::stage_audit;
use queue::UpgradeStage;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use store::NewAudit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the service is stopped and started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// `<command> stop`, `<command> start`.
    Command(PathBuf),
    /// `systemctl stop|start <unit>`.
    Systemd(String),
}

impl Control {
    async fn run(&self, action: &str, log: &Path) -> Result<(), String> {
        let mut c = match self {
            Control::Command(p) => {
                let mut c = tokio::process::Command::new(p);
                c.arg(action);
                c
            }
            Control::Systemd(unit) => {
                let mut c = tokio::process::Command::new("systemctl");
                c.arg(action).arg(unit);
                c
            }
        };
        // The started service must not inherit this process's version stamp, and its output
        // goes to the job's log file (a pipe would be held open by the service it starts).
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        c.env_remove("NPANEL_BUILD_VERSION")
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        let st = tokio::time::timeout(Duration::from_secs(120), c.status())
            .await
            .map_err(|_| format!("{action} took longer than 120 s"))?
            .map_err(|e| format!("{action}: cannot run: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("{action} exited with {st}"))
        }
    }

    fn describe(&self, action: &str) -> String {
        match self {
            Control::Command(p) => format!("{} {action}", p.display()),
            Control::Systemd(u) => format!("systemctl {action} {u}"),
        }
    }
}

/// What the handler hands to the apply process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// The job.
    pub job_id: String,
    /// Running version.
    pub from_version: String,
    /// Target version.
    pub to_version: String,
    /// The install root.
    pub install_root: PathBuf,
    /// The unpacked release (moved to `releases/<to>`).
    pub staged: PathBuf,
    /// This upgrade's backup.
    pub backup_dir: PathBuf,
    /// The store (never printed: it may hold a password; the plan file is 0600).
    pub store_url: String,
    /// The store's copy in the backup.
    pub store_backup: Option<PathBuf>,
    /// The store's schema fingerprint when it was backed up.
    pub schema_before: String,
    /// The config file (passed as `--config` to what is run).
    pub config_file: Option<PathBuf>,
    /// How the service is restarted.
    pub control: Control,
    /// `http://host:port` of the service.
    pub health_url: String,
    /// The service's data dir (where a generated token secret lives).
    pub data_dir: PathBuf,
    /// Validate's deadline.
    pub validate_timeout_secs: u64,
    /// Largest share of 5xx answers.
    pub max_error_rate: f64,
    /// Releases kept.
    pub keep_releases: usize,
    /// Backups and job directories kept.
    pub keep_backups: usize,
}

/// How it ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Finished {
    /// The new version serves.
    pub success: bool,
    /// The job's result.
    pub result: Value,
    /// The job's error, when it failed.
    pub error: Option<String>,
}

/// What the apply process writes into `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApplyState {
    /// The apply process.
    pub pid: u32,
    /// Current stage.
    pub stage: String,
    /// Steps done of `total`.
    pub done: u64,
    /// Steps of the stage.
    pub total: u64,
    /// Every log line so far.
    pub log: Vec<String>,
    /// Every audit record so far (the handler appends them; ids make twice once).
    pub audits: Vec<NewAudit>,
    /// The store was put back from the backup: records written after the backup (this job's
    /// first ones included) are gone from it, and the handler appends every record again.
    pub store_restored: bool,
    /// Set once, at the end.
    pub finished: Option<Finished>,
}

/// Whether the apply process of `state` still runs.
pub fn alive(state: &ApplyState) -> bool {
    state.pid > 0 && pid_alive(state.pid)
}

/// Whether process `pid` exists. EPERM: it does, owned by another user (a transient unit
/// started as root, say).
pub(super) fn pid_alive(pid: u32) -> bool {
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None),
        Ok(()) | Err(nix::errno::Errno::EPERM)
    )
}

/// The release `<root>/current` points at (resolved against the root).
pub fn current_release(root: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(root.join("current")).ok()?;
    let abs = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    abs.is_dir().then_some(abs)
}

/// Point `<root>/current` at `release` atomically: a new link renamed over the old one.
fn swap(root: &Path, release: &Path) -> Result<(), String> {
    let tmp = root.join("current.new");
    match std::fs::symlink_metadata(&tmp) {
        Ok(m) if m.is_dir() => {
            return Err(format!(
                "{} is in the way (a directory): remove it",
                tmp.display()
            ))
        }
        Ok(_) => std::fs::remove_file(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?,
        Err(_) => {}
    }
    let rel = release.strip_prefix(root).unwrap_or(release);
    std::os::unix::fs::symlink(rel, &tmp)
        .map_err(|e| format!("cannot link {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, root.join("current")).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot swap current: {e}")
    })
}

struct State {
    path: PathBuf,
    s: ApplyState,
    plan: Plan,
}

impl State {
    fn save(&self) {
        if let Err(e) = files::write_json(&self.path, &self.s) {
            eprintln!("cannot write {}: {e}", self.path.display());
        }
    }
    fn progress(&mut self, stage: UpgradeStage, done: u64, total: u64) {
        self.s.stage = stage.as_str().into();
        self.s.done = done;
        self.s.total = total;
        self.save();
    }
    fn log(&mut self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("{line}");
        self.s.log.push(line);
        self.save();
    }
    fn audit(
        &mut self,
        stage: UpgradeStage,
        ok: bool,
        t: Instant,
        detail: Value,
        logs: Vec<String>,
    ) {
        let p = &self.plan;
        let r = stage_audit(
            stage,
            &p.job_id,
            &p.from_version,
            &p.to_version,
            ok,
            t,
            detail,
            logs,
        );
        self.s.audits.push(r);
        self.save();
    }
}

/// A failed check: its name and what was wrong.
type Failure = (String, String);

/// Run deploy, validate, then cleanup or rollback, for the plan at `plan_path`; `token` is an
/// admin token for the service's API (validate's version and diagnostic checks). Returns
/// whether the new version serves.
pub async fn apply(plan_path: &Path, token: &str) -> Result<bool, String> {
    let plan: Plan = serde_json::from_slice(
        &std::fs::read(plan_path)
            .map_err(|e| format!("cannot read {}: {e}", plan_path.display()))?,
    )
    .map_err(|e| format!("{} is not a plan: {e}", plan_path.display()))?;
    let dir = plan_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let log_file = dir.join("apply.log");
    // The handler seeded the state with its own stages' audit records: kept, so that a store
    // restored from the backup gets them back too (see `follow`).
    let mut seeded: ApplyState = std::fs::read(dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    seeded.pid = std::process::id();
    seeded.finished = None;
    let mut st = State {
        path: dir.join("state.json"),
        s: seeded,
        plan: plan.clone(),
    };
    st.save();
    let root = plan.install_root.clone();
    let previous = current_release(&root);
    let release = root.join("releases").join(&plan.to_version);
    let mut changed = Changed::default();

    let t = Instant::now();
    let deployed = deploy(
        &plan,
        &mut st,
        &release,
        previous.as_deref(),
        &log_file,
        &mut changed,
    )
    .await;
    let outcome = match deployed {
        Ok(()) => {
            st.audit(
                UpgradeStage::Deploy,
                true,
                t,
                json!({"release": release, "steps": changed.steps}),
                vec![],
            );
            let t = Instant::now();
            match validate(&plan, &mut st, token, &plan.to_version).await {
                Ok(report) => {
                    st.audit(UpgradeStage::Validate, true, t, report.clone(), vec![]);
                    Ok(report)
                }
                Err((check, msg, report)) => {
                    st.log(format!("validate FAILED at {check}: {msg}"));
                    st.audit(
                        UpgradeStage::Validate,
                        false,
                        t,
                        report,
                        vec![format!("{check}: {msg}")],
                    );
                    Err((format!("validate.{check}"), msg))
                }
            }
        }
        Err((check, msg)) => {
            st.log(format!("deploy FAILED at {check}: {msg}"));
            st.audit(
                UpgradeStage::Deploy,
                false,
                t,
                json!({"release": release, "steps": changed.steps}),
                vec![format!("{check}: {msg}")],
            );
            Err((format!("deploy.{check}"), msg))
        }
    };
    let finished = match outcome {
        Ok(validated) => {
            let t = Instant::now();
            st.progress(UpgradeStage::Cleanup, 0, 1);
            let _ = std::fs::remove_dir_all(&plan.staged);
            if let Some(aside) = changed.aside.take() {
                let _ = std::fs::remove_dir_all(aside);
            }
            let mut gone = prune(
                &root.join("releases"),
                plan.keep_releases,
                std::slice::from_ref(&release),
            );
            gone.extend(prune(
                &root.join("backups"),
                plan.keep_backups,
                std::slice::from_ref(&plan.backup_dir),
            ));
            gone.extend(prune(
                &root.join("upgrades"),
                plan.keep_backups,
                std::slice::from_ref(&dir),
            ));
            for g in &gone {
                st.log(format!("cleanup: removed {}", g.display()));
            }
            st.progress(UpgradeStage::Cleanup, 1, 1);
            st.audit(
                UpgradeStage::Cleanup,
                true,
                t,
                json!({"removed": gone}),
                vec![],
            );
            st.log(format!(
                "{} → {}: the new version serves",
                plan.from_version, plan.to_version
            ));
            Finished {
                success: true,
                result: json!({"from_version": plan.from_version, "to_version": plan.to_version,
                    "release": release, "backup_dir": plan.backup_dir, "rolled_back": false,
                    "validate": validated, "removed": gone}),
                error: None,
            }
        }
        Err((check, msg)) => {
            let t = Instant::now();
            let rb = rollback(
                &plan,
                &mut st,
                &release,
                previous.as_deref(),
                &log_file,
                &mut changed,
                token,
            )
            .await;
            let (ok, detail) = match &rb {
                Ok(d) => (true, d.clone()),
                Err(e) => (false, json!({"error": e})),
            };
            st.audit(
                UpgradeStage::Rollback,
                ok,
                t,
                json!({"failed_check": check, "rollback": detail}),
                vec![format!("{check}: {msg}")],
            );
            let error = match &rb {
                Ok(_) => format!(
                    "{check} failed: {msg}; rolled back to {}",
                    plan.from_version
                ),
                Err(e) => format!(
                    "{check} failed: {msg}; ROLLBACK FAILED: {e} (backup in {})",
                    plan.backup_dir.display()
                ),
            };
            st.log(error.clone());
            Finished {
                success: false,
                result: json!({"from_version": plan.from_version, "to_version": plan.to_version,
                    "rolled_back": rb.is_ok(), "failed_check": check, "rollback": detail,
                    "backup_dir": plan.backup_dir}),
                error: Some(error),
            }
        }
    };
    let success = finished.success;
    st.s.finished = Some(finished);
    st.save();
    Ok(success)
}

#[derive(Default)]
struct Changed {
    moved: bool,
    /// The release directory that was in the way (a kept older release, or the serving one
    /// for a forced reinstall), moved aside: put back on rollback, removed on success.
    aside: Option<PathBuf>,
    /// Held from before the stop until just before a start (see [`Hold`]).
    hold: Option<Hold>,
    stopped: bool,
    swapped: bool,
    migrated: bool,
    steps: Vec<String>,
}

async fn deploy(
    plan: &Plan,
    st: &mut State,
    release: &Path,
    previous: Option<&Path>,
    log_file: &Path,
    ch: &mut Changed,
) -> Result<(), Failure> {
    let root = &plan.install_root;
    previous.ok_or_else(|| {
        (
            "current".to_string(),
            format!("{} points at no release", root.join("current").display()),
        )
    })?;
    st.progress(UpgradeStage::Deploy, 0, 5);
    let releases = root.join("releases");
    std::fs::create_dir_all(&releases).map_err(|e| ("release".to_string(), e.to_string()))?;
    if release.exists() {
        // A forced downgrade to a kept release, or a forced reinstall of the serving one:
        // the directory is moved aside, never deleted, until the new version serves.
        let aside = releases.join(format!(".{}.aside-{}", plan.to_version, plan.job_id));
        let _ = std::fs::remove_dir_all(&aside);
        std::fs::rename(release, &aside).map_err(|e| {
            (
                "release".to_string(),
                format!("cannot move {} aside: {e}", release.display()),
            )
        })?;
        st.log(format!(
            "deploy: the existing {} moved aside until the new one serves",
            release.display()
        ));
        ch.aside = Some(aside);
    }
    std::fs::rename(&plan.staged, release).map_err(|e| {
        (
            "release".to_string(),
            format!("cannot move the release into {}: {e}", release.display()),
        )
    })?;
    ch.moved = true;
    ch.steps
        .push(format!("unpacked into {}", release.display()));
    st.log(format!("deploy: release in {}", release.display()));
    st.progress(UpgradeStage::Deploy, 1, 5);

    ch.hold = Some(Hold::take(&plan.data_dir).map_err(|e| ("hold".to_string(), e))?);
    st.log("deploy: upgrade.hold taken (a service started before the start waits for it)");
    st.log(format!("deploy: {}", plan.control.describe("stop")));
    ch.stopped = true;
    plan.control
        .run("stop", log_file)
        .await
        .map_err(|e| ("stop".to_string(), e))?;
    ch.steps.push("service stopped".into());
    st.progress(UpgradeStage::Deploy, 2, 5);

    swap(root, release).map_err(|e| ("swap".to_string(), e))?;
    ch.swapped = true;
    ch.steps.push(format!("current -> {}", release.display()));
    st.log(format!("deploy: current -> releases/{}", plan.to_version));
    st.progress(UpgradeStage::Deploy, 3, 5);

    ch.migrated = true;
    let bin = root.join("current/bin/npanel");
    let mut c = tokio::process::Command::new(&bin);
    if let Some(f) = &plan.config_file {
        c.arg("--config").arg(f);
    }
    c.args(["store", "migrate"])
        .env("DATABASE_URL", &plan.store_url)
        .env_remove("NPANEL_BUILD_VERSION")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(600), c.output())
        .await
        .map_err(|_| ("migrate".to_string(), "took longer than 600 s".to_string()))?
        .map_err(|e| {
            (
                "migrate".to_string(),
                format!("cannot run {}: {e}", bin.display()),
            )
        })?;
    if !out.status.success() {
        return Err((
            "migrate".into(),
            format!(
                "the new binary's store migrate exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    ch.steps.push("store migrated".into());
    st.log(format!(
        "deploy: store migrated ({})",
        String::from_utf8_lossy(&out.stdout).trim()
    ));
    st.progress(UpgradeStage::Deploy, 4, 5);

    ch.hold = None;
    st.log(format!("deploy: {}", plan.control.describe("start")));
    plan.control
        .run("start", log_file)
        .await
        .map_err(|e| ("start".to_string(), e))?;
    ch.steps.push("service started".into());
    st.progress(UpgradeStage::Deploy, 5, 5);
    Ok(())
}

/// Health, version, a diagnostic job, the error rate; a failure names its check and carries
/// what was measured so far.
async fn validate(
    plan: &Plan,
    st: &mut State,
    token: &str,
    want: &str,
) -> Result<Value, (String, String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(plan.validate_timeout_secs);
    let base = plan.health_url.trim_end_matches('/');
    let mut report = serde_json::Map::new();
    st.progress(UpgradeStage::Validate, 0, 4);
    // Health.
    let t = Instant::now();
    loop {
        match http("GET", base, "/healthz", None, None).await {
            Ok((200, _)) => break,
            r if Instant::now() >= deadline => {
                let why = match r {
                    Ok((s, b)) => format!("answered {s}: {b}"),
                    Err(e) => e,
                };
                return Err((
                    "health".into(),
                    format!(
                        "{base}/healthz not healthy within {} s: {why}",
                        plan.validate_timeout_secs
                    ),
                    Value::Object(report),
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    report.insert(
        "health_after_ms".into(),
        json!(t.elapsed().as_millis() as u64),
    );
    st.log(format!(
        "validate: healthy after {} ms",
        t.elapsed().as_millis()
    ));
    st.progress(UpgradeStage::Validate, 1, 4);
    // Version.
    let got = match http("GET", base, "/api/admin/upgrade", Some(token), None).await {
        Ok((200, b)) => serde_json::from_str::<Value>(&b)
            .ok()
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .unwrap_or_default(),
        Ok((s, b)) => {
            return Err((
                "version".into(),
                format!("GET /api/admin/upgrade answered {s}: {b}"),
                Value::Object(report),
            ))
        }
        Err(e) => return Err(("version".into(), e, Value::Object(report))),
    };
    report.insert("version".into(), json!(got));
    if got != want {
        return Err((
            "version".into(),
            format!("the service reports version {got:?}, not {want:?}"),
            Value::Object(report),
        ));
    }
    st.log(format!("validate: reports version {got}"));
    st.progress(UpgradeStage::Validate, 2, 4);
    // One diagnostic job, through the API, the queue and a worker.
    let body = json!({"kind": "diagnostic", "payload": {"duration_ms": 200, "steps": 2}, "max_attempts": 1}).to_string();
    let id = match http("POST", base, "/api/jobs", Some(token), Some(&body)).await {
        Ok((202, b)) => serde_json::from_str::<Value>(&b)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_string))
            .unwrap_or_default(),
        Ok((s, b)) => {
            return Err((
                "diagnostic".into(),
                format!("enqueue answered {s}: {b}"),
                Value::Object(report),
            ))
        }
        Err(e) => return Err(("diagnostic".into(), e, Value::Object(report))),
    };
    if id.is_empty() {
        return Err((
            "diagnostic".into(),
            "the enqueue answered 202 without a job id".into(),
            Value::Object(report),
        ));
    }
    let t = Instant::now();
    let status = loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .clamp(1, 25);
        let st_now = match http(
            "GET",
            base,
            &format!("/api/jobs/{id}/wait?timeout={left}"),
            Some(token),
            None,
        )
        .await
        {
            Ok((200, b)) => serde_json::from_str::<Value>(&b)
                .ok()
                .and_then(|v| v["status"].as_str().map(str::to_string))
                .unwrap_or_default(),
            // Not answering (yet): ask again shortly, not back to back.
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                String::new()
            }
        };
        if ["succeeded", "failed", "cancelled"].contains(&st_now.as_str())
            || Instant::now() >= deadline
        {
            break st_now;
        }
    };
    report.insert(
        "diagnostic".into(),
        json!({"job": id, "status": status, "ms": t.elapsed().as_millis() as u64}),
    );
    if status != "succeeded" {
        return Err((
            "diagnostic".into(),
            format!(
                "diagnostic job {id} is {status:?} after {} ms, not succeeded",
                t.elapsed().as_millis()
            ),
            Value::Object(report),
        ));
    }
    st.log(format!(
        "validate: diagnostic job {id} succeeded in {} ms",
        t.elapsed().as_millis()
    ));
    st.progress(UpgradeStage::Validate, 3, 4);
    // Error rate since the new process started.
    let (total, errors) = match http("GET", base, "/metrics", None, None).await {
        Ok((200, b)) => error_counts(&b),
        Ok((s, _)) => {
            return Err((
                "error_rate".into(),
                format!("/metrics answered {s}"),
                Value::Object(report),
            ))
        }
        Err(e) => return Err(("error_rate".into(), e, Value::Object(report))),
    };
    let rate = if total > 0.0 { errors / total } else { 0.0 };
    report.insert("requests".into(), json!(total));
    report.insert("errors_5xx".into(), json!(errors));
    report.insert("error_rate".into(), json!(rate));
    if rate > plan.max_error_rate {
        return Err((
            "error_rate".into(),
            format!(
                "{errors} of {total} answers were 5xx ({:.1} %, at most {:.1} %)",
                rate * 100.0,
                plan.max_error_rate * 100.0
            ),
            Value::Object(report),
        ));
    }
    st.log(format!("validate: {errors} of {total} answers 5xx"));
    st.progress(UpgradeStage::Validate, 4, 4);
    Ok(Value::Object(report))
}

/// (requests, 5xx answers) from Prometheus text.
fn error_counts(text: &str) -> (f64, f64) {
    let (mut total, mut errors) = (0.0, 0.0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("npanel_http_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        total += v;
        if labels.contains("status=\"5") {
            errors += v;
        }
    }
    (total, errors)
}

async fn rollback(
    plan: &Plan,
    st: &mut State,
    release: &Path,
    previous: Option<&Path>,
    log_file: &Path,
    ch: &mut Changed,
    token: &str,
) -> Result<Value, String> {
    let root = &plan.install_root;
    let mut steps = Vec::new();
    st.progress(UpgradeStage::Rollback, 0, 4);
    let Some(previous) = previous else {
        return Err("there was no previous release to go back to".into());
    };
    if ch.stopped {
        if ch.hold.is_none() {
            match Hold::take(&plan.data_dir) {
                Ok(h) => ch.hold = Some(h),
                Err(e) => st.log(format!("rollback: {e}")),
            }
        }
        st.log(format!("rollback: {}", plan.control.describe("stop")));
        if let Err(e) = plan.control.run("stop", log_file).await {
            // Already stopped (it never started), most likely; start below says.
            st.log(format!("rollback: stop: {e}"));
        }
        steps.push("service stopped".to_string());
    }
    st.progress(UpgradeStage::Rollback, 1, 4);
    if current_release(root).as_deref() != Some(previous) {
        swap(root, previous)?;
        steps.push(format!("current -> {}", previous.display()));
        st.log(format!(
            "rollback: current -> {}",
            previous.strip_prefix(root).unwrap_or(previous).display()
        ));
    }
    if ch.moved {
        let _ = std::fs::remove_dir_all(release);
    }
    if let Some(aside) = ch.aside.take() {
        std::fs::rename(&aside, release).map_err(|e| {
            format!(
                "cannot put {} back from {}: {e}",
                release.display(),
                aside.display()
            )
        })?;
        steps.push(format!("{} put back", release.display()));
    }
    st.progress(UpgradeStage::Rollback, 2, 4);
    let mut restored = false;
    if ch.migrated {
        let now = schema_fingerprint(&plan.store_url).await;
        if now.as_deref().ok() != Some(plan.schema_before.as_str()) {
            let copy = plan
                .store_backup
                .as_ref()
                .ok_or("the backup has no store copy")?;
            let name = copy
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            check_sum(&plan.backup_dir, &name)?;
            st.log("rollback: the store's schema changed; restoring it from the backup");
            restore_store(&plan.store_url, copy).await?;
            let after = schema_fingerprint(&plan.store_url).await?;
            if after != plan.schema_before {
                return Err("the restored store does not match the backup's schema".into());
            }
            restored = true;
            st.s.store_restored = true;
            st.save();
            steps.push("store restored from the backup".into());
        } else {
            st.log("rollback: the store's schema is unchanged; it stays as it is");
        }
    }
    st.progress(UpgradeStage::Rollback, 3, 4);
    if ch.stopped {
        ch.hold = None;
        st.log(format!("rollback: {}", plan.control.describe("start")));
        plan.control.run("start", log_file).await?;
        steps.push("service started".into());
        // The old version must answer again.
        let v = validate_old(plan, token).await?;
        st.log(format!("rollback: {} serves again", v));
    }
    st.progress(UpgradeStage::Rollback, 4, 4);
    Ok(json!({"steps": steps, "store_restored": restored, "release": previous}))
}

/// The previous version answers with its version.
async fn validate_old(plan: &Plan, token: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(plan.validate_timeout_secs);
    let base = plan.health_url.trim_end_matches('/');
    loop {
        if let Ok((200, b)) = http("GET", base, "/api/admin/upgrade", Some(token), None).await {
            let v = serde_json::from_str::<Value>(&b)
                .ok()
                .and_then(|v| v["version"].as_str().map(str::to_string))
                .unwrap_or_default();
            if v == plan.from_version {
                return Ok(v);
            }
            return Err(format!(
                "after rollback the service reports {v:?}, not {}",
                plan.from_version
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the previous version did not answer within {} s",
                plan.validate_timeout_secs
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A small HTTP/1.1 client for the service's own loopback API: one request per connection.
async fn http(
    method: &str,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let host = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("{base} is not an http:// address"))?
        .trim_end_matches('/');
    let work = async {
        let mut s = tokio::net::TcpStream::connect(host)
            .await
            .map_err(|e| format!("cannot connect to {host}: {e}"))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: npanel-upgrade\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no HTTP status")?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("transfer-encoding:")
                && l.to_ascii_lowercase().contains("chunked")
        });
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .map_err(|_| format!("{method} {path}: no answer within 30 s"))?
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Start `exe upgrade-apply --plan <dir>/plan.json` so that stopping the service cannot stop
/// it: a transient systemd unit under systemd, else its own process group.
pub async fn spawn_detached(exe: &Path, plan: &Plan, dir: &Path) -> Result<(), String> {
    let plan_path = dir.join("plan.json");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("apply.log"))
        .map_err(|e| format!("cannot open apply.log: {e}"))?;
    let mut config_args: Vec<std::ffi::OsString> = Vec::new();
    if let Some(f) = &plan.config_file {
        config_args.push("--config".into());
        config_args.push(f.clone().into_os_string());
    }
    if let (Control::Systemd(_), true) = (&plan.control, files::on_path("systemd-run")) {
        let mut c = tokio::process::Command::new("systemd-run");
        c.arg(format!(
            "--unit=npanel-upgrade-{}",
            plan.job_id.to_lowercase()
        ))
        .arg("--collect")
        .arg("--quiet")
        // As this process's user, not root: the files it writes (state.json, the restored
        // store) must stay readable and writable by the service that follows it.
        .arg(format!("--uid={}", nix::unistd::geteuid()))
        .arg(format!("--gid={}", nix::unistd::getegid()));
        // The unit gets the service's settings from the environment by name (values are not
        // put on the command line: they may be secrets).
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if (k.starts_with("NPANEL_") && k != "NPANEL_BUILD_VERSION")
                || k == "REDIS_URL"
                || k == "DATABASE_URL"
                || k == "PATH"
            {
                c.arg(format!("--setenv={k}"));
            }
        }
        c.arg(exe)
            .args(&config_args)
            .arg("upgrade-apply")
            .arg("--plan")
            .arg(&plan_path);
        let out = c.output().await.map_err(|e| format!("systemd-run: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "systemd-run failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        return Ok(());
    }
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let mut c = tokio::process::Command::new(exe);
    c.args(&config_args)
        .arg("upgrade-apply")
        .arg("--plan")
        .arg(&plan_path)
        .env_remove("NPANEL_BUILD_VERSION")
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(false);
    let mut child = c
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    // Reaped here while this process lives; adopted by init when it does not.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_counts_read_prometheus_text() {
        let t = "# TYPE npanel_http_requests_total counter\n\
            npanel_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 8\n\
            npanel_http_requests_total{method=\"POST\",route=\"/api/jobs\",status=\"503\"} 2\n\
            npanel_queue_pending 3\n";
        assert_eq!(error_counts(t), (10.0, 2.0));
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"), "Wikipedia");
    }

    #[test]
    fn swap_is_a_rename_and_refuses_a_directory_in_the_way() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for v in ["1", "2"] {
            std::fs::create_dir_all(root.join("releases").join(v)).unwrap();
        }
        swap(root, &root.join("releases/1")).unwrap();
        assert_eq!(current_release(root), Some(root.join("releases/1")));
        swap(root, &root.join("releases/2")).unwrap();
        assert_eq!(
            std::fs::read_link(root.join("current")).unwrap(),
            PathBuf::from("releases/2")
        );
        std::fs::create_dir_all(root.join("current.new/x")).unwrap();
        assert!(swap(root, &root.join("releases/1"))
            .unwrap_err()
            .contains("in the way"));
        assert_eq!(current_release(root), Some(root.join("releases/2")));
    }
}
