//! `cargo xtask gpu-selftest` (run by `gpu-check`): the device path against the CPU path — the Σv kernel,
//! gradients through it, the models' input gradients, one exact SGR-sign step — and Σv timings.
//!
//! On `--device cpu` the "device" side is the CPU with candle's own layers and the conv2d Σv (the path every
//! GPU takes for the models), so the same comparisons run, and are tested, on machines without a GPU.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bench::time_ms_on;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use clap::Args;
use serde::Serialize;
use sgr_covariance::{ChannelStructure, KernelSet, MatvecPath};
use sgr_data::DatasetName;
use sgr_models::{Cnn, CnnConfig, DeviceKind, init_params, make_device};
use sgr_train::{
    MethodContext, MethodName, MethodOptions, ParamGradients, StepInput, build_method,
};

#[derive(Debug, Args)]
pub struct GpuSelftestCmd {
    /// The device to check against the CPU.
    #[arg(long, default_value = "cuda", value_parser = crate::common::parse_device)]
    device: DeviceKind,
    /// Folder for selftest.json, selftest.md and matvec-timings.png.
    #[arg(long)]
    out: PathBuf,
    /// Fewer shapes and repetitions (for the tests of this command).
    #[arg(long)]
    quick: bool,
}

/// One comparison: the largest difference relative to the largest reference value.
#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub group: String,
    pub name: String,
    pub rel_error: f64,
    pub tolerance: f64,
    pub passed: bool,
}

/// Median milliseconds of `Σ v` on a batch of 128, f32.
#[derive(Debug, Serialize)]
pub struct Timing {
    pub shape: (usize, usize, usize),
    pub radius: usize,
    pub kernel_ms: f64,
    pub fallback_ms: f64,
    pub cpu_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct SelftestReport {
    pub device: String,
    /// Whether the Σv kernel passed its own once-per-device check (`None`: no kernel on this device).
    pub kernel_self_check: Option<bool>,
    pub checks: Vec<CheckResult>,
    pub timings: Vec<Timing>,
}

pub fn run(cmd: GpuSelftestCmd) -> Result<()> {
    std::fs::create_dir_all(&cmd.out).with_context(|| format!("--out {}", cmd.out.display()))?;
    let device = make_device(cmd.device)?;
    let mut report = SelftestReport {
        device: format!("{:?}", device.location()),
        kernel_self_check: kernel_self_check(&device),
        checks: vec![],
        timings: vec![],
    };
    let mut add = |group: &str, name: String, rel_error: f64, tolerance: f64| {
        let passed = rel_error <= tolerance;
        eprintln!(
            "{} {group}: {name}: relative error {rel_error:.2e} (tolerance {tolerance:.0e})",
            if passed { "ok  " } else { "FAIL" }
        );
        report.checks.push(CheckResult {
            group: group.into(),
            name,
            rel_error,
            tolerance,
            passed,
        });
    };
    for (name, err, tol) in matvec_checks(&device, cmd.quick)? {
        add("Σv kernel", name, err, tol);
    }
    for (name, err, tol) in gradient_checks(&device)? {
        add("gradients through Σv", name, err, tol);
    }
    for (name, err, tol) in model_checks(&device)? {
        add("models", name, err, tol);
    }
    report.timings = timings(&device, cmd.quick)?;
    write_outputs(&cmd.out, &report)?;
    let failed = report.checks.iter().filter(|c| !c.passed).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} checks failed (see {})",
        report.checks.len(),
        cmd.out.join("selftest.md").display()
    );
    eprintln!("all {} checks passed", report.checks.len());
    Ok(())
}

#[cfg(feature = "cuda")]
fn kernel_self_check(device: &Device) -> Option<bool> {
    device
        .is_cuda()
        .then(|| sgr_covariance::cuda_kernel_ready(device))
}

#[cfg(not(feature = "cuda"))]
fn kernel_self_check(_: &Device) -> Option<bool> {
    None
}

/// The path a device's "kernel" side takes: the kernel on CUDA; on the CPU the conv2d composition, so that
/// two different implementations are compared there too.
fn device_path(device: &Device) -> MatvecPath {
    if device.is_cpu() {
        MatvecPath::Reference
    } else {
        MatvecPath::Kernel
    }
}

fn rel_error(got: &Tensor, want: &Tensor) -> Result<f64> {
    let got = got.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let want = want.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let scale = want.abs()?.max_all()?.to_scalar::<f64>()?.max(1e-300);
    let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(diff / scale)
}

fn pseudo_input(dims: &[usize], salt: usize) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|i| ((i * 7919 + salt * 104_729 + 13) % 1009) as f64 / 504.5 - 1.0)
        .collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
}

type Check = (String, f64, f64);

/// The kernel on the device against the dense matrix and the CPU op, f32 and f64, C ∈ {1, 3}, radii up to
/// the full image, both channel structures.
fn matvec_checks(device: &Device, quick: bool) -> Result<Vec<Check>> {
    let mut out = vec![];
    let shapes: &[(usize, usize, usize)] = if quick {
        &[(1, 12, 11), (3, 9, 10)]
    } else {
        &[(1, 28, 28), (3, 32, 32), (3, 21, 40)]
    };
    let mut salt = 0;
    for &(c, h, w) in shapes {
        let full = h.max(w) - 1;
        for r in [0, 2, 8, full] {
            for structure in [ChannelStructure::IntraInter, ChannelStructure::Full] {
                salt += 1;
                let ks = Arc::new(KernelSet::pseudo_random(
                    (c, h, w),
                    (r, r),
                    structure,
                    salt,
                )?);
                let dense = ks.to_dense()?;
                let v64 = pseudo_input(&[4, c, h, w], salt as usize)?;
                let want_dense = v64
                    .reshape((4, c * h * w))?
                    .matmul(&dense)?
                    .reshape((4, c, h, w))?;
                for (dtype, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-12)] {
                    let v = v64.to_dtype(dtype)?;
                    let got = ks.matvec_on(&v.to_device(device)?, device_path(device))?;
                    let cpu = ks.matvec_on(&v, MatvecPath::Kernel)?;
                    let what = format!("{c}×{h}×{w} r={r} {} {dtype:?}", structure.as_str());
                    out.push((
                        format!("{what} vs to_dense()"),
                        rel_error(&got, &want_dense)?,
                        tol,
                    ));
                    out.push((format!("{what} vs CPU op"), rel_error(&got, &cpu)?, tol));
                }
            }
        }
    }
    Ok(out)
}

/// First- and second-order gradients through Σv on the device against products on the CPU:
/// `∇_v ½‖Σv‖² = Σ(Σv)` and `∇_v ⟨u, ∇_v ½‖Σv‖²⟩ = Σ(Σu)` (Σ symmetric).
fn gradient_checks(device: &Device) -> Result<Vec<Check>> {
    let mut out = vec![];
    for (c, structure) in [
        (1, ChannelStructure::IntraInter),
        (3, ChannelStructure::IntraInter),
        (3, ChannelStructure::Full),
    ] {
        let ks = Arc::new(KernelSet::pseudo_random(
            (c, 14, 13),
            (5, 4),
            structure,
            40 + c as u64,
        )?);
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-12)] {
            let v = pseudo_input(&[3, c, 14, 13], 1)?.to_dtype(dtype)?;
            let u = pseudo_input(&[3, c, 14, 13], 2)?.to_dtype(dtype)?;
            let var = Var::from_tensor(&v.to_device(device)?)?;
            let path = device_path(device);
            let sv = ks.matvec_on(var.as_tensor(), path)?;
            let g = gradient(&(sv.sqr()?.sum_all()? * 0.5)?, &var)?;
            let want = ks.matvec(&ks.matvec(&v)?)?;
            let what = format!("C={c} {} {dtype:?}", structure.as_str());
            out.push((format!("{what} first order"), rel_error(&g, &want)?, tol));
            let g2 = gradient(&(g * u.to_device(device)?)?.sum_all()?, &var)
                .context("second order (CANDLE_GRAD_DO_NOT_DETACH unset?)")?;
            let want2 = ks.matvec(&ks.matvec(&u)?)?;
            out.push((format!("{what} second order"), rel_error(&g2, &want2)?, tol));
        }
    }
    Ok(out)
}

/// `∂loss/∂var`.
fn gradient(loss: &Tensor, var: &Var) -> Result<Tensor> {
    Ok(loss
        .backward()?
        .get(var.as_tensor())
        .context("no gradient reaches the variable")?
        .clone())
}

fn model_on(
    config: &CnnConfig,
    dtype: DType,
    device: &Device,
    plain: bool,
) -> Result<(Cnn, VarMap)> {
    let vm = VarMap::new();
    init_params(&vm, config, 7, dtype, device)?;
    let mut m = Cnn::new(config.clone(), VarBuilder::from_varmap(&vm, dtype, device))?;
    m.set_plain_ops(plain);
    Ok((m, vm))
}

/// The paper's MNIST CNN on the device against the CPU's fast path: input gradients of the cross-entropy,
/// and the objective and every parameter gradient of two exact SGR-sign steps (the second sees a
/// covariance estimated from two batches of perturbations).
fn model_checks(device: &Device) -> Result<Vec<Check>> {
    let mut out = vec![];
    let data = sgr_data::load(DatasetName::MnistSubset, None)?;
    let config = CnnConfig::mnist();
    let idx: Vec<usize> = (0..16).collect();
    for (dtype, tol, lambda) in [(DType::F32, 1e-4, None), (DType::F64, 1e-9, Some(1e4))] {
        let (x, y) = data.train.batch(&idx, None, dtype, &Device::Cpu)?;
        // The device side on candle's layers (what a GPU always runs; forced on a CPU-only check), the
        // reference on the CPU's fused ops and explicit gradients.
        let (dev_model, dev_vm) = model_on(&config, dtype, device, true)?;
        let (cpu_model, cpu_vm) = model_on(&config, dtype, &Device::Cpu, false)?;
        // Input gradients of the summed cross-entropy.
        let input_grad = |model: &Cnn, dev: &Device| -> Result<Tensor> {
            let xv = Var::from_tensor(&x.to_device(dev)?)?;
            let logits = candle_core::Module::forward(model, xv.as_tensor())?;
            gradient(&sgr_train::cross_entropy(&logits, &y.to_device(dev)?)?, &xv)
        };
        out.push((
            format!("MNIST CNN input gradient {dtype:?}"),
            rel_error(
                &input_grad(&dev_model, device)?,
                &input_grad(&cpu_model, &Device::Cpu)?,
            )?,
            tol,
        ));
        // Two SGR-sign steps.
        let options = MethodOptions {
            lambda,
            ..MethodOptions::default()
        };
        let ctx = MethodContext {
            dataset: DatasetName::MnistSubset,
            train: &data.train,
        };
        let step =
            |model: &Cnn, vm: &VarMap, dev: &Device| -> Result<(f64, Vec<(String, Tensor)>)> {
                let mut method = build_method(MethodName::SgrSign, &ctx, options.clone())?;
                let (xd, yd) = (x.to_device(dev)?, y.to_device(dev)?);
                let mut last = None;
                for s in 0..2 {
                    last = Some(method.loss(&StepInput {
                        model,
                        params: vm,
                        x: &xd,
                        y: &yd,
                        step: s,
                        seed: 0,
                    })?);
                }
                let last = last.context("no step")?;
                let loss = last.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                let grads = last.gradients()?;
                let vars = vm.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                let mut named: Vec<(String, Tensor)> = vars
                    .iter()
                    .map(|(n, v)| {
                        let g = grads
                            .gradient(n, v)
                            .with_context(|| format!("no gradient for {n}"))?;
                        Ok((n.clone(), g.to_device(&Device::Cpu)?))
                    })
                    .collect::<Result<_>>()?;
                named.sort_by(|a, b| a.0.cmp(&b.0));
                Ok((loss, named))
            };
        let (l_dev, g_dev) = step(&dev_model, &dev_vm, device)?;
        let (l_cpu, g_cpu) = step(&cpu_model, &cpu_vm, &Device::Cpu)?;
        let lam = lambda.map_or("the paper's λ".to_string(), |l| format!("λ = {l}"));
        out.push((
            format!("SGR-sign objective, {lam}, {dtype:?}"),
            (l_dev - l_cpu).abs() / l_cpu.abs().max(1e-300),
            tol,
        ));
        for ((name, a), (_, b)) in g_dev.iter().zip(&g_cpu) {
            out.push((
                format!("SGR-sign ∂/∂{name}, {lam}, {dtype:?}"),
                rel_error(a, b)?,
                tol,
            ));
        }
    }
    Ok(out)
}

/// Σv on a batch of 128 in f32: the kernel and the conv2d fallback on the device, and the CPU op.
fn timings(device: &Device, quick: bool) -> Result<Vec<Timing>> {
    let (reps, batch) = if quick { (3, 8) } else { (20, 128) };
    let mut out = vec![];
    for shape in [(1usize, 28usize, 28usize), (3, 32, 32)] {
        let full = shape.1.max(shape.2) - 1;
        for r in [2, 8, full] {
            let ks = Arc::new(KernelSet::pseudo_random(
                shape,
                (r, r),
                ChannelStructure::IntraInter,
                r as u64,
            )?);
            let v = pseudo_input(&[batch, shape.0, shape.1, shape.2], r)?.to_dtype(DType::F32)?;
            let vd = v.to_device(device)?;
            let kernel_ms =
                time_ms_on(reps, device, || Ok(ks.matvec_on(&vd, device_path(device))?))?;
            let fallback_ms = time_ms_on(reps, device, || {
                Ok(ks.matvec_on(&vd, MatvecPath::Reference)?)
            })?;
            let cpu_ms = time_ms_on(reps, &Device::Cpu, || {
                Ok(ks.matvec_on(&v, MatvecPath::Kernel)?)
            })?;
            eprintln!(
                "Σv {shape:?} r={r}, batch {batch}: kernel {kernel_ms:.3} ms, conv2d fallback {fallback_ms:.3} ms, \
                 CPU op {cpu_ms:.3} ms"
            );
            out.push(Timing {
                shape,
                radius: r,
                kernel_ms,
                fallback_ms,
                cpu_ms,
            });
        }
    }
    Ok(out)
}

fn write_outputs(dir: &Path, report: &SelftestReport) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(dir.join("selftest.json"), json)?;
    let mut md = format!(
        "# GPU self-test on {}\n\nΣv kernel self-check on this device: {}\n\n",
        report.device,
        match report.kernel_self_check {
            Some(true) => "passed",
            Some(false) => "FAILED (the device uses the conv2d fallback)",
            None => "no kernel on this device",
        }
    );
    let mut checks = sgr_eval::Table::new(["group", "check", "relative error", "tolerance", ""]);
    for c in &report.checks {
        checks.push([
            c.group.clone(),
            c.name.clone(),
            format!("{:.2e}", c.rel_error),
            format!("{:.0e}", c.tolerance),
            if c.passed {
                "ok".into()
            } else {
                "**FAIL**".into()
            },
        ]);
    }
    md += &checks.to_markdown();
    let mut times = sgr_eval::Table::new([
        "shape",
        "radius",
        "kernel (device)",
        "conv2d fallback (device)",
        "CPU op",
        "fallback / kernel",
    ]);
    for t in &report.timings {
        let ms = |x: f64| format!("{x:.3} ms");
        times.push([
            format!("{:?}", t.shape),
            t.radius.to_string(),
            ms(t.kernel_ms),
            ms(t.fallback_ms),
            ms(t.cpu_ms),
            format!("{:.1}×", t.fallback_ms / t.kernel_ms),
        ]);
    }
    md += "\n## Σv timings (f32, median)\n\n";
    md += &times.to_markdown();
    std::fs::write(dir.join("selftest.md"), md)?;
    let panels: Vec<sgr_eval::plot::LinePanel> = [(1usize, 28usize, 28usize), (3, 32, 32)]
        .iter()
        .map(|&shape| {
            let pick = |f: fn(&Timing) -> f64| -> Vec<(f64, f64)> {
                report
                    .timings
                    .iter()
                    .filter(|t| t.shape == shape)
                    .map(|t| (t.radius as f64, f(t)))
                    .collect()
            };
            let series = vec![
                sgr_eval::plot::Series {
                    label: "kernel (device)".into(),
                    points: pick(|t| t.kernel_ms),
                },
                sgr_eval::plot::Series {
                    label: "conv2d fallback (device)".into(),
                    points: pick(|t| t.fallback_ms),
                },
                sgr_eval::plot::Series {
                    label: "CPU op".into(),
                    points: pick(|t| t.cpu_ms),
                },
            ];
            let top = series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
                .fold(0f64, f64::max);
            sgr_eval::plot::LinePanel {
                title: format!("Σv, {}×{}×{}", shape.0, shape.1, shape.2),
                x_label: "radius".into(),
                y_label: "ms per batch".into(),
                series,
                y_range: (0.0, top * 1.1 + 1e-3),
                legend: true,
            }
        })
        .collect();
    sgr_eval::plot::line_panels(
        &dir.join("matvec-timings.png"),
        "Σv: kernel vs conv2d fallback vs CPU",
        &panels,
        2,
    )?;
    Ok(())
}
