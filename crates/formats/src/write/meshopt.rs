//! Model → compressed GLB for the viewer: `EXT_meshopt_compression` over quantized
//! attributes (`KHR_mesh_quantization`), laid out as gltfpack does.
//!
//! - Positions: u16 × 4 (stride 8), `position_bits` per axis on one grid for the whole
//!   model; the mesh's node moves and scales them back (`translation` = box minimum,
//!   uniform `scale` = grid step).
//! - Normals: i8 × 4 octahedral (`OCTAHEDRAL` filter).
//! - UVs: u16 × 2 normalized when every UV is within [0, 1], keeping `uv_bits` of
//!   precision in the high bits (the low bits are zero, which compresses well);
//!   otherwise f32 with the `EXPONENTIAL` filter.
//! - Colours: u8 × 4 normalized.
//! - Indices: vertex-cache then vertex-fetch ordered, `TRIANGLES` mode.
//!
//! Attribute streams are encoded with bitstream **version 0**, the only one
//! `EXT_meshopt_compression` allows (header byte `0xa0`); meshoptimizer 1.x writes
//! version 1 unless asked. The uncompressed layout lives in a fallback buffer with no
//! data, so both extensions are required.

use std::collections::BTreeMap;
use std::io::Write;

use gltf_json as json;
use json::validation::{Checked::Valid, USize64};
use serde_json::json as value;

use super::Summary;
use super::glb::{self, Accessor, Document, NodeTransform, TextureRule};
use crate::model::Part;
use crate::{Cancel, FormatError, Model};

/// Quantization and texture settings of the compressed GLB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressOptions {
    /// Bits per position axis, 1–16, on a grid over the model's longest side.
    pub position_bits: u8,
    /// Bits of UV precision, 1–16.
    pub uv_bits: u8,
    /// Bits per octahedral normal component, 2–8.
    pub normal_bits: u8,
    /// Longest texture side.
    pub texture_side: u32,
}

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions { position_bits: 14, uv_bits: 12, normal_bits: 8, texture_side: 2048 }
    }
}

/// JPEG quality of textures re-encoded for the compressed variant.
pub(super) const JPEG_QUALITY: u8 = 85;

const EXTENSION: &str = "EXT_meshopt_compression";
const QUANTIZATION: &str = "KHR_mesh_quantization";

/// meshoptimizer's effort level; version 0 streams ignore it, but it is passed
/// explicitly so a change of default cannot change the bytes.
const ENCODE_LEVEL: i32 = 2;
/// The attribute bitstream version `EXT_meshopt_compression` specifies.
const BITSTREAM_VERSION: i32 = 0;

/// Writes `model` as a meshopt-compressed GLB.
pub fn meshopt_glb<W: Write>(
    model: &Model,
    out: W,
    options: &CompressOptions,
    cancel: &Cancel,
) -> Result<Summary, FormatError> {
    check_options(options)?;
    for part in &model.parts {
        part.check()?;
    }
    let prepared = glb::prepare_textures(model, TextureRule::Compress, Some(options.texture_side), cancel)?;
    let mut document = Document::new();
    let materials = document.materials(model, &prepared.textures);
    let mut fallback = Fallback::default();
    let mut primitives = Vec::new();
    let mut vertices = 0u64;
    let mut transform = NodeTransform::default();
    if let Some((min, max)) = model.bounds() {
        let grid = Grid::new(min, max, options.position_bits);
        transform = NodeTransform { translation: Some(min), scale: Some([grid.step; 3]) };
        for part in &model.parts {
            cancel.check()?;
            if part.indices.is_empty() {
                continue;
            }
            let (primitive, written) = compress_part(part, &grid, options, &mut document, &mut fallback, cancel)?;
            vertices += written;
            primitives.push(json::mesh::Primitive {
                material: part.material.and_then(|m| materials.get(m).copied()),
                ..primitive
            });
        }
    }
    document.scene(primitives, transform);
    // Without a compressed stream (a model with no triangles) neither extension is used.
    let mut extensions = if fallback.length > 0 { vec![EXTENSION, QUANTIZATION] } else { Vec::new() };
    extensions.extend(prepared.extensions);
    document.finish(out, &extensions, Some(fallback.length))?;
    let mut notes = prepared.notes;
    notes.push(format!(
        "positions quantized to {} bits, normals to {} bits, UVs to {} bits",
        options.position_bits, options.normal_bits, options.uv_bits
    ));
    Ok(Summary { triangles: model.triangles(), vertices, notes })
}

fn check_options(options: &CompressOptions) -> Result<(), FormatError> {
    let bad = |what: &str| Err(FormatError::encode(format!("invalid compression option: {what}")));
    if !(1..=16).contains(&options.position_bits) {
        return bad("position_bits must be 1 to 16");
    }
    if !(1..=16).contains(&options.uv_bits) {
        return bad("uv_bits must be 1 to 16");
    }
    // meshoptimizer's octahedral filter stores i8 components with 2 to 8 bits.
    if !(2..=8).contains(&options.normal_bits) {
        return bad("normal_bits must be 2 to 8");
    }
    if options.texture_side == 0 {
        return bad("texture_side must be at least 1");
    }
    Ok(())
}

/// The position grid shared by every part: a cube over the model's box with
/// `2^bits − 1` steps along its longest side.
#[derive(Debug, Clone, Copy)]
struct Grid {
    min: [f32; 3],
    step: f32,
    top: f32,
}

impl Grid {
    fn new(min: [f32; 3], max: [f32; 3], bits: u8) -> Self {
        let top = ((1u32 << bits) - 1) as f32;
        let extent = (0..3).map(|k| max[k] - min[k]).fold(0.0f32, f32::max);
        // A single point (or a flat line at 0 extent) still needs a non-zero scale.
        let step = if extent > 0.0 { extent / top } else { 1.0 };
        Grid { min, step, top }
    }

    fn quantize(&self, p: [f32; 3]) -> [u16; 4] {
        let q = |k: usize| ((p[k] - self.min[k]) / self.step).round().clamp(0.0, self.top) as u16;
        [q(0), q(1), q(2), 0]
    }
}

/// The fallback buffer: room for every uncompressed view, holding no data.
#[derive(Debug, Default)]
struct Fallback {
    length: usize,
}

/// A compressed stream's place in both buffers.
struct Stream<'a> {
    encoded: &'a [u8],
    count: usize,
    stride: usize,
    mode: &'static str,
    filter: Option<&'static str>,
    target: json::buffer::Target,
}

fn push_stream(
    document: &mut Document,
    fallback: &mut Fallback,
    stream: Stream<'_>,
) -> json::Index<json::buffer::View> {
    let offset = document.append(stream.encoded);
    let length = stream.count * stream.stride;
    let fallback_offset = fallback.length;
    fallback.length += length.next_multiple_of(4);
    let mut extension = value!({
        "buffer": 0,
        "byteOffset": offset,
        "byteLength": stream.encoded.len(),
        "byteStride": stream.stride,
        "count": stream.count,
        "mode": stream.mode,
    });
    if let (Some(filter), Some(object)) = (stream.filter, extension.as_object_mut()) {
        object.insert("filter".into(), filter.into());
    }
    let mut others = serde_json::Map::new();
    others.insert(EXTENSION.into(), extension);
    let attributes = stream.mode == "ATTRIBUTES";
    document.root.push(json::buffer::View {
        buffer: json::Index::new(1),
        byte_length: USize64::from(length),
        byte_offset: Some(USize64::from(fallback_offset)),
        // glTF allows byteStride on vertex views only.
        byte_stride: attributes.then_some(json::buffer::Stride(stream.stride)),
        name: None,
        target: Some(Valid(stream.target)),
        extensions: Some(json::extensions::buffer::View { others }),
        extras: Default::default(),
    })
}

fn encode_vertices<T>(stream: &[T]) -> Result<Vec<u8>, FormatError> {
    meshopt::encode_vertex_buffer_level(stream, ENCODE_LEVEL, Some(BITSTREAM_VERSION)).map_err(FormatError::encode)
}

/// Vertex-cache order for the triangles, then vertex-fetch order for the vertices
/// (each vertex numbered by its first use; unused vertices dropped). Returns the new
/// indices and, for each new vertex, the old one.
fn layout(part: &Part) -> (Vec<u32>, Vec<u32>) {
    let cached = meshopt::optimize_vertex_cache(&part.indices, part.positions.len());
    // meshopt's own fetch remap truncates its table when vertices are unused, which
    // its remap functions then read past; numbering by first use is the same order.
    let mut remap = vec![u32::MAX; part.positions.len()];
    let mut order = Vec::new();
    let indices = cached
        .iter()
        .map(|&old| {
            let slot = &mut remap[old as usize];
            if *slot == u32::MAX {
                *slot = order.len() as u32;
                order.push(old);
            }
            *slot
        })
        .collect();
    (indices, order)
}

/// Quantizes, encodes and adds one part; returns its primitive (without material) and
/// the number of vertices written.
fn compress_part(
    part: &Part,
    grid: &Grid,
    options: &CompressOptions,
    document: &mut Document,
    fallback: &mut Fallback,
    cancel: &Cancel,
) -> Result<(json::mesh::Primitive, u64), FormatError> {
    let (indices, order) = layout(part);
    cancel.check()?;
    let count = order.len();
    let mut attributes = BTreeMap::new();

    let positions: Vec<[u16; 4]> = order.iter().map(|&o| grid.quantize(part.positions[o as usize])).collect();
    let mut min = [u16::MAX; 3];
    let mut max = [0u16; 3];
    for p in &positions {
        for k in 0..3 {
            min[k] = min[k].min(p[k]);
            max[k] = max[k].max(p[k]);
        }
    }
    let encoded = encode_vertices(&positions)?;
    let view = push_stream(
        document,
        fallback,
        Stream {
            encoded: &encoded,
            count,
            stride: 8,
            mode: "ATTRIBUTES",
            filter: None,
            target: json::buffer::Target::ArrayBuffer,
        },
    );
    let accessor = document.accessor(Accessor {
        view,
        component: json::accessor::ComponentType::U16,
        kind: json::accessor::Type::Vec3,
        count,
        normalized: false,
        min: Some(min.map(f32::from).to_vec()),
        max: Some(max.map(f32::from).to_vec()),
    });
    attributes.insert(Valid(json::mesh::Semantic::Positions), accessor);
    cancel.check()?;

    if let Some(normals) = &part.normals {
        let unit: Vec<[f32; 4]> = order
            .iter()
            .map(|&o| {
                let n = glb::unit(normals[o as usize]);
                [n[0], n[1], n[2], 0.0]
            })
            .collect();
        let octahedral: Vec<[i8; 4]> = meshopt::encode_filter_oct(&unit, i32::from(options.normal_bits));
        let encoded = encode_vertices(&octahedral)?;
        let view = push_stream(
            document,
            fallback,
            Stream {
                encoded: &encoded,
                count,
                stride: 4,
                mode: "ATTRIBUTES",
                filter: Some("OCTAHEDRAL"),
                target: json::buffer::Target::ArrayBuffer,
            },
        );
        let accessor = document.accessor(Accessor {
            view,
            component: json::accessor::ComponentType::I8,
            kind: json::accessor::Type::Vec3,
            count,
            normalized: true,
            min: None,
            max: None,
        });
        attributes.insert(Valid(json::mesh::Semantic::Normals), accessor);
        cancel.check()?;
    }

    if let Some(uvs) = &part.uvs {
        let used: Vec<[f32; 2]> = order.iter().map(|&o| uvs[o as usize]).collect();
        let inside = used.iter().flatten().all(|c| (0.0..=1.0).contains(c));
        let accessor = if inside {
            let bits = u32::from(options.uv_bits);
            let quantized: Vec<[u16; 2]> = used.iter().map(|uv| uv.map(|c| unorm_high(c, bits))).collect();
            let encoded = encode_vertices(&quantized)?;
            let view = push_stream(
                document,
                fallback,
                Stream {
                    encoded: &encoded,
                    count,
                    stride: 4,
                    mode: "ATTRIBUTES",
                    filter: None,
                    target: json::buffer::Target::ArrayBuffer,
                },
            );
            document.accessor(Accessor {
                view,
                component: json::accessor::ComponentType::U16,
                kind: json::accessor::Type::Vec2,
                count,
                normalized: true,
                min: None,
                max: None,
            })
        } else {
            // Tiling UVs keep floats; the filter shares one exponent per component, so
            // the precision is `uv_bits + 4` bits of the largest magnitude.
            let bits = (i32::from(options.uv_bits) + 4).min(23);
            let filtered: Vec<[u32; 2]> =
                meshopt::encode_filter_exp(&used, bits, meshopt::EncodeExpMode::SharedComponent);
            let encoded = encode_vertices(&filtered)?;
            let view = push_stream(
                document,
                fallback,
                Stream {
                    encoded: &encoded,
                    count,
                    stride: 8,
                    mode: "ATTRIBUTES",
                    filter: Some("EXPONENTIAL"),
                    target: json::buffer::Target::ArrayBuffer,
                },
            );
            document.accessor(Accessor {
                view,
                component: json::accessor::ComponentType::F32,
                kind: json::accessor::Type::Vec2,
                count,
                normalized: false,
                min: None,
                max: None,
            })
        };
        attributes.insert(Valid(json::mesh::Semantic::TexCoords(0)), accessor);
        cancel.check()?;
    }

    if let Some(colors) = &part.colors {
        let quantized: Vec<[u8; 4]> =
            order.iter().map(|&o| colors[o as usize].map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8)).collect();
        let encoded = encode_vertices(&quantized)?;
        let view = push_stream(
            document,
            fallback,
            Stream {
                encoded: &encoded,
                count,
                stride: 4,
                mode: "ATTRIBUTES",
                filter: None,
                target: json::buffer::Target::ArrayBuffer,
            },
        );
        let accessor = document.accessor(Accessor {
            view,
            component: json::accessor::ComponentType::U8,
            kind: json::accessor::Type::Vec4,
            count,
            normalized: true,
            min: None,
            max: None,
        });
        attributes.insert(Valid(json::mesh::Semantic::Colors(0)), accessor);
    }

    // 0xFFFF is glTF's forbidden 16-bit index, so 16 bits hold 65 535 vertices.
    let short = count <= usize::from(u16::MAX);
    let encoded = meshopt::encode_index_buffer(&indices, count).map_err(FormatError::encode)?;
    let view = push_stream(
        document,
        fallback,
        Stream {
            encoded: &encoded,
            count: indices.len(),
            stride: if short { 2 } else { 4 },
            mode: "TRIANGLES",
            filter: None,
            target: json::buffer::Target::ElementArrayBuffer,
        },
    );
    let accessor = document.accessor(Accessor {
        view,
        component: if short { json::accessor::ComponentType::U16 } else { json::accessor::ComponentType::U32 },
        kind: json::accessor::Type::Scalar,
        count: indices.len(),
        normalized: false,
        min: None,
        max: None,
    });
    Ok((glb::primitive(attributes, accessor, None), count as u64))
}

/// `c` in [0, 1] with `bits` of precision, stored in the high bits of a normalized u16:
/// `k · 2^(16 − bits)` for `k = round(c · 2^bits)`, with 1.0 stored as 65 535. The
/// decoded value `stored / 65535` is within half a step plus 1/65 536 of `c`.
fn unorm_high(c: f32, bits: u32) -> u16 {
    let steps = (1u32 << bits) as f32;
    let k = (c * steps).round() as u32;
    (k << (16 - bits)).min(u32::from(u16::MAX)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uv_quantization_keeps_the_ends_and_half_a_step() {
        assert_eq!(unorm_high(0.0, 12), 0);
        assert_eq!(unorm_high(1.0, 12), u16::MAX);
        assert_eq!(unorm_high(1.0, 16), u16::MAX);
        for k in 0..=1000 {
            let c = k as f32 / 1000.0;
            let stored = unorm_high(c, 12);
            assert_eq!(stored & 0xf, if stored == u16::MAX { 0xf } else { 0 });
            let decoded = f32::from(stored) / 65535.0;
            assert!((decoded - c).abs() <= 0.5 / 4096.0 + 1.0 / 65536.0, "{c} → {decoded}");
        }
    }

    #[test]
    fn the_grid_covers_the_box_with_uniform_steps() {
        let grid = Grid::new([-1.0, 0.0, 2.0], [1.0, 0.5, 2.0], 14);
        assert_eq!(grid.quantize([-1.0, 0.0, 2.0]), [0, 0, 0, 0]);
        assert_eq!(grid.quantize([1.0, 0.5, 2.0]), [16383, 4096, 0, 0]);
        let point = Grid::new([3.0; 3], [3.0; 3], 14);
        assert_eq!(point.step, 1.0);
        assert_eq!(point.quantize([3.0; 3]), [0, 0, 0, 0]);
    }

    #[test]
    fn layout_numbers_vertices_by_first_use_and_drops_unused_ones() {
        let part = Part {
            positions: vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [9.0; 3], [1.0, 1.0, 0.0]],
            indices: vec![4, 1, 2, 2, 1, 0],
            ..Part::default()
        };
        let (indices, order) = layout(&part);
        assert_eq!(order.len(), 4, "vertex 3 is unused");
        assert!(!order.contains(&3));
        // The same triangles with the same winding, renumbered.
        let mut before: Vec<[u32; 3]> = part.indices.chunks(3).map(|t| rotated([t[0], t[1], t[2]])).collect();
        let mut after: Vec<[u32; 3]> = indices
            .chunks(3)
            .map(|t| rotated([order[t[0] as usize], order[t[1] as usize], order[t[2] as usize]]))
            .collect();
        before.sort();
        after.sort();
        assert_eq!(before, after);
        // First use order: the first index is vertex 0 of the new numbering.
        assert_eq!(indices[0], 0);
    }

    /// The triangle started at its smallest index, which keeps its winding.
    fn rotated(t: [u32; 3]) -> [u32; 3] {
        let k = (0..3).min_by_key(|&k| t[k]).unwrap_or(0);
        [t[k], t[(k + 1) % 3], t[(k + 2) % 3]]
    }

    #[test]
    fn bad_options_are_refused() {
        for options in [
            CompressOptions { position_bits: 17, ..CompressOptions::default() },
            CompressOptions { normal_bits: 9, ..CompressOptions::default() },
            CompressOptions { uv_bits: 0, ..CompressOptions::default() },
            CompressOptions { texture_side: 0, ..CompressOptions::default() },
        ] {
            assert!(check_options(&options).is_err(), "{options:?}");
        }
        assert!(check_options(&CompressOptions::default()).is_ok());
    }
}
