//! The reader and every writer on mutated GLBs: byte flips, truncations and targeted JSON
//! edits (lying counts, offsets and strides, swapped types, out-of-range indices and
//! sources, node cycles and mass instancing, forged image headers, lying meshopt views).
//! Each case must end in `Ok` or `Err`, never a panic (proptest reports panics), and a
//! counting allocator holds the peak memory of the conversion to the limit it was given.
//! `PROPTEST_CASES` sets the number of cases (256 by default).

mod fixtures;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use formats::{Cancel, Limits, Model, PreviewOptions, write};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Counts the bytes this test binary holds, and the most it has held since `reset`.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are
// added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(pointer, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        // SAFETY: as above.
        let moved = unsafe { System.realloc(pointer, layout, size) };
        if !moved.is_null() {
            if size >= layout.size() {
                let now = CURRENT.fetch_add(size - layout.size(), Ordering::Relaxed) + (size - layout.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - size, Ordering::Relaxed);
            }
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: u64 = 1024 * 1024;

/// Small ceilings, so that a lying file hits them quickly.
fn limits() -> Limits {
    Limits {
        max_input: 64 * MIB,
        max_json: MIB,
        max_triangles: 200_000,
        max_vertices: 600_000,
        max_nodes: 20_000,
        max_depth: 32,
        max_texture_side: 4096,
        max_texture_pixels: 4 * MIB,
        max_image_alloc: 64 * MIB,
        max_memory: 96 * MIB,
    }
}

fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| vec![fixtures::small_relief(), fixtures::two_node_cube(), fixtures::meshopt_cube()])
}

/// Reads, then writes every format; the outcome is ignored, only panics and memory count.
fn convert(glb: &[u8]) -> Option<String> {
    let limits = limits();
    let cancel = Cancel::new();
    let _ = formats::estimate(glb, &limits);
    let model = match Model::read_glb(glb, &limits, &cancel) {
        Ok(model) => model,
        Err(error) => return Some(error.code().to_owned()),
    };
    let _ = write::obj_zip(&model, Cursor::new(Vec::new()), &cancel);
    let _ = write::stl(&model, std::io::sink(), write::Units::Millimetres, &cancel);
    let _ = write::ply(&model, std::io::sink(), &cancel);
    let _ = write::usdz(&model, Cursor::new(Vec::new()), &write::UsdzOptions::default(), &cancel);
    let _ = write::glb(&model, std::io::sink(), &write::GlbOptions::default(), &cancel);
    let _ = write::meshopt_glb(&model, std::io::sink(), &write::CompressOptions::default(), &cancel);
    let _ = formats::simplify(&model, model.triangles() / 2 + 1, &cancel);
    let _ = formats::preview(&model, &PreviewOptions { size: 64 }, &cancel);
    None
}

/// The JSON and BIN chunks of a GLB this test built.
fn split(glb: &[u8]) -> (Value, Vec<u8>) {
    let length = u32::from_le_bytes([glb[12], glb[13], glb[14], glb[15]]) as usize;
    let json = serde_json::from_slice(&glb[20..20 + length]).expect("seed JSON");
    let bin = glb.get(20 + length + 8..).unwrap_or_default().to_vec();
    (json, bin)
}

/// Element `pick` (modulo the length) of a JSON array, if there is one.
fn nth<'a>(value: &'a mut Value, key: &str, pick: usize) -> Option<&'a mut Value> {
    let array = value.get_mut(key)?.as_array_mut()?;
    let len = array.len();
    if len == 0 { None } else { array.get_mut(pick % len) }
}

/// A PNG header (signature and IHDR with a valid checksum) claiming `side` × `side`.
fn forged_png(side: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(side.to_be_bytes());
    ihdr.extend(side.to_be_bytes());
    ihdr.extend([8, 6, 0, 0, 0]);
    let mut crc = !0u32;
    for &byte in &ihdr {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(ihdr);
    png.extend((!crc).to_be_bytes());
    png
}

/// Applies JSON edit `kind` with parameters `pick` and `value`.
fn edit(json: &mut Value, bin: &mut [u8], kind: u8, pick: usize, value: u64) {
    let huge = [0, 1, 3, 1_000_000, u64::from(u32::MAX), value];
    match kind {
        0 => {
            if let Some(a) = nth(json, "accessors", pick) {
                a["count"] = json!(huge[pick % huge.len()]);
            }
        }
        1 => {
            if let Some(a) = nth(json, "accessors", pick) {
                a["byteOffset"] = json!(value);
            }
        }
        2 => {
            if let Some(v) = nth(json, "bufferViews", pick) {
                v["byteStride"] = json!([0, 3, 4, 1000, value % 300][pick % 5]);
            }
        }
        3 => {
            if let Some(a) = nth(json, "accessors", pick) {
                a["componentType"] = json!([5120, 5121, 5122, 5123, 5125, 5126, 1][pick % 7]);
            }
        }
        4 => {
            if let Some(a) = nth(json, "accessors", pick) {
                a["type"] = json!(["SCALAR", "VEC2", "VEC3", "VEC4", "MAT4"][pick % 5]);
            }
        }
        5 => {
            if let Some(t) = nth(json, "textures", pick) {
                if value.is_multiple_of(2) {
                    t.as_object_mut().map(|o| o.remove("source"));
                } else {
                    t["source"] = json!(value % 5);
                }
            }
        }
        6 => {
            if let Some(t) = nth(json, "textures", pick) {
                t["extensions"] = json!({"EXT_texture_webp": {"source": value % 4}});
                t.as_object_mut().map(|o| o.remove("source"));
                json["extensionsRequired"] = json!(["EXT_texture_webp"]);
                json["extensionsUsed"] = json!(["EXT_texture_webp"]);
            }
        }
        7 => {
            // A cycle: a node becomes its own ancestor.
            if let Some(nodes) = json["nodes"].as_array_mut() {
                let count = nodes.len();
                let child = pick % count;
                if let Some(node) = nodes.get_mut(value as usize % count) {
                    node["children"] = json!([child]);
                }
                if let Some(node) = nodes.get_mut(child) {
                    node["children"] = json!([value as usize % count]);
                }
            }
        }
        8 => {
            // Mass instancing: one mesh shown by thousands of nodes.
            let count = [10_000, 100_000, 1000][pick % 3];
            json["nodes"] = json!(vec![json!({"mesh": 0}); 1]);
            json["scenes"] = json!([{"nodes": vec![0; count]}]);
        }
        9 => {
            // An image whose header claims a huge picture.
            let view = json["images"][0]["bufferView"].as_u64();
            let offset = view.and_then(|v| json["bufferViews"][v as usize]["byteOffset"].as_u64());
            if let Some(offset) = offset {
                let png = forged_png([60_000, 5000, 100_000][pick % 3]);
                let at = offset as usize;
                if at + png.len() <= bin.len() {
                    bin[at..at + png.len()].copy_from_slice(&png);
                }
            }
        }
        10 => {
            if let Some(v) = nth(json, "bufferViews", pick)
                && let Some(ext) = v.pointer_mut("/extensions/EXT_meshopt_compression")
            {
                let key = ["count", "byteStride", "byteOffset", "byteLength"][pick % 4];
                ext[key] = json!(huge[value as usize % huge.len()]);
            }
        }
        11 => {
            // Index values past the vertex count.
            let view = json["accessors"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["type"] == "SCALAR"))
                .and_then(|a| a["bufferView"].as_u64());
            let offset = view.and_then(|v| json["bufferViews"][v as usize]["byteOffset"].as_u64());
            if let Some(offset) = offset {
                let at = offset as usize + (pick % 16) * 2;
                if at + 2 <= bin.len() {
                    bin[at..at + 2].copy_from_slice(&(value as u16 | 0x8000).to_le_bytes());
                }
            }
        }
        12 => {
            if let Some(v) = nth(json, "bufferViews", pick) {
                let key = ["byteLength", "byteOffset", "buffer"][value as usize % 3];
                v[key] = json!(huge[pick % huge.len()]);
            }
        }
        13 => {
            if let Some(b) = nth(json, "buffers", pick) {
                b["byteLength"] = json!(huge[value as usize % huge.len()]);
            }
        }
        14 => {
            if let Some(mesh) = nth(json, "meshes", pick) {
                mesh["primitives"][0]["mode"] = json!(value % 8);
            }
        }
        15 => {
            if let Some(m) = nth(json, "materials", pick) {
                m["pbrMetallicRoughness"]["baseColorFactor"] = json!([1e300, 1, 1, 1]);
            }
        }
        16 => {
            if let Some(node) = nth(json, "nodes", pick) {
                node["scale"] = json!([1e30, 1e30, -1e30]);
            }
        }
        _ => {
            let names = ["KHR_draco_mesh_compression", "KHR_texture_transform", "X_\u{0}evil"];
            json["extensionsRequired"] = json!([names[pick % 3]]);
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flips(Vec<(usize, u8)>),
    Truncate(usize),
    Json { kind: u8, pick: usize, value: u64 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), 1..=255u8), 1..8).prop_map(Mutation::Flips),
        any::<usize>().prop_map(Mutation::Truncate),
        (0..18u8, any::<usize>(), any::<u64>()).prop_map(|(kind, pick, value)| Mutation::Json { kind, pick, value }),
    ]
}

fn apply(seed: &[u8], mutation: &Mutation) -> Vec<u8> {
    match mutation {
        Mutation::Flips(flips) => {
            let mut bytes = seed.to_vec();
            for &(at, xor) in flips {
                let len = bytes.len();
                bytes[at % len] ^= xor;
            }
            bytes
        }
        Mutation::Truncate(at) => seed[..at % seed.len()].to_vec(),
        Mutation::Json { kind, pick, value } => {
            let (mut json, mut bin) = split(seed);
            edit(&mut json, &mut bin, *kind, *pick, *value);
            fixtures::glb(&json, &bin)
        }
    }
}

proptest! {
    // Failures are printed with their mutation; no regression file is written.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_glbs_give_errors_not_panics_within_memory(
        seed in 0..3usize,
        mutation in mutation(),
    ) {
        let glb = apply(&seeds()[seed], &mutation);
        let baseline = CURRENT.load(Ordering::Relaxed);
        PEAK.store(baseline, Ordering::Relaxed);
        convert(&glb);
        let used = PEAK.load(Ordering::Relaxed).saturating_sub(baseline) as u64;
        let allowed = limits().max_memory + 16 * MIB;
        prop_assert!(used <= allowed, "{used} bytes used, {allowed} allowed, for {mutation:?}");
    }
}

/// The seeds themselves convert, so the mutations start from models that work.
#[test]
fn the_seeds_convert() {
    for (i, seed) in seeds().iter().enumerate() {
        assert_eq!(convert(seed), None, "seed {i} does not read");
    }
}
