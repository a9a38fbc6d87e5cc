//! The files kiln makes from a 3D result besides the provider's GLB: the catalogue of
//! formats (id, file name, role, content type), kept here and nowhere else, and the
//! conversions that make them (`derive`: one conversion under the process's ceilings;
//! `on_demand`: `GET /api/v1/tasks/{id}/result?format=`).
//!
//! File names are fixed per format, so an output's storage key never comes from user
//! input, and a conversion made twice lands on the same name (made once, then reused).

mod asked;
mod derive;
mod finishing;
mod on_demand;

pub use asked::{Asked, provider_params};
pub use derive::{Converter, Failure};
pub use finishing::{Finished, finish_outputs};
pub use on_demand::{Answer, Conversions, request, states};

use crate::error::{ApiError, Code};

/// A format kiln serves for a 3D result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FormatId {
    /// The provider's own GLB, served as it is.
    Glb,
    /// The GLB with meshopt-compressed, quantized geometry and JPEG textures: what the
    /// web page's viewer loads.
    GlbMeshopt,
    /// The GLB without extensions (WebP textures re-encoded), for readers that know only
    /// core glTF: Android's Scene Viewer, older engines.
    GlbCore,
    /// A level of detail simplified to `params.max_triangles`.
    Lod,
    /// A PNG picture of the model, front three-quarter view, transparent background.
    Preview,
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
    /// `pixel_images.png`: the object cut out of the input picture (seed 004's file).
    Cutout,
    /// `xyz_images.png`: the front surface's positions (seed 004's file).
    PositionMap,
}

/// Who makes a format's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maker {
    /// The provider (or worker), when it can: kiln cannot make it.
    Provider,
    /// kiln, when the task finishes (and on request for tasks finished before).
    Finishing,
    /// kiln, when the task finishes if `params.max_triangles` asks for it.
    Budget,
    /// kiln, when asked at creation (`params.formats`) or on request.
    Request,
}

/// One row of the catalogue.
#[derive(Debug)]
pub struct Format {
    pub id: FormatId,
    /// The wire id (`?format=`, `params.formats`, output metadata).
    pub name: &'static str,
    /// The stored file's name.
    pub file: &'static str,
    /// The output's role: `model` for the provider's GLB, `variant` for other GLBs of the
    /// same model, `archive` for zips a tool unpacks, `conversion` for single-file
    /// conversions, `preview`, and seed 004's `cutout` and `position_map`.
    pub role: &'static str,
    pub content_type: &'static str,
    pub maker: Maker,
}

impl Format {
    /// kiln makes it from the model (false: the provider's own file).
    pub fn converted(&self) -> bool {
        self.maker != Maker::Provider
    }

    /// `?format=` may make it: everything kiln makes except the level of detail, whose
    /// budget only the task's parameters give.
    pub fn on_request(&self) -> bool {
        matches!(self.maker, Maker::Finishing | Maker::Request)
    }

    /// `params.formats` may ask for it at creation.
    pub fn asked_at_creation(&self) -> bool {
        self.maker == Maker::Request
    }
}

const fn row(
    id: FormatId,
    name: &'static str,
    file: &'static str,
    role: &'static str,
    content_type: &'static str,
    maker: Maker,
) -> Format {
    Format { id, name, file, role, content_type, maker }
}

const GLB: &str = "model/gltf-binary";

/// Every format, in the order the API lists them (the download menu's order).
pub const CATALOGUE: &[Format] = &[
    row(FormatId::Glb, "glb", "model.glb", "model", GLB, Maker::Provider),
    row(FormatId::GlbMeshopt, "glb-meshopt", "model.meshopt.glb", "variant", GLB, Maker::Finishing),
    row(FormatId::GlbCore, "glb-core", "model.core.glb", "variant", GLB, Maker::Finishing),
    row(FormatId::Lod, "lod", "model.lod.glb", "variant", GLB, Maker::Budget),
    row(FormatId::Preview, "preview", "preview.png", "preview", "image/png", Maker::Finishing),
    row(FormatId::Obj, "obj", "output3d.zip", "archive", "application/zip", Maker::Request),
    row(FormatId::Stl, "stl", "model.stl", "conversion", "model/stl", Maker::Request),
    row(FormatId::StlMm, "stl-mm", "model-mm.stl", "conversion", "model/stl", Maker::Request),
    row(FormatId::Ply, "ply", "model.ply", "conversion", "application/x-ply", Maker::Request),
    // AR Quick Look opens a USDZ only with exactly this type.
    row(FormatId::Usdz, "usdz", "model.usdz", "conversion", "model/vnd.usdz+zip", Maker::Request),
    row(FormatId::Cutout, "cutout", "pixel_images.png", "cutout", "image/png", Maker::Provider),
    row(FormatId::PositionMap, "position-map", "xyz_images.png", "position_map", "image/png", Maker::Provider),
];

/// What a file a provider or worker sends is to the client, from its name: a catalogue
/// file has the catalogue's role, so that `model.meshopt.glb` never passes for the model
/// and `pixel_images.png` never for the preview; other names go by their extension.
pub fn role_of_file(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    if let Some(format) = CATALOGUE.iter().find(|f| f.file == lower) {
        return format.role;
    }
    let extension = lower.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
    match extension {
        _ if lower.starts_with("pixel_images") => "cutout",
        _ if lower.starts_with("xyz_images") => "position_map",
        "glb" if [".meshopt.glb", ".core.glb", ".lod.glb"].iter().any(|s| lower.ends_with(s)) => "variant",
        "glb" | "gltf" | "obj" | "fbx" | "ply" | "stl" | "usdz" => "model",
        "zip" => "archive",
        "png" | "jpg" | "jpeg" | "webp" => "preview",
        _ => "file",
    }
}

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
        let ids = [
            FormatId::Glb,
            FormatId::GlbMeshopt,
            FormatId::GlbCore,
            FormatId::Lod,
            FormatId::Preview,
            FormatId::Obj,
            FormatId::Stl,
            FormatId::StlMm,
            FormatId::Ply,
            FormatId::Usdz,
            FormatId::Cutout,
            FormatId::PositionMap,
        ];
        assert_eq!(ids.len(), CATALOGUE.len());
        for id in ids {
            assert_eq!(CATALOGUE.iter().filter(|f| f.id == id).count(), 1, "{id:?}");
            let format = id.format();
            assert_eq!(format.id, id);
            assert!(Artifact::valid_name(format.file), "{}", format.file);
            assert_eq!(FormatId::parse(format.name, None).ok(), Some(id));
            assert_eq!(role_of_file(format.file), format.role, "a provider's {} keeps its role", format.file);
        }
        let files: std::collections::HashSet<_> = CATALOGUE.iter().map(|f| f.file).collect();
        assert_eq!(files.len(), CATALOGUE.len(), "two formats share a file name");
    }

    #[test]
    fn files_a_provider_sends_get_roles_by_name() {
        for (name, role) in [
            ("model.glb", "model"),
            ("Model.GLB", "model"),
            ("scan.glb", "model"),
            ("scan.meshopt.glb", "variant"),
            ("model.core.glb", "variant"),
            ("pixel_images.png", "cutout"),
            ("pixel_images_1.png", "cutout"),
            ("xyz_images.png", "position_map"),
            ("preview.png", "preview"),
            ("render.jpg", "preview"),
            ("output3d.zip", "archive"),
            ("model.stl", "conversion"),
            ("mesh.stl", "model"),
            ("notes", "file"),
        ] {
            assert_eq!(role_of_file(name), role, "{name}");
        }
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
            Some((
                Code::UnknownFormat,
                "Unknown format `fbx`; kiln makes glb, glb-meshopt, glb-core, lod, preview, obj, stl, stl-mm, ply, \
                 usdz, cutout, position-map."
                    .into()
            ))
        );
    }
}
