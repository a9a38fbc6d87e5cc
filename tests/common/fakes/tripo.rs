//! `FakeTripo`: Tripo's apiv3 (`/v3/…`) as a real HTTP server, after
//! `/work/shared/reference/provider-apis.md` §1.1 (auth, envelopes, `X-Tripo-Trace-ID`),
//! §1.6 (endpoints, task detail, statuses), §1.7 (error codes), §1.8 (fake-server
//! checklist) and §4 traps 1–6.
//!
//! Implemented: `POST /v3/files`, `POST /v3/generation/text-to-model`,
//! `POST /v3/generation/image-to-model`, `GET /v3/tasks/{id}`, `POST /v3/tasks/list`,
//! `GET /v3/account/balance`, and the unauthenticated, signed, expiring result URLs
//! `GET /dl/{token}` (a "storage host" on the same port). Other `/v3/generation/*`
//! endpoints answer 400/2002, unknown routes 404/4001, a wrong method 405/1003.
//!
//! Every API answer, errors and `Fault::Status` included, carries `X-Tripo-Trace-ID`
//! (equal to the body's `request_id`); the "proxy" faults (`NonJson502`, `BadJson`,
//! `Raw`) and the downloads (another host in reality) do not.
//!
//! Credits: a create freezes `credits_per_task` of its key's balance; success consumes
//! them, failure and cancellation refund them.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{HeaderMap, Method, Request, Response, header, request::Parts},
};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    Call, CreateRecord, Fault, Outcome, Route, assets,
    server::{Reply, Server},
    shared::{
        Clock, Phase, Recorder, Signer, bearer, download, header_str, json as json_response, lock, read_body,
        recorder_methods, s3_error, set_header, with_fault,
    },
};

/// The key a default `TripoOptions` accepts (with 10,000 credits).
pub const TRIPO_KEY: &str = "tsk_fake_default_key";

/// The 3D model versions apiv3 accepts (§1.6).
pub const TRIPO_MODELS: &[&str] = &["v3.1-20260211", "v3.0-20250812", "v2.5-20250123", "P1-20260311"];

/// Retired versions: 400/2015.
const RETIRED_MODELS: &[&str] = &["v2.0-20240919", "v1.4-20240625", "v1.3-20240522", "Turbo-v1.0-20250506"];

/// Options P1 rejects even when `false` (§1.6).
const P1_FORBIDDEN: &[&str] = &["quad", "smart_low_poly", "generate_parts", "geometry_quality"];

const MAX_JSON: usize = 1024 * 1024;
const MAX_UPLOAD: u64 = 150 * 1024 * 1024;

/// How a `FakeTripo` behaves. `Default`: one key (`TRIPO_KEY`, 10,000 credits), 10
/// credits per task, queued 300 ms then running 1 s, result URLs valid 5 min, tasks
/// succeed, one server thread.
#[derive(Clone, Debug)]
pub struct TripoOptions {
    /// Valid keys (`tsk_…`) and their credit balances.
    pub keys: Vec<(String, i64)>,
    /// Credits a create freezes (and success consumes).
    pub credits_per_task: i64,
    /// How long a new task stays `queued` (progress 0).
    pub queued_for: Duration,
    /// How long it then stays `running` (progress 1…99) before its outcome.
    pub run_for: Duration,
    /// How long a result URL stays valid.
    pub url_ttl: Duration,
    /// The outcome of tasks with none pushed or set.
    pub default_outcome: Outcome,
    /// Worker threads of the fake's own runtime.
    pub threads: usize,
    /// Keep the call log and the create bodies (counters are kept either way); turn off
    /// for long benchmarks.
    pub record: bool,
}

impl Default for TripoOptions {
    fn default() -> Self {
        TripoOptions {
            keys: vec![(TRIPO_KEY.to_owned(), 10_000)],
            credits_per_task: 10,
            queued_for: Duration::from_millis(300),
            run_for: Duration::from_secs(1),
            url_ttl: Duration::from_secs(300),
            default_outcome: Outcome::Success,
            threads: 1,
            record: true,
        }
    }
}

impl TripoOptions {
    /// Adds a valid key with this many credits.
    pub fn key(mut self, key: &str, credits: i64) -> Self {
        self.keys.push((key.to_owned(), credits));
        self
    }

    /// Sets the timeline: `queued_for`, then `run_for`.
    pub fn timeline(mut self, queued_for: Duration, run_for: Duration) -> Self {
        self.queued_for = queued_for;
        self.run_for = run_for;
        self
    }

    /// Sets how long result URLs stay valid.
    pub fn url_ttl(mut self, ttl: Duration) -> Self {
        self.url_ttl = ttl;
        self
    }

    /// Sets the default outcome.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.default_outcome = outcome;
        self
    }

    /// Sets the number of server threads.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }
}

#[derive(Debug, Default)]
struct Account {
    balance: i64,
    frozen: i64,
}

struct Task {
    key: String,
    kind: &'static str,
    input: Value,
    created_wall: DateTime<Utc>,
    clock: Clock,
    outcome: Outcome,
    cost: i64,
    /// Credits have been consumed or refunded.
    settled: bool,
}

impl Task {
    fn phase(&self, now: Instant) -> Phase {
        self.clock.phase(now)
    }

    fn wall(&self, at: Instant) -> DateTime<Utc> {
        let since = at.saturating_duration_since(self.clock.start);
        self.created_wall + chrono::Duration::from_std(since).unwrap_or_default()
    }

    fn succeeded(&self) -> bool {
        matches!(self.outcome, Outcome::Success | Outcome::EmptyOutput | Outcome::Stuck)
    }
}

struct State {
    keys: HashMap<String, Account>,
    tasks: HashMap<String, Task>,
    order: Vec<String>,
    /// Uploaded file tokens and their sizes.
    files: HashMap<String, usize>,
    outcomes: VecDeque<Outcome>,
    default_outcome: Outcome,
}

impl State {
    /// Consumes or refunds a task's credits once it is terminal.
    fn settle(&mut self, id: &str, now: Instant) {
        let State { keys, tasks, .. } = self;
        let Some(task) = tasks.get_mut(id) else { return };
        if task.settled || !matches!(task.phase(now), Phase::Done(_)) {
            return;
        }
        task.settled = true;
        let account = keys.entry(task.key.clone()).or_default();
        account.frozen -= task.cost;
        if !task.succeeded() {
            account.balance += task.cost;
        }
    }

    fn settle_all(&mut self, now: Instant) {
        let ids: Vec<String> = self.tasks.iter().filter(|(_, t)| !t.settled).map(|(id, _)| id.clone()).collect();
        for id in ids {
            self.settle(&id, now);
        }
    }
}

struct Inner {
    rec: Recorder,
    state: Mutex<State>,
    signer: Signer,
    base: String,
    queued_for: Duration,
    run_for: Duration,
    credits_per_task: i64,
}

/// A fake Tripo apiv3 on `127.0.0.1:PORT`. Dropping it stops it.
pub struct FakeTripo {
    server: Server,
    inner: Arc<Inner>,
}

impl FakeTripo {
    /// Starts the fake on a random port, on a runtime of its own (no async context
    /// needed).
    pub fn start(opts: TripoOptions) -> FakeTripo {
        let mut slot = None;
        let server = Server::start(opts.threads, |base| {
            let inner = Arc::new(Inner {
                rec: Recorder::new(opts.record),
                state: Mutex::new(State {
                    keys: opts
                        .keys
                        .iter()
                        .map(|(k, credits)| (k.clone(), Account { balance: *credits, frozen: 0 }))
                        .collect(),
                    tasks: HashMap::new(),
                    order: Vec::new(),
                    files: HashMap::new(),
                    outcomes: VecDeque::new(),
                    default_outcome: opts.default_outcome.clone(),
                }),
                signer: Signer::new(opts.url_ttl),
                base,
                queued_for: opts.queued_for,
                run_for: opts.run_for,
                credits_per_task: opts.credits_per_task,
            });
            slot = Some(Arc::clone(&inner));
            Arc::new(move |request| {
                let inner = Arc::clone(&inner);
                Box::pin(async move { inner.handle(request).await })
            })
        });
        FakeTripo { server, inner: slot.expect("handler built") }
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
        let now = Instant::now();
        let mut state = lock(&self.inner.state);
        let Some(task) = state.tasks.get_mut(task_id) else { return false };
        if task.outcome == Outcome::Stuck {
            task.outcome = Outcome::Success;
        }
        task.clock.complete(now);
        state.settle(task_id, now);
        true
    }

    /// Ends a task now with this outcome; false if unknown.
    pub fn complete_with(&self, task_id: &str, outcome: Outcome) -> bool {
        self.set_outcome(task_id, outcome) && self.complete(task_id)
    }

    /// Ends every task that has not ended; returns how many it ended.
    pub fn complete_all(&self) -> usize {
        let now = Instant::now();
        let ids = self.task_ids();
        let mut ended = 0;
        for id in ids {
            let running = {
                let state = lock(&self.inner.state);
                state.tasks.get(&id).is_some_and(|t| !matches!(t.phase(now), Phase::Done(_)))
            };
            if running && self.complete(&id) {
                ended += 1;
            }
        }
        ended
    }

    /// The instant the task became terminal (`None` while it runs, or if unknown).
    pub fn completed_at(&self, task_id: &str) -> Option<Instant> {
        let state = lock(&self.inner.state);
        match state.tasks.get(task_id)?.phase(Instant::now()) {
            Phase::Done(at) => Some(at),
            _ => None,
        }
    }

    /// The task's status as the API reports it now (`queued`, `running`, `success`,
    /// `failed`, `cancelled`).
    pub fn status(&self, task_id: &str) -> Option<String> {
        let state = lock(&self.inner.state);
        let task = state.tasks.get(task_id)?;
        Some(status_of(task, task.phase(Instant::now())).0.to_owned())
    }

    /// Every task id, in creation order.
    pub fn task_ids(&self) -> Vec<String> {
        lock(&self.inner.state).order.clone()
    }

    /// How many tasks exist.
    pub fn task_count(&self) -> usize {
        lock(&self.inner.state).order.len()
    }

    /// The key that created the task.
    pub fn task_key(&self, task_id: &str) -> Option<String> {
        lock(&self.inner.state).tasks.get(task_id).map(|t| t.key.clone())
    }

    /// A key's `(balance, frozen)` credits, as `GET /v3/account/balance` reports them.
    pub fn balance(&self, key: &str) -> Option<(i64, i64)> {
        let mut state = lock(&self.inner.state);
        state.settle_all(Instant::now());
        state.keys.get(key).map(|a| (a.balance, a.frozen))
    }

    /// Sets a key's balance, adding the key if it is new.
    pub fn set_credits(&self, key: &str, credits: i64) {
        lock(&self.inner.state).keys.entry(key.to_owned()).or_default().balance = credits;
    }

    /// Makes a key invalid (401 from now on).
    pub fn remove_key(&self, key: &str) {
        lock(&self.inner.state).keys.remove(key);
    }

    /// How many files were uploaded (accepted uploads).
    pub fn file_count(&self) -> usize {
        lock(&self.inner.state).files.len()
    }
}

fn route_of(path: &str) -> Route {
    match path {
        "/v3/files" => Route::Upload,
        "/v3/tasks/list" => Route::List,
        "/v3/account/balance" => Route::Balance,
        p if p.starts_with("/v3/generation/") => Route::Create,
        p if p.starts_with("/v3/tasks/") => Route::Get,
        p if p.starts_with("/dl/") => Route::Download,
        _ => Route::Other,
    }
}

fn suggestion(code: i64) -> &'static str {
    match code {
        2 => "Check your API key: send `Authorization: Bearer tsk_…` with a key of this region.",
        1003 => "Check the HTTP method and the Content-Type of the request.",
        1004 => "Check the request parameters against the documentation.",
        2000 => "Reduce the request rate or the number of concurrent tasks, then retry later.",
        2001 => "Check the task id; a task can only be read with the API key that created it.",
        2002 | 2016 => "Use a supported task type.",
        2003 => "Upload a non-empty image.",
        2004 => "Upload a JPEG, PNG or WebP image.",
        2007 => "Wait for the original task to succeed.",
        2010 => "Top up your credits in the console.",
        2015 | 2017 => "Use a supported model version.",
        4001 => "Check the request path.",
        _ => "Retry later; contact support if the problem persists.",
    }
}

/// Tripo's v3 error envelope, with the trace header.
fn error(trace: &str, http: u16, code: i64, message: &str) -> Response<Body> {
    let mut response = json_response(
        http,
        &json!({
            "code": code,
            "status": "error",
            "message": message,
            "suggestion": suggestion(code),
            "request_id": trace,
        }),
    );
    set_header(&mut response, "x-tripo-trace-id", trace);
    response
}

fn success(trace: &str, data: Value) -> Response<Body> {
    let mut response = json_response(200, &json!({"code": 0, "status": "success", "data": data}));
    set_header(&mut response, "x-tripo-trace-id", trace);
    response
}

type Refusal = (u16, i64, String);

fn invalid(message: impl Into<String>) -> Refusal {
    (400, 1004, message.into())
}

fn status_of(task: &Task, phase: Phase) -> (&'static str, u8) {
    match phase {
        Phase::Queued => ("queued", 0),
        Phase::Running(progress) => ("running", progress),
        Phase::Done(_) => match task.outcome {
            Outcome::Failed { .. } => ("failed", 100),
            Outcome::Cancelled => ("cancelled", 100),
            Outcome::Success | Outcome::EmptyOutput | Outcome::Stuck => ("success", 100),
        },
    }
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn is_image(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        || bytes.starts_with(&[0xFF, 0xD8, 0xFF])
        || (bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP")
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
        let trace = Uuid::new_v4().to_string();
        let status_trace = trace.clone();
        with_fault(
            fault,
            move |http, code, message, _| error(&status_trace, http, code, message),
            |fault| async move { self.api(route, request, fault, &trace).await },
        )
        .await
    }

    async fn api(&self, route: Route, request: Request<Body>, fault: Option<Fault>, trace: &str) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let expected = match route {
            Route::Upload | Route::Create | Route::List => Method::POST,
            Route::Get | Route::Balance => Method::GET,
            _ => return error(trace, 404, 4001, &format!("No route for {} {}", parts.method, parts.uri.path())),
        };
        if parts.method != expected {
            return error(trace, 405, 1003, &format!("Method {} is not allowed here", parts.method));
        }
        let Some(key) = self.authorise(&parts.headers) else {
            return error(trace, 401, 2, "Authentication failed: missing or invalid API key.");
        };
        let expired = fault == Some(Fault::ExpiredUrls);
        let result = match route {
            Route::Upload => self.upload(&parts, body).await,
            Route::Create => self.create(&parts, body, &key).await,
            Route::Get => self.get(parts.uri.path(), &key, expired),
            Route::List => self.list(&parts, body, &key, expired).await,
            _ => Ok(self.balance(&key)),
        };
        match result {
            Ok(data) => success(trace, data),
            Err((http, code, message)) => error(trace, http, code, &message),
        }
    }

    fn authorise(&self, headers: &HeaderMap) -> Option<String> {
        let key = bearer(headers)?;
        (key.starts_with("tsk_") && lock(&self.state).keys.contains_key(&key)).then_some(key)
    }

    async fn json_body(&self, parts: &Parts, body: Body) -> Result<Map<String, Value>, Refusal> {
        let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.to_ascii_lowercase().starts_with("application/json") {
            return Err((415, 1003, "Content-Type must be application/json".into()));
        }
        let bytes = read_body(body, MAX_JSON).await.map_err(invalid)?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(invalid("The request body must be a JSON object")),
            Err(e) => Err(invalid(format!("The request body is not valid JSON: {e}"))),
        }
    }

    async fn upload(&self, parts: &Parts, body: Body) -> Result<Value, Refusal> {
        let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let Ok(boundary) = multer::parse_boundary(content_type) else {
            return Err((415, 1003, "Content-Type must be multipart/form-data with a boundary".into()));
        };
        let constraints =
            multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(MAX_UPLOAD + 64 * 1024));
        let mut multipart = multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
        let mut file: Option<Bytes> = None;
        loop {
            match multipart.next_field().await {
                Ok(Some(field)) => {
                    let is_file = field.name() == Some("file");
                    let bytes = field.bytes().await.map_err(|e| invalid(format!("Malformed multipart body: {e}")))?;
                    if is_file && file.is_none() {
                        file = Some(bytes);
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(invalid(format!("Malformed multipart body: {e}"))),
            }
        }
        let Some(file) = file else { return Err(invalid("Missing the multipart part `file`")) };
        if file.is_empty() {
            return Err((400, 2003, "The input file is empty".into()));
        }
        if !is_image(&file) {
            return Err((400, 2004, "Unsupported file type: upload a JPEG, PNG or WebP image".into()));
        }
        let token = format!("file_{}", Uuid::new_v4());
        lock(&self.state).files.insert(token.clone(), file.len());
        Ok(json!({"file_token": token}))
    }

    async fn create(&self, parts: &Parts, body: Body, key: &str) -> Result<Value, Refusal> {
        let path = parts.uri.path();
        let kind = match path {
            "/v3/generation/text-to-model" => "text_to_model",
            "/v3/generation/image-to-model" => "image_to_model",
            _ => return Err((400, 2002, format!("Task type of {path} is not supported by this server"))),
        };
        let map = self.json_body(parts, body).await?;
        let now = Instant::now();
        let mut state = lock(&self.state);
        validate(kind, &map, &state, key, now)?;
        let cost = self.credits_per_task;
        let account = state.keys.entry(key.to_owned()).or_default();
        if account.balance < cost {
            return Err((403, 2010, "Insufficient credits".into()));
        }
        account.balance -= cost;
        account.frozen += cost;
        let outcome = state.outcomes.pop_front().unwrap_or_else(|| state.default_outcome.clone());
        let id = Uuid::new_v4().to_string();
        let clock = Clock::new(self.queued_for, self.run_for, outcome == Outcome::Stuck);
        let input = Value::Object(map);
        state.tasks.insert(
            id.clone(),
            Task {
                key: key.to_owned(),
                kind,
                input: input.clone(),
                created_wall: Utc::now(),
                clock,
                outcome,
                cost,
                settled: false,
            },
        );
        state.order.push(id.clone());
        drop(state);
        self.rec.record_create(CreateRecord {
            task_id: id.clone(),
            key: key.to_owned(),
            path: path.to_owned(),
            body: input,
            request_id: header_str(&parts.headers, "x-request-id"),
            at: now,
        });
        Ok(json!({"task_id": id, "type": kind, "status": "queued"}))
    }

    fn detail(&self, state: &mut State, id: &str, now: Instant, expired: bool) -> Value {
        state.settle(id, now);
        let Some(task) = state.tasks.get(id) else { return Value::Null };
        let phase = task.phase(now);
        let (status, progress) = status_of(task, phase);
        let output = match (phase, &task.outcome) {
            (Phase::Done(_), Outcome::Success | Outcome::Stuck) => json!({
                "model_url": self.signer.url(&self.base, &format!("{id}.glb"), expired),
                "rendered_image_url": self.signer.url(&self.base, &format!("{id}.png"), expired),
            }),
            _ => json!({}),
        };
        let (error_code, error_message) = match (phase, &task.outcome) {
            (Phase::Done(_), Outcome::Failed { code, message }) => (json!(code), json!(message)),
            _ => (Value::Null, Value::Null),
        };
        let (completed_at, consumed) = match phase {
            Phase::Done(at) => (json!(iso(task.wall(at))), if task.succeeded() { task.cost } else { 0 }),
            _ => (Value::Null, 0),
        };
        json!({
            "task_id": id,
            "type": task.kind,
            "status": status,
            "input": task.input,
            "output": output,
            "progress": progress,
            "created_at": iso(task.created_wall),
            "completed_at": completed_at,
            "error_code": error_code,
            "error_message": error_message,
            "credits_consumed": consumed,
        })
    }

    fn get(&self, path: &str, key: &str, expired: bool) -> Result<Value, Refusal> {
        let id = path.trim_start_matches("/v3/tasks/");
        let now = Instant::now();
        let mut state = lock(&self.state);
        if state.tasks.get(id).is_none_or(|t| t.key != key) {
            return Err((404, 2001, "Task not found".into()));
        }
        Ok(self.detail(&mut state, id, now, expired))
    }

    async fn list(&self, parts: &Parts, body: Body, key: &str, expired: bool) -> Result<Value, Refusal> {
        let map = self.json_body(parts, body).await?;
        let Some(Value::Array(ids)) = map.get("task_ids") else {
            return Err(invalid("`task_ids` must be an array of task ids"));
        };
        if ids.len() > 100 {
            return Err(invalid("`task_ids` can hold at most 100 ids"));
        }
        let mut wanted = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(id) = id.as_str() else { return Err(invalid("`task_ids` must hold strings")) };
            wanted.push(id.to_owned());
        }
        let now = Instant::now();
        let mut state = lock(&self.state);
        let mut tasks = Map::new();
        let mut missed = Vec::new();
        for id in wanted {
            if state.tasks.get(&id).is_some_and(|t| t.key == key) {
                let detail = self.detail(&mut state, &id, now, expired);
                tasks.insert(id, detail);
            } else {
                missed.push(Value::String(id));
            }
        }
        Ok(json!({"tasks": tasks, "missed": missed}))
    }

    fn balance(&self, key: &str) -> Value {
        let mut state = lock(&self.state);
        state.settle_all(Instant::now());
        let account = state.keys.get(key);
        json!({
            "balance": account.map_or(0, |a| a.balance) as f64,
            "frozen": account.map_or(0, |a| a.frozen) as f64,
        })
    }

    fn download(&self, path: &str, query: Option<&str>, fault: Option<&Fault>) -> Response<Body> {
        let token = path.trim_start_matches("/dl/");
        if let Err(refusal) = self.signer.check(token, query) {
            return *refusal;
        }
        let Some((id, extension)) = token.rsplit_once('.') else {
            return s3_error(404, "NoSuchKey", "The specified key does not exist.");
        };
        let ready = {
            let state = lock(&self.state);
            state.tasks.get(id).is_some_and(|t| {
                matches!(t.phase(Instant::now()), Phase::Done(_))
                    && matches!(t.outcome, Outcome::Success | Outcome::Stuck)
            })
        };
        match (ready, extension) {
            (true, "glb") => download(assets::glb(), "model/gltf-binary", fault),
            (true, "png") => download(assets::png(256, 256, assets::colour_of(id)), "image/png", fault),
            _ => s3_error(404, "NoSuchKey", "The specified key does not exist."),
        }
    }
}

/// Checks a create's body (§1.2 options, §1.6 v3 rules); `Err` is (HTTP, code, message).
fn validate(kind: &str, map: &Map<String, Value>, state: &State, key: &str, now: Instant) -> Result<(), Refusal> {
    let model = match (map.get("model"), map.get("model_version")) {
        (Some(model), _) | (None, Some(model)) => model,
        (None, None) => return Err(invalid("`model` is required")),
    };
    let Some(model) = model.as_str() else { return Err(invalid("`model` must be a string")) };
    if RETIRED_MODELS.contains(&model) {
        return Err((400, 2015, format!("Model version {model} is deprecated")));
    }
    if !TRIPO_MODELS.contains(&model) {
        return Err((400, 2017, format!("Invalid model version {model}")));
    }
    if model.starts_with("P1-")
        && let Some(field) = P1_FORBIDDEN.iter().find(|f| map.contains_key(**f))
    {
        return Err(invalid(format!("`{field}` is not supported by model {model}")));
    }
    const BOOLS: &[&str] = &["texture", "pbr", "auto_size", "quad", "smart_low_poly", "generate_parts", "export_uv"];
    for field in BOOLS {
        if map.get(*field).is_some_and(|v| !v.is_boolean()) {
            return Err(invalid(format!("`{field}` must be a boolean")));
        }
    }
    for field in ["model_seed", "texture_seed"] {
        if map.get(field).is_some_and(|v| v.as_u64().is_none()) {
            return Err(invalid(format!("`{field}` must be a non-negative integer")));
        }
    }
    if map.get("face_limit").is_some_and(|v| v.as_u64().is_none_or(|n| n == 0)) {
        return Err(invalid("`face_limit` must be a positive integer"));
    }
    for field in ["texture_quality", "geometry_quality"] {
        if map.get(field).is_some_and(|v| !matches!(v.as_str(), Some("standard" | "detailed"))) {
            return Err(invalid(format!("`{field}` must be \"standard\" or \"detailed\"")));
        }
    }
    if map.get("compress").is_some_and(|v| v.as_str() != Some("geometry")) {
        return Err(invalid("`compress` must be the string \"geometry\""));
    }
    let on = |field: &str| map.get(field).and_then(Value::as_bool) == Some(true);
    if on("generate_parts") && (on("texture") || on("pbr") || on("quad")) {
        return Err(invalid("`generate_parts` cannot be combined with `texture`, `pbr` or `quad`"));
    }
    match kind {
        "text_to_model" => {
            let Some(prompt) = map.get("prompt") else { return Err(invalid("`prompt` is required")) };
            let Some(prompt) = prompt.as_str() else { return Err(invalid("`prompt` must be a string")) };
            if prompt.trim().is_empty() {
                return Err(invalid("`prompt` must not be empty"));
            }
            if prompt.chars().count() > 1024 {
                return Err(invalid("`prompt` must be at most 1024 characters"));
            }
            if let Some(negative) = map.get("negative_prompt") {
                match negative.as_str() {
                    Some(n) if n.chars().count() <= 255 => {}
                    Some(_) => return Err(invalid("`negative_prompt` must be at most 255 characters")),
                    None => return Err(invalid("`negative_prompt` must be a string")),
                }
            }
            if map.get("image_seed").is_some_and(|v| v.as_u64().is_none()) {
                return Err(invalid("`image_seed` must be a non-negative integer"));
            }
        }
        _ => {
            let Some(input) = map.get("input") else { return Err(invalid("`input` is required")) };
            let Some(input) = input.as_str() else {
                return Err(invalid("`input` must be a file token, a URL or a task id"));
            };
            if input.starts_with("file_") {
                if !state.files.contains_key(input) {
                    return Err(invalid(format!("Invalid or expired file token {input}")));
                }
            } else if input.starts_with("http://") || input.starts_with("https://") {
                // A URL: fetched upstream; the fake takes it as given.
            } else if Uuid::parse_str(input).is_ok() {
                // A bare UUID is a task reference (§4 trap 2), never a file.
                let Some(source) = state.tasks.get(input).filter(|t| t.key == key) else {
                    return Err((404, 2001, format!("Task {input} not found")));
                };
                if !matches!(source.phase(now), Phase::Done(_)) || !source.succeeded() {
                    return Err((400, 2007, "The original task has not succeeded".into()));
                }
            } else {
                return Err(invalid("`input` must be a file token (file_…), an http(s) URL or a task id"));
            }
            if map.get("enable_image_autofix").is_some_and(|v| !v.is_boolean()) {
                return Err(invalid("`enable_image_autofix` must be a boolean"));
            }
            if map.get("texture_alignment").is_some_and(|v| !matches!(v.as_str(), Some("original_image" | "geometry")))
            {
                return Err(invalid("`texture_alignment` must be \"original_image\" or \"geometry\""));
            }
            if map.get("orientation").is_some_and(|v| !matches!(v.as_str(), Some("default" | "align_image"))) {
                return Err(invalid("`orientation` must be \"default\" or \"align_image\""));
            }
        }
    }
    Ok(())
}
