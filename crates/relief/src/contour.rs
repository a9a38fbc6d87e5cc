//! Marching squares: how each grid cell is cut by the outline. Both the distance field
//! (which needs the outline's exact position) and the mesh (which needs the inside
//! polygons) read the same cut, so they always agree.

use crate::grid::{Grid, ISO};

/// A grid edge, from `node` to its right neighbour (`horizontal`) or the one below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edge {
    pub node: usize,
    pub horizontal: bool,
}

/// A corner of an inside polygon: a grid node, or where the outline crosses an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    Node(usize),
    Crossing(Edge),
}

/// Crossings are kept this far (in edge lengths) from either end so no triangle
/// degenerates, whatever the node values.
const MIN_OFFSET: f64 = 0.005;

impl Grid {
    /// Grid coordinates of a node.
    pub fn node_position(&self, node: usize) -> [f64; 2] {
        [(node % self.nx) as f64, (node / self.nx) as f64]
    }

    /// Grid coordinates where the outline crosses `edge` (linear interpolation of the
    /// coverage, which is what puts the outline between nodes rather than on them).
    pub fn crossing_position(&self, edge: Edge) -> [f64; 2] {
        let other = if edge.horizontal { edge.node + 1 } else { edge.node + self.nx };
        let (a, b) = (self.values[edge.node], self.values[other]);
        let t = if a == b { 0.5 } else { f64::from((ISO - a) / (b - a)).clamp(MIN_OFFSET, 1.0 - MIN_OFFSET) };
        let [x, y] = self.node_position(edge.node);
        if edge.horizontal { [x + t, y] } else { [x, y + t] }
    }

    pub fn point_position(&self, point: Point) -> [f64; 2] {
        match point {
            Point::Node(node) => self.node_position(node),
            Point::Crossing(edge) => self.crossing_position(edge),
        }
    }

    /// Calls `polygon` with each inside polygon of cell (i, j) (its top-left node),
    /// listed clockwise as seen in the picture (x right, y down) and starting at a
    /// node. Every polygon is convex: the cell square with corners cut off by straight
    /// lines.
    pub fn for_each_polygon(&self, i: usize, j: usize, mut polygon: impl FnMut(&[Point])) {
        let nx = self.nx;
        let top_left = j * nx + i;
        let corners = [top_left, top_left + 1, top_left + nx + 1, top_left + nx];
        let inside = corners.map(|c| self.inside(c));
        let count = inside.iter().filter(|&&b| b).count();
        if count == 0 {
            return;
        }
        let nodes = corners.map(Point::Node);
        if count == 4 {
            polygon(&nodes);
            return;
        }
        // Edge k joins corner k to corner k + 1, walking clockwise.
        let edges = [
            Edge { node: corners[0], horizontal: true },
            Edge { node: corners[1], horizontal: false },
            Edge { node: corners[3], horizontal: true },
            Edge { node: corners[0], horizontal: false },
        ]
        .map(Point::Crossing);
        let saddle = inside == [true, false, true, false] || inside == [false, true, false, true];
        if saddle {
            let mean = corners.iter().map(|&c| self.values[c]).sum::<f32>() / 4.0;
            if mean < ISO {
                // The cell's centre is outside: the two inside corners are separate.
                for k in (0..4).filter(|&k| inside[k]) {
                    polygon(&[nodes[k], edges[k], edges[(k + 3) % 4]]);
                }
                return;
            }
        }
        // Starting at an inside corner makes it the apex of the caller's triangle fan,
        // so no fan diagonal joins two outline points: such a diagonal would be shared
        // by the front and the back and break the surface.
        let start = inside.iter().position(|&b| b).unwrap_or(0);
        let mut points = [Point::Node(0); 6];
        let mut len = 0;
        for k in (start..start + 4).map(|k| k % 4) {
            if inside[k] {
                points[len] = nodes[k];
                len += 1;
            }
            if inside[k] != inside[(k + 1) % 4] {
                points[len] = edges[k];
                len += 1;
            }
        }
        polygon(&points[..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(values: Vec<f32>, nx: usize) -> Grid {
        Grid { nx, ny: values.len() / nx, origin: [0.0, 0.0], step: 1.0, values }
    }

    fn polygons(grid: &Grid) -> Vec<Vec<Point>> {
        let mut all = Vec::new();
        grid.for_each_polygon(0, 0, |p| all.push(p.to_vec()));
        all
    }

    #[test]
    fn single_corner_gives_a_triangle_at_interpolated_crossings() {
        let g = grid(vec![1.0, 0.0, 0.0, 0.0], 2);
        let all = polygons(&g);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].len(), 3);
        assert_eq!(all[0][0], Point::Node(0));
        assert_eq!(g.point_position(all[0][1]), [0.5, 0.0]);
        assert_eq!(g.point_position(all[0][2]), [0.0, 0.5]);
    }

    #[test]
    fn saddles_split_or_join_by_the_centre() {
        let split = grid(vec![0.6, 0.0, 0.0, 0.6], 2);
        let all = polygons(&split);
        assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3]);
        let joined = grid(vec![1.0, 0.4, 0.4, 1.0], 2);
        let all = polygons(&joined);
        assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), vec![6]);
    }

    #[test]
    fn polygons_are_clockwise_in_picture_coordinates() {
        for case in 1u32..16 {
            let values: Vec<f32> = (0..4).map(|k| if case >> k & 1 == 1 { 0.9 } else { 0.2 }).collect();
            // Node order in the grid is row-major: TL, TR, BL, BR.
            let g = grid(vec![values[0], values[1], values[3], values[2]], 2);
            for p in polygons(&g) {
                assert!(matches!(p[0], Point::Node(_)), "case {case}: fan apex {p:?}");
                let pts: Vec<[f64; 2]> = p.iter().map(|&q| g.point_position(q)).collect();
                let mut twice_area = 0.0;
                for k in 0..pts.len() {
                    let (a, b) = (pts[k], pts[(k + 1) % pts.len()]);
                    twice_area += a[0] * b[1] - b[0] * a[1];
                }
                // With y pointing down, clockwise on screen is a positive shoelace sum.
                assert!(twice_area > 0.0, "case {case}: {pts:?}");
            }
        }
    }
}
