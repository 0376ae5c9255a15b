//! `npanel-watchdog`: starts the agent, pings it, restarts it, records why.
//!
//! ```text
//! npanel-watchdog [OPTIONS] -- AGENT-COMMAND...
//!   --socket PATH          agent socket            (NPANEL_WATCHDOG_SOCKET, /run/npanel/agent.sock)
//!   --data-dir DIR         failures.jsonl goes here (NPANEL_WATCHDOG_DATA_DIR, /var/lib/npanel-watchdog)
//!   --interval-ms N        ping interval           (NPANEL_WATCHDOG_INTERVAL_MS, 2000)
//!   --timeout-ms N         ping timeout            (NPANEL_WATCHDOG_TIMEOUT_MS, 1000)
//!   --confirm-ms N         wait before the 2nd ping (NPANEL_WATCHDOG_CONFIRM_MS, 3000)
//!   --startup-ms N         time for the agent to answer after start (NPANEL_WATCHDOG_STARTUP_MS, 10000)
//!   --restart-delay-ms N   pause before a restart  (NPANEL_WATCHDOG_RESTART_DELAY_MS, 100)
//!   --max-restarts N       restarts allowed in the window (NPANEL_WATCHDOG_MAX_RESTARTS, 5)
//!   --window-secs N        sliding window          (NPANEL_WATCHDOG_WINDOW_SECS, 3600)
//!   --quiet                do not copy the agent's output to stderr
//! ```
//! SIGHUP is forwarded to the agent (config reload).
//! Exit status: 0 after SIGTERM/SIGINT, 1 when it gave up, 2 on bad usage.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use agent::watchdog::{self, Outcome, WatchdogConfig};
use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    agent::init_tracing();
    let cfg = match parse(std::env::args().skip(1).collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("npanel-watchdog: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("npanel-watchdog: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = rt.block_on(async {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let pid = Arc::new(AtomicU32::new(0));
        let agent_pid = pid.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => {
                        // forward to the agent: it reloads its config
                        let p = agent_pid.load(Ordering::SeqCst);
                        if p != 0 {
                            tracing::info!(pid = p, "forwarding SIGHUP to the agent");
                            let _ = kill(Pid::from_raw(p as i32), Signal::SIGHUP);
                        }
                    }
                }
            }
            stop.cancel();
        });
        anyhow::Ok(watchdog::run(cfg, shutdown, pid).await?)
    });
    match outcome {
        Ok(Outcome::Stopped) => ExitCode::SUCCESS,
        Ok(Outcome::GaveUp { restarts }) => {
            tracing::error!(restarts, "npanel-watchdog gave up");
            ExitCode::from(1)
        }
        Err(e) => {
            tracing::error!("npanel-watchdog: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn parse(args: Vec<String>) -> anyhow::Result<WatchdogConfig> {
    let mut cfg = WatchdogConfig::default();
    let env = |k: &str| std::env::var(k).ok();
    let ms = |v: &str, k: &str| number(v, k).map(Duration::from_millis);
    let secs = |v: &str, k: &str| number(v, k).map(Duration::from_secs);
    let count = number::<usize>;
    macro_rules! from_env {
        ($var:literal, $field:expr, $conv:expr) => {
            if let Some(v) = env($var) {
                $field = $conv(&v, $var)?;
            }
        };
    }
    let path = |v: &str, _k: &str| -> anyhow::Result<std::path::PathBuf> { Ok(v.into()) };
    from_env!("NPANEL_WATCHDOG_SOCKET", cfg.socket, path);
    from_env!("NPANEL_WATCHDOG_DATA_DIR", cfg.data_dir, path);
    from_env!("NPANEL_WATCHDOG_INTERVAL_MS", cfg.ping_interval, ms);
    from_env!("NPANEL_WATCHDOG_TIMEOUT_MS", cfg.ping_timeout, ms);
    from_env!("NPANEL_WATCHDOG_CONFIRM_MS", cfg.confirm_delay, ms);
    from_env!("NPANEL_WATCHDOG_STARTUP_MS", cfg.startup_timeout, ms);
    from_env!("NPANEL_WATCHDOG_RESTART_DELAY_MS", cfg.restart_delay, ms);
    from_env!("NPANEL_WATCHDOG_MAX_RESTARTS", cfg.max_restarts, count);
    from_env!("NPANEL_WATCHDOG_WINDOW_SECS", cfg.window, secs);

    let mut it = args.into_iter();
    let mut command = Vec::new();
    while let Some(a) = it.next() {
        if a == "--" {
            command = it.by_ref().collect();
            break;
        }
        if a == "--quiet" {
            cfg.echo_agent_output = false;
            continue;
        }
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--socket" => cfg.socket = val()?.into(),
            "--data-dir" => cfg.data_dir = val()?.into(),
            "--interval-ms" => cfg.ping_interval = ms(&val()?, &a)?,
            "--timeout-ms" => cfg.ping_timeout = ms(&val()?, &a)?,
            "--confirm-ms" => cfg.confirm_delay = ms(&val()?, &a)?,
            "--startup-ms" => cfg.startup_timeout = ms(&val()?, &a)?,
            "--restart-delay-ms" => cfg.restart_delay = ms(&val()?, &a)?,
            "--max-restarts" => cfg.max_restarts = count(&val()?, &a)?,
            "--window-secs" => cfg.window = secs(&val()?, &a)?,
            other => bail!(
                "unknown option {other:?}; usage: npanel-watchdog [OPTIONS] -- AGENT-COMMAND..."
            ),
        }
    }
    if !command.is_empty() {
        cfg.agent_command = command;
    }
    Ok(cfg)
}

/// `v` (the value of option or variable `k`) as a number.
fn number<T>(v: &str, k: &str) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    v.parse()
        .with_context(|| format!("{k}: not a number: {v:?}"))
}
