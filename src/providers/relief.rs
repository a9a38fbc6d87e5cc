//! `relief`: the in-process CPU engine as a provider. It runs [`::relief`] on a blocking
//! thread (the engine is synchronous and CPU-bound, and would otherwise stall the async
//! workers), turns the engine's stage reports into task progress, stops between stages
//! when the task is canceled or overdue, and stores the model as `model.glb`.
//!
//! Options come from two places, both with the same keys (`depth`, `resolution`,
//! `max_triangles`, `texture_size`): the channel's `options` table sets its defaults,
//! and a task's `params` override them for that task.

use std::sync::Arc;

use ::relief::{Options, ReliefError, Stage, Stats};
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::{
    config::ChannelConfig,
    providers::{
        Job, JobContext, Outcome, Output, Provider, ProviderError,
        form::{Field, FieldType, ProviderForm},
    },
    tasks::TaskKind,
};

/// The keys `params` and the channel's `options` may hold.
const KEYS: [&str; 4] = ["depth", "resolution", "max_triangles", "texture_size"];

/// The relief engine with its channel's default options.
pub struct Relief {
    defaults: Options,
}

/// The admin console's form for a relief channel: its options are the engine's
/// defaults for every task.
pub fn form() -> ProviderForm {
    let d = Options::default();
    let range =
        |name: &str, lo: String, hi: String| format!("{name}, from {lo} to {hi}; a task's params may override it.");
    ProviderForm {
        provider: "relief".into(),
        title: "relief (built-in CPU engine)".into(),
        kinds: vec![TaskKind::ImageTo3d],
        secret: None,
        default_base_url: None,
        base_urls: Vec::new(),
        options: vec![
            Field::new(
                "depth",
                FieldType::Number,
                json!(round(d.depth)),
                &range(
                    "Thickness as a share of the width",
                    Options::DEPTH.start().to_string(),
                    Options::DEPTH.end().to_string(),
                ),
            ),
            Field::new(
                "resolution",
                FieldType::Integer,
                json!(d.resolution),
                &range(
                    "Grid cells across the object",
                    Options::RESOLUTION.start().to_string(),
                    Options::RESOLUTION.end().to_string(),
                ),
            ),
            Field::new(
                "max_triangles",
                FieldType::Integer,
                json!(d.max_triangles),
                &range(
                    "Triangles at most",
                    Options::MAX_TRIANGLES.start().to_string(),
                    Options::MAX_TRIANGLES.end().to_string(),
                ),
            ),
            Field::new(
                "texture_size",
                FieldType::Integer,
                json!(d.texture_size),
                &range(
                    "The texture's longest side in pixels",
                    Options::TEXTURE_SIZE.start().to_string(),
                    Options::TEXTURE_SIZE.end().to_string(),
                ),
            ),
        ],
    }
}

/// The registry's factory: reads the channel's `options` table as the defaults, so a
/// mistake there is reported at start-up (as `channels[i].options`), not per task.
pub fn factory(channel: &ChannelConfig) -> anyhow::Result<Arc<dyn Provider>> {
    let defaults = options_from(&Options::default(), &channel.options).map_err(|message| anyhow::anyhow!(message))?;
    Ok(Arc::new(Relief { defaults }))
}

impl Relief {
    /// The options for one task: the channel's defaults, overridden by `params`.
    fn options(&self, params: &Value) -> Result<Options, String> {
        match params {
            Value::Object(object) => options_from(&self.defaults, object),
            Value::Null => Ok(self.defaults.clone()),
            _ => Err("`params` must be a JSON object.".to_owned()),
        }
    }
}

#[async_trait]
impl Provider for Relief {
    fn describe(&self) -> String {
        "relief: a fast CPU preview engine, not a neural model. It finds the object in one \
         picture, inflates its silhouette into a rounded, watertight solid (the back mirrors \
         the front) and paints the picture on it; a textured GLB in a fraction of a second."
            .to_owned()
    }

    async fn test_connection(&self) -> Result<String, String> {
        Ok("The relief engine runs inside kiln: there is nothing to connect to.".to_owned())
    }

    fn check_params(&self, _kind: TaskKind, params: &Value) -> Result<(), String> {
        self.options(params).map(|_| ())
    }

    /// relief's own `max_triangles` is the same promise as kiln's level of detail: its
    /// model is made within the budget, so no simplified copy is needed.
    fn takes_output_param(&self, name: &str) -> bool {
        name == "max_triangles"
    }

    async fn run(&self, job: Job, ctx: JobContext) -> Result<Outcome, ProviderError> {
        let options = self.options(&job.params).map_err(|message| ProviderError::new("invalid_params", message))?;
        let Some(image) = job.image else {
            return Err(ProviderError::new("missing_input", "The relief engine needs a picture."));
        };
        let model = reconstruct(image.bytes, options.clone(), &ctx).await?;
        let size = model.glb.len();
        let stats = stats_json(&model.stats);
        let file = ctx.spool_bytes(&model.glb).await.map_err(ProviderError::internal)?;
        drop(model.glb);
        ctx.output(Output {
            name: "model.glb".to_owned(),
            role: "model".to_owned(),
            content_type: "model/gltf-binary".to_owned(),
            file,
            metadata: stats.clone(),
        })
        .await
        .map_err(ProviderError::internal)?;
        let mut metadata = json!({
            "format": "glb",
            "size": size,
            "engine": "relief",
            "options": {
                "depth": round(options.depth),
                "resolution": options.resolution,
                "max_triangles": options.max_triangles,
                "texture_size": options.texture_size,
            },
        });
        if let (Some(metadata), Value::Object(stats)) = (metadata.as_object_mut(), stats) {
            metadata.extend(stats);
        }
        Ok(Outcome::Completed { metadata })
    }
}

/// Runs the engine on a blocking thread and forwards its progress as it comes.
async fn reconstruct(bytes: Bytes, options: Options, ctx: &JobContext) -> Result<::relief::Model, ProviderError> {
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
    let token = ctx.cancelled().clone();
    let mut engine = tokio::task::spawn_blocking(move || {
        let mut report = |stage: Stage, percent: u8| {
            // The receiver only goes away when the run was abandoned; nothing to tell.
            let _ = progress_tx.send((stage, percent));
        };
        ::relief::reconstruct_cancellable(&bytes, &options, &mut report, &|| token.is_cancelled())
    });
    let joined = loop {
        tokio::select! {
            // Progress first, so reports are forwarded before the end is handled.
            biased;
            Some((stage, percent)) = progress_rx.recv() => forward(ctx, stage, percent).await,
            joined = &mut engine => break joined,
        }
    };
    // The engine may have reported a last stage between the final poll and its end.
    while let Ok((stage, percent)) = progress_rx.try_recv() {
        forward(ctx, stage, percent).await;
    }
    let result = joined.map_err(|err| ProviderError::internal(anyhow::anyhow!("the relief engine stopped: {err}")))?;
    result.map_err(provider_error)
}

/// Records one stage report as task progress. The engine's final 100 % means "model
/// ready", which is not yet "stored": the task's completion reports 100 instead.
async fn forward(ctx: &JobContext, stage: Stage, percent: u8) {
    if percent >= 100 {
        return;
    }
    if let Err(err) = ctx.progress(percent, stage_name(stage)).await {
        // A lost progress event is no reason to throw the model away.
        tracing::warn!(error = format!("{err:#}"), "cannot record relief progress");
    }
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Segmenting => "segmenting",
        Stage::Meshing => "meshing",
        Stage::Texturing => "texturing",
        Stage::Encoding => "encoding",
    }
}

fn provider_error(err: ReliefError) -> ProviderError {
    match err {
        ReliefError::NoForegroundObject => ProviderError::new(
            err.code(),
            "No object found: nothing in the picture stands out from its background. Use a \
             picture of one object on a plain background, or a cut-out with transparency.",
        ),
        ReliefError::InvalidImage(ref reason) => {
            ProviderError::new(err.code(), format!("The relief engine cannot read the picture: {reason}."))
        }
        ReliefError::InvalidOption { name, ref message } => {
            ProviderError::new(err.code(), format!("`{name}` {message}."))
        }
        ReliefError::Cancelled => ProviderError::new(err.code(), "The task was canceled."),
        ReliefError::Encode(_) => ProviderError::internal(err),
    }
}

/// Reads the known keys of `object` over `base`, refusing unknown keys, values of the
/// wrong type and values out of range, each with a sentence naming the key.
fn options_from(base: &Options, object: &Map<String, Value>) -> Result<Options, String> {
    let mut options = base.clone();
    for (key, value) in object {
        match key.as_str() {
            "depth" => {
                let depth = value.as_f64().ok_or_else(|| {
                    format!(
                        "`depth` must be a number from {} to {}, got {value}.",
                        Options::DEPTH.start(),
                        Options::DEPTH.end()
                    )
                })?;
                // Out-of-range values (even ones too large for f32) fail the range check below.
                options.depth = depth as f32;
            }
            "resolution" => options.resolution = whole(key, value, &Options::RESOLUTION)?,
            "max_triangles" => options.max_triangles = whole(key, value, &Options::MAX_TRIANGLES)?,
            "texture_size" => options.texture_size = whole(key, value, &Options::TEXTURE_SIZE)?,
            _ => {
                return Err(format!("Unknown parameter `{key}`: the relief engine takes {}.", KEYS.join(", ")));
            }
        }
    }
    options.validate().map_err(|err| match err {
        ReliefError::InvalidOption { name, message } => format!("`{name}` {message}."),
        other => other.to_string(),
    })?;
    Ok(options)
}

/// A whole number in `range`; `64.0` counts as whole, since JSON does not tell them apart.
fn whole(key: &str, value: &Value, range: &std::ops::RangeInclusive<u32>) -> Result<u32, String> {
    let (min, max) = (range.start(), range.end());
    let number = value.as_u64().or_else(|| {
        value.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64).map(|f| f as u64)
    });
    match number {
        Some(n) => match u32::try_from(n) {
            Ok(n) => Ok(n),
            Err(_) => Err(format!("`{key}` must be between {min} and {max}, got {n}.")),
        },
        None => Err(format!("`{key}` must be a whole number from {min} to {max}, got {value}.")),
    }
}

/// The engine's statistics as metadata. Coordinates are rounded to 6 decimals: the f32
/// values printed as f64 would otherwise carry meaningless digits.
fn stats_json(stats: &Stats) -> Value {
    json!({
        "vertices": stats.vertices,
        "triangles": stats.triangles,
        "bbox": { "min": stats.bbox_min.map(round), "max": stats.bbox_max.map(round) },
        "texture": {
            "width": stats.texture_width,
            "height": stats.texture_height,
            "format": stats.texture_format,
        },
    })
}

fn round(value: f32) -> f64 {
    (f64::from(value) * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relief() -> Relief {
        Relief { defaults: Options::default() }
    }

    fn refused(params: Value) -> String {
        relief().check_params(TaskKind::ImageTo3d, &params).expect_err("refused")
    }

    #[test]
    fn valid_params_override_the_defaults() {
        let options = relief()
            .options(&json!({"depth": 0.8, "resolution": 64, "max_triangles": 2000, "texture_size": 512.0}))
            .expect("valid");
        assert_eq!(options, Options { depth: 0.8, resolution: 64, max_triangles: 2000, texture_size: 512 });
        assert_eq!(relief().options(&json!({})).expect("empty"), Options::default());
    }

    #[test]
    fn bad_params_are_refused_with_the_key_named() {
        assert_eq!(
            refused(json!({"detail": 3})),
            "Unknown parameter `detail`: the relief engine takes depth, resolution, max_triangles, texture_size."
        );
        assert_eq!(refused(json!({"depth": 5})), "`depth` must be between 0.05 and 2, got 5.");
        assert_eq!(refused(json!({"depth": "deep"})), "`depth` must be a number from 0.05 to 2, got \"deep\".");
        assert_eq!(
            refused(json!({"resolution": 64.5})),
            "`resolution` must be a whole number from 32 to 512, got 64.5."
        );
        assert_eq!(refused(json!({"resolution": -1})), "`resolution` must be a whole number from 32 to 512, got -1.");
        assert_eq!(refused(json!({"max_triangles": 10})), "`max_triangles` must be between 1000 and 500000, got 10.");
        assert_eq!(
            refused(json!({"texture_size": 5_000_000_000u64})),
            "`texture_size` must be between 128 and 4096, got 5000000000."
        );
        assert_eq!(refused(json!([1])), "`params` must be a JSON object.");
    }

    #[test]
    fn channel_options_set_the_defaults_and_are_checked() {
        let channel = |options: Value| ChannelConfig {
            options: options.as_object().cloned().expect("an object"),
            ..ChannelConfig::relief()
        };
        assert!(factory(&channel(json!({"depth": 0.5, "texture_size": 512}))).is_ok());
        let err = factory(&channel(json!({"depht": 0.5}))).err().expect("typo refused").to_string();
        assert!(err.contains("`depht`"), "{err}");
        let err = factory(&channel(json!({"resolution": 4}))).err().expect("range refused").to_string();
        assert!(err.contains("`resolution` must be between 32 and 512"), "{err}");
    }

    #[test]
    fn engine_errors_keep_their_codes() {
        assert_eq!(provider_error(ReliefError::NoForegroundObject).code, "no_foreground_object");
        assert_eq!(provider_error(ReliefError::InvalidImage("bad".into())).code, "invalid_image");
        assert_eq!(provider_error(ReliefError::Encode("x".into())).code, "provider_error");
    }
}
