//! The one gradient entry point of the training methods: a forward pass (with the input gradient when asked)
//! and the parameter gradients of `w·Σ_i −log p(y_i|x_i) + ⟨a, g⟩` by name, on whichever route the model
//! takes — explicit passes on the CPU's channels-last ops, autograd on candle's layers (GPUs, `--plain-ops`).
//!
//! The adjoint `a = ∂P/∂g` (detached) turns any penalty `P(g)` of the input gradient into the linear term
//! `⟨a, g⟩`, which has the same parameter gradient as `P` at this point; so a method computes `P`'s value and
//! adjoint once and never needs a graph through `P` itself.

use std::collections::HashMap;

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use sgr_models::{Cnn, ExplicitPass};
use sgr_regularizers::{input_gradient, log_likelihood};

/// A forward pass made by [`forward_pass`].
pub(crate) enum Pass {
    Explicit(ExplicitPass),
    Autograd {
        logits: Tensor,
        log_lik: Tensor,
        /// With the graph to the parameters (double backprop).
        input_grad: Option<Tensor>,
    },
}

impl Pass {
    /// `f(x)`, `(B, K)`, detached.
    pub fn logits(&self) -> Result<Tensor> {
        Ok(match self {
            Pass::Explicit(p) => p.logits.clone(),
            Pass::Autograd { logits, .. } => logits.detach(),
        })
    }

    /// `log p(y_i|x_i)`, `(B,)`, detached.
    pub fn log_lik(&self) -> Tensor {
        match self {
            Pass::Explicit(p) => p.log_lik.clone(),
            Pass::Autograd { log_lik, .. } => log_lik.detach(),
        }
    }

    /// `g_i = ∇_x log p(y_i|x_i)`, detached, when the pass was asked for it.
    pub fn input_grad(&self) -> Option<Tensor> {
        match self {
            Pass::Explicit(p) => p.input_grad.clone(),
            Pass::Autograd { input_grad, .. } => input_grad.as_ref().map(Tensor::detach),
        }
    }

    /// The mean cross-entropy, detached.
    pub fn cross_entropy(&self) -> Result<Tensor> {
        self.log_lik().mean(0)?.neg()
    }
}

/// The forward pass of `model` on `(x, y)`, with `g = ∇_x log p(y|x)` when `input_grad`: explicit on the
/// channels-last CPU path, else through autograd (keeping `g`'s graph, which needs double backprop in this
/// thread: an error otherwise, never a silently first-order gradient).
pub(crate) fn forward_pass(model: &Cnn, x: &Tensor, y: &Tensor, input_grad: bool) -> Result<Pass> {
    if model.uses_fast_ops(x) {
        return Ok(Pass::Explicit(model.explicit_pass(x, y, input_grad)?));
    }
    if input_grad {
        let ig = input_gradient(model, x, y, true)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        return Ok(Pass::Autograd {
            logits: ig.logits,
            log_lik: ig.log_lik,
            input_grad: Some(ig.grad),
        });
    }
    let logits = candle_core::Module::forward(model, &x.detach())?;
    let log_lik = log_likelihood(&logits, y).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Ok(Pass::Autograd {
        logits,
        log_lik,
        input_grad: None,
    })
}

/// The gradients by parameter name of `ce_weight · Σ_i −log p(y_i|x_i) + ⟨adjoint, g⟩` (`adjoint`: `∂P/∂g`,
/// shaped like `x`; it needs a pass made with the input gradient). `params` are the model's variables.
pub(crate) fn parameter_gradients(
    model: &Cnn,
    params: &VarMap,
    pass: &Pass,
    ce_weight: f64,
    adjoint: Option<&Tensor>,
) -> Result<HashMap<String, Tensor>> {
    match pass {
        Pass::Explicit(p) => Ok(model
            .explicit_gradients(p, ce_weight, adjoint)?
            .into_iter()
            .collect()),
        Pass::Autograd {
            log_lik,
            input_grad,
            ..
        } => {
            let mut objective = (log_lik.sum_all()?.neg()? * ce_weight)?;
            if let Some(a) = adjoint {
                let g = input_grad.as_ref().ok_or_else(|| {
                    candle_core::Error::Msg(
                        "an adjoint needs a pass with the input gradient".into(),
                    )
                })?;
                objective = (objective + (g * a.detach())?.sum_all()?)?;
            }
            let grads = objective.backward()?;
            let vars = params
                .data()
                .lock()
                .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
            vars.iter()
                .map(|(name, var)| {
                    // Every parameter must get a gradient (Adam refuses to skip one silently).
                    let g = grads.get(var.as_tensor()).ok_or_else(|| {
                        candle_core::Error::Msg(format!("no gradient reaches parameter {name}"))
                    })?;
                    Ok((name.clone(), g.detach()))
                })
                .collect()
        }
    }
}
