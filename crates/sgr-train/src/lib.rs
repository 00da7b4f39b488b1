//! Training for the SGR experiments: a loop that owns data order, augmentation, Adam, checkpoints and
//! progress, and a [`Method`] plug-in that owns the objective.
//!
//! A run lives in one folder:
//! * `model.safetensors`: the parameters, PyTorch names and layouts;
//! * `optimizer.safetensors`: Adam's moments and step count, and the method's own state (`method.*`);
//! * `run.json`: every setting, the progress and per-epoch metrics ([`RunRecord`]).
//!
//! Checkpoints are written at each epoch's end and within epochs (`TrainArgs::checkpoint_every`, default every
//! 10 minutes), under pending names committed by `run.json` (see `run.rs`), so a process killed at any moment
//! resumes from its last checkpoint. A resumed run is bit-identical to an uninterrupted one: the data order of
//! epoch `e` and the augmentation of batch `b` derive from `(seed, e, b)` alone.

mod adam;
mod adversarial;
mod error;
mod gradients;
mod method;
mod plan;
mod run;
mod settings;
mod sgr;
mod sweep;
mod trainer;

pub use adam::{Adam, AdamConfig, Gradients, ParamGradients};
pub use adversarial::{Augmented, LRC_EPS_255, default_eps_255};
pub use error::{Result, TrainError};
pub use method::{
    Clean, Method, MethodContext, MethodError, MethodOptions, StepInput, StepOutput, WeightDecay,
    build_method, cross_entropy,
};
pub use plan::{ExperimentPlan, LambdaFrom, MethodEpochs, PlannedRun, RETRAINED_PER_EPS, Stage};
pub use run::{
    CheckpointEvery, EpochRecord, FinalEval, MODEL_FILE, PartialEpoch, RUN_FILE, RUN_SCHEMA,
    RunRecord, RunStatus, STATE_FILE, model_path, read_record, recover,
};
pub use settings::{CovKind, FloatType, LrSchedule, MethodName, SecondOrderMode, XiLabels};
pub use sgr::{DATA_COV_IMAGES, Sgr, data_covariance, default_lambda};
pub use sweep::{
    ACCURACY_TOLERANCE_POINTS, Candidate, LambdaGrid, Selection, SweepError, scaled_from_sgr_sign,
    select_lambda,
};
pub use trainer::{
    Event, FINAL_PGD_IMAGES, MAX_LOSS, Observer, Quiet, StopAfterSteps, TrainArgs, count_correct,
    default_epochs, default_lr_schedule, evaluate, pgd_accuracy, train,
};
