//! Model → `output3d.zip`: `model.obj`, `model.mtl` and the base colour textures, side by
//! side at the top of the zip so every reference is a bare relative file name.
//!
//! OBJ's texture origin is the image's bottom left, glTF's its top left, so `vt` is
//! written as (u, 1 − v). Materials keep the base colour (factor and texture), opacity,
//! and metalness/roughness as the widely read `Pm`/`Pr` MTL extension; other maps are
//! lost, which the summary notes.

use std::collections::BTreeSet;
use std::io::{BufWriter, Seek, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::Summary;
use crate::model::{ImageFormat, Material};
use crate::{Cancel, FormatError, Model, texture};

pub(crate) const OBJ_NAME: &str = "model.obj";
pub(crate) const MTL_NAME: &str = "model.mtl";
const DEFAULT_MATERIAL: &str = "default";

/// Text is deflated, images stored (they are compressed already); the fixed timestamp
/// and permissions make the bytes reproducible. Level 3: on relief's 471k-triangle model
/// it made a zip 0.7 % larger than level 6 in a third of the time (2.7 s against 8.5 s on
/// a busy two-core machine), and level 1 one 48 % larger.
fn options(method: CompressionMethod) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(method)
        .compression_level(if method == CompressionMethod::Deflated { Some(3) } else { None })
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644)
}

/// glTF colour factors are linear; MTL colours are display values, so they are
/// sRGB-encoded.
pub(crate) fn linear_to_srgb(c: f32) -> f32 {
    // In f64, so that 1 stays exactly 1.
    let c = f64::from(c.clamp(0.0, 1.0));
    let encoded = if c <= 0.003_130_8 { c * 12.92 } else { 1.055 * c.powf(1.0 / 2.4) - 0.055 };
    encoded as f32
}

/// The zip name of base colour texture `index`: its own format when PNG or JPEG, PNG for
/// anything else (WebP).
fn texture_name(model: &Model, index: usize) -> String {
    let extension = match model.textures[index].format {
        ImageFormat::Jpeg => "jpg",
        ImageFormat::Png | ImageFormat::Webp => "png",
    };
    format!("texture_{index}.{extension}")
}

/// Writes `model` as a zip holding `model.obj`, `model.mtl` and its textures.
pub fn obj_zip<W: Write + Seek>(model: &Model, out: W, cancel: &Cancel) -> Result<Summary, FormatError> {
    let mut zip = ZipWriter::new(out);
    zip.start_file(OBJ_NAME, options(CompressionMethod::Deflated))?;
    write_obj(model, &mut BufWriter::new(&mut zip), cancel)?;

    zip.start_file(MTL_NAME, options(CompressionMethod::Deflated))?;
    let mut notes = Vec::new();
    write_mtl(model, &mut BufWriter::new(&mut zip), &mut notes)?;

    let textures: BTreeSet<usize> =
        used_materials(model).filter_map(|m| m.and_then(|m| model.materials[m].base_color_texture)).collect();
    for index in textures {
        cancel.check()?;
        let texture = &model.textures[index];
        zip.start_file(texture_name(model, index), options(CompressionMethod::Stored))?;
        match texture.format {
            ImageFormat::Png | ImageFormat::Jpeg => zip.write_all(&texture.bytes)?,
            ImageFormat::Webp => {
                let png = texture::encode_png(&texture::decode(texture)?)?;
                zip.write_all(&png)?;
                notes.push(format!("texture {index} was converted from WebP to PNG"));
            }
        }
    }
    zip.finish()?.flush()?;
    Ok(Summary { triangles: model.triangles(), vertices: model.vertices(), notes })
}

/// Each part's material, in part order.
fn used_materials(model: &Model) -> impl Iterator<Item = Option<usize>> + '_ {
    model.parts.iter().map(|p| p.material)
}

fn material_name(material: Option<usize>) -> String {
    match material {
        Some(index) => format!("material_{index}"),
        None => DEFAULT_MATERIAL.to_owned(),
    }
}

fn write_obj<W: Write>(model: &Model, out: &mut W, cancel: &Cancel) -> Result<(), FormatError> {
    writeln!(out, "# kiln\nmtllib {MTL_NAME}")?;
    // OBJ indices are 1-based and global across the file.
    let (mut v_base, mut vt_base, mut vn_base) = (1u64, 1u64, 1u64);
    for (number, part) in model.parts.iter().enumerate() {
        writeln!(out, "o part_{number}")?;
        for (i, p) in part.positions.iter().enumerate() {
            cancel.check_every(i)?;
            writeln!(out, "v {} {} {}", p[0], p[1], p[2])?;
        }
        if let Some(uvs) = &part.uvs {
            for (i, uv) in uvs.iter().enumerate() {
                cancel.check_every(i)?;
                writeln!(out, "vt {} {}", uv[0], 1.0 - uv[1])?;
            }
        }
        if let Some(normals) = &part.normals {
            for (i, n) in normals.iter().enumerate() {
                cancel.check_every(i)?;
                writeln!(out, "vn {} {} {}", n[0], n[1], n[2])?;
            }
        }
        writeln!(out, "usemtl {}", material_name(part.material))?;
        let (uvs, normals) = (part.uvs.is_some(), part.normals.is_some());
        for (i, t) in part.indices.chunks_exact(3).enumerate() {
            cancel.check_every(i)?;
            out.write_all(b"f")?;
            for &index in t {
                let index = u64::from(index);
                let v = v_base + index;
                match (uvs, normals) {
                    (false, false) => write!(out, " {v}")?,
                    (true, false) => write!(out, " {v}/{}", vt_base + index)?,
                    (false, true) => write!(out, " {v}//{}", vn_base + index)?,
                    (true, true) => write!(out, " {v}/{}/{}", vt_base + index, vn_base + index)?,
                }
            }
            out.write_all(b"\n")?;
        }
        let count = part.positions.len() as u64;
        v_base += count;
        if uvs {
            vt_base += count;
        }
        if normals {
            vn_base += count;
        }
    }
    out.flush()?;
    Ok(())
}

fn write_mtl<W: Write>(model: &Model, out: &mut W, notes: &mut Vec<String>) -> Result<(), FormatError> {
    writeln!(out, "# kiln")?;
    let used: BTreeSet<Option<usize>> = used_materials(model).collect();
    let default = Material::default();
    let mut lost_maps = false;
    for material_index in used {
        let material = material_index.map_or(&default, |m| &model.materials[m]);
        let [r, g, b, a] = material.base_color_factor;
        writeln!(out, "\nnewmtl {}", material_name(material_index))?;
        writeln!(out, "Kd {} {} {}", linear_to_srgb(r), linear_to_srgb(g), linear_to_srgb(b))?;
        writeln!(out, "Ka 0 0 0\nKs 0 0 0\nillum 1")?;
        writeln!(out, "d {}", a.clamp(0.0, 1.0))?;
        writeln!(out, "Pm {}", material.metallic_factor.clamp(0.0, 1.0))?;
        writeln!(out, "Pr {}", material.roughness_factor.clamp(0.0, 1.0))?;
        if let Some(texture) = material.base_color_texture {
            writeln!(out, "map_Kd {}", texture_name(model, texture))?;
        }
        lost_maps |= material.metallic_roughness_texture.is_some()
            || material.normal_texture.is_some()
            || material.occlusion_texture.is_some()
            || material.emissive_texture.is_some();
    }
    if lost_maps {
        notes.push(
            "OBJ keeps only the base colour map: metallic-roughness, normal, occlusion and \
             emissive maps were left out"
                .into(),
        );
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::cube;
    use crate::model::{Part, Sampler, Texture};
    use std::io::{Cursor, Read};

    fn textured_cube() -> Model {
        let mut part = cube();
        part.uvs = Some(part.positions.iter().map(|p| [p[0], p[1] * 0.5]).collect());
        part.material = Some(0);
        let image = image::RgbaImage::from_pixel(2, 2, image::Rgba([10, 20, 30, 255]));
        let png = texture::encode_png(&image).expect("png");
        Model {
            parts: vec![part, Part { material: None, ..cube() }],
            materials: vec![Material {
                base_color_texture: Some(0),
                metallic_factor: 0.0,
                roughness_factor: 0.8,
                ..Material::default()
            }],
            textures: vec![Texture {
                bytes: png,
                format: ImageFormat::Png,
                width: 2,
                height: 2,
                sampler: Sampler::default(),
            }],
            notes: Vec::new(),
        }
    }

    fn entries(zip: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = zip::ZipArchive::new(Cursor::new(zip)).expect("zip");
        (0..archive.len())
            .map(|i| {
                let mut file = archive.by_index(i).expect("entry");
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes).expect("read");
                (file.name().to_owned(), bytes)
            })
            .collect()
    }

    #[test]
    fn writes_obj_mtl_and_texture_with_relative_names() {
        let model = textured_cube();
        let mut out = Cursor::new(Vec::new());
        obj_zip(&model, &mut out, &Cancel::new()).expect("obj");
        let entries = entries(out.get_ref());
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["model.obj", "model.mtl", "texture_0.png"]);
        let obj = String::from_utf8(entries[0].1.clone()).expect("utf8");
        let mtl = String::from_utf8(entries[1].1.clone()).expect("utf8");
        assert!(obj.starts_with("# kiln\nmtllib model.mtl\n"));
        assert_eq!(obj.lines().filter(|l| l.starts_with("f ")).count(), 24);
        assert_eq!(obj.lines().filter(|l| l.starts_with("vt ")).count(), 8);
        // V is flipped: the vertex (1, 1, 0) has glTF uv (1, 0.5), OBJ vt (1, 0.5);
        // (0, 0, 0) has (0, 0) → (0, 1).
        assert!(obj.contains("\nvt 0 1\n"), "{obj}");
        // The second part, without UVs, indexes after the first part's 8 vertices.
        assert!(obj.contains("\nusemtl default\nf 9 11 10\n"), "{obj}");
        assert!(obj.contains("\nusemtl material_0\nf 1/1 3/3 2/2\n"), "{obj}");
        assert!(mtl.contains("newmtl material_0\n"));
        assert!(mtl.contains("newmtl default\n"));
        assert!(mtl.contains("map_Kd texture_0.png\n"));
        assert!(mtl.contains("Pr 0.8\n"));
        assert_eq!(entries[2].1, model.textures[0].bytes, "PNG copied unchanged");
    }

    #[test]
    fn webp_textures_become_png() {
        let mut model = textured_cube();
        let mut webp = Vec::new();
        image::RgbaImage::from_pixel(2, 2, image::Rgba([1, 2, 3, 255]))
            .write_to(&mut Cursor::new(&mut webp), image::ImageFormat::WebP)
            .expect("webp");
        model.textures[0].bytes = webp;
        model.textures[0].format = ImageFormat::Webp;
        let mut out = Cursor::new(Vec::new());
        let summary = obj_zip(&model, &mut out, &Cancel::new()).expect("obj");
        let entries = entries(out.get_ref());
        assert_eq!(entries[2].0, "texture_0.png");
        assert_eq!(image::guess_format(&entries[2].1).ok(), Some(image::ImageFormat::Png));
        assert_eq!(summary.notes.len(), 1);
    }

    #[test]
    fn writing_twice_gives_the_same_bytes() {
        let model = textured_cube();
        let (mut a, mut b) = (Cursor::new(Vec::new()), Cursor::new(Vec::new()));
        obj_zip(&model, &mut a, &Cancel::new()).expect("obj");
        obj_zip(&model, &mut b, &Cancel::new()).expect("obj");
        assert_eq!(a.into_inner(), b.into_inner());
    }

    #[test]
    fn srgb_encoding_matches_the_standard() {
        assert_eq!(linear_to_srgb(0.0), 0.0);
        assert_eq!(linear_to_srgb(1.0), 1.0);
        assert!((linear_to_srgb(0.214_041) - 0.5).abs() < 1e-4);
    }
}
