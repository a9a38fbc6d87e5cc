//! `kiln worker`: the worker side of kiln's worker protocol (`docs/worker-protocol.md`),
//! serving the in-process `relief` engine, so that any CPU machine can join a kiln as a
//! push worker — and so that the protocol is exercised end to end by kiln's own tests.
//!
//! It takes signed dispatches (`POST /generate3d`), runs each job on the provider in the
//! background with at most `slots` at once, and reports through signed callbacks: every
//! progress report, each output as it is stored, then the final status. Callbacks are
//! retried with exponential backoff on 5xx and network errors, each attempt signed as a
//! new message; a 4xx answer stops them, and a 409 stops the job too.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::stream;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::ServerConfig,
    metrics::Metrics,
    providers::{InputImage, Job, JobContext, JobSink, Outcome, Output, Provider, Upstream},
    server::HttpServer,
    tasks::{TaskId, TaskKind},
    webhooks::{self, SigningKey, WebhookError},
    worker_protocol::{self, Accepted, Form, Health, ProgressReport, StatusReport},
};

/// The largest picture a dispatch may carry.
const MAX_DISPATCH_BYTES: usize = 64 * 1024 * 1024;
/// Callback attempts before giving up, and the backoff between them.
const CALLBACK_ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a `kiln worker` runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub bind: SocketAddr,
    pub key: SigningKey,
    /// Jobs at once; one more dispatch is answered 429.
    pub slots: u32,
    /// The longest a job may run, whatever the dispatch says.
    pub timeout: Duration,
    /// How long running jobs get to finish at shutdown.
    pub grace: Duration,
}

struct WorkerState {
    key: SigningKey,
    provider: Arc<dyn Provider>,
    slots: u32,
    timeout: Duration,
    running: Mutex<HashSet<TaskId>>,
    /// Accepted message ids, with when they were accepted, for the replay check.
    seen: Mutex<HashMap<String, Instant>>,
    client: reqwest::Client,
    jobs: TaskTracker,
    shutdown: CancellationToken,
}

type Shared = Arc<WorkerState>;

/// A bound worker, ready to serve.
pub struct WorkerServer {
    listener: TcpListener,
    state: Shared,
    grace: Duration,
}

impl WorkerServer {
    pub async fn bind(settings: WorkerSettings, provider: Arc<dyn Provider>) -> anyhow::Result<Self> {
        let server = ServerConfig::default();
        let listener = crate::server::bind(settings.bind, server.listen_backlog)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.bind))?;
        let state = Arc::new(WorkerState {
            key: settings.key,
            provider,
            slots: settings.slots.max(1),
            timeout: settings.timeout,
            running: Mutex::new(HashSet::new()),
            seen: Mutex::new(HashMap::new()),
            client: reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build()?,
            jobs: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        });
        Ok(Self { listener, state, grace: settings.grace })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serves until the shutdown token fires, then lets running jobs finish within the
    /// grace period.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self { listener, state, grace } = self;
        let app = Router::new()
            .route(&format!("/{}", worker_protocol::DISPATCH_PATH), post(dispatch))
            .route(&format!("/{}", worker_protocol::HEALTH_PATH), get(health))
            .layer(DefaultBodyLimit::max(MAX_DISPATCH_BYTES))
            .with_state(Arc::clone(&state));
        // kiln's own HTTP server, with its timeouts and connection cap: a worker's port
        // is as exposed as kiln's.
        let server = ServerConfig { shutdown_grace: grace, ..ServerConfig::default() };
        let cap = crate::server::connection_cap(server.max_connections, crate::server::raise_open_files_limit());
        let limits = crate::server::Limits::new(&server, cap);
        let http = HttpServer::new(listener, app, limits, state.shutdown.clone(), Arc::new(Metrics::new()));
        let force_close = http.force_close();
        let mut serving = tokio::spawn(http.run());
        state.shutdown.cancelled().await;
        let began = Instant::now();
        if tokio::time::timeout(grace, &mut serving).await.is_err() {
            force_close.cancel();
            let _ = serving.await;
        }
        state.jobs.close();
        if tokio::time::timeout(grace.saturating_sub(began.elapsed()), state.jobs.wait()).await.is_err() {
            tracing::warn!("jobs still running after the grace period; their tasks will time out on kiln's side");
        }
        Ok(())
    }
}

fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

impl WorkerState {
    /// Frees a job's slot (idempotent).
    fn release(&self, task_id: TaskId) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&task_id);
        }
    }

    /// Checks a request's signature and that its id is new.
    fn authenticate(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), WebhookError> {
        let now = webhooks::now_secs();
        let id = self.key.verify(headers, body, now)?;
        let mut seen = self.seen.lock().map_err(|_| WebhookError::Replayed)?;
        let horizon = Duration::from_secs((2 * webhooks::TOLERANCE_SECS) as u64);
        seen.retain(|_, at| at.elapsed() < horizon);
        if seen.insert(id, Instant::now()).is_some() {
            return Err(WebhookError::Replayed);
        }
        Ok(())
    }
}

async fn health(State(state): State<Shared>) -> Json<Health> {
    let running = state.running.lock().map(|r| r.len()).unwrap_or(0);
    Json(Health {
        status: "healthy".into(),
        models_loaded: true,
        protocol: Some(worker_protocol::VERSION),
        slots: Some(state.slots),
        running: Some(u32::try_from(running).unwrap_or(u32::MAX)),
        worker: Some("relief".into()),
        version: Some(env!("CARGO_PKG_VERSION").into()),
        ..Health::default()
    })
}

/// A dispatch's fields, once read.
struct Dispatched {
    task_id: TaskId,
    callback_url: String,
    image: Bytes,
    params: Value,
    timeout: Option<Duration>,
}

async fn read_dispatch(headers: &HeaderMap, body: Bytes) -> Result<Dispatched, String> {
    let boundary = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
        .ok_or("send multipart/form-data")?;
    let mut form = multer::Multipart::new(stream::iter([Ok::<_, std::io::Error>(body)]), boundary);
    let (mut task_id, mut callback_url, mut image, mut params, mut timeout) = (None, None, None, Value::Null, None);
    while let Some(field) = form.next_field().await.map_err(|e| format!("cannot read the form: {e}"))? {
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field.bytes().await.map_err(|e| format!("cannot read `{name}`: {e}"))?;
        let text = || String::from_utf8(bytes.to_vec()).map_err(|_| format!("`{name}` is not text"));
        match name.as_str() {
            "image" => image = Some(bytes.clone()),
            "task_id" => task_id = Some(text()?.trim().parse::<TaskId>().map_err(|_| "`task_id` is not a UUID")?),
            "callback_url" => {
                let url = url::Url::parse(text()?.trim()).map_err(|_| "`callback_url` is not a URL")?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err("`callback_url` is not an http(s) URL".into());
                }
                callback_url = Some(url.as_str().trim_end_matches('/').to_owned());
            }
            "params" => params = serde_json::from_str(&text()?).map_err(|_| "`params` is not JSON")?,
            "timeout_seconds" => {
                let secs: f64 = text()?.trim().parse().map_err(|_| "`timeout_seconds` is not a number")?;
                if secs.is_finite() && secs > 0.0 {
                    timeout = Some(Duration::from_secs_f64(secs.min(86_400.0)));
                }
            }
            // Fields of later protocol versions.
            _ => {}
        }
    }
    Ok(Dispatched {
        task_id: task_id.ok_or("`task_id` is missing")?,
        callback_url: callback_url.ok_or("`callback_url` is missing")?,
        image: image.filter(|i| !i.is_empty()).ok_or("`image` is missing or empty")?,
        params,
        timeout,
    })
}

/// Reads the picture's format and size from its header, or says why it cannot.
fn describe_image(bytes: Bytes) -> Result<InputImage, String> {
    let format = image::guess_format(&bytes).map_err(|_| "the picture is not JPEG, PNG or WebP")?;
    let (name, content_type) = match format {
        image::ImageFormat::Jpeg => ("jpeg", "image/jpeg"),
        image::ImageFormat::Png => ("png", "image/png"),
        image::ImageFormat::WebP => ("webp", "image/webp"),
        _ => return Err("the picture is not JPEG, PNG or WebP".into()),
    };
    let (width, height) = image::ImageReader::with_format(std::io::Cursor::new(&bytes[..]), format)
        .into_dimensions()
        .map_err(|_| "the picture's header cannot be read")?;
    Ok(InputImage { bytes, format: name.into(), content_type: content_type.into(), width, height })
}

async fn dispatch(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(err) = state.authenticate(&headers, &body) {
        return answer(StatusCode::UNAUTHORIZED, format!("refused: {err}"));
    }
    if state.shutdown.is_cancelled() {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let job = match read_dispatch(&headers, body).await {
        Ok(job) => job,
        Err(message) => return answer(StatusCode::BAD_REQUEST, message),
    };
    let image = match describe_image(job.image.clone()) {
        Ok(image) => image,
        Err(message) => return answer(StatusCode::BAD_REQUEST, message),
    };
    {
        let Ok(mut running) = state.running.lock() else {
            return answer(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        };
        if running.contains(&job.task_id) {
            let accepted = Accepted { status: "accepted".into(), task_id: job.task_id.to_string() };
            return (StatusCode::CONFLICT, Json(accepted)).into_response();
        }
        if running.len() >= state.slots as usize {
            return answer(StatusCode::TOO_MANY_REQUESTS, "busy: every slot is taken");
        }
        running.insert(job.task_id);
    }
    let task_id = job.task_id;
    let timeout = job.timeout.map_or(state.timeout, |t| t.min(state.timeout));
    let work = Job {
        task_id,
        kind: TaskKind::ImageTo3d,
        model: "relief".into(),
        upstream_model: "relief".into(),
        prompt: None,
        image: Some(image),
        params: job.params,
        attempt: 1,
        deadline: None,
        upstream: Upstream::None,
        client_key: None,
    };
    tracing::info!(%task_id, "job accepted");
    let runner = Arc::clone(&state);
    state.jobs.spawn(async move {
        run_job(&runner, work, job.callback_url, timeout).await;
        runner.release(task_id);
    });
    (StatusCode::ACCEPTED, Json(Accepted { status: "accepted".into(), task_id: task_id.to_string() })).into_response()
}

/// Runs one job and reports its end.
async fn run_job(state: &Shared, job: Job, callback_url: String, timeout: Duration) {
    let task_id = job.task_id;
    let cancel = CancellationToken::new();
    let sink = Arc::new(CallbackSink {
        state: Arc::clone(state),
        callback_url: callback_url.clone(),
        task_id,
        cancel: cancel.clone(),
    });
    let ctx = JobContext::new(sink, cancel.clone(), std::env::temp_dir().join("kiln-worker"));
    let provider = Arc::clone(&state.provider);
    let mut run = tokio::spawn(async move { provider.run(job, ctx).await });
    let status = tokio::select! {
        joined = &mut run => match joined {
            Ok(Ok(Outcome::Completed { .. } | Outcome::Detached)) => StatusReport {
                task_id: task_id.to_string(), status: "completed".into(), error: None, metadata: None,
            },
            Ok(Err(err)) => StatusReport {
                task_id: task_id.to_string(), status: "failed".into(), error: Some(err.message), metadata: None,
            },
            Err(_) => StatusReport {
                task_id: task_id.to_string(), status: "failed".into(), error: Some("The engine stopped unexpectedly.".into()),
                metadata: None,
            },
        },
        _ = tokio::time::sleep(timeout) => StatusReport {
            task_id: task_id.to_string(), status: "failed".into(),
            error: Some(format!("Generation timeout: the job did not finish within {} s.", timeout.as_secs())),
            metadata: None,
        },
        // kiln answered 409: the task ended there; nothing more to say.
        _ = cancel.cancelled() => {
            run.abort();
            tracing::info!(%task_id, "kiln ended the task; job stopped");
            return;
        }
    };
    cancel.cancel();
    run.abort();
    // The slot is free before kiln hears of the end: its next dispatch follows at once.
    state.release(task_id);
    let body = match serde_json::to_vec(&status) {
        Ok(body) => Bytes::from(body),
        Err(err) => {
            tracing::error!(%task_id, error = %err, "cannot encode a status");
            return;
        }
    };
    let url = format!("{callback_url}/{}", worker_protocol::STATUS_PATH);
    let outcome = deliver(state, &url, "application/json", body, CALLBACK_ATTEMPTS).await;
    tracing::info!(%task_id, status = %status.status, ?outcome, "job ended");
}

/// How a callback ended.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    Done,
    /// kiln says the task has ended: stop.
    Ended,
    /// Refused for good (another 4xx) or given up after the retries.
    Failed,
}

/// Sends one callback, signing each attempt anew, retrying 5xx and network errors with
/// exponential backoff.
async fn deliver(state: &Shared, url: &str, content_type: &str, body: Bytes, attempts: u32) -> Delivery {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=attempts {
        let signed = state.key.sign(&body);
        let mut request = state
            .client
            .post(url)
            .timeout(Duration::from_secs(120))
            .header(axum::http::header::CONTENT_TYPE, content_type);
        for (name, value) in signed.headers() {
            request = request.header(name, value);
        }
        match request.body(body.clone()).send().await {
            Ok(response) if response.status().is_success() => return Delivery::Done,
            Ok(response) if response.status() == StatusCode::CONFLICT => {
                // Only "the task has ended" stops the job; a name clash does not.
                let text = response.text().await.unwrap_or_default();
                return if text.contains("result_conflict") { Delivery::Failed } else { Delivery::Ended };
            }
            // A proxy in front of kiln may answer 429: as good as a 5xx.
            Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                tracing::warn!(url, attempt, "callback throttled; will retry")
            }
            Ok(response) if response.status().is_client_error() => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                tracing::error!(url, %status, answer = %text.chars().take(300).collect::<String>(), "callback refused");
                return Delivery::Failed;
            }
            Ok(response) => tracing::warn!(url, status = %response.status(), attempt, "callback failed; will retry"),
            Err(err) => tracing::warn!(url, error = %err, attempt, "callback failed; will retry"),
        }
        if attempt < attempts {
            // Jitter keeps many workers from retrying in step.
            let jitter = Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 100);
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    Delivery::Failed
}

/// Turns a job's reports into callbacks.
struct CallbackSink {
    state: Shared,
    callback_url: String,
    task_id: TaskId,
    cancel: CancellationToken,
}

impl CallbackSink {
    fn react(&self, delivery: Delivery) -> anyhow::Result<()> {
        match delivery {
            Delivery::Done => Ok(()),
            Delivery::Ended => {
                self.cancel.cancel();
                anyhow::bail!("kiln ended the task")
            }
            Delivery::Failed => anyhow::bail!("kiln did not take the callback"),
        }
    }
}

#[async_trait]
impl JobSink for CallbackSink {
    async fn progress(&self, progress: u8, stage: &str) -> anyhow::Result<()> {
        let report = ProgressReport {
            task_id: self.task_id.to_string(),
            progress: f64::from(progress),
            stage: Some(stage.into()),
        };
        let url = format!("{}/{}", self.callback_url, worker_protocol::PROGRESS_PATH);
        // Progress is nice to have: a couple of attempts, not the full patience.
        let delivery =
            deliver(&self.state, &url, "application/json", Bytes::from(serde_json::to_vec(&report)?), 2).await;
        match delivery {
            Delivery::Ended => self.react(delivery),
            _ => Ok(()),
        }
    }

    async fn output(&self, output: Output) -> anyhow::Result<()> {
        // The signature covers the whole body, so the file is read in to be signed.
        let mut file = output.file.file;
        let bytes = tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut bytes).map(|_| bytes)
        })
        .await??;
        let (content_type, body) =
            Form::new().text("name", &output.name).file("file", &output.name, &output.content_type, &bytes).finish();
        let url = format!("{}/{}/{}", self.callback_url, worker_protocol::RESULT_PATH, self.task_id);
        let delivery = deliver(&self.state, &url, &content_type, body, CALLBACK_ATTEMPTS).await;
        self.react(delivery)
    }

    // `kiln worker` runs in-process engines only: nothing is submitted or placed.
    async fn submitting(&self, _in_flight: bool) -> anyhow::Result<()> {
        Ok(())
    }

    async fn submitted(&self, _job_id: &str, _placement: Option<&str>) -> anyhow::Result<()> {
        Ok(())
    }

    async fn place(&self, _placement: &str) -> anyhow::Result<()> {
        Ok(())
    }
}
