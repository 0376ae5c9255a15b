//! `npanel token --login-link`: a one-time login link instead of a token.
//!
//! `npanel token` signs offline with the JWT secret; a login link cannot be offline, because
//! the code must be waiting in the Redis the API reads. So this talks to that Redis directly,
//! through the queue crate, found as `npanel serve` finds it (`REDIS_URL` / `queue.redis_url`,
//! else `local_redis`, else the private server a running `serve` started under the data dir),
//! with the same `queue.name`. The code is made and stored by [`api::login::issue`], exactly as
//! for WHMCS's single sign-on: 60 s, single use, only its SHA-256 in Redis.

use crate::config::{redact_url, Config};
use anyhow::Context;
use std::time::Duration;

/// What the link logs in as (the flags of `npanel token`).
#[derive(Clone, Debug)]
pub struct LinkRequest {
    /// The token's role.
    pub role: api::Role,
    /// The customer's account.
    pub account: Option<String>,
    /// The reseller.
    pub reseller: Option<String>,
    /// The token's subject.
    pub subject: String,
    /// Lifetime of the token the code is exchanged for.
    pub token_ttl: Duration,
}

/// `<base>` of the link: `api.public_url`, else `http://` and `listen` (an unspecified address
/// as loopback).
pub fn base_url(cfg: &Config) -> String {
    if let Some(u) = &cfg.api.public_url {
        return u.trim_end_matches('/').to_string();
    }
    let listen = match cfg.listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() && a.is_ipv4() => format!("127.0.0.1:{}", a.port()),
        Ok(a) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        _ => cfg.listen.clone(),
    };
    format!("http://{listen}")
}

/// Store a one-time code for `req` in the service's Redis and return its link.
pub async fn login_link(cfg: &Config, req: LinkRequest) -> anyhow::Result<String> {
    let grant = api::login::LoginGrant {
        sub: req.subject,
        role: req.role,
        account: req.account,
        reseller: req.reseller,
        token_ttl_secs: req.token_ttl.as_secs().max(1),
        origin: "cli".into(),
    };
    // Refuse a grant no token can be made of before looking for Redis.
    grant.claims()?;
    let url = match crate::local_redis::resolve(
        &cfg.queue.redis_url,
        &cfg.local_redis,
        &cfg.data_dir,
        false,
    )
    .await
    {
        Ok((url, _)) => url,
        Err(e) => crate::local_redis::running_private(&cfg.data_dir)
            .await
            .ok_or(e)
            .context("a login link is kept in the service's Redis, and none was found")?,
    };
    let mut qc = cfg.queue.clone();
    qc.redis_url = url.clone();
    let q = queue::Queue::new(qc)?;
    let code = api::login::issue(&q, &grant, api::login::CODE_TTL)
        .await
        .with_context(|| {
            format!(
                "cannot store the login code in Redis at {}",
                redact_url(&url)
            )
        })?;
    Ok(api::login::login_url(&base_url(cfg), &code))
}
