//! The PSD projection of stationary covariances: PSD afterwards, unchanged when already PSD on the torus.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`

use sgr_covariance::linalg::symmetric_eigenvalues;
use sgr_covariance::{ChannelStructure, CovFun, Covariance, Stationary};
use sgr_testutil::rand_tensor;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn dense(cov: &dyn Covariance) -> Vec<f64> {
    sgr_testutil::flat_f64(&cov.to_dense().unwrap())
}

fn min_eig(cov: &dyn Covariance) -> f64 {
    symmetric_eigenvalues(&dense(cov), cov.dim()).unwrap()[0]
}

#[test]
fn rounded_lrc_covfun_becomes_psd() -> TestResult {
    for (shape, zeta, radius) in [
        ((1, 12, 12), 8.0, 8),
        ((1, 10, 13), 2.0, 3),
        ((3, 7, 6), 4.0, 5),
    ] {
        let cf = CovFun::from_fn(shape, radius, ChannelStructure::IntraInter, |a, b, r| {
            let e = (-(r as f64) / zeta).exp();
            if a == b { e } else { 0.5 * e }
        })?;
        let before = min_eig(&cf);
        assert!(
            before < -1e-3,
            "{shape:?}: the rounded kernel should not be PSD ({before})"
        );
        let p = cf.project_psd()?;
        let after = min_eig(&p);
        assert!(
            after > -1e-9,
            "{shape:?}: smallest eigenvalue {after} after projection"
        );
        // The long-range structure survives: neighbours stay strongly and positively correlated.
        let (k, o) = (p.kernels(), cf.kernels());
        let corr =
            |k: &sgr_covariance::KernelSet, dy, dx| k.value(0, 0, dy, dx) / k.value(0, 0, 0, 0);
        for (dy, dx) in [(0, 1), (1, 1), (3, 0)] {
            let (after, before) = (corr(k, dy, dx), corr(o, dy, dx));
            assert!(
                after > 0.5 * before && after < 1.5 * before,
                "{shape:?} ({dy},{dx}): {before} -> {after}"
            );
        }
    }
    Ok(())
}

#[test]
fn already_psd_biased_estimate_is_unchanged() -> TestResult {
    // The biased full-image autocovariance is the autocorrelation of zero-padded images: its spectrum on a
    // 2H × 2W torus is |ξ̂|² ≥ 0, so the projection must leave it as it is.
    for shape in [(1usize, 9usize, 11usize), (3, 6, 5)] {
        let xi = rand_tensor(&[7, shape.0, shape.1, shape.2], 3, -1.0, 1.0);
        let s = Stationary::estimate_biased(&xi, (shape.1, shape.2), ChannelStructure::IntraInter)?;
        let p = s.project_psd()?;
        let (a, b) = (dense(&s), dense(&p));
        let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(
            sgr_testutil::max_abs_diff_slices(&a, &b) < 1e-10 * scale,
            "{shape:?}"
        );
    }
    Ok(())
}

#[test]
fn full_structure_is_refused_with_a_message() -> TestResult {
    let cf = CovFun::from_fn((2, 5, 5), 2, ChannelStructure::Full, |_, _, r| {
        1.0 / (1.0 + r as f64)
    })?;
    let err = cf.project_psd().unwrap_err().to_string();
    assert!(err.contains("intra/inter"), "{err}");
    Ok(())
}
