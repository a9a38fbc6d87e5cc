//! The compressed GLB decoded independently of the crate's reader: its JSON parsed with
//! serde_json, each `EXT_meshopt_compression` view decoded with meshoptimizer's
//! decoders and filters, the node's translation and scale applied. The result must hold
//! the same triangles as the model, every position within half a quantization step,
//! every UV within half a UV step and every normal within a few degrees; the attribute
//! streams must be bitstream version 0 (as the extension requires), and writing twice
//! must give the same bytes.

mod generated;

use std::collections::HashMap;

use formats::write::CompressOptions;
use formats::{AlphaMode, Cancel, ImageFormat, Model, Part, PreviewOptions};
use serde_json::Value;

/// A decoded compressed GLB: the parts in model space, plus what the file said.
struct Decoded {
    parts: Vec<Part>,
    translation: [f32; 3],
    scale: f32,
    attribute_headers: Vec<u8>,
    index_headers: Vec<u8>,
    json: Value,
}

fn compress(model: &Model, options: &CompressOptions) -> Vec<u8> {
    let mut bytes = Vec::new();
    formats::write::meshopt_glb(model, &mut bytes, options, &Cancel::new()).expect("meshopt GLB");
    bytes
}

fn decode(glb: &[u8]) -> Decoded {
    let glb = gltf::binary::Glb::from_slice(glb).expect("a GLB container");
    let json: Value = serde_json::from_slice(&glb.json).expect("JSON");
    let bin = glb.bin.expect("a BIN chunk");
    let node = &json["nodes"][0];
    let translation = [0, 1, 2].map(|k| node["translation"][k].as_f64().expect("translation") as f32);
    let scale = node["scale"][0].as_f64().expect("scale") as f32;
    assert_eq!(node["scale"][0], node["scale"][1], "a uniform scale");
    assert_eq!(node["scale"][0], node["scale"][2], "a uniform scale");
    let mut decoded = Decoded {
        parts: Vec::new(),
        translation,
        scale,
        attribute_headers: Vec::new(),
        index_headers: Vec::new(),
        json: json.clone(),
    };
    let stream = |accessor: &Value| -> (&[u8], usize, usize, String, Option<String>) {
        let view = &json["bufferViews"][accessor["bufferView"].as_u64().expect("a view") as usize];
        assert_eq!(view["buffer"], 1, "uncompressed layout in the fallback buffer");
        let ext = &view["extensions"]["EXT_meshopt_compression"];
        assert_eq!(ext["buffer"], 0, "compressed data in the BIN chunk");
        let offset = ext["byteOffset"].as_u64().expect("offset") as usize;
        let length = ext["byteLength"].as_u64().expect("length") as usize;
        let count = ext["count"].as_u64().expect("count") as usize;
        let stride = ext["byteStride"].as_u64().expect("stride") as usize;
        assert_eq!(view["byteLength"].as_u64(), Some((count * stride) as u64));
        assert_eq!(count as u64, accessor["count"].as_u64().expect("count"));
        (
            &bin[offset..offset + length],
            count,
            stride,
            ext["mode"].as_str().expect("mode").to_string(),
            ext["filter"].as_str().map(str::to_string),
        )
    };
    for primitive in json["meshes"][0]["primitives"].as_array().expect("primitives") {
        let attributes = &primitive["attributes"];
        let accessor =
            |name: &str| attributes.get(name).map(|i| &json["accessors"][i.as_u64().expect("index") as usize]);
        let mut part = Part::default();

        let position = accessor("POSITION").expect("positions");
        let (data, count, stride, mode, filter) = stream(position);
        assert_eq!((stride, mode.as_str(), filter), (8, "ATTRIBUTES", None));
        assert_eq!(position["componentType"], 5123);
        decoded.attribute_headers.push(data[0]);
        let quantized: Vec<[u16; 4]> = meshopt::decode_vertex_buffer(data, count).expect("positions decode");
        part.positions =
            quantized.iter().map(|q| [0, 1, 2].map(|k| translation[k] + scale * f32::from(q[k]))).collect();
        let max: Vec<f64> = (0..3).map(|k| quantized.iter().map(|q| f64::from(q[k])).fold(0.0, f64::max)).collect();
        assert_eq!(position["max"], serde_json::json!(max), "accessor max in quantized units");

        if let Some(normal) = accessor("NORMAL") {
            let (data, count, stride, mode, filter) = stream(normal);
            assert_eq!((stride, mode.as_str(), filter.as_deref()), (4, "ATTRIBUTES", Some("OCTAHEDRAL")));
            assert_eq!((normal["componentType"].as_u64(), normal["normalized"].as_bool()), (Some(5120), Some(true)));
            decoded.attribute_headers.push(data[0]);
            let mut octahedral: Vec<[i8; 4]> = meshopt::decode_vertex_buffer(data, count).expect("normals decode");
            meshopt::decode_filter_oct(&mut octahedral);
            part.normals = Some(octahedral.iter().map(|n| [0, 1, 2].map(|k| f32::from(n[k]) / 127.0)).collect());
        }
        if let Some(uv) = accessor("TEXCOORD_0") {
            let (data, count, stride, mode, filter) = stream(uv);
            assert_eq!((stride, mode.as_str(), filter), (4, "ATTRIBUTES", None));
            assert_eq!((uv["componentType"].as_u64(), uv["normalized"].as_bool()), (Some(5123), Some(true)));
            decoded.attribute_headers.push(data[0]);
            let stored: Vec<[u16; 2]> = meshopt::decode_vertex_buffer(data, count).expect("UVs decode");
            part.uvs = Some(stored.iter().map(|uv| uv.map(|c| f32::from(c) / 65535.0)).collect());
        }
        if let Some(colour) = accessor("COLOR_0") {
            let (data, count, _, _, _) = stream(colour);
            decoded.attribute_headers.push(data[0]);
            let stored: Vec<[u8; 4]> = meshopt::decode_vertex_buffer(data, count).expect("colours decode");
            part.colors = Some(stored.iter().map(|c| c.map(|k| f32::from(k) / 255.0)).collect());
        }
        let indices = &json["accessors"][primitive["indices"].as_u64().expect("indices") as usize];
        let (data, count, stride, mode, _) = stream(indices);
        assert_eq!(mode, "TRIANGLES");
        decoded.index_headers.push(data[0]);
        part.indices = if stride == 2 {
            assert_eq!(indices["componentType"], 5123);
            meshopt::decode_index_buffer::<u16>(data, count)
                .expect("indices decode")
                .into_iter()
                .map(u32::from)
                .collect()
        } else {
            assert_eq!(indices["componentType"], 5125);
            meshopt::decode_index_buffer::<u32>(data, count).expect("indices decode")
        };
        assert!(part.indices.iter().all(|&i| (i as usize) < part.positions.len()));
        part.material = primitive["material"].as_u64().map(|m| m as usize);
        decoded.parts.push(part);
    }
    decoded
}

/// Each triangle as its corners' grid cells, rotated (not sorted: winding counts).
fn cells(part: &Part, translation: [f32; 3], step: f32) -> Vec<([[i64; 3]; 3], [usize; 3])> {
    let cell = |p: [f32; 3]| [0, 1, 2].map(|k| ((p[k] - translation[k]) / step).round() as i64);
    part.indices
        .chunks_exact(3)
        .map(|t| {
            let corners = [0, 1, 2].map(|k| cell(part.positions[t[k] as usize]));
            // The smallest rotation as a whole, so that corners on one cell still agree.
            let first = (0..3).min_by_key(|&r| [0, 1, 2].map(|k| corners[(r + k) % 3])).unwrap_or(0);
            let rotate = |k: usize| (first + k) % 3;
            ([0, 1, 2].map(|k| corners[rotate(k)]), [0, 1, 2].map(|k| t[rotate(k)] as usize))
        })
        .collect()
}

/// Asserts `decoded` holds `model`'s triangles with its attributes within quantization
/// error.
fn assert_matches(model: &Model, decoded: &Decoded, options: &CompressOptions) {
    let step = decoded.scale;
    let (min, max) = model.bounds().expect("a model with triangles");
    assert_eq!(decoded.translation, min);
    let extent = (0..3).map(|k| max[k] - min[k]).fold(0.0f32, f32::max);
    assert!((step - extent / ((1u32 << options.position_bits) - 1) as f32).abs() <= step * 1e-6);
    let uv_tolerance = 0.5 / (1u32 << options.uv_bits) as f32 + 1.0 / 65536.0 + 1e-6;
    // 8-bit octahedral normals are within about 1°: allow 3°, doubling per bit less.
    let normal_cosine = (3.0f32 * (1u32 << (8 - options.normal_bits)) as f32).to_radians().cos();
    let parts: Vec<&Part> = model.parts.iter().filter(|p| !p.indices.is_empty()).collect();
    assert_eq!(decoded.parts.len(), parts.len());
    for (original, decoded_part) in parts.iter().zip(&decoded.parts) {
        assert_eq!(original.indices.len(), decoded_part.indices.len(), "same triangle count");
        assert_eq!(original.material, decoded_part.material);
        // Every decoded position lies on the grid point nearest its original.
        let mut by_cells: HashMap<[[i64; 3]; 3], Vec<[usize; 3]>> = HashMap::new();
        for (key, corners) in cells(original, decoded.translation, step) {
            by_cells.entry(key).or_default().push(corners);
        }
        for (key, corners) in cells(decoded_part, decoded.translation, step) {
            let candidates =
                by_cells.get_mut(&key).unwrap_or_else(|| panic!("a decoded triangle {key:?} not in the model"));
            // Among triangles on the same cells (rare), the one whose attributes match.
            let found = candidates.iter().position(|original_corners| {
                (0..3).all(|k| {
                    let (o, d) = (original_corners[k], corners[k]);
                    let p_ok = (0..3).all(|a| {
                        (original.positions[o][a] - decoded_part.positions[d][a]).abs() <= step * 0.5 + step * 1e-3
                    });
                    let uv_ok = match (&original.uvs, &decoded_part.uvs) {
                        (Some(a), Some(b)) => (0..2).all(|c| (a[o][c] - b[d][c]).abs() <= uv_tolerance),
                        (None, None) => true,
                        _ => false,
                    };
                    let n_ok = match (&original.normals, &decoded_part.normals) {
                        (Some(a), Some(b)) => {
                            let (a, b) = (a[o], b[d]);
                            let la = (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt();
                            let lb = (b[0] * b[0] + b[1] * b[1] + b[2] * b[2]).sqrt();
                            (a[0] * b[0] + a[1] * b[1] + a[2] * b[2]) / (la * lb) >= normal_cosine
                        }
                        (None, None) => true,
                        _ => false,
                    };
                    let colour_ok = match (&original.colors, &decoded_part.colors) {
                        (Some(a), Some(b)) => (0..4).all(|c| (a[o][c] - b[d][c]).abs() <= 0.5 / 255.0 + 1e-6),
                        (None, None) => true,
                        _ => false,
                    };
                    p_ok && uv_ok && n_ok && colour_ok
                })
            });
            let found = found.unwrap_or_else(|| {
                let o = candidates[0];
                let describe = |part: &Part, v: usize| {
                    format!(
                        "p {:?} n {:?} uv {:?} c {:?}",
                        part.positions[v],
                        part.normals.as_ref().map(|n| n[v]),
                        part.uvs.as_ref().map(|n| n[v]),
                        part.colors.as_ref().map(|n| n[v])
                    )
                };
                let lines: Vec<String> = (0..3)
                    .map(|k| format!("{} / {}", describe(original, o[k]), describe(decoded_part, corners[k])))
                    .collect();
                panic!("triangle {key:?}: attributes differ beyond quantization (step {step}):\n{}", lines.join("\n"))
            });
            candidates.swap_remove(found);
        }
    }
}

fn models() -> Vec<(&'static str, Model)> {
    use generated::*;
    vec![
        ("png", textured(sphere(48, 24, 0.5), ImageFormat::Png, 64, AlphaMode::Opaque)),
        ("two-parts", two_parts()),
        ("trellis-like", trellis_like(20_000, 128)),
        ("u32-indices", textured(sphere(300, 240, 0.5), ImageFormat::Jpeg, 32, AlphaMode::Opaque)),
    ]
}

#[test]
fn the_compressed_glb_decodes_to_the_model_within_quantization_error() {
    for options in [
        CompressOptions::default(),
        CompressOptions { position_bits: 10, uv_bits: 8, normal_bits: 6, texture_side: 64 },
    ] {
        for (name, model) in models() {
            let decoded = decode(&compress(&model, &options));
            assert_matches(&model, &decoded, &options);
            // Bitstream version 0 is `0xa0`; index streams are version 1 (`0xe1`), as
            // the extension specifies.
            assert!(decoded.attribute_headers.iter().all(|&h| h == 0xa0), "{name}: {:x?}", decoded.attribute_headers);
            assert!(decoded.index_headers.iter().all(|&h| h == 0xe1), "{name}: {:x?}", decoded.index_headers);
            let required = decoded.json["extensionsRequired"].as_array().cloned().unwrap_or_default();
            assert!(required.contains(&"EXT_meshopt_compression".into()), "{name}");
            assert!(required.contains(&"KHR_mesh_quantization".into()), "{name}");
        }
    }
}

#[test]
fn writing_twice_gives_the_same_bytes() {
    for (name, model) in models() {
        let first = compress(&model, &CompressOptions::default());
        assert_eq!(first, compress(&model, &CompressOptions::default()), "{name}");
    }
}

#[test]
fn a_tiling_uv_keeps_floats_with_the_exponential_filter() {
    let mut model = generated::textured(generated::sphere(16, 8, 0.5), ImageFormat::Jpeg, 16, AlphaMode::Opaque);
    if let Some(uvs) = model.parts[0].uvs.as_mut() {
        uvs.iter_mut().for_each(|uv| uv[0] *= 3.0);
    }
    let glb = compress(&model, &CompressOptions::default());
    let json: Value = serde_json::from_slice(&gltf::binary::Glb::from_slice(&glb).expect("GLB").json).expect("JSON");
    let uv = &json["accessors"]
        [json["meshes"][0]["primitives"][0]["attributes"]["TEXCOORD_0"].as_u64().expect("uv") as usize];
    assert_eq!(uv["componentType"], 5126);
    let view = &json["bufferViews"][uv["bufferView"].as_u64().expect("view") as usize];
    assert_eq!(view["extensions"]["EXT_meshopt_compression"]["filter"], "EXPONENTIAL");
    let ext = &view["extensions"]["EXT_meshopt_compression"];
    let bin = gltf::binary::Glb::from_slice(&glb).expect("GLB").bin.expect("BIN");
    let offset = ext["byteOffset"].as_u64().expect("offset") as usize;
    let data = &bin[offset..offset + ext["byteLength"].as_u64().expect("length") as usize];
    let count = ext["count"].as_u64().expect("count") as usize;
    let mut values: Vec<[u32; 2]> = meshopt::decode_vertex_buffer(data, count).expect("decode");
    meshopt::decode_filter_exp(&mut values);
    let decoded: Vec<[f32; 2]> = values.iter().map(|v| v.map(f32::from_bits)).collect();
    // The sphere's two pole corners are unused: the writer drops them.
    let part = &model.parts[0];
    let mut used: Vec<u32> = part.indices.clone();
    used.sort();
    used.dedup();
    let originals: Vec<[f32; 2]> = used.iter().map(|&v| part.uvs.as_ref().expect("uvs")[v as usize]).collect();
    // The filter keeps 16 bits below the largest magnitude (3): steps of 2^-14 in u,
    // which shares its exponent, and of 2^-15 in v.
    let close =
        |a: &[f32; 2], b: &[f32; 2]| (a[0] - b[0]).abs() <= 1.0 / 32768.0 && (a[1] - b[1]).abs() <= 1.0 / 65536.0;
    assert_eq!(decoded.len(), originals.len());
    for uv in &decoded {
        assert!(originals.iter().any(|o| close(o, uv)), "{uv:?} is not a model UV");
    }
    for uv in &originals {
        assert!(decoded.iter().any(|d| close(d, uv)), "{uv:?} was lost");
    }
}

#[test]
fn an_opaque_png_base_colour_becomes_jpeg_only_when_smaller() {
    // A noisy opaque PNG: JPEG is much smaller.
    let mut model = generated::textured(generated::sphere(16, 8, 0.5), ImageFormat::Png, 256, AlphaMode::Opaque);
    let noisy = image::RgbaImage::from_fn(256, 256, |x, y| {
        let h = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(2_246_822_519);
        image::Rgba([(h >> 8) as u8, (h >> 16) as u8, (x + y) as u8, 255])
    });
    model.textures[0].bytes = generated::encode(&noisy, ImageFormat::Png);
    let mime = |glb: &[u8]| -> String {
        let json: Value = serde_json::from_slice(&gltf::binary::Glb::from_slice(glb).expect("GLB").json).expect("JSON");
        json["images"][0]["mimeType"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(mime(&compress(&model, &CompressOptions::default())), "image/jpeg");

    // The same picture with alpha a MASK material reads stays PNG.
    let translucent = image::RgbaImage::from_fn(256, 256, |x, y| {
        let mut p = *noisy.get_pixel(x, y);
        p.0[3] = if x < 128 { 0 } else { 255 };
        p
    });
    model.textures[0].bytes = generated::encode(&translucent, ImageFormat::Png);
    model.materials[0].alpha_mode = AlphaMode::Mask;
    assert_eq!(mime(&compress(&model, &CompressOptions::default())), "image/png");

    // A flat PNG is smaller than its JPEG: it stays PNG.
    let flat = image::RgbaImage::from_pixel(256, 256, image::Rgba([200, 100, 50, 255]));
    model.textures[0].bytes = generated::encode(&flat, ImageFormat::Png);
    model.materials[0].alpha_mode = AlphaMode::Opaque;
    assert_eq!(mime(&compress(&model, &CompressOptions::default())), "image/png");
}

#[test]
fn textures_are_capped_to_the_texture_side() {
    let model = generated::textured(generated::sphere(16, 8, 0.5), ImageFormat::Jpeg, 256, AlphaMode::Opaque);
    let options = CompressOptions { texture_side: 100, ..CompressOptions::default() };
    let mut bytes = Vec::new();
    let summary = formats::write::meshopt_glb(&model, &mut bytes, &options, &Cancel::new()).expect("GLB");
    assert!(summary.notes.iter().any(|n| n.contains("256x256 to 100x100")), "{:?}", summary.notes);
    let glb = gltf::binary::Glb::from_slice(&bytes).expect("GLB");
    let json: Value = serde_json::from_slice(&glb.json).expect("JSON");
    let view = &json["bufferViews"][json["images"][0]["bufferView"].as_u64().expect("view") as usize];
    let offset = view["byteOffset"].as_u64().unwrap_or(0) as usize;
    let length = view["byteLength"].as_u64().expect("length") as usize;
    let bin = glb.bin.expect("BIN");
    let image = image::load_from_memory(&bin[offset..offset + length]).expect("an image");
    assert_eq!((image.width(), image.height()), (100, 100));
}

#[test]
fn the_decoded_model_renders_like_the_original() {
    let model = generated::textured(generated::sphere(64, 32, 0.5), ImageFormat::Jpeg, 128, AlphaMode::Opaque);
    let decoded = decode(&compress(&model, &CompressOptions::default()));
    let rebuilt = Model { parts: decoded.parts, ..model.clone() };
    let options = PreviewOptions { size: 128 };
    let a = formats::preview(&model, &options, &Cancel::new()).expect("preview");
    let b = formats::preview(&rebuilt, &options, &Cancel::new()).expect("preview");
    let total: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    let mean = total as f64 / a.as_raw().len() as f64;
    assert!(mean < 1.0, "mean difference {mean} per channel (of 255)");
}

#[test]
fn the_crate_reader_reads_the_compressed_glb_back() {
    for (name, model) in models() {
        let options = CompressOptions::default();
        let glb = compress(&model, &options);
        let read = Model::read_glb(&glb, &formats::Limits::default(), &Cancel::new())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(read.triangles(), model.triangles(), "{name}");
        let ((min, max), (read_min, read_max)) = (model.bounds().expect("bounds"), read.bounds().expect("bounds"));
        let extent = (0..3).map(|k| max[k] - min[k]).fold(0.0f32, f32::max);
        let half_step = extent / ((1u32 << options.position_bits) - 1) as f32 * 0.5;
        for k in 0..3 {
            assert!((min[k] - read_min[k]).abs() <= half_step * 1.01, "{name}: min {min:?} vs {read_min:?}");
            assert!((max[k] - read_max[k]).abs() <= half_step * 1.01, "{name}: max {max:?} vs {read_max:?}");
        }
        // Same attributes present, same materials, per part.
        assert_eq!(read.parts.len(), model.parts.len(), "{name}");
        for (a, b) in model.parts.iter().zip(&read.parts) {
            assert_eq!(
                (a.normals.is_some(), a.uvs.is_some(), a.colors.is_some(), a.material),
                (b.normals.is_some(), b.uvs.is_some(), b.colors.is_some(), b.material),
                "{name}"
            );
        }
        assert_eq!(read.materials.len(), model.materials.len(), "{name}");
        // And the reader's model previews like the original.
        let options = PreviewOptions { size: 96 };
        let a = formats::preview(&model, &options, &Cancel::new()).expect("preview");
        let b = formats::preview(&read, &options, &Cancel::new()).expect("preview");
        let total: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
        let mean = total as f64 / a.as_raw().len() as f64;
        assert!(mean < 2.0, "{name}: mean difference {mean} per channel (textures are re-encoded)");
    }
}
