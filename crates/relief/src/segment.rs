//! Finding the object: which working pixels belong to it. A cut-out's alpha channel
//! says so directly; otherwise the background colour is learnt from the picture's
//! border and the object is whatever differs from it by more than an automatically
//! chosen threshold.

use image::RgbaImage;

use crate::ReliefError;
use crate::cleanup;

/// Which working pixels are part of the object.
#[derive(Debug, Clone)]
pub(crate) struct Mask {
    pub width: usize,
    pub height: usize,
    /// Row-major, `true` for object pixels.
    pub inside: Vec<bool>,
}

impl Mask {
    pub fn area(&self) -> usize {
        self.inside.iter().filter(|&&i| i).count()
    }

    /// Smallest rectangle holding every object pixel: `[x0, y0, x1, y1)`.
    pub fn bounds(&self) -> Option<[usize; 4]> {
        let mut bounds: Option<[usize; 4]> = None;
        // Row by row: only each row's first and last object pixel matter.
        for (y, row) in self.inside.chunks_exact(self.width.max(1)).enumerate() {
            let (Some(first), Some(last)) = (row.iter().position(|&i| i), row.iter().rposition(|&i| i)) else {
                continue;
            };
            bounds = Some(match bounds {
                None => [first, y, last + 1, y + 1],
                Some([x0, y0, x1, _]) => [x0.min(first), y0, x1.max(last + 1), y + 1],
            });
        }
        bounds
    }
}

const ALPHA_THRESHOLD: u8 = 128;
/// The border ring sampled for the background, as a fraction of the shorter side.
const BORDER_FRACTION: usize = 100;
/// Border pixels further than this from the background estimate are taken to be the
/// object touching the frame, not background, when measuring background noise.
const NOISE_SAMPLE_LIMIT: f32 = 48.0;
/// The threshold never goes below this colour distance (of 441 for black to white):
/// JPEG noise and soft shadows on a plain background stay below it.
const MIN_THRESHOLD: f32 = 12.0;
/// ... nor below this multiple of the background's own spread along the border.
const NOISE_MULTIPLIER: f32 = 3.0;
/// An "object" covering this much of the frame means nothing was separated.
const MAX_AREA_FRACTION: f64 = 0.95;
/// When this much of the border is "object", the border was not background. An
/// object may run off one or two sides of the frame (a mug cut off at the bottom, a
/// wide product touching both sides) but not around it.
const MAX_BORDER_FRACTION: f64 = 0.4;
/// Anything smaller than this fraction of the frame (or a few pixels) is not an object.
const MIN_AREA_FRACTION: f64 = 0.0005;
const MIN_AREA_PIXELS: usize = 16;

/// Finds the object in the working picture.
pub(crate) fn find_object(work: &RgbaImage, use_alpha: bool) -> Result<Mask, ReliefError> {
    let mut mask =
        if use_alpha { alpha_mask(work) } else { colour_mask(work).ok_or(ReliefError::NoForegroundObject)? };
    cleanup::clean(&mut mask);
    check_separable(&mask, !use_alpha)?;
    Ok(mask)
}

fn alpha_mask(work: &RgbaImage) -> Mask {
    Mask {
        width: work.width() as usize,
        height: work.height() as usize,
        inside: work.pixels().map(|p| p.0[3] >= ALPHA_THRESHOLD).collect(),
    }
}

/// `None` when nothing in the picture differs from the background beyond its noise.
fn colour_mask(work: &RgbaImage) -> Option<Mask> {
    let (width, height) = (work.width() as usize, work.height() as usize);
    let rgb = |p: &image::Rgba<u8>| [f32::from(p.0[0]), f32::from(p.0[1]), f32::from(p.0[2])];
    let border = border_indices(width, height);
    let raw = work.as_raw();
    let border_pixels: Vec<[f32; 3]> =
        border.iter().map(|&i| [f32::from(raw[4 * i]), f32::from(raw[4 * i + 1]), f32::from(raw[4 * i + 2])]).collect();
    let background = background_colour(&border_pixels)?;
    let distances: Vec<f32> = work.pixels().map(|p| distance(rgb(p), background)).collect();

    let mut noise_samples: Vec<f32> =
        border.iter().map(|&i| distances[i]).filter(|&d| d < NOISE_SAMPLE_LIMIT).collect();
    noise_samples.sort_by(f32::total_cmp);
    let noise = percentile(&noise_samples, 0.9);
    let floor = MIN_THRESHOLD.max(noise * NOISE_MULTIPLIER);

    let mut histogram = vec![0u64; HISTOGRAM_BINS];
    for &d in &distances {
        histogram[bin(d)] += 1;
    }
    let threshold = (otsu(&histogram) as f32).max(floor);
    let inside: Vec<bool> = distances.iter().map(|&d| d >= threshold).collect();
    if !inside.iter().any(|&i| i) {
        return None;
    }
    Some(Mask { width, height, inside })
}

/// Indices of the ring of pixels along the frame, each once, in raster order.
fn border_indices(width: usize, height: usize) -> Vec<usize> {
    let ring = (width.min(height) / BORDER_FRACTION).max(1);
    let mut indices = Vec::new();
    for y in 0..height {
        let row = y * width;
        if y < ring || y + ring >= height || 2 * ring >= width {
            indices.extend(row..row + width);
        } else {
            // Only the ends of the row: the rest is not on the border.
            indices.extend(row..row + ring);
            indices.extend(row + width - ring..row + width);
        }
    }
    indices
}

/// The dominant colour among the border pixels: the most populated coarse colour cell
/// (with its neighbours), refined as the per-channel median of the pixels in it. An
/// object touching the frame or a logo in a corner does not move it.
fn background_colour(border: &[[f32; 3]]) -> Option<[f32; 3]> {
    const LEVELS: usize = 16;
    let cell = |c: f32| ((c as usize) * LEVELS / 256).min(LEVELS - 1);
    let key = |p: [f32; 3]| [cell(p[0]), cell(p[1]), cell(p[2])];
    let mut counts = vec![0u32; LEVELS * LEVELS * LEVELS];
    let flat = |k: [usize; 3]| (k[0] * LEVELS + k[1]) * LEVELS + k[2];
    for &pixel in border {
        counts[flat(key(pixel))] += 1;
    }
    let near = |a: usize, b: usize| a.abs_diff(b) <= 1;
    let mut best: Option<([usize; 3], u32)> = None;
    for r in 0..LEVELS {
        for g in 0..LEVELS {
            for b in 0..LEVELS {
                if counts[flat([r, g, b])] == 0 {
                    continue;
                }
                let mut total = 0;
                for nr in r.saturating_sub(1)..=(r + 1).min(LEVELS - 1) {
                    for ng in g.saturating_sub(1)..=(g + 1).min(LEVELS - 1) {
                        for nb in b.saturating_sub(1)..=(b + 1).min(LEVELS - 1) {
                            total += counts[flat([nr, ng, nb])];
                        }
                    }
                }
                if best.is_none_or(|(_, count)| total > count) {
                    best = Some(([r, g, b], total));
                }
            }
        }
    }
    let (centre, _) = best?;
    let mut channels: [Vec<f32>; 3] = Default::default();
    for &pixel in border {
        let k = key(pixel);
        if (0..3).all(|c| near(k[c], centre[c])) {
            for (c, channel) in channels.iter_mut().enumerate() {
                channel.push(pixel[c]);
            }
        }
    }
    let mut colour = [0.0; 3];
    for (c, channel) in channels.iter_mut().enumerate() {
        channel.sort_by(f32::total_cmp);
        colour[c] = percentile(channel, 0.5);
    }
    Some(colour)
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    let (dr, dg, db) = (a[0] - b[0], a[1] - b[1], a[2] - b[2]);
    (dr * dr + dg * dg + db * db).sqrt()
}

/// One bin per unit of colour distance: the largest possible distance is 441.7.
const HISTOGRAM_BINS: usize = 443;

fn bin(d: f32) -> usize {
    (d as usize).min(HISTOGRAM_BINS - 1)
}

/// Otsu's threshold: the split of the histogram that maximises the variance between the
/// two classes. Pixels at or above the returned bin are foreground. When a whole range
/// of splits is equally good (an empty gap between background and object), the middle
/// of that range is taken, so the threshold sits in the gap rather than on its edge.
fn otsu(histogram: &[u64]) -> usize {
    let total: f64 = histogram.iter().map(|&c| c as f64).sum();
    let weighted: f64 = histogram.iter().enumerate().map(|(i, &c)| i as f64 * c as f64).sum();
    let (mut below, mut below_weighted) = (0.0, 0.0);
    let mut best = (f64::MIN, 1, 1);
    let last = histogram.len().saturating_sub(1);
    for (previous, &count) in histogram[..last].iter().enumerate() {
        let split = previous + 1;
        below += count as f64;
        below_weighted += previous as f64 * count as f64;
        let above = total - below;
        if below == 0.0 || above == 0.0 {
            continue;
        }
        let mean_below = below_weighted / below;
        let mean_above = (weighted - below_weighted) / above;
        let variance = below * above * (mean_below - mean_above).powi(2);
        if variance > best.0 {
            best = (variance, split, split);
        } else if variance == best.0 && best.2 + 1 == split {
            best.2 = split;
        }
    }
    (best.1 + best.2).div_ceil(2)
}

/// The value at fraction `q` of an ascending slice; 0 for an empty one.
fn percentile(sorted: &[f32], q: f64) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Refuses masks that are no object: empty, a few pixels, or (almost) the whole frame.
fn check_separable(mask: &Mask, border_is_background: bool) -> Result<(), ReliefError> {
    let frame = mask.width * mask.height;
    let area = mask.area();
    let min_area = ((frame as f64 * MIN_AREA_FRACTION) as usize).max(MIN_AREA_PIXELS);
    if area < min_area || area as f64 > frame as f64 * MAX_AREA_FRACTION {
        return Err(ReliefError::NoForegroundObject);
    }
    if border_is_background {
        let border = border_indices(mask.width, mask.height);
        let on_border = border.iter().filter(|&&i| mask.inside[i]).count();
        if on_border as f64 > border.len() as f64 * MAX_BORDER_FRACTION {
            return Err(ReliefError::NoForegroundObject);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    fn picture_with_disc(background: [u8; 3], object: [u8; 3]) -> RgbaImage {
        RgbaImage::from_fn(80, 60, |x, y| {
            let (dx, dy) = (x as f32 - 40.0, y as f32 - 30.0);
            let c = if dx * dx + dy * dy < 20.0 * 20.0 { object } else { background };
            Rgba([c[0], c[1], c[2], 255])
        })
    }

    #[test]
    fn finds_a_disc_on_a_plain_background() {
        let mask = find_object(&picture_with_disc([250, 250, 250], [40, 90, 200]), false).expect("a disc is an object");
        let area = mask.area() as f32;
        let expected = std::f32::consts::PI * 400.0;
        assert!((area - expected).abs() < expected * 0.05, "area {area}");
        assert_eq!(mask.bounds(), Some([21, 11, 60, 50]));
    }

    #[test]
    fn a_faint_object_still_counts_when_it_clears_the_noise_floor() {
        let mask = find_object(&picture_with_disc([200, 200, 200], [170, 170, 170]), false)
            .expect("a 52-unit difference is separable");
        assert!(mask.area() > 1000);
    }

    #[test]
    fn uniform_and_nearly_uniform_pictures_have_no_object() {
        let plain = RgbaImage::from_pixel(50, 40, Rgba([128, 30, 60, 255]));
        assert!(matches!(find_object(&plain, false), Err(ReliefError::NoForegroundObject)));
        let faint = picture_with_disc([128, 128, 128], [131, 129, 127]);
        assert!(matches!(find_object(&faint, false), Err(ReliefError::NoForegroundObject)));
    }

    #[test]
    fn noise_and_busy_scenes_have_no_object() {
        // Deterministic pseudo-random noise: no region stands out from the rest.
        let mut state = 0x2545_f491_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        };
        let noise = RgbaImage::from_fn(90, 70, |_, _| Rgba([next(), next(), next(), 255]));
        assert!(matches!(find_object(&noise, false), Err(ReliefError::NoForegroundObject)));
        // Two halves of different colours: whichever is "background", the other
        // covers half the frame's border.
        let halves =
            RgbaImage::from_fn(90, 70, |x, _| if x < 45 { Rgba([200, 0, 0, 255]) } else { Rgba([0, 0, 200, 255]) });
        assert!(matches!(find_object(&halves, false), Err(ReliefError::NoForegroundObject)));
    }

    #[test]
    fn transparent_picture_has_no_object() {
        let clear = RgbaImage::from_pixel(50, 40, Rgba([0, 0, 0, 0]));
        assert!(matches!(find_object(&clear, true), Err(ReliefError::NoForegroundObject)));
    }

    #[test]
    fn otsu_splits_two_modes_in_the_middle_of_the_gap() {
        let mut histogram = vec![0u64; 100];
        histogram[2] = 500;
        histogram[3] = 300;
        histogram[60] = 200;
        let t = otsu(&histogram);
        assert!((30..=33).contains(&t), "threshold {t}");
    }
}
