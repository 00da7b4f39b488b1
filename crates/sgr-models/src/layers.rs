//! Layers on candle's own ops for any device: per-image standardisation, ReLU (derivative 0 at 0), 2×2 max-pool.

use candle_core::{D, DType, Result, Tensor};

/// Per-image standardisation `(x − mean) / max(std, 1/√N)` over each image's `N = C·H·W` values, with the
/// population standard deviation (as TensorFlow's `per_image_standardization`).
///
/// Computed as `sqrt(max(var, 1/N))`, which is the same value and keeps the gradient finite for constant
/// images (`sqrt` has an infinite slope at 0).
pub fn standardize(x: &Tensor) -> Result<Tensor> {
    Ok(standardize_parts(x)?.standardized)
}

/// [`standardize`] and what its Jacobian needs (see `Cnn::log_lik_input_gradient`).
pub(crate) struct Standardized {
    /// The result, shaped like the input.
    pub standardized: Tensor,
    /// The same, flattened to `(B, N)`.
    pub flat: Tensor,
    /// `sqrt(max(var, 1/N))`, `(B, 1)`.
    pub denom: Tensor,
    /// `var > 1/N` as 0/1 in the input's dtype, `(B, 1)`: where the denominator depends on the input.
    pub active: Tensor,
}

pub(crate) fn standardize_parts(x: &Tensor) -> Result<Standardized> {
    if !x.track_op() && x.device().is_cpu() && x.rank() >= 2 {
        return standardize_plain(x);
    }
    let dims = x.dims().to_vec();
    let b = dims[0];
    let n: usize = dims[1..].iter().product();
    let flat = x.reshape((b, n))?;
    // Sums divided by N (candle's `mean` multiplies by a rounded 1/N): a constant image then centres to
    // exactly 0, as in `standardize_plain`, instead of to rounding noise whose signs would set ReLU masks.
    let count = Tensor::new(n as f64, x.device())?.to_dtype(x.dtype())?;
    let mean = flat.sum_keepdim(D::Minus1)?.broadcast_div(&count)?;
    let centred = flat.broadcast_sub(&mean)?;
    let var = centred
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .broadcast_div(&count)?;
    let floor = 1.0 / n as f64;
    let denom = var.maximum(floor)?.sqrt()?;
    let active = var.detach().gt(floor)?.to_dtype(x.dtype())?;
    let flat = centred.broadcast_div(&denom)?;
    Ok(Standardized {
        standardized: flat.reshape(dims)?,
        flat,
        denom,
        active,
    })
}

/// A tensor's values as f64, row by row (`(B, N)` flattened).
pub(crate) fn rows_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// `v` as a tensor of `shape` in `dtype` on the CPU.
pub(crate) fn tensor_from_f64(v: Vec<f64>, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)?.to_dtype(dtype)
}

/// [`standardize_parts`] outside a graph, in one pass per image (in f64) instead of ten tensor operations.
fn standardize_plain(x: &Tensor) -> Result<Standardized> {
    let dims = x.dims().to_vec();
    let b = dims[0];
    let n: usize = dims[1..].iter().product();
    let mut v = rows_f64(x)?;
    let floor = 1.0 / n as f64;
    let (mut denom, mut active) = (Vec::with_capacity(b), Vec::with_capacity(b));
    for row in v.chunks_mut(n.max(1)) {
        let mean = row.iter().sum::<f64>() / n as f64;
        let var = row.iter().map(|&a| (a - mean) * (a - mean)).sum::<f64>() / n as f64;
        let d = var.max(floor).sqrt();
        for a in row.iter_mut() {
            *a = (*a - mean) / d;
        }
        denom.push(d);
        active.push(if var > floor { 1.0 } else { 0.0 });
    }
    let dt = x.dtype();
    let flat = tensor_from_f64(v, &[b, n], dt)?;
    Ok(Standardized {
        standardized: flat.reshape(dims)?,
        flat,
        denom: tensor_from_f64(denom, &[b, 1], dt)?,
        active: tensor_from_f64(active, &[b, 1], dt)?,
    })
}

/// `max(x, 0)` with derivative 0 at 0, like PyTorch's and the channels-last op's (candle's `relu` backward
/// passes the gradient where the input is exactly 0, e.g. a constant image under a zero bias). The mask is a
/// constant, so the derivative is exact to any order. Any device.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.mul(&x.gt(0.0)?.to_dtype(x.dtype())?)
}

/// 2×2 max-pooling with stride 2 on `(B, C, H, W)`, flooring odd sizes like PyTorch.
///
/// Built from element-wise selects so that it runs on any device and its gradient goes, like PyTorch's
/// and the channels-last CPU op's, to the first maximum of each window in row-major order (strict
/// comparisons; the selection masks are constants, so the derivative is exact to any order). Candle's
/// `max_pool2d` backward scales gradients by 1/4, and a reshape + `max` reduction passes a tied window's
/// gradient to every maximum: on images with flat regions (the background of a digit) that inflated input
/// gradients by tens of percent.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.narrow(2, 0, 2 * h2)?.narrow(3, 0, 2 * w2)?
    } else {
        x.clone()
    };
    let x = x.reshape((b, c, h2, 2, w2, 2))?;
    let at = |i: usize, j: usize| x.narrow(3, i, 1)?.narrow(5, j, 1);
    // Later positions win only when strictly greater than every earlier one.
    let mut best = at(0, 0)?;
    for (i, j) in [(0, 1), (1, 0), (1, 1)] {
        let next = at(i, j)?;
        best = next.gt(&best)?.where_cond(&next, &best)?;
    }
    best.reshape((b, c, h2, w2))
}
