//! Submitting tasks and reading their results.

use serde_json::{Value, json};

use crate::helpers::{TestApp, fixture};

#[tokio::test]
async fn an_uploaded_picture_runs_to_completion_with_outputs_and_metadata() {
    let app = TestApp::spawn().await;
    let response = app.upload("/api/v1/tasks", fixture("vase.png"), &[]).await;
    assert_eq!(response.status().as_u16(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let task: Value = response.json().await.unwrap();
    let id = task["id"].as_str().unwrap();
    assert_eq!(location, format!("/api/v1/tasks/{id}"));
    assert_eq!(task["kind"], "image_to_3d");
    assert_eq!(task["model"], "echo");
    assert!(task["links"]["events"].as_str().unwrap().ends_with(&format!("/api/v1/tasks/{id}/events")));

    let done = app.wait_terminal(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"], 100);

    let (status, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(status, 200);
    let output = &result["outputs"][0];
    assert_eq!(output["name"], "model.glb");
    assert_eq!(output["format"], "glb");
    assert_eq!(output["size"], fixture("vase.png").len());
    assert_eq!(output["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(result["metadata"]["format"], "glb");
    assert!(result["metadata"]["generation_time"].as_f64().unwrap() >= 0.0);
    assert!(result["metadata"]["finished_at"].is_string());
    assert_eq!(result["metadata"]["provider"]["attempt"], 1);

    // The output URL serves the bytes the provider produced.
    let bytes = app.client.get(output["url"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), fixture("vase.png").as_slice());
    app.stop().await;
}

#[tokio::test]
async fn a_prompt_submitted_as_json_runs_on_the_text_model() {
    let app = TestApp::spawn().await;
    let response = app.submit_prompt(json!({ "prompt": "a red teapot", "params": { "steps": 1 } })).await;
    assert_eq!(response.status().as_u16(), 202);
    let task: Value = response.json().await.unwrap();
    assert_eq!(task["kind"], "text_to_3d");
    assert_eq!(task["model"], "echo-text");
    let done = app.wait_terminal(task["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn the_file_field_name_is_accepted_too() {
    let app = TestApp::spawn().await;
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(fixture("toy.webp")).file_name("toy.webp"));
    let response = app.client.post(app.url("/api/v1/tasks")).multipart(form).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    app.stop().await;
}

#[tokio::test]
async fn the_result_is_refused_with_409_until_the_task_ends() {
    let app = TestApp::spawn().await;
    let task = app.submit_image(&[("params", r#"{"steps": 20, "step_ms": 100}"#)]).await;
    let id = task["id"].as_str().unwrap();
    let (status, body) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "task_not_finished");
    app.stop().await;
}

#[tokio::test]
async fn a_failing_provider_fails_the_task_with_its_code_and_message() {
    let app = TestApp::spawn().await;
    let task = app.submit_image(&[("params", r#"{"fail": "no_foreground_object"}"#)]).await;
    let done = app.wait_terminal(task["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "no_foreground_object");
    let (status, result) = app.get_json(&format!("/api/v1/tasks/{}/result", task["id"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"]["code"], "no_foreground_object");
    app.stop().await;
}

#[tokio::test]
async fn a_panicking_provider_fails_the_task_and_the_server_keeps_working() {
    let app = TestApp::spawn().await;
    let task = app.submit_image(&[("params", r#"{"panic": true}"#)]).await;
    let done = app.wait_terminal(task["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "internal_error");
    let next = app.submit_image(&[]).await;
    assert_eq!(app.wait_terminal(next["id"].as_str().unwrap()).await["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_task_or_refuses_a_different_request() {
    let app = TestApp::spawn().await;
    let send = |prompt: &'static str| {
        app.client
            .post(app.url("/api/v1/tasks"))
            .header("Idempotency-Key", "key-1")
            .json(&json!({ "prompt": prompt }))
            .send()
    };
    let first: Value = send("a cup").await.unwrap().json().await.unwrap();
    let again = send("a cup").await.unwrap();
    assert_eq!(again.status().as_u16(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    let other = send("a bowl").await.unwrap();
    assert_eq!(other.status().as_u16(), 422);
    let body: Value = other.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    app.stop().await;
}

/// A client that gave up waiting retries with the same key while the first request is
/// still being handled (on another replica, with PostgreSQL): every answer is the one
/// task, never an error.
#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_make_one_task_and_all_get_it() {
    let app = TestApp::spawn().await;
    let answers = futures::future::join_all((0..12).map(|_| async {
        let response = app
            .client
            .post(app.url("/api/v1/tasks"))
            .header("Idempotency-Key", "raced-key")
            .json(&json!({ "prompt": "a cup", "params": { "steps": 0 } }))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    }))
    .await;
    let ids: std::collections::BTreeSet<String> =
        answers.iter().filter_map(|(_, body)| body["id"].as_str().map(str::to_owned)).collect();
    assert!(answers.iter().all(|(status, _)| *status == 202), "{answers:?}");
    assert_eq!(ids.len(), 1, "one task for the key: {answers:?}");
    let (_, page) = app.get_json("/api/v1/tasks?limit=100").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "and only one was made");
    app.stop().await;
}

#[tokio::test]
async fn tasks_are_listed_newest_first_with_a_cursor_and_a_status_filter() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let response = app.submit_prompt(json!({ "prompt": "x", "params": { "steps": 0 } })).await;
        let task: Value = response.json().await.unwrap();
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        app.wait_terminal(id).await;
    }
    let (_, page) = app.get_json("/api/v1/tasks?limit=3").await;
    let first: Vec<_> =
        page["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(first, vec![ids[4].clone(), ids[3].clone(), ids[2].clone()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page) = app.get_json(&format!("/api/v1/tasks?limit=3&cursor={cursor}")).await;
    let rest: Vec<_> = page["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(rest, vec![ids[1].clone(), ids[0].clone()]);
    assert!(page["next_cursor"].is_null());
    let (_, queued) = app.get_json("/api/v1/tasks?status=queued").await;
    assert_eq!(queued["items"].as_array().unwrap().len(), 0);
    let (status, _) = app.get_json("/api/v1/tasks?cursor=not-a-cursor").await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test]
async fn seed_000_face_creates_polls_and_fetches_a_model() {
    let app = TestApp::spawn().await;
    let response = app.upload("/api/v1/models", fixture("mug.jpg"), &[]).await;
    assert_eq!(response.status().as_u16(), 202);
    let created: Value = response.json().await.unwrap();
    let job = created["jobId"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], "queued");
    app.wait_terminal(&job).await;
    let (status, body) = app.get_json(&format!("/api/v1/models/{job}/status")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "completed");
    let (status, body) = app.get_json(&format!("/api/v1/models/{job}/result")).await;
    assert_eq!(status, 200);
    assert!(body["modelUrl"].as_str().unwrap().contains("/files/reconstruction/"));
    assert_eq!(body["metadata"]["format"], "glb");
    assert!(body["metadata"]["generationTime"].is_number());
    let (status, body) = app.get_json("/api/v1/models/00000000-0000-0000-0000-000000000000/status").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "task_not_found");
    app.stop().await;
}

#[tokio::test]
async fn unknown_models_and_bad_params_are_refused_before_queueing() {
    let app = TestApp::spawn().await;
    let response = app.upload("/api/v1/tasks", fixture("vase.png"), &[("model", "nope")]).await;
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_model");
    let response = app.upload("/api/v1/tasks", fixture("vase.png"), &[("params", r#"{"steps": "many"}"#)]).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_params");
    let response = app.upload("/api/v1/tasks", fixture("vase.png"), &[("params", "{not json")]).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_params");
    let response = app.submit_prompt(json!({ "prompt": "x", "model": "echo" })).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_input", "{body}");
    let (_, page) = app.get_json("/api/v1/tasks").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "nothing was queued");
    app.stop().await;
}
