//! The paper's figures: covariance of adversarial perturbations (Fig. 1), their covariance functions (Fig. 2),
//! synthetic LRC covariances (Fig. 5), softmax trajectories (Fig. 6) and sample grids (Fig. 7, 8).
//!
//! Each figure has a function that computes its numbers (tested) and one that draws them.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::Module;
use serde::{Deserialize, Serialize};
use sgr_attacks::{Attack, DeepFool, Fgsm, Pgd};
use sgr_covariance::{ChannelStructure, CovFun, Covariance, Dense, Stationary};

use crate::plot::{Heatmap, LinePanel, Series, Tile};
use crate::{Named, Result, adversarial_set, check_data};

/// Perturbations `x_adv − x` of PGD-10 (at ε), FGSM (at ε) and DeepFool on `(x, y)`.
pub fn perturbations(
    model: &dyn Module,
    x: &Tensor,
    y: &Tensor,
    eps: f64,
    batch_size: usize,
) -> Result<Vec<(String, Tensor)>> {
    check_data(x, y)?;
    let pgd = adversarial_set(x, y, batch_size, |_, xb, yb| {
        Pgd::whitebox().run(model, xb, yb, eps)
    })?;
    let fgsm = adversarial_set(x, y, batch_size, |_, xb, yb| Fgsm.run(model, xb, yb, eps))?;
    let fool = adversarial_set(x, y, batch_size, |_, xb, _| {
        Ok(DeepFool::default().attack(model, xb)?.adversarial)
    })?;
    Ok(vec![
        ("PGD".into(), (pgd - x)?),
        ("FGSM".into(), (fgsm - x)?),
        ("DeepFool".into(), (fool - x)?),
    ])
}

/// The middle half of a `d × d` row-major matrix (25 % trimmed on each side, as in the paper's Fig. 1).
pub fn centre_crop(matrix: &[f64], d: usize) -> (Vec<f64>, usize) {
    let (lo, hi) = (d / 4, d - d / 4);
    let n = hi - lo;
    let mut out = Vec::with_capacity(n * n);
    for i in lo..hi {
        out.extend_from_slice(&matrix[i * d + lo..i * d + hi]);
    }
    (out, n)
}

fn dense_rows(cov: &Dense) -> Result<(Vec<f64>, usize)> {
    let m = cov.matrix();
    let d = m.dim(0)?;
    Ok((m.flatten_all()?.to_vec1::<f64>()?, d))
}

/// Intra- and inter-channel covariance functions of a perturbation set, `r = 0..=radius`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CovCurves {
    pub name: String,
    /// `(c, c', f_{c,c'}(0..=R))`, intra-channel (`c = c'`) first.
    pub curves: Vec<(usize, usize, Vec<f64>)>,
}

/// The covariance function (Algorithm 1, raw second moments) of `xi`, every channel pair.
pub fn covariance_curves(name: &str, xi: &Tensor, radius: usize) -> Result<CovCurves> {
    let c = xi.dim(1)?;
    let cf = CovFun::estimate(xi, radius as i64, ChannelStructure::Full)?;
    let mut curves: Vec<(usize, usize, Vec<f64>)> =
        (0..c).map(|a| (a, a, cf.curve(a, a).to_vec())).collect();
    for a in 0..c {
        for b in a + 1..c {
            curves.push((a, b, cf.curve(a, b).to_vec()));
        }
    }
    Ok(CovCurves {
        name: name.into(),
        curves,
    })
}

/// What `analyze-cov` measured (the matrices are in the PNGs; this is for JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CovAnalysis {
    pub images: usize,
    pub eps: f64,
    /// Per perturbation kind: mean ‖δ‖₂ and the mean per-pixel variance (mean of the covariance diagonal).
    pub perturbations: Vec<(String, f64, f64)>,
    pub curves: Vec<CovCurves>,
}

/// Fig. 1, 2 and 5 for `model` on test images `(x, y)`, with the data covariance of `data` (training
/// images). Writes `fig1_perturbation_covariance.png`, `fig2_covariance_functions.png` and
/// `fig5_lrc_covariances.png` into `out`.
#[allow(clippy::too_many_arguments)]
pub fn analyze_covariance(
    model: &dyn Module,
    x: &Tensor,
    y: &Tensor,
    data: &Tensor,
    eps: f64,
    batch_size: usize,
    radius: usize,
    out: &Path,
) -> Result<CovAnalysis> {
    let n = check_data(x, y)?;
    let shape = (x.dim(1)?, x.dim(2)?, x.dim(3)?);
    let deltas = perturbations(model, x, y, eps, batch_size)?;
    let data_cov = Dense::data_covariance(data)?;
    let mut maps = Vec::new();
    let mut stats = Vec::new();
    let mut curves = Vec::new();
    for (name, delta) in &deltas {
        let cov = Dense::data_covariance(delta)?;
        let norm = delta
            .flatten_from(1)?
            .to_dtype(DType::F64)?
            .sqr()?
            .sum(1)?
            .sqrt()?
            .mean_all()?
            .to_scalar::<f64>()?;
        stats.push((name.clone(), norm, cov.mean_diag()));
        let (m, d) = dense_rows(&cov)?;
        let (values, k) = centre_crop(&m, d);
        maps.push(Heatmap {
            title: name.clone(),
            values,
            n: k,
        });
        curves.push(covariance_curves(name, delta, radius)?);
    }
    let (m, d) = dense_rows(&data_cov)?;
    let (values, k) = centre_crop(&m, d);
    let data_map = Heatmap {
        title: "data (training set)".into(),
        values,
        n: k,
    };
    maps.push(data_map.clone());
    crate::plot::heatmaps(
        &out.join("fig1_perturbation_covariance.png"),
        &format!(
            "Covariance of perturbations at ε = {:.0}/255 ({n} test images; centre crop, max |entry| = 1)",
            eps * 255.0
        ),
        &maps,
    )?;

    // Fig. 2: PGD covariance functions, intra-channel left, inter-channel right.
    let pgd = &curves[0];
    let series = |intra: bool| -> Vec<Series> {
        pgd.curves
            .iter()
            .filter(|(a, b, _)| (a == b) == intra)
            .map(|(a, b, f)| Series {
                label: if intra {
                    format!("channel {a}")
                } else {
                    format!("channels {a}–{b}")
                },
                points: f.iter().enumerate().map(|(r, &v)| (r as f64, v)).collect(),
            })
            .collect()
    };
    let range = |s: &[Series]| {
        let (lo, hi) = s
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold((0f64, 0f64), |(a, b), v| (a.min(v), b.max(v)));
        (
            lo - 0.05 * (hi - lo).max(1e-12),
            hi + 0.05 * (hi - lo).max(1e-12),
        )
    };
    let mut panels = Vec::new();
    for intra in [true, false] {
        let s = series(intra);
        if s.is_empty() {
            continue;
        }
        panels.push(LinePanel {
            title: if intra {
                "intra-channel".into()
            } else {
                "inter-channel".into()
            },
            x_label: "pixel displacement r".into(),
            y_label: "covariance".into(),
            y_range: range(&s),
            series: s,
            legend: true,
        });
    }
    crate::plot::line_panels(
        &out.join("fig2_covariance_functions.png"),
        &format!("PGD covariance functions (ε = {:.0}/255)", eps * 255.0),
        &panels,
        2,
    )?;

    // Fig. 5: synthetic LRC covariances beside the data's.
    let mut lrc_maps = Vec::new();
    for zeta in [1.0, 2.0, 4.0, 8.0] {
        let s = Stationary::lrc(shape, zeta)?;
        let dense = s.to_dense()?.to_dtype(DType::F64)?;
        let dd = dense.dim(0)?;
        let (values, k) = centre_crop(&dense.flatten_all()?.to_vec1::<f64>()?, dd);
        lrc_maps.push(Heatmap {
            title: format!("LRC ζ = {zeta}"),
            values,
            n: k,
        });
    }
    lrc_maps.push(data_map);
    crate::plot::heatmaps(
        &out.join("fig5_lrc_covariances.png"),
        "Long-range-correlated covariances (centre crop, max |entry| = 1)",
        &lrc_maps,
    )?;
    Ok(CovAnalysis {
        images: n,
        eps,
        perturbations: stats,
        curves,
    })
}

/// Softmax outputs along `x + t·δ`, `δ` the PGD-10 perturbation of `x` at ε, for `t` in `ts`. Inputs are not
/// clipped to `[0, 1]` along the line (the paper's trajectories are straight lines).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    pub model: String,
    pub image: usize,
    pub label: u32,
    pub ts: Vec<f64>,
    /// `probs[t][class]`.
    pub probs: Vec<Vec<f64>>,
}

/// One trajectory per image in `(x, y)` (keep the batch small: `ts.len()` forward passes per image).
pub fn trajectories(
    model: Named<'_>,
    x: &Tensor,
    y: &Tensor,
    eps: f64,
    ts: &[f64],
) -> Result<Vec<Trajectory>> {
    let n = check_data(x, y)?;
    let adv = Pgd::whitebox().run(model.model, x, y, eps)?;
    let delta = (adv - x)?;
    let labels = y.to_vec1::<u32>()?;
    let mut out = Vec::with_capacity(n);
    for (i, &label) in labels.iter().enumerate() {
        let (xi, di) = (x.narrow(0, i, 1)?, delta.narrow(0, i, 1)?);
        let t = Tensor::new(ts, &Device::Cpu)?
            .to_dtype(x.dtype())?
            .to_device(x.device())?
            .reshape((ts.len(), 1, 1, 1))?;
        let line = xi.broadcast_add(&di.broadcast_mul(&t)?)?;
        let probs = candle_nn::ops::softmax(&model.model.forward(&line)?, D::Minus1)?
            .to_dtype(DType::F64)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f64>()?;
        out.push(Trajectory {
            model: model.name.to_string(),
            image: i,
            label,
            ts: ts.to_vec(),
            probs,
        });
    }
    Ok(out)
}

/// Draws trajectories as a grid: one row per model, one panel per image, one line per class.
pub fn plot_trajectories(
    path: &Path,
    eps: f64,
    rows: &[Vec<Trajectory>],
    class_names: &[&str],
) -> Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1);
    let mut panels = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        for tr in row {
            let k = tr.probs.first().map_or(0, Vec::len);
            let series = (0..k)
                .map(|c| Series {
                    label: class_names
                        .get(c)
                        .map_or_else(|| format!("class {c}"), |s| s.to_string()),
                    points: tr
                        .ts
                        .iter()
                        .zip(&tr.probs)
                        .map(|(&t, p)| (t, p[c]))
                        .collect(),
                })
                .collect();
            panels.push(LinePanel {
                title: format!(
                    "{}: image {} ({})",
                    tr.model,
                    tr.image,
                    class_names.get(tr.label as usize).copied().unwrap_or("?")
                ),
                x_label: "t (input x + t·δ_PGD)".into(),
                y_label: "softmax".into(),
                series,
                y_range: (0.0, 1.02),
                legend: r == 0 && tr.image == 0,
            });
        }
    }
    crate::plot::line_panels(
        path,
        &format!(
            "Softmax along x + t·δ, δ = PGD-10 perturbation at ε = {:.0}/255",
            eps * 255.0
        ),
        &panels,
        cols,
    )
}

/// The first test image of each class `0..classes` (in class order), as indices into `y`.
pub fn one_per_class(y: &Tensor, classes: usize) -> Result<Vec<usize>> {
    let labels = y.to_vec1::<u32>()?;
    Ok((0..classes as u32)
        .filter_map(|c| labels.iter().position(|&l| l == c))
        .collect())
}

fn tiles(t: &Tensor, captions: &[String]) -> Result<Vec<Tile>> {
    let (n, c, h, w) = t.dims4()?;
    let v = t
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let per = c * h * w;
    Ok((0..n)
        .map(|i| Tile {
            pixels: v[i * per..(i + 1) * per].to_vec(),
            shape: (c, h, w),
            caption: captions.get(i).cloned().unwrap_or_default(),
        })
        .collect())
}

/// Fig. 7/8: for each ε, originals (captioned with their labels), PGD-10 adversarials (captioned with the
/// model's predictions) and the perturbations rescaled to the full range (`0.5 + δ / (2·max|δ|)` per image).
/// Returns the per-ε count of changed predictions.
pub fn samples(
    path: &Path,
    model: Named<'_>,
    x: &Tensor,
    y: &Tensor,
    eps_list: &[f64],
    class_names: &[&str],
) -> Result<Vec<(f64, usize)>> {
    let n = check_data(x, y)?;
    let name = |k: u32| {
        class_names
            .get(k as usize)
            .map_or_else(|| k.to_string(), |s| s.to_string())
    };
    let labels = y.to_vec1::<u32>()?;
    let mut rows = Vec::new();
    let mut flipped = Vec::new();
    let orig_caps: Vec<String> = labels.iter().map(|&l| name(l)).collect();
    for &eps in eps_list {
        let adv = Pgd::whitebox().run(model.model, x, y, eps)?;
        let pred = model
            .model
            .forward(&adv)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?;
        flipped.push((
            eps,
            pred.iter().zip(&labels).filter(|(p, l)| p != l).count(),
        ));
        let delta = (&adv - x)?;
        let scale = delta
            .abs()?
            .flatten_from(1)?
            .max(1)?
            .maximum(1e-12)?
            .reshape((n, 1, 1, 1))?;
        let shown = ((delta.broadcast_div(&scale)? * 0.5)? + 0.5)?;
        let e = format!("{:.0}/255", eps * 255.0);
        rows.push(("original".to_string(), tiles(x, &orig_caps)?));
        rows.push((
            format!("PGD ε = {e}"),
            tiles(
                &adv,
                &pred
                    .iter()
                    .map(|&p| format!("→ {}", name(p)))
                    .collect::<Vec<_>>(),
            )?,
        ));
        rows.push((format!("δ rescaled ({e})"), tiles(&shown, &[])?));
    }
    crate::plot::image_grid(
        path,
        &format!(
            "{}: PGD-10 samples (captions: label, then prediction)",
            model.name
        ),
        &rows,
    )?;
    Ok(flipped)
}
