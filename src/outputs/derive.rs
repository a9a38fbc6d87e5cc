//! One conversion of a GLB into a catalogue format, under the process's ceilings: a place
//! among `convert.concurrency`, its estimated memory taken from `convert.memory` before
//! it starts (and held by the blocking thread until that thread really ends), a time
//! ceiling enforced by the converter's own `Cancel` deadline, and an output spooled to an
//! anonymous temporary file of at most `convert.max_output` bytes, hashed as it is read
//! back. A [`formats::FormatError`] becomes a [`Failure`] with a stable code.

use std::{
    io::{BufWriter, Read, Seek, Write},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use image::ImageEncoder;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::FormatId;
use crate::{
    config::ConvertConfig,
    error::{ApiError, Code},
    input::Upload,
    metrics::Metrics,
};

/// Why a conversion did not give a file.
#[derive(Debug, Clone)]
pub struct Failure {
    /// `conversion_failed`, `model_too_large`, `converter_busy`, `shutting_down` or
    /// `internal_error`.
    pub code: Code,
    /// Safe to show: it names the reason, never a path or an internal error.
    pub message: String,
    /// Whether the same model would fail the same way again (then it is remembered).
    pub permanent: bool,
}

impl Failure {
    fn new(code: Code, message: impl Into<String>, permanent: bool) -> Self {
        Self { code, message: message.into(), permanent }
    }

    fn internal() -> Self {
        Failure::new(Code::Internal, "The conversion failed unexpectedly.", false)
    }

    /// The failure from the converter's error. `Cancelled` only happens at shutdown.
    fn from_format(error: formats::FormatError) -> Self {
        use formats::FormatError as E;
        match &error {
            E::TooLarge { .. } | E::TimedOut => Failure::new(Code::ModelTooLarge, capitalised(&error), true),
            E::Unreadable(_) | E::Unsupported(_) | E::Encode(_) => {
                Failure::new(Code::ConversionFailed, capitalised(&error), error.is_permanent())
            }
            E::Cancelled => Failure::new(Code::ShuttingDown, "The server stopped the conversion.", false),
            E::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<OutputTooLarge>()) => {
                Failure::new(Code::ModelTooLarge, "The converted file would be larger than allowed.", true)
            }
            E::Io(_) => Failure::internal(),
        }
    }

    /// The outcome label of `kiln_conversions_total`.
    fn outcome(&self) -> &'static str {
        match self.code {
            Code::ModelTooLarge => "too_large",
            Code::ConverterBusy => "busy",
            _ => "failed",
        }
    }

    pub fn to_api(&self) -> ApiError {
        let error = ApiError::with_message(self.code, self.message.clone());
        match self.code {
            Code::ConverterBusy | Code::ShuttingDown => error.retry_after(5),
            _ => error,
        }
    }
}

/// `formats`' messages start in lower case, to be embedded; ours are sentences.
fn capitalised(error: &formats::FormatError) -> String {
    let text = error.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str().trim_end_matches('.')),
        None => text,
    }
}

/// A converted file, spooled and hashed, with its output metadata.
pub struct Derived {
    pub upload: Upload,
    pub metadata: Value,
}

/// The process's conversion ceilings, shared by every conversion.
pub struct Converter {
    config: ConvertConfig,
    /// One permit per place (`convert.concurrency`).
    places: Arc<Semaphore>,
    /// One permit per KiB of `convert.memory`.
    memory: Arc<Semaphore>,
    memory_kib: u32,
    /// Conversions admitted and not yet ended, running or waiting for a place.
    admitted: Arc<AtomicU32>,
    metrics: Arc<Metrics>,
}

/// A conversion's place in [`Converter::admitted`], given back when it is dropped.
pub struct Admission(Arc<AtomicU32>, Arc<Metrics>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.conversions_active(-1);
    }
}

impl Converter {
    pub fn new(config: ConvertConfig, metrics: Arc<Metrics>) -> Self {
        let memory_kib = u32::try_from(config.memory / 1024).unwrap_or(u32::MAX).max(1);
        Self {
            places: Arc::new(Semaphore::new(config.concurrency.max(1) as usize)),
            memory: Arc::new(Semaphore::new(memory_kib as usize)),
            memory_kib,
            admitted: Arc::default(),
            metrics,
            config,
        }
    }

    pub fn config(&self) -> &ConvertConfig {
        &self.config
    }

    /// Admits one more conversion, unless `concurrency + max_waiting` are admitted
    /// already: then `converter_busy`, counted.
    pub fn admit(&self, format: FormatId) -> Result<Admission, Failure> {
        let most = self.config.concurrency.saturating_add(self.config.max_waiting);
        let taken = self.admitted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < most).then_some(n + 1));
        match taken {
            Ok(_) => {
                self.metrics.conversions_active(1);
                Ok(Admission(Arc::clone(&self.admitted), Arc::clone(&self.metrics)))
            }
            Err(_) => {
                let busy = Failure::new(Code::ConverterBusy, Code::ConverterBusy.default_message(), false);
                self.metrics.conversion(format.as_str(), busy.outcome(), None);
                Err(busy)
            }
        }
    }

    pub(super) fn limits(&self) -> formats::Limits {
        formats::Limits {
            max_input: self.config.max_input,
            max_triangles: self.config.max_triangles,
            max_texture_side: self.config.max_texture_side,
            max_memory: self.config.max_memory,
            ..formats::Limits::default()
        }
    }

    /// Converts `glb` into `format`, spooled under `spool_dir`. `stop` ends it early
    /// (shutdown). Counted in `kiln_conversions_total` and `kiln_conversion_seconds`.
    pub async fn derive(
        &self,
        glb: Bytes,
        format: FormatId,
        budget: Option<u64>,
        spool_dir: std::path::PathBuf,
        stop: &CancellationToken,
    ) -> Result<Derived, Failure> {
        let started = Instant::now();
        let result = self.derive_uncounted(glb, format, budget, spool_dir, stop).await;
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => self.metrics.conversion(format.as_str(), "ok", Some(seconds)),
            Err(failure) => self.metrics.conversion(format.as_str(), failure.outcome(), Some(seconds)),
        }
        result
    }

    async fn derive_uncounted(
        &self,
        glb: Bytes,
        format: FormatId,
        budget: Option<u64>,
        spool_dir: std::path::PathBuf,
        stop: &CancellationToken,
    ) -> Result<Derived, Failure> {
        let limits = self.limits();
        if glb.len() as u64 > limits.max_input {
            return Err(Failure::new(
                Code::ModelTooLarge,
                format!("The model is {} bytes; the converter reads at most {}.", glb.len(), limits.max_input),
                true,
            ));
        }
        // The estimate reads the JSON chunk only, but that may be 32 MiB of it.
        let estimate = {
            let (glb, limits) = (glb.clone(), limits.clone());
            tokio::task::spawn_blocking(move || formats::estimate(&glb, &limits))
                .await
                .map_err(|_| Failure::internal())?
                .map_err(Failure::from_format)?
        };
        // A simplified copy (a level of detail, a large model's USDZ) is a second model
        // beside the first while it is made: counted as the whole estimate again.
        let simplified_to = match format {
            FormatId::Usdz => Some(self.config.usdz_max_triangles),
            FormatId::Lod => budget,
            _ => None,
        };
        let simplifies = simplified_to.is_some_and(|most| estimate.triangles > most);
        let memory_bytes = if simplifies { estimate.memory_bytes.saturating_mul(2) } else { estimate.memory_bytes };
        if memory_bytes > self.config.max_memory {
            return Err(Failure::new(
                Code::ModelTooLarge,
                format!(
                    "Converting the model would take about {} MiB; the limit is {} MiB.",
                    memory_bytes / (1024 * 1024),
                    self.config.max_memory / (1024 * 1024)
                ),
                true,
            ));
        }
        let kib = u32::try_from(memory_bytes.div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, self.memory_kib);
        let memory = tokio::select! {
            permit = Arc::clone(&self.memory).acquire_many_owned(kib) => permit.map_err(|_| Failure::internal())?,
            _ = stop.cancelled() => return Err(Failure::from_format(formats::FormatError::Cancelled)),
        };
        let place = tokio::select! {
            permit = Arc::clone(&self.places).acquire_owned() => permit.map_err(|_| Failure::internal())?,
            _ = stop.cancelled() => return Err(Failure::from_format(formats::FormatError::Cancelled)),
        };
        // The clock starts with the conversion, not with the wait for a place.
        let cancel = formats::Cancel::with_deadline(Instant::now() + self.config.timeout);
        let job = Job {
            glb,
            format,
            budget,
            limits,
            usdz: formats::write::UsdzOptions {
                texture_side: self.config.usdz_texture_side,
                max_triangles: self.config.usdz_max_triangles,
            },
            max_output: self.config.max_output,
            spool_dir,
            cancel: cancel.clone(),
        };
        let mut handle = tokio::task::spawn_blocking(move || job.run((memory, place)));
        // The converter stops itself at its deadline; the grace covers a C call
        // (meshopt) that cannot look at the flag, whose input size is bounded instead.
        let grace = self.config.timeout + Duration::from_secs(30);
        let joined = tokio::select! {
            joined = &mut handle => joined,
            _ = stop.cancelled() => { cancel.cancel(); handle.await }
            _ = tokio::time::sleep(grace) => {
                cancel.cancel();
                tracing::warn!(format = format.as_str(), "a conversion overran its time ceiling; abandoned");
                return Err(Failure::new(Code::ModelTooLarge, "The conversion took longer than allowed.", true));
            }
        };
        match joined {
            Ok(result) => result.map_err(Failure::from_format),
            Err(join) => {
                tracing::error!(format = format.as_str(), error = %join, "a conversion panicked");
                Err(Failure::internal())
            }
        }
    }
}

/// Everything one conversion needs on its blocking thread.
struct Job {
    glb: Bytes,
    format: FormatId,
    /// The level of detail's triangles (`params.max_triangles`).
    budget: Option<u64>,
    limits: formats::Limits,
    usdz: formats::write::UsdzOptions,
    max_output: u64,
    spool_dir: std::path::PathBuf,
    cancel: formats::Cancel,
}

impl Job {
    /// Blocking. Holds `_permits` (memory, place) until the conversion has ended and its
    /// model is freed.
    fn run(self, _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit)) -> Result<Derived, formats::FormatError> {
        use formats::write;
        let mut model = formats::Model::read_glb(&self.glb, &self.limits, &self.cancel)?;
        let mut simplified = None;
        // Quick Look slows down past a few hundred thousand triangles: the USDZ is made
        // from a simplified copy, which its metadata says.
        let budget = match self.format {
            FormatId::Usdz => Some(self.usdz.max_triangles),
            FormatId::Lod => Some(
                self.budget.ok_or_else(|| formats::FormatError::Unsupported("no triangle budget was given".into()))?,
            ),
            _ => None,
        };
        if let Some(budget) = budget
            && model.triangles() > budget
        {
            let (lod, report) = formats::simplify(&model, budget, &self.cancel)?;
            model = lod;
            simplified = Some(report);
        }
        let mut file = tempfile::tempfile_in(&self.spool_dir)?;
        let summary = {
            let mut out = BufWriter::new(Capped::new(&mut file, self.max_output));
            let summary = match self.format {
                FormatId::Stl => write::stl(&model, &mut out, write::Units::Metres, &self.cancel)?,
                FormatId::StlMm => write::stl(&model, &mut out, write::Units::Millimetres, &self.cancel)?,
                FormatId::Ply => write::ply(&model, &mut out, &self.cancel)?,
                FormatId::Obj => write::obj_zip(&model, &mut out, &self.cancel)?,
                FormatId::Usdz => write::usdz(&model, &mut out, &self.usdz, &self.cancel)?,
                FormatId::GlbMeshopt => {
                    write::meshopt_glb(&model, &mut out, &write::CompressOptions::default(), &self.cancel)?
                }
                FormatId::GlbCore => {
                    write::glb(&model, &mut out, &write::GlbOptions { core: true, texture_side: None }, &self.cancel)?
                }
                FormatId::Lod => write::glb(&model, &mut out, &write::GlbOptions::default(), &self.cancel)?,
                FormatId::Preview => preview(&model, &mut out, &self.cancel)?,
                FormatId::Glb | FormatId::Cutout | FormatId::PositionMap => {
                    return Err(formats::FormatError::Unsupported("this file is the provider's own".into()));
                }
            };
            out.flush()?;
            summary
        };
        let (len, sha256) = hash(&mut file)?;
        let mut notes = model.notes.clone();
        notes.extend(summary.notes);
        if let Some(report) = &simplified {
            let purpose = if self.format == FormatId::Usdz { " for AR" } else { "" };
            notes.push(format!(
                "simplified from {} to {} triangles{purpose} (largest deviation {:.2} % of the model's size)",
                report.triangles_before,
                report.triangles_after,
                report.error * 100.0
            ));
        }
        let mut metadata = json!({
            "format": self.format.as_str(),
            "triangles": summary.triangles,
            "vertices": summary.vertices,
            "notes": notes,
        });
        if let Some(report) = &simplified {
            metadata["simplified_from"] = json!(report.triangles_before);
        }
        if let FormatId::GlbMeshopt | FormatId::GlbCore | FormatId::Lod = self.format
            && !self.glb.is_empty()
        {
            // Rounded so that the same file always has the same metadata.
            metadata["ratio"] = json!((len as f64 / self.glb.len() as f64 * 1000.0).round() / 1000.0);
        }
        if let FormatId::Stl | FormatId::StlMm = self.format {
            metadata["units"] = json!(if self.format == FormatId::StlMm { "mm" } else { "m" });
            metadata["up"] = json!("z");
        }
        Ok(Derived { upload: Upload { file, len, sha256 }, metadata })
    }
}

/// The preview picture as PNG: `formats` renders it, `image` encodes it.
fn preview<W: Write>(
    model: &formats::Model,
    mut out: W,
    cancel: &formats::Cancel,
) -> Result<formats::write::Summary, formats::FormatError> {
    let picture = formats::preview(model, &formats::PreviewOptions::default(), cancel)?;
    // Encoded in memory (a 512-pixel picture), then written: the PNG encoder turns a
    // writer's error into text, which would hide a full disk or the output cap as an
    // encoding failure remembered for good.
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(picture.as_raw(), picture.width(), picture.height(), image::ExtendedColorType::Rgba8)
        .map_err(|e| formats::FormatError::Encode(e.to_string()))?;
    out.write_all(&png)?;
    Ok(formats::write::Summary { triangles: model.triangles(), vertices: model.vertices(), notes: Vec::new() })
}

/// Reads the spooled file back from the start for its length and SHA-256, and leaves it
/// rewound for storing.
fn hash(file: &mut std::fs::File) -> std::io::Result<(u64, String)> {
    file.rewind()?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        len += n as u64;
    }
    file.rewind()?;
    Ok((len, hex::encode(hasher.finalize())))
}

/// The error a [`Capped`] writer gives past its limit.
#[derive(Debug, thiserror::Error)]
#[error("the output is larger than allowed")]
struct OutputTooLarge;

/// A writer that refuses to write past `limit` bytes from the start (zip writers seek
/// back to patch headers, so the limit is on the position, not on the bytes written).
struct Capped<W> {
    inner: W,
    position: u64,
    limit: u64,
}

impl<W> Capped<W> {
    fn new(inner: W, limit: u64) -> Self {
        Self { inner, position: 0, limit }
    }
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.position.saturating_add(buf.len() as u64) > self.limit {
            return Err(std::io::Error::other(OutputTooLarge));
        }
        let n = self.inner.write(buf)?;
        self.position += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Seek> Seek for Capped<W> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.position = self.inner.seek(to)?;
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_writer_refuses_past_its_limit_even_after_seeking_back() {
        let mut out = Capped::new(std::io::Cursor::new(Vec::new()), 8);
        assert!(out.write_all(b"12345678").is_ok());
        let refused = out.write_all(b"9").expect_err("over the limit");
        assert!(refused.get_ref().is_some_and(|e| e.is::<OutputTooLarge>()));
        assert!(out.seek(std::io::SeekFrom::Start(2)).is_ok());
        assert!(out.write_all(b"ab").is_ok(), "overwriting inside the limit is fine");
        assert_eq!(out.inner.into_inner(), b"12ab5678");
    }

    #[test]
    fn admissions_beyond_places_and_waiting_room_are_refused_until_one_ends() {
        let config = ConvertConfig { concurrency: 1, max_waiting: 1, ..ConvertConfig::default() };
        let metrics = Arc::new(Metrics::new());
        let converter = Converter::new(config, Arc::clone(&metrics));
        let first = converter.admit(FormatId::Stl).ok();
        let second = converter.admit(FormatId::Stl).ok();
        assert!(first.is_some() && second.is_some());
        let refused = converter.admit(FormatId::Ply).err().map(|f| (f.code, f.permanent));
        assert_eq!(refused, Some((Code::ConverterBusy, false)));
        drop(first);
        assert!(converter.admit(FormatId::Ply).is_ok(), "an ended conversion frees its place");
        let text = metrics.render(&[], &[], &[]);
        assert!(text.contains(r#"kiln_conversions_total{format="ply",outcome="busy"} 1"#), "{text}");
    }

    #[test]
    fn a_preview_over_the_output_cap_is_too_large_not_a_kept_encoding_failure() {
        let model = formats::Model {
            parts: vec![formats::Part {
                positions: vec![[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                indices: vec![0, 1, 2],
                ..formats::Part::default()
            }],
            ..formats::Model::default()
        };
        let cancel = formats::Cancel::default();
        assert!(preview(&model, std::io::sink(), &cancel).is_ok(), "the model renders");
        let refused = preview(&model, Capped::new(std::io::Cursor::new(Vec::new()), 16), &cancel)
            .expect_err("a PNG is longer than 16 bytes");
        let failure = Failure::from_format(refused);
        assert_eq!((failure.code, failure.permanent), (Code::ModelTooLarge, true), "{}", failure.message);
    }

    #[test]
    fn format_errors_map_to_codes_and_sentences() {
        let unreadable = Failure::from_format(formats::FormatError::Unreadable("no GLB header".into()));
        assert_eq!(unreadable.code, Code::ConversionFailed);
        assert_eq!(unreadable.message, "The model cannot be read: no GLB header.");
        assert!(unreadable.permanent);
        let slow = Failure::from_format(formats::FormatError::TimedOut);
        assert_eq!((slow.code, slow.permanent), (Code::ModelTooLarge, true));
        let big = Failure::from_format(formats::FormatError::Io(std::io::Error::other(OutputTooLarge)));
        assert_eq!((big.code, big.permanent), (Code::ModelTooLarge, true));
        let disk = Failure::from_format(formats::FormatError::Io(std::io::Error::other("disk full")));
        assert_eq!((disk.code, disk.permanent), (Code::Internal, false));
        assert!(!disk.message.contains("disk"), "internal causes stay in the log");
    }
}
