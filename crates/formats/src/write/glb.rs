//! Model → plain GLB, written with gltf-json's document types and `gltf::binary::Glb`.
//! The `core` mode keeps to core glTF 2.0 (PNG/JPEG textures only, no extension) for
//! viewers such as Android's Scene Viewer, which cannot read WebP.
//!
//! The document builder and texture preparation here are shared with the compressed
//! writer (`write::meshopt`), which differs only in how it stores geometry.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;

use gltf_json as json;
use json::validation::{Checked::Valid, USize64};

use super::Summary;
use crate::model::{AlphaMode, ImageFormat, Material, Sampler, Wrap};
use crate::texture;
use crate::{Cancel, FormatError, Model};

/// Options of the plain GLB writer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GlbOptions {
    /// PNG/JPEG textures only (WebP re-encoded), no extensions.
    pub core: bool,
    /// Longest texture side; larger textures are scaled down. `None` keeps them.
    pub texture_side: Option<u32>,
}

/// JPEG quality when a WebP texture becomes JPEG for the core variant: high, because
/// this file is the "compatible" download, not the small one.
const CORE_JPEG_QUALITY: u8 = 90;

/// Writes `model` as a GLB: every part a primitive of one mesh, attributes as f32,
/// indices as u16 or u32, textures embedded.
pub fn glb<W: Write>(model: &Model, out: W, options: &GlbOptions, cancel: &Cancel) -> Result<Summary, FormatError> {
    for part in &model.parts {
        part.check()?;
    }
    if options.texture_side == Some(0) {
        return Err(FormatError::encode("invalid GLB option: texture_side must be at least 1"));
    }
    let rule = if options.core { TextureRule::Core } else { TextureRule::Keep };
    let prepared = prepare_textures(model, rule, options.texture_side, cancel)?;
    let mut document = Document::new();
    let materials = document.materials(model, &prepared.textures);

    let mut primitives = Vec::new();
    for part in &model.parts {
        cancel.check()?;
        if part.indices.is_empty() || part.positions.is_empty() {
            continue;
        }
        let mut attributes = BTreeMap::new();
        let (min, max) = bounds(&part.positions);
        let view = document.view(
            &floats(part.positions.iter().flatten().copied()),
            None,
            Some(json::buffer::Target::ArrayBuffer),
        );
        let positions = document.accessor(Accessor {
            view,
            component: json::accessor::ComponentType::F32,
            kind: json::accessor::Type::Vec3,
            count: part.positions.len(),
            normalized: false,
            min: Some(min.to_vec()),
            max: Some(max.to_vec()),
        });
        attributes.insert(Valid(json::mesh::Semantic::Positions), positions);
        if let Some(normals) = &part.normals {
            let view = document.view(
                &floats(normals.iter().flat_map(|&n| unit(n))),
                None,
                Some(json::buffer::Target::ArrayBuffer),
            );
            let accessor = document.accessor(Accessor::floats(view, 3, normals.len()));
            attributes.insert(Valid(json::mesh::Semantic::Normals), accessor);
        }
        if let Some(uvs) = &part.uvs {
            let view =
                document.view(&floats(uvs.iter().flatten().copied()), None, Some(json::buffer::Target::ArrayBuffer));
            let accessor = document.accessor(Accessor::floats(view, 2, uvs.len()));
            attributes.insert(Valid(json::mesh::Semantic::TexCoords(0)), accessor);
        }
        if let Some(colors) = &part.colors {
            let view = document.view(
                &floats(colors.iter().flatten().map(|&c| c.clamp(0.0, 1.0))),
                None,
                Some(json::buffer::Target::ArrayBuffer),
            );
            let accessor = document.accessor(Accessor::floats(view, 4, colors.len()));
            attributes.insert(Valid(json::mesh::Semantic::Colors(0)), accessor);
        }
        cancel.check()?;
        // 0xFFFF is the primitive-restart value, which glTF forbids as a 16-bit index:
        // 16 bits hold at most 65 535 vertices.
        let short = part.positions.len() <= usize::from(u16::MAX);
        let (bytes, component) = if short {
            let bytes = part.indices.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect::<Vec<u8>>();
            (bytes, json::accessor::ComponentType::U16)
        } else {
            let bytes = part.indices.iter().flat_map(|&i| i.to_le_bytes()).collect();
            (bytes, json::accessor::ComponentType::U32)
        };
        let view = document.view(&bytes, None, Some(json::buffer::Target::ElementArrayBuffer));
        let indices = document.accessor(Accessor {
            view,
            component,
            kind: json::accessor::Type::Scalar,
            count: part.indices.len(),
            normalized: false,
            min: None,
            max: None,
        });
        primitives.push(primitive(attributes, indices, part.material.and_then(|m| materials.get(m).copied())));
    }
    document.scene(primitives, NodeTransform::default());
    document.finish(out, &prepared.extensions, None)?;
    Ok(Summary { triangles: model.triangles(), vertices: model.vertices(), notes: prepared.notes })
}

/// How textures are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TextureRule {
    /// As they came (a WebP stays WebP, with `EXT_texture_webp`).
    Keep,
    /// PNG or JPEG only: WebP is re-encoded.
    Core,
    /// The compressed variant: an opaque PNG base colour becomes JPEG when that is
    /// smaller; WebP is kept.
    Compress,
}

/// A texture as it goes into the GLB.
#[derive(Debug, Clone)]
pub(super) struct PreparedTexture<'a> {
    pub bytes: Cow<'a, [u8]>,
    pub format: ImageFormat,
    pub sampler: Sampler,
}

/// The textures of a model ready to embed, in the model's order (`None` for a texture
/// no material uses), with what was changed and the extensions they need.
pub(super) struct PreparedTextures<'a> {
    pub textures: Vec<Option<PreparedTexture<'a>>>,
    pub notes: Vec<String>,
    pub extensions: Vec<&'static str>,
}

/// How the materials use one texture: whether it only carries colour (base colour or
/// emissive, where JPEG is fine) and whether its alpha channel matters.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    used: bool,
    data: bool,
    alpha: bool,
    base_colour_only: bool,
}

fn usages(model: &Model) -> Vec<Usage> {
    let mut usages = vec![Usage { base_colour_only: true, ..Usage::default() }; model.textures.len()];
    let mut mark = |index: Option<usize>, data: bool, base: bool, alpha: bool| {
        if let Some(usage) = index.and_then(|i| usages.get_mut(i)) {
            usage.used = true;
            usage.data |= data;
            usage.alpha |= alpha;
            usage.base_colour_only &= base;
        }
    };
    for material in &model.materials {
        let alpha = material.alpha_mode != AlphaMode::Opaque;
        mark(material.base_color_texture, false, true, alpha);
        mark(material.emissive_texture, false, false, false);
        mark(material.metallic_roughness_texture, true, false, false);
        mark(material.normal_texture, true, false, false);
        mark(material.occlusion_texture, true, false, false);
    }
    usages
}

/// Decides, per used texture, whether its bytes can be copied or it must be decoded,
/// scaled to `side` and re-encoded, following `rule`.
pub(super) fn prepare_textures<'a>(
    model: &'a Model,
    rule: TextureRule,
    side: Option<u32>,
    cancel: &Cancel,
) -> Result<PreparedTextures<'a>, FormatError> {
    let usages = usages(model);
    let mut prepared = PreparedTextures {
        textures: Vec::with_capacity(model.textures.len()),
        notes: Vec::new(),
        extensions: Vec::new(),
    };
    for (index, (source, usage)) in model.textures.iter().zip(&usages).enumerate() {
        cancel.check()?;
        if !usage.used {
            prepared.textures.push(None);
            continue;
        }
        let too_big = side.is_some_and(|s| source.width.max(source.height) > s);
        let mut texture =
            PreparedTexture { bytes: Cow::Borrowed(&source.bytes[..]), format: source.format, sampler: source.sampler };
        let must_decode = too_big
            || (rule == TextureRule::Core && source.format == ImageFormat::Webp)
            || (rule == TextureRule::Compress && source.format == ImageFormat::Png && usage.base_colour_only);
        if must_decode {
            let mut image = texture::decode(source)?;
            if too_big {
                let limit = side.unwrap_or(u32::MAX);
                image = texture::fit(image, limit);
                prepared.notes.push(format!(
                    "texture {index} scaled from {}x{} to {}x{}",
                    source.width,
                    source.height,
                    image.width(),
                    image.height()
                ));
            }
            cancel.check()?;
            // Alpha is kept only where a material reads it and the image has some.
            let alpha_matters = usage.alpha && texture::has_alpha(&image);
            let jpeg_quality =
                if rule == TextureRule::Compress { super::meshopt::JPEG_QUALITY } else { CORE_JPEG_QUALITY };
            let (bytes, format) = match source.format {
                ImageFormat::Png => {
                    let png = if too_big {
                        Cow::Owned(texture::encode_png(&image)?)
                    } else {
                        Cow::Borrowed(&source.bytes[..])
                    };
                    if rule == TextureRule::Compress && usage.base_colour_only && !alpha_matters {
                        let jpeg = texture::encode_jpeg(&image, jpeg_quality)?;
                        if jpeg.len() < png.len() {
                            prepared.notes.push(format!(
                                "texture {index} re-encoded from PNG to JPEG ({} → {} bytes)",
                                png.len(),
                                jpeg.len()
                            ));
                            (Cow::Owned(jpeg), ImageFormat::Jpeg)
                        } else {
                            (png, ImageFormat::Png)
                        }
                    } else {
                        (png, ImageFormat::Png)
                    }
                }
                ImageFormat::Jpeg => (Cow::Owned(texture::encode_jpeg(&image, jpeg_quality)?), ImageFormat::Jpeg),
                // `image` encodes only lossless WebP, far larger than a lossy original:
                // a WebP that must change becomes JPEG, or PNG where alpha or exact
                // data values matter.
                ImageFormat::Webp => {
                    let (bytes, format) = if !usage.data && !alpha_matters {
                        (texture::encode_jpeg(&image, jpeg_quality)?, ImageFormat::Jpeg)
                    } else {
                        (texture::encode_png(&image)?, ImageFormat::Png)
                    };
                    prepared.notes.push(format!(
                        "texture {index} re-encoded from WebP to {}",
                        if format == ImageFormat::Jpeg { "JPEG" } else { "PNG" }
                    ));
                    (Cow::Owned(bytes), format)
                }
            };
            texture.bytes = bytes;
            texture.format = format;
        }
        if texture.format == ImageFormat::Webp && !prepared.extensions.contains(&WEBP) {
            prepared.extensions.push(WEBP);
        }
        prepared.textures.push(Some(texture));
    }
    Ok(prepared)
}

pub(super) const WEBP: &str = "EXT_texture_webp";

/// One accessor to add; `min`/`max` only where glTF requires them (positions).
pub(super) struct Accessor {
    pub view: json::Index<json::buffer::View>,
    pub component: json::accessor::ComponentType,
    pub kind: json::accessor::Type,
    pub count: usize,
    pub normalized: bool,
    pub min: Option<Vec<f32>>,
    pub max: Option<Vec<f32>>,
}

impl Accessor {
    fn floats(view: json::Index<json::buffer::View>, width: usize, count: usize) -> Self {
        let kind = match width {
            2 => json::accessor::Type::Vec2,
            3 => json::accessor::Type::Vec3,
            _ => json::accessor::Type::Vec4,
        };
        Accessor {
            view,
            component: json::accessor::ComponentType::F32,
            kind,
            count,
            normalized: false,
            min: None,
            max: None,
        }
    }
}

/// The node that holds the mesh: the compressed variant moves and scales its quantized
/// positions back into place here.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct NodeTransform {
    pub translation: Option<[f32; 3]>,
    pub scale: Option<[f32; 3]>,
}

/// A glTF document under construction and its BIN chunk. Everything is appended in
/// the model's order, so the same model gives the same bytes.
pub(super) struct Document {
    pub root: json::Root,
    pub bin: Vec<u8>,
}

impl Document {
    pub fn new() -> Self {
        let root = json::Root {
            asset: json::Asset { generator: Some("kiln".into()), ..json::Asset::default() },
            ..json::Root::default()
        };
        Document { root, bin: Vec::new() }
    }

    /// Appends `bytes` to the BIN chunk, 4-byte aligned as accessors need, and returns
    /// a view on them in buffer 0.
    pub fn view(
        &mut self,
        bytes: &[u8],
        stride: Option<usize>,
        target: Option<json::buffer::Target>,
    ) -> json::Index<json::buffer::View> {
        let offset = self.append(bytes);
        self.root.push(json::buffer::View {
            buffer: json::Index::new(0),
            byte_length: USize64::from(bytes.len()),
            byte_offset: Some(USize64::from(offset)),
            byte_stride: stride.map(json::buffer::Stride),
            name: None,
            target: target.map(Valid),
            extensions: None,
            extras: Default::default(),
        })
    }

    /// Appends raw bytes to the BIN chunk at a 4-byte boundary and returns their offset.
    pub fn append(&mut self, bytes: &[u8]) -> usize {
        let offset = self.bin.len();
        self.bin.extend_from_slice(bytes);
        while !self.bin.len().is_multiple_of(4) {
            self.bin.push(0);
        }
        offset
    }

    pub fn accessor(&mut self, accessor: Accessor) -> json::Index<json::Accessor> {
        let values = |v: Vec<f32>| serde_json::Value::from(v);
        self.root.push(json::Accessor {
            buffer_view: Some(accessor.view),
            byte_offset: None,
            count: USize64::from(accessor.count),
            component_type: Valid(json::accessor::GenericComponentType(accessor.component)),
            extensions: None,
            extras: Default::default(),
            type_: Valid(accessor.kind),
            min: accessor.min.map(values),
            max: accessor.max.map(values),
            name: None,
            normalized: accessor.normalized,
            sparse: None,
        })
    }

    /// Adds images, samplers, textures and every material of `model`; returns the
    /// material indices in the model's order.
    pub fn materials(
        &mut self,
        model: &Model,
        textures: &[Option<PreparedTexture<'_>>],
    ) -> Vec<json::Index<json::Material>> {
        let mut samplers: Vec<Sampler> = Vec::new();
        let mut indices: Vec<Option<json::Index<json::Texture>>> = Vec::new();
        for texture in textures {
            let Some(texture) = texture else {
                indices.push(None);
                continue;
            };
            let view = self.view(&texture.bytes, None, None);
            let image = self.root.push(json::Image {
                buffer_view: Some(view),
                mime_type: Some(json::image::MimeType(texture.format.mime().into())),
                name: None,
                uri: None,
                extensions: None,
                extras: Default::default(),
            });
            // Equal samplers are shared; a linear search keeps the order stable.
            let sampler = match samplers.iter().position(|s| *s == texture.sampler) {
                Some(found) => json::Index::new(found as u32),
                None => {
                    samplers.push(texture.sampler);
                    self.root.push(sampler_json(&texture.sampler))
                }
            };
            let webp = texture.format == ImageFormat::Webp;
            let extensions = webp.then(|| {
                let mut others = serde_json::Map::new();
                others.insert(WEBP.into(), serde_json::json!({ "source": image.value() }));
                json::extensions::texture::Texture { others }
            });
            indices.push(Some(self.root.push(json::Texture {
                name: None,
                sampler: Some(sampler),
                // A WebP image is reachable only through the extension: core loaders
                // cannot decode it, so it must not be the core `source`.
                source: if webp { json::Index::new(u32::MAX) } else { image },
                extensions,
                extras: Default::default(),
            })));
        }
        let info = |texture: Option<usize>| -> Option<json::texture::Info> {
            let index = texture.and_then(|t| indices.get(t).copied().flatten())?;
            Some(json::texture::Info { index, tex_coord: 0, extensions: None, extras: Default::default() })
        };
        let materials: Vec<json::Material> = model.materials.iter().map(|m| material_json(m, &info)).collect();
        materials.into_iter().map(|material| self.root.push(material)).collect()
    }

    /// One mesh made of `primitives`, held by one node, in the default scene.
    pub fn scene(&mut self, primitives: Vec<json::mesh::Primitive>, transform: NodeTransform) {
        let mesh = (!primitives.is_empty()).then(|| {
            self.root.push(json::Mesh {
                extensions: None,
                extras: Default::default(),
                name: Some("model".into()),
                primitives,
                weights: None,
            })
        });
        let node = self.root.push(json::Node {
            mesh,
            name: Some("model".into()),
            translation: transform.translation,
            scale: transform.scale,
            ..json::Node::default()
        });
        let scene =
            self.root.push(json::Scene { extensions: None, extras: Default::default(), name: None, nodes: vec![node] });
        self.root.scene = Some(scene);
    }

    /// Adds buffer 0 (the BIN chunk) and, with `fallback`, buffer 1: a meshopt fallback
    /// buffer of that many bytes holding no data. Then writes the GLB. `extensions` are
    /// both used and required: a loader without them could not show the model.
    pub fn finish<W: Write>(
        mut self,
        out: W,
        extensions: &[&'static str],
        fallback: Option<usize>,
    ) -> Result<(), FormatError> {
        // glTF forbids empty buffers: a model without triangles or textures has none.
        if !self.bin.is_empty() {
            self.root.buffers.push(json::Buffer {
                byte_length: USize64::from(self.bin.len()),
                name: None,
                uri: None,
                extensions: None,
                extras: Default::default(),
            });
        }
        if let Some(length) = fallback.filter(|&length| length > 0) {
            let mut others = serde_json::Map::new();
            others.insert("EXT_meshopt_compression".into(), serde_json::json!({ "fallback": true }));
            self.root.buffers.push(json::Buffer {
                byte_length: USize64::from(length),
                name: None,
                uri: None,
                extensions: Some(json::extensions::buffer::Buffer { others }),
                extras: Default::default(),
            });
        }
        for extension in extensions {
            self.root.extensions_used.push((*extension).into());
            self.root.extensions_required.push((*extension).into());
        }
        let json = self.root.to_vec().map_err(FormatError::encode)?;
        // The header's length field is 32 bits.
        let total = 12 + 8 + json.len().next_multiple_of(4) + 8 + self.bin.len();
        if u32::try_from(total).is_err() {
            return Err(FormatError::TooLarge { what: "GLB bytes", found: total as u64, limit: u64::from(u32::MAX) });
        }
        let glb = gltf::binary::Glb {
            header: gltf::binary::Header { magic: *b"glTF", version: 2, length: total as u32 },
            json: Cow::Owned(json),
            bin: (!self.bin.is_empty()).then_some(Cow::Owned(self.bin)),
        };
        glb.to_writer(out).map_err(|e| match e {
            gltf::Error::Io(io) => FormatError::Io(io),
            other => FormatError::encode(other),
        })
    }
}

/// A triangle-list primitive.
pub(super) fn primitive(
    attributes: BTreeMap<json::validation::Checked<json::mesh::Semantic>, json::Index<json::Accessor>>,
    indices: json::Index<json::Accessor>,
    material: Option<json::Index<json::Material>>,
) -> json::mesh::Primitive {
    json::mesh::Primitive {
        attributes,
        extensions: None,
        extras: Default::default(),
        indices: Some(indices),
        material,
        mode: Valid(json::mesh::Mode::Triangles),
        targets: None,
    }
}

fn material_json(material: &Material, info: &dyn Fn(Option<usize>) -> Option<json::texture::Info>) -> json::Material {
    let alpha_mode = match material.alpha_mode {
        AlphaMode::Opaque => json::material::AlphaMode::Opaque,
        AlphaMode::Mask => json::material::AlphaMode::Mask,
        AlphaMode::Blend => json::material::AlphaMode::Blend,
    };
    json::Material {
        alpha_cutoff: (material.alpha_mode == AlphaMode::Mask)
            .then_some(json::material::AlphaCutoff(material.alpha_cutoff)),
        alpha_mode: Valid(alpha_mode),
        double_sided: material.double_sided,
        name: material.name.clone(),
        pbr_metallic_roughness: json::material::PbrMetallicRoughness {
            base_color_factor: json::material::PbrBaseColorFactor(material.base_color_factor),
            base_color_texture: info(material.base_color_texture),
            metallic_factor: json::material::StrengthFactor(material.metallic_factor),
            roughness_factor: json::material::StrengthFactor(material.roughness_factor),
            metallic_roughness_texture: info(material.metallic_roughness_texture),
            extensions: None,
            extras: Default::default(),
        },
        normal_texture: info(material.normal_texture).map(|i| json::material::NormalTexture {
            index: i.index,
            scale: 1.0,
            tex_coord: 0,
            extensions: None,
            extras: Default::default(),
        }),
        occlusion_texture: info(material.occlusion_texture).map(|i| json::material::OcclusionTexture {
            index: i.index,
            strength: json::material::StrengthFactor(1.0),
            tex_coord: 0,
            extensions: None,
            extras: Default::default(),
        }),
        emissive_texture: info(material.emissive_texture),
        emissive_factor: json::material::EmissiveFactor(material.emissive_factor),
        extensions: None,
        extras: Default::default(),
    }
}

fn sampler_json(sampler: &Sampler) -> json::texture::Sampler {
    use json::texture::{MagFilter, MinFilter, WrappingMode};
    let wrap = |w: Wrap| match w {
        Wrap::Repeat => WrappingMode::Repeat,
        Wrap::ClampToEdge => WrappingMode::ClampToEdge,
        Wrap::MirroredRepeat => WrappingMode::MirroredRepeat,
    };
    let mag = sampler.mag_filter.and_then(|f| match f {
        json::texture::NEAREST => Some(MagFilter::Nearest),
        json::texture::LINEAR => Some(MagFilter::Linear),
        _ => None,
    });
    let min = sampler.min_filter.and_then(|f| match f {
        json::texture::NEAREST => Some(MinFilter::Nearest),
        json::texture::LINEAR => Some(MinFilter::Linear),
        json::texture::NEAREST_MIPMAP_NEAREST => Some(MinFilter::NearestMipmapNearest),
        json::texture::LINEAR_MIPMAP_NEAREST => Some(MinFilter::LinearMipmapNearest),
        json::texture::NEAREST_MIPMAP_LINEAR => Some(MinFilter::NearestMipmapLinear),
        json::texture::LINEAR_MIPMAP_LINEAR => Some(MinFilter::LinearMipmapLinear),
        _ => None,
    });
    json::texture::Sampler {
        mag_filter: mag.map(Valid),
        min_filter: min.map(Valid),
        name: None,
        wrap_s: Valid(wrap(sampler.wrap_s)),
        wrap_t: Valid(wrap(sampler.wrap_t)),
        extensions: None,
        extras: Default::default(),
    }
}

/// Little-endian bytes of `values`.
pub(super) fn floats(values: impl Iterator<Item = f32>) -> Vec<u8> {
    values.flat_map(f32::to_le_bytes).collect()
}

/// `n` at unit length, as the validator checks normals; a zero vector, which has no
/// direction, becomes +Y. Normals already unit to f32 precision are kept bit for bit, so
/// a model read back is the model written.
pub(super) fn unit(n: [f32; 3]) -> [f32; 3] {
    let squared = n[0] * n[0] + n[1] * n[1] + n[2] * n[2];
    if (squared - 1.0).abs() <= 4.0 * f32::EPSILON {
        n
    } else if squared > 1e-24 && squared.is_finite() {
        let length = squared.sqrt();
        n.map(|c| c / length)
    } else {
        [0.0, 1.0, 0.0]
    }
}

/// Component-wise minimum and maximum; glTF requires them on positions.
pub(super) fn bounds(positions: &[[f32; 3]]) -> ([f32; 3], [f32; 3]) {
    let first = positions.first().copied().unwrap_or([0.0; 3]);
    positions.iter().fold((first, first), |(mut min, mut max), p| {
        for k in 0..3 {
            min[k] = min[k].min(p[k]);
            max[k] = max[k].max(p[k]);
        }
        (min, max)
    })
}
