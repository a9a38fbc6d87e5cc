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
        (status = 503, description = "Not ready", body = Readiness)))]
async fn ready(State(state): State<AppState>) -> Response {
    let gateway = &state.gateway;
    let serving = state.readiness.serving();
    let db = gateway.db.ping().await;
    let storage = gateway.storage.check_writable().await;
    let router = gateway.channels.current();
    let usable = router.channels().iter().filter(|c| c.usable()).count();
    let checks = vec![
        Check {
            name: "lifecycle",
            ok: serving,
            detail: (!serving)
                .then(|| if state.readiness.stopping() { "shutting down" } else { "starting" }.to_owned()),
        },
        Check { name: "database", ok: db.is_ok(), detail: db.err().map(|_| "unreachable".to_owned()) },
        Check { name: "storage", ok: storage.is_ok(), detail: storage.err().map(|_| "not writable".to_owned()) },
        Check {
            name: "channels",
            ok: usable > 0,
            detail: Some(format!("{usable} of {} usable", router.channels().len())),
        },
    ];
    let ok = checks.iter().all(|c| c.ok);
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { status: if ok { "ready" } else { "unavailable" }, checks })).into_response()
}

/// Prometheus metrics (OpenMetrics text format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics, in the OpenMetrics 1.0 text format",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    let gateway = &state.gateway;
    let counts = gateway.db.count_by_status().await.unwrap_or_default();
    let loads = gateway.db.channel_loads().await.unwrap_or_default();
    let channels: Vec<String> = gateway.channels.current().channels().iter().map(|c| c.name.clone()).collect();
    let body = gateway.metrics.render(&counts, &loads, &channels);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}
