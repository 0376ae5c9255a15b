//! The `health_check` handler (DESIGN §12): does the migrated account really work?
//!
//! # What it compares
//! A migration is a restore that finished (`store::Migration`: the account, the archive, the
//! restore's summary). The host reads the archive once and the account as it is now
//! (`inspect_migration`, `agent::inspect`), the handler reads the databases from the
//! database server, and every check compares the account with the archive it came from:
//!
//! | category (points) | checks |
//! |---|---|
//! | filesystem (25) | `files` (file and byte parity), `permissions` (nothing world-writable), `symlinks` (none broken), `ownership` (everything the account's) |
//! | email (25) | `mail_accounts` (the archive's in the account's `etc/<domain>/passwd`), `mailboxes` (each has its Maildir or mdbox storage), `messages` (per mailbox: Maildir files, and the messages inside mdbox `storage/m.*` files, whose folders are not told apart without Dovecot's index, so an mdbox mail account is compared as its total) |
//! | databases (20) | `databases` (each exists), `tables` (per database), `rows` (per database; a cut dump fails), `app_credentials` (each `wp-config.php`/`.env` logs in) |
//! | domains (15) | `zones_present`, `zones_parse`, `tls` |
//! | users (15) | `system_user`, `shell` (a login shell only with the package's `ssh`), `sudo` (in no admin group), `cron` |
//!
//! # Score
//! A check scores 1 (pass), a fraction (part of its objects match), or 0 (fail). A check
//! that cannot run here is `skipped` with its reason and left out: the restore of this build
//! lists what it did not restore (TLS, a zone that does not parse, …), system users may be off, a
//! database server may not be configured, the archive may have none of a kind. A category
//! earns its points × the mean of its checks that ran; the score is the earned share of the
//! points of the categories that ran, 0–100. Grade: A ≥ 90, B ≥ 80, C ≥ 70, D ≥ 60, else F.
//!
//! # Report, alerts
//! The report (`score`, `grade`, `categories`, `checks`, `issues` with severity, `next_steps`)
//! is the job's result and is stored (`health_reports`, kept 30 days). Below 75 a customer
//! alert is recorded (notification `health_alert` and an audit record), below 60 a ticket
//! (`health_ticket`) too.
//!
//! # When
//! `POST /api/restore` enqueues the check with the restore (`wait_secs: 30`): jobs of one
//! account run in order, so it starts when the restore has finished, then waits until 30 s
//! after it (cancellable). `POST /api/migration/{id}/health` runs one at once.

use crate::provision::{host_err, store_err, HostOps};
use crate::{JobContext, JobError};
use agent::inspect::MigrationFacts;
use agent::{AccountName, Reply, Request};
use queue::HealthCheck;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use store::Store;

/// The handler's dependencies.
pub struct HealthChecker {
    store: Store,
    host: Arc<dyn HostOps>,
    databases_url: Option<String>,
}

impl HealthChecker {
    pub fn new(
        store: Store,
        host: Arc<dyn HostOps>,
        databases_url: Option<String>,
    ) -> Arc<HealthChecker> {
        Arc::new(HealthChecker {
            store,
            host,
            databases_url,
        })
    }
}

/// The five categories and their points.
pub const CATEGORIES: [(&str, u32); 5] = [
    ("filesystem", 25),
    ("email", 25),
    ("databases", 20),
    ("domains", 15),
    ("users", 15),
];

/// Below this a customer alert is recorded.
pub const ALERT_BELOW: i64 = 75;
/// Below this a ticket is recorded.
pub const TICKET_BELOW: i64 = 60;

/// One check's outcome.
#[derive(Clone, Debug)]
pub struct Check {
    pub category: &'static str,
    pub id: &'static str,
    /// 0.0–1.0; `None` when skipped.
    pub score: Option<f64>,
    /// What was found (or why it was skipped).
    pub message: String,
    pub expected: Value,
    pub actual: Value,
    /// How to fix it, when it did not pass.
    pub next_step: Option<String>,
}

impl Check {
    fn skipped(category: &'static str, id: &'static str, why: impl Into<String>) -> Self {
        Check {
            category,
            id,
            score: None,
            message: why.into(),
            expected: Value::Null,
            actual: Value::Null,
            next_step: None,
        }
    }

    fn status(&self) -> &'static str {
        match self.score {
            None => "skipped",
            Some(s) if s >= 1.0 => "pass",
            Some(s) if s > 0.0 => "partial",
            Some(_) => "fail",
        }
    }

    /// How bad a check that did not pass is.
    fn severity(&self) -> &'static str {
        match (self.category, self.id) {
            ("filesystem", "files") | ("databases", _) | ("email", "mailboxes") => "critical",
            (_, "permissions") | (_, "sudo") | (_, "zones_parse") => "major",
            _ if self.score.unwrap_or(1.0) == 0.0 => "major",
            _ => "minor",
        }
    }
}

/// The share of `matched` of `total` (1 when there is nothing to match).
fn share(matched: usize, total: usize) -> f64 {
    if total == 0 {
        1.0
    } else {
        matched as f64 / total as f64
    }
}

/// The report of `checks`: score, grade, categories, issues, next steps.
pub fn report(migration_id: &str, account: &str, checks: &[Check]) -> (i64, Value) {
    let (mut earned, mut possible) = (0.0, 0.0);
    let mut categories = serde_json::Map::new();
    for (name, points) in CATEGORIES {
        let ran: Vec<f64> = checks
            .iter()
            .filter(|c| c.category == name)
            .filter_map(|c| c.score)
            .collect();
        let skipped: Vec<&str> = checks
            .iter()
            .filter(|c| c.category == name && c.score.is_none())
            .map(|c| c.id)
            .collect();
        let v = if ran.is_empty() {
            json!({"points": points, "score": null, "status": "skipped", "skipped_checks": skipped})
        } else {
            let mean = ran.iter().sum::<f64>() / ran.len() as f64;
            let got = points as f64 * mean;
            earned += got;
            possible += points as f64;
            json!({"points": points, "score": (got * 10.0).round() / 10.0,
                   "status": if mean >= 1.0 { "pass" } else { "issues" }, "skipped_checks": skipped})
        };
        categories.insert(name.to_string(), v);
    }
    let score = if possible > 0.0 {
        (100.0 * earned / possible).round() as i64
    } else {
        100
    };
    let grade = match score {
        90.. => "A",
        80.. => "B",
        70.. => "C",
        60.. => "D",
        _ => "F",
    };
    let issues: Vec<Value> = checks
        .iter()
        .filter(|c| c.score.is_some_and(|s| s < 1.0))
        .map(|c| {
            json!({"severity": c.severity(), "category": c.category, "check": c.id,
                   "message": c.message, "expected": c.expected, "actual": c.actual})
        })
        .collect();
    let next_steps: Vec<&str> = checks
        .iter()
        .filter(|c| c.score.is_some_and(|s| s < 1.0))
        .filter_map(|c| c.next_step.as_deref())
        .collect();
    let list: Vec<Value> = checks
        .iter()
        .map(|c| {
            json!({"category": c.category, "check": c.id, "status": c.status(),
                   "score": c.score, "message": c.message,
                   "expected": c.expected, "actual": c.actual})
        })
        .collect();
    (
        score,
        json!({
            "migration_id": migration_id,
            "account": account,
            "score": score,
            "grade": grade,
            "categories": categories,
            "checks": list,
            "issues": issues,
            "next_steps": next_steps,
            "checked_at": chrono::Utc::now().to_rfc3339(),
        }),
    )
}

/// Whether the restore's summary says it did not restore `what`.
fn not_restored(summary: &Value, what: &str) -> Option<String> {
    summary["skipped"].as_array()?.iter().find_map(|s| {
        (s["what"] == what).then(|| {
            format!(
                "the restore did not restore {what}: {}",
                s["reason"].as_str().unwrap_or("see its summary")
            )
        })
    })
}

/// The checks of the filesystem, email, domains and users from the host's facts.
pub fn host_checks(
    f: &MigrationFacts,
    summary: &Value,
    domains: &[String],
    package_ssh: bool,
    out: &mut Vec<Check>,
) {
    let a = &f.archive;
    let h = &f.home;
    // filesystem
    if !h.exists {
        out.push(Check {
            category: "filesystem",
            id: "files",
            score: Some(0.0),
            message: "the account has no home".into(),
            expected: json!({"files": a.home_files, "bytes": a.home_bytes}),
            actual: Value::Null,
            next_step: Some("Restore the archive again: the account's home is missing.".into()),
        });
    } else {
        let s = share(h.files.min(a.home_files) as usize, a.home_files as usize).min(share(
            h.bytes.min(a.home_bytes) as usize,
            a.home_bytes as usize,
        ));
        out.push(Check {
            category: "filesystem",
            id: "files",
            score: Some(if s >= 1.0 { 1.0 } else { s.min(0.99) }),
            message: format!(
                "{} of {} files, {} of {} bytes of the archive's home",
                h.files, a.home_files, h.bytes, a.home_bytes
            ),
            expected: json!({"files": a.home_files, "bytes": a.home_bytes}),
            actual: json!({"files": h.files, "bytes": h.bytes}),
            next_step: Some(
                "Some files of the archive are not in the home: see the restore's skipped entries, then restore again."
                    .into(),
            ),
        });
    }
    out.push(Check {
        category: "filesystem",
        id: "permissions",
        score: Some(if h.world_writable == 0 { 1.0 } else { 0.0 }),
        message: if h.world_writable == 0 {
            "nothing in the home is world-writable".into()
        } else {
            format!(
                "{} entries anyone may write (e.g. {})",
                h.world_writable,
                h.world_writable_examples.join(", ")
            )
        },
        expected: json!(0),
        actual: json!({"world_writable": h.world_writable, "examples": h.world_writable_examples}),
        next_step: Some(
            "Remove the write bit for others: `chmod -R o-w` on the listed paths (0755 directories, 0644 files)."
                .into(),
        ),
    });
    out.push(Check {
        category: "filesystem",
        id: "symlinks",
        score: Some(if h.broken_symlinks == 0 { 1.0 } else { 0.0 }),
        message: if h.broken_symlinks == 0 {
            "every symlink in the home resolves inside it".into()
        } else {
            format!(
                "{} broken symlinks (e.g. {})",
                h.broken_symlinks,
                h.broken_symlink_examples.join(", ")
            )
        },
        expected: json!(0),
        actual: json!({"broken": h.broken_symlinks, "examples": h.broken_symlink_examples}),
        next_step: Some("Point the listed symlinks at files that exist, or remove them.".into()),
    });
    match h.foreign_owned {
        None => out.push(Check::skipped(
            "filesystem",
            "ownership",
            "system users are off on this host: the files belong to the panel's own user",
        )),
        Some(n) => out.push(Check {
            category: "filesystem",
            id: "ownership",
            score: Some(if n == 0 { 1.0 } else { 0.0 }),
            message: format!("{n} entries not owned by the account"),
            expected: json!(0),
            actual: json!(n),
            next_step: Some("Give the home back to the account: `chown -R` to its user.".into()),
        }),
    }

    // email
    let archive_accounts: Vec<String> = a
        .mail_accounts
        .iter()
        .flat_map(|(d, boxes)| boxes.iter().map(move |b| format!("{b}@{d}")))
        .collect();
    if archive_accounts.is_empty() {
        for id in ["mail_accounts", "mailboxes", "messages"] {
            out.push(Check::skipped(
                "email",
                id,
                "the archive has no mail accounts",
            ));
        }
    } else {
        let present: Vec<&String> = archive_accounts
            .iter()
            .filter(|acct| {
                let (b, d) = acct.split_once('@').unwrap_or_default();
                h.mail_accounts.get(d).is_some_and(|s| s.contains(b))
            })
            .collect();
        let missing: Vec<&String> = archive_accounts
            .iter()
            .filter(|x| !present.contains(x))
            .collect();
        out.push(Check {
            category: "email",
            id: "mail_accounts",
            score: Some(share(present.len(), archive_accounts.len())),
            message: if missing.is_empty() {
                format!(
                    "all {} mail accounts of the archive exist",
                    archive_accounts.len()
                )
            } else {
                format!("missing mail accounts: {}", join(&missing))
            },
            expected: json!(archive_accounts),
            actual: json!(present),
            next_step: Some("Create the missing mail accounts (and set their passwords).".into()),
        });
        let no_maildir: Vec<&String> = archive_accounts
            .iter()
            .filter(|x| !h.maildirs.contains(*x))
            .collect();
        out.push(Check {
            category: "email",
            id: "mailboxes",
            score: Some(share(
                archive_accounts.len() - no_maildir.len(),
                archive_accounts.len(),
            )),
            message: if no_maildir.is_empty() {
                "every mail account has its Maildir".into()
            } else {
                format!(
                    "mail accounts without a Maildir (their mail was not in the archive): {}",
                    join(&no_maildir)
                )
            },
            expected: json!(archive_accounts),
            actual: json!(h.maildirs),
            next_step: Some(
                "Copy the listed mailboxes from the old server; mail sent to them now is not stored."
                    .into(),
            ),
        });
        let differing: Vec<String> = a
            .mailboxes
            .iter()
            .filter(|(b, n)| h.mailboxes.get(*b).copied().unwrap_or(0) < **n)
            .map(|(b, n)| format!("{b} ({} of {n})", h.mailboxes.get(b).copied().unwrap_or(0)))
            .collect();
        // mdbox mail accounts are counted as a whole on both sides (agent::inspect::count_dbox).
        let mdbox = if a.mdbox.is_empty() {
            String::new()
        } else {
            format!(
                " (mdbox, counted per mail account across its folders: {})",
                a.mdbox.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        let damaged = if h.mdbox_damaged.is_empty() {
            String::new()
        } else {
            format!(
                "; mdbox storage files that do not read as dbox: {}",
                h.mdbox_damaged.join(", ")
            )
        };
        out.push(Check {
            category: "email",
            id: "messages",
            score: Some(share(
                a.mailboxes.len() - differing.len(),
                a.mailboxes.len(),
            )),
            message: if differing.is_empty() {
                format!(
                    "every mailbox has the archive's {} messages{mdbox}{damaged}",
                    a.mailboxes.values().sum::<u64>()
                )
            } else {
                format!(
                    "mailboxes with fewer messages: {}{mdbox}{damaged}",
                    differing.join(", ")
                )
            },
            expected: json!(a.mailboxes),
            actual: json!(h.mailboxes),
            next_step: Some("Restore the listed mailboxes' messages again.".into()),
        });
    }

    // domains: the archive's zones of the account's own domains (others are never restored).
    let zones: Vec<&agent::inspect::ZoneFacts> = f
        .zones
        .iter()
        .filter(|z| domains.iter().any(|d| d.eq_ignore_ascii_case(&z.domain)))
        .collect();
    let refused = |domain: &str| -> Option<String> {
        summary["skipped"].as_array()?.iter().find_map(|s| {
            (s["what"] == "dns zone" && s["domain"] == domain)
                .then(|| s["reason"].as_str().unwrap_or("not restored").to_string())
        })
    };
    let zones_skip = if zones.is_empty() {
        Some("the archive has no DNS zones of the account's domains".to_string())
    } else {
        not_restored(summary, "dns zones")
    };
    match zones_skip {
        Some(why) => {
            out.push(Check::skipped("domains", "zones_present", why.clone()));
            out.push(Check::skipped("domains", "zones_parse", why));
        }
        None => {
            let present: Vec<&str> = zones
                .iter()
                .filter(|z| z.present)
                .map(|z| z.domain.as_str())
                .collect();
            out.push(Check {
                category: "domains",
                id: "zones_present",
                score: Some(share(present.len(), zones.len())),
                message: format!(
                    "{} of {} zones of the archive are served",
                    present.len(),
                    zones.len()
                ),
                expected: json!(zones.iter().map(|z| &z.domain).collect::<Vec<_>>()),
                actual: json!(present),
                next_step: Some("Restore the missing zones.".into()),
            });
            let broken: Vec<String> = zones
                .iter()
                .filter_map(|z| match refused(&z.domain) {
                    Some(why) => Some(format!(
                        "{}: the archive's zone was not restored: {why}",
                        z.domain
                    )),
                    None if z.present && !z.problems.is_empty() => {
                        Some(format!("{}: {}", z.domain, z.problems.join("; ")))
                    }
                    None => None,
                })
                .collect();
            out.push(Check {
                category: "domains",
                id: "zones_parse",
                score: Some(share(zones.len() - broken.len(), zones.len())),
                message: if broken.is_empty() {
                    "every zone of the archive was restored and parses".into()
                } else {
                    broken.join(" | ")
                },
                expected: json!([]),
                actual: json!(broken),
                next_step: Some(
                    "Fix the listed zones (each needs one SOA and an NS) and load them again."
                        .into(),
                ),
            });
        }
    }
    // TLS: the archive's bundles of the account's domains, installed and able to serve.
    let certs: Vec<&agent::inspect::TlsFacts> = f
        .tls
        .iter()
        .filter(|t| domains.iter().any(|d| d.eq_ignore_ascii_case(&t.domain)))
        .collect();
    if certs.is_empty() {
        out.push(Check::skipped(
            "domains",
            "tls",
            "the archive has no TLS certificates (apache_tls/, sslcerts/) of the account's domains",
        ));
    } else {
        let bad: Vec<String> = certs
            .iter()
            .filter_map(|t| {
                let refused = summary["skipped"].as_array().and_then(|v| {
                    v.iter()
                        .find(|s| {
                            s["what"] == "tls certificate" && s["domain"] == t.domain.as_str()
                        })
                        .map(|s| s["reason"].as_str().unwrap_or("not restored").to_string())
                });
                match (refused, t.present, &t.problem) {
                    (Some(why), _, _) => Some(format!("{}: not restored: {why}", t.domain)),
                    (None, false, _) => Some(format!("{}: not installed", t.domain)),
                    (None, true, Some(p)) => Some(format!("{}: {p}", t.domain)),
                    (None, true, None) => None,
                }
            })
            .collect();
        out.push(Check {
            category: "domains",
            id: "tls",
            score: Some(share(certs.len() - bad.len(), certs.len())),
            message: if bad.is_empty() {
                format!(
                    "{} certificate(s) installed, matching their keys, valid and for their domains",
                    certs.len()
                )
            } else {
                bad.join(" | ")
            },
            expected: json!(certs.iter().map(|t| &t.domain).collect::<Vec<_>>()),
            actual: json!(bad),
            next_step: Some(
                "Issue a new certificate for the listed domains (the archive's does not match its key, has expired or is for another name)."
                    .into(),
            ),
        });
    }

    // users
    match &f.user {
        None => {
            for id in ["system_user", "shell", "sudo"] {
                out.push(Check::skipped(
                    "users",
                    id,
                    "system users are off on this host (host.system_users)",
                ));
            }
        }
        Some(u) => {
            out.push(Check {
                category: "users",
                id: "system_user",
                score: Some(if u.exists { 1.0 } else { 0.0 }),
                message: if u.exists {
                    "the account's system user exists".into()
                } else {
                    "the account has no system user".into()
                },
                expected: json!(true),
                actual: json!(u.exists),
                next_step: Some("Provision the account again (its user is missing).".into()),
            });
            let login = u
                .shell
                .as_deref()
                .is_some_and(|s| !s.ends_with("nologin") && !s.ends_with("/false"));
            out.push(Check {
                category: "users",
                id: "shell",
                score: Some(if login && !package_ssh { 0.0 } else { 1.0 }),
                message: format!(
                    "shell {} (the package {} ssh)",
                    u.shell.as_deref().unwrap_or("none"),
                    if package_ssh {
                        "allows"
                    } else {
                        "does not allow"
                    }
                ),
                expected: json!(if package_ssh { "any" } else { "nologin" }),
                actual: json!(u.shell),
                next_step: Some(
                    "Set the user's shell to /usr/sbin/nologin: its package has no ssh.".into(),
                ),
            });
            out.push(Check {
                category: "users",
                id: "sudo",
                score: Some(if u.admin_groups.is_empty() { 1.0 } else { 0.0 }),
                message: if u.admin_groups.is_empty() {
                    "in no admin group".into()
                } else {
                    format!("in admin groups: {}", u.admin_groups.join(", "))
                },
                expected: json!([]),
                actual: json!(u.admin_groups),
                next_step: Some("Remove the account's user from the admin groups.".into()),
            });
        }
    }
    let cron_refused = summary["skipped"].as_array().and_then(|v| {
        v.iter()
            .find(|s| s["what"] == "cron")
            .map(|s| s["reason"].as_str().unwrap_or("not restored").to_string())
    });
    out.push(match (a.cron_lines, cron_refused) {
        (0, _) => Check::skipped("users", "cron", "the archive has no cron jobs"),
        (_, Some(why)) => Check::skipped("users", "cron", format!("the crontab was not restored: {why}")),
        (n, None) => {
            let c = f.crontab.clone().unwrap_or_default();
            let ok = c.jobs >= n && c.cpanel_paths == 0;
            Check {
                category: "users",
                id: "cron",
                score: Some(if ok { 1.0 } else if c.jobs >= n { 0.5 } else { share(c.jobs as usize, n as usize) * 0.5 }),
                message: format!(
                    "{} of the archive's {n} cron jobs installed{}",
                    c.jobs,
                    if c.cpanel_paths > 0 { format!("; {} still name cPanel's paths", c.cpanel_paths) } else { String::new() }
                ),
                expected: json!({"jobs": n, "cpanel_paths": 0}),
                actual: json!({"jobs": c.jobs, "cpanel_paths": c.cpanel_paths}),
                next_step: Some("Install the missing cron jobs; replace cPanel's ea-php paths with this server's PHP.".into()),
            }
        }
    });
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// The database checks: each of the archive's databases on the server, its tables and rows.
async fn database_checks(
    url: Option<&str>,
    f: &MigrationFacts,
    summary: &Value,
    out: &mut Vec<Check>,
) {
    let dumps = &f.archive.databases;
    let skip = if dumps.is_empty() {
        Some("the archive has no databases".to_string())
    } else if let Some(why) = not_restored(summary, "databases") {
        Some(why)
    } else if url.is_none() {
        Some("no database server is configured (databases.url)".to_string())
    } else {
        None
    };
    if let Some(why) = skip {
        for id in ["databases", "tables", "rows", "app_credentials"] {
            out.push(Check::skipped("databases", id, why.clone()));
        }
        return;
    }
    // The restore's own record of where each dump went (`<archive user>_x` or `x` became
    // `<account>_x`); else the archive's name.
    let renamed: BTreeMap<String, String> = summary["database_imports"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|i| {
                    let from = i["from"].as_str()?.strip_suffix(".sql")?;
                    Some((from.to_string(), i["database"].as_str()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    let measured =
        match measure_databases(url.unwrap_or_default(), &f.account, dumps, &renamed).await {
            Ok(m) => m,
            Err(e) => {
                for id in ["databases", "tables", "rows", "app_credentials"] {
                    out.push(Check::skipped(
                        "databases",
                        id,
                        format!("the database server did not answer: {e}"),
                    ));
                }
                return;
            }
        };
    let present: Vec<&String> = dumps.keys().filter(|d| measured.contains_key(*d)).collect();
    out.push(Check {
        category: "databases",
        id: "databases",
        score: Some(share(present.len(), dumps.len())),
        message: format!(
            "{} of {} databases of the archive exist",
            present.len(),
            dumps.len()
        ),
        expected: json!(dumps.keys().collect::<Vec<_>>()),
        actual: json!(present),
        next_step: Some("Restore the missing databases.".into()),
    });
    let tables_ok = dumps
        .iter()
        .filter(|(d, x)| measured.get(*d).is_some_and(|m| m.0 >= x.tables))
        .count();
    out.push(Check {
        category: "databases",
        id: "tables",
        score: Some(share(tables_ok, dumps.len())),
        message: dumps
            .iter()
            .map(|(d, x)| {
                format!(
                    "{d}: {} of {} tables",
                    measured.get(d).map_or(0, |m| m.0),
                    x.tables
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        expected: json!(dumps
            .iter()
            .map(|(d, x)| (d.clone(), x.tables))
            .collect::<BTreeMap<_, _>>()),
        actual: json!(measured
            .iter()
            .map(|(d, m)| (d.clone(), m.0))
            .collect::<BTreeMap<_, _>>()),
        next_step: Some("Re-import the listed databases' dumps; a table the server refused is named in the restore's log.".into()),
    });
    // Rows of the tables both sides have (a missing table is the tables check's).
    let short: Vec<String> = dumps
        .iter()
        .flat_map(|(d, x)| {
            let m = measured.get(d);
            let mut v: Vec<String> = x
                .table_rows
                .iter()
                .filter_map(|(t, want)| {
                    let have = *m?.2.get(t)?;
                    (have < *want).then(|| format!("{d}.{t}: {have} of {want} rows"))
                })
                .collect();
            if !x.complete {
                v.push(format!("{d}: the archive's dump is cut off"));
            }
            v
        })
        .collect();
    let rows_ok = dumps
        .iter()
        .filter(|(d, x)| {
            x.complete
                && x.table_rows.iter().all(|(t, want)| {
                    measured
                        .get(*d)
                        .and_then(|m| m.2.get(t))
                        .is_none_or(|have| have >= want)
                })
        })
        .count();
    out.push(Check {
        category: "databases",
        id: "rows",
        score: Some(share(rows_ok, dumps.len())),
        message: if short.is_empty() {
            format!(
                "every table has the archive's rows ({} in all)",
                dumps.values().map(|x| x.rows).sum::<u64>()
            )
        } else {
            short.join(", ")
        },
        expected: json!(dumps
            .iter()
            .map(|(d, x)| (d.clone(), x.table_rows.clone()))
            .collect::<BTreeMap<_, _>>()),
        actual: json!(measured
            .iter()
            .map(|(d, m)| (d.clone(), m.2.clone()))
            .collect::<BTreeMap<_, _>>()),
        next_step: Some("Take a new dump on the old server (the archive's is incomplete or did not load whole) and import it.".into()),
    });
    credential_check(url.unwrap_or_default(), f, out).await;
}

/// The applications' credentials (`wp-config.php`, `.env`) of the account's own databases:
/// can each log in?
async fn credential_check(url: &str, f: &MigrationFacts, out: &mut Vec<Check>) {
    use sqlx::{ConnectOptions, Connection};
    use std::str::FromStr;
    // Only the account's own users on its own databases are tried (anything else would let a
    // home probe other logins of the server), and the answer is pass or fail, never the
    // server's words.
    let prefix = format!("{}_", f.account);
    let mine: Vec<&agent::inspect::AppCredentials> = f
        .home
        .app_credentials
        .iter()
        .filter(|c| c.database.starts_with(&prefix) && c.user.starts_with(&prefix))
        .collect();
    if mine.is_empty() {
        out.push(Check::skipped(
            "databases",
            "app_credentials",
            "no application in the home names one of the account's databases with one of its users (wp-config.php, .env)",
        ));
        return;
    }
    let Ok(base) = sqlx::mysql::MySqlConnectOptions::from_str(url) else {
        out.push(Check::skipped(
            "databases",
            "app_credentials",
            "databases.url does not parse",
        ));
        return;
    };
    let mut failed = Vec::new();
    for c in &mine {
        let opts = base
            .clone()
            .username(&c.user)
            .password(&c.password)
            .database(&c.database);
        match tokio::time::timeout(Duration::from_secs(5), opts.connect()).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
            }
            Ok(Err(_)) => failed.push(format!(
                "{} ({} on {}): the server refused the login",
                c.file, c.user, c.database
            )),
            Err(_) => failed.push(format!("{}: the server did not answer in 5 s", c.file)),
        }
    }
    out.push(Check {
        category: "databases",
        id: "app_credentials",
        score: Some(share(mine.len() - failed.len(), mine.len())),
        message: if failed.is_empty() {
            format!(
                "{} application(s) log in with their configured credentials",
                mine.len()
            )
        } else {
            format!("cannot log in: {}", failed.join(" | "))
        },
        expected: json!(mine.iter().map(|c| &c.file).collect::<Vec<_>>()),
        actual: json!(failed),
        next_step: Some(
            "Set the database user's password to the one in the listed file (or the file's to the user's)."
                .into(),
        ),
    });
}

/// Tables and rows of each of `dumps`' databases that exists on the server.
async fn measure_databases(
    url: &str,
    account: &str,
    dumps: &BTreeMap<String, agent::inspect::DumpFacts>,
    renamed: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, (u64, u64, BTreeMap<String, u64>)>, String> {
    use sqlx::Row;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for name in dumps.keys() {
        let db = renamed.get(name).unwrap_or(name);
        // Only the account's own databases are read (`<account>_…`).
        if !db.starts_with(&format!("{account}_")) {
            continue;
        }
        let tables: Vec<String> = sqlx::query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_type = 'BASE TABLE'",
        )
        .bind(db)
        .fetch_all(&pool)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|r| r.try_get::<String, _>(0).ok())
        .collect();
        let exists: Option<String> = sqlx::query_scalar(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name = ?",
        )
        .bind(db)
        .fetch_optional(&pool)
        .await
        .map_err(|e| e.to_string())?;
        if exists.is_none() {
            continue;
        }
        let mut rows = 0u64;
        let mut per_table = BTreeMap::new();
        for t in &tables {
            let q = format!(
                "SELECT COUNT(*) FROM `{}`.`{}`",
                db.replace('`', "``"),
                t.replace('`', "``")
            );
            let n: i64 = sqlx::query_scalar(&q)
                .fetch_one(&pool)
                .await
                .map_err(|e| e.to_string())?;
            rows += n.max(0) as u64;
            per_table.insert(t.clone(), n.max(0) as u64);
        }
        out.insert(name.clone(), (tables.len() as u64, rows, per_table));
    }
    pool.close().await;
    Ok(out)
}

/// Run one health check.
pub async fn run(ctx: JobContext, h: Arc<HealthChecker>) -> Result<Value, JobError> {
    let job: HealthCheck = ctx.payload()?;
    ctx.progress("waiting", 0, 1);
    let migration = h
        .store
        .migration(&job.migration_id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| {
            JobError::Permanent(format!(
                "migration {} has no finished restore (it failed, was cancelled, or never ran): nothing to check",
                job.migration_id
            ))
        })?;
    // The job is the migration's account's: one queued under another account checks nothing.
    if let Some(a) = ctx.account.as_deref() {
        if a != migration.account {
            return Err(JobError::Permanent(format!(
                "migration {} is not account {a}'s",
                job.migration_id
            )));
        }
    }
    if job.wait_secs > 0 {
        let due = migration.restored_at + chrono::Duration::seconds(job.wait_secs as i64);
        let left = (due - chrono::Utc::now()).to_std().unwrap_or_default();
        if !left.is_zero() {
            ctx.log(format!(
                "Checking {} {:.0} s after its restore",
                migration.account, job.wait_secs
            ));
            ctx.sleep(left).await?;
        }
    }
    ctx.progress("inspecting", 0, 3);
    let account = AccountName::parse(&migration.account)
        .map_err(|e| JobError::Permanent(format!("account {}: {e}", migration.account)))?;
    let req = Request::InspectMigration {
        account,
        archive: migration.archive.clone().into(),
    };
    let facts = match h.host.call(req).await {
        Ok(Reply::MigrationInspected(f)) => *f,
        Ok(other) => {
            return Err(JobError::Permanent(format!(
                "inspect_migration: unexpected answer {other:?}"
            )))
        }
        Err(e) => return Err(host_err("inspect_migration", e)),
    };
    ctx.progress("inspecting", 1, 3);
    let package_ssh = match h.store.account(&migration.account).await {
        Ok(a) => match a.package.as_deref() {
            Some(p) => h.store.package(p).await.is_ok_and(|p| p.has_feature("ssh")),
            None => false,
        },
        Err(_) => false,
    };
    let domains = h
        .store
        .all_domains(&migration.account)
        .await
        .map_err(store_err)?;
    let mut checks = Vec::new();
    host_checks(
        &facts,
        &migration.summary,
        &domains,
        package_ssh,
        &mut checks,
    );
    ctx.progress("inspecting", 2, 3);
    database_checks(
        h.databases_url.as_deref(),
        &facts,
        &migration.summary,
        &mut checks,
    )
    .await;
    let (score, report) = report(&job.migration_id, &migration.account, &checks);
    for c in checks.iter().filter(|c| c.score.is_some_and(|s| s < 1.0)) {
        ctx.log(format!("{} / {}: {}", c.category, c.id, c.message));
    }
    h.store
        .add_health_report(
            &ctx.id,
            &job.migration_id,
            &migration.account,
            score,
            &report,
        )
        .await
        .map_err(store_err)?;
    alert(&ctx, &h.store, &migration, score, &report).await?;
    ctx.log(format!(
        "Health of {} after migration {}: {score}/100 ({})",
        migration.account,
        job.migration_id,
        report["grade"].as_str().unwrap_or("?")
    ));
    ctx.progress("inspecting", 3, 3);
    Ok(report)
}

/// The customer alert below [`ALERT_BELOW`], and the ticket below [`TICKET_BELOW`]: a
/// notification and an audit record each.
async fn alert(
    ctx: &JobContext,
    store: &Store,
    m: &store::Migration,
    score: i64,
    report: &Value,
) -> Result<(), JobError> {
    let mut kinds = Vec::new();
    if score < ALERT_BELOW {
        kinds.push(("health_alert", "health_alert"));
    }
    if score < TICKET_BELOW {
        kinds.push(("health_ticket", "health_ticket_opened"));
    }
    for (kind, action) in kinds {
        let message = format!(
            "The migration of {} scored {score}/100 ({} issues): {}",
            m.account,
            report["issues"].as_array().map_or(0, Vec::len),
            if kind == "health_ticket" {
                "a ticket is opened for the support team"
            } else {
                "see the health report for what to fix"
            }
        );
        store
            .add_notification(&m.account, kind, Some("migration"), Some(score), &message)
            .await
            .map_err(store_err)?;
        let mut r = store::NewAudit::new(
            action,
            store::Actor {
                kind: "system".into(),
                id: "health_check".into(),
                ..store::Actor::default()
            },
            "success",
        );
        r.account = Some(m.account.clone());
        r.resource = json!({"type": "migration", "id": m.id, "name": m.archive});
        r.changes = json!({"after": {"score": score, "grade": report["grade"]}});
        r.source = json!({"method": "JOB", "endpoint": "health_check"});
        r.job_id = Some(ctx.id.clone());
        r.related_logs = vec![message];
        store.append_audit(&[r]).await.map_err(store_err)?;
    }
    Ok(())
}
