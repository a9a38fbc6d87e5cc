//! relief: turns one picture into a textured, watertight 3D model by inflating the
//! object's silhouette. Picture bytes and options in, GLB bytes and statistics out.
//!
//! This is an honest 2.5D reconstruction, not a learnt model: it finds the object's
//! outline, raises a rounded surface over it (thick where the object is wide, thin
//! where it is narrow), mirrors that surface behind, and paints the picture on it.
//!
//! The pipeline, one module per step:
//! - `picture`: decode within limits, upright, plus a reduced working copy;
//! - `segment` and `cleanup`: the object's mask, from alpha or from the border's
//!   background colour, without specks or pinholes but with its real holes;
//! - `grid`: the mask averaged onto a padded lattice, a smooth coverage field;
//! - `contour`: marching squares on that field, the outline at sub-cell precision;
//! - `field`: distance to the outline and the rounded height profile;
//! - `mesh`: front and back sheets sharing the rim, closed, with normals;
//! - `texture`: the picture under the object with colours bled past the outline;
//! - `maps`: the cut-out and the front surface's position map, pictures of the same
//!   rectangle as the texture (seed 004's `pixel_images.png` and `xyz_images.png`);
//! - `glb`: the binary glTF file.
//!
//! [`reconstruct_observed`] reports each stage and hands over the two pictures as
//! soon as each is made; [`reconstruct`] and [`reconstruct_cancellable`] report
//! stages only and skip making them.
//!
//! ```no_run
//! let bytes = std::fs::read("mug.jpg").expect("read");
//! let model = relief::reconstruct(&bytes, &relief::Options::default(), &mut |_, _| {})
//!     .expect("reconstruct");
//! std::fs::write("mug.glb", &model.glb).expect("write");
//! ```

mod cleanup;
mod contour;
mod error;
mod field;
mod glb;
mod grid;
mod maps;
mod mesh;
mod options;
mod picture;
mod segment;
mod texture;

pub use error::ReliefError;
pub use options::Options;

use grid::Grid;
use segment::Mask;
use texture::Crop;

/// The steps of a reconstruction, reported through the progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Segmenting,
    Meshing,
    Texturing,
    Encoding,
}

/// A picture made on the way to the model, handed to the [`Observer`] as soon as it is
/// ready. Both are PNG files covering the texture's rectangle at the texture's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Product {
    /// The object cut out of the picture: 8-bit RGBA, alpha from the object's mask
    /// (or the picture's own alpha for cut-out inputs), fully transparent pixels zero.
    Cutout(Vec<u8>),
    /// The front surface's positions: 16-bit RGBA, `(x, y, z) = (R, G, B) / 65535 - 0.5`
    /// in the model's coordinates where A = 65535, and all zero off the surface.
    PositionMap(Vec<u8>),
}

impl Product {
    /// Seed 004's name for the file.
    pub fn file_name(&self) -> &'static str {
        match self {
            Product::Cutout(_) => "pixel_images.png",
            Product::PositionMap(_) => "xyz_images.png",
        }
    }

    /// The PNG bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Product::Cutout(bytes) | Product::PositionMap(bytes) => bytes,
        }
    }
}

/// Follows a reconstruction: each stage as it starts and each [`Product`] as it is made.
pub trait Observer {
    /// A stage starts, at `percent` (0-100) of the whole; 100 when the model is ready.
    fn stage(&mut self, stage: Stage, percent: u8);
    /// A product is ready. Called only when [`Observer::wants_products`] is true.
    fn product(&mut self, product: Product);
    /// Whether to make the products at all: they cost a few tens of milliseconds that
    /// a caller wanting only the model should not pay.
    fn wants_products(&self) -> bool {
        true
    }
}

/// The stage callback of [`reconstruct`] as an observer that wants no products.
struct StagesOnly<'a>(&'a mut dyn FnMut(Stage, u8));

impl Observer for StagesOnly<'_> {
    fn stage(&mut self, stage: Stage, percent: u8) {
        (self.0)(stage, percent);
    }

    fn product(&mut self, _product: Product) {}

    fn wants_products(&self) -> bool {
        false
    }
}

/// Facts about the produced model, for the caller's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub vertices: u32,
    pub triangles: u32,
    pub bbox_min: [f32; 3],
    pub bbox_max: [f32; 3],
    pub texture_width: u32,
    pub texture_height: u32,
    /// "png" or "jpeg".
    pub texture_format: &'static str,
}

/// A finished model: a binary glTF 2.0 file and its statistics.
#[derive(Debug, Clone)]
pub struct Model {
    pub glb: Vec<u8>,
    pub stats: Stats,
}

/// The grid never gets coarser than this while fitting the triangle budget; even the
/// smallest budget fits a grid this coarse.
const MIN_CELLS: u32 = 4;
/// Budget fitting aims a little under the budget so one lowering usually suffices.
const BUDGET_MARGIN: f64 = 0.97;

/// Reconstructs a model from a picture (PNG, JPEG or WebP bytes).
///
/// `progress` is called as each stage starts, with the overall percentage (0-100),
/// and with 100 when the model is ready. The same bytes and options always give
/// byte-identical output.
pub fn reconstruct(
    image_bytes: &[u8],
    options: &Options,
    progress: &mut dyn FnMut(Stage, u8),
) -> Result<Model, ReliefError> {
    reconstruct_cancellable(image_bytes, options, progress, &|| false)
}

/// Like [`reconstruct`], but gives up with [`ReliefError::Cancelled`] as soon as it
/// sees `cancelled()` return true. It looks between steps (the longest step without a
/// look is a few tenths of a second on a large picture), so a caller that no longer
/// wants the model gets its thread back without waiting for the whole run.
pub fn reconstruct_cancellable(
    image_bytes: &[u8],
    options: &Options,
    progress: &mut dyn FnMut(Stage, u8),
    cancelled: &dyn Fn() -> bool,
) -> Result<Model, ReliefError> {
    reconstruct_observed(image_bytes, options, &mut StagesOnly(progress), cancelled)
}

/// Like [`reconstruct_cancellable`], and also hands `observer` the cut-out (when
/// texturing starts) and the position map (when encoding starts), unless it
/// [wants none](Observer::wants_products). The model's bytes are the same either way.
pub fn reconstruct_observed(
    image_bytes: &[u8],
    options: &Options,
    observer: &mut dyn Observer,
    cancelled: &dyn Fn() -> bool,
) -> Result<Model, ReliefError> {
    let check = || if cancelled() { Err(ReliefError::Cancelled) } else { Ok(()) };
    options.validate()?;
    check()?;
    let products = observer.wants_products();

    observer.stage(Stage::Segmenting, 0);
    // A working copy a few times finer than the grid keeps the outline's position
    // precise while making segmentation cost independent of the picture's size.
    let work_side = options.resolution.saturating_mul(4).clamp(1024, 2048);
    let picture = picture::load(image_bytes, work_side)?;
    check()?;
    let mask = segment::find_object(&picture.work, picture.has_alpha)?;
    let bounds = mask.bounds().ok_or(ReliefError::NoForegroundObject)?;
    check()?;

    observer.stage(Stage::Meshing, 25);
    let grid = fit_grid(&mask, bounds, options)?;
    check()?;
    let heights = field::heights(&grid, options.depth);
    let crop = Crop::around(&grid, &picture);
    let mesh = mesh::build(&grid, &heights, |point| crop.uv(&picture, grid.to_picture(point)));
    check()?;

    observer.stage(Stage::Texturing, 60);
    let region = texture::sample(&picture, crop, options.texture_size);
    if products {
        observer.product(Product::Cutout(maps::cutout(&picture, &mask, crop, &region)?));
        check()?;
    }
    let texture = texture::build(&picture, &mask, crop, &region)?;
    drop(region);
    check()?;

    observer.stage(Stage::Encoding, 85);
    if products {
        observer.product(Product::PositionMap(maps::position_map(&mesh, texture.width, texture.height)?));
        check()?;
    }
    let glb = glb::encode(&mesh, &texture)?;
    let (bbox_min, bbox_max) = mesh.bounds();
    let stats = Stats {
        vertices: count_u32(mesh.positions.len())?,
        triangles: count_u32(mesh.triangle_count())?,
        bbox_min,
        bbox_max,
        texture_width: texture.width,
        texture_height: texture.height,
        texture_format: texture.format,
    };
    observer.stage(Stage::Encoding, 100);
    Ok(Model { glb, stats })
}

/// Samples the mask at the requested resolution, lowering it until the mesh fits the
/// triangle budget. Triangles grow with the square of the resolution, so each retry
/// scales the resolution by the square root of the overshoot.
fn fit_grid(mask: &Mask, bounds: [usize; 4], options: &Options) -> Result<Grid, ReliefError> {
    let [x0, y0, x1, y1] = bounds;
    let longest = u32::try_from((x1 - x0).max(y1 - y0)).unwrap_or(u32::MAX);
    let budget = options.max_triangles as usize;
    let mut cells = options.resolution.min(longest).max(1);
    loop {
        let grid = Grid::sample(mask, bounds, cells);
        let triangles = mesh::count_triangles(&grid);
        if triangles == 0 {
            // The object is thinner than the grid can see.
            return Err(ReliefError::NoForegroundObject);
        }
        if triangles <= budget {
            return Ok(grid);
        }
        if cells <= MIN_CELLS {
            return Err(ReliefError::Encode(format!(
                "the object needs {triangles} triangles even on the coarsest grid, over the budget of {budget}"
            )));
        }
        let ratio = (budget as f64 / triangles as f64).sqrt() * BUDGET_MARGIN;
        let next = (f64::from(cells) * ratio).floor() as u32;
        cells = next.clamp(MIN_CELLS, cells - 1);
    }
}

fn count_u32(count: usize) -> Result<u32, ReliefError> {
    u32::try_from(count).map_err(|_| ReliefError::Encode(format!("{count} is too many to count")))
}
