//! Times (and lets `perf` profile) training steps of one method on the MNIST CNN, batch 128, embedded
//! images: `cargo run --release -p sgr-train --example profile_method -- sgr-sign [steps]`.
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use sgr_models::{Cnn, CnnConfig, init_params};
use sgr_train::{Adam, AdamConfig, MethodContext, MethodOptions, StepInput, build_method};

/// The allocator `cargo xtask` uses (mimalloc, freed memory kept mapped).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(unsafe_code)]
fn main() -> anyhow::Result<()> {
    // SAFETY: sets mimalloc's purge delay (option 15) to "never", as xtask does.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    // SAFETY: single-threaded here, before any backward pass.
    unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") };
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map(String::as_str).unwrap_or("sgr-sign");
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let data = sgr_data::load(sgr_data::DatasetName::MnistSubset, None)?;
    let ctx = MethodContext {
        dataset: sgr_data::DatasetName::MnistSubset,
        train: &data.train,
    };
    let idx: Vec<usize> = (0..128).map(|i| i % data.train.len()).collect();
    let (x, y) = data.train.batch(&idx, None, DType::F32, &Device::Cpu)?;
    let name: sgr_train::MethodName = name.parse().map_err(anyhow::Error::msg)?;
    let mut method = build_method(name, &ctx, MethodOptions::default())?;
    let config = CnnConfig::mnist();
    let varmap = VarMap::new();
    init_params(&varmap, &config, 0, DType::F32, &Device::Cpu)?;
    let model = Cnn::new(
        config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let mut adam = Adam::new(vars, AdamConfig::default())?;
    if std::env::var("SGR_BREAKDOWN").is_ok() {
        use sgr_regularizers::Regularizer;
        let reg_config = sgr_regularizers::RegularizerConfig {
            shape: (1, 28, 28),
            cov: sgr_regularizers::CovSpec::EmaDense,
            beta: 0.1,
            target_mean_diag: data.train.mean_pixel_variance(),
            second_order: sgr_regularizers::SecondOrder::Exact,
            uncentred: false,
        };
        let mut reg = sgr_regularizers::GradientRegularizer::new(reg_config)?;
        let mut t = [
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        ];
        for _ in 0..steps {
            let t0 = std::time::Instant::now();
            let pass = model.explicit_pass(&x, &y, true)?;
            let t1 = std::time::Instant::now();
            let g = pass
                .input_grad
                .clone()
                .ok_or_else(|| candle_core::Error::Msg("no input gradient".into()))?;
            let xi = g.neg()?.sign()?;
            let t1b = std::time::Instant::now();
            reg.observe(&xi)?;
            let t2 = std::time::Instant::now();
            let (_, adj) = reg.penalty_adjoint(&g)?;
            let t3 = std::time::Instant::now();
            let grads = model.explicit_gradients(&pass, 1.0 / 128.0, Some(&adj))?;
            let t4 = std::time::Instant::now();
            let grads: std::collections::HashMap<_, _> = grads.into_iter().collect();
            adam.step(&grads)?;
            let t5 = std::time::Instant::now();
            for (i, (a, b)) in [(t0, t1), (t1, t1b), (t1b, t2), (t2, t3), (t3, t4), (t4, t5)]
                .iter()
                .enumerate()
            {
                t[i].push((*b - *a).as_secs_f64() * 1e3);
            }
        }
        for (name, mut v) in [
            "pass+input grad",
            "sign",
            "observe",
            "penalty",
            "param grads",
            "adam",
        ]
        .into_iter()
        .zip(t)
        {
            v.sort_by(|a, b| a.total_cmp(b));
            println!("{name}: {:.1} ms", v[v.len() / 2]);
        }
        return Ok(());
    }
    let mut times = Vec::new();
    for step in 0..steps as u64 {
        let t = std::time::Instant::now();
        let o = method.loss(&StepInput {
            model: &model,
            params: &varmap,
            x: &x,
            y: &y,
            step,
            seed: 0,
        })?;
        adam.step(&o.gradients()?)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name}: median {:.1} ms over {steps} steps",
        times[steps / 2]
    );
    Ok(())
}

/// The pieces of an exact SGR-sign step (`SGR_BREAKDOWN=1`): explicit pass, covariance update, penalty
/// product, second-order gradients.
#[allow(dead_code)]
fn breakdown() {}
