//! The input gradient of the cross-entropy that the gradient attacks step along, and predicted labels.

use candle_core::{D, Result, Tensor, Var};
use candle_nn::Module;

/// The gradient of the summed cross-entropy loss `Σᵢ −log softmax(f(xᵢ))[yᵢ]` with respect to the input (per
/// example, unscaled by the batch size), and the logits. Both are detached: nothing of the graph survives,
/// whatever `CANDLE_GRAD_DO_NOT_DETACH` says.
pub fn loss_gradient(model: &dyn Module, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
    let xv = Var::from_tensor(&x.detach())?;
    let logits = model.forward(xv.as_tensor())?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let loss = logp.gather(&y.unsqueeze(1)?, 1)?.sum_all()?.neg()?;
    let grads = loss.backward()?;
    let g = grads
        .get(xv.as_tensor())
        .ok_or_else(|| {
            candle_core::Error::Msg("the model's output does not depend on its input".into())
        })?
        .detach();
    Ok((g, logits.detach()))
}

/// The model's most likely labels (for perturbations made during training: avoids label leaking).
pub fn predicted_labels(model: &dyn Module, x: &Tensor) -> Result<Tensor> {
    model.forward(&x.detach())?.argmax(D::Minus1)
}
