//! Over-limit mail incidents (DESIGN §13, issue 9): Exim's deferrals of an account that went
//! over one of its email limits, audited **once per account, limit and window**.
//!
//! # Why it works this way
//! - **Exim enforces, nPanel reads.** The ACL the agent writes ([`agent::mailpolicy`]) defers
//!   with `452 4.5.3 <Hourly sending|15-minute sending|Hourly volume> limit of account <name>
//!   reached (...)`, and Exim logs each deferral in its main log (`temporarily rejected RCPT
//!   …` / `… after DATA: …`). Nothing runs on the mail path; this module reads that log.
//! - **Once per window, not once per message.** A spamming script can be deferred thousands of
//!   times an hour; the audit log gets one `email_limit_reached` record for the first deferral
//!   of each window (the limit's own period: the hour, or the quarter hour for the burst) and
//!   the store counts the rest ([`store::EmailIncident`], `email_incidents`).
//! - **Read once, retried safely.** The log is read from a cursor (inode and offset, kept with
//!   the sweep's cursors under `mail_incidents:<path>`; a rotated log is read from its start).
//!   Audit records get ids derived from (account, limit, window), so a run repeated after a
//!   crash re-delivers them and the store skips them; the cursor moves last.
//! - **Times**: Exim writes local time; nPanel hosts log in UTC, which is how the timestamps
//!   are read (a host with `log_timezone` or a non-UTC zone shifts the windows, not the counts).
//!
//! [`scan_mail_log`] is meant to run with the hourly quota sweep (one call per sweep, after its
//! own pass over the same log).

use serde_json::json;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use store::{Actor, EmailIncident, NewAudit, Store, StoreError};

/// The audit action of an incident.
pub const ACTION: &str = "email_limit_reached";

/// One deferral read from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deferral {
    /// When (Unix ms).
    pub at: i64,
    pub account: String,
    /// `per_hour`, `burst_per_15min` or `mb_per_hour`.
    pub kind: &'static str,
    /// The 452 answer as logged.
    pub message: String,
}

/// What one scan did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScanSummary {
    /// Whole lines read.
    pub lines: u64,
    /// Deferrals of over-limit accounts among them.
    pub deferrals: u64,
    /// Windows they fell in.
    pub incidents: usize,
    /// Windows seen for the first time: one audit record each.
    pub audited: usize,
}

/// Why a scan stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

const PHRASES: [(&str, &str); 3] = [
    ("4.5.3 Hourly sending limit of account ", "per_hour"),
    (
        "4.5.3 15-minute sending limit of account ",
        "burst_per_15min",
    ),
    ("4.5.3 Hourly volume limit of account ", "mb_per_hour"),
];

/// The deferral in an Exim main log line, if it is one of the policy ACL's.
pub fn parse_deferral(line: &str) -> Option<Deferral> {
    // SMTP: "temporarily rejected RCPT …" / "… after DATA"; without SMTP (`sendmail -t`, PHP's
    // mail()): "rejected by non-SMTP ACL".
    if !line.contains("temporarily rejected") && !line.contains("rejected by non-SMTP ACL") {
        return None;
    }
    let (start, kind, rest) = PHRASES
        .iter()
        .find_map(|(p, k)| line.find(p).map(|i| (i, *k, &line[i + p.len()..])))?;
    let account = rest.split(" reached").next()?.trim();
    let ok = !account.is_empty()
        && account.len() <= 32
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        return None;
    }
    let at = chrono::NaiveDateTime::parse_from_str(line.get(..19)?, "%Y-%m-%d %H:%M:%S")
        .ok()?
        .and_utc()
        .timestamp_millis();
    let message = line[start.saturating_sub(4)..].trim_end().to_string();
    Some(Deferral {
        at,
        account: account.to_string(),
        kind,
        message,
    })
}

/// Start of the window of a limit (`burst_per_15min`: 15 minutes; the others an hour).
pub fn window_start(kind: &str, at: i64) -> i64 {
    let period = if kind == "burst_per_15min" {
        15 * 60_000
    } else {
        3_600_000
    };
    at - at.rem_euclid(period)
}

/// The deferrals grouped by account, limit and window.
pub fn incidents(deferrals: &[Deferral]) -> Vec<EmailIncident> {
    let mut by: std::collections::BTreeMap<(String, &str, i64), EmailIncident> =
        std::collections::BTreeMap::new();
    for d in deferrals {
        let w = window_start(d.kind, d.at);
        let e = by
            .entry((d.account.clone(), d.kind, w))
            .or_insert_with(|| EmailIncident {
                account: d.account.clone(),
                kind: d.kind.to_string(),
                window_start: w,
                first_at: d.at,
                last_at: d.at,
                deferrals: 0,
            });
        e.first_at = e.first_at.min(d.at);
        e.last_at = e.last_at.max(d.at);
        e.deferrals += 1;
    }
    by.into_values().collect()
}

/// The audit record id of an incident: the same for every run that sees it (a ULID from the
/// window's time and a hash of account and limit), so a re-delivered record is skipped.
fn incident_id(i: &EmailIncident) -> String {
    // FNV-1a, 64 bits, twice with different seeds: 128 bits for the ULID's random part.
    let h = |seed: u64| {
        let mut x = seed;
        for b in i.account.bytes().chain([b'/']).chain(i.kind.bytes()) {
            x ^= u64::from(b);
            x = x.wrapping_mul(0x0000_0100_0000_01b3);
        }
        x
    };
    let random =
        (u128::from(h(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(h(0x8422_2325_cbf2_9ce4));
    ulid::Ulid::from_parts(i.window_start.max(0) as u64, random).to_string()
}

/// Reads the new lines of `path` (from its cursor), records the incidents and audits each
/// window once. A missing log is an empty scan.
pub async fn scan_mail_log(store: &Store, path: &Path) -> Result<ScanSummary, ScanError> {
    let source = format!("mail_incidents:{}", path.display());
    let cursor = store.usage_cursor(&source).await?;
    let p = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || read_deferrals(&p, cursor))
        .await
        .map_err(|e| ScanError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let (deferrals, lines, new_cursor) = match read {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ScanSummary::default()),
        Err(e) => {
            return Err(ScanError::Io {
                path: path.display().to_string(),
                source: e,
            })
        }
    };
    let found = incidents(&deferrals);
    let known = store.known_email_incidents(&found).await?;
    let mut records = Vec::new();
    for (i, known) in found.iter().zip(known) {
        if known {
            continue;
        }
        let reseller = store
            .account(&i.account)
            .await
            .ok()
            .and_then(|a| a.reseller);
        let first = deferrals
            .iter()
            .find(|d| d.account == i.account && d.kind == i.kind && d.at == i.first_at);
        let time = |ms: i64| store::ms_time(ms).to_rfc3339();
        let mut r = NewAudit::new(
            ACTION,
            Actor {
                kind: "system".into(),
                id: "exim".into(),
                ip: None,
                user_agent: None,
            },
            "denied",
        );
        r.id = incident_id(i);
        r.timestamp = store::ms_time(i.first_at);
        r.account = Some(i.account.clone());
        r.reseller = reseller;
        r.resource = json!({"type": "email_policy", "id": i.account, "name": i.account});
        r.changes = json!({"limit": i.kind, "window_start": time(i.window_start),
            "first_deferral_at": time(i.first_at), "deferrals_in_this_scan": i.deferrals});
        r.source =
            json!({"method": "JOB", "endpoint": format!("exim main log {}", path.display())});
        r.related_logs = first.map(|d| vec![d.message.clone()]).unwrap_or_default();
        r.impact = json!({"accounts_affected": 1, "resources_changed": 0});
        records.push(r);
    }
    if !records.is_empty() {
        store.append_audit(&records).await?;
    }
    // The counts and the cursor move together: a scan stopped in between counts nothing twice
    // (the audit records above carry ids derived from their window, so writing them again is
    // harmless).
    store
        .add_email_incidents_at(&found, Some((&source, new_cursor.0, new_cursor.1)))
        .await?;
    Ok(ScanSummary {
        lines,
        deferrals: deferrals.len() as u64,
        incidents: found.len(),
        audited: records.len(),
    })
}

/// The deferrals in the whole lines after `cursor` (from the start if the file was rotated),
/// the number of lines and the new cursor.
fn read_deferrals(
    path: &Path,
    cursor: Option<(u64, u64)>,
) -> std::io::Result<(Vec<Deferral>, u64, (u64, u64))> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let start = match cursor {
        Some((ino, pos)) if ino == meta.ino() && pos <= meta.len() => pos,
        _ => 0,
    };
    f.seek(SeekFrom::Start(start))?;
    let mut r = BufReader::with_capacity(64 << 10, f);
    let (mut pos, mut lines, mut out) = (start, 0u64, Vec::new());
    let mut buf = Vec::with_capacity(512);
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            break; // the end, or a line still being written
        }
        pos += n as u64;
        lines += 1;
        if let Some(d) = parse_deferral(&String::from_utf8_lossy(&buf)) {
            out.push(d);
        }
    }
    Ok((out, lines, (meta.ino(), pos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RCPT: &str = "2026-12-01 05:07:39 H=(x.example) [203.0.113.5] F=<info@alice.example> temporarily rejected RCPT <d@b.example>: 452 4.5.3 Hourly sending limit of account alice reached (3.0/1h, max 2)";

    #[test]
    fn deferral_lines_name_the_account_limit_and_time() {
        let d = parse_deferral(RCPT).unwrap();
        assert_eq!(d.account, "alice");
        assert_eq!(d.kind, "per_hour");
        assert_eq!(
            d.at,
            chrono::DateTime::parse_from_rfc3339("2026-12-01T05:07:39Z")
                .unwrap()
                .timestamp_millis()
        );
        assert!(d.message.starts_with("452 4.5.3 Hourly"), "{}", d.message);
        let data = "2026-12-01 05:07:39 1xYG5o-0001cv-0h H=(x.example) [203.0.113.5] F=<a@b> temporarily rejected after DATA: 452 4.5.3 Hourly volume limit of account carol reached (1520014.0/1h, max 1M)";
        assert_eq!(parse_deferral(data).unwrap().kind, "mb_per_hour");
        let php = "2026-12-01 06:09:45 1xYH3h-0000vR-0y F=<dora@npanel.invalid> rejected by non-SMTP ACL: 452 4.5.3 Hourly sending limit of account dora reached (3.0/1h, max 2)";
        let d = parse_deferral(php).unwrap();
        assert_eq!((d.account.as_str(), d.kind), ("dora", "per_hour"));
        let burst = RCPT.replace("Hourly sending", "15-minute sending");
        assert_eq!(parse_deferral(&burst).unwrap().kind, "burst_per_15min");
        for other in [
            "2026-12-01 05:07:39 1a-0001-AB <= alice@alice.example U=alice P=local S=300",
            "2026-12-01 05:07:39 H=[203.0.113.5] temporarily rejected RCPT <x@y>: greylisted",
            &RCPT.replace("account alice", "account ../x"),
            &RCPT.replace("2026-12-01 05:07:39", "garbage"),
        ] {
            assert_eq!(parse_deferral(other), None, "{other}");
        }
    }

    #[test]
    fn deferrals_group_into_windows_with_stable_ids() {
        let at = |s: &str| {
            let mut d = parse_deferral(RCPT).unwrap();
            d.at = chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis();
            d
        };
        let mut burst = at("2026-12-01T05:20:00Z");
        burst.kind = "burst_per_15min";
        let v = incidents(&[
            at("2026-12-01T05:07:39Z"),
            at("2026-12-01T05:59:59Z"),
            at("2026-12-01T06:00:00Z"),
            burst,
        ]);
        assert_eq!(v.len(), 3, "{v:?}");
        let five = v
            .iter()
            .find(|i| i.kind == "per_hour" && i.deferrals == 2)
            .unwrap();
        assert_eq!(
            five.window_start,
            chrono::DateTime::parse_from_rfc3339("2026-12-01T05:00:00Z")
                .unwrap()
                .timestamp_millis()
        );
        let b = v.iter().find(|i| i.kind == "burst_per_15min").unwrap();
        assert_eq!(b.window_start % (15 * 60_000), 0);
        assert_eq!(
            b.window_start,
            chrono::DateTime::parse_from_rfc3339("2026-12-01T05:15:00Z")
                .unwrap()
                .timestamp_millis()
        );
        assert_eq!(incident_id(five), incident_id(&five.clone()));
        assert_ne!(incident_id(five), incident_id(b));
    }
}
