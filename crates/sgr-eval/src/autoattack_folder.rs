//! A resumable AutoAttack evaluation on disk (feature `experiment`): `settings.json` pins the checkpoints, data
//! and suite a folder was started with, `state/model-K.json` holds each model's suite state; rows for every model.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sgr_attacks::AutoAttackState;

use crate::autoattack::{AutoAttackEval, AutoAttackRow, autoattack_row, run_suite};
use crate::checkpoints::Setup;
use crate::error::{EvalError, Result};

/// What a folder was started with; resuming requires the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoAttackSettings {
    pub checkpoints: Vec<String>,
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
            dataset: s.dataset.as_str().to_string(),
            images: s.x.dim(0)?,
            eval: eval.clone(),
        })
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
            if &stored != settings {
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
        let state = match folder {
            Some(f) => f.load_state(i)?,
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
            &s.x,
            &s.y,
            &cfg.suite,
            state,
            Duration::from_secs(30),
            |st| folder.map_or(Ok(()), |f| f.save_state(i, st)),
            |st, _| {
                progress(i, st);
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
