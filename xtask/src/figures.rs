//! `trajectories` (Fig. 6) and `samples` (Fig. 7/8).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::evalkit::{DataOpts, out_dir, setup, write_json};

#[derive(Debug, Args)]
pub struct TrajectoriesCmd {
    /// Models to compare, one row of panels each (e.g. an SGR model and a clean one).
    #[arg(long, num_args = 1.., required = true)]
    pub checkpoints: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DataOpts,
    /// Test images (the first of classes 0, 1, …), one panel each.
    #[arg(long, default_value_t = 4)]
    pub images: usize,
    /// The line runs over t ∈ [−extent, extent] in units of the PGD perturbation.
    #[arg(long, default_value_t = 5.0)]
    pub extent: f64,
    /// Output folder: fig6_trajectories.png, trajectories.json.
    #[arg(long, default_value = "eval/trajectories")]
    pub out: PathBuf,
}

/// The first image of each of the first `k` classes.
pub fn run_trajectories(cmd: TrajectoriesCmd) -> anyhow::Result<()> {
    let s = setup(&cmd.checkpoints, &cmd.data)?;
    out_dir(&cmd.out)?;
    let t = s.trajectories(cmd.images, cmd.extent, &cmd.out)?;
    write_json(&cmd.out.join("trajectories.json"), &t)?;
    eprintln!("wrote {}", cmd.out.join("fig6_trajectories.png").display());
    Ok(())
}

#[derive(Debug, Args)]
pub struct SamplesCmd {
    /// The attacked model.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DataOpts,
    /// Budgets in units of 1/255, one block of rows each (default: ε and 2ε, as in Fig. 7/8).
    #[arg(long, value_delimiter = ',')]
    pub eps_list: Vec<f64>,
    /// Output folder: fig7_samples.png.
    #[arg(long, default_value = "eval/samples")]
    pub out: PathBuf,
}

pub fn run_samples(cmd: SamplesCmd) -> anyhow::Result<()> {
    let s = setup(std::slice::from_ref(&cmd.checkpoint), &cmd.data)?;
    out_dir(&cmd.out)?;
    let flipped = s
        .samples(&cmd.eps_list, &cmd.out)
        .context("drawing the sample grid")?;
    for (e, k) in flipped {
        println!("ε = {:.0}/255: {k} of 10 predictions changed", e * 255.0);
    }
    eprintln!("wrote {}", cmd.out.join("fig7_samples.png").display());
    Ok(())
}
