//! The queue's error type. Callers branch on the variant; `api` maps each to a stable code.

use crate::{JobKind, UnknownKind};
use std::time::Duration;

/// Everything that can go wrong talking to the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The bound is reached: nothing was enqueued.
    #[error("the queue is full: {pending} jobs pending, limit {limit}; retry in about {}s", retry_after.as_secs())]
    Full {
        /// `max_pending`.
        limit: u32,
        /// Jobs pending when refused.
        pending: u32,
        /// A rough estimate of when room will free up, from the recent completion rate.
        retry_after: Duration,
    },
    /// Redis could not be reached, is loading, or is failing over: worth a retry shortly.
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    /// Redis refused to write because it is out of memory (`maxmemory` reached under a
    /// no-eviction policy): nothing was written; retrying does not help until memory is freed.
    #[error("redis is out of memory (maxmemory reached, nothing was written): {0}")]
    OutOfMemory(String),
    /// A kind string names no job type.
    #[error(transparent)]
    UnknownKind(#[from] UnknownKind),
    /// The kind exists but this build has no handler for it.
    #[error("job type {0} is not available in this build (no handler is registered for it)")]
    KindNotAvailable(JobKind),
    /// The payload does not match the kind's payload type.
    #[error("invalid payload for job type {kind}: {reason}")]
    InvalidPayload {
        /// The kind.
        kind: JobKind,
        /// What serde said.
        reason: String,
    },
    /// No such job (or it is past its retention period).
    #[error("job {0} not found")]
    NotFound(String),
    /// The job is not in a state that allows the operation.
    #[error("job {id} is {status}; {action} is not possible")]
    Conflict {
        /// Job id.
        id: String,
        /// Its current status.
        status: String,
        /// What was attempted.
        action: &'static str,
    },
    /// A request that can never succeed (bad limit, empty batch, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Redis answered something the scripts never return: a bug or a foreign key clash.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

impl From<redis::RedisError> for QueueError {
    /// Tells apart what a retry may fix (the connection, a loading or failing-over server) from
    /// what it cannot: out of memory, and a reply the scripts never ask for — a script error,
    /// `WRONGTYPE` on one of our keys — which is a bug, not an outage.
    fn from(e: redis::RedisError) -> Self {
        if e.code() == Some("OOM") {
            return QueueError::OutOfMemory(e.to_string());
        }
        let transient = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(e.kind(), redis::ErrorKind::ClusterConnectionNotFound)
            || matches!(
                e.code(),
                Some("LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY" | "BUSY")
            );
        if transient {
            QueueError::Unavailable(e.to_string())
        } else {
            QueueError::Protocol(e.to_string())
        }
    }
}

/// Result alias.
pub type Result<T, E = QueueError> = std::result::Result<T, E>;
