//! `eval-whitebox`: the white-box table (the paper's Table 3) with the masking checks.

use std::path::PathBuf;

use clap::Args;
use sgr_eval::{WhiteboxConfig, whitebox_table};

use crate::evalkit::{DataOpts, Setup, out_dir, result_cache, setup, write, write_json};

#[derive(Debug, Args)]
pub struct WhiteboxCmd {
    /// Run folders (holding model.safetensors) or .safetensors files; one table row each.
    #[arg(long, num_args = 1.., required = true)]
    pub checkpoints: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DataOpts,
    /// PGD iterations (step ε/5).
    #[arg(long, default_value_t = 10)]
    pub pgd_steps: usize,
    /// DeepFool (FOOL column) on the first N test images (0: all).
    #[arg(long, default_value_t = 0)]
    pub deepfool_images: usize,
    /// Gradient-masking sweeps on the first N test images (0: all).
    #[arg(long, default_value_t = 0)]
    pub masking_images: usize,
    /// Add an AA column: AutoAttack's standard suite (L∞, APGD-CE, APGD-T, FAB-T, Square).
    #[arg(long)]
    pub autoattack: bool,
    /// AutoAttack on the first N test images (0: all).
    #[arg(long, default_value_t = 1000)]
    pub autoattack_images: usize,
    /// Output folder: whitebox.md, whitebox.csv, whitebox.json.
    #[arg(long, default_value = "eval/whitebox")]
    pub out: PathBuf,
    /// Keep each model's result in OUT/cache/whitebox and reuse what an earlier invocation
    /// stored there with the same settings, test images and checkpoint bytes: an interrupted evaluation
    /// continues model by model.
    #[arg(long)]
    pub resume: bool,
}

pub fn run(cmd: WhiteboxCmd) -> anyhow::Result<()> {
    let s = setup(&cmd.checkpoints, &cmd.data)?;
    out_dir(&cmd.out)?;
    let cache = cmd.resume.then(|| result_cache(&cmd.out, "whitebox"));
    let rows = s.whitebox_rows(&config(&s, &cmd), cache.as_ref())?;
    let md = sgr_eval::report::whitebox_markdown(s.dataset.as_str(), s.eps_255(), &rows);
    write(&cmd.out.join("whitebox.md"), &md)?;
    write(
        &cmd.out.join("whitebox.csv"),
        &whitebox_table(&rows).to_csv(),
    )?;
    write_json(&cmd.out.join("whitebox.json"), &rows)?;
    println!("{md}");
    eprintln!("wrote {}", cmd.out.display());
    Ok(())
}

/// The settings the flags describe.
pub fn config(s: &Setup, cmd: &WhiteboxCmd) -> WhiteboxConfig {
    WhiteboxConfig {
        eps: s.eps,
        pgd_steps: cmd.pgd_steps,
        batch_size: cmd.data.batch_size,
        seed: cmd.data.seed,
        deepfool_images: cmd.deepfool_images,
        masking_images: cmd.masking_images,
        autoattack: cmd.autoattack.then(|| sgr_attacks::AutoAttack {
            seed: cmd.data.seed,
            batch_size: cmd.data.batch_size,
            ..sgr_attacks::AutoAttack::default()
        }),
        // Without the AA column the count means nothing: 0, so that stored rows' keys do not depend on it.
        autoattack_images: if cmd.autoattack {
            cmd.autoattack_images
        } else {
            0
        },
        ..WhiteboxConfig::default()
    }
}
