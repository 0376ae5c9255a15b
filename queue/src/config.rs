//! Queue configuration: one place for the defaults, validated after merging (STYLE.md §4).

use crate::JobKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Settings of one queue. Every process sharing a queue must use the same `name`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Redis URL (`redis://host:port/db`, `redis+unix:///path/redis.sock`), or a Redis Cluster
    /// as `redis+cluster://[user:password@]host:port[,host:port...]` (seed nodes: one is enough,
    /// list several so a process can start while one is down; see [`RedisTarget`]). Empty:
    /// decided by the binary (`REDIS_URL`, else a local server).
    pub redis_url: String,
    /// Queue name: all its keys are `np:{name}:...`, one hash tag, one cluster slot.
    pub name: String,
    /// Most jobs waiting (queued or retrying) across all kinds. Default 100.
    pub max_pending: u32,
    /// Lease of a claimed job in milliseconds; renewed every third of it. Default 30 000.
    pub lease_ms: u64,
    /// How long finished jobs stay readable, in seconds. Default 7 days.
    pub retention_secs: u64,
    /// At most this many finished jobs are kept, oldest dropped first. Default 50 000.
    pub max_finished: u64,
    /// Approximate length cap of the event stream. Default 10 000.
    pub events_maxlen: u64,
    /// How long an idempotency key maps to its job, in seconds. Default 24 h.
    pub idempotency_ttl_secs: u64,
    /// Multiplexed Redis connections this process opens (requests are pipelined on each). Default 4.
    pub pool_size: usize,
    /// Dedicated connections for callers waiting on a job's end (`queue::Waiter`: WHMCS calls,
    /// `GET /api/jobs/{id}/wait`); also the most such waits at once. Default 64.
    pub wait_connections: usize,
    /// Starting per-kind concurrency limits, used until an admin sets one at runtime.
    /// Missing kinds use the built-in defaults (provision 10, restore 3, ...).
    pub limits: BTreeMap<JobKind, u32>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            redis_url: String::new(),
            name: "jobs".into(),
            max_pending: 100,
            lease_ms: 30_000,
            retention_secs: 7 * 24 * 3600,
            max_finished: 50_000,
            events_maxlen: 10_000,
            idempotency_ttl_secs: 24 * 3600,
            pool_size: 4,
            wait_connections: 64,
            limits: BTreeMap::new(),
        }
    }
}

impl QueueConfig {
    /// The default limit of `kind` in this configuration.
    pub fn default_limit(&self, kind: JobKind) -> u32 {
        self.limits
            .get(&kind)
            .copied()
            .unwrap_or(kind.default_limit())
    }

    /// One plain sentence per problem.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.name.is_empty() || self.name.contains(['{', '}', ' ']) {
            errs.push(format!(
                "queue.name {:?} must be non-empty without braces or spaces.",
                self.name
            ));
        }
        if self.max_pending == 0 {
            errs.push("queue.max_pending must be at least 1.".into());
        }
        if self.lease_ms < 300 {
            errs.push(format!(
                "queue.lease_ms is {}; it must be at least 300 so leases can be renewed in time.",
                self.lease_ms
            ));
        }
        if self.retention_secs == 0 {
            errs.push("queue.retention_secs must be at least 1.".into());
        }
        if self.idempotency_ttl_secs == 0 {
            errs.push("queue.idempotency_ttl_secs must be at least 1.".into());
        }
        if self.max_finished == 0 {
            errs.push("queue.max_finished must be at least 1.".into());
        }
        if self.pool_size == 0 {
            errs.push("queue.pool_size must be at least 1.".into());
        }
        if self.wait_connections == 0 {
            errs.push("queue.wait_connections must be at least 1.".into());
        }
        if self.events_maxlen < 100 {
            errs.push("queue.events_maxlen must be at least 100.".into());
        }
        if let Err(e) = RedisTarget::parse(&self.redis_url) {
            errs.push(format!("queue.redis_url: {e}."));
        }
        errs
    }

    /// The key prefix, hash tag included.
    pub fn prefix(&self) -> String {
        format!("np:{{{}}}:", self.name)
    }
}

/// Where the queue's Redis is, as [`QueueConfig::redis_url`] names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis server (or one primary behind a proxy): the URL as given.
    Node(String),
    /// A Redis Cluster: one `redis://[user:password@]host:port` URL per seed node. The client
    /// learns the other nodes and the slot map from any seed that answers.
    Cluster(Vec<String>),
}

/// The scheme that names a Redis Cluster.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

impl RedisTarget {
    /// Parse a Redis URL; `redis+cluster://[user:password@]h1:p1,h2:p2,...` names a cluster,
    /// anything else is one server (checked when the client opens it).
    ///
    /// # Errors
    /// One sentence when a cluster URL lists no node, a node without a port, or a database
    /// other than 0 (a cluster has only database 0).
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            return Ok(RedisTarget::Node(url.to_string()));
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (format!("{a}@"), r),
            None => (String::new(), rest),
        };
        let hosts = match rest.split_once('/') {
            Some((h, "" | "0")) => h,
            Some((_, db)) => {
                return Err(format!(
                    "a Redis Cluster has only database 0, not {db:?} (in {CLUSTER_SCHEME}...)"
                ))
            }
            None => rest,
        };
        let mut nodes = Vec::new();
        for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let port = h.rsplit_once(':').map(|(_, p)| p);
            if !port.is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0)) {
                return Err(format!(
                    "cluster node {h:?} needs a port, as in {CLUSTER_SCHEME}10.0.0.1:7000,10.0.0.2:7000"
                ));
            }
            nodes.push(format!("redis://{auth}{h}"));
        }
        if nodes.is_empty() {
            return Err(format!(
                "{CLUSTER_SCHEME} names no node; list host:port pairs separated by commas"
            ));
        }
        Ok(RedisTarget::Cluster(nodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(QueueConfig::default().validate().is_empty());
        let bad = QueueConfig {
            max_pending: 0,
            lease_ms: 5,
            name: "a b".into(),
            ..Default::default()
        };
        let errs = bad.validate();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("lease_ms is 5")));
    }

    #[test]
    fn cluster_urls_name_their_seed_nodes() {
        assert_eq!(
            RedisTarget::parse("redis://h:1/2").unwrap(),
            RedisTarget::Node("redis://h:1/2".into())
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://127.0.0.1:7000, 127.0.0.1:7001/").unwrap(),
            RedisTarget::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ])
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://u:p@a:1,b:2").unwrap(),
            RedisTarget::Cluster(vec!["redis://u:p@a:1".into(), "redis://u:p@b:2".into()])
        );
        let c = QueueConfig {
            redis_url: "redis+cluster://a".into(),
            ..Default::default()
        };
        assert_eq!(c.validate().len(), 1, "{:?}", c.validate());
        for bad in [
            "redis+cluster://",
            "redis+cluster://a:1,b",
            "redis+cluster://a:0",
            "redis+cluster://a:1/3",
        ] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_carries_one_hash_tag() {
        assert_eq!(QueueConfig::default().prefix(), "np:{jobs}:");
    }
}
