//! Adversarial attacks on any Candle classifier (`impl Module`, images in `[0, 1]` to logits), in the style of
//! foolbox: the budget `ε` is a call argument in pixel units (the command line takes units of 1/255), step sizes
//! are relative to it, results are clipped to `[0, 1]`, and an attack never changes the model or leaves
//! gradient state behind.
//!
//! | attack | perturbation |
//! |---|---|
//! | [`Rand`] | uniform noise in the L∞ ball (baseline) |
//! | [`Fgm`] | one step `ε·g/‖g‖₂` |
//! | [`Fgsm`] | one step `ε·sign(g)` |
//! | [`Pgd`] | iterated signed (L∞) or normalised (L2) steps of `ε/5`, projected and clipped each step |
//! | [`DeepFool`] | multi-class DeepFool, overshoot 0.02, ≤ 100 iterations; reports ρ = mean ‖r‖₂/‖x‖₂ |
//! | [`WorstOfN`] | `N` draws of correlated Gaussian noise scaled by `ε`; an example is broken if any draw breaks it |
//! | [`Apgd`] | Auto-PGD on the CE or DLR loss: momentum, step size halved at checkpoints, random start (L∞, L2) |
//! | [`ApgdTargeted`] | APGD-T: targeted DLR loss, one run per target class (the 2nd … 10th most likely) |
//! | [`FabTargeted`] | FAB-T: minimal perturbations by projections onto the linearised boundary; broken within ε |
//! | [`Square`] | score-based random search of square patches, no gradients (L∞) |
//! | [`AutoAttack`] | the standard suite APGD-CE → APGD-T → FAB-T → Square, resumable ([`AutoAttackState`]) |
//!
//! `g` is the gradient of the cross-entropy loss with respect to the input, for the labels passed in: the true
//! labels for evaluation, or the model's own predictions ([`predicted_labels`]) to avoid label leaking when
//! perturbations are made during training.
//!
//! Speed: attacks only need input gradients. Pass a model whose parameters are plain tensors rather than
//! `Var`s (for the paper's CNN: `Cnn::frozen`), so backward passes skip the parameter gradients.

mod apgd;
mod autoattack;
mod deepfool;
mod fab;
mod grad;
pub mod logits;
mod lrc;
mod square;

use candle_core::{D, DType, Result, Tensor};
use candle_nn::Module;
use rand::SeedableRng;

pub use apgd::{Apgd, ApgdTargeted, apgd_checkpoints, target_runs};
pub use autoattack::{AaAttack, AutoAttack, AutoAttackState, StepReport};
pub use deepfool::{DeepFool, DeepFoolResult};
pub use fab::{FabFound, FabTargeted, project_to_hyperplane};
pub use grad::{loss_gradient, predicted_labels};
pub use logits::LogitLoss;
pub use lrc::{NoiseSource, WorstOfN, WorstOfNResult};
pub use square::{SQUARE_SEGMENT, Square, SquarePoint};

/// An attack: adversarial inputs for `x` (`(B, C, H, W)` in `[0, 1]`) with labels `y` (`u32`, `(B,)`) within
/// budget `eps`.
pub trait Attack {
    fn name(&self) -> String;
    fn run(&self, model: &dyn Module, x: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor>;
}

fn check_eps(eps: f64) -> Result<()> {
    if !(eps >= 0.0 && eps.is_finite()) {
        candle_core::bail!("the attack budget ε must be a non-negative number, got {eps}");
    }
    Ok(())
}

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

/// Per-example L2 norm of a `(B, …)` tensor, shaped `(B, 1, …, 1)` for broadcasting.
fn l2_norm_keepdim(t: &Tensor) -> Result<Tensor> {
    let b = t.dim(0)?;
    let mut shape = vec![b];
    shape.extend(std::iter::repeat_n(1, t.rank() - 1));
    t.flatten_from(1)?
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .reshape(shape)
}

/// Uniform noise in `[−ε, ε]` per pixel, clipped to `[0, 1]` (the paper's RAND baseline).
#[derive(Clone, Debug)]
pub struct Rand {
    pub seed: u64,
}

impl Attack for Rand {
    fn name(&self) -> String {
        "RAND".into()
    }
    fn run(&self, _model: &dyn Module, x: &Tensor, _y: &Tensor, eps: f64) -> Result<Tensor> {
        check_eps(eps)?;
        use rand::Rng;
        let mut r = rng(self.seed);
        let n = x.elem_count();
        let noise: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..=1.0)).collect();
        let noise = Tensor::from_vec(noise, x.shape(), &candle_core::Device::Cpu)?
            .to_dtype(x.dtype())?
            .to_device(x.device())?;
        (x + (noise * eps)?)?.clamp(0.0, 1.0)
    }
}

/// Fast gradient method: one step of `ε·g/‖g‖₂` per example.
#[derive(Clone, Debug, Default)]
pub struct Fgm;

impl Attack for Fgm {
    fn name(&self) -> String {
        "FGM".into()
    }
    fn run(&self, model: &dyn Module, x: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
        check_eps(eps)?;
        let (g, _) = loss_gradient(model, x, y)?;
        let norm = l2_norm_keepdim(&g)?.maximum(1e-12)?;
        (x + (g.broadcast_div(&norm)? * eps)?)?.clamp(0.0, 1.0)
    }
}

/// Fast gradient sign method: one step of `ε·sign(g)`.
#[derive(Clone, Debug, Default)]
pub struct Fgsm;

impl Attack for Fgsm {
    fn name(&self) -> String {
        "FGSM".into()
    }
    fn run(&self, model: &dyn Module, x: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
        check_eps(eps)?;
        let (g, _) = loss_gradient(model, x, y)?;
        (x + (g.sign()? * eps)?)?.clamp(0.0, 1.0)
    }
}

/// The norm an attack's budget is measured in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    LInf,
    L2,
}

/// Projected gradient descent (Madry et al.): `steps` steps of size `step_ratio·ε` (signed for L∞,
/// normalised for L2), each followed by projection onto the ε-ball around `x` and clipping to `[0, 1]`;
/// optionally from a uniform random start in the ball.
#[derive(Clone, Debug)]
pub struct Pgd {
    pub steps: usize,
    pub step_ratio: f64,
    pub norm: Norm,
    pub random_start: bool,
    pub seed: u64,
}

impl Pgd {
    /// The paper's white-box setting: L∞, 10 steps of ε/5, no random start.
    pub fn whitebox() -> Self {
        Self {
            steps: 10,
            step_ratio: 0.2,
            norm: Norm::LInf,
            random_start: false,
            seed: 0,
        }
    }

    /// The paper's transfer setting: 40 steps.
    pub fn transfer() -> Self {
        Self {
            steps: 40,
            ..Self::whitebox()
        }
    }

    fn project(&self, x: &Tensor, xa: &Tensor, eps: f64) -> Result<Tensor> {
        let delta = (xa - x)?;
        let delta = match self.norm {
            Norm::LInf => delta.clamp(-eps, eps)?,
            Norm::L2 => {
                let n = l2_norm_keepdim(&delta)?;
                let factor = (n.maximum(1e-12)?.recip()? * eps)?.minimum(1.0)?;
                delta.broadcast_mul(&factor)?
            }
        };
        (x + delta)?.clamp(0.0, 1.0)
    }
}

impl Attack for Pgd {
    fn name(&self) -> String {
        format!(
            "PGD-{}{}",
            self.steps,
            if self.norm == Norm::L2 { "-L2" } else { "" }
        )
    }
    fn run(&self, model: &dyn Module, x: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
        check_eps(eps)?;
        let _span = tracing::debug_span!("pgd", steps = self.steps, eps).entered();
        let x = x.detach();
        let mut xa = if self.random_start {
            let start = Rand { seed: self.seed }.run(model, &x, y, eps)?;
            self.project(&x, &start, eps)?
        } else {
            x.clone()
        };
        let alpha = self.step_ratio * eps;
        for _ in 0..self.steps {
            let (g, _) = loss_gradient(model, &xa, y)?;
            let step = match self.norm {
                Norm::LInf => g.sign()?,
                Norm::L2 => g.broadcast_div(&l2_norm_keepdim(&g)?.maximum(1e-12)?)?,
            };
            xa = self.project(&x, &(&xa + (step * alpha)?)?, eps)?.detach();
        }
        Ok(xa)
    }
}

/// Number of rows of `logits` `(B, K)` whose arg-max equals the label in `y` (u32, `(B,)`): the one count of
/// correct predictions that attacks, training and evaluation share.
pub fn count_correct(logits: &Tensor, y: &Tensor) -> Result<usize> {
    Ok(logits
        .argmax(D::Minus1)?
        .eq(y)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()? as usize)
}

/// Accuracy of `model` on `x` with labels `y`, as (correct, total).
pub fn accuracy(model: &dyn Module, x: &Tensor, y: &Tensor) -> Result<(usize, usize)> {
    let logits = model.forward(&x.detach())?;
    Ok((count_correct(&logits, y)?, y.dim(0)?))
}
