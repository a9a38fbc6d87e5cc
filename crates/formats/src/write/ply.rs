//! Model → binary PLY with baked vertex colours.

use std::io::Write;

use super::Summary;
use crate::{Cancel, FormatError, Model};

/// Writes `model` as binary little-endian PLY.
pub fn ply<W: Write>(model: &Model, out: W, cancel: &Cancel) -> Result<Summary, FormatError> {
    let _ = (model, out, cancel);
    Err(FormatError::Unsupported("not yet".into()))
}
