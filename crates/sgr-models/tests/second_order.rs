//! Second order through the model: Hessian-vector products of the log-likelihood with respect to the input,
//! by double backprop, against finite differences of the gradient. This is what exact SGR needs.
//!
//! One test in this binary: it sets `CANDLE_GRAD_DO_NOT_DETACH` before the thread's first backward.
#![allow(unsafe_code)]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{log_lik, model, rand_tensor, scalar};
use sgr_models::CnnConfig;

#[test]
fn hessian_vector_products_match_finite_differences() {
    // SAFETY: the only test of this binary, run before any other thread reads the environment.
    unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") };
    for (config, seed) in [(CnnConfig::mnist(), 21u64), (CnnConfig::cifar10(), 22)] {
        let (m, _vm) = model(config.clone(), seed, DType::F64);
        let shape = [2, config.in_channels, config.height, config.width];
        let x = rand_tensor(&shape, seed + 1, 0.0, 1.0);
        let y = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
        let u = rand_tensor(&shape, seed + 2, -1.0, 1.0);
        let v = rand_tensor(&shape, seed + 3, -1.0, 1.0);
        let grad = |x: &Tensor| -> Tensor {
            let xv = Var::from_tensor(x).unwrap();
            let g = log_lik(&m, xv.as_tensor(), &y).unwrap().backward().unwrap();
            g.get(xv.as_tensor()).unwrap().clone()
        };
        // Exact: ∇_x (g(x)·u) · v by double backprop.
        let xv = Var::from_tensor(&x).unwrap();
        let g = log_lik(&m, xv.as_tensor(), &y).unwrap().backward().unwrap();
        let gu = (g.get(xv.as_tensor()).unwrap() * &u)
            .unwrap()
            .sum_all()
            .unwrap();
        let hess = gu.backward().unwrap();
        let hu = hess
            .get(xv.as_tensor())
            .expect("no second-order gradient: CANDLE_GRAD_DO_NOT_DETACH not in effect");
        let exact = scalar(&(hu * &v).unwrap().sum_all().unwrap());
        // Finite differences of the first-order gradient along v.
        // Tiny step: a ReLU or max-pool switch between x ± h·v would make the gradient jump.
        let h = 1e-7;
        let gp = grad(&(&x + (&v * h).unwrap()).unwrap());
        let gm = grad(&(&x - (&v * h).unwrap()).unwrap());
        let fd = scalar(
            &(((gp - gm).unwrap() / (2.0 * h)).unwrap() * &u)
                .unwrap()
                .sum_all()
                .unwrap(),
        );
        let rel = (exact - fd).abs() / fd.abs().max(1e-6);
        eprintln!(
            "{}: uᵀHv exact {exact:.6e} fd {fd:.6e} rel {rel:.1e}",
            config.arch_name()
        );
        assert!(exact.abs() > 1e-6, "a degenerate check: uᵀHv is {exact}");
        assert!(
            rel < 1e-4,
            "{}: exact {exact} vs finite differences {fd}",
            config.arch_name()
        );
    }
}
