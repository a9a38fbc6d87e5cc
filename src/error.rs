//! One error type for the whole service. Every error carries a stable machine code; the
//! code decides the HTTP status, and this module is the only place that turns errors into
//! HTTP responses for the native API. Internal causes are logged in full and never sent.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

/// The stable machine codes. Adding one means adding a line to [`Code::table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::VariantArray)]
pub enum Code {
    InvalidRequest,
    MalformedJson,
    UnsupportedMediaType,
    MissingInput,
    EmptyFile,
    FileTooLarge,
    UnsupportedImageFormat,
    CorruptImage,
    ImageTooManyPixels,
    PromptEmpty,
    PromptTooLong,
    PromptInvalidCharacters,
    InvalidParams,
    UnknownModel,
    ModelKindMismatch,
    IdempotencyKeyReused,
    NotFound,
    TaskNotFound,
    PictureNotFound,
    FileNotFound,
    ArtifactExpired,
    TaskNotFinished,
    TaskAlreadyFinished,
    RangeNotSatisfiable,
    MethodNotAllowed,
    QueueFull,
    ChannelUnavailable,
    ShuttingDown,
    TooManyConnections,
    RequestTimeout,
    PayloadTooLarge,
    UriTooLong,
    HeadersTooLarge,
    SignatureInvalid,
    WrongChannel,
    ResultConflict,
    ClientKeyNotAllowed,
    InvalidClientKey,
    Unauthorized,
    InvalidToken,
    InvalidCredentials,
    TooManySigninAttempts,
    Forbidden,
    CsrfFailed,
    ModelNotAllowed,
    InsufficientQuota,
    SpendCapReached,
    TooManyActiveTasks,
    RateLimited,
    UsernameTaken,
    WeakPassword,
    UserNotFound,
    TokenNotFound,
    InvalidWebhookUrl,
    FileUrlInvalid,
    LastAdmin,
    ChannelNotFound,
    ChannelReadOnly,
    InvalidChannel,
    UnknownFormat,
    FormatNotApplicable,
    NoModel,
    ConversionFailed,
    ModelTooLarge,
    ConverterBusy,
    Internal,
}

impl Code {
    /// (code, wire name, HTTP status, default message)
    const fn table(self) -> (&'static str, StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Code::InvalidRequest => ("invalid_request", S::BAD_REQUEST, "The request is not valid."),
            Code::MalformedJson => ("malformed_json", S::BAD_REQUEST, "The JSON body could not be read."),
            Code::UnsupportedMediaType => (
                "unsupported_media_type",
                S::UNSUPPORTED_MEDIA_TYPE,
                "Send multipart/form-data with an image, or application/json with a prompt.",
            ),
            Code::MissingInput => ("missing_input", S::BAD_REQUEST, "Send an image (field `image`) or a `prompt`."),
            Code::EmptyFile => ("empty_file", S::BAD_REQUEST, "The uploaded file is empty."),
            Code::FileTooLarge => ("file_too_large", S::PAYLOAD_TOO_LARGE, "The file is too large."),
            Code::UnsupportedImageFormat => (
                "unsupported_image_format",
                S::BAD_REQUEST,
                "Unsupported image format: send a JPEG, PNG or WebP picture.",
            ),
            Code::CorruptImage => {
                ("corrupt_image", S::BAD_REQUEST, "The picture is damaged or incomplete and cannot be read.")
            }
            Code::ImageTooManyPixels => ("image_too_many_pixels", S::BAD_REQUEST, "The picture has too many pixels."),
            Code::PromptEmpty => ("prompt_empty", S::BAD_REQUEST, "The prompt is empty."),
            Code::PromptTooLong => ("prompt_too_long", S::BAD_REQUEST, "The prompt is too long."),
            Code::PromptInvalidCharacters => {
                ("prompt_invalid_characters", S::BAD_REQUEST, "The prompt contains control characters.")
            }
            Code::InvalidParams => ("invalid_params", S::BAD_REQUEST, "The parameters are not valid."),
            Code::UnknownModel => ("unknown_model", S::BAD_REQUEST, "No such model."),
            Code::ModelKindMismatch => {
                ("model_kind_mismatch", S::BAD_REQUEST, "This model does not take this kind of input.")
            }
            Code::IdempotencyKeyReused => (
                "idempotency_key_reused",
                S::UNPROCESSABLE_ENTITY,
                "This Idempotency-Key was already used for a different request.",
            ),
            Code::NotFound => ("not_found", S::NOT_FOUND, "Nothing here."),
            Code::TaskNotFound => ("task_not_found", S::NOT_FOUND, "No task with this id."),
            Code::PictureNotFound => ("picture_not_found", S::NOT_FOUND, "No picture with this id."),
            Code::FileNotFound => ("file_not_found", S::NOT_FOUND, "No file with this key."),
            Code::ArtifactExpired => ("artifact_expired", S::GONE, "This file was deleted after the retention period."),
            Code::TaskNotFinished => ("task_not_finished", S::CONFLICT, "The task has not finished yet."),
            Code::TaskAlreadyFinished => ("task_already_finished", S::CONFLICT, "The task has already finished."),
            Code::RangeNotSatisfiable => {
                ("range_not_satisfiable", S::RANGE_NOT_SATISFIABLE, "The requested range is outside the file.")
            }
            Code::MethodNotAllowed => ("method_not_allowed", S::METHOD_NOT_ALLOWED, "Method not allowed here."),
            Code::QueueFull => ("queue_full", S::SERVICE_UNAVAILABLE, "The queue for this model is full; retry later."),
            Code::ChannelUnavailable => (
                "channel_unavailable",
                S::SERVICE_UNAVAILABLE,
                "No provider for this model is available right now; retry later.",
            ),
            Code::ShuttingDown => ("shutting_down", S::SERVICE_UNAVAILABLE, "The server is shutting down."),
            Code::TooManyConnections => (
                "too_many_connections",
                S::SERVICE_UNAVAILABLE,
                "The server has too many open connections; retry shortly.",
            ),
            Code::RequestTimeout => ("request_timeout", S::REQUEST_TIMEOUT, "The request took too long."),
            Code::PayloadTooLarge => ("payload_too_large", S::PAYLOAD_TOO_LARGE, "The request body is too large."),
            Code::UriTooLong => ("uri_too_long", S::URI_TOO_LONG, "The request target is too long."),
            Code::HeadersTooLarge => {
                ("headers_too_large", S::REQUEST_HEADER_FIELDS_TOO_LARGE, "The request headers are too large.")
            }
            Code::SignatureInvalid => (
                "signature_invalid",
                S::UNAUTHORIZED,
                "The message is not signed with this channel's secret, is stale, or was already received.",
            ),
            Code::WrongChannel => {
                ("wrong_channel", S::FORBIDDEN, "This task belongs to another channel than the message's signer.")
            }
            Code::ResultConflict => {
                ("result_conflict", S::CONFLICT, "A different file with this name was already recorded for the task.")
            }
            Code::ClientKeyNotAllowed => (
                "client_key_not_allowed",
                S::BAD_REQUEST,
                "No channel serving this model takes a client's own provider key (X-Provider-Key).",
            ),
            Code::InvalidClientKey => (
                "invalid_client_key",
                S::BAD_REQUEST,
                "The provider key in X-Provider-Key does not have the provider's format.",
            ),
            Code::Unauthorized => {
                ("unauthorized", S::UNAUTHORIZED, "Send an API token (Authorization: Bearer kiln_…) or sign in.")
            }
            Code::InvalidToken => ("invalid_token", S::UNAUTHORIZED, "The API token is unknown, revoked or expired."),
            Code::InvalidCredentials => ("invalid_credentials", S::UNAUTHORIZED, "Wrong username or password."),
            Code::TooManySigninAttempts => {
                ("too_many_signin_attempts", S::TOO_MANY_REQUESTS, "Too many sign-in attempts; wait and retry.")
            }
            Code::Forbidden => ("forbidden", S::FORBIDDEN, "Your account may not do this."),
            Code::CsrfFailed => {
                ("csrf_failed", S::FORBIDDEN, "The request lacks this session's X-CSRF-Token; reload the page.")
            }
            Code::ModelNotAllowed => ("model_not_allowed", S::FORBIDDEN, "This API token may not use this model."),
            Code::InsufficientQuota => {
                ("insufficient_quota", S::PAYMENT_REQUIRED, "Your balance does not cover this task's price.")
            }
            Code::SpendCapReached => {
                ("spend_cap_reached", S::PAYMENT_REQUIRED, "This API token's spending cap does not cover this task.")
            }
            Code::TooManyActiveTasks => (
                "too_many_active_tasks",
                S::TOO_MANY_REQUESTS,
                "You have as many tasks queued and running as you may; wait for one to end.",
            ),
            Code::RateLimited => ("rate_limited", S::TOO_MANY_REQUESTS, "Too many requests with this API token."),
            Code::UsernameTaken => ("username_taken", S::CONFLICT, "This username is taken."),
            Code::WeakPassword => ("weak_password", S::BAD_REQUEST, "The password must be 8 to 256 characters."),
            Code::UserNotFound => ("user_not_found", S::NOT_FOUND, "No user with this id."),
            Code::TokenNotFound => ("token_not_found", S::NOT_FOUND, "No API token with this id."),
            Code::InvalidWebhookUrl => (
                "invalid_webhook_url",
                S::UNPROCESSABLE_ENTITY,
                "The webhook URL is not an http(s) URL kiln may send to.",
            ),
            Code::FileUrlInvalid => (
                "file_url_invalid",
                S::FORBIDDEN,
                "This file URL is not signed, has expired or was altered; ask the API for a fresh one.",
            ),
            Code::LastAdmin => ("last_admin", S::CONFLICT, "This is the last enabled admin; make another admin first."),
            Code::ChannelNotFound => ("channel_not_found", S::NOT_FOUND, "No channel with this name."),
            Code::ChannelReadOnly => {
                ("channel_read_only", S::CONFLICT, "This channel comes from the configuration file; change it there.")
            }
            Code::InvalidChannel => (
                "invalid_channel",
                S::BAD_REQUEST,
                "The channel is not valid; `error.details.problems` says which fields.",
            ),
            Code::UnknownFormat => {
                ("unknown_format", S::BAD_REQUEST, "Unknown format; kiln makes glb, obj, stl, stl-mm, ply and usdz.")
            }
            Code::FormatNotApplicable => {
                ("format_not_applicable", S::BAD_REQUEST, "Only 3D results convert into other formats.")
            }
            Code::NoModel => ("no_model", S::CONFLICT, "The task has no model to convert: it failed or was canceled."),
            Code::ConversionFailed => {
                ("conversion_failed", S::UNPROCESSABLE_ENTITY, "The model cannot be read or converted.")
            }
            Code::ModelTooLarge => (
                "model_too_large",
                S::UNPROCESSABLE_ENTITY,
                "The model is over a size, memory or time ceiling of the converter.",
            ),
            Code::ConverterBusy => {
                ("converter_busy", S::SERVICE_UNAVAILABLE, "Too many conversions are waiting; retry later.")
            }
            Code::Internal => ("internal_error", S::INTERNAL_SERVER_ERROR, "Internal error."),
        }
    }

    pub const fn as_str(self) -> &'static str {
        self.table().0
    }

    pub const fn status(self) -> StatusCode {
        self.table().1
    }

    pub const fn default_message(self) -> &'static str {
        self.table().2
    }

    /// Every code, in declaration order.
    pub const ALL: &'static [Code] = <Code as strum::VariantArray>::VARIANTS;

    /// The code for an error answer that was made without one (a rejection by axum or
    /// hyper-util, a bare status): the closest by status.
    pub fn for_status(status: StatusCode) -> Code {
        match status {
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Code::MethodNotAllowed,
            StatusCode::REQUEST_TIMEOUT => Code::RequestTimeout,
            StatusCode::PAYLOAD_TOO_LARGE => Code::PayloadTooLarge,
            StatusCode::URI_TOO_LONG => Code::UriTooLong,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::UnsupportedMediaType,
            StatusCode::RANGE_NOT_SATISFIABLE => Code::RangeNotSatisfiable,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Code::HeadersTooLarge,
            s if s.is_client_error() => Code::InvalidRequest,
            _ => Code::Internal,
        }
    }
}

/// An error on its way to a client.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    /// Seconds, for 503 and 429 answers.
    pub retry_after: Option<u64>,
    /// Facts a client acts on (a balance, a price), sent as `error.details`.
    pub details: Option<serde_json::Value>,
    /// Headers the answer carries (`RateLimit`, say).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// The internal cause, logged and never sent.
    pub source: Option<anyhow::Error>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: Code) -> Self {
        Self {
            code,
            message: code.default_message().to_owned(),
            retry_after: None,
            details: None,
            headers: Vec::new(),
            source: None,
        }
    }

    pub fn with_message(code: Code, message: impl Into<String>) -> Self {
        Self { message: message.into(), ..Self::new(code) }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// An internal error: the client sees only "Internal error.".
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self { source: Some(cause.into()), ..Self::new(Code::Internal) }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|cause| cause.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        ApiError::internal(err)
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(err: crate::db::DbError) -> Self {
        ApiError::internal(err)
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(err: crate::storage::StorageError) -> Self {
        match err {
            crate::storage::StorageError::NotFound(_) => ApiError::new(Code::FileNotFound),
            other => ApiError::internal(other),
        }
    }
}

/// The native error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// The request's `X-Request-Id`.
    pub request_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine code, e.g. `queue_full`.
    #[schema(example = "unsupported_image_format")]
    pub code: String,
    /// A sentence for people.
    #[schema(example = "Unsupported image format: send a JPEG, PNG or WebP picture.")]
    pub message: String,
    /// Facts to act on, for some codes: `balance` and `price` with `insufficient_quota`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// Logs the cause (for 5xx) and returns what may be shown to a client.
    pub fn log_and_public_message(&self) -> &str {
        if let Some(source) = &self.source {
            tracing::error!(code = self.code.as_str(), error = format!("{source:#}"), "request failed");
        } else if self.status().is_server_error() {
            tracing::warn!(code = self.code.as_str(), message = %self.message, "request refused");
        } else {
            tracing::info!(code = self.code.as_str(), message = %self.message, "request refused");
        }
        &self.message
    }

    /// Adds `Retry-After` when set.
    pub fn decorate(&self, response: &mut Response) {
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        for (name, value) in &self.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
}

/// The envelope of an error answer, kept in the answer's extensions next to the body
/// rendered without a request id: the request-id middleware, which knows the id, renders
/// the body again with it.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub code: Code,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

impl Envelope {
    /// The JSON body.
    pub fn render(&self, request_id: Option<&str>) -> Vec<u8> {
        envelope_with(self.code, &self.message, self.details.clone(), request_id)
    }
}

/// How a face whose errors are not in the native envelope words an error made after its
/// handler answered (a request body that stalled, say): the face puts it in its answers'
/// extensions, and whatever replaces such an answer renders its error through it.
#[derive(Clone, Copy)]
pub struct ErrorShape(pub fn(ApiError) -> Response);

/// The JSON envelope `{"error": {"code", "message"}, "request_id"}`.
pub fn envelope(code: Code, message: &str, request_id: Option<&str>) -> Vec<u8> {
    envelope_with(code, message, None, request_id)
}

/// The JSON envelope with `error.details`.
pub fn envelope_with(
    code: Code,
    message: &str,
    details: Option<serde_json::Value>,
    request_id: Option<&str>,
) -> Vec<u8> {
    let body = ErrorBody {
        error: ErrorDetail { code: code.as_str().to_owned(), message: message.to_owned(), details },
        request_id: request_id.map(str::to_owned),
    };
    // Plain strings only: serialising cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.log_and_public_message().to_owned();
        let envelope = Envelope { code: self.code, message, details: self.details.clone() };
        let mut response = (
            self.status(),
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            envelope.render(None),
        )
            .into_response();
        self.decorate(&mut response);
        response.extensions_mut().insert(envelope);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            let name = code.as_str();
            assert!(seen.insert(name), "duplicate code {name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{name}");
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }

    fn body(response: Response) -> serde_json::Value {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let bytes = runtime.block_on(axum::body::to_bytes(response.into_body(), 1 << 20)).expect("body");
        serde_json::from_slice(&bytes).expect("json body")
    }

    proptest! {
        #[test]
        fn envelope_never_leaks_internal_text(secret in "[a-zA-Z0-9]{8,40}", idx in any::<prop::sample::Index>()) {
            let internal = ApiError::internal(anyhow::anyhow!("db password {secret}"));
            let response = internal.into_response();
            prop_assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let json = body(response);
            prop_assert!(!json.to_string().contains(&secret));
            prop_assert_eq!(json["error"]["code"].as_str(), Some("internal_error"));

            let code = Code::ALL[idx.index(Code::ALL.len())];
            let response = ApiError::new(code).into_response();
            prop_assert_eq!(response.status(), code.status());
            let json = body(response);
            prop_assert_eq!(json["error"]["code"].as_str(), Some(code.as_str()));
            prop_assert_eq!(json["error"]["message"].as_str(), Some(code.default_message()));
        }
    }
}
