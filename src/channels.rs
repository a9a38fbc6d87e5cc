//! Channels (configured provider instances) and the router that picks one for a task.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::Notify;

use crate::{
    config::{ChannelConfig, Config, ConfigErrors},
    providers::{Provider, Registry},
    tasks::TaskKind,
};

/// A model a channel serves.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub kind: TaskKind,
    pub upstream: String,
    pub description: Option<String>,
}

/// A configured provider instance with its limits.
pub struct Channel {
    pub name: String,
    pub provider_type: String,
    pub provider: Arc<dyn Provider>,
    pub models: Vec<ModelSpec>,
    pub max_concurrency: u32,
    pub max_queue: u32,
    pub priority: i32,
    pub enabled: bool,
    /// Wakes this channel's dispatcher when a task is queued.
    pub wake: Notify,
    healthy: AtomicBool,
}

impl Channel {
    /// Tasks that may be queued or running at once.
    pub fn capacity(&self) -> u32 {
        self.max_concurrency.saturating_add(self.max_queue)
    }

    pub fn usable(&self) -> bool {
        self.enabled && self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// Why no channel could be chosen.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    UnknownModel(String),
    KindMismatch { model: String, kind: TaskKind },
    NoDefault(TaskKind),
    Unavailable(String),
}

/// Maps a requested model (or a kind's default model) to candidate channels.
pub struct Router {
    channels: Vec<Arc<Channel>>,
    defaults: HashMap<TaskKind, String>,
}

impl Router {
    /// Builds every configured channel through the registry; unknown provider types and
    /// provider set-up failures are reported like any other configuration problem.
    pub fn build(config: &Config, registry: &Registry) -> Result<Self, ConfigErrors> {
        let mut problems = ConfigErrors::default();
        let mut channels = Vec::new();
        for (i, cfg) in config.channels.iter().enumerate() {
            match registry.build(cfg) {
                None => problems.push(
                    format!("channels[{i}].type"),
                    format!(
                        "unknown provider type `{}` (known: {})",
                        cfg.provider,
                        registry.names().collect::<Vec<_>>().join(", ")
                    ),
                ),
                Some(Err(err)) => problems.push(format!("channels[{i}].options"), format!("{err:#}")),
                Some(Ok(provider)) => channels.push(Arc::new(channel(cfg, provider))),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut defaults = HashMap::new();
        for (kind, model) in &config.tasks.default_models {
            if let Some(kind) = TaskKind::parse(kind) {
                defaults.insert(kind, model.clone());
            }
        }
        // A kind without a configured default uses the first model that serves it.
        for ch in &channels {
            for model in &ch.models {
                defaults.entry(model.kind).or_insert_with(|| model.name.clone());
            }
        }
        Ok(Self { channels, defaults })
    }

    pub fn channels(&self) -> &[Arc<Channel>] {
        &self.channels
    }

    pub fn channel(&self, name: &str) -> Option<&Arc<Channel>> {
        self.channels.iter().find(|c| c.name == name)
    }

    pub fn default_model(&self, kind: TaskKind) -> Option<&str> {
        self.defaults.get(&kind).map(String::as_str)
    }

    /// The kind of the named model, if any channel serves it.
    pub fn kind_of(&self, model: &str) -> Option<TaskKind> {
        self.channels.iter().find_map(|c| c.model(model)).map(|m| m.kind)
    }

    /// Usable channels serving `model` for `kind`, best first (priority, then order).
    pub fn candidates(&self, model: Option<&str>, kind: TaskKind) -> Result<(String, Vec<Arc<Channel>>), RouteError> {
        let model = match model {
            Some(m) => m.to_owned(),
            None => self.default_model(kind).ok_or(RouteError::NoDefault(kind))?.to_owned(),
        };
        let serving: Vec<_> = self.channels.iter().filter(|c| c.model(&model).is_some()).collect();
        if serving.is_empty() {
            return Err(RouteError::UnknownModel(model));
        }
        if !serving.iter().any(|c| c.model(&model).is_some_and(|m| m.kind == kind)) {
            return Err(RouteError::KindMismatch { model, kind });
        }
        let mut usable: Vec<Arc<Channel>> = serving
            .into_iter()
            .filter(|c| c.usable() && c.model(&model).is_some_and(|m| m.kind == kind))
            .cloned()
            .collect();
        if usable.is_empty() {
            return Err(RouteError::Unavailable(model));
        }
        usable.sort_by_key(|c| std::cmp::Reverse(c.priority));
        Ok((model, usable))
    }
}

fn channel(cfg: &ChannelConfig, provider: Arc<dyn Provider>) -> Channel {
    Channel {
        name: cfg.name.clone(),
        provider_type: cfg.provider.clone(),
        provider,
        models: cfg
            .models
            .iter()
            .filter_map(|m| {
                Some(ModelSpec {
                    name: m.name.clone(),
                    kind: TaskKind::parse(&m.kind)?,
                    upstream: m.upstream.clone().unwrap_or_else(|| m.name.clone()),
                    description: m.description.clone(),
                })
            })
            .collect(),
        max_concurrency: cfg.max_concurrency.max(1),
        max_queue: cfg.max_queue,
        priority: cfg.priority,
        enabled: cfg.enabled,
        wake: Notify::new(),
        healthy: AtomicBool::new(true),
    }
}
