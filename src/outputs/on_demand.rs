//! `GET /api/v1/tasks/{id}/result?format=`: a finished 3D task's model in another format,
//! made once on first request, stored as one more output of the task, then served as the
//! stored file.
//!
//! Requests for the same conversion arriving together share one *flight*: the first
//! starts it as a task of its own (it goes on if that client leaves), later ones wait
//! for the same outcome, each at most `convert.wait`, then get 202 and ask again. A
//! failure that converting again cannot change (an unreadable model, one over a ceiling)
//! is remembered for the model it was made from, so asking again answers at once.
//!
//! Coalescing is per process: two replicas sharing a PostgreSQL database may each make
//! the same file once; the artifacts' unique `(task_id, name)` keeps one record and the
//! other replica's copy is deleted again. A cross-replica lease (design §2.6) is not here
//! yet.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Converter, Failure, FormatId};
use crate::{
    access::Caller,
    error::{ApiError, ApiResult, Code},
    gateway::{Gateway, NewOutput, OutputBody, Recorded},
    metrics::Metrics,
    tasks::{Artifact, Task, TaskId, TaskStatus},
};

/// What `?format=` answers.
#[derive(Debug)]
pub enum Answer {
    /// The stored file.
    Ready(Box<Artifact>),
    /// Still being made after `convert.wait`.
    Pending,
}

/// A flight's outcome, shared by its waiters.
type Outcome = Result<Artifact, Failure>;

type Key = (TaskId, FormatId);

/// The conversions of this process: its ceilings, the flights under way, and the
/// failures remembered.
pub struct Conversions {
    converter: Converter,
    flights: Mutex<HashMap<Key, watch::Receiver<Option<Outcome>>>>,
    /// Permanent failures, with the SHA-256 of the model they were made from.
    failures: Mutex<HashMap<Key, (String, Failure)>>,
    /// Fires at shutdown: flights stop their conversions.
    stop: CancellationToken,
}

impl Conversions {
    pub fn new(config: crate::config::ConvertConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            converter: Converter::new(config, metrics),
            flights: Mutex::default(),
            failures: Mutex::default(),
            stop: CancellationToken::new(),
        }
    }

    /// Stops every conversion under way (shutdown); their waiters get `shutting_down`.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    fn remembered(&self, key: Key, source_sha256: &str) -> Option<Failure> {
        let failures = self.failures.lock().ok()?;
        failures.get(&key).filter(|(sha, _)| sha == source_sha256).map(|(_, failure)| failure.clone())
    }

    fn remember(&self, key: Key, source_sha256: &str, failure: &Failure) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.insert(key, (source_sha256.to_owned(), failure.clone()));
        }
    }

    /// The flight for `key`: the one under way, or a new one started with `start`.
    fn join(
        &self,
        key: Key,
        start: impl FnOnce(watch::Sender<Option<Outcome>>),
    ) -> Result<watch::Receiver<Option<Outcome>>, Failure> {
        let mut flights = self.flights.lock().map_err(|_| Failure::poisoned())?;
        if let Some(flight) = flights.get(&key) {
            return Ok(flight.clone());
        }
        let (sender, receiver) = watch::channel(None);
        flights.insert(key, receiver.clone());
        drop(flights);
        start(sender);
        Ok(receiver)
    }

    fn land(&self, key: Key) {
        if let Ok(mut flights) = self.flights.lock() {
            flights.remove(&key);
        }
    }
}

impl Failure {
    fn poisoned() -> Self {
        Failure { code: Code::Internal, message: Code::Internal.default_message().to_owned(), permanent: false }
    }
}

/// Removes a flight from the table when it ends, however it ends (a panic included), so
/// the next request starts afresh.
struct Landing<'a>(&'a Conversions, Key);

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.0.land(self.1);
    }
}

/// Answers `?format=` for a task the caller may see.
pub async fn request(gateway: &Arc<Gateway>, caller: &Caller, id: TaskId, format: FormatId) -> ApiResult<Answer> {
    let task = gateway.task(caller, id).await?;
    if task.kind.main_role() != "model" {
        return Err(ApiError::with_message(
            Code::FormatNotApplicable,
            format!("This task makes a picture ({}); only 3D results convert into other formats.", task.kind.as_str()),
        ));
    }
    match task.status {
        TaskStatus::Succeeded => {}
        TaskStatus::Queued | TaskStatus::Running => {
            return Err(ApiError::with_message(
                Code::TaskNotFinished,
                format!("The task is {}; its model is not ready yet.", task.status.as_str()),
            ));
        }
        TaskStatus::Failed | TaskStatus::Canceled => {
            return Err(ApiError::with_message(
                Code::NoModel,
                format!("The task {}; it has no model to convert.", task.status.as_str()),
            ));
        }
    }
    let artifacts = gateway.artifacts(&task).await?;
    let wanted = format.format();
    if let Some(made) = artifacts.iter().find(|a| a.name == wanted.file) {
        return ready(made.clone());
    }
    let mut models = artifacts.iter().filter(|a| a.role == "model");
    let model = match (models.next(), models.next()) {
        (Some(model), None) => model.clone(),
        _ => return Err(ApiError::with_message(Code::NoModel, "The task has no single model output to convert.")),
    };
    if model.expired_at.is_some() {
        return Err(ApiError::new(Code::ArtifactExpired));
    }
    if format == FormatId::Glb {
        // A provider's GLB under another name (the name is the provider's choice).
        return Ok(Answer::Ready(Box::new(model)));
    }
    let conversions = gateway.conversions();
    let key = (task.id, format);
    if let Some(failure) = conversions.remembered(key, &model.sha256) {
        return Err(failure.to_api());
    }
    let mut flight = conversions
        .join(key, |sender| {
            let gateway = Arc::clone(gateway);
            tokio::spawn(async move {
                let conversions = gateway.conversions();
                let _landing = Landing(conversions, key);
                let outcome = fly(&gateway, &task, &model, format).await;
                if let Err(failure) = &outcome {
                    if failure.permanent {
                        conversions.remember(key, &model.sha256, failure);
                    }
                    tracing::warn!(task_id = %task.id, format = format.as_str(), code = failure.code.as_str(),
                        message = %failure.message, "conversion failed");
                }
                sender.send_replace(Some(outcome));
            });
        })
        .map_err(|failure| failure.to_api())?;
    let wait = conversions.converter.config().wait;
    let landed = tokio::time::timeout(wait, flight.wait_for(Option::is_some)).await;
    let outcome = match landed {
        Err(_) => return Ok(Answer::Pending),
        Ok(Ok(outcome)) => outcome.clone(),
        // The flight ended without an outcome: it panicked (and said so in the log).
        Ok(Err(_)) => None,
    };
    match outcome {
        Some(Ok(artifact)) => ready(artifact),
        Some(Err(failure)) => Err(failure.to_api()),
        None => Err(ApiError::with_message(Code::Internal, "The conversion failed unexpectedly.")),
    }
}

fn ready(artifact: Artifact) -> ApiResult<Answer> {
    if artifact.expired_at.is_some() {
        return Err(ApiError::new(Code::ArtifactExpired));
    }
    Ok(Answer::Ready(Box::new(artifact)))
}

/// One flight: reads the model, converts it, stores the file as an output of the task.
async fn fly(gateway: &Gateway, task: &Task, model: &Artifact, format: FormatId) -> Outcome {
    let conversions = gateway.conversions();
    let wanted = format.format();
    // A flight that started just after another landed finds its file.
    if let Ok(Some(made)) = gateway.db().find_artifact(task.id, wanted.file).await {
        return Ok(made);
    }
    let _admission = conversions.converter.admit(format)?;
    let glb = gateway.read_file(&model.key).await.map_err(|err| {
        tracing::warn!(task_id = %task.id, error = %err, "cannot read the model to convert");
        match err.code {
            Code::FileNotFound => Failure {
                code: Code::ArtifactExpired,
                message: Code::ArtifactExpired.default_message().to_owned(),
                permanent: false,
            },
            _ => Failure::poisoned(),
        }
    })?;
    let started = std::time::Instant::now();
    let derived = conversions.converter.derive(glb, format, gateway.spool_dir(), &conversions.stop).await?;
    let mut metadata = derived.metadata;
    metadata["source"] = model.name.clone().into();
    metadata["source_sha256"] = model.sha256.clone().into();
    let size = derived.upload.len;
    let output = NewOutput {
        name: wanted.file.to_owned(),
        role: wanted.role.to_owned(),
        content_type: wanted.content_type.to_owned(),
        metadata,
        body: OutputBody::Spooled(derived.upload),
    };
    let recorded = gateway.record_derived(task, output).await.map_err(|err| {
        tracing::warn!(task_id = %task.id, error = %err, "cannot store a converted file");
        Failure::poisoned()
    })?;
    match recorded {
        Recorded::New(artifact) => {
            tracing::info!(task_id = %task.id, format = format.as_str(), size, ms = started.elapsed().as_millis() as u64,
                triangles = artifact.metadata["triangles"].as_u64(), "converted");
            Ok(artifact)
        }
        // Another process made it first; its file stays.
        Recorded::Again(artifact) | Recorded::Conflict(artifact) => Ok(artifact),
        Recorded::Ended => {
            Err(Failure { code: Code::NoModel, message: "The task's outputs are gone.".to_owned(), permanent: false })
        }
    }
}
