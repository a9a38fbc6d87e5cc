//! The closed surface: the inside polygons of every cell, once at the front (raised by
//! the inflation height) and once at the back (lowered by it), joined along the outline
//! where both use the very same rim vertices. That sharing is what makes the mesh
//! watertight: every outline segment borders exactly one front and one back triangle.

use crate::contour::{Edge, Point};
use crate::grid::Grid;

/// A triangle mesh ready for encoding: unit-cube sized, centred on the origin.
#[derive(Debug, Clone)]
pub(crate) struct Mesh {
    pub positions: Vec<[f32; 3]>,
    /// Unit length, area-weighted averages of the faces around each vertex.
    pub normals: Vec<[f32; 3]>,
    pub uvs: Vec<[f32; 2]>,
    /// Counter-clockwise seen from outside. The front sheet's triangles come first.
    pub indices: Vec<u32>,
    /// How many of the triangles, from the first, make the front sheet: the surface
    /// facing the camera, whose texture coordinates are one-to-one with the picture
    /// (the back sheet reuses them mirrored, so the position map draws the front only).
    pub front_triangles: usize,
}

impl Mesh {
    pub fn triangle_count(&self) -> usize {
        self.indices.len() / 3
    }

    pub fn bounds(&self) -> ([f32; 3], [f32; 3]) {
        let mut min = [f32::INFINITY; 3];
        let mut max = [f32::NEG_INFINITY; 3];
        for p in &self.positions {
            for axis in 0..3 {
                min[axis] = min[axis].min(p[axis]);
                max[axis] = max[axis].max(p[axis]);
            }
        }
        (min, max)
    }
}

/// How many triangles [`build`] would make from `grid`, without making them: the
/// resolution is lowered until this fits the budget.
pub(crate) fn count_triangles(grid: &Grid) -> usize {
    let mut count = 0;
    for j in 0..grid.ny - 1 {
        for i in 0..grid.nx - 1 {
            grid.for_each_polygon(i, j, |polygon| count += 2 * (polygon.len() - 2));
        }
    }
    count
}

const NONE: u32 = u32::MAX;

/// Builds the closed mesh. `heights` holds the inflation per node (grid units);
/// `uv` maps a grid-coordinate point to its texture coordinate.
pub(crate) fn build(grid: &Grid, heights: &[f32], uv: impl Fn([f64; 2]) -> [f32; 2]) -> Mesh {
    let nodes = grid.values.len();
    let mut points: Vec<[f64; 3]> = Vec::new();
    let mut uvs: Vec<[f32; 2]> = Vec::new();
    let mut add = |at: [f64; 2], z: f64| {
        points.push([at[0], -at[1], z]);
        uvs.push(uv(at));
        (points.len() - 1) as u32
    };

    let mut front = vec![NONE; nodes];
    let mut back = vec![NONE; nodes];
    for node in (0..nodes).filter(|&n| grid.inside(n)) {
        front[node] = add(grid.node_position(node), f64::from(heights[node]));
    }
    for node in (0..nodes).filter(|&n| grid.inside(n)) {
        back[node] = add(grid.node_position(node), -f64::from(heights[node]));
    }
    let mut rim_right = vec![NONE; nodes];
    let mut rim_down = vec![NONE; nodes];
    for node in 0..nodes {
        let (i, j) = (node % grid.nx, node / grid.nx);
        if i + 1 < grid.nx && grid.inside(node) != grid.inside(node + 1) {
            let edge = Edge { node, horizontal: true };
            rim_right[node] = add(grid.crossing_position(edge), 0.0);
        }
        if j + 1 < grid.ny && grid.inside(node) != grid.inside(node + grid.nx) {
            let edge = Edge { node, horizontal: false };
            rim_down[node] = add(grid.crossing_position(edge), 0.0);
        }
    }

    let mut indices = Vec::new();
    let mut back_indices = Vec::new();
    let mut front_ids = Vec::with_capacity(6);
    let mut back_ids = Vec::with_capacity(6);
    for j in 0..grid.ny - 1 {
        for i in 0..grid.nx - 1 {
            grid.for_each_polygon(i, j, |polygon| {
                front_ids.clear();
                back_ids.clear();
                for &point in polygon {
                    let (f, b) = match point {
                        Point::Node(n) => (front[n], back[n]),
                        Point::Crossing(e) => {
                            let rim = if e.horizontal { rim_right[e.node] } else { rim_down[e.node] };
                            (rim, rim)
                        }
                    };
                    front_ids.push(f);
                    back_ids.push(b);
                }
                // Polygons come clockwise as the picture is seen, and the front is seen
                // from +z the same way up: front triangles reverse the order to face
                // outwards (counter-clockwise), back ones keep it (counter-clockwise
                // when seen from behind).
                for k in 1..polygon.len() - 1 {
                    indices.extend_from_slice(&[front_ids[0], front_ids[k + 1], front_ids[k]]);
                    back_indices.extend_from_slice(&[back_ids[0], back_ids[k], back_ids[k + 1]]);
                }
            });
        }
    }

    let front_triangles = indices.len() / 3;
    indices.append(&mut back_indices);

    fit_unit_cube(&mut points);
    let normals = vertex_normals(&points, &indices);
    let positions = points.iter().map(|p| p.map(|c| (c as f32).clamp(-0.5, 0.5))).collect();
    Mesh { positions, normals, uvs, indices, front_triangles }
}

/// Centres the points on the origin and scales them so the longest side is 1.
fn fit_unit_cube(points: &mut [[f64; 3]]) {
    let mut min = [f64::INFINITY; 3];
    let mut max = [f64::NEG_INFINITY; 3];
    for p in points.iter() {
        for axis in 0..3 {
            min[axis] = min[axis].min(p[axis]);
            max[axis] = max[axis].max(p[axis]);
        }
    }
    let extent = (0..3).map(|a| max[a] - min[a]).fold(0.0, f64::max);
    let scale = if extent > 0.0 { 1.0 / extent } else { 1.0 };
    let centre = [0, 1, 2].map(|a| (min[a] + max[a]) / 2.0);
    for p in points.iter_mut() {
        for axis in 0..3 {
            p[axis] = (p[axis] - centre[axis]) * scale;
        }
    }
}

/// Sum of the (area-weighted) face normals around each vertex, normalised.
fn vertex_normals(points: &[[f64; 3]], indices: &[u32]) -> Vec<[f32; 3]> {
    let mut sums = vec![[0.0f64; 3]; points.len()];
    for triangle in indices.chunks_exact(3) {
        let [a, b, c] = [0, 1, 2].map(|k| points[triangle[k] as usize]);
        let (u, v) = (sub(b, a), sub(c, a));
        let n = [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]];
        for &vertex in triangle {
            for axis in 0..3 {
                sums[vertex as usize][axis] += n[axis];
            }
        }
    }
    sums.iter()
        .map(|s| {
            let length = (s[0] * s[0] + s[1] * s[1] + s[2] * s[2]).sqrt();
            if length > 0.0 { s.map(|c| (c / length) as f32) } else { [0.0, 0.0, 1.0] }
        })
        .collect()
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::field;

    fn grid_from(rows: &[&str]) -> Grid {
        let nx = rows[0].len();
        let values = rows.iter().flat_map(|r| r.chars().map(|c| if c == '#' { 0.9 } else { 0.1 })).collect();
        Grid { nx, ny: rows.len(), origin: [0.0, 0.0], step: 1.0, values }
    }

    fn build_from(rows: &[&str]) -> Mesh {
        let grid = grid_from(rows);
        let heights = field::heights(&grid, 0.5);
        build(&grid, &heights, |p| [p[0] as f32, p[1] as f32])
    }

    /// Every directed edge once and its reverse once: closed, manifold along edges and
    /// consistently wound.
    fn assert_closed(mesh: &Mesh) {
        let mut directed: BTreeMap<(u32, u32), usize> = BTreeMap::new();
        for t in mesh.indices.chunks_exact(3) {
            for k in 0..3 {
                *directed.entry((t[k], t[(k + 1) % 3])).or_default() += 1;
            }
        }
        for (&(a, b), &count) in &directed {
            assert_eq!(count, 1, "edge {a}->{b} used {count} times");
            assert_eq!(directed.get(&(b, a)), Some(&1), "edge {a}->{b} has no twin");
        }
    }

    fn euler_characteristic(mesh: &Mesh) -> i64 {
        let edges = mesh.indices.len() / 2;
        mesh.positions.len() as i64 - edges as i64 + mesh.triangle_count() as i64
    }

    fn signed_volume(mesh: &Mesh) -> f64 {
        mesh.indices
            .chunks_exact(3)
            .map(|t| {
                let [a, b, c] = [0, 1, 2].map(|k| mesh.positions[t[k] as usize].map(f64::from));
                a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
                    + a[2] * (b[0] * c[1] - b[1] * c[0])
            })
            .sum::<f64>()
            / 6.0
    }

    const RING: [&str; 9] = [
        "...........",
        ".#########.",
        ".#########.",
        ".##.....##.",
        ".##.....##.",
        ".##.....##.",
        ".#########.",
        ".#########.",
        "...........",
    ];

    #[test]
    fn blob_is_a_closed_sphere_facing_outwards() {
        let mesh = build_from(&[".......", ".#####.", ".#####.", ".#####.", "......."]);
        assert_closed(&mesh);
        assert_eq!(euler_characteristic(&mesh), 2);
        assert!(signed_volume(&mesh) > 0.0, "normals point inwards");
        assert_eq!(
            count_triangles(&grid_from(&[".......", ".#####.", ".#####.", ".#####.", "......."])),
            mesh.triangle_count()
        );
        let (min, max) = mesh.bounds();
        let longest = (0..3).map(|a| max[a] - min[a]).fold(0.0, f32::max);
        assert!((longest - 1.0).abs() < 1e-5);
        for a in 0..3 {
            assert!(min[a] >= -0.5 && max[a] <= 0.5);
            assert!((min[a] + max[a]).abs() < 1e-5, "not centred on axis {a}");
        }
    }

    #[test]
    fn front_faces_look_forward_and_back_faces_backward() {
        let mesh = build_from(&[".......", ".#####.", ".#####.", ".#####.", "......."]);
        let top = mesh.positions.iter().enumerate().max_by(|a, b| a.1[2].total_cmp(&b.1[2]));
        let bottom = mesh.positions.iter().enumerate().min_by(|a, b| a.1[2].total_cmp(&b.1[2]));
        let (top, bottom) = (top.expect("vertices").0, bottom.expect("vertices").0);
        assert!(mesh.normals[top][2] > 0.9);
        assert!(mesh.normals[bottom][2] < -0.9);
        for n in &mesh.normals {
            let length = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
            assert!((length - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn the_front_sheet_comes_first_and_faces_the_camera() {
        let mesh = build_from(&RING);
        assert_eq!(2 * mesh.front_triangles, mesh.triangle_count(), "one front and one back per polygon");
        for (k, t) in mesh.indices.chunks_exact(3).enumerate() {
            let [a, b, c] = [0, 1, 2].map(|i| mesh.positions[t[i] as usize].map(f64::from));
            let (u, v) = (sub(b, a), sub(c, a));
            let facing = u[0] * v[1] - u[1] * v[0];
            let z = a[2] + b[2] + c[2];
            if k < mesh.front_triangles {
                assert!(facing > 0.0 && z > 0.0, "front triangle {k} faces away or lies behind");
            } else {
                assert!(facing < 0.0 && z < 0.0, "back triangle {k} faces the camera or lies in front");
            }
        }
    }

    #[test]
    fn ring_keeps_its_hole_as_a_torus() {
        let mesh = build_from(&RING);
        assert_closed(&mesh);
        assert_eq!(euler_characteristic(&mesh), 0);
        assert!(signed_volume(&mesh) > 0.0);
    }

    #[test]
    fn diagonal_touches_and_thin_lines_stay_manifold() {
        let mesh = build_from(&[
            "..........",
            ".#...#....",
            "..#.#..#..",
            "...#...#..",
            "..#.#..#..",
            ".#...#.##.",
            "..........",
        ]);
        assert_closed(&mesh);
    }
}
