//! Shared checks for the integration tests: reading a GLB back with the `gltf` crate
//! and verifying the mesh's topology and silhouette independently of the engine.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A fixture picture from the shared folder beside the repository.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/images").join(name)
}

/// The mesh as a glTF reader sees it.
pub struct Decoded {
    pub positions: Vec<[f32; 3]>,
    pub normals: Vec<[f32; 3]>,
    pub uvs: Vec<[f32; 2]>,
    pub indices: Vec<u32>,
    pub accessor_min: Vec<f64>,
    pub accessor_max: Vec<f64>,
    pub image_mime: String,
}

/// Parses the GLB with the `gltf` crate (which validates the structure and decodes the
/// embedded texture) and returns the single primitive's data.
pub fn read_glb(glb: &[u8]) -> Decoded {
    let (document, buffers, images) = gltf::import_slice(glb).expect("the GLB imports");
    assert_eq!(images.len(), 1, "one embedded texture");
    let meshes: Vec<_> = document.meshes().collect();
    assert_eq!(meshes.len(), 1);
    let primitives: Vec<_> = meshes[0].primitives().collect();
    assert_eq!(primitives.len(), 1);
    let primitive = &primitives[0];
    assert_eq!(primitive.mode(), gltf::mesh::Mode::Triangles);
    let reader = primitive.reader(|buffer| Some(&buffers[buffer.index()]));
    let positions: Vec<[f32; 3]> = reader.read_positions().expect("positions").collect();
    let normals: Vec<[f32; 3]> = reader.read_normals().expect("normals").collect();
    let uvs: Vec<[f32; 2]> = reader.read_tex_coords(0).expect("texture coordinates").into_f32().collect();
    let indices: Vec<u32> = reader.read_indices().expect("indices").into_u32().collect();
    let accessor = primitive.get(&gltf::Semantic::Positions).expect("position accessor");
    let bound = |v: Option<gltf::json::Value>| -> Vec<f64> {
        v.expect("position bounds")
            .as_array()
            .expect("bounds array")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect()
    };
    let material = primitive.material();
    let pbr = material.pbr_metallic_roughness();
    assert_eq!(pbr.metallic_factor(), 0.0);
    let texture = pbr.base_color_texture().expect("base colour texture");
    let image_mime = match texture.texture().source().expect("texture has an image").source() {
        gltf::image::Source::View { mime_type, .. } => mime_type.to_string(),
        gltf::image::Source::Uri { .. } => panic!("texture must be embedded"),
    };
    Decoded {
        positions,
        normals,
        uvs,
        indices,
        accessor_min: bound(accessor.min()),
        accessor_max: bound(accessor.max()),
        image_mime,
    }
}

/// Every undirected edge in exactly two triangles, every directed edge in at most one:
/// closed (watertight), manifold along edges, and consistently wound.
pub fn assert_watertight(indices: &[u32]) {
    assert_eq!(indices.len() % 3, 0);
    let mut directed: BTreeMap<(u32, u32), u32> = BTreeMap::new();
    for t in indices.chunks_exact(3) {
        assert!(t[0] != t[1] && t[1] != t[2] && t[0] != t[2], "degenerate triangle {t:?}");
        for k in 0..3 {
            *directed.entry((t[k], t[(k + 1) % 3])).or_default() += 1;
        }
    }
    for (&(a, b), &count) in &directed {
        assert_eq!(count, 1, "directed edge {a}->{b} is used {count} times");
        assert_eq!(directed.get(&(b, a)), Some(&1), "edge {a}-{b} borders only one triangle");
    }
}

/// V - E + F, which is 2 - 2g for a closed surface of genus g (per component).
pub fn euler_characteristic(vertex_count: usize, indices: &[u32]) -> i64 {
    let mut edges = std::collections::BTreeSet::new();
    for t in indices.chunks_exact(3) {
        for k in 0..3 {
            let (a, b) = (t[k], t[(k + 1) % 3]);
            edges.insert((a.min(b), a.max(b)));
        }
    }
    vertex_count as i64 - edges.len() as i64 + (indices.len() / 3) as i64
}

/// Signed volume enclosed by the mesh: positive when the triangles face outwards.
pub fn signed_volume(positions: &[[f32; 3]], indices: &[u32]) -> f64 {
    indices
        .chunks_exact(3)
        .map(|t| {
            let [a, b, c] = [0, 1, 2].map(|k| positions[t[k] as usize].map(f64::from));
            a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0]) + a[2] * (b[0] * c[1] - b[1] * c[0])
        })
        .sum::<f64>()
        / 6.0
}

/// Whether a ray along z through (x, y) hits any triangle (orthographic front view).
pub fn ray_hits(positions: &[[f32; 3]], indices: &[u32], x: f32, y: f32) -> bool {
    indices.chunks_exact(3).any(|t| {
        let [a, b, c] = [0, 1, 2].map(|k| positions[t[k] as usize]);
        let edge = |p: [f32; 3], q: [f32; 3]| (q[0] - p[0]) * (y - p[1]) - (q[1] - p[1]) * (x - p[0]);
        let (e0, e1, e2) = (edge(a, b), edge(b, c), edge(c, a));
        (e0 >= 0.0 && e1 >= 0.0 && e2 >= 0.0) || (e0 <= 0.0 && e1 <= 0.0 && e2 <= 0.0)
    })
}

/// Renders the mesh's silhouette seen from the front (orthographic along -z) into a
/// `width` x `height` raster covering the mesh's x/y bounding box; row 0 is the top.
pub fn front_silhouette(positions: &[[f32; 3]], indices: &[u32], width: usize, height: usize) -> Vec<bool> {
    let (mut min, mut max) = ([f32::MAX; 2], [f32::MIN; 2]);
    for p in positions {
        for a in 0..2 {
            min[a] = min[a].min(p[a]);
            max[a] = max[a].max(p[a]);
        }
    }
    let to_raster = |p: [f32; 3]| {
        [(p[0] - min[0]) / (max[0] - min[0]) * width as f32, (max[1] - p[1]) / (max[1] - min[1]) * height as f32]
    };
    let mut covered = vec![false; width * height];
    for t in indices.chunks_exact(3) {
        let [a, b, c] = [0, 1, 2].map(|k| to_raster(positions[t[k] as usize]));
        let x0 = a[0].min(b[0]).min(c[0]).floor().max(0.0) as usize;
        let x1 = (a[0].max(b[0]).max(c[0]).ceil() as usize).min(width);
        let y0 = a[1].min(b[1]).min(c[1]).floor().max(0.0) as usize;
        let y1 = (a[1].max(b[1]).max(c[1]).ceil() as usize).min(height);
        let edge = |p: [f32; 2], q: [f32; 2], x: f32, y: f32| (q[0] - p[0]) * (y - p[1]) - (q[1] - p[1]) * (x - p[0]);
        for y in y0..y1 {
            for x in x0..x1 {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let (e0, e1, e2) = (edge(a, b, px, py), edge(b, c, px, py), edge(c, a, px, py));
                if (e0 >= 0.0 && e1 >= 0.0 && e2 >= 0.0) || (e0 <= 0.0 && e1 <= 0.0 && e2 <= 0.0) {
                    covered[y * width + x] = true;
                }
            }
        }
    }
    covered
}

/// Intersection over union of two equally sized masks.
pub fn iou(a: &[bool], b: &[bool]) -> f64 {
    let both = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let either = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    both as f64 / either.max(1) as f64
}
