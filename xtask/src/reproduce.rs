//! `reproduce`: train every method, run every evaluation, write one report beside the paper's numbers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use sgr_data::DatasetName;
use sgr_models::DeviceKind;
use sgr_train::{MethodName, RunStatus, TrainArgs};

use crate::common::{parse_dataset, parse_device};
use crate::evalkit::{DataOpts, Setup, out_dir, setup, write};
use crate::{analyze_cov, eval_lrc, eval_transfer, eval_whitebox, figures};

#[derive(Debug, Args)]
pub struct ReproduceCmd {
    /// mnist-subset (embedded, the default), mnist, fashion-mnist or cifar10.
    #[arg(long, value_parser = parse_dataset, default_value = "mnist-subset")]
    dataset: DatasetName,
    /// Folder with the data set's files (e.g. ../shared/data/mnist).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Epochs per method (default: the train command's default per method and data set).
    #[arg(long)]
    epochs: Option<usize>,
    /// Train on the first K training images only.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Methods to train and compare.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "clean,wdecay,pgd,fgsm,gn,sgr-grad,sgr-sign,fgsm-sgr,pgd-sgr,lrc"
    )]
    methods: Vec<MethodName>,
    /// Test images for the white-box table and the transfer matrix (0: all).
    #[arg(long, default_value_t = 1000)]
    test_limit: usize,
    /// DeepFool (FOOL column) and the masking sweeps on the first N of those.
    #[arg(long, default_value_t = 500)]
    deepfool_images: usize,
    /// AutoAttack (the AA column beside PGD) on the first N test images (0: leave it out).
    #[arg(long, default_value_t = 200)]
    autoattack_images: usize,
    /// Methods in the correlated-noise curves (those of the paper's Fig. 3), where trained.
    #[arg(long, value_delimiter = ',', default_value = "clean,gn,sgr-sign,lrc")]
    lrc_methods: Vec<MethodName>,
    /// Test images for the correlated-noise curves (100 draws each per setting).
    #[arg(long, default_value_t = 200)]
    lrc_test_limit: usize,
    #[arg(long, default_value_t = 100)]
    lrc_draws: usize,
    /// Test images whose perturbations make the covariance figures.
    #[arg(long, default_value_t = 500)]
    cov_images: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: DeviceKind,
    /// Output folder (runs/ with one training run per method, the evaluations, report.md). Rerunning resumes:
    /// finished runs are kept, interrupted ones continue.
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Budget {
    lines: Vec<(String, f64)>,
}

impl Budget {
    fn time<T>(&mut self, what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        let t = Instant::now();
        tracing::info!("reproduce: {what}");
        let r = f()?;
        self.lines
            .push((what.to_string(), t.elapsed().as_secs_f64()));
        Ok(r)
    }
}

pub fn run(cmd: ReproduceCmd) -> anyhow::Result<()> {
    let out = cmd
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("reproduce-{}", cmd.dataset)));
    out_dir(&out)?;
    let started = Instant::now();
    let mut budget = Budget { lines: vec![] };
    let stop = crate::train::interrupt_flag()?;

    // 1. Train (or resume, or keep) one run per method.
    let mut runs = Vec::new();
    for method in &cmd.methods {
        let dir = out.join("runs").join(method.name());
        let existing = sgr_train::read_record(&dir).ok();
        let done = existing.as_ref().is_some_and(|r| {
            r.status == RunStatus::Complete && cmd.epochs.is_none_or(|e| r.epochs_done >= e)
        });
        if !done {
            let args = TrainArgs {
                method: Some(*method),
                dataset: Some(cmd.dataset),
                data_dir: cmd.data_dir.clone(),
                epochs: cmd.epochs,
                train_limit: cmd.train_limit,
                seed: Some(cmd.seed),
                device: cmd.device,
                pgd_eval_images: Some(0), // the white-box table below covers it
                ..TrainArgs::default()
            };
            let mut progress = crate::train::Progress::new();
            budget.time(&format!("train {method}"), || {
                sgr_train::train(args, &dir, existing.is_some(), &stop, &mut progress)
                    .with_context(|| format!("training {method} into {}", dir.display()))
            })?;
            progress.finish();
            if stop.load(Ordering::SeqCst) {
                anyhow::bail!(
                    "interrupted; run the same command again to continue where it stopped"
                );
            }
        }
        runs.push((method.clone(), dir));
    }

    // 2. Evaluate.
    let data = DataOpts {
        dataset: Some(cmd.dataset),
        data_dir: cmd.data_dir.clone(),
        test_limit: cmd.test_limit,
        eps: None,
        batch_size: cmd.batch_size,
        seed: cmd.seed,
        device: cmd.device,
    };
    let all: Vec<PathBuf> = runs.iter().map(|r| r.1.clone()).collect();
    let s = setup(&all, &data)?;
    let eval_dir = out.join("eval");
    out_dir(&eval_dir)?;
    let wb_cmd = eval_whitebox::WhiteboxCmd {
        checkpoints: all.clone(),
        data: data.clone(),
        pgd_steps: 10,
        deepfool_images: cmd.deepfool_images,
        masking_images: cmd.deepfool_images,
        autoattack: cmd.autoattack_images > 0,
        autoattack_images: cmd.autoattack_images,
        out: eval_dir.clone(),
    };
    let wb = budget.time("white-box table", || eval_whitebox::evaluate(&s, &wb_cmd))?;
    crate::evalkit::write_json(&eval_dir.join("whitebox.json"), &wb)?;
    let tr_cmd = eval_transfer::TransferCmd {
        checkpoints: all.clone(),
        data: data.clone(),
        pgd_steps: 40,
        out: eval_dir.clone(),
    };
    let tm = budget.time("transfer matrix", || eval_transfer::evaluate(&s, &tr_cmd))?;
    crate::evalkit::write_json(&eval_dir.join("transfer.json"), &tm)?;

    let lrc_runs: Vec<PathBuf> = cmd
        .lrc_methods
        .iter()
        .filter_map(|m| runs.iter().find(|r| &r.0 == m).map(|r| r.1.clone()))
        .collect();
    let lrc = if lrc_runs.is_empty() {
        None
    } else {
        let lrc_data = DataOpts {
            test_limit: cmd.lrc_test_limit,
            ..data.clone()
        };
        let ls = setup(&lrc_runs, &lrc_data)?;
        let lrc_cmd = eval_lrc::LrcCmd {
            checkpoints: lrc_runs,
            data: lrc_data,
            draws: cmd.lrc_draws,
            zetas: vec![1.0, 2.0, 4.0, 8.0, 16.0],
            lrc_eps: 0.3,
            eps_list: vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.7],
            data_cov_images: 10_000,
            out: eval_dir.clone(),
        };
        let r = budget.time("correlated-noise curves", || {
            eval_lrc::evaluate(&ls, &lrc_cmd)
        })?;
        crate::evalkit::write_json(&eval_dir.join("lrc.json"), &r)?;
        Some((ls, r))
    };

    let reference = runs
        .iter()
        .find(|r| r.0 == MethodName::Clean)
        .unwrap_or(&runs[0])
        .1
        .clone();
    let cov_data = DataOpts {
        test_limit: cmd.cov_images,
        ..data.clone()
    };
    let cs = setup(std::slice::from_ref(&reference), &cov_data)?;
    let cov_cmd = analyze_cov::AnalyzeCovCmd {
        checkpoint: reference.clone(),
        data: cov_data,
        radius: 12,
        data_cov_images: 10_000,
        out: eval_dir.clone(),
    };
    let cov = budget.time("covariance figures", || {
        analyze_cov::evaluate(&cs, &cov_cmd)
    })?;

    let traj_runs: Vec<PathBuf> = [MethodName::SgrSign, MethodName::Clean]
        .iter()
        .filter_map(|m| runs.iter().find(|r| r.0 == *m).map(|r| r.1.clone()))
        .collect();
    let ts = setup(
        if traj_runs.is_empty() {
            &all[..1]
        } else {
            &traj_runs
        },
        &data,
    )?;
    budget.time("trajectories", || {
        figures::make_trajectories(&ts, 4, 5.0, &eval_dir)
    })?;
    let rs = setup(std::slice::from_ref(&reference), &data)?;
    let flipped = budget.time("samples", || figures::make_samples(&rs, &[], &eval_dir))?;

    // 3. Report.
    let report = report(
        &cmd,
        &out,
        &s,
        &runs,
        &wb,
        &tm,
        lrc.as_ref(),
        &cs,
        &cov,
        &flipped,
        &budget,
        started,
    )?;
    write(&out.join("report.md"), &report)?;
    println!("{report}");
    eprintln!("wrote {}", out.join("report.md").display());
    Ok(())
}

fn rel(p: &Path, base: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).display().to_string()
}

#[allow(clippy::too_many_arguments)]
fn report(
    cmd: &ReproduceCmd,
    out: &Path,
    s: &Setup,
    runs: &[(MethodName, PathBuf)],
    wb: &[sgr_eval::WhiteboxRow],
    tm: &sgr_eval::TransferMatrix,
    lrc: Option<&(Setup, sgr_eval::LrcResults)>,
    cs: &Setup,
    cov: &sgr_eval::figures::CovAnalysis,
    flipped: &[(f64, usize)],
    budget: &Budget,
    started: Instant,
) -> anyhow::Result<String> {
    let mut md = format!("# Reproduction on {}\n\n", s.dataset);
    let _ = writeln!(
        md,
        "Made by `cargo xtask reproduce --dataset {}{}{}{}` (sgr {}), seed {}. Evaluation on the first {} test \
         images; ε = {:.0}/255.\n",
        cmd.dataset,
        cmd.data_dir
            .as_ref()
            .map_or(String::new(), |d| format!(" --data-dir {}", d.display())),
        cmd.epochs
            .map_or(String::new(), |e| format!(" --epochs {e}")),
        cmd.train_limit
            .map_or(String::new(), |k| format!(" --train-limit {k}")),
        env!("CARGO_PKG_VERSION"),
        cmd.seed,
        tm.images,
        s.eps_255()
    );
    md += "## Budget\n\n| run | method settings | train images | epochs | training time | test accuracy |\n|:--|:--|--:|--:|--:|--:|\n";
    for (method, dir) in runs {
        let r = sgr_train::read_record(dir)?;
        let secs: f64 = r.history.iter().map(|e| e.seconds).sum();
        let o = &r.method_options;
        let mut settings = Vec::new();
        if let Some(l) = o.lambda {
            settings.push(format!("λ {l}"));
        }
        if let Some(e) = o.eps {
            settings.push(format!("ε {e}/255"));
        }
        if let Some(w) = o.weight_decay {
            settings.push(format!("wd {w}"));
        }
        if let Some(c) = &o.cov {
            settings.push(format!("Σ {c}"));
        }
        let _ = writeln!(
            md,
            "| [{method}]({}) | {} | {} | {} | {:.1} min | {} |",
            rel(dir, out),
            settings.join(", "),
            r.train_images,
            r.epochs_done,
            secs / 60.0,
            r.history.last().map_or("–".into(), |e| format!(
                "{:.2} %",
                100.0 * e.test_accuracy
            ))
        );
    }
    md += "\n| evaluation stage | time |\n|:--|--:|\n";
    for (what, secs) in &budget.lines {
        let _ = writeln!(md, "| {what} | {:.1} min |", secs / 60.0);
    }
    let _ = writeln!(
        md,
        "| total (this invocation) | {:.1} min |\n",
        started.elapsed().as_secs_f64() / 60.0
    );

    md += &eval_whitebox::markdown(s, wb);
    let ds = s.dataset.as_str();
    if wb
        .iter()
        .any(|r| sgr_eval::paper::whitebox_row(ds, &r.model).is_some())
    {
        let paper_eps = if ds.starts_with("cifar") { 4 } else { 32 };
        let _ = write!(
            md,
            "\n### Beside the paper (Table 3, ε = {paper_eps}/255; ours / paper)\n\n"
        );
        // AutoAttack postdates the paper: our AA sits beside the PGD column, with no paper figure.
        let with_aa = wb.iter().any(|r| r.aa.is_some());
        let mut header = vec!["TRAIN. METH.", "TEST", "RAND", "FGM", "FGSM", "PGD"];
        if with_aa {
            header.push("AA (ours)");
        }
        header.push("FOOL");
        let mut t = sgr_eval::Table::new(header);
        for r in wb {
            let p = sgr_eval::paper::whitebox_row(ds, &r.model);
            let cell = |ours: f64, i: usize| {
                let o = sgr_eval::fmt_pct(ours);
                p.map_or(o.clone(), |p| format!("{o} / {:.1}", p.1[i]))
            };
            let mut row = vec![
                r.model.clone(),
                cell(r.test, 0),
                cell(r.rand, 1),
                cell(r.fgm, 2),
                cell(r.fgsm, 3),
                cell(r.pgd, 4),
            ];
            if with_aa {
                row.push(r.aa.map_or_else(|| "–".into(), sgr_eval::fmt_pct));
            }
            row.push(p.map_or(format!("{:.3}", r.fool_rho), |p| {
                format!("{:.3} / {:.3}", r.fool_rho, p.2)
            }));
            t.push(row);
        }
        md += &t.to_markdown();
    }
    md += "\n";
    md += &eval_transfer::markdown(s, tm);
    if ds.starts_with("mnist")
        && tm
            .models
            .iter()
            .any(|m| sgr_eval::paper::mnist_transfer(m, m).is_some())
    {
        md += "\n### The paper's MNIST transfer matrix for the same models (Table 4, ε = 32/255, PGD-40, full test set)\n\n";
        let mut header = vec!["TRAIN. METH.".to_string()];
        header.extend(tm.models.iter().cloned());
        let mut t = sgr_eval::Table::new(header);
        for target in &tm.models {
            let mut row = vec![target.clone()];
            for source in &tm.models {
                row.push(
                    sgr_eval::paper::mnist_transfer(target, source)
                        .map_or("–".into(), |v| format!("{v:.1}")),
                );
            }
            t.push(row);
        }
        md += &t.to_markdown();
    }
    md += "\n";
    if let Some((ls, r)) = lrc {
        md += &sgr_eval::lrc_markdown(ls.dataset.as_str(), r, "eval/");
        md += "\nThe paper (Fig. 3, CIFAR-10) reports SGR ahead of GN by over 25 points at ζ ≈ 16 and, with the \
               CIFAR-10 covariance at ε = 0.3: SGR 65.8 %, GN 48.7 %, LRC noise 57.9 %, clean 46.5 %.\n\n";
    }
    md += &analyze_cov::markdown(cs, cov, "eval/");
    md += "\n## Fig. 6: softmax along x + t·δ\n\n![](eval/fig6_trajectories.png)\n\n";
    let _ = writeln!(
        md,
        "## Fig. 7: PGD samples of {}\n\n{}\n\n![](eval/fig7_samples.png)",
        cs.models[0].name,
        flipped
            .iter()
            .map(|(e, k)| format!("ε = {:.0}/255: {k} of 10 predictions changed", e * 255.0))
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(md)
}
