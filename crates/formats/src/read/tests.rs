use serde_json::{Value, json};

use super::*;

/// A GLB from a JSON document and a BIN chunk, padded as the spec says.
pub(crate) fn glb(json: &Value, bin: &[u8]) -> Vec<u8> {
    let mut json = serde_json::to_vec(json).expect("json");
    while !json.len().is_multiple_of(4) {
        json.push(b' ');
    }
    let mut bin = bin.to_vec();
    while !bin.len().is_multiple_of(4) {
        bin.push(0);
    }
    let total = 12 + 8 + json.len() + if bin.is_empty() { 0 } else { 8 + bin.len() };
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"glTF");
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(b"JSON");
    out.extend_from_slice(&json);
    if !bin.is_empty() {
        out.extend_from_slice(&(bin.len() as u32).to_le_bytes());
        out.extend_from_slice(b"BIN\0");
        out.extend_from_slice(&bin);
    }
    out
}

fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// One triangle: positions at 0..36, u16 indices at 36..42.
fn triangle() -> (Value, Vec<u8>) {
    let mut bin = f32s(&[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    bin.extend([0u16, 1, 2].iter().flat_map(|i| i.to_le_bytes()));
    bin.extend([0, 0]);
    let json = json!({
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
             "min": [0, 0, 0], "max": [1, 1, 0]},
            {"bufferView": 1, "componentType": 5123, "count": 3, "type": "SCALAR"}
        ],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": 36},
            {"buffer": 0, "byteOffset": 36, "byteLength": 6}
        ],
        "buffers": [{"byteLength": 44}]
    });
    (json, bin)
}

fn read(json: &Value, bin: &[u8]) -> Result<Model, FormatError> {
    Model::read_glb(&glb(json, bin), &Limits::default(), &Cancel::new())
}

fn relief_glb() -> (Vec<u8>, relief::Stats) {
    let picture = image::RgbaImage::from_fn(96, 96, |x, y| {
        let (dx, dy) = (x as f32 - 48.0, y as f32 - 48.0);
        if dx * dx + dy * dy < 900.0 {
            image::Rgba([200, (x * 2) as u8, (y * 2) as u8, 255])
        } else {
            image::Rgba([0, 0, 0, 0])
        }
    });
    let mut png = Vec::new();
    picture.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
    let model = relief::reconstruct(&png, &relief::Options::default(), &mut |_, _| {}).expect("relief");
    (model.glb, model.stats)
}

#[test]
fn reads_a_relief_model_completely() {
    let (glb, stats) = relief_glb();
    let model = Model::read_glb(&glb, &Limits::default(), &Cancel::new()).expect("read");
    assert_eq!(model.triangles(), u64::from(stats.triangles));
    assert_eq!(model.vertices(), u64::from(stats.vertices));
    assert_eq!(model.bounds(), Some((stats.bbox_min, stats.bbox_max)));
    assert!(model.welded_is_closed(), "relief models are watertight");
    let part = &model.parts[0];
    assert!(part.normals.is_some() && part.uvs.is_some());
    let material = &model.materials[part.material.expect("material")];
    assert_eq!(material.roughness_factor, 0.8);
    let texture = &model.textures[material.base_color_texture.expect("texture")];
    assert_eq!(texture.width, stats.texture_width);
    assert!(crate::texture::decode(texture).is_ok());
    assert!(model.notes.is_empty());

    let estimate = estimate(&glb, &Limits::default()).expect("estimate");
    assert_eq!(estimate.triangles, u64::from(stats.triangles));
    assert_eq!(estimate.texture_pixels, u64::from(stats.texture_width * stats.texture_height));
    assert!(estimate.memory_bytes > glb.len() as u64);
    assert!(!estimate.needs_extensions, "relief writes core glTF");
}

#[test]
fn reads_one_triangle() {
    let (json, bin) = triangle();
    let model = read(&json, &bin).expect("read");
    assert_eq!(model.parts.len(), 1);
    assert_eq!(model.parts[0].indices, vec![0, 1, 2]);
    assert_eq!(model.parts[0].positions[1], [1.0, 0.0, 0.0]);
    assert_eq!(model.parts[0].material, None);
}

#[test]
fn node_transforms_are_applied_and_mirrors_keep_faces_outward() {
    let (mut json, bin) = triangle();
    json["nodes"] = json!([
        {"children": [1], "translation": [10, 0, 0]},
        {"mesh": 0, "scale": [-2, 1, 1]}
    ]);
    json["meshes"][0]["primitives"][0]["attributes"]["NORMAL"] = json!(2);
    json["accessors"]
        .as_array_mut()
        .expect("array")
        .push(json!({"bufferView": 2, "componentType": 5126, "count": 3, "type": "VEC3"}));
    json["bufferViews"].as_array_mut().expect("array").push(json!({"buffer": 0, "byteOffset": 44, "byteLength": 36}));
    json["buffers"][0]["byteLength"] = json!(80);
    let mut bin = bin;
    bin.extend(f32s(&[1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]));
    let model = read(&json, &bin).expect("read");
    let part = &model.parts[0];
    assert_eq!(part.positions[1], [8.0, 0.0, 0.0]);
    assert_eq!(part.positions[2], [10.0, 1.0, 0.0]);
    assert_eq!(part.indices, vec![0, 2, 1], "mirrored, so rewound");
    let normals = part.normals.as_ref().expect("normals");
    assert_eq!(normals[0], [-1.0, 0.0, 0.0]);
    assert_eq!(normals[2], [0.0, 0.0, 1.0]);
}

#[test]
fn instanced_meshes_count_once_per_instance() {
    let (mut json, bin) = triangle();
    json["scenes"][0]["nodes"] = json!([0, 1, 1]);
    json["nodes"] = json!([{"mesh": 0}, {"mesh": 0, "translation": [0, 0, 5]}]);
    let model = read(&json, &bin).expect("read");
    assert_eq!(model.triangles(), 3);
    let limits = Limits { max_triangles: 2, ..Limits::default() };
    let error = Model::read_glb(&glb(&json, &bin), &limits, &Cancel::new()).expect_err("limit");
    assert!(matches!(error, FormatError::TooLarge { what: "triangles", .. }), "{error}");
}

#[test]
fn thousands_of_nodes_reusing_a_mesh_are_refused_before_reading() {
    let (mut json, bin) = triangle();
    json["scenes"][0]["nodes"] = json!(vec![0; 10_000]);
    let limits = Limits { max_triangles: 1000, ..Limits::default() };
    let error = Model::read_glb(&glb(&json, &bin), &limits, &Cancel::new()).expect_err("limit");
    assert_eq!(error.code(), "model_too_large");
    // A node tree that doubles at every level is cut off by the visit count.
    let nodes: Vec<Value> =
        (0..40).map(|i| if i < 39 { json!({"children": [i + 1, i + 1]}) } else { json!({"mesh": 0}) }).collect();
    json["nodes"] = Value::Array(nodes);
    json["scenes"][0]["nodes"] = json!([0]);
    let limits = Limits { max_depth: 64, ..Limits::default() };
    let error = Model::read_glb(&glb(&json, &bin), &limits, &Cancel::new()).expect_err("limit");
    assert!(matches!(error, FormatError::TooLarge { what: "node visits", .. }), "{error}");
}

#[test]
fn cycles_and_deep_trees_are_refused() {
    let (mut json, bin) = triangle();
    json["nodes"] = json!([{"mesh": 0, "children": [1]}, {"children": [0]}]);
    let error = read(&json, &bin).expect_err("cycle");
    assert!(error.to_string().contains("cycle"), "{error}");

    let nodes: Vec<Value> = (0..40).map(|i| json!({"children": [i + 1]})).collect();
    let mut nodes = nodes;
    nodes.push(json!({"mesh": 0}));
    json["nodes"] = Value::Array(nodes);
    let error = read(&json, &bin).expect_err("depth");
    assert!(matches!(error, FormatError::TooLarge { what: "node depth", .. }), "{error}");
}

/// Each hostile accessor edit gives a clean error.
#[test]
fn hostile_accessors_are_errors() {
    type Edit = Box<dyn Fn(&mut Value)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("huge count", Box::new(|j| j["accessors"][0]["count"] = json!(3_000_000_000u64))),
        ("zero count", Box::new(|j| j["accessors"][0]["count"] = json!(0))),
        ("offset past end", Box::new(|j| j["accessors"][0]["byteOffset"] = json!(1u64 << 40))),
        ("view past buffer", Box::new(|j| j["bufferViews"][0]["byteOffset"] = json!(40))),
        ("stride 1000", Box::new(|j| j["bufferViews"][0]["byteStride"] = json!(1000))),
        ("stride 4", Box::new(|j| j["bufferViews"][0]["byteStride"] = json!(4))),
        ("index type for positions", Box::new(|j| j["accessors"][0]["componentType"] = json!(5125))),
        ("float indices", Box::new(|j| j["accessors"][1]["componentType"] = json!(5126))),
        ("missing accessor", Box::new(|j| j["meshes"][0]["primitives"][0]["attributes"]["POSITION"] = json!(7))),
        ("missing indices accessor", Box::new(|j| j["meshes"][0]["primitives"][0]["indices"] = json!(9))),
        ("two indices", Box::new(|j| j["accessors"][1]["count"] = json!(2))),
        ("lines", Box::new(|j| j["meshes"][0]["primitives"][0]["mode"] = json!(1))),
        (
            "sparse",
            Box::new(|j| {
                j["accessors"][0]["sparse"] = json!({"count": 1,
            "indices": {"bufferView": 1, "componentType": 5123},
            "values": {"bufferView": 0}})
            }),
        ),
        ("buffer longer than BIN", Box::new(|j| j["buffers"][0]["byteLength"] = json!(4000))),
        ("external buffer", Box::new(|j| j["buffers"][0]["uri"] = json!("file:///etc/passwd"))),
        ("missing mesh", Box::new(|j| j["nodes"][0]["mesh"] = json!(3))),
        ("missing node", Box::new(|j| j["scenes"][0]["nodes"] = json!([5]))),
    ];
    for (name, edit) in edits {
        let (mut json, bin) = triangle();
        edit(&mut json);
        let result = read(&json, &bin);
        assert!(result.is_err(), "{name}: accepted");
        let _ = estimate(&glb(&json, &bin), &Limits::default());
    }
}

#[test]
fn out_of_range_indices_and_nan_positions_are_refused() {
    let (json, mut bin) = triangle();
    bin[36..38].copy_from_slice(&7u16.to_le_bytes());
    let error = read(&json, &bin).expect_err("index");
    assert!(error.to_string().contains("not below the vertex count"), "{error}");
    let (json, mut bin) = triangle();
    bin[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let error = read(&json, &bin).expect_err("nan");
    assert!(error.to_string().contains("finite"), "{error}");
}

#[test]
fn broken_containers_are_unreadable() {
    let (json, bin) = triangle();
    let good = glb(&json, &bin);
    for cut in [0, 3, 11, 12, 19, 25, good.len() - 1] {
        let error = Model::read_glb(&good[..cut], &Limits::default(), &Cancel::new()).expect_err("truncated");
        assert_eq!(error.code(), "model_unreadable", "cut at {cut}: {error}");
    }
    let mut lying = good.clone();
    lying[8..12].copy_from_slice(&3u32.to_le_bytes());
    assert!(Model::read_glb(&lying, &Limits::default(), &Cancel::new()).is_err());
    let mut lying = good.clone();
    lying[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(Model::read_glb(&lying, &Limits::default(), &Cancel::new()).is_err());
    let limits = Limits { max_json: 100, ..Limits::default() };
    let error = Model::read_glb(&good, &limits, &Cancel::new()).expect_err("json");
    assert!(matches!(error, FormatError::TooLarge { what: "JSON bytes", .. }));
    let limits = Limits { max_input: 100, ..Limits::default() };
    assert!(Model::read_glb(&good, &limits, &Cancel::new()).is_err());
    assert!(Model::read_glb(b"{\"asset\":{}}", &Limits::default(), &Cancel::new()).is_err());
}

#[test]
fn draco_and_unknown_required_extensions_are_unsupported() {
    let (mut json, bin) = triangle();
    json["extensionsRequired"] = json!(["KHR_draco_mesh_compression"]);
    json["extensionsUsed"] = json!(["KHR_draco_mesh_compression"]);
    let error = read(&json, &bin).expect_err("draco");
    assert_eq!(error.code(), "model_unsupported");
    assert!(error.to_string().contains("Draco"), "{error}");
    // Used but not required, with the attributes only in Draco's compressed form.
    json["extensionsRequired"] = json!([]);
    json["accessors"][0].as_object_mut().expect("accessor").remove("bufferView");
    let error = read(&json, &bin).expect_err("draco without fallback");
    assert_eq!(error.code(), "model_unsupported", "{error}");
    let (mut json, bin) = triangle();
    json["extensionsRequired"] = json!(["KHR_texture_transform"]);
    json["extensionsUsed"] = json!(["KHR_texture_transform"]);
    let error = read(&json, &bin).expect_err("unknown");
    assert!(error.to_string().contains("KHR_texture_transform"), "{error}");
    // Understood ones pass gltf-json's validator, which does not know them.
    json["extensionsRequired"] = json!(["KHR_mesh_quantization"]);
    json["extensionsUsed"] = json!(["KHR_mesh_quantization"]);
    assert!(read(&json, &bin).is_ok());
}

/// The triangle with a material whose base colour texture is `texture`, and the PNG
/// bytes `image` appended to the BIN chunk as image 0.
fn textured(texture: Value, image: &[u8], mime: Option<&str>) -> (Value, Vec<u8>) {
    let (mut json, mut bin) = triangle();
    let offset = bin.len();
    bin.extend_from_slice(image);
    json["buffers"][0]["byteLength"] = json!(bin.len());
    json["bufferViews"]
        .as_array_mut()
        .expect("array")
        .push(json!({"buffer": 0, "byteOffset": offset, "byteLength": image.len()}));
    let mut image_json = json!({"bufferView": 2});
    if let Some(mime) = mime {
        image_json["mimeType"] = json!(mime);
    }
    json["images"] = json!([image_json]);
    json["textures"] = json!([texture]);
    json["materials"] = json!([{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0},
        "metallicFactor": 0.25}, "doubleSided": true, "alphaMode": "MASK"}]);
    json["meshes"][0]["primitives"][0]["material"] = json!(0);
    (json, bin)
}

/// PNG's chunk checksum, so a forged header passes the decoder's CRC check.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png(width: u32, height: u32) -> Vec<u8> {
    crate::texture::encode_png(&image::RgbaImage::new(width, height)).expect("png")
}

#[test]
fn materials_and_textures_are_read() {
    let (mut json, bin) = textured(json!({"source": 0, "sampler": 0}), &png(4, 2), Some("image/png"));
    json["samplers"] = json!([{"wrapS": 33071, "wrapT": 33648, "magFilter": 9729}]);
    let model = read(&json, &bin).expect("read");
    let material = &model.materials[0];
    assert_eq!(material.metallic_factor, 0.25);
    assert_eq!(material.roughness_factor, 1.0);
    assert!(material.double_sided);
    assert_eq!(material.alpha_mode, AlphaMode::Mask);
    let texture = &model.textures[material.base_color_texture.expect("texture")];
    assert_eq!((texture.width, texture.height), (4, 2));
    assert_eq!(texture.sampler.wrap_s, Wrap::ClampToEdge);
    assert_eq!(texture.sampler.wrap_t, Wrap::MirroredRepeat);
    assert_eq!(texture.sampler.mag_filter, Some(9729));
    assert_eq!(model.parts[0].material, Some(0));
}

#[test]
fn webp_textures_are_found_through_their_extension() {
    let mut webp = Vec::new();
    image::RgbaImage::new(3, 3).write_to(&mut std::io::Cursor::new(&mut webp), image::ImageFormat::WebP).expect("webp");
    let (mut json, bin) =
        textured(json!({"extensions": {"EXT_texture_webp": {"source": 0}}}), &webp, Some("image/webp"));
    json["extensionsUsed"] = json!(["EXT_texture_webp"]);
    json["extensionsRequired"] = json!(["EXT_texture_webp"]);
    let model = read(&json, &bin).expect("read");
    let texture = &model.textures[0];
    assert_eq!(texture.format, crate::ImageFormat::Webp);
    json["extensionsRequired"] = json!([]);
    let estimated = estimate(&glb(&json, &bin), &Limits::default()).expect("estimate");
    assert!(estimated.needs_extensions, "a WebP texture needs its extension, required or not");
    json["extensionsRequired"] = json!(["EXT_texture_webp"]);
    assert!(crate::texture::decode(texture).is_ok());

    json["textures"][0]["extensions"]["EXT_texture_webp"]["source"] = json!(5);
    let error = read(&json, &bin).expect_err("bad source");
    assert_eq!(error.code(), "model_unreadable");
}

#[test]
fn ktx2_textures_are_dropped_with_a_note() {
    let (mut json, bin) = textured(
        json!({"extensions": {"KHR_texture_basisu": {"source": 0}}}),
        b"\xabKTX 20\xbb\r\n\x1a\n",
        Some("image/ktx2"),
    );
    json["extensionsUsed"] = json!(["KHR_texture_basisu"]);
    json["extensionsRequired"] = json!(["KHR_texture_basisu"]);
    let model = read(&json, &bin).expect("read");
    assert!(model.textures.is_empty());
    assert_eq!(model.materials[0].base_color_texture, None);
    assert_eq!(model.notes.len(), 1, "{:?}", model.notes);
    assert!(model.notes[0].contains("KTX2"));
}

#[test]
fn hostile_images_are_refused_before_decoding() {
    // A PNG header that claims 60 000 × 60 000 pixels.
    let mut huge = png(1, 1);
    huge[16..20].copy_from_slice(&60_000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&60_000u32.to_be_bytes());
    let crc = crc32(&huge[12..29]);
    huge[29..33].copy_from_slice(&crc.to_be_bytes());
    let (json, bin) = textured(json!({"source": 0}), &huge, Some("image/png"));
    let error = read(&json, &bin).expect_err("huge");
    assert_eq!(error.code(), "model_too_large", "{error}");
    assert!(estimate(&glb(&json, &bin), &Limits::default()).is_err());

    // No mimeType (gltf's own Image::source would unwrap it): sniffed from the bytes.
    let (json, bin) = textured(json!({"source": 0}), &png(2, 2), None);
    assert!(read(&json, &bin).is_ok());

    let (json, bin) = textured(json!({"source": 0}), b"GIF89a....", Some("image/gif"));
    assert_eq!(read(&json, &bin).expect_err("gif").code(), "model_unsupported");

    let (mut json, bin) = textured(json!({"source": 0}), &png(2, 2), Some("image/png"));
    json["images"][0] = json!({"uri": "texture.png"});
    assert_eq!(read(&json, &bin).expect_err("uri").code(), "model_unsupported");
}

#[test]
fn quantized_attributes_are_dequantized() {
    // u16 positions (KHR_mesh_quantization), i8 normalized normals, u16 normalized UVs.
    let mut bin = Vec::new();
    for p in [[0u16, 0, 0, 0], [1000, 0, 0, 0], [0, 1000, 0, 0]] {
        bin.extend(p.iter().flat_map(|c| c.to_le_bytes()));
    }
    for _ in 0..3 {
        bin.extend([0u8, 0, 127, 0]);
    }
    for uv in [[0u16, 0], [65535, 0], [0, 65535]] {
        bin.extend(uv.iter().flat_map(|c| c.to_le_bytes()));
    }
    let json = json!({
        "asset": {"version": "2.0"},
        "extensionsUsed": ["KHR_mesh_quantization"],
        "extensionsRequired": ["KHR_mesh_quantization"],
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "scale": [0.001, 0.001, 0.001]}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "NORMAL": 1, "TEXCOORD_0": 2}}]}],
        "accessors": [
            {"bufferView": 0, "componentType": 5123, "count": 3, "type": "VEC3",
             "min": [0, 0, 0], "max": [1000, 1000, 0]},
            {"bufferView": 1, "componentType": 5120, "normalized": true, "count": 3, "type": "VEC3"},
            {"bufferView": 2, "componentType": 5123, "normalized": true, "count": 3, "type": "VEC2"}
        ],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": 24, "byteStride": 8},
            {"buffer": 0, "byteOffset": 24, "byteLength": 12, "byteStride": 4},
            {"buffer": 0, "byteOffset": 36, "byteLength": 12}
        ],
        "buffers": [{"byteLength": 48}]
    });
    let model = read(&json, &bin).expect("read");
    let part = &model.parts[0];
    assert_eq!(part.indices, vec![0, 1, 2]);
    assert!((part.positions[1][0] - 1.0).abs() < 1e-6, "{:?}", part.positions);
    assert_eq!(part.normals.as_ref().expect("normals")[0], [0.0, 0.0, 1.0]);
    assert_eq!(part.uvs.as_ref().expect("uvs")[2], [0.0, 1.0]);
}

/// The triangle with its positions and indices stored through EXT_meshopt_compression,
/// decoded into a fallback buffer without data.
fn meshopt_triangle() -> (Value, Vec<u8>) {
    let positions: Vec<[f32; 3]> = vec![[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
    let vertices = ::meshopt::encode_vertex_buffer(&positions).expect("encode");
    let indices = ::meshopt::encode_index_buffer(&[0, 1, 2], 3).expect("encode");
    let mut bin = vertices.clone();
    while !bin.len().is_multiple_of(4) {
        bin.push(0);
    }
    let index_offset = bin.len();
    bin.extend_from_slice(&indices);
    let json = json!({
        "asset": {"version": "2.0"},
        "extensionsUsed": ["EXT_meshopt_compression"],
        "extensionsRequired": ["EXT_meshopt_compression"],
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
             "min": [0, 0, 0], "max": [1, 1, 0]},
            {"bufferView": 1, "componentType": 5125, "count": 3, "type": "SCALAR"}
        ],
        "bufferViews": [
            {"buffer": 1, "byteOffset": 0, "byteLength": 36, "byteStride": 12,
             "extensions": {"EXT_meshopt_compression": {"buffer": 0, "byteOffset": 0,
                "byteLength": vertices.len(), "byteStride": 12, "count": 3,
                "mode": "ATTRIBUTES"}}},
            {"buffer": 1, "byteOffset": 36, "byteLength": 12,
             "extensions": {"EXT_meshopt_compression": {"buffer": 0,
                "byteOffset": index_offset, "byteLength": indices.len(), "byteStride": 4,
                "count": 3, "mode": "TRIANGLES"}}}
        ],
        "buffers": [
            {"byteLength": bin.len()},
            {"byteLength": 48, "extensions": {"EXT_meshopt_compression": {"fallback": true}}}
        ]
    });
    (json, bin)
}

#[test]
fn meshopt_views_are_decoded() {
    let (json, bin) = meshopt_triangle();
    let model = read(&json, &bin).expect("read");
    assert_eq!(model.parts[0].positions[1], [1.0, 0.0, 0.0]);
    assert_eq!(model.parts[0].positions[2], [0.0, 1.0, 0.0]);
    assert_eq!(model.parts[0].indices, vec![0, 1, 2]);
}

#[test]
fn lying_meshopt_views_are_refused() {
    let (mut json, bin) = meshopt_triangle();
    json["bufferViews"][0]["extensions"]["EXT_meshopt_compression"]["count"] = json!(1_000_000);
    assert_eq!(read(&json, &bin).expect_err("count").code(), "model_unreadable");
    let (mut json, bin) = meshopt_triangle();
    json["bufferViews"][0]["extensions"]["EXT_meshopt_compression"]["byteOffset"] = json!(1u64 << 40);
    assert!(read(&json, &bin).is_err());
    // Corrupt compressed bytes: the decoder's return code is an error.
    let (json, mut bin) = meshopt_triangle();
    bin[1] ^= 0xff;
    bin[0] = 0x00;
    assert!(read(&json, &bin).is_err());
    // Reading the fallback buffer itself (no meshopt extension on the view) is refused.
    let (mut json, bin) = meshopt_triangle();
    json["bufferViews"][0]["extensions"] = json!({});
    assert!(read(&json, &bin).is_err());
    // More decoded bytes than the memory limit allows.
    let (json, bin) = meshopt_triangle();
    let limits = Limits { max_memory: 60, ..Limits::default() };
    let error = Model::read_glb(&glb(&json, &bin), &limits, &Cancel::new()).expect_err("memory");
    assert_eq!(error.code(), "model_too_large");
}

#[test]
fn strips_and_fans_become_lists() {
    use gltf::mesh::Mode;
    assert_eq!(triangle_list(Mode::TriangleStrip, vec![0, 1, 2, 3]).expect("strip"), vec![0, 1, 2, 2, 1, 3]);
    assert_eq!(triangle_list(Mode::TriangleFan, vec![0, 1, 2, 3]).expect("fan"), vec![0, 1, 2, 0, 2, 3]);
    assert!(triangle_list(Mode::Triangles, vec![0, 1]).is_err());
}

#[test]
fn a_set_cancel_stops_reading() {
    let (glb, _) = relief_glb();
    let cancel = Cancel::new();
    cancel.cancel();
    let error = Model::read_glb(&glb, &Limits::default(), &cancel).expect_err("cancelled");
    assert!(matches!(error, FormatError::Cancelled));
}

#[test]
fn many_textures_of_one_image_cannot_multiply_its_bytes() {
    // A PNG of noise, which does not compress: about 16 KiB.
    let noise = image::RgbaImage::from_fn(64, 64, |x, y| {
        let h = (x * 7919 + y * 104_729).wrapping_mul(2_654_435_761);
        image::Rgba(h.to_le_bytes())
    });
    let noise = crate::texture::encode_png(&noise).expect("png");
    let (mut json, bin) = textured(json!({"source": 0}), &noise, Some("image/png"));
    // Two hundred textures with their own samplers, all showing image 0, each used.
    json["samplers"] = json!(vec![json!({"wrapS": 33071}); 200]);
    json["textures"] = json!((0..200).map(|i| json!({"source": 0, "sampler": i})).collect::<Vec<_>>());
    json["materials"] = json!(
        (0..200).map(|i| json!({"pbrMetallicRoughness": {"baseColorTexture": {"index": i}}})).collect::<Vec<_>>()
    );
    let error = read(&json, &bin).err();
    assert!(matches!(error, Some(FormatError::TooLarge { what: "texture bytes", .. })), "{error:?}");
}

#[test]
fn many_empty_primitives_are_counted_as_parts() {
    let (mut json, bin) = triangle();
    let primitive = json["meshes"][0]["primitives"][0].clone();
    json["meshes"][0]["primitives"] = json!(vec![primitive; 50]);
    json["scenes"][0]["nodes"] = json!(vec![0; 50]);
    let limits = Limits { max_nodes: 1000, ..Limits::default() };
    let error = Model::read_glb(&glb(&json, &bin), &limits, &Cancel::new()).expect_err("parts");
    assert!(matches!(error, FormatError::TooLarge { what: "mesh parts", .. }), "{error}");
}
