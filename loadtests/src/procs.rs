//! The processes a chaos or soak run drives, as real child processes: a private `redis-server`
//! that can be SIGKILLed and restarted on the same data dir and socket (append-only file on,
//! like the one `npanel serve` starts for itself), `npanel serve`, any number of
//! `npanel worker`s sharing its Redis, store and host root, and the privileged agent under its
//! watchdog. Everything is reached over HTTP, WebSocket, Unix sockets and signals only.
//!
//! Why not the API driver's `Server` (`serve.rs`): a chaos run needs several processes on one
//! environment, each killed and restarted many times, with their logs kept for the report.

use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::serve::{clean_env, Http};
use crate::{free_port, npanel_bin};
use ws::client::{ClientError, HttpClient};

/// Errors of the process harness.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// A binary could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    /// A process did not come up in time.
    #[error("{what} did not become ready within {secs} s; last log lines:\n{log}")]
    NotReady {
        what: String,
        secs: u64,
        log: String,
    },
    /// A command answered with a failure.
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    /// Files.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Seconds since the Unix epoch, with ms.
pub fn unix_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A line on stderr with the time, so a run's progress can be followed and matched to logs.
pub fn log(msg: impl AsRef<str>) {
    let t = unix_secs();
    eprintln!(
        "[{:02}:{:02}:{:02}] {}",
        (t as u64 / 3600) % 24,
        (t as u64 / 60) % 60,
        t as u64 % 60,
        msg.as_ref()
    );
}

/// The last `n` lines of a file (empty when unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Lines of the files in `paths` containing any of `needles`, prefixed by the file name, at
/// most `max` of them: the server logs around a failure.
pub fn grep_logs(paths: &[PathBuf], needles: &[String], max: usize) -> Vec<String> {
    let mut out = Vec::new();
    for p in paths {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let Ok(s) = std::fs::read_to_string(p) else {
            continue;
        };
        for l in s.lines() {
            if needles.iter().any(|n| l.contains(n.as_str())) {
                out.push(format!("{name}: {l}"));
                if out.len() >= max {
                    return out;
                }
            }
        }
    }
    out
}

/// One child process with a name and a log file; SIGKILLed on drop if still running.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    pub started: Instant,
}

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs (reaps it when not).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL and reap.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. True when it exited by itself.
    pub fn stop(&mut self, grace: Duration) -> bool {
        if !self.alive() {
            return true;
        }
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.sigkill();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.alive() {
            self.sigkill();
        }
    }
}

fn spawn_logged(mut cmd: Command, name: &str, log: &Path) -> Result<Proc, ProcError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| ProcError::Io(log.display().to_string(), e))?;
    let f2 = f
        .try_clone()
        .map_err(|e| ProcError::Io(log.display().to_string(), e))?;
    cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
    let child = cmd.spawn().map_err(|source| ProcError::Spawn {
        what: name.to_string(),
        source,
    })?;
    Ok(Proc {
        name: name.to_string(),
        child,
        log: log.to_path_buf(),
        started: Instant::now(),
    })
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A private `redis-server` on a Unix socket in `dir`, append-only file on (`appendfsync
/// everysec`, the default), no RDB snapshots: the settings of the Redis `npanel serve` starts for
/// itself (`src/local_redis.rs`). It can be SIGKILLed and restarted on the same dir and socket.
pub struct Redis {
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub url: String,
    pub proc: Option<Proc>,
    restarts: u32,
}

impl Redis {
    /// Starts one in `dir` (created) and waits until it answers.
    pub fn start(dir: &Path) -> Result<Redis, ProcError> {
        std::fs::create_dir_all(dir).map_err(|e| ProcError::Io(dir.display().to_string(), e))?;
        let sock = dir.join("redis.sock");
        let mut r = Redis {
            dir: dir.to_path_buf(),
            url: format!("redis+unix://{}", sock.display()),
            sock,
            proc: None,
            restarts: 0,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<(), ProcError> {
        let _ = std::fs::remove_file(&self.sock);
        let bin = std::env::var("NPANEL_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut c = Command::new(&bin);
        c.args(["--port", "0", "--unixsocketperm", "700"])
            .arg("--unixsocket")
            .arg(&self.sock)
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--save", ""])
            .args(["--maxclients", "20000"]);
        let p = spawn_logged(
            c,
            &format!("redis-server ({bin})"),
            &self.dir.join("redis.log"),
        )?;
        self.proc = Some(p);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&self.sock).is_err() {
            if Instant::now() > deadline {
                return Err(ProcError::NotReady {
                    what: "redis-server".into(),
                    secs: 30,
                    log: tail(&self.dir.join("redis.log"), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Its pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// SIGKILL (no shutdown, no final fsync: what a crash or the OOM killer does).
    pub fn sigkill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.sigkill();
        }
    }

    /// Starts it again on the same dir and socket (it loads the append-only file) and waits
    /// until it answers; returns when that was.
    pub fn restart(&mut self) -> Result<Instant, ProcError> {
        self.sigkill();
        self.restarts += 1;
        self.spawn()?;
        Ok(Instant::now())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The nPanel stack

/// What a [`Stack`] is started with.
#[derive(Clone, Debug, Default)]
pub struct StackOpts {
    /// Extra `NPANEL_*` settings for every process (serve and workers).
    pub env: Vec<(String, String)>,
    /// `NPANEL_LOG` (default `info`: the logs are what a failure report quotes).
    pub log: Option<String>,
}

/// `npanel serve` + `npanel worker`s on one private Redis, one data dir (SQLite store, host
/// root) and one queue name. Logs are kept in `dir` (`serve-<n>.log`, `worker<i>-<n>.log`).
pub struct Stack {
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub port: u16,
    pub base: String,
    pub ws_base: String,
    pub bearer: String,
    pub token: String,
    pub redis: Redis,
    pub serve: Option<Proc>,
    pub workers: Vec<Option<Proc>>,
    /// Every log file written so far (for the failure report).
    pub logs: Arc<Mutex<Vec<PathBuf>>>,
    generation: u32,
}

impl Stack {
    /// A stack in `dir` (created): starts Redis, mints an admin token, does not start serve.
    pub fn new(dir: &Path, opts: &StackOpts) -> Result<Stack, ProcError> {
        std::fs::create_dir_all(dir).map_err(|e| ProcError::Io(dir.display().to_string(), e))?;
        let redis = Redis::start(&dir.join("redis"))?;
        let port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("NPANEL_LISTEN".into(), format!("127.0.0.1:{port}")),
            (
                "NPANEL_DATA_DIR".into(),
                dir.join("data").display().to_string(),
            ),
            ("REDIS_URL".into(), redis.url.clone()),
            (
                "NPANEL_QUEUE__NAME".into(),
                format!("chaos-{}", ulid::Ulid::new()),
            ),
            (
                "NPANEL_API__JWT_SECRET".into(),
                format!("chaos-{}-{}", ulid::Ulid::new(), ulid::Ulid::new()),
            ),
            ("NPANEL_WORKERS__SHUTDOWN_GRACE_SECS".into(), "2".into()),
            (
                "NPANEL_LOG".into(),
                opts.log.clone().unwrap_or_else(|| "info".into()),
            ),
        ];
        for (k, v) in &opts.env {
            env.retain(|(k2, _)| k2 != k);
            env.push((k.clone(), v.clone()));
        }
        let mut s = Stack {
            dir: dir.to_path_buf(),
            env,
            port,
            base: format!("http://127.0.0.1:{port}"),
            ws_base: format!("ws://127.0.0.1:{port}"),
            bearer: String::new(),
            token: String::new(),
            redis,
            serve: None,
            workers: Vec::new(),
            logs: Arc::new(Mutex::new(vec![dir.join("redis").join("redis.log")])),
            generation: 0,
        };
        let out = s.command(&[
            "token",
            "--role",
            "admin",
            "--ttl",
            "96h",
            "--subject",
            "chaos",
        ])?;
        s.token = out.trim().to_string();
        s.bearer = format!("Bearer {}", s.token);
        Ok(s)
    }

    /// The data dir (`NPANEL_DATA_DIR`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The queue name.
    pub fn queue_name(&self) -> String {
        self.env_get("NPANEL_QUEUE__NAME").unwrap_or_default()
    }

    /// A setting of the environment.
    pub fn env_get(&self, k: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(k2, _)| k2 == k)
            .map(|(_, v)| v.clone())
    }

    /// Runs `npanel ARGS` with the stack's environment; its stdout, or the failure.
    pub fn command(&self, args: &[&str]) -> Result<String, ProcError> {
        let mut c = Command::new(npanel_bin());
        c.args(args);
        clean_env(&mut c, &self.env);
        c.env("NPANEL_URL", &self.base);
        if !self.token.is_empty() {
            c.env("NPANEL_TOKEN", &self.token);
        }
        let out = c.output().map_err(|source| ProcError::Spawn {
            what: format!("npanel {}", args.join(" ")),
            source,
        })?;
        if !out.status.success() {
            return Err(ProcError::Command {
                what: format!("npanel {}", args.join(" ")),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    fn npanel(
        &mut self,
        sub: &str,
        label: &str,
        extra: &[(String, String)],
    ) -> Result<Proc, ProcError> {
        self.generation += 1;
        let log = self.dir.join(format!("{label}-{}.log", self.generation));
        self.logs.lock().unwrap().push(log.clone());
        let mut c = Command::new(npanel_bin());
        c.arg(sub);
        clean_env(&mut c, &self.env);
        c.envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        spawn_logged(c, &format!("npanel {sub} ({label})"), &log)
    }

    /// Starts `npanel serve` and waits for `/readyz`.
    pub async fn start_serve(&mut self, http: &Http) -> Result<(), ProcError> {
        let p = self.npanel("serve", "serve", &[])?;
        let log = p.log.clone();
        self.serve = Some(p);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = request(
                http,
                &self.base,
                "",
                Method::GET,
                "/readyz",
                None,
                Duration::from_secs(2),
            )
            .await
            {
                if r.status == StatusCode::OK {
                    return Ok(());
                }
            }
            let dead = self.serve.as_mut().map(|p| !p.alive()).unwrap_or(true);
            if dead || Instant::now() > deadline {
                return Err(ProcError::NotReady {
                    what: "npanel serve".into(),
                    secs: 90,
                    log: tail(&log, 30),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts (or restarts) worker `i` (`npanel worker`, same environment). It is ready when
    /// it has connected to Redis; the run does not wait for that (a worker that is slow to
    /// come up just claims later).
    pub fn start_worker(&mut self, i: usize, extra: &[(String, String)]) -> Result<u32, ProcError> {
        while self.workers.len() <= i {
            self.workers.push(None);
        }
        if let Some(mut old) = self.workers[i].take() {
            old.sigkill();
        }
        let p = self.npanel("worker", &format!("worker{i}"), extra)?;
        let pid = p.pid();
        self.workers[i] = Some(p);
        Ok(pid)
    }

    /// SIGKILLs worker `i`; its pid, when it was running.
    pub fn kill_worker(&mut self, i: usize) -> Option<u32> {
        let p = self.workers.get_mut(i)?.as_mut()?;
        let pid = p.pid();
        p.sigkill();
        self.workers[i] = None;
        Some(pid)
    }

    /// `(name, pid)` of every running process under test.
    pub fn pids(&mut self) -> Vec<(String, u32)> {
        let mut v = Vec::new();
        if let Some(p) = self.serve.as_mut() {
            if p.alive() {
                v.push(("serve".to_string(), p.pid()));
            }
        }
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Some(p) = w.as_mut() {
                if p.alive() {
                    v.push((format!("worker{i}"), p.pid()));
                }
            }
        }
        if let Some(pid) = self.redis.pid() {
            v.push(("redis".to_string(), pid));
        }
        v
    }

    /// The serve process's pid.
    pub fn serve_pid(&self) -> Option<u32> {
        self.serve.as_ref().map(Proc::pid)
    }

    /// Every log written so far.
    pub fn log_files(&self) -> Vec<PathBuf> {
        self.logs.lock().unwrap().clone()
    }

    /// Stops everything: workers and serve with SIGTERM (SIGKILL after 15 s), then Redis.
    pub fn stop(&mut self) {
        for w in self.workers.iter_mut().flatten() {
            w.stop(Duration::from_secs(15));
        }
        self.workers.clear();
        if let Some(mut s) = self.serve.take() {
            s.stop(Duration::from_secs(15));
        }
        if let Some(mut p) = self.redis.proc.take() {
            p.stop(Duration::from_secs(5));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// One answer.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub body: Bytes,
    /// Send to last body byte.
    pub ms: f64,
    /// `Retry-After`, in seconds, when given.
    pub retry_after: Option<f64>,
}

impl Resp {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// The `error` code of an error body.
    pub fn code(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReqError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("transport: {0}")]
    Transport(String),
}

/// One request with a deadline for the whole answer (`bearer` is the whole `Authorization`
/// value, empty for none), on `http`'s connections.
pub async fn request(
    http: &Http,
    base: &str,
    bearer: &str,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    limit: Duration,
) -> Result<Resp, ReqError> {
    let t0 = Instant::now();
    let client = HttpClient::with_pool(base, None, http.clone())
        .map_err(|e| ReqError::Transport(e.to_string()))?
        .with_timeout(limit);
    let auth = [("authorization", bearer)];
    let headers: &[(&str, &str)] = if bearer.is_empty() { &[] } else { &auth };
    let r = match tokio::time::timeout(limit, client.request(method.as_str(), path, headers, body))
        .await
    {
        Err(_) | Ok(Err(ClientError::Timeout { .. })) => return Err(ReqError::Timeout(limit)),
        Ok(Err(e)) => return Err(ReqError::Transport(format!("{e:?}"))),
        Ok(Ok(r)) => r,
    };
    Ok(Resp {
        status: r.status,
        retry_after: r
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok()),
        body: r.body,
        ms: t0.elapsed().as_secs_f64() * 1000.0,
    })
}

/// The stack's API, recording every request's latency and outcome for the metrics.
#[derive(Clone)]
pub struct Api {
    pub http: Http,
    pub base: String,
    pub bearer: String,
    pub rec: crate::metrics::Recorder,
    /// Deadline of one request (the API's own timeout is 30 s; we wait a little longer).
    pub limit: Duration,
}

impl Api {
    /// For `stack`, recording into `rec`.
    pub fn new(http: Http, stack: &Stack, rec: crate::metrics::Recorder) -> Api {
        Api {
            http,
            base: stack.base.clone(),
            bearer: stack.bearer.clone(),
            rec,
            limit: Duration::from_secs(35),
        }
    }

    /// One request, recorded.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Resp, ReqError> {
        let r = request(
            &self.http,
            &self.base,
            &self.bearer,
            method,
            path,
            body.map(Bytes::from),
            self.limit,
        )
        .await;
        self.rec.record(&r);
        r
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Result<Resp, ReqError> {
        self.call(Method::GET, path, None).await
    }

    /// POST a JSON body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<Resp, ReqError> {
        self.call(Method::POST, path, Some(body.to_string())).await
    }
}

/// Imports `packages/` (the example packages, `basic` among them) and activates them.
pub fn import_packages(stack: &Stack) -> Result<(), ProcError> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packages");
    let dir = if here.is_dir() {
        here
    } else {
        PathBuf::from("packages")
    };
    stack.command(&[
        "packages",
        "import",
        &dir.display().to_string(),
        "--activate",
    ])?;
    Ok(())
}

/// `dir` for a run's output: `--out`, else `target/chaos/<name>-<unix time>`.
pub fn out_dir(given: Option<&str>, name: &str) -> PathBuf {
    let d = match given {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from("target/chaos").join(format!("{name}-{}", unix_secs() as u64)),
    };
    let _ = std::fs::create_dir_all(&d);
    d.canonicalize().unwrap_or(d)
}
