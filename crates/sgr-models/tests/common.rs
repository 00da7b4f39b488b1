//! Helpers shared by the model tests: seeded models, the log-likelihood, batches with a constant image.
#![allow(dead_code)]
use candle_core::{D, Module, Result, Tensor};
use sgr_models::Cnn;
#[allow(unused_imports)]
pub use sgr_testutil::{model, rand_tensor, scalar};

/// Σ_i log softmax(f(x_i))[y_i]: the quantity whose input gradient SGR penalises.
pub fn log_lik(m: &Cnn, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let lp = candle_nn::ops::log_softmax(&m.forward(x)?, D::Minus1)?;
    lp.gather(&y.unsqueeze(1)?, 1)?.sum_all()
}

/// A batch of `shape[0]` images in `[0, 1]` whose first image is constant (`value` everywhere: the
/// standardisation's floor branch, and every pooling window a tie), the others uniform random from `seed`.
pub fn batch_with_constant_first(shape: &[usize], seed: u64, value: f64) -> Tensor {
    let x = rand_tensor(shape, seed, 0.0, 1.0);
    let flat = Tensor::full(value, &shape[1..], &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    Tensor::cat(&[&flat, &x.narrow(0, 1, shape[0] - 1).unwrap()], 0).unwrap()
}
