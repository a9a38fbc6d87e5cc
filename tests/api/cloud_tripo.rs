//! The `tripo` provider through the real app, against the fake Tripo apiv3 server: the
//! happy paths, the fault matrix (each case ends in a terminal task with its own code
//! and a bounded number of upstream calls), keys, routing, cancel, and a SIGKILL in the
//! middle of polling.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    common::fakes::{
        FakeModelScope, FakeTripo, Fault, MODELSCOPE_TOKEN, ModelScopeOptions, Outcome, Route, TRIPO_KEY, TripoOptions,
    },
    helpers::{ChildServer, TestApp, config_toml},
};

const MODEL: &str = "v3.1-20260211";

/// A Tripo channel in front of `fake`, with fast polling and `extra` lines.
fn channel(fake: &FakeTripo, extra: &str) -> String {
    channel_named("tripo", fake, extra)
}

fn channel_named(name: &str, fake: &FakeTripo, extra: &str) -> String {
    format!(
        r#"
[[channels]]
name = "{name}"
type = "tripo"
secret = "{TRIPO_KEY}"
max_concurrency = 50
max_queue = 50
deadline = "30s"
{extra}
models = [
  {{ name = "tripo-3d", kind = "image_to_3d", upstream = "{MODEL}" }},
  {{ name = "tripo-text", kind = "text_to_3d", upstream = "{MODEL}" }},
]
[channels.options]
base_url = "{base}"
poll_interval = "50ms"
poll_max_interval = "200ms"
requests_per_minute = 6000
health_interval = "0s"
"#,
        base = fake.base_url()
    )
}

fn fast() -> TripoOptions {
    TripoOptions::default().timeline(Duration::from_millis(100), Duration::from_millis(300))
}

async fn submit_text(app: &TestApp, prompt: &str, params: Value) -> (u16, Value) {
    let response = app.submit_prompt(json!({ "prompt": prompt, "model": "tripo-text", "params": params })).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn text_task(app: &TestApp, prompt: &str) -> Value {
    let (status, task) = submit_text(app, prompt, json!({})).await;
    assert_eq!(status, 202, "{task}");
    app.wait_terminal(task["id"].as_str().expect("id")).await
}

fn code(task: &Value) -> &str {
    task["error"]["code"].as_str().unwrap_or("(none)")
}

#[tokio::test]
async fn a_picture_becomes_a_stored_model_and_preview_made_once_upstream() {
    let fake = FakeTripo::start(fast());
    let app = TestApp::spawn_with(&channel(&fake, "")).await;
    let task = app.submit_image(&[("model", "tripo-3d")]).await;
    let id = task["id"].as_str().expect("id").to_owned();
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    let outputs = result["outputs"].as_array().expect("outputs");
    let names: Vec<&str> = outputs.iter().filter_map(|o| o["name"].as_str()).collect();
    assert!(names.contains(&"model.glb"), "{result}");
    assert!(names.iter().any(|n| n.starts_with("preview.")), "{result}");
    let model = outputs.iter().find(|o| o["name"] == "model.glb").expect("model");
    let glb =
        app.client.get(model["url"].as_str().expect("url")).send().await.expect("GET").bytes().await.expect("body");
    assert_eq!(&glb[..4], b"glTF");
    assert!(model["url"].as_str().is_some_and(|u| u.contains(&format!("/files/reconstruction/{id}/"))), "{model}");

    assert_eq!(fake.count(Route::Upload), 1, "the picture is uploaded once");
    assert_eq!(fake.count(Route::Create), 1, "the job is created once");
    assert_eq!(fake.downloads_with_authorization(), 0, "downloads never carry the key");
    let create = &fake.creates()[0];
    assert_eq!(create.path, "/v3/generation/image-to-model");
    assert_eq!(create.body["model"], MODEL);
    assert!(create.body["input"].as_str().is_some_and(|t| t.starts_with("file_")), "{}", create.body);
    assert_eq!(result["metadata"]["provider"]["upstream_task_id"], create.task_id.as_str(), "{result}");

    let events = app.events(&id, None, 100).await;
    assert!(events.iter().any(|(_, kind, data)| kind == "processing" && data["stage"] == "submitted"));
    assert!(events.iter().any(|(_, kind, data)| kind == "processing" && data["stage"] == "upstream_running"));
    // Tripo's model and rendered preview, then kiln's compressed GLB (Tripo's preview is
    // kept, not drawn again).
    let results: Vec<&str> =
        events.iter().filter(|(_, kind, _)| kind == "result").filter_map(|(_, _, d)| d["name"].as_str()).collect();
    assert_eq!(results.len(), 3, "{results:?}");
    assert_eq!(results.last(), Some(&"model.meshopt.glb"), "{results:?}");
    let everything = format!("{done}{result}{events:?}");
    assert!(!everything.contains(TRIPO_KEY), "the key never reaches a client");
    app.stop().await;
}

#[tokio::test]
async fn a_prompt_becomes_a_model_with_its_parameters_forwarded_and_bad_ones_refused_before_any_call() {
    let fake = FakeTripo::start(fast());
    let app = TestApp::spawn_with(&channel(&fake, "")).await;
    let (status, task) = submit_text(&app, "a red teapot", json!({ "face_limit": 8000, "texture": false })).await;
    assert_eq!(status, 202, "{task}");
    let done = app.wait_terminal(task["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let body = &fake.creates()[0].body;
    assert_eq!(body["prompt"], "a red teapot");
    assert_eq!(body["face_limit"], 8000);
    assert_eq!(body["texture"], false);

    let (status, refused) = submit_text(&app, "x", json!({ "compress": true })).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_params");
    assert!(refused["error"]["message"].as_str().is_some_and(|m| m.contains("geometry")), "{refused}");
    let (status, refused) = submit_text(&app, "x", json!({ "wings": 2 })).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(fake.count(Route::Create), 1, "refused tasks never reach Tripo");
    app.stop().await;
}

#[tokio::test]
async fn a_rate_limited_create_is_retried_after_retry_after_and_made_once() {
    let fake = FakeTripo::start(fast());
    fake.push_fault(Route::Create, Fault::retry_after(429, 2000, "You have exceeded the limit of generation", 1));
    let app = TestApp::spawn_with(&channel(&fake, "")).await;
    let done = text_task(&app, "retry me").await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fake.count(Route::Create), 2, "one refused, one taken");
    assert_eq!(fake.task_count(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_never_sent_again() {
    let fake = FakeTripo::start(fast());
    fake.push_fault(Route::Create, Fault::ResetAfterAccept);
    let app = TestApp::spawn_with(&channel(&fake, "")).await;
    let done = text_task(&app, "lost answer").await;
    assert_eq!(code(&done), "upstream_outcome_unknown", "{done}");
    assert_eq!(fake.count(Route::Create), 1, "not sent again");
    assert_eq!(fake.task_count(), 1, "the job exists upstream, and only once");

    // A reset before Tripo took anything looks the same from here: the request was sent.
    fake.push_fault(Route::Create, Fault::ResetBeforeAccept);
    let done = text_task(&app, "reset").await;
    assert_eq!(code(&done), "upstream_outcome_unknown", "{done}");
    assert_eq!(fake.count(Route::Create), 2);

    // A proxy's 502 page: Tripo may have made the job behind it.
    fake.push_fault(
        Route::Create,
        Fault::Raw { http: 502, content_type: "text/html".into(), body: "<html>502 Bad Gateway</html>".into() },
    );
    let done = text_task(&app, "proxy").await;
    assert_eq!(code(&done), "upstream_outcome_unknown", "{done}");
    assert_eq!(fake.count(Route::Create), 3);

    // A 200 that cannot be read: the job may exist.
    fake.push_fault(Route::Create, Fault::BadJson);
    let done = text_task(&app, "garbage").await;
    assert_eq!(code(&done), "upstream_outcome_unknown", "{done}");
    assert_eq!(fake.count(Route::Create), 4);
    app.stop().await;
}

#[tokio::test]
async fn tripo_refusals_map_to_their_own_codes() {
    let fake = FakeTripo::start(fast().key("tsk_poor", 0));
    let app = TestApp::spawn_with(&channel(&fake, "")).await;

    fake.push_fault(Route::Create, Fault::status(400, 2008, "content policy violation"));
    assert_eq!(code(&text_task(&app, "forbidden").await), "content_policy");
    fake.push_fault(Route::Create, Fault::status(400, 1004, "invalid parameter"));
    let done = text_task(&app, "bad").await;
    assert_eq!(code(&done), "upstream_invalid_params");
    assert!(done["error"]["message"].as_str().is_some_and(|m| m.contains("invalid parameter")), "{done}");
    fake.push_fault(Route::Create, Fault::status(403, 2010, "insufficient credits"));
    assert_eq!(code(&text_task(&app, "poor").await), "upstream_no_credits");
    fake.push_fault(Route::Create, Fault::status(401, 2, "invalid api key"));
    assert_eq!(code(&text_task(&app, "who").await), "upstream_auth");
    assert_eq!(fake.task_count(), 0);

    fake.push_outcome(Outcome::failed(2008, "the prompt breaks the rules"));
    assert_eq!(code(&text_task(&app, "policy later").await), "content_policy");
    fake.push_outcome(Outcome::failed(2018, "model too complex"));
    let done = text_task(&app, "too complex").await;
    assert_eq!(code(&done), "upstream_failed");
    assert!(done["error"]["message"].as_str().is_some_and(|m| m.contains("model too complex")), "{done}");
    fake.push_outcome(Outcome::EmptyOutput);
    assert_eq!(code(&text_task(&app, "empty").await), "bad_output");
    fake.push_outcome(Outcome::Cancelled);
    assert_eq!(code(&text_task(&app, "cancelled upstream").await), "upstream_canceled");
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_tripo_fails_after_a_bounded_number_of_tries_and_rests_the_channel() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let fake = FakeTripo::start(fast());
    let dead_channel = channel_named("dead", &fake, "priority = 10\nbreaker = { failures = 1, cooldown = \"60s\" }")
        .replace(&fake.base_url(), &dead);
    let app = TestApp::spawn_with(&format!("{dead_channel}{}", channel_named("alive", &fake, ""))).await;

    let done = text_task(&app, "nobody home").await;
    assert_eq!(done["channel"], "dead");
    assert_eq!(code(&done), "upstream_unavailable", "{done}");
    let (_, catalog) = app.get_json("/api/v1/catalog").await;
    let dead_view =
        catalog["models"][0]["channels"].as_array().expect("channels").iter().find(|c| c["name"] == "dead").cloned();
    let dead_view = dead_view.expect("dead channel listed");
    assert_eq!(dead_view["available"], false, "{catalog}");
    assert!(dead_view["resting_for"].as_u64().is_some_and(|s| s > 0), "{catalog}");

    let done = text_task(&app, "somebody home").await;
    assert_eq!(done["channel"], "alive", "the resting channel is skipped");
    assert_eq!(done["status"], "succeeded", "{done}");
    app.stop().await;
}

#[tokio::test]
async fn an_expired_url_is_renewed_once_and_broken_downloads_fail_with_their_codes() {
    let fake = FakeTripo::start(fast());
    let app = TestApp::spawn_with(&channel(&fake, "")).await;

    fake.push_fault(Route::Download, Fault::ExpiredUrls);
    let done = text_task(&app, "expired").await;
    assert_eq!(done["status"], "succeeded", "{done}");

    fake.push_fault(Route::Download, Fault::Truncated);
    assert_eq!(code(&text_task(&app, "cut").await), "download_failed");
    fake.push_fault(Route::Download, Fault::WrongBody);
    assert_eq!(code(&text_task(&app, "not a glb").await), "bad_output");
    assert_eq!(fake.downloads_with_authorization(), 0);
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_download_is_cut_at_the_limit() {
    let fake = FakeTripo::start(fast());
    let config =
        channel(&fake, "").replace("health_interval = \"0s\"", "health_interval = \"0s\"\nmax_download_bytes = 65536");
    let app = TestApp::spawn_with(&config).await;
    fake.push_fault(Route::Download, Fault::OversizedChunked(10 * 1024 * 1024));
    let done = text_task(&app, "huge").await;
    assert_eq!(code(&done), "bad_output", "{done}");
    app.stop().await;
}

#[tokio::test]
async fn jobs_are_spread_over_keys_and_each_is_polled_with_its_own() {
    let fake = FakeTripo::start(fast().key("tsk_second_key", 10_000));
    let config = channel(&fake, "")
        .replace(&format!("secret = \"{TRIPO_KEY}\""), &format!("secret = \"{TRIPO_KEY}, tsk_second_key\""));
    let app = TestApp::spawn_with(&config).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let (status, task) = submit_text(&app, &format!("spread {i}"), json!({})).await;
        assert_eq!(status, 202);
        ids.push(task["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        assert_eq!(app.wait_terminal(id).await["status"], "succeeded");
    }
    assert_eq!(fake.creates_by_key(TRIPO_KEY), 3);
    assert_eq!(fake.creates_by_key("tsk_second_key"), 3);
    // Polls are batched: far fewer list calls than (tasks × polls each), never one per job.
    assert!(fake.count(Route::Get) == 0, "jobs are read through tasks/list only");
    app.stop().await;
}

#[tokio::test]
async fn a_client_brings_its_own_key_for_one_task_where_the_channel_allows_it() {
    let fake = FakeTripo::start(fast().key("tsk_clients_own_key", 100));
    let app = TestApp::spawn_with(&channel(&fake, "client_keys = true")).await;
    let response = app
        .client
        .post(app.url("/api/v1/tasks"))
        .header("X-Provider-Key", "tsk_clients_own_key")
        .json(&json!({ "prompt": "mine", "model": "tripo-text" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 202);
    let task: Value = response.json().await.expect("json");
    let done = app.wait_terminal(task["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fake.creates_by_key("tsk_clients_own_key"), 1);
    assert_eq!(fake.creates_by_key(TRIPO_KEY), 0);
    let events = app.events(task["id"].as_str().expect("id"), None, 100).await;
    assert!(!format!("{done}{events:?}").contains("tsk_clients_own_key"));

    let response = app
        .client
        .post(app.url("/api/v1/tasks"))
        .header("X-Provider-Key", "sk-not-tripo")
        .json(&json!({ "prompt": "mine", "model": "tripo-text" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_client_key");
    assert!(!body.to_string().contains("sk-not-tripo"));
    app.stop().await;

    let app = TestApp::spawn_with(&channel(&fake, "")).await;
    let response = app
        .client
        .post(app.url("/api/v1/tasks"))
        .header("X-Provider-Key", "tsk_clients_own_key")
        .json(&json!({ "prompt": "mine", "model": "tripo-text" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "client_key_not_allowed");
    app.stop().await;
}

#[tokio::test]
async fn canceling_stops_the_polling() {
    let fake = FakeTripo::start(fast().outcome(Outcome::Stuck));
    let app = TestApp::spawn_with(&channel(&fake, "")).await;
    let (_, task) = submit_text(&app, "forever", json!({})).await;
    let id = task["id"].as_str().expect("id").to_owned();
    app.wait_task(&id, "polled", |t| t["stage"] == "upstream_running").await;
    let response = app.client.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.expect("cancel");
    assert!(response.status().is_success(), "{}", response.status());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let polls = fake.count(Route::List);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fake.count(Route::List), polls, "no more polls after the cancel");
    assert_eq!(app.wait_terminal(&id).await["status"], "canceled");
    app.stop().await;
}

#[tokio::test]
async fn a_full_local_channel_spills_over_to_tripo() {
    let fake = FakeTripo::start(fast());
    let local = r#"
[[channels]]
name = "gpu"
type = "echo"
priority = 10
max_concurrency = 1
max_queue = 0
models = [{ name = "tripo-text", kind = "text_to_3d" }]
"#;
    let app = TestApp::spawn_with(&format!("{local}{}", channel(&fake, ""))).await;
    let (_, first) = submit_text(&app, "first", json!({ "steps": 40, "step_ms": 50 })).await;
    let (status, second) = submit_text(&app, "second", json!({})).await;
    assert_eq!(status, 202, "{second}");
    assert_eq!(first["channel"], "gpu");
    assert_eq!(second["channel"], "tripo", "the full GPU channel spills over to the cloud");
    let done = app.wait_terminal(second["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    app.stop().await;
}

/// SIGKILL while Tripo and ModelScope jobs are being polled: after a restart every task
/// completes, and each upstream saw exactly one create per task.
#[tokio::test]
async fn a_kill_while_polling_resumes_every_job_without_a_second_create() {
    let fake = FakeTripo::start(TripoOptions::default().timeline(Duration::from_millis(200), Duration::from_secs(3)));
    let scope = FakeModelScope::start(ModelScopeOptions {
        queued_for: Duration::from_millis(200),
        run_for: Duration::from_secs(3),
        ..ModelScopeOptions::default()
    });
    let modelscope = format!(
        r#"
[[channels]]
name = "modelscope"
type = "modelscope"
secret = "{MODELSCOPE_TOKEN}"
max_concurrency = 10
deadline = "30s"
models = [{{ name = "qwen-image", kind = "text_to_image", upstream = "Qwen/Qwen-Image" }}]
[channels.options]
base_url = "{base}"
poll_interval = "50ms"
poll_max_interval = "200ms"
health_interval = "0s"
"#,
        base = scope.base_url()
    );
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("kiln.toml");
    std::fs::write(&config, config_toml(dir.path(), &format!("{}{modelscope}", channel(&fake, "")))).expect("config");
    let server = ChildServer::start(&config);
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..8 {
        let model = if i < 5 { "tripo-text" } else { "qwen-image" };
        let response = client
            .post(format!("{}/api/v1/tasks", server.base))
            .json(&json!({ "prompt": format!("kill {i}"), "model": model }))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 202);
        let task: Value = response.json().await.expect("json");
        ids.push(task["id"].as_str().expect("id").to_owned());
    }
    // Wait until both upstreams have every job, then kill kiln mid-poll.
    for _ in 0..200 {
        if fake.task_count() == 5 && scope.task_count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(fake.task_count(), 5);
    assert_eq!(scope.task_count(), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();

    let server = ChildServer::start(&config);
    for id in &ids {
        let mut last = Value::Null;
        for _ in 0..400 {
            let task: Value = client
                .get(format!("{}/api/v1/tasks/{id}", server.base))
                .send()
                .await
                .expect("GET")
                .json()
                .await
                .expect("json");
            if matches!(task["status"].as_str(), Some("succeeded" | "failed" | "canceled")) {
                last = task;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(last["status"], "succeeded", "{last}");
    }
    assert_eq!(fake.count(Route::Create), 5, "exactly one create per task");
    assert_eq!(scope.count(Route::Create), 3, "exactly one create per task");
    for i in 0..5 {
        assert_eq!(fake.creates_for_prompt(&format!("kill {i}")), 1);
    }
    for i in 5..8 {
        assert_eq!(scope.creates_for_prompt(&format!("kill {i}")), 1);
    }
    server.kill();
}

#[tokio::test]
async fn a_create_that_times_out_is_not_resent_and_a_slow_poll_is_only_retried() {
    let fake = FakeTripo::start(fast());
    let config =
        channel(&fake, "").replace("health_interval = \"0s\"", "health_interval = \"0s\"\nrequest_timeout = \"300ms\"");
    let app = TestApp::spawn_with(&config).await;
    fake.push_fault(Route::Create, Fault::Delay(Duration::from_secs(2)));
    let done = text_task(&app, "slow create").await;
    assert_eq!(code(&done), "upstream_outcome_unknown", "{done}");
    assert_eq!(fake.count(Route::Create), 1, "a timed-out create is never sent again");
    assert_eq!(fake.task_count(), 1, "it did make the job upstream");

    fake.push_fault(Route::List, Fault::Delay(Duration::from_secs(2)));
    fake.push_fault(Route::List, Fault::status(500, 1000, "server error"));
    let done = text_task(&app, "slow poll").await;
    assert_eq!(done["status"], "succeeded", "a slow or failed read is tried again: {done}");
    assert_eq!(fake.count(Route::Create), 2);
    app.stop().await;
}

#[tokio::test]
async fn channel_defaults_fill_in_and_overrides_force_parameters() {
    let fake = FakeTripo::start(fast());
    let extra = "defaults = { face_limit = 5000, pbr = true }\noverrides = { texture = false }";
    let app = TestApp::spawn_with(&channel(&fake, extra)).await;
    let done = {
        let (status, task) = submit_text(&app, "forced", json!({ "texture": true, "pbr": false })).await;
        assert_eq!(status, 202, "{task}");
        app.wait_terminal(task["id"].as_str().expect("id")).await
    };
    assert_eq!(done["status"], "succeeded", "{done}");
    let body = &fake.creates()[0].body;
    assert_eq!(body["face_limit"], 5000, "a default fills in: {body}");
    assert_eq!(body["pbr"], false, "the request's own value beats a default: {body}");
    assert_eq!(body["texture"], false, "an override beats the request: {body}");
    app.stop().await;
}

/// A graceful stop gives running jobs the grace period: a cloud job that ends upstream
/// within it is still polled, downloaded and finished by the stopping process, not
/// left for the next one.
#[tokio::test]
async fn a_cloud_job_that_ends_within_the_grace_period_is_finished_by_the_stopping_process() {
    let fake = FakeTripo::start(TripoOptions::default().timeline(Duration::from_millis(100), Duration::from_secs(1)));
    let app = TestApp::spawn_with(&channel(&fake, "")).await;
    let (status, task) = submit_text(&app, "finished while stopping", json!({})).await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().expect("id").to_owned();
    app.wait_task(&id, "submitted upstream", |_| fake.creates().len() == 1).await;
    let gateway = std::sync::Arc::clone(&app.gateway);
    // 5 s of grace (the test configuration's) against about 1 s left upstream.
    app.stop().await;
    let stored = gateway.db().get_task(id.parse().expect("task id")).await.expect("read").expect("task");
    assert_eq!(stored.status, kiln::tasks::TaskStatus::Succeeded, "{stored:?}");
    assert_eq!(fake.creates().len(), 1);
}
