//! `npanel upgrade TARBALL [--dry-run]` (an API client, like `watch`), and the binary's own
//! halves of the `upgrade` job: `npanel upgrade-apply --plan F` (the detached deploy, validate,
//! rollback and cleanup; see workers/src/upgrade.rs) and `npanel store pending|migrate` (what
//! the *new* binary is asked during preflight and deploy).

use super::client::{encode, Api};
use crate::config::Config;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// The tarball's path as the server must read it (absolute).
fn absolute(p: &Path) -> anyhow::Result<String> {
    let abs = std::fs::canonicalize(p)
        .with_context(|| format!("cannot find the tarball {}", p.display()))?;
    abs.to_str()
        .map(str::to_string)
        .context("the tarball's path is not UTF-8")
}

/// Print a preflight report: one `STATUS name: message` line per check, then the counts.
pub fn print_report(r: &Value) {
    println!(
        "= PREFLIGHT {} -> {} =",
        r["from_version"].as_str().unwrap_or("?"),
        r["to_version"].as_str().unwrap_or("?")
    );
    for c in r["checks"].as_array().into_iter().flatten() {
        println!(
            "{}: {}: {}",
            c["status"].as_str().unwrap_or("?"),
            c["name"].as_str().unwrap_or("?"),
            c["message"].as_str().unwrap_or("")
        );
    }
    let n = &r["counts"];
    println!(
        "= SUMMARY = TOTAL: {} PASSED: {} WARNINGS: {} FAILURES: {} SKIPPED: {}",
        n["total"], n["pass"], n["warn"], n["fail"], n["skip"]
    );
    if r["ok"].as_bool() == Some(false) {
        println!(
            "Solve the FAILs (one at a time) and run the preflight again; nothing was changed."
        );
    }
}

/// `npanel upgrade TARBALL [--signature S] [--force] [--dry-run] [--no-watch]`. With
/// `--dry-run`, verify and preflight only and print the report (exit 0 only without FAIL);
/// else start the job and watch it like `npanel watch`.
pub async fn upgrade(
    api: &Api,
    tarball: &Path,
    signature: Option<&Path>,
    force: bool,
    dry_run: bool,
    no_watch: bool,
) -> anyhow::Result<bool> {
    let tarball = absolute(tarball)?;
    let signature = signature.map(absolute).transpose()?;
    if dry_run {
        let mut path = format!("/api/admin/upgrade/preflight?tarball={}", encode(&tarball));
        if let Some(s) = &signature {
            path.push_str(&format!("&signature={}", encode(s)));
        }
        if force {
            path.push_str("&force=true");
        }
        let r = api
            .clone()
            .with_timeout(Duration::from_secs(60))
            .call("GET", &path, None)
            .await?;
        print_report(&r);
        return Ok(r["ok"].as_bool() == Some(true));
    }
    let v = api
        .call(
            "POST",
            "/api/admin/upgrade",
            Some(json!({"tarball": tarball, "signature": signature, "force": force})),
        )
        .await?;
    let Some(id) = v["id"].as_str() else {
        bail!("the server answered without a job id: {v}");
    };
    if no_watch {
        super::print_json(&v);
        return Ok(true);
    }
    eprintln!("Upgrade job {id}: the service restarts during deploy; the watch reconnects.");
    let ok = super::watch::watch(api, &[id.to_string()]).await?;
    let job = api
        .call("GET", &format!("/api/jobs/{}", encode(id)), None)
        .await?;
    if let Some(r) = job.get("result").filter(|r| !r.is_null()) {
        super::print_json(r);
    }
    Ok(ok)
}

/// `npanel upgrade-apply --plan F`: the detached half of an upgrade job. Mints a short-lived
/// admin token (the service's secret, as `npanel token` does) for validate's API calls.
pub async fn apply(cfg: &Config, plan: &Path) -> anyhow::Result<bool> {
    let p: workers::upgrade::Plan = serde_json::from_slice(
        &std::fs::read(plan).with_context(|| format!("cannot read {}", plan.display()))?,
    )
    .with_context(|| format!("{} is not an upgrade plan", plan.display()))?;
    let secret = api::auth::load_or_create_secret(cfg.api.jwt_secret.as_deref(), &p.data_dir)
        .context("cannot read the service's JWT secret")?;
    let claims = api::auth::Claims::new(
        "upgrade",
        api::Role::Admin,
        None,
        None,
        Duration::from_secs(3600),
    )?;
    let token = api::auth::Auth::new(&secret).mint(&claims)?;
    workers::upgrade::apply(plan, &token)
        .await
        .map_err(anyhow::Error::msg)
}

/// `npanel store pending`: the migrations this binary carries that the store has not applied,
/// as JSON `[{"version", "description"}]`.
pub async fn store_pending(cfg: &Config) -> anyhow::Result<()> {
    let url = cfg.store.url_for(&cfg.data_dir);
    let list = workers::upgrade::pending_migrations(&url)
        .await
        .map_err(anyhow::Error::msg)?;
    println!("{}", serde_json::to_string(&list)?);
    Ok(())
}

/// `npanel store migrate`: apply this binary's migrations to the store.
pub async fn store_migrate(cfg: &Config) -> anyhow::Result<()> {
    let url = cfg.store.url_for(&cfg.data_dir);
    let before = workers::upgrade::pending_migrations(&url)
        .await
        .map_err(anyhow::Error::msg)?;
    let s = store::Store::connect(&url)
        .await
        .with_context(|| format!("cannot migrate {}", store::redact_url(&url)))?;
    s.close().await;
    println!("store migrated: {} migration(s) applied", before.len());
    Ok(())
}
