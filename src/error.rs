//! One error type for the whole service. Every error carries a stable machine code; the
//! code decides the HTTP status, and this module is the only place that turns errors into
//! HTTP responses for the native API. Internal causes are logged in full and never sent.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

/// The stable machine codes. Adding one means adding a line to [`Code::table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    RequestTimeout,
    SignatureInvalid,
    WrongChannel,
    ResultConflict,
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
            Code::RequestTimeout => ("request_timeout", S::REQUEST_TIMEOUT, "The request took too long."),
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

    pub const ALL: [Code; 33] = [
        Code::InvalidRequest,
        Code::MalformedJson,
        Code::UnsupportedMediaType,
        Code::MissingInput,
        Code::EmptyFile,
        Code::FileTooLarge,
        Code::UnsupportedImageFormat,
        Code::CorruptImage,
        Code::ImageTooManyPixels,
        Code::PromptEmpty,
        Code::PromptTooLong,
        Code::PromptInvalidCharacters,
        Code::InvalidParams,
        Code::UnknownModel,
        Code::ModelKindMismatch,
        Code::IdempotencyKeyReused,
        Code::NotFound,
        Code::TaskNotFound,
        Code::PictureNotFound,
        Code::FileNotFound,
        Code::ArtifactExpired,
        Code::TaskNotFinished,
        Code::TaskAlreadyFinished,
        Code::RangeNotSatisfiable,
        Code::MethodNotAllowed,
        Code::QueueFull,
        Code::ChannelUnavailable,
        Code::ShuttingDown,
        Code::RequestTimeout,
        Code::SignatureInvalid,
        Code::WrongChannel,
        Code::ResultConflict,
        Code::Internal,
    ];
}

/// An error on its way to a client.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    /// Seconds, for 503 answers.
    pub retry_after: Option<u64>,
    /// The internal cause, logged and never sent.
    pub source: Option<anyhow::Error>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: Code) -> Self {
        Self { code, message: code.default_message().to_owned(), retry_after: None, source: None }
    }

    pub fn with_message(code: Code, message: impl Into<String>) -> Self {
        Self { message: message.into(), ..Self::new(code) }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
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
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.log_and_public_message().to_owned();
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.as_str().to_owned(), message },
            request_id: crate::api::request_id::current(),
        };
        let mut response = (self.status(), Json(body)).into_response();
        self.decorate(&mut response);
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
        fn envelope_never_leaks_internal_text(secret in "[a-zA-Z0-9]{8,40}", idx in 0usize..Code::ALL.len()) {
            let internal = ApiError::internal(anyhow::anyhow!("db password {secret}"));
            let response = internal.into_response();
            prop_assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let json = body(response);
            prop_assert!(!json.to_string().contains(&secret));
            prop_assert_eq!(json["error"]["code"].as_str(), Some("internal_error"));

            let code = Code::ALL[idx];
            let response = ApiError::new(code).into_response();
            prop_assert_eq!(response.status(), code.status());
            let json = body(response);
            prop_assert_eq!(json["error"]["code"].as_str(), Some(code.as_str()));
            prop_assert_eq!(json["error"]["message"].as_str(), Some(code.default_message()));
        }
    }
}
