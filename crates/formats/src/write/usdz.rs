//! Model → USDZ.

use std::io::{Seek, Write};

use super::Summary;
use crate::{Cancel, FormatError, Model};

/// USDZ settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsdzOptions {
    /// Longest texture side.
    pub texture_side: u32,
    /// Most triangles written; larger models are refused with `TooLarge` (the caller
    /// simplifies first).
    pub max_triangles: u64,
}

impl Default for UsdzOptions {
    fn default() -> Self {
        UsdzOptions { texture_side: 2048, max_triangles: 250_000 }
    }
}

/// Writes `model` as USDZ.
pub fn usdz<W: Write + Seek>(
    model: &Model,
    out: W,
    options: &UsdzOptions,
    cancel: &Cancel,
) -> Result<Summary, FormatError> {
    let _ = (model, out, options, cancel);
    Err(FormatError::Unsupported("not yet".into()))
}
