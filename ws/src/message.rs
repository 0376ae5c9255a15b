//! The wire format of WebSocket messages (DESIGN §3 "WS message").

use queue::{Event, Job, JobStatus};
use serde_json::{json, Map, Value};

/// A stream id `ms-n` as a comparable pair.
pub type Seq = (u64, u64);

/// Parse a stream id (`1732240000000-0`, or `1732240000000` meaning `-0`).
pub fn parse_seq(s: &str) -> Option<Seq> {
    let (a, b) = s.split_once('-').unwrap_or((s, "0"));
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// An event as a message: `{type, seq, job_id}` plus the event's data fields.
pub fn event_message(e: &Event) -> Value {
    let mut m = Map::new();
    if let Value::Object(d) = &e.data {
        for (k, v) in d {
            m.insert(k.clone(), v.clone());
        }
    }
    m.insert("type".into(), Value::String(e.kind.clone()));
    m.insert("seq".into(), Value::String(e.seq.clone()));
    m.insert("job_id".into(), Value::String(e.job_id.clone()));
    Value::Object(m)
}

/// A one-job snapshot.
pub fn snapshot_message(seq: &str, job: &Job) -> Value {
    json!({"type": "snapshot", "seq": seq, "job_id": job.id, "job": job})
}

/// An all-jobs snapshot.
pub fn snapshot_all_message(seq: &str, jobs: &[Job]) -> Value {
    json!({"type": "snapshot", "seq": seq, "jobs": jobs})
}

/// The `complete` message of a job that had already finished when the socket connected.
pub(crate) fn complete_from_job(seq: &str, job: &Job) -> Value {
    let mut m = json!({"type": "complete", "seq": seq, "job_id": job.id,
        "success": job.status == JobStatus::Succeeded, "status": job.status});
    if job.status == JobStatus::Succeeded {
        // The same shape as a live `complete` event: the handler's result as JSON.
        m["summary"] = job.result.clone().unwrap_or(Value::Null);
    } else {
        m["error"] = Value::String(job.error.clone().unwrap_or_else(|| job.status.to_string()));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_order_numerically() {
        assert!(parse_seq("10-0").unwrap() > parse_seq("9-5").unwrap());
        assert!(parse_seq("10-2").unwrap() > parse_seq("10-1").unwrap());
        assert_eq!(parse_seq("12"), Some((12, 0)));
        assert_eq!(parse_seq("x-1"), None);
        assert_eq!(parse_seq(""), None);
    }

    #[test]
    fn event_data_is_flattened_and_envelope_wins() {
        let e = Event {
            seq: "5-1".into(),
            job_id: "J".into(),
            kind: "progress".into(),
            data: json!({"progress_percent": 12.5, "type": "spoof"}),
            account: None,
            reseller: None,
        };
        let m = event_message(&e);
        assert_eq!(m["type"], "progress");
        assert_eq!(m["seq"], "5-1");
        assert_eq!(m["job_id"], "J");
        assert_eq!(m["progress_percent"], 12.5);
    }
}
