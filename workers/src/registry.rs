//! Handlers by job kind.
//!
//! A handler is a function of the job's [`JobContext`]. The pool runs each kind's handler as an
//! apalis handler taking `Data<JobContext>` (see `Registry::apalis_handler` and `runtime.rs`),
//! so registration sites need not know about apalis.

use crate::{JobContext, JobError};
use apalis::prelude::Data;
use futures::future::BoxFuture;
use queue::JobKind;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// A handler: takes the job's context, returns its result or a [`JobError`].
pub type HandlerFn = Arc<
    dyn Fn(JobContext) -> BoxFuture<'static, Result<serde_json::Value, JobError>> + Send + Sync,
>;

/// What a running handler is.
type HandlerFuture = BoxFuture<'static, Result<serde_json::Value, JobError>>;

/// The handlers of this build. Kinds without one are refused at enqueue
/// (see [`queue::Queue::with_available_kinds`]).
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<JobKind, HandlerFn>,
}

impl Registry {
    /// No handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handlers that ship in this build: `diagnostic` only, so far.
    pub fn builtin() -> Self {
        Registry::new().register(JobKind::Diagnostic, crate::diagnostic::run)
    }

    /// Add the handlers that need the store: `retention`.
    pub fn with_store(self, store: store::Store, days: crate::retention::RetentionDays) -> Self {
        self.register(JobKind::Retention, move |ctx| {
            crate::retention::run(ctx, store.clone(), days)
        })
    }

    /// Add the `provision` handler.
    pub fn with_provisioning(self, p: std::sync::Arc<crate::provision::Provisioner>) -> Self {
        self.register(JobKind::Provision, move |ctx| {
            crate::provision::run(ctx, p.clone())
        })
    }

    /// Add the `backup` handler.
    pub fn with_backup(self, b: std::sync::Arc<crate::backup::BackupMaker>) -> Self {
        self.register(JobKind::Backup, move |ctx| {
            crate::backup::run(ctx, b.clone())
        })
    }

    /// Add the `quota_sweep` handler.
    pub fn with_quota_sweep(self, q: std::sync::Arc<crate::quota::QuotaSweeper>) -> Self {
        self.register(JobKind::QuotaSweep, move |ctx| {
            crate::quota::run(ctx, q.clone())
        })
    }

    /// Add the `restore` handler.
    pub fn with_restore(self, r: std::sync::Arc<crate::restore::Restorer>) -> Self {
        self.register(JobKind::Restore, move |ctx| {
            crate::restore::run(ctx, r.clone())
        })
    }

    /// Add the `upgrade` handler.
    pub fn with_upgrade(self, u: std::sync::Arc<crate::upgrade::Upgrader>) -> Self {
        self.register(JobKind::Upgrade, move |ctx| {
            crate::upgrade::run(ctx, u.clone())
        })
    }

    /// Add (or replace) the handler of `kind`.
    pub fn register<F, Fut>(mut self, kind: JobKind, f: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, JobError>> + Send + 'static,
    {
        self.handlers
            .insert(kind, Arc::new(move |ctx| Box::pin(f(ctx))));
        self
    }

    /// Only the handlers of `kinds` (all of them when `kinds` is empty). A kind named without a
    /// handler here is an error that names them, so a worker never silently claims nothing.
    pub fn only(mut self, kinds: &[JobKind]) -> Result<Self, Vec<JobKind>> {
        if kinds.is_empty() {
            return Ok(self);
        }
        let missing: Vec<JobKind> = kinds
            .iter()
            .filter(|k| !self.handlers.contains_key(k))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        self.handlers.retain(|k, _| kinds.contains(k));
        Ok(self)
    }

    /// The kinds with a handler.
    pub fn kinds(&self) -> Vec<JobKind> {
        self.handlers.keys().copied().collect()
    }

    /// The handler of `kind`.
    pub fn get(&self, kind: JobKind) -> Option<HandlerFn> {
        self.handlers.get(&kind).cloned()
    }

    /// The handler of `kind` as an apalis handler: the task's argument is its kind, and the job
    /// itself comes as `Data<JobContext>`, which the pool's dispatcher put in the task's data.
    /// Registered functions keep their `Fn(JobContext)` shape; this is the one adapter.
    pub(crate) fn apalis_handler(
        &self,
        kind: JobKind,
    ) -> Option<
        impl FnMut(JobKind, Data<JobContext>) -> HandlerFuture + Send + Sync + Clone + 'static,
    > {
        let f = self.get(kind)?;
        Some(move |_: JobKind, Data(ctx): Data<JobContext>| f(ctx))
    }
}
