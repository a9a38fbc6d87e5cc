//! Operations endpoints: liveness, readiness and Prometheus metrics.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::AppState;

/// `Retry-After` of a 503 from `/ready`, in seconds: as long as a submission refused by a
/// stopping replica is told to wait.
const RETRY_AFTER: &str = "5";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health)).routes(routes!(ready)).routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
struct Health {
    status: &'static str,
    version: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION") })
}

#[derive(Debug, Serialize, ToSchema)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Readiness {
    /// `ready` or `unavailable`.
    status: &'static str,
    checks: Vec<Check>,
}

/// Readiness: database reachable, storage writable, at least one channel usable, and
/// not starting or shutting down.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; see Retry-After", body = Readiness,
            headers(("Retry-After" = u64, description = "Seconds to wait")))))]
async fn ready(State(state): State<AppState>) -> Response {
    let gateway = &state.gateway;
    let serving = state.readiness.serving();
    let (db, storage) = gateway.check_stores().await;
    let usable = gateway.router().channels().iter().filter(|c| c.usable()).count();
    let checks = vec![
        Check {
            name: "lifecycle",
            ok: serving,
            detail: (!serving)
                .then(|| if state.readiness.stopping() { "shutting down" } else { "starting" }.to_owned()),
        },
        Check { name: "database", ok: db, detail: (!db).then(|| "unreachable".to_owned()) },
        Check { name: "storage", ok: storage, detail: (!storage).then(|| "not writable".to_owned()) },
        Check {
            name: "channels",
            ok: usable > 0,
            detail: Some(format!("{usable} of {} usable", gateway.router().channels().len())),
        },
    ];
    let ok = checks.iter().all(|c| c.ok);
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut response =
        (status, Json(Readiness { status: if ok { "ready" } else { "unavailable" }, checks })).into_response();
    if !ok {
        // A client (or a proxy) that asks again later, or another replica now.
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static(RETRY_AFTER));
    }
    response
}

/// Prometheus metrics (OpenMetrics text format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics, in the OpenMetrics 1.0 text format",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.gateway.render_metrics().await;
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}
