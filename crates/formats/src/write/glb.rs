//! Model → plain GLB (gltf-json + `gltf::binary::Glb`). The `core` mode keeps to core
//! glTF 2.0 (PNG/JPEG textures only) for viewers such as Android's Scene Viewer.

use std::io::Write;

use super::Summary;
use crate::{Cancel, FormatError, Model};

/// Options of the plain GLB writer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GlbOptions {
    /// PNG/JPEG textures only (WebP re-encoded), no extensions.
    pub core: bool,
    /// Longest texture side; larger textures are scaled down. `None` keeps them.
    pub texture_side: Option<u32>,
}

/// Writes `model` as a GLB.
pub fn glb<W: Write>(model: &Model, out: W, options: &GlbOptions, cancel: &Cancel) -> Result<Summary, FormatError> {
    let _ = (model, out, options, cancel);
    Err(FormatError::Unsupported("not yet".into()))
}
