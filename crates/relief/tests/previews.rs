//! Renders shaded, textured previews of the fixture models to PNG files so a person can
//! look at them: `cargo test -p relief --test previews -- --ignored`, then open
//! `target/relief-previews/*.png`. Ignored by default: it checks nothing.

mod common;

use common::fixture;
use image::{Rgb, RgbImage};

const SIZE: u32 = 384;

#[test]
#[ignore = "writes pictures for a person to look at"]
fn render_previews() {
    let out = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/relief-previews");
    std::fs::create_dir_all(&out).expect("preview folder");
    for name in ["vase.png", "mug.jpg", "toy.webp", "large-4096x3072.jpg"] {
        let model =
            relief::reconstruct(&fixture(name), &relief::Options::default(), &mut |_, _| {}).expect("reconstructs");
        let views = [(0.0f32, 0.0f32), (35.0, -20.0), (90.0, 0.0), (180.0, 0.0)];
        // The first column shows the input picture, so each render can be judged
        // against what it was made from.
        let mut sheet = RgbImage::from_pixel(SIZE * (views.len() as u32 + 1), SIZE * 2, Rgb([40, 44, 52]));
        let input = image::load_from_memory(&fixture(name)).expect("decodes").thumbnail(SIZE, SIZE).to_rgb8();
        image::imageops::replace(&mut sheet, &input, 0, 0);
        for (row, textured) in [true, false].into_iter().enumerate() {
            for (k, (yaw, pitch)) in views.iter().enumerate() {
                let view = render(&model.glb, *yaw, *pitch, textured);
                let (x, y) = (i64::from(SIZE) * (k as i64 + 1), i64::from(SIZE) * row as i64);
                image::imageops::replace(&mut sheet, &view, x, y);
            }
        }
        let path = out.join(format!("{}.png", name.replace('.', "-")));
        sheet.save(&path).expect("saving preview");
        println!("{}", path.display());
    }
}

/// Orthographic z-buffered render, textured and lit by a light over the viewer's
/// shoulder (plain grey when not `textured`), after turning the model by `yaw` about y and `pitch` about x (degrees).
fn render(glb: &[u8], yaw: f32, pitch: f32, textured: bool) -> RgbImage {
    let (document, buffers, images) = gltf::import_slice(glb).expect("imports");
    let texture = &images[0];
    let channels = match texture.format {
        gltf::image::Format::R8G8B8 => 3,
        gltf::image::Format::R8G8B8A8 => 4,
        other => panic!("unexpected texture format {other:?}"),
    };
    let mesh = document.meshes().next().expect("a mesh");
    let primitive = mesh.primitives().next().expect("a primitive");
    let reader = primitive.reader(|b| Some(&buffers[b.index()]));
    let positions: Vec<[f32; 3]> = reader.read_positions().expect("positions").collect();
    let normals: Vec<[f32; 3]> = reader.read_normals().expect("normals").collect();
    let uvs: Vec<[f32; 2]> = reader.read_tex_coords(0).expect("uvs").into_f32().collect();
    let indices: Vec<u32> = reader.read_indices().expect("indices").into_u32().collect();

    let (sy, cy) = yaw.to_radians().sin_cos();
    let (sp, cp) = pitch.to_radians().sin_cos();
    let turn = |v: [f32; 3]| {
        let x = cy * v[0] + sy * v[2];
        let z = -sy * v[0] + cy * v[2];
        let y = cp * v[1] - sp * z;
        let z = sp * v[1] + cp * z;
        [x, y, z]
    };
    let s = SIZE as f32;
    let screen: Vec<[f32; 3]> = positions
        .iter()
        .map(|&p| {
            let q = turn(p);
            [(q[0] * 0.85 + 0.5) * s, (0.5 - q[1] * 0.85) * s, q[2]]
        })
        .collect();
    let turned_normals: Vec<[f32; 3]> = normals.iter().map(|&n| turn(n)).collect();
    let light = {
        let l = [-0.4f32, 0.5, 1.0];
        let n = (l[0] * l[0] + l[1] * l[1] + l[2] * l[2]).sqrt();
        l.map(|c| c / n)
    };

    let mut depth = vec![f32::NEG_INFINITY; (SIZE * SIZE) as usize];
    let mut picture = RgbImage::from_pixel(SIZE, SIZE, Rgb([40, 44, 52]));
    for t in indices.chunks_exact(3) {
        let [a, b, c] = [0, 1, 2].map(|k| screen[t[k] as usize]);
        let area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]);
        // Counter-clockwise in the model is clockwise on screen (y flipped): those
        // face the viewer.
        if area >= 0.0 {
            continue;
        }
        let x0 = a[0].min(b[0]).min(c[0]).floor().max(0.0) as u32;
        let x1 = (a[0].max(b[0]).max(c[0]).ceil() as u32).min(SIZE);
        let y0 = a[1].min(b[1]).min(c[1]).floor().max(0.0) as u32;
        let y1 = (a[1].max(b[1]).max(c[1]).ceil() as u32).min(SIZE);
        for y in y0..y1 {
            for x in x0..x1 {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let w0 = ((b[0] - px) * (c[1] - py) - (b[1] - py) * (c[0] - px)) / area;
                let w1 = ((c[0] - px) * (a[1] - py) - (c[1] - py) * (a[0] - px)) / area;
                let w2 = 1.0 - w0 - w1;
                if w0 < 0.0 || w1 < 0.0 || w2 < 0.0 {
                    continue;
                }
                let z = w0 * a[2] + w1 * b[2] + w2 * c[2];
                let at = (y * SIZE + x) as usize;
                if z <= depth[at] {
                    continue;
                }
                depth[at] = z;
                let mix =
                    |f: &dyn Fn(usize) -> f32| w0 * f(t[0] as usize) + w1 * f(t[1] as usize) + w2 * f(t[2] as usize);
                let n = [0, 1, 2].map(|k| mix(&|v| turned_normals[v][k]));
                let length = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt().max(1e-6);
                let lambert = ((n[0] * light[0] + n[1] * light[1] + n[2] * light[2]) / length).max(0.0);
                let (u, v) = (mix(&|k| uvs[k][0]), mix(&|k| uvs[k][1]));
                let tx = ((u * texture.width as f32) as u32).min(texture.width - 1);
                let ty = ((v * texture.height as f32) as u32).min(texture.height - 1);
                let texel = ((ty * texture.width + tx) * channels) as usize;
                let shade = 0.25 + 0.75 * lambert;
                let albedo = |k: usize| if textured { f32::from(texture.pixels[texel + k]) } else { 220.0 };
                let colour = [0, 1, 2].map(|k| (albedo(k) * shade).min(255.0) as u8);
                picture.put_pixel(x, y, Rgb(colour));
            }
        }
    }
    picture
}
