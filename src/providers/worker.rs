//! `worker`: push workers — HTTP services such as the TRELLIS.2 GPU worker or
//! `kiln worker` — spoken to over kiln's worker protocol (`docs/worker-protocol.md`).
//!
//! A job is dispatched (a signed `POST {worker}/generate3d`) to the least busy healthy
//! worker of the channel and the run ends there, [`Outcome::Detached`]: the worker's
//! signed callbacks (handled by [`crate::callbacks`]) report progress, store results
//! and end the task. This module also probes every worker's health, keeps the channel's
//! availability in step with it, and hands the tasks of a worker that was lost back to
//! the dispatcher so they are dispatched again.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::Utc;
use reqwest::{StatusCode, header};
use serde::Deserialize;
use url::Url;

use serde_json::{Value, json};

use crate::{
    config::ChannelConfig,
    providers::{
        ChannelRuntime, Job, JobContext, Outcome, Provider, ProviderError,
        form::{Field, FieldType, ProviderForm, SecretField},
    },
    tasks::TaskKind,
    webhooks::SigningKey,
    worker_protocol::{self, Accepted, Form, Health},
};

/// How long a probe may take before it counts as failed.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a task waits between looks for a free worker.
const WAIT_FOR_WORKER: Duration = Duration::from_millis(500);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// The workers' base URLs, or `{ url, slots }` tables.
    workers: Vec<WorkerSpec>,
    /// The base URL workers call back; default `{public_url}/api/v1/worker-callbacks`.
    #[serde(default)]
    callback_url: Option<Url>,
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    health_interval: Duration,
    #[serde(default = "default_health_failures")]
    health_failures: u32,
    #[serde(default = "default_dispatch_timeout", with = "humantime_serde")]
    dispatch_timeout: Duration,
}

fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_failures() -> u32 {
    2
}
fn default_dispatch_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WorkerSpec {
    Url(Url),
    Detailed {
        url: Url,
        #[serde(default = "one")]
        slots: u32,
    },
}

fn one() -> u32 {
    1
}

/// One worker as kiln sees it.
struct Worker {
    /// Its base URL as configured, without a trailing slash: also the `worker` recorded
    /// on the tasks dispatched to it.
    base: String,
    slots: u32,
    healthy: AtomicBool,
    failures: AtomicU32,
    /// Skipped until then: it answered that it is busy.
    busy_until: Mutex<Option<Instant>>,
}

impl Worker {
    fn endpoint(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn is_busy(&self) -> bool {
        self.busy_until.lock().ok().and_then(|until| *until).is_some_and(|until| Instant::now() < until)
    }

    fn set_busy_for(&self, wait: Duration) {
        if let Ok(mut until) = self.busy_until.lock() {
            *until = Some(Instant::now() + wait);
        }
    }

    fn usable(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.is_busy()
    }
}

/// The provider: a handle on the pool its health loop shares.
pub struct WorkerProvider {
    pool: Arc<Pool>,
}

impl WorkerProvider {
    /// The key this channel's workers sign their callbacks with.
    pub fn signing_key(&self) -> &SigningKey {
        &self.pool.key
    }

    /// The signing key of a channel's provider, when it is a push-worker channel.
    pub fn key_of(provider: &dyn Provider) -> Option<&SigningKey> {
        (provider as &dyn std::any::Any).downcast_ref::<Self>().map(Self::signing_key)
    }
}

/// A channel's workers and how to reach them.
struct Pool {
    key: SigningKey,
    workers: Vec<Arc<Worker>>,
    callback_url: Option<String>,
    health_interval: Duration,
    health_failures: u32,
    dispatch_timeout: Duration,
    client: reqwest::Client,
    runtime: OnceLock<Arc<dyn ChannelRuntime>>,
    /// Breaks ties between equally loaded workers in turn.
    turn: AtomicUsize,
}

/// The admin console's form for a channel of push workers.
pub fn form() -> ProviderForm {
    let duration = |d: Duration| json!(humantime::format_duration(d).to_string());
    ProviderForm {
        provider: "worker".into(),
        title: "Push workers (kiln's worker protocol)".into(),
        kinds: vec![TaskKind::ImageTo3d],
        secret: Some(SecretField {
            required: true,
            label: "Signing secret".into(),
            help: "The whsec_… secret shared with the workers: dispatches and callbacks are signed with it.".into(),
        }),
        default_base_url: None,
        base_urls: Vec::new(),
        options: vec![
            Field::new("workers", FieldType::List, Value::Null, "The workers' base URLs (or { url, slots } objects).")
                .required(),
            Field::new(
                "callback_url",
                FieldType::Url,
                Value::Null,
                "The base URL workers call back; default {public_url}/api/v1/worker-callbacks.",
            ),
            Field::new(
                "health_interval",
                FieldType::Duration,
                duration(default_health_interval()),
                "How often each worker's /health is probed.",
            ),
            Field::new(
                "health_failures",
                FieldType::Integer,
                json!(default_health_failures()),
                "Failed probes in a row that take a worker out of rotation.",
            ),
            Field::new(
                "dispatch_timeout",
                FieldType::Duration,
                duration(default_dispatch_timeout()),
                "A whole dispatch request.",
            ),
        ],
    }
}

/// The registry's factory: reads and checks the channel's options and secret.
pub fn factory(channel: &ChannelConfig) -> anyhow::Result<Arc<dyn Provider>> {
    let options: Options = serde_json::from_value(serde_json::Value::Object(channel.options.clone()))
        .map_err(|e| anyhow::anyhow!("{e} (expected `workers = [\"http://host:port\", …]` and optional `callback_url`, `health_interval`, `health_failures`, `dispatch_timeout`)"))?;
    let secret = channel.secret.as_ref().ok_or_else(|| {
        anyhow::anyhow!("a worker channel needs `secret`, the signing secret it shares with its workers (`whsec_…`)")
    })?;
    let key = SigningKey::parse(secret.expose()).map_err(|message| anyhow::anyhow!("`secret` {message}"))?;
    if options.workers.is_empty() {
        anyhow::bail!("`workers` lists no worker");
    }
    let mut workers = Vec::new();
    for spec in options.workers {
        let (url, slots) = match spec {
            WorkerSpec::Url(url) => (url, 1),
            WorkerSpec::Detailed { url, slots } => (url, slots),
        };
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("worker `{url}` is not an http(s) URL");
        }
        if slots == 0 {
            anyhow::bail!("worker `{url}` has 0 slots");
        }
        workers.push(Arc::new(Worker {
            base: url.as_str().trim_end_matches('/').to_owned(),
            slots,
            healthy: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            busy_until: Mutex::new(None),
        }));
    }
    let slots: u32 = workers.iter().map(|w| w.slots).sum();
    if channel.max_concurrency > slots {
        anyhow::bail!(
            "`max_concurrency` is {} but the workers have {slots} slot(s) in all: tasks would wait for a worker while counted as running",
            channel.max_concurrency
        );
    }
    if channel.max_concurrency < slots {
        tracing::info!(
            channel = %channel.name,
            max_concurrency = channel.max_concurrency,
            slots,
            "the channel runs fewer tasks at once than its workers have slots"
        );
    }
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build()?;
    Ok(Arc::new(WorkerProvider {
        pool: Arc::new(Pool {
            key,
            workers,
            callback_url: options.callback_url.map(|u| u.as_str().trim_end_matches('/').to_owned()),
            health_interval: options.health_interval.max(Duration::from_millis(100)),
            health_failures: options.health_failures.max(1),
            dispatch_timeout: options.dispatch_timeout,
            client,
            runtime: OnceLock::new(),
            turn: AtomicUsize::new(0),
        }),
    }))
}

/// How one dispatch attempt went.
enum Dispatch {
    Accepted,
    /// Busy or not ready: try another worker, or wait.
    Busy,
    /// The worker refused the job itself; no other worker will do better.
    Refused(String),
    /// No usable answer: the worker leaves rotation.
    Unreachable(String),
}

impl Pool {
    fn callback_base(&self) -> Option<String> {
        self.callback_url.clone().or_else(|| self.runtime.get().map(|rt| rt.url(worker_protocol::CALLBACK_BASE)))
    }

    /// Usable workers with a free slot, least busy first, ties taken in turn.
    async fn candidates(&self) -> Vec<Arc<Worker>> {
        let loads: HashMap<String, u32> = match self.runtime.get() {
            Some(rt) => rt.placement_loads().await.unwrap_or_else(|err| {
                tracing::warn!(error = %err, "cannot read worker loads; assuming idle workers");
                Vec::new()
            }),
            None => Vec::new(),
        }
        .into_iter()
        .collect();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let count = self.workers.len();
        let mut free: Vec<(u32, usize, Arc<Worker>)> = self
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.usable())
            .filter_map(|(i, w)| {
                let load = loads.get(&w.base).copied().unwrap_or(0);
                (load < w.slots).then(|| (load, (i + count - turn % count) % count, Arc::clone(w)))
            })
            .collect();
        free.sort_by_key(|(load, order, _)| (*load, *order));
        free.into_iter().map(|(_, _, w)| w).collect()
    }

    async fn dispatch(&self, worker: &Worker, job: &Job, callback_url: &str) -> Dispatch {
        let Some(image) = &job.image else {
            return Dispatch::Refused("this model needs a picture".into());
        };
        let extension = match image.format.as_str() {
            "jpeg" => "jpg",
            other => other,
        };
        let mut form = Form::new()
            .file("image", &format!("input.{extension}"), &image.content_type, &image.bytes)
            .text("task_id", &job.task_id.to_string())
            .text("callback_url", callback_url);
        if job.params.as_object().is_some_and(|p| !p.is_empty()) {
            form = form.text("params", &job.params.to_string());
        }
        if let Some(deadline) = job.deadline {
            let left = (deadline - Utc::now()).num_seconds().max(1);
            form = form.text("timeout_seconds", &left.to_string());
        }
        let (content_type, body) = form.finish();
        let signed = self.key.sign(&body);
        let mut request = self
            .client
            .post(worker.endpoint(worker_protocol::DISPATCH_PATH))
            .timeout(self.dispatch_timeout)
            .header(header::CONTENT_TYPE, content_type);
        for (name, value) in signed.headers() {
            request = request.header(name, value);
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(err) => return Dispatch::Unreachable(format!("{err}")),
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match status {
            StatusCode::ACCEPTED | StatusCode::OK => match serde_json::from_str::<Accepted>(&text) {
                Ok(accepted) if accepted.task_id == job.task_id.to_string() => Dispatch::Accepted,
                _ => Dispatch::Unreachable(format!("answered {status} without accepting task {}", job.task_id)),
            },
            // Already running there (a repeated dispatch): as good as accepted.
            StatusCode::CONFLICT => Dispatch::Accepted,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Dispatch::Busy,
            StatusCode::UNAUTHORIZED => {
                tracing::error!(worker = %worker.base, "the worker refused kiln's signature: check that both use the same `secret` and that their clocks agree");
                Dispatch::Refused("The worker refused the job (signature); see the server log.".into())
            }
            s if s.is_client_error() => Dispatch::Refused(format!("The worker refused the job ({s}): {}", clip(&text))),
            s => Dispatch::Unreachable(format!("answered {s}: {}", clip(&text))),
        }
    }

    fn mark_unreachable(&self, worker: &Worker, reason: &str) {
        worker.failures.store(self.health_failures, Ordering::Relaxed);
        if worker.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(worker = %worker.base, reason, "worker out of rotation");
        }
        self.publish_availability();
    }

    fn publish_availability(&self) {
        if let Some(rt) = self.runtime.get() {
            rt.set_available(self.workers.iter().any(|w| w.healthy.load(Ordering::Relaxed)));
        }
    }

    /// Probes one worker, updates its standing, and says how that standing changed.
    async fn probe(&self, worker: &Worker) -> ProbeChange {
        let signed = self.key.sign(b"");
        let mut request = self.client.get(worker.endpoint(worker_protocol::HEALTH_PATH)).timeout(HEALTH_TIMEOUT);
        for (name, value) in signed.headers() {
            request = request.header(name, value);
        }
        let healthy = match request.send().await {
            Ok(response) if response.status().is_success() => {
                response.json::<Health>().await.is_ok_and(|h| h.status == "healthy")
            }
            _ => false,
        };
        if healthy {
            worker.failures.store(0, Ordering::Relaxed);
            if !worker.healthy.swap(true, Ordering::Relaxed) {
                tracing::info!(worker = %worker.base, "worker in rotation");
                return ProbeChange::Joined;
            }
            return ProbeChange::None;
        }
        let failures = worker.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.health_failures && worker.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(worker = %worker.base, failures, "worker failed its health checks; out of rotation");
            return ProbeChange::Lost;
        }
        // A worker already out of rotation (or never in it) may still hold tasks from
        // before a restart of kiln: hand them back on every failed probe.
        if failures >= self.health_failures { ProbeChange::StillLost } else { ProbeChange::None }
    }

    /// Asks one worker for its health (signed, as the probes do) and says what it
    /// answered, without changing its standing.
    async fn check(&self, worker: &Worker) -> Result<String, String> {
        let signed = self.key.sign(b"");
        let mut request = self.client.get(worker.endpoint(worker_protocol::HEALTH_PATH)).timeout(HEALTH_TIMEOUT);
        for (name, value) in signed.headers() {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| format!("unreachable ({e})"))?;
        let status = response.status();
        if !status.is_success() {
            // A worker that is not ready says why (a missing module, a failed warm-up …).
            let reason = response.json::<Health>().await.ok().and_then(|h| h.error);
            return Err(match reason {
                Some(reason) => format!("answered {status}: {}", reason.chars().take(400).collect::<String>()),
                None => format!("answered {status}"),
            });
        }
        let health = response.json::<Health>().await.map_err(|_| format!("answered {status} without its health"))?;
        let mut said = vec![health.status.clone()];
        if let Some(protocol) = health.protocol {
            said.push(format!("protocol {protocol}"));
        }
        if let (Some(running), Some(slots)) = (health.running, health.slots) {
            said.push(format!("{running}/{slots} running"));
        }
        let said = said.join(", ");
        if health.status == "healthy" { Ok(said) } else { Err(said) }
    }

    async fn watch(self: Arc<Self>, runtime: Arc<dyn ChannelRuntime>) {
        let stop = runtime.shutdown();
        loop {
            let pool = &*self;
            let probes = pool.workers.iter().map(|w| async move { (w, pool.probe(w).await) });
            for (worker, change) in futures::future::join_all(probes).await {
                match change {
                    ProbeChange::Joined => runtime.wake(),
                    ProbeChange::Lost | ProbeChange::StillLost => match runtime.release_placement(&worker.base).await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::warn!(worker = %worker.base, tasks = n, "tasks of a lost worker will be dispatched again")
                        }
                        Err(err) => {
                            tracing::error!(worker = %worker.base, error = %err, "cannot hand back a lost worker's tasks")
                        }
                    },
                    ProbeChange::None => {}
                }
            }
            self.publish_availability();
            tokio::select! {
                _ = tokio::time::sleep(self.health_interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

enum ProbeChange {
    None,
    Joined,
    Lost,
    StillLost,
}

fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

#[async_trait]
impl Provider for WorkerProvider {
    fn describe(&self) -> String {
        format!(
            "Push worker channel: {} worker(s) over kiln's worker protocol (signed dispatch and callbacks).",
            self.pool.workers.len()
        )
    }

    fn check_params(&self, kind: TaskKind, params: &serde_json::Value) -> Result<(), String> {
        if !kind.takes_image() {
            return Err("Workers take a picture (image_to_3d).".into());
        }
        // Model options are the worker's business; it refuses what it cannot use.
        if params.to_string().len() > 16 * 1024 {
            return Err("`params` is too large (16 KiB at most).".into());
        }
        Ok(())
    }

    fn start(&self, runtime: Arc<dyn ChannelRuntime>) {
        if self.pool.runtime.set(Arc::clone(&runtime)).is_ok() {
            tokio::spawn(Arc::clone(&self.pool).watch(runtime));
        }
    }

    fn can_start(&self) -> bool {
        self.pool.workers.iter().any(|w| w.usable())
    }

    /// Every worker's `/health`: usable when at least one is healthy.
    async fn test_connection(&self) -> Result<String, String> {
        let pool = &self.pool;
        let checks = futures::future::join_all(pool.workers.iter().map(|w| async move { (w, pool.check(w).await) }));
        let answers = checks.await;
        let healthy = answers.iter().filter(|(_, a)| a.is_ok()).count();
        let each: Vec<String> = answers
            .iter()
            .map(|(w, answer)| match answer {
                Ok(said) | Err(said) => format!("{} ({said})", w.base),
            })
            .collect();
        let line = format!("{healthy} of {} workers healthy: {}.", answers.len(), each.join("; "));
        if healthy > 0 { Ok(line) } else { Err(line) }
    }

    async fn run(&self, job: Job, ctx: JobContext) -> Result<Outcome, ProviderError> {
        let Some(callback_url) = self.pool.callback_base() else {
            return Err(ProviderError::internal(anyhow::anyhow!("the worker channel was not started")));
        };
        let mut told_waiting = false;
        loop {
            for worker in self.pool.candidates().await {
                // Recorded first, so a concurrent dispatch counts this one.
                if let Err(err) = ctx.place(&worker.base).await {
                    return Err(ProviderError::internal(err));
                }
                let started = Instant::now();
                match self.pool.dispatch(&worker, &job, &callback_url).await {
                    Dispatch::Accepted => {
                        tracing::info!(task_id = %job.task_id, worker = %worker.base, took = ?started.elapsed(), "dispatched");
                        let _ = ctx.progress(0, "dispatched").await;
                        return Ok(Outcome::Detached);
                    }
                    Dispatch::Busy => worker.set_busy_for(self.pool.health_interval),
                    Dispatch::Refused(message) => return Err(ProviderError::new("worker_rejected", message)),
                    Dispatch::Unreachable(reason) => self.pool.mark_unreachable(&worker, &reason),
                }
            }
            if !told_waiting {
                told_waiting = true;
                let _ = ctx.progress(0, "waiting_for_worker").await;
            }
            tokio::select! {
                _ = tokio::time::sleep(WAIT_FOR_WORKER) => {}
                _ = ctx.cancelled().cancelled() => return Err(ProviderError::new("canceled", "The task was canceled.")),
            }
        }
    }
}
