//! `X-Request-Id`: kept when the client sent a sane one, generated otherwise, echoed in
//! the response, put on the request's log span — and stamped into every error answer.
//!
//! Error answers are made without the id ([`crate::error`] knows nothing of requests):
//! this middleware, the outermost layer, writes it into their JSON envelope. An error
//! answer that has no envelope at all — a rejection made by axum, tower-http or another
//! library in plain text, or an empty body — gets one here too, with the code closest to
//! its status, so that every answer kiln controls has the same shape.

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderName, HeaderValue, header},
    middleware::Next,
    response::Response,
};

use crate::error::{Code, Envelope};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest plain-text rejection kept as the envelope's message.
const MAX_REJECTION_TEXT: usize = 512;

fn acceptable(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty()
        && text.len() <= 128
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    ok.then(|| text.to_owned())
}

/// A new request id.
pub fn generate() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Assigns the id, and stamps it on the answer.
pub async fn middleware(mut request: Request, next: Next) -> Response {
    let id = request.headers().get(&HEADER).and_then(acceptable).unwrap_or_else(generate);
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(HEADER, value);
    }
    let mut response = next.run(request).await;
    let failed = response.status().is_client_error() || response.status().is_server_error();
    if failed && response.extensions().get::<Envelope>().is_none() && !is_json(&response) {
        response = enveloped(response).await;
    }
    stamp(&mut response, &id);
    response
}

/// Sets the `X-Request-Id` header, and the id in the body of an error answer made by
/// [`crate::error::ApiError`].
pub fn stamp(response: &mut Response, id: &str) {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert(HEADER, value);
    }
    if let Some(envelope) = response.extensions().get::<Envelope>() {
        let body = envelope.render(Some(id));
        response.headers_mut().remove(header::CONTENT_LENGTH);
        *response.body_mut() = Body::from(body);
    }
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"))
}

/// The code and message of an error answer made without an envelope (a library's
/// rejection): its plain-text message is kept when it is a short sentence of a client
/// error, never for a server error. Every face that envelopes such answers reads them so.
pub(crate) async fn rejection(status: axum::http::StatusCode, body: Body) -> (Code, String) {
    let code = Code::for_status(status);
    let text = match axum::body::to_bytes(body, MAX_REJECTION_TEXT).await {
        Ok(bytes) if status.is_client_error() => String::from_utf8(bytes.to_vec()).ok(),
        _ => None,
    };
    let message = text
        .map(|t| t.trim().chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| code.default_message().to_owned());
    (code, message)
}

/// An error answer without the envelope, given one: its plain-text message is kept when
/// it is a short sentence of a client error (axum's rejections explain themselves well),
/// never for a server error.
async fn enveloped(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let (code, message) = rejection(parts.status, body).await;
    let envelope = Envelope { code, message, details: None };
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.extensions.insert(envelope.clone());
    Response::from_parts(parts, Body::from(envelope.render(None)))
}
