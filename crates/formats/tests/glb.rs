//! The plain and core GLB writers, read back by the crate's reader and by the `gltf`
//! crate's own accessor reader: the plain file holds the model exactly (f32 attributes,
//! the same indices, the same texture bytes), the core file uses no extension and only
//! PNG/JPEG images, and both are deterministic.

mod generated;

use formats::write::GlbOptions;
use formats::{AlphaMode, Cancel, ImageFormat, Limits, Model};

fn write(model: &Model, options: &GlbOptions) -> Vec<u8> {
    let mut bytes = Vec::new();
    formats::write::glb(model, &mut bytes, options, &Cancel::new()).expect("a GLB");
    bytes
}

/// Panics naming the first field that differs (a whole `Part` is too long to print).
fn assert_same_parts(a: &[formats::Part], b: &[formats::Part], name: &str) {
    assert_eq!(a.len(), b.len(), "{name}: parts");
    for (k, (a, b)) in a.iter().zip(b).enumerate() {
        let first = |x: Vec<String>, y: Vec<String>| {
            x.iter().zip(&y).position(|(x, y)| x != y).map(|i| (i, x[i].clone(), y[i].clone()))
        };
        let show = |v: &dyn Fn(&formats::Part) -> Vec<String>| first(v(a), v(b));
        assert_eq!(a.positions.len(), b.positions.len(), "{name} part {k}: vertices");
        assert_eq!(
            show(&|p| p.positions.iter().map(|v| format!("{v:?}")).collect()),
            None,
            "{name} part {k}: positions"
        );
        // The reader rescales every normal to unit length, which may move it by an f32 step.
        let normals = |p: &formats::Part| p.normals.clone().unwrap_or_default();
        let off = normals(a).iter().zip(normals(b)).position(|(x, y)| (0..3).any(|c| (x[c] - y[c]).abs() > 1e-6));
        assert_eq!(off, None, "{name} part {k}: normals");
        assert_eq!(show(&|p| p.uvs.iter().flatten().map(|v| format!("{v:?}")).collect()), None, "{name} part {k}: uvs");
        assert_eq!(
            show(&|p| p.colors.iter().flatten().map(|v| format!("{v:?}")).collect()),
            None,
            "{name} part {k}: colours"
        );
        assert_eq!(
            (a.normals.is_some(), a.uvs.is_some(), a.colors.is_some()),
            (b.normals.is_some(), b.uvs.is_some(), b.colors.is_some()),
            "{name} part {k}"
        );
        assert!(a.indices == b.indices, "{name} part {k}: indices");
        assert_eq!(a.material, b.material, "{name} part {k}: material");
    }
}

fn models() -> Vec<(&'static str, Model)> {
    use generated::*;
    vec![
        ("png", textured(sphere(24, 12, 0.5), ImageFormat::Png, 32, AlphaMode::Mask)),
        ("two-parts", two_parts()),
        ("trellis-like", trellis_like(5_000, 64)),
        ("u32-indices", textured(sphere(300, 240, 0.5), ImageFormat::Jpeg, 32, AlphaMode::Opaque)),
    ]
}

#[test]
fn the_plain_glb_reads_back_as_the_same_model() {
    let read = |model: &Model, name: &str| {
        Model::read_glb(&write(model, &GlbOptions::default()), &Limits::default(), &Cancel::new())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    for (name, model) in models() {
        let once = read(&model, name);
        assert_same_parts(&once.parts, &model.parts, name);
        assert_eq!(once.textures, model.textures, "{name}");
        assert_eq!(once.materials, model.materials, "{name}");
        assert_same_parts(&read(&once, name).parts, &once.parts, name);
    }
}

#[test]
fn the_gltf_crate_reads_the_same_attributes() {
    let model = generated::two_parts();
    let glb = write(&model, &GlbOptions::default());
    let gltf = gltf::Gltf::from_slice(&glb).expect("gltf accepts the file");
    let blob = gltf.blob.clone().expect("a BIN chunk");
    let mesh = gltf.document.meshes().next().expect("a mesh");
    for (primitive, part) in mesh.primitives().zip(&model.parts) {
        let reader = primitive.reader(|_| Some(&blob[..]));
        let positions: Vec<[f32; 3]> = reader.read_positions().expect("positions").collect();
        assert_eq!(positions, part.positions);
        let indices: Vec<u32> = reader.read_indices().expect("indices").into_u32().collect();
        assert_eq!(indices, part.indices);
        let uvs: Option<Vec<[f32; 2]>> = reader.read_tex_coords(0).map(|t| t.into_f32().collect());
        assert_eq!(uvs, part.uvs);
        let colors: Option<Vec<[f32; 4]>> = reader.read_colors(0).map(|c| c.into_rgba_f32().collect());
        assert_eq!(colors, part.colors);
    }
}

#[test]
fn the_core_glb_has_no_extension_and_only_png_or_jpeg() {
    let model = generated::trellis_like(5_000, 64);
    let bytes = write(&model, &GlbOptions { core: true, texture_side: None });
    let glb = gltf::binary::Glb::from_slice(&bytes).expect("GLB");
    let json: serde_json::Value = serde_json::from_slice(&glb.json).expect("JSON");
    assert!(json.get("extensionsUsed").is_none() && json.get("extensionsRequired").is_none(), "{json}");
    let mimes: Vec<&str> =
        json["images"].as_array().expect("images").iter().filter_map(|i| i["mimeType"].as_str()).collect();
    // The opaque material's base colour may be JPEG; the metallic-roughness data stays
    // lossless.
    assert_eq!(mimes, ["image/jpeg", "image/png"]);
    for texture in json["textures"].as_array().expect("textures") {
        assert!(texture.get("source").is_some() && texture.get("extensions").is_none(), "{texture}");
    }
    let read = Model::read_glb(&bytes, &Limits::default(), &Cancel::new()).expect("reads");
    assert_eq!(read.triangles(), model.triangles());
    assert_eq!(read.parts[0].positions, model.parts[0].positions);
    assert_eq!(read.textures[1].format, ImageFormat::Png);

    // A base colour whose alpha a BLEND material reads stays lossless too.
    let mut blended = model.clone();
    blended.materials[0].alpha_mode = AlphaMode::Blend;
    let bytes = write(&blended, &GlbOptions { core: true, texture_side: None });
    let read = Model::read_glb(&bytes, &Limits::default(), &Cancel::new()).expect("reads");
    assert_eq!(read.textures[0].format, ImageFormat::Png);
    assert_eq!(read.materials[0].alpha_mode, AlphaMode::Blend);
}

#[test]
fn the_plain_glb_keeps_webp_behind_its_extension() {
    let bytes = write(&generated::trellis_like(5_000, 64), &GlbOptions::default());
    let glb = gltf::binary::Glb::from_slice(&bytes).expect("GLB");
    let json: serde_json::Value = serde_json::from_slice(&glb.json).expect("JSON");
    assert_eq!(json["extensionsRequired"], serde_json::json!(["EXT_texture_webp"]));
    assert_eq!(json["textures"][0]["extensions"]["EXT_texture_webp"]["source"], 0);
    assert!(json["textures"][0].get("source").is_none());
}

#[test]
fn writing_twice_gives_the_same_bytes() {
    for (name, model) in models() {
        for options in [GlbOptions::default(), GlbOptions { core: true, texture_side: Some(16) }] {
            assert_eq!(write(&model, &options), write(&model, &options), "{name} {options:?}");
        }
    }
}

#[test]
fn a_zero_texture_side_is_refused() {
    let options = GlbOptions { core: false, texture_side: Some(0) };
    assert!(formats::write::glb(&generated::two_parts(), Vec::new(), &options, &Cancel::new()).is_err());
}

#[test]
fn cancel_stops_the_writer() {
    let cancel = Cancel::new();
    cancel.cancel();
    let result = formats::write::glb(&generated::two_parts(), Vec::new(), &GlbOptions::default(), &cancel);
    assert!(matches!(result, Err(formats::FormatError::Cancelled)));
}

#[test]
fn a_hand_built_part_that_breaks_the_invariants_is_refused_not_a_panic() {
    let cancel = Cancel::new();
    let good = generated::sphere(8, 4, 0.5);
    let broken = [
        formats::Part { indices: vec![0, 1, 9999], ..good.clone() },
        formats::Part { indices: vec![0, 1], ..good.clone() },
        formats::Part { uvs: Some(vec![[0.0; 2]; 3]), ..good.clone() },
    ];
    for part in broken {
        let model = Model { parts: vec![part], ..Model::default() };
        assert!(formats::write::glb(&model, Vec::new(), &GlbOptions::default(), &cancel).is_err());
        let compress = formats::write::CompressOptions::default();
        assert!(formats::write::meshopt_glb(&model, Vec::new(), &compress, &cancel).is_err());
        assert!(formats::simplify(&model, 1, &cancel).is_err());
        assert!(formats::preview(&model, &formats::PreviewOptions::default(), &cancel).is_err());
    }
}
