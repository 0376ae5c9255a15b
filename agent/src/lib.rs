//! The nPanel privileged agent (DESIGN §6).
//!
//! # Why this crate exists
//!
//! Everything in nPanel runs unprivileged except this one small process.
//! Putting an account into a cgroup, freezing it, killing it, or creating its
//! home directory needs root, and giving root to the queue workers (which talk
//! to Redis, run user-supplied jobs and parse untrusted data) would make every
//! bug in them a root bug. So the root part is split out and kept boring:
//!
//! * it speaks a **closed set of typed requests** ([`protocol::Request`]) over a
//!   Unix socket, one JSON object per line with a protocol version — never a
//!   shell string, so there is nothing to inject into;
//! * it knows **who is calling** from the kernel (`SO_PEERCRED`), not from
//!   anything the caller says, and checks the uid/gid against an allow list;
//! * **account names are validated** ([`account::AccountName`]) before they
//!   ever become part of a path, so `..`, `/` or an empty name cannot escape
//!   the cgroup root or the home root;
//! * it contains **no Redis, no HTTP**, only the socket, the cgroup v2 files
//!   and a few syscalls;
//! * a separate **watchdog** ([`watchdog`]) restarts it when it dies or hangs,
//!   records why, and gives up loudly when it keeps failing.
//!
//! Where cgroup v2 controllers are missing (hybrid hosts, containers) the
//! [`cgroup::CgroupManager`] says so plainly in its
//! [`protocol::Capabilities`] and the limits fall back to rlimits
//! ([`rlimit`]) for the processes started through `npanel-agent exec`.
//!
//! Beyond cgroups it carries out what an account *is* on the host (DESIGN
//! §11), each step typed, validated and idempotent, every path under the
//! configured `host.root`: the login user ([`users`]), the cPanel-compatible
//! home ([`home`]), the zone file, security fragments and suspended flag
//! ([`hostfiles`]), the mail accounts of its domains ([`mail`]), its outbound mail limits
//! for Exim ([`mailpolicy`]), the disk
//! quota ([`quota`]) and the home's archive ([`backup`]). Steps inside directories an account controls never follow
//! a symlink ([`fsx`]).
//!
//! The `workers` crate uses [`local::Host`]: the root agent over its socket
//! ([`client::AgentClient`]) or the same operations in-process
//! ([`local::LocalHost`], the embedded default), behind one `call`.

pub mod account;
pub mod backup;
pub mod cgroup;
pub mod child;
pub mod client;
pub mod config;
pub mod enforce;
pub mod error;
pub mod fsx;
pub mod home;
pub mod hostfiles;
pub mod inspect;
pub mod local;
pub mod mail;
pub mod mailpolicy;
pub mod names;
pub mod protocol;
pub mod quota;
pub mod restore;
pub mod restore_meta;
pub mod rlimit;
pub mod server;
pub mod smtpconns;
pub mod tls;
pub mod unpack;
pub mod users;
pub mod watchdog;

pub use account::AccountName;
pub use client::{AgentClient, Outcome};
pub use config::AgentConfig;
pub use error::AgentError;
pub use local::{Host, LocalHost};
pub use names::{Domain, Mailbox, Password};
pub use protocol::{ErrorCode, Reply, Request, SecurityProfile, PROTOCOL_VERSION};

/// Logging for both binaries: to stderr, no colours, filtered by `NPANEL_LOG`
/// (`EnvFilter` syntax, default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NPANEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
