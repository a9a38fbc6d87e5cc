//! three.js's GLTFLoader with its MeshoptDecoder, the viewer's own loader, opens the
//! compressed GLB (and the plain and core ones) of relief's vase and of generated models
//! under Node: the same triangle count, the box of the decoded vertices within half a
//! quantization step of the model's, and every image of the type the file declares. `tests/three/load.mjs` does the loading;
//! three.js comes from `web/node_modules` (`make web` installs it). Without Node or
//! three.js this test fails and says what to install.

mod generated;

use std::path::PathBuf;
use std::process::Command;

use formats::write::{CompressOptions, GlbOptions};
use formats::{AlphaMode, Cancel, ImageFormat, Model};
use serde_json::Value;

fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

#[test]
fn three_js_loads_every_glb_variant() {
    let node = Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "`node` is not on PATH: install Node.js 20 or later");
    assert!(
        web_dir().join("node_modules/three/package.json").exists(),
        "three.js is not installed in web/node_modules: run `make web` (or `scripts/web.sh build`)"
    );
    let dir = tempfile::tempdir().expect("a temporary folder");
    let vase = {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/images/vase.png");
        let picture = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let glb = relief::reconstruct(&picture, &relief::Options::default(), &mut |_, _| {}).expect("relief").glb;
        Model::read_glb(&glb, &formats::Limits::default(), &Cancel::new()).expect("reads")
    };
    let models: Vec<(&str, Model)> = vec![
        ("relief-vase", vase),
        ("trellis-like", generated::trellis_like(20_000, 128)),
        ("two-parts", generated::two_parts()),
        ("u32", generated::textured(generated::sphere(300, 240, 0.5), ImageFormat::Png, 64, AlphaMode::Opaque)),
    ];
    let cancel = Cancel::new();
    let mut files = Vec::new();
    for (name, model) in &models {
        let mut variants: Vec<(String, Vec<u8>, f32)> = Vec::new();
        let mut bytes = Vec::new();
        formats::write::meshopt_glb(model, &mut bytes, &CompressOptions::default(), &cancel).expect("meshopt");
        let (min, max) = model.bounds().expect("bounds");
        let extent = (0..3).map(|k| max[k] - min[k]).fold(0.0f32, f32::max);
        variants.push((format!("{name}.meshopt.glb"), bytes, extent / 16383.0 * 0.5));
        let mut bytes = Vec::new();
        formats::write::glb(model, &mut bytes, &GlbOptions::default(), &cancel).expect("plain");
        variants.push((format!("{name}.glb"), bytes, 0.0));
        let mut bytes = Vec::new();
        formats::write::glb(model, &mut bytes, &GlbOptions { core: true, texture_side: None }, &cancel).expect("core");
        variants.push((format!("{name}.core.glb"), bytes, 0.0));
        for (file, bytes, tolerance) in variants {
            let path = dir.path().join(&file);
            std::fs::write(&path, &bytes).expect("writing a GLB");
            files.push((path, model, tolerance, bytes));
        }
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/three/load.mjs");
    let output = Command::new("node")
        .arg(script)
        .arg(web_dir())
        .args(files.iter().map(|(path, ..)| path))
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "three.js failed:\n{}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let reports: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(reports.len(), files.len(), "{stdout}");
    for ((path, model, tolerance, bytes), report) in files.iter().zip(&reports) {
        let name = path.display();
        assert_eq!(report["triangles"].as_u64(), Some(model.triangles()), "{name}");
        let (min, max) = model.bounds().expect("bounds");
        for k in 0..3 {
            let (lo, hi) = (report["min"][k].as_f64().expect("min"), report["max"][k].as_f64().expect("max"));
            // three.js works in f64 from f32 data: allow f32 rounding on top.
            let slack = f64::from(*tolerance) * 1.01 + 1e-6;
            assert!((lo - f64::from(min[k])).abs() <= slack, "{name}: min {k}: {lo} vs {}", min[k]);
            assert!((hi - f64::from(max[k])).abs() <= slack, "{name}: max {k}: {hi} vs {}", max[k]);
        }
        let glb = gltf::binary::Glb::from_slice(bytes).expect("GLB");
        let json: Value = serde_json::from_slice(&glb.json).expect("JSON");
        let declared: Vec<&str> = json["images"]
            .as_array()
            .map(|i| i.iter().filter_map(|i| i["mimeType"].as_str()).collect())
            .unwrap_or_default();
        let images = report["images"].as_array().expect("images");
        assert_eq!(images.len(), declared.len(), "{name}: every image was loaded");
        for image in images {
            assert_eq!(image["declared"], image["found"], "{name}: {image}");
        }
    }
}
