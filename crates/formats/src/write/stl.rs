//! Model → binary STL.

use std::io::Write;

use super::Summary;
use crate::{Cancel, FormatError, Model};

/// The unit of STL coordinates (STL itself has none; slicers assume millimetres).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Units {
    #[default]
    Metres,
    Millimetres,
}

/// Writes `model` as binary STL, Z up.
pub fn stl<W: Write>(model: &Model, out: W, units: Units, cancel: &Cancel) -> Result<Summary, FormatError> {
    let _ = (model, out, units, cancel);
    Err(FormatError::Unsupported("not yet".into()))
}
