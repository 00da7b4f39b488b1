//! The crate's error type.

/// What can go wrong in an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Covariance(#[from] sgr_covariance::CovError),
    #[error(transparent)]
    Data(#[from] sgr_data::DataError),
    #[error("{0}")]
    Invalid(String),
    #[error("loading {what}: {reason}")]
    Load { what: String, reason: String },
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("drawing {path}: {message}")]
    Plot { path: String, message: String },
}

pub type Result<T> = std::result::Result<T, EvalError>;
