//! formats: converts a GLB model into the files people use elsewhere, for untrusted input.
//!
//! One module per concept:
//! - `read`: GLB → [`Model`], with every size and range checked before it is used
//!   (core glTF 2.0, `EXT_texture_webp`, `EXT_meshopt_compression`; Draco refused,
//!   `KHR_texture_basisu` textures dropped with a note);
//! - `model`: the flattened model all writers start from;
//! - `texture`: image decoding under limits, re-encoding and sampling;
//! - `write`: one module per output format (plain and compressed GLB, OBJ zip, STL, PLY,
//!   USDZ);
//! - `simplify`: a level of detail by edge collapse;
//! - `preview`: a CPU-rendered PNG picture;
//! - `limits` and `error`: the ceilings, cancellation and the error codes.
//!
//! Guarantees: every function is synchronous and stops soon after its [`Cancel`] is set or
//! its deadline passes; malformed input gives a [`FormatError`], never a panic; writers
//! stream to a `Write` and are deterministic (the same model gives the same bytes).
//!
//! ```no_run
//! use formats::{Cancel, Limits, Model, write};
//! let glb = std::fs::read("model.glb").expect("read");
//! let model = Model::read_glb(&glb, &Limits::default(), &Cancel::new()).expect("valid GLB");
//! let file = std::fs::File::create("model.stl").expect("create");
//! write::stl(&model, std::io::BufWriter::new(file), write::Units::Millimetres, &Cancel::new())
//!     .expect("written");
//! ```

mod error;
mod limits;
mod model;
mod preview;
mod read;
mod simplify;
mod texture;
pub mod write;

pub use error::FormatError;
pub use limits::{Cancel, Estimate, Limits};
pub use model::{AlphaMode, ImageFormat, Material, Model, Part, Sampler, Texture, Wrap};
pub use preview::{PreviewOptions, preview};
pub use read::estimate;
pub use simplify::{SimplifyReport, simplify};
