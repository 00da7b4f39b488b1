//! `cargo xtask bench --autoattack`: each AutoAttack attack timed on a trained checkpoint, and torchattacks'
//! AutoAttack (xtask/torch_autoattack.py) on the same model and images in the same invocation.

use std::path::{Path, PathBuf};

use sgr_attacks::{AaAttack, AutoAttack};

use crate::evalkit::{DataOpts, setup};

/// What `bench --autoattack` needs from the bench command's flags.
pub struct AaBench<'a> {
    pub checkpoint: &'a Path,
    pub data_dir: Option<PathBuf>,
    pub images: usize,
    pub eps_255: f64,
    pub batch: usize,
    pub python: Option<PathBuf>,
    pub device: sgr_models::DeviceKind,
}

fn torch_run(
    python: &Path,
    ckpt: &Path,
    dir: &Path,
    b: &AaBench<'_>,
) -> anyhow::Result<serde_json::Value> {
    let (n, eps, batch) = (
        b.images.to_string(),
        b.eps_255.to_string(),
        b.batch.to_string(),
    );
    let (ckpt, dir) = (ckpt.display().to_string(), dir.display().to_string());
    crate::bench::run_script_json(
        python,
        "torch_autoattack.py",
        &[
            &ckpt, &dir, "--n", &n, "--eps", &eps, "--batch", &batch, "--json",
        ],
    )
}

pub fn run(b: &AaBench<'_>) -> anyhow::Result<()> {
    let data = DataOpts {
        dataset: None,
        data_dir: b.data_dir.clone(),
        test_limit: b.images,
        eps: Some(b.eps_255),
        batch_size: b.batch,
        seed: 0,
        device: b.device,
    };
    let s = setup(&[b.checkpoint.to_path_buf()], &data)?;
    let n = s.x.dim(0)?;
    let suite = AutoAttack {
        eps: s.eps,
        batch_size: b.batch,
        ..AutoAttack::default()
    };
    let model = s.named()[0];
    let mut attacked = Vec::new();
    let mut state = suite.start(model.model, &s.x, &s.y)?;
    let mut current = usize::MAX;
    while state.attack < suite.attacks.len() {
        if state.attack != current {
            current = state.attack;
            attacked.push(state.queue.len());
        }
        suite.step(model.model, &s.x, &s.y, &mut state)?;
    }
    let torch = match (&b.python, &s.data_dir) {
        (Some(p), Some(dir)) => {
            let file = sgr_train::model_path(b.checkpoint);
            match torch_run(p, &file, dir, b) {
                Ok(v) => Some(v),
                Err(e) => {
                    println!("(torchattacks comparison failed: {e:#})");
                    None
                }
            }
        }
        (None, _) => {
            println!(
                "(torch/torchattacks not found: pass --torch-python PATH to compare in the same run)"
            );
            None
        }
        (_, None) => {
            println!("(no IDX data folder for torchattacks: pass --data-dir)");
            None
        }
    };
    println!(
        "AutoAttack standard, L∞ ε = {}/255, first {n} test images of {}, batch {}, {} threads; clean {:.1} %{}",
        b.eps_255,
        s.dataset,
        b.batch,
        candle_core::utils::get_num_threads(),
        100.0 * state.clean_accuracy(),
        torch
            .as_ref()
            .and_then(|t| t["clean"].as_f64())
            .map_or(String::new(), |c| format!(" (torch {:.1} %)", 100.0 * c))
    );
    println!(
        "| attack | points attacked | robust after (sgr / torchattacks, %) | sgr s | torchattacks s | sgr / torchattacks time | sgr img/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, a) in suite.attacks.iter().enumerate() {
        let name = a.name();
        let (ts, ta) = torch.as_ref().map_or((None, None), |t| {
            (t[format!("{name}_seconds")].as_f64(), t[name].as_f64())
        });
        let secs = state.seconds[i];
        println!(
            "| {name} | {} | {:.1} / {} | {secs:.1} | {} | {} | {:.1} |",
            attacked[i],
            100.0 * state.after[i],
            ta.map_or("–".into(), |v| format!("{:.1}", 100.0 * v)),
            ts.map_or("–".into(), |v| format!("{v:.1}")),
            ts.filter(|v| *v > 0.0)
                .map_or("–".into(), |v| format!("{:.2}", secs / v)),
            attacked[i] as f64 / secs.max(1e-9)
        );
    }
    let total: f64 = state.seconds.iter().sum();
    let t_total: Option<f64> = torch.as_ref().map(|t| {
        AaAttack::STANDARD
            .iter()
            .filter_map(|a| t[format!("{}_seconds", a.name())].as_f64())
            .sum()
    });
    println!(
        "| AA (all) | {n} | {:.1} / {} | {total:.1} | {} | {} | |",
        100.0 * state.robust_accuracy(),
        torch
            .as_ref()
            .and_then(|t| t["robust"].as_f64())
            .map_or("–".into(), |v| format!("{:.1}", 100.0 * v)),
        t_total.map_or("–".into(), |v| format!("{v:.1}")),
        t_total.map_or("–".into(), |v| format!("{:.2}", total / v)),
    );
    Ok(())
}
