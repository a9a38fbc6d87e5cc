//! The engine on the shared fixture pictures: valid GLB, watertight, within budget and
//! the unit cube, holes kept, errors where there is no object.

mod common;

use std::time::Instant;

use common::*;
use relief::{Options, ReliefError, Stage, reconstruct};

fn run(name: &str, options: &Options) -> relief::Model {
    let bytes = fixture(name);
    let started = Instant::now();
    let model = reconstruct(&bytes, options, &mut |_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
    println!(
        "{name}: {} triangles, {} vertices, texture {}x{} {}, {:.2?}",
        model.stats.triangles,
        model.stats.vertices,
        model.stats.texture_width,
        model.stats.texture_height,
        model.stats.texture_format,
        started.elapsed()
    );
    model
}

/// Everything every model must satisfy; returns the decoded mesh for further checks.
fn check_model(name: &str, model: &relief::Model, options: &Options) -> Decoded {
    let decoded = read_glb(&model.glb);
    let stats = &model.stats;
    assert_eq!(stats.vertices as usize, decoded.positions.len(), "{name}");
    assert_eq!(stats.triangles as usize * 3, decoded.indices.len(), "{name}");
    assert!(stats.triangles <= options.max_triangles, "{name}: over budget");
    assert!(stats.triangles > 0);
    assert_watertight(&decoded.indices);
    assert!(signed_volume(&decoded.positions, &decoded.indices) > 0.0, "{name}: faces point inwards");
    for axis in 0..3 {
        assert!(stats.bbox_min[axis] >= -0.5 && stats.bbox_max[axis] <= 0.5, "{name}: {stats:?}");
        // The gltf crate's JSON parsing may be an ulp off in f64; in f32 it is exact.
        assert_eq!(stats.bbox_min[axis], decoded.accessor_min[axis] as f32, "{name}");
        assert_eq!(stats.bbox_max[axis], decoded.accessor_max[axis] as f32, "{name}");
    }
    let longest = (0..3).map(|a| stats.bbox_max[a] - stats.bbox_min[a]).fold(0.0, f32::max);
    assert!((longest - 1.0).abs() < 1e-4, "{name}: longest side {longest}");
    for n in &decoded.normals {
        let length = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
        assert!((length - 1.0).abs() < 1e-4, "{name}: normal {n:?}");
    }
    for uv in &decoded.uvs {
        assert!((0.0..=1.0).contains(&uv[0]) && (0.0..=1.0).contains(&uv[1]));
    }
    let longest_texture = stats.texture_width.max(stats.texture_height);
    assert!(longest_texture <= options.texture_size);
    let expected_mime = format!("image/{}", stats.texture_format);
    assert_eq!(decoded.image_mime, expected_mime, "{name}");
    decoded
}

#[test]
fn vase_with_alpha() {
    let options = Options::default();
    let model = run("vase.png", &options);
    check_model("vase.png", &model, &options);
    assert_eq!(model.stats.texture_format, "png");
}

#[test]
fn mug_keeps_its_handle_hole() {
    let options = Options::default();
    let model = run("mug.jpg", &options);
    let decoded = check_model("mug.jpg", &model, &options);
    assert_eq!(model.stats.texture_format, "jpeg");
    let chi = euler_characteristic(decoded.positions.len(), &decoded.indices);
    // One connected closed surface with at least one handle: genus >= 1.
    assert!(chi <= 0, "Euler characteristic {chi}: the handle hole closed");
}

#[test]
fn toy_on_grey() {
    let options = Options::default();
    let model = run("toy.webp", &options);
    check_model("toy.webp", &model, &options);
    assert_eq!(model.stats.texture_format, "jpeg");
}

#[test]
fn large_picture_stays_in_budget() {
    let options = Options::default();
    let model = run("large-4096x3072.jpg", &options);
    check_model("large-4096x3072.jpg", &model, &options);
}

#[test]
fn mug_hole_is_empty_along_the_view_axis() {
    // A ray along z through the middle of the handle's opening hits nothing. The
    // opening's centre is found from the picture: the background pixel enclosed by the
    // object on the right-hand side, furthest from any object pixel along its row.
    let options = Options::default();
    let model = run("mug.jpg", &options);
    let decoded = read_glb(&model.glb);
    let picture = image::load_from_memory(&fixture("mug.jpg")).expect("decodes").to_rgb8();
    let (w, h) = picture.dimensions();
    let is_object = |x: u32, y: u32| {
        let p = picture.get_pixel(x, y).0;
        p.iter().any(|&c| c < 200)
    };
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for y in 0..h {
        for x in 0..w {
            if is_object(x, y) {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
    }
    // Scan the right third of the object for the longest background run enclosed by
    // object pixels on both sides: that is the inside of the handle.
    let mut best: Option<(u32, u32, u32)> = None;
    for y in y0..=y1 {
        let mut x = x0 + (x1 - x0) * 2 / 3;
        while x <= x1 {
            if is_object(x, y) {
                x += 1;
                continue;
            }
            let start = x;
            while x <= x1 && !is_object(x, y) {
                x += 1;
            }
            let enclosed = x <= x1 && start > 0 && is_object(start - 1, y);
            if enclosed && best.is_none_or(|(_, _, len)| x - start > len) {
                best = Some((start, y, x - start));
            }
        }
    }
    let (start, y, len) = best.expect("the mug picture shows a handle opening");
    let (cx, cy) = (start as f32 + len as f32 / 2.0, y as f32);
    // Map picture coordinates to the model: the model's x/y box is the object's box.
    let (bmin, bmax) = (model.stats.bbox_min, model.stats.bbox_max);
    let mx = bmin[0] + (cx - x0 as f32) / (x1 - x0) as f32 * (bmax[0] - bmin[0]);
    let my = bmax[1] - (cy - y0 as f32) / (y1 - y0) as f32 * (bmax[1] - bmin[1]);
    assert!(
        !ray_hits(&decoded.positions, &decoded.indices, mx, my),
        "a ray through the handle opening at ({mx}, {my}) hits the mesh"
    );
    // And a ray through the body does hit it.
    let body = bmin[0] + 0.3 * (bmax[0] - bmin[0]);
    assert!(ray_hits(&decoded.positions, &decoded.indices, body, 0.0));
}

#[test]
fn front_view_matches_the_picture_silhouette() {
    // Rendering check: the model seen from the front covers the same region as the
    // object in the picture (intersection over union of the two silhouettes).
    for (name, is_object) in [
        ("vase.png", Box::new(|p: [u8; 4]| p[3] >= 128) as Box<dyn Fn([u8; 4]) -> bool>),
        ("mug.jpg", Box::new(|p: [u8; 4]| p[..3].iter().any(|&c| c < 200))),
    ] {
        let options = Options::default();
        let model = run(name, &options);
        let decoded = read_glb(&model.glb);
        let picture = image::load_from_memory(&fixture(name)).expect("decodes").to_rgba8();
        let (w, h) = picture.dimensions();
        let mask: Vec<bool> = picture.pixels().map(|p| is_object(p.0)).collect();
        let (mut x0, mut y0, mut x1, mut y1) = (w as usize, h as usize, 0, 0);
        for (k, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
            let (x, y) = (k % w as usize, k / w as usize);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        }
        let (bw, bh) = (x1 - x0, y1 - y0);
        let cropped: Vec<bool> = (0..bw * bh).map(|k| mask[(y0 + k / bw) * w as usize + x0 + k % bw]).collect();
        let rendered = front_silhouette(&decoded.positions, &decoded.indices, bw, bh);
        let score = iou(&cropped, &rendered);
        println!("{name}: silhouette IoU {score:.3}");
        assert!(score >= 0.9, "{name}: silhouette IoU {score:.3}");
    }
}

#[test]
fn uniform_picture_has_no_foreground_object() {
    for colour in [[255u8, 255, 255], [30, 120, 200], [0, 0, 0]] {
        let picture = image::RgbImage::from_pixel(200, 150, image::Rgb(colour));
        let mut bytes = std::io::Cursor::new(Vec::new());
        picture.write_to(&mut bytes, image::ImageFormat::Jpeg).expect("encodes");
        let error = reconstruct(bytes.get_ref(), &Options::default(), &mut |_, _| {})
            .expect_err("a uniform picture has no object");
        assert!(matches!(error, ReliefError::NoForegroundObject), "{error:?}");
        assert_eq!(error.code(), "no_foreground_object");
    }
}

#[test]
fn same_input_gives_identical_bytes() {
    let bytes = fixture("toy.webp");
    let options = Options::default();
    let first = reconstruct(&bytes, &options, &mut |_, _| {}).expect("first run");
    let second = reconstruct(&bytes, &options, &mut |_, _| {}).expect("second run");
    assert!(first.glb == second.glb, "two runs differ");
    assert_eq!(first.stats, second.stats);
}

#[test]
fn invalid_options_are_refused_before_any_work() {
    let bytes = fixture("toy.webp");
    let bad = Options { resolution: 8, ..Options::default() };
    let error = reconstruct(&bytes, &bad, &mut |_, _| panic!("no progress for bad options"))
        .expect_err("resolution 8 is invalid");
    assert!(matches!(error, ReliefError::InvalidOption { name: "resolution", .. }));
    assert_eq!(error.code(), "invalid_params");
}

#[test]
fn unreadable_pictures_are_invalid_images() {
    for name in [
        "invalid/empty.jpg",
        "invalid/not-supported.gif",
        "invalid/text-named.png",
        "invalid/truncated.png",
        "invalid/bomb-50000x50000.png",
    ] {
        let error = reconstruct(&fixture(name), &Options::default(), &mut |_, _| {}).expect_err(name);
        assert!(matches!(error, ReliefError::InvalidImage(_)), "{name}: {error:?}");
        assert_eq!(error.code(), "invalid_image");
    }
}

#[test]
fn small_budget_and_options_are_respected() {
    let options = Options { depth: 1.2, resolution: 64, max_triangles: 1_000, texture_size: 128 };
    let model = run("mug.jpg", &options);
    check_model("mug.jpg", &model, &options);
    assert!(model.stats.triangles <= 1_000);
    assert!(model.stats.texture_width.max(model.stats.texture_height) <= 128);
    // Deeper inflation gives a thicker model.
    let default = run("mug.jpg", &Options { max_triangles: 1_000, ..Options::default() });
    let thickness = |s: &relief::Stats| s.bbox_max[2] - s.bbox_min[2];
    assert!(thickness(&model.stats) > 2.0 * thickness(&default.stats));
}

#[test]
fn progress_covers_every_stage_in_order() {
    let mut seen = Vec::new();
    reconstruct(&fixture("toy.webp"), &Options::default(), &mut |stage, percent| {
        seen.push((stage, percent));
    })
    .expect("reconstructs");
    assert_eq!(
        seen,
        vec![
            (Stage::Segmenting, 0),
            (Stage::Meshing, 25),
            (Stage::Texturing, 60),
            (Stage::Encoding, 85),
            (Stage::Encoding, 100),
        ]
    );
}

#[test]
fn cancelling_stops_at_the_next_step() {
    let wanted = std::cell::Cell::new(true);
    let mut seen = Vec::new();
    let result = relief::reconstruct_cancellable(
        &fixture("toy.webp"),
        &Options::default(),
        &mut |stage, _| {
            seen.push(stage);
            if stage == Stage::Meshing {
                wanted.set(false);
            }
        },
        &|| !wanted.get(),
    );
    assert!(matches!(result, Err(ReliefError::Cancelled)), "{result:?}");
    assert_eq!(result.err().map(|e| e.code()), Some("canceled"));
    assert_eq!(seen, vec![Stage::Segmenting, Stage::Meshing], "no stage after the cancellation");
}

#[test]
fn tiny_and_thin_pictures_give_a_model_or_a_clear_error() {
    // Degenerate sizes, opaque and cut-out: never a panic, never another error.
    for (width, height) in [(1, 1), (1, 64), (64, 1), (2, 2), (3, 3), (5, 400), (400, 5)] {
        for alpha in [false, true] {
            let picture = image::RgbaImage::from_fn(width, height, |x, y| {
                let centre = x == width / 2 && y == height / 2;
                match (centre, alpha) {
                    (true, _) => image::Rgba([200, 30, 30, 255]),
                    (false, true) => image::Rgba([0, 0, 0, 0]),
                    (false, false) => image::Rgba([250, 250, 250, 255]),
                }
            });
            let mut bytes = std::io::Cursor::new(Vec::new());
            picture.write_to(&mut bytes, image::ImageFormat::Png).expect("encodes");
            match reconstruct(bytes.get_ref(), &Options::default(), &mut |_, _| {}) {
                Ok(model) => {
                    let decoded = read_glb(&model.glb);
                    assert_watertight(&decoded.indices);
                }
                Err(ReliefError::NoForegroundObject) => {}
                Err(other) => panic!("{width}x{height} alpha {alpha}: {other:?}"),
            }
        }
    }
}
