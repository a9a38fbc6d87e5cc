//! The model's texture: the part of the picture under the object, scaled to the
//! requested size, with the object's colours bled outwards over the background so that
//! texels sampled at the very outline (and filtered across it) never show background.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ExtendedColorType, ImageEncoder, RgbImage};

use crate::ReliefError;
use crate::grid::Grid;
use crate::picture::Picture;
use crate::segment::Mask;

const JPEG_QUALITY: u8 = 90;

/// An encoded texture image.
#[derive(Debug, Clone)]
pub(crate) struct Texture {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// "png" or "jpeg".
    pub format: &'static str,
    pub mime_type: &'static str,
}

/// The rectangle of the full picture that the texture shows, in picture pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Crop {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Crop {
    /// The part of the picture under the grid: only the object and a margin, so the
    /// texture's pixels are spent on the object rather than on background.
    pub fn around(grid: &Grid, picture: &Picture) -> Crop {
        let s = picture.work_scale;
        let first = grid.to_picture([0.0, 0.0]);
        let last = grid.to_picture([(grid.nx - 1) as f64, (grid.ny - 1) as f64]);
        let (w, h) = (picture.full.width(), picture.full.height());
        let clamp = |v: f64, max: u32| v.clamp(0.0, f64::from(max)) as u32;
        let x0 = clamp((first[0] * s).floor(), w - 1);
        let y0 = clamp((first[1] * s).floor(), h - 1);
        let x1 = clamp((last[0] * s).ceil(), w).max(x0 + 1);
        let y1 = clamp((last[1] * s).ceil(), h).max(y0 + 1);
        Crop { x: x0, y: y0, width: x1 - x0, height: y1 - y0 }
    }

    /// Texture coordinate of a working-picture position.
    pub fn uv(&self, picture: &Picture, work: [f64; 2]) -> [f32; 2] {
        let s = picture.work_scale;
        let u = (work[0] * s - f64::from(self.x)) / f64::from(self.width);
        let v = (work[1] * s - f64::from(self.y)) / f64::from(self.height);
        [u.clamp(0.0, 1.0) as f32, v.clamp(0.0, 1.0) as f32]
    }
}

/// The part of the picture under `crop`, scaled so its longest side is at most
/// `texture_size`: the pixels both the texture and the cut-out are made from, so that
/// texel (i, j) of one is pixel (i, j) of the other.
pub(crate) fn sample(picture: &Picture, crop: Crop, texture_size: u32) -> DynamicImage {
    let longest = crop.width.max(crop.height);
    let scale = (f64::from(texture_size) / f64::from(longest)).min(1.0);
    let width = ((f64::from(crop.width) * scale).round() as u32).max(1);
    let height = ((f64::from(crop.height) * scale).round() as u32).max(1);
    let region = picture.full.crop_imm(crop.x, crop.y, crop.width, crop.height);
    if (width, height) == (crop.width, crop.height) {
        region
    } else {
        region.resize_exact(width, height, FilterType::Triangle)
    }
}

/// Bleeds and encodes the texture from the [`sample`]d region: PNG for cut-outs, JPEG
/// otherwise.
pub(crate) fn build(picture: &Picture, mask: &Mask, crop: Crop, region: &DynamicImage) -> Result<Texture, ReliefError> {
    let (width, height) = (region.width(), region.height());
    let mut rgb = region.to_rgb8();

    let known = known_texels(picture, mask, crop, width, height);
    bleed(&mut rgb, &known);

    let mut bytes = Vec::new();
    let (format, mime_type) = if picture.has_alpha {
        PngEncoder::new(Cursor::new(&mut bytes))
            .write_image(rgb.as_raw(), width, height, ExtendedColorType::Rgb8)
            .map_err(|e| ReliefError::Encode(format!("texture PNG: {e}")))?;
        ("png", "image/png")
    } else {
        JpegEncoder::new_with_quality(Cursor::new(&mut bytes), JPEG_QUALITY)
            .write_image(rgb.as_raw(), width, height, ExtendedColorType::Rgb8)
            .map_err(|e| ReliefError::Encode(format!("texture JPEG: {e}")))?;
        ("jpeg", "image/jpeg")
    };
    Ok(Texture { bytes, width, height, format, mime_type })
}

/// Texels whose colour is the object's own: inside the mask and not on its edge, where
/// the picture mixes object and background (anti-aliasing, JPEG ringing).
fn known_texels(picture: &Picture, mask: &Mask, crop: Crop, width: u32, height: u32) -> Vec<bool> {
    let (mw, mh) = (mask.width, mask.height);
    // A 3x3 erosion, done as a horizontal then a vertical pass (each pixel looks at 3
    // values twice rather than 9 once). The frame's edge is not the object's edge: an
    // object cut off by the frame keeps its colours there, so outside counts as inside.
    let mut across = vec![false; mw * mh];
    for (row, out) in mask.inside.chunks_exact(mw).zip(across.chunks_exact_mut(mw)) {
        for x in 0..mw {
            let left = x == 0 || row[x - 1];
            let right = x + 1 == mw || row[x + 1];
            out[x] = left && row[x] && right;
        }
    }
    let mut interior = vec![false; mw * mh];
    for y in 0..mh {
        for k in y * mw..(y + 1) * mw {
            let up = y == 0 || across[k - mw];
            let down = y + 1 == mh || across[k + mw];
            interior[k] = up && across[k] && down;
        }
    }
    let solid = if interior.iter().any(|&k| k) {
        &interior
    } else {
        // Too thin to erode: the plain mask is the best there is.
        &mask.inside
    };
    let (sx, sy) = (f64::from(crop.width) / f64::from(width), f64::from(crop.height) / f64::from(height));
    let mut known = Vec::with_capacity((width * height) as usize);
    for ty in 0..height {
        let py = f64::from(crop.y) + (f64::from(ty) + 0.5) * sy;
        let my = ((py / picture.work_scale) as usize).min(mh - 1);
        for tx in 0..width {
            let px = f64::from(crop.x) + (f64::from(tx) + 0.5) * sx;
            let mx = ((px / picture.work_scale) as usize).min(mw - 1);
            known.push(solid[my * mw + mx]);
        }
    }
    known
}

/// Fills every unknown texel from the known ones nearby (push-pull): known colours are
/// averaged up a pyramid of half-size levels, then each level's gaps are filled from
/// the level above. Near the object the fill is the object's edge colour; far away it
/// fades to broader averages.
fn bleed(image: &mut RgbImage, known: &[bool]) {
    if !known.iter().any(|&k| k) {
        return;
    }
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut levels: Vec<Level> = vec![Level {
        width: w,
        height: h,
        colour: image.pixels().zip(known).map(|(p, &k)| if k { p.0.map(f32::from) } else { [0.0; 3] }).collect(),
        weight: known.iter().map(|&k| f32::from(u8::from(k))).collect(),
    }];
    while let Some(last) = levels.last() {
        if last.width == 1 && last.height == 1 {
            break;
        }
        let next = last.half();
        levels.push(next);
    }
    // Pull: from the top, every level's colour becomes its own average where it has
    // one, blended with the level above by how much of it was known.
    let mut filled: Vec<[f32; 3]> = Vec::new();
    for level in levels.iter().rev() {
        let mut this = Vec::with_capacity(level.width * level.height);
        for y in 0..level.height {
            for x in 0..level.width {
                let k = y * level.width + x;
                let a = level.weight[k];
                let own = if a > 0.0 { level.colour[k].map(|c| c / a) } else { [0.0; 3] };
                let above = if filled.is_empty() { own } else { filled[(y / 2) * level.width.div_ceil(2) + x / 2] };
                this.push([0, 1, 2].map(|c| a * own[c] + (1.0 - a) * above[c]));
            }
        }
        filled = this;
    }
    for ((pixel, colour), &k) in image.pixels_mut().zip(&filled).zip(known) {
        if !k {
            pixel.0 = colour.map(|c| c.round().clamp(0.0, 255.0) as u8);
        }
    }
}

/// One pyramid level: premultiplied colour sums and known fractions, both averaged.
#[derive(Clone)]
struct Level {
    width: usize,
    height: usize,
    colour: Vec<[f32; 3]>,
    weight: Vec<f32>,
}

impl Level {
    fn half(&self) -> Level {
        let (w, h) = (self.width.div_ceil(2), self.height.div_ceil(2));
        let mut colour = vec![[0.0f32; 3]; w * h];
        let mut weight = vec![0.0f32; w * h];
        for y in 0..self.height {
            for x in 0..self.width {
                let from = y * self.width + x;
                let to = (y / 2) * w + x / 2;
                for (sum, value) in colour[to].iter_mut().zip(self.colour[from]) {
                    *sum += value / 4.0;
                }
                weight[to] += self.weight[from] / 4.0;
            }
        }
        Level { width: w, height: h, colour, weight }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn bleeding_spreads_object_colours_over_the_background() {
        let mut image = RgbImage::from_fn(16, 16, |x, _| if x < 8 { Rgb([200, 40, 40]) } else { Rgb([255, 255, 255]) });
        let known: Vec<bool> = (0..256).map(|k| k % 16 < 8).collect();
        bleed(&mut image, &known);
        for (x, y, p) in image.enumerate_pixels() {
            if x < 8 {
                assert_eq!(p.0, [200, 40, 40], "known texel changed at {x},{y}");
            } else {
                assert_eq!(p.0, [200, 40, 40], "background kept at {x},{y}");
            }
        }
    }

    #[test]
    fn bleeding_nothing_known_leaves_the_image() {
        let mut image = RgbImage::from_pixel(5, 3, Rgb([1, 2, 3]));
        bleed(&mut image, &[false; 15]);
        assert!(image.pixels().all(|p| p.0 == [1, 2, 3]));
    }
}
