//! What a job looks like to readers: the API, the CLI, WebSocket snapshots.

use crate::JobKind;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// Job states (DESIGN §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting to be claimed (or waiting behind an earlier job of its account).
    Queued,
    /// Claimed by a worker.
    Running,
    /// Failed an attempt, waiting for its backoff to elapse.
    Retrying,
    /// Done.
    Succeeded,
    /// Out of attempts, or failed permanently.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl JobStatus {
    /// The stored string.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Retrying => "retrying",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Parse the stored string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "retrying" => JobStatus::Retrying,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job has ended.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as stored, in the DESIGN §3 shape (field names are a contract).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Job {
    /// Job id (ULID: time ordered).
    pub id: String,
    /// Kind.
    pub kind: JobKind,
    /// Status.
    pub status: JobStatus,
    /// Account the job concerns.
    pub account: Option<String>,
    /// That account's reseller.
    pub reseller: Option<String>,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// When it was enqueued.
    pub created_at: Option<DateTime<Utc>>,
    /// When its latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// 0–100, from stage weights.
    pub progress_percent: f64,
    /// Stage the handler last reported.
    pub current_stage: Option<String>,
    /// Units of the current stage in total (bytes for byte-counting stages).
    pub bytes_total: Option<u64>,
    /// Units of the current stage done.
    pub bytes_processed: Option<u64>,
    /// Smoothed speed of the current stage, in millions of units per second (MB/s for bytes).
    pub speed_mbps: Option<f64>,
    /// Smoothed estimate of seconds left.
    pub eta_seconds: Option<f64>,
    /// Last error.
    pub error: Option<String>,
    /// Result of a succeeded job.
    pub result: Option<serde_json::Value>,
    /// Last log lines (at most 100).
    pub log_tail: Vec<String>,
    /// Payload (secrets such as `password` are redacted when serialised; handlers read the
    /// value itself).
    #[serde(serialize_with = "redact_secrets")]
    pub payload: serde_json::Value,
    /// A cancel was requested while it ran.
    pub cancel_requested: bool,
    /// When a retrying job runs again.
    pub run_at: Option<DateTime<Utc>>,
}

/// Payload keys whose values never leave the process (API, WebSocket, history, logs).
pub const SECRET_KEYS: &[&str] = &["password", "secret", "token", "api_key"];

/// Serialise a payload with the values of [`SECRET_KEYS`] replaced by `"**REDACTED**"`.
pub fn redact_secrets<S: serde::Serializer>(
    v: &serde_json::Value,
    s: S,
) -> Result<S::Ok, S::Error> {
    fn walk(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, x)| {
                    if SECRET_KEYS.contains(&k.as_str()) && !x.is_null() {
                        (k.clone(), serde_json::Value::from("**REDACTED**"))
                    } else {
                        (k.clone(), walk(x))
                    }
                })
                .collect::<serde_json::Map<_, _>>()
                .into(),
            serde_json::Value::Array(a) => a.iter().map(walk).collect(),
            other => other.clone(),
        }
    }
    serde::Serialize::serialize(&walk(v), s)
}

fn ms_time(v: Option<&String>) -> Option<DateTime<Utc>> {
    let ms: i64 = v?.parse().ok()?;
    Utc.timestamp_millis_opt(ms).single()
}

fn non_empty(v: Option<&String>) -> Option<String> {
    v.filter(|s| !s.is_empty()).cloned()
}

/// The ETA as of now: the estimate counted down by the time since it was written (progress
/// is written about once a second; a reader in between should not see a frozen value).
fn eta_now(eta: Option<f64>, eta_at: Option<f64>) -> Option<f64> {
    let eta = eta?;
    let age = eta_at.map_or(0.0, |at| ((crate::now_ms() as f64 - at) / 1000.0).max(0.0));
    Some(((eta - age).max(0.0) * 10.0).round() / 10.0)
}

impl Job {
    /// Build from a job hash and its log list. `None` if the hash is empty or malformed.
    pub fn from_hash(h: &HashMap<String, String>, log_tail: Vec<String>) -> Option<Job> {
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<f64>().ok());
        Some(Job {
            id: h.get("id")?.clone(),
            kind: h.get("kind")?.parse().ok()?,
            status: JobStatus::parse(h.get("status")?)?,
            account: non_empty(h.get("account")),
            reseller: non_empty(h.get("reseller")),
            attempts: num("attempts").unwrap_or(0.0) as u32,
            max_attempts: num("max_attempts").unwrap_or(1.0) as u32,
            created_at: ms_time(h.get("created_at")),
            started_at: ms_time(h.get("started_at")),
            finished_at: ms_time(h.get("finished_at")),
            progress_percent: num("percent").unwrap_or(0.0),
            current_stage: non_empty(h.get("stage")),
            bytes_total: num("total").map(|v| v as u64),
            bytes_processed: num("done").map(|v| v as u64),
            speed_mbps: num("speed").map(|v| v / 1e6),
            eta_seconds: eta_now(num("eta"), num("eta_at")),
            error: non_empty(h.get("error")),
            result: h.get("result").and_then(|r| serde_json::from_str(r).ok()),
            log_tail,
            payload: h
                .get("payload")
                .and_then(|p| serde_json::from_str(p).ok())
                .unwrap_or(serde_json::Value::Null),
            cancel_requested: h.get("cancel").map(|c| c == "1").unwrap_or(false),
            run_at: ms_time(h.get("run_at")),
        })
    }
}

/// The queue at a glance (`GET /api/admin/queue`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QueueStats {
    /// Jobs waiting (queued or retrying).
    pub pending: u32,
    /// The bound.
    pub max_pending: u32,
    /// Claiming is stopped.
    pub paused: bool,
    /// Per kind.
    pub kinds: std::collections::BTreeMap<String, KindStats>,
}

/// One kind in [`QueueStats`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KindStats {
    /// Concurrency limit in force.
    pub limit: u32,
    /// Running now, across all workers.
    pub running: u32,
    /// Waiting.
    pub pending: u32,
}
