//! Reading a task submission from a request: `multipart/form-data` with a picture
//! (field `image`, or `file`) and text fields, or JSON with a prompt. The picture is
//! counted as it streams in and refused with 413 the moment it crosses the limit; the
//! rest of the body is never read.

use std::collections::HashMap;

use axum::{
    extract::{FromRequest, Multipart, Request},
    http::header,
};
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    config::Secret,
    error::{ApiError, ApiResult, Code},
    gateway::{Gateway, Input, Submission},
    input::{SpoolError, Spooler, Upload, too_large},
    tasks::TaskKind,
};

/// Room for multipart boundaries and small text fields on top of the picture limit.
pub const ENVELOPE_ALLOWANCE: usize = 256 * 1024;
const MAX_TEXT_FIELD: usize = 64 * 1024;
const MAX_FIELDS: usize = 32;

/// A JSON submission.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonSubmission {
    /// What to generate, for text kinds.
    pub prompt: Option<String>,
    /// A picture stored earlier (instead of uploading one).
    pub picture_id: Option<Uuid>,
    /// The model to use; default: the default model for the kind.
    pub model: Option<String>,
    /// `image_to_3d`, `text_to_3d` or `text_to_image`; default: inferred.
    pub kind: Option<TaskKind>,
    /// Provider-specific options: a JSON object.
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    /// Where kiln POSTs `task.completed`, `task.failed` or `task.canceled` when the task
    /// ends, signed (docs/webhooks.md); default: the API token's.
    pub webhook_url: Option<String>,
}

/// A multipart submission, as documented (the picture is streamed, not buffered twice).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct MultipartSubmission {
    /// The picture (JPEG, PNG or WebP). The field may also be called `file`. Without
    /// one, `picture_id` or `prompt` says what to work from.
    #[schema(value_type = Option<String>, format = Binary, nullable = false)]
    pub image: Option<Vec<u8>>,
    /// A picture stored earlier, used when no picture is uploaded.
    #[schema(value_type = Option<String>, format = Uuid, nullable = false)]
    pub picture_id: Option<String>,
    #[schema(nullable = false)]
    pub prompt: Option<String>,
    /// Empty means none.
    #[schema(nullable = false)]
    pub model: Option<String>,
    #[schema(nullable = false)]
    pub kind: Option<TaskKind>,
    /// JSON object with provider-specific options.
    #[schema(nullable = false)]
    pub params: Option<String>,
    /// Where the task's end is announced (docs/webhooks.md).
    #[schema(nullable = false)]
    pub webhook_url: Option<String>,
}

/// A picture upload on its own, as documented.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct PictureUpload {
    /// The picture (JPEG, PNG or WebP). The field may also be called `file`.
    #[schema(value_type = String, format = Binary)]
    pub image: Vec<u8>,
}

/// A picture and the text fields of a multipart form.
pub struct Form {
    pub image: Option<(Upload, Option<String>)>,
    pub fields: HashMap<String, String>,
}

fn is_multipart(request: &Request) -> bool {
    content_type(request).starts_with("multipart/form-data")
}

fn content_type(request: &Request) -> String {
    request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase()
}

/// Refuses a body whose declared length is already over the limit, before reading it.
pub fn check_declared_length(request: &Request, max_bytes: u64) -> ApiResult<()> {
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > max_bytes + ENVELOPE_ALLOWANCE as u64 => Err(too_large(max_bytes)),
        _ => Ok(()),
    }
}

/// Reads a multipart form, streaming the picture to a temporary file under the byte
/// limit.
pub async fn read_form(request: Request, gateway: &Gateway) -> ApiResult<Form> {
    let max_bytes = gateway.config().upload.max_bytes;
    check_declared_length(&request, max_bytes)?;
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|e| {
        ApiError::with_message(Code::InvalidRequest, format!("Cannot read the form: {}", e.body_text()))
    })?;
    let mut form = Form { image: None, fields: HashMap::new() };
    let mut count = 0;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(err) => return Err(multipart_error(err, max_bytes)),
        };
        count += 1;
        if count > MAX_FIELDS {
            return Err(ApiError::with_message(Code::InvalidRequest, "The form has too many fields."));
        }
        let name = field.name().unwrap_or_default().to_owned();
        if name == "image" || name == "file" {
            if form.image.is_some() {
                return Err(ApiError::with_message(Code::InvalidRequest, "Send one picture per request."));
            }
            let filename = field.file_name().map(str::to_owned);
            let mut field = field;
            let mut spool = Spooler::new(&gateway.spool_dir(), max_bytes).await.map_err(spool_error)?;
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => spool.write(&chunk).await.map_err(spool_error)?,
                    Ok(None) => break,
                    Err(err) => return Err(multipart_error(err, max_bytes)),
                }
            }
            let upload = spool.finish().await.map_err(spool_error)?;
            form.image = Some((upload, filename));
        } else {
            let mut field = field;
            let mut text = BytesMut::new();
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        if text.len() + chunk.len() > MAX_TEXT_FIELD {
                            return Err(ApiError::with_message(
                                Code::InvalidRequest,
                                format!("The form field `{name}` is too long."),
                            ));
                        }
                        text.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(err) => return Err(multipart_error(err, max_bytes)),
                }
            }
            let text = String::from_utf8(text.to_vec()).map_err(|_| {
                ApiError::with_message(Code::InvalidRequest, format!("The form field `{name}` is not UTF-8 text."))
            })?;
            form.fields.insert(name, text);
        }
    }
    Ok(form)
}

fn spool_error(err: SpoolError) -> ApiError {
    match err {
        SpoolError::TooLarge(max_bytes) => too_large(max_bytes),
        SpoolError::Io(err) => ApiError::internal(err),
    }
}

fn multipart_error(err: axum::extract::multipart::MultipartError, max_bytes: u64) -> ApiError {
    if err.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        too_large(max_bytes)
    } else {
        ApiError::with_message(Code::InvalidRequest, format!("Cannot read the form: {}", err.body_text()))
    }
}

/// Reads a form that must carry a picture, and only that matters.
pub async fn read_picture(request: Request, gateway: &Gateway) -> ApiResult<(Upload, Option<String>)> {
    if !is_multipart(&request) {
        return Err(ApiError::with_message(
            Code::UnsupportedMediaType,
            "Send multipart/form-data with the picture in the field `image`.",
        ));
    }
    read_form(request, gateway)
        .await?
        .image
        .ok_or_else(|| ApiError::with_message(Code::MissingInput, "Send a picture in the field `image`."))
}

/// Reads a submission in either encoding.
pub async fn read_submission(request: Request, gateway: &Gateway) -> ApiResult<Submission> {
    let client_key = client_key(request.headers())?;
    let idempotency_key = request
        .headers()
        .get("idempotency-key")
        .map(|v| {
            idempotency_key(v).ok_or_else(|| {
                ApiError::with_message(
                    Code::InvalidRequest,
                    "Idempotency-Key must be 1–255 visible ASCII characters (no spaces or tabs).",
                )
            })
        })
        .transpose()?;
    let mut submission = if is_multipart(&request) {
        let form = read_form(request, gateway).await?;
        from_form(form)?
    } else if content_type(&request).starts_with("application/json") {
        let body = axum::body::to_bytes(request.into_body(), MAX_TEXT_FIELD * 2)
            .await
            .map_err(|_| ApiError::with_message(Code::InvalidRequest, "The JSON body is too large."))?;
        let json: JsonSubmission = serde_json::from_slice(&body)
            .map_err(|e| ApiError::with_message(Code::MalformedJson, format!("The JSON body is not valid: {e}")))?;
        from_json(json)
    } else {
        return Err(ApiError::new(Code::UnsupportedMediaType));
    };
    submission.idempotency_key = idempotency_key;
    submission.client_key = client_key;
    Ok(submission)
}

/// `X-Provider-Key`: a client's own provider key for this task (where the channel takes
/// one). Visible ASCII only; never logged, never echoed.
pub(crate) fn client_key(headers: &axum::http::HeaderMap) -> ApiResult<Option<Secret>> {
    let Some(value) = headers.get("x-provider-key") else { return Ok(None) };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 512 || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(ApiError::with_message(
            Code::InvalidClientKey,
            "X-Provider-Key must be 1–512 visible ASCII characters.",
        ));
    }
    Ok(Some(Secret::new(String::from_utf8_lossy(bytes).into_owned())))
}

/// A key of 1–255 visible ASCII characters (`!` to `~`), as the docs promise: a space
/// or a tab inside it would make two clients' keys differ only by what a log or a proxy
/// might trim.
pub(crate) fn idempotency_key(value: &axum::http::HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    let visible = !bytes.is_empty() && bytes.len() <= 255 && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    visible.then(|| String::from_utf8_lossy(bytes).into_owned())
}

fn from_json(json: JsonSubmission) -> Submission {
    let input = match json.picture_id {
        Some(id) => Input::Picture(id),
        None => Input::Prompt,
    };
    let mut submission = Submission::new(input);
    submission.prompt = json.prompt;
    submission.model = json.model.filter(|m| !m.is_empty());
    submission.kind = json.kind;
    submission.params = json.params.unwrap_or_else(|| Value::Object(Default::default()));
    submission.webhook_url = json.webhook_url.filter(|u| !u.trim().is_empty());
    submission
}

fn from_form(mut form: Form) -> ApiResult<Submission> {
    let input = match form.image.take() {
        Some((upload, filename)) => Input::Image { upload, filename },
        None => match form.fields.remove("picture_id") {
            Some(id) => Input::Picture(Uuid::parse_str(id.trim()).map_err(|_| ApiError::new(Code::PictureNotFound))?),
            None => Input::Prompt,
        },
    };
    let mut submission = Submission::new(input);
    submission.prompt = form.fields.remove("prompt").filter(|p| !p.is_empty() || submission_has_no_image(&submission));
    submission.model = form.fields.remove("model").filter(|m| !m.trim().is_empty()).map(|m| m.trim().to_owned());
    if let Some(kind) = form.fields.remove("kind").filter(|k| !k.is_empty()) {
        submission.kind = Some(TaskKind::parse(kind.trim()).ok_or_else(|| {
            ApiError::with_message(Code::InvalidRequest, "`kind` must be image_to_3d, text_to_3d or text_to_image.")
        })?);
    }
    submission.webhook_url = form.fields.remove("webhook_url").filter(|u| !u.trim().is_empty());
    if let Some(params) = form.fields.remove("params").filter(|p| !p.trim().is_empty()) {
        submission.params = serde_json::from_str(&params)
            .map_err(|e| ApiError::with_message(Code::InvalidParams, format!("`params` is not valid JSON: {e}")))?;
    }
    Ok(submission)
}

fn submission_has_no_image(submission: &Submission) -> bool {
    matches!(submission.input, Input::Prompt)
}

/// `Prefer: respond-async` (RFC 7240): the client wants 202 and the task at once rather
/// than a wait for the result, on the faces that wait by default.
pub(crate) fn prefers_async(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn idempotency_keys_are_visible_ascii_only() {
        let key = |text: &[u8]| HeaderValue::from_bytes(text).ok().and_then(|v| idempotency_key(&v));
        assert_eq!(key(b"order-42:retry_1").as_deref(), Some("order-42:retry_1"));
        assert_eq!(key("~!{}".as_bytes()).as_deref(), Some("~!{}"));
        for bad in [&b"two words"[..], b"tab\there", b" lead", b"", "caf\u{e9}".as_bytes()] {
            assert_eq!(key(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(key("x".repeat(256).as_bytes()), None);
        assert!(key("x".repeat(255).as_bytes()).is_some());
    }
}
