//! Training for the SGR experiments: a loop that owns data order, augmentation, Adam, checkpoints and
//! progress, and a [`Method`] plug-in that owns the objective.
//!
//! A run lives in one folder:
//! * `model.safetensors`: the parameters, PyTorch names and layouts;
//! * `optimizer.safetensors`: Adam's moments and step count, and the method's own state (`method.*`);
//! * `run.json`: every setting, the progress and per-epoch metrics ([`RunRecord`]).
//!
//! Every file is written to a temporary name and renamed, `run.json` last. A run stopped at any point resumes
//! exactly: the data order of epoch `e` and the augmentation of batch `b` derive from `(seed, e, b)` alone.

mod adam;
mod error;
mod method;
mod run;
mod trainer;

pub use adam::{Adam, AdamConfig};
pub use error::{Result, TrainError};
pub use method::{
    Clean, METHODS, Method, MethodOptions, StepInput, StepOutput, UnknownMethod, WeightDecay,
    build_method, cross_entropy,
};
pub use run::{
    EpochRecord, LrSchedule, MODEL_FILE, PartialEpoch, RUN_FILE, RunRecord, RunStatus, STATE_FILE,
    model_path, read_record,
};
pub use trainer::{
    Event, Observer, Quiet, TrainArgs, count_correct, default_epochs, default_lr_schedule,
    evaluate, train,
};
