//! The native picture library: upload once, list, and make tasks from a stored picture.

use serde_json::{Value, json};

use crate::helpers::{TestApp, fixture};

#[tokio::test]
async fn a_stored_picture_is_listed_and_makes_tasks_without_a_new_upload() {
    let app = TestApp::spawn().await;
    let response = app.upload("/api/v1/pictures", fixture("mug.jpg"), &[]).await;
    assert_eq!(response.status().as_u16(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let picture: Value = response.json().await.unwrap();
    let id = picture["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/pictures/{id}"));
    assert_eq!(picture["format"], "jpeg");
    assert_eq!(picture["size"], fixture("mug.jpg").len());
    assert_eq!(picture["original_name"], "picture.png");
    assert_eq!(picture["expired"], false);

    // The stored bytes are the uploaded ones.
    let stored = app.client.get(picture["url"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(stored.as_ref(), fixture("mug.jpg").as_slice());

    let thumbnail = app.client.get(picture["links"]["thumbnail"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(thumbnail.status().as_u16(), 200);
    let small = image::load_from_memory(&thumbnail.bytes().await.unwrap()).expect("the thumbnail is a picture");
    assert!(small.width().max(small.height()) <= 320);

    let (status, fetched) = app.get_json(&format!("/api/v1/pictures/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(fetched["sha256"], picture["sha256"]);

    // Two tasks from the one picture, and one task from another upload.
    let mut made = Vec::new();
    for _ in 0..2 {
        let response = app.submit_prompt(json!({ "picture_id": id })).await;
        assert_eq!(response.status().as_u16(), 202);
        let task: Value = response.json().await.unwrap();
        assert_eq!(task["picture"]["id"], id.as_str());
        made.push(task["id"].as_str().unwrap().to_owned());
    }
    let other = app.submit_image(&[]).await;
    for task in &made {
        assert_eq!(app.wait_terminal(task).await["status"], "succeeded");
    }

    // The picture's tasks, newest first, and only its own.
    let (status, page) = app.get_json(&format!("/api/v1/tasks?picture_id={id}")).await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = page["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(listed, vec![made[1].as_str(), made[0].as_str()]);
    assert!(!listed.contains(&other["id"].as_str().unwrap()));

    // Two pictures stored (the task upload made the second), newest first, paged.
    let (_, page) = app.get_json("/api/v1/pictures?limit=1").await;
    assert_eq!(page["total"], 2);
    assert_eq!(page["next_offset"], 1);
    assert_ne!(page["items"][0]["id"], id.as_str());
    let (_, page) = app.get_json("/api/v1/pictures?offset=1&limit=1").await;
    assert_eq!(page["items"][0]["id"], id.as_str());
    assert!(page["next_offset"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn picture_uploads_are_refused_like_task_uploads() {
    let app = TestApp::spawn().await;
    let response = app.upload("/api/v1/pictures", fixture("invalid/not-supported.gif"), &[]).await;
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unsupported_image_format");

    let form = reqwest::multipart::Form::new().text("prompt", "no picture here");
    let response = app.client.post(app.url("/api/v1/pictures")).multipart(form).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_input");

    let response = app.client.post(app.url("/api/v1/pictures")).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 415);

    let (status, body) = app.get_json("/api/v1/pictures/not-a-uuid").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "picture_not_found");
    let (_, page) = app.get_json("/api/v1/pictures").await;
    assert_eq!(page["total"], 0, "nothing refused was stored");
    app.stop().await;
}

#[tokio::test]
async fn a_task_that_made_a_picture_has_a_thumbnail_of_it() {
    let app = TestApp::spawn_with(
        r#"
[[channels]]
name = "echo"
type = "echo"
models = [{ name = "echo", kind = "image_to_3d" }, { name = "painter", kind = "text_to_image" }]
"#,
    )
    .await;
    let task: Value =
        app.submit_prompt(json!({ "prompt": "a red fox", "model": "painter" })).await.json().await.unwrap();
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(task["kind"], "text_to_image");
    assert_eq!(app.wait_terminal(&id).await["status"], "succeeded");

    let thumbnail = app.get(&format!("/api/v1/tasks/{id}/thumbnail")).await;
    assert_eq!(thumbnail.status().as_u16(), 200);
    assert_eq!(thumbnail.headers()["content-type"], "image/jpeg");
    assert_eq!(thumbnail.headers()["cache-control"], "public, max-age=86400, immutable");
    let etag = thumbnail.headers()["etag"].to_str().unwrap().to_owned();
    // The echo provider's picture is 400 × 300.
    let small = image::load_from_memory(&thumbnail.bytes().await.unwrap()).expect("the thumbnail is a picture");
    assert_eq!((small.width(), small.height()), (320, 240));
    let again = app.client.get(app.url(&format!("/api/v1/tasks/{id}/thumbnail"))).header("if-none-match", &etag);
    assert_eq!(again.send().await.unwrap().status().as_u16(), 304);

    // A task that made no picture (a model, here from the echo of a JPEG named model.glb),
    // one that has not finished, and one that does not exist.
    let model = app.submit_image(&[]).await;
    let model = model["id"].as_str().unwrap();
    app.wait_terminal(model).await;
    let (status, body) = app.get_json(&format!("/api/v1/tasks/{model}/thumbnail")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("file_not_found")));
    let slow: Value = app
        .submit_prompt(json!({ "prompt": "a slow fox", "model": "painter", "params": { "steps": 50, "step_ms": 100 } }))
        .await
        .json()
        .await
        .unwrap();
    let (status, body) = app.get_json(&format!("/api/v1/tasks/{}/thumbnail", slow["id"].as_str().unwrap())).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("file_not_found")));
    let (status, body) = app.get_json("/api/v1/tasks/00000000-0000-4000-8000-000000000000/thumbnail").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("task_not_found")));
    let (status, _) = app.get_json("/api/v1/tasks/not-an-id/thumbnail").await;
    assert_eq!(status, 404);

    // Deleted after the retention period.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["cleanup", "--older-than", "0s", "--config"])
        .arg(app.dir.path().join("kiln.toml"))
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (status, body) = app.get_json(&format!("/api/v1/tasks/{id}/thumbnail")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (410, Some("artifact_expired")));
    app.stop().await;
}
