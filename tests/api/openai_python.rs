//! OpenAI's own Python client (`openai`, pinned in tests/python/requirements.txt),
//! unchanged, against kiln's OpenAI-compatible face in front of the fake OpenAI image
//! API and the fake ModelScope (asynchronous upstream, polled by kiln while the client
//! waits): tests/python/openai_client.py generates by URL and as base64 with each and
//! checks the images.
//!
//! The Python is `KILN_TEST_PYTHON` (which the Makefile sets), else the interpreter of
//! tests/python/.venv, which `make test` installs first (`scripts/deps.sh --test`). Like
//! the worker's and the glTF validator's tests, it fails saying what to install when
//! neither is there, rather than passing without having run.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    common::fakes::{FakeModelScope, FakeOpenAi, ModelScopeOptions, OPENAI_KEY, OpenAiOptions, Route},
    helpers::{ECHO_CHANNEL, TestApp},
    openai::{modelscope_channel, openai_channel},
};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py");

/// The Python that has OpenAI's client.
fn python() -> PathBuf {
    let python = match std::env::var_os("KILN_TEST_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/.venv/bin/python"),
    };
    assert!(
        python.exists(),
        "no Python with OpenAI's client ({} is missing): run `make test`, or `scripts/deps.sh --openai-client`; \
         KILN_TEST_PYTHON names another interpreter that has the `openai` package",
        python.display()
    );
    python
}

#[tokio::test]
async fn openai_s_python_client_generates_images_through_kiln() {
    let python = python();
    let fake = FakeOpenAi::start(OpenAiOptions::default().latency(Duration::from_millis(20)));
    let modelscope = FakeModelScope::start(
        ModelScopeOptions::default().timeline(Duration::from_millis(60), Duration::from_millis(120)),
    );
    let app = TestApp::spawn_with(&format!(
        "{}\n{}\n{ECHO_CHANNEL}",
        openai_channel(&fake, OPENAI_KEY, ""),
        modelscope_channel(&modelscope)
    ))
    .await;
    let run = tokio::process::Command::new(&python)
        .arg(SCRIPT)
        .env("KILN_BASE_URL", &app.base)
        .env("KILN_MODELS", "dall-e-2,painter,qwen-image")
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the Python client did not finish within 180 s")
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "openai_client.py failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    // Each model by URL and as base64: one generation upstream each.
    assert_eq!(fake.creates().len(), 4, "{stdout}");
    assert_eq!(fake.count(Route::Create), 4);
    assert_eq!(modelscope.creates().len(), 2, "{stdout}");
    assert!(modelscope.creates().iter().all(|c| c.body["model"] == "Qwen/Qwen-Image"));
    app.stop().await;
}
