//! Reading the input picture: decoding within memory limits, honouring its orientation,
//! and making the smaller working copy that segmentation runs on.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbaImage};

use crate::ReliefError;

/// Larger sides are refused before any pixel is decoded, so a "decompression bomb"
/// (a tiny file claiming enormous dimensions) costs nothing.
const MAX_SIDE: u32 = 16_384;
const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// A pixel counts as transparent below this alpha; the fraction of such pixels decides
/// whether the alpha channel carries a real cut-out or is just an opaque channel.
const TRANSPARENT_ALPHA: u8 = 128;
const MIN_TRANSPARENT_FRACTION: f64 = 0.005;

/// The decoded picture plus the reduced copy that the silhouette is found on.
pub(crate) struct Picture {
    /// Full-resolution picture, upright; the texture is cut from it.
    pub full: DynamicImage,
    /// Reduced RGBA copy; segmentation cost no longer depends on the input size.
    pub work: RgbaImage,
    /// Full-resolution pixels per working pixel.
    pub work_scale: f64,
    /// Whether the alpha channel marks the object (a cut-out) rather than being opaque.
    pub has_alpha: bool,
}

/// Decodes `bytes` and prepares a working copy whose longest side is at most `work_side`.
pub(crate) fn load(bytes: &[u8], work_side: u32) -> Result<Picture, ReliefError> {
    let full = decode(bytes)?;
    let (width, height) = (full.width(), full.height());
    if width == 0 || height == 0 {
        return Err(ReliefError::InvalidImage("the picture has no pixels".into()));
    }
    let longest = width.max(height);
    let (work, work_scale) = if longest > work_side {
        let scale = f64::from(longest) / f64::from(work_side);
        let w = ((f64::from(width) / scale).round() as u32).max(1);
        let h = ((f64::from(height) / scale).round() as u32).max(1);
        // Area averaging: each working pixel is the mean of the pixels it covers, which
        // keeps JPEG noise from deciding the silhouette. It is also several times faster
        // than a filtered resize, which dominated large inputs.
        let reduced = full.thumbnail_exact(w, h).to_rgba8();
        (reduced, f64::from(width) / f64::from(w))
    } else {
        (full.to_rgba8(), 1.0)
    };
    let has_alpha = full.color().has_alpha() && has_real_transparency(&work);
    Ok(Picture { full, work, work_scale, has_alpha })
}

fn decode(bytes: &[u8]) -> Result<DynamicImage, ReliefError> {
    if bytes.is_empty() {
        return Err(ReliefError::InvalidImage("the picture is empty".into()));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ReliefError::InvalidImage(e.to_string()))?;
    if reader.format().is_none() {
        return Err(ReliefError::InvalidImage("unrecognised picture format (PNG, JPEG and WebP are supported)".into()));
    }
    let mut reader = reader;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| ReliefError::InvalidImage(e.to_string()))?;
    // A phone photo stored sideways would otherwise give a sideways model.
    let orientation = decoder.orientation().ok();
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| ReliefError::InvalidImage(e.to_string()))?;
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    Ok(image)
}

fn has_real_transparency(work: &RgbaImage) -> bool {
    let total = u64::from(work.width()) * u64::from(work.height());
    let transparent = work.pixels().filter(|p| p.0[3] < TRANSPARENT_ALPHA).count() as u64;
    transparent as f64 >= total as f64 * MIN_TRANSPARENT_FRACTION
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgba};

    fn png_bytes(image: &RgbaImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).expect("encoding a test picture");
        out.into_inner()
    }

    #[test]
    fn rejects_garbage_and_empty_input() {
        assert!(matches!(load(b"", 64), Err(ReliefError::InvalidImage(_))));
        assert!(matches!(load(b"definitely not a picture", 64), Err(ReliefError::InvalidImage(_))));
    }

    #[test]
    fn opaque_alpha_channel_is_not_a_cutout() {
        let opaque = RgbaImage::from_pixel(20, 10, Rgba([10, 20, 30, 255]));
        let picture = load(&png_bytes(&opaque), 64).expect("decodes");
        assert!(!picture.has_alpha);
        let mut cut = opaque.clone();
        for x in 0..20 {
            cut.put_pixel(x, 0, Rgba([0, 0, 0, 0]));
        }
        assert!(load(&png_bytes(&cut), 64).expect("decodes").has_alpha);
    }

    #[test]
    fn large_pictures_get_a_reduced_working_copy() {
        let big = RgbaImage::from_pixel(300, 150, Rgba([1, 2, 3, 255]));
        let picture = load(&png_bytes(&big), 100).expect("decodes");
        assert_eq!(picture.work.dimensions(), (100, 50));
        assert!((picture.work_scale - 3.0).abs() < 1e-9);
        assert_eq!(picture.full.width(), 300);
    }
}
