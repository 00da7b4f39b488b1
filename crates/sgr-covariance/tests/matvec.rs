//! The structured products against the dense matrix and the conv2d reference, on many shapes and radii.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use sgr_covariance::{ChannelStructure, CovFun, Covariance, Dense, Identity, Scaled, Stationary};
use sgr_testutil::{dense_product, max_abs, max_abs_diff, rand_tensor};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn random_covfun(
    shape: (usize, usize, usize),
    radius: i64,
    structure: ChannelStructure,
    seed: u64,
) -> CovFun {
    let curve = |a: usize, b: usize, r: usize| {
        let (lo, hi) = (a.min(b), a.max(b));
        // Deterministic pseudo-random values, symmetric in (a, b).
        let x = ((seed as usize * 31 + lo * 7 + hi * 13 + r * 17) % 97) as f64 / 97.0;
        if a == b { 1.0 + x } else { x - 0.5 }
    };
    CovFun::from_fn(shape, radius, structure, curve).unwrap()
}

fn check(
    cov: &dyn Covariance,
    reference: Option<&sgr_covariance::KernelSet>,
    batch: usize,
    seed: u64,
) {
    let (c, h, w) = cov.shape();
    let dense = cov.to_dense().unwrap();
    for dtype in [DType::F64, DType::F32] {
        let v = rand_tensor(&[batch, c, h, w], seed, -1.0, 1.0)
            .to_dtype(dtype)
            .unwrap();
        let got = cov.matvec(&v).unwrap();
        assert_eq!(got.dtype(), dtype);
        assert_eq!(got.dims(), v.dims());
        let want = dense_product(&dense, &v);
        let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 } * max_abs(&want).max(1.0);
        let err = max_abs_diff(&got, &want);
        assert!(
            err < tol,
            "{} {:?} {dtype:?}: structured vs dense differ by {err}",
            cov.kind(),
            cov.shape()
        );
        // Flat (B, d) input gives the same numbers.
        let flat = cov.matvec(&v.reshape((batch, c * h * w)).unwrap()).unwrap();
        assert!(max_abs_diff(&flat.reshape(v.dims()).unwrap(), &got) < tol);
        if let Some(k) = reference {
            let r = k.matvec_reference(&v).unwrap();
            assert!(max_abs_diff(&r, &want) < tol, "conv2d reference vs dense");
        }
    }
}

#[test]
fn covfun_matvec_equals_dense_product_for_many_shapes_and_radii() -> TestResult {
    let mut seed = 1;
    for (c, h, w) in [(1usize, 7usize, 5usize), (3, 6, 9), (1, 1, 8), (3, 4, 4)] {
        let full = CovFun::full_radius(h, w) as i64;
        for radius in [0, 1, 2, 3, full, full + 5] {
            for structure in [ChannelStructure::IntraInter, ChannelStructure::Full] {
                let cov = random_covfun((c, h, w), radius, structure, seed);
                check(&cov, Some(cov.kernels()), 3, seed);
                seed += 1;
            }
        }
    }
    Ok(())
}

/// The CPU plan is inspectable: short ranges go direct, long ones through FFTs, and the verdict is the
/// cheaper of the two predicted costs.
#[test]
fn cpu_plans_pick_the_cheaper_path() -> anyhow::Result<()> {
    use sgr_covariance::{CpuPath, KernelSet};
    let short =
        KernelSet::pseudo_random((3, 32, 32), (2, 2), ChannelStructure::IntraInter, 1)?.cpu_plan();
    let long = KernelSet::pseudo_random((1, 40, 36), (39, 35), ChannelStructure::IntraInter, 1)?
        .cpu_plan();
    assert_eq!((short.path, long.path), (CpuPath::Direct, CpuPath::Fft));
    assert!(short.direct_cost < short.fft_cost && long.fft_cost < long.direct_cost);
    assert!(long.fft_shape.0 >= 40 + 39 && long.fft_shape.1 >= 36 + 35);
    Ok(())
}

#[test]
fn fft_path_for_long_ranges_equals_dense_product() -> TestResult {
    // A 40×36 image with a radius beyond the image: the FFT path is the cheaper one and is taken.
    for c in [1usize, 3] {
        let cov = CovFun::from_fn((c, 40, 36), 60, ChannelStructure::IntraInter, |a, b, r| {
            let e = (-(r as f64) / 9.0).exp();
            if a == b { e } else { 0.4 * e }
        })?;
        check(&cov, None, 2, 77 + c as u64);
        let full = random_covfun((c, 40, 36), 60, ChannelStructure::Full, 5);
        check(&full, None, 2, 78);
    }
    Ok(())
}

#[test]
fn stationary_dense_identity_and_scaled_products() -> TestResult {
    let lrc = Stationary::lrc((3, 5, 7), 2.0)?;
    check(&lrc, Some(lrc.kernels()), 2, 3);
    let xi = rand_tensor(&[6, 2, 4, 5], 4, -1.0, 1.0);
    let biased = Stationary::estimate_biased(&xi, (3, 4), ChannelStructure::Full)?;
    check(&biased, Some(biased.kernels()), 2, 5);
    let dense = Dense::second_moments(&xi)?;
    check(&dense, None, 3, 6);
    let id = Identity::new((2, 4, 5));
    let v = rand_tensor(&[2, 2, 4, 5], 7, -1.0, 1.0);
    assert_eq!(max_abs_diff(&id.matvec(&v)?, &v), 0.0);
    let scaled = Scaled::new(Arc::new(dense.clone()), 2.5)?;
    let got = scaled.matvec(&v)?;
    let want = (dense.matvec(&v)? * 2.5)?;
    assert!(max_abs_diff(&got, &want) < 1e-12);
    assert!((scaled.mean_diag() - 2.5 * dense.mean_diag()).abs() < 1e-12);
    Ok(())
}

#[test]
fn to_dense_is_symmetric_with_the_curve_on_the_diagonal() -> TestResult {
    let cov = random_covfun((3, 5, 6), 3, ChannelStructure::Full, 9);
    let d = 90;
    let m = cov.to_dense()?.to_vec2::<f64>()?;
    assert_eq!(m.len(), d);
    for (i, row) in m.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            assert_eq!(*v, m[j][i]);
        }
    }
    // Entry ((c,p),(c',q)) = f_{cc'}(round |p − q|): pixel (1,1) of channel 0 vs pixel (3,2) of channel 2, r = round(√5) = 2.
    let (a, b) = (6 + 1, 2 * 30 + 3 * 6 + 2);
    assert_eq!(m[a][b], cov.curve(0, 2)[2]);
    // Beyond the radius: zero. Pixel (0,0) vs (4,5): r = round(√41) = 6 > 3.
    assert_eq!(m[0][4 * 6 + 5], 0.0);
    let md = (0..d).map(|i| m[i][i]).sum::<f64>() / d as f64;
    assert!((cov.mean_diag() - md).abs() < 1e-12);
    Ok(())
}

#[test]
fn bad_input_is_an_error_not_a_panic() -> TestResult {
    let cov = random_covfun((3, 6, 5), 2, ChannelStructure::IntraInter, 1);
    let wrong = Tensor::zeros((2, 3, 5, 6), DType::F32, &Device::Cpu)?;
    let msg = cov.matvec(&wrong).unwrap_err().to_string();
    assert!(msg.contains("(B, 3, 6, 5)"), "{msg}");
    assert!(
        cov.matvec(&Tensor::zeros((2, 91), DType::F32, &Device::Cpu)?)
            .is_err()
    );
    assert!(
        cov.matvec(&Tensor::zeros((3, 6, 5), DType::F32, &Device::Cpu)?)
            .is_err()
    );
    let msg = CovFun::from_fn((1, 4, 4), -1, ChannelStructure::IntraInter, |_, _, _| 1.0)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("-1"), "{msg}");
    let msg = CovFun::estimate(
        &Tensor::zeros((2, 1, 4, 4), DType::F32, &Device::Cpu)?,
        -2,
        ChannelStructure::IntraInter,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("-2"), "{msg}");
    let nan = Tensor::new(&[[[[f32::NAN, 0.0], [0.0, 1.0]]]], &Device::Cpu)?;
    let msg = CovFun::estimate(&nan, 1, ChannelStructure::IntraInter)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("non-finite"), "{msg}");
    assert!(Dense::second_moments(&nan.flatten_from(1)?).is_err());
    let msg = CovFun::new(
        (1, 3, 3),
        1,
        ChannelStructure::IntraInter,
        vec![1.0, f64::NAN, 0.0, 0.0],
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("non-finite"), "{msg}");
    assert!(CovFun::new((1, 3, 3), 1, ChannelStructure::IntraInter, vec![1.0]).is_err());
    // A non-symmetric full table.
    let msg = CovFun::from_fn((2, 3, 3), 1, ChannelStructure::Full, |a, b, _| {
        if a < b { 1.0 } else { 0.0 }
    })
    .unwrap_err()
    .to_string();
    assert!(msg.contains("symmetric"), "{msg}");
    let asym = Tensor::new(&[[1.0f64, 2.0], [0.0, 1.0]], &Device::Cpu)?;
    assert!(
        Dense::new((1, 1, 2), &asym)
            .unwrap_err()
            .to_string()
            .contains("symmetric")
    );
    assert!(Stationary::lrc((1, 4, 4), 0.0).is_err());
    Ok(())
}

#[test]
fn representations_report_their_size() -> TestResult {
    let big = CovFun::from_fn((3, 224, 224), 8, ChannelStructure::IntraInter, |_, _, r| {
        1.0 / (1.0 + r as f64)
    })?;
    // O(C²·R): curves and kernel tables, not a 150,528² matrix (~181 GB in f64).
    assert!(big.bytes() < 10_000, "{}", big.bytes());
    let v = Tensor::ones((1, 3, 224, 224), DType::F32, &Device::Cpu)?;
    let out = big.matvec(&v)?;
    assert_eq!(out.dims(), &[1, 3, 224, 224]);
    Ok(())
}

/// `KernelSet::from_fn` mirrors what symmetry fixes (the dense matrix is exactly symmetric) and keeps what it
/// does not (anisotropic kernels, different `K_{01}(δ)` and `K_{01}(−δ)` with full tables); the explicit paths
/// agree and `Auto` takes the CPU op.
#[test]
fn kernel_sets_from_a_function_are_symmetric_and_every_path_agrees() -> anyhow::Result<()> {
    use sgr_covariance::{KernelSet, MatvecPath};
    for structure in [ChannelStructure::IntraInter, ChannelStructure::Full] {
        let k = Arc::new(KernelSet::pseudo_random((3, 5, 6), (2, 3), structure, 9)?);
        let dense = k.to_dense()?;
        assert_eq!(max_abs_diff(&dense, &dense.t()?), 0.0, "{structure:?}");
        assert_ne!(k.value(0, 0, 0, 1), k.value(0, 0, 1, 0), "anisotropic");
        if structure == ChannelStructure::Full {
            assert_ne!(k.value(0, 1, 1, 2), k.value(0, 1, -1, -2));
            assert_eq!(k.value(0, 1, 1, 2), k.value(1, 0, -1, -2));
        }
        let v = rand_tensor(&[4, 3, 5, 6], 3, -1.0, 1.0);
        let op = k.matvec_on(&v, MatvecPath::Kernel)?;
        let reference = k.matvec_on(&v, MatvecPath::Reference)?;
        let auto = k.matvec(&v)?;
        assert!(max_abs_diff(&op, &reference) < 1e-12);
        assert_eq!(max_abs_diff(&op, &auto), 0.0);
        assert!(max_abs_diff(&op, &dense_product(&dense, &v)) < 1e-12);
    }
    Ok(())
}
