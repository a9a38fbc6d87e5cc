//! Pictures made damaged on purpose (on top of `fixtures/images/invalid/`): cut short,
//! with lying headers or checksums, or unusual but valid encodings.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat};

use crate::common::fixture;

/// What a picture must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Refused with this status and code, on every face.
    Refused(u16, &'static str),
    /// Either stored or refused as a picture problem (400 with a picture code): the
    /// bytes are legal or borderline, and either answer is correct. Never a 5xx.
    Either,
}

/// The codes a picture refusal may carry.
pub const PICTURE_CODES: [&str; 5] =
    ["empty_file", "file_too_large", "unsupported_image_format", "corrupt_image", "image_too_many_pixels"];

pub struct Picture {
    pub name: String,
    pub bytes: Vec<u8>,
    pub verdict: Verdict,
}

fn picture(name: &str, bytes: Vec<u8>, verdict: Verdict) -> Picture {
    Picture { name: name.to_owned(), bytes, verdict }
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode a test picture");
    out.into_inner()
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG with its IHDR width and height replaced, the chunk's CRC made right again, so
/// only the declared size lies.
fn png_with_size(png: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut out = png.to_vec();
    // Signature (8), IHDR length (4), "IHDR" (4), then width and height.
    assert_eq!(&out[12..16], b"IHDR");
    out[16..20].copy_from_slice(&width.to_be_bytes());
    out[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&out[12..29]);
    out[29..33].copy_from_slice(&crc.to_be_bytes());
    out
}

/// A JPEG whose frame header (SOF0/SOF2) declares another size.
fn jpeg_with_size(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let at = out.windows(2).position(|w| w[0] == 0xFF && (w[1] == 0xC0 || w[1] == 0xC2)).expect("a JPEG frame header");
    // FF Cx, length (2), precision (1), height (2), width (2).
    out[at + 5..at + 7].copy_from_slice(&height.to_be_bytes());
    out[at + 7..at + 9].copy_from_slice(&width.to_be_bytes());
    out
}

/// The invalid fixtures, with the answers `docs/api.md` gives them.
pub fn invalid_fixtures() -> Vec<Picture> {
    use Verdict::Refused;
    let cases = [
        ("bomb-50000x50000.png", Refused(400, "image_too_many_pixels")),
        ("empty.jpg", Refused(400, "empty_file")),
        ("not-supported.gif", Refused(400, "unsupported_image_format")),
        ("over-10mb.png", Refused(413, "file_too_large")),
        ("text-named.png", Refused(400, "unsupported_image_format")),
        ("truncated.png", Refused(400, "corrupt_image")),
    ];
    let listed: Vec<String> = std::fs::read_dir(format!("{}/invalid", crate::common::FIXTURES))
        .expect("fixtures/images/invalid")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for name in &listed {
        assert!(
            cases.iter().any(|(n, _)| n == name),
            "fixtures/images/invalid/{name} is new: give it its expected answer here"
        );
    }
    cases.iter().map(|(name, verdict)| picture(name, fixture(&format!("invalid/{name}")), *verdict)).collect()
}

/// Damaged and unusual pictures made from the good fixtures.
pub fn generated() -> Vec<Picture> {
    use Verdict::{Either, Refused};
    let png = fixture("vase.png");
    let jpeg = fixture("mug.jpg");
    let webp = fixture("toy.webp");
    let vase = image::load_from_memory(&png).expect("vase.png decodes");
    let corrupt = Refused(400, "corrupt_image");
    let mut out = vec![
        picture("jpeg cut in half", jpeg[..jpeg.len() / 2].to_vec(), corrupt),
        picture("jpeg: markers only", jpeg[..jpeg.len().min(600)].to_vec(), corrupt),
        picture("jpeg: start-of-image only", vec![0xFF, 0xD8, 0xFF], corrupt),
        picture("png cut after the header", png[..33].to_vec(), corrupt),
        picture("png cut at 60%", png[..png.len() * 6 / 10].to_vec(), corrupt),
        picture("png signature then garbage", [&png[..8], &[0x42; 400][..]].concat(), corrupt),
        picture("png declaring width 0", png_with_size(&png, 0, 10), corrupt),
        picture(
            "png declaring 65535 x 65535",
            png_with_size(&png, 65_535, 65_535),
            Refused(400, "image_too_many_pixels"),
        ),
        picture(
            "jpeg declaring 65500 x 65500",
            jpeg_with_size(&jpeg, 65_500, 65_500),
            Refused(400, "image_too_many_pixels"),
        ),
        picture("webp cut in half", webp[..webp.len() / 2].to_vec(), corrupt),
        picture("webp: RIFF header only", webp[..12].to_vec(), corrupt),
    ];
    // A RIFF length that does not match the file: longer, then shorter than the data.
    let mut longer = webp.clone();
    longer[4..8].copy_from_slice(&(webp.len() as u32 + 10_000).to_le_bytes());
    out.push(picture("webp with a RIFF length past the end", longer, Either));
    let mut shorter = webp.clone();
    shorter[4..8].copy_from_slice(&100u32.to_le_bytes());
    out.push(picture("webp with a RIFF length of 100", shorter, Either));
    // A flipped byte inside the image data: the chunk CRC no longer matches.
    let mut flipped = png.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xFF;
    out.push(picture("png with a damaged data chunk", flipped, Either));
    // Legal, less common encodings: 16 bits per channel, grey, alpha, 1 x 1.
    out.push(picture(
        "png, 16 bits per channel",
        encode(&DynamicImage::ImageRgb16(vase.to_rgb16()), ImageFormat::Png),
        Either,
    ));
    out.push(picture(
        "png, 16-bit grey with alpha",
        encode(&DynamicImage::ImageLumaA16(vase.to_luma_alpha16()), ImageFormat::Png),
        Either,
    ));
    out.push(picture("png, 8-bit grey", encode(&DynamicImage::ImageLuma8(vase.to_luma8()), ImageFormat::Png), Either));
    out.push(picture("png, 1 x 1", encode(&DynamicImage::new_rgba8(1, 1), ImageFormat::Png), Either));
    out.push(picture("webp, lossless re-encoding", encode(&vase, ImageFormat::WebP), Either));
    out
}
