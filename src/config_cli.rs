//! `npanel config check | diff | versions | rollback`: what an operator (or the upgrade
//! preflight, with the *new* binary) runs against a configuration without starting anything.
//!
//! `diff` and `versions` read the store's configuration versions when the store exists (the
//! SQLite file in the data dir, or `DATABASE_URL`); they never create one. `rollback` writes an
//! older version's file text back to the config file, keeping the current file as
//! `<file>.bak-<unix time>`, secrets taken from the current file (they are never stored), and
//! sends SIGHUP to the running `serve` found through its pid file (`--no-signal`: only says so).

use crate::config::{self, Config};
use anyhow::{bail, Context};
use std::path::Path;

/// The store of `cfg` if it exists already (no file is created, no server contacted for an
/// SQLite store that is not there), opened as it is: no migration runs, so the new binary of
/// an upgrade (or an older one) can read it without changing the schema the service uses.
pub async fn existing_store(cfg: &Config) -> anyhow::Result<Option<store::Store>> {
    if cfg.store.url.is_none() && !cfg.data_dir.join("npanel.db").exists() {
        return Ok(None);
    }
    let url = cfg.store.url_for(&cfg.data_dir);
    let s = store::Store::connect_existing(&url)
        .await
        .with_context(|| format!("cannot open the store at {}", store::redact_url(&url)))?;
    Ok(Some(s))
}

/// `config check`: loading validated already; say what was read.
pub fn check(file: Option<&Path>) -> String {
    let file_txt = file
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "no file".into());
    let env_txt = config::env_file_for(file)
        .map(|p| format!(" < {}", p.display()))
        .unwrap_or_default();
    format!("configuration OK: built-in defaults < {file_txt}{env_txt} < NPANEL_* environment")
}

/// `config diff`: the settings that differ from the built-in defaults, then the defaults that
/// changed since the binary that applied the newest stored version.
pub async fn diff(cfg: &Config) -> anyhow::Result<String> {
    let mut out = String::new();
    let diff = cfg.diff_from_defaults();
    if diff.is_empty() {
        out.push_str("# every setting is at its built-in default\n");
    }
    for (key, value, default) in &diff {
        out.push_str(&format!("{key} = {value}    # default: {default}\n"));
    }
    let latest = match existing_store(cfg).await {
        Ok(Some(s)) => s.latest_config_version().await.ok().flatten(),
        Ok(None) => None,
        Err(e) => {
            out.push_str(&format!(
                "# (defaults of earlier versions not compared: {e:#})\n"
            ));
            None
        }
    };
    if let Some(v) = latest {
        let changes = config::default_changes(&v.defaults);
        for (key, then, now) in changes {
            let set_here = diff.iter().any(|(k, ..)| *k == key);
            let effect = if set_here {
                "set explicitly here: no effect".to_string()
            } else {
                format!("left at its default: it is now {now}")
            };
            out.push_str(&format!(
                "# WARNING: the default of {key} changed from {then} to {now} since npanel {} wrote configuration version {} ({effect})\n",
                v.binary_version, v.version
            ));
        }
    }
    Ok(out)
}

/// `config versions`: newest first.
pub async fn versions(cfg: &Config, limit: i64) -> anyhow::Result<String> {
    let Some(s) = existing_store(cfg).await? else {
        bail!(
            "no store at {} yet: versions are recorded by npanel serve",
            cfg.data_dir.join("npanel.db").display()
        );
    };
    let mut out = format!(
        "{:<8} {:<20} {:<9} {:<10} {:<40} file\n",
        "version", "applied at", "binary", "reason", "by"
    );
    for v in s.config_versions(limit).await? {
        out.push_str(&format!(
            "{:<8} {:<20} {:<9} {:<10} {:<40} {}\n",
            v.version,
            v.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
            v.binary_version,
            v.reason,
            v.actor,
            v.file_path.as_deref().unwrap_or("-")
        ));
    }
    Ok(out)
}

/// `config rollback [--to N]`: returns the lines to print.
pub async fn rollback(
    cfg: &Config,
    file: Option<&Path>,
    to: Option<i64>,
    signal: bool,
) -> anyhow::Result<String> {
    let Some(s) = existing_store(cfg).await? else {
        bail!("no store yet: there is no configuration version to roll back to");
    };
    let target = match to {
        Some(n) => s
            .config_version(n)
            .await?
            .with_context(|| format!("there is no configuration version {n}"))?,
        None => {
            let recent = s.config_versions(2).await?;
            match recent.get(1) {
                Some(v) => v.clone(),
                None => {
                    bail!("only one configuration version is recorded: there is no previous one")
                }
            }
        }
    };
    let Some(text) = target.file_text.as_deref() else {
        bail!(
            "configuration version {} was applied without a config file; nothing to write back",
            target.version
        );
    };
    let dest = match (file, target.file_path.as_deref()) {
        (Some(f), _) => f.to_path_buf(),
        (None, Some(p)) => p.into(),
        (None, None) => bail!("say which file to write with --config"),
    };
    let live = std::fs::read_to_string(&dest).ok();
    let text = config::restore_secrets(text, live.as_deref())?;
    // Refuse to write what this binary would refuse to run.
    let tmp = dest.with_extension(format!("rollback-{}.tmp", std::process::id()));
    // Created 0600 (it holds the restored secrets), then given the live file's mode.
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
    }
    restrict_like(&tmp, &dest);
    if let Err(e) = Config::load(Some(&tmp), &crate::config::Overrides::default()) {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "configuration version {} does not load with this binary: {e}",
            target.version
        );
    }
    let mut out = String::new();
    if live.is_some() {
        let backup = dest.with_file_name(format!(
            "{}.bak-{}",
            dest.file_name().unwrap_or_default().to_string_lossy(),
            chrono::Utc::now().timestamp()
        ));
        std::fs::copy(&dest, &backup)
            .with_context(|| format!("cannot keep a backup at {}", backup.display()))?;
        out.push_str(&format!("Kept the current file as {}\n", backup.display()));
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("cannot replace {}", dest.display()))?;
    out.push_str(&format!(
        "Wrote configuration version {} (applied {} by {}) to {}\n",
        target.version,
        target.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
        target.actor,
        dest.display()
    ));
    let mut rec = store::NewAudit::new(
        "config_rolled_back",
        store::Actor {
            kind: "system".into(),
            id: "npanel config rollback".into(),
            ..store::Actor::default()
        },
        "success",
    );
    rec.resource = serde_json::json!({"type": "config", "id": target.version.to_string(), "name": dest.display().to_string()});
    rec.source = serde_json::json!({"method": "CLI", "endpoint": "config rollback"});
    if let Err(e) = s.append_audit(&[rec]).await {
        out.push_str(&format!("(audit record not written: {e})\n"));
    }
    match crate::reload::running_serve(&cfg.data_dir) {
        Some(pid) if signal => {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGHUP,
            )
            .with_context(|| format!("cannot send SIGHUP to npanel serve (pid {pid})"))?;
            out.push_str(&format!(
                "Sent SIGHUP to npanel serve (pid {pid}): it reloads now (settings that need a restart are listed in its log).\n"
            ));
        }
        Some(pid) => out.push_str(&format!(
            "npanel serve (pid {pid}) is running: reload it with `kill -HUP {pid}` (or systemctl reload npanel).\n"
        )),
        None => out.push_str("No running npanel serve found for this data dir: the file is used at the next start.\n"),
    }
    Ok(out)
}

/// Give `path` the permissions of `like` (a config file with secrets is often 0600).
fn restrict_like(path: &Path, like: &Path) {
    if let Ok(m) = std::fs::metadata(like) {
        let _ = std::fs::set_permissions(path, m.permissions());
    }
}
