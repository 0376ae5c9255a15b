//! nPanel's worker pool and its job handlers.
//!
//! A [`Pool`] claims jobs from [`queue::Queue`] for the kinds its [`Registry`] has handlers for
//! and hands each to its kind's apalis 1.0 `Worker` (one per kind, under one `Monitor`) through
//! a small channel backend of ours. Handlers run as apalis handlers taking `Data<JobContext>`,
//! under tower layers for the tracing span, the timeout and panic capture; the backend's layer
//! decides every queue transition and frees the slot. Progress goes through the queue (which
//! renews the lease); the pool renews leases of everything it runs, stops a job within moments
//! of a cancel from any process (child processes included, see [`JobContext::run_command`]),
//! and on shutdown stops claiming, gives running jobs a soft deadline, then requeues the rest
//! without using an attempt. Idle, it blocks on Redis pub/sub: no polling loop.
//!
//! See `README.md` for the shape and why each part is apalis's or ours.

mod backoff;
pub mod backup;
mod context;
pub mod diagnostic;
pub mod health;
pub mod mail_incidents;
pub mod metrics;
mod pool;
pub mod provision;
pub mod quota;
mod registry;
pub mod restore;
pub mod restore_db;
pub mod retention;
mod runtime;
pub mod upgrade;

pub use backoff::backoff;
pub use context::{JobContext, JobError};
pub use pool::{Pool, PoolConfig, PoolError};
pub use registry::{HandlerFn, Registry};
