//! The HTTP faces. Each face is a thin module that translates its wire format to calls
//! on the [`Gateway`]; this module assembles them with the middleware stack and the
//! OpenAPI document.

pub mod request_id;

mod account;
mod admin;
pub(crate) mod callbacks;
mod caller;
mod catalog;
mod files;
mod forms;
mod generate;
mod limits;
mod models;
mod openai;
mod openapi;
mod ops;
mod params;
mod pictures;
mod reconstruction;
pub mod sse;
mod stream_docs;
mod tasks;
mod thumbnails;
mod usage;
mod web;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderValue, Method, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::Instrument;
use utoipa_axum::router::OpenApiRouter;

use crate::{
    error::{ApiError, Code},
    gateway::Gateway,
    queue::Scheduler,
};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub scheduler: Arc<Scheduler>,
    pub readiness: Arc<Readiness>,
    /// Fires at shutdown; live streams end with it.
    pub shutdown: CancellationToken,
}

/// Whether the server takes traffic: false until start-up is done and again from the
/// first shutdown signal.
#[derive(Default)]
pub struct Readiness {
    started: AtomicBool,
    stopping: AtomicBool,
}

impl Readiness {
    pub fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
    pub fn serving(&self) -> bool {
        self.started.load(Ordering::SeqCst) && !self.stopping()
    }
}

/// The OpenAPI-documented routes of each face, by name. Each is documented on its own
/// (its schemas are collected separately), so a test can tell when two faces give one
/// schema name two meanings, which merging them would hide.
pub(crate) fn faces() -> Vec<(&'static str, OpenApiRouter<AppState>)> {
    vec![
        ("account", account::routes()),
        ("admin", admin::routes()),
        ("tasks", tasks::routes()),
        ("pictures", pictures::routes()),
        ("models", models::routes()),
        ("callbacks", callbacks::routes()),
        ("generate", generate::routes()),
        ("reconstruction", reconstruction::routes()),
        ("catalog", catalog::routes()),
        ("limits", limits::routes()),
        ("thumbnails", thumbnails::routes()),
        ("files", files::routes()),
        ("ops", ops::routes()),
        ("openai", openai::routes()),
        ("usage", usage::routes()),
    ]
}

/// The OpenAPI-documented routes of every face.
fn documented() -> OpenApiRouter<AppState> {
    faces().into_iter().fold(OpenApiRouter::with_openapi(openapi::base()), |all, (_, face)| all.merge(face))
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi_document() -> serde_json::Value {
    openapi::finish(documented().into_openapi())
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let config = &state.gateway.config();
    let body_limit = (config.upload.max_bytes as usize).saturating_add(forms::ENVELOPE_ALLOWANCE);
    let (api, spec) = documented().split_for_parts();
    api.merge(openapi::routes(openapi::finish(spec)))
        .fallback(web::fallback(&config.public_url()))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), caller::authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(cors(&config.server.cors_origins))
        .layer(middleware::from_fn(trace_request))
        .layer(middleware::from_fn(request_id::middleware))
        .with_state(state)
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::HEAD, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers([request_id::HEADER, header::LOCATION, header::RETRY_AFTER])
        .max_age(Duration::from_secs(3600));
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

/// Runs the request inside a span with its method, path and request id, so every log
/// line about it carries them, and logs its answer. Only the handler runs in the span:
/// tower-http's `TraceLayer` also enters it for every chunk of the answer's body, which
/// for an event stream followed by thousands of clients cost 4 % of the server's time.
async fn trace_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request.headers().get(request_id::HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    let span =
        tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id);
    if tracing::enabled!(tracing::Level::DEBUG) {
        let length = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("-");
        span.in_scope(|| tracing::debug!(content_length = length, "request received"));
    }
    let response = next.run(request).instrument(span.clone()).await;
    let latency = started.elapsed().as_millis();
    span.in_scope(|| tracing::info!(status = response.status().as_u16(), latency_ms = latency, "answered"));
    response
}

async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    state.gateway.metrics().request(&route, &method, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn method_not_allowed() -> Response {
    ApiError::new(Code::MethodNotAllowed).into_response()
}
