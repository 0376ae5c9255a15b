//! The `npanel` binary's library half: configuration, finding Redis, and running the service.
//! `main.rs` only parses flags and calls in here (STYLE.md §5).

pub mod cli;
pub mod config;
pub mod config_cli;
pub mod local_redis;
pub mod malloc;
pub mod reload;
pub mod run;

pub use config::{Config, Overrides};
