//! Every training method: the paper's defaults, the objectives against their formulas, exact resume of the
//! covariance estimate, and divergence handling. Sets CANDLE_GRAD_DO_NOT_DETACH (exact double backprop)
//! before any thread of this binary runs a backward pass.
#![allow(unsafe_code)] // set_var before any thread starts
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`

use std::sync::Once;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use sgr_attacks::{Attack, Fgsm, predicted_labels};
use sgr_data::DatasetName;
use sgr_train::{
    LrSchedule, MethodContext, MethodOptions, Quiet, RunStatus, StepInput, StopAfterSteps,
    TrainArgs, build_method, cross_entropy, read_record, train,
};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// A method by its command-line name.
fn name(s: &str) -> sgr_train::MethodName {
    s.parse().unwrap()
}

static FLAG: Once = Once::new();

fn setup() {
    FLAG.call_once(|| unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") });
}

fn embedded() -> sgr_data::Splits {
    sgr_data::load(DatasetName::MnistSubset, None).unwrap()
}

fn cifar_like() -> sgr_data::ImageSet {
    let d = 3 * 32 * 32;
    sgr_data::ImageSet {
        name: "tiny".into(),
        channels: 3,
        height: 32,
        width: 32,
        pixels: (0..4 * d)
            .map(|i| ((i * 37 + (i / d) * 59) % 256) as u8)
            .collect(),
        labels: vec![0, 1, 2, 3],
    }
}

#[test]
fn paper_defaults_are_resolved_and_recorded() -> TestResult {
    setup();
    let data = embedded();
    let mnist = MethodContext {
        dataset: DatasetName::Mnist,
        train: &data.train,
    };
    let cifar_set = cifar_like();
    let cifar = MethodContext {
        dataset: DatasetName::Cifar10,
        train: &cifar_set,
    };
    let lambda = |ctx: &MethodContext<'_>, m: &str| {
        build_method(name(m), ctx, MethodOptions::default())
            .unwrap_or_else(|e| panic!("{m}: {e}"))
            .options()
            .lambda
            .unwrap()
    };
    for (m, l_mnist, l_cifar) in [
        ("gn", 5.0, 0.075),
        ("sgr-grad", 0.1, 0.1),
        ("sgr-sign", 1.0, 0.5),
        ("fgsm-sgr", 0.5, 0.5),
        ("pgd-sgr", 1.0, 0.5),
        ("fgsm", 0.5, 0.5),
        ("pgd", 0.5, 0.5),
    ] {
        assert_eq!(lambda(&mnist, m), l_mnist, "{m} on MNIST");
        assert_eq!(lambda(&cifar, m), l_cifar, "{m} on CIFAR-10");
    }
    let o = build_method(name("fgsm-sgr"), &mnist, MethodOptions::default())?
        .options()
        .clone();
    assert_eq!(o.eps, Some(32.0));
    assert_eq!(o.cov.map(|c| c.name()), Some("dense"));
    assert_eq!(o.xi_labels.map(|c| c.name()), Some("predicted"));
    assert!((o.scale_to.unwrap() - data.train.mean_pixel_variance()).abs() < 1e-15);
    let o = build_method(name("pgd-sgr"), &cifar, MethodOptions::default())?
        .options()
        .clone();
    assert_eq!(
        (o.eps, o.cov.map(|c| c.name()), o.cov_radius),
        (Some(4.0), Some("covfun"), Some(8))
    );
    // The LRC experiment's λ for SGR with the synthetic covariance.
    let lrc = MethodOptions {
        cov: Some("lrc".parse::<sgr_train::CovKind>()?),
        ..MethodOptions::default()
    };
    let o = build_method(name("sgr-sign"), &mnist, lrc)?
        .options()
        .clone();
    assert_eq!((o.lambda, o.zeta), (Some(5.0), Some(8.0)));
    // Clear errors for bad settings.
    let bad = |m: &str, o: MethodOptions| build_method(name(m), &mnist, o).unwrap_err().to_string();
    assert!(
        bad(
            "gn",
            MethodOptions {
                cov: Some("dense".parse::<sgr_train::CovKind>()?),
                ..Default::default()
            }
        )
        .contains("Σ = I")
    );
    // Unknown names are refused where they are parsed, listing the choices.
    let err = "wavelet".parse::<sgr_train::CovKind>().unwrap_err();
    assert!(
        err.contains("--cov 'wavelet'") && err.contains("dense, covfun"),
        "{err}"
    );
    let err = "newton".parse::<sgr_train::SecondOrderMode>().unwrap_err();
    assert!(err.contains("exact, fd"), "{err}");
    let err = "sgr-fancy".parse::<sgr_train::MethodName>().unwrap_err();
    assert!(err.contains("clean, wdecay"), "{err}");
    assert_eq!("fd-central".parse(), Ok(sgr_train::SecondOrderMode::Fd));
    assert!(
        bad(
            "pgd",
            MethodOptions {
                lambda: Some(1.5),
                ..Default::default()
            }
        )
        .contains("[0, 1]")
    );
    assert!(
        bad(
            "fgsm",
            MethodOptions {
                eps: Some(-1.0),
                ..Default::default()
            }
        )
        .contains("--eps")
    );
    Ok(())
}

#[test]
fn every_method_takes_finite_steps_that_lower_the_loss() -> TestResult {
    setup();
    let data = embedded();
    let ctx = MethodContext {
        dataset: DatasetName::MnistSubset,
        train: &data.train,
    };
    let (x, y) = data.train.range(0, 32, DType::F32, &Device::Cpu)?;
    for &method_name in sgr_train::MethodName::ALL {
        let name = method_name.name();
        let mut method = build_method(method_name, &ctx, MethodOptions::default())?;
        let (model, vm) = sgr_testutil::model(sgr_models::CnnConfig::mnist(), 5, DType::F32);
        let vars: Vec<_> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut adam = sgr_train::Adam::new(vars, sgr_train::AdamConfig::default())?;
        let mut losses = vec![];
        for step in 0..6 {
            let out = method.loss(&StepInput {
                model: &model,
                params: &vm,
                x: &x,
                y: &y,
                step,
                seed: 1,
            })?;
            let l = out.loss.to_scalar::<f32>()?;
            assert!(l.is_finite(), "{name}: loss {l}");
            for (k, v) in &out.metrics {
                assert!(
                    v.to_dtype(DType::F64)?.to_scalar::<f64>()?.is_finite(),
                    "{name}: {k}"
                );
            }
            losses.push(l);
            adam.step(&out.gradients()?)?;
        }
        // On one repeated batch the objective must fall (LRC noise is redrawn each step, hence the margin).
        assert!(losses[5] < losses[0], "{name}: {losses:?}");
    }
    Ok(())
}

/// The objective of `name` (default options, f64) at its first step on 16 embedded images; also returns the
/// model, the batch and c (the training set's mean pixel variance).
fn first_objective(method: &str) -> (sgr_models::Cnn, Tensor, Tensor, f64, f64) {
    setup();
    let data = embedded();
    let ctx = MethodContext {
        dataset: DatasetName::MnistSubset,
        train: &data.train,
    };
    let (x, y) = data.train.range(0, 16, DType::F64, &Device::Cpu).unwrap();
    let (model, vm) = sgr_testutil::model(sgr_models::CnnConfig::mnist(), 2, DType::F64);
    let mut m = build_method(name(method), &ctx, MethodOptions::default()).unwrap();
    let out = m
        .loss(&StepInput {
            model: &model,
            params: &vm,
            x: &x,
            y: &y,
            step: 0,
            seed: 0,
        })
        .unwrap();
    let objective = out.loss.to_scalar::<f64>().unwrap();
    (model, x, y, objective, data.train.mean_pixel_variance())
}

#[test]
fn adversarial_training_is_half_clean_half_fgsm_for_predicted_labels() -> TestResult {
    let (model, x, y, got, _) = first_objective("fgsm");
    let frozen = model.frozen();
    let y_hat = predicted_labels(&frozen, &x)?;
    let adv = Fgsm.run(&frozen, &x, &y_hat, 32.0 / 255.0)?;
    let ce = |t: &Tensor| {
        cross_entropy(&candle_core::Module::forward(&model, t).unwrap(), &y)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let expected = 0.5 * ce(&x) + 0.5 * ce(&adv);
    assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    Ok(())
}

#[test]
fn sgr_objective_is_ce_plus_lambda_omega() -> TestResult {
    let (model, x, y, got, c) = first_objective("gn");
    // GN: Ω = c/(2m) Σ ‖∇_x log p_y‖², checked against the attacks crate's loss gradient (∇_x of the mean CE).
    let (g_ce, _) = sgr_attacks::loss_gradient(&model.frozen(), &x, &y)?;
    let g = g_ce; // per-example gradients of log p_y (of the summed CE), up to sign
    let omega = c / 32.0 * g.sqr()?.sum_all()?.to_scalar::<f64>()?;
    let ce = cross_entropy(&candle_core::Module::forward(&model, &x)?, &y)?.to_scalar::<f64>()?;
    assert!(
        (got - (ce + 5.0 * omega)).abs() < 1e-9 * got,
        "{got} vs {}",
        ce + 5.0 * omega
    );
    Ok(())
}

fn sgr_args(epochs: usize) -> TrainArgs {
    TrainArgs {
        method: Some(name("sgr-sign")),
        dataset: Some(DatasetName::MnistSubset),
        epochs: Some(epochs),
        batch_size: Some(32),
        train_limit: Some(96),
        test_limit: Some(64),
        seed: Some(4),
        lr_schedule: Some(LrSchedule::Constant),
        pgd_eval_images: Some(0),
        ..TrainArgs::default()
    }
}

#[test]
fn sgr_run_resumes_exactly_with_its_covariance_estimate() -> TestResult {
    setup();
    let no = AtomicBool::new(false);
    let straight = tempfile::tempdir()?;
    let r = train(sgr_args(2), straight.path(), false, &no, &mut Quiet)?;
    assert_eq!(r.status, RunStatus::Complete);
    assert!(r.history.iter().all(|e| e.metrics["omega"] > 0.0));
    // Interrupt mid-epoch, then resume: Σ̂ (and Adam) must come back exactly.
    let split = tempfile::tempdir()?;
    let stop = AtomicBool::new(false);
    let mut obs = StopAfterSteps::new(4, &stop);
    let r1 = train(sgr_args(2), split.path(), false, &stop, &mut obs)?;
    assert_eq!(r1.status, RunStatus::Interrupted);
    let r2 = train(TrainArgs::default(), split.path(), true, &no, &mut Quiet)?;
    assert_eq!(r2.status, RunStatus::Complete);
    let bytes = |d: &std::path::Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(
        bytes(straight.path()) == bytes(split.path()),
        "resumed SGR run differs"
    );
    assert!(
        std::fs::read(straight.path().join("optimizer.safetensors"))?
            == std::fs::read(split.path().join("optimizer.safetensors"))?
    );
    let rec = read_record(split.path())?;
    assert_eq!(
        rec.method_options.second_order.map(|c| c.name()),
        Some("exact")
    );
    // A different λ on resume is refused, naming the flag.
    let mut a = TrainArgs::default();
    a.method_options.lambda = Some(0.3);
    let err = train(a, split.path(), true, &no, &mut Quiet)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--lambda"), "{err}");
    Ok(())
}

#[test]
fn divergence_stops_the_run_and_keeps_the_checkpoint() -> TestResult {
    setup();
    let no = AtomicBool::new(false);
    let dir = tempfile::tempdir()?;
    let mut args = sgr_args(1);
    args.method = Some(name("gn"));
    args.method_options.lambda = Some(1e15);
    let err = train(args, dir.path(), false, &no, &mut Quiet)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("diverging") && err.contains("checkpoint"),
        "{err}"
    );
    let rec = read_record(dir.path())?;
    assert_eq!(rec.steps_done, 0);
    assert!(dir.path().join("model.safetensors").is_file());
    Ok(())
}

#[test]
fn data_covariance_matches_the_dense_estimate_and_trains() -> TestResult {
    setup();
    let data = embedded();
    let chunked = sgr_train::data_covariance(&data.train)?;
    let (x, _) = data
        .train
        .range(0, data.train.len(), DType::F64, &Device::Cpu)?;
    let direct = sgr_covariance::Dense::data_covariance(&x)?;
    let diff = sgr_testutil::max_abs_diff(chunked.matrix(), direct.matrix());
    assert!(diff < 1e-12, "chunked data covariance differs by {diff}");
    use sgr_covariance::Covariance;
    // (Tensors hold pixels / 255 rounded through f32; mean_pixel_variance works in f64 from the bytes.)
    assert!((chunked.mean_diag() - data.train.mean_pixel_variance()).abs() < 1e-6);
    // And a fixed-Σ SGR step runs with it.
    let ctx = MethodContext {
        dataset: DatasetName::MnistSubset,
        train: &data.train,
    };
    let opts = MethodOptions {
        cov: Some("data".parse::<sgr_train::CovKind>()?),
        ..MethodOptions::default()
    };
    let mut m = build_method(name("sgr-sign"), &ctx, opts)?;
    assert_eq!(
        m.options().xi_labels,
        None,
        "a fixed Σ needs no perturbations"
    );
    let (xb, yb) = data.train.range(0, 8, DType::F32, &Device::Cpu)?;
    let (model, vm) = sgr_testutil::model(sgr_models::CnnConfig::mnist(), 3, DType::F32);
    let out = m.loss(&StepInput {
        model: &model,
        params: &vm,
        x: &xb,
        y: &yb,
        step: 0,
        seed: 0,
    })?;
    assert!(out.loss.to_scalar::<f32>()?.is_finite());
    Ok(())
}

/// CIFAR-10's binary format: a label byte, then 3·32·32 pixel bytes, per image.
fn write_cifar_batch(path: &std::path::Path, n: usize, seed: u64) {
    let mut bytes = Vec::with_capacity(n * 3073);
    let mut s = seed;
    for i in 0..n {
        bytes.push((i % 10) as u8);
        for _ in 0..3072 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            bytes.push((s >> 56) as u8);
        }
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn sgr_sign_on_cifar_uses_a_psd_covariance_function() -> TestResult {
    setup();
    let data = tempfile::tempdir()?;
    for (k, name) in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
    ]
    .iter()
    .enumerate()
    {
        write_cifar_batch(&data.path().join(format!("{name}.bin")), 4, k as u64);
    }
    write_cifar_batch(&data.path().join("test_batch.bin"), 8, 9);
    let out = tempfile::tempdir()?;
    let args = TrainArgs {
        method: Some(name("sgr-sign")),
        dataset: Some(DatasetName::Cifar10),
        data_dir: Some(data.path().to_owned()),
        epochs: Some(1),
        batch_size: Some(10),
        pgd_eval_images: Some(8),
        ..TrainArgs::default()
    };
    let no = AtomicBool::new(false);
    let r = train(args, out.path(), false, &no, &mut Quiet)?;
    assert_eq!(r.status, RunStatus::Complete);
    let o = &r.method_options;
    assert_eq!(
        (o.lambda, o.eps),
        (Some(0.5), None),
        "ε is for the attack-based variants"
    );
    assert_eq!(
        (o.cov.map(|c| c.name()), o.cov_radius, o.cov_psd),
        (Some("covfun"), Some(8), Some(true))
    );
    assert!(r.history[0].metrics["omega"] > 0.0);
    let f = r.final_eval.unwrap();
    assert_eq!((f.images, f.eps_255), (8, 4.0));
    Ok(())
}

/// Every method takes its gradients from one entry point, explicit on the CPU's fast path
/// (`Cnn::explicit_gradients`) and autograd on candle's own layers (the plain path, as on GPUs); the two must
/// agree, objective and every
/// parameter gradient, including SGR's uncentred term and a fixed covariance. On MNIST digits, whose blank
/// regions make pooling windows tie (both paths route a tie to the first maximum).
#[test]
fn explicit_steps_equal_autograd_through_candle_layers() -> TestResult {
    setup();
    let data = embedded();
    let ctx = MethodContext {
        dataset: DatasetName::MnistSubset,
        train: &data.train,
    };
    let idx: Vec<usize> = (0..6).collect();
    let (x, y) = data.train.batch(&idx, None, DType::F64, &Device::Cpu)?;
    let cases: [(&str, MethodOptions); 9] = [
        ("clean", MethodOptions::default()),
        ("wdecay", MethodOptions::default()),
        ("fgsm", MethodOptions::default()),
        ("pgd", MethodOptions::default()),
        ("lrc", MethodOptions::default()),
        ("sgr-sign", MethodOptions::default()),
        (
            "sgr-grad",
            MethodOptions {
                uncentred: Some(true),
                ..Default::default()
            },
        ),
        ("gn", MethodOptions::default()),
        (
            "sgr-sign",
            MethodOptions {
                cov: Some("lrc".parse::<sgr_train::CovKind>()?),
                ..Default::default()
            },
        ),
    ];
    for (method_name, mut options) in cases {
        let name = method_name;
        // A large λ for the penalties: at initialisation the input gradients are small, and the penalty's
        // share of the parameter gradients should not be lost in the cross-entropy's.
        if matches!(name, "sgr-sign" | "sgr-grad" | "gn") {
            options.lambda = Some(1e4);
        }
        let (model, vm) = sgr_testutil::model(sgr_models::CnnConfig::mnist(), 3, DType::F64);
        let mut plain = model.clone();
        plain.set_plain_ops(true);
        let mut outs = Vec::new();
        for net in [&model, &plain] {
            let mut method = build_method(self::name(method_name), &ctx, options.clone())?;
            // Two steps: SGR's second sees a covariance averaged over two batches of perturbations.
            let mut last = None;
            for step in 0..2 {
                last = Some(method.loss(&StepInput {
                    model: net,
                    params: &vm,
                    x: &x,
                    y: &y,
                    step,
                    seed: 0,
                })?);
            }
            outs.push(last.unwrap());
        }
        let (fast, reference) = (&outs[0], &outs[1]);
        // Both come through the one gradient entry point: the fast model on its explicit route, the plain one
        // through autograd (double backprop for the penalties).
        assert!(fast.grads.is_some() && reference.grads.is_some(), "{name}");
        assert!(
            model.uses_fast_ops(&x) && !plain.uses_fast_ops(&x),
            "{name}: routes"
        );
        let (a, b) = (
            fast.loss.to_scalar::<f64>()?,
            reference.loss.to_scalar::<f64>()?,
        );
        assert!(
            (a - b).abs() <= 1e-12 * b.abs(),
            "{name}: objective {a} vs {b}"
        );
        let (ga, gb) = (fast.gradients()?, reference.gradients()?);
        let vars = vm.data().lock().unwrap();
        for (pname, var) in vars.iter() {
            use sgr_train::ParamGradients;
            let (ta, tb) = (
                ga.gradient(pname, var).unwrap(),
                gb.gradient(pname, var).unwrap(),
            );
            let (scale, diff) = (
                sgr_testutil::max_abs(tb),
                sgr_testutil::max_abs_diff(ta, tb),
            );
            assert!(
                scale > 0.0 && diff <= 1e-9 * scale,
                "{name} {pname}: max diff {diff:.3e} (scale {scale:.3e})"
            );
        }
    }
    Ok(())
}
