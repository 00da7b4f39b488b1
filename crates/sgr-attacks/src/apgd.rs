//! Auto-PGD (Croce & Hein, ICML 2020): PGD with momentum and a step size halved at checkpoints when progress
//! stalls; APGD-CE, APGD-DLR and the targeted APGD-T of AutoAttack's standard version.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::Module;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::logits::{LogitLoss, loss_and_grad, ranked, rows_to_tensor, tensor_rows};
use crate::{Attack, Norm, check_eps};

/// The iterations (counted from 1) after which APGD checks whether to halve the step size: the first after
/// `⌊0.22·N⌋`, each later interval `⌊0.03·N⌋` shorter, down to `⌊0.06·N⌋` (each at least 1). For N = 100:
/// 22, 41, 57, 70, 80, 87, 93, 99.
pub fn apgd_checkpoints(steps: usize) -> Vec<usize> {
    let first = ((0.22 * steps as f64) as usize).max(1);
    let min = ((0.06 * steps as f64) as usize).max(1);
    let decr = ((0.03 * steps as f64) as usize).max(1);
    let (mut out, mut at, mut k) = (Vec::new(), 0, first);
    while at + k <= steps {
        at += k;
        out.push(at);
        k = k.saturating_sub(decr).max(min);
    }
    out
}

/// Examples in the shape and precision the model takes: the clean rows (flattened, f64, in `[0, 1]`) and
/// what turns rows back into a batch.
#[derive(Clone, Debug)]
pub(crate) struct Batch<'a> {
    pub(crate) x: Vec<&'a [f64]>,
    shape: Vec<usize>,
    dtype: DType,
    device: Device,
}

impl<'a> Batch<'a> {
    /// Rows `x` of examples shaped like those of `like` (`(B, C, H, W)`), in its dtype and on its device.
    pub(crate) fn new(x: Vec<&'a [f64]>, like: &Tensor) -> Self {
        Self {
            x,
            shape: like.dims().to_vec(),
            dtype: like.dtype(),
            device: like.device().clone(),
        }
    }

    /// The shape of one example, `(C, H, W)` for images.
    pub(crate) fn example_dims(&self) -> &[usize] {
        &self.shape[1..]
    }

    pub(crate) fn tensor(&self, rows: &[&[f64]]) -> Result<Tensor> {
        rows_to_tensor(rows, &self.shape, self.dtype, &self.device)
    }

    /// Rounds a host row to what the model will see (f32 models see f32 values), so that distances and
    /// predictions refer to the same input.
    pub(crate) fn round(&self, v: &mut [f64]) {
        if self.dtype != DType::F64 {
            for e in v {
                *e = f64::from(*e as f32);
            }
        }
    }
}

/// `x + eps·t/‖t‖` (the norm's dual scaling of a random direction), clipped to `[0, 1]`.
pub(crate) fn random_start(x: &[f64], eps: f64, norm: Norm, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let t: Vec<f64> = match norm {
        Norm::LInf => (0..x.len()).map(|_| rng.random_range(-1.0..1.0)).collect(),
        Norm::L2 => (0..x.len()).map(|_| StandardNormal.sample(rng)).collect(),
    };
    let n = vector_norm(&t, norm);
    x.iter()
        .zip(&t)
        .map(|(a, b)| (a + eps * b / (n + 1e-12)).clamp(0.0, 1.0))
        .collect()
}

pub(crate) fn vector_norm(v: &[f64], norm: Norm) -> f64 {
    match norm {
        Norm::LInf => v.iter().fold(0.0, |m, a| m.max(a.abs())),
        Norm::L2 => v.iter().map(|a| a * a).sum::<f64>().sqrt(),
    }
}

/// The point of the ε-ball around `x` (then of `[0, 1]`) reached from `v`, as AutoAttack projects.
fn project(x: &[f64], v: &mut [f64], eps: f64, norm: Norm) {
    match norm {
        Norm::LInf => {
            for (vi, xi) in v.iter_mut().zip(x) {
                *vi = vi.clamp(xi - eps, xi + eps).clamp(0.0, 1.0);
            }
        }
        Norm::L2 => {
            let n = v
                .iter()
                .zip(x)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                .sqrt();
            let f = eps.min(n) / (n + 1e-12);
            for (vi, xi) in v.iter_mut().zip(x) {
                *vi = (xi + (*vi - xi) * f).clamp(0.0, 1.0);
            }
        }
    }
}

/// One APGD run on a batch: for each example the adversarial input it found (misclassified), or `None`.
/// `rngs` give each example its own random start, so results do not depend on the batch composition.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apgd_batch(
    model: &dyn Module,
    batch: &Batch<'_>,
    y: &[usize],
    targets: Option<&[usize]>,
    loss: LogitLoss,
    eps: f64,
    norm: Norm,
    steps: usize,
    rho: f64,
    rngs: &mut [ChaCha8Rng],
) -> Result<Vec<Option<Vec<f64>>>> {
    let b = batch.x.len();
    let mut found: Vec<Option<Vec<f64>>> = vec![None; b];
    if b == 0 {
        return Ok(found);
    }
    let mut x_adv: Vec<Vec<f64>> = (0..b)
        .map(|i| {
            let mut v = random_start(batch.x[i], eps, norm, &mut rngs[i]);
            batch.round(&mut v);
            v
        })
        .collect();
    let eval = |idx: &[usize], pts: &[Vec<f64>]| -> Result<crate::logits::LossGrad> {
        let rows: Vec<&[f64]> = idx.iter().map(|&i| pts[i].as_slice()).collect();
        let ys: Vec<usize> = idx.iter().map(|&i| y[i]).collect();
        let ts: Option<Vec<usize>> = targets.map(|t| idx.iter().map(|&i| t[i]).collect());
        loss_and_grad(model, &batch.tensor(&rows)?, &ys, ts.as_deref(), loss)
    };
    let mut active: Vec<usize> = (0..b).collect();
    let first = eval(&active, &x_adv)?;
    for (a, &i) in active.iter().enumerate() {
        if !first.correct(a, y[i]) {
            found[i] = Some(x_adv[i].clone());
        }
    }
    let mut grad = first.grad;
    let mut loss_prev = first.loss.clone();
    let mut loss_best = first.loss;
    let mut x_best = x_adv.clone();
    let mut grad_best = grad.clone();
    let mut step = vec![2.0 * eps; b];
    let mut x_old = x_adv.clone();
    // Per example: how often the loss rose since the last checkpoint, and the checkpoint bookkeeping.
    let mut rises = vec![0usize; b];
    let mut best_at_check = loss_best.clone();
    let mut reduced_at_check = vec![true; b];
    active.retain(|&i| found[i].is_none());
    let checks = apgd_checkpoints(steps);
    let mut since = 0usize;
    for it in 0..steps {
        if active.is_empty() {
            break;
        }
        let momentum = if it > 0 { 0.75 } else { 1.0 };
        for &i in &active {
            let x = batch.x[i];
            let g = &grad[i];
            let dir: Vec<f64> = match norm {
                Norm::LInf => g
                    .iter()
                    .map(|v| v.signum() * f64::from(u8::from(*v != 0.0)))
                    .collect(),
                Norm::L2 => {
                    let n = vector_norm(g, Norm::L2) + 1e-12;
                    g.iter().map(|v| v / n).collect()
                }
            };
            let cur = &x_adv[i];
            let mut z: Vec<f64> = cur.iter().zip(&dir).map(|(c, d)| c + step[i] * d).collect();
            project(x, &mut z, eps, norm);
            let mut next: Vec<f64> = (0..cur.len())
                .map(|j| {
                    cur[j] + momentum * (z[j] - cur[j]) + (1.0 - momentum) * (cur[j] - x_old[i][j])
                })
                .collect();
            project(x, &mut next, eps, norm);
            batch.round(&mut next);
            x_old[i] = std::mem::replace(&mut x_adv[i], next);
        }
        let r = eval(&active, &x_adv)?;
        since += 1;
        for (a, &i) in active.iter().enumerate() {
            grad[i] = r.grad[a].clone();
            if !r.correct(a, y[i]) && found[i].is_none() {
                found[i] = Some(x_adv[i].clone());
            }
            let l = r.loss[a];
            if l > loss_prev[i] {
                rises[i] += 1;
            }
            loss_prev[i] = l;
            if l > loss_best[i] {
                loss_best[i] = l;
                x_best[i] = x_adv[i].clone();
                grad_best[i] = grad[i].clone();
            }
        }
        if checks.contains(&(it + 1)) {
            for &i in &active {
                let oscillating = rises[i] as f64 <= since as f64 * rho;
                let stalled = !reduced_at_check[i] && best_at_check[i] >= loss_best[i];
                let halve = oscillating || stalled;
                reduced_at_check[i] = halve;
                best_at_check[i] = loss_best[i];
                rises[i] = 0;
                if halve {
                    step[i] /= 2.0;
                    x_adv[i] = x_best[i].clone();
                    grad[i] = grad_best[i].clone();
                }
            }
            since = 0;
        }
        active.retain(|&i| found[i].is_none());
    }
    Ok(found)
}

/// APGD with the cross-entropy (APGD-CE) or DLR loss, untargeted; AutoAttack's settings by [`Default`]
/// (L∞, 100 iterations, ρ = 0.75). Examples the model already misclassifies are returned unchanged, as are
/// those the attack does not break.
#[derive(Clone, Debug)]
pub struct Apgd {
    pub norm: Norm,
    pub steps: usize,
    pub loss: LogitLoss,
    pub rho: f64,
    pub seed: u64,
}

impl Default for Apgd {
    fn default() -> Self {
        Self {
            norm: Norm::LInf,
            steps: 100,
            loss: LogitLoss::Ce,
            rho: 0.75,
            seed: 0,
        }
    }
}

impl Apgd {
    /// One run on the examples `ids` (their rows in `batch`, labels `y`): the adversarial input per example, or
    /// `None`. Each example's random start comes from `(seed, id)`, whatever else shares the batch.
    pub(crate) fn run_batch(
        &self,
        model: &dyn Module,
        batch: &Batch<'_>,
        ids: &[u64],
        y: &[usize],
        eps: f64,
    ) -> Result<Vec<Option<Vec<f64>>>> {
        let mut rngs = point_rngs(self.seed, sgr_data::streams::APGD, ids.iter().copied());
        apgd_batch(
            model, batch, y, None, self.loss, eps, self.norm, self.steps, self.rho, &mut rngs,
        )
    }
}

/// One random stream per example of a batch: `(seed, stream, index)`.
pub(crate) fn point_rngs(
    seed: u64,
    stream: u64,
    ids: impl Iterator<Item = u64>,
) -> Vec<ChaCha8Rng> {
    ids.map(|i| sgr_data::seeded_rng(seed, &[stream, i]))
        .collect()
}

/// The labels as `usize`, and the batch as host rows.
pub(crate) fn host(x: &Tensor, y: &Tensor) -> Result<(Vec<Vec<f64>>, Vec<usize>)> {
    let ys = y
        .to_device(&Device::Cpu)?
        .to_dtype(DType::U32)?
        .to_vec1::<u32>()?;
    Ok((
        tensor_rows(x)?,
        ys.into_iter().map(|v| v as usize).collect(),
    ))
}

/// Puts the found adversarial rows into the batch (others stay clean) as a tensor like `x`.
pub(crate) fn assemble(
    x: &Tensor,
    rows: &[Vec<f64>],
    found: &[Option<Vec<f64>>],
) -> Result<Tensor> {
    let out: Vec<&[f64]> = rows
        .iter()
        .zip(found)
        .map(|(r, f)| f.as_deref().unwrap_or(r))
        .collect();
    rows_to_tensor(&out, x.dims(), x.dtype(), x.device())
}

/// The examples of a batch that the model classifies correctly: what every attack starts from.
pub(crate) struct Correct {
    /// All examples as host rows, and their labels.
    pub(crate) rows: Vec<Vec<f64>>,
    pub(crate) labels: Vec<usize>,
    /// Positions of the correctly classified ones, and their clean logits.
    pub(crate) idx: Vec<usize>,
    pub(crate) logits: Vec<Vec<f64>>,
    pub(crate) classes: usize,
}

impl Correct {
    pub(crate) fn of(model: &dyn Module, x: &Tensor, y: &Tensor) -> Result<Self> {
        let (rows, labels) = host(x, y)?;
        let z = crate::logits::logits_rows(model, x)?;
        let classes = z.first().map_or(0, Vec::len);
        let idx: Vec<usize> = (0..rows.len())
            .filter(|&i| ranked(&z[i])[0] == labels[i])
            .collect();
        let logits = idx.iter().map(|&i| z[i].clone()).collect();
        Ok(Self {
            rows,
            labels,
            idx,
            logits,
            classes,
        })
    }

    /// The subset `sub` (positions into `idx`) as a batch, its ids (batch positions), labels and clean logits.
    pub(crate) fn subset(
        &self,
        sub: &[usize],
        like: &Tensor,
    ) -> (Batch<'_>, Vec<u64>, Vec<usize>, Vec<Vec<f64>>) {
        let pos: Vec<usize> = sub.iter().map(|&k| self.idx[k]).collect();
        (
            Batch::new(pos.iter().map(|&i| self.rows[i].as_slice()).collect(), like),
            pos.iter().map(|&i| i as u64).collect(),
            pos.iter().map(|&i| self.labels[i]).collect(),
            sub.iter().map(|&k| self.logits[k].clone()).collect(),
        )
    }

    /// The batch with the rows found (per entry of `idx`) put in, others clean, as a tensor like `x`.
    pub(crate) fn assemble(&self, x: &Tensor, found: &[Option<Vec<f64>>]) -> Result<Tensor> {
        let mut all = vec![None; self.rows.len()];
        for (k, &i) in self.idx.iter().enumerate() {
            all[i].clone_from(&found[k]);
        }
        assemble(x, &self.rows, &all)
    }
}

/// A targeted attack as an ε-bounded [`Attack`]: `one(rank, batch, ids, labels, clean logits)` runs the target
/// of that rank on the examples still robust (returning what it broke), for `runs` ranks.
pub(crate) fn targeted_runs(
    model: &dyn Module,
    x: &Tensor,
    y: &Tensor,
    runs: impl Fn(usize) -> usize,
    mut one: impl FnMut(
        usize,
        &Batch<'_>,
        &[u64],
        &[usize],
        &[Vec<f64>],
    ) -> Result<Vec<Option<Vec<f64>>>>,
) -> Result<Tensor> {
    let c = Correct::of(model, x, y)?;
    let mut found: Vec<Option<Vec<f64>>> = vec![None; c.idx.len()];
    for rank in 0..runs(c.classes) {
        let live: Vec<usize> = (0..c.idx.len()).filter(|&k| found[k].is_none()).collect();
        let (batch, ids, labels, logits) = c.subset(&live, x);
        let res = one(rank, &batch, &ids, &labels, &logits)?;
        for (a, &k) in live.iter().enumerate() {
            found[k].clone_from(&res[a]);
        }
    }
    c.assemble(x, &found)
}

impl Attack for Apgd {
    fn name(&self) -> String {
        let l = if self.loss == LogitLoss::Dlr {
            "DLR"
        } else {
            "CE"
        };
        format!("APGD-{l}")
    }
    fn run(&self, model: &dyn Module, x: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
        check_eps(eps)?;
        if !matches!(self.loss, LogitLoss::Ce | LogitLoss::Dlr) {
            candle_core::bail!(
                "untargeted APGD takes the CE or DLR loss, not {:?}",
                self.loss
            );
        }
        let _span = tracing::debug_span!("apgd", steps = self.steps, eps).entered();
        let c = Correct::of(model, x, y)?;
        let all: Vec<usize> = (0..c.idx.len()).collect();
        let (batch, ids, labels, _) = c.subset(&all, x);
        let found = self.run_batch(model, &batch, &ids, &labels, eps)?;
        c.assemble(x, &found)
    }
}

/// APGD-T: APGD on the targeted DLR loss, once per target class, the targets being the 2nd, 3rd, … most
/// likely classes of the clean input (`targets` of them, at most K − 1); each run attacks only the examples
/// no earlier run broke. AutoAttack's standard version: 9 targets, 100 iterations each.
#[derive(Clone, Debug)]
pub struct ApgdTargeted {
    pub norm: Norm,
    pub steps: usize,
    pub targets: usize,
    pub rho: f64,
    pub seed: u64,
}

impl Default for ApgdTargeted {
    fn default() -> Self {
        Self {
            norm: Norm::LInf,
            steps: 100,
            targets: 9,
            rho: 0.75,
            seed: 0,
        }
    }
}

/// Target runs of a targeted attack with `targets` targets on a `classes`-class model (every other class at most).
pub fn target_runs(targets: usize, classes: usize) -> usize {
    targets.min(classes.saturating_sub(1))
}

/// The target of rank `rank` (0 = the second most likely class) for each clean logit row.
pub(crate) fn target_of_rank(clean_logits: &[Vec<f64>], rank: usize) -> Vec<usize> {
    clean_logits.iter().map(|z| ranked(z)[rank + 1]).collect()
}

impl ApgdTargeted {
    /// The number of target runs for a `k`-class model.
    pub fn runs(&self, k: usize) -> usize {
        target_runs(self.targets, k)
    }

    /// One target's run on the examples `ids` (their clean rows `x`, labels, clean logits): the adversarial
    /// input per example, or `None`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_target(
        &self,
        model: &dyn Module,
        batch: &Batch<'_>,
        ids: &[u64],
        y: &[usize],
        clean_logits: &[Vec<f64>],
        rank: usize,
        eps: f64,
    ) -> Result<Vec<Option<Vec<f64>>>> {
        let t = target_of_rank(clean_logits, rank);
        let mut rngs = point_rngs(
            self.seed,
            sgr_data::streams::APGD_TARGETED + ((rank as u64) << 16),
            ids.iter().copied(),
        );
        apgd_batch(
            model,
            batch,
            y,
            Some(&t),
            LogitLoss::DlrTargeted,
            eps,
            self.norm,
            self.steps,
            self.rho,
            &mut rngs,
        )
    }
}

impl Attack for ApgdTargeted {
    fn name(&self) -> String {
        "APGD-T".into()
    }
    fn run(&self, model: &dyn Module, x: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
        check_eps(eps)?;
        let _span = tracing::debug_span!("apgd_t", steps = self.steps, eps).entered();
        targeted_runs(
            model,
            x,
            y,
            |k| self.runs(k),
            |rank, batch, ids, labels, logits| {
                self.run_target(model, batch, ids, labels, logits, rank, eps)
            },
        )
    }
}
