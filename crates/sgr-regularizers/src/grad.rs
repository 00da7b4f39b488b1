//! Input gradients of the log-likelihood (the g of Ω) by autograd, kept differentiable, and Ω's value from them.

use candle_core::{D, Module, Tensor, Var};

use crate::error::{RegError, Result};

/// One forward pass and the input gradient of the log-likelihood of the labels.
#[derive(Debug)]
pub struct InputGradient {
    /// The input as a variable of the graph (a copy of `x`).
    pub x: Tensor,
    /// `f(x)`, `(B, K)`, with its graph.
    pub logits: Tensor,
    /// `log softmax(f(x_i))[y_i]`, `(B,)`, with its graph.
    pub log_lik: Tensor,
    /// `g_i = ∇_x log softmax(f(x_i))[y_i]`, shaped like `x`. Carries its graph (to the parameters) when
    /// asked for with `create_graph`, detached otherwise.
    pub grad: Tensor,
}

/// Per-example log-likelihood of the labels `y` (u32, `(B,)`) under `logits` `(B, K)`.
pub fn log_likelihood(logits: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)
}

/// Runs `model` on `x` and differentiates `Σ_i log p(y_i | x_i)` with respect to `x`, which gives each
/// example's own input gradient (the models here treat examples independently).
///
/// With `create_graph` the gradient keeps its graph, so that a loss built from it can be differentiated
/// again; that needs double backprop to work in this thread (checked: an error, never a silently detached
/// gradient).
pub fn input_gradient(
    model: &dyn Module,
    x: &Tensor,
    y: &Tensor,
    create_graph: bool,
) -> Result<InputGradient> {
    let xv = Var::from_tensor(&x.detach())?;
    let x = xv.as_tensor().clone();
    let logits = model.forward(&x)?;
    let log_lik = log_likelihood(&logits, y)?;
    let grads = log_lik.sum_all()?.backward()?;
    let grad = grads
        .get(&x)
        .ok_or_else(|| RegError::Config("the model's output does not depend on its input".into()))?
        .clone();
    let grad = if create_graph {
        if !grad.track_op() {
            return Err(RegError::NoDoubleBackprop);
        }
        grad
    } else {
        grad.detach()
    };
    Ok(InputGradient {
        x,
        logits,
        log_lik,
        grad,
    })
}

/// [`input_gradient`] for the finite-difference modes, which need no graph on the gradient: the gradient
/// comes from `frozen` (the same function with parameters that are not variables, so the backward pass
/// computes input gradients only, about half the work), the logits and log-likelihoods from `model` (with
/// their graph to the parameters).
pub fn input_gradient_split(
    model: &dyn Module,
    frozen: &dyn Module,
    x: &Tensor,
    y: &Tensor,
) -> Result<InputGradient> {
    let probe = input_gradient(frozen, x, y, false)?;
    let x = x.detach();
    let logits = model.forward(&x)?;
    let log_lik = log_likelihood(&logits, y)?;
    Ok(InputGradient {
        x,
        logits,
        log_lik,
        grad: probe.grad,
    })
}

/// The value `Ω = 1/(2m) Σ_i g_iᵀ Σ g_i − 1/m Σ_i g_iᵀ μ` for gradients `g` `(m, …)`, a (scaled) covariance
/// `cov` and an optional mean `μ` (per-item shape). Differentiable through `g` when `g` carries a graph.
pub fn omega_value(
    g: &Tensor,
    cov: &dyn sgr_covariance::Covariance,
    mu: Option<&Tensor>,
) -> Result<Tensor> {
    omega_from_product(g, &cov.matvec(g)?, mu)
}

/// [`omega_value`] when `v = Σ g` is already at hand.
pub(crate) fn omega_from_product(g: &Tensor, v: &Tensor, mu: Option<&Tensor>) -> Result<Tensor> {
    let m = g.dim(0)? as f64;
    let mut omega = ((g * v)?.sum_all()? * (0.5 / m))?;
    if let Some(mu) = mu {
        let mu = mu.to_dtype(g.dtype())?.to_device(g.device())?;
        let lin = (g.broadcast_mul(&mu.unsqueeze(0)?)?.sum_all()? / m)?;
        omega = (omega - lin)?;
    }
    Ok(omega)
}
