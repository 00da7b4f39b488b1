//! Gradient regularizers on the input gradient of a classifier's log-likelihood:
//!
//! * **SGR** (structured gradient regularization, Roth et al.): `Ω = σ_t/(2m) Σ_i g_iᵀ Σ̂_t g_i`, with
//!   `g_i = ∇_x log softmax(f(x_i))[y_i]`, `Σ̂_t` a running average (β = 0.1) of the second moments of
//!   adversarial perturbations `ξ` and `σ_t = c / mean diag Σ̂_t` (Algorithm 1), optionally with the
//!   uncentred term of eq. 12;
//! * **GN** (gradient-norm regularization): the same with `Σ = I`;
//! * SGR with a fixed covariance: the data set's, or the synthetic long-range-correlated one of sec. 4.3.
//!
//! The gradient of `Ω` with respect to the parameters needs second derivatives. Two ways, one switch
//! ([`SecondOrder`]):
//! * exact double backprop: Candle keeps the graph of a gradient only when the environment variable
//!   `CANDLE_GRAD_DO_NOT_DETACH` is set before the calling thread's first `backward()`. This crate cannot
//!   set it safely (a library must not write the environment of a running program); the program must, and
//!   [`ensure_double_backprop`] checks that it took effect. [`Regularizer::penalty`] refuses exact mode
//!   otherwise: without the variable the second-order term would be silently missing. Models that write
//!   the second derivative out themselves (`sgr-models`' `Cnn::explicit_gradients`, the CPU path) take
//!   `∂Ω/∂g` from [`Regularizer::penalty_adjoint`] and need no variable.
//! * a finite-difference surrogate that needs first-order autodiff only: `v = Σ̂ g` is held constant and
//!   `∇_θ Ω ≈ ∇_θ (1/m) Σ_i [ℓ_i(x_i + s_i v_i) − ℓ_i(x_i − s_i v_i)] / 2s_i` (or one-sided), with the step
//!   `s_i` chosen so that the largest pixel moves by `h`.
//!
//! The crate depends only on `candle` and `sgr-covariance`; models are anything that implements
//! [`candle_core::Module`] on images in `[0, 1]`.

mod error;
mod grad;
mod regularizer;
mod second_order;

pub use error::{RegError, Result};
pub use grad::{InputGradient, input_gradient, input_gradient_split, log_likelihood, omega_value};
pub use regularizer::{CovSpec, GradientRegularizer, Penalty, Regularizer, RegularizerConfig};
pub use second_order::{
    DOUBLE_BACKPROP_ENV, SecondOrder, double_backprop_works, ensure_double_backprop,
};
