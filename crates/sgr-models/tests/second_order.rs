//! Second order through the model: Hessian-vector products of the log-likelihood with respect to the input,
//! by double backprop, against finite differences of the gradient. This is what exact SGR needs.
//!
//! Every test of this binary sets `CANDLE_GRAD_DO_NOT_DETACH` (once, behind a `Once` that the other
//! threads wait on) before its first backward pass.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`
#![allow(unsafe_code)]

use std::sync::Once;

use candle_core::{DType, Device, Tensor, Var};
use sgr_models::CnnConfig;
use sgr_testutil::{log_lik, model, rand_tensor, scalar};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

static FLAG: Once = Once::new();

fn setup() {
    // SAFETY: every test calls this first and `Once` blocks the others until the write is done, so no
    // thread of this binary reads the environment while it changes.
    FLAG.call_once(|| unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") });
}

/// `a` equals `b` to 1e-10 relative to `b`'s largest entry.
fn close(a: &Tensor, b: &Tensor, what: &str) {
    let (scale, diff) = (sgr_testutil::max_abs(b), sgr_testutil::max_abs_diff(a, b));
    assert!(
        diff <= 1e-10 * scale.max(1e-300),
        "{what}: max diff {diff} (scale {scale})"
    );
}

#[test]
fn explicit_input_gradient_equals_autograd_to_second_order() -> TestResult {
    setup();
    for (config, seed) in [(CnnConfig::mnist(), 31u64), (CnnConfig::cifar10(), 32)] {
        let (m, vm) = model(config.clone(), seed, DType::F64);
        let shape = [3, config.in_channels, config.height, config.width];
        // The first image is constant: the standardisation's floor branch.
        let x = sgr_testutil::batch_with_constant_first(&shape, seed + 1, 0.5);
        let y = Tensor::new(&[2u32, 5, 9], &Device::Cpu)?;
        let (logits, ll, g) = m.log_lik_input_gradient(&x, &y)?;
        let xv = Var::from_tensor(&x)?;
        let ll_auto = log_lik(&m, xv.as_tensor(), &y)?;
        let g_auto = ll_auto.backward()?.get(xv.as_tensor()).unwrap().clone();
        close(&g, &g_auto, "input gradient");
        assert!((scalar(&ll.sum_all()?) - scalar(&ll_auto)).abs() < 1e-12);
        let logits_auto = candle_core::Module::forward(&m, &x)?;
        close(&logits, &logits_auto, "logits");
        // Second order: parameter gradients of ⟨g, w⟩ through both graphs.
        let w = rand_tensor(&shape, seed + 2, -1.0, 1.0);
        let gm = (&g * &w)?.sum_all()?.backward()?;
        let ga = (&g_auto * &w)?.sum_all()?.backward()?;
        let data = vm.data().lock().unwrap();
        for (name, v) in data.iter() {
            let a = gm
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name} (explicit)"));
            let b = ga
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name} (autograd)"));
            close(a, b, name);
        }
    }
    Ok(())
}

/// Where the fast ops are off (devices without them: CUDA, Metal; here plain ops on the CPU),
/// `log_lik_input_gradient` takes candle's autograd and must give what the explicit route gives, to second
/// order (that route is checked against autograd and finite differences above and below).
#[test]
fn input_gradient_without_fast_ops_equals_the_explicit_route() -> TestResult {
    setup();
    let config = CnnConfig::mnist();
    let (mut m, vm) = model(config.clone(), 41, DType::F64);
    let shape = [3, config.in_channels, config.height, config.width];
    let x = rand_tensor(&shape, 42, 0.0, 1.0);
    let y = Tensor::new(&[0u32, 3, 7], &Device::Cpu)?;
    let w = rand_tensor(&shape, 43, -1.0, 1.0);
    let mut results = vec![];
    for plain in [false, true] {
        m.set_plain_ops(plain);
        assert_eq!(m.uses_fast_ops(&x), !plain);
        let (logits, ll, g) = m.log_lik_input_gradient(&x, &y)?;
        let second = (&g * &w)?.sum_all()?.backward()?;
        let data = vm.data().lock().unwrap();
        let mut param_grads = vec![];
        for (name, v) in data.iter() {
            let gp = second
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no second-order gradient for {name} (plain {plain})"));
            param_grads.push((name.clone(), gp.clone()));
        }
        param_grads.sort_by(|a, b| a.0.cmp(&b.0));
        results.push((logits, ll, g, param_grads));
    }
    let (fast, plain) = (&results[0], &results[1]);
    close(&plain.0, &fast.0, "logits");
    close(&plain.1, &fast.1, "log-likelihood per example");
    close(&plain.2, &fast.2, "input gradient");
    assert_eq!(plain.3.len(), fast.3.len());
    for ((name, a), (_, b)) in plain.3.iter().zip(&fast.3) {
        close(a, b, name);
    }
    Ok(())
}

#[test]
fn hessian_vector_products_match_finite_differences() -> TestResult {
    setup();
    for (config, seed) in [(CnnConfig::mnist(), 21u64), (CnnConfig::cifar10(), 22)] {
        let (m, _vm) = model(config.clone(), seed, DType::F64);
        let shape = [2, config.in_channels, config.height, config.width];
        let x = rand_tensor(&shape, seed + 1, 0.0, 1.0);
        let y = Tensor::new(&[1u32, 4], &Device::Cpu)?;
        let u = rand_tensor(&shape, seed + 2, -1.0, 1.0);
        let v = rand_tensor(&shape, seed + 3, -1.0, 1.0);
        let grad = |x: &Tensor| -> Tensor {
            let xv = Var::from_tensor(x).unwrap();
            let g = log_lik(&m, xv.as_tensor(), &y).unwrap().backward().unwrap();
            g.get(xv.as_tensor()).unwrap().clone()
        };
        // Exact: ∇_x (g(x)·u) · v by double backprop.
        let xv = Var::from_tensor(&x)?;
        let g = log_lik(&m, xv.as_tensor(), &y)?.backward()?;
        let gu = (g.get(xv.as_tensor()).unwrap() * &u)?.sum_all()?;
        let hess = gu.backward()?;
        let hu = hess
            .get(xv.as_tensor())
            .expect("no second-order gradient: CANDLE_GRAD_DO_NOT_DETACH not in effect");
        let exact = scalar(&(hu * &v)?.sum_all()?);
        // Finite differences of the first-order gradient along v.
        // Tiny step: a ReLU or max-pool switch between x ± h·v would make the gradient jump.
        let h = 1e-7;
        let gp = grad(&(&x + (&v * h)?)?);
        let gm = grad(&(&x - (&v * h)?)?);
        let fd = scalar(&(((gp - gm)? / (2.0 * h))? * &u)?.sum_all()?);
        let rel = (exact - fd).abs() / fd.abs().max(1e-6);
        eprintln!(
            "{}: uᵀHv exact {exact:.6e} fd {fd:.6e} rel {rel:.1e}",
            config.spec()
        );
        assert!(exact.abs() > 1e-6, "a degenerate check: uᵀHv is {exact}");
        assert!(
            rel < 1e-4,
            "{}: exact {exact} vs finite differences {fd}",
            config.spec()
        );
    }
    Ok(())
}

#[test]
fn fused_cpu_ops_equal_candle_layers_to_second_order() -> TestResult {
    setup();
    for (config, seed) in [(CnnConfig::mnist(), 41u64), (CnnConfig::cifar10(), 42)] {
        let (fast, vm) = model(config.clone(), seed, DType::F64);
        let mut plain = fast.clone();
        plain.set_plain_ops(true);
        let shape = [3, config.in_channels, config.height, config.width];
        let x = rand_tensor(&shape, seed + 1, 0.0, 1.0);
        let y = Tensor::new(&[0u32, 3, 7], &Device::Cpu)?;
        let w = rand_tensor(&shape, seed + 2, -1.0, 1.0);
        // Logits, the input gradient by autograd, and parameter gradients of ⟨∇_x log p, w⟩ (what exact
        // SGR differentiates) through each model.
        let run = |m: &sgr_models::Cnn| {
            let logits = candle_core::Module::forward(m, &x).unwrap();
            let xv = Var::from_tensor(&x).unwrap();
            let g = log_lik(m, xv.as_tensor(), &y).unwrap().backward().unwrap();
            let g = g.get(xv.as_tensor()).unwrap().clone();
            let h = (&g * &w).unwrap().sum_all().unwrap().backward().unwrap();
            (logits, g, h)
        };
        let (la, ga, ha) = run(&fast);
        let (lb, gb, hb) = run(&plain);
        let spec = config.spec();
        close(&la, &lb, &format!("{spec}: logits"));
        close(&ga, &gb, &format!("{spec}: input gradient"));
        for (name, v) in vm.data().lock().unwrap().iter() {
            close(
                ha.get(v.as_tensor()).unwrap(),
                hb.get(v.as_tensor()).unwrap(),
                &format!("{spec}: {name}"),
            );
        }
    }
    Ok(())
}

#[test]
fn frozen_model_gradients_equal_the_trainable_model_to_second_order_in_the_input() -> TestResult {
    setup();
    for (config, seed) in [(CnnConfig::mnist(), 51u64), (CnnConfig::cifar10(), 52)] {
        let (m, _vm) = model(config.clone(), seed, DType::F64);
        let frozen = m.frozen();
        let shape = [3, config.in_channels, config.height, config.width];
        let x = rand_tensor(&shape, seed + 1, 0.0, 1.0);
        let y = Tensor::new(&[1u32, 6, 8], &Device::Cpu)?;
        let u = rand_tensor(&shape, seed + 2, -1.0, 1.0);
        // Input gradient and the Hessian-vector product ∇_x ⟨∇_x log p, u⟩ (softmax and standardisation
        // curvature) through each model.
        let run = |m: &sgr_models::Cnn| {
            let xv = Var::from_tensor(&x).unwrap();
            let g = log_lik(m, xv.as_tensor(), &y).unwrap().backward().unwrap();
            let g = g.get(xv.as_tensor()).unwrap().clone();
            let h = (&g * &u).unwrap().sum_all().unwrap().backward().unwrap();
            let hu = h.get(xv.as_tensor()).expect("second order").clone();
            (candle_core::Module::forward(m, &x).unwrap(), g, hu)
        };
        let (la, ga, ha) = run(&frozen);
        let (lb, gb, hb) = run(&m);
        for (what, a, b) in [
            ("logits", &la, &lb),
            ("gradient", &ga, &gb),
            ("Hu", &ha, &hb),
        ] {
            close(a, b, &format!("{}: {what}", config.spec()));
        }
        assert!(
            sgr_testutil::max_abs(&hb) > 1e-8,
            "degenerate Hessian check"
        );
    }
    Ok(())
}
