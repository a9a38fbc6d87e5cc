//! Model → binary little-endian PLY (ply-rs-bw) with vertex colours baked from the base
//! colour: texture sampled bilinearly at each vertex's UV, times the material's factor
//! and any `COLOR_0`. Vertices are written as glTF has them (UV seams stay split).
//!
//! The header goes through ply-rs-bw's writer and every vertex and face through its
//! element writer, one at a time, with our own `Record` as the element type: its generic
//! `DefaultElement` would hold an `IndexMap` per vertex.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{BufWriter, Write};

use ply_rs_bw::ply::{Addable, ElementDef, Encoding, Header, PropertyAccess, PropertyDef, PropertyType, ScalarType};
use ply_rs_bw::writer::Writer;

use super::Summary;
use crate::model::{Material, Part};
use crate::{Cancel, FormatError, Model, texture};

/// One vertex or one face, as the PLY writer asks for its properties by name.
struct Record {
    position: [f32; 3],
    normal: [f32; 3],
    color: [u8; 4],
    face: [u32; 3],
}

impl PropertyAccess for Record {
    fn new() -> Self {
        Record { position: [0.0; 3], normal: [0.0; 3], color: [0; 4], face: [0; 3] }
    }

    fn get_float(&self, name: &str) -> Option<f32> {
        match name {
            "x" => Some(self.position[0]),
            "y" => Some(self.position[1]),
            "z" => Some(self.position[2]),
            "nx" => Some(self.normal[0]),
            "ny" => Some(self.normal[1]),
            "nz" => Some(self.normal[2]),
            _ => None,
        }
    }

    fn get_uchar(&self, name: &str) -> Option<u8> {
        match name {
            "red" => Some(self.color[0]),
            "green" => Some(self.color[1]),
            "blue" => Some(self.color[2]),
            "alpha" => Some(self.color[3]),
            _ => None,
        }
    }

    fn get_list_uint(&self, name: &str) -> Option<&[u32]> {
        (name == "vertex_indices").then_some(&self.face[..])
    }
}

fn header(vertices: u64, triangles: u64, normals: bool) -> Header {
    let scalar = |name: &str, t| PropertyDef::new(name.to_owned(), PropertyType::Scalar(t));
    let mut vertex = ElementDef::new("vertex".to_owned());
    vertex.count = vertices as usize;
    let mut names = vec!["x", "y", "z"];
    if normals {
        names.extend(["nx", "ny", "nz"]);
    }
    for name in names {
        vertex.properties.add(scalar(name, ScalarType::Float));
    }
    for name in ["red", "green", "blue", "alpha"] {
        vertex.properties.add(scalar(name, ScalarType::UChar));
    }
    let mut face = ElementDef::new("face".to_owned());
    face.count = triangles as usize;
    face.properties
        .add(PropertyDef::new("vertex_indices".to_owned(), PropertyType::List(ScalarType::UChar, ScalarType::UInt)));
    let mut header = Header::new();
    header.encoding = Encoding::BinaryLittleEndian;
    header.elements.add(vertex);
    header.elements.add(face);
    header
}

fn srgb_to_linear(c: f32) -> f32 {
    if c <= 0.040_45 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
}

/// Linear 0..1 to an sRGB-encoded byte.
fn srgb_byte(linear: f32) -> u8 {
    (super::obj::linear_to_srgb(linear) * 255.0).round() as u8
}

/// Bakes the base colour of every vertex of `part` as sRGB bytes.
fn colors(
    part: &Part,
    material: &Material,
    image: Option<&(image::RgbaImage, crate::Sampler)>,
    cancel: &Cancel,
) -> Result<Vec<[u8; 4]>, FormatError> {
    let factor = material.base_color_factor;
    let mut out = Vec::with_capacity(part.positions.len());
    for i in 0..part.positions.len() {
        cancel.check_every(i)?;
        let mut linear = factor;
        if let (Some((image, sampler)), Some(uvs)) = (image, &part.uvs) {
            let texel = texture::sample_bilinear(image, sampler, uvs[i]);
            for k in 0..3 {
                linear[k] *= srgb_to_linear(texel[k]);
            }
            linear[3] *= texel[3];
        }
        if let Some(colors) = &part.colors {
            for (k, value) in linear.iter_mut().enumerate() {
                *value *= colors[i][k];
            }
        }
        out.push([
            srgb_byte(linear[0]),
            srgb_byte(linear[1]),
            srgb_byte(linear[2]),
            (linear[3].clamp(0.0, 1.0) * 255.0).round() as u8,
        ]);
    }
    Ok(out)
}

/// Writes `model` as binary little-endian PLY.
pub fn ply<W: Write>(model: &Model, out: W, cancel: &Cancel) -> Result<Summary, FormatError> {
    let (vertices, triangles) = (model.vertices(), model.triangles());
    // Face indices are 32-bit.
    crate::Limits::check("PLY vertices", vertices, u64::from(u32::MAX))?;
    let normals = model.parts.iter().all(|p| p.normals.is_some());
    let header = header(vertices, triangles, normals);
    let writer = Writer::<Record>::new();
    let mut out = BufWriter::new(out);
    writer.write_header(&mut out, &header)?;

    let vertex_def = &header.elements["vertex"];
    let face_def = &header.elements["face"];
    let default = Material::default();
    let mut images: HashMap<usize, (image::RgbaImage, crate::Sampler)> = HashMap::new();
    let mut record = Record::new();
    for part in &model.parts {
        let material = part.material.map_or(&default, |m| &model.materials[m]);
        let image = match material.base_color_texture {
            Some(index) if part.uvs.is_some() => {
                let decoded = match images.entry(index) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let texture = &model.textures[index];
                        entry.insert((texture::decode(texture)?, texture.sampler))
                    }
                };
                Some(&*decoded)
            }
            _ => None,
        };
        let colors = colors(part, material, image, cancel)?;
        for (i, position) in part.positions.iter().enumerate() {
            cancel.check_every(i)?;
            record.position = *position;
            record.normal = part.normals.as_ref().map_or([0.0; 3], |n| n[i]);
            record.color = colors[i];
            writer.write_little_endian_element(&mut out, &record, vertex_def)?;
        }
    }
    let mut base = 0u32;
    for part in &model.parts {
        for (i, t) in part.indices.chunks_exact(3).enumerate() {
            cancel.check_every(i)?;
            record.face = [base + t[0], base + t[1], base + t[2]];
            writer.write_little_endian_element(&mut out, &record, face_def)?;
        }
        base += part.positions.len() as u32;
    }
    out.flush()?;
    let mut notes = Vec::new();
    if !normals && model.parts.iter().any(|p| p.normals.is_some()) {
        notes.push("some parts have no normals, so none were written".into());
    }
    Ok(Summary { triangles, vertices, notes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::cube;
    use crate::model::{ImageFormat, Sampler, Texture};
    use ply_rs_bw::parser::Parser;
    use ply_rs_bw::ply::{DefaultElement, Property};

    /// A cube whose texture is red on the left half, blue on the right; UVs from x.
    fn textured_cube() -> Model {
        let mut part = cube();
        part.uvs = Some(part.positions.iter().map(|p| [p[0] * 0.5 + 0.25, 0.5]).collect());
        part.normals = Some(vec![[0.0, 0.0, 1.0]; 8]);
        part.material = Some(0);
        let image = image::RgbaImage::from_fn(2, 1, |x, _| {
            if x == 0 { image::Rgba([255, 0, 0, 255]) } else { image::Rgba([0, 0, 255, 255]) }
        });
        Model {
            parts: vec![part],
            materials: vec![Material {
                base_color_texture: Some(0),
                base_color_factor: [1.0, 1.0, 1.0, 0.5],
                ..Material::default()
            }],
            textures: vec![Texture {
                bytes: texture::encode_png(&image).expect("png"),
                format: ImageFormat::Png,
                width: 2,
                height: 1,
                sampler: Sampler::default(),
            }],
            notes: Vec::new(),
        }
    }

    #[test]
    fn writes_vertices_with_baked_colours_and_faces() {
        let model = textured_cube();
        let mut out = Vec::new();
        let summary = ply(&model, &mut out, &Cancel::new()).expect("ply");
        assert_eq!((summary.vertices, summary.triangles), (8, 12));
        let text_end = out.windows(11).position(|w| w == b"end_header\n").expect("header");
        let header = String::from_utf8_lossy(&out[..text_end]);
        assert!(header.starts_with("ply\nformat binary_little_endian 1.0\n"), "{header}");

        let parser = Parser::<DefaultElement>::new();
        let read = parser.read_ply(&mut &out[..]).expect("parse");
        let vertices = &read.payload["vertex"];
        assert_eq!(vertices.len(), 8);
        let byte = |v: &DefaultElement, name: &str| match v[name] {
            Property::UChar(c) => c,
            ref other => panic!("{name} is {other:?}"),
        };
        // Vertex 0 is at x = 0: the red texel's centre. Vertex 1 at x = 1: blue.
        let v0 = &vertices[0];
        assert_eq!([byte(v0, "red"), byte(v0, "green"), byte(v0, "blue")], [255, 0, 0]);
        assert_eq!(byte(v0, "alpha"), 128);
        let v1 = &vertices[1];
        assert_eq!([byte(v1, "red"), byte(v1, "blue")], [0, 255]);
        let faces = &read.payload["face"];
        assert_eq!(faces.len(), 12);
        match &faces[0]["vertex_indices"] {
            Property::ListUInt(list) => assert_eq!(list, &vec![0, 2, 1]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parts_are_indexed_after_each_other_and_untextured_parts_use_the_factor() {
        let mut model = textured_cube();
        let mut second = cube();
        second.normals = Some(vec![[0.0, 1.0, 0.0]; 8]);
        model.parts.push(second);
        let mut out = Vec::new();
        ply(&model, &mut out, &Cancel::new()).expect("ply");
        let read = Parser::<DefaultElement>::new().read_ply(&mut &out[..]).expect("parse");
        match &read.payload["face"][12]["vertex_indices"] {
            Property::ListUInt(list) => assert_eq!(list, &vec![8, 10, 9]),
            other => panic!("{other:?}"),
        }
        assert_eq!(read.payload["vertex"][8]["red"], Property::UChar(255));
    }

    #[test]
    fn writing_twice_gives_the_same_bytes() {
        let model = textured_cube();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ply(&model, &mut a, &Cancel::new()).expect("ply");
        ply(&model, &mut b, &Cancel::new()).expect("ply");
        assert_eq!(a, b);
    }

    #[test]
    fn srgb_round_trips() {
        for byte in [0u8, 1, 10, 128, 200, 255] {
            assert_eq!(srgb_byte(srgb_to_linear(f32::from(byte) / 255.0)), byte);
        }
    }
}
