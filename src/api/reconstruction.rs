//! Seed 004's face, the 3D-reconstruction module: a picture library (`/picture/…`),
//! tasks made from a stored picture (`/api/reconstruction/create-from-image`), their SSE
//! events with progressive `result`s, a status document with the fields of that seed's
//! §4.4 table, and the worker callbacks at the paths that seed gives them. JSON in
//! camelCase, as its Vue/Spring clients expect. Everything goes through the same core as
//! every other face.

use axum::{
    Json,
    extract::{Request, State},
    http::HeaderMap,
    response::Response,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    access::Caller,
    api::{
        AppState, callbacks, forms,
        params::{self, Path, Query},
        sse,
        stream_docs::ReconstructionEventStream,
        tasks::parse_id,
    },
    error::{ApiError, ApiResult, Code, ErrorBody},
    gateway::{FileUrls, Gateway, Input, Submission},
    tasks::{Artifact, EventKind, Picture, Task, TaskEvent, TaskStatus},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        .routes(routes!(get_picture))
        .routes(routes!(list_page))
        .routes(routes!(create_from_image))
        .routes(routes!(events))
        .routes(routes!(status))
        .routes(routes!(callback_result))
        .routes(routes!(callback_status))
        .routes(routes!(callback_progress))
}

/// A stored picture, as seed 004's picture library shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PictureInfo {
    #[schema(value_type = String, format = Uuid)]
    id: Uuid,
    /// Where the picture is served; absent once retention deleted it.
    url: Option<String>,
    /// The uploaded file's name.
    name: Option<String>,
    /// `jpeg`, `png` or `webp`.
    pic_format: String,
    content_type: String,
    pic_width: u32,
    pic_height: u32,
    /// Bytes, as stored.
    pic_size: u64,
    sha256: String,
    create_time: String,
}

async fn picture_info(gateway: &Gateway, p: Picture) -> PictureInfo {
    let url = match p.expired_at {
        None => Some(gateway.file_url(&p.key).await),
        Some(_) => None,
    };
    PictureInfo {
        url,
        id: p.id,
        name: p.original_name,
        pic_format: p.format,
        content_type: p.content_type,
        pic_width: p.width,
        pic_height: p.height,
        pic_size: p.size,
        sha256: p.sha256,
        create_time: p.created_at.to_rfc3339(),
    }
}

/// Upload a picture to the library (seed 004).
///
/// `multipart/form-data` with the picture in `file` (or `image`); checked like every
/// picture kiln takes.
#[utoipa::path(
    post, path = "/picture/upload", tag = "reconstruction (seed 004)",
    request_body(content((forms::PictureUpload = "multipart/form-data"))),
    responses(
        (status = 200, description = "Stored", body = PictureInfo),
        (status = 400, description = "Missing, unsupported or damaged picture", body = ErrorBody),
        (status = 413, description = "File too large", body = ErrorBody),
        (status = 415, description = "Not multipart/form-data (also an empty body)", body = ErrorBody),
    )
)]
async fn upload(State(state): State<AppState>, caller: Caller, request: Request) -> ApiResult<Json<PictureInfo>> {
    if state.readiness.stopping() {
        return Err(ApiError::new(Code::ShuttingDown).retry_after(5));
    }
    let (upload, filename) = forms::read_picture(request, &state.gateway).await?;
    let picture = state.gateway.store_picture(&caller, upload, filename).await?;
    Ok(Json(picture_info(&state.gateway, picture).await))
}

/// Get a picture (seed 004).
#[utoipa::path(
    get, path = "/picture/{id}", tag = "reconstruction (seed 004)", operation_id = "get_picture_info",
    params(("id" = String, Path, description = "Picture id")),
    responses(
        (status = 200, description = "The picture", body = PictureInfo),
        (status = 404, description = "No such picture", body = ErrorBody),
    )
)]
async fn get_picture(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<PictureInfo>> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::new(Code::PictureNotFound))?;
    Ok(Json(picture_info(&state.gateway, state.gateway.picture(&caller, id).await?).await))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct PageQuery {
    /// Page number, from 1 (default 1; 0 is taken as 1). `page` is accepted too.
    #[serde(default, alias = "page", deserialize_with = "params::int64")]
    current: Option<u64>,
    /// `size` is accepted too.
    #[serde(alias = "size")]
    #[param(schema_with = params::seed004_page_size)]
    page_size: Option<u32>,
}

/// A page, in the shape MyBatis-Plus's `Page` gives Spring clients.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct PictureInfoPage {
    records: Vec<PictureInfo>,
    total: u64,
    current: u64,
    size: u32,
    pages: u64,
}

/// List the picture library, newest first (seed 004).
#[utoipa::path(
    get, path = "/picture/list/page", tag = "reconstruction (seed 004)", params(PageQuery),
    responses(
        (status = 200, description = "A page of pictures", body = PictureInfoPage),
        (status = 400, description = "Bad paging parameters", body = ErrorBody),
    )
)]
async fn list_page(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<PictureInfoPage>> {
    let current = query.current.unwrap_or(1).max(1);
    let size = query.page_size.unwrap_or(10).clamp(1, 100);
    // Far past the end is just an empty page; the database takes offsets up to i64::MAX.
    let offset = (current - 1).saturating_mul(u64::from(size)).min(i64::MAX as u64);
    let (pictures, total) = state.gateway.pictures(&caller, offset, size).await?;
    Ok(Json(PictureInfoPage {
        records: futures::future::join_all(pictures.into_iter().map(|p| picture_info(&state.gateway, p))).await,
        total,
        current,
        size,
        pages: total.div_ceil(u64::from(size)),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreateFromImage {
    /// A picture from `/picture/upload`.
    #[schema(value_type = String, format = Uuid)]
    picture_id: Uuid,
    /// The model; default: the server's default image-to-3D model.
    #[serde(default)]
    model: Option<String>,
    /// Model options: a JSON object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Created {
    task_id: String,
    /// The task's event stream (SSE), relative to this server.
    sse_url: String,
    /// The task's status document, relative to this server.
    status_url: String,
}

/// Create a 3D reconstruction from a stored picture (seed 004).
#[utoipa::path(
    post, path = "/api/reconstruction/create-from-image", tag = "reconstruction (seed 004)",
    request_body = CreateFromImage,
    responses(
        (status = 200, description = "Created", body = Created),
        (status = 400, description = "Malformed request, unknown model or params the model refuses", body = ErrorBody),
        (status = 404, description = "No such picture", body = ErrorBody),
        (status = 410, description = "The picture was deleted after the retention period", body = ErrorBody),
        (status = 413, description = "The body is over the request size limit", body = ErrorBody),
        (status = 415, description = "Not application/json (also an empty body)", body = ErrorBody),
        (status = 503, description = "Queue full or no provider available; see Retry-After", body = ErrorBody),
    )
)]
async fn create_from_image(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateFromImage>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Created>> {
    if state.readiness.stopping() {
        return Err(ApiError::new(Code::ShuttingDown).retry_after(5));
    }
    let Json(body) = body?;
    let mut submission = Submission::new(Input::Picture(body.picture_id));
    submission.model = body.model.filter(|m| !m.trim().is_empty());
    submission.params = body.params.unwrap_or_else(|| json!({}));
    let task = state.gateway.submit(&caller, submission).await?.task;
    let id = task.id;
    Ok(Json(Created {
        task_id: id.to_string(),
        sse_url: format!("/api/reconstruction/events/{id}"),
        status_url: format!("/api/reconstruction/status/{id}"),
    }))
}

/// Seed 004's status words.
fn status_word(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Queued => "PENDING",
        TaskStatus::Running => "PROCESSING",
        TaskStatus::Succeeded => "COMPLETED",
        TaskStatus::Failed | TaskStatus::Canceled => "FAILED",
    }
}

/// Seed 004's rendering: `result` for each stored file, `status` for everything else.
fn seed004_event(_gateway: &Gateway, urls: &FileUrls, event: &TaskEvent) -> Option<(&'static str, Value)> {
    let task_id = event.task_id.to_string();
    let (name, data) = match event.kind {
        EventKind::Result => {
            let url = urls.get(event.data["key"].as_str()?)?;
            ("result", json!({ "taskId": task_id, "fileName": event.data["name"], "url": url }))
        }
        EventKind::Queued => {
            ("status", json!({ "taskId": task_id, "status": "PENDING", "position": event.data["position"] }))
        }
        EventKind::Processing => (
            "status",
            json!({
                "taskId": task_id, "status": "PROCESSING",
                "progress": event.data["progress"], "stage": event.data["stage"],
            }),
        ),
        EventKind::Completed => ("status", json!({ "taskId": task_id, "status": "COMPLETED" })),
        EventKind::Failed => (
            "status",
            json!({
                "taskId": task_id, "status": "FAILED",
                "errorMessage": event.data["error"]["message"], "errorCode": event.data["error"]["code"],
            }),
        ),
        EventKind::Canceled => (
            "status",
            json!({ "taskId": task_id, "status": "FAILED", "errorMessage": "Canceled", "errorCode": "canceled" }),
        ),
    };
    Some((name, data))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// Resume after this event id (like `Last-Event-ID`).
    after: Option<i64>,
}

/// Follow a reconstruction (seed 004): SSE.
///
/// `result` events (`taskId`, `fileName`, `url`) as each file is stored, and `status`
/// events (`taskId`, `status`: `PENDING` | `PROCESSING` | `COMPLETED` | `FAILED`, with
/// `position`, `progress` or `errorMessage`). `id:` is the sequence number;
/// `Last-Event-ID` or `?after=` resumes. Ends after `COMPLETED` or `FAILED`.
#[utoipa::path(
    get, path = "/api/reconstruction/events/{taskId}", tag = "reconstruction (seed 004)",
    params(("taskId" = String, Path, description = "Task id"), StreamQuery),
    responses(
        (status = 200, description = "An event stream: each event's `event:` is `result` or `status`, \
            `id:` its sequence number, `data:` one JSON object", content_type = "text/event-stream",
            body = ReconstructionEventStream),
        (status = 400, description = "`after` is not an int64", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
    )
)]
async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    sse::task_stream(&state, &caller, &task_id, query.after, &headers, sse::Face::Seed004, seed004_event).await
}

/// A reconstruction task with the fields of seed 004's §4.4 table.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReconstructionStatus {
    task_id: String,
    /// `PENDING`, `PROCESSING`, `COMPLETED` or `FAILED`.
    status: String,
    /// 0–100.
    progress: u8,
    original_image_url: Option<String>,
    pixel_images_url: Option<String>,
    xyz_images_url: Option<String>,
    /// The OBJ + MTL + texture archive.
    output_zip_url: Option<String>,
    /// The model as the engine made it (`model.glb`; not a compressed or simplified
    /// variant).
    model_url: Option<String>,
    /// A PNG picture of the model (`preview.png`), when one was made.
    preview_url: Option<String>,
    error_message: Option<String>,
    error_code: Option<String>,
    created_at: String,
    updated_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
}

/// Get a reconstruction's status (seed 004).
#[utoipa::path(
    get, path = "/api/reconstruction/status/{taskId}", tag = "reconstruction (seed 004)",
    params(("taskId" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task", body = ReconstructionStatus),
        (status = 404, description = "No such task", body = ErrorBody),
    )
)]
async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> ApiResult<Json<ReconstructionStatus>> {
    let gateway = &state.gateway;
    let task: Task = gateway.task(&caller, parse_id(&task_id)?).await?;
    let artifacts = gateway.artifacts(&task).await?;
    let live: Vec<&Artifact> = artifacts.iter().filter(|a| a.expired_at.is_none()).collect();
    let named =
        |pick: &dyn Fn(&str) -> bool| live.iter().find(|a| pick(&a.name.to_ascii_lowercase())).map(|a| a.key.clone());
    let url_of = async |key: Option<String>| match key {
        Some(key) => Some(gateway.file_url(&key).await),
        None => None,
    };
    let original = url_of(gateway.task_picture(&task).await?.map(|p| p.key)).await;
    let pixel_images = url_of(named(&|n| n.starts_with("pixel_images"))).await;
    let xyz_images = url_of(named(&|n| n.starts_with("xyz_images"))).await;
    let output_zip = url_of(named(&|n| n.ends_with(".zip"))).await;
    // By role: a task may hold several GLBs (compressed, simplified), all but the
    // engine's own with role `variant`.
    let models: Vec<&&Artifact> = live.iter().filter(|a| a.role == "model").collect();
    let model_key = models.iter().find(|a| a.name.to_ascii_lowercase().ends_with(".glb")).or(models.first());
    let model = url_of(model_key.map(|a| a.key.clone())).await;
    let preview = url_of(live.iter().find(|a| a.role == "preview").map(|a| a.key.clone())).await;
    let updated = [Some(task.created_at), task.started_at, task.finished_at]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(task.created_at);
    Ok(Json(ReconstructionStatus {
        task_id: task.id.to_string(),
        status: status_word(task.status).to_owned(),
        progress: task.progress,
        original_image_url: original,
        pixel_images_url: pixel_images,
        xyz_images_url: xyz_images,
        output_zip_url: output_zip,
        model_url: model,
        preview_url: preview,
        error_message: task
            .error_message
            .clone()
            .or_else(|| (task.status == TaskStatus::Canceled).then(|| "Canceled".to_owned())),
        error_code: task.error_code.clone(),
        created_at: task.created_at.to_rfc3339(),
        updated_at: updated.to_rfc3339(),
        started_at: task.started_at.map(|t| t.to_rfc3339()),
        finished_at: task.finished_at.map(|t| t.to_rfc3339()),
    }))
}

/// A worker sends a result file (seed 004's path for the worker protocol's result callback).
#[utoipa::path(
    post, path = "/api/reconstruction/callback/result/{taskId}", tag = "reconstruction (seed 004)",
    security(("worker_signature" = [])),
    params(("taskId" = String, Path, description = "Task id")),
    request_body(content((callbacks::ResultUpload = "multipart/form-data"))),
    responses(
        (status = 200, description = "Stored (or already stored)", body = callbacks::CallbackAnswer),
        (status = 400, description = "Malformed form or file name", body = ErrorBody),
        (status = 401, description = "Signature missing, wrong, stale or replayed", body = ErrorBody),
        (status = 403, description = "Signed for another channel", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task has ended, or a different file has this name", body = ErrorBody),
        (status = 413, description = "Over the size limit", body = ErrorBody),
        (status = 415, description = "Not multipart/form-data", body = ErrorBody),
    )
)]
async fn callback_result(
    state: State<AppState>,
    task_id: Path<String>,
    request: Request,
) -> ApiResult<Json<callbacks::CallbackAnswer>> {
    callbacks::result_callback(state, task_id, request).await
}

/// A worker reports a job's end (seed 004's path for the status callback).
#[utoipa::path(
    post, path = "/api/reconstruction/callback/status", tag = "reconstruction (seed 004)",
    security(("worker_signature" = [])),
    request_body(content = crate::worker_protocol::StatusReport, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded (or already recorded)", body = callbacks::CallbackAnswer),
        (status = 400, description = "Malformed", body = ErrorBody),
        (status = 401, description = "Signature missing, wrong, stale or replayed", body = ErrorBody),
        (status = 403, description = "Signed for another channel", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task has already ended otherwise", body = ErrorBody),
    )
)]
async fn callback_status(state: State<AppState>, request: Request) -> ApiResult<Json<callbacks::CallbackAnswer>> {
    callbacks::status_callback(state, request).await
}

/// A worker reports progress (the worker protocol's addition to seed 004).
#[utoipa::path(
    post, path = "/api/reconstruction/callback/progress", tag = "reconstruction (seed 004)",
    security(("worker_signature" = [])),
    request_body(content = crate::worker_protocol::ProgressReport, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded", body = callbacks::CallbackAnswer),
        (status = 400, description = "Malformed", body = ErrorBody),
        (status = 401, description = "Signature missing, wrong, stale or replayed", body = ErrorBody),
        (status = 403, description = "Signed for another channel", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task has already ended", body = ErrorBody),
    )
)]
async fn callback_progress(state: State<AppState>, request: Request) -> ApiResult<Json<callbacks::CallbackAnswer>> {
    callbacks::progress_callback(state, request).await
}
