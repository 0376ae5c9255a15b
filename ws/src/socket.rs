//! One socket: snapshot or replay, then live events filtered by scope and tenant, with pings.

use crate::hub::{ConnGuard, Hub, WireEvent};
use crate::message::{complete_from_job, parse_seq, snapshot_all_message, snapshot_message, Seq};
use crate::Viewer;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use queue::{ListFilter, QueueError};
use tokio::sync::broadcast::error::RecvError;
use tracing::debug;

/// What a socket follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One job; the socket closes after its `complete`.
    Job(String),
    /// Every job the viewer may see.
    All,
}

impl Scope {
    fn matches(&self, job_id: &str) -> bool {
        match self {
            Scope::Job(id) => id == job_id,
            Scope::All => true,
        }
    }
}

/// Replay page size.
const PAGE: usize = 500;
/// Close codes.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_AWAY: u16 = 1001;
const CLOSE_ERROR: u16 = 1011;

enum Flow {
    Continue,
    /// The job finished: close normally.
    Done,
}

struct Conn {
    socket: WebSocket,
    hub: Hub,
    viewer: Viewer,
    scope: Scope,
    /// Highest seq sent (or covered by a snapshot).
    last: Seq,
}

/// Serve an upgraded socket until the peer leaves, the job completes (one-job scope), or the
/// hub shuts down. `since`: a stream id already validated with [`parse_seq`]; replay after it.
/// `guard` is the connection slot from [`Hub::try_acquire`], released when this returns.
pub async fn serve_socket(
    socket: WebSocket,
    hub: Hub,
    viewer: Viewer,
    scope: Scope,
    since: Option<String>,
    guard: ConnGuard,
) {
    let _guard = guard;
    // Subscribe before reading anything, so no event falls between the snapshot and live.
    let mut rx = hub.subscribe();
    let mut c = Conn {
        socket,
        hub,
        viewer,
        scope,
        last: (0, 0),
    };
    let start = match since {
        Some(s) => c.replay(&s).await,
        None => c.snapshot().await,
    };
    match start {
        Ok(Flow::Continue) => {}
        Ok(Flow::Done) => return c.close(CLOSE_NORMAL, "job finished").await,
        Err(Stop::Peer) => return,
        Err(Stop::Error(e)) => return c.close(CLOSE_ERROR, &e).await,
    }
    let period = c.hub.config().ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut awaiting_pong = false;
    let shutdown = c.hub.inner.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return c.close(CLOSE_AWAY, "server shutting down").await,
            r = rx.recv() => {
                let flow = match r {
                    Ok(ev) => c.live(&ev).await,
                    Err(RecvError::Lagged(n)) => {
                        metrics::counter!(crate::metrics::WS_LAGGED_TOTAL).increment(1);
                        debug!(skipped = n, "Socket lagged; sending a fresh snapshot.");
                        c.snapshot().await
                    }
                    Err(RecvError::Closed) => return c.close(CLOSE_AWAY, "server shutting down").await,
                };
                match flow {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Done) => return c.close(CLOSE_NORMAL, "job finished").await,
                    Err(Stop::Peer) => return,
                    Err(Stop::Error(e)) => return c.close(CLOSE_ERROR, &e).await,
                }
            }
            m = c.socket.recv() => match m {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                // Pings are answered by the WebSocket layer; client text is ignored.
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if awaiting_pong {
                    debug!("Socket did not answer a ping; closing it.");
                    return;
                }
                if c.send_raw(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
                awaiting_pong = true;
            }
        }
    }
}

enum Stop {
    /// The peer is gone or too slow: just drop it.
    Peer,
    /// Something failed on our side: close with this reason.
    Error(String),
}

impl From<QueueError> for Stop {
    fn from(e: QueueError) -> Self {
        Stop::Error(match e {
            QueueError::NotFound(_) => "job not found".into(),
            _ => "event stream unavailable".into(),
        })
    }
}

impl Conn {
    async fn send_raw(&mut self, m: Message) -> Result<(), Stop> {
        match tokio::time::timeout(self.hub.config().send_timeout, self.socket.send(m)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Stop::Peer),
        }
    }

    async fn send_text(&mut self, kind: &str, text: Utf8Bytes) -> Result<(), Stop> {
        self.send_raw(Message::Text(text)).await?;
        // A static label: no allocation per message on the fan-out's hot path.
        let label: &'static str = match kind {
            "snapshot" => "snapshot",
            "status" => "status",
            "progress" => "progress",
            "stage" => "stage",
            "log" => "log",
            "complete" => "complete",
            _ => "other",
        };
        metrics::counter!(crate::metrics::WS_MESSAGES_SENT_TOTAL, "type" => label).increment(1);
        Ok(())
    }

    async fn send_json(&mut self, kind: &str, v: serde_json::Value) -> Result<(), Stop> {
        self.send_text(kind, Utf8Bytes::from(v.to_string())).await
    }

    async fn close(mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(reason.to_string()),
        };
        let _ = self.send_raw(Message::Close(Some(frame))).await;
    }
}

/// Newest stream id, `0-0` when the stream is empty.
async fn top(q: &queue::Queue) -> Result<String, Stop> {
    Ok(q.latest_seq().await?)
}

/// Oldest stream id still kept, if any.
async fn oldest(q: &queue::Queue) -> Result<Option<Seq>, Stop> {
    Ok(q.oldest_seq().await?.as_deref().and_then(parse_seq))
}

impl Conn {
    /// Send the current state; for a finished job also its `complete`.
    async fn snapshot(&mut self) -> Result<Flow, Stop> {
        let q = self.hub.inner.queue.clone();
        match self.scope.clone() {
            Scope::Job(id) => {
                // State and stream position read atomically: no event twice, none missed.
                let (job, seq) = match q.get_at(&id).await {
                    Ok(x) => x,
                    // Gone from Redis: an archived (finished) job, if the history has it.
                    Err(QueueError::NotFound(_)) if self.hub.inner.source.get().is_some() => {
                        let src = self.hub.inner.source.get().expect("checked");
                        let job = src
                            .archived(&id)
                            .await?
                            .ok_or_else(|| Stop::Error("job not found".into()))?;
                        (job, top(&q).await?)
                    }
                    Err(e) => return Err(e.into()),
                };
                if !self.viewer.can_see_job(&job) {
                    return Err(Stop::Error("job not found".into()));
                }
                self.send_json("snapshot", snapshot_message(&seq, &job))
                    .await?;
                self.last = parse_seq(&seq).unwrap_or_default();
                if job.status.is_final() {
                    self.send_json("complete", complete_from_job(&seq, &job))
                        .await?;
                    return Ok(Flow::Done);
                }
            }
            Scope::All => {
                let seq = top(&q).await?;
                let jobs = match self.hub.inner.source.get() {
                    Some(src) => src.list(&self.viewer, 100).await?,
                    None => {
                        self.viewer
                            .list(
                                &q,
                                ListFilter {
                                    limit: Some(100),
                                    ..Default::default()
                                },
                            )
                            .await?
                    }
                };
                self.send_json("snapshot", snapshot_all_message(&seq, &jobs))
                    .await?;
                self.last = parse_seq(&seq).unwrap_or_default();
            }
        }
        Ok(Flow::Continue)
    }

    /// Replay everything after `since` that this socket may see; fall back to a snapshot when
    /// the stream no longer holds `since` (trimmed by its cap).
    async fn replay(&mut self, since: &str) -> Result<Flow, Stop> {
        let from = parse_seq(since).ok_or_else(|| Stop::Error("bad since".into()))?;
        if oldest(&self.hub.inner.queue)
            .await?
            .is_some_and(|o| o > from)
        {
            debug!(
                since,
                "Replay point trimmed from the stream; sending a snapshot."
            );
            return self.snapshot().await;
        }
        self.last = from;
        let mut cursor = format!("{}-{}", from.0, from.1);
        loop {
            let page = self.hub.inner.queue.events_since(&cursor, PAGE).await?;
            let n = page.len();
            for e in &page {
                cursor = e.seq.clone();
                if let Some(w) = WireEvent::from_event(e) {
                    if let Flow::Done = self.live(&w).await? {
                        return Ok(Flow::Done);
                    }
                }
            }
            if n < PAGE {
                break;
            }
        }
        // A one-job stream whose job already ended, with its `complete` before `since` (or
        // trimmed away): say so and close instead of waiting forever.
        if let Scope::Job(id) = self.scope.clone() {
            // State and newest seq in one atomic read, as for a snapshot.
            let (job, seq) = self.hub.inner.queue.get_at(&id).await?;
            // Checked here, not left to whoever opened the socket: a job the viewer may not
            // see is "not found", whatever the route in front did.
            if !self.viewer.can_see_job(&job) {
                return Err(Stop::Error("job not found".into()));
            }
            if job.status.is_final() {
                self.send_json("complete", complete_from_job(&seq, &job))
                    .await?;
                return Ok(Flow::Done);
            }
        }
        Ok(Flow::Continue)
    }

    /// Forward one event if it is new, in scope and visible.
    async fn live(&mut self, ev: &WireEvent) -> Result<Flow, Stop> {
        if ev.seq <= self.last {
            return Ok(Flow::Continue);
        }
        if !self.scope.matches(&ev.job_id)
            || !self
                .viewer
                .can_see(ev.account.as_deref(), ev.reseller.as_deref())
        {
            return Ok(Flow::Continue);
        }
        self.send_text(&ev.kind, ev.text.clone()).await?;
        self.last = ev.seq;
        if ev.kind == "complete" && matches!(self.scope, Scope::Job(_)) {
            return Ok(Flow::Done);
        }
        Ok(Flow::Continue)
    }
}
