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

use crate::cnn::{Cnn, Node};
use crate::layers::{Standardized, rows_f64, tensor_from_f64};
use crate::ops::{
    contiguous, conv2d_nhwc, conv2d_nhwc_input_grad, conv2d_nhwc_input_grad_masked,
    max_pool2x2_nhwc, max_pool2x2_nhwc_backward, relu, relu_backward, to_nchw, to_nhwc,
};

/// Zero padding of `p` on both sides of the spatial dimensions of channels-last `x` `(B, H, W, C)`.
pub(crate) fn pad_nhwc(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 0 {
        return Ok(x.clone());
    }
    x.pad_with_zeros(1, p, p)?.pad_with_zeros(2, p, p)
}

/// The adjoint of [`pad_nhwc`]: the interior `(B, H, W, C)` of a padded `(B, H + 2p, W + 2p, C)`.
fn crop_nhwc(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 0 {
        return Ok(x.clone());
    }
    let (_, h, w, _) = x.dims4()?;
    x.narrow(1, p, h - 2 * p)?
        .narrow(2, p, w - 2 * p)?
        .contiguous()
}

/// Every activation the reverse pass needs: the standardised input `z0` and each layer's output, spatial
/// ones channels-last `(B, H, W, C)`, flat ones `(B, N)` (ReLU masks are `output > 0`).
pub(crate) struct Activations {
    pub(crate) z0: Tensor,
    pub(crate) outs: Vec<Tensor>,
}

impl Activations {
    /// The input of layer `l`.
    pub(crate) fn input(&self, l: usize) -> &Tensor {
        if l == 0 { &self.z0 } else { &self.outs[l - 1] }
    }
}

/// The gradients of the reverse pass from the logits: for each layer with parameters, the gradient at its
/// output before its ReLU (`None` for the others, and for layers the pass did not reach); `dz0` at the
/// standardised input, `(B, C, H, W)`, when asked for.
pub(crate) struct Reverse {
    pub(crate) e: Vec<Option<Tensor>>,
    pub(crate) dz0: Option<Tensor>,
}

impl Reverse {
    /// `dz0`, the gradient at the standardised input (an error for a pass made without it).
    pub(crate) fn input(&self) -> Result<&Tensor> {
        self.dz0
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("reverse pass without its input".into()))
    }

    /// The gradient at layer `l`'s output before its ReLU (an error where the pass has none).
    pub(crate) fn at(&self, l: usize) -> Result<&Tensor> {
        self.e.get(l).and_then(Option::as_ref).ok_or_else(|| {
            candle_core::Error::Msg(format!("reverse pass has no gradient at layer {}", l + 1))
        })
    }
}

impl Cnn {
    /// For each layer, whether its output is a ReLU's output, possibly through pools, flattens and ReLUs
    /// after it: where `[output > 0]` is that ReLU's mask (at a window's arg-max the pooled value is the
    /// ReLU's output).
    pub(crate) fn relu_outputs(&self) -> Vec<bool> {
        let layers = &self.config().layers;
        let mut out: Vec<bool> = Vec::with_capacity(layers.len());
        for (l, layer) in layers.iter().enumerate() {
            let carried = l > 0 && out[l - 1] && self.nodes[l].keeps_relu_mask();
            out.push(layer.ends_with_relu() || carried);
        }
        out
    }

    /// The forward pass after standardisation (`z0` `(B, C, H, W)`) on the NHWC ops: logits and activations
    /// (the model's whole CPU forward pass; the activations are kept for the reverse pass).
    pub(crate) fn forward_activations(&self, z0: &Tensor) -> Result<(Tensor, Activations)> {
        let z0 = to_nhwc(z0)?;
        let mut outs: Vec<Tensor> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let x = outs.last().unwrap_or(&z0);
            let y = match node {
                Node::Conv {
                    conv,
                    padding,
                    relu: r,
                    ..
                } => conv2d_nhwc(&pad_nhwc(x, *padding)?, conv.weight(), conv.bias(), *r)?,
                Node::Relu => relu(x)?,
                Node::Pool => max_pool2x2_nhwc(x)?,
                Node::Flatten => to_nchw(x)?.flatten_from(1)?,
                Node::Dense { linear, relu: r } => {
                    let y = linear.forward(x)?;
                    if *r { relu(&y)? } else { y }
                }
            };
            outs.push(y);
        }
        let logits = outs
            .last()
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("a network without layers".into()))?;
        Ok((logits, Activations { z0, outs }))
    }

    /// The reverse pass from `d` (gradient at the logits) to the standardised input, `(B, C, H, W)`. Built
    /// from differentiable ops: linear in `d`, and differentiable in the parameters.
    pub(crate) fn reverse(&self, a: &Activations, d: &Tensor) -> Result<Tensor> {
        Ok(self.reverse_parts(a, d, true)?.input()?.clone())
    }

    /// [`Cnn::reverse`] with the gradient at every parameter layer's output (what the parameter gradients of
    /// `crate::explicit` need); the products below the first parameter layer only `to_input`.
    ///
    /// The gradient reaching a ReLU's output (through pools and flattens) is already masked: each layer
    /// applies the mask of its input's ReLU as it computes its input gradient (fused into the convolution's
    /// transposed product; on the pooled side, a quarter of the work, before a pool's scatter), so a layer's
    /// own ReLU costs nothing here.
    pub(crate) fn reverse_parts(
        &self,
        a: &Activations,
        d: &Tensor,
        to_input: bool,
    ) -> Result<Reverse> {
        let n = self.nodes.len();
        let relu_out = self.relu_outputs();
        let first_param = self
            .config()
            .layers
            .iter()
            .position(|l| l.has_params())
            .unwrap_or(0);
        let mut e: Vec<Option<Tensor>> = vec![None; n];
        let mut d = d.clone();
        for l in (0..n).rev() {
            let input = a.input(l);
            let mask_input = l > 0 && relu_out[l - 1];
            if self.config().layers[l].has_params() {
                e[l] = Some(d.clone());
                if !to_input && l == first_param {
                    break;
                }
            }
            d = match &self.nodes[l] {
                Node::Dense { linear, .. } => {
                    let g = d.matmul(linear.weight())?;
                    if mask_input {
                        relu_backward(&g, input)?
                    } else {
                        g
                    }
                }
                Node::Conv { conv, padding, .. } => {
                    if *padding == 0 && mask_input {
                        conv2d_nhwc_input_grad_masked(&d, conv.weight(), input)?
                    } else {
                        let (_, h, w, _) = input.dims4()?;
                        let p = *padding;
                        let g = conv2d_nhwc_input_grad(&d, conv.weight(), (h + 2 * p, w + 2 * p))?;
                        let g = crop_nhwc(&g, p)?;
                        if mask_input {
                            relu_backward(&g, input)?
                        } else {
                            g
                        }
                    }
                }
                Node::Pool => max_pool2x2_nhwc_backward(&d, input)?,
                Node::Flatten => {
                    let (b, h, w, c) = input.dims4()?;
                    to_nhwc(&d.reshape((b, c, h, w))?)?
                }
                // The gradient arrived masked by [output > 0] = [input > 0].
                Node::Relu => d,
            };
        }
        let dz0 = if to_input { Some(to_nchw(&d)?) } else { None };
        Ok(Reverse { e, dz0 })
    }

    /// `(logits, log p(y|x) per example, ∇_x Σ_i log p(y_i|x_i))`, all three carrying their graphs to the
    /// parameters, so that a loss built from the gradient can be differentiated with one `backward()`
    /// (with `CANDLE_GRAD_DO_NOT_DETACH` set; without it candle drops the second-order terms).
    ///
    /// Same values as differentiating `forward` by autograd (tested to 1e-10 in f64, with the
    /// parameter gradients of a loss on the result). Where [`Cnn::uses_fast_ops`] is false (devices other
    /// than the CPU, whose NHWC ops have no GPU kernels, or plain ops) it is that autograd route.
    pub fn log_lik_input_gradient(
        &self,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let _span = tracing::trace_span!("cnn_input_gradient").entered();
        let x = x.detach();
        if !self.uses_fast_ops(&x) {
            let xv = candle_core::Var::from_tensor(&x)?;
            let logits = self.forward(xv.as_tensor())?;
            let (log_lik, _, _) = log_lik_parts(&logits, y)?;
            let grads = log_lik.sum_all()?.backward()?;
            let dx = grads
                .get(xv.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("no input gradient".into()))?
                .clone();
            return Ok((logits, log_lik, dx));
        }
        let std = crate::layers::standardize_parts(&x)?;
        let (logits, acts) = self.forward_activations(&std.standardized)?;
        let (log_lik, _, d) = log_lik_parts(&logits, y)?;
        let (_, dx) = self.reverse_to_input(&std, &acts, &d)?;
        Ok((logits, log_lik, dx))
    }

    /// The reverse pass from `d` at the logits through the standardisation `std` of the input: its
    /// intermediates and the gradient with respect to the raw input, shaped like it.
    pub(crate) fn reverse_to_input(
        &self,
        std: &Standardized,
        acts: &Activations,
        d: &Tensor,
    ) -> Result<(Reverse, Tensor)> {
        let rev = self.reverse_parts(acts, d, true)?;
        let dz = rev.input()?.reshape(std.flat.shape())?;
        let dx = standardize_jacobian(&dz, &std.flat, &std.denom, &std.active)?
            .reshape(std.standardized.shape())?;
        Ok((rev, dx))
    }
}

/// `(log p(y|x) per example, softmax p, onehot(y) − p)` from the logits `(B, K)`: the last is the gradient of
/// the log-likelihood at the logits, where the reverse pass starts.
pub(crate) fn log_lik_parts(logits: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let log_lik = logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
    let probs = logp.exp()?;
    let k = logits.dim(1)?;
    let classes = Tensor::arange(0u32, k as u32, y.device())?.unsqueeze(0)?;
    let onehot = y
        .unsqueeze(1)?
        .broadcast_eq(&classes)?
        .to_dtype(logits.dtype())?;
    let delta = (onehot - &probs)?;
    Ok((log_lik, probs, delta))
}

/// The Jacobian of per-image standardisation applied to `dz` `(B, N)`: `(dz − mean dz − [var > 1/N]·s0·
/// mean(dz·s0)) / σ`, with `s0` the standardised images `(B, N)`. The Jacobian
/// `(I − 11ᵀ/N − s0 s0ᵀ/N)/σ` is symmetric, so this is also its transpose (the backward pass).
pub(crate) fn standardize_jacobian(
    dz: &Tensor,
    s0: &Tensor,
    denom: &Tensor,
    active: &Tensor,
) -> Result<Tensor> {
    let tracked = [dz, s0, denom, active].iter().any(|t| t.track_op());
    if !tracked && dz.device().is_cpu() {
        // Outside a graph: one pass per image instead of eight tensor operations.
        let (b, n) = dz.dims2()?;
        let (mut g, z) = (rows_f64(dz)?, rows_f64(s0)?);
        let (den, act) = (rows_f64(denom)?, rows_f64(active)?);
        for (i, (row, zr)) in g.chunks_mut(n.max(1)).zip(z.chunks(n.max(1))).enumerate() {
            let mean = row.iter().sum::<f64>() / n as f64;
            let proj = row.iter().zip(zr).map(|(a, z)| a * z).sum::<f64>() / n as f64 * act[i];
            for (a, z) in row.iter_mut().zip(zr) {
                *a = (*a - mean - z * proj) / den[i];
            }
        }
        return tensor_from_f64(g, &[b, n], dz.dtype());
    }
    let mean_dz = dz.mean_keepdim(D::Minus1)?;
    let proj = (dz * s0)?.mean_keepdim(D::Minus1)?;
    dz.broadcast_sub(&mean_dz)?
        .sub(&s0.broadcast_mul(&(proj * active)?)?)?
        .broadcast_div(denom)
}

/// The network after standardisation, with frozen (detached) parameters, as one custom op: the forward pass
/// keeps its activations in the op, and the backward pass is [`Cnn::reverse`]. Autograd through a frozen
/// model then costs one forward and one input-only reverse pass, without a graph node (and its gradient
/// buffer) per layer. The network is piecewise linear in its input, so the reverse pass depends on the
/// input only through constant masks, and returning it as a function of the incoming gradient alone is exact
/// to any order (curvature of the loss and of the standardisation stays outside, in candle's graph).
pub(crate) struct FrozenNet {
    net: Cnn,
    saved: std::sync::Mutex<Option<std::sync::Arc<Activations>>>,
}

impl FrozenNet {
    pub(crate) fn new(net: Cnn) -> Self {
        Self {
            net,
            saved: std::sync::Mutex::new(None),
        }
    }
}

fn lock_error<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("sgr-frozen-net: activation lock poisoned".into())
}

impl candle_core::CustomOp1 for FrozenNet {
    fn name(&self) -> &'static str {
        "sgr-frozen-net"
    }
    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let dev = candle_core::Device::Cpu;
        let z = match s {
            CpuStorage::F32(v) => {
                Tensor::from_slice(contiguous(v, l, self.name())?, l.shape(), &dev)?
            }
            CpuStorage::F64(v) => {
                Tensor::from_slice(contiguous(v, l, self.name())?, l.shape(), &dev)?
            }
            _ => candle_core::bail!("sgr-frozen-net: f32 or f64 only"),
        };
        let (logits, acts) = self.net.forward_activations(&z)?;
        *self.saved.lock().map_err(lock_error)? = Some(std::sync::Arc::new(acts));
        let shape = logits.shape().clone();
        let out = match logits.dtype() {
            candle_core::DType::F32 => CpuStorage::F32(logits.flatten_all()?.to_vec1()?),
            _ => CpuStorage::F64(logits.flatten_all()?.to_vec1()?),
        };
        Ok((out, shape))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let acts = self
            .saved
            .lock()
            .map_err(lock_error)?
            .clone()
            .ok_or_else(|| {
                candle_core::Error::Msg("sgr-frozen-net: backward before forward".into())
            })?;
        Ok(Some(self.net.reverse(&acts, grad)?))
    }
}
