//! Model → output3d.zip (OBJ + MTL + textures).

use std::io::{Seek, Write};

use super::Summary;
use crate::{Cancel, FormatError, Model};

/// Writes `model` as a zip holding model.obj, model.mtl and its textures.
pub fn obj_zip<W: Write + Seek>(model: &Model, out: W, cancel: &Cancel) -> Result<Summary, FormatError> {
    let _ = (model, out, cancel);
    Err(FormatError::Unsupported("not yet".into()))
}
