//! GLB → Model.

use crate::{Cancel, Estimate, FormatError, Limits, Model};

/// What reading and converting `glb` will cost, from its JSON and image headers only.
pub fn estimate(glb: &[u8], limits: &Limits) -> Result<Estimate, FormatError> {
    let _ = (glb, limits);
    Err(FormatError::Unsupported("not yet".into()))
}

impl Model {
    /// Reads a GLB into a flattened model, refusing anything over `limits`.
    pub fn read_glb(glb: &[u8], limits: &Limits, cancel: &Cancel) -> Result<Model, FormatError> {
        let _ = (glb, limits, cancel);
        Err(FormatError::Unsupported("not yet".into()))
    }
}
