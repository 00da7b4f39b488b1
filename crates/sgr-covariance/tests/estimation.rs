//! Estimation, running averages, scaling, sampling, positive semi-definiteness and saving.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`

use std::sync::Arc;

use candle_core::Tensor;
use sgr_covariance::linalg::symmetric_eigenvalues;
use sgr_covariance::{
    ChannelStructure, CirculantSampler, CovError, CovFun, Covariance, Dense, DenseSampler, Ema,
    Identity, MeanEma, Scaled, Stationary,
};
use sgr_testutil::{max_abs_diff, rand_tensor};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn dense_vec(cov: &dyn Covariance) -> Vec<f64> {
    cov.to_dense()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn min_eig(cov: &dyn Covariance) -> f64 {
    symmetric_eigenvalues(&dense_vec(cov), cov.dim()).unwrap()[0]
}

/// Empirical second moments of samples `(n, C, H, W)` as a flat d×d matrix.
fn empirical(samples: &Tensor) -> Vec<f64> {
    Dense::second_moments(samples)
        .unwrap()
        .matrix()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

#[test]
fn covfun_estimate_matches_a_direct_computation() -> TestResult {
    // Hand-rolled estimator on a tiny batch: average of ξ_c(p) ξ_c'(p+δ) binned by round(|δ|).
    let xi = rand_tensor(&[3, 2, 4, 5], 11, -1.0, 1.0);
    let x = xi.flatten_all()?.to_vec1::<f64>()?;
    let at =
        |b: usize, c: usize, i: i64, j: i64| x[((b * 2 + c) * 4 + i as usize) * 5 + j as usize];
    let radius = 2usize;
    let mut num = vec![[0f64; 2]; radius + 1];
    let mut den = vec![[0f64; 2]; radius + 1];
    for b in 0..3 {
        for c in 0..2 {
            for c2 in 0..2 {
                let k = usize::from(c != c2);
                for i in 0..4i64 {
                    for j in 0..5i64 {
                        for i2 in 0..4i64 {
                            for j2 in 0..5i64 {
                                let r = (((i2 - i).pow(2) + (j2 - j).pow(2)) as f64).sqrt().round()
                                    as usize;
                                if r <= radius {
                                    num[r][k] += at(b, c, i, j) * at(b, c2, i2, j2);
                                    den[r][k] += 1.0;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let est = CovFun::estimate(&xi, radius as i64, ChannelStructure::IntraInter)?;
    for r in 0..=radius {
        assert!(
            (est.curve(0, 0)[r] - num[r][0] / den[r][0]).abs() < 1e-12,
            "intra r={r}"
        );
        assert!(
            (est.curve(0, 1)[r] - num[r][1] / den[r][1]).abs() < 1e-12,
            "inter r={r}"
        );
    }
    // Full structure: the (0,1) curve equals the inter curve here (two channels), and (0,0)+(1,1) average to intra.
    let full = CovFun::estimate(&xi, radius as i64, ChannelStructure::Full)?;
    for r in 0..=radius {
        assert!((full.curve(0, 1)[r] - est.curve(0, 1)[r]).abs() < 1e-12);
        assert!(
            (0.5 * (full.curve(0, 0)[r] + full.curve(1, 1)[r]) - est.curve(0, 0)[r]).abs() < 1e-12
        );
    }
    // The FFT path of the estimator (large radius on a larger image) agrees with the direct one.
    let big = rand_tensor(&[2, 3, 30, 26], 12, -1.0, 1.0);
    let a = CovFun::estimate(&big, 40, ChannelStructure::IntraInter)?;
    let b = CovFun::estimate(&big.narrow(0, 0, 1)?, 40, ChannelStructure::IntraInter)?;
    let c = CovFun::estimate(&big.narrow(0, 1, 1)?, 40, ChannelStructure::IntraInter)?;
    for (k, v) in a.curves().iter().enumerate() {
        assert!(
            (v - 0.5 * (b.curves()[k] + c.curves()[k])).abs() < 1e-10,
            "batch average"
        );
    }
    let small = CovFun::estimate(&big, 3, ChannelStructure::IntraInter)?;
    for r in 0..=3 {
        assert!(
            (small.curve(0, 0)[r] - a.curve(0, 0)[r]).abs() < 1e-10,
            "direct vs FFT path at r={r}"
        );
        assert!((small.curve(0, 1)[r] - a.curve(0, 1)[r]).abs() < 1e-10);
    }
    Ok(())
}

#[test]
fn estimator_recovers_a_known_covariance_from_samples() -> TestResult {
    // Samples from the LRC covariance (exact distances, ζ = 2) on 3×8×9 images.
    let shape = (3, 8, 9);
    let zeta = 2.0;
    let sampler = CirculantSampler::lrc(shape, zeta)?;
    let xi = sampler.sample(3000, 5)?;
    let est = CovFun::estimate(&xi, 4, ChannelStructure::IntraInter)?;
    // What the binned estimator converges to: the pair-weighted mean of exp(−|δ|/ζ) over each bin.
    for r in 0..=4usize {
        let (mut num, mut den) = (0.0, 0.0);
        for dy in -7i64..=7 {
            for dx in -8i64..=8 {
                let d = ((dy * dy + dx * dx) as f64).sqrt();
                if d.round() as usize == r {
                    let pairs = ((8 - dy.abs()) * (9 - dx.abs())) as f64;
                    num += pairs * (-d / zeta).exp();
                    den += pairs;
                }
            }
        }
        let want = num / den;
        assert!(
            (est.curve(0, 0)[r] - want).abs() < 0.04,
            "intra r={r}: {} vs {want}",
            est.curve(0, 0)[r]
        );
        assert!(
            (est.curve(0, 1)[r] - 0.5 * want).abs() < 0.04,
            "inter r={r}: {} vs {}",
            est.curve(0, 1)[r],
            0.5 * want
        );
    }
    Ok(())
}

#[test]
fn samples_have_the_target_covariance() -> TestResult {
    // Circulant embedding: LRC on 3×5×6 (d = 90), against the dense target.
    let shape = (3, 5, 6);
    let target = Stationary::lrc(shape, 3.0)?;
    let samples = CirculantSampler::lrc(shape, 3.0)?.sample(20000, 1)?;
    assert_eq!(samples.dims(), &[20000, 3, 5, 6]);
    let emp = empirical(&samples);
    let want = dense_vec(&target);
    let err = emp
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    // Each entry's standard error is about sqrt(2/n) ≈ 0.01.
    assert!(err < 0.06, "max deviation {err}");
    // Dense Cholesky sampling of a data-like covariance.
    let basis = rand_tensor(&[40, 1, 3, 4], 2, -1.0, 1.0);
    let dense = Dense::second_moments(&basis)?;
    let s = DenseSampler::new(&dense)?.sample(20000, 3)?;
    let emp = empirical(&s);
    let want = dense_vec(&dense);
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = emp
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    assert!(err < 0.06 * scale, "max deviation {err} (scale {scale})");
    // Seeded: same seed, same samples; other seed, other samples.
    let a = DenseSampler::new(&dense)?.sample(3, 9)?;
    let b = DenseSampler::new(&dense)?.sample(3, 9)?;
    let c = DenseSampler::new(&dense)?.sample(3, 10)?;
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert!(max_abs_diff(&a, &c) > 0.0);
    // Large images are cheap: one 3×224×224 sample.
    let big = CirculantSampler::lrc((3, 224, 224), 8.0)?.sample(1, 4)?;
    assert_eq!(big.dims(), &[1, 3, 224, 224]);
    Ok(())
}

#[test]
fn psd_where_promised_and_not_where_rounding_breaks_it() -> TestResult {
    // Estimated dense second moments and the biased full-image autocovariance are PSD.
    let xi = rand_tensor(&[7, 2, 5, 6], 3, -1.0, 1.0);
    let dense = Dense::second_moments(&xi)?;
    assert!(min_eig(&dense) > -1e-10);
    for structure in [ChannelStructure::IntraInter, ChannelStructure::Full] {
        let biased = Stationary::estimate_biased(&xi, (4, 5), structure)?;
        let m = min_eig(&biased);
        assert!(m > -1e-10, "{structure:?}: smallest eigenvalue {m}");
    }
    // The LRC covariance with exact distances is positive definite.
    let lrc = Stationary::lrc((3, 4, 5), 4.0)?;
    assert!(min_eig(&lrc) > 0.0);
    // The paper's rounded-distance covariance function of the same exp(−r/ζ) is not (see README):
    // the smallest eigenvalue is negative and Cholesky sampling refuses it.
    let rounded = CovFun::from_fn((1, 12, 12), 16, ChannelStructure::IntraInter, |_, _, r| {
        (-(r as f64) / 8.0).exp()
    })?;
    let m = min_eig(&rounded);
    assert!(m < -1e-3, "smallest eigenvalue {m}");
    assert!(matches!(
        DenseSampler::new(&rounded),
        Err(CovError::NotPsd(_))
    ));
    Ok(())
}

#[test]
fn ema_and_scaling_follow_algorithm_1() -> TestResult {
    let a = rand_tensor(&[5, 1, 3, 3], 1, -1.0, 1.0);
    let b = rand_tensor(&[5, 1, 3, 3], 2, -1.0, 1.0);
    let (ca, cb) = (Dense::second_moments(&a)?, Dense::second_moments(&b)?);
    let mut ema = Ema::new(0.1)?;
    ema.update(ca.clone())?;
    // Σ̂₁ = 0.9·0 + 0.1·A
    assert!(max_abs_diff(ema.get().unwrap().matrix(), &(ca.matrix() * 0.1).unwrap()) < 1e-15);
    ema.update(cb.clone())?;
    // Σ̂₂ = 0.9·0.1·A + 0.1·B
    let want = ((ca.matrix() * 0.09)? + (cb.matrix() * 0.1)?)?;
    assert!(max_abs_diff(ema.get().unwrap().matrix(), &want) < 1e-15);
    assert_eq!(ema.updates(), 2);
    // The same on covariance functions.
    let (fa, fb) = (
        CovFun::estimate(&a, 2, ChannelStructure::IntraInter)?,
        CovFun::estimate(&b, 2, ChannelStructure::IntraInter)?,
    );
    let mut e2 = Ema::new(0.1)?;
    e2.update(fa.clone())?;
    e2.update(fb.clone())?;
    for (k, v) in e2.get().unwrap().curves().iter().enumerate() {
        assert!((v - (0.09 * fa.curves()[k] + 0.1 * fb.curves()[k])).abs() < 1e-15);
    }
    assert!(Ema::<Dense>::new(0.0).is_err() && Ema::<Dense>::new(1.5).is_err());
    // Scaling: σ = c / mean diag, so the scaled mean diagonal is c.
    let c = 0.0671;
    let scaled = Scaled::to_mean_diag(Arc::new(e2.get().unwrap().clone()), c).unwrap();
    assert!((scaled.mean_diag() - c).abs() < 1e-15);
    assert!((scaled.scale() - c / e2.get().unwrap().mean_diag()).abs() < 1e-15);
    let gn = Scaled::to_mean_diag(Arc::new(Identity::new((1, 3, 3))), c)?;
    assert!((gn.scale() - c).abs() < 1e-15);
    // Running mean of ξ (eq. 12).
    let mut mu = MeanEma::new(0.5)?;
    mu.update(&a)?;
    mu.update(&b)?;
    let want = ((a.mean(0)? * 0.25)? + (b.mean(0)? * 0.5)?)?;
    assert!(max_abs_diff(mu.get().unwrap(), &want) < 1e-15);
    Ok(())
}

#[test]
fn save_and_load_round_trip_every_kind() -> TestResult {
    let dir = tempfile::tempdir()?;
    let xi = rand_tensor(&[4, 3, 5, 4], 8, -1.0, 1.0);
    let covs: Vec<Arc<dyn Covariance>> = vec![
        Arc::new(Dense::second_moments(&xi)?),
        Arc::new(CovFun::estimate(&xi, 3, ChannelStructure::IntraInter)?),
        Arc::new(CovFun::estimate(&xi, 2, ChannelStructure::Full)?),
        Arc::new(Stationary::estimate_biased(
            &xi,
            (4, 3),
            ChannelStructure::Full,
        )?),
        Arc::new(Identity::new((3, 5, 4))),
        Arc::new(Scaled::new(
            Arc::new(Stationary::lrc((3, 5, 4), 2.0)?),
            0.3,
        )?),
    ];
    for (i, cov) in covs.iter().enumerate() {
        let path = dir.path().join(format!("cov{i}.safetensors"));
        sgr_covariance::save(cov.as_ref(), &path)?;
        let back = sgr_covariance::load(&path)?;
        assert_eq!(back.kind(), cov.kind());
        assert_eq!(
            max_abs_diff(&back.to_dense()?, &cov.to_dense()?),
            0.0,
            "{}",
            cov.kind()
        );
    }
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"nope")?;
    let msg = sgr_covariance::load(&junk).unwrap_err().to_string();
    assert!(msg.contains("junk.safetensors"), "{msg}");
    Ok(())
}

#[test]
fn second_moments_of_f32_perturbations_match_a_direct_sum() -> TestResult {
    // (1/m) Σ_i ξ_i ξ_iᵀ by loops in f64, against the product computed in f32: exact sums for signs (of
    // ±1 and 0; the scaling by 1/m rounds once in f64), within f32 rounding for general values.
    let raw = rand_tensor(&[7, 1, 4, 5], 9, -1.0, 1.0);
    for (xi, tol) in [(raw.sign()?, 1e-15), (raw.clone(), 1e-6)] {
        let x = xi.flatten_from(1)?.to_vec2::<f64>()?;
        let (m, d) = (x.len(), x[0].len());
        let got = empirical(&xi.to_dtype(candle_core::DType::F32)?);
        for i in 0..d {
            for j in 0..d {
                let want = (0..m).map(|k| x[k][i] * x[k][j]).sum::<f64>() / m as f64;
                let diff = (got[i * d + j] - want).abs();
                assert!(diff <= tol, "({i}, {j}): {} vs {want}", got[i * d + j]);
            }
        }
    }
    Ok(())
}

#[test]
fn relative_ridge_adds_to_the_diagonal_only_and_makes_a_singular_covariance_definite()
-> Result<(), CovError> {
    // Six 2×2 images whose last pixel never changes (as MNIST's border): a singular data covariance.
    #[rustfmt::skip]
    let x = Tensor::from_vec(
        vec![
            0.1f64, 0.5, 0.9, 0.3,  0.4, 0.2, 0.8, 0.3,  0.7, 0.9, 0.1, 0.3,
            0.2, 0.6, 0.5, 0.3,  0.9, 0.1, 0.4, 0.3,  0.3, 0.8, 0.6, 0.3,
        ],
        (6, 1, 2, 2),
        &candle_core::Device::Cpu,
    )?;
    let cov = Dense::data_covariance(&x)?;
    assert!(min_eig(&cov).abs() < 1e-12, "singular: {}", min_eig(&cov));
    let rel = 1e-3;
    let ridged = cov.with_relative_ridge(rel)?;
    let md = cov.mean_diag();
    let (a, b) = (dense_vec(&cov), dense_vec(&ridged));
    for i in 0..4 {
        for j in 0..4 {
            let want = a[i * 4 + j] + if i == j { rel * md } else { 0.0 };
            assert!((b[i * 4 + j] - want).abs() < 1e-15, "({i}, {j})");
        }
    }
    assert!(min_eig(&ridged) >= rel * md * (1.0 - 1e-9));
    assert!(DenseSampler::new(&ridged).is_ok());
    for bad in [-1e-6, f64::NAN, f64::INFINITY] {
        assert!(cov.with_relative_ridge(bad).is_err(), "{bad}");
    }
    Ok(())
}
