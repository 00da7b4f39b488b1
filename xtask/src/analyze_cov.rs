//! `analyze-cov`: the covariance of adversarial perturbations of a model, its figures and summary.

use std::path::PathBuf;

use clap::Args;
use sgr_eval::figures::{CovAnalysis, analyze_covariance};

use crate::evalkit::{DataOpts, Setup, out_dir, setup, write, write_json};

#[derive(Debug, Args)]
pub struct AnalyzeCovCmd {
    /// The model whose adversarial perturbations are analysed (run folder or .safetensors file).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DataOpts,
    /// Radius (pixels) of the covariance functions of Fig. 2.
    #[arg(long, default_value_t = 12)]
    pub radius: usize,
    /// Training images the data covariance is estimated from.
    #[arg(long, default_value_t = 10_000)]
    pub data_cov_images: usize,
    /// Output folder: fig1_perturbation_covariance.png, fig2_covariance_functions.png,
    /// fig5_lrc_covariances.png, cov.json, cov.md.
    #[arg(long, default_value = "eval/cov")]
    pub out: PathBuf,
}

pub fn run(cmd: AnalyzeCovCmd) -> anyhow::Result<()> {
    let s = setup(std::slice::from_ref(&cmd.checkpoint), &cmd.data)?;
    out_dir(&cmd.out)?;
    let a = evaluate(&s, &cmd)?;
    let md = sgr_eval::report::covariance_markdown(&s.models[0].name, &a, "");
    write(&cmd.out.join("cov.md"), &md)?;
    write_json(&cmd.out.join("cov.json"), &a)?;
    println!("{md}");
    eprintln!("wrote {}", cmd.out.display());
    Ok(())
}

pub fn evaluate(s: &Setup, cmd: &AnalyzeCovCmd) -> anyhow::Result<CovAnalysis> {
    let data = s.train_images(cmd.data_cov_images)?;
    let radius = cmd.radius.min(sgr_covariance::CovFun::full_radius(
        s.x.dim(2)?,
        s.x.dim(3)?,
    ));
    Ok(analyze_covariance(
        &s.models[0].model,
        &s.x,
        &s.y,
        &data,
        s.eps,
        cmd.data.batch_size,
        radius,
        &cmd.out,
    )?)
}
