//! FAB-T, the targeted fast adaptive boundary attack (Croce & Hein, ICML 2020): minimally distorted
//! adversarial examples from repeated projections onto the linearised decision boundary, within `[0, 1]`.

use candle_core::{Result, Tensor};
use candle_nn::Module;

use crate::apgd::{Batch, Correct, target_of_rank, target_runs, targeted_runs, vector_norm};
use crate::logits::{LogitLoss, LossGrad, loss_and_grad};
use crate::{Attack, Norm, check_eps};

/// The smallest `λ ≥ 0` with `Σᵢ aᵢ·min(λ, rᵢ) ≥ c` (weights `aᵢ ≥ 0`, caps `rᵢ ≥ 0`), or `None` where even
/// `λ = ∞` falls short.
fn water_level(a: &[f64], r: &[f64], c: f64) -> Option<f64> {
    if c <= 0.0 {
        return Some(0.0);
    }
    let mut order: Vec<usize> = (0..a.len()).filter(|&i| a[i] > 0.0).collect();
    order.sort_by(|&p, &q| r[p].total_cmp(&r[q]));
    let (mut free, mut saturated) = (order.iter().map(|&i| a[i]).sum::<f64>(), 0.0);
    for &i in &order {
        if saturated + free * r[i] >= c {
            return Some((c - saturated) / free);
        }
        saturated += a[i] * r[i];
        free -= a[i];
    }
    None
}

/// The smallest perturbation `d` (in `norm`) with `w·(t + d) = b` and `t + d ∈ [0, 1]`, for `t ∈ [0, 1]`;
/// where the box makes the hyperplane unreachable, the box corner that gets closest to it.
pub fn project_to_hyperplane(t: &[f64], w: &[f64], b: f64, norm: Norm) -> Vec<f64> {
    let gap: f64 = w.iter().zip(t).map(|(p, q)| p * q).sum::<f64>() - b;
    // Move so that w·x falls by |gap| (flip w for a negative gap): coordinate i moves by −s·sign(wᵢ)·sᵢ.
    let s = if gap < 0.0 { -1.0 } else { 1.0 };
    let c = gap.abs();
    let sign: Vec<f64> = w.iter().map(|v| (s * v).signum()).collect();
    let cap: Vec<f64> = t
        .iter()
        .zip(&sign)
        .map(|(ti, si)| if *si > 0.0 { *ti } else { 1.0 - ti }.max(0.0))
        .collect();
    let (a, r): (Vec<f64>, Vec<f64>) = match norm {
        Norm::LInf => (w.iter().map(|v| v.abs()).collect(), cap.clone()),
        Norm::L2 => (
            w.iter().map(|v| v * v).collect(),
            cap.iter()
                .zip(w)
                .map(|(c, v)| if *v == 0.0 { 0.0 } else { c / v.abs() })
                .collect(),
        ),
    };
    let lambda = water_level(&a, &r, c);
    (0..t.len())
        .map(|i| {
            if w[i] == 0.0 {
                return 0.0;
            }
            let step = lambda.map_or(r[i], |l| l.min(r[i]));
            let size = match norm {
                Norm::LInf => step,
                Norm::L2 => step * w[i].abs(),
            };
            -sign[i] * size
        })
        .collect()
}

/// FAB-T with AutoAttack's standard settings by [`Default`]: L∞, 9 targets (the 2nd … 10th most likely
/// classes of the clean input), 100 iterations each, `α_max = 0.1`, `η = 1.05`, `β = 0.9`, no random start.
/// An example counts as broken where the smallest perturbation found lies within ε.
#[derive(Clone, Debug)]
pub struct FabTargeted {
    pub norm: Norm,
    pub steps: usize,
    pub targets: usize,
    pub alpha_max: f64,
    pub eta: f64,
    pub beta: f64,
}

impl Default for FabTargeted {
    fn default() -> Self {
        Self {
            norm: Norm::LInf,
            steps: 100,
            targets: 9,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
        }
    }
}

/// The adversarial input FAB found for an example and its distance from the clean one.
#[derive(Clone, Debug, PartialEq)]
pub struct FabFound {
    pub adversarial: Vec<f64>,
    pub distance: f64,
}

impl FabTargeted {
    /// The number of target runs for a `k`-class model.
    pub fn runs(&self, k: usize) -> usize {
        target_runs(self.targets, k)
    }

    /// One target's run: per example the closest misclassified input found (any distance), or `None`.
    pub(crate) fn run_target(
        &self,
        model: &dyn Module,
        batch: &Batch<'_>,
        y: &[usize],
        clean_logits: &[Vec<f64>],
        rank: usize,
    ) -> Result<Vec<Option<FabFound>>> {
        let targets = target_of_rank(clean_logits, rank);
        let n = batch.x.len();
        let mut best: Vec<Option<FabFound>> = vec![None; n];
        let eval = |idx: &[usize], pts: &[Vec<f64>]| -> Result<LossGrad> {
            let rows: Vec<&[f64]> = idx.iter().map(|&i| pts[i].as_slice()).collect();
            let ys: Vec<usize> = idx.iter().map(|&i| y[i]).collect();
            let ts: Vec<usize> = idx.iter().map(|&i| targets[i]).collect();
            loss_and_grad(
                model,
                &batch.tensor(&rows)?,
                &ys,
                Some(&ts),
                LogitLoss::TargetMinusLabel,
            )
        };
        let all: Vec<usize> = (0..n).collect();
        let mut x1: Vec<Vec<f64>> = batch.x.iter().map(|r| r.to_vec()).collect();
        if n == 0 {
            return Ok(best);
        }
        let first = eval(&all, &x1)?;
        let mut df = first.loss;
        let mut dg = first.grad;
        for it in 0..self.steps {
            for i in 0..n {
                let x0 = batch.x[i];
                let b = -df[i] + dg[i].iter().zip(&x1[i]).map(|(p, q)| p * q).sum::<f64>();
                let d1 = project_to_hyperplane(&x1[i], &dg[i], b, self.norm);
                let d2 = project_to_hyperplane(x0, &dg[i], b, self.norm);
                let a1 = vector_norm(&d1, self.norm).max(1e-8);
                let a2 = vector_norm(&d2, self.norm).max(1e-8);
                let alpha = (a1 / (a1 + a2)).clamp(0.0, self.alpha_max);
                let mut next: Vec<f64> = (0..x0.len())
                    .map(|j| {
                        ((x1[i][j] + self.eta * d1[j]) * (1.0 - alpha)
                            + (x0[j] + self.eta * d2[j]) * alpha)
                            .clamp(0.0, 1.0)
                    })
                    .collect();
                batch.round(&mut next);
                x1[i] = next;
            }
            let r = eval(&all, &x1)?;
            let mut moved = Vec::new();
            for i in 0..n {
                df[i] = r.loss[i];
                dg[i].clone_from(&r.grad[i]);
                if r.correct(i, y[i]) {
                    continue;
                }
                let delta: Vec<f64> = x1[i].iter().zip(batch.x[i]).map(|(a, b)| a - b).collect();
                let dist = vector_norm(&delta, self.norm);
                if best[i].as_ref().is_none_or(|f| dist < f.distance) {
                    best[i] = Some(FabFound {
                        adversarial: x1[i].clone(),
                        distance: dist,
                    });
                }
                let mut back: Vec<f64> = batch.x[i]
                    .iter()
                    .zip(&delta)
                    .map(|(a, d)| a + self.beta * d)
                    .collect();
                batch.round(&mut back);
                x1[i] = back;
                moved.push(i);
            }
            if !moved.is_empty() && it + 1 < self.steps {
                let r = eval(&moved, &x1)?;
                for (a, &i) in moved.iter().enumerate() {
                    df[i] = r.loss[a];
                    dg[i].clone_from(&r.grad[a]);
                }
            }
        }
        Ok(best)
    }

    /// The smallest perturbation found for each example over all target runs (every target is tried on every
    /// correctly classified example), or `None` for examples misclassified already or never flipped.
    pub fn minimal(
        &self,
        model: &dyn Module,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<Vec<Option<FabFound>>> {
        let c = Correct::of(model, x, y)?;
        let all: Vec<usize> = (0..c.idx.len()).collect();
        let (batch, _, labels, logits) = c.subset(&all, x);
        let mut best: Vec<Option<FabFound>> = vec![None; c.rows.len()];
        for rank in 0..self.runs(c.classes) {
            let res = self.run_target(model, &batch, &labels, &logits, rank)?;
            for (k, &i) in c.idx.iter().enumerate() {
                if let Some(f) = &res[k] {
                    if best[i].as_ref().is_none_or(|b| f.distance < b.distance) {
                        best[i] = Some(f.clone());
                    }
                }
            }
        }
        Ok(best)
    }
}

impl Attack for FabTargeted {
    fn name(&self) -> String {
        "FAB-T".into()
    }
    /// Adversarial inputs within `eps` where found (the smallest over the targets), others unchanged.
    fn run(&self, model: &dyn Module, x: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
        check_eps(eps)?;
        let _span = tracing::debug_span!("fab_t", steps = self.steps, eps).entered();
        targeted_runs(
            model,
            x,
            y,
            |k| self.runs(k),
            |rank, batch, _, labels, logits| {
                Ok(self
                    .run_target(model, batch, labels, logits, rank)?
                    .into_iter()
                    .map(|f| f.filter(|f| f.distance <= eps).map(|f| f.adversarial))
                    .collect())
            },
        )
    }
}
