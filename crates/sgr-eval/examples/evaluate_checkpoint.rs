//! The white-box table of a checkpoint from Rust, without the CLI: open a run folder (or `.safetensors` file) and
//! its test set, evaluate, print the report section.
//!
//!     cargo run --release -p sgr-eval --features experiment --example evaluate_checkpoint -- zoo/mnist/clean-s0 200
//!
//! Any other classifier works the same way: `sgr_eval::whitebox` takes a `&dyn candle_nn::Module` (images in
//! `[0, 1]` to logits) and test tensors.

use std::path::PathBuf;

use sgr_eval::experiment::{Setup, TestData};
use sgr_eval::{WhiteboxConfig, report, whitebox};
use sgr_models::DeviceKind;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let checkpoint = PathBuf::from(args.next().unwrap_or_else(|| "zoo/mnist/clean-s0".into()));
    let images: usize = args.next().map_or(Ok(200), |n| n.parse())?;
    // Without `dataset` the run.json decides (full MNIST for the zoo); `mnist-subset` is embedded in the repository.
    let data = TestData {
        dataset: Some(sgr_data::DatasetName::MnistSubset),
        data_dir: None,
        test_limit: images,
        eps_255: None, // the paper's: 32/255 on MNIST
        device: DeviceKind::Cpu,
    };
    let s = Setup::open(&[checkpoint], &data)?;
    let cfg = WhiteboxConfig {
        eps: s.eps,
        deepfool_images: 50,
        masking_images: 50,
        ..WhiteboxConfig::default()
    };
    let rows = s
        .named()
        .into_iter()
        .map(|m| whitebox(m, &s.x, &s.y, &cfg))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "{}",
        report::whitebox_markdown(s.dataset.as_str(), s.eps_255(), &rows)
    );
    Ok(())
}
