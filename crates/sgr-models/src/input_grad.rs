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
use crate::layers::{Standardized, rows_f64, tensor_from_f64};
use crate::ops::{
    contiguous, conv2d_nhwc, conv2d_nhwc_input_grad, conv2d_nhwc_input_grad_masked,
    max_pool2x2_nhwc, max_pool2x2_nhwc_backward, relu, relu_backward, to_nchw, to_nhwc,
};

fn fc_back(layer: &Linear, d: &Tensor) -> Result<Tensor> {
    d.matmul(layer.weight())
}

/// Back through a convolution whose input was `input` `(B, H, W, C)`.
fn conv_back(layer: &Conv2d, d: &Tensor, input: &Tensor) -> Result<Tensor> {
    let (_, h, w, _) = input.dims4()?;
    conv2d_nhwc_input_grad(d, layer.weight(), (h, w))
}

/// Every activation the reverse pass needs, channels-last (ReLU masks are `output > 0`).
pub(crate) struct Activations {
    pub(crate) z0: Tensor,
    pub(crate) r1: Tensor,
    pub(crate) r2: Tensor,
    pub(crate) p2: Tensor,
    pub(crate) r3: Tensor,
    pub(crate) r4: Tensor,
    /// `p4` in `(B, C, H, W)`, as fc1 sees it.
    pub(crate) p4c: Tensor,
    pub(crate) r5: Tensor,
    pub(crate) r6: Tensor,
}

/// The gradients of the reverse pass from the logits (channels-last where spatial): `e*` after a ReLU mask,
/// `q*` after a pool's scatter; `dz0` at the standardised input, `(B, C, H, W)`, when asked for.
pub(crate) struct Reverse {
    pub(crate) e6: Tensor,
    pub(crate) e5: Tensor,
    pub(crate) q4: Tensor,
    pub(crate) e3: Tensor,
    pub(crate) q2: Tensor,
    pub(crate) e1: Tensor,
    pub(crate) dz0: Option<Tensor>,
}

impl Reverse {
    /// `dz0`, the gradient at the standardised input (an error for a pass made without it).
    pub(crate) fn input(&self) -> Result<&Tensor> {
        self.dz0
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("reverse pass without its input".into()))
    }
}

impl Cnn {
    /// The forward pass after standardisation (`z0` `(B, C, H, W)`) on the NHWC ops: logits and activations
    /// (the model's whole CPU forward pass; the activations are kept for the reverse pass).
    pub(crate) fn forward_activations(&self, z0: &Tensor) -> Result<(Tensor, Activations)> {
        let z0 = to_nhwc(z0)?;
        let c = |l: &Conv2d, t: &Tensor| conv2d_nhwc(t, l.weight(), l.bias(), true);
        let r1 = c(&self.conv1, &z0)?;
        let r2 = c(&self.conv2, &r1)?;
        let p2 = max_pool2x2_nhwc(&r2)?;
        let r3 = c(&self.conv3, &p2)?;
        let r4 = c(&self.conv4, &r3)?;
        let p4 = max_pool2x2_nhwc(&r4)?;
        let p4c = to_nchw(&p4)?;
        let r5 = relu(&self.fc1.forward(&p4c.flatten_from(1)?)?)?;
        let r6 = relu(&self.fc2.forward(&r5)?)?;
        let logits = self.fc3.forward(&r6)?;
        let acts = Activations {
            z0,
            r1,
            r2,
            p2,
            r3,
            r4,
            p4c,
            r5,
            r6,
        };
        Ok((logits, acts))
    }

    /// The reverse pass from `d` (gradient at the logits) to the standardised input, `(B, C, H, W)`. Built
    /// from differentiable ops: linear in `d`, and differentiable in the parameters.
    pub(crate) fn reverse(&self, a: &Activations, d: &Tensor) -> Result<Tensor> {
        Ok(self.reverse_parts(a, d, true)?.input()?.clone())
    }

    /// [`Cnn::reverse`] with the intermediate gradients (what the parameter gradients of `crate::explicit`
    /// need); the last product, to the input, only `to_input`.
    pub(crate) fn reverse_parts(
        &self,
        a: &Activations,
        d: &Tensor,
        to_input: bool,
    ) -> Result<Reverse> {
        let e6 = relu_backward(&fc_back(&self.fc3, d)?, &a.r6)?;
        let e5 = relu_backward(&fc_back(&self.fc2, &e6)?, &a.r5)?;
        // The ReLU before a pool is masked on the pooled side: the scatter puts each pooled gradient at its
        // window's arg-max, whose value is the pooled value (same numbers, a quarter of the work).
        let e4 = relu_backward(&fc_back(&self.fc1, &e5)?.reshape(a.p4c.dims())?, &a.p4c)?;
        let q4 = max_pool2x2_nhwc_backward(&to_nhwc(&e4)?, &a.r4)?;
        let e3 = conv2d_nhwc_input_grad_masked(&q4, self.conv4.weight(), &a.r3)?;
        let e2 = conv2d_nhwc_input_grad_masked(&e3, self.conv3.weight(), &a.p2)?;
        let q2 = max_pool2x2_nhwc_backward(&e2, &a.r2)?;
        let e1 = conv2d_nhwc_input_grad_masked(&q2, self.conv2.weight(), &a.r1)?;
        let dz0 = if to_input {
            Some(to_nchw(&conv_back(&self.conv1, &e1, &a.z0)?)?)
        } else {
            None
        };
        Ok(Reverse {
            e6,
            e5,
            q4,
            e3,
            q2,
            e1,
            dz0,
        })
    }

    /// `(logits, log p(y|x) per example, ∇_x Σ_i log p(y_i|x_i))`, all three carrying their graphs to the
    /// parameters, so that a loss built from the gradient can be differentiated with one `backward()`
    /// (with `CANDLE_GRAD_DO_NOT_DETACH` set; without it candle drops the second-order terms).
    ///
    /// Same values as differentiating `forward` by autograd (tested to 1e-10 in f64, with the
    /// parameter gradients of a loss on the result). On devices other than the CPU, or with plain ops
    /// (where [`Cnn::uses_fast_ops`] is false), callers should use autograd instead: the NHWC ops have no
    /// GPU kernels.
    pub fn log_lik_input_gradient(
        &self,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let _span = tracing::trace_span!("cnn_input_gradient").entered();
        let x = x.detach();
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
