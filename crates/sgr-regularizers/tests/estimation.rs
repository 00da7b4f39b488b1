//! Σ̂ by the running average of Algorithm 1, its scaling, PSD use of covariance functions, checkpoint state,
//! and the refusal of exact mode without double backprop (this binary never sets the variable).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use sgr_covariance::linalg::symmetric_eigenvalues;
use sgr_covariance::{ChannelStructure, Covariance, Stationary};
use sgr_regularizers::{
    CovSpec, GradientRegularizer, RegError, Regularizer, RegularizerConfig, SecondOrder,
    double_backprop_works, input_gradient,
};
use sgr_testutil::{model, rand_tensor, scalar, tiny_config};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn config(cov: CovSpec, shape: (usize, usize, usize), uncentred: bool) -> RegularizerConfig {
    RegularizerConfig {
        shape,
        cov,
        beta: 0.1,
        target_mean_diag: 0.05,
        second_order: SecondOrder::Central { step: 1e-3 },
        uncentred,
    }
}

fn dense(cov: &dyn Covariance) -> Vec<f64> {
    sgr_testutil::flat_f64(&cov.to_dense().unwrap())
}

#[test]
fn dense_ema_follows_algorithm_1_and_is_scaled_to_c() -> TestResult {
    let shape = (1, 5, 4);
    let d = 20;
    let mut r = GradientRegularizer::new(config(CovSpec::EmaDense, shape, false))?;
    let mut manual = vec![0f64; d * d];
    for t in 0..4u64 {
        let xi = rand_tensor(&[6, 1, 5, 4], 10 + t, -1.0, 1.0);
        r.observe(&xi)?;
        let v = xi.flatten_from(1)?.to_vec2::<f64>()?;
        for a in 0..d {
            for b in 0..d {
                let m: f64 = v.iter().map(|row| row[a] * row[b]).sum::<f64>() / 6.0;
                manual[a * d + b] = 0.9 * manual[a * d + b] + 0.1 * m;
            }
        }
    }
    let md: f64 = (0..d).map(|i| manual[i * d + i]).sum::<f64>() / d as f64;
    let expected: Vec<f64> = manual.iter().map(|v| v * 0.05 / md).collect();
    let got = dense(r.covariance()?.as_ref());
    assert!(sgr_testutil::max_abs_diff_slices(&got, &expected) < 1e-12);
    assert!((r.covariance()?.mean_diag() - 0.05).abs() < 1e-12);
    assert_eq!(r.updates(), 4);
    Ok(())
}

#[test]
fn gn_is_c_times_identity_and_ignores_perturbations() -> TestResult {
    let mut r = GradientRegularizer::new(config(CovSpec::Identity, (1, 3, 3), false))?;
    r.observe(&rand_tensor(&[2, 1, 3, 3], 1, -1.0, 1.0))?;
    let got = dense(r.covariance()?.as_ref());
    for a in 0..9 {
        for b in 0..9 {
            assert_eq!(got[a * 9 + b], if a == b { 0.05 } else { 0.0 });
        }
    }
    Ok(())
}

#[test]
fn covfun_estimate_is_made_psd_so_omega_is_never_negative() -> TestResult {
    let shape = (2, 12, 12);
    let spec = |psd| CovSpec::EmaCovFun {
        radius: 6,
        structure: ChannelStructure::IntraInter,
        psd,
    };
    let mut raw = GradientRegularizer::new(config(spec(false), shape, false))?;
    let mut psd = GradientRegularizer::new(config(spec(true), shape, false))?;
    // Long-range correlated perturbations (a random offset per image plus a little noise): the rounded,
    // truncated estimate is then indefinite.
    for t in 0..3u64 {
        let offset = rand_tensor(&[16, 1, 1, 1], 20 + t, -1.0, 1.0);
        let noise = rand_tensor(&[16, 1, 12, 12], 30 + t, -0.1, 0.1);
        let xi = noise.broadcast_add(&offset)?;
        let xi = Tensor::cat(&[&xi, &(&xi * 0.5)?], 1)?;
        raw.observe(&xi)?;
        psd.observe(&xi)?;
    }
    let eig = |r: &GradientRegularizer| {
        let c = r.covariance().unwrap();
        symmetric_eigenvalues(&dense(c.as_ref()), c.dim()).unwrap()[0]
    };
    let (raw_min, psd_min) = (eig(&raw), eig(&psd));
    assert!(
        raw_min < 0.0,
        "the test needs an indefinite estimate ({raw_min})"
    );
    assert!(psd_min > -1e-10, "projected: smallest eigenvalue {psd_min}");
    assert!((psd.covariance()?.mean_diag() - 0.05).abs() < 1e-12);
    Ok(())
}

#[test]
fn state_round_trip_restores_the_estimate() -> TestResult {
    for (spec, uncentred) in [
        (CovSpec::EmaDense, true),
        (
            CovSpec::EmaCovFun {
                radius: 3,
                structure: ChannelStructure::IntraInter,
                psd: true,
            },
            false,
        ),
    ] {
        let shape = (1, 8, 8);
        let mut a = GradientRegularizer::new(config(spec.clone(), shape, uncentred))?;
        for t in 0..3u64 {
            a.observe(&rand_tensor(&[4, 1, 8, 8], t, -0.5, 1.0))?;
        }
        let saved: HashMap<String, Tensor> = a.state()?;
        let mut b = GradientRegularizer::new(config(spec.clone(), shape, uncentred))?;
        b.load_state(&saved)?;
        assert_eq!(b.updates(), 3);
        let (da, db) = (
            dense(a.covariance()?.as_ref()),
            dense(b.covariance()?.as_ref()),
        );
        assert!(
            sgr_testutil::max_abs_diff_slices(&da, &db) == 0.0,
            "{}",
            spec.name()
        );
        // One more identical update keeps them identical (the EMA state, not just the scaled copy, came back).
        let xi = rand_tensor(&[4, 1, 8, 8], 99, -0.5, 1.0);
        a.observe(&xi)?;
        b.observe(&xi)?;
        let (da, db) = (
            dense(a.covariance()?.as_ref()),
            dense(b.covariance()?.as_ref()),
        );
        assert!(sgr_testutil::max_abs_diff_slices(&da, &db) == 0.0);
        match (a.scaled_mean(), b.scaled_mean()) {
            (Some(x), Some(y)) => assert_eq!(scalar(&(x - y)?.abs()?.sum_all()?), 0.0),
            (None, None) => assert!(!uncentred),
            _ => panic!("mean restored on one side only"),
        }
    }
    Ok(())
}

#[test]
fn fixed_covariance_must_match_the_image_shape() -> TestResult {
    let lrc = Arc::new(Stationary::lrc((1, 6, 6), 2.0)?);
    let err = GradientRegularizer::new(config(CovSpec::Fixed(lrc), (1, 8, 8), false)).unwrap_err();
    assert!(err.to_string().contains("(1, 6, 6)"), "{err}");
    Ok(())
}

#[test]
fn penalty_before_any_perturbation_is_an_error_not_zero() -> TestResult {
    let r = GradientRegularizer::new(config(CovSpec::EmaDense, (1, 16, 16), false))?;
    let (m, _vm) = model(tiny_config(1), 1, DType::F32);
    let x = rand_tensor(&[2, 1, 16, 16], 1, 0.0, 1.0).to_dtype(DType::F32)?;
    let y = Tensor::new(&[0u32, 1], &Device::Cpu)?;
    let ig = input_gradient(&m, &x, &y, false)?;
    let err = r.penalty(&m, &y, &ig).unwrap_err().to_string();
    assert!(err.contains("observe"), "{err}");
    Ok(())
}

#[test]
fn exact_mode_is_refused_without_double_backprop() -> TestResult {
    // This binary never sets CANDLE_GRAD_DO_NOT_DETACH.
    assert!(!double_backprop_works()?);
    let mut c = config(CovSpec::EmaDense, (1, 16, 16), false);
    c.second_order = SecondOrder::Exact;
    // Construction and the explicit-gradient interface need no double backprop...
    let mut r = GradientRegularizer::new(c)?;
    let (m, _vm) = model(tiny_config(1), 1, DType::F32);
    let x = rand_tensor(&[2, 1, 16, 16], 1, 0.0, 1.0).to_dtype(DType::F32)?;
    let y = Tensor::new(&[0u32, 1], &Device::Cpu)?;
    let ig = input_gradient(&m, &x, &y, false)?;
    r.observe(&ig.grad.sign()?)?;
    let (omega, adjoint) = r.penalty_adjoint(&ig.grad)?;
    assert!(scalar(&omega) > 0.0);
    assert_eq!(adjoint.dims(), ig.grad.dims());
    // ...but the autograd penalty and a gradient with its graph are refused, not silently first-order.
    let err = r.penalty(&m, &y, &ig).unwrap_err();
    assert!(matches!(err, RegError::NoDoubleBackprop), "{err}");
    assert!(err.to_string().contains("CANDLE_GRAD_DO_NOT_DETACH"));
    assert!(matches!(
        input_gradient(&m, &x, &y, true).unwrap_err(),
        RegError::NoDoubleBackprop
    ));
    Ok(())
}
