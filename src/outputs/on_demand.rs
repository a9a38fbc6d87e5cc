//! `GET /api/v1/tasks/{id}/result?format=`: a finished 3D task's model in another format,
//! made once on first request, stored as one more output of the task, then served as the
//! stored file.
//!
//! Made once, twice over:
//! - in this process, requests for the same conversion arriving together share one
//!   *flight*: the first starts it as a task of its own (it goes on if that client
//!   leaves), later ones wait for the same outcome, each at most `convert.wait`, then get
//!   202 and ask again;
//! - across the processes sharing the database, a flight first takes the conversion's
//!   lease (`ConversionRepo`); a flight that finds it held waits for the file, and takes
//!   over when the holder's lease lapses.
//!
//! A failure that converting again cannot change (an unreadable model, one over a
//! ceiling) is recorded with the lease, for the model it was made from, so asking again
//! answers at once, in every process and after a restart.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Converter, Failure, FormatId};
use crate::{
    access::Caller,
    db::{ConversionClaim, ConversionEnd},
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

/// The conversions of this process: its ceilings and the flights under way.
pub struct Conversions {
    converter: Converter,
    flights: Mutex<HashMap<Key, watch::Receiver<Option<Outcome>>>>,
    /// Fires at shutdown: flights stop their conversions.
    stop: CancellationToken,
}

/// How often a flight that found the conversion held looks for its file.
const HELD_POLL: std::time::Duration = std::time::Duration::from_millis(500);

impl Conversions {
    pub fn new(config: crate::config::ConvertConfig, metrics: Arc<Metrics>) -> Self {
        Self { converter: Converter::new(config, metrics), flights: Mutex::default(), stop: CancellationToken::new() }
    }

    /// Stops every conversion under way (shutdown); their waiters get `shutting_down`.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub(super) fn converter(&self) -> &Converter {
        &self.converter
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

const ENDED: &str = "The task's outputs are gone.";

impl Failure {
    /// The task ended (was canceled, or its outputs deleted) while the file was made.
    pub(super) fn ended() -> Self {
        Failure { code: Code::NoModel, message: ENDED.to_owned(), permanent: false }
    }

    pub(super) fn is_ended(&self) -> bool {
        self.code == Code::NoModel && self.message == ENDED
    }

    pub(super) fn poisoned() -> Self {
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
    if !wanted.on_request() {
        let why = match wanted.maker {
            super::Maker::Budget => "it is made when the task finishes if `params.max_triangles` asks for it",
            _ => "only the provider can make it, and this one did not",
        };
        return Err(ApiError::with_message(
            Code::FormatNotApplicable,
            format!("This task has no `{}` file: {why}.", wanted.name),
        ));
    }
    let conversions = gateway.conversions();
    let key = (task.id, format);
    let mut flight = conversions
        .join(key, |sender| {
            let gateway = Arc::clone(gateway);
            tokio::spawn(async move {
                let conversions = gateway.conversions();
                let _landing = Landing(conversions, key);
                let making = Making::later(format, conversions);
                let outcome = fly(&gateway, &task, &model, &making).await;
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

/// The conversions of a task the caller may see that are under way, made, or failed for
/// good, by format.
pub async fn states(gateway: &Gateway, task: &Task) -> ApiResult<Vec<(String, ConversionClaim)>> {
    Ok(gateway.db().list_conversions(task.id).await?)
}

fn ready(artifact: Artifact) -> ApiResult<Answer> {
    if artifact.expired_at.is_some() {
        return Err(ApiError::new(Code::ArtifactExpired));
    }
    Ok(Answer::Ready(Box::new(artifact)))
}

/// One file to make from a task's model, and how.
pub(super) struct Making {
    pub format: FormatId,
    /// The level of detail's triangles.
    pub budget: Option<u64>,
    /// The model's bytes, when the caller has read them already.
    pub glb: Option<bytes::Bytes>,
    /// Made while the task still runs (finishing): recorded with its `result` event.
    /// Otherwise the task has ended and its log with it.
    pub running: bool,
    /// Stops the conversion: the process's shutdown for a request; for a run's finishing
    /// step, the end of the grace its run is given at shutdown.
    pub stop: CancellationToken,
}

impl Making {
    fn later(format: FormatId, conversions: &Conversions) -> Self {
        Making { format, budget: None, glb: None, running: false, stop: conversions.stop.clone() }
    }
}

/// One flight: takes the conversion's lease (or waits for whoever has it), converts,
/// stores the file as an output of the task, and records how it ended.
pub(super) async fn fly(gateway: &Gateway, task: &Task, model: &Artifact, making: &Making) -> Outcome {
    let format = making.format;
    let wanted = format.format();
    let db = gateway.db();
    let lease = gateway.config().tasks.lease;
    let holder = gateway.instance();
    loop {
        // A flight that started just after another landed finds its file.
        if let Some(made) = db.find_artifact(task.id, wanted.file).await.map_err(stored_failure)? {
            return Ok(made);
        }
        match db.begin_conversion(task.id, format.as_str(), &model.sha256, holder, lease).await {
            Ok(ConversionClaim::Taken) => break,
            Ok(ConversionClaim::Failed { code, message }) => {
                let code = Code::ALL.iter().copied().find(|c| c.as_str() == code).unwrap_or(Code::ConversionFailed);
                return Err(Failure { code, message, permanent: true });
            }
            // Made meanwhile: the file was recorded before the conversion was marked done.
            Ok(ConversionClaim::Done) => {
                return db
                    .find_artifact(task.id, wanted.file)
                    .await
                    .map_err(stored_failure)?
                    .ok_or_else(Failure::poisoned);
            }
            // Another process is making it: its file appears soon, or its lease lapses.
            Ok(ConversionClaim::Held) => {}
            Err(err) => return Err(stored_failure(err)),
        }
        tokio::select! {
            _ = tokio::time::sleep(HELD_POLL) => {}
            _ = making.stop.cancelled() => {
                return Err(Failure {
                    code: Code::ShuttingDown,
                    message: Code::ShuttingDown.default_message().to_owned(),
                    permanent: false,
                });
            }
        }
    }
    // The lease is renewed while the conversion runs, and given up however it ends.
    let renewing = CancellationToken::new();
    let _stop_renewing = renewing.clone().drop_guard();
    tokio::spawn({
        let (db, holder, renewing) = (db.clone(), holder.to_owned(), renewing.clone());
        let (id, name) = (task.id, format.as_str());
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(lease / 3) => {}
                    _ = renewing.cancelled() => return,
                }
                match db.renew_conversion(id, name, &holder, lease).await {
                    Ok(true) => {}
                    // Taken over after a lapse: the other holder's file or this one's,
                    // whichever is recorded first, is kept (each has a fixed name).
                    Ok(false) => {
                        tracing::warn!(task_id = %id, format = name, "lost the lease of a conversion");
                        return;
                    }
                    // One failed renewal is not a lost lease: the next try may hold it.
                    Err(err) => {
                        tracing::warn!(task_id = %id, format = name, error = %err, "cannot renew a conversion's lease")
                    }
                }
            }
        }
    });
    let outcome = convert(gateway, task, model, making).await;
    let end = match &outcome {
        Ok(_) => ConversionEnd::Done,
        Err(failure) => {
            tracing::warn!(task_id = %task.id, format = format.as_str(), code = failure.code.as_str(),
                message = %failure.message, "conversion failed");
            ConversionEnd::Failed {
                code: failure.code.as_str(),
                message: &failure.message,
                permanent: failure.permanent,
            }
        }
    };
    if let Err(err) = db.end_conversion(task.id, format.as_str(), holder, end).await {
        // The lease lapses by itself; the outcome stands.
        tracing::warn!(task_id = %task.id, error = %err, "cannot record how a conversion ended");
    }
    outcome
}

fn stored_failure(err: crate::db::DbError) -> Failure {
    tracing::warn!(error = %err, "the database failed during a conversion");
    Failure::poisoned()
}

/// Reads the model, converts it and stores the file, holding the conversion's lease.
async fn convert(gateway: &Gateway, task: &Task, model: &Artifact, making: &Making) -> Outcome {
    let format = making.format;
    let conversions = gateway.conversions();
    let wanted = format.format();
    let _admission = conversions.converter.admit(format)?;
    let glb = match &making.glb {
        Some(glb) => Ok(glb.clone()),
        None => gateway.read_file(&model.key).await,
    };
    let glb = glb.map_err(|err| {
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
    let derived = conversions.converter.derive(glb, format, making.budget, gateway.spool_dir(), &making.stop).await?;
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
    let recorded = if making.running {
        gateway.record_output(task, output).await
    } else {
        gateway.record_derived(task, output).await
    };
    let recorded = recorded.map_err(|err| {
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
        Recorded::Ended => Err(Failure::ended()),
    }
}
