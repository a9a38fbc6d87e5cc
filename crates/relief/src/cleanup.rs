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

/// Labels the connected regions of pixels whose mask value equals `value`.
fn label(mask: &Mask, value: bool, eight_connected: bool) -> (Vec<u32>, Vec<Component>) {
    let (w, h) = (mask.width, mask.height);
    let mut labels = vec![NONE; w * h];
    let mut components = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if mask.inside[start] != value || labels[start] != NONE {
            continue;
        }
        let id = components.len() as u32;
        let mut component = Component { area: 0, touches_border: false };
        labels[start] = id;
        stack.push(start);
        while let Some(index) = stack.pop() {
            let (x, y) = (index % w, index / w);
            component.area += 1;
            if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
                component.touches_border = true;
            }
            for (dx, dy) in NEIGHBOURS {
                if !eight_connected && dx != 0 && dy != 0 {
                    continue;
                }
                let (nx, ny) = (x as isize + dx, y as isize + dy);
                if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                    continue;
                }
                let n = ny as usize * w + nx as usize;
                if mask.inside[n] == value && labels[n] == NONE {
                    labels[n] = id;
                    stack.push(n);
                }
            }
        }
        components.push(component);
    }
    (labels, components)
}

const NEIGHBOURS: [(isize, isize); 8] = [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)];

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
