//! Refusals of bad input: each with its own code and status, and the server keeps going.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, fixture};

async fn refusal(app: &TestApp, name: &str) -> (u16, Value) {
    let response = app.upload("/api/v1/tasks", fixture(name), &[]).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_invalid_fixture_gets_its_specific_error_and_the_server_keeps_serving() {
    let app = TestApp::spawn().await;
    let cases = [
        ("invalid/bomb-50000x50000.png", 400, "image_too_many_pixels"),
        ("invalid/empty.jpg", 400, "empty_file"),
        ("invalid/not-supported.gif", 400, "unsupported_image_format"),
        ("invalid/over-10mb.png", 413, "file_too_large"),
        ("invalid/text-named.png", 400, "unsupported_image_format"),
        ("invalid/truncated.png", 400, "corrupt_image"),
    ];
    for (name, status, code) in cases {
        let (got, body) = refusal(&app, name).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(body["request_id"].is_string());
    }
    // Still serving, and nothing was queued by the refusals.
    let task = app.submit_image(&[]).await;
    assert_eq!(app.wait_terminal(task["id"].as_str().unwrap()).await["status"], "succeeded");
    let (_, page) = app.get_json("/api/v1/tasks").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_large_picture_is_scaled_down_to_the_longest_side_limit() {
    let app = TestApp::spawn().await;
    let response = app.upload("/api/v1/tasks", fixture("large-4096x3072.jpg"), &[]).await;
    assert_eq!(response.status().as_u16(), 202);
    let task: Value = response.json().await.unwrap();
    let picture_url = task["picture"]["url"].as_str().unwrap();
    let bytes = app.client.get(picture_url).send().await.unwrap().bytes().await.unwrap();
    let image = image::load_from_memory(&bytes).unwrap();
    assert_eq!((image.width(), image.height()), (2048, 1536));
    app.stop().await;
}

#[tokio::test]
async fn an_endless_upload_is_refused_with_413_without_reading_it_all() {
    let app = TestApp::spawn().await;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    // 200 MiB offered in 64 KiB chunks, with no Content-Length.
    let chunks = futures::stream::iter(0..3200).map(move |_| {
        counter.fetch_add(65536, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0x89u8; 65536]))
    });
    use futures::StreamExt;
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(chunks)).file_name("big.png");
    let form = reqwest::multipart::Form::new().part("image", part);
    let result =
        tokio::time::timeout(Duration::from_secs(30), app.client.post(app.url("/api/v1/tasks")).multipart(form).send())
            .await
            .expect("answered in time");
    match result {
        Ok(response) => {
            assert_eq!(response.status().as_u16(), 413);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "file_too_large");
        }
        // The server may close the connection while the client is still sending.
        Err(err) => assert!(err.is_request() || err.is_body(), "{err}"),
    }
    let pulled = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(pulled < 100 * 1024 * 1024, "the client was made to send {pulled} bytes");
    app.stop().await;
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused_before_it_is_read() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/api/v1/tasks"))
        .header("content-type", "multipart/form-data; boundary=x")
        .header("content-length", (50u64 * 1024 * 1024).to_string())
        .body(vec![0u8; 1024])
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status().as_u16(), 413);
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_prompts_are_refused_with_their_codes() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({ "prompt": "" }), "prompt_empty"),
        (json!({ "prompt": "   " }), "prompt_empty"),
        (json!({ "prompt": "x".repeat(1025) }), "prompt_too_long"),
        (json!({ "prompt": "a\u{0007}b" }), "prompt_invalid_characters"),
        (json!({}), "missing_input"),
    ];
    for (body, code) in cases {
        let response = app.submit_prompt(body.clone()).await;
        assert_eq!(response.status().as_u16(), 400, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{body}");
    }
    let response = app
        .client
        .post(app.url("/api/v1/tasks"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "malformed_json");
    let response =
        app.client.post(app.url("/api/v1/tasks")).header("content-type", "text/plain").body("hi").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 415);
    app.stop().await;
}

/// A 16-bit RGBA PNG written a row at a time, so the test never holds its 8 bytes a pixel.
fn png16(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Sixteen);
    let mut writer = encoder.write_header().unwrap();
    let mut stream = writer.stream_writer().unwrap();
    let mut row = vec![0u8; width as usize * 8];
    for y in 0..height {
        for (x, px) in row.chunks_exact_mut(8).enumerate() {
            let (r, g) = ((x as u32 * 65535 / width) as u16, (y * 65535 / height) as u16);
            px[..2].copy_from_slice(&r.to_be_bytes());
            px[2..4].copy_from_slice(&g.to_be_bytes());
            px[4..].copy_from_slice(&[128, 0, 255, 255]);
        }
        std::io::Write::write_all(&mut stream, &row).unwrap();
    }
    stream.finish().unwrap();
    drop(writer);
    out
}

fn jpeg(side: u32, progressive: bool) -> Vec<u8> {
    let pixels: Vec<u8> = (0..side * side).flat_map(|i| [(i % side) as u8, (i / side) as u8, 90]).collect();
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, 80);
    encoder.set_progressive(progressive);
    encoder.encode(&pixels, side as u16, side as u16, jpeg_encoder::ColorType::Rgb).unwrap();
    out
}

#[tokio::test]
async fn the_costliest_pictures_are_stored_small_or_refused_before_decoding_and_cut_ones_are_corrupt() {
    let app = TestApp::spawn().await;
    let answer = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap_or(Value::Null))
    };

    // Issue 9's picture: 288 MB of samples in a few hundred KB. Decoded a row at a
    // time, stored at 2048 px and 8 bits.
    let (status, picture) = answer(app.upload("/api/v1/pictures", png16(6000, 6000), &[]).await).await;
    assert_eq!(status, 201, "{picture}");
    assert_eq!((picture["width"].as_u64(), picture["height"].as_u64()), (Some(2048), Some(2048)));
    assert_eq!(picture["format"], "png");
    let stored = app.client.get(picture["url"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
    let stored = image::load_from_memory(&stored).unwrap();
    assert_eq!(stored.color(), image::ColorType::Rgba8);
    let thumbnail = app.client.get(picture["links"]["thumbnail"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(thumbnail.status().as_u16(), 200);

    // A progressive JPEG keeps its whole picture's coefficients: refused from its header.
    let (status, body) = answer(app.upload("/api/v1/tasks", jpeg(4000, true), &[]).await).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "image_too_many_pixels");
    let message = body["error"]["message"].as_str().unwrap();
    for words in ["4000×4000", "progressive JPEG", "MB", "limit"] {
        assert!(message.contains(words), "{words}: {message}");
    }
    // The same picture as baseline is accepted.
    let baseline = jpeg(4000, false);
    let (status, body) = answer(app.upload("/api/v1/pictures", baseline.clone(), &[]).await).await;
    assert_eq!(status, 201, "{body}");

    // A big lossless WebP is decoded whole: refused from its header too.
    let flat = image::RgbImage::from_pixel(5000, 5000, image::Rgb([10, 200, 30]));
    let mut webp = Vec::new();
    flat.write_to(&mut std::io::Cursor::new(&mut webp), image::ImageFormat::WebP).unwrap();
    let (status, body) = answer(app.upload("/api/v1/tasks", webp, &[]).await).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "image_too_many_pixels");
    assert!(body["error"]["message"].as_str().unwrap().contains("lossless WebP"), "{body}");

    // Cut short: a JPEG claiming 6000 × 6000 in 4 KB, plain and closed with an
    // end-of-image marker (which the decoder alone would fill with grey); and the
    // accepted baseline JPEG cut at half its length and closed.
    let full = jpeg(6000, true);
    let closed = |bytes: &[u8], keep: usize| [&bytes[..keep], &[0xFF, 0xD9]].concat();
    for bytes in [full[..4096].to_vec(), closed(&full, 4094), closed(&baseline, baseline.len() / 2)] {
        let (status, body) = answer(app.upload("/api/v1/tasks", bytes, &[]).await).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("corrupt_image")), "{body}");
    }
    // WebPs whose RIFF length is too large or too small.
    let toy = fixture("toy.webp");
    let riff = u32::from_le_bytes([toy[4], toy[5], toy[6], toy[7]]);
    for wrong in [riff + 2, riff - 2] {
        let mut bytes = toy.clone();
        bytes[4..8].copy_from_slice(&wrong.to_le_bytes());
        let (status, body) = answer(app.upload("/api/v1/tasks", bytes, &[]).await).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("corrupt_image")), "{body}");
    }

    let (_, limits) = app.get_json("/api/v1/limits").await;
    assert_eq!(limits["upload"]["max_decode_memory"], 160 * 1024 * 1024);
    let (_, page) = app.get_json("/api/v1/pictures").await;
    assert_eq!(page["total"], 2, "only the two accepted pictures were stored");
    app.stop().await;
}
