//! nPanel's worker pool and its job handlers.
//!
//! A [`Pool`] claims jobs from [`queue::Queue`] for the kinds its [`Registry`] has handlers for,
//! runs each under a tracing span with a timeout and panic capture, reports progress through the
//! queue (which renews the lease), renews leases of everything it runs, stops a job within
//! moments of a cancel from any process (child processes included, see [`JobContext::run_command`]),
//! and on shutdown stops claiming, gives running jobs a soft deadline, then requeues the rest
//! without using an attempt. Idle, it blocks on Redis pub/sub: no polling loop.
//!
//! See `README.md` for why the pool is written on tokio directly rather than on apalis's worker.

mod backoff;
pub mod backup;
mod context;
pub mod diagnostic;
pub mod mail_incidents;
pub mod metrics;
mod pool;
pub mod provision;
pub mod quota;
mod registry;
pub mod restore;
pub mod retention;

pub use backoff::backoff;
pub use context::{JobContext, JobError};
pub use pool::{Pool, PoolConfig, PoolError};
pub use registry::{HandlerFn, Registry};
