//! GLB → [`Model`]: the one place untrusted model bytes are parsed.
//!
//! gltf 1.4.1 splits nothing here and validates only what it can: the GLB container is
//! checked by hand (lengths before slices), the JSON goes through `gltf-json`'s
//! deserialiser and validator, and accessor bytes are read by `accessor` with checked
//! ranges. Every size that drives an allocation (triangles after instancing, vertices,
//! decoded meshopt bytes, texture pixels) is checked against [`Limits`] before the
//! allocation.

mod accessor;
mod meshopt;

use std::collections::HashMap;

// gltf-json directly (the crate gltf re-exports as `gltf::json`), as the GLB writers use it.
use gltf_json as json;
use gltf_json::validation::Validate;
use serde_json::Value;

use crate::error::FormatError;
use crate::limits::{Cancel, Estimate, Limits};
use crate::model::{AlphaMode, Material, Model, Part, Sampler, Texture, Wrap};
use crate::texture;
use accessor::Semantic;

/// Extensions a file may require that this reader understands.
const UNDERSTOOD: &[&str] = &[
    meshopt::EXTENSION,
    "KHR_mesh_quantization",
    "EXT_texture_webp",
    // Its textures are dropped with a note; the rest of the model converts.
    "KHR_texture_basisu",
    // Emission strength only scales emission, which no output format carries beyond
    // glTF itself; ignoring it loses brightness, not geometry.
    "KHR_materials_emissive_strength",
];
const DRACO: &str = "KHR_draco_mesh_compression";
const WEBP: &str = "EXT_texture_webp";
const BASISU: &str = "KHR_texture_basisu";

/// What reading and converting `glb` will cost, from its JSON and image headers only
/// (nothing proportional to the mesh is allocated). Fails like `Model::read_glb` would
/// on anything over `limits`.
pub fn estimate(glb: &[u8], limits: &Limits) -> Result<Estimate, FormatError> {
    let source = Source::open(glb, limits)?;
    source.estimate(&Cancel::new())
}

impl Model {
    /// Reads a GLB into a flattened model, refusing anything over `limits`.
    pub fn read_glb(glb: &[u8], limits: &Limits, cancel: &Cancel) -> Result<Model, FormatError> {
        let source = Source::open(glb, limits)?;
        source.estimate(cancel)?;
        source.read(cancel)
    }
}

/// The GLB's two chunks.
struct Container<'a> {
    json: &'a [u8],
    bin: Option<&'a [u8]>,
}

fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl<'a> Container<'a> {
    /// Splits a GLB after checking its header and chunk lengths (gltf's own splitter
    /// subtracts before it checks).
    fn split(glb: &'a [u8], limits: &Limits) -> Result<Container<'a>, FormatError> {
        Limits::check("input bytes", glb.len() as u64, limits.max_input)?;
        if glb.get(0..4) != Some(b"glTF") {
            return Err(FormatError::unreadable("this is not a GLB file"));
        }
        let truncated = || FormatError::unreadable("the GLB file is truncated");
        if le32(glb, 4).ok_or_else(truncated)? != 2 {
            return Err(FormatError::unsupported("only glTF 2.0 is supported"));
        }
        let length = le32(glb, 8).ok_or_else(truncated)? as usize;
        if length < 20 || length > glb.len() {
            return Err(truncated());
        }
        let body = &glb[12..length];
        let json_length = le32(body, 0).ok_or_else(truncated)? as usize;
        if body.get(4..8) != Some(b"JSON") {
            return Err(FormatError::unreadable("the GLB's first chunk is not JSON"));
        }
        Limits::check("JSON bytes", json_length as u64, limits.max_json)?;
        let json = body.get(8..8 + json_length).ok_or_else(truncated)?;
        let rest = &body[8 + json_length..];
        // A BIN chunk, if any, comes second; unknown chunks are ignored, as the spec says.
        let bin = match (le32(rest, 0), rest.get(4..8)) {
            (Some(bin_length), Some(b"BIN\0")) => Some(rest.get(8..8 + bin_length as usize).ok_or_else(truncated)?),
            _ => None,
        };
        Ok(Container { json, bin })
    }
}

/// A parsed, validated document with its binary data and decoded meshopt views.
struct Source<'a> {
    document: gltf::Document,
    json_length: usize,
    /// Each buffer's bytes: the BIN chunk for buffer 0 without `uri`; `None` for
    /// anything else (external files, meshopt fallback buffers), which may not be read.
    buffers: Vec<Option<&'a [u8]>>,
    /// Decoded bytes of each `EXT_meshopt_compression` view, by view index.
    decoded: HashMap<usize, Vec<u8>>,
    /// Planned meshopt decodes, checked but not yet run.
    compressed: Vec<(usize, meshopt::Compressed)>,
    limits: Limits,
    input_length: usize,
    /// Texture bytes copied into the model so far: at most the input's length, however
    /// many textures show the same image.
    copied: std::cell::Cell<usize>,
}

/// Keeps an attacker-chosen name short and printable before it goes into a message.
fn shown(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_graphic()).take(64).collect()
}

impl<'a> Source<'a> {
    fn open(glb: &'a [u8], limits: &Limits) -> Result<Source<'a>, FormatError> {
        let container = Container::split(glb, limits)?;
        let root: json::Root = json::deserialize::from_slice(container.json)
            .map_err(|e| FormatError::unreadable(format!("the glTF JSON is invalid: {e}")))?;
        for name in &root.extensions_required {
            if name == DRACO {
                return Err(FormatError::unsupported("Draco-compressed models are not supported"));
            }
            if !UNDERSTOOD.contains(&name.as_str()) {
                return Err(FormatError::unsupported(format!(
                    "the required extension {} is not supported",
                    shown(name)
                )));
            }
        }
        precheck(&root)?;
        let mut first_error = None;
        root.validate(&root, json::Path::new, &mut |path, error| {
            let path = path().to_string();
            // Required extensions were judged above, against what this reader handles
            // rather than what gltf-json knows.
            if first_error.is_none() && !path.starts_with("extensionsRequired") {
                first_error = Some(format!("{} ({error:?})", shown(&path)));
            }
        });
        if let Some(error) = first_error {
            // A file that uses Draco without requiring it may keep its attributes only in
            // compressed form (accessors without buffer views): say why it cannot be read.
            if root.extensions_used.iter().any(|name| name == DRACO) {
                return Err(FormatError::unsupported("Draco-compressed models are not supported"));
            }
            return Err(FormatError::unreadable(format!("the glTF is invalid at {error}")));
        }
        let document = gltf::Document::from_json_without_validation(root);

        let buffers = document
            .buffers()
            .map(|buffer| match (buffer.index(), buffer.source(), container.bin) {
                (0, gltf::buffer::Source::Bin, Some(bin)) => {
                    // The BIN chunk may be padded past byteLength, never shorter.
                    bin.get(..buffer.length())
                        .map(Some)
                        .ok_or_else(|| FormatError::unreadable("buffer 0 is longer than the GLB's BIN chunk"))
                }
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut compressed = Vec::new();
        for view in document.views() {
            if let Some(value) = view.extension_value(meshopt::EXTENSION) {
                compressed.push((view.index(), meshopt::Compressed::parse(value, view.length())?));
            }
        }
        Ok(Source {
            document,
            json_length: container.json.len(),
            buffers,
            decoded: HashMap::new(),
            compressed,
            limits: limits.clone(),
            input_length: glb.len(),
            copied: std::cell::Cell::new(0),
        })
    }

    /// The bytes of a buffer view: decoded meshopt data, or a checked slice of its buffer.
    fn view_bytes(&self, view: &gltf::buffer::View) -> Result<&[u8], FormatError> {
        if let Some(bytes) = self.decoded.get(&view.index()) {
            return Ok(bytes);
        }
        let buffer = self
            .buffers
            .get(view.buffer().index())
            .copied()
            .flatten()
            .ok_or_else(|| FormatError::unsupported("a buffer view uses data outside the GLB's BIN chunk"))?;
        view.offset()
            .checked_add(view.length())
            .and_then(|end| buffer.get(view.offset()..end))
            .ok_or_else(|| FormatError::unreadable("a buffer view reaches past its buffer"))
    }

    fn decoded_bytes(&self) -> u64 {
        self.compressed.iter().map(|(_, c)| c.decoded_len().unwrap_or(usize::MAX) as u64).sum()
    }

    /// Decodes every meshopt view (their total size was checked by `estimate`).
    fn decode_meshopt(&mut self, cancel: &Cancel) -> Result<(), FormatError> {
        for (view, compressed) in std::mem::take(&mut self.compressed) {
            cancel.check()?;
            let buffer = self
                .buffers
                .get(compressed.buffer)
                .copied()
                .flatten()
                .ok_or_else(|| FormatError::unreadable("a meshopt view's data is not in the BIN chunk"))?;
            let source = compressed
                .offset
                .checked_add(compressed.length)
                .and_then(|end| buffer.get(compressed.offset..end))
                .ok_or_else(|| FormatError::unreadable("a meshopt view reaches past its buffer"))?;
            self.decoded.insert(view, compressed.decode(source)?);
        }
        Ok(())
    }

    /// The scene's mesh instances, with the total size of their triangles and vertices
    /// checked before any mesh data is read.
    fn instances(&self, cancel: &Cancel) -> Result<Flattened, FormatError> {
        let roots: Vec<usize> = match self.document.default_scene().or_else(|| self.document.scenes().next()) {
            Some(scene) => scene.nodes().map(|n| n.index()).collect(),
            None => {
                // No scene: every node that is nobody's child, as viewers do.
                let mut is_child = vec![false; self.document.nodes().len()];
                for node in self.document.nodes() {
                    for child in node.children() {
                        is_child[child.index()] = true;
                    }
                }
                (0..is_child.len()).filter(|&i| !is_child[i]).collect()
            }
        };
        let mut walk = Walk {
            nodes: self.document.nodes().collect(),
            limits: &self.limits,
            cancel,
            visits: 0,
            path: Vec::new(),
            instances: Vec::new(),
        };
        for root in roots {
            walk.visit(root, IDENTITY)?;
        }
        let (mut triangles, mut vertices, mut parts) = (0u64, 0u64, 0u64);
        let meshes: Vec<gltf::Mesh> = self.document.meshes().collect();
        for instance in &walk.instances {
            for primitive in meshes[instance.mesh].primitives() {
                // Each primitive shown by each node becomes a part: counted like a node
                // visit, so that many empty primitives cannot make this loop endless.
                parts += 1;
                Limits::check("mesh parts", parts, self.limits.max_nodes)?;
                cancel.check_every(parts as usize)?;
                let (t, v) = primitive_size(&primitive)?;
                triangles = triangles.saturating_add(t);
                vertices = vertices.saturating_add(v);
            }
            Limits::check("triangles", triangles, self.limits.max_triangles)?;
            Limits::check("vertices", vertices, self.limits.max_vertices)?;
        }
        Ok(Flattened { instances: walk.instances, triangles, vertices, parts })
    }

    fn estimate(&self, cancel: &Cancel) -> Result<Estimate, FormatError> {
        let Flattened { triangles, vertices, parts, .. } = self.instances(cancel)?;
        let decoded = self.decoded_bytes();
        Limits::check("decompressed bytes", decoded, self.limits.max_memory / 2)?;
        let mut texture_pixels = 0u64;
        for texture in self.document.textures() {
            if let Some(image) = self.texture_image(&texture)? {
                let (bytes, format) = self.image_bytes(image)?;
                let (width, height) = texture::dimensions(bytes, format, &self.limits)?;
                texture_pixels += u64::from(width) * u64::from(height);
            }
        }
        // Per vertex: the model's attributes (48 bytes) and a writer's working copy;
        // per part: its vectors' headers and allocation slack; per pixel: the decoded
        // image, its RGBA copy and a resized copy; the JSON tree costs up to ~16× its
        // text; copied texture bytes at most the input again. Then half again, to stay
        // on the safe side.
        let memory = (self.input_length as u64)
            .saturating_mul(2)
            .saturating_add(parts.saturating_mul(512))
            .saturating_add((self.json_length as u64).saturating_mul(16))
            .saturating_add(decoded)
            .saturating_add(vertices.saturating_mul(112))
            .saturating_add(triangles.saturating_mul(24))
            .saturating_add(texture_pixels.saturating_mul(12));
        let memory_bytes = memory.saturating_add(memory / 2);
        Limits::check("estimated memory", memory_bytes, self.limits.max_memory)?;
        let needs_extensions = self.document.extensions_required().next().is_some()
            || self.document.extensions_used().any(|name| name == "EXT_texture_webp");
        Ok(Estimate { triangles, vertices, texture_pixels, memory_bytes, needs_extensions })
    }

    fn read(mut self, cancel: &Cancel) -> Result<Model, FormatError> {
        self.decode_meshopt(cancel)?;
        let mut model = Model::default();
        let mut textures: HashMap<usize, Option<usize>> = HashMap::new();
        for material in self.document.materials() {
            let material = self.material(&material, &mut model, &mut textures)?;
            model.materials.push(material);
        }
        let instances = self.instances(cancel)?.instances;
        let meshes: Vec<gltf::Mesh> = self.document.meshes().collect();
        for instance in &instances {
            for primitive in meshes[instance.mesh].primitives() {
                let part = self.part(&primitive, &instance.matrix, cancel)?;
                model.parts.push(part);
            }
        }
        Ok(model)
    }

    fn part(&self, primitive: &gltf::Primitive, matrix: &Matrix, cancel: &Cancel) -> Result<Part, FormatError> {
        let read = |semantic: &gltf::Semantic| -> Option<(gltf::Accessor, gltf::buffer::View)> {
            let accessor = primitive.get(semantic)?;
            let view = accessor.view()?;
            Some((accessor, view))
        };
        let (accessor, view) = read(&gltf::Semantic::Positions)
            .ok_or_else(|| FormatError::unreadable("a primitive has no POSITION data"))?;
        let mut positions =
            accessor::read_vectors::<3>(&accessor, self.view_bytes(&view)?, view.stride(), Semantic::Position, cancel)?;
        let count = positions.len();
        let same_count = |values: usize, what: &str| {
            if values == count {
                Ok(())
            } else {
                Err(FormatError::unreadable(format!("{what} has {values} elements for {count} positions")))
            }
        };
        let normals = match read(&gltf::Semantic::Normals) {
            Some((accessor, view)) => {
                let normals = accessor::read_vectors::<3>(
                    &accessor,
                    self.view_bytes(&view)?,
                    view.stride(),
                    Semantic::Normal,
                    cancel,
                )?;
                same_count(normals.len(), "NORMAL")?;
                Some(normals)
            }
            None => None,
        };
        let uvs = match read(&gltf::Semantic::TexCoords(0)) {
            Some((accessor, view)) => {
                let uvs = accessor::read_vectors::<2>(
                    &accessor,
                    self.view_bytes(&view)?,
                    view.stride(),
                    Semantic::TexCoord,
                    cancel,
                )?;
                same_count(uvs.len(), "TEXCOORD_0")?;
                Some(uvs)
            }
            None => None,
        };
        let colors = match read(&gltf::Semantic::Colors(0)) {
            Some((accessor, view)) => {
                let colors = accessor::read_vectors::<4>(
                    &accessor,
                    self.view_bytes(&view)?,
                    view.stride(),
                    Semantic::Color,
                    cancel,
                )?;
                same_count(colors.len(), "COLOR_0")?;
                Some(colors)
            }
            None => None,
        };
        let mut indices = match primitive.indices() {
            Some(accessor) => {
                let view = accessor.view().ok_or_else(|| FormatError::unsupported("indices without a buffer view"))?;
                accessor::read_indices(&accessor, self.view_bytes(&view)?, view.stride(), count, cancel)?
            }
            None => (0..count as u32).collect(),
        };
        indices = triangle_list(primitive.mode(), indices)?;

        let mut normals = normals;
        if *matrix != IDENTITY {
            transform(matrix, &mut positions, normals.as_deref_mut(), &mut indices)?;
        } else if let Some(normals) = normals.as_deref_mut() {
            for n in normals {
                *n = unit(*n);
            }
        }
        Ok(Part { positions, normals, uvs, colors, indices, material: primitive.material().index() })
    }

    fn material(
        &self,
        material: &gltf::Material,
        model: &mut Model,
        textures: &mut HashMap<usize, Option<usize>>,
    ) -> Result<Material, FormatError> {
        let pbr = material.pbr_metallic_roughness();
        let note = "a texture uses TEXCOORD_1 or higher; TEXCOORD_0 was used instead";
        let mut texture = |info: Option<gltf::Texture>, tex_coord: u32| {
            let Some(texture) = info else {
                return Ok::<_, FormatError>(None);
            };
            if tex_coord != 0 && !model.notes.iter().any(|n| n == note) {
                model.notes.push(note.into());
            }
            if let Some(&known) = textures.get(&texture.index()) {
                return Ok(known);
            }
            let loaded = self.load_texture(&texture, model)?;
            textures.insert(texture.index(), loaded);
            Ok(loaded)
        };
        let base = pbr.base_color_texture();
        let base_color_texture =
            texture(base.as_ref().map(|i| i.texture()), base.as_ref().map_or(0, |i| i.tex_coord()))?;
        let mr = pbr.metallic_roughness_texture();
        let metallic_roughness_texture =
            texture(mr.as_ref().map(|i| i.texture()), mr.as_ref().map_or(0, |i| i.tex_coord()))?;
        let normal = material.normal_texture();
        let normal_texture =
            texture(normal.as_ref().map(|i| i.texture()), normal.as_ref().map_or(0, |i| i.tex_coord()))?;
        let occlusion = material.occlusion_texture();
        let occlusion_texture =
            texture(occlusion.as_ref().map(|i| i.texture()), occlusion.as_ref().map_or(0, |i| i.tex_coord()))?;
        let emissive = material.emissive_texture();
        let emissive_texture =
            texture(emissive.as_ref().map(|i| i.texture()), emissive.as_ref().map_or(0, |i| i.tex_coord()))?;
        let result = Material {
            name: material.name().map(str::to_owned),
            base_color_factor: pbr.base_color_factor(),
            base_color_texture,
            metallic_factor: pbr.metallic_factor(),
            roughness_factor: pbr.roughness_factor(),
            metallic_roughness_texture,
            normal_texture,
            occlusion_texture,
            emissive_texture,
            emissive_factor: material.emissive_factor(),
            alpha_mode: match material.alpha_mode() {
                gltf::material::AlphaMode::Opaque => AlphaMode::Opaque,
                gltf::material::AlphaMode::Mask => AlphaMode::Mask,
                gltf::material::AlphaMode::Blend => AlphaMode::Blend,
            },
            alpha_cutoff: material.alpha_cutoff().unwrap_or(0.5),
            double_sided: material.double_sided(),
        };
        let factors = result.base_color_factor.iter().chain(&result.emissive_factor).chain([
            &result.metallic_factor,
            &result.roughness_factor,
            &result.alpha_cutoff,
        ]);
        for factor in factors {
            if !factor.is_finite() {
                return Err(FormatError::unreadable("a material factor is not a finite number"));
            }
        }
        Ok(result)
    }

    /// The image a texture shows: its core `source`, else its `EXT_texture_webp` source.
    /// `None` when it has neither (a KTX2-only texture).
    fn texture_image(&self, texture: &gltf::Texture) -> Result<Option<usize>, FormatError> {
        if let Some(image) = texture.source() {
            return Ok(Some(image.index()));
        }
        match texture.extension_value(WEBP) {
            Some(webp) => {
                let index = webp
                    .get("source")
                    .and_then(Value::as_u64)
                    .and_then(|i| usize::try_from(i).ok())
                    .filter(|&i| i < self.document.images().len())
                    .ok_or_else(|| FormatError::unreadable("an EXT_texture_webp source is not an image"))?;
                Ok(Some(index))
            }
            None => Ok(None),
        }
    }

    /// An image's bytes from its buffer view, with the format sniffed from the bytes.
    fn image_bytes(&self, index: usize) -> Result<(&[u8], crate::ImageFormat), FormatError> {
        // The JSON rather than `gltf::Image::source`, which unwraps a missing mimeType.
        let image = &self.document.as_json().images[index];
        let view = match (&image.buffer_view, &image.uri) {
            (Some(view), _) => self
                .document
                .views()
                .nth(view.value())
                .ok_or_else(|| FormatError::unreadable("an image's buffer view is missing"))?,
            (None, _) => {
                return Err(FormatError::unsupported("images outside the GLB (uri) are not supported"));
            }
        };
        let bytes = self.view_bytes(&view)?;
        let declared = image.mime_type.as_ref().map(|m| m.0.as_str());
        let format = texture::sniff(bytes, declared)?;
        Ok((bytes, format))
    }

    fn load_texture(&self, texture: &gltf::Texture, model: &mut Model) -> Result<Option<usize>, FormatError> {
        let Some(image) = self.texture_image(texture)? else {
            let note = if texture.extension_value(BASISU).is_some() {
                "a KTX2 (KHR_texture_basisu) texture was left out: it cannot be decoded"
            } else {
                "a texture without an image was left out"
            };
            if !model.notes.iter().any(|n| n == note) {
                model.notes.push(note.into());
            }
            return Ok(None);
        };
        let (bytes, format) = self.image_bytes(image)?;
        let (width, height) = texture::dimensions(bytes, format, &self.limits)?;
        let copied = self.copied.get().saturating_add(bytes.len());
        Limits::check("texture bytes", copied as u64, self.input_length as u64)?;
        self.copied.set(copied);
        let sampler = texture.sampler();
        let wrap = |mode| match mode {
            gltf::texture::WrappingMode::ClampToEdge => Wrap::ClampToEdge,
            gltf::texture::WrappingMode::MirroredRepeat => Wrap::MirroredRepeat,
            gltf::texture::WrappingMode::Repeat => Wrap::Repeat,
        };
        model.textures.push(Texture {
            bytes: bytes.to_vec(),
            format,
            width,
            height,
            sampler: Sampler {
                wrap_s: wrap(sampler.wrap_s()),
                wrap_t: wrap(sampler.wrap_t()),
                mag_filter: sampler.mag_filter().map(|f| f.as_gl_enum()),
                min_filter: sampler.min_filter().map(|f| f.as_gl_enum()),
            },
        });
        Ok(Some(model.textures.len() - 1))
    }
}

/// Checks gltf-json's validator itself relies on: its primitive hook indexes the
/// accessor array with the POSITION index before the index is validated.
fn precheck(root: &json::Root) -> Result<(), FormatError> {
    for mesh in &root.meshes {
        for primitive in &mesh.primitives {
            for index in primitive.attributes.values() {
                if index.value() >= root.accessors.len() {
                    return Err(FormatError::unreadable("a primitive names an accessor that does not exist"));
                }
            }
        }
    }
    Ok(())
}

/// Triangles and vertices of one primitive, from its accessor counts.
fn primitive_size(primitive: &gltf::Primitive) -> Result<(u64, u64), FormatError> {
    let vertices = primitive.get(&gltf::Semantic::Positions).map_or(0, |a| a.count()) as u64;
    let elements = primitive.indices().map_or(vertices, |a| a.count() as u64);
    let triangles = match primitive.mode() {
        gltf::mesh::Mode::Triangles => elements / 3,
        gltf::mesh::Mode::TriangleStrip | gltf::mesh::Mode::TriangleFan => elements.saturating_sub(2),
        other => {
            return Err(FormatError::unsupported(format!(
                "primitives drawn as {other:?} are not supported, only triangles"
            )));
        }
    };
    Ok((triangles, vertices))
}

/// Turns strips and fans into lists; lists must hold whole triangles.
fn triangle_list(mode: gltf::mesh::Mode, indices: Vec<u32>) -> Result<Vec<u32>, FormatError> {
    use gltf::mesh::Mode;
    match mode {
        Mode::Triangles if indices.len().is_multiple_of(3) => Ok(indices),
        Mode::Triangles => Err(FormatError::unreadable("a triangle list's length is not a multiple of 3")),
        Mode::TriangleStrip => Ok((2..indices.len())
            .flat_map(|i| {
                // Every other triangle of a strip is wound the other way round.
                if i % 2 == 0 {
                    [indices[i - 2], indices[i - 1], indices[i]]
                } else {
                    [indices[i - 1], indices[i - 2], indices[i]]
                }
            })
            .collect()),
        Mode::TriangleFan => Ok((2..indices.len()).flat_map(|i| [indices[0], indices[i - 1], indices[i]]).collect()),
        other => {
            Err(FormatError::unsupported(format!("primitives drawn as {other:?} are not supported, only triangles")))
        }
    }
}

/// A column-major 4×4 matrix, glTF's layout: `m[column][row]`.
type Matrix = [[f32; 4]; 4];

const IDENTITY: Matrix = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];

fn multiply(a: &Matrix, b: &Matrix) -> Matrix {
    let mut out = [[0.0f32; 4]; 4];
    for (column, out_column) in out.iter_mut().enumerate() {
        for (row, value) in out_column.iter_mut().enumerate() {
            *value = (0..4).map(|k| a[k][row] * b[column][k]).sum();
        }
    }
    out
}

fn unit(v: [f32; 3]) -> [f32; 3] {
    let length = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    if length > 0.0 && length.is_finite() { v.map(|c| c / length) } else { [0.0; 3] }
}

/// Moves a part into world space. A mirroring transform reverses the winding, so the
/// triangles are turned round to keep facing outwards.
fn transform(
    m: &Matrix,
    positions: &mut [[f32; 3]],
    normals: Option<&mut [[f32; 3]]>,
    indices: &mut [u32],
) -> Result<(), FormatError> {
    for p in positions.iter_mut() {
        let [x, y, z] = *p;
        *p = [0, 1, 2].map(|r| m[0][r] * x + m[1][r] * y + m[2][r] * z + m[3][r]);
        if p.iter().any(|c| !c.is_finite()) {
            return Err(FormatError::unreadable("a node transform moves a vertex to infinity"));
        }
    }
    // The normal matrix is the inverse transpose of the upper 3×3, which is its cofactor
    // matrix divided by the determinant; the division is dropped since normals are
    // renormalised, but the determinant's sign is kept.
    let a = |c: usize, r: usize| m[c][r];
    let cofactor = |r: usize, c: usize| {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
        a(c1, r1) * a(c2, r2) - a(c2, r1) * a(c1, r2)
    };
    let determinant = (0..3).map(|c| a(c, 0) * cofactor(0, c)).sum::<f32>();
    let sign = if determinant < 0.0 { -1.0 } else { 1.0 };
    if let Some(normals) = normals {
        for n in normals.iter_mut() {
            let v = *n;
            let t = [0, 1, 2].map(|r| (0..3).map(|c| cofactor(r, c) * v[c]).sum::<f32>() * sign);
            *n = unit(t);
        }
    }
    if determinant < 0.0 {
        for triangle in indices.chunks_exact_mut(3) {
            triangle.swap(1, 2);
        }
    }
    Ok(())
}

struct Instance {
    mesh: usize,
    matrix: Matrix,
}

/// The scene's mesh instances and what they add up to.
struct Flattened {
    instances: Vec<Instance>,
    triangles: u64,
    vertices: u64,
    parts: u64,
}

/// Depth-first flattening of the node tree with the checks a hostile file needs: cycles
/// (invalid glTF, but gltf-json does not detect them), depth, and the number of node
/// visits (a node reused by many parents is visited once per path).
struct Walk<'d, 'l> {
    nodes: Vec<gltf::Node<'d>>,
    limits: &'l Limits,
    cancel: &'l Cancel,
    visits: u64,
    path: Vec<usize>,
    instances: Vec<Instance>,
}

impl Walk<'_, '_> {
    fn visit(&mut self, index: usize, parent: Matrix) -> Result<(), FormatError> {
        if self.path.contains(&index) {
            return Err(FormatError::unreadable("the node hierarchy has a cycle"));
        }
        self.visits += 1;
        Limits::check("node visits", self.visits, self.limits.max_nodes)?;
        Limits::check("node depth", self.path.len() as u64 + 1, u64::from(self.limits.max_depth))?;
        self.cancel.check_every(self.visits as usize)?;
        let node = self.nodes[index].clone();
        let local = node.transform().matrix();
        let matrix = if local == IDENTITY { parent } else { multiply(&parent, &local) };
        if let Some(mesh) = node.mesh() {
            self.instances.push(Instance { mesh: mesh.index(), matrix });
        }
        self.path.push(index);
        for child in node.children() {
            self.visit(child.index(), matrix)?;
        }
        self.path.pop();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
