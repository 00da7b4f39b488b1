//! The training loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sgr_data::{Augment, DatasetName, ImageSet, epoch_order, seeded_rng};
use sgr_models::{Cnn, CnnConfig, DeviceKind, init_params, load_model, make_device};

use crate::adam::{Adam, AdamConfig};
use crate::adversarial::default_eps_255;
use crate::error::{Result, TrainError};
use crate::method::{Method, MethodContext, MethodOptions, StepInput, build_method};
use crate::run::{
    CheckpointEvery, EpochRecord, FinalEval, PartialEpoch, RUN_SCHEMA, RunFolder, RunRecord,
    RunStatus,
};
use crate::settings::{FloatType, LrSchedule, MethodName};
pub use sgr_attacks::count_correct;

/// Training settings as given on the command line: `None` means "the default", or on `--resume` "what the
/// run was started with".
#[derive(Clone, Debug, Default)]
pub struct TrainArgs {
    pub method: Option<MethodName>,
    /// The network: `paper` (the paper's CNN for the data set; the default), `mnist`, `cifar10`, or a spec
    /// string such as `conv32,conv32,pool,fc100` (see [`CnnConfig::parse`]).
    pub arch: Option<String>,
    pub method_options: MethodOptions,
    pub dataset: Option<DatasetName>,
    pub data_dir: Option<PathBuf>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub lr_schedule: Option<LrSchedule>,
    pub seed: Option<u64>,
    pub augment: Option<String>,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    /// Hold out the last N images of the training set as a validation split: the run trains on the rest
    /// (at most `train_limit` of them), and its per-epoch accuracy and end-of-run PGD check are measured
    /// on the held-out images, never on the test set (for choosing λ). `None`/0: no split.
    pub validation: Option<usize>,
    pub device: DeviceKind,
    pub dtype: Option<FloatType>,
    /// Test images for the PGD check at the end of the run (`None`: up to [`FINAL_PGD_IMAGES`]; 0: skip).
    pub pgd_eval_images: Option<usize>,
    /// Run the model on candle's own layers and autograd (double backprop for exact gn/sgr) instead of
    /// the channels-last CPU ops and explicit gradients: same numbers up to rounding, several times
    /// slower; for A/B comparisons ([`Cnn::set_plain_ops`]). Other devices always use candle's layers.
    pub plain_ops: bool,
    /// Saves within an epoch (default every 10 minutes; each epoch's end always saves). Does not change
    /// the result: a run resumed from any checkpoint is bit-identical to an uninterrupted one.
    pub checkpoint_every: Option<CheckpointEvery>,
}

/// Test images the end-of-run PGD check uses by default.
pub const FINAL_PGD_IMAGES: usize = 1000;

/// A loss above this is taken as divergence and stops the run.
pub const MAX_LOSS: f64 = 1e6;

/// Default learning-rate schedule: the paper's constant rate, except on the embedded subset, whose short
/// default run ends noisily at a constant rate (test accuracy swings by ±1 % between epochs) and settles with a
/// cosine decay.
pub fn default_lr_schedule(dataset: DatasetName) -> LrSchedule {
    match dataset {
        DatasetName::MnistSubset => LrSchedule::Cosine,
        _ => LrSchedule::Constant,
    }
}

/// Default number of epochs: enough for the embedded subset to converge, the paper's 50 otherwise.
pub fn default_epochs(dataset: DatasetName, method: MethodName) -> usize {
    match (dataset, method) {
        (DatasetName::MnistSubset, MethodName::Clean | MethodName::WeightDecay) => 12,
        // Regularised and adversarial steps cost 2–10× a clean step; the regularisers also smooth training.
        (DatasetName::MnistSubset, _) => 6,
        _ => 50,
    }
}

/// Progress reports from the loop; the command-line front end draws them.
#[derive(Debug)]
pub enum Event<'a> {
    /// A run starts or resumes at `epoch` (0-based), batch `batch` of `batches`.
    Start {
        record: &'a RunRecord,
        epoch: usize,
        batch: usize,
        batches: usize,
    },
    /// A step finished.
    Step {
        epoch: usize,
        batch: usize,
        batches: usize,
        loss: f64,
        accuracy: f64,
        images_per_second: f64,
    },
    /// An epoch finished and was checkpointed.
    Epoch {
        record: &'a EpochRecord,
        epochs: usize,
        /// What `record.test_accuracy` was measured on: `test` or `validation`.
        split: &'static str,
    },
    /// The run stopped at the user's request after saving.
    Interrupted { record: &'a RunRecord },
}

pub trait Observer {
    fn event(&mut self, event: Event<'_>);
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn event(&mut self, _event: Event<'_>) {}
}

/// Raises a stop flag after a number of steps, as Ctrl-C does: the loop saves and returns `Interrupted`.
/// (Time-boxed runs, tests of resumption.)
#[derive(Debug)]
pub struct StopAfterSteps<'a> {
    pub after: usize,
    pub seen: usize,
    pub stop: &'a AtomicBool,
}

impl<'a> StopAfterSteps<'a> {
    pub fn new(after: usize, stop: &'a AtomicBool) -> Self {
        Self {
            after,
            seen: 0,
            stop,
        }
    }
}

impl Observer for StopAfterSteps<'_> {
    fn event(&mut self, event: Event<'_>) {
        if let Event::Step { .. } = event {
            self.seen += 1;
            if self.seen == self.after {
                self.stop.store(true, Ordering::SeqCst);
            }
        }
    }
}

fn check_same<T: PartialEq + std::fmt::Display>(
    dir: &Path,
    flag: &'static str,
    given: Option<T>,
    stored: T,
) -> Result<()> {
    match given {
        Some(g) if g != stored => Err(TrainError::ResumeMismatch {
            dir: dir.to_owned(),
            flag: flag.to_string(),
            given: g.to_string(),
            stored: stored.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Whether the run `r` stored in `out` may be continued (or counted) as the run `args` describes: every flag
/// `args` sets (data set, method, batch size, learning rate and schedule, seed, method options such as λ and ε,
/// augmentation, validation split) agrees with the stored value; the first that does not is the error.
pub fn check_resumable(args: &TrainArgs, r: &RunRecord, out: &Path) -> Result<()> {
    check_same(out, "--dataset", args.dataset, r.dataset)?;
    check_same(out, "--method", args.method, r.method)?;
    check_same(out, "--batch-size", args.batch_size, r.batch_size)?;
    check_same(out, "--lr", args.lr, r.optimizer.lr)?;
    check_same(out, "--seed", args.seed, r.seed)?;
    check_same(out, "--lr-schedule", args.lr_schedule, r.lr_schedule)?;
    if let Some((key, given, stored)) = args.method_options.conflict_with(&r.method_options) {
        return Err(TrainError::ResumeMismatch {
            dir: out.to_owned(),
            flag: format!("--{}", key.replace('_', "-")),
            given,
            stored,
        });
    }
    if let Some(spec) = &args.augment {
        let given =
            Augment::parse_parts(spec, r.dataset.pad_value()).map_err(TrainError::Config)?;
        check_same(
            out,
            "--augment",
            Some(given.describe()),
            r.augment.describe(),
        )?;
    }
    check_same(out, "--validation", args.validation, r.validation_images)?;
    Ok(())
}

/// The settings a run trains with: flags, else the stored run (which flags may not contradict), else
/// defaults.
struct Settings {
    dataset: DatasetName,
    method: MethodName,
    options: MethodOptions,
    batch_size: usize,
    lr: f64,
    seed: u64,
    augment: Augment,
    float_type: FloatType,
}

impl Settings {
    fn resolve(args: &TrainArgs, stored: Option<&RunRecord>, out: &Path) -> Result<Self> {
        let settings = match stored {
            Some(r) => {
                check_resumable(args, r, out)?;
                Self {
                    dataset: r.dataset,
                    method: r.method,
                    options: r.method_options.clone(),
                    batch_size: r.batch_size,
                    lr: r.optimizer.lr,
                    seed: r.seed,
                    augment: r.augment.clone(),
                    float_type: r.dtype,
                }
            }
            None => {
                let dataset = args.dataset.unwrap_or(DatasetName::MnistSubset);
                let augment = match &args.augment {
                    Some(spec) => Augment::parse_parts(spec, dataset.pad_value())
                        .map_err(TrainError::Config)?,
                    None => dataset.default_augment(),
                };
                Self {
                    dataset,
                    method: args.method.unwrap_or(MethodName::Clean),
                    options: args.method_options.clone(),
                    batch_size: args.batch_size.unwrap_or(128),
                    lr: args.lr.unwrap_or(AdamConfig::default().lr),
                    seed: args.seed.unwrap_or(0),
                    augment,
                    float_type: args.dtype.unwrap_or(FloatType::F32),
                }
            }
        };
        if settings.batch_size == 0 {
            return Err(TrainError::Config("--batch-size must be at least 1".into()));
        }
        if !(settings.lr > 0.0 && settings.lr.is_finite()) {
            return Err(TrainError::Config(format!(
                "--lr must be a positive number, got {}",
                settings.lr
            )));
        }
        Ok(settings)
    }
}

/// A run's images: what it trains on, the test set, and the held-out validation split (empty without one).
struct RunData {
    train: ImageSet,
    test: ImageSet,
    validation: ImageSet,
    /// Where the images came from (the recorded data source).
    source: String,
}

impl RunData {
    /// Loads the data set, holds out the validation split, and applies the limits (the stored run's sizes on
    /// `--resume`).
    fn load(
        args: &TrainArgs,
        dataset: DatasetName,
        stored: Option<&RunRecord>,
        out: &Path,
    ) -> Result<Self> {
        // On --resume without --data-dir, the folder the run was started from (recorded as its data source).
        let stored_dir = stored.and_then(|r| {
            let p = PathBuf::from(&r.data_source);
            (args.data_dir.is_none() && p.is_dir()).then_some(p)
        });
        let data_dir = args.data_dir.as_deref().or(stored_dir.as_deref());
        let mut data = sgr_data::load(dataset, data_dir)?;
        let validation = match stored {
            Some(r) => {
                check_same(out, "--validation", args.validation, r.validation_images)?;
                r.validation_images
            }
            None => args.validation.unwrap_or(0),
        };
        if validation >= data.train.len() {
            return Err(TrainError::Config(format!(
                "--validation {validation}: the training set has only {} images",
                data.train.len()
            )));
        }
        let validation = data.train.split_off_last(validation, "validation");
        let (train_limit, test_limit) = match stored {
            Some(r) => {
                if data.train.len() < r.train_images || data.test.len() < r.test_images {
                    return Err(TrainError::Config(format!(
                        "--resume: the run used {} train / {} test images but the data holds {} / {}",
                        r.train_images,
                        r.test_images,
                        data.train.len(),
                        data.test.len()
                    )));
                }
                (Some(r.train_images), Some(r.test_images))
            }
            None => (args.train_limit, args.test_limit),
        };
        if let Some(n) = train_limit {
            data.train.truncate(n);
        }
        if let Some(n) = test_limit {
            data.test.truncate(n);
        }
        if data.train.is_empty() || data.test.is_empty() {
            return Err(TrainError::Config(
                "--train-limit and --test-limit must be at least 1".into(),
            ));
        }
        Ok(Self {
            train: data.train,
            test: data.test,
            validation,
            source: sgr_data::describe_source(dataset, data_dir),
        })
    }

    /// What the per-epoch accuracy and the end-of-run check measure: the held-out split when there is one.
    fn eval_set(&self) -> &ImageSet {
        if self.validation.is_empty() {
            &self.test
        } else {
            &self.validation
        }
    }
}

/// The network of a run: `--arch` (default `paper`), or what the stored run trained (which `--arch` may not
/// contradict).
fn resolve_arch(
    args: &TrainArgs,
    stored: Option<&RunRecord>,
    shape: (usize, usize, usize),
    out: &Path,
) -> Result<CnnConfig> {
    let parse = |arch: &str| {
        CnnConfig::from_arch(arch, shape, 10)
            .map_err(|e| TrainError::Config(format!("--arch {arch}: {e}")))
    };
    let flag = args.arch.as_deref();
    // Runs from before `--arch` trained the paper's CNN.
    let config = match stored {
        Some(r) => parse(r.arch.as_deref().unwrap_or("paper"))?,
        None => parse(flag.unwrap_or("paper"))?,
    };
    if let (Some(flag), Some(_)) = (flag, stored) {
        check_same(out, "--arch", Some(parse(flag)?.spec()), config.spec())?;
    }
    Ok(config)
}

/// The model, its parameters and the optimiser: fresh from the seed, or from the run folder (with the
/// method's own state) on `--resume`.
fn open_model(
    folder: &RunFolder,
    resume: bool,
    config: &CnnConfig,
    record: &RunRecord,
    method: &mut dyn Method,
    device: &Device,
) -> Result<(Cnn, VarMap, Adam)> {
    let dtype = record.dtype.dtype();
    let (model, varmap) = if resume {
        load_model(&folder.model_file(), dtype, device)?
    } else {
        let varmap = VarMap::new();
        init_params(&varmap, config, record.seed, dtype, device)?;
        let model = Cnn::new(
            config.clone(),
            VarBuilder::from_varmap(&varmap, dtype, device),
        )?;
        (model, varmap)
    };
    let named_vars: Vec<_> = {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| TrainError::Config("VarMap lock poisoned".into()))?;
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let mut adam = Adam::new(named_vars, record.optimizer.clone())?;
    if resume {
        let state = folder.read_state()?;
        adam.load_state(&state)?;
        let method_state: HashMap<String, Tensor> = state
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("method.")
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
        method.load_state(&method_state)?;
        if adam.step_count() != record.steps_done {
            return Err(TrainError::BadRecord {
                path: folder.state_file(),
                reason: format!(
                    "optimizer is at step {} but run.json says {}",
                    adam.step_count(),
                    record.steps_done
                ),
            });
        }
    }
    Ok((model, varmap, adam))
}

/// Opens (or continues) the run in `out`, trains until its epochs are done or `stop` is raised, and returns
/// the final record. See the crate documentation for the files written.
pub fn train(
    args: TrainArgs,
    out: &Path,
    resume: bool,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<RunRecord> {
    let _span = tracing::info_span!("train", out = %out.display()).entered();
    let (folder, stored) = RunFolder::open(out, resume)?;
    let s = Settings::resolve(&args, stored.as_ref(), out)?;
    let data = RunData::load(&args, s.dataset, stored.as_ref(), out)?;
    let mut method = build_method(
        s.method,
        &MethodContext {
            dataset: s.dataset,
            train: &data.train,
        },
        s.options.clone(),
    )?;
    let device = make_device(args.device)?;
    let shape = data.train.shape();
    let config = resolve_arch(&args, stored.as_ref(), shape, out)?;

    let mut record = match stored {
        Some(mut r) => {
            if let Some(e) = args.epochs {
                r.epochs = e;
            }
            r.plain_ops = args.plain_ops;
            r.pgd_eval_images = args.pgd_eval_images.or(r.pgd_eval_images);
            r.arch = Some(config.spec());
            r.schema = RUN_SCHEMA;
            r
        }
        None => RunRecord {
            sgr_version: env!("CARGO_PKG_VERSION").to_string(),
            schema: RUN_SCHEMA,
            method: s.method,
            arch: Some(config.spec()),
            method_options: method.options().clone(),
            dataset: s.dataset,
            data_source: data.source.clone(),
            train_images: data.train.len(),
            test_images: data.test.len(),
            validation_images: data.validation.len(),
            image_shape: [shape.0, shape.1, shape.2],
            epochs: args
                .epochs
                .unwrap_or_else(|| default_epochs(s.dataset, s.method)),
            batch_size: s.batch_size,
            optimizer: AdamConfig {
                lr: s.lr,
                ..AdamConfig::default()
            },
            lr_schedule: args
                .lr_schedule
                .unwrap_or_else(|| default_lr_schedule(s.dataset)),
            seed: s.seed,
            augment: s.augment.clone(),
            device: args.device,
            dtype: s.float_type,
            plain_ops: args.plain_ops,
            status: RunStatus::Running,
            epochs_done: 0,
            steps_done: 0,
            partial: PartialEpoch::default(),
            history: vec![],
            pgd_eval_images: args.pgd_eval_images,
            final_eval: None,
        },
    };
    let (mut model, varmap, mut adam) =
        open_model(&folder, resume, &config, &record, method.as_mut(), &device)?;
    model.set_plain_ops(args.plain_ops);
    if !resume {
        // Claim the folder before the first step so a second run cannot start in it.
        folder.save(&varmap, &config, &adam, method.as_ref(), &record)?;
    }
    let mut run = Loop {
        folder: &folder,
        data: &data,
        model: &model,
        varmap: &varmap,
        config: &config,
        device: &device,
        every: args.checkpoint_every.unwrap_or_default(),
    };
    if !run.epochs(&mut record, &mut adam, method.as_mut(), stop, obs)? {
        return Ok(record);
    }
    record.status = RunStatus::Complete;
    let images = record
        .pgd_eval_images
        .unwrap_or(FINAL_PGD_IMAGES)
        .min(data.eval_set().len());
    if images > 0 && record.final_eval.is_none() {
        record.final_eval = Some(final_check(&model, &data, &record, images, &device)?);
    }
    folder.write_record(&record)?;
    Ok(record)
}

/// What the epoch loop works with.
struct Loop<'a> {
    folder: &'a RunFolder,
    data: &'a RunData,
    model: &'a Cnn,
    varmap: &'a VarMap,
    config: &'a CnnConfig,
    device: &'a Device,
    every: CheckpointEvery,
}

impl Loop<'_> {
    /// Trains until the record's epochs are done (true) or `stop` is raised (false, after saving).
    fn epochs(
        &mut self,
        record: &mut RunRecord,
        adam: &mut Adam,
        method: &mut dyn Method,
        stop: &AtomicBool,
        obs: &mut dyn Observer,
    ) -> Result<bool> {
        let (train, dtype) = (&self.data.train, record.dtype.dtype());
        let (n, batch_size, seed) = (train.len(), record.batch_size, record.seed);
        let batches = n.div_ceil(batch_size);
        obs.event(Event::Start {
            record,
            epoch: record.epochs_done,
            batch: record.partial.batches,
            batches,
        });
        record.status = RunStatus::Running;
        let (mut saved_at, mut saved_step) = (Instant::now(), record.steps_done);
        while record.epochs_done < record.epochs {
            // The model changes: an earlier end-of-run check no longer describes it.
            record.final_eval = None;
            let epoch = record.epochs_done;
            let order = epoch_order(n, seed, epoch as u64);
            for b in record.partial.batches..batches {
                let t0 = Instant::now();
                let idx = &order[b * batch_size..((b + 1) * batch_size).min(n)];
                let mut rng =
                    seeded_rng(seed, &[sgr_data::streams::AUGMENT, epoch as u64, b as u64]);
                adam.set_lr(record.lr_schedule.lr_at(
                    record.optimizer.lr,
                    record.steps_done,
                    (record.epochs * batches) as u64,
                ));
                let (x, y) =
                    train.batch(idx, Some((&record.augment, &mut rng)), dtype, self.device)?;
                let outp = method.loss(&StepInput {
                    model: self.model,
                    params: self.varmap,
                    x: &x,
                    y: &y,
                    step: record.steps_done,
                    seed,
                })?;
                let loss = outp.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !loss.is_finite() || loss > MAX_LOSS {
                    return Err(TrainError::NonFinite {
                        value: loss,
                        epoch: epoch + 1,
                        step: record.steps_done + 1,
                        epochs_done: record.epochs_done,
                        steps_done: record.steps_done,
                        dir: self.folder.dir().to_owned(),
                    });
                }
                adam.step(&outp.gradients()?)?;
                let correct = count_correct(&outp.logits, &y)?;
                let mut metrics = Vec::with_capacity(outp.metrics.len());
                for (name, value) in &outp.metrics {
                    metrics.push((
                        name.as_str(),
                        value.to_dtype(DType::F64)?.to_scalar::<f64>()?,
                    ));
                }
                let dt = t0.elapsed().as_secs_f64();
                record.partial.add(idx.len(), loss, correct, &metrics, dt);
                record.steps_done += 1;
                let p = &record.partial;
                obs.event(Event::Step {
                    epoch,
                    batch: b + 1,
                    batches,
                    loss: p.loss_sum / p.images as f64,
                    accuracy: p.correct as f64 / p.images as f64,
                    images_per_second: idx.len() as f64 / dt.max(1e-9),
                });
                if stop.load(Ordering::SeqCst) && b + 1 < batches {
                    record.status = RunStatus::Interrupted;
                    self.save(adam, method, record)?;
                    obs.event(Event::Interrupted { record });
                    return Ok(false);
                }
                let due = match self.every {
                    CheckpointEvery::Steps(k) => record.steps_done - saved_step >= k,
                    CheckpointEvery::Seconds(t) => saved_at.elapsed().as_secs_f64() >= t,
                };
                if due && b + 1 < batches {
                    self.save(adam, method, record)?;
                    (saved_at, saved_step) = (Instant::now(), record.steps_done);
                }
            }
            let (correct, total) =
                evaluate(self.model, self.data.eval_set(), 256, dtype, self.device)?;
            let epoch_rec = std::mem::take(&mut record.partial)
                .finish(epoch + 1, correct as f64 / total as f64);
            record.epochs_done += 1;
            record.history.push(epoch_rec);
            if record.epochs_done == record.epochs {
                record.status = RunStatus::Complete;
            }
            self.save(adam, method, record)?;
            (saved_at, saved_step) = (Instant::now(), record.steps_done);
            if let Some(last) = record.history.last() {
                obs.event(Event::Epoch {
                    record: last,
                    epochs: record.epochs,
                    split: record.eval_split(),
                });
            }
            if stop.load(Ordering::SeqCst) && record.epochs_done < record.epochs {
                record.status = RunStatus::Interrupted;
                self.folder.write_record(record)?;
                obs.event(Event::Interrupted { record });
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn save(&self, adam: &Adam, method: &dyn Method, record: &RunRecord) -> Result<()> {
        self.folder
            .save(self.varmap, self.config, adam, method, record)
    }
}

/// The end-of-run check: clean and PGD-10 accuracy on the first `images` of the evaluation split, at the
/// data set's ε.
fn final_check(
    model: &Cnn,
    data: &RunData,
    record: &RunRecord,
    images: usize,
    device: &Device,
) -> Result<FinalEval> {
    let eps_255 = default_eps_255(record.dataset);
    let (clean, robust) = pgd_accuracy(
        model,
        data.eval_set(),
        images,
        eps_255 / 255.0,
        record.dtype.dtype(),
        device,
    )?;
    Ok(FinalEval {
        attack: "PGD-10 (L∞, step ε/5, true labels)".into(),
        eps_255,
        split: record.eval_split().to_string(),
        images,
        clean_accuracy: clean,
        pgd_accuracy: robust,
    })
}

/// Clean and PGD-10 accuracy on the first `images` images of `test`.
pub fn pgd_accuracy(
    model: &Cnn,
    test: &ImageSet,
    images: usize,
    eps: f64,
    dtype: DType,
    device: &Device,
) -> Result<(f64, f64)> {
    let _span = tracing::info_span!("final_pgd", images, eps).entered();
    let frozen = model.frozen();
    let (mut clean, mut robust) = (0usize, 0usize);
    for start in (0..images).step_by(128) {
        let (x, y) = test.range(start, (start + 128).min(images), dtype, device)?;
        clean += sgr_attacks::accuracy(&frozen, &x, &y)?.0;
        let adv = sgr_attacks::Attack::run(&sgr_attacks::Pgd::whitebox(), &frozen, &x, &y, eps)?;
        robust += sgr_attacks::accuracy(&frozen, &adv, &y)?.0;
    }
    Ok((clean as f64 / images as f64, robust as f64 / images as f64))
}

/// Clean accuracy of `model` on `set`: (correct, total).
pub fn evaluate(
    model: &Cnn,
    set: &ImageSet,
    batch_size: usize,
    dtype: DType,
    device: &Device,
) -> Result<(usize, usize)> {
    let _span = tracing::debug_span!("evaluate", images = set.len()).entered();
    let mut correct = 0;
    for start in (0..set.len()).step_by(batch_size.max(1)) {
        let (x, y) = set.range(start, start + batch_size, dtype, device)?;
        let logits = model.forward(&x)?.detach();
        correct += count_correct(&logits, &y)?;
    }
    Ok((correct, set.len()))
}
