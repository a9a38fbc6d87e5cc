//! Push-worker benchmarks, against the real server built in-process on port 0:
//!
//! 1. dispatch gap: an instant worker (in this file) answers every dispatch at once and
//!    reports the job done right away; for 100 queued jobs on one worker slot, the gap is
//!    the time from the worker sending job N's final status to it receiving job N+1's
//!    dispatch — kiln's whole turn-around: the signed callback, the task's end in the
//!    database, waking the dispatcher, the next claim, reading the picture, signing and
//!    sending the next dispatch;
//! 2. 100 jobs through `kiln worker` (the release binary, relief on a 256×256 picture):
//!    total time and jobs per second.
//!
//! Run: `cargo bench --bench workers` (or name a section: `gap`, `relief`).
//! Knob: `KILN_BENCH_JOBS` (100).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
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
use kiln::{app::Application, config::Config, providers::Registry, webhooks::SigningKey, worker_protocol::Form};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn secret() -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([7u8; 32]))
}

fn jobs() -> usize {
    std::env::var("KILN_BENCH_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(100)
}

/// A red disc on white: relief finds an object in it.
fn picture() -> Vec<u8> {
    kiln::worker_check::synthetic_picture().to_vec()
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

struct Server {
    base: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(worker: &str, queue: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            r#"
[server]
bind = "127.0.0.1:0"
data_dir = "{data}"
[log]
dir = ""
level = "warn"
[[channels]]
name = "gpu"
type = "worker"
secret = "{secret}"
max_concurrency = 1
max_queue = {queue}
models = [{{ name = "trellis2", kind = "image_to_3d" }}]
options = {{ workers = ["{worker}"], health_interval = "200ms" }}
"#,
            data = dir.path().join("data").display(),
            secret = secret(),
        );
        let path = dir.path().join("kiln.toml");
        std::fs::write(&path, toml).expect("write config");
        let config = Config::load_from(Some(&path), Vec::new(), &Default::default()).unwrap_or_else(|e| panic!("{e}"));
        let app = Application::build(config, &Registry::builtin()).await.expect("build app");
        let base = format!("http://{}", app.local_addr());
        let shutdown = app.shutdown_token();
        let handle = tokio::spawn(app.run_until_stopped(false));
        let server = Self { base, client: reqwest::Client::new(), shutdown, handle, _dir: dir };
        // Wait for the worker's first healthy probe.
        for _ in 0..200 {
            let catalog: Value = server
                .client
                .get(server.url("/api/v1/catalog"))
                .send()
                .await
                .expect("catalog")
                .json()
                .await
                .unwrap_or_default();
            if catalog["models"][0]["available"] == true {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn submit(&self, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let form = reqwest::multipart::Form::new()
                .part("image", reqwest::multipart::Part::bytes(picture()).file_name("disc.png"));
            let task: Value = self
                .client
                .post(self.url("/api/v1/tasks"))
                .multipart(form)
                .send()
                .await
                .expect("POST")
                .json()
                .await
                .expect("task");
            ids.push(task["id"].as_str().expect("id").to_owned());
        }
        ids
    }

    async fn wait_all(&self, ids: &[String]) -> Vec<Value> {
        let mut done = Vec::new();
        for id in ids {
            loop {
                let task: Value = self
                    .client
                    .get(self.url(&format!("/api/v1/tasks/{id}")))
                    .send()
                    .await
                    .expect("GET")
                    .json()
                    .await
                    .expect("task");
                if matches!(task["status"].as_str(), Some("succeeded" | "failed" | "canceled")) {
                    done.push(task);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        done
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.handle).await;
    }
}

// ---------------------------------------------------------------------------------------
// 1. The dispatch gap, with an instant worker.

#[derive(Default)]
struct Timeline {
    /// When each dispatch arrived, in order.
    dispatched: Vec<Instant>,
    /// When each job's final status was sent, in order.
    status_sent: Vec<Instant>,
}

#[derive(Clone)]
struct InstantWorker {
    key: SigningKey,
    timeline: Arc<Mutex<Timeline>>,
    client: reqwest::Client,
}

async fn instant_dispatch(State(worker): State<InstantWorker>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let arrived = Instant::now();
    if worker.key.verify(&headers, &body, kiln::webhooks::now_secs()).is_err() {
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
    worker.timeline.lock().expect("timeline").dispatched.push(arrived);
    let job = worker.clone();
    let id = task.clone();
    tokio::spawn(async move {
        let (content_type, form) =
            Form::new().text("name", "model.glb").file("file", "model.glb", "model/gltf-binary", &glb()).finish();
        send_callback(&job, &format!("{callback}/result/{id}"), &content_type, form).await;
        let status = Bytes::from(serde_json::to_vec(&json!({ "taskId": id, "status": "completed" })).expect("json"));
        job.timeline.lock().expect("timeline").status_sent.push(Instant::now());
        send_callback(&job, &format!("{callback}/status"), "application/json", status).await;
    });
    (StatusCode::ACCEPTED, Json(json!({ "status": "accepted", "task_id": task })))
}

async fn send_callback(worker: &InstantWorker, url: &str, content_type: &str, body: Bytes) {
    let signed = worker.key.sign(&body);
    let mut request = worker.client.post(url).header("content-type", content_type);
    for (name, value) in signed.headers() {
        request = request.header(name, value);
    }
    let response = request.body(body).send().await.expect("callback");
    assert!(response.status().is_success(), "callback answered {}", response.status());
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn bench_gap() -> String {
    let key = SigningKey::parse(&secret()).expect("secret");
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let worker = InstantWorker { key, timeline: Arc::clone(&timeline), client: reqwest::Client::new() };
    let app = Router::new()
        .route("/generate3d", post(instant_dispatch))
        .route("/health", get(|| async { Json(json!({ "status": "healthy", "models_loaded": true })) }))
        .with_state(worker);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let n = jobs();
    let server = Server::start(&url, n).await;
    let started = Instant::now();
    let ids = server.submit(n).await;
    let submitted = started.elapsed();
    // Gaps while the tasks were still being submitted share the machine with the
    // submitting client: only the ones after it count.
    let quiet = started + submitted;
    let done = server.wait_all(&ids).await;
    let total = started.elapsed();
    server.stop().await;
    let ok = done.iter().filter(|t| t["status"] == "succeeded").count();
    let t = timeline.lock().expect("timeline");
    let mut gaps: Vec<f64> = t
        .status_sent
        .iter()
        .zip(t.dispatched.iter().skip(1))
        .filter(|(sent, _)| **sent > quiet)
        .filter_map(|(sent, next)| next.checked_duration_since(*sent))
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    gaps.sort_by(f64::total_cmp);
    format!(
        "| Dispatch gap on one worker slot (status of job N sent → dispatch of job N+1 received), {n} jobs, loopback | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} gaps after submitting ended; {ok}/{n} succeeded; {:.0} jobs/s end to end, submitting took {:.2} s of {:.2} s) | < 10 ms | {} |",
        pct(&gaps, 0.5),
        pct(&gaps, 0.99),
        gaps.last().copied().unwrap_or(f64::NAN),
        gaps.len(),
        n as f64 / total.as_secs_f64(),
        submitted.as_secs_f64(),
        total.as_secs_f64(),
        if pct(&gaps, 0.99) < 10.0 {
            "**met** (p99)"
        } else if pct(&gaps, 0.5) < 10.0 {
            "**met** (p50), p99 missed"
        } else {
            "**missed**"
        },
    )
}

// ---------------------------------------------------------------------------------------
// 2. 100 jobs through `kiln worker`.

async fn bench_relief() -> String {
    let mut child = Command::new(KILN)
        .args(["worker", "--bind", "127.0.0.1:0"])
        .env("KILN_WORKER_SECRET", secret())
        .env("KILN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kiln worker");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("address");
    let url = line.trim().trim_start_matches("kiln worker is running at ").trim_end_matches('/').to_owned();
    let n = jobs();
    let server = Server::start(&url, n).await;
    let started = Instant::now();
    let ids = server.submit(n).await;
    let done = server.wait_all(&ids).await;
    let total = started.elapsed();
    server.stop().await;
    let _ = child.kill();
    let _ = child.wait();
    let ok = done.iter().filter(|t| t["status"] == "succeeded").count();
    let mut runs: Vec<f64> = done.iter().filter_map(|t| t["generation_time"].as_f64()).collect();
    runs.sort_by(f64::total_cmp);
    format!(
        "| {n} jobs through `kiln worker` (release, relief, 256×256 picture, one slot) | {:.1} s in all, {:.1} jobs/s; per job (dispatch → stored model) p50 {:.0} ms, p99 {:.0} ms; {ok}/{n} succeeded | — | — |",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        pct(&runs, 0.5) * 1000.0,
        pct(&runs, 0.99) * 1000.0,
    )
}

fn main() {
    let sections: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |name: &str| sections.is_empty() || sections.iter().any(|s| s == name);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut rows = Vec::new();
    if wanted("gap") {
        rows.push(runtime.block_on(bench_gap()));
    }
    if wanted("relief") {
        rows.push(runtime.block_on(bench_relief()));
    }
    println!("\n| Benchmark | Result | Target | |\n|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
