//! Texture images: their header read without decoding, decoding within limits,
//! re-encoding to PNG or JPEG, scaling down, and bilinear sampling (for baking vertex
//! colours and for previews).

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, ImageReader, RgbaImage};

use crate::error::FormatError;
use crate::limits::Limits;
use crate::model::{ImageFormat, Sampler, Texture, Wrap};

/// The format from the bytes themselves, falling back on the declared MIME type. Files
/// whose bytes match no format we decode are refused.
pub(crate) fn sniff(bytes: &[u8], declared: Option<&str>) -> Result<ImageFormat, FormatError> {
    let guessed = image::guess_format(bytes).ok();
    let format = match guessed {
        Some(image::ImageFormat::Png) => ImageFormat::Png,
        Some(image::ImageFormat::Jpeg) => ImageFormat::Jpeg,
        Some(image::ImageFormat::WebP) => ImageFormat::Webp,
        _ => {
            return Err(FormatError::unsupported(format!(
                "a texture is not PNG, JPEG or WebP (declared {})",
                declared.unwrap_or("without a type")
            )));
        }
    };
    Ok(format)
}

fn library_format(format: ImageFormat) -> image::ImageFormat {
    match format {
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Webp => image::ImageFormat::WebP,
    }
}

/// Width and height from the image header only, checked against `limits`.
pub(crate) fn dimensions(bytes: &[u8], format: ImageFormat, limits: &Limits) -> Result<(u32, u32), FormatError> {
    let mut reader = ImageReader::new(Cursor::new(bytes));
    reader.set_format(library_format(format));
    let (width, height) =
        reader.into_dimensions().map_err(|e| FormatError::unreadable(format!("a texture's header is invalid: {e}")))?;
    if width == 0 || height == 0 {
        return Err(FormatError::unreadable("a texture has no pixels"));
    }
    Limits::check("texture side", u64::from(width.max(height)), u64::from(limits.max_texture_side))?;
    Limits::check("texture pixels", u64::from(width) * u64::from(height), limits.max_texture_pixels)?;
    Ok((width, height))
}

/// Decodes a texture the reader accepted. The decoder may not exceed the dimensions the
/// header announced, nor allocate more than a few copies of that image.
pub(crate) fn decode(texture: &Texture) -> Result<RgbaImage, FormatError> {
    let mut reader = ImageReader::new(Cursor::new(&texture.bytes[..]));
    reader.set_format(library_format(texture.format));
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(texture.width);
    limits.max_image_height = Some(texture.height);
    // 16-bit RGBA plus the 8-bit copy: the worst a PNG/JPEG/WebP decode holds at once.
    limits.max_alloc = Some(u64::from(texture.width) * u64::from(texture.height) * 12 + 65536);
    reader.limits(limits);
    let decoder =
        reader.into_decoder().map_err(|e| FormatError::unreadable(format!("a texture cannot be decoded: {e}")))?;
    let image = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| FormatError::unreadable(format!("a texture cannot be decoded: {e}")))?;
    if image.width() != texture.width || image.height() != texture.height {
        return Err(FormatError::unreadable("a texture's size differs from its header"));
    }
    Ok(image.into_rgba8())
}

/// Whether any pixel is less than fully opaque.
pub(crate) fn has_alpha(image: &RgbaImage) -> bool {
    image.pixels().any(|p| p.0[3] != 255)
}

/// Scales `image` down so its longest side is at most `side` (Lanczos-free triangle
/// filter: fast and deterministic). Smaller images are returned as they are.
pub(crate) fn fit(image: RgbaImage, side: u32) -> RgbaImage {
    let longest = image.width().max(image.height());
    if longest <= side || side == 0 {
        return image;
    }
    let scale = f64::from(side) / f64::from(longest);
    let width = ((f64::from(image.width()) * scale).round() as u32).clamp(1, side);
    let height = ((f64::from(image.height()) * scale).round() as u32).clamp(1, side);
    image::imageops::resize(&image, width, height, image::imageops::FilterType::Triangle)
}

/// PNG bytes: RGB when every pixel is opaque, RGBA otherwise.
pub(crate) fn encode_png(image: &RgbaImage) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    let encoder = PngEncoder::new(&mut out);
    if has_alpha(image) {
        encoder
            .write_image(image.as_raw(), image.width(), image.height(), ExtendedColorType::Rgba8)
            .map_err(FormatError::encode)?;
    } else {
        let rgb = rgb_bytes(image);
        encoder
            .write_image(&rgb, image.width(), image.height(), ExtendedColorType::Rgb8)
            .map_err(FormatError::encode)?;
    }
    Ok(out)
}

/// JPEG bytes at `quality` (1–100); alpha is dropped.
pub(crate) fn encode_jpeg(image: &RgbaImage, quality: u8) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    let rgb = rgb_bytes(image);
    JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .write_image(&rgb, image.width(), image.height(), ExtendedColorType::Rgb8)
        .map_err(FormatError::encode)?;
    Ok(out)
}

fn rgb_bytes(image: &RgbaImage) -> Vec<u8> {
    image.pixels().flat_map(|p| [p.0[0], p.0[1], p.0[2]]).collect()
}

/// The texel colour at `uv` (glTF convention: v = 0 is the top row), bilinearly
/// interpolated between texel centres, wrapping as the sampler says. Channels are the
/// stored (sRGB-encoded) values in 0..=1; interpolating encoded values is what GPUs do
/// without sRGB-aware filtering, and the difference is invisible at texel scale.
pub(crate) fn sample_bilinear(image: &RgbaImage, sampler: &Sampler, uv: [f32; 2]) -> [f32; 4] {
    let (width, height) = (image.width() as i64, image.height() as i64);
    // Brought into one period of the wrap first (2 × size covers repeat and mirror), so
    // that a UV of 1e30 cannot overflow the texel arithmetic below.
    let reduce = |v: f64, size: i64, mode: Wrap| match mode {
        Wrap::ClampToEdge => v.clamp(-1.0, size as f64),
        Wrap::Repeat | Wrap::MirroredRepeat => v.rem_euclid(2.0 * size as f64),
    };
    let x = reduce(f64::from(uv[0]) * width as f64 - 0.5, width, sampler.wrap_s);
    let y = reduce(f64::from(uv[1]) * height as f64 - 0.5, height, sampler.wrap_t);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = ((x - x0) as f32, (y - y0) as f32);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let texel = |xi: i64, yi: i64| -> [f32; 4] {
        let xi = wrap(xi, width, sampler.wrap_s);
        let yi = wrap(yi, height, sampler.wrap_t);
        image.get_pixel(xi as u32, yi as u32).0.map(|c| f32::from(c) / 255.0)
    };
    let (a, b) = (texel(x0, y0), texel(x0 + 1, y0));
    let (c, d) = (texel(x0, y0 + 1), texel(x0 + 1, y0 + 1));
    let mut out = [0.0; 4];
    for k in 0..4 {
        let top = a[k] + (b[k] - a[k]) * fx;
        let bottom = c[k] + (d[k] - c[k]) * fx;
        out[k] = top + (bottom - top) * fy;
    }
    out
}

fn wrap(index: i64, size: i64, mode: Wrap) -> i64 {
    match mode {
        Wrap::ClampToEdge => index.clamp(0, size - 1),
        Wrap::Repeat => index.rem_euclid(size),
        Wrap::MirroredRepeat => {
            let period = index.rem_euclid(2 * size);
            if period < size { period } else { 2 * size - 1 - period }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    fn checker() -> RgbaImage {
        RgbaImage::from_fn(2, 2, |x, y| if (x + y) % 2 == 0 { Rgba([255, 0, 0, 255]) } else { Rgba([0, 0, 255, 255]) })
    }

    fn texture(bytes: Vec<u8>, limits: &Limits) -> Result<Texture, FormatError> {
        let format = sniff(&bytes, None)?;
        let (width, height) = dimensions(&bytes, format, limits)?;
        Ok(Texture { bytes, format, width, height, sampler: Sampler::default() })
    }

    #[test]
    fn png_round_trips_and_drops_alpha_only_when_opaque() {
        let image = checker();
        let png = encode_png(&image).expect("png");
        let texture = texture(png, &Limits::default()).expect("header");
        assert_eq!(texture.format, ImageFormat::Png);
        assert_eq!(decode(&texture).expect("decode"), image);

        let mut translucent = checker();
        translucent.put_pixel(0, 0, Rgba([1, 2, 3, 4]));
        let png = encode_png(&translucent).expect("png");
        let texture = super::tests::texture(png, &Limits::default()).expect("header");
        assert_eq!(decode(&texture).expect("decode"), translucent);
    }

    #[test]
    fn jpeg_is_recognised_by_its_bytes() {
        let jpeg = encode_jpeg(&checker(), 85).expect("jpeg");
        let texture = texture(jpeg, &Limits::default()).expect("header");
        assert_eq!(texture.format, ImageFormat::Jpeg);
        assert_eq!((texture.width, texture.height), (2, 2));
        assert!(decode(&texture).is_ok());
    }

    #[test]
    fn oversized_headers_are_refused_before_decoding() {
        let png = encode_png(&RgbaImage::new(64, 16)).expect("png");
        let limits = Limits { max_texture_side: 32, ..Limits::default() };
        assert!(matches!(texture(png.clone(), &limits), Err(FormatError::TooLarge { what: "texture side", .. })));
        let limits = Limits { max_texture_pixels: 100, ..Limits::default() };
        assert!(matches!(texture(png, &limits), Err(FormatError::TooLarge { what: "texture pixels", .. })));
        assert!(matches!(sniff(b"GIF89a", Some("image/gif")), Err(FormatError::Unsupported(_))));
    }

    #[test]
    fn a_header_that_lies_about_its_size_is_refused() {
        let png = encode_png(&checker()).expect("png");
        let mut texture = texture(png, &Limits::default()).expect("header");
        texture.width = 1;
        assert!(decode(&texture).is_err());
    }

    #[test]
    fn bilinear_sampling_hits_texel_centres_and_blends_between() {
        let image = checker();
        let clamp = Sampler { wrap_s: Wrap::ClampToEdge, wrap_t: Wrap::ClampToEdge, ..Sampler::default() };
        assert_eq!(sample_bilinear(&image, &clamp, [0.25, 0.25]), [1.0, 0.0, 0.0, 1.0]);
        assert_eq!(sample_bilinear(&image, &clamp, [0.75, 0.25]), [0.0, 0.0, 1.0, 1.0]);
        assert_eq!(sample_bilinear(&image, &clamp, [0.5, 0.25]), [0.5, 0.0, 0.5, 1.0]);
        // Clamped at the edge, wrapped with Repeat.
        assert_eq!(sample_bilinear(&image, &clamp, [0.0, 0.25]), [1.0, 0.0, 0.0, 1.0]);
        let repeat = Sampler::default();
        assert_eq!(sample_bilinear(&image, &repeat, [0.0, 0.25]), [0.5, 0.0, 0.5, 1.0]);
        assert_eq!(sample_bilinear(&image, &repeat, [1.25, 0.25]), [1.0, 0.0, 0.0, 1.0]);
        assert_eq!(sample_bilinear(&image, &repeat, [-0.75, 0.25]), [1.0, 0.0, 0.0, 1.0]);
        // Absurd coordinates are sampled somewhere, without overflowing.
        for sampler in [clamp, repeat] {
            let far = sample_bilinear(&image, &sampler, [1e30, -3e38]);
            assert!(far.iter().all(|c| (0.0..=1.0).contains(c)));
        }
    }

    #[test]
    fn mirrored_wrap_reflects() {
        assert_eq!(wrap(-1, 4, Wrap::MirroredRepeat), 0);
        assert_eq!(wrap(4, 4, Wrap::MirroredRepeat), 3);
        assert_eq!(wrap(8, 4, Wrap::MirroredRepeat), 0);
        assert_eq!(wrap(-1, 4, Wrap::ClampToEdge), 0);
        assert_eq!(wrap(-1, 4, Wrap::Repeat), 3);
    }

    #[test]
    fn fit_keeps_small_images_and_shrinks_large_ones() {
        let image = RgbaImage::new(400, 100);
        assert_eq!(fit(image.clone(), 1000).dimensions(), (400, 100));
        assert_eq!(fit(image, 200).dimensions(), (200, 50));
    }
}
