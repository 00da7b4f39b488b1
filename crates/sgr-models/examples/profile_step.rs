//! Times (and lets `perf` profile) the MNIST or CIFAR CNN's clean training step and input gradient without
//! the rest of the workspace: `cargo run --release -p sgr-models --example profile_step -- [mnist|cifar] [steps]`.
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use sgr_models::{Cnn, CnnConfig, init_params};

#[allow(unsafe_code)]
fn main() -> candle_core::Result<()> {
    // SAFETY: single-threaded here, before any backward pass (double backprop for the gn step below).
    unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") };
    let args: Vec<String> = std::env::args().collect();
    let config = match args.get(1).map(String::as_str) {
        Some("cifar") => CnnConfig::cifar10(),
        _ => CnnConfig::mnist(),
    };
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let plain = std::env::var("SGR_PLAIN_OPS").is_ok();
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    init_params(&varmap, &config, 0, DType::F32, &dev)?;
    let mut model = Cnn::new(
        config.clone(),
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    model.set_plain_ops(plain);
    let b = 128;
    let x = Tensor::rand(
        0f32,
        1f32,
        (b, config.in_channels, config.height, config.width),
        &dev,
    )?;
    let y = Tensor::from_vec((0..b as u32).map(|i| i % 10).collect::<Vec<_>>(), b, &dev)?;
    let frozen = model.frozen();
    let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    // SGR_PROFILE_ONLY=clean (or gn) times only that step (for perf).
    let only = std::env::var("SGR_PROFILE_ONLY").unwrap_or_default();
    let only_clean = only == "clean";
    let only_gn = only == "gn";
    let mut gn_times = Vec::new();
    for _ in 0..steps {
        // A GN step (Σ = I): CE + ‖∇_x log p‖² through the explicit input gradient, one backward.
        let t = std::time::Instant::now();
        let (logits, _, g) = model.log_lik_input_gradient(&x, &y)?;
        let ce = candle_nn::loss::cross_entropy(&logits, &y)?;
        let loss = (ce + g.sqr()?.sum_all()?)?;
        std::hint::black_box(loss.backward()?);
        gn_times.push(t.elapsed().as_secs_f64() * 1e3);
        if only_gn {
            continue;
        }
        let t = std::time::Instant::now();
        let loss = candle_nn::loss::cross_entropy(&model.forward(&x)?, &y)?;
        let g = loss.backward()?;
        std::hint::black_box(g);
        times[0].push(t.elapsed().as_secs_f64() * 1e3);
        if only_clean {
            continue;
        }
        let t = std::time::Instant::now();
        let xv = Var::from_tensor(&x)?;
        let loss = candle_nn::loss::cross_entropy(&frozen.forward(xv.as_tensor())?, &y)?;
        let g = loss.backward()?;
        std::hint::black_box(g.get(xv.as_tensor()).map(|t| t.sum_all()));
        times[1].push(t.elapsed().as_secs_f64() * 1e3);
        let t = std::time::Instant::now();
        let f = frozen.forward(&x)?;
        std::hint::black_box(f);
        times[2].push(t.elapsed().as_secs_f64() * 1e3);
        let t = std::time::Instant::now();
        let (_, _, g) = frozen.log_lik_input_gradient(&x, &y)?;
        std::hint::black_box(g);
        times[3].push(t.elapsed().as_secs_f64() * 1e3);
    }
    let [a, b, c, d] = times;
    for (name, mut v) in [
        "clean step (fwd+bwd)",
        "frozen input grad",
        "forward",
        "explicit input grad",
        "gn step (fwd+bwd)",
    ]
    .into_iter()
    .zip([a, b, c, d, gn_times])
    {
        if v.is_empty() {
            continue;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{name}: median {:.1} ms, min {:.1} ms",
            v[v.len() / 2],
            v[0]
        );
    }
    Ok(())
}
