//! The run folder: `model.safetensors`, `optimizer.safetensors` (Adam and method state) and `run.json`.
//!
//! A checkpoint of step `n` is written as `model.safetensors.next-n` and `optimizer.safetensors.next-n`
//! (each to a temporary name, synced, renamed), then `run.json` (the commit point, naming step `n`), then the
//! two files are renamed into place. Opening a run ([`recover`]) finishes that last step when `run.json`
//! names the files' step and deletes them otherwise, so a process killed at any moment (SIGKILL included)
//! leaves a folder that resumes from the last committed checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sgr_data::{Augment, DatasetName};
use sgr_models::DeviceKind;
use sgr_models::fsutil::write_atomic;

use crate::adam::AdamConfig;
use crate::error::{Result, TrainError};
use crate::method::MethodOptions;
use crate::settings::{FloatType, LrSchedule, MethodName};

pub const MODEL_FILE: &str = "model.safetensors";
pub const STATE_FILE: &str = "optimizer.safetensors";
pub const RUN_FILE: &str = "run.json";

/// Metrics of one finished epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    /// Mean training loss (the method's full objective) over the epoch's batches.
    pub loss: f64,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    /// Means of the method's own metrics (e.g. the regulariser's value).
    #[serde(default)]
    pub metrics: HashMap<String, f64>,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// Running sums of the epoch in progress, so that a run resumed mid-epoch reports the same epoch metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    pub batches: usize,
    pub images: usize,
    pub loss_sum: f64,
    pub correct: usize,
    pub metric_sums: HashMap<String, f64>,
    pub seconds: f64,
}

impl PartialEpoch {
    /// Adds one step of `images` images: its mean loss, correct predictions, mean metrics and duration.
    pub(crate) fn add(
        &mut self,
        images: usize,
        loss: f64,
        correct: usize,
        metrics: &[(&str, f64)],
        seconds: f64,
    ) {
        self.batches += 1;
        self.images += images;
        self.loss_sum += loss * images as f64;
        self.correct += correct;
        for (name, value) in metrics {
            *self.metric_sums.entry((*name).to_string()).or_default() += value * images as f64;
        }
        self.seconds += seconds;
    }

    /// The finished epoch's record: per-image means of the sums, and the accuracy measured after it.
    pub(crate) fn finish(self, epoch: usize, test_accuracy: f64) -> EpochRecord {
        let images = self.images.max(1) as f64;
        EpochRecord {
            epoch,
            loss: self.loss_sum / images,
            train_accuracy: self.correct as f64 / images,
            test_accuracy,
            metrics: self
                .metric_sums
                .iter()
                .map(|(k, v)| (k.clone(), v / images))
                .collect(),
            seconds: self.seconds,
            images_per_second: self.images as f64 / self.seconds.max(1e-9),
        }
    }
}

/// Where the run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Running,
    Interrupted,
    Complete,
}

/// The version of run.json's layout that [`RunRecord`] writes. 1: before the field existed (string-typed
/// settings, no `arch`); 2: `schema`, `arch`, `validation_images`. Every version still loads: the typed fields
/// read the same names version 1 wrote.
pub const RUN_SCHEMA: u32 = 2;

fn schema_v1() -> u32 {
    1
}

/// Everything about a run: `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// run.json's layout version ([`RUN_SCHEMA`]; 1 when absent).
    #[serde(default = "schema_v1")]
    pub schema: u32,
    pub sgr_version: String,
    pub method: MethodName,
    /// The network's canonical spec (`sgr_models::CnnConfig::spec`); absent in runs from before `--arch`,
    /// which trained the paper's CNN for their data set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    pub method_options: MethodOptions,
    pub dataset: DatasetName,
    pub data_source: String,
    pub train_images: usize,
    pub test_images: usize,
    /// Images held out from the end of the training set (`--validation`); when non-zero, each epoch's
    /// `test_accuracy` and the `final_eval` are measured on them instead of the test set.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub validation_images: usize,
    pub image_shape: [usize; 3],
    pub epochs: usize,
    pub batch_size: usize,
    /// Adam's settings; `optimizer.lr` is the base learning rate of the schedule.
    pub optimizer: AdamConfig,
    pub lr_schedule: LrSchedule,
    pub seed: u64,
    pub augment: Augment,
    pub device: DeviceKind,
    pub dtype: FloatType,
    /// The last invocation ran on candle's own layers and autograd (`--plain-ops`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain_ops: bool,
    pub status: RunStatus,
    /// Completed epochs.
    pub epochs_done: usize,
    /// Optimiser steps done in total.
    pub steps_done: u64,
    /// The epoch in progress (batches done, running sums); empty at an epoch boundary.
    pub partial: PartialEpoch,
    pub history: Vec<EpochRecord>,
    /// Images of the final robustness check (`--pgd-eval-images`) when given, so `--resume` keeps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgd_eval_images: Option<usize>,
    /// Robustness check at the end of the run (see [`FinalEval`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_eval: Option<FinalEval>,
}

/// Clean and PGD accuracy of the final model on the first `images` images of the evaluation split (test or
/// validation), at the data set's default ε.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalEval {
    pub attack: String,
    /// ε in units of 1/255.
    pub eps_255: f64,
    /// `test`, or `validation` for a run with a held-out split (records before the split existed: test).
    #[serde(default = "test_split")]
    pub split: String,
    pub images: usize,
    pub clean_accuracy: f64,
    pub pgd_accuracy: f64,
}

impl RunRecord {
    /// The last epoch's accuracy on the evaluation split (see [`RunRecord::eval_split`]).
    pub fn final_test_accuracy(&self) -> Option<f64> {
        self.history.last().map(|e| e.test_accuracy)
    }

    /// What the per-epoch accuracy and the final check measure: `validation` with a held-out split, else `test`.
    pub fn eval_split(&self) -> &'static str {
        if self.validation_images > 0 {
            "validation"
        } else {
            "test"
        }
    }

    /// How many images [`RunRecord::eval_split`] holds.
    pub fn eval_images(&self) -> usize {
        if self.validation_images > 0 {
            self.validation_images
        } else {
            self.test_images
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn test_split() -> String {
    "test".to_string()
}

pub fn read_record(dir: &Path) -> Result<RunRecord> {
    let path = dir.join(RUN_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    let record: RunRecord = serde_json::from_str(&text).map_err(|e| TrainError::BadRecord {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if record.schema > RUN_SCHEMA {
        return Err(TrainError::BadRecord {
            path,
            reason: format!(
                "run.json schema {} is newer than this build's ({RUN_SCHEMA}): update sgr",
                record.schema
            ),
        });
    }
    Ok(record)
}

pub(crate) fn write_record(dir: &Path, record: &RunRecord) -> Result<()> {
    let path = dir.join(RUN_FILE);
    let text = serde_json::to_string_pretty(record).map_err(|e| TrainError::BadRecord {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&path, text.as_bytes()).map_err(|source| TrainError::Io { path, source })
}

pub(crate) fn write_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut named: Vec<(&String, Tensor)> = Vec::new();
    for (k, t) in tensors {
        named.push((k, t.to_device(&Device::Cpu)?));
    }
    named.sort_by(|a, b| a.0.cmp(b.0));
    let bytes =
        safetensors::serialize(named.iter().map(|(n, t)| (n.as_str(), t)), None).map_err(|e| {
            TrainError::BadRecord {
                path: path.to_owned(),
                reason: e.to_string(),
            }
        })?;
    write_atomic(path, &bytes).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })?;
    candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| TrainError::BadRecord {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The model file of a checkpoint given as a folder or a file.
pub fn model_path(checkpoint: &Path) -> PathBuf {
    if checkpoint.is_dir() {
        checkpoint.join(MODEL_FILE)
    } else {
        checkpoint.to_owned()
    }
}

/// The name a checkpoint file of step `step` has until its step is committed.
pub(crate) fn pending_name(file: &str, step: u64) -> String {
    format!("{file}.next-{step}")
}

/// Moves the pending files of step `step` into place (model first, then optimizer state).
pub(crate) fn promote(dir: &Path, step: u64) -> Result<()> {
    for file in [MODEL_FILE, STATE_FILE] {
        let from = dir.join(pending_name(file, step));
        if from.exists() {
            std::fs::rename(&from, dir.join(file)).map_err(|source| TrainError::Io {
                path: from.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Completes or discards a checkpoint that a killed process left half written: pending files of the step
/// `run.json` names are moved into place, any others deleted, and so are temporary files of interrupted
/// writes.
pub fn recover(dir: &Path, record: &RunRecord) -> Result<()> {
    promote(dir, record.steps_done)?;
    let entries = std::fs::read_dir(dir).map_err(|source| TrainError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Pending files of another step, and temporary files a killed write left behind.
        let stale = [MODEL_FILE, STATE_FILE]
            .iter()
            .any(|f| name.starts_with(&format!("{f}.next-")))
            || ([MODEL_FILE, STATE_FILE, RUN_FILE]
                .iter()
                .any(|f| name.starts_with(&format!("{f}.")))
                && name.ends_with(".tmp"));
        if stale {
            std::fs::remove_file(entry.path()).map_err(|source| TrainError::Io {
                path: entry.path(),
                source,
            })?;
        }
    }
    Ok(())
}

/// How often a run saves within an epoch (it always saves at each epoch's end).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CheckpointEvery {
    /// After every `n` optimiser steps.
    Steps(u64),
    /// When this many seconds have passed since the last save.
    Seconds(f64),
}

impl Default for CheckpointEvery {
    /// Every 10 minutes.
    fn default() -> Self {
        CheckpointEvery::Seconds(600.0)
    }
}

impl std::str::FromStr for CheckpointEvery {
    type Err = String;
    /// `N` (steps), `Ns`, `Nm` or `Nh` (wall time).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
                "--checkpoint-every '{s}': expected a number of steps (e.g. 200) or a time (e.g. 30s, 10m, 1h)"
            )
        };
        let t = s.trim();
        let (num, scale) = match t.chars().last() {
            Some('s') => (&t[..t.len() - 1], Some(1.0)),
            Some('m') => (&t[..t.len() - 1], Some(60.0)),
            Some('h') => (&t[..t.len() - 1], Some(3600.0)),
            _ => (t, None),
        };
        match scale {
            Some(scale) => {
                let v: f64 = num.trim().parse().map_err(|_| bad())?;
                if !(v > 0.0 && v.is_finite()) {
                    return Err(bad());
                }
                Ok(CheckpointEvery::Seconds(v * scale))
            }
            None => {
                let n: u64 = num.parse().map_err(|_| bad())?;
                if n == 0 {
                    return Err(bad());
                }
                Ok(CheckpointEvery::Steps(n))
            }
        }
    }
}

/// A run folder: its files and the atomic save policy (see the module documentation).
#[derive(Debug)]
pub(crate) struct RunFolder {
    dir: PathBuf,
}

impl RunFolder {
    /// Opens `dir` for a new run (refusing a folder that holds one) or for `--resume` (refusing a folder
    /// without one; a half-written checkpoint is completed or discarded first), with the stored record.
    pub(crate) fn open(dir: &Path, resume: bool) -> Result<(Self, Option<RunRecord>)> {
        let has_run = dir.join(RUN_FILE).is_file();
        if has_run && !resume {
            return Err(TrainError::RunExists {
                dir: dir.to_owned(),
            });
        }
        if resume && !has_run {
            return Err(TrainError::NothingToResume {
                dir: dir.to_owned(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let stored = if resume {
            let record = read_record(dir)?;
            recover(dir, &record)?;
            Some(record)
        } else {
            None
        };
        Ok((
            Self {
                dir: dir.to_owned(),
            },
            stored,
        ))
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn model_file(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }

    pub(crate) fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Adam's state and the method's (`method.*`).
    pub(crate) fn read_state(&self) -> Result<HashMap<String, Tensor>> {
        read_tensors(&self.state_file())
    }

    /// Rewrites run.json alone (a status change).
    pub(crate) fn write_record(&self, record: &RunRecord) -> Result<()> {
        write_record(&self.dir, record)
    }

    /// A checkpoint of the record's step: the two files under pending names, then run.json (the commit
    /// point), then the renames.
    pub(crate) fn save(
        &self,
        varmap: &candle_nn::VarMap,
        config: &sgr_models::CnnConfig,
        adam: &crate::adam::Adam,
        method: &dyn crate::method::Method,
        record: &RunRecord,
    ) -> Result<()> {
        let _span = tracing::debug_span!("checkpoint").entered();
        let step = record.steps_done;
        sgr_models::save_model(
            varmap,
            config,
            &self.dir.join(pending_name(MODEL_FILE, step)),
        )?;
        let mut state = adam.state()?;
        for (k, v) in method.state()? {
            state.insert(format!("method.{k}"), v);
        }
        write_tensors(&self.dir.join(pending_name(STATE_FILE, step)), &state)?;
        write_record(&self.dir, record)?;
        promote(&self.dir, step)
    }
}
