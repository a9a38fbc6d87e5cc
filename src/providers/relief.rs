//! `relief`: the in-process CPU engine as a provider. It runs [`::relief`] on a blocking
//! thread (the engine is synchronous and CPU-bound, and would otherwise stall the async
//! workers), turns the engine's stage reports into task progress, stops between stages
//! when the task is canceled or overdue, and stores seed 004's files as each is ready:
//! `pixel_images.png` (the cut-out), `xyz_images.png` (the front surface's position
//! map), `model.glb`, then `output3d.zip` (OBJ + MTL + texture, made from the GLB by the
//! `formats` crate).
//!
//! Options come from two places, both with the same keys (`depth`, `resolution`,
//! `max_triangles`, `texture_size`): the channel's `options` table sets its defaults,
//! and a task's `params` override them for that task.

use std::io::Cursor;
use std::sync::Arc;

use ::relief::{Observer, Options, Product, ReliefError, Stage, Stats};
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
        let glb = Bytes::from(model.glb);
        let file = ctx.spool_bytes(&glb).await.map_err(ProviderError::internal)?;
        let glb_sha256 = file.sha256.clone();
        ctx.output(Output {
            name: "model.glb".to_owned(),
            role: "model".to_owned(),
            content_type: "model/gltf-binary".to_owned(),
            file,
            metadata: stats.clone(),
        })
        .await
        .map_err(ProviderError::internal)?;
        archive(glb, glb_sha256, &ctx).await?;
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

/// What the engine's thread tells the provider while it runs.
enum Report {
    Progress(Stage, u8),
    Product(Product),
}

/// The engine's observer: sends every report over the channel.
struct Reporter(mpsc::UnboundedSender<Report>);

impl Observer for Reporter {
    fn stage(&mut self, stage: Stage, percent: u8) {
        // The receiver only goes away when the run was abandoned; nothing to tell.
        let _ = self.0.send(Report::Progress(stage, percent));
    }

    fn product(&mut self, product: Product) {
        let _ = self.0.send(Report::Product(product));
    }
}

/// Runs the engine on a blocking thread, forwarding its progress and storing its
/// products as they come. A product that cannot be stored stops the engine and fails
/// the run: seed 004's clients count on every file.
async fn reconstruct(bytes: Bytes, options: Options, ctx: &JobContext) -> Result<::relief::Model, ProviderError> {
    let (report_tx, mut report_rx) = mpsc::unbounded_channel();
    // The engine stops when the task is canceled or when a product was lost.
    let stop = ctx.cancelled().child_token();
    let engine_stop = stop.clone();
    let mut engine = tokio::task::spawn_blocking(move || {
        ::relief::reconstruct_observed(&bytes, &options, &mut Reporter(report_tx), &|| engine_stop.is_cancelled())
    });
    let mut lost: Option<ProviderError> = None;
    let joined = loop {
        tokio::select! {
            // Reports first, so they are handled before the end is.
            biased;
            Some(report) = report_rx.recv() => forward(ctx, report, &stop, &mut lost).await,
            joined = &mut engine => break joined,
        }
    };
    // The engine may have reported between the final poll and its end.
    while let Ok(report) = report_rx.try_recv() {
        forward(ctx, report, &stop, &mut lost).await;
    }
    let result = joined.map_err(|err| ProviderError::internal(anyhow::anyhow!("the relief engine stopped: {err}")))?;
    if let Some(lost) = lost {
        return Err(lost);
    }
    result.map_err(provider_error)
}

/// Handles one report: a stage becomes task progress, a product a stored output. After
/// a product was lost (`lost`), later products are not stored either.
async fn forward(ctx: &JobContext, report: Report, stop: &CancellationToken, lost: &mut Option<ProviderError>) {
    match report {
        Report::Progress(stage, percent) => progress(ctx, stage, percent).await,
        Report::Product(product) if lost.is_none() => {
            if let Err(err) = store_product(ctx, product).await {
                *lost = Some(err);
                stop.cancel();
            }
        }
        Report::Product(_) => {}
    }
}

/// Records one stage report as task progress. The engine's final 100 % means "model
/// ready", which is not yet "stored": the task's completion reports 100 instead.
async fn progress(ctx: &JobContext, stage: Stage, percent: u8) {
    if percent >= 100 {
        return;
    }
    if let Err(err) = ctx.progress(percent, stage_name(stage)).await {
        // A lost progress event is no reason to throw the model away.
        tracing::warn!(error = format!("{err:#}"), "cannot record relief progress");
    }
}

/// Stores a cut-out or position map under seed 004's name, with its role and size.
async fn store_product(ctx: &JobContext, product: Product) -> Result<(), ProviderError> {
    let (role, format) = match product {
        Product::Cutout(_) => ("cutout", "cutout"),
        Product::PositionMap(_) => ("position_map", "position-map"),
    };
    let mut metadata = json!({ "format": format });
    if let Ok((width, height)) = image::ImageReader::new(Cursor::new(product.bytes()))
        .with_guessed_format()
        .map_err(image::ImageError::from)
        .and_then(|reader| reader.into_dimensions())
    {
        metadata["width"] = json!(width);
        metadata["height"] = json!(height);
    }
    if let Product::PositionMap(_) = product {
        // Enough for a client to decode it without reading docs/relief.md.
        metadata["encoding"] = json!({
            "bits": 16,
            "xyz": "rgb / 65535 - 0.5, in model.glb's coordinates",
            "inside": "alpha = 65535; elsewhere every channel is 0",
        });
    }
    let file = ctx.spool_bytes(product.bytes()).await.map_err(ProviderError::internal)?;
    ctx.output(Output {
        name: product.file_name().to_owned(),
        role: role.to_owned(),
        content_type: "image/png".to_owned(),
        file,
        metadata,
    })
    .await
    .map_err(ProviderError::internal)
}

/// Makes `output3d.zip` (OBJ + MTL + texture) from the stored GLB on a blocking thread
/// and stores it. relief's models are small (60 000 triangles by default, 500 000 at
/// most), so the zip is made in memory. A model the converter refuses is a fault here,
/// not the task's: the model is kept and the failure logged.
async fn archive(glb: Bytes, glb_sha256: String, ctx: &JobContext) -> Result<(), ProviderError> {
    let cancel = formats::Cancel::new();
    let converter_cancel = cancel.clone();
    let mut converter = tokio::task::spawn_blocking(move || {
        let model = formats::Model::read_glb(&glb, &formats::Limits::default(), &converter_cancel)?;
        let mut zip = Cursor::new(Vec::new());
        let summary = formats::write::obj_zip(&model, &mut zip, &converter_cancel)?;
        let mut notes = model.notes.clone();
        notes.extend(summary.notes);
        Ok::<_, formats::FormatError>((zip.into_inner(), summary.triangles, summary.vertices, notes))
    });
    let joined = tokio::select! {
        joined = &mut converter => joined,
        () = ctx.cancelled().cancelled() => {
            cancel.cancel();
            converter.await
        }
    };
    let (zip, triangles, vertices, notes) = match joined {
        Ok(Ok(made)) => made,
        Ok(Err(formats::FormatError::Cancelled)) => {
            return Err(ProviderError::new("canceled", "The task was canceled."));
        }
        Ok(Err(err)) => {
            tracing::error!(error = %err, "relief's model could not be converted to output3d.zip");
            return Ok(());
        }
        Err(err) => return Err(ProviderError::internal(anyhow::anyhow!("the OBJ converter stopped: {err}"))),
    };
    let file = ctx.spool_bytes(&zip).await.map_err(ProviderError::internal)?;
    ctx.output(Output {
        name: "output3d.zip".to_owned(),
        role: "archive".to_owned(),
        content_type: "application/zip".to_owned(),
        file,
        metadata: json!({
            "format": "obj",
            "source": "model.glb",
            "source_sha256": glb_sha256,
            "triangles": triangles,
            "vertices": vertices,
            "notes": notes,
        }),
    })
    .await
    .map_err(ProviderError::internal)
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

    /// Records what a run reports, in order; refuses to store `refuse` if set.
    struct Recorder {
        seen: std::sync::Mutex<Vec<(String, Option<Output>)>>,
        refuse: Option<&'static str>,
    }

    #[async_trait]
    impl crate::providers::JobSink for Recorder {
        async fn progress(&self, progress: u8, stage: &str) -> anyhow::Result<()> {
            self.seen.lock().expect("not poisoned").push((format!("{stage} {progress}"), None));
            Ok(())
        }
        async fn output(&self, output: Output) -> anyhow::Result<()> {
            if self.refuse == Some(output.name.as_str()) {
                anyhow::bail!("storage is down");
            }
            self.seen.lock().expect("not poisoned").push((output.name.clone(), Some(output)));
            Ok(())
        }
        async fn submitting(&self, _in_flight: bool) -> anyhow::Result<()> {
            Ok(())
        }
        async fn submitted(&self, _job_id: &str, _placement: Option<&str>) -> anyhow::Result<()> {
            Ok(())
        }
        async fn place(&self, _placement: &str) -> anyhow::Result<()> {
            Ok(())
        }
    }

    /// A red disc on white, as a PNG.
    fn disc() -> Bytes {
        let picture = image::RgbImage::from_fn(160, 120, |x, y| {
            let (dx, dy) = (f64::from(x) - 80.0, f64::from(y) - 60.0);
            if dx * dx + dy * dy < 45.0 * 45.0 { image::Rgb([200, 40, 40]) } else { image::Rgb([255, 255, 255]) }
        });
        let mut bytes = Cursor::new(Vec::new());
        picture.write_to(&mut bytes, image::ImageFormat::Png).expect("encodes");
        Bytes::from(bytes.into_inner())
    }

    async fn run_with(refuse: Option<&'static str>) -> (Result<Outcome, ProviderError>, Vec<(String, Option<Output>)>) {
        let sink = Arc::new(Recorder { seen: std::sync::Mutex::new(Vec::new()), refuse });
        let spool = tempfile::tempdir().expect("a spool folder");
        let ctx = JobContext::new(sink.clone(), CancellationToken::new(), spool.path().to_owned());
        let job = Job {
            task_id: crate::tasks::TaskId::new(),
            kind: TaskKind::ImageTo3d,
            model: "relief".into(),
            upstream_model: "relief".into(),
            prompt: None,
            image: Some(crate::providers::InputImage {
                bytes: disc(),
                format: "png".into(),
                content_type: "image/png".into(),
                width: 160,
                height: 120,
            }),
            params: json!({"resolution": 48, "texture_size": 128}),
            attempt: 1,
            deadline: None,
            upstream: crate::providers::Upstream::None,
            client_key: None,
        };
        let outcome = relief().run(job, ctx).await;
        let seen = std::mem::take(&mut *sink.seen.lock().expect("not poisoned"));
        (outcome, seen)
    }

    #[tokio::test]
    async fn seed_004s_files_are_stored_as_each_is_ready() {
        let (outcome, seen) = run_with(None).await;
        assert!(matches!(outcome, Ok(Outcome::Completed { .. })), "{outcome:?}");
        let order: Vec<&str> = seen.iter().map(|(what, _)| what.as_str()).collect();
        assert_eq!(
            order,
            [
                "segmenting 0",
                "meshing 25",
                "texturing 60",
                "pixel_images.png",
                "encoding 85",
                "xyz_images.png",
                "model.glb",
                "output3d.zip"
            ]
        );
        let outputs: Vec<&Output> = seen.iter().filter_map(|(_, output)| output.as_ref()).collect();
        let kinds: Vec<(&str, &str)> = outputs.iter().map(|o| (o.role.as_str(), o.content_type.as_str())).collect();
        assert_eq!(
            kinds,
            [
                ("cutout", "image/png"),
                ("position_map", "image/png"),
                ("model", "model/gltf-binary"),
                ("archive", "application/zip")
            ]
        );
        let texture = &outputs[2].metadata["texture"];
        for map in &outputs[..2] {
            assert_eq!(map.metadata["width"], texture["width"], "{}", map.name);
            assert_eq!(map.metadata["height"], texture["height"], "{}", map.name);
        }
        assert_eq!(outputs[0].metadata["format"], "cutout");
        assert_eq!(outputs[1].metadata["format"], "position-map");
        assert_eq!(outputs[1].metadata["encoding"]["bits"], 16);
        let zip = &outputs[3];
        assert_eq!(zip.metadata["format"], "obj");
        assert_eq!(zip.metadata["source_sha256"], json!(outputs[2].file.sha256));
        assert_eq!(zip.metadata["triangles"], outputs[2].metadata["triangles"]);
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &zip.file.file, &mut bytes).expect("reads the spooled zip");
        assert!(bytes.starts_with(b"PK\x03\x04"), "not a zip");
        assert_eq!(bytes.len() as u64, zip.file.len);
    }

    #[tokio::test]
    async fn a_product_that_cannot_be_stored_fails_the_run_before_the_model() {
        let (outcome, seen) = run_with(Some("pixel_images.png")).await;
        let err = outcome.expect_err("a lost product fails the run");
        assert_eq!(err.code, "provider_error");
        assert!(seen.iter().all(|(what, _)| what != "model.glb" && what != "xyz_images.png"), "{:?}", {
            seen.iter().map(|(what, _)| what.clone()).collect::<Vec<_>>()
        });
    }

    #[test]
    fn engine_errors_keep_their_codes() {
        assert_eq!(provider_error(ReliefError::NoForegroundObject).code, "no_foreground_object");
        assert_eq!(provider_error(ReliefError::InvalidImage("bad".into())).code, "invalid_image");
        assert_eq!(provider_error(ReliefError::Encode("x".into())).code, "provider_error");
    }
}
