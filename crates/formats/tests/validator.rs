//! The Khronos glTF Validator (npm package `gltf-validator`, run through
//! `tools/gltf-validate`) on every GLB variant the crate writes: plain, core, meshopt
//! and a simplified level of detail, for relief's model of every fixture picture and
//! generated models with PNG, JPEG and WebP textures, alpha
//! modes, several parts, vertex colours and 32-bit indices. Zero errors and zero
//! warnings; infos (the validator does not decode `EXT_meshopt_compression` and says
//! so) are allowed. Without Node or the validator this test fails and says what to
//! install, rather than passing without having checked anything.

mod generated;

use std::path::{Path, PathBuf};
use std::process::Command;

use formats::write::{CompressOptions, GlbOptions};
use formats::{AlphaMode, Cancel, ImageFormat, Model};
use serde_json::Value;

fn tool_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/gltf-validate")
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

fn models() -> Vec<(&'static str, Model)> {
    use generated::*;
    vec![
        ("png-opaque", textured(sphere(32, 16, 0.5), ImageFormat::Png, 64, AlphaMode::Opaque)),
        ("png-mask", textured(sphere(32, 16, 0.5), ImageFormat::Png, 64, AlphaMode::Mask)),
        ("jpeg-blend", textured(sphere(32, 16, 0.5), ImageFormat::Jpeg, 64, AlphaMode::Blend)),
        ("trellis-like", trellis_like(20_000, 256)),
        ("two-parts", two_parts()),
        // No triangles at all: still a valid file (no empty buffer).
        ("empty", Model::default()),
        // Past 65 535 vertices indices are 32-bit.
        ("u32-indices", textured(sphere(300, 240, 0.5), ImageFormat::Jpeg, 64, AlphaMode::Opaque)),
    ]
}

/// The relief model of every fixture picture, read back: what kiln converts most.
fn relief_models() -> Vec<(String, Model)> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/images");
    let mut pictures: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .expect("the shared fixtures folder")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "jpg" | "png" | "webp")))
        .collect();
    pictures.sort();
    assert!(pictures.len() >= 4, "expected the four fixture pictures, found {pictures:?}");
    pictures
        .iter()
        .map(|picture| {
            let name = picture.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let bytes = std::fs::read(picture).expect("a fixture");
            let glb = relief::reconstruct(&bytes, &relief::Options::default(), &mut |_, _| {}).expect("relief").glb;
            let model = Model::read_glb(&glb, &formats::Limits::default(), &Cancel::new()).expect("reads");
            (format!("relief-{name}"), model)
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("writing a model");
    path
}

#[test]
fn every_glb_variant_passes_the_khronos_validator() {
    assert_validator_installed();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let cancel = Cancel::new();
    let mut files = Vec::new();
    let mut all: Vec<(String, Model)> = models().into_iter().map(|(n, m)| (n.to_string(), m)).collect();
    all.extend(relief_models());
    for (name, model) in all {
        let mut plain = Vec::new();
        formats::write::glb(&model, &mut plain, &GlbOptions::default(), &cancel).expect("plain GLB");
        files.push(write(dir.path(), &format!("{name}.glb"), &plain));
        let mut core = Vec::new();
        let options = GlbOptions { core: true, texture_side: Some(128) };
        formats::write::glb(&model, &mut core, &options, &cancel).expect("core GLB");
        files.push(write(dir.path(), &format!("{name}.core.glb"), &core));
        let mut compressed = Vec::new();
        formats::write::meshopt_glb(&model, &mut compressed, &CompressOptions::default(), &cancel)
            .expect("meshopt GLB");
        files.push(write(dir.path(), &format!("{name}.meshopt.glb"), &compressed));
        let (lod, _) = formats::simplify(&model, model.triangles() / 4, &cancel).expect("simplified");
        let mut lod_bytes = Vec::new();
        formats::write::meshopt_glb(&lod, &mut lod_bytes, &CompressOptions::default(), &cancel).expect("LOD GLB");
        files.push(write(dir.path(), &format!("{name}.lod.glb"), &lod_bytes));
    }
    for (file, report) in files.iter().zip(validate(&files)) {
        let issues = &report["issues"];
        let messages = serde_json::to_string_pretty(&issues["messages"]).unwrap_or_default();
        assert_eq!(issues["numErrors"], 0, "{}: {messages}", file.display());
        assert_eq!(issues["numWarnings"], 0, "{}: {messages}", file.display());
        assert_eq!(report["info"]["version"], "2.0", "{}", file.display());
        assert_eq!(report["info"]["generator"], "kiln", "{}", file.display());
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let used: Vec<&str> = report["info"]["extensionsUsed"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if name.ends_with(".core.glb") {
            assert!(used.is_empty(), "{name}: a core GLB uses no extension, found {used:?}");
        }
        if (name.ends_with(".meshopt.glb") || name.ends_with(".lod.glb")) && !name.starts_with("empty") {
            assert!(
                used.contains(&"EXT_meshopt_compression") && used.contains(&"KHR_mesh_quantization"),
                "{name}: {used:?}"
            );
        }
    }
}
