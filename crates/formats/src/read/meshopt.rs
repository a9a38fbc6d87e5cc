//! `EXT_meshopt_compression`: a compressed buffer view is decoded with meshoptimizer's
//! decoders (documented as safe for untrusted input; their return codes are checked) into
//! the bytes its accessors then read as if they were stored plainly.

use serde_json::Value;

use crate::error::FormatError;

pub(super) const EXTENSION: &str = "EXT_meshopt_compression";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Attributes,
    Triangles,
    Indices,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    None,
    Octahedral,
    Quaternion,
    Exponential,
}

/// One compressed view, as its extension object describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Compressed {
    /// The buffer holding the compressed bytes.
    pub buffer: usize,
    pub offset: usize,
    pub length: usize,
    pub stride: usize,
    pub count: usize,
    mode: Mode,
    filter: Filter,
}

impl Compressed {
    /// Parses and checks the extension object of a view whose own `byteLength` is
    /// `view_length`.
    pub(super) fn parse(value: &Value, view_length: usize) -> Result<Compressed, FormatError> {
        let bad = |why: &str| FormatError::unreadable(format!("a meshopt buffer view {why}"));
        let number = |key: &str, default: Option<u64>| -> Result<usize, FormatError> {
            match value.get(key) {
                Some(v) => v
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad(&format!("has an invalid {key}"))),
                None => default.and_then(|n| usize::try_from(n).ok()).ok_or_else(|| bad(&format!("has no {key}"))),
            }
        };
        let mode = match value.get("mode").and_then(Value::as_str) {
            Some("ATTRIBUTES") => Mode::Attributes,
            Some("TRIANGLES") => Mode::Triangles,
            Some("INDICES") => Mode::Indices,
            _ => return Err(bad("has an invalid mode")),
        };
        let filter = match value.get("filter").map(Value::as_str) {
            None | Some(Some("NONE")) => Filter::None,
            Some(Some("OCTAHEDRAL")) => Filter::Octahedral,
            Some(Some("QUATERNION")) => Filter::Quaternion,
            Some(Some("EXPONENTIAL")) => Filter::Exponential,
            _ => return Err(bad("has an invalid filter")),
        };
        let compressed = Compressed {
            buffer: number("buffer", None)?,
            offset: number("byteOffset", Some(0))?,
            length: number("byteLength", None)?,
            stride: number("byteStride", None)?,
            count: number("count", None)?,
            mode,
            filter,
        };
        let stride_ok = match mode {
            Mode::Attributes => compressed.stride.is_multiple_of(4) && (4..=256).contains(&compressed.stride),
            Mode::Triangles | Mode::Indices => matches!(compressed.stride, 2 | 4),
        };
        let filter_ok = match (mode, filter) {
            (_, Filter::None) => true,
            (Mode::Attributes, Filter::Octahedral) => matches!(compressed.stride, 4 | 8),
            (Mode::Attributes, Filter::Quaternion) => compressed.stride == 8,
            (Mode::Attributes, Filter::Exponential) => true,
            _ => false,
        };
        if !stride_ok || !filter_ok {
            return Err(bad("has an invalid stride or filter"));
        }
        if mode == Mode::Triangles && !compressed.count.is_multiple_of(3) {
            return Err(bad("holds a triangle list whose length is not a multiple of 3"));
        }
        match compressed.decoded_len() {
            Some(len) if len <= view_length => Ok(compressed),
            _ => Err(bad("decodes to more bytes than the view holds")),
        }
    }

    /// `count × byteStride`, the size of the decoded data.
    pub(super) fn decoded_len(&self) -> Option<usize> {
        self.count.checked_mul(self.stride)
    }

    /// Decodes `source`, the compressed bytes. The caller has checked `decoded_len`
    /// against its memory budget.
    pub(super) fn decode(&self, source: &[u8]) -> Result<Vec<u8>, FormatError> {
        let failed =
            |e: meshopt::Error| FormatError::unreadable(format!("a meshopt buffer view cannot be decoded: {e}"));
        let mut bytes = match self.mode {
            Mode::Attributes => decode_vertices(source, self.count, self.stride).map_err(failed)?,
            Mode::Triangles if self.stride == 2 => {
                let indices: Vec<u16> = meshopt::decode_index_buffer(source, self.count).map_err(failed)?;
                indices.iter().flat_map(|i| i.to_le_bytes()).collect()
            }
            Mode::Triangles => {
                let indices: Vec<u32> = meshopt::decode_index_buffer(source, self.count).map_err(failed)?;
                indices.iter().flat_map(|i| i.to_le_bytes()).collect()
            }
            Mode::Indices if self.stride == 2 => {
                let indices: Vec<u16> = meshopt::decode_index_sequence(source, self.count).map_err(failed)?;
                indices.iter().flat_map(|i| i.to_le_bytes()).collect()
            }
            Mode::Indices => {
                let indices: Vec<u32> = meshopt::decode_index_sequence(source, self.count).map_err(failed)?;
                indices.iter().flat_map(|i| i.to_le_bytes()).collect()
            }
        };
        self.unfilter(&mut bytes);
        Ok(bytes)
    }

    fn unfilter(&self, bytes: &mut [u8]) {
        match (self.filter, self.stride) {
            (Filter::None, _) => {}
            (Filter::Octahedral, 4) => {
                let mut data: Vec<[i8; 4]> = bytes.chunks_exact(4).map(|c| [0, 1, 2, 3].map(|k| c[k] as i8)).collect();
                meshopt::decode_filter_oct(&mut data);
                for (out, value) in bytes.chunks_exact_mut(4).zip(data) {
                    out.copy_from_slice(&value.map(|v| v as u8));
                }
            }
            (Filter::Octahedral, _) | (Filter::Quaternion, _) => {
                let mut data: Vec<[i16; 4]> = bytes
                    .chunks_exact(8)
                    .map(|c| [0, 1, 2, 3].map(|k| i16::from_le_bytes([c[2 * k], c[2 * k + 1]])))
                    .collect();
                if self.filter == Filter::Octahedral {
                    meshopt::decode_filter_oct(&mut data);
                } else {
                    meshopt::decode_filter_quat(&mut data);
                }
                for (out, value) in bytes.chunks_exact_mut(8).zip(data) {
                    for (k, v) in value.iter().enumerate() {
                        out[2 * k..2 * k + 2].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            (Filter::Exponential, _) => {
                // Each 32-bit component is decoded on its own, so the stride does not
                // matter: treat the view as one long run of components.
                let mut data: Vec<[u32; 1]> =
                    bytes.chunks_exact(4).map(|c| [u32::from_le_bytes([c[0], c[1], c[2], c[3]])]).collect();
                meshopt::decode_filter_exp(&mut data);
                for (out, value) in bytes.chunks_exact_mut(4).zip(data) {
                    out.copy_from_slice(&value[0].to_le_bytes());
                }
            }
        }
    }
}

/// A vertex of `S` bytes, for meshopt's decoder, which wants the stride as a type.
#[derive(Clone, Copy)]
struct Vertex<const S: usize>([u8; S]);

impl<const S: usize> Default for Vertex<S> {
    fn default() -> Self {
        Vertex([0; S])
    }
}

fn decode_vertices(source: &[u8], count: usize, stride: usize) -> Result<Vec<u8>, meshopt::Error> {
    fn typed<const S: usize>(source: &[u8], count: usize) -> Result<Vec<u8>, meshopt::Error> {
        let vertices: Vec<Vertex<S>> = meshopt::decode_vertex_buffer(source, count)?;
        Ok(vertices.iter().flat_map(|v| v.0).collect())
    }
    macro_rules! by_stride {
        ($($s:literal)*) => {
            match stride {
                $($s => typed::<$s>(source, count),)*
                _ => Err(meshopt::Error::Native(-1)),
            }
        };
    }
    by_stride!(4 8 12 16 20 24 28 32 36 40 44 48 52 56 60 64 68 72 76 80 84 88 92 96 100
        104 108 112 116 120 124 128 132 136 140 144 148 152 156 160 164 168 172 176 180
        184 188 192 196 200 204 208 212 216 220 224 228 232 236 240 244 248 252 256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vertex_streams_decode_as_encoded() {
        let vertices: Vec<[u16; 4]> = (0..100u16).map(|i| [i, i * 2, i * 3, 0]).collect();
        let encoded = meshopt::encode_vertex_buffer(&vertices).expect("encode");
        let view = json!({"buffer": 0, "byteLength": encoded.len(), "byteStride": 8,
            "count": 100, "mode": "ATTRIBUTES"});
        let compressed = Compressed::parse(&view, 800).expect("parse");
        let decoded = compressed.decode(&encoded).expect("decode");
        let expected: Vec<u8> = vertices.iter().flatten().flat_map(|c| c.to_le_bytes()).collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn triangle_lists_decode_as_encoded() {
        let indices: Vec<u32> = vec![0, 1, 2, 2, 1, 3, 3, 1, 4];
        let encoded = meshopt::encode_index_buffer(&indices, 5).expect("encode");
        let view = json!({"buffer": 0, "byteLength": encoded.len(), "byteStride": 2,
            "count": 9, "mode": "TRIANGLES"});
        let compressed = Compressed::parse(&view, 18).expect("parse");
        let decoded = compressed.decode(&encoded).expect("decode");
        let expected: Vec<u8> = indices.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn lying_or_malformed_views_are_refused() {
        let base = json!({"buffer": 0, "byteLength": 10, "byteStride": 8, "count": 100,
            "mode": "ATTRIBUTES"});
        // count × stride larger than the view.
        assert!(Compressed::parse(&base, 799).is_err());
        let mut bad_mode = base.clone();
        bad_mode["mode"] = json!("POINTS");
        assert!(Compressed::parse(&bad_mode, 800).is_err());
        let mut bad_stride = base.clone();
        bad_stride["byteStride"] = json!(6);
        assert!(Compressed::parse(&bad_stride, 800).is_err());
        let mut huge = base.clone();
        huge["count"] = json!(u64::MAX);
        assert!(Compressed::parse(&huge, usize::MAX).is_err());
        let mut filtered = base;
        filtered["filter"] = json!("QUATERNION");
        filtered["mode"] = json!("TRIANGLES");
        assert!(Compressed::parse(&filtered, 800).is_err());
    }

    #[test]
    fn garbage_input_is_an_error_not_a_crash() {
        let view = json!({"buffer": 0, "byteLength": 16, "byteStride": 12, "count": 1000,
            "mode": "ATTRIBUTES"});
        let compressed = Compressed::parse(&view, 12000).expect("parse");
        assert!(compressed.decode(&[0xa0, 1, 2, 3, 4, 5, 6, 7, 8, 9]).is_err());
        let view = json!({"buffer": 0, "byteLength": 4, "byteStride": 4, "count": 3000,
            "mode": "TRIANGLES"});
        let compressed = Compressed::parse(&view, 12000).expect("parse");
        assert!(compressed.decode(&[0xe1, 0, 0, 0]).is_err());
    }

    #[test]
    fn octahedral_normals_come_back_unit_length() {
        let normals: Vec<[f32; 4]> = vec![[0.0, 0.0, 1.0, 0.0], [0.6, 0.8, 0.0, 0.0]];
        let filtered: Vec<[i8; 4]> = meshopt::encode_filter_oct(&normals, 8);
        let encoded = meshopt::encode_vertex_buffer(&filtered).expect("encode");
        let view = json!({"buffer": 0, "byteLength": encoded.len(), "byteStride": 4,
            "count": 2, "mode": "ATTRIBUTES", "filter": "OCTAHEDRAL"});
        let decoded = Compressed::parse(&view, 8).expect("parse").decode(&encoded).expect("decode");
        let second = [decoded[4] as i8, decoded[5] as i8, decoded[6] as i8];
        let n = second.map(|c| f32::from(c) / 127.0);
        assert!((n[0] - 0.6).abs() < 0.02 && (n[1] - 0.8).abs() < 0.02, "{n:?}");
    }
}
