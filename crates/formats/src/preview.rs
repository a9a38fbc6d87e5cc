//! A preview picture rendered on the CPU, without a GPU or a browser: the model seen
//! from the front right and a little above (turned 35° about Y, tilted 20°), framed on
//! its bounding sphere, on a transparent background.
//!
//! The rasterizer is small on purpose (no crate fitted, see design 13 §1.7): an
//! orthographic camera, edge functions, an f32 z-buffer, back faces culled unless the
//! material is double-sided, bilinear texture sampling, Lambert shading from a key and a
//! fill light plus ambient computed in linear light, and 2×2 supersampling whose
//! coverage becomes the alpha channel. It uses f32 arithmetic in a fixed order, so the
//! same model gives the same pixels.

use image::{Rgba, RgbaImage};

use crate::model::{AlphaMode, Material};
use crate::texture;
use crate::{Cancel, FormatError, Model};

/// Preview settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewOptions {
    /// Width and height in pixels, 16 to 4096.
    pub size: u32,
}

impl Default for PreviewOptions {
    fn default() -> Self {
        PreviewOptions { size: 512 }
    }
}

/// Samples per pixel along each axis.
const SUPERSAMPLE: u32 = 2;
/// The turn about Y that shows the model's right side, and the tilt that shows its top.
const YAW_DEGREES: f32 = 35.0;
const PITCH_DEGREES: f32 = 20.0;
/// Share of the picture the bounding sphere's diameter spans.
const FILL: f32 = 0.9;
/// Lights in view space (+Z towards the viewer): a key light from the upper left, a
/// weaker fill from the right, and ambient so that nothing is black.
const KEY: ([f32; 3], f32) = ([-0.45, 0.6, 0.66], 0.8);
const FILL_LIGHT: ([f32; 3], f32) = ([0.75, 0.05, 0.66], 0.3);
const AMBIENT: f32 = 0.22;
/// Base-colour textures are scaled to at most this side before rendering: a 512-pixel
/// preview cannot show more detail, and it bounds the memory a preview needs.
const TEXTURE_SIDE: u32 = 1024;

/// Renders `model` into a `size`×`size` RGBA image with a transparent background.
pub fn preview(model: &Model, options: &PreviewOptions, cancel: &Cancel) -> Result<RgbaImage, FormatError> {
    if !(16..=4096).contains(&options.size) {
        return Err(FormatError::encode(format!("a preview must be 16 to 4096 pixels wide, not {}", options.size)));
    }
    for part in &model.parts {
        part.check()?;
    }
    let side = options.size * SUPERSAMPLE;
    let mut target = Target::new(side);
    if let Some(camera) = Camera::framing(model, side) {
        let textures = base_colour_textures(model, cancel)?;
        let default_material = Material::default();
        for part in &model.parts {
            cancel.check()?;
            let material = part.material.and_then(|m| model.materials.get(m)).unwrap_or(&default_material);
            let texture = material.base_color_texture.and_then(|t| textures.get(t)).and_then(Option::as_ref);
            target.draw(part, material, texture, &camera, cancel)?;
        }
    }
    Ok(target.resolve(options.size))
}

/// The decoded base-colour textures (others are not drawn), in the model's order.
fn base_colour_textures(
    model: &Model,
    cancel: &Cancel,
) -> Result<Vec<Option<(RgbaImage, crate::model::Sampler)>>, FormatError> {
    let mut images = Vec::with_capacity(model.textures.len());
    for (index, source) in model.textures.iter().enumerate() {
        cancel.check()?;
        let used = model.materials.iter().any(|m| m.base_color_texture == Some(index));
        images.push(if used {
            Some((texture::fit(texture::decode(source)?, TEXTURE_SIDE), source.sampler))
        } else {
            None
        });
    }
    Ok(images)
}

/// The view: a rotation, then an orthographic projection of the bounding sphere onto
/// the picture.
struct Camera {
    center: [f32; 3],
    /// Rows of the rotation matrix.
    rotation: [[f32; 3]; 3],
    /// Pixels per model unit.
    zoom: f32,
    half: f32,
}

impl Camera {
    /// `None` for a model without triangles.
    fn framing(model: &Model, side: u32) -> Option<Camera> {
        let (min, max) = model.bounds()?;
        let center = [0, 1, 2].map(|k| (min[k] + max[k]) * 0.5);
        let mut radius = 0.0f32;
        for part in &model.parts {
            for &i in &part.indices {
                let p = part.positions[i as usize];
                let d = [0, 1, 2].map(|k| p[k] - center[k]);
                radius = radius.max((d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt());
            }
        }
        if radius <= 0.0 {
            radius = 1.0;
        }
        // Turning by −yaw about Y brings +X (the model's right) towards the viewer;
        // tilting by +pitch about X brings its top towards the viewer.
        let (sy, cy) = (-YAW_DEGREES).to_radians().sin_cos();
        let (sp, cp) = PITCH_DEGREES.to_radians().sin_cos();
        let yaw = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
        let pitch = [[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]];
        let rotation = [0, 1, 2].map(|r| [0, 1, 2].map(|c| (0..3).map(|k| pitch[r][k] * yaw[k][c]).sum::<f32>()));
        let half = side as f32 * 0.5;
        Some(Camera { center, rotation, zoom: half * FILL / radius, half })
    }

    fn turn(&self, v: [f32; 3]) -> [f32; 3] {
        self.rotation.map(|row| row[0] * v[0] + row[1] * v[1] + row[2] * v[2])
    }

    /// View space: centred, turned; +Y up and +Z towards the viewer.
    fn view(&self, p: [f32; 3]) -> [f32; 3] {
        self.turn([p[0] - self.center[0], p[1] - self.center[1], p[2] - self.center[2]])
    }

    /// Picture x (right), y (down) and depth (larger is nearer) of a view-space point.
    fn project(&self, q: [f32; 3]) -> [f32; 3] {
        [self.half + q[0] * self.zoom, self.half - q[1] * self.zoom, q[2]]
    }
}

/// The supersampled colour (linear light), depth and coverage buffers.
struct Target {
    side: u32,
    colour: Vec<[f32; 3]>,
    depth: Vec<f32>,
}

impl Target {
    fn new(side: u32) -> Self {
        let n = (side as usize) * (side as usize);
        Target { side, colour: vec![[0.0; 3]; n], depth: vec![f32::NEG_INFINITY; n] }
    }

    fn draw(
        &mut self,
        part: &crate::model::Part,
        material: &Material,
        texture: Option<&(RgbaImage, crate::model::Sampler)>,
        camera: &Camera,
        cancel: &Cancel,
    ) -> Result<(), FormatError> {
        let view: Vec<[f32; 3]> = part.positions.iter().map(|&p| camera.view(p)).collect();
        let screen: Vec<[f32; 3]> = view.iter().map(|&q| camera.project(q)).collect();
        let normals: Option<Vec<[f32; 3]>> =
            part.normals.as_ref().map(|normals| normals.iter().map(|&n| camera.turn(n)).collect());
        let key = normalize(KEY.0);
        let fill = normalize(FILL_LIGHT.0);
        let factor = material.base_color_factor;
        let cutoff = match material.alpha_mode {
            AlphaMode::Opaque => None,
            AlphaMode::Mask => Some(material.alpha_cutoff),
            // Blending would need sorted drawing; half-transparent is drawn, less is not.
            AlphaMode::Blend => Some(0.5),
        };
        let size = self.side as f32;
        for (number, t) in part.indices.chunks_exact(3).enumerate() {
            cancel.check_every(number)?;
            let [ia, ib, ic] = [t[0] as usize, t[1] as usize, t[2] as usize];
            let (a, b, c) = (screen[ia], screen[ib], screen[ic]);
            let area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]);
            // Counter-clockwise in the model is clockwise on the picture (y points down),
            // so a front face has a negative area here.
            let back = area > 0.0;
            if area == 0.0 || !area.is_finite() || (back && !material.double_sided) {
                continue;
            }
            let face_normal = {
                let (va, vb, vc) = (view[ia], view[ib], view[ic]);
                let u = [vb[0] - va[0], vb[1] - va[1], vb[2] - va[2]];
                let v = [vc[0] - va[0], vc[1] - va[1], vc[2] - va[2]];
                normalize([u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]])
            };
            let x0 = a[0].min(b[0]).min(c[0]).floor().max(0.0) as u32;
            let x1 = (a[0].max(b[0]).max(c[0]).ceil().min(size)) as u32;
            let y0 = a[1].min(b[1]).min(c[1]).floor().max(0.0) as u32;
            let y1 = (a[1].max(b[1]).max(c[1]).ceil().min(size)) as u32;
            for y in y0..y1 {
                let py = y as f32 + 0.5;
                for x in x0..x1 {
                    let px = x as f32 + 0.5;
                    let w0 = ((b[0] - px) * (c[1] - py) - (b[1] - py) * (c[0] - px)) / area;
                    let w1 = ((c[0] - px) * (a[1] - py) - (c[1] - py) * (a[0] - px)) / area;
                    let w2 = 1.0 - w0 - w1;
                    if w0 < 0.0 || w1 < 0.0 || w2 < 0.0 {
                        continue;
                    }
                    let at = (y * self.side + x) as usize;
                    let z = w0 * a[2] + w1 * b[2] + w2 * c[2];
                    if z <= self.depth[at] {
                        continue;
                    }
                    let mix = |values: [[f32; 4]; 3]| -> [f32; 4] {
                        [0, 1, 2, 3].map(|k| w0 * values[0][k] + w1 * values[1][k] + w2 * values[2][k])
                    };
                    let mut albedo = factor;
                    if let (Some((image, sampler)), Some(uvs)) = (texture, part.uvs.as_ref()) {
                        let uv = mix([ia, ib, ic].map(|i| [uvs[i][0], uvs[i][1], 0.0, 0.0]));
                        let texel = texture::sample_bilinear(image, sampler, [uv[0], uv[1]]);
                        for k in 0..3 {
                            albedo[k] *= srgb_to_linear(texel[k]);
                        }
                        albedo[3] *= texel[3];
                    }
                    if let Some(colors) = &part.colors {
                        let colour = mix([ia, ib, ic].map(|i| colors[i]));
                        for k in 0..4 {
                            albedo[k] *= colour[k];
                        }
                    }
                    if cutoff.is_some_and(|cutoff| albedo[3] < cutoff) {
                        continue;
                    }
                    let mut n = match &normals {
                        Some(normals) => {
                            let n = mix([ia, ib, ic].map(|i| [normals[i][0], normals[i][1], normals[i][2], 0.0]));
                            normalize([n[0], n[1], n[2]])
                        }
                        None => face_normal,
                    };
                    if back {
                        n = n.map(|c| -c);
                    }
                    let light = AMBIENT + KEY.1 * dot(n, key).max(0.0) + FILL_LIGHT.1 * dot(n, fill).max(0.0);
                    self.depth[at] = z;
                    self.colour[at] = [albedo[0] * light, albedo[1] * light, albedo[2] * light];
                }
            }
        }
        Ok(())
    }

    /// Averages each pixel's samples: colour over the covered ones, alpha from how
    /// many are covered.
    fn resolve(&self, size: u32) -> RgbaImage {
        let mut picture = RgbaImage::new(size, size);
        let samples = (SUPERSAMPLE * SUPERSAMPLE) as f32;
        for (x, y, pixel) in picture.enumerate_pixels_mut() {
            let mut sum = [0.0f32; 3];
            let mut covered = 0u32;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let at = ((y * SUPERSAMPLE + sy) * self.side + x * SUPERSAMPLE + sx) as usize;
                    if self.depth[at] > f32::NEG_INFINITY {
                        covered += 1;
                        for (total, value) in sum.iter_mut().zip(self.colour[at]) {
                            *total += value;
                        }
                    }
                }
            }
            if covered > 0 {
                let rgb = sum.map(|c| (linear_to_srgb(c / covered as f32) * 255.0).round() as u8);
                let alpha = (covered as f32 / samples * 255.0).round() as u8;
                *pixel = Rgba([rgb[0], rgb[1], rgb[2], alpha]);
            }
        }
        picture
    }
}

fn dot(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn normalize(v: [f32; 3]) -> [f32; 3] {
    let length = dot(v, v).sqrt();
    if length > 0.0 { v.map(|c| c / length) } else { [0.0, 0.0, 1.0] }
}

fn srgb_to_linear(c: f32) -> f32 {
    if c <= 0.04045 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
}

fn linear_to_srgb(c: f32) -> f32 {
    let c = c.clamp(0.0, 1.0);
    if c <= 0.003_130_8 { c * 12.92 } else { 1.055 * c.powf(1.0 / 2.4) - 0.055 }
}
