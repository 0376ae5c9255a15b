//! Per-account outbound mail limits (DESIGN §13, issue 9): `GET/PUT /api/accounts/{id}/email-policy`.
//!
//! # Why it works this way
//! - **The store decides the values** ([`store::effective_email_policy`]): defaults (500
//!   recipients an hour, a burst of 100 per 15 minutes, 50 MB an hour, 10 connections), then the
//!   package's `email_*` limits, then the account's override. `GET` shows each value with its
//!   source (`default`, `package`, `account`), so nobody has to guess why an account may send
//!   what it may.
//! - **A `PUT` changes only the fields it names**: a number overrides the field, `null` drops
//!   the override (back to the package or the default), an absent field is left as it is. An
//!   unknown field or a value out of range is 422 naming it; nothing is stored then.
//! - **The host follows through a job.** The API holds no host handle (it only enqueues work;
//!   the agent is the workers' business), so a change that moves an effective value enqueues a
//!   `provision` job (`apply_email_policy`). The job reads the effective policy from the store
//!   when it runs — a retried or late job applies the latest — and asks the agent to write the
//!   policy and the Exim ACL, validated by `exim -bV` and reloaded. The route answers 200 at
//!   once with the job. If the job cannot be enqueued, the stored override is put back.
//! - **One audit record per call** (`email_policy_changed`): the reason and each changed field
//!   before → after (effective values), plus where each came from.
//! - **Who**: admins, and a reseller for its own customers; a customer may read its own policy
//!   but not change it (403); another tenant's account is 404, like a missing one.

use crate::accounts::{provision, require_manage, require_provision, visible_account};
use crate::audit::Ctx;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::AppState;
use axum::extract::{Path, State};
use axum::Json;
use queue::{Provision, ProvisionAction};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use store::{
    Account, AccountStatus, EffectiveEmailPolicy, EmailPolicyOverride, DEFAULT_EMAIL_POLICY,
    EMAIL_POLICY_FIELDS,
};
use utoipa::ToSchema;

/// Longest reason kept.
pub const MAX_REASON_CHARS: usize = 500;

/// An account's effective email policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailPolicyView {
    /// The account.
    pub account: String,
    /// Its package.
    pub package: Option<String>,
    /// `{per_hour, burst_per_15min, mb_per_hour, max_connections}` in force.
    #[schema(value_type = Object)]
    pub policy: store::EmailPolicy,
    /// Per field: `default`, `package` or `account`.
    #[schema(value_type = Object)]
    pub sources: Value,
    /// The account's own overrides (only the fields it sets).
    #[schema(value_type = Object)]
    pub overrides: EmailPolicyOverride,
    /// The built-in defaults.
    #[schema(value_type = Object)]
    pub defaults: store::EmailPolicy,
}

impl EmailPolicyView {
    fn new(a: &Account, e: &EffectiveEmailPolicy) -> Self {
        EmailPolicyView {
            account: a.id.clone(),
            package: a.package.clone(),
            policy: e.policy,
            sources: json!(e.sources),
            overrides: e.overrides,
            defaults: DEFAULT_EMAIL_POLICY,
        }
    }
}

/// `PUT` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailPolicyChange {
    /// Fields to change: a number overrides, `null` drops the override, absent is unchanged.
    #[schema(schema_with = policy_fields)]
    pub policy: Map<String, Value>,
    /// Why (kept in the audit log; 1-500 characters, not blank).
    #[schema(pattern = r"\S", min_length = 1, max_length = 500)]
    pub reason: String,
}

/// `PUT` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailPolicyChanged {
    /// The policy now in force (stored; on the host once `job` has run).
    pub policy: EmailPolicyView,
    /// The fields whose effective value changed.
    pub changed: Vec<String>,
    /// The `provision/apply_email_policy` job writing it to the host; null when no effective
    /// value changed.
    #[schema(value_type = Option<Object>)]
    pub job: Value,
}

async fn effective(st: &AppState, a: &Account) -> Result<EffectiveEmailPolicy, ApiError> {
    Ok(st.store.effective_email_policy(a).await?)
}

/// An account's email policy and where each value comes from.
#[utoipa::path(get, path = "/api/accounts/{id}/email-policy", tag = "accounts",
    params(("id" = String, Path, description = "Username")),
    responses((status = 200, body = EmailPolicyView), (status = 404, body = ErrorBody)))]
pub async fn get_policy(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<EmailPolicyView>, ApiError> {
    let a = visible_account(&st, &caller, &id).await?;
    let e = effective(&st, &a).await?;
    Ok(Json(EmailPolicyView::new(&a, &e)))
}

/// The override after `patch` (422 for an unknown field or a value that is not a count).
fn patched(
    old: &EmailPolicyOverride,
    patch: &Map<String, Value>,
) -> Result<EmailPolicyOverride, ApiError> {
    if patch.is_empty() {
        return Err(ApiError::Unprocessable(format!(
            "policy names no field; fields are: {}",
            EMAIL_POLICY_FIELDS.join(", ")
        )));
    }
    let mut ov = *old;
    for (k, v) in patch {
        let value = match v {
            Value::Null => None,
            v => Some(
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        ApiError::Unprocessable(format!(
                            "policy.{k} must be a whole number (or null to drop the override), not {v}"
                        ))
                    })?,
            ),
        };
        if !ov.set(k, value) {
            return Err(ApiError::Unprocessable(format!(
                "unknown field policy.{k}; fields are: {}",
                EMAIL_POLICY_FIELDS.join(", ")
            )));
        }
    }
    Ok(ov)
}

/// Change an account's email policy overrides (admins; resellers for their customers).
#[utoipa::path(put, path = "/api/accounts/{id}/email-policy", tag = "accounts",
    params(("id" = String, Path, description = "Username")), request_body = EmailPolicyChange,
    responses((status = 200, body = EmailPolicyChanged), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "terminated account"),
        (status = 422, body = ErrorBody, description = "unknown field, value out of range (named), no reason"),
        (status = 501, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn put_policy(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<EmailPolicyChange>,
) -> Result<Json<EmailPolicyChanged>, ApiError> {
    let a = visible_account(&st, &ctx.caller, &id).await?;
    let res = put_inner(&st, &ctx, &a, &body).await;
    let changes = match &res {
        Ok((_, c)) => c.clone(),
        Err(_) => json!({"before": null, "after": null, "reason": body.reason}),
    };
    let job_id = res
        .as_ref()
        .ok()
        .and_then(|(r, _)| r.job["id"].as_str().map(String::from));
    ctx.audit(
        &st,
        "email_policy_changed",
        json!({"type": "email_policy", "id": id, "name": id}),
        Some(&id),
        a.reseller.as_deref(),
        changes,
        job_id.as_deref(),
        res.as_ref().err(),
    )
    .await;
    Ok(Json(res?.0))
}

async fn put_inner(
    st: &AppState,
    ctx: &Ctx,
    a: &Account,
    body: &EmailPolicyChange,
) -> Result<(EmailPolicyChanged, Value), ApiError> {
    require_manage(&ctx.caller, a)?;
    if a.status == AccountStatus::Terminated {
        return Err(ApiError::Conflict(format!(
            "account {} is terminated; its email policy cannot be changed",
            a.id
        )));
    }
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::Unprocessable(format!(
            "reason must be 1-{MAX_REASON_CHARS} characters: say why the limits change"
        )));
    }
    let before = effective(st, a).await?;
    let ov = patched(&before.overrides, &body.policy)?;
    let after = store::effective_email_policy(a.limits.as_ref(), &ov)
        .map_err(|p| ApiError::Unprocessable(format!("policy: {}", p.join("; "))))?;
    let changed: Vec<String> = EMAIL_POLICY_FIELDS
        .iter()
        .filter(|f| before.policy.get(f) != after.policy.get(f))
        .map(|f| f.to_string())
        .collect();
    let job = if changed.is_empty() {
        st.store.set_email_policy_override(&a.id, &ov).await?;
        Value::Null
    } else {
        require_provision(st)?;
        st.store.set_email_policy_override(&a.id, &ov).await?;
        let p = Provision {
            action: ProvisionAction::ApplyEmailPolicy,
            account: a.id.clone(),
            package: None,
            domain: None,
            service_id: None,
            reason: Some(reason.to_string()),
            password: None,
            package_version: None,
            database: None,
        };
        match provision(st, &ctx.caller, a, p).await {
            Ok(job) => job,
            Err(e) => {
                // Nothing half-done: the override goes back with the job that could not start.
                if let Err(e2) = st
                    .store
                    .set_email_policy_override(&a.id, &before.overrides)
                    .await
                {
                    tracing::error!(account = %a.id, error = %e2, "Could not put back the email policy override of a change that failed to enqueue.");
                }
                return Err(e);
            }
        }
    };
    let mut b = Map::new();
    let mut f = Map::new();
    let mut fields = Vec::new();
    for field in &changed {
        let (x, y) = (before.policy.get(field), after.policy.get(field));
        b.insert(field.clone(), json!(x));
        f.insert(field.clone(), json!(y));
        fields.push(json!({"field": field, "before": x, "after": y,
            "source_before": before.sources.get(field.as_str()),
            "source_after": after.sources.get(field.as_str())}));
    }
    let audit = json!({"before": b, "after": f, "fields": fields, "reason": reason,
        "overrides_before": before.overrides, "overrides_after": ov});
    Ok((
        EmailPolicyChanged {
            policy: EmailPolicyView::new(a, &after),
            changed,
            job,
        },
        audit,
    ))
}

/// The `policy` object of a change: each field of [`EMAIL_POLICY_FIELDS`], a number within its
/// bound or null (drop the override), nothing else.
fn policy_fields() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    let mut b = ObjectBuilder::new()
        .schema_type(Type::Object)
        .min_properties(Some(1))
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    for f in EMAIL_POLICY_FIELDS {
        let max = match f {
            "mb_per_hour" => store::MAX_EMAIL_MB_PER_HOUR,
            "max_connections" => store::MAX_EMAIL_CONNECTIONS,
            _ => store::MAX_EMAIL_PER_HOUR,
        };
        b = b.property(
            f,
            crate::openapi::nullable(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(max))
                    .build(),
            ),
        );
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_override_drop_and_refuse() {
        let old = EmailPolicyOverride {
            per_hour: Some(9),
            ..Default::default()
        };
        let m = |v: Value| v.as_object().unwrap().clone();
        let ov = patched(&old, &m(json!({"mb_per_hour": 5, "per_hour": null}))).unwrap();
        assert_eq!(ov.per_hour, None);
        assert_eq!(ov.mb_per_hour, Some(5));
        for bad in [
            json!({"per_day": 1}),
            json!({"per_hour": -1}),
            json!({"per_hour": "5"}),
            json!({"per_hour": 1.5}),
            json!({}),
        ] {
            assert!(
                matches!(
                    patched(&old, &m(bad.clone())),
                    Err(ApiError::Unprocessable(_))
                ),
                "{bad}"
            );
        }
    }
}
