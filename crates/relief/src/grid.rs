//! The sampling grid the shape is built on: the object's mask averaged into a padded
//! lattice of nodes, giving a smooth coverage field whose 0.5 level is the outline.

use crate::segment::Mask;

/// Coverage at or above this level is inside the object.
pub(crate) const ISO: f32 = 0.5;
/// How far node values are kept from [`ISO`].
const LEVEL_MARGIN: f32 = 0.01;
/// Empty nodes around the object, so the outline never reaches the grid's edge and
/// every contour closes.
pub(crate) const PAD: usize = 2;

/// Object coverage sampled on a regular lattice of nodes.
#[derive(Debug, Clone)]
pub(crate) struct Grid {
    pub nx: usize,
    pub ny: usize,
    /// Working-picture position (pixels) of node (0, 0).
    pub origin: [f64; 2],
    /// Working pixels between neighbouring nodes.
    pub step: f64,
    /// Coverage per node in 0..=1, row-major.
    pub values: Vec<f32>,
}

impl Grid {
    /// Samples `mask` with `cells` cells across the longest side of `bounds` (fewer if
    /// the object is smaller than that in pixels: a cell finer than a pixel adds no
    /// detail, only triangles).
    pub fn sample(mask: &Mask, bounds: [usize; 4], cells: u32) -> Grid {
        let [x0, y0, x1, y1] = bounds;
        let (width, height) = ((x1 - x0) as f64, (y1 - y0) as f64);
        let longest = width.max(height);
        let cells = f64::from(cells).min(longest).max(1.0);
        let step = longest / cells;
        let inner = |extent: f64| (extent / step - 1e-9).ceil().max(1.0) as usize + 1;
        let (inner_x, inner_y) = (inner(width), inner(height));
        let centre = [(x0 + x1) as f64 / 2.0, (y0 + y1) as f64 / 2.0];
        let origin = [
            centre[0] - ((inner_x - 1) as f64 / 2.0 + PAD as f64) * step,
            centre[1] - ((inner_y - 1) as f64 / 2.0 + PAD as f64) * step,
        ];
        let (nx, ny) = (inner_x + 2 * PAD, inner_y + 2 * PAD);

        let table = SummedArea::new(mask);
        let half = step / 2.0;
        let mut values = Vec::with_capacity(nx * ny);
        for j in 0..ny {
            for i in 0..nx {
                let x = origin[0] + i as f64 * step;
                let y = origin[1] + j as f64 * step;
                let covered = table.sum(x - half, y - half, x + half, y + half);
                values.push((covered / (step * step)).clamp(0.0, 1.0) as f32);
            }
        }
        let mut grid = Grid { nx, ny, origin, step, values };
        grid.blur();
        grid.clear_frame();
        grid.keep_off_the_level();
        grid
    }

    #[cfg(test)]
    pub fn index(&self, i: usize, j: usize) -> usize {
        j * self.nx + i
    }

    pub fn inside(&self, index: usize) -> bool {
        self.values[index] >= ISO
    }

    /// Working-picture position of a point given in grid units.
    pub fn to_picture(&self, point: [f64; 2]) -> [f64; 2] {
        [self.origin[0] + point[0] * self.step, self.origin[1] + point[1] * self.step]
    }

    /// A light [1 2 1] blur: box-averaged pixels still carry the mask's pixel steps,
    /// and this rounds them off so the 0.5 level runs smoothly between nodes.
    fn blur(&mut self) {
        let (nx, ny) = (self.nx, self.ny);
        let mut rows = vec![0.0f32; nx * ny];
        for j in 0..ny {
            for i in 0..nx {
                let at = |i: usize| self.values[j * nx + i];
                let left = if i > 0 { at(i - 1) } else { 0.0 };
                let right = if i + 1 < nx { at(i + 1) } else { 0.0 };
                rows[j * nx + i] = (left + 2.0 * at(i) + right) / 4.0;
            }
        }
        for j in 0..ny {
            for i in 0..nx {
                let at = |j: usize| rows[j * nx + i];
                let up = if j > 0 { at(j - 1) } else { 0.0 };
                let down = if j + 1 < ny { at(j + 1) } else { 0.0 };
                self.values[j * nx + i] = (up + 2.0 * at(j) + down) / 4.0;
            }
        }
    }

    /// Straight edges aligned with the grid put nodes exactly on the 0.5 level, where
    /// the outline would pass through the node itself and leave zero-area triangles.
    /// Nudging such values a little to their side keeps every crossing inside its edge.
    fn keep_off_the_level(&mut self) {
        for v in &mut self.values {
            if (*v - ISO).abs() < LEVEL_MARGIN {
                *v = if *v >= ISO { ISO + LEVEL_MARGIN } else { ISO - LEVEL_MARGIN };
            }
        }
    }

    /// The padding makes the frame empty already; this makes it certain, since the
    /// meshing relies on it.
    fn clear_frame(&mut self) {
        let (nx, ny) = (self.nx, self.ny);
        for j in 0..ny {
            for i in 0..nx {
                if i == 0 || j == 0 || i + 1 == nx || j + 1 == ny {
                    self.values[j * nx + i] = 0.0;
                }
            }
        }
    }
}

/// Summed-area table of the mask, read with bilinear interpolation: for a mask that is
/// constant per pixel this gives the exact covered area of any axis-aligned box, even
/// with fractional corners, so the grid is an exact area average at any cell size.
struct SummedArea {
    width: usize,
    height: usize,
    sums: Vec<u32>,
}

impl SummedArea {
    fn new(mask: &Mask) -> SummedArea {
        let (w, h) = (mask.width, mask.height);
        let mut sums = vec![0u32; (w + 1) * (h + 1)];
        for y in 0..h {
            let mut row = 0u32;
            for x in 0..w {
                row += u32::from(mask.inside[y * w + x]);
                sums[(y + 1) * (w + 1) + x + 1] = sums[y * (w + 1) + x + 1] + row;
            }
        }
        SummedArea { width: w, height: h, sums }
    }

    /// Covered area in the box; the picture outside the frame counts as empty.
    fn sum(&self, x0: f64, y0: f64, x1: f64, y1: f64) -> f64 {
        self.at(x1, y1) - self.at(x0, y1) - self.at(x1, y0) + self.at(x0, y0)
    }

    fn at(&self, x: f64, y: f64) -> f64 {
        let (w, h) = (self.width, self.height);
        let x = x.clamp(0.0, w as f64);
        let y = y.clamp(0.0, h as f64);
        let ix = (x.floor() as usize).min(w.saturating_sub(1));
        let iy = (y.floor() as usize).min(h.saturating_sub(1));
        let (fx, fy) = (x - ix as f64, y - iy as f64);
        let s = |x: usize, y: usize| f64::from(self.sums[y * (w + 1) + x]);
        let (x1, y1) = ((ix + 1).min(w), (iy + 1).min(h));
        s(ix, iy) * (1.0 - fx) * (1.0 - fy)
            + s(x1, iy) * fx * (1.0 - fy)
            + s(ix, y1) * (1.0 - fx) * fy
            + s(x1, y1) * fx * fy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square_mask(size: usize, from: usize, to: usize) -> Mask {
        let inside = (0..size * size)
            .map(|k| {
                let (x, y) = (k % size, k / size);
                (from..to).contains(&x) && (from..to).contains(&y)
            })
            .collect();
        Mask { width: size, height: size, inside }
    }

    #[test]
    fn summed_area_gives_fractional_areas() {
        let mask = square_mask(10, 2, 6);
        let table = SummedArea::new(&mask);
        assert!((table.sum(0.0, 0.0, 10.0, 10.0) - 16.0).abs() < 1e-9);
        assert!((table.sum(1.5, 1.5, 2.5, 2.5) - 0.25).abs() < 1e-9);
        assert!((table.sum(-5.0, -5.0, 15.0, 15.0) - 16.0).abs() < 1e-9);
    }

    #[test]
    fn grid_is_padded_and_follows_the_object() {
        let mask = square_mask(100, 20, 80);
        let grid = Grid::sample(&mask, [20, 20, 80, 80], 30);
        assert_eq!((grid.nx, grid.ny), (31 + 2 * PAD, 31 + 2 * PAD));
        assert!((grid.step - 2.0).abs() < 1e-9);
        for j in 0..grid.ny {
            for i in 0..grid.nx {
                let edge = i == 0 || j == 0 || i + 1 == grid.nx || j + 1 == grid.ny;
                if edge {
                    assert_eq!(grid.values[grid.index(i, j)], 0.0);
                }
            }
        }
        let centre = grid.index(grid.nx / 2, grid.ny / 2);
        assert!(grid.inside(centre));
        // The node on the object's left edge sits on the outline: about half covered.
        let edge = grid.values[grid.index(PAD, grid.ny / 2)];
        assert!((0.45..0.55).contains(&edge), "edge coverage {edge}");
        let picture = grid.to_picture([PAD as f64, PAD as f64]);
        assert!((picture[0] - 20.0).abs() < 1e-9 && (picture[1] - 20.0).abs() < 1e-9);
    }

    #[test]
    fn tiny_objects_get_no_more_cells_than_pixels() {
        let mask = square_mask(20, 5, 9);
        let grid = Grid::sample(&mask, [5, 5, 9, 9], 192);
        assert!((grid.step - 1.0).abs() < 1e-9);
        assert_eq!(grid.nx, 5 + 2 * PAD);
    }
}
