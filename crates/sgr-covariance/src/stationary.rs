//! General stationary covariances `Σ[(c,p),(c',q)] = K_{cc'}(q − p)` given on displacement vectors.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::error::{CovError, Result};
use crate::estimate::{Planes, displacement_sums};
use crate::kernel::{ChannelStructure, KernelSet};
use crate::repr::{Covariance, shape_tensor};

/// A stationary covariance given by kernel tables on displacement vectors `(dy, dx)`, `|dy| ≤ ry`, `|dx| ≤ rx`.
///
/// Unlike [`crate::CovFun`] it is not binned by rounded distance, which is what makes two useful cases
/// positive semi-definite: the synthetic long-range-correlated covariance with exact distances
/// ([`Stationary::lrc`]) and the biased autocovariance estimate over the full image
/// ([`Stationary::estimate_biased`]).
#[derive(Clone, Debug)]
pub struct Stationary {
    kernels: Arc<KernelSet>,
}

impl Stationary {
    /// From `f(c, c', dy, dx)`; `f` must satisfy `f(c, c', δ) = f(c', c, −δ)`.
    pub fn from_fn(
        shape: (usize, usize, usize),
        radius: (usize, usize),
        structure: ChannelStructure,
        f: impl Fn(usize, usize, i64, i64) -> f64,
    ) -> Result<Self> {
        let c = shape.0;
        let kernels = KernelSet::tabulate(shape, radius, structure, |a, b, dy, dx| {
            if c == 1 && a != b {
                0.0
            } else {
                f(a, b, dy, dx)
            }
        })?;
        Ok(Self {
            kernels: Arc::new(kernels),
        })
    }

    /// The synthetic long-range-correlated covariance of sec. 4.3 with exact Euclidean distances:
    /// intra-channel `exp(−r/ζ)`, inter-channel `0.5·exp(−r/ζ)`, over the whole image. Positive definite
    /// (the exponential kernel is positive definite in any dimension and the channel matrix has eigenvalues
    /// `1 + (C−1)/2` and `1/2`).
    pub fn lrc(shape: (usize, usize, usize), zeta: f64) -> Result<Self> {
        if !(zeta > 0.0 && zeta.is_finite()) {
            return Err(CovError::Invalid(format!(
                "the decay length ζ must be positive, got {zeta}"
            )));
        }
        let (_, h, w) = shape;
        Self::from_fn(
            shape,
            (h - 1, w - 1),
            ChannelStructure::IntraInter,
            move |a, b, dy, dx| {
                let r = ((dy * dy + dx * dx) as f64).sqrt();
                let e = (-r / zeta).exp();
                if a == b { e } else { 0.5 * e }
            },
        )
    }

    /// The biased autocovariance estimate `K(δ) = Σ_batch Σ_p ξ_c(p) ξ_{c'}(p + δ) / (B·H·W)` (averaged over
    /// channel pairs for intra/inter structure) on displacements up to `(ry, rx)`. Over the full image
    /// (`ry ≥ H − 1`, `rx ≥ W − 1`) it is positive semi-definite by construction; truncated, it need not be.
    pub fn estimate_biased(
        xi: &Tensor,
        (ry, rx): (usize, usize),
        structure: ChannelStructure,
    ) -> Result<Self> {
        if xi.rank() != 4 {
            return Err(CovError::Shape {
                what: "the perturbations ξ",
                got: xi.dims().to_vec(),
                expected: "(B, C, H, W)".into(),
            });
        }
        let p = Planes::from_tensor(xi)?;
        let (ry, rx) = (ry.min(p.h - 1), rx.min(p.w - 1));
        let (sums, pairs) = displacement_sums(&p, ry, rx, structure);
        let norm = (p.h * p.w) as f64;
        let mut tables = Vec::new();
        for (k, t) in sums.iter().enumerate() {
            let denom = pairs[k] * norm;
            tables.extend(t.iter().map(|v| if denom > 0.0 { v / denom } else { 0.0 }));
        }
        Ok(Self {
            kernels: Arc::new(KernelSet::new(
                (p.c, p.h, p.w),
                (ry, rx),
                structure,
                tables,
            )?),
        })
    }

    pub fn kernels(&self) -> &Arc<KernelSet> {
        &self.kernels
    }

    pub(crate) fn from_kernels(kernels: KernelSet) -> Self {
        Self {
            kernels: Arc::new(kernels),
        }
    }
}

impl Covariance for Stationary {
    fn kind(&self) -> &'static str {
        "stationary"
    }
    fn shape(&self) -> (usize, usize, usize) {
        self.kernels.shape()
    }
    fn matvec(&self, v: &Tensor) -> Result<Tensor> {
        self.kernels.matvec(v)
    }
    fn mean_diag(&self) -> f64 {
        self.kernels.mean_diag()
    }
    fn to_dense(&self) -> Result<Tensor> {
        self.kernels.to_dense()
    }
    fn to_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let k = &self.kernels;
        let (ry, rx) = k.half_extent();
        Ok([
            ("shape".to_string(), shape_tensor(k.shape())?),
            (
                "structure".to_string(),
                crate::io::kind_tensor(k.structure().as_str())?,
            ),
            (
                "tables".to_string(),
                Tensor::from_vec(
                    k.tables.clone(),
                    (k.n_tables(), 2 * ry + 1, 2 * rx + 1),
                    &Device::Cpu,
                )?,
            ),
        ]
        .into())
    }
    fn bytes(&self) -> usize {
        8 * self.kernels.tables.len()
    }
}
