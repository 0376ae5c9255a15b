//! Security defaults and per-account overrides (DESIGN §13, issue 9):
//! `GET/POST /api/accounts/{id}/security-policy`, and the password rules every route that sets
//! a password checks.
//!
//! # Why it works this way
//! - **The store holds the policy, the templates and the validation** ([`store::SecuritySettings`]):
//!   the workers write the host fragments from the same record, so what `GET` shows is what the
//!   host files say once the job ran.
//! - **Effective = template < overrides.** The template is the account's chosen one or, when it
//!   chose none, `host.security_profile` ([`crate::AppState::with_security_default`]); each
//!   setting's `source` says which (`template:<name>` or `override`).
//! - **A change reaches the host the way every account action does**: a `provision` job
//!   (`apply_security`) on the same queue, run by the same workers through the same host access
//!   (the agent, or the embedded host). The route answers 200 at once with the job; it waits for
//!   nothing on the request path. A change that does not touch a host value (only password
//!   rules, or nothing at all) starts no job.
//! - **Nothing half-written**: the request is validated in full first (unknown setting, bad value
//!   → 422 naming it, no reason → 422); if the job cannot be enqueued the stored change is put
//!   back.
//! - **One audit record per call** (`security_policy_changed`): the reason and each changed
//!   field `{field, before, after, source_before, source_after}`.
//! - **Who**: admins, and a reseller for its own customers; customers may read their own policy
//!   but not change it (403); another tenant's account is 404, like a missing one.

use crate::accounts::{
    base as base_provision, provision as enqueue_provision, require_manage, visible_account,
};
use crate::audit::Ctx;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::AppState;
use axum::extract::{Path, State};
use axum::Json;
use queue::ProvisionAction;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use store::{AccountSecurity, AccountStatus, EffectiveSecurity, SecurityError, SecurityPolicy};
use utoipa::ToSchema;

/// Longest reason kept.
pub const MAX_REASON_CHARS: usize = 500;

/// The effective policy of `account` (the host default, no overrides, for `None`: an account
/// that is being created).
pub(crate) async fn effective(
    st: &AppState,
    account: Option<&str>,
) -> Result<EffectiveSecurity, ApiError> {
    let stored = match account {
        Some(a) => st.store.account_security(a).await?,
        None => AccountSecurity::default(),
    };
    Ok(stored.effective(st.security_default))
}

/// Check `password` against `account`'s effective rules (see [`effective`]); the 422 names the
/// rule it breaks.
pub(crate) async fn check_password(
    st: &AppState,
    account: Option<&str>,
    password: &str,
) -> Result<(), ApiError> {
    effective(st, account)
        .await?
        .check_password(password)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))
}

/// `GET /api/accounts/{id}/security-policy`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    /// The account.
    pub account: String,
    /// The template in force: `strict`, `moderate` or `legacy`.
    #[schema(value_type = String)]
    pub policy: SecurityPolicy,
    /// `account` (chosen for it) or `host_default` (`host.security_profile`).
    pub policy_source: &'static str,
    /// `{name: {"value", "source": "template:<name>" | "override"}}`.
    #[schema(value_type = Object)]
    pub settings: Map<String, Value>,
}

impl PolicyView {
    fn of(account: &str, e: &EffectiveSecurity) -> PolicyView {
        PolicyView {
            account: account.to_string(),
            policy: e.policy,
            policy_source: e.policy_source,
            settings: e.settings_view(),
        }
    }
}

/// The effective security policy of an account and where each value comes from.
#[utoipa::path(get, path = "/api/accounts/{id}/security-policy", tag = "accounts",
    params(("id" = String, Path, description = "Username")),
    responses((status = 200, body = PolicyView), (status = 404, body = ErrorBody)))]
pub async fn get_policy(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PolicyView>, ApiError> {
    let a = visible_account(&st, &caller, &id).await?;
    Ok(Json(PolicyView::of(
        &a.id,
        &effective(&st, Some(&a.id)).await?,
    )))
}

/// `POST /api/accounts/{id}/security-policy` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    /// The template: `strict`, `moderate`, `legacy`, or `default` to follow the host's
    /// `host.security_profile` again. Absent: unchanged.
    #[schema(schema_with = policy_name)]
    pub policy: Option<String>,
    /// Settings to pin, by name; `null` un-pins one (back to the template). Absent: unchanged.
    #[schema(value_type = Option<Object>)]
    pub settings: Option<Map<String, Value>>,
    /// Why (required; kept in the audit log; not blank, at most 500 characters).
    #[schema(required = true, value_type = String, pattern = r"\S", max_length = 500)]
    pub reason: Option<String>,
}

fn policy_name() -> utoipa::openapi::schema::Object {
    crate::openapi::nullable(
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(["strict", "moderate", "legacy", "default"]))
            .build(),
    )
}

/// Answer of a change.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyChanged {
    /// The effective policy now.
    #[serde(flatten)]
    pub view: PolicyView,
    /// Each field that changed: `{field, before, after, source_before, source_after}`;
    /// empty when the request changed nothing.
    #[schema(value_type = Vec<Object>)]
    pub changed: Vec<Value>,
    /// The reason given.
    pub reason: String,
    /// The `provision/apply_security` job writing the host fragments; null when no host value
    /// changed.
    #[schema(value_type = Option<Object>)]
    pub job: Value,
}

/// The stored state after `b`, validated (nothing is written here).
fn plan(cur: &AccountSecurity, b: &PolicyChange) -> Result<AccountSecurity, SecurityError> {
    let mut next = cur.clone();
    if let Some(p) = &b.policy {
        next.policy = match p.as_str() {
            "default" => None,
            name => Some(
                SecurityPolicy::parse(name)
                    .ok_or_else(|| SecurityError::UnknownPolicy(name.to_string()))?,
            ),
        };
    }
    if let Some(patch) = &b.settings {
        next.overrides = cur.overrides.patched(patch)?;
    }
    Ok(next)
}

/// Override an account's security policy: its template and/or single settings.
#[utoipa::path(post, path = "/api/accounts/{id}/security-policy", tag = "accounts",
    params(("id" = String, Path, description = "Username")), request_body = PolicyChange,
    responses((status = 200, body = PolicyChanged), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "unknown setting, bad value (named), no reason"),
        (status = 501, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn set_policy(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<PolicyChange>,
) -> Result<Json<PolicyChanged>, ApiError> {
    let account = visible_account(&st, &ctx.caller, &id).await?;
    let reason = b.reason.as_deref().map(str::trim).unwrap_or_default();
    let res = async {
        require_manage(&ctx.caller, &account)?;
        if account.status == AccountStatus::Terminated {
            return Err(ApiError::Conflict(format!(
                "account {id} is terminated; its security policy cannot be changed"
            )));
        }
        if reason.is_empty() {
            return Err(ApiError::Unprocessable(
                "reason is required: say why this account's security policy changes".into(),
            ));
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(ApiError::Unprocessable(format!(
                "reason is longer than {MAX_REASON_CHARS} characters"
            )));
        }
        let default = st.security_default;
        // Validate and see whether the host is concerned before writing anything.
        let cur = st.store.account_security(&id).await?;
        let next = plan(&cur, &b).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
        if cur.effective(default).host_differs(&next.effective(default)) {
            crate::accounts::require_provision(&st)?;
        }
        let (before, after) = st
            .store
            .update_account_security(&id, |cur| Ok(plan(cur, &b)?))
            .await?;
        let (eb, ea) = (before.effective(default), after.effective(default));
        let changed = eb.diff(&ea);
        let job = if eb.host_differs(&ea) {
            let job = enqueue_provision(
                &st,
                &ctx.caller,
                &account,
                base_provision(ProvisionAction::ApplySecurity),
            )
            .await;
            match job {
                Ok(j) => j,
                Err(e) => {
                    // Nothing half-written: the record goes back with the job that could not
                    // start.
                    if let Err(e2) = st.store.restore_account_security(&id, &before).await {
                        tracing::error!(account = %id, error = %e2, "Could not put back the security policy of a change that failed to enqueue.");
                    }
                    return Err(e);
                }
            }
        } else {
            Value::Null
        };
        Ok(PolicyChanged {
            view: PolicyView::of(&id, &ea),
            changed,
            reason: reason.to_string(),
            job,
        })
    }
    .await;
    let changes = match &res {
        Ok(c) => {
            let pick = |k: &str| -> Map<String, Value> {
                c.changed
                    .iter()
                    .map(|f| (f["field"].as_str().unwrap_or("").to_string(), f[k].clone()))
                    .collect()
            };
            json!({"before": pick("before"), "after": pick("after"), "fields": c.changed,
                "reason": c.reason})
        }
        Err(_) => {
            json!({"reason": reason, "requested": {"policy": b.policy, "settings": b.settings}})
        }
    };
    let job_id = res
        .as_ref()
        .ok()
        .and_then(|c| c.job["id"].as_str().map(String::from));
    ctx.audit(
        &st,
        "security_policy_changed",
        json!({"type": "account", "id": id, "name": id}),
        Some(&id),
        account.reseller.as_deref(),
        changes,
        job_id.as_deref(),
        res.as_ref().err(),
    )
    .await;
    Ok(Json(res?))
}
