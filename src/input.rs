//! Validation of what clients send: pictures (format from the bytes, size, pixel count
//! and decoding memory before decoding, integrity, scaling down) and prompts. Pure
//! functions, so every face refuses the same things with the same codes; the memory
//! budget that decodes wait for lives in the gateway.
//!
//! Each format has its module (`png`, `jpeg`, `webp`): how its header is read, what its
//! decoder holds at its peak, and how it is decoded whole, only checked or shrunk as it
//! is read (`shrink`).

mod jpeg;
mod png;
mod shrink;
mod webp;

use std::{
    io::{BufRead, Cursor, Read, Seek, SeekFrom},
    path::Path,
};

use bytes::Bytes;
use image::{DynamicImage, ImageFormat};
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
        extension(self.format)
    }
}

/// The file extension kiln gives a picture of this format.
pub fn extension(format: ImageFormatName) -> &'static str {
    match format {
        ImageFormatName::Jpeg => "jpg",
        ImageFormatName::Png => "png",
        ImageFormatName::Webp => "webp",
    }
}

/// One of the formats kiln accepts, by the `image` crate's name for it.
pub fn accepted_format(format: ImageFormat) -> Option<ImageFormatName> {
    match format {
        ImageFormat::Jpeg => Some(ImageFormatName::Jpeg),
        ImageFormat::Png => Some(ImageFormatName::Png),
        ImageFormat::WebP => Some(ImageFormatName::Webp),
        _ => None,
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
    let format = accepted_format(image::guess_format(bytes).ok()?)?;
    accepted.contains(&format).then_some(format)
}

/// A picture's header, read before any pixel is decoded, and what decoding it will cost.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub format: ImageFormatName,
    pub width: u32,
    pub height: u32,
    /// In words, for messages and logs: "16-bit RGBA PNG", "progressive JPEG".
    pub kind: String,
    /// The size the picture is decoded to: `None` when it is only checked.
    pub target: Option<(u32, u32)>,
    /// The most memory decoding it holds at once, in bytes: an estimate from above, made
    /// from the decoders' sources (each format's module says what it counts).
    pub memory: u64,
    /// The file's length in bytes.
    len: u64,
}

/// What a format's module reads from the header.
struct Header {
    width: u32,
    height: u32,
    kind: String,
    cost: Cost,
    /// The file is too short to hold what the header claims: refused as damaged, after
    /// the pixel count (a hard limit, checked first whatever the data) and before the
    /// cost of decoding.
    short: bool,
}

/// What a decode's memory depends on besides the size, per format.
#[derive(Debug, Clone, Copy)]
enum Cost {
    Png { channels: usize, raw_row: u64, interlaced: bool },
    Jpeg { format: jpeg_decoder::PixelFormat, process: jpeg_decoder::CodingProcess },
    Webp { len: u64, lossy: bool, alpha: bool, animated: bool },
}

impl Cost {
    fn memory(self, size: (u32, u32), target: Option<(u32, u32)>) -> u64 {
        let decode = match self {
            Cost::Png { channels, raw_row, interlaced } => png::memory(size, target, channels, raw_row, interlaced),
            Cost::Jpeg { format, process } => jpeg::memory(size, target, format, process),
            Cost::Webp { len, lossy, alpha, animated } => webp::memory(size, target, len, lossy, alpha, animated),
        };
        // Then, the decoder gone, re-encoding the shrunk picture: PNG, its 4 bytes a pixel
        // and the encoded bytes (at most about as many); or JPEG, 3 bytes a pixel, an RGB
        // copy for the encoder and the encoded bytes.
        decode.max(target.map_or(0, |(w, h)| 9 * u64::from(w) * u64::from(h)) + MIB)
    }
}

const MIB: u64 = 1024 * 1024;

/// Reads the header and refuses, before any pixel is allocated, what is empty, too
/// large, not an accepted format, unreadable, over `max_pixels`, or would take more
/// memory to decode than `max_decode_memory`.
pub fn inspect<R: BufRead + Seek>(raw: &mut R, len: u64, cfg: &UploadConfig) -> Result<Inspection, ApiError> {
    if len == 0 {
        return Err(ApiError::new(Code::EmptyFile));
    }
    if len > cfg.max_bytes {
        return Err(too_large(cfg.max_bytes));
    }
    let (format, header) = read_header(raw, len, &cfg.formats)?;
    let (width, height) = (header.width, header.height);
    if width == 0 || height == 0 {
        return Err(ApiError::new(Code::CorruptImage));
    }
    if u64::from(width) * u64::from(height) > cfg.max_pixels {
        return Err(ApiError::with_message(
            Code::ImageTooManyPixels,
            format!(
                "The picture is {width}×{height} pixels; at most {:.0} megapixels are accepted.",
                cfg.max_pixels as f64 / 1e6
            ),
        ));
    }
    // A file too short for what its header claims is damaged, whatever decoding it
    // would cost.
    if header.short {
        return Err(ApiError::new(Code::CorruptImage));
    }
    let target = (width.max(height) > cfg.max_side).then(|| fit_within(width, height, cfg.max_side));
    let memory = header.cost.memory((width, height), target);
    if memory > cfg.max_decode_memory {
        return Err(ApiError::with_message(
            Code::ImageTooManyPixels,
            format!(
                "The picture is a {width}×{height} {}; decoding it would take about {}, over the limit of {} \
                 per picture. Send it smaller, or as a PNG or baseline JPEG.",
                header.kind,
                human_size(memory),
                human_size(cfg.max_decode_memory)
            ),
        ));
    }
    Ok(Inspection { format, width, height, kind: header.kind, target, memory, len })
}

/// A stored picture's header, for decoding it shrunk to `side` (or whole, when it is no
/// larger), with no limit but the ones it was stored under.
pub fn inspect_stored<R: BufRead + Seek>(
    raw: &mut R,
    len: u64,
    format: ImageFormatName,
    side: u32,
) -> Result<Inspection, ApiError> {
    let (format, header) = read_header(raw, len, &[format])?;
    let (width, height) = (header.width, header.height);
    if width == 0 || height == 0 || header.short {
        return Err(ApiError::new(Code::CorruptImage));
    }
    let target = Some(fit_within(width, height, side.min(width.max(height))));
    let memory = header.cost.memory((width, height), target);
    Ok(Inspection { format, width, height, kind: header.kind, target, memory, len })
}

fn read_header<R: BufRead + Seek>(
    raw: &mut R,
    len: u64,
    formats: &[ImageFormatName],
) -> Result<(ImageFormatName, Header), ApiError> {
    raw.seek(SeekFrom::Start(0)).map_err(ApiError::internal)?;
    let mut head = [0u8; 32];
    let read = read_head(raw, &mut head).map_err(ApiError::internal)?;
    let format = sniff(&head[..read], formats).ok_or_else(|| {
        let names: Vec<_> = formats.iter().map(|f| format_name(*f).to_uppercase()).collect();
        ApiError::with_message(
            Code::UnsupportedImageFormat,
            format!("Unsupported image format: send a {} picture.", names.join(", ")),
        )
    })?;
    raw.seek(SeekFrom::Start(0)).map_err(ApiError::internal)?;
    let header = match format {
        ImageFormatName::Png => png::header(&mut *raw),
        ImageFormatName::Jpeg => jpeg::header(&mut *raw, len),
        ImageFormatName::Webp => webp::header(&mut *raw, len),
    };
    Ok((format, header.ok_or_else(|| ApiError::new(Code::CorruptImage))?))
}

/// Decodes the whole file, which proves it complete, and returns it shrunk to the
/// inspection's target, if it has one. CPU-bound: call it from a blocking thread, after
/// taking the memory the inspection says it needs.
pub fn decode<R: BufRead + Seek>(mut raw: R, inspection: &Inspection) -> Result<Option<DynamicImage>, ApiError> {
    raw.seek(SeekFrom::Start(0)).map_err(ApiError::internal)?;
    let size = (inspection.width, inspection.height);
    let decoded = match inspection.format {
        ImageFormatName::Png => png::decode(raw, inspection.target),
        ImageFormatName::Jpeg => jpeg::decode(raw, inspection.len, size, inspection.target),
        ImageFormatName::Webp => webp::decode(raw, size, inspection.target),
    };
    decoded.map_err(|()| ApiError::new(Code::CorruptImage))
}

/// Checks an inspected picture and scales it down when its longest side is over the
/// limit. CPU-bound: call it from a blocking thread.
pub fn validate_inspected<R: BufRead + Seek>(raw: R, inspection: &Inspection) -> Result<ValidImage, ApiError> {
    let (format, width, height) = (inspection.format, inspection.width, inspection.height);
    let Some(scaled) = decode(raw, inspection)? else {
        return Ok(ValidImage { scaled: None, format, width, height, original_width: width, original_height: height });
    };
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

/// Checks a picture and scales it down when its longest side is over the limit, with
/// no memory budget but the per-picture cap. CPU-bound: call it from a blocking thread.
/// `len` is the picture's size in bytes.
pub fn validate_image<R: BufRead + Seek>(mut raw: R, len: u64, cfg: &UploadConfig) -> Result<ValidImage, ApiError> {
    let inspection = inspect(&mut raw, len, cfg)?;
    validate_inspected(raw, &inspection)
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
mod tests;
