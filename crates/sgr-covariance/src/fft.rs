//! Small 2-D FFT helpers on top of rustfft (row-major, complex f64).

use std::sync::Arc;

use rustfft::num_complex::Complex64;
use rustfft::{Fft, FftPlanner};

/// The smallest 2^a·3^b·5^c ≥ n (sizes rustfft transforms fastest).
pub(crate) fn fast_len(n: usize) -> usize {
    let mut m = n.max(1);
    loop {
        let mut k = m;
        for p in [2, 3, 5] {
            while k % p == 0 {
                k /= p;
            }
        }
        if k == 1 {
            return m;
        }
        m += 1;
    }
}

/// Forward and inverse plans for an `ny × nx` grid.
#[derive(Clone)]
pub(crate) struct Plan2d {
    pub ny: usize,
    pub nx: usize,
    fy: Arc<dyn Fft<f64>>,
    fx: Arc<dyn Fft<f64>>,
    iy: Arc<dyn Fft<f64>>,
    ix: Arc<dyn Fft<f64>>,
}

impl std::fmt::Debug for Plan2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plan2d({}x{})", self.ny, self.nx)
    }
}

impl Plan2d {
    pub fn new(ny: usize, nx: usize) -> Self {
        let mut p = FftPlanner::new();
        Self {
            ny,
            nx,
            fy: p.plan_fft_forward(ny),
            fx: p.plan_fft_forward(nx),
            iy: p.plan_fft_inverse(ny),
            ix: p.plan_fft_inverse(nx),
        }
    }

    fn run(&self, data: &mut [Complex64], inverse: bool) {
        let (ny, nx) = (self.ny, self.nx);
        let (fx, fy) = if inverse {
            (&self.ix, &self.iy)
        } else {
            (&self.fx, &self.fy)
        };
        fx.process(data);
        // Columns: transpose, transform rows, transpose back.
        let mut t = vec![Complex64::new(0.0, 0.0); ny * nx];
        for i in 0..ny {
            for j in 0..nx {
                t[j * ny + i] = data[i * nx + j];
            }
        }
        fy.process(&mut t);
        for i in 0..ny {
            for j in 0..nx {
                data[i * nx + j] = t[j * ny + i];
            }
        }
        if inverse {
            let s = 1.0 / (ny * nx) as f64;
            data.iter_mut().for_each(|z| *z *= s);
        }
    }

    pub fn forward(&self, data: &mut [Complex64]) {
        self.run(data, false)
    }

    /// Inverse transform, normalised (forward then inverse is the identity).
    pub fn inverse(&self, data: &mut [Complex64]) {
        self.run(data, true)
    }

    /// Transform of a real `h × w` plane zero-padded into the grid (top-left corner).
    pub fn forward_real(&self, plane: &[f64], h: usize, w: usize) -> Vec<Complex64> {
        let mut buf = vec![Complex64::new(0.0, 0.0); self.ny * self.nx];
        for i in 0..h {
            for j in 0..w {
                buf[i * self.nx + j] = Complex64::new(plane[i * w + j], 0.0);
            }
        }
        self.forward(&mut buf);
        buf
    }
}
