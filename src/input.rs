//! Validation of what clients send: pictures (format from the bytes, size, pixel count
//! before decoding, integrity, scaling down) and prompts. Pure functions, so every face
//! refuses the same things with the same codes.

use std::io::Cursor;

use bytes::Bytes;
use image::{DynamicImage, ImageFormat, ImageReader, Limits, imageops::FilterType};

use crate::{
    config::{ImageFormatName, UploadConfig},
    error::{ApiError, Code},
};

/// A picture that passed every check, ready to store.
#[derive(Debug, Clone)]
pub struct ValidImage {
    /// The bytes to store: the original, or the scaled-down re-encoding.
    pub bytes: Bytes,
    pub format: ImageFormatName,
    pub width: u32,
    pub height: u32,
    /// Size before scaling down.
    pub original_width: u32,
    pub original_height: u32,
}

impl ValidImage {
    pub fn content_type(&self) -> &'static str {
        content_type(self.format)
    }

    pub fn extension(&self) -> &'static str {
        match self.format {
            ImageFormatName::Jpeg => "jpg",
            ImageFormatName::Png => "png",
            ImageFormatName::Webp => "webp",
        }
    }
}

pub fn content_type(format: ImageFormatName) -> &'static str {
    match format {
        ImageFormatName::Jpeg => "image/jpeg",
        ImageFormatName::Png => "image/png",
        ImageFormatName::Webp => "image/webp",
    }
}

pub fn format_name(format: ImageFormatName) -> &'static str {
    match format {
        ImageFormatName::Jpeg => "jpeg",
        ImageFormatName::Png => "png",
        ImageFormatName::Webp => "webp",
    }
}

fn to_image_format(format: ImageFormatName) -> ImageFormat {
    match format {
        ImageFormatName::Jpeg => ImageFormat::Jpeg,
        ImageFormatName::Png => ImageFormat::Png,
        ImageFormatName::Webp => ImageFormat::WebP,
    }
}

/// The refusal for a file over the byte limit, with the limit in words.
pub fn too_large(max_bytes: u64) -> ApiError {
    ApiError::with_message(Code::FileTooLarge, format!("File too large: the limit is {}.", human_size(max_bytes)))
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1024 * 1024 && bytes.is_multiple_of(1024 * 1024) {
        format!("{} MB", bytes / (1024 * 1024))
    } else if bytes >= 1024 * 1024 {
        format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
    } else {
        format!("{} KB", bytes.div_ceil(1024))
    }
}

/// Detects the format from the first bytes; `None` for anything not accepted.
pub fn sniff(bytes: &[u8], accepted: &[ImageFormatName]) -> Option<ImageFormatName> {
    let format = match image::guess_format(bytes).ok()? {
        ImageFormat::Jpeg => ImageFormatName::Jpeg,
        ImageFormat::Png => ImageFormatName::Png,
        ImageFormat::WebP => ImageFormatName::Webp,
        _ => return None,
    };
    accepted.contains(&format).then_some(format)
}

/// Checks a picture and scales it down when its longest side is over the limit.
/// CPU-bound: call it from a blocking thread.
pub fn validate_image(raw: Bytes, cfg: &UploadConfig) -> Result<ValidImage, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::new(Code::EmptyFile));
    }
    if raw.len() as u64 > cfg.max_bytes {
        return Err(too_large(cfg.max_bytes));
    }
    let format = sniff(&raw, &cfg.formats).ok_or_else(|| {
        let names: Vec<_> = cfg.formats.iter().map(|f| format_name(*f).to_uppercase()).collect();
        ApiError::with_message(
            Code::UnsupportedImageFormat,
            format!("Unsupported image format: send a {} picture.", names.join(", ")),
        )
    })?;
    // The header alone tells the size; a decompression bomb is refused here, before a
    // single pixel is allocated.
    let (width, height) = ImageReader::with_format(Cursor::new(&raw[..]), to_image_format(format))
        .into_dimensions()
        .map_err(|_| ApiError::new(Code::CorruptImage))?;
    let pixels = u64::from(width) * u64::from(height);
    if width == 0 || height == 0 {
        return Err(ApiError::new(Code::CorruptImage));
    }
    if pixels > cfg.max_pixels {
        return Err(ApiError::with_message(
            Code::ImageTooManyPixels,
            format!(
                "The picture is {width}×{height} pixels; at most {:.0} megapixels are accepted.",
                cfg.max_pixels as f64 / 1e6
            ),
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(&raw[..]), to_image_format(format));
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(pixels.saturating_mul(16).max(1 << 20));
    reader.limits(limits);
    let decoded = reader.decode().map_err(|_| ApiError::new(Code::CorruptImage))?;

    let longest = width.max(height);
    if longest <= cfg.max_side {
        return Ok(ValidImage { bytes: raw, format, width, height, original_width: width, original_height: height });
    }
    let scaled = decoded.resize(cfg.max_side, cfg.max_side, FilterType::Triangle);
    let (bytes, format) = encode(&scaled)?;
    Ok(ValidImage {
        bytes,
        format,
        width: scaled.width(),
        height: scaled.height(),
        original_width: width,
        original_height: height,
    })
}

/// Re-encodes a scaled picture: PNG when it has transparency, JPEG otherwise.
fn encode(image: &DynamicImage) -> Result<(Bytes, ImageFormatName), ApiError> {
    let mut out = Vec::new();
    let format = if image.color().has_alpha() {
        image.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).map_err(ApiError::internal)?;
        ImageFormatName::Png
    } else {
        let rgb = image.to_rgb8();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92);
        encoder.encode_image(&rgb).map_err(ApiError::internal)?;
        ImageFormatName::Jpeg
    };
    Ok((Bytes::from(out), format))
}

/// Checks a prompt: not empty, not too long, no control characters but ordinary
/// whitespace (tab, line breaks). Returns it trimmed.
pub fn validate_prompt(text: &str, max_chars: usize) -> Result<String, ApiError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ApiError::new(Code::PromptEmpty));
    }
    let count = trimmed.chars().count();
    if count > max_chars {
        return Err(ApiError::with_message(
            Code::PromptTooLong,
            format!("The prompt is {count} characters long; at most {max_chars} are accepted."),
        ));
    }
    if trimmed.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(ApiError::new(Code::PromptInvalidCharacters));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn png(width: u32, height: u32) -> Bytes {
        let img = DynamicImage::new_rgba8(width, height);
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).expect("encode");
        Bytes::from(out)
    }

    #[test]
    fn scales_down_keeping_aspect_ratio() {
        let cfg = UploadConfig { max_side: 64, ..UploadConfig::default() };
        let valid = validate_image(png(200, 100), &cfg).expect("valid");
        assert_eq!((valid.width, valid.height), (64, 32));
        assert_eq!((valid.original_width, valid.original_height), (200, 100));
        assert_eq!(valid.format, ImageFormatName::Png);
    }

    #[test]
    fn refuses_declared_pixels_over_the_limit_before_decoding() {
        let cfg = UploadConfig { max_pixels: 100, ..UploadConfig::default() };
        let err = validate_image(png(20, 20), &cfg).expect_err("too many pixels");
        assert_eq!(err.code, Code::ImageTooManyPixels);
    }

    #[test]
    fn refuses_truncated_and_foreign_bytes() {
        let cfg = UploadConfig::default();
        let full = png(64, 64);
        let cut = full.slice(..full.len() / 2);
        assert_eq!(validate_image(cut, &cfg).expect_err("truncated").code, Code::CorruptImage);
        let gif = Bytes::from_static(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;");
        assert_eq!(validate_image(gif, &cfg).expect_err("gif").code, Code::UnsupportedImageFormat);
        assert_eq!(validate_image(Bytes::new(), &cfg).expect_err("empty").code, Code::EmptyFile);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = validate_image(Bytes::from(bytes), &UploadConfig::default());
        }

        #[test]
        fn prompts_with_control_characters_are_refused(prefix in "[a-z ]{1,20}", c in 0u32..32) {
            let ch = char::from_u32(c).unwrap_or('\0');
            prop_assume!(!matches!(ch, '\n' | '\r' | '\t'));
            let text = format!("{prefix}x{ch}y");
            prop_assert_eq!(validate_prompt(&text, 1024).expect_err("control").code, Code::PromptInvalidCharacters);
        }

        #[test]
        fn prompt_length_limit_counts_characters(n in 1usize..40) {
            let text = "字".repeat(n);
            let result = validate_prompt(&text, 20);
            prop_assert_eq!(result.is_ok(), n <= 20);
        }
    }
}
