//! The in-memory model every writer converts from: the GLB's scene flattened into parts in
//! world space (metres, Y up, counter-clockwise front faces, as glTF), with materials and
//! the textures still encoded. One part is one glTF primitive under one node instance.

/// A flattened, validated model. Every index is in range and every float is finite: the
/// reader refuses anything else, so writers need not check again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub parts: Vec<Part>,
    pub materials: Vec<Material>,
    pub textures: Vec<Texture>,
    /// What the reader left out or changed (a dropped KTX2 texture), for the output's
    /// metadata.
    pub notes: Vec<String>,
}

/// One triangle list with its vertex attributes, in world space.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Part {
    pub positions: Vec<[f32; 3]>,
    /// Unit normals, one per position, when the source has them.
    pub normals: Option<Vec<[f32; 3]>>,
    /// `TEXCOORD_0`, one per position, glTF convention: (0, 0) is the image's top left.
    pub uvs: Option<Vec<[f32; 2]>>,
    /// `COLOR_0` as linear RGBA, one per position.
    pub colors: Option<Vec<[f32; 4]>>,
    /// Three per triangle, each below `positions.len()`.
    pub indices: Vec<u32>,
    /// Index into `Model::materials`; `None` is glTF's default material.
    pub material: Option<usize>,
}

/// A glTF metallic-roughness material; texture fields index `Model::textures` and use
/// `TEXCOORD_0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Material {
    pub name: Option<String>,
    /// Linear RGBA.
    pub base_color_factor: [f32; 4],
    pub base_color_texture: Option<usize>,
    pub metallic_factor: f32,
    pub roughness_factor: f32,
    /// Roughness in G, metalness in B (glTF layout).
    pub metallic_roughness_texture: Option<usize>,
    pub normal_texture: Option<usize>,
    pub occlusion_texture: Option<usize>,
    pub emissive_texture: Option<usize>,
    pub emissive_factor: [f32; 3],
    pub alpha_mode: AlphaMode,
    pub alpha_cutoff: f32,
    pub double_sided: bool,
}

impl Default for Material {
    /// glTF's default material.
    fn default() -> Self {
        Material {
            name: None,
            base_color_factor: [1.0; 4],
            base_color_texture: None,
            metallic_factor: 1.0,
            roughness_factor: 1.0,
            metallic_roughness_texture: None,
            normal_texture: None,
            occlusion_texture: None,
            emissive_texture: None,
            emissive_factor: [0.0; 3],
            alpha_mode: AlphaMode::Opaque,
            alpha_cutoff: 0.5,
            double_sided: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlphaMode {
    #[default]
    Opaque,
    Mask,
    Blend,
}

/// An encoded image with the sampler that went with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Texture {
    /// The image file's bytes, as found in the GLB.
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
    /// From the image header; the reader checked them against `Limits`.
    pub width: u32,
    pub height: u32,
    pub sampler: Sampler,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Webp => "webp",
        }
    }
}

/// glTF sampler state. Filters keep glTF's numeric constants (9728 NEAREST, 9729 LINEAR,
/// 9984..9987 mipmap modes) so a GLB writer can copy them unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sampler {
    pub wrap_s: Wrap,
    pub wrap_t: Wrap,
    pub mag_filter: Option<u32>,
    pub min_filter: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wrap {
    #[default]
    Repeat,
    ClampToEdge,
    MirroredRepeat,
}

impl Part {
    /// The invariants the reader guarantees, checked again for a part built by hand
    /// (the fields are public): whole triangles, every index below the vertex count and
    /// one attribute per vertex. meshoptimizer's C code and the writers index with them
    /// unchecked, so they look first.
    pub(crate) fn check(&self) -> Result<(), crate::FormatError> {
        let vertices = self.positions.len();
        let lengths =
            [self.normals.as_ref().map(Vec::len), self.uvs.as_ref().map(Vec::len), self.colors.as_ref().map(Vec::len)];
        if !self.indices.len().is_multiple_of(3) {
            return Err(crate::FormatError::unreadable("a part's index count is not a multiple of 3"));
        }
        if lengths.iter().flatten().any(|&n| n != vertices) {
            return Err(crate::FormatError::unreadable("a part's attributes differ in length from its positions"));
        }
        if self.indices.iter().any(|&i| i as usize >= vertices) {
            return Err(crate::FormatError::unreadable("a part's index is past its last vertex"));
        }
        Ok(())
    }
}

impl Model {
    /// Triangles over all parts.
    pub fn triangles(&self) -> u64 {
        self.parts.iter().map(|p| (p.indices.len() / 3) as u64).sum()
    }

    /// Vertices over all parts.
    pub fn vertices(&self) -> u64 {
        self.parts.iter().map(|p| p.positions.len() as u64).sum()
    }

    /// The axis-aligned box around every referenced vertex, `None` for an empty model.
    pub fn bounds(&self) -> Option<([f32; 3], [f32; 3])> {
        let mut bounds: Option<([f32; 3], [f32; 3])> = None;
        for part in &self.parts {
            for &index in &part.indices {
                let p = part.positions[index as usize];
                let (min, max) = bounds.get_or_insert((p, p));
                for axis in 0..3 {
                    min[axis] = min[axis].min(p[axis]);
                    max[axis] = max[axis].max(p[axis]);
                }
            }
        }
        bounds
    }

    /// Whether the surface, with vertices welded by exact position, is closed: every
    /// edge is shared by exactly two triangles with opposite directions. This is the
    /// watertightness a slicer (and trimesh) checks.
    pub fn welded_is_closed(&self) -> bool {
        use std::collections::HashMap;
        let mut ids: HashMap<[u32; 3], u32> = HashMap::new();
        let mut edges: HashMap<(u32, u32), i32> = HashMap::new();
        for part in &self.parts {
            let welded: Vec<u32> = part
                .positions
                .iter()
                .map(|p| {
                    let key = p.map(|c| (c + 0.0).to_bits());
                    let next = ids.len() as u32;
                    *ids.entry(key).or_insert(next)
                })
                .collect();
            for triangle in part.indices.chunks_exact(3) {
                let t = [0, 1, 2].map(|k| welded[triangle[k] as usize]);
                for k in 0..3 {
                    let (a, b) = (t[k], t[(k + 1) % 3]);
                    if a == b {
                        return false;
                    }
                    // +1 for a→b, −1 for b→a: a closed, consistently wound surface sums
                    // to zero on every edge, seen exactly twice.
                    let (key, sign) = if a < b { ((a, b), 1) } else { ((b, a), -1) };
                    let entry = edges.entry(key).or_insert(0);
                    *entry += sign * 16 + 1;
                }
            }
        }
        !edges.is_empty() && edges.values().all(|&v| v == 2)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A unit cube, 8 shared vertices, outward counter-clockwise faces.
    pub(crate) fn cube() -> Part {
        let positions = vec![
            [0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            [1.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [1.0, 0.0, 1.0],
            [1.0, 1.0, 1.0],
            [0.0, 1.0, 1.0],
        ];
        let indices = vec![
            0, 2, 1, 0, 3, 2, // z = 0, facing −z
            4, 5, 6, 4, 6, 7, // z = 1
            0, 1, 5, 0, 5, 4, // y = 0
            3, 7, 6, 3, 6, 2, // y = 1
            0, 4, 7, 0, 7, 3, // x = 0
            1, 2, 6, 1, 6, 5, // x = 1
        ];
        Part { positions, indices, ..Part::default() }
    }

    #[test]
    fn cube_is_closed_and_bounded() {
        let model = Model { parts: vec![cube()], ..Model::default() };
        assert_eq!(model.triangles(), 12);
        assert_eq!(model.bounds(), Some(([0.0; 3], [1.0; 3])));
        assert!(model.welded_is_closed());
    }

    #[test]
    fn an_open_or_flipped_cube_is_not_closed() {
        let mut open = cube();
        open.indices.truncate(33);
        let model = Model { parts: vec![open], ..Model::default() };
        assert!(!model.welded_is_closed());

        let mut flipped = cube();
        flipped.indices.swap(0, 1);
        let model = Model { parts: vec![flipped], ..Model::default() };
        assert!(!model.welded_is_closed());
    }

    #[test]
    fn split_vertices_are_welded_by_position() {
        // The same cube with every triangle given its own three vertices, as STL has it.
        let shared = cube();
        let mut split = Part::default();
        for &index in &shared.indices {
            split.indices.push(split.positions.len() as u32);
            split.positions.push(shared.positions[index as usize]);
        }
        let model = Model { parts: vec![split], ..Model::default() };
        assert!(model.welded_is_closed());
    }
}
