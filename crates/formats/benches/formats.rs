//! Conversion time per format and the size of the compressed GLB against the plain one,
//! on relief's models of the fixture pictures (relief's defaults) and on two models of
//! about 500 000 triangles: relief at its finest settings, and a generated TRELLIS-like
//! sphere (WebP textures, UV seams kept). Run it in release on one core, as
//! docs/benchmarks.md reports it:
//!
//! ```sh
//! taskset -c 0 cargo bench -p formats --bench formats
//! ```
//!
//! Before the timings, one `SIZES` line per input gives the plain GLB's size, the
//! compressed (meshopt), core and LOD GLBs' sizes, the compressed/plain ratio (design
//! target ≤ 0.30), the same ratio without textures (geometry alone), and the mean
//! per-channel difference between the CPU previews of the model and of the compressed
//! GLB read back. Criterion then times each conversion from an already-read `Model`
//! (plus `read` itself, from the GLB bytes). `FORMATS_BENCH_INPUTS=vase,relief-500k`
//! limits the inputs by name; `FORMATS_BENCH_GLB=a.glb,b.glb` adds GLB files, named by
//! their file stem (for instance `tests/python/make_trellis_like.py`'s output).

#[path = "../tests/generated/mod.rs"]
mod generated;

use std::hint::black_box;
use std::io::Cursor;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use formats::write::{CompressOptions, GlbOptions, Units, UsdzOptions};
use formats::{Cancel, Limits, Model, PreviewOptions};

/// The LOD budget the design benches against.
const LOD_TRIANGLES: u64 = 50_000;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/images").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn relief_glb(picture: &str, options: &relief::Options) -> Vec<u8> {
    relief::reconstruct(&fixture(picture), options, &mut |_, _| {}).expect("relief reconstructs").glb
}

/// The inputs by name, as GLB bytes (what kiln holds).
fn inputs() -> Vec<(String, Vec<u8>)> {
    let wanted: Option<Vec<String>> =
        std::env::var("FORMATS_BENCH_INPUTS").ok().map(|v| v.split(',').map(str::to_string).collect());
    let keep = |name: &str| wanted.as_ref().is_none_or(|w| w.iter().any(|n| n == name));
    let mut inputs = Vec::new();
    for (name, picture) in
        [("vase", "vase.png"), ("mug", "mug.jpg"), ("toy", "toy.webp"), ("large", "large-4096x3072.jpg")]
    {
        if keep(name) {
            inputs.push((name.to_string(), relief_glb(picture, &relief::Options::default())));
        }
    }
    if keep("relief-500k") {
        let fine =
            relief::Options { resolution: 512, max_triangles: 500_000, texture_size: 2048, ..Default::default() };
        inputs.push(("relief-500k".to_string(), relief_glb("large-4096x3072.jpg", &fine)));
    }
    // GLB files from elsewhere, e.g. tests/python/make_trellis_like.py's (trimesh, lossy
    // WebP textures, as TRELLIS.2 writes them), named by their file stem.
    for path in std::env::var("FORMATS_BENCH_GLB").iter().flat_map(|v| v.split(',')) {
        let path = PathBuf::from(path);
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("glb").to_string();
        if keep(&name) {
            let glb = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            inputs.push((name, glb));
        }
    }
    if keep("trellis-like-500k") {
        let model = generated::trellis_like(500_000, 2048);
        let mut glb = Vec::new();
        formats::write::glb(&model, &mut glb, &GlbOptions::default(), &Cancel::new()).expect("a GLB");
        inputs.push(("trellis-like-500k".to_string(), glb));
    }
    inputs
}

fn read(glb: &[u8]) -> Model {
    Model::read_glb(glb, &Limits::default(), &Cancel::new()).expect("the GLB reads")
}

fn meshopt(model: &Model) -> Vec<u8> {
    let mut out = Vec::new();
    formats::write::meshopt_glb(model, &mut out, &CompressOptions::default(), &Cancel::new()).expect("meshopt GLB");
    out
}

fn glb(model: &Model, options: &GlbOptions) -> Vec<u8> {
    let mut out = Vec::new();
    formats::write::glb(model, &mut out, options, &Cancel::new()).expect("GLB");
    out
}

fn preview(model: &Model) -> image::RgbaImage {
    formats::preview(model, &PreviewOptions::default(), &Cancel::new()).expect("preview")
}

/// Prints the sizes, ratios and preview difference of one input.
fn report_sizes(name: &str, plain: &[u8], model: &Model) {
    let compressed = meshopt(model);
    let core = glb(model, &GlbOptions { core: true, texture_side: None });
    let (lod, report) = formats::simplify(model, LOD_TRIANGLES, &Cancel::new()).expect("LOD");
    let lod_bytes = meshopt(&lod);
    let bare = Model { textures: Vec::new(), materials: Vec::new(), ..model.clone() };
    let bare = Model { parts: bare.parts.into_iter().map(|p| formats::Part { material: None, ..p }).collect(), ..bare };
    let (bare_plain, bare_compressed) = (glb(&bare, &GlbOptions::default()), meshopt(&bare));
    let (a, b) = (preview(model), preview(&read(&compressed)));
    let difference: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    let differing = a.pixels().zip(b.pixels()).filter(|(p, q)| (0..4).any(|k| p.0[k].abs_diff(q.0[k]) > 8)).count();
    println!(
        "SIZES {name}: triangles {}, vertices {}; plain {} B, meshopt {} B (ratio {:.3}), core {} B, \
         lod {} B ({} triangles, error {:.4}); geometry alone: plain {} B, meshopt {} B (ratio {:.3}); \
         preview difference: mean {:.3}/255 per channel, {:.2} % of pixels off by more than 8/255",
        model.triangles(),
        model.vertices(),
        plain.len(),
        compressed.len(),
        compressed.len() as f64 / plain.len() as f64,
        core.len(),
        lod_bytes.len(),
        report.triangles_after,
        report.error,
        bare_plain.len(),
        bare_compressed.len(),
        bare_compressed.len() as f64 / bare_plain.len() as f64,
        difference as f64 / a.as_raw().len() as f64,
        differing as f64 * 100.0 / f64::from(a.width() * a.height()),
    );
}

fn bench(c: &mut Criterion) {
    let inputs = inputs();
    let models: Vec<(String, Vec<u8>, Model)> =
        inputs.into_iter().map(|(name, glb)| (name, glb.clone(), read(&glb))).collect();
    for (name, plain, model) in &models {
        report_sizes(name, plain, model);
    }
    let cancel = Cancel::new();
    for (name, plain, model) in &models {
        let mut group = c.benchmark_group(name.as_str());
        group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
        group.bench_function("read", |b| b.iter(|| read(black_box(plain))));
        group.bench_function("preview", |b| b.iter(|| preview(black_box(model))));
        group.bench_function("glb", |b| b.iter(|| glb(black_box(model), &GlbOptions::default())));
        let core = GlbOptions { core: true, texture_side: None };
        group.bench_function("glb-core", |b| b.iter(|| glb(black_box(model), &core)));
        group.bench_function("glb-meshopt", |b| b.iter(|| meshopt(black_box(model))));
        if model.triangles() > LOD_TRIANGLES {
            group.bench_function("lod-50k", |b| {
                b.iter(|| formats::simplify(black_box(model), LOD_TRIANGLES, &cancel).expect("LOD"))
            });
        }
        group.bench_function("obj", |b| {
            b.iter(|| formats::write::obj_zip(black_box(model), Cursor::new(Vec::new()), &cancel).expect("OBJ"))
        });
        group.bench_function("stl", |b| {
            b.iter(|| formats::write::stl(black_box(model), Vec::new(), Units::Metres, &cancel).expect("STL"))
        });
        group.bench_function("ply", |b| {
            b.iter(|| formats::write::ply(black_box(model), Vec::new(), &cancel).expect("PLY"))
        });
        let usdz = UsdzOptions::default();
        if formats::write::usdz(model, Cursor::new(Vec::new()), &usdz, &cancel).is_ok() {
            group.bench_function("usdz", |b| {
                b.iter(|| {
                    formats::write::usdz(black_box(model), Cursor::new(Vec::new()), &usdz, &cancel).expect("USDZ")
                })
            });
        } else {
            println!("{name}: usdz skipped (the writer refused this model or is not ready)");
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
