//! Seed 002's face, the one-GPU product: `POST /api/generate` (a picture in, wait for the
//! model, answer its static URL), `GET /api/status/{task_id}` (SSE with `queued`,
//! `processing`, `completed`, `failed`) and `GET /static/{uuid}.glb` (the model). Errors
//! in that seed's own shape, `{"success": false, "error": "…"}`, with the messages of its
//! §6 table.

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    access::Caller,
    api::{
        AppState, files, forms,
        openapi::Binary,
        params::{Path, Query},
        sse,
        stream_docs::GenerateEventStream,
    },
    db::StoredFile,
    error::{ApiError, Code},
    gateway::{FileUrls, Gateway, Input, Submission},
    tasks::{EventKind, Task, TaskEvent, TaskId, TaskStatus},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(generate)).routes(routes!(status_stream)).routes(routes!(static_model))
}

/// A seed-002 answer: success with the model, or failure with a message.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerateAnswer {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
    /// `{public_url}/static/{task_id}.glb`.
    #[serde(skip_serializing_if = "Option::is_none")]
    model_url: Option<String>,
    /// Seconds the generation took (not counting the queue).
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_time: Option<f64>,
    /// With `Prefer: respond-async`: the SSE stream to follow.
    #[serde(skip_serializing_if = "Option::is_none")]
    status_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// kiln's stable code for the error, next to the seed's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
}

impl GenerateAnswer {
    fn failure(error: impl Into<String>, code: &str, task_id: Option<TaskId>) -> Self {
        Self {
            success: false,
            task_id: task_id.map(|t| t.to_string()),
            model_url: None,
            generation_time: None,
            status_url: None,
            error: Some(error.into()),
            code: Some(code.to_owned()),
        }
    }
}

/// A refusal in seed 002's words (§6), keeping the status and `Retry-After`.
struct Seed002Error(ApiError);

impl From<ApiError> for Seed002Error {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl IntoResponse for Seed002Error {
    fn into_response(self) -> Response {
        let err = self.0;
        let public = err.log_and_public_message().to_owned();
        let message = match err.code {
            Code::UnsupportedImageFormat => "Unsupported image format".to_owned(),
            Code::FileTooLarge => "File too large, max 10MB".to_owned(),
            Code::QueueFull | Code::ChannelUnavailable | Code::ShuttingDown => "Server busy, retry later".to_owned(),
            Code::Internal => "Internal error".to_owned(),
            _ => public,
        };
        let mut response =
            (err.status(), Json(GenerateAnswer::failure(message, err.code.as_str(), None))).into_response();
        err.decorate(&mut response);
        response
    }
}

fn model_url(gateway: &Gateway, id: TaskId) -> String {
    gateway.served_url(&format!("static/{id}.glb"))
}

/// How a finished task is told: the status and the answer.
fn ended(gateway: &Gateway, task: &Task) -> (StatusCode, GenerateAnswer) {
    match task.status {
        TaskStatus::Succeeded => (
            StatusCode::OK,
            GenerateAnswer {
                success: true,
                task_id: Some(task.id.to_string()),
                model_url: Some(model_url(gateway, task.id)),
                generation_time: task.generation_seconds(),
                status_url: None,
                error: None,
                code: None,
            },
        ),
        TaskStatus::Canceled => (StatusCode::CONFLICT, GenerateAnswer::failure("Canceled", "canceled", Some(task.id))),
        _ => {
            let code = task.error_code.as_deref().unwrap_or("internal_error");
            let (status, message) = failure_words(code, task.error_message.as_deref());
            (status, GenerateAnswer::failure(message, code, Some(task.id)))
        }
    }
}

/// Seed 002 §6 for a failed generation: a timeout is 504 `Generation timeout`; a
/// failure that is the picture's fault keeps its explanation (422); anything else is
/// 500 `Internal error` (the details are in the task and the log).
fn failure_words(code: &str, message: Option<&str>) -> (StatusCode, String) {
    match code {
        "generation_timeout" => (StatusCode::GATEWAY_TIMEOUT, "Generation timeout".to_owned()),
        "no_foreground_object" | "invalid_image" | "invalid_params" | "worker_rejected" => {
            (StatusCode::UNPROCESSABLE_ENTITY, message.unwrap_or("The picture cannot be used.").to_owned())
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "Internal error".to_owned()),
    }
}

/// Generate a 3D model from a picture (seed 002).
///
/// `multipart/form-data` with the picture in `image`. Waits for the model up to the task
/// deadline (180 s by default, counted from this request) and answers its static URL; a
/// task still unfinished then gets 504 `Generation timeout` with its `task_id`, and goes
/// on — `GET /api/status/{task_id}` follows it. With `Prefer: respond-async` the answer
/// is 202 at once, with the `task_id` and the `status_url` to follow.
#[utoipa::path(
    post, path = "/api/generate", tag = "generate (seed 002)",
    request_body(content((forms::PictureUpload = "multipart/form-data"))),
    params(("Prefer" = Option<String>, Header, description = "`respond-async`: answer 202 at once")),
    responses(
        (status = 200, description = "The model is ready", body = GenerateAnswer,
            example = json!({"success": true, "task_id": "0193…", "model_url": "https://api.example.com/static/0193….glb", "generation_time": 45.2})),
        (status = 202, description = "Queued (`Prefer: respond-async`)", body = GenerateAnswer),
        (status = 400, description = "Unsupported image format (or another input problem)", body = GenerateAnswer,
            example = json!({"success": false, "error": "Unsupported image format", "code": "unsupported_image_format"})),
        (status = 413, description = "File too large, max 10MB", body = GenerateAnswer),
        (status = 415, description = "Not multipart/form-data (also an empty body)", body = GenerateAnswer),
        (status = 422, description = "The picture cannot be turned into a model (e.g. no object found)", body = GenerateAnswer),
        (status = 500, description = "Internal error", body = GenerateAnswer),
        (status = 503, description = "Server busy, retry later (see Retry-After)", body = GenerateAnswer),
        (status = 504, description = "Generation timeout", body = GenerateAnswer),
    )
)]
async fn generate(State(state): State<AppState>, caller: Caller, request: Request) -> Result<Response, Seed002Error> {
    if state.readiness.stopping() {
        return Err(ApiError::new(Code::ShuttingDown).retry_after(5).into());
    }
    let gateway = &state.gateway;
    let respond_async = forms::prefers_async(request.headers());
    let (upload, filename) = forms::read_picture(request, gateway).await?;
    let task = gateway.submit(&caller, Submission::new(Input::Image { upload, filename })).await?.task;
    let id = task.id;
    if respond_async {
        let answer = GenerateAnswer {
            success: true,
            task_id: Some(id.to_string()),
            model_url: None,
            generation_time: None,
            status_url: Some(gateway.url(&format!("api/status/{id}"))),
            error: None,
            code: None,
        };
        return Ok((StatusCode::ACCEPTED, Json(answer)).into_response());
    }
    let wait = gateway.config().tasks.deadline;
    let mut events = Box::pin(gateway.follow(&task, 0, state.shutdown.clone()));
    let waited = tokio::time::timeout(wait, async {
        while let Some(event) = events.next().await {
            if event.event.kind.is_terminal() {
                return true;
            }
        }
        false
    })
    .await;
    match waited {
        Ok(true) => {
            let task = gateway.task(&caller, id).await?;
            let (status, answer) = ended(gateway, &task);
            Ok((status, Json(answer)).into_response())
        }
        // Shutting down: the task stays queued for the next start.
        Ok(false) => Err(ApiError::new(Code::ShuttingDown).retry_after(5).into()),
        Err(_) => Ok((
            StatusCode::GATEWAY_TIMEOUT,
            Json(GenerateAnswer::failure("Generation timeout", "generation_timeout", Some(id))),
        )
            .into_response()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// Resume after this event id (like `Last-Event-ID`).
    after: Option<i64>,
}

/// Seed 002's rendering of an event, or none for events that face does not show.
fn seed002_event(gateway: &Gateway, _urls: &FileUrls, event: &TaskEvent) -> Option<(&'static str, Value)> {
    let (name, mut data) = match event.kind {
        EventKind::Queued => ("queued", json!({ "status": "queued", "position": event.data["position"] })),
        EventKind::Processing => (
            "processing",
            json!({ "status": "processing", "progress": event.data["progress"], "stage": event.data["stage"] }),
        ),
        EventKind::Result => return None,
        EventKind::Completed => (
            "completed",
            json!({
                "status": "completed",
                "model_url": model_url(gateway, event.task_id),
                "generation_time": event.data["generation_time"],
            }),
        ),
        EventKind::Failed => {
            let code = event.data["error"]["code"].as_str().unwrap_or("internal_error");
            let (_, message) = failure_words(code, event.data["error"]["message"].as_str());
            ("failed", json!({ "status": "failed", "error": message, "code": code }))
        }
        // Seed 002 knows no cancel: to its clients the generation failed.
        EventKind::Canceled => ("failed", json!({ "status": "failed", "error": "Canceled", "code": "canceled" })),
    };
    if let Value::Object(map) = &mut data {
        map.insert("task_id".into(), Value::String(event.task_id.to_string()));
    }
    Some((name, data))
}

/// Follow a generation (seed 002): SSE.
///
/// Events: `queued` (`position`), `processing` (`progress` 0–100, `stage`), `completed`
/// (`model_url`, `generation_time`), `failed` (`error`). `id:` is the event's sequence
/// number; `Last-Event-ID` or `?after=` resumes. The stream ends after `completed` or
/// `failed`.
#[utoipa::path(
    get, path = "/api/status/{task_id}", tag = "generate (seed 002)",
    params(("task_id" = String, Path, description = "The task id from /api/generate"), StreamQuery),
    responses(
        (status = 200, description = "An event stream: each event's `event:` is its kind, `id:` its \
            sequence number, `data:` one JSON object", content_type = "text/event-stream", body = GenerateEventStream),
        (status = 400, description = "`after` is not an int64", body = GenerateAnswer),
        (status = 404, description = "No such task", body = GenerateAnswer),
    )
)]
async fn status_stream(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, ApiError>,
    query: Result<Query<StreamQuery>, ApiError>,
    headers: HeaderMap,
) -> Result<Response, Seed002Error> {
    let (Path(task_id), Query(query)) = (path?, query?);
    Ok(sse::task_stream(&state, &caller, &task_id, query.after, &headers, sse::Face::Seed002, seed002_event).await?)
}

/// Get a generated model (seed 002).
///
/// `{uuid}` is the task id; the answer is its GLB, with `Range`, `ETag` and cache
/// headers like every stored file.
#[utoipa::path(
    get, path = "/static/{file}", tag = "generate (seed 002)",
    params(("file" = String, Path, description = "`{task_id}.glb`"),
        ("Range" = Option<String>, Header, description = "One byte range")),
    responses(
        (status = 200, description = "The model", content_type = "model/gltf-binary", body = Binary),
        (status = 206, description = "Part of the model", content_type = "model/gltf-binary", body = Binary),
        (status = 302, description = "With object storage and `storage.serve = \"redirect\"`: the model's presigned (or CDN) URL is in `Location`"),
        (status = 304, description = "Unchanged (If-None-Match)"),
        (status = 404, description = "No such model", body = GenerateAnswer),
        (status = 410, description = "Deleted after the retention period", body = GenerateAnswer),
        (status = 416, description = "Range outside the file", body = GenerateAnswer),
    )
)]
async fn static_model(
    State(state): State<AppState>,
    method: Method,
    path: Result<Path<String>, ApiError>,
    signature: files::Signature,
    headers: HeaderMap,
) -> Result<Response, Seed002Error> {
    let Path(file) = path?;
    let gateway = &state.gateway;
    signature.check(gateway, &format!("static/{file}"))?;
    let not_found = || ApiError::with_message(Code::FileNotFound, "No such model.");
    let id: TaskId = file.strip_suffix(".glb").and_then(|s| s.parse().ok()).ok_or_else(not_found)?;
    let model = gateway
        .served_outputs(id)
        .await?
        .into_iter()
        .find(|a| a.role == "model" && a.name.to_ascii_lowercase().ends_with(".glb"))
        .ok_or_else(not_found)?;
    let response = files::serve(gateway, &StoredFile::from(model), &method, &headers).await?;
    // `files::serve` answers a bad Range itself, in the native envelope; this face
    // answers in seed 002's words, with the same `Content-Range`.
    if response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
        let code = Code::RangeNotSatisfiable;
        let mut answer =
            (code.status(), Json(GenerateAnswer::failure(code.default_message(), code.as_str(), None))).into_response();
        if let Some(range) = response.headers().get(header::CONTENT_RANGE) {
            answer.headers_mut().insert(header::CONTENT_RANGE, range.clone());
        }
        return Ok(answer);
    }
    Ok(response)
}
