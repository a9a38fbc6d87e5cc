//! The one error type of the crate. Each variant has a stable code that kiln shows to
//! clients (in `formats[].error.code` and failed-output metadata) and a message that is
//! safe to show: it names the reason, never memory addresses or file paths.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum FormatError {
    /// The input is not a valid GLB, or violates a rule a reader relies on.
    #[error("the model cannot be read: {0}")]
    Unreadable(String),
    /// The input is valid but uses something this crate does not convert (Draco, lines,
    /// sparse accessors, external resources).
    #[error("the model uses something that is not supported: {0}")]
    Unsupported(String),
    /// Over a size ceiling from `Limits`.
    #[error("the model is too large: {what} is {found}, the limit is {limit}")]
    TooLarge { what: &'static str, found: u64, limit: u64 },
    /// The caller's `Cancel` was set.
    #[error("the conversion was cancelled")]
    Cancelled,
    /// The `Cancel` deadline passed.
    #[error("the conversion took longer than allowed")]
    TimedOut,
    /// Writing the output failed.
    #[error("writing the output failed: {0}")]
    Io(#[from] std::io::Error),
    /// An encoder (image, zip, PLY) refused the data.
    #[error("encoding the output failed: {0}")]
    Encode(String),
}

impl FormatError {
    /// The stable code for clients and metadata.
    pub fn code(&self) -> &'static str {
        match self {
            FormatError::Unreadable(_) => "model_unreadable",
            FormatError::Unsupported(_) => "model_unsupported",
            // A time ceiling is a size ceiling measured in seconds: retrying cannot help.
            FormatError::TooLarge { .. } | FormatError::TimedOut => "model_too_large",
            FormatError::Cancelled => "conversion_cancelled",
            FormatError::Io(_) | FormatError::Encode(_) => "conversion_failed",
        }
    }

    /// Whether converting the same input again would fail the same way. Cancellation and
    /// I/O failures (a full spool disk) are worth retrying; everything else is decided by
    /// the input alone.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, FormatError::Cancelled | FormatError::Io(_))
    }

    pub(crate) fn unreadable(message: impl Into<String>) -> Self {
        FormatError::Unreadable(message.into())
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        FormatError::Unsupported(message.into())
    }

    pub(crate) fn encode(error: impl std::fmt::Display) -> Self {
        FormatError::Encode(error.to_string())
    }
}

impl From<zip::result::ZipError> for FormatError {
    fn from(error: zip::result::ZipError) -> Self {
        match error {
            zip::result::ZipError::Io(io) => FormatError::Io(io),
            other => FormatError::encode(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        assert_eq!(FormatError::unreadable("x").code(), "model_unreadable");
        assert_eq!(FormatError::unsupported("x").code(), "model_unsupported");
        let large = FormatError::TooLarge { what: "triangles", found: 2, limit: 1 };
        assert_eq!(large.code(), "model_too_large");
        assert_eq!(FormatError::TimedOut.code(), "model_too_large");
        assert_eq!(FormatError::Cancelled.code(), "conversion_cancelled");
        assert_eq!(FormatError::encode("x").code(), "conversion_failed");
    }

    #[test]
    fn only_cancellation_and_io_are_transient() {
        assert!(FormatError::unreadable("x").is_permanent());
        assert!(FormatError::TimedOut.is_permanent());
        assert!(!FormatError::Cancelled.is_permanent());
        assert!(!FormatError::Io(std::io::Error::other("disk full")).is_permanent());
    }
}
