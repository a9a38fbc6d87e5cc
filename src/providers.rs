//! The provider trait: the adaptor behind a channel type. A provider receives a job,
//! reports progress and outputs through its [`JobContext`], and returns how the job
//! ended. Each provider lives in its own module and is added to [`Registry::builtin`]
//! with one line; nothing else in kiln changes to add one.

pub mod relief;
pub mod worker;

use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{
    config::ChannelConfig,
    tasks::{TaskId, TaskKind},
    webhooks::SigningKey,
};

/// A decoded-and-validated input picture, as stored.
#[derive(Debug, Clone)]
pub struct InputImage {
    pub bytes: Bytes,
    /// `jpeg`, `png` or `webp`.
    pub format: String,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
}

/// One unit of work handed to a provider.
#[derive(Debug, Clone)]
pub struct Job {
    pub task_id: TaskId,
    pub kind: TaskKind,
    /// The model the client asked for.
    pub model: String,
    /// The provider's own name for it.
    pub upstream_model: String,
    pub prompt: Option<String>,
    pub image: Option<InputImage>,
    pub params: Value,
    /// 1 for the first run; more when a run was interrupted and restarted.
    pub attempt: u32,
    /// When kiln gives the task up.
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
}

/// A file a provider produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// File name, e.g. `model.glb`: letters, digits, `.`, `-`, `_` only.
    pub name: String,
    /// `model`, `preview`, `archive`, `image` …
    pub role: String,
    pub content_type: String,
    pub bytes: Bytes,
    pub metadata: Value,
}

/// Where a running job reports to. Implemented by the scheduler.
#[async_trait]
pub trait JobSink: Send + Sync {
    async fn progress(&self, progress: u8, stage: &str) -> anyhow::Result<()>;
    async fn output(&self, output: Output) -> anyhow::Result<()>;
    async fn provider_job(&self, job_id: &str) -> anyhow::Result<()>;
    async fn assign_worker(&self, worker: &str) -> anyhow::Result<()>;
}

/// A running job's link to kiln.
#[derive(Clone)]
pub struct JobContext {
    sink: Arc<dyn JobSink>,
    cancel: CancellationToken,
}

impl JobContext {
    pub fn new(sink: Arc<dyn JobSink>, cancel: CancellationToken) -> Self {
        Self { sink, cancel }
    }

    /// Reports progress (0–100) and the current stage's name.
    pub async fn progress(&self, progress: u8, stage: &str) -> anyhow::Result<()> {
        self.sink.progress(progress, stage).await
    }

    /// Stores an output; its `result` event goes out at once.
    pub async fn output(&self, output: Output) -> anyhow::Result<()> {
        self.sink.output(output).await
    }

    /// Records the provider's own id for the job.
    pub async fn provider_job(&self, job_id: &str) -> anyhow::Result<()> {
        self.sink.provider_job(job_id).await
    }

    /// Records the push worker the job was dispatched to, so it can be dispatched again
    /// if that worker is lost, and so work is spread over the least busy workers.
    pub async fn assign_worker(&self, worker: &str) -> anyhow::Result<()> {
        self.sink.assign_worker(worker).await
    }

    /// Fires when the task is canceled or overdue; long work should stop.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }
}

/// How a job ended from the provider's side.
#[derive(Debug)]
pub enum Outcome {
    /// Done; the outputs were reported through the context.
    Completed { metadata: Value },
    /// Handed to an external worker; its callbacks will end the task.
    Detached,
}

/// Why a job failed: a stable code, a sentence for people, and the internal cause.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProviderError {
    pub code: String,
    pub message: String,
    #[source]
    pub cause: Option<anyhow::Error>,
}

impl ProviderError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into(), cause: None }
    }

    /// A failure whose details are for the logs only.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self { code: "provider_error".into(), message: "The generation failed.".into(), cause: Some(cause.into()) }
    }
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// One line for the catalog: what this provider is.
    fn describe(&self) -> String;

    /// Checks a task's parameters when it is submitted, so bad ones are refused before
    /// the task is queued. The message is shown to the client.
    fn check_params(&self, _kind: TaskKind, _params: &Value) -> Result<(), String> {
        Ok(())
    }

    /// Runs one job.
    async fn run(&self, job: Job, ctx: JobContext) -> Result<Outcome, ProviderError>;

    /// Whether the provider can take work now; the message says why not.
    async fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Starts the provider's own background work for its channel (health probes, say),
    /// once, when the scheduler starts. It must end when `runtime.shutdown()` fires.
    fn start(&self, _runtime: Arc<dyn ChannelRuntime>) {}

    /// Whether a job could start now. While false, the channel's dispatcher leaves its
    /// tasks queued (a push provider with no free worker, say).
    fn can_start(&self) -> bool {
        true
    }

    /// The key this provider's workers sign their callbacks with, for providers whose
    /// jobs are finished by signed callbacks.
    fn callback_key(&self) -> Option<&SigningKey> {
        None
    }
}

/// What a provider's background work may ask of kiln about its own channel.
#[async_trait]
pub trait ChannelRuntime: Send + Sync {
    /// Running tasks of the channel per push worker.
    async fn worker_loads(&self) -> anyhow::Result<Vec<(String, u32)>>;
    /// Makes the tasks dispatched to a lost worker claimable again, so they are
    /// dispatched anew; returns how many.
    async fn release_worker(&self, worker: &str) -> anyhow::Result<u64>;
    /// Whether the channel can take work, as the catalog and `/ready` report it.
    fn set_available(&self, available: bool);
    /// An absolute URL for a path on this kiln (`server.public_url`).
    fn url(&self, path: &str) -> String;
    /// Tells the dispatcher that capacity may have appeared.
    fn wake(&self);
    /// Fires when kiln shuts down.
    fn shutdown(&self) -> CancellationToken;
}

type Factory = Arc<dyn Fn(&ChannelConfig) -> anyhow::Result<Arc<dyn Provider>> + Send + Sync>;

/// Provider types by name, as `type = "…"` in a channel's configuration.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
}

impl Registry {
    /// The providers shipped in the binary.
    pub fn builtin() -> Self {
        let mut registry = Self::default();
        registry.register("relief", relief::factory);
        registry.register("worker", worker::factory);
        registry
    }

    /// Adds (or replaces) a provider type.
    pub fn register(
        &mut self,
        name: &str,
        factory: impl Fn(&ChannelConfig) -> anyhow::Result<Arc<dyn Provider>> + Send + Sync + 'static,
    ) -> &mut Self {
        self.factories.insert(name.to_owned(), Arc::new(factory));
        self
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    pub fn build(&self, channel: &ChannelConfig) -> Option<anyhow::Result<Arc<dyn Provider>>> {
        self.factories.get(&channel.provider).map(|factory| factory(channel))
    }
}
