//! Killing the server with SIGKILL while tasks are queued and running loses nothing.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{ChildServer, config_toml, fixture, read_events};

const SLOW_CHANNEL: &str = r#"
[[channels]]
name = "echo"
type = "echo"
max_concurrency = 2
max_queue = 20
models = [{ name = "echo", kind = "image_to_3d" }]
"#;

#[tokio::test]
async fn every_task_reaches_an_end_after_a_sigkill_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.toml");
    std::fs::write(&path, config_toml(dir.path(), SLOW_CHANNEL)).unwrap();
    let client = reqwest::Client::new();

    let server = ChildServer::start(&path);
    let mut ids = Vec::new();
    for _ in 0..6 {
        let form = reqwest::multipart::Form::new()
            .part("image", reqwest::multipart::Part::bytes(fixture("vase.png")).file_name("v.png"))
            .text("params", r#"{"steps": 10, "step_ms": 100}"#);
        let task: Value = client
            .post(format!("{}/api/v1/tasks", server.base))
            .multipart(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    // Let two start running, then kill the process without warning.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, running): (u16, Value) = {
        let r = client.get(format!("{}/api/v1/tasks?status=running", server.base)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    };
    assert!(!running["items"].as_array().unwrap().is_empty(), "some tasks were running at the kill");
    server.kill();

    let server = ChildServer::start(&path);
    for id in &ids {
        let events = read_events(&client, &format!("{}/api/v1/tasks/{id}/events", server.base), None, 1000).await;
        let seqs: Vec<i64> = events.iter().map(|(s, _, _)| *s).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{id}: event log intact: {seqs:?}");
        assert_eq!(events.first().unwrap().1, "queued");
        assert_eq!(events.last().unwrap().1, "completed", "{id}: {events:?}");
        let task: Value =
            client.get(format!("{}/api/v1/tasks/{id}", server.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(task["status"], "succeeded");
    }
    server.kill();
}
