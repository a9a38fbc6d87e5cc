//! Seed 003's face (requirements 9–10): OpenAI's image API, so that OpenAI's own clients
//! work unchanged against kiln — `POST /v1/images/generations`, `GET /v1/models`.
//!
//! Each request is a kiln `text_to_image` task, submitted through the gateway like any
//! other and visible in the native API with its event stream. The answer waits for the
//! task to end and gives its images as kiln's own file URLs or as base64 read from
//! storage, whatever the provider behind the model answered: images are always stored.
//! `Prefer: respond-async` answers 202 at once with the task instead (for proxies that
//! give up after 100 s); `GET /v1/images/generations/{id}` then gives the same answer
//! once the task has ended.
//!
//! Every error of this face is in OpenAI's envelope, `{"error": {"message", "type",
//! "param", "code"}}`, with `code` kiln's stable code. The face's layer puts answers
//! made outside its handlers (a wrong method, a body cut short) into that shape too, so
//! kiln's native envelope never shows here. `Authorization` is accepted and ignored.

use std::{
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::any,
};
use base64::Engine;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{
    router::{OpenApiRouter, UtoipaMethodRouter},
    routes,
};

use crate::{
    access::Caller,
    api::{AppState, forms::prefers_async},
    error::{ApiError, Code, Envelope, ErrorShape},
    gateway::{Gateway, Input, Submission},
    tasks::{Artifact, EventKind, Task, TaskId, TaskKind, TaskStatus},
};

/// The largest request body read: a prompt and a few parameters.
const MAX_BODY: usize = 256 * 1024;
/// Images one request may ask for (OpenAI's limit).
const MAX_N: u64 = 10;
/// How long past a running task's deadline the answer still waits for its end (the
/// deadline is enforced by kiln's sweeper, which may come a little later).
const SLACK: Duration = Duration::from_secs(10);
/// Fields of a request that the face reads itself; every other one goes to the task's
/// `params`.
const OWN_FIELDS: [&str; 5] = ["model", "prompt", "response_format", "user", "stream"];

/// When this process built its routes: the `created` of every model it lists.
static STARTED: OnceLock<i64> = OnceLock::new();

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

pub fn routes() -> OpenApiRouter<AppState> {
    STARTED.get_or_init(unix_now);
    OpenApiRouter::new()
        .routes(own_405(routes!(create_image)))
        .routes(own_405(routes!(get_image_generation)))
        .routes(own_405(routes!(list_models)))
        .routes(own_405(routes!(get_model)))
        // Anything else under /v1 is an OpenAI route kiln does not serve.
        .route("/v1", any(not_served))
        .route("/v1/{*rest}", any(not_served))
        .layer(middleware::from_fn(in_openai_shape))
}

// ---------------------------------------------------------------------------------------
// The error envelope.

/// OpenAI's error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    error: OpenAiErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    /// A sentence for people.
    message: String,
    /// OpenAI's error class: `invalid_request_error`, `rate_limit_error`,
    /// `upstream_error`, `timeout_error` or `server_error`.
    #[serde(rename = "type")]
    #[schema(example = "invalid_request_error")]
    kind: String,
    /// The request field at fault, when one is.
    param: Option<String>,
    /// kiln's stable code (`model_not_found` and `content_policy_violation` as OpenAI
    /// names them).
    #[schema(example = "model_not_found")]
    code: Option<String>,
}

/// An error answer of this face.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    kind: &'static str,
    code: String,
    message: String,
    param: Option<&'static str>,
    retry_after: Option<u64>,
    /// `x-should-retry: false` for failures a retry would only repeat (OpenAI's clients
    /// retry 408, 409, 429 and 5xx by themselves otherwise, each retry a new task).
    final_: bool,
    task: Option<TaskId>,
}

/// Marks an answer already in this face's shape, so the layer leaves it alone.
#[derive(Clone, Copy)]
struct Shaped;

fn kind_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "rate_limit_error",
        502 => "upstream_error",
        504 => "timeout_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

impl OpenAiError {
    fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: kind_for(status),
            code: code.into(),
            message: message.into(),
            param: None,
            retry_after: None,
            final_: false,
            task: None,
        }
    }

    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self { param: Some(param), ..Self::new(StatusCode::BAD_REQUEST, Code::InvalidRequest.as_str(), message) }
    }

    /// kiln's error for a code, in this face's words: the status OpenAI's clients expect
    /// for it (a full queue is 429, as a rate limit), and the field at fault.
    fn from_code(code: Code, message: String) -> Self {
        let (status, name, param) = match code {
            Code::UnknownModel => (StatusCode::NOT_FOUND, "model_not_found", Some("model")),
            Code::ModelKindMismatch => (StatusCode::BAD_REQUEST, code.as_str(), Some("model")),
            Code::PromptEmpty | Code::PromptTooLong | Code::PromptInvalidCharacters | Code::MissingInput => {
                (StatusCode::BAD_REQUEST, code.as_str(), Some("prompt"))
            }
            Code::QueueFull => (StatusCode::TOO_MANY_REQUESTS, code.as_str(), None),
            _ => (code.status(), code.as_str(), None),
        };
        Self { param, ..Self::new(status, name, message) }
    }

    /// How a task that did not succeed is told: by its error code, as OpenAI's clients
    /// expect the class of failure to be told.
    fn of_task(task: &Task) -> Self {
        let message = task.error_message.clone().unwrap_or_else(|| "The image generation failed.".into());
        let mut error = match task.status {
            TaskStatus::Canceled => OpenAiError::new(StatusCode::CONFLICT, "canceled", "The task was canceled."),
            _ => {
                let code = task.error_code.as_deref().unwrap_or("internal_error");
                let status = match code {
                    "content_policy" => StatusCode::BAD_REQUEST,
                    "invalid_params" | "upstream_invalid_params" | "missing_input" | "unsupported_kind" => {
                        StatusCode::BAD_REQUEST
                    }
                    c if c.starts_with("prompt_") => StatusCode::BAD_REQUEST,
                    "upstream_rate_limited" => StatusCode::TOO_MANY_REQUESTS,
                    "upstream_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                    "generation_timeout" => StatusCode::GATEWAY_TIMEOUT,
                    c if c.starts_with("upstream_")
                        || matches!(c, "download_failed" | "bad_output" | "no_output" | "provider_error") =>
                    {
                        StatusCode::BAD_GATEWAY
                    }
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                let name = if code == "content_policy" { "content_policy_violation" } else { code };
                let mut error = OpenAiError::new(status, name, message);
                // Not taken upstream (a rate limit, an outage): trying again is safe.
                if matches!(status.as_u16(), 429 | 503) {
                    error.retry_after = Some(10);
                } else {
                    error.final_ = true;
                }
                error
            }
        };
        if task.status == TaskStatus::Canceled {
            error.final_ = true;
        }
        error.task = Some(task.id);
        error
    }

    fn body(&self) -> Vec<u8> {
        let body = OpenAiErrorBody {
            error: OpenAiErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_owned(),
                param: self.param.map(str::to_owned),
                code: Some(self.code.clone()),
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl From<ApiError> for OpenAiError {
    fn from(err: ApiError) -> Self {
        let message = err.log_and_public_message().to_owned();
        Self { retry_after: err.retry_after, ..Self::from_code(err.code, message) }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], self.body())
                .into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        if self.final_ {
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if let Some(task) = self.task {
            task_header(headers, task);
        }
        response.extensions_mut().insert(Shaped);
        response
    }
}

/// An error made by kiln's core, rendered by this face (for [`ErrorShape`]).
fn render(err: ApiError) -> Response {
    OpenAiError::from(err).into_response()
}

fn task_header(headers: &mut HeaderMap, task: TaskId) {
    if let Ok(value) = HeaderValue::from_str(&task.to_string()) {
        headers.insert("x-kiln-task-id", value);
    }
}

/// The face's layer: an error answer made outside its handlers — a wrong method, a body
/// over the limit, an extractor's rejection — gets OpenAI's envelope in place of kiln's
/// (keeping its status and headers, `Allow` and `Retry-After` among them); and every
/// answer says how kiln should word an error that replaces it later (a request body
/// that stalled).
async fn in_openai_shape(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.extensions_mut().insert(ErrorShape(render));
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || response.extensions().get::<Shaped>().is_some() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let (code, message) = match parts.extensions.remove::<Envelope>() {
        Some(envelope) => (envelope.code, envelope.message),
        None => crate::api::request_id::rejection(parts.status, body).await,
    };
    let mut error = OpenAiError::from_code(code, message);
    error.status = parts.status;
    error.kind = kind_for(parts.status);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.extensions.insert(Shaped);
    Response::from_parts(parts, Body::from(error.body()))
}

/// A route whose wrong methods are answered by this face. kiln's router gives every route
/// without a fallback of its own the native 405 (and replaces a layered one), so the
/// face's layer never sees those answers otherwise. axum still adds `Allow`.
fn own_405((schemas, paths, methods): UtoipaMethodRouter<AppState>) -> UtoipaMethodRouter<AppState> {
    (schemas, paths, methods.fallback(method_not_allowed))
}

async fn method_not_allowed() -> OpenAiError {
    let code = Code::MethodNotAllowed;
    OpenAiError::from_code(code, code.default_message().to_owned())
}

async fn not_served(request: Request) -> OpenAiError {
    OpenAiError::new(
        StatusCode::NOT_FOUND,
        Code::NotFound.as_str(),
        format!(
            "Invalid URL ({} {}): kiln's OpenAI-compatible face serves POST /v1/images/generations, \
             GET /v1/images/generations/{{id}} and GET /v1/models.",
            request.method(),
            request.uri().path()
        ),
    )
}

// ---------------------------------------------------------------------------------------
// POST /v1/images/generations

/// `url` (kiln's own file URL) or `b64_json` (the file, base64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    #[default]
    Url,
    B64Json,
}

impl ResponseFormat {
    fn parse(value: &Value) -> Result<Self, OpenAiError> {
        match value.as_str() {
            Some("url") => Ok(Self::Url),
            Some("b64_json") => Ok(Self::B64Json),
            _ => Err(OpenAiError::invalid(
                "response_format",
                format!("Invalid value: {value}. Supported values are: 'url' and 'b64_json'."),
            )),
        }
    }
}

/// An image generation request: OpenAI's fields, and ModelScope's. Fields other than
/// `model`, `prompt`, `response_format` and `user` become the task's `params`, which the
/// model's provider checks: a provider that does not take one refuses the request (400).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct OpenAiImageRequest {
    /// A `text_to_image` model of `GET /v1/models`; default: the server's default image
    /// model.
    #[schema(nullable = false)]
    model: Option<String>,
    /// What to draw.
    #[schema(min_length = 1)]
    prompt: String,
    /// How many images, 1–10 (the provider may allow fewer).
    #[schema(nullable = false, minimum = 1, maximum = 10)]
    n: Option<u8>,
    /// `WxH` (e.g. `1024x1024`) or `auto`, as the provider takes it.
    #[schema(nullable = false)]
    size: Option<String>,
    /// How the answer carries the images; default `url`.
    #[schema(nullable = false)]
    response_format: Option<ResponseFormat>,
    /// The client's end user; accepted and ignored.
    #[schema(nullable = false)]
    user: Option<String>,
    /// OpenAI's `quality`, passed on.
    #[schema(nullable = false)]
    quality: Option<String>,
    /// OpenAI's `style` (`vivid`, `natural`), passed on.
    #[schema(nullable = false)]
    style: Option<String>,
    /// ModelScope's, passed on.
    #[schema(nullable = false)]
    negative_prompt: Option<String>,
    /// ModelScope's, passed on.
    #[schema(nullable = false)]
    seed: Option<i64>,
    /// ModelScope's, passed on.
    #[schema(nullable = false)]
    steps: Option<i64>,
    /// ModelScope's, passed on.
    #[schema(nullable = false)]
    guidance: Option<f64>,
    /// ModelScope's LoRA: one repository id, or `{id: weight}` (weights summing to 1).
    #[schema(value_type = Option<Object>, nullable = false)]
    loras: Option<Value>,
    /// ModelScope's picture to edit, for models that take one.
    #[schema(nullable = false)]
    image_url: Option<String>,
}

/// One image.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiImage {
    /// kiln's URL of the stored image (`response_format: url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// The image, base64 (`response_format: b64_json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    b64_json: Option<String>,
    /// The prompt the provider actually used, when it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    revised_prompt: Option<String>,
}

/// OpenAI's images answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiImages {
    /// When the task was created, Unix seconds.
    created: i64,
    data: Vec<OpenAiImage>,
}

/// A generation answered before it ended (`Prefer: respond-async`, or read while it
/// runs).
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiImageTask {
    /// The kiln task id.
    #[schema(value_type = String, format = Uuid)]
    id: TaskId,
    /// Always `image.generation.task`.
    #[schema(example = "image.generation.task")]
    object: &'static str,
    /// Unix seconds.
    created: i64,
    model: String,
    status: TaskStatus,
    /// 0–100.
    progress: u8,
    /// `GET` it for the images (200) once the task has ended; 202 with this object
    /// until then.
    status_url: String,
    /// The task in the native API.
    task_url: String,
    /// The task's event stream (SSE) in the native API.
    events_url: String,
}

fn task_object(gateway: &Gateway, task: &Task) -> OpenAiImageTask {
    let id = task.id;
    OpenAiImageTask {
        id,
        object: "image.generation.task",
        created: task.created_at.timestamp(),
        model: task.model.clone(),
        status: task.status,
        progress: task.progress,
        status_url: gateway.url(&format!("v1/images/generations/{id}")),
        task_url: gateway.url(&format!("api/v1/tasks/{id}")),
        events_url: gateway.url(&format!("api/v1/tasks/{id}/events")),
    }
}

fn accepted(gateway: &Gateway, task: &Task) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(task_object(gateway, task))).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/images/generations/{}", task.id)) {
        headers.insert(header::LOCATION, location);
    }
    task_header(headers, task.id);
    response
}

/// A request read: the submission and the answer's format.
struct ImageRequest {
    submission: Submission,
    format: ResponseFormat,
}

/// Reads and checks the body, in OpenAI's words where OpenAI has them.
fn read_request(body: &[u8], headers: &HeaderMap) -> Result<ImageRequest, OpenAiError> {
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
        return Err(OpenAiError::new(
            StatusCode::BAD_REQUEST,
            Code::MalformedJson.as_str(),
            "We could not parse the JSON body of your request: send a JSON object with a `prompt`.",
        ));
    };
    // `null` is how many clients say "not given".
    fields.retain(|_, v| !v.is_null());
    let text = |fields: &Map<String, Value>, name: &'static str| -> Result<Option<String>, OpenAiError> {
        match fields.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(OpenAiError::invalid(name, format!("Invalid type for '{name}': expected a string."))),
        }
    };
    let Some(prompt) = text(&fields, "prompt")? else {
        return Err(OpenAiError::invalid("prompt", "Missing required parameter: 'prompt'."));
    };
    let model = text(&fields, "model")?.filter(|m| !m.is_empty());
    let format = fields.get("response_format").map(ResponseFormat::parse).transpose()?.unwrap_or_default();
    text(&fields, "user")?;
    match fields.get("stream") {
        None | Some(Value::Bool(false)) => {}
        Some(_) => return Err(OpenAiError::invalid("stream", "Streaming image generation is not supported here.")),
    }
    if let Some(n) = fields.get("n") {
        let Some(count) = n.as_u64().filter(|n| (1..=MAX_N).contains(n)) else {
            return Err(OpenAiError::invalid("n", format!("Invalid 'n': {n}. Expected an integer from 1 to {MAX_N}.")));
        };
        // One image is every provider's default: left out, so that a provider without
        // `n` takes the request.
        if count == 1 {
            fields.remove("n");
        }
    }
    text(&fields, "size")?;
    fields.retain(|name, _| !OWN_FIELDS.contains(&name.as_str()));
    let mut submission = Submission::new(Input::Prompt);
    submission.prompt = Some(prompt);
    submission.model = model;
    submission.kind = Some(TaskKind::TextToImage);
    submission.params = Value::Object(fields);
    submission.idempotency_key = headers
        .get("idempotency-key")
        .map(|v| {
            crate::api::forms::idempotency_key(v).ok_or_else(|| {
                OpenAiError::new(
                    StatusCode::BAD_REQUEST,
                    Code::InvalidRequest.as_str(),
                    "Idempotency-Key must be 1–255 visible ASCII characters (no spaces or tabs).",
                )
            })
        })
        .transpose()?;
    submission.client_key = crate::api::forms::client_key(headers)?;
    Ok(ImageRequest { submission, format })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_none_or(|v| {
        let v = v.to_ascii_lowercase();
        v.starts_with("application/json") || v.contains("+json")
    })
}

/// Create images (OpenAI-compatible).
///
/// A `text_to_image` task, answered when it ends: the images as kiln's file URLs or as
/// base64. Nothing is sent while the task runs (at most the model's deadline once it
/// starts, and as long again for its turn in the queue); a task not ended by then
/// answers 504 `wait_timeout` and goes on. With `Prefer: respond-async` the answer is 202
/// at once with the task; `GET /v1/images/generations/{id}` gives the images when it
/// has ended. `Authorization` is accepted and ignored; `X-Provider-Key` carries a
/// client's own provider key as on the native API. The header `X-Kiln-Task-Id` names the
/// task on every answer that made one.
#[utoipa::path(
    post, path = "/v1/images/generations", tag = "openai (seed 003)",
    request_body(content((OpenAiImageRequest = "application/json"))),
    params(
        ("Prefer" = Option<String>, Header, description = "`respond-async`: answer 202 at once with the task"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the first task: 1–255 visible ASCII characters",
            min_length = 1, max_length = 255, pattern = r"^[!-~]([ -~]*[!-~])?$"),
        ("X-Provider-Key" = Option<String>, Header, description = "The client's own provider key for this task, where the model's channel takes one \
            (`client_keys`): 1–512 visible ASCII characters; never logged or echoed",
            min_length = 1, max_length = 512, pattern = r"^[!-~]+$"),
    ),
    responses(
        (status = 200, description = "The images", body = OpenAiImages,
            headers(("X-Kiln-Task-Id" = String, description = "The kiln task"))),
        (status = 202, description = "Queued (`Prefer: respond-async`)", body = OpenAiImageTask,
            headers(("Location" = String, description = "Where the answer will be"), ("X-Kiln-Task-Id" = String, description = "The kiln task"))),
        (status = 400, description = "Invalid request: body, prompt, parameters (the provider's refusals too), a model of another kind; \
            also a task refused under the provider's content policy (`content_policy_violation`)", body = OpenAiErrorBody),
        (status = 404, description = "No such model (`model_not_found`)", body = OpenAiErrorBody),
        (status = 409, description = "The task was canceled meanwhile (`canceled`)", body = OpenAiErrorBody),
        (status = 413, description = "The body is too large", body = OpenAiErrorBody),
        (status = 415, description = "Not JSON", body = OpenAiErrorBody),
        (status = 422, description = "Idempotency-Key reused for another request", body = OpenAiErrorBody),
        (status = 429, description = "The model's queue is full (`queue_full`), or the provider's rate limit \
            was reached (`upstream_rate_limited`); see Retry-After", body = OpenAiErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 502, description = "The provider failed: a refused key (`upstream_auth`), no credits, \
            an unusable image (`bad_output`), a lost answer (`upstream_outcome_unknown`) …", body = OpenAiErrorBody),
        (status = 503, description = "No provider for the model is available, or the provider is down; see Retry-After", body = OpenAiErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 504, description = "The task ran out of time (`generation_timeout`), or was not over when the \
            answer stopped waiting (`wait_timeout`; it goes on)", body = OpenAiErrorBody),
    )
)]
async fn create_image(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response, OpenAiError> {
    if state.readiness.stopping() {
        return Err(ApiError::new(Code::ShuttingDown).retry_after(5).into());
    }
    let gateway = &state.gateway;
    let headers = request.headers().clone();
    if !is_json(&headers) {
        return Err(OpenAiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::UnsupportedMediaType.as_str(),
            "Send application/json.",
        ));
    }
    let body = axum::body::to_bytes(request.into_body(), MAX_BODY).await.map_err(|_| {
        OpenAiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::PayloadTooLarge.as_str(),
            format!("The body is over {} KiB.", MAX_BODY / 1024),
        )
    })?;
    let ImageRequest { submission, format } = read_request(&body, &headers)?;
    // An unknown model is 404 before anything else is judged, as OpenAI answers it.
    if let Some(model) = &submission.model
        && gateway.router().kind_of(model).is_none()
    {
        return Err(ApiError::with_message(
            Code::UnknownModel,
            format!("The model `{model}` does not exist; GET /v1/models lists the image models."),
        )
        .into());
    }
    let task = gateway.submit(&caller, submission).await?.task;
    if prefers_async(&headers) {
        return Ok(accepted(gateway, &task));
    }
    match wait(&state, &caller, &task).await {
        Waited::Ended(task) => answer(gateway, &task, format).await,
        Waited::NotYet(seconds) => {
            let mut error = OpenAiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "wait_timeout",
                format!(
                    "The images were not ready after {seconds} s. The task {} goes on: GET {} answers with them once it ends.",
                    task.id,
                    gateway.url(&format!("v1/images/generations/{}", task.id)),
                ),
            );
            error.final_ = true;
            error.task = Some(task.id);
            Err(error)
        }
        Waited::Stopping => Err(ApiError::new(Code::ShuttingDown).retry_after(5).into()),
    }
}

enum Waited {
    Ended(Box<Task>),
    /// Still not over after this many seconds.
    NotYet(u64),
    Stopping,
}

/// Follows the task's events until it ends: at most its channel's deadline for its
/// turn in the queue, and the deadline again (and a little) once it runs, by which
/// time kiln has ended it.
async fn wait(state: &AppState, caller: &Caller, task: &Task) -> Waited {
    let gateway = &state.gateway;
    let deadline = gateway.router().channel(&task.channel).map_or(gateway.config().tasks.deadline, |c| c.deadline);
    let began = tokio::time::Instant::now();
    let mut until = began + deadline + if task.status == TaskStatus::Running { SLACK } else { Duration::ZERO };
    let mut running = task.status == TaskStatus::Running;
    let mut events = Box::pin(gateway.follow(task, 0, state.shutdown.clone()));
    loop {
        match tokio::time::timeout_at(until, events.next()).await {
            Err(_) => return Waited::NotYet(began.elapsed().as_secs()),
            Ok(Some(published)) => {
                let kind = published.event.kind;
                if kind.is_terminal() {
                    break;
                }
                if kind == EventKind::Processing && !running {
                    running = true;
                    until = tokio::time::Instant::now() + deadline + SLACK;
                }
            }
            Ok(None) => break,
        }
    }
    match gateway.task(caller, task.id).await {
        Ok(task) if task.status.is_terminal() => Waited::Ended(Box::new(task)),
        // The stream ended without the end: kiln is shutting down.
        _ => Waited::Stopping,
    }
}

/// The number in an output's name (`image-2.png` → 2), to keep the provider's order.
fn image_number(artifact: &Artifact) -> u64 {
    let digits: String = artifact.name.chars().filter(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

/// The answer for an ended task: its images, or its failure.
async fn answer(gateway: &Gateway, task: &Task, format: ResponseFormat) -> Result<Response, OpenAiError> {
    if task.status != TaskStatus::Succeeded {
        return Err(OpenAiError::of_task(task));
    }
    let mut images: Vec<Artifact> =
        gateway.artifacts(task).await?.into_iter().filter(|a| a.role == TaskKind::TextToImage.main_role()).collect();
    images.sort_by(|a, b| image_number(a).cmp(&image_number(b)).then_with(|| a.name.cmp(&b.name)));
    if images.iter().any(|a| a.expired_at.is_some()) {
        let mut error = OpenAiError::new(
            StatusCode::GONE,
            Code::ArtifactExpired.as_str(),
            "The images were deleted after the retention period.",
        );
        error.task = Some(task.id);
        return Err(error);
    }
    let revised = task.metadata.get("revised_prompts").and_then(Value::as_array);
    let mut data = Vec::with_capacity(images.len());
    for (i, image) in images.iter().enumerate() {
        let number = match image_number(image) {
            0 => i,
            n => (n - 1) as usize,
        };
        let revised_prompt = revised.and_then(|r| r.get(number)).and_then(Value::as_str).map(str::to_owned);
        let item = match format {
            ResponseFormat::Url => {
                OpenAiImage { url: Some(gateway.file_url(&image.key).await), b64_json: None, revised_prompt }
            }
            ResponseFormat::B64Json => {
                let bytes = gateway.read_file(&image.key).await?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
                OpenAiImage { url: None, b64_json: Some(b64), revised_prompt }
            }
        };
        data.push(item);
    }
    let mut response = Json(OpenAiImages { created: task.created_at.timestamp(), data }).into_response();
    task_header(response.headers_mut(), task.id);
    Ok(response)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct FormatQuery {
    /// `url` (default) or `b64_json`.
    response_format: Option<ResponseFormat>,
}

/// Get an image generation's answer (OpenAI-compatible, kiln's addition).
///
/// For a task made by `POST /v1/images/generations` (or any `text_to_image` task): 202
/// with the task while it is queued or running; once it has ended, the answer the
/// waiting request would have given — the images (200), or its error.
#[utoipa::path(
    get, path = "/v1/images/generations/{id}", tag = "openai (seed 003)",
    params(("id" = String, Path, description = "The task id"), FormatQuery),
    responses(
        (status = 200, description = "The images", body = OpenAiImages),
        (status = 202, description = "Not over yet", body = OpenAiImageTask),
        (status = 400, description = "Bad `response_format`, or the task was refused (its error)", body = OpenAiErrorBody),
        (status = 404, description = "No such image task (`task_not_found`)", body = OpenAiErrorBody),
        (status = 409, description = "The task was canceled", body = OpenAiErrorBody),
        (status = 410, description = "The images were deleted after the retention period", body = OpenAiErrorBody),
        (status = 429, description = "The task failed on the provider's rate limit", body = OpenAiErrorBody),
        (status = 502, description = "The task failed at the provider", body = OpenAiErrorBody),
        (status = 503, description = "The task failed: the provider was down", body = OpenAiErrorBody),
        (status = 504, description = "The task ran out of time", body = OpenAiErrorBody),
    )
)]
async fn get_image_generation(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<axum::extract::Query<FormatQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, OpenAiError> {
    let not_found =
        || OpenAiError::new(StatusCode::NOT_FOUND, Code::TaskNotFound.as_str(), "No image task with this id.");
    let axum::extract::Query(query) = query.map_err(|r| OpenAiError::invalid("response_format", r.body_text()))?;
    let Ok(axum::extract::Path(id)) = path else { return Err(not_found()) };
    let id: TaskId = id.parse().map_err(|_| not_found())?;
    let gateway = &state.gateway;
    let task = match gateway.task(&caller, id).await {
        Err(err) if err.code == Code::TaskNotFound => return Err(not_found()),
        other => other?,
    };
    if task.kind != TaskKind::TextToImage {
        return Err(not_found());
    }
    if !task.status.is_terminal() {
        return Ok(accepted(gateway, &task));
    }
    answer(gateway, &task, query.response_format.unwrap_or_default()).await
}

// ---------------------------------------------------------------------------------------
// GET /v1/models

/// A model, as OpenAI lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiModel {
    /// The name to send as `model`.
    id: String,
    /// Always `model`.
    object: &'static str,
    /// When this kiln process started, Unix seconds.
    created: i64,
    /// Always `kiln`.
    owned_by: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiModelList {
    /// Always `list`.
    object: &'static str,
    data: Vec<OpenAiModel>,
}

fn model(id: &str) -> OpenAiModel {
    OpenAiModel { id: id.to_owned(), object: "model", created: STARTED.get().copied().unwrap_or(0), owned_by: "kiln" }
}

/// The image models, once each, in configuration order.
fn image_models(gateway: &Gateway) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for channel in gateway.router().channels() {
        for spec in channel.models.iter().filter(|m| m.kind == TaskKind::TextToImage) {
            if !names.contains(&spec.name) {
                names.push(spec.name.clone());
            }
        }
    }
    names
}

/// List the image models (OpenAI-compatible).
///
/// The `text_to_image` models only: they are what this face serves (`GET
/// /api/v1/catalog` lists every model, with its availability).
#[utoipa::path(
    get, path = "/v1/models", tag = "openai (seed 003)",
    responses(
        (status = 200, description = "The image models", body = OpenAiModelList),
        (status = 500, description = "Internal error (`internal_error`)", body = OpenAiErrorBody),
    )
)]
async fn list_models(State(state): State<AppState>) -> Json<OpenAiModelList> {
    let data = image_models(&state.gateway).iter().map(|name| model(name)).collect();
    Json(OpenAiModelList { object: "list", data })
}

/// Get an image model (OpenAI-compatible).
#[utoipa::path(
    get, path = "/v1/models/{model}", tag = "openai (seed 003)",
    params(("model" = String, Path, description = "The model's name")),
    responses(
        (status = 200, description = "The model", body = OpenAiModel),
        (status = 404, description = "No such image model (`model_not_found`)", body = OpenAiErrorBody),
    )
)]
async fn get_model(
    State(state): State<AppState>,
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<OpenAiModel>, OpenAiError> {
    let name = path.map(|axum::extract::Path(name)| name).unwrap_or_default();
    if image_models(&state.gateway).contains(&name) {
        return Ok(Json(model(&name)));
    }
    Err(OpenAiError::from_code(Code::UnknownModel, format!("The model `{name}` does not exist.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: Value) -> Result<ImageRequest, OpenAiError> {
        read_request(body.to_string().as_bytes(), &HeaderMap::new())
    }

    #[test]
    fn openai_s_fields_are_read_and_the_rest_become_params() {
        let request = read(serde_json::json!({
            "model": "flux", "prompt": "a vase", "n": 2, "size": "512x512", "response_format": "b64_json",
            "user": "u-1", "seed": 7, "negative_prompt": "blur", "quality": null, "stream": false,
        }))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(request.format, ResponseFormat::B64Json);
        assert_eq!(request.submission.model.as_deref(), Some("flux"));
        assert_eq!(request.submission.prompt.as_deref(), Some("a vase"));
        assert_eq!(request.submission.kind, Some(TaskKind::TextToImage));
        assert_eq!(
            request.submission.params,
            serde_json::json!({ "n": 2, "size": "512x512", "seed": 7, "negative_prompt": "blur" })
        );
        // One image is left to the provider's default.
        let request = read(serde_json::json!({ "prompt": "x", "n": 1 })).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(request.submission.params, serde_json::json!({}));
        assert_eq!(request.format, ResponseFormat::Url);
    }

    #[test]
    fn bad_fields_are_refused_naming_the_field() {
        for (body, param) in [
            (serde_json::json!({}), "prompt"),
            (serde_json::json!({ "prompt": 3 }), "prompt"),
            (serde_json::json!({ "prompt": "x", "n": 0 }), "n"),
            (serde_json::json!({ "prompt": "x", "n": 11 }), "n"),
            (serde_json::json!({ "prompt": "x", "n": 1.5 }), "n"),
            (serde_json::json!({ "prompt": "x", "size": 512 }), "size"),
            (serde_json::json!({ "prompt": "x", "response_format": "png" }), "response_format"),
            (serde_json::json!({ "prompt": "x", "stream": true }), "stream"),
            (serde_json::json!({ "prompt": "x", "model": 1 }), "model"),
        ] {
            let err = read(body.clone()).err().unwrap_or_else(|| panic!("{body} was taken"));
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(err.param, Some(param), "{body}");
            assert_eq!(err.kind, "invalid_request_error");
        }
        let err = read_request(b"[1]", &HeaderMap::new()).err().expect("an array");
        assert_eq!(err.code, "malformed_json");
    }

    #[test]
    fn kiln_codes_take_the_statuses_openai_clients_expect() {
        let of = |code: Code| {
            let e = OpenAiError::from_code(code, String::new());
            (e.status.as_u16(), e.kind, e.code)
        };
        assert_eq!(of(Code::UnknownModel), (404, "invalid_request_error", "model_not_found".to_owned()));
        assert_eq!(of(Code::QueueFull), (429, "rate_limit_error", "queue_full".to_owned()));
        assert_eq!(of(Code::ChannelUnavailable), (503, "server_error", "channel_unavailable".to_owned()));
        assert_eq!(of(Code::PromptEmpty).0, 400);
        assert_eq!(of(Code::Internal), (500, "server_error", "internal_error".to_owned()));
    }
}
