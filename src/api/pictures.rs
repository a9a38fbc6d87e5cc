//! The native picture library: `/api/v1/pictures`. A picture is validated and stored once,
//! then any number of tasks can be made from it (`POST /api/v1/tasks` with its
//! `picture_id`) without uploading it again.

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    access::Caller,
    api::{
        AppState, forms,
        params::{self, Path, Query},
    },
    error::{ApiError, ApiResult, Code, ErrorBody},
    gateway::Gateway,
    tasks::Picture,
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upload_picture, list_pictures)).routes(routes!(get_picture))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PictureLinks {
    #[serde(rename = "self")]
    pub this: String,
    /// The picture's tasks, newest first.
    pub tasks: String,
    /// A small copy (320 px), for lists.
    pub thumbnail: String,
}

/// A stored input picture.
#[derive(Debug, Serialize, ToSchema)]
pub struct PictureView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// Where the stored picture is served (absent once it expired).
    pub url: Option<String>,
    /// `jpeg`, `png` or `webp`.
    pub format: String,
    pub content_type: String,
    /// As stored: inputs over the longest-side limit are scaled down.
    pub width: u32,
    pub height: u32,
    /// Bytes, as stored.
    pub size: u64,
    pub sha256: String,
    /// The file name the client sent, if any.
    pub original_name: Option<String>,
    pub created_at: String,
    /// Deleted after the retention period.
    pub expired: bool,
    pub links: PictureLinks,
}

pub async fn picture_view(gateway: &Gateway, picture: Picture) -> PictureView {
    let expired = picture.expired_at.is_some();
    let url = if expired { None } else { Some(gateway.file_url(&picture.key).await) };
    PictureView {
        url,
        links: PictureLinks {
            this: gateway.url(&format!("api/v1/pictures/{}", picture.id)),
            tasks: gateway.url(&format!("api/v1/tasks?picture_id={}", picture.id)),
            thumbnail: gateway.url(&format!("api/v1/pictures/{}/thumbnail", picture.id)),
        },
        id: picture.id,
        format: picture.format,
        content_type: picture.content_type,
        width: picture.width,
        height: picture.height,
        size: picture.size,
        sha256: picture.sha256,
        original_name: picture.original_name,
        created_at: picture.created_at.to_rfc3339(),
        expired,
    }
}

/// Upload a picture.
///
/// `multipart/form-data` with the picture in the field `image` (or `file`). It is checked
/// like a task's picture (format from the bytes, size, pixel count, integrity; scaled
/// down over the longest-side limit), stored, and answered with 201.
#[utoipa::path(
    post, path = "/api/v1/pictures", tag = "pictures",
    request_body(content((forms::PictureUpload = "multipart/form-data"))),
    responses(
        (status = 201, description = "Stored", body = PictureView, headers(("Location" = String, description = "The picture's URL"))),
        (status = 400, description = "Missing, unsupported, damaged or oversized-in-pixels picture", body = ErrorBody),
        (status = 413, description = "File too large", body = ErrorBody),
        (status = 415, description = "Not multipart/form-data (also an empty body)", body = ErrorBody),
    )
)]
async fn upload_picture(State(state): State<AppState>, caller: Caller, request: Request) -> ApiResult<Response> {
    if state.readiness.stopping() {
        return Err(ApiError::new(Code::ShuttingDown).retry_after(5));
    }
    let gateway = &state.gateway;
    let (upload, filename) = forms::read_picture(request, gateway).await?;
    let picture = gateway.store_picture(&caller, upload, filename).await?;
    let view = picture_view(gateway, picture).await;
    let mut response = (StatusCode::CREATED, Json(&view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/pictures/{}", view.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Pictures to skip (default 0).
    #[serde(default, deserialize_with = "params::int64")]
    offset: Option<u64>,
    #[param(schema_with = params::limit)]
    limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
struct PicturePage {
    items: Vec<PictureView>,
    /// All stored pictures.
    total: u64,
    /// Pass as `offset` for the next page; absent on the last page.
    next_offset: Option<u64>,
}

/// List pictures, newest first.
#[utoipa::path(
    get, path = "/api/v1/pictures", tag = "pictures", params(ListQuery),
    responses(
        (status = 200, description = "A page of pictures", body = PicturePage),
        (status = 400, description = "Bad paging parameters", body = ErrorBody),
    )
)]
async fn list_pictures(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<PicturePage>> {
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let (pictures, total) = state.gateway.pictures(&caller, offset, limit).await?;
    let shown = offset.saturating_add(pictures.len() as u64);
    let items = futures::future::join_all(pictures.into_iter().map(|p| picture_view(&state.gateway, p))).await;
    Ok(Json(PicturePage { items, total, next_offset: (shown < total).then_some(shown) }))
}

/// Get a picture.
#[utoipa::path(
    get, path = "/api/v1/pictures/{id}", tag = "pictures",
    params(("id" = String, Path, description = "Picture id")),
    responses(
        (status = 200, description = "The picture", body = PictureView),
        (status = 404, description = "No such picture", body = ErrorBody),
    )
)]
async fn get_picture(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<PictureView>> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::new(Code::PictureNotFound))?;
    let picture = state.gateway.picture(&caller, id).await?;
    Ok(Json(picture_view(&state.gateway, picture).await))
}
