//! Push workers end to end: `kiln worker` (the real binary) through every face, the
//! conformance suite against it, and, with a scripted fake worker whose callbacks the
//! test signs itself, the protocol's refusals, lost workers and seed 002's 1 + 5 queue.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
};
use base64::Engine;
use kiln::{
    webhooks::{self, SigningKey},
    worker_check::{CheckSettings, run as conformance},
    worker_protocol::Form,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, fixture, read_events};
use crate::relief::{SEED_004_FILES, assert_seed_004_files, assert_seed_004_status};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn secret(seed: u8) -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([seed; 32]))
}

fn key(seed: u8) -> SigningKey {
    SigningKey::parse(&secret(seed)).expect("test secret")
}

/// A worker as a child process on a free port; killed on drop.
pub struct WorkerProcess {
    child: Child,
    pub url: String,
}

impl WorkerProcess {
    /// `kiln worker`.
    pub fn kiln(secret: &str) -> Self {
        let mut command = Command::new(KILN);
        command.args(["worker", "--bind", "127.0.0.1:0"]).env("KILN_WORKER_SECRET", secret).env("KILN_LOG", "warn");
        Self::spawn(command, "kiln worker is running at ")
    }

    /// The TRELLIS.2 worker (Python) with its stand-in pipeline.
    fn trellis2(secret: &str) -> Self {
        Self::trellis2_with(secret, &[])
    }

    /// The TRELLIS.2 worker with its stand-in pipeline and more environment.
    fn trellis2_with(secret: &str, env: &[(&str, &str)]) -> Self {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("worker");
        let python = dir.join(".venv/bin/python");
        assert!(
            python.exists(),
            "the worker's environment is missing ({}): run `make test` or `scripts/deps.sh --worker`",
            python.display()
        );
        let mut command = Command::new(&python);
        command
            .args(["-m", "kiln_worker", "--host", "127.0.0.1", "--port", "0"])
            .current_dir(&dir)
            .env("KILN_WORKER_SECRET", secret)
            .env("KILN_WORKER_PIPELINE", "tests.standin:StandInPipeline")
            .env("KILN_WORKER_LOG_LEVEL", "warning")
            .envs(env.iter().copied());
        Self::spawn(command, "kiln-worker listening on ")
    }

    /// Starts the worker and reads its URL from its first line on stdout.
    fn spawn(mut command: Command, announcement: &str) -> Self {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start the worker");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the address");
        let url = line
            .trim()
            .strip_prefix(announcement)
            .unwrap_or_else(|| panic!("unexpected first line from the worker: {line:?}"))
            .trim_end_matches('/')
            .to_owned();
        Self { child, url }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn worker_channel(name: &str, model: &str, secret: &str, workers: &[&str], queue: u32) -> String {
    let list: Vec<String> = workers.iter().map(|w| format!("\"{w}\"")).collect();
    format!(
        r#"
[[channels]]
name = "{name}"
type = "worker"
secret = "{secret}"
max_concurrency = {concurrency}
max_queue = {queue}
models = [{{ name = "{model}", kind = "image_to_3d" }}]
options = {{ workers = [{list}], health_interval = "200ms", health_failures = 2 }}
"#,
        concurrency = workers.len(),
        list = list.join(", "),
    )
}

async fn wait_available(app: &TestApp, model: &str) {
    for _ in 0..100 {
        let (_, catalog) = app.get_json("/api/v1/catalog").await;
        let available =
            catalog["models"].as_array().into_iter().flatten().any(|m| m["name"] == model && m["available"] == true);
        if available {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("model {model} never became available");
}

/// Runs the conformance suite against a worker sharing the secret of `seed`.
async fn check_worker(
    url: &str,
    seed: u8,
    job_timeout: Duration,
    ready_timeout: Duration,
) -> kiln::worker_check::Report {
    conformance(CheckSettings {
        worker: url.to_owned(),
        key: key(seed),
        image: None,
        callback_host: "127.0.0.1".parse().unwrap(),
        job_timeout,
        ready_timeout,
    })
    .await
    .expect("the suite runs")
}

#[tokio::test]
async fn kiln_worker_passes_the_conformance_suite() {
    let worker = WorkerProcess::kiln(&secret(1));
    let report = check_worker(&worker.url, 1, Duration::from_secs(60), Duration::from_secs(10)).await;
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert!(report.verdicts.len() >= 12);
}

#[tokio::test]
async fn the_conformance_suite_fails_a_worker_that_breaks_the_protocol() {
    // The fake worker accepts unsigned dispatches and never calls back.
    let fake = FakeWorker::start(key(2), false).await;
    let report = check_worker(&fake.url, 2, Duration::from_secs(1), Duration::from_secs(2)).await;
    assert!(!report.passed());
    let failed: Vec<&str> = report.verdicts.iter().filter(|v| !v.passed).map(|v| v.name).collect();
    assert!(failed.contains(&"an unsigned dispatch is refused with 401"), "{report}");
    assert!(failed.contains(&"callbacks are signed, in order, with a valid GLB"), "{report}");
}

#[tokio::test]
async fn every_face_runs_on_kiln_worker() {
    let worker = WorkerProcess::kiln(&secret(3));
    let app = TestApp::spawn_with(&worker_channel("gpu", "trellis2", &secret(3), &[&worker.url], 5)).await;
    wait_available(&app, "trellis2").await;

    // Native.
    let task = app.submit_image(&[]).await;
    let id = task["id"].as_str().unwrap();
    let events = app.events(id, None, 100).await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"queued"));
    assert_eq!(kinds.last(), Some(&"completed"), "{kinds:?}");
    let stages: Vec<&str> = events.iter().filter_map(|(_, _, d)| d["stage"].as_str()).collect();
    assert!(stages.contains(&"dispatched") && stages.contains(&"meshing"), "{stages:?}");
    // relief's files, each sent as a result callback as soon as it is ready, reach kiln
    // in the same order with seed 004's names, and kiln gives each its role by name.
    let results: Vec<&Value> = events.iter().filter(|(_, k, _)| k == "result").map(|(_, _, d)| d).collect();
    let names: Vec<&str> = results.iter().filter_map(|d| d["name"].as_str()).collect();
    assert!(names.starts_with(&SEED_004_FILES), "{names:?}");
    for (data, name) in results.iter().zip(SEED_004_FILES) {
        assert_eq!(data["key"], format!("reconstruction/{id}/{name}"));
    }
    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["metadata"]["format"], "glb");
    let outputs = result["outputs"].as_array().expect("outputs");
    let named =
        |name: &str| outputs.iter().find(|o| o["name"] == name).unwrap_or_else(|| panic!("no {name}: {result}"));
    for (name, role, content_type) in [
        ("pixel_images.png", "cutout", "image/png"),
        ("xyz_images.png", "position_map", "image/png"),
        ("model.glb", "model", "model/gltf-binary"),
        ("output3d.zip", "archive", "application/zip"),
    ] {
        assert_eq!(
            (named(name)["role"].as_str(), named(name)["content_type"].as_str()),
            (Some(role), Some(content_type))
        );
    }
    let url = |name: &str| named(name)["url"].as_str().expect("url").to_owned();
    assert_seed_004_files(&app, &url("pixel_images.png"), &url("xyz_images.png"), &url("output3d.zip")).await;

    // Seed 002: wait for the model, then fetch it from /static.
    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(fixture("mug.jpg")).file_name("mug.jpg"));
    let response = app.client.post(app.url("/api/generate")).multipart(form).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    let task_id = answer["task_id"].as_str().unwrap();
    let model_url = answer["model_url"].as_str().unwrap();
    assert_eq!(model_url, app.url(&format!("/static/{task_id}.glb")));
    assert!(answer["generation_time"].as_f64().unwrap() > 0.0);
    let glb = app.client.get(model_url).send().await.unwrap();
    assert_eq!(glb.headers()["content-type"], "model/gltf-binary");
    assert_eq!(&glb.bytes().await.unwrap()[..4], b"glTF");

    // Seed 002 asynchronously, followed over its SSE stream.
    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(fixture("vase.png")).file_name("vase.png"));
    let response = app
        .client
        .post(app.url("/api/generate"))
        .header("prefer", "respond-async")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let answer: Value = response.json().await.unwrap();
    let task_id = answer["task_id"].as_str().unwrap().to_owned();
    let events = read_events(&app.client, &app.url(&format!("/api/status/{task_id}")), None, 100).await;
    let names: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(names.first(), Some(&"queued"), "{names:?}");
    assert!(names.contains(&"processing"));
    let (_, last_name, last) = events.last().unwrap();
    assert_eq!(last_name, "completed");
    assert_eq!(last["model_url"], app.url(&format!("/static/{task_id}.glb")));

    // Seed 004: picture library, a task from it, result and status events, the status table.
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(fixture("toy.webp")).file_name("toy.webp"));
    let picture: Value =
        app.client.post(app.url("/picture/upload")).multipart(form).send().await.unwrap().json().await.unwrap();
    let picture_id = picture["id"].as_str().unwrap();
    assert_eq!(picture["picFormat"], "webp");
    let (_, page) = app.get_json("/picture/list/page?current=1&pageSize=2").await;
    assert_eq!(page["records"][0]["id"], picture_id, "newest first");
    assert_eq!(page["current"], 1);
    let created: Value = app
        .client
        .post(app.url("/api/reconstruction/create-from-image"))
        .json(&json!({ "pictureId": picture_id }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task_id = created["taskId"].as_str().unwrap();
    assert_eq!(created["sseUrl"], format!("/api/reconstruction/events/{task_id}"));
    let events = read_events(&app.client, &app.url(created["sseUrl"].as_str().unwrap()), None, 100).await;
    let results: Vec<&Value> = events.iter().filter(|(_, k, _)| k == "result").map(|(_, _, d)| d).collect();
    let files: Vec<&str> = results.iter().filter_map(|d| d["fileName"].as_str()).collect();
    assert!(files.starts_with(&SEED_004_FILES), "{files:?}");
    assert!(results.iter().all(|d| d["taskId"] == task_id));
    let (_, name, last) = events.last().unwrap();
    assert_eq!((name.as_str(), last["status"].as_str()), ("status", Some("COMPLETED")));
    let status = assert_seed_004_status(&app, task_id).await;
    assert_eq!(status["originalImageUrl"], picture["url"]);
    assert!(status["errorMessage"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn seed_002_errors_have_that_seeds_words() {
    let worker = WorkerProcess::kiln(&secret(4));
    let app = TestApp::spawn_with(&worker_channel("gpu", "trellis2", &secret(4), &[&worker.url], 5)).await;
    for (file, status, message) in [
        ("invalid/not-supported.gif", 400, "Unsupported image format"),
        ("invalid/text-named.png", 400, "Unsupported image format"),
        ("invalid/over-10mb.png", 413, "File too large, max 10MB"),
    ] {
        let form = reqwest::multipart::Form::new()
            .part("image", reqwest::multipart::Part::bytes(fixture(file)).file_name("x"));
        let response = app.client.post(app.url("/api/generate")).multipart(form).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{file}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["success"], false, "{file}");
        assert_eq!(body["error"], message, "{file}");
    }
    let (status, body) = app.get_json("/static/0190a0b0-0000-7000-8000-000000000000.glb").await;
    assert_eq!((status, body["success"].clone()), (404, json!(false)));
    app.stop().await;
}

// ---------------------------------------------------------------------------------------
// A scripted worker: accepts (or refuses) dispatches, records them, never calls back on
// its own. The tests play its callbacks.

#[derive(Default)]
struct FakeState {
    dispatched: Vec<(String, String)>,
    busy: bool,
}

struct FakeWorker {
    url: String,
    state: Arc<Mutex<FakeState>>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct FakeShared {
    key: SigningKey,
    verify: bool,
    state: Arc<Mutex<FakeState>>,
}

async fn fake_dispatch(State(shared): State<FakeShared>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    if shared.verify && shared.key.verify(&headers, &body, webhooks::now_secs()).is_err() {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "error": "signature" })));
    }
    let boundary = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
        .unwrap_or_default();
    let mut form = multer::Multipart::new(futures::stream::iter([Ok::<_, std::io::Error>(body)]), boundary);
    let (mut task, mut callback) = (String::new(), String::new());
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("task_id") => task = field.text().await.unwrap_or_default(),
            Some("callback_url") => callback = field.text().await.unwrap_or_default(),
            _ => {}
        }
    }
    let mut state = shared.state.lock().unwrap();
    if state.busy {
        return (StatusCode::TOO_MANY_REQUESTS, Json(json!({ "error": "busy" })));
    }
    state.dispatched.push((task.clone(), callback));
    (StatusCode::ACCEPTED, Json(json!({ "status": "accepted", "task_id": task })))
}

async fn fake_health() -> Json<Value> {
    Json(json!({ "status": "healthy", "models_loaded": true, "protocol": 1 }))
}

impl FakeWorker {
    async fn start(key: SigningKey, verify: bool) -> Self {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = FakeShared { key, verify, state: Arc::clone(&state) };
        let app = Router::new()
            .route("/generate3d", post(fake_dispatch))
            .route("/health", get(fake_health))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { until.cancelled().await }).await;
        });
        Self { url, state, stop }
    }

    fn dispatched(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().dispatched.clone()
    }

    async fn wait_dispatched(&self, count: usize) -> Vec<(String, String)> {
        for _ in 0..200 {
            let seen = self.dispatched();
            if seen.len() >= count {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("expected {count} dispatches, got {:?}", self.dispatched());
    }
}

/// Sends a signed callback as a worker would.
async fn callback(client: &reqwest::Client, key: &SigningKey, url: &str, body: Value) -> (u16, Value) {
    let bytes = serde_json::to_vec(&body).unwrap();
    send(client, url, "application/json", bytes.into(), &key.sign(&serde_json::to_vec(&body).unwrap()).headers()).await
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: Bytes,
    headers: &[(&'static str, String)],
) -> (u16, Value) {
    let mut request = client.post(url).header("content-type", content_type);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn glb() -> Vec<u8> {
    let json = br#"{"asset":{"version":"2.0"}}  "#;
    let mut out = b"glTF".to_vec();
    out.extend(2u32.to_le_bytes());
    out.extend(((12 + 8 + json.len()) as u32).to_le_bytes());
    out.extend((json.len() as u32).to_le_bytes());
    out.extend(b"JSON");
    out.extend(json);
    out
}

#[tokio::test]
async fn callbacks_are_authenticated_checked_and_idempotent() {
    let fake = FakeWorker::start(key(5), true).await;
    let other = FakeWorker::start(key(6), true).await;
    let channels = format!(
        "{}{}",
        worker_channel("gpu", "trellis2", &secret(5), &[&fake.url], 5),
        worker_channel("other", "other-model", &secret(6), &[&other.url], 5)
    );
    let app = TestApp::spawn_with(&channels).await;
    wait_available(&app, "trellis2").await;
    let task = app.submit_image(&[("model", "trellis2")]).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let (dispatched_id, base) = fake.wait_dispatched(1).await[0].clone();
    assert_eq!(dispatched_id, id);
    assert_eq!(base, app.url("/api/v1/worker-callbacks"));
    let client = &app.client;
    let progress = json!({ "taskId": id, "progress": 40, "stage": "sampling" });
    let body = serde_json::to_vec(&progress).unwrap();
    let url = format!("{base}/progress");

    // Unsigned, wrongly signed, stale: 401. Signed by another worker channel: 403.
    let (status, refused) = send(client, &url, "application/json", body.clone().into(), &[]).await;
    assert_eq!((status, refused["error"]["code"].clone()), (401, json!("signature_invalid")));
    let (status, _) = send(client, &url, "application/json", body.clone().into(), &key(9).sign(&body).headers()).await;
    assert_eq!(status, 401);
    let stale = key(5).sign_with("msg_old", webhooks::now_secs() - 600, &body);
    let (status, _) = send(client, &url, "application/json", body.clone().into(), &stale.headers()).await;
    assert_eq!(status, 401);
    let (status, refused) =
        send(client, &url, "application/json", body.clone().into(), &key(6).sign(&body).headers()).await;
    assert_eq!((status, refused["error"]["code"].clone()), (403, json!("wrong_channel")));

    // Signed: recorded; the same message again: a replay, 401.
    let signed = key(5).sign(&body);
    let (status, _) = send(client, &url, "application/json", body.clone().into(), &signed.headers()).await;
    assert_eq!(status, 200);
    let (status, _) = send(client, &url, "application/json", body.clone().into(), &signed.headers()).await;
    assert_eq!(status, 401);

    // The seed 004 path is the same endpoint.
    let (status, _) =
        callback(client, &key(5), &app.url("/api/reconstruction/callback/progress"), progress.clone()).await;
    assert_eq!(status, 200);

    // A result, twice: stored once. A different file under the same name: 409.
    let result_url = format!("{base}/result/{id}");
    let (content_type, form) =
        Form::new().text("name", "model.glb").file("file", "model.glb", "model/gltf-binary", &glb()).finish();
    let (status, answer) = send(client, &result_url, &content_type, form.clone(), &key(5).sign(&form).headers()).await;
    assert_eq!((status, answer["recorded"].clone()), (200, json!("new")), "{answer}");
    let (status, answer) = send(client, &result_url, &content_type, form.clone(), &key(5).sign(&form).headers()).await;
    assert_eq!((status, answer["recorded"].clone()), (200, json!("again")));
    let (content_type2, form2) =
        Form::new().text("name", "model.glb").file("file", "model.glb", "model/gltf-binary", b"different").finish();
    let (status, answer) =
        send(client, &result_url, &content_type2, form2.clone(), &key(5).sign(&form2).headers()).await;
    assert_eq!((status, answer["error"]["code"].clone()), (409, json!("result_conflict")));
    let (content_type3, form3) =
        Form::new().text("name", "../etc/passwd").file("file", "x", "text/plain", b"x").finish();
    let (status, _) = send(client, &result_url, &content_type3, form3.clone(), &key(5).sign(&form3).headers()).await;
    assert_eq!(status, 400);

    // Completed, twice: harmless. kiln then makes the model's own outputs (preview,
    // compressed GLB) while the task runs on, and marks it succeeded. Afterwards anything
    // else is 409.
    // The worker's metadata (the settings it lowered after running out of memory, say)
    // is kept as the result's `metadata.provider.worker`.
    let worker_metadata = json!({
        "settings": { "pipeline_type": "512", "resolution": 512 },
        "out_of_memory_retry": { "changed": { "pipeline_type": { "from": "1024_cascade", "to": "512" } } },
    });
    let done = json!({ "taskId": id, "status": "completed", "metadata": worker_metadata });
    let (status, answer) = callback(client, &key(5), &format!("{base}/status"), done.clone()).await;
    assert_eq!((status, answer["status"].clone()), (200, json!("running")));
    let (status, _) = callback(client, &key(5), &app.url("/api/reconstruction/callback/status"), done).await;
    assert_eq!(status, 200);
    assert_eq!(app.wait_terminal(&id).await["status"], "succeeded");
    let (status, _) = callback(client, &key(5), &url, progress).await;
    assert_eq!(status, 409);
    let (status, _) =
        callback(client, &key(5), &format!("{base}/status"), json!({ "taskId": id, "status": "failed" })).await;
    assert_eq!(status, 409);
    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    let names: Vec<&str> = result["outputs"].as_array().unwrap().iter().filter_map(|o| o["name"].as_str()).collect();
    assert_eq!(names.first(), Some(&"model.glb"), "the worker's model, then what kiln made of it: {names:?}");
    assert_eq!(result["metadata"]["provider"]["worker"], worker_metadata, "{result}");
    let stored = client.get(result["outputs"][0]["url"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(stored.as_ref(), glb().as_slice());

    // Completed without a model: the task fails with a clear error.
    let task = app.submit_image(&[("model", "trellis2")]).await;
    let id = task["id"].as_str().unwrap();
    fake.wait_dispatched(2).await;
    let (status, answer) =
        callback(client, &key(5), &format!("{base}/status"), json!({ "taskId": id, "status": "completed" })).await;
    assert_eq!((status, answer["status"].clone()), (200, json!("failed")));
    let (_, task) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["error"]["code"], "worker_no_model");

    // A failure report carries the worker's words.
    let task = app.submit_image(&[("model", "trellis2")]).await;
    let id = task["id"].as_str().unwrap();
    fake.wait_dispatched(3).await;
    let failed = json!({ "taskId": id, "status": "failed", "error": "CUDA out of memory, even after a retry" });
    let (status, _) = callback(client, &key(5), &format!("{base}/status"), failed).await;
    assert_eq!(status, 200);
    let (_, task) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["error"]["code"], "worker_failed");
    assert_eq!(task["error"]["message"], "CUDA out of memory, even after a retry");
    let (status, _) = callback(
        client,
        &key(5),
        &format!("{base}/status"),
        json!({ "taskId": "0190a0b0-0000-7000-8000-000000000000", "status": "failed" }),
    )
    .await;
    assert_eq!(status, 404, "a known signer learns that the task does not exist");
    let unknown = json!({ "taskId": "0190a0b0-0000-7000-8000-000000000000", "status": "failed" });
    let (status, _) = callback(client, &key(9), &format!("{base}/status"), unknown).await;
    assert_eq!(status, 401, "a stranger learns nothing");
    app.stop().await;
    fake.stop.cancel();
    other.stop.cancel();
}

#[tokio::test]
async fn while_kiln_finishes_a_completed_task_the_worker_is_free_and_a_late_failure_is_refused() {
    let fake = FakeWorker::start(key(8), true).await;
    let app = TestApp::spawn_with(&worker_channel("gpu", "trellis2", &secret(8), &[&fake.url], 5)).await;
    wait_available(&app, "trellis2").await;
    let task = app.submit_image(&[("model", "trellis2")]).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let task_id: kiln::tasks::TaskId = id.parse().unwrap();
    let (_, base) = fake.wait_dispatched(1).await[0].clone();
    app.wait_task(&id, "dispatched", |t| t["stage"] == "dispatched").await;
    let client = &app.client;
    let (content_type, form) =
        Form::new().text("name", "model.glb").file("file", "model.glb", "model/gltf-binary", &glb()).finish();
    let (status, _) =
        send(client, &format!("{base}/result/{id}"), &content_type, form.clone(), &key(8).sign(&form).headers()).await;
    assert_eq!(status, 200);
    let db = app.gateway.db();
    assert_eq!(db.placement_loads("gpu").await.unwrap().len(), 1, "the job is on the worker");

    // Another process took the worker's `completed` and is making the task's files.
    let deadline = chrono::Utc::now() + chrono::Duration::minutes(5);
    let said = json!({});
    let marked = db.claim_finishing(task_id, true, "another-process", Duration::from_secs(600), deadline, &said);
    assert!(marked.await.unwrap());
    assert!(db.placement_loads("gpu").await.unwrap().is_empty(), "the worker's slot is free for the next job");

    // A `failed` now contradicts the model that stands: refused, and nothing changes.
    let failed = json!({ "taskId": id, "status": "failed", "error": "late" });
    let (status, answer) = callback(client, &key(8), &format!("{base}/status"), failed).await;
    assert_eq!((status, answer["error"]["code"].clone()), (409, json!("task_already_finished")), "{answer}");
    // `completed` again: the step is under way elsewhere; the task runs on.
    let done = json!({ "taskId": id, "status": "completed" });
    let (status, answer) = callback(client, &key(8), &format!("{base}/status"), done).await;
    assert_eq!((status, answer["status"].clone()), (200, json!("running")), "{answer}");
    let task = db.get_task(task_id).await.unwrap().unwrap();
    assert_eq!(task.status.as_str(), "running");
    assert!(task.finishing_at.is_some() && task.placement.is_none(), "{task:?}");
    app.stop().await;
    fake.stop.cancel();
}

#[tokio::test]
async fn a_lost_workers_task_is_dispatched_again_to_another_worker() {
    let first = FakeWorker::start(key(7), true).await;
    let second = FakeWorker::start(key(7), true).await;
    second.state.lock().unwrap().busy = true;
    let app = TestApp::spawn_with(&worker_channel("gpu", "trellis2", &secret(7), &[&first.url, &second.url], 5)).await;
    wait_available(&app, "trellis2").await;
    let task = app.submit_image(&[]).await;
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(first.wait_dispatched(1).await[0].0, id);

    // The first worker vanishes; the second has room again.
    second.state.lock().unwrap().busy = false;
    first.stop.cancel();
    let (again, base) = second.wait_dispatched(1).await[0].clone();
    assert_eq!(again, id, "the lost task went to the other worker");
    // The worker sees the dispatch a moment before kiln records it.
    let task = app.wait_task(&id, "dispatched", |t| t["stage"] == "dispatched").await;
    assert_eq!(task["status"], "running");

    let client = &app.client;
    let (content_type, form) =
        Form::new().text("name", "model.glb").file("file", "model.glb", "model/gltf-binary", &glb()).finish();
    let (status, _) =
        send(client, &format!("{base}/result/{id}"), &content_type, form.clone(), &key(7).sign(&form).headers()).await;
    assert_eq!(status, 200);
    let (status, _) =
        callback(client, &key(7), &format!("{base}/status"), json!({ "taskId": id, "status": "completed" })).await;
    assert_eq!(status, 200);
    let events = app.events(&id, None, 100).await;
    let stages: Vec<&str> = events.iter().filter_map(|(_, _, d)| d["stage"].as_str()).collect();
    assert!(stages.contains(&"restarting"), "the stream says it started again: {stages:?}");
    assert_eq!(events.last().unwrap().1, "completed");
    app.stop().await;
    second.stop.cancel();
}

#[tokio::test]
async fn a_task_on_a_vanished_worker_fails_with_generation_timeout_and_nothing_hangs() {
    let mut worker = WorkerProcess::kiln(&secret(8));
    let fake = FakeWorker::start(key(8), true).await;
    // The fake worker takes the job and keeps it; then the only other worker dies too.
    let tasks = "lease = \"1s\"\npoll_interval = \"200ms\"\ndeadline = \"2s\"";
    let app = TestApp::spawn_configured(tasks, &worker_channel("gpu", "trellis2", &secret(8), &[&fake.url], 5)).await;
    wait_available(&app, "trellis2").await;
    let task = app.submit_image(&[]).await;
    let id = task["id"].as_str().unwrap();
    fake.wait_dispatched(1).await;
    fake.stop.cancel();
    worker.kill();
    let done = app.wait_terminal(id).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "generation_timeout");
    let (_, catalog) = app.get_json("/api/v1/catalog").await;
    assert_eq!(catalog["models"][0]["available"], false, "no worker left in rotation");
    assert_eq!(catalog["models"][0]["channels"][0]["running"], 0, "nothing left running");
    app.stop().await;
}

#[tokio::test]
async fn seven_requests_to_a_one_plus_five_channel_get_exactly_one_503_and_positions_count_down() {
    let fake = FakeWorker::start(key(10), true).await;
    let app = TestApp::spawn_with(&worker_channel("gpu", "trellis2", &secret(10), &[&fake.url], 5)).await;
    wait_available(&app, "trellis2").await;
    let uploads = (0..7).map(|_| {
        let form = reqwest::multipart::Form::new()
            .part("image", reqwest::multipart::Part::bytes(fixture("vase.png")).file_name("vase.png"));
        app.client.post(app.url("/api/generate")).header("prefer", "respond-async").multipart(form).send()
    });
    let answers = futures::future::join_all(uploads).await;
    let statuses: Vec<u16> = answers.iter().map(|r| r.as_ref().unwrap().status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 6, "{statuses:?}");
    let refused = answers.into_iter().map(|r| r.unwrap()).find(|r| r.status().as_u16() == 503).unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "Server busy, retry later");

    // Finish the jobs one by one as the worker would; the last waiting task's stream
    // counts its position down to 1 and ends completed.
    let key = key(10);
    let mut done = 0;
    // The last in line: the largest queue position (ids do not say it: concurrent
    // submissions are admitted in whatever order they take the channel's lock).
    let (_, page) = app.get_json("/api/v1/tasks?status=queued").await;
    let last = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|t| t["queue_position"].as_u64())
        .and_then(|t| t["id"].as_str())
        .unwrap()
        .to_owned();
    let stream_url = app.url(&format!("/api/status/{last}"));
    let client = app.client.clone();
    let follower = tokio::spawn(async move { read_events(&client, &stream_url, None, 100).await });
    while done < 6 {
        let dispatched = fake.wait_dispatched(done + 1).await;
        let (id, base) = dispatched[done].clone();
        let (content_type, form) =
            Form::new().text("name", "model.glb").file("file", "model.glb", "model/gltf-binary", &glb()).finish();
        send(&app.client, &format!("{base}/result/{id}"), &content_type, form.clone(), &key.sign(&form).headers())
            .await;
        let (status, _) =
            callback(&app.client, &key, &format!("{base}/status"), json!({ "taskId": id, "status": "completed" }))
                .await;
        assert_eq!(status, 200);
        done += 1;
    }
    let events = follower.await.unwrap();
    let positions: Vec<u64> =
        events.iter().filter(|(_, k, _)| k == "queued").filter_map(|(_, _, d)| d["position"].as_u64()).collect();
    // 6th in line when it came before the first job was dispatched, else 5th.
    assert!(matches!(positions.first(), Some(5 | 6)), "{positions:?}");
    assert!(positions.windows(2).all(|w| w[1] < w[0]), "{positions:?}");
    // Positions are announced at most every 200 ms per channel: jobs finished faster
    // than that may skip steps, and the task may start before "1" is announced.
    let started = events.iter().position(|(_, k, _)| k == "processing").unwrap();
    assert!(events[..started].iter().all(|(_, k, _)| k == "queued"), "queued until it starts");
    assert_eq!(events.last().unwrap().1, "completed");
    app.stop().await;
    fake.stop.cancel();
}

// ---------------------------------------------------------------------------------------
// The TRELLIS.2 worker (Python), with its stand-in pipeline.

#[tokio::test]
async fn the_trellis2_worker_passes_the_conformance_suite() {
    let worker = WorkerProcess::trellis2(&secret(11));
    let report = check_worker(&worker.url, 11, Duration::from_secs(60), Duration::from_secs(30)).await;
    println!("{report}");
    assert!(report.passed(), "{report}");
    let health = &report.verdicts[0].detail;
    assert!(health.contains(", warm-up ") && health.contains(" s, on stand-in (no GPU)"), "{report}");
}

#[tokio::test]
async fn the_conformance_suite_shows_why_a_worker_is_not_ready() {
    // The stand-in's warm-up job fails after its preview, as a broken install would.
    let worker = WorkerProcess::trellis2_with(&secret(14), &[("KILN_STANDIN_LOAD_FAIL", "warmup-export")]);
    let report = check_worker(&worker.url, 14, Duration::from_secs(10), Duration::from_secs(30)).await;
    println!("{report}");
    assert!(!report.passed());
    assert_eq!(report.verdicts.len(), 1, "nothing else is tried on a worker that is not ready: {report}");
    let health = &report.verdicts[0];
    assert!(
        health.detail.starts_with(
            "answered 503 with status `unhealthy`: the standin pipeline failed while warming up (rendering_preview)"
        ),
        "{report}"
    );
}

#[tokio::test]
async fn the_trellis2_worker_serves_seed_004_with_progressive_results() {
    let worker = WorkerProcess::trellis2(&secret(12));
    let app = TestApp::spawn_with(&worker_channel("gpu", "trellis2", &secret(12), &[&worker.url], 5)).await;
    wait_available(&app, "trellis2").await;
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(fixture("vase.png")).file_name("vase.png"));
    let picture: Value =
        app.client.post(app.url("/picture/upload")).multipart(form).send().await.unwrap().json().await.unwrap();
    let created: Value = app
        .client
        .post(app.url("/api/reconstruction/create-from-image"))
        // The stand-in samples 10 steps of 0.1 s, reporting progress as it goes.
        .json(&json!({ "pictureId": picture["id"], "params": { "steps": 10, "step_seconds": 0.1 } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task_id = created["taskId"].as_str().unwrap();
    let events = read_events(&app.client, &app.url(created["sseUrl"].as_str().unwrap()), None, 200).await;
    let files: Vec<&str> =
        events.iter().filter(|(_, k, _)| k == "result").filter_map(|(_, _, d)| d["fileName"].as_str()).collect();
    // The worker's files one by one as each is ready, then kiln's compressed GLB (the
    // worker's own preview is kept).
    assert_eq!(
        files,
        ["pixel_images.png", "preview.png", "xyz_images.png", "model.glb", "output3d.zip", "model.meshopt.glb"],
        "results arrive one by one, as each is ready"
    );
    let progress: Vec<u64> = events.iter().filter_map(|(_, _, d)| d["progress"].as_u64()).collect();
    assert!(progress.iter().any(|p| *p > 0 && *p < 100), "the sampler's progress shows: {progress:?}");
    assert_eq!(events.last().unwrap().2["status"], "COMPLETED");
    let (_, status) = app.get_json(&format!("/api/reconstruction/status/{task_id}")).await;
    assert!(status["outputZipUrl"].as_str().unwrap().ends_with(&format!("reconstruction/{task_id}/output3d.zip")));
    assert!(status["modelUrl"].as_str().unwrap().ends_with("model.glb"));
    let zip = app.client.get(status["outputZipUrl"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(&zip[..2], b"PK");
    // Seed 004's maps, by name, each with its role (never taken for the preview).
    for (field, name) in [("pixelImagesUrl", "pixel_images.png"), ("xyzImagesUrl", "xyz_images.png")] {
        let url = status[field].as_str().unwrap_or_else(|| panic!("{field}: {status}"));
        assert!(url.ends_with(&format!("reconstruction/{task_id}/{name}")), "{url}");
        let png = app.client.get(url).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(&png[1..4], b"PNG", "{name}");
    }
    let (_, result) = app.get_json(&format!("/api/v1/tasks/{task_id}/result")).await;
    let role = |name: &str| {
        result["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).map(|o| o["role"].clone())
    };
    assert_eq!(role("pixel_images.png"), Some(json!("cutout")));
    assert_eq!(role("xyz_images.png"), Some(json!("position_map")));
    assert_eq!(role("preview.png"), Some(json!("preview")));
    assert_eq!(role("model.meshopt.glb"), Some(json!("variant")));
    app.stop().await;
}

#[tokio::test]
async fn work_is_spread_over_the_free_workers() {
    let first = FakeWorker::start(key(13), true).await;
    let second = FakeWorker::start(key(13), true).await;
    let app = TestApp::spawn_with(&worker_channel("gpu", "trellis2", &secret(13), &[&first.url, &second.url], 5)).await;
    wait_available(&app, "trellis2").await;
    let a = app.submit_image(&[]).await;
    let b = app.submit_image(&[]).await;
    let c = app.submit_image(&[]).await;
    let (on_first, on_second) = (first.wait_dispatched(1).await, second.wait_dispatched(1).await);
    let dispatched: Vec<&str> = on_first.iter().chain(&on_second).map(|(id, _)| id.as_str()).collect();
    assert_eq!(dispatched.len(), 2, "one job per free worker: {dispatched:?}");
    assert!(dispatched.contains(&a["id"].as_str().unwrap()) && dispatched.contains(&b["id"].as_str().unwrap()));
    // The third waits in the queue until a worker is free again.
    let (_, third) = app.get_json(&format!("/api/v1/tasks/{}", c["id"].as_str().unwrap())).await;
    assert_eq!((third["status"].as_str(), third["queue_position"].as_u64()), (Some("queued"), Some(1)));
    let (done, base) = on_first[0].clone();
    let (content_type, form) =
        Form::new().text("name", "model.glb").file("file", "model.glb", "model/gltf-binary", &glb()).finish();
    send(&app.client, &format!("{base}/result/{done}"), &content_type, form.clone(), &key(13).sign(&form).headers())
        .await;
    callback(&app.client, &key(13), &format!("{base}/status"), json!({ "taskId": done, "status": "completed" })).await;
    assert_eq!(first.wait_dispatched(2).await[1].0, c["id"].as_str().unwrap(), "the freed worker takes the next job");
    assert_eq!(second.dispatched().len(), 1);
    app.stop().await;
    first.stop.cancel();
    second.stop.cancel();
}
