//! `openai_images`: any OpenAI-compatible image API — OpenAI itself, a new-api or LiteLLM
//! instance, a local server (`docs/providers/openai_images.md`).
//!
//! One synchronous call is the whole job: `POST {base}/v1/images/generations` answers
//! with the images, as URLs or base64, so [`RemoteApi::submit`] returns them at once and
//! nothing is ever polled. Either way kiln keeps the images: URLs are downloaded without
//! the key, base64 is decoded, and both are checked as PNG, JPEG or WebP.
//!
//! Because the call is the job, an answer lost after the request was sent (a timeout, a
//! reset, a 5xx from a proxy) may hide images that were made and billed: such a task fails
//! `upstream_outcome_unknown` and is never sent again. Only what provably was not taken
//! (unreachable, 429, 503) is retried, by the HTTP layer, honouring `Retry-After`.
//!
//! Errors come in OpenAI's envelope, `{"error": {"message", "type", "param", "code"}}`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
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

const OPENAI: &str = "https://api.openai.com";
/// A generation can take minutes (OpenAI's gpt-image models at high quality take about
/// two): the whole request may take this long unless `request_timeout` says otherwise.
const REQUEST_TIMEOUT: &str = "300s";
/// The health probe is a cheap read; it must not hang for a generation's time.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Images one request may ask for (OpenAI's limit).
const MAX_N: i64 = 10;
/// Names under which OpenAI-compatible servers put a request id on their answers.
const REQUEST_ID: [&str; 2] = ["x-request-id", "openai-request-id"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// The API's base URL, with or without the trailing `/v1`.
    #[serde(default)]
    base_url: Option<url::Url>,
    /// What kiln asks the upstream for (`response_format`): kiln keeps the images either
    /// way, and base64 needs no second request nor a link that may expire.
    #[serde(default)]
    upstream_format: UpstreamFormat,
    /// Parameters passed on as they are, unchecked, for servers that take more than
    /// OpenAI's fields (a `negative_prompt`, say).
    #[serde(default)]
    extra_params: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum UpstreamFormat {
    #[default]
    B64Json,
    Url,
    /// `response_format` is not sent: for APIs that refuse the field (OpenAI's
    /// gpt-image models always answer base64).
    None,
}

/// The admin console's form for an OpenAI-compatible image channel.
pub fn form() -> ProviderForm {
    let remote = RemoteOptions {
        request_timeout: humantime::parse_duration(REQUEST_TIMEOUT).unwrap_or(Duration::from_secs(300)),
        ..Default::default()
    };
    let mut options = vec![
        Field::new(
            "base_url",
            FieldType::Url,
            Value::Null,
            "The API's base URL, with or without /v1 (a new-api or LiteLLM instance, a local server).",
        ),
        Field::new(
            "upstream_format",
            FieldType::Choice,
            json!("b64_json"),
            "What kiln asks for (response_format); none: the field is not sent.",
        )
        .choices(&["b64_json", "url", "none"]),
        Field::new(
            "extra_params",
            FieldType::List,
            json!([]),
            "Parameters passed on unchecked, for servers that take more than OpenAI's fields.",
        ),
    ];
    options.extend(remote.fields());
    ProviderForm {
        provider: "openai_images".into(),
        title: "OpenAI-compatible image API".into(),
        kinds: vec![TaskKind::TextToImage],
        secret: Some(SecretField {
            required: true,
            label: "API key".into(),
            help: "Sent as Authorization: Bearer; several, separated by commas, are used in turn.".into(),
        }),
        default_base_url: Some(OPENAI.into()),
        base_urls: Vec::new(),
        options,
    }
}

/// The registry's factory.
pub fn factory(channel: &ChannelConfig) -> anyhow::Result<Arc<dyn Provider>> {
    let mut table = channel.options.clone();
    if !table.contains_key("request_timeout") {
        table.insert("request_timeout".into(), Value::String(REQUEST_TIMEOUT.into()));
    }
    let remote = RemoteOptions::take(&mut table)?;
    let options: Options = serde_json::from_value(Value::Object(table)).map_err(|e| {
        anyhow::anyhow!(
            "{e} (expected `base_url`, `upstream_format = \"b64_json\" | \"url\" | \"none\"`, `extra_params`, \
             or the cloud settings)"
        )
    })?;
    for model in &channel.models {
        if model.kind != "text_to_image" {
            anyhow::bail!(
                "model `{}`: an OpenAI-compatible image API serves text_to_image, not {}",
                model.name,
                model.kind
            );
        }
    }
    if let Some(name) = options.extra_params.iter().find(|n| matches!(n.as_str(), "model" | "prompt")) {
        anyhow::bail!("`extra_params`: `{name}` is set by kiln, not passed through");
    }
    let base = base_of(options.base_url.as_ref());
    let api = OpenAiImages { base, format: options.upstream_format, extra: options.extra_params };
    Ok(Arc::new(RemoteProvider::new(api, channel, remote)?))
}

/// The base URL without a trailing `/` or `/v1`: every path below starts with `/v1`.
fn base_of(url: Option<&url::Url>) -> String {
    let Some(url) = url else { return OPENAI.to_owned() };
    let text = url.as_str().trim_end_matches('/');
    text.strip_suffix("/v1").unwrap_or(text).to_owned()
}

struct OpenAiImages {
    base: String,
    format: UpstreamFormat,
    extra: Vec<String>,
}

/// A parameter OpenAI's image generation takes, and its shape.
enum Shape {
    Int(i64, i64),
    /// `"WxH"` or `"auto"`.
    Size,
    Text(usize),
    OneOf(&'static [&'static str]),
}

/// OpenAI's documented fields of `POST /v1/images/generations` (besides `model` and
/// `prompt`, which kiln sets). Which model takes which is the upstream's to say.
/// `output_format` leaves out `gif` and `svg` (and `svg`'s options): kiln keeps images it
/// can check, PNG, JPEG and WebP.
const FIELDS: &[(&str, Shape)] = &[
    ("n", Shape::Int(1, MAX_N)),
    ("size", Shape::Size),
    ("quality", Shape::OneOf(&["auto", "standard", "hd", "low", "medium", "high", "xhigh", "max"])),
    ("style", Shape::OneOf(&["vivid", "natural"])),
    ("response_format", Shape::OneOf(&["url", "b64_json"])),
    ("background", Shape::OneOf(&["auto", "transparent", "opaque"])),
    ("moderation", Shape::OneOf(&["auto", "low"])),
    ("output_format", Shape::OneOf(&["png", "jpeg", "webp"])),
    ("output_compression", Shape::Int(0, 100)),
    ("complexity", Shape::OneOf(&["low", "medium", "high"])),
    ("safety_identifier", Shape::Text(256)),
    ("user", Shape::Text(256)),
];

/// Whether `text` is `"auto"` or `"WxH"` with whole sides of 1 to 16384.
fn valid_size(text: &str) -> bool {
    if text == "auto" {
        return true;
    }
    let side = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && s.parse::<u32>().is_ok_and(|v| (1..=16384).contains(&v))
    };
    text.split_once('x').is_some_and(|(w, h)| side(w) && side(h))
}

impl OpenAiImages {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The request body's parameters from a task's, checked.
    fn check(&self, kind: TaskKind, params: &Value) -> Result<Map<String, Value>, String> {
        if kind != TaskKind::TextToImage {
            return Err(format!("This channel makes images (text_to_image), not {}.", kind.as_str()));
        }
        let Some(params) = params.as_object() else { return Err("`params` must be a JSON object.".into()) };
        let mut body = Map::new();
        for (name, value) in params {
            if self.extra.iter().any(|e| e == name) {
                body.insert(name.clone(), value.clone());
                continue;
            }
            let Some((_, shape)) = FIELDS.iter().find(|(n, _)| n == name) else {
                let mut known: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
                known.extend(self.extra.iter().map(String::as_str));
                return Err(format!("This image API does not take `{name}`; it takes {}.", known.join(", ")));
            };
            let fits = match shape {
                Shape::Int(lo, hi) => value.as_i64().is_some_and(|v| (*lo..=*hi).contains(&v)),
                Shape::Size => value.as_str().is_some_and(valid_size),
                Shape::Text(max) => value.as_str().is_some_and(|s| s.chars().count() <= *max),
                Shape::OneOf(words) => value.as_str().is_some_and(|s| words.contains(&s)),
            };
            if !fits {
                let expected = match shape {
                    Shape::Int(lo, hi) => format!("a whole number from {lo} to {hi}"),
                    Shape::Size => "\"auto\" or \"WxH\" (e.g. \"1024x1024\")".to_owned(),
                    Shape::Text(max) => format!("text of at most {max} characters"),
                    Shape::OneOf(words) => format!("one of {}", words.join(", ")),
                };
                return Err(format!("`{name}` must be {expected}."));
            }
            body.insert(name.clone(), value.clone());
        }
        Ok(body)
    }
}

/// OpenAI's error envelope; compatible servers also answer `{"error": "text"}`,
/// `{"detail": …}` or `{"message": …}`.
#[derive(Debug, Default)]
struct UpstreamError {
    message: String,
    kind: Option<String>,
    code: Option<String>,
    /// The body was JSON: an API answered, not a proxy's error page.
    from_api: bool,
}

impl UpstreamError {
    fn parse(body: &[u8]) -> Self {
        let Ok(json) = serde_json::from_slice::<Value>(body) else { return Self::default() };
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        };
        let error = &json["error"];
        let message = match error {
            Value::Object(_) => text(&error["message"]),
            Value::String(s) => Some(s.clone()),
            _ => None,
        }
        .or_else(|| text(&json["detail"]))
        .or_else(|| text(&json["message"]))
        .unwrap_or_default();
        Self { message, kind: text(&error["type"]), code: text(&error["code"]), from_api: true }
    }
}

/// The kiln failure an HTTP status and OpenAI's `type` and `code` mean. A synchronous
/// call is the job, so a 5xx (other than 503) — the upstream broke or a proxy gave up
/// while images may have been made — is an unknown outcome, never resent.
fn failure(status: StatusCode, error: &UpstreamError, key: &str) -> Failure {
    let refused = |code: &str, text: String| Failure::Refused(ProviderError::new(code, text));
    let said = |lead: &str| {
        let message = crate::input::printable(&scrub(&error.message, key), 300);
        if message.is_empty() { lead.to_owned() } else { format!("{lead} The provider says: {message}") }
    };
    let code = error.code.as_deref().unwrap_or_default();
    let kind = error.kind.as_deref().unwrap_or_default();
    match status.as_u16() {
        401 => refused("upstream_auth", "The image provider refused the API key.".into()),
        403 => refused("upstream_auth", "The image provider denied access with this API key.".into()),
        _ if code == "insufficient_quota" || kind == "insufficient_quota" || code == "billing_hard_limit_reached" => {
            refused(
                "upstream_no_credits",
                "The image provider's account is out of credits or over its spending limit.".into(),
            )
        }
        _ if matches!(code, "content_policy_violation" | "moderation_blocked")
            || kind == "image_generation_user_error" =>
        {
            refused("content_policy", said("The image provider refused the prompt under its content policy."))
        }
        429 => Failure::NotTaken(ProviderError::new(
            "upstream_rate_limited",
            "The image provider's rate limit was reached; try again later.",
        )),
        503 => Failure::NotTaken(ProviderError::new("upstream_unavailable", "The image provider is unavailable.")),
        400 | 404 | 413 | 422 => refused("upstream_invalid_params", said("The image provider refused the request.")),
        500..=599 => Failure::Unknown(format!(
            "{status} {}",
            if error.from_api { "from the image API" } else { "without the image API's envelope" }
        )),
        _ => refused("upstream_error", said("The image provider answered with an unexpected error.")),
    }
}

/// `text` without the API key, should an upstream echo it.
fn scrub(text: &str, key: &str) -> String {
    if key.len() >= 4 { text.replace(key, "[key]") } else { text.to_owned() }
}

/// The images of a successful answer, or what its failure means.
fn finished(answer: &Answer) -> Result<Finished, Failure> {
    let Some(json) = answer.json() else {
        // The upstream may have made (and billed) the images while saying something
        // unreadable.
        return Err(Failure::Unknown(format!("{} with a body that is not JSON", answer.status)));
    };
    let Some(data) = json.get("data").and_then(Value::as_array) else {
        return Err(Failure::Unknown(format!("{} without `data`", answer.status)));
    };
    if data.is_empty() {
        return Err(Failure::Refused(ProviderError::new("bad_output", "The image provider answered without images.")));
    }
    let mut files = Vec::with_capacity(data.len());
    let mut revised = Vec::with_capacity(data.len());
    for (i, item) in data.iter().enumerate() {
        let number = i + 1;
        let source = match (item.get("b64_json").and_then(Value::as_str), item.get("url").and_then(Value::as_str)) {
            (Some(b64), _) if !b64.is_empty() => Source::Inline(decode(b64, number)?),
            (_, Some(url)) if url.starts_with("data:") => Source::Inline(decode(url, number)?),
            (_, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => Source::Url(url.to_owned()),
            _ => {
                return Err(Failure::Refused(ProviderError::new(
                    "bad_output",
                    format!("The image provider's image {number} has neither `b64_json` nor a usable `url`."),
                )));
            }
        };
        files.push(RemoteFile {
            name: format!("image-{number}.png"),
            role: "image".into(),
            source,
            check: Check::Image,
        });
        revised.push(item.get("revised_prompt").and_then(Value::as_str).map(|p| crate::input::printable(p, 4000)));
    }
    let mut metadata = json!({ "provider": "openai_images" });
    if let Some(created) = json.get("created").and_then(Value::as_i64) {
        metadata["created"] = json!(created);
    }
    if revised.iter().any(Option::is_some) {
        metadata["revised_prompts"] = json!(revised);
    }
    for field in ["usage", "size", "quality", "output_format", "background"] {
        if let Some(value) = json.get(field).filter(|v| !v.is_null()) {
            metadata[field] = value.clone();
        }
    }
    if let Some(request_id) = answer.header(&REQUEST_ID) {
        metadata["upstream_request_id"] = json!(crate::input::printable(&request_id, 128));
    }
    Ok(Finished { files, metadata })
}

/// An image's bytes from base64, or from a `data:` URL's base64.
fn decode(text: &str, number: usize) -> Result<Bytes, Failure> {
    let payload = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(";base64,").map(|(_, b64)| b64).unwrap_or(""),
        None => text,
    };
    let clean: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean.as_bytes())
        .ok()
        .filter(|bytes| !bytes.is_empty())
        .map(Bytes::from)
        .ok_or_else(|| {
            Failure::Refused(ProviderError::new(
                "bad_output",
                format!("The image provider's image {number} is not valid base64."),
            ))
        })
}

#[async_trait]
impl RemoteApi for OpenAiImages {
    fn describe(&self) -> String {
        format!("OpenAI-compatible image generation ({})", self.base)
    }

    fn check_params(&self, kind: TaskKind, params: &Value) -> Result<(), String> {
        self.check(kind, params).map(|_| ())
    }

    async fn submit(&self, call: &Call<'_>, job: &Job) -> Result<Submission, Failure> {
        let mut body =
            self.check(job.kind, &job.params).map_err(|m| Failure::Refused(ProviderError::new("invalid_params", m)))?;
        let Some(prompt) = &job.prompt else {
            return Err(Failure::Refused(ProviderError::new("missing_input", "Image generation needs a prompt.")));
        };
        body.insert("model".into(), json!(job.upstream_model));
        body.insert("prompt".into(), json!(prompt));
        if !body.contains_key("response_format") {
            match self.format {
                UpstreamFormat::B64Json => body.insert("response_format".into(), json!("b64_json")),
                UpstreamFormat::Url => body.insert("response_format".into(), json!("url")),
                UpstreamFormat::None => None,
            };
        }
        let url = self.url("/v1/images/generations");
        let body = Value::Object(body);
        let make = || call.bearer(call.http.client().post(&url)).json(&body);
        let answer = call.http.send(make, Retry::UntilTaken, call.until).await.map_err(Failure::from_fault)?;
        if answer.status.is_success() {
            return finished(&answer).map(Submission::Done);
        }
        let error = UpstreamError::parse(&answer.body);
        let request_id = answer.header(&REQUEST_ID);
        // The message stays out of the cause of a refused key: some APIs quote part of it.
        let message = if matches!(answer.status.as_u16(), 401 | 403) { "" } else { error.message.as_str() };
        let detail = anyhow::anyhow!(
            "the image API answered {} type {:?} code {:?}: {} (request {request_id:?})",
            answer.status,
            error.kind,
            error.code,
            crate::input::printable(&scrub(message, call.key), 300),
        );
        Err(failure(answer.status, &error, call.key).with_cause(detail))
    }

    /// Never called: a synchronous API has no jobs to poll. Should it be, every job is
    /// unknown (and fails `upstream_job_lost`).
    async fn poll(&self, _call: &Call<'_>, _ids: &[String]) -> Result<HashMap<String, JobState>, Failure> {
        Ok(HashMap::new())
    }

    async fn health(&self, call: &Call<'_>) -> Result<(), String> {
        self.models(call).await.map(|_| ())
    }

    /// `GET /v1/models`, and how many models it listed.
    async fn test_connection(&self, call: &Call<'_>) -> Result<String, String> {
        let answer = self.models(call).await?;
        let listed = answer.json().as_ref().and_then(|v| v.get("data")).and_then(Value::as_array).map(Vec::len);
        Ok(match (answer.status.as_u16(), listed) {
            (200..=299, Some(n)) => format!("The image API took the key and lists {n} models."),
            (200..=299, None) => format!("The image API took the key (answered {}).", answer.status),
            (429, _) => "The image API answered 429 (rate limited): it is reachable; try again later.".to_owned(),
            (status, _) => format!("The image API is reachable but has no model list (GET /v1/models: {status})."),
        })
    }
}

impl OpenAiImages {
    /// `GET /v1/models`: the key must be taken. A server without a model list (404,
    /// 405) still answered, so it counts as up; so does a rate limit.
    async fn models(&self, call: &Call<'_>) -> Result<Answer, String> {
        let url = self.url("/v1/models");
        let make = || call.bearer(call.http.client().get(&url)).timeout(HEALTH_TIMEOUT);
        let answer = call.http.send(make, Retry::Idempotent, None).await.map_err(|f| f.to_string())?;
        match answer.status.as_u16() {
            200..=299 | 404 | 405 | 429 => Ok(answer),
            401 | 403 => Err("the image provider refuses the API key".into()),
            status => Err(format!("the image provider answered {status} to GET /v1/models")),
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderMap;

    use super::*;

    fn api() -> OpenAiImages {
        OpenAiImages { base: OPENAI.into(), format: UpstreamFormat::B64Json, extra: vec!["negative_prompt".into()] }
    }

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).expect("status"),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    fn class(failure: Failure) -> String {
        match failure {
            Failure::NotTaken(e) => format!("not_taken:{}", e.code),
            Failure::Refused(e) => format!("refused:{}", e.code),
            Failure::Unknown(_) => "unknown".to_owned(),
        }
    }

    #[test]
    fn the_base_url_may_end_in_v1_or_not() {
        let url = |s: &str| url::Url::parse(s).expect("url");
        assert_eq!(base_of(None), "https://api.openai.com");
        assert_eq!(base_of(Some(&url("http://127.0.0.1:4000"))), "http://127.0.0.1:4000");
        assert_eq!(base_of(Some(&url("http://127.0.0.1:4000/v1"))), "http://127.0.0.1:4000");
        assert_eq!(base_of(Some(&url("https://gw.example/openai/v1/"))), "https://gw.example/openai");
    }

    #[test]
    fn parameters_are_checked_against_openai_s_fields() {
        let api = api();
        let kind = TaskKind::TextToImage;
        assert!(api.check(kind, &json!({ "n": 2, "size": "1024x1536", "quality": "hd", "style": "vivid" })).is_ok());
        assert!(api.check(kind, &json!({ "size": "auto", "negative_prompt": { "any": "thing" } })).is_ok());
        for (bad, word) in [
            (json!({ "n": 0 }), "`n`"),
            (json!({ "n": 11 }), "`n`"),
            (json!({ "n": "2" }), "`n`"),
            (json!({ "size": "1024" }), "`size`"),
            (json!({ "size": "0x1024" }), "`size`"),
            (json!({ "size": "1024x1024x1" }), "`size`"),
            (json!({ "response_format": "png" }), "`response_format`"),
            (json!({ "steps": 20 }), "`steps`"),
        ] {
            let err = api.check(kind, &bad).expect_err(&bad.to_string());
            assert!(err.contains(word), "{bad}: {err}");
        }
        assert!(api.check(TaskKind::TextTo3d, &json!({})).is_err());
    }

    #[test]
    fn status_type_and_code_together_decide_the_failure() {
        let of = |status: u16, body: Value| {
            let error = UpstreamError::parse(body.to_string().as_bytes());
            class(failure(StatusCode::from_u16(status).expect("status"), &error, "sk-secret-key"))
        };
        let envelope = |kind: &str, code: Option<&str>| json!({ "error": { "message": "m", "type": kind, "param": null, "code": code } });
        assert_eq!(of(401, envelope("invalid_request_error", Some("invalid_api_key"))), "refused:upstream_auth");
        assert_eq!(of(400, envelope("invalid_request_error", None)), "refused:upstream_invalid_params");
        assert_eq!(
            of(400, envelope("invalid_request_error", Some("content_policy_violation"))),
            "refused:content_policy"
        );
        assert_eq!(of(400, envelope("image_generation_user_error", None)), "refused:content_policy");
        assert_eq!(of(400, envelope("invalid_request_error", Some("moderation_blocked"))), "refused:content_policy");
        assert_eq!(of(429, envelope("requests", Some("rate_limit_exceeded"))), "not_taken:upstream_rate_limited");
        assert_eq!(of(429, envelope("insufficient_quota", Some("insufficient_quota"))), "refused:upstream_no_credits");
        assert_eq!(of(503, envelope("server_error", None)), "not_taken:upstream_unavailable");
        assert_eq!(of(500, envelope("server_error", None)), "unknown", "the images may have been made");
        assert_eq!(of(502, json!("<html>bad gateway</html>")), "unknown");
        assert_eq!(of(418, json!({ "detail": "teapot" })), "refused:upstream_error");
    }

    #[test]
    fn an_upstream_message_is_shown_without_the_key() {
        let error = UpstreamError::parse(
            json!({ "error": { "message": "model x unknown for key sk-secret-key", "type": "invalid_request_error" } })
                .to_string()
                .as_bytes(),
        );
        let Failure::Refused(err) = failure(StatusCode::BAD_REQUEST, &error, "sk-secret-key") else {
            panic!("refused")
        };
        assert!(err.message.contains("model x unknown"), "{}", err.message);
        assert!(!err.message.contains("sk-secret-key"), "{}", err.message);
    }

    #[test]
    fn answers_become_images_by_url_or_base64() {
        let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nrest");
        let done = finished(&answer(
            200,
            json!({
                "created": 1_700_000_000,
                "data": [
                    { "url": "https://cdn.example/a.png", "revised_prompt": "a red vase" },
                    { "b64_json": png },
                    { "url": format!("data:image/png;base64,{png}") },
                ],
            }),
        ))
        .expect("finished");
        let names: Vec<&str> = done.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["image-1.png", "image-2.png", "image-3.png"]);
        assert!(matches!(&done.files[0].source, Source::Url(u) if u == "https://cdn.example/a.png"));
        assert!(matches!(&done.files[1].source, Source::Inline(b) if b.starts_with(b"\x89PNG")));
        assert!(matches!(&done.files[2].source, Source::Inline(b) if b.starts_with(b"\x89PNG")));
        assert!(done.files.iter().all(|f| f.role == "image" && f.check == Check::Image));
        assert_eq!(done.metadata["revised_prompts"], json!(["a red vase", null, null]));
        assert_eq!(done.metadata["created"], 1_700_000_000);
    }

    #[test]
    fn garbage_is_bad_output_and_an_unreadable_success_is_an_unknown_outcome() {
        let bad = finished(&answer(200, json!({ "data": [{ "b64_json": "!!! not base64 !!!" }] })));
        assert_eq!(class(bad.expect_err("garbage")), "refused:bad_output");
        assert_eq!(class(finished(&answer(200, json!({ "data": [] }))).expect_err("empty")), "refused:bad_output");
        assert_eq!(class(finished(&answer(200, json!({ "data": [{}] }))).expect_err("nothing")), "refused:bad_output");
        let not_json =
            Answer { status: StatusCode::OK, headers: HeaderMap::new(), body: Bytes::from_static(b"<html>") };
        assert_eq!(class(finished(&not_json).expect_err("html")), "unknown");
        assert_eq!(class(finished(&answer(200, json!({ "id": 1 }))).expect_err("no data")), "unknown");
    }
}
