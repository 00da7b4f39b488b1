//! Small 2-D FFT helpers on top of rustfft (row-major, complex f64).

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftNum, FftPlanner};

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
pub(crate) struct Plan2d<T: FftNum = f64> {
    pub ny: usize,
    pub nx: usize,
    fy: Arc<dyn Fft<T>>,
    fx: Arc<dyn Fft<T>>,
    iy: Arc<dyn Fft<T>>,
    ix: Arc<dyn Fft<T>>,
}

impl<T: FftNum> std::fmt::Debug for Plan2d<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plan2d({}x{})", self.ny, self.nx)
    }
}

impl<T: FftNum + num_traits::Float> Plan2d<T> {
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

    fn run(&self, data: &mut [Complex<T>], inverse: bool) {
        let (ny, nx) = (self.ny, self.nx);
        let (fx, fy) = if inverse {
            (&self.ix, &self.iy)
        } else {
            (&self.fx, &self.fy)
        };
        fx.process(data);
        // Columns: transpose, transform rows, transpose back.
        let mut t = vec![Complex::new(T::zero(), T::zero()); ny * nx];
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
            let s = T::one() / T::from(ny * nx).unwrap_or_else(T::one);
            data.iter_mut().for_each(|z| *z = *z * s);
        }
    }

    /// Forward transform of a grid whose rows `rows..ny` are zero, returned **transposed** (`nx × ny`, index
    /// `kx * ny + ky`): one transpose instead of two, and no work on the zero rows.
    pub fn forward_t(&self, data: &mut [Complex<T>], rows: usize) -> Vec<Complex<T>> {
        let (ny, nx) = (self.ny, self.nx);
        let rows = rows.min(ny);
        self.fx.process(&mut data[..rows * nx]);
        let mut t = vec![Complex::new(T::zero(), T::zero()); ny * nx];
        for i in 0..rows {
            for j in 0..nx {
                t[j * ny + i] = data[i * nx + j];
            }
        }
        self.fy.process(&mut t);
        t
    }

    /// Inverse of [`Plan2d::forward_t`] (normalised), computing only the first `rows` rows of the result
    /// into `out` (`rows × nx`).
    pub fn inverse_t(&self, t: &mut [Complex<T>], rows: usize, out: &mut Vec<Complex<T>>) {
        let (ny, nx) = (self.ny, self.nx);
        let rows = rows.min(ny);
        self.iy.process(t);
        out.clear();
        out.resize(rows * nx, Complex::new(T::zero(), T::zero()));
        for i in 0..rows {
            for j in 0..nx {
                out[i * nx + j] = t[j * ny + i];
            }
        }
        self.ix.process(out);
        let s = T::one() / T::from(ny * nx).unwrap_or_else(T::one);
        out.iter_mut().for_each(|z| *z = *z * s);
    }

    pub fn forward(&self, data: &mut [Complex<T>]) {
        self.run(data, false)
    }

    /// Inverse transform, normalised (forward then inverse is the identity).
    pub fn inverse(&self, data: &mut [Complex<T>]) {
        self.run(data, true)
    }

    /// Transform of a real `h × w` plane zero-padded into the grid (top-left corner).
    pub fn forward_real(&self, plane: &[T], h: usize, w: usize) -> Vec<Complex<T>> {
        let mut buf = vec![Complex::new(T::zero(), T::zero()); self.ny * self.nx];
        for i in 0..h {
            for j in 0..w {
                buf[i * self.nx + j] = Complex::new(plane[i * w + j], T::zero());
            }
        }
        self.forward(&mut buf);
        buf
    }
}
