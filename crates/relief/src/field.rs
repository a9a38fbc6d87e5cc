//! The inflation: how high the surface stands above each inside node. Height comes from
//! the Euclidean distance to the outline through a circular profile whose radius is the
//! local half-width of the object (the largest inscribed disc containing the point), so
//! cross-sections are rounded arcs: thin parts stay thin and wide parts bulge. The
//! distance has creases along the object's medial axis (the diagonals of a square);
//! a Poisson smoothing of the interior rounds them off while the rim keeps its exact,
//! steep profile.

use crate::contour::Point;
use crate::grid::Grid;

/// Passes of neighbour averaging applied to the local radius, so the profile changes
/// gradually where a thin part meets a wide one.
const RADIUS_SMOOTHING_PASSES: usize = 3;
/// Gauss-Seidel sweeps that round off the medial-axis creases (see [`smooth_creases`]).
const SMOOTHING_SWEEPS: usize = 60;
/// Over-relaxation factor: near 2 spreads a correction across the grid in a number of
/// sweeps proportional to its width rather than to its area.
const OVER_RELAXATION: f32 = 1.9;
/// The window the squared height's Laplacian is clamped to (see [`smooth_creases`]).
/// A round profile's lies in [-4, -2], but second differences of the computed height
/// scatter by about 2 either way (the distance is exact only to a small fraction of a
/// cell), so the low end leaves room: clamping at -4 flattens a disc's dome by 7 %.
const LOWEST_LAPLACIAN: f32 = -6.0;
const HIGHEST_LAPLACIAN: f32 = -2.0;
/// Nodes nearer the outline than this (grid units) keep their exact profile: that is
/// where the surface turns vertical, and where averaging would flatten it most.
const RIM_BAND: f32 = 1.5;

/// Height of the surface at each node, in grid units; zero outside the object.
/// `depth` is the thickness front to back relative to the local width.
pub(crate) fn heights(grid: &Grid, depth: f32) -> Vec<f32> {
    let distance = outline_distance(grid);
    let radius = local_radius(grid, &distance);
    // Squared height: a circle of radius r through the outline, d (2r - d), which is
    // zero at the edge and r^2 in the middle. Squared, the profile is smooth at the
    // rim (linear in d), so relaxing it there is well behaved.
    let mut squared: Vec<f32> = (0..grid.values.len())
        .map(|node| {
            if !grid.inside(node) {
                return 0.0;
            }
            let d = distance[node];
            let r = radius[node].max(d);
            (d * (2.0 * r - d)).max(0.0)
        })
        .collect();
    let free: Vec<usize> =
        (0..grid.values.len()).filter(|&node| grid.inside(node) && distance[node] >= RIM_BAND).collect();
    smooth_creases(grid, &mut squared, &free);
    squared.iter().map(|&g| depth * g.max(0.0).sqrt()).collect()
}

/// Removes the creases while keeping the rounded profile everywhere else.
///
/// A round cross-section's squared height has a Laplacian between -4 (inside a disc)
/// and -2 (across a long strip), whatever the size. A ridge along the medial axis has
/// one far below that, and a fold where the local radius jumps (where a thin part
/// meets a wide one) one far above. So the squared height is made to solve the Poisson
/// equation whose right-hand side is its own Laplacian clamped to a window around that
/// range: little changes where it was smooth, ridges round off and folds fill in. The
/// rim band keeps its exact values as the boundary condition. Over-relaxed
/// Gauss-Seidel sweeps, in a fixed order (so the result is deterministic), solve it
/// well enough to smooth creases over most of the object's width.
fn smooth_creases(grid: &Grid, squared: &mut [f32], free: &[usize]) {
    let nx = grid.nx;
    // Free nodes are at least RIM_BAND inside, so never on the frame: every neighbour exists.
    let laplacian = |g: &[f32], p: usize| g[p - 1] + g[p + 1] + g[p - nx] + g[p + nx] - 4.0 * g[p];
    let target: Vec<f32> =
        free.iter().map(|&p| laplacian(squared, p).clamp(LOWEST_LAPLACIAN, HIGHEST_LAPLACIAN)).collect();
    for _ in 0..SMOOTHING_SWEEPS {
        for (&p, &t) in free.iter().zip(&target) {
            let solved = (squared[p - 1] + squared[p + 1] + squared[p - nx] + squared[p + nx] - t) / 4.0;
            squared[p] += OVER_RELAXATION * (solved - squared[p]);
        }
    }
}

/// Euclidean distance from each inside node to the outline, in grid units.
///
/// Nodes at the outline get the exact nearest point of their cells' marching-squares
/// segments; every other node then takes, among its neighbours' nearest points, the
/// one nearest to itself (vector propagation in raster sweeps). The result is exact
/// but for rare, small fractions of a cell, and sub-cell accurate at the rim, where
/// the rounded profile is steepest and an error would show as a ripple.
fn outline_distance(grid: &Grid) -> Vec<f32> {
    let (nx, ny) = (grid.nx, grid.ny);
    let mut nearest: Vec<Option<[f64; 2]>> = vec![None; nx * ny];
    let mut best = vec![f64::INFINITY; nx * ny];
    let mut segments: Vec<[[f64; 2]; 2]> = Vec::new();
    for j in 0..ny - 1 {
        for i in 0..nx - 1 {
            segments.clear();
            grid.for_each_polygon(i, j, |polygon| {
                for k in 0..polygon.len() {
                    let (a, b) = (polygon[k], polygon[(k + 1) % polygon.len()]);
                    if let (Point::Crossing(_), Point::Crossing(_)) = (a, b) {
                        segments.push([grid.point_position(a), grid.point_position(b)]);
                    }
                }
            });
            let top_left = j * nx + i;
            for node in [top_left, top_left + 1, top_left + nx, top_left + nx + 1] {
                let p = grid.node_position(node);
                for segment in &segments {
                    let c = closest_on_segment(p, *segment);
                    let d = squared_distance(p, c);
                    if d < best[node] {
                        best[node] = d;
                        nearest[node] = Some(c);
                    }
                }
            }
        }
    }
    sweep(nx, ny, |p, n| {
        if let Some(c) = nearest[n] {
            let d = squared_distance(node_at(p, nx), c);
            if d < best[p] {
                best[p] = d;
                nearest[p] = Some(c);
            }
        }
    });
    best.iter()
        .enumerate()
        .map(|(node, &d)| if grid.inside(node) && d.is_finite() { d.sqrt() as f32 } else { 0.0 })
        .collect()
}

fn node_at(node: usize, nx: usize) -> [f64; 2] {
    [(node % nx) as f64, (node / nx) as f64]
}

fn squared_distance(a: [f64; 2], b: [f64; 2]) -> f64 {
    let (dx, dy) = (a[0] - b[0], a[1] - b[1]);
    dx * dx + dy * dy
}

fn closest_on_segment(p: [f64; 2], [a, b]: [[f64; 2]; 2]) -> [f64; 2] {
    let (abx, aby) = (b[0] - a[0], b[1] - a[1]);
    let length = abx * abx + aby * aby;
    let t = if length > 0.0 { (((p[0] - a[0]) * abx + (p[1] - a[1]) * aby) / length).clamp(0.0, 1.0) } else { 0.0 };
    [a[0] + t * abx, a[1] + t * aby]
}

/// Calls `relax(p, n)` for every node p and each neighbour n already visited in the
/// current direction: two rounds of a down sweep and an up sweep, each with a return
/// pass along the row. Information flows this way along any mostly straight path,
/// which is how both a nearest outline point and a disc's extent spread.
fn sweep(nx: usize, ny: usize, mut relax: impl FnMut(usize, usize)) {
    for _ in 0..2 {
        for j in 0..ny {
            for i in 0..nx {
                let p = j * nx + i;
                if i > 0 {
                    relax(p, p - 1);
                }
                if j > 0 {
                    relax(p, p - nx);
                    if i > 0 {
                        relax(p, p - nx - 1);
                    }
                    if i + 1 < nx {
                        relax(p, p - nx + 1);
                    }
                }
            }
            for i in (0..nx - 1).rev() {
                relax(j * nx + i, j * nx + i + 1);
            }
        }
        for j in (0..ny).rev() {
            for i in (0..nx).rev() {
                let p = j * nx + i;
                if i + 1 < nx {
                    relax(p, p + 1);
                }
                if j + 1 < ny {
                    relax(p, p + nx);
                    if i + 1 < nx {
                        relax(p, p + nx + 1);
                    }
                    if i > 0 {
                        relax(p, p + nx - 1);
                    }
                }
            }
            for i in 1..nx {
                relax(j * nx + i, j * nx + i - 1);
            }
        }
    }
}

/// The local half-width at each inside node: the radius of the largest disc inside the
/// object that contains the node (the "local thickness"). Each node starts with its own
/// inscribed disc; larger discs spread from neighbour to neighbour as far as they
/// reach, and the result is smoothed a little.
fn local_radius(grid: &Grid, distance: &[f32]) -> Vec<f32> {
    let (nx, ny) = (grid.nx, grid.ny);
    let mut radius = distance.to_vec();
    let mut centre: Vec<[f32; 2]> = (0..nx * ny).map(|node| [(node % nx) as f32, (node / nx) as f32]).collect();
    sweep(nx, ny, |p, n| {
        if radius[n] <= radius[p] || !grid.inside(p) || !grid.inside(n) {
            return;
        }
        let c = centre[n];
        let (dx, dy) = ((p % nx) as f32 - c[0], (p / nx) as f32 - c[1]);
        // Half a cell of slack: a discrete path from a disc's centre to its rim
        // steps slightly outside the exact circle.
        let reach = radius[n] + 0.5;
        if dx * dx + dy * dy <= reach * reach {
            radius[p] = radius[n];
            centre[p] = c;
        }
    });
    for _ in 0..RADIUS_SMOOTHING_PASSES {
        radius = smooth_inside(grid, &radius);
    }
    radius
}

/// Average over the inside nodes of each inside node's 3x3 neighbourhood.
fn smooth_inside(grid: &Grid, values: &[f32]) -> Vec<f32> {
    let (nx, ny) = (grid.nx, grid.ny);
    let mut out = values.to_vec();
    for j in 1..ny - 1 {
        for i in 1..nx - 1 {
            let p = j * nx + i;
            if !grid.inside(p) {
                continue;
            }
            let (mut sum, mut count) = (0.0, 0.0);
            for n in [p - nx - 1, p - nx, p - nx + 1, p - 1, p, p + 1, p + nx - 1, p + nx, p + nx + 1] {
                if grid.inside(n) {
                    sum += values[n];
                    count += 1.0;
                }
            }
            out[p] = sum / count;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grid holding a disc of the given radius (in cells) around its centre.
    fn disc_grid(size: usize, r: f32) -> Grid {
        let c = (size - 1) as f32 / 2.0;
        let values = (0..size * size)
            .map(|k| {
                let (x, y) = ((k % size) as f32 - c, (k / size) as f32 - c);
                // Coverage falling linearly across one cell at the rim (clamping makes
                // the interpolated outline up to ~0.1 cell off the true circle).
                (r - (x * x + y * y).sqrt() + 0.5).clamp(0.0, 1.0)
            })
            .collect();
        Grid { nx: size, ny: size, origin: [0.0, 0.0], step: 1.0, values }
    }

    #[test]
    fn distance_is_close_to_euclidean() {
        let grid = disc_grid(61, 25.0);
        let distance = outline_distance(&grid);
        for (node, &d) in distance.iter().enumerate() {
            if !grid.inside(node) {
                continue;
            }
            let (x, y) = ((node % 61) as f32 - 30.0, (node / 61) as f32 - 30.0);
            let expected = 25.0 - (x * x + y * y).sqrt();
            assert!((d - expected).abs() < 0.2, "node ({x}, {y}): {d} vs {expected}");
        }
    }

    #[test]
    fn a_disc_inflates_to_a_hemisphere() {
        let grid = disc_grid(61, 25.0);
        let h = heights(&grid, 1.0);
        let centre = 30 * 61 + 30;
        assert!((h[centre] - 25.0).abs() < 1.0, "centre height {}", h[centre]);
        let halfway = 30 * 61 + 30 + 15;
        let expected = (25.0f32 * 25.0 - 15.0 * 15.0).sqrt();
        assert!((h[halfway] - expected).abs() < 1.5, "{} vs {expected}", h[halfway]);
        let flat = heights(&grid, 0.35);
        assert!((flat[centre] - 0.35 * h[centre]).abs() < 1e-3);
    }

    #[test]
    fn a_square_has_no_ridge_along_its_diagonals() {
        let n = 64;
        let values = (0..n * n)
            .map(|k| {
                let (x, y) = (k % n, k / n);
                if (4..60).contains(&x) && (4..60).contains(&y) { 1.0 } else { 0.0 }
            })
            .collect();
        let grid = Grid { nx: n, ny: n, origin: [0.0, 0.0], step: 1.0, values };
        let h = heights(&grid, 1.0);
        let at = |x: usize, y: usize| h[y * n + x];
        // Across the diagonal, a crease is a kink: a second difference of -1.65, -0.92
        // and -0.41 at these places without the smoothing, about -0.2 with it.
        for i in [14, 20, 26] {
            let across = at(i - 1, i + 1) + at(i + 1, i - 1) - 2.0 * at(i, i);
            assert!(across > -0.3, "ridge at ({i}, {i}): second difference {across}");
        }
    }

    #[test]
    fn thin_parts_stay_thin_beside_wide_ones() {
        // A 40x40 block with a 4-cell-wide strip sticking out to the right.
        let (nx, ny) = (90, 50);
        let values = (0..nx * ny)
            .map(|k| {
                let (x, y) = (k % nx, k / nx);
                let block = (5..45).contains(&x) && (5..45).contains(&y);
                let strip = (45..85).contains(&x) && (23..27).contains(&y);
                if block || strip { 1.0 } else { 0.0 }
            })
            .collect();
        let grid = Grid { nx, ny, origin: [0.0, 0.0], step: 1.0, values };
        let h = heights(&grid, 1.0);
        let strip_middle = 25 * nx + 70;
        let block_middle = 25 * nx + 25;
        assert!(h[strip_middle] < 3.0, "strip height {}", h[strip_middle]);
        assert!(h[block_middle] > 15.0, "block height {}", h[block_middle]);
    }
}
