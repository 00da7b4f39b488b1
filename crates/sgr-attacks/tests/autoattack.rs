//! AutoAttack's pieces against closed forms: the DLR losses by hand, APGD's checkpoint schedule, the box-constrained
//! hyperplane projections, and each attack on linear softmax models whose per-point L∞ / L2 margins are known;
//! gradient masking (vanishing gradients) that fools the gradient attacks but not Square; resumption.
#![allow(clippy::unwrap_used)]

use candle_core::{D, DType, Device, Module, Result, Tensor};
use sgr_attacks::logits::ranked;
use sgr_attacks::{
    AaAttack, Apgd, ApgdTargeted, Attack, AutoAttack, AutoAttackState, FabTargeted, LogitLoss,
    Norm, Square, apgd_checkpoints, project_to_hyperplane,
};
use sgr_testutil::rand_tensor;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

#[test]
fn dlr_losses_equal_hand_computed_values_and_their_gradients_finite_differences() -> Result<()> {
    // z sorted decreasingly: 4 (class 1), 3 (class 3), 2 (class 2), 1 (class 0), 0 (class 4).
    let z = [1.0, 4.0, 2.0, 3.0, 0.0];
    let (v, _) = LogitLoss::Dlr.value_and_grad(&z, 0, None);
    assert!((v - 1.5).abs() < 1e-12, "−(1 − 4)/(4 − 2) = 1.5, got {v}");
    let (v, _) = LogitLoss::DlrTargeted.value_and_grad(&z, 0, Some(3));
    assert!(
        (v - 0.8).abs() < 1e-12,
        "−(1 − 3)/(4 − ½(2 + 1)) = 0.8, got {v}"
    );
    // Label on top: the margin to the runner-up, normalised by π1 − π3.
    let z2 = [5.0, 1.0, 3.0, 2.0];
    let (v, _) = LogitLoss::Dlr.value_and_grad(&z2, 0, None);
    assert!((v + 2.0 / 3.0).abs() < 1e-12, "−(5 − 3)/(5 − 2), got {v}");
    let (v, _) = LogitLoss::DlrTargeted.value_and_grad(&z2, 0, Some(1));
    assert!(
        (v + 4.0 / 3.5).abs() < 1e-12,
        "−(5 − 1)/(5 − ½(2 + 1)), got {v}"
    );
    let (v, _) = LogitLoss::Ce.value_and_grad(&z2, 2, None);
    let lse = z2.iter().map(|a: &f64| a.exp()).sum::<f64>().ln();
    assert!((v - (lse - 3.0)).abs() < 1e-12);
    // Gradients against central differences (away from ties, so the sort order is fixed).
    let zs = [0.3, 2.1, -0.7, 1.4, 0.9, -1.6];
    for (loss, t) in [
        (LogitLoss::Ce, None),
        (LogitLoss::Dlr, None),
        (LogitLoss::DlrTargeted, Some(4)),
        (LogitLoss::TargetMinusLabel, Some(4)),
    ] {
        for y in [0, 1] {
            let (_, g) = loss.value_and_grad(&zs, y, t);
            for j in 0..zs.len() {
                let h = 1e-6;
                let mut p = zs;
                p[j] += h;
                let mut m = zs;
                m[j] -= h;
                let fd =
                    (loss.value_and_grad(&p, y, t).0 - loss.value_and_grad(&m, y, t).0) / (2.0 * h);
                assert!(
                    (fd - g[j]).abs() < 1e-7,
                    "{loss:?} y {y} ∂/∂z{j}: {} vs fd {fd}",
                    g[j]
                );
            }
        }
    }
    Ok(())
}

#[test]
fn apgd_checkpoints_follow_the_reference_schedule() -> TestResult {
    assert_eq!(apgd_checkpoints(100), vec![22, 41, 57, 70, 80, 87, 93, 99]);
    assert_eq!(apgd_checkpoints(10), (2..=10).collect::<Vec<_>>());
    assert_eq!(apgd_checkpoints(1), vec![1]);
    Ok(())
}

/// The projection's optimality by definition: feasible, and no smaller radius reaches the hyperplane.
#[test]
fn hyperplane_projections_are_the_smallest_feasible_moves() -> Result<()> {
    let d = 9;
    for case in 0..40u64 {
        let t = sgr_testutil::flat_f64(&rand_tensor(&[d], 100 + case, 0.0, 1.0));
        let w = sgr_testutil::flat_f64(&rand_tensor(&[d], 200 + case, -1.0, 1.0));
        let wt: f64 = w.iter().zip(&t).map(|(a, b)| a * b).sum();
        // Small gaps (no box constraint binds), then larger ones up to unreachable.
        let gap = [0.01, -0.03, 0.4, -0.8, 1.5, -3.0, 6.0][case as usize % 7];
        let b = wt - gap;
        let reach: f64 = w
            .iter()
            .zip(&t)
            .map(|(wi, ti)| {
                if (gap > 0.0) == (*wi > 0.0) {
                    wi.abs() * ti
                } else {
                    wi.abs() * (1.0 - ti)
                }
            })
            .sum();
        for norm in [Norm::LInf, Norm::L2] {
            let p = project_to_hyperplane(&t, &w, b, norm);
            let moved: Vec<f64> = t.iter().zip(&p).map(|(a, b)| a + b).collect();
            assert!(
                moved.iter().all(|v| (-1e-12..=1.0 + 1e-12).contains(v)),
                "stays in the box"
            );
            let hit: f64 = w.iter().zip(&moved).map(|(a, b)| a * b).sum();
            if gap.abs() < reach - 1e-9 {
                assert!(
                    (hit - b).abs() < 1e-9,
                    "case {case} {norm:?}: on the hyperplane ({hit} vs {b})"
                );
            } else {
                // Unreachable: every coordinate at the bound that moves w·x towards b.
                for i in 0..d {
                    let toward = if (gap > 0.0) == (w[i] > 0.0) {
                        -t[i]
                    } else {
                        1.0 - t[i]
                    };
                    assert!(
                        (p[i] - toward).abs() < 1e-12,
                        "case {case} {norm:?}: coordinate {i} at its bound"
                    );
                }
                continue;
            }
            match norm {
                Norm::LInf => {
                    let r = p.iter().fold(0f64, |m, v| m.max(v.abs()));
                    // The largest shift of w·x within a slightly smaller L∞ ball falls short of the gap.
                    let best: f64 = w
                        .iter()
                        .zip(&t)
                        .map(|(wi, ti)| {
                            let room = if (gap > 0.0) == (*wi > 0.0) {
                                *ti
                            } else {
                                1.0 - ti
                            };
                            wi.abs() * room.min(r * (1.0 - 1e-6))
                        })
                        .sum();
                    assert!(best < gap.abs(), "case {case}: radius {r} is not minimal");
                    if case % 7 < 2 {
                        let l1: f64 = w.iter().map(|v| v.abs()).sum();
                        assert!(
                            (r - gap.abs() / l1).abs() < 1e-12,
                            "closed form without the box"
                        );
                    }
                }
                Norm::L2 => {
                    // KKT by bisection (a different algorithm): d(μ) = clip(−μ·s·w) in the box, ⟨w, d(μ)⟩ = −gap.
                    let s = gap.signum();
                    let shift = |mu: f64| -> f64 {
                        w.iter()
                            .zip(&t)
                            .map(|(wi, ti)| wi * (-mu * s * wi).clamp(-ti, 1.0 - ti))
                            .sum::<f64>()
                    };
                    let (mut lo, mut hi) = (0.0, 1e6);
                    for _ in 0..200 {
                        let mid = 0.5 * (lo + hi);
                        if shift(mid).abs() < gap.abs() {
                            lo = mid
                        } else {
                            hi = mid
                        }
                    }
                    for (i, (wi, ti)) in w.iter().zip(&t).enumerate() {
                        let expect = (-hi * s * wi).clamp(-ti, 1.0 - ti);
                        assert!(
                            (p[i] - expect).abs() < 1e-9,
                            "case {case} coordinate {i}: {} vs {expect}",
                            p[i]
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// logits = scale·(W·flatten(x) + b); `masked`: the same outputs with a vanishing input gradient.
struct Linear {
    w: Tensor,
    b: Tensor,
    scale: f64,
    masked: bool,
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let flat = x.flatten_from(1)?;
        let input = if self.masked {
            flat.detach()
        } else {
            flat.clone()
        };
        let z = (input
            .matmul(&self.w.t()?.to_dtype(x.dtype())?)?
            .broadcast_add(&self.b.to_dtype(x.dtype())?)?
            * self.scale)?;
        if self.masked {
            // Keeps the input in the graph with a derivative of exactly zero (shattered gradients).
            let zero = Tensor::zeros(1, x.dtype(), x.device())?;
            z.broadcast_add(&flat.sum_keepdim(D::Minus1)?.broadcast_mul(&zero)?)
        } else {
            Ok(z)
        }
    }
}

struct Problem {
    model: Linear,
    x: Tensor,
    y: Tensor,
    /// Per point the exact smallest L∞ and L2 perturbation that changes the class (the box never binds).
    linf: Vec<f64>,
    l2: Vec<f64>,
}

/// `n` points in `[0.35, 0.65]^d` of a `k`-class linear model, labelled with the model's prediction.
fn problem(k: usize, dims: &[usize], n: usize, seed: u64) -> Problem {
    let d: usize = dims.iter().product();
    let w = rand_tensor(&[k, d], seed, -1.0, 1.0);
    let b = rand_tensor(&[k], seed + 1, -0.2, 0.2);
    let mut shape = vec![n];
    shape.extend_from_slice(dims);
    let x = rand_tensor(&shape, seed + 2, 0.35, 0.65);
    let model = Linear {
        w: w.clone(),
        b,
        scale: 1.0,
        masked: false,
    };
    let z = model.forward(&x).unwrap().to_vec2::<f64>().unwrap();
    let wr = w.to_vec2::<f64>().unwrap();
    let y: Vec<u32> = z.iter().map(|r| ranked(r)[0] as u32).collect();
    let dist = |p: f64| -> Vec<f64> {
        z.iter()
            .zip(&y)
            .map(|(zi, &yi)| {
                (0..k)
                    .filter(|&c| c != yi as usize)
                    .map(|c| {
                        let dw: Vec<f64> = wr[yi as usize]
                            .iter()
                            .zip(&wr[c])
                            .map(|(a, b)| a - b)
                            .collect();
                        let dual = if p == 1.0 {
                            dw.iter().map(|v| v.abs()).sum::<f64>()
                        } else {
                            dw.iter().map(|v| v * v).sum::<f64>().sqrt()
                        };
                        (zi[yi as usize] - zi[c]) / dual
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
    };
    Problem {
        linf: dist(1.0),
        l2: dist(2.0),
        x,
        y: Tensor::new(y.as_slice(), &Device::Cpu).unwrap(),
        model,
    }
}

fn broken(model: &dyn Module, adv: &Tensor, y: &Tensor) -> Vec<bool> {
    let pred = model
        .forward(adv)
        .unwrap()
        .argmax(D::Minus1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    pred.iter()
        .zip(y.to_vec1::<u32>().unwrap())
        .map(|(p, l)| *p != l)
        .collect()
}

fn max_dist(adv: &Tensor, x: &Tensor, norm: Norm) -> f64 {
    let a = adv.flatten_from(1).unwrap().to_vec2::<f64>().unwrap();
    let b = x.flatten_from(1).unwrap().to_vec2::<f64>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(p, q)| {
            let d: Vec<f64> = p.iter().zip(q).map(|(u, v)| u - v).collect();
            match norm {
                Norm::LInf => d.iter().fold(0f64, |m, v| m.max(v.abs())),
                Norm::L2 => d.iter().map(|v| v * v).sum::<f64>().sqrt(),
            }
        })
        .fold(0.0, f64::max)
}

/// ε at the median margin, so about half the points can be broken; points within 20 % of ε are not judged.
fn eps_and_classes(m: &[f64]) -> (f64, Vec<Option<bool>>) {
    let mut s = m.to_vec();
    s.sort_by(f64::total_cmp);
    let eps = s[s.len() / 2];
    let cls = m
        .iter()
        .map(|&v| {
            if v < 0.8 * eps {
                Some(true)
            } else if v > 1.2 * eps {
                Some(false)
            } else {
                None
            }
        })
        .collect();
    (eps, cls)
}

#[test]
fn apgd_ce_and_apgd_t_break_exactly_the_points_with_margin_below_eps() -> Result<()> {
    let p = problem(5, &[1, 3, 4], 40, 7);
    for norm in [Norm::LInf, Norm::L2] {
        let margins = if norm == Norm::LInf { &p.linf } else { &p.l2 };
        let (eps, cls) = eps_and_classes(margins);
        let attacks: [Box<dyn Attack>; 3] = [
            Box::new(Apgd {
                norm,
                ..Apgd::default()
            }),
            Box::new(Apgd {
                norm,
                loss: LogitLoss::Dlr,
                ..Apgd::default()
            }),
            Box::new(ApgdTargeted {
                norm,
                ..ApgdTargeted::default()
            }),
        ];
        for attack in attacks {
            let adv = attack.run(&p.model, &p.x, &p.y, eps)?;
            assert!(
                max_dist(&adv, &p.x, norm) <= eps * (1.0 + 1e-9),
                "{}: inside the ball",
                attack.name()
            );
            let br = broken(&p.model, &adv, &p.y);
            for (i, c) in cls.iter().enumerate() {
                if let Some(expect) = c {
                    assert_eq!(
                        br[i],
                        *expect,
                        "{} {norm:?} point {i}: margin {} vs ε {eps}",
                        attack.name(),
                        margins[i]
                    );
                }
            }
            assert!(cls.iter().filter(|c| **c == Some(true)).count() >= 10);
        }
    }
    Ok(())
}

#[test]
fn fab_t_finds_the_minimal_perturbation_of_a_linear_model() -> Result<()> {
    let p = problem(5, &[1, 3, 4], 30, 11);
    for norm in [Norm::LInf, Norm::L2] {
        let exact = if norm == Norm::LInf { &p.linf } else { &p.l2 };
        let fab = FabTargeted {
            norm,
            ..FabTargeted::default()
        };
        let found = fab.minimal(&p.model, &p.x, &p.y)?;
        for (i, f) in found.iter().enumerate() {
            let f = f.as_ref().expect("FAB flips every point of a linear model");
            // Never below the true minimum; the overshoot η = 1.05 and the backward steps leave it ≤ 1 % above.
            assert!(
                f.distance >= exact[i] * (1.0 - 1e-9),
                "{norm:?} point {i}: {} < {}",
                f.distance,
                exact[i]
            );
            assert!(
                f.distance <= exact[i] * 1.01,
                "{norm:?} point {i}: {} vs minimal {}",
                f.distance,
                exact[i]
            );
        }
        // As an ε-bounded attack: broken iff the minimal perturbation is within ε.
        let (eps, cls) = eps_and_classes(exact);
        let br = broken(&p.model, &fab.run(&p.model, &p.x, &p.y, eps)?, &p.y);
        for (i, c) in cls.iter().enumerate() {
            if let Some(expect) = c {
                assert_eq!(br[i], *expect, "FAB-T {norm:?} point {i}");
            }
        }
    }
    Ok(())
}

#[test]
fn square_breaks_points_well_inside_eps_without_gradients() -> Result<()> {
    let p = problem(4, &[1, 6, 6], 24, 13);
    let mut s = p.linf.clone();
    s.sort_by(f64::total_cmp);
    let eps = s[s.len() / 2];
    let adv = Square::default().run(&p.model, &p.x, &p.y, eps)?;
    assert!(max_dist(&adv, &p.x, Norm::LInf) <= eps * (1.0 + 1e-9));
    let br = broken(&p.model, &adv, &p.y);
    for (i, m) in p.linf.iter().enumerate() {
        if *m < 0.5 * eps {
            assert!(br[i], "point {i}: margin {m}, ε {eps}");
        }
        if *m > eps {
            assert!(!br[i], "point {i} cannot be broken");
        }
    }
    Ok(())
}

#[test]
fn vanishing_gradients_fool_the_gradient_attacks_but_not_square() -> Result<()> {
    let mut p = problem(4, &[1, 8, 8], 60, 17);
    p.model.masked = true;
    // ε a little above the largest margin; only points with margin ≥ ε/2, which a random start in 64
    // dimensions does not reach (its shift of a logit difference has a standard deviation ~ε/10 of the maximum).
    let eps = p.linf.iter().copied().fold(0.0, f64::max) / 0.9;
    let keep: Vec<u32> = (0..p.linf.len() as u32)
        .filter(|&i| p.linf[i as usize] >= 0.5 * eps)
        .collect();
    let idx = Tensor::new(keep.as_slice(), &Device::Cpu)?;
    let (x, y) = (p.x.index_select(&idx, 0)?, p.y.index_select(&idx, 0)?);
    let n = keep.len() as f64;
    assert!(n >= 10.0, "{n} points");
    let suite = AutoAttack {
        eps,
        batch_size: 10,
        ..AutoAttack::default()
    };
    let state = suite.run_all(&p.model, &x, &y)?;
    assert_eq!(state.after.len(), 4);
    assert!(
        (state.after[0] - 1.0).abs() < 1e-12,
        "APGD-CE sees a zero gradient: {:?}",
        state.after
    );
    assert!(
        (state.after[2] - 1.0).abs() < 1e-12,
        "FAB-T and APGD-T too: {:?}",
        state.after
    );
    assert!(
        state.after[3] <= 0.2,
        "Square breaks most points: {:?}",
        state.after
    );
    Ok(())
}

#[test]
fn saturated_softmax_hides_from_ce_but_not_from_the_scale_invariant_dlr() -> Result<()> {
    let mut p = problem(5, &[1, 3, 4], 40, 7);
    p.model.scale = 1e4;
    let x = p.x.to_dtype(DType::F32)?;
    let (eps, cls) = eps_and_classes(&p.linf);
    let ce = broken(
        &p.model,
        &Apgd::default().run(&p.model, &x, &p.y, eps)?,
        &p.y,
    );
    let t = broken(
        &p.model,
        &ApgdTargeted::default().run(&p.model, &x, &p.y, eps)?,
        &p.y,
    );
    let breakable = cls.iter().filter(|c| **c == Some(true)).count();
    assert!(
        ce.iter().filter(|&&b| b).count() < breakable / 2,
        "CE's gradient underflows: {ce:?}"
    );
    for (i, c) in cls.iter().enumerate() {
        if let Some(expect) = c {
            assert_eq!(t[i], *expect, "APGD-T point {i}");
        }
    }
    Ok(())
}

fn strip_time(mut s: AutoAttackState) -> AutoAttackState {
    s.seconds.iter_mut().for_each(|t| *t = 0.0);
    s
}

#[test]
fn the_suite_is_seeded_resumable_and_cumulative() -> Result<()> {
    let p = problem(5, &[1, 6, 6], 30, 23);
    let mut s = p.linf.clone();
    s.sort_by(f64::total_cmp);
    let suite = AutoAttack {
        eps: s[s.len() / 2],
        batch_size: 7,
        apgd_steps: 20,
        fab_steps: 20,
        square_queries: 300,
        targets: 3,
        seed: 5,
        ..AutoAttack::default()
    };
    let whole = strip_time(suite.run_all(&p.model, &p.x, &p.y)?);
    assert_eq!(
        whole,
        strip_time(suite.run_all(&p.model, &p.x, &p.y)?),
        "same seed, same run"
    );
    // Cumulative: accuracies never rise, and every broken point names its attack.
    let clean = whole.clean_accuracy();
    let mut prev = clean;
    for a in &whole.after {
        assert!(*a <= prev + 1e-12);
        prev = *a;
    }
    assert!(
        whole.robust_accuracy() < clean,
        "ε at the median margin breaks points"
    );
    for i in 0..whole.n {
        assert_eq!(
            whole.broken_by[i].is_some(),
            whole.clean[i] && !whole.robust[i]
        );
    }
    // Interrupt after every number of units: save, reload, continue.
    let mut units = 0;
    let mut st = suite.start(&p.model, &p.x, &p.y)?;
    while !suite.step(&p.model, &p.x, &p.y, &mut st)?.done {
        units += 1;
    }
    assert!(units > 10, "several units: {units}");
    for stop in [1, units / 3, units / 2, units - 1] {
        let mut st = suite.start(&p.model, &p.x, &p.y)?;
        for _ in 0..stop {
            suite.step(&p.model, &p.x, &p.y, &mut st)?;
        }
        let json =
            serde_json::to_string(&st).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut back: AutoAttackState =
            serde_json::from_str(&json).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        assert_eq!(back, st, "the state survives JSON exactly");
        while !suite.step(&p.model, &p.x, &p.y, &mut back)?.done {}
        assert_eq!(
            strip_time(back),
            whole,
            "resumed after {stop} of {units} units"
        );
    }
    // A different seed draws differently (random starts, squares) but stays a valid run.
    let other = AutoAttack {
        seed: 6,
        ..suite.clone()
    };
    assert!(other.run_all(&p.model, &p.x, &p.y)?.after.len() == 4);
    // Bad settings are refused with a message.
    let l2_square = AutoAttack {
        norm: Norm::L2,
        ..suite.clone()
    };
    let err = l2_square
        .start(&p.model, &p.x, &p.y)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Square"), "{err}");
    assert!("apgd-x".parse::<AaAttack>().is_err());
    Ok(())
}
