//! Pictures of every format, whole, cut short, lying about their size or too costly to
//! decode; and prompts.

use super::*;
use proptest::prelude::*;

fn png(width: u32, height: u32) -> Bytes {
    let img = DynamicImage::new_rgba8(width, height);
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).expect("encode");
    Bytes::from(out)
}

fn jpeg(width: u32, height: u32, gray: bool) -> Vec<u8> {
    let rgb = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, (x ^ y) as u8]));
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

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/images");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), format).expect("encode");
    out
}

/// Smooth ramps with some texture, in 16 bits per sample.
fn rgba16(width: u32, height: u32) -> image::ImageBuffer<image::Rgba<u16>, Vec<u16>> {
    image::ImageBuffer::from_fn(width, height, |x, y| {
        let (x, y) = (x as u16, y as u16);
        image::Rgba([x.wrapping_mul(331), y.wrapping_mul(257), (x ^ y).wrapping_mul(97), 40_000 + x.wrapping_mul(7)])
    })
}

/// A PNG written chunk by chunk, for what `image`'s encoder cannot make: Adam7
/// interlacing (rows of each pass, filter 0) and a zlib stream with a wrong checksum.
fn raw_png(image: &image::RgbImage, interlaced: bool, bad_adler: bool) -> Vec<u8> {
    use std::io::Write;
    let (width, height) = image.dimensions();
    let mut scanlines = Vec::new();
    let passes: &[(u32, u32, u32, u32)] = if interlaced {
        &[(0, 8, 0, 8), (4, 8, 0, 8), (0, 4, 4, 8), (2, 4, 0, 4), (0, 2, 2, 4), (1, 2, 0, 2), (0, 1, 1, 2)]
    } else {
        &[(0, 1, 0, 1)]
    };
    for &(x0, dx, y0, dy) in passes {
        if x0 >= width {
            continue;
        }
        for y in (y0..height).step_by(dy as usize) {
            scanlines.push(0);
            for x in (x0..width).step_by(dx as usize) {
                scanlines.extend_from_slice(&image.get_pixel(x, y).0);
            }
        }
    }
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    zlib.write_all(&scanlines).expect("deflate");
    let mut idat = zlib.finish().expect("deflate");
    if bad_adler {
        let last = idat.len() - 1;
        idat[last] ^= 0x55;
    }
    let mut info = ::png::Info::with_size(width, height);
    info.color_type = ::png::ColorType::Rgb;
    info.bit_depth = ::png::BitDepth::Eight;
    info.interlaced = interlaced;
    let mut out = Vec::new();
    let encoder = ::png::Encoder::with_info(&mut out, info).expect("info");
    let mut writer = encoder.write_header().expect("header");
    writer.write_chunk(::png::chunk::IDAT, &idat).expect("IDAT");
    writer.finish().expect("IEND");
    out
}

fn textured_rgb(width: u32, height: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, ((x / 3) ^ (y / 5)) as u8])
    })
}

fn jpeg_with(width: u32, height: u32, progressive: bool, restart: u16) -> Vec<u8> {
    let rgb = textured_rgb(width, height);
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, 85);
    encoder.set_progressive(progressive);
    if restart > 0 {
        encoder.set_restart_interval(restart);
    }
    encoder.encode(rgb.as_raw(), width as u16, height as u16, jpeg_encoder::ColorType::Rgb).expect("jpeg");
    out
}

/// The largest difference of any sample, and the mean difference.
fn difference(a: &image::RgbaImage, b: &image::RgbaImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let diffs: Vec<u8> = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).collect();
    let max = diffs.iter().copied().max().unwrap_or(0);
    (max, diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64)
}

fn stored(valid: &ValidImage) -> DynamicImage {
    image::load_from_memory(valid.scaled.as_ref().expect("re-encoded")).expect("decodes")
}

fn code(bytes: &[u8], cfg: &UploadConfig) -> Code {
    validate_bytes(bytes, cfg).expect_err("refused").code
}

#[test]
fn sixteen_bit_pngs_are_stored_as_eight_bit_and_match_the_old_box_filter() {
    let cfg = UploadConfig { max_side: 100, ..UploadConfig::default() };
    let original = DynamicImage::ImageRgba16(rgba16(300, 211));
    let valid = validate_bytes(&encoded(&original, ImageFormat::Png), &cfg).expect("16-bit png");
    assert_eq!((valid.width, valid.height, valid.format), (100, 70, ImageFormatName::Png));
    let new = stored(&valid);
    assert_eq!(new.color(), image::ColorType::Rgba8, "stored as 8 bits");
    // What the server stored before: `thumbnail_exact` of the whole 16-bit picture.
    let old = original.thumbnail_exact(100, 70).to_rgba8();
    let (max, mean) = difference(&new.to_rgba8(), &old);
    assert!(max <= 2 && mean < 0.5, "max {max}, mean {mean}");

    // Only checked: kept as sent.
    let small = validate_bytes(&encoded(&DynamicImage::ImageRgba16(rgba16(90, 60)), ImageFormat::Png), &cfg)
        .expect("small 16-bit png");
    assert!(small.scaled.is_none());
}

#[test]
fn eight_bit_pngs_scale_like_the_old_box_filter() {
    let cfg = UploadConfig { max_side: 64, ..UploadConfig::default() };
    let rgb = DynamicImage::ImageRgb8(textured_rgb(333, 97));
    for picture in
        [rgb.clone(), DynamicImage::ImageLuma8(rgb.to_luma8()), DynamicImage::ImageLumaA8(rgb.to_luma_alpha8())]
    {
        let valid = validate_bytes(&encoded(&picture, ImageFormat::Png), &cfg).expect("png");
        assert_eq!((valid.width, valid.height), (64, 19));
        let old = picture.thumbnail_exact(64, 19).to_rgba8();
        // Grey without alpha is stored as JPEG, which adds its own small error.
        let (max, mean) = difference(&stored(&valid).to_rgba8(), &old);
        let jpeg = valid.format == ImageFormatName::Jpeg;
        assert!(
            if jpeg { mean < 3.0 } else { max <= 1 && mean < 0.2 },
            "{:?}: max {max}, mean {mean}",
            picture.color()
        );
    }
}

#[test]
fn interlaced_pngs_are_checked_and_scaled_as_their_rows_arrive() {
    let picture = textured_rgb(203, 157);
    let bytes = raw_png(&picture, true, false);
    let plain = image::load_from_memory(&bytes).expect("image reads it").to_rgb8();
    assert_eq!(plain, picture, "the helper writes a true interlaced PNG");

    let checked = validate_bytes(&bytes, &UploadConfig { max_side: 400, ..UploadConfig::default() }).expect("checked");
    assert!(checked.scaled.is_none());

    let cfg = UploadConfig { max_side: 50, ..UploadConfig::default() };
    let valid = validate_bytes(&bytes, &cfg).expect("scaled");
    assert_eq!((valid.width, valid.height), (50, 39));
    let old = DynamicImage::ImageRgb8(picture).thumbnail_exact(50, 39).to_rgba8();
    let (_, mean) = difference(&stored(&valid).to_rgba8(), &old);
    assert!(mean < 3.0, "stored as JPEG: mean {mean}");

    for cut in [bytes.len() / 3, bytes.len() - 20, bytes.len() - 1] {
        assert_eq!(code(&bytes[..cut], &cfg), Code::CorruptImage, "cut at {cut}");
    }
}

#[test]
fn pngs_cut_short_or_with_bad_checksums_are_refused() {
    let cfg = UploadConfig { max_side: 64, ..UploadConfig::default() };
    for interlaced in [false, true] {
        let good = raw_png(&textured_rgb(120, 80), interlaced, false);
        assert!(validate_bytes(&good, &cfg).is_ok());
        // A wrong zlib checksum under a right CRC: `png` skips that check by default.
        assert_eq!(code(&raw_png(&textured_rgb(120, 80), interlaced, true), &cfg), Code::CorruptImage);
        // A damaged chunk (its CRC no longer matches), and a file without IEND.
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x01;
        assert_eq!(code(&flipped, &cfg), Code::CorruptImage);
        assert_eq!(code(&good[..good.len() - 12], &cfg), Code::CorruptImage);
        // Only checked, not scaled: still read to the end.
        let big = UploadConfig::default();
        assert_eq!(code(&good[..good.len() - 12], &big), Code::CorruptImage);
    }
}

#[test]
fn jpegs_cut_short_are_refused_baseline_and_progressive_with_or_without_restarts() {
    let cfg = UploadConfig::default();
    for progressive in [false, true] {
        for restart in [0, 4] {
            let full = jpeg_with(2400, 1800, progressive, restart);
            let what = format!("progressive {progressive}, restart {restart}");
            assert!(validate_bytes(&full, &cfg).is_ok(), "{what}");
            for cut in [4096, full.len() / 2, full.len() - 2] {
                assert_eq!(code(&full[..cut], &cfg), Code::CorruptImage, "{what}, cut at {cut}");
            }
            // Cut and closed with an end-of-image marker: `jpeg-decoder` alone fills the
            // rest of the scan with zeros (grey, for a progressive file). At 4 KB the data
            // is too short for the size the header claims; further on, the guard bits
            // before the marker are read as codes and fail.
            for keep in [4096, full.len() / 3, full.len() / 2, full.len() * 9 / 10, full.len() - 40] {
                let mut closed = full[..keep].to_vec();
                closed.extend_from_slice(&[0xFF, 0xD9]);
                assert_eq!(code(&closed, &cfg), Code::CorruptImage, "{what}, closed at {keep}");
            }
            // Fill bytes before the closing marker are allowed.
            let mut filled = full[..full.len() - 2].to_vec();
            filled.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xD9]);
            assert!(validate_bytes(&filled, &cfg).is_ok(), "{what}, fill bytes before the end");
            // Bytes after the end-of-image marker are ignored, as every decoder does.
            let mut trailing = full.clone();
            trailing.extend_from_slice(b"camera data");
            assert!(validate_bytes(&trailing, &cfg).is_ok(), "{what}, data after the end");
        }
    }
}

#[test]
fn webps_whose_riff_length_lies_or_that_end_early_are_refused() {
    let cfg = UploadConfig::default();
    let lossy = fixture("toy.webp");
    let lossless = encoded(&DynamicImage::ImageRgb8(textured_rgb(150, 90)), ImageFormat::WebP);
    for good in [lossy, lossless] {
        assert!(validate_bytes(&good, &cfg).is_ok());
        let riff = u32::from_le_bytes([good[4], good[5], good[6], good[7]]);
        for wrong in [riff + 2, riff - 2, riff + 1, riff.saturating_sub(1000)] {
            let mut bytes = good.clone();
            bytes[4..8].copy_from_slice(&wrong.to_le_bytes());
            assert_eq!(code(&bytes, &cfg), Code::CorruptImage, "RIFF length {wrong} for {}", good.len());
        }
        // Bytes after the RIFF payload.
        let mut longer = good.clone();
        longer.extend_from_slice(&[0, 0]);
        assert_eq!(code(&longer, &cfg), Code::CorruptImage);
        // Cut, whether or not the RIFF length is made to agree: the image chunk then
        // claims more than the file has.
        for cut in [good.len() / 2, good.len() - 4] {
            assert_eq!(code(&good[..cut], &cfg), Code::CorruptImage, "cut at {cut}");
            let mut agreed = good[..cut].to_vec();
            agreed[4..8].copy_from_slice(&(cut as u32 - 8).to_le_bytes());
            assert_eq!(code(&agreed, &cfg), Code::CorruptImage, "cut at {cut}, RIFF length agreeing");
        }
    }
}

#[test]
fn the_estimate_refuses_a_costly_picture_before_decoding_with_its_size_and_kind() {
    let webp = encoded(&DynamicImage::ImageRgb8(textured_rgb(600, 400)), ImageFormat::WebP);
    let inspection = inspect(&mut Cursor::new(&webp), webp.len() as u64, &UploadConfig::default()).expect("inspected");
    assert_eq!(inspection.kind, "lossless WebP");
    // Output and a 4-byte buffer besides: at least 7 bytes a pixel.
    assert!(inspection.memory >= 7 * 600 * 400, "{}", inspection.memory);
    let cfg = UploadConfig { max_decode_memory: inspection.memory - 1, ..UploadConfig::default() };
    let err = validate_bytes(&webp, &cfg).expect_err("over the cap");
    assert_eq!(err.code, Code::ImageTooManyPixels);
    for words in ["600×400", "lossless WebP", "MB", "limit"] {
        assert!(err.message.contains(words), "{words}: {}", err.message);
    }

    // A progressive JPEG keeps full-size coefficients: it costs more than a baseline one.
    let size = (2400, 1800);
    let baseline = jpeg_with(size.0, size.1, false, 0);
    let progressive = jpeg_with(size.0, size.1, true, 0);
    let cost =
        |bytes: &[u8]| inspect(&mut Cursor::new(bytes), bytes.len() as u64, &UploadConfig::default()).expect("ok");
    let (b, p) = (cost(&baseline), cost(&progressive));
    assert_eq!((b.kind.as_str(), p.kind.as_str()), ("baseline JPEG", "progressive JPEG"));
    assert!(p.memory > b.memory, "{} vs {}", p.memory, b.memory);
    let cfg = UploadConfig { max_decode_memory: b.memory, ..UploadConfig::default() };
    assert!(validate_bytes(&baseline, &cfg).is_ok());
    assert_eq!(code(&progressive, &cfg), Code::ImageTooManyPixels);
}

#[test]
fn the_largest_pngs_and_baseline_jpegs_max_pixels_allows_fit_the_default_cap() {
    let cfg = UploadConfig::default();
    let target = |w: u32, h: u32| (w.max(h) > cfg.max_side).then(|| fit_within(w, h, cfg.max_side));
    let jpeg = |w, h, format, process| Cost::Jpeg { format, process }.memory((w, h), target(w, h));
    let png = |w: u32, h, channels, interlaced| {
        Cost::Png { channels, raw_row: 1 + u64::from(w) * 8, interlaced }.memory((w, h), target(w, h))
    };
    use jpeg_decoder::{CodingProcess::*, PixelFormat::*};
    // 40 MP, square and long; and the size decoded at full scale (just under twice the
    // longest side: half scale would be a pixel short).
    for (w, h) in [(6324, 6324), (40000, 1000), (4094, 4094), (4094, 9770)] {
        for interlaced in [false, true] {
            let memory = png(w, h, 4, interlaced);
            assert!(memory <= cfg.max_decode_memory, "{w}×{h} PNG, interlaced {interlaced}: {memory}");
        }
        for format in [L8, RGB24, CMYK32] {
            let memory = jpeg(w, h, format, DctSequential);
            assert!(memory <= cfg.max_decode_memory, "{w}×{h} baseline {format:?}: {memory}");
        }
    }
    // Not so a 36 MP progressive JPEG.
    assert!(jpeg(6000, 6000, RGB24, DctProgressive) > cfg.max_decode_memory);
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
    fn damaged_pngs_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12), cut in 0.2f64..1.0, interlaced: bool) {
        let cfg = UploadConfig { max_side: 16, ..UploadConfig::default() };
        let mut bytes = raw_png(&textured_rgb(40, 24), interlaced, false);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        bytes.truncate(((bytes.len() as f64) * cut) as usize);
        let _ = validate_bytes(&bytes, &cfg);
    }

    #[test]
    fn damaged_webps_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12), cut in 0.2f64..1.0, lossy: bool) {
        let cfg = UploadConfig { max_side: 16, ..UploadConfig::default() };
        let mut bytes = if lossy {
            fixture("toy.webp")
        } else {
            encoded(&DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(textured_rgb(40, 24)).to_rgba8()), ImageFormat::WebP)
        };
        // Past the RIFF header, which is refused outright when it is damaged.
        for (at, value) in flips {
            let i = 12 + at.index(bytes.len() - 12);
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
