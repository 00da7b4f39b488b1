//! The training loop: determinism, exact resume (at epoch boundaries and mid-epoch), refusal to overwrite,
//! the optimiser against hand-computed updates and the weight-decay objective against its formula.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor, Var};
use sgr_data::DatasetName;
use sgr_train::{
    Adam, AdamConfig, LrSchedule, MethodOptions, Quiet, RunStatus, StopAfterSteps, TrainArgs,
    read_record, train,
};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// A method by its command-line name.
fn name(s: &str) -> sgr_train::MethodName {
    s.parse().unwrap()
}

fn small_args(epochs: usize) -> TrainArgs {
    TrainArgs {
        method: Some(name("clean")),
        dataset: Some(DatasetName::MnistSubset),
        epochs: Some(epochs),
        batch_size: Some(64),
        train_limit: Some(320),
        test_limit: Some(100),
        seed: Some(3),
        augment: Some("crop".into()),
        // Extending a run (--resume --epochs) keeps a constant rate exact; a cosine schedule's horizon
        // changes with the epoch count (checked separately below).
        lr_schedule: Some(LrSchedule::Constant),
        pgd_eval_images: Some(0),
        ..TrainArgs::default()
    }
}

/// A few deterministic images of the given shape (for building methods that look at the training set).
fn tiny_set(channels: usize, height: usize, width: usize) -> sgr_data::ImageSet {
    let d = channels * height * width;
    sgr_data::ImageSet {
        name: "tiny".into(),
        channels,
        height,
        width,
        pixels: (0..4 * d).map(|i| (i * 37 % 256) as u8).collect(),
        labels: vec![0, 1, 2, 3],
    }
}

fn model_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

#[test]
fn training_is_deterministic_and_resumes_exactly() -> TestResult {
    let no = AtomicBool::new(false);
    let straight = tempfile::tempdir()?;
    let r = train(small_args(2), straight.path(), false, &no, &mut Quiet)?;
    assert_eq!(r.status, RunStatus::Complete);
    assert_eq!((r.epochs_done, r.steps_done, r.history.len()), (2, 10, 2));
    assert!(r.history[1].loss < r.history[0].loss, "{:?}", r.history);

    // Same seed, same bytes.
    let again = tempfile::tempdir()?;
    train(small_args(2), again.path(), false, &no, &mut Quiet)?;
    assert!(
        model_bytes(straight.path()) == model_bytes(again.path()),
        "model files differ"
    );

    // Another seed, other bytes.
    let other = tempfile::tempdir()?;
    train(
        TrainArgs {
            seed: Some(4),
            ..small_args(1)
        },
        other.path(),
        false,
        &no,
        &mut Quiet,
    )?;
    assert!(
        model_bytes(straight.path()) != model_bytes(other.path()),
        "model files should differ"
    );

    // One epoch, then --resume to two: identical to two straight.
    let split = tempfile::tempdir()?;
    train(small_args(1), split.path(), false, &no, &mut Quiet)?;
    let resumed = train(
        TrainArgs {
            epochs: Some(2),
            ..TrainArgs::default()
        },
        split.path(),
        true,
        &no,
        &mut Quiet,
    )?;
    assert!(
        model_bytes(straight.path()) == model_bytes(split.path()),
        "model files differ"
    );
    let metrics = |h: &[sgr_train::EpochRecord]| {
        h.iter()
            .map(|e| (e.loss, e.train_accuracy, e.test_accuracy))
            .collect::<Vec<_>>()
    };
    assert_eq!(metrics(&resumed.history), metrics(&r.history));

    // Interrupted mid-epoch (after 3 of 5 steps of epoch 1), then resumed: identical again, here with the
    // cosine schedule.
    let cosine = || TrainArgs {
        lr_schedule: Some(LrSchedule::Cosine),
        ..small_args(2)
    };
    let straight = tempfile::tempdir()?;
    let r = train(cosine(), straight.path(), false, &no, &mut Quiet)?;
    let interrupted = tempfile::tempdir()?;
    let stop = AtomicBool::new(false);
    let rec = train(
        cosine(),
        interrupted.path(),
        false,
        &stop,
        &mut StopAfterSteps::new(3, &stop),
    )?;
    assert_eq!(
        (rec.status, rec.steps_done, rec.partial.batches),
        (RunStatus::Interrupted, 3, 3)
    );
    let on_disk = read_record(interrupted.path())?;
    assert_eq!(on_disk.status, RunStatus::Interrupted);
    assert_eq!(on_disk.steps_done, 3);
    let done = train(
        TrainArgs::default(),
        interrupted.path(),
        true,
        &no,
        &mut Quiet,
    )?;
    assert_eq!(done.status, RunStatus::Complete);
    assert!(
        model_bytes(straight.path()) == model_bytes(interrupted.path()),
        "model files differ"
    );
    assert_eq!(
        done.history[0].loss, r.history[0].loss,
        "epoch metrics survive the interruption"
    );
    assert_eq!(done.history[1].test_accuracy, r.history[1].test_accuracy);
    Ok(())
}

#[test]
fn refuses_to_overwrite_and_to_resume_with_other_settings() -> TestResult {
    let no = AtomicBool::new(false);
    let dir = tempfile::tempdir()?;
    train(small_args(1), dir.path(), false, &no, &mut Quiet)?;
    let before = model_bytes(dir.path());
    let msg = train(small_args(1), dir.path(), false, &no, &mut Quiet)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("--resume") && msg.contains(&dir.path().display().to_string()),
        "{msg}"
    );
    let msg = train(
        TrainArgs {
            lr: Some(0.5),
            ..TrainArgs::default()
        },
        dir.path(),
        true,
        &no,
        &mut Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("--lr") && msg.contains("0.5") && msg.contains("0.001"),
        "{msg}"
    );
    let msg = train(
        TrainArgs {
            method: Some(name("wdecay")),
            ..TrainArgs::default()
        },
        dir.path(),
        true,
        &no,
        &mut Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("--method"), "{msg}");
    assert!(
        before == model_bytes(dir.path()),
        "failed attempts leave the run untouched"
    );
    let empty = tempfile::tempdir()?;
    let msg = train(TrainArgs::default(), empty.path(), true, &no, &mut Quiet)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no run.json"), "{msg}");
    // An unknown method is refused where its name is parsed (the command line), listing the known ones.
    let msg = "magic".parse::<sgr_train::MethodName>().unwrap_err();
    assert!(msg.contains("magic") && msg.contains("clean"), "{msg}");
    Ok(())
}

#[test]
fn adam_matches_hand_computed_updates_and_restores_exactly() -> TestResult {
    let w = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0], &Device::Cpu)?)?;
    let cfg = AdamConfig {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };
    let mut adam = Adam::new(vec![("w".into(), w.clone())], cfg.clone())?;
    // Loss Σ c·w with c = [3, −0.5]: constant gradient, so m̂ = g and v̂ = g² at every step and each step
    // moves w by −lr·g/(|g| + eps).
    let c = Tensor::new(&[3.0f64, -0.5], &Device::Cpu)?;
    let loss = |w: &Var| (w.as_tensor() * &c).unwrap().sum_all().unwrap();
    for _ in 0..3 {
        adam.step(&loss(&w).backward()?)?;
    }
    let got = w.as_tensor().to_vec1::<f64>()?;
    let step = |g: f64| 0.1 * g / (g.abs() + 1e-8);
    assert!((got[0] - (1.0 - 3.0 * step(3.0))).abs() < 1e-9, "{got:?}");
    assert!((got[1] - (-2.0 - 3.0 * step(-0.5))).abs() < 1e-9, "{got:?}");

    // A varying gradient, checked against the textbook recursion.
    let w2 = Var::from_tensor(&Tensor::new(&[0.5f64], &Device::Cpu)?)?;
    let mut adam2 = Adam::new(vec![("w".into(), w2.clone())], cfg.clone())?;
    let (mut m, mut v, mut x) = (0.0f64, 0.0f64, 0.5f64);
    for t in 1..=4 {
        let g = 2.0 * x; // d/dx x²
        m = 0.9 * m + 0.1 * g;
        v = 0.999 * v + 0.001 * g * g;
        x -= 0.1 * (m / (1.0 - 0.9f64.powi(t))) / ((v / (1.0 - 0.999f64.powi(t))).sqrt() + 1e-8);
        adam2.step(&w2.as_tensor().sqr()?.sum_all()?.backward()?)?;
    }
    assert!((w2.as_tensor().to_vec1::<f64>()?[0] - x).abs() < 1e-12);

    // Save, restore into a fresh optimiser, continue: same trajectory.
    let state: HashMap<String, Tensor> = adam.state()?;
    let w_copy = Var::from_tensor(&w.as_tensor().copy()?)?;
    let mut restored = Adam::new(vec![("w".into(), w_copy.clone())], cfg)?;
    restored.load_state(&state)?;
    assert_eq!(restored.step_count(), 3);
    adam.step(&loss(&w).backward()?)?;
    restored.step(&loss(&w_copy).backward()?)?;
    assert_eq!(
        w.as_tensor().to_vec1::<f64>()?,
        w_copy.as_tensor().to_vec1::<f64>()?
    );

    // A parameter without a gradient is an error, not a silent skip.
    let orphan = Var::from_tensor(&Tensor::new(&[1.0f64], &Device::Cpu)?)?;
    let mut a3 = Adam::new(vec![("orphan".into(), orphan)], AdamConfig::default())?;
    let msg = a3.step(&loss(&w).backward()?).unwrap_err().to_string();
    assert!(msg.contains("orphan"), "{msg}");
    Ok(())
}

#[test]
fn weight_decay_adds_half_wd_times_squared_weights() -> TestResult {
    use candle_nn::{VarBuilder, VarMap};
    use sgr_models::{Cnn, CnnConfig, init_params};
    use sgr_train::{MethodContext, StepInput, build_method};
    let vm = VarMap::new();
    let cfg = CnnConfig::mnist();
    init_params(&vm, &cfg, 1, DType::F64, &Device::Cpu)?;
    let model = Cnn::new(cfg, VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu))?;
    let x = Tensor::rand(0f64, 1f64, (4, 1, 28, 28), &Device::Cpu)?;
    let y = Tensor::new(&[0u32, 1, 2, 3], &Device::Cpu)?;
    let input = StepInput {
        model: &model,
        params: &vm,
        x: &x,
        y: &y,
        step: 0,
        seed: 0,
    };
    let train_set = tiny_set(1, 28, 28);
    let mnist = MethodContext {
        dataset: DatasetName::Mnist,
        train: &train_set,
    };
    let cifar_set = tiny_set(3, 32, 32);
    let cifar = MethodContext {
        dataset: DatasetName::Cifar10,
        train: &cifar_set,
    };
    let clean = build_method(name("clean"), &mnist, MethodOptions::default())?.loss(&input)?;
    let mut wd = build_method(name("wdecay"), &mnist, MethodOptions::default())?;
    assert_eq!(
        wd.options().weight_decay,
        Some(2e-4),
        "paper's MNIST default"
    );
    let cifar = build_method(name("wdecay"), &cifar, MethodOptions::default())?;
    assert_eq!(
        cifar.options().weight_decay,
        Some(5e-4),
        "paper's CIFAR-10 default"
    );
    let out = wd.loss(&input)?;
    let sq: f64 = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| n.ends_with("weight"))
        .map(|(_, v)| {
            v.as_tensor()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        })
        .sum();
    let expected = clean.loss.to_scalar::<f64>()? + 1e-4 * sq;
    assert!((out.loss.to_scalar::<f64>()? - expected).abs() < 1e-12);
    Ok(())
}

#[test]
fn plain_ops_train_on_candle_layers_to_the_same_numbers() -> TestResult {
    // `--plain-ops`: candle's own layers and autograd instead of the channels-last ops with explicit
    // gradients (which tests/methods.rs compares step by step). Here, that the trainer switches: in f64 the
    // trained parameters agree to rounding but not bit for bit (the gradients' sums run in another order),
    // and the record says which ran.
    let no = AtomicBool::new(false);
    let args = |plain_ops| TrainArgs {
        epochs: Some(1),
        train_limit: Some(128),
        test_limit: Some(64),
        augment: Some("none".into()),
        dtype: Some(sgr_train::FloatType::F64),
        plain_ops,
        ..small_args(1)
    };
    let (fast, plain) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let rf = train(args(false), fast.path(), false, &no, &mut Quiet)?;
    let rp = train(args(true), plain.path(), false, &no, &mut Quiet)?;
    assert!(!rf.plain_ops && rp.plain_ops);
    assert!(read_record(plain.path())?.plain_ops);
    let (lf, lp) = (rf.history[0].loss, rp.history[0].loss);
    assert!((lf - lp).abs() <= 1e-10 * lf.abs(), "loss {lf} vs {lp}");
    let load = |dir: &Path| {
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap()
    };
    let (a, b) = (load(fast.path()), load(plain.path()));
    assert_eq!(a.len(), b.len());
    let mut largest = 0f64;
    for (name, ta) in &a {
        let diff = sgr_testutil::max_abs_diff(ta, &b[name]);
        largest = largest.max(diff);
    }
    assert!(largest < 1e-9, "parameters differ by {largest}");
    assert!(
        largest > 0.0,
        "bit-identical: --plain-ops did not change the ops"
    );
    Ok(())
}

#[test]
fn validation_split_is_held_out_and_measured_instead_of_the_test_set() -> anyhow::Result<()> {
    let no = AtomicBool::new(false);
    let dir = tempfile::tempdir()?;
    // The subset has 5,000 training images: hold out the last 4,680, train on the first 320.
    let args = TrainArgs {
        train_limit: None,
        validation: Some(4680),
        pgd_eval_images: Some(40),
        ..small_args(1)
    };
    let r = train(args.clone(), dir.path(), false, &no, &mut Quiet)?;
    assert_eq!((r.train_images, r.validation_images), (320, 4680));
    assert_eq!(r.steps_done, 5, "320 images in batches of 64");
    assert_eq!(r.eval_split(), "validation");
    let fe = r.final_eval.as_ref().expect("final check");
    assert_eq!((fe.split.as_str(), fe.images), ("validation", 40));

    // The epoch's accuracy is the checkpoint's accuracy on the held-out tail, counted here independently.
    let full = sgr_data::load(DatasetName::MnistSubset, None)?;
    let (model, _) = sgr_models::load_model(
        &dir.path().join("model.safetensors"),
        DType::F32,
        &Device::Cpu,
    )?;
    let (x, y) = full.train.range(320, 5000, DType::F32, &Device::Cpu)?;
    let pred = candle_core::Module::forward(&model, &x)?
        .argmax(1)?
        .to_vec1::<u32>()?;
    let correct = pred
        .iter()
        .zip(y.to_vec1::<u32>()?)
        .filter(|(p, y)| **p == *y)
        .count();
    assert_eq!(r.history[0].test_accuracy, correct as f64 / 4680.0);
    // And its final check: clean accuracy on the first 40 held-out images.
    let first: usize = pred[..40]
        .iter()
        .zip(&y.to_vec1::<u32>()?[..40])
        .filter(|(p, y)| *p == *y)
        .count();
    assert_eq!(fe.clean_accuracy, first as f64 / 40.0);

    // run.json records the split; resuming keeps it and refuses another.
    let text = std::fs::read_to_string(dir.path().join("run.json"))?;
    assert!(text.contains("\"validation_images\": 4680"), "{text}");
    let resume = |validation| {
        let args = TrainArgs {
            validation,
            epochs: Some(2),
            ..TrainArgs::default()
        };
        train(args, dir.path(), true, &no, &mut Quiet)
    };
    let err = resume(Some(1000)).expect_err("other split on resume");
    assert!(err.to_string().contains("--validation"), "{err}");
    let r2 = resume(None)?;
    assert_eq!(
        (r2.epochs_done, r2.validation_images, r2.train_images),
        (2, 4680, 320)
    );
    // The final check is redone for the longer run on as many images as the first invocation asked for.
    let fe2 = r2.final_eval.as_ref().expect("final check after resume");
    assert_eq!((fe2.split.as_str(), fe2.images), ("validation", 40));

    // A split as large as the training set is refused, naming the flag.
    let big = tempfile::tempdir()?;
    let err = train(
        TrainArgs {
            validation: Some(5000),
            ..small_args(1)
        },
        big.path(),
        false,
        &no,
        &mut Quiet,
    )
    .expect_err("no training images left");
    assert!(err.to_string().contains("--validation 5000"), "{err}");
    Ok(())
}

#[test]
fn checkpoint_every_parses_steps_and_times() -> TestResult {
    use sgr_train::CheckpointEvery::{Seconds, Steps};
    for (s, want) in [
        ("200", Steps(200)),
        ("30s", Seconds(30.0)),
        ("10m", Seconds(600.0)),
        ("1.5h", Seconds(5400.0)),
    ] {
        assert_eq!(s.parse::<sgr_train::CheckpointEvery>(), Ok(want), "{s}");
    }
    for bad in ["0", "", "m", "-5m", "ten", "0s"] {
        let err = bad.parse::<sgr_train::CheckpointEvery>().expect_err(bad);
        assert!(err.contains("--checkpoint-every"), "{err}");
    }
    assert_eq!(sgr_train::CheckpointEvery::default(), Seconds(600.0));
    Ok(())
}

/// run.json as sgr wrote it before the schema field (string-typed settings, no `arch`): a real record of a
/// 50-epoch MNIST run, trimmed to two epochs.
#[test]
fn version_1_run_records_still_load_and_bad_ones_are_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let v1 = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/run-v1.json"),
    )?;
    std::fs::write(dir.path().join("run.json"), &v1)?;
    let r = read_record(dir.path())?;
    assert_eq!(r.schema, 1);
    assert_eq!(r.method, sgr_train::MethodName::Clean);
    assert_eq!(r.dataset, DatasetName::Mnist);
    assert_eq!(r.dtype, sgr_train::FloatType::F32);
    assert_eq!(r.device, sgr_models::DeviceKind::Cpu);
    assert_eq!((r.arch.as_deref(), r.validation_images), (None, 0));
    assert_eq!((r.epochs_done, r.history.len()), (2, 2));
    // Written back, it is a current record that reads the same.
    let text = serde_json::to_string(&sgr_train::RunRecord {
        schema: sgr_train::RUN_SCHEMA,
        ..r.clone()
    })?;
    assert!(
        text.contains("\"dataset\":\"mnist\"") && text.contains("\"dtype\":\"f32\""),
        "{text}"
    );
    // A record from a newer sgr, or with an unknown method, is refused naming the file.
    for (from, to, needle) in [
        (
            "\"sgr_version\"",
            "\"schema\": 99,\n  \"sgr_version\"",
            "schema 99",
        ),
        (
            "\"method\": \"clean\"",
            "\"method\": \"sgr-fancy\"",
            "sgr-fancy",
        ),
        ("\"dtype\": \"f32\"", "\"dtype\": \"f16\"", "f16"),
    ] {
        assert!(v1.contains(from), "{from}");
        std::fs::write(dir.path().join("run.json"), v1.replacen(from, to, 1))?;
        let err = read_record(dir.path()).expect_err(needle).to_string();
        assert!(err.contains("run.json") && err.contains(needle), "{err}");
    }
    Ok(())
}
