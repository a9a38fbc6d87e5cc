//! `echo`: a test-only provider. It reports a few progress steps, writes one output that
//! echoes its input (for a text-to-image task, whose output must be a picture: a real
//! 400 × 300 PNG, with the prompt's length in its metadata), and can be told through
//! `params` to be slow, to fail, to panic, to write `output_bytes` bytes instead, or
//! (`glb: true`) to make a real GLB of its picture with the relief engine.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use kiln::{
    providers::{Job, JobContext, Outcome, Output, Provider, ProviderError, Registry},
    tasks::TaskKind,
};
use serde_json::{Value, json};

pub struct Echo;

pub fn registry() -> Registry {
    let mut registry = Registry::builtin();
    registry.register("echo", |_channel| Ok(Arc::new(Echo) as Arc<dyn Provider>));
    registry
}

#[async_trait]
impl Provider for Echo {
    fn describe(&self) -> String {
        "Test provider that echoes its input".into()
    }

    fn check_params(&self, _kind: TaskKind, params: &Value) -> Result<(), String> {
        match params.get("steps") {
            Some(v) if v.as_u64().is_none_or(|n| n > 100) => Err("`steps` must be an integer from 0 to 100".into()),
            _ => Ok(()),
        }
    }

    async fn run(&self, job: Job, ctx: JobContext) -> Result<Outcome, ProviderError> {
        let steps = job.params["steps"].as_u64().unwrap_or(3);
        let step_ms = job.params["step_ms"].as_u64().unwrap_or(10);
        for i in 1..=steps {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(step_ms)) => {}
                _ = ctx.cancelled().cancelled() => return Err(ProviderError::new("canceled", "canceled")),
            }
            let progress = (i * 100 / (steps + 1)) as u8;
            ctx.progress(progress, &format!("step-{i}")).await.map_err(ProviderError::internal)?;
        }
        if let Some(code) = job.params["fail"].as_str() {
            return Err(ProviderError::new(code, "The echo provider was told to fail."));
        }
        if job.params["detach"].as_bool() == Some(true) {
            return Ok(Outcome::Detached);
        }
        if job.params["panic"].as_bool() == Some(true) {
            panic!("told to panic");
        }
        let body = match (&job.image, &job.prompt) {
            (Some(image), _) => image.bytes.clone(),
            (None, Some(prompt)) => Bytes::from(prompt.clone().into_bytes()),
            (None, None) => Bytes::new(),
        };
        let size = body.len();
        let body = match (job.kind.main_role(), job.params["output_bytes"].as_u64()) {
            ("image", _) => picture(),
            // A real model, made by relief from the picture (and unlike relief's
            // provider, this one takes no `max_triangles`: kiln's level of detail).
            _ if job.params["glb"].as_bool() == Some(true) => {
                let options = relief::Options { max_triangles: 6_000, texture_size: 256, ..relief::Options::default() };
                let model = relief::reconstruct(&body, &options, &mut |_, _| {})
                    .map_err(|e| ProviderError::new("bad_picture", e.to_string()))?;
                Bytes::from(model.glb)
            }
            // A large output (object storage's multipart uploads): bytes that do not
            // repeat, so a misplaced part shows.
            (_, Some(n)) => {
                Bytes::from((0..n).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>())
            }
            _ => body,
        };
        let file = ctx.spool_bytes(&body).await.map_err(ProviderError::internal)?;
        let (name, content_type) = match job.kind.main_role() {
            "image" => ("image.png", "image/png"),
            _ => ("model.glb", "model/gltf-binary"),
        };
        ctx.output(Output {
            name: name.into(),
            role: job.kind.main_role().into(),
            content_type: content_type.into(),
            file,
            metadata: json!({ "echoed_bytes": size }),
        })
        .await
        .map_err(ProviderError::internal)?;
        Ok(Outcome::Completed { metadata: json!({ "attempt": job.attempt, "model": job.upstream_model }) })
    }
}

/// A 400 × 300 PNG: a gradient, so it compresses to a few kilobytes.
pub fn picture() -> Bytes {
    let image =
        image::RgbImage::from_fn(400, 300, |x, y| image::Rgb([(x * 255 / 400) as u8, (y * 255 / 300) as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).expect("encode the echo picture");
    Bytes::from(out.into_inner())
}
