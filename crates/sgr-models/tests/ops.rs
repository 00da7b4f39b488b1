//! The unfold + matmul convolution against candle's `conv2d`: values, first- and second-order gradients.
//! One test in this binary: it sets `CANDLE_GRAD_DO_NOT_DETACH` before the thread's first backward.
#![allow(unsafe_code)]

mod common;

use candle_core::{Tensor, Var};
use common::{rand_tensor, scalar};
use sgr_models::ops::conv2d_valid;

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    sgr_testutil::max_abs_diff(a, b)
}

#[test]
fn conv2d_valid_matches_candle_to_second_order() {
    // SAFETY: the only test of this binary, before any backward pass.
    unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") };
    for (b, c, h, w, o, k) in [
        (2usize, 3usize, 7usize, 9usize, 4usize, 3usize),
        (1, 1, 5, 5, 2, 1),
        (3, 2, 6, 4, 5, 3),
        (2, 4, 8, 8, 3, 5),
    ] {
        let x = rand_tensor(&[b, c, h, w], 1 + b as u64, -1.0, 1.0);
        let wt = rand_tensor(&[o, c, k, k], 2 + c as u64, -1.0, 1.0);
        let bias = rand_tensor(&[o], 3, -1.0, 1.0);
        let ours = |x: &Tensor, w: &Tensor, bi: &Tensor| conv2d_valid(x, w, Some(bi)).unwrap();
        let theirs = |x: &Tensor, w: &Tensor, bi: &Tensor| {
            x.conv2d(w, 0, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bi.reshape((1, o, 1, 1)).unwrap())
                .unwrap()
        };
        assert!(max_diff(&ours(&x, &wt, &bias), &theirs(&x, &wt, &bias)) < 1e-12);
        // A smooth scalar of the output, so second derivatives are non-trivial: Σ u ⊙ out².
        let u = rand_tensor(&[b, o, h + 1 - k, w + 1 - k], 4, -1.0, 1.0);
        let loss = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
                    x: &Tensor,
                    w: &Tensor,
                    bi: &Tensor| {
            (f(x, w, bi).sqr().unwrap() * &u)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor| {
            let (xv, wv, bv) = (
                Var::from_tensor(&x).unwrap(),
                Var::from_tensor(&wt).unwrap(),
                Var::from_tensor(&bias).unwrap(),
            );
            let g = loss(f, xv.as_tensor(), wv.as_tensor(), bv.as_tensor())
                .backward()
                .unwrap();
            let gx = g.get(xv.as_tensor()).unwrap().clone();
            let gw = g.get(wv.as_tensor()).unwrap().clone();
            let gb = g.get(bv.as_tensor()).unwrap().clone();
            // Second order: ∇_{x,w} (gx · v).
            let v = rand_tensor(x.dims(), 5, -1.0, 1.0);
            let h = (&gx * &v).unwrap().sum_all().unwrap().backward().unwrap();
            let hx = h
                .get(xv.as_tensor())
                .expect("second order through x")
                .clone();
            let hw = h
                .get(wv.as_tensor())
                .expect("second order through w")
                .clone();
            (gx, gw, gb, hx, hw)
        };
        let a = grads(&ours);
        let t = grads(&theirs);
        for (name, p, q) in [
            ("dx", &a.0, &t.0),
            ("dw", &a.1, &t.1),
            ("db", &a.2, &t.2),
            ("d2x", &a.3, &t.3),
            ("d2w", &a.4, &t.4),
        ] {
            let scale = scalar(&q.abs().unwrap().flatten_all().unwrap().max(0).unwrap()).max(1.0);
            assert!(
                max_diff(p, q) < 1e-10 * scale,
                "{name} differs for {b}x{c}x{h}x{w} k{k}"
            );
        }
    }
    assert!(
        conv2d_valid(
            &rand_tensor(&[1, 2, 4, 4], 1, 0.0, 1.0),
            &rand_tensor(&[3, 3, 3, 3], 2, 0.0, 1.0),
            None
        )
        .is_err()
    );
}
