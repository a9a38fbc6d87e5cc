//! A PNG preview rendered on the CPU: front three-quarter view, transparent background.

use crate::{Cancel, FormatError, Model};

/// Preview settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewOptions {
    /// Width and height in pixels.
    pub size: u32,
}

impl Default for PreviewOptions {
    fn default() -> Self {
        PreviewOptions { size: 512 }
    }
}

/// Renders `model`.
pub fn preview(model: &Model, options: &PreviewOptions, cancel: &Cancel) -> Result<image::RgbaImage, FormatError> {
    let _ = (model, options, cancel);
    Err(FormatError::Unsupported("not yet".into()))
}
