//! Experiments on our own checkpoints (feature `experiment`): opening run folders and their test set
//! ([`Setup`]), and the report of a whole experiment (`cargo xtask reproduce`): budget, λ sweep, white-box table
//! with the spread over seeds, the paper's tables beside ours, transfer, correlated noise, figures.

use std::fmt::Write as _;

use sgr_train::{ExperimentPlan, MethodName, PlannedRun, Selection, Stage};

pub use crate::autoattack_folder::{
    AutoAttackFolder, AutoAttackSettings, RUN_AUTOATTACK_DIR, SETTINGS_FILE,
    autoattack_beside_runs, autoattack_rows,
};
pub use crate::cache::{ResultCache, file_digest};
pub use crate::checkpoints::{
    Loaded, RUN_WHITEBOX_CACHE, Setup, TestData, load_checkpoints, load_set, resolve_dataset,
};
use crate::error::{EvalError, Result};
use crate::figures::CovAnalysis;
use crate::lrc::{LrcResults, lrc_markdown};
use crate::plot::{LinePanel, Series, line_chart};
use crate::report::{
    covariance_markdown, paper_transfer_markdown, paper_whitebox_markdown, seed_spread_markdown,
    transfer_markdown, whitebox_markdown,
};
use crate::table::Table;
use crate::transfer::TransferMatrix;
use crate::whitebox::WhiteboxRow;

/// The figures of the reproduction's report live in this folder under its output folder.
pub const EVAL_DIR: &str = "eval";

/// What an experiment measured; [`ExperimentReport::markdown`] turns it into `report.md`.
#[derive(Debug)]
pub struct ExperimentReport<'a> {
    pub plan: &'a ExperimentPlan,
    /// Planned final runs left out because they have not finished (an interim report); empty for the report.
    pub left_out: &'a [String],
    /// The command line that made it (shell-quoted).
    pub command: String,
    pub eps_255: f64,
    /// The λ sweeps' outcomes (empty without a sweep).
    pub selections: &'a [Selection],
    /// The sweeps compared image by image with their clean references ([`paired_sweeps`]); a method without
    /// them gets the unpaired error of the difference.
    pub sweep_pairs: &'a [SweepPairs],
    pub whitebox: &'a [WhiteboxRow],
    /// AutoAttack's rows (their AA column is also in the white-box rows) and its settings, where run.
    pub autoattack: Option<(&'a crate::AutoAttackEval, &'a [crate::AutoAttackRow])>,
    /// One PGD transfer matrix per budget (the first is the report's main ε).
    pub transfers: &'a [TransferMatrix],
    pub lrc: Option<&'a LrcResults>,
    /// The model whose perturbations the covariance figures show, and the analysis.
    pub covariance: (&'a str, &'a CovAnalysis),
    /// Fig. 7: per ε, how many of the 10 sample predictions PGD changed.
    pub flipped: &'a [(f64, usize)],
    /// Seconds per evaluation stage of this invocation, and in total.
    pub stages: &'a [StageTime],
    pub total_seconds: f64,
}

/// The time of one stage of `reproduce`: spent in this invocation, and recorded with the stored results it
/// reused instead of computing them ([`ResultCache::reused_seconds`]; 0 for results stored without a time).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageTime {
    pub what: String,
    pub seconds: f64,
    pub reused_seconds: f64,
}

impl ExperimentReport<'_> {
    /// The report; reads every planned run's `run.json` (for the budget) and draws the λ sweep's plot into
    /// `OUT/eval/lambda_sweep.png`.
    pub fn markdown(&self) -> Result<String> {
        let plan = self.plan;
        let ds = plan.dataset.as_str();
        let runs = plan.runs();
        let mut md = format!("# Reproduction on {ds}\n\n");
        let _ = writeln!(
            md,
            "Made by `{}` (sgr {}), seed{} {}. Evaluation on the first {} test images; ε = {:.0}/255.\n",
            self.command,
            env!("CARGO_PKG_VERSION"),
            if plan.seeds.len() > 1 { "s" } else { "" },
            plan.seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            self.whitebox.first().map_or(0, |r| r.images),
            self.eps_255
        );
        if !self.left_out.is_empty() {
            let (plural, are, they_have) = match self.left_out.len() {
                1 => ("", "is", "it has"),
                _ => ("s", "are", "they have"),
            };
            let _ = writeln!(
                md,
                "**Interim report.** {} planned run{plural} had not finished and {are} left out of every table \
                 below: {}. Run the same command without `--partial` once {they_have} finished; the evaluations \
                 made here are kept and reused.\n",
                self.left_out.len(),
                code_list(self.left_out)
            );
        }
        md += &self.budget_markdown(&runs)?;
        md += &self.sweep_markdown()?;
        md += &whitebox_markdown(ds, self.eps_255, self.whitebox);
        md += &seed_spread_markdown(&seed_groups(&runs, self.whitebox));
        let method_of = |row: &str| {
            runs.iter()
                .find(|p| p.stage == Stage::Final && p.name == row)
                .map_or(row.to_string(), |p| p.method.to_string())
        };
        md += &paper_whitebox_markdown(ds, self.whitebox, &method_of);
        md += &self.budget_note(self.whitebox.iter().map(|r| r.model.as_str()));
        md += "\n";
        if let Some((cfg, rows)) = self.autoattack {
            md += &crate::report::autoattack_markdown(ds, self.eps_255 / 255.0, cfg, rows);
            md += &self.budget_note(rows.iter().map(|r| r.model.as_str()));
            md += "\n";
        }
        for m in self.transfers {
            md += &transfer_markdown(ds, m.eps * 255.0, m);
            let e = m.eps_255();
            if (m.eps * 255.0 - self.eps_255).abs() > 1e-6 {
                let _ = writeln!(
                    md,
                    "\n{}",
                    if plan.retrained_at(e) {
                        format!(
                            "The PGD and FGSM models here were trained at ε = {e:.0}/255 (runs `…-eps{e}`), as the \
                             paper's were; every other model at ε = {:.0}/255.",
                            self.eps_255
                        )
                    } else {
                        format!(
                            "Every model here was trained at ε = {:.0}/255 (the adversarially trained ones included); \
                             the paper trained its PGD and FGSM models anew for ε = {:.0}/255.",
                            self.eps_255,
                            m.eps * 255.0
                        )
                    }
                );
            }
            md += &paper_transfer_markdown(ds, m, &method_of);
            md += &self.budget_note(m.models.iter().map(String::as_str));
            md += "\n";
        }
        let prefix = format!("{EVAL_DIR}/");
        if let Some(r) = self.lrc {
            md += &lrc_markdown(ds, r, &prefix);
            md += "\nThe paper (Fig. 3, CIFAR-10) reports SGR ahead of GN by over 25 points at ζ ≈ 16 and, with the \
                   CIFAR-10 covariance at ε = 0.3: SGR 65.8 %, GN 48.7 %, LRC noise 57.9 %, clean 46.5 %.\n\n";
        }
        let (cov_model, cov) = self.covariance;
        md += &covariance_markdown(cov_model, cov, &prefix);
        let _ = write!(
            md,
            "\n## Fig. 6: softmax along x + t·δ\n\n![]({prefix}fig6_trajectories.png)\n\n\
             ## Fig. 7: PGD samples of {cov_model}\n\n{}\n\n![]({prefix}fig7_samples.png)\n",
            self.flipped
                .iter()
                .map(|(e, k)| format!("ε = {:.0}/255: {k} of 10 predictions changed", e * 255.0))
                .collect::<Vec<_>>()
                .join("; ")
        );
        Ok(md)
    }

    /// A line naming the models in `shown` whose runs trained for another number of epochs than the plan's
    /// (`--method-epochs`), or nothing.
    fn budget_note<'s>(&self, shown: impl Iterator<Item = &'s str>) -> String {
        let shown: Vec<&str> = shown.collect();
        let odd: Vec<String> = self
            .plan
            .shortened_finals()
            .into_iter()
            .filter(|(p, _)| shown.contains(&p.name.as_str()))
            .map(|(p, e)| format!("{} ({e})", p.name))
            .collect();
        if odd.is_empty() {
            return String::new();
        }
        format!(
            "\nTrained for another number of epochs than the other models{}: {}.\n",
            self.plan
                .epochs
                .map_or(String::new(), |e| format!(" ({e})")),
            odd.join(", ")
        )
    }

    /// Per run: settings, images, epochs, training time, last accuracy; then the evaluation stages' times.
    fn budget_markdown(&self, runs: &[PlannedRun]) -> Result<String> {
        let mut md = String::from(
            "## Budget\n\n| run | method settings | train images | epochs | training time | test accuracy |\n\
             |:--|:--|--:|--:|--:|--:|\n",
        );
        for p in runs {
            let r =
                sgr_train::read_record(&p.dir).map_err(|e| EvalError::Invalid(e.to_string()))?;
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
                "| [{}]({}) | {} | {} | {} | {:.1} min | {} |",
                p.name,
                run_link(self.plan, p),
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
        md += "\n| evaluation stage | this invocation | results reused from earlier invocations (their computing time) |\n\
                |:--|--:|--:|\n";
        let mut reused = 0.0;
        for st in self.stages {
            reused += st.reused_seconds;
            let _ = writeln!(
                md,
                "| {} | {:.1} min | {} |",
                st.what,
                st.seconds / 60.0,
                if st.reused_seconds > 0.0 {
                    format!("{:.1} min", st.reused_seconds / 60.0)
                } else {
                    "–".into()
                }
            );
        }
        let _ = writeln!(
            md,
            "| total | {:.1} min | {:.1} min |\n",
            self.total_seconds / 60.0,
            reused / 60.0
        );
        Ok(md)
    }

    /// The λ sweep: one table per method and a plot of PGD against validation accuracy.
    fn sweep_markdown(&self) -> Result<String> {
        let plan = self.plan;
        if self.selections.is_empty() {
            return Ok(String::new());
        }
        let scaled = plan
            .runs()
            .iter()
            .any(|p| p.lambda == sgr_train::LambdaFrom::SgrSignSweep);
        let mut md = format!(
            "## λ sweep (validation split)\n\nEach λ trained (for the epochs named per method below; default {}) on the \
             training set without its last {} images, measured on those: accuracy and PGD-10 at ε = {:.0}/255. Rule: the highest PGD accuracy among \
             the λ within {} points of the clean model's validation accuracy (ties: higher accuracy, then smaller λ); \
             the final runs use the chosen λ{}.\n\n",
            plan.sweep_epochs,
            plan.validation,
            sgr_train::default_eps_255(plan.dataset),
            plan.sweep_tolerance,
            if scaled {
                "; sgr-grad, fgsm-sgr and pgd-sgr without a grid of their own take sgr-sign's, times their paper ratio"
            } else {
                ""
            }
        );
        let mut series = Vec::new();
        for sel in self.selections {
            let epochs = plan
                .grid(sel.method)
                .map_or(plan.sweep_epochs, |g| plan.grid_epochs(g));
            let _ = writeln!(
                md,
                "**{}** ({epochs} epochs; clean model at the same budget: {:.2} %; paper's λ {}): chosen λ = **{}**\n",
                sel.method,
                100.0 * sel.clean_accuracy,
                sgr_train::default_lambda(sel.method, plan.dataset),
                sel.chosen
            );
            let within = format!("within {} points", sel.tolerance_points);
            let sweep_pairs = self.sweep_pairs.iter().find(|p| p.method == sel.method);
            let pairs = sweep_pairs
                .map(|p| &p.pairs)
                .filter(|pairs| !pairs.is_empty());
            let mut header = vec!["λ", "validation accuracy"];
            header.extend(if pairs.is_some() {
                ["vs clean (± paired SE)", "right only here / only clean"].as_slice()
            } else {
                ["vs clean (± 1 SE)"].as_slice()
            });
            header.extend(["PGD-10", "images", within.as_str()]);
            let mut t = Table::new(header);
            for c in &sel.candidates {
                let mark = if c.lambda == sel.chosen { " ◀" } else { "" };
                let mut row = vec![
                    format!("{}{mark}", c.lambda),
                    format!("{:.2} %", 100.0 * c.validation_accuracy),
                ];
                match pairs.and_then(|v| v.iter().find(|(l, _)| *l == c.lambda)) {
                    Some((_, p)) => {
                        row.push(format!("{:+.2} ± {:.2}", p.points, p.se_points));
                        row.push(format!("{} / {}", p.only_first, p.only_second));
                    }
                    None if pairs.is_some() => row.extend(["–".to_string(), "–".to_string()]),
                    None => {
                        let (d, se) = accuracy_difference(
                            c.validation_accuracy,
                            sel.clean_accuracy,
                            plan.validation,
                        );
                        row.push(format!("{d:+.2} ± {se:.2}"));
                    }
                }
                row.extend([
                    format!("{:.1} %", 100.0 * c.pgd_accuracy),
                    c.pgd_images.to_string(),
                    if c.eligible { "yes" } else { "no" }.into(),
                ]);
                t.push(row);
            }
            md += &t.to_markdown();
            // The paired columns come from the checkpoints run again; they should agree with what the runs recorded.
            let n = plan.validation.max(1) as f64;
            let differs = |a: f64, b: f64| (a - b).abs() > 0.5 / n;
            let mismatched: Vec<String> = pairs
                .into_iter()
                .flatten()
                .filter_map(|(l, p)| {
                    let c = sel.candidates.iter().find(|c| c.lambda == *l)?;
                    (differs(p.accuracy.0, c.validation_accuracy)
                        || differs(p.accuracy.1, sel.clean_accuracy))
                    .then(|| {
                        format!(
                            "λ {l}: {:.2} % (clean {:.2} %) recomputed",
                            100.0 * p.accuracy.0,
                            100.0 * p.accuracy.1
                        )
                    })
                })
                .collect();
            if !mismatched.is_empty() {
                let _ = writeln!(
                    md,
                    "\n**The checkpoints run again disagree with their run.json** ({}): a checkpoint was replaced after \
                     its run finished, or the validation images differ.",
                    mismatched.join("; ")
                );
            }
            if pairs.is_some() {
                let _ = writeln!(
                    md,
                    "\nvs clean: the difference to the clean model's validation accuracy in points, ± its paired standard \
                     error: both checkpoints were run again on the same {} validation images, and only the images on which \
                     they disagree (counted in the next column) carry the difference. A difference within two SE is noise.",
                    plan.validation
                );
            } else {
                let _ = writeln!(
                    md,
                    "\nvs clean: the difference to the clean model's validation accuracy in points, ± one standard error of \
                     the difference of two accuracies on {} images each, as if measured on independent images (binomial; the \
                     models share the validation images, so the paired error is usually smaller); a difference within one SE is noise.",
                    plan.validation
                );
            }
            if let Some(p) = sweep_pairs.filter(|p| !p.missing.is_empty()) {
                let _ = writeln!(
                    md,
                    "\nNo paired error {}: the checkpoint{} of {} {} not kept (run.json only).",
                    if pairs.is_some() {
                        "for the λ marked –"
                    } else {
                        "for this sweep"
                    },
                    if p.missing.len() == 1 { "" } else { "s" },
                    code_list(&p.missing),
                    if p.missing.len() == 1 { "was" } else { "were" }
                );
            }
            md += "\n";
            series.push(Series {
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
        let dir = plan.out.join(EVAL_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| EvalError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        line_chart(
            &dir.join("lambda_sweep.png"),
            &LinePanel {
                title: "λ sweep: PGD-10 against validation accuracy (points in λ order)".into(),
                x_label: "validation accuracy (%)".into(),
                y_label: "PGD-10 accuracy (%)".into(),
                series,
                y_range: (0.0, (top + 5.0).min(100.0)),
                legend: true,
            },
        )?;
        let _ = write!(md, "![]({EVAL_DIR}/lambda_sweep.png)\n\n");
        Ok(md)
    }
}

/// Two models compared image by image on the same images: the difference of their accuracies and its paired
/// standard error, which counts only the images on which they disagree.
#[derive(Clone, Debug, PartialEq)]
pub struct PairedDifference {
    /// Images.
    pub n: usize,
    /// Accuracy of the first model and of the second.
    pub accuracy: (f64, f64),
    /// Images only the first model gets right, and only the second.
    pub only_first: usize,
    pub only_second: usize,
    /// First minus second, in percentage points.
    pub points: f64,
    /// Its standard error in points: `100·√((b + c)/n − d²)/√n` for `b`, `c` the two discordant counts and `d`
    /// the difference as a fraction (the standard deviation of the per-image differences in {−1, 0, 1}, over √n).
    pub se_points: f64,
}

/// [`PairedDifference`] of two models' per-image correctness on the same images.
pub fn paired_difference(first: &[bool], second: &[bool]) -> Result<PairedDifference> {
    if first.len() != second.len() || first.is_empty() {
        return Err(EvalError::Invalid(format!(
            "a paired comparison needs two verdicts per image on the same images, got {} and {}",
            first.len(),
            second.len()
        )));
    }
    let n = first.len();
    let count = |v: &[bool]| v.iter().filter(|&&c| c).count();
    let only_first = first.iter().zip(second).filter(|&(&a, &b)| a && !b).count();
    let only_second = first.iter().zip(second).filter(|&(&a, &b)| !a && b).count();
    let nf = n as f64;
    let d = (only_first as f64 - only_second as f64) / nf;
    let var = ((only_first + only_second) as f64 / nf - d * d).max(0.0) / nf;
    Ok(PairedDifference {
        n,
        accuracy: (count(first) as f64 / nf, count(second) as f64 / nf),
        only_first,
        only_second,
        points: 100.0 * d,
        se_points: 100.0 * var.sqrt(),
    })
}

/// A method's λ sweep compared image by image with its clean reference on the validation split.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPairs {
    pub method: MethodName,
    /// Per swept λ: that model (first) against the clean reference (second).
    pub pairs: Vec<(f64, PairedDifference)>,
    /// Sweep runs kept without their checkpoint (run.json only), so without a paired figure: a λ run, or the
    /// clean reference (then no λ has one).
    pub missing: Vec<String>,
}

/// Every sweep of `plan` compared with its clean reference image by image: each sweep checkpoint (finished) is
/// run on the validation split again (the last `plan.validation` training images, what the sweep runs held
/// out), so the report can give the paired error of "λ's accuracy minus clean's", smaller than the unpaired one
/// where the models get the same images right. A run folder kept without its checkpoint is named in
/// [`SweepPairs::missing`] instead (its λ, or the whole sweep where the clean reference's is missing, keeps the
/// unpaired error).
pub fn paired_sweeps(plan: &ExperimentPlan, batch_size: usize) -> Result<Vec<SweepPairs>> {
    if plan.lambda_sweep.is_empty() {
        return Ok(Vec::new());
    }
    let _span = tracing::info_span!("paired_sweeps", validation = plan.validation).entered();
    let device = sgr_models::make_device(plan.device).map_err(|e| EvalError::Load {
        what: format!("device {:?}", plan.device),
        reason: e.to_string(),
    })?;
    let mut train = sgr_data::load_split(
        plan.dataset,
        plan.data_dir.as_deref(),
        sgr_data::Split::Train,
    )
    .map_err(|e| EvalError::Load {
        what: format!("the {} training images", plan.dataset),
        reason: e.to_string(),
    })?;
    if plan.validation == 0 || plan.validation >= train.len() {
        return Err(EvalError::Invalid(format!(
            "--validation {}: the sweep needs a validation split smaller than the {} training images",
            plan.validation,
            train.len()
        )));
    }
    let val = train.split_off_last(plan.validation, "validation");
    let (x, y) = val.range(0, val.len(), candle_core::DType::F32, &device)?;
    let correct = |dir: &std::path::Path| -> Result<Vec<bool>> {
        let l = load_checkpoints(&[dir.to_path_buf()], &device)?;
        crate::correct_per_image(&l[0].model, &x, &y, batch_size)
    };
    plan.lambda_sweep
        .iter()
        .map(|g| {
            let (clean, swept) = plan
                .sweep_runs(g.method)
                .map_err(|e| EvalError::Invalid(e.to_string()))?;
            let kept = |p: &PlannedRun| sgr_train::model_path(&p.dir).is_file();
            let mut missing: Vec<String> = Vec::new();
            let mut pairs = Vec::new();
            if kept(&clean) {
                let reference = correct(&clean.dir)?;
                for (l, p) in &swept {
                    if kept(p) {
                        pairs.push((*l, paired_difference(&correct(&p.dir)?, &reference)?));
                    } else {
                        missing.push(p.name.clone());
                    }
                }
            } else {
                missing.push(clean.name.clone());
                missing.extend(
                    swept
                        .iter()
                        .filter(|(_, p)| !kept(p))
                        .map(|(_, p)| p.name.clone()),
                );
            }
            Ok(SweepPairs {
                method: g.method,
                pairs,
                missing,
            })
        })
        .collect()
}

/// Run names as inline code, comma-separated: `` `a`, `b` ``.
fn code_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `a − b` in percentage points and the standard error of that difference for two independent accuracies
/// measured on `n` images each: `100·√(a(1−a)/n + b(1−b)/n)`.
pub fn accuracy_difference(a: f64, b: f64, n: usize) -> (f64, f64) {
    let n = n.max(1) as f64;
    (
        100.0 * (a - b),
        100.0 * (a * (1.0 - a) / n + b * (1.0 - b) / n).sqrt(),
    )
}

/// The white-box rows of the final runs grouped by method, in plan order (one row per seed).
pub fn seed_groups<'a>(
    runs: &[PlannedRun],
    rows: &'a [WhiteboxRow],
) -> Vec<(String, Vec<&'a WhiteboxRow>)> {
    let mut methods: Vec<MethodName> = Vec::new();
    for p in runs.iter().filter(|p| p.stage == Stage::Final) {
        if !methods.contains(&p.method) {
            methods.push(p.method);
        }
    }
    methods
        .into_iter()
        .map(|m| {
            let group = runs
                .iter()
                .filter(|p| p.stage == Stage::Final && p.method == m)
                .filter_map(|p| rows.iter().find(|r| r.model == p.name))
                .collect();
            (m.to_string(), group)
        })
        .collect()
}

/// Where the report's budget table points for `p` (relative to the plan's output folder).
pub fn run_link(plan: &ExperimentPlan, p: &PlannedRun) -> String {
    p.dir
        .strip_prefix(&plan.out)
        .unwrap_or(&p.dir)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paired error against its definition, computed the long way: the population standard deviation of
    /// the per-image differences (1: only the first model right, −1: only the second, 0: both or neither), over √n.
    #[test]
    fn paired_difference_is_the_spread_of_per_image_differences() -> Result<()> {
        use rand::Rng;
        let mut rng = sgr_data::seeded_rng(3, &[]);
        for n in [1usize, 5, 37, 5000] {
            let first: Vec<bool> = (0..n).map(|_| rng.random_bool(0.9)).collect();
            // Correlated with the first, as two models on the same images are.
            let second: Vec<bool> = first
                .iter()
                .map(|&f| if rng.random_bool(0.95) { f } else { !f })
                .collect();
            let p = paired_difference(&first, &second)?;
            let diffs: Vec<f64> = first
                .iter()
                .zip(&second)
                .map(|(&a, &b)| f64::from(u8::from(a)) - f64::from(u8::from(b)))
                .collect();
            let mean = diffs.iter().sum::<f64>() / n as f64;
            let var = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n as f64;
            assert!((p.points - 100.0 * mean).abs() < 1e-9, "{n}: {p:?}");
            assert!(
                (p.se_points - 100.0 * (var / n as f64).sqrt()).abs() < 1e-9,
                "{n}: {p:?}"
            );
            let acc = |v: &[bool]| v.iter().filter(|&&c| c).count() as f64 / n as f64;
            assert_eq!(p.accuracy, (acc(&first), acc(&second)));
            assert!((p.points - 100.0 * (p.accuracy.0 - p.accuracy.1)).abs() < 1e-9);
        }
        // Five images: right only by the first on two, only by the second on one.
        let p = paired_difference(
            &[true, true, false, false, true],
            &[true, false, true, false, false],
        )?;
        assert_eq!((p.only_first, p.only_second), (2, 1));
        assert!((p.se_points - 100.0 * ((0.6f64 - 0.04) / 5.0).sqrt()).abs() < 1e-9);
        // Agreement everywhere: no difference, no error; unequal lengths are refused.
        let same = paired_difference(&[true, false], &[true, false])?;
        assert_eq!((same.points, same.se_points), (0.0, 0.0));
        assert!(paired_difference(&[true], &[true, false]).is_err());
        assert!(paired_difference(&[], &[]).is_err());
        Ok(())
    }

    #[test]
    fn accuracy_difference_is_in_points_with_the_binomial_standard_error() {
        // 99.20 % vs 99.46 % on 5,000 images each: −0.26 points; SE √(0.992·0.008/5000 + 0.9946·0.0054/5000).
        let (d, se) = accuracy_difference(0.992, 0.9946, 5000);
        assert!((d + 0.26).abs() < 1e-9, "{d}");
        let want = 100.0 * ((0.992 * 0.008 + 0.9946 * 0.0054) / 5000.0_f64).sqrt();
        assert!(
            (se - want).abs() < 1e-12 && (se - 0.1631).abs() < 1e-4,
            "{se}"
        );
        // Equal accuracies of 50 % on 100 images: 0 ± 100·√(0.5/100) ≈ 7.07 points.
        let (d, se) = accuracy_difference(0.5, 0.5, 100);
        assert_eq!(d, 0.0);
        assert!((se - 7.0710678).abs() < 1e-6, "{se}");
    }
}
