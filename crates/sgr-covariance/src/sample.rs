//! Drawing `ξ ~ N(0, Σ)`: a Cholesky factor for dense covariances of moderate size, circulant embedding
//! through FFTs for stationary intra/inter covariances on images of any size.

use candle_core::{Device, Tensor};
use rand::Rng;
use rand_distr::StandardNormal;
use rustfft::num_complex::Complex64;

use crate::error::{CovError, Result};
use crate::fft::{Plan2d, fast_len};
use crate::linalg::cholesky;
use crate::repr::Covariance;

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

/// Samples through a Cholesky factor of the dense matrix (any [`Covariance`] whose `to_dense` fits).
#[derive(Debug, Clone)]
pub struct DenseSampler {
    shape: (usize, usize, usize),
    l: Vec<f64>,
}

impl DenseSampler {
    /// Factorises `cov` (with a relative diagonal jitter of 1e-10). Fails with [`CovError::NotPsd`] for a
    /// matrix that is not positive semi-definite, e.g. a rounded-distance [`crate::CovFun`].
    pub fn new(cov: &dyn Covariance) -> Result<Self> {
        let d = cov.dim();
        let m = cov.to_dense()?.flatten_all()?.to_vec1::<f64>()?;
        Ok(Self {
            shape: cov.shape(),
            l: cholesky(&m, d, 1e-10)?,
        })
    }

    /// `n` samples as an `(n, C, H, W)` f64 tensor on CPU.
    pub fn sample(&self, n: usize, seed: u64) -> Result<Tensor> {
        let (c, h, w) = self.shape;
        let d = c * h * w;
        let mut r = rng(seed);
        let mut out = vec![0f64; n * d];
        let mut z = vec![0f64; d];
        for s in 0..n {
            z.iter_mut().for_each(|v| *v = r.sample(StandardNormal));
            let o = &mut out[s * d..(s + 1) * d];
            for (i, oi) in o.iter_mut().enumerate() {
                *oi = (0..=i).map(|k| self.l[i * d + k] * z[k]).sum();
            }
        }
        Ok(Tensor::from_vec(out, (n, c, h, w), &Device::Cpu)?)
    }
}

/// Exact samples of a stationary covariance with intra/inter channel structure, `K_intra(δ)` for equal and
/// `K_inter(δ)` for different channels, by circulant embedding: the kernels are laid on a torus at least
/// `(2H − 1) × (2W − 1)` large, whose eigenvalues (FFTs) give the square root of the embedded covariance.
/// Memory and time are `O(C·H·W·log(HW))` per sample, so 224×224 images are cheap.
#[derive(Debug, Clone)]
pub struct CirculantSampler {
    shape: (usize, usize, usize),
    plan: Plan2d,
    /// sqrt of the eigenvalues on the channel-difference subspace and the channel-mean direction, / √N.
    sqrt_diff: Vec<f64>,
    sqrt_mean: Vec<f64>,
}

impl CirculantSampler {
    /// `intra(dy, dx)` and `inter(dy, dx)` must be even functions defined for all displacements (the torus
    /// can be larger than the image). Fails with [`CovError::NotPsd`] when no embedding up to 4× the minimal
    /// size is positive semi-definite.
    pub fn new(
        shape: (usize, usize, usize),
        intra: impl Fn(i64, i64) -> f64,
        inter: impl Fn(i64, i64) -> f64,
    ) -> Result<Self> {
        let (c, h, w) = shape;
        if c == 0 || h == 0 || w == 0 {
            return Err(CovError::Invalid(format!("empty image shape {c}x{h}x{w}")));
        }
        let mut factor = 1;
        loop {
            let (ny, nx) = (
                fast_len(factor * (2 * h).max(2)),
                fast_len(factor * (2 * w).max(2)),
            );
            let plan = Plan2d::new(ny, nx);
            let spectrum = |f: &dyn Fn(i64, i64) -> f64| {
                let mut buf = vec![Complex64::new(0.0, 0.0); ny * nx];
                for i in 0..ny {
                    let dy = if i <= ny / 2 {
                        i as i64
                    } else {
                        i as i64 - ny as i64
                    };
                    for j in 0..nx {
                        let dx = if j <= nx / 2 {
                            j as i64
                        } else {
                            j as i64 - nx as i64
                        };
                        buf[i * nx + j] = Complex64::new(f(dy, dx), 0.0);
                    }
                }
                plan.forward(&mut buf);
                buf.into_iter().map(|z| z.re).collect::<Vec<f64>>()
            };
            let a = spectrum(&intra);
            let b = if c > 1 {
                spectrum(&inter)
            } else {
                vec![0.0; ny * nx]
            };
            // Per frequency, Σ(ω) = (a − b)(I − P) + (a + (C−1) b) P with P = 11ᵀ/C.
            let diff: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a - b).collect();
            let mean: Vec<f64> = a
                .iter()
                .zip(&b)
                .map(|(a, b)| a + (c as f64 - 1.0) * b)
                .collect();
            let max = diff.iter().chain(&mean).fold(0f64, |m, v| m.max(v.abs()));
            let min = if c > 1 {
                diff.iter()
                    .chain(&mean)
                    .fold(f64::INFINITY, |m, v| m.min(*v))
            } else {
                mean.iter().fold(f64::INFINITY, |m, v| m.min(*v))
            };
            if min >= -1e-9 * max {
                let n = (ny * nx) as f64;
                let root = |v: &Vec<f64>| {
                    v.iter()
                        .map(|x| (x.max(0.0) / n).sqrt())
                        .collect::<Vec<f64>>()
                };
                return Ok(Self {
                    shape,
                    sqrt_diff: root(&diff),
                    sqrt_mean: root(&mean),
                    plan,
                });
            }
            if factor >= 4 {
                return Err(CovError::NotPsd(format!(
                    "circulant embedding of size {ny}x{nx} has eigenvalue {min:.3e} (max {max:.3e}); the covariance is not positive semi-definite"
                )));
            }
            factor *= 2;
        }
    }

    /// The synthetic long-range-correlated covariance of sec. 4.3 (exact distances): intra `exp(−r/ζ)`,
    /// inter `0.5·exp(−r/ζ)`.
    pub fn lrc(shape: (usize, usize, usize), zeta: f64) -> Result<Self> {
        if !(zeta > 0.0 && zeta.is_finite()) {
            return Err(CovError::Invalid(format!(
                "the decay length ζ must be positive, got {zeta}"
            )));
        }
        let k = move |dy: i64, dx: i64| (-(((dy * dy + dx * dx) as f64).sqrt()) / zeta).exp();
        Self::new(shape, k, move |dy, dx| 0.5 * k(dy, dx))
    }

    /// `n` samples as an `(n, C, H, W)` f64 tensor on CPU; each complex field gives two independent samples.
    pub fn sample(&self, n: usize, seed: u64) -> Result<Tensor> {
        let (c, h, w) = self.shape;
        let (ny, nx) = (self.plan.ny, self.plan.nx);
        let nn = ny * nx;
        let mut r = rng(seed);
        let mut out = vec![0f64; n * c * h * w];
        let mut fields: Vec<Vec<Complex64>> = vec![vec![Complex64::new(0.0, 0.0); nn]; c];
        let mut s = 0;
        while s < n {
            for f in fields.iter_mut() {
                for z in f.iter_mut() {
                    *z = Complex64::new(r.sample(StandardNormal), r.sample(StandardNormal));
                }
            }
            for k in 0..nn {
                let m: Complex64 = fields.iter().map(|f| f[k]).sum::<Complex64>() / c as f64;
                for f in fields.iter_mut() {
                    f[k] = (f[k] - m) * self.sqrt_diff[k] + m * self.sqrt_mean[k];
                }
            }
            for f in fields.iter_mut() {
                // Unnormalised inverse transform.
                self.plan.inverse(f);
                f.iter_mut().for_each(|z| *z *= nn as f64);
            }
            for part in 0..2 {
                if s >= n {
                    break;
                }
                for (ch, f) in fields.iter().enumerate() {
                    for i in 0..h {
                        for j in 0..w {
                            let z = f[i * nx + j];
                            out[((s * c + ch) * h + i) * w + j] =
                                if part == 0 { z.re } else { z.im };
                        }
                    }
                }
                s += 1;
            }
        }
        Ok(Tensor::from_vec(out, (n, c, h, w), &Device::Cpu)?)
    }
}
