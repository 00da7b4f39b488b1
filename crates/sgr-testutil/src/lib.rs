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

/// The architecture of the paper shrunk for fast exact checks: 1×16×16 inputs, 5 classes.
pub fn tiny_config(channels: usize) -> CnnConfig {
    CnnConfig {
        in_channels: channels,
        height: 16,
        width: 16,
        convs: [3, 4, 4, 4],
        hidden: [8, 8],
        classes: 5,
    }
}
