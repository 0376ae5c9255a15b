//! Packages (DESIGN §10): create (draft), read, update (a new version; with
//! `apply_to_existing`, **one** `provision/reapply_package` job), activate, deprecate, delete
//! (deprecates instead while accounts use it).
//!
//! Admins manage every package and may give one to a reseller (`owner`); resellers manage their
//! own and read the global ones; customers read their account's package only.

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
use store::{NewPackage, Package, PackageStatus, PackageUpdate};
use utoipa::{IntoParams, ToSchema};

fn can_read(v: &ws::Viewer, p: &Package, customer_package: Option<&str>) -> bool {
    match v.role {
        Role::Admin => true,
        Role::Reseller => p.owner.is_none() || p.owner == v.reseller,
        Role::Customer => customer_package == Some(p.id.as_str()),
    }
}

fn can_manage(v: &ws::Viewer, p: &Package) -> bool {
    match v.role {
        Role::Admin => true,
        Role::Reseller => p.owner.is_some() && p.owner == v.reseller,
        Role::Customer => false,
    }
}

async fn customer_package(st: &AppState, caller: &Caller) -> Result<Option<String>, ApiError> {
    if caller.0.role != Role::Customer {
        return Ok(None);
    }
    let id = caller.0.account.clone().unwrap_or_default();
    match st.store.account(&id).await {
        Ok(a) => Ok(a.package),
        Err(store::StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn visible(st: &AppState, caller: &Caller, id: &str) -> Result<Package, ApiError> {
    let not_found = || ApiError::NotFound(format!("package {id} not found"));
    let own = customer_package(st, caller).await?;
    match st.store.package(id).await {
        Ok(p) if can_read(&caller.0, &p, own.as_deref()) => Ok(p),
        Ok(_) | Err(store::StoreError::NotFound(_)) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

async fn managed(st: &AppState, caller: &Caller, id: &str) -> Result<Package, ApiError> {
    let p = visible(st, caller, id).await?;
    if can_manage(&caller.0, &p) {
        Ok(p)
    } else {
        Err(ApiError::Forbidden(format!(
            "package {id} is not yours to change"
        )))
    }
}

/// `GET /api/packages` paging.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PackageQuery {
    /// Page size (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A page of packages.
#[derive(Debug, Serialize, ToSchema)]
pub struct PackagePage {
    /// By id.
    #[schema(value_type = Vec<Object>)]
    pub packages: Vec<Package>,
    /// Pass as `cursor` for the next page; null at the end.
    pub next_cursor: Option<String>,
}

/// List the packages the caller may read.
#[utoipa::path(get, path = "/api/packages", tag = "packages", params(PackageQuery),
    responses((status = 200, body = PackagePage), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PackageQuery>,
) -> Result<Json<PackagePage>, ApiError> {
    let page = PageRequest::parse(q.limit, q.cursor.as_deref(), "packages")?;
    let (limit, after) = (page.limit, page.after.clone());
    let v = &caller.0;
    let packages = match v.role {
        Role::Admin => {
            st.store
                .list_packages(None, after.as_deref(), limit)
                .await?
        }
        Role::Reseller => {
            st.store
                .list_packages(
                    Some(v.reseller.as_deref().unwrap_or("")),
                    after.as_deref(),
                    limit,
                )
                .await?
        }
        Role::Customer => match customer_package(&st, &caller).await? {
            Some(p) if after.as_deref().is_none_or(|a| p.as_str() > a) => {
                vec![st.store.package(&p).await?]
            }
            _ => Vec::new(),
        },
    };
    let next_cursor = page.next(&packages, "packages", |p| p.id.clone());
    Ok(Json(PackagePage {
        packages,
        next_cursor,
    }))
}

/// Create a package (as a draft).
#[utoipa::path(post, path = "/api/packages", tag = "packages",
    request_body(content = inline(crate::openapi::NewPackageBody)),
    responses((status = 201, body = Object, description = "The package (draft)"), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    ctx: Ctx,
    ApiJson(mut req): ApiJson<NewPackage>,
) -> Result<(StatusCode, Json<Package>), ApiError> {
    let id = req.id.clone();
    let res = async {
        let v = &ctx.caller.0;
        match v.role {
            Role::Admin => {
                if let Some(o) = &req.owner {
                    let a = st.store.account(o).await.map_err(|_| {
                        ApiError::Unprocessable(format!("owner {o} is not a reseller"))
                    })?;
                    if a.kind != store::AccountType::Reseller {
                        return Err(ApiError::Unprocessable(format!(
                            "owner {o} is not a reseller"
                        )));
                    }
                }
            }
            Role::Reseller => {
                if req.owner.is_some() && req.owner != v.reseller {
                    return Err(ApiError::Forbidden(
                        "resellers create packages for themselves only".into(),
                    ));
                }
                req.owner = v.reseller.clone();
            }
            Role::Customer => {
                return Err(ApiError::Forbidden(
                    "customers cannot create packages".into(),
                ))
            }
        }
        Ok(st.store.create_package(req).await?)
    }
    .await;
    let after = res.as_ref().ok().map(|p| json!(p));
    let owner = res.as_ref().ok().and_then(|p| p.owner.clone());
    ctx.audit(
        &st,
        "package_created",
        json!({"type": "package", "id": id, "name": id}),
        None,
        owner.as_deref(),
        json!({"before": null, "after": after}),
        None,
        res.as_ref().err(),
    )
    .await;
    Ok((StatusCode::CREATED, Json(res?)))
}

/// One package.
#[utoipa::path(get, path = "/api/packages/{id}", tag = "packages", params(("id" = String, Path, description = "Package id")),
    responses((status = 200, body = Object, description = "The package"), (status = 404, body = ErrorBody)))]
pub async fn get_package(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Package>, ApiError> {
    Ok(Json(visible(&st, &caller, &id).await?))
}

/// Answer of an update.
#[derive(Debug, Serialize, ToSchema)]
pub struct Updated {
    /// The package at its new version.
    #[schema(value_type = Object)]
    pub package: Package,
    /// The one `provision/reapply_package` job, with `apply_to_existing` (else null).
    #[schema(value_type = Option<Object>)]
    pub job: Option<Value>,
    /// Accounts on the package now.
    pub accounts: i64,
}

/// Update a package (a new version); `apply_to_existing` re-applies it to its accounts
/// through one job.
#[utoipa::path(put, path = "/api/packages/{id}", tag = "packages", params(("id" = String, Path, description = "Package id")),
    request_body(content = inline(crate::openapi::PackageUpdateBody)),
    responses((status = 200, body = Updated), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 501, body = ErrorBody)))]
pub async fn update(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(u): ApiJson<PackageUpdate>,
) -> Result<Json<Updated>, ApiError> {
    let mut changes = Value::Null;
    let res = async {
        managed(&st, &ctx.caller, &id).await?;
        if u.apply_to_existing && !st.queue.is_available(JobKind::Provision) {
            // Refuse before writing: an update whose re-apply cannot run is half an update.
            return Err(queue::QueueError::KindNotAvailable(JobKind::Provision).into());
        }
        let (before, after) = st.store.update_package(&id, &u).await?;
        changes = json!({"before": before, "after": after});
        let accounts = st.store.package_usage(&id).await?;
        let job = if u.apply_to_existing {
            let mut job = NewJob::typed(&Provision {
                action: ProvisionAction::ReapplyPackage,
                account: String::new(),
                package: Some(id.clone()),
                domain: None,
                service_id: None,
                reason: None,
                password: None,
                package_version: Some(after.version),
                database: None,
            });
            job.reseller = after.owner.clone();
            job.idempotency_key = Some(format!("reapply:{id}:{}", after.version));
            Some(accept_json(&st, &ctx.caller, job, "/api/jobs").await?)
        } else {
            None
        };
        Ok(Updated {
            package: after,
            job,
            accounts,
        })
    }
    .await;
    let job_id = res
        .as_ref()
        .ok()
        .and_then(|r| r.job.as_ref())
        .and_then(|j| j["id"].as_str().map(String::from));
    ctx.audit(
        &st,
        "package_updated",
        json!({"type": "package", "id": id, "name": id}),
        None,
        None,
        changes,
        job_id.as_deref(),
        res.as_ref().err(),
    )
    .await;
    Ok(Json(res?))
}

async fn set_status(
    st: &AppState,
    ctx: &Ctx,
    id: &str,
    status: PackageStatus,
    action: &str,
) -> Result<Json<Package>, ApiError> {
    let mut before = None;
    let res = async {
        let p = managed(st, &ctx.caller, id).await?;
        before = Some(p.status);
        Ok(st.store.set_package_status(id, status).await?)
    }
    .await;
    ctx.audit(
        st,
        action,
        json!({"type": "package", "id": id, "name": id}),
        None,
        None,
        json!({"before": {"status": before}, "after": {"status": status}}),
        None,
        res.as_ref().err(),
    )
    .await;
    Ok(Json(res?))
}

/// Activate a package (validated again); new accounts may use it.
#[utoipa::path(post, path = "/api/packages/{id}/activate", tag = "packages", params(("id" = String, Path, description = "Package id")),
    responses((status = 200, body = Object, description = "The package"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn activate(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<Package>, ApiError> {
    set_status(&st, &ctx, &id, PackageStatus::Active, "package_activated").await
}

/// Deprecate a package: its accounts keep it, no new account may use it.
#[utoipa::path(post, path = "/api/packages/{id}/deprecate", tag = "packages", params(("id" = String, Path, description = "Package id")),
    responses((status = 200, body = Object, description = "The package"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn deprecate(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<Package>, ApiError> {
    set_status(
        &st,
        &ctx,
        &id,
        PackageStatus::Deprecated,
        "package_deprecated",
    )
    .await
}

/// Answer of a delete.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// True when the package is gone.
    pub deleted: bool,
    /// The package, deprecated, when accounts still use it.
    #[schema(value_type = Option<Object>)]
    pub package: Option<Package>,
    /// What happened, in a sentence.
    pub message: String,
}

/// Delete a package; one still in use is deprecated instead.
#[utoipa::path(delete, path = "/api/packages/{id}", tag = "packages", params(("id" = String, Path, description = "Package id")),
    responses((status = 200, body = Deleted), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let res = async {
        managed(&st, &ctx.caller, &id).await?;
        let used = st.store.package_usage(&id).await?;
        Ok(match st.store.delete_package(&id).await? {
            None => Deleted {
                deleted: true,
                package: None,
                message: format!("package {id} was deleted"),
            },
            Some(p) => Deleted {
                deleted: false,
                package: Some(p),
                message: format!(
                    "package {id} is used by {used} account(s), so it was deprecated instead: they keep it, no new account can use it"
                ),
            },
        })
    }
    .await;
    let after = res.as_ref().ok().map(|d| {
        if d.deleted {
            json!(null)
        } else {
            json!({"status": "deprecated"})
        }
    });
    ctx.audit(
        &st,
        "package_deleted",
        json!({"type": "package", "id": id, "name": id}),
        None,
        None,
        json!({"before": {"id": id}, "after": after}),
        None,
        res.as_ref().err(),
    )
    .await;
    Ok(Json(res?))
}
