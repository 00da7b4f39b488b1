//! `cargo xtask eval-autoattack`: AutoAttack's standard suite on checkpoints, resumable, with a progress bar per
//! attack; writes Markdown/CSV/JSON and prints the table (or one JSON object with `--json`).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sgr_attacks::{AaAttack, AutoAttack, AutoAttackState, Norm};
use sgr_eval::experiment::{
    AutoAttackFolder, AutoAttackSettings, ResultCache, autoattack_beside_runs, autoattack_rows,
};
use sgr_eval::{AutoAttackEval, AutoAttackRow, autoattack_table};

use crate::common::stderr_is_terminal;
use crate::evalkit::{DataOpts, Setup, out_dir, setup, write, write_json};

#[derive(Debug, Args)]
pub struct AutoAttackCmd {
    /// Run folders (holding model.safetensors) or .safetensors files; one table row each.
    #[arg(long, num_args = 1.., required = true)]
    pub checkpoints: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DataOpts,
    #[command(flatten)]
    pub aa: AaOpts,
    /// Output folder: autoattack.md, autoattack.csv, autoattack.json, and the resumable state.
    #[arg(long, default_value = "eval/autoattack")]
    pub out: PathBuf,
    /// Continue the run in --out where it stopped (same checkpoints and settings).
    #[arg(long)]
    pub resume: bool,
    /// Print one JSON object on stdout instead of the Markdown table.
    #[arg(long)]
    pub json: bool,
}

/// AutoAttack's settings (shared with `eval-whitebox --autoattack` and `bench --autoattack`).
#[derive(Clone, Debug, Args)]
pub struct AaOpts {
    /// Norm of the budget: linf or l2.
    #[arg(long, default_value = "linf", value_parser = parse_norm)]
    pub norm: Norm,
    /// Attacks in order, each on the points still robust (default: the standard version).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "apgd-ce,apgd-t,fab-t,square"
    )]
    pub attacks: Vec<AaAttack>,
    /// Iterations of APGD-CE and of APGD-T per target.
    #[arg(long, default_value_t = 100)]
    pub apgd_steps: usize,
    /// Iterations of FAB-T per target.
    #[arg(long, default_value_t = 100)]
    pub fab_steps: usize,
    /// Queries of Square.
    #[arg(long, default_value_t = 5000)]
    pub square_queries: usize,
    /// Target classes of APGD-T and FAB-T.
    #[arg(long, default_value_t = 9)]
    pub targets: usize,
    /// Steps of the PGD column (step ε/5, no random start).
    #[arg(long, default_value_t = 10)]
    pub pgd_steps: usize,
    /// APGD-CE with an unbounded budget (a masking check) on the first N images (0: all).
    #[arg(long, default_value_t = 200)]
    pub masking_images: usize,
}

fn parse_norm(s: &str) -> Result<Norm, String> {
    match s {
        "linf" => Ok(Norm::LInf),
        "l2" => Ok(Norm::L2),
        other => Err(format!("'{other}': expected linf or l2")),
    }
}

impl AaOpts {
    pub fn eval(&self, eps: f64, seed: u64, batch_size: usize) -> AutoAttackEval {
        let mut attacks = self.attacks.clone();
        if self.norm == Norm::L2 && attacks.contains(&AaAttack::Square) {
            tracing::warn!("Square is implemented for L∞ only: left out of the L2 suite");
            attacks.retain(|&a| a != AaAttack::Square);
        }
        AutoAttackEval {
            suite: AutoAttack {
                norm: self.norm,
                eps,
                attacks,
                seed,
                batch_size,
                apgd_steps: self.apgd_steps,
                fab_steps: self.fab_steps,
                square_queries: self.square_queries,
                targets: self.targets,
            },
            pgd_steps: self.pgd_steps,
            masking_images: self.masking_images,
        }
    }
}

/// One bar per attack: points left, robust accuracy so far, ETA.
struct Bars {
    bar: Option<ProgressBar>,
    attack: usize,
    classes: usize,
}

impl Bars {
    fn update(&mut self, suite: &AutoAttack, st: &AutoAttackState, model: &str) {
        let Some(bar) = &self.bar else { return };
        if st.attack >= suite.attacks.len() {
            bar.finish_and_clear();
            return;
        }
        let attack = suite.attacks[st.attack];
        let stages = suite.units_per_chunk(attack, self.classes);
        let bs = suite.batch_size;
        let len = st.queue.len().max(1) * stages;
        let done_pts = (st.chunk * bs).min(st.queue.len());
        let chunk_len = st.queue.len().saturating_sub(done_pts).min(bs);
        if self.attack != st.attack || bar.length() != Some(len as u64) {
            bar.reset();
            bar.set_length(len as u64);
            bar.set_prefix(format!("{model} {}", attack.name()));
            self.attack = st.attack;
        }
        bar.set_position((done_pts * stages + st.stage * chunk_len) as u64);
        bar.set_message(format!(
            "{} points left, robust {:.1} %",
            st.points_left(bs),
            100.0 * st.robust_accuracy()
        ));
    }
}

pub fn run(cmd: AutoAttackCmd) -> anyhow::Result<()> {
    let s = setup(&cmd.checkpoints, &cmd.data)?;
    out_dir(&cmd.out)?;
    let cfg = cmd.aa.eval(s.eps, cmd.data.seed, cmd.data.batch_size);
    let settings = AutoAttackSettings::new(&cmd.checkpoints, &s, &cfg)?;
    let folder = AutoAttackFolder::open(&cmd.out, &settings, cmd.resume)?;
    let stop = crate::train::interrupt_flag()?;
    let rows = evaluate(&s, &cfg, Some(&folder), &stop)?;
    let Some(rows) = rows else {
        eprintln!(
            "stopped; state saved in {}: continue with the same command and --resume",
            cmd.out.display()
        );
        return Ok(());
    };
    let md = sgr_eval::report::autoattack_markdown(s.dataset.as_str(), s.eps, &cfg, &rows);
    write(&cmd.out.join("autoattack.md"), &md)?;
    write(
        &cmd.out.join("autoattack.csv"),
        &autoattack_table(&rows).to_csv(),
    )?;
    write_json(&cmd.out.join("autoattack.json"), &rows)?;
    if cmd.json {
        println!(
            "{}",
            serde_json::to_string(&sgr_eval::report::autoattack_json(
                s.dataset.as_str(),
                s.eps,
                &cfg,
                &rows
            ))?
        );
    } else {
        println!("{md}");
    }
    eprintln!("wrote {}", cmd.out.display());
    Ok(())
}

/// `sgr_eval::experiment::autoattack_rows` with a progress bar per attack; `None` if interrupted.
pub fn evaluate(
    s: &Setup,
    cfg: &AutoAttackEval,
    folder: Option<&AutoAttackFolder>,
    stop: &AtomicBool,
) -> anyhow::Result<Option<Vec<AutoAttackRow>>> {
    let mut bars = bars(s);
    let rows = autoattack_rows(s, cfg, folder, stop, |i, st| {
        bars[i].update(&cfg.suite, st, &s.models[i].name);
    })?;
    finish(&bars);
    Ok(rows)
}

/// `sgr_eval::experiment::autoattack_beside_runs` (each model's state in its run folder, finished rows in
/// `cache`) with a progress bar per attack; `None` if interrupted.
pub fn evaluate_beside_runs(
    s: &Setup,
    images: usize,
    cfg: &AutoAttackEval,
    cache: &ResultCache,
    stop: &AtomicBool,
) -> anyhow::Result<Option<Vec<AutoAttackRow>>> {
    let mut bars = bars(s);
    let rows = autoattack_beside_runs(s, images, cfg, Some(cache), stop, |i, st| {
        bars[i].update(&cfg.suite, st, &s.models[i].name);
    })?;
    finish(&bars);
    Ok(rows)
}

fn bars(s: &Setup) -> Vec<Bars> {
    s.models
        .iter()
        .map(|m| Bars {
            bar: stderr_is_terminal().then(|| {
                let bar = ProgressBar::new(1);
                bar.set_style(
                    ProgressStyle::with_template("{prefix} [{bar:30}] {msg} eta {eta}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar
            }),
            attack: usize::MAX,
            classes: m.model.config().classes,
        })
        .collect()
}

fn finish(bars: &[Bars]) {
    for b in bars.iter().filter_map(|b| b.bar.as_ref()) {
        b.finish_and_clear();
    }
}
