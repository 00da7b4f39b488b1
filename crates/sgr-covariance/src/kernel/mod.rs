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
use rustfft::FftNum;
use rustfft::num_complex::Complex;

use crate::error::{CovError, Result};
use crate::fft::Plan2d;

mod cpu;

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
        let (ry, rx) = clip_extent((c, h, w), (ry, rx))?;
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
        radius: (usize, usize),
        structure: ChannelStructure,
        f: impl Fn(usize, usize, i64, i64) -> f64,
    ) -> Result<Self> {
        Self::tabulate(shape, radius, structure, |a, b, dy, dx| {
            let canonical = (dy, dx).max((-dy, -dx));
            match (structure, a.cmp(&b)) {
                // K_intra and K_inter = K_{01} = K_{10} are each symmetric in δ.
                (ChannelStructure::IntraInter, _) | (_, std::cmp::Ordering::Equal) => {
                    f(a, b, canonical.0, canonical.1)
                }
                (_, std::cmp::Ordering::Less) => f(a, b, dy, dx),
                (_, std::cmp::Ordering::Greater) => f(b, a, -dy, -dx),
            }
        })
    }

    /// Tables from `value(c, c', dy, dx)` for each stored channel pair (intra/inter: `(0, 0)` and `(0, 1)`; full:
    /// all `C²`), radii clipped to the image, checked by [`KernelSet::new`] (symmetry included).
    pub(crate) fn tabulate(
        shape: (usize, usize, usize),
        (ry, rx): (usize, usize),
        structure: ChannelStructure,
        value: impl Fn(usize, usize, i64, i64) -> f64,
    ) -> Result<Self> {
        let c = shape.0;
        let (ry, rx) = clip_extent(shape, (ry, rx))?;
        let pairs: Vec<(usize, usize)> = match structure {
            ChannelStructure::IntraInter => vec![(0, 0), (0, 1)],
            ChannelStructure::Full => (0..c * c).map(|k| (k / c, k % c)).collect(),
        };
        let mut tables = Vec::with_capacity(pairs.len() * (2 * ry + 1) * (2 * rx + 1));
        for (a, b) in pairs {
            for dy in -(ry as i64)..=ry as i64 {
                for dx in -(rx as i64)..=rx as i64 {
                    tables.push(value(a, b, dy, dx));
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

    /// The single-channel correlations `Σ v` is made of, as tables (in the layout of [`KernelSet::value`]), in
    /// the order every implementation applies them: one channel `[K]`; intra/inter `[K_intra − K_inter,
    /// K_inter]` (the second on `Σ_c v_c`: `C + 1` correlations); full: the `C²` tables, row-major over `(c, c')`.
    pub(crate) fn correlation_tables(&self) -> Vec<Vec<f64>> {
        match self.structure {
            _ if self.c == 1 => vec![self.table(0).to_vec()],
            ChannelStructure::IntraInter => {
                let diff = self.table(0).iter().zip(self.table(1)).map(|(a, b)| a - b);
                vec![diff.collect(), self.table(1).to_vec()]
            }
            ChannelStructure::Full => (0..self.n_tables())
                .map(|k| self.table(k).to_vec())
                .collect(),
        }
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
}

/// The half extents clipped to the image (a displacement beyond it never pairs two pixels); an error for an
/// empty image.
fn clip_extent(
    (c, h, w): (usize, usize, usize),
    (ry, rx): (usize, usize),
) -> Result<(usize, usize)> {
    if c == 0 || h == 0 || w == 0 {
        return Err(CovError::Invalid(format!("empty image shape {c}x{h}x{w}")));
    }
    Ok((ry.min(h - 1), rx.min(w - 1)))
}

/// Where the product op's (contiguous) input lies in its storage, on any device.
pub(crate) fn contiguous_range(layout: &Layout) -> candle_core::Result<(usize, usize)> {
    layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("sgr-cov-matvec: input must be contiguous".into()))
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
        let (start, end) = contiguous_range(layout)?;
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
