//! Job events as stored in the capped Redis stream `np:{name}:events`.
//!
//! Every state change appends one entry `{job, type, data}`; its stream id is the `seq` that
//! WebSocket clients resume from. Types: `status` (queued, running, retrying, cancelling),
//! `progress` (coalesced to at most one per job per second), `stage`, `log`, `complete`.

use serde::{Deserialize, Serialize};

/// One event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Stream id, e.g. `1732240000000-0`: strictly increasing, usable as `?since=`.
    pub seq: String,
    /// Job id.
    pub job_id: String,
    /// `status`, `progress`, `stage`, `log` or `complete`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Type-specific fields.
    pub data: serde_json::Value,
}

impl Event {
    pub(crate) fn from_stream(id: String, fields: &[(String, String)]) -> Event {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        Event {
            seq: id,
            job_id: get("job"),
            kind: get("type"),
            data: serde_json::from_str(&get("data")).unwrap_or(serde_json::Value::Null),
        }
    }
}
