//! Model → USDZ, as AR Quick Look opens it: a zip whose entries are all stored
//! (uncompressed), each file's data starting on a 64-byte boundary, with `model.usda`
//! first (the default layer) and the textures after it as PNG or JPEG.
//!
//! There is no Rust USD library that fits (design 13 §1.5), so `model.usda` is one fixed
//! template filled in: a `Mesh` per part and a `UsdPreviewSurface` material per glTF
//! material. glTF and USD agree on Y up, metres and counter-clockwise front faces; only
//! the texture origin differs, so `st` = (u, 1 − v). The root is lifted so that the
//! model's base sits on y = 0, where AR Quick Look puts the floor.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufWriter, Seek, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::Summary;
use crate::model::{AlphaMode, ImageFormat, Material, Part, Wrap};
use crate::{Cancel, FormatError, Model, texture};

pub(crate) const USDA_NAME: &str = "model.usda";

/// USDZ settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsdzOptions {
    /// Longest texture side; larger textures are scaled down.
    pub texture_side: u32,
    /// Most triangles written; larger models are refused with `TooLarge` (the caller
    /// simplifies first). Phones open USDZ files, and AR Quick Look slows down past a few
    /// hundred thousand triangles.
    pub max_triangles: u64,
}

impl Default for UsdzOptions {
    fn default() -> Self {
        UsdzOptions { texture_side: 2048, max_triangles: 250_000 }
    }
}

/// Every entry: stored, 64-byte aligned data, fixed time (reproducible bytes).
fn stored() -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .with_alignment(64)
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644)
}

/// A texture as it goes into the package.
struct Packed {
    name: String,
    bytes: Vec<u8>,
}

/// USDZ allows PNG and JPEG only: those are kept unless too large; WebP becomes PNG.
fn pack_texture(model: &Model, index: usize, side: u32, notes: &mut Vec<String>) -> Result<Packed, FormatError> {
    let texture = &model.textures[index];
    let extension = match texture.format {
        ImageFormat::Jpeg => "jpg",
        ImageFormat::Png | ImageFormat::Webp => "png",
    };
    let name = format!("textures/texture_{index}.{extension}");
    let fits = texture.width.max(texture.height) <= side;
    let bytes = match texture.format {
        ImageFormat::Png | ImageFormat::Jpeg if fits => texture.bytes.clone(),
        format => {
            let image = texture::fit(texture::decode(texture)?, side);
            if !fits {
                notes.push(format!("texture {index} was scaled down to {}×{}", image.width(), image.height()));
            }
            if format == ImageFormat::Webp {
                notes.push(format!("texture {index} was converted from WebP to PNG"));
            }
            if format == ImageFormat::Jpeg { texture::encode_jpeg(&image, 90)? } else { texture::encode_png(&image)? }
        }
    };
    Ok(Packed { name, bytes })
}

/// Writes `model` as USDZ.
pub fn usdz<W: Write + Seek>(
    model: &Model,
    out: W,
    options: &UsdzOptions,
    cancel: &Cancel,
) -> Result<Summary, FormatError> {
    let triangles = model.triangles();
    crate::Limits::check("USDZ triangles", triangles, options.max_triangles)?;
    crate::Limits::check("USDZ vertices", model.vertices(), i32::MAX as u64)?;
    let mut notes = Vec::new();
    let used: BTreeSet<Option<usize>> = model.parts.iter().map(|p| p.material).collect();
    let mut textures = BTreeSet::new();
    for material in used.iter().flatten().map(|&m| &model.materials[m]) {
        textures.extend(material.base_color_texture);
        textures.extend(material.metallic_roughness_texture);
    }
    let mut packed = Vec::new();
    for &index in &textures {
        cancel.check()?;
        packed.push((index, pack_texture(model, index, options.texture_side, &mut notes)?));
    }
    let texture_names: BTreeMap<usize, String> = packed.iter().map(|(i, p)| (*i, p.name.clone())).collect();

    let mut zip = ZipWriter::new(out);
    zip.start_file(USDA_NAME, stored())?;
    {
        let mut usda = Usda { out: BufWriter::new(&mut zip), cancel };
        usda.stage(model, &used, &texture_names)?;
        usda.out.flush()?;
    }
    for (_, texture) in &packed {
        zip.start_file(texture.name.as_str(), stored())?;
        zip.write_all(&texture.bytes)?;
    }
    zip.finish()?.flush()?;

    let lost = used.iter().flatten().any(|&m| {
        let m = &model.materials[m];
        m.normal_texture.is_some() || m.occlusion_texture.is_some() || m.emissive_texture.is_some()
    });
    if lost {
        notes.push("normal, occlusion and emissive maps were left out".into());
    }
    if model.parts.iter().any(|p| p.colors.is_some()) {
        notes.push("vertex colours were left out".into());
    }
    Ok(Summary { triangles, vertices: model.vertices(), notes })
}

/// The USDA text, streamed.
struct Usda<'c, W: Write> {
    out: W,
    cancel: &'c Cancel,
}

fn wrap_token(wrap: Wrap) -> &'static str {
    match wrap {
        Wrap::Repeat => "repeat",
        Wrap::ClampToEdge => "clamp",
        Wrap::MirroredRepeat => "mirror",
    }
}

fn material_name(material: Option<usize>) -> String {
    match material {
        Some(index) => format!("Material_{index}"),
        None => "Default".to_owned(),
    }
}

impl<W: Write> Usda<'_, W> {
    fn stage(
        &mut self,
        model: &Model,
        used: &BTreeSet<Option<usize>>,
        texture_names: &BTreeMap<usize, String>,
    ) -> Result<(), FormatError> {
        let lift = model.bounds().map_or(0.0, |(min, _)| -min[1]);
        write!(
            self.out,
            "#usda 1.0\n(\n    defaultPrim = \"Model\"\n    doc = \"kiln\"\n    metersPerUnit = 1\n    \
             upAxis = \"Y\"\n)\n\ndef Xform \"Model\" (\n    kind = \"component\"\n)\n{{\n    \
             double3 xformOp:translate = (0, {lift}, 0)\n    \
             uniform token[] xformOpOrder = [\"xformOp:translate\"]\n"
        )?;
        for (number, part) in model.parts.iter().enumerate() {
            self.mesh(number, part, model)?;
        }
        writeln!(self.out, "\n    def Scope \"Materials\"\n    {{")?;
        let default = Material::default();
        for &material in used {
            let m = material.map_or(&default, |i| &model.materials[i]);
            self.material(&material_name(material), m, model, texture_names)?;
        }
        writeln!(self.out, "    }}\n}}")?;
        Ok(())
    }

    /// `[a, b, c]` with each item written by `item`, checking the `Cancel` as it goes.
    fn array<T>(
        &mut self,
        items: impl Iterator<Item = T>,
        item: impl Fn(&mut W, T) -> std::io::Result<()>,
    ) -> Result<(), FormatError> {
        self.out.write_all(b"[")?;
        for (i, value) in items.enumerate() {
            self.cancel.check_every(i)?;
            if i > 0 {
                self.out.write_all(b", ")?;
            }
            item(&mut self.out, value)?;
        }
        self.out.write_all(b"]")?;
        Ok(())
    }

    fn mesh(&mut self, number: usize, part: &Part, model: &Model) -> Result<(), FormatError> {
        let material = part.material.map(|m| &model.materials[m]);
        let double_sided = material.is_some_and(|m| m.double_sided);
        let mut min = [f32::MAX; 3];
        let mut max = [f32::MIN; 3];
        for p in &part.positions {
            for k in 0..3 {
                min[k] = min[k].min(p[k]);
                max[k] = max[k].max(p[k]);
            }
        }
        if part.positions.is_empty() {
            (min, max) = ([0.0; 3], [0.0; 3]);
        }
        write!(
            self.out,
            "\n    def Mesh \"Part_{number}\" (\n        prepend apiSchemas = [\"MaterialBindingAPI\"]\n    )\n    {{\n        \
             uniform bool doubleSided = {}\n        \
             float3[] extent = [({}, {}, {}), ({}, {}, {})]\n        int[] faceVertexCounts = ",
            u8::from(double_sided),
            min[0],
            min[1],
            min[2],
            max[0],
            max[1],
            max[2]
        )?;
        self.array(part.indices.chunks_exact(3), |w, _| w.write_all(b"3"))?;
        self.out.write_all(b"\n        int[] faceVertexIndices = ")?;
        self.array(part.indices.iter(), |w, i| write!(w, "{i}"))?;
        self.out.write_all(b"\n        rel material:binding = </Model/Materials/")?;
        writeln!(self.out, "{}>", material_name(part.material))?;
        if let Some(normals) = &part.normals {
            self.out.write_all(b"        normal3f[] normals = ")?;
            self.array(normals.iter(), |w, n| write!(w, "({}, {}, {})", n[0], n[1], n[2]))?;
            self.out.write_all(b" (\n            interpolation = \"vertex\"\n        )\n")?;
        }
        self.out.write_all(b"        point3f[] points = ")?;
        self.array(part.positions.iter(), |w, p| write!(w, "({}, {}, {})", p[0], p[1], p[2]))?;
        self.out.write_all(b"\n")?;
        if let Some(uvs) = &part.uvs {
            self.out.write_all(b"        texCoord2f[] primvars:st = ")?;
            self.array(uvs.iter(), |w, uv| write!(w, "({}, {})", uv[0], 1.0 - uv[1]))?;
            self.out.write_all(b" (\n            interpolation = \"vertex\"\n        )\n")?;
        }
        self.out.write_all(b"        uniform token subdivisionScheme = \"none\"\n    }\n")?;
        Ok(())
    }

    fn material(
        &mut self,
        name: &str,
        m: &Material,
        model: &Model,
        texture_names: &BTreeMap<usize, String>,
    ) -> Result<(), FormatError> {
        let path = format!("/Model/Materials/{name}");
        let base = m.base_color_texture.and_then(|t| texture_names.get(&t).map(|n| (t, n)));
        let mr = m.metallic_roughness_texture.and_then(|t| texture_names.get(&t).map(|n| (t, n)));
        let [r, g, b, a] = m.base_color_factor;
        let o = &mut self.out;
        writeln!(
            o,
            "        def Material \"{name}\"\n        {{\n            \
             token outputs:surface.connect = <{path}/Surface.outputs:surface>\n\n            \
             def Shader \"Surface\"\n            {{\n                \
             uniform token info:id = \"UsdPreviewSurface\""
        )?;
        match base {
            Some(_) => {
                writeln!(o, "                color3f inputs:diffuseColor.connect = <{path}/BaseColor.outputs:rgb>")?
            }
            None => writeln!(o, "                color3f inputs:diffuseColor = ({r}, {g}, {b})")?,
        }
        let [er, eg, eb] = m.emissive_factor;
        if m.emissive_factor != [0.0; 3] {
            writeln!(o, "                color3f inputs:emissiveColor = ({er}, {eg}, {eb})")?;
        }
        match mr {
            Some(_) => writeln!(
                o,
                "                float inputs:metallic.connect = <{path}/MetallicRoughness.outputs:b>\n                \
                 float inputs:roughness.connect = <{path}/MetallicRoughness.outputs:g>"
            )?,
            None => writeln!(
                o,
                "                float inputs:metallic = {}\n                float inputs:roughness = {}",
                m.metallic_factor, m.roughness_factor
            )?,
        }
        if m.alpha_mode != AlphaMode::Opaque {
            match base {
                Some(_) => writeln!(o, "                float inputs:opacity.connect = <{path}/BaseColor.outputs:a>")?,
                None => writeln!(o, "                float inputs:opacity = {a}")?,
            }
            if m.alpha_mode == AlphaMode::Mask {
                writeln!(o, "                float inputs:opacityThreshold = {}", m.alpha_cutoff)?;
            }
        }
        writeln!(o, "                token outputs:surface\n            }}")?;
        if base.is_some() || mr.is_some() {
            writeln!(
                o,
                "\n            def Shader \"St\"\n            {{\n                \
                 uniform token info:id = \"UsdPrimvarReader_float2\"\n                \
                 string inputs:varname = \"st\"\n                float2 outputs:result\n            }}"
            )?;
        }
        let sampler = |t: usize| model.textures[t].sampler;
        if let Some((t, file)) = base {
            let s = sampler(t);
            writeln!(
                o,
                "\n            def Shader \"BaseColor\"\n            {{\n                \
                 uniform token info:id = \"UsdUVTexture\"\n                \
                 asset inputs:file = @{file}@\n                \
                 float4 inputs:scale = ({r}, {g}, {b}, {a})\n                \
                 token inputs:sourceColorSpace = \"sRGB\"\n                \
                 float2 inputs:st.connect = <{path}/St.outputs:result>\n                \
                 token inputs:wrapS = \"{}\"\n                token inputs:wrapT = \"{}\"\n                \
                 float outputs:a\n                float3 outputs:rgb\n            }}",
                wrap_token(s.wrap_s),
                wrap_token(s.wrap_t)
            )?;
        }
        if let Some((t, file)) = mr {
            let s = sampler(t);
            writeln!(
                o,
                "\n            def Shader \"MetallicRoughness\"\n            {{\n                \
                 uniform token info:id = \"UsdUVTexture\"\n                \
                 asset inputs:file = @{file}@\n                \
                 float4 inputs:scale = (1, {}, {}, 1)\n                \
                 token inputs:sourceColorSpace = \"raw\"\n                \
                 float2 inputs:st.connect = <{path}/St.outputs:result>\n                \
                 token inputs:wrapS = \"{}\"\n                token inputs:wrapT = \"{}\"\n                \
                 float outputs:b\n                float outputs:g\n            }}",
                m.roughness_factor,
                m.metallic_factor,
                wrap_token(s.wrap_s),
                wrap_token(s.wrap_t)
            )?;
        }
        writeln!(o, "        }}")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::cube;
    use crate::model::{Sampler, Texture};
    use std::io::{Cursor, Read};

    pub(crate) fn textured_cube(format: ImageFormat) -> Model {
        let mut part = cube();
        part.uvs = Some(part.positions.iter().map(|p| [p[0], p[2]]).collect());
        part.normals = Some(part.positions.iter().map(|p| p.map(|c| c - 0.5)).collect());
        part.material = Some(0);
        part.positions.iter_mut().for_each(|p| p[1] -= 2.0);
        let image = image::RgbaImage::from_pixel(4, 4, image::Rgba([200, 100, 50, 255]));
        let bytes = match format {
            ImageFormat::Png => texture::encode_png(&image).expect("png"),
            ImageFormat::Jpeg => texture::encode_jpeg(&image, 90).expect("jpeg"),
            ImageFormat::Webp => {
                let mut webp = Vec::new();
                image.write_to(&mut Cursor::new(&mut webp), image::ImageFormat::WebP).expect("webp");
                webp
            }
        };
        Model {
            parts: vec![part],
            materials: vec![Material {
                base_color_texture: Some(0),
                metallic_factor: 0.0,
                roughness_factor: 0.8,
                ..Material::default()
            }],
            textures: vec![Texture { bytes, format, width: 4, height: 4, sampler: Sampler::default() }],
            notes: Vec::new(),
        }
    }

    fn write(model: &Model, options: &UsdzOptions) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        usdz(model, &mut out, options, &Cancel::new()).expect("usdz");
        out.into_inner()
    }

    #[test]
    fn entries_are_stored_aligned_and_the_layer_comes_first() {
        let bytes = write(&textured_cube(ImageFormat::Png), &UsdzOptions::default());
        let mut archive = zip::ZipArchive::new(Cursor::new(&bytes)).expect("zip");
        assert_eq!(archive.len(), 2);
        for i in 0..archive.len() {
            let file = archive.by_index_raw(i).expect("entry");
            assert_eq!(file.compression(), CompressionMethod::Stored, "{}", file.name());
            assert_eq!(file.data_start() % 64, 0, "{} at {}", file.name(), file.data_start());
            assert!(!file.encrypted());
        }
        assert_eq!(archive.by_index(0).expect("entry").name(), "model.usda");
        assert_eq!(archive.by_index(1).expect("entry").name(), "textures/texture_0.png");
    }

    #[test]
    fn the_layer_holds_the_mesh_and_material() {
        let bytes = write(&textured_cube(ImageFormat::Jpeg), &UsdzOptions::default());
        let mut archive = zip::ZipArchive::new(Cursor::new(&bytes)).expect("zip");
        let mut usda = String::new();
        archive.by_index(0).expect("layer").read_to_string(&mut usda).expect("utf8");
        assert!(usda.starts_with("#usda 1.0\n"));
        assert!(usda.contains("upAxis = \"Y\""));
        // The cube spans y from −2 to −1: lifted by 2 to stand on y = 0.
        assert!(usda.contains("double3 xformOp:translate = (0, 2, 0)"), "{usda}");
        assert!(usda.contains("int[] faceVertexCounts = [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]"));
        assert!(usda.contains("int[] faceVertexIndices = [0, 2, 1, 0, 3, 2,"));
        // Vertex 0 at (0, 0, 0) has uv (0, 0): st (0, 1).
        assert!(usda.contains("texCoord2f[] primvars:st = [(0, 1), (1, 1),"), "{usda}");
        assert!(usda.contains("asset inputs:file = @textures/texture_0.jpg@"));
        assert!(usda.contains("float inputs:roughness = 0.8"));
        assert!(usda.contains("rel material:binding = </Model/Materials/Material_0>"));
        assert_eq!(archive.by_index(1).expect("texture").name(), "textures/texture_0.jpg");
    }

    #[test]
    fn webp_and_large_textures_are_converted() {
        let model = textured_cube(ImageFormat::Webp);
        let mut out = Cursor::new(Vec::new());
        let options = UsdzOptions { texture_side: 2, ..UsdzOptions::default() };
        let summary = usdz(&model, &mut out, &options, &Cancel::new()).expect("usdz");
        assert_eq!(summary.notes.len(), 2, "{:?}", summary.notes);
        let mut archive = zip::ZipArchive::new(out).expect("zip");
        let mut png = Vec::new();
        archive.by_name("textures/texture_0.png").expect("texture").read_to_end(&mut png).expect("read");
        let image = image::load_from_memory(&png).expect("png");
        assert_eq!((image.width(), image.height()), (2, 2));
    }

    #[test]
    fn too_many_triangles_are_refused() {
        let options = UsdzOptions { max_triangles: 11, ..UsdzOptions::default() };
        let error = usdz(&textured_cube(ImageFormat::Png), Cursor::new(Vec::new()), &options, &Cancel::new())
            .expect_err("limit");
        assert_eq!(error.code(), "model_too_large");
    }

    #[test]
    fn writing_twice_gives_the_same_bytes() {
        let model = textured_cube(ImageFormat::Png);
        assert_eq!(write(&model, &UsdzOptions::default()), write(&model, &UsdzOptions::default()));
    }
}
