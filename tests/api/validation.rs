//! Refusals of bad input: each with its own code and status, and the server keeps going.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, fixture};

async fn refusal(app: &TestApp, name: &str) -> (u16, Value) {
    let response = app.upload("/api/v1/tasks", fixture(name), &[]).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_invalid_fixture_gets_its_specific_error_and_the_server_keeps_serving() {
    let app = TestApp::spawn().await;
    let cases = [
        ("invalid/bomb-50000x50000.png", 400, "image_too_many_pixels"),
        ("invalid/empty.jpg", 400, "empty_file"),
        ("invalid/not-supported.gif", 400, "unsupported_image_format"),
        ("invalid/over-10mb.png", 413, "file_too_large"),
        ("invalid/text-named.png", 400, "unsupported_image_format"),
        ("invalid/truncated.png", 400, "corrupt_image"),
    ];
    for (name, status, code) in cases {
        let (got, body) = refusal(&app, name).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(body["request_id"].is_string());
    }
    // Still serving, and nothing was queued by the refusals.
    let task = app.submit_image(&[]).await;
    assert_eq!(app.wait_terminal(task["id"].as_str().unwrap()).await["status"], "succeeded");
    let (_, page) = app.get_json("/api/v1/tasks").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_large_picture_is_scaled_down_to_the_longest_side_limit() {
    let app = TestApp::spawn().await;
    let response = app.upload("/api/v1/tasks", fixture("large-4096x3072.jpg"), &[]).await;
    assert_eq!(response.status().as_u16(), 202);
    let task: Value = response.json().await.unwrap();
    let picture_url = task["picture"]["url"].as_str().unwrap();
    let bytes = app.client.get(picture_url).send().await.unwrap().bytes().await.unwrap();
    let image = image::load_from_memory(&bytes).unwrap();
    assert_eq!((image.width(), image.height()), (2048, 1536));
    app.stop().await;
}

#[tokio::test]
async fn an_endless_upload_is_refused_with_413_without_reading_it_all() {
    let app = TestApp::spawn().await;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    // 200 MiB offered in 64 KiB chunks, with no Content-Length.
    let chunks = futures::stream::iter(0..3200).map(move |_| {
        counter.fetch_add(65536, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0x89u8; 65536]))
    });
    use futures::StreamExt;
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(chunks)).file_name("big.png");
    let form = reqwest::multipart::Form::new().part("image", part);
    let result =
        tokio::time::timeout(Duration::from_secs(30), app.client.post(app.url("/api/v1/tasks")).multipart(form).send())
            .await
            .expect("answered in time");
    match result {
        Ok(response) => {
            assert_eq!(response.status().as_u16(), 413);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "file_too_large");
        }
        // The server may close the connection while the client is still sending.
        Err(err) => assert!(err.is_request() || err.is_body(), "{err}"),
    }
    let pulled = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(pulled < 100 * 1024 * 1024, "the client was made to send {pulled} bytes");
    app.stop().await;
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused_before_it_is_read() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/api/v1/tasks"))
        .header("content-type", "multipart/form-data; boundary=x")
        .header("content-length", (50u64 * 1024 * 1024).to_string())
        .body(vec![0u8; 1024])
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status().as_u16(), 413);
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_prompts_are_refused_with_their_codes() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({ "prompt": "" }), "prompt_empty"),
        (json!({ "prompt": "   " }), "prompt_empty"),
        (json!({ "prompt": "x".repeat(1025) }), "prompt_too_long"),
        (json!({ "prompt": "a\u{0007}b" }), "prompt_invalid_characters"),
        (json!({}), "missing_input"),
    ];
    for (body, code) in cases {
        let response = app.submit_prompt(body.clone()).await;
        assert_eq!(response.status().as_u16(), 400, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{body}");
    }
    let response = app
        .client
        .post(app.url("/api/v1/tasks"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "malformed_json");
    let response =
        app.client.post(app.url("/api/v1/tasks")).header("content-type", "text/plain").body("hi").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 415);
    app.stop().await;
}
