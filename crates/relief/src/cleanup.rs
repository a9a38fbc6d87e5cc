//! Tidying a raw foreground mask: dropping specks of noise and closing pinholes, while
//! keeping the holes that belong to the object (the inside of a mug's handle).

use crate::segment::Mask;

/// Pieces smaller than this fraction of the largest piece are noise (JPEG ringing,
/// dust, a stray shadow), not parts of the object.
const MIN_PIECE_FRACTION: f64 = 0.02;
/// Holes smaller than this fraction of the object's area are pinholes (a highlight
/// that matched the background colour), not openings; larger ones are real.
const MAX_PINHOLE_FRACTION: f64 = 0.0015;
const MIN_PINHOLE_PIXELS: usize = 4;

struct Component {
    area: usize,
    touches_border: bool,
}

/// Removes specks, then fills pinholes.
pub(crate) fn clean(mask: &mut Mask) {
    remove_specks(mask);
    fill_pinholes(mask);
}

fn remove_specks(mask: &mut Mask) {
    let (labels, components) = label(mask, true, true);
    let largest = components.iter().map(|c| c.area).max().unwrap_or(0);
    let keep_from = ((largest as f64 * MIN_PIECE_FRACTION).ceil() as usize).max(1);
    for (inside, label) in mask.inside.iter_mut().zip(&labels) {
        if *label != NONE && components[*label as usize].area < keep_from {
            *inside = false;
        }
    }
}

fn fill_pinholes(mask: &mut Mask) {
    let area = mask.area();
    let max_pinhole = ((area as f64 * MAX_PINHOLE_FRACTION) as usize).max(MIN_PINHOLE_PIXELS);
    // Background is 4-connected so that it is the exact complement of the 8-connected
    // foreground: a diagonal gap in the outline does not join a hole to the outside.
    let (labels, components) = label(mask, false, false);
    for (inside, label) in mask.inside.iter_mut().zip(&labels) {
        if *label != NONE {
            let hole = &components[*label as usize];
            if !hole.touches_border && hole.area <= max_pinhole {
                *inside = true;
            }
        }
    }
}

const NONE: u32 = u32::MAX;

/// A horizontal run of pixels with the labelled value: row `y`, columns `x0..x1`.
struct Run {
    y: usize,
    x0: usize,
    x1: usize,
}

/// Labels the connected regions of pixels whose mask value equals `value`.
///
/// Works on runs rather than pixels, which is what makes it cheap on a megapixel mask:
/// each row is cut into runs, each run is joined (union-find) with the runs of the row
/// above that touch it, and the labels are written a run at a time. Components are
/// numbered in the raster order of their first pixel.
fn label(mask: &Mask, value: bool, eight_connected: bool) -> (Vec<u32>, Vec<Component>) {
    let (w, h) = (mask.width, mask.height);
    let mut runs: Vec<Run> = Vec::new();
    let mut parent: Vec<usize> = Vec::new();
    let mut previous_row = 0..0;
    for y in 0..h {
        let row = &mask.inside[y * w..(y + 1) * w];
        let first = runs.len();
        let mut x = 0;
        // The runs above, in order; `above` only moves forward along them.
        let mut above = previous_row.start;
        while x < w {
            if row[x] != value {
                x += 1;
                continue;
            }
            let x0 = x;
            while x < w && row[x] == value {
                x += 1;
            }
            let id = runs.len();
            runs.push(Run { y, x0, x1: x });
            parent.push(id);
            // Diagonal neighbours count as touching when eight-connected.
            let (reach0, reach1) = if eight_connected { (x0.saturating_sub(1), x + 1) } else { (x0, x) };
            while above < previous_row.end && runs[above].x1 <= reach0 {
                above += 1;
            }
            let mut k = above;
            while k < previous_row.end && runs[k].x0 < reach1 {
                union(&mut parent, id, k);
                k += 1;
            }
        }
        previous_row = first..runs.len();
    }

    let mut labels = vec![NONE; w * h];
    let mut component_of_root = vec![NONE; runs.len()];
    let mut components: Vec<Component> = Vec::new();
    for (id, run) in runs.iter().enumerate() {
        let root = find(&mut parent, id);
        if component_of_root[root] == NONE {
            component_of_root[root] = components.len() as u32;
            components.push(Component { area: 0, touches_border: false });
        }
        let label = component_of_root[root];
        let component = &mut components[label as usize];
        component.area += run.x1 - run.x0;
        component.touches_border |= run.y == 0 || run.y + 1 == h || run.x0 == 0 || run.x1 == w;
        labels[run.y * w + run.x0..run.y * w + run.x1].fill(label);
    }
    (labels, components)
}

fn find(parent: &mut [usize], mut node: usize) -> usize {
    while parent[node] != node {
        // Path halving keeps the trees flat without recursion.
        parent[node] = parent[parent[node]];
        node = parent[node];
    }
    node
}

/// Joins two sets; the smaller root index wins, so the result never depends on order.
fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        let (low, high) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[high] = low;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_from(rows: &[&str]) -> Mask {
        let width = rows[0].len();
        let inside = rows.iter().flat_map(|row| row.chars().map(|c| c == '#')).collect();
        Mask { width, height: rows.len(), inside }
    }

    fn render(mask: &Mask) -> Vec<String> {
        mask.inside.chunks(mask.width).map(|row| row.iter().map(|&i| if i { '#' } else { '.' }).collect()).collect()
    }

    /// A plain flood fill, pixel by pixel: slow, obviously right, the reference.
    fn reference_label(mask: &Mask, value: bool, eight_connected: bool) -> (Vec<u32>, Vec<(usize, bool)>) {
        let (w, h) = (mask.width, mask.height);
        let mut labels = vec![NONE; w * h];
        let mut components = Vec::new();
        for start in 0..w * h {
            if mask.inside[start] != value || labels[start] != NONE {
                continue;
            }
            let id = components.len() as u32;
            let (mut area, mut border) = (0, false);
            let mut stack = vec![start];
            labels[start] = id;
            while let Some(p) = stack.pop() {
                let (x, y) = ((p % w) as isize, (p / w) as isize);
                area += 1;
                border |= x == 0 || y == 0 || x as usize + 1 == w || y as usize + 1 == h;
                for dy in -1..=1isize {
                    for dx in -1..=1isize {
                        let diagonal = dx != 0 && dy != 0;
                        let (nx, ny) = (x + dx, y + dy);
                        if (diagonal && !eight_connected) || nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                            continue;
                        }
                        let n = ny as usize * w + nx as usize;
                        if mask.inside[n] == value && labels[n] == NONE {
                            labels[n] = id;
                            stack.push(n);
                        }
                    }
                }
            }
            components.push((area, border));
        }
        (labels, components)
    }

    #[test]
    fn run_labelling_matches_a_plain_flood_fill() {
        let mut state = 0x9e37_79b9_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for case in 0..200 {
            let (width, height) = (1 + next() as usize % 23, 1 + next() as usize % 17);
            // Densities from sparse to nearly full, so both values form every shape.
            let density = next() % 100;
            let inside = (0..width * height).map(|_| next() % 100 < density).collect();
            let mask = Mask { width, height, inside };
            for (value, eight) in [(true, true), (false, false), (true, false), (false, true)] {
                let (labels, components) = label(&mask, value, eight);
                let (expected, reference) = reference_label(&mask, value, eight);
                assert_eq!(labels, expected, "case {case}, value {value}, eight {eight}");
                let found: Vec<(usize, bool)> = components.iter().map(|c| (c.area, c.touches_border)).collect();
                assert_eq!(found, reference, "case {case}");
            }
        }
    }

    #[test]
    fn specks_go_and_thin_parts_stay() {
        let mut rows = vec![".".repeat(30)];
        for y in 0..10 {
            // A 10x10 body, a one-pixel-wide "stick" (10% of the body: a real part),
            // and a lone pixel (1%: a speck).
            let speck = if y == 3 { '#' } else { '.' };
            rows.push(format!("..##########..............#.{speck}."));
        }
        rows.push(".".repeat(30));
        let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
        let mut mask = mask_from(&refs);
        assert_eq!(mask.area(), 111);
        remove_specks(&mut mask);
        assert_eq!(mask.area(), 110, "{:#?}", render(&mask));
    }

    #[test]
    fn pinholes_close_and_real_holes_stay_open() {
        let mut rows = Vec::new();
        rows.push(".".repeat(60));
        for y in 0..40 {
            let mut row = String::from(".");
            for x in 0..58 {
                let real_hole = (10..20).contains(&x) && (10..20).contains(&y);
                let pinhole = x == 40 && y == 30;
                row.push(if real_hole || pinhole { '.' } else { '#' });
            }
            row.push('.');
            rows.push(row);
        }
        rows.push(".".repeat(60));
        let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
        let mut mask = mask_from(&refs);
        let before = mask.area();
        fill_pinholes(&mut mask);
        assert_eq!(mask.area(), before + 1, "{:#?}", render(&mask));
    }
}
