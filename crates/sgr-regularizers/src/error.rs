//! The crate's error type.

use sgr_covariance::CovError;

pub type Result<T> = std::result::Result<T, RegError>;

#[derive(Debug, thiserror::Error)]
pub enum RegError {
    #[error(
        "exact second-order gradients are not available in this thread: set the environment variable \
         {env}=1 before the program's first backward pass (or use the finite-difference mode)",
        env = crate::second_order::DOUBLE_BACKPROP_ENV
    )]
    NoDoubleBackprop,
    #[error("invalid regularizer setting: {0}")]
    Config(String),
    #[error("regularizer state: {0}")]
    State(String),
    #[error(transparent)]
    Covariance(#[from] CovError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<RegError> for candle_core::Error {
    fn from(e: RegError) -> Self {
        match e {
            RegError::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}
