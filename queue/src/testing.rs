//! Test support (feature `test-support`): a real Redis for tests (DESIGN §8).
//!
//! `REDIS_URL` when set; otherwise one private `redis-server` per test binary, on a Unix socket
//! in a temp dir, started on first use. It dies with the test process: it runs under a small
//! `sh` that waits on a pipe from us and kills the server when the pipe closes. Each test gets
//! its own queue name, so nothing ever needs a FLUSHALL.
//!
//! Redis Cluster: [`cluster_config`] is the same on a private three-master cluster
//! ([`PrivateCluster`], `REDIS_CLUSTER_URL` when set instead). Cluster nodes cannot listen on
//! Unix sockets for the client (redis-rs's cluster client connects over TCP), so they listen on
//! 127.0.0.1 on free ports, under the same dying-with-us guard.

use crate::{Job, JobStatus, Queue, QueueConfig};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `sh -c script` with a pipe on its stdin: the script starts the server(s), then `read`s, and
/// kills them when the read returns, i.e. when the pipe closes (on drop, or when the test
/// process dies), so no server outlives its test binary.
fn guard_shell(script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run sh for redis-server")
}

/// A redis-server owned by the test process.
pub struct PrivateRedis {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Start a new private server on a Unix socket in a fresh temp dir.
    pub fn start() -> PrivateRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = PrivateRedis { dir, child: None };
        r.restart();
        r
    }

    /// Socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// `redis+unix://` URL.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Stop the server (SIGKILL, as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Closing the pipe makes the guard shell kill the server.
            drop(c.stdin.take());
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.socket().exists() && Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// (Re)start the server on the same socket.
    pub fn restart(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(self.socket());
        let bin = std::env::var("NPANEL_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let dir = self.dir.path();
        let script = format!(
            "{bin} --port 0 --unixsocket {sock} --unixsocketperm 700 --save '' --appendonly no \
             --dir {dir} --logfile {dir}/redis.log & pid=$!; read _; kill -9 $pid",
            sock = self.socket().display(),
            dir = dir.display()
        );
        let child = guard_shell(&script);
        self.child = Some(child);
        wait_for_socket(&self.socket(), dir);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for_socket(sock: &Path, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) {
            if s.write_all(b"PING\r\n").is_ok() {
                return;
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            panic!(
                "redis-server did not start on {} (is redis-server installed? set REDIS_URL to use \
                 another). Log:\n{log}",
                sock.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// URL of the Redis shared by the tests of this binary.
pub fn redis_url() -> String {
    static SHARED: OnceLock<(String, Option<PrivateRedisHolder>)> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var("REDIS_URL") {
            Ok(u) if !u.is_empty() => (u, None),
            _ => {
                let r = PrivateRedis::start();
                (r.url(), Some(PrivateRedisHolder(r)))
            }
        })
        .0
        .clone()
}

struct PrivateRedisHolder(#[allow(dead_code)] PrivateRedis);

/// A three-master Redis Cluster owned by the test process: three `redis-server
/// --cluster-enabled yes` on 127.0.0.1 (free ports), slots split in three, no replicas.
pub struct PrivateCluster {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    child: Option<Child>,
}

/// Masters of a private cluster.
const MASTERS: usize = 3;

impl PrivateCluster {
    /// Start the servers, assign the slots, introduce the nodes and wait until every node says
    /// `cluster_state:ok`. Retries with other ports when one was taken meanwhile.
    pub fn start() -> PrivateCluster {
        Self::start_or_say_why().unwrap_or_else(|e| panic!("{e}"))
    }

    fn start_or_say_why() -> Result<PrivateCluster, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(format!("could not start a private Redis Cluster: {last}"))
    }

    fn try_start() -> Result<PrivateCluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // Client and cluster-bus ports, all free now (the listeners are dropped just before
        // the servers bind them).
        let ports: Vec<u16> = {
            let ls: Vec<std::net::TcpListener> = (0..2 * MASTERS)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<std::io::Result<_>>()
                .map_err(|e| e.to_string())?;
            ls.iter()
                .map(|l| l.local_addr().map(|a| a.port()))
                .collect::<std::io::Result<_>>()
                .map_err(|e| e.to_string())?
        };
        let bin = std::env::var("NPANEL_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut script = String::new();
        for i in 0..MASTERS {
            let d = dir.path().join(format!("n{i}"));
            std::fs::create_dir(&d).map_err(|e| e.to_string())?;
            script.push_str(&format!(
                "{bin} --bind 127.0.0.1 --port {port} --cluster-enabled yes --cluster-port {bus} \
                 --cluster-config-file nodes.conf --cluster-node-timeout 5000 --save '' \
                 --appendonly no --dir {d} --logfile {d}/redis.log & p{i}=$!\n",
                port = ports[i],
                bus = ports[MASTERS + i],
                d = d.display()
            ));
        }
        let pids: Vec<String> = (0..MASTERS).map(|i| format!("$p{i}")).collect();
        script.push_str(&format!("read _; kill -9 {}\n", pids.join(" ")));
        let child = guard_shell(&script);
        let c = PrivateCluster {
            dir,
            ports,
            child: Some(child),
        };
        c.form().map_err(|e| format!("{e}; logs:\n{}", c.logs()))?;
        Ok(c)
    }

    /// Assign the slots, meet, wait for `cluster_state:ok` everywhere.
    fn form(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut conns = Vec::new();
        for &port in &self.ports[..MASTERS] {
            conns.push(connect_until(port, deadline)?);
        }
        let per = 16384 / MASTERS;
        for (i, c) in conns.iter_mut().enumerate() {
            let lo = i * per;
            let hi = if i + 1 == MASTERS {
                16383
            } else {
                lo + per - 1
            };
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(lo)
                .arg(hi)
                .exec(c)
                .map_err(|e| format!("ADDSLOTSRANGE on node {i}: {e}"))?;
        }
        for i in 1..MASTERS {
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(self.ports[i])
                .arg(self.ports[MASTERS + i])
                .exec(&mut conns[0])
                .map_err(|e| format!("CLUSTER MEET: {e}"))?;
        }
        // Ready when every node says ok and every node gives the same slot map, with every
        // master's address known (a client asks any node for the map).
        let want: BTreeSet<(i64, i64, i64)> = (0..MASTERS)
            .map(|i| {
                let lo = (i * per) as i64;
                let hi = if i + 1 == MASTERS {
                    16383
                } else {
                    lo + per as i64 - 1
                };
                (lo, hi, i64::from(self.ports[i]))
            })
            .collect();
        loop {
            let mut ok = true;
            for c in &mut conns {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(c)
                    .map_err(|e| format!("CLUSTER INFO: {e}"))?;
                ok &= info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{MASTERS}"))
                    && info.contains("cluster_slots_ok:16384");
                let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query(c)
                    .map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
                let got: BTreeSet<(i64, i64, i64)> = slots.iter().filter_map(master_of).collect();
                ok &= got == want;
            }
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("the cluster never reached cluster_state:ok".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        (0..MASTERS)
            .map(|i| {
                let p = self.dir.path().join(format!("n{i}/redis.log"));
                format!(
                    "--- node {i}\n{}",
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect()
    }

    /// The masters' client ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports[..MASTERS]
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("{}{}", crate::config::CLUSTER_SCHEME, nodes.join(","))
    }

    /// Stop every node (SIGKILL, as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `(first slot, last slot, master port)` of one `CLUSTER SLOTS` entry whose master is on
/// 127.0.0.1 with its address known.
fn master_of(range: &redis::Value) -> Option<(i64, i64, i64)> {
    use redis::Value;
    let Value::Array(v) = range else { return None };
    let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(master))) =
        (v.first(), v.get(1), v.get(2))
    else {
        return None;
    };
    let host = match master.first()? {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    match master.get(1)? {
        Value::Int(port) if host == "127.0.0.1" => Some((*lo, *hi, *port)),
        _ => None,
    }
}

fn connect_until(port: u16, deadline: Instant) -> Result<redis::Connection, String> {
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
    loop {
        match client.get_connection_with_timeout(Duration::from_secs(1)) {
            Ok(mut c) => {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return Ok(c);
                }
            }
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "redis-server did not start on 127.0.0.1:{port} (is redis-server 7 or newer \
                     installed?): {e}"
                ))
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// URL of the Redis Cluster shared by the tests of this binary: `REDIS_CLUSTER_URL` when set,
/// else a [`PrivateCluster`] started on first use (when it cannot start, every test that asks
/// fails with the reason, without trying again).
pub fn cluster_url() -> String {
    type Shared = Result<(String, Option<PrivateClusterHolder>), String>;
    static SHARED: OnceLock<Shared> = OnceLock::new();
    let shared = SHARED.get_or_init(|| match std::env::var("REDIS_CLUSTER_URL") {
        Ok(u) if !u.is_empty() => Ok((u, None)),
        _ => PrivateCluster::start_or_say_why().map(|c| (c.url(), Some(PrivateClusterHolder(c)))),
    });
    match shared {
        Ok((url, _)) => url.clone(),
        Err(e) => panic!("{e}"),
    }
}

struct PrivateClusterHolder(#[allow(dead_code)] PrivateCluster);

/// A queue config on the shared test Redis Cluster with a queue name of its own.
pub fn cluster_config(hint: &str) -> QueueConfig {
    QueueConfig {
        redis_url: cluster_url(),
        ..config_on_nothing(hint)
    }
}

fn config_on_nothing(hint: &str) -> QueueConfig {
    QueueConfig {
        name: format!("t-{hint}-{}", ulid::Ulid::new()),
        ..QueueConfig::default()
    }
}

/// A queue config on the shared test Redis with a queue name of its own.
pub fn config(hint: &str) -> QueueConfig {
    QueueConfig {
        redis_url: redis_url(),
        ..config_on_nothing(hint)
    }
}

/// Poll until job `id` has status `want`; panics with the job's state after `within`.
pub async fn wait_for_status(q: &Queue, id: &str, want: JobStatus, within: Duration) -> Job {
    let t = Instant::now();
    loop {
        let j = q.get(id).await.expect("job readable");
        if j.status == want {
            return j;
        }
        assert!(
            t.elapsed() < within,
            "job {id} is {} not {want} after {within:?}: {j:?}",
            j.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many connections listen for `q`'s wake-ups (`PUBSUB NUMSUB`): a worker pool is up and
/// idle once its listener is among them. On a cluster each pool subscribes on one seed (the
/// first that answers), so the seeds' counts are added.
pub async fn wake_listeners(q: &Queue) -> u64 {
    let numsub = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(q.wake_channel())
        .clone();
    let count = |subs: Vec<(String, u64)>| subs.first().map_or(0, |s| s.1);
    match crate::RedisTarget::parse(&q.config().redis_url).expect("a valid Redis URL") {
        crate::RedisTarget::Node(_) => count(q.raw(&numsub).await.expect("PUBSUB NUMSUB")),
        crate::RedisTarget::Cluster(seeds) => {
            let mut n = 0;
            for seed in seeds {
                let mut c = redis::Client::open(seed)
                    .expect("seed URL")
                    .get_multiplexed_async_connection()
                    .await
                    .expect("seed answers");
                n += count(numsub.query_async(&mut c).await.expect("PUBSUB NUMSUB"));
            }
            n
        }
    }
}

/// Wait until `n` processes listen for `q`'s wake-ups (each has started, subscribed and, as it
/// claims right after subscribing, found its work), however slow the machine: up to 30 s.
pub async fn wait_listening(q: &Queue, n: u64) {
    let t = Instant::now();
    loop {
        let have = wake_listeners(q).await;
        if have >= n {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{have} of {n} workers listening"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
