//! The Square attack (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020), L∞: a score-based random search
//! that needs no gradients, so gradient masking cannot hide a model from it.

use candle_core::{Result, Tensor};
use candle_nn::Module;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::apgd::{Batch, Correct, point_rngs};
use crate::logits::{logits_rows, margin};
use crate::{Attack, check_eps};

/// Square, L∞, with AutoAttack's settings by [`Default`]: 5,000 queries, `p_init = 0.8` and the reference's
/// piecewise schedule of the square's area, margin loss, vertical-stripe initialisation. Each example draws
/// its own squares from `(seed, example)`, so results do not depend on the batch.
#[derive(Clone, Debug)]
pub struct Square {
    pub queries: usize,
    pub p_init: f64,
    pub seed: u64,
}

impl Default for Square {
    fn default() -> Self {
        Self {
            queries: 5000,
            p_init: 0.8,
            seed: 0,
        }
    }
}

/// Iterations per resumable segment of [`Square`] (each segment draws from its own random stream).
pub const SQUARE_SEGMENT: usize = 100;

/// Where one example's search stands: the best input so far and its margin `z_y − max_{i≠y} z_i` (≤ 0:
/// broken).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SquarePoint {
    pub best: Vec<f64>,
    pub margin: f64,
}

impl SquarePoint {
    pub fn broken(&self) -> bool {
        self.margin <= 0.0
    }
}

impl Square {
    /// The fraction of pixels the square covers at iteration `it` (the reference schedule for 10,000
    /// iterations, not rescaled to the budget, as AutoAttack runs it).
    pub fn p_selection(&self, it: usize) -> f64 {
        let div = match it {
            0..=10 => 1.0,
            11..=50 => 2.0,
            51..=200 => 4.0,
            201..=500 => 8.0,
            501..=1000 => 16.0,
            1001..=2000 => 32.0,
            2001..=4000 => 64.0,
            4001..=6000 => 128.0,
            6001..=8000 => 256.0,
            _ => 512.0,
        };
        self.p_init / div
    }

    /// The number of segments of [`SQUARE_SEGMENT`] iterations.
    pub fn segments(&self) -> usize {
        self.queries.div_ceil(SQUARE_SEGMENT)
    }

    /// The starting points: `x + ε·s`, one random sign per channel and column (vertical stripes), clipped.
    pub(crate) fn init(
        &self,
        model: &dyn Module,
        batch: &Batch<'_>,
        ids: &[u64],
        y: &[usize],
        eps: f64,
    ) -> Result<Vec<SquarePoint>> {
        let dims = batch.example_dims();
        let (c, h, w) = (dims[0], dims[1], dims[2]);
        let mut rngs = point_rngs(
            self.seed,
            sgr_data::streams::SQUARE_INIT,
            ids.iter().copied(),
        );
        let best: Vec<Vec<f64>> = batch
            .x
            .iter()
            .zip(&mut rngs)
            .map(|(x, rng)| {
                let signs: Vec<f64> = (0..c * w)
                    .map(|_| if rng.random_bool(0.5) { 1.0 } else { -1.0 })
                    .collect();
                let mut v: Vec<f64> = (0..x.len())
                    .map(|j| {
                        let (ch, col) = (j / (h * w), j % w);
                        (x[j] + eps * signs[ch * w + col]).clamp(0.0, 1.0)
                    })
                    .collect();
                batch.round(&mut v);
                v
            })
            .collect();
        let rows: Vec<&[f64]> = best.iter().map(Vec::as_slice).collect();
        let z = logits_rows(model, &batch.tensor(&rows)?)?;
        Ok(best
            .into_iter()
            .zip(z.iter().zip(y))
            .map(|(b, (zi, &yi))| SquarePoint {
                best: b,
                margin: margin(zi, yi),
            })
            .collect())
    }

    /// Runs segment `seg` (iterations `seg·SQUARE_SEGMENT …`) on the examples not yet broken.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn segment(
        &self,
        model: &dyn Module,
        batch: &Batch<'_>,
        ids: &[u64],
        y: &[usize],
        eps: f64,
        points: &mut [SquarePoint],
        seg: usize,
    ) -> Result<()> {
        let dims = batch.example_dims();
        let (c, h, w) = (dims[0], dims[1], dims[2]);
        let mut rngs = point_rngs(
            self.seed,
            sgr_data::streams::SQUARE_SEGMENT + ((seg as u64) << 16),
            ids.iter().copied(),
        );
        let start = seg * SQUARE_SEGMENT;
        for it in start..(start + SQUARE_SEGMENT).min(self.queries) {
            let active: Vec<usize> = (0..points.len()).filter(|&i| !points[i].broken()).collect();
            if active.is_empty() {
                break;
            }
            let p = self.p_selection(it);
            let s = ((p * (h * w) as f64).sqrt().round() as usize).clamp(1, h.min(w));
            let cands: Vec<Vec<f64>> = active
                .iter()
                .map(|&i| {
                    let rng = &mut rngs[i];
                    let (vh, vw) = (rng.random_range(0..=h - s), rng.random_range(0..=w - s));
                    let mut v = points[i].best.clone();
                    let x = batch.x[i];
                    for ch in 0..c {
                        let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                        for r in vh..vh + s {
                            for col in vw..vw + s {
                                let j = ch * h * w + r * w + col;
                                v[j] = (v[j] + 2.0 * eps * sign)
                                    .clamp(x[j] - eps, x[j] + eps)
                                    .clamp(0.0, 1.0);
                            }
                        }
                    }
                    batch.round(&mut v);
                    v
                })
                .collect();
            let rows: Vec<&[f64]> = cands.iter().map(Vec::as_slice).collect();
            let z = logits_rows(model, &batch.tensor(&rows)?)?;
            for ((&i, cand), zi) in active.iter().zip(cands).zip(&z) {
                let m = margin(zi, y[i]);
                if m < points[i].margin || m <= 0.0 {
                    points[i] = SquarePoint {
                        best: cand,
                        margin: m,
                    };
                }
            }
        }
        Ok(())
    }
}

impl Attack for Square {
    fn name(&self) -> String {
        "Square".into()
    }
    fn run(&self, model: &dyn Module, x: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
        check_eps(eps)?;
        if x.rank() != 4 {
            candle_core::bail!("Square needs (B, C, H, W) images, got {:?}", x.dims());
        }
        let _span = tracing::debug_span!("square", queries = self.queries, eps).entered();
        let c = Correct::of(model, x, y)?;
        let all: Vec<usize> = (0..c.idx.len()).collect();
        let (batch, ids, labels, _) = c.subset(&all, x);
        let mut pts = self.init(model, &batch, &ids, &labels, eps)?;
        for seg in 0..self.segments() {
            self.segment(model, &batch, &ids, &labels, eps, &mut pts, seg)?;
        }
        let found: Vec<Option<Vec<f64>>> = pts
            .into_iter()
            .map(|p| p.broken().then_some(p.best))
            .collect();
        c.assemble(x, &found)
    }
}
