//! `eval-transfer`: the PGD transfer matrix between checkpoints (the paper's Table 4).

use std::path::PathBuf;

use clap::Args;
use sgr_eval::experiment::ResultCache;
use sgr_eval::{TransferConfig, TransferMatrix};

use crate::evalkit::{DataOpts, Setup, out_dir, result_cache, setup, write, write_json};

#[derive(Debug, Args)]
pub struct TransferCmd {
    /// Run folders or .safetensors files; each is a row (evaluated) and a column (source of PGD examples).
    #[arg(long, num_args = 1.., required = true)]
    pub checkpoints: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DataOpts,
    /// PGD iterations (step ε/5; the paper's transfer tables use 40).
    #[arg(long, default_value_t = 40)]
    pub pgd_steps: usize,
    /// Output folder: transfer.md, transfer.csv, transfer.json.
    #[arg(long, default_value = "eval/transfer")]
    pub out: PathBuf,
    /// Keep each source model's column in OUT/cache/transfer and reuse what an earlier invocation
    /// stored there with the same settings, test images and checkpoint bytes: an interrupted evaluation
    /// continues model by model.
    #[arg(long)]
    pub resume: bool,
}

pub fn run(cmd: TransferCmd) -> anyhow::Result<()> {
    let s = setup(&cmd.checkpoints, &cmd.data)?;
    out_dir(&cmd.out)?;
    let cache = cmd.resume.then(|| result_cache(&cmd.out, "transfer"));
    let m = evaluate(&s, &cmd, cache.as_ref())?;
    let md = sgr_eval::report::transfer_markdown(s.dataset.as_str(), s.eps_255(), &m);
    write(&cmd.out.join("transfer.md"), &md)?;
    write(&cmd.out.join("transfer.csv"), &m.plain_table().to_csv())?;
    write_json(&cmd.out.join("transfer.json"), &m)?;
    println!("{md}");
    eprintln!("wrote {}", cmd.out.display());
    Ok(())
}

/// The matrix; with a `cache`, column by column (see `Setup::transfer_matrix`).
pub fn evaluate(
    s: &Setup,
    cmd: &TransferCmd,
    cache: Option<&ResultCache>,
) -> anyhow::Result<TransferMatrix> {
    let cfg = TransferConfig {
        eps: s.eps,
        steps: cmd.pgd_steps,
        batch_size: cmd.data.batch_size,
    };
    Ok(s.transfer_matrix(&cfg, cache)?)
}
