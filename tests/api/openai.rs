//! The OpenAI-compatible face (seed 003 req 9–10) and the `openai_images` provider: kiln
//! in front of the fake OpenAI image API (`common::fakes::FakeOpenAi`), asked as OpenAI's
//! clients ask.

use std::time::Duration;

use base64::Engine;
use reqwest::header;
use serde_json::{Value, json};

use crate::{
    common::fakes::{
        FakeModelScope, FakeOpenAi, Fault, MODELSCOPE_TOKEN, ModelScopeOptions, OPENAI_KEY, OpenAiOptions, Route,
    },
    helpers::{ECHO_CHANNEL, TestApp},
};

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// An `openai_images` channel in front of `fake`, serving `dall-e-2` (and `painter`, kiln's
/// name for the same upstream model), with `options` added to its options.
pub fn openai_channel(fake: &FakeOpenAi, secret: &str, options: &str) -> String {
    format!(
        r#"
[[channels]]
name = "openai"
type = "openai_images"
secret = "{secret}"
max_concurrency = 2
max_queue = 10
models = [
  {{ name = "dall-e-2", kind = "text_to_image" }},
  {{ name = "painter", kind = "text_to_image", upstream = "dall-e-2" }},
]

[channels.options]
base_url = "{base}/v1"
{options}
"#,
        base = fake.base_url()
    )
}

/// A `modelscope` channel in front of `fake`, serving `qwen-image` (`Qwen/Qwen-Image`
/// upstream), polled quickly.
pub fn modelscope_channel(fake: &FakeModelScope) -> String {
    format!(
        r#"
[[channels]]
name = "modelscope"
type = "modelscope"
secret = "{MODELSCOPE_TOKEN}"
max_concurrency = 2
max_queue = 10
models = [{{ name = "qwen-image", kind = "text_to_image", upstream = "Qwen/Qwen-Image" }}]

[channels.options]
base_url = "{base}"
poll_interval = "50ms"
poll_max_interval = "100ms"
"#,
        base = fake.base_url()
    )
}

async fn spawn(fake: &FakeOpenAi, secret: &str, options: &str) -> TestApp {
    TestApp::spawn_with(&format!("{}\n{ECHO_CHANNEL}", openai_channel(fake, secret, options))).await
}

fn fake() -> FakeOpenAi {
    FakeOpenAi::start(OpenAiOptions::default().latency(Duration::from_millis(20)))
}

async fn generate(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/images/generations"))
        .bearer_auth("sk-the-client-s-own-key")
        .json(&body)
        .send()
        .await
        .expect("POST /v1/images/generations")
}

fn task_id(response: &reqwest::Response) -> String {
    response.headers().get("x-kiln-task-id").and_then(|v| v.to_str().ok()).expect("X-Kiln-Task-Id").to_owned()
}

/// OpenAI's envelope and nothing of kiln's own: `{"error": {message, type, param, code}}`.
fn assert_openai_error(body: &Value, kind: &str, code: &str) {
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert_eq!(error["type"], kind, "{body}");
    assert_eq!(error["code"], code, "{body}");
    assert!(error.as_object().is_some_and(|e| e.contains_key("param")), "{body}");
    assert!(body.get("request_id").is_none(), "kiln's native envelope leaked: {body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
}

async fn download(app: &TestApp, url: &str) -> Vec<u8> {
    let response = app.client.get(url).send().await.expect("download");
    assert_eq!(response.status(), 200, "{url}");
    response.bytes().await.expect("bytes").to_vec()
}

#[tokio::test]
async fn images_come_as_kiln_s_own_urls_or_as_base64_and_each_request_is_a_task() {
    let fake = fake();
    let app = spawn(&fake, OPENAI_KEY, "").await;

    let response = generate(&app, json!({ "model": "dall-e-2", "prompt": "a red vase", "size": "256x256" })).await;
    assert_eq!(response.status(), 200);
    let id = task_id(&response);
    let body: Value = response.json().await.expect("json");
    assert!(body["created"].as_i64().is_some_and(|c| c > 1_700_000_000), "{body}");
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 1);
    let url = data[0]["url"].as_str().expect("url");
    assert!(url.starts_with(&format!("{}/files/images/", app.base)), "kiln's own URL: {url}");
    assert!(data[0].get("b64_json").is_none(), "{body}");
    assert!(download(&app, url).await.starts_with(PNG_MAGIC));

    // Visible in the native API, with its event stream.
    let (status, task) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(task["kind"], "text_to_image");
    assert_eq!(task["status"], "succeeded");
    assert_eq!(task["model"], "dall-e-2");
    assert_eq!(task["params"], json!({ "size": "256x256" }));
    let events = app.events(&id, None, 20).await;
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("completed"), "{events:?}");

    let response = generate(
        &app,
        json!({ "model": "painter", "prompt": "a blue mug", "size": "256x256", "response_format": "b64_json", "user": "u-1" }),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let b64 = body["data"][0]["b64_json"].as_str().expect("b64_json");
    assert!(body["data"][0].get("url").is_none(), "{body}");
    let png = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    assert!(png.starts_with(PNG_MAGIC));

    // What the fake was asked: the upstream model, base64 (kiln's default), no `user`.
    let creates = fake.creates();
    assert_eq!(creates.len(), 2);
    assert_eq!(creates[1].body["model"], "dall-e-2", "kiln's `painter` is the upstream's dall-e-2");
    assert_eq!(creates[1].body["prompt"], "a blue mug");
    assert_eq!(creates[1].body["response_format"], "b64_json");
    assert!(creates[1].body.get("user").is_none(), "{}", creates[1].body);
    assert!(creates.iter().all(|c| c.key == OPENAI_KEY), "the channel's key, never the client's");
    app.stop().await;
}

#[tokio::test]
async fn two_images_in_their_order_and_upstream_urls_are_downloaded_and_kept() {
    let fake = fake();
    let app = spawn(&fake, OPENAI_KEY, "upstream_format = \"url\"").await;
    let response =
        generate(&app, json!({ "model": "dall-e-2", "prompt": "two cats", "n": 2, "size": "256x256" })).await;
    assert_eq!(response.status(), 200);
    let id = task_id(&response);
    let body: Value = response.json().await.expect("json");
    let urls: Vec<&str> = body["data"].as_array().expect("data").iter().filter_map(|d| d["url"].as_str()).collect();
    assert_eq!(urls.len(), 2, "{body}");
    assert!(urls[0].ends_with("/image-1.png") && urls[1].ends_with("/image-2.png"), "{urls:?}");
    for url in &urls {
        assert!(url.starts_with(&app.base), "kept by kiln, not the upstream's link: {url}");
        assert!(download(&app, url).await.starts_with(PNG_MAGIC));
    }
    let created = &fake.creates()[0];
    assert_eq!(created.body["n"], 2);
    assert_eq!(created.body["response_format"], "url");
    assert_eq!(fake.count(Route::Download), 2);
    assert_eq!(fake.downloads_with_authorization(), 0, "result links are fetched without the key");

    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(result["outputs"].as_array().map(Vec::len), Some(2), "{result}");
    assert_eq!(result["metadata"]["provider"]["provider"], "openai_images", "{result}");
    app.stop().await;
}

#[tokio::test]
async fn prefer_respond_async_answers_202_with_the_task_then_its_answer() {
    let fake = FakeOpenAi::start(OpenAiOptions::default().latency(Duration::from_millis(300)));
    let app = spawn(&fake, OPENAI_KEY, "").await;
    let response = app
        .client
        .post(app.url("/v1/images/generations"))
        .header("Prefer", "respond-async")
        .json(&json!({ "model": "dall-e-2", "prompt": "a lamp", "size": "256x256" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 202);
    let task: Value = response.json().await.expect("json");
    let id = task["id"].as_str().expect("id").to_owned();
    assert_eq!(task["object"], "image.generation.task");
    assert_eq!(task["model"], "dall-e-2");
    assert!(matches!(task["status"].as_str(), Some("queued" | "running")), "{task}");
    assert_eq!(task["status_url"], format!("{}/v1/images/generations/{id}", app.base));
    assert_eq!(task["task_url"], format!("{}/api/v1/tasks/{id}", app.base));
    assert_eq!(task["events_url"], format!("{}/api/v1/tasks/{id}/events", app.base));

    let events = app.events(&id, None, 20).await;
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("completed"), "{events:?}");
    let response = app
        .client
        .get(format!("{}?response_format=b64_json", task["status_url"].as_str().unwrap_or_default()))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let png = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["b64_json"].as_str().expect("b64_json"))
        .expect("base64");
    assert!(png.starts_with(PNG_MAGIC));

    // Another kind of task, or none, is not found there.
    let echo = app.submit_image(&[]).await["id"].as_str().expect("id").to_owned();
    for id in [echo.as_str(), "00000000-0000-4000-8000-000000000000", "nonsense"] {
        let response = app.get(&format!("/v1/images/generations/{id}")).await;
        assert_eq!(response.status(), 404, "{id}");
        assert_openai_error(&response.json().await.expect("json"), "invalid_request_error", "task_not_found");
    }
    app.stop().await;
}

#[tokio::test]
async fn refusals_are_in_openai_s_envelope_with_the_statuses_its_clients_expect() {
    let fake = fake();
    let app = spawn(&fake, OPENAI_KEY, "").await;

    let response = generate(&app, json!({ "model": "dall-e-9", "prompt": "x" })).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("json");
    assert_openai_error(&body, "invalid_request_error", "model_not_found");
    assert_eq!(body["error"]["param"], "model");

    let response = generate(&app, json!({ "model": "echo-text", "prompt": "x" })).await;
    assert_eq!(response.status(), 400, "a 3D model is not an image model");
    assert_openai_error(&response.json().await.expect("json"), "invalid_request_error", "model_kind_mismatch");

    for (body, param) in [
        (json!({ "model": "dall-e-2" }), "prompt"),
        (json!({ "model": "dall-e-2", "prompt": "x", "n": 0 }), "n"),
        (json!({ "model": "dall-e-2", "prompt": "x", "response_format": "gif" }), "response_format"),
        (json!({ "model": "dall-e-2", "prompt": "   " }), "prompt"),
    ] {
        let response = generate(&app, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let answer: Value = response.json().await.expect("json");
        assert_eq!(answer["error"]["type"], "invalid_request_error", "{answer}");
        assert_eq!(answer["error"]["param"], param, "{answer}");
    }
    // A field the provider does not take is its refusal, before anything is queued.
    let response = generate(&app, json!({ "model": "dall-e-2", "prompt": "x", "steps": 20 })).await;
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.expect("json");
    assert_openai_error(&answer, "invalid_request_error", "invalid_params");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("steps")), "{answer}");

    let response = app.client.post(app.url("/v1/images/generations")).body("{oops").send().await.expect("POST");
    assert_eq!(response.status(), 400);
    assert_openai_error(&response.json().await.expect("json"), "invalid_request_error", "malformed_json");
    let response = app
        .client
        .post(app.url("/v1/images/generations"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body("a cat")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 415);
    assert_openai_error(&response.json().await.expect("json"), "invalid_request_error", "unsupported_media_type");

    // Answers made outside the face's handlers are put in its shape too.
    let response = app.client.put(app.url("/v1/images/generations")).send().await.expect("PUT");
    assert_eq!(response.status(), 405);
    assert!(response.headers().contains_key(header::ALLOW));
    assert!(response.headers().contains_key("x-request-id"));
    assert_openai_error(&response.json().await.expect("json"), "invalid_request_error", "method_not_allowed");
    let response = app.client.post(app.url("/v1/chat/completions")).json(&json!({})).send().await.expect("POST");
    assert_eq!(response.status(), 404);
    assert_openai_error(&response.json().await.expect("json"), "invalid_request_error", "not_found");
    let response = app
        .client
        .post(app.url("/v1/images/generations"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(vec![b' '; 300 * 1024])
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 413);
    assert_openai_error(&response.json().await.expect("json"), "invalid_request_error", "payload_too_large");

    assert_eq!(fake.count(Route::Create), 0, "nothing reached the upstream");
    app.stop().await;
}

#[tokio::test]
async fn the_upstream_s_refusals_fail_the_task_with_kiln_s_code_and_are_not_retried_by_the_client() {
    let fake = fake();
    // Without the health probe, which would rest the channel at once on a refused key.
    let app = spawn(&fake, "sk-wrong-key-for-the-fake", "health_interval = \"0s\"").await;
    let response = generate(&app, json!({ "model": "dall-e-2", "prompt": "a red vase", "size": "256x256" })).await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-should-retry"], "false");
    let id = task_id(&response);
    let text = response.text().await.expect("text");
    assert!(!text.contains("sk-wrong-key-for-the-fake"), "{text}");
    assert_openai_error(&serde_json::from_str(&text).expect("json"), "upstream_error", "upstream_auth");
    let task = app.wait_terminal(&id).await;
    assert_eq!(task["error"]["code"], "upstream_auth");
    assert!(!task.to_string().contains("sk-wrong-key-for-the-fake"), "{task}");
    assert_eq!(fake.count(Route::Create), 1, "a refused key is not tried again");
    app.stop().await;
}

#[tokio::test]
async fn base64_garbage_fails_bad_output_and_a_policy_refusal_is_a_400() {
    let fake = fake();
    let app = spawn(&fake, OPENAI_KEY, "").await;
    fake.push_fault(
        Route::Create,
        Fault::Raw {
            http: 200,
            content_type: "application/json".into(),
            body: json!({ "created": 1, "data": [{ "b64_json": "this is *not* base64!" }] }).to_string(),
        },
    );
    let response = generate(&app, json!({ "model": "dall-e-2", "prompt": "x" })).await;
    assert_eq!(response.status(), 502);
    let id = task_id(&response);
    assert_openai_error(&response.json().await.expect("json"), "upstream_error", "bad_output");
    let (_, task) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"]["code"], "bad_output");

    // Base64 of bytes that are no image: refused by the image check.
    fake.push_fault(
        Route::Create,
        Fault::Raw {
            http: 200,
            content_type: "application/json".into(),
            body: json!({ "created": 1, "data": [{ "b64_json": base64::engine::general_purpose::STANDARD.encode(b"<html>no</html>") }] })
                .to_string(),
        },
    );
    let response = generate(&app, json!({ "model": "dall-e-2", "prompt": "x" })).await;
    assert_eq!(response.status(), 502);
    assert_openai_error(&response.json().await.expect("json"), "upstream_error", "bad_output");

    fake.push_fault(
        Route::Create,
        Fault::Raw {
            http: 400,
            content_type: "application/json".into(),
            body: json!({ "error": {
                "message": "Your request was rejected as a result of our safety system.",
                "type": "image_generation_user_error", "param": null, "code": "content_policy_violation",
            } })
            .to_string(),
        },
    );
    let response = generate(&app, json!({ "model": "dall-e-2", "prompt": "x" })).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_openai_error(&body, "invalid_request_error", "content_policy_violation");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("safety system")), "{body}");

    // A proxy's 502 after the request went out: the images may exist; never resent.
    fake.push_fault(Route::Create, Fault::NonJson502);
    let response = generate(&app, json!({ "model": "dall-e-2", "prompt": "x" })).await;
    assert_eq!(response.status(), 502);
    assert_openai_error(&response.json().await.expect("json"), "upstream_error", "upstream_outcome_unknown");
    assert_eq!(fake.count(Route::Create), 4);
    app.stop().await;
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after_and_the_models_listed_are_the_image_models() {
    let fake = FakeOpenAi::start(OpenAiOptions::default().latency(Duration::from_millis(1500)));
    let channel = openai_channel(&fake, OPENAI_KEY, "")
        .replace("max_concurrency = 2", "max_concurrency = 1")
        .replace("max_queue = 10", "max_queue = 0");
    let app = TestApp::spawn_with(&format!("{channel}\n{ECHO_CHANNEL}")).await;

    let (status, models) = app.get_json("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["dall-e-2", "painter"], "image models only: {models}");
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(models["data"][0]["owned_by"], "kiln");
    assert!(models["data"][0]["created"].as_i64().is_some_and(|c| c > 0));
    let (status, model) = app.get_json("/v1/models/painter").await;
    assert_eq!((status, model["id"].as_str()), (200, Some("painter")));
    let response = app.get("/v1/models/echo").await;
    assert_eq!(response.status(), 404);
    assert_openai_error(&response.json().await.expect("json"), "invalid_request_error", "model_not_found");

    let first = app
        .client
        .post(app.url("/v1/images/generations"))
        .header("Prefer", "respond-async")
        .json(&json!({ "model": "dall-e-2", "prompt": "first" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(first.status(), 202);
    let response = generate(&app, json!({ "model": "dall-e-2", "prompt": "second" })).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()[header::RETRY_AFTER], "10");
    assert_openai_error(&response.json().await.expect("json"), "rate_limit_error", "queue_full");
    let id = first.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    app.wait_terminal(&id).await;
    app.stop().await;
}

#[tokio::test]
async fn the_upstream_keys_are_never_in_an_answer_nor_in_the_log() {
    let fake = fake();
    let wrong = "sk-another-key-the-fake-refuses";
    let dir = tempfile::tempdir().expect("tempdir");
    let channels = format!(
        "{}\n{}",
        openai_channel(&fake, OPENAI_KEY, ""),
        openai_channel(&fake, wrong, "health_interval = \"0s\"")
            .replace("name = \"openai\"", "name = \"locked\"")
            .replace("name = \"dall-e-2\"", "name = \"locked-1\"")
            .replace("name = \"painter\"", "name = \"locked-2\""),
    );
    // The real binary, logging everything (every crate at debug) to a file.
    let config = crate::helpers::config_toml(dir.path(), &channels).replace("level = \"warn\"", "level = \"debug\"");
    let config_path = dir.path().join("kiln.toml");
    std::fs::write(&config_path, config).expect("config");
    let log = dir.path().join("kiln.log");
    let kiln = crate::common::KilnProcess::start(&config_path, &log);
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", kiln.base);
    let mut answers = String::new();
    for (body, prefer) in [
        (json!({ "model": "dall-e-2", "prompt": "a", "size": "256x256" }), None),
        (json!({ "model": "painter", "prompt": "b", "size": "256x256", "response_format": "b64_json" }), None),
        (json!({ "model": "dall-e-2", "prompt": "c", "size": "256x256" }), Some("respond-async")),
        (json!({ "model": "locked-1", "prompt": "d" }), None),
        (json!({ "model": "dall-e-2", "prompt": "e", "size": "7x7" }), None),
    ] {
        let mut request = client.post(url("/v1/images/generations")).json(&body);
        if let Some(prefer) = prefer {
            request = request.header("Prefer", prefer);
        }
        let response = request.send().await.expect("POST");
        let id = response.headers().get("x-kiln-task-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let headers = format!("{:?}", response.headers());
        answers.push_str(&format!("{headers}\n{}\n", response.text().await.expect("text")));
        if let Some(id) = id {
            for path in [format!("/api/v1/tasks/{id}"), format!("/api/v1/tasks/{id}/result")] {
                for _ in 0..100 {
                    let text = client.get(url(&path)).send().await.expect("GET").text().await.expect("text");
                    if !text.contains("\"queued\"") && !text.contains("\"running\"") {
                        answers.push_str(&text);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    for path in ["/api/v1/catalog", "/v1/models", "/api/v1/tasks?limit=100"] {
        answers.push_str(&client.get(url(path)).send().await.expect("GET").text().await.expect("text"));
    }
    assert!(answers.contains("upstream_auth"), "the refused key was tried: {answers}");
    assert!(answers.contains("upstream_invalid_params"), "the refused size was tried: {answers}");
    drop(kiln);
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(logged.contains("upstream_auth"), "the log says what happened");
    for key in [OPENAI_KEY, wrong] {
        assert!(!answers.contains(key), "{key} in an answer");
        assert!(!logged.contains(key), "{key} in the log:\n{}", crate::common::log_tail(&log, 40));
    }
}

#[tokio::test]
async fn a_body_that_stalls_gets_408_in_openai_s_envelope() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = TestApp::spawn_with_server("body_timeout = \"1s\"").await;
    let mut stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://")).await.expect("connect");
    let head = "POST /v1/images/generations HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"prompt\": ";
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.expect("closed").expect("read");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("an answer");
    assert!(head.starts_with("HTTP/1.1 408"), "{text}");
    assert!(head.to_ascii_lowercase().contains("x-request-id:"), "{text}");
    assert_openai_error(&serde_json::from_str(body.trim()).expect("json"), "invalid_request_error", "request_timeout");
    app.stop().await;
}

#[tokio::test]
async fn a_client_s_own_provider_key_is_used_for_its_task_where_the_channel_takes_one() {
    let own = "sk-the-client-s-own-openai-key";
    let fake = FakeOpenAi::start(OpenAiOptions::default().key(own).latency(Duration::from_millis(20)));
    let channel = openai_channel(&fake, OPENAI_KEY, "").replace("max_queue = 10", "max_queue = 10\nclient_keys = true");
    let app = TestApp::spawn_with(&channel).await;
    let response = app
        .client
        .post(app.url("/v1/images/generations"))
        .header("X-Provider-Key", own)
        .json(&json!({ "model": "dall-e-2", "prompt": "x", "size": "256x256" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("text");
    assert!(!text.contains(own), "{text}");
    assert_eq!(fake.creates().last().map(|c| c.key.clone()).as_deref(), Some(own));
    let response = app
        .client
        .post(app.url("/v1/images/generations"))
        .header("X-Provider-Key", "has a space")
        .json(&json!({ "model": "dall-e-2", "prompt": "x" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 400);
    assert_openai_error(&response.json().await.expect("json"), "invalid_request_error", "invalid_client_key");
    app.stop().await;
}

#[tokio::test]
async fn in_front_of_modelscope_the_extras_go_through_and_the_answer_waits_for_the_polled_task() {
    let fake = FakeModelScope::start(
        ModelScopeOptions::default().timeline(Duration::from_millis(60), Duration::from_millis(120)),
    );
    let app = TestApp::spawn_with(&modelscope_channel(&fake)).await;
    let response = generate(
        &app,
        json!({
            "model": "qwen-image", "prompt": "a castle", "n": 1, "size": "512x512", "response_format": "b64_json",
            "negative_prompt": "blur", "seed": 7, "steps": 20, "guidance": 4.5, "loras": "org/style-lora",
        }),
    )
    .await;
    assert_eq!(response.status(), 200);
    let id = task_id(&response);
    let body: Value = response.json().await.expect("json");
    let image = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["b64_json"].as_str().expect("b64_json"))
        .expect("base64");
    assert!(!image.is_empty());
    let sent = &fake.creates()[0].body;
    assert_eq!(sent["model"], "Qwen/Qwen-Image", "{sent}");
    for (field, value) in [
        ("negative_prompt", json!("blur")),
        ("seed", json!(7)),
        ("steps", json!(20)),
        ("guidance", json!(4.5)),
        ("loras", json!("org/style-lora")),
        ("size", json!("512x512")),
    ] {
        assert_eq!(sent[field], value, "{field}: {sent}");
    }
    let (_, task) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["channel"], "modelscope");
    assert_eq!(task["status"], "succeeded");

    // Two images are more than ModelScope makes per task: its refusal, in OpenAI's words.
    let response = generate(&app, json!({ "model": "qwen-image", "prompt": "a castle", "n": 2 })).await;
    assert_eq!(response.status(), 400);
    assert_openai_error(&response.json().await.expect("json"), "invalid_request_error", "invalid_params");
    app.stop().await;
}
