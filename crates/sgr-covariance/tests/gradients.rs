//! Gradients through the structured product, first and second order, against finite differences (f64).
//! One test in this binary: it sets `CANDLE_GRAD_DO_NOT_DETACH` before the thread's first backward.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`
#![allow(unsafe_code)]

use candle_core::{Tensor, Var};
use sgr_covariance::{ChannelStructure, CovFun, Covariance, Stationary};
use sgr_testutil::rand_tensor;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

#[test]
fn first_and_second_order_gradients_match_finite_differences() -> TestResult {
    // SAFETY: the only test of this binary, before any backward pass.
    unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") };
    let covs: Vec<Box<dyn Covariance>> = vec![
        Box::new(CovFun::from_fn(
            (3, 5, 6),
            2,
            ChannelStructure::IntraInter,
            |a, b, r| {
                if a == b { 1.0 / (1.0 + r as f64) } else { 0.3 }
            },
        )?),
        Box::new(Stationary::lrc((1, 9, 7), 2.0)?),
        Box::new(CovFun::from_fn(
            (2, 20, 18),
            30,
            ChannelStructure::Full,
            |a, b, r| (-(r as f64) / (3.0 + (a + b) as f64)).exp(),
        )?),
    ];
    for cov in covs {
        let (c, h, w) = cov.shape();
        let shape = [2, c, h, w];
        let x0 = rand_tensor(&shape, 1, -1.0, 1.0);
        let u = rand_tensor(&shape, 2, -1.0, 1.0);
        // f(x) = Σ (x ⊙ x) ⊙ Σ(x ⊙ x) ... a smooth non-quadratic function of x through the op.
        let f = |x: &Tensor| -> Tensor {
            let x2 = x.sqr().unwrap();
            (cov.matvec(&x2).unwrap() * &x2).unwrap().sum_all().unwrap()
        };
        let h_ = 1e-6;
        let xv = Var::from_tensor(&x0)?;
        let g = f(xv.as_tensor())
            .backward()?
            .get(xv.as_tensor())
            .unwrap()
            .clone();
        let fd = (scalar(&f(&(&x0 + (&u * h_)?)?)) - scalar(&f(&(&x0 - (&u * h_)?)?))) / (2.0 * h_);
        let an = scalar(&(&g * &u)?.sum_all()?);
        assert!(
            (fd - an).abs() < 1e-6 * an.abs().max(1.0),
            "{}: first order {an} vs {fd}",
            cov.kind()
        );
        // Second order: ∇(g·u)·v by double backprop vs finite differences of g along v.
        let v = rand_tensor(&shape, 3, -1.0, 1.0);
        let xv = Var::from_tensor(&x0)?;
        let g = f(xv.as_tensor())
            .backward()?
            .get(xv.as_tensor())
            .unwrap()
            .clone();
        let gu = (g * &u)?.sum_all()?;
        let hu = gu
            .backward()?
            .get(xv.as_tensor())
            .expect("second-order gradient missing")
            .clone();
        let exact = scalar(&(hu * &v)?.sum_all()?);
        let grad = |x: &Tensor| {
            let xv = Var::from_tensor(x).unwrap();
            f(xv.as_tensor())
                .backward()
                .unwrap()
                .get(xv.as_tensor())
                .unwrap()
                .clone()
        };
        let gp = grad(&(&x0 + (&v * h_)?)?);
        let gm = grad(&(&x0 - (&v * h_)?)?);
        let fd2 = scalar(&((((gp - gm)? / (2.0 * h_))?) * &u)?.sum_all()?);
        assert!(
            (exact - fd2).abs() < 1e-5 * exact.abs().max(1.0),
            "{}: second order {exact} vs {fd2}",
            cov.kind()
        );
    }
    Ok(())
}
