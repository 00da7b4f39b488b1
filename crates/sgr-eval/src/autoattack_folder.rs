//! A resumable AutoAttack evaluation on disk (feature `experiment`): `settings.json` pins the checkpoints, data
//! and suite a folder was started with, `state/model-K.json` holds each model's suite state; rows for every model.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sgr_attacks::AutoAttackState;

use crate::autoattack::{AutoAttackEval, AutoAttackRow, autoattack_row, run_suite};
use crate::cache::ResultCache;
use crate::checkpoints::{Loaded, Setup};
use crate::error::{EvalError, Result};

/// What a folder was started with; resuming requires the same (see [`AutoAttackSettings::same_run`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoAttackSettings {
    pub checkpoints: Vec<String>,
    /// FNV digests of the checkpoints' parameter files (folders written before digests were recorded have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<String>,
    pub dataset: String,
    pub images: usize,
    pub eval: AutoAttackEval,
}

impl AutoAttackSettings {
    /// The settings of evaluating `s`'s models (loaded from `checkpoints`) with `eval`.
    pub fn new(checkpoints: &[PathBuf], s: &Setup, eval: &AutoAttackEval) -> Result<Self> {
        Ok(Self {
            checkpoints: checkpoints
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            digests: s.models.iter().map(Loaded::digest).collect::<Result<_>>()?,
            dataset: s.dataset.as_str().to_string(),
            images: s.x.dim(0)?,
            eval: eval.clone(),
        })
    }

    /// Whether a run started with `self` may be continued with `other`: the same data, images and suite, and
    /// the same checkpoints — by digest where both recorded them (a folder reached by another path or a link
    /// is the same run), else by path (compared after resolving links).
    pub fn same_run(&self, other: &Self) -> bool {
        let canonical = |p: &str| std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
        let same_models = if self.digests.len() == self.checkpoints.len()
            && other.digests.len() == other.checkpoints.len()
        {
            self.digests == other.digests
        } else {
            self.checkpoints.len() == other.checkpoints.len()
                && self
                    .checkpoints
                    .iter()
                    .zip(&other.checkpoints)
                    .all(|(a, b)| canonical(a) == canonical(b))
        };
        same_models
            && self.dataset == other.dataset
            && self.images == other.images
            && self.eval == other.eval
    }
}

/// The folder's settings file.
pub const SETTINGS_FILE: &str = "settings.json";

/// A run folder of `eval-autoattack`.
#[derive(Debug)]
pub struct AutoAttackFolder {
    dir: PathBuf,
}

fn io(path: &Path, source: std::io::Error) -> EvalError {
    EvalError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string(value).map_err(|e| EvalError::Invalid(e.to_string()))?;
    sgr_models::fsutil::write_atomic(path, text.as_bytes()).map_err(|e| io(path, e))
}

impl AutoAttackFolder {
    /// Opens `dir` for `settings`: a new folder records them; a folder that holds a run is continued only with
    /// `resume` and the same settings (else an error naming the folder and what to do). `resume` on an empty
    /// folder starts a run (with a warning).
    pub fn open(dir: &Path, settings: &AutoAttackSettings, resume: bool) -> Result<Self> {
        let state = dir.join("state");
        std::fs::create_dir_all(&state).map_err(|e| io(&state, e))?;
        let file = dir.join(SETTINGS_FILE);
        if file.exists() {
            if !resume {
                return Err(EvalError::Invalid(format!(
                    "{} already holds an AutoAttack run: pass --resume to continue it, or choose another --out",
                    dir.display()
                )));
            }
            let text = std::fs::read_to_string(&file).map_err(|e| io(&file, e))?;
            let stored: AutoAttackSettings = serde_json::from_str(&text)
                .map_err(|e| EvalError::Invalid(format!("parsing {}: {e}", file.display())))?;
            if !stored.same_run(settings) {
                return Err(EvalError::Invalid(format!(
                    "--resume: the run in {} was started with other checkpoints or settings ({}); \
                     rerun with the same flags or choose another --out",
                    dir.display(),
                    file.display()
                )));
            }
        } else {
            if resume {
                tracing::warn!("--resume: no run in {} yet, starting one", dir.display());
            }
            write_json(&file, settings)?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn state_path(&self, model: usize) -> PathBuf {
        self.dir.join("state").join(format!("model-{model}.json"))
    }

    /// The saved suite state of model `model` (its index in the checkpoint list), if any.
    pub fn load_state(&self, model: usize) -> Result<Option<AutoAttackState>> {
        let p = self.state_path(model);
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| io(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EvalError::Invalid(format!("parsing {}: {e}", p.display())))
    }

    /// Saves model `model`'s suite state atomically.
    pub fn save_state(&self, model: usize, st: &AutoAttackState) -> Result<()> {
        write_json(&self.state_path(model), st)
    }
}

/// Runs the suite on every model of `s`, resuming from and saving to `folder` when given (every 30 s and at
/// the end); `progress(model index, state)` after each unit of work. `Ok(None)` if `stop` was set: the state
/// is saved and the same call continues it.
pub fn autoattack_rows(
    s: &Setup,
    cfg: &AutoAttackEval,
    folder: Option<&AutoAttackFolder>,
    stop: &AtomicBool,
    mut progress: impl FnMut(usize, &AutoAttackState),
) -> Result<Option<Vec<AutoAttackRow>>> {
    let mut rows = Vec::new();
    for (i, m) in s.named().into_iter().enumerate() {
        let Some(row) = autoattack_model(
            m,
            &s.x,
            &s.y,
            cfg,
            folder.map(|f| (f, i)),
            stop,
            &mut |st| progress(i, st),
        )?
        else {
            return Ok(None);
        };
        rows.push(row);
    }
    Ok(Some(rows))
}

/// The folder in which [`autoattack_beside_runs`] keeps a run folder's AutoAttack state.
pub const RUN_AUTOATTACK_DIR: &str = "autoattack";

/// AutoAttack on the first `images` test images (0: all) of every model of `s`, each run resumable in its
/// own folder beside the model: `<run folder>/autoattack`, the layout of `eval-autoattack --checkpoints RUN
/// --out RUN/autoattack`, so a run evaluated that way (e.g. a zoo model) is reused, not repeated; a bare
/// `.safetensors` checkpoint runs without saved state. With a `cache`, each finished row is also kept there
/// (keyed by the settings and the checkpoint's digest) and reused without recomputing the PGD column and the
/// masking checks. `progress(model index, state)`; `Ok(None)` if `stop` was set (the state is saved).
pub fn autoattack_beside_runs(
    s: &Setup,
    images: usize,
    cfg: &AutoAttackEval,
    cache: Option<&ResultCache>,
    stop: &AtomicBool,
    mut progress: impl FnMut(usize, &AutoAttackState),
) -> Result<Option<Vec<AutoAttackRow>>> {
    let n = s.x.dim(0)?;
    let n = if images == 0 { n } else { images.min(n) };
    let (x, y) = (s.x.narrow(0, 0, n)?, s.y.narrow(0, 0, n)?);
    let mut rows = Vec::new();
    for (i, (m, l)) in s.named().into_iter().zip(&s.models).enumerate() {
        let settings = AutoAttackSettings {
            checkpoints: vec![l.path.display().to_string()],
            digests: vec![l.digest()?],
            dataset: s.dataset.as_str().to_string(),
            images: n,
            eval: cfg.clone(),
        };
        // The row's key leaves the path out: a moved output folder keeps its rows.
        let key = serde_json::json!({
            "checkpoint": settings.digests,
            "dataset": settings.dataset,
            "images": n,
            "eval": cfg,
        });
        if let Some(row) = cache.and_then(|c| c.get::<_, AutoAttackRow>(m.name, &key)) {
            rows.push(row);
            continue;
        }
        let folder = if l.path.is_dir() {
            Some(AutoAttackFolder::open(
                &l.path.join(RUN_AUTOATTACK_DIR),
                &settings,
                true,
            )?)
        } else {
            None
        };
        let started = std::time::Instant::now();
        let Some(row) = autoattack_model(
            m,
            &x,
            &y,
            cfg,
            folder.as_ref().map(|f| (f, 0)),
            stop,
            &mut |st| progress(i, st),
        )?
        else {
            return Ok(None);
        };
        if let Some(c) = cache {
            // The suite's own time, summed over every resumed part of it; what was spent before this call (a
            // folder finished or begun earlier) counts as reused.
            c.count_reused(row.total_seconds() - started.elapsed().as_secs_f64());
            c.put(m.name, &key, &row, row.total_seconds())?;
        }
        rows.push(row);
    }
    Ok(Some(rows))
}

/// One model's suite, resuming from and saving to `(folder, index)`; `None` if `stop` was set.
fn autoattack_model(
    m: crate::Named<'_>,
    x: &candle_core::Tensor,
    y: &candle_core::Tensor,
    cfg: &AutoAttackEval,
    folder: Option<(&AutoAttackFolder, usize)>,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&AutoAttackState),
) -> Result<Option<AutoAttackRow>> {
    let state = match folder {
        Some((f, i)) => f.load_state(i)?,
        None => None,
    };
    if let Some(st) = &state {
        tracing::info!(
            model = m.name,
            attack = st.attack,
            chunk = st.chunk,
            "resuming AutoAttack"
        );
    }
    let st = run_suite(
        m,
        x,
        y,
        &cfg.suite,
        state,
        Duration::from_secs(30),
        |st| folder.map_or(Ok(()), |(f, i)| f.save_state(i, st)),
        |st, _| {
            progress(st);
            if stop.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )?;
    if !st.done() {
        return Ok(None);
    }
    let row = autoattack_row(m, x, y, cfg, &st)?;
    tracing::info!(
        model = m.name,
        clean = row.clean,
        aa = row.robust,
        seconds = row.total_seconds(),
        "AutoAttack row"
    );
    Ok(Some(row))
}
