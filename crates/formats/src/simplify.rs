//! A level of detail: the model reduced to a triangle budget by edge collapse
//! (meshoptimizer's attribute-aware simplifier), never by dropping vertices.

use crate::{Cancel, FormatError, Model};

/// What simplification did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SimplifyReport {
    pub triangles_before: u64,
    pub triangles_after: u64,
    /// The largest geometric error, relative to the model's size.
    pub error: f32,
}

/// Reduces `model` to at most `max_triangles` triangles where it can.
pub fn simplify(model: &Model, max_triangles: u64, cancel: &Cancel) -> Result<(Model, SimplifyReport), FormatError> {
    let _ = (model, max_triangles, cancel);
    Err(FormatError::Unsupported("not yet".into()))
}
