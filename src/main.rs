//! `npanel`: the one CLI binary. Thin: flags → config → tracing → run (see `src/lib.rs`).

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use npanel::cli::{self, client::Api};
use npanel::config::{Config, Overrides};
use npanel::run::{self, Mode};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "npanel",
    version,
    about = "nPanel jobs: bounded Redis job queue, workers, scheduler, HTTP/WebSocket API"
)]
struct Cli {
    /// Config file (TOML). Precedence: defaults < file < NPANEL_* env < flags.
    #[arg(long, global = true, env = "NPANEL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// `npanel config …`.
#[derive(Subcommand)]
enum ConfigCmd {
    /// Load and validate the configuration (`--config FILE`, its `config.env`, the environment)
    /// without running anything: exit 0 and one line when it is usable, else each problem and
    /// exit 1. The upgrade preflight runs it with the new binary on the live file.
    Check,
    /// Only the settings that differ from the built-in defaults, each with its default; then a
    /// warning for each default that changed since the version that wrote the newest stored
    /// configuration.
    Diff,
    /// The configuration versions `serve` recorded in the store, newest first.
    Versions {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Data directory (where the store is), as for `rollback`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Write an earlier configuration version back to the config file (the current one kept as
    /// `<file>.bak-<time>`) and make the running `serve` reload it.
    Rollback {
        /// The version (default: the one before the newest).
        #[arg(long)]
        to: Option<i64>,
        /// Do not send SIGHUP to the running serve; only say how.
        #[arg(long)]
        no_signal: bool,
        /// Data directory (where the store and serve's pid file are).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run everything in one process: API + WebSocket, workers and scheduler.
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
    /// Print the effective configuration (secrets hidden); `check` and `diff`.
    Config {
        #[command(subcommand)]
        cmd: Option<ConfigCmd>,
    },
    /// Print a token signed with the configured secret (or the data dir's, created if missing).
    Token {
        /// admin, reseller or customer.
        #[arg(long)]
        role: String,
        /// The customer's account (customers).
        #[arg(long)]
        account: Option<String>,
        /// The reseller id (resellers; optional for customers).
        #[arg(long)]
        reseller: Option<String>,
        /// Lifetime: 30s, 15m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Who the token is for (audit logs).
        #[arg(long, default_value = "cli")]
        subject: String,
        /// Print a one-time login link (60 s, single use) instead of a token; its code is kept
        /// in the service's Redis and exchanged for a token living --ttl.
        #[arg(long)]
        login_link: bool,
        /// Data directory (where a generated secret lives).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Watch jobs live: a progress bar per job; exit 0 only if all succeed.
    Watch {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Back up an account's home (nPanel's `.tar.zst`, `manifest.json` first) and watch it;
    /// prints where the archive is.
    Backup {
        /// The account.
        account: String,
        /// Print the job and return instead of watching it.
        #[arg(long)]
        no_watch: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Restore an archive (a cPanel `cpmove` or an nPanel backup) into an account, and watch
    /// it as `watch` does. Admins name a path on the server; others the file name of one of
    /// their backups.
    Restore {
        /// The archive: a path on the server (admins), or a backup's file name.
        archive: String,
        /// The account to restore into (default: yours, or the one the archive names).
        #[arg(long)]
        account: Option<String>,
        /// Print the job and return instead of watching it.
        #[arg(long)]
        no_watch: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Enqueue, list, show, cancel and retry jobs through the API.
    Jobs {
        #[command(subcommand)]
        cmd: JobsCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// Queue administration through the API (admin token).
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// List and show accounts through the API.
    Accounts {
        #[command(subcommand)]
        cmd: AccountsCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// List, show, activate, deprecate and import packages through the API.
    Packages {
        #[command(subcommand)]
        cmd: PackagesCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// Search, export and verify the audit log through the API.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// Upgrade to a signed release tarball (admin): verify, preflight, backup, deploy,
    /// validate, rollback on failure; watched like `watch`. `--dry-run`: verify and preflight
    /// only, and print the PASS/WARN/FAIL/SKIP report.
    Upgrade {
        /// The release tarball (`npanel-<version>.tar.gz`), a path on the server.
        tarball: PathBuf,
        /// Its minisign signature (default `<tarball>.minisig`).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// Allow a downgrade or reinstalling the running version.
        #[arg(long)]
        force: bool,
        /// Verify and preflight only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the job and return instead of watching it.
        #[arg(long)]
        no_watch: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Internal: the detached deploy/validate/rollback half of an upgrade job.
    #[command(hide = true)]
    UpgradeApply {
        /// The job's plan.json.
        #[arg(long)]
        plan: PathBuf,
    },
    /// Internal: the store's migrations as this binary knows them (the upgrade asks the new one).
    #[command(hide = true)]
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// WHMCS API keys (opens the store like `serve`: same --data-dir or DATABASE_URL).
    Whmcs {
        #[command(subcommand)]
        cmd: WhmcsCmd,
        /// Data directory (where the SQLite store lives).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// The migrations this binary carries that the store has not applied (JSON).
    Pending,
    /// Apply this binary's migrations.
    Migrate,
}

#[derive(Subcommand)]
enum WhmcsCmd {
    /// Create, rotate, revoke and list keys.
    Key {
        #[command(subcommand)]
        cmd: WhmcsKeyCmd,
    },
}

#[derive(Subcommand)]
enum WhmcsKeyCmd {
    /// Make a key; prints its id and secret once.
    Create {
        /// Scope it to this reseller (it reaches only the reseller's customers); unset: admin.
        #[arg(long)]
        reseller: Option<String>,
        /// A note for operators (which WHMCS, who asked).
        #[arg(long)]
        note: Option<String>,
    },
    /// Add a new secret (printed once); the previous ones work for the grace period.
    Rotate {
        /// Key id (wk_...).
        id: String,
        /// How long the previous secrets keep working: 0, 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        grace: String,
    },
    /// Refuse every request signed with the key from now on.
    Revoke {
        /// Key id (wk_...).
        id: String,
    },
    /// Every key with its scope and state (never a secret).
    List,
}

/// Where the API is.
#[derive(Args)]
struct Remote {
    /// API base URL.
    #[arg(
        long,
        global = true,
        env = "NPANEL_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Bearer token (see `npanel token`).
    #[arg(long, global = true, env = "NPANEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum JobsCmd {
    /// Enqueue a job (admin).
    Enqueue {
        /// Job type.
        kind: String,
        /// Payload as JSON.
        #[arg(long)]
        payload: Option<String>,
        /// Account it concerns.
        #[arg(long)]
        account: Option<String>,
        /// That account's reseller.
        #[arg(long)]
        reseller: Option<String>,
        /// Idempotency key.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Attempts allowed.
        #[arg(long)]
        max_attempts: Option<u32>,
    },
    /// List jobs, newest first.
    List {
        /// queued, running, retrying, succeeded, failed, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Job type.
        #[arg(long)]
        kind: Option<String>,
        /// Account.
        #[arg(long)]
        account: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one job as JSON.
    Show {
        /// Job id.
        id: String,
    },
    /// Cancel a job.
    Cancel {
        /// Job id.
        id: String,
    },
    /// Run a failed or cancelled job again.
    Retry {
        /// Job id.
        id: String,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Pending vs bound, running and limits per type.
    Queue,
    /// Show the per-type concurrency limits, or `set <type> <n>`.
    Concurrency {
        #[command(subcommand)]
        set: Option<ConcurrencyCmd>,
    },
    /// Stop claiming (running jobs go on).
    Pause,
    /// Resume claiming.
    Resume,
}

#[derive(Subcommand)]
enum ConcurrencyCmd {
    /// Set a type's limit (in force within a second across all workers).
    Set {
        /// Job type.
        kind: String,
        /// New limit.
        n: u32,
    },
}

#[derive(Subcommand)]
enum AccountsCmd {
    /// List accounts by id (one page unless --all).
    List {
        /// Only this reseller's customers.
        #[arg(long)]
        reseller: Option<String>,
        /// pending, active, suspended, terminated.
        #[arg(long)]
        status: Option<String>,
        /// Page size (1-1000; default 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Follow every page.
        #[arg(long)]
        all: bool,
    },
    /// Show one account as JSON.
    Show {
        /// Username.
        id: String,
    },
}

#[derive(Subcommand)]
enum PackagesCmd {
    /// List every package you may read.
    List,
    /// Show one package as JSON.
    Show {
        /// Package id.
        id: String,
    },
    /// Activate a package (new accounts may use it).
    Activate {
        /// Package id.
        id: String,
    },
    /// Deprecate a package (its accounts keep it; no new accounts).
    Deprecate {
        /// Package id.
        id: String,
    },
    /// Create the packages described by DIR/*.yaml and *.yml (existing ones are skipped).
    Import {
        /// Directory of package YAML files.
        dir: PathBuf,
        /// Activate each package created.
        #[arg(long)]
        activate: bool,
    },
}

/// Audit filters; times are RFC 3339, a UTC date (2026-11-30) or an age (90m, 24h, 7d).
#[derive(Args)]
struct AuditFilterArgs {
    /// From this time (inclusive): RFC 3339, a UTC date (2026-11-30) or an age (90m, 24h, 7d).
    #[arg(long)]
    from: Option<String>,
    /// Until this time (exclusive); same forms as --from.
    #[arg(long)]
    to: Option<String>,
    /// Action prefix (account_, package_created, ...).
    #[arg(long)]
    action: Option<String>,
    /// Account.
    #[arg(long)]
    account: Option<String>,
    /// Actor id (a token's subject).
    #[arg(long)]
    actor: Option<String>,
    /// success, failure or denied.
    #[arg(long)]
    result: Option<String>,
    /// Resource type (account, package, job, queue, ...).
    #[arg(long)]
    resource_type: Option<String>,
    /// Free text, case-insensitive, found where it starts a word (`3.105`, `cust004` match; `ustomer` does not).
    #[arg(short = 'q', long = "query", value_name = "TEXT")]
    q: Option<String>,
}

impl From<AuditFilterArgs> for cli::audit::Filters {
    fn from(a: AuditFilterArgs) -> Self {
        cli::audit::Filters {
            from: a.from,
            to: a.to,
            action: a.action,
            account: a.account,
            actor: a.actor,
            result: a.result,
            resource_type: a.resource_type,
            q: a.q,
        }
    }
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Matching records, newest first.
    Search {
        #[command(flatten)]
        filters: AuditFilterArgs,
        /// At most this many (1-1000; default 100).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Stream every matching record (newest first) as CSV or JSON to stdout or a file.
    Export {
        #[command(flatten)]
        filters: AuditFilterArgs,
        /// csv or json.
        #[arg(long, default_value = "json", value_parser = ["csv", "json"])]
        format: String,
        /// Write here instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Check the hash chain (admin); exit 0 only if it is intact.
    Verify {
        /// Walk the whole chain, not only what came after the last verification.
        #[arg(long)]
        full: bool,
    },
}

fn main() -> ExitCode {
    // Before any thread starts (see the module).
    npanel::malloc::tune();
    // The embedded host runs a restore's unpack as this binary again, in the account's cgroup.
    agent::child::run_if_asked();
    // `--version` says what `GET /api/admin/upgrade` says (an upgrade checks both).
    let version: &'static str = Box::leak(queue::Upgrade::running_version().into_boxed_str());
    let cli = match Cli::command()
        .version(version)
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match real_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("npanel: {e}");
            for (depth, cause) in e.chain().skip(1).enumerate() {
                eprintln!("  {}: {cause}", depth + 1);
            }
            ExitCode::FAILURE
        }
    }
}

/// `Ok(false)`: ran, but the outcome is a failure (a watched job failed).
fn real_main(cli: Cli) -> anyhow::Result<bool> {
    let flags = match &cli.cmd {
        Cmd::Serve { listen, data_dir } => Overrides {
            listen: listen.clone(),
            data_dir: data_dir.clone(),
        },
        Cmd::Worker { data_dir }
        | Cmd::Token { data_dir, .. }
        | Cmd::Whmcs { data_dir, .. }
        | Cmd::Config {
            cmd: Some(ConfigCmd::Rollback { data_dir, .. }),
        }
        | Cmd::Config {
            cmd: Some(ConfigCmd::Versions { data_dir, .. }),
        } => Overrides {
            listen: None,
            data_dir: data_dir.clone(),
        },
        _ => Overrides::default(),
    };
    let cfg = Config::load(cli.config.as_deref(), &flags)?;
    // RUST_LOG wins over `log`; the handle lets SIGHUP change `log` (src/reload.rs).
    let logging = npanel::reload::Logging::init(&cfg.log);
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
                let from = run::Reloading {
                    file: cli.config.clone(),
                    flags,
                    logging: Some(logging),
                };
                run::run_with(cfg, mode, token, from).await?;
                Ok(true)
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
                Ok(true)
            }
            Cmd::Config { cmd: None } => {
                print!("{}", cfg.to_redacted_toml());
                Ok(true)
            }
            Cmd::Config {
                cmd: Some(ConfigCmd::Check),
            } => {
                // Loading validated it already (an invalid one never gets here).
                println!("{}", npanel::config_cli::check(cli.config.as_deref()));
                Ok(true)
            }
            Cmd::Config {
                cmd: Some(ConfigCmd::Diff),
            } => {
                print!("{}", npanel::config_cli::diff(&cfg).await?);
                Ok(true)
            }
            Cmd::Config {
                cmd: Some(ConfigCmd::Versions { limit, .. }),
            } => {
                print!("{}", npanel::config_cli::versions(&cfg, limit).await?);
                Ok(true)
            }
            Cmd::Config {
                cmd: Some(ConfigCmd::Rollback { to, no_signal, .. }),
            } => {
                let out = npanel::config_cli::rollback(&cfg, cli.config.as_deref(), to, !no_signal)
                    .await?;
                print!("{out}");
                Ok(true)
            }
            Cmd::Token {
                role,
                account,
                reseller,
                ttl,
                subject,
                login_link,
                ..
            } => {
                let role: api::Role = role.parse().map_err(anyhow::Error::msg)?;
                let ttl = cli::parse_duration(&ttl)?;
                if login_link {
                    let req = cli::login::LinkRequest {
                        role,
                        account,
                        reseller,
                        subject,
                        token_ttl: ttl,
                    };
                    println!("{}", cli::login::login_link(&cfg, req).await?);
                    return Ok(true);
                }
                let secret =
                    api::auth::load_or_create_secret(cfg.api.jwt_secret.as_deref(), &cfg.data_dir)
                        .context("cannot read or create the JWT secret in the data dir")?;
                let claims = api::auth::Claims::new(subject, role, account, reseller, ttl)?;
                println!("{}", api::auth::Auth::new(&secret).mint(&claims)?);
                Ok(true)
            }
            Cmd::Watch { ids, remote } => {
                let api = Api::new(&remote.url, remote.token)?;
                cli::watch::watch(&api, &ids).await
            }
            Cmd::Backup {
                account,
                no_watch,
                remote,
            } => {
                let api = Api::new(&remote.url, remote.token)?;
                cli::backup(&api, &account, no_watch).await
            }
            Cmd::Restore {
                archive,
                account,
                no_watch,
                remote,
            } => {
                let api = Api::new(&remote.url, remote.token)?;
                cli::restore(&api, &archive, account, no_watch).await
            }
            Cmd::Jobs { cmd, remote } => {
                let api = Api::new(&remote.url, remote.token)?;
                match cmd {
                    JobsCmd::Enqueue {
                        kind,
                        payload,
                        account,
                        reseller,
                        idempotency_key,
                        max_attempts,
                    } => {
                        cli::jobs_enqueue(
                            &api,
                            &kind,
                            payload.as_deref(),
                            account,
                            reseller,
                            idempotency_key,
                            max_attempts,
                        )
                        .await?
                    }
                    JobsCmd::List {
                        status,
                        kind,
                        account,
                        limit,
                    } => {
                        cli::jobs_list(
                            &api,
                            &[
                                ("status", status),
                                ("kind", kind),
                                ("account", account),
                                ("limit", limit.map(|l| l.to_string())),
                            ],
                        )
                        .await?
                    }
                    JobsCmd::Show { id } => cli::print_json(
                        &api.call(
                            "GET",
                            &format!("/api/jobs/{}", cli::client::encode(&id)),
                            None,
                        )
                        .await?,
                    ),
                    JobsCmd::Cancel { id } => cli::print_json(
                        &api.call(
                            "POST",
                            &format!("/api/jobs/{}/cancel", cli::client::encode(&id)),
                            None,
                        )
                        .await?,
                    ),
                    JobsCmd::Retry { id } => cli::print_json(
                        &api.call(
                            "POST",
                            &format!("/api/jobs/{}/retry", cli::client::encode(&id)),
                            None,
                        )
                        .await?,
                    ),
                }
                Ok(true)
            }
            Cmd::Admin { cmd, remote } => {
                let api = Api::new(&remote.url, remote.token)?;
                match cmd {
                    AdminCmd::Queue => cli::admin_queue(&api).await?,
                    AdminCmd::Concurrency { set } => {
                        let set = set.map(|ConcurrencyCmd::Set { kind, n }| (kind, n));
                        cli::admin_concurrency(&api, set).await?
                    }
                    AdminCmd::Pause => {
                        api.call("POST", "/api/admin/queue/pause", None).await?;
                        println!("Claiming paused (running jobs go on).");
                    }
                    AdminCmd::Resume => {
                        api.call("POST", "/api/admin/queue/resume", None).await?;
                        println!("Claiming resumed.");
                    }
                }
                Ok(true)
            }
            Cmd::Accounts { cmd, remote } => {
                let api = Api::new(&remote.url, remote.token)?;
                match cmd {
                    AccountsCmd::List {
                        reseller,
                        status,
                        limit,
                        all,
                    } => cli::accounts::list(&api, reseller, status, limit, all).await?,
                    AccountsCmd::Show { id } => cli::accounts::show(&api, &id).await?,
                }
                Ok(true)
            }
            Cmd::Packages { cmd, remote } => {
                let api = Api::new(&remote.url, remote.token)?;
                match cmd {
                    PackagesCmd::List => cli::packages::list(&api).await?,
                    PackagesCmd::Show { id } => cli::packages::show(&api, &id).await?,
                    PackagesCmd::Activate { id } => {
                        cli::packages::set_status(&api, &id, "activate").await?
                    }
                    PackagesCmd::Deprecate { id } => {
                        cli::packages::set_status(&api, &id, "deprecate").await?
                    }
                    PackagesCmd::Import { dir, activate } => {
                        return cli::packages::import(&api, &dir, activate).await
                    }
                }
                Ok(true)
            }
            Cmd::Audit { cmd, remote } => {
                let api = Api::new(&remote.url, remote.token)?;
                match cmd {
                    AuditCmd::Search { filters, limit } => {
                        cli::audit::search(&api, &filters.into(), limit).await?
                    }
                    AuditCmd::Export {
                        filters,
                        format,
                        output,
                    } => {
                        cli::audit::export(&api, &filters.into(), &format, output.as_deref())
                            .await?
                    }
                    AuditCmd::Verify { full } => return cli::audit::verify(&api, full).await,
                }
                Ok(true)
            }
            Cmd::Upgrade {
                tarball,
                signature,
                force,
                dry_run,
                no_watch,
                remote,
            } => {
                let api = Api::new(&remote.url, remote.token)?;
                cli::upgrade::upgrade(
                    &api,
                    &tarball,
                    signature.as_deref(),
                    force,
                    dry_run,
                    no_watch,
                )
                .await
            }
            Cmd::UpgradeApply { plan } => cli::upgrade::apply(&cfg, &plan).await,
            Cmd::Store { cmd } => {
                match cmd {
                    StoreCmd::Pending => cli::upgrade::store_pending(&cfg).await?,
                    StoreCmd::Migrate => cli::upgrade::store_migrate(&cfg).await?,
                }
                Ok(true)
            }
            Cmd::Whmcs {
                cmd: WhmcsCmd::Key { cmd },
                ..
            } => {
                match cmd {
                    WhmcsKeyCmd::Create { reseller, note } => {
                        cli::whmcs::create(&cfg, reseller, note).await?
                    }
                    WhmcsKeyCmd::Rotate { id, grace } => {
                        cli::whmcs::rotate(&cfg, &id, &grace).await?
                    }
                    WhmcsKeyCmd::Revoke { id } => cli::whmcs::revoke(&cfg, &id).await?,
                    WhmcsKeyCmd::List => cli::whmcs::list(&cfg).await?,
                }
                Ok(true)
            }
        }
    })
}
