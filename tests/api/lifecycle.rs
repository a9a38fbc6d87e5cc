//! Queue limits, cancellation, deadlines and shutdown.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::TestApp;

fn one_plus_five() -> String {
    crate::helpers::echo_channel("gpu", 1, 5)
}

#[tokio::test]
async fn seven_concurrent_requests_to_a_one_plus_five_channel_get_exactly_one_503() {
    let app = TestApp::spawn_with(&one_plus_five()).await;
    let mut handles = Vec::new();
    for _ in 0..7 {
        let client = app.client.clone();
        let url = app.url("/api/v1/tasks");
        handles.push(tokio::spawn(async move {
            let form = reqwest::multipart::Form::new()
                .part("image", reqwest::multipart::Part::bytes(crate::helpers::fixture("vase.png")).file_name("v.png"))
                .text("params", r#"{"steps": 10, "step_ms": 200}"#);
            let response = client.post(url).multipart(form).send().await.unwrap();
            let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, retry, body)
        }));
    }
    let mut refused = Vec::new();
    for handle in handles {
        let (status, retry, body) = handle.await.unwrap();
        match status {
            202 => {}
            503 => refused.push((retry, body)),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(refused.len(), 1);
    let (retry, body) = &refused[0];
    assert!(retry.as_deref().and_then(|r| r.parse::<u64>().ok()).is_some_and(|s| s > 0));
    assert_eq!(body["error"]["code"], "queue_full");
    app.stop().await;
}

#[tokio::test]
async fn a_queued_task_can_be_canceled_and_a_finished_one_cannot() {
    let app = TestApp::spawn_with(&one_plus_five()).await;
    let first = app.submit_image(&[("params", r#"{"steps": 10, "step_ms": 100}"#)]).await;
    let second = app.submit_image(&[]).await;
    let id = second["id"].as_str().unwrap();
    let response = app.client.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "canceled");
    let events = app.events(id, None, 10).await;
    assert_eq!(events.last().unwrap().1, "canceled");
    let again = app.client.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 409);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "task_already_finished");
    app.wait_terminal(first["id"].as_str().unwrap()).await;
    app.stop().await;
}

#[tokio::test]
async fn a_running_task_is_stopped_when_canceled() {
    let app = TestApp::spawn().await;
    let task = app.submit_image(&[("params", r#"{"steps": 100, "step_ms": 100}"#)]).await;
    let id = task["id"].as_str().unwrap();
    for _ in 0..100 {
        let (_, t) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        if t["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = app.client.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, t) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(t["status"], "canceled");
    // The provider stopped: no progress after the cancel.
    let events = app.events(id, None, 1000).await;
    assert_eq!(events.last().unwrap().1, "canceled");
    assert!(app.gateway.runs().is_empty());
    app.stop().await;
}

const SHORT_DEADLINE: &str = "deadline = \"1s\"\nlease = \"1s\"\npoll_interval = \"200ms\"";

#[tokio::test]
async fn a_task_past_its_deadline_fails_with_generation_timeout() {
    let app = TestApp::spawn_configured(SHORT_DEADLINE, crate::helpers::ECHO_CHANNEL).await;
    assert_eq!(app.gateway.config().tasks.deadline, Duration::from_secs(1));
    let task = app.submit_image(&[("params", r#"{"steps": 100, "step_ms": 100}"#)]).await;
    let id = task["id"].as_str().unwrap();
    let events = app.events(id, None, 1000).await;
    let (_, kind, data) = events.last().unwrap();
    assert_eq!(kind, "failed");
    assert_eq!(data["error"]["code"], "generation_timeout");
    app.stop().await;
}

#[tokio::test]
async fn a_detached_task_is_not_run_again_and_times_out_without_its_callbacks() {
    let app = TestApp::spawn_configured(SHORT_DEADLINE, crate::helpers::ECHO_CHANNEL).await;
    let task = app.submit_image(&[("params", r#"{"steps": 0, "detach": true}"#)]).await;
    let id = task["id"].as_str().unwrap();
    let events = app.events(id, None, 1000).await;
    let (_, kind, data) = events.last().unwrap();
    assert_eq!(kind, "failed");
    assert_eq!(data["error"]["code"], "generation_timeout");
    let starts = events.iter().filter(|(_, k, d)| k == "processing" && d["progress"] == 0).count();
    assert_eq!(starts, 1, "dispatched once: {events:?}");
    app.stop().await;
}

#[tokio::test]
async fn shutdown_ends_live_streams_and_turns_readiness_off() {
    let app = TestApp::spawn().await;
    let task = app.submit_image(&[("params", r#"{"steps": 100, "step_ms": 100}"#)]).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let client = app.client.clone();
    let url = app.url(&format!("/api/v1/tasks/{id}/events"));
    let reader = tokio::spawn(async move { crate::helpers::read_events(&client, &url, None, 10_000).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    app.shutdown.cancel();
    let events = tokio::time::timeout(Duration::from_secs(10), reader).await.expect("stream ended").unwrap();
    assert!(!events.is_empty());
    assert!(!matches!(events.last().unwrap().1.as_str(), "completed" | "failed" | "canceled"));
    let result = tokio::time::timeout(Duration::from_secs(15), app.server).await;
    assert!(matches!(result, Ok(Ok(Ok(())))));
    assert!(started.elapsed() < Duration::from_secs(12));
}

/// A lease long enough that a task taken over before it lapsed can only have been
/// handed back.
const LONG_LEASE: &str = "lease = \"60s\"\npoll_interval = \"200ms\"";

#[tokio::test]
async fn a_task_still_running_when_the_grace_period_ends_is_handed_back_without_counting_an_attempt() {
    let app = TestApp::spawn_configured(LONG_LEASE, crate::helpers::ECHO_CHANNEL).await;
    // 6 s of work against the test configuration's 5 s of grace.
    let task = app.submit_image(&[("params", r#"{"steps": 60, "step_ms": 100}"#)]).await;
    let id = task["id"].as_str().expect("id").to_owned();
    app.wait_task(&id, "running", |t| t["status"] == "running").await;
    let dir = app.stop_keeping_dir().await;

    // The next process on the database (a restart here; on PostgreSQL, it could be any
    // replica) takes it at once, not when the 60 s lease lapses.
    let app = TestApp::spawn_in(dir, "", LONG_LEASE, crate::helpers::ECHO_CHANNEL, &crate::provider::registry()).await;
    let ended = app.wait_terminal(&id).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let task_id: kiln::tasks::TaskId = id.parse().expect("task id");
    let stored = app.gateway.db().get_task(task_id).await.expect("read").expect("task");
    assert_eq!(stored.attempts, 1, "the run cut short by the stop is not counted as an attempt");
    let events = app.gateway.db().list_events(task_id, 0).await.expect("events");
    let stage = |e: &kiln::tasks::TaskEvent| e.data["stage"].as_str().map(str::to_owned);
    let started = events.iter().find(|e| stage(e).as_deref() == Some("starting")).expect("a first start");
    let restarted = events.iter().find(|e| stage(e).as_deref() == Some("restarting")).expect("a restart");
    assert!(
        restarted.created_at < started.created_at + chrono::Duration::seconds(60),
        "taken over at {} although the first claim's lease ran to {} at least",
        restarted.created_at,
        started.created_at + chrono::Duration::seconds(60)
    );
    app.stop().await;
}
