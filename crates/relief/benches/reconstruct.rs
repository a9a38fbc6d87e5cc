//! How long a picture takes to become a model, for square pictures of 512, 1024 and
//! 2048 pixels a side. Run it in release on one core, as docs/benchmarks.md reports it:
//!
//! ```sh
//! taskset -c 0 cargo bench -p relief --bench reconstruct
//! ```
//!
//! The inputs are made here, the same every run: the mug fixture (a photo-like JPEG with
//! a handle hole) centred on a white square and re-encoded as JPEG, and the vase fixture
//! (a PNG cut-out with alpha) the same way at 1024. Every run includes all the work a
//! provider call does: decoding, segmentation, meshing, texture encoding and GLB output.

use std::hint::black_box;
use std::io::Cursor;
use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, RgbaImage};
use relief::{Options, reconstruct};

/// The object's longest side as a fraction of the square: a typical product photo.
const OBJECT_FRACTION: f64 = 0.7;

fn fixture(name: &str) -> DynamicImage {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/images").join(name);
    image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixture scaled into the middle of a `side` x `side` canvas of `background`.
fn square(picture: &DynamicImage, side: u32, background: [u8; 4], format: ImageFormat) -> Vec<u8> {
    let longest = f64::from(picture.width().max(picture.height()));
    let scale = f64::from(side) * OBJECT_FRACTION / longest;
    let (w, h) = ((f64::from(picture.width()) * scale) as u32, (f64::from(picture.height()) * scale) as u32);
    let object = picture.resize_exact(w, h, FilterType::Triangle).to_rgba8();
    let mut canvas = RgbaImage::from_pixel(side, side, image::Rgba(background));
    image::imageops::overlay(&mut canvas, &object, i64::from((side - w) / 2), i64::from((side - h) / 2));
    let mut bytes = Cursor::new(Vec::new());
    let encoded = match format {
        // JPEG has no alpha channel: encode the RGB picture.
        ImageFormat::Jpeg => DynamicImage::ImageRgba8(canvas).to_rgb8().write_to(&mut bytes, format),
        _ => canvas.write_to(&mut bytes, format),
    };
    encoded.expect("encoding a benchmark input");
    bytes.into_inner()
}

fn bench(c: &mut Criterion) {
    let options = Options::default();
    let mug = fixture("mug.jpg");
    let vase = fixture("vase.png");
    let mut group = c.benchmark_group("reconstruct");
    // A run takes tenths of a second: fewer samples keep the whole bench near a minute.
    group.sample_size(20);
    for side in [512u32, 1024, 2048] {
        let input = square(&mug, side, [255, 255, 255, 255], ImageFormat::Jpeg);
        group.throughput(Throughput::Elements(u64::from(side) * u64::from(side)));
        group.bench_with_input(BenchmarkId::new("mug-jpeg", side), &input, |b, input| {
            b.iter(|| reconstruct(black_box(input), &options, &mut |_, _| {}).expect("a model"))
        });
    }
    let input = square(&vase, 1024, [0, 0, 0, 0], ImageFormat::Png);
    group.throughput(Throughput::Elements(1024 * 1024));
    group.bench_with_input(BenchmarkId::new("vase-png-alpha", 1024), &input, |b, input| {
        b.iter(|| reconstruct(black_box(input), &options, &mut |_, _| {}).expect("a model"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
