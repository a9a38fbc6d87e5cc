//! The fake upstream providers (`tests/common/fakes`) checked on their own, over HTTP
//! with reqwest: what other tests and the benchmarks rely on them to do.

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode, multipart};
use serde_json::{Value, json};

use crate::common::fakes::{
    FakeModelScope, FakeOpenAi, FakeTripo, Fault, MODELSCOPE_TOKEN, ModelScopeOptions, OPENAI_KEY, OpenAiOptions,
    Outcome, Route, TRIPO_KEY, TripoOptions, png_solid,
};

const FAST_QUEUE: Duration = Duration::from_millis(40);
const FAST_RUN: Duration = Duration::from_millis(120);
/// For the tests that must see every phase, even on a loaded machine.
const SEEN_QUEUE: Duration = Duration::from_millis(250);
const SEEN_RUN: Duration = Duration::from_millis(250);

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(10)).build().expect("client")
}

fn tripo_fast() -> TripoOptions {
    TripoOptions::default().timeline(FAST_QUEUE, FAST_RUN)
}

async fn body_json(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `(status, body)` of a Tripo call with `key`.
async fn tripo_post(client: &Client, fake: &FakeTripo, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let response =
        client.post(format!("{}{path}", fake.base_url())).bearer_auth(key).json(&body).send().await.expect("send");
    assert!(response.headers().contains_key("x-tripo-trace-id"), "{path}: no X-Tripo-Trace-ID");
    (response.status(), body_json(response).await)
}

async fn tripo_get(client: &Client, fake: &FakeTripo, key: &str, id: &str) -> (StatusCode, Value) {
    let response =
        client.get(format!("{}/v3/tasks/{id}", fake.base_url())).bearer_auth(key).send().await.expect("send");
    assert!(response.headers().contains_key("x-tripo-trace-id"));
    (response.status(), body_json(response).await)
}

/// Polls until the task is terminal; returns every status seen and the last detail.
async fn tripo_wait(client: &Client, fake: &FakeTripo, id: &str) -> (Vec<String>, Value) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    loop {
        let (status, body) = tripo_get(client, fake, TRIPO_KEY, id).await;
        assert_eq!(status, 200, "{body}");
        let data = body["data"].clone();
        let state = data["status"].as_str().expect("status").to_owned();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if !matches!(state.as_str(), "queued" | "running") {
            return (seen, data);
        }
        assert!(Instant::now() < deadline, "task {id} never ended: {seen:?}");
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

fn assert_error(body: &Value, code: i64) {
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], "error", "{body}");
    for field in ["message", "suggestion", "request_id"] {
        assert!(body[field].is_string(), "{field} missing: {body}");
    }
}

/// Checks the GLB container: header, JSON chunk, BIN chunk, lengths.
fn assert_glb(bytes: &[u8]) {
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
    assert_eq!(&bytes[..4], b"glTF");
    assert_eq!(word(4), 2, "version");
    assert_eq!(word(8), bytes.len(), "header length");
    let json_len = word(12);
    assert_eq!(&bytes[16..20], b"JSON");
    assert_eq!(json_len % 4, 0);
    let gltf: Value = serde_json::from_slice(&bytes[20..20 + json_len]).expect("JSON chunk");
    assert_eq!(gltf["asset"]["version"], "2.0");
    let bin_at = 20 + json_len;
    let bin_len = word(bin_at);
    assert_eq!(&bytes[bin_at + 4..bin_at + 8], b"BIN\0");
    assert_eq!(bin_at + 8 + bin_len, bytes.len());
    assert!(gltf["buffers"][0]["byteLength"].as_u64().expect("byteLength") as usize <= bin_len);
}

/// A PNG's size, from its IHDR.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    (be(16), be(20))
}

async fn download(client: &Client, url: &str) -> reqwest::Response {
    client.get(url).send().await.expect("download")
}

#[tokio::test]
async fn tripo_upload_create_poll_download() {
    let fake = FakeTripo::start(TripoOptions::default().timeline(SEEN_QUEUE, SEEN_RUN));
    let client = client();

    // Upload, then image-to-model with the file token.
    let part = multipart::Part::bytes(png_solid(32, 32, [10, 20, 30])).file_name("a.png").mime_str("image/png");
    let response = client
        .post(format!("{}/v3/files", fake.base_url()))
        .bearer_auth(TRIPO_KEY)
        .multipart(multipart::Form::new().part("file", part.expect("part")))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 200);
    let body = body_json(response).await;
    assert_eq!(body["code"], 0);
    assert_eq!(body["status"], "success");
    let token = body["data"]["file_token"].as_str().expect("file_token").to_owned();
    assert!(token.starts_with("file_"), "{token}");

    let (status, body) = tripo_post(
        &client,
        &fake,
        TRIPO_KEY,
        "/v3/generation/image-to-model",
        json!({"input": token, "model": "v2.5-20250123", "texture": true, "pbr": true, "compress": "geometry"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "queued");
    assert_eq!(body["data"]["type"], "image_to_model");
    let id = body["data"]["task_id"].as_str().expect("task_id").to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert_eq!(fake.balance(TRIPO_KEY), Some((9_990, 10)), "credits frozen");

    let (seen, detail) = tripo_wait(&client, &fake, &id).await;
    assert_eq!(seen, ["queued", "running", "success"]);
    assert_eq!(detail["progress"], 100);
    assert_eq!(detail["credits_consumed"], 10);
    assert!(detail["created_at"].as_str().expect("created_at").ends_with('Z'));
    assert!(detail["completed_at"].is_string());
    assert!(fake.completed_at(&id).is_some());
    assert_eq!(fake.balance(TRIPO_KEY), Some((9_990, 0)), "credits consumed");

    // Downloads: no key, a real GLB and a real PNG.
    let glb = download(&client, detail["output"]["model_url"].as_str().expect("model_url")).await;
    assert_eq!(glb.status(), 200);
    assert_glb(&glb.bytes().await.expect("glb"));
    let preview = download(&client, detail["output"]["rendered_image_url"].as_str().expect("preview")).await;
    assert_eq!(preview.status(), 200);
    assert_eq!(png_size(&preview.bytes().await.expect("png")), (256, 256));

    // Balance over the API, and the counters.
    let response = client
        .get(format!("{}/v3/account/balance", fake.base_url()))
        .bearer_auth(TRIPO_KEY)
        .send()
        .await
        .expect("balance");
    let body = body_json(response).await;
    assert_eq!(body["data"]["balance"], 9_990.0);
    assert_eq!(body["data"]["frozen"], 0.0);
    assert_eq!(fake.count(Route::Upload), 1);
    assert_eq!(fake.count(Route::Create), 1);
    assert_eq!(fake.count_path("/v3/generation/image-to-model"), 1);
    assert_eq!(fake.count(Route::Download), 2);
    assert_eq!(fake.count(Route::Balance), 1);
    assert!(fake.count(Route::Get) >= 3);
    assert_eq!(fake.downloads_with_authorization(), 0);
    assert_eq!(fake.creates_by_key(TRIPO_KEY), 1);
    assert_eq!(fake.creates()[0].body["input"], token.as_str());
    assert!(fake.calls().iter().filter(|c| c.route == Route::Download).all(|c| !c.had_authorization));

    // text-to-model, ended at once by the test; a download that sends the key is logged.
    let (_, body) = tripo_post(
        &client,
        &fake,
        TRIPO_KEY,
        "/v3/generation/text-to-model",
        json!({"prompt": "a red teapot", "model": "v3.0-20250812", "face_limit": 5000}),
    )
    .await;
    let id = body["data"]["task_id"].as_str().expect("task_id").to_owned();
    assert!(fake.complete(&id));
    let (_, body) = tripo_get(&client, &fake, TRIPO_KEY, &id).await;
    assert_eq!(body["data"]["status"], "success");
    let url = body["data"]["output"]["model_url"].as_str().expect("model_url");
    client.get(url).bearer_auth(TRIPO_KEY).send().await.expect("download");
    assert_eq!(fake.downloads_with_authorization(), 1);
    assert_eq!(fake.creates_for_prompt("a red teapot"), 1);
}

#[tokio::test]
async fn tripo_keys_credits_and_validation() {
    let fake = FakeTripo::start(tripo_fast().key("tsk_other", 100).key("tsk_broke", 0));
    let client = client();
    let text = |prompt: &str| json!({"prompt": prompt, "model": "v2.5-20250123"});

    let (_, body) = tripo_post(&client, &fake, TRIPO_KEY, "/v3/generation/text-to-model", text("a cat")).await;
    let id = body["data"]["task_id"].as_str().expect("task_id").to_owned();

    // Another key does not see the task.
    let (status, body) = tripo_get(&client, &fake, "tsk_other", &id).await;
    assert_eq!(status, 404);
    assert_error(&body, 2001);
    let (status, body) = tripo_post(&client, &fake, "tsk_other", "/v3/tasks/list", json!({"task_ids": [id]})).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["missed"], json!([id]));
    assert_eq!(body["data"]["tasks"], json!({}));
    let (_, body) = tripo_post(&client, &fake, TRIPO_KEY, "/v3/tasks/list", json!({"task_ids": [id, "nope"]})).await;
    assert_eq!(body["data"]["tasks"][&id]["task_id"], id.as_str());
    assert_eq!(body["data"]["missed"], json!(["nope"]));
    let ids: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let (status, body) = tripo_post(&client, &fake, TRIPO_KEY, "/v3/tasks/list", json!({"task_ids": ids})).await;
    assert_eq!(status, 400);
    assert_error(&body, 1004);

    // Auth and credits.
    let response = client.get(format!("{}/v3/tasks/{id}", fake.base_url())).send().await.expect("send");
    assert_eq!(response.status(), 401);
    assert_error(&body_json(response).await, 2);
    let (status, body) = tripo_get(&client, &fake, "sk-not-tripo", &id).await;
    assert_eq!(status, 401);
    assert_error(&body, 2);
    let (status, body) = tripo_post(&client, &fake, "tsk_broke", "/v3/generation/text-to-model", text("a cat")).await;
    assert_eq!(status, 403);
    assert_error(&body, 2010);

    // Parameters.
    let long = "x".repeat(1025);
    let cases = [
        ("/v3/generation/text-to-model", json!({"prompt": "a cat"}), 1004),
        ("/v3/generation/text-to-model", json!({"prompt": long, "model": "v2.5-20250123"}), 1004),
        ("/v3/generation/text-to-model", json!({"prompt": "a", "model": "v2.5-20250123", "compress": true}), 1004),
        ("/v3/generation/text-to-model", json!({"prompt": "a", "model": "v2.5-20250123", "texture": "yes"}), 1004),
        ("/v3/generation/text-to-model", json!({"prompt": "a", "model": "v2.5-20250123", "face_limit": 1.5}), 1004),
        ("/v3/generation/text-to-model", json!({"prompt": "a", "model": "P1-20260311", "quad": false}), 1004),
        ("/v3/generation/text-to-model", json!({"prompt": "a", "model": "v9"}), 2017),
        ("/v3/generation/image-to-model", json!({"input": "file_nope", "model": "v2.5-20250123"}), 1004),
        ("/v3/generation/image-to-model", json!({"input": "not a thing", "model": "v2.5-20250123"}), 1004),
    ];
    for (path, body, code) in cases {
        let (status, answer) = tripo_post(&client, &fake, TRIPO_KEY, path, body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_error(&answer, code);
    }
    let response = client
        .post(format!("{}/v3/generation/text-to-model", fake.base_url()))
        .bearer_auth(TRIPO_KEY)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);

    // Uploads: empty, not an image.
    for (bytes, code) in [(Vec::new(), 2003), (b"hello, world".to_vec(), 2004)] {
        let form = multipart::Form::new().part("file", multipart::Part::bytes(bytes).file_name("f.png"));
        let response = client
            .post(format!("{}/v3/files", fake.base_url()))
            .bearer_auth(TRIPO_KEY)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status(), 400);
        assert_error(&body_json(response).await, code);
    }
    assert_eq!(fake.task_count(), 1, "refused creates create nothing");
    assert_eq!(fake.creates().len(), 1);
    assert_eq!(fake.count(Route::Create), 12);
}

#[tokio::test]
async fn tripo_resets_reach_the_client_as_transport_errors() {
    // The default timeline (300 ms + 1 s): the task is still running when its credits
    // are checked.
    let fake = FakeTripo::start(TripoOptions::default());
    let client = client();
    let create = || {
        client
            .post(format!("{}/v3/generation/text-to-model", fake.base_url()))
            .bearer_auth(TRIPO_KEY)
            .header("x-request-id", "kiln-task-1")
            .json(&json!({"prompt": "a cat", "model": "v2.5-20250123"}))
            .send()
    };

    fake.push_fault(Route::Create, Fault::ResetBeforeAccept);
    let error = create().await.expect_err("reset before accept");
    assert!(!error.is_status() && !error.is_timeout(), "{error:?}");
    assert_eq!(fake.task_count(), 0);

    fake.push_fault(Route::Create, Fault::ResetAfterAccept);
    let error = create().await.expect_err("reset after accept");
    assert!(!error.is_status() && !error.is_timeout(), "{error:?}");
    assert_eq!(fake.task_count(), 1, "the task exists upstream");
    let creates = fake.creates();
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].request_id.as_deref(), Some("kiln-task-1"));
    assert_eq!(fake.balance(TRIPO_KEY), Some((9_990, 10)), "and it is billed");

    // The same client still works afterwards; the calls were all counted.
    assert_eq!(create().await.expect("third create").status(), 200);
    assert_eq!(fake.count(Route::Create), 3);
    assert_eq!(fake.task_count(), 2);
}

#[tokio::test]
async fn tripo_answer_faults() {
    let fake = FakeTripo::start(tripo_fast());
    let client = client();
    let create = |client: &Client| {
        client
            .post(format!("{}/v3/generation/text-to-model", fake.base_url()))
            .bearer_auth(TRIPO_KEY)
            .json(&json!({"prompt": "a cat", "model": "v2.5-20250123"}))
            .send()
    };

    fake.push_fault(Route::Create, Fault::retry_after(429, 2000, "You have exceeded the limit of generation", 7));
    fake.push_fault(Route::Create, Fault::NonJson502);
    fake.push_fault(Route::Create, Fault::BadJson);
    fake.push_fault(Route::Create, Fault::status(503, 1001, "Service unavailable"));
    assert_eq!(fake.pending_faults(Route::Create), 4);

    let response = create(&client).await.expect("429");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert!(response.headers().contains_key("x-tripo-trace-id"));
    assert_error(&body_json(response).await, 2000);

    let response = create(&client).await.expect("502");
    assert_eq!(response.status(), 502);
    assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("text/html"));
    assert!(response.text().await.expect("body").contains("502 Bad Gateway"));

    let response = create(&client).await.expect("bad JSON");
    assert_eq!(response.status(), 200);
    assert!(serde_json::from_str::<Value>(&response.text().await.expect("body")).is_err());

    let response = create(&client).await.expect("503");
    assert_eq!(response.status(), 503);
    assert_error(&body_json(response).await, 1001);
    assert_eq!(fake.task_count(), 0, "refused by faults: nothing created");

    // A slow answer: the client gives up, the task exists.
    fake.push_fault(Route::Create, Fault::Delay(Duration::from_millis(600)));
    let impatient = Client::builder().timeout(Duration::from_millis(150)).build().expect("client");
    let error = create(&impatient).await.expect_err("timeout");
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(fake.task_count(), 1);

    // Outcomes: failed with a code, cancelled; refunds.
    fake.push_outcome(Outcome::failed(2008, "content policy violation"));
    fake.push_outcome(Outcome::Cancelled);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let body = body_json(create(&client).await.expect("create")).await;
        ids.push(body["data"]["task_id"].as_str().expect("task_id").to_owned());
    }
    // The delayed task may have ended by itself already.
    assert!((2..=3).contains(&fake.complete_all()));
    let (_, failed) = tripo_get(&client, &fake, TRIPO_KEY, &ids[0]).await;
    assert_eq!(failed["data"]["status"], "failed");
    assert_eq!(failed["data"]["error_code"], 2008);
    assert_eq!(failed["data"]["error_message"], "content policy violation");
    assert_eq!(failed["data"]["output"], json!({}));
    assert_eq!(failed["data"]["credits_consumed"], 0);
    let (_, cancelled) = tripo_get(&client, &fake, TRIPO_KEY, &ids[1]).await;
    assert_eq!(cancelled["data"]["status"], "cancelled");
    assert_eq!(fake.balance(TRIPO_KEY), Some((9_990, 0)), "only the success is billed");
}

#[tokio::test]
async fn tripo_stuck_task_ends_when_told() {
    let fake = FakeTripo::start(tripo_fast().timeline(Duration::ZERO, Duration::from_millis(20)));
    let client = client();
    fake.push_outcome(Outcome::Stuck);
    let (_, body) = tripo_post(
        &client,
        &fake,
        TRIPO_KEY,
        "/v3/generation/text-to-model",
        json!({"prompt": "a cat", "model": "v2.5-20250123"}),
    )
    .await;
    let id = body["data"]["task_id"].as_str().expect("task_id").to_owned();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let (_, body) = tripo_get(&client, &fake, TRIPO_KEY, &id).await;
    assert_eq!(body["data"]["status"], "running");
    assert_eq!(body["data"]["progress"], 99);
    assert_eq!(fake.completed_at(&id), None);

    let before = Instant::now();
    assert!(fake.complete(&id));
    let at = fake.completed_at(&id).expect("terminal");
    assert!(at >= before, "the terminal instant is when it was told, not its planned end");
    assert_eq!(fake.status(&id).as_deref(), Some("success"));
    assert_eq!(fake.complete_all(), 0);
}

#[tokio::test]
async fn tripo_urls_expire_and_downloads_fail() {
    let fake = FakeTripo::start(tripo_fast().url_ttl(Duration::from_millis(300)));
    let client = client();
    let (_, body) = tripo_post(
        &client,
        &fake,
        TRIPO_KEY,
        "/v3/generation/text-to-model",
        json!({"prompt": "a cat", "model": "v2.5-20250123"}),
    )
    .await;
    let id = body["data"]["task_id"].as_str().expect("task_id").to_owned();
    fake.complete(&id);
    let model_url = |body: &Value| body["data"]["output"]["model_url"].as_str().expect("model_url").to_owned();

    // The first URL handed out is already expired; a re-poll gives a fresh one.
    fake.push_fault(Route::Get, Fault::ExpiredUrls);
    let (_, body) = tripo_get(&client, &fake, TRIPO_KEY, &id).await;
    let response = download(&client, &model_url(&body)).await;
    assert_eq!(response.status(), 403);
    let text = response.text().await.expect("body");
    assert!(text.starts_with("<?xml") && text.contains("AccessDenied"), "{text}");
    let (_, body) = tripo_get(&client, &fake, TRIPO_KEY, &id).await;
    let fresh = model_url(&body);
    assert_eq!(download(&client, &fresh).await.status(), 200);

    // A tampered signature, and the TTL running out.
    let response = download(&client, &fresh.replace("signature=", "signature=0")).await;
    assert_eq!(response.status(), 403);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(download(&client, &fresh).await.status(), 403);

    // Download faults.
    let (_, body) = tripo_get(&client, &fake, TRIPO_KEY, &id).await;
    let url = model_url(&body);
    fake.push_fault(Route::Download, Fault::Truncated);
    fake.push_fault(Route::Download, Fault::Oversized(300_000));
    fake.push_fault(Route::Download, Fault::WrongBody);
    let response = download(&client, &url).await;
    assert_eq!(response.status(), 200);
    let full = response.content_length().expect("content-length");
    assert!(response.bytes().await.is_err(), "truncated body of {full} bytes read whole");
    let response = download(&client, &url).await;
    assert_eq!(response.content_length(), Some(300_000));
    let bytes = response.bytes().await.expect("oversized");
    assert_eq!(bytes.len(), 300_000);
    assert_eq!(&bytes[..4], b"glTF");
    let bytes = download(&client, &url).await.bytes().await.expect("wrong body");
    assert_ne!(&bytes[..4], b"glTF");
    assert_glb(&download(&client, &url).await.bytes().await.expect("good again"));
}

async fn ms_submit(client: &Client, fake: &FakeModelScope, body: Value) -> (StatusCode, Value) {
    let response = client
        .post(format!("{}/v1/images/generations", fake.base_url()))
        .bearer_auth(MODELSCOPE_TOKEN)
        .header("X-ModelScope-Async-Mode", "true")
        .json(&body)
        .send()
        .await
        .expect("submit");
    (response.status(), body_json(response).await)
}

async fn ms_poll(client: &Client, fake: &FakeModelScope, id: &str) -> (StatusCode, Value) {
    let response = client
        .get(format!("{}/v1/tasks/{id}", fake.base_url()))
        .bearer_auth(MODELSCOPE_TOKEN)
        .header("X-ModelScope-Task-Type", "image_generation")
        .send()
        .await
        .expect("poll");
    (response.status(), body_json(response).await)
}

#[tokio::test]
async fn modelscope_submit_poll_download() {
    let fake = FakeModelScope::start(ModelScopeOptions::default().timeline(SEEN_QUEUE, SEEN_RUN));
    let client = client();
    let (status, body) =
        ms_submit(&client, &fake, json!({"model": "Qwen/Qwen-Image", "prompt": "a lighthouse", "size": "128x96"}))
            .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["request_id"].is_string());
    let id = body["task_id"].as_str().expect("task_id").to_owned();

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen: Vec<String> = Vec::new();
    let last = loop {
        let (status, body) = ms_poll(&client, &fake, &id).await;
        assert_eq!(status, 200, "{body}");
        let state = body["task_status"].as_str().expect("task_status").to_owned();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if matches!(state.as_str(), "SUCCEED" | "FAILED") {
            break body;
        }
        assert!(Instant::now() < deadline, "{seen:?}");
        tokio::time::sleep(Duration::from_millis(15)).await;
    };
    assert_eq!(seen, ["PENDING", "RUNNING", "SUCCEED"]);
    let url = last["output_images"][0].as_str().expect("an image");
    let response = download(&client, url).await;
    assert_eq!(response.status(), 200);
    assert_eq!(png_size(&response.bytes().await.expect("png")), (128, 96));
    assert_eq!(fake.count(Route::Create), 1);
    assert_eq!(fake.count(Route::Download), 1);
    assert_eq!(fake.downloads_with_authorization(), 0);
    assert_eq!(fake.creates_for_prompt("a lighthouse"), 1);

    // Models.
    let response = client.get(format!("{}/v1/models", fake.base_url())).bearer_auth(MODELSCOPE_TOKEN).send().await;
    let body = body_json(response.expect("models")).await;
    assert!(body["data"].as_array().expect("data").iter().any(|m| m["id"] == "Qwen/Qwen-Image"));
}

#[tokio::test]
async fn modelscope_headers_auth_and_validation() {
    let fake = FakeModelScope::start(ModelScopeOptions::default().timeline(FAST_QUEUE, FAST_RUN));
    let client = client();
    let url = format!("{}/v1/images/generations", fake.base_url());
    let ok = json!({"model": "Qwen/Qwen-Image", "prompt": "a cat"});

    // Without the async header: the exact refusal, request_id at the top.
    let response = client.post(&url).bearer_auth(MODELSCOPE_TOKEN).json(&ok).send().await.expect("send");
    assert_eq!(response.status(), 400);
    let body = body_json(response).await;
    assert!(
        body["errors"]["message"]
            .as_str()
            .expect("message")
            .starts_with("image-gen task currently does not support synchronous calls"),
        "{body}"
    );
    assert!(body["request_id"].is_string());
    // Without a token.
    let response = client.post(&url).header("X-ModelScope-Async-Mode", "true").json(&ok).send().await.expect("send");
    assert_eq!(response.status(), 401);

    // Parameters.
    let bad = [
        json!({"prompt": "a cat"}),
        json!({"model": "Qwen/Qwen-Image"}),
        json!({"model": "Qwen/Qwen-Image", "prompt": "x".repeat(2000)}),
        json!({"model": "Qwen/Qwen-Image", "prompt": "a", "size": "4096x64"}),
        json!({"model": "Qwen/Qwen-Image", "prompt": "a", "size": "big"}),
        json!({"model": "Qwen/Qwen-Image", "prompt": "a", "seed": -1}),
        json!({"model": "Qwen/Qwen-Image", "prompt": "a", "seed": 2_147_483_648_i64}),
        json!({"model": "Qwen/Qwen-Image", "prompt": "a", "steps": 0}),
        json!({"model": "Qwen/Qwen-Image", "prompt": "a", "guidance": 1.0}),
        json!({"model": "Qwen/Qwen-Image", "prompt": "a", "loras": {"a/x": 0.7, "b/y": 0.2}}),
        json!({"model": "Qwen/Qwen-Image", "prompt": "a", "loras": {"1":0.1,"2":0.1,"3":0.1,"4":0.1,"5":0.1,"6":0.1,"7":0.4}}),
        json!({"model": "Qwen/Qwen-Image", "prompt": "a", "loras": 3}),
        json!({"model": "nobody/none", "prompt": "a"}),
    ];
    for body in bad {
        let (status, answer) = ms_submit(&client, &fake, body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(answer["errors"]["message"].is_string() && answer["request_id"].is_string(), "{answer}");
    }
    let good = json!({"model": "Qwen/Qwen-Image", "prompt": "a", "size": "64x2048", "seed": 2_147_483_647_i64,
        "steps": 100, "guidance": 1.5, "loras": {"a/x": 0.6, "b/y": 0.4}});
    let (status, body) = ms_submit(&client, &fake, good).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) =
        ms_submit(&client, &fake, json!({"model": "Qwen/Qwen-Image", "prompt": "a", "loras": "a/x"})).await;
    assert_eq!(status, 200);

    // Polling without the task-type header.
    let id = body["task_id"].as_str().expect("task_id");
    let response = client
        .get(format!("{}/v1/tasks/{id}", fake.base_url()))
        .bearer_auth(MODELSCOPE_TOKEN)
        .send()
        .await
        .expect("poll");
    assert_eq!(response.status(), 400);
    assert_eq!(fake.task_count(), 2);
}

#[tokio::test]
async fn modelscope_faults_and_outcomes() {
    let fake = FakeModelScope::start(ModelScopeOptions::default().timeline(FAST_QUEUE, FAST_RUN));
    let client = client();
    let ok = json!({"model": "Qwen/Qwen-Image", "prompt": "a cat", "size": "64x64"});

    fake.push_fault(Route::Create, Fault::retry_after(429, 0, "Request limit exceeded.", 3));
    let response = client
        .post(format!("{}/v1/images/generations", fake.base_url()))
        .bearer_auth(MODELSCOPE_TOKEN)
        .header("X-ModelScope-Async-Mode", "true")
        .json(&ok)
        .send()
        .await
        .expect("429");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    for name in [
        "modelscope-ratelimit-requests-limit",
        "modelscope-ratelimit-requests-remaining",
        "modelscope-ratelimit-model-requests-limit",
        "modelscope-ratelimit-model-requests-remaining",
    ] {
        assert!(response.headers().contains_key(name), "{name}");
    }
    let body = body_json(response).await;
    assert_eq!(body["errors"]["message"], "Request limit exceeded.");
    assert!(body["errors"]["request_id"].is_string());

    fake.push_fault(Route::Create, Fault::ResetAfterAccept);
    let error = client
        .post(format!("{}/v1/images/generations", fake.base_url()))
        .bearer_auth(MODELSCOPE_TOKEN)
        .header("X-ModelScope-Async-Mode", "true")
        .json(&ok)
        .send()
        .await
        .expect_err("reset");
    assert!(!error.is_status() && !error.is_timeout(), "{error:?}");
    assert_eq!(fake.task_count(), 1);

    fake.push_outcome(Outcome::failed(0, "The prompt was rejected."));
    fake.push_outcome(Outcome::EmptyOutput);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_, body) = ms_submit(&client, &fake, ok.clone()).await;
        ids.push(body["task_id"].as_str().expect("task_id").to_owned());
    }
    fake.complete_all();
    let (_, failed) = ms_poll(&client, &fake, &ids[0]).await;
    assert_eq!(failed["task_status"], "FAILED");
    assert_eq!(failed["errors"]["message"], "The prompt was rejected.");
    assert!(failed["request_id"].is_string());
    let (_, empty) = ms_poll(&client, &fake, &ids[1]).await;
    assert_eq!(empty["task_status"], "SUCCEED");
    assert_eq!(empty["output_images"], json!([]));

    fake.push_fault(Route::Get, Fault::NonJson502);
    let response = client
        .get(format!("{}/v1/tasks/{}", fake.base_url(), ids[0]))
        .bearer_auth(MODELSCOPE_TOKEN)
        .header("X-ModelScope-Task-Type", "image_generation")
        .send()
        .await
        .expect("502");
    assert_eq!(response.status(), 502);
}

#[tokio::test]
async fn openai_generations() {
    let fake = FakeOpenAi::start(OpenAiOptions::default().latency(Duration::from_millis(10)));
    let client = client();
    let url = format!("{}/v1/images/generations", fake.base_url());
    let post = |key: &str, body: Value| client.post(&url).bearer_auth(key).json(&body).send();

    let response = post(OPENAI_KEY, json!({"model": "dall-e-2", "prompt": "a fox", "n": 2, "size": "256x256"}));
    let body = body_json(response.await.expect("url")).await;
    assert!(body["created"].is_u64());
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    let image = download(&client, data[1]["url"].as_str().expect("url")).await;
    assert_eq!(image.status(), 200);
    assert_eq!(png_size(&image.bytes().await.expect("png")), (256, 256));

    let response = post(
        OPENAI_KEY,
        json!({"model": "dall-e-3", "prompt": "a fox", "size": "1024x1024", "response_format": "b64_json"}),
    );
    let body = body_json(response.await.expect("b64")).await;
    let b64 = body["data"][0]["b64_json"].as_str().expect("b64_json");
    let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).expect("base64");
    assert_eq!(png_size(&png), (1024, 1024));

    // Errors in OpenAI's envelope.
    let response = post("sk-wrong", json!({"prompt": "a fox"})).await.expect("401");
    assert_eq!(response.status(), 401);
    assert_eq!(body_json(response).await["error"]["code"], "invalid_api_key");
    for (body, param) in [
        (json!({"model": "dall-e-2"}), "prompt"),
        (json!({"prompt": "a", "n": 11}), "n"),
        (json!({"model": "dall-e-3", "prompt": "a", "n": 2}), "n"),
        (json!({"model": "dall-e-2", "prompt": "a", "size": "1792x1024"}), "size"),
        (json!({"prompt": "a", "response_format": "gif"}), "response_format"),
        (json!({"model": "nope", "prompt": "a"}), "model"),
    ] {
        let response = post(OPENAI_KEY, body.clone()).await.expect("400");
        assert_eq!(response.status(), 400, "{body}");
        let answer = body_json(response).await;
        assert_eq!(answer["error"]["param"], param, "{answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error");
    }
    fake.push_fault(Route::Create, Fault::retry_after(429, 0, "Rate limit reached for images per minute.", 20));
    let response = post(OPENAI_KEY, json!({"prompt": "a fox"})).await.expect("429");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "20");
    assert_eq!(body_json(response).await["error"]["code"], "rate_limit_exceeded");

    assert_eq!(fake.count(Route::Create), 10);
    assert_eq!(fake.creates().len(), 2);
    assert_eq!(fake.creates_by_key(OPENAI_KEY), 2);
    assert_eq!(fake.downloads_with_authorization(), 0);
}

#[tokio::test]
async fn openai_instant_mode_and_models() {
    let fake = FakeOpenAi::start(OpenAiOptions::instant());
    let client = client();
    let started = Instant::now();
    for _ in 0..20 {
        let response = client
            .post(format!("{}/v1/images/generations", fake.base_url()))
            .bearer_auth(OPENAI_KEY)
            .json(&json!({"prompt": "a fox", "n": 4, "response_format": "b64_json"}))
            .send()
            .await
            .expect("instant");
        let body = body_json(response).await;
        assert_eq!(body["data"].as_array().expect("data").len(), 4);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let response = client.get(format!("{}/v1/models", fake.base_url())).bearer_auth(OPENAI_KEY).send().await;
    let body = body_json(response.expect("models")).await;
    assert_eq!(body["object"], "list");
    assert!(body["data"].as_array().expect("data").iter().any(|m| m["id"] == "gpt-image-1"));
    assert_eq!(fake.count(Route::Models), 1);
}
