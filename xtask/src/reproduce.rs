//! `reproduce`: train every method, run every evaluation, write one report beside the paper's numbers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use sgr_data::DatasetName;
use sgr_eval::experiment::{ExperimentReport, ResultCache, StageTime};
use sgr_models::DeviceKind;
use sgr_train::{ExperimentPlan, MethodName, PlannedRun, Stage};

use crate::common::{parse_dataset, parse_device};
use crate::evalkit::{DataOpts, out_dir, result_cache, setup, write};
use crate::{analyze_cov, eval_lrc, eval_transfer, eval_whitebox};

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
    /// Methods whose final runs train for other epochs than --epochs, e.g. `pgd=10,pgd-sgr=10` where PGD
    /// training's cost does not fit the budget; the report says so beside every table that shows them.
    #[arg(long, value_delimiter = ',')]
    method_epochs: Vec<sgr_train::MethodEpochs>,
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
    /// Budgets of the PGD-40 transfer matrices, in 1/255 (default: the paper's ε and 2ε, Table 4's 32 and 64 on
    /// MNIST).
    #[arg(long, value_delimiter = ',')]
    transfer_eps: Vec<f64>,
    /// Budgets (1/255) at which pgd and fgsm are trained besides the data set's own, one more run each (first
    /// seed) that the transfer matrix at that ε uses, as the paper's Table 4 did (default: every
    /// --transfer-eps). `--adversarial-eps 32` on MNIST trains them once and reuses those models at every ε.
    #[arg(long, value_delimiter = ',')]
    adversarial_eps: Vec<f64>,
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
    /// their paper ratio. `METHOD@EPOCHS=…` trains that grid (and a clean reference beside it) for EPOCHS instead
    /// of --sweep-epochs, e.g. `--lambda-sweep sgr-sign@20=0.25,0.5,1,2,4`.
    #[arg(long)]
    lambda_sweep: Vec<sgr_train::LambdaGrid>,
    /// Epochs of each sweep run (of grids without their own `@EPOCHS`).
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
    /// With --report-only: an interim report while runs still train. The final runs that have not finished are
    /// left out of every table and named at the top of the report (the λ sweep must have finished); what it
    /// evaluates is kept under eval/cache, so the full report later recomputes only the newcomers.
    #[arg(long, requires = "report_only")]
    partial: bool,
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
    lines: Vec<StageTime>,
}

impl Budget {
    fn time<T>(&mut self, what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        self.time_cached(what, None, f)
    }

    /// [`Self::time`] of a stage that reuses results from `cache`, recording their computing time too.
    fn time_cached<T>(
        &mut self,
        what: &str,
        cache: Option<&ResultCache>,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let t = Instant::now();
        let before = cache.map_or(0.0, ResultCache::reused_seconds);
        tracing::info!("reproduce: {what}");
        let r = f()?;
        self.lines.push(StageTime {
            what: what.to_string(),
            seconds: t.elapsed().as_secs_f64(),
            reused_seconds: cache.map_or(0.0, ResultCache::reused_seconds) - before,
        });
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
    let mut plan = cmd.plan(&out)?;
    let planned = plan.runs();
    if cmd.list_runs {
        print_run_list(&planned);
        return Ok(());
    }
    if let Some(name) = &cmd.run {
        return train_planned(&plan, &plan.run(name)?, &stop, &mut budget);
    }
    let foreign = plan.foreign_runs();
    if !foreign.is_empty() {
        anyhow::bail!(
            "{} planned run folder(s) hold another run than this protocol's:\n{}",
            foreign.len(),
            foreign
                .iter()
                .map(|(p, e)| format!("  {}: {e}", p.name))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let mut left_out: Vec<String> = Vec::new();
    if cmd.report_only {
        // One pass over the run folders: the sweep's unfinished runs, then the final runs'.
        let (unfinished_sweep, unfinished_finals): (Vec<PlannedRun>, Vec<PlannedRun>) = plan
            .unfinished()
            .into_iter()
            .partition(|p| p.stage == Stage::Sweep);
        let names = |v: &[PlannedRun]| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        if !cmd.partial {
            let all = [names(&unfinished_sweep), names(&unfinished_finals)].concat();
            if !all.is_empty() {
                anyhow::bail!(
                    "--report-only: {} run(s) not finished: {} (train them with --run NAME, see --list-runs)",
                    all.len(),
                    all.join(", ")
                );
            }
        } else {
            if !unfinished_sweep.is_empty() {
                anyhow::bail!(
                    "--partial: the λ sweep has not finished ({}); an interim report needs its choice of λ",
                    names(&unfinished_sweep).join(", ")
                );
            }
            plan = plan.finished_part();
            if plan.finals().is_empty() {
                anyhow::bail!(
                    "--partial: no final run has finished yet (see --list-runs): nothing to report"
                );
            }
            left_out = names(&unfinished_finals);
            if !left_out.is_empty() {
                eprintln!(
                    "--partial: leaving out {} unfinished run(s): {}",
                    left_out.len(),
                    left_out.join(", ")
                );
            }
        }
    } else {
        for p in &planned {
            train_planned(&plan, p, &stop, &mut budget)?;
        }
    }
    let all: Vec<PathBuf> = plan.finals().into_iter().map(|p| p.dir).collect();
    // Transfer, noise curves and figures compare methods on their first seed.
    let first_dir = |m: MethodName| plan.first_run_of(m).map(|p| p.dir);
    let selections = plan.selections()?;
    // The sweep's accuracy differences to clean with their paired errors (each sweep checkpoint on the
    // validation images again: seconds).
    let sweep_pairs = budget.time("λ sweep, image by image", || {
        Ok(sgr_eval::experiment::paired_sweeps(&plan, cmd.batch_size)?)
    })?;

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
    let s = setup(&all, &data)?;
    let eval_dir = out.join(sgr_eval::experiment::EVAL_DIR);
    out_dir(&eval_dir)?;
    let wb_cmd = eval_whitebox::WhiteboxCmd {
        checkpoints: all.clone(),
        data: data.clone(),
        pgd_steps: 10,
        deepfool_images: cmd.deepfool_images,
        masking_images: cmd.deepfool_images,
        // AutoAttack runs below, resumable per model, beside each run folder.
        autoattack: false,
        autoattack_images: 0,
        out: eval_dir.clone(),
        // (the commands' own flag; reproduce passes its caches, under eval/cache, itself)
        resume: true,
    };
    // Each model's row is kept in eval/cache/whitebox: an interrupted table resumes model by model, and a rerun
    // (e.g. --report-only after more runs finished) reuses the rows of unchanged checkpoints; a row that
    // `eval-whitebox --out RUN/eval --resume` stored beside a run (a zoo model's) is reused too.
    let wb_cache = result_cache(&eval_dir, "whitebox");
    let mut wb = budget.time_cached("white-box table", Some(&wb_cache), || {
        Ok(s.whitebox_rows_beside_runs(&eval_whitebox::config(&s, &wb_cmd), &wb_cache)?)
    })?;
    // AutoAttack (the AA column): each model's run resumes in RUN/autoattack, the folder `eval-autoattack
    // --out RUN/autoattack` writes, so a run evaluated that way before is reused; finished rows are kept in
    // eval/cache/autoattack.
    let aa_cfg = sgr_eval::AutoAttackEval {
        suite: sgr_attacks::AutoAttack {
            eps: s.eps,
            seed: cmd.seed,
            batch_size: cmd.batch_size,
            ..sgr_attacks::AutoAttack::default()
        },
        ..sgr_eval::AutoAttackEval::default()
    };
    let aa = if cmd.autoattack_images > 0 {
        let cache = result_cache(&eval_dir, "autoattack");
        let rows = budget.time_cached("AutoAttack", Some(&cache), || {
            crate::eval_autoattack::evaluate_beside_runs(
                &s,
                cmd.autoattack_images,
                &aa_cfg,
                &cache,
                &stop,
            )
        })?;
        let Some(rows) = rows else {
            anyhow::bail!(
                "interrupted; AutoAttack's state is saved: run the same command again to continue"
            );
        };
        for (w, a) in wb.iter_mut().zip(&rows) {
            w.aa = Some(a.robust);
            w.aa_images = a.images;
        }
        crate::evalkit::write_json(
            &eval_dir.join("autoattack.json"),
            &sgr_eval::report::autoattack_json(s.dataset.as_str(), s.eps, &aa_cfg, &rows),
        )?;
        Some(rows)
    } else {
        None
    };
    crate::evalkit::write_json(&eval_dir.join("whitebox.json"), &wb)?;
    let mut transfers = Vec::new();
    for e in cmd.transfer_eps() {
        let tr_cmd = eval_transfer::TransferCmd {
            checkpoints: plan.transfer_models(e).into_iter().map(|p| p.dir).collect(),
            data: DataOpts {
                eps: Some(e),
                ..data.clone()
            },
            pgd_steps: 40,
            out: eval_dir.clone(),
            resume: true,
        };
        let ts_setup = setup(&tr_cmd.checkpoints, &tr_cmd.data)?;
        // Each source model's column is kept in eval/cache/transfer-eps<ε>: the matrix resumes column by column.
        let cache = result_cache(&eval_dir, &format!("transfer-eps{e}"));
        let tm = budget.time_cached(
            &format!("transfer matrix, ε = {e}/255"),
            Some(&cache),
            || eval_transfer::evaluate(&ts_setup, &tr_cmd, Some(&cache)),
        )?;
        crate::evalkit::write_json(&eval_dir.join(format!("transfer-eps{e}.json")), &tm)?;
        transfers.push(tm);
    }

    let lrc_runs: Vec<PathBuf> = cmd
        .lrc_methods
        .iter()
        .filter_map(|&m| first_dir(m))
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
            resume: true,
        };
        let cache = result_cache(&eval_dir, "lrc");
        let r = budget.time_cached("correlated-noise curves", Some(&cache), || {
            eval_lrc::evaluate(&ls, &lrc_cmd, Some(&cache))
        })?;
        crate::evalkit::write_json(&eval_dir.join("lrc.json"), &r)?;
        Some(r)
    };

    // The covariance and sample figures show the clean model (else the first one).
    let reference = first_dir(MethodName::Clean).unwrap_or_else(|| all[0].clone());
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
        .filter_map(|&m| first_dir(m))
        .collect();
    let ts = setup(
        if traj_runs.is_empty() {
            &all[..1]
        } else {
            &traj_runs
        },
        &data,
    )?;
    budget.time("trajectories", || Ok(ts.trajectories(4, 5.0, &eval_dir)?))?;
    let rs = setup(std::slice::from_ref(&reference), &data)?;
    let flipped = budget.time("samples", || Ok(rs.samples(&[], &eval_dir)?))?;

    // 3. Report.
    let report = ExperimentReport {
        plan: &plan,
        left_out: &left_out,
        command: base_command(),
        eps_255: s.eps_255(),
        selections: &selections,
        sweep_pairs: &sweep_pairs,
        whitebox: &wb,
        autoattack: aa.as_deref().map(|rows| (&aa_cfg, rows)),
        transfers: &transfers,
        lrc: lrc.as_ref(),
        covariance: (&cs.models[0].name, &cov),
        flipped: &flipped,
        stages: &budget.lines,
        total_seconds: started.elapsed().as_secs_f64(),
    }
    .markdown()?;
    write(&out.join("report.md"), &report)?;
    println!("{report}");
    eprintln!("wrote {}", out.join("report.md").display());
    Ok(())
}

impl ReproduceCmd {
    /// --transfer-eps, or the data set's ε and twice that.
    fn transfer_eps(&self) -> Vec<f64> {
        if self.transfer_eps.is_empty() {
            let e = sgr_train::default_eps_255(self.dataset);
            vec![e, 2.0 * e]
        } else {
            self.transfer_eps.clone()
        }
    }

    /// The experiment the flags describe, writing under `out`.
    fn plan(&self, out: &Path) -> anyhow::Result<ExperimentPlan> {
        let plan = ExperimentPlan {
            out: out.to_path_buf(),
            dataset: self.dataset,
            data_dir: self.data_dir.clone(),
            epochs: self.epochs,
            train_limit: self.train_limit,
            methods: self.methods.clone(),
            seeds: if self.seeds.is_empty() {
                vec![self.seed]
            } else {
                self.seeds.clone()
            },
            seeded_methods: self.seeded_methods.clone(),
            lambda_sweep: self.lambda_sweep.clone(),
            sweep_epochs: self.sweep_epochs,
            sweep_tolerance: self.sweep_tolerance,
            validation: self.validation,
            augment: self.augment.clone(),
            device: self.device,
            method_epochs: self.method_epochs.clone(),
            adversarial_eps: if self.adversarial_eps.is_empty() {
                self.transfer_eps()
            } else {
                self.adversarial_eps.clone()
            },
            finished_finals_only: false,
        };
        plan.validate()?;
        Ok(plan)
    }
}

/// The command line as given, without --list-runs, --report-only, --partial and --run NAME (what selects one stage of
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
            "--list-runs" | "--report-only" | "--partial" => {}
            "--run" => {
                given.next();
            }
            _ if a.starts_with("--run=") => {}
            _ => args.push(quote(&a)),
        }
    }
    format!("cargo xtask {}", args.join(" "))
}

fn print_run_list(planned: &[PlannedRun]) {
    let base = base_command();
    let sweep: Vec<&PlannedRun> = planned.iter().filter(|p| p.stage == Stage::Sweep).collect();
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
    println!(
        "# last: evaluations and report.md, after every run has finished (meanwhile, `--report-only --partial` \
         reports on the finished ones)"
    );
    println!("{base} --report-only");
}

fn train_planned(
    plan: &ExperimentPlan,
    p: &PlannedRun,
    stop: &AtomicBool,
    budget: &mut Budget,
) -> anyhow::Result<()> {
    plan.check_folder(p)?;
    if plan.is_done(p) {
        return Ok(());
    }
    let mut progress = crate::train::Progress::new();
    budget.time(&format!("train {}", p.name), || {
        plan.train(p, stop, &mut progress)
            .with_context(|| format!("training {} into {}", p.name, p.dir.display()))
    })?;
    progress.finish();
    if stop.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted; run the same command again to continue where it stopped");
    }
    Ok(())
}
