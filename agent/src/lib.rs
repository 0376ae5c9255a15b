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
//! The `workers` crate uses [`client::AgentClient`].

pub mod account;
pub mod cgroup;
pub mod client;
pub mod config;
pub mod error;
pub mod home;
pub mod protocol;
pub mod rlimit;
pub mod server;
pub mod watchdog;

pub use account::AccountName;
pub use client::AgentClient;
pub use config::AgentConfig;
pub use error::AgentError;
pub use protocol::{ErrorCode, Reply, Request, PROTOCOL_VERSION};

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
