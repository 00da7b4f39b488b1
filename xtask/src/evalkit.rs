//! What the evaluation commands share: the data flags, opening the checkpoints and test set (in
//! `sgr_eval::experiment`), writing outputs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use sgr_data::DatasetName;
use sgr_models::DeviceKind;

pub use sgr_eval::experiment::{Setup, TestData, load_checkpoints, load_set, resolve_dataset};

use crate::common::{parse_dataset, parse_device};

/// Data and device flags of every evaluation command.
#[derive(Clone, Debug, Args)]
pub struct DataOpts {
    /// Data set to test on (default: the first checkpoint's, from its run.json).
    #[arg(long, value_parser = parse_dataset)]
    pub dataset: Option<DatasetName>,
    /// Folder with the data set's files (default: the folder the first checkpoint was trained on, if any).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use the first N test images (0: all).
    #[arg(long, default_value_t = 1000)]
    pub test_limit: usize,
    /// Attack budget ε in units of 1/255 (default: 32 on MNIST, 4 on CIFAR-10, as in the paper).
    #[arg(long)]
    pub eps: Option<f64>,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Seed of every random draw (RAND noise, LRC noise).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceKind,
}

impl DataOpts {
    /// The library's description of these flags.
    pub fn test_data(&self) -> TestData {
        TestData {
            dataset: self.dataset,
            data_dir: self.data_dir.clone(),
            test_limit: self.test_limit,
            eps_255: self.eps,
            device: self.device,
        }
    }
}

/// Loads the checkpoints and the test set the flags name.
pub fn setup(checkpoints: &[PathBuf], opts: &DataOpts) -> anyhow::Result<Setup> {
    Ok(Setup::open(checkpoints, &opts.test_data())?)
}

/// Creates the output folder.
pub fn out_dir(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating --out {}", out.display()))
}

/// Writes a file atomically (temporary name, then rename).
pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    sgr_models::fsutil::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

pub fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    write(path, &(serde_json::to_string_pretty(value)? + "\n"))
}

/// The result cache of an evaluation command's `--resume`: `OUT/cache/KIND`.
pub fn result_cache(out: &Path, kind: &str) -> sgr_eval::experiment::ResultCache {
    sgr_eval::experiment::ResultCache::new(&out.join("cache").join(kind))
}
