//! Killing the server with SIGKILL while tasks are queued and running loses nothing.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{ChildServer, config_toml, echo_channel, fixture, read_events};

#[tokio::test]
async fn every_task_reaches_an_end_after_a_sigkill_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.toml");
    std::fs::write(&path, config_toml(dir.path(), &echo_channel("echo", 2, 20))).unwrap();
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

#[tokio::test]
async fn files_a_crash_left_without_a_record_are_removed_at_the_next_start() {
    use kiln::app::Application;

    // SQLite only: on a database several processes share, a fresh note may be another
    // process's write in progress, so start-up deletes only notes older than an hour.
    if crate::common::postgres::enabled() {
        eprintln!("SQLite only: a shared database keeps fresh notes at start-up");
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let config = crate::helpers::load_config_full(dir.path(), "", crate::helpers::TASKS, &echo_channel("echo", 2, 20));
    let files = dir.path().join("data/files");
    let app = Application::build(config.clone(), &crate::provider::registry()).await.unwrap();
    let gateway = app.gateway();
    // A picture written, and the process killed before its record committed.
    gateway.db().begin_file("pictures/orphan.png").await.unwrap();
    gateway.storage().put("pictures/orphan.png", bytes::Bytes::from(fixture("vase.png")), "image/png").await.unwrap();
    // A note whose file never got written at all.
    gateway.db().begin_file("reconstruction/none/model.glb").await.unwrap();
    // An upload spooled under a name (a filesystem without unnamed temporary files).
    std::fs::create_dir_all(dir.path().join("data/tmp")).unwrap();
    std::fs::write(dir.path().join("data/tmp/.tmpLEFT"), b"partial").unwrap();
    assert!(files.join("pictures/orphan.png").exists());
    drop(gateway);
    drop(app);

    let app = Application::build(config, &crate::provider::registry()).await.unwrap();
    assert!(!files.join("pictures/orphan.png").exists(), "the unrecorded picture is deleted at start-up");
    assert!(!dir.path().join("data/tmp/.tmpLEFT").exists(), "the spool is emptied");
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    assert!(app.gateway().db().pending_files_before(later).await.unwrap().is_empty(), "no note is left");
}

#[tokio::test]
async fn an_output_that_arrives_after_its_task_ended_is_not_kept() {
    use kiln::gateway::{NewOutput, OutputBody, Recorded};

    let app = crate::helpers::TestApp::spawn_with(
        "[[channels]]\nname = \"echo\"\ntype = \"echo\"\nenabled = false\nmodels = [{ name = \"echo\", kind = \"image_to_3d\" }]\n",
    )
    .await;
    let response = app.upload("/api/v1/tasks", fixture("vase.png"), &[]).await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 503, "a disabled channel takes no task: {body}");

    // A task that is queued, not running: a late output is refused and its file removed.
    let app = crate::helpers::TestApp::spawn_with(&echo_channel("echo", 1, 5)).await;
    let first = app.submit_image(&[("params", r#"{"steps": 50, "step_ms": 100}"#)]).await;
    let waiting = app.submit_image(&[]).await;
    let id: kiln::tasks::TaskId = waiting["id"].as_str().unwrap().parse().unwrap();
    let task = app.gateway.task(&kiln::access::Caller::Anonymous, id).await.unwrap();
    let output = NewOutput {
        name: "late.glb".into(),
        role: "model".into(),
        content_type: "model/gltf-binary".into(),
        metadata: serde_json::json!({}),
        body: OutputBody::Bytes(bytes::Bytes::from_static(b"glTF")),
    };
    assert!(matches!(app.gateway.record_output(&task, output).await.unwrap(), Recorded::Ended));
    let key = kiln::tasks::Artifact::key_for(task.id, task.kind, "late.glb");
    assert!(!app.dir.path().join("data/files").join(&key).exists(), "{key} was deleted");
    app.client.delete(app.url(&format!("/api/v1/tasks/{}", first["id"].as_str().unwrap()))).send().await.unwrap();
    app.stop().await;
}
