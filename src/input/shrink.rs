//! Box-filter shrinking fed pixel by pixel or row by row, so a picture being scaled down
//! never has to sit in memory whole. Each output pixel averages the whole source pixels
//! it covers, with the same rounding as `image`'s `thumbnail` (which the stored pictures
//! were made with before), so the two agree to within a step of rounding at box edges.

use image::DynamicImage;

/// Which output column (or row) each source column (or row) falls in: output `o` covers
/// the sources from `ceil(o · src / dst)` up to the next output's start. Only for
/// shrinking (`dst ≤ src`), where no output is left without sources.
fn boxes(src: u32, dst: u32) -> (Vec<u32>, Vec<u32>) {
    let start = |o: u32| ((u64::from(o) * u64::from(src)).div_ceil(u64::from(dst))) as u32;
    let mut owner = Vec::with_capacity(src as usize);
    let mut sizes = Vec::with_capacity(dst as usize);
    for o in 0..dst {
        let (from, to) = (start(o), start(o + 1).min(src));
        sizes.push(to - from);
        owner.extend(std::iter::repeat_n(o, (to - from) as usize));
    }
    (owner, sizes)
}

fn average(sum: u32, count: u32) -> u8 {
    ((sum + count / 2) / count.max(1)).min(255) as u8
}

/// Builds the picture from 8-bit samples of `channels` per pixel (1 to 4).
pub(super) fn to_image(width: u32, height: u32, channels: usize, pixels: Vec<u8>) -> Option<DynamicImage> {
    match channels {
        1 => image::GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8),
        2 => image::GrayAlphaImage::from_raw(width, height, pixels).map(DynamicImage::ImageLumaA8),
        3 => image::RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8),
        4 => image::RgbaImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgba8),
        _ => None,
    }
}

/// Shrinks rows that arrive top to bottom: one output row of sums at a time.
pub(super) struct RowShrinker {
    dst: (u32, u32),
    channels: usize,
    columns: Vec<u32>,
    column_sizes: Vec<u32>,
    rows: Vec<u32>,
    row_sizes: Vec<u32>,
    sums: Vec<u32>,
    out: Vec<u8>,
    next_row: u32,
}

impl RowShrinker {
    pub(super) fn new(src: (u32, u32), dst: (u32, u32), channels: usize) -> Self {
        let (columns, column_sizes) = boxes(src.0, dst.0);
        let (rows, row_sizes) = boxes(src.1, dst.1);
        Self {
            dst,
            channels,
            columns,
            column_sizes,
            rows,
            row_sizes,
            sums: vec![0; dst.0 as usize * channels],
            out: Vec::with_capacity(dst.0 as usize * dst.1 as usize * channels),
            next_row: 0,
        }
    }

    /// Bytes this keeps besides its output.
    pub(super) fn working_bytes(src: (u32, u32), dst: (u32, u32), channels: usize) -> u64 {
        4 * (u64::from(src.0) + u64::from(src.1) + u64::from(dst.0) * channels as u64)
    }

    /// Adds source row `y` (rows must come in order).
    pub(super) fn push(&mut self, row: &[u8]) {
        let Some(&target) = self.rows.get(self.next_row as usize) else { return };
        for (pixel, &column) in row.chunks_exact(self.channels).zip(&self.columns) {
            let at = column as usize * self.channels;
            for (sum, &sample) in self.sums[at..at + self.channels].iter_mut().zip(pixel) {
                *sum += u32::from(sample);
            }
        }
        self.next_row += 1;
        // The last source row of this output row: emit it.
        if self.rows.get(self.next_row as usize) != Some(&target) {
            let height = self.row_sizes[target as usize];
            for (x, sums) in self.sums.chunks_exact_mut(self.channels).enumerate() {
                let count = self.column_sizes[x] * height;
                self.out.extend(sums.iter().map(|&s| average(s, count)));
                sums.fill(0);
            }
        }
    }

    pub(super) fn finish(self) -> Option<DynamicImage> {
        to_image(self.dst.0, self.dst.1, self.channels, self.out)
    }
}

/// Shrinks pixels that arrive in any order (the passes of an interlaced PNG): sums for
/// the whole output, 16 bits wide when no box can overflow them.
pub(super) struct GridShrinker {
    dst: (u32, u32),
    channels: usize,
    columns: Vec<u32>,
    column_sizes: Vec<u32>,
    rows: Vec<u32>,
    row_sizes: Vec<u32>,
    sums: Sums,
}

enum Sums {
    Narrow(Vec<u16>),
    Wide(Vec<u32>),
}

impl GridShrinker {
    /// Whether 16-bit sums hold every box: 257 samples of 255 still fit.
    fn narrow(src: (u32, u32), dst: (u32, u32)) -> bool {
        let widest = u64::from(src.0.div_ceil(dst.0.max(1)));
        let tallest = u64::from(src.1.div_ceil(dst.1.max(1)));
        widest * tallest <= 257
    }

    pub(super) fn working_bytes(src: (u32, u32), dst: (u32, u32), channels: usize) -> u64 {
        let per_sum = if Self::narrow(src, dst) { 2 } else { 4 };
        per_sum * u64::from(dst.0) * u64::from(dst.1) * channels as u64 + 4 * (u64::from(src.0) + u64::from(src.1))
    }

    pub(super) fn new(src: (u32, u32), dst: (u32, u32), channels: usize) -> Self {
        let (columns, column_sizes) = boxes(src.0, dst.0);
        let (rows, row_sizes) = boxes(src.1, dst.1);
        let len = dst.0 as usize * dst.1 as usize * channels;
        let sums = if Self::narrow(src, dst) { Sums::Narrow(vec![0; len]) } else { Sums::Wide(vec![0; len]) };
        Self { dst, channels, columns, column_sizes, rows, row_sizes, sums }
    }

    /// Adds `row`, whose pixels are the sources at `x0, x0 + dx, …` of row `y`.
    pub(super) fn push(&mut self, y: u32, x0: u32, dx: u32, row: &[u8]) {
        let Some(&out_row) = self.rows.get(y as usize) else { return };
        let base = out_row as usize * self.dst.0 as usize;
        let columns = self.columns.iter().skip(x0 as usize).step_by(dx.max(1) as usize);
        for (pixel, &column) in row.chunks_exact(self.channels).zip(columns) {
            let at = (base + column as usize) * self.channels;
            match &mut self.sums {
                Sums::Narrow(sums) => {
                    for (sum, &s) in sums[at..at + self.channels].iter_mut().zip(pixel) {
                        *sum += u16::from(s);
                    }
                }
                Sums::Wide(sums) => {
                    for (sum, &s) in sums[at..at + self.channels].iter_mut().zip(pixel) {
                        *sum += u32::from(s);
                    }
                }
            }
        }
    }

    pub(super) fn finish(self) -> Option<DynamicImage> {
        let width = self.dst.0 as usize * self.channels;
        let count = |i: usize| {
            let (x, y) = ((i % width) / self.channels, i / width);
            self.column_sizes[x] * self.row_sizes[y]
        };
        let out = match self.sums {
            Sums::Narrow(sums) => sums.iter().enumerate().map(|(i, &s)| average(u32::from(s), count(i))).collect(),
            Sums::Wide(sums) => sums.iter().enumerate().map(|(i, &s)| average(s, count(i))).collect(),
        };
        to_image(self.dst.0, self.dst.1, self.channels, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_cover_every_source_once() {
        for (src, dst) in [(6000, 2048), (10, 3), (7, 7), (2049, 2048), (40000, 2048), (5, 1)] {
            let (owner, sizes) = boxes(src, dst);
            assert_eq!(owner.len(), src as usize);
            assert_eq!(sizes.len(), dst as usize);
            assert!(sizes.iter().all(|&s| s >= 1), "{src}→{dst}");
            assert_eq!(sizes.iter().sum::<u32>(), src);
            assert!(owner.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1));
        }
    }
}
