//! Stationary covariances on images and the fast product `Σ v` as a differentiable Candle op.
//!
//! A [`KernelSet`] stands for `Σ[(c,p),(c',q)] = K_{cc'}(q − p)` on `C × H × W` images, with displacements
//! `|dy| ≤ ry`, `|dx| ≤ rx` (zero beyond). `Σ v` is then `out_c(p) = Σ_{c'} Σ_δ K_{cc'}(δ) v_{c'}(p + δ)`: a 2-D
//! correlation per channel pair with zero padding at the borders. With intra/inter structure
//! (`K_{cc} = K_intra`, `K_{cc'} = K_inter`), `out_c = (K_intra − K_inter) ⋆ v_c + K_inter ⋆ Σ_{c'} v_{c'}` needs
//! `C + 1` correlations instead of `C²`. Small kernels run as direct correlations (row-wise axpy, parallel over
//! the batch); large ones through FFTs.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;
use rustfft::FftNum;
use rustfft::num_complex::Complex;

use crate::error::{CovError, Result};
use crate::fft::{Plan2d, fast_len};

/// Which implementation computes `Σ v` ([`KernelSet::matvec_on`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatvecPath {
    /// The kernel where there is one (CPU; CUDA after its once-per-device self-check), else the reference.
    Auto,
    /// The kernel, without the self-check; an error on devices without one.
    Kernel,
    /// One `conv2d` with the full `C × C` kernel table (any device; the oracle of the tests).
    Reference,
}

/// How channels relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelStructure {
    /// One kernel for equal channels, one for different channels (Fig. 2 of the paper).
    IntraInter,
    /// A full `C × C` table of kernels, `K_{c'c}(−δ) = K_{cc'}(δ)`.
    Full,
}

impl ChannelStructure {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelStructure::IntraInter => "intra-inter",
            ChannelStructure::Full => "full",
        }
    }
}

/// Kernel tables of a stationary covariance; see the module documentation.
#[derive(Clone, Debug)]
pub struct KernelSet {
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) ry: usize,
    pub(crate) rx: usize,
    pub(crate) structure: ChannelStructure,
    /// IntraInter: `[intra, inter]`; Full: `C·C` tables, row-major over `(c, c')`. Each table is
    /// `(2ry+1) × (2rx+1)`, entry `(dy + ry, dx + rx)`.
    pub(crate) tables: Vec<f64>,
    fft64: Arc<OnceLock<FftKernels<f64>>>,
    fft32: Arc<OnceLock<FftKernels<f32>>>,
}

#[derive(Debug)]
pub(crate) struct FftKernels<T: FftNum> {
    plan: Plan2d<T>,
    /// Transforms of the (flipped, wrapped) kernels: IntraInter `[intra − inter, inter]` (or `[intra]` for
    /// C = 1); Full `C·C`.
    spectra: Vec<Vec<Complex<T>>>,
}

impl KernelSet {
    /// Builds a kernel set, checking sizes, finiteness and symmetry (`Σ` must be symmetric for the product's
    /// gradient to be the product itself).
    pub fn new(
        (c, h, w): (usize, usize, usize),
        (ry, rx): (usize, usize),
        structure: ChannelStructure,
        tables: Vec<f64>,
    ) -> Result<Self> {
        if c == 0 || h == 0 || w == 0 {
            return Err(CovError::Invalid(format!("empty image shape {c}x{h}x{w}")));
        }
        let (ry, rx) = (ry.min(h - 1), rx.min(w - 1));
        let ks = Self {
            c,
            h,
            w,
            ry,
            rx,
            structure,
            tables,
            fft64: Arc::new(OnceLock::new()),
            fft32: Arc::new(OnceLock::new()),
        };
        let expected = ks.n_tables() * ks.table_len();
        if ks.tables.len() != expected {
            return Err(CovError::Shape {
                what: "kernel tables",
                got: vec![ks.tables.len()],
                expected: format!(
                    "{} tables of {}x{} = {expected} values",
                    ks.n_tables(),
                    2 * ry + 1,
                    2 * rx + 1
                ),
            });
        }
        if ks.tables.iter().any(|v| !v.is_finite()) {
            return Err(CovError::NonFinite {
                what: "kernel tables",
            });
        }
        ks.check_symmetry()?;
        Ok(ks)
    }

    /// A kernel set from any function `f(c, c', dy, dx)`, made symmetric: `f` is read for `c < c'` (and for
    /// `c = c'` at the larger of `±(dy, dx)`), the rest mirrored (`K_{c'c}(−δ) = K_{cc'}(δ)`). With
    /// intra/inter structure the inter table is `f(0, 1, ·)`.
    pub fn from_fn(
        shape: (usize, usize, usize),
        (ry, rx): (usize, usize),
        structure: ChannelStructure,
        f: impl Fn(usize, usize, i64, i64) -> f64,
    ) -> Result<Self> {
        let (c, h, w) = shape;
        if c == 0 || h == 0 || w == 0 {
            return Err(CovError::Invalid(format!("empty image shape {c}x{h}x{w}")));
        }
        let (ry, rx) = (ry.min(h - 1), rx.min(w - 1));
        let pairs: Vec<(usize, usize)> = match structure {
            ChannelStructure::IntraInter => vec![(0, 0), (0, 1)],
            ChannelStructure::Full => (0..c * c).map(|k| (k / c, k % c)).collect(),
        };
        let mut tables = Vec::with_capacity(pairs.len() * (2 * ry + 1) * (2 * rx + 1));
        for (a, b) in pairs {
            for dy in -(ry as i64)..=ry as i64 {
                for dx in -(rx as i64)..=rx as i64 {
                    let canonical = (dy, dx).max((-dy, -dx));
                    tables.push(match (structure, a.cmp(&b)) {
                        // K_intra and K_inter = K_{01} = K_{10} are each symmetric in δ.
                        (ChannelStructure::IntraInter, _) | (_, std::cmp::Ordering::Equal) => {
                            f(a, b, canonical.0, canonical.1)
                        }
                        (_, std::cmp::Ordering::Less) => f(a, b, dy, dx),
                        (_, std::cmp::Ordering::Greater) => f(b, a, -dy, -dx),
                    });
                }
            }
        }
        Self::new(shape, (ry, rx), structure, tables)
    }

    /// Deterministic pseudo-random (not positive definite) tables in [−0.5, 1.5), anisotropic and different
    /// per channel pair: inputs for tests and the CUDA kernel's self-check.
    #[doc(hidden)]
    pub fn pseudo_random(
        shape: (usize, usize, usize),
        radius: (usize, usize),
        structure: ChannelStructure,
        seed: u64,
    ) -> Result<Self> {
        Self::from_fn(shape, radius, structure, |a, b, dy, dx| {
            let mut z = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add((a as u64) << 48 ^ (b as u64) << 40)
                .wrapping_add(((dy + 512) as u64) << 20 ^ (dx + 512) as u64);
            z ^= z >> 31;
            z = z.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z ^= z >> 29;
            (z % 10_007) as f64 / 10_007.0 * 2.0 - 0.5
        })
    }

    pub fn shape(&self) -> (usize, usize, usize) {
        (self.c, self.h, self.w)
    }

    pub fn dim(&self) -> usize {
        self.c * self.h * self.w
    }

    pub fn half_extent(&self) -> (usize, usize) {
        (self.ry, self.rx)
    }

    pub fn structure(&self) -> ChannelStructure {
        self.structure
    }

    pub(crate) fn n_tables(&self) -> usize {
        match self.structure {
            ChannelStructure::IntraInter => 2,
            ChannelStructure::Full => self.c * self.c,
        }
    }

    pub(crate) fn table_len(&self) -> usize {
        (2 * self.ry + 1) * (2 * self.rx + 1)
    }

    fn table(&self, k: usize) -> &[f64] {
        let n = self.table_len();
        &self.tables[k * n..(k + 1) * n]
    }

    /// `K_{cc'}(dy, dx)`, zero outside the extent.
    pub fn value(&self, c: usize, c2: usize, dy: i64, dx: i64) -> f64 {
        if dy.unsigned_abs() as usize > self.ry || dx.unsigned_abs() as usize > self.rx {
            return 0.0;
        }
        let k = match self.structure {
            ChannelStructure::IntraInter => usize::from(c != c2),
            ChannelStructure::Full => c * self.c + c2,
        };
        let idx =
            (dy + self.ry as i64) as usize * (2 * self.rx + 1) + (dx + self.rx as i64) as usize;
        self.table(k)[idx]
    }

    fn check_symmetry(&self) -> Result<()> {
        let scale = self
            .tables
            .iter()
            .fold(0f64, |m, v| m.max(v.abs()))
            .max(f64::MIN_POSITIVE);
        let (ry, rx) = (self.ry as i64, self.rx as i64);
        for c in 0..self.c {
            for c2 in 0..self.c {
                for dy in -ry..=ry {
                    for dx in -rx..=rx {
                        let a = self.value(c, c2, dy, dx);
                        let b = self.value(c2, c, -dy, -dx);
                        if (a - b).abs() > 1e-9 * scale {
                            return Err(CovError::NotSymmetric(format!(
                                "K[{c},{c2}]({dy},{dx}) = {a} but K[{c2},{c}]({},{}) = {b}",
                                -dy, -dx
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Mean of the diagonal of `Σ`: the average of `K_{cc}(0)` over channels.
    pub fn mean_diag(&self) -> f64 {
        (0..self.c).map(|c| self.value(c, c, 0, 0)).sum::<f64>() / self.c as f64
    }

    /// The same covariance times `s`.
    pub fn scaled(&self, s: f64) -> Self {
        Self {
            tables: self.tables.iter().map(|v| v * s).collect(),
            fft64: Arc::new(OnceLock::new()),
            fft32: Arc::new(OnceLock::new()),
            ..self.clone()
        }
    }

    /// The `d × d` matrix (f64, CPU), `d = C·H·W`, indices in `(c, i, j)` row-major order.
    pub fn to_dense(&self) -> Result<Tensor> {
        let (h, w) = (self.h, self.w);
        let d = self.dim();
        let mut m = vec![0f64; d * d];
        for a in 0..d {
            let (ca, ia, ja) = (a / (h * w), (a / w) % h, a % w);
            for b in 0..d {
                let (cb, ib, jb) = (b / (h * w), (b / w) % h, b % w);
                m[a * d + b] = self.value(ca, cb, ib as i64 - ia as i64, jb as i64 - ja as i64);
            }
        }
        Ok(Tensor::from_vec(m, (d, d), &Device::Cpu)?)
    }

    /// The kernel as a `(C, C, 2r+1, 2r+1)` convolution weight with `r = max(ry, rx)`, for the reference path.
    pub fn conv_weight(&self, dtype: DType, device: &Device) -> Result<(Tensor, usize)> {
        let r = self.ry.max(self.rx);
        let k = 2 * r + 1;
        let c = self.c;
        let mut wv = vec![0f64; c * c * k * k];
        for a in 0..c {
            for b in 0..c {
                for dy in -(r as i64)..=r as i64 {
                    for dx in -(r as i64)..=r as i64 {
                        wv[((a * c + b) * k + (dy + r as i64) as usize) * k
                            + (dx + r as i64) as usize] = self.value(a, b, dy, dx);
                    }
                }
            }
        }
        Ok((
            Tensor::from_vec(wv, (c, c, k, k), device)?.to_dtype(dtype)?,
            r,
        ))
    }

    /// `Σ v` for `v` of shape `(B, C, H, W)` or `(B, C·H·W)`, differentiable to any order: the custom op on
    /// CPU and (with the `cuda` feature, once its self-check passed on the device) on CUDA; elsewhere the
    /// reference composition of tensor ops ([`KernelSet::matvec_reference`]). See [`MatvecPath`].
    pub fn matvec(self: &Arc<Self>, v: &Tensor) -> Result<Tensor> {
        self.matvec_on(v, MatvecPath::Auto)
    }

    /// `Σ v` through a chosen implementation (for tests, benchmarks and the GPU check).
    pub fn matvec_on(self: &Arc<Self>, v: &Tensor, path: MatvecPath) -> Result<Tensor> {
        let dims = self.check_input(v)?;
        let kernel = match (path, v.device()) {
            (MatvecPath::Reference, _) => false,
            (_, Device::Cpu) => true,
            #[cfg(feature = "cuda")]
            (MatvecPath::Auto, d @ Device::Cuda(_)) => crate::cuda::kernel_ready(d),
            #[cfg(feature = "cuda")]
            (MatvecPath::Kernel, Device::Cuda(_)) => true,
            (MatvecPath::Auto, _) => false,
            (MatvecPath::Kernel, d) => {
                return Err(CovError::Invalid(format!(
                    "no Σv kernel for {:?} in this build (CPU always; CUDA with the `cuda` feature; Metal uses \
                     the conv2d fallback)",
                    d.location()
                )));
            }
        };
        if !kernel {
            return self.matvec_reference(v);
        }
        let b = dims[0];
        let flat = v.reshape((b, self.dim()))?.contiguous()?;
        Ok(flat
            .apply_op1(CovMatvec { k: self.clone() })?
            .reshape(dims)?)
    }

    /// The slow reference: one `conv2d` with the full `C × C` kernel table. Differentiable through candle's
    /// own ops; used on GPUs and as the oracle in tests.
    pub fn matvec_reference(&self, v: &Tensor) -> Result<Tensor> {
        let dims = self.check_input(v)?;
        let b = dims[0];
        let x = v.reshape((b, self.c, self.h, self.w))?;
        let (weight, r) = self.conv_weight(v.dtype(), v.device())?;
        // conv2d pads both axes by r; crop back if the kernel was squared up.
        let out = x.conv2d(&weight, r, 1, 1, 1)?;
        Ok(out.reshape(dims)?)
    }

    fn check_input(&self, v: &Tensor) -> Result<Vec<usize>> {
        let dims = crate::repr::check_batch(self.shape(), v)?;
        if !matches!(v.dtype(), DType::F32 | DType::F64) {
            return Err(CovError::Invalid(format!(
                "matvec needs f32 or f64, got {:?}",
                v.dtype()
            )));
        }
        Ok(dims)
    }

    // ---------- CPU kernels ----------

    fn nonzeros(&self, k: usize) -> usize {
        self.table(k).iter().filter(|v| **v != 0.0).count()
    }

    /// Chooses the FFT path when it is predicted faster. Per image: the direct path costs
    /// `(number of correlations) · H·W · taps`, the FFT path `C · n·log₂n` (two images share each complex
    /// transform; C forward and C inverse). Constants measured on the benchmark (2 cores, f32, batch 128):
    /// 0.11 ns per direct tap-pixel, 0.33 ns per `n·log₂n` unit.
    fn use_fft(&self) -> bool {
        let (ny, nx) = (fast_len(self.h + self.ry), fast_len(self.w + self.rx));
        let n = (ny * nx) as f64;
        let c = self.c as f64;
        let fft_cost = 0.33 * c * n * n.log2();
        let max_nnz = (0..self.n_tables())
            .map(|k| self.nonzeros(k))
            .max()
            .unwrap_or(0) as f64;
        let correlations = match self.structure {
            ChannelStructure::IntraInter if self.c == 1 => 1.0,
            ChannelStructure::IntraInter => c + 1.0,
            ChannelStructure::Full => c * c,
        };
        let direct_cost = 0.11 * correlations * max_nnz * (self.h * self.w) as f64;
        fft_cost < direct_cost
    }

    fn build_fft_kernels<T: Elem>(&self) -> FftKernels<T> {
        let plan = Plan2d::<T>::new(fast_len(self.h + self.ry), fast_len(self.w + self.rx));
        let spectrum = |f: &dyn Fn(i64, i64) -> f64| {
            // g(m) = K(−m) placed with wrap-around: circular convolution with g is correlation with K.
            let mut buf = vec![Complex::new(T::zero(), T::zero()); plan.ny * plan.nx];
            for dy in -(self.ry as i64)..=self.ry as i64 {
                for dx in -(self.rx as i64)..=self.rx as i64 {
                    let my = (-dy).rem_euclid(plan.ny as i64) as usize;
                    let mx = (-dx).rem_euclid(plan.nx as i64) as usize;
                    buf[my * plan.nx + mx] =
                        Complex::new(T::from(f(dy, dx)).unwrap_or_else(T::nan), T::zero());
                }
            }
            plan.forward_t(&mut buf, plan.ny)
        };
        let spectra = match self.structure {
            ChannelStructure::IntraInter if self.c == 1 => {
                vec![spectrum(&|dy, dx| self.value(0, 0, dy, dx))]
            }
            ChannelStructure::IntraInter => vec![
                spectrum(&|dy, dx| self.value(0, 0, dy, dx) - self.value(0, 1, dy, dx)),
                spectrum(&|dy, dx| self.value(0, 1, dy, dx)),
            ],
            ChannelStructure::Full => (0..self.c * self.c)
                .map(|k| spectrum(&|dy, dx| self.value(k / self.c, k % self.c, dy, dx)))
                .collect(),
        };
        FftKernels { plan, spectra }
    }

    fn apply_fft<T: Elem>(&self, va: &[T], vb: Option<&[T]>, oa: &mut [T], ob: Option<&mut [T]>) {
        // Two real images ride in one complex transform (a + i·b): Σ is real and linear, so the real part
        // of the result is Σa and the imaginary part Σb. Spectra stay in the transposed layout of
        // `Plan2d::forward_t`, as the kernels' spectra do.
        let fk = T::fft_kernels(self);
        let (h, w) = (self.h, self.w);
        let hw = h * w;
        let plan = &fk.plan;
        let (ny, nx) = (plan.ny, plan.nx);
        let n = ny * nx;
        let zero = Complex::new(T::zero(), T::zero());
        let mut buf = vec![zero; h * nx];
        let mut sum = if self.structure == ChannelStructure::IntraInter && self.c > 1 {
            vec![zero; n]
        } else {
            vec![]
        };
        let spectra: Vec<Vec<Complex<T>>> = (0..self.c)
            .map(|c| {
                for i in 0..h {
                    for j in 0..w {
                        let re = va[c * hw + i * w + j];
                        let im = vb.map_or(T::zero(), |b| b[c * hw + i * w + j]);
                        buf[i * nx + j] = Complex::new(re, im);
                    }
                    for j in w..nx {
                        buf[i * nx + j] = zero;
                    }
                }
                let spec = plan.forward_t(&mut buf, h);
                if !sum.is_empty() {
                    sum.iter_mut().zip(&spec).for_each(|(s, x)| *s = *s + *x);
                }
                spec
            })
            .collect();
        let mut acc = vec![zero; n];
        let mut rows = Vec::with_capacity(h * nx);
        let mut ob = ob;
        for c in 0..self.c {
            match self.structure {
                ChannelStructure::IntraInter if self.c == 1 => {
                    for (a, (x, k)) in acc.iter_mut().zip(spectra[0].iter().zip(&fk.spectra[0])) {
                        *a = *x * *k;
                    }
                }
                ChannelStructure::IntraInter => {
                    let (d, i) = (&fk.spectra[0], &fk.spectra[1]);
                    for k in 0..n {
                        acc[k] = spectra[c][k] * d[k] + sum[k] * i[k];
                    }
                }
                ChannelStructure::Full => {
                    acc.iter_mut().for_each(|a| *a = zero);
                    for c2 in 0..self.c {
                        let ks = &fk.spectra[c * self.c + c2];
                        for k in 0..n {
                            acc[k] = acc[k] + spectra[c2][k] * ks[k];
                        }
                    }
                }
            }
            plan.inverse_t(&mut acc, h, &mut rows);
            for i in 0..h {
                for j in 0..w {
                    let z = rows[i * nx + j];
                    oa[c * hw + i * w + j] = z.re;
                    if let Some(ob) = ob.as_deref_mut() {
                        ob[c * hw + i * w + j] = z.im;
                    }
                }
            }
        }
    }

    /// `Σ v` for a batch stored row-major as `B × (C·H·W)` values: the FFT path per image for long ranges,
    /// else direct correlations on a batch-innermost layout (long contiguous axpys, parallel over rows).
    pub(crate) fn apply_batch<T: Elem>(&self, v: &[T]) -> Vec<T> {
        let d = self.dim();
        if self.use_fft() {
            let mut out = vec![T::zero(); v.len()];
            out.par_chunks_mut(2 * d)
                .zip(v.par_chunks(2 * d))
                .for_each(|(o, x)| {
                    let (oa, ob) = o.split_at_mut(d);
                    if x.len() == 2 * d {
                        self.apply_fft(&x[..d], Some(&x[d..]), oa, Some(ob));
                    } else {
                        self.apply_fft(x, None, oa, None);
                    }
                });
            return out;
        }
        self.apply_direct_batch(v)
    }

    fn apply_direct_batch<T: Elem>(&self, v: &[T]) -> Vec<T> {
        let d = self.dim();
        let mut out = vec![T::zero(); v.len()];
        let convert = |t: &[f64]| -> Vec<T> {
            t.iter()
                .map(|&x| T::from(x).unwrap_or_else(T::nan))
                .collect()
        };
        // Kernels as tap lists (dy, dx, weight), zeros skipped; for intra/inter: [intra − inter, inter].
        let tables: Vec<Vec<T>> = match self.structure {
            ChannelStructure::IntraInter if self.c == 1 => vec![convert(self.table(0))],
            ChannelStructure::IntraInter => {
                let diff: Vec<f64> = self
                    .table(0)
                    .iter()
                    .zip(self.table(1))
                    .map(|(a, x)| a - x)
                    .collect();
                vec![convert(&diff), convert(self.table(1))]
            }
            ChannelStructure::Full => (0..self.n_tables())
                .map(|k| convert(self.table(k)))
                .collect(),
        };
        let taps: Vec<Vec<(usize, T)>> = tables.iter().map(|t| self.taps(t)).collect();
        out.par_chunks_mut(d)
            .zip(v.par_chunks(d))
            .for_each(|(o, x)| self.apply_direct_image(x, o, &taps));
        out
    }

    /// Nonzero taps of a table as (offset into a padded plane, weight).
    fn taps<T: Elem>(&self, table: &[T]) -> Vec<(usize, T)> {
        let (ry, rx) = (self.ry as i64, self.rx as i64);
        let pw = self.w + 2 * self.rx + PAD_LANES;
        let kw = 2 * rx + 1;
        let mut taps = Vec::new();
        for dy in -ry..=ry {
            for dx in -rx..=rx {
                let wgt = table[((dy + ry) * kw + dx + rx) as usize];
                if wgt != T::zero() {
                    taps.push((((dy + ry) as usize) * pw + (dx + rx) as usize, wgt));
                }
            }
        }
        taps
    }

    /// `Σ v` for one image by direct correlation on zero-padded planes: every output row is processed in
    /// blocks of `PAD_LANES` pixels held in registers while all taps add into them.
    fn apply_direct_image<T: Elem>(&self, v: &[T], out: &mut [T], taps: &[Vec<(usize, T)>]) {
        let (c, h, w, ry, rx) = (self.c, self.h, self.w, self.ry, self.rx);
        let hw = h * w;
        let pw = w + 2 * rx + PAD_LANES;
        let ph = h + 2 * ry;
        let pad = |plane: &[T], buf: &mut Vec<T>| {
            buf.clear();
            buf.resize(ph * pw, T::zero());
            for i in 0..h {
                buf[(i + ry) * pw + rx..(i + ry) * pw + rx + w]
                    .copy_from_slice(&plane[i * w..(i + 1) * w]);
            }
        };
        let mut padded: Vec<Vec<T>> = vec![Vec::new(); c];
        for ch in 0..c {
            pad(&v[ch * hw..(ch + 1) * hw], &mut padded[ch]);
        }
        match self.structure {
            ChannelStructure::IntraInter if c == 1 => {
                correlate_padded(&padded[0], &taps[0], &mut out[..hw], h, w, pw, false)
            }
            ChannelStructure::IntraInter => {
                let mut sum = vec![T::zero(); ph * pw];
                for p in &padded {
                    sum.iter_mut().zip(p).for_each(|(s, &x)| *s += x);
                }
                let mut shared = vec![T::zero(); hw];
                correlate_padded(&sum, &taps[1], &mut shared, h, w, pw, false);
                for ch in 0..c {
                    let o = &mut out[ch * hw..(ch + 1) * hw];
                    o.copy_from_slice(&shared);
                    correlate_padded(&padded[ch], &taps[0], o, h, w, pw, true);
                }
            }
            ChannelStructure::Full => {
                for ch in 0..c {
                    let o = &mut out[ch * hw..(ch + 1) * hw];
                    for (c2, p) in padded.iter().enumerate() {
                        correlate_padded(p, &taps[ch * c + c2], o, h, w, pw, c2 > 0);
                    }
                }
            }
        }
    }
}

/// Extra zero columns on the right of a padded plane, so a full block can always be read.
const PAD_LANES: usize = 16;

/// `out (+)= K ⋆ plane` where `plane` is zero-padded (`ry` rows above/below, `rx` columns left, `rx + 16`
/// right) and taps are offsets into it.
fn correlate_padded<T: Elem>(
    plane: &[T],
    taps: &[(usize, T)],
    out: &mut [T],
    h: usize,
    w: usize,
    pw: usize,
    add: bool,
) {
    for i in 0..h {
        let row = &mut out[i * w..(i + 1) * w];
        let mut j = 0;
        while j < w {
            let n = PAD_LANES.min(w - j);
            let mut acc = [T::zero(); PAD_LANES];
            if add {
                acc[..n].copy_from_slice(&row[j..j + n]);
            }
            let base = i * pw + j;
            for &(off, wgt) in taps {
                let s = &plane[base + off..base + off + PAD_LANES];
                for k in 0..PAD_LANES {
                    acc[k] += wgt * s[k];
                }
            }
            row[j..j + n].copy_from_slice(&acc[..n]);
            j += PAD_LANES;
        }
    }
}

/// Element types of the CPU kernels.
pub(crate) trait Elem:
    num_traits::Float + std::ops::AddAssign + FftNum + Send + Sync + 'static
{
    fn fft_kernels(k: &KernelSet) -> &FftKernels<Self>;
}

impl Elem for f32 {
    fn fft_kernels(k: &KernelSet) -> &FftKernels<Self> {
        k.fft32.get_or_init(|| k.build_fft_kernels())
    }
}

impl Elem for f64 {
    fn fft_kernels(k: &KernelSet) -> &FftKernels<Self> {
        k.fft64.get_or_init(|| k.build_fft_kernels())
    }
}

/// The custom op behind [`KernelSet::matvec`]: forward on CPU, and a backward that is the op itself
/// (`Σ` is symmetric), so gradients of any order flow through it.
#[derive(Clone, Debug)]
struct CovMatvec {
    k: Arc<KernelSet>,
}

impl CustomOp1 for CovMatvec {
    fn name(&self) -> &'static str {
        "sgr-cov-matvec"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("sgr-cov-matvec: input must be contiguous".into())
        })?;
        let shape = layout.shape().clone();
        let _span = tracing::trace_span!("cov_matvec", n = end - start).entered();
        let out = match storage {
            CpuStorage::F64(v) => CpuStorage::F64(self.k.apply_batch(&v[start..end])),
            CpuStorage::F32(v) => CpuStorage::F32(self.k.apply_batch(&v[start..end])),
            _ => candle_core::bail!("sgr-cov-matvec: unsupported dtype (f32 and f64 only)"),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::cuda_fwd(&self.k, storage, layout)
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(self.clone())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both CPU paths, forced, against the dense matrix, for both structures and dtypes, odd batch sizes
    /// (an image without a partner in the FFT path's pairs) and widths that are not a multiple of the
    /// register block.
    #[test]
    fn direct_and_fft_paths_agree_with_the_dense_matrix() {
        for (c, h, w, r, structure) in [
            (1usize, 5usize, 7usize, 2usize, ChannelStructure::IntraInter),
            (3, 6, 19, 3, ChannelStructure::IntraInter),
            (2, 9, 4, 8, ChannelStructure::Full),
            (3, 4, 17, 1, ChannelStructure::Full),
        ] {
            let (ry, rx) = (r.min(h - 1), r.min(w - 1));
            let len = (2 * ry + 1) * (2 * rx + 1);
            let n = match structure {
                ChannelStructure::IntraInter => 2,
                ChannelStructure::Full => c * c,
            };
            // Symmetric tables: K_{ab}(δ) = K_{ba}(−δ).
            let mut tables = vec![0f64; n * len];
            for k in 0..n {
                let (a, b) = if structure == ChannelStructure::Full {
                    (k / c, k % c)
                } else {
                    (0, k)
                };
                for dy in -(ry as i64)..=ry as i64 {
                    for dx in -(rx as i64)..=rx as i64 {
                        let (lo, hi) = (a.min(b), a.max(b));
                        let order = if structure == ChannelStructure::IntraInter {
                            std::cmp::Ordering::Equal
                        } else {
                            a.cmp(&b)
                        };
                        let (sy, sx) = match order {
                            std::cmp::Ordering::Less => (dy, dx),
                            std::cmp::Ordering::Greater => (-dy, -dx),
                            std::cmp::Ordering::Equal => (dy, dx).max((-dy, -dx)),
                        };
                        let v = ((lo * 7 + hi * 3 + (sy + 9) as usize * 5 + (sx + 9) as usize * 11)
                            % 13) as f64
                            / 13.0
                            - 0.3;
                        tables[k * len
                            + (dy + ry as i64) as usize * (2 * rx + 1)
                            + (dx + rx as i64) as usize] = v;
                    }
                }
            }
            let ks = KernelSet::new((c, h, w), (ry, rx), structure, tables).unwrap();
            let d = ks.dim();
            let dense = ks
                .to_dense()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let b = 3;
            let v: Vec<f64> = (0..b * d)
                .map(|i| ((i * 37 % 101) as f64) / 50.0 - 1.0)
                .collect();
            let want: Vec<f64> = (0..b * d)
                .map(|q| {
                    let (bi, row) = (q / d, q % d);
                    (0..d).map(|k| dense[row * d + k] * v[bi * d + k]).sum()
                })
                .collect();
            let direct = ks.apply_direct_batch(&v);
            let mut fft = vec![0f64; b * d];
            {
                let (first, rest) = fft.split_at_mut(2 * d);
                let (oa, ob) = first.split_at_mut(d);
                ks.apply_fft(&v[..d], Some(&v[d..2 * d]), oa, Some(ob));
                ks.apply_fft(&v[2 * d..], None, rest, None);
            }
            for q in 0..b * d {
                assert!(
                    (direct[q] - want[q]).abs() < 1e-10,
                    "direct {c}x{h}x{w} r{r} {structure:?}"
                );
                assert!(
                    (fft[q] - want[q]).abs() < 1e-9,
                    "fft {c}x{h}x{w} r{r} {structure:?}"
                );
            }
            let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            let d32 = ks.apply_direct_batch(&v32);
            for q in 0..b * d {
                assert!((d32[q] as f64 - want[q]).abs() < 1e-4);
            }
        }
    }
}
