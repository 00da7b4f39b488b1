//! Per-example losses on logits (cross-entropy, DLR, targeted DLR, margins) with their derivatives, and the
//! input gradient of any such loss in one forward and one backward pass.
//!
//! The losses of AutoAttack sort logits, which candle cannot differentiate; here each loss is computed on the
//! host from the logits together with `∂L/∂z`, and the input gradient is the vector–Jacobian product
//! `∇ₓ Σᵢ ⟨∂Lᵢ/∂zᵢ, zᵢ(x)⟩`, the same graph an autograd loss would have produced.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::Module;

/// A per-example loss on the logits `z` of one example with label `y` (and, for targeted losses, target `t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitLoss {
    /// Cross-entropy `−log softmax(z)[y]`.
    Ce,
    /// Difference of logits ratio `−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)`, `π` sorting `z` decreasingly
    /// (Croce & Hein 2020, eq. 5); needs at least 3 classes.
    Dlr,
    /// Targeted DLR `−(z_y − z_t) / (z_π1 − ½(z_π3 + z_π4) + 1e-12)`; needs at least 4 classes.
    DlrTargeted,
    /// `z_t − z_y`: positive once the target beats the label (FAB's targeted linearisation).
    TargetMinusLabel,
}

/// The classes ordered by decreasing logit (ties: lower index first).
pub fn ranked(z: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..z.len()).collect();
    idx.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    idx
}

/// The largest logit other than `y`, and its class.
pub fn best_other(z: &[f64], y: usize) -> (usize, f64) {
    z.iter().enumerate().filter(|&(i, _)| i != y).fold(
        (usize::MAX, f64::NEG_INFINITY),
        |m, (i, &v)| {
            if v > m.1 { (i, v) } else { m }
        },
    )
}

/// `z_y − max_{i≠y} z_i`: positive while the example is classified as `y` (Square's margin).
pub fn margin(z: &[f64], y: usize) -> f64 {
    z[y] - best_other(z, y).1
}

impl LogitLoss {
    /// The smallest number of classes the loss is defined for.
    pub fn min_classes(self) -> usize {
        match self {
            LogitLoss::Ce | LogitLoss::TargetMinusLabel => 2,
            LogitLoss::Dlr => 3,
            LogitLoss::DlrTargeted => 4,
        }
    }

    /// The loss of one example and its gradient with respect to the logits.
    pub fn value_and_grad(self, z: &[f64], y: usize, target: Option<usize>) -> (f64, Vec<f64>) {
        let mut g = vec![0.0; z.len()];
        let target = || target.unwrap_or(y);
        match self {
            LogitLoss::Ce => {
                let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
                for (gi, v) in g.iter_mut().zip(z) {
                    *gi = (v - m).exp() / s;
                }
                g[y] -= 1.0;
                (m + s.ln() - z[y], g)
            }
            LogitLoss::Dlr => {
                let pi = ranked(z);
                let (other, zo) = best_other(z, y);
                let num = z[y] - zo;
                let den = z[pi[0]] - z[pi[2]] + 1e-12;
                // L = −num/den: ∂L = −∂num/den + num·∂den/den².
                g[y] -= 1.0 / den;
                g[other] += 1.0 / den;
                g[pi[0]] += num / (den * den);
                g[pi[2]] -= num / (den * den);
                (-num / den, g)
            }
            LogitLoss::DlrTargeted => {
                let t = target();
                let pi = ranked(z);
                let num = z[y] - z[t];
                let den = z[pi[0]] - 0.5 * (z[pi[2]] + z[pi[3]]) + 1e-12;
                g[y] -= 1.0 / den;
                g[t] += 1.0 / den;
                g[pi[0]] += num / (den * den);
                g[pi[2]] -= 0.5 * num / (den * den);
                g[pi[3]] -= 0.5 * num / (den * den);
                (-num / den, g)
            }
            LogitLoss::TargetMinusLabel => {
                let t = target();
                g[t] += 1.0;
                g[y] -= 1.0;
                (z[t] - z[y], g)
            }
        }
    }
}

/// The logits of `model` at `x`, as f64 rows on the host.
pub fn logits_rows(model: &dyn Module, x: &Tensor) -> Result<Vec<Vec<f64>>> {
    model
        .forward(&x.detach())?
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f64>()
}

/// What one forward and backward pass gives: per example the loss, the logits, and the input gradient
/// (flattened rows, f64).
#[derive(Debug)]
pub struct LossGrad {
    pub loss: Vec<f64>,
    pub logits: Vec<Vec<f64>>,
    pub grad: Vec<Vec<f64>>,
}

impl LossGrad {
    /// Whether example `i` is still classified as `y`.
    pub fn correct(&self, i: usize, y: usize) -> bool {
        ranked(&self.logits[i])[0] == y
    }
}

/// Loss and input gradient of `loss` for every example of `x` (`(B, …)`), with labels `y` and optional
/// targets. The model is not changed; nothing of the graph survives.
pub fn loss_and_grad(
    model: &dyn Module,
    x: &Tensor,
    y: &[usize],
    targets: Option<&[usize]>,
    loss: LogitLoss,
) -> Result<LossGrad> {
    let xv = Var::from_tensor(&x.detach())?;
    let z = model.forward(xv.as_tensor())?;
    let rows = z
        .detach()
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f64>()?;
    let k = rows.first().map_or(0, Vec::len);
    if k < loss.min_classes() {
        candle_core::bail!(
            "{loss:?} needs at least {} classes, the model has {k}",
            loss.min_classes()
        );
    }
    let mut values = Vec::with_capacity(rows.len());
    let mut coef = Vec::with_capacity(rows.len() * k);
    for (i, row) in rows.iter().enumerate() {
        let (v, g) = loss.value_and_grad(row, y[i], targets.map(|t| t[i]));
        values.push(v);
        coef.extend(g);
    }
    let coef = Tensor::from_vec(coef, (rows.len(), k), &Device::Cpu)?
        .to_dtype(z.dtype())?
        .to_device(z.device())?;
    let grads = (z * coef)?.sum_all()?.backward()?;
    let g = grads
        .get(xv.as_tensor())
        .ok_or_else(|| {
            candle_core::Error::Msg("the model's output does not depend on its input".into())
        })?
        .flatten_from(1)?
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f64>()?;
    Ok(LossGrad {
        loss: values,
        logits: rows,
        grad: g,
    })
}

/// Host rows (flattened examples, f64) as a tensor shaped `shape` (`shape[0]` = number of rows) in `dtype` on
/// `device`.
pub fn rows_to_tensor(
    rows: &[&[f64]],
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mut s = shape.to_vec();
    s[0] = rows.len();
    let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, s.as_slice(), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// A `(B, …)` tensor as flattened f64 rows on the host.
pub fn tensor_rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    t.flatten_from(1)?
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f64>()
}
