//! `cargo xtask bench`: step times of both CNNs (and the methods' training steps) beside PyTorch's, in one run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::Args;
use sgr_models::{Cnn, CnnConfig, DeviceKind, init_params, make_device};
use sgr_train::{Adam, AdamConfig, cross_entropy};

use crate::common::parse_device;

#[derive(Debug, Args)]
pub struct BenchCmd {
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Timed repetitions per case (the median is reported), after two warm-up runs.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Which models: mnist, cifar or both.
    #[arg(long, default_value = "both")]
    model: String,
    /// Python interpreter with torch, to time PyTorch in the same invocation (default: python3 if it imports torch).
    #[arg(long)]
    torch_python: Option<PathBuf>,
    /// Skip the PyTorch comparison.
    #[arg(long)]
    no_torch: bool,
    /// Alternating rounds of our figures and PyTorch's (each case's median across rounds is compared):
    /// on a machine whose speed drifts, more rounds make the ratios steadier.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: DeviceKind,
    /// Also time one full training step (objective, backward, Adam) of these methods on the CNNs of
    /// `--model` (CIFAR-10 on synthetic images), relative to clean, with the peak heap of the step: a comma
    /// list, or `all` (every method, plus sgr-sign with the finite-difference surrogate).
    #[arg(long)]
    methods: Option<String>,
    /// Instead: time each AutoAttack attack on --checkpoint (batch --aa-batch) and run torchattacks' AutoAttack
    /// (xtask/torch_autoattack.py, where python imports torch and torchattacks) on the same model and images.
    #[arg(long)]
    autoattack: bool,
    /// The trained checkpoint (run folder or .safetensors) for --autoattack.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// MNIST IDX folder for --autoattack (default: the folder the checkpoint was trained on).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Test images for --autoattack.
    #[arg(long, default_value_t = 1000)]
    images: usize,
    /// ε of --autoattack in units of 1/255.
    #[arg(long, default_value_t = 32.0)]
    eps: f64,
    /// Batch of --autoattack (AutoAttack's default 250).
    #[arg(long, default_value_t = 250)]
    aa_batch: usize,
}

/// The median (the mean of the middle two for an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Median milliseconds of `reps` calls of `f` after two warm-up calls.
pub(crate) fn time_ms(
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(ts))
}

/// [`time_ms`] of `f` on `device`, each call waited for (kernels on CUDA and Metal run asynchronously).
pub(crate) fn time_ms_on<T>(
    reps: usize,
    device: &Device,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<f64> {
    time_ms(reps, || {
        f()?;
        Ok(device.synchronize()?)
    })
}

/// A model initialised from seed 0 (f32), its parameters and an Adam over them.
fn fresh_model(config: &CnnConfig, device: &Device) -> anyhow::Result<(Cnn, VarMap, Adam)> {
    let varmap = VarMap::new();
    init_params(&varmap, config, 0, DType::F32, device)?;
    let model = Cnn::new(
        config.clone(),
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    let vars: Vec<_> = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let adam = Adam::new(vars, AdamConfig::default())?;
    Ok((model, varmap, adam))
}

fn bench_model(
    name: &str,
    config: CnnConfig,
    batch: usize,
    reps: usize,
    device: &Device,
) -> anyhow::Result<Vec<(String, f64)>> {
    let (model, _varmap, mut adam) = fresh_model(&config, device)?;
    let x = Tensor::rand(
        0f32,
        1f32,
        (batch, config.in_channels, config.height, config.width),
        device,
    )?;
    let y = Tensor::from_vec(
        (0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(),
        batch,
        device,
    )?;

    let mut out = Vec::new();
    out.push((
        "forward".to_string(),
        time_ms_on(reps, device, || {
            model.forward(&x)?.detach().to_device(&Device::Cpu)?;
            Ok(())
        })?,
    ));
    out.push((
        "input_grad".to_string(),
        time_ms_on(reps, device, || {
            let xv = candle_core::Var::from_tensor(&x)?;
            let loss = cross_entropy(&model.forward(xv.as_tensor())?, &y)?;
            let g = loss.backward()?;
            g.get(xv.as_tensor())
                .context("no input gradient")?
                .to_device(&Device::Cpu)?;
            Ok(())
        })?,
    ));
    // The clean step as training runs it: on the CPU, gradients without autograd (Cnn::explicit_gradients).
    out.push((
        "clean_step".to_string(),
        time_ms_on(reps, device, || {
            if model.uses_fast_ops(&x) {
                let pass = model.explicit_pass(&x, &y, false)?;
                let grads = model.explicit_gradients(&pass, 1.0 / batch as f64, None)?;
                adam.step(
                    &grads
                        .into_iter()
                        .collect::<std::collections::HashMap<_, _>>(),
                )?;
            } else {
                let loss = cross_entropy(&model.forward(&x)?, &y)?;
                adam.step(&loss.backward()?)?;
            }
            Ok(())
        })?,
    ));
    // The same step through candle's autograd (one graph node per layer).
    out.push((
        "clean_step_autograd".to_string(),
        time_ms_on(reps, device, || {
            let loss = cross_entropy(&model.forward(&x)?, &y)?;
            adam.step(&loss.backward()?)?;
            Ok(())
        })?,
    ));
    // Attacks run on the frozen copy (no parameter gradients).
    let frozen = model.frozen();
    out.push((
        "input_grad_frozen".to_string(),
        time_ms_on(reps, device, || {
            sgr_attacks::loss_gradient(&frozen, &x, &y)?;
            Ok(())
        })?,
    ));
    // The same gradient through the model's explicit reverse graph (what exact SGR uses), on the frozen copy.
    out.push((
        "input_grad_explicit".to_string(),
        time_ms_on(reps, device, || {
            frozen.log_lik_input_gradient(&x, &y)?;
            Ok(())
        })?,
    ));
    if name == "mnist" {
        let eps = 32.0 / 255.0;
        let few = reps.clamp(1, 3);
        out.push((
            "pgd10_attack".to_string(),
            time_ms_on(few, device, || {
                sgr_attacks::Attack::run(&sgr_attacks::Pgd::whitebox(), &frozen, &x, &y, eps)?;
                Ok(())
            })?,
        ));
        out.push((
            "pgd40_attack".to_string(),
            time_ms_on(few, device, || {
                sgr_attacks::Attack::run(&sgr_attacks::Pgd::transfer(), &frozen, &x, &y, eps)?;
                Ok(())
            })?,
        ));
        out.push((
            "deepfool_attack".to_string(),
            time_ms_on(few, device, || {
                sgr_attacks::DeepFool::default().attack(&frozen, &x)?;
                Ok(())
            })?,
        ));
    }
    tracing::debug!(model = name, "benchmarked");
    Ok(out)
}

/// CIFAR-10-shaped training images with pseudo-random pixels (a fixed multiplicative hash) and cycling
/// labels: step times do not depend on the content, and the real data set is not shipped.
fn synthetic_cifar(n: usize) -> sgr_data::ImageSet {
    sgr_data::ImageSet {
        name: "synthetic-cifar10/train".into(),
        channels: 3,
        height: 32,
        width: 32,
        pixels: (0..n * 3 * 32 * 32)
            .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    }
}

/// Median step time (ms) and peak heap above the step's starting level (MB) of each method on the MNIST
/// CNN (embedded images) or the CIFAR-10 CNN (synthetic images, CIFAR-10's defaults). The methods take
/// turns, one step each per round (two warm-up rounds, then `reps`), so that a change in the machine's speed
/// during the run affects them alike and their ratios stay comparable.
fn bench_methods(
    model: &str,
    config: &CnnConfig,
    names: &[String],
    batch: usize,
    reps: usize,
    device: &Device,
) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let (dataset, train) = if model == "cifar" {
        (
            sgr_data::DatasetName::Cifar10,
            synthetic_cifar(batch.max(10)),
        )
    } else {
        let data = sgr_data::load(sgr_data::DatasetName::MnistSubset, None)?;
        (sgr_data::DatasetName::MnistSubset, data.train)
    };
    let ctx = sgr_train::MethodContext {
        dataset,
        train: &train,
    };
    let idx: Vec<usize> = (0..batch).map(|i| i % train.len()).collect();
    let (x, y) = train.batch(&idx, None, DType::F32, device)?;
    struct Case {
        method: Box<dyn sgr_train::Method>,
        model: Cnn,
        varmap: VarMap,
        adam: Adam,
        step: u64,
        times: Vec<f64>,
        peak: usize,
    }
    let mut cases = Vec::new();
    for spec in names {
        let (name, options) = match spec.split_once(':') {
            Some((n, "fd")) => (
                n,
                sgr_train::MethodOptions {
                    second_order: Some(sgr_train::SecondOrderMode::Fd),
                    ..Default::default()
                },
            ),
            Some((_, other)) => {
                anyhow::bail!("--methods {spec}: unknown variant '{other}' (only :fd)")
            }
            None => (spec.as_str(), sgr_train::MethodOptions::default()),
        };
        let name: sgr_train::MethodName = name
            .parse()
            .map_err(|e| anyhow::anyhow!("--methods {spec}: {e}"))?;
        let method = sgr_train::build_method(name, &ctx, options)
            .with_context(|| format!("--methods {spec}"))?;
        let (model, varmap, adam) = fresh_model(config, device)?;
        cases.push(Case {
            method,
            model,
            varmap,
            adam,
            step: 0,
            times: Vec::new(),
            peak: 0,
        });
    }
    for round in 0..reps.max(1) + 2 {
        for c in cases.iter_mut() {
            let base = crate::alloc::reset_peak();
            let t = Instant::now();
            let o = c.method.loss(&sgr_train::StepInput {
                model: &c.model,
                params: &c.varmap,
                x: &x,
                y: &y,
                step: c.step,
                seed: 0,
            })?;
            c.adam.step(&o.gradients()?)?;
            drop(o);
            device.synchronize()?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            c.step += 1;
            c.peak = c.peak.max(crate::alloc::peak().saturating_sub(base));
            if round >= 2 {
                c.times.push(ms);
            }
        }
    }
    Ok(names
        .iter()
        .zip(cases)
        .map(|(spec, c)| (spec.clone(), median(c.times), c.peak as f64 / 1e6))
        .collect())
}

/// PyTorch's figures from `xtask/torch_steps.py` on the same kind of device (CUDA for cuda, MPS for metal).
fn torch_figures(
    python: &std::path::Path,
    model: &str,
    batch: usize,
    reps: usize,
    device: DeviceKind,
) -> anyhow::Result<serde_json::Value> {
    let torch_device = match device {
        DeviceKind::Cpu => "cpu",
        DeviceKind::Cuda => "cuda",
        DeviceKind::Metal => "mps",
    };
    run_script_json(
        python,
        "torch_steps.py",
        &[
            "--model",
            model,
            "--batch",
            &batch.to_string(),
            "--reps",
            &reps.to_string(),
            "--device",
            torch_device,
            "--json",
        ],
    )
}

/// Runs `xtask/<script>` with `python` and `args`; parses the last line of its output as JSON.
pub(crate) fn run_script_json(
    python: &std::path::Path,
    script: &str,
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .with_context(|| format!("parsing the output of {}", script.display()))
}

/// `{"median_ms": {case: median over runs}}` of several `torch_steps.py --json` outputs.
fn median_json(runs: &[serde_json::Value]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if let Some(first) = runs[0]["median_ms"].as_object() {
        for case in first.keys() {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|r| r["median_ms"][case].as_f64())
                .collect();
            if !v.is_empty() {
                out.insert(case.clone(), serde_json::json!(median(v)));
            }
        }
    }
    serde_json::json!({ "median_ms": out })
}

fn find_python(cmd: &BenchCmd) -> Option<PathBuf> {
    if cmd.no_torch {
        return None;
    }
    if let Some(p) = &cmd.torch_python {
        return Some(p.clone());
    }
    let probe = if cmd.autoattack {
        "import torch, torchattacks"
    } else {
        "import torch"
    };
    let ok = Command::new("python3")
        .args(["-c", probe])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then(|| PathBuf::from("python3"))
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    if cmd.autoattack {
        let checkpoint = cmd.checkpoint.as_deref().context(
            "--autoattack needs --checkpoint (a trained model's run folder or .safetensors file)",
        )?;
        return crate::bench_autoattack::run(&crate::bench_autoattack::AaBench {
            checkpoint,
            data_dir: cmd.data_dir.clone(),
            images: cmd.images,
            eps_255: cmd.eps,
            batch: cmd.aa_batch,
            python: find_python(&cmd),
            device: cmd.device,
        });
    }
    let device = make_device(cmd.device).context("opening --device")?;
    let models: Vec<(&str, CnnConfig)> = match cmd.model.as_str() {
        "mnist" => vec![("mnist", CnnConfig::mnist())],
        "cifar" => vec![("cifar", CnnConfig::cifar10())],
        "both" => vec![
            ("mnist", CnnConfig::mnist()),
            ("cifar", CnnConfig::cifar10()),
        ],
        other => anyhow::bail!("--model {other}: expected mnist, cifar or both"),
    };
    let python = find_python(&cmd);
    if python.is_none() && !cmd.no_torch {
        println!("(PyTorch not found: pass --torch-python PATH to compare in the same run)");
    }
    println!(
        "batch {}, median of {} reps, {} round(s), {} threads, allocator purge delay {} ms",
        cmd.batch,
        cmd.reps,
        cmd.rounds.max(1),
        candle_core::utils::get_num_threads(),
        crate::alloc::purge_delay()
    );
    println!("| model | case | sgr (ms) | torch (ms) | sgr / torch |");
    println!("|---|---|---:|---:|---:|");
    // Rows: forward, input_grad (trainable model), clean_step (Adam), input_grad_frozen (the attacks' pass;
    // compared with torch's input_grad), and for MNIST a PGD-10 attack (torch: 10 × input_grad) and DeepFool.
    // PyTorch's figures per model, for the methods' table below.
    let mut torch_by_model = Vec::new();
    for (name, config) in &models {
        let name = *name;
        // Ours and PyTorch's in alternating rounds; each case's median across rounds.
        let mut our_rounds = Vec::new();
        let mut torch_rounds = Vec::new();
        for _ in 0..cmd.rounds.max(1) {
            our_rounds.push(bench_model(
                name,
                config.clone(),
                cmd.batch,
                cmd.reps,
                &device,
            )?);
            if let Some(p) = &python {
                match torch_figures(p, name, cmd.batch, cmd.reps, cmd.device) {
                    Ok(v) => torch_rounds.push(v),
                    Err(e) => println!("(PyTorch comparison failed: {e:#})"),
                }
            }
        }
        let ours: Vec<(String, f64)> = our_rounds[0]
            .iter()
            .enumerate()
            .map(|(i, (case, _))| {
                (
                    case.clone(),
                    median(our_rounds.iter().map(|r| r[i].1).collect()),
                )
            })
            .collect();
        let torch = (!torch_rounds.is_empty()).then(|| median_json(&torch_rounds));
        torch_by_model.push(torch.clone());
        let torch_grad = torch
            .as_ref()
            .and_then(|v| v["median_ms"]["input_grad"].as_f64());
        let mut pgd40 = None;
        for (case, ms) in ours {
            // PyTorch's PGD-10 (PGD-40) attack is ten (forty) of its input-gradient passes.
            let t = match case.as_str() {
                "input_grad_frozen" | "input_grad_explicit" => torch_grad,
                "clean_step_autograd" => torch
                    .as_ref()
                    .and_then(|v| v["median_ms"]["clean_step"].as_f64()),
                "pgd10_attack" => torch_grad.map(|g| 10.0 * g),
                "pgd40_attack" => torch_grad.map(|g| 40.0 * g),
                _ => torch.as_ref().and_then(|v| v["median_ms"][&case].as_f64()),
            };
            match t {
                Some(t) => println!("| {name} | {case} | {ms:.1} | {t:.1} | {:.2} |", ms / t),
                None => println!("| {name} | {case} | {ms:.1} | – | – |"),
            }
            if case == "pgd40_attack" {
                pgd40 = Some((ms, t));
            }
        }
        if let Some((ms, t)) = pgd40 {
            // The transfer table's attack over the whole MNIST test set, from the batch's time.
            let batches = 10_000f64 / cmd.batch as f64;
            let torch = t.map_or("–".to_string(), |t| format!("{:.0} s", t * batches / 1e3));
            println!(
                "\nPGD-40 over the 10,000 MNIST test images (batch {}): {:.0} s, {:.0} images/s (PyTorch {torch})\n",
                cmd.batch,
                ms * batches / 1e3,
                cmd.batch as f64 / ms * 1e3
            );
        }
    }
    if let Some(spec) = &cmd.methods {
        let mut names: Vec<String> = if spec == "all" {
            let mut v: Vec<String> = sgr_train::MethodName::ALL
                .iter()
                .map(|m| m.to_string())
                .collect();
            v.push("sgr-sign:fd".into());
            v
        } else {
            spec.split(',').map(|s| s.trim().to_string()).collect()
        };
        if !names.iter().any(|n| n == "clean") {
            names.insert(0, "clean".into());
        }
        for ((m, config), torch) in models.iter().zip(&torch_by_model) {
            let m = *m;
            let rows = bench_methods(m, config, &names, cmd.batch, cmd.reps, &device)?;
            let clean = rows
                .iter()
                .find(|r| r.0 == "clean")
                .map(|r| r.1)
                .unwrap_or(f64::NAN);
            let torch_step = |k: &str| {
                torch
                    .as_ref()
                    .and_then(|v: &serde_json::Value| v["median_ms"][k].as_f64())
            };
            let (label, data) = if m == "cifar" {
                ("CIFAR-10", "synthetic CIFAR-10-shaped images")
            } else {
                ("MNIST", "embedded MNIST images")
            };
            println!();
            println!(
                "{label} CNN, one training step (objective + backward + Adam), batch {}, {data}:",
                cmd.batch
            );
            println!("| method | ms | × clean | peak heap (MB) |");
            println!("|---|---:|---:|---:|");
            for (n, ms, mb) in &rows {
                println!("| {n} | {ms:.1} | {:.2} | {mb:.0} |", ms / clean);
            }
            if let (Some(c), Some(s)) = (torch_step("clean_step"), torch_step("sgr_sign_step")) {
                println!(
                    "| PyTorch sgr-sign (exact, dense Σ) | {s:.1} | {:.2} (of PyTorch clean {c:.1}) | – |",
                    s / c
                );
            }
        }
    }
    Ok(())
}
