//! `eval`: clean test accuracy of a checkpoint.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::DType;
use clap::Args;
use sgr_data::{DatasetName, Split};
use sgr_models::{DeviceKind, make_device};

use crate::common::{parse_dataset, parse_device};
use crate::evalkit::{load_checkpoints, load_set, resolve_dataset};

#[derive(Debug, Args)]
pub struct EvalCmd {
    /// A run folder (holding model.safetensors) or a .safetensors file.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Data set to test on (default: the run's, from run.json; else mnist-subset or cifar10 by channels).
    #[arg(long, value_parser = parse_dataset)]
    dataset: Option<DatasetName>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use only the first N test images.
    #[arg(long)]
    test_limit: Option<usize>,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: DeviceKind,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: EvalCmd) -> anyhow::Result<()> {
    let device = make_device(cmd.device).context("opening --device")?;
    let loaded = load_checkpoints(std::slice::from_ref(&cmd.checkpoint), &device)?;
    let (dataset, data_dir) = resolve_dataset(&loaded[0], cmd.dataset, cmd.data_dir.as_deref());
    let model = &loaded[0].model;
    let mut test = load_set(dataset, data_dir.as_deref(), Split::Test, model)
        .with_context(|| format!("testing --checkpoint {}", cmd.checkpoint.display()))?;
    if let Some(n) = cmd.test_limit {
        test.truncate(n);
    }
    let (correct, n) = sgr_train::evaluate(model, &test, cmd.batch_size, DType::F32, &device)?;
    let accuracy = correct as f64 / n as f64;
    if cmd.json {
        let obj = serde_json::json!({
            "checkpoint": cmd.checkpoint.display().to_string(),
            "dataset": dataset.as_str(),
            "accuracy": accuracy,
            "correct": correct,
            "n": n,
        });
        println!("{obj}");
    } else {
        println!(
            "{}: test accuracy {:.2} % ({correct}/{n}) on {dataset}",
            cmd.checkpoint.display(),
            100.0 * accuracy
        );
    }
    Ok(())
}
