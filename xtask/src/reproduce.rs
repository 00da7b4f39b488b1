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
    /// Seeds: the methods of --seeded-methods are trained once per seed (the report gives mean ± standard
    /// deviation), the others with the first (default: --seed).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Methods trained with every seed of --seeds.
    #[arg(long, value_delimiter = ',', default_value = "clean,gn,sgr-sign")]
    seeded_methods: Vec<MethodName>,
    /// A λ grid chosen on a validation split before the final runs (repeatable), e.g.
    /// `--lambda-sweep sgr-sign=0.25,0.5,1,2,4,8 --lambda-sweep gn=1.25,2.5,5,10,20,40`. Each value is trained
    /// for --sweep-epochs on the training set minus its last --validation images, beside a clean run; the
    /// highest PGD-10 accuracy on the held-out images among the λ within 0.1 points of the clean model's
    /// accuracy wins. sgr-grad, fgsm-sgr and pgd-sgr without a grid of their own take sgr-sign's choice scaled by
    /// their paper ratio.
    #[arg(long)]
    lambda_sweep: Vec<sgr_train::LambdaGrid>,
    /// Epochs of each sweep run.
    #[arg(long, default_value_t = 5)]
    sweep_epochs: usize,
    /// The sweep's accuracy tolerance in percentage points (the paper's rule: 0.1).
    #[arg(long, default_value_t = sgr_train::ACCURACY_TOLERANCE_POINTS)]
    sweep_tolerance: f64,
    /// Training images held out for the sweep (the last ones of the training set).
    #[arg(long, default_value_t = 5000)]
    validation: usize,
    /// Augmentation of every run (e.g. `crop`; default: the data set's).
    #[arg(long)]
    augment: Option<String>,
    /// Print one command per training run (stage 1: the λ sweep; stage 2: the final runs, after stage 1) and
    /// the report command, for a job array or GNU parallel on a shared file system; train nothing.
    #[arg(long, conflicts_with_all = ["run", "report_only"])]
    list_runs: bool,
    /// Train (or resume) only this run, a name printed by --list-runs.
    #[arg(long, conflicts_with = "report_only")]
    run: Option<String>,
    /// Train nothing: evaluate the finished runs and write the report (fails naming any unfinished run).
    #[arg(long)]
    report_only: bool,
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

    // 1. Train (or resume, or keep) the λ sweep, then one run per method and seed.
    let planned = plan(&cmd, &out);
    if cmd.list_runs {
        print_run_list(&planned);
        return Ok(());
    }
    if let Some(name) = &cmd.run {
        let p = planned.iter().find(|p| &p.name == name).with_context(|| {
            format!(
                "--run {name}: no such run; --list-runs prints them ({})",
                planned
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        return train_planned(&cmd, &planned, p, &stop, &mut budget);
    }
    if cmd.report_only {
        let unfinished: Vec<&str> = planned
            .iter()
            .filter(|p| !is_done(&cmd, p))
            .map(|p| p.name.as_str())
            .collect();
        if !unfinished.is_empty() {
            anyhow::bail!(
                "--report-only: {} run(s) not finished: {} (train them with --run NAME, see --list-runs)",
                unfinished.len(),
                unfinished.join(", ")
            );
        }
    } else {
        for p in &planned {
            train_planned(&cmd, &planned, p, &stop, &mut budget)?;
        }
    }
    let finals: Vec<&Planned> = planned.iter().filter(|p| p.stage == Stage::Final).collect();
    let runs: Vec<(MethodName, PathBuf)> =
        finals.iter().map(|p| (p.method, p.dir.clone())).collect();
    // Transfer, noise curves and figures use each method's first seed.
    let first_seed = cmd.seed_list()[0];
    let firsts: Vec<(MethodName, PathBuf)> = finals
        .iter()
        .filter(|p| p.seed == first_seed)
        .map(|p| (p.method, p.dir.clone()))
        .collect();
    let sweeps = sweep_selections(&cmd, &planned)?;

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
        checkpoints: firsts.iter().map(|r| r.1.clone()).collect(),
        data: data.clone(),
        pgd_steps: 40,
        out: eval_dir.clone(),
    };
    let ts_setup = setup(&tr_cmd.checkpoints, &data)?;
    let tm = budget.time("transfer matrix", || {
        eval_transfer::evaluate(&ts_setup, &tr_cmd)
    })?;
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
        &planned,
        &sweeps,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// A λ sweep run (or its clean reference) on the training split, measured on the validation split.
    Sweep,
    /// A run at the full budget on all training images.
    Final,
}

/// Where a final run's λ comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum LambdaFrom {
    /// The method's default (the paper's value), or none.
    Default,
    /// A swept value (sweep runs).
    Fixed(f64),
    /// The method's own sweep.
    Sweep,
    /// sgr-sign's sweep, scaled by the paper's ratio.
    SgrSignSweep,
}

#[derive(Clone, Debug)]
struct Planned {
    name: String,
    stage: Stage,
    method: MethodName,
    seed: u64,
    lambda: LambdaFrom,
    dir: PathBuf,
}

impl ReproduceCmd {
    fn seed_list(&self) -> Vec<u64> {
        if self.seeds.is_empty() {
            vec![self.seed]
        } else {
            self.seeds.clone()
        }
    }
}

/// Every training run of the command, sweep runs first; names are unique and stable (they are --run's values).
fn plan(cmd: &ReproduceCmd, out: &Path) -> Vec<Planned> {
    let seeds = cmd.seed_list();
    let mut v = Vec::new();
    if !cmd.lambda_sweep.is_empty() {
        let sweep = |method: MethodName, lambda: LambdaFrom, tag: String| Planned {
            dir: out.join("sweep").join(&tag),
            name: format!("sweep/{tag}"),
            stage: Stage::Sweep,
            method,
            seed: seeds[0],
            lambda,
        };
        v.push(sweep(
            MethodName::Clean,
            LambdaFrom::Default,
            format!("clean-s{}", seeds[0]),
        ));
        for g in &cmd.lambda_sweep {
            for &l in &g.lambdas {
                v.push(sweep(
                    g.method,
                    LambdaFrom::Fixed(l),
                    format!("{}-l{l}-s{}", g.method, seeds[0]),
                ));
            }
        }
    }
    let swept = |m: MethodName| cmd.lambda_sweep.iter().any(|g| g.method == m);
    for &method in &cmd.methods {
        let lambda = if swept(method) {
            LambdaFrom::Sweep
        } else if matches!(
            method,
            MethodName::SgrGrad | MethodName::FgsmSgr | MethodName::PgdSgr
        ) && swept(MethodName::SgrSign)
        {
            LambdaFrom::SgrSignSweep
        } else {
            LambdaFrom::Default
        };
        let its_seeds = if cmd.seeded_methods.contains(&method) {
            seeds.clone()
        } else {
            vec![seeds[0]]
        };
        for seed in its_seeds {
            let name = if seeds.len() == 1 {
                method.to_string()
            } else {
                format!("{method}-s{seed}")
            };
            v.push(Planned {
                dir: out.join("runs").join(&name),
                name,
                stage: Stage::Final,
                method,
                seed,
                lambda,
            });
        }
    }
    v
}

/// The command line as given, without --list-runs, --report-only and --run NAME (what selects one stage of
/// the work), each argument quoted for a POSIX shell where needed.
fn base_command() -> String {
    let quote = |a: &str| {
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=.,/:+@".contains(c))
        {
            a.to_string()
        } else {
            format!("'{}'", a.replace('\'', "'\\''"))
        }
    };
    let mut args = Vec::new();
    let mut given = std::env::args().skip_while(|a| a != "reproduce");
    while let Some(a) = given.next() {
        match a.as_str() {
            "--list-runs" | "--report-only" => {}
            "--run" => {
                given.next();
            }
            _ if a.starts_with("--run=") => {}
            _ => args.push(quote(&a)),
        }
    }
    format!("cargo xtask {}", args.join(" "))
}

fn print_run_list(planned: &[Planned]) {
    let base = base_command();
    let sweep: Vec<&Planned> = planned.iter().filter(|p| p.stage == Stage::Sweep).collect();
    if !sweep.is_empty() {
        println!("# stage 1: the λ sweep ({} independent runs)", sweep.len());
        for p in sweep {
            println!("{base} --run {}", p.name);
        }
        println!(
            "# stage 2: the final runs (independent of each other; after every stage-1 run has finished)"
        );
    } else {
        println!("# stage 1: the runs (independent of each other)");
    }
    for p in planned.iter().filter(|p| p.stage == Stage::Final) {
        println!("{base} --run {}", p.name);
    }
    println!("# last: evaluations and report.md, after every run has finished");
    println!("{base} --report-only");
}

fn is_done(cmd: &ReproduceCmd, p: &Planned) -> bool {
    sgr_train::read_record(&p.dir).is_ok_and(|r| finished(cmd, p, &r))
}

/// Whether `r`, the record in `p`'s folder, is the finished run `p` asks for.
fn finished(cmd: &ReproduceCmd, p: &Planned, r: &sgr_train::RunRecord) -> bool {
    let epochs = match p.stage {
        Stage::Sweep => Some(cmd.sweep_epochs),
        Stage::Final => cmd.epochs,
    };
    r.status == RunStatus::Complete
        && epochs.is_none_or(|e| r.epochs_done >= e)
        && (p.stage == Stage::Final || r.final_eval.is_some())
}

/// The λ sweeps' outcomes, one per grid (their runs must have finished).
fn sweep_selections(
    cmd: &ReproduceCmd,
    planned: &[Planned],
) -> anyhow::Result<Vec<sgr_train::Selection>> {
    cmd.lambda_sweep
        .iter()
        .map(|g| select(cmd, planned, g.method))
        .collect()
}

/// The sweep's choice of λ for `method`, from its finished sweep runs and the clean one beside them.
fn select(
    cmd: &ReproduceCmd,
    planned: &[Planned],
    method: MethodName,
) -> anyhow::Result<sgr_train::Selection> {
    let hint = "run the sweep first (stage 1 of --list-runs)";
    let clean = planned
        .iter()
        .find(|p| p.stage == Stage::Sweep && p.method == MethodName::Clean)
        .context("no λ sweep planned (--lambda-sweep)")?;
    let clean_r = sgr_train::read_record(&clean.dir).with_context(|| hint.to_string())?;
    let runs = planned
        .iter()
        .filter(|p| p.stage == Stage::Sweep && p.method == method)
        .filter_map(|p| match p.lambda {
            LambdaFrom::Fixed(l) => Some((p, l)),
            _ => None,
        })
        .map(|(p, l)| {
            let r =
                sgr_train::read_record(&p.dir).with_context(|| format!("{}: {hint}", p.name))?;
            Ok((l, r))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    sgr_train::select_lambda(method, &clean_r, &runs, cmd.sweep_tolerance)
        .with_context(|| format!("choosing λ for {method}: {hint}"))
}

/// λ of a run, resolving a sweep's choice (which must have finished).
fn lambda_of(cmd: &ReproduceCmd, planned: &[Planned], p: &Planned) -> anyhow::Result<Option<f64>> {
    Ok(match p.lambda {
        LambdaFrom::Default => None,
        LambdaFrom::Fixed(l) => Some(l),
        LambdaFrom::Sweep => Some(select(cmd, planned, p.method)?.chosen),
        LambdaFrom::SgrSignSweep => {
            let base = select(cmd, planned, MethodName::SgrSign)?.chosen;
            Some(sgr_train::scaled_from_sgr_sign(p.method, base, cmd.dataset))
        }
    })
}

fn train_planned(
    cmd: &ReproduceCmd,
    planned: &[Planned],
    p: &Planned,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    budget: &mut Budget,
) -> anyhow::Result<()> {
    let existing = sgr_train::read_record(&p.dir).ok();
    if existing.as_ref().is_some_and(|r| finished(cmd, p, r)) {
        return Ok(());
    }
    let sweep = p.stage == Stage::Sweep;
    let args = TrainArgs {
        method: Some(p.method),
        method_options: sgr_train::MethodOptions {
            lambda: lambda_of(cmd, planned, p)?,
            ..Default::default()
        },
        dataset: Some(cmd.dataset),
        data_dir: cmd.data_dir.clone(),
        epochs: if sweep {
            Some(cmd.sweep_epochs)
        } else {
            cmd.epochs
        },
        train_limit: cmd.train_limit,
        seed: Some(p.seed),
        augment: cmd.augment.clone(),
        validation: sweep.then_some(cmd.validation),
        device: cmd.device,
        // Sweep runs are judged by PGD on the whole validation split; final runs by the white-box table.
        pgd_eval_images: Some(if sweep { cmd.validation } else { 0 }),
        ..TrainArgs::default()
    };
    let mut progress = crate::train::Progress::new();
    budget.time(&format!("train {}", p.name), || {
        sgr_train::train(args, &p.dir, existing.is_some(), stop, &mut progress)
            .with_context(|| format!("training {} into {}", p.name, p.dir.display()))
    })?;
    progress.finish();
    if stop.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted; run the same command again to continue where it stopped");
    }
    Ok(())
}

/// The λ sweep: one table per method and a plot of PGD against validation accuracy.
fn sweep_markdown(
    cmd: &ReproduceCmd,
    out: &Path,
    planned: &[Planned],
    sweeps: &[sgr_train::Selection],
) -> anyhow::Result<String> {
    if sweeps.is_empty() {
        return Ok(String::new());
    }
    let mut md = format!(
        "## λ sweep (validation split)\n\nEach λ trained for {} epochs on the training set without its last {} \
         images, measured on those: accuracy and PGD-10 at ε = {:.0}/255. Rule: the highest PGD accuracy among \
         the λ within {} points of the clean model's validation accuracy (ties: higher accuracy, then smaller λ); \
         the final runs use the chosen λ{}.\n\n",
        cmd.sweep_epochs,
        cmd.validation,
        sgr_train::default_eps_255(cmd.dataset),
        cmd.sweep_tolerance,
        if planned.iter().any(|p| p.lambda == LambdaFrom::SgrSignSweep) {
            "; sgr-grad, fgsm-sgr and pgd-sgr without a grid of their own take sgr-sign's, times their paper ratio"
        } else {
            ""
        }
    );
    let mut series = Vec::new();
    for sel in sweeps {
        let _ = writeln!(
            md,
            "**{}** (clean model: {:.2} %; paper's λ {}): chosen λ = **{}**\n",
            sel.method,
            100.0 * sel.clean_accuracy,
            sgr_train::default_lambda(sel.method, cmd.dataset),
            sel.chosen
        );
        let mut t = sgr_eval::Table::new(vec![
            "λ",
            "validation accuracy",
            "PGD-10",
            "images",
            "within 0.1 points",
        ]);
        for c in &sel.candidates {
            let mark = if c.lambda == sel.chosen { " ◀" } else { "" };
            t.push(vec![
                format!("{}{mark}", c.lambda),
                format!("{:.2} %", 100.0 * c.validation_accuracy),
                format!("{:.1} %", 100.0 * c.pgd_accuracy),
                c.pgd_images.to_string(),
                if c.eligible {
                    "yes".into()
                } else {
                    "no".into()
                },
            ]);
        }
        md += &t.to_markdown();
        md += "\n";
        series.push(sgr_eval::plot::Series {
            label: sel.method.to_string(),
            points: sel
                .candidates
                .iter()
                .map(|c| (100.0 * c.validation_accuracy, 100.0 * c.pgd_accuracy))
                .collect(),
        });
    }
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0f64, f64::max);
    let eval = out.join("eval");
    out_dir(&eval)?;
    sgr_eval::plot::line_chart(
        &eval.join("lambda_sweep.png"),
        &sgr_eval::plot::LinePanel {
            title: "λ sweep: PGD-10 against validation accuracy (points in λ order)".into(),
            x_label: "validation accuracy (%)".into(),
            y_label: "PGD-10 accuracy (%)".into(),
            series,
            y_range: (0.0, (top + 5.0).min(100.0)),
            legend: true,
        },
    )?;
    md += "![](eval/lambda_sweep.png)\n\n";
    Ok(md)
}

/// Mean ± sample standard deviation over seeds of the white-box columns, for methods trained with several.
fn seed_spread_markdown(planned: &[Planned], wb: &[sgr_eval::WhiteboxRow]) -> String {
    let mut methods: Vec<MethodName> = Vec::new();
    for p in planned.iter().filter(|p| p.stage == Stage::Final) {
        if !methods.contains(&p.method) {
            methods.push(p.method);
        }
    }
    let with_aa = wb.iter().any(|r| r.aa.is_some());
    let mut header = vec![
        "TRAIN. METH.",
        "seeds",
        "TEST",
        "RAND",
        "FGM",
        "FGSM",
        "PGD",
    ];
    if with_aa {
        header.push("AA");
    }
    let mut t = sgr_eval::Table::new(header);
    let mut any = false;
    for m in methods {
        let rows: Vec<&sgr_eval::WhiteboxRow> = planned
            .iter()
            .filter(|p| p.stage == Stage::Final && p.method == m)
            .filter_map(|p| wb.iter().find(|r| r.model == p.name))
            .collect();
        if rows.len() < 2 {
            continue;
        }
        any = true;
        let stat = |f: &dyn Fn(&sgr_eval::WhiteboxRow) -> Option<f64>| {
            let v: Vec<f64> = rows
                .iter()
                .filter_map(|r| f(r))
                .map(|x| 100.0 * x)
                .collect();
            if v.len() < 2 {
                return "–".to_string();
            }
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            format!("{mean:.2} ± {sd:.2}")
        };
        let mut row = vec![
            m.to_string(),
            rows.len().to_string(),
            stat(&|r| Some(r.test)),
            stat(&|r| Some(r.rand)),
            stat(&|r| Some(r.fgm)),
            stat(&|r| Some(r.fgsm)),
            stat(&|r| Some(r.pgd)),
        ];
        if with_aa {
            row.push(stat(&|r| r.aa));
        }
        t.push(row);
    }
    if !any {
        return String::new();
    }
    format!(
        "\n### Spread over seeds (mean ± sample standard deviation, %)\n\n{}\n",
        t.to_markdown()
    )
}

fn rel(p: &Path, base: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).display().to_string()
}

#[allow(clippy::too_many_arguments)]
fn report(
    cmd: &ReproduceCmd,
    out: &Path,
    s: &Setup,
    planned: &[Planned],
    sweeps: &[sgr_train::Selection],
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
        "Made by `{}` (sgr {}), seed{} {}. Evaluation on the first {} test images; ε = {:.0}/255.\n",
        base_command(),
        env!("CARGO_PKG_VERSION"),
        if cmd.seed_list().len() > 1 { "s" } else { "" },
        cmd.seed_list()
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        tm.images,
        s.eps_255()
    );
    md += "## Budget\n\n| run | method settings | train images | epochs | training time | test accuracy |\n|:--|:--|--:|--:|--:|--:|\n";
    for p in planned {
        let (name, dir) = (&p.name, &p.dir);
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
            "| [{name}]({}) | {} | {} | {} | {:.1} min | {} |",
            rel(dir, out),
            settings.join(", "),
            r.train_images,
            r.epochs_done,
            secs / 60.0,
            r.history.last().map_or("–".into(), |e| format!(
                "{:.2} %{}",
                100.0 * e.test_accuracy,
                if r.validation_images > 0 {
                    " (validation)"
                } else {
                    ""
                }
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

    md += &sweep_markdown(cmd, out, planned, sweeps)?;
    md += &eval_whitebox::markdown(s, wb);
    md += &seed_spread_markdown(planned, wb);
    let ds = s.dataset.as_str();
    let method_of = |row: &str| {
        planned
            .iter()
            .find(|p| p.stage == Stage::Final && p.name == row)
            .map_or(row.to_string(), |p| p.method.to_string())
    };
    if wb
        .iter()
        .any(|r| sgr_eval::paper::whitebox_row(ds, &method_of(&r.model)).is_some())
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
            let p = sgr_eval::paper::whitebox_row(ds, &method_of(&r.model));
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
            .any(|m| sgr_eval::paper::mnist_transfer(&method_of(m), &method_of(m)).is_some())
    {
        md += "\n### The paper's MNIST transfer matrix for the same models (Table 4, ε = 32/255, PGD-40, full test set)\n\n";
        let mut header = vec!["TRAIN. METH.".to_string()];
        header.extend(tm.models.iter().cloned());
        let mut t = sgr_eval::Table::new(header);
        for target in &tm.models {
            let mut row = vec![target.clone()];
            for source in &tm.models {
                row.push(
                    sgr_eval::paper::mnist_transfer(&method_of(target), &method_of(source))
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
