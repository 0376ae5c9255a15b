//! `npanel whmcs key create | rotate | revoke | list`: WHMCS API keys (DESIGN §5).
//!
//! Unlike the API clients beside it, these open the store directly with the same
//! configuration as `serve` (`DATABASE_URL`, else `<data_dir>/npanel.db`), like `npanel token`
//! reads the data dir: keys are made by whoever administers the host, before any WHMCS or
//! panel token exists. Every change is written to the audit log (actor `system`/`cli`, source
//! `CLI`). A secret is printed once, when it is made; `list` never shows one.

use crate::config::Config;
use anyhow::Context;
use serde_json::json;
use std::time::Duration;
use store::{Actor, NewAudit, Store, WhmcsKey};

async fn open(cfg: &Config) -> anyhow::Result<Store> {
    let url = cfg.store.url_for(&cfg.data_dir);
    let opened = match &cfg.store.url {
        Some(u) => Store::connect(u).await,
        // Creates the data dir on a fresh host, as `serve` would.
        None => Store::open_sqlite(&cfg.data_dir.join("npanel.db")).await,
    };
    opened.with_context(|| {
        format!(
            "cannot open the store at {} (run with the same --data-dir or DATABASE_URL as `npanel serve`)",
            store::redact_url(&url)
        )
    })
}

async fn audit(s: &Store, action: &str, command: &str, k: &WhmcsKey, changes: serde_json::Value) {
    let mut r = NewAudit::new(
        action,
        Actor {
            kind: "system".into(),
            id: "cli".into(),
            ..Actor::default()
        },
        "success",
    );
    r.reseller = k.reseller.clone();
    r.resource = json!({"type": "whmcs_key", "id": k.id, "name": k.id});
    r.changes = changes;
    r.source = json!({"method": "CLI", "endpoint": format!("npanel whmcs key {command}")});
    r.impact = json!({"accounts_affected": 0, "resources_changed": 1});
    if let Err(e) = s.append_audit(&[r]).await {
        eprintln!("warning: the change was made but its audit record was not written: {e}");
    }
}

fn scope(k: &WhmcsKey) -> String {
    match &k.reseller {
        Some(r) => format!("reseller {r}"),
        None => "admin (every account)".into(),
    }
}

fn print_secret(k: &WhmcsKey, secret: &str) {
    println!("key_id: {}", k.id);
    println!("secret: {secret}");
    println!("scope:  {}", scope(k));
    eprintln!(
        "The secret is shown only now: enter the key id and secret in WHMCS (Servers → nPanel) and keep no other copy."
    );
}

/// `npanel whmcs key create [--reseller R] [--note N]`.
pub async fn create(
    cfg: &Config,
    reseller: Option<String>,
    note: Option<String>,
) -> anyhow::Result<()> {
    let s = open(cfg).await?;
    let (k, secret) = s
        .create_whmcs_key(reseller.as_deref(), note.as_deref())
        .await?;
    audit(
        &s,
        "whmcs_key_created",
        "create",
        &k,
        json!({"before": null, "after": {"id": k.id, "reseller": k.reseller, "note": k.note}}),
    )
    .await;
    print_secret(&k, &secret);
    Ok(())
}

/// Parse `--grace`: `0` (old secrets stop at once) or a duration like `24h`.
pub fn parse_grace(g: &str) -> anyhow::Result<Duration> {
    if matches!(g.trim(), "0" | "0s" | "0m" | "0h" | "0d") {
        return Ok(Duration::ZERO);
    }
    super::parse_duration(g)
}

/// `npanel whmcs key rotate ID [--grace 24h]`.
pub async fn rotate(cfg: &Config, id: &str, grace: &str) -> anyhow::Result<()> {
    let grace = parse_grace(grace)?;
    let s = open(cfg).await?;
    let (k, secret) = s.rotate_whmcs_key(id, grace).await?;
    audit(
        &s,
        "whmcs_key_rotated",
        "rotate",
        &k,
        json!({"before": null, "after": {"id": k.id, "grace_secs": grace.as_secs(), "grace_until": k.grace_until}}),
    )
    .await;
    print_secret(&k, &secret);
    match k.grace_until {
        Some(t) => eprintln!(
            "The previous secret keeps working until {} ({} secrets in force now).",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            k.active_secrets
        ),
        None => eprintln!("The previous secrets stopped working now."),
    }
    Ok(())
}

/// `npanel whmcs key revoke ID`.
pub async fn revoke(cfg: &Config, id: &str) -> anyhow::Result<()> {
    let s = open(cfg).await?;
    let before = s.whmcs_key(id).await?;
    let k = s.revoke_whmcs_key(id).await?;
    if before.revoked_at.is_none() {
        audit(
            &s,
            "whmcs_key_revoked",
            "revoke",
            &k,
            json!({"before": {"revoked_at": null}, "after": {"revoked_at": k.revoked_at}}),
        )
        .await;
        println!(
            "Revoked {}: every request signed with it is refused from now on.",
            k.id
        );
    } else {
        println!("{} was already revoked.", k.id);
    }
    Ok(())
}

/// `npanel whmcs key list`.
pub async fn list(cfg: &Config) -> anyhow::Result<()> {
    let s = open(cfg).await?;
    let fmt = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{:<30} {:<16} {:>7} {:<21} {:<21} {:<21} note",
        "id", "reseller", "secrets", "grace until", "created", "revoked"
    );
    for k in s.list_whmcs_keys().await? {
        println!(
            "{:<30} {:<16} {:>7} {:<21} {:<21} {:<21} {}",
            k.id,
            k.reseller.as_deref().unwrap_or("(admin)"),
            k.active_secrets,
            fmt(k.grace_until),
            fmt(k.created_at),
            fmt(k.revoked_at),
            k.note.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn grace_takes_zero_and_durations() {
        assert_eq!(super::parse_grace("0").unwrap().as_secs(), 0);
        assert_eq!(super::parse_grace("24h").unwrap().as_secs(), 86400);
        assert!(super::parse_grace("soon").is_err());
    }
}
