//! Projection of a stationary covariance onto the positive semi-definite cone, by clamping the negative part
//! of its spectrum on a torus large enough that the image's Toeplitz-block matrix is a principal submatrix of
//! the torus's circulant.
//!
//! The paper's rounded-distance covariance functions are not PSD in general (an estimated Σ̂ can then give a
//! negative regulariser Ω, which rewards steep inputs). The projected kernel covers the full image
//! (`ry = H − 1`, `rx = W − 1`) and is PSD by construction: on a torus of `2H × 2W` the kernel's circulant has
//! eigenvalues equal to its DFT, which are clamped at zero; the `H × W` image sees a principal submatrix.

use rustfft::FftPlanner;
use rustfft::num_complex::Complex;

use crate::error::{CovError, Result};
use crate::kernel::{ChannelStructure, KernelSet};

fn fft2(data: &mut [Complex<f64>], ny: usize, nx: usize, inverse: bool) {
    let mut planner = FftPlanner::<f64>::new();
    let (row, col) = if inverse {
        (planner.plan_fft_inverse(nx), planner.plan_fft_inverse(ny))
    } else {
        (planner.plan_fft_forward(nx), planner.plan_fft_forward(ny))
    };
    for r in data.chunks_mut(nx) {
        row.process(r);
    }
    let mut column = vec![Complex::new(0.0, 0.0); ny];
    for x in 0..nx {
        for y in 0..ny {
            column[y] = data[y * nx + x];
        }
        col.process(&mut column);
        for y in 0..ny {
            data[y * nx + x] = column[y];
        }
    }
}

impl KernelSet {
    /// The nearest (in the torus spectrum) positive semi-definite stationary covariance, over the full image.
    ///
    /// Intra/inter structure is handled exactly through its two eigen-spaces over channels (`intra − inter`
    /// with multiplicity `C − 1`, `intra + (C − 1)·inter`); a full `C × C` structure is refused.
    pub fn project_psd(&self) -> Result<KernelSet> {
        if self.structure == ChannelStructure::Full && self.c > 1 {
            return Err(CovError::Invalid(
                "the PSD projection supports the intra/inter channel structure only".into(),
            ));
        }
        let (c, h, w) = (self.c, self.h, self.w);
        let (ny, nx) = (2 * h, 2 * w);
        let torus = |c1: usize, c2: usize| {
            let mut g = vec![Complex::new(0.0, 0.0); ny * nx];
            for dy in -(self.ry as i64)..=self.ry as i64 {
                for dx in -(self.rx as i64)..=self.rx as i64 {
                    let (ty, tx) = (dy.rem_euclid(ny as i64), dx.rem_euclid(nx as i64));
                    g[ty as usize * nx + tx as usize] =
                        Complex::new(self.value(c1, c2, dy, dx), 0.0);
                }
            }
            fft2(&mut g, ny, nx, false);
            g
        };
        let intra = torus(0, 0);
        let inter = if c > 1 {
            torus(0, 1)
        } else {
            vec![Complex::new(0.0, 0.0); ny * nx]
        };
        let cf = c as f64;
        let mut a2 = vec![Complex::new(0.0, 0.0); ny * nx];
        let mut b2 = vec![Complex::new(0.0, 0.0); ny * nx];
        for k in 0..ny * nx {
            // The spectra of symmetric real kernels are real; drop round-off imaginary parts.
            let (a, b) = (intra[k].re, inter[k].re);
            let lo = (a - b).max(0.0);
            let hi = (a + (cf - 1.0) * b).max(0.0);
            a2[k] = Complex::new(((cf - 1.0) * lo + hi) / cf, 0.0);
            b2[k] = Complex::new((hi - lo) / cf, 0.0);
        }
        fft2(&mut a2, ny, nx, true);
        fft2(&mut b2, ny, nx, true);
        let norm = (ny * nx) as f64;
        let (ry, rx) = (h - 1, w - 1);
        let mut tables = Vec::with_capacity(2 * (2 * ry + 1) * (2 * rx + 1));
        for (k, g) in [&a2, &b2].into_iter().enumerate() {
            for dy in -(ry as i64)..=ry as i64 {
                for dx in -(rx as i64)..=rx as i64 {
                    let (ty, tx) = (dy.rem_euclid(ny as i64), dx.rem_euclid(nx as i64));
                    let v = g[ty as usize * nx + tx as usize].re / norm;
                    tables.push(if c == 1 && k == 1 { 0.0 } else { v });
                }
            }
        }
        // Exact symmetry (the inverse transform is symmetric only up to round-off).
        let len = (2 * ry + 1) * (2 * rx + 1);
        for t in tables.chunks_mut(len) {
            for i in 0..len / 2 {
                let m = 0.5 * (t[i] + t[len - 1 - i]);
                t[i] = m;
                t[len - 1 - i] = m;
            }
        }
        KernelSet::new((c, h, w), (ry, rx), ChannelStructure::IntraInter, tables)
    }
}

impl crate::CovFun {
    /// This covariance function made positive semi-definite (see [`KernelSet::project_psd`]), as a
    /// full-image [`crate::Stationary`].
    pub fn project_psd(&self) -> Result<crate::Stationary> {
        Ok(crate::Stationary::from_kernels(
            self.kernels().project_psd()?,
        ))
    }
}

impl crate::Stationary {
    /// This covariance made positive semi-definite (see [`KernelSet::project_psd`]).
    pub fn project_psd(&self) -> Result<crate::Stationary> {
        Ok(crate::Stationary::from_kernels(
            self.kernels().project_psd()?,
        ))
    }
}
