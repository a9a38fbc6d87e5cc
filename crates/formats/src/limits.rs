//! Ceilings for one conversion and the means to stop it. `Limits` bounds what the reader
//! accepts (so memory follows from the input's declared sizes, checked before anything is
//! allocated); `Cancel` lets the caller stop a conversion running on a blocking thread, by
//! a flag or a deadline, checked by every long loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::FormatError;

const MIB: u64 = 1024 * 1024;

/// How often (in items) long loops look at their `Cancel`: often enough to stop within
/// milliseconds, rarely enough that reading the clock costs nothing.
pub const CHECK_EVERY: usize = 4096;

/// Ceilings for one model. The defaults match kiln's `[convert]` defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest GLB accepted, in bytes.
    pub max_input: u64,
    /// Largest JSON chunk, in bytes.
    pub max_json: u64,
    /// Most triangles after instancing (a mesh used by ten nodes counts ten times).
    pub max_triangles: u64,
    /// Most vertices after instancing.
    pub max_vertices: u64,
    /// Most nodes visited while flattening the scene (instances included), and most
    /// parts (a primitive shown by a node).
    pub max_nodes: u64,
    /// Deepest node nesting.
    pub max_depth: u32,
    /// Longest texture side, in pixels, read from the image header before decoding.
    pub max_texture_side: u32,
    /// Most pixels in one texture.
    pub max_texture_pixels: u64,
    /// Most bytes one image decode may allocate (`image::Limits::max_alloc`).
    pub max_image_alloc: u64,
    /// Most bytes one conversion is estimated to need; above it the model is refused.
    pub max_memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input: 256 * MIB,
            max_json: 32 * MIB,
            max_triangles: 5_000_000,
            max_vertices: 15_000_000,
            max_nodes: 100_000,
            max_depth: 32,
            max_texture_side: 8192,
            max_texture_pixels: 64 * MIB,
            max_image_alloc: 256 * MIB,
            max_memory: 768 * MIB,
        }
    }
}

impl Limits {
    /// Fails with `TooLarge` when `found` exceeds `limit`.
    pub(crate) fn check(what: &'static str, found: u64, limit: u64) -> Result<(), FormatError> {
        if found > limit { Err(FormatError::TooLarge { what, found, limit }) } else { Ok(()) }
    }
}

/// What a model will cost, from its JSON and image headers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Estimate {
    /// Triangles after instancing.
    pub triangles: u64,
    /// Vertices after instancing.
    pub vertices: u64,
    /// Pixels of all textures together.
    pub texture_pixels: u64,
    /// A conservative guess of the peak memory of reading and converting the model.
    pub memory_bytes: u64,
    /// The model needs a glTF extension to be shown (`extensionsRequired`, or WebP
    /// textures): readers that know only core glTF 2.0 (Android's Scene Viewer, older
    /// engines) need a core copy.
    pub needs_extensions: bool,
}

/// Stops a conversion: a shared flag the caller sets, and an optional deadline.
/// Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Cancel {
    /// Never stops unless `cancel` is called.
    pub fn new() -> Self {
        Cancel::default()
    }

    /// Stops by itself once `deadline` has passed.
    pub fn with_deadline(deadline: Instant) -> Self {
        Cancel { flag: Arc::default(), deadline: Some(deadline) }
    }

    /// Asks every holder of a clone to stop at its next check.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// `Cancelled` after `cancel`, `TimedOut` after the deadline, otherwise `Ok`.
    pub fn check(&self) -> Result<(), FormatError> {
        if self.is_cancelled() {
            return Err(FormatError::Cancelled);
        }
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(FormatError::TimedOut),
            _ => Ok(()),
        }
    }

    /// `check` on every `CHECK_EVERY`-th item of a loop, for loops over vertices or
    /// triangles.
    pub fn check_every(&self, item: usize) -> Result<(), FormatError> {
        if item.is_multiple_of(CHECK_EVERY) { self.check() } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cancel_is_shared_by_clones() {
        let cancel = Cancel::new();
        let clone = cancel.clone();
        assert!(clone.check().is_ok());
        cancel.cancel();
        assert!(matches!(clone.check(), Err(FormatError::Cancelled)));
    }

    #[test]
    fn a_past_deadline_times_out() {
        let past = Instant::now().checked_sub(Duration::from_secs(1)).unwrap_or_else(Instant::now);
        let cancel = Cancel::with_deadline(past);
        assert!(matches!(cancel.check(), Err(FormatError::TimedOut)));
        assert!(cancel.check_every(1).is_ok(), "only every CHECK_EVERY-th item checks");
        let later = Cancel::with_deadline(Instant::now() + Duration::from_secs(3600));
        assert!(later.check().is_ok());
    }

    #[test]
    fn limit_check_names_the_quantity() {
        assert!(Limits::check("triangles", 5, 5).is_ok());
        match Limits::check("triangles", 6, 5) {
            Err(FormatError::TooLarge { what, found, limit }) => {
                assert_eq!((what, found, limit), ("triangles", 6, 5))
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
}
