//! `npanel-reload-load`: HTTP load and WebSocket watchers against a real `npanel serve` while
//! (a) SIGHUP reloads its configuration over and over, and (b) it is restarted through a
//! listening socket that outlives it (issue 10; figures in loadtests/RELOAD.md).
//!
//! This harness plays systemd's part: it binds the socket and starts each `npanel serve` with
//! it on fd 3 (`LISTEN_FDS=1`, `LISTEN_PID` = the server's pid). A restart is SIGTERM to the
//! running server and, at once, a new server on the same socket (as `systemctl restart` with
//! `npanel.socket` does, minus the wait for the old one to exit, which only adds backlog time).
//!
//! Load is open-loop: requests are due at a fixed rate and their latency counts from when they
//! were due, so a stall shows up as latency instead of as fewer requests. Each request is a new
//! connection (`Connection: close`), half `GET /healthz`, half `GET /api/jobs?limit=5` (Redis).
//! Watchers follow one `diagnostic` job each on `/api/jobs/{id}/live` and reconnect with
//! `?since=` when a server closes their socket; at the end each one's events are compared with
//! the job's events in the Redis stream (missed, duplicated).
//!
//! Phases: `steady` (baseline), `reload`, `restart` (the new process starts at once, beside the
//! draining one), `restart-seq` (the new one starts after the old one exited, as `systemctl
//! restart` does: the longest wait in the backlog).
//!
//! Settings (environment): `RATE` requests/s (200), `SECS` per phase (20), `HUP_MS` between
//! SIGHUPs (250), `RESTARTS` in the restart phases (4), `WATCHERS` (5), `PHASES`
//! (`steady,reload,restart,restart-seq`), `NPANEL_BIN` (else the release binary beside this one).

use futures::StreamExt;
use hyper::body::Bytes;
use loadtests::{env_u64, npanel_bin, pct, PrivateRedis};
use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use ws::client::blocking::HttpClient;
use ws::client::tungstenite::Message;

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    queue: queue::QueueConfig,
    listener: TcpListener,
    addr: SocketAddr,
    token: String,
}

fn config_text(data: &Path, q: &queue::QueueConfig, diag_limit: u32) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nlog = \"info\"\n\n[scheduler]\nenabled = false\n\n[host]\ncgroups = false\n\n[queue]\nname = \"{}\"\nredis_url = \"{}\"\nevents_maxlen = 200000\n\n[queue.limits]\ndiagnostic = {diag_limit}\n\n[api.rate_limit]\nper_ip_per_minute = 0\nper_account_per_minute = 0\n",
        data.display(),
        q.name,
        q.redis_url
    )
}

/// `npanel --config F serve` on the socket, as systemd starts it.
fn start_serve(s: &Setup) -> Child {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg("exec 3<&0 0</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$@\"")
        .arg("sh")
        .arg(npanel_bin())
        .arg("--config")
        .arg(&s.config)
        .arg("serve")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(
            s.listener.try_clone().expect("dup the socket"),
        )))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(s.dir.path().join("serve.log"))
                .expect("serve.log"),
        ));
    for (k, _) in std::env::vars() {
        if k.starts_with("NPANEL_") && k != "NPANEL_BIN" || k == "REDIS_URL" || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.spawn().expect("start npanel serve")
}

fn signal(c: &Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
}

/// The API client of the socket at `addr`, as `token` (one per load thread: it blocks).
fn client(addr: SocketAddr, token: &str) -> HttpClient {
    HttpClient::new(&format!("http://{addr}"), Some(token.to_string()))
        .expect("an http:// base")
        .with_timeout(Duration::from_secs(60))
}

/// One request on a new connection (`connection: close`: each request meets whichever server
/// holds the socket at that moment, as the restart phases measure): the status and body, or
/// the error.
fn http(c: &HttpClient, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let body = (!body.is_empty()).then(|| Bytes::from(body.to_string()));
    let r = c
        .request(method, path, &[("connection", "close")], body)
        .map_err(|e| e.to_string())?;
    Ok((
        r.status.as_u16(),
        String::from_utf8_lossy(&r.body).into_owned(),
    ))
}

/// What one phase's load saw.
#[derive(Default)]
struct LoadResult {
    sent: usize,
    failed: usize,
    errors: Vec<String>,
    /// Latencies in ms, from when each request was due.
    lat: Vec<f64>,
}

/// Run requests at `rate`/s until `stop`, on 64 client threads.
fn run_load(addr: SocketAddr, token: String, rate: u64, stop: Arc<AtomicBool>) -> LoadResult {
    let (tx, rx) = mpsc::channel::<(Instant, u64)>();
    let rx = Arc::new(Mutex::new(rx));
    let out = Arc::new(Mutex::new(LoadResult::default()));
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let (rx, out, token) = (rx.clone(), out.clone(), token.clone());
            std::thread::spawn(move || {
                let c = client(addr, &token);
                loop {
                    let next = rx.lock().unwrap().recv();
                    let Ok((due, i)) = next else { return };
                    let path = if i.is_multiple_of(2) {
                        "/healthz"
                    } else {
                        "/api/jobs?limit=5"
                    };
                    let r = http(&c, "GET", path, "");
                    let ms = due.elapsed().as_secs_f64() * 1000.0;
                    let mut o = out.lock().unwrap();
                    o.sent += 1;
                    o.lat.push(ms);
                    match r {
                        Ok((200, _)) => {}
                        Ok((st, body)) => {
                            o.failed += 1;
                            o.errors.push(format!("{path}: {st} {body}"));
                        }
                        Err(e) => {
                            o.failed += 1;
                            o.errors.push(format!("{path}: {e}"));
                        }
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut i = 0u64;
    while !stop.load(Ordering::Acquire) {
        let due = start + period * i as u32;
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        if tx.send((due, i)).is_err() {
            break;
        }
        i += 1;
    }
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    Arc::try_unwrap(out)
        .ok()
        .expect("workers done")
        .into_inner()
        .unwrap()
}

/// What one watcher saw: (seq, type) of its events, its first snapshot's seq, reconnects.
type Watched = (String, Vec<(String, String)>, String, usize);

async fn watch(addr: SocketAddr, token: String, id: String) -> Watched {
    let api = ws::client::HttpClient::new(&format!("http://{addr}"), Some(token))
        .expect("an http:// base");
    let mut since: Option<String> = None;
    let mut first = None;
    let mut events = Vec::new();
    let mut reconnects = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(600) {
        let mut ws = match api
            .connect_ws(&format!("/api/jobs/{id}/live"), since.as_deref())
            .await
        {
            Ok(ws) => ws,
            Err(e) => {
                eprintln!("watcher {id}: connect failed: {e}; retrying");
                reconnects += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while let Some(m) = ws.next().await {
            let Ok(Message::Text(t)) = m else { break };
            let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
            let seq = v["seq"].as_str().unwrap_or_default().to_string();
            let kind = v["type"].as_str().unwrap_or_default().to_string();
            if kind == "snapshot" {
                first.get_or_insert(seq.clone());
            } else {
                events.push((seq.clone(), kind.clone()));
            }
            since = Some(seq);
            if kind == "complete" {
                return (id, events, first.unwrap_or_default(), reconnects);
            }
        }
        reconnects += 1;
    }
    (id, events, first.unwrap_or_default(), reconnects)
}

fn seq_key(s: &str) -> (u64, u64) {
    let (a, b) = s.split_once('-').unwrap_or((s, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

/// Watcher results against the Redis stream: (expected, seen, missed, duplicated, reconnects).
fn compare(q: &queue::QueueConfig, watched: &[Watched]) -> (usize, usize, usize, usize, usize) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let all = rt.block_on(async {
        queue::Queue::new(q.clone())
            .expect("queue")
            .events_since("0", 1_000_000)
            .await
            .expect("events")
    });
    let (mut exp, mut seen, mut missed, mut dup, mut rec) = (0, 0, 0, 0, 0);
    for (id, events, first, reconnects) in watched {
        let want: Vec<&str> = all
            .iter()
            .filter(|e| &e.job_id == id && seq_key(&e.seq) > seq_key(first))
            .map(|e| e.seq.as_str())
            .collect();
        let got: Vec<&str> = events.iter().map(|(s, _)| s.as_str()).collect();
        let uniq: std::collections::BTreeSet<&str> = got.iter().copied().collect();
        exp += want.len();
        seen += got.len();
        missed += want.iter().filter(|s| !uniq.contains(**s)).count();
        dup += got.len() - uniq.len();
        rec += reconnects;
    }
    (exp, seen, missed, dup, rec)
}

fn enqueue_watched(s: &Setup, n: u64, secs: u64) -> Vec<String> {
    let c = client(s.addr, &s.token);
    (0..n)
        .map(|_| {
            let body = format!(
                r#"{{"kind":"diagnostic","payload":{{"duration_ms":{},"steps":{}}}}}"#,
                secs * 1000,
                secs * 2
            );
            let (st, b) = http(&c, "POST", "/api/jobs", &body).expect("enqueue");
            assert_eq!(st, 202, "{b}");
            serde_json::from_str::<Value>(&b).expect("json")["id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect()
}

fn report(name: &str, r: &mut LoadResult, ws: (usize, usize, usize, usize, usize), extra: &str) {
    r.lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "| {name} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {extra} |",
        r.sent,
        r.failed,
        pct(&r.lat, 50.0),
        pct(&r.lat, 99.0),
        r.lat.last().copied().unwrap_or(f64::NAN),
        ws.0,
        ws.1,
        ws.2,
        ws.3,
        ws.4
    );
    for e in r.errors.iter().take(5) {
        println!("|   error: {e} |");
    }
}

fn main() {
    let rate = env_u64("RATE", 200);
    let secs = env_u64("SECS", 20);
    let hup_ms = env_u64("HUP_MS", 250);
    let restarts = env_u64("RESTARTS", 4);
    let watchers = env_u64("WATCHERS", 5);
    let phases =
        std::env::var("PHASES").unwrap_or_else(|_| "steady,reload,restart,restart-seq".into());
    let redis = PrivateRedis::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let queue = queue::QueueConfig {
        redis_url: redis.url.clone(),
        name: format!("reload-{}", ulid::Ulid::new()),
        ..queue::QueueConfig::default()
    };
    let config = dir.path().join("npanel.toml");
    std::fs::write(&config, config_text(&data, &queue, 10)).expect("config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut setup = Setup {
        dir,
        config,
        queue,
        listener,
        addr,
        token: String::new(),
    };
    let mut serve = start_serve(&setup);
    let tok = Command::new(npanel_bin())
        .arg("--config")
        .arg(&setup.config)
        .args(["token", "--role", "admin", "--subject", "reload-load"])
        .env_remove("NPANEL_API__JWT_SECRET")
        .output()
        .expect("npanel token");
    setup.token = String::from_utf8_lossy(&tok.stdout).trim().to_string();
    // Up when it answers (connections wait in the backlog meanwhile).
    let t = Instant::now();
    let probe = client(addr, &setup.token);
    while http(&probe, "GET", "/healthz", "").map(|r| r.0) != Ok(200) {
        assert!(t.elapsed() < Duration::from_secs(60), "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "npanel-reload-load: {} req/s, {secs} s per phase, {watchers} WebSocket watchers, binary {}",
        rate,
        npanel_bin().display()
    );
    println!("| phase | requests | failed | p50 ms | p99 ms | max ms | ws events expected | seen | missed | duplicated | reconnects | notes |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for phase in phases.split(',') {
        let ids = enqueue_watched(&setup, watchers, secs + 2);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let handles: Vec<_> = ids
            .iter()
            .map(|id| rt.spawn(watch(addr, setup.token.clone(), id.clone())))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (stop, token) = (stop.clone(), setup.token.clone());
            std::thread::spawn(move || run_load(addr, token, rate, stop))
        };
        let t0 = Instant::now();
        let mut note = String::new();
        match phase {
            "reload" => {
                let mut n = 0u64;
                while t0.elapsed() < Duration::from_secs(secs) {
                    // Alternate two valid files so every reload applies a change.
                    let limit = if n.is_multiple_of(2) { 11 } else { 10 };
                    std::fs::write(&setup.config, config_text(&data, &setup.queue, limit))
                        .expect("config");
                    signal(&serve, nix::sys::signal::Signal::SIGHUP);
                    n += 1;
                    std::thread::sleep(Duration::from_millis(hup_ms));
                }
                note = format!("{n} SIGHUPs, one every {hup_ms} ms");
            }
            "restart" => {
                let every = Duration::from_secs(secs) / (restarts as u32 + 1);
                let mut old = Vec::new();
                for _ in 0..restarts {
                    std::thread::sleep(every);
                    signal(&serve, nix::sys::signal::Signal::SIGTERM);
                    old.push(std::mem::replace(&mut serve, start_serve(&setup)));
                }
                while t0.elapsed() < Duration::from_secs(secs) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let mut clean = 0;
                for mut c in old {
                    if c.wait().map(|s| s.success()).unwrap_or(false) {
                        clean += 1;
                    }
                }
                note = format!("{restarts} restarts (SIGTERM + new process on the socket), {clean} clean exits");
            }
            "restart-seq" => {
                // `systemctl restart` exactly: the next process starts once the old one exited.
                let every = Duration::from_secs(secs) / (restarts as u32 + 1);
                let mut clean = 0;
                let mut gaps = Vec::new();
                for _ in 0..restarts {
                    std::thread::sleep(every);
                    let t = Instant::now();
                    signal(&serve, nix::sys::signal::Signal::SIGTERM);
                    if serve.wait().map(|s| s.success()).unwrap_or(false) {
                        clean += 1;
                    }
                    serve = start_serve(&setup);
                    while http(&probe, "GET", "/healthz", "").map(|r| r.0) != Ok(200) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    gaps.push(t.elapsed().as_millis());
                }
                while t0.elapsed() < Duration::from_secs(secs) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                note = format!("{restarts} sequential restarts (old exits, then new starts), {clean} clean exits, SIGTERM to answering again: {gaps:?} ms");
            }
            "steady" => {
                std::thread::sleep(Duration::from_secs(secs));
                note = "no reload, no restart (baseline)".into();
            }
            other => eprintln!("unknown phase {other}"),
        }
        // Let the watched jobs finish, then stop the load.
        let watched: Vec<Watched> = rt.block_on(async {
            let mut v = Vec::new();
            for h in handles {
                v.push(h.await.expect("watcher"));
            }
            v
        });
        stop.store(true, Ordering::Release);
        let mut r = load.join().expect("load");
        let ws = compare(&setup.queue, &watched);
        report(phase, &mut r, ws, &note);
    }
    signal(&serve, nix::sys::signal::Signal::SIGTERM);
    let _ = serve.wait();
    if std::env::var_os("KEEP_LOG").is_some() {
        let _ = std::fs::copy(
            setup.dir.path().join("serve.log"),
            std::env::temp_dir().join("npanel-reload-load-serve.log"),
        );
    }
    drop(redis);
}
