//! Small dense linear algebra on row-major `f64` matrices: Cholesky and symmetric eigenvalues (Jacobi).
//! Meant for the sizes where a dense covariance is reasonable (d up to a few thousand for Cholesky,
//! a few hundred for eigenvalues).

use crate::error::{CovError, Result};

/// Lower-triangular `L` with `A = L Lᵀ`. Adds `jitter · mean diag` to the diagonal first; fails with
/// [`CovError::NotPsd`] where a pivot is not positive.
pub fn cholesky(a: &[f64], d: usize, jitter: f64) -> Result<Vec<f64>> {
    if a.len() != d * d {
        return Err(CovError::Shape {
            what: "matrix",
            got: vec![a.len()],
            expected: format!("{d}x{d}"),
        });
    }
    let mean_diag = (0..d).map(|i| a[i * d + i]).sum::<f64>() / d.max(1) as f64;
    let eps = jitter * mean_diag.abs().max(f64::MIN_POSITIVE);
    let mut l = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j];
            if i == j {
                s += eps;
            }
            s -= (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum::<f64>();
            if i == j {
                if s <= 0.0 || s.is_nan() {
                    return Err(CovError::NotPsd(format!(
                        "Cholesky pivot {i} is {s:.3e} (≤ 0)"
                    )));
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Ok(l)
}

/// Eigenvalues of a symmetric matrix by cyclic Jacobi rotations, ascending.
pub fn symmetric_eigenvalues(a: &[f64], d: usize) -> Result<Vec<f64>> {
    if a.len() != d * d {
        return Err(CovError::Shape {
            what: "matrix",
            got: vec![a.len()],
            expected: format!("{d}x{d}"),
        });
    }
    let mut m = a.to_vec();
    let norm: f64 = m
        .iter()
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * d + j].powi(2))
            .sum();
        if off.sqrt() < 1e-14 * norm {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = m[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let (app, aqq) = (m[p * d + p], m[q * d + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (m[k * d + p], m[k * d + q]);
                    m[k * d + p] = c * akp - s * akq;
                    m[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (m[p * d + k], m[q * d + k]);
                    m[p * d + k] = c * apk - s * aqk;
                    m[q * d + k] = s * apk + c * aqk;
                }
            }
        }
    }
    let mut ev: Vec<f64> = (0..d).map(|i| m[i * d + i]).collect();
    ev.sort_by(|a, b| a.total_cmp(b));
    Ok(ev)
}
