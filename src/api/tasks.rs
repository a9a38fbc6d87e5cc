//! The native face: `/api/v1/tasks`.

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    access::Caller,
    api::{
        AppState, forms,
        params::{self, Path, Query},
        sse,
        stream_docs::TaskEventStream,
    },
    db::{ConversionClaim, TaskFilter},
    error::{ApiError, ApiResult, Code, ErrorBody},
    gateway::Gateway,
    outputs::{self, Answer, FormatId},
    tasks::{Artifact, Task, TaskId, TaskKind, TaskStatus},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_task, list_tasks))
        .routes(routes!(get_task, cancel_task))
        .routes(routes!(task_status))
        .routes(routes!(task_result))
        .routes(routes!(task_events))
        .routes(routes!(task_webhooks))
}

#[derive(Debug, Serialize, ToSchema)]
struct DeliveryList {
    items: Vec<crate::deliveries::DeliveryReport>,
}

/// The webhook deliveries of a task (with `webhook_url`), each with its attempts.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/webhooks", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Deliveries, oldest first", body = DeliveryList),
        (status = 404, description = "No such task", body = ErrorBody),
    )
)]
async fn task_webhooks(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeliveryList>> {
    let items = state.gateway.task_deliveries(&caller, parse_id(&id)?).await?;
    Ok(Json(DeliveryList { items }))
}

/// Parses a task id from a path; a malformed id is simply not found.
pub fn parse_id(text: &str) -> ApiResult<TaskId> {
    text.parse().map_err(|_| ApiError::new(Code::TaskNotFound))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskLinks {
    #[serde(rename = "self")]
    pub this: String,
    pub status: String,
    pub result: String,
    pub events: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskError {
    /// Stable code, e.g. `generation_timeout`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PictureRef {
    #[schema(value_type = String, format = Uuid)]
    pub id: uuid::Uuid,
    pub url: String,
}

/// A task as the native API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    #[schema(value_type = String, format = Uuid)]
    pub id: TaskId,
    pub kind: TaskKind,
    pub model: String,
    pub channel: String,
    pub status: TaskStatus,
    /// 0–100.
    pub progress: u8,
    pub stage: Option<String>,
    /// 1-based position in the channel's queue while queued.
    pub queue_position: Option<u32>,
    pub prompt: Option<String>,
    pub picture: Option<PictureRef>,
    #[schema(value_type = Object)]
    pub params: Value,
    pub error: Option<TaskError>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Seconds from start of running to the end.
    pub generation_time: Option<f64>,
    /// The user who made it (`null`: made anonymously, in open mode).
    #[schema(value_type = Option<String>, format = Uuid)]
    pub owner_id: Option<uuid::Uuid>,
    /// Where its end is announced ([webhooks](webhooks.md)); its deliveries are under
    /// `/api/v1/tasks/{id}/webhooks`.
    pub webhook_url: Option<String>,
    pub links: TaskLinks,
}

pub fn links(gateway: &Gateway, id: TaskId) -> TaskLinks {
    let base = format!("api/v1/tasks/{id}");
    TaskLinks {
        this: gateway.url(&base),
        status: gateway.url(&format!("{base}/status")),
        result: gateway.url(&format!("{base}/result")),
        events: gateway.url(&format!("{base}/events")),
    }
}

fn task_error(task: &Task) -> Option<TaskError> {
    task.error_code
        .as_ref()
        .map(|code| TaskError { code: code.clone(), message: task.error_message.clone().unwrap_or_default() })
}

pub async fn view(gateway: &Gateway, task: Task) -> ApiResult<TaskView> {
    let queue_position = gateway.queue_position(&task).await?;
    view_at(gateway, task, queue_position).await
}

/// Like [`view`], with the queue position already known.
pub async fn view_at(gateway: &Gateway, task: Task, queue_position: Option<u32>) -> ApiResult<TaskView> {
    let picture = match gateway.task_picture(&task).await? {
        Some(p) => Some(PictureRef { id: p.id, url: gateway.file_url(&p.key).await }),
        None => None,
    };
    Ok(TaskView {
        id: task.id,
        kind: task.kind,
        model: task.model.clone(),
        channel: task.channel.clone(),
        status: task.status,
        progress: task.progress,
        stage: task.stage.clone(),
        queue_position,
        prompt: task.prompt.clone(),
        picture,
        params: task.params.clone(),
        error: task_error(&task),
        created_at: task.created_at.to_rfc3339(),
        started_at: task.started_at.map(|t| t.to_rfc3339()),
        finished_at: task.finished_at.map(|t| t.to_rfc3339()),
        generation_time: task.generation_seconds(),
        owner_id: task.owner_id,
        webhook_url: task.webhook_url.clone(),
        links: links(gateway, task.id),
    })
}

/// Create a task.
///
/// Send `multipart/form-data` with a picture in the field `image` (or `file`), or JSON
/// with a `prompt` (or the `picture_id` of a stored picture). The task is queued and
/// answered at once with 202; follow it through its `events` link. An `Idempotency-Key`
/// header makes retries safe: the same key and request return the same task.
#[utoipa::path(
    post, path = "/api/v1/tasks", tag = "tasks",
    request_body(content(
        (forms::MultipartSubmission = "multipart/form-data"),
        (forms::JsonSubmission = "application/json"),
    )),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the first task: 1–255 visible ASCII characters",
        min_length = 1, max_length = 255, pattern = r"^[!-~]([ -~]*[!-~])?$")),
    responses(
        (status = 202, description = "Queued", body = TaskView, headers(("Location" = String, description = "The task's URL"))),
        (status = 400, description = "Invalid input (format, corrupt picture, prompt, params, model)", body = ErrorBody),
        (status = 404, description = "`picture_id` names no stored picture (`picture_not_found`)", body = ErrorBody),
        (status = 410, description = "`picture_id` names a picture deleted after the retention period", body = ErrorBody),
        (status = 413, description = "File too large", body = ErrorBody),
        (status = 415, description = "Neither multipart nor JSON (also an empty body)", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused for another request", body = ErrorBody),
        (status = 503, description = "Queue full or no provider available; see Retry-After", body = ErrorBody),
    )
)]
async fn create_task(State(state): State<AppState>, caller: Caller, request: Request) -> ApiResult<Response> {
    if state.readiness.stopping() {
        return Err(ApiError::new(Code::ShuttingDown).retry_after(5));
    }
    let gateway = &state.gateway;
    let submission = forms::read_submission(request, gateway).await?;
    let submitted = gateway.submit(&caller, submission).await?;
    let view = match submitted.position {
        Some(position) => view_at(gateway, submitted.task, Some(position)).await?,
        None => view(gateway, submitted.task).await?,
    };
    let mut response = (StatusCode::ACCEPTED, Json(&view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/tasks/{}", view.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if submitted.replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only tasks with this status.
    status: Option<TaskStatus>,
    /// `next_cursor` of the previous page: the id of its last task; the page starts after
    /// it (any task id will do).
    #[param(format = Uuid)]
    cursor: Option<String>,
    #[param(schema_with = params::limit)]
    limit: Option<u32>,
    /// Only tasks made from this stored picture.
    picture_id: Option<uuid::Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
struct TaskPage {
    items: Vec<TaskView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[schema(format = Uuid)]
    next_cursor: Option<String>,
}

/// A page's cursor is the id of its last task: ids are UUIDv7, so "older than this
/// id" is "after this task" in the list's order, and any UUID is a valid cursor.
fn encode_cursor(id: TaskId) -> String {
    id.to_string()
}

/// Reads a cursor: a task id, or (as earlier versions handed out) its base64url form.
fn decode_cursor(cursor: &str) -> ApiResult<TaskId> {
    let legacy = || {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
    };
    cursor
        .parse()
        .ok()
        .or_else(legacy)
        .ok_or_else(|| ApiError::with_message(Code::InvalidRequest, "The cursor is not valid: send a `next_cursor`."))
}

/// List tasks, newest first.
#[utoipa::path(
    get, path = "/api/v1/tasks", tag = "tasks", params(ListQuery),
    responses(
        (status = 200, description = "A page of tasks", body = TaskPage),
        (status = 400, description = "Bad cursor, status, limit or picture_id", body = ErrorBody),
    )
)]
async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<TaskPage>> {
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let before = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let filter = TaskFilter {
        status: query.status,
        picture_id: query.picture_id,
        before,
        limit: limit + 1,
        ..Default::default()
    };
    let mut tasks = state.gateway.tasks(&caller, filter).await?;
    let next_cursor = if tasks.len() > limit as usize {
        tasks.truncate(limit as usize);
        tasks.last().map(|t| encode_cursor(t.id))
    } else {
        None
    };
    let mut items = Vec::with_capacity(tasks.len());
    for task in tasks {
        items.push(view(&state.gateway, task).await?);
    }
    Ok(Json(TaskPage { items, next_cursor }))
}

/// Get a task.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 404, description = "No such task", body = ErrorBody),
    )
)]
async fn get_task(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<TaskView>> {
    let task = state.gateway.task(&caller, parse_id(&id)?).await?;
    Ok(Json(view(&state.gateway, task).await?))
}

/// Cancel a task.
///
/// A queued task is removed from its queue; a running one is stopped.
#[utoipa::path(
    delete, path = "/api/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Canceled", body = TaskView),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody),
    )
)]
async fn cancel_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskView>> {
    let task = state.gateway.cancel(&caller, parse_id(&id)?).await?;
    Ok(Json(view(&state.gateway, task).await?))
}

#[derive(Debug, Serialize, ToSchema)]
struct StatusView {
    #[schema(value_type = String, format = Uuid)]
    id: TaskId,
    status: TaskStatus,
    progress: u8,
    stage: Option<String>,
    queue_position: Option<u32>,
    error: Option<TaskError>,
}

/// Get a task's status, progress and queue position.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/status", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Status", body = StatusView),
        (status = 404, description = "No such task", body = ErrorBody),
    )
)]
async fn task_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<StatusView>> {
    let task = state.gateway.task(&caller, parse_id(&id)?).await?;
    let queue_position = state.gateway.queue_position(&task).await?;
    Ok(Json(StatusView {
        id: task.id,
        status: task.status,
        progress: task.progress,
        stage: task.stage.clone(),
        queue_position,
        error: task_error(&task),
    }))
}

/// One stored output.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputView {
    pub name: String,
    /// `model`, `preview`, `archive`, `image` …
    pub role: String,
    pub url: String,
    /// File format, from the name's extension, e.g. `glb`.
    pub format: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    /// Deleted after the retention period; the URL answers 410.
    pub expired: bool,
    #[schema(value_type = Object)]
    pub metadata: Value,
}

pub async fn output_view(gateway: &Gateway, artifact: &Artifact) -> OutputView {
    OutputView {
        name: artifact.name.clone(),
        role: artifact.role.clone(),
        url: gateway.file_url(&artifact.key).await,
        format: Artifact::extension(&artifact.name),
        content_type: artifact.content_type.clone(),
        size: artifact.size,
        sha256: artifact.sha256.clone(),
        expired: artifact.expired_at.is_some(),
        metadata: artifact.metadata.clone(),
    }
}

/// A finished task and its outputs, for the result routes of every face; 409
/// `task_not_finished` (saying `status`) while it is queued or running.
pub async fn finished(
    gateway: &Gateway,
    caller: &Caller,
    id: &str,
    status: fn(TaskStatus) -> &'static str,
) -> ApiResult<(Task, Vec<OutputView>)> {
    let task = gateway.task(caller, parse_id(id)?).await?;
    if !task.status.is_terminal() {
        return Err(ApiError::with_message(
            Code::TaskNotFinished,
            format!("The task is {}; its result is not ready yet.", status(task.status)),
        ));
    }
    let artifacts = gateway.artifacts(&task).await?;
    let outputs = futures::future::join_all(artifacts.iter().map(|a| output_view(gateway, a))).await;
    Ok((task, outputs))
}

/// The output a result is about: the model or the image, else the first.
pub fn main_output(outputs: &[OutputView]) -> Option<&OutputView> {
    outputs.iter().find(|o| o.role == "model" || o.role == "image").or(outputs.first())
}

#[derive(Debug, Serialize, ToSchema)]
struct ResultMetadata {
    /// Format of the main output, e.g. `glb`.
    format: Option<String>,
    /// Size of the main output in bytes.
    size: Option<u64>,
    /// Seconds from start of running to the end.
    generation_time: Option<f64>,
    created_at: String,
    finished_at: Option<String>,
    /// What the provider reported (vertex counts, seeds …).
    #[schema(value_type = Object)]
    provider: Value,
}

#[derive(Debug, Serialize, ToSchema)]
struct ResultView {
    #[schema(value_type = String, format = Uuid)]
    id: TaskId,
    status: TaskStatus,
    outputs: Vec<OutputView>,
    metadata: ResultMetadata,
    /// Whether the outputs were deleted after the retention period.
    expired: bool,
    /// Why the task failed, when it did.
    error: Option<TaskError>,
    /// A succeeded 3D task's model in every format kiln serves, for a download menu:
    /// ready, available on request (`?format=`), being made, or failed. Empty otherwise.
    formats: Vec<FormatView>,
}

/// One format of a 3D result.
#[derive(Debug, Serialize, ToSchema)]
struct FormatView {
    /// The format id (`?format=`): `glb`, `glb-meshopt`, `glb-core`, `lod`, `preview`,
    /// `obj`, `stl`, `stl-mm`, `ply`, `usdz`, `cutout`, `position-map`.
    format: &'static str,
    /// The file's name when stored.
    file: String,
    content_type: &'static str,
    /// `ready` (stored: `url`, `size`), `available` (`?format=` makes it), `pending`
    /// (being made: ask `?format=` again) or `failed` (`error`; `?format=` answers it).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<TaskError>,
}

/// The formats of a succeeded 3D task, in the catalogue's order.
async fn formats_of(gateway: &Gateway, task: &Task, outputs: &[OutputView]) -> ApiResult<Vec<FormatView>> {
    if task.kind.main_role() != "model" || task.status != TaskStatus::Succeeded {
        return Ok(Vec::new());
    }
    let live = |o: &&OutputView| !o.expired;
    let Some(model) = outputs.iter().filter(live).find(|o| o.role == "model") else { return Ok(Vec::new()) };
    let conversions = outputs::states(gateway, task).await?;
    let mut views = Vec::new();
    for format in outputs::CATALOGUE {
        let stored = match format.id {
            FormatId::Glb => Some(model),
            _ => outputs.iter().filter(live).find(|o| o.name == format.file),
        };
        let view = |status, file: &str| FormatView {
            format: format.name,
            file: file.to_owned(),
            content_type: format.content_type,
            status,
            size: None,
            url: None,
            error: None,
        };
        if let Some(stored) = stored {
            views.push(FormatView {
                size: Some(stored.size),
                url: Some(stored.url.clone()),
                ..view("ready", &stored.name)
            });
            continue;
        }
        if !format.on_request() {
            continue;
        }
        let made = conversions.iter().find(|(name, _)| name == format.name).map(|(_, claim)| claim);
        views.push(match made {
            Some(ConversionClaim::Held) => view("pending", format.file),
            Some(ConversionClaim::Failed { code, message }) => FormatView {
                error: Some(TaskError { code: code.clone(), message: message.clone() }),
                ..view("failed", format.file)
            },
            // Done but not among the outputs: expired with them; made again on request.
            _ => view("available", format.file),
        });
    }
    Ok(views)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ResultQuery {
    /// Another format of a 3D task's model: `glb`, `glb-meshopt`, `glb-core`, `preview`,
    /// `obj` (`output3d.zip`), `stl`, `stl-mm`, `ply`, `usdz` (made once on first request,
    /// then served as a stored file), or `lod`, `cutout`, `position-map` when the task has
    /// them.
    format: Option<String>,
    /// With `format=stl`: `m` (the default) or `mm`.
    units: Option<String>,
}

/// A conversion still being made.
#[derive(Debug, Serialize, ToSchema)]
struct PendingFormat {
    format: String,
    /// `pending`.
    status: &'static str,
}

/// Get a finished task's outputs and metadata, or one of its model's formats.
///
/// 409 while the task is queued or running. A failed task answers with its error.
///
/// With `?format=` (3D tasks): 303 to the stored file in that format, made on the first
/// request (waiting up to `convert.wait`, then 202 with `Retry-After`: ask again).
/// Concurrent requests share one conversion; a model that cannot be converted answers
/// 422 each time without converting again.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/result", tag = "tasks",
    params(("id" = String, Path, description = "Task id"), ResultQuery),
    responses(
        (status = 200, description = "The result (or the error of a failed task)", body = ResultView),
        (status = 202, description = "`format`: still being made; ask again after `Retry-After` seconds", body = PendingFormat,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 303, description = "`format`: the stored file, at `Location`; the body is the output", body = OutputView,
            headers(("Location" = String, description = "The file's URL"))),
        (status = 400, description = "`unknown_format`, `format_not_applicable` (not a 3D task), `invalid_request` (`units`)", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "Not finished yet (`task_not_finished`); `format` of a failed or canceled task (`no_model`)", body = ErrorBody),
        (status = 410, description = "`format`: the model was deleted after the retention period", body = ErrorBody),
        (status = 422, description = "`format`: `conversion_failed` or `model_too_large`", body = ErrorBody),
        (status = 503, description = "`format`: `converter_busy`; see Retry-After", body = ErrorBody),
    )
)]
async fn task_result(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<ResultQuery>,
) -> ApiResult<Response> {
    if let Some(format) = &query.format {
        let format = FormatId::parse(format, query.units.as_deref())?;
        return converted(&state, &caller, &id, format).await;
    }
    if query.units.is_some() {
        return Err(ApiError::with_message(Code::InvalidRequest, "`units` goes with `format=stl`."));
    }
    let (task, outputs) = finished(&state.gateway, &caller, &id, TaskStatus::as_str).await?;
    let main = main_output(&outputs);
    let formats = formats_of(&state.gateway, &task, &outputs).await?;
    Ok(Json(ResultView {
        formats,
        id: task.id,
        status: task.status,
        metadata: ResultMetadata {
            format: main.map(|o| o.format.clone()),
            size: main.map(|o| o.size),
            generation_time: task.generation_seconds(),
            created_at: task.created_at.to_rfc3339(),
            finished_at: task.finished_at.map(|t| t.to_rfc3339()),
            provider: task.metadata.clone(),
        },
        expired: !outputs.is_empty() && outputs.iter().all(|o| o.expired),
        outputs,
        error: task_error(&task),
    })
    .into_response())
}

/// `?format=`: 303 to the stored file, or 202 while it is being made.
async fn converted(state: &AppState, caller: &Caller, id: &str, format: FormatId) -> ApiResult<Response> {
    match outputs::request(&state.gateway, caller, parse_id(id)?, format).await? {
        Answer::Ready(artifact) => {
            let view = output_view(&state.gateway, &artifact).await;
            let location = HeaderValue::from_str(&view.url).map_err(ApiError::internal)?;
            Ok((StatusCode::SEE_OTHER, [(header::LOCATION, location)], Json(view)).into_response())
        }
        Answer::Pending => Ok((
            StatusCode::ACCEPTED,
            [(header::RETRY_AFTER, HeaderValue::from_static("2"))],
            Json(PendingFormat { format: format.as_str().to_owned(), status: "pending" }),
        )
            .into_response()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Resume after this sequence number (`Last-Event-ID` wins when both are sent).
    after: Option<i64>,
}

/// Stream a task's events (SSE).
///
/// Events: `queued` (position), `processing` (progress, stage), `result` (an output
/// with its URL), `completed`, `failed`, `canceled`. Each has `id:` = its sequence
/// number; reconnect with `Last-Event-ID` to resume. A comment is sent at least every
/// 15 s; the stream closes after the terminal event.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/events", tag = "tasks",
    params(("id" = String, Path, description = "Task id"), EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "An event stream: each event's `event:` is its kind, `id:` its \
            sequence number, `data:` one JSON object (see docs/api.md, \"Event stream\")",
            content_type = "text/event-stream", body = TaskEventStream),
        (status = 400, description = "`after` is not an int64", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
    )
)]
async fn task_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    sse::task_stream(&state, &caller, &id, query.after, &headers, sse::Face::Native, sse::native_event).await
}
