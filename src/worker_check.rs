//! `kiln worker-check`: the conformance suite of the worker protocol
//! (`docs/worker-protocol.md`). It plays kiln against any worker URL — dispatching
//! signed jobs and receiving the worker's callbacks on a local HTTP server of its own —
//! and reports, check by check, whether the worker keeps the protocol: health, refusal
//! of unsigned, wrongly signed, stale and replayed dispatches, busy answers, repeated
//! task ids, signed callbacks in order with a valid GLB, retries after a 5xx, stopping
//! after a 409, and a clean failure for a picture it cannot use.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use futures::{future::join_all, stream};
use image::{Rgb, RgbImage};
use reqwest::header;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    tasks::TaskId,
    webhooks::{self, SigningKey},
    worker_protocol::{self, Form, Health, ProgressReport, StatusReport},
};

/// What to check and how.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    /// The worker's base URL.
    pub worker: String,
    pub key: SigningKey,
    /// The picture to send; a synthetic one when `None`.
    pub image: Option<Bytes>,
    /// The address the worker can reach this checker's callback server on.
    pub callback_host: IpAddr,
    /// How long one job may take.
    pub job_timeout: Duration,
    /// How long to wait for the worker to become healthy (its model loading).
    pub ready_timeout: Duration,
}

/// One check's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// Every verdict, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub verdicts: Vec<Verdict>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.verdicts.is_empty() && self.verdicts.iter().all(|v| v.passed)
    }

    fn record(&mut self, name: &'static str, result: Result<String, String>) {
        let (passed, detail) = match result {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        self.verdicts.push(Verdict { name, passed, detail });
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for v in &self.verdicts {
            writeln!(f, "{} {:<52} {}", if v.passed { "PASS" } else { "FAIL" }, v.name, v.detail)?;
        }
        let failed = self.verdicts.iter().filter(|v| !v.passed).count();
        writeln!(f, "{} checks, {} failed", self.verdicts.len(), failed)
    }
}

/// A callback as the checker's server received it.
#[derive(Debug, Clone)]
struct Received {
    kind: Kind,
    message_id: Option<String>,
    signed: Result<(), String>,
    /// What the checker answered.
    answered: u16,
    at: Instant,
}

#[derive(Debug, Clone)]
enum Kind {
    Progress(f64),
    Result { name: String, bytes: Bytes },
    Status { status: String, error: Option<String> },
    Malformed(String),
}

/// How the checker's server answers a task's callbacks.
#[derive(Debug, Clone, Copy, Default)]
enum Behaviour {
    #[default]
    Accept,
    /// The first result callback gets 503; later ones are accepted.
    FailFirstResult,
    /// Every callback gets 409 (the task "ended" on kiln's side).
    Ended,
}

#[derive(Default)]
struct Inbox {
    received: HashMap<String, Vec<Received>>,
    behaviour: HashMap<String, Behaviour>,
    failed_once: HashMap<String, bool>,
}

struct Receiver {
    key: SigningKey,
    inbox: Mutex<Inbox>,
}

type Shared = Arc<Receiver>;

impl Receiver {
    fn answer_for(&self, task: &str, is_result: bool) -> StatusCode {
        let Ok(mut inbox) = self.inbox.lock() else { return StatusCode::INTERNAL_SERVER_ERROR };
        match inbox.behaviour.get(task).copied().unwrap_or_default() {
            Behaviour::Accept => StatusCode::OK,
            Behaviour::Ended => StatusCode::CONFLICT,
            Behaviour::FailFirstResult if is_result && !inbox.failed_once.get(task).copied().unwrap_or(false) => {
                inbox.failed_once.insert(task.to_owned(), true);
                StatusCode::SERVICE_UNAVAILABLE
            }
            Behaviour::FailFirstResult => StatusCode::OK,
        }
    }

    fn store(&self, task: &str, received: Received) {
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.received.entry(task.to_owned()).or_default().push(received);
        }
    }

    fn received(&self, task: &str) -> Vec<Received> {
        self.inbox.lock().map(|i| i.received.get(task).cloned().unwrap_or_default()).unwrap_or_default()
    }

    fn behave(&self, task: &str, behaviour: Behaviour) {
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.behaviour.insert(task.to_owned(), behaviour);
        }
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> (Option<String>, Result<(), String>) {
        let id = headers.get(webhooks::ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let signed = self.key.verify(headers, body, webhooks::now_secs()).map(|_| ()).map_err(|e| e.to_string());
        (id, signed)
    }
}

async fn on_json(State(rx): State<Shared>, headers: HeaderMap, body: Bytes, progress: bool) -> StatusCode {
    let (message_id, signed) = rx.verify(&headers, &body);
    let (task, kind) = if progress {
        match serde_json::from_slice::<ProgressReport>(&body) {
            Ok(r) => (r.task_id, Kind::Progress(r.progress)),
            Err(e) => (String::new(), Kind::Malformed(e.to_string())),
        }
    } else {
        match serde_json::from_slice::<StatusReport>(&body) {
            Ok(r) => (r.task_id, Kind::Status { status: r.status, error: r.error }),
            Err(e) => (String::new(), Kind::Malformed(e.to_string())),
        }
    };
    let answer = if signed.is_ok() { rx.answer_for(&task, false) } else { StatusCode::UNAUTHORIZED };
    rx.store(&task, Received { kind, message_id, signed, answered: answer.as_u16(), at: Instant::now() });
    answer
}

async fn on_progress(state: State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    on_json(state, headers, body, true).await
}

async fn on_status(state: State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    on_json(state, headers, body, false).await
}

async fn on_result(State(rx): State<Shared>, Path(task): Path<String>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let (message_id, signed) = rx.verify(&headers, &body);
    let kind = match read_result(&headers, body).await {
        Ok((name, bytes)) => Kind::Result { name, bytes },
        Err(e) => Kind::Malformed(e),
    };
    let answer = if signed.is_ok() { rx.answer_for(&task, true) } else { StatusCode::UNAUTHORIZED };
    rx.store(&task, Received { kind, message_id, signed, answered: answer.as_u16(), at: Instant::now() });
    answer
}

async fn read_result(headers: &HeaderMap, body: Bytes) -> Result<(String, Bytes), String> {
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
        .ok_or("not multipart/form-data")?;
    let mut form = multer::Multipart::new(stream::iter([Ok::<_, std::io::Error>(body)]), boundary);
    let (mut name, mut file) = (None, None);
    while let Some(field) = form.next_field().await.map_err(|e| e.to_string())? {
        match field.name() {
            Some("name") => name = Some(field.text().await.map_err(|e| e.to_string())?),
            Some("file") => file = Some(field.bytes().await.map_err(|e| e.to_string())?),
            _ => {}
        }
    }
    Ok((name.ok_or("no `name` field")?, file.ok_or("no `file` field")?))
}

/// A synthetic picture with an obvious object: a red disc on white.
pub fn synthetic_picture() -> Bytes {
    let mut img = RgbImage::from_pixel(256, 256, Rgb([250, 250, 250]));
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (dx, dy) = (x as f32 - 128.0, y as f32 - 128.0);
        if dx * dx + dy * dy < 80.0 * 80.0 {
            *px = Rgb([200, (y / 2) as u8, 40]);
        }
    }
    let mut out = Vec::new();
    // Encoding a fixed in-memory picture cannot fail; an empty picture would fail the checks loudly.
    let _ = img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png);
    Bytes::from(out)
}

/// What a worker's warm-up measured, in a few words: time, peak VRAM, card, settings.
fn warmup_summary(warmup: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(seconds) = warmup["seconds"].as_f64() {
        parts.push(format!("{seconds:.1} s"));
    }
    if let Some(mib) = warmup["peak_vram_mib"].as_u64() {
        parts.push(format!("peak VRAM {:.1} GiB", mib as f64 / 1024.0));
    }
    if let Some(device) = warmup["device"].as_str() {
        parts.push(format!("on {device}"));
    }
    if let Some(settings) = warmup.get("settings") {
        parts.push(format!("settings {settings}"));
    }
    format!("warm-up {}", parts.join(", "))
}

/// A health answer that is not ready, with the worker's own reason when it gives one.
fn not_ready(status: u16, health: &Health) -> String {
    match &health.error {
        Some(error) => {
            format!(
                "answered {status} with status `{}`: {}",
                health.status,
                error.chars().take(800).collect::<String>()
            )
        }
        None => format!("answered {status} with status `{}`", health.status),
    }
}

/// Whether bytes are a GLB whose header agrees with its length.
fn valid_glb(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 20 || &bytes[..4] != b"glTF" {
        return Err("no `glTF` magic".into());
    }
    let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if word(4) != 2 {
        return Err(format!("glTF version {}, not 2", word(4)));
    }
    if word(8) as usize != bytes.len() {
        return Err(format!("header says {} bytes, file has {}", word(8), bytes.len()));
    }
    if &bytes[16..20] != b"JSON" {
        return Err("the first chunk is not JSON".into());
    }
    Ok(())
}

struct Checker {
    settings: CheckSettings,
    client: reqwest::Client,
    callback_url: String,
    rx: Shared,
    image: Bytes,
}

/// How a dispatch was answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Checker {
    fn form(&self, task: &str, image: &Bytes) -> (String, Bytes) {
        Form::new()
            .file("image", "input.png", "image/png", image)
            .text("task_id", task)
            .text("callback_url", &self.callback_url)
            .text("timeout_seconds", &self.settings.job_timeout.as_secs().to_string())
            .finish()
    }

    async fn post(&self, content_type: &str, body: Bytes, headers: &[(&'static str, String)]) -> Answer {
        let url = format!("{}/{}", self.settings.worker, worker_protocol::DISPATCH_PATH);
        let mut request =
            self.client.post(url).timeout(Duration::from_secs(30)).header(header::CONTENT_TYPE, content_type);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        match request.body(body).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                Answer { status, body: response.text().await.unwrap_or_default() }
            }
            Err(err) => Answer { status: 0, body: err.to_string() },
        }
    }

    async fn dispatch(&self, task: &str, image: &Bytes) -> Answer {
        let (content_type, body) = self.form(task, image);
        let signed = self.settings.key.sign(&body);
        self.post(&content_type, body, &signed.headers()).await
    }

    async fn health(&self) -> Result<(u16, Health), String> {
        let url = format!("{}/{}", self.settings.worker, worker_protocol::HEALTH_PATH);
        let signed = self.settings.key.sign(b"");
        let mut request = self.client.get(url).timeout(Duration::from_secs(10));
        for (name, value) in signed.headers() {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let health =
            response.json::<Health>().await.map_err(|e| format!("answered {status} without health JSON: {e}"))?;
        Ok((status, health))
    }

    /// Waits for a task's final status callback (or the job timeout).
    async fn wait_status(&self, task: &str) -> Option<Received> {
        let until = Instant::now() + self.settings.job_timeout;
        while Instant::now() < until {
            if let Some(status) = self.rx.received(task).into_iter().find(|r| matches!(r.kind, Kind::Status { .. })) {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Waits until the worker reports no running job (after jobs were stopped).
    async fn wait_idle(&self) {
        let until = Instant::now() + self.settings.job_timeout;
        while Instant::now() < until {
            if let Ok((200, health)) = self.health().await
                && health.running.unwrap_or(0) == 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn accepted(answer: &Answer, task: &str) -> Result<(), String> {
    if answer.status != 202 {
        return Err(format!("answered {} {}", answer.status, clip(&answer.body)));
    }
    let json: Value =
        serde_json::from_str(&answer.body).map_err(|_| format!("202 without JSON: {}", clip(&answer.body)))?;
    if json["status"] != "accepted" || json["task_id"] != task {
        return Err(format!("202 with {json}, expected status `accepted` and task_id {task}"));
    }
    Ok(())
}

fn clip(text: &str) -> String {
    text.chars().take(160).collect()
}

fn new_task() -> String {
    TaskId::new().to_string()
}

/// Everything about one finished job's callbacks that the protocol requires.
fn judge_callbacks(received: &[Received]) -> Result<String, String> {
    if received.is_empty() {
        return Err("no callback arrived".into());
    }
    let mut ids = std::collections::HashSet::new();
    for r in received {
        r.signed.clone().map_err(|e| format!("a callback was not properly signed: {e}"))?;
        let id = r.message_id.clone().unwrap_or_default();
        if !ids.insert(id.clone()) {
            return Err(format!("the webhook-id `{id}` was used twice"));
        }
        if let Kind::Malformed(e) = &r.kind {
            return Err(format!("a malformed callback: {e}"));
        }
    }
    let progress: Vec<f64> =
        received.iter().filter_map(|r| if let Kind::Progress(p) = r.kind { Some(p) } else { None }).collect();
    if let Some(bad) = progress.iter().find(|p| !(0.0..=100.0).contains(*p)) {
        return Err(format!("progress {bad} is outside 0–100"));
    }
    let statuses: Vec<&Received> = received.iter().filter(|r| matches!(r.kind, Kind::Status { .. })).collect();
    let [status] = statuses.as_slice() else {
        return Err(format!("{} status callbacks, expected one", statuses.len()));
    };
    if let Kind::Status { status, error } = &status.kind
        && status != "completed"
    {
        return Err(format!("status `{status}` ({})", error.clone().unwrap_or_default()));
    }
    let results: Vec<&Received> = received.iter().filter(|r| matches!(r.kind, Kind::Result { .. })).collect();
    if results.iter().any(|r| r.at > status.at) {
        return Err("a result arrived after the status".into());
    }
    let mut names = Vec::new();
    let mut glb = None;
    for r in &results {
        if let Kind::Result { name, bytes } = &r.kind {
            if !worker_protocol::valid_file_name(name) {
                return Err(format!("the result name `{name}` is not allowed"));
            }
            if name.to_ascii_lowercase().ends_with(".glb") {
                glb = Some((name.clone(), bytes.clone()));
            }
            names.push(format!("{name} ({} B)", bytes.len()));
        }
    }
    let (name, bytes) = glb.ok_or_else(|| format!("no .glb result among {names:?}"))?;
    valid_glb(&bytes).map_err(|e| format!("{name}: {e}"))?;
    Ok(format!("{} progress, results {}, then `completed`", progress.len(), names.join(", ")))
}

/// Runs every check against the worker.
pub async fn run(settings: CheckSettings) -> anyhow::Result<Report> {
    let rx = Arc::new(Receiver { key: settings.key.clone(), inbox: Mutex::new(Inbox::default()) });
    let app = Router::new()
        .route("/cb/progress", post(on_progress))
        .route("/cb/status", post(on_status))
        .route("/cb/result/{task}", post(on_result))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024 * 1024))
        .with_state(Arc::clone(&rx));
    let listener = TcpListener::bind(SocketAddr::new(settings.callback_host, 0)).await?;
    let local = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { server_stop.cancelled().await }).await
    });
    let host = match settings.callback_host {
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let checker = Checker {
        image: settings.image.clone().unwrap_or_else(synthetic_picture),
        callback_url: format!("http://{host}:{}/cb", local.port()),
        client: reqwest::Client::new(),
        settings: CheckSettings { worker: settings.worker.trim_end_matches('/').to_owned(), ..settings },
        rx,
    };
    let report = checks(&checker).await;
    stop.cancel();
    let _ = server.await;
    Ok(report)
}

async fn checks(c: &Checker) -> Report {
    let mut report = Report::default();

    // Health, waiting for a model that is still loading.
    let until = Instant::now() + c.settings.ready_timeout;
    let health = loop {
        match c.health().await {
            Ok((200, health)) if health.status == "healthy" && health.models_loaded => break Ok(health),
            Ok((200, health)) => {
                break Err(format!("200 with status `{}`, models_loaded {}", health.status, health.models_loaded));
            }
            // Unhealthy is the worker's verdict on itself (a failed load or warm-up): waiting
            // would only delay the reason.
            Ok((status, health)) if health.status == "unhealthy" => break Err(not_ready(status, &health)),
            Ok((503, _)) | Err(_) if Instant::now() < until => tokio::time::sleep(Duration::from_millis(250)).await,
            Ok((status, health)) => break Err(not_ready(status, &health)),
            Err(e) => break Err(e),
        }
    };
    let slots = health.as_ref().ok().and_then(|h| h.slots).unwrap_or(1).max(1);
    report.record(
        "health answers 200 healthy with models_loaded",
        health.map(|h| {
            let warmup = h.warmup.as_ref().map(|w| format!(", {}", warmup_summary(w))).unwrap_or_default();
            format!("protocol {:?}, slots {slots}, worker {:?}{warmup}", h.protocol, h.worker)
        }),
    );
    if !report.passed() {
        return report;
    }

    // Signatures on dispatch.
    let task = new_task();
    let (content_type, body) = c.form(&task, &c.image);
    let unsigned = c.post(&content_type, body.clone(), &[]).await;
    report.record("an unsigned dispatch is refused with 401", expect_401(&unsigned));
    let stranger = SigningKey::parse(&format!(
        "whsec_{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"not the channel's secret, a stranger's")
    ));
    let wrong = match stranger {
        Ok(key) => c.post(&content_type, body.clone(), &key.sign(&body).headers()).await,
        Err(e) => Answer { status: 0, body: e },
    };
    report.record("a dispatch signed with another secret gets 401", expect_401(&wrong));
    let stale = c.settings.key.sign_with("msg_stale_check", webhooks::now_secs() - 10 * 60, &body);
    let stale = c.post(&content_type, body.clone(), &stale.headers()).await;
    report.record("a dispatch signed 10 minutes ago gets 401", expect_401(&stale));

    // A job, and its replay.
    let signed = c.settings.key.sign(&body);
    let first = c.post(&content_type, body.clone(), &signed.headers()).await;
    report.record("a signed dispatch is accepted with 202", accepted(&first, &task).map(|_| "accepted".into()));
    let replay = c.post(&content_type, body.clone(), &signed.headers()).await;
    report.record("the same signed message again gets 401 (replay)", expect_401(&replay));
    let done = c.wait_status(&task).await;
    report.record(
        "callbacks are signed, in order, with a valid GLB",
        match done {
            Some(_) => judge_callbacks(&c.rx.received(&task)),
            None => Err(format!("no status callback within {:?}", c.settings.job_timeout)),
        },
    );
    c.wait_idle().await;

    // A repeated task id while it runs.
    let task = new_task();
    let first = c.dispatch(&task, &c.image).await;
    let again = c.dispatch(&task, &c.image).await;
    report.record(
        "the same task id while it runs gets 409 (or 202)",
        match (accepted(&first, &task), again.status) {
            (Err(e), _) => Err(format!("first dispatch: {e}")),
            (Ok(()), 409 | 202) => Ok(format!("answered {}", again.status)),
            (Ok(()), s) => Err(format!("answered {s} {}", clip(&again.body))),
        },
    );
    let _ = c.wait_status(&task).await;
    c.wait_idle().await;

    // Busy: one more job than slots, all at once.
    let tasks: Vec<String> = (0..=slots).map(|_| new_task()).collect();
    let answers = join_all(tasks.iter().map(|t| c.dispatch(t, &c.image))).await;
    let taken = answers.iter().filter(|a| a.status == 202).count();
    let busy = answers.iter().filter(|a| matches!(a.status, 429 | 503)).count();
    report.record(
        "one job more than its slots gets 429 or 503",
        if busy >= 1 && taken >= 1 && taken + busy == answers.len() {
            Ok(format!("{taken} accepted, {busy} busy ({slots} slot(s))"))
        } else {
            Err(format!("answers {:?}", answers.iter().map(|a| a.status).collect::<Vec<_>>()))
        },
    );
    for (t, a) in tasks.iter().zip(&answers) {
        if a.status == 202 {
            let _ = c.wait_status(t).await;
        }
    }
    c.wait_idle().await;

    // A failing callback is retried.
    let task = new_task();
    c.rx.behave(&task, Behaviour::FailFirstResult);
    let answer = c.dispatch(&task, &c.image).await;
    let outcome = match accepted(&answer, &task) {
        Err(e) => Err(e),
        Ok(()) => match c.wait_status(&task).await {
            None => Err("no status after a result callback got 503".into()),
            Some(_) => {
                let results: Vec<Received> =
                    c.rx.received(&task).into_iter().filter(|r| matches!(r.kind, Kind::Result { .. })).collect();
                let refused = results.iter().find(|r| r.answered == 503);
                match refused {
                    None => Err("no result callback arrived".into()),
                    Some(first) => {
                        let name = |r: &Received| {
                            if let Kind::Result { name, .. } = &r.kind { name.clone() } else { String::new() }
                        };
                        let retried = results
                            .iter()
                            .any(|r| r.answered == 200 && name(r) == name(first) && r.message_id != first.message_id);
                        if retried {
                            Ok(format!("`{}` sent again, as a new message", name(first)))
                        } else {
                            Err(format!("`{}` was not sent again", name(first)))
                        }
                    }
                }
            }
        },
    };
    report.record("a callback answered 503 is retried as a new message", outcome);
    c.wait_idle().await;

    // A 409 stops the job.
    let task = new_task();
    c.rx.behave(&task, Behaviour::Ended);
    let answer = c.dispatch(&task, &c.image).await;
    let outcome = match accepted(&answer, &task) {
        Err(e) => Err(e),
        Ok(()) => {
            let until = Instant::now() + c.settings.job_timeout;
            while c.rx.received(&task).is_empty() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Anything already in flight may still land; then it must stop.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let received = c.rx.received(&task);
            let statuses = received.iter().filter(|r| matches!(r.kind, Kind::Status { .. })).count();
            match (received.len(), statuses) {
                (0, _) => Err("no callback arrived".into()),
                (n, 0) if n <= 3 => Ok(format!("stopped after {n} callback(s)")),
                (n, s) => Err(format!("{n} callbacks ({s} status) after answering 409")),
            }
        }
    };
    report.record("a callback answered 409 stops the job", outcome);
    c.wait_idle().await;

    // A picture it cannot use.
    let task = new_task();
    let garbage = Bytes::from_static(b"this is not a picture at all, just some text");
    let answer = c.dispatch(&task, &garbage).await;
    let outcome = match answer.status {
        400 => Ok("refused at dispatch with 400".into()),
        202 => match c.wait_status(&task).await.map(|r| r.kind) {
            Some(Kind::Status { status, error }) if status == "failed" => {
                Ok(format!("accepted, then `failed`: {}", error.unwrap_or_default()))
            }
            Some(other) => Err(format!("accepted, then {other:?}")),
            None => Err("accepted, then no status".into()),
        },
        s => Err(format!("answered {s} {}", clip(&answer.body))),
    };
    report.record("a picture it cannot use fails cleanly", outcome);
    report
}

fn expect_401(answer: &Answer) -> Result<String, String> {
    if answer.status == 401 {
        Ok("401".into())
    } else {
        Err(format!("answered {} {}", answer.status, clip(&answer.body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glb_headers_are_checked() {
        let mut glb = b"glTF".to_vec();
        glb.extend(2u32.to_le_bytes());
        glb.extend(20u32.to_le_bytes());
        glb.extend(0u32.to_le_bytes());
        glb.extend(b"JSON");
        assert!(valid_glb(&glb).is_ok());
        glb[8] = 21;
        assert!(valid_glb(&glb).is_err());
        assert!(valid_glb(b"PK\x03\x04").is_err());
    }

    #[test]
    fn the_synthetic_picture_is_a_png() {
        let png = synthetic_picture();
        assert_eq!(image::guess_format(&png).ok(), Some(image::ImageFormat::Png));
    }
}
