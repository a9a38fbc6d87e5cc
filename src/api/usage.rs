//! Usage records: `GET /api/v1/usage` — one record per task (who, with which token, on
//! which channel and model, credits reserved and charged, queue and run time, outcome,
//! upstream id), a user's own or, for an admin, everyone's; as JSON pages or as CSV.

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    api::{
        AppState,
        caller::SignedIn,
        params::{self, Query},
    },
    db::{UsageFilter, UsageRecord, UsageTotals},
    error::{ApiError, ApiResult, Code, ErrorBody},
    tasks::TaskId,
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_usage))
}

fn usage_page() -> utoipa::openapi::schema::Object {
    params::clamped("Records per page (JSON; a CSV export holds up to 10,000)", 1, 500, 50)
}

/// Most records one CSV export holds; a larger export pages with `cursor`.
const CSV_ROWS: u32 = 10_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UsageQuery {
    /// Only this user's records (admins; a user always sees only their own).
    user: Option<Uuid>,
    /// Only records of tasks made with this API token.
    token: Option<Uuid>,
    model: Option<String>,
    channel: Option<String>,
    /// `succeeded`, `failed`, `canceled`, or `pending` (not ended yet).
    outcome: Option<String>,
    /// Records of tasks made at or after this time (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Records of tasks made before this time (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Records per page, 1–500 (default 50); a CSV export holds up to 10,000.
    #[param(schema_with = usage_page)]
    limit: Option<u32>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct UsagePage {
    items: Vec<UsageRecord>,
    /// Totals over every record the filters select, not only this page.
    totals: UsageTotals,
    next_cursor: Option<String>,
}

/// Usage records, newest first.
///
/// A user sees their own records; an admin everyone's, narrowed with `user`. With
/// `format=csv` the answer is a CSV file (`Link: <…>; rel="next"` when more remain).
#[utoipa::path(
    get, path = "/api/v1/usage", tag = "usage", params(UsageQuery),
    responses(
        (status = 200, description = "A page of usage records", body = UsagePage),
        (status = 400, description = "Bad filter, cursor or format", body = ErrorBody),
        (status = 401, description = "Not signed in", body = ErrorBody),
    )
)]
async fn list_usage(
    State(state): State<AppState>,
    SignedIn(caller): SignedIn,
    Query(query): Query<UsageQuery>,
) -> ApiResult<Response> {
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::with_message(
                Code::InvalidRequest,
                format!("Unknown format `{other}`: use json or csv."),
            ));
        }
    };
    if let Some(outcome) = query.outcome.as_deref()
        && !matches!(outcome, "succeeded" | "failed" | "canceled" | "pending")
    {
        return Err(ApiError::with_message(
            Code::InvalidRequest,
            "`outcome` is one of succeeded, failed, canceled, pending.",
        ));
    }
    let limit =
        if csv { query.limit.unwrap_or(CSV_ROWS).clamp(1, CSV_ROWS) } else { query.limit.unwrap_or(50).clamp(1, 500) };
    let before = query
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<TaskId>().map_err(|_| ApiError::with_message(Code::InvalidRequest, "The cursor is not valid."))
        })
        .transpose()?;
    let filter = UsageFilter {
        user: query.user,
        token: query.token,
        model: query.model,
        channel: query.channel,
        outcome: query.outcome,
        from: query.from,
        to: query.to,
        before,
        limit: limit + 1,
    };
    let (mut items, totals) = state.gateway.usage(&caller, filter).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|r| r.task_id.to_string())
    } else {
        None
    };
    if !csv {
        return Ok(Json(UsagePage { items, totals, next_cursor }).into_response());
    }
    let body = to_csv(&items)?;
    let mut response = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8")),
            (header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"kiln-usage.csv\"")),
        ],
        body,
    )
        .into_response();
    if let Some(cursor) = next_cursor
        && let Ok(link) = HeaderValue::from_str(&format!("<?format=csv&cursor={cursor}>; rel=\"next\""))
    {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// One row per record, with a header row; times in RFC 3339.
fn to_csv(records: &[UsageRecord]) -> ApiResult<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .write_record([
            "task_id",
            "created_at",
            "finished_at",
            "user_id",
            "username",
            "token_id",
            "token_name",
            "channel",
            "model",
            "kind",
            "outcome",
            "error_code",
            "reserved",
            "charged",
            "queue_ms",
            "run_ms",
            "upstream_id",
        ])
        .map_err(ApiError::internal)?;
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let number = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    for r in records {
        writer
            .write_record([
                r.task_id.to_string(),
                r.created_at.to_rfc3339(),
                r.finished_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                r.user_id.map(|u| u.to_string()).unwrap_or_default(),
                text(&r.username),
                r.token_id.map(|u| u.to_string()).unwrap_or_default(),
                text(&r.token_name),
                r.channel.clone(),
                r.model.clone(),
                r.kind.clone(),
                text(&r.outcome),
                text(&r.error_code),
                r.reserved.to_string(),
                number(r.charged),
                number(r.queue_ms),
                number(r.run_ms),
                text(&r.upstream_id),
            ])
            .map_err(ApiError::internal)?;
    }
    writer.into_inner().map_err(ApiError::internal)
}
