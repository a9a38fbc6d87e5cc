//! `GET /api/v1/catalog`: the models that can be asked for, and whether their channels
//! can take work now.

use axum::{Json, extract::State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{api::AppState, error::ApiResult, tasks::TaskKind};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(catalog))
}

#[derive(Debug, Serialize, ToSchema)]
struct ChannelView {
    name: String,
    /// Provider type.
    provider: String,
    /// Enabled, healthy and not resting.
    available: bool,
    /// A cloud API (work leaves this machine, and may be billed by the provider).
    cloud: bool,
    /// Seconds until the channel takes new tasks again, while its circuit breaker
    /// rests it after submissions kept failing.
    resting_for: Option<u64>,
    queued: u64,
    running: u64,
    max_concurrency: u32,
    max_queue: u32,
}

#[derive(Debug, Serialize, ToSchema)]
struct ModelView {
    name: String,
    kind: TaskKind,
    description: String,
    /// Whether this is the model used when a request of its kind names none.
    default: bool,
    /// At least one channel can take work.
    available: bool,
    /// Every channel serving it is a cloud API.
    cloud: bool,
    channels: Vec<ChannelView>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Catalog {
    models: Vec<ModelView>,
}

/// List the models.
#[utoipa::path(get, path = "/api/v1/catalog", tag = "catalog",
    responses((status = 200, description = "The catalog", body = Catalog)))]
async fn catalog(State(state): State<AppState>) -> ApiResult<Json<Catalog>> {
    let router = state.gateway.channels.current();
    let loads = state.gateway.db.channel_loads().await?;
    let mut models: Vec<ModelView> = Vec::new();
    for channel in router.channels() {
        let load = loads.iter().find(|l| l.channel == channel.name);
        for model in &channel.models {
            let view = ChannelView {
                name: channel.name.clone(),
                provider: channel.provider_type.clone(),
                available: channel.usable(),
                cloud: channel.provider.is_cloud(),
                resting_for: channel.breaker.open_for().map(|d| d.as_secs().max(1)),
                queued: load.map(|l| l.queued).unwrap_or(0),
                running: load.map(|l| l.running).unwrap_or(0),
                max_concurrency: channel.max_concurrency,
                max_queue: channel.max_queue,
            };
            match models.iter_mut().find(|m| m.name == model.name && m.kind == model.kind) {
                Some(existing) => {
                    existing.available |= view.available;
                    existing.cloud &= view.cloud;
                    existing.channels.push(view);
                }
                None => models.push(ModelView {
                    name: model.name.clone(),
                    kind: model.kind,
                    description: model.description.clone().unwrap_or_else(|| channel.provider.describe()),
                    default: router.default_model(model.kind) == Some(model.name.as_str()),
                    available: view.available,
                    cloud: view.cloud,
                    channels: vec![view],
                }),
            }
        }
    }
    Ok(Json(Catalog { models }))
}
