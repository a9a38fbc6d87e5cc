//! The worker callback face: `POST /api/v1/worker-callbacks/{progress, status,
//! result/{task_id}}` (seed 004's `/api/reconstruction/callback/…` are the same handlers,
//! mounted by `api::reconstruction`). It reads the signed request — a result file is
//! streamed to disk while its signature is computed — and hands it to
//! [`crate::callbacks`], which holds the rules.

use axum::{
    Json,
    body::Body,
    extract::{Request, State},
    http::HeaderMap,
};
use futures::StreamExt;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio_util::io::ReaderStream;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    api::{AppState, params::Path},
    callbacks::{self, CallbackCheck},
    error::{ApiError, ApiResult, Code, ErrorBody},
    gateway::Gateway,
    input::{SpoolError, Spooler, Upload},
    worker_protocol::{ProgressReport, StatusReport},
};

/// The largest result file a worker may send.
pub const MAX_RESULT_BYTES: u64 = 512 * 1024 * 1024;
/// Room for the multipart envelope around it.
const MAX_RESULT_BODY: u64 = MAX_RESULT_BYTES + 64 * 1024;
/// Progress and status callbacks are small JSON documents.
const MAX_JSON_BODY: usize = 64 * 1024;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(progress_callback))
        .routes(routes!(status_callback))
        .routes(routes!(result_callback))
}

/// What a callback was answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackAnswer {
    pub ok: bool,
    /// For results: whether the file was new or already recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<String>,
    /// For results: where the stored file is served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// For status: the task's status now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl CallbackAnswer {
    fn ok() -> Self {
        Self { ok: true, recorded: None, url: None, status: None }
    }
}

/// Reads a small signed JSON callback: the task is taken from its `taskId` before the
/// signature is checked, because the task decides which channel's secret applies.
async fn read_json<T: DeserializeOwned>(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<(T, Option<crate::tasks::Task>)> {
    let bytes = axum::body::to_bytes(body, MAX_JSON_BODY)
        .await
        .map_err(|_| ApiError::with_message(Code::InvalidRequest, "The callback body is too large for JSON."))?;
    let loose: Option<Value> = serde_json::from_slice(&bytes).ok();
    let task_id = loose.as_ref().and_then(|v| v.get("taskId")).and_then(Value::as_str).map(str::to_owned);
    let task = match task_id {
        Some(id) => callbacks::find_task(gateway, &id).await?,
        None => None,
    };
    let mut check = CallbackCheck::start(gateway, task.as_ref(), headers)?;
    check.update(&bytes);
    check.finish(gateway).await?;
    let report = serde_json::from_slice::<T>(&bytes)
        .map_err(|e| ApiError::with_message(Code::MalformedJson, format!("The callback is not valid: {e}")))?;
    Ok((report, task))
}

/// A worker reports progress.
#[utoipa::path(
    post, path = "/api/v1/worker-callbacks/progress", tag = "worker callbacks",
    security(("worker_signature" = [])),
    request_body(content = ProgressReport, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded", body = CallbackAnswer),
        (status = 400, description = "Malformed", body = ErrorBody),
        (status = 401, description = "Signature missing, wrong, stale or replayed", body = ErrorBody),
        (status = 403, description = "Signed for another channel", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task has already ended: stop", body = ErrorBody),
    )
)]
pub async fn progress_callback(State(state): State<AppState>, request: Request) -> ApiResult<Json<CallbackAnswer>> {
    let (headers, body) = split(request);
    let (report, task) = read_json::<ProgressReport>(&state.gateway, &headers, body).await?;
    callbacks::progress(&state.gateway, task, &report).await?;
    Ok(Json(CallbackAnswer::ok()))
}

/// A worker reports the end of a job.
#[utoipa::path(
    post, path = "/api/v1/worker-callbacks/status", tag = "worker callbacks",
    security(("worker_signature" = [])),
    request_body(content = StatusReport, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded (or already recorded)", body = CallbackAnswer),
        (status = 400, description = "Malformed", body = ErrorBody),
        (status = 401, description = "Signature missing, wrong, stale or replayed", body = ErrorBody),
        (status = 403, description = "Signed for another channel", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task has already ended otherwise: stop", body = ErrorBody),
    )
)]
pub async fn status_callback(State(state): State<AppState>, request: Request) -> ApiResult<Json<CallbackAnswer>> {
    let (headers, body) = split(request);
    let (report, task) = read_json::<StatusReport>(&state.gateway, &headers, body).await?;
    let status = callbacks::status(&state.gateway, &state.scheduler, task, &report).await?;
    Ok(Json(CallbackAnswer { status: Some(status.as_str().to_owned()), ..CallbackAnswer::ok() }))
}

/// A worker sends one result file.
///
/// `multipart/form-data` with `name` (the file name) and `file` (its bytes).
#[utoipa::path(
    post, path = "/api/v1/worker-callbacks/result/{task_id}", tag = "worker callbacks",
    security(("worker_signature" = [])),
    params(("task_id" = String, Path, description = "The task the file belongs to")),
    request_body(content = ResultUpload, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Stored (or the same file was already stored)", body = CallbackAnswer),
        (status = 400, description = "Malformed form or file name", body = ErrorBody),
        (status = 401, description = "Signature missing, wrong, stale or replayed", body = ErrorBody),
        (status = 403, description = "Signed for another channel", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task has ended, or a different file has this name", body = ErrorBody),
        (status = 413, description = "Over the size limit", body = ErrorBody),
        (status = 415, description = "Not multipart/form-data", body = ErrorBody),
    )
)]
pub async fn result_callback(
    State(state): State<AppState>,
    Path(task_id): Path<String>,
    request: Request,
) -> ApiResult<Json<CallbackAnswer>> {
    let gateway = &state.gateway;
    let (headers, body) = split(request);
    let task = callbacks::find_task(gateway, &task_id).await?;
    let mut check = CallbackCheck::start(gateway, task.as_ref(), &headers)?;
    let boundary = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
        .ok_or_else(|| ApiError::with_message(Code::UnsupportedMediaType, "Send multipart/form-data."))?;
    // The whole body goes to disk while the signature is computed over it; nothing of
    // it is believed before the signature checks out.
    let mut spool = Spooler::new(&gateway.spool_dir(), MAX_RESULT_BODY).await.map_err(spool_error)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::with_message(Code::InvalidRequest, format!("Cannot read the body: {e}")))?;
        check.update(&chunk);
        spool.write(&chunk).await.map_err(spool_error)?;
    }
    let body = spool.finish().await.map_err(spool_error)?;
    check.finish(gateway).await?;
    let (name, file) = read_result_form(gateway, body, boundary).await?;
    let (recorded, artifact) = callbacks::result(gateway, task, &name, file).await?;
    Ok(Json(CallbackAnswer {
        recorded: Some(if recorded { "new" } else { "again" }.to_owned()),
        url: Some(gateway.file_url(&artifact.key).await),
        ..CallbackAnswer::ok()
    }))
}

fn split(request: Request) -> (HeaderMap, Body) {
    let (parts, body) = request.into_parts();
    (parts.headers, body)
}

fn spool_error(err: SpoolError) -> ApiError {
    match err {
        SpoolError::TooLarge(_) => ApiError::with_message(
            Code::FileTooLarge,
            format!("Result files are limited to {} MiB.", MAX_RESULT_BYTES / (1024 * 1024)),
        ),
        SpoolError::Io(err) => ApiError::internal(err),
    }
}

/// Takes `name` and `file` from a spooled, verified multipart body.
async fn read_result_form(gateway: &Gateway, body: Upload, boundary: String) -> ApiResult<(String, Upload)> {
    let stream = ReaderStream::new(tokio::fs::File::from_std(body.file));
    let mut form = multer::Multipart::new(stream, boundary);
    let bad = |e: multer::Error| ApiError::with_message(Code::InvalidRequest, format!("Cannot read the form: {e}"));
    let mut name = None;
    let mut file = None;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("name") => name = Some(field.text().await.map_err(bad)?.trim().to_owned()),
            Some("file") => {
                if file.is_some() {
                    return Err(ApiError::with_message(Code::InvalidRequest, "Send one file per result callback."));
                }
                let fallback = field.file_name().map(str::to_owned);
                let mut spool = Spooler::new(&gateway.spool_dir(), MAX_RESULT_BYTES).await.map_err(spool_error)?;
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    spool.write(&chunk).await.map_err(spool_error)?;
                }
                file = Some((spool.finish().await.map_err(spool_error)?, fallback));
            }
            _ => {
                // Unknown fields are skipped, so later protocol versions can add some.
                while field.chunk().await.map_err(bad)?.is_some() {}
            }
        }
    }
    let (file, fallback) =
        file.ok_or_else(|| ApiError::with_message(Code::InvalidRequest, "The form has no `file`."))?;
    let name =
        name.or(fallback).ok_or_else(|| ApiError::with_message(Code::InvalidRequest, "The form has no `name`."))?;
    Ok((name, file))
}

/// Documentation only: the result callback's form.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ResultUpload {
    /// The file name (`model.glb`, `output3d.zip`, …).
    pub name: String,
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}
