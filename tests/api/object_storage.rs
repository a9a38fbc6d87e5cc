//! Object storage end to end: the real kiln on a real S3 server (`s3s-fs`, a separate
//! process that checks SigV4; tests/common/s3.rs) and on a fake Tencent COS that
//! enforces virtual-host addressing, SigV4 with a session token, private objects and
//! COS's forced downloads (tests/common/fakes/cos.rs).
//!
//! Without an S3 server these tests fail under `make test` (which names it) and are
//! skipped, with the reason printed, by a plain `cargo nextest run`.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    common::{
        KilnProcess,
        fakes::{COS_BUCKET, COS_REGION, COS_SECRET_ID, COS_SECRET_KEY, COS_TOKEN, CosOptions, FakeCos},
        s3::{S3_SECRET_KEY, S3Server},
    },
    helpers::{ECHO_CHANNEL, TestApp, config_toml, fixture},
};

const BIG: u64 = 20 * 1024 * 1024;

/// Tasks settings for the large uploads: a lease long enough that a busy machine does
/// not make another dispatcher take the task over mid-upload (which the tests would
/// survive, but then count two uploads).
const LONG_LEASE: &str = "lease = \"30s\"\npoll_interval = \"200ms\"";

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A client that does not follow redirects and sends no credentials of any kind.
fn plain_client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

/// Submits a picture to the echo channel with `params`, waits for the end, and returns
/// the task id and its result.
async fn finished(app: &TestApp, params: &str) -> (String, Value) {
    let task = app.submit_image(&[("params", params)]).await;
    let id = task["id"].as_str().expect("id").to_owned();
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (status, result) = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(status, 200, "{result}");
    (id, result)
}

#[tokio::test]
async fn pictures_and_outputs_land_in_the_bucket_and_are_handed_out_as_presigned_urls() {
    let Some(s3) = S3Server::start() else { return };
    let app = TestApp::spawn_with(&format!("{}{ECHO_CHANNEL}", s3.storage_toml("root = \"kiln/\""))).await;
    let (id, result) = finished(&app, "{}").await;

    let keys = s3.keys();
    let model_key = format!("kiln/reconstruction/{id}/model.glb");
    assert!(keys.contains(&model_key), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("kiln/pictures/") && k.ends_with(".png")), "{keys:?}");

    let output = &result["outputs"][0];
    let url = output["url"].as_str().expect("url");
    assert!(url.starts_with(&format!("{}/kiln-test/{model_key}?", s3.endpoint)), "{url}");
    assert!(url.contains("X-Amz-Signature=") && url.contains("X-Amz-Expires=3600"), "{url}");
    let client = plain_client();
    let response = client.get(url).send().await.expect("GET");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "model/gltf-binary");
    let bytes = response.bytes().await.expect("body");
    assert_eq!(sha256(&bytes), output["sha256"].as_str().expect("sha256"));

    // Objects are private: the bare object, or one with a signature altered, is refused.
    let bare = url.split('?').next().expect("path");
    let anonymous = client.get(bare).send().await.expect("GET").status().as_u16();
    assert!(matches!(anonymous, 400 | 403), "an anonymous GET answered {anonymous}");
    let at = url.find("X-Amz-Signature=").expect("a signature") + "X-Amz-Signature=".len();
    let flipped = if &url[at..at + 1] == "0" { "1" } else { "0" };
    let altered = format!("{}{flipped}{}", &url[..at], &url[at + 1..]);
    assert_eq!(client.get(&altered).send().await.expect("GET").status(), 403);

    // The task's picture and the live events carry presigned URLs too.
    let (_, task) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    let picture = task["picture"]["url"].as_str().expect("picture url");
    assert!(picture.starts_with(&format!("{}/kiln-test/kiln/pictures/", s3.endpoint)), "{picture}");
    let response = client.get(picture).send().await.expect("GET");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("body").as_ref(), fixture("vase.png").as_slice());
    let events = app.events(&id, None, 100).await;
    let result_event = events.iter().find(|(_, name, _)| name == "result").expect("a result event");
    let event_url = result_event.2["url"].as_str().expect("event url");
    assert!(event_url.starts_with(&format!("{}/kiln-test/{model_key}?", s3.endpoint)), "{event_url}");
    assert_eq!(client.get(event_url).send().await.expect("GET").status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn kiln_s_own_file_urls_redirect_to_a_fresh_presigned_url_that_expires() {
    let Some(s3) = S3Server::start() else { return };
    let app = TestApp::spawn_with(&format!("{}{ECHO_CHANNEL}", s3.storage_toml("presign_ttl = \"2s\""))).await;
    let (id, result) = finished(&app, "{}").await;
    let sha = result["outputs"][0]["sha256"].as_str().expect("sha").to_owned();
    let own = app.url(&format!("/files/reconstruction/{id}/model.glb"));
    let client = plain_client();

    let response = client.get(&own).send().await.expect("GET");
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let location = response.headers()["location"].to_str().expect("location").to_owned();
    assert!(location.starts_with(&format!("{}/kiln-test/reconstruction/{id}/model.glb?", s3.endpoint)));
    assert!(location.contains("X-Amz-Expires=2"), "{location}");
    assert_eq!(client.head(&own).send().await.expect("HEAD").status(), 302);
    let fetched = client.get(&location).send().await.expect("GET");
    assert_eq!(fetched.status(), 200);
    assert_eq!(sha256(&fetched.bytes().await.expect("body")), sha);

    // The S3 server holds the presigned URL to its expiry; kiln's URL gives a new one.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(client.get(&location).send().await.expect("GET").status(), 403, "an expired presigned URL");
    let again = client.get(&own).send().await.expect("GET");
    let fresh = again.headers()["location"].to_str().expect("location").to_owned();
    assert_eq!(client.get(&fresh).send().await.expect("GET").status(), 200);

    // Only recorded keys are redirected.
    assert_eq!(client.get(app.url("/files/reconstruction/nope/model.glb")).send().await.expect("GET").status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn proxied_files_stream_from_the_bucket_with_range_and_etag_under_kiln_s_own_signature() {
    let Some(s3) = S3Server::start() else { return };
    let extra = format!("{}\n[files]\naccess = \"signed\"\n{ECHO_CHANNEL}", s3.storage_toml("serve = \"proxy\""));
    let app = TestApp::spawn_with(&extra).await;
    let (id, result) = finished(&app, "{}").await;
    let output = &result["outputs"][0];
    let url = output["url"].as_str().expect("url");
    assert!(url.starts_with(&app.url(&format!("/files/reconstruction/{id}/model.glb?"))), "kiln's own: {url}");
    assert!(url.contains("sig="), "signed by kiln: {url}");
    let sha = output["sha256"].as_str().expect("sha");
    let size = output["size"].as_u64().expect("size");

    let client = plain_client();
    let whole = client.get(url).send().await.expect("GET");
    assert_eq!(whole.status(), 200);
    let etag = whole.headers()["etag"].to_str().expect("etag").to_owned();
    assert_eq!(etag, format!("\"{sha}\""));
    let bytes = whole.bytes().await.expect("body");
    assert_eq!(sha256(&bytes), sha);

    let part = client.get(url).header("Range", "bytes=10-19").send().await.expect("GET");
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], format!("bytes 10-19/{size}").as_str());
    assert_eq!(part.bytes().await.expect("body").as_ref(), &bytes[10..20]);
    let unchanged = client.get(url).header("If-None-Match", &etag).send().await.expect("GET");
    assert_eq!(unchanged.status(), 304);

    let unsigned = client.get(app.url(&format!("/files/reconstruction/{id}/model.glb"))).send().await.expect("GET");
    assert_eq!(unsigned.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn a_large_output_goes_up_in_parts_and_comes_back_whole() {
    let Some(s3) = S3Server::start() else { return };
    let app = TestApp::spawn_configured(LONG_LEASE, &format!("{}{ECHO_CHANNEL}", s3.storage_toml(""))).await;
    let (id, result) = finished(&app, &format!("{{\"output_bytes\": {BIG}}}")).await;
    let output = &result["outputs"][0];
    assert_eq!(output["size"].as_u64(), Some(BIG));
    let key = format!("reconstruction/{id}/model.glb");
    let (size, etag) = app.gateway.storage().stat(&key).await.expect("stat");
    assert_eq!(size, BIG);
    // S3's ETag of a multipart upload is the parts' digest and their count: 8 + 8 + 4 MiB.
    let etag = etag.expect("an ETag");
    assert!(etag.trim_matches('"').ends_with("-3"), "not a three-part upload: {etag}");
    assert_eq!(s3.open_parts(), Vec::<String>::new(), "no parts left behind");

    let response = plain_client().get(output["url"].as_str().expect("url")).send().await.expect("GET");
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.expect("body");
    assert_eq!(bytes.len() as u64, BIG);
    assert_eq!(sha256(&bytes), output["sha256"].as_str().expect("sha"));
    app.stop().await;
}

#[tokio::test]
async fn retention_deletes_the_objects_from_the_bucket() {
    let Some(s3) = S3Server::start() else { return };
    let app = TestApp::spawn_with(&format!("{}{ECHO_CHANNEL}", s3.storage_toml(""))).await;
    let (id, result) = finished(&app, "{}").await;
    let url = result["outputs"][0]["url"].as_str().expect("url").to_owned();
    assert_eq!(s3.keys().len(), 2, "the picture and the model: {:?}", s3.keys());

    let swept = kiln::retention::sweep(&app.gateway, Duration::ZERO).await.expect("sweep");
    assert_eq!((swept.expired, swept.deleted), (2, 2), "{swept:?}");
    assert!(s3.keys().is_empty(), "{:?}", s3.keys());
    let client = plain_client();
    assert_eq!(client.get(&url).send().await.expect("GET").status(), 404, "gone from the bucket");
    let own = client.get(app.url(&format!("/files/reconstruction/{id}/model.glb"))).send().await.expect("GET");
    assert_eq!(own.status(), 410, "kiln says it expired");
    app.stop().await;
}

#[tokio::test]
async fn a_refused_upload_leaves_no_record_and_no_object() {
    let Some(s3) = S3Server::start() else { return };
    let storage = s3.storage_toml("").replace(S3_SECRET_KEY, "not-the-secret");
    let app = TestApp::spawn_with(&format!("{storage}{ECHO_CHANNEL}")).await;
    let response = app.upload("/api/v1/pictures", fixture("vase.png"), &[]).await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "internal_error", "{body}");
    let (_, pictures) = app.get_json("/api/v1/pictures").await;
    assert_eq!(pictures["total"], 0, "{pictures}");
    assert!(s3.keys().is_empty());
    let (status, ready) = app.get_json("/ready").await;
    assert_eq!(status, 503, "{ready}");
    app.stop().await;
}

#[tokio::test]
async fn the_bucket_s_secret_is_never_in_an_answer_nor_in_the_log() {
    let Some(s3) = S3Server::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // The real binary with its embedded relief channel, logging the storage crates at
    // trace and everything else at debug.
    let config = config_toml(dir.path(), &s3.storage_toml("")).replace(
        "level = \"warn\"",
        "level = \"debug,opendal=trace,opendal_service_s3=trace,reqsign=trace,reqsign_core=trace,reqsign_aws_v4=trace\"",
    );
    let path = dir.path().join("kiln.toml");
    std::fs::write(&path, &config).expect("config");
    let log = dir.path().join("kiln.log");
    let kiln = KilnProcess::start(&path, &log);
    let client = plain_client();
    let url = |p: &str| format!("{}{p}", kiln.base);
    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(fixture("mug.jpg")).file_name("mug.jpg"));
    let response = client.post(url("/api/v1/tasks")).multipart(form).send().await.expect("POST");
    assert_eq!(response.status(), 202);
    let task: Value = response.json().await.expect("task");
    let id = task["id"].as_str().expect("id").to_owned();
    let mut answers = String::new();
    for _ in 0..400 {
        let text =
            client.get(url(&format!("/api/v1/tasks/{id}"))).send().await.expect("GET").text().await.expect("text");
        if text.contains("\"succeeded\"") || text.contains("\"failed\"") {
            answers.push_str(&text);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answers.contains("\"succeeded\""), "{answers}");
    let result = client.get(url(&format!("/api/v1/tasks/{id}/result"))).send().await.expect("GET");
    let result = result.text().await.expect("text");
    let output: Value = serde_json::from_str(&result).expect("json");
    let fetched = client.get(output["outputs"][0]["url"].as_str().expect("url")).send().await.expect("GET");
    assert_eq!(fetched.status(), 200);
    answers.push_str(&result);
    for path in ["/ready", "/api/v1/pictures", "/api/v1/tasks?limit=100"] {
        answers.push_str(&client.get(url(path)).send().await.expect("GET").text().await.expect("text"));
    }
    drop(kiln);
    let checked = std::process::Command::new(crate::common::KILN)
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .expect("kiln config check");
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert!(printed.contains("secret_access_key = \"********\""), "{printed}");
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(logged.contains("opendal"), "the storage crates logged: {}", crate::common::log_tail(&log, 20));
    for (what, text) in [("an answer", &answers), ("the log", &logged), ("config check", &printed.to_string())] {
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(S3_SECRET_KEY)).take(3).collect();
        assert!(lines.is_empty(), "the secret key is in {what}: {lines:#?}");
    }
}

/// `[storage]` for the fake COS, with `extra` lines.
fn cos_storage(cos: &FakeCos, extra: &str) -> String {
    format!(
        "[storage]\ntype = \"cos\"\nbucket = \"{COS_BUCKET}\"\nregion = \"{COS_REGION}\"\nendpoint = \"{}\"\n\
         access_key_id = \"{COS_SECRET_ID}\"\nsecret_access_key = \"{COS_SECRET_KEY}\"\nsession_token = \"{COS_TOKEN}\"\n\
         {extra}\n",
        cos.endpoint()
    )
}

#[tokio::test]
async fn a_cos_bucket_is_reached_by_virtual_host_with_sigv4_and_its_presigned_urls_work() {
    let cos = FakeCos::start(CosOptions::default());
    let app = TestApp::spawn_with_storage_client(
        crate::helpers::TASKS,
        &format!("{}{ECHO_CHANNEL}", cos_storage(&cos, "")),
        cos.client(),
    )
    .await;
    let (id, result) = finished(&app, "{}").await;
    let key = format!("reconstruction/{id}/model.glb");
    let keys = cos.keys();
    assert!(keys.contains(&key), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("pictures/")), "{keys:?}");
    let stored = cos.object(&key).expect("object");
    assert_eq!(stored.content_type.as_deref(), Some("model/gltf-binary"));
    // Every request kiln made went to the bucket's virtual host, signed, and passed.
    let requests = cos.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert_eq!(request.host, cos.bucket_host(), "{request:?}");
        assert!(request.header_signed && request.status < 300, "{request:?}");
    }

    let url = result["outputs"][0]["url"].as_str().expect("url");
    assert!(url.starts_with(&format!("http://{}/{key}?", cos.bucket_host())), "{url}");
    assert!(url.contains("X-Amz-Security-Token="), "{url}");
    let client = cos.client();
    let response = client.get(url).send().await.expect("GET");
    assert_eq!(response.status(), 200);
    // COS's default domain makes browsers download, never show (docs/storage.md).
    assert_eq!(response.headers()["content-disposition"], "attachment");
    assert_eq!(response.headers()["x-cos-force-download"], "true");
    assert_eq!(response.bytes().await.expect("body").as_ref(), stored.bytes.as_slice());

    // Private, virtual-host only.
    let bare = url.split('?').next().expect("path");
    assert_eq!(client.get(bare).send().await.expect("GET").status(), 403);
    let query = url.split('?').nth(1).expect("query");
    let path_style = format!("{}/{COS_BUCKET}/{key}?{query}", cos.endpoint());
    let refused = client.get(&path_style).send().await.expect("GET");
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.expect("text").contains("PathStyleDomainForbidden"));

    // An S3 configuration of the same bucket in path style does not get through.
    let dir = tempfile::tempdir().expect("tempdir");
    let path_config = crate::helpers::load_config_full(
        dir.path(),
        "",
        "",
        &cos_storage(&cos, "").replace("type = \"cos\"", "type = \"s3\""),
    );
    let path_storage = kiln::storage::Storage::from_config_with_client(&path_config, cos.client()).expect("storage");
    assert!(path_storage.check_writable().await.is_err(), "path style must be refused");
    app.stop().await;
}

#[tokio::test]
async fn through_kiln_a_cos_object_is_shown_inline_and_a_large_one_goes_up_in_parts() {
    let cos = FakeCos::start(CosOptions::default());
    let extra = format!("{}{ECHO_CHANNEL}", cos_storage(&cos, "serve = \"proxy\""));
    let app = TestApp::spawn_with_storage_client(LONG_LEASE, &extra, cos.client()).await;
    let (id, result) = finished(&app, &format!("{{\"output_bytes\": {BIG}}}")).await;
    assert_eq!(cos.completed_multipart(), 1);
    let stored = cos.object(&format!("reconstruction/{id}/model.glb")).expect("object");
    assert_eq!(stored.bytes.len() as u64, BIG);
    assert!(stored.etag.trim_matches('"').ends_with("-3"), "{}", stored.etag);

    let url = result["outputs"][0]["url"].as_str().expect("url");
    assert!(url.starts_with(&app.base), "kiln's own URL: {url}");
    let client = plain_client();
    let response = client.get(url).send().await.expect("GET");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-disposition").is_none(), "kiln serves it inline");
    assert_eq!(response.headers()["content-type"], "model/gltf-binary");
    assert_eq!(response.bytes().await.expect("body").len() as u64, BIG);
    let tail = client.get(url).header("Range", format!("bytes={}-", BIG - 5)).send().await.expect("GET");
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.expect("body").as_ref(), &stored.bytes[stored.bytes.len() - 5..]);
    app.stop().await;
}

#[tokio::test]
async fn a_bucket_that_answers_slow_down_for_a_moment_is_retried_and_nothing_fails() {
    let cos = FakeCos::start(CosOptions { slow_down_first: 3, ..CosOptions::default() });
    let app = TestApp::spawn_with_storage_client(
        LONG_LEASE,
        &format!("{}{ECHO_CHANNEL}", cos_storage(&cos, "")),
        cos.client(),
    )
    .await;
    let (id, _) = finished(&app, "{}").await;
    assert_eq!(cos.slowed_down(), 3);
    let stored = cos.object(&format!("reconstruction/{id}/model.glb")).expect("the output is in the bucket");
    assert!(!stored.bytes.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_failed_part_is_aborted_and_no_record_points_at_the_output() {
    let cos = FakeCos::start(CosOptions { fail_part: Some(2), ..CosOptions::default() });
    let app = TestApp::spawn_with_storage_client(
        LONG_LEASE,
        &format!("{}{ECHO_CHANNEL}", cos_storage(&cos, "")),
        cos.client(),
    )
    .await;
    let task = app.submit_image(&[("params", &format!("{{\"output_bytes\": {BIG}}}"))]).await;
    let id = task["id"].as_str().expect("id").to_owned();
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    // A 500 is worth retrying, but not forever: the part went up once and three more
    // times before the upload was given up.
    let part_two = cos
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "PUT"
                && url::form_urlencoded::parse(r.query.as_bytes()).any(|(k, v)| k == "partNumber" && v == "2")
        })
        .count();
    assert_eq!(part_two, 4, "{:?}", cos.requests());
    assert_eq!(cos.aborted(), 1, "the upload was aborted");
    assert_eq!(cos.open_uploads(), 0);
    assert!(!cos.keys().iter().any(|k| k.starts_with("reconstruction/")), "{:?}", cos.keys());
    let task_id: kiln::tasks::TaskId = id.parse().expect("task id");
    assert!(app.gateway.db().list_artifacts(task_id).await.expect("artifacts").is_empty());
    app.stop().await;
}

#[test]
fn a_cos_bucket_is_configured_from_the_environment_and_checked_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kiln.toml");
    std::fs::write(&path, config_toml(dir.path(), "")).expect("config");
    let check = |env: &[(&str, &str)]| {
        std::process::Command::new(crate::common::KILN)
            .args(["config", "check", "--config"])
            .arg(&path)
            .env_remove("KILN_CONFIG")
            .envs(env.iter().copied())
            .output()
            .expect("kiln config check")
    };
    let env = [
        ("KILN_STORAGE__TYPE", "cos"),
        ("KILN_STORAGE__BUCKET", COS_BUCKET),
        ("KILN_STORAGE__REGION", COS_REGION),
        ("KILN_STORAGE__ACCESS_KEY_ID", COS_SECRET_ID),
        ("KILN_STORAGE__SECRET_ACCESS_KEY", COS_SECRET_KEY),
        ("KILN_STORAGE__SESSION_TOKEN", COS_TOKEN),
        ("KILN_STORAGE__PRESIGN_TTL", "10m"),
    ];
    let good = check(&env);
    let printed = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    for line in ["type = \"cos\"", &format!("bucket = \"{COS_BUCKET}\""), "presign_ttl = \"10m\""] {
        assert!(printed.contains(line), "{line} in {printed}");
    }
    assert!(!printed.contains(COS_SECRET_KEY) && !printed.contains(COS_TOKEN), "{printed}");

    let mut bad = env;
    bad[1] = ("KILN_STORAGE__BUCKET", "examplebucket");
    let refused = check(&bad);
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("storage.bucket") && said.contains("name-APPID"), "{said}");
    assert!(!said.contains(COS_SECRET_KEY), "{said}");
}
