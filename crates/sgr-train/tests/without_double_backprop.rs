//! A binary that never sets `CANDLE_GRAD_DO_NOT_DETACH`: exact gradient regularisation still trains on the
//! CPU (its second derivative is written out, no autograd), while the autograd path (candle's own layers)
//! refuses with an error naming the variable instead of silently dropping the second-order term.
#![allow(clippy::unwrap_used)]

use candle_core::DType;
use sgr_data::DatasetName;
use sgr_regularizers::double_backprop_works;
use sgr_train::{MethodContext, MethodOptions, StepInput, build_method};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// A method by its command-line name.
fn name(s: &str) -> sgr_train::MethodName {
    s.parse().unwrap()
}

#[test]
fn exact_sgr_runs_on_the_cpu_path_and_the_autograd_path_refuses() -> TestResult {
    assert!(!double_backprop_works()?);
    let data = sgr_data::load(DatasetName::MnistSubset, None)?;
    let ctx = MethodContext {
        dataset: DatasetName::MnistSubset,
        train: &data.train,
    };
    let idx: Vec<usize> = (0..8).collect();
    let (x, y) = data
        .train
        .batch(&idx, None, DType::F32, &candle_core::Device::Cpu)?;
    let (model, vm) = sgr_testutil::model(sgr_models::CnnConfig::mnist(), 1, DType::F32);
    for method_name in ["sgr-sign", "gn"] {
        let mut method = build_method(name(method_name), &ctx, MethodOptions::default())?;
        assert_eq!(
            method.options().second_order.map(|c| c.name()),
            Some("exact")
        );
        let input = |model| StepInput {
            model,
            params: &vm,
            x: &x,
            y: &y,
            step: 0,
            seed: 0,
        };
        let out = method.loss(&input(&model))?;
        let grads = out
            .grads
            .as_ref()
            .expect("explicit gradients on the CPU path");
        assert_eq!(grads.len(), 14, "{method_name}");
        for (k, g) in grads {
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(norm.is_finite() && norm > 0.0, "{method_name}: {k} {norm}");
        }
        let mut plain = model.clone();
        plain.set_plain_ops(true);
        let err = method.loss(&input(&plain)).unwrap_err().to_string();
        assert!(
            err.contains("CANDLE_GRAD_DO_NOT_DETACH"),
            "{method_name}: {err}"
        );
    }
    Ok(())
}
