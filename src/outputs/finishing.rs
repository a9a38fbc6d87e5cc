//! The step between a 3D provider's success and the task's `succeeded`: kiln makes the
//! task's own outputs from its model — the preview picture, the compressed GLB the web
//! page loads, a core GLB when the model needs extensions, the level of detail
//! `params.max_triangles` asks for, then the formats `params.formats` names — each stored
//! with its `result` event while the task still runs, so that the event log (which ends
//! at the terminal event) and seed 004's stream carry them before `completed`.
//!
//! An output that cannot be made never fails the task: it is listed in the task's
//! metadata (`outputs.failed`) and its conversion is recorded as failed, so `?format=`
//! answers the same error at once. A stop (shutdown, the task canceled) leaves the step
//! undone: the task keeps `finishing_at`, and the run that claims it next does this step
//! only, skipping the files already stored (each has a fixed name).

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    Asked, Failure, FormatId,
    on_demand::{Making, fly},
};
use crate::{
    error::Code,
    gateway::Gateway,
    tasks::{Artifact, Task},
};

/// How the step ended.
#[derive(Debug)]
pub enum Finished {
    /// Every planned output was made or has failed: the task succeeds with this metadata.
    Done(Value),
    /// Stopped before the end (shutdown, the task ended meanwhile): the task is not to be
    /// marked now; the next claim of it does this step again.
    Interrupted,
}

/// How long a busy converter is waited for, a second at a time, before the output is
/// given up as failed.
const BUSY_RETRIES: u32 = 120;

/// Makes the task's outputs from its model and returns the task's metadata, `metadata`
/// (the provider's) with `outputs: {made, failed}` added. `stop` interrupts it.
pub async fn finish_outputs(gateway: &Gateway, task: &Task, metadata: Value, stop: &CancellationToken) -> Finished {
    if task.kind.main_role() != "model" {
        return Finished::Done(metadata);
    }
    // Checked when the task was submitted; a record from before this key existed reads
    // as asking for nothing.
    let asked = Asked::from_params(task.kind, &task.params).unwrap_or_default();
    let on_finish = gateway.config().convert.on_finish;
    if !on_finish && asked.formats.is_empty() && asked.max_triangles.is_none() {
        return Finished::Done(metadata);
    }
    let artifacts = match gateway.db().list_artifacts(task.id).await {
        Ok(artifacts) => artifacts,
        Err(err) => {
            tracing::warn!(task_id = %task.id, error = %err, "cannot list outputs to finish a task");
            return Finished::Interrupted;
        }
    };
    // No single GLB model: the success check that follows says what is missing.
    let Some(model) = the_model(&artifacts) else { return Finished::Done(metadata) };
    let glb = match gateway.read_file(&model.key).await {
        Ok(glb) => glb,
        Err(err) => {
            tracing::warn!(task_id = %task.id, error = %err.message, "cannot read the model to finish a task");
            return Finished::Interrupted;
        }
    };
    let converter = gateway.conversions().converter();
    let estimate = {
        let (glb, limits) = (glb.clone(), converter.limits());
        tokio::task::spawn_blocking(move || formats::estimate(&glb, &limits)).await.ok().and_then(Result::ok)
    };
    let mut plan: Vec<FormatId> = Vec::new();
    if on_finish {
        // A worker's own preview (rendered by its engine) is kept.
        if !artifacts.iter().any(|a| a.role == "preview") {
            plan.push(FormatId::Preview);
        }
        plan.push(FormatId::GlbMeshopt);
        if estimate.is_some_and(|e| e.needs_extensions) {
            plan.push(FormatId::GlbCore);
        }
    }
    // A provider that took the budget itself (relief) made a model within it already.
    let budget = asked.max_triangles.filter(|budget| estimate.is_none_or(|e| e.triangles > *budget));
    if budget.is_some() {
        plan.push(FormatId::Lod);
    }
    for format in &asked.formats {
        if !plan.contains(format) {
            plan.push(*format);
        }
    }
    // Made by an earlier run of this step that was interrupted: listed, not made again.
    let mut made: Vec<String> = Vec::new();
    plan.retain(|format| {
        let file = format.format().file;
        let stored = artifacts.iter().any(|a| a.name == file);
        if stored {
            made.push(file.to_owned());
        }
        !stored
    });

    if !plan.is_empty()
        && let Err(err) = gateway.record_progress(task.id, 95, "finishing").await
    {
        tracing::warn!(task_id = %task.id, error = %err.message, "cannot record progress");
    }
    let mut failed = Vec::new();
    for format in plan {
        let making = Making { format, budget, glb: Some(glb.clone()), running: true, stop: stop.clone() };
        match make(gateway, task, &model, &making).await {
            Ok(artifact) => made.push(artifact.name),
            Err(failure) if stopped(&making, &failure) => return Finished::Interrupted,
            Err(failure) => failed.push(json!({
                "format": format.as_str(),
                "code": failure.code.as_str(),
                "message": failure.message,
            })),
        }
    }
    let mut metadata = match metadata {
        Value::Object(object) => object,
        Value::Null => serde_json::Map::new(),
        other => serde_json::Map::from_iter([("provider".to_owned(), other)]),
    };
    metadata.insert("outputs".into(), json!({ "made": made, "failed": failed }));
    Finished::Done(Value::Object(metadata))
}

/// The task's one GLB model, the file every output is made from.
fn the_model(artifacts: &[Artifact]) -> Option<Artifact> {
    let mut models = artifacts.iter().filter(|a| a.role == "model" && a.expired_at.is_none());
    match (models.next(), models.next()) {
        (Some(model), None) if model.content_type == "model/gltf-binary" => Some(model.clone()),
        _ => None,
    }
}

/// One output, waiting (a second at a time, for a while) when the converter is busy with
/// other tasks rather than giving the output up.
async fn make(gateway: &Gateway, task: &Task, model: &Artifact, making: &Making) -> Result<Artifact, Failure> {
    let mut tries = 0;
    loop {
        match fly(gateway, task, model, making).await {
            Err(failure) if failure.code == Code::ConverterBusy && tries < BUSY_RETRIES => {
                tries += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = making.stop.cancelled() => return Err(failure),
                }
            }
            outcome => return outcome,
        }
    }
}

/// The failure means the step must stop, not that this output cannot be made.
fn stopped(making: &Making, failure: &Failure) -> bool {
    making.stop.is_cancelled() || failure.code == Code::ShuttingDown || failure.is_ended()
}
