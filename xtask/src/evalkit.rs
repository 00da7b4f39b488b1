//! What the evaluation commands share: flags, loading checkpoints, the test set, writing outputs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use clap::Args;
use sgr_data::{DatasetName, ImageSet, Split};
use sgr_models::{Cnn, DeviceKind, load_model, make_device};
use sgr_train::RunRecord;

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

/// A loaded checkpoint: its display name, the frozen model, and its run record if it has one.
pub struct Loaded {
    pub name: String,
    pub model: Cnn,
    pub record: Option<RunRecord>,
    pub path: PathBuf,
}

/// The name a checkpoint shows under: its run folder's name, or the file stem of a bare .safetensors file.
fn display_name(path: &Path) -> String {
    let p = if path.is_dir() {
        path.to_path_buf()
    } else if path.file_name().is_some_and(|f| f == sgr_train::MODEL_FILE) {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        path.with_extension("")
    };
    p.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    )
}

/// Loads checkpoints (run folders or .safetensors files) as frozen models; names are made unique.
pub fn load_checkpoints(paths: &[PathBuf], device: &Device) -> anyhow::Result<Vec<Loaded>> {
    if paths.is_empty() {
        anyhow::bail!("give at least one checkpoint with --checkpoints");
    }
    let mut out: Vec<Loaded> = Vec::new();
    for path in paths {
        let file = sgr_train::model_path(path);
        let (model, _vars) = load_model(&file, DType::F32, device)
            .with_context(|| format!("loading checkpoint {}", path.display()))?;
        let record = file.parent().and_then(|d| sgr_train::read_record(d).ok());
        let mut name = display_name(path);
        if out.iter().any(|l| l.name == name) {
            name = path.display().to_string();
        }
        out.push(Loaded {
            name,
            model: model.frozen(),
            record,
            path: path.clone(),
        });
    }
    let first = out[0].model.config().clone();
    for l in &out[1..] {
        let c = l.model.config();
        if (c.in_channels, c.height, c.width) != (first.in_channels, first.height, first.width) {
            anyhow::bail!(
                "checkpoint {} takes {}x{}x{} images but {} takes {}x{}x{}",
                l.path.display(),
                c.in_channels,
                c.height,
                c.width,
                out[0].path.display(),
                first.in_channels,
                first.height,
                first.width
            );
        }
    }
    Ok(out)
}

/// The data set and folder to evaluate on: flags first, else what the first checkpoint was trained on.
pub fn resolve_dataset(
    first: &Loaded,
    dataset: Option<DatasetName>,
    data_dir: Option<&Path>,
) -> anyhow::Result<(DatasetName, Option<PathBuf>)> {
    let stored = first.record.as_ref();
    let name = match (dataset, stored) {
        (Some(d), _) => d,
        (None, Some(r)) => r.dataset,
        (None, None) if first.model.config().in_channels == 3 => DatasetName::Cifar10,
        (None, None) => DatasetName::MnistSubset,
    };
    // A run trained on a --data-dir is tested on the same folder unless told otherwise.
    let dir = data_dir.map(Path::to_path_buf).or_else(|| {
        stored
            .filter(|r| r.dataset == name && dataset.is_none())
            .and_then(|r| {
                let p = PathBuf::from(&r.data_source);
                p.is_dir().then_some(p)
            })
    });
    Ok((name, dir))
}

/// Loads a split and checks that it fits the model.
pub fn load_set(
    name: DatasetName,
    dir: Option<&Path>,
    split: Split,
    model: &Cnn,
) -> anyhow::Result<ImageSet> {
    let set = sgr_data::load_split(name, dir, split)?;
    let c = model.config();
    if set.shape() != (c.in_channels, c.height, c.width) {
        anyhow::bail!(
            "the checkpoints expect {}x{}x{} images but data set {name} has {:?}",
            c.in_channels,
            c.height,
            c.width,
            set.shape()
        );
    }
    Ok(set)
}

/// Everything an evaluation command needs.
pub struct Setup {
    pub models: Vec<Loaded>,
    pub dataset: DatasetName,
    pub data_dir: Option<PathBuf>,
    pub x: Tensor,
    pub y: Tensor,
    pub eps: f64,
    pub device: Device,
}

impl Setup {
    pub fn named(&self) -> Vec<sgr_eval::Named<'_>> {
        self.models
            .iter()
            .map(|l| sgr_eval::Named {
                name: &l.name,
                model: &l.model,
            })
            .collect()
    }

    pub fn eps_255(&self) -> f64 {
        self.eps * 255.0
    }

    /// Up to `n` training images (for the data covariance). Where the data folder has no training split
    /// (e.g. a test-only sample), the test images stand in, with a warning.
    pub fn train_images(&self, n: usize) -> anyhow::Result<Tensor> {
        match load_set(
            self.dataset,
            self.data_dir.as_deref(),
            Split::Train,
            &self.models[0].model,
        ) {
            Ok(mut set) => {
                set.truncate(n);
                Ok(set.range(0, set.len(), DType::F32, &self.device)?.0)
            }
            Err(e) => {
                tracing::warn!(
                    "no training images ({e:#}); the data covariance comes from the test images"
                );
                Ok(self.x.narrow(0, 0, n.min(self.x.dim(0)?))?)
            }
        }
    }
}

pub fn setup(checkpoints: &[PathBuf], opts: &DataOpts) -> anyhow::Result<Setup> {
    let device = make_device(opts.device).context("opening --device")?;
    let models = load_checkpoints(checkpoints, &device)?;
    let (dataset, data_dir) = resolve_dataset(&models[0], opts.dataset, opts.data_dir.as_deref())?;
    let mut test = load_set(dataset, data_dir.as_deref(), Split::Test, &models[0].model)?;
    if opts.test_limit > 0 {
        test.truncate(opts.test_limit);
    }
    let (x, y) = test.range(0, test.len(), DType::F32, &device)?;
    let eps_255 = opts
        .eps
        .unwrap_or_else(|| sgr_train::default_eps_255(dataset));
    if !(eps_255 >= 0.0 && eps_255.is_finite()) {
        anyhow::bail!("--eps must be a non-negative number of 1/255 units, got {eps_255}");
    }
    tracing::info!(
        dataset = dataset.as_str(),
        images = test.len(),
        models = models.len(),
        eps_255,
        "evaluation set up"
    );
    Ok(Setup {
        models,
        dataset,
        data_dir,
        x,
        y,
        eps: eps_255 / 255.0,
        device,
    })
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
