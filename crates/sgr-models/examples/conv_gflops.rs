//! GFLOP/s of the fused convolution and of its two backward products on the MNIST CNN's layer shapes
//! (batch 128): `cargo run --release -p sgr-models --example conv_gflops [cifar]`.
use candle_core::{Device, Tensor, Var};

fn median_ms(mut f: impl FnMut() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    let mut ts = Vec::new();
    for _ in 0..9 {
        let t = std::time::Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    Ok(ts[4])
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!("| layer | forward ms (GFLOP/s) | weight grad ms | input grad ms |");
    // `cifar` as the first argument: the CIFAR-10 CNN's layers.
    let layers: &[(usize, usize, usize)] = if std::env::args().nth(1).as_deref() == Some("cifar") {
        &[(32, 3, 64), (30, 64, 64), (14, 64, 128), (12, 128, 128)]
    } else {
        &[(28, 1, 32), (26, 32, 32), (12, 32, 64), (10, 64, 64)]
    };
    for &(h, c, o) in layers {
        let x = Tensor::rand(0f32, 1f32, (128, h, h, c), &dev)?;
        let w = Var::from_tensor(&Tensor::rand(-1f32, 1f32, (o, c, 3, 3), &dev)?)?;
        let b = Tensor::rand(-1f32, 1f32, o, &dev)?;
        let oh = h - 2;
        let gflop = 2.0 * 128.0 * (oh * oh * o * 9 * c) as f64 / 1e9;
        let fwd = median_ms(|| {
            let y = sgr_models::ops::conv2d_nhwc(&x, &w.as_tensor().detach(), Some(&b), false)?;
            std::hint::black_box(y);
            Ok(())
        })?;
        // Backward with only the weight in the graph, then with only the input.
        let wgrad = median_ms(|| {
            let y = sgr_models::ops::conv2d_nhwc(&x, w.as_tensor(), Some(&b), false)?;
            std::hint::black_box(y.sum_all()?.backward()?);
            Ok(())
        })? - fwd;
        let xv = Var::from_tensor(&x)?;
        let wd = w.as_tensor().detach();
        let igrad = median_ms(|| {
            let y = sgr_models::ops::conv2d_nhwc(xv.as_tensor(), &wd, Some(&b), false)?;
            std::hint::black_box(y.sum_all()?.backward()?);
            Ok(())
        })? - fwd;
        // The kernels alone, on plain tensors (no autograd).
        let dy = Tensor::rand(-1f32, 1f32, (128, oh, oh, o), &dev)?;
        let wk = median_ms(|| {
            std::hint::black_box(sgr_models::ops::conv2d_nhwc_weight_grad(&x, &dy, 3)?);
            Ok(())
        })?;
        let ik = median_ms(|| {
            std::hint::black_box(sgr_models::ops::conv2d_nhwc_input_grad(&dy, &wd, (h, h))?);
            Ok(())
        })?;
        println!(
            "kernels alone: weight grad {wk:.1} ms ({:.0} GFLOP/s), input grad {ik:.1} ms ({:.0} GFLOP/s)",
            gflop / wk * 1e3,
            gflop / ik * 1e3
        );
        println!(
            "| {h}x{h}x{c} -> {o} | {fwd:.1} ({:.0}) | {wgrad:.1} ({:.0}) | {igrad:.1} ({:.0}) |",
            gflop / fwd * 1e3,
            gflop / wgrad * 1e3,
            gflop / igrad * 1e3
        );
    }
    Ok(())
}
