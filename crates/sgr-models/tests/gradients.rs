//! Input gradients of both models against central finite differences in f64 (catches candle's max-pool
//! backward, which scales gradients by 1/4), plus the layers' own checks.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`

use candle_core::{DType, Device, Module, Tensor, Var};
use sgr_models::{CnnConfig, max_pool2x2, standardize};
use sgr_testutil::{log_lik, model, rand_tensor, scalar};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// `∇_x Σ_i log softmax(f(x_i))[y_i]` by autograd.
fn input_gradient(m: &sgr_models::Cnn, x: &Tensor, y: &Tensor) -> Tensor {
    let xv = Var::from_tensor(x).unwrap();
    let grads = log_lik(m, xv.as_tensor(), y).unwrap().backward().unwrap();
    grads.get(xv.as_tensor()).unwrap().clone()
}

fn check_input_gradient(config: CnnConfig, seed: u64) {
    let (m, _vm) = model(config.clone(), seed, DType::F64);
    let shape = [2, config.in_channels, config.height, config.width];
    let x = rand_tensor(&shape, seed + 1, 0.0, 1.0);
    let y = Tensor::new(&[3u32, 7], &Device::Cpu).unwrap();
    let g = input_gradient(&m, &x, &y);
    // Small enough that no ReLU or max-pool switches between x ± h·v (the network is piecewise smooth).
    let h = 1e-7;
    let f = |x: &Tensor| scalar(&log_lik(&m, x, &y).unwrap());
    let mut worst: f64 = 0.0;
    // Random directions, then single coordinates.
    for k in 0..12u64 {
        let v = rand_tensor(&shape, 100 + k, -1.0, 1.0);
        let fd = (f(&(&x + (&v * h).unwrap()).unwrap()) - f(&(&x - (&v * h).unwrap()).unwrap()))
            / (2.0 * h);
        let an = scalar(&(&g * &v).unwrap().sum_all().unwrap());
        let rel = (fd - an).abs() / an.abs().max(1e-3);
        worst = worst.max(rel);
        assert!(
            rel < 1e-5,
            "direction {k}: finite difference {fd} vs autodiff {an}"
        );
    }
    let n: usize = shape.iter().product();
    let gflat = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for k in (0..n).step_by(n / 15) {
        let mut e = vec![0f64; n];
        e[k] = 1.0;
        let e = Tensor::from_vec(e, &shape, &Device::Cpu).unwrap();
        let fd = (f(&(&x + (&e * h).unwrap()).unwrap()) - f(&(&x - (&e * h).unwrap()).unwrap()))
            / (2.0 * h);
        assert!(
            (fd - gflat[k]).abs() < 1e-6 + 1e-5 * gflat[k].abs(),
            "coordinate {k}: {fd} vs {}",
            gflat[k]
        );
    }
    // The frozen copy (one custom op whose backward is the explicit reverse pass, what attacks use) and
    // candle's own layers give the same gradient.
    let mut plain = m.clone();
    plain.set_plain_ops(true);
    for (what, other) in [
        ("frozen", input_gradient(&m.frozen(), &x, &y)),
        ("candle's layers", input_gradient(&plain, &x, &y)),
    ] {
        let diff = sgr_testutil::max_abs_diff(&other, &g);
        assert!(
            diff <= 1e-10 * sgr_testutil::max_abs(&g),
            "{what}: max diff {diff:.3e}"
        );
    }
    eprintln!("{}: worst relative error {worst:.2e}", config.spec());
}

#[test]
fn mnist_cnn_input_gradient_matches_finite_differences() -> TestResult {
    check_input_gradient(CnnConfig::mnist(), 11);
    Ok(())
}

#[test]
fn cifar_cnn_input_gradient_matches_finite_differences() -> TestResult {
    check_input_gradient(CnnConfig::cifar10(), 12);
    Ok(())
}

#[test]
fn other_architectures_input_gradients_match_finite_differences() -> TestResult {
    let archs = sgr_testutil::other_archs(1)
        .into_iter()
        .chain(sgr_testutil::other_archs(3));
    for (k, (_, config)) in archs.enumerate() {
        check_input_gradient(config, 60 + k as u64);
    }
    Ok(())
}

/// `∇_x Σ w ⊙ max_pool2x2(x)` by autograd.
fn pool_gradient(x: &Tensor, w: &Tensor) -> Tensor {
    let xv = Var::from_tensor(x).unwrap();
    let grads = (max_pool2x2(xv.as_tensor()).unwrap() * w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    grads.get(xv.as_tensor()).unwrap().clone()
}

#[test]
fn max_pool_matches_candle_forward_and_finite_differences() -> TestResult {
    let x = rand_tensor(&[2, 3, 6, 8], 5, -1.0, 1.0);
    let ours = max_pool2x2(&x)?;
    let theirs = x.max_pool2d(2)?;
    assert_eq!(ours.dims(), &[2, 3, 3, 4]);
    assert_eq!(scalar(&(&ours - &theirs)?.abs()?.sum_all()?), 0.0);
    // Odd sizes floor like PyTorch.
    let odd = rand_tensor(&[1, 1, 5, 7], 6, 0.0, 1.0);
    assert_eq!(max_pool2x2(&odd)?.dims(), &[1, 1, 2, 3]);
    // Gradient of Σ w ⊙ pool(x): exactly w routed to each window's arg-max (not w/4).
    let w = rand_tensor(&[2, 3, 3, 4], 7, -1.0, 1.0);
    let g = pool_gradient(&x, &w);
    let h = 1e-6;
    let f = |x: &Tensor| scalar(&(max_pool2x2(x).unwrap() * &w).unwrap().sum_all().unwrap());
    let v = rand_tensor(&[2, 3, 6, 8], 8, -1.0, 1.0);
    let fd = (f(&(&x + (&v * h)?)?) - f(&(&x - (&v * h)?)?)) / (2.0 * h);
    let an = scalar(&(g * &v)?.sum_all()?);
    assert!((fd - an).abs() < 1e-7 * an.abs().max(1.0), "{fd} vs {an}");
    Ok(())
}

#[test]
fn standardize_matches_the_formula_and_survives_constant_images() -> TestResult {
    let x = rand_tensor(&[3, 2, 4, 5], 9, 0.0, 1.0);
    let s = standardize(&x)?;
    let xs = x.flatten_from(1)?.to_vec2::<f64>()?;
    let ss = s.flatten_from(1)?.to_vec2::<f64>()?;
    for (row, out) in xs.iter().zip(&ss) {
        let n = row.len() as f64;
        let mean = row.iter().sum::<f64>() / n;
        let std = (row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let denom = std.max(1.0 / n.sqrt());
        for (a, b) in row.iter().zip(out) {
            assert!(((a - mean) / denom - b).abs() < 1e-12);
        }
    }
    // A constant image: output 0, gradient finite.
    let c = Var::from_tensor(&Tensor::full(0.3f64, (1, 1, 4, 4), &Device::Cpu)?)?;
    let w = rand_tensor(&[1, 1, 4, 4], 10, -1.0, 1.0);
    let out = standardize(c.as_tensor())?;
    assert!(scalar(&out.abs()?.sum_all()?) < 1e-12);
    let g = (out * w)?.sum_all()?.backward()?;
    let gsum = scalar(&g.get(c.as_tensor()).unwrap().abs()?.sum_all()?);
    assert!(gsum.is_finite());
    Ok(())
}

#[test]
fn standardisation_makes_the_model_invariant_to_brightness_and_contrast() -> TestResult {
    let (m, _) = model(CnnConfig::mnist(), 3, DType::F64);
    let x = rand_tensor(&[2, 1, 28, 28], 4, 0.2, 0.6);
    let a = m.forward(&x)?;
    let b = m.forward(&((&x * 1.5)? + 0.1)?)?;
    assert!(scalar(&(a - b)?.abs()?.max_all()?) < 1e-9);
    Ok(())
}

#[test]
fn output_shapes_and_parameter_counts() -> TestResult {
    for (config, params) in [
        (CnnConfig::mnist(), 312_202usize),
        (CnnConfig::cifar10(), 1_147_978),
    ] {
        let (m, vm) = model(config.clone(), 0, DType::F32);
        let x = Tensor::zeros(
            (4, config.in_channels, config.height, config.width),
            DType::F32,
            &Device::Cpu,
        )?;
        assert_eq!(m.forward(&x)?.dims(), &[4, 10]);
        let count: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(count, params, "{}", config.spec());
    }
    Ok(())
}

/// Ties in a pooling window: the gradient goes to the first maximum in row-major order (PyTorch's choice,
/// and the channels-last op's), once, not to every maximum.
#[test]
fn max_pool_routes_tied_gradients_to_the_first_maximum() -> TestResult {
    // Windows (row-major): [1 3 / 3 2] → position 1, [5 5 / 5 5] → 0, [0 0 / 7 7] → 2, [4 6 / 6 6] → 1.
    #[rustfmt::skip]
    let x = Tensor::new(&[
        1f64, 3., 5., 5., 0., 0., 4., 6.,
        3.,   2., 5., 5., 7., 7., 6., 6.,
        9.,   9., 9., 9., 9., 9., 9., 9.,
    ], &Device::Cpu)?.reshape((1, 1, 3, 8))?;
    assert_eq!(
        max_pool2x2(&x)?.flatten_all()?.to_vec1::<f64>()?,
        vec![3.0, 5.0, 7.0, 6.0]
    );
    let w = Tensor::new(&[10f64, 20., 30., 40.], &Device::Cpu)?.reshape((1, 1, 1, 4))?;
    let g = pool_gradient(&x, &w);
    #[rustfmt::skip]
    let want = vec![
        0f64, 10., 20., 0., 0.,  0., 0., 40.,
        0.,   0.,  0.,  0., 30., 0., 0., 0.,
        0.,   0.,  0.,  0., 0.,  0., 0., 0.,
    ];
    assert_eq!(g.flatten_all()?.to_vec1::<f64>()?, want);
    Ok(())
}

/// Digit-like images (a flat background around a random patch) make pooling windows tie: candle's layers
/// (the path off the CPU) and the channels-last ops give the same input gradient.
#[test]
fn input_gradients_agree_across_paths_on_flat_backgrounds() -> TestResult {
    let (m, _vm) = model(CnnConfig::mnist(), 5, DType::F64);
    let patch = rand_tensor(&[4, 1, 12, 12], 3, 0.0, 1.0);
    let x = patch.pad_with_zeros(2, 8, 8)?.pad_with_zeros(3, 8, 8)?;
    let y = Tensor::new(&[0u32, 1, 2, 3], &Device::Cpu)?;
    let grad = |plain: bool| {
        let mut net = m.clone();
        net.set_plain_ops(plain);
        input_gradient(&net, &x, &y)
    };
    let (fast, plain) = (grad(false), grad(true));
    let scale = sgr_testutil::max_abs(&fast);
    assert!(scale > 0.0);
    let diff = sgr_testutil::max_abs_diff(&fast, &plain);
    assert!(
        diff <= 1e-12 * scale,
        "max diff {diff:.3e} (scale {scale:.3e})"
    );
    Ok(())
}
