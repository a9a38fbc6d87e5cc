//! `tripo`: Tripo AI's cloud 3D generation, apiv3 (`docs/providers/tripo.md`).
//!
//! `image_to_3d` uploads the picture (`POST /v3/files`) and creates the job with its
//! file token (`POST /v3/generation/image-to-model`); `text_to_3d` creates it from the
//! prompt (`POST /v3/generation/text-to-model`). Jobs are polled together through
//! `POST /v3/tasks/list`, and the model (`output.model_url`) and the rendered preview
//! (`output.rendered_image_url`) are kept. The balance (`GET /v3/account/balance`) is
//! the channel's health.
//!
//! Tripo answers errors with an HTTP status *and* a business `code`; both are read
//! (`../shared/reference/provider-apis.md` §1.7). Tripo shut its v2 API down on
//! 2026-10-31, so only apiv3 is spoken.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use reqwest::{StatusCode, multipart};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Job, Provider, ProviderError,
    form::{Field, FieldType, NamedUrl, ProviderForm, SecretField},
    remote::{
        Call, Check, Failure, Finished, JobState, RemoteApi, RemoteFile, RemoteOptions, RemoteProvider, Source,
        Submission,
        http::{Answer, Retry},
    },
};
use crate::{config::ChannelConfig, tasks::TaskKind};

const GLOBAL: &str = "https://openapi.tripo3d.ai";
const CHINA: &str = "https://openapi.tripo3d.com";
/// Ids per `POST /v3/tasks/list`.
const BATCH: usize = 100;
/// The trace id Tripo puts on every answer.
const TRACE: [&str; 2] = ["x-tripo-trace-id", "x-request-id"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// `global` (openapi.tripo3d.ai) or `cn` (openapi.tripo3d.com); a key works only in
    /// its own region.
    #[serde(default)]
    region: Region,
    /// Overrides the region's base URL (a proxy, or a test's fake).
    #[serde(default)]
    base_url: Option<url::Url>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Region {
    #[default]
    Global,
    Cn,
}

/// The admin console's form for a Tripo channel.
pub fn form() -> ProviderForm {
    let mut options = vec![
        Field::new(
            "region",
            FieldType::Choice,
            json!("global"),
            "global: openapi.tripo3d.ai; cn: openapi.tripo3d.com. A key works only in its own region.",
        )
        .choices(&["global", "cn"]),
        Field::new("base_url", FieldType::Url, Value::Null, "Overrides the region's base URL (a proxy)."),
    ];
    options.extend(RemoteOptions::default().fields());
    ProviderForm {
        provider: "tripo".into(),
        title: "Tripo (cloud 3D)".into(),
        kinds: vec![TaskKind::ImageTo3d, TaskKind::TextTo3d],
        secret: Some(SecretField {
            required: true,
            label: "API key".into(),
            help: "Tripo API keys start with tsk_; several, separated by commas, are used in turn.".into(),
        }),
        default_base_url: Some(GLOBAL.into()),
        base_urls: vec![
            NamedUrl { label: "Global".into(), url: GLOBAL.into() },
            NamedUrl { label: "China".into(), url: CHINA.into() },
        ],
        options,
    }
}

/// The registry's factory.
pub fn factory(channel: &ChannelConfig) -> anyhow::Result<Arc<dyn Provider>> {
    let mut table = channel.options.clone();
    let remote = RemoteOptions::take(&mut table)?;
    let options: Options = serde_json::from_value(Value::Object(table)).map_err(|e| {
        anyhow::anyhow!("{e} (expected `region = \"global\" | \"cn\"`, `base_url`, or the cloud settings)")
    })?;
    let base = match (&options.base_url, options.region) {
        (Some(url), _) => url.as_str().trim_end_matches('/').to_owned(),
        (None, Region::Global) => GLOBAL.to_owned(),
        (None, Region::Cn) => CHINA.to_owned(),
    };
    for model in &channel.models {
        if !matches!(model.kind.as_str(), "image_to_3d" | "text_to_3d") {
            anyhow::bail!("model `{}`: Tripo serves image_to_3d and text_to_3d, not {}", model.name, model.kind);
        }
    }
    if let Some(secret) = &channel.secret
        && secret.expose().split(',').map(str::trim).any(|k| !k.is_empty() && !k.starts_with("tsk_"))
    {
        anyhow::bail!("`secret`: Tripo API keys start with `tsk_`");
    }
    Ok(Arc::new(RemoteProvider::new(Tripo { base }, channel, remote)?))
}

struct Tripo {
    base: String,
}

/// A parameter Tripo's generation endpoints take, and its shape.
enum Shape {
    Bool,
    Int(i64, i64),
    Text(usize),
    OneOf(&'static [&'static str]),
}

/// What kiln passes on, per kind (apiv3 field names; `model` comes from the channel's
/// model mapping).
const COMMON: &[(&str, Shape)] = &[
    ("texture", Shape::Bool),
    ("pbr", Shape::Bool),
    ("face_limit", Shape::Int(500, 500_000)),
    ("texture_quality", Shape::OneOf(&["standard", "detailed"])),
    ("geometry_quality", Shape::OneOf(&["standard", "detailed"])),
    ("auto_size", Shape::Bool),
    ("quad", Shape::Bool),
    ("compress", Shape::OneOf(&["geometry"])),
    ("smart_low_poly", Shape::Bool),
    ("generate_parts", Shape::Bool),
    ("export_uv", Shape::Bool),
    ("model_seed", Shape::Int(0, i32::MAX as i64)),
    ("texture_seed", Shape::Int(0, i32::MAX as i64)),
];
const TEXT_ONLY: &[(&str, Shape)] =
    &[("negative_prompt", Shape::Text(255)), ("image_seed", Shape::Int(0, i32::MAX as i64))];
const IMAGE_ONLY: &[(&str, Shape)] = &[
    ("texture_alignment", Shape::OneOf(&["original_image", "geometry"])),
    ("orientation", Shape::OneOf(&["default", "align_image"])),
    ("enable_image_autofix", Shape::Bool),
];

fn shapes(kind: TaskKind) -> impl Iterator<Item = &'static (&'static str, Shape)> {
    let own = if kind == TaskKind::TextTo3d { TEXT_ONLY } else { IMAGE_ONLY };
    COMMON.iter().chain(own.iter())
}

fn check(kind: TaskKind, params: &Value) -> Result<Map<String, Value>, String> {
    let Some(params) = params.as_object() else { return Err("`params` must be a JSON object.".into()) };
    let mut body = Map::new();
    for (name, value) in params {
        let Some((_, shape)) = shapes(kind).find(|(n, _)| n == name) else {
            let known: Vec<&str> = shapes(kind).map(|(n, _)| *n).collect();
            return Err(format!("Tripo does not take `{name}` for {}; it takes {}.", kind.as_str(), known.join(", ")));
        };
        let fits = match shape {
            Shape::Bool => value.is_boolean(),
            Shape::Int(lo, hi) => value.as_i64().is_some_and(|v| (*lo..=*hi).contains(&v)),
            Shape::Text(max) => value.as_str().is_some_and(|s| s.chars().count() <= *max),
            Shape::OneOf(words) => value.as_str().is_some_and(|s| words.contains(&s)),
        };
        if !fits {
            let expected = match shape {
                Shape::Bool => "true or false".to_owned(),
                Shape::Int(lo, hi) => format!("a whole number from {lo} to {hi}"),
                Shape::Text(max) => format!("text of at most {max} characters"),
                Shape::OneOf(words) => format!("one of {}", words.join(", ")),
            };
            return Err(format!("`{name}` must be {expected}."));
        }
        body.insert(name.clone(), value.clone());
    }
    if body.get("generate_parts") == Some(&Value::Bool(true))
        && ["texture", "pbr", "quad"].iter().any(|k| body.get(*k) == Some(&Value::Bool(true)))
    {
        return Err("`generate_parts` cannot be combined with `texture`, `pbr` or `quad`.".into());
    }
    Ok(body)
}

/// Tripo's envelope: `{code, data}` on success, `{code, message, suggestion}` on error.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    message: Option<String>,
}

/// What Tripo answered: its data, or the failure it means.
fn read(answer: &Answer, creating: bool) -> Result<Value, Failure> {
    let envelope: Option<Envelope> = serde_json::from_slice(&answer.body).ok();
    let trace = answer.header(&TRACE);
    if answer.status.is_success() {
        return match envelope {
            Some(Envelope { code: Some(0) | None, data: Some(data), .. }) => Ok(data),
            // The upstream may have made the job while saying something unreadable.
            _ if creating => Err(Failure::Unknown(format!("unreadable success answer (trace {trace:?})"))),
            _ => Err(Failure::Unknown("unreadable answer".into())),
        };
    }
    let (code, message) = match &envelope {
        Some(e) => (e.code, e.message.clone().unwrap_or_default()),
        None => (None, String::new()),
    };
    let detail = anyhow::anyhow!("Tripo answered {} code {code:?}: {message} (trace {trace:?})", answer.status);
    Err(failure(answer.status, code, &message, envelope.is_some(), creating).with_cause(detail))
}

/// The kiln failure an HTTP status and Tripo code mean (§1.7 of the reference).
fn failure(status: StatusCode, code: Option<i64>, message: &str, from_tripo: bool, creating: bool) -> Failure {
    let refused = |code: &str, text: String| Failure::Refused(ProviderError::new(code, text));
    let said = |lead: &str| {
        let message = crate::input::printable(message, 300);
        if message.is_empty() { lead.to_owned() } else { format!("{lead} Tripo says: {message}") }
    };
    match (status.as_u16(), code) {
        (401, _) | (_, Some(1002)) => refused("upstream_auth", "Tripo refused the API key.".into()),
        (_, Some(2010)) => refused("upstream_no_credits", "The Tripo account is out of credits.".into()),
        (_, Some(2008)) => refused("content_policy", said("Tripo refused the input under its content policy.")),
        (403, _) | (_, Some(1005)) => refused("upstream_auth", "Tripo denied access with this API key.".into()),
        (429, _) | (_, Some(2000 | 1007)) => Failure::NotTaken(ProviderError::new(
            "upstream_rate_limited",
            "Tripo's rate or concurrency limit was reached; try again later.",
        )),
        (503, _) => Failure::NotTaken(ProviderError::new("upstream_unavailable", "Tripo is unavailable.")),
        (404, _) | (_, Some(2001)) => refused("upstream_job_lost", "Tripo does not know this job.".into()),
        (400, _) | (_, Some(1004 | 2002 | 2003 | 2004 | 2006 | 2007 | 2015 | 2016 | 2017 | 2019 | 2021 | 2022)) => {
            refused("upstream_invalid_params", said("Tripo refused the request's parameters."))
        }
        // A 5xx from a proxy in front of Tripo: the create may have gone through.
        (500..=599, _) if creating && !from_tripo => Failure::Unknown(format!("{status} without Tripo's envelope")),
        (500..=599, _) => refused("upstream_unavailable", "Tripo failed to handle the request.".into()),
        _ => refused("upstream_error", said("Tripo answered with an unexpected error.")),
    }
}

#[derive(Debug, Deserialize)]
struct Detail {
    status: String,
    #[serde(default)]
    progress: Option<f64>,
    #[serde(default)]
    output: Option<Map<String, Value>>,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default, alias = "error_msg")]
    error_message: Option<String>,
    #[serde(default)]
    credits_consumed: Option<Value>,
}

fn state(detail: Detail) -> JobState {
    let progress = detail.progress.map(|p| p.clamp(0.0, 100.0) as u8);
    match detail.status.as_str() {
        "queued" => JobState::Pending { progress: Some(0), stage: "upstream_queued" },
        "success" => {
            let output = detail.output.unwrap_or_default();
            let url = |key: &str| output.get(key).and_then(Value::as_str).map(str::to_owned);
            let Some(model) = url("model_url").or_else(|| url("pbr_model")).or_else(|| url("model")) else {
                return JobState::Failed(ProviderError::new("bad_output", "Tripo finished without a model."));
            };
            let mut files = vec![RemoteFile {
                name: "model.glb".into(),
                role: "model".into(),
                source: Source::Url(model),
                check: Check::Glb,
            }];
            if let Some(preview) = url("rendered_image_url").or_else(|| url("rendered_image")) {
                files.push(RemoteFile {
                    name: "preview.webp".into(),
                    role: "preview".into(),
                    source: Source::Url(preview),
                    check: Check::Image,
                });
            }
            let mut metadata = json!({ "provider": "tripo" });
            if let Some(credits) = detail.credits_consumed {
                metadata["credits_consumed"] = credits;
            }
            JobState::Succeeded(Finished { files, metadata })
        }
        "failed" | "banned" | "expired" => {
            let message = detail.error_message.as_deref().map(|m| crate::input::printable(m, 300)).unwrap_or_default();
            let (code, lead) = match (detail.status.as_str(), detail.error_code) {
                ("banned", _) | (_, Some(2008)) => {
                    ("content_policy", "Tripo refused the input under its content policy.")
                }
                ("expired", _) | (_, Some(2018)) => {
                    ("upstream_failed", "Tripo gave the job up (too complex, or it expired).")
                }
                _ => ("upstream_failed", "Tripo failed to make the model."),
            };
            let text = if message.is_empty() { lead.to_owned() } else { format!("{lead} Tripo says: {message}") };
            JobState::Failed(ProviderError::new(code, text))
        }
        "cancelled" => JobState::Failed(ProviderError::new("upstream_canceled", "The job was canceled at Tripo.")),
        // `running`, and `unknown` (not final by the SDK's reading): keep polling until
        // the deadline.
        _ => JobState::Pending { progress: progress.or(Some(0)), stage: "upstream_running" },
    }
}

impl Tripo {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn upload(&self, call: &Call<'_>, job: &Job) -> Result<String, Failure> {
        let Some(image) = &job.image else {
            return Err(Failure::Refused(ProviderError::new("missing_input", "Image-to-3D needs a picture.")));
        };
        let url = self.url("/v3/files");
        let make = || {
            let part = multipart::Part::bytes(image.bytes.to_vec())
                .file_name(format!("input.{}", if image.format == "jpeg" { "jpg" } else { &image.format }))
                .mime_str(&image.content_type)
                .unwrap_or_else(|_| multipart::Part::bytes(image.bytes.to_vec()));
            call.bearer(call.http.client().post(&url)).multipart(multipart::Form::new().part("file", part))
        };
        // An upload costs nothing and makes nothing billable: retried like a read.
        let answer = call.http.send(make, Retry::Idempotent, call.until).await.map_err(Failure::from_fault)?;
        let data = read(&answer, false).map_err(|f| match f {
            Failure::Unknown(detail) => Failure::NotTaken(
                ProviderError::new("upstream_unavailable", "Tripo did not take the picture.")
                    .with_cause(anyhow::anyhow!(detail)),
            ),
            other => other,
        })?;
        data.get("file_token").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| {
            Failure::NotTaken(ProviderError::new("upstream_bad_response", "Tripo's upload answer had no file token."))
        })
    }
}

#[async_trait]
impl RemoteApi for Tripo {
    fn describe(&self) -> String {
        format!("Tripo AI cloud 3D generation (apiv3, {})", self.base)
    }

    fn check_params(&self, kind: TaskKind, params: &Value) -> Result<(), String> {
        check(kind, params).map(|_| ())
    }

    fn check_key(&self, key: &str) -> Result<(), String> {
        let ok = key.starts_with("tsk_") && key.len() > 8 && key.bytes().all(|b| b.is_ascii_graphic());
        if ok { Ok(()) } else { Err("A Tripo API key starts with `tsk_`.".into()) }
    }

    async fn submit(&self, call: &Call<'_>, job: &Job) -> Result<Submission, Failure> {
        let mut body =
            check(job.kind, &job.params).map_err(|m| Failure::Refused(ProviderError::new("invalid_params", m)))?;
        body.insert("model".into(), json!(job.upstream_model));
        let path = match job.kind {
            TaskKind::ImageTo3d => {
                let token = self.upload(call, job).await?;
                body.insert("input".into(), json!(token));
                "/v3/generation/image-to-model"
            }
            TaskKind::TextTo3d => {
                let Some(prompt) = &job.prompt else {
                    return Err(Failure::Refused(ProviderError::new("missing_input", "Text-to-3D needs a prompt.")));
                };
                if prompt.chars().count() > 1024 {
                    return Err(Failure::Refused(ProviderError::new(
                        "invalid_params",
                        "Tripo takes prompts of at most 1024 characters.",
                    )));
                }
                body.insert("prompt".into(), json!(prompt));
                "/v3/generation/text-to-model"
            }
            TaskKind::TextToImage => {
                return Err(Failure::Refused(ProviderError::new(
                    "unsupported_kind",
                    "This Tripo channel makes 3D models only.",
                )));
            }
        };
        let url = self.url(path);
        let body = Value::Object(body);
        let make = || call.bearer(call.http.client().post(&url)).json(&body);
        let answer = call.http.send(make, Retry::UntilTaken, call.until).await.map_err(Failure::from_fault)?;
        let request_id = answer.header(&TRACE);
        let data = read(&answer, true)?;
        match data.get("task_id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(Submission::Accepted { id: id.to_owned(), request_id }),
            _ => Err(Failure::Unknown(format!("Tripo's create answer had no task id (trace {request_id:?})"))),
        }
    }

    fn batch_size(&self) -> usize {
        BATCH
    }

    async fn poll(&self, call: &Call<'_>, ids: &[String]) -> Result<HashMap<String, JobState>, Failure> {
        let url = self.url("/v3/tasks/list");
        let body = json!({ "task_ids": ids });
        let make = || call.bearer(call.http.client().post(&url)).json(&body);
        let answer = call.http.send(make, Retry::Idempotent, None).await.map_err(Failure::from_fault)?;
        let data = read(&answer, false)?;
        let tasks = data.get("tasks").and_then(Value::as_object).cloned().unwrap_or_default();
        let mut states = HashMap::new();
        for (id, detail) in tasks {
            match serde_json::from_value::<Detail>(detail) {
                Ok(detail) => {
                    states.insert(id, state(detail));
                }
                Err(err) => {
                    tracing::warn!(upstream_id = %id, error = %err, "unreadable Tripo task detail; polling again")
                }
            }
        }
        // Unreadable details are left out of `missed` too: keep them pending.
        for id in ids {
            let missed = data.get("missed").and_then(Value::as_array).is_some_and(|m| m.iter().any(|x| x == id));
            if !missed && !states.contains_key(id) {
                states.insert(id.clone(), JobState::Pending { progress: None, stage: "upstream_running" });
            }
        }
        Ok(states)
    }

    async fn health(&self, call: &Call<'_>) -> Result<(), String> {
        match self.balance(call).await?.0 {
            Some(balance) if balance <= 0.0 => Err("the Tripo account is out of credits".into()),
            _ => Ok(()),
        }
    }

    /// The account's balance.
    async fn test_connection(&self, call: &Call<'_>) -> Result<String, String> {
        match self.balance(call).await? {
            (Some(balance), frozen) if balance <= 0.0 => Err(format!(
                "Tripo took the key, but the account is out of credits (balance {balance}, {} frozen).",
                frozen.unwrap_or(0.0)
            )),
            (Some(balance), frozen) => {
                Ok(format!("Tripo balance: {balance} credits ({} frozen).", frozen.unwrap_or(0.0)))
            }
            (None, _) => Ok("Tripo took the key (its answer had no balance).".to_owned()),
        }
    }
}

impl Tripo {
    /// `GET /v3/account/balance`: the balance and the frozen credits.
    async fn balance(&self, call: &Call<'_>) -> Result<(Option<f64>, Option<f64>), String> {
        let url = self.url("/v3/account/balance");
        let make = || call.bearer(call.http.client().get(&url));
        let answer = call.http.send(make, Retry::Idempotent, None).await.map_err(|f| f.to_string())?;
        match read(&answer, false) {
            Ok(data) => Ok((data.get("balance").and_then(Value::as_f64), data.get("frozen").and_then(Value::as_f64))),
            Err(Failure::Refused(err) | Failure::NotTaken(err)) => Err(err.message),
            Err(Failure::Unknown(detail)) => Err(detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_against_what_tripo_takes() {
        assert!(check(TaskKind::TextTo3d, &json!({ "texture": true, "face_limit": 10000 })).is_ok());
        let err = check(TaskKind::TextTo3d, &json!({ "compress": true })).expect_err("a bool compress");
        assert!(err.contains("geometry"), "{err}");
        let err = check(TaskKind::ImageTo3d, &json!({ "negative_prompt": "x" })).expect_err("text-only");
        assert!(err.contains("negative_prompt"), "{err}");
        let err = check(TaskKind::ImageTo3d, &json!({ "generate_parts": true, "pbr": true })).expect_err("conflict");
        assert!(err.contains("generate_parts"), "{err}");
        assert!(check(TaskKind::TextTo3d, &json!({ "face_limit": 10 })).is_err());
    }

    #[test]
    fn status_and_code_together_decide_the_failure() {
        let class = |status: u16, code: Option<i64>, tripo: bool, creating: bool| match failure(
            StatusCode::from_u16(status).expect("status"),
            code,
            "m",
            tripo,
            creating,
        ) {
            Failure::NotTaken(e) => format!("not_taken:{}", e.code),
            Failure::Refused(e) => format!("refused:{}", e.code),
            Failure::Unknown(_) => "unknown".to_owned(),
        };
        assert_eq!(class(429, Some(2000), true, true), "not_taken:upstream_rate_limited");
        assert_eq!(class(403, Some(2010), true, true), "refused:upstream_no_credits");
        assert_eq!(class(400, Some(2008), true, true), "refused:content_policy");
        assert_eq!(class(401, Some(2), true, true), "refused:upstream_auth");
        assert_eq!(class(400, Some(1004), true, true), "refused:upstream_invalid_params");
        assert_eq!(class(502, None, false, true), "unknown", "a proxy's 502 may hide a created job");
        assert_eq!(class(500, Some(1000), true, true), "refused:upstream_unavailable");
        assert_eq!(class(503, None, false, true), "not_taken:upstream_unavailable");
    }

    #[test]
    fn task_details_become_states() {
        let detail = |v: Value| serde_json::from_value::<Detail>(v).expect("detail");
        assert!(matches!(
            state(detail(json!({ "status": "running", "progress": 40 }))),
            JobState::Pending { progress: Some(40), .. }
        ));
        let JobState::Succeeded(done) = state(detail(json!({
            "status": "success", "progress": 100,
            "output": { "model_url": "https://x/m.glb", "rendered_image_url": "https://x/p.webp" },
        }))) else {
            panic!("success")
        };
        assert_eq!(done.files.len(), 2);
        let JobState::Failed(err) =
            state(detail(json!({ "status": "failed", "error_code": 2008, "error_message": "no" })))
        else {
            panic!("failed")
        };
        assert_eq!(err.code, "content_policy");
        assert!(matches!(state(detail(json!({ "status": "success", "output": {} }))), JobState::Failed(_)));
    }
}
