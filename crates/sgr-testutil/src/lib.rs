//! Helpers for the workspace's tests: deterministic tensors without a random-number crate, scalar
//! extraction, and small seeded CNNs.
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
