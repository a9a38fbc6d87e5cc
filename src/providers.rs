//! The provider trait: the adaptor behind a channel type. A provider receives a job,
//! reports progress and outputs through its [`JobContext`], and returns how the job
//! ended. Each provider lives in its own module and is added to [`Registry::builtin`]
//! with one line; nothing else in kiln changes to add one.
//!
//! Four shapes fit the one trait: in-process engines (`relief`: run and report), push
//! workers (`worker`: dispatch, then signed callbacks end the task), and submit-and-poll
//! or synchronous cloud APIs, which implement the smaller [`remote::RemoteApi`] and get
//! durable submission, batched polling and downloads from [`remote`].

pub mod form;
pub mod modelscope;
pub mod openai_images;
pub mod relief;
pub mod remote;
pub mod tripo;
pub mod worker;

use std::{any::Any, collections::BTreeMap, path::PathBuf, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{
    config::ChannelConfig,
    input::{SpoolError, Spooler, Upload},
    tasks::{TaskId, TaskKind},
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
    /// What an earlier run of this task submitted upstream, if anything.
    pub upstream: Upstream,
    /// The client's own provider key for this task, when it brought one.
    pub client_key: Option<crate::config::Secret>,
}

/// What an earlier run of a task left upstream. A remote provider resumes a submitted
/// job instead of creating (and paying for) another.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Upstream {
    /// Nothing was sent.
    #[default]
    None,
    /// A submission was sent and its answer never recorded: the upstream may hold a
    /// job kiln cannot name.
    Unknown,
    /// The upstream took the job under this id, placed as recorded (for cloud APIs, the
    /// fingerprint of the key that created it).
    Submitted { id: String, placement: Option<String> },
}

impl Upstream {
    /// From a task's record.
    pub fn of(task: &crate::tasks::Task) -> Self {
        match (&task.provider_job_id, task.submitting_at) {
            (Some(id), _) => Upstream::Submitted { id: id.clone(), placement: task.placement.clone() },
            (None, Some(_)) => Upstream::Unknown,
            (None, None) => Upstream::None,
        }
    }
}

/// A file a provider produced, spooled to a temporary file as it was made or
/// downloaded: outputs stream to storage and are never held whole in memory.
#[derive(Debug)]
pub struct Output {
    /// File name, e.g. `model.glb`: letters, digits, `.`, `-`, `_` only.
    pub name: String,
    /// `model`, `preview`, `archive`, `image` …
    pub role: String,
    pub content_type: String,
    pub file: Upload,
    pub metadata: Value,
}

/// Where a running job reports to. Implemented by the scheduler (and by `kiln worker`,
/// which turns reports into callbacks).
#[async_trait]
pub trait JobSink: Send + Sync {
    async fn progress(&self, progress: u8, stage: &str) -> anyhow::Result<()>;
    async fn output(&self, output: Output) -> anyhow::Result<()>;
    /// A submission to the upstream is about to be sent (`true`), or provably was not
    /// taken (`false`).
    async fn submitting(&self, in_flight: bool) -> anyhow::Result<()>;
    /// The upstream took the job: its id and where it was placed.
    async fn submitted(&self, job_id: &str, placement: Option<&str>) -> anyhow::Result<()>;
    /// Where the job was placed (a push worker's base URL), before it is sent there.
    async fn place(&self, placement: &str) -> anyhow::Result<()>;
}

/// A running job's link to kiln.
#[derive(Clone)]
pub struct JobContext {
    sink: Arc<dyn JobSink>,
    cancel: CancellationToken,
    spool_dir: PathBuf,
}

impl JobContext {
    pub fn new(sink: Arc<dyn JobSink>, cancel: CancellationToken, spool_dir: PathBuf) -> Self {
        Self { sink, cancel, spool_dir }
    }

    /// A temporary file on the data disk to write an output into, refusing more than
    /// `max_bytes`.
    pub async fn spooler(&self, max_bytes: u64) -> Result<Spooler, SpoolError> {
        Spooler::new(&self.spool_dir, max_bytes).await
    }

    /// Spools an output made in memory (an in-process engine's model, a decoded
    /// base64 image) so it is stored like any other.
    pub async fn spool_bytes(&self, bytes: &[u8]) -> Result<Upload, SpoolError> {
        let mut spool = self.spooler(bytes.len() as u64).await?;
        spool.write(bytes).await?;
        spool.finish().await
    }

    /// Reports progress (0–100) and the current stage's name.
    pub async fn progress(&self, progress: u8, stage: &str) -> anyhow::Result<()> {
        self.sink.progress(progress, stage).await
    }

    /// Stores an output; its `result` event goes out at once.
    pub async fn output(&self, output: Output) -> anyhow::Result<()> {
        self.sink.output(output).await
    }

    /// Records that a submission is about to be sent (`true`): if kiln dies before
    /// [`JobContext::submitted`], the next run sees [`Upstream::Unknown`] and does not
    /// submit again. `false` clears it when the upstream provably did not take it.
    pub async fn submitting(&self, in_flight: bool) -> anyhow::Result<()> {
        self.sink.submitting(in_flight).await
    }

    /// Records the upstream's id for the job (and the key fingerprint that can read
    /// it) with a `processing` event, before polling starts.
    pub async fn submitted(&self, job_id: &str, placement: Option<&str>) -> anyhow::Result<()> {
        self.sink.submitted(job_id, placement).await
    }

    /// Records the push worker the job is dispatched to, so it can be dispatched again
    /// if that worker is lost, and so work is spread over the least busy workers.
    pub async fn place(&self, placement: &str) -> anyhow::Result<()> {
        self.sink.place(placement).await
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

/// The adaptor behind a channel type. `Any` lets a face that serves one provider type
/// (the worker callbacks) reach its own provider's parts without widening this trait.
#[async_trait]
pub trait Provider: Any + Send + Sync {
    /// One line for the catalog: what this provider is.
    fn describe(&self) -> String;

    /// Checks a task's parameters when it is submitted, so bad ones are refused before
    /// the task is queued. The message is shown to the client.
    fn check_params(&self, _kind: TaskKind, _params: &Value) -> Result<(), String> {
        Ok(())
    }

    /// Whether this provider takes one of kiln's own output parameters itself
    /// (`max_triangles`): then it sees that key, and kiln does not make the output.
    fn takes_output_param(&self, _name: &str) -> bool {
        false
    }

    /// Runs one job.
    async fn run(&self, job: Job, ctx: JobContext) -> Result<Outcome, ProviderError>;

    /// Whether a client's own provider key has this provider's format (for channels with
    /// `client_keys = true`).
    fn check_client_key(&self, _key: &str) -> Result<(), String> {
        Err("This provider does not take a client's own key.".into())
    }

    /// Whether jobs leave this machine for a cloud API (the catalog says so).
    fn is_cloud(&self) -> bool {
        false
    }

    /// Whether the provider can take work now; the message says why not.
    async fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Makes a real, cheap call to the upstream (a cloud account's balance, a model
    /// list, a worker's `/health`) for the admin console's "test connection", and says
    /// in one short line what came back, or why it failed. Never reveals a key.
    async fn test_connection(&self) -> Result<String, String> {
        self.health().await.map(|()| "The provider is ready.".to_owned())
    }

    /// Starts the provider's own background work for its channel (health probes, say),
    /// once, when the scheduler starts the channel. It must end when `runtime.shutdown()`
    /// fires.
    fn start(&self, _runtime: Arc<dyn ChannelRuntime>) {}

    /// Whether a job could start now. While false, the channel's dispatcher leaves its
    /// tasks queued (a push provider with no free worker, say).
    fn can_start(&self) -> bool {
        true
    }
}

/// What a provider's background work may ask of kiln about its own channel.
#[async_trait]
pub trait ChannelRuntime: Send + Sync {
    /// Running tasks of the channel per placement (push worker, API key).
    async fn placement_loads(&self) -> anyhow::Result<Vec<(String, u32)>>;
    /// Makes the tasks placed on a lost push worker claimable again, so they are
    /// dispatched anew; returns how many.
    async fn release_placement(&self, placement: &str) -> anyhow::Result<u64>;
    /// Whether the channel can take work, as the catalog and `/ready` report it.
    fn set_available(&self, available: bool);
    /// An absolute URL for a path on this kiln (`server.public_url`).
    fn url(&self, path: &str) -> String;
    /// Tells the circuit breaker how a submission went: `true` taken, `false` provably
    /// not taken (refused, unreachable, 429 or 5xx before acceptance).
    fn submission(&self, taken: bool);
    /// Tells the dispatcher that capacity may have appeared.
    fn wake(&self);
    /// Fires when kiln shuts down, or when the channel was removed or replaced and the
    /// jobs it was running here have ended.
    fn shutdown(&self) -> CancellationToken;
}

type Factory = Arc<dyn Fn(&ChannelConfig) -> anyhow::Result<Arc<dyn Provider>> + Send + Sync>;

/// Provider types by name, as `type = "…"` in a channel's configuration, with the
/// description of each one's settings for the admin console's form.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
    forms: BTreeMap<String, form::ProviderForm>,
}

impl Registry {
    /// The providers shipped in the binary.
    pub fn builtin() -> Self {
        let mut registry = Self::default();
        registry.register("modelscope", modelscope::factory).describe(modelscope::form());
        registry.register("openai_images", openai_images::factory).describe(openai_images::form());
        registry.register("relief", relief::factory).describe(relief::form());
        registry.register("tripo", tripo::factory).describe(tripo::form());
        registry.register("worker", worker::factory).describe(worker::form());
        registry
    }

    /// Adds (or replaces) the form of the provider type it names.
    pub fn describe(&mut self, form: form::ProviderForm) -> &mut Self {
        self.forms.insert(form.provider.clone(), form);
        self
    }

    /// The form of each registered type that has one, by type name.
    pub fn forms(&self) -> impl Iterator<Item = &form::ProviderForm> {
        self.forms.values().filter(|f| self.factories.contains_key(&f.provider))
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
