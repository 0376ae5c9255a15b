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
    /// The job's account, if any (for tenant filtering).
    pub account: Option<String>,
    /// The account's reseller, if any.
    pub reseller: Option<String>,
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
            account: Some(get("account")).filter(|s| !s.is_empty()),
            reseller: Some(get("reseller")).filter(|s| !s.is_empty()),
        }
    }
}

/// One stream entry: id and fields.
type StreamEntry = (String, Vec<(String, String)>);
/// `XREAD` reply: streams → entries.
type XReadReply = Vec<(String, Vec<StreamEntry>)>;

/// Follows the event stream on a dedicated connection with blocking reads (`XREAD BLOCK`):
/// one per process is enough to fan out to every WebSocket (DESIGN §4).
pub struct EventReader {
    conn: Option<crate::conn::Conn>,
    queue: crate::Queue,
    key: String,
    last: String,
}

impl EventReader {
    /// A reader starting after `since` (`"$"`: only new events; `"0"`: everything kept).
    pub fn new(queue: &crate::Queue, since: &str) -> EventReader {
        EventReader {
            conn: None,
            queue: queue.clone(),
            key: format!("{}events", queue.prefix()),
            last: since.to_string(),
        }
    }

    /// The id of the last event returned (resume point).
    pub fn last_seq(&self) -> &str {
        &self.last
    }

    /// Wait up to `block` for events after the last one seen; returns at most `count`.
    /// On a Redis error the connection is dropped and re-made on the next call.
    pub async fn next_batch(
        &mut self,
        block: std::time::Duration,
        count: usize,
    ) -> crate::Result<Vec<Event>> {
        if self.conn.is_none() {
            self.conn = Some(self.queue.redis().dedicated().await?);
        }
        let conn = self.conn.as_mut().expect("connected");
        if self.last == "$" {
            // Pin "now" to a concrete id so nothing between two calls is missed.
            self.last = self.queue.latest_seq().await?;
        }
        let reply: redis::RedisResult<Option<XReadReply>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(&self.last)
            .query_async(conn)
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                self.conn = None;
                return Err(e.into());
            }
        };
        let mut out = Vec::new();
        for (_, entries) in reply.unwrap_or_default() {
            for (id, fields) in entries {
                let pairs: Vec<(String, String)> = fields;
                self.last = id.clone();
                out.push(Event::from_stream(id, &pairs));
            }
        }
        Ok(out)
    }
}
