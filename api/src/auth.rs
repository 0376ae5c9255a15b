//! JWT auth (HS256): tokens carry a role and the ids the tenant rules need.
//!
//! The middleware [`authenticate`] decodes the token once per request (from `Authorization:
//! Bearer`, or `?token=` on WebSocket upgrades only, since browsers cannot set headers there)
//! and leaves the outcome in the request's extensions; the [`Caller`] extractor turns a missing
//! or bad token into the one generic 401. The rate limiter reads the same outcome, so admins
//! are recognised before they are counted.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
pub use ws::{Role, Viewer};

/// What a token says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Subject (who; for audit logs).
    pub sub: String,
    /// Role.
    pub role: Role,
    /// The customer's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The reseller id (a reseller's own; a customer's reseller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reseller: Option<String>,
    /// Issued at (unix seconds).
    pub iat: u64,
    /// Expires at (unix seconds).
    pub exp: u64,
}

/// Why a token cannot be minted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The role needs an id it was not given.
    #[error("{0}")]
    Invalid(String),
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

impl Claims {
    /// Claims for `role`, valid for `ttl` from now. Customers need an account, resellers a
    /// reseller id.
    pub fn new(
        subject: impl Into<String>,
        role: Role,
        account: Option<String>,
        reseller: Option<String>,
        ttl: Duration,
    ) -> Result<Claims, TokenError> {
        match role {
            Role::Customer if account.is_none() => {
                return Err(TokenError::Invalid(
                    "a customer token needs --account".into(),
                ))
            }
            Role::Reseller if reseller.is_none() => {
                return Err(TokenError::Invalid(
                    "a reseller token needs --reseller".into(),
                ))
            }
            _ => {}
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Ok(Claims {
            sub: subject.into(),
            role,
            account,
            reseller,
            iat: now,
            exp: now.saturating_add(ttl.as_secs().max(1)),
        })
    }
}

/// Signs and verifies tokens with one secret.
pub struct Auth {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(**REDACTED**)")
    }
}

impl Auth {
    /// Keys from a secret (at least 32 bytes recommended; the generated one is 32 random bytes).
    pub fn new(secret: &[u8]) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Sign claims.
    pub fn mint(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.enc)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }

    /// Verify a token; any failure is the one [`ApiError::Unauthorized`].
    pub fn verify(&self, token: &str) -> Result<Viewer, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)
            .map_err(|_| ApiError::Unauthorized)?;
        let c = data.claims;
        // A customer token must name its account and a reseller token its reseller id;
        // otherwise they would share rate-limit keys and start jobs for nobody.
        let incomplete = match c.role {
            Role::Admin => false,
            Role::Reseller => c.reseller.as_deref().is_none_or(str::is_empty),
            Role::Customer => c.account.as_deref().is_none_or(str::is_empty),
        };
        if incomplete {
            return Err(ApiError::Unauthorized);
        }
        Ok(Viewer {
            role: c.role,
            subject: c.sub,
            account: c.account,
            reseller: c.reseller,
        })
    }
}

/// File name of the generated secret in the data dir.
pub const SECRET_FILE: &str = "jwt.secret";

/// The secret: `configured` when set, else `<data_dir>/jwt.secret`, created (32 random bytes,
/// hex, mode 0600) when missing. Never logged.
pub fn load_or_create_secret(
    configured: Option<&str>,
    data_dir: &Path,
) -> std::io::Result<Vec<u8>> {
    if let Some(s) = configured.filter(|s| !s.is_empty()) {
        return Ok(s.as_bytes().to_vec());
    }
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 16 => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is empty or shorter than 16 characters; delete it to have a new secret generated",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = data_dir.join(format!("{SECRET_FILE}.{}", ulid::Ulid::new()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(hex.as_bytes())?;
    f.sync_all()?;
    drop(f);
    // Two processes starting at once: the first rename wins, both read the winner.
    if let Err(e) = std::fs::hard_link(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
        // Another process won the race: read its secret (once; no recursion).
        let s = std::fs::read_to_string(&path)?;
        if s.trim().len() < 16 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is being written by another process; retry",
                    path.display()
                ),
            ));
        }
        return Ok(s.trim().as_bytes().to_vec());
    }
    let _ = std::fs::remove_file(&tmp);
    tracing::info!(path = %path.display(), "Generated a new JWT signing secret.");
    Ok(hex.into_bytes())
}

/// The outcome of [`authenticate`], in the request's extensions.
#[derive(Clone, Debug)]
pub enum Authn {
    /// A valid token.
    Ok(Viewer),
    /// No token at all.
    Missing,
    /// A token that did not verify, or whose account the store does not know (or knows
    /// under another reseller).
    Invalid,
    /// A valid token whose account could not be checked: the store is down (503).
    StoreDown,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// `?token=` is for browsers opening a WebSocket, which cannot set headers: only the live
/// routes take it (tokens in other URLs end up in access logs).
fn is_live_route(path: &str) -> bool {
    path.starts_with("/api/") && path.ends_with("/live")
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| v.to_string())
    })
}

/// Decode the caller's token (if any) into an [`Authn`] extension.
pub async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let token = bearer(req.headers()).map(str::to_string).or_else(|| {
        (is_upgrade(req.headers()) && is_live_route(req.uri().path()))
            .then(|| query_token(req.uri().query()))
            .flatten()
    });
    let outcome = match token {
        None => Authn::Missing,
        Some(t) => match st.auth.verify(&t) {
            Ok(v) => check_against_store(&st.store, v).await,
            Err(_) => Authn::Invalid,
        },
    };
    if let Authn::Ok(v) = &outcome {
        tracing::Span::current().record("role", v.role.as_str());
    }
    req.extensions_mut().insert(outcome);
    next.run(req).await
}

/// The hierarchy check: a reseller token's reseller must be a reseller in the store, a
/// customer token's account a customer whose reseller is the token's (filled in from the store
/// when the token has none). Terminated accounts are refused. One indexed read per request.
pub(crate) async fn check_against_store(store: &store::Store, mut v: ws::Viewer) -> Authn {
    use store::{AccountStatus, AccountType, StoreError};
    let id = match v.role {
        Role::Admin => return Authn::Ok(v),
        Role::Reseller => v.reseller.clone(),
        Role::Customer => v.account.clone(),
    };
    let Some(id) = id else {
        return Authn::Invalid;
    };
    match store.account(&id).await {
        Ok(a) if a.status == AccountStatus::Terminated => Authn::Invalid,
        Ok(a) if v.role == Role::Reseller => {
            if a.kind == AccountType::Reseller {
                Authn::Ok(v)
            } else {
                Authn::Invalid
            }
        }
        Ok(a) => {
            if a.kind != AccountType::Customer {
                return Authn::Invalid;
            }
            match &v.reseller {
                Some(r) if Some(r) != a.reseller.as_ref() => Authn::Invalid,
                _ => {
                    v.reseller = a.reseller;
                    Authn::Ok(v)
                }
            }
        }
        Err(StoreError::Unavailable(e)) => {
            tracing::warn!(error = %e, "Cannot check a token's account: the store is unavailable.");
            Authn::StoreDown
        }
        Err(_) => Authn::Invalid,
    }
}

/// An authenticated caller: extracting it answers 401 when the token is missing or bad.
#[derive(Clone, Debug)]
pub struct Caller(pub Viewer);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.extensions.get::<Authn>() {
            Some(Authn::Ok(v)) => Ok(Caller(v.clone())),
            Some(Authn::StoreDown) => Err(ApiError::Unavailable(
                "the store (database) is unavailable; retry shortly".into(),
            )),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

impl Caller {
    /// Admins only.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this route is for admins; your role is {}",
                self.0.role.as_str()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_verify_and_reject() {
        let a = Auth::new(b"0123456789abcdef0123456789abcdef");
        let c = Claims::new(
            "ops",
            Role::Customer,
            Some("acme".into()),
            Some("r1".into()),
            Duration::from_secs(60),
        )
        .unwrap();
        let t = a.mint(&c).unwrap();
        let v = a.verify(&t).unwrap();
        assert_eq!(v.role, Role::Customer);
        assert_eq!(v.account.as_deref(), Some("acme"));
        let other = Auth::new(b"another secret another secret 12");
        assert!(matches!(other.verify(&t), Err(ApiError::Unauthorized)));
        let mut expired = c.clone();
        expired.exp = expired.iat - 60;
        assert!(a.verify(&a.mint(&expired).unwrap()).is_err());
        assert!(Claims::new("x", Role::Reseller, None, None, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn secret_is_generated_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile_dir();
        let s1 = load_or_create_secret(None, &d).unwrap();
        let s2 = load_or_create_secret(None, &d).unwrap();
        assert_eq!(s1, s2);
        assert_eq!(s1.len(), 64);
        let mode = std::fs::metadata(d.join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            load_or_create_secret(Some("configured"), &d).unwrap(),
            b"configured"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("npanel-secret-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
