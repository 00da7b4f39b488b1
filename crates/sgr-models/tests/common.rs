#![allow(dead_code)]
use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sgr_models::{Cnn, CnnConfig, init_params};

pub fn model(config: CnnConfig, seed: u64, dtype: DType) -> (Cnn, VarMap) {
    let vm = VarMap::new();
    init_params(&vm, &config, seed, dtype, &Device::Cpu).unwrap();
    let m = Cnn::new(config, VarBuilder::from_varmap(&vm, dtype, &Device::Cpu)).unwrap();
    (m, vm)
}

/// Σ_i log softmax(f(x_i))[y_i]: the quantity whose input gradient SGR penalises.
pub fn log_lik(m: &Cnn, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let lp = candle_nn::ops::log_softmax(&m.forward(x)?, D::Minus1)?;
    lp.gather(&y.unsqueeze(1)?, 1)?.sum_all()
}

pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// A deterministic pseudo-random tensor with entries in [lo, hi).
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
