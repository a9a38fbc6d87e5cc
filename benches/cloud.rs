//! Cloud providers under load, against the fake Tripo apiv3 server
//! (`tests/common/fakes`):
//!
//! - `tripo`: 100 concurrent Tripo tasks, with the channel's default polling settings.
//!   Every job is held upstream until all 100 are submitted, then they finish one by one
//!   at random moments over 30 s. Measured: the delay from the fake's completion of a job
//!   to kiln's `completed` event (target p95 ≤ 2 s), and upstream requests per second
//!   during the run (target ≤ 1 per channel).
//!
//! Run: `cargo bench --bench cloud [-- tripo]`. Results are printed as Markdown rows and
//! JSON.

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

use fakes::{FakeTripo, Outcome, Route, TRIPO_KEY, TripoOptions};

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

fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut results = serde_json::Map::new();
    if wanted.is_empty() || wanted.iter().any(|w| w == "tripo") {
        results.insert("tripo".into(), runtime.block_on(tripo()));
    }
    println!("{}", serde_json::to_string_pretty(&Value::Object(results)).unwrap_or_default());
}
