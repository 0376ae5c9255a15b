//! `npanel serve` and `npanel worker`: wire the queue, the pool, the scheduler and (serve only)
//! the HTTP API with its WebSocket hub together and run them against a shutdown token.
//!
//! `serve` accepts on the socket systemd passes when there is one (`npanel.socket`), else binds
//! `listen`; SIGHUP reloads the configuration, SIGTERM stops accepting and drains (see
//! [`crate::reload`]).

use crate::config::Config;
use crate::local_redis;
use anyhow::Context;
use queue::Queue;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Which parts run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Everything in one process: API + WebSocket, workers, scheduler.
    Serve,
    /// Workers only, for more hosts.
    Worker,
}

/// Build the queue handle for `cfg`, refusing kinds this build has no handler for.
pub fn queue(cfg: &Config, url: String) -> anyhow::Result<Queue> {
    let mut qc = cfg.queue.clone();
    qc.redis_url = url;
    let registry = workers::Registry::builtin();
    Ok(Queue::new(qc)?.with_available_kinds(registry.kinds()))
}

/// The accounts' database server (`databases.url`), if one is configured; opened on first use.
fn hosted_databases(cfg: &Config) -> anyhow::Result<Option<store::HostedDatabases>> {
    cfg.databases
        .url
        .as_deref()
        .map(store::HostedDatabases::new)
        .transpose()
        .context("databases.url")
}

/// The host operations: the privileged agent when `host.agent_socket` is set, else the same
/// operations in-process under `host.root` (the embedded default, DESIGN §11).
fn host(cfg: &Config) -> anyhow::Result<agent::Host> {
    match &cfg.host.agent_socket {
        Some(socket) => {
            info!(socket = %socket.display(), "Host operations go to the agent.");
            Ok(agent::AgentClient::new(socket, std::time::Duration::from_secs(30)).into())
        }
        None => {
            let root = cfg.host.root_for(&cfg.data_dir);
            let local = if cfg.host.cgroups.unwrap_or(true) {
                agent::LocalHost::new(&root)
            } else {
                agent::LocalHost::without_cgroups(&root)
            };
            let local = local.with_context(|| {
                format!("cannot prepare the embedded host root {}", root.display())
            })?;
            info!(
                "{} (set host.agent_socket to use the privileged agent)",
                local.summary()
            );
            Ok(local.into())
        }
    }
}

/// Where the running configuration came from, so SIGHUP can read it again the same way.
#[derive(Debug, Default)]
pub struct Reloading {
    /// `--config`.
    pub file: Option<std::path::PathBuf>,
    /// The flags given.
    pub flags: crate::config::Overrides,
    /// The log filter's reload handle (`None`: the log level is not changed on reload).
    pub logging: Option<crate::reload::Logging>,
}

/// Run until `shutdown` fires (no SIGHUP source: reloads re-read the environment only).
pub async fn run(cfg: Config, mode: Mode, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(cfg, mode, shutdown, Reloading::default()).await
}

/// Run until `shutdown` fires; SIGHUP reloads from `from`.
pub async fn run_with(
    cfg: Config,
    mode: Mode,
    shutdown: CancellationToken,
    from: Reloading,
) -> anyhow::Result<()> {
    if crate::reload::wait_out_upgrade(&cfg.data_dir).await {
        return Err(crate::reload::restart_from_current());
    }
    let hup = crate::reload::catch_sighup()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    // Bind first: a busy port fails fast, before a private Redis is started. Under systemd
    // socket activation the socket is already open and outlives this process.
    let listener = match mode {
        Mode::Serve => Some(match crate::reload::inherited_listener()? {
            Some(l) => tokio::net::TcpListener::from_std(l)?,
            None => tokio::net::TcpListener::bind(&cfg.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} (set --listen or NPANEL_LISTEN)",
                        cfg.listen
                    )
                })?,
        }),
        Mode::Worker => None,
    };
    let _pid_file = match mode {
        Mode::Serve => Some(
            crate::reload::PidFile::write(crate::reload::pid_file(&cfg.data_dir))
                .context("cannot write the pid file in the data dir")?,
        ),
        Mode::Worker => None,
    };
    let (url, private) = local_redis::resolve(
        &cfg.queue.redis_url,
        &cfg.local_redis,
        &cfg.data_dir,
        mode == Mode::Serve,
    )
    .await?;
    let q = queue(&cfg, url.clone())?;
    info!(redis = %crate::config::redact_url(&url), queue = %q.prefix(), ?mode, "nPanel jobs starting.");
    if let Err(e) = q.ping().await {
        tracing::warn!(error = %e, "Redis does not answer yet; workers will keep retrying.");
    } else {
        warn_if_evicting(&q).await;
    }
    // The store: serve always has one (SQLite in the data dir by default); a worker on
    // another host only when it shares one (DATABASE_URL), for the jobs that need it.
    let store = if mode == Mode::Serve || cfg.store.url.is_some() {
        let url = cfg.store.url_for(&cfg.data_dir);
        let s = store::Store::connect(&url).await.with_context(|| {
            format!(
                "cannot open the store at {} (set DATABASE_URL, or check the data dir)",
                store::redact_url(&url)
            )
        })?;
        info!(store = %store::redact_url(&url), backend = ?s.backend(), "Store open.");
        Some(s)
    } else {
        None
    };
    let mut registry = workers::Registry::builtin();
    if let Some(s) = &store {
        let host: std::sync::Arc<agent::Host> = std::sync::Arc::new(host(&cfg)?);
        let provisioner = workers::provision::Provisioner::with_databases(
            s.clone(),
            host.clone(),
            cfg.host.provision(),
            hosted_databases(&cfg)?,
        );
        registry = registry
            .with_store(s.clone(), cfg.store.days())
            .with_provisioning(provisioner.clone())
            .with_backup(workers::backup::BackupMaker::new(s.clone(), host.clone()))
            .with_quota_sweep(workers::quota::QuotaSweeper::new(
                s.clone(),
                host.clone(),
                cfg.quota.sweep(
                    &match cfg.host.agent_socket {
                        Some(_) => std::path::PathBuf::from("/"),
                        None => cfg.host.root_for(&cfg.data_dir),
                    },
                    &cfg.databases,
                    cfg.host.provision().security_profile,
                ),
            ))
            .with_restore(workers::restore::Restorer::with_host(
                s.clone(),
                host.clone(),
                cfg.host.root_for(&cfg.data_dir).join("backups"),
                cfg.host.provision().ipv4,
                cfg.host.provision().security_profile,
                cfg.databases.url.clone(),
                Some(provisioner),
            ));
        let health =
            workers::health::HealthChecker::new(s.clone(), host, cfg.databases.url.clone());
        registry = registry.register(queue::JobKind::HealthCheck, move |ctx| {
            workers::health::run(ctx, health.clone())
        });
        // The upgrade job (DESIGN §14) hands its deploy to `npanel upgrade-apply` (this binary).
        // A `worker` takes upgrades only when configured for them (`upgrade.public_key`), so a
        // worker on another host never claims the upgrade of the panel's own host.
        if mode == Mode::Serve || !cfg.upgrade.public_key.is_empty() {
            // Where validate reaches the service: the address actually listened on (a socket
            // systemd passed may not be `listen`), else `listen`.
            let listen = listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| a.to_string())
                .unwrap_or_else(|| cfg.listen.clone());
            registry = registry.with_upgrade(workers::upgrade::Upgrader::new(
                cfg.upgrade.clone(),
                s.clone(),
                cfg.store.url_for(&cfg.data_dir),
                url.clone(),
                q.clone(),
                std::env::current_exe().context("cannot find this binary's path")?,
                &listen,
                cfg.data_dir.clone(),
                shutdown.clone(),
            ));
        }
    }
    // The API accepts every kind this build handles; the pool claims those of `workers.kinds`.
    let q = q.with_available_kinds(registry.kinds());
    let registry = registry.only(&cfg.workers.kinds).map_err(|missing| {
        anyhow::anyhow!(
            "workers.kinds names {}, which this process has no handler for{}",
            missing
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if store.is_none() {
                " (a worker runs the kinds that need the store only with one: set DATABASE_URL)"
            } else {
                ""
            }
        )
    })?;
    info!(kinds = ?registry.kinds(), "Workers claim these kinds.");
    let pool = workers::Pool::new(q.clone(), registry, cfg.workers.pool());
    let mut tasks = tokio::task::JoinSet::new();
    let mut app_state = None;
    if mode == Mode::Serve {
        let listener = listener.expect("bound in serve mode");
        let secret = api::auth::load_or_create_secret(cfg.api.jwt_secret.as_deref(), &cfg.data_dir)
            .context("cannot read or create the JWT secret in the data dir")?;
        let hub = ws::Hub::start(q.clone(), cfg.ws.hub(), shutdown.clone());
        let state = api::AppState::new(
            q.clone(),
            hub,
            store.clone().expect("serve opens the store"),
            &secret,
            cfg.api.clone(),
            api::metrics::install_prometheus(),
        )
        .with_security_default(cfg.host.provision().security_profile)
        .with_databases(hosted_databases(&cfg)?);
        for h in state.spawn_background(shutdown.clone()) {
            tasks.spawn(async move {
                h.await?;
                Ok(())
            });
        }
        app_state = Some(state.clone());
        let addr = listener.local_addr()?;
        info!(%addr, "API listening on http://{addr} (WebSocket on the same port)");
        let s = shutdown.clone();
        tasks.spawn(async move { Ok(api::serve(listener, state, s).await?) });
    }
    if let (Mode::Worker, Some(addr)) = (mode, &cfg.metrics_listen) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for /metrics"))?;
        let handle = api::metrics::install_prometheus();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let h = handle.clone();
                async move { h.render() }
            }),
        );
        info!(addr = %listener.local_addr()?, "Worker metrics on /metrics.");
        let s = shutdown.clone();
        tasks.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await?;
            Ok(())
        });
    }
    let live = std::sync::Arc::new(crate::reload::Live::new(
        cfg.clone(),
        from.file,
        from.flags,
        from.logging,
        q.clone(),
        app_state,
        store.clone(),
    ));
    if mode == Mode::Serve {
        live.record("start").await;
    }
    crate::reload::on_sighup(live, hup, shutdown.clone());
    let s = shutdown.clone();
    tasks.spawn(async move { Ok(pool.run(s).await?) });
    if mode == Mode::Serve && cfg.scheduler.enabled {
        let sched = scheduler::Scheduler::new(q.clone(), scheduler::builtin())?;
        let s = shutdown.clone();
        tasks.spawn(async move {
            sched.run(s).await;
            Ok(())
        });
    }
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
            result = Err(e);
            shutdown.cancel();
        }
    }
    if let Some(r) = private {
        r.stop().await;
        info!("Stopped the private redis-server.");
    }
    result
}

/// Resolves on SIGTERM or Ctrl-C, then cancels `token`; a second signal exits at once.
pub fn on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let mut first: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            // Tools like timeout(1) deliver one TERM twice (to the pid and its group): a repeat
            // within a second is the same request.
            if first.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
                continue;
            }
            if first.is_none() {
                first = Some(std::time::Instant::now());
                info!("Shutdown requested: finishing running jobs (signal again to quit now).");
                token.cancel();
            } else {
                tracing::warn!(
                    "Second signal: exiting now; running jobs will be recovered by their leases."
                );
                std::process::exit(130);
            }
        }
    });
}

/// Jobs are data: a Redis that evicts keys under memory pressure can silently drop them.
/// Managed Redis may forbid CONFIG; then nothing is said.
async fn warn_if_evicting(q: &Queue) {
    if let Some(p) = q.maxmemory_policy().await {
        if p != "noeviction" {
            tracing::warn!(
                policy = %p,
                "Redis maxmemory-policy is not noeviction: under memory pressure it may drop job keys. Set maxmemory-policy noeviction."
            );
        }
    }
}
