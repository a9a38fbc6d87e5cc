//! The OpenAPI 3.1 document, generated from the handlers' annotations, served at
//! `/openapi.json`, with an API browser at `/docs` that works offline (its assets are
//! compiled into the binary).

use axum::Router;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::api::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kiln",
        description = "A self-hostable gateway for generative jobs. Errors use one envelope: \
            `{\"error\": {\"code\", \"message\"}, \"request_id\"}` with a stable `code`.",
    ),
    paths(crate::api::files::serve_file),
    components(schemas(crate::error::ErrorBody)),
    tags(
        (name = "tasks", description = "The native API: create, follow and fetch tasks"),
        (name = "pictures", description = "The native picture library: upload once, make tasks from it"),
        (name = "models (seed 000)", description = "Seed 000/001's model-generation face"),
        (name = "reconstruction (seed 004)", description = "Seed 004's picture library, reconstructions, events and worker callbacks"),
        (name = "generate (seed 002)", description = "Seed 002's one-GPU face: generate, follow, fetch the GLB"),
        (name = "catalog", description = "Models and their availability"),
        (name = "worker callbacks", description = "Signed reports from push workers (docs/worker-protocol.md)"),
        (name = "files", description = "Stored inputs and outputs"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
struct ApiDoc;

pub fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

pub fn routes(spec: utoipa::openapi::OpenApi) -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
}
