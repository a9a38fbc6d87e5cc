//! The signed-in user's own face: signing in and out of the page (a session cookie and
//! a CSRF token), who am I, changing one's password, and one's API tokens.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    access::Role,
    accounts::{TokenRequest, sessions::COOKIE_NAME},
    api::{
        AppState,
        caller::{ClientIp, SignedIn, Visitor, cookie},
        params::{Json as Body, Path},
    },
    config::{AuthMode, Secret},
    db::{ApiToken, User},
    error::{ApiError, ApiResult, Code, ErrorBody},
    gateway::Gateway,
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sign_in, sign_out))
        .routes(routes!(me))
        .routes(routes!(change_password))
        .routes(routes!(my_tokens, create_my_token))
        .routes(routes!(revoke_my_token))
        .routes(routes!(webhook_secret))
}

/// A user, as the API shows one.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    /// Credits left.
    pub balance: i64,
    /// The user's own limit of tasks queued and running at once.
    pub max_active: Option<u32>,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            username: u.username,
            role: u.role,
            balance: u.balance,
            max_active: u.max_active,
            disabled: u.disabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// An API token, as listed: never its text, only its last four characters.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    #[schema(value_type = String, format = Uuid)]
    pub user_id: Uuid,
    pub name: String,
    /// The token's last four characters.
    pub hint: String,
    pub models: Option<Vec<String>>,
    pub spend_cap: Option<i64>,
    pub spent: i64,
    pub rate_per_minute: Option<u32>,
    pub webhook_url: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<ApiToken> for TokenView {
    fn from(t: ApiToken) -> Self {
        Self {
            id: t.id,
            user_id: t.user_id,
            name: t.name,
            hint: t.hint,
            models: t.models,
            spend_cap: t.spend_cap,
            spent: t.spent,
            rate_per_minute: t.rate_per_minute,
            webhook_url: t.webhook_url,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
            created_at: t.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<TokenView>,
}

/// What a new token may do.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenBody {
    pub name: String,
    /// Only these models.
    pub models: Option<Vec<String>>,
    /// Credits the token may spend in all.
    pub spend_cap: Option<i64>,
    pub rate_per_minute: Option<u32>,
    /// Where finished tasks made with this token are reported, unless a task names its own.
    pub webhook_url: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl NewTokenBody {
    pub fn into_request(self, gateway: &Gateway) -> ApiResult<TokenRequest> {
        if let Some(url) = &self.webhook_url {
            gateway.check_webhook_url(url)?;
        }
        Ok(TokenRequest {
            name: self.name,
            models: self.models,
            spend_cap: self.spend_cap,
            rate_per_minute: self.rate_per_minute,
            webhook_url: self.webhook_url,
            expires_at: self.expires_at,
        })
    }
}

/// A token just made: its text is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedTokenView {
    /// `kiln_…`: send it as `Authorization: Bearer …`. kiln keeps only its hash.
    pub token: String,
    pub item: TokenView,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SignIn {
    username: String,
    #[schema(value_type = String, format = Password)]
    password: Secret,
}

#[derive(Debug, Serialize, ToSchema)]
struct SignedInView {
    user: UserView,
    /// Send it as `X-CSRF-Token` with every write made with the session.
    csrf_token: String,
    expires_at: DateTime<Utc>,
}

fn session_cookie(gateway: &Gateway, value: &str, max_age: i64) -> ApiResult<HeaderValue> {
    let secure = if gateway.config().public_url().scheme() == "https" { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"))
        .map_err(ApiError::internal)
}

/// Sign in to the page: a session cookie (`HttpOnly`, `SameSite=Lax`, `Secure` behind
/// HTTPS) and the CSRF token every write must carry.
#[utoipa::path(
    post, path = "/api/v1/session", tag = "account", request_body = SignIn,
    responses(
        (status = 200, description = "Signed in", body = SignedInView),
        (status = 401, description = "Wrong username or password (`invalid_credentials`)", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address for this username", body = ErrorBody),
    )
)]
async fn sign_in(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Body(body): Body<SignIn>,
) -> ApiResult<Response> {
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (user, signed) = state.gateway.sign_in(ip, &body.username, &body.password, agent).await?;
    let max_age = (signed.expires_at - Utc::now()).num_seconds().max(0);
    let cookie = session_cookie(&state.gateway, signed.cookie.expose(), max_age)?;
    let view = SignedInView { user: user.into(), csrf_token: signed.csrf, expires_at: signed.expires_at };
    Ok(([(header::SET_COOKIE, cookie), (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(view))
        .into_response())
}

/// Sign out: the session ends on the server and the cookie is cleared.
#[utoipa::path(
    delete, path = "/api/v1/session", tag = "account",
    responses((status = 204, description = "Signed out"), (status = 403, description = "No X-CSRF-Token", body = ErrorBody))
)]
async fn sign_out(State(state): State<AppState>, _visitor: Visitor, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(value) = cookie(&headers, COOKIE_NAME) {
        state.gateway.sign_out(value).await?;
    }
    let cleared = session_cookie(&state.gateway, "", 0)?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cleared)]).into_response())
}

#[derive(Debug, Serialize, ToSchema)]
struct Me {
    /// `open`: the API takes anonymous callers; `tokens`: it needs a token or a session.
    auth_mode: AuthMode,
    /// The signed-in user; `null` for an anonymous caller.
    user: Option<UserView>,
    /// The session's CSRF token, for the page; `null` without a session.
    csrf_token: Option<String>,
}

/// Who is calling: the user (with their balance) and the page session's CSRF token.
#[utoipa::path(
    get, path = "/api/v1/me", tag = "account",
    responses((status = 200, description = "The caller", body = Me),
        (status = 401, description = "A token that is unknown, revoked or expired", body = ErrorBody))
)]
async fn me(State(state): State<AppState>, Visitor(caller): Visitor, headers: HeaderMap) -> ApiResult<Json<Me>> {
    let user = state.gateway.me(&caller).await?;
    let csrf_token = match (&user, cookie(&headers, COOKIE_NAME)) {
        (Some(_), Some(value)) => state.gateway.session_csrf(value).await?,
        _ => None,
    };
    Ok(Json(Me { auth_mode: state.gateway.auth_mode(), user: user.map(UserView::from), csrf_token }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    #[schema(value_type = String, format = Password)]
    current_password: Secret,
    /// 8 to 256 characters.
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 256)]
    new_password: Secret,
}

/// Change one's password; every session of the user ends (API tokens keep working).
#[utoipa::path(
    put, path = "/api/v1/me/password", tag = "account", request_body = PasswordChange,
    responses((status = 204, description = "Changed"),
        (status = 400, description = "Too weak (`weak_password`)", body = ErrorBody),
        (status = 401, description = "Wrong current password", body = ErrorBody))
)]
async fn change_password(
    State(state): State<AppState>,
    SignedIn(caller): SignedIn,
    ClientIp(ip): ClientIp,
    Body(body): Body<PasswordChange>,
) -> ApiResult<StatusCode> {
    state.gateway.change_password(&caller, ip, &body.current_password, &body.new_password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One's API tokens, revoked ones too, newest first.
#[utoipa::path(
    get, path = "/api/v1/me/tokens", tag = "account",
    responses((status = 200, description = "Tokens", body = TokenList), (status = 401, description = "Not signed in", body = ErrorBody))
)]
async fn my_tokens(State(state): State<AppState>, SignedIn(caller): SignedIn) -> ApiResult<Json<TokenList>> {
    let items = state.gateway.tokens(&caller, None, false).await?.into_iter().map(TokenView::from).collect();
    Ok(Json(TokenList { items }))
}

/// Make an API token; its text is in this answer only.
#[utoipa::path(
    post, path = "/api/v1/me/tokens", tag = "account", request_body = NewTokenBody,
    responses((status = 201, description = "Made", body = IssuedTokenView),
        (status = 400, description = "Bad settings", body = ErrorBody),
        (status = 422, description = "A webhook URL kiln may not send to", body = ErrorBody))
)]
async fn create_my_token(
    State(state): State<AppState>,
    SignedIn(caller): SignedIn,
    ClientIp(ip): ClientIp,
    Body(body): Body<NewTokenBody>,
) -> ApiResult<Response> {
    let request = body.into_request(&state.gateway)?;
    let issued = state.gateway.issue_token(&caller, None, request, ip).await?;
    let view = IssuedTokenView { token: issued.text.expose().to_owned(), item: issued.token.into() };
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(view))
        .into_response())
}

/// Revoke one of one's API tokens.
#[utoipa::path(
    delete, path = "/api/v1/me/tokens/{id}", tag = "account",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "No such token of yours", body = ErrorBody))
)]
async fn revoke_my_token(
    State(state): State<AppState>,
    SignedIn(caller): SignedIn,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id: Uuid = id.parse().map_err(|_| ApiError::new(Code::TokenNotFound))?;
    state.gateway.revoke_token(&caller, id, ip).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
struct WebhookSecret {
    /// `whsec_…`: verify the `webhook-signature` of kiln's webhooks with it (Standard
    /// Webhooks). Tasks made anonymously (open mode) share one secret.
    secret: String,
}

/// The caller's webhook signing secret, made on first use.
#[utoipa::path(
    get, path = "/api/v1/me/webhook-secret", tag = "account",
    responses((status = 200, description = "The secret", body = WebhookSecret))
)]
async fn webhook_secret(State(state): State<AppState>, caller: crate::access::Caller) -> ApiResult<Response> {
    let secret = state.gateway.webhook_secret(&caller).await?;
    let body = WebhookSecret { secret: secret.expose().to_owned() };
    Ok(([(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(body)).into_response())
}
