//! `GET /files/{key}`: stored inputs and outputs, with `Content-Type`, `Content-Length`,
//! `ETag` (the sha256), single `Range` requests, `nosniff` and cache headers. Only keys
//! kiln recorded are served; a file deleted by retention answers 410 Gone.
//!
//! From a bucket with `storage.serve = "proxy"` the bytes are streamed from the bucket
//! as they arrive; with `"redirect"` the answer is 302 to a fresh presigned (or CDN)
//! URL, after the same checks (a recorded key, not expired, kiln's own signature when
//! `files.access = "signed"`).

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use utoipa_axum::router::OpenApiRouter;

use crate::{
    api::{AppState, openapi::Binary, params::Path},
    db::StoredFile,
    error::{ApiError, ApiResult, Code},
    gateway::Gateway,
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().route("/files/{*key}", get(serve_file).head(serve_file))
}

/// Get a stored file.
///
/// Supports `Range: bytes=…` (one range), `If-None-Match`, and HEAD.
#[utoipa::path(
    get, path = "/files/{key}", tag = "files",
    params(("key" = String, Path, description = "The file's key, as in the URLs kiln hands out"),
        ("Range" = Option<String>, Header, description = "One byte range"),
        ("expires" = Option<i64>, Query, description = "With `files.access = \"signed\"`: when the URL expires (Unix seconds)"),
        ("sig" = Option<String>, Query, description = "With `files.access = \"signed\"`: the URL's signature")),
    responses(
        (status = 200, description = "The file, with its recorded `Content-Type`", content_type = "*/*", body = Binary),
        (status = 206, description = "Part of the file", content_type = "*/*", body = Binary),
        (status = 302, description = "With object storage and `storage.serve = \"redirect\"`: the file's presigned (or CDN) URL is in `Location`"),
        (status = 304, description = "Unchanged (If-None-Match)"),
        (status = 403, description = "A signed URL that is missing, expired or altered (`file_url_invalid`)", body = crate::error::ErrorBody),
        (status = 404, description = "No such file", body = crate::error::ErrorBody),
        (status = 410, description = "Deleted after the retention period", body = crate::error::ErrorBody),
        (status = 416, description = "Range outside the file", body = crate::error::ErrorBody),
    )
)]
pub async fn serve_file(
    State(state): State<AppState>,
    method: Method,
    Path(key): Path<String>,
    signature: Signature,
    headers: HeaderMap,
) -> ApiResult<Response> {
    signature.check(&state.gateway, &format!("files/{key}"))?;
    let file = state.gateway.stored_file(&key).await?;
    serve(&state.gateway, &file, &method, &headers).await
}

/// A signed file URL's query (`files.access = "signed"`). Read leniently — the first
/// `expires` and `sig`, anything else ignored — so that a public file's URL works
/// whatever query a client or CDN adds to it.
#[derive(Debug, Default)]
pub struct Signature {
    expires: Option<String>,
    sig: Option<String>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Signature {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut signature = Signature::default();
        for (key, value) in url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "expires" if signature.expires.is_none() => signature.expires = Some(value.into_owned()),
                "sig" if signature.sig.is_none() => signature.sig = Some(value.into_owned()),
                _ => {}
            }
        }
        Ok(signature)
    }
}

impl Signature {
    /// Refuses the request unless the URL of `path` may be served.
    pub fn check(&self, gateway: &Gateway, path: &str) -> ApiResult<()> {
        gateway.check_served(path, self.expires.as_deref(), self.sig.as_deref())
    }
}

/// Serves a recorded file; shared by every face that hands out file URLs.
pub async fn serve(gateway: &Gateway, file: &StoredFile, method: &Method, headers: &HeaderMap) -> ApiResult<Response> {
    if file.expired {
        return Err(ApiError::new(Code::ArtifactExpired));
    }
    if let Some(location) = gateway.file_redirect(&file.key).await? {
        // A presigned URL expires: a cache must not keep the redirect past it.
        return Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, location)
            .header(header::CACHE_CONTROL, "no-store")
            .body(Body::empty())
            .map_err(ApiError::internal);
    }
    let etag = format!("\"{}\"", file.sha256);
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, &file.content_type)
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        // Content never changes under a key; it only disappears at retention.
        .header(header::CACHE_CONTROL, "public, max-age=86400, immutable")
        .header(header::LAST_MODIFIED, httpdate::fmt_http_date(file.created_at.into()));
    let matches_etag = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches_etag {
        return builder.status(StatusCode::NOT_MODIFIED).body(Body::empty()).map_err(ApiError::internal);
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(text) => match http_range_header::parse_range_header(text).and_then(|r| r.validate(file.size)) {
            Ok(ranges) if ranges.len() == 1 => Some(ranges[0].clone()),
            // Several ranges: answering with the whole file is allowed and simpler.
            Ok(_) => None,
            Err(_) => {
                let mut response = ApiError::new(Code::RangeNotSatisfiable).into_response();
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", file.size)) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return Ok(response);
            }
        },
    };
    let (status, start, end) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, *r.start(), *r.end() + 1),
        None => (StatusCode::OK, 0, file.size),
    };
    builder = builder.status(status).header(header::CONTENT_LENGTH, end - start);
    if range.is_some() {
        builder =
            builder.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{}", end.saturating_sub(1), file.size));
    }
    if method == Method::HEAD || start == end {
        return builder.body(Body::empty()).map_err(ApiError::internal);
    }
    let stream = gateway.stream_file(&file.key, start..end).await?;
    builder.body(Body::from_stream(stream)).map_err(ApiError::internal)
}
