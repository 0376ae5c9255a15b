//! The per-process fan-out: one Redis stream reader, one broadcast channel, many sockets.

use crate::message::{event_message, parse_seq, Seq};
use axum::extract::ws::Utf8Bytes;
use queue::{EventReader, Queue};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Fan-out settings (`ws.*` in the binary's config).
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Most open sockets in this process; the next upgrade is refused. Default 1000.
    pub max_connections: usize,
    /// Most open sockets of one tenant (a customer account or a reseller) in this process, so
    /// one tenant cannot take every slot; admins are not counted. 0 = no per-tenant cap.
    /// Default 100.
    pub max_per_tenant: usize,
    /// Ping period; a socket that has not answered the previous ping by the next one is closed.
    /// Default 30 s.
    pub ping_interval: Duration,
    /// Broadcast buffer, in events. A socket further behind than this gets a fresh snapshot.
    /// Default 1024.
    pub buffer: usize,
    /// Longest one send may block before the socket is dropped. Default 10 s.
    pub send_timeout: Duration,
    /// Longest one blocking `XREAD` waits (an idle hub makes one round trip per period).
    /// Default 10 s.
    pub block: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_connections: 1000,
            max_per_tenant: 100,
            ping_interval: Duration::from_secs(30),
            buffer: 1024,
            send_timeout: Duration::from_secs(10),
            block: Duration::from_secs(10),
        }
    }
}

/// One event as every socket receives it: routing fields plus the message, serialised once.
#[derive(Debug)]
pub struct WireEvent {
    /// Stream id.
    pub seq: Seq,
    /// Job id.
    pub job_id: String,
    /// Event type.
    pub kind: String,
    /// The job's account.
    pub account: Option<String>,
    /// The account's reseller.
    pub reseller: Option<String>,
    /// The JSON message.
    pub text: Utf8Bytes,
}

impl WireEvent {
    pub(crate) fn from_event(e: &queue::Event) -> Option<WireEvent> {
        Some(WireEvent {
            seq: parse_seq(&e.seq)?,
            job_id: e.job_id.clone(),
            kind: e.kind.clone(),
            account: e.account.clone(),
            reseller: e.reseller.clone(),
            text: Utf8Bytes::from(event_message(e).to_string()),
        })
    }
}

pub(crate) struct Inner {
    pub(crate) queue: Queue,
    pub(crate) tx: broadcast::Sender<Arc<WireEvent>>,
    pub(crate) cfg: HubConfig,
    pub(crate) shutdown: CancellationToken,
    conns: AtomicUsize,
    /// `max_connections` and `max_per_tenant` as they are now ([`Hub::set_caps`]).
    max_connections: AtomicUsize,
    max_per_tenant: AtomicUsize,
    tenants: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    following: AtomicBool,
    pub(crate) source: std::sync::OnceLock<Arc<dyn JobSource>>,
}

/// Where snapshots find jobs beyond the live ones in Redis (the store's history). Without
/// one, snapshots read Redis only.
pub trait JobSource: Send + Sync + 'static {
    /// The newest `limit` jobs `viewer` may see, live and archived together.
    fn list<'a>(
        &'a self,
        viewer: &'a crate::Viewer,
        limit: usize,
    ) -> futures::future::BoxFuture<'a, Result<Vec<queue::Job>, queue::QueueError>>;
    /// An archived job that Redis no longer holds.
    fn archived<'a>(
        &'a self,
        id: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<queue::Job>, queue::QueueError>>;
}

/// The fan-out hub. Cheap to clone; create one per process with [`Hub::start`].
#[derive(Clone)]
pub struct Hub {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("connections", &self.connections())
            .finish()
    }
}

/// Holds one of the `max_connections` slots; released on drop.
pub struct ConnGuard(Arc<Inner>, Option<String>);

impl std::fmt::Debug for ConnGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnGuard")
    }
}

/// Why a socket was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The process holds `max_connections` sockets.
    Full(usize),
    /// The caller's tenant holds `max_per_tenant` sockets.
    Tenant(usize),
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(t) = &self.1 {
            self.0.release_tenant(t);
        }
        let n = self.0.conns.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!(crate::metrics::WS_CONNECTIONS).set(n as f64);
    }
}

impl Inner {
    /// Give back one of `tenant`'s `max_per_tenant` slots.
    fn release_tenant(&self, tenant: &str) {
        let mut m = self.tenants.lock().expect("tenants");
        if let Some(n) = m.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                m.remove(tenant);
            }
        }
    }
}

impl Hub {
    /// Start following `queue`'s event stream (from now on) until `shutdown` fires. Sockets
    /// served by this hub are closed (1001, going away) on shutdown too.
    /// Use `source` for snapshots (set once; later calls are ignored).
    pub fn set_job_source(&self, source: Arc<dyn JobSource>) {
        let _ = self.inner.source.set(source);
    }

    pub fn start(queue: Queue, cfg: HubConfig, shutdown: CancellationToken) -> Hub {
        let (tx, _) = broadcast::channel(cfg.buffer.max(16));
        let inner = Arc::new(Inner {
            queue,
            tx,
            max_connections: AtomicUsize::new(cfg.max_connections),
            max_per_tenant: AtomicUsize::new(cfg.max_per_tenant),
            cfg,
            shutdown,
            conns: AtomicUsize::new(0),
            tenants: Default::default(),
            following: AtomicBool::new(false),
            source: std::sync::OnceLock::new(),
        });
        tokio::spawn(follow(inner.clone()));
        Hub { inner }
    }

    /// Take a connection slot, or `None` when `max_connections` sockets are open.
    pub fn try_acquire(&self) -> Option<ConnGuard> {
        let max = self.inner.max_connections.load(Ordering::Acquire);
        let ok = self
            .inner
            .conns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match ok {
            Ok(n) => {
                metrics::gauge!(crate::metrics::WS_CONNECTIONS).set((n + 1) as f64);
                Some(ConnGuard(self.inner.clone(), None))
            }
            Err(_) => {
                metrics::counter!(crate::metrics::WS_REFUSED_TOTAL).increment(1);
                None
            }
        }
    }

    /// Take a slot for `viewer`: `Err(Refused::Tenant)` when its tenant already holds
    /// `max_per_tenant` sockets, `Err(Refused::Full)` when the process is full.
    pub fn try_acquire_for(&self, viewer: &crate::Viewer) -> Result<ConnGuard, Refused> {
        let cap = self.inner.max_per_tenant.load(Ordering::Acquire);
        // Counted only under a cap; admins (no tenant) never are.
        let tenant = viewer.tenant().filter(|_| cap > 0);
        if let Some(t) = &tenant {
            let mut m = self.inner.tenants.lock().expect("tenants");
            let n = m.entry(t.clone()).or_insert(0);
            if *n >= cap {
                metrics::counter!(crate::metrics::WS_REFUSED_TOTAL).increment(1);
                return Err(Refused::Tenant(cap));
            }
            *n += 1;
        }
        match self.try_acquire() {
            Some(mut g) => {
                g.1 = tenant;
                Ok(g)
            }
            None => {
                if let Some(t) = &tenant {
                    self.inner.release_tenant(t);
                }
                Err(Refused::Full(
                    self.inner.max_connections.load(Ordering::Acquire),
                ))
            }
        }
    }

    /// Change `max_connections` and `max_per_tenant` while serving (`npanel serve` on SIGHUP).
    /// Sockets already open stay open when a cap is lowered below their number; new ones are
    /// refused until enough have closed.
    pub fn set_caps(&self, max_connections: usize, max_per_tenant: usize) {
        self.inner
            .max_connections
            .store(max_connections, Ordering::Release);
        self.inner
            .max_per_tenant
            .store(max_per_tenant, Ordering::Release);
    }

    /// The caps in force now: (`max_connections`, `max_per_tenant`).
    pub fn caps(&self) -> (usize, usize) {
        (
            self.inner.max_connections.load(Ordering::Acquire),
            self.inner.max_per_tenant.load(Ordering::Acquire),
        )
    }

    /// Open sockets.
    pub fn connections(&self) -> usize {
        self.inner.conns.load(Ordering::Acquire)
    }

    /// The configuration the hub started with (the caps in force: [`Hub::caps`]).
    pub fn config(&self) -> &HubConfig {
        &self.inner.cfg
    }

    /// Whether the last read of the event stream succeeded (for `/readyz`).
    pub fn is_following(&self) -> bool {
        self.inner.following.load(Ordering::Acquire)
    }

    /// A receiver of every event read from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WireEvent>> {
        self.inner.tx.subscribe()
    }
}

async fn follow(inner: Arc<Inner>) {
    let mut reader = EventReader::new(&inner.queue, "$");
    loop {
        let batch = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            b = reader.next_batch(inner.cfg.block, 512) => b,
        };
        match batch {
            Ok(events) => {
                if !inner.following.swap(true, Ordering::AcqRel) {
                    debug!(since = %reader.last_seq(), "Following the job event stream.");
                }
                metrics::counter!(crate::metrics::WS_EVENTS_RECEIVED_TOTAL)
                    .increment(events.len() as u64);
                for e in &events {
                    if let Some(w) = WireEvent::from_event(e) {
                        // No receivers is fine: nobody is watching.
                        let _ = inner.tx.send(Arc::new(w));
                    }
                }
            }
            Err(e) => {
                if inner.following.swap(false, Ordering::AcqRel) {
                    warn!(error = %e, "Lost the job event stream; retrying every second.");
                }
                tokio::select! {
                    _ = inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
