//! The crate's error type.

/// Errors of the covariance crate. Bad input is an error, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum CovError {
    #[error("shape mismatch: {what} has shape {got:?}, expected {expected}")]
    Shape {
        what: &'static str,
        got: Vec<usize>,
        expected: String,
    },
    #[error("invalid radius {0}: the radius must be a non-negative number of pixels")]
    Radius(i64),
    #[error("{what} contains a non-finite value (NaN or infinity)")]
    NonFinite { what: &'static str },
    #[error("the covariance is not symmetric: {0}")]
    NotSymmetric(String),
    #[error("the covariance is not positive semi-definite: {0}")]
    NotPsd(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("{path}: {reason}")]
    File {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = CovError> = std::result::Result<T, E>;

impl From<CovError> for candle_core::Error {
    fn from(e: CovError) -> Self {
        match e {
            CovError::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}
