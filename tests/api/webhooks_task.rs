//! Task webhooks through the real server: a task submitted with `webhook_url` is
//! announced when it ends, signed with its owner's secret (verified here with the
//! Standard Webhooks reference library), and its deliveries are listed on the task; a
//! destination kiln may not call is refused at submission.

use std::sync::{Arc, Mutex};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use serde_json::Value;

use crate::{
    common::fixture,
    helpers::{ECHO_CHANNEL, TestApp},
};

type Inbox = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn receive(State(inbox): State<Inbox>, headers: HeaderMap, body: Bytes) -> &'static str {
    inbox.lock().unwrap().push((headers, body));
    "ok"
}

async fn receiver() -> (String, Inbox) {
    let inbox: Inbox = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new().route("/hook", post(receive)).with_state(Arc::clone(&inbox));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, inbox)
}

async fn submit(app: &TestApp, webhook_url: &str) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(fixture("vase.png")).file_name("p.png"))
        .text("webhook_url", webhook_url.to_owned());
    app.client.post(app.url("/api/v1/tasks")).multipart(form).send().await.unwrap()
}

#[tokio::test]
async fn a_finished_task_is_announced_signed_and_its_delivery_is_listed() {
    let app = TestApp::spawn_with(&format!("[webhooks]\nallow_private = true\n\n{ECHO_CHANNEL}")).await;
    let (url, inbox) = receiver().await;
    let response = submit(&app, &url).await;
    assert_eq!(response.status(), 202);
    let task: Value = response.json().await.unwrap();
    assert_eq!(task["webhook_url"], url.as_str(), "the task says where its end goes");
    assert!(task["owner_id"].is_null(), "made anonymously");
    let id = task["id"].as_str().unwrap().to_owned();
    app.wait_terminal(&id).await;

    let mut received = None;
    for _ in 0..200 {
        if let Some(first) = inbox.lock().unwrap().first().cloned() {
            received = Some(first);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (headers, body) = received.expect("the receiver was called");
    let (_, secret) = app.get_json("/api/v1/me/webhook-secret").await;
    let secret = secret["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    standardwebhooks::Webhook::new(secret).unwrap().verify(&body, &headers).expect("a valid signature");
    let wrong = standardwebhooks::Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    assert!(wrong.verify(&body, &headers).is_err(), "another secret does not verify it");

    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["type"], "task.completed");
    assert_eq!(payload["data"]["id"], id.as_str());
    assert_eq!(payload["data"]["status"], "succeeded");
    assert!(payload["data"]["outputs"][0]["url"].as_str().unwrap().contains("/files/"));

    let (status, deliveries) = app.get_json(&format!("/api/v1/tasks/{id}/webhooks")).await;
    assert_eq!(status, 200);
    let delivery = &deliveries["items"][0];
    assert_eq!(delivery["event"], "task.completed");
    assert_eq!(delivery["url"], url.as_str());
    assert_eq!(delivery["attempts"][0]["status_code"], 200);
    assert_eq!(inbox.lock().unwrap().len(), 1, "announced once");
    app.stop().await;
}

#[tokio::test]
async fn a_destination_kiln_may_not_call_is_refused_at_submission() {
    let app = TestApp::spawn_with(ECHO_CHANNEL).await;
    for url in ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "ftp://example.com/x", "http://localhost/"]
    {
        let response = submit(&app, url).await;
        assert_eq!(response.status(), 422, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_webhook_url", "{url}");
    }
    let (_, page) = app.get_json("/api/v1/tasks").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "nothing was queued");
    app.stop().await;
}
