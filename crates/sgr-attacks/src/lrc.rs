//! Worst-of-N correlated noise: the long-range-correlated (LRC) attack of sec. 4.3.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::Module;
use sgr_covariance::{CirculantSampler, Covariance, DenseSampler};

use crate::{Attack, check_eps};

/// Where the noise comes from.
#[derive(Clone, Debug)]
pub enum NoiseSource {
    /// The synthetic LRC covariance (intra `exp(−r/ζ)`, inter `0.5·exp(−r/ζ)`, exact distances; unit variance).
    Lrc(CirculantSampler),
    /// Any covariance small enough for a Cholesky factor, e.g. the data set's, scaled to unit mean variance.
    Dense(DenseSampler),
}

impl NoiseSource {
    pub fn lrc(shape: (usize, usize, usize), zeta: f64) -> Result<Self> {
        Ok(Self::Lrc(
            CirculantSampler::lrc(shape, zeta).map_err(candle_core::Error::from)?,
        ))
    }

    /// Noise with covariance `cov` scaled to unit mean diagonal (so `ε` means the same per-pixel scale as for LRC).
    pub fn dense(cov: &dyn Covariance) -> Result<Self> {
        let md = cov.mean_diag();
        if md <= 0.0 || md.is_nan() {
            candle_core::bail!("the noise covariance has mean variance {md}");
        }
        let dense = sgr_covariance::Dense::new(
            cov.shape(),
            &cov.to_dense().map_err(candle_core::Error::from)?,
        )
        .map_err(candle_core::Error::from)?;
        let scaled = sgr_covariance::Scaled::new(std::sync::Arc::new(dense), 1.0 / md)
            .map_err(candle_core::Error::from)?;
        Ok(Self::Dense(
            DenseSampler::new(&scaled).map_err(candle_core::Error::from)?,
        ))
    }

    fn sample(&self, n: usize, seed: u64) -> Result<Tensor> {
        match self {
            NoiseSource::Lrc(s) => s.sample(n, seed),
            NoiseSource::Dense(s) => s.sample(n, seed),
        }
        .map_err(candle_core::Error::from)
    }
}

/// Perturb every example `n` times with `ε·ξ`, `ξ` from `source`, clip to `[0, 1]`, and count the example as
/// broken if any of the `n` draws changes the prediction away from its label ("worst of 100").
#[derive(Clone, Debug)]
pub struct WorstOfN {
    pub source: NoiseSource,
    pub n: usize,
    pub seed: u64,
}

/// The outcome: per example, whether some draw broke it, and the adversarial input (the first breaking
/// draw, else the last draw).
#[derive(Debug)]
pub struct WorstOfNResult {
    pub adversarial: Tensor,
    pub broken: Vec<bool>,
}

impl WorstOfN {
    /// The noise of draw `draw` for a batch of `b` examples: `(b, C, H, W)`, reproducible from `(seed, draw)`.
    pub fn draw_noise(source: &NoiseSource, seed: u64, draw: usize, b: usize) -> Result<Tensor> {
        source.sample(b, seed.wrapping_mul(1_000_003).wrapping_add(draw as u64))
    }

    pub fn attack(
        &self,
        model: &dyn Module,
        x: &Tensor,
        y: &Tensor,
        eps: f64,
    ) -> Result<WorstOfNResult> {
        check_eps(eps)?;
        let _span = tracing::debug_span!("worst_of_n", n = self.n, eps).entered();
        let b = x.dim(0)?;
        let labels = y.to_vec1::<u32>()?;
        let mut broken = vec![false; b];
        let mut adversarial = x.detach();
        for draw in 0..self.n.max(1) {
            // Independent noise per example and draw, reproducible from (seed, draw).
            let noise = Self::draw_noise(&self.source, self.seed, draw, b)?;
            let noise = noise
                .to_dtype(x.dtype())?
                .to_device(x.device())?
                .reshape(x.dims())?;
            let xp = (x + (noise * eps)?)?.clamp(0.0, 1.0)?;
            let pred = model.forward(&xp)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let newly: Vec<u32> = (0..b)
                .map(|i| {
                    u32::from(!broken[i] && (pred[i] != labels[i] || draw + 1 == self.n.max(1)))
                })
                .collect();
            if newly.contains(&1) {
                let mask =
                    Tensor::from_vec(newly.clone(), b, &Device::Cpu)?.to_device(x.device())?;
                let mut shape = vec![b];
                shape.extend(std::iter::repeat_n(1, x.rank() - 1));
                let mask = mask
                    .reshape(shape)?
                    .broadcast_as(x.dims())?
                    .to_dtype(DType::U8)?;
                adversarial = mask.where_cond(&xp, &adversarial)?;
            }
            for i in 0..b {
                if pred[i] != labels[i] {
                    broken[i] = true;
                }
            }
        }
        Ok(WorstOfNResult {
            adversarial,
            broken,
        })
    }
}

impl Attack for WorstOfN {
    fn name(&self) -> String {
        format!("worst-of-{}", self.n)
    }
    fn run(&self, model: &dyn Module, x: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
        Ok(self.attack(model, x, y, eps)?.adversarial)
    }
}
