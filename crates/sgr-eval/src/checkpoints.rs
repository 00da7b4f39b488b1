//! Loading checkpoints and the test set they are evaluated on (feature `experiment`): run folders or
//! `.safetensors` files as frozen models with unique names, the data set resolved from their run records.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sgr_data::{DatasetName, ImageSet, Split};
use sgr_models::{Cnn, DeviceKind, load_model, make_device};
use sgr_train::RunRecord;

use crate::error::{EvalError, Result};

/// Which test images to evaluate on, and where (the evaluation commands' data flags).
#[derive(Clone, Debug)]
pub struct TestData {
    /// Default: the first checkpoint's, from its run.json.
    pub dataset: Option<DatasetName>,
    /// Default: the folder the first checkpoint was trained on, if any.
    pub data_dir: Option<PathBuf>,
    /// The first N test images (0: all).
    pub test_limit: usize,
    /// ε in 1/255 (default: the paper's for the data set).
    pub eps_255: Option<f64>,
    pub device: DeviceKind,
}

/// A loaded checkpoint: its display name, the frozen model, and its run record if it has one.
pub struct Loaded {
    pub name: String,
    pub model: Cnn,
    pub record: Option<RunRecord>,
    pub path: PathBuf,
}

/// Where `eval-whitebox --checkpoints RUN --out RUN/eval --resume` keeps a run's white-box row, relative to the run
/// folder; [`Setup::whitebox_rows_beside_runs`] reuses it.
pub const RUN_WHITEBOX_CACHE: &str = "eval/cache/whitebox";

/// What a model's white-box row is stored under (before [`Setup::data_key`] adds the test images): the settings and
/// the checkpoint's digest. Shared by `eval-whitebox --resume` and `reproduce`, so each finds the other's rows.
fn whitebox_key(cfg: &crate::WhiteboxConfig, l: &Loaded) -> Result<serde_json::Value> {
    Ok(serde_json::json!({"config": cfg, "checkpoint": l.digest()?}))
}

/// The name a checkpoint shows under: its run folder's name, or the file stem of a bare .safetensors file.
fn display_name(path: &Path) -> String {
    let p = if path.is_dir() {
        path.to_path_buf()
    } else if path.file_name().is_some_and(|f| f == sgr_train::MODEL_FILE) {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        path.with_extension("")
    };
    p.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    )
}

/// Loads checkpoints (run folders or .safetensors files) as frozen models; names are made unique.
pub fn load_checkpoints(paths: &[PathBuf], device: &Device) -> Result<Vec<Loaded>> {
    if paths.is_empty() {
        return Err(EvalError::Invalid(
            "give at least one checkpoint with --checkpoints".into(),
        ));
    }
    let mut out: Vec<Loaded> = Vec::new();
    for path in paths {
        let file = sgr_train::model_path(path);
        let (model, _vars) =
            load_model(&file, DType::F32, device).map_err(|e| EvalError::Load {
                what: format!("checkpoint {}", path.display()),
                reason: e.to_string(),
            })?;
        let record = file.parent().and_then(|d| sgr_train::read_record(d).ok());
        let mut name = display_name(path);
        if out.iter().any(|l| l.name == name) {
            name = path.display().to_string();
        }
        out.push(Loaded {
            name,
            model: model.frozen(),
            record,
            path: path.clone(),
        });
    }
    let first = out[0].model.config().clone();
    for l in &out[1..] {
        let c = l.model.config();
        if (c.in_channels, c.height, c.width) != (first.in_channels, first.height, first.width) {
            return Err(EvalError::Invalid(format!(
                "checkpoint {} takes {}x{}x{} images but {} takes {}x{}x{}",
                l.path.display(),
                c.in_channels,
                c.height,
                c.width,
                out[0].path.display(),
                first.in_channels,
                first.height,
                first.width
            )));
        }
    }
    Ok(out)
}

/// The data set and folder to evaluate on: flags first, else what the first checkpoint was trained on.
pub fn resolve_dataset(
    first: &Loaded,
    dataset: Option<DatasetName>,
    data_dir: Option<&Path>,
) -> (DatasetName, Option<PathBuf>) {
    let stored = first.record.as_ref();
    let name = match (dataset, stored) {
        (Some(d), _) => d,
        (None, Some(r)) => r.dataset,
        (None, None) if first.model.config().in_channels == 3 => DatasetName::Cifar10,
        (None, None) => DatasetName::MnistSubset,
    };
    // A run trained on a --data-dir is tested on the same folder unless told otherwise.
    let dir = data_dir.map(Path::to_path_buf).or_else(|| {
        stored
            .filter(|r| r.dataset == name && dataset.is_none())
            .and_then(|r| {
                let p = PathBuf::from(&r.data_source);
                p.is_dir().then_some(p)
            })
    });
    (name, dir)
}

/// Loads a split and checks that it fits the model.
pub fn load_set(
    name: DatasetName,
    dir: Option<&Path>,
    split: Split,
    model: &Cnn,
) -> Result<ImageSet> {
    let set = sgr_data::load_split(name, dir, split).map_err(|e| EvalError::Load {
        what: format!("the {name} {split:?} images"),
        reason: e.to_string(),
    })?;
    let c = model.config();
    if set.shape() != (c.in_channels, c.height, c.width) {
        return Err(EvalError::Invalid(format!(
            "the checkpoints expect {}x{}x{} images but data set {name} has {:?}",
            c.in_channels,
            c.height,
            c.width,
            set.shape()
        )));
    }
    Ok(set)
}

/// Models and the test images they are evaluated on: everything an evaluation command needs.
pub struct Setup {
    pub models: Vec<Loaded>,
    pub dataset: DatasetName,
    pub data_dir: Option<PathBuf>,
    pub x: Tensor,
    pub y: Tensor,
    pub eps: f64,
    pub device: Device,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("models", &self.models)
            .field("dataset", &self.dataset)
            .field("images", &self.x.dims().first())
            .field("eps", &self.eps)
            .finish_non_exhaustive()
    }
}

impl Setup {
    pub fn named(&self) -> Vec<crate::Named<'_>> {
        self.models
            .iter()
            .map(|l| crate::Named {
                name: &l.name,
                model: &l.model,
            })
            .collect()
    }

    pub fn eps_255(&self) -> f64 {
        self.eps * 255.0
    }

    /// Up to `n` training images (for the data covariance). Where the data folder has no training split
    /// (e.g. a test-only sample), the test images stand in, with a warning.
    pub fn train_images(&self, n: usize) -> Result<Tensor> {
        match load_set(
            self.dataset,
            self.data_dir.as_deref(),
            Split::Train,
            &self.models[0].model,
        ) {
            Ok(mut set) => {
                set.truncate(n);
                Ok(set.range(0, set.len(), DType::F32, &self.device)?.0)
            }
            Err(e) => {
                tracing::warn!(
                    "no training images ({e}); the data covariance comes from the test images"
                );
                Ok(self.x.narrow(0, 0, n.min(self.x.dim(0)?))?)
            }
        }
    }
}

impl Setup {
    /// Loads `checkpoints` and the test images of `data` on its device.
    pub fn open(checkpoints: &[PathBuf], data: &TestData) -> Result<Self> {
        let device = make_device(data.device).map_err(|e| EvalError::Load {
            what: "--device".into(),
            reason: e.to_string(),
        })?;
        let models = load_checkpoints(checkpoints, &device)?;
        let (dataset, data_dir) =
            resolve_dataset(&models[0], data.dataset, data.data_dir.as_deref());
        let mut test = load_set(dataset, data_dir.as_deref(), Split::Test, &models[0].model)?;
        if data.test_limit > 0 {
            test.truncate(data.test_limit);
        }
        let (x, y) = test.range(0, test.len(), DType::F32, &device)?;
        let eps_255 = data
            .eps_255
            .unwrap_or_else(|| sgr_train::default_eps_255(dataset));
        if !(eps_255 >= 0.0 && eps_255.is_finite()) {
            return Err(EvalError::Invalid(format!(
                "--eps must be a non-negative number of 1/255 units, got {eps_255}"
            )));
        }
        tracing::info!(
            dataset = dataset.as_str(),
            images = test.len(),
            models = models.len(),
            eps_255,
            "evaluation set up"
        );
        Ok(Self {
            models,
            dataset,
            data_dir,
            x,
            y,
            eps: eps_255 / 255.0,
            device,
        })
    }
}

impl Setup {
    /// `k` test images, one per class in turn (the figures' picks).
    fn pick(&self, k: usize) -> Result<(Tensor, Tensor)> {
        let idx = crate::figures::one_per_class(&self.y, k.max(1))?;
        let idx = Tensor::new(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>().as_slice(),
            self.x.device(),
        )?;
        Ok((self.x.index_select(&idx, 0)?, self.y.index_select(&idx, 0)?))
    }

    /// Fig. 6 for every model: softmax along `x + t·δ` for `t` in `[−extent, extent]` (101 points) on `images`
    /// test images; draws `out/fig6_trajectories.png`.
    pub fn trajectories(
        &self,
        images: usize,
        extent: f64,
        out: &Path,
    ) -> Result<Vec<Vec<crate::figures::Trajectory>>> {
        if !(extent > 0.0 && extent.is_finite()) {
            return Err(EvalError::Invalid(format!(
                "--extent must be positive, got {extent}"
            )));
        }
        let (x, y) = self.pick(images)?;
        let ts: Vec<f64> = (0..=100)
            .map(|i| -extent + 2.0 * extent * i as f64 / 100.0)
            .collect();
        let rows = self
            .named()
            .into_iter()
            .map(|m| crate::figures::trajectories(m, &x, &y, self.eps, &ts))
            .collect::<Result<Vec<_>>>()?;
        crate::figures::plot_trajectories(
            &out.join("fig6_trajectories.png"),
            self.eps,
            &rows,
            &self.dataset.class_names(),
        )?;
        Ok(rows)
    }

    /// Fig. 7 for the first model: ten test images (one per class), their PGD versions at each ε (in 1/255;
    /// empty: ε and 2ε) and the perturbations; draws `out/fig7_samples.png`. Per ε: predictions changed.
    pub fn samples(&self, eps_255: &[f64], out: &Path) -> Result<Vec<(f64, usize)>> {
        let eps: Vec<f64> = if eps_255.is_empty() {
            vec![self.eps, 2.0 * self.eps]
        } else {
            eps_255.iter().map(|e| e / 255.0).collect()
        };
        if let Some(bad) = eps.iter().find(|e| !(**e >= 0.0 && e.is_finite())) {
            return Err(EvalError::Invalid(format!(
                "--eps-list values must be non-negative, got {}",
                bad * 255.0
            )));
        }
        let (x, y) = self.pick(10)?;
        crate::figures::samples(
            &out.join("fig7_samples.png"),
            self.named()[0],
            &x,
            &y,
            &eps,
            &self.dataset.class_names(),
        )
    }
}

impl Setup {
    /// `run()`; with a `cache`, the result stored for `name` under `key` (a JSON object, to which the data set
    /// and the number of test images are added), else `run()`'s, stored before it is returned.
    fn cached<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        cache: Option<&crate::cache::ResultCache>,
        name: &str,
        key: impl FnOnce() -> Result<serde_json::Value>,
        run: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let Some(c) = cache else { return run() };
        c.get_or_compute(name, &self.data_key(key()?)?, run)
    }

    /// `key` (a JSON object) with the data set and the number of test images added: what every stored result
    /// of this setup is keyed by besides its own settings.
    fn data_key(&self, mut key: serde_json::Value) -> Result<serde_json::Value> {
        if let Some(k) = key.as_object_mut() {
            k.insert("dataset".into(), self.dataset.as_str().into());
            k.insert("images".into(), self.x.dim(0)?.into());
        }
        Ok(key)
    }

    /// `run(model)` for every model, each through [`Self::cached`] under its name and `key(model)`.
    fn each_model_cached<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        cache: Option<&crate::cache::ResultCache>,
        key: impl Fn(&Loaded) -> Result<serde_json::Value>,
        run: impl Fn(crate::Named<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.named()
            .into_iter()
            .zip(&self.models)
            .map(|(m, l)| self.cached(cache, m.name, || key(l), || run(m)))
            .collect()
    }

    /// The white-box row of every model; with a `cache`, each row is stored as it is made and reused on a
    /// later call with the same settings, test images and checkpoint bytes (an interrupted evaluation resumes
    /// model by model).
    pub fn whitebox_rows(
        &self,
        cfg: &crate::WhiteboxConfig,
        cache: Option<&crate::cache::ResultCache>,
    ) -> Result<Vec<crate::WhiteboxRow>> {
        self.each_model_cached(
            cache,
            |l| whitebox_key(cfg, l),
            |m| crate::whitebox(m, &self.x, &self.y, cfg),
        )
    }

    /// [`Self::whitebox_rows`] for `reproduce`: each row from `cache`, else the row `eval-whitebox --checkpoints RUN
    /// --out RUN/eval --resume` stored beside a run folder ([`RUN_WHITEBOX_CACHE`], found by its key: the same
    /// settings, test images and checkpoint bytes, whatever name it was stored under), copied into `cache` with
    /// its computing time counted as reused; else computed and stored in `cache`. A zoo model evaluated for its
    /// table is then not evaluated a second time for the report.
    pub fn whitebox_rows_beside_runs(
        &self,
        cfg: &crate::WhiteboxConfig,
        cache: &crate::cache::ResultCache,
    ) -> Result<Vec<crate::WhiteboxRow>> {
        self.named()
            .into_iter()
            .zip(&self.models)
            .map(|(m, l)| {
                let key = self.data_key(whitebox_key(cfg, l)?)?;
                if let Some(row) = cache.get(m.name, &key) {
                    return Ok(row);
                }
                let beside = crate::cache::ResultCache::new(&l.path.join(RUN_WHITEBOX_CACHE));
                if let Some((mut row, seconds)) =
                    beside.find_timed::<_, crate::WhiteboxRow>(&key)
                {
                    tracing::info!(model = m.name, dir = %l.path.display(), "reusing the white-box row stored beside the run");
                    m.name.clone_into(&mut row.model);
                    cache.count_reused(seconds);
                    cache.put(m.name, &key, &row, seconds)?;
                    return Ok(row);
                }
                cache.get_or_compute(m.name, &key, || crate::whitebox(m, &self.x, &self.y, cfg))
            })
            .collect()
    }

    /// The PGD transfer matrix between every pair of models; with a `cache`, each source model's column is
    /// stored as it is made, one accuracy per target checkpoint, and reused on a later call with the same
    /// settings, test images and source checkpoint: a target added or retrained since costs one evaluation on
    /// the source's stored PGD examples (`CACHE/adv/`), not a new attack (the matrix is N attack runs: an
    /// interrupted one resumes column by column).
    pub fn transfer_matrix(
        &self,
        cfg: &crate::TransferConfig,
        cache: Option<&crate::cache::ResultCache>,
    ) -> Result<crate::TransferMatrix> {
        let named = self.named();
        let columns = match cache {
            None => (0..named.len())
                .map(|s| crate::transfer_column(&named, s, &self.x, &self.y, cfg))
                .collect::<Result<Vec<_>>>()?,
            Some(c) => {
                let digests = self
                    .models
                    .iter()
                    .map(Loaded::digest)
                    .collect::<Result<Vec<_>>>()?;
                (0..named.len())
                    .map(|s| self.stored_transfer_column(c, &named, &digests, s, cfg))
                    .collect::<Result<Vec<_>>>()?
            }
        };
        crate::TransferMatrix::from_columns(&named, &self.x, &self.y, cfg, &columns)
    }

    /// Column `s` of the transfer matrix from `cache`: the stored accuracy of each target (by checkpoint
    /// digest) under the key of the settings, test images and source checkpoint; targets without one are
    /// evaluated on the source's PGD examples, read from `CACHE/adv/` or made (and stored there) when missing.
    fn stored_transfer_column(
        &self,
        cache: &crate::cache::ResultCache,
        named: &[crate::Named<'_>],
        digests: &[String],
        s: usize,
        cfg: &crate::TransferConfig,
    ) -> Result<Vec<f64>> {
        let name = named[s].name;
        let key = self.data_key(serde_json::json!({"config": cfg, "source": digests[s]}))?;
        let (mut cells, stored_seconds): (Vec<TransferCell>, f64) = cache
            .get_timed(name, &key)
            .or_else(|| legacy_transfer_cells(cache, name, &key).map(|c| (c, 0.0)))
            .unwrap_or_default();
        let missing: Vec<usize> = (0..named.len())
            .filter(|&t| !cells.iter().any(|c| c.target == digests[t]))
            .collect();
        if missing.is_empty() {
            cache.count_reused(stored_seconds);
        } else {
            let t0 = std::time::Instant::now();
            let adv = self.stored_examples(cache, name, &key, || {
                crate::transfer_examples(named[s], &self.x, &self.y, cfg)
            })?;
            for t in missing {
                if cells.iter().any(|c| c.target == digests[t]) {
                    continue; // the same checkpoint twice
                }
                cells.push(TransferCell {
                    target: digests[t].clone(),
                    accuracy: crate::accuracy(named[t].model, &adv, &self.y, cfg.batch_size)?,
                });
            }
            cache.put(
                name,
                &key,
                &cells,
                stored_seconds + t0.elapsed().as_secs_f64(),
            )?;
        }
        digests
            .iter()
            .map(|d| {
                cells
                    .iter()
                    .find(|c| &c.target == d)
                    .map(|c| c.accuracy)
                    .ok_or_else(|| {
                        EvalError::Invalid(format!("transfer column {name}: no cell for {d}"))
                    })
            })
            .collect()
    }

    /// The source's PGD examples stored under `key` in `CACHE/adv/`, else `make()`'s, stored there (older
    /// keys' files of the same source are removed).
    fn stored_examples(
        &self,
        cache: &crate::cache::ResultCache,
        name: &str,
        key: &serde_json::Value,
        make: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let path = cache.side_path("adv", name, key, "safetensors")?;
        let io = |source| EvalError::Io {
            path: path.display().to_string(),
            source,
        };
        if path.is_file() {
            match candle_core::safetensors::load(&path, self.x.device()) {
                Ok(mut t) => match t.remove("adv") {
                    Some(adv) if adv.dims() == self.x.dims() => {
                        tracing::info!(name, file = %path.display(), "reusing stored PGD examples");
                        return Ok(adv);
                    }
                    _ => tracing::warn!(
                        "{}: not this source's examples; making them again",
                        path.display()
                    ),
                },
                Err(e) => tracing::warn!("{}: {e}; making the examples again", path.display()),
            }
        }
        let adv = make()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let bytes = safetensors::serialize([("adv", &adv)], None)
            .map_err(|e| EvalError::Invalid(format!("{}: {e}", path.display())))?;
        sgr_models::fsutil::write_atomic(&path, &bytes).map_err(io)?;
        cache.remove_stale("adv", name, &path);
        Ok(adv)
    }

    /// The correlated-noise curves of every model (the data covariance from the first `data_cov_images`
    /// training images); with a `cache`, each model's curves are stored as they are made and reused on a
    /// later call with the same settings, test images and checkpoint bytes.
    pub fn lrc_evaluation(
        &self,
        settings: &crate::LrcSettings,
        data_cov_images: usize,
        cache: Option<&crate::cache::ResultCache>,
    ) -> Result<crate::LrcResults> {
        let train = self.train_images(data_cov_images)?;
        let sources = crate::LrcSources::new(&self.x, &train, settings)?;
        let curves = self.each_model_cached(
            cache,
            |l| {
                Ok(serde_json::json!({
                    "settings": settings,
                    "data_cov_images": train.dim(0)?,
                    "checkpoint": l.digest()?,
                }))
            },
            |m| sources.model_curves(m, &self.x, &self.y),
        )?;
        crate::LrcResults::from_models(&self.x, &self.y, settings, curves)
    }
}

impl Loaded {
    /// The FNV digest of the checkpoint's parameter file (what a cached result of this model is keyed by).
    pub fn digest(&self) -> Result<String> {
        crate::cache::file_digest(&sgr_train::model_path(&self.path))
    }
}

/// One stored transfer accuracy: a target checkpoint (by digest) on a source's PGD examples.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct TransferCell {
    target: String,
    accuracy: f64,
}

/// The cells of a column stored in the earlier layout (the key named every target, the result was one
/// accuracy per target), if that key is `key` plus its targets.
fn legacy_transfer_cells(
    cache: &crate::cache::ResultCache,
    name: &str,
    key: &serde_json::Value,
) -> Option<Vec<TransferCell>> {
    let (mut old_key, result) = cache.stored(name)?;
    let targets = old_key.as_object_mut()?.remove("targets")?;
    if &old_key != key {
        return None;
    }
    let accs: Vec<f64> = serde_json::from_value(result).ok()?;
    let targets: Vec<(String, String)> = serde_json::from_value(targets).ok()?;
    (targets.len() == accs.len()).then(|| {
        targets
            .into_iter()
            .zip(accs)
            .map(|((_, target), accuracy)| TransferCell { target, accuracy })
            .collect()
    })
}
