//! Models generated in code for the tests and benches: a UV sphere with normals, UVs
//! (the seam duplicated, as TRELLIS and relief keep them) and a textured material, of any
//! size. Deterministic: the same arguments give the same model.

#![allow(dead_code)]

use formats::{AlphaMode, ImageFormat, Material, Model, Part, Sampler, Texture, Wrap};
use image::{Rgba, RgbaImage};

/// A sphere of `columns` × `rows` quads (2 · columns · (rows − 1) triangles: the poles
/// are fans), radius `radius`, its surface displaced by a smooth ripple so that
/// simplification and compression meet something other than a perfect sphere.
pub fn sphere(columns: usize, rows: usize, radius: f32) -> Part {
    let (mut positions, mut normals, mut uvs) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..=rows {
        let v = r as f32 / rows as f32;
        let theta = v * std::f32::consts::PI;
        for c in 0..=columns {
            let u = c as f32 / columns as f32;
            let phi = u * std::f32::consts::TAU;
            let ripple = 1.0 + 0.05 * (5.0 * phi).sin() * (4.0 * theta).sin();
            let n = [theta.sin() * phi.cos(), theta.cos(), -theta.sin() * phi.sin()];
            positions.push(n.map(|k| k * radius * ripple));
            normals.push(n);
            uvs.push([u, v]);
        }
    }
    let mut part = Part { positions, normals: Some(normals), uvs: Some(uvs), ..Part::default() };
    let stride = (columns + 1) as u32;
    for r in 0..rows as u32 {
        for c in 0..columns as u32 {
            let (a, b) = (r * stride + c, r * stride + c + 1);
            let (d, e) = ((r + 1) * stride + c, (r + 1) * stride + c + 1);
            // Counter-clockwise seen from outside.
            if r != 0 {
                part.indices.extend([a, d, b]);
            }
            if r + 1 != rows as u32 {
                part.indices.extend([b, d, e]);
            }
        }
    }
    part
}

/// A sphere with about `triangles` triangles.
pub fn sphere_with(triangles: usize) -> Part {
    let rows = ((triangles as f64 / 4.0).sqrt().round() as usize).max(3);
    let columns = (triangles / (2 * (rows - 1))).max(3);
    sphere(columns, rows, 0.5)
}

/// A 64×64 texture of coloured squares with a smooth gradient, `alpha` making its left
/// half translucent.
pub fn texture_image(side: u32, alpha: bool) -> RgbaImage {
    RgbaImage::from_fn(side, side, |x, y| {
        let cell = ((x * 8 / side) + (y * 8 / side)) % 2;
        let r = (x * 255 / side) as u8;
        let g = (y * 255 / side) as u8;
        let b = if cell == 0 { 200 } else { 40 };
        let a = if alpha && x < side / 2 { 96 } else { 255 };
        Rgba([r, g, b, a])
    })
}

/// `image` encoded as `format` (WebP lossless, the only WebP `image` writes).
pub fn encode(image: &RgbaImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    let cursor = &mut std::io::Cursor::new(&mut bytes);
    match format {
        ImageFormat::Png => image.write_to(cursor, image::ImageFormat::Png),
        ImageFormat::Jpeg => {
            image::DynamicImage::ImageRgba8(image.clone()).into_rgb8().write_to(cursor, image::ImageFormat::Jpeg)
        }
        ImageFormat::Webp => image.write_to(cursor, image::ImageFormat::WebP),
    }
    .expect("encoding a test texture");
    bytes
}

/// One part with a base-colour texture of `format`.
pub fn textured(part: Part, format: ImageFormat, side: u32, alpha_mode: AlphaMode) -> Model {
    let image = texture_image(side, alpha_mode != AlphaMode::Opaque || format == ImageFormat::Png);
    let texture = Texture {
        bytes: encode(&image, format),
        format,
        width: side,
        height: side,
        sampler: Sampler {
            wrap_s: Wrap::ClampToEdge,
            wrap_t: Wrap::ClampToEdge,
            mag_filter: Some(9729),
            min_filter: Some(9987),
        },
    };
    let material = Material {
        name: Some("surface".into()),
        base_color_texture: Some(0),
        metallic_factor: 0.0,
        roughness_factor: 0.8,
        alpha_mode,
        ..Material::default()
    };
    Model {
        parts: vec![Part { material: Some(0), ..part }],
        materials: vec![material],
        textures: vec![texture],
        notes: Vec::new(),
    }
}

/// A model like TRELLIS.2's: a WebP base colour with alpha (its material opaque) and a
/// WebP metallic-roughness texture.
pub fn trellis_like(triangles: usize, side: u32) -> Model {
    let mut model = textured(sphere_with(triangles), ImageFormat::Webp, side, AlphaMode::Opaque);
    let image = RgbaImage::from_fn(side, side, |x, y| Rgba([0, (x * 255 / side) as u8, (y * 255 / side) as u8, 255]));
    model.textures[0].bytes = encode(&texture_image(side, true), ImageFormat::Webp);
    model.textures.push(Texture {
        bytes: encode(&image, ImageFormat::Webp),
        format: ImageFormat::Webp,
        width: side,
        height: side,
        sampler: Sampler::default(),
    });
    model.materials[0].metallic_roughness_texture = Some(1);
    model.materials[0].metallic_factor = 1.0;
    model.materials[0].roughness_factor = 1.0;
    model
}

/// Two parts with different materials, one untextured with vertex colours and
/// double-sided, one textured.
pub fn two_parts() -> Model {
    let mut model = textured(sphere(24, 12, 0.3), ImageFormat::Jpeg, 64, AlphaMode::Opaque);
    let mut second = sphere(16, 8, 0.2);
    for p in &mut second.positions {
        p[0] += 0.6;
    }
    second.colors = Some(second.positions.iter().map(|p| [p[0].abs().min(1.0), 0.5, 0.2, 1.0]).collect());
    second.uvs = None;
    second.material = Some(1);
    model.parts.push(second);
    model.materials.push(Material {
        base_color_factor: [0.9, 0.9, 0.9, 1.0],
        double_sided: true,
        ..Material::default()
    });
    model
}
