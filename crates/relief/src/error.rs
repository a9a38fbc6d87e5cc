//! The engine's failures, each mapped to the stable error code kiln shows its clients.

/// Why a reconstruction did not produce a model.
#[derive(thiserror::Error, Debug)]
pub enum ReliefError {
    /// The picture has no object that stands out from its background.
    #[error(
        "no foreground object found: nothing in the picture stands out from its background \
         (use a picture of one object on a plain background, or one with transparency)"
    )]
    NoForegroundObject,
    /// An option is outside its valid range.
    #[error("invalid option `{name}`: {message}")]
    InvalidOption { name: &'static str, message: String },
    /// The bytes are not a picture this engine can read.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// The caller asked the engine to stop before the model was finished.
    #[error("the reconstruction was cancelled")]
    Cancelled,
    /// Producing the output failed; this is the engine's fault, not the caller's.
    #[error("could not encode the model: {0}")]
    Encode(String),
}

impl ReliefError {
    /// The machine-readable code kiln reports for this error.
    pub fn code(&self) -> &'static str {
        match self {
            ReliefError::NoForegroundObject => "no_foreground_object",
            ReliefError::InvalidOption { .. } => "invalid_params",
            ReliefError::InvalidImage(_) => "invalid_image",
            ReliefError::Cancelled => "canceled",
            ReliefError::Encode(_) => "internal_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        assert_eq!(ReliefError::NoForegroundObject.code(), "no_foreground_object");
        let invalid = ReliefError::InvalidOption { name: "depth", message: "too deep".into() };
        assert_eq!(invalid.code(), "invalid_params");
        assert_eq!(invalid.to_string(), "invalid option `depth`: too deep");
        assert_eq!(ReliefError::InvalidImage("x".into()).code(), "invalid_image");
        assert_eq!(ReliefError::Cancelled.code(), "canceled");
        assert_eq!(ReliefError::Encode("x".into()).code(), "internal_error");
    }
}
