//! OpenAI's own Python client (`openai`, pinned in tests/python/requirements.txt),
//! unchanged, against kiln's OpenAI-compatible face in front of the fake OpenAI image
//! API: tests/python/openai_client.py generates by URL and as base64 and checks the
//! images.
//!
//! It needs that client's environment, so it is `#[ignore]`d: `cargo nextest run` works
//! without Python. `make openai-client` (part of `make test`) installs tests/python/.venv
//! and runs it with `KILN_TEST_PYTHON` set to its interpreter.

use std::time::Duration;

use crate::{
    common::fakes::{FakeOpenAi, OPENAI_KEY, OpenAiOptions, Route},
    helpers::{ECHO_CHANNEL, TestApp},
    openai::openai_channel,
};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py");

#[tokio::test]
#[ignore = "needs OpenAI's Python client: `make openai-client` (part of `make test`) runs it with KILN_TEST_PYTHON"]
async fn openai_s_python_client_generates_images_through_kiln() {
    let Some(python) = std::env::var_os("KILN_TEST_PYTHON") else {
        panic!(
            "KILN_TEST_PYTHON is not set: it names the Python that has the `openai` package. \
             Run `make openai-client` (which `make test` runs), or: scripts/deps.sh --openai-client && \
             KILN_TEST_PYTHON=tests/python/.venv/bin/python cargo nextest run --test api --run-ignored only openai_python"
        )
    };
    let fake = FakeOpenAi::start(OpenAiOptions::default().latency(Duration::from_millis(20)));
    let app = TestApp::spawn_with(&format!("{}\n{ECHO_CHANNEL}", openai_channel(&fake, OPENAI_KEY, ""))).await;
    let run = tokio::process::Command::new(&python)
        .arg(SCRIPT)
        .env("KILN_BASE_URL", &app.base)
        .env("KILN_MODELS", "dall-e-2,painter")
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the Python client did not finish within 180 s")
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.to_string_lossy()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "openai_client.py failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    // Two models, by URL and as base64: four generations upstream, one each.
    assert_eq!(fake.creates().len(), 4, "{stdout}");
    assert_eq!(fake.count(Route::Create), 4);
    app.stop().await;
}
