//! The two kinds of Redis the queue runs on, one server or a Redis Cluster, behind one
//! connection type, so the queue's operations are written once.
//!
//! # Why an enum and not a trait object
//! Every queue call goes through [`Conn`]; a `match` over three variants costs nothing next to a
//! round trip, and the single-server path keeps exactly its old connections (the same
//! `ConnectionManager`s with the same timeouts and retries).
//!
//! # Redis Cluster
//! Every key of one queue carries the hash tag `{name}`, so one queue lives in one slot: every
//! script, pipeline and `MULTI`/`EXEC` goes whole to the node owning it, and the cluster client
//! follows `MOVED`/`ASK` when that slot moves. What differs:
//! - **shared connections**: `pool_size` cluster connections (each one multiplexed connection
//!   per node), used round-robin like the single-server ones;
//! - **blocking reads** (`XREAD BLOCK` for [`crate::EventReader`] and [`crate::Waiter`]) take a
//!   cluster connection of their own, built without a response timeout, never a shared one;
//! - **pub/sub** (`wake`, `cancel`): classic `PUBLISH` reaches every node of a cluster, so a
//!   plain subscription on any one node hears every message. [`Redis::pubsub`] subscribes on
//!   the first seed node that answers, in the order the URL lists them; when that node goes
//!   away the subscription ends and the caller (the worker pool's listener) subscribes again,
//!   on the next node that answers. redis-rs's own cluster pub/sub needs RESP3 and a push
//!   channel, which would change the pool's listener for nothing gained here.

use crate::config::RedisTarget;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::time::Duration;

/// How long a shared connection waits for an answer: redis-rs defaults to 500 ms, and a big
/// enqueue_bulk on a busy 2-core box can exceed that and report a failure for a script that ran.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to one node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One connection of either kind. Cheap to clone (each variant is a handle on a multiplexed
/// connection).
#[derive(Clone)]
pub(crate) enum Conn {
    /// A shared, auto-reconnecting connection to one server.
    Managed(ConnectionManager),
    /// A dedicated connection to one server (blocking reads).
    Plain(MultiplexedConnection),
    /// A connection to a Redis Cluster (shared or dedicated, depending on who made it).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The clients of one queue's Redis. Opening them does no I/O.
// Built once per queue and kept behind an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Redis {
    /// One server.
    Node(redis::Client),
    /// A Redis Cluster.
    Cluster {
        /// The seed nodes' URLs, as parsed from the cluster URL.
        seeds: Vec<String>,
        /// One client per seed node, for pub/sub (in the URL's order).
        nodes: Vec<redis::Client>,
        /// Shared connections: response timeout, few quick retries.
        shared: ClusterClient,
        /// Dedicated connections for blocking reads: no response timeout.
        blocking: ClusterClient,
    },
}

impl Redis {
    /// Clients for `url` (see [`RedisTarget::parse`]); the error is one sentence.
    pub(crate) fn open(url: &str) -> Result<Redis, String> {
        match RedisTarget::parse(url)? {
            RedisTarget::Node(u) => redis::Client::open(u.as_str())
                .map(Redis::Node)
                .map_err(|e| e.to_string()),
            RedisTarget::Cluster(seeds) => {
                let nodes = seeds
                    .iter()
                    .map(|u| redis::Client::open(u.as_str()))
                    .collect::<RedisResult<Vec<_>>>()
                    .map_err(|e| e.to_string())?;
                // Retries cover MOVED/ASK and a failover; a few, quickly, so that a cluster that
                // is down answers `Unavailable` in seconds as one server does (the defaults
                // wait 1.3 s to 11 min between 16 retries).
                let base = || {
                    ClusterClientBuilder::new(seeds.clone())
                        .connection_timeout(CONNECT_TIMEOUT)
                        .retries(3)
                        .min_retry_wait(50)
                        .max_retry_wait(500)
                };
                let shared = base()
                    .response_timeout(RESPONSE_TIMEOUT)
                    .build()
                    .map_err(|e| e.to_string())?;
                let blocking = base()
                    .overall_response_timeout(None)
                    .build()
                    .map_err(|e| e.to_string())?;
                Ok(Redis::Cluster {
                    seeds,
                    nodes,
                    shared,
                    blocking,
                })
            }
        }
    }

    /// The client of the (first) node: the server itself, or the cluster's first seed.
    pub(crate) fn first_client(&self) -> &redis::Client {
        match self {
            Redis::Node(c) => c,
            Redis::Cluster { nodes, .. } => &nodes[0],
        }
    }

    /// A new shared connection. Does no I/O: it connects on first use and reconnects by itself.
    /// Must be called inside a tokio runtime (the cluster connection spawns its task).
    pub(crate) fn shared(&self) -> Conn {
        match self {
            Redis::Node(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Conn::Managed(
                    ConnectionManager::new_lazy_with_config(client.clone(), cfg)
                        .expect("lazy connection manager"),
                )
            }
            Redis::Cluster { shared, .. } => {
                let cfg = ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT);
                Conn::Cluster(shared.get_pending_async_connection_with_config(cfg))
            }
        }
    }

    /// A new connection of its own, without a response timeout: for blocking reads, which
    /// must never hold a shared connection (callers bound each read with their own timeout).
    pub(crate) async fn dedicated(&self) -> RedisResult<Conn> {
        match self {
            Redis::Node(client) => {
                let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(None);
                Ok(Conn::Plain(
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?,
                ))
            }
            Redis::Cluster { blocking, .. } => Ok(Conn::Cluster(
                blocking
                    .get_async_connection_with_config(
                        ClusterConfig::new().set_connection_timeout(CONNECT_TIMEOUT),
                    )
                    .await?,
            )),
        }
    }

    /// A pub/sub connection: to the server, or to the first seed node of a cluster that
    /// answers (every node hears every `PUBLISH`; see the module docs).
    pub(crate) async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        match self {
            Redis::Node(client) => client.get_async_pubsub().await,
            Redis::Cluster { nodes, .. } => {
                let mut last = None;
                for n in nodes {
                    let connect = tokio::time::timeout(CONNECT_TIMEOUT, n.get_async_pubsub());
                    match connect.await {
                        Ok(Ok(ps)) => return Ok(ps),
                        Ok(Err(e)) => last = Some(e),
                        Err(_) => {
                            last = Some(redis::RedisError::from(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!(
                                    "connecting to {} timed out",
                                    n.get_connection_info().addr()
                                ),
                            )))
                        }
                    }
                }
                Err(last.expect("a cluster URL names at least one node"))
            }
        }
    }

    /// The seed nodes' URLs of a cluster (`None` for one server).
    pub(crate) fn cluster_seeds(&self) -> Option<&[String]> {
        match self {
            Redis::Node(_) => None,
            Redis::Cluster { seeds, .. } => Some(seeds),
        }
    }
}
