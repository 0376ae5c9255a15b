//! `npanel-api-load`: the API and WebSocket benchmarks of issue 3. A release binary, not a test.
//!
//! Starts real `npanel serve` processes (the release binary next to this one, or `NPANEL_BIN`)
//! on `127.0.0.1:<free port>`, one fresh server per phase (own temp data dir, own queue name),
//! all on one Redis (`REDIS_URL`, else a private `redis-server` on a Unix socket), and measures:
//!
//! - `api`: enqueue (`POST /api/jobs`, a 0-ms `diagnostic`) and read (`GET /api/jobs/{id}` of a
//!   recently enqueued job), alternating, open loop at `API_RATE` req/s in total (default 500)
//!   for `API_SECS` (20) after `API_WARMUP_SECS` (2) not counted. A pacer thread sends on a fixed
//!   timetable; each latency runs from the request's *scheduled* send time to its last body byte
//!   (no coordinated omission). Keep-alive connections (hyper's pool), `TCP_NODELAY`.
//! - `ws`: `WS_CONNS` (1000) sockets on `/api/events/live` (the all-jobs stream: every socket gets
//!   every event, so each event is fanned out `WS_CONNS` times), then `WS_JOB_RATE` (10) jobs/s
//!   for `WS_SECS` (15), each a `diagnostic` of `WS_JOB_MS` (2000) ms in `WS_STEPS` (4) steps
//!   (status, stage, progress and complete events). Latency = receive time (wall clock, ms) −
//!   the ms part of the event's `seq` (the Redis stream id, stamped by Redis at `XADD`; same
//!   machine). Server RSS per connection = (VmRSS with the sockets − VmRSS before) / sockets.
//! - `idle`: a fresh server left alone `IDLE_SETTLE_SECS` (10), then its CPU (utime + stime from
//!   `/proc/<pid>/stat`) over `IDLE_SECS` (60) and its VmRSS.
//!
//! - `eta`: the ETA a user watches. `ETA_RUNS` (3) `diagnostic` jobs of `ETA_JOB_MS` (20000)
//!   ms in `ETA_STEPS` (40) steps, one after the other, each watched over
//!   `/api/jobs/{id}/live` and polled with `GET /api/jobs/{id}` every 250 ms. Every progress
//!   message and poll after 10 % done predicts a finish (its receipt time + `eta_seconds`); its
//!   error is the distance to the real finish (receipt of the `complete` message) as a share
//!   of the job's length (`finished_at − started_at`). Target: every one within ±10 %.
//!   With `ETA_RESTORE=<archive>` the jobs are restores of that archive instead (a cPanel
//!   `cpmove` from `npanel-cpmove-fixture`, say), each into a fresh account the phase creates
//!   first (package `etabench`, no limits), watched over `/api/restore/{id}/live`.
//!
//! `PHASES=api,ws,idle,eta` selects phases (`eta` only when named: it takes a minute). During each load phase the CPU of the server, of
//! redis-server (found by `INFO server` `process_id`, when it runs on this machine) and of this
//! client are sampled, to show which one limits. Prints markdown tables; stops the servers and
//! deletes their Redis keys by itself; a watchdog ends everything after `MAX_SECS` (900).

use futures::StreamExt;
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use loadtests::serve::Http;
use loadtests::PrivateRedis;
use loadtests::{cpu_ticks, env_u64, free_port, npanel_bin, pct, phase_on};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use queue::{Queue, QueueConfig};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use ws::client::tungstenite::protocol::WebSocketConfig;
use ws::client::tungstenite::Message;
use ws::client::HttpClient;

/// Linux `USER_HZ`: the unit of utime/stime in `/proc/<pid>/stat` (100 on every mainstream arch).
const TICKS_PER_SEC: f64 = 100.0;

/// The running server's pid, for the watchdog.
static SERVER_PID: AtomicU32 = AtomicU32::new(0);

fn log(msg: impl AsRef<str>) {
    eprintln!("[api-load] {}", msg.as_ref());
}

// ---------------------------------------------------------------------------------------------
// /proc

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS").unwrap_or(0)
}

/// CPU use of a few processes over an interval, in % of one core.
struct CpuMeter {
    t0: Instant,
    start: Vec<(String, u32, Option<u64>)>,
}

impl CpuMeter {
    fn start(pids: &[(&str, Option<u32>)]) -> CpuMeter {
        CpuMeter {
            t0: Instant::now(),
            start: pids
                .iter()
                .filter_map(|(n, p)| p.map(|p| (n.to_string(), p, cpu_ticks(p))))
                .collect(),
        }
    }

    fn stop(&self) -> Vec<(String, f64)> {
        let secs = self.t0.elapsed().as_secs_f64();
        self.start
            .iter()
            .filter_map(|(n, p, t0)| {
                let d = cpu_ticks(*p)?.checked_sub((*t0)?)?;
                Some((n.clone(), d as f64 / TICKS_PER_SEC / secs * 100.0))
            })
            .collect()
    }
}

fn cpu_str(v: &[(String, f64)]) -> String {
    v.iter()
        .map(|(n, c)| format!("{n} {c:.0} %"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Redis

struct RedisSide {
    url: String,
    /// Any queue handle, for INFO and key cleanup.
    q: Queue,
    /// redis-server's pid when it runs on this machine.
    pid: Option<u32>,
}

impl RedisSide {
    async fn new(url: String) -> RedisSide {
        let q = queue_handle(&url, "apiload-probe");
        q.ping().await.expect("Redis answers");
        let info: String = q
            .raw(redis::cmd("INFO").arg("server"))
            .await
            .unwrap_or_default();
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.contains("redis"))
            });
        RedisSide { url, q, pid }
    }

    async fn commands(&self) -> u64 {
        let s: String = self
            .q
            .raw(redis::cmd("INFO").arg("stats"))
            .await
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Delete every key of queue `name`.
    async fn cleanup(&self, name: &str) {
        let q = queue_handle(&self.url, name);
        let keys: Vec<String> = q
            .raw(redis::cmd("KEYS").arg(format!("{}*", q.prefix())))
            .await
            .unwrap_or_default();
        for chunk in keys.chunks(1000) {
            let _: Result<i64, _> = q.raw(redis::cmd("UNLINK").arg(chunk)).await;
        }
    }
}

fn queue_handle(url: &str, name: &str) -> Queue {
    Queue::new(QueueConfig {
        redis_url: url.to_string(),
        name: name.to_string(),
        pool_size: 1,
        ..QueueConfig::default()
    })
    .expect("queue handle")
}

// ---------------------------------------------------------------------------------------------
// The server

struct Server {
    child: Option<Child>,
    pid: u32,
    base: String,
    /// `Bearer <admin token>`.
    bearer: String,
    token: String,
    queue_name: String,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// The API client of this server, as admin, on the driver's pool.
    fn client(&self, http: &Http) -> HttpClient {
        HttpClient::with_pool(&self.base, Some(self.token.clone()), http.clone())
            .expect("an http:// base")
    }

    /// Start `npanel serve` for `phase`; returns once `/readyz` answers 200.
    async fn start(redis_url: &str, phase: &str, ws_max: u64, http: &Http) -> Server {
        let bin = npanel_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let queue_name = format!("apiload-{phase}-{}", ulid::Ulid::new());
        let secret = format!("apiload-{}", ulid::Ulid::new());
        let log_path = dir.path().join("serve.log");
        let mut env: Vec<(String, String)> = vec![
            ("NPANEL_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("NPANEL_DATA_DIR".into(), dir.path().display().to_string()),
            ("REDIS_URL".into(), redis_url.into()),
            ("NPANEL_QUEUE__NAME".into(), queue_name.clone()),
            ("NPANEL_QUEUE__MAX_PENDING".into(), "100000".into()),
            ("NPANEL_QUEUE__LIMITS__DIAGNOSTIC".into(), "64".into()),
            ("NPANEL_WS__MAX_CONNECTIONS".into(), ws_max.to_string()),
            ("NPANEL_API__JWT_SECRET".into(), secret),
            ("NPANEL_WORKERS__SHUTDOWN_GRACE_SECS".into(), "2".into()),
        ];
        if let Ok(l) = std::env::var("SERVE_LOG") {
            env.push(("NPANEL_LOG".into(), l));
        }
        let clean = |c: &mut Command| {
            // Nothing of the caller's NPANEL_* configuration leaks into the measured server.
            for (k, _) in std::env::vars() {
                if k.starts_with("NPANEL_") || k == "RUST_LOG" {
                    c.env_remove(k);
                }
            }
            c.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        };
        let mut tok = Command::new(&bin);
        tok.args([
            "token",
            "--role",
            "admin",
            "--ttl",
            "2h",
            "--subject",
            "api-load",
        ]);
        clean(&mut tok);
        let out = tok
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        assert!(
            out.status.success(),
            "npanel token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let logf = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log file"))
            .stderr(logf);
        clean(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let pid = child.id();
        SERVER_PID.store(pid, Ordering::SeqCst);
        let mut s = Server {
            child: Some(child),
            pid,
            base: format!("http://127.0.0.1:{port}"),
            bearer: format!("Bearer {token}"),
            token,
            queue_name,
            log_path,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((StatusCode::OK, _)) = call(http, &s, Method::GET, "/readyz", None).await {
                break;
            }
            let exited = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let l = std::fs::read_to_string(&s.log_path).unwrap_or_default();
                panic!("npanel serve ({phase}) did not become ready ({exited:?}). Log:\n{l}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log(format!(
            "{phase}: npanel serve pid {pid} ready on {} (queue {})",
            s.base, s.queue_name
        ));
        s
    }

    fn rss(&self) -> u64 {
        rss_kib(self.pid)
    }

    /// WARN/ERROR lines of the server's log.
    fn log_problems(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_string)
            .collect()
    }

    /// SIGTERM, then SIGKILL after 15 s.
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    log(format!(
                        "npanel serve {} ignored SIGTERM; killing",
                        self.pid
                    ));
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        SERVER_PID.store(0, Ordering::SeqCst);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request; `(status, body)` or a transport error.
async fn call(
    http: &Http,
    s: &Server,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), String> {
    request(http, &s.base, &s.bearer, method, path, body).await
}

/// One request (no deadline of our own beyond a long one): `(status, body)` or a transport
/// error.
async fn request(
    http: &Http,
    base: &str,
    bearer: &str,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), String> {
    loadtests::procs::request(
        http,
        base,
        bearer,
        method,
        path,
        body,
        Duration::from_secs(120),
    )
    .await
    .map(|r| (r.status, r.body))
    .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Phase 1: API latency

struct ApiReport {
    rate: u64,
    secs: u64,
    enq: Vec<f64>,
    read: Vec<f64>,
    enq_err: u64,
    read_err: u64,
    errors: Vec<String>,
    achieved: f64,
    pacer_lag_p99: f64,
    cpu: Vec<(String, f64)>,
    cmds_per_req: f64,
    problems: usize,
}

struct Sample {
    read: bool,
    ms: f64,
    err: Option<String>,
    measured: bool,
}

async fn api_phase(redis: &RedisSide, http: &Http) -> ApiReport {
    let rate = env_u64("API_RATE", 500).max(1);
    let secs = env_u64("API_SECS", 20).max(1);
    let warm = env_u64("API_WARMUP_SECS", 2);
    let mut srv = Server::start(&redis.url, "api", 1100, http).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = rate * (secs + warm);
    let warm_n = rate * warm;
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let ids: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let handle = tokio::runtime::Handle::current();
    let base: Arc<str> = srv.base.clone().into();
    let bearer: Arc<str> = srv.bearer.clone().into();
    let meter: Arc<Mutex<Option<(CpuMeter, Instant)>>> = Arc::new(Mutex::new(None));
    let pids = [
        ("npanel serve", Some(srv.pid)),
        ("redis-server", redis.pid),
        ("client", Some(std::process::id())),
    ];
    let cmds0 = Arc::new(AtomicU64::new(0));
    let lag = {
        let (http, ids, meter, cmds0) = (http.clone(), ids.clone(), meter.clone(), cmds0.clone());
        let redis_q = redis.q.clone();
        // The pacer: an OS thread with a fine-grained sleep (tokio's timer ticks by the ms, which
        // would be a large part of a 2 ms period), spawning each request on the runtime.
        tokio::task::spawn_blocking(move || {
            let t0 = Instant::now() + Duration::from_millis(100);
            let mut lags = Vec::with_capacity(total as usize);
            let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
            for i in 0..total {
                let at = t0 + period * i as u32;
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                if i == warm_n {
                    *meter.lock().unwrap() = Some((CpuMeter::start(&pids), Instant::now()));
                    let (q, c) = (redis_q.clone(), cmds0.clone());
                    handle.spawn(async move {
                        let s: String = q
                            .raw(redis::cmd("INFO").arg("stats"))
                            .await
                            .unwrap_or_default();
                        let n = s
                            .lines()
                            .find_map(|l| l.strip_prefix("total_commands_processed:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        c.store(n, Ordering::SeqCst);
                    });
                }
                if i >= warm_n {
                    lags.push(at.elapsed().as_secs_f64() * 1000.0);
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let read_id = if i % 2 == 1 {
                    let v = ids.lock().unwrap();
                    (!v.is_empty()).then(|| v[(rng % v.len() as u64) as usize].clone())
                } else {
                    None
                };
                // 100 accounts: per-account ordering is exercised without serialising.
                let body = Bytes::from(format!(
                    r#"{{"kind":"diagnostic","payload":{{"duration_ms":0,"steps":0}},"account":"acct{}"}}"#,
                    i % 100
                ));
                let (http, ids, tx, base, bearer) = (
                    http.clone(),
                    ids.clone(),
                    tx.clone(),
                    base.clone(),
                    bearer.clone(),
                );
                handle.spawn(async move {
                    let read = read_id.is_some();
                    let fut = async {
                        match &read_id {
                            Some(id) => {
                                let p = format!("/api/jobs/{id}");
                                request(&http, &base, &bearer, Method::GET, &p, None).await
                            }
                            None => {
                                request(
                                    &http,
                                    &base,
                                    &bearer,
                                    Method::POST,
                                    "/api/jobs",
                                    Some(body),
                                )
                                .await
                            }
                        }
                    };
                    let r = tokio::time::timeout(Duration::from_secs(10), fut).await;
                    let ms = at.elapsed().as_secs_f64() * 1000.0;
                    let err = match r {
                        Err(_) => Some("timeout after 10 s".to_string()),
                        Ok(Err(e)) => Some(e),
                        Ok(Ok((st, b))) if !st.is_success() => {
                            Some(format!("{st}: {}", String::from_utf8_lossy(&b)))
                        }
                        Ok(Ok((_, b))) => {
                            if !read {
                                if let Some(id) = serde_json::from_slice::<serde_json::Value>(&b)
                                    .ok()
                                    .and_then(|v| v["id"].as_str().map(str::to_string))
                                {
                                    let mut v = ids.lock().unwrap();
                                    if v.len() >= 256 {
                                        v.remove(0);
                                    }
                                    v.push(id);
                                }
                            }
                            None
                        }
                    };
                    let _ = tx.send(Sample {
                        read,
                        ms,
                        err,
                        measured: i >= warm_n,
                    });
                });
            }
            lags
        })
    };
    let mut r = ApiReport {
        rate,
        secs,
        enq: Vec::new(),
        read: Vec::new(),
        enq_err: 0,
        read_err: 0,
        errors: Vec::new(),
        achieved: 0.0,
        pacer_lag_p99: 0.0,
        cpu: Vec::new(),
        cmds_per_req: 0.0,
        problems: 0,
    };
    let lags = lag.await.expect("pacer");
    // The pacer's own copy of `tx` is gone; the channel closes when the last request answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last_done = Instant::now();
    loop {
        let s = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(_) => {
                r.errors
                    .push("requests still open 30 s after the last send".into());
                break;
            }
        };
        last_done = Instant::now();
        if !s.measured {
            continue;
        }
        match (s.read, s.err) {
            (true, None) => r.read.push(s.ms),
            (false, None) => r.enq.push(s.ms),
            (read, Some(e)) => {
                if read {
                    r.read_err += 1;
                } else {
                    r.enq_err += 1;
                }
                if r.errors.len() < 5 {
                    r.errors.push(e);
                }
            }
        }
    }
    let cmds1 = redis.commands().await;
    if let Some((m, t)) = meter.lock().unwrap().take() {
        r.cpu = m.stop();
        let n = (rate * secs) as f64;
        r.achieved = n / (last_done - t).as_secs_f64();
        r.cmds_per_req = cmds1.saturating_sub(cmds0.load(Ordering::SeqCst)) as f64 / n;
    }
    r.pacer_lag_p99 = pct(&sorted(lags), 99.0);
    r.enq = sorted(r.enq);
    r.read = sorted(r.read);
    let p = srv.log_problems();
    r.problems = p.len();
    for l in p.iter().take(3) {
        log(format!("api: server log: {l}"));
    }
    srv.stop();
    redis.cleanup(&srv.queue_name).await;
    r
}

// ---------------------------------------------------------------------------------------------
// Phase 2: WebSocket fan-out

#[derive(Default)]
struct WatcherOut {
    lats: Vec<f64>,
    /// The event (`seq`) of each latency.
    seqs: Vec<(u64, u64)>,
    snapshots: u64,
    connect_err: Option<String>,
    lost: bool,
}

/// `"key":"value"` in a compact JSON object, without parsing all of it.
fn json_str<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = text.find(&pat)? + pat.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

async fn watcher(
    client: HttpClient,
    stop: CancellationToken,
    ready: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
) -> WatcherOut {
    let mut out = WatcherOut::default();
    let permit = gate.acquire_owned().await.expect("gate");
    // A 4 KiB read buffer: tungstenite's default (128 KiB) is zero-filled on every read, which
    // made the client spend most of its CPU in memset (perf) and slowed every delivery.
    let cfg = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let mut ws = match tokio::time::timeout(
        Duration::from_secs(30),
        client.connect_ws_with("/api/events/live", None, Some(cfg)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            out.connect_err = Some(e.to_string());
            return out;
        }
        Err(_) => {
            out.connect_err = Some("connect timed out".into());
            return out;
        }
    };
    let mut permit = Some(permit);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let now = now_ms();
                    if json_str(&t, "type") == Some("snapshot") {
                        out.snapshots += 1;
                        if out.snapshots == 1 {
                            permit.take();
                            ready.fetch_add(1, Ordering::SeqCst);
                        }
                    } else if let Some((ms, n)) = json_str(&t, "seq")
                        .and_then(|s| s.split_once('-'))
                        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
                    {
                        out.lats.push(now - ms as f64);
                        out.seqs.push((ms, n));
                    }
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    out.lost = true;
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    out
}

struct WsReport {
    conns: u64,
    open: usize,
    connect_errs: usize,
    first_connect_err: Option<String>,
    lost: usize,
    lat: Vec<f64>,
    /// Per event: latency of the first socket to get it, and last minus first.
    first: Vec<f64>,
    spread: Vec<f64>,
    delivered: u64,
    expected: u64,
    lag_snapshots: u64,
    rss0: u64,
    rss_conn: u64,
    rss_peak: u64,
    rss_after: u64,
    connect_secs: f64,
    jobs: u64,
    events: u64,
    cpu: Vec<(String, f64)>,
    problems: usize,
}

async fn ws_phase(redis: &RedisSide, http: &Http) -> WsReport {
    let conns = env_u64("WS_CONNS", 1000);
    let job_rate = env_u64("WS_JOB_RATE", 10).max(1);
    let secs = env_u64("WS_SECS", 15);
    let job_ms = env_u64("WS_JOB_MS", 2000);
    let steps = env_u64("WS_STEPS", 4);
    let mut srv = Server::start(&redis.url, "ws", conns + 100, http).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss0 = srv.rss();
    let stop = CancellationToken::new();
    let ready = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let client = srv.client(http);
    let t_conn = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            tokio::spawn(watcher(
                client.clone(),
                stop.clone(),
                ready.clone(),
                gate.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::SeqCst) < conns as usize
        && Instant::now() < deadline
        && !handles.iter().all(|h| h.is_finished())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Failed connections finish early: stop waiting for them.
        let failed = handles.iter().filter(|h| h.is_finished()).count();
        if ready.load(Ordering::SeqCst) + failed >= conns as usize {
            break;
        }
    }
    let connect_secs = t_conn.elapsed().as_secs_f64();
    let open = ready.load(Ordering::SeqCst);
    log(format!(
        "ws: {open}/{conns} sockets open with their snapshot in {connect_secs:.1} s"
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_conn = srv.rss();

    // The event load.
    let meter = CpuMeter::start(&[
        ("npanel serve", Some(srv.pid)),
        ("redis-server", redis.pid),
        ("client", Some(std::process::id())),
    ]);
    let n_jobs = job_rate * secs;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / job_rate));
    let mut rss_peak = rss_conn;
    let mut enq_err = 0;
    for i in 0..n_jobs {
        tick.tick().await;
        let body = Bytes::from(format!(
            r#"{{"kind":"diagnostic","payload":{{"duration_ms":{job_ms},"steps":{steps}}},"account":"ws{}"}}"#,
            i % 100
        ));
        rss_peak = rss_peak.max(srv.rss());
        match call(http, &srv, Method::POST, "/api/jobs", Some(body)).await {
            Ok((st, _)) if st.is_success() => {}
            _ => enq_err += 1,
        }
    }
    let drain = Instant::now() + Duration::from_millis(job_ms + 3000);
    while Instant::now() < drain {
        rss_peak = rss_peak.max(srv.rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = meter.stop();
    let rss_after = srv.rss();
    stop.cancel();
    let mut r = WsReport {
        conns,
        open,
        connect_errs: 0,
        first_connect_err: None,
        lost: 0,
        lat: Vec::new(),
        first: Vec::new(),
        spread: Vec::new(),
        delivered: 0,
        expected: 0,
        lag_snapshots: 0,
        rss0,
        rss_conn,
        rss_peak,
        rss_after,
        connect_secs,
        jobs: n_jobs - enq_err,
        events: 0,
        cpu,
        problems: 0,
    };
    let mut per_event = std::collections::HashMap::<(u64, u64), (f64, f64)>::new();
    for h in handles {
        let Ok(Ok(o)) = tokio::time::timeout(Duration::from_secs(30), h).await else {
            r.lost += 1;
            continue;
        };
        if let Some(e) = o.connect_err {
            r.connect_errs += 1;
            r.first_connect_err.get_or_insert(e);
            continue;
        }
        r.lost += usize::from(o.lost);
        r.lag_snapshots += o.snapshots.saturating_sub(1);
        r.delivered += o.lats.len() as u64;
        for (seq, l) in o.seqs.iter().zip(&o.lats) {
            let e = per_event.entry(*seq).or_insert((f64::MAX, f64::MIN));
            e.0 = e.0.min(*l);
            e.1 = e.1.max(*l);
        }
        r.lat.extend(o.lats);
    }
    let q = queue_handle(&redis.url, &srv.queue_name);
    r.events = q
        .raw(redis::cmd("XLEN").arg(format!("{}events", q.prefix())))
        .await
        .unwrap_or(0);
    r.expected = r.events * r.open as u64;
    r.lat = sorted(r.lat);
    r.first = sorted(per_event.values().map(|e| e.0).collect());
    r.spread = sorted(per_event.values().map(|e| e.1 - e.0).collect());
    let p = srv.log_problems();
    r.problems = p.len();
    for l in p.iter().take(3) {
        log(format!("ws: server log: {l}"));
    }
    srv.stop();
    redis.cleanup(&srv.queue_name).await;
    r
}

// ---------------------------------------------------------------------------------------------
// Phase 3: idle

struct IdleReport {
    secs: u64,
    cpu: f64,
    rss: u64,
    hwm: u64,
    cmds: u64,
    redis_cpu: Option<f64>,
}

async fn idle_phase(redis: &RedisSide, http: &Http) -> IdleReport {
    let secs = env_u64("IDLE_SECS", 60).max(1);
    let settle = env_u64("IDLE_SETTLE_SECS", 10);
    let mut srv = Server::start(&redis.url, "idle", 1100, http).await;
    tokio::time::sleep(Duration::from_secs(settle)).await;
    log(format!("idle: measuring {secs} s"));
    let c0 = redis.commands().await;
    let meter = CpuMeter::start(&[("serve", Some(srv.pid)), ("redis", redis.pid)]);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let cpu = meter.stop();
    let cmds = redis.commands().await.saturating_sub(c0 + 1);
    let r = IdleReport {
        secs,
        cpu: cpu
            .iter()
            .find(|c| c.0 == "serve")
            .map(|c| c.1)
            .unwrap_or(f64::NAN),
        redis_cpu: cpu.iter().find(|c| c.0 == "redis").map(|c| c.1),
        rss: srv.rss(),
        hwm: status_kib(srv.pid, "VmHWM").unwrap_or(0),
        cmds,
    };
    srv.stop();
    redis.cleanup(&srv.queue_name).await;
    r
}

// ---------------------------------------------------------------------------------------------

fn raise_nofile(need: u64) {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < need => {
            let want = need.min(hard);
            match setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
                Ok(()) => log(format!("raised RLIMIT_NOFILE {soft} -> {want}")),
                Err(e) => log(format!("cannot raise RLIMIT_NOFILE from {soft}: {e}")),
            }
        }
        Ok(_) => {}
        Err(e) => log(format!("getrlimit: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// ETA as the user sees it

/// One watched job: prediction errors (share of the job's length) from the stream [0] and
/// from polling [1], and how many messages after 10 % carried no ETA.
struct EtaRun {
    errors: [Vec<f64>; 2],
    missing: [usize; 2],
    len: f64,
}

async fn eta_phase(redis: &RedisSide, http: &Http) -> Vec<EtaRun> {
    let runs = env_u64("ETA_RUNS", 3);
    let job_ms = env_u64("ETA_JOB_MS", 20_000);
    let steps = env_u64("ETA_STEPS", 40);
    let restore = std::env::var("ETA_RESTORE").ok().filter(|a| !a.is_empty());
    let srv = Server::start(&redis.url, "eta", 100, http).await;
    if restore.is_some() {
        let post = |path: &'static str, body: String| {
            let srv = &srv;
            async move {
                let (st, b) = call(http, srv, Method::POST, path, Some(Bytes::from(body)))
                    .await
                    .expect(path);
                assert!(
                    st.is_success(),
                    "{path}: {st} {}",
                    String::from_utf8_lossy(&b)
                );
            }
        };
        post("/api/packages", r#"{"id":"etabench"}"#.into()).await;
        post("/api/packages/etabench/activate", String::new()).await;
    }
    let mut out = Vec::new();
    for run in 0..runs {
        let (live, st, b) = match &restore {
            Some(archive) => {
                let acct = format!("etar{run}");
                let body = serde_json::json!({"id": acct, "package": "etabench", "domain": format!("{acct}.example")});
                let (st, b) = call(
                    http,
                    &srv,
                    Method::POST,
                    "/api/accounts",
                    Some(Bytes::from(body.to_string())),
                )
                .await
                .expect("create account");
                assert!(
                    st.is_success(),
                    "create account: {st} {}",
                    String::from_utf8_lossy(&b)
                );
                let v: serde_json::Value = serde_json::from_slice(&b).expect("account JSON");
                wait_final(http, &srv, v["job"]["id"].as_str().expect("job id")).await;
                let body = serde_json::json!({"archive": archive, "account": acct});
                let (st, b) = call(
                    http,
                    &srv,
                    Method::POST,
                    "/api/restore",
                    Some(Bytes::from(body.to_string())),
                )
                .await
                .expect("restore");
                ("restore", st, b)
            }
            None => {
                let body = Bytes::from(format!(
                    r#"{{"kind":"diagnostic","payload":{{"duration_ms":{job_ms},"steps":{steps}}},"account":"eta{run}"}}"#
                ));
                let (st, b) = call(http, &srv, Method::POST, "/api/jobs", Some(body))
                    .await
                    .expect("enqueue");
                ("jobs", st, b)
            }
        };
        assert!(
            st.is_success(),
            "enqueue: {st} {}",
            String::from_utf8_lossy(&b)
        );
        let v: serde_json::Value = serde_json::from_slice(&b).expect("job JSON");
        let id = v["id"].as_str().expect("job id").to_string();
        let mut ws = srv
            .client(http)
            .connect_ws(&format!("/api/{live}/{id}/live"), None)
            .await
            .expect("live socket");
        // Poll beside the stream, as a page that refreshes would.
        let done = CancellationToken::new();
        let poller = {
            let (http, done, path) = (http.clone(), done.clone(), format!("/api/jobs/{id}"));
            let (base, bearer) = (srv.base.clone(), srv.bearer.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                while !done.is_cancelled() {
                    tick.tick().await;
                    if let Ok((StatusCode::OK, b)) =
                        request(&http, &base, &bearer, Method::GET, &path, None).await
                    {
                        let j: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
                        if j["status"] == "running" {
                            seen.push((
                                Instant::now(),
                                j["progress_percent"].as_f64().unwrap_or(0.0),
                                j["eta_seconds"].as_f64(),
                            ));
                        }
                    }
                }
                seen
            })
        };
        let mut stream = Vec::new();
        let finish = loop {
            let t = match ws.next().await {
                Some(Ok(Message::Text(t))) => t,
                // Pings and pongs keep a long job's socket alive.
                Some(Ok(_)) => continue,
                _ => panic!("live socket of {id} ended before the job did"),
            };
            let m: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
            match m["type"].as_str() {
                Some("progress") | Some("stage") => stream.push((
                    Instant::now(),
                    m["progress_percent"].as_f64().unwrap_or(0.0),
                    m["eta_seconds"].as_f64(),
                )),
                Some("complete") => break Instant::now(),
                _ => {}
            }
        };
        done.cancel();
        let polled = poller.await.unwrap_or_default();
        let (_, b) = call(http, &srv, Method::GET, &format!("/api/jobs/{id}"), None)
            .await
            .expect("job");
        let j: serde_json::Value = serde_json::from_slice(&b).expect("job JSON");
        let ms = |k: &str| {
            j[k].as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis())
                .expect("job times")
        };
        let len = (ms("finished_at") - ms("started_at")) as f64 / 1000.0;
        let mut r = EtaRun {
            errors: [Vec::new(), Vec::new()],
            missing: [0, 0],
            len,
        };
        for (k, seen) in [stream, polled].into_iter().enumerate() {
            for (at, percent, eta) in seen {
                if !(10.0..100.0).contains(&percent) {
                    continue;
                }
                match eta {
                    Some(e) => {
                        // Seconds the job really had left when this was received.
                        let left = finish.saturating_duration_since(at).as_secs_f64();
                        let off = e - left;
                        if std::env::var_os("ETA_TRACE").is_some() {
                            log(format!(
                                "eta: {} {percent:5.1} % eta {e:5.1} s, {left:5.1} s before the finish: off by {off:+.2} s",
                                ["ws ", "get"][k],
                            ));
                        }
                        r.errors[k].push(off.abs() / len);
                    }
                    None => r.missing[k] += 1,
                }
            }
        }
        log(format!(
            "eta: job {id}: {len:.1} s, {} messages and {} polls after 10 %",
            r.errors[0].len() + r.missing[0],
            r.errors[1].len() + r.missing[1]
        ));
        out.push(r);
    }
    let mut srv = srv;
    srv.stop();
    redis.cleanup(&srv.queue_name).await;
    out
}

/// Poll `GET /api/jobs/{id}` until the job is final (the account a restore goes into).
async fn wait_final(http: &Http, srv: &Server, id: &str) {
    let path = format!("/api/jobs/{id}");
    for _ in 0..600 {
        if let Ok((StatusCode::OK, b)) = call(http, srv, Method::GET, &path, None).await {
            let j: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            match j["status"].as_str() {
                Some("succeeded") => return,
                Some("failed") | Some("cancelled") => panic!("job {id}: {j}"),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not finish in 60 s");
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✅"
    } else {
        "❌"
    }
}

fn main() {
    let max_secs = env_u64("MAX_SECS", 900);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(max_secs));
        log(format!("MAX_SECS={max_secs} reached: stopping"));
        let pid = SERVER_PID.load(Ordering::SeqCst);
        if pid != 0 {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        std::process::exit(2);
    });
    let conns = env_u64("WS_CONNS", 1000);
    // Client sockets, plus the server's (it inherits the limit): sockets + Redis + files.
    raise_nofile(conns * 2 + 1024);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
    // Request tasks still parked on closed connections must not delay the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
}

async fn run() {
    let (url, private) = match std::env::var("REDIS_URL") {
        Ok(u) if !u.is_empty() => (u, None),
        _ => {
            let r = PrivateRedis::start();
            (r.url.clone(), Some(r))
        }
    };
    let redis = RedisSide::new(url).await;
    log(format!(
        "Redis {} (pid {:?}); server binary {}",
        if private.is_some() {
            "private, Unix socket"
        } else {
            "from REDIS_URL"
        },
        redis.pid,
        npanel_bin().display()
    ));
    let http = loadtests::serve::http();
    let api = if phase_on("api") {
        Some(api_phase(&redis, &http).await)
    } else {
        None
    };
    let ws = if phase_on("ws") {
        Some(ws_phase(&redis, &http).await)
    } else {
        None
    };
    let idle = if phase_on("idle") {
        Some(idle_phase(&redis, &http).await)
    } else {
        None
    };

    let eta = if std::env::var("PHASES").is_ok_and(|p| p.split(',').any(|x| x.trim() == "eta")) {
        Some(eta_phase(&redis, &http).await)
    } else {
        None
    };

    println!("| figure | measured | target | |\n|---|---|---|---|");
    if let Some(runs) = &eta {
        for (name, pick) in [
            ("WebSocket progress messages", 0usize),
            ("`GET /api/jobs/{id}` every 250 ms", 1),
        ] {
            let mut all: Vec<f64> = runs
                .iter()
                .flat_map(|r| r.errors[pick].iter().copied())
                .collect();
            all.sort_by(f64::total_cmp);
            let missing: usize = runs.iter().map(|r| r.missing[pick]).sum();
            let worst = all.last().copied().unwrap_or(f64::NAN);
            println!(
                "| ETA error after 10 % done, {name} ({} predictions over {} jobs of {:.1}–{:.1} s; {missing} without an ETA) | median {:.1} %, p90 {:.1} %, worst {:.1} % of the job's length | every one ≤ 10 % | {} |",
                all.len(),
                runs.len(),
                runs.iter().map(|r| r.len).fold(f64::INFINITY, f64::min),
                runs.iter().map(|r| r.len).fold(0.0, f64::max),
                pct(&all, 50.0) * 100.0,
                pct(&all, 90.0) * 100.0,
                worst * 100.0,
                mark(worst <= 0.10 && missing == 0)
            );
        }
    }
    if let Some(a) = &api {
        let half = a.rate / 2;
        for (name, route, v, errs) in [
            ("enqueue", "POST /api/jobs", &a.enq, a.enq_err),
            ("read", "GET /api/jobs/{id}", &a.read, a.read_err),
        ] {
            let p99 = pct(v, 99.0);
            println!(
                "| API {name} p50 / p99 ({route}, ~{half}/s, {} s) | {:.2} / {:.2} ms ({} ok, {errs} errors) | p99 ≤ 10 ms | {} |",
                a.secs,
                pct(v, 50.0),
                p99,
                v.len(),
                mark(p99 <= 10.0 && errs == 0)
            );
        }
        println!(
            "| API open-loop rate achieved | {:.0} req/s of {} | {} req/s | {} |",
            a.achieved,
            a.rate,
            a.rate,
            mark(a.achieved >= a.rate as f64 * 0.98)
        );
    }
    if let Some(w) = &ws {
        let p99 = pct(&w.lat, 99.0);
        println!(
            "| WS event→client p50 / p99 ({} sockets on /api/events/live) | {:.1} / {:.1} ms (max {:.1}) | p99 ≤ 50 ms | {} |",
            w.conns,
            pct(&w.lat, 50.0),
            p99,
            w.lat.last().copied().unwrap_or(f64::NAN),
            mark(p99 <= 50.0)
        );
        let per = |rss: u64| rss.saturating_sub(w.rss0) as f64 / w.open.max(1) as f64;
        let worst = per(w.rss_conn).max(per(w.rss_peak));
        println!(
            "| WS server RSS per connection (idle sockets / peak under events) | {:.1} / {:.1} KiB | ≤ 64 KiB | {} |",
            per(w.rss_conn),
            per(w.rss_peak),
            mark(worst <= 64.0 && w.open as u64 == w.conns)
        );
        println!(
            "| WS messages delivered | {} of {} ({} events × {} sockets; {} lag snapshots, {} sockets lost, {} refused) | all | {} |",
            w.delivered,
            w.expected,
            w.events,
            w.open,
            w.lag_snapshots,
            w.lost,
            w.connect_errs,
            mark(w.delivered == w.expected && w.lost == 0 && w.connect_errs == 0)
        );
    }
    if let Some(i) = &idle {
        println!(
            "| Idle npanel serve CPU ({} s) | {:.3} % of one core | ≤ 0.2 % | {} |",
            i.secs,
            i.cpu,
            mark(i.cpu <= 0.2)
        );
        println!(
            "| Idle npanel serve RSS | {:.1} MiB (peak {:.1} MiB) | ≤ 40 MiB | {} |",
            i.rss as f64 / 1024.0,
            i.hwm as f64 / 1024.0,
            mark(i.rss as f64 / 1024.0 <= 40.0)
        );
    }

    println!("\n| where it went | |\n|---|---|");
    if let Some(a) = &api {
        println!(
            "| API phase CPU (% of one core; 2 cores in all) | {} |",
            cpu_str(&a.cpu)
        );
        println!(
            "| API phase Redis commands per request | {:.1} |",
            a.cmds_per_req
        );
        println!(
            "| API pacer lag p99 (client send delay, included above) | {:.2} ms |",
            a.pacer_lag_p99
        );
        println!("| API server log WARN/ERROR lines | {} |", a.problems);
        for e in &a.errors {
            println!("| API error sample | {} |", e.replace('|', "/"));
        }
    }
    if let Some(w) = &ws {
        println!(
            "| WS phase CPU during events (% of one core) | {} |",
            cpu_str(&w.cpu)
        );
        println!(
            "| WS load | {} jobs, {} events in {:.0} s; sockets opened in {:.2} s |",
            w.jobs,
            w.events,
            env_u64("WS_SECS", 15) as f64,
            w.connect_secs
        );
        println!(
            "| WS server RSS: before / {} sockets / peak / after events | {:.1} / {:.1} / {:.1} / {:.1} MiB |",
            w.open,
            w.rss0 as f64 / 1024.0,
            w.rss_conn as f64 / 1024.0,
            w.rss_peak as f64 / 1024.0,
            w.rss_after as f64 / 1024.0
        );
        println!(
            "| WS per event: first socket's latency p50 / p99; last − first socket p50 / p99 | {:.1} / {:.1} ms; {:.1} / {:.1} ms |",
            pct(&w.first, 50.0),
            pct(&w.first, 99.0),
            pct(&w.spread, 50.0),
            pct(&w.spread, 99.0)
        );
        println!("| WS server log WARN/ERROR lines | {} |", w.problems);
        if let Some(e) = &w.first_connect_err {
            println!("| WS connect error sample | {} |", e.replace('|', "/"));
        }
    }
    if let Some(i) = &idle {
        println!(
            "| Idle: Redis commands from the server | {} in {} s ({:.2}/s); redis-server CPU {} |",
            i.cmds,
            i.secs,
            i.cmds as f64 / i.secs as f64,
            i.redis_cpu
                .map(|c| format!("{c:.3} %"))
                .unwrap_or_else(|| "n/a".into())
        );
    }
    drop(private);
}
