//! The channel routes of the admin face, `/api/v1/admin/channel…`: each provider type's
//! form, the channels (the file's read-only, the stored ones editable) with their last
//! hour, create, replace, enable or disable, delete, and test connection — of a live
//! channel, or of a form before it is saved.
//!
//! A channel travels as the JSON of its configuration (the same fields as a
//! `[[channels]]` table of `kiln.toml`). Its key is write-only: a view shows a mask, and
//! a body whose `secret` is absent, `null` or a mask keeps the stored key.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    api::{
        AppState,
        caller::{Admin, ClientIp},
        params::{Json as Body, Path, Query},
    },
    channels::admin::{ChannelDraft, ChannelView, Deleted, SecretChange},
    config::{ChannelConfig, Secret},
    db::{ChannelStats, LastError},
    error::{ApiError, ApiResult, Code, ErrorBody},
    gateway::Tested,
    providers::form::{Field, FieldType, ProviderForm},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(channel_types))
        .routes(routes!(list_channels, create_channel))
        .routes(routes!(get_channel, replace_channel, toggle_channel, delete_channel))
        .routes(routes!(test_channel))
        .routes(routes!(test_draft))
}

/// The mask a view shows in place of a key; a body carrying it back keeps the key.
const MASK: &str = "••••";

#[derive(Debug, Serialize, ToSchema)]
struct FieldView {
    /// The key under the channel's `options` (`secret`: the channel's own key).
    name: String,
    /// `string`, `url`, `secret`, `int`, `number`, `bool`, `json` (an object), `enum`
    /// (one of `options`), `list` (an array of text) or `duration` (`30s`, `5m`).
    kind: &'static str,
    required: bool,
    /// The value used when the field is left out (`null`: none); of the field's kind.
    default: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<Vec<String>>,
    help: String,
}

impl From<&Field> for FieldView {
    fn from(field: &Field) -> Self {
        let kind = match field.kind {
            FieldType::Text | FieldType::Models => "string",
            FieldType::Url => "url",
            FieldType::Duration => "duration",
            FieldType::Integer => "int",
            FieldType::Number => "number",
            FieldType::Bool => "bool",
            FieldType::Choice => "enum",
            FieldType::List => "list",
            FieldType::Object => "json",
        };
        let options = (field.kind == FieldType::Choice).then(|| field.choices.clone());
        FieldView {
            name: field.key.clone(),
            kind,
            required: field.required,
            default: field.default.clone(),
            options,
            help: field.help.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct BaseUrl {
    label: String,
    url: String,
}

/// A provider type and the fields of its form.
#[derive(Debug, Serialize, ToSchema)]
struct ChannelType {
    #[serde(rename = "type")]
    provider: String,
    title: String,
    /// The kinds its models may have.
    kinds: Vec<String>,
    /// Its key first (when it takes one), then its `options`.
    fields: Vec<FieldView>,
    /// The addresses it knows, by label (the default first).
    base_urls: Vec<BaseUrl>,
    default_base_url: Option<String>,
}

impl From<&ProviderForm> for ChannelType {
    fn from(form: &ProviderForm) -> Self {
        let secret = form.secret.iter().map(|s| FieldView {
            name: "secret".to_owned(),
            kind: "secret",
            required: s.required,
            default: Value::Null,
            options: None,
            help: if s.help.is_empty() { s.label.clone() } else { s.help.clone() },
        });
        let mut base_urls: Vec<BaseUrl> =
            form.base_urls.iter().map(|u| BaseUrl { label: u.label.clone(), url: u.url.clone() }).collect();
        if let Some(default) = &form.default_base_url
            && !base_urls.iter().any(|u| &u.url == default)
        {
            base_urls.insert(0, BaseUrl { label: form.title.clone(), url: default.clone() });
        }
        ChannelType {
            provider: form.provider.clone(),
            title: form.title.clone(),
            kinds: form.kinds.iter().map(|k| k.as_str().to_owned()).collect(),
            fields: secret.chain(form.options.iter().map(FieldView::from)).collect(),
            base_urls,
            default_base_url: form.default_base_url.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct ChannelTypes {
    items: Vec<ChannelType>,
}

/// The provider types a channel may have, each with its form.
#[utoipa::path(get, path = "/api/v1/admin/channel-types", tag = "admin",
    responses((status = 200, description = "Provider types", body = ChannelTypes)))]
async fn channel_types(State(state): State<AppState>, Admin(caller): Admin) -> ApiResult<Json<ChannelTypes>> {
    let forms = state.gateway.channel_forms(&caller)?;
    Ok(Json(ChannelTypes { items: forms.providers.iter().map(ChannelType::from).collect() }))
}

#[derive(Debug, Serialize, ToSchema)]
struct LastErrorView {
    task_id: String,
    code: String,
    message: String,
    at: DateTime<Utc>,
}

impl From<LastError> for LastErrorView {
    fn from(e: LastError) -> Self {
        LastErrorView { task_id: e.task_id.to_string(), code: e.code, message: e.message, at: e.at }
    }
}

/// A channel's last hour.
#[derive(Debug, Serialize, ToSchema)]
struct StatsView {
    /// Waiting now.
    queued: u64,
    /// Running now.
    running: u64,
    /// Ended in the last hour, by outcome.
    succeeded: u64,
    failed: u64,
    canceled: u64,
    /// succeeded ÷ (succeeded + failed), 0–1; `null` when none ended either way.
    success_rate: Option<f64>,
    /// Run time of the successes, median and 95th percentile.
    p50_ms: Option<u64>,
    p95_ms: Option<u64>,
    last_error: Option<LastErrorView>,
}

impl From<ChannelStats> for StatsView {
    fn from(s: ChannelStats) -> Self {
        let ms = |seconds: Option<f64>| seconds.map(|s| (s * 1000.0).round() as u64);
        StatsView {
            queued: s.queued,
            running: s.running,
            succeeded: s.succeeded,
            failed: s.failed,
            canceled: s.canceled,
            success_rate: s.success_rate,
            p50_ms: ms(s.p50_seconds),
            p95_ms: ms(s.p95_seconds),
            last_error: s.last_error.map(LastErrorView::from),
        }
    }
}

/// A channel as the console shows it. Never holds its key: `config.secret` is a mask.
#[derive(Debug, Serialize, ToSchema)]
struct ChannelWire {
    /// Stored channels only.
    id: Option<Uuid>,
    name: String,
    #[serde(rename = "type")]
    provider: String,
    /// `file` (read-only: change it in kiln.toml) or `database`.
    source: &'static str,
    read_only: bool,
    /// In the live set; a stored channel that cannot be built is not (see `problem`).
    live: bool,
    problem: Option<String>,
    enabled: bool,
    /// Live, enabled, healthy and not resting.
    available: bool,
    /// The configuration, as a `[[channels]]` table of kiln.toml would hold it.
    #[schema(value_type = Object)]
    config: Value,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    stats: StatsView,
}

fn wire(view: ChannelView, stats: ChannelStats) -> ChannelWire {
    let provider = view.config.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    ChannelWire {
        id: view.id,
        name: view.name,
        provider,
        source: view.source,
        read_only: view.read_only,
        live: view.live,
        problem: view.problem,
        enabled: view.enabled,
        available: view.available,
        config: view.config,
        created_at: view.created_at,
        updated_at: view.updated_at,
        stats: stats.into(),
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct ChannelList {
    items: Vec<ChannelWire>,
}

/// Every channel: the file's first (read-only), then the stored ones, each with its
/// queue now and its last hour.
#[utoipa::path(get, path = "/api/v1/admin/channels", tag = "admin",
    responses((status = 200, description = "Channels", body = ChannelList)))]
async fn list_channels(State(state): State<AppState>, Admin(caller): Admin) -> ApiResult<Json<ChannelList>> {
    let channels = state.gateway.channel_list(&caller).await?;
    Ok(Json(ChannelList { items: channels.into_iter().map(|(view, stats)| wire(view, stats)).collect() }))
}

/// Reads a channel body: its configuration, and what to do with the key.
fn draft(mut body: Value) -> ApiResult<ChannelDraft> {
    let Some(object) = body.as_object_mut() else {
        return Err(problems(vec![("config".into(), "a channel is a JSON object".into())]));
    };
    let secret = match object.remove("secret") {
        None | Some(Value::Null) => SecretChange::Keep,
        Some(Value::String(s)) if s.is_empty() => SecretChange::Clear,
        Some(Value::String(s)) if s.starts_with(MASK) => SecretChange::Keep,
        Some(Value::String(s)) => SecretChange::Set(Secret::new(s)),
        Some(_) => return Err(problems(vec![("secret".into(), "the key is text".into())])),
    };
    let config: ChannelConfig = serde_path_to_error::deserialize(body).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { "config".to_owned() } else { path };
        problems(vec![(field, err.into_inner().to_string())])
    })?;
    Ok(ChannelDraft { config, secret })
}

fn problems(list: Vec<(String, String)>) -> ApiError {
    let list: Vec<Value> =
        list.into_iter().map(|(field, message)| json!({ "field": field, "message": message })).collect();
    ApiError::new(Code::InvalidChannel).details(json!({ "problems": list }))
}

/// Store a new channel and put it to work at once.
#[utoipa::path(post, path = "/api/v1/admin/channels", tag = "admin",
    request_body(content = ChannelConfig, description = "The channel's configuration, as a `[[channels]]` table of \
        kiln.toml holds it, with `secret` in clear."),
    responses((status = 201, description = "Stored and live", body = ChannelWire),
        (status = 400, description = "Field problems (`invalid_channel`, `error.details.problems`)", body = ErrorBody)))]
async fn create_channel(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ClientIp(ip): ClientIp,
    Body(body): Body<Value>,
) -> ApiResult<Response> {
    let view = state.gateway.create_channel(&caller, ip, draft(body)?).await?;
    let (view, stats) = state.gateway.channel(&caller, &view.name).await?;
    Ok((StatusCode::CREATED, Json(wire(view, stats))).into_response())
}

/// One channel, with its last hour.
#[utoipa::path(get, path = "/api/v1/admin/channels/{name}", tag = "admin",
    params(("name" = String, Path, description = "Channel name")),
    responses((status = 200, description = "The channel", body = ChannelWire),
        (status = 404, description = "No such channel", body = ErrorBody)))]
async fn get_channel(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<ChannelWire>> {
    let (view, stats) = state.gateway.channel(&caller, &name).await?;
    Ok(Json(wire(view, stats)))
}

/// Replace a stored channel's configuration (its name stays). Its running tasks finish
/// on the old settings; a model it no longer serves moves or fails its waiting tasks.
#[utoipa::path(put, path = "/api/v1/admin/channels/{name}", tag = "admin",
    params(("name" = String, Path, description = "Channel name")),
    request_body(content = ChannelConfig, description = "As for creating; `secret` absent, null or a mask keeps the \
        key, an empty string removes it."),
    responses((status = 200, description = "The channel", body = ChannelWire),
        (status = 400, description = "Field problems", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody),
        (status = 409, description = "A channel of the configuration file (`channel_read_only`)", body = ErrorBody)))]
async fn replace_channel(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ClientIp(ip): ClientIp,
    Path(name): Path<String>,
    Body(body): Body<Value>,
) -> ApiResult<Json<ChannelWire>> {
    state.gateway.update_channel(&caller, ip, &name, draft(body)?).await?;
    let (view, stats) = state.gateway.channel(&caller, &name).await?;
    Ok(Json(wire(view, stats)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Toggle {
    /// A disabled channel takes no new tasks; its waiting tasks wait, its running ones finish.
    enabled: bool,
}

/// Enable or disable a stored channel.
#[utoipa::path(patch, path = "/api/v1/admin/channels/{name}", tag = "admin",
    params(("name" = String, Path, description = "Channel name")), request_body = Toggle,
    responses((status = 200, description = "The channel", body = ChannelWire),
        (status = 404, description = "No such channel", body = ErrorBody),
        (status = 409, description = "A channel of the configuration file", body = ErrorBody)))]
async fn toggle_channel(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ClientIp(ip): ClientIp,
    Path(name): Path<String>,
    Body(body): Body<Toggle>,
) -> ApiResult<Json<ChannelWire>> {
    state.gateway.set_channel_enabled(&caller, ip, &name, body.enabled).await?;
    let (view, stats) = state.gateway.channel(&caller, &name).await?;
    Ok(Json(wire(view, stats)))
}

#[derive(Debug, Serialize, ToSchema)]
struct MovedView {
    task: String,
    /// The channel it went to.
    to: String,
}

/// What a delete did with the channel's waiting tasks.
#[derive(Debug, Serialize, ToSchema)]
struct DeletedView {
    channel: ChannelWire,
    /// Moved to another channel serving their model, in queue order.
    moved: Vec<MovedView>,
    /// Failed `channel_deleted`: no other channel serves their model.
    failed: Vec<String>,
}

/// Delete a stored channel. Running tasks finish; waiting ones move to another channel
/// serving their model, or fail `channel_deleted`.
#[utoipa::path(delete, path = "/api/v1/admin/channels/{name}", tag = "admin",
    params(("name" = String, Path, description = "Channel name")),
    responses((status = 200, description = "Deleted", body = DeletedView),
        (status = 404, description = "No such channel", body = ErrorBody),
        (status = 409, description = "A channel of the configuration file", body = ErrorBody)))]
async fn delete_channel(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ClientIp(ip): ClientIp,
    Path(name): Path<String>,
) -> ApiResult<Json<DeletedView>> {
    let Deleted { channel, moved, failed } = state.gateway.delete_channel(&caller, ip, &name).await?;
    let stats = ChannelStats { channel: channel.name.clone(), ..ChannelStats::default() };
    Ok(Json(DeletedView {
        channel: wire(channel, stats),
        moved: moved.into_iter().map(|m| MovedView { task: m.task.to_string(), to: m.to }).collect(),
        failed: failed.into_iter().map(|t| t.to_string()).collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
struct TestView {
    /// Whether the provider answered as it should.
    ok: bool,
    /// Its answer, or why not.
    message: String,
}

impl From<Tested> for TestView {
    fn from(t: Tested) -> Self {
        TestView { ok: t.ok, message: t.message }
    }
}

/// Test a live channel's connection with a real, cheap call: Tripo's balance,
/// ModelScope's and OpenAI-compatible `/v1/models`, each worker's `/health`.
#[utoipa::path(post, path = "/api/v1/admin/channels/{name}/test", tag = "admin",
    params(("name" = String, Path, description = "Channel name")),
    responses((status = 200, description = "What the provider answered", body = TestView),
        (status = 404, description = "No such live channel", body = ErrorBody)))]
async fn test_channel(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<TestView>> {
    Ok(Json(state.gateway.test_channel(&caller, &name).await?.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DraftQuery {
    /// The stored channel this form edits: a kept (absent or masked) `secret` means its key.
    channel: Option<String>,
}

/// Test a form's connection before saving it. Nothing is stored or started.
#[utoipa::path(post, path = "/api/v1/admin/channel-tests", tag = "admin", params(DraftQuery),
    request_body(content = ChannelConfig, description = "A channel's configuration, as for creating one."),
    responses((status = 200, description = "What the provider answered", body = TestView),
        (status = 400, description = "Field problems", body = ErrorBody),
        (status = 404, description = "No such stored channel", body = ErrorBody),
        (status = 409, description = "`channel` names a channel of the configuration file", body = ErrorBody)))]
async fn test_draft(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Query(q): Query<DraftQuery>,
    Body(body): Body<Value>,
) -> ApiResult<Json<TestView>> {
    Ok(Json(state.gateway.test_channel_draft(&caller, q.channel.as_deref(), draft(body)?).await?.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: Value) -> Value {
        let err = draft(body).expect_err("refused");
        err.details.unwrap_or(Value::Null)
    }

    #[test]
    fn a_masked_or_absent_key_is_kept_and_an_empty_one_cleared() {
        let base = json!({ "name": "c", "type": "modelscope", "models": [] });
        let with = |secret: Value| {
            let mut body = base.clone();
            body["secret"] = secret;
            draft(body).expect("a channel")
        };
        assert!(matches!(draft(base.clone()).expect("a channel").secret, SecretChange::Keep));
        assert!(matches!(with(Value::Null).secret, SecretChange::Keep));
        assert!(matches!(with(json!("••••abcd")).secret, SecretChange::Keep));
        assert!(matches!(with(json!("")).secret, SecretChange::Clear));
        match with(json!("ms-key")).secret {
            SecretChange::Set(s) => assert_eq!(s.expose(), "ms-key"),
            other => panic!("expected a new key, got {other:?}"),
        }
    }

    #[test]
    fn field_problems_name_their_field() {
        let details = refused(json!({ "name": "c", "type": "modelscope", "models": [{ "name": "m", "kind": 5 }] }));
        assert_eq!(details["problems"][0]["field"], "models[0].kind", "{details}");
        let details = refused(json!({ "name": "c", "type": "t", "models": [], "colour": "red" }));
        assert_eq!(details["problems"][0]["field"], "colour", "{details}");
        assert!(details["problems"][0]["message"].as_str().is_some_and(|m| m.contains("colour")), "{details}");
        let details = refused(json!([1, 2]));
        assert_eq!(details["problems"][0]["field"], "config");
        let details = refused(json!({ "name": "c", "type": "t", "models": [], "secret": 7 }));
        assert_eq!(details["problems"][0]["field"], "secret");
    }
}
