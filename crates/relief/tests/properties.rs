//! Property test: random blobs on random plain backgrounds always give a watertight
//! model within budget, or the clear "no foreground object" error; never a panic and
//! never another error.

mod common;

use common::{assert_watertight, read_glb};
use image::{ImageFormat, Rgb, RgbImage};
use proptest::prelude::*;
use relief::{Options, ReliefError, reconstruct};

#[derive(Debug, Clone)]
struct Blob {
    ellipse: bool,
    /// Centre and half-sizes as fractions of the picture.
    centre: (f32, f32),
    half: (f32, f32),
    colour: [u8; 3],
}

fn blob() -> impl Strategy<Value = Blob> {
    (any::<bool>(), (0.0f32..1.0, 0.0f32..1.0), (0.02f32..0.45, 0.02f32..0.45), any::<[u8; 3]>())
        .prop_map(|(ellipse, centre, half, colour)| Blob { ellipse, centre, half, colour })
}

fn draw(width: u32, height: u32, background: [u8; 3], blobs: &[Blob]) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
        let mut colour = background;
        for b in blobs {
            let (dx, dy) = ((u - b.centre.0) / b.half.0, (v - b.centre.1) / b.half.1);
            let inside = if b.ellipse { dx * dx + dy * dy <= 1.0 } else { dx.abs() <= 1.0 && dy.abs() <= 1.0 };
            if inside {
                colour = b.colour;
            }
        }
        Rgb(colour)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn blobs_give_watertight_models_or_a_clear_error(
        width in 64u32..160,
        height in 64u32..160,
        background in any::<[u8; 3]>(),
        blobs in prop::collection::vec(blob(), 1..4),
        jpeg in any::<bool>(),
        resolution in 32u32..128,
        max_triangles in 1_000u32..20_000,
    ) {
        let picture = draw(width, height, background, &blobs);
        let mut bytes = std::io::Cursor::new(Vec::new());
        let format = if jpeg { ImageFormat::Jpeg } else { ImageFormat::Png };
        picture.write_to(&mut bytes, format).expect("encodes");
        let options = Options { resolution, max_triangles, ..Options::default() };
        match reconstruct(bytes.get_ref(), &options, &mut |_, _| {}) {
            Ok(model) => {
                prop_assert!(model.stats.triangles <= max_triangles);
                let decoded = read_glb(&model.glb);
                assert_watertight(&decoded.indices);
                for p in &decoded.positions {
                    prop_assert!(p.iter().all(|c| (-0.5..=0.5).contains(c)), "{p:?}");
                }
            }
            Err(ReliefError::NoForegroundObject) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }
}
