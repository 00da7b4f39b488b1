//! Multi-class DeepFool (Moosavi-Dezfooli, Fawzi, Frossard 2016), batched.

use candle_core::{D, DType, Device, Result, Tensor, Var};
use candle_nn::Module;

use crate::{Attack, check_eps};

/// DeepFool: from `x`, repeatedly step to the linearised nearest decision boundary of the originally
/// predicted class `k₀`, `r = (|f'_l| + 1e-4)/‖w_l‖² · w_l` with `l = argmin_k |f_k − f_k₀| / ‖∇f_k − ∇f_k₀‖`,
/// accumulating `r_tot` and trying `x + (1 + overshoot)·r_tot` until the label changes or `max_iter` is reached.
/// Minimal-perturbation: it takes no ε (the [`Attack`] implementation ignores it).
#[derive(Clone, Debug)]
pub struct DeepFool {
    pub overshoot: f64,
    pub max_iter: usize,
}

impl Default for DeepFool {
    fn default() -> Self {
        Self {
            overshoot: 0.02,
            max_iter: 100,
        }
    }
}

/// Adversarial inputs, which of them changed the prediction, and ρ = mean ‖x_adv − x‖₂ / ‖x‖₂ over the
/// batch (eq. 2 of the DeepFool paper; the FOOL column of the SGR paper).
#[derive(Debug)]
pub struct DeepFoolResult {
    pub adversarial: Tensor,
    pub fooled: Vec<bool>,
    pub rho: f64,
    /// Per example ‖x_adv − x‖₂ / ‖x‖₂.
    pub rho_per_example: Vec<f64>,
}

fn to_rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    t.flatten_from(1)?
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f64>()
}

/// The current points of the examples in `active`, as a batch shaped like the input (`shape[0]` replaced).
fn gather_rows(
    rows: &[Vec<f64>],
    active: &[usize],
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let flat: Vec<f64> = active
        .iter()
        .flat_map(|&i| rows[i].iter().copied())
        .collect();
    let mut cur_shape = shape.to_vec();
    cur_shape[0] = active.len();
    Tensor::from_vec(flat, cur_shape.as_slice(), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

impl DeepFool {
    pub fn attack(&self, model: &dyn Module, x: &Tensor) -> Result<DeepFoolResult> {
        let _span = tracing::debug_span!("deepfool", max_iter = self.max_iter).entered();
        let x = x.detach();
        let b = x.dim(0)?;
        let shape = x.dims().to_vec();
        let d: usize = shape[1..].iter().product();
        let (dtype, device) = (x.dtype(), x.device().clone());
        let x_rows = to_rows(&x)?;
        let k0: Vec<u32> = model.forward(&x)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let mut r_tot = vec![vec![0f64; d]; b];
        let mut active: Vec<usize> = (0..b).collect();
        let mut fooled = vec![false; b];
        let mut adv_rows = x_rows.clone();
        for _ in 0..self.max_iter {
            if active.is_empty() {
                break;
            }
            let xa = gather_rows(&adv_rows, &active, &shape, dtype, &device)?;
            let xv = Var::from_tensor(&xa)?;
            let logits = model.forward(xv.as_tensor())?;
            let k = logits.dim(1)?;
            let lg = logits
                .detach()
                .to_dtype(DType::F64)?
                .to_device(&Device::Cpu)?
                .to_vec2::<f64>()?;
            let pred: Vec<usize> = lg
                .iter()
                .map(|row| {
                    row.iter()
                        .enumerate()
                        .fold(
                            (0, f64::NEG_INFINITY),
                            |m, (j, &v)| if v > m.1 { (j, v) } else { m },
                        )
                        .0
                })
                .collect();
            // Gradients of every logit (examples are independent, so Σ over the batch gives per-example rows).
            let mut grads = Vec::with_capacity(k);
            for class in 0..k {
                let g = logits.narrow(1, class, 1)?.sum_all()?.backward()?;
                let g = g
                    .get(xv.as_tensor())
                    .ok_or_else(|| candle_core::Error::Msg("no input gradient".into()))?
                    .detach();
                grads.push(to_rows(&g)?);
            }
            let mut still = Vec::new();
            for (a, &i) in active.iter().enumerate() {
                let k0i = k0[i] as usize;
                if pred[a] != k0i {
                    fooled[i] = true;
                    continue;
                }
                let mut best: Option<(f64, f64, Vec<f64>)> = None;
                for class in (0..k).filter(|&c| c != k0i) {
                    let w: Vec<f64> = grads[class][a]
                        .iter()
                        .zip(&grads[k0i][a])
                        .map(|(p, q)| p - q)
                        .collect();
                    let f = lg[a][class] - lg[a][k0i];
                    let wn = w.iter().map(|v| v * v).sum::<f64>().sqrt();
                    if wn == 0.0 {
                        continue;
                    }
                    let dist = f.abs() / wn;
                    if best.as_ref().is_none_or(|bst| dist < bst.0) {
                        best = Some((dist, f, w));
                    }
                }
                let Some((_, f, w)) = best else { continue };
                let wn2: f64 = w.iter().map(|v| v * v).sum();
                let scale = (f.abs() + 1e-4) / wn2;
                for (r, wv) in r_tot[i].iter_mut().zip(&w) {
                    *r += scale * wv;
                }
                for j in 0..d {
                    adv_rows[i][j] =
                        (x_rows[i][j] + (1.0 + self.overshoot) * r_tot[i][j]).clamp(0.0, 1.0);
                }
                still.push(i);
            }
            active = still;
        }
        // Examples still active after the last step: check them once more.
        if !active.is_empty() {
            let xa = gather_rows(&adv_rows, &active, &shape, dtype, &device)?;
            let pred = model.forward(&xa)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            for (a, &i) in active.iter().enumerate() {
                fooled[i] = pred[a] != k0[i];
            }
        }
        let rho_per_example: Vec<f64> = (0..b)
            .map(|i| {
                let num = adv_rows[i]
                    .iter()
                    .zip(&x_rows[i])
                    .map(|(a, c)| (a - c).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let den = x_rows[i]
                    .iter()
                    .map(|v| v * v)
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-12);
                num / den
            })
            .collect();
        let rho = rho_per_example.iter().sum::<f64>() / b.max(1) as f64;
        let adversarial = Tensor::from_vec(adv_rows.concat(), shape.as_slice(), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(&device)?;
        Ok(DeepFoolResult {
            adversarial,
            fooled,
            rho,
            rho_per_example,
        })
    }
}

impl Attack for DeepFool {
    fn name(&self) -> String {
        "DeepFool".into()
    }
    fn run(&self, model: &dyn Module, x: &Tensor, _y: &Tensor, eps: f64) -> Result<Tensor> {
        check_eps(eps)?;
        Ok(self.attack(model, x)?.adversarial)
    }
}
