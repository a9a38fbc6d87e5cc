//! `FakeModelScope`: ModelScope API-Inference asynchronous image generation as a real
//! HTTP server, after `/work/shared/reference/provider-apis.md` §2.1–2.4 (auth, submit,
//! poll, quotas), §2.6 (fake-server checklist) and §4 traps 7–10.
//!
//! Implemented: `POST /v1/images/generations` (only with `X-ModelScope-Async-Mode:
//! true`), `GET /v1/tasks/{id}` (only with `X-ModelScope-Task-Type: image_generation`),
//! `GET /v1/models`, and unauthenticated, signed, expiring image URLs `GET /dl/{token}`.
//! Responses are flat (no envelope); errors are `{"errors": {"message"}, "request_id"}`,
//! except a 429, whose `request_id` sits inside `errors` (§2.4).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{HeaderMap, Method, Request, Response, request::Parts},
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    Call, CreateRecord, Fault, Outcome, Route, assets,
    server::{Reply, Server},
    shared::{
        Clock, Phase, Recorder, Signer, bearer, download, header_str, json as json_response, lock, parse_size,
        read_body, recorder_methods, s3_error, set_header, with_fault,
    },
};

/// The token a default `ModelScopeOptions` accepts.
pub const MODELSCOPE_TOKEN: &str = "ms-00000000-0000-4000-8000-00000000fa4e";

/// The models a default `ModelScopeOptions` knows (§2.2).
pub const MODELSCOPE_MODELS: &[&str] =
    &["Qwen/Qwen-Image", "Tongyi-MAI/Z-Image-Turbo", "MAILAND/majicflus_v1", "black-forest-labs/FLUX.1-Krea-dev"];

/// The exact message of a submit without `X-ModelScope-Async-Mode: true` (§2.2).
pub const SYNC_REFUSAL: &str = "image-gen task currently does not support synchronous calls. Please refer to the documentation and set header X-ModelScope-Async-Mode=true to switch to asynchronous calling mode";

const MAX_JSON: usize = 1024 * 1024;
const DEFAULT_SIZE: (u32, u32) = (1024, 1024);

/// How a `FakeModelScope` behaves. `Default`: one token (`MODELSCOPE_TOKEN`), the
/// models of `MODELSCOPE_MODELS`, pending 300 ms then running 1 s, one image per task,
/// URLs valid 5 min, no quota, tasks succeed, one server thread.
#[derive(Clone, Debug)]
pub struct ModelScopeOptions {
    /// Valid bearer tokens; empty accepts any token.
    pub tokens: Vec<String>,
    /// Known model ids (`GET /v1/models`); a submit for another model is refused with
    /// 400. Empty accepts any model.
    pub models: Vec<String>,
    /// How long a new task stays `PENDING`.
    pub queued_for: Duration,
    /// How long it then stays `RUNNING` before its outcome.
    pub run_for: Duration,
    /// How long an image URL stays valid.
    pub url_ttl: Duration,
    /// Images per successful task.
    pub images_per_task: usize,
    /// Accepted submits per model before 429 "Request limit exceeded." (`None`: no limit).
    pub model_quota: Option<u64>,
    /// The outcome of tasks with none pushed or set.
    pub default_outcome: Outcome,
    /// Worker threads of the fake's own runtime.
    pub threads: usize,
    /// Keep the call log and the create bodies (counters are kept either way).
    pub record: bool,
}

impl Default for ModelScopeOptions {
    fn default() -> Self {
        ModelScopeOptions {
            tokens: vec![MODELSCOPE_TOKEN.to_owned()],
            models: MODELSCOPE_MODELS.iter().map(|m| (*m).to_owned()).collect(),
            queued_for: Duration::from_millis(300),
            run_for: Duration::from_secs(1),
            url_ttl: Duration::from_secs(300),
            images_per_task: 1,
            model_quota: None,
            default_outcome: Outcome::Success,
            threads: 1,
            record: true,
        }
    }
}

impl ModelScopeOptions {
    /// Adds a valid token.
    pub fn token(mut self, token: &str) -> Self {
        self.tokens.push(token.to_owned());
        self
    }

    /// Sets the timeline: `queued_for` (PENDING), then `run_for` (RUNNING).
    pub fn timeline(mut self, queued_for: Duration, run_for: Duration) -> Self {
        self.queued_for = queued_for;
        self.run_for = run_for;
        self
    }

    /// Sets how long image URLs stay valid.
    pub fn url_ttl(mut self, ttl: Duration) -> Self {
        self.url_ttl = ttl;
        self
    }

    /// Sets the default outcome.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.default_outcome = outcome;
        self
    }
}

struct Task {
    model: String,
    size: (u32, u32),
    clock: Clock,
    outcome: Outcome,
}

struct State {
    tasks: HashMap<String, Task>,
    order: Vec<String>,
    accepted_per_model: HashMap<String, u64>,
    outcomes: VecDeque<Outcome>,
    default_outcome: Outcome,
}

struct Inner {
    rec: Recorder,
    state: Mutex<State>,
    signer: Signer,
    base: String,
    tokens: Vec<String>,
    models: Vec<String>,
    queued_for: Duration,
    run_for: Duration,
    images_per_task: usize,
    model_quota: Option<u64>,
}

/// A fake ModelScope API-Inference on `127.0.0.1:PORT`. Dropping it stops it.
pub struct FakeModelScope {
    server: Server,
    inner: Arc<Inner>,
}

impl FakeModelScope {
    /// Starts the fake on a random port, on a runtime of its own.
    pub fn start(opts: ModelScopeOptions) -> FakeModelScope {
        let mut slot = None;
        let server = Server::start(opts.threads, |base| {
            let inner = Arc::new(Inner {
                rec: Recorder::new(opts.record),
                state: Mutex::new(State {
                    tasks: HashMap::new(),
                    order: Vec::new(),
                    accepted_per_model: HashMap::new(),
                    outcomes: VecDeque::new(),
                    default_outcome: opts.default_outcome.clone(),
                }),
                signer: Signer::new(opts.url_ttl),
                base,
                tokens: opts.tokens.clone(),
                models: opts.models.clone(),
                queued_for: opts.queued_for,
                run_for: opts.run_for,
                images_per_task: opts.images_per_task,
                model_quota: opts.model_quota,
            });
            slot = Some(Arc::clone(&inner));
            Arc::new(move |request| {
                let inner = Arc::clone(&inner);
                Box::pin(async move { inner.handle(request).await })
            })
        });
        FakeModelScope { server, inner: slot.expect("handler built") }
    }

    recorder_methods!();

    /// The outcome of the next task created (FIFO; then the default applies).
    pub fn push_outcome(&self, outcome: Outcome) {
        lock(&self.inner.state).outcomes.push_back(outcome);
    }

    /// The outcome of tasks created from now on with none pushed.
    pub fn set_default_outcome(&self, outcome: Outcome) {
        lock(&self.inner.state).default_outcome = outcome;
    }

    /// Changes a task's outcome (`Stuck` keeps it running); false if unknown.
    pub fn set_outcome(&self, task_id: &str, outcome: Outcome) -> bool {
        let mut state = lock(&self.inner.state);
        let Some(task) = state.tasks.get_mut(task_id) else { return false };
        task.clock.set_stuck(outcome == Outcome::Stuck, Instant::now());
        task.outcome = outcome;
        true
    }

    /// Ends a task now with its outcome (`Stuck` ends as `Success`); false if unknown.
    pub fn complete(&self, task_id: &str) -> bool {
        let mut state = lock(&self.inner.state);
        let Some(task) = state.tasks.get_mut(task_id) else { return false };
        if task.outcome == Outcome::Stuck {
            task.outcome = Outcome::Success;
        }
        task.clock.complete(Instant::now());
        true
    }

    /// Ends a task now with this outcome; false if unknown.
    pub fn complete_with(&self, task_id: &str, outcome: Outcome) -> bool {
        self.set_outcome(task_id, outcome) && self.complete(task_id)
    }

    /// Ends every task that has not ended; returns how many it ended.
    pub fn complete_all(&self) -> usize {
        let now = Instant::now();
        let mut state = lock(&self.inner.state);
        let mut ended = 0;
        for task in state.tasks.values_mut() {
            if !matches!(task.clock.phase(now), Phase::Done(_)) {
                if task.outcome == Outcome::Stuck {
                    task.outcome = Outcome::Success;
                }
                task.clock.complete(now);
                ended += 1;
            }
        }
        ended
    }

    /// The instant the task became terminal (`None` while it runs, or if unknown).
    pub fn completed_at(&self, task_id: &str) -> Option<Instant> {
        match lock(&self.inner.state).tasks.get(task_id)?.clock.phase(Instant::now()) {
            Phase::Done(at) => Some(at),
            _ => None,
        }
    }

    /// The task's `task_status` now (`PENDING`, `RUNNING`, `SUCCEED`, `FAILED`).
    pub fn status(&self, task_id: &str) -> Option<String> {
        let state = lock(&self.inner.state);
        let task = state.tasks.get(task_id)?;
        Some(status_of(task, task.clock.phase(Instant::now())).to_owned())
    }

    /// Every task id, in creation order.
    pub fn task_ids(&self) -> Vec<String> {
        lock(&self.inner.state).order.clone()
    }

    /// How many tasks exist.
    pub fn task_count(&self) -> usize {
        lock(&self.inner.state).order.len()
    }
}

fn route_of(path: &str) -> Route {
    match path {
        "/v1/images/generations" => Route::Create,
        "/v1/models" => Route::Models,
        p if p.starts_with("/v1/tasks/") => Route::Get,
        p if p.starts_with("/dl/") => Route::Download,
        _ => Route::Other,
    }
}

fn status_of(task: &Task, phase: Phase) -> &'static str {
    match (phase, &task.outcome) {
        (Phase::Queued, _) => "PENDING",
        (Phase::Running(_), _) => "RUNNING",
        (Phase::Done(_), Outcome::Failed { .. } | Outcome::Cancelled) => "FAILED",
        (Phase::Done(_), _) => "SUCCEED",
    }
}

/// ModelScope's error body: `{"errors": {"message"}, "request_id"}`.
fn error(http: u16, message: &str) -> Response<Body> {
    json_response(http, &json!({"errors": {"message": message}, "request_id": Uuid::new_v4().to_string()}))
}

/// The 429 of §2.4: `request_id` inside `errors`, with `Retry-After` and the four
/// `modelscope-ratelimit-*` headers.
fn rate_limited(message: &str, retry_after: Option<u64>, model_quota: Option<u64>, used: u64) -> Response<Body> {
    let mut response =
        json_response(429, &json!({"errors": {"message": message, "request_id": Uuid::new_v4().to_string()}}));
    let model_limit = model_quota.unwrap_or(500);
    set_header(&mut response, "modelscope-ratelimit-requests-limit", "2000");
    set_header(&mut response, "modelscope-ratelimit-requests-remaining", &2000u64.saturating_sub(used).to_string());
    set_header(&mut response, "modelscope-ratelimit-model-requests-limit", &model_limit.to_string());
    set_header(&mut response, "modelscope-ratelimit-model-requests-remaining", "0");
    set_header(&mut response, "retry-after", &retry_after.unwrap_or(60).to_string());
    response
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
        let status_self = Arc::clone(&self);
        with_fault(
            fault,
            move |http, _, message, retry_after| {
                if http == 429 {
                    rate_limited(message, retry_after, status_self.model_quota, status_self.used())
                } else {
                    error(http, message)
                }
            },
            |fault| async move { self.api(route, request, fault).await },
        )
        .await
    }

    fn used(&self) -> u64 {
        lock(&self.state).accepted_per_model.values().sum()
    }

    async fn api(&self, route: Route, request: Request<Body>, fault: Option<Fault>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let expected = match route {
            Route::Create => Method::POST,
            Route::Get | Route::Models => Method::GET,
            _ => return error(404, &format!("Not Found: {} {}", parts.method, parts.uri.path())),
        };
        if parts.method != expected {
            return error(405, &format!("Method {} Not Allowed", parts.method));
        }
        if !self.authorised(&parts.headers) {
            return error(401, "Authentication failed: missing or invalid access token.");
        }
        match route {
            Route::Create => self.create(&parts, body).await,
            Route::Get => self.get(&parts, fault == Some(Fault::ExpiredUrls)),
            _ => json_response(
                200,
                &json!({
                    "object": "list",
                    "data": self.models.iter().map(|id| json!({"id": id, "object": "model", "owned_by": "modelscope"})).collect::<Vec<_>>(),
                }),
            ),
        }
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|token| self.tokens.is_empty() || self.tokens.contains(&token))
    }

    async fn create(&self, parts: &Parts, body: Body) -> Response<Body> {
        let async_mode = header_str(&parts.headers, "x-modelscope-async-mode");
        if !async_mode.is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return error(400, SYNC_REFUSAL);
        }
        let bytes = match read_body(body, MAX_JSON).await {
            Ok(bytes) => bytes,
            Err(message) => return error(400, &message),
        };
        let map = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return error(400, "The request body must be a JSON object."),
            Err(e) => return error(400, &format!("Invalid JSON body: {e}")),
        };
        let size = match validate(&map, &self.models) {
            Ok(size) => size,
            Err(message) => return error(400, &message),
        };
        let model = map.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
        let now = Instant::now();
        let mut state = lock(&self.state);
        let used = state.accepted_per_model.get(&model).copied().unwrap_or(0);
        if let Some(quota) = self.model_quota
            && used >= quota
        {
            let total = state.accepted_per_model.values().sum();
            drop(state);
            return rate_limited("Request limit exceeded.", Some(60), self.model_quota, total);
        }
        *state.accepted_per_model.entry(model.clone()).or_default() += 1;
        let outcome = state.outcomes.pop_front().unwrap_or_else(|| state.default_outcome.clone());
        let id = Uuid::new_v4().to_string();
        let clock = Clock::new(self.queued_for, self.run_for, outcome == Outcome::Stuck);
        state.tasks.insert(id.clone(), Task { model, size, clock, outcome });
        state.order.push(id.clone());
        drop(state);
        let key = bearer(&parts.headers).unwrap_or_default();
        self.rec.record_create(CreateRecord {
            task_id: id.clone(),
            key,
            path: parts.uri.path().to_owned(),
            body: Value::Object(map),
            request_id: header_str(&parts.headers, "x-request-id"),
            at: now,
        });
        json_response(200, &json!({"task_id": id, "request_id": Uuid::new_v4().to_string()}))
    }

    fn get(&self, parts: &Parts, expired: bool) -> Response<Body> {
        let task_type = header_str(&parts.headers, "x-modelscope-task-type");
        if task_type.as_deref().map(str::trim) != Some("image_generation") {
            return error(400, "Missing or invalid header X-ModelScope-Task-Type: set it to image_generation.");
        }
        let id = parts.uri.path().trim_start_matches("/v1/tasks/");
        let state = lock(&self.state);
        let Some(task) = state.tasks.get(id) else { return error(404, &format!("Task {id} not found.")) };
        let phase = task.clock.phase(Instant::now());
        let request_id = Uuid::new_v4().to_string();
        let mut body = json!({"task_id": id, "task_status": status_of(task, phase), "request_id": request_id});
        if let Phase::Done(_) = phase {
            match &task.outcome {
                Outcome::Success | Outcome::Stuck => {
                    let urls: Vec<String> = (0..self.images_per_task)
                        .map(|i| self.signer.url(&self.base, &format!("{id}-{i}.png"), expired))
                        .collect();
                    body["output_images"] = json!(urls);
                }
                Outcome::EmptyOutput => body["output_images"] = json!([]),
                Outcome::Failed { code, message } => {
                    body["errors"] = if *code == 0 {
                        json!({"message": message})
                    } else {
                        json!({"message": message, "code": code})
                    };
                }
                Outcome::Cancelled => body["errors"] = json!({"message": "task cancelled"}),
            }
        }
        json_response(200, &body)
    }

    fn download(&self, path: &str, query: Option<&str>, fault: Option<&Fault>) -> Response<Body> {
        let token = path.trim_start_matches("/dl/");
        if let Err(refusal) = self.signer.check(token, query) {
            return *refusal;
        }
        let id = token.trim_end_matches(".png").rsplit_once('-').map(|(id, _)| id).unwrap_or_default();
        let size = {
            let state = lock(&self.state);
            state
                .tasks
                .get(id)
                .filter(|t| {
                    matches!(t.clock.phase(Instant::now()), Phase::Done(_))
                        && matches!(t.outcome, Outcome::Success | Outcome::Stuck)
                })
                .map(|t| t.size)
        };
        match size {
            Some((w, h)) => download(assets::png(w, h, assets::colour_of(id)), "image/png", fault),
            None => s3_error(404, "NoSuchKey", "The specified key does not exist."),
        }
    }
}

/// Checks a submit's body (§2.2); returns the image size, or the refusal's message.
fn validate(map: &Map<String, Value>, models: &[String]) -> Result<(u32, u32), String> {
    let model = match map.get("model") {
        None => return Err("model is required.".into()),
        Some(Value::String(model)) if !model.trim().is_empty() => model,
        Some(_) => return Err("model must be a non-empty string.".into()),
    };
    if !models.is_empty() && !models.contains(model) {
        return Err(format!("Invalid model id: {model} is not supported for image generation."));
    }
    match map.get("prompt") {
        None => return Err("prompt is required.".into()),
        Some(Value::String(p)) if p.trim().is_empty() => return Err("prompt must not be empty.".into()),
        Some(Value::String(p)) if p.chars().count() >= 2000 => {
            return Err("prompt must be shorter than 2000 characters.".into());
        }
        Some(Value::String(_)) => {}
        Some(_) => return Err("prompt must be a string.".into()),
    }
    match map.get("negative_prompt") {
        None => {}
        Some(Value::String(p)) if p.chars().count() < 2000 => {}
        Some(_) => return Err("negative_prompt must be a string shorter than 2000 characters.".into()),
    }
    let size = match map.get("size") {
        None => DEFAULT_SIZE,
        Some(Value::String(s)) => match parse_size(s) {
            Some((w, h)) if (64..=2048).contains(&w) && (64..=2048).contains(&h) => (w, h),
            _ => return Err(format!("size must be \"WxH\" with each side in [64, 2048], got {s:?}.")),
        },
        Some(_) => return Err("size must be a string \"WxH\".".into()),
    };
    if map.get("seed").is_some_and(|v| v.as_i64().is_none_or(|n| !(0..=i64::from(i32::MAX)).contains(&n))) {
        return Err("seed must be an integer in [0, 2147483647].".into());
    }
    if map.get("steps").is_some_and(|v| v.as_i64().is_none_or(|n| !(1..=100).contains(&n))) {
        return Err("steps must be an integer in [1, 100].".into());
    }
    if map.get("guidance").is_some_and(|v| v.as_f64().is_none_or(|g| !(1.5..=20.0).contains(&g))) {
        return Err("guidance must be a number in [1.5, 20].".into());
    }
    if map.get("image_url").is_some_and(|v| !v.is_string()) {
        return Err("image_url must be a string.".into());
    }
    match map.get("loras") {
        None => {}
        Some(Value::String(id)) if !id.trim().is_empty() => {}
        Some(Value::Object(weights)) => {
            if weights.is_empty() || weights.len() > 6 {
                return Err("loras must name from 1 to 6 LoRA ids.".into());
            }
            let mut sum = 0.0;
            for (id, weight) in weights {
                match weight.as_f64() {
                    Some(w) if w.is_finite() && w >= 0.0 => sum += w,
                    _ => return Err(format!("The weight of LoRA {id} must be a non-negative number.")),
                }
            }
            if (sum - 1.0).abs() > 1e-6 {
                return Err(format!("The LoRA weights must sum to 1.0, got {sum}."));
            }
        }
        Some(_) => return Err("loras must be a LoRA id or a map of LoRA ids to weights.".into()),
    }
    Ok(size)
}
