//! How second-order gradients are taken (exact double backprop or finite differences) and the check that candle's double backprop is on.

use candle_core::{Device, Var};

use crate::error::{RegError, Result};

/// The environment variable that makes Candle's `backward()` keep the graphs of the gradients it returns.
pub const DOUBLE_BACKPROP_ENV: &str = "CANDLE_GRAD_DO_NOT_DETACH";

/// How the parameter gradient of `Ω` (a second derivative of the model) is computed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SecondOrder {
    /// Exact double backprop (needs [`DOUBLE_BACKPROP_ENV`]).
    Exact,
    /// Central differences along `v = Σ̂ g`: two extra forward/backward passes, first-order autodiff only.
    /// `step` is the largest pixel displacement of `x ± s·v` (pixels in `[0, 1]`).
    Central { step: f64 },
    /// One-sided differences along `v`: one extra pass, error `O(step)` instead of `O(step²)`.
    Forward { step: f64 },
}

impl SecondOrder {
    /// The default step of the finite-difference modes (largest pixel displacement). In f32 the usable
    /// window is narrow: below ~1e-4 rounding of the two O(1) gradients swamps their O(step) difference,
    /// above ~1e-3 ReLU/max-pool switches between `x ± s·v` bias the secant (measured on a small CNN:
    /// relative error 1.2e-2 at 1e-4, 2e-3 at 3e-4, 2.5e-2 at 1e-3, 0.29 at 1e-2).
    pub const DEFAULT_STEP: f64 = 3e-4;

    /// `step` if it can be a finite-difference step (positive and finite), else an error saying so.
    pub fn check_step(step: f64) -> Result<f64> {
        if step > 0.0 && step.is_finite() {
            Ok(step)
        } else {
            Err(RegError::Config(format!(
                "the finite-difference step must be positive, got {step}"
            )))
        }
    }

    /// Parses `exact`, `fd` (central) or `fd-forward`, with `step` for the finite-difference modes.
    pub fn parse(name: &str, step: f64) -> Result<Self> {
        let step = Self::check_step(step)?;
        match name {
            "exact" => Ok(Self::Exact),
            "fd" | "fd-central" => Ok(Self::Central { step }),
            "fd-forward" => Ok(Self::Forward { step }),
            other => Err(RegError::Config(format!(
                "unknown second-order mode '{other}': expected exact, fd or fd-forward"
            ))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Central { .. } => "fd",
            Self::Forward { .. } => "fd-forward",
        }
    }
}

/// Whether a gradient of a gradient is computed correctly in this thread: `d²/dx² x³` at `x = 1.5` by two
/// backward passes. False where Candle detaches gradients (see [`DOUBLE_BACKPROP_ENV`]).
pub fn double_backprop_works() -> candle_core::Result<bool> {
    let x = Var::new(&[1.5f64], &Device::Cpu)?;
    let t = x.as_tensor();
    let y = (t * t)?.mul(t)?.sum_all()?;
    let g = match y.backward()?.get(t) {
        Some(g) => g.clone(),
        None => return Ok(false),
    };
    let gg = g.sum_all()?.backward()?;
    Ok(match gg.get(t) {
        Some(h) => (h.to_vec1::<f64>()?[0] - 9.0).abs() < 1e-9,
        None => false,
    })
}

/// An error naming [`DOUBLE_BACKPROP_ENV`] unless [`double_backprop_works`] in this thread.
pub fn ensure_double_backprop() -> Result<()> {
    if double_backprop_works()? {
        Ok(())
    } else {
        Err(RegError::NoDoubleBackprop)
    }
}
