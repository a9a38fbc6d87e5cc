//! The Khronos glTF Validator (npm package `gltf-validator`, run through
//! `tools/gltf-validate`) on the model of every fixture picture: zero errors and zero
//! warnings. The validator is installed by `make test` (`scripts/deps.sh`); without it
//! this test fails and says so, rather than passing without having checked anything.

use std::path::{Path, PathBuf};
use std::process::Command;

use relief::{Options, reconstruct};
use serde_json::Value;

fn tool_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/gltf-validate")
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/images")
}

/// Panics with what to do when Node or the validator package is missing.
fn assert_validator_installed() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "`node` is not on PATH: install Node.js 20 or later, then run `make test` (or `scripts/deps.sh`)"
    );
    let package = tool_dir().join("node_modules/gltf-validator/package.json");
    assert!(
        package.exists(),
        "the Khronos glTF Validator is not installed ({} is missing): run `make test` or `scripts/deps.sh`, \
         which run `npm ci` in tools/gltf-validate",
        package.display()
    );
}

/// Every picture directly in the fixtures folder (the `invalid/` ones are not pictures).
fn fixture_pictures() -> Vec<PathBuf> {
    let mut pictures: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("the shared fixtures folder")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "jpg" | "jpeg" | "png" | "webp"))
        })
        .collect();
    pictures.sort();
    pictures
}

/// Runs the validator on the files and returns one report per file.
fn validate(files: &[PathBuf]) -> Vec<Value> {
    let output = Command::new("node")
        .arg(tool_dir().join("validate.mjs"))
        .arg("--json")
        .args(files)
        .output()
        .expect("running the validator");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Exit code 1 (errors found) still prints the reports; 2 means it could not run.
    assert_ne!(output.status.code(), Some(2), "validator failed: {}", String::from_utf8_lossy(&output.stderr));
    let reports: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("the validator's output is not JSON ({e}):\n{stdout}"));
    assert_eq!(reports.len(), files.len(), "one report per file:\n{stdout}");
    reports
}

fn write(dir: &Path, name: &str, glb: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, glb).expect("writing a model");
    path
}

#[test]
fn every_fixture_model_passes_the_khronos_validator() {
    assert_validator_installed();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut files = Vec::new();
    let pictures = fixture_pictures();
    assert!(pictures.len() >= 4, "expected the four fixture pictures, found {pictures:?}");
    for picture in &pictures {
        let name = picture.file_name().and_then(|n| n.to_str()).expect("a file name");
        let bytes = std::fs::read(picture).expect("reading a fixture");
        let model = reconstruct(&bytes, &Options::default(), &mut |_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
        files.push(write(dir.path(), &format!("{name}.glb"), &model.glb));
    }
    // Past 65,535 vertices the indices are 32-bit: check that layout as well.
    let fine = Options { resolution: 512, max_triangles: 500_000, ..Options::default() };
    let model = reconstruct(&std::fs::read(fixtures_dir().join("mug.jpg")).expect("mug"), &fine, &mut |_, _| {})
        .expect("a fine mug");
    assert!(model.stats.vertices > 65_535, "{:?}", model.stats);
    files.push(write(dir.path(), "mug-32-bit-indices.glb", &model.glb));

    for (file, report) in files.iter().zip(validate(&files)) {
        let issues = &report["issues"];
        let messages = serde_json::to_string_pretty(&issues["messages"]).unwrap_or_default();
        assert_eq!(issues["numErrors"], 0, "{}: {messages}", file.display());
        assert_eq!(issues["numWarnings"], 0, "{}: {messages}", file.display());
        assert_eq!(report["info"]["version"], "2.0", "{}", file.display());
    }
}
