use candle_core::{D, Result, Tensor};

/// Per-image standardisation `(x − mean) / max(std, 1/√N)` over each image's `N = C·H·W` values, with the
/// population standard deviation (as TensorFlow's `per_image_standardization`).
///
/// Computed as `sqrt(max(var, 1/N))`, which is the same value and keeps the gradient finite for constant
/// images (`sqrt` has an infinite slope at 0).
pub fn standardize(x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let b = dims[0];
    let n: usize = dims[1..].iter().product();
    let flat = x.reshape((b, n))?;
    let mean = flat.mean_keepdim(D::Minus1)?;
    let centred = flat.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let floor = 1.0 / n as f64;
    let denom = var.maximum(floor)?.sqrt()?;
    centred.broadcast_div(&denom)?.reshape(dims)
}

/// 2×2 max-pooling with stride 2 on `(B, C, H, W)`, flooring odd sizes like PyTorch.
///
/// Written as a reshape and two `max` reductions: candle's `max_pool2d` backward scales gradients by 1/4,
/// while the reductions' backward is exact to first and second order.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.narrow(2, 0, 2 * h2)?.narrow(3, 0, 2 * w2)?
    } else {
        x.clone()
    };
    x.reshape((b, c, h2, 2, w2, 2))?.max(5)?.max(3)
}
