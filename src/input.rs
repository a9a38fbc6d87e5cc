//! Validation of what clients send: pictures (format from the bytes, size, pixel count
//! before decoding, integrity, scaling down) and prompts. Pure functions, so every face
//! refuses the same things with the same codes.

use std::{
    io::{BufRead, Cursor, Read, Seek, SeekFrom},
    path::Path,
};

use bytes::Bytes;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{
    config::{ImageFormatName, UploadConfig},
    error::{ApiError, Code},
};

/// A picture as received, spooled to an unnamed temporary file while it streams in, so
/// an upload costs disk rather than memory whatever its size and however many arrive at
/// once. The operating system removes the file when it is closed, even after a crash.
#[derive(Debug)]
pub struct Upload {
    pub file: std::fs::File,
    pub len: u64,
    /// Hex SHA-256 of the bytes as received.
    pub sha256: String,
}

/// Why a picture could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the picture is over the byte limit of {0} bytes")]
    TooLarge(u64),
    #[error("cannot write the upload to a temporary file")]
    Io(#[from] std::io::Error),
}

/// Receives a picture chunk by chunk, counting it against the byte limit.
pub struct Spooler {
    file: tokio::io::BufWriter<tokio::fs::File>,
    len: u64,
    max_bytes: u64,
    hasher: Sha256,
}

impl Spooler {
    /// Opens an unnamed temporary file in `dir` (on the data disk: `/tmp` may be kept in
    /// memory, which would defeat the point).
    pub async fn new(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let dir = dir.to_owned();
        let file = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            tempfile::tempfile_in(&dir)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(Self {
            file: tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file)),
            len: 0,
            max_bytes,
            hasher: Sha256::new(),
        })
    }

    /// Appends a chunk; refuses the one that crosses the limit before writing it.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        if self.len + chunk.len() as u64 > self.max_bytes {
            return Err(SpoolError::TooLarge(self.max_bytes));
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await?;
        self.len += chunk.len() as u64;
        Ok(())
    }

    pub async fn finish(mut self) -> Result<Upload, SpoolError> {
        self.file.flush().await?;
        let mut file = self.file.into_inner().into_std().await;
        file.seek(SeekFrom::Start(0))?;
        Ok(Upload { file, len: self.len, sha256: hex::encode(self.hasher.finalize()) })
    }
}

/// A picture that passed every check, ready to store.
#[derive(Debug, Clone)]
pub struct ValidImage {
    /// The scaled-down re-encoding to store instead of the original, when the picture
    /// was over the longest-side limit.
    pub scaled: Option<Bytes>,
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
/// CPU-bound: call it from a blocking thread. `len` is the picture's size in bytes.
pub fn validate_image<R: BufRead + Seek>(mut raw: R, len: u64, cfg: &UploadConfig) -> Result<ValidImage, ApiError> {
    if len == 0 {
        return Err(ApiError::new(Code::EmptyFile));
    }
    if len > cfg.max_bytes {
        return Err(too_large(cfg.max_bytes));
    }
    let mut head = [0u8; 32];
    let read = read_head(&mut raw, &mut head).map_err(ApiError::internal)?;
    let format = sniff(&head[..read], &cfg.formats).ok_or_else(|| {
        let names: Vec<_> = cfg.formats.iter().map(|f| format_name(*f).to_uppercase()).collect();
        ApiError::with_message(
            Code::UnsupportedImageFormat,
            format!("Unsupported image format: send a {} picture.", names.join(", ")),
        )
    })?;
    // The header alone tells the size; a decompression bomb is refused here, before a
    // single pixel is allocated.
    raw.seek(SeekFrom::Start(0)).map_err(ApiError::internal)?;
    let (width, height) = ImageReader::with_format(&mut raw, to_image_format(format))
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
    raw.seek(SeekFrom::Start(0)).map_err(ApiError::internal)?;
    let longest = width.max(height);
    let (target_width, target_height) = fit_within(width, height, cfg.max_side);
    let decoded = match format {
        // Only checked, not kept: the smallest scale proves the whole file decodes.
        ImageFormatName::Jpeg if longest <= cfg.max_side => decode_jpeg(raw, (width, height), (1, 1))?,
        ImageFormatName::Jpeg => decode_jpeg(raw, (width, height), (target_width, target_height))?,
        _ => {
            let mut reader = ImageReader::with_format(raw, to_image_format(format));
            let mut limits = Limits::default();
            limits.max_image_width = Some(width);
            limits.max_image_height = Some(height);
            limits.max_alloc = Some(pixels.saturating_mul(16).max(1 << 20));
            reader.limits(limits);
            reader.decode().map_err(|_| ApiError::new(Code::CorruptImage))?
        }
    };
    if longest <= cfg.max_side {
        return Ok(ValidImage { scaled: None, format, width, height, original_width: width, original_height: height });
    }
    // `thumbnail` averages whole source pixels in integer arithmetic: no floating-point
    // copy of the picture, unlike `resize`, and a box filter is what shrinking wants.
    let scaled = decoded.thumbnail_exact(target_width, target_height);
    drop(decoded);
    let (bytes, format) = encode(&scaled)?;
    Ok(ValidImage {
        scaled: Some(bytes),
        format,
        width: scaled.width(),
        height: scaled.height(),
        original_width: width,
        original_height: height,
    })
}

/// Decodes a JPEG at the smallest scale its DCT allows that still covers `target`
/// (1/8 of the size when the picture is only checked), so a 12-megapixel phone photo
/// never sits in memory at full size. `jpeg-decoder` rather than the `image` crate's
/// decoder, because that one fills a truncated file with grey instead of refusing it.
fn decode_jpeg<R: Read>(raw: R, size: (u32, u32), target: (u32, u32)) -> Result<DynamicImage, ApiError> {
    let corrupt = |_| ApiError::new(Code::CorruptImage);
    let mut decoder = jpeg_decoder::Decoder::new(raw);
    decoder.read_info().map_err(corrupt)?;
    let info = decoder.info().ok_or_else(|| ApiError::new(Code::CorruptImage))?;
    if (u32::from(info.width), u32::from(info.height)) != size {
        return Err(ApiError::new(Code::CorruptImage));
    }
    // The decoder picks the smallest of 1/8 … 8/8 at least this large.
    let request = |side: u32| u16::try_from(side).unwrap_or(u16::MAX).max(1);
    let (w, h) = decoder.scale(request(target.0), request(target.1)).map_err(corrupt)?;
    let pixels = decoder.decode().map_err(corrupt)?;
    let (w, h) = (u32::from(w), u32::from(h));
    let image = match decoder.info().map(|i| i.pixel_format) {
        Some(jpeg_decoder::PixelFormat::RGB24) => image::RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8),
        Some(jpeg_decoder::PixelFormat::L8) => image::GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8),
        Some(jpeg_decoder::PixelFormat::L16) => {
            let wide = pixels.chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]])).collect();
            image::ImageBuffer::from_raw(w, h, wide).map(DynamicImage::ImageLuma16)
        }
        Some(jpeg_decoder::PixelFormat::CMYK32) => {
            // Ink amounts (the decoder undoes Adobe's inverted storage): what light
            // is left after the colour ink and after the black ink.
            let rgb = pixels
                .chunks_exact(4)
                .flat_map(|p| {
                    let white = 255 - u16::from(p[3]);
                    [p[0], p[1], p[2]].map(|ink| (((255 - u16::from(ink)) * white + 127) / 255) as u8)
                })
                .collect();
            image::RgbImage::from_raw(w, h, rgb).map(DynamicImage::ImageRgb8)
        }
        None => None,
    };
    image.ok_or_else(|| ApiError::new(Code::CorruptImage))
}

/// Checks a picture held in memory.
pub fn validate_bytes(raw: &[u8], cfg: &UploadConfig) -> Result<ValidImage, ApiError> {
    validate_image(Cursor::new(raw), raw.len() as u64, cfg)
}

/// The size that fits within `max_side`, keeping the aspect ratio (never 0).
fn fit_within(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let longest = width.max(height);
    let scale = |side: u32| {
        ((u64::from(side) * u64::from(max_side) + u64::from(longest) / 2) / u64::from(longest)).max(1) as u32
    };
    (scale(width).min(max_side), scale(height).min(max_side))
}

/// Reads up to `buf.len()` bytes from the start (fewer only at the end of the input).
fn read_head<R: Read>(raw: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match raw.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
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

/// Text a client sent, for keeping and showing: control characters dropped, at most
/// `max_chars` characters, trimmed.
pub fn printable(text: &str, max_chars: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max_chars).collect::<String>().trim().to_owned()
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

    fn jpeg(width: u32, height: u32, gray: bool) -> Vec<u8> {
        let rgb =
            image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, (x ^ y) as u8]));
        let img = if gray { DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(rgb).to_luma8()) } else { rgb.into() };
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Jpeg).expect("encode");
        out
    }

    #[test]
    fn jpegs_are_checked_whole_and_scaled_from_a_reduced_decode() {
        let cfg = UploadConfig { max_side: 100, ..UploadConfig::default() };
        for gray in [false, true] {
            let small = validate_bytes(&jpeg(90, 60, gray), &cfg).expect("small jpeg");
            assert!(small.scaled.is_none(), "kept as sent");
            assert_eq!((small.width, small.height), (90, 60));

            let big = validate_bytes(&jpeg(300, 200, gray), &cfg).expect("big jpeg");
            assert_eq!((big.width, big.height), (100, 67));
            let stored = image::load_from_memory(big.scaled.as_ref().expect("re-encoded")).expect("decodes");
            assert_eq!((stored.width(), stored.height()), (100, 67));

            // A cut file is refused, not filled with grey.
            let full = jpeg(300, 200, gray);
            for keep in [0.3, 0.7, 0.95] {
                let cut = &full[..(full.len() as f64 * keep) as usize];
                assert_eq!(validate_bytes(cut, &cfg).expect_err("truncated").code, Code::CorruptImage, "{keep}");
            }
        }
    }

    #[test]
    fn scales_down_keeping_aspect_ratio() {
        let cfg = UploadConfig { max_side: 64, ..UploadConfig::default() };
        let valid = validate_bytes(&png(200, 100), &cfg).expect("valid");
        assert_eq!((valid.width, valid.height), (64, 32));
        assert_eq!((valid.original_width, valid.original_height), (200, 100));
        assert_eq!(valid.format, ImageFormatName::Png);
    }

    #[test]
    fn refuses_declared_pixels_over_the_limit_before_decoding() {
        let cfg = UploadConfig { max_pixels: 100, ..UploadConfig::default() };
        let err = validate_bytes(&png(20, 20), &cfg).expect_err("too many pixels");
        assert_eq!(err.code, Code::ImageTooManyPixels);
    }

    #[test]
    fn refuses_truncated_and_foreign_bytes() {
        let cfg = UploadConfig::default();
        let full = png(64, 64);
        let cut = full.slice(..full.len() / 2);
        assert_eq!(validate_bytes(&cut, &cfg).expect_err("truncated").code, Code::CorruptImage);
        let gif = Bytes::from_static(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;");
        assert_eq!(validate_bytes(&gif, &cfg).expect_err("gif").code, Code::UnsupportedImageFormat);
        assert_eq!(validate_bytes(&[], &cfg).expect_err("empty").code, Code::EmptyFile);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = validate_bytes(&bytes, &UploadConfig::default());
        }

        #[test]
        fn damaged_jpegs_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12), cut in 0.2f64..1.0) {
            let cfg = UploadConfig { max_side: 16, ..UploadConfig::default() };
            let mut bytes = jpeg(40, 24, false);
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            bytes.truncate(((bytes.len() as f64) * cut) as usize);
            let _ = validate_bytes(&bytes, &cfg);
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
