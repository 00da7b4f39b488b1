//! λ selection on a validation split: the rule on hand-made records (eligibility, ties, refusals) and on the
//! repository's own MNIST sweep, whose choice was worked out by hand in docs/results/mnist.md.

use std::path::Path;

use sgr_train::{
    ACCURACY_TOLERANCE_POINTS as TOL, FinalEval, MethodName, RunRecord, RunStatus, SweepError,
    read_record, select_lambda,
};

fn record(acc: f64, pgd: f64) -> anyhow::Result<RunRecord> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let text = std::fs::read_to_string(dir.join("run-v1.json"))?;
    let mut r: RunRecord = serde_json::from_str(&text)?;
    r.status = RunStatus::Complete;
    r.validation_images = 5000;
    r.history.last_mut().expect("an epoch").test_accuracy = acc;
    r.final_eval = Some(FinalEval {
        attack: "PGD-10".into(),
        eps_255: 32.0,
        split: "validation".into(),
        images: 5000,
        clean_accuracy: acc,
        pgd_accuracy: pgd,
    });
    Ok(r)
}

#[test]
fn the_rule_takes_the_most_robust_lambda_within_a_tenth_of_a_point() -> anyhow::Result<()> {
    let clean = record(0.9900, 0.60)?;
    let runs = vec![
        (0.5, record(0.9895, 0.80)?), // −0.05 points: eligible
        (1.0, record(0.9889, 0.95)?), // −0.11 points: not eligible, however robust
        (2.0, record(0.9950, 0.80)?), // ties on PGD with 0.5, more accurate: wins
        (4.0, record(0.9950, 0.80)?), // ties on both with 2: the smaller λ wins
    ];
    let s = select_lambda(MethodName::SgrSign, &clean, &runs, TOL)?;
    assert_eq!(s.chosen, 2.0);
    let eligible: Vec<bool> = s.candidates.iter().map(|c| c.eligible).collect();
    assert_eq!(eligible, [true, false, true, true]);

    // Exactly 0.1 points below is still eligible.
    let s = select_lambda(
        MethodName::Gn,
        &clean,
        &[(3.0, record(0.9890, 0.7)?), (6.0, record(0.9950, 0.6)?)],
        TOL,
    )?;
    assert_eq!(s.chosen, 3.0);

    // A wider tolerance admits the more robust λ = 1.
    assert_eq!(
        select_lambda(MethodName::SgrSign, &clean, &runs, 0.2)?.chosen,
        1.0
    );

    // Nothing eligible, an unfinished run, a run without a validation split: refused, saying which.
    let e =
        select_lambda(MethodName::Gn, &clean, &[(3.0, record(0.98, 0.9)?)], TOL).expect_err("none");
    assert!(matches!(e, SweepError::NoneEligible { .. }), "{e}");
    let mut running = record(0.995, 0.9)?;
    running.status = RunStatus::Running;
    let e = select_lambda(MethodName::Gn, &clean, &[(3.0, running)], TOL).expect_err("unfinished");
    assert!(
        e.to_string().contains("λ = 3") && e.to_string().contains("not finished"),
        "{e}"
    );
    let mut no_split = record(0.995, 0.9)?;
    no_split.validation_images = 0;
    let e = select_lambda(MethodName::Gn, &no_split, &[], TOL).expect_err("no split");
    assert!(e.to_string().contains("--validation"), "{e}");
    Ok(())
}

/// The committed 5-epoch MNIST sweep (runs/mnist-sweep): sgr-sign 0.25 (tied with 8 on PGD, more accurate)
/// and gn 10 (20 and 40 fall below the accuracy floor).
#[test]
fn the_repository_sweep_selects_what_the_report_says() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runs/mnist-sweep");
    let clean = read_record(&root.join("clean-s0"))?;
    for (method, grid, want) in [
        (
            MethodName::SgrSign,
            &["0.25", "0.5", "1", "2", "4", "8"][..],
            0.25,
        ),
        (
            MethodName::Gn,
            &["1.25", "2.5", "5", "10", "20", "40"][..],
            10.0,
        ),
    ] {
        let runs = grid
            .iter()
            .map(|l| {
                Ok((
                    l.parse::<f64>()?,
                    read_record(&root.join(format!("{method}-l{l}-s0")))?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let s = select_lambda(method, &clean, &runs, TOL)?;
        assert_eq!(s.chosen, want, "{method}: {:?}", s.candidates);
    }
    Ok(())
}
