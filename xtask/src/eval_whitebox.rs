//! `eval-whitebox`: the white-box table (the paper's Table 3) with the masking checks.

use std::path::PathBuf;

use clap::Args;
use sgr_eval::{WhiteboxConfig, WhiteboxRow, whitebox, whitebox_table};

use crate::evalkit::{DataOpts, Setup, out_dir, setup, write, write_json};

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
}

pub fn run(cmd: WhiteboxCmd) -> anyhow::Result<()> {
    let s = setup(&cmd.checkpoints, &cmd.data)?;
    out_dir(&cmd.out)?;
    let rows = evaluate(&s, &cmd)?;
    let md = markdown(&s, &rows);
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

pub fn evaluate(s: &Setup, cmd: &WhiteboxCmd) -> anyhow::Result<Vec<WhiteboxRow>> {
    let cfg = WhiteboxConfig {
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
        autoattack_images: cmd.autoattack_images,
        ..WhiteboxConfig::default()
    };
    s.named()
        .into_iter()
        .map(|m| Ok(whitebox(m, &s.x, &s.y, &cfg)?))
        .collect()
}

/// The white-box section of a report: the table, what each column means, and the masking checks.
pub fn markdown(s: &Setup, rows: &[WhiteboxRow]) -> String {
    let n = rows.first().map_or(0, |r| r.images);
    let mut md = format!(
        "## White-box accuracy (%) on {}, ε = {:.0}/255, first {n} test images\n\n",
        s.dataset,
        s.eps_255()
    );
    md += &whitebox_table(rows).to_markdown();
    let (nf, nm) = rows
        .first()
        .map_or((0, 0), |r| (r.fool_images, r.masking.images));
    md += &format!(
        "\nRAND: uniform noise in [−ε, ε]. FGM: one step of L2 norm ε. FGSM: one step ε·sign(g). PGD: {} steps \
         of ε/5 (L∞, no random start). FOOL: DeepFool's ρ = mean ‖r‖₂/‖x‖₂ (overshoot {}, ≤ {} iterations) \
         on {nf} images. All attacks use the true labels; inputs are clipped to [0, 1].{}\n\n",
        rows.first()
            .and_then(|r| r.masking.steps_curve.first())
            .map_or(10, |p| p.0),
        sgr_attacks::DeepFool::default().overshoot,
        sgr_attacks::DeepFool::default().max_iter,
        rows.iter()
            .find(|r| r.aa.is_some())
            .map_or(String::new(), |r| format!(
                " AA: AutoAttack's standard suite (APGD-CE, APGD-T, FAB-T, Square; L∞, 100 iterations, 9 \
                 targets, 5,000 queries) on the first {} images; `cargo xtask eval-autoattack` gives each \
                 attack's column and its own masking checks.",
                r.aa_images
            ))
    );
    md += &format!(
        "### Gradient-masking checks ({nm} images)\n\nAccuracy must fall with ε (PGD at ε/2, ε, 2ε, 255/255) and \
         must not rise with twice the PGD steps; PGD at 255/255 must reach ≤ {} %; PGD must beat FGSM and FGSM \
         must beat random noise (tolerance: {}).\n\n",
        100.0 * sgr_eval::UNBOUNDED_LIMIT,
        sgr_eval::tolerance_text()
    );
    for r in rows {
        let failed: Vec<_> = r.masking.failed().collect();
        if failed.is_empty() {
            md += &format!(
                "- **{}**: all {} checks pass. ε sweep: {}.\n",
                r.model,
                r.masking.checks.len(),
                r.masking
                    .eps_curve
                    .iter()
                    .map(|(e, a)| format!("{:.0}/255 {:.1} %", e * 255.0, 100.0 * a))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        } else {
            for c in failed {
                md += &format!("- **{}: FLAGGED**, {}: {}\n", r.model, c.name, c.detail);
            }
        }
    }
    md
}
