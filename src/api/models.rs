//! Seed 000/001's face: `/api/v1/models` — create a generation job, poll its status,
//! fetch its result. A thin translation onto the same tasks; JSON in camelCase, the
//! convention of that seed's TypeScript clients.

use axum::{
    Json,
    extract::{Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    access::Caller,
    api::{
        AppState, forms,
        params::Path,
        tasks::{finished, main_output, parse_id},
    },
    error::{ApiError, ApiResult, Code, ErrorBody},
    tasks::{Task, TaskStatus},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_model)).routes(routes!(model_status)).routes(routes!(model_result))
}

/// Seed 000's status words.
fn status_word(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Queued => "queued",
        TaskStatus::Running => "processing",
        TaskStatus::Succeeded => "completed",
        TaskStatus::Failed => "failed",
        TaskStatus::Canceled => "canceled",
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct JobCreated {
    job_id: String,
    /// `queued`, `processing`, `completed`, `failed` or `canceled`.
    status: String,
    status_url: String,
    result_url: String,
    created_at: String,
}

/// Create a model-generation job (seed 000).
///
/// Same input as `POST /api/v1/tasks`: a picture (`image`) or a `prompt`.
#[utoipa::path(
    post, path = "/api/v1/models", tag = "models (seed 000)",
    request_body(content(
        (forms::MultipartSubmission = "multipart/form-data"),
        (forms::JsonSubmission = "application/json"),
    )),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the first task: 1–255 visible ASCII characters",
        min_length = 1, max_length = 255, pattern = r"^[!-~]([ -~]*[!-~])?$")),
    responses(
        (status = 202, description = "Queued", body = JobCreated),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "`picture_id` names no stored picture (`picture_not_found`)", body = ErrorBody),
        (status = 410, description = "`picture_id` names a picture deleted after the retention period", body = ErrorBody),
        (status = 413, description = "File too large", body = ErrorBody),
        (status = 415, description = "Neither multipart nor JSON (also an empty body)", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused for another request", body = ErrorBody),
        (status = 503, description = "Queue full or no provider available; see Retry-After", body = ErrorBody),
    )
)]
async fn create_model(State(state): State<AppState>, caller: Caller, request: Request) -> ApiResult<Response> {
    if state.readiness.stopping() {
        return Err(ApiError::new(Code::ShuttingDown).retry_after(5));
    }
    let gateway = &state.gateway;
    let submission = forms::read_submission(request, gateway).await?;
    let task = gateway.submit(&caller, submission).await?.task;
    let id = task.id;
    let body = JobCreated {
        job_id: id.to_string(),
        status: status_word(task.status).to_owned(),
        status_url: gateway.url(&format!("api/v1/models/{id}/status")),
        result_url: gateway.url(&format!("api/v1/models/{id}/result")),
        created_at: task.created_at.to_rfc3339(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct JobError {
    code: String,
    message: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct JobStatus {
    job_id: String,
    status: String,
    progress: u8,
    stage: Option<String>,
    queue_position: Option<u32>,
    error: Option<JobError>,
    updated_at: String,
}

fn job_error(task: &Task) -> Option<JobError> {
    task.error_code
        .as_ref()
        .map(|code| JobError { code: code.clone(), message: task.error_message.clone().unwrap_or_default() })
}

/// Get a job's status (seed 000).
#[utoipa::path(
    get, path = "/api/v1/models/{jobId}/status", tag = "models (seed 000)",
    params(("jobId" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Status", body = JobStatus),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
async fn model_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> ApiResult<Json<JobStatus>> {
    let task = state.gateway.task(&caller, parse_id(&job_id)?).await?;
    let queue_position = state.gateway.queue_position(&task).await?;
    Ok(Json(JobStatus {
        job_id: task.id.to_string(),
        status: status_word(task.status).to_owned(),
        progress: task.progress,
        stage: task.stage.clone(),
        queue_position,
        error: job_error(&task),
        updated_at: task.finished_at.or(task.started_at).unwrap_or(task.created_at).to_rfc3339(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ModelMetadata {
    format: Option<String>,
    size: Option<u64>,
    /// Seconds.
    generation_time: Option<f64>,
    created_at: String,
    completed_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ModelFile {
    name: String,
    role: String,
    url: String,
    content_type: String,
    size: u64,
    sha256: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct JobResult {
    job_id: String,
    status: String,
    /// URL of the generated model (or image).
    model_url: Option<String>,
    metadata: ModelMetadata,
    files: Vec<ModelFile>,
    error: Option<JobError>,
}

/// Get a finished job's model URL and metadata (seed 000).
#[utoipa::path(
    get, path = "/api/v1/models/{jobId}/result", tag = "models (seed 000)",
    params(("jobId" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The result, or the error of a failed job", body = JobResult),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "Not finished yet", body = ErrorBody),
    )
)]
async fn model_result(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> ApiResult<Json<JobResult>> {
    let (task, outputs) = finished(&state.gateway, &caller, &job_id, status_word).await?;
    let main = main_output(&outputs);
    Ok(Json(JobResult {
        job_id: task.id.to_string(),
        status: status_word(task.status).to_owned(),
        model_url: main.map(|o| o.url.clone()),
        metadata: ModelMetadata {
            format: main.map(|o| o.format.clone()),
            size: main.map(|o| o.size),
            generation_time: task.generation_seconds(),
            created_at: task.created_at.to_rfc3339(),
            completed_at: task.finished_at.map(|t| t.to_rfc3339()),
        },
        files: outputs
            .into_iter()
            .map(|o| ModelFile {
                name: o.name,
                role: o.role,
                url: o.url,
                content_type: o.content_type,
                size: o.size,
                sha256: o.sha256,
            })
            .collect(),
        error: job_error(&task),
    }))
}
