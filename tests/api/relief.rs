//! The relief engine end to end through the real server, on the embedded default
//! channel: the catalog entry, a picture in, live progress over SSE, the stored GLB and
//! its metadata, `no_foreground_object`, bad params refused before queueing, and
//! `kiln generate` writing a model that the Khronos glTF Validator accepts.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::helpers::{FIXTURES, TestApp, fixture};

/// No `[[channels]]` in the file: the embedded default (one relief channel) applies.
const DEFAULT_CHANNELS: &str = "";

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// A plain picture: nothing in it stands out from its background.
fn uniform_png() -> Vec<u8> {
    let picture = image::RgbImage::from_pixel(240, 180, image::Rgb([128, 128, 128]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    picture.write_to(&mut bytes, image::ImageFormat::Png).expect("encoding a plain picture");
    bytes.into_inner()
}

/// Checks the GLB container: magic, version 2, total length, a JSON chunk first.
fn assert_glb(bytes: &[u8]) -> Value {
    assert!(bytes.len() > 20, "{} bytes is no GLB", bytes.len());
    let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
    assert_eq!(&bytes[..4], b"glTF");
    assert_eq!(word(4), 2, "GLB version");
    assert_eq!(word(8), bytes.len(), "GLB length");
    assert_eq!(&bytes[16..20], b"JSON");
    serde_json::from_slice(&bytes[20..20 + word(12)]).expect("the JSON chunk parses")
}

fn tool_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/gltf-validate")
}

/// Runs the Khronos glTF Validator on `file` and asserts zero errors. Fails with what to
/// do when the validator is not installed, instead of skipping the check.
fn assert_khronos_valid(file: &Path) {
    let installed = tool_dir().join("node_modules/gltf-validator/package.json");
    assert!(
        installed.exists(),
        "the Khronos glTF Validator is not installed ({} is missing): run `make test` or `scripts/deps.sh --test`",
        installed.display()
    );
    let output = std::process::Command::new("node")
        .arg(tool_dir().join("validate.mjs"))
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): install Node.js 20 or later, then run `make test`"));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains(": 0 error(s)"), "{report}");
}

#[tokio::test]
async fn the_default_channel_turns_the_mug_into_a_model_with_live_progress() {
    let app = TestApp::spawn_with(DEFAULT_CHANNELS).await;

    let (status, catalog) = app.get_json("/api/v1/catalog").await;
    assert_eq!(status, 200);
    let models = catalog["models"].as_array().expect("models");
    assert_eq!(models.len(), 1, "{catalog}");
    let relief = &models[0];
    assert_eq!(relief["name"], "relief");
    assert_eq!(relief["kind"], "image_to_3d");
    assert_eq!(relief["default"], true);
    assert_eq!(relief["available"], true);
    let description = relief["description"].as_str().expect("a description");
    assert!(description.contains("not a neural model"), "{description}");
    assert!(relief["channels"][0]["max_concurrency"].as_u64().is_some_and(|n| n >= 1));

    // No model named: the default for a picture is relief.
    let response = app.upload("/api/v1/tasks", fixture("mug.jpg"), &[]).await;
    assert_eq!(response.status().as_u16(), 202);
    let task: Value = response.json().await.expect("task");
    assert_eq!(task["model"], "relief");
    assert_eq!(task["channel"], "relief");
    let id = task["id"].as_str().expect("id");

    let events = app.events(id, None, 100).await;
    let kinds: Vec<&str> = events.iter().map(|(_, kind, _)| kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"queued"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"completed"), "{kinds:?}");
    // The engine's own stages, in order, each once, with rising progress.
    let processing: Vec<(&str, u64)> = events
        .iter()
        .filter(|(_, kind, _)| kind == "processing")
        .map(|(_, _, data)| (data["stage"].as_str().unwrap_or(""), data["progress"].as_u64().unwrap_or(0)))
        .collect();
    let stages: Vec<&str> = processing.iter().map(|(stage, _)| *stage).filter(|s| *s != "starting").collect();
    // Then kiln's own step, which makes the preview and the compressed GLB.
    assert_eq!(stages, ["segmenting", "meshing", "texturing", "encoding", "finishing"], "{processing:?}");
    assert!(processing.windows(2).all(|w| w[0].1 <= w[1].1), "progress went backwards: {processing:?}");
    let result_event = events.iter().find(|(_, kind, _)| kind == "result").expect("a result event");
    assert_eq!(result_event.2["name"], "model.glb");
    assert!(result_event.2["url"].as_str().is_some_and(|u| u.ends_with("/model.glb")), "{}", result_event.2);

    let (status, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(status, 200);
    assert_eq!(result["status"], "succeeded");
    let outputs = result["outputs"].as_array().expect("outputs");
    let names: Vec<&str> = outputs.iter().filter_map(|o| o["name"].as_str()).collect();
    assert!(names.contains(&"preview.png") && names.contains(&"model.meshopt.glb"), "{names:?}");
    let output = outputs.iter().find(|o| o["name"] == "model.glb").expect("the model");
    assert_eq!(output["role"], "model");
    assert_eq!(output["content_type"], "model/gltf-binary");
    assert_eq!(output["format"], "glb");
    let stats = &output["metadata"];
    let triangles = stats["triangles"].as_u64().expect("triangles");
    assert!((1..=60_000).contains(&triangles), "{stats}");
    assert!(stats["vertices"].as_u64().is_some_and(|v| v > 0), "{stats}");
    for corner in ["min", "max"] {
        let values = stats["bbox"][corner].as_array().expect("bbox corner");
        assert_eq!(values.len(), 3);
        assert!(values.iter().all(|v| v.as_f64().is_some_and(|v| (-0.5..=0.5).contains(&v))), "{stats}");
    }
    assert_eq!(stats["texture"]["format"], "jpeg");
    assert!(stats["texture"]["width"].as_u64().is_some_and(|w| (1..=1024).contains(&w)), "{stats}");
    // The task's metadata repeats the statistics, with the format, size and options.
    let metadata = &result["metadata"];
    assert_eq!(metadata["format"], "glb");
    assert_eq!(metadata["size"], output["size"]);
    let provider = &metadata["provider"];
    assert_eq!(provider["engine"], "relief");
    assert_eq!(provider["triangles"], stats["triangles"]);
    assert_eq!(provider["bbox"], stats["bbox"]);
    assert_eq!(provider["size"], output["size"]);
    assert_eq!(provider["options"]["max_triangles"], 60_000);

    let url = output["url"].as_str().expect("url");
    let glb = app.client.get(url).send().await.expect("download").bytes().await.expect("body");
    assert_eq!(Some(glb.len() as u64), output["size"].as_u64());
    let document = assert_glb(&glb);
    assert_eq!(document["asset"]["generator"], "relief");
    app.stop().await;
}

#[tokio::test]
async fn a_plain_picture_fails_with_no_foreground_object() {
    let app = TestApp::spawn_with(DEFAULT_CHANNELS).await;
    let response = app.upload("/api/v1/tasks", uniform_png(), &[]).await;
    assert_eq!(response.status().as_u16(), 202);
    let task: Value = response.json().await.expect("task");
    let id = task["id"].as_str().expect("id");
    let events = app.events(id, None, 100).await;
    let (_, kind, data) = events.last().expect("events");
    assert_eq!(kind, "failed", "{events:?}");
    assert_eq!(data["error"]["code"], "no_foreground_object", "{data}");
    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"]["code"], "no_foreground_object");
    let message = result["error"]["message"].as_str().expect("message");
    assert!(message.contains("plain background"), "{message}");
    assert_eq!(result["outputs"].as_array().map(Vec::len), Some(0));
    app.stop().await;
}

#[tokio::test]
async fn bad_relief_params_are_refused_before_queueing() {
    let app = TestApp::spawn_with(DEFAULT_CHANNELS).await;
    for (params, expected) in [
        (r#"{"depth": 9}"#, "`depth` must be between 0.05 and 2"),
        (r#"{"resolution": "fine"}"#, "`resolution` must be a whole number from 32 to 512"),
        (r#"{"detail": 1}"#, "Unknown parameter `detail`"),
    ] {
        let response = app.upload("/api/v1/tasks", fixture("mug.jpg"), &[("params", params)]).await;
        assert_eq!(response.status().as_u16(), 400, "{params}");
        let body: Value = response.json().await.expect("error body");
        assert_eq!(body["error"]["code"], "invalid_params");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(expected), "{params}: {message}");
    }
    let (_, page) = app.get_json("/api/v1/tasks").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0), "nothing was queued");

    // Valid params reach the engine: a smaller budget gives a smaller model.
    let response = app
        .upload("/api/v1/tasks", fixture("mug.jpg"), &[("params", r#"{"max_triangles": 2000, "texture_size": 256}"#)])
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let task: Value = response.json().await.expect("task");
    let done = app.wait_terminal(task["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (_, result) = app.get_json(&format!("/api/v1/tasks/{}/result", task["id"].as_str().unwrap_or(""))).await;
    let stats = &result["outputs"][0]["metadata"];
    assert!(stats["triangles"].as_u64().is_some_and(|t| t <= 2000), "{stats}");
    assert!(stats["texture"]["width"].as_u64().is_some_and(|w| w <= 256), "{stats}");
    app.stop().await;
}

#[tokio::test]
async fn kiln_generate_writes_a_valid_model_of_the_mug() {
    let app = TestApp::spawn_with(DEFAULT_CHANNELS).await;
    let out = app.dir.path().join("mug.glb");
    let image = format!("{FIXTURES}/mug.jpg");
    let output = tokio::process::Command::new(KILN)
        .args(["generate", &image, "--quiet", "--server", &app.base, "-o"])
        .arg(&out)
        .output()
        .await
        .expect("running kiln generate");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let glb = std::fs::read(&out).expect("the model was written");
    let document = assert_glb(&glb);
    assert_eq!(document["meshes"].as_array().map(Vec::len), Some(1));
    assert_khronos_valid(&out);

    // The task it made lists the model's metadata.
    let (_, page) = app.get_json("/api/v1/tasks").await;
    let id = page["items"][0]["id"].as_str().expect("the generated task");
    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(result["outputs"][0]["size"].as_u64(), Some(glb.len() as u64));
    assert!(result["outputs"][0]["metadata"]["triangles"].as_u64().is_some_and(|t| t > 0), "{result}");

    // A plain picture: the command fails and names the code.
    let plain = app.dir.path().join("plain.png");
    std::fs::write(&plain, uniform_png()).expect("writing a plain picture");
    let output = tokio::process::Command::new(KILN)
        .args(["generate", "--quiet", "--server", &app.base])
        .arg(&plain)
        .output()
        .await
        .expect("running kiln generate");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no_foreground_object"));
    app.stop().await;
}
