//! PNG, decoded row by row with the `png` crate so that a picture never sits in memory
//! whole: 16-bit samples are cut to 8 bits and palettes and small bit depths widened as
//! each row is produced, a row that is only checked is dropped at once, and a row that is
//! scaled down is summed into the box filter as it arrives. The file is read to its end
//! with every checksum verified, so a cut or damaged file is refused rather than padded.

use std::io::{BufRead, Seek};

use image::DynamicImage;
use png::{Adam7Info, BitDepth, ColorType, DecodeOptions, InterlaceInfo, Transformations};

use super::{
    Cost, Header, MIB,
    shrink::{GridShrinker, RowShrinker},
};

/// What `png` may allocate besides its rows: ancillary chunks it keeps. Text and ICC
/// profiles are skipped, so this is room for the rest (`PLTE`, `tRNS`, …).
const CHUNK_LIMIT: usize = 4 * 1024 * 1024;

/// The Adam7 passes: (x offset, x step, y offset, y step).
const PASSES: [(u32, u32, u32, u32); 7] =
    [(0, 8, 0, 8), (4, 8, 0, 8), (0, 4, 4, 8), (2, 4, 0, 4), (0, 2, 2, 4), (1, 2, 0, 2), (0, 1, 1, 2)];

fn decoder<R: BufRead + Seek>(raw: R) -> png::Decoder<R> {
    // `png` skips the zlib checksum by default and forgives bad CRCs on ancillary
    // chunks; a damaged file should be refused, not half-trusted.
    let mut options = DecodeOptions::default();
    options.set_ignore_adler32(false);
    options.set_ignore_crc(false);
    options.set_skip_ancillary_crc_failures(false);
    options.set_ignore_text_chunk(true);
    options.set_ignore_iccp_chunk(true);
    let mut decoder = png::Decoder::new_with_options(raw, options);
    decoder.set_limits(png::Limits { bytes: CHUNK_LIMIT });
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    decoder
}

/// Reads the header: size, samples per pixel after widening to 8 bits, interlacing.
pub(super) fn header<R: BufRead + Seek>(raw: R) -> Option<Header> {
    let mut decoder = decoder(raw);
    let info = decoder.read_header_info().ok()?;
    // Grey, RGB and palettes gain an alpha channel from a `tRNS` chunk, which comes
    // after the header: count the larger.
    let channels = match info.color_type {
        ColorType::Grayscale | ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb | ColorType::Rgba | ColorType::Indexed => 4,
    };
    let bits = info.bit_depth as u8;
    let kind = format!(
        "{}{}-bit {} PNG",
        if info.interlaced { "interlaced " } else { "" },
        bits,
        match info.color_type {
            ColorType::Grayscale => "grey",
            ColorType::GrayscaleAlpha => "grey and alpha",
            ColorType::Rgb => "RGB",
            ColorType::Rgba => "RGBA",
            ColorType::Indexed => "palette",
        }
    );
    let cost = Cost::Png { channels, raw_row: info.raw_row_length() as u64, interlaced: info.interlaced };
    Some(Header { width: info.width, height: info.height, kind, cost, short: false })
}

/// The most this decode holds at once: `png`'s working rows and inflate state, and, when
/// scaling down, the box filter's sums and the output.
pub(super) fn memory(
    size: (u32, u32),
    target: Option<(u32, u32)>,
    channels: usize,
    raw_row: u64,
    interlaced: bool,
) -> u64 {
    // Inflate keeps a 32 KiB window plus up to 128 KiB of rows before it shifts them
    // back, and at least four raw rows; one 8-bit output row besides; the inflater.
    let decoder = raw_row.saturating_mul(6) + 256 * 1024 + CHUNK_LIMIT as u64 + MIB;
    let Some(dst) = target else { return decoder };
    let shrink = if interlaced {
        GridShrinker::working_bytes(size, dst, channels)
    } else {
        RowShrinker::working_bytes(size, dst, channels)
    };
    decoder + shrink + u64::from(dst.0) * u64::from(dst.1) * channels as u64
}

/// Decodes and checks the whole file; with a `target`, returns the picture shrunk to it.
pub(super) fn decode<R: BufRead + Seek>(raw: R, target: Option<(u32, u32)>) -> Result<Option<DynamicImage>, ()> {
    let mut reader = decoder(raw).read_info().map_err(|_| ())?;
    let (width, height) = (reader.info().width, reader.info().height);
    let interlaced = reader.info().interlaced;
    let channels = match reader.output_color_type() {
        (ColorType::Grayscale, BitDepth::Eight) => 1,
        (ColorType::GrayscaleAlpha, BitDepth::Eight) => 2,
        (ColorType::Rgb, BitDepth::Eight) => 3,
        (ColorType::Rgba, BitDepth::Eight) => 4,
        _ => return Err(()),
    };
    let image = match target {
        None => {
            while reader.next_row().map_err(|_| ())?.is_some() {}
            None
        }
        Some(dst) if !interlaced => {
            let mut shrinker = RowShrinker::new((width, height), dst, channels);
            while let Some(row) = reader.next_row().map_err(|_| ())? {
                shrinker.push(row.data());
            }
            Some(shrinker.finish().ok_or(())?)
        }
        Some(dst) => {
            let mut shrinker = GridShrinker::new((width, height), dst, channels);
            let mut expected = adam7_rows(width, height);
            while let Some(row) = reader.next_interlaced_row().map_err(|_| ())? {
                // `png` numbers the rows but keeps the numbers private; it hands them out
                // in a fixed order, which is checked here rather than trusted.
                let (pass, line) = expected.next().ok_or(())?;
                match row.interlace() {
                    InterlaceInfo::Adam7(info) if *info == Adam7Info::new(pass, line, width) => {}
                    _ => return Err(()),
                }
                let (x0, dx, y0, dy) = PASSES[usize::from(pass) - 1];
                shrinker.push(y0 + line * dy, x0, dx, row.data());
            }
            Some(shrinker.finish().ok_or(())?)
        }
    };
    // The rest of the file: CRCs of every chunk up to `IEND`, which must be there.
    reader.finish().map_err(|_| ())?;
    Ok(image)
}

/// The (pass, line) of each row of an interlaced picture, in file order.
fn adam7_rows(width: u32, height: u32) -> impl Iterator<Item = (u8, u32)> {
    PASSES.iter().zip(1u8..).flat_map(move |(&(x0, dx, y0, dy), pass)| {
        let samples = width.saturating_sub(x0).div_ceil(dx);
        let lines = if samples == 0 { 0 } else { height.saturating_sub(y0).div_ceil(dy) };
        (0..lines).map(move |line| (pass, line))
    })
}
