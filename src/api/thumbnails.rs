//! Small copies of pictures, for lists (the web page's library and history). Stored
//! pictures may be 2048 px and a megabyte or more, and a generated image as large; a page
//! of two dozen of them would cost a phone tens of megabytes.
//!
//! - `GET /api/v1/pictures/{id}/thumbnail`: a stored picture's.
//! - `GET /api/v1/tasks/{id}/thumbnail`: the picture a task made: its `image` output (a
//!   text-to-image task), else its `preview` (the render a cloud 3D provider sends).
//!
//! A thumbnail is made on request (a picture decodes in tens of milliseconds) and cached
//! by clients for a day: a picture's or an output's bytes never change under its id, so
//! the answer is `immutable` and revalidates with an `ETag`.

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use std::io::Cursor;

use image::{ImageFormat, codecs::jpeg::JpegEncoder};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    access::Caller,
    api::{AppState, openapi::Binary, params::Path, tasks::parse_id},
    config::ImageFormatName,
    error::{ApiError, ApiResult, Code, ErrorBody},
    input::{self, Inspection},
};

/// The longest side of a thumbnail: sharp at 160 CSS pixels on a 2× screen.
pub const SIDE: u32 = 320;

/// The roles of a task's outputs that are pictures, in the order a thumbnail prefers them.
pub const PICTURE_ROLES: [&str; 2] = ["image", "preview"];

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(thumbnail)).routes(routes!(task_thumbnail))
}

/// A picture's thumbnail.
///
/// At most 320 × 320 pixels, aspect ratio kept (never enlarged): JPEG, or PNG when the
/// picture has transparency.
#[utoipa::path(
    get, path = "/api/v1/pictures/{id}/thumbnail", tag = "pictures",
    params(("id" = String, Path, description = "Picture id")),
    responses(
        (status = 200, description = "The thumbnail: JPEG, or PNG when the picture has transparency",
            content((Binary = "image/jpeg"), (Binary = "image/png"))),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 404, description = "No such picture", body = ErrorBody),
        (status = 410, description = "The picture was deleted after the retention period", body = ErrorBody),
    )
)]
async fn thumbnail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::new(Code::PictureNotFound))?;
    let picture = state.gateway.picture(&caller, id).await?;
    if picture.expired_at.is_some() {
        return Err(ApiError::new(Code::ArtifactExpired));
    }
    let format = match picture.format.as_str() {
        "png" => ImageFormatName::Png,
        "webp" => ImageFormatName::Webp,
        _ => ImageFormatName::Jpeg,
    };
    let etag = format!("\"{}-t{SIDE}\"", picture.sha256);
    if let Some(answer) = not_modified(&headers, &etag) {
        return Ok(answer);
    }
    let bytes = state.gateway.read_file(&picture.key).await?;
    // Decoded like an upload, and within the same memory budget.
    let inspection = input::inspect_stored(&mut Cursor::new(&bytes), bytes.len() as u64, format, SIDE)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("cannot read the stored picture's header: {e}")))?;
    let (body, content_type) = shrink(&state, bytes, inspection).await?.map_err(ApiError::internal)?;
    Ok(answer(body, content_type, &etag))
}

/// A task's thumbnail.
///
/// A small copy of the picture a task made: its `image` output (a text-to-image task),
/// else its `preview` output (a render some cloud 3D providers send with the model). At
/// most 320 × 320 pixels, aspect ratio kept (never enlarged): JPEG, or PNG when the
/// picture has transparency. A task without such an output (yet) answers 404
/// `file_not_found`; for the picture a task was made *from*, use the picture's thumbnail.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/thumbnail", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The thumbnail: JPEG, or PNG when the picture has transparency",
            content((Binary = "image/jpeg"), (Binary = "image/png"))),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 404, description = "No such task (`task_not_found`), or it has no picture output (`file_not_found`)",
            body = ErrorBody),
        (status = 410, description = "The output was deleted after the retention period", body = ErrorBody),
    )
)]
async fn task_thumbnail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let task = state.gateway.task(&caller, parse_id(&id)?).await?;
    let outputs = state.gateway.artifacts(&task).await?;
    let none = || ApiError::with_message(Code::FileNotFound, "This task has no picture to show.");
    let output = PICTURE_ROLES.iter().find_map(|role| outputs.iter().find(|o| o.role == *role)).ok_or_else(none)?;
    if output.expired_at.is_some() {
        return Err(ApiError::new(Code::ArtifactExpired));
    }
    let etag = format!("\"{}-t{SIDE}\"", output.sha256);
    if let Some(answer) = not_modified(&headers, &etag) {
        return Ok(answer);
    }
    let bytes = state.gateway.read_file(&output.key).await?;
    // Providers' outputs are checked when they are kept, but not against the upload
    // formats: one this server cannot shrink is no picture to show.
    let head = &bytes[..bytes.len().min(32)];
    let format =
        input::sniff(head, &[ImageFormatName::Png, ImageFormatName::Jpeg, ImageFormatName::Webp]).ok_or_else(none)?;
    let inspection =
        input::inspect_stored(&mut Cursor::new(&bytes), bytes.len() as u64, format, SIDE).map_err(|_| none())?;
    let (body, content_type) = shrink(&state, bytes, inspection).await?.map_err(|_| none())?;
    Ok(answer(body, content_type, &etag))
}

/// A 304 when the client holds this thumbnail already.
fn not_modified(headers: &HeaderMap, etag: &str) -> Option<Response> {
    let held = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().trim_start_matches("W/") == etag || t.trim() == "*"));
    if !held {
        return None;
    }
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE));
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Some(response)
}

const CACHE: &str = "public, max-age=86400, immutable";

/// Shrinks on a blocking thread, within the server's decode memory budget.
async fn shrink(
    state: &AppState,
    bytes: bytes::Bytes,
    inspection: Inspection,
) -> ApiResult<anyhow::Result<(Vec<u8>, &'static str)>> {
    let permit = state.gateway.decodes().reserve(inspection.memory).await?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        make(&bytes, &inspection)
    })
    .await
    .map_err(ApiError::internal)
}

fn answer(body: Vec<u8>, content_type: &'static str, etag: &str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        out.insert(header::ETAG, value);
    }
    response
}

/// Decodes, shrinks with a box filter (as it reads, for PNG) and encodes.
fn make(bytes: &[u8], inspection: &Inspection) -> anyhow::Result<(Vec<u8>, &'static str)> {
    let small = input::decode(Cursor::new(bytes), inspection)
        .map_err(|e| anyhow::anyhow!("cannot decode the stored picture: {e}"))?
        .ok_or_else(|| anyhow::anyhow!("the decoder returned no picture"))?;
    let mut out = Vec::new();
    if small.color().has_alpha() {
        small.write_to(&mut std::io::Cursor::new(&mut out), ImageFormat::Png)?;
        Ok((out, "image/png"))
    } else {
        small.to_rgb8().write_with_encoder(JpegEncoder::new_with_quality(&mut out, 82))?;
        Ok((out, "image/jpeg"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageBuffer, Rgb, Rgba};

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        image.write_to(&mut std::io::Cursor::new(&mut out), format).expect("encode");
        out
    }

    fn thumbnail(bytes: &[u8], format: ImageFormatName) -> anyhow::Result<(Vec<u8>, &'static str)> {
        let inspection = input::inspect_stored(&mut Cursor::new(bytes), bytes.len() as u64, format, SIDE)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        make(bytes, &inspection)
    }

    #[test]
    fn large_pictures_shrink_to_the_side_keeping_their_shape() {
        let picture = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(2048, 1024, Rgb([200, 40, 40])));
        let (bytes, content_type) =
            thumbnail(&encode(&picture, ImageFormat::Png), ImageFormatName::Png).expect("thumbnail");
        assert_eq!(content_type, "image/jpeg");
        let small = image::load_from_memory(&bytes).expect("decodes");
        assert_eq!((small.width(), small.height()), (SIDE, SIDE / 2));
    }

    #[test]
    fn transparency_is_kept_and_small_pictures_are_not_enlarged() {
        let picture = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(100, 60, Rgba([0, 0, 0, 0])));
        let (bytes, content_type) =
            thumbnail(&encode(&picture, ImageFormat::Png), ImageFormatName::Png).expect("thumbnail");
        assert_eq!(content_type, "image/png");
        let small = image::load_from_memory(&bytes).expect("decodes");
        assert_eq!((small.width(), small.height()), (100, 60));
        assert!(small.color().has_alpha());
    }

    #[test]
    fn damaged_bytes_are_an_error_not_a_panic() {
        assert!(thumbnail(b"not a picture", ImageFormatName::Jpeg).is_err());
        let whole =
            encode(&DynamicImage::ImageRgb8(ImageBuffer::from_pixel(400, 300, Rgb([1, 2, 3]))), ImageFormat::Png);
        assert!(thumbnail(&whole[..whole.len() / 2], ImageFormatName::Png).is_err());
    }
}
