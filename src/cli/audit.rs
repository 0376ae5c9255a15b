//! `npanel audit search | export | verify` (DESIGN §10): the audit log through
//! `GET /api/audit`, `GET /api/audit/export` (streamed to stdout or a file as it arrives) and
//! `GET /api/audit/verify` (the hash chain; admins).

use super::client::Api;
use super::{parse_duration, s, with_query};
use anyhow::{bail, Context};
use std::path::Path;

/// The filters `search` and `export` share (all optional).
#[derive(Clone, Debug, Default)]
pub struct Filters {
    /// From (inclusive): RFC 3339, a date, or an age (`24h`).
    pub from: Option<String>,
    /// To (exclusive), same forms.
    pub to: Option<String>,
    /// Action prefix.
    pub action: Option<String>,
    /// Account.
    pub account: Option<String>,
    /// Actor id.
    pub actor: Option<String>,
    /// `success`, `failure`, `denied`.
    pub result: Option<String>,
    /// Resource type.
    pub resource_type: Option<String>,
    /// Free text.
    pub q: Option<String>,
}

/// `2026-11-30T00:00:00Z` as is; `2026-11-30` as midnight UTC; `90m`, `24h`, `7d` as that long
/// ago. The API itself takes RFC 3339 only.
/// `flag` names the option in the error.
pub fn audit_time(flag: &str, t: &str) -> anyhow::Result<String> {
    let t = t.trim();
    if chrono::DateTime::parse_from_rfc3339(t).is_ok() {
        return Ok(t.to_string());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(format!("{d}T00:00:00Z"));
    }
    if let Some(ago) = parse_duration(t)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
    {
        return Ok((chrono::Utc::now() - ago).to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    bail!("--{flag} {t:?} is not a time: use RFC 3339 (2026-11-30T12:00:00Z), a UTC date (2026-11-30) or an age (90m, 24h, 7d)")
}

impl Filters {
    fn query(&self) -> anyhow::Result<Vec<(&'static str, Option<String>)>> {
        let time =
            |flag: &str, v: &Option<String>| v.as_deref().map(|t| audit_time(flag, t)).transpose();
        Ok(vec![
            ("from", time("from", &self.from)?),
            ("to", time("to", &self.to)?),
            ("action", self.action.clone()),
            ("account", self.account.clone()),
            ("actor", self.actor.clone()),
            ("result", self.result.clone()),
            ("resource_type", self.resource_type.clone()),
            ("q", self.q.clone()),
        ])
    }
}

/// A record's time (RFC 3339, or Unix ms from older servers) as `2026-11-30T12:00:00Z`.
fn when(t: &serde_json::Value) -> String {
    let parsed = match t {
        serde_json::Value::Number(n) => {
            n.as_i64().and_then(chrono::DateTime::from_timestamp_millis)
        }
        serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.to_utc()),
        _ => None,
    };
    parsed
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| s(t))
}

/// `npanel audit search`: the newest `limit` (API default 100) matching records, newest first.
pub async fn search(api: &Api, f: &Filters, limit: Option<usize>) -> anyhow::Result<()> {
    let mut q = f.query()?;
    q.push(("limit", limit.map(|l| l.to_string())));
    let v = api.call("GET", &with_query("/api/audit", &q), None).await?;
    println!(
        "{:>6} {:<20} {:<24} {:<8} {:<20} {:<24} account",
        "seq", "time", "action", "result", "actor", "resource"
    );
    for r in v["records"].as_array().into_iter().flatten() {
        println!(
            "{:>6} {:<20} {:<24} {:<8} {:<20} {:<24} {}",
            s(&r["seq"]),
            when(&r["timestamp"]),
            s(&r["action"]),
            s(&r["result"]),
            format!("{}:{}", s(&r["actor"]["type"]), s(&r["actor"]["id"])),
            format!("{}/{}", s(&r["resource"]["type"]), s(&r["resource"]["id"])),
            s(&r["account"]),
        );
    }
    if !v["next_cursor"].is_null() {
        eprintln!("(more records: narrow the filters, raise --limit up to 1000, or use `npanel audit export`)");
    }
    Ok(())
}

/// `npanel audit export`: CSV or JSON, newest first, copied to `out` (a file) or stdout as it
/// streams.
pub async fn export(
    api: &Api,
    f: &Filters,
    format: &str,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let mut q = f.query()?;
    q.push(("format", Some(format.to_string())));
    let path = with_query("/api/audit/export", &q);
    let n = match out {
        None => api.download(&path, &mut std::io::stdout().lock()).await?,
        Some(file) => {
            // Into FILE.part, renamed when complete: a failed export leaves FILE as it was.
            let mut part = file.as_os_str().to_owned();
            part.push(".part");
            let part = std::path::PathBuf::from(part);
            let f = std::fs::File::create(&part)
                .with_context(|| format!("cannot create {}", part.display()))?;
            let mut w = std::io::BufWriter::new(f);
            let res = async {
                let n = api.download(&path, &mut w).await?;
                w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                std::fs::rename(&part, file).with_context(|| {
                    format!("cannot rename {} to {}", part.display(), file.display())
                })?;
                anyhow::Ok(n)
            }
            .await;
            match res {
                Ok(n) => {
                    eprintln!("{n} bytes written to {}", file.display());
                    n
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(e);
                }
            }
        }
    };
    if n >= api::audit::EXPORT_LIMIT_BYTES as u64 {
        eprintln!(
            "The export reached the API's {} MB limit and may be cut short: narrow it with --from/--to.",
            api::audit::EXPORT_LIMIT_BYTES / (1024 * 1024)
        );
    }
    Ok(())
}

/// `npanel audit verify`: `Ok(true)` only when the chain checks out.
pub async fn verify(api: &Api, full: bool) -> anyhow::Result<bool> {
    let path = if full {
        "/api/audit/verify?full=true"
    } else {
        "/api/audit/verify"
    };
    let v = api.call("GET", path, None).await?;
    let ok = v["ok"] == true;
    let range = match (v["first_seq"].as_i64(), v["last_seq"].as_i64()) {
        (Some(a), Some(b)) => format!(" (seq {a}-{b})"),
        _ => String::new(),
    };
    if ok {
        println!("audit log OK: {} records checked{range}", s(&v["checked"]));
    } else {
        println!(
            "audit log BROKEN at seq {}: {}",
            s(&v["broken_at"]),
            s(&v["reason"])
        );
        println!("{} records checked{range}", s(&v["checked"]));
    }
    println!("head hash: {}", s(&v["head_hash"]));
    Ok(ok)
}
