//! `npanel-agent`: the privileged agent (see the crate docs and README).
//!
//! ```text
//! npanel-agent [serve] [--config PATH]     run the agent (default config /etc/npanel/agent.toml)
//! npanel-agent check-config --config PATH  validate a config file and print the capabilities
//! npanel-agent ping [--socket PATH]        ping a running agent, print the answer
//! npanel-agent send [--socket PATH] LINE   send one raw request line, print the answer
//! npanel-agent exec [--cgroup DIR] [--nproc N] [--as BYTES] [--cpu SECS]
//!                   [--uid UID] [--gid GID] -- CMD ARGS...
//!                                          join a cgroup, set rlimits, drop privileges, exec
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use agent::client::send_line;
use agent::config::{AgentConfig, DEFAULT_CONFIG_PATH};
use agent::rlimit::ExecSpec;
use agent::server::{self, Shared, State};
use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // A restore's unpack runs as this binary again, in the account's cgroup.
    agent::child::run_if_asked();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.first().map(String::as_str) {
        Some("serve") | Some("check-config") | Some("ping") | Some("send") | Some("exec") => {
            (args[0].clone(), args[1..].to_vec())
        }
        Some("-h") | Some("--help") => {
            println!("{}", USAGE);
            return ExitCode::SUCCESS;
        }
        _ => ("serve".to_string(), args.clone()),
    };
    let result = match cmd.as_str() {
        "exec" => exec(&rest),
        "check-config" => check_config(&rest),
        "ping" => client(&rest, None),
        "send" => {
            let (opts, line) = split_last(&rest);
            match line {
                Some(line) => client(&opts, Some(line)),
                None => Err(anyhow::anyhow!("send needs a request line")),
            }
        }
        _ => serve(&rest),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("npanel-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "usage: npanel-agent [serve] [--config PATH] | check-config --config PATH | ping [--socket PATH] | send [--socket PATH] LINE | exec [OPTIONS] -- CMD...";

fn split_last(args: &[String]) -> (Vec<String>, Option<String>) {
    match args.split_last() {
        Some((last, init)) if !last.starts_with("--") => (init.to_vec(), Some(last.clone())),
        _ => (args.to_vec(), None),
    }
}

fn flag(args: &[String], name: &str) -> anyhow::Result<Option<String>> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == name {
            return Ok(Some(
                it.next()
                    .with_context(|| format!("{name} needs a value"))?
                    .clone(),
            ));
        }
        if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            return Ok(Some(v.to_string()));
        }
        if a.starts_with("--") && !matches!(a.as_str(), "--config" | "--socket" | "--timeout-ms") {
            bail!("unknown option {a:?}\n{USAGE}");
        }
    }
    Ok(None)
}

/// The config path: --config, else $NPANEL_AGENT_CONFIG, else the default.
fn config_path(args: &[String]) -> anyhow::Result<(PathBuf, bool)> {
    if let Some(p) = flag(args, "--config")? {
        return Ok((p.into(), true));
    }
    if let Ok(p) = std::env::var("NPANEL_AGENT_CONFIG") {
        return Ok((p.into(), true));
    }
    Ok((DEFAULT_CONFIG_PATH.into(), false))
}

fn load_config(path: &Path, explicit: bool) -> anyhow::Result<AgentConfig> {
    if !explicit && !path.exists() {
        tracing::warn!(path = %path.display(), "no config file; using the built-in defaults");
        return Ok(AgentConfig::default());
    }
    Ok(AgentConfig::load(path)?)
}

fn check_config(args: &[String]) -> anyhow::Result<ExitCode> {
    let (path, explicit) = config_path(args)?;
    let cfg = load_config(&path, explicit)?;
    let state = State::new(cfg);
    println!(
        "{}",
        serde_json::to_string_pretty(state.cgroups.capabilities())?
    );
    Ok(ExitCode::SUCCESS)
}

fn client(args: &[String], line: Option<String>) -> anyhow::Result<ExitCode> {
    let socket = match flag(args, "--socket")? {
        Some(s) => PathBuf::from(s),
        None => {
            let (path, explicit) = config_path(&[])?;
            load_config(&path, explicit)?.socket_path
        }
    };
    let timeout = Duration::from_millis(
        flag(args, "--timeout-ms")?
            .map(|t| t.parse())
            .transpose()?
            .unwrap_or(5000),
    );
    let line = line.unwrap_or_else(|| r#"{"v":1,"id":1,"op":"ping"}"#.to_string());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt.block_on(send_line(&socket, &line, timeout))?;
    println!("{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).context("answer is not JSON")?;
    Ok(if v.get("ok").is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn exec(args: &[String]) -> anyhow::Result<ExitCode> {
    let spec = ExecSpec::parse_args(args)?;
    let err = match spec.exec() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    Err(err.into())
}

fn serve(args: &[String]) -> anyhow::Result<ExitCode> {
    agent::init_tracing();
    let (path, explicit) = config_path(args)?;
    let config = load_config(&path, explicit)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .enable_all()
        .build()?;
    rt.block_on(run(config, path, explicit))?;
    Ok(ExitCode::SUCCESS)
}

async fn run(config: AgentConfig, path: PathBuf, explicit: bool) -> anyhow::Result<()> {
    let state = State::new(config.clone());
    state.cgroups.log_capabilities();
    let listener = server::bind(&config).context("cannot bind the agent socket")?;
    tracing::info!(
        socket = %config.socket_path.display(),
        pid = std::process::id(),
        allowed_uids = ?config.allowed_uids,
        allowed_gids = ?config.allowed_gids,
        allow_root = config.allow_root,
        "npanel-agent listening"
    );
    let shared = Shared::new(state);
    let shutdown = CancellationToken::new();
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let server = tokio::spawn(server::serve(listener, shared.clone(), shutdown.clone()));
    // The mail policy ACL's connection counter (max_connections); mail goes on without it.
    let conns = agent::smtpconns::spawn(&config, shutdown.clone());

    // systemd: READY=1 once listening; WATCHDOG=1 at half of WATCHDOG_USEC.
    // Both are no-ops when NOTIFY_SOCKET is unset.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!("sd_notify READY failed: {e}");
    }
    if let Some(usec) = systemd_watchdog_usec() {
        let every = Duration::from_micros(usec / 2);
        tracing::info!(?every, "systemd watchdog enabled");
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]) {
                    tracing::warn!("sd_notify WATCHDOG failed: {e}");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }

    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                match load_config(&path, explicit).and_then(|c| Ok(shared.reload(c)?)) {
                    Ok(()) => tracing::info!(path = %path.display(), "config reloaded"),
                    Err(e) => tracing::error!(path = %path.display(), "config reload refused, keeping the old config: {e:#}"),
                }
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    server.await?;
    if let Some(c) = conns {
        let _ = c.await;
    }
    Ok(())
}

/// WATCHDOG_USEC, honoured (like libsystemd's `sd_watchdog_enabled`) unless
/// WATCHDOG_PID is set and names another process.
fn systemd_watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then_some(usec)
}
