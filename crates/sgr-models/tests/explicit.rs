//! The hand-written parameter gradients of `CE + P(∇_x log p)` (`Cnn::explicit_gradients`) against exact
//! double backprop through candle's own layers.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`
#![allow(unsafe_code)]

use std::sync::Once;

use candle_core::{D, DType, Device, Module, Tensor, Var};
use sgr_models::{Cnn, CnnConfig};
use sgr_testutil::{model, rand_tensor};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

static FLAG: Once = Once::new();

fn setup() {
    // SAFETY: every test calls this first and `Once` blocks the others until the write is done, so no
    // thread of this binary reads the environment while it changes.
    FLAG.call_once(|| unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") });
}

/// Gradients by autograd of `ce_weight·Σ −log p_y + ⟨w, g⟩ + s/2·‖g‖²`, through candle's own layers
/// (`plain`) or the model's channels-last ops.
fn autograd(
    plain: bool,
    m: &Cnn,
    vm: &candle_nn::VarMap,
    x: &Tensor,
    y: &Tensor,
    ce_weight: f64,
    penalty: Option<(&Tensor, f64)>,
) -> Vec<(String, Tensor)> {
    let mut net = m.clone();
    net.set_plain_ops(plain);
    let xv = Var::from_tensor(x).unwrap();
    let logp =
        candle_nn::ops::log_softmax(&net.forward(xv.as_tensor()).unwrap(), D::Minus1).unwrap();
    let ll = logp
        .gather(&y.unsqueeze(1).unwrap(), 1)
        .unwrap()
        .sum_all()
        .unwrap();
    let mut loss = (ll.clone() * (-ce_weight)).unwrap();
    if let Some((w, s)) = penalty {
        let g = ll.backward().unwrap().get(xv.as_tensor()).unwrap().clone();
        let p = ((&g * w).unwrap().sum_all().unwrap()
            + (g.sqr().unwrap().sum_all().unwrap() * (0.5 * s)).unwrap())
        .unwrap();
        loss = (loss + p).unwrap();
    }
    let grads = loss.backward().unwrap();
    let data = vm.data().lock().unwrap();
    m.config()
        .param_shapes()
        .into_iter()
        .map(|(name, _)| {
            let g = grads.get(data[&name].as_tensor()).unwrap().clone();
            (name, g)
        })
        .collect()
}

fn compare(ours: &[(String, Tensor)], reference: &[(String, Tensor)], tol: f64, what: &str) {
    assert_eq!(ours.len(), reference.len());
    for ((na, a), (nb, b)) in ours.iter().zip(reference) {
        assert_eq!(na, nb);
        assert_eq!(a.dims(), b.dims(), "{what} {na}");
        let (scale, diff) = (sgr_testutil::max_abs(b), sgr_testutil::max_abs_diff(a, b));
        assert!(scale > 0.0, "{what} {na}: zero reference gradient");
        assert!(
            diff <= tol * scale,
            "{what} {na}: max diff {diff:.3e} (scale {scale:.3e})"
        );
    }
}

#[test]
fn explicit_gradients_equal_double_backprop() -> TestResult {
    setup();
    let mut cases = vec![(CnnConfig::mnist(), 41u64), (CnnConfig::cifar10(), 42)];
    for (k, (_, config)) in sgr_testutil::other_archs(1)
        .into_iter()
        .chain(sgr_testutil::other_archs(2))
        .enumerate()
    {
        cases.push((config, 43 + k as u64));
    }
    for (config, seed) in cases {
        let (m, vm) = model(config.clone(), seed, DType::F64);
        let shape = [3, config.in_channels, config.height, config.width];
        // The first image is constant: the standardisation's floor branch.
        let x = sgr_testutil::batch_with_constant_first(&shape, seed + 1, 0.25);
        let y = Tensor::new(&[3u32, 0, 7], &Device::Cpu)?;
        let w = rand_tensor(&shape, seed + 2, -1.0, 1.0);
        let s = 0.7;

        // Autograd through the channels-last ops and through candle's layers, on the whole batch (the
        // constant image's pooling windows are all ties: both route them to the first maximum).
        for (xs, ys, plain) in [(x.clone(), y.clone(), false), (x.clone(), y.clone(), true)] {
            let b = xs.dim(0)? as f64;
            let ws = w.narrow(0, 3 - xs.dim(0)?, xs.dim(0)?)?;
            let pass = m.explicit_pass(&xs, &ys, true)?;
            let g = pass.input_grad.clone().unwrap();
            let adjoint = (&ws + (&g * s)?)?;
            let ours = m.explicit_gradients(&pass, 1.0 / b, Some(&adjoint))?;
            let reference = autograd(plain, &m, &vm, &xs, &ys, 1.0 / b, Some((&ws, s)));
            compare(&ours, &reference, 1e-10, "CE + P(g)");
            // First order only (the clean step), and the penalty alone.
            let pass0 = m.explicit_pass(&xs, &ys, false)?;
            assert!(pass0.input_grad.is_none());
            let ours = m.explicit_gradients(&pass0, 0.5, None)?;
            let reference = autograd(plain, &m, &vm, &xs, &ys, 0.5, None);
            compare(&ours, &reference, 1e-10, "CE");
            let ours = m.explicit_gradients(&pass, 0.0, Some(&adjoint))?;
            let reference = autograd(plain, &m, &vm, &xs, &ys, 0.0, Some((&ws, s)));
            compare(&ours, &reference, 1e-10, "P(g)");
        }

        let pass = m.explicit_pass(&x, &y, true)?;
        let g = pass.input_grad.clone().unwrap();
        // The pass's values are the model's.
        let logits = m.forward(&x)?;
        assert!(sgr_testutil::max_abs_diff(&pass.logits, &logits) < 1e-12);
        let (_, ll, g_ref) = m.log_lik_input_gradient(&x, &y)?;
        assert!(sgr_testutil::max_abs_diff(&pass.log_lik, &ll) < 1e-12);
        assert!(sgr_testutil::max_abs_diff(&g, &g_ref) <= 1e-12 * sgr_testutil::max_abs(&g_ref));
    }
    Ok(())
}

#[test]
fn explicit_gradients_in_f32_match_f64() -> TestResult {
    setup();
    let config = CnnConfig::mnist();
    let (m64, _) = model(config.clone(), 5, DType::F64);
    let (m32, _) = model(config.clone(), 5, DType::F32);
    let shape = [4, 1, 28, 28];
    let x = rand_tensor(&shape, 6, 0.0, 1.0);
    let w = rand_tensor(&shape, 7, -1.0, 1.0);
    let y = Tensor::new(&[1u32, 2, 3, 4], &Device::Cpu)?;
    let run = |m: &Cnn, dt: DType| {
        let x = x.to_dtype(dt).unwrap();
        let pass = m.explicit_pass(&x, &y, true).unwrap();
        m.explicit_gradients(&pass, 0.25, Some(&w.to_dtype(dt).unwrap()))
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, t.to_dtype(DType::F64).unwrap()))
            .collect::<Vec<_>>()
    };
    compare(&run(&m32, DType::F32), &run(&m64, DType::F64), 1e-4, "f32");
    Ok(())
}

#[test]
fn explicit_pass_rejects_bad_input() -> TestResult {
    let (m, _) = model(CnnConfig::mnist(), 1, DType::F32);
    let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu)?;
    let bad_y = Tensor::new(&[1u32, 2, 3], &Device::Cpu)?;
    let err = m.explicit_pass(&x, &bad_y, true).unwrap_err().to_string();
    assert!(err.contains("labels"), "{err}");
    let y = Tensor::new(&[1u32, 2], &Device::Cpu)?;
    let pass = m.explicit_pass(&x, &y, false)?;
    let adj = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu)?;
    let err = m
        .explicit_gradients(&pass, 0.5, Some(&adj))
        .unwrap_err()
        .to_string();
    assert!(err.contains("input_grad"), "{err}");
    let mut plain = m.clone();
    plain.set_plain_ops(true);
    let err = plain.explicit_pass(&x, &y, false).unwrap_err().to_string();
    assert!(err.contains("channels-last"), "{err}");
    Ok(())
}

/// Exact zeros before a ReLU: a constant image standardises to exactly 0 on every path, and with conv1's bias
/// at 0 every first-layer pre-activation is 0. All three paths give the ReLU derivative 0 there, as PyTorch
/// (candle's own `relu` backward passes the gradient at 0; rounding noise in the centring used to set masks).
#[test]
fn exact_zero_pre_activations_agree_on_every_path() -> TestResult {
    setup();
    let (m, vm) = model(CnnConfig::mnist(), 21, DType::F64);
    {
        let data = vm.data().lock().unwrap();
        let b = data["conv1.bias"].as_tensor();
        data["conv1.bias"].set(&b.zeros_like()?)?;
    }
    let shape = [3, 1, 28, 28];
    let x = sgr_testutil::batch_with_constant_first(&shape, 22, 0.5);
    let y = Tensor::new(&[1u32, 4, 9], &Device::Cpu)?;
    let w = rand_tensor(&shape, 23, -1.0, 1.0);
    let pass = m.explicit_pass(&x, &y, true)?;
    let g = pass.input_grad.clone().unwrap();
    let adjoint = (&w + (&g * 0.3)?)?;
    let ours = m.explicit_gradients(&pass, 1.0 / 3.0, Some(&adjoint))?;
    for plain in [false, true] {
        let reference = autograd(plain, &m, &vm, &x, &y, 1.0 / 3.0, Some((&w, 0.3)));
        compare(&ours, &reference, 1e-10, &format!("plain {plain}"));
    }
    Ok(())
}
