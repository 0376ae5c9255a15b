//! `GET /api/accounts/{id}/usage`: an account's usage series from the quota sweep
//! (DESIGN §13), for whoever may see the account.
//!
//! Buckets of an hour, a day or any whole number of hours; the default is the last 7 days by
//! the hour. A bucket holds the largest disk figure measured in it and the traffic it added;
//! hours the sweep did not measure are absent (not zero), so a gap is visible as a gap.

use crate::accounts::visible_account;
use crate::audit::{parse_time, Ctx};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::AppState;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use store::{UsageNow, UsagePoint, DAY_MS, HOUR_MS, USAGE_KEEP_MS};
use utoipa::{IntoParams, ToSchema};

/// Most buckets one answer holds.
const MAX_POINTS: i64 = 20_000;

/// `GET /api/accounts/{id}/usage` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// From (RFC 3339), inclusive. Default: `to` minus 7 days.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// To (RFC 3339), exclusive. Default: now.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Bucket: `hour` (default), `day`, or a whole number of hours in seconds (`21600`).
    #[param(pattern = "^(hour|day|[0-9]+)$")]
    pub step: Option<String>,
}

/// The answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageSeries {
    pub account: String,
    #[schema(value_type = String, format = DateTime)]
    pub from: chrono::DateTime<chrono::Utc>,
    #[schema(value_type = String, format = DateTime)]
    pub to: chrono::DateTime<chrono::Utc>,
    /// Bucket length.
    pub step_seconds: i64,
    /// Buckets with a measurement, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub points: Vec<UsagePoint>,
    /// The last measurement and this month's traffic; null until the sweep has measured the
    /// account.
    #[schema(value_type = Option<Object>)]
    pub now: Option<UsageNow>,
    /// The package's disk limit, MB (null: unlimited).
    pub disk_limit_mb: Option<u64>,
    /// The package's monthly bandwidth limit, MB (null: unlimited).
    pub bandwidth_limit_mb: Option<u64>,
    /// Where the last sweep found the account against each limit (0, 80, 95 or 100 %) and
    /// whether it is enforced.
    #[schema(value_type = Vec<Object>)]
    pub levels: Vec<store::UsageLevel>,
    /// An admin's override of the limits and grace period, if any.
    #[schema(value_type = Option<Object>)]
    pub r#override: Option<store::UsageOverride>,
}

fn step_ms(step: Option<&str>) -> Result<i64, ApiError> {
    match step.unwrap_or("hour") {
        "hour" => Ok(HOUR_MS),
        "day" => Ok(DAY_MS),
        s => match s.parse::<i64>() {
            Ok(secs) if secs >= 3600 && secs % 3600 == 0 && secs <= 366 * 86400 => Ok(secs * 1000),
            Ok(_) => Err(ApiError::Unprocessable(format!(
                "step {s} must be a whole number of hours in seconds (3600, 7200, …), at most a year"
            ))),
            Err(_) => Err(ApiError::BadRequest(format!(
                "step {s:?} must be hour, day or a number of seconds"
            ))),
        },
    }
}

/// An account's usage series.
#[utoipa::path(get, path = "/api/accounts/{id}/usage", tag = "accounts",
    params(("id" = String, Path, description = "Username"), UsageQuery),
    responses((status = 200, body = UsageSeries), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn account_usage(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Json<UsageSeries>, ApiError> {
    let account = visible_account(&st, &caller, &id).await?;
    let step = step_ms(q.step.as_deref())?;
    let to = parse_time("to", &q.to)?.unwrap_or_else(store::now_ms);
    let from = parse_time("from", &q.from)?.unwrap_or(to - 7 * DAY_MS);
    if from >= to {
        return Err(ApiError::Unprocessable("from must be before to".into()));
    }
    if to - from > USAGE_KEEP_MS + DAY_MS {
        return Err(ApiError::Unprocessable(
            "the range may span at most two years (what is kept)".into(),
        ));
    }
    if (to - from) / step > MAX_POINTS {
        return Err(ApiError::Unprocessable(format!(
            "{} buckets asked for; at most {MAX_POINTS}: use a longer step",
            (to - from) / step
        )));
    }
    let points = st.store.usage_series(&account.id, from, to, step).await?;
    let now = st
        .store
        .usage_now(Some(std::slice::from_ref(&account.id)))
        .await?
        .remove(&account.id);
    let time = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    Ok(Json(UsageSeries {
        account: account.id.clone(),
        from: time(from),
        to: time(to),
        step_seconds: step / 1000,
        points,
        now,
        disk_limit_mb: account.limits.as_ref().and_then(|l| l.disk_mb),
        bandwidth_limit_mb: account.limits.as_ref().and_then(|l| l.bandwidth_mb),
        levels: st.store.usage_levels(Some(&account.id)).await?,
        r#override: st.store.usage_override(&account.id).await?,
    }))
}

/// `PUT /api/accounts/{id}/usage-override`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideBody {
    /// Disk limit instead of the package's, MB (absent: the package's).
    #[schema(minimum = 1)]
    pub disk_mb: Option<u64>,
    /// Monthly bandwidth limit instead of the package's, MB (absent: the package's).
    #[schema(minimum = 1)]
    pub bandwidth_mb: Option<u64>,
    /// Hours from now during which nothing is enforced (warnings are still recorded); at
    /// most 2160 (90 days).
    #[schema(maximum = 2160)]
    pub grace_hours: Option<u64>,
    /// Why (kept with the override and in the audit log; not blank).
    #[schema(pattern = r"\S", min_length = 1)]
    pub reason: String,
}

/// Set an account's limit override and grace period (admins). The next sweep holds the
/// account to it: an enforcement it no longer justifies is lifted then.
#[utoipa::path(put, path = "/api/accounts/{id}/usage-override", tag = "accounts",
    params(("id" = String, Path, description = "Username")), request_body = OverrideBody,
    responses((status = 200, body = Object, description = "The override stored"), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_override(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<OverrideBody>,
) -> Result<Json<store::UsageOverride>, ApiError> {
    let before = match ctx.caller.require_admin() {
        Ok(()) => st.store.usage_override(&id).await?,
        Err(_) => None,
    };
    let res = async {
        ctx.caller.require_admin()?;
        let account = visible_account(&st, &ctx.caller, &id).await?;
        if b.reason.trim().is_empty() {
            return Err(ApiError::Unprocessable("reason must not be empty".into()));
        }
        if b.disk_mb == Some(0) || b.bandwidth_mb == Some(0) {
            return Err(ApiError::Unprocessable(
                "a limit of 0 MB is not a limit: leave it out to use the package's".into(),
            ));
        }
        if b.grace_hours.is_some_and(|h| h > 24 * 90) {
            return Err(ApiError::Unprocessable(
                "grace_hours may be at most 2160 (90 days)".into(),
            ));
        }
        let now = chrono::Utc::now();
        let o = store::UsageOverride {
            account: account.id.clone(),
            disk_mb: b.disk_mb,
            bandwidth_mb: b.bandwidth_mb,
            grace_until: b
                .grace_hours
                .map(|h| now + chrono::Duration::hours(h as i64)),
            reason: b.reason.clone(),
            updated_at: now,
        };
        st.store.set_usage_override(&account.id, Some(&o)).await?;
        Ok((account, o))
    }
    .await;
    let reseller = res.as_ref().ok().and_then(|(a, _)| a.reseller.clone());
    ctx.audit(
        &st,
        "usage_override_set",
        json!({"type": "account", "id": id, "name": id}),
        Some(&id),
        reseller.as_deref(),
        json!({"before": before, "after": res.as_ref().ok().map(|(_, o)| o)}),
        None,
        res.as_ref().err(),
    )
    .await;
    Ok(Json(res?.1))
}

/// Remove an account's limit override (admins): the package's limits again.
#[utoipa::path(delete, path = "/api/accounts/{id}/usage-override", tag = "accounts",
    params(("id" = String, Path, description = "Username")),
    responses((status = 200, body = Object, description = "{removed}"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn remove_override(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let before = match ctx.caller.require_admin() {
        Ok(()) => st.store.usage_override(&id).await?,
        Err(_) => None,
    };
    let res = async {
        ctx.caller.require_admin()?;
        let account = visible_account(&st, &ctx.caller, &id).await?;
        st.store.set_usage_override(&account.id, None).await?;
        Ok(account)
    }
    .await;
    let reseller = res.as_ref().ok().and_then(|a| a.reseller.clone());
    ctx.audit(
        &st,
        "usage_override_removed",
        json!({"type": "account", "id": id, "name": id}),
        Some(&id),
        reseller.as_deref(),
        json!({"before": before, "after": null}),
        None,
        res.as_ref().err(),
    )
    .await;
    res?;
    Ok(Json(json!({"removed": before.is_some()})))
}

/// `GET /api/accounts/{id}/notifications` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NotificationQuery {
    /// At most this many, newest first (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// An account's notifications (usage warnings, limits enforced and lifted), newest first.
#[utoipa::path(get, path = "/api/accounts/{id}/notifications", tag = "accounts",
    params(("id" = String, Path, description = "Username"), NotificationQuery),
    responses((status = 200, body = Object, description = "{notifications: [{id, account, ts, kind, resource, level, message}]}"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn notifications(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<NotificationQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let account = visible_account(&st, &caller, &id).await?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 500".into(),
        ));
    }
    let list = st.store.notifications(Some(&account.id), limit).await?;
    Ok(Json(json!({ "notifications": list })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_hours_days_or_whole_hours() {
        assert_eq!(step_ms(None).unwrap(), HOUR_MS);
        assert_eq!(step_ms(Some("day")).unwrap(), DAY_MS);
        assert_eq!(step_ms(Some("21600")).unwrap(), 6 * HOUR_MS);
        assert!(matches!(
            step_ms(Some("90")),
            Err(ApiError::Unprocessable(_))
        ));
        assert!(matches!(
            step_ms(Some("week")),
            Err(ApiError::BadRequest(_))
        ));
    }
}
