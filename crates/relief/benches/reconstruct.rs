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
//!
//! Two groups measure the same runs two ways. `reconstruct` is wall-clock time, what a
//! client waits for on an idle machine. `reconstruct-on-cpu` counts only the time the
//! thread spent running on the core (the scheduler's own accounting, Linux
//! `/proc/thread-self/schedstat`), so other processes sharing the core do not inflate
//! it; on an idle machine the two agree. Elsewhere it falls back to wall-clock time.
//!
//! A third group, `reconstruct-with-products-on-cpu`, times the runs kiln's provider
//! makes: the same, plus seed 004's cut-out and position map (`reconstruct_observed`).
//! The difference from `reconstruct-on-cpu` is what the two pictures cost:
//!
//! ```sh
//! taskset -c 0 cargo bench -p relief --bench reconstruct -- on-cpu
//! ```

use std::hint::black_box;
use std::io::Cursor;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, RgbaImage};
use relief::{Observer, Options, Product, Stage, reconstruct, reconstruct_observed};

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

/// Nanoseconds this thread has spent running on a core; `None` off Linux.
fn on_cpu_nanos() -> Option<u64> {
    let stats = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stats.split_whitespace().next()?.parse().ok()
}

/// Runs `work` `iterations` times and returns the time it spent on the core.
fn time_on_cpu(iterations: u64, mut work: impl FnMut()) -> Duration {
    let (cpu, wall) = (on_cpu_nanos(), Instant::now());
    for _ in 0..iterations {
        work();
    }
    match (cpu, on_cpu_nanos()) {
        (Some(start), Some(end)) => Duration::from_nanos(end.saturating_sub(start)),
        _ => wall.elapsed(),
    }
}

/// Keeps the products' sizes, as a caller storing them would read them.
struct Keep(usize);

impl Observer for Keep {
    fn stage(&mut self, _stage: Stage, _percent: u8) {}

    fn product(&mut self, product: Product) {
        self.0 += black_box(product.bytes()).len();
    }
}

fn bench(c: &mut Criterion) {
    let options = Options::default();
    let mug = fixture("mug.jpg");
    let vase = fixture("vase.png");
    let mut inputs: Vec<(&str, u32, Vec<u8>)> = [512u32, 1024, 2048]
        .into_iter()
        .map(|side| ("mug-jpeg", side, square(&mug, side, [255, 255, 255, 255], ImageFormat::Jpeg)))
        .collect();
    inputs.push(("vase-png-alpha", 1024, square(&vase, 1024, [0, 0, 0, 0], ImageFormat::Png)));
    let run = |input: &[u8]| reconstruct(black_box(input), &options, &mut |_, _| {}).expect("a model");

    for on_cpu in [false, true] {
        let mut group = c.benchmark_group(if on_cpu { "reconstruct-on-cpu" } else { "reconstruct" });
        // A run takes tenths of a second: fewer samples keep the whole bench near two minutes.
        group.sample_size(20);
        for (name, side, input) in &inputs {
            group.throughput(Throughput::Elements(u64::from(*side) * u64::from(*side)));
            group.bench_with_input(BenchmarkId::new(*name, side), input, |b, input| {
                if on_cpu {
                    b.iter_custom(|iterations| {
                        time_on_cpu(iterations, || {
                            run(input);
                        })
                    })
                } else {
                    b.iter(|| run(input))
                }
            });
        }
        group.finish();
    }

    let mut group = c.benchmark_group("reconstruct-with-products-on-cpu");
    group.sample_size(20);
    for (name, side, input) in &inputs {
        group.throughput(Throughput::Elements(u64::from(*side) * u64::from(*side)));
        group.bench_with_input(BenchmarkId::new(*name, side), input, |b, input| {
            b.iter_custom(|iterations| {
                time_on_cpu(iterations, || {
                    let mut keep = Keep(0);
                    reconstruct_observed(black_box(input), &options, &mut keep, &|| false).expect("a model");
                    assert!(keep.0 > 0, "no products");
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
