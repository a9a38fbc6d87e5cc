//! The HTTP server's limits, over raw sockets: clients that send nothing, stall in their
//! headers or in their body, keep idle connections, or come in a crowd past the cap; the
//! protocol limits; and a shutdown with uploads in flight.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::TestApp;

/// Short timeouts, so the tests wait seconds rather than the defaults' minute.
const QUICK: &str = r#"
header_timeout = "1s"
idle_timeout = "2s"
body_timeout = "1s"
"#;

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.base.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("connect")
}

/// Reads until the server closes the connection (or `limit` passes); the bytes read and
/// how long it took.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, started.elapsed()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
        }
    }
}

/// Splits a raw HTTP/1.1 answer into its status, lower-cased head and JSON body.
fn parse(raw: &[u8]) -> (u16, String, Value) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    (status, head.to_ascii_lowercase(), body)
}

fn assert_envelope(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with_server(QUICK).await;
    let mut stream = connect(&app).await;
    let (bytes, took) = read_to_close(&mut stream, Duration::from_secs(10)).await;
    assert!(bytes.is_empty(), "nothing is said to a client that said nothing");
    assert!(took >= Duration::from_millis(900), "closed early: {took:?}");
    app.stop().await;
}

#[tokio::test]
async fn headers_that_stall_get_408_in_the_envelope_and_the_connection_closes() {
    let app = TestApp::spawn_with_server(QUICK).await;
    let mut stream = connect(&app).await;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: kiln\r\nX-Slow: ").await.expect("write");
    let (raw, took) = read_to_close(&mut stream, Duration::from_secs(10)).await;
    let (status, head, body) = parse(&raw);
    assert_eq!(status, 408);
    assert!(head.contains("connection: close"), "{head}");
    assert_envelope(&body, "request_timeout");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{took:?}");
    app.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_header_timeout_and_closes_at_the_idle_one() {
    let app = TestApp::spawn_with_server(QUICK).await;
    let mut stream = connect(&app).await;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: kiln\r\n\r\n").await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.expect("answer");
    assert_eq!(parse(&buf[..n]).0, 200);
    let (rest, took) = read_to_close(&mut stream, Duration::from_secs(10)).await;
    assert!(rest.is_empty());
    assert!(took >= Duration::from_millis(1900), "closed by the header timeout instead: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    app.stop().await;
}

fn upload_head(length: usize) -> String {
    format!(
        "POST /api/v1/pictures HTTP/1.1\r\nHost: kiln\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_and_one_that_keeps_coming_slowly_is_read() {
    let app = TestApp::spawn_with_server(QUICK).await;

    let mut stalled = connect(&app).await;
    stalled.write_all(upload_head(100_000).as_bytes()).await.expect("head");
    stalled
        .write_all(b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n")
        .await
        .expect("part");
    let (raw, took) = read_to_close(&mut stalled, Duration::from_secs(10)).await;
    let (status, head, body) = parse(&raw);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&raw));
    assert!(head.contains("connection: close"));
    assert_envelope(&body, "request_timeout");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // The same picture, a slice every 400 ms: slower in all than the timeout, never
    // silent for as long.
    let picture = crate::helpers::fixture("vase.png");
    let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"v.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    body.extend_from_slice(&picture);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let mut slow = connect(&app).await;
    slow.write_all(upload_head(body.len()).as_bytes()).await.expect("head");
    let slice = body.len().div_ceil(6);
    for piece in body.chunks(slice) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        slow.write_all(piece).await.expect("piece");
    }
    let mut raw = vec![0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut raw)).await.expect("answer").expect("read");
    let (status, _, body) = parse(&raw[..n]);
    assert_eq!(status, 201, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn past_the_connection_cap_a_client_gets_503_and_a_freed_place_is_taken_again() {
    let app = TestApp::spawn_with_server("max_connections = 3\nheader_timeout = \"10s\"").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&app).await);
    }
    // Let the server take all three before the fourth arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = connect(&app).await;
    let (raw, _) = read_to_close(&mut extra, Duration::from_secs(5)).await;
    let (status, head, body) = parse(&raw);
    assert_eq!(status, 503);
    assert!(head.contains("retry-after: 1"), "{head}");
    assert_envelope(&body, "too_many_connections");
    let metrics = app.gateway.metrics().render(&[], &[], &[]);
    assert!(metrics.contains("kiln_http_connections_refused_total 1"), "{metrics}");

    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect(&app).await;
    again.write_all(b"GET /health HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n").await.expect("write");
    let (raw, _) = read_to_close(&mut again, Duration::from_secs(5)).await;
    assert_eq!(parse(&raw).0, 200);
    app.stop().await;
}

#[tokio::test]
async fn heads_over_kilns_limits_get_414_and_431_in_the_envelope() {
    let app = TestApp::spawn().await;
    let long = format!("/api/v1/tasks?cursor={}", "a".repeat(9000));
    let response = app.get(&long).await;
    assert_eq!(response.status().as_u16(), 414);
    assert_envelope(&response.json().await.expect("json"), "uri_too_long");

    let mut request = app.client.get(app.url("/health"));
    for i in 0..70 {
        request = request.header(format!("x-filler-{i}"), "1");
    }
    let response = request.send().await.expect("send");
    assert_eq!(response.status().as_u16(), 431);
    assert_envelope(&response.json().await.expect("json"), "headers_too_large");

    let response = app.client.get(app.url("/health")).header("x-big", "b".repeat(40_000)).send().await.expect("send");
    assert_eq!(response.status().as_u16(), 431);
    app.stop().await;
}

#[tokio::test]
async fn plain_text_rejections_are_answered_in_the_envelope() {
    let app = TestApp::spawn().await;
    let task = app.submit_image(&[]).await;
    let id = task["id"].as_str().expect("id");
    let response = app.get(&format!("/api/v1/tasks/{id}/events?after=abc")).await;
    assert_eq!(response.status().as_u16(), 400);
    let request_id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body: Value = response.json().await.expect("json");
    assert_envelope(&body, "invalid_request");
    assert_eq!(body["request_id"].as_str(), request_id.as_deref(), "the body's id is the header's");
    app.stop().await;
}

#[tokio::test]
async fn thousands_of_idle_and_stalled_connections_leave_health_answering_and_are_closed_in_time() {
    let app = TestApp::spawn_with_server("header_timeout = \"2s\"\nidle_timeout = \"3s\"").await;
    let mut crowd = Vec::with_capacity(2000);
    for i in 0..2000 {
        let mut stream = connect(&app).await;
        // Half send nothing, half stall inside their headers.
        if i % 2 == 1 {
            stream.write_all(b"GET /health HTTP/1.1\r\nHost: kiln\r\n").await.expect("write");
        }
        crowd.push(stream);
    }
    let started = Instant::now();
    let response = app.get("/health").await;
    assert_eq!(response.status().as_u16(), 200);
    // Answered at once, not after the crowd's timeouts (the latency itself is measured
    // in benches/core.rs, not asserted here).
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());

    let closes = crowd
        .into_iter()
        .map(|mut stream| tokio::spawn(async move { read_to_close(&mut stream, Duration::from_secs(20)).await.1 }));
    let mut latest = Duration::ZERO;
    for close in closes {
        latest = latest.max(close.await.expect("join"));
    }
    assert!(latest < Duration::from_secs(8), "the last one closed after {latest:?}");
    let response = app.get("/health").await;
    assert_eq!(response.status().as_u16(), 200);
    app.stop().await;
}

#[tokio::test]
async fn shutdown_answers_a_stalled_upload_with_503_closes_idle_connections_and_does_not_wait_for_them() {
    let app = TestApp::spawn_with_server("body_timeout = \"30s\"\nidle_timeout = \"30s\"").await;
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: kiln\r\n\r\n").await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.expect("answer");
    assert_eq!(parse(&buf[..n]).0, 200);

    let mut upload = connect(&app).await;
    upload.write_all(upload_head(1_000_000).as_bytes()).await.expect("head");
    upload
        .write_all(b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n")
        .await
        .expect("part");
    upload.write_all(&[0x89, b'P', b'N', b'G']).await.expect("some bytes");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let began = Instant::now();
    app.shutdown.cancel();
    let (rest, _) = read_to_close(&mut idle, Duration::from_secs(3)).await;
    assert!(rest.is_empty(), "an idle connection is closed, not answered");
    let (raw, _) = read_to_close(&mut upload, Duration::from_secs(4)).await;
    let (status, head, body) = parse(&raw);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&raw));
    assert!(head.contains("retry-after: 5"), "{head}");
    assert_envelope(&body, "shutting_down");
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.server).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    assert!(began.elapsed() < Duration::from_secs(4), "shutdown waited {:?} (grace 5 s)", began.elapsed());
}

#[tokio::test]
async fn an_upload_still_arriving_at_shutdown_finishes_within_the_grace_period() {
    let app = TestApp::spawn().await;
    let picture = crate::helpers::fixture("vase.png");
    let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"v.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    body.extend_from_slice(&picture);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let mut upload = connect(&app).await;
    upload.write_all(upload_head(body.len()).as_bytes()).await.expect("head");
    let slices: Vec<&[u8]> = body.chunks(body.len().div_ceil(8)).collect();
    upload.write_all(slices[0]).await.expect("first slice");
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.shutdown.cancel();
    for slice in &slices[1..] {
        tokio::time::sleep(Duration::from_millis(200)).await;
        upload.write_all(slice).await.expect("slice");
    }
    let (raw, _) = read_to_close(&mut upload, Duration::from_secs(6)).await;
    let (status, _, body) = parse(&raw);
    assert_eq!(status, 201, "a steady upload is read to its end during the grace period: {body}");
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.server).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}
