//! Robustness evaluation for the SGR experiments (paper sec. 4.2–4.4, 7.2, 7.3).
//!
//! | what | function | paper |
//! |---|---|---|
//! | white-box table: TEST, RAND, FGM, FGSM, PGD-10, FOOL (ρ) | [`whitebox`] | Table 1 left, Table 3 |
//! | AutoAttack (APGD-CE, APGD-T, FAB-T, Square), resumable, with its masking checks | [`run_suite`], [`autoattack_row`] | — |
//! | gradient-masking checks behind every white-box row | [`MaskingReport`] | — |
//! | PGD-40 transfer matrix, one attack run per source model | [`transfer_matrix`] | Table 1 right, Table 4 |
//! | worst-of-N correlated-noise accuracy (LRC, data covariance) | [`worst_of_n_accuracy`] | Fig. 3, 4 |
//! | perturbation covariances, covariance functions, LRC covariances | [`figures`] | Fig. 1, 2, 5 |
//! | softmax along `x + t·δ` | [`figures::trajectories`] | Fig. 6 |
//! | original / adversarial / perturbation grids | [`figures::samples`] | Fig. 7, 8 |
//! | Markdown and CSV tables, PNG plots | [`Table`], [`plot`] | — |
//! | report sections (prose from the settings' constants), the paper's tables beside ours | [`report`] | Tables 3, 4 |
//! | a whole experiment's report (feature `experiment`, on sgr-train's plan) | `experiment` | — |
//!
//! Every function works on any Candle classifier (`&dyn Module`, images in `[0, 1]` to logits) and on test
//! data given as tensors `x: (N, C, H, W)`, `y: (N,)` `u32`, processed in batches. Results are deterministic
//! for a seed: every random draw (RAND noise, LRC noise) derives from `(seed, batch)`. The library never
//! installs a logger and never touches the network.

mod autoattack;
#[cfg(feature = "experiment")]
mod autoattack_folder;
#[cfg(feature = "experiment")]
mod cache;
#[cfg(feature = "experiment")]
mod checkpoints;
mod checks;
mod error;
#[cfg(feature = "experiment")]
pub mod experiment;
pub mod figures;
mod lrc;
pub mod paper;
pub mod plot;
pub mod report;
mod table;
mod transfer;
mod whitebox;

pub use autoattack::{
    AutoAttackEval, AutoAttackRow, SQUARE_GAIN_LIMIT, UNBOUNDED_LIMIT, autoattack_legend,
    autoattack_row, autoattack_table, run_suite,
};
pub use checks::{
    Check, MaskingReport, TOLERANCE_IMAGES, TOLERANCE_MIN, tolerance, tolerance_text,
};
pub use error::{EvalError, Result};
pub use lrc::{
    DATA_COV_RIDGE, LrcCurve, LrcModelCurves, LrcResults, LrcSettings, LrcSources, lrc_curve,
    lrc_evaluation, lrc_figures, lrc_markdown, worst_of_n_accuracy,
};
pub use table::{Table, fmt_pct};
pub use transfer::{
    TransferConfig, TransferMatrix, transfer_column, transfer_examples, transfer_matrix,
};
pub use whitebox::{WhiteboxConfig, WhiteboxRow, whitebox, whitebox_table};

use candle_core::{DType, Tensor};
use candle_nn::Module;

/// A classifier under evaluation and the name its rows and columns carry.
#[derive(Clone, Copy)]
pub struct Named<'a> {
    pub name: &'a str,
    pub model: &'a dyn Module,
}

impl std::fmt::Debug for Named<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Named").field("name", &self.name).finish()
    }
}

/// `(start, len)` of consecutive batches covering `n` items.
pub fn batches(n: usize, batch_size: usize) -> impl Iterator<Item = (usize, usize)> {
    let bs = batch_size.max(1);
    (0..n).step_by(bs).map(move |s| (s, bs.min(n - s)))
}

/// Clean accuracy of `model` on `(x, y)`.
pub fn accuracy(model: &dyn Module, x: &Tensor, y: &Tensor, batch_size: usize) -> Result<f64> {
    let correct = correct_per_image(model, x, y, batch_size)?;
    Ok(correct.iter().filter(|&&c| c).count() as f64 / correct.len() as f64)
}

/// Whether `model` classifies each image of `(x, y)` correctly, in order (what paired comparisons of two
/// models on the same images need; [`accuracy`] is the share of `true`).
pub fn correct_per_image(
    model: &dyn Module,
    x: &Tensor,
    y: &Tensor,
    batch_size: usize,
) -> Result<Vec<bool>> {
    let n = check_data(x, y)?;
    let mut out = Vec::with_capacity(n);
    for (s, len) in batches(n, batch_size) {
        let logits = model.forward(&x.narrow(0, s, len)?.detach())?;
        let hit = logits
            .argmax(candle_core::D::Minus1)?
            .eq(&y.narrow(0, s, len)?)?
            .to_dtype(DType::U8)?
            .to_vec1::<u8>()?;
        out.extend(hit.into_iter().map(|h| h != 0));
    }
    Ok(out)
}

/// Adversarial versions of all of `x`, made batch by batch; `make(batch_index, x, y)` runs the attack.
pub fn adversarial_set(
    x: &Tensor,
    y: &Tensor,
    batch_size: usize,
    mut make: impl FnMut(usize, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    let n = check_data(x, y)?;
    let mut parts = Vec::new();
    for (i, (s, len)) in batches(n, batch_size).enumerate() {
        parts.push(make(i, &x.narrow(0, s, len)?, &y.narrow(0, s, len)?)?.detach());
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Checks that `x` is `(N, C, H, W)` and `y` holds `N` labels; returns `N` (> 0).
pub fn check_data(x: &Tensor, y: &Tensor) -> Result<usize> {
    if x.rank() != 4 {
        return Err(EvalError::Invalid(format!(
            "test images must be (N, C, H, W), got {:?}",
            x.dims()
        )));
    }
    let n = x.dim(0)?;
    if y.dims() != [n] || y.dtype() != DType::U32 {
        return Err(EvalError::Invalid(format!(
            "labels must be {n} u32 values, got {:?} {:?}",
            y.dims(),
            y.dtype()
        )));
    }
    if n == 0 {
        return Err(EvalError::Invalid("no test images to evaluate on".into()));
    }
    Ok(n)
}

/// A per-batch seed derived from a run seed through [`sgr_data::seeded_rng`], so neighbouring batches and
/// different uses (`stream`) get unrelated random streams.
pub fn batch_seed(seed: u64, stream: u64, batch: usize) -> u64 {
    use rand::Rng;
    sgr_data::seeded_rng(seed, &[stream, batch as u64]).random()
}
