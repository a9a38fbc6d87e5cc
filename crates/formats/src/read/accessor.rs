//! Reading accessor data with every range checked first. gltf 1.4.1's own `Reader`
//! assumes float positions and normals (so it misreads `KHR_mesh_quantization` data), and
//! its iterator computes `offset + stride × (count − 1) + size` unchecked; this module
//! replaces it for the few accessor kinds a mesh needs.

use gltf::accessor::{DataType, Dimensions};

use crate::error::FormatError;
use crate::limits::Cancel;

/// Which component types a semantic accepts: core glTF plus `KHR_mesh_quantization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Semantic {
    Position,
    Normal,
    TexCoord,
    Color,
}

impl Semantic {
    fn name(self) -> &'static str {
        match self {
            Semantic::Position => "POSITION",
            Semantic::Normal => "NORMAL",
            Semantic::TexCoord => "TEXCOORD_0",
            Semantic::Color => "COLOR_0",
        }
    }

    fn accepts(self, data_type: DataType, normalized: bool) -> bool {
        use DataType::*;
        match self {
            Semantic::Position => matches!(data_type, F32 | I8 | U8 | I16 | U16),
            Semantic::Normal => data_type == F32 || (matches!(data_type, I8 | I16) && normalized),
            Semantic::TexCoord => matches!(data_type, F32 | I8 | U8 | I16 | U16),
            Semantic::Color => data_type == F32 || (matches!(data_type, U8 | U16) && normalized),
        }
    }
}

/// An accessor's layout, checked against the bytes of its buffer view.
struct Layout {
    data_type: DataType,
    normalized: bool,
    components: usize,
    start: usize,
    stride: usize,
    count: usize,
}

impl Layout {
    /// Checks that `count` elements of `components` components fit in `view_bytes`.
    /// Everything is checked arithmetic: a hostile count or offset gives an error, never
    /// an overflow.
    fn new(
        accessor: &gltf::Accessor,
        view_bytes: &[u8],
        view_stride: Option<usize>,
        what: &str,
    ) -> Result<Layout, FormatError> {
        if accessor.sparse().is_some() {
            return Err(FormatError::unsupported(format!("{what} uses a sparse accessor")));
        }
        let count = accessor.count();
        if count == 0 {
            return Err(FormatError::unreadable(format!("{what} has no elements")));
        }
        let data_type = accessor.data_type();
        let size = data_type.size();
        let components = accessor.dimensions().multiplicity();
        let element = size * components;
        let stride = view_stride.unwrap_or(element);
        if stride < element || stride > 252 || !stride.is_multiple_of(size) {
            return Err(FormatError::unreadable(format!(
                "{what} has a byte stride of {stride} for {element}-byte elements"
            )));
        }
        let start = accessor.offset();
        let end = stride.checked_mul(count - 1).and_then(|n| n.checked_add(start)).and_then(|n| n.checked_add(element));
        match end {
            Some(end) if end <= view_bytes.len() => {
                Ok(Layout { data_type, normalized: accessor.normalized(), components, start, stride, count })
            }
            _ => Err(FormatError::unreadable(format!("{what} reaches past the end of its buffer view"))),
        }
    }

    /// Element `k` of an unsigned integer scalar accessor, exactly.
    fn integer(&self, bytes: &[u8], k: usize) -> u32 {
        let at = self.start + k * self.stride;
        match self.data_type {
            DataType::U8 => u32::from(bytes[at]),
            DataType::U16 => u32::from(u16::from_le_bytes([bytes[at], bytes[at + 1]])),
            _ => u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]),
        }
    }

    /// Component `c` of element `k` as f32, normalised as glTF says.
    fn component(&self, bytes: &[u8], k: usize, c: usize) -> f32 {
        let at = self.start + k * self.stride + c * self.data_type.size();
        let n = self.normalized;
        match self.data_type {
            DataType::F32 => f32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]),
            DataType::U8 if n => f32::from(bytes[at]) / 255.0,
            DataType::U8 => f32::from(bytes[at]),
            DataType::I8 if n => (f32::from(bytes[at] as i8) / 127.0).max(-1.0),
            DataType::I8 => f32::from(bytes[at] as i8),
            DataType::U16 if n => f32::from(u16::from_le_bytes([bytes[at], bytes[at + 1]])) / 65535.0,
            DataType::U16 => f32::from(u16::from_le_bytes([bytes[at], bytes[at + 1]])),
            DataType::I16 if n => (f32::from(i16::from_le_bytes([bytes[at], bytes[at + 1]])) / 32767.0).max(-1.0),
            DataType::I16 => f32::from(i16::from_le_bytes([bytes[at], bytes[at + 1]])),
            DataType::U32 => u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as f32,
        }
    }
}

/// Reads a vertex attribute of `N` components (`N` = 3 or 4 for colours, whose alpha
/// defaults to 1). Non-finite values are refused.
pub(super) fn read_vectors<const N: usize>(
    accessor: &gltf::Accessor,
    view_bytes: &[u8],
    view_stride: Option<usize>,
    semantic: Semantic,
    cancel: &Cancel,
) -> Result<Vec<[f32; N]>, FormatError> {
    let what = semantic.name();
    let dimensions = accessor.dimensions();
    let shape_ok = match semantic {
        Semantic::Color => matches!(dimensions, Dimensions::Vec3 | Dimensions::Vec4),
        Semantic::TexCoord => dimensions == Dimensions::Vec2,
        Semantic::Position | Semantic::Normal => dimensions == Dimensions::Vec3,
    };
    if !shape_ok || !semantic.accepts(accessor.data_type(), accessor.normalized()) {
        return Err(FormatError::unreadable(format!(
            "{what} has an invalid type ({:?} {:?})",
            accessor.data_type(),
            dimensions
        )));
    }
    let layout = Layout::new(accessor, view_bytes, view_stride, what)?;
    let mut out = Vec::with_capacity(layout.count);
    for k in 0..layout.count {
        cancel.check_every(k)?;
        let mut value = [1.0f32; N];
        for (c, slot) in value.iter_mut().enumerate().take(layout.components) {
            *slot = layout.component(view_bytes, k, c);
        }
        if value.iter().any(|v| !v.is_finite()) {
            return Err(FormatError::unreadable(format!("{what} holds a value that is not a finite number")));
        }
        out.push(value);
    }
    Ok(out)
}

/// Reads a primitive's indices; each must be below `vertices`.
pub(super) fn read_indices(
    accessor: &gltf::Accessor,
    view_bytes: &[u8],
    view_stride: Option<usize>,
    vertices: usize,
    cancel: &Cancel,
) -> Result<Vec<u32>, FormatError> {
    let data_type = accessor.data_type();
    if accessor.dimensions() != Dimensions::Scalar
        || accessor.normalized()
        || !matches!(data_type, DataType::U8 | DataType::U16 | DataType::U32)
    {
        return Err(FormatError::unreadable("indices have an invalid type"));
    }
    let layout = Layout::new(accessor, view_bytes, view_stride, "indices")?;
    let mut out = Vec::with_capacity(layout.count);
    for k in 0..layout.count {
        cancel.check_every(k)?;
        let index = layout.integer(view_bytes, k);
        if index as usize >= vertices {
            return Err(FormatError::unreadable(format!(
                "an index ({index}) is not below the vertex count ({vertices})"
            )));
        }
        out.push(index);
    }
    Ok(out)
}
