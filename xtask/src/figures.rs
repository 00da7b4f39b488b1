//! `trajectories` (Fig. 6) and `samples` (Fig. 7/8).

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Tensor;
use clap::Args;
use sgr_eval::figures::{Trajectory, one_per_class, plot_trajectories, samples, trajectories};

use crate::evalkit::{DataOpts, Setup, out_dir, setup, write_json};

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
fn pick(s: &Setup, k: usize) -> anyhow::Result<(Tensor, Tensor)> {
    let idx = one_per_class(&s.y, k.max(1))?;
    let idx = Tensor::new(
        idx.iter().map(|&i| i as u32).collect::<Vec<_>>().as_slice(),
        s.x.device(),
    )?;
    Ok((s.x.index_select(&idx, 0)?, s.y.index_select(&idx, 0)?))
}

pub fn run_trajectories(cmd: TrajectoriesCmd) -> anyhow::Result<()> {
    let s = setup(&cmd.checkpoints, &cmd.data)?;
    out_dir(&cmd.out)?;
    let t = make_trajectories(&s, cmd.images, cmd.extent, &cmd.out)?;
    write_json(&cmd.out.join("trajectories.json"), &t)?;
    eprintln!("wrote {}", cmd.out.join("fig6_trajectories.png").display());
    Ok(())
}

pub fn make_trajectories(
    s: &Setup,
    images: usize,
    extent: f64,
    out: &std::path::Path,
) -> anyhow::Result<Vec<Vec<Trajectory>>> {
    if !(extent > 0.0 && extent.is_finite()) {
        anyhow::bail!("--extent must be positive, got {extent}");
    }
    let (x, y) = pick(s, images)?;
    let ts: Vec<f64> = (0..=100)
        .map(|i| -extent + 2.0 * extent * i as f64 / 100.0)
        .collect();
    let rows = s
        .named()
        .into_iter()
        .map(|m| Ok(trajectories(m, &x, &y, s.eps, &ts)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    plot_trajectories(
        &out.join("fig6_trajectories.png"),
        s.eps,
        &rows,
        &s.dataset.class_names(),
    )?;
    Ok(rows)
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
    let flipped = make_samples(&s, &cmd.eps_list, &cmd.out)?;
    for (e, k) in flipped {
        println!("ε = {:.0}/255: {k} of 10 predictions changed", e * 255.0);
    }
    eprintln!("wrote {}", cmd.out.join("fig7_samples.png").display());
    Ok(())
}

pub fn make_samples(
    s: &Setup,
    eps_255: &[f64],
    out: &std::path::Path,
) -> anyhow::Result<Vec<(f64, usize)>> {
    let eps: Vec<f64> = if eps_255.is_empty() {
        vec![s.eps, 2.0 * s.eps]
    } else {
        eps_255.iter().map(|e| e / 255.0).collect()
    };
    if let Some(bad) = eps.iter().find(|e| !(**e >= 0.0 && e.is_finite())) {
        anyhow::bail!(
            "--eps-list values must be non-negative, got {}",
            bad * 255.0
        );
    }
    let (x, y) = pick(s, 10)?;
    samples(
        &out.join("fig7_samples.png"),
        s.named()[0],
        &x,
        &y,
        &eps,
        &s.dataset.class_names(),
    )
    .context("drawing the sample grid")
}
