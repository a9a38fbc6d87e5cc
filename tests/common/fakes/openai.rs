//! `FakeOpenAi`: an OpenAI-compatible image API (`POST /v1/images/generations`,
//! synchronous, and `GET /v1/models`) as a real HTTP server. The reference
//! (`/work/shared/reference/provider-apis.md`) has no OpenAI section; this follows
//! OpenAI's public API shapes: `{"created", "data": [{"url"} | {"b64_json"}]}` and the
//! error envelope `{"error": {"message", "type", "param", "code"}}`. §4 trap 14 applies
//! to its image URLs (`GET /dl/{token}`, signed, expiring, no auth).
//!
//! `OpenAiOptions::instant()` answers as fast as it can (no latency, one PNG and its
//! base64 computed at start), for benchmarks.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    http::{Method, Request, Response, request::Parts},
};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    Call, CreateRecord, Fault, Outcome, Route, assets,
    server::{Reply, Server},
    shared::{
        Recorder, Signer, bearer, download, header_str, json as json_response, parse_size, read_body, recorder_methods,
        s3_error, with_fault,
    },
};

/// The key a default `OpenAiOptions` accepts.
pub const OPENAI_KEY: &str = "sk-fake-default-key";

/// The models a default `OpenAiOptions` knows, and the sizes each accepts.
const KNOWN_SIZES: &[(&str, &[&str])] = &[
    ("dall-e-2", &["256x256", "512x512", "1024x1024"]),
    ("dall-e-3", &["1024x1024", "1792x1024", "1024x1792"]),
    ("gpt-image-1", &["1024x1024", "1536x1024", "1024x1536", "auto"]),
];

const MAX_JSON: usize = 1024 * 1024;
/// The size of the one picture of instant mode.
const INSTANT_SIZE: (u32, u32) = (64, 64);

/// How a `FakeOpenAi` behaves. `Default`: one key (`OPENAI_KEY`), models `dall-e-2`,
/// `dall-e-3`, `gpt-image-1`, 100 ms per request, URLs valid 60 min, one server thread.
#[derive(Clone, Debug)]
pub struct OpenAiOptions {
    /// Valid API keys; empty accepts any bearer token.
    pub keys: Vec<String>,
    /// Known models. The three OpenAI ones check their sizes; any other accepts "WxH"
    /// with sides in [64, 2048]. Empty accepts any model.
    pub models: Vec<String>,
    /// How long a generation takes before the answer.
    pub latency: Duration,
    /// No latency, and one precomputed 64×64 PNG (and its base64) whatever the size.
    pub instant: bool,
    /// How long an image URL stays valid.
    pub url_ttl: Duration,
    /// Worker threads of the fake's own runtime.
    pub threads: usize,
    /// Keep the call log and the create bodies (counters are kept either way).
    pub record: bool,
}

impl Default for OpenAiOptions {
    fn default() -> Self {
        OpenAiOptions {
            keys: vec![OPENAI_KEY.to_owned()],
            models: KNOWN_SIZES.iter().map(|(m, _)| (*m).to_owned()).collect(),
            latency: Duration::from_millis(100),
            instant: false,
            url_ttl: Duration::from_secs(3600),
            threads: 1,
            record: true,
        }
    }
}

impl OpenAiOptions {
    /// The defaults in instant mode: no latency, precomputed picture.
    pub fn instant() -> Self {
        OpenAiOptions { instant: true, latency: Duration::ZERO, ..Default::default() }
    }

    /// Adds a valid key.
    pub fn key(mut self, key: &str) -> Self {
        self.keys.push(key.to_owned());
        self
    }

    /// Adds a known model (any "WxH" size within [64, 2048]).
    pub fn model(mut self, model: &str) -> Self {
        self.models.push(model.to_owned());
        self
    }

    /// Sets the latency of a generation.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }
}

struct Inner {
    rec: Recorder,
    signer: Signer,
    base: String,
    keys: Vec<String>,
    models: Vec<String>,
    latency: Duration,
    instant: bool,
    instant_png: Bytes,
    instant_b64: Arc<str>,
}

/// A fake OpenAI-compatible image API on `127.0.0.1:PORT`. Dropping it stops it.
pub struct FakeOpenAi {
    server: Server,
    inner: Arc<Inner>,
}

impl FakeOpenAi {
    /// Starts the fake on a random port, on a runtime of its own.
    pub fn start(opts: OpenAiOptions) -> FakeOpenAi {
        let instant_png = assets::png(INSTANT_SIZE.0, INSTANT_SIZE.1, [90, 140, 200]);
        let instant_b64: Arc<str> = base64::engine::general_purpose::STANDARD.encode(&instant_png).into();
        let mut slot = None;
        let server = Server::start(opts.threads, |base| {
            let inner = Arc::new(Inner {
                rec: Recorder::new(opts.record),
                signer: Signer::new(opts.url_ttl),
                base,
                keys: opts.keys.clone(),
                models: opts.models.clone(),
                latency: if opts.instant { Duration::ZERO } else { opts.latency },
                instant: opts.instant,
                instant_png,
                instant_b64,
            });
            slot = Some(Arc::clone(&inner));
            Arc::new(move |request| {
                let inner = Arc::clone(&inner);
                Box::pin(async move { inner.handle(request).await })
            })
        });
        FakeOpenAi { server, inner: slot.expect("handler built") }
    }

    recorder_methods!();
}

fn route_of(path: &str) -> Route {
    match path {
        "/v1/images/generations" => Route::Create,
        "/v1/models" => Route::Models,
        p if p.starts_with("/dl/") => Route::Download,
        _ => Route::Other,
    }
}

/// OpenAI's error envelope.
fn error(http: u16, message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Response<Body> {
    json_response(http, &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}))
}

fn invalid(message: impl Into<String>, param: &str, code: Option<&str>) -> Response<Body> {
    error(400, &message.into(), "invalid_request_error", Some(param), code)
}

/// `invalid`, boxed.
fn refuse(message: impl Into<String>, param: &str, code: Option<&str>) -> Box<Response<Body>> {
    Box::new(invalid(message, param, code))
}

/// A `Fault::Status` in OpenAI's envelope: `type` and `code` follow the HTTP status.
fn status_error(http: u16, message: &str) -> Response<Body> {
    let (kind, code) = match http {
        429 => ("requests", Some("rate_limit_exceeded")),
        401 => ("invalid_request_error", Some("invalid_api_key")),
        404 => ("invalid_request_error", Some("model_not_found")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    error(http, message, kind, None, code)
}

impl Inner {
    async fn handle(self: Arc<Self>, request: Request<Body>) -> Reply {
        let path = request.uri().path().to_owned();
        let route = route_of(&path);
        let fault = self.rec.begin(&request, route);
        if route == Route::Download {
            let query = request.uri().query().map(str::to_owned);
            return with_fault(
                fault,
                |http, _, message, _| s3_error(http, "ServiceUnavailable", message),
                |fault| async move { self.download(&path, query.as_deref(), fault.as_ref()) },
            )
            .await;
        }
        with_fault(
            fault,
            |http, _, message, _| status_error(http, message),
            |fault| async move { self.api(route, request, fault).await },
        )
        .await
    }

    async fn api(&self, route: Route, request: Request<Body>, fault: Option<Fault>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let expected = match route {
            Route::Create => Method::POST,
            Route::Models => Method::GET,
            _ => {
                let message = format!("Invalid URL ({} {})", parts.method, parts.uri.path());
                return error(404, &message, "invalid_request_error", None, None);
            }
        };
        if parts.method != expected {
            let message = format!("Invalid method for URL ({} {})", parts.method, parts.uri.path());
            return error(405, &message, "invalid_request_error", None, None);
        }
        match bearer(&parts.headers) {
            None => {
                return error(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    "invalid_request_error",
                    None,
                    None,
                );
            }
            Some(key) if !self.keys.is_empty() && !self.keys.contains(&key) => {
                let shown: String = key.chars().take(6).collect();
                return error(
                    401,
                    &format!(
                        "Incorrect API key provided: {shown}***. You can find your API key in your account settings."
                    ),
                    "invalid_request_error",
                    None,
                    Some("invalid_api_key"),
                );
            }
            Some(_) => {}
        }
        if route == Route::Models {
            let data: Vec<Value> = self
                .models
                .iter()
                .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "system"}))
                .collect();
            return json_response(200, &json!({"object": "list", "data": data}));
        }
        self.generate(&parts, body, fault == Some(Fault::ExpiredUrls)).await
    }

    async fn generate(&self, parts: &Parts, body: Body, expired: bool) -> Response<Body> {
        let bytes = match read_body(body, MAX_JSON).await {
            Ok(bytes) => bytes,
            Err(message) => return invalid(message, "body", None),
        };
        let map = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => map,
            _ => {
                return error(
                    400,
                    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
                    "invalid_request_error",
                    None,
                    None,
                );
            }
        };
        let request = match self.validate(&map) {
            Ok(request) => request,
            Err(response) => return *response,
        };
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let id = Uuid::new_v4().simple().to_string();
        let data: Vec<Value> = (0..request.n)
            .map(|i| {
                if request.b64 {
                    let b64: Arc<str> = if self.instant {
                        Arc::clone(&self.instant_b64)
                    } else {
                        let png = assets::png(request.size.0, request.size.1, assets::colour_of(&id));
                        base64::engine::general_purpose::STANDARD.encode(&png).into()
                    };
                    json!({"b64_json": &*b64})
                } else {
                    let token = format!("{id}-{i}-{}x{}.png", request.size.0, request.size.1);
                    json!({"url": self.signer.url(&self.base, &token, expired)})
                }
            })
            .collect();
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.rec.record_create(CreateRecord {
            task_id: id,
            key: bearer(&parts.headers).unwrap_or_default(),
            path: parts.uri.path().to_owned(),
            body: Value::Object(map),
            request_id: header_str(&parts.headers, "x-request-id"),
            at: std::time::Instant::now(),
        });
        json_response(200, &json!({"created": created, "data": data}))
    }

    fn validate(&self, map: &Map<String, Value>) -> Result<Generation, Box<Response<Body>>> {
        match map.get("prompt") {
            None => {
                return Err(refuse(
                    "Missing required parameter: 'prompt'.",
                    "prompt",
                    Some("missing_required_parameter"),
                ));
            }
            Some(Value::String(p)) if p.trim().is_empty() => {
                return Err(refuse("Invalid 'prompt': empty string.", "prompt", Some("empty_string")));
            }
            Some(Value::String(p)) if p.chars().count() > 32_000 => {
                return Err(refuse(
                    "Invalid 'prompt': string too long. Expected a string with maximum length 32000.",
                    "prompt",
                    Some("string_above_max_length"),
                ));
            }
            Some(Value::String(_)) => {}
            Some(_) => {
                return Err(refuse("Invalid type for 'prompt': expected a string.", "prompt", Some("invalid_type")));
            }
        }
        let model = match map.get("model") {
            None => "dall-e-2",
            Some(Value::String(model)) => model.as_str(),
            Some(_) => {
                return Err(refuse("Invalid type for 'model': expected a string.", "model", Some("invalid_type")));
            }
        };
        if !self.models.is_empty() && !self.models.iter().any(|m| m == model) {
            let supported = self.models.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(", ");
            return Err(refuse(
                format!("Invalid value: '{model}'. Supported values are: {supported}."),
                "model",
                Some("invalid_value"),
            ));
        }
        let max_n = if model == "dall-e-3" { 1 } else { 10 };
        let n = match map.get("n") {
            None => 1,
            Some(v) => match v.as_i64() {
                Some(n) if (1..=max_n).contains(&n) => n as usize,
                Some(n) if n < 1 => {
                    return Err(refuse(
                        format!(
                            "Invalid 'n': integer below minimum value. Expected a value >= 1, but got {n} instead."
                        ),
                        "n",
                        Some("integer_below_min_value"),
                    ));
                }
                Some(n) => {
                    return Err(refuse(
                        format!(
                            "Invalid 'n': integer above maximum value. Expected a value <= {max_n}, but got {n} instead."
                        ),
                        "n",
                        Some("integer_above_max_value"),
                    ));
                }
                None => return Err(refuse("Invalid type for 'n': expected an integer.", "n", Some("invalid_type"))),
            },
        };
        let size_text = match map.get("size") {
            None => "1024x1024",
            Some(Value::String(size)) => size.as_str(),
            Some(_) => {
                return Err(refuse("Invalid type for 'size': expected a string.", "size", Some("invalid_type")));
            }
        };
        let known = KNOWN_SIZES.iter().find(|(m, _)| *m == model).map(|(_, sizes)| *sizes);
        let size = match known {
            Some(sizes) if !sizes.contains(&size_text) => None,
            _ if size_text == "auto" => Some((1024, 1024)),
            _ => parse_size(size_text).filter(|(w, h)| (64..=2048).contains(w) && (64..=2048).contains(h)),
        };
        let Some(size) = size else {
            let supported = known.map_or("'WxH' with sides from 64 to 2048".to_owned(), |s| {
                s.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ")
            });
            return Err(refuse(
                format!("Invalid value: '{size_text}'. Supported values are: {supported}."),
                "size",
                Some("invalid_value"),
            ));
        };
        let b64 = match map.get("response_format") {
            None => false,
            Some(Value::String(f)) if f == "url" => false,
            Some(Value::String(f)) if f == "b64_json" => true,
            Some(other) => {
                return Err(refuse(
                    format!("Invalid value: {other}. Supported values are: 'url' and 'b64_json'."),
                    "response_format",
                    Some("invalid_value"),
                ));
            }
        };
        Ok(Generation { n, size, b64 })
    }

    fn download(&self, path: &str, query: Option<&str>, fault: Option<&Fault>) -> Response<Body> {
        let token = path.trim_start_matches("/dl/");
        if let Err(refusal) = self.signer.check(token, query) {
            return *refusal;
        }
        let size = token.trim_end_matches(".png").rsplit_once('-').and_then(|(_, size)| parse_size(size));
        let Some((w, h)) = size else { return s3_error(404, "NoSuchKey", "The specified key does not exist.") };
        let png = if self.instant { self.instant_png.clone() } else { assets::png(w, h, assets::colour_of(token)) };
        download(png, "image/png", fault)
    }
}

/// A checked generation request.
struct Generation {
    n: usize,
    size: (u32, u32),
    b64: bool,
}
