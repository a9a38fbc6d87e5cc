//! The two pictures seed 004's clients expect beside the model, both covering exactly
//! the texture's rectangle at the texture's size, so that pixel (i, j) of either is
//! texel (i, j) of the model's texture:
//!
//! - the cut-out (`pixel_images.png`): the object's colours with the mask as alpha;
//! - the position map (`xyz_images.png`): for each pixel on the object's front surface,
//!   that point's (x, y, z) in the model's own coordinates, 16 bits per channel.
//!
//! The position map is drawn in texture space: every front triangle is rasterised at
//! its texture coordinates and its vertices' positions interpolated across it. The
//! texture coordinates *are* picture coordinates, so this is the front surface as the
//! camera saw it, with no projection to choose.

use image::codecs::png::PngEncoder;
use image::{DynamicImage, ImageBuffer, ImageEncoder, Rgba, RgbaImage};

use crate::ReliefError;
use crate::mesh::Mesh;
use crate::picture::Picture;
use crate::segment::Mask;
use crate::texture::Crop;

/// The full range of a 16-bit channel: (x, y, z) in [-0.5, 0.5] maps onto 0..=65535.
const FULL: f64 = 65_535.0;

/// A triangle's texel centres count as inside it down to this barycentric weight, so
/// centres exactly on a shared edge are drawn by both triangles rather than by neither
/// (both give the same position there).
const EDGE_TOLERANCE: f64 = -1e-9;

/// The cut-out: the [`sample`](crate::texture::sample)d region's colours, with the
/// picture's own alpha for cut-out inputs and the mask's coverage otherwise. Colours
/// under full transparency are cleared: they are background, and zeros compress.
pub(crate) fn cutout(
    picture: &Picture,
    mask: &Mask,
    crop: Crop,
    region: &DynamicImage,
) -> Result<Vec<u8>, ReliefError> {
    let mut image: RgbaImage = region.to_rgba8();
    if !picture.has_alpha {
        let (width, height) = image.dimensions();
        let (sx, sy) = (f64::from(crop.width) / f64::from(width), f64::from(crop.height) / f64::from(height));
        for (tx, ty, pixel) in image.enumerate_pixels_mut() {
            // The texel's centre in full-picture pixels, then in mask pixels, where
            // mask pixel k's centre is at k + 0.5.
            let px = f64::from(crop.x) + (f64::from(tx) + 0.5) * sx;
            let py = f64::from(crop.y) + (f64::from(ty) + 0.5) * sy;
            let coverage = coverage(mask, px / picture.work_scale - 0.5, py / picture.work_scale - 0.5);
            // Adding a half and truncating rounds these non-negative values, without the
            // libm call `round` is on x86-64 (it was 5 % of a whole reconstruction).
            pixel.0[3] = (coverage * 255.0 + 0.5) as u8;
        }
    }
    for pixel in image.pixels_mut() {
        if pixel.0[3] == 0 {
            pixel.0 = [0; 4];
        }
    }
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(image.as_raw(), image.width(), image.height(), image::ExtendedColorType::Rgba8)
        .map_err(|e| ReliefError::Encode(format!("cut-out PNG: {e}")))?;
    Ok(bytes)
}

/// The mask's coverage at a point in mask-pixel coordinates, bilinearly interpolated
/// between the four nearest pixel centres (clamped at the mask's edges).
fn coverage(mask: &Mask, x: f64, y: f64) -> f64 {
    let clamp = |v: f64, len: usize| v.clamp(0.0, (len - 1) as f64);
    let (x, y) = (clamp(x, mask.width), clamp(y, mask.height));
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(mask.width - 1), (y0 + 1).min(mask.height - 1));
    let (fx, fy) = (x - x0 as f64, y - y0 as f64);
    let at = |x: usize, y: usize| f64::from(u8::from(mask.inside[y * mask.width + x]));
    let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
    let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// The position map of the mesh's front sheet at `width` x `height`, as a 16-bit RGBA
/// PNG: (R, G, B) = (x, y, z) + 0.5 scaled to 0..=65535, A = 65535 on the surface and
/// everything 0 elsewhere.
pub(crate) fn position_map(mesh: &Mesh, width: u32, height: u32) -> Result<Vec<u8>, ReliefError> {
    let image = rasterise_front(mesh, width, height);
    let mut bytes = Vec::new();
    image
        .write_with_encoder(PngEncoder::new(&mut bytes))
        .map_err(|e| ReliefError::Encode(format!("position map PNG: {e}")))?;
    Ok(bytes)
}

fn rasterise_front(mesh: &Mesh, width: u32, height: u32) -> ImageBuffer<Rgba<u16>, Vec<u16>> {
    let mut image = ImageBuffer::<Rgba<u16>, Vec<u16>>::new(width, height);
    let (w, h) = (f64::from(width), f64::from(height));
    for triangle in mesh.indices[..3 * mesh.front_triangles].chunks_exact(3) {
        let corners = [0, 1, 2].map(|k| triangle[k] as usize);
        // Texel space: texel (i, j) covers [i, i + 1) x [j, j + 1).
        let at = corners.map(|v| [f64::from(mesh.uvs[v][0]) * w, f64::from(mesh.uvs[v][1]) * h]);
        let positions = corners.map(|v| mesh.positions[v].map(f64::from));
        let area = edge(at[0], at[1], at[2]);
        // Squashed flat in texture space (texture coordinates clamped at the picture's
        // edge): it covers no texel centre.
        if area.abs() < 1e-12 {
            continue;
        }
        let min = |axis: usize| at.iter().map(|p| p[axis]).fold(f64::INFINITY, f64::min);
        let max = |axis: usize| at.iter().map(|p| p[axis]).fold(f64::NEG_INFINITY, f64::max);
        // Texel centres i + 0.5 inside [min, max].
        let first = |lo: f64| (lo - 0.5).ceil().max(0.0) as u32;
        let last = |hi: f64, size: u32| ((hi - 0.5).floor().min(f64::from(size) - 1.0)).max(-1.0) as i64;
        let (x_last, y_last) = (last(max(0), width), last(max(1), height));
        for y in first(min(1))..u32::try_from(y_last + 1).unwrap_or(0) {
            for x in first(min(0))..u32::try_from(x_last + 1).unwrap_or(0) {
                let centre = [f64::from(x) + 0.5, f64::from(y) + 0.5];
                let w0 = edge(at[1], at[2], centre) / area;
                let w1 = edge(at[2], at[0], centre) / area;
                let w2 = 1.0 - w0 - w1;
                if w0 < EDGE_TOLERANCE || w1 < EDGE_TOLERANCE || w2 < EDGE_TOLERANCE {
                    continue;
                }
                let point = [0, 1, 2].map(|a| w0 * positions[0][a] + w1 * positions[1][a] + w2 * positions[2][a]);
                // Rounded as the cut-out's alpha is; `as` saturates at both ends.
                let channel = |c: f64| ((c + 0.5) * FULL + 0.5) as u16;
                image.put_pixel(x, y, Rgba([channel(point[0]), channel(point[1]), channel(point[2]), u16::MAX]));
            }
        }
    }
    image
}

/// Twice the signed area of the triangle (a, b, c).
fn edge(a: [f64; 2], b: [f64; 2], c: [f64; 2]) -> f64 {
    (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A square of two front triangles over the whole texture, x and y following u and v,
    /// z rising with u.
    fn square() -> Mesh {
        Mesh {
            positions: vec![[-0.5, 0.5, -0.5], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [-0.5, -0.5, -0.5]],
            normals: vec![[0.0, 0.0, 1.0]; 4],
            uvs: vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
            indices: vec![0, 2, 1, 0, 3, 2, 0, 1, 2],
            front_triangles: 2,
        }
    }

    #[test]
    fn a_covering_square_fills_every_texel_with_its_interpolated_position() {
        let image = rasterise_front(&square(), 8, 4);
        for (x, y, pixel) in image.enumerate_pixels() {
            assert_eq!(pixel.0[3], u16::MAX, "texel {x},{y} not drawn");
            let decoded = [0, 1, 2].map(|k| f64::from(pixel.0[k]) / FULL - 0.5);
            let expected = [(f64::from(x) + 0.5) / 8.0 - 0.5, 0.5 - (f64::from(y) + 0.5) / 4.0];
            assert!((decoded[0] - expected[0]).abs() < 1e-4, "{x},{y}: {decoded:?}");
            assert!((decoded[1] - expected[1]).abs() < 1e-4, "{x},{y}: {decoded:?}");
            assert!((decoded[2] - expected[0]).abs() < 1e-4, "{x},{y}: {decoded:?}");
        }
    }

    #[test]
    fn texels_off_the_front_sheet_stay_zero() {
        let mut mesh = square();
        // Only the upper-right half: below the diagonal stays empty.
        mesh.front_triangles = 1;
        let image = rasterise_front(&mesh, 10, 10);
        for (x, y, pixel) in image.enumerate_pixels() {
            if x + 1 < y {
                assert_eq!(pixel.0, [0; 4], "texel {x},{y} drawn");
            } else if x > y + 1 {
                assert_eq!(pixel.0[3], u16::MAX, "texel {x},{y} not drawn");
            }
        }
    }

    /// A picture 3x the working copy's size, a disc on grey, with the crop at (30, 15).
    fn disc_picture(cutout_input: bool) -> (Picture, Mask, Crop) {
        let inside = |x: f64, y: f64| (x - 60.0).powi(2) + (y - 45.0).powi(2) < 30.0f64.powi(2);
        let full = RgbaImage::from_fn(120, 90, |x, y| {
            let (x, y) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
            if inside(x, y) {
                Rgba([200, 30, 30, 255])
            } else {
                Rgba([128, 128, 128, if cutout_input { 0 } else { 255 }])
            }
        });
        let work = image::imageops::thumbnail(&full, 40, 30);
        let mask = Mask {
            width: 40,
            height: 30,
            inside: (0..30)
                .flat_map(|y| (0..40).map(move |x| (x, y)))
                .map(|(x, y)| inside(3.0 * f64::from(x) + 1.5, 3.0 * f64::from(y) + 1.5))
                .collect(),
        };
        let picture = Picture { full: DynamicImage::ImageRgba8(full), work, work_scale: 3.0, has_alpha: cutout_input };
        (picture, mask, Crop { x: 30, y: 15, width: 60, height: 60 })
    }

    fn decoded_cutout(picture: &Picture, mask: &Mask, crop: Crop, side: u32) -> RgbaImage {
        let region = crate::texture::sample(picture, crop, side);
        let png = cutout(picture, mask, crop, &region).expect("encodes");
        image::load_from_memory(&png).expect("decodes").to_rgba8()
    }

    #[test]
    fn the_cutouts_alpha_is_the_masks_coverage() {
        let (picture, mask, crop) = disc_picture(false);
        for side in [60, 30] {
            let image = decoded_cutout(&picture, &mask, crop, side);
            assert_eq!(image.dimensions(), (side, side));
            let texel = 60.0 / f64::from(side);
            for (tx, ty, pixel) in image.enumerate_pixels() {
                // The texel's centre in mask pixels.
                let mx = (30.0 + (f64::from(tx) + 0.5) * texel) / 3.0;
                let my = (15.0 + (f64::from(ty) + 0.5) * texel) / 3.0;
                let at = |dx: f64, dy: f64| {
                    let (x, y) = ((mx + dx).floor() as usize, (my + dy).floor() as usize);
                    mask.inside[y.min(29) * 40 + x.min(39)]
                };
                // Inside with its neighbours: opaque. Outside with them: transparent.
                let around = [(-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0), (0.0, 0.0)].map(|(x, y)| at(x, y));
                if around.iter().all(|&i| i) {
                    assert_eq!(pixel.0, [200, 30, 30, 255], "{side}: texel {tx},{ty}");
                } else if around.iter().all(|&i| !i) {
                    assert_eq!(pixel.0, [0; 4], "{side}: texel {tx},{ty}");
                }
            }
            let opaque = image.pixels().filter(|p| p.0[3] >= 128).count() as f64;
            let disc = std::f64::consts::PI * (30.0 / texel).powi(2);
            assert!((opaque - disc).abs() < 0.05 * disc, "{side}: {opaque} opaque texels for a disc of {disc}");
        }
    }

    #[test]
    fn a_cutout_input_keeps_its_own_alpha() {
        let (picture, mask, crop) = disc_picture(true);
        let image = decoded_cutout(&picture, &mask, crop, 60);
        let full = picture.full.to_rgba8();
        for (tx, ty, pixel) in image.enumerate_pixels() {
            let source = full.get_pixel(30 + tx, 15 + ty);
            let expected = if source.0[3] == 0 { [0; 4] } else { source.0 };
            assert_eq!(pixel.0, expected, "texel {tx},{ty}");
        }
    }

    #[test]
    fn coverage_is_bilinear_between_pixel_centres() {
        let mask = Mask { width: 2, height: 1, inside: vec![false, true] };
        assert_eq!(coverage(&mask, 0.0, 0.0), 0.0);
        assert_eq!(coverage(&mask, 1.0, 0.0), 1.0);
        assert!((coverage(&mask, 0.25, 0.0) - 0.25).abs() < 1e-12);
        assert_eq!(coverage(&mask, -3.0, 5.0), 0.0, "clamped at the edges");
        assert_eq!(coverage(&mask, 9.0, -1.0), 1.0);
    }
}
