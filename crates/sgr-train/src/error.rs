//! The crate's error type: every variant names the run folder, file or flag at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] sgr_data::DataError),
    #[error(transparent)]
    Model(#[from] sgr_models::ModelError),
    #[error(transparent)]
    Method(#[from] crate::method::MethodError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadRecord { path: PathBuf, reason: String },
    #[error(
        "{dir} already holds a run (run.json); pass --resume to continue it or choose another --out"
    )]
    RunExists { dir: PathBuf },
    #[error("--resume: {dir} holds no run.json to resume from")]
    NothingToResume { dir: PathBuf },
    #[error(
        "--resume: {flag} is {given} but the run in {dir} was started with {stored}; drop the flag or use another --out"
    )]
    ResumeMismatch {
        dir: PathBuf,
        flag: String,
        given: String,
        stored: String,
    },
    #[error(
        "{dir} holds a run with {flag} {stored}, but the planned run has {planned}: a run of another protocol (or a \
         wrong link); move it away or link the right run, then run again"
    )]
    ForeignRun {
        dir: PathBuf,
        flag: String,
        planned: String,
        stored: String,
    },
    #[error(
        "loss became {value} at epoch {epoch}, step {step} (non-finite or above 1e6: diverging); training stopped. The last good checkpoint \
         (after {epochs_done} epochs, {steps_done} steps) is kept in {dir}. Try a smaller --lr or regularisation strength"
    )]
    NonFinite {
        value: f64,
        epoch: usize,
        step: u64,
        epochs_done: usize,
        steps_done: u64,
        dir: PathBuf,
    },
    #[error("{run}: {reason}")]
    SweepNotReady { run: String, reason: String },
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
