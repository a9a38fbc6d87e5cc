//! USDZ against the published rules (Pixar's usdz specification: uncompressed,
//! unencrypted, each file's data 64-byte aligned, the first file a USD layer, only USD
//! layers and PNG/JPEG inside), checked three ways: by the zip crate's raw view here, by
//! Python's zipfile computing offsets from the local headers, and by every validator of
//! usd-core 26.11 (tests/python/usd_check.py), which also reads the stage back. A
//! deliberately unaligned copy must fail those validators, so the check can fail.

mod fixtures;

use std::fs::File;
use std::io::{Cursor, Read, Write};
use std::path::Path;

use formats::{Cancel, Limits, Model, write};
use serde_json::Value;
use zip::CompressionMethod;

fn usdz(model: &Model) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    write::usdz(model, &mut out, &write::UsdzOptions::default(), &Cancel::new()).expect("usdz");
    out.into_inner()
}

/// The zip's layout as the zip crate sees it: (name, data offset), every entry stored.
fn layout(bytes: &[u8]) -> Vec<(String, u64)> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("zip");
    (0..archive.len())
        .map(|i| {
            let file = archive.by_index_raw(i).expect("entry");
            assert_eq!(file.compression(), CompressionMethod::Stored, "{}", file.name());
            assert!(!file.encrypted(), "{}", file.name());
            assert_eq!(file.data_start() % 64, 0, "{} at {}", file.name(), file.data_start());
            let extension = file.name().rsplit('.').next().unwrap_or("");
            assert!(
                matches!(extension, "usda" | "usdc" | "usd" | "png" | "jpg" | "jpeg"),
                "{} is not allowed in a usdz",
                file.name()
            );
            (file.name().to_owned(), file.data_start())
        })
        .collect()
}

fn check(name: &str, glb: &[u8]) {
    let model = Model::read_glb(glb, &Limits::default(), &Cancel::new()).expect("read");
    let bytes = usdz(&model);
    assert_eq!(bytes, usdz(&model), "{name}: the same bytes twice");
    let entries = layout(&bytes);
    assert_eq!(entries[0].0, "model.usda", "{name}: the layer comes first");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.usdz");
    std::fs::write(&path, &bytes).expect("write");
    let report = &fixtures::run_python("usd_check.py", &[&path])[0];
    assert!(report["validators"].as_u64().unwrap_or(0) >= 20, "{name}: {report}");
    assert_eq!(report["errors"], Value::Array(vec![]), "{name}: validator errors");
    assert_eq!(report["faces"].as_u64(), Some(model.triangles()), "{name}: faces");
    assert_eq!(report["up_axis"], "Y");
    assert_eq!(report["meters_per_unit"].as_f64(), Some(1.0));
    assert_eq!(report["default_prim"], "/Model");

    // The stage's bounds are the model's, lifted so the base is at y = 0.
    let (min, max) = model.bounds().expect("bounds");
    let lift = -min[1];
    let expected = [[min[0], 0.0, min[2]], [max[0], max[1] + lift, max[2]]];
    for corner in 0..2 {
        for axis in 0..3 {
            let actual = report["bounds"][corner][axis].as_f64().expect("number");
            let wanted = f64::from(expected[corner][axis]);
            assert!((actual - wanted).abs() < 1e-5, "{name}: bounds {report}");
        }
    }

    // Python's zipfile finds the same entries at the same offsets.
    let python: Vec<(String, u64)> = report["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            assert_eq!(e["stored"], true, "{name}: {e}");
            assert_eq!(e["encrypted"], false, "{name}: {e}");
            let name = e["name"].as_str().expect("name").to_owned();
            (name, e["data_offset"].as_u64().expect("offset"))
        })
        .collect();
    assert_eq!(python, entries, "{name}: zipfile and zip disagree");
}

#[test]
fn relief_models_make_valid_usdz_files() {
    for (name, glb) in fixtures::relief_models() {
        check(name, glb);
    }
}

#[test]
fn a_trellis_like_model_makes_a_valid_usdz_file() {
    // WebP textures become PNG; the metallic-roughness texture is wired in.
    check("trellis-like", fixtures::trellis_like());
}

#[test]
fn a_two_node_cube_makes_a_valid_usdz_file() {
    check("two-node cube", &fixtures::two_node_cube());
}

/// The same files packed without alignment: usd-core's package validators must object,
/// or the test above proves nothing.
#[test]
fn an_unaligned_package_is_refused_by_the_validators() {
    let glb = fixtures::two_node_cube();
    let model = Model::read_glb(&glb, &Limits::default(), &Cancel::new()).expect("read");
    let good = usdz(&model);
    let mut archive = zip::ZipArchive::new(Cursor::new(&good)).expect("zip");
    let mut contents = Vec::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).expect("entry");
        let mut data = Vec::new();
        file.read_to_end(&mut data).expect("read");
        contents.push((file.name().to_owned(), data));
    }
    // Repacked in the same order (the layer first, or Usd.Stage would not open it), with
    // no alignment.
    let mut bad = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let unaligned =
        zip::write::SimpleFileOptions::default().compression_method(CompressionMethod::Stored).with_alignment(1);
    for (name, data) in &contents {
        bad.start_file(name.as_str(), unaligned).expect("start");
        bad.write_all(data).expect("write");
    }
    let bad = bad.finish().expect("finish").into_inner();
    let offsets: Vec<u64> = {
        let mut archive = zip::ZipArchive::new(Cursor::new(&bad)).expect("zip");
        (0..archive.len()).map(|i| archive.by_index_raw(i).expect("entry").data_start()).collect()
    };
    assert!(offsets.iter().any(|o| o % 64 != 0), "the control is aligned by chance: {offsets:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("unaligned.usdz");
    File::create(&path).and_then(|mut f| f.write_all(&bad)).expect("write");
    let report = &fixtures::run_python("usd_check.py", &[Path::new(&path)])[0];
    let errors = report["errors"].as_array().expect("errors");
    assert!(
        errors.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("offset"))),
        "no alignment error for an unaligned package: {report}"
    );
}
