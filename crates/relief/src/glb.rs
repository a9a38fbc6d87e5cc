//! Binary glTF 2.0 (GLB) output: one mesh with one textured PBR material, the texture
//! embedded. The JSON is built from structs, whose field order is fixed, so the output
//! is byte-for-byte reproducible.

use serde::Serialize;

use crate::ReliefError;
use crate::mesh::Mesh;
use crate::texture::Texture;

const GLB_MAGIC: u32 = 0x4654_6C67; // "glTF"
const GLB_VERSION: u32 = 2;
const CHUNK_JSON: u32 = 0x4E4F_534A; // "JSON"
const CHUNK_BIN: u32 = 0x004E_4942; // "BIN\0"

const FLOAT: u32 = 5126;
const UNSIGNED_SHORT: u32 = 5123;
const UNSIGNED_INT: u32 = 5125;
const ARRAY_BUFFER: u32 = 34962;
const ELEMENT_ARRAY_BUFFER: u32 = 34963;
const TRIANGLES: u32 = 4;
const LINEAR: u32 = 9729;
const LINEAR_MIPMAP_LINEAR: u32 = 9987;
const CLAMP_TO_EDGE: u32 = 33071;

/// Packs the mesh and texture into a GLB file.
pub(crate) fn encode(mesh: &Mesh, texture: &Texture) -> Result<Vec<u8>, ReliefError> {
    let vertex_count = mesh.positions.len();
    // 0xFFFF is the primitive-restart value, which glTF forbids as a 16-bit index.
    let short_indices = vertex_count < usize::from(u16::MAX);

    let mut bin = Vec::new();
    let mut views = Vec::new();
    let mut push_view = |bin: &mut Vec<u8>, bytes: &[u8], target: Option<u32>| {
        let offset = bin.len();
        bin.extend_from_slice(bytes);
        while !bin.len().is_multiple_of(4) {
            bin.push(0);
        }
        views.push(BufferView { buffer: 0, byte_offset: offset, byte_length: bytes.len(), target });
        views.len() - 1
    };
    let floats = |values: &mut dyn Iterator<Item = f32>| -> Vec<u8> { values.flat_map(f32::to_le_bytes).collect() };
    let positions = push_view(&mut bin, &floats(&mut mesh.positions.iter().flatten().copied()), Some(ARRAY_BUFFER));
    let normals = push_view(&mut bin, &floats(&mut mesh.normals.iter().flatten().copied()), Some(ARRAY_BUFFER));
    let uvs = push_view(&mut bin, &floats(&mut mesh.uvs.iter().flatten().copied()), Some(ARRAY_BUFFER));
    let index_bytes: Vec<u8> = if short_indices {
        mesh.indices.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect()
    } else {
        mesh.indices.iter().flat_map(|&i| i.to_le_bytes()).collect()
    };
    let indices = push_view(&mut bin, &index_bytes, Some(ELEMENT_ARRAY_BUFFER));
    let image = push_view(&mut bin, &texture.bytes, None);

    let (min, max) = mesh.bounds();
    let accessors = vec![
        Accessor {
            buffer_view: positions,
            component_type: FLOAT,
            count: vertex_count,
            kind: "VEC3",
            // The spec requires bounds on positions; they are the exact f32 values.
            min: Some(min.map(f64::from).to_vec()),
            max: Some(max.map(f64::from).to_vec()),
        },
        Accessor {
            buffer_view: normals,
            component_type: FLOAT,
            count: vertex_count,
            kind: "VEC3",
            min: None,
            max: None,
        },
        Accessor { buffer_view: uvs, component_type: FLOAT, count: vertex_count, kind: "VEC2", min: None, max: None },
        Accessor {
            buffer_view: indices,
            component_type: if short_indices { UNSIGNED_SHORT } else { UNSIGNED_INT },
            count: mesh.indices.len(),
            kind: "SCALAR",
            min: None,
            max: None,
        },
    ];

    let document = Document {
        asset: Asset { version: "2.0", generator: "relief" },
        scene: 0,
        scenes: vec![Scene { nodes: vec![0] }],
        nodes: vec![Node { mesh: 0, name: "relief" }],
        meshes: vec![MeshJson {
            name: "relief",
            primitives: vec![Primitive {
                attributes: Attributes { position: 0, normal: 1, texcoord_0: 2 },
                indices: 3,
                material: 0,
                mode: TRIANGLES,
            }],
        }],
        materials: vec![Material {
            name: "picture",
            pbr_metallic_roughness: Pbr {
                base_color_texture: TextureRef { index: 0 },
                metallic_factor: 0.0,
                roughness_factor: 0.8,
            },
        }],
        textures: vec![TextureJson { sampler: 0, source: 0 }],
        samplers: vec![Sampler {
            mag_filter: LINEAR,
            min_filter: LINEAR_MIPMAP_LINEAR,
            wrap_s: CLAMP_TO_EDGE,
            wrap_t: CLAMP_TO_EDGE,
        }],
        images: vec![Image { buffer_view: image, mime_type: texture.mime_type }],
        accessors,
        buffer_views: views,
        buffers: vec![Buffer { byte_length: bin.len() }],
    };
    let mut json = serde_json::to_vec(&document).map_err(|e| ReliefError::Encode(format!("glTF JSON: {e}")))?;
    while !json.len().is_multiple_of(4) {
        json.push(b' ');
    }

    let total = 12 + 8 + json.len() + 8 + bin.len();
    let total =
        u32::try_from(total).map_err(|_| ReliefError::Encode("the model is larger than GLB allows (4 GiB)".into()))?;
    let mut glb = Vec::with_capacity(total as usize);
    for word in [GLB_MAGIC, GLB_VERSION, total] {
        glb.extend_from_slice(&word.to_le_bytes());
    }
    for (kind, chunk) in [(CHUNK_JSON, &json), (CHUNK_BIN, &bin)] {
        // Both lengths fit: their sum was checked above.
        glb.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        glb.extend_from_slice(&kind.to_le_bytes());
        glb.extend_from_slice(chunk);
    }
    Ok(glb)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    asset: Asset,
    scene: usize,
    scenes: Vec<Scene>,
    nodes: Vec<Node>,
    meshes: Vec<MeshJson>,
    materials: Vec<Material>,
    textures: Vec<TextureJson>,
    samplers: Vec<Sampler>,
    images: Vec<Image>,
    accessors: Vec<Accessor>,
    buffer_views: Vec<BufferView>,
    buffers: Vec<Buffer>,
}

#[derive(Serialize)]
struct Asset {
    version: &'static str,
    generator: &'static str,
}

#[derive(Serialize)]
struct Scene {
    nodes: Vec<usize>,
}

#[derive(Serialize)]
struct Node {
    mesh: usize,
    name: &'static str,
}

#[derive(Serialize)]
struct MeshJson {
    name: &'static str,
    primitives: Vec<Primitive>,
}

#[derive(Serialize)]
struct Primitive {
    attributes: Attributes,
    indices: usize,
    material: usize,
    mode: u32,
}

#[derive(Serialize)]
struct Attributes {
    #[serde(rename = "POSITION")]
    position: usize,
    #[serde(rename = "NORMAL")]
    normal: usize,
    #[serde(rename = "TEXCOORD_0")]
    texcoord_0: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Material {
    name: &'static str,
    pbr_metallic_roughness: Pbr,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Pbr {
    base_color_texture: TextureRef,
    metallic_factor: f64,
    roughness_factor: f64,
}

#[derive(Serialize)]
struct TextureRef {
    index: usize,
}

#[derive(Serialize)]
struct TextureJson {
    sampler: usize,
    source: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Sampler {
    mag_filter: u32,
    min_filter: u32,
    wrap_s: u32,
    wrap_t: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Image {
    buffer_view: usize,
    mime_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Accessor {
    buffer_view: usize,
    component_type: u32,
    count: usize,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    min: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<Vec<f64>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BufferView {
    buffer: usize,
    byte_offset: usize,
    byte_length: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Buffer {
    byte_length: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triangle_mesh() -> Mesh {
        Mesh {
            positions: vec![[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.5, 0.0]],
            normals: vec![[0.0, 0.0, 1.0]; 3],
            uvs: vec![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
            indices: vec![0, 1, 2],
            front_triangles: 1,
        }
    }

    fn texture() -> Texture {
        Texture { bytes: vec![1, 2, 3, 4, 5], width: 1, height: 1, format: "png", mime_type: "image/png" }
    }

    fn word(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    #[test]
    fn container_is_aligned_and_self_consistent() {
        let glb = encode(&triangle_mesh(), &texture()).expect("encodes");
        assert_eq!(word(&glb, 0), GLB_MAGIC);
        assert_eq!(word(&glb, 4), 2);
        assert_eq!(word(&glb, 8) as usize, glb.len());
        let json_len = word(&glb, 12) as usize;
        assert_eq!(json_len % 4, 0);
        assert_eq!(word(&glb, 16), CHUNK_JSON);
        let json: serde_json::Value = serde_json::from_slice(&glb[20..20 + json_len]).expect("valid JSON");
        assert_eq!(json["asset"]["version"], "2.0");
        assert_eq!(json["asset"]["generator"], "relief");
        assert_eq!(json["accessors"][0]["max"][0], 0.5);
        assert_eq!(json["accessors"][3]["componentType"], UNSIGNED_SHORT);
        let bin_at = 20 + json_len;
        let bin_len = word(&glb, bin_at) as usize;
        assert_eq!(word(&glb, bin_at + 4), CHUNK_BIN);
        assert_eq!(bin_len % 4, 0);
        assert_eq!(bin_at + 8 + bin_len, glb.len());
        assert_eq!(json["buffers"][0]["byteLength"], bin_len);
    }
}
