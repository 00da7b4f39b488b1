//! Worst-of-N correlated-noise accuracy (paper sec. 4.3, Fig. 3 and 4).

use candle_core::{D, Device, Tensor};
use serde::{Deserialize, Serialize};
use sgr_attacks::{NoiseSource, WorstOfN};

use crate::{Named, Result, batch_seed, batches, check_data};

/// Accuracy under the worst of `draws` noise draws `x + ε·ξ` (clipped to `[0, 1]`): an example counts as
/// correct only if every draw is classified correctly. The noise of batch `b`, draw `d` derives from
/// `(seed, b, d)` alone, so every model sees the same draws. Examples already broken are not evaluated again.
#[allow(clippy::too_many_arguments)]
pub fn worst_of_n_accuracy(
    model: &dyn candle_nn::Module,
    source: &NoiseSource,
    x: &Tensor,
    y: &Tensor,
    eps: f64,
    draws: usize,
    seed: u64,
    batch_size: usize,
) -> Result<f64> {
    let n = check_data(x, y)?;
    let _span = tracing::debug_span!("worst_of_n", eps, draws, images = n).entered();
    let mut correct = 0usize;
    for (i, (s, len)) in batches(n, batch_size).enumerate() {
        let (xb, yb) = (x.narrow(0, s, len)?, y.narrow(0, s, len)?);
        let labels = yb.to_vec1::<u32>()?;
        let mut alive: Vec<u32> = (0..len as u32).collect();
        let bseed = batch_seed(seed, sgr_data::streams::LRC_EVAL, i);
        for d in 0..draws.max(1) {
            if alive.is_empty() {
                break;
            }
            let noise = WorstOfN::draw_noise(source, bseed, d, len)?
                .to_dtype(x.dtype())?
                .to_device(x.device())?
                .reshape(xb.dims())?;
            let idx = Tensor::new(alive.as_slice(), &Device::Cpu)?.to_device(x.device())?;
            let xp = (xb.index_select(&idx, 0)? + (noise.index_select(&idx, 0)? * eps)?)?
                .clamp(0.0, 1.0)?;
            let pred = model.forward(&xp)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            alive = alive
                .iter()
                .zip(&pred)
                .filter(|&(&a, &p)| p == labels[a as usize])
                .map(|(&a, _)| a)
                .collect();
        }
        correct += alive.len();
    }
    Ok(correct as f64 / n as f64)
}

/// One model's accuracy at a series of settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrcCurve {
    pub model: String,
    /// `(x, accuracy)`; `x` is the swept quantity (ζ or ε).
    pub points: Vec<(f64, f64)>,
}

/// [`worst_of_n_accuracy`] of one model at each `(x, source, ε)` setting.
pub fn lrc_curve(
    model: Named<'_>,
    settings: &[(f64, &NoiseSource, f64)],
    x: &Tensor,
    y: &Tensor,
    draws: usize,
    seed: u64,
    batch_size: usize,
) -> Result<LrcCurve> {
    let _span = tracing::info_span!("lrc_curve", model = model.name).entered();
    let points = settings
        .iter()
        .map(|&(v, src, eps)| {
            Ok((
                v,
                worst_of_n_accuracy(model.model, src, x, y, eps, draws, seed, batch_size)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LrcCurve {
        model: model.name.to_string(),
        points,
    })
}

/// Relative ridge added to a data covariance before sampling from it ([`sgr_covariance::Dense::with_relative_ridge`]).
pub const DATA_COV_RIDGE: f64 = 1e-6;

/// The settings of the correlated-noise evaluation (Fig. 3 and 4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrcSettings {
    /// Noise draws per image; an image counts as correct only if every draw is classified correctly.
    pub draws: usize,
    /// Decay lengths ζ of Fig. 3.
    pub zetas: Vec<f64>,
    /// Noise scale of Fig. 3, in pixel units.
    pub lrc_eps: f64,
    /// Noise scales of Fig. 4 (ζ = 8 and the data covariance), in pixel units.
    pub eps_list: Vec<f64>,
    pub seed: u64,
    pub batch_size: usize,
}

/// Every model's curves of the correlated-noise evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrcResults {
    pub images: usize,
    pub draws: usize,
    pub lrc_eps: f64,
    /// Fig. 3: LRC noise at `lrc_eps`, against ζ.
    pub by_zeta: Vec<LrcCurve>,
    /// Fig. 4: LRC noise with ζ = 8, against ε.
    pub by_eps_zeta8: Vec<LrcCurve>,
    /// Fig. 4's companion: noise with the data set's covariance, against ε.
    pub by_eps_data_cov: Vec<LrcCurve>,
}

/// The correlated-noise evaluation of `models` on `(x, y)`: LRC noise against ζ and ε, and noise with the
/// covariance of `train_images` (`(n, C, H, W)`, with a [`DATA_COV_RIDGE`]) against ε.
pub fn lrc_evaluation(
    models: &[Named<'_>],
    x: &Tensor,
    y: &Tensor,
    train_images: &Tensor,
    settings: &LrcSettings,
) -> Result<LrcResults> {
    let sources = LrcSources::new(x, train_images, settings)?;
    let curves = models
        .iter()
        .map(|&m| sources.model_curves(m, x, y))
        .collect::<Result<Vec<_>>>()?;
    LrcResults::from_models(x, y, settings, curves)
}

/// One model's three curves of the correlated-noise evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrcModelCurves {
    pub by_zeta: LrcCurve,
    pub by_eps_zeta8: LrcCurve,
    pub by_eps_data_cov: LrcCurve,
}

/// The noise sources of the evaluation, made once and shared by every model: LRC noise per ζ, LRC noise with
/// ζ = 8, and noise with the data covariance.
pub struct LrcSources {
    settings: LrcSettings,
    zetas: Vec<NoiseSource>,
    zeta8: NoiseSource,
    data: NoiseSource,
}

impl std::fmt::Debug for LrcSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LrcSources")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl LrcSources {
    /// Validates `settings` and makes the sources for images shaped like `x`; the data covariance comes
    /// from `train_images`.
    pub fn new(x: &Tensor, train_images: &Tensor, settings: &LrcSettings) -> Result<Self> {
        for &e in settings.eps_list.iter().chain([&settings.lrc_eps]) {
            if !(e >= 0.0 && e.is_finite()) {
                return Err(crate::EvalError::Invalid(format!(
                    "noise scales (--eps-list, --lrc-eps) must be non-negative, got {e}"
                )));
            }
        }
        let shape = (x.dim(1)?, x.dim(2)?, x.dim(3)?);
        let zetas = settings
            .zetas
            .iter()
            .map(|&z| {
                NoiseSource::lrc(shape, z)
                    .map_err(|e| crate::EvalError::Invalid(format!("decay length ζ = {z}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let data_cov = sgr_covariance::Dense::data_covariance(train_images)?
            .with_relative_ridge(DATA_COV_RIDGE)?;
        Ok(Self {
            settings: settings.clone(),
            zetas,
            zeta8: NoiseSource::lrc(shape, 8.0)?,
            data: NoiseSource::dense(&data_cov)?,
        })
    }

    /// The three curves of one model (the expensive part: `draws` forward passes per image and setting).
    pub fn model_curves(&self, m: Named<'_>, x: &Tensor, y: &Tensor) -> Result<LrcModelCurves> {
        let st = &self.settings;
        let by_zeta: Vec<_> = st
            .zetas
            .iter()
            .zip(&self.zetas)
            .map(|(&z, src)| (z, src, st.lrc_eps))
            .collect();
        let by_eps8: Vec<_> = st.eps_list.iter().map(|&e| (e, &self.zeta8, e)).collect();
        let by_data: Vec<_> = st.eps_list.iter().map(|&e| (e, &self.data, e)).collect();
        let (draws, seed, bs) = (st.draws, st.seed, st.batch_size);
        Ok(LrcModelCurves {
            by_zeta: lrc_curve(m, &by_zeta, x, y, draws, seed, bs)?,
            by_eps_zeta8: lrc_curve(m, &by_eps8, x, y, draws, seed, bs)?,
            by_eps_data_cov: lrc_curve(m, &by_data, x, y, draws, seed, bs)?,
        })
    }
}

impl LrcResults {
    /// The results from each model's curves, in the order given.
    pub fn from_models(
        x: &Tensor,
        y: &Tensor,
        settings: &LrcSettings,
        curves: Vec<LrcModelCurves>,
    ) -> Result<Self> {
        let mut r = Self {
            images: check_data(x, y)?,
            draws: settings.draws,
            lrc_eps: settings.lrc_eps,
            by_zeta: vec![],
            by_eps_zeta8: vec![],
            by_eps_data_cov: vec![],
        };
        for c in curves {
            r.by_zeta.push(c.by_zeta);
            r.by_eps_zeta8.push(c.by_eps_zeta8);
            r.by_eps_data_cov.push(c.by_eps_data_cov);
        }
        Ok(r)
    }
}

/// Draws Fig. 3 (`fig3_lrc_zeta.png`) and Fig. 4 (`fig4_lrc_eps.png`, `fig4_data_cov_eps.png`) into `dir`.
pub fn lrc_figures(dir: &std::path::Path, r: &LrcResults, dataset: &str) -> Result<()> {
    use crate::plot::{LinePanel, Series, line_chart};
    let series = |curves: &[LrcCurve]| -> Vec<Series> {
        curves
            .iter()
            .map(|c| Series {
                label: c.model.clone(),
                points: c.points.clone(),
            })
            .collect()
    };
    let what = format!("worst of {}, {dataset} {} test images", r.draws, r.images);
    let figures = [
        (
            "fig3_lrc_zeta.png",
            format!(
                "LRC noise, ε = {}: accuracy vs decay length ({what})",
                r.lrc_eps
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
            &dir.join(file),
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
    Ok(())
}

fn curve_table(x_name: &str, curves: &[LrcCurve]) -> crate::Table {
    let mut header = vec![x_name.to_string()];
    header.extend(curves.iter().map(|c| c.model.clone()));
    let mut t = crate::Table::new(header);
    let xs: Vec<f64> = curves
        .first()
        .map(|c| c.points.iter().map(|p| p.0).collect())
        .unwrap_or_default();
    for (i, x) in xs.iter().enumerate() {
        let mut row = vec![format!("{x}")];
        row.extend(curves.iter().map(|c| crate::fmt_pct(c.points[i].1)));
        t.push(row);
    }
    t
}

/// The correlated-noise section of a report; `fig_prefix` is the figures' folder relative to the report.
pub fn lrc_markdown(dataset: &str, r: &LrcResults, fig_prefix: &str) -> String {
    format!(
        "## Correlated-noise accuracy (%), worst of {} draws, {} first {} test images\n\n\
         An image counts as correct only if all {} noisy copies `clip(x + ε·ξ)` are classified correctly; every \
         model sees the same draws. LRC: intra-channel covariance exp(−r/ζ), inter-channel 0.5·exp(−r/ζ), unit \
         variance.\n\n### Fig. 3: LRC, ε = {}, against ζ\n\n{}\n![]({fig_prefix}fig3_lrc_zeta.png)\n\n\
         ### Fig. 4: LRC, ζ = 8, against ε\n\n{}\n![]({fig_prefix}fig4_lrc_eps.png)\n\n\
         ### The same with the data set's covariance (scaled to unit mean variance; ridge {DATA_COV_RIDGE:e} of its mean variance)\n\n{}\n![]({fig_prefix}fig4_data_cov_eps.png)\n",
        r.draws,
        dataset,
        r.images,
        r.draws,
        r.lrc_eps,
        curve_table("ζ", &r.by_zeta).to_markdown(),
        curve_table("ε", &r.by_eps_zeta8).to_markdown(),
        curve_table("ε", &r.by_eps_data_cov).to_markdown(),
    )
}
