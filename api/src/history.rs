//! Job history: the archiver that moves finished jobs from Redis into the store, and the reads
//! that join live work (Redis) with history (store) (DESIGN §10).
//!
//! # Archiving without loss or duplicates
//! One pass ([`archive_once`]) reads the finished jobs after the store's watermark (finish
//! time, id), writes one audit record per finished non-diagnostic job (ids derived from the
//! job, so a repeat is skipped), then upserts the jobs and moves the watermark in **one**
//! store transaction. [`run_archiver`] then tells Redis the watermark (from the first pass
//! on, even an empty one), so Redis's count cap drops only archived jobs. A crash at any
//! point repeats work on the next pass and never skips or doubles it; a crash between the
//! store's commit and Redis hearing of it only keeps jobs in Redis a little longer. Redis's age cap (the TTL, 7 days by default) is far beyond the archiver's
//! one-second pace; if the store is down for longer than that, the jobs it missed are lost
//! from history (the log says so every minute while it is down).
//!
//! # Reads cost a page, not the whole history
//! A list reads Redis's pending and running jobs plus the finished ones *after* the watermark
//! (a second's worth), and one indexed page from the store; both are filtered by the caller's
//! place in the hierarchy and merged newest first by id.

use crate::AppState;
use futures::future::BoxFuture;
use queue::{Job, JobKind, ListFilter, Queue, QueueError};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use store::{Actor, HistoryFilter, HistoryRow, NewAudit, Store, StoreError};
use tokio_util::sync::CancellationToken;
use ws::Viewer;

/// The watermark's name.
pub const MARK: &str = "jobs";
/// Jobs per pass.
pub const BATCH: usize = 500;

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Redis.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn row(job: &Job) -> HistoryRow {
    HistoryRow {
        id: job.id.clone(),
        kind: job.kind.to_string(),
        status: job.status.to_string(),
        account: job.account.clone(),
        reseller: job.reseller.clone(),
        finished_at: job.finished_at.map(|t| t.timestamp_millis()).unwrap_or(0),
        // Serialising a job redacts its payload's secrets.
        doc: serde_json::to_value(job).unwrap_or_default(),
    }
}

fn transition_record(job: &Job) -> NewAudit {
    let status = job.status.as_str();
    let finished = job.finished_at.map(|t| t.timestamp_millis()).unwrap_or(0);
    let mut r = NewAudit::new(
        format!("{}_{status}", job.kind),
        Actor {
            kind: "system".into(),
            id: "worker".into(),
            ..Actor::default()
        },
        if status == "succeeded" {
            "success"
        } else {
            "failure"
        },
    );
    // Derived from the job and its finish, so archiving it twice records it once.
    r.id = format!("job-{}-{status}-{finished}", job.id);
    r.timestamp = store::ms_time(finished);
    r.account = job.account.clone();
    r.reseller = job.reseller.clone();
    r.resource = json!({"type": "job", "id": job.id, "name": job.kind.as_str()});
    r.changes = json!({"before": null, "after": {"status": status, "attempts": job.attempts,
        "error": job.error, "result": job.result}});
    r.source = json!({"method": "JOB", "endpoint": job.kind.as_str()});
    r.job_id = Some(job.id.clone());
    r.duration_ms = match (job.started_at, job.finished_at) {
        (Some(s), Some(f)) => u64::try_from((f - s).num_milliseconds()).ok(),
        _ => None,
    };
    r.impact =
        json!({"accounts_affected": u8::from(job.account.is_some()), "resources_changed": 1});
    r
}

/// The archive watermark: finish time (ms) and id of the last archived job.
pub type Mark = (i64, String);

/// One archiving pass of at most [`BATCH`] jobs. Returns how many were archived and the
/// store's watermark after the pass.
pub async fn archive_once(queue: &Queue, store: &Store) -> Result<(usize, Mark), ArchiveError> {
    let (score, last) = store.archive_mark(MARK).await?;
    let found = queue.finished_after(score, &last, BATCH).await?;
    let Some((last_id, last_score)) = found.last().cloned() else {
        metrics::gauge!(crate::metrics::HISTORY_ARCHIVE_LAG_SECONDS).set(0.0);
        return Ok((0, (score, last)));
    };
    let oldest = found.first().map(|f| f.1).unwrap_or(last_score);
    metrics::gauge!(crate::metrics::HISTORY_ARCHIVE_LAG_SECONDS)
        .set(((store::now_ms() - oldest).max(0) as f64) / 1000.0);
    let ids: Vec<String> = found.iter().map(|f| f.0.clone()).collect();
    // Jobs whose keys already expired are simply absent (nothing left to archive).
    let jobs = queue.get_many(&ids).await?;
    let audits: Vec<NewAudit> = jobs
        .iter()
        .filter(|j| j.kind != JobKind::Diagnostic && j.status.is_final())
        .map(transition_record)
        .collect();
    store.append_audit(&audits).await?;
    let rows: Vec<HistoryRow> = jobs
        .iter()
        .filter(|j| j.status.is_final())
        .map(row)
        .collect();
    store
        .archive_jobs(MARK, &rows, (last_score, &last_id))
        .await?;
    metrics::counter!(crate::metrics::HISTORY_ARCHIVED_TOTAL).increment(rows.len() as u64);
    Ok((ids.len(), (last_score, last_id)))
}

/// Archive every second until `stop`. An idle pass is one Redis read: the store is asked
/// for its watermark only when Redis holds a job finished after the last one this loop saw
/// (another process may have archived it meanwhile, so the store's word is final).
pub async fn run_archiver(queue: Queue, store: Store, stop: CancellationToken) {
    let mut failing_since: Option<std::time::Instant> = None;
    let mut last_warn = std::time::Instant::now() - Duration::from_secs(3600);
    let mut told_redis: Option<i64> = None;
    let mut seen: Option<Mark> = None;
    loop {
        let idle = match &seen {
            Some((score, last)) => matches!(
                queue.finished_after(*score, last, 1).await,
                Ok(v) if v.is_empty()
            ),
            None => false,
        };
        let pass = if idle {
            Ok((0, seen.clone().unwrap_or_default()))
        } else {
            archive_once(&queue, &store).await
        };
        match pass {
            Ok((n, mark)) => {
                failing_since = None;
                if told_redis != Some(mark.0) && queue.mark_archived(mark.0).await.is_ok() {
                    told_redis = Some(mark.0);
                }
                seen = Some(mark);
                if n == BATCH {
                    continue;
                }
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if last_warn.elapsed() >= Duration::from_secs(60) {
                    last_warn = std::time::Instant::now();
                    tracing::warn!(error = %e, failing_for_s = since.elapsed().as_secs(),
                        "Finished jobs are not being archived; they stay in Redis until its retention.");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A job from Redis, else from the history; `NotFound` when neither has it.
pub async fn find_job(st: &AppState, id: &str) -> Result<Job, crate::error::ApiError> {
    match st.queue.get(id).await {
        Ok(j) => Ok(j),
        Err(QueueError::NotFound(_)) => match st.store.history_job(id).await? {
            Some(doc) => serde_json::from_value(doc)
                .map_err(|e| crate::error::ApiError::Internal(format!("archived job {id}: {e}"))),
            None => Err(crate::error::ApiError::job_not_found(id)),
        },
        Err(e) => Err(e.into()),
    }
}

/// Newest-first jobs matching `f` that `viewer` may see, with ids below `before`; at most
/// `limit`. The second value is true when more may follow.
pub async fn list_jobs(
    queue: &Queue,
    store: &Store,
    viewer: &Viewer,
    f: ListFilter,
    before: Option<&str>,
    limit: usize,
) -> Result<(Vec<Job>, bool), crate::error::ApiError> {
    let Some(mut f) = viewer.narrow(f) else {
        return Ok((Vec::new(), false));
    };
    let (mark, _) = store.archive_mark(MARK).await?;
    f.finished_after = Some(mark - 1);
    f.limit = Some(1000);
    let mut live = queue.list(&f).await?;
    if let Some(b) = before {
        live.retain(|j| j.id.as_str() < b);
    }
    let hist = store
        .list_history(&HistoryFilter {
            kind: f.kind.map(|k| k.to_string()),
            status: f.status.map(|s| s.to_string()),
            account: f.account.clone(),
            reseller: f.reseller.clone(),
            before: before.map(str::to_string),
            limit: limit as i64 + 1,
        })
        .await?;
    let mut all: Vec<Job> = live;
    for h in hist {
        if let Ok(j) = serde_json::from_value::<Job>(h.doc) {
            all.push(j);
        }
    }
    all.sort_by(|a, b| b.id.cmp(&a.id));
    all.dedup_by(|a, b| a.id == b.id);
    let more = all.len() > limit;
    all.truncate(limit);
    Ok((all, more))
}

/// Snapshots of the WebSocket hub read history through this.
pub struct HistorySource {
    /// Redis.
    pub queue: Queue,
    /// The store.
    pub store: Store,
}

fn store_to_queue(e: crate::error::ApiError) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

impl ws::JobSource for HistorySource {
    fn list<'a>(
        &'a self,
        viewer: &'a Viewer,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Job>, QueueError>> {
        Box::pin(async move {
            list_jobs(
                &self.queue,
                &self.store,
                viewer,
                ListFilter::default(),
                None,
                limit,
            )
            .await
            .map(|r| r.0)
            .map_err(store_to_queue)
        })
    }

    fn archived<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Job>, QueueError>> {
        Box::pin(async move {
            match self.store.history_job(id).await {
                Ok(Some(doc)) => Ok(serde_json::from_value(doc).ok()),
                Ok(None) => Ok(None),
                Err(e) => Err(QueueError::Unavailable(e.to_string())),
            }
        })
    }
}

/// Wire the hub to the history.
pub fn attach(hub: &ws::Hub, queue: Queue, store: Store) {
    hub.set_job_source(Arc::new(HistorySource { queue, store }));
}
