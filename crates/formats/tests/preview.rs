//! The CPU preview, checked by its pixels: a transparent background (corners and
//! border), the object covering the share of the picture its bounding sphere implies,
//! shading and texture colours that vary, the right way up and round, back faces
//! culled unless double-sided, alpha masks honoured, and the same pixels every time.
//!
//! `cargo test -p formats --test preview -- --ignored` also writes the pictures to
//! `target/formats-previews/` for a person to look at.

mod generated;

use formats::{AlphaMode, Cancel, ImageFormat, Material, Model, Part, PreviewOptions, Sampler, Texture};
use image::{Rgba, RgbaImage};

fn render(model: &Model, size: u32) -> RgbaImage {
    formats::preview(model, &PreviewOptions { size }, &Cancel::new()).expect("a preview")
}

fn coverage(picture: &RgbaImage) -> f64 {
    picture.pixels().filter(|p| p.0[3] > 0).count() as f64 / f64::from(picture.width() * picture.height())
}

/// The mean position of covered pixels, in picture coordinates.
fn centroid(picture: &RgbaImage) -> (f64, f64) {
    let (mut x, mut y, mut n) = (0.0, 0.0, 0.0);
    for (px, py, p) in picture.enumerate_pixels() {
        if p.0[3] > 0 {
            x += f64::from(px);
            y += f64::from(py);
            n += 1.0;
        }
    }
    (x / n, y / n)
}

fn sphere_model() -> Model {
    generated::textured(generated::sphere(64, 32, 0.5), ImageFormat::Png, 64, AlphaMode::Opaque)
}

/// A flat-coloured texture model, for colour checks.
fn solid(colour: [u8; 4], alpha_mode: AlphaMode) -> Model {
    let mut model = sphere_model();
    let side = 16;
    let image = RgbaImage::from_fn(side, side, |x, _| {
        let mut c = colour;
        if alpha_mode == AlphaMode::Mask && x < side / 2 {
            c[3] = 0;
        }
        Rgba(c)
    });
    model.textures[0] = Texture {
        bytes: generated::encode(&image, ImageFormat::Png),
        format: ImageFormat::Png,
        width: side,
        height: side,
        sampler: Sampler::default(),
    };
    model.materials[0].alpha_mode = alpha_mode;
    model
}

#[test]
fn the_background_is_transparent_and_the_object_is_framed() {
    let picture = render(&sphere_model(), 256);
    assert_eq!(picture.dimensions(), (256, 256));
    for (x, y) in [(0, 0), (255, 0), (0, 255), (255, 255)] {
        assert_eq!(picture.get_pixel(x, y).0, [0, 0, 0, 0], "corner ({x}, {y})");
    }
    // The bounding sphere spans 90 % of the width: a 5 % border stays empty.
    for (x, y, p) in picture.enumerate_pixels() {
        let border = x < 10 || y < 10 || x >= 246 || y >= 246;
        assert!(!border || p.0[3] == 0, "pixel ({x}, {y}) is drawn: {:?}", p.0);
    }
    // A sphere seen from any side is a disc of radius 0.45 picture widths: π·0.45².
    let covered = coverage(&picture);
    assert!((0.58..0.66).contains(&covered), "coverage {covered}");
    let (cx, cy) = centroid(&picture);
    assert!((cx - 127.5).abs() < 2.0 && (cy - 127.5).abs() < 2.0, "centred: ({cx}, {cy})");
    // Inside, pixels are opaque; only the silhouette is partly covered.
    let opaque = picture.pixels().filter(|p| p.0[3] == 255).count() as f64 / (256.0 * 256.0);
    assert!(opaque > covered - 0.03, "{opaque} of {covered}");
}

#[test]
fn shading_and_texture_vary_across_the_object() {
    let picture = render(&sphere_model(), 128);
    let mut colours: Vec<[u8; 3]> =
        picture.pixels().filter(|p| p.0[3] == 255).map(|p| [p.0[0], p.0[1], p.0[2]]).collect();
    colours.sort();
    colours.dedup();
    assert!(colours.len() > 200, "only {} colours", colours.len());

    // A white sphere: lit from the upper left, darker to the lower right.
    let white = render(&solid([255, 255, 255, 255], AlphaMode::Opaque), 128);
    let luma = |x: u32, y: u32| {
        let p = white.get_pixel(x, y).0;
        assert_eq!(p[3], 255, "({x}, {y}) is on the sphere");
        u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2])
    };
    assert!(luma(45, 45) > luma(85, 85) + 60, "{} vs {}", luma(45, 45), luma(85, 85));
    // Nothing is black: ambient light.
    assert!(luma(95, 95) > 60);
}

#[test]
fn texture_colour_and_base_colour_factor_show() {
    let red = render(&solid([220, 30, 30, 255], AlphaMode::Opaque), 64);
    let (mut r, mut g, mut b) = (0u64, 0u64, 0u64);
    for p in red.pixels().filter(|p| p.0[3] == 255) {
        r += u64::from(p.0[0]);
        g += u64::from(p.0[1]);
        b += u64::from(p.0[2]);
    }
    assert!(r > 3 * g && r > 3 * b, "({r}, {g}, {b})");

    let mut tinted = solid([255, 255, 255, 255], AlphaMode::Opaque);
    tinted.materials[0].base_color_factor = [0.0, 0.0, 1.0, 1.0];
    let blue = render(&tinted, 64);
    assert!(blue.pixels().filter(|p| p.0[3] == 255).all(|p| p.0[0] == 0 && p.0[1] == 0 && p.0[2] > 0));
}

#[test]
fn the_view_is_from_the_front_right_and_above() {
    // A red sphere at −X and a blue one at +X: seen from the front right, blue is to
    // the right of red and nearer, so it hides part of red.
    let ball = |x: f32, material: usize| {
        let mut part = generated::sphere(32, 16, 0.3);
        part.positions.iter_mut().for_each(|p| p[0] += x);
        Part { material: Some(material), uvs: None, ..part }
    };
    let colour = |rgb: [f32; 3]| Material { base_color_factor: [rgb[0], rgb[1], rgb[2], 1.0], ..Material::default() };
    let pair = Model {
        parts: vec![ball(-0.4, 0), ball(0.4, 1)],
        materials: vec![colour([1.0, 0.0, 0.0]), colour([0.0, 0.0, 1.0])],
        ..Model::default()
    };
    let picture = render(&pair, 128);
    let mean_x = |channel: usize| {
        let xs: Vec<f64> = picture
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0[3] == 255 && p.0[channel] > 0)
            .map(|(x, _, _)| f64::from(x))
            .collect();
        (xs.iter().sum::<f64>() / xs.len() as f64, xs.len())
    };
    let ((red_x, red), (blue_x, blue)) = (mean_x(0), mean_x(2));
    assert!(blue_x > red_x + 30.0, "red at {red_x}, blue at {blue_x}");
    assert!(blue > red, "the nearer blue sphere hides some red: {blue} vs {red} pixels");
    // A bar along +Y appears upright; one along +Z (towards the front) goes down-left:
    // seen from the right, the front turns to the left, seen from above, down.
    let bar = |axis: usize| {
        let mut part = generated::sphere(16, 8, 0.05);
        part.positions.iter_mut().for_each(|p| p[axis] = p[axis] * 20.0 + 0.5);
        Model { parts: vec![part], materials: vec![Material::default()], ..Model::default() }
    };
    let spread = |picture: &RgbaImage| {
        let covered: Vec<(f64, f64)> = picture
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0[3] > 0)
            .map(|(x, y, _)| (f64::from(x), f64::from(y)))
            .collect();
        let n = covered.len() as f64;
        let (mx, my) = covered.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
        let (sxx, syy, sxy) = covered.iter().fold((0.0, 0.0, 0.0), |(a, b, c), (x, y)| {
            (a + (x - mx) * (x - mx), b + (y - my) * (y - my), c + (x - mx) * (y - my))
        });
        (sxx / n, syy / n, sxy / n)
    };
    let (xx, yy, _) = spread(&render(&bar(1), 128));
    assert!(yy > 10.0 * xx, "upright: {xx} {yy}");
    let (xx, yy, xy) = spread(&render(&bar(2), 128));
    // Mostly horizontal (turned 35° about Y), sloping so that the front end is lower
    // and further left: x and y (down) anti-correlated.
    assert!(xx > yy && xy < 0.0, "{xx} {yy} {xy}");
}

#[test]
fn back_faces_are_culled_unless_double_sided() {
    // One triangle facing away from the viewer (its front looks along −Z).
    let part = Part {
        positions: vec![[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
        indices: vec![0, 1, 2],
        material: Some(0),
        ..Part::default()
    };
    let mut model = Model { parts: vec![part], materials: vec![Material::default()], ..Model::default() };
    assert_eq!(coverage(&render(&model, 64)), 0.0);
    model.materials[0].double_sided = true;
    assert!(coverage(&render(&model, 64)) > 0.1);
    // Facing the viewer, it shows without double-siding.
    model.materials[0].double_sided = false;
    model.parts[0].indices = vec![0, 2, 1];
    assert!(coverage(&render(&model, 64)) > 0.1);
}

#[test]
fn masked_texels_are_not_drawn() {
    let opaque = coverage(&render(&solid([200, 200, 200, 255], AlphaMode::Opaque), 128));
    let masked = coverage(&render(&solid([200, 200, 200, 255], AlphaMode::Mask), 128));
    // Half the texture (u < 0.5, half the way round) is cut out: from this side the far
    // half shows through where the near one is cut, so less than all and more than half.
    assert!(masked < opaque * 0.9 && masked > opaque * 0.3, "{masked} of {opaque}");
}

#[test]
fn the_same_model_gives_the_same_pixels() {
    let model = generated::trellis_like(20_000, 128);
    assert_eq!(render(&model, 128), render(&model, 128));
}

#[test]
fn sizes_are_checked_and_cancel_stops() {
    let model = sphere_model();
    assert!(formats::preview(&model, &PreviewOptions { size: 8 }, &Cancel::new()).is_err());
    assert!(formats::preview(&model, &PreviewOptions { size: 5000 }, &Cancel::new()).is_err());
    let cancel = Cancel::new();
    cancel.cancel();
    assert!(matches!(
        formats::preview(&model, &PreviewOptions::default(), &cancel),
        Err(formats::FormatError::Cancelled)
    ));
    // An empty model is a transparent picture, not an error.
    let empty = render(&Model::default(), 32);
    assert!(empty.pixels().all(|p| p.0 == [0, 0, 0, 0]));
}

#[test]
#[ignore = "writes pictures for a person to look at"]
fn write_previews() {
    let out = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/formats-previews");
    std::fs::create_dir_all(&out).expect("preview folder");
    let mut models = vec![
        ("sphere".to_string(), sphere_model()),
        ("two-parts".to_string(), generated::two_parts()),
        ("trellis-like".to_string(), generated::trellis_like(50_000, 512)),
    ];
    let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/images");
    for picture in ["vase.png", "mug.jpg", "toy.webp", "large-4096x3072.jpg"] {
        let bytes = std::fs::read(fixtures.join(picture)).expect("a fixture");
        let glb = relief::reconstruct(&bytes, &relief::Options::default(), &mut |_, _| {}).expect("relief").glb;
        let model = Model::read_glb(&glb, &formats::Limits::default(), &Cancel::new()).expect("reads");
        models.push((format!("relief-{}", picture.replace('.', "-")), model));
    }
    for (name, model) in models {
        let path = out.join(format!("{name}.png"));
        render(&model, 512).save(&path).expect("saving a preview");
        println!("{}", path.display());
    }
}
