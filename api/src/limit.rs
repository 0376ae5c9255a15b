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

/// The limiters of one process.
pub struct Limiters {
    ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    account: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters")
            .field("ip", &self.ip.is_some())
            .field("account", &self.account.is_some())
            .finish()
    }
}

impl Limiters {
    /// Limiters for `cfg`.
    pub fn new(cfg: &RateLimitConfig) -> Limiters {
        Limiters {
            ip: NonZeroU32::new(cfg.per_ip_per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            account: NonZeroU32::new(cfg.per_account_per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            clock: DefaultClock::default(),
        }
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        if let Some(l) = &self.ip {
            l.check_key(&ip).map_err(|n| {
                metrics::counter!(crate::metrics::RATE_LIMITED_TOTAL, "scope" => "ip").increment(1);
                ApiError::RateLimited(n.wait_time_from(self.clock.now()))
            })?;
        }
        Ok(())
    }

    fn check_account(&self, key: String) -> Result<(), ApiError> {
        if let Some(l) = &self.account {
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
        if let Some(l) = &self.ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.account {
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
