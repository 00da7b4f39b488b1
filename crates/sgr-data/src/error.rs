//! The crate's error type: every variant names the file or flag at fault.

use std::path::PathBuf;

/// Everything that can go wrong while finding, reading or decoding a data set.
///
/// Every variant that concerns a file names it, so that the message alone tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("unknown dataset '{name}': expected one of {known}")]
    UnknownDataset { name: String, known: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{path}: not a gzip stream that can be decompressed ({source}); the file is truncated or corrupt"
    )]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{path}: wrong magic number 0x{found:08x} (expected 0x{expected:08x}, an IDX {what} file)"
    )]
    BadMagic {
        path: PathBuf,
        expected: u32,
        found: u32,
        what: &'static str,
    },

    #[error("{path}: truncated: the header promises {expected} bytes but the file holds {found}")]
    Truncated {
        path: PathBuf,
        expected: usize,
        found: usize,
    },

    #[error(
        "{images}: holds {n_images} images but {labels} holds {n_labels} labels; the two files must come from the same split"
    )]
    CountMismatch {
        images: PathBuf,
        n_images: usize,
        labels: PathBuf,
        n_labels: usize,
    },

    #[error("{path}: image size {found} does not match the data set's {expected}")]
    BadImageSize {
        path: PathBuf,
        expected: String,
        found: String,
    },

    #[error("{path}: label {label} at record {index} is out of range (10 classes)")]
    BadLabel {
        path: PathBuf,
        index: usize,
        label: u8,
    },

    #[error(
        "{path}: size {size} bytes is not a multiple of the CIFAR-10 record size 3073 (1 label + 3x32x32 pixels)"
    )]
    BadCifarSize { path: PathBuf, size: usize },

    #[error("{path}: holds no records")]
    Empty { path: PathBuf },

    #[error("dataset {dataset}: no {what} in {dir} (looked for {tried})")]
    MissingFile {
        dataset: String,
        what: String,
        dir: PathBuf,
        tried: String,
    },

    #[error(
        "dataset {dataset}: download from the Hugging Face hub failed ({reason}). \
         Offline? Pass --data-dir DIR with the files on disk (see README, section Data)"
    )]
    Download { dataset: String, reason: String },

    #[error(
        "dataset {dataset}: no --data-dir given and this build cannot download (built without the `hub` feature). \
         Pass --data-dir DIR with the files on disk, or build with `--features hub` (see README, section Data)"
    )]
    NoHub { dataset: String },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
