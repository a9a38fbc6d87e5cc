//! Cloud providers under load, against the fake Tripo apiv3 server
//! (`tests/common/fakes`):
//!
//! - `tripo`: 100 concurrent Tripo tasks, with the channel's default polling settings.
//!   Every job is held upstream until all 100 are submitted, then they finish one by one
//!   at random moments over 30 s. Measured: the delay from the fake's completion of a job
//!   to kiln's `completed` event (target p95 ≤ 2 s), and upstream requests per second
//!   during the run (target ≤ 1 per channel).
//!
//! - `openai`: the OpenAI-compatible face's added latency and throughput in front of an
//!   instant OpenAI-compatible fake, side by side in one run with LiteLLM's proxy in front
//!   of the same fake (when `KILN_LITELLM` names a LiteLLM executable: see
//!   `tools/litellm/install.sh`). Both servers run as child processes; their CPU time is
//!   read from `/proc` to give requests per CPU-second.
//!
//! Run: `cargo bench --bench cloud [-- tripo openai]`. Results are printed as Markdown
//! rows and JSON.

#[path = "../tests/common/fakes/mod.rs"]
mod fakes;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use kiln::{app::Application, config::Config, providers::Registry};
use serde_json::{Value, json};

use fakes::{FakeOpenAi, FakeTripo, OPENAI_KEY, OpenAiOptions, Outcome, Route, TRIPO_KEY, TripoOptions};

const TASKS: usize = 100;
const SPREAD: Duration = Duration::from_secs(30);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn tripo() -> Value {
    let fake = FakeTripo::start(
        TripoOptions::default().timeline(Duration::from_millis(200), Duration::from_secs(3600)).outcome(Outcome::Stuck),
    );
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
name = "tripo"
type = "tripo"
secret = "{TRIPO_KEY}"
max_concurrency = {TASKS}
max_queue = 0
deadline = "10m"
models = [{{ name = "tripo-text", kind = "text_to_3d", upstream = "v3.1-20260211" }}]
options = {{ base_url = "{base}", health_interval = "0s" }}
"#,
        data = dir.path().join("data").display(),
        base = fake.base_url(),
    );
    let path = dir.path().join("kiln.toml");
    std::fs::write(&path, toml).expect("config");
    let config = Config::load_from(Some(&path), Vec::new(), &Default::default()).expect("config");
    let app = Application::build(config, &Registry::builtin()).await.expect("app");
    let base = format!("http://{}", app.local_addr());
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped(false));
    let client = reqwest::Client::new();

    // Submit, and follow each task's event stream from the start.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut prompts = HashMap::new();
    let mut followers = Vec::new();
    for i in 0..TASKS {
        let prompt = format!("bench {i}");
        let task: Value = client
            .post(format!("{base}/api/v1/tasks"))
            .json(&json!({ "prompt": prompt, "model": "tripo-text" }))
            .send()
            .await
            .expect("POST")
            .json()
            .await
            .expect("json");
        let id = task["id"].as_str().expect("id").to_owned();
        prompts.insert(prompt, id.clone());
        let (client, base, seen) = (client.clone(), base.clone(), Arc::clone(&seen));
        followers.push(tokio::spawn(async move {
            let response = client.get(format!("{base}/api/v1/tasks/{id}/events")).send().await.expect("SSE");
            let mut events = response.bytes_stream().eventsource();
            while let Some(Ok(event)) = events.next().await {
                if event.event == "completed" || event.event == "failed" {
                    seen.lock().expect("lock").insert(id.clone(), Instant::now());
                    return event.event == "completed";
                }
            }
            false
        }));
    }
    let wait = Instant::now();
    while fake.task_count() < TASKS {
        assert!(wait.elapsed() < Duration::from_secs(120), "only {} jobs reached the fake", fake.task_count());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let submitted_in = wait.elapsed();
    // Let polling settle into its steady pace before the measured window.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let upstream_of: HashMap<String, String> = fake
        .creates()
        .into_iter()
        .filter_map(|c| Some((prompts.get(c.body["prompt"].as_str()?)?.clone(), c.task_id)))
        .collect();
    let calls_before = fake.calls().len();
    let window = Instant::now();
    let mut order: Vec<(Duration, String)> =
        upstream_of.values().map(|up| (SPREAD.mul_f64(fastrand::f64()), up.clone())).collect();
    order.sort();
    for (at, upstream) in &order {
        tokio::time::sleep_until(tokio::time::Instant::from_std(window + *at)).await;
        fake.complete(upstream);
    }
    let mut completed = 0;
    for follower in followers {
        if tokio::time::timeout(Duration::from_secs(60), follower).await.is_ok_and(|r| r.unwrap_or(false)) {
            completed += 1;
        }
    }
    let elapsed = window.elapsed();
    let calls: Vec<_> = fake.calls().into_iter().skip(calls_before).collect();
    let api_calls = calls.iter().filter(|c| !matches!(c.route, Route::Download)).count();
    let downloads = calls.len() - api_calls;

    let seen = seen.lock().expect("lock").clone();
    let mut delays: Vec<f64> = upstream_of
        .iter()
        .filter_map(|(task, upstream)| {
            let done = fake.completed_at(upstream)?;
            let told = *seen.get(task)?;
            Some(told.saturating_duration_since(done).as_secs_f64() * 1000.0)
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    stop.cancel();
    let _ = server.await;

    let rate = api_calls as f64 / elapsed.as_secs_f64();
    let row = json!({
        "tasks": TASKS,
        "completed": completed,
        "submitted_in_s": submitted_in.as_secs_f64(),
        "window_s": elapsed.as_secs_f64(),
        "delay_ms": {
            "p50": percentile(&delays, 50.0),
            "p95": percentile(&delays, 95.0),
            "p99": percentile(&delays, 99.0),
            "max": delays.last().copied().unwrap_or(f64::NAN),
        },
        "upstream_api_requests": api_calls,
        "upstream_api_requests_per_s": rate,
        "downloads": downloads,
    });
    println!(
        "| tripo, {TASKS} tasks | completion → `completed` p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms | {:.2} API requests/s ({api_calls} in {:.1} s, plus {downloads} downloads) | {completed}/{TASKS} completed |",
        percentile(&delays, 50.0),
        percentile(&delays, 95.0),
        delays.last().copied().unwrap_or(f64::NAN),
        rate,
        elapsed.as_secs_f64(),
    );
    row
}

/// A server in a child process, killed when dropped.
struct Child {
    process: std::process::Child,
    base: String,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// CPU seconds (user + system) a process and its children have used, from `/proc`.
fn cpu_seconds(pid: u32) -> f64 {
    let mut total = 0.0;
    let mut stack = vec![pid];
    let tick = 100.0; // USER_HZ on Linux
    while let Some(pid) = stack.pop() {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
        {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
            let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum());
            total += ticks / tick;
        }
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            stack.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    total
}

async fn wait_ready(client: &reqwest::Client, url: &str) {
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

fn kiln_child(dir: &std::path::Path, fake: &str) -> Child {
    let port = free_port();
    let toml = format!(
        r#"
[server]
bind = "127.0.0.1:{port}"
data_dir = "{data}"

[log]
dir = ""
level = "warn"

[[channels]]
name = "painter"
type = "openai_images"
secret = "{OPENAI_KEY}"
max_concurrency = 64
max_queue = 1000
models = [{{ name = "painter", kind = "text_to_image", upstream = "dall-e-2" }}]
options = {{ base_url = "{fake}", health_interval = "0s", requests_per_minute = 0 }}
"#,
        data = dir.join("data").display(),
    );
    let path = dir.join("kiln.toml");
    std::fs::write(&path, toml).expect("config");
    let process = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kiln");
    Child { process, base: format!("http://127.0.0.1:{port}") }
}

fn litellm_child(dir: &std::path::Path, fake: &str) -> Option<Child> {
    let exe = std::env::var_os("KILN_LITELLM")?;
    let port = free_port();
    let yaml = format!(
        "model_list:\n  - model_name: painter\n    litellm_params:\n      model: openai/dall-e-2\n      \
         api_base: {fake}/v1\n      api_key: {OPENAI_KEY}\nlitellm_settings:\n  drop_params: true\n"
    );
    let path = dir.join("litellm.yaml");
    std::fs::write(&path, yaml).expect("litellm config");
    let process = std::process::Command::new(exe)
        .args(["--config"])
        .arg(&path)
        .args(["--port", &port.to_string(), "--num_workers", "1"])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_TELEMETRY", "False")
        .env("LITELLM_LOG", "ERROR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("litellm");
    Some(Child { process, base: format!("http://127.0.0.1:{port}") })
}

const BODY: &str = r#"{"model":"painter","prompt":"a red teapot","n":1,"size":"256x256","response_format":"b64_json"}"#;

/// One request at a time: latency percentiles in milliseconds.
async fn latencies(client: &reqwest::Client, url: &str, body: &str, count: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let response = client
            .post(url)
            .header("content-type", "application/json")
            .bearer_auth(OPENAI_KEY)
            .body(body.to_owned())
            .send()
            .await
            .expect("POST");
        assert!(response.status().is_success(), "{url}: {}", response.status());
        let _ = response.bytes().await.expect("body");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times
}

/// `clients` at once for `window`: requests completed, and the server's CPU seconds.
async fn throughput(url: &str, body: &'static str, clients: usize, window: Duration, pid: Option<u32>) -> (usize, f64) {
    let cpu_before = pid.map(cpu_seconds).unwrap_or(0.0);
    let until = Instant::now() + window;
    let mut workers = Vec::new();
    for _ in 0..clients {
        let url = url.to_owned();
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut done = 0usize;
            while Instant::now() < until {
                let ok = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .bearer_auth(OPENAI_KEY)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ok {
                    done += 1;
                }
            }
            done
        }));
    }
    let mut done = 0;
    for worker in workers {
        done += worker.await.unwrap_or(0);
    }
    let cpu = pid.map(|p| cpu_seconds(p) - cpu_before).unwrap_or(f64::NAN);
    (done, cpu)
}

async fn openai() -> Value {
    let fake = FakeOpenAi::start(OpenAiOptions { record: false, threads: 2, ..OpenAiOptions::instant() });
    let direct_body = BODY.replace("painter", "dall-e-2");
    let direct_body: &'static str = Box::leak(direct_body.into_boxed_str());
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();
    let kiln = kiln_child(dir.path(), &fake.base_url());
    wait_ready(&client, &format!("{}/health", kiln.base)).await;
    let litellm = litellm_child(dir.path(), &fake.base_url());
    if let Some(litellm) = &litellm {
        wait_ready(&client, &format!("{}/health/liveliness", litellm.base)).await;
    }
    let count = 300;
    let direct_url = format!("{}/v1/images/generations", fake.base_url());
    let kiln_url = format!("{}/v1/images/generations", kiln.base);
    // Warm up connections and caches.
    let _ = latencies(&client, &direct_url, direct_body, 20).await;
    let _ = latencies(&client, &kiln_url, BODY, 20).await;
    let direct = latencies(&client, &direct_url, direct_body, count).await;
    let via_kiln = latencies(&client, &kiln_url, BODY, count).await;
    let mut rows = vec![("direct", direct.clone(), None)];
    rows.push(("kiln", via_kiln, Some(kiln.process.id())));
    if let Some(litellm) = &litellm {
        let url = format!("{}/v1/images/generations", litellm.base);
        let _ = latencies(&client, &url, BODY, 20).await;
        rows.push(("litellm", latencies(&client, &url, BODY, count).await, Some(litellm.process.id())));
    }
    let mut out = serde_json::Map::new();
    for (name, times, pid) in rows {
        let base = match name {
            "kiln" => kiln.base.clone(),
            "litellm" => litellm.as_ref().map(|l| l.base.clone()).unwrap_or_default(),
            _ => fake.base_url(),
        };
        let body = if name == "direct" { direct_body } else { BODY };
        let (done, cpu) =
            throughput(&format!("{base}/v1/images/generations"), body, 16, Duration::from_secs(10), pid).await;
        let added = |p: f64| percentile(&times, p) - percentile(&direct, p);
        println!(
            "| {name} | p50 {:.2} ms (+{:.2}) | p99 {:.2} ms (+{:.2}) | {:.0} req/s with 16 clients | {} |",
            percentile(&times, 50.0),
            added(50.0),
            percentile(&times, 99.0),
            added(99.0),
            done as f64 / 10.0,
            if cpu.is_nan() {
                "—".to_owned()
            } else {
                format!("{:.0} req per CPU-second ({cpu:.1} s)", done as f64 / cpu)
            },
        );
        out.insert(
            name.into(),
            json!({
                "p50_ms": percentile(&times, 50.0), "p99_ms": percentile(&times, 99.0),
                "added_p50_ms": added(50.0), "added_p99_ms": added(99.0),
                "throughput_per_s": done as f64 / 10.0, "cpu_s": cpu,
                "per_cpu_second": done as f64 / cpu,
            }),
        );
    }
    if litellm.is_none() {
        println!("LiteLLM not run: set KILN_LITELLM to its executable (tools/litellm/install.sh)");
    }
    Value::Object(out)
}

fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut results = serde_json::Map::new();
    if wanted.is_empty() || wanted.iter().any(|w| w == "tripo") {
        results.insert("tripo".into(), runtime.block_on(tripo()));
    }
    if wanted.is_empty() || wanted.iter().any(|w| w == "openai") {
        results.insert("openai".into(), runtime.block_on(openai()));
    }
    println!("{}", serde_json::to_string_pretty(&Value::Object(results)).unwrap_or_default());
}
