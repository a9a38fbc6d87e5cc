//! WebP, decoded whole by `image-webp` (it has no row interface), so its memory is
//! estimated from the header and refused over the per-picture cap before decoding.
//!
//! What `image-webp` 0.2.4 holds at its peak, read from its source (`decoder.rs`,
//! `vp8.rs`, `lossless.rs`, `extended.rs`), for W × H pixels:
//!
//! - the output, 3 bytes a pixel, or 4 with alpha;
//! - lossy (VP8): Y, U and V planes padded to 16-pixel macroblocks (1.5 bytes a pixel),
//!   a record per macroblock, and the compressed partitions copied twice;
//! - lossless (VP8L): without alpha, a 4-byte-a-pixel buffer besides the output; the
//!   predictor, colour and entropy images, each at most a sixteenth of the pixels at 4
//!   bytes (counted as 1 byte a pixel for all);
//! - alpha in a lossy file (`ALPH`): the plane, and a 4-byte-a-pixel buffer when it is
//!   compressed losslessly;
//! - animation (only the first frame is decoded): a 4-byte canvas and the frame besides.
//!
//! Not bounded by the pixels: a lossless file may declare up to 65,536 groups of Huffman
//! tables (4 KiB a table at most); they cost bits in the file, so they grow with its size
//! (see docs/api.md).
//!
//! `image-webp` decodes from the chunk sizes and ignores the RIFF length, and it reads a
//! chunk that runs past the end of the file as far as there is data. Both are refused
//! here: the RIFF length must match the file, and no read may reach past its end.

use std::{
    cell::Cell,
    io::{self, BufRead, Read, Seek, SeekFrom},
};

use image::DynamicImage;
use image_webp::WebPDecoder;

use super::{Cost, Header, MIB};

/// Reads the header; `None` when the RIFF length disagrees with the file's.
pub(super) fn header<R: BufRead + Seek>(mut raw: R, len: u64) -> Option<Header> {
    riff_length_matches(&mut raw, len)?;
    raw.seek(SeekFrom::Start(0)).ok()?;
    let mut decoder = WebPDecoder::new(raw).ok()?;
    let size = decoder.dimensions();
    let (lossy, alpha, animated) = (decoder.is_lossy(), decoder.has_alpha(), decoder.is_animated());
    let kind = format!(
        "{}{}{} WebP",
        if animated { "animated " } else { "" },
        if lossy { "lossy" } else { "lossless" },
        if alpha { " with alpha" } else { "" },
    );
    let cost = Cost::Webp { len, lossy, alpha, animated };
    Some(Header { width: size.0, height: size.1, kind, cost, short: false })
}

/// The RIFF length counts the bytes after its own 8; a writer may leave out the one
/// padding byte that follows an odd-sized last chunk, and nothing else.
fn riff_length_matches<R: Read>(raw: &mut R, len: u64) -> Option<()> {
    let mut head = [0u8; 8];
    raw.read_exact(&mut head).ok()?;
    let riff = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
    (len == riff + 8 || (riff % 2 == 1 && len == riff + 9)).then_some(())
}

pub(super) fn memory(
    size: (u32, u32),
    target: Option<(u32, u32)>,
    len: u64,
    lossy: bool,
    alpha: bool,
    animated: bool,
) -> u64 {
    let area = u64::from(size.0) * u64::from(size.1);
    let macroblocks = u64::from(size.0.div_ceil(16)) * u64::from(size.1.div_ceil(16));
    let output = area * if alpha { 4 } else { 3 };
    let lossy_working = macroblocks * (256 + 2 * 64 + 64) + 2 * len;
    let lossless_working = area + if alpha { 0 } else { area * 4 } + len;
    let alpha_plane = if alpha && lossy { area * 5 } else { 0 };
    let frame = if lossy { lossy_working + alpha_plane } else { lossless_working };
    let animation = if animated { 2 * area * 4 } else { 0 };
    let shrunk = target.map_or(0, |(w, h)| u64::from(w) * u64::from(h) * 4);
    (output + frame + animation).max(output + shrunk) + MIB
}

/// Remembers whether a read reached the end of the file.
struct EndGuard<'a, R> {
    inner: R,
    reached: &'a Cell<bool>,
}

impl<R: Read> Read for EndGuard<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.reached.set(true);
        }
        Ok(n)
    }
}

impl<R: BufRead> BufRead for EndGuard<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let buf = self.inner.fill_buf()?;
        if buf.is_empty() {
            self.reached.set(true);
        }
        Ok(buf)
    }

    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount);
    }
}

impl<R: Seek> Seek for EndGuard<'_, R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// Decodes the whole picture; with a `target`, returns it shrunk to that size.
pub(super) fn decode<R: BufRead + Seek>(
    raw: R,
    size: (u32, u32),
    target: Option<(u32, u32)>,
) -> Result<Option<DynamicImage>, ()> {
    let reached = Cell::new(false);
    let mut decoder = WebPDecoder::new(EndGuard { inner: raw, reached: &reached }).map_err(|_| ())?;
    if decoder.dimensions() != size {
        return Err(());
    }
    // Reading the chunk list goes to the end of the file by design; only the pixels'
    // reads must stay inside it.
    reached.set(false);
    let mut pixels = vec![0; decoder.output_buffer_size().ok_or(())?];
    decoder.read_image(&mut pixels).map_err(|_| ())?;
    let alpha = decoder.has_alpha();
    drop(decoder);
    if reached.get() {
        return Err(());
    }
    let Some((w, h)) = target else { return Ok(None) };
    let image = if alpha {
        image::RgbaImage::from_raw(size.0, size.1, pixels).map(DynamicImage::ImageRgba8)
    } else {
        image::RgbImage::from_raw(size.0, size.1, pixels).map(DynamicImage::ImageRgb8)
    };
    Ok(Some(image.ok_or(())?.thumbnail_exact(w, h)))
}
