//! The [`Covariance`] trait and the simple representations: [`Dense`], [`Identity`], [`Scaled`].

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{CovError, Result};

/// A symmetric `d × d` covariance (or matrix of raw second moments) over images of shape `(C, H, W)`,
/// `d = C·H·W`, or over flat vectors (`(1, 1, d)`).
pub trait Covariance: std::fmt::Debug + Send + Sync {
    /// A short name: `dense`, `identity`, `scaled`, `covfun`, `stationary`.
    fn kind(&self) -> &'static str;
    /// The image shape `(C, H, W)` the covariance is defined on.
    fn shape(&self) -> (usize, usize, usize);
    fn dim(&self) -> usize {
        let (c, h, w) = self.shape();
        c * h * w
    }
    /// `Σ v` for each row of a batch: `v` is `(B, C, H, W)` or `(B, d)`; the result has the same shape and
    /// dtype. Differentiable with respect to `v` to any order.
    fn matvec(&self, v: &Tensor) -> Result<Tensor>;
    /// The mean of the diagonal, `tr(Σ)/d`.
    fn mean_diag(&self) -> f64;
    /// The dense `d × d` matrix (f64, CPU); for tests and pictures, so keep `d` small.
    fn to_dense(&self) -> Result<Tensor>;
    /// Named tensors that describe the covariance completely, for safetensors (see [`crate::save`]).
    fn to_tensors(&self) -> Result<HashMap<String, Tensor>>;
    /// Bytes held by the representation.
    fn bytes(&self) -> usize;
}

pub(crate) fn check_batch(shape: (usize, usize, usize), v: &Tensor) -> Result<Vec<usize>> {
    let (c, h, w) = shape;
    let dims = v.dims().to_vec();
    let ok = match dims.as_slice() {
        [_, d] => *d == c * h * w,
        [_, cc, hh, ww] => (*cc, *hh, *ww) == (c, h, w),
        _ => false,
    };
    if !ok {
        return Err(CovError::Shape {
            what: "the vector batch",
            got: dims,
            expected: format!("(B, {c}, {h}, {w}) or (B, {})", c * h * w),
        });
    }
    Ok(dims)
}

pub(crate) fn shape_tensor(shape: (usize, usize, usize)) -> Result<Tensor> {
    Ok(Tensor::new(
        &[shape.0 as u32, shape.1 as u32, shape.2 as u32],
        &Device::Cpu,
    )?)
}

/// A dense matrix of second moments.
#[derive(Clone, Debug)]
pub struct Dense {
    shape: (usize, usize, usize),
    /// `(d, d)`, f64, CPU.
    matrix: Tensor,
    /// Mean of the diagonal, computed from the matrix on first use (a function of the matrix alone, so a
    /// saved and restored matrix scales identically).
    mean_diag: Arc<std::sync::OnceLock<f64>>,
    /// The same matrix in the dtype and device of the last product (cached).
    cache: Arc<std::sync::Mutex<Option<Tensor>>>,
}

impl Dense {
    /// Wraps a symmetric `(d, d)` matrix for images of `shape` (`(1, 1, d)` for flat vectors).
    pub fn new(shape: (usize, usize, usize), matrix: &Tensor) -> Result<Self> {
        let d = shape.0 * shape.1 * shape.2;
        if matrix.dims() != [d, d] {
            return Err(CovError::Shape {
                what: "dense covariance",
                got: matrix.dims().to_vec(),
                expected: format!("({d}, {d})"),
            });
        }
        let m = matrix.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
        let vals = m.flatten_all()?.to_vec1::<f64>()?;
        if vals.iter().any(|v| !v.is_finite()) {
            return Err(CovError::NonFinite {
                what: "dense covariance",
            });
        }
        let scale = vals
            .iter()
            .fold(0f64, |a, v| a.max(v.abs()))
            .max(f64::MIN_POSITIVE);
        for i in 0..d {
            for j in 0..i {
                if (vals[i * d + j] - vals[j * d + i]).abs() > 1e-9 * scale {
                    return Err(CovError::NotSymmetric(format!(
                        "entry ({i},{j}) = {} but ({j},{i}) = {}",
                        vals[i * d + j],
                        vals[j * d + i]
                    )));
                }
            }
        }
        Ok(Self {
            shape,
            matrix: m,
            mean_diag: Arc::default(),
            cache: Arc::default(),
        })
    }

    /// `(1/m) Σ ξ ξᵀ` of a batch of perturbations `(m, C, H, W)` or `(m, d)` (eq. 15).
    pub fn second_moments(xi: &Tensor) -> Result<Self> {
        let shape = batch_shape(xi)?;
        let m = xi.dim(0)?;
        if m == 0 {
            return Err(CovError::Invalid("second moments of an empty batch".into()));
        }
        // The product in the perturbations' own precision (f32 from f32 models: half the time of f64, and
        // exact for sign perturbations), accumulated into the f64 estimate by the caller.
        let x = xi
            .to_device(&Device::Cpu)?
            .reshape((m, shape.0 * shape.1 * shape.2))?;
        let x = match x.dtype() {
            DType::F32 | DType::F64 => x,
            _ => x.to_dtype(DType::F64)?,
        };
        check_finite(&x, "the perturbations ξ")?;
        let matrix = (x.t()?.matmul(&x)?.to_dtype(DType::F64)? / m as f64)?;
        // Symmetric and finite by construction: no need for `new`'s checks (they read the whole matrix).
        Ok(Self {
            shape,
            matrix,
            mean_diag: Arc::default(),
            cache: Arc::default(),
        })
    }

    /// The centred covariance of a data set given as rows `(n, C, H, W)` or `(n, d)`:
    /// `(1/n) Σ (x − μ)(x − μ)ᵀ`.
    pub fn data_covariance(x: &Tensor) -> Result<Self> {
        let shape = batch_shape(x)?;
        let n = x.dim(0)?;
        let x = x
            .to_dtype(DType::F64)?
            .to_device(&Device::Cpu)?
            .reshape((n, shape.0 * shape.1 * shape.2))?;
        check_finite(&x, "the data")?;
        let mu = x.mean_keepdim(0)?;
        let xc = x.broadcast_sub(&mu)?;
        let s = (xc.t()?.matmul(&xc)? / n as f64)?;
        Self::new(shape, &s)
    }

    /// `self + rel·mean_diag·I`: a ridge relative to the mean variance. Image data sets have pixels of zero
    /// variance (MNIST's border) and small samples have fewer images than pixels, so a data covariance is
    /// singular and has no Cholesky factor; a ridge of `rel = 1e-6` makes it one and changes samples drawn
    /// from it negligibly.
    pub fn with_relative_ridge(&self, rel: f64) -> Result<Self> {
        if !(rel >= 0.0 && rel.is_finite()) {
            return Err(CovError::Invalid(format!(
                "a relative ridge must be a non-negative number, got {rel}"
            )));
        }
        let d = self.dim();
        let ridge = rel * self.mean_diag().max(f64::MIN_POSITIVE);
        let eye = Tensor::eye(d, DType::F64, &Device::Cpu)?;
        Self::new(self.shape, &(&self.matrix + (eye * ridge)?)?)
    }

    /// The matrix, `(d, d)` f64 on CPU.
    pub fn matrix(&self) -> &Tensor {
        &self.matrix
    }

    /// `a·self + b·other` (for running averages).
    pub fn lin_comb(&self, a: f64, other: &Dense, b: f64) -> Result<Self> {
        if self.shape != other.shape {
            return Err(CovError::Shape {
                what: "dense covariance",
                got: vec![other.dim()],
                expected: format!("{}", self.dim()),
            });
        }
        // One pass and one allocation (the matrices are contiguous f64 on the CPU by construction).
        let combined = with_f64(&self.matrix, |x| {
            with_f64(&other.matrix, |y| {
                (x.len() == y.len()).then(|| {
                    x.iter()
                        .zip(y)
                        .map(|(x, y)| a * x + b * y)
                        .collect::<Vec<f64>>()
                })
            })
        });
        let matrix = match combined.flatten().flatten() {
            Some(v) => Tensor::from_vec(v, self.matrix.shape(), &Device::Cpu)?,
            None => ((&self.matrix * a)? + (&other.matrix * b)?)?,
        };
        Ok(Self {
            shape: self.shape,
            matrix,
            mean_diag: Arc::default(),
            cache: Arc::default(),
        })
    }
}

/// `f` of the elements of a contiguous f64 CPU tensor, read in place (None for other tensors).
fn with_f64<R>(t: &Tensor, f: impl FnOnce(&[f64]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    let (a, b) = layout.contiguous_offsets()?;
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F64(v)) => Some(f(&v[a..b])),
        _ => None,
    }
}

pub(crate) fn batch_shape(x: &Tensor) -> Result<(usize, usize, usize)> {
    match x.dims() {
        [_, d] => Ok((1, 1, *d)),
        [_, c, h, w] => Ok((*c, *h, *w)),
        other => Err(CovError::Shape {
            what: "the batch",
            got: other.to_vec(),
            expected: "(B, C, H, W) or (B, d)".into(),
        }),
    }
}

pub(crate) fn check_finite(x: &Tensor, what: &'static str) -> Result<()> {
    let ok = x
        .to_dtype(DType::F64)?
        .abs()?
        .sum_all()?
        .to_scalar::<f64>()?
        .is_finite();
    if ok {
        Ok(())
    } else {
        Err(CovError::NonFinite { what })
    }
}

impl Covariance for Dense {
    fn kind(&self) -> &'static str {
        "dense"
    }
    fn shape(&self) -> (usize, usize, usize) {
        self.shape
    }
    fn matvec(&self, v: &Tensor) -> Result<Tensor> {
        let dims = check_batch(self.shape, v)?;
        let m = {
            let mut cache = self
                .cache
                .lock()
                .map_err(|_| CovError::Invalid("cache lock poisoned".into()))?;
            match cache.as_ref() {
                Some(t) if t.dtype() == v.dtype() && t.device().same_device(v.device()) => {
                    t.clone()
                }
                _ => {
                    let t = self.matrix.to_dtype(v.dtype())?.to_device(v.device())?;
                    *cache = Some(t.clone());
                    t
                }
            }
        };
        let b = dims[0];
        Ok(v.reshape((b, self.dim()))?.matmul(&m)?.reshape(dims)?)
    }
    fn mean_diag(&self) -> f64 {
        *self.mean_diag.get_or_init(|| {
            let d = self.dim();
            // Read the diagonal in place (the matrix is contiguous f64 on the CPU by construction).
            with_f64(&self.matrix, |v| {
                if v.len() == d * d {
                    (0..d).map(|i| v[i * d + i]).sum::<f64>() / d as f64
                } else {
                    f64::NAN
                }
            })
            .unwrap_or(f64::NAN)
        })
    }
    fn to_dense(&self) -> Result<Tensor> {
        Ok(self.matrix.clone())
    }
    fn to_tensors(&self) -> Result<HashMap<String, Tensor>> {
        Ok([
            ("shape".to_string(), shape_tensor(self.shape)?),
            ("matrix".to_string(), self.matrix.clone()),
        ]
        .into())
    }
    fn bytes(&self) -> usize {
        self.dim() * self.dim() * 8
    }
}

/// `Σ = I` (gradient-norm regularisation).
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    shape: (usize, usize, usize),
}

impl Identity {
    pub fn new(shape: (usize, usize, usize)) -> Self {
        Self { shape }
    }
}

impl Covariance for Identity {
    fn kind(&self) -> &'static str {
        "identity"
    }
    fn shape(&self) -> (usize, usize, usize) {
        self.shape
    }
    fn matvec(&self, v: &Tensor) -> Result<Tensor> {
        check_batch(self.shape, v)?;
        Ok(v.clone())
    }
    fn mean_diag(&self) -> f64 {
        1.0
    }
    fn to_dense(&self) -> Result<Tensor> {
        Ok(Tensor::eye(self.dim(), DType::F64, &Device::Cpu)?)
    }
    fn to_tensors(&self) -> Result<HashMap<String, Tensor>> {
        Ok([("shape".to_string(), shape_tensor(self.shape)?)].into())
    }
    fn bytes(&self) -> usize {
        0
    }
}

/// `s · Σ`: e.g. the scaling `σ_t = c / mean diag Σ̂_t` of Algorithm 1 ([`Scaled::to_mean_diag`]).
#[derive(Clone, Debug)]
pub struct Scaled {
    inner: Arc<dyn Covariance>,
    scale: f64,
}

impl Scaled {
    pub fn new(inner: Arc<dyn Covariance>, scale: f64) -> Result<Self> {
        if !scale.is_finite() {
            return Err(CovError::NonFinite { what: "the scale" });
        }
        Ok(Self { inner, scale })
    }

    /// Scales `inner` so that its mean diagonal equals `c` (Algorithm 1: `σ_t = c / mean diag Σ̂_t`).
    pub fn to_mean_diag(inner: Arc<dyn Covariance>, c: f64) -> Result<Self> {
        let md = inner.mean_diag();
        if md <= 0.0 || md.is_nan() {
            return Err(CovError::Invalid(format!(
                "cannot scale a covariance with mean diagonal {md} to {c}"
            )));
        }
        Self::new(inner, c / md)
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn inner(&self) -> &Arc<dyn Covariance> {
        &self.inner
    }
}

impl Covariance for Scaled {
    fn kind(&self) -> &'static str {
        "scaled"
    }
    fn shape(&self) -> (usize, usize, usize) {
        self.inner.shape()
    }
    fn matvec(&self, v: &Tensor) -> Result<Tensor> {
        Ok((self.inner.matvec(v)? * self.scale)?)
    }
    fn mean_diag(&self) -> f64 {
        self.scale * self.inner.mean_diag()
    }
    fn to_dense(&self) -> Result<Tensor> {
        Ok((self.inner.to_dense()? * self.scale)?)
    }
    fn to_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut t: HashMap<String, Tensor> = self
            .inner
            .to_tensors()?
            .into_iter()
            .map(|(k, v)| (format!("inner.{k}"), v))
            .collect();
        t.insert(
            "inner_kind".into(),
            crate::io::kind_tensor(self.inner.kind())?,
        );
        t.insert("scale".into(), Tensor::new(&[self.scale], &Device::Cpu)?);
        Ok(t)
    }
    fn bytes(&self) -> usize {
        self.inner.bytes() + 8
    }
}
