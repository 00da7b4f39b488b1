use std::path::PathBuf;

use anyhow::Context;
use candle_core::DType;
use clap::Args;
use sgr_data::{DatasetName, Split};
use sgr_models::{DeviceKind, load_model, make_device};

use crate::common::{parse_dataset, parse_device};

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
    let model_file = sgr_train::model_path(&cmd.checkpoint);
    let (model, _vars) = load_model(&model_file, DType::F32, &device)
        .with_context(|| format!("loading --checkpoint {}", cmd.checkpoint.display()))?;
    let run_dir = model_file
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let stored = sgr_train::read_record(&run_dir).ok();
    let dataset = match (cmd.dataset, &stored) {
        (Some(d), _) => d,
        (None, Some(r)) => r
            .dataset
            .parse()
            .context("run.json names an unknown dataset")?,
        (None, None) if model.config().in_channels == 3 => DatasetName::Cifar10,
        (None, None) => DatasetName::MnistSubset,
    };
    // A run trained on a --data-dir is tested on the same folder unless told otherwise.
    let data_dir = cmd.data_dir.clone().or_else(|| {
        stored
            .as_ref()
            .filter(|r| r.dataset == dataset.as_str() && cmd.dataset.is_none())
            .and_then(|r| {
                let p = PathBuf::from(&r.data_source);
                p.is_dir().then_some(p)
            })
    });
    let mut test = sgr_data::load_split(dataset, data_dir.as_deref(), Split::Test)?;
    if test.shape()
        != (
            model.config().in_channels,
            model.config().height,
            model.config().width,
        )
    {
        anyhow::bail!(
            "--checkpoint {} expects {}x{}x{} images but dataset {dataset} has {:?}",
            cmd.checkpoint.display(),
            model.config().in_channels,
            model.config().height,
            model.config().width,
            test.shape()
        );
    }
    if let Some(n) = cmd.test_limit {
        test.truncate(n);
    }
    let (correct, n) = sgr_train::evaluate(&model, &test, cmd.batch_size, DType::F32, &device)?;
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
