//! Model → binary STL (stl_io): triangles only, Z up, in metres or millimetres.
//!
//! STL has no shared vertices; a watertight model stays watertight because every use of
//! a vertex writes the exact same three floats, so a reader welding by position rebuilds
//! the closed surface.

use std::cell::Cell;
use std::io::Write;

use super::Summary;
use crate::{Cancel, FormatError, Model};

/// The unit of STL coordinates. STL itself has none; slicers assume millimetres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Units {
    #[default]
    Metres,
    Millimetres,
}

impl Units {
    fn scale(self) -> f32 {
        match self {
            Units::Metres => 1.0,
            Units::Millimetres => 1000.0,
        }
    }
}

/// glTF's Y-up to STL's Z-up: a rotation about X, (x, y, z) → (x, −z, y). Exact in f32.
fn z_up(p: [f32; 3], scale: f32) -> [f32; 3] {
    [p[0] * scale, -p[2] * scale, p[1] * scale]
}

/// The unit normal of a counter-clockwise triangle, or zero for a degenerate one.
fn face_normal(a: [f32; 3], b: [f32; 3], c: [f32; 3]) -> [f32; 3] {
    let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
    let n = [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]];
    let length = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    if length > 0.0 && length.is_finite() { n.map(|c| c / length) } else { [0.0; 3] }
}

/// Writes `model` as binary STL, Z up.
pub fn stl<W: Write>(model: &Model, mut out: W, units: Units, cancel: &Cancel) -> Result<Summary, FormatError> {
    let triangles = model.triangles();
    // The count field is 32 bits.
    crate::Limits::check("STL triangles", triangles, u64::from(u32::MAX))?;
    let scale = units.scale();
    let stopped = Cell::new(None);
    let stream = Triangles {
        model,
        part: 0,
        triangle: 0,
        written: 0,
        total: triangles as usize,
        scale,
        cancel,
        stopped: &stopped,
    };
    stl_io::write_stl(&mut out, stream)?;
    if let Some(error) = stopped.take() {
        return Err(error);
    }
    out.flush()?;
    Ok(Summary { triangles, vertices: model.vertices(), notes: Vec::new() })
}

/// The model's triangles, made one at a time as stl_io asks for them. When the `Cancel`
/// fires it ends early and leaves the error in `stopped`.
struct Triangles<'a> {
    model: &'a Model,
    part: usize,
    triangle: usize,
    written: usize,
    total: usize,
    scale: f32,
    cancel: &'a Cancel,
    stopped: &'a Cell<Option<FormatError>>,
}

impl Iterator for Triangles<'_> {
    type Item = stl_io::Triangle;

    fn next(&mut self) -> Option<stl_io::Triangle> {
        loop {
            let part = self.model.parts.get(self.part)?;
            let Some(t) = part.indices.chunks_exact(3).nth(self.triangle) else {
                self.part += 1;
                self.triangle = 0;
                continue;
            };
            if let Err(error) = self.cancel.check_every(self.written) {
                self.stopped.set(Some(error));
                return None;
            }
            self.triangle += 1;
            self.written += 1;
            let [a, b, c] = [0, 1, 2].map(|k| z_up(part.positions[t[k] as usize], self.scale));
            return Some(stl_io::Triangle {
                normal: stl_io::Normal::new(face_normal(a, b, c)),
                vertices: [a, b, c].map(stl_io::Vertex::new),
            });
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total - self.written;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Triangles<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::cube;

    fn cube_model() -> Model {
        Model { parts: vec![cube()], ..Model::default() }
    }

    fn floats(bytes: &[u8], at: usize) -> [f32; 3] {
        [0, 1, 2].map(|k| {
            let i = at + 4 * k;
            f32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]])
        })
    }

    #[test]
    fn writes_every_triangle_z_up() {
        let mut out = Vec::new();
        let summary = stl(&cube_model(), &mut out, Units::Metres, &Cancel::new()).expect("stl");
        assert_eq!(summary.triangles, 12);
        assert_eq!(out.len(), 84 + 12 * 50);
        assert_eq!(u32::from_le_bytes([out[80], out[81], out[82], out[83]]), 12);
        // The first triangle is 0, 2, 1 of the z = 0 face, facing −z in glTF: after the
        // turn to Z-up it faces +y.
        assert_eq!(floats(&out, 84), [0.0, 1.0, 0.0]);
        assert_eq!(floats(&out, 84 + 12 + 12), [1.0, -0.0, 1.0]);
    }

    #[test]
    fn millimetres_scale_by_a_thousand() {
        let mut metres = Vec::new();
        let mut millimetres = Vec::new();
        stl(&cube_model(), &mut metres, Units::Metres, &Cancel::new()).expect("stl");
        stl(&cube_model(), &mut millimetres, Units::Millimetres, &Cancel::new()).expect("stl");
        let vertex = 84 + 12 + 12;
        assert_eq!(floats(&millimetres, vertex), floats(&metres, vertex).map(|c| c * 1000.0));
    }

    #[test]
    fn writing_twice_gives_the_same_bytes() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        stl(&cube_model(), &mut a, Units::Millimetres, &Cancel::new()).expect("stl");
        stl(&cube_model(), &mut b, Units::Millimetres, &Cancel::new()).expect("stl");
        assert_eq!(a, b);
    }

    #[test]
    fn a_cancelled_write_is_an_error() {
        let cancel = Cancel::new();
        cancel.cancel();
        let error = stl(&cube_model(), Vec::new(), Units::Metres, &cancel).expect_err("cancel");
        assert!(matches!(error, FormatError::Cancelled));
    }

    #[test]
    fn degenerate_triangles_get_a_zero_normal() {
        assert_eq!(face_normal([0.0; 3], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]), [0.0; 3]);
        assert_eq!(face_normal([0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]), [0.0, 0.0, 1.0]);
    }
}
