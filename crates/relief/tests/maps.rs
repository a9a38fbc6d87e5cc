//! The cut-out and the position map (seed 004's `pixel_images.png` and `xyz_images.png`)
//! checked against the model they come with: same rectangle and size as its texture,
//! positions on its front surface, nothing off the object, the same bytes every run.

mod common;

use common::*;
use image::{DynamicImage, ImageBuffer, Rgba, RgbaImage};

type Rgba16Image = ImageBuffer<Rgba<u16>, Vec<u16>>;
use relief::{Observer, Options, Product, ReliefError, Stage, reconstruct, reconstruct_observed};

/// Everything the observer saw, in order.
#[derive(Default)]
struct Seen {
    events: Vec<String>,
    cutout: Option<Vec<u8>>,
    position_map: Option<Vec<u8>>,
}

impl Observer for Seen {
    fn stage(&mut self, stage: Stage, percent: u8) {
        self.events.push(format!("{stage:?} {percent}"));
    }

    fn product(&mut self, product: Product) {
        self.events.push(product.file_name().to_owned());
        match product {
            Product::Cutout(bytes) => self.cutout = Some(bytes),
            Product::PositionMap(bytes) => self.position_map = Some(bytes),
        }
    }
}

struct Run {
    model: relief::Model,
    cutout: RgbaImage,
    positions: Rgba16Image,
    seen: Seen,
}

fn run(name: &str) -> Run {
    let mut seen = Seen::default();
    let model = reconstruct_observed(&fixture(name), &Options::default(), &mut seen, &|| false)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let cutout = match image::load_from_memory(seen.cutout.as_deref().expect("a cut-out")).expect("a PNG") {
        DynamicImage::ImageRgba8(image) => image,
        other => panic!("{name}: the cut-out is {:?}, not 8-bit RGBA", other.color()),
    };
    let positions = match image::load_from_memory(seen.position_map.as_deref().expect("a position map")).expect("a PNG")
    {
        DynamicImage::ImageRgba16(image) => image,
        other => panic!("{name}: the position map is {:?}, not 16-bit RGBA", other.color()),
    };
    Run { model, cutout, positions, seen }
}

fn decode(pixel: &image::Rgba<u16>) -> [f64; 3] {
    [0, 1, 2].map(|k| f64::from(pixel.0[k]) / 65535.0 - 0.5)
}

/// The highest z of the mesh along the line through (x, y) parallel to z: the front
/// surface there, if the line meets the mesh. Triangles are bucketed by their x/y box.
struct FrontSurface {
    positions: Vec<[f64; 3]>,
    triangles: Vec<[usize; 3]>,
    buckets: Vec<Vec<usize>>,
}

const BUCKETS: usize = 64;

impl FrontSurface {
    fn new(positions: &[[f32; 3]], indices: &[u32]) -> Self {
        let positions: Vec<[f64; 3]> = positions.iter().map(|p| p.map(f64::from)).collect();
        let triangles: Vec<[usize; 3]> = indices.chunks_exact(3).map(|t| [0, 1, 2].map(|k| t[k] as usize)).collect();
        let mut buckets = vec![Vec::new(); BUCKETS * BUCKETS];
        for (index, t) in triangles.iter().enumerate() {
            let xs = t.map(|v| positions[v][0]);
            let ys = t.map(|v| positions[v][1]);
            let (bx0, bx1) = (
                bucket(xs.iter().copied().fold(f64::MAX, f64::min)),
                bucket(xs.iter().copied().fold(f64::MIN, f64::max)),
            );
            let (by0, by1) = (
                bucket(ys.iter().copied().fold(f64::MAX, f64::min)),
                bucket(ys.iter().copied().fold(f64::MIN, f64::max)),
            );
            for by in by0..=by1 {
                for bx in bx0..=bx1 {
                    buckets[by * BUCKETS + bx].push(index);
                }
            }
        }
        FrontSurface { positions, triangles, buckets }
    }

    fn z_at(&self, x: f64, y: f64) -> Option<f64> {
        let mut best: Option<f64> = None;
        for &index in &self.buckets[bucket(y) * BUCKETS + bucket(x)] {
            let [a, b, c] = self.triangles[index].map(|v| self.positions[v]);
            let area = cross(a, b, [x, y]) + cross(b, c, [x, y]) + cross(c, a, [x, y]);
            if area.abs() < 1e-15 {
                continue;
            }
            let (wa, wb, wc) = (cross(b, c, [x, y]) / area, cross(c, a, [x, y]) / area, cross(a, b, [x, y]) / area);
            if wa < -1e-9 || wb < -1e-9 || wc < -1e-9 {
                continue;
            }
            let z = wa * a[2] + wb * b[2] + wc * c[2];
            best = Some(best.map_or(z, |best: f64| best.max(z)));
        }
        best
    }
}

fn bucket(coordinate: f64) -> usize {
    (((coordinate + 0.5) * BUCKETS as f64).floor().max(0.0) as usize).min(BUCKETS - 1)
}

fn cross(p: [f64; 3], q: [f64; 3], r: [f64; 2]) -> f64 {
    (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
}

/// Checks the pair against the model (measured on the fixtures: the map's points are
/// within 1e-4 of the front surface, and it overlaps the cut-out's opaque part at 0.999;
/// shifting the cut-out's alpha by two texels drops that to 0.98-0.99).
fn check(name: &str, run: &Run) {
    let stats = &run.model.stats;
    let size = (stats.texture_width, stats.texture_height);
    assert_eq!(run.cutout.dimensions(), size, "{name}: the cut-out is not the texture's size");
    assert_eq!(run.positions.dimensions(), size, "{name}: the position map is not the texture's size");

    let decoded = read_glb(&run.model.glb);
    let surface = FrontSurface::new(&decoded.positions, &decoded.indices);
    // One 16-bit step, plus the f32 rounding of the model's own positions.
    let step = 1.0 / 65535.0 + 1e-6;
    let mut inside = 0usize;
    let mut off_surface = 0usize;
    let mut worst = 0.0f64;
    // Least squares of x against the column and y against the row: the map is the
    // picture's own view, so both are affine with one scale.
    let (mut sx, mut sxx, mut sxi, mut si, mut sii) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, j, pixel) in run.positions.enumerate_pixels() {
        match pixel.0[3] {
            0 => assert_eq!(pixel.0, [0; 4], "{name}: texel {i},{j} off the surface is not zero"),
            u16::MAX => {
                inside += 1;
                let p = decode(pixel);
                for axis in 0..3 {
                    assert!(
                        p[axis] >= f64::from(stats.bbox_min[axis]) - step
                            && p[axis] <= f64::from(stats.bbox_max[axis]) + step,
                        "{name}: texel {i},{j} decodes to {p:?}, outside the model's box"
                    );
                }
                match surface.z_at(p[0], p[1]) {
                    Some(front) => worst = worst.max((front - p[2]).abs()),
                    None => off_surface += 1,
                }
                let i = f64::from(i) + 0.5;
                sx += p[0];
                sxx += p[0] * p[0];
                sxi += p[0] * i;
                si += i;
                sii += i * i;
            }
            other => panic!("{name}: texel {i},{j} has alpha {other}, neither 0 nor 65535"),
        }
    }
    assert!(inside > 1000, "{name}: the position map covers only {inside} texels");
    // Points on the rim may fall a rounding step outside the mesh's x/y outline.
    assert!(off_surface * 1000 < inside, "{name}: {off_surface} of {inside} texels are not over the mesh");
    assert!(worst < 1e-3, "{name}: a texel is {worst} away from the front surface");
    let n = inside as f64;
    let correlation = (n * sxi - sx * si) / ((n * sxx - sx * sx).sqrt() * (n * sii - si * si).sqrt());
    assert!(correlation > 0.9999, "{name}: x does not follow the texture's columns ({correlation})");

    // The top of the front surface is the model's front.
    let front = run.positions.pixels().filter(|p| p.0[3] > 0).map(|p| decode(p)[2]).fold(f64::MIN, f64::max);
    assert!((front - f64::from(stats.bbox_max[2])).abs() < 1e-3, "{name}: the map's front {front} is not the model's");

    // The cut-out's opaque part and the position map are the same object.
    let opaque: Vec<bool> = run.cutout.pixels().map(|p| p.0[3] >= 128).collect();
    let covered: Vec<bool> = run.positions.pixels().map(|p| p.0[3] > 0).collect();
    let overlap = iou(&opaque, &covered);
    assert!(overlap > 0.995, "{name}: the cut-out and the position map overlap only {overlap}");
    for p in run.cutout.pixels().filter(|p| p.0[3] == 0) {
        assert_eq!(p.0, [0; 4], "{name}: a transparent cut-out pixel keeps its colour");
    }
}

/// The cut-out's opaque colours are the texture's: same rectangle, same size.
fn texture_agrees(name: &str, run: &Run, max_mean_difference: f64) {
    let (_, _, images) = gltf::import_slice(&run.model.glb).expect("the GLB imports");
    let texture = &images[0];
    assert_eq!((texture.width, texture.height), run.cutout.dimensions());
    let channels = texture.pixels.len() / (texture.width * texture.height) as usize;
    let (mut total, mut count) = (0.0, 0usize);
    for (k, p) in run.cutout.pixels().enumerate() {
        if p.0[3] == 255 {
            for c in 0..3 {
                total += (f64::from(p.0[c]) - f64::from(texture.pixels[k * channels + c])).abs();
            }
            count += 3;
        }
    }
    let mean = total / count as f64;
    assert!(mean <= max_mean_difference, "{name}: cut-out and texture differ by {mean} on average");
}

#[test]
fn vase_cutout_and_position_map_describe_the_model() {
    let run = run("vase.png");
    check("vase.png", &run);
    // A lossless texture: only the texels at the outline, bled in the texture, differ.
    texture_agrees("vase.png", &run, 0.5);
}

#[test]
fn mug_cutout_and_position_map_describe_the_model() {
    let run = run("mug.jpg");
    check("mug.jpg", &run);
    // A JPEG texture (quality 90): close, not equal.
    texture_agrees("mug.jpg", &run, 1.0);
    // The cut-out's alpha is the mask's coverage: its handle opening is transparent
    // where the position map has no surface either, and the object is opaque.
    let opaque = run.cutout.pixels().filter(|p| p.0[3] == 255).count();
    let covered = run.positions.pixels().filter(|p| p.0[3] > 0).count();
    assert!(opaque as f64 > 0.9 * covered as f64, "{opaque} opaque against {covered} covered");
}

#[test]
fn products_come_as_each_is_ready_and_leave_the_model_unchanged() {
    let toy = fixture("toy.webp");
    let run = run("toy.webp");
    assert_eq!(
        run.seen.events,
        [
            "Segmenting 0",
            "Meshing 25",
            "Texturing 60",
            "pixel_images.png",
            "Encoding 85",
            "xyz_images.png",
            "Encoding 100"
        ]
    );
    check("toy.webp", &run);
    let plain = reconstruct(&toy, &Options::default(), &mut |_, _| {}).expect("reconstructs");
    assert!(plain.glb == run.model.glb, "making the products changed the model");

    let again = self::run("toy.webp");
    assert!(again.seen.cutout == run.seen.cutout, "two runs give different cut-outs");
    assert!(again.seen.position_map == run.seen.position_map, "two runs give different position maps");
}

#[test]
fn an_observer_wanting_no_products_gets_stages_only() {
    struct StagesOnly(Vec<Stage>);
    impl Observer for StagesOnly {
        fn stage(&mut self, stage: Stage, _percent: u8) {
            self.0.push(stage);
        }
        fn product(&mut self, product: Product) {
            panic!("{} was made though not wanted", product.file_name());
        }
        fn wants_products(&self) -> bool {
            false
        }
    }
    let mut observer = StagesOnly(Vec::new());
    reconstruct_observed(&fixture("toy.webp"), &Options::default(), &mut observer, &|| false).expect("reconstructs");
    assert_eq!(observer.0.len(), 5);
}

#[test]
fn cancelling_after_the_cutout_makes_no_position_map() {
    let cancelled = std::cell::Cell::new(false);
    struct CancelOnCutout<'a>(&'a std::cell::Cell<bool>, Vec<&'static str>);
    impl Observer for CancelOnCutout<'_> {
        fn stage(&mut self, _stage: Stage, _percent: u8) {}
        fn product(&mut self, product: Product) {
            self.1.push(product.file_name());
            self.0.set(true);
        }
    }
    let mut observer = CancelOnCutout(&cancelled, Vec::new());
    let result = reconstruct_observed(&fixture("toy.webp"), &Options::default(), &mut observer, &|| cancelled.get());
    assert!(matches!(result, Err(ReliefError::Cancelled)), "{result:?}");
    assert_eq!(observer.1, ["pixel_images.png"]);
}
