//! The paper's covariance function of rounded pixel displacement (eq. 16) and its estimation (Algorithm 1).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::error::{CovError, Result};
use crate::estimate::{Planes, displacement_sums, pair_count};
use crate::kernel::{ChannelStructure, KernelSet};
use crate::repr::{Covariance, shape_tensor};

/// `Σ[(c,p),(c',q)] = f_{c,c'}(round(‖p − q‖₂))` for `round(‖p − q‖₂) ≤ R`, zero beyond.
///
/// Curves are stored per kernel: intra/inter structure holds `[f_intra, f_inter]`, full structure the `C × C`
/// table `f_{c,c'}` (symmetric in `c, c'`), each with `R + 1` values `f(0) … f(R)`.
///
/// Rounded-distance covariance functions are in general **not** positive semi-definite (even when the
/// underlying function is, e.g. `exp(−r/ζ)`); see [`crate::Stationary`] for PSD alternatives.
#[derive(Clone, Debug)]
pub struct CovFun {
    shape: (usize, usize, usize),
    radius: usize,
    structure: ChannelStructure,
    curves: Vec<f64>,
    kernels: Arc<KernelSet>,
}

fn check_radius(radius: i64) -> Result<usize> {
    if radius < 0 {
        Err(CovError::Radius(radius))
    } else {
        Ok(radius as usize)
    }
}

impl CovFun {
    /// The largest rounded distance between two pixels of an `h × w` image: a radius that covers everything.
    pub fn full_radius(h: usize, w: usize) -> usize {
        (((h - 1).pow(2) + (w - 1).pow(2)) as f64).sqrt().round() as usize
    }

    fn n_curves(c: usize, structure: ChannelStructure) -> usize {
        match structure {
            ChannelStructure::IntraInter => 2,
            ChannelStructure::Full => c * c,
        }
    }

    /// Builds a covariance function from its curves (`n_curves × (R + 1)` values, see the type's docs).
    pub fn new(
        shape: (usize, usize, usize),
        radius: i64,
        structure: ChannelStructure,
        curves: Vec<f64>,
    ) -> Result<Self> {
        let radius = check_radius(radius)?;
        let (c, h, w) = shape;
        let n = Self::n_curves(c, structure);
        if curves.len() != n * (radius + 1) {
            return Err(CovError::Shape {
                what: "covariance-function curves",
                got: vec![curves.len()],
                expected: format!("{n} curves of {} values", radius + 1),
            });
        }
        if curves.iter().any(|v| !v.is_finite()) {
            return Err(CovError::NonFinite {
                what: "covariance-function curves",
            });
        }
        let (ry, rx) = (
            radius.min(h.saturating_sub(1)),
            radius.min(w.saturating_sub(1)),
        );
        let table_len = (2 * ry + 1) * (2 * rx + 1);
        let mut tables = vec![0f64; n * table_len];
        for k in 0..n {
            for dy in -(ry as i64)..=ry as i64 {
                for dx in -(rx as i64)..=rx as i64 {
                    let r = ((dy * dy + dx * dx) as f64).sqrt().round() as usize;
                    if r <= radius {
                        tables[k * table_len
                            + (dy + ry as i64) as usize * (2 * rx + 1)
                            + (dx + rx as i64) as usize] = curves[k * (radius + 1) + r];
                    }
                }
            }
        }
        let kernels = Arc::new(KernelSet::new(shape, (ry, rx), structure, tables)?);
        Ok(Self {
            shape,
            radius,
            structure,
            curves,
            kernels,
        })
    }

    /// Builds a covariance function from `f(c, c', r)`.
    pub fn from_fn(
        shape: (usize, usize, usize),
        radius: i64,
        structure: ChannelStructure,
        f: impl Fn(usize, usize, usize) -> f64,
    ) -> Result<Self> {
        let r = check_radius(radius)?;
        let c = shape.0;
        let curves: Vec<f64> = match structure {
            ChannelStructure::IntraInter => (0..=r)
                .map(|r| f(0, 0, r))
                .chain((0..=r).map(|r| if c > 1 { f(0, 1, r) } else { 0.0 }))
                .collect(),
            ChannelStructure::Full => (0..c * c)
                .flat_map(|k| (0..=r).map(move |r| (k, r)))
                .map(|(k, r)| f(k / c, k % c, r))
                .collect(),
        };
        Self::new(shape, radius, structure, curves)
    }

    /// Estimates the covariance function of a batch of perturbations `ξ` of shape `(B, C, H, W)`:
    /// the average of `ξ_c(p) ξ_{c'}(p + δ)` over the batch and all valid positions, binned by `round(‖δ‖)`
    /// and divided by the number of pairs in each bin (Algorithm 1; raw second moments, not centred).
    pub fn estimate(xi: &Tensor, radius: i64, structure: ChannelStructure) -> Result<Self> {
        let radius_u = check_radius(radius)?;
        if xi.rank() != 4 {
            return Err(CovError::Shape {
                what: "the perturbations ξ",
                got: xi.dims().to_vec(),
                expected: "(B, C, H, W)".into(),
            });
        }
        let planes = Planes::from_tensor(xi)?;
        let (c, h, w) = (planes.c, planes.h, planes.w);
        let (ry, rx) = (radius_u.min(h - 1), radius_u.min(w - 1));
        let (sums, pairs) = displacement_sums(&planes, ry, rx, structure);
        let kw = 2 * rx + 1;
        let n = Self::n_curves(c, structure);
        let mut num = vec![0f64; n * (radius_u + 1)];
        let mut den = vec![0f64; n * (radius_u + 1)];
        for k in 0..n {
            for dy in -(ry as i64)..=ry as i64 {
                for dx in -(rx as i64)..=rx as i64 {
                    let r = ((dy * dy + dx * dx) as f64).sqrt().round() as usize;
                    if r > radius_u {
                        continue;
                    }
                    num[k * (radius_u + 1) + r] +=
                        sums[k][(dy + ry as i64) as usize * kw + (dx + rx as i64) as usize];
                    den[k * (radius_u + 1) + r] += pairs[k] * pair_count(h, w, dy, dx);
                }
            }
        }
        let mut curves: Vec<f64> = num
            .iter()
            .zip(&den)
            .map(|(a, b)| if *b > 0.0 { a / b } else { 0.0 })
            .collect();
        if structure == ChannelStructure::Full {
            // Symmetric by construction up to summation order; make it exact.
            for a in 0..c {
                for b in a + 1..c {
                    for r in 0..=radius_u {
                        let (i, j) = (
                            (a * c + b) * (radius_u + 1) + r,
                            (b * c + a) * (radius_u + 1) + r,
                        );
                        let m = 0.5 * (curves[i] + curves[j]);
                        curves[i] = m;
                        curves[j] = m;
                    }
                }
            }
        }
        Self::new((c, h, w), radius, structure, curves)
    }

    pub fn radius(&self) -> usize {
        self.radius
    }

    pub fn structure(&self) -> ChannelStructure {
        self.structure
    }

    /// All curves, `n_curves × (R + 1)`.
    pub fn curves(&self) -> &[f64] {
        &self.curves
    }

    /// The curve `f_{c,c'}(0..=R)`.
    pub fn curve(&self, c: usize, c2: usize) -> &[f64] {
        let k = match self.structure {
            ChannelStructure::IntraInter => usize::from(c != c2),
            ChannelStructure::Full => c * self.shape.0 + c2,
        };
        &self.curves[k * (self.radius + 1)..(k + 1) * (self.radius + 1)]
    }

    /// The kernel tables behind the product.
    pub fn kernels(&self) -> &Arc<KernelSet> {
        &self.kernels
    }

    /// `a·self + b·other` (for running averages); shapes, radii and structures must agree.
    pub fn lin_comb(&self, a: f64, other: &CovFun, b: f64) -> Result<Self> {
        if (self.shape, self.radius, self.structure) != (other.shape, other.radius, other.structure)
        {
            return Err(CovError::Invalid(format!(
                "cannot combine covariance functions of {:?}/R={}/{} and {:?}/R={}/{}",
                self.shape,
                self.radius,
                self.structure.as_str(),
                other.shape,
                other.radius,
                other.structure.as_str()
            )));
        }
        let curves = self
            .curves
            .iter()
            .zip(&other.curves)
            .map(|(x, y)| a * x + b * y)
            .collect();
        Self::new(self.shape, self.radius as i64, self.structure, curves)
    }
}

impl Covariance for CovFun {
    fn kind(&self) -> &'static str {
        "covfun"
    }
    fn shape(&self) -> (usize, usize, usize) {
        self.shape
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
        let n = Self::n_curves(self.shape.0, self.structure);
        Ok([
            ("shape".to_string(), shape_tensor(self.shape)?),
            (
                "structure".to_string(),
                crate::io::kind_tensor(self.structure.as_str())?,
            ),
            (
                "curves".to_string(),
                Tensor::from_vec(self.curves.clone(), (n, self.radius + 1), &Device::Cpu)?,
            ),
        ]
        .into())
    }
    fn bytes(&self) -> usize {
        8 * (self.curves.len() + self.kernels.tables.len())
    }
}
