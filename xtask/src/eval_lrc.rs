//! `eval-lrc`: accuracy under worst-of-N long-range-correlated noise, per noise scale (the paper's Fig. 3/4).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use sgr_eval::experiment::ResultCache;
use sgr_eval::{LrcResults, LrcSettings, lrc_figures, lrc_markdown};

use crate::evalkit::{DataOpts, Setup, out_dir, result_cache, setup, write, write_json};

#[derive(Debug, Args)]
pub struct LrcCmd {
    /// Run folders or .safetensors files; one curve each.
    #[arg(long, num_args = 1.., required = true)]
    pub checkpoints: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DataOpts,
    /// Noise draws per image; an image counts as correct only if every draw is classified correctly.
    #[arg(long, default_value_t = 100)]
    pub draws: usize,
    /// Decay lengths ζ of Fig. 3.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub zetas: Vec<f64>,
    /// Noise scale of Fig. 3, in pixel units.
    #[arg(long, default_value_t = 0.3)]
    pub lrc_eps: f64,
    /// Noise scales of Fig. 4 (ζ = 8 and the data covariance), in pixel units.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.05,0.1,0.2,0.3,0.5,0.7"
    )]
    pub eps_list: Vec<f64>,
    /// Training images the data covariance is estimated from.
    #[arg(long, default_value_t = 10_000)]
    pub data_cov_images: usize,
    /// Output folder: lrc.md, lrc.json, fig3_lrc_zeta.png, fig4_lrc_eps.png, fig4_data_cov_eps.png.
    #[arg(long, default_value = "eval/lrc")]
    pub out: PathBuf,
    /// Keep each model's curves in OUT/cache/lrc and reuse what an earlier invocation
    /// stored there with the same settings, test images and checkpoint bytes: an interrupted evaluation
    /// continues model by model.
    #[arg(long)]
    pub resume: bool,
}

pub fn run(cmd: LrcCmd) -> anyhow::Result<()> {
    let s = setup(&cmd.checkpoints, &cmd.data)?;
    out_dir(&cmd.out)?;
    let cache = cmd.resume.then(|| result_cache(&cmd.out, "lrc"));
    let r = evaluate(&s, &cmd, cache.as_ref())?;
    let md = lrc_markdown(s.dataset.as_str(), &r, "");
    write(&cmd.out.join("lrc.md"), &md)?;
    write_json(&cmd.out.join("lrc.json"), &r)?;
    println!("{md}");
    eprintln!("wrote {}", cmd.out.display());
    Ok(())
}

/// Runs the evaluation (with a `cache`, model by model: see `Setup::lrc_evaluation`) and draws its figures
/// into `--out`.
pub fn evaluate(
    s: &Setup,
    cmd: &LrcCmd,
    cache: Option<&ResultCache>,
) -> anyhow::Result<LrcResults> {
    let settings = LrcSettings {
        draws: cmd.draws,
        zetas: cmd.zetas.clone(),
        lrc_eps: cmd.lrc_eps,
        eps_list: cmd.eps_list.clone(),
        seed: cmd.data.seed,
        batch_size: cmd.data.batch_size,
    };
    let r = s
        .lrc_evaluation(&settings, cmd.data_cov_images, cache)
        .context("the correlated-noise evaluation")?;
    lrc_figures(&cmd.out, &r, s.dataset.as_str())?;
    Ok(r)
}
