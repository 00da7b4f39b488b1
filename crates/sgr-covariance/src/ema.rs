//! The running average of Algorithm 1: `Σ̂_t = (1 − β) Σ̂_{t−1} + β Cov(ξ)`, and the optional mean of eq. 12.

use candle_core::{DType, Device, Tensor};

use crate::covfun::CovFun;
use crate::error::{CovError, Result};
use crate::repr::{Dense, batch_shape, check_finite};

/// Representations that can be averaged.
pub trait LinComb: Sized {
    /// `a·self + b·other`.
    fn lin_comb(&self, a: f64, other: &Self, b: f64) -> Result<Self>;
}

impl LinComb for Dense {
    fn lin_comb(&self, a: f64, other: &Self, b: f64) -> Result<Self> {
        Dense::lin_comb(self, a, other, b)
    }
}

impl LinComb for CovFun {
    fn lin_comb(&self, a: f64, other: &Self, b: f64) -> Result<Self> {
        CovFun::lin_comb(self, a, other, b)
    }
}

/// An exponential moving average starting from zero: the first update gives `β·Cov₁`, as the recursion
/// with `Σ̂₀ = 0` does. (The scaling of Algorithm 1 makes the overall scale irrelevant.)
#[derive(Clone, Debug)]
pub struct Ema<T> {
    beta: f64,
    state: Option<T>,
    updates: u64,
}

impl<T: LinComb + Clone> Ema<T> {
    /// `beta` in (0, 1]; the paper uses 0.1.
    pub fn new(beta: f64) -> Result<Self> {
        if !(beta > 0.0 && beta <= 1.0) {
            return Err(CovError::Invalid(format!(
                "the EMA rate β must be in (0, 1], got {beta}"
            )));
        }
        Ok(Self {
            beta,
            state: None,
            updates: 0,
        })
    }

    /// Restores a saved state.
    pub fn with_state(beta: f64, state: T, updates: u64) -> Result<Self> {
        let mut e = Self::new(beta)?;
        e.state = Some(state);
        e.updates = updates;
        Ok(e)
    }

    pub fn update(&mut self, batch: T) -> Result<&T> {
        let next = match &self.state {
            None => batch.lin_comb(self.beta, &batch, 0.0)?,
            Some(s) => s.lin_comb(1.0 - self.beta, &batch, self.beta)?,
        };
        self.updates += 1;
        Ok(self.state.insert(next))
    }

    pub fn get(&self) -> Option<&T> {
        self.state.as_ref()
    }

    pub fn beta(&self) -> f64 {
        self.beta
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }
}

/// Running mean `μ` of the perturbations (for the uncentred regulariser of eq. 12).
#[derive(Clone, Debug)]
pub struct MeanEma {
    beta: f64,
    mean: Option<Tensor>,
}

impl MeanEma {
    pub fn new(beta: f64) -> Result<Self> {
        if !(beta > 0.0 && beta <= 1.0) {
            return Err(CovError::Invalid(format!(
                "the EMA rate β must be in (0, 1], got {beta}"
            )));
        }
        Ok(Self { beta, mean: None })
    }

    /// Restores a saved mean (per-item shape, any dtype; kept as f64 on the CPU).
    pub fn with_state(beta: f64, mean: &Tensor) -> Result<Self> {
        let mut e = Self::new(beta)?;
        e.mean = Some(mean.to_dtype(DType::F64)?.to_device(&Device::Cpu)?);
        Ok(e)
    }

    /// Updates with the batch mean of `ξ` (`(B, C, H, W)` or `(B, d)`); the mean keeps the per-item shape.
    pub fn update(&mut self, xi: &Tensor) -> Result<&Tensor> {
        batch_shape(xi)?;
        let x = xi.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
        check_finite(&x, "the perturbations ξ")?;
        let m = x.mean(0)?;
        let next = match &self.mean {
            None => (m * self.beta)?,
            Some(prev) => ((prev * (1.0 - self.beta))? + (m * self.beta)?)?,
        };
        Ok(self.mean.insert(next))
    }

    pub fn get(&self) -> Option<&Tensor> {
        self.mean.as_ref()
    }
}
