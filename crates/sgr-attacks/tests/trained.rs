//! Attacks on the paper's MNIST CNN trained briefly on the embedded subset: the orderings any honest attack
//! suite shows (gradient-masking sanity checks), and that attacks leave the model untouched.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use sgr_attacks::{
    Attack, DeepFool, Fgsm, NoiseSource, Pgd, Rand, WorstOfN, accuracy, loss_gradient,
};
use sgr_data::{DatasetName, Split, load_split};
use sgr_models::{Cnn, CnnConfig, init_params};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn trained_model() -> (Cnn, VarMap) {
    let train = load_split(DatasetName::MnistSubset, None, Split::Train).unwrap();
    let vm = VarMap::new();
    init_params(&vm, &CnnConfig::mnist(), 0, DType::F32, &Device::Cpu).unwrap();
    let model = Cnn::new(
        CnnConfig::mnist(),
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let mut opt = candle_nn::AdamW::new(
        vm.all_vars(),
        candle_nn::ParamsAdamW {
            lr: 1e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    for start in (0..3072).step_by(128).chain((0..3072).step_by(128)) {
        let (x, y) = train
            .range(start, start + 128, DType::F32, &Device::Cpu)
            .unwrap();
        let loss = candle_nn::loss::cross_entropy(&model.forward(&x).unwrap(), &y).unwrap();
        opt.backward_step(&loss).unwrap();
    }
    (model, vm)
}

fn acc(model: &dyn Module, x: &Tensor, y: &Tensor) -> f64 {
    let (c, n) = accuracy(model, x, y).unwrap();
    c as f64 / n as f64
}

#[test]
fn attack_orderings_and_masking_checks_on_a_trained_cnn() -> TestResult {
    let (model, vm) = trained_model();
    let frozen = model.frozen();
    let test = load_split(DatasetName::MnistSubset, None, Split::Test)?;
    let n = 100;
    let (x, y) = test.range(0, n, DType::F32, &Device::Cpu)?;
    let before: Vec<f32> = vm.data().lock().unwrap()["conv1.weight"]
        .as_tensor()
        .flatten_all()?
        .to_vec1()?;

    let clean = acc(&model, &x, &y);
    assert!(clean > 0.8, "briefly trained model: clean accuracy {clean}");
    let eps = 0.1;
    let fgsm = acc(&model, &Fgsm.run(&frozen, &x, &y, eps)?, &y);
    let pgd = acc(&model, &Pgd::whitebox().run(&frozen, &x, &y, eps)?, &y);
    let rand = acc(&model, &Rand { seed: 1 }.run(&frozen, &x, &y, eps)?, &y);
    eprintln!("clean {clean:.3} rand {rand:.3} fgsm {fgsm:.3} pgd {pgd:.3} at eps {eps}");
    assert!(
        pgd <= fgsm && fgsm <= clean && fgsm < rand,
        "pgd {pgd} fgsm {fgsm} rand {rand} clean {clean}"
    );
    assert!(
        pgd < clean - 0.2,
        "PGD at ε = 0.1 should hurt an undefended model: {pgd} vs {clean}"
    );

    // Accuracy never rises with ε, nor with PGD steps (one example of slack for the finite step schedule).
    let slack = 1.0 / n as f64 + 1e-9;
    let at = |e: f64| {
        acc(
            &model,
            &Pgd::whitebox().run(&frozen, &x, &y, e).unwrap(),
            &y,
        )
    };
    let by_eps = vec![at(0.03), pgd, at(0.2)];
    assert!(
        by_eps.windows(2).all(|w| w[1] <= w[0] + slack),
        "PGD accuracy by ε (0.03, 0.1, 0.2): {by_eps:?}"
    );
    let mut by_steps: Vec<f64> = [1usize, 4]
        .iter()
        .map(|&s| {
            acc(
                &model,
                &Pgd {
                    steps: s,
                    ..Pgd::whitebox()
                }
                .run(&frozen, &x, &y, eps)
                .unwrap(),
                &y,
            )
        })
        .collect();
    by_steps.push(pgd);
    assert!(
        by_steps.windows(2).all(|w| w[1] <= w[0] + slack),
        "PGD accuracy by steps (1, 4, 10): {by_steps:?}"
    );
    // ε = 255/255: PGD must break essentially everything (else gradients are masked).
    let full = acc(&model, &Pgd::whitebox().run(&frozen, &x, &y, 1.0)?, &y);
    assert!(full <= 0.02, "PGD at ε = 1 leaves accuracy {full}");

    // DeepFool fools nearly everything with small perturbations.
    let (x50, _) = test.range(0, 50, DType::F32, &Device::Cpu)?;
    let y50 = y.narrow(0, 0, 50)?;
    let df = DeepFool::default().attack(&frozen, &x50)?;
    let fooled = df.fooled.iter().filter(|&&f| f).count();
    assert!(fooled >= 48, "DeepFool fooled {fooled}/50");
    assert!(df.rho > 0.0 && df.rho < 0.5, "ρ = {}", df.rho);

    // Long-range correlated noise at a large scale breaks more examples than at a small one.
    let lrc = |e: f64| {
        let a = WorstOfN {
            source: NoiseSource::lrc((1, 28, 28), 8.0).unwrap(),
            n: 20,
            seed: 3,
        };
        let r = a.attack(&frozen, &x50, &y50, e).unwrap();
        r.broken.iter().filter(|&&b| b).count()
    };
    let (small, large) = (lrc(0.05), lrc(0.6));
    assert!(
        small <= large && large > small,
        "broken at ε 0.05: {small}, at 0.6: {large}"
    );

    // Attacks change neither the parameters nor the model's outputs, and the frozen copy computes the same
    // input gradients as the trainable model.
    let after: Vec<f32> = vm.data().lock().unwrap()["conv1.weight"]
        .as_tensor()
        .flatten_all()?
        .to_vec1()?;
    assert_eq!(before, after);
    let (g1, _) = loss_gradient(&model, &x50, &y50)?;
    let (g2, _) = loss_gradient(&frozen, &x50, &y50)?;
    assert_eq!((g1 - g2)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
    Ok(())
}

/// AutoAttack on the briefly trained CNN: the standard suite (fewer targets and queries, to keep the test
/// short) is at least as strong as APGD-CE, APGD-CE as PGD-10, PGD-10 as FGSM; with an unbounded budget it
/// breaks everything.
#[test]
fn autoattack_orders_below_pgd_and_fgsm_on_a_trained_cnn() -> TestResult {
    use sgr_attacks::{AaAttack, AutoAttack};
    let (model, _vm) = trained_model();
    let frozen = model.frozen();
    let test = load_split(DatasetName::MnistSubset, None, Split::Test)?;
    let n = 100;
    let (x, y) = test.range(0, n, DType::F32, &Device::Cpu)?;
    let eps = 0.1;
    let suite = AutoAttack {
        eps,
        batch_size: 64,
        targets: 2,
        fab_steps: 30,
        square_queries: 500,
        ..AutoAttack::default()
    };
    let state = suite.run_all(&frozen, &x, &y)?;
    let apgd_ce = state.after[0];
    let aa = state.robust_accuracy();
    let pgd = acc(&model, &Pgd::whitebox().run(&frozen, &x, &y, eps)?, &y);
    let fgsm = acc(&model, &Fgsm.run(&frozen, &x, &y, eps)?, &y);
    eprintln!(
        "clean {:.2} fgsm {fgsm:.2} pgd-10 {pgd:.2} apgd-ce {apgd_ce:.2} aa {aa:.2} ({:?})",
        state.clean_accuracy(),
        state.after
    );
    let tol = 2.0 / n as f64;
    assert!(
        aa <= apgd_ce && apgd_ce <= pgd + tol && pgd <= fgsm + tol,
        "{:?}",
        state.after
    );
    assert!(
        aa < state.clean_accuracy() - 0.2,
        "ε = 0.1 hurts an undefended model"
    );
    // An unbounded budget leaves nothing (else gradients would be masked).
    let unbounded = AutoAttack {
        eps: 1.0,
        attacks: vec![AaAttack::ApgdCe],
        ..suite.clone()
    };
    assert_eq!(unbounded.run_all(&frozen, &x, &y)?.robust_accuracy(), 0.0);
    Ok(())
}
