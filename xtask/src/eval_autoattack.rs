//! `cargo xtask eval-autoattack`: AutoAttack's standard suite on checkpoints, resumable, with a progress bar per
//! attack; writes Markdown/CSV/JSON and prints the table (or one JSON object with `--json`).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sgr_attacks::{AaAttack, AutoAttack, AutoAttackState, Norm};
use sgr_eval::{AutoAttackEval, AutoAttackRow, autoattack_row, autoattack_table, run_suite};

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

/// What a run folder was started with; `--resume` must match it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Settings {
    checkpoints: Vec<String>,
    dataset: String,
    images: usize,
    eval: AutoAttackEval,
}

const SETTINGS: &str = "settings.json";

fn state_path(out: &Path, model: usize) -> PathBuf {
    out.join("state").join(format!("model-{model}.json"))
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
    out_dir(&cmd.out.join("state"))?;
    let cfg = cmd.aa.eval(s.eps, cmd.data.seed, cmd.data.batch_size);
    let settings = Settings {
        checkpoints: cmd
            .checkpoints
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        dataset: s.dataset.as_str().to_string(),
        images: s.x.dim(0)?,
        eval: cfg.clone(),
    };
    let settings_file = cmd.out.join(SETTINGS);
    if settings_file.exists() {
        if !cmd.resume {
            anyhow::bail!(
                "{} already holds an AutoAttack run: pass --resume to continue it, or choose another --out",
                cmd.out.display()
            );
        }
        let text = std::fs::read_to_string(&settings_file)
            .with_context(|| format!("reading {}", settings_file.display()))?;
        let stored: Settings = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", settings_file.display()))?;
        if stored != settings {
            anyhow::bail!(
                "--resume: the run in {} was started with other checkpoints or settings ({}); \
                 rerun with the same flags or choose another --out",
                cmd.out.display(),
                settings_file.display()
            );
        }
    } else {
        if cmd.resume {
            tracing::warn!(
                "--resume: no run in {} yet, starting one",
                cmd.out.display()
            );
        }
        write_json(&settings_file, &settings)?;
    }
    let stop = crate::train::interrupt_flag()?;
    let rows = evaluate(&s, &cfg, Some(&cmd.out), &stop)?;
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

/// Runs the suite on every model, resuming from and saving to `out` when given; `None` if interrupted.
pub fn evaluate(
    s: &Setup,
    cfg: &AutoAttackEval,
    out: Option<&Path>,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<Option<Vec<AutoAttackRow>>> {
    let mut rows = Vec::new();
    for (i, m) in s.named().into_iter().enumerate() {
        let path = out.map(|o| state_path(o, i));
        let state: Option<AutoAttackState> = match &path {
            Some(p) if p.exists() => Some(
                serde_json::from_str(
                    &std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                )
                .with_context(|| format!("parsing {}", p.display()))?,
            ),
            _ => None,
        };
        if let Some(st) = &state {
            tracing::info!(
                model = m.name,
                attack = st.attack,
                chunk = st.chunk,
                "resuming AutoAttack"
            );
        }
        let mut bars = Bars {
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
            classes: s.models[i].model.config().classes,
        };
        let st = run_suite(
            m,
            &s.x,
            &s.y,
            &cfg.suite,
            state,
            Duration::from_secs(30),
            |st| {
                if let Some(p) = &path {
                    let text = serde_json::to_string(st)
                        .map_err(|e| sgr_eval::EvalError::Invalid(e.to_string()))?;
                    sgr_models::fsutil::write_atomic(p, text.as_bytes()).map_err(|e| {
                        sgr_eval::EvalError::Io {
                            path: p.display().to_string(),
                            source: e,
                        }
                    })?;
                }
                Ok(())
            },
            |st, _| {
                bars.update(&cfg.suite, st, m.name);
                if stop.load(Ordering::SeqCst) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        if let Some(bar) = &bars.bar {
            bar.finish_and_clear();
        }
        if !st.done() {
            return Ok(None);
        }
        let row = autoattack_row(m, &s.x, &s.y, cfg, &st)?;
        tracing::info!(
            model = m.name,
            clean = row.clean,
            aa = row.robust,
            seconds = row.total_seconds(),
            "AutoAttack row"
        );
        rows.push(row);
    }
    Ok(Some(rows))
}
