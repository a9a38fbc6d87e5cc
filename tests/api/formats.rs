//! `GET /api/v1/tasks/{id}/result?format=`: a relief model converted on request through
//! the real server (303 to a stored file that downloads and parses, made once however
//! many ask at once, then reused), and the refusals: unknown formats, pictures, tasks
//! without a model, and a provider's GLB that is not one (422, remembered, no panic).

use serde_json::Value;

use crate::helpers::{TestApp, fixture};

const CHANNELS: &str = r#"
[[channels]]
name = "relief"
type = "relief"
max_concurrency = 1
max_queue = 20
models = [{ name = "relief", kind = "image_to_3d" }]

[[channels]]
name = "echo"
type = "echo"
max_concurrency = 2
max_queue = 50
models = [
  { name = "echo", kind = "image_to_3d" },
  { name = "echo-image", kind = "text_to_image" },
]
"#;

/// A small relief model, quick to make and to convert.
const SMALL: &str = r#"{"max_triangles": 4000, "texture_size": 256}"#;

async fn spawn() -> TestApp {
    TestApp::spawn_with(CHANNELS).await
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

/// Submits a picture to `model` and waits for the task to end; returns its id.
async fn finished_task(app: &TestApp, model: &str, params: &str) -> String {
    let response = app.upload("/api/v1/tasks", fixture("vase.png"), &[("model", model), ("params", params)]).await;
    assert_eq!(response.status().as_u16(), 202);
    let task: Value = response.json().await.expect("task");
    let id = task["id"].as_str().expect("id").to_owned();
    app.wait_terminal(&id).await;
    id
}

async fn ask(app: &TestApp, id: &str, query: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response =
        no_redirects().get(app.url(&format!("/api/v1/tasks/{id}/result?{query}"))).send().await.expect("GET ?format=");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

/// The value of a counter in `/metrics`, 0 when absent.
async fn counter(app: &TestApp, series: &str) -> u64 {
    let text = app.get("/metrics").await.text().await.expect("metrics");
    text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
}

/// The task's model among its outputs (relief stores its cut-out and position map first).
fn model_output(result: &Value) -> &Value {
    result["outputs"].as_array().and_then(|o| o.iter().find(|o| o["role"] == "model")).expect("a model output")
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn stl_of_a_relief_model_is_made_once_stored_and_served() {
    let app = spawn().await;
    let id = finished_task(&app, "relief", SMALL).await;
    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    let triangles = model_output(&result)["metadata"]["triangles"].as_u64().expect("relief's triangle count");
    let ok = r#"kiln_conversions_total{format="stl",outcome="ok"}"#;
    assert_eq!(counter(&app, ok).await, 0);

    let (status, headers, output) = ask(&app, &id, "format=stl").await;
    assert_eq!(status, 303, "{output}");
    let location = headers[reqwest::header::LOCATION].to_str().expect("location").to_owned();
    assert_eq!(location, output["url"].as_str().expect("url"));
    assert_eq!(output["name"], "model.stl");
    assert_eq!(output["role"], "conversion");
    assert_eq!(output["content_type"], "model/stl");
    assert_eq!(output["metadata"]["format"], "stl");
    assert_eq!(output["metadata"]["units"], "m");
    assert_eq!(output["metadata"]["source"], "model.glb");
    assert_eq!(output["metadata"]["source_sha256"], model_output(&result)["sha256"]);
    assert_eq!(output["metadata"]["triangles"], triangles);

    // The file downloads with its type, and its header agrees with its length and with
    // the triangle count relief reported for the GLB.
    let file = app.client.get(&location).send().await.expect("download");
    assert_eq!(file.status().as_u16(), 200);
    assert_eq!(file.headers()[reqwest::header::CONTENT_TYPE], "model/stl");
    let bytes = file.bytes().await.expect("STL bytes");
    assert_eq!(bytes.len() as u64, output["size"].as_u64().expect("size"));
    let count = u32::from_le_bytes([bytes[80], bytes[81], bytes[82], bytes[83]]) as u64;
    assert_eq!(count, triangles);
    assert_eq!(bytes.len() as u64, 84 + 50 * count, "binary STL length");
    assert_eq!(counter(&app, ok).await, 1);

    // Asked again: the stored file, not a second conversion.
    let (status, again_headers, again) = ask(&app, &id, "format=stl").await;
    assert_eq!(status, 303);
    assert_eq!(again_headers[reqwest::header::LOCATION], location.as_str());
    assert_eq!(again["sha256"], output["sha256"]);
    assert_eq!(counter(&app, ok).await, 1);

    // It is one more output of the task, and the finished task's log has no new event.
    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    let names: Vec<&str> =
        result["outputs"].as_array().expect("outputs").iter().filter_map(|o| o["name"].as_str()).collect();
    // relief's own files, then the preview and the compressed GLB made when the task
    // finished.
    assert_eq!(
        names,
        [
            "pixel_images.png",
            "xyz_images.png",
            "model.glb",
            "output3d.zip",
            "preview.png",
            "model.meshopt.glb",
            "model.stl"
        ]
    );
    let events = app.events(&id, None, 100).await;
    assert_eq!(events.last().map(|(_, kind, _)| kind.as_str()), Some("completed"));
    assert!(events.iter().all(|(_, kind, data)| kind != "result" || data["name"] != "model.stl"));

    // `units=mm` is the millimetre file, a file of its own.
    let (status, _, mm) = ask(&app, &id, "format=stl&units=mm").await;
    assert_eq!(status, 303, "{mm}");
    assert_eq!(mm["name"], "model-mm.stl");
    assert_eq!(mm["metadata"]["units"], "mm");
    assert_ne!(mm["sha256"], output["sha256"]);

    // `glb` is the provider's own file.
    let (status, _, glb) = ask(&app, &id, "format=glb").await;
    assert_eq!(status, 303);
    assert_eq!(glb["name"], "model.glb");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_requests_for_one_format_make_it_once() {
    let app = spawn().await;
    let id = finished_task(&app, "relief", SMALL).await;
    let asks = (0..10).map(|_| ask(&app, &id, "format=ply"));
    let answers = futures::future::join_all(asks).await;
    let first = &answers[0].2;
    for (status, headers, output) in &answers {
        assert_eq!(*status, 303, "{output}");
        assert!(headers.contains_key(reqwest::header::LOCATION));
        assert_eq!(output["sha256"], first["sha256"]);
    }
    assert_eq!(first["content_type"], "application/x-ply");
    assert_eq!(counter(&app, r#"kiln_conversions_total{format="ply",outcome="ok"}"#).await, 1);
    let file = app.client.get(first["url"].as_str().expect("url")).send().await.expect("download");
    let bytes = file.bytes().await.expect("PLY bytes");
    assert!(bytes.starts_with(b"ply\nformat binary_little_endian 1.0\n"), "a binary PLY header");
    app.stop().await;
}

#[tokio::test]
async fn the_other_formats_convert_with_their_content_types() {
    let app = spawn().await;
    let id = finished_task(&app, "relief", SMALL).await;
    for (format, name, content_type, magic) in [
        ("obj", "output3d.zip", "application/zip", &b"PK\x03\x04"[..]),
        ("usdz", "model.usdz", "model/vnd.usdz+zip", &b"PK\x03\x04"[..]),
    ] {
        let (status, _, output) = ask(&app, &id, &format!("format={format}")).await;
        assert_eq!(status, 303, "{format}: {output}");
        assert_eq!(output["name"], name);
        assert_eq!(output["content_type"], content_type);
        let file = app.client.get(output["url"].as_str().expect("url")).send().await.expect("download");
        assert_eq!(file.headers()[reqwest::header::CONTENT_TYPE], content_type);
        assert!(file.bytes().await.expect("bytes").starts_with(magic), "{format}");
    }
    app.stop().await;
}

#[tokio::test]
async fn formats_are_refused_where_they_cannot_apply() {
    let app = spawn().await;
    let id = finished_task(&app, "relief", SMALL).await;
    let (status, _, body) = ask(&app, &id, "format=fbx").await;
    assert_eq!((status, error_code(&body)), (400, "unknown_format"), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("stl")), "{body}");
    let (status, _, body) = ask(&app, &id, "format=stl&units=inch").await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"), "{body}");
    let (status, _, body) = ask(&app, "00000000-0000-7000-8000-000000000000", "format=stl").await;
    assert_eq!((status, error_code(&body)), (404, "task_not_found"), "{body}");

    // A picture has no 3D formats.
    let picture = app.submit_prompt(serde_json::json!({"prompt": "a vase", "model": "echo-image"})).await;
    assert_eq!(picture.status().as_u16(), 202);
    let picture: Value = picture.json().await.expect("task");
    let picture = picture["id"].as_str().expect("id");
    app.wait_terminal(picture).await;
    let (status, _, body) = ask(&app, picture, "format=stl").await;
    assert_eq!((status, error_code(&body)), (400, "format_not_applicable"), "{body}");

    // A failed task has no model; a running one has none yet.
    let failed = finished_task(&app, "echo", r#"{"fail": "boom"}"#).await;
    let (status, _, body) = ask(&app, &failed, "format=stl").await;
    assert_eq!((status, error_code(&body)), (409, "no_model"), "{body}");
    let response = app
        .upload(
            "/api/v1/tasks",
            fixture("vase.png"),
            &[("model", "echo"), ("params", r#"{"steps": 100, "step_ms": 100}"#)],
        )
        .await;
    let running: Value = response.json().await.expect("task");
    let running = running["id"].as_str().expect("id");
    let (status, _, body) = ask(&app, running, "format=stl").await;
    assert_eq!((status, error_code(&body)), (409, "task_not_finished"), "{body}");
    let canceled = app.client.delete(app.url(&format!("/api/v1/tasks/{running}"))).send().await.expect("cancel");
    assert_eq!(canceled.status().as_u16(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_model_that_is_no_glb_fails_to_convert_once_and_is_remembered() {
    let app = spawn().await;
    // The echo provider stores the picture it was given as `model.glb`: a PNG.
    let id = finished_task(&app, "echo", "{}").await;
    let failed = r#"kiln_conversions_total{format="stl",outcome="failed"}"#;
    let (status, _, body) = ask(&app, &id, "format=stl").await;
    assert_eq!((status, error_code(&body)), (422, "conversion_failed"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("The model cannot be read"), "{message}");
    assert_eq!(counter(&app, failed).await, 1);

    // Asked again: the same answer, without converting again.
    let (status, _, again) = ask(&app, &id, "format=stl").await;
    assert_eq!((status, error_code(&again)), (422, "conversion_failed"));
    assert_eq!(again["error"]["message"], body["error"]["message"]);
    assert_eq!(counter(&app, failed).await, 1);

    // Nothing was stored, and the server is fine.
    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(result["outputs"].as_array().map(Vec::len), Some(1), "{result}");
    assert_eq!(app.get("/health").await.status().as_u16(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_conversion_still_running_answers_202_and_the_file_follows() {
    // With no wait at all, the first answer comes before any conversion can end.
    let app = TestApp::spawn_with(&format!("{CHANNELS}\n[convert]\nwait = \"0s\"\n")).await;
    let id = finished_task(&app, "relief", SMALL).await;
    let (status, headers, body) = ask(&app, &id, "format=usdz").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(headers[reqwest::header::RETRY_AFTER], "2");
    assert_eq!(body, serde_json::json!({"format": "usdz", "status": "pending"}));
    let mut answer = (status, body);
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (status, _, body) = ask(&app, &id, "format=usdz").await;
        answer = (status, body);
        if status != 202 {
            break;
        }
    }
    assert_eq!(answer.0, 303, "{}", answer.1);
    assert_eq!(answer.1["name"], "model.usdz");
    assert_eq!(counter(&app, r#"kiln_conversions_total{format="usdz",outcome="ok"}"#).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_model_over_the_converters_ceiling_is_refused_as_too_large() {
    let app = TestApp::spawn_with(&format!("{CHANNELS}\n[convert]\nmax_triangles = 100\n")).await;
    let id = finished_task(&app, "relief", SMALL).await;
    let (status, _, body) = ask(&app, &id, "format=stl").await;
    assert_eq!((status, error_code(&body)), (422, "model_too_large"), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("triangles")), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_usdz_over_its_triangle_budget_is_made_from_a_simplified_copy() {
    let app = TestApp::spawn_with(&format!("{CHANNELS}\n[convert]\nusdz_max_triangles = 1000\n")).await;
    let id = finished_task(&app, "relief", SMALL).await;
    let result = app.get(&format!("/api/v1/tasks/{id}/result")).await.json::<Value>().await.expect("result");
    let triangles = model_output(&result)["metadata"]["triangles"].as_u64().expect("relief's triangle count");
    assert!(triangles > 1000, "relief made {triangles} triangles, no more than the budget");
    let (status, _, output) = ask(&app, &id, "format=usdz").await;
    assert_eq!(status, 303, "{output}");
    let made = output["metadata"]["triangles"].as_u64().expect("triangles written");
    assert!(made > 0 && made <= 1000, "{made} triangles in the USDZ");
    assert_eq!(output["metadata"]["simplified_from"].as_u64(), Some(triangles), "{output}");
    let notes = output["metadata"]["notes"].to_string();
    assert!(notes.contains("simplified from"), "{notes}");
    // Other formats keep every triangle.
    let (status, _, stl) = ask(&app, &id, "format=stl").await;
    assert_eq!(status, 303, "{stl}");
    assert_eq!(stl["metadata"]["triangles"].as_u64(), Some(triangles));
    app.stop().await;
}

/// The conversion lease the processes sharing a database take turns with, on the real
/// repository (SQLite, or PostgreSQL with `KILN_TEST_DATABASE=postgres`).
#[tokio::test]
async fn one_holder_at_a_time_converts_and_lasting_failures_are_kept_per_model() {
    use kiln::{
        db::{self, ConversionClaim, ConversionEnd},
        tasks::{NewTask, TaskId, TaskKind},
    };
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("tempdir");
    let db = db::connect(&crate::helpers::database_url(dir.path()), 2).await.expect("database");
    let id = TaskId::new();
    let task = NewTask {
        id,
        kind: TaskKind::ImageTo3d,
        model: "m".into(),
        channel: "c".into(),
        prompt: None,
        picture_id: None,
        params: serde_json::json!({}),
        client_secret: None,
        owner_id: None,
        token_id: None,
        webhook_url: None,
    };
    db.enqueue(&task, 10, None, &Default::default()).await.expect("enqueue");
    let lease = Duration::from_secs(60);
    let begin = |holder: &'static str, sha: &'static str, lease: Duration| {
        let db = db.clone();
        async move { db.begin_conversion(id, "stl", sha, holder, lease).await.expect("begin") }
    };

    assert_eq!(begin("a", "sha1", lease).await, ConversionClaim::Taken);
    assert_eq!(begin("b", "sha1", lease).await, ConversionClaim::Held);
    assert_eq!(begin("a", "sha1", lease).await, ConversionClaim::Taken, "the holder's own lease is renewed");
    assert!(db.renew_conversion(id, "stl", "a", lease).await.expect("renew"));
    assert!(!db.renew_conversion(id, "stl", "b", lease).await.expect("renew"));

    // A failure worth retrying frees it; a lasting one is kept for that model only.
    let retry = ConversionEnd::Failed { code: "internal_error", message: "x", permanent: false };
    db.end_conversion(id, "stl", "a", retry).await.expect("end");
    assert_eq!(begin("b", "sha1", lease).await, ConversionClaim::Taken);
    let lasting =
        ConversionEnd::Failed { code: "conversion_failed", message: "The model cannot be read.", permanent: true };
    db.end_conversion(id, "stl", "a", lasting).await.expect("end by a non-holder");
    assert_eq!(begin("a", "sha1", lease).await, ConversionClaim::Held, "only the holder ends it");
    db.end_conversion(id, "stl", "b", lasting).await.expect("end");
    let failed =
        ConversionClaim::Failed { code: "conversion_failed".into(), message: "The model cannot be read.".into() };
    assert_eq!(begin("a", "sha1", lease).await, failed);
    assert_eq!(begin("a", "sha2", lease).await, ConversionClaim::Taken, "another model is converted afresh");
    db.end_conversion(id, "stl", "a", ConversionEnd::Done).await.expect("end");
    assert_eq!(begin("b", "sha2", lease).await, ConversionClaim::Done);

    // A lapsed lease is taken over.
    assert_eq!(begin("a", "sha3", Duration::ZERO).await, ConversionClaim::Taken);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(begin("b", "sha3", lease).await, ConversionClaim::Taken);
    assert!(!db.renew_conversion(id, "stl", "a", lease).await.expect("renew"), "the old holder lost it");
}

/// The names of a task's `result` events, in order, and whether its log ends `completed`
/// right after them.
async fn result_names(app: &TestApp, id: &str) -> (Vec<String>, Vec<(i64, String, Value)>) {
    let events = app.events(id, None, 200).await;
    assert_eq!(events.last().map(|(_, kind, _)| kind.as_str()), Some("completed"), "{events:?}");
    let names = events
        .iter()
        .filter(|(_, kind, _)| kind == "result")
        .filter_map(|(_, _, data)| data["name"].as_str().map(str::to_owned))
        .collect();
    (names, events)
}

fn format_entry<'a>(result: &'a Value, format: &str) -> &'a Value {
    result["formats"].as_array().and_then(|all| all.iter().find(|f| f["format"] == format)).unwrap_or(&Value::Null)
}

#[tokio::test]
async fn a_3d_task_finishes_with_its_preview_compressed_glb_and_asked_formats_before_completed() {
    let app = spawn().await;
    let params = r#"{"max_triangles": 4000, "texture_size": 256, "formats": ["stl", "usdz"]}"#;
    let id = finished_task(&app, "relief", params).await;
    let (names, events) = result_names(&app, &id).await;
    let at = |name: &str| names.iter().position(|n| n == name).unwrap_or_else(|| panic!("no {name} in {names:?}"));
    assert!(at("model.glb") < at("preview.png"), "{names:?}");
    assert!(at("preview.png") < at("model.meshopt.glb"), "{names:?}");
    assert!(at("model.meshopt.glb") < at("model.stl") && at("model.stl") < at("model.usdz"), "{names:?}");
    assert!(!names.iter().any(|n| n == "model.lod.glb"), "relief took `max_triangles` itself: {names:?}");
    assert!(!names.iter().any(|n| n == "model.core.glb"), "relief's GLB is core glTF already: {names:?}");
    assert!(
        events.iter().any(|(_, kind, data)| kind == "processing" && data["stage"] == "finishing"),
        "the finishing step shows as a stage: {events:?}"
    );

    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    let made = &result["metadata"]["provider"]["outputs"];
    assert_eq!(made["made"], serde_json::json!(["preview.png", "model.meshopt.glb", "model.stl", "model.usdz"]));
    assert_eq!(made["failed"], serde_json::json!([]));
    let glb = format_entry(&result, "glb");
    assert_eq!((glb["status"].as_str(), glb["file"].as_str()), (Some("ready"), Some("model.glb")), "{result}");
    for (format, status) in
        [("glb-meshopt", "ready"), ("preview", "ready"), ("stl", "ready"), ("usdz", "ready"), ("ply", "available")]
    {
        assert_eq!(format_entry(&result, format)["status"], status, "{format}: {result}");
    }
    assert_eq!(format_entry(&result, "glb-core"), &Value::Null, "relief's GLB needs no core copy: {result}");
    assert_eq!(format_entry(&result, "lod"), &Value::Null, "no budget below the model's: {result}");
    let ply = format_entry(&result, "ply");
    assert!(ply.get("url").is_none() && ply.get("size").is_none(), "{ply}");

    // The compressed GLB is smaller and reads back with every triangle.
    let compressed = format_entry(&result, "glb-meshopt");
    let (plain_size, small_size) = (glb["size"].as_u64().unwrap_or(0), compressed["size"].as_u64().unwrap_or(0));
    assert!(small_size > 0 && small_size < plain_size, "{small_size} vs {plain_size}");
    let bytes = app.client.get(compressed["url"].as_str().expect("url")).send().await.expect("GET").bytes().await;
    let model = formats::Model::read_glb(&bytes.expect("bytes"), &formats::Limits::default(), &formats::Cancel::new())
        .expect("the compressed GLB reads");
    let triangles = model_output(&result)["metadata"]["triangles"].as_u64().expect("relief's triangles");
    assert_eq!(model.triangles(), triangles);

    // The preview: a 512 px picture on a transparent background, served as the thumbnail.
    let preview = format_entry(&result, "preview");
    let png = app.client.get(preview["url"].as_str().expect("url")).send().await.expect("GET").bytes().await;
    let picture = image::load_from_memory(&png.expect("bytes")).expect("a PNG").to_rgba8();
    assert_eq!(picture.dimensions(), (512, 512));
    assert_eq!(picture.get_pixel(0, 0)[3], 0, "transparent corner");
    assert!(picture.pixels().filter(|p| p[3] == 255).count() > 512 * 512 / 20, "the model is drawn");
    let thumbnail = app.get(&format!("/api/v1/tasks/{id}/thumbnail")).await;
    assert_eq!(thumbnail.status().as_u16(), 200);

    // Asked again on request: the file made at the end, not a second conversion.
    let (status, _, stl) = ask(&app, &id, "format=stl").await;
    assert_eq!((status, stl["name"].as_str()), (303, Some("model.stl")));
    assert_eq!(counter(&app, r#"kiln_conversions_total{format="stl",outcome="ok"}"#).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_budget_below_the_models_triangles_makes_a_simplified_level_of_detail() {
    let app = spawn().await;
    // `echo` makes a relief GLB of ~6,000 triangles and, unlike relief, takes no budget.
    let id = finished_task(&app, "echo", r#"{"glb": true, "max_triangles": 1000}"#).await;
    let (names, _) = result_names(&app, &id).await;
    assert!(names.iter().any(|n| n == "model.lod.glb"), "{names:?}");
    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    let lod = result["outputs"].as_array().and_then(|o| o.iter().find(|o| o["name"] == "model.lod.glb")).cloned();
    let lod = lod.expect("the level of detail is an output");
    assert_eq!((lod["role"].as_str(), lod["metadata"]["format"].as_str()), (Some("variant"), Some("lod")));
    let before = lod["metadata"]["simplified_from"].as_u64().expect("simplified_from");
    let after = lod["metadata"]["triangles"].as_u64().expect("triangles");
    assert!(before > 1000 && after <= 1000 && after > 100, "{before} → {after}");
    assert_eq!(format_entry(&result, "lod")["status"], "ready");
    // The budget is kiln's: `?format=lod` serves it, and cannot be asked where none was.
    let (status, _, served) = ask(&app, &id, "format=lod").await;
    assert_eq!((status, served["name"].as_str()), (303, Some("model.lod.glb")));
    let plain = finished_task(&app, "echo", r#"{"glb": true}"#).await;
    let (status, _, body) = ask(&app, &plain, "format=lod").await;
    assert_eq!((status, error_code(&body)), (400, "format_not_applicable"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn formats_and_budgets_asked_at_creation_are_checked_when_submitted() {
    let app = spawn().await;
    let refused = |model: &'static str, params: &'static str| {
        let app = &app;
        async move {
            let response =
                app.upload("/api/v1/tasks", fixture("vase.png"), &[("model", model), ("params", params)]).await;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, error_code(&body).to_owned(), body["error"]["message"].as_str().unwrap_or_default().to_owned())
        }
    };
    let (status, code, message) = refused("relief", r#"{"formats": ["fbx"]}"#).await;
    assert_eq!((status, code.as_str()), (400, "invalid_params"));
    assert!(message.contains("fbx") && message.contains("usdz"), "{message}");
    let (status, code, _) = refused("relief", r#"{"formats": "stl"}"#).await;
    assert_eq!((status, code.as_str()), (400, "invalid_params"));
    let (status, code, message) = refused("echo", r#"{"max_triangles": 10}"#).await;
    assert_eq!((status, code.as_str()), (400, "invalid_params"), "{message}");
    let prompt = app
        .submit_prompt(serde_json::json!({"prompt": "a vase", "model": "echo-image", "params": {"formats": ["stl"]}}))
        .await;
    assert_eq!(prompt.status().as_u16(), 400);
    // relief refuses keys it does not know, so it never sees `formats`.
    let response = app
        .upload("/api/v1/tasks", fixture("vase.png"), &[("model", "relief"), ("params", r#"{"formats": ["ply"]}"#)])
        .await;
    assert_eq!(response.status().as_u16(), 202);
    app.stop().await;
}

#[tokio::test]
async fn outputs_that_cannot_be_made_never_fail_the_task_and_are_answered_at_once_later() {
    let app = spawn().await;
    // `echo` stores the picture as `model.glb`: nothing can be made from it.
    let id = finished_task(&app, "echo", r#"{"formats": ["stl"]}"#).await;
    let (_, task) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    let failed = result["metadata"]["provider"]["outputs"]["failed"].as_array().cloned().unwrap_or_default();
    let failed: Vec<_> = failed.iter().map(|f| (f["format"].as_str(), f["code"].as_str())).collect();
    assert_eq!(
        failed,
        [
            (Some("preview"), Some("conversion_failed")),
            (Some("glb-meshopt"), Some("conversion_failed")),
            (Some("stl"), Some("conversion_failed"))
        ]
    );
    let stl = format_entry(&result, "stl");
    assert_eq!((stl["status"].as_str(), stl["error"]["code"].as_str()), (Some("failed"), Some("conversion_failed")));
    let failures = r#"kiln_conversions_total{format="stl",outcome="failed"}"#;
    assert_eq!(counter(&app, failures).await, 1);
    let (status, _, body) = ask(&app, &id, "format=stl").await;
    assert_eq!((status, error_code(&body)), (422, "conversion_failed"), "{body}");
    assert_eq!(counter(&app, failures).await, 1, "answered from the record, not converted again");
    app.stop().await;
}

#[tokio::test]
async fn a_finishing_step_left_by_a_dead_process_is_resumed_without_running_the_provider_again() {
    let app = spawn().await;
    let params = r#"{"glb": true, "then_detach": true, "steps": 2, "formats": ["stl"]}"#;
    let response = app.upload("/api/v1/tasks", fixture("vase.png"), &[("model", "echo"), ("params", params)]).await;
    assert_eq!(response.status().as_u16(), 202);
    let task: Value = response.json().await.expect("task");
    let id = task["id"].as_str().expect("id").to_owned();
    let task_id: kiln::tasks::TaskId = id.parse().expect("task id");
    // The provider made its model and left the task running (detached, as a worker's).
    let mut detached = false;
    for _ in 0..2400 {
        let artifacts = app.gateway.db().list_artifacts(task_id).await.expect("artifacts");
        let task = app.gateway.db().get_task(task_id).await.expect("task").expect("the task");
        if artifacts.iter().any(|a| a.name == "model.glb") && task.stage.as_deref() == Some("step-2") {
            detached = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(detached, "the provider made its model within a minute");
    // (Its run ends a moment after the output; give it that moment.)
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // A process began finishing it and died: its mark stays, its lease has lapsed.
    let deadline = chrono::Utc::now() + chrono::Duration::minutes(5);
    let provider_said = serde_json::json!({"from": "the first run"});
    let db = app.gateway.db();
    let marked =
        db.claim_finishing(task_id, true, "a-dead-process", std::time::Duration::ZERO, deadline, &provider_said);
    assert!(marked.await.expect("mark"), "the task was running and nobody was finishing it");
    // The queue claims it again and does the finishing step only.
    let ended = app.wait_terminal(&id).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let (names, events) = result_names(&app, &id).await;
    for name in ["model.glb", "preview.png", "model.meshopt.glb", "model.stl"] {
        assert_eq!(names.iter().filter(|n| *n == name).count(), 1, "{name} once: {names:?}");
    }
    let steps = events.iter().filter(|(_, kind, data)| kind == "processing" && data["stage"] == "step-1").count();
    assert_eq!(steps, 1, "the provider ran once: {events:?}");
    assert!(events.iter().any(|(_, kind, data)| kind == "processing" && data["stage"] == "restarting"), "{events:?}");
    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    let provider = &result["metadata"]["provider"];
    assert_eq!(provider["from"], "the first run", "the provider's metadata was kept: {provider}");
    assert_eq!(provider["outputs"]["made"], serde_json::json!(["preview.png", "model.meshopt.glb", "model.stl"]));
    app.stop().await;
}
