//! Attacks on a linear softmax classifier, where each has a closed form.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`

use candle_core::{D, DType, Device, Module, Result, Tensor};
use sgr_attacks::{
    Attack, DeepFool, Fgm, Fgsm, NoiseSource, Norm, Pgd, Rand, WorstOfN, loss_gradient,
};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// logits = W·flatten(x) + b.
struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.flatten_from(1)?
            .matmul(&self.w.t()?)?
            .broadcast_add(&self.b)
    }
}

fn lcg(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

fn setup() -> (Linear, Tensor, Tensor) {
    let (k, d, b) = (4, 12, 5);
    let w = Tensor::from_vec(lcg(1, k * d, -1.0, 1.0), (k, d), &Device::Cpu).unwrap();
    let bias = Tensor::from_vec(lcg(2, k, -0.1, 0.1), k, &Device::Cpu).unwrap();
    let x = Tensor::from_vec(lcg(3, b * d, 0.3, 0.7), (b, 1, 3, 4), &Device::Cpu).unwrap();
    let y = Tensor::new(&[0u32, 1, 2, 3, 1], &Device::Cpu).unwrap();
    (Linear { w, b: bias }, x, y)
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.flatten_from(1).unwrap().to_vec2::<f64>().unwrap()
}

/// ∇ₓ CE = Wᵀ (softmax(Wx + b) − e_y), by hand.
fn closed_form_gradient(m: &Linear, x: &Tensor, y: &Tensor) -> Vec<Vec<f64>> {
    let p = candle_nn::ops::softmax(&m.forward(x).unwrap(), D::Minus1)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let w = m.w.to_vec2::<f64>().unwrap();
    let labels = y.to_vec1::<u32>().unwrap();
    p.iter()
        .zip(&labels)
        .map(|(pi, &yi)| {
            (0..w[0].len())
                .map(|j| {
                    (0..w.len())
                        .map(|k| w[k][j] * (pi[k] - f64::from(u8::from(k as u32 == yi))))
                        .sum()
                })
                .collect()
        })
        .collect()
}

#[test]
fn gradient_fgsm_and_fgm_equal_their_closed_forms() -> TestResult {
    let (m, x, y) = setup();
    let g = closed_form_gradient(&m, &x, &y);
    let (ours, _) = loss_gradient(&m, &x, &y)?;
    for (a, b) in rows(&ours).iter().zip(&g) {
        for (p, q) in a.iter().zip(b) {
            assert!((p - q).abs() < 1e-12);
        }
    }
    let eps = 0.05;
    let xs = rows(&x);
    let fgsm = rows(&Fgsm.run(&m, &x, &y, eps)?);
    let fgm = rows(&Fgm.run(&m, &x, &y, eps)?);
    for i in 0..xs.len() {
        let norm = g[i].iter().map(|v| v * v).sum::<f64>().sqrt();
        for j in 0..xs[i].len() {
            assert!((fgsm[i][j] - (xs[i][j] + eps * g[i][j].signum())).abs() < 1e-12);
            assert!((fgm[i][j] - (xs[i][j] + eps * g[i][j] / norm)).abs() < 1e-12);
        }
    }
    Ok(())
}

#[test]
fn deepfool_finds_the_minimal_l2_perturbation_of_a_linear_model() -> TestResult {
    let (m, x, _) = setup();
    let w = m.w.to_vec2::<f64>()?;
    let logits = m.forward(&x)?.to_vec2::<f64>()?;
    let res = DeepFool::default().attack(&m, &x)?;
    let xs = rows(&x);
    let adv = rows(&res.adversarial);
    for i in 0..xs.len() {
        let k0 = (0..4)
            .max_by(|&a, &b| logits[i][a].total_cmp(&logits[i][b]))
            .ok_or("no classes")?;
        // Exact minimal L2 distance to another class's region: min_k (f_k0 − f_k)/‖w_k0 − w_k‖.
        let dist = (0..4)
            .filter(|&k| k != k0)
            .map(|k| {
                let wn = w[k]
                    .iter()
                    .zip(&w[k0])
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    .sqrt();
                (logits[i][k0] - logits[i][k]) / wn
            })
            .fold(f64::INFINITY, f64::min);
        let moved = adv[i]
            .iter()
            .zip(&xs[i])
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(res.fooled[i], "example {i} not fooled");
        // One linear step lands exactly there, times 1 + overshoot (plus DeepFool's 1e-4/‖w‖ nudge).
        assert!(
            (moved - dist * 1.02).abs() < 2e-4,
            "example {i}: moved {moved}, minimal {dist}"
        );
    }
    assert!(res.rho > 0.0 && res.rho.is_finite());
    Ok(())
}

#[test]
fn pgd_stays_in_the_ball_and_the_box_and_eps_zero_is_the_identity() -> TestResult {
    let (m, x, y) = setup();
    for norm in [Norm::LInf, Norm::L2] {
        let pgd = Pgd {
            steps: 15,
            step_ratio: 0.2,
            norm,
            random_start: true,
            seed: 3,
        };
        let eps = 0.25;
        let adv = pgd.run(&m, &x, &y, eps)?;
        let delta = (&adv - &x)?;
        let a = adv.flatten_all()?.to_vec1::<f64>()?;
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        match norm {
            Norm::LInf => assert!(delta.abs()?.max_all()?.to_scalar::<f64>()? <= eps + 1e-12),
            Norm::L2 => {
                for r in rows(&delta) {
                    assert!(r.iter().map(|v| v * v).sum::<f64>().sqrt() <= eps + 1e-9);
                }
            }
        }
        // It increases the loss over the clean input.
        let ce = |t: &Tensor| {
            candle_nn::loss::cross_entropy(&m.forward(t).unwrap(), &y)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        assert!(ce(&adv) > ce(&x));
        let same = pgd.run(&m, &x, &y, 0.0)?;
        assert_eq!((&same - &x)?.abs()?.max_all()?.to_scalar::<f64>()?, 0.0);
    }
    for attack in [&Fgsm as &dyn Attack, &Fgm, &Rand { seed: 1 }] {
        let same = attack.run(&m, &x, &y, 0.0)?;
        assert_eq!((&same - &x)?.abs()?.max_all()?.to_scalar::<f64>()?, 0.0);
    }
    let r = Rand { seed: 4 }.run(&m, &x, &y, 0.1)?;
    let dmax = (&r - &x)?.abs()?.max_all()?.to_scalar::<f64>()?;
    assert!(dmax <= 0.1 + 1e-9 && dmax > 0.05);
    assert_eq!(
        (&r - &Rand { seed: 4 }.run(&m, &x, &y, 0.1)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?,
        0.0,
        "seeded"
    );
    assert!(Fgsm.run(&m, &x, &y, -1.0).is_err());
    assert!(Fgsm.run(&m, &x, &y, f64::NAN).is_err());
    Ok(())
}

/// Predicts class 1 when any pixel exceeds 0.8, else class 0.
struct Threshold;

impl Module for Threshold {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hot = x
            .flatten_from(1)?
            .max(D::Minus1)?
            .ge(0.8)?
            .to_dtype(DType::F64)?;
        Tensor::stack(&[(hot.ones_like()? - &hot)?, hot], 1)
    }
}

#[test]
fn worst_of_n_breaks_an_example_iff_some_draw_does() -> TestResult {
    let x = Tensor::full(0.5f64, (6, 1, 4, 4), &Device::Cpu)?;
    let y = Tensor::zeros(6, DType::U32, &Device::Cpu)?;
    let source = NoiseSource::lrc((1, 4, 4), 2.0)?;
    let attack = WorstOfN {
        source: source.clone(),
        n: 7,
        seed: 11,
    };
    let eps = 0.12;
    let res = attack.attack(&Threshold, &x, &y, eps)?;
    // Replay every draw independently.
    let mut expected = [false; 6];
    for draw in 0..7 {
        let noise = WorstOfN::draw_noise(&source, 11, draw, 6)?.reshape((6, 1, 4, 4))?;
        let xp = (&x + (noise * eps)?)?.clamp(0.0, 1.0)?;
        let pred = Threshold.forward(&xp)?.argmax(1)?.to_vec1::<u32>()?;
        for i in 0..6 {
            expected[i] |= pred[i] != 0;
        }
    }
    assert_eq!(res.broken, expected.to_vec());
    assert!(
        expected.iter().any(|&b| b) && !expected.iter().all(|&b| b),
        "a constructed case with both outcomes: {expected:?}"
    );
    // Broken examples come back as a breaking input.
    let pred = Threshold
        .forward(&res.adversarial)?
        .argmax(1)?
        .to_vec1::<u32>()?;
    for i in 0..6 {
        assert_eq!(pred[i] != 0, expected[i]);
    }
    Ok(())
}
