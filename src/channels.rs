//! Channels (configured provider instances) and the router that picks one for a task:
//! higher priority first, weighted spread among equals, spill-over to the next when one
//! is full, and a circuit breaker that rests a channel whose submissions keep failing.
//!
//! A [`Router`] never changes; the live set of channels ([`set::ChannelSet`]) swaps in a
//! new one when channels are added, edited or removed while kiln runs.

pub mod admin;
pub mod rehome;
pub mod set;
pub mod stored;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{
    config::{BreakerConfig, ChannelConfig},
    providers::Provider,
    tasks::TaskKind,
};

pub use set::{Changes, ChannelSet, ChannelSpec};

/// Where a channel is defined: the configuration file (read-only while kiln runs) or the
/// database (edited through the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    File,
    Database(Uuid),
}

impl Origin {
    /// `file` or `database`, as the admin API shows it.
    pub fn source(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Database(_) => "database",
        }
    }

    /// The stored channel's id.
    pub fn id(self) -> Option<Uuid> {
        match self {
            Origin::File => None,
            Origin::Database(id) => Some(id),
        }
    }
}

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
    pub weight: u32,
    /// How long a task may run here.
    pub deadline: Duration,
    pub enabled: bool,
    /// Whether a client may bring its own provider key.
    pub client_keys: bool,
    /// Wakes this channel's dispatcher when it has work; registered with the notifier,
    /// which wakes it for work committed by any process ([`crate::notify`]).
    pub wake: Arc<Notify>,
    healthy: AtomicBool,
    defaults: serde_json::Map<String, Value>,
    overrides: serde_json::Map<String, Value>,
    pub breaker: Breaker,
    pub origin: Origin,
    /// The configuration it was built from, to tell an edit from no change.
    config: ChannelConfig,
    /// Fires when the channel leaves the set (removed, replaced by an edit, disabled)
    /// or kiln stops dispatching: its dispatcher stops claiming.
    stop: CancellationToken,
    /// Fires when the channel has stopped and the jobs it was running here have ended
    /// (the scheduler fires it): its provider's background work ends. Not at once when
    /// kiln stops: jobs draining in the grace period keep their poller and their
    /// workers' health probes.
    background: CancellationToken,
    /// Jobs running on this channel's provider in this process.
    jobs: TaskTracker,
}

impl Channel {
    /// A channel around its built provider. `deadline` applies when the configuration
    /// sets none; `parent` is the dispatch stop token, the parent of its `stopped`.
    pub fn new(
        cfg: &ChannelConfig,
        origin: Origin,
        provider: Arc<dyn Provider>,
        deadline: Duration,
        parent: &CancellationToken,
    ) -> Self {
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
            weight: cfg.weight,
            deadline: cfg.deadline.unwrap_or(deadline),
            enabled: cfg.enabled,
            client_keys: cfg.client_keys,
            wake: Arc::new(Notify::new()),
            healthy: AtomicBool::new(true),
            defaults: cfg.defaults.clone(),
            overrides: cfg.overrides.clone(),
            breaker: Breaker::new(cfg.breaker),
            origin,
            config: cfg.clone(),
            stop: parent.child_token(),
            background: CancellationToken::new(),
            jobs: TaskTracker::new(),
        }
    }

    /// The configuration the channel was built from (its secret included: never
    /// serialize it for display without masking).
    pub fn config(&self) -> &ChannelConfig {
        &self.config
    }

    /// Whether this channel is what `origin` and `config` describe, so an edit that
    /// changed nothing keeps it (and its provider, breaker and running jobs).
    pub fn is(&self, origin: Origin, config: &ChannelConfig) -> bool {
        self.origin == origin && &self.config == config && !self.is_retired()
    }

    /// Takes the channel out of service: its dispatcher stops claiming. Jobs it is
    /// running go on to their end on its provider.
    pub fn retire(&self) {
        self.stop.cancel();
    }

    pub fn is_retired(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Fires when the channel's dispatcher must stop claiming.
    pub fn stopped(&self) -> &CancellationToken {
        &self.stop
    }

    /// Fires when the provider's background work (health probes, pollers) must end.
    pub fn background(&self) -> &CancellationToken {
        &self.background
    }

    /// Jobs running on this channel's provider in this process.
    pub fn jobs(&self) -> &TaskTracker {
        &self.jobs
    }

    /// Tasks that may be queued or running at once.
    pub fn capacity(&self) -> u32 {
        self.max_concurrency.saturating_add(self.max_queue)
    }

    pub fn usable(&self) -> bool {
        self.enabled && self.healthy.load(Ordering::Relaxed) && !self.breaker.is_open()
    }

    /// A request's parameters as this channel runs them: its defaults, then the
    /// request's own, then its overrides.
    pub fn params_for(&self, requested: &Value) -> Value {
        let mut params = self.defaults.clone();
        if let Value::Object(requested) = requested {
            params.extend(requested.clone());
        }
        params.extend(self.overrides.clone());
        Value::Object(params)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// Rests a channel after `failures` submissions in a row that its upstream did not
/// take (refused connections, 5xx, 429 before acceptance): new tasks go to the next
/// channel serving the model until `cooldown` has passed; then one is let through.
pub struct Breaker {
    config: BreakerConfig,
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, failures: AtomicU32::new(0), open_until: Mutex::new(None) }
    }

    pub fn is_open(&self) -> bool {
        self.open_until.lock().ok().and_then(|until| *until).is_some_and(|until| Instant::now() < until)
    }

    /// When the channel takes tasks again, while it rests.
    pub fn open_for(&self) -> Option<Duration> {
        let until = self.open_until.lock().ok().and_then(|until| *until)?;
        until.checked_duration_since(Instant::now())
    }

    pub fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Counts a failed submission; true when this one opened the breaker.
    pub fn failed(&self) -> bool {
        if self.config.failures == 0 {
            return false;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.config.failures {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        if let Ok(mut until) = self.open_until.lock() {
            *until = Some(Instant::now() + self.config.cooldown);
        }
        true
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
    /// The router over these channels. `default_models` (kind → model, as
    /// `tasks.default_models`) names a kind's model when a request names none; a kind
    /// without one uses the first model, in channel order, that serves it.
    pub fn new(channels: Vec<Arc<Channel>>, default_models: &BTreeMap<String, String>) -> Self {
        let mut defaults = HashMap::new();
        for (kind, model) in default_models {
            if let Some(kind) = TaskKind::parse(kind) {
                defaults.insert(kind, model.clone());
            }
        }
        for ch in &channels {
            for model in &ch.models {
                defaults.entry(model.kind).or_insert_with(|| model.name.clone());
            }
        }
        Self { channels, defaults }
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

    /// Usable channels serving `model` for `kind`, best first: higher priority first;
    /// among equal priority, a weighted random order, so each channel takes new tasks in
    /// proportion to its weight and the others catch what it cannot hold.
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
        let usable: Vec<Arc<Channel>> = serving
            .into_iter()
            .filter(|c| c.usable() && c.model(&model).is_some_and(|m| m.kind == kind))
            .cloned()
            .collect();
        if usable.is_empty() {
            return Err(RouteError::Unavailable(model));
        }
        Ok((model, weighted_order(usable)))
    }
}

/// Sorts by priority, and each run of equal priority by weighted random choice
/// (Efraimidis–Spirakis keys: u^(1/w), highest first; weight 0 goes last).
fn weighted_order(mut channels: Vec<Arc<Channel>>) -> Vec<Arc<Channel>> {
    let mut keyed: Vec<(i32, f64, Arc<Channel>)> = channels
        .drain(..)
        .map(|c| {
            let key = if c.weight == 0 { -1.0 } else { fastrand::f64().powf(1.0 / f64::from(c.weight)) };
            (c.priority, key, c)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)));
    keyed.into_iter().map(|(_, _, c)| c).collect()
}
