//! Test support: a real server on 127.0.0.1:0 over a real Redis (private per test binary), real
//! workers with test handlers, and small HTTP/WebSocket clients.
#![allow(dead_code)]

use api::{limit::RateLimitConfig, ApiConfig, AppState, Hub, HubConfig};
use futures::{SinkExt, StreamExt};
use hyper::body::Bytes;
use hyper::StatusCode;
use queue::{testing, JobKind, Queue, QueueConfig};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use workers::{JobContext, JobError, Pool, PoolConfig, Registry};
use ws::client::tungstenite::Message;
use ws::client::{ClientError, HttpClient, WsStream};

pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret";

pub struct Opts {
    pub registry: Registry,
    pub workers: bool,
    pub api: ApiConfig,
    pub hub: HubConfig,
    pub queue: Option<QueueConfig>,
    /// Run the store on PostgreSQL (`NPANEL_TEST_POSTGRES_URL`) instead of SQLite.
    pub postgres: bool,
    /// Register the real `provision` handler, running the host operations in-process under
    /// this root (the embedded default).
    pub provision_root: Option<std::path::PathBuf>,
    /// The accounts' database server (`databases.url`) for the API and the `provision`
    /// handler; `None`: not configured.
    pub databases_url: Option<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            registry: Registry::builtin().register(JobKind::Restore, restore_handler),
            workers: true,
            api: ApiConfig {
                rate_limit: RateLimitConfig {
                    per_ip_per_minute: 0,
                    per_account_per_minute: 0,
                },
                // The health check after a restore runs as soon as the restore has finished.
                health_check_after_restore_secs: 0,
                ..ApiConfig::default()
            },
            hub: HubConfig::default(),
            queue: None,
            postgres: false,
            provision_root: None,
            databases_url: None,
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub queue: Queue,
    pub state: AppState,
    pub store: store::Store,
    stop: CancellationToken,
    _store: store::testing::TestStore,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A restore-like handler: the five restore stages, bytes in each, a log line per stage.
/// Payload `archive` = "steps:<n>:<ms per step>" tunes it (default 4 steps of 20 ms).
pub async fn restore_handler(ctx: JobContext) -> Result<Value, JobError> {
    let p: queue::Restore = ctx.payload()?;
    let mut parts = p.archive.split(':').skip(1);
    let steps: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(4);
    let ms: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    for stage in [
        "extracting",
        "validating",
        "creating_accounts",
        "restoring_data",
        "finalizing",
    ] {
        ctx.log(format!("stage {stage}"));
        for i in 0..=steps {
            ctx.progress(stage, i * 1_000_000, steps * 1_000_000);
            ctx.sleep(Duration::from_millis(ms)).await?;
        }
    }
    Ok(serde_json::json!({"restored": true}))
}

pub async fn start(o: Opts) -> Server {
    let cfg = o.queue.unwrap_or_else(|| testing::config("api"));
    let stop = CancellationToken::new();
    let ts = if o.postgres {
        store::testing::postgres()
            .await
            .expect("NPANEL_TEST_POSTGRES_URL is set (checked by the caller)")
    } else {
        store::testing::sqlite().await
    };
    seed(&ts).await;
    let mut registry = o.registry;
    let databases = o
        .databases_url
        .as_deref()
        .map(|u| store::HostedDatabases::new(u).unwrap());
    if let Some(root) = &o.provision_root {
        let host: agent::Host = agent::LocalHost::without_cgroups(root).unwrap().into();
        let host = std::sync::Arc::new(host);
        let provisioner = workers::provision::Provisioner::with_databases(
            ts.store.clone(),
            host.clone(),
            workers::provision::ProvisionConfig::default(),
            databases.clone(),
        );
        registry = registry.with_provisioning(provisioner.clone());
        registry = registry.with_backup(workers::backup::BackupMaker::new(
            ts.store.clone(),
            host.clone(),
        ));
        registry = registry.with_quota_sweep(workers::quota::QuotaSweeper::new(
            ts.store.clone(),
            host.clone(),
            workers::quota::SweepConfig {
                access_logs: root.join("var/log/domlogs"),
                mail_log: root.join("var/log/exim4/mainlog"),
                parallel: 4,
                databases_url: std::env::var("NPANEL_TEST_MYSQL_URL").ok(),
                security_default: store::SecurityPolicy::Strict,
            },
        ));
        // The real restore, unless the test brought its own.
        if !registry.kinds().contains(&queue::JobKind::Restore) {
            registry = registry.with_restore(workers::restore::Restorer::with_host(
                ts.store.clone(),
                host.clone(),
                root.join("backups"),
                std::net::Ipv4Addr::LOCALHOST,
                store::SecurityPolicy::Strict,
                o.databases_url.clone(),
                Some(provisioner),
            ));
        }
        if !registry.kinds().contains(&queue::JobKind::HealthCheck) {
            let health = workers::health::HealthChecker::new(
                ts.store.clone(),
                host,
                o.databases_url.clone(),
            );
            registry = registry.register(queue::JobKind::HealthCheck, move |ctx| {
                workers::health::run(ctx, health.clone())
            });
        }
    }
    let queue = Queue::new(cfg)
        .unwrap()
        .with_available_kinds(registry.kinds());
    if o.workers {
        let pool = Pool::new(
            queue.clone(),
            registry,
            PoolConfig {
                backoff_base: Duration::from_millis(50),
                ..PoolConfig::default()
            },
        );
        tokio::spawn(pool.run(stop.clone()));
    }
    let hub = Hub::start(queue.clone(), o.hub, stop.clone());
    let state = AppState::new(
        queue.clone(),
        hub,
        ts.store.clone(),
        SECRET,
        o.api,
        api::metrics::install_prometheus(),
    )
    .with_databases(databases);
    state.spawn_background(stop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(api::serve(listener, state.clone(), stop.clone()));
    Server {
        addr,
        queue,
        state,
        store: ts.store.clone(),
        stop,
        _store: ts,
    }
}

/// The hierarchy every test starts with: package `basic` (active, 1000 MB); resellers `r1` and
/// `r2` (10 accounts each); customers `a1`, `a2` under `r1`, `b1` under `r2`, `solo` under the
/// root admin.
pub async fn seed(s: &store::Store) {
    use store::{AccountType, Allowance, Limits, NewAccount, NewPackage, PackageStatus};
    s.create_package(NewPackage {
        id: "basic".into(),
        limits: Limits {
            disk_mb: Some(1000),
            bandwidth_mb: Some(10_000),
            ..Limits::default()
        },
        features: vec!["ssh".into(), "php".into()],
        ..NewPackage::default()
    })
    .await
    .unwrap();
    s.set_package_status("basic", PackageStatus::Active)
        .await
        .unwrap();
    for r in ["r1", "r2"] {
        s.create_account(&NewAccount {
            id: r.into(),
            kind: Some(AccountType::Reseller),
            allowance: Some(Allowance {
                max_accounts: 10,
                disk_mb: None,
                bandwidth_mb: None,
            }),
            ..NewAccount::default()
        })
        .await
        .unwrap();
    }
    for (c, parent) in [
        ("a1", Some("r1")),
        ("a2", Some("r1")),
        ("b1", Some("r2")),
        ("solo", None),
    ] {
        s.create_account(&NewAccount {
            id: c.into(),
            kind: Some(AccountType::Customer),
            parent: parent.map(Into::into),
            package: Some("basic".into()),
            domain: Some(format!("{c}.example")),
            ..NewAccount::default()
        })
        .await
        .unwrap();
    }
}

/// False (with one line saying so) when a PostgreSQL variant of a test cannot run.
pub fn postgres_available() -> bool {
    let ok = std::env::var("NPANEL_TEST_POSTGRES_URL").is_ok_and(|u| !u.is_empty());
    if !ok {
        eprintln!("skipped on PostgreSQL: NPANEL_TEST_POSTGRES_URL is not set");
    }
    ok
}

pub fn token(role: api::Role, account: Option<&str>, reseller: Option<&str>) -> String {
    let c = api::auth::Claims::new(
        "test",
        role,
        account.map(Into::into),
        reseller.map(Into::into),
        Duration::from_secs(600),
    )
    .unwrap();
    api::auth::Auth::new(SECRET).mint(&c).unwrap()
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub json: Value,
}

impl Server {
    pub async fn req(
        &self,
        method: &str,
        path: &str,
        tok: Option<&str>,
        body: Option<&str>,
    ) -> Resp {
        self.req_headers(method, path, tok, body, &[]).await
    }

    pub async fn req_headers(
        &self,
        method: &str,
        path: &str,
        tok: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let r = self
            .client(tok)
            .request(
                method,
                path,
                headers,
                body.map(|b| Bytes::from(b.to_string())),
            )
            .await
            .unwrap();
        let (status, headers, bytes) = (r.status, r.headers, r.body);
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Resp {
            status,
            headers,
            json,
        }
    }

    /// The audit records `query` finds (`action=x&account=y`, admin view, newest first), once
    /// there are at least `n` (records reach the store through the outbox, a moment later).
    pub async fn audit_at_least(&self, query: &str, n: usize) -> Vec<Value> {
        let admin = token(api::Role::Admin, None, None);
        let t = std::time::Instant::now();
        loop {
            let r = self
                .req("GET", &format!("/api/audit?{query}"), Some(&admin), None)
                .await;
            let recs = r.json["records"].as_array().cloned().unwrap_or_default();
            if recs.len() >= n {
                return recs;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{} records for {query}, wanted {n}",
                recs.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the audit outbox is empty: every record written so far (routes write theirs
    /// before they answer) is in the store, so a count read now is final — no window to wait
    /// out for a late extra record.
    pub async fn audit_delivered(&self) {
        let key = format!("{}outbox:{}", self.queue.prefix(), api::audit::OUTBOX);
        let t = std::time::Instant::now();
        loop {
            let n: u64 = self.queue.raw(redis::cmd("XLEN").arg(&key)).await.unwrap();
            if n == 0 {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{n} audit records still in the outbox"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Enqueue as admin; returns the id.
    pub async fn enqueue(&self, body: Value) -> String {
        let admin = token(api::Role::Admin, None, None);
        let r = self
            .req("POST", "/api/jobs", Some(&admin), Some(&body.to_string()))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
        r.json["id"].as_str().unwrap().to_string()
    }

    pub async fn wait_final(&self, id: &str) -> queue::Job {
        let t = std::time::Instant::now();
        loop {
            let j = self.queue.get(id).await.unwrap();
            if j.status.is_final() {
                return j;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "job {id} still {}",
                j.status
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The API client of this server (a fresh pool), as `tok`.
    pub fn client(&self, tok: Option<&str>) -> HttpClient {
        HttpClient::new(&format!("http://{}", self.addr), tok.map(str::to_string)).unwrap()
    }

    /// Open a WebSocket; `Err(status, body)` when the upgrade is refused.
    pub async fn ws(&self, path: &str, tok: Option<&str>) -> Result<Ws, (u16, Value)> {
        match self.client(tok).connect_ws(path, None).await {
            Ok(s) => Ok(Ws(s)),
            Err(ClientError::Api(a)) => Err((a.status, a.body)),
            Err(e) => panic!("ws connect: {e}"),
        }
    }
}

pub struct Ws(pub WsStream);

impl Ws {
    /// Next JSON message, or `None` when closed or nothing within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(within, self.0.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).ok(),
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                    return None
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The messages up to and including the first one `done` accepts; panics when the socket
    /// closes or `within` (a deadline for the whole wait) passes first.
    pub async fn until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(v) = self.next(left).await else {
                panic!(
                    "the awaited message never came (closed, or {within:?} passed); got {out:?}"
                );
            };
            let last = done(&v);
            out.push(v);
            if last {
                return out;
            }
        }
    }

    /// Everything until the socket closes (or `within` of silence).
    pub async fn drain(&mut self, within: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = self.next(within).await {
            out.push(v);
        }
        out
    }

    pub async fn close(mut self) {
        let _ = self.0.send(Message::Close(None)).await;
    }
}

pub fn seq(v: &Value) -> (u64, u64) {
    ws::parse_seq(v["seq"].as_str().unwrap()).unwrap()
}

/// An account provisioned on the host root, with a file of its own in its home.
pub async fn provisioned(
    srv: &Server,
    root: &std::path::Path,
    id: &str,
    package: &str,
) -> std::path::PathBuf {
    let admin = token(api::Role::Admin, None, None);
    let r = srv
        .req(
            "POST",
            "/api/accounts",
            Some(&admin),
            Some(
                &serde_json::json!({"id": id, "package": package, "domain": format!("{id}.example")})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = srv.wait_final(r.json["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job.status, queue::JobStatus::Succeeded, "{:?}", job.error);
    let home = root.join("home").join(id);
    std::fs::write(home.join("before-restore.txt"), "mine").unwrap();
    home
}

/// An active package `id` with these disk and bandwidth limits (MB).
pub async fn active_package(
    srv: &Server,
    id: &str,
    disk_mb: Option<u64>,
    bandwidth_mb: Option<u64>,
) {
    srv.store
        .create_package(store::NewPackage {
            id: id.into(),
            limits: store::Limits {
                disk_mb,
                bandwidth_mb,
                ..store::Limits::default()
            },
            ..store::NewPackage::default()
        })
        .await
        .unwrap();
    srv.store
        .set_package_status(id, store::PackageStatus::Active)
        .await
        .unwrap();
}

/// Drops a test's databases and database users however the test ends (a runtime of its own).
pub struct DropDbs(pub String, pub Vec<String>);
impl Drop for DropDbs {
    fn drop(&mut self) {
        let (url, names) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    if let Ok(pool) = sqlx::mysql::MySqlPoolOptions::new()
                        .max_connections(1)
                        .connect(&url)
                        .await
                    {
                        for n in names {
                            for sql in [
                                format!("DROP DATABASE IF EXISTS `{n}`"),
                                format!("DROP USER IF EXISTS '{n}'@'localhost'"),
                                format!("DROP USER IF EXISTS '{n}'@'127.0.0.1'"),
                            ] {
                                let _ = sqlx::query(&sql).execute(&pool).await;
                            }
                        }
                        pool.close().await;
                    }
                })
        })
        .join();
    }
}
