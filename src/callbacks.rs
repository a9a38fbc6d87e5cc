//! What push workers report about the tasks dispatched to them — progress, result files,
//! the final status — authenticated, checked against the task's state and recorded once
//! (`docs/worker-protocol.md`, "Callbacks"). The HTTP faces that receive callbacks only
//! read the request and call these functions.
//!
//! A callback is trusted when it is signed with the secret of the channel its task
//! belongs to. A callback signed with another worker channel's secret is refused with
//! 403 (a known worker, the wrong task), anything else with 401.

use std::sync::Arc;

use axum::http::HeaderMap;
use chrono::Utc;
use serde_json::json;

use crate::{
    channels::Router,
    db::{Finish, Transition},
    error::{ApiError, ApiResult, Code},
    gateway::{Gateway, NewOutput, OutputBody, Recorded},
    input::{self, Upload},
    providers::worker::WorkerProvider,
    queue::Scheduler,
    tasks::{Artifact, Task, TaskId, TaskStatus},
    webhooks::{self, SigningKey, Verifier, WebhookError},
    worker_protocol::{ProgressReport, StatusReport, valid_file_name},
};

/// Ids of accepted messages are kept this long; older messages are refused as stale.
const REMEMBER_MESSAGES_SECS: i64 = 2 * webhooks::TOLERANCE_SECS;

/// Checks a callback's signature while its body arrives, against the task's channel's
/// key and, to tell a wrong channel from a forgery, every other worker channel's key.
pub struct CallbackCheck {
    own: Option<Verifier>,
    others: Vec<Verifier>,
    task_known: bool,
}

fn refused(err: WebhookError) -> ApiError {
    ApiError::with_message(Code::SignatureInvalid, format!("Refused: {err}."))
}

impl CallbackCheck {
    /// Starts checking a callback about `task` (`None` when the task is unknown; the
    /// signature is still checked first, so unknown ids are only revealed to signers).
    pub fn start(gateway: &Gateway, task: Option<&Task>, headers: &HeaderMap) -> ApiResult<Self> {
        let now = webhooks::now_secs();
        webhooks::check_fresh(headers, now).map_err(refused)?;
        // One view of the channels for the whole check, however they change meanwhile.
        let router = gateway.channels().current();
        let own_key = task.and_then(|t| channel_key(&router, &t.channel));
        let mut others = Vec::new();
        for channel in router.channels() {
            if let Some(key) = WorkerProvider::key_of(channel.provider.as_ref())
                && task.is_none_or(|t| t.channel != channel.name)
            {
                others.push(key.verifier(headers, now).map_err(refused)?);
            }
        }
        let own = own_key.map(|key| key.verifier(headers, now)).transpose().map_err(refused)?;
        Ok(Self { own, others, task_known: task.is_some() })
    }

    pub fn update(&mut self, piece: &[u8]) {
        if let Some(own) = &mut self.own {
            own.update(piece);
        }
        for other in &mut self.others {
            other.update(piece);
        }
    }

    /// The verdict. A message signed by the task's own channel passes; one signed by
    /// another worker channel is refused with 403 — unless the task is unknown, which
    /// the caller then answers with 404 (only signers learn which ids exist).
    pub async fn finish(self, gateway: &Gateway) -> ApiResult<()> {
        let id = match self.own.map(Verifier::finish) {
            Some(Ok(id)) => id,
            _ => match self.others.into_iter().find_map(|v| v.finish().ok()) {
                Some(id) if !self.task_known => id,
                Some(_) => return Err(ApiError::new(Code::WrongChannel)),
                None => return Err(refused(WebhookError::BadSignature)),
            },
        };
        let now = Utc::now();
        if !gateway.db().remember_message(&id, now).await? {
            return Err(refused(WebhookError::Replayed));
        }
        Ok(())
    }
}

fn channel_key<'a>(router: &'a Router, channel: &str) -> Option<&'a SigningKey> {
    router.channel(channel).and_then(|c| WorkerProvider::key_of(c.provider.as_ref()))
}

/// Forgets message ids too old to be accepted again anyway.
pub async fn forget_old_messages(gateway: &Gateway) {
    let cutoff = Utc::now() - chrono::Duration::seconds(REMEMBER_MESSAGES_SECS);
    if let Err(err) = gateway.db().forget_messages_before(cutoff).await {
        tracing::warn!(error = %err, "cannot forget old callback message ids");
    }
}

/// The task a callback names, if it exists.
pub async fn find_task(gateway: &Gateway, id: &str) -> ApiResult<Option<Task>> {
    match id.trim().parse::<TaskId>() {
        Ok(id) => Ok(gateway.db().get_task(id).await?),
        Err(_) => Ok(None),
    }
}

fn running(task: Option<Task>) -> ApiResult<Task> {
    let task = task.ok_or_else(|| ApiError::new(Code::TaskNotFound))?;
    if task.status != TaskStatus::Running {
        return Err(ApiError::with_message(
            Code::TaskAlreadyFinished,
            format!("The task has already ended ({}); stop working on it.", task.status.as_str()),
        ));
    }
    Ok(task)
}

/// `POST {callback_url}/progress`.
pub async fn progress(gateway: &Gateway, task: Option<Task>, report: &ProgressReport) -> ApiResult<()> {
    let task = running(task)?;
    if !report.progress.is_finite() {
        return Err(ApiError::with_message(Code::InvalidRequest, "`progress` must be a number from 0 to 100."));
    }
    let percent = report.progress.clamp(0.0, 100.0).round() as u8;
    let stage = report.stage.as_deref().map(|s| input::printable(s, 64)).filter(|s| !s.is_empty());
    gateway.record_progress(task.id, percent, stage.as_deref().unwrap_or("processing")).await
}

fn content_type_of(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if let Some(format) = crate::outputs::CATALOGUE.iter().find(|f| f.file == lower) {
        return format.content_type.to_owned();
    }
    match Artifact::extension(name).as_str() {
        "glb" => "model/gltf-binary".to_owned(),
        "gltf" => "model/gltf+json".to_owned(),
        _ => mime_guess::from_path(name).first_or_octet_stream().essence_str().to_owned(),
    }
}

/// `POST {callback_url}/result/{taskId}`: stores the file with the task's outputs and
/// sends its `result` event. `Ok(false)` when the same file was already recorded.
pub async fn result(gateway: &Gateway, task: Option<Task>, name: &str, file: Upload) -> ApiResult<(bool, Artifact)> {
    let task = running(task)?;
    if !valid_file_name(name) {
        return Err(ApiError::with_message(
            Code::InvalidRequest,
            "`name` must be 1–128 characters of A–Z a–z 0–9 . - _, not starting with a dot.",
        ));
    }
    let output = NewOutput {
        name: name.to_owned(),
        role: crate::outputs::role_of_file(name).to_owned(),
        content_type: content_type_of(name),
        metadata: json!({}),
        body: OutputBody::Spooled(file),
    };
    match gateway.record_output(&task, output).await? {
        Recorded::New(artifact) => Ok((true, artifact)),
        Recorded::Again(artifact) => Ok((false, artifact)),
        Recorded::Conflict(_) => Err(ApiError::new(Code::ResultConflict)),
        Recorded::Ended => Err(ApiError::new(Code::TaskAlreadyFinished)),
    }
}

/// `POST {callback_url}/status`: ends the task.
///
/// A 3D task's success first goes through the finishing step (preview, compressed GLB,
/// formats asked for), run by `scheduler` in the background under a lease of this
/// process: the answer is then `running`, and the task succeeds when the step is done.
/// A repeated `completed` while the step runs changes nothing; a `failed` after it is
/// refused.
pub async fn status(
    gateway: &Arc<Gateway>,
    scheduler: &Arc<Scheduler>,
    task: Option<Task>,
    report: &StatusReport,
) -> ApiResult<TaskStatus> {
    let task = task.ok_or_else(|| ApiError::new(Code::TaskNotFound))?;
    let finish = match report.status.as_str() {
        "completed" => {
            if task.status == TaskStatus::Succeeded {
                return Ok(task.status);
            }
            let outputs = gateway.db().list_artifacts(task.id).await?;
            let role = task.kind.main_role();
            if outputs.iter().any(|a| a.role == role) {
                let mut metadata = json!({ "files": outputs.len() });
                // What the worker says about its result (the settings it really used).
                if let Some(worker) = &report.metadata {
                    metadata["worker"] = serde_json::Value::Object(worker.clone());
                }
                if role == "model" && task.status == TaskStatus::Running {
                    // kiln makes the model's own files before the task succeeds; the
                    // worker hears `running` and goes on with its next job.
                    let id = task.id;
                    if scheduler.finish_detached(task, metadata).await? {
                        return Ok(TaskStatus::Running);
                    }
                    // Another process finishes it already, or it ended meanwhile.
                    return Ok(gateway.db().get_task(id).await?.map_or(TaskStatus::Running, |t| t.status));
                }
                Finish::Succeeded { metadata }
            } else {
                Finish::Failed {
                    code: format!("worker_no_{role}"),
                    message: format!("The worker reported success but sent no {role} file."),
                }
            }
        }
        "failed" => {
            if task.status == TaskStatus::Failed && task.error_code.as_deref() == Some("worker_failed") {
                return Ok(task.status);
            }
            // The worker said `completed` before: its model stands, and kiln is making
            // the task's files from it.
            if task.finishing_at.is_some() {
                return Err(ApiError::with_message(
                    Code::TaskAlreadyFinished,
                    "The task was reported completed already; stop working on it.",
                ));
            }
            let message = report
                .error
                .as_deref()
                .map(|e| input::printable(e, 1000))
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "The worker failed.".to_owned());
            Finish::Failed { code: "worker_failed".into(), message }
        }
        other => {
            return Err(ApiError::with_message(
                Code::InvalidRequest,
                format!("`status` must be `completed` or `failed`, not `{other}`."),
            ));
        }
    };
    let task = running(Some(task))?;
    match gateway.finish(task.id, finish).await? {
        Transition::Done(task, _) => Ok(task.status),
        Transition::Refused(task) => Err(ApiError::with_message(
            Code::TaskAlreadyFinished,
            format!("The task has already ended ({}); stop working on it.", task.status.as_str()),
        )),
        Transition::NotFound => Err(ApiError::new(Code::TaskNotFound)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_get_types_from_their_names() {
        assert_eq!(content_type_of("model.glb"), "model/gltf-binary");
        assert_eq!(content_type_of("output3d.zip"), "application/zip");
        assert_eq!(content_type_of("pixel_images.png"), "image/png");
        assert_eq!(content_type_of("model.usdz"), "model/vnd.usdz+zip");
        assert_eq!(content_type_of("notes"), "application/octet-stream");
    }
}
