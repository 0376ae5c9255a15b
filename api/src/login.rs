//! One-time login links: WHMCS's single sign-on and `npanel token --login-link`.
//!
//! # The code
//! [`issue`] makes a code of 32 random bytes (base64url, 43 characters) and keeps the
//! [`LoginGrant`] it stands for in Redis for [`CODE_TTL`] (60 s), under the code's SHA-256
//! only ([`queue::Queue::stash`]): whoever reads Redis cannot log in with what is there. The
//! code travels once, in the link `<base>/login#code=<code>`; [`redeem`] takes it with one
//! `GETDEL`, so a code works once even when two requests race for it.
//!
//! # Why a fragment
//! A browser never sends the part after `#` to a server: the code stays out of access logs,
//! proxies and `Referer` headers. The page at `GET /login` ([`page`], [`script`]) reads it,
//! removes it from the address bar and the history (`history.replaceState`), posts it to
//! `POST /api/auth/login` ([`exchange`]) and keeps the token it gets in `sessionStorage`, never
//! in a URL, then opens the dashboard at `/` ([`crate::dashboard`]), which reads it. The page loads nothing from elsewhere and runs no inline script (its
//! `Content-Security-Policy` allows only its own `/login.js` and one inline style by hash).
//!
//! # The exchange
//! `POST /api/auth/login {"code"}` needs no token; like every call without one it is limited
//! per client address (`api.rate_limit.per_ip_per_minute`). A code that is unknown, used or
//! expired, or whose account has since been terminated, answers the one 401. A good one answers
//! a normal panel token for [`LoginGrant::token_ttl_secs`] (default [`TOKEN_TTL`], 24 h: the
//! default `--ttl` of `npanel token`), and writes the audit record [`AUDIT_ACTION`].

use crate::auth::{Authn, Claims, Role, TokenError};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::AppState;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use queue::{Queue, QueueError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use store::{Actor, NewAudit};
use utoipa::ToSchema;

/// How long a login code can be exchanged.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Lifetime of the token a code is exchanged for, unless the grant says otherwise: the default
/// `--ttl` of `npanel token`.
pub const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The audit action of a successful exchange.
pub const AUDIT_ACTION: &str = "auth_login";
/// The Redis stash kind the codes' digests live under.
const STASH: &str = "login";
/// Length of a code: 32 bytes, base64url without padding.
const CODE_LEN: usize = 43;

/// What a code stands for: the claims of the token it is exchanged for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoginGrant {
    /// The token's subject.
    pub sub: String,
    /// Its role.
    pub role: Role,
    /// The customer's account.
    #[serde(default)]
    pub account: Option<String>,
    /// The reseller (a reseller's own id; a customer's reseller when known).
    #[serde(default)]
    pub reseller: Option<String>,
    /// Lifetime of the token, seconds.
    pub token_ttl_secs: u64,
    /// Who asked for the link (`whmcs:<key id>`, `cli`), for the audit record.
    pub origin: String,
}

impl LoginGrant {
    /// A customer's grant for `account` (of `reseller`), asked for by `origin`; the token's
    /// subject is the account.
    pub fn customer(account: &str, reseller: Option<String>, origin: &str) -> LoginGrant {
        LoginGrant {
            sub: account.to_string(),
            role: Role::Customer,
            account: Some(account.to_string()),
            reseller,
            token_ttl_secs: TOKEN_TTL.as_secs(),
            origin: origin.to_string(),
        }
    }

    /// The claims to mint, valid from now.
    pub fn claims(&self) -> Result<Claims, TokenError> {
        Claims::new(
            self.sub.clone(),
            self.role,
            self.account.clone(),
            self.reseller.clone(),
            Duration::from_secs(self.token_ttl_secs),
        )
    }
}

/// Why a code could not be made or taken.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The grant cannot become a token (a customer without an account, ...).
    #[error(transparent)]
    Grant(#[from] TokenError),
    /// Redis refused or is down.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A stored grant that does not parse (a foreign value under our key).
    #[error("the stored login grant is unreadable: {0}")]
    Corrupt(String),
    /// 32 random bytes met an existing code: never in practice.
    #[error("a new login code collided with a live one; ask again")]
    Collision,
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::Queue(q) => q.into(),
            LoginError::Grant(t) => ApiError::Unprocessable(t.to_string()),
            e @ (LoginError::Corrupt(_) | LoginError::Collision) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

fn digest(code: &str) -> String {
    hex::encode(Sha256::digest(code.as_bytes()))
}

fn well_formed(code: &str) -> bool {
    code.len() == CODE_LEN
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Make a one-time code for `grant`, exchangeable for `ttl` (normally [`CODE_TTL`]). Only the
/// code's SHA-256 is stored.
pub async fn issue(queue: &Queue, grant: &LoginGrant, ttl: Duration) -> Result<String, LoginError> {
    grant.claims()?;
    let value = serde_json::to_string(grant).map_err(|e| LoginError::Corrupt(e.to_string()))?;
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let code = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    if queue.stash(STASH, &digest(&code), &value, ttl).await? {
        Ok(code)
    } else {
        Err(LoginError::Collision)
    }
}

/// Take the grant of `code`, once: `None` when it is unknown, used or expired (or not a code
/// at all, which is not looked up).
pub async fn redeem(queue: &Queue, code: &str) -> Result<Option<LoginGrant>, LoginError> {
    if !well_formed(code) {
        return Ok(None);
    }
    match queue.take_stashed(STASH, &digest(code)).await? {
        None => Ok(None),
        Some(v) => serde_json::from_str(&v)
            .map(Some)
            .map_err(|e| LoginError::Corrupt(e.to_string())),
    }
}

/// The link that logs in with `code`: `<base>/login#code=<code>` (`base` without a trailing
/// slash).
pub fn login_url(base: &str, code: &str) -> String {
    format!("{}/login#code={code}", base.trim_end_matches('/'))
}

// ---------------------------------------------------------------------------------------------
// POST /api/auth/login

/// `POST /api/auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The code from a login link (after `#code=`).
    pub code: String,
}

/// A panel token for the code's account.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginAnswer {
    /// Bearer token (keep it out of URLs).
    pub token: String,
    /// Its lifetime in seconds.
    pub expires_in: u64,
    /// `customer`, `reseller` or `admin`.
    pub role: String,
    /// The customer's account (null for other roles).
    pub account: Option<String>,
}

/// The client of an unauthenticated request, for its audit record.
#[derive(Debug)]
pub struct Origin {
    ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    endpoint: String,
    started: Instant,
}

impl<S: Send + Sync> FromRequestParts<S> for Origin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let c = crate::audit::Client::of(parts);
        Ok(Origin {
            ip: c.ip,
            user_agent: c.user_agent,
            request_id: c.request_id,
            endpoint: format!("{} {}", parts.method, parts.uri.path()),
            started: Instant::now(),
        })
    }
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Exchange a one-time login code for a panel token (once; no token needed).
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginAnswer), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody, description = "unknown, used or expired code"),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn exchange(
    State(st): State<AppState>,
    origin: Origin,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let Some(grant) = redeem(&st.queue, req.code.trim()).await? else {
        tracing::info!("Login code refused: unknown, used or expired.");
        return Err(ApiError::Unauthorized);
    };
    // Checked when the code was made.
    let claims = grant
        .claims()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // The account may have gone (or changed hands) since the link was made.
    let viewer = ws::Viewer {
        role: claims.role,
        subject: claims.sub.clone(),
        account: claims.account.clone(),
        reseller: claims.reseller.clone(),
    };
    let viewer = match crate::auth::check_against_store(&st.store, viewer).await {
        Authn::Ok(v) => v,
        Authn::StoreDown => {
            return Err(ApiError::Unavailable(
                "the store (database) is unavailable; retry shortly with a new login link".into(),
            ))
        }
        Authn::Missing | Authn::Invalid => {
            tracing::info!(account = ?claims.account, "Login code refused: its account is gone or terminated.");
            return Err(ApiError::Unauthorized);
        }
    };
    let claims = Claims {
        reseller: viewer.reseller.clone(),
        ..claims
    };
    let token = st
        .auth
        .mint(&claims)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut r = NewAudit::new(
        AUDIT_ACTION,
        Actor {
            kind: claims.role.as_str().into(),
            id: claims.sub.clone(),
            ip: origin.ip,
            user_agent: origin.user_agent,
        },
        "success",
    );
    r.request_id = origin.request_id;
    r.source =
        json!({"method": "API", "endpoint": origin.endpoint, "login_link_from": grant.origin});
    r.duration_ms = Some(origin.started.elapsed().as_millis() as u64);
    r.account = claims.account.clone();
    r.reseller = claims.reseller.clone();
    r.resource = match &claims.account {
        Some(a) => json!({"type": "account", "id": a, "name": a}),
        None => json!({"type": "session", "id": claims.sub, "name": claims.role.as_str()}),
    };
    r.changes = json!({"before": null, "after": {"token_expires_at": claims.exp}});
    r.impact =
        json!({"accounts_affected": u8::from(claims.account.is_some()), "resources_changed": 0});
    st.auditor.write(r).await;
    Ok(no_store(
        Json(LoginAnswer {
            token,
            expires_in: claims.exp.saturating_sub(claims.iat),
            role: claims.role.as_str().into(),
            account: claims.account,
        })
        .into_response(),
    ))
}

// ---------------------------------------------------------------------------------------------
// GET /login, GET /login.js

const PAGE: &str = include_str!("login/login.html");
const STYLE: &str = include_str!("login/login.css");
const SCRIPT: &str = include_str!("login/login.js");

/// The page (its style inlined) and its Content-Security-Policy (the style by hash).
fn page_and_policy() -> &'static (String, String) {
    static P: OnceLock<(String, String)> = OnceLock::new();
    P.get_or_init(|| {
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE));
        let csp = format!(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'sha256-{hash}'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        );
        (PAGE.replace("/*STYLE*/", STYLE), csp)
    })
}

fn hardened(mut r: Response, content_type: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// The login page of one-time links (`/login#code=...`).
#[utoipa::path(get, path = "/login", tag = "auth",
    responses((status = 200, content_type = "text/html", body = String, description = "The page; it posts the link's code to /api/auth/login")))]
pub async fn page() -> Response {
    let (html, csp) = page_and_policy();
    let mut r = hardened(html.clone().into_response(), "text/html; charset=utf-8");
    if let Ok(v) = HeaderValue::from_str(csp) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    no_store(r)
}

/// The login page's script.
#[utoipa::path(get, path = "/login.js", tag = "auth",
    responses((status = 200, content_type = "text/javascript", body = String)))]
pub async fn script() -> Response {
    let mut r = hardened(SCRIPT.into_response(), "text/javascript; charset=utf-8");
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_checked_before_any_lookup() {
        assert!(well_formed(&"a".repeat(43)));
        assert!(well_formed("abcdefghijklmnopqrstuvwxyz-_ABCDEFGHIJ01234"));
        assert!(!well_formed(&"a".repeat(42)));
        assert!(!well_formed(&format!("{}=", "a".repeat(42))));
        assert!(!well_formed(&format!("{}/", "a".repeat(42))));
        assert_eq!(
            login_url("https://panel.example.net/", "abc"),
            "https://panel.example.net/login#code=abc"
        );
    }

    #[test]
    fn the_page_inlines_only_the_style_it_allows_by_hash() {
        let (html, csp) = page_and_policy();
        assert!(html.contains(STYLE.trim()));
        assert!(!html.contains("/*STYLE*/"));
        assert!(html.contains(r#"<script src="/login.js" defer></script>"#));
        // No inline script, nothing from elsewhere.
        assert_eq!(html.matches("<script").count(), 1);
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(html.matches("<style>").count(), 1);
    }

    #[test]
    fn grants_need_what_their_role_needs() {
        let g = LoginGrant::customer("acme", Some("r1".into()), "cli");
        let c = g.claims().unwrap();
        assert_eq!(c.account.as_deref(), Some("acme"));
        assert_eq!(c.exp - c.iat, TOKEN_TTL.as_secs());
        let bad = LoginGrant { account: None, ..g };
        assert!(bad.claims().is_err());
    }
}
