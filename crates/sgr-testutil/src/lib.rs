//! Helpers for the workspace's tests: deterministic tensors without a random-number crate, scalar
//! extraction, small seeded CNNs, the log-likelihood, constant-image batches and dense reference products.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sgr_models::{Cnn, CnnConfig, init_params};

/// A deterministic pseudo-random tensor (f64, CPU) with entries in `[lo, hi)`.
pub fn rand_tensor(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A scalar tensor of any float dtype as f64.
pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// A seeded CNN of `config` on the CPU and its parameters.
pub fn model(config: CnnConfig, seed: u64, dtype: DType) -> (Cnn, VarMap) {
    let vm = VarMap::new();
    init_params(&vm, &config, seed, dtype, &Device::Cpu).unwrap();
    let m = Cnn::new(config, VarBuilder::from_varmap(&vm, dtype, &Device::Cpu)).unwrap();
    (m, vm)
}

/// The architecture of the paper shrunk for fast exact checks: 16×16 inputs, 5 classes.
pub fn tiny_config(channels: usize) -> CnnConfig {
    CnnConfig::parse(
        "conv3,conv4,pool,conv4,conv4,pool,fc8,fc8",
        (channels, 16, 16),
        5,
    )
    .expect("a valid spec")
}

/// Networks off the paper's path that every exact check also runs on, with a name for messages: a
/// two-layer MLP, a LeNet-style net with 5×5 "same" convolutions, and a stack mixing a linear
/// convolution, a separate ReLU, a pool right after the input and an odd map size.
pub fn other_archs(channels: usize) -> Vec<(&'static str, CnnConfig)> {
    let parse = |spec: &str, hw: usize| {
        CnnConfig::parse(spec, (channels, hw, hw), 10).expect("a valid spec")
    };
    vec![
        ("mlp", parse("fc32,fc16", 12)),
        (
            "lenet-same",
            parse("conv4-k5-same,pool,conv6-k5,pool,fc24,fc12", 16),
        ),
        (
            "mixed",
            parse(
                "pool,conv3-k3-linear,relu,conv4-same,pool,fc7-linear,relu,fc9",
                15,
            ),
        ),
    ]
}

/// Every entry of a tensor of any float dtype, as f64, in row-major order.
pub fn flat_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// The largest entry of `|a − b|`.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(&(a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap())
}

/// The largest entry of `|a|`.
pub fn max_abs(a: &Tensor) -> f64 {
    flat_f64(a).iter().fold(0f64, |m, v| m.max(v.abs()))
}

/// The largest entry of `|a − b|` for slices.
pub fn max_abs_diff_slices(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// Σ_i log softmax(f(x_i))[y_i]: the quantity whose input gradient SGR penalises.
pub fn log_lik(m: &Cnn, x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let lp =
        candle_nn::ops::log_softmax(&candle_core::Module::forward(m, x)?, candle_core::D::Minus1)?;
    lp.gather(&y.unsqueeze(1)?, 1)?.sum_all()
}

/// A batch of `shape[0]` images in `[0, 1]` whose first image is constant (`value` everywhere: the
/// standardisation's floor branch, and every pooling window a tie), the others uniform random from `seed`.
pub fn batch_with_constant_first(shape: &[usize], seed: u64, value: f64) -> Tensor {
    let x = rand_tensor(shape, seed, 0.0, 1.0);
    let flat = Tensor::full(value, &shape[1..], &Device::Cpu)
        .expect("a constant image")
        .unsqueeze(0)
        .expect("unsqueeze");
    Tensor::cat(&[&flat, &x.narrow(0, 1, shape[0] - 1).expect("narrow")], 0).expect("cat")
}

/// `Σ v` through a dense `d × d` matrix (f64), for a batch `(B, …)` of `d` values each; shaped like `v`.
pub fn dense_product(dense: &Tensor, v: &Tensor) -> Tensor {
    let b = v.dim(0).expect("a batch");
    let d = dense.dim(0).expect("a matrix");
    v.to_dtype(DType::F64)
        .and_then(|t| t.reshape((b, d)))
        .and_then(|t| t.matmul(dense))
        .and_then(|t| t.reshape(v.dims()))
        .expect("dense product")
}
