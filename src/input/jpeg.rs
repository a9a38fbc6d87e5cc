//! JPEG, decoded by `jpeg-decoder` at the smallest DCT scale that serves (1/8 of each
//! side when the picture is only checked), so a 12-megapixel photo never sits in memory
//! at full size. `jpeg-decoder` rather than the `image` crate's decoder, because that one
//! fills a file cut short with grey instead of refusing it.
//!
//! What `jpeg-decoder` 0.3.2 holds at its peak, read from its source (`decoder.rs`,
//! `worker/`), per component, for a picture of W × H padded to whole blocks:
//!
//! - every JPEG: the component's plane at the output scale, one byte a sample, and the
//!   interleaved output (1, 3 or 4 bytes a pixel) allocated while the planes still live;
//! - progressive: the DCT coefficients of the whole picture at full size, an `i16` per
//!   sample, for every component, kept from the first scan to the last, plus a copy of a
//!   component's coefficients while they are handed to the IDCT worker;
//! - baseline: only MCU rows of coefficients in flight to the IDCT threads (one thread per
//!   component, unbounded channels): nothing measurable piled up in our benchmarks, and
//!   an allowance of `IN_FLIGHT_ROWS` rows (at most an eighth of the picture's
//!   coefficients) is counted for them;
//! - lossless: no DCT scaling, 16-bit planes and a 16-bit output.
//!
//! The header does not say how the colour planes are subsampled without parsing it
//! ourselves, so every component is counted at full size (4:4:4), the worst case.

use std::io::{Read, Seek, SeekFrom};

use image::DynamicImage;
use jpeg_decoder::{CodingProcess, PixelFormat};

use super::{Cost, Header, MIB};

/// MCU rows of coefficients counted as waiting for a baseline decode's IDCT threads.
const IN_FLIGHT_ROWS: u64 = 16;

/// Reads the header: size, components, coding process.
pub(super) fn header<R: Read>(raw: R, len: u64) -> Option<Header> {
    let mut decoder = jpeg_decoder::Decoder::new(raw);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    let size = (u32::from(info.width), u32::from(info.height));
    // Every 8 × 8 block of the full-size plane takes at least a one-bit code, so a file
    // with fewer bits than blocks claims a size its data cannot fill: it was cut short
    // (`jpeg-decoder` fills a scan that ends at a marker with zeros, not an error).
    let blocks = u64::from(size.0.div_ceil(8)) * u64::from(size.1.div_ceil(8));
    let short = len.saturating_mul(8) < blocks;
    let kind = match info.coding_process {
        CodingProcess::DctSequential => "baseline JPEG",
        CodingProcess::DctProgressive => "progressive JPEG",
        CodingProcess::Lossless => "lossless JPEG",
    };
    let cost = Cost::Jpeg { format: info.pixel_format, process: info.coding_process };
    Some(Header { width: size.0, height: size.1, kind: kind.to_owned(), cost, short })
}

/// The scale, in eighths, `jpeg-decoder` picks for `target` (its `choose_idct_size`: the
/// smallest that reaches the target in at least one direction).
fn eighths(size: (u32, u32), target: (u32, u32)) -> u64 {
    let scaled = |side: u32, eighths: u32| (u64::from(side) * u64::from(eighths)).div_ceil(8);
    [1, 2, 4]
        .into_iter()
        .find(|&e| scaled(size.0, e) >= u64::from(target.0) || scaled(size.1, e) >= u64::from(target.1))
        .unwrap_or(8)
        .into()
}

pub(super) fn memory(size: (u32, u32), target: Option<(u32, u32)>, format: PixelFormat, process: CodingProcess) -> u64 {
    let components: u64 = match format {
        PixelFormat::L8 | PixelFormat::L16 => 1,
        PixelFormat::RGB24 => 3,
        PixelFormat::CMYK32 => 4,
    };
    // Sampling factors of up to 4 make MCUs of up to 32 × 32.
    let (padded_w, padded_h) = (u64::from(size.0.div_ceil(32)) * 32, u64::from(size.1.div_ceil(32)) * 32);
    let full = padded_w * padded_h;
    let e = if process == CodingProcess::Lossless { 8 } else { eighths(size, target.unwrap_or((1, 1))) };
    let (out_w, out_h) = ((u64::from(size.0) * e).div_ceil(8), (u64::from(size.1) * e).div_ceil(8));
    let planes = components * full * e * e / 64;
    let output = out_w * out_h * format.pixel_bytes() as u64;
    // Our conversion to a picture: CMYK to RGB, or 16-bit samples into a new buffer.
    let conversion = match format {
        PixelFormat::CMYK32 => out_w * out_h * 3,
        PixelFormat::L16 => out_w * out_h * 2,
        _ => 0,
    };
    // The decoder's peak; then, with the decoder dropped, the output beside its
    // conversion and the shrunk copy.
    let decode = match process {
        CodingProcess::DctSequential => {
            let rows = (IN_FLIGHT_ROWS * components * padded_w * 32 * 2).min(components * full * 2 / 8);
            planes + output + rows
        }
        CodingProcess::DctProgressive => {
            // The coefficients live to the end; a component's copy in flight to the
            // IDCT thread is gone once the output is allocated.
            let coefficients = components * full * 2;
            coefficients + planes + output.max(full * 2)
        }
        CodingProcess::Lossless => 2 * planes + output,
    };
    let shrunk =
        target.map_or(0, |(w, h)| u64::from(w) * u64::from(h) * 3 * if format == PixelFormat::L16 { 2 } else { 1 });
    decode.max(output + conversion + shrunk) + MIB
}

/// Stuffed `0xFF` bytes (64 one-bits of scan data) and the end-of-image marker.
const GUARD: [u8; 18] = [0xFF, 0, 0xFF, 0, 0xFF, 0, 0xFF, 0, 0xFF, 0, 0xFF, 0, 0xFF, 0, 0xFF, 0, 0xFF, 0xD9];

/// Decodes at the smallest scale that covers `target`; `None` only checks the file.
///
/// `jpeg-decoder`, like libjpeg, fills a scan that meets a marker before its last block
/// with zero bits, so a file cut short and closed with an end-of-image marker decodes
/// without an error. A file that ends with that marker is therefore decoded with 64 one
/// bits slipped in before it. A complete last scan never reads them (the decoder then
/// skips to the marker); a cut one decodes them as Huffman codes, and sixteen ones in a
/// row are no code of any table the standard allows, so it fails. Not caught: a
/// progressive file cut exactly between two scans, or whose last scan's missing blocks
/// were all covered by an end-of-band run.
pub(super) fn decode<R: Read + Seek>(
    mut raw: R,
    len: u64,
    size: (u32, u32),
    target: Option<(u32, u32)>,
) -> Result<Option<DynamicImage>, ()> {
    let data = data_before_final_eoi(&mut raw, len);
    raw.seek(SeekFrom::Start(0)).map_err(|_| ())?;
    match data {
        Some(data) => decode_from(raw.take(data).chain(&GUARD[..]), size, target),
        None => decode_from(raw, size, target),
    }
}

/// Where the file's closing end-of-image marker starts, with the `0xFF` fill bytes a
/// marker may have before it (the guard goes before them: `jpeg-decoder` refuses a
/// stuffed byte right after fill bytes). `None` when the file does not end with it.
fn data_before_final_eoi<R: Read + Seek>(raw: &mut R, len: u64) -> Option<u64> {
    let mut tail = [0u8; 64];
    let start = len.saturating_sub(tail.len() as u64);
    let tail = &mut tail[..(len - start) as usize];
    raw.seek(SeekFrom::Start(start)).ok()?;
    raw.read_exact(tail).ok()?;
    let before = tail.strip_suffix(&[0xFF, 0xD9])?;
    let fill = before.iter().rev().take_while(|&&b| b == 0xFF).count();
    // A tail of nothing but fill bytes: leave such a file as it is.
    (fill < before.len()).then(|| len - 2 - fill as u64)
}

fn decode_from<R: Read>(raw: R, size: (u32, u32), target: Option<(u32, u32)>) -> Result<Option<DynamicImage>, ()> {
    let mut decoder = jpeg_decoder::Decoder::new(raw);
    decoder.read_info().map_err(|_| ())?;
    let info = decoder.info().ok_or(())?;
    if (u32::from(info.width), u32::from(info.height)) != size {
        return Err(());
    }
    let request = |side: u32| u16::try_from(side).unwrap_or(u16::MAX).max(1);
    let (tw, th) = target.unwrap_or((1, 1));
    let (w, h) = decoder.scale(request(tw), request(th)).map_err(|_| ())?;
    let pixels = decoder.decode().map_err(|_| ())?;
    // A progressive decoder still holds the whole picture's coefficients.
    drop(decoder);
    let Some((tw, th)) = target else { return Ok(None) };
    let (w, h) = (u32::from(w), u32::from(h));
    let image = match info.pixel_format {
        PixelFormat::RGB24 => image::RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8),
        PixelFormat::L8 => image::GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8),
        PixelFormat::L16 => {
            let wide = pixels.chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]])).collect();
            image::ImageBuffer::from_raw(w, h, wide).map(DynamicImage::ImageLuma16)
        }
        PixelFormat::CMYK32 => {
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
    };
    // `thumbnail` averages whole source pixels in integer arithmetic: no floating-point
    // copy of the picture, unlike `resize`, and a box filter is what shrinking wants.
    Ok(Some(image.ok_or(())?.thumbnail_exact(tw, th)))
}
