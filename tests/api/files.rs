//! Serving stored files, and retention.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, fixture};

#[tokio::test]
async fn files_have_headers_ranges_and_etags() {
    let app = TestApp::spawn().await;
    let (_, url) = app.finished_output().await;
    let expected = fixture("vase.png");

    let full = app.client.get(&url).send().await.unwrap();
    assert_eq!(full.status().as_u16(), 200);
    let headers = full.headers().clone();
    assert_eq!(headers["content-type"], "model/gltf-binary");
    assert_eq!(headers["content-length"], expected.len().to_string().as_str());
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert!(headers["cache-control"].to_str().unwrap().contains("max-age"));
    let etag = headers["etag"].to_str().unwrap().to_owned();

    let part = app.client.get(&url).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(part.headers()["content-range"], format!("bytes 10-19/{}", expected.len()).as_str());
    assert_eq!(part.bytes().await.unwrap().as_ref(), &expected[10..20]);

    let tail = app.client.get(&url).header("range", "bytes=-5").send().await.unwrap();
    assert_eq!(tail.bytes().await.unwrap().as_ref(), &expected[expected.len() - 5..]);

    let outside = app.client.get(&url).header("range", format!("bytes={}-", expected.len() + 10)).send().await.unwrap();
    assert_eq!(outside.status().as_u16(), 416);

    let cached = app.client.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(cached.status().as_u16(), 304);

    let head = app.client.head(&url).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(head.headers()["content-length"], expected.len().to_string().as_str());

    let (status, body) = app.get_json("/files/outputs/../../etc/passwd").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = app.get_json("/files/pictures/nope.png").await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn retention_deletes_old_files_which_then_answer_410() {
    let app = TestApp::spawn().await;
    let (id, url) = app.finished_output().await;
    let key = url.split("/files/").nth(1).unwrap().to_owned();
    assert!(app.dir.path().join("data/files").join(&key).exists());

    let swept = kiln::retention::sweep(&app.gateway, Duration::ZERO).await.unwrap();
    assert_eq!(swept.expired, 2, "the picture and the output");
    assert!(!app.dir.path().join("data/files").join(&key).exists());
    let gone = app.client.get(&url).send().await.unwrap();
    assert_eq!(gone.status().as_u16(), 410);
    let body: Value = gone.json().await.unwrap();
    assert_eq!(body["error"]["code"], "artifact_expired");
    let (_, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(result["expired"], true);
    assert_eq!(result["outputs"][0]["expired"], true);
    app.stop().await;
}
