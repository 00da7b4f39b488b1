//! White-box table, transfer matrix, masking checks and worst-of-N accuracy on linear two-class models,
//! where every entry follows by hand from the examples' margins.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Module, Result, Tensor};
use sgr_attacks::NoiseSource;
use sgr_eval::{
    Named, TransferConfig, TransferMatrix, WhiteboxConfig, transfer_column, transfer_matrix,
    whitebox, whitebox_table, worst_of_n_accuracy,
};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Two classes on 1×2×2 images: logit₀ = 0, logit₁ = scale·(w·x − w·½) (so x = ½ is on the boundary).
struct Linear {
    w: [f64; 4],
    scale: f64,
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = Tensor::new(&self.w, x.device())?
            .to_dtype(x.dtype())?
            .reshape((4, 1))?;
        let offset: f64 = self.w.iter().sum::<f64>() * 0.5;
        let z = ((x.flatten_from(1)?.matmul(&w)? - offset)? * self.scale)?;
        Tensor::cat(&[&z.zeros_like()?, &z], 1)
    }
}

const WA: [f64; 4] = [1.0, -1.0, 1.0, -1.0];
const WB: [f64; 4] = [1.0, 1.0, -1.0, -1.0];
const EPS: f64 = 0.05; // FGSM/PGD move w·x by 4ε = 0.2, FGM by 2ε = 0.1.

/// Examples `x = ½ + a·w_A/4 + b·w_B/4`, so that `w_A·x − w_A·½ = a` and `w_B·(…) = b` (w_A ⟂ w_B).
/// Signed margins for model A (label 1 wants a > 0): 4 × 0.3 (safe), 3 × 0.15 (FGSM/PGD break them, FGM
/// does not), 2 × 0.05 (every gradient attack breaks them), 1 × −0.1 (misclassified).
fn data() -> (Tensor, Tensor) {
    let margins_a = [0.3, 0.3, 0.3, 0.3, 0.15, 0.15, 0.15, 0.05, 0.05, -0.1];
    let margins_b = [0.3, 0.15, 0.05, -0.1, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3];
    let labels: Vec<u32> = (0..10).map(|i| (i % 2) as u32).collect();
    let mut x = Vec::new();
    for i in 0..10 {
        let sign = if labels[i] == 1 { 1.0 } else { -1.0 };
        let (a, b) = (sign * margins_a[i], sign * margins_b[i]);
        for p in 0..4 {
            x.push(0.5 + a * WA[p] / 4.0 + b * WB[p] / 4.0);
        }
    }
    (
        Tensor::from_vec(x, (10, 1, 2, 2), &Device::Cpu).unwrap(),
        Tensor::new(labels.as_slice(), &Device::Cpu).unwrap(),
    )
}

fn cfg() -> WhiteboxConfig {
    WhiteboxConfig {
        eps: EPS,
        batch_size: 4, // several batches, so batching is exercised
        ..WhiteboxConfig::default()
    }
}

#[test]
fn whitebox_row_matches_the_margins() -> TestResult {
    let (x, y) = data();
    let a = Linear { w: WA, scale: 1.0 };
    let row = whitebox(
        Named {
            name: "A",
            model: &a,
        },
        &x,
        &y,
        &cfg(),
    )?;
    assert_eq!(row.images, 10);
    assert!((row.test - 0.9).abs() < 1e-12, "{row:?}");
    assert!((row.fgm - 0.7).abs() < 1e-12, "{row:?}");
    assert!((row.fgsm - 0.4).abs() < 1e-12, "{row:?}");
    assert!((row.pgd - 0.4).abs() < 1e-12, "{row:?}");
    // Noise moves w·x by at most 4ε: the safe four always survive, the misclassified one never does.
    assert!(row.rand >= 0.4 && row.rand <= 0.9, "{row:?}");
    // DeepFool on a linear model: one step to the boundary, ‖r‖ = 1.02·(|a| + 1e-4)/‖w‖₂, ‖w‖₂ = 2.
    let xs = x.flatten_from(1)?.to_vec2::<f64>()?;
    let margins = [0.3, 0.3, 0.3, 0.3, 0.15, 0.15, 0.15, 0.05, 0.05, 0.1];
    let expected: f64 = margins
        .iter()
        .zip(&xs)
        .map(|(m, xi)| 1.02 * (m + 1e-4) / 2.0 / xi.iter().map(|v| v * v).sum::<f64>().sqrt())
        .sum::<f64>()
        / 10.0;
    assert!(
        (row.fool_rho - expected).abs() < 1e-6,
        "{} vs {expected}",
        row.fool_rho
    );
    // An honest linear model passes every masking check; PGD at 255/255 reaches the corners.
    assert!(row.masking.passed(), "{:#?}", row.masking);
    assert_eq!(row.masking.eps_curve.last().unwrap(), &(1.0, 0.0));
    // The same seed gives the same row.
    let again = whitebox(
        Named {
            name: "A",
            model: &a,
        },
        &x,
        &y,
        &cfg(),
    )?;
    assert!(again == row);
    Ok(())
}

#[test]
fn masking_checks_fire_on_a_saturated_model() -> TestResult {
    // Same decisions as A, but logits × 10⁴: the softmax saturates and the loss gradient underflows to 0 in
    // f32, so gradient attacks see nothing (the defensive-distillation failure mode).
    let (x, y) = data();
    let (x, y) = (x.to_dtype(DType::F32)?, y);
    let masked = Linear { w: WA, scale: 1e4 };
    let row = whitebox(
        Named {
            name: "masked",
            model: &masked,
        },
        &x,
        &y,
        &cfg(),
    )?;
    assert!((row.test - 0.9).abs() < 1e-6);
    assert!(
        (row.pgd - 0.9).abs() < 1e-6,
        "PGD must be fooled by the masking: {row:?}"
    );
    let failed: Vec<&str> = row.masking.failed().map(|c| c.name.as_str()).collect();
    assert!(
        failed.contains(&"PGD at ε = 255/255 reaches ~0 %"),
        "{failed:?}"
    );
    let table = whitebox_table(std::slice::from_ref(&row)).to_markdown();
    assert!(table.contains("FLAGGED: "), "{table}");
    Ok(())
}

#[test]
fn transfer_matrix_matches_the_margins_and_flags_masking() -> TestResult {
    let (x, y) = data();
    let a = Linear { w: WA, scale: 1.0 };
    let b = Linear { w: WB, scale: 1.0 };
    let masked = Linear { w: WA, scale: 1e4 };
    let (x32, y32) = (x.to_dtype(DType::F32)?, y.clone());
    let models = [
        Named {
            name: "A",
            model: &a,
        },
        Named {
            name: "B",
            model: &b,
        },
        Named {
            name: "A-masked",
            model: &masked,
        },
    ];
    let cfg = TransferConfig {
        eps: EPS,
        steps: 40,
        batch_size: 3,
    };
    let m = transfer_matrix(&models, &x32, &y32, &cfg)?;
    // B's margins: 0.3, 0.15, 0.05, −0.1, then 0.3 × 6 → test 9/10, white-box 7/10 (0.15 and 0.05 broken).
    let expect = [
        // A: white-box 0.4; B's perturbations are orthogonal to w_A (test 0.9); A-masked's do not move.
        [0.4, 0.9, 0.9],
        [0.9, 0.7, 0.9],
        // The masked model falls to A's examples (same boundary) but not to its own.
        [0.4, 0.9, 0.9],
    ];
    for (t, row) in expect.iter().enumerate() {
        for (s, want) in row.iter().enumerate() {
            assert!(
                (m.accuracy[t][s] - want).abs() < 1e-6,
                "[{t}][{s}] = {} (expected {})",
                m.accuracy[t][s],
                expect[t][s]
            );
        }
    }
    assert_eq!(
        m.test
            .iter()
            .map(|t| (t * 10.0).round())
            .collect::<Vec<_>>(),
        [9.0, 9.0, 9.0]
    );
    let verdicts: Vec<bool> = m.checks.iter().map(|c| c.passed).collect();
    assert_eq!(verdicts, [true, true, false], "{:#?}", m.checks);
    let md = m.table().to_markdown();
    assert!(md.contains("**40.0** (!)"), "{md}");
    // Column by column (what a cached evaluation stores): column s holds every model on s's examples.
    let columns = (0..3)
        .map(|s| transfer_column(&models, s, &x32, &y32, &cfg))
        .collect::<sgr_eval::Result<Vec<_>>>()?;
    for (s, col) in columns.iter().enumerate() {
        for (t, &a) in col.iter().enumerate() {
            assert!(
                (a - expect[t][s]).abs() < 1e-6,
                "column {s}, model {t}: {a}"
            );
        }
    }
    assert_eq!(
        TransferMatrix::from_columns(&models, &x32, &y32, &cfg, &columns)?,
        m
    );
    assert!(TransferMatrix::from_columns(&models, &x32, &y32, &cfg, &columns[..2]).is_err());
    assert!(transfer_column(&models, 3, &x32, &y32, &cfg).is_err());
    Ok(())
}

#[test]
fn worst_of_n_equals_brute_force_and_falls_with_draws() -> TestResult {
    let (x, y) = data();
    let a = Linear { w: WA, scale: 1.0 };
    let source = NoiseSource::lrc((1, 2, 2), 2.0)?;
    let eps = 0.15;
    let acc = |draws| worst_of_n_accuracy(&a, &source, &x, &y, eps, draws, 7, 4).unwrap();
    let (a5, a20) = (acc(5), acc(20));
    assert!(a20 <= a5, "{a20} > {a5}");
    // Oracle: every example of batch b, every draw d, from the same noise stream, no early exit.
    let labels = y.to_vec1::<u32>()?;
    let mut correct = 0;
    for (bi, (s, len)) in sgr_eval::batches(10, 4).enumerate() {
        let xb = x.narrow(0, s, len)?;
        let mut ok = vec![true; len];
        for d in 0..20 {
            let noise =
                sgr_attacks::WorstOfN::draw_noise(&source, sgr_eval::batch_seed(7, 2, bi), d, len)?
                    .reshape(xb.dims())?;
            let xp = (&xb + (noise * eps)?)?.clamp(0.0, 1.0)?;
            let pred = a.forward(&xp)?.argmax(1)?.to_vec1::<u32>()?;
            for i in 0..len {
                ok[i] &= pred[i] == labels[s + i];
            }
        }
        correct += ok.iter().filter(|&&o| o).count();
    }
    assert!((a20 - correct as f64 / 10.0).abs() < 1e-12);
    // ε = 0 is clean accuracy.
    let clean = worst_of_n_accuracy(&a, &source, &x, &y, 0.0, 3, 7, 4)?;
    assert!((clean - 0.9).abs() < 1e-12);
    Ok(())
}

fn aa_cfg(attacks: Vec<sgr_attacks::AaAttack>) -> sgr_eval::AutoAttackEval {
    sgr_eval::AutoAttackEval {
        suite: sgr_attacks::AutoAttack {
            eps: EPS,
            attacks,
            batch_size: 4,
            apgd_steps: 30,
            square_queries: 400,
            ..sgr_attacks::AutoAttack::default()
        },
        pgd_steps: 10,
        masking_images: 0,
    }
}

#[test]
fn autoattack_row_matches_the_margins_and_resumes_through_saves() -> TestResult {
    use sgr_attacks::AaAttack;
    let (x, y) = data();
    let a = Linear { w: WA, scale: 1.0 };
    let named = Named {
        name: "A",
        model: &a,
    };
    // Two classes: the targeted attacks have nothing to target, so the suite here is APGD-CE and Square.
    let cfg = aa_cfg(vec![AaAttack::ApgdCe, AaAttack::Square]);
    let mut saves = Vec::new();
    let state = sgr_eval::run_suite(
        named,
        &x,
        &y,
        &cfg.suite,
        None,
        std::time::Duration::ZERO,
        |s| {
            saves.push(s.clone());
            Ok(())
        },
        |_, _| std::ops::ControlFlow::Continue(()),
    )?;
    let row = sgr_eval::autoattack_row(named, &x, &y, &cfg, &state)?;
    // L∞ margins 0.3 (×4) survive ε = 0.05 (w·x moves by at most 4ε = 0.2); 0.15 and 0.05 fall; as PGD.
    assert!((row.clean - 0.9).abs() < 1e-12);
    assert!((row.robust - 0.4).abs() < 1e-12, "{row:?}");
    assert!((row.pgd - 0.4).abs() < 1e-12);
    assert!(row.failed().next().is_none(), "{:#?}", row.checks);
    // Every save is a state to resume from, and each resumed run ends where the uninterrupted one did.
    assert!(
        saves.len() > 3,
        "saved after every unit with save_every = 0"
    );
    for saved in &saves {
        let resumed = sgr_eval::run_suite(
            named,
            &x,
            &y,
            &cfg.suite,
            Some(saved.clone()),
            std::time::Duration::from_secs(3600),
            |_| Ok(()),
            |_, _| std::ops::ControlFlow::Continue(()),
        )?;
        assert_eq!(resumed.robust, state.robust);
        assert_eq!(resumed.after, state.after);
    }
    let table = sgr_eval::autoattack_table(std::slice::from_ref(&row));
    assert_eq!(
        table.header[..6],
        ["MODEL", "TEST", "PGD-10", "APGD-CE", "SQUARE", "AA"].map(String::from)
    );
    assert!(sgr_eval::autoattack_legend(&cfg).contains("30 iterations"));
    Ok(())
}

#[test]
fn autoattack_masking_checks_fire_on_a_saturated_model() -> TestResult {
    use sgr_attacks::AaAttack;
    let (x, y) = data();
    let x = x.to_dtype(DType::F32)?;
    let masked = Linear { w: WA, scale: 1e4 };
    let named = Named {
        name: "masked",
        model: &masked,
    };
    let cfg = aa_cfg(vec![AaAttack::ApgdCe, AaAttack::Square]);
    let state = cfg.suite.run_all(&masked, &x, &y)?;
    let row = sgr_eval::autoattack_row(named, &x, &y, &cfg, &state)?;
    // The cross-entropy gradient underflows: APGD-CE breaks nothing, Square (no gradients) breaks what the
    // margins allow.
    assert!((row.after[0].1 - 0.9).abs() < 1e-6, "{row:?}");
    assert!((row.robust - 0.4).abs() < 1e-6, "{row:?}");
    let failed: Vec<&str> = row.failed().map(|c| c.name.as_str()).collect();
    assert!(
        failed.contains(&"Square adds little to the gradient attacks"),
        "{failed:?}"
    );
    assert!(
        failed.contains(&"APGD-CE with an unbounded budget reaches ~0 %"),
        "{failed:?}"
    );
    let md = sgr_eval::autoattack_table(std::slice::from_ref(&row)).to_markdown();
    assert!(md.contains("FLAGGED"), "{md}");
    Ok(())
}
