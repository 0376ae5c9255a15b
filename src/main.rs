//! `npanel`: the one CLI binary. Thin: flags → config → tracing → run (see `src/lib.rs`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use npanel::config::{Config, Overrides};
use npanel::run::{self, Mode};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "npanel",
    version,
    about = "nPanel jobs: bounded Redis job queue, workers, scheduler"
)]
struct Cli {
    /// Config file (TOML). Precedence: defaults < file < NPANEL_* env < flags.
    #[arg(long, global = true, env = "NPANEL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run everything in one process: workers and scheduler (API and WebSocket: issue 3).
    Serve {
        /// Listen address for HTTP.
        #[arg(long)]
        listen: Option<String>,
        /// Data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run workers only (needs REDIS_URL or a Redis on 127.0.0.1:6379).
    Worker {
        /// Data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Show the schedules with their last and next runs.
    Schedules,
    /// Print the effective configuration (secrets hidden).
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("npanel: {e}");
            for (depth, cause) in e.chain().skip(1).enumerate() {
                eprintln!("  {}: {cause}", depth + 1);
            }
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let flags = match &cli.cmd {
        Cmd::Serve { listen, data_dir } => Overrides {
            listen: listen.clone(),
            data_dir: data_dir.clone(),
        },
        Cmd::Worker { data_dir } => Overrides {
            listen: None,
            data_dir: data_dir.clone(),
        },
        _ => Overrides::default(),
    };
    let cfg = Config::load(cli.config.as_deref(), &flags)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve { .. } | Cmd::Worker { .. } => {
                let mode = if matches!(cli.cmd, Cmd::Serve { .. }) {
                    Mode::Serve
                } else {
                    Mode::Worker
                };
                let token = CancellationToken::new();
                run::on_signals(token.clone());
                run::run(cfg, mode, token).await
            }
            Cmd::Schedules => {
                let (url, _) = npanel::local_redis::resolve(
                    &cfg.queue.redis_url,
                    &cfg.local_redis,
                    &cfg.data_dir,
                    false,
                )
                .await?;
                let q = run::queue(&cfg, url)?;
                let s = scheduler::Scheduler::new(q, scheduler::builtin())?;
                println!(
                    "{:<14} {:<14} {:<12} {:<8} {:<22} {:<22} note",
                    "name", "cron", "kind", "enabled", "last run", "next run"
                );
                let fmt = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_else(|| "-".into())
                };
                for st in s.status().await? {
                    println!(
                        "{:<14} {:<14} {:<12} {:<8} {:<22} {:<22} {}",
                        st.name,
                        st.cron,
                        st.kind.as_str(),
                        st.enabled,
                        fmt(st.last_run),
                        fmt(st.next_run),
                        st.note.unwrap_or_default()
                    );
                }
                Ok(())
            }
            Cmd::Config => {
                print!("{}", cfg.to_redacted_toml());
                Ok(())
            }
        }
    })
}
