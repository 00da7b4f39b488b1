#![allow(dead_code)]
use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sgr_models::{Cnn, CnnConfig, init_params};
#[allow(unused_imports)]
pub use sgr_testutil::{rand_tensor, scalar};

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
