//! `modelscope`: ModelScope API-Inference's asynchronous image generation
//! (`docs/providers/modelscope.md`).
//!
//! A `text_to_image` job is created with `POST /v1/images/generations` under
//! `X-ModelScope-Async-Mode: true` (ModelScope no longer answers image requests
//! synchronously) and read one at a time with `GET /v1/tasks/{id}` under
//! `X-ModelScope-Task-Type: image_generation`. Answers are flat JSON: `task_status`
//! `PENDING` → `RUNNING` → `SUCCEED` | `FAILED`, the images as URL strings in
//! `output_images`, a failure under `errors.message`, and the trace id as `request_id`
//! at the top level or inside `errors` (`../shared/reference/provider-apis.md` §2).
//!
//! The parameters ModelScope documents are checked before a task is queued — `loras`
//! above all, one repository id or a map of at most six ids to weights summing to 1 —
//! and anything else the client sends is passed through unchanged.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Job, Provider, ProviderError,
    form::{Field, FieldType, ProviderForm, SecretField},
    remote::{
        Call, Check, Failure, Finished, JobState, RemoteApi, RemoteFile, RemoteOptions, RemoteProvider, Source,
        Submission,
        http::{Answer, Retry},
    },
};
use crate::{config::ChannelConfig, tasks::TaskKind};

const BASE: &str = "https://api-inference.modelscope.cn";
/// Prompts and negative prompts must be shorter than this, in characters.
const MAX_PROMPT: usize = 2000;
/// The widest range of `size` any model takes; each model's own is narrower.
const SIDE: (u32, u32) = (64, 2048);
/// LoRAs one request may combine.
const MAX_LORAS: usize = 6;
/// How far the LoRA weights' sum may stray from 1.
const WEIGHT_SUM_TOLERANCE: f64 = 1e-6;
/// Trace-id headers an answer may carry (not confirmed for ModelScope, so the body's
/// `request_id` comes first).
const TRACE: [&str; 2] = ["x-request-id", "x-modelscope-request-id"];
/// The quota headers ModelScope sends with its API answers (seen on chat; read where
/// present).
const MODEL_REMAINING: &str = "modelscope-ratelimit-model-requests-remaining";
const MODEL_LIMIT: &str = "modelscope-ratelimit-model-requests-limit";
const ACCOUNT_REMAINING: &str = "modelscope-ratelimit-requests-remaining";
/// ModelScope's own client polls every 5 s; kiln starts sooner and backs off to this.
const POLL_FIRST: Duration = Duration::from_secs(2);
const POLL_CAP: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Overrides `https://api-inference.modelscope.cn` (a proxy, or a test's fake).
    #[serde(default)]
    base_url: Option<url::Url>,
}

/// The admin console's form for a ModelScope channel.
pub fn form() -> ProviderForm {
    let remote = RemoteOptions { poll_interval: POLL_FIRST, poll_max_interval: Some(POLL_CAP), ..Default::default() };
    let mut options =
        vec![Field::new("base_url", FieldType::Url, Value::Null, "Overrides ModelScope's base URL (a proxy).")];
    options.extend(remote.fields());
    ProviderForm {
        provider: "modelscope".into(),
        title: "ModelScope API-Inference (cloud images)".into(),
        kinds: vec![TaskKind::TextToImage],
        secret: Some(SecretField {
            required: true,
            label: "Access token".into(),
            help: "A ModelScope access token (ms-…); several, separated by commas, are used in turn.".into(),
        }),
        default_base_url: Some(BASE.into()),
        base_urls: Vec::new(),
        options,
    }
}

/// The registry's factory.
pub fn factory(channel: &ChannelConfig) -> anyhow::Result<Arc<dyn Provider>> {
    let mut table = channel.options.clone();
    let poll_set = table.contains_key("poll_interval");
    let cap_set = table.contains_key("poll_max_interval");
    let mut remote = RemoteOptions::take(&mut table)?;
    if !poll_set {
        remote.poll_interval = POLL_FIRST;
    }
    if !cap_set {
        remote.poll_max_interval = Some(POLL_CAP);
    }
    let options: Options = serde_json::from_value(Value::Object(table))
        .map_err(|e| anyhow::anyhow!("{e} (expected `base_url`, or the cloud settings)"))?;
    let base = match options.base_url {
        Some(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => url,
        Some(url) => anyhow::bail!("`base_url`: `{url}` is not an http(s) URL"),
        None => url::Url::parse(BASE)?,
    };
    for model in &channel.models {
        if model.kind != "text_to_image" {
            anyhow::bail!(
                "model `{}`: ModelScope's asynchronous API serves text_to_image, not {}",
                model.name,
                model.kind
            );
        }
    }
    Ok(Arc::new(RemoteProvider::new(ModelScope { base }, channel, remote)?))
}

struct ModelScope {
    base: url::Url,
}

impl ModelScope {
    /// `{base}/segment/…`, each segment escaped (a task id cannot leave its path).
    fn url(&self, segments: &[&str]) -> String {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url.into()
    }
}

// ---------------------------------------------------------------------------------
// Parameters

/// Fields kiln fills itself.
const RESERVED: [(&str, &str); 2] = [
    ("model", "the model is chosen with the task's own `model` (the channel maps it to ModelScope's id)"),
    ("prompt", "the prompt is the task's own `prompt` field"),
];

/// Checks a task's parameters and returns the body fields they become: ModelScope's
/// documented fields checked against their widest ranges, `n` (OpenAI's image count)
/// dropped when 1 and refused otherwise, anything else passed through unchanged.
fn check(params: &Value) -> Result<Map<String, Value>, String> {
    let Some(params) = params.as_object() else { return Err("`params` must be a JSON object.".into()) };
    let mut body = Map::new();
    for (name, value) in params {
        if let Some((_, why)) = RESERVED.iter().find(|(n, _)| n == name) {
            return Err(format!("`{name}` cannot be set in `params`: {why}."));
        }
        let whole = |lo: i64, hi: i64| value.as_i64().is_some_and(|v| (lo..=hi).contains(&v));
        match name.as_str() {
            // OpenAI's image count: 1 is what ModelScope does anyway, so it is dropped.
            "n" if value.as_u64() == Some(1) => continue,
            "n" => {
                return Err("`n` must be 1: ModelScope makes one image per task; submit several tasks for more \
                            images."
                    .into());
            }
            "negative_prompt" if value.as_str().is_none_or(|s| s.chars().count() >= MAX_PROMPT) => {
                return Err(format!("`negative_prompt` must be text shorter than {MAX_PROMPT} characters."));
            }
            "seed" if !whole(0, i64::from(i32::MAX)) => {
                return Err(format!("`seed` must be a whole number from 0 to {}.", i32::MAX));
            }
            "steps" if !whole(1, 100) => return Err("`steps` must be a whole number from 1 to 100.".into()),
            "guidance" if !value.as_f64().is_some_and(|v| (1.5..=20.0).contains(&v)) => {
                return Err("`guidance` must be a number from 1.5 to 20.".into());
            }
            "size" => size(value)?,
            "loras" => loras(value)?,
            "image_url" => image_url(value)?,
            _ => {}
        }
        body.insert(name.clone(), value.clone());
    }
    Ok(body)
}

/// `"WxH"`, both sides within the widest range a ModelScope model takes.
fn size(value: &Value) -> Result<(), String> {
    let (lo, hi) = SIDE;
    let bad = || {
        format!(
            "`size` must be \"WIDTHxHEIGHT\" (e.g. \"1024x1024\") with both sides from {lo} to {hi}; \
             each model's range is narrower (FLUX up to 1024, Qwen-Image up to 1664, Z-Image-Turbo from 512)."
        )
    };
    let text = value.as_str().ok_or_else(bad)?;
    let (w, h) = text.split_once('x').ok_or_else(bad)?;
    let side = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u32>().ok().filter(|n| (lo..=hi).contains(n))
    };
    match (side(w), side(h)) {
        (Some(_), Some(_)) => Ok(()),
        _ => Err(bad()),
    }
}

/// One LoRA repository id, or a map of at most six ids to weights that sum to 1.
fn loras(value: &Value) -> Result<(), String> {
    let id_ok = |id: &str| !id.trim().is_empty() && id.len() <= 256 && !id.chars().any(char::is_control);
    match value {
        Value::String(id) if id_ok(id) => Ok(()),
        Value::String(_) => Err("`loras` as text must be one LoRA's repository id, e.g. \"owner/name\".".into()),
        Value::Object(map) => {
            if map.is_empty() {
                return Err("`loras` as a map needs at least one LoRA id with its weight.".into());
            }
            if map.len() > MAX_LORAS {
                return Err(format!("`loras` combines at most {MAX_LORAS} LoRAs; {} were given.", map.len()));
            }
            let mut sum = 0.0;
            for (id, weight) in map {
                if !id_ok(id) {
                    return Err("`loras` keys must be LoRA repository ids, e.g. \"owner/name\".".into());
                }
                let Some(w) = weight.as_f64().filter(|w| *w > 0.0 && *w <= 1.0) else {
                    return Err(format!("`loras`: the weight of `{id}` must be a number above 0 and at most 1."));
                };
                sum += w;
            }
            if (sum - 1.0).abs() > WEIGHT_SUM_TOLERANCE {
                return Err(format!("`loras`: the weights must sum to 1.0; they sum to {sum}."));
            }
            Ok(())
        }
        _ => Err("`loras` must be one LoRA's repository id, or a map of up to 6 ids to weights summing to 1.0.".into()),
    }
}

/// A picture ModelScope fetches itself: a public http(s) URL (kiln's own file URLs are
/// usually not reachable from ModelScope, so kiln does not send them).
fn image_url(value: &Value) -> Result<(), String> {
    let ok = value
        .as_str()
        .filter(|s| s.len() <= 4096)
        .and_then(|s| url::Url::parse(s).ok())
        .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if ok {
        Ok(())
    } else {
        Err("`image_url` must be an http(s) URL that ModelScope can fetch (publicly reachable), for models that \
             edit pictures."
            .into())
    }
}

// ---------------------------------------------------------------------------------
// Answers

/// What ModelScope answered: its JSON, or the failure it means.
fn read(answer: &Answer, creating: bool) -> Result<Value, Failure> {
    let json = answer.json();
    let request_id = json.as_ref().and_then(request_id).or_else(|| answer.header(&TRACE));
    if answer.status.is_success() {
        return match json {
            Some(value @ Value::Object(_)) => Ok(value),
            // The upstream may have made the job while saying something unreadable.
            _ if creating => Err(Failure::Unknown(format!("unreadable success answer (request id {request_id:?})"))),
            _ => Err(Failure::Unknown(format!("unreadable answer (request id {request_id:?})"))),
        };
    }
    let message = json.as_ref().and_then(error_message).unwrap_or_default();
    let detail = anyhow::anyhow!("ModelScope answered {}: {message} (request id {request_id:?})", answer.status);
    Err(failure(answer, &message, json.is_some(), creating).with_cause(detail))
}

/// `request_id` at the top level (400s, failed tasks) or inside `errors` (429s).
fn request_id(json: &Value) -> Option<String> {
    [json.get("request_id"), json.pointer("/errors/request_id")]
        .into_iter()
        .flatten()
        .find_map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
}

/// `errors.message`, or the shapes a proxy in front may use.
fn error_message(json: &Value) -> Option<String> {
    ["/errors/message", "/error/message", "/message", "/errors", "/error"]
        .into_iter()
        .find_map(|p| json.pointer(p).and_then(Value::as_str).filter(|s| !s.trim().is_empty()))
        .map(str::to_owned)
}

/// The kiln failure an HTTP status and ModelScope's message mean.
fn failure(answer: &Answer, message: &str, json: bool, creating: bool) -> Failure {
    let refused = |code: &str, text: String| Failure::Refused(ProviderError::new(code, text));
    let said = |lead: &str| {
        let message = crate::input::printable(message, 300);
        if message.is_empty() { lead.to_owned() } else { format!("{lead} ModelScope says: {message}") }
    };
    match answer.status.as_u16() {
        401 => refused(
            "upstream_auth",
            "ModelScope refused the access token; the account must also be bound to an Alibaba Cloud account.".into(),
        ),
        403 => refused(
            "upstream_auth",
            said(
                "ModelScope denied this access token the request (an account not bound to Alibaba Cloud or not \
                 verified, or a model it may not use).",
            ),
        ),
        429 => Failure::NotTaken(ProviderError::new("upstream_rate_limited", rate_limited(answer))),
        503 => Failure::NotTaken(ProviderError::new("upstream_unavailable", "ModelScope is unavailable.")),
        404 if !creating => refused("upstream_job_lost", "ModelScope does not know this job.".into()),
        400 | 404 | 413 | 422 => refused("upstream_invalid_params", said("ModelScope refused the request.")),
        // A 5xx that is not ModelScope's JSON comes from a proxy in front of it: the
        // create may have gone through.
        500..=599 if creating && !json => Failure::Unknown(format!("{} without ModelScope's JSON", answer.status)),
        // A read that failed says nothing about the job: poll again later.
        500..=599 if !creating => Failure::NotTaken(ProviderError::new(
            "upstream_unavailable",
            "ModelScope failed to say how the job is going.",
        )),
        500..=599 => refused("upstream_unavailable", said("ModelScope failed to handle the request.")),
        _ => refused("upstream_error", said("ModelScope answered with an unexpected error.")),
    }
}

/// A 429's message: the daily quotas, and what the answer says about them.
fn rate_limited(answer: &Answer) -> String {
    let mut text = "ModelScope's rate limit or daily quota was reached (2000 calls a day per account, fewer per \
                    model); this can mean no more images from this model until tomorrow."
        .to_owned();
    let number = |name: &str| answer.header(&[name]).and_then(|v| v.trim().parse::<u64>().ok());
    if number(MODEL_REMAINING) == Some(0) {
        match number(MODEL_LIMIT) {
            Some(limit) => text.push_str(&format!(" The model's daily quota of {limit} calls is used up.")),
            None => text.push_str(" The model's daily quota is used up."),
        }
    } else if number(ACCOUNT_REMAINING) == Some(0) {
        text.push_str(" The account's daily quota is used up.");
    }
    if let Some(wait) = answer.retry_after().filter(|w| !w.is_zero()) {
        text.push_str(&format!(" ModelScope asked to wait {} s.", wait.as_secs()));
    }
    text
}

/// What a task's answer to `GET /v1/tasks/{id}` says. Read field by field, so an odd
/// field never makes the whole answer unreadable.
fn state(task: &Value) -> JobState {
    let text = |key: &str| task.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let status = text("task_status").unwrap_or_default().to_ascii_uppercase();
    match status.as_str() {
        "PENDING" | "QUEUED" => JobState::Pending { progress: Some(0), stage: "upstream_queued" },
        "SUCCEED" | "SUCCEEDED" | "SUCCESS" => {
            let images = match task.get("output_images") {
                Some(Value::Array(images)) => images.as_slice(),
                Some(one @ Value::String(_)) => std::slice::from_ref(one),
                _ => &[],
            };
            let urls: Vec<String> = images
                .iter()
                .filter_map(|v| v.as_str().or_else(|| v.get("url").and_then(Value::as_str)))
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned)
                .collect();
            if urls.is_empty() {
                return JobState::Failed(ProviderError::new("bad_output", "ModelScope finished without an image."));
            }
            let files = urls
                .into_iter()
                .enumerate()
                .map(|(i, url)| RemoteFile {
                    name: format!("image-{}.png", i + 1),
                    role: "image".into(),
                    source: Source::Url(url),
                    check: Check::Image,
                })
                .collect();
            let mut metadata = json!({ "provider": "modelscope" });
            if let Some(id) = text("request_id") {
                metadata["upstream_result_request_id"] = json!(id);
            }
            JobState::Succeeded(Finished { files, metadata })
        }
        "FAILED" | "FAILURE" => {
            let errors = task.get("errors").cloned().unwrap_or(Value::Null);
            let message = errors
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| errors.as_str())
                .map(|m| crate::input::printable(m, 300))
                .unwrap_or_default();
            let lead = "ModelScope failed to make the image.";
            let text = if message.is_empty() { lead.to_owned() } else { format!("{lead} ModelScope says: {message}") };
            let request_id = request_id(task);
            let cause = anyhow::anyhow!(
                "ModelScope task FAILED (code {:?}, request id {request_id:?})",
                errors.get("code").map(Value::to_string)
            );
            JobState::Failed(ProviderError::new("upstream_failed", text).with_cause(cause))
        }
        "CANCEL" | "CANCELED" | "CANCELLED" => {
            JobState::Failed(ProviderError::new("upstream_canceled", "The job was canceled at ModelScope."))
        }
        // `RUNNING`, `PROCESSING`, and `UNKNOWN` (which may be ModelScope's word for a
        // task it has not caught up with): keep polling until the deadline.
        "RUNNING" | "PROCESSING" => JobState::Pending { progress: None, stage: "upstream_running" },
        other => {
            tracing::debug!(status = other, "ModelScope task status not understood; polling again");
            JobState::Pending { progress: None, stage: "upstream_running" }
        }
    }
}

// ---------------------------------------------------------------------------------
// The API

#[async_trait]
impl RemoteApi for ModelScope {
    fn describe(&self) -> String {
        format!(
            "ModelScope API-Inference image generation (asynchronous, {})",
            self.base.as_str().trim_end_matches('/')
        )
    }

    fn check_params(&self, kind: TaskKind, params: &Value) -> Result<(), String> {
        if kind != TaskKind::TextToImage {
            return Err(format!("ModelScope channels make images (text_to_image), not {}.", kind.as_str()));
        }
        check(params).map(|_| ())
    }

    /// ModelScope tokens look like `ms-…`, but not all are known to: any printable
    /// token is taken.
    fn check_key(&self, key: &str) -> Result<(), String> {
        if !key.is_empty() && key.len() <= 512 && key.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(())
        } else {
            Err("A ModelScope access token is printable text without spaces (usually `ms-…`).".into())
        }
    }

    async fn submit(&self, call: &Call<'_>, job: &Job) -> Result<Submission, Failure> {
        let invalid = |m: String| Failure::Refused(ProviderError::new("invalid_params", m));
        if job.kind != TaskKind::TextToImage {
            return Err(Failure::Refused(ProviderError::new(
                "unsupported_kind",
                "This ModelScope channel makes images only.",
            )));
        }
        let params = check(&job.params).map_err(invalid)?;
        let Some(prompt) = job.prompt.as_deref().filter(|p| !p.trim().is_empty()) else {
            return Err(Failure::Refused(ProviderError::new("missing_input", "Text-to-image needs a prompt.")));
        };
        if prompt.chars().count() >= MAX_PROMPT {
            return Err(invalid(format!("ModelScope takes prompts shorter than {MAX_PROMPT} characters.")));
        }
        let mut body = Map::new();
        body.insert("model".into(), json!(job.upstream_model));
        body.insert("prompt".into(), json!(prompt));
        body.extend(params);
        let body = Value::Object(body);
        let url = self.url(&["v1", "images", "generations"]);
        let make = || call.bearer(call.http.client().post(&url)).header("X-ModelScope-Async-Mode", "true").json(&body);
        let answer = call.http.send(make, Retry::UntilTaken, call.until).await.map_err(Failure::from_fault)?;
        let data = read(&answer, true)?;
        let request_id = request_id(&data).or_else(|| answer.header(&TRACE));
        match data.get("task_id") {
            Some(Value::String(id)) if !id.is_empty() => Ok(Submission::Accepted { id: id.clone(), request_id }),
            Some(Value::Number(id)) => Ok(Submission::Accepted { id: id.to_string(), request_id }),
            _ => {
                Err(Failure::Unknown(format!("ModelScope's create answer had no task_id (request id {request_id:?})")))
            }
        }
    }

    async fn poll(&self, call: &Call<'_>, ids: &[String]) -> Result<HashMap<String, JobState>, Failure> {
        let mut states = HashMap::new();
        for id in ids {
            let url = self.url(&["v1", "tasks", id]);
            let make =
                || call.bearer(call.http.client().get(&url)).header("X-ModelScope-Task-Type", "image_generation");
            let answer = call.http.send(make, Retry::Idempotent, None).await.map_err(Failure::from_fault)?;
            let task = read(&answer, false)?;
            states.insert(id.clone(), state(&task));
        }
        Ok(states)
    }

    async fn health(&self, call: &Call<'_>) -> Result<(), String> {
        self.models(call).await.map(|_| ())
    }

    /// `GET /v1/models`, and how many models it listed.
    async fn test_connection(&self, call: &Call<'_>) -> Result<String, String> {
        let answer = self.models(call).await?;
        match answer.json().as_ref().and_then(|v| v.get("data")).and_then(Value::as_array) {
            Some(models) => Ok(format!("ModelScope took the token and lists {} models.", models.len())),
            None => Ok(format!("ModelScope took the token (answered {}).", answer.status)),
        }
    }
}

impl ModelScope {
    /// `GET /v1/models`: whether the token is taken.
    async fn models(&self, call: &Call<'_>) -> Result<Answer, String> {
        let url = self.url(&["v1", "models"]);
        let make = || call.bearer(call.http.client().get(&url));
        let answer = call.http.send(make, Retry::Idempotent, None).await.map_err(|f| f.to_string())?;
        match answer.status {
            status if status.is_success() => Ok(answer),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err("ModelScope refused the access token".into()),
            status => Err(format!("ModelScope answered {status}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;

    fn err(params: Value) -> String {
        check(&params).expect_err(&format!("{params} should be refused"))
    }

    #[test]
    fn one_lora_is_a_repository_id() {
        assert!(check(&json!({ "loras": "owner/some-lora" })).is_ok());
        assert!(err(json!({ "loras": "" })).contains("repository id"));
        assert!(err(json!({ "loras": 3 })).contains("loras"));
        assert!(err(json!({ "loras": ["a/b"] })).contains("loras"));
    }

    #[test]
    fn several_loras_are_at_most_six_weights_summing_to_one() {
        let six: Map<String, Value> = (0..6).map(|i| (format!("o/l{i}"), json!(1.0 / 6.0))).collect();
        assert!(check(&json!({ "loras": six })).is_ok(), "1/6 six times sums to 1 within the tolerance");
        assert!(check(&json!({ "loras": { "a/x": 0.6, "b/y": 0.4 } })).is_ok());
        assert!(check(&json!({ "loras": { "a/x": 1 } })).is_ok());

        let seven: Map<String, Value> = (0..7).map(|i| (format!("o/l{i}"), json!(1.0 / 7.0))).collect();
        let e = err(json!({ "loras": seven }));
        assert!(e.contains("at most 6") && e.contains('7'), "{e}");

        let e = err(json!({ "loras": { "a/x": 0.5, "b/y": 0.4 } }));
        assert!(e.contains("sum to 1.0") && e.contains("0.9"), "{e}");
        let e = err(json!({ "loras": { "a/x": "0.5", "b/y": 0.5 } }));
        assert!(e.contains("a/x") && e.contains("number"), "{e}");
        assert!(err(json!({ "loras": { "a/x": 1.5, "b/y": -0.5 } })).contains("weight"));
        assert!(err(json!({ "loras": {} })).contains("at least one"));
    }

    #[test]
    fn size_is_width_x_height_within_the_widest_range() {
        for ok in ["1024x1024", "64x2048", "1664x928"] {
            assert!(check(&json!({ "size": ok })).is_ok(), "{ok}");
        }
        for bad in ["1024", "1024*1024", "63x512", "512x2049", "x512", "1024x", "-64x64", "+64x64", "1e3x64", " 64x64"]
        {
            let e = err(json!({ "size": bad }));
            assert!(e.contains("WIDTHxHEIGHT") && e.contains("FLUX"), "{bad}: {e}");
        }
        assert!(err(json!({ "size": 1024 })).contains("size"));
    }

    #[test]
    fn documented_fields_are_checked_and_others_pass_through() {
        let body = check(&json!({
            "seed": 0, "steps": 30, "guidance": 3.5, "negative_prompt": "blurry",
            "image_url": "https://example.com/a.png", "sampler": "euler", "n": 1,
        }))
        .expect("valid");
        assert_eq!(body["sampler"], "euler", "unknown fields are passed through");
        assert!(!body.contains_key("n"), "n = 1 is OpenAI's default, not a ModelScope field");
        assert!(err(json!({ "seed": -1 })).contains("seed"));
        assert!(err(json!({ "seed": 2_147_483_648_i64 })).contains("seed"));
        assert!(err(json!({ "seed": 1.5 })).contains("whole number"));
        assert!(err(json!({ "steps": 0 })).contains("steps"));
        assert!(err(json!({ "steps": 101 })).contains("steps"));
        assert!(err(json!({ "guidance": 1.4 })).contains("guidance"));
        assert!(err(json!({ "guidance": 20.5 })).contains("guidance"));
        assert!(err(json!({ "negative_prompt": "x".repeat(2000) })).contains("2000"));
        assert!(check(&json!({ "negative_prompt": "x".repeat(1999) })).is_ok());
        assert!(err(json!({ "image_url": "file:///etc/passwd" })).contains("http"));
        assert!(err(json!({ "image_url": "/api/v1/files/x.png" })).contains("http"));
        assert!(err(json!({ "n": 2 })).contains("one image per task"));
        assert!(err(json!({ "model": "other/model" })).contains("`model`"));
        assert!(err(json!({ "prompt": "x" })).contains("`prompt`"));
        assert!(err(json!([1])).contains("object"));
    }

    fn answer(status: u16, body: &str, headers: &[(&str, &str)]) -> Answer {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        Answer { status: StatusCode::from_u16(status).expect("status"), headers: map, body: body.to_owned().into() }
    }

    fn class(answer: &Answer, creating: bool) -> (String, String) {
        match read(answer, creating) {
            Ok(_) => ("ok".into(), String::new()),
            Err(Failure::NotTaken(e)) => (format!("not_taken:{}", e.code), e.message),
            Err(Failure::Refused(e)) => (format!("refused:{}", e.code), e.message),
            Err(Failure::Unknown(d)) => ("unknown".into(), d),
        }
    }

    #[test]
    fn statuses_and_bodies_decide_the_failure() {
        let (c, m) = class(&answer(401, r#"{"errors":{"message":"bad token"}}"#, &[]), true);
        assert_eq!(c, "refused:upstream_auth");
        assert!(m.contains("Alibaba Cloud"), "{m}");

        let limited = answer(
            429,
            r#"{"errors":{"message":"Request limit exceeded.","request_id":"r-1"}}"#,
            &[("retry-after", "7"), (MODEL_REMAINING, "0"), (MODEL_LIMIT, "500")],
        );
        let (c, m) = class(&limited, true);
        assert_eq!(c, "not_taken:upstream_rate_limited");
        assert!(m.contains("2000 calls a day") && m.contains("500 calls") && m.contains("wait 7 s"), "{m}");

        let (c, m) =
            class(&answer(400, "{\"errors\":{\"message\":\"bad\\u0007 size\"},\"request_id\":\"r\"}", &[]), true);
        assert_eq!(c, "refused:upstream_invalid_params");
        assert!(m.ends_with("ModelScope says: bad size"), "control characters dropped: {m}");
        let long = format!(r#"{{"errors":{{"message":"{}"}}}}"#, "y".repeat(1000));
        let (_, m) = class(&answer(400, &long, &[]), true);
        let theirs = m.split_once("says: ").expect("their message").1;
        assert_eq!(theirs.chars().count(), 300, "at most 300 characters of theirs");

        assert_eq!(
            class(&answer(500, r#"{"errors":{"message":"oops"}}"#, &[]), true).0,
            "refused:upstream_unavailable"
        );
        assert_eq!(
            class(&answer(502, "<html>bad gateway</html>", &[]), true).0,
            "unknown",
            "a proxy's 502 may hide a job"
        );
        assert_eq!(class(&answer(503, "", &[]), true).0, "not_taken:upstream_unavailable");
        assert_eq!(class(&answer(200, "<html>", &[]), true).0, "unknown", "an unreadable 200 may hide a job");
        assert_eq!(class(&answer(200, r#"{"task_id":"t"}"#, &[]), true).0, "ok");

        // Reads: a failed poll says nothing about the job.
        assert_eq!(
            class(&answer(500, r#"{"errors":{"message":"oops"}}"#, &[]), false).0,
            "not_taken:upstream_unavailable"
        );
        assert_eq!(class(&answer(404, "{}", &[]), false).0, "refused:upstream_job_lost");
        assert_eq!(class(&answer(401, "{}", &[]), false).0, "refused:upstream_auth");
    }

    #[test]
    fn request_ids_are_read_at_the_top_or_inside_errors() {
        assert_eq!(request_id(&json!({ "request_id": "a" })), Some("a".into()));
        assert_eq!(request_id(&json!({ "errors": { "request_id": "b" } })), Some("b".into()));
        assert_eq!(request_id(&json!({ "task_id": "t" })), None);
    }

    fn detail(value: Value) -> JobState {
        state(&value)
    }

    #[test]
    fn task_statuses_become_states() {
        assert!(matches!(
            detail(json!({ "task_status": "PENDING" })),
            JobState::Pending { stage: "upstream_queued", .. }
        ));
        assert!(matches!(detail(json!({ "task_status": "RUNNING" })), JobState::Pending { .. }));
        assert!(matches!(detail(json!({ "task_status": "PROCESSING" })), JobState::Pending { .. }));
        assert!(
            matches!(detail(json!({ "task_status": "UNKNOWN" })), JobState::Pending { .. }),
            "polled until the deadline"
        );
        assert!(matches!(detail(json!({})), JobState::Pending { .. }));

        let JobState::Succeeded(done) =
            detail(json!({ "task_status": "SUCCEED", "output_images": ["https://x/a.png", "https://x/b.jpg"] }))
        else {
            panic!("succeeded")
        };
        let names: Vec<_> = done.files.iter().map(|f| (f.name.as_str(), f.role.as_str(), f.check)).collect();
        assert_eq!(names, [("image-1.png", "image", Check::Image), ("image-2.png", "image", Check::Image)]);
        assert!(matches!(&done.files[1].source, Source::Url(u) if u == "https://x/b.jpg"));

        let odd =
            json!({ "task_status": "SUCCEED", "output_images": "https://x/c.png", "request_id": 7, "errors": null });
        assert!(matches!(detail(odd), JobState::Succeeded(f) if f.files.len() == 1), "odd fields are tolerated");
        let JobState::Failed(e) = detail(json!({ "task_status": "SUCCEED", "output_images": [] })) else {
            panic!("empty")
        };
        assert_eq!(e.code, "bad_output");

        let JobState::Failed(e) = detail(json!({
            "task_status": "FAILED", "errors": { "message": "NSFW content detected", "code": 451 }, "request_id": "rq-9",
        })) else {
            panic!("failed")
        };
        assert_eq!(e.code, "upstream_failed");
        assert!(e.message.ends_with("ModelScope says: NSFW content detected"), "{}", e.message);
        assert!(format!("{:#}", e.cause.expect("cause")).contains("rq-9"), "the request id is logged");

        let JobState::Failed(e) = detail(json!({ "task_status": "CANCEL" })) else { panic!("canceled") };
        assert_eq!(e.code, "upstream_canceled");
    }

    fn channel(options: &str, kind: &str) -> ChannelConfig {
        let text = format!(
            "name = \"ms\"\ntype = \"modelscope\"\nsecret = \"ms-123\"\n\
             models = [{{ name = \"qwen\", kind = \"{kind}\", upstream = \"Qwen/Qwen-Image\" }}]\n\
             [options]\n{options}\n"
        );
        toml::from_str(&text).expect("channel")
    }

    #[test]
    fn the_factory_refuses_other_kinds_and_unknown_options() {
        assert!(factory(&channel("", "text_to_image")).is_ok());
        assert!(
            factory(&channel("base_url = \"http://127.0.0.1:9\"\npoll_interval = \"50ms\"", "text_to_image")).is_ok()
        );
        let e = factory(&channel("", "text_to_3d")).err().expect("3D refused").to_string();
        assert!(e.contains("text_to_image") && e.contains("text_to_3d"), "{e}");
        let e = factory(&channel("region = \"cn\"", "text_to_image")).err().expect("unknown option").to_string();
        assert!(e.contains("region"), "{e}");
        let e = factory(&channel("base_url = \"ftp://x\"", "text_to_image")).err().expect("ftp").to_string();
        assert!(e.contains("http"), "{e}");
    }

    #[test]
    fn task_ids_stay_inside_their_path() {
        let api = ModelScope { base: url::Url::parse("http://h:1/prefix/").expect("url") };
        assert_eq!(api.url(&["v1", "tasks", "a/../b?c"]), "http://h:1/prefix/v1/tasks/a%2F..%2Fb%3Fc");
        let api = ModelScope { base: url::Url::parse(BASE).expect("url") };
        assert_eq!(api.url(&["v1", "images", "generations"]), format!("{BASE}/v1/images/generations"));
    }
}
