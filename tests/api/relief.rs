//! The relief engine end to end through the real server, on the embedded default
//! channel: the catalog entry, a picture in, live progress over SSE, seed 004's files
//! (cut-out, position map, model, OBJ archive) stored as each is ready, the GLB's
//! metadata, seed 004's status table filled, `no_foreground_object`, bad params refused
//! before queueing, and `kiln generate` writing a model that the Khronos glTF Validator
//! accepts.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::helpers::{FIXTURES, TestApp, fixture, read_events};

/// Seed 004's files in the order relief stores them, each as soon as it is ready.
pub const SEED_004_FILES: [&str; 4] = ["pixel_images.png", "xyz_images.png", "model.glb", "output3d.zip"];

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

/// Fetches `url` (absolute, or relative to the server) and checks its content type.
async fn fetch(app: &TestApp, url: &str, content_type: &str) -> Vec<u8> {
    let url = if url.starts_with("http") { url.to_owned() } else { app.url(url) };
    let response = app.client.get(&url).send().await.expect("GET a stored file");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    assert_eq!(response.headers()["content-type"], content_type, "{url}");
    response.bytes().await.expect("the file's body").to_vec()
}

/// Seed 004's status table of a completed task: every file's URL filled under the task's
/// reconstruction folder, and the cut-out, position map and archive fetched and checked
/// ([`assert_seed_004_files`]). Returns the table.
pub async fn assert_seed_004_status(app: &TestApp, task_id: &str) -> Value {
    let (_, status) = app.get_json(&format!("/api/reconstruction/status/{task_id}")).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let url = |field: &str| status[field].as_str().unwrap_or_else(|| panic!("{field} is empty: {status}")).to_owned();
    for (field, file) in [
        ("pixelImagesUrl", "pixel_images.png"),
        ("xyzImagesUrl", "xyz_images.png"),
        ("outputZipUrl", "output3d.zip"),
        ("modelUrl", "model.glb"),
    ] {
        assert!(url(field).ends_with(&format!("reconstruction/{task_id}/{file}")), "{field}: {status}");
    }
    assert_seed_004_files(app, &url("pixelImagesUrl"), &url("xyzImagesUrl"), &url("outputZipUrl")).await;
    status
}

/// Fetches seed 004's three pictures-and-archive files and checks each is what its name
/// promises: the cut-out an 8-bit RGBA PNG with a transparent background and an opaque
/// object; the position map a 16-bit RGBA PNG of the same size, alpha only 0 or 65535,
/// its surface points inside the model's unit cube and its other pixels zero; the
/// archive a zip holding `model.obj` and `model.mtl`.
pub async fn assert_seed_004_files(app: &TestApp, pixel_images: &str, xyz_images: &str, output_zip: &str) {
    let cutout = match image::load_from_memory(&fetch(app, pixel_images, "image/png").await).expect("a PNG") {
        image::DynamicImage::ImageRgba8(image) => image,
        other => panic!("pixel_images.png is {:?}, not 8-bit RGBA", other.color()),
    };
    assert!(cutout.pixels().any(|p| p.0[3] == 0), "the cut-out has no transparent background");
    assert!(cutout.pixels().any(|p| p.0[3] == 255), "the cut-out has no opaque object");

    let positions = match image::load_from_memory(&fetch(app, xyz_images, "image/png").await).expect("a PNG") {
        image::DynamicImage::ImageRgba16(image) => image,
        other => panic!("xyz_images.png is {:?}, not 16-bit RGBA", other.color()),
    };
    assert_eq!(positions.dimensions(), cutout.dimensions(), "the two pictures cover the same texels");
    let mut surface = 0usize;
    let mut front = f64::MIN;
    for pixel in positions.pixels() {
        match pixel.0[3] {
            0 => assert_eq!(pixel.0, [0; 4], "a pixel off the surface is not zero"),
            u16::MAX => {
                surface += 1;
                // docs/relief.md's decoding: (R, G, B) / 65535 - 0.5.
                let z = f64::from(pixel.0[2]) / 65535.0 - 0.5;
                front = front.max(z);
            }
            other => panic!("a position map pixel has alpha {other}"),
        }
    }
    assert!(surface > 100, "the position map covers {surface} pixels");
    assert!(front > 0.0, "the front surface lies behind the model's middle ({front})");
    let opaque = cutout.pixels().filter(|p| p.0[3] >= 128).count();
    let ratio = surface as f64 / opaque as f64;
    assert!((0.95..1.05).contains(&ratio), "{surface} surface pixels against {opaque} opaque cut-out pixels");

    let zip = fetch(app, output_zip, "application/zip").await;
    assert!(zip.starts_with(b"PK\x03\x04"), "output3d.zip is not a zip");
    for name in [b"model.obj".as_slice(), b"model.mtl"] {
        assert!(zip.windows(name.len()).any(|w| w == name), "output3d.zip has no {}", String::from_utf8_lossy(name));
    }
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
    // Seed 004's files, each stored as soon as it is ready: the cut-out while texturing,
    // the position map while encoding, then the model and its OBJ archive.
    let results: Vec<(i64, &str)> = events
        .iter()
        .filter(|(_, kind, _)| kind == "result")
        .map(|(seq, _, data)| (*seq, data["name"].as_str().unwrap_or("")))
        .collect();
    let names: Vec<&str> = results.iter().map(|(_, name)| *name).collect();
    assert!(names.starts_with(&SEED_004_FILES), "{names:?}");
    let stage_seq =
        |stage: &str| events.iter().find(|(_, kind, data)| kind == "processing" && data["stage"] == stage).map(|e| e.0);
    let (texturing, encoding) = (stage_seq("texturing").expect("texturing"), stage_seq("encoding").expect("encoding"));
    assert!(texturing < results[0].0 && results[0].0 < encoding, "the cut-out is stored while texturing");
    assert!(encoding < results[1].0, "the position map is stored while encoding");
    for (_, _, data) in events.iter().filter(|(_, kind, _)| kind == "result").take(4) {
        let name = data["name"].as_str().unwrap_or("");
        assert!(data["url"].as_str().is_some_and(|u| u.ends_with(&format!("/{name}"))), "{data}");
    }

    let (status, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(status, 200);
    assert_eq!(result["status"], "succeeded");
    let outputs = result["outputs"].as_array().expect("outputs");
    let named = |name: &str| outputs.iter().find(|o| o["name"] == name).unwrap_or_else(|| panic!("no {name}"));
    for (name, role, content_type) in [
        ("pixel_images.png", "cutout", "image/png"),
        ("xyz_images.png", "position_map", "image/png"),
        ("model.glb", "model", "model/gltf-binary"),
        ("output3d.zip", "archive", "application/zip"),
    ] {
        assert_eq!(
            (named(name)["role"].as_str(), named(name)["content_type"].as_str()),
            (Some(role), Some(content_type))
        );
    }
    let names: Vec<&str> = outputs.iter().filter_map(|o| o["name"].as_str()).collect();
    assert!(names.contains(&"preview.png") && names.contains(&"model.meshopt.glb"), "{names:?}");
    let output = named("model.glb");
    assert_eq!(output["format"], "glb");
    let archive = named("output3d.zip");
    assert_eq!(archive["metadata"]["format"], "obj");
    assert_eq!(archive["metadata"]["source_sha256"], output["sha256"]);
    assert_eq!(archive["metadata"]["triangles"], output["metadata"]["triangles"]);
    let texture = &output["metadata"]["texture"];
    for map in [named("pixel_images.png"), named("xyz_images.png")] {
        assert_eq!((&map["metadata"]["width"], &map["metadata"]["height"]), (&texture["width"], &texture["height"]));
    }
    assert_seed_004_files(
        &app,
        named("pixel_images.png")["url"].as_str().expect("url"),
        named("xyz_images.png")["url"].as_str().expect("url"),
        archive["url"].as_str().expect("url"),
    )
    .await;
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
    let model = result["outputs"].as_array().and_then(|o| o.iter().find(|o| o["role"] == "model")).expect("a model");
    let stats = &model["metadata"];
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
    let model = result["outputs"].as_array().and_then(|o| o.iter().find(|o| o["role"] == "model")).expect("a model");
    assert_eq!(model["size"].as_u64(), Some(glb.len() as u64));
    assert!(model["metadata"]["triangles"].as_u64().is_some_and(|t| t > 0), "{result}");

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

#[tokio::test]
async fn seed_004s_status_table_points_at_every_file_relief_made() {
    let app = TestApp::spawn_with(DEFAULT_CHANNELS).await;
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(fixture("vase.png")).file_name("vase.png"));
    let picture: Value = app
        .client
        .post(app.url("/picture/upload"))
        .multipart(form)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("JSON");
    let created: Value = app
        .client
        .post(app.url("/api/reconstruction/create-from-image"))
        .json(&json!({ "pictureId": picture["id"] }))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("JSON");
    let task_id = created["taskId"].as_str().expect("a task id");

    // The stream renders each file as a `result` in arrival order, then COMPLETED.
    let events = read_events(&app.client, &app.url(created["sseUrl"].as_str().expect("sseUrl")), None, 100).await;
    let files: Vec<&str> = events
        .iter()
        .filter(|(_, kind, _)| kind == "result")
        .filter_map(|(_, _, data)| data["fileName"].as_str())
        .collect();
    assert!(files.starts_with(&SEED_004_FILES), "{files:?}");
    let (_, name, last) = events.last().expect("events");
    assert_eq!((name.as_str(), last["status"].as_str()), ("status", Some("COMPLETED")));

    let status = assert_seed_004_status(&app, task_id).await;
    assert_glb(&fetch(&app, status["modelUrl"].as_str().expect("modelUrl"), "model/gltf-binary").await);
    // relief makes no preview picture itself; kiln's own, when it makes one, has role
    // `preview`, never the cut-out.
    match status["previewUrl"].as_str() {
        None => assert!(status["previewUrl"].is_null()),
        Some(preview) => assert!(preview.ends_with("/preview.png"), "{status}"),
    }
    app.stop().await;
}
