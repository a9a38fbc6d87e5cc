//! What a task asks kiln itself to make, besides what its provider makes:
//! `params.formats` (files made when the task finishes) and `params.max_triangles` (a
//! simplified level of detail). These keys are kiln's, so they are checked here and taken
//! out of the parameters a provider sees, unless the provider has the same promise itself
//! (relief's own `max_triangles`).

use serde_json::Value;

use super::{CATALOGUE, FormatId};
use crate::{providers::Provider, tasks::TaskKind};

/// The parameter keys kiln reads itself.
const KEYS: [&str; 2] = ["formats", "max_triangles"];

/// The smallest and largest level of detail kiln makes.
pub const MAX_TRIANGLES: std::ops::RangeInclusive<u64> = 1_000..=5_000_000;

/// What a task asked for at creation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Asked {
    /// Formats to make when it finishes, in the order given, without repeats.
    pub formats: Vec<FormatId>,
    /// The level of detail's triangle budget.
    pub max_triangles: Option<u64>,
}

impl Asked {
    /// Reads and checks `params`; the message is shown to the client.
    pub fn from_params(kind: TaskKind, params: &Value) -> Result<Asked, String> {
        let mut asked = Asked::default();
        let Value::Object(params) = params else { return Ok(asked) };
        let three_d = kind.main_role() == "model";
        if let Some(formats) = params.get("formats") {
            let Value::Array(formats) = formats else {
                return Err("`formats` must be an array of format names, e.g. [\"stl\", \"usdz\"].".into());
            };
            if !three_d && !formats.is_empty() {
                return Err(format!("`formats` applies to 3D tasks only; a {} task makes a picture.", kind.as_str()));
            }
            for name in formats {
                let format = name
                    .as_str()
                    .and_then(|name| CATALOGUE.iter().find(|f| f.name == name && f.on_request()))
                    .ok_or_else(|| {
                        let shown: String =
                            name.to_string().chars().filter(|c| c.is_ascii_graphic()).take(32).collect();
                        format!("Unknown format {shown} in `formats`; kiln makes {}.", creatable())
                    })?;
                if !asked.formats.contains(&format.id) {
                    asked.formats.push(format.id);
                }
            }
        }
        if let Some(budget) = params.get("max_triangles") {
            if !three_d {
                return Err(format!("`max_triangles` applies to 3D tasks only, not to {}.", kind.as_str()));
            }
            match budget.as_u64().filter(|n| MAX_TRIANGLES.contains(n)) {
                Some(n) => asked.max_triangles = Some(n),
                None => {
                    return Err(format!(
                        "`max_triangles` must be an integer from {} to {}.",
                        MAX_TRIANGLES.start(),
                        MAX_TRIANGLES.end()
                    ));
                }
            }
        }
        Ok(asked)
    }
}

/// The formats `params.formats` takes, for messages.
fn creatable() -> String {
    CATALOGUE.iter().filter(|f| f.on_request()).map(|f| f.name).collect::<Vec<_>>().join(", ")
}

/// The parameters `provider` sees: kiln's own keys taken out, except those the provider
/// takes itself.
pub fn provider_params(params: &Value, provider: &dyn Provider) -> Value {
    match params {
        Value::Object(object) if KEYS.iter().any(|k| object.contains_key(*k)) => {
            let mut object = object.clone();
            object.retain(|key, _| !KEYS.contains(&key.as_str()) || provider.takes_output_param(key));
            Value::Object(object)
        }
        _ => params.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn formats_and_budget_are_read_in_order_without_repeats() {
        let asked = Asked::from_params(
            TaskKind::ImageTo3d,
            &json!({"formats": ["usdz", "stl", "usdz", "glb-core"], "max_triangles": 20000, "seed": 1}),
        );
        assert_eq!(
            asked,
            Ok(Asked { formats: vec![FormatId::Usdz, FormatId::Stl, FormatId::GlbCore], max_triangles: Some(20_000) })
        );
        assert_eq!(Asked::from_params(TaskKind::ImageTo3d, &json!(null)), Ok(Asked::default()));
    }

    #[test]
    fn bad_requests_are_refused_with_what_would_do() {
        let refused = |kind, params: Value| Asked::from_params(kind, &params).expect_err("refused");
        assert_eq!(
            refused(TaskKind::ImageTo3d, json!({"formats": ["fbx"]})),
            "Unknown format \"fbx\" in `formats`; kiln makes glb-meshopt, glb-core, preview, obj, stl, stl-mm, ply, usdz."
        );
        assert!(refused(TaskKind::ImageTo3d, json!({"formats": ["lod"]})).starts_with("Unknown format \"lod\""));
        assert!(refused(TaskKind::ImageTo3d, json!({"formats": "stl"})).contains("must be an array"));
        assert!(refused(TaskKind::TextToImage, json!({"formats": ["stl"]})).contains("3D tasks only"));
        assert!(refused(TaskKind::TextToImage, json!({"max_triangles": 5000})).contains("3D tasks only"));
        for budget in [json!(999), json!(5_000_001), json!(-1), json!(1.5), json!("5000")] {
            assert!(refused(TaskKind::ImageTo3d, json!({"max_triangles": budget})).contains("from 1000 to 5000000"));
        }
    }
}
