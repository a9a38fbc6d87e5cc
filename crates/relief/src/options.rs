//! The caller's knobs, their defaults and their valid ranges.

use std::ops::RangeInclusive;

use crate::ReliefError;

/// How a picture is turned into a model. Every field has a sane default.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// How far the silhouette is inflated: the model's front-to-back thickness at any
    /// place is `depth` times the object's width there (1.0 gives round cross-sections,
    /// the default 0.35 a flattened relief). Valid: [`Options::DEPTH`].
    pub depth: f32,
    /// Grid cells across the longest side of the object; finer grids follow the outline
    /// more closely. Lowered automatically to respect `max_triangles`. Valid:
    /// [`Options::RESOLUTION`].
    pub resolution: u32,
    /// The most triangles the model may have, whatever the picture. Valid:
    /// [`Options::MAX_TRIANGLES`].
    pub max_triangles: u32,
    /// The longest side of the embedded texture, in pixels. Valid:
    /// [`Options::TEXTURE_SIZE`].
    pub texture_size: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options { depth: 0.35, resolution: 192, max_triangles: 60_000, texture_size: 1024 }
    }
}

impl Options {
    /// Valid range of [`Options::depth`]. Public, as are the others, so that callers
    /// that read options from elsewhere can describe the limits without copying them.
    pub const DEPTH: RangeInclusive<f32> = 0.05..=2.0;
    /// Valid range of [`Options::resolution`].
    pub const RESOLUTION: RangeInclusive<u32> = 32..=512;
    /// Valid range of [`Options::max_triangles`].
    pub const MAX_TRIANGLES: RangeInclusive<u32> = 1_000..=500_000;
    /// Valid range of [`Options::texture_size`].
    pub const TEXTURE_SIZE: RangeInclusive<u32> = 128..=4096;

    /// Checks every field against its valid range.
    pub fn validate(&self) -> Result<(), ReliefError> {
        // `contains` is false for NaN, so a NaN depth is rejected here too.
        if !Self::DEPTH.contains(&self.depth) {
            return Err(ReliefError::InvalidOption {
                name: "depth",
                message: format!(
                    "must be between {} and {}, got {}",
                    Self::DEPTH.start(),
                    Self::DEPTH.end(),
                    self.depth
                ),
            });
        }
        check_range("resolution", self.resolution, Self::RESOLUTION)?;
        check_range("max_triangles", self.max_triangles, Self::MAX_TRIANGLES)?;
        check_range("texture_size", self.texture_size, Self::TEXTURE_SIZE)?;
        Ok(())
    }
}

fn check_range(name: &'static str, value: u32, range: RangeInclusive<u32>) -> Result<(), ReliefError> {
    let (min, max) = (*range.start(), *range.end());
    if range.contains(&value) {
        Ok(())
    } else {
        Err(ReliefError::InvalidOption { name, message: format!("must be between {min} and {max}, got {value}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected_field(options: Options) -> &'static str {
        match options.validate() {
            Err(ReliefError::InvalidOption { name, .. }) => name,
            other => panic!("expected InvalidOption, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        Options::default().validate().expect("defaults must validate");
    }

    #[test]
    fn bounds_are_inclusive() {
        let low = Options { depth: 0.05, resolution: 32, max_triangles: 1_000, texture_size: 128 };
        low.validate().expect("lower bounds are valid");
        let high = Options { depth: 2.0, resolution: 512, max_triangles: 500_000, texture_size: 4096 };
        high.validate().expect("upper bounds are valid");
    }

    #[test]
    fn each_out_of_range_field_is_named() {
        let d = Options::default;
        assert_eq!(rejected_field(Options { depth: 0.01, ..d() }), "depth");
        assert_eq!(rejected_field(Options { depth: 2.5, ..d() }), "depth");
        assert_eq!(rejected_field(Options { depth: f32::NAN, ..d() }), "depth");
        assert_eq!(rejected_field(Options { resolution: 31, ..d() }), "resolution");
        assert_eq!(rejected_field(Options { resolution: 513, ..d() }), "resolution");
        assert_eq!(rejected_field(Options { max_triangles: 999, ..d() }), "max_triangles");
        assert_eq!(rejected_field(Options { max_triangles: 500_001, ..d() }), "max_triangles");
        assert_eq!(rejected_field(Options { texture_size: 127, ..d() }), "texture_size");
        assert_eq!(rejected_field(Options { texture_size: 4097, ..d() }), "texture_size");
    }
}
