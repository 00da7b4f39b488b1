//! The fused channels-last ops against plain candle compositions (candle's `conv2d`, `relu`, the reshape+max
//! pool): values, first-order gradients, and second-order gradients of every first-order gradient with
//! respect to every input, on random shapes in f64.
//! One test in this binary: it sets `CANDLE_GRAD_DO_NOT_DETACH` before the thread's first backward.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`
#![allow(unsafe_code)]

use candle_core::{Tensor, Var};
use sgr_models::ops::{
    conv2d_nhwc, conv2d_nhwc_input_grad, conv2d_nhwc_input_grad_masked, max_pool2x2_nhwc,
    max_pool2x2_nhwc_backward, relu, relu_backward, to_nchw, to_nhwc,
};
use sgr_testutil::{rand_tensor, scalar};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

type F<'a> = &'a dyn Fn(&[Tensor]) -> Tensor;

fn close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let scale = sgr_testutil::max_abs(b).max(1.0);
    let diff = sgr_testutil::max_abs_diff(a, b);
    assert!(
        diff < 1e-10 * scale,
        "{what}: max diff {diff} (scale {scale})"
    );
}

/// Compares `ours` and `theirs` on `inputs`: values; gradients of `Σ u ⊙ out²` with respect to every input;
/// and for every first-order gradient `g_i`, the gradients of `⟨g_i, v_i⟩` with respect to every input
/// (missing gradients count as zero on both sides).
fn compare(ours: F<'_>, theirs: F<'_>, inputs: &[Tensor], what: &str, seed: u64) {
    let a = ours(inputs);
    let b = theirs(inputs);
    close(&a, &b, &format!("{what}: value"));
    let u = rand_tensor(b.dims(), seed, -1.0, 1.0);
    let vs: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| rand_tensor(t.dims(), seed + 1 + i as u64, -1.0, 1.0))
        .collect();
    let run = |f: F<'_>| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let loss = (f(&ts).sqr().unwrap() * &u).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let first: Vec<Tensor> = ts
            .iter()
            .map(|t| g.get(t).cloned().unwrap_or_else(|| t.zeros_like().unwrap()))
            .collect();
        let mut second = Vec::new();
        for (gi, vi) in first.iter().zip(&vs) {
            let h = (gi * vi).unwrap().sum_all().unwrap().backward().unwrap();
            for t in &ts {
                second.push(h.get(t).cloned().unwrap_or_else(|| t.zeros_like().unwrap()));
            }
        }
        (first, second)
    };
    let (fa, sa) = run(ours);
    let (fb, sb) = run(theirs);
    for (i, (p, q)) in fa.iter().zip(&fb).enumerate() {
        close(p, q, &format!("{what}: d/d input {i}"));
    }
    let n = inputs.len();
    for (k, (p, q)) in sa.iter().zip(&sb).enumerate() {
        close(
            p,
            q,
            &format!("{what}: d/d input {} of <grad {}, v>", k % n, k / n),
        );
    }
}

fn candle_conv(x_nhwc: &Tensor, w: &Tensor, b: Option<&Tensor>, act: bool) -> Tensor {
    let x = x_nhwc.permute((0, 3, 1, 2)).unwrap();
    let mut y = x.conv2d(w, 0, 1, 1, 1).unwrap();
    if let Some(b) = b {
        y = y
            .broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1, 1)).unwrap())
            .unwrap();
    }
    if act {
        y = y.relu().unwrap();
    }
    y.permute((0, 2, 3, 1)).unwrap()
}

fn conv_cases() {
    for (b, c, h, w, o, k) in [
        (2usize, 3usize, 7usize, 9usize, 4usize, 3usize),
        (1, 1, 5, 5, 2, 1),
        (3, 2, 6, 4, 5, 3),
        (2, 4, 8, 8, 3, 5),
        // More images than one work item holds (the chunking of the batch).
        (40, 2, 30, 30, 3, 3),
        // Model-like channel counts.
        (2, 9, 7, 6, 5, 3),
        (3, 16, 8, 8, 8, 3),
        (2, 8, 6, 7, 4, 2),
    ] {
        let seed = (b * 100 + c * 10 + k) as u64;
        let x = rand_tensor(&[b, h, w, c], seed, -1.0, 1.0);
        let wt = rand_tensor(&[o, c, k, k], seed + 1, -1.0, 1.0);
        let bias = rand_tensor(&[o], seed + 2, -1.0, 1.0);
        let what = format!("{b}x{h}x{w}x{c} k{k} o{o}");
        for act in [false, true] {
            compare(
                &|t| conv2d_nhwc(&t[0], &t[1], Some(&t[2]), act).unwrap(),
                &|t| candle_conv(&t[0], &t[1], Some(&t[2]), act),
                &[x.clone(), wt.clone(), bias.clone()],
                &format!("conv {what} relu {act}"),
                seed + 3,
            );
        }
        compare(
            &|t| conv2d_nhwc(&t[0], &t[1], None, false).unwrap(),
            &|t| candle_conv(&t[0], &t[1], None, false),
            &[x.clone(), wt.clone()],
            &format!("conv without bias {what}"),
            seed + 4,
        );
        // The input-gradient op as a function of (dy, weight), against candle's autograd of the
        // convolution (made differentiable by CANDLE_GRAD_DO_NOT_DETACH).
        let dy = rand_tensor(&[b, h + 1 - k, w + 1 - k, o], seed + 5, -1.0, 1.0);
        compare(
            &|t| conv2d_nhwc_input_grad(&t[0], &t[1], (h, w)).unwrap(),
            &|t| {
                let xv = Var::from_tensor(&x).unwrap();
                let y = candle_conv(xv.as_tensor(), &t[1], None, false);
                let g = (y * &t[0]).unwrap().sum_all().unwrap().backward().unwrap();
                g.get(xv.as_tensor()).unwrap().clone()
            },
            &[dy.clone(), wt.clone()],
            &format!("conv input gradient {what}"),
            seed + 6,
        );
        // The same, masked by a ReLU output r (the fused op of the explicit reverse pass).
        let r = rand_tensor(&[b, h, w, c], seed + 7, -1.0, 1.0)
            .relu()
            .unwrap();
        let mask = r.gt(0.0).unwrap().to_dtype(r.dtype()).unwrap();
        compare(
            &|t| conv2d_nhwc_input_grad_masked(&t[0], &t[1], &r).unwrap(),
            &|t| {
                let xv = Var::from_tensor(&x).unwrap();
                let y = candle_conv(xv.as_tensor(), &t[1], None, false);
                let g = (y * &t[0]).unwrap().sum_all().unwrap().backward().unwrap();
                (g.get(xv.as_tensor()).unwrap() * &mask).unwrap()
            },
            &[dy, wt.clone()],
            &format!("masked conv input gradient {what}"),
            seed + 8,
        );
    }
}

#[test]
fn fused_ops_match_candle_to_second_order() -> TestResult {
    // SAFETY: the only test of this binary, before any backward pass.
    unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") };
    conv_cases();

    // ReLU and its backward.
    let x = rand_tensor(&[3, 5, 7], 11, -1.0, 1.0);
    compare(
        &|t| relu(&t[0]).unwrap(),
        &|t| t[0].relu().unwrap(),
        std::slice::from_ref(&x),
        "relu",
        12,
    );
    let r = rand_tensor(&[3, 5, 7], 13, -1.0, 1.0);
    let mask = r.gt(0.0)?.to_dtype(r.dtype())?;
    close(&relu_backward(&x, &r)?, &(&x * &mask)?, "relu backward");

    // Max-pool, even and odd sizes.
    for (shape, seed) in [
        ([2usize, 6usize, 8usize, 3usize], 21u64),
        ([1, 5, 7, 2], 22),
    ] {
        let x = rand_tensor(&shape, seed, -1.0, 1.0);
        compare(
            &|t| max_pool2x2_nhwc(&t[0]).unwrap(),
            &|t| {
                let p = sgr_models::max_pool2x2(&t[0].permute((0, 3, 1, 2)).unwrap()).unwrap();
                p.permute((0, 2, 3, 1)).unwrap()
            },
            std::slice::from_ref(&x),
            &format!("max pool {shape:?}"),
            seed + 1,
        );
        let pooled = [shape[0], shape[1] / 2, shape[2] / 2, shape[3]];
        let g = rand_tensor(&pooled, seed + 2, -1.0, 1.0);
        let xv = Var::from_tensor(&x)?;
        let auto = (max_pool2x2_nhwc(xv.as_tensor())? * &g)?
            .sum_all()?
            .backward()?;
        close(
            &max_pool2x2_nhwc_backward(&g, &x)?,
            auto.get(xv.as_tensor()).unwrap(),
            "max pool backward",
        );
    }

    // Layout helpers are inverse to each other.
    for c in [1usize, 3] {
        let x = rand_tensor(&[2, c, 4, 5], 31, 0.0, 1.0);
        close(&to_nchw(&to_nhwc(&x)?)?, &x, "layout round trip");
        assert_eq!(to_nhwc(&x)?.dims(), &[2, 4, 5, c]);
    }

    // Mismatched shapes are errors, not panics.
    let x = rand_tensor(&[1, 4, 4, 2], 1, 0.0, 1.0);
    assert!(conv2d_nhwc(&x, &rand_tensor(&[3, 3, 3, 3], 2, 0.0, 1.0), None, false).is_err());
    assert!(conv2d_nhwc(&x, &rand_tensor(&[3, 2, 5, 5], 2, 0.0, 1.0), None, false).is_err());
    assert!(
        conv2d_nhwc(
            &x,
            &rand_tensor(&[3, 2, 3, 3], 2, 0.0, 1.0),
            Some(&rand_tensor(&[2], 3, 0.0, 1.0)),
            false
        )
        .is_err()
    );
    assert!(
        conv2d_nhwc_input_grad(
            &rand_tensor(&[1, 2, 2, 3], 4, 0.0, 1.0),
            &rand_tensor(&[3, 2, 3, 3], 2, 0.0, 1.0),
            (5, 5)
        )
        .is_err()
    );
    assert!(max_pool2x2_nhwc_backward(&rand_tensor(&[1, 3, 3, 2], 5, 0.0, 1.0), &x).is_err());
    assert!(scalar(&relu(&x)?.sum_all()?) > 0.0);
    Ok(())
}

/// Ties in a pooling window go to the first maximum in row-major order (PyTorch's choice), for the pool, its
/// gather at another tensor's arg-max, and the scatter; odd trailing rows and columns get nothing.
#[test]
fn pool_ties_go_to_the_first_maximum() -> TestResult {
    use sgr_models::ops::max_pool2x2_nhwc_gather;
    let dev = candle_core::Device::Cpu;
    // One image 3×4 (the last row is dropped by the pool), one channel; windows (row-major values):
    // [1 3 / 3 2] → position 1, [5 5 / 5 5] → 0, [0 0 / 7 7] → 2 (the second 7 is not greater).
    #[rustfmt::skip]
    let x = Tensor::new(&[
        1f64, 3., 5., 5.,
        3.,   2., 5., 5.,
        9.,   9., 9., 9.,
    ], &dev)?.reshape((1, 3, 4, 1))?;
    let pooled = max_pool2x2_nhwc(&x)?.flatten_all()?;
    assert_eq!(pooled.to_vec1::<f64>()?, vec![3.0, 5.0]);
    let g = Tensor::new(&[10f64, 20.], &dev)?.reshape((1, 1, 2, 1))?;
    let s = max_pool2x2_nhwc_backward(&g, &x)?;
    #[rustfmt::skip]
    let want = vec![
        0f64, 10., 20., 0.,
        0.,   0.,  0.,  0.,
        0.,   0.,  0.,  0.,
    ];
    assert_eq!(s.flatten_all()?.to_vec1::<f64>()?, want);
    let y = Tensor::new(&[0f64, 0., 0., 0., 7., 7., 1., 1.], &dev)?.reshape((1, 2, 2, 2))?;
    let v = Tensor::new(&[1f64, 2., 3., 4., 5., 6., 7., 8.], &dev)?.reshape((1, 2, 2, 2))?;
    // Channel 0 window [0 0 / 7 1] → position 2 (value 5); channel 1 [0 0 / 7 1] → 2 (value 6).
    let got = max_pool2x2_nhwc_gather(&v, &y)?.flatten_all()?;
    assert_eq!(got.to_vec1::<f64>()?, vec![5.0, 6.0]);
    Ok(())
}

/// A batch large enough for the weight gradient to accumulate several L2-sized chunks per task (64 images of
/// 30×30×16: one task holds four images, a chunk two), against sums written with candle's matmul.
#[test]
fn weight_gradient_accumulates_chunks_within_tasks() -> TestResult {
    use sgr_models::ops::conv2d_nhwc_weight_grad;
    let x = rand_tensor(&[64, 30, 30, 16], 3, -1.0, 1.0);
    let dy = rand_tensor(&[64, 28, 28, 8], 4, -1.0, 1.0);
    let ours = conv2d_nhwc_weight_grad(&x, &dy, 3)?;
    // dW[o, c, i, j] = Σ_{b,p,q} dy[b,p,q,o]·x[b,p+i,q+j,c]: one candle matmul per kernel offset.
    let mut want = vec![0f64; 8 * 16 * 9];
    for i in 0..3 {
        for j in 0..3 {
            let xs = x
                .narrow(1, i, 28)?
                .narrow(2, j, 28)?
                .reshape((64 * 28 * 28, 16))?;
            let d = dy.reshape((64 * 28 * 28, 8))?;
            let block = d.t()?.matmul(&xs)?.to_vec2::<f64>()?;
            for o in 0..8 {
                for c in 0..16 {
                    want[((o * 16 + c) * 3 + i) * 3 + j] = block[o][c];
                }
            }
        }
    }
    let want = Tensor::from_vec(want, (8, 16, 3, 3), &candle_core::Device::Cpu)?;
    close(&ours, &want, "weight gradient, 64 images");
    Ok(())
}
