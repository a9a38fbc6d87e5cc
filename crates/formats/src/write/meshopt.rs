//! Model → compressed GLB: `EXT_meshopt_compression` (bitstream version 0) with
//! `KHR_mesh_quantization`, for the viewer.

use std::io::Write;

use super::Summary;
use crate::{Cancel, FormatError, Model};

/// Quantization and texture settings of the compressed GLB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressOptions {
    pub position_bits: u8,
    pub uv_bits: u8,
    pub normal_bits: u8,
    /// Longest texture side.
    pub texture_side: u32,
}

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions { position_bits: 14, uv_bits: 12, normal_bits: 8, texture_side: 2048 }
    }
}

/// Writes `model` as a meshopt-compressed GLB.
pub fn meshopt_glb<W: Write>(
    model: &Model,
    out: W,
    options: &CompressOptions,
    cancel: &Cancel,
) -> Result<Summary, FormatError> {
    let _ = (model, out, options, cancel);
    Err(FormatError::Unsupported("not yet".into()))
}
