//! Per-operation times of the MNIST CNN's forward pass on the channels-last ops (batch 128, plain tensors):
//! `cargo run --release -p sgr-models --example forward_ops`.
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use sgr_models::ops::{conv2d_nhwc, max_pool2x2_nhwc, relu, to_nchw, to_nhwc};
use sgr_models::{CnnConfig, init_params, standardize};

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let config = CnnConfig::mnist();
    let vm = VarMap::new();
    init_params(&vm, &config, 0, DType::F32, &dev)?;
    let p = |n: &str| -> Tensor {
        vm.data().lock().expect("the VarMap lock")[n]
            .as_tensor()
            .detach()
    };
    let x = Tensor::rand(0f32, 1f32, (128, 1, 28, 28), &dev)?;
    let mut t = vec![Vec::new(); 12];
    for _ in 0..15 {
        let mut k = 0;
        let mut lap = std::time::Instant::now();
        let mut tick = |t: &mut Vec<Vec<f64>>| {
            let now = std::time::Instant::now();
            t[k].push((now - lap).as_secs_f64() * 1e3);
            lap = now;
            k += 1;
        };
        let z = to_nhwc(&standardize(&x)?)?;
        tick(&mut t);
        let r1 = conv2d_nhwc(&z, &p("conv1.weight"), Some(&p("conv1.bias")), true)?;
        tick(&mut t);
        let r2 = conv2d_nhwc(&r1, &p("conv2.weight"), Some(&p("conv2.bias")), true)?;
        tick(&mut t);
        let p2 = max_pool2x2_nhwc(&r2)?;
        tick(&mut t);
        let r3 = conv2d_nhwc(&p2, &p("conv3.weight"), Some(&p("conv3.bias")), true)?;
        tick(&mut t);
        let r4 = conv2d_nhwc(&r3, &p("conv4.weight"), Some(&p("conv4.bias")), true)?;
        tick(&mut t);
        let p4 = max_pool2x2_nhwc(&r4)?;
        tick(&mut t);
        let f = to_nchw(&p4)?.flatten_from(1)?;
        tick(&mut t);
        let lin = |x: &Tensor, n: &str| -> candle_core::Result<Tensor> {
            x.matmul(&p(&format!("{n}.weight")).t()?)?
                .broadcast_add(&p(&format!("{n}.bias")))
        };
        let r5 = relu(&lin(&f, "fc1")?)?;
        tick(&mut t);
        let r6 = relu(&lin(&r5, "fc2")?)?;
        tick(&mut t);
        let z = lin(&r6, "fc3")?;
        tick(&mut t);
        std::hint::black_box(z);
    }
    let names = [
        "standardize",
        "conv1",
        "conv2",
        "pool2",
        "conv3",
        "conv4",
        "pool4",
        "to_nchw",
        "fc1",
        "fc2",
        "fc3",
    ];
    let mut total = 0.0;
    for (n, mut v) in names.iter().zip(t) {
        v.sort_by(|a, b| a.total_cmp(b));
        total += v[v.len() / 2];
        println!("{n}: {:.2} ms", v[v.len() / 2]);
    }
    println!("sum of medians: {total:.1} ms");
    Ok(())
}
