//! The `modelscope` provider end to end: the real server on port 0 with a ModelScope
//! channel pointed at the fake ModelScope (`tests/common/fakes/modelscope.rs`), talked
//! to over HTTP. A prompt becomes a stored picture; LoRAs and other parameters reach
//! ModelScope as given, bad ones never leave kiln; ModelScope's failures, 429s, token
//! refusals and empty results end as documented in `docs/providers/modelscope.md`; the
//! token shows nowhere.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use kiln::config::ChannelConfig;
use serde_json::{Value, json};

use crate::{
    common::fakes::{FakeModelScope, Fault, MODELSCOPE_TOKEN, ModelScopeOptions, Outcome, Route},
    helpers::TestApp,
};

const MODEL: &str = "qwen-image";
const UPSTREAM: &str = "Qwen/Qwen-Image";

fn fake() -> FakeModelScope {
    FakeModelScope::start(ModelScopeOptions::default().timeline(Duration::from_millis(60), Duration::from_millis(120)))
}

/// A ModelScope channel on the fake, with `token` as its secret; short polls and
/// deadline so the suite stays fast.
fn channel(fake: &FakeModelScope, token: &str) -> String {
    format!(
        r#"
[[channels]]
name = "modelscope"
type = "modelscope"
secret = "{token}"
max_concurrency = 4
max_queue = 20
deadline = "20s"
models = [{{ name = "{MODEL}", kind = "text_to_image", upstream = "{UPSTREAM}" }}]

[channels.options]
base_url = "{base}"
poll_interval = "50ms"
poll_max_interval = "100ms"
health_interval = "0s"
"#,
        base = fake.base_url(),
    )
}

async fn app(fake: &FakeModelScope) -> TestApp {
    TestApp::spawn_with(&channel(fake, MODELSCOPE_TOKEN)).await
}

/// Submits a prompt task; returns the HTTP status and the answer.
async fn submit(app: &TestApp, prompt: &str, params: Value) -> (u16, Value) {
    let response = app.submit_prompt(json!({ "model": MODEL, "prompt": prompt, "params": params })).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Submits a task that must be queued, and waits for it to end.
async fn run(app: &TestApp, prompt: &str, params: Value) -> (String, Value) {
    let (status, task) = submit(app, prompt, params).await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().expect("task id").to_owned();
    let task = app.wait_terminal(&id).await;
    (id, task)
}

/// Every create the fake got was accepted — it refuses one without
/// `X-ModelScope-Async-Mode: true` with 400 — and every poll was too: it refuses one
/// without `X-ModelScope-Task-Type: image_generation` with 400, which ends the job.
fn assert_headers_were_sent(fake: &FakeModelScope) {
    assert_eq!(fake.count(Route::Create), fake.creates().len(), "a create was refused");
    assert!(fake.count(Route::Get) >= 1, "the job was never polled");
    assert_eq!(fake.count(Route::Other), 0, "a request went elsewhere");
    for call in fake.calls().iter().filter(|c| c.route != Route::Download) {
        assert_eq!(call.bearer.as_deref(), Some(MODELSCOPE_TOKEN), "{} {}", call.method, call.path);
    }
}

#[tokio::test]
async fn a_prompt_becomes_a_stored_picture_with_a_result_event() {
    let fake = fake();
    let app = app(&fake).await;

    let (id, task) = run(&app, "a red teapot on a wooden table", json!({ "size": "128x96", "seed": 42 })).await;
    assert_eq!(task["status"], "succeeded", "{task}");

    // ModelScope got one create, with kiln's fields and the client's.
    let creates = fake.creates();
    assert_eq!(creates.len(), 1);
    assert_eq!(
        creates[0].body,
        json!({ "model": UPSTREAM, "prompt": "a red teapot on a wooden table", "size": "128x96", "seed": 42 })
    );
    assert_eq!(creates[0].path, "/v1/images/generations");
    assert_headers_were_sent(&fake);
    assert_eq!(fake.downloads_with_authorization(), 0, "result URLs are fetched without the token");

    let events = app.events(&id, None, 100).await;
    let results: Vec<&Value> = events.iter().filter(|(_, name, _)| name == "result").map(|(_, _, d)| d).collect();
    assert_eq!(results.len(), 1, "{events:?}");
    assert_eq!(events.last().expect("events").1, "completed");
    assert!(events.iter().any(|(_, _, d)| d["stage"] == "upstream_queued" || d["stage"] == "upstream_running"));

    let (status, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(status, 200);
    let output = &result["outputs"][0];
    assert_eq!(output["name"], "image-1.png");
    assert_eq!(output["role"], "image");
    assert_eq!(output["content_type"], "image/png");
    let provider = &result["metadata"]["provider"];
    assert_eq!(provider["provider"], "modelscope", "{result}");
    assert_eq!(provider["upstream_task_id"], fake.task_ids()[0].as_str());
    assert!(provider["upstream_request_id"].is_string(), "the create's request_id is kept: {result}");

    let url = output["url"].as_str().expect("url");
    assert!(url.contains("/files/"), "{url}");
    let response = app.client.get(url).send().await.expect("GET file");
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.bytes().await.expect("bytes");
    let picture = image::load_from_memory(&bytes).expect("a picture");
    assert_eq!((picture.width(), picture.height()), (128, 96));
    app.stop().await;
}

#[tokio::test]
async fn a_lora_map_and_unknown_fields_reach_modelscope_exactly() {
    let fake = fake();
    let app = app(&fake).await;
    let loras = json!({ "owner/style-a": 0.6, "owner/style-b": 0.3, "owner/style-c": 0.1 });
    let params = json!({ "loras": loras, "steps": 30, "guidance": 3.5, "sampler": "euler", "n": 1 });
    let (_, task) = run(&app, "a castle", params).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let body = &fake.creates()[0].body;
    assert_eq!(body["loras"], loras, "the map is sent as given");
    assert_eq!(body["sampler"], "euler", "unknown fields pass through");
    assert_eq!((body["steps"].clone(), body["guidance"].clone()), (json!(30), json!(3.5)));
    assert!(body.get("n").is_none(), "`n` is OpenAI's, not ModelScope's: {body}");

    // One LoRA as a string.
    let (_, task) = run(&app, "a tower", json!({ "loras": "owner/style-a" })).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(fake.creates()[1].body["loras"], "owner/style-a");
    app.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_refused_before_anything_reaches_modelscope() {
    let fake = fake();
    let app = app(&fake).await;
    let seven: serde_json::Map<String, Value> = (0..7).map(|i| (format!("o/l{i}"), json!(1.0 / 7.0))).collect();
    let cases = [
        (json!({ "loras": { "a/x": 0.5, "b/y": 0.4 } }), "sum to 1.0"),
        (json!({ "loras": seven }), "at most 6"),
        (json!({ "loras": { "a/x": "half", "b/y": 0.5 } }), "a/x"),
        (json!({ "size": "4096x4096" }), "size"),
        (json!({ "steps": 0 }), "steps"),
        (json!({ "guidance": 30 }), "guidance"),
        (json!({ "seed": -1 }), "seed"),
        (json!({ "n": 4 }), "one image per task"),
        (json!({ "model": "other/model" }), "`model`"),
        (json!({ "image_url": "/files/pictures/x.png" }), "image_url"),
    ];
    for (params, needle) in cases {
        let (status, body) = submit(&app, "a castle", params.clone()).await;
        assert_eq!(status, 400, "{params}: {body}");
        assert_eq!(body["error"]["code"], "invalid_params", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(needle), "{params}: {message}");
    }
    assert!(fake.calls().is_empty(), "nothing was sent upstream: {:?}", fake.calls());
    assert_eq!(fake.count(Route::Create), 0);
    let (_, list) = app.get_json("/api/v1/tasks").await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "nothing was queued: {list}");
    app.stop().await;
}

#[tokio::test]
async fn a_failed_job_fails_the_task_with_modelscopes_message() {
    let fake = fake();
    fake.push_outcome(Outcome::failed(0, "The prompt did not pass the content safety check."));
    let app = app(&fake).await;
    let (_, task) = run(&app, "something", json!({})).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "upstream_failed");
    let message = task["error"]["message"].as_str().expect("message");
    assert!(message.contains("The prompt did not pass the content safety check."), "{message}");
    assert_eq!(fake.creates().len(), 1, "a failed job is not submitted again");
    app.stop().await;
}

#[tokio::test]
async fn a_rate_limited_create_is_retried_after_retry_after_and_made_once() {
    let fake = fake();
    fake.push_fault(Route::Create, Fault::retry_after(429, 0, "Request limit exceeded.", 1));
    let app = app(&fake).await;
    let (_, task) = run(&app, "a lighthouse", json!({})).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(fake.count(Route::Create), 2, "the 429, then the create");
    assert_eq!(fake.creates().len(), 1, "one job upstream");
    let creates: Vec<_> = fake.calls().into_iter().filter(|c| c.route == Route::Create).collect();
    let pause = creates[1].at - creates[0].at;
    assert!(pause >= Duration::from_millis(950), "Retry-After: 1 was honoured: {pause:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_rate_limit_that_lasts_fails_the_task_with_the_quotas_explained() {
    let fake = fake();
    for _ in 0..4 {
        fake.push_fault(Route::Create, Fault::retry_after(429, 0, "Request limit exceeded.", 0));
    }
    let app = app(&fake).await;
    let (_, task) = run(&app, "a lighthouse", json!({})).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "upstream_rate_limited");
    let message = task["error"]["message"].as_str().expect("message");
    assert!(message.contains("2000 calls a day") && message.contains("daily quota of 500 calls"), "{message}");
    assert_eq!(fake.creates().len(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_refused_token_fails_with_upstream_auth() {
    let fake = fake();
    let app = TestApp::spawn_with(&channel(&fake, "ms-not-a-token-modelscope-knows")).await;
    let (_, task) = run(&app, "a lighthouse", json!({})).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "upstream_auth");
    let message = task["error"]["message"].as_str().expect("message");
    assert!(message.contains("Alibaba Cloud"), "{message}");
    assert_eq!(fake.count(Route::Create), 1, "a 401 is not retried");
    assert_eq!(fake.creates().len(), 0);
    app.stop().await;
}

#[tokio::test]
async fn an_empty_output_is_bad_output() {
    let fake = fake();
    fake.push_outcome(Outcome::EmptyOutput);
    let app = app(&fake).await;
    let (_, task) = run(&app, "a lighthouse", json!({})).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "bad_output");
    assert_eq!(fake.count(Route::Download), 0);
    app.stop().await;
}

#[tokio::test]
async fn an_expired_result_url_is_renewed_by_polling_again() {
    let fake = fake();
    fake.set_default_outcome(Outcome::Stuck);
    let app = app(&fake).await;
    let (status, task) = submit(&app, "a lighthouse", json!({})).await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().expect("id").to_owned();
    // Polled at least once, still running upstream.
    app.wait_task(&id, "polled", |_| fake.count(Route::Get) >= 1).await;
    // The answer that names the picture hands out an expired URL; the next a fresh one.
    fake.push_fault(Route::Get, Fault::ExpiredUrls);
    fake.complete(&fake.task_ids()[0]);
    let task = app.wait_terminal(&id).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(fake.count(Route::Download), 2, "the expired URL, then the fresh one");
    assert_eq!(fake.creates().len(), 1);
    app.stop().await;
}

/// A `MakeWriter` that keeps everything written, to read the log back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The test runtime is single-threaded, so the server's tasks log on this thread, to
/// this subscriber, at every level.
#[tokio::test(flavor = "current_thread")]
async fn the_token_appears_in_no_task_event_or_log_line() {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = fake();
    fake.push_outcome(Outcome::Success);
    fake.push_outcome(Outcome::failed(0, "no"));
    fake.push_fault(Route::Create, Fault::NonJson502);
    let app = app(&fake).await;
    let mut ids = Vec::new();
    for prompt in ["first", "second", "third"] {
        let (status, task) = submit(&app, prompt, json!({ "seed": 1 })).await;
        assert_eq!(status, 202, "{task}");
        ids.push(task["id"].as_str().expect("id").to_owned());
    }
    let mut seen = String::new();
    let mut statuses = Vec::new();
    for id in &ids {
        let task = app.wait_terminal(id).await;
        statuses.push(format!("{}:{}", task["status"], task["error"]["code"]));
        seen.push_str(&task.to_string());
        seen.push_str(&app.get_json(&format!("/api/v1/tasks/{id}/result")).await.1.to_string());
        for (_, name, data) in app.events(id, None, 100).await {
            seen.push_str(&name);
            seen.push_str(&data.to_string());
        }
    }
    seen.push_str(&app.get_json("/api/v1/tasks").await.1.to_string());
    seen.push_str(&app.get_json("/api/v1/catalog").await.1.to_string());
    statuses.sort();
    // One create answered by a proxy's 502 (its outcome unknown), one job that failed
    // upstream, one that succeeded: every path that logs.
    assert_eq!(
        statuses,
        ["\"failed\":\"upstream_failed\"", "\"failed\":\"upstream_outcome_unknown\"", "\"succeeded\":null"],
        "{seen}"
    );
    let log = String::from_utf8(log.0.lock().expect("log").clone()).expect("utf-8 log");
    assert!(log.contains("submitted upstream"), "the log was captured: {log}");
    let secret_part = &MODELSCOPE_TOKEN[MODELSCOPE_TOKEN.len() - 12..];
    assert!(!seen.contains(secret_part), "the token is in a task, its events or the catalog");
    assert!(!log.contains(secret_part), "the token is in the log:\n{log}");
    app.stop().await;
}

fn channel_config(fake: &FakeModelScope, token: &str) -> ChannelConfig {
    let text = format!(
        "name = \"ms\"\ntype = \"modelscope\"\nsecret = \"{token}\"\n\
         models = [{{ name = \"{MODEL}\", kind = \"text_to_image\", upstream = \"{UPSTREAM}\" }}]\n\
         [options]\nbase_url = \"{}\"\n",
        fake.base_url()
    );
    toml::from_str(&text).expect("channel")
}

#[tokio::test]
async fn health_lists_the_models_with_the_token() {
    let fake = fake();
    let good = kiln::providers::modelscope::factory(&channel_config(&fake, MODELSCOPE_TOKEN)).expect("provider");
    assert_eq!(good.health().await, Ok(()));
    let bad = kiln::providers::modelscope::factory(&channel_config(&fake, "ms-wrong")).expect("provider");
    let err = bad.health().await.expect_err("a refused token");
    assert!(err.contains("token"), "{err}");
    assert_eq!(fake.count(Route::Models), 2);
}

#[tokio::test]
async fn a_channel_with_a_3d_model_does_not_start() {
    let fake = fake();
    let text = channel(&fake, MODELSCOPE_TOKEN).replace("kind = \"text_to_image\"", "kind = \"text_to_3d\"");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = crate::helpers::load_config_full(dir.path(), "", crate::helpers::TASKS, &text);
    let err = kiln::app::Application::build(config, &crate::provider::registry())
        .await
        .err()
        .expect("a 3D model on a ModelScope channel is refused");
    let err = format!("{err:#}");
    assert!(err.contains("text_to_image") && err.contains("text_to_3d"), "{err}");
}
