//! Round trips through an independent reader: each GLB (relief's model of every fixture
//! picture, a model as TRELLIS.2 writes it, and a hand-built two-node cube) is converted to OBJ (zip), STL (metres and
//! millimetres) and PLY, and trimesh (tests/python/mesh_check.py) reads every file back.
//! The triangle count must match, the bounding box agree within 1e-5 (STL's turned to
//! Z up), a watertight source stay watertight, OBJ's UVs match the source's (the V flip),
//! and PLY's baked colours match trimesh's own sampling of the texture. tobj reads the
//! OBJ too, without Python.

mod fixtures;

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};

use formats::{Cancel, Limits, Model, write};
use serde_json::Value;

struct Converted {
    glb: PathBuf,
    obj: PathBuf,
    stl: PathBuf,
    stl_mm: PathBuf,
    ply: PathBuf,
    zip_names: Vec<String>,
    mtl: String,
}

fn convert(dir: &Path, glb: &[u8]) -> Converted {
    let model = Model::read_glb(glb, &Limits::default(), &Cancel::new()).expect("read");
    let cancel = Cancel::new();
    let path = |name: &str| dir.join(name);
    std::fs::write(path("model.glb"), glb).expect("write glb");

    let zip_path = path("output3d.zip");
    write::obj_zip(&model, File::create(&zip_path).expect("create"), &cancel).expect("obj");
    let mut archive = zip::ZipArchive::new(File::open(&zip_path).expect("open")).expect("zip");
    let unzipped = path("obj");
    std::fs::create_dir(&unzipped).expect("mkdir");
    archive.extract(&unzipped).expect("unzip");
    let zip_names: Vec<String> = archive.file_names().map(str::to_owned).collect();
    let mut mtl = String::new();
    archive.by_name("model.mtl").expect("mtl").read_to_string(&mut mtl).expect("utf8");

    let stl = path("model.stl");
    let file = BufWriter::new(File::create(&stl).expect("create"));
    write::stl(&model, file, write::Units::Metres, &cancel).expect("stl");
    let stl_mm = path("model-mm.stl");
    let file = BufWriter::new(File::create(&stl_mm).expect("create"));
    write::stl(&model, file, write::Units::Millimetres, &cancel).expect("stl");
    let ply = path("model.ply");
    let file = BufWriter::new(File::create(&ply).expect("create"));
    write::ply(&model, file, &cancel).expect("ply");
    Converted { glb: path("model.glb"), obj: unzipped.join("model.obj"), stl, stl_mm, ply, zip_names, mtl }
}

fn bounds(stats: &Value) -> [[f64; 3]; 2] {
    let b = &stats["bounds"];
    let corner = |i: usize| [0, 1, 2].map(|k| b[i][k].as_f64().expect("a number"));
    [corner(0), corner(1)]
}

fn assert_close(name: &str, actual: [[f64; 3]; 2], expected: [[f64; 3]; 2], tolerance: f64) {
    for corner in 0..2 {
        for axis in 0..3 {
            let (a, e) = (actual[corner][axis], expected[corner][axis]);
            assert!((a - e).abs() <= tolerance * e.abs().max(1.0), "{name}: bounds {actual:?}, expected {expected:?}");
        }
    }
}

fn check(name: &str, glb: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = convert(dir.path(), glb);
    let stats = fixtures::run_python(
        "mesh_check.py",
        &[Path::new("stats"), &files.glb, &files.obj, &files.stl, &files.stl_mm, &files.ply],
    );
    let source = &stats[0];
    let faces = source["faces"].as_u64().expect("faces");
    assert!(faces > 0, "{name}: the source has no faces");
    for (file, stat) in ["obj", "stl", "stl-mm", "ply"].iter().zip(&stats[1..]) {
        assert_eq!(stat["faces"].as_u64(), Some(faces), "{name} {file}: triangle count");
        if source["watertight"] == Value::Bool(true) {
            assert_eq!(stat["watertight"], Value::Bool(true), "{name} {file}: watertight");
        }
    }
    let [min, max] = bounds(source);
    assert_close(&format!("{name} obj"), bounds(&stats[1]), [min, max], 1e-5);
    assert_close(&format!("{name} ply"), bounds(&stats[4]), [min, max], 1e-5);
    // STL is Z up: (x, y, z) → (x, −z, y).
    let z_up = [[min[0], -max[2], min[1]], [max[0], -min[2], max[1]]];
    assert_close(&format!("{name} stl"), bounds(&stats[2]), z_up, 1e-5);
    let mm = bounds(&stats[3]).map(|corner| corner.map(|c| c / 1000.0));
    assert_close(&format!("{name} stl-mm"), mm, z_up, 1e-5);

    // The texture is referenced by a bare relative name that is in the zip.
    let map = files.mtl.lines().find_map(|line| line.strip_prefix("map_Kd ")).expect("a map_Kd line");
    assert!(!map.contains('/') && !map.contains('\\'), "{map}");
    assert!(files.zip_names.iter().any(|n| n == map), "{map} not in {:?}", files.zip_names);

    let uv = &fixtures::run_python("mesh_check.py", &[Path::new("uv"), &files.glb, &files.obj])[0];
    assert_eq!(uv["unmatched"].as_u64(), Some(0), "{name}: {uv}");
    let difference = uv["max_uv_difference"].as_f64().expect("number");
    assert!(difference < 1e-6, "{name}: OBJ UVs differ by {difference}");

    let colors = &fixtures::run_python("mesh_check.py", &[Path::new("colors"), &files.glb, &files.ply]);
    assert_eq!(colors[0]["unmatched"].as_u64(), Some(0), "{name}: {}", colors[0]);
    // trimesh samples the nearest texel, kiln interpolates: they agree where the texture
    // is smooth, which is most vertices.
    let median = colors[0]["median_difference"].as_f64().expect("number");
    assert!(median <= 2.0, "{name}: PLY colours: {}", colors[0]);

    // tobj, a Rust OBJ reader unrelated to the writer: triangles and bounds again.
    let (models, _) = tobj::load_obj(&files.obj, &tobj::GPU_LOAD_OPTIONS).expect("tobj");
    let triangles: usize = models.iter().map(|m| m.mesh.indices.len() / 3).sum();
    assert_eq!(triangles as u64, faces, "{name}: tobj triangle count");
    let mut low = [f64::MAX; 3];
    let mut high = [f64::MIN; 3];
    for model in &models {
        for p in model.mesh.positions.chunks_exact(3) {
            for k in 0..3 {
                low[k] = low[k].min(f64::from(p[k]));
                high[k] = high[k].max(f64::from(p[k]));
            }
        }
    }
    assert_close(&format!("{name} tobj"), [low, high], [min, max], 1e-5);
}

#[test]
fn relief_models_survive_every_format() {
    for (name, glb) in fixtures::relief_models() {
        check(name, glb);
    }
}

#[test]
fn a_trellis_like_model_with_webp_textures_survives_every_format() {
    let glb = fixtures::trellis_like();
    let model = Model::read_glb(glb, &Limits::default(), &Cancel::new()).expect("read");
    let material = &model.materials[0];
    assert!(material.base_color_texture.is_some() && material.metallic_roughness_texture.is_some());
    assert_eq!(model.textures[0].format, formats::ImageFormat::Webp);
    check("trellis-like", glb);
}

#[test]
fn a_two_node_watertight_cube_survives_every_format() {
    let glb = fixtures::two_node_cube();
    let dir = tempfile::tempdir().expect("tempdir");
    let files = convert(dir.path(), &glb);
    let stats = fixtures::run_python("mesh_check.py", &[Path::new("stats"), &files.glb]);
    assert_eq!(stats[0]["faces"].as_u64(), Some(24), "two cubes");
    assert_eq!(stats[0]["watertight"], Value::Bool(true), "the fixture is closed");
    check("two-node cube", &glb);
}
