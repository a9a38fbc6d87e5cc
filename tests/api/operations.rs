//! Health, readiness, metrics, OpenAPI, request ids and the error envelope.

use serde_json::Value;

use crate::helpers::TestApp;

#[tokio::test]
async fn health_and_readiness_report_the_service_state() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get_json("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let (status, body) = app.get_json("/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    app.stop().await;
}

#[tokio::test]
async fn readiness_is_503_without_a_usable_channel() {
    // Only a disabled channel: a configuration without any `[[channels]]` would get the
    // default relief channel, which is usable.
    let app = TestApp::spawn_with(
        r#"
[[channels]]
name = "echo"
type = "echo"
enabled = false
models = [{ name = "echo", kind = "image_to_3d" }]
"#,
    )
    .await;
    let (status, body) = app.get_json("/ready").await;
    assert_eq!(status, 503);
    let channels = body["checks"].as_array().unwrap().iter().find(|c| c["name"] == "channels").unwrap().clone();
    assert_eq!(channels["ok"], false);
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_tasks_and_queue_depth() {
    let app = TestApp::spawn().await;
    let task = app.submit_image(&[]).await;
    app.wait_terminal(task["id"].as_str().unwrap()).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(text.contains(r#"kiln_http_requests_total{route="/api/v1/tasks",method="POST",status="202"} 1"#), "{text}");
    assert!(text.contains(r#"kiln_tasks{status="succeeded"} 1"#), "{text}");
    assert!(text.contains(r#"kiln_queue_depth{channel="echo"} 0"#), "{text}");
    assert!(text.contains("kiln_task_duration_seconds_bucket"), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_the_docs_page_is_served() {
    let app = TestApp::spawn().await;
    let (status, spec) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/api/v1/tasks",
        "/api/v1/tasks/{id}",
        "/api/v1/tasks/{id}/status",
        "/api/v1/tasks/{id}/result",
        "/api/v1/tasks/{id}/events",
        "/api/v1/models",
        "/api/v1/models/{jobId}/status",
        "/api/v1/models/{jobId}/result",
        "/api/v1/catalog",
        "/files/{key}",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} missing from the OpenAPI document");
    }
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
        }
    }
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status().as_u16(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    app.stop().await;
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_appear_in_error_bodies() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/nowhere")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], "abc-123");
    assert_eq!(body["error"]["code"], "not_found");
    let response = app.get("/health").await;
    let made = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(made.len(), 36);
    let response = app.client.put(app.url("/api/v1/tasks")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    app.stop().await;
}

#[tokio::test]
async fn the_catalog_lists_models_with_kinds_and_availability() {
    let app = TestApp::spawn().await;
    let (status, catalog) = app.get_json("/api/v1/catalog").await;
    assert_eq!(status, 200);
    let models = catalog["models"].as_array().unwrap();
    let echo = models.iter().find(|m| m["name"] == "echo").unwrap();
    assert_eq!(echo["kind"], "image_to_3d");
    assert_eq!(echo["available"], true);
    assert_eq!(echo["default"], true);
    assert_eq!(echo["channels"][0]["max_concurrency"], 2);
    app.stop().await;
}
