//! An account's MariaDB/MySQL databases (DESIGN §11, §13; issue 9): list with sizes, create.
//!
//! # Why this shape
//! - **Names are `<account>_<name>`** on the server at `databases.url`, `name` being
//!   `[a-z0-9_]` and the whole at most 64 characters (the server's limit); anything else is
//!   422 before anything is enqueued. The list is what the server has under the account's
//!   prefix (`information_schema`, with data + index bytes), so a database made by a restore
//!   or by hand is listed and counted the same ([`store::HostedDatabases`]).
//! - **Creating is host work, so it is a `provision/create_database` job** (202 with the job),
//!   like every account change; the job's `CREATE DATABASE IF NOT EXISTS` makes a retry
//!   harmless.
//! - **The package's `databases` is checked twice**: here (409 `limit_reached`, nothing
//!   enqueued), and in the job under a per-account lock on the database server, because two
//!   requests can pass this check together. `null` is unlimited, `0` allows none.
//! - **Not configured is 501 `not_available`**: without `databases.url` this server cannot
//!   have databases at all, which no retry changes (503 would say "try again later"). The
//!   message names the setting. A configured server that does not answer is 503
//!   `unavailable`.
//! - **Visibility and audit** follow the account routes: customers their own account,
//!   resellers their customers', admins all; another tenant's account is 404. Creating is
//!   audited as `database_created`. Deleting a database is not offered yet (nor database users).

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
use store::{Account, AccountStatus, AccountType, DatabaseError, HostedDatabase, HostedDatabases};
use utoipa::ToSchema;

impl AppState {
    /// The accounts' database server (`databases.url`, see [`HostedDatabases::new`]); without
    /// one the database routes answer 501.
    pub fn with_databases(mut self, databases: Option<HostedDatabases>) -> AppState {
        self.databases = databases;
        self
    }
}

impl From<DatabaseError> for ApiError {
    fn from(e: DatabaseError) -> Self {
        match e {
            DatabaseError::Invalid(m) => ApiError::Unprocessable(m),
            e @ DatabaseError::LimitReached { .. } => ApiError::LimitReached(e.to_string()),
            DatabaseError::Unavailable(m) => {
                tracing::warn!(detail = %m, "Database server unavailable.");
                ApiError::Unavailable(
                    "the accounts' database server is unavailable; retry shortly".into(),
                )
            }
            DatabaseError::Server(m) => ApiError::Internal(m),
        }
    }
}

fn configured(st: &AppState) -> Result<&HostedDatabases, ApiError> {
    st.databases.as_ref().ok_or_else(|| {
        ApiError::NotAvailable(
            "databases are not configured on this server: set databases.url (mysql://user:password@host:3306) to offer them"
                .into(),
        )
    })
}

/// `GET /api/accounts/{id}/databases` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DatabaseList {
    /// The account.
    pub account: String,
    /// By name: `{name, short_name, size_bytes, tables}`.
    #[schema(value_type = Vec<Object>)]
    pub databases: Vec<HostedDatabase>,
    /// How many it has.
    pub used: i64,
    /// Its package's `databases` (null: unlimited).
    pub limit: Option<u64>,
}

/// `POST /api/accounts/{id}/databases` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDatabase {
    /// The name after the `<account>_` prefix: `[a-z0-9_]`, the whole at most 64 characters.
    pub name: String,
}

/// `202` answer of a database creation.
#[derive(Debug, Serialize, ToSchema)]
pub struct DatabaseAccepted {
    /// The account.
    pub account: String,
    /// The full name, `<account>_<name>`.
    pub database: String,
    /// The `provision` job creating it.
    #[schema(value_type = Object)]
    pub job: Value,
}

/// The account's databases, with their sizes.
#[utoipa::path(get, path = "/api/accounts/{id}/databases", tag = "accounts",
    params(("id" = String, Path, description = "Username")),
    responses((status = 200, body = DatabaseList), (status = 404, body = ErrorBody),
        (status = 501, body = ErrorBody, description = "not_available: databases.url is not configured"),
        (status = 503, body = ErrorBody, description = "the database server does not answer")))]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DatabaseList>, ApiError> {
    let a = visible_account(&st, &caller, &id).await?;
    let dbs = configured(&st)?;
    let databases = if a.kind == AccountType::Admin {
        Vec::new()
    } else {
        dbs.list(&a.id).await?
    };
    Ok(Json(DatabaseList {
        account: a.id.clone(),
        used: databases.len() as i64,
        databases,
        limit: a.limits.as_ref().and_then(|l| l.databases),
    }))
}

/// Create a database `<account>_<name>` (a `provision/create_database` job).
#[utoipa::path(post, path = "/api/accounts/{id}/databases", tag = "accounts",
    params(("id" = String, Path, description = "Username")), request_body = NewDatabase,
    responses((status = 202, body = DatabaseAccepted), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "conflict (it exists, or the account is terminated) or limit_reached (the package's databases; nothing created)"),
        (status = 422, body = ErrorBody, description = "a name that is not [a-z0-9_], or too long"),
        (status = 501, body = ErrorBody, description = "not_available: databases.url is not configured (or no provision handler)"),
        (status = 503, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<NewDatabase>,
) -> Result<(StatusCode, Json<DatabaseAccepted>), ApiError> {
    let a = visible_account(&st, &ctx.caller, &id).await?;
    let res = create_inner(&st, &ctx, &a, &b).await;
    let asked: String = b.name.chars().take(64).collect();
    let name = res
        .as_ref()
        .map(|r| r.database.clone())
        .unwrap_or_else(|_| format!("{}_{asked}", a.id));
    let job_id = res
        .as_ref()
        .ok()
        .and_then(|r| r.job["id"].as_str().map(String::from));
    ctx.audit(
        &st,
        "database_created",
        json!({"type": "database", "id": name, "name": name}),
        Some(&a.id),
        a.reseller.as_deref(),
        json!({"before": null, "after": {"database": name}}),
        job_id.as_deref(),
        res.as_ref().err(),
    )
    .await;
    Ok((StatusCode::ACCEPTED, Json(res?)))
}

async fn create_inner(
    st: &AppState,
    ctx: &Ctx,
    a: &Account,
    b: &NewDatabase,
) -> Result<DatabaseAccepted, ApiError> {
    if a.kind == AccountType::Admin {
        return Err(ApiError::Conflict(format!(
            "account {} is an admin login; it has no databases",
            a.id
        )));
    }
    if a.status == AccountStatus::Terminated {
        return Err(ApiError::Conflict(format!(
            "account {} is terminated; it cannot have new databases",
            a.id
        )));
    }
    // Bad input is told first; then whether this server has databases at all.
    let full = store::hosted_database_name(&a.id, &b.name)?;
    let dbs = configured(st)?;
    let have = dbs.list(&a.id).await?;
    if have.iter().any(|d| d.name == full) {
        return Err(ApiError::Conflict(format!(
            "database {full} exists already"
        )));
    }
    if let Some(limit) = a.limits.as_ref().and_then(|l| l.databases) {
        let used = have.len() as i64;
        if u64::try_from(used).unwrap_or(0) >= limit {
            return Err(DatabaseError::LimitReached {
                account: a.id.clone(),
                used,
                limit,
            }
            .into());
        }
    }
    require_provision(st)?;
    let mut p = base(ProvisionAction::CreateDatabase);
    p.database = Some(b.name.clone());
    let job = provision(st, &ctx.caller, a, p).await?;
    Ok(DatabaseAccepted {
        account: a.id.clone(),
        database: full,
        job,
    })
}
