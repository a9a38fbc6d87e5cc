//! `GET /api/v1/limits`: the input limits the server enforces, so that a client (the web
//! page first of all) can check a picture or a prompt before sending it, with the same
//! numbers as the server rather than a copy that drifts from the configuration.

use axum::{Json, extract::State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{api::AppState, input::format_name};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(limits))
}

/// What an uploaded picture and a prompt may be (the `upload.*` settings).
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadLimits {
    /// Largest accepted picture file, in bytes.
    pub max_bytes: u64,
    /// Accepted picture formats (`jpeg`, `png`, `webp`), detected from the bytes.
    pub formats: Vec<String>,
    /// Largest accepted width × height.
    pub max_pixels: u64,
    /// Pictures with a longer side are scaled down to it (not refused).
    pub max_side: u32,
    /// Longest accepted prompt, in Unicode characters, after trimming.
    pub max_prompt_chars: usize,
    /// Most memory, in bytes, decoding one picture may take, as the server estimates it
    /// from the header (format, size, bit depth, progressive or not); a picture over it is
    /// refused with `image_too_many_pixels`. See "Input validation" in the docs.
    pub max_decode_memory: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Limits {
    pub upload: UploadLimits,
}

/// The input limits.
///
/// A client may check its input against these before sending it; the server checks
/// them again in any case, in the order given under "Input validation" in the docs.
#[utoipa::path(get, path = "/api/v1/limits", tag = "catalog",
    responses((status = 200, description = "The limits in force", body = Limits)))]
async fn limits(State(state): State<AppState>) -> Json<Limits> {
    let upload = &state.gateway.config().upload;
    Json(Limits {
        upload: UploadLimits {
            max_bytes: upload.max_bytes,
            formats: upload.formats.iter().map(|f| format_name(*f).to_owned()).collect(),
            max_pixels: upload.max_pixels,
            max_side: upload.max_side,
            max_prompt_chars: upload.max_prompt_chars,
            max_decode_memory: upload.max_decode_memory,
        },
    })
}
