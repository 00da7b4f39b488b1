//! The input gradient of the log-likelihood as an explicit graph of forward operations.
//!
//! Double backprop through candle's `backward()` computes, in its first pass, the gradients of every
//! parameter too (they are variables), although only the input gradient is needed; that work is wasted and
//! its graph kept. Here the reverse pass is written out layer by layer with ordinary differentiable tensor
//! ops (transposed products with the weights, ReLU and max-pool masks, the standardisation's Jacobian), so the
//! input gradient costs about one input-only backward pass and differentiating it again with respect to the
//! parameters is one ordinary `backward()` (as PyTorch's `autograd.grad(create_graph=True)` prunes it).
//! Masks are constants (their derivative is zero almost everywhere), exactly as in autograd.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Conv2d, Linear};

use crate::cnn::Cnn;
use crate::ops::{
    conv2d_nhwc_input_grad, max_pool2x2_nhwc, max_pool2x2_nhwc_backward, relu, relu_backward,
    to_nchw, to_nhwc,
};

fn fc_back(layer: &Linear, d: &Tensor) -> Result<Tensor> {
    d.matmul(layer.weight())
}

/// Back through a convolution whose input was `input` `(B, H, W, C)`.
fn conv_back(layer: &Conv2d, d: &Tensor, input: &Tensor) -> Result<Tensor> {
    let (_, h, w, _) = input.dims4()?;
    conv2d_nhwc_input_grad(d, layer.weight(), (h, w))
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
        // Forward on the channels-last ops, keeping every activation (ReLU masks: output > 0).
        let z0 = to_nhwc(&z0)?;
        let c = |l: &Conv2d, t: &Tensor| self.conv_relu_nhwc(l, t);
        let r1 = c(&self.conv1, &z0)?;
        let r2 = c(&self.conv2, &r1)?;
        let p2 = max_pool2x2_nhwc(&r2)?;
        let r3 = c(&self.conv3, &p2)?;
        let r4 = c(&self.conv4, &r3)?;
        let p4 = max_pool2x2_nhwc(&r4)?;
        let p4c = to_nchw(&p4)?;
        let f = p4c.flatten_from(1)?;
        let r5 = relu(&self.fc1.forward(&f)?)?;
        let r6 = relu(&self.fc2.forward(&r5)?)?;
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
        let d = relu_backward(&fc_back(&self.fc3, &d)?, &r6)?;
        let d = relu_backward(&fc_back(&self.fc2, &d)?, &r5)?;
        let d = to_nhwc(&fc_back(&self.fc1, &d)?.reshape(p4c.dims())?)?;
        let d = relu_backward(&max_pool2x2_nhwc_backward(&d, &r4)?, &r4)?;
        let d = relu_backward(&conv_back(&self.conv4, &d, &r3)?, &r3)?;
        let d = conv_back(&self.conv3, &d, &p2)?;
        let d = relu_backward(&max_pool2x2_nhwc_backward(&d, &r2)?, &r2)?;
        let d = relu_backward(&conv_back(&self.conv2, &d, &r1)?, &r1)?;
        let dz = to_nchw(&conv_back(&self.conv1, &d, &z0)?)?.reshape((b, n))?;
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
        self.uses_fast_ops(x)
    }
}
