//! A level of detail: the model reduced to a triangle budget by edge collapse
//! (meshoptimizer's attribute-aware simplifier), never by dropping vertices.
//!
//! Each part gets a share of the budget proportional to its triangles. The collapse
//! weighs normals, UVs and colours with the positions, and keeps UV seams and borders
//! intact (meshoptimizer treats vertices at one position with different attributes as a
//! seam). Where topology stops it short of the budget, a second pass may also collapse
//! across attribute seams; if even that falls short, the part is clustered (meshopt's
//! "sloppy" simplifier), which always reaches the budget. The report says which.

use meshopt::SimplifyOptions;

use crate::model::Part;
use crate::{Cancel, FormatError, Model};

/// What simplification did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SimplifyReport {
    pub triangles_before: u64,
    pub triangles_after: u64,
    /// The largest collapse error, relative to the model's longest side (0.01 is 1 %):
    /// meshoptimizer's measure, the geometric deviation plus the weighted attribute
    /// deviation, so an upper bound on how far the surface moved.
    pub error: f32,
    /// Parts that needed clustering to fit the budget (their topology may change).
    pub clustered_parts: u32,
}

/// How much an attribute counts against position error. Normals and UVs are unit-scale
/// quantities; one unit of UV error is the whole texture, so UVs weigh more.
const NORMAL_WEIGHT: f32 = 0.5;
const UV_WEIGHT: f32 = 1.0;
const COLOR_WEIGHT: f32 = 0.5;

/// Error allowed while collapsing, relative to the part's size: no real limit, since
/// the triangle budget is what decides.
const ANY_ERROR: f32 = 1.0;

/// Reduces `model` to at most `max_triangles` triangles where it can. A model already
/// within the budget is returned unchanged, with error 0.
pub fn simplify(model: &Model, max_triangles: u64, cancel: &Cancel) -> Result<(Model, SimplifyReport), FormatError> {
    for part in &model.parts {
        part.check()?;
    }
    let before = model.triangles();
    let mut report = SimplifyReport { triangles_before: before, triangles_after: before, ..SimplifyReport::default() };
    if before <= max_triangles {
        return Ok((model.clone(), report));
    }
    if max_triangles == 0 {
        return Err(FormatError::encode("a level of detail needs at least one triangle"));
    }
    let model_scale = model.bounds().map_or(0.0, |(min, max)| extent(min, max));
    let mut parts = Vec::with_capacity(model.parts.len());
    let mut error = 0.0f32;
    for part in &model.parts {
        cancel.check()?;
        let triangles = (part.indices.len() / 3) as u64;
        // Proportional share, rounded down so the sum stays within the budget.
        let share = (u128::from(triangles) * u128::from(max_triangles) / u128::from(before)) as usize;
        let (simplified, part_error, clustered) = simplify_part(part, share.max(1).min(triangles as usize))?;
        // meshoptimizer's error is relative to the extent of every position it was given.
        let part_scale = extent_of(&part.positions);
        if model_scale > 0.0 {
            error = error.max(part_error * part_scale / model_scale);
        }
        report.clustered_parts += u32::from(clustered);
        parts.push(simplified);
    }
    let simplified = Model {
        parts,
        materials: model.materials.clone(),
        textures: model.textures.clone(),
        notes: model.notes.clone(),
    };
    report.triangles_after = simplified.triangles();
    report.error = error;
    Ok((simplified, report))
}

/// The part reduced to about `target` triangles, its relative error and whether it had
/// to be clustered.
fn simplify_part(part: &Part, target: usize) -> Result<(Part, f32, bool), FormatError> {
    let triangles = part.indices.len() / 3;
    if triangles <= target {
        return Ok((part.clone(), 0.0, false));
    }
    let (attributes, weights) = attributes(part);
    let stride = weights.len() * std::mem::size_of::<f32>();
    // meshoptimizer reads one lock per vertex when given a slice: an empty one would
    // be read past its end.
    let locks = vec![false; part.positions.len()];
    let run = |options: SimplifyOptions, error: &mut f32| -> Vec<u32> {
        if weights.is_empty() {
            meshopt::simplify_decoder(&part.indices, &part.positions, target * 3, ANY_ERROR, options, Some(error))
        } else {
            meshopt::simplify_with_attributes_and_locks_decoder(
                &part.indices,
                &part.positions,
                &attributes,
                &weights,
                stride,
                &locks,
                target * 3,
                ANY_ERROR,
                options,
                Some(error),
            )
        }
    };
    let mut error = 0.0f32;
    let mut indices = run(SimplifyOptions::None, &mut error);
    if indices.len() / 3 > target {
        indices = run(SimplifyOptions::Permissive, &mut error);
    }
    let mut clustered = false;
    if indices.len() / 3 > target {
        indices =
            meshopt::simplify_sloppy_decoder(&part.indices, &part.positions, target * 3, ANY_ERROR, Some(&mut error));
        clustered = true;
    }
    Ok((compact(part, &indices), error, clustered))
}

/// The per-vertex attribute floats meshoptimizer weighs, and their weights.
fn attributes(part: &Part) -> (Vec<f32>, Vec<f32>) {
    let mut weights = Vec::new();
    if part.normals.is_some() {
        weights.extend([NORMAL_WEIGHT; 3]);
    }
    if part.uvs.is_some() {
        weights.extend([UV_WEIGHT; 2]);
    }
    if part.colors.is_some() {
        weights.extend([COLOR_WEIGHT; 4]);
    }
    let mut values = Vec::with_capacity(part.positions.len() * weights.len());
    for v in 0..part.positions.len() {
        if let Some(normals) = &part.normals {
            values.extend(normals[v]);
        }
        if let Some(uvs) = &part.uvs {
            values.extend(uvs[v]);
        }
        if let Some(colors) = &part.colors {
            values.extend(colors[v]);
        }
    }
    (values, weights)
}

/// The part with only the vertices `indices` use, numbered by first use.
fn compact(part: &Part, indices: &[u32]) -> Part {
    let mut remap = vec![u32::MAX; part.positions.len()];
    let mut order: Vec<usize> = Vec::new();
    let indices = indices
        .iter()
        .map(|&old| {
            let slot = &mut remap[old as usize];
            if *slot == u32::MAX {
                *slot = order.len() as u32;
                order.push(old as usize);
            }
            *slot
        })
        .collect();
    Part {
        positions: order.iter().map(|&o| part.positions[o]).collect(),
        normals: pick(&part.normals, &order),
        uvs: pick(&part.uvs, &order),
        colors: pick(&part.colors, &order),
        indices,
        material: part.material,
    }
}

fn pick<T: Copy>(values: &Option<Vec<T>>, order: &[usize]) -> Option<Vec<T>> {
    values.as_ref().map(|values| order.iter().map(|&o| values[o]).collect())
}

/// The longest side of the box, meshoptimizer's measure of a mesh's size.
fn extent(min: [f32; 3], max: [f32; 3]) -> f32 {
    (0..3).map(|k| max[k] - min[k]).fold(0.0, f32::max)
}

fn extent_of(positions: &[[f32; 3]]) -> f32 {
    let Some(&first) = positions.first() else { return 0.0 };
    let (min, max) = positions.iter().fold((first, first), |(mut min, mut max), p| {
        for k in 0..3 {
            min[k] = min[k].min(p[k]);
            max[k] = max[k].max(p[k]);
        }
        (min, max)
    });
    extent(min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bumpy `n`×`n` grid over the unit square with normals and UVs: 2n² triangles.
    fn terrain(n: u32) -> Part {
        let mut part = Part { normals: Some(Vec::new()), uvs: Some(Vec::new()), ..Part::default() };
        for y in 0..=n {
            for x in 0..=n {
                let (u, v) = (x as f32 / n as f32, y as f32 / n as f32);
                let height = 0.1 * (u * 6.0).sin() * (v * 4.0).cos();
                part.positions.push([u, height, v]);
                if let (Some(normals), Some(uvs)) = (part.normals.as_mut(), part.uvs.as_mut()) {
                    normals.push([0.0, 1.0, 0.0]);
                    uvs.push([u, v]);
                }
            }
        }
        for y in 0..n {
            for x in 0..n {
                let a = y * (n + 1) + x;
                let (b, c, d) = (a + 1, a + n + 1, a + n + 2);
                part.indices.extend([a, c, b, b, c, d]);
            }
        }
        part
    }

    fn model(parts: Vec<Part>) -> Model {
        Model { parts, ..Model::default() }
    }

    #[test]
    fn a_model_within_the_budget_is_unchanged() {
        let model = model(vec![terrain(10)]);
        let (same, report) = simplify(&model, 200, &Cancel::new()).expect("simplified");
        assert_eq!(same, model);
        assert_eq!((report.triangles_before, report.triangles_after, report.error), (200, 200, 0.0));
    }

    #[test]
    fn collapses_reach_the_budget_with_a_small_error() {
        let model = model(vec![terrain(60)]);
        let (lod, report) = simplify(&model, 1000, &Cancel::new()).expect("simplified");
        assert_eq!(report.triangles_before, 7200);
        assert_eq!(report.triangles_after, lod.triangles());
        assert!((500..=1000).contains(&report.triangles_after), "{report:?}");
        assert!(report.error > 0.0 && report.error < 0.02, "{report:?}");
        assert_eq!(report.clustered_parts, 0);
        let part = &lod.parts[0];
        // Every vertex is used and every index is in range; attributes stay aligned.
        let mut used = vec![false; part.positions.len()];
        part.indices.iter().for_each(|&i| used[i as usize] = true);
        assert!(used.iter().all(|&u| u));
        assert_eq!(part.uvs.as_ref().map(Vec::len), Some(part.positions.len()));
        assert_eq!(part.normals.as_ref().map(Vec::len), Some(part.positions.len()));
        // Edge collapse keeps original vertices: each is one of the model's, with its UV.
        let original = &model.parts[0];
        for (p, uv) in part.positions.iter().zip(part.uvs.iter().flatten()) {
            let source = original.positions.iter().position(|q| q == p).expect("an original vertex");
            assert_eq!(original.uvs.as_ref().map(|uvs| uvs[source]), Some(*uv));
        }
        // The border is kept: the square's corners and extent survive.
        assert_eq!(lod.bounds().map(|(min, max)| (min[0], max[0], min[2], max[2])), Some((0.0, 1.0, 0.0, 1.0)));
        assert_eq!(simplify(&model, 1000, &Cancel::new()).expect("again").0, lod, "deterministic");
    }

    #[test]
    fn the_budget_is_shared_by_parts_in_proportion() {
        let mut small = terrain(20);
        small.positions.iter_mut().for_each(|p| p[1] += 2.0);
        let model = model(vec![terrain(40), small]);
        let (lod, report) = simplify(&model, 1000, &Cancel::new()).expect("simplified");
        assert!(report.triangles_after <= 1000, "{report:?}");
        let (big, small) = (lod.parts[0].indices.len() / 3, lod.parts[1].indices.len() / 3);
        // 3200 and 800 triangles before: shares of 800 and 200.
        assert!(big <= 800 && small <= 200 && big > 2 * small, "{big} and {small}");
    }

    #[test]
    fn a_zero_budget_is_refused_and_cancel_stops() {
        let model = model(vec![terrain(10)]);
        assert!(simplify(&model, 0, &Cancel::new()).is_err());
        let cancel = Cancel::new();
        cancel.cancel();
        assert!(matches!(simplify(&model, 10, &cancel), Err(FormatError::Cancelled)));
    }
}
