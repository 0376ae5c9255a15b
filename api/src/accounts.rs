//! Accounts and resellers (DESIGN §10): the hierarchy, allowances, feature checks, and the
//! account actions, each a `provision` job.
//!
//! Who may do what:
//! - admins: everything;
//! - resellers: read their own account and their customers'; create, suspend, unsuspend,
//!   re-package, terminate and set passwords of their customers, within their allowance; never
//!   create resellers or admins;
//! - customers: read their own account, set its password, check its features.
//!
//! Passwords are checked against the account's effective security policy
//! ([`crate::security`]); a new account's against the host's template.
//!
//! Another tenant's account answers 404 like a missing one. Every mutating call writes an audit
//! record (success, failure or denied). An action is checked in full before anything is
//! written; when its job cannot be enqueued (no handler in this build: 501; queue full: 503;
//! Redis down: 503) a newly created account row is removed again, so nothing is half-written.

use crate::audit::Ctx;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, PageRequest};
use crate::jobs::accept_json;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use queue::{JobKind, NewJob, Provision, ProvisionAction};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use store::{Account, AccountStatus, AccountType, Allowance, NewAccount};
use utoipa::{IntoParams, ToSchema};

/// `POST /api/accounts` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// Username: `^[a-z][a-z0-9]{0,15}$`, not reserved.
    pub id: String,
    /// `customer` (default), `reseller` or `admin`.
    #[serde(rename = "type")]
    #[schema(value_type = Option<String>, schema_with = account_type)]
    pub kind: Option<AccountType>,
    /// Parent account (resellers: always themselves).
    pub parent: Option<String>,
    /// Package id.
    pub package: Option<String>,
    /// Main domain.
    pub domain: Option<String>,
    /// Contact e-mail.
    pub email: Option<String>,
    /// Initial password (passed to the provisioning job; never stored or shown): the host
    /// template's password rules (`host.security_profile`, strict: 12+ characters, mixed case,
    /// three character classes).
    pub password: Option<String>,
    /// Reseller allowance `{max_accounts, disk_mb, bandwidth_mb}`.
    #[schema(schema_with = crate::openapi::allowance_or_null)]
    pub allowance: Option<Allowance>,
}

/// `202` answer of an account action.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountAccepted {
    /// The account as recorded now.
    #[schema(value_type = Object)]
    pub account: Account,
    /// The `provision` job doing the work (null for an admin login, which has nothing to
    /// build on the host and is answered 201).
    #[schema(value_type = Option<Object>)]
    pub job: Value,
}

fn account_status() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(
            [
                AccountStatus::Pending,
                AccountStatus::Active,
                AccountStatus::Suspended,
                AccountStatus::Terminated,
            ]
            .map(|s| s.as_str()),
        ))
        .build()
}

fn account_type() -> utoipa::openapi::schema::Object {
    crate::openapi::nullable(
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(
                [
                    AccountType::Customer,
                    AccountType::Reseller,
                    AccountType::Admin,
                ]
                .map(|t| t.as_str()),
            ))
            .build(),
    )
}

fn can_see(v: &ws::Viewer, a: &Account) -> bool {
    match v.role {
        Role::Admin => true,
        Role::Reseller => v.reseller.is_some() && a.reseller == v.reseller,
        Role::Customer => v.account.as_deref() == Some(a.id.as_str()),
    }
}

/// The account if the caller may see it (else 404, as for a missing one).
pub(crate) async fn visible_account(
    st: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Account, ApiError> {
    let not_found = || ApiError::NotFound(format!("account {id} not found"));
    if id.is_empty() || id.len() > 64 {
        return Err(not_found());
    }
    match st.store.account(id).await {
        Ok(a) if can_see(&caller.0, &a) => Ok(a),
        Ok(_) | Err(store::StoreError::NotFound(_)) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

/// May the caller manage (suspend, re-package, ...) this account?
pub(crate) fn require_manage(caller: &Caller, a: &Account) -> Result<(), ApiError> {
    let v = &caller.0;
    let ok = match v.role {
        Role::Admin => true,
        Role::Reseller => a.kind == AccountType::Customer && a.reseller == v.reseller,
        Role::Customer => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "a {} cannot do this to account {}",
            v.role.as_str(),
            a.id
        )))
    }
}

/// Enqueue the `provision` job for `action` on `a`.
pub(crate) async fn provision(
    st: &AppState,
    caller: &Caller,
    a: &Account,
    mut p: Provision,
) -> Result<Value, ApiError> {
    p.account = a.id.clone();
    let mut job = NewJob::typed(&p);
    job.account = Some(a.id.clone());
    job.reseller = a.reseller.clone();
    accept_json(st, caller, job, "/api/jobs").await
}

pub(crate) fn require_provision(st: &AppState) -> Result<(), ApiError> {
    if st.queue.is_available(JobKind::Provision) {
        Ok(())
    } else {
        Err(queue::QueueError::KindNotAvailable(JobKind::Provision).into())
    }
}

/// Create an account (a `provision/create` job builds it on the host).
#[utoipa::path(post, path = "/api/accounts", tag = "accounts", request_body = CreateAccount,
    responses((status = 202, body = AccountAccepted),
        (status = 201, body = AccountAccepted, description = "An admin login: recorded, nothing to build (job null)"), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "conflict (name taken) or allowance_exceeded"),
        (status = 422, body = ErrorBody), (status = 501, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    ctx: Ctx,
    ApiJson(req): ApiJson<CreateAccount>,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    let id = req.id.clone();
    let res = create_inner(&st, &ctx, req).await;
    let (reseller, job_id) = match &res {
        Ok((_, b)) => (
            b.account.reseller.clone(),
            b.job["id"].as_str().map(String::from),
        ),
        Err(_) => (ctx.caller.0.reseller.clone(), None),
    };
    let after = res.as_ref().ok().map(|(_, b)| json!(b.account));
    ctx.audit(
        &st,
        "account_created",
        json!({"type": "account", "id": id, "name": id}),
        Some(&id),
        reseller.as_deref(),
        json!({"before": null, "after": after}),
        job_id.as_deref(),
        res.as_ref().err(),
    )
    .await;
    res
}

async fn create_inner(
    st: &AppState,
    ctx: &Ctx,
    req: CreateAccount,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    let v = &ctx.caller.0;
    let kind = req.kind.unwrap_or(AccountType::Customer);
    let parent = match v.role {
        Role::Admin => req.parent,
        Role::Reseller => {
            if kind != AccountType::Customer {
                return Err(ApiError::Forbidden(
                    "resellers create customer accounts only".into(),
                ));
            }
            if req.parent.is_some() && req.parent != v.reseller {
                return Err(ApiError::Forbidden(
                    "resellers create accounts under themselves only".into(),
                ));
            }
            v.reseller.clone()
        }
        Role::Customer => {
            return Err(ApiError::Forbidden(
                "customers cannot create accounts".into(),
            ))
        }
    };
    if let Some(p) = &req.password {
        // A new account has the host's template and no overrides yet.
        crate::security::check_password(st, None, p).await?;
    }
    let new = NewAccount {
        id: req.id,
        kind: Some(kind),
        parent,
        package: req.package,
        domain: req.domain,
        email: req.email,
        allowance: req.allowance,
        whmcs_service_id: None,
    };
    if let Some(d) = &new.domain {
        if d.len() > 253 || !d.contains('.') || d.starts_with('.') || d.contains("..") {
            return Err(ApiError::Unprocessable(format!(
                "domain {d:?} is not a domain name"
            )));
        }
    }
    if kind != AccountType::Admin && !st.queue.is_available(JobKind::Provision) {
        // Bad input is still told first; then the honest 501.
        st.store.check_new_account(&new).await?;
        require_provision(st)?;
    }
    let account = st.store.create_account(&new).await?;
    if kind == AccountType::Admin {
        // Nothing to build on the host for an admin login.
        let account = st
            .store
            .set_account_status(&account.id, AccountStatus::Active, None)
            .await?;
        return Ok((
            StatusCode::CREATED,
            Json(AccountAccepted {
                account,
                job: Value::Null,
            }),
        ));
    }
    let job = provision(
        st,
        &ctx.caller,
        &account,
        Provision {
            action: ProvisionAction::Create,
            account: String::new(),
            package: account.package.clone(),
            domain: account.domain.clone(),
            service_id: None,
            reason: None,
            password: req.password,
            package_version: None,
            database: None,
        },
    )
    .await;
    match job {
        Ok(job) => Ok((StatusCode::ACCEPTED, Json(AccountAccepted { account, job }))),
        Err(e) => {
            // Nothing half-written: the row goes with the job that could not start.
            if let Err(e2) = st.store.forget_pending_account(&account.id).await {
                tracing::error!(account = %account.id, error = %e2, "Could not remove the account row of a create that failed to enqueue.");
            }
            Err(e)
        }
    }
}

/// `GET /api/accounts` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AccountQuery {
    /// Only this reseller's customers (admins; resellers always get their own).
    pub reseller: Option<String>,
    /// Only this status.
    #[param(schema_with = account_status)]
    pub status: Option<String>,
    /// Page size (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A page of accounts.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountPage {
    /// By id.
    #[schema(value_type = Vec<Object>)]
    pub accounts: Vec<Account>,
    /// Pass as `cursor` for the next page; null at the end.
    pub next_cursor: Option<String>,
}

/// List the accounts the caller may see.
#[utoipa::path(get, path = "/api/accounts", tag = "accounts", params(AccountQuery),
    responses((status = 200, body = AccountPage), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AccountQuery>,
) -> Result<Json<AccountPage>, ApiError> {
    let page = PageRequest::parse(q.limit, q.cursor.as_deref(), "accounts")?;
    let (limit, after) = (page.limit, page.after.clone());
    let status = q
        .status
        .as_deref()
        .map(|s| {
            AccountStatus::parse(s).ok_or_else(|| {
                ApiError::BadRequest(
                    "status must be pending, active, suspended or terminated".into(),
                )
            })
        })
        .transpose()?;
    let v = &caller.0;
    let accounts = match v.role {
        Role::Admin => {
            st.store
                .list_accounts(q.reseller.as_deref(), status, after.as_deref(), limit)
                .await?
        }
        Role::Reseller => {
            if q.reseller.is_some() && q.reseller != v.reseller {
                Vec::new()
            } else {
                st.store
                    .list_accounts(v.reseller.as_deref(), status, after.as_deref(), limit)
                    .await?
            }
        }
        Role::Customer => {
            let id = v.account.clone().unwrap_or_default();
            match st.store.account(&id).await {
                Ok(a)
                    if after.as_deref().is_none_or(|x| a.id.as_str() > x)
                        && status.is_none_or(|s| s == a.status) =>
                {
                    vec![a]
                }
                Ok(_) | Err(store::StoreError::NotFound(_)) => Vec::new(),
                Err(e) => return Err(e.into()),
            }
        }
    };
    let next_cursor = page.next(&accounts, "accounts", |a| a.id.clone());
    Ok(Json(AccountPage {
        accounts,
        next_cursor,
    }))
}

/// One account.
#[utoipa::path(get, path = "/api/accounts/{id}", tag = "accounts", params(("id" = String, Path, description = "Username")),
    responses((status = 200, body = Object, description = "The account (DESIGN §10 shape)"), (status = 404, body = ErrorBody)))]
pub async fn get_account(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Account>, ApiError> {
    Ok(Json(visible_account(&st, &caller, &id).await?))
}

/// Body of suspend and terminate.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReasonBody {
    /// Why (kept on the account and in the audit log).
    pub reason: Option<String>,
}

/// Body of change-package.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageBody {
    /// The new package id.
    pub package: String,
}

/// Body of password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    /// The new password, by the account's effective security policy (strict: 12+ characters,
    /// mixed case, three character classes; at most 128).
    pub password: String,
}

/// One account action: check, enqueue, audit.
async fn action(
    st: &AppState,
    ctx: &Ctx,
    id: &str,
    act: ProvisionAction,
    audit_action: &str,
    build: impl FnOnce(&Account) -> Result<(Provision, Value), ApiError>,
    extra_check: Option<&str>,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    let account = visible_account(st, &ctx.caller, id).await?;
    let res = async {
        // Customers may set their own password; everything else needs the right to manage.
        let self_service =
            act == ProvisionAction::ChangePassword && ctx.caller.0.role == Role::Customer;
        if !self_service {
            require_manage(&ctx.caller, &account)?;
        }
        let conflict = |what: &str| {
            Err(ApiError::Conflict(format!(
                "account {id} is {}; it cannot be {what}",
                account.status.as_str()
            )))
        };
        match (act, account.status) {
            (_, AccountStatus::Terminated) => return conflict("changed"),
            (ProvisionAction::Suspend, AccountStatus::Suspended) => {
                return conflict("suspended again")
            }
            (ProvisionAction::Unsuspend, s) if s != AccountStatus::Suspended => {
                return conflict("unsuspended")
            }
            _ => {}
        }
        if let Some(pkg) = extra_check {
            st.store.check_package_change(&account, pkg).await?;
        }
        require_provision(st)?;
        let (p, changes) = build(&account)?;
        let job = provision(st, &ctx.caller, &account, p).await?;
        Ok((changes, job))
    }
    .await;
    let changes = res.as_ref().map(|r| r.0.clone()).unwrap_or(Value::Null);
    let job_id = res
        .as_ref()
        .ok()
        .and_then(|r| r.1["id"].as_str().map(String::from));
    ctx.audit(
        st,
        audit_action,
        json!({"type": "account", "id": id, "name": id}),
        Some(id),
        account.reseller.as_deref(),
        changes,
        job_id.as_deref(),
        res.as_ref().err(),
    )
    .await;
    let (_, job) = res?;
    Ok((StatusCode::ACCEPTED, Json(AccountAccepted { account, job })))
}

pub(crate) fn base(act: ProvisionAction) -> Provision {
    Provision {
        action: act,
        account: String::new(),
        package: None,
        domain: None,
        service_id: None,
        reason: None,
        password: None,
        package_version: None,
        database: None,
    }
}

/// Suspend an account.
#[utoipa::path(post, path = "/api/accounts/{id}/suspend", tag = "accounts", params(("id" = String, Path, description = "Username")),
    request_body = ReasonBody, responses((status = 202, body = AccountAccepted), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 501, body = ErrorBody)))]
pub async fn suspend(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ReasonBody>,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    action(&st, &ctx, &id, ProvisionAction::Suspend, "account_suspended", |a| {
        let mut p = base(ProvisionAction::Suspend);
        p.reason = b.reason.clone();
        Ok((p, json!({"before": {"status": a.status}, "after": {"status": "suspended", "reason": b.reason}})))
    }, None)
    .await
}

/// Unsuspend an account.
#[utoipa::path(post, path = "/api/accounts/{id}/unsuspend", tag = "accounts", params(("id" = String, Path, description = "Username")),
    responses((status = 202, body = AccountAccepted), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 501, body = ErrorBody)))]
pub async fn unsuspend(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    action(
        &st,
        &ctx,
        &id,
        ProvisionAction::Unsuspend,
        "account_unsuspended",
        |a| {
            Ok((
                base(ProvisionAction::Unsuspend),
                json!({"before": {"status": a.status}, "after": {"status": "active"}}),
            ))
        },
        None,
    )
    .await
}

/// Terminate an account (its home is backed up first by the job).
#[utoipa::path(post, path = "/api/accounts/{id}/terminate", tag = "accounts", params(("id" = String, Path, description = "Username")),
    request_body = ReasonBody, responses((status = 202, body = AccountAccepted), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 501, body = ErrorBody)))]
pub async fn terminate(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ReasonBody>,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    action(&st, &ctx, &id, ProvisionAction::Terminate, "account_terminated", |a| {
        let mut p = base(ProvisionAction::Terminate);
        p.reason = b.reason.clone();
        Ok((p, json!({"before": {"status": a.status}, "after": {"status": "terminated", "reason": b.reason}})))
    }, None)
    .await
}

/// Move an account to another package (within the reseller's allowance).
#[utoipa::path(post, path = "/api/accounts/{id}/change-package", tag = "accounts", params(("id" = String, Path, description = "Username")),
    request_body = PackageBody, responses((status = 202, body = AccountAccepted), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 501, body = ErrorBody)))]
pub async fn change_package(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<PackageBody>,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    let pkg = b.package.clone();
    action(
        &st,
        &ctx,
        &id,
        ProvisionAction::ChangePackage,
        "package_changed",
        |a| {
            let mut p = base(ProvisionAction::ChangePackage);
            p.package = Some(b.package.clone());
            Ok((
                p,
                json!({"before": {"package": a.package}, "after": {"package": b.package}}),
            ))
        },
        Some(&pkg),
    )
    .await
}

/// Set an account's password (customers: their own).
#[utoipa::path(post, path = "/api/accounts/{id}/password", tag = "accounts", params(("id" = String, Path, description = "Username")),
    request_body = PasswordBody, responses((status = 202, body = AccountAccepted), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "conflict: the account is terminated"),
        (status = 422, body = ErrorBody), (status = 501, body = ErrorBody)))]
pub async fn password(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<PasswordBody>,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    // The account's own rules; another tenant's account is 404 before any rule is told.
    visible_account(&st, &ctx.caller, &id).await?;
    crate::security::check_password(&st, Some(&id), &b.password).await?;
    action(&st, &ctx, &id, ProvisionAction::ChangePassword, "password_changed", |_| {
        let mut p = base(ProvisionAction::ChangePassword);
        p.password = Some(b.password.clone());
        Ok((p, json!({"before": {"password": "**REDACTED**"}, "after": {"password": "**REDACTED**"}})))
    }, None)
    .await
}

/// Answer of a feature check.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeatureAnswer {
    /// Always true in a 200 (a disabled feature is 403 `feature_disabled`).
    pub enabled: bool,
    /// The feature.
    pub feature: String,
    /// The package that grants it.
    pub package: Option<String>,
}

/// Whether an account's package grants a feature.
#[utoipa::path(get, path = "/api/accounts/{id}/features/{feature}", tag = "accounts",
    params(("id" = String, Path, description = "Username"), ("feature" = inline(crate::openapi::FeatureName), Path, description = "Feature name")),
    responses((status = 200, body = FeatureAnswer), (status = 403, body = ErrorBody, description = "feature_disabled"),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn feature(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, feature)): Path<(String, String)>,
) -> Result<Json<FeatureAnswer>, ApiError> {
    if !store::FEATURES.contains(&feature.as_str()) {
        return Err(ApiError::Unprocessable(format!(
            "unknown feature {feature:?}; features are: {}",
            store::FEATURES.join(", ")
        )));
    }
    let a = visible_account(&st, &caller, &id).await?;
    if a.features.contains(&feature) {
        return Ok(Json(FeatureAnswer {
            enabled: true,
            feature,
            package: a.package,
        }));
    }
    Err(ApiError::FeatureDisabled(match &a.package {
        Some(p) => format!("account {id}'s package {p} does not include {feature}"),
        None => format!("account {id} has no package, so no {feature}"),
    }))
}

/// Replace a reseller's allowance (admins).
#[utoipa::path(put, path = "/api/resellers/{id}/allowance", tag = "resellers", params(("id" = String, Path, description = "Reseller id")),
    request_body(content = inline(crate::openapi::AllowanceBody)),
    responses((status = 200, body = Object, description = "The reseller account"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_allowance(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<Allowance>,
) -> Result<Json<Account>, ApiError> {
    let before = st.store.account(&id).await.ok().and_then(|a| a.allowance);
    let res = async {
        ctx.caller.require_admin()?;
        Ok(st.store.set_allowance(&id, &b).await?)
    }
    .await;
    ctx.audit(
        &st,
        "allowance_changed",
        json!({"type": "reseller", "id": id, "name": id}),
        Some(&id),
        Some(&id),
        json!({"before": before, "after": b}),
        None,
        res.as_ref().err(),
    )
    .await;
    Ok(Json(res?))
}

/// A reseller's use of its allowance (admins, and the reseller itself).
#[utoipa::path(get, path = "/api/resellers/{id}/summary", tag = "resellers", params(("id" = String, Path, description = "Reseller id")),
    responses((status = 200, body = Object, description = "{reseller, allowance, accounts, pending, suspended, disk_mb_allocated, bandwidth_mb_allocated}"),
        (status = 404, body = ErrorBody)))]
pub async fn reseller_summary(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<store::ResellerSummary>, ApiError> {
    let v = &caller.0;
    let allowed = v.role == Role::Admin
        || (v.role == Role::Reseller && v.reseller.as_deref() == Some(id.as_str()));
    if !allowed {
        return Err(ApiError::NotFound(format!("reseller {id} not found")));
    }
    Ok(Json(st.store.reseller_summary(&id).await?))
}
