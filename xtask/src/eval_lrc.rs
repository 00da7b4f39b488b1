//! `eval-lrc`: accuracy under worst-of-N long-range-correlated noise, per noise scale (the paper's Fig. 3/4).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use sgr_attacks::NoiseSource;
use sgr_eval::plot::{LinePanel, Series, line_chart};
use sgr_eval::{LrcCurve, Table, fmt_pct, lrc_curve};

use crate::evalkit::{DataOpts, Setup, out_dir, setup, write, write_json};

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
}

#[derive(Debug, Serialize)]
pub struct LrcResults {
    pub images: usize,
    pub draws: usize,
    pub lrc_eps: f64,
    pub by_zeta: Vec<LrcCurve>,
    pub by_eps_zeta8: Vec<LrcCurve>,
    pub by_eps_data_cov: Vec<LrcCurve>,
}

pub fn run(cmd: LrcCmd) -> anyhow::Result<()> {
    let s = setup(&cmd.checkpoints, &cmd.data)?;
    out_dir(&cmd.out)?;
    let r = evaluate(&s, &cmd)?;
    let md = markdown(&s, &r, "");
    write(&cmd.out.join("lrc.md"), &md)?;
    write_json(&cmd.out.join("lrc.json"), &r)?;
    println!("{md}");
    eprintln!("wrote {}", cmd.out.display());
    Ok(())
}

pub fn evaluate(s: &Setup, cmd: &LrcCmd) -> anyhow::Result<LrcResults> {
    for &e in cmd.eps_list.iter().chain([&cmd.lrc_eps]) {
        if !(e >= 0.0 && e.is_finite()) {
            anyhow::bail!("noise scales (--eps-list, --lrc-eps) must be non-negative, got {e}");
        }
    }
    let shape = (s.x.dim(1)?, s.x.dim(2)?, s.x.dim(3)?);
    let zeta_sources = cmd
        .zetas
        .iter()
        .map(|&z| NoiseSource::lrc(shape, z).with_context(|| format!("--zetas {z}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let zeta8 = NoiseSource::lrc(shape, 8.0)?;
    let data = s.train_images(cmd.data_cov_images)?;
    let data_cov = data_covariance_with_ridge(&data)?;
    let data_source =
        NoiseSource::dense(&data_cov).context("the data covariance as a noise source")?;
    let by_zeta: Vec<_> = cmd
        .zetas
        .iter()
        .zip(&zeta_sources)
        .map(|(&z, src)| (z, src, cmd.lrc_eps))
        .collect();
    let by_eps8: Vec<_> = cmd.eps_list.iter().map(|&e| (e, &zeta8, e)).collect();
    let by_data: Vec<_> = cmd.eps_list.iter().map(|&e| (e, &data_source, e)).collect();
    let (bs, seed) = (cmd.data.batch_size, cmd.data.seed);
    let mut r = LrcResults {
        images: s.x.dim(0)?,
        draws: cmd.draws,
        lrc_eps: cmd.lrc_eps,
        by_zeta: vec![],
        by_eps_zeta8: vec![],
        by_eps_data_cov: vec![],
    };
    for m in s.named() {
        r.by_zeta
            .push(lrc_curve(m, &by_zeta, &s.x, &s.y, cmd.draws, seed, bs)?);
        r.by_eps_zeta8
            .push(lrc_curve(m, &by_eps8, &s.x, &s.y, cmd.draws, seed, bs)?);
        r.by_eps_data_cov
            .push(lrc_curve(m, &by_data, &s.x, &s.y, cmd.draws, seed, bs)?);
    }
    let series = |curves: &[LrcCurve]| -> Vec<Series> {
        curves
            .iter()
            .map(|c| Series {
                label: c.model.clone(),
                points: c.points.clone(),
            })
            .collect()
    };
    let what = format!(
        "worst of {}, {} {} test images",
        cmd.draws, s.dataset, r.images
    );
    let figures = [
        (
            "fig3_lrc_zeta.png",
            format!(
                "LRC noise, ε = {}: accuracy vs decay length ({what})",
                cmd.lrc_eps
            ),
            "decay length ζ (pixels)",
            &r.by_zeta,
        ),
        (
            "fig4_lrc_eps.png",
            format!("LRC noise, ζ = 8: accuracy vs ε ({what})"),
            "noise scale ε (pixel units)",
            &r.by_eps_zeta8,
        ),
        (
            "fig4_data_cov_eps.png",
            format!("Noise with the data covariance: accuracy vs ε ({what})"),
            "noise scale ε (pixel units)",
            &r.by_eps_data_cov,
        ),
    ];
    for (file, title, x_label, curves) in figures {
        line_chart(
            &cmd.out.join(file),
            &LinePanel {
                title,
                x_label: x_label.into(),
                y_label: "accuracy".into(),
                series: series(curves),
                y_range: (0.0, 1.02),
                legend: true,
            },
        )?;
    }
    Ok(r)
}

/// The data covariance plus `1e-6 · mean variance` on the diagonal: image data sets have pixels of zero
/// variance (MNIST's border) and fewer images than pixels in small samples, so the raw matrix is singular and
/// has no Cholesky factor. The ridge changes the noise by a negligible amount.
pub fn data_covariance_with_ridge(
    data: &candle_core::Tensor,
) -> anyhow::Result<sgr_covariance::Dense> {
    use sgr_covariance::Covariance;
    let cov = sgr_covariance::Dense::data_covariance(data)?;
    let d = cov.dim();
    let ridge = 1e-6 * cov.mean_diag().max(f64::MIN_POSITIVE);
    let eye = candle_core::Tensor::eye(d, candle_core::DType::F64, &candle_core::Device::Cpu)?;
    let m = (cov.matrix() + (eye * ridge)?)?;
    Ok(sgr_covariance::Dense::new(cov.shape(), &m)?)
}

fn curve_table(x_name: &str, curves: &[LrcCurve]) -> Table {
    let mut header = vec![x_name.to_string()];
    header.extend(curves.iter().map(|c| c.model.clone()));
    let mut t = Table::new(header);
    let xs: Vec<f64> = curves
        .first()
        .map(|c| c.points.iter().map(|p| p.0).collect())
        .unwrap_or_default();
    for (i, x) in xs.iter().enumerate() {
        let mut row = vec![format!("{x}")];
        row.extend(curves.iter().map(|c| fmt_pct(c.points[i].1)));
        t.push(row);
    }
    t
}

/// The LRC section of a report; `fig_prefix` is the figures' folder relative to the report.
pub fn markdown(s: &Setup, r: &LrcResults, fig_prefix: &str) -> String {
    format!(
        "## Correlated-noise accuracy (%), worst of {} draws, {} first {} test images\n\n\
         An image counts as correct only if all {} noisy copies `clip(x + ε·ξ)` are classified correctly; every \
         model sees the same draws. LRC: intra-channel covariance exp(−r/ζ), inter-channel 0.5·exp(−r/ζ), unit \
         variance.\n\n### Fig. 3: LRC, ε = {}, against ζ\n\n{}\n![]({fig_prefix}fig3_lrc_zeta.png)\n\n\
         ### Fig. 4: LRC, ζ = 8, against ε\n\n{}\n![]({fig_prefix}fig4_lrc_eps.png)\n\n\
         ### The same with the data set's covariance (scaled to unit mean variance)\n\n{}\n![]({fig_prefix}fig4_data_cov_eps.png)\n",
        r.draws,
        s.dataset,
        r.images,
        r.draws,
        r.lrc_eps,
        curve_table("ζ", &r.by_zeta).to_markdown(),
        curve_table("ε", &r.by_eps_zeta8).to_markdown(),
        curve_table("ε", &r.by_eps_data_cov).to_markdown(),
    )
}
