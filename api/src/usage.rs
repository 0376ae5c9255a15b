//! `GET /api/accounts/{id}/usage`: an account's usage series from the quota sweep
//! (DESIGN §13), for whoever may see the account.
//!
//! Buckets of an hour, a day or any whole number of hours; the default is the last 7 days by
//! the hour. A bucket holds the largest disk figure measured in it and the traffic it added;
//! hours the sweep did not measure are absent (not zero), so a gap is visible as a gap.

use crate::accounts::visible_account;
use crate::audit::parse_time;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use crate::AppState;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use store::{UsageNow, UsagePoint, DAY_MS, HOUR_MS, USAGE_KEEP_MS};
use utoipa::{IntoParams, ToSchema};

/// Most buckets one answer holds.
const MAX_POINTS: i64 = 20_000;

/// `GET /api/accounts/{id}/usage` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// From (RFC 3339), inclusive. Default: `to` minus 7 days.
    pub from: Option<String>,
    /// To (RFC 3339), exclusive. Default: now.
    pub to: Option<String>,
    /// Bucket: `hour` (default), `day`, or a whole number of hours in seconds (`21600`).
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
    }))
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
