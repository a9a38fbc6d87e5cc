//! The files the fakes hand out: a real, minimal glTF 2.0 binary (one triangle) and real
//! PNGs of a plain colour, encoded with the `png` crate and cached per size.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
};

use bytes::Bytes;

/// `glTF`, little-endian, as the header's first word.
const GLB_MAGIC: u32 = 0x4654_6C67;
const CHUNK_JSON: u32 = 0x4E4F_534A;
const CHUNK_BIN: u32 = 0x004E_4942;

/// A valid GLB (glTF 2.0 binary) with one triangle: 12-byte header (`glTF`, version 2,
/// total length), a JSON chunk padded with spaces and a BIN chunk padded with zeros, both
/// to 4 bytes. The POSITION accessor carries `min`/`max`, as the validator requires.
pub fn glb_triangle() -> Vec<u8> {
    let positions: [f32; 9] = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    let mut bin: Vec<u8> = positions.iter().flat_map(|v| v.to_le_bytes()).collect();
    let bin_length = bin.len();
    let mut json = format!(
        concat!(
            r#"{{"asset":{{"version":"2.0","generator":"kiln fake upstream"}},"scene":0,"#,
            r#""scenes":[{{"nodes":[0]}}],"nodes":[{{"mesh":0}}],"#,
            r#""meshes":[{{"primitives":[{{"attributes":{{"POSITION":0}},"mode":4}}]}}],"#,
            r#""buffers":[{{"byteLength":{n}}}],"#,
            r#""bufferViews":[{{"buffer":0,"byteOffset":0,"byteLength":{n},"target":34962}}],"#,
            r#""accessors":[{{"bufferView":0,"byteOffset":0,"componentType":5126,"count":3,"type":"VEC3","#,
            r#""min":[0.0,0.0,0.0],"max":[1.0,1.0,0.0]}}]}}"#
        ),
        n = bin_length
    )
    .into_bytes();
    while !json.len().is_multiple_of(4) {
        json.push(b' ');
    }
    while !bin.len().is_multiple_of(4) {
        bin.push(0);
    }
    let total = 12 + 8 + json.len() + 8 + bin.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&GLB_MAGIC.to_le_bytes());
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&CHUNK_JSON.to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&(bin.len() as u32).to_le_bytes());
    out.extend_from_slice(&CHUNK_BIN.to_le_bytes());
    out.extend_from_slice(&bin);
    out
}

static GLB: LazyLock<Bytes> = LazyLock::new(|| Bytes::from(glb_triangle()));

/// The triangle GLB, built once.
pub(crate) fn glb() -> Bytes {
    GLB.clone()
}

/// A PNG of `width`×`height` pixels of one RGB colour (8-bit RGB, fast deflate: a plain
/// colour compresses to a few kilobytes even at 2048²).
pub fn png_solid(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let width = width.max(1);
    let height = height.max(1);
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().expect("png header");
    {
        let mut stream = writer.stream_writer().expect("png stream");
        let row: Vec<u8> = rgb.iter().copied().cycle().take(width as usize * 3).collect();
        for _ in 0..height {
            std::io::Write::write_all(&mut stream, &row).expect("png row");
        }
        stream.finish().expect("png finish");
    }
    writer.finish().expect("png end");
    out
}

/// Encoded PNGs by width, height and colour.
type PngCache = Mutex<HashMap<(u32, u32, [u8; 3]), Bytes>>;

static PNGS: LazyLock<PngCache> = LazyLock::new(Default::default);

/// A cached [`png_solid`]: each size and colour is encoded once per process.
pub(crate) fn png(width: u32, height: u32, rgb: [u8; 3]) -> Bytes {
    let key = (width, height, rgb);
    if let Some(bytes) = PNGS.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return bytes.clone();
    }
    let bytes = Bytes::from(png_solid(width, height, rgb));
    PNGS.lock().unwrap_or_else(|e| e.into_inner()).insert(key, bytes.clone());
    bytes
}

/// A colour picked from a small palette by an id, so that two tasks' pictures usually
/// differ while the cache stays bounded.
pub(crate) fn colour_of(id: &str) -> [u8; 3] {
    const PALETTE: [[u8; 3]; 8] = [
        [200, 60, 40],
        [40, 160, 90],
        [50, 90, 200],
        [220, 180, 40],
        [150, 60, 170],
        [40, 170, 180],
        [120, 120, 120],
        [230, 120, 160],
    ];
    let digest = <sha2::Sha256 as sha2::Digest>::digest(id.as_bytes());
    PALETTE[usize::from(digest[0]) % PALETTE.len()]
}
