//! An account's addon domains (DESIGN §10, §11, §13; issue 9): list, add, remove.
//!
//! # Why this shape
//! - **A domain is host work, so it is a `provision` job**, like every other account change:
//!   `POST` and `DELETE` check everything they can, then enqueue `provision/add_domain` or
//!   `provision/remove_domain` and answer 202 with the job. The job writes the store's row,
//!   the zone file and the account's mail policy (so mailbox logins of the new domain count
//!   as the account's), each step idempotent.
//! - **The package's `addon_domains` is checked twice**: here, so a request at the limit is
//!   409 `limit_reached` with nothing enqueued; and in the job, where the row is written in
//!   the same transaction as the count, because two requests can pass this check together.
//!   `null` is unlimited, `0` allows none.
//! - **Visibility is the account routes' rule** ([`crate::accounts`]): customers their own
//!   account, resellers their customers' (and their own), admins all; another tenant's account
//!   is 404 like a missing one. Adding and removing are self-service for whoever sees the
//!   account: the package's limit, not the role, bounds them.
//! - **Audited** as `domain_added` / `domain_removed` (success, failure or denied).

use crate::accounts::{base, provision, require_provision, visible_account};
use crate::audit::Ctx;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use queue::ProvisionAction;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use store::{Account, AccountDomain, AccountStatus, AccountType, DomainError};
use utoipa::ToSchema;

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            e @ DomainError::Taken { .. } => ApiError::Conflict(e.to_string()),
            e @ DomainError::LimitReached { .. } => ApiError::LimitReached(e.to_string()),
            DomainError::Store(e) => e.into(),
        }
    }
}

/// `GET /api/accounts/{id}/domains` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DomainList {
    /// The account.
    pub account: String,
    /// Its primary domain (null when it has none).
    pub primary: Option<String>,
    /// Its extra domains, by name: `{domain, account, kind, created_at}`.
    #[schema(value_type = Vec<Object>)]
    pub domains: Vec<AccountDomain>,
    /// Addon domains it has.
    pub addon_domains_used: i64,
    /// Its package's `addon_domains` (null: unlimited).
    pub addon_domains_limit: Option<u64>,
}

/// `POST /api/accounts/{id}/domains` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDomain {
    /// The addon domain, e.g. `shop.example.com` (stored lower case): labels of letters,
    /// digits and inner hyphens (at most 63 each, 253 in all), the last one starting with a
    /// letter.
    #[schema(
        max_length = 253,
        pattern = r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
    )]
    pub domain: String,
}

/// `202` answer of a domain change.
#[derive(Debug, Serialize, ToSchema)]
pub struct DomainAccepted {
    /// The account.
    pub account: String,
    /// The domain (lower case).
    pub domain: String,
    /// The `provision` job doing the work.
    #[schema(value_type = Object)]
    pub job: Value,
}

/// The account's addon domains.
#[utoipa::path(get, path = "/api/accounts/{id}/domains", tag = "accounts",
    params(("id" = String, Path, description = "Username")),
    responses((status = 200, body = DomainList), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DomainList>, ApiError> {
    let a = visible_account(&st, &caller, &id).await?;
    let domains = st.store.account_domains(&a.id).await?;
    let used = domains
        .iter()
        .filter(|d| d.kind == store::DomainKind::Addon)
        .count() as i64;
    Ok(Json(DomainList {
        account: a.id.clone(),
        primary: a.domain.clone(),
        domains,
        addon_domains_used: used,
        addon_domains_limit: a.limits.as_ref().and_then(|l| l.addon_domains),
    }))
}

/// Accounts that live on the host (not admin logins, not terminated) may have domains.
fn require_hosted(a: &Account) -> Result<(), ApiError> {
    if a.kind == AccountType::Admin {
        return Err(ApiError::Conflict(format!(
            "account {} is an admin login; it has no site to add domains to",
            a.id
        )));
    }
    if a.status == AccountStatus::Terminated {
        return Err(ApiError::Conflict(format!(
            "account {} is terminated; its domains cannot be changed",
            a.id
        )));
    }
    Ok(())
}

/// Add an addon domain (a `provision/add_domain` job writes the row, the zone and the mail
/// policy).
#[utoipa::path(post, path = "/api/accounts/{id}/domains", tag = "accounts",
    params(("id" = String, Path, description = "Username")), request_body = NewDomain,
    responses((status = 202, body = DomainAccepted), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "conflict (the domain is taken) or limit_reached (the package's addon_domains; nothing created)"),
        (status = 422, body = ErrorBody, description = "not a domain name"),
        (status = 501, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn add(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<NewDomain>,
) -> Result<(StatusCode, Json<DomainAccepted>), ApiError> {
    let a = visible_account(&st, &ctx.caller, &id).await?;
    let res = async {
        require_hosted(&a)?;
        let domain = store::normalize_domain(b.domain.trim())?;
        let limit = a.limits.as_ref().and_then(|l| l.addon_domains);
        st.store.check_addon_domain(&a.id, &domain, limit).await?;
        require_provision(&st)?;
        let mut p = base(ProvisionAction::AddDomain);
        p.domain = Some(domain.clone());
        let job = provision(&st, &ctx.caller, &a, p).await?;
        Ok(DomainAccepted {
            account: a.id.clone(),
            domain,
            job,
        })
    }
    .await;
    audit(&st, &ctx, &a, "domain_added", &b.domain, &res).await;
    Ok((StatusCode::ACCEPTED, Json(res?)))
}

/// Remove an addon domain (a `provision/remove_domain` job removes the zone, the row and the
/// domain from the mail policy).
#[utoipa::path(delete, path = "/api/accounts/{id}/domains/{domain}", tag = "accounts",
    params(("id" = String, Path, description = "Username"), ("domain" = String, Path, description = "The addon domain")),
    responses((status = 202, body = DomainAccepted), (status = 404, body = ErrorBody, description = "no such account, or the account has no such addon domain"),
        (status = 409, body = ErrorBody, description = "the account's primary domain, or a terminated account"),
        (status = 501, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn remove(
    State(st): State<AppState>,
    ctx: Ctx,
    Path((id, domain)): Path<(String, String)>,
) -> Result<(StatusCode, Json<DomainAccepted>), ApiError> {
    let a = visible_account(&st, &ctx.caller, &id).await?;
    let res = async {
        require_hosted(&a)?;
        let wanted = domain.trim().to_ascii_lowercase();
        if a.domain.as_deref().map(str::to_ascii_lowercase) == Some(wanted.clone()) {
            return Err(ApiError::Conflict(format!(
                "{wanted} is the primary domain of account {}; it goes with the account",
                a.id
            )));
        }
        let ours = st.store.account_domains(&a.id).await?;
        if !ours.iter().any(|d| d.domain == wanted) {
            return Err(ApiError::NotFound(format!(
                "account {} has no addon domain {wanted}",
                a.id
            )));
        }
        require_provision(&st)?;
        let mut p = base(ProvisionAction::RemoveDomain);
        p.domain = Some(wanted.clone());
        let job = provision(&st, &ctx.caller, &a, p).await?;
        Ok(DomainAccepted {
            account: a.id.clone(),
            domain: wanted,
            job,
        })
    }
    .await;
    audit(&st, &ctx, &a, "domain_removed", &domain, &res).await;
    Ok((StatusCode::ACCEPTED, Json(res?)))
}

async fn audit(
    st: &AppState,
    ctx: &Ctx,
    a: &Account,
    action: &str,
    asked: &str,
    res: &Result<DomainAccepted, ApiError>,
) {
    // What was asked may be anything up to the body limit: the record keeps a domain's worth.
    let asked: String = asked.chars().take(store::MAX_DOMAIN_LEN).collect();
    let domain = res.as_ref().map(|r| r.domain.as_str()).unwrap_or(&asked);
    let (before, after) = match action {
        "domain_added" => (Value::Null, json!({"domain": domain, "kind": "addon"})),
        _ => (json!({"domain": domain, "kind": "addon"}), Value::Null),
    };
    let job_id = res
        .as_ref()
        .ok()
        .and_then(|r| r.job["id"].as_str().map(String::from));
    ctx.audit(
        st,
        action,
        json!({"type": "domain", "id": domain, "name": domain}),
        Some(&a.id),
        a.reseller.as_deref(),
        json!({"before": before, "after": after}),
        job_id.as_deref(),
        res.as_ref().err(),
    )
    .await;
}
