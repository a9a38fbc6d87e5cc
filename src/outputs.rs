//! The files kiln makes from a 3D result besides the provider's GLB: the catalogue of
//! formats (id, file name, role, content type), kept here and nowhere else, and the
//! conversions that make them (`derive`: one conversion under the process's ceilings;
//! `on_demand`: `GET /api/v1/tasks/{id}/result?format=`).
//!
//! File names are fixed per format, so an output's storage key never comes from user
//! input, and a conversion made twice lands on the same name (made once, then reused).

mod derive;
mod on_demand;

pub use derive::{Converter, Failure};
pub use on_demand::{Answer, Conversions, request};

use crate::error::{ApiError, Code};

/// A format kiln serves for a 3D result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FormatId {
    /// The provider's own GLB, served as it is.
    Glb,
    /// `output3d.zip`: OBJ + MTL + textures (seed 004's file).
    Obj,
    /// Binary STL in metres, Z up.
    Stl,
    /// Binary STL in millimetres, Z up (what slicers assume).
    StlMm,
    /// Binary PLY with vertex colours baked from the texture.
    Ply,
    /// USDZ for AR Quick Look.
    Usdz,
}

/// One row of the catalogue.
#[derive(Debug)]
pub struct Format {
    pub id: FormatId,
    /// The wire id (`?format=`, `params.formats`, output metadata).
    pub name: &'static str,
    /// The stored file's name.
    pub file: &'static str,
    /// The output's role: `model` for the provider's GLB, `archive` for zips a tool
    /// unpacks, `conversion` for single-file conversions.
    pub role: &'static str,
    pub content_type: &'static str,
    /// Made by kiln from the model (false: the provider's own file).
    pub converted: bool,
}

/// Every format, in the order the API lists them. The compressed and core GLB, the
/// level of detail and the preview join this table with the step that makes them when a
/// task finishes.
pub const CATALOGUE: &[Format] = &[
    Format {
        id: FormatId::Glb,
        name: "glb",
        file: "model.glb",
        role: "model",
        content_type: "model/gltf-binary",
        converted: false,
    },
    Format {
        id: FormatId::Obj,
        name: "obj",
        file: "output3d.zip",
        role: "archive",
        content_type: "application/zip",
        converted: true,
    },
    Format {
        id: FormatId::Stl,
        name: "stl",
        file: "model.stl",
        role: "conversion",
        content_type: "model/stl",
        converted: true,
    },
    Format {
        id: FormatId::StlMm,
        name: "stl-mm",
        file: "model-mm.stl",
        role: "conversion",
        content_type: "model/stl",
        converted: true,
    },
    Format {
        id: FormatId::Ply,
        name: "ply",
        file: "model.ply",
        role: "conversion",
        content_type: "application/x-ply",
        converted: true,
    },
    Format {
        id: FormatId::Usdz,
        name: "usdz",
        file: "model.usdz",
        // AR Quick Look opens a USDZ only with exactly this type.
        role: "conversion",
        content_type: "model/vnd.usdz+zip",
        converted: true,
    },
];

impl FormatId {
    /// The catalogue row of this format.
    pub fn format(self) -> &'static Format {
        // Every id has one row; the test below keeps it so.
        CATALOGUE.iter().find(|f| f.id == self).unwrap_or(&CATALOGUE[0])
    }

    pub fn as_str(self) -> &'static str {
        self.format().name
    }

    /// Reads `?format=` (and `units`, whose `mm` makes `stl` into `stl-mm`).
    pub fn parse(name: &str, units: Option<&str>) -> Result<FormatId, ApiError> {
        let id = CATALOGUE.iter().find(|f| f.name == name).map(|f| f.id).ok_or_else(|| {
            ApiError::with_message(
                Code::UnknownFormat,
                format!("Unknown format `{}`; kiln makes {}.", printable(name), names()),
            )
        })?;
        match (id, units) {
            (_, None) => Ok(id),
            (FormatId::Stl | FormatId::StlMm, Some("m")) => Ok(FormatId::Stl),
            (FormatId::Stl | FormatId::StlMm, Some("mm")) => Ok(FormatId::StlMm),
            (FormatId::Stl | FormatId::StlMm, Some(_)) => {
                Err(ApiError::with_message(Code::InvalidRequest, "`units` must be `m` or `mm`."))
            }
            (_, Some(_)) => Err(ApiError::with_message(Code::InvalidRequest, "`units` applies to `stl` only.")),
        }
    }
}

/// The format ids, for messages.
fn names() -> String {
    CATALOGUE.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

/// A client's format name as it may be quoted back: short, visible ASCII.
fn printable(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_graphic()).take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::Artifact;

    #[test]
    fn every_format_has_one_row_with_a_valid_file_name() {
        let ids = [FormatId::Glb, FormatId::Obj, FormatId::Stl, FormatId::StlMm, FormatId::Ply, FormatId::Usdz];
        assert_eq!(ids.len(), CATALOGUE.len());
        for id in ids {
            assert_eq!(CATALOGUE.iter().filter(|f| f.id == id).count(), 1, "{id:?}");
            let format = id.format();
            assert_eq!(format.id, id);
            assert!(Artifact::valid_name(format.file), "{}", format.file);
            assert_eq!(FormatId::parse(format.name, None).ok(), Some(id));
        }
        let files: std::collections::HashSet<_> = CATALOGUE.iter().map(|f| f.file).collect();
        assert_eq!(files.len(), CATALOGUE.len(), "two formats share a file name");
    }

    #[test]
    fn units_pick_the_stl_flavour_and_nothing_else() {
        assert_eq!(FormatId::parse("stl", Some("mm")).ok(), Some(FormatId::StlMm));
        assert_eq!(FormatId::parse("stl", Some("m")).ok(), Some(FormatId::Stl));
        assert_eq!(FormatId::parse("stl-mm", Some("m")).ok(), Some(FormatId::Stl));
        assert_eq!(FormatId::parse("stl", Some("in")).map_err(|e| e.code).err(), Some(Code::InvalidRequest));
        assert_eq!(FormatId::parse("ply", Some("mm")).map_err(|e| e.code).err(), Some(Code::InvalidRequest));
        let unknown = FormatId::parse("fbx\u{7}", None).err().map(|e| (e.code, e.message));
        assert_eq!(
            unknown,
            Some((Code::UnknownFormat, "Unknown format `fbx`; kiln makes glb, obj, stl, stl-mm, ply, usdz.".into()))
        );
    }
}
