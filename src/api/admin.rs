//! The admin's face, `/api/v1/admin/…`: users and their balances and tokens, prices,
//! the audit log, the effective settings and the dashboard's numbers; channels in
//! [`channels`]. Every route needs
//! an admin (401 without credentials, 403 for a user); every change is audited by the
//! gateway.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    access::Role,
    api::{
        AppState,
        account::{IssuedTokenView, NewTokenBody, TokenList, TokenView, UserView},
        caller::{Admin, ClientIp},
        params::{Json as Body, Path, Query},
    },
    config::Secret,
    db::{AuditFilter, HourlyCredits, HourlyTasks, Price, UserChanges},
    error::{ApiError, ApiResult, Code, ErrorBody},
    gateway::BalanceChange,
};

mod channels;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(channels::routes())
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user))
        .routes(routes!(change_balance))
        .routes(routes!(user_tokens, create_user_token))
        .routes(routes!(all_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(list_prices))
        .routes(routes!(set_price))
        .routes(routes!(audit_log))
        .routes(routes!(settings))
        .routes(routes!(dashboard))
}

fn user_id(text: &str) -> ApiResult<Uuid> {
    text.parse().map_err(|_| ApiError::new(Code::UserNotFound))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Items to skip.
    offset: Option<u64>,
    /// Items per page, 1–200 (default 50).
    limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
struct UserPage {
    items: Vec<UserView>,
    total: u64,
}

/// Users, in the order they were made.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", params(PageQuery),
    responses((status = 200, description = "Users", body = UserPage),
        (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Not an admin", body = ErrorBody)))]
async fn list_users(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<UserPage>> {
    let (users, total) =
        state.gateway.users(&caller, q.offset.unwrap_or(0), q.limit.unwrap_or(50).clamp(1, 200)).await?;
    Ok(Json(UserPage { items: users.into_iter().map(UserView::from).collect(), total }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    username: String,
    #[schema(value_type = String, format = Password)]
    password: Secret,
    #[serde(default = "user_role")]
    role: Role,
}

fn user_role() -> Role {
    Role::User
}

/// Make a user.
#[utoipa::path(post, path = "/api/v1/admin/users", tag = "admin", request_body = NewUserBody,
    responses((status = 201, description = "Made", body = UserView),
        (status = 400, description = "Bad username or weak password", body = ErrorBody),
        (status = 409, description = "The username is taken", body = ErrorBody)))]
async fn create_user(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ClientIp(ip): ClientIp,
    Body(body): Body<NewUserBody>,
) -> ApiResult<Response> {
    let user = state.gateway.create_user(&caller, &body.username, &body.password, body.role, ip).await?;
    Ok((StatusCode::CREATED, Json(UserView::from(user))).into_response())
}

/// One user.
#[utoipa::path(get, path = "/api/v1/admin/users/{id}", tag = "admin", params(("id" = String, Path, description = "User id")),
    responses((status = 200, description = "The user", body = UserView), (status = 404, description = "No such user", body = ErrorBody)))]
async fn get_user(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(state.gateway.user(&caller, user_id(&id)?).await?.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    role: Option<Role>,
    disabled: Option<bool>,
    /// Tasks queued and running at once; `null` removes the user's own limit.
    #[serde(default, deserialize_with = "present")]
    max_active: Option<Option<u32>>,
    /// A new password (the user's sessions end).
    #[schema(value_type = Option<String>, format = Password)]
    password: Option<Secret>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(deserializer).map(Some)
}

/// Change a user's role, state, limit or password. Disabling ends their sessions and
/// stops their tokens.
#[utoipa::path(patch, path = "/api/v1/admin/users/{id}", tag = "admin", request_body = UserPatch,
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, description = "The user", body = UserView), (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "It would leave no enabled admin (`last_admin`)", body = ErrorBody)))]
async fn update_user(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    Body(body): Body<UserPatch>,
) -> ApiResult<Json<UserView>> {
    let changes =
        UserChanges { role: body.role, disabled: body.disabled, max_active: body.max_active, password_hash: None };
    let user = state.gateway.update_user(&caller, user_id(&id)?, changes, body.password, ip).await?;
    Ok(Json(user.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BalanceBody {
    /// Credits to add (negative to take).
    delta: Option<i64>,
    /// The new balance.
    set: Option<i64>,
    /// Why, for the audit log.
    note: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct BalanceView {
    balance: i64,
}

/// Top up (`delta`) or set (`set`) a user's balance; exactly one of the two.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/balance", tag = "admin", request_body = BalanceBody,
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, description = "The new balance", body = BalanceView),
        (status = 400, description = "Neither or both of delta and set", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody)))]
async fn change_balance(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    Body(body): Body<BalanceBody>,
) -> ApiResult<Json<BalanceView>> {
    let change = match (body.delta, body.set) {
        (Some(delta), None) => BalanceChange::Add(delta),
        (None, Some(value)) => BalanceChange::Set(value),
        _ => return Err(ApiError::with_message(Code::InvalidRequest, "Send exactly one of `delta` and `set`.")),
    };
    let note = body.note.map(|n| n.chars().take(500).collect());
    let balance = state.gateway.change_balance(&caller, user_id(&id)?, change, note, ip).await?;
    Ok(Json(BalanceView { balance }))
}

/// A user's API tokens.
#[utoipa::path(get, path = "/api/v1/admin/users/{id}/tokens", tag = "admin", params(("id" = String, Path, description = "User id")),
    responses((status = 200, description = "Tokens", body = TokenList)))]
async fn user_tokens(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenList>> {
    let items =
        state.gateway.tokens(&caller, Some(user_id(&id)?), false).await?.into_iter().map(TokenView::from).collect();
    Ok(Json(TokenList { items }))
}

/// Make an API token for a user; its text is in this answer only.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/tokens", tag = "admin", request_body = NewTokenBody,
    params(("id" = String, Path, description = "User id")),
    responses((status = 201, description = "Made", body = IssuedTokenView), (status = 404, description = "No such user", body = ErrorBody)))]
async fn create_user_token(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    Body(body): Body<NewTokenBody>,
) -> ApiResult<Response> {
    let request = body.into_request(&state.gateway)?;
    let issued = state.gateway.issue_token(&caller, Some(user_id(&id)?), request, ip).await?;
    let view = IssuedTokenView { token: issued.text.expose().to_owned(), item: issued.token.into() };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Every API token.
#[utoipa::path(get, path = "/api/v1/admin/tokens", tag = "admin", responses((status = 200, description = "Tokens", body = TokenList)))]
async fn all_tokens(State(state): State<AppState>, Admin(caller): Admin) -> ApiResult<Json<TokenList>> {
    let items = state.gateway.tokens(&caller, None, true).await?.into_iter().map(TokenView::from).collect();
    Ok(Json(TokenList { items }))
}

/// Revoke any API token.
#[utoipa::path(delete, path = "/api/v1/admin/tokens/{id}", tag = "admin", params(("id" = String, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "No such token", body = ErrorBody)))]
async fn revoke_token(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.gateway.require_admin(&caller)?;
    let id: Uuid = id.parse().map_err(|_| ApiError::new(Code::TokenNotFound))?;
    state.gateway.revoke_token(&caller, id, ip).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
struct ModelRef {
    name: String,
    kind: String,
}

#[derive(Debug, Serialize, ToSchema)]
struct PriceList {
    items: Vec<Price>,
    /// Every model served, to price.
    models: Vec<ModelRef>,
}

/// Prices per model, and the models that can be priced.
#[utoipa::path(get, path = "/api/v1/admin/prices", tag = "admin", responses((status = 200, description = "Prices", body = PriceList)))]
async fn list_prices(State(state): State<AppState>, Admin(caller): Admin) -> ApiResult<Json<PriceList>> {
    state.gateway.require_admin(&caller)?;
    let mut models: Vec<ModelRef> = state
        .gateway
        .router()
        .channels()
        .iter()
        .flat_map(|c| c.models.iter().map(|m| ModelRef { name: m.name.clone(), kind: m.kind.as_str().to_owned() }))
        .collect();
    models.sort_by(|a, b| a.name.cmp(&b.name));
    models.dedup_by(|a, b| a.name == b.name);
    Ok(Json(PriceList { items: state.gateway.prices().await?, models }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PriceBody {
    /// Credits per succeeded task.
    per_task: i64,
    /// Credits per image a succeeded task made.
    #[serde(default)]
    per_image: i64,
}

/// Set a model's price (both 0: free).
#[utoipa::path(put, path = "/api/v1/admin/prices/{model}", tag = "admin", request_body = PriceBody,
    params(("model" = String, Path, description = "Model name")),
    responses((status = 200, description = "The price", body = Price), (status = 400, description = "Unknown model or negative price", body = ErrorBody)))]
async fn set_price(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ClientIp(ip): ClientIp,
    Path(model): Path<String>,
    Body(body): Body<PriceBody>,
) -> ApiResult<Json<Price>> {
    let price = Price { model, per_task: body.per_task, per_image: body.per_image };
    state.gateway.set_price(&caller, &price, ip).await?;
    Ok(Json(price))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only this actor's entries (a user id).
    actor: Option<Uuid>,
    /// Only this action, e.g. `balance.add`.
    action: Option<String>,
    offset: Option<u64>,
    /// 1–500 (default 100).
    limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
struct AuditView {
    id: i64,
    at: DateTime<Utc>,
    #[schema(value_type = Option<String>, format = Uuid)]
    actor_id: Option<Uuid>,
    actor: Option<String>,
    action: String,
    target: Option<String>,
    #[schema(value_type = Object)]
    detail: Value,
    ip: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct AuditPage {
    items: Vec<AuditView>,
    total: u64,
}

/// The audit log, newest first: who did what, when, from where.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, description = "Entries", body = AuditPage)))]
async fn audit_log(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let filter = AuditFilter {
        actor_id: q.actor,
        action: q.action,
        offset: q.offset.unwrap_or(0),
        limit: q.limit.unwrap_or(100).clamp(1, 500),
    };
    let (records, total) = state.gateway.audit_log(&caller, &filter).await?;
    let items = records
        .into_iter()
        .map(|r| AuditView {
            id: r.id,
            at: r.at,
            actor_id: r.entry.actor_id,
            actor: r.entry.actor,
            action: r.entry.action,
            target: r.entry.target,
            detail: r.entry.detail,
            ip: r.entry.ip,
        })
        .collect();
    Ok(Json(AuditPage { items, total }))
}

/// The effective configuration, secrets masked.
#[utoipa::path(get, path = "/api/v1/admin/settings", tag = "admin", responses((status = 200, description = "The configuration", body = Object)))]
async fn settings(State(state): State<AppState>, Admin(caller): Admin) -> ApiResult<Json<Value>> {
    state.gateway.require_admin(&caller)?;
    Ok(Json(serde_json::to_value(&**state.gateway.config()).map_err(ApiError::internal)?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DashboardQuery {
    /// Hours back, 1–744 (default 24).
    hours: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
struct QueueView {
    channel: String,
    queued: u64,
    running: u64,
}

#[derive(Debug, Serialize, ToSchema)]
struct RunTimeView {
    channel: String,
    tasks: u64,
    p50_ms: i64,
    p95_ms: i64,
}

#[derive(Debug, Serialize, ToSchema)]
struct Dashboard {
    since: DateTime<Utc>,
    tasks: Vec<HourlyTasks>,
    credits: Vec<HourlyCredits>,
    queue: Vec<QueueView>,
    run_time: Vec<RunTimeView>,
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The dashboard's numbers: tasks per hour by model and outcome, credits per hour,
/// queue depth now and run times per channel.
#[utoipa::path(get, path = "/api/v1/admin/dashboard", tag = "admin", params(DashboardQuery),
    responses((status = 200, description = "The numbers", body = Dashboard)))]
async fn dashboard(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Query(q): Query<DashboardQuery>,
) -> ApiResult<Json<Dashboard>> {
    let hours = q.hours.unwrap_or(24).clamp(1, 24 * 31);
    let activity = state.gateway.activity(&caller, hours).await?;
    let queue = state
        .gateway
        .channel_loads()
        .await?
        .into_iter()
        .map(|l| QueueView { channel: l.channel, queued: l.queued, running: l.running })
        .collect();
    let run_time = activity
        .run_times
        .iter()
        .map(|(channel, times)| RunTimeView {
            channel: channel.clone(),
            tasks: times.len() as u64,
            p50_ms: percentile(times, 50.0),
            p95_ms: percentile(times, 95.0),
        })
        .collect();
    Ok(Json(Dashboard {
        since: Utc::now() - chrono::Duration::hours(i64::from(hours)),
        tasks: activity.tasks,
        credits: activity.credits,
        queue,
        run_time,
    }))
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let times: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&times, 50.0), 50);
        assert_eq!(percentile(&times, 95.0), 95);
        assert_eq!(percentile(&[7], 95.0), 7);
        assert_eq!(percentile(&[], 95.0), 0);
    }
}
