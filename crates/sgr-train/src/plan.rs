//! An experiment as a list of independent training runs: the λ sweep on a validation split, then one run per
//! method and seed at the full budget; names, folders, settings, λ resolution and "is it finished" in one place.
//!
//! `cargo xtask reproduce` builds an [`ExperimentPlan`] from its flags; `--list-runs` prints
//! [`ExperimentPlan::runs`], `--run NAME` trains one ([`ExperimentPlan::train`]), `--report-only` checks
//! [`ExperimentPlan::unfinished`]. Every run is a plain run folder, so the runs may be trained in any order, on
//! different machines sharing a file system, and resumed after an interruption.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use sgr_data::DatasetName;
use sgr_models::DeviceKind;

use crate::error::{Result, TrainError};
use crate::method::MethodOptions;
use crate::run::{RunRecord, RunStatus, read_record};
use crate::settings::MethodName;
use crate::sweep::{LambdaGrid, Selection, scaled_from_sgr_sign, select_lambda};
use crate::trainer::{Observer, TrainArgs, check_resumable, train};

/// Which part of the experiment a run belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A λ sweep run (or its clean reference) on the training split, measured on the validation split.
    Sweep,
    /// A run at the full budget on all training images.
    Final,
}

/// Where a run's λ comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LambdaFrom {
    /// The method's default (the paper's value), or none.
    Default,
    /// A swept value (sweep runs).
    Fixed(f64),
    /// The method's own sweep.
    Sweep,
    /// sgr-sign's sweep, scaled by the paper's ratio ([`scaled_from_sgr_sign`]).
    SgrSignSweep,
}

/// One training run of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedRun {
    /// Unique and stable: `sweep/<method>-l<λ>-s<seed>`, `sweep/clean-s<seed>`, `<method>` (one seed) or
    /// `<method>-s<seed>`; a grid with its own epochs E (`METHOD@E=…`) names its runs `…-l<λ>-e<E>-s<seed>`
    /// beside a clean reference `sweep/clean-e<E>-s<seed>`.
    pub name: String,
    pub stage: Stage,
    pub method: MethodName,
    pub seed: u64,
    pub lambda: LambdaFrom,
    /// Epochs to train (`None`: the train command's default for the method and data set).
    pub epochs: Option<usize>,
    /// `OUT/sweep/<tag>` or `OUT/runs/<name>`.
    pub dir: PathBuf,
    /// Training ε in 1/255 where it is not the data set's: a [`RETRAINED_PER_EPS`] method trained again for a
    /// transfer matrix at that ε (`<method>-eps<ε>`, first seed only).
    pub eps_255: Option<f64>,
}

/// `METHOD=EPOCHS`: a method whose final runs train for fewer (or more) epochs than the others, e.g. `pgd=10` where
/// PGD training's ~9× cost does not fit the budget; reports state it beside every table that shows those runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodEpochs {
    pub method: MethodName,
    pub epochs: usize,
}

impl std::str::FromStr for MethodEpochs {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (m, e) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}': expected METHOD=EPOCHS (e.g. pgd=10)"))?;
        let method: MethodName = m.trim().parse().map_err(|e| format!("'{s}': {e}"))?;
        match e.trim().parse::<usize>() {
            Ok(epochs) if epochs > 0 => Ok(Self { method, epochs }),
            _ => Err(format!("'{s}': '{e}' is not a positive number of epochs")),
        }
    }
}

/// The methods the paper trains anew for each ε of its transfer tables (Table 4: "the PGD & FGSM models were
/// trained separately for each ε").
pub const RETRAINED_PER_EPS: [MethodName; 2] = [MethodName::Pgd, MethodName::Fgsm];

/// The settings of an experiment (`cargo xtask reproduce`'s flags).
#[derive(Clone, Debug)]
pub struct ExperimentPlan {
    pub out: PathBuf,
    pub dataset: DatasetName,
    pub data_dir: Option<PathBuf>,
    /// Epochs of each final run (`None`: the train command's default per method and data set).
    pub epochs: Option<usize>,
    pub train_limit: Option<usize>,
    pub methods: Vec<MethodName>,
    /// The first seed serves methods outside `seeded_methods` and the sweep. Never empty.
    pub seeds: Vec<u64>,
    pub seeded_methods: Vec<MethodName>,
    pub lambda_sweep: Vec<LambdaGrid>,
    pub sweep_epochs: usize,
    /// In percentage points ([`crate::ACCURACY_TOLERANCE_POINTS`] in the paper).
    pub sweep_tolerance: f64,
    /// Training images held out for the sweep (the last ones).
    pub validation: usize,
    pub augment: Option<String>,
    pub device: DeviceKind,
    /// Epochs of a method's final runs where they differ from [`Self::epochs`].
    pub method_epochs: Vec<MethodEpochs>,
    /// Further training budgets ε (1/255) for the [`RETRAINED_PER_EPS`] methods, one run each with the first
    /// seed, for the transfer matrices at those ε; the data set's own ε is always trained and ignored here.
    pub adversarial_eps: Vec<f64>,
    /// Leave the final runs that have not finished out of [`Self::runs`] and everything built on it (an interim
    /// report while some runs still train: `reproduce --report-only --partial`). The sweep stays whole.
    pub finished_finals_only: bool,
}

const SWEEP_HINT: &str = "run the sweep first (stage 1 of --list-runs)";

impl ExperimentPlan {
    /// Checks what the flags cannot: at least one seed and one method.
    pub fn validate(&self) -> Result<()> {
        if self.seeds.is_empty() {
            return Err(TrainError::Config("--seeds: give at least one seed".into()));
        }
        if self.methods.is_empty() {
            return Err(TrainError::Config(
                "--methods: give at least one method".into(),
            ));
        }
        if let Some(m) = first_repeat(self.lambda_sweep.iter().map(|g| g.method)) {
            return Err(TrainError::Config(format!(
                "--lambda-sweep: {m} has two grids; give one"
            )));
        }
        if let Some(m) = first_repeat(self.method_epochs.iter().map(|m| m.method)) {
            return Err(TrainError::Config(format!(
                "--method-epochs: {m} is given twice; give it once"
            )));
        }
        if let Some(e) = self
            .adversarial_eps
            .iter()
            .find(|e| !(e.is_finite() && **e > 0.0 && **e <= 255.0))
        {
            return Err(TrainError::Config(format!(
                "--adversarial-eps {e}: give budgets in (0, 255], in units of 1/255"
            )));
        }
        Ok(())
    }

    fn first_seed(&self) -> u64 {
        self.seeds.first().copied().unwrap_or_default()
    }

    /// Epochs of `grid`'s runs and of the clean reference beside them.
    pub fn grid_epochs(&self, grid: &LambdaGrid) -> usize {
        grid.epochs.unwrap_or(self.sweep_epochs)
    }

    /// `method`'s λ grid, if the plan sweeps it.
    pub fn grid(&self, method: MethodName) -> Option<&LambdaGrid> {
        self.lambda_sweep.iter().find(|g| g.method == method)
    }

    fn swept(&self, m: MethodName) -> bool {
        self.grid(m).is_some()
    }

    /// Every training run, sweep runs first; with [`Self::finished_finals_only`], the final runs that have not
    /// finished are left out.
    pub fn runs(&self) -> Vec<PlannedRun> {
        let all = self.planned_runs();
        if !self.finished_finals_only {
            return all;
        }
        all.into_iter()
            .filter(|p| p.stage == Stage::Sweep || self.is_done(p))
            .collect()
    }

    /// The same plan with [`Self::finished_finals_only`] set (an interim report's; [`Self::unfinished`] still
    /// names the runs it leaves out).
    pub fn finished_part(&self) -> Self {
        Self {
            finished_finals_only: true,
            ..self.clone()
        }
    }

    /// Every training run of the flags, finished or not.
    fn planned_runs(&self) -> Vec<PlannedRun> {
        let s0 = self.first_seed();
        let mut v = Vec::new();
        if !self.lambda_sweep.is_empty() {
            let sweep = |method, lambda, epochs: Option<usize>, tag: String| PlannedRun {
                dir: self.out.join("sweep").join(&tag),
                name: format!("sweep/{tag}"),
                stage: Stage::Sweep,
                method,
                seed: s0,
                lambda,
                epochs: Some(epochs.unwrap_or(self.sweep_epochs)),
                eps_255: None,
            };
            let e_tag = |e: Option<usize>| e.map_or(String::new(), |e| format!("-e{e}"));
            // One clean reference per budget the grids train for (`@E` with E = --sweep-epochs is that budget).
            let mut budgets: Vec<Option<usize>> = Vec::new();
            for g in &self.lambda_sweep {
                let e = g.epochs.filter(|&e| e != self.sweep_epochs);
                if !budgets.contains(&e) {
                    budgets.push(e);
                }
            }
            for &e in &budgets {
                v.push(sweep(
                    MethodName::Clean,
                    LambdaFrom::Default,
                    e,
                    format!("clean{}-s{s0}", e_tag(e)),
                ));
            }
            for g in &self.lambda_sweep {
                for &l in &g.lambdas {
                    v.push(sweep(
                        g.method,
                        LambdaFrom::Fixed(l),
                        g.epochs,
                        format!("{}-l{l}{}-s{s0}", g.method, e_tag(g.epochs)),
                    ));
                }
            }
        }
        for &method in &self.methods {
            let lambda = if self.swept(method) {
                LambdaFrom::Sweep
            } else if matches!(
                method,
                MethodName::SgrGrad | MethodName::FgsmSgr | MethodName::PgdSgr
            ) && self.swept(MethodName::SgrSign)
            {
                LambdaFrom::SgrSignSweep
            } else {
                LambdaFrom::Default
            };
            let seeds = if self.seeded_methods.contains(&method) {
                self.seeds.clone()
            } else {
                vec![s0]
            };
            let final_run = |seed: u64, eps_255: Option<f64>| {
                let base = match eps_255 {
                    Some(e) => format!("{method}-eps{e}"),
                    None => method.to_string(),
                };
                let name = if self.seeds.len() == 1 {
                    base
                } else {
                    format!("{base}-s{seed}")
                };
                PlannedRun {
                    dir: self.out.join("runs").join(&name),
                    name,
                    stage: Stage::Final,
                    method,
                    seed,
                    lambda,
                    epochs: self.final_epochs(method),
                    eps_255,
                }
            };
            for seed in seeds {
                v.push(final_run(seed, None));
            }
            if RETRAINED_PER_EPS.contains(&method) {
                for e in self.extra_eps() {
                    v.push(final_run(s0, Some(e)));
                }
            }
        }
        v
    }

    /// Epochs of `method`'s final runs: its [`Self::method_epochs`] entry, else [`Self::epochs`].
    pub fn final_epochs(&self, method: MethodName) -> Option<usize> {
        self.method_epochs
            .iter()
            .find(|m| m.method == method)
            .map_or(self.epochs, |m| Some(m.epochs))
    }

    /// The final runs whose budget differs from [`Self::epochs`], with their epochs (what a report must say
    /// beside the tables that show them).
    pub fn shortened_finals(&self) -> Vec<(PlannedRun, usize)> {
        self.runs()
            .into_iter()
            .filter(|p| p.stage == Stage::Final && p.epochs != self.epochs)
            .filter_map(|p| p.epochs.map(|e| (p, e)))
            .collect()
    }

    /// [`Self::adversarial_eps`] without the data set's ε and repeats, in the order given.
    fn extra_eps(&self) -> Vec<f64> {
        let own = crate::adversarial::default_eps_255(self.dataset);
        let mut v: Vec<f64> = Vec::new();
        for &e in &self.adversarial_eps {
            if !same_eps(e, own) && !v.iter().any(|&x| same_eps(x, e)) {
                v.push(e);
            }
        }
        v
    }

    /// The final runs at the data set's ε (one per method and seed): the white-box table's models.
    pub fn finals(&self) -> Vec<PlannedRun> {
        self.runs()
            .into_iter()
            .filter(|p| p.stage == Stage::Final && p.eps_255.is_none())
            .collect()
    }

    /// The models of the transfer matrix at `eps_255`: [`Self::first_seed_finals`], each
    /// [`RETRAINED_PER_EPS`] method replaced by its run trained at that ε where the plan has one.
    ///
    /// With [`Self::finished_finals_only`], such a method is left out while its run at that ε has not finished
    /// (rather than standing in with its model trained at another ε).
    pub fn transfer_models(&self, eps_255: f64) -> Vec<PlannedRun> {
        let runs = self.planned_runs();
        self.first_seed_finals()
            .into_iter()
            .filter_map(|p| {
                match runs.iter().find(|q| {
                    q.method == p.method
                        && q.seed == p.seed
                        && q.eps_255.is_some_and(|e| same_eps(e, eps_255))
                }) {
                    Some(q) if self.finished_finals_only && !self.is_done(q) => None,
                    Some(q) => Some(q.clone()),
                    None => Some(p),
                }
            })
            .collect()
    }

    /// Whether the plan trains its [`RETRAINED_PER_EPS`] methods again at `eps_255` (an ε other than the data
    /// set's): what the transfer matrix at that ε uses for them.
    pub fn retrained_at(&self, eps_255: f64) -> bool {
        self.planned_runs()
            .iter()
            .any(|p| p.eps_255.is_some_and(|e| same_eps(e, eps_255)))
    }

    /// The final runs of the first seed, one per method: what comparisons between methods (transfer,
    /// correlated noise, figures) use.
    pub fn first_seed_finals(&self) -> Vec<PlannedRun> {
        let s0 = self.first_seed();
        self.finals().into_iter().filter(|p| p.seed == s0).collect()
    }

    /// The final run of `method` with the first seed, if the plan trains that method.
    pub fn first_run_of(&self, method: MethodName) -> Option<PlannedRun> {
        self.first_seed_finals()
            .into_iter()
            .find(|p| p.method == method)
    }

    /// The run called `name`; the error lists every name.
    pub fn run(&self, name: &str) -> Result<PlannedRun> {
        let runs = self.planned_runs();
        runs.iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| {
                TrainError::Config(format!(
                    "--run {name}: no such run; --list-runs prints them ({})",
                    runs.iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// Whether `r`, the record in `p`'s folder, is the finished run `p` asks for: complete, at least the
    /// planned epochs, and for sweep runs with the PGD check on the validation split.
    pub fn is_finished(&self, p: &PlannedRun, r: &RunRecord) -> bool {
        r.status == RunStatus::Complete
            && p.epochs.is_none_or(|e| r.epochs_done >= e)
            && (p.stage == Stage::Final || r.final_eval.is_some())
    }

    /// Whether `p`'s folder holds its finished run.
    pub fn is_done(&self, p: &PlannedRun) -> bool {
        read_record(&p.dir).is_ok_and(|r| self.is_finished(p, &r))
    }

    /// The planned runs whose folder holds another run than the plan's (other method, seed, λ, ε, validation
    /// split, …; [`check_resumable`]), each with the reason: e.g. a final run trained before the sweep's choice of
    /// λ changed, or a wrong run linked into the layout. Such a folder must be neither counted as finished nor
    /// resumed. Runs whose λ is not known yet (their sweep is unfinished) are checked once it is.
    pub fn foreign_runs(&self) -> Vec<(PlannedRun, TrainError)> {
        self.planned_runs()
            .into_iter()
            .filter_map(|p| {
                let args = self.train_args(&p).ok()?;
                let r = read_record(&p.dir).ok()?;
                check_planned(&args, &r, &p).err().map(|e| (p, e))
            })
            .collect()
    }

    /// An error if `p`'s folder holds another run than the plan's ([`Self::foreign_runs`]); an empty folder, or
    /// one without a readable run.json, is fine. Needs `p`'s λ: for a final run, its sweep must have finished.
    pub fn check_folder(&self, p: &PlannedRun) -> Result<()> {
        match read_record(&p.dir) {
            Ok(r) => check_planned(&self.train_args(p)?, &r, p),
            Err(_) => Ok(()),
        }
    }

    /// The runs not finished yet, in plan order.
    pub fn unfinished(&self) -> Vec<PlannedRun> {
        self.planned_runs()
            .into_iter()
            .filter(|p| !self.is_done(p))
            .collect()
    }

    /// `method`'s sweep: the clean reference trained for the grid's epochs, and one run per swept λ.
    pub fn sweep_runs(&self, method: MethodName) -> Result<(PlannedRun, Vec<(f64, PlannedRun)>)> {
        let runs = self.runs();
        let grid = self
            .grid(method)
            .ok_or_else(|| TrainError::Config(format!("no λ sweep planned for {method}")))?;
        let epochs = Some(self.grid_epochs(grid));
        let clean = runs
            .iter()
            .find(|p| {
                p.stage == Stage::Sweep && p.method == MethodName::Clean && p.epochs == epochs
            })
            .cloned()
            .ok_or_else(|| TrainError::Config("no λ sweep planned (--lambda-sweep)".into()))?;
        let swept = runs
            .into_iter()
            .filter(|p| p.stage == Stage::Sweep && p.method == method)
            .filter_map(|p| match p.lambda {
                LambdaFrom::Fixed(l) => Some((l, p)),
                _ => None,
            })
            .collect();
        Ok((clean, swept))
    }

    /// The sweep's choice of λ for `method`, from its finished sweep runs and the clean one beside them.
    pub fn select(&self, method: MethodName) -> Result<Selection> {
        let (clean, swept) = self.sweep_runs(method)?;
        let not_ready = |p: &PlannedRun, e: TrainError| TrainError::SweepNotReady {
            run: p.name.clone(),
            reason: format!("{e}; {SWEEP_HINT}"),
        };
        let clean_r = read_record(&clean.dir).map_err(|e| not_ready(&clean, e))?;
        let swept = swept
            .iter()
            .map(|(l, p)| Ok((*l, read_record(&p.dir).map_err(|e| not_ready(p, e))?)))
            .collect::<Result<Vec<_>>>()?;
        select_lambda(method, &clean_r, &swept, self.sweep_tolerance).map_err(|e| {
            TrainError::SweepNotReady {
                run: format!("the {method} sweep"),
                reason: format!("choosing λ: {e}; {SWEEP_HINT}"),
            }
        })
    }

    /// Every sweep's outcome, one per grid (their runs must have finished).
    pub fn selections(&self) -> Result<Vec<Selection>> {
        self.lambda_sweep
            .iter()
            .map(|g| self.select(g.method))
            .collect()
    }

    /// λ of a run, resolving a sweep's choice (whose runs must have finished); `None`: the method's default.
    pub fn lambda_of(&self, p: &PlannedRun) -> Result<Option<f64>> {
        Ok(match p.lambda {
            LambdaFrom::Default => None,
            LambdaFrom::Fixed(l) => Some(l),
            LambdaFrom::Sweep => Some(self.select(p.method)?.chosen),
            LambdaFrom::SgrSignSweep => {
                let base = self.select(MethodName::SgrSign)?.chosen;
                Some(scaled_from_sgr_sign(p.method, base, self.dataset))
            }
        })
    }

    /// The training settings of `p`. Sweep runs hold out the validation split and are judged by PGD on all
    /// of it; final runs train on everything and leave the PGD check to the white-box table.
    pub fn train_args(&self, p: &PlannedRun) -> Result<TrainArgs> {
        let sweep = p.stage == Stage::Sweep;
        Ok(TrainArgs {
            method: Some(p.method),
            method_options: MethodOptions {
                lambda: self.lambda_of(p)?,
                eps: p.eps_255,
                ..Default::default()
            },
            dataset: Some(self.dataset),
            data_dir: self.data_dir.clone(),
            epochs: p.epochs,
            train_limit: self.train_limit,
            seed: Some(p.seed),
            augment: self.augment.clone(),
            // Final runs train on every image: 0 (the same as none, and checked against a stored run).
            validation: Some(if sweep { self.validation } else { 0 }),
            device: self.device,
            pgd_eval_images: Some(if sweep { self.validation } else { 0 }),
            ..TrainArgs::default()
        })
    }

    /// Trains (or resumes) `p` unless its folder already holds it finished; `Ok(None)` when there was nothing
    /// to do. A set `stop` ends it at a checkpoint, like `train`.
    pub fn train(
        &self,
        p: &PlannedRun,
        stop: &AtomicBool,
        obs: &mut dyn Observer,
    ) -> Result<Option<RunRecord>> {
        let args = self.train_args(p)?;
        let existing = read_record(&p.dir).ok();
        if let Some(r) = &existing {
            check_planned(&args, r, p)?;
            if self.is_finished(p, r) {
                return Ok(None);
            }
        }
        let _span = tracing::info_span!("planned run", name = %p.name).entered();
        train(args, &p.dir, existing.is_some(), stop, obs).map(Some)
    }
}

/// [`check_resumable`] of the run stored in `p`'s folder against the plan's settings `args`; a mismatch is a
/// [`TrainError::ForeignRun`] (the folder holds another run than the planned one).
fn check_planned(args: &TrainArgs, r: &RunRecord, p: &PlannedRun) -> Result<()> {
    check_resumable(args, r, &p.dir).map_err(|e| match e {
        TrainError::ResumeMismatch {
            dir,
            flag,
            given,
            stored,
        } => TrainError::ForeignRun {
            dir,
            flag,
            planned: given,
            stored,
        },
        e => e,
    })
}

/// Whether two budgets in 1/255 are the same (up to rounding).
fn same_eps(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9
}

/// The first method that `methods` names a second time.
fn first_repeat(methods: impl Iterator<Item = MethodName>) -> Option<MethodName> {
    let mut seen = Vec::new();
    for m in methods {
        if seen.contains(&m) {
            return Some(m);
        }
        seen.push(m);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ExperimentPlan {
        ExperimentPlan {
            out: PathBuf::from("/nonexistent/out"),
            dataset: DatasetName::Mnist,
            data_dir: None,
            epochs: Some(50),
            train_limit: None,
            methods: vec![
                MethodName::Clean,
                MethodName::SgrSign,
                MethodName::SgrGrad,
                MethodName::Gn,
                MethodName::Fgsm,
            ],
            seeds: vec![3, 4],
            seeded_methods: vec![MethodName::Clean, MethodName::SgrSign],
            lambda_sweep: vec!["sgr-sign=0.5,1".parse().expect("grid")],
            sweep_epochs: 5,
            sweep_tolerance: 0.1,
            validation: 5000,
            augment: Some("crop".into()),
            device: DeviceKind::Cpu,
            adversarial_eps: vec![],
            method_epochs: vec![],
            finished_finals_only: false,
        }
    }

    /// An interim plan keeps the finished final runs and the whole sweep; a method retrained per ε drops out of
    /// that ε's transfer matrix while its run there is unfinished instead of standing in with its ε = 32 model.
    #[test]
    fn the_finished_part_leaves_unfinished_final_runs_out()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = ExperimentPlan {
            out: dir.path().to_path_buf(),
            methods: vec![MethodName::Clean, MethodName::Pgd],
            adversarial_eps: vec![64.0],
            lambda_sweep: vec![],
            ..plan()
        };
        // A finished 50-epoch run's record (the zoo's clean seed 0) in the folders of clean-s3 and pgd-s3.
        let finished = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../zoo/mnist/clean-s0/run.json"),
        )?;
        for run in ["clean-s3", "pgd-s3"] {
            let d = dir.path().join("runs").join(run);
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join(crate::run::RUN_FILE), &finished)?;
        }
        let names = |v: Vec<PlannedRun>| v.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(
            names(p.runs()),
            ["clean-s3", "clean-s4", "pgd-s3", "pgd-eps64-s3"]
        );
        let part = p.finished_part();
        assert_eq!(names(part.runs()), ["clean-s3", "pgd-s3"]);
        assert_eq!(names(part.finals()), ["clean-s3", "pgd-s3"]);
        assert_eq!(names(part.transfer_models(32.0)), ["clean-s3", "pgd-s3"]);
        assert_eq!(names(part.transfer_models(64.0)), ["clean-s3"]);
        assert_eq!(names(p.transfer_models(64.0)), ["clean-s3", "pgd-eps64-s3"]);
        // The plan still knows the runs it leaves out (their names, that they are unfinished, their ε).
        assert!(part.run("clean-s4").is_ok() && part.retrained_at(64.0));
        assert_eq!(names(part.unfinished()), ["clean-s4", "pgd-eps64-s3"]);
        Ok(())
    }

    #[test]
    fn a_method_may_train_fewer_epochs_and_the_plan_says_which_runs_did() -> Result<()> {
        let p = ExperimentPlan {
            methods: vec![MethodName::Clean, MethodName::Pgd],
            adversarial_eps: vec![64.0],
            method_epochs: vec!["pgd=10".parse().map_err(TrainError::Config)?],
            lambda_sweep: vec![],
            ..plan()
        };
        p.validate()?;
        let epochs: Vec<(String, Option<usize>)> =
            p.runs().into_iter().map(|r| (r.name, r.epochs)).collect();
        assert_eq!(
            epochs,
            [
                ("clean-s3".to_string(), Some(50)),
                ("clean-s4".to_string(), Some(50)),
                ("pgd-s3".to_string(), Some(10)),
                ("pgd-eps64-s3".to_string(), Some(10)),
            ]
        );
        let short: Vec<(String, usize)> = p
            .shortened_finals()
            .into_iter()
            .map(|(r, e)| (r.name, e))
            .collect();
        assert_eq!(
            short,
            [("pgd-s3".to_string(), 10), ("pgd-eps64-s3".to_string(), 10)]
        );
        assert_eq!(p.train_args(&p.run("pgd-s3")?)?.epochs, Some(10));
        for bad in ["pgd", "pgd=0", "pgd=x", "nope=3"] {
            assert!(bad.parse::<MethodEpochs>().is_err(), "{bad}");
        }
        let twice = ExperimentPlan {
            method_epochs: vec![
                MethodEpochs {
                    method: MethodName::Pgd,
                    epochs: 10,
                },
                MethodEpochs {
                    method: MethodName::Pgd,
                    epochs: 20,
                },
            ],
            ..p
        };
        assert!(
            twice
                .validate()
                .expect_err("twice")
                .to_string()
                .contains("--method-epochs")
        );
        Ok(())
    }

    #[test]
    fn pgd_and_fgsm_are_trained_again_per_transfer_eps_and_replace_their_first_seed_there()
    -> Result<()> {
        let p = ExperimentPlan {
            methods: vec![MethodName::Clean, MethodName::Pgd, MethodName::Fgsm],
            seeded_methods: vec![MethodName::Clean, MethodName::Pgd],
            // 32 is MNIST's own ε (ignored), 64 is given twice (one run).
            adversarial_eps: vec![32.0, 64.0, 64.0],
            lambda_sweep: vec![],
            ..plan()
        };
        p.validate()?;
        let runs = p.runs();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "clean-s3",
                "clean-s4",
                "pgd-s3",
                "pgd-s4",
                "pgd-eps64-s3",
                "fgsm-s3",
                "fgsm-eps64-s3"
            ]
        );
        let extra = runs
            .iter()
            .find(|r| r.name == "fgsm-eps64-s3")
            .expect("run");
        assert_eq!(extra.eps_255, Some(64.0));
        assert_eq!(
            extra.dir,
            PathBuf::from("/nonexistent/out/runs/fgsm-eps64-s3")
        );
        assert_eq!(p.train_args(extra)?.method_options.eps, Some(64.0));
        assert_eq!(p.train_args(&runs[2])?.method_options.eps, None);
        // The white-box table keeps the runs at the data set's ε.
        let finals: Vec<String> = p.finals().into_iter().map(|r| r.name).collect();
        assert_eq!(
            finals,
            ["clean-s3", "clean-s4", "pgd-s3", "pgd-s4", "fgsm-s3"]
        );
        let at =
            |e: f64| -> Vec<String> { p.transfer_models(e).into_iter().map(|r| r.name).collect() };
        assert_eq!(at(32.0), ["clean-s3", "pgd-s3", "fgsm-s3"]);
        assert_eq!(at(64.0), ["clean-s3", "pgd-eps64-s3", "fgsm-eps64-s3"]);
        assert_eq!(at(16.0), ["clean-s3", "pgd-s3", "fgsm-s3"]);
        assert!(p.retrained_at(64.0) && !p.retrained_at(32.0) && !p.retrained_at(16.0));
        // Without pgd or fgsm nothing is trained again.
        let none = ExperimentPlan {
            methods: vec![MethodName::Clean],
            ..p.clone()
        };
        assert!(!none.retrained_at(64.0) && none.runs().len() == 2);
        // One seed: the name drops the seed, as the others do.
        let one = ExperimentPlan {
            seeds: vec![7],
            ..p.clone()
        };
        assert!(one.runs().iter().any(|r| r.name == "pgd-eps64"));
        // Nonsense budgets are refused, naming the flag.
        let bad = ExperimentPlan {
            adversarial_eps: vec![0.0],
            ..p
        };
        let err = bad.validate().expect_err("ε 0 refused").to_string();
        assert!(err.contains("--adversarial-eps"), "{err}");
        Ok(())
    }

    #[test]
    fn runs_are_named_once_sweep_first_with_seeds_only_where_asked() {
        let p = plan();
        let names: Vec<String> = p.runs().into_iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            [
                "sweep/clean-s3",
                "sweep/sgr-sign-l0.5-s3",
                "sweep/sgr-sign-l1-s3",
                "clean-s3",
                "clean-s4",
                "sgr-sign-s3",
                "sgr-sign-s4",
                "sgr-grad-s3",
                "gn-s3",
                "fgsm-s3",
            ]
        );
        let runs = p.runs();
        let lambda = |n: &str| runs.iter().find(|r| r.name == n).map(|r| r.lambda);
        assert_eq!(lambda("sweep/sgr-sign-l1-s3"), Some(LambdaFrom::Fixed(1.0)));
        assert_eq!(lambda("sgr-sign-s4"), Some(LambdaFrom::Sweep));
        assert_eq!(lambda("sgr-grad-s3"), Some(LambdaFrom::SgrSignSweep));
        assert_eq!(lambda("gn-s3"), Some(LambdaFrom::Default));
        assert_eq!(
            runs[1].dir,
            PathBuf::from("/nonexistent/out/sweep/sgr-sign-l0.5-s3")
        );
        assert_eq!(runs[4].dir, PathBuf::from("/nonexistent/out/runs/clean-s4"));
        // One seed: plain method names.
        let one = ExperimentPlan {
            seeds: vec![7],
            lambda_sweep: vec![],
            ..plan()
        };
        assert_eq!(one.runs()[0].name, "clean");
        assert_eq!(one.finals().len(), 5);
        let firsts: Vec<String> = p.first_seed_finals().into_iter().map(|r| r.name).collect();
        assert_eq!(
            firsts,
            ["clean-s3", "sgr-sign-s3", "sgr-grad-s3", "gn-s3", "fgsm-s3"]
        );
        assert_eq!(
            p.first_run_of(MethodName::SgrSign).map(|r| r.name),
            Some("sgr-sign-s3".into())
        );
        assert_eq!(p.first_run_of(MethodName::Lrc), None);
    }

    #[test]
    fn settings_of_sweep_and_final_runs() -> Result<()> {
        let p = plan();
        let runs = p.runs();
        let a = p.train_args(&runs[1])?;
        assert_eq!(
            (a.epochs, a.validation, a.pgd_eval_images, a.seed),
            (Some(5), Some(5000), Some(5000), Some(3))
        );
        assert_eq!(a.method_options.lambda, Some(0.5));
        let f = p.train_args(&runs[3])?;
        assert_eq!(
            (f.epochs, f.validation, f.pgd_eval_images, f.seed),
            (Some(50), Some(0), Some(0), Some(3))
        );
        assert_eq!(f.augment.as_deref(), Some("crop"));
        // A final run whose λ comes from an unfinished sweep says so, naming the run.
        let e = p.train_args(&runs[5]).expect_err("sweep not run");
        let msg = e.to_string();
        assert!(
            msg.contains("sweep/clean-s3") && msg.contains("stage 1"),
            "{msg}"
        );
        Ok(())
    }

    #[test]
    fn unknown_runs_are_refused_with_the_list() {
        let e = plan().run("sgr-sign-s9").expect_err("no such run");
        let msg = e.to_string();
        assert!(
            msg.contains("--run sgr-sign-s9") && msg.contains("clean-s4"),
            "{msg}"
        );
        assert_eq!(
            plan().run("gn-s3").map(|r| r.method).ok(),
            Some(MethodName::Gn)
        );
        assert_eq!(plan().unfinished().len(), plan().runs().len());
    }

    #[test]
    fn a_grid_with_its_own_epochs_has_its_own_clean_reference() -> Result<()> {
        let p = ExperimentPlan {
            lambda_sweep: vec![
                "sgr-sign@20=0.5,1".parse().expect("grid"),
                "gn=1,2".parse().expect("grid"),
            ],
            ..plan()
        };
        p.validate()?;
        let runs = p.runs();
        let sweep: Vec<(&str, Option<usize>)> = runs
            .iter()
            .filter(|r| r.stage == Stage::Sweep)
            .map(|r| (r.name.as_str(), r.epochs))
            .collect();
        assert_eq!(
            sweep,
            [
                ("sweep/clean-e20-s3", Some(20)),
                ("sweep/clean-s3", Some(5)),
                ("sweep/sgr-sign-l0.5-e20-s3", Some(20)),
                ("sweep/sgr-sign-l1-e20-s3", Some(20)),
                ("sweep/gn-l1-s3", Some(5)),
                ("sweep/gn-l2-s3", Some(5)),
            ]
        );
        assert_eq!(p.train_args(&runs[0])?.epochs, Some(20));
        assert_eq!(p.train_args(&runs[2])?.epochs, Some(20));
        assert_eq!(p.train_args(&runs[4])?.epochs, Some(5));
        // Each method is judged against the clean run of its own budget (here: not trained yet, so named).
        let sgr = p
            .select(MethodName::SgrSign)
            .expect_err("no runs")
            .to_string();
        assert!(sgr.contains("sweep/clean-e20-s3"), "{sgr}");
        let gn = p.select(MethodName::Gn).expect_err("no runs").to_string();
        assert!(gn.contains("sweep/clean-s3"), "{gn}");
        // `@5` beside --sweep-epochs 5 is the same budget: one clean reference, which both grids are judged by.
        let same = ExperimentPlan {
            lambda_sweep: vec![
                "sgr-sign@5=0.5,1".parse().expect("grid"),
                "gn=1,2".parse().expect("grid"),
            ],
            ..plan()
        };
        let cleans: Vec<String> = same
            .runs()
            .into_iter()
            .filter(|r| r.stage == Stage::Sweep && r.method == MethodName::Clean)
            .map(|r| r.name)
            .collect();
        assert_eq!(cleans, ["sweep/clean-s3"]);
        for m in [MethodName::SgrSign, MethodName::Gn] {
            let e = same.select(m).expect_err("no runs").to_string();
            assert!(e.contains("sweep/clean-s3"), "{e}");
        }
        let twice = ExperimentPlan {
            lambda_sweep: vec![
                "gn=1,2".parse().expect("grid"),
                "gn@9=3,4".parse().expect("grid"),
            ],
            ..plan()
        };
        assert!(twice.validate().is_err());
        Ok(())
    }

    #[test]
    fn empty_seed_or_method_lists_are_refused() {
        let no_seeds = ExperimentPlan {
            seeds: vec![],
            ..plan()
        };
        assert!(no_seeds.validate().is_err());
        let no_methods = ExperimentPlan {
            methods: vec![],
            ..plan()
        };
        assert!(no_methods.validate().is_err());
        assert!(plan().validate().is_ok());
    }
}
