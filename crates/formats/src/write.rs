//! The writers, one module per output format. Each takes a validated [`Model`](crate::Model), streams
//! its output into a `Write` (never a whole file in memory beyond one texture), checks its
//! `Cancel` while it loops, and writes the same bytes for the same model.

mod glb;
mod meshopt;
mod obj;
mod ply;
mod stl;
mod usdz;

pub use glb::{GlbOptions, glb};
pub use meshopt::{CompressOptions, meshopt_glb};
pub use obj::obj_zip;
pub use ply::ply;
pub use stl::{Units, stl};
pub use usdz::{UsdzOptions, usdz};

/// What a writer produced, for the output's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub triangles: u64,
    pub vertices: u64,
    /// What was lost or changed on the way (textures re-encoded, maps left out). What the
    /// reader left out is in `Model::notes`; a caller reports both.
    pub notes: Vec<String>,
}
