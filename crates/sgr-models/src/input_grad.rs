//! The input gradient of the log-likelihood as an explicit graph of forward operations.
//!
//! Double backprop through candle's `backward()` computes, in its first pass, the gradients of every
//! parameter too (they are variables), although only the input gradient is needed; that work is wasted and
//! its graph kept. Here the reverse pass is written out layer by layer with ordinary differentiable tensor
//! ops (transposed products with the weights, ReLU and max-pool masks, the standardisation's Jacobian), so the
//! input gradient costs about one input-only backward pass and differentiating it again with respect to the
//! parameters is one ordinary `backward()` (as PyTorch's `autograd.grad(create_graph=True)` prunes it).
//! Masks are constants (their derivative is zero almost everywhere), exactly as in autograd.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Conv2d, Linear};

use crate::cnn::Cnn;
use crate::ops::conv2d_valid_input_grad;

fn positive(a: &Tensor) -> Result<Tensor> {
    a.detach().gt(0.0)?.to_dtype(a.dtype())
}

/// Routes `dp` (pooled gradient) to the arg-max positions of each 2×2 window of `r` (ties share, as in
/// autograd's `max` backward); odd trailing rows/columns get zero.
fn pool_backward(r: &Tensor, p: &Tensor, dp: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = r.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let rc = r.detach().narrow(2, 0, 2 * h2)?.narrow(3, 0, 2 * w2)?;
    let mask = rc
        .reshape((b, c, h2, 2, w2, 2))?
        .broadcast_eq(&p.detach().reshape((b, c, h2, 1, w2, 1))?)?
        .to_dtype(r.dtype())?;
    let d = mask
        .broadcast_mul(&dp.reshape((b, c, h2, 1, w2, 1))?)?
        .reshape((b, c, 2 * h2, 2 * w2))?;
    if h % 2 == 1 || w % 2 == 1 {
        d.pad_with_zeros(2, 0, h % 2)?.pad_with_zeros(3, 0, w % 2)
    } else {
        Ok(d)
    }
}

fn fc_back(layer: &Linear, d: &Tensor) -> Result<Tensor> {
    d.matmul(layer.weight())
}

fn conv_back(layer: &Conv2d, d: &Tensor, input: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = input.dims4()?;
    conv2d_valid_input_grad(d, layer.weight(), (h, w))
}

impl Cnn {
    /// `(logits, log p(y|x) per example, ∇_x Σ_i log p(y_i|x_i))`, all three carrying their graphs to the
    /// parameters, so that a loss built from the gradient can be differentiated with one `backward()`
    /// (with `CANDLE_GRAD_DO_NOT_DETACH` set; without it candle drops the second-order terms).
    ///
    /// Same values as differentiating `forward` by autograd (tested to 1e-12 in f64, with the
    /// parameter gradients of a loss on the result). On devices other than the CPU, or with plain ops,
    /// callers should use autograd instead: the `fold` op has no GPU kernel.
    pub fn log_lik_input_gradient(
        &self,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let _span = tracing::trace_span!("cnn_input_gradient").entered();
        let x = x.detach();
        let dims = x.dims().to_vec();
        let b = dims[0];
        let n: usize = dims[1..].iter().product();
        // Standardisation, with what its Jacobian needs.
        let crate::layers::Standardized {
            standardized: z0,
            flat: s0,
            denom,
            active,
        } = crate::layers::standardize_parts(&x)?;
        // Forward, keeping pre-activations.
        let c = |l: &Conv2d, t: &Tensor| self.conv_layer(l, t);
        let a1 = c(&self.conv1, &z0)?;
        let r1 = a1.relu()?;
        let a2 = c(&self.conv2, &r1)?;
        let r2 = a2.relu()?;
        let p2 = crate::max_pool2x2(&r2)?;
        let a3 = c(&self.conv3, &p2)?;
        let r3 = a3.relu()?;
        let a4 = c(&self.conv4, &r3)?;
        let r4 = a4.relu()?;
        let p4 = crate::max_pool2x2(&r4)?;
        let f = p4.flatten_from(1)?;
        let a5 = self.fc1.forward(&f)?;
        let r5 = a5.relu()?;
        let a6 = self.fc2.forward(&r5)?;
        let r6 = a6.relu()?;
        let logits = self.fc3.forward(&r6)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let log_lik = logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
        // Reverse pass: d log p_y / d logits = onehot(y) − softmax.
        let k = logits.dim(1)?;
        let classes = Tensor::arange(0u32, k as u32, y.device())?.unsqueeze(0)?;
        let onehot = y
            .unsqueeze(1)?
            .broadcast_eq(&classes)?
            .to_dtype(logits.dtype())?;
        let d = (onehot - logp.exp()?)?;
        let d = (fc_back(&self.fc3, &d)? * positive(&a6)?)?;
        let d = (fc_back(&self.fc2, &d)? * positive(&a5)?)?;
        let d = fc_back(&self.fc1, &d)?.reshape(p4.dims())?;
        let d = (pool_backward(&r4, &p4, &d)? * positive(&a4)?)?;
        let d = (conv_back(&self.conv4, &d, &r3)? * positive(&a3)?)?;
        let d = conv_back(&self.conv3, &d, &p2)?;
        let d = (pool_backward(&r2, &p2, &d)? * positive(&a2)?)?;
        let d = (conv_back(&self.conv2, &d, &r1)? * positive(&a1)?)?;
        let dz = conv_back(&self.conv1, &d, &z0)?.reshape((b, n))?;
        // Standardisation's Jacobian (transposed): (dz − mean dz − [var > 1/N]·s0·mean(dz·s0)) / σ.
        let mean_dz = dz.mean_keepdim(D::Minus1)?;
        let proj = (&dz * &s0)?.mean_keepdim(D::Minus1)?;
        let dx = dz
            .broadcast_sub(&mean_dz)?
            .sub(&s0.broadcast_mul(&(proj * active)?)?)?
            .broadcast_div(&denom)?
            .reshape(dims.as_slice())?;
        Ok((logits, log_lik, dx))
    }

    /// Whether [`Cnn::log_lik_input_gradient`] can run here (CPU tensors, custom ops enabled).
    pub fn has_explicit_input_gradient(&self, x: &Tensor) -> bool {
        !self.plain_ops && x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
    }
}
