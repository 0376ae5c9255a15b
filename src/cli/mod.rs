//! The operator CLI on the HTTP API: `npanel token`, `jobs`, `admin`, `watch`, `accounts`,
//! `packages`, `audit`; and `whmcs key ...`, which opens the store directly (see [`whmcs`]).
//!
//! `token --login-link` ([`login`]) stores a one-time login code in the service's Redis instead
//! of printing a token.
//!
//! Every command except `token` is a plain API client (base URL and token from `--url`/`--token`
//! or `NPANEL_URL`/`NPANEL_TOKEN`), so it works from any host that can reach the API and obeys
//! the same auth and tenant rules as any other client. The client speaks plain `http://` and
//! `ws://` only (no TLS stack in the binary, which keeps the build small): run it on the panel
//! host against the loopback listener, or put a TLS-terminating proxy in front for remote use.

pub mod accounts;
pub mod audit;
pub mod client;
pub mod login;
pub mod packages;
pub mod upgrade;
pub mod watch;
pub mod whmcs;

use anyhow::{bail, Context};
use client::Api;
use serde_json::{json, Value};
use std::time::Duration;

/// Parse `90`, `30s`, `15m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration like 30s, 15m, 24h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("{s:?} is not a duration like 30s, 15m, 24h or 7d"),
    };
    let secs = n
        .checked_mul(mult)
        .filter(|v| *v <= 10 * 365 * 86400)
        .with_context(|| format!("{s:?} is longer than 10 years"))?;
    if secs == 0 {
        bail!("a token's lifetime must be at least 1s");
    }
    Ok(Duration::from_secs(secs))
}

/// A JSON value for a table cell: strings bare, `null` as `-`.
pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `npanel jobs list`.
pub async fn jobs_list(api: &Api, query: &[(&str, Option<String>)]) -> anyhow::Result<()> {
    let v = api
        .call("GET", &with_query("/api/jobs", query), None)
        .await?;
    println!(
        "{:<26} {:<12} {:<10} {:>6} {:<18} {:<12} created",
        "id", "kind", "status", "pct", "stage", "account"
    );
    for j in v["jobs"].as_array().into_iter().flatten() {
        println!(
            "{:<26} {:<12} {:<10} {:>6.1} {:<18} {:<12} {}",
            s(&j["id"]),
            s(&j["kind"]),
            s(&j["status"]),
            j["progress_percent"].as_f64().unwrap_or(0.0),
            s(&j["current_stage"]),
            s(&j["account"]),
            s(&j["created_at"]),
        );
    }
    Ok(())
}

/// `path?k=v&...` with the parameters that are set, percent-encoded.
pub(crate) fn with_query(path: &str, query: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = query
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", client::encode(v))))
        .collect();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

/// Print a JSON answer.
pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `npanel jobs enqueue`.
#[allow(clippy::too_many_arguments)]
pub async fn jobs_enqueue(
    api: &Api,
    kind: &str,
    payload: Option<&str>,
    account: Option<String>,
    reseller: Option<String>,
    idempotency_key: Option<String>,
    max_attempts: Option<u32>,
) -> anyhow::Result<()> {
    let payload: Value = match payload {
        Some(p) => serde_json::from_str(p).context("--payload is not valid JSON")?,
        None => json!({}),
    };
    let mut body = json!({"kind": kind, "payload": payload});
    if let Some(a) = account {
        body["account"] = json!(a);
    }
    if let Some(r) = reseller {
        body["reseller"] = json!(r);
    }
    // Always a key (one of ours when none is given), so a request that got no answer can be
    // sent again and find the job it made.
    body["idempotency_key"] =
        json!(idempotency_key.unwrap_or_else(|| format!("cli-{}", ulid::Ulid::new())));
    if let Some(m) = max_attempts {
        body["max_attempts"] = json!(m);
    }
    let v = api.post_idempotent("/api/jobs", body, 3).await?;
    print_json(&v);
    Ok(())
}

/// `npanel backup ACCOUNT [--no-watch]`: start a backup and watch it.
pub async fn backup(api: &Api, account: &str, no_watch: bool) -> anyhow::Result<bool> {
    let body = json!({"kind": "backup", "payload": {"account": account}, "account": account,
        "idempotency_key": format!("cli-{}", ulid::Ulid::new())});
    let v = api.post_idempotent("/api/jobs", body, 3).await?;
    let Some(id) = v["id"].as_str() else {
        anyhow::bail!("the server answered without a job id: {v}");
    };
    if no_watch {
        print_json(&v);
        return Ok(true);
    }
    watch::watch(api, &[id.to_string()]).await
}

/// `npanel restore ARCHIVE [--account A] [--no-watch]`: start a restore and watch it.
pub async fn restore(
    api: &Api,
    archive: &str,
    account: Option<String>,
    no_watch: bool,
) -> anyhow::Result<bool> {
    // A path is the server's: make a relative one absolute as the operator means it.
    let archive = if archive.contains('/') && !archive.starts_with('/') {
        std::path::absolute(archive)
            .with_context(|| format!("cannot resolve {archive}"))?
            .display()
            .to_string()
    } else {
        archive.to_string()
    };
    let mut body = json!({"archive": archive});
    if let Some(a) = account {
        body["account"] = json!(a);
    }
    let v = api.call("POST", "/api/restore", Some(body)).await?;
    let Some(id) = v["id"].as_str() else {
        anyhow::bail!("the server answered without a job id: {v}");
    };
    if no_watch {
        print_json(&v);
        return Ok(true);
    }
    eprintln!(
        "restore {id} started; Ctrl-C stops watching, not the restore (npanel jobs cancel {id})"
    );
    watch::watch(api, &[id.to_string()]).await
}

/// `npanel admin queue`.
pub async fn admin_queue(api: &Api) -> anyhow::Result<()> {
    let v = api.call("GET", "/api/admin/queue", None).await?;
    println!(
        "pending {} of {}{}",
        s(&v["pending"]),
        s(&v["max_pending"]),
        if v["paused"] == true { " (PAUSED)" } else { "" }
    );
    print_kinds(&v);
    Ok(())
}

fn print_kinds(v: &Value) {
    println!(
        "{:<14} {:>6} {:>8} {:>8}",
        "kind", "limit", "running", "pending"
    );
    if let Some(kinds) = v["kinds"].as_object() {
        for (k, x) in kinds {
            println!(
                "{:<14} {:>6} {:>8} {:>8}",
                k,
                s(&x["limit"]),
                s(&x["running"]),
                s(&x["pending"])
            );
        }
    }
}

/// `npanel admin concurrency [set <kind> <n>]`.
pub async fn admin_concurrency(api: &Api, set: Option<(String, u32)>) -> anyhow::Result<()> {
    if let Some((kind, n)) = set {
        let v = api
            .call(
                "PUT",
                &format!("/api/admin/concurrency/{}", client::encode(&kind)),
                Some(json!({"limit": n})),
            )
            .await?;
        println!(
            "{}: limit {} (in force within a second)",
            s(&v["kind"]),
            s(&v["limit"])
        );
        return Ok(());
    }
    let v = api.call("GET", "/api/admin/queue", None).await?;
    print_kinds(&v);
    Ok(())
}
