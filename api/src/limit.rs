//! Rate limits (governor keyed limiters): per client IP and per account, admins unlimited.
//!
//! One middleware rather than `tower_governor`: it needs the caller's role and account, which
//! the auth middleware has just decoded, and it answers with our own `rate_limited` body. Keys
//! are the peer IP (proxies' `X-Forwarded-For` is not trusted) and, for authenticated
//! non-admins, their tenant ([`ws::Viewer::tenant`]: `c:<account>` or `r:<id>`). Idle keys are
//! forgotten every minute so memory stays bounded.

use crate::auth::Authn;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

/// Rate limit settings (`api.rate_limit.*`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per minute per client IP (burst: the same number). 0 disables. Default 100.
    pub per_ip_per_minute: u32,
    /// Requests per minute per account (customers) or reseller. 0 disables. Default 1000.
    pub per_account_per_minute: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_ip_per_minute: 100,
            per_account_per_minute: 1000,
        }
    }
}

/// The limiters of one process. Replaceable while serving ([`Limiters::reconfigure`], SIGHUP):
/// each is behind an `RwLock` that requests only read.
pub struct Limiters {
    ip: std::sync::RwLock<Limiter<IpAddr>>,
    account: std::sync::RwLock<Limiter<String>>,
    clock: DefaultClock,
}

/// One keyed limiter and the per-minute figure it was built with (0: none).
type Limiter<K> = (u32, Option<Arc<DefaultKeyedRateLimiter<K>>>);

fn limiter<K: std::hash::Hash + Eq + Clone>(per_minute: u32) -> Limiter<K> {
    (
        per_minute,
        NonZeroU32::new(per_minute).map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n)))),
    )
}

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters")
            .field("ip", &self.ip.read().expect("limiter").0)
            .field("account", &self.account.read().expect("limiter").0)
            .finish()
    }
}

impl Limiters {
    /// Limiters for `cfg`.
    pub fn new(cfg: &RateLimitConfig) -> Limiters {
        Limiters {
            ip: std::sync::RwLock::new(limiter(cfg.per_ip_per_minute)),
            account: std::sync::RwLock::new(limiter(cfg.per_account_per_minute)),
            clock: DefaultClock::default(),
        }
    }

    /// Apply `cfg` while serving. A limit whose figure changed starts afresh (its keys' spent
    /// budget is forgotten); an unchanged one keeps its state. Returns whether anything changed.
    pub fn reconfigure(&self, cfg: &RateLimitConfig) -> bool {
        let mut changed = false;
        let mut ip = self.ip.write().expect("limiter");
        if ip.0 != cfg.per_ip_per_minute {
            *ip = limiter(cfg.per_ip_per_minute);
            changed = true;
        }
        let mut account = self.account.write().expect("limiter");
        if account.0 != cfg.per_account_per_minute {
            *account = limiter(cfg.per_account_per_minute);
            changed = true;
        }
        changed
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        let l = self.ip.read().expect("limiter").1.clone();
        if let Some(l) = l {
            l.check_key(&ip).map_err(|n| {
                metrics::counter!(crate::metrics::RATE_LIMITED_TOTAL, "scope" => "ip").increment(1);
                ApiError::RateLimited(n.wait_time_from(self.clock.now()))
            })?;
        }
        Ok(())
    }

    fn check_account(&self, key: String) -> Result<(), ApiError> {
        let l = self.account.read().expect("limiter").1.clone();
        if let Some(l) = l {
            l.check_key(&key).map_err(|n| {
                metrics::counter!(crate::metrics::RATE_LIMITED_TOTAL, "scope" => "account")
                    .increment(1);
                ApiError::RateLimited(n.wait_time_from(self.clock.now()))
            })?;
        }
        Ok(())
    }

    /// Forget keys that are back to full capacity.
    pub fn forget_idle(&self) {
        if let Some(l) = self.ip.read().expect("limiter").1.clone() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = self.account.read().expect("limiter").1.clone() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Periodically forget idle keys until the limiters are dropped.
pub fn spawn_janitor(l: &Arc<Limiters>) {
    let weak = Arc::downgrade(l);
    tokio::spawn(async move {
        let mut t = tokio::time::interval(std::time::Duration::from_secs(60));
        t.tick().await;
        loop {
            t.tick().await;
            match weak.upgrade() {
                Some(l) => l.forget_idle(),
                None => return,
            }
        }
    });
}

/// Logged-in callers are limited per account (admins not at all); everything else (no token,
/// a bad token) per client IP. Applying the IP limit to logged-in callers too would make the
/// per-account limit unreachable and let tenants behind one proxy address lock each other out.
fn check(st: &AppState, req: &Request) -> Result<(), ApiError> {
    if let Some(Authn::Ok(v)) = req.extensions().get::<Authn>() {
        // Admins have no tenant and are not limited.
        return v.tenant().map_or(Ok(()), |t| st.limits.check_account(t));
    }
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        st.limits.check_ip(addr.ip())?;
    }
    Ok(())
}

/// The middleware.
pub async fn rate_limit(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match check(&st, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}
