//! Gradient-masking checks (Carlini et al., "On evaluating adversarial robustness"; Athalye et al. 2018): a
//! model that only hides its gradients looks robust to gradient attacks but fails these sanity conditions.

use serde::{Deserialize, Serialize};

/// One sanity condition and whether it held.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// The numbers behind the verdict.
    pub detail: String,
}

/// The checks behind one white-box row, with the extra attack runs they needed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskingReport {
    /// Test images the ε and step sweeps ran on (the first ones of the white-box set).
    pub images: usize,
    /// PGD accuracy against ε (pixel units; 0 is clean accuracy, 1.0 is ε = 255/255).
    pub eps_curve: Vec<(f64, f64)>,
    /// PGD accuracy at the table's ε against the number of steps.
    pub steps_curve: Vec<(usize, f64)>,
    pub checks: Vec<Check>,
}

impl MaskingReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

/// Images an accuracy may move the wrong way by before a check fails (see [`tolerance`]).
pub const TOLERANCE_IMAGES: usize = 2;
/// The smallest tolerance, as a fraction (see [`tolerance`]).
pub const TOLERANCE_MIN: f64 = 0.005;

/// How far an accuracy may move the wrong way before a check fails: [`TOLERANCE_IMAGES`] images in `n`, at
/// least [`TOLERANCE_MIN`] (attacks are deterministic, so only per-image quirks of PGD remain).
pub fn tolerance(n: usize) -> f64 {
    (TOLERANCE_IMAGES as f64 / n.max(1) as f64).max(TOLERANCE_MIN)
}

/// The prose of [`tolerance`] for reports: "2 images, at least 0.5 %".
pub fn tolerance_text() -> String {
    format!(
        "{TOLERANCE_IMAGES} images, at least {} %",
        100.0 * TOLERANCE_MIN
    )
}

fn pct(a: f64) -> String {
    format!("{:.1} %", 100.0 * a)
}

/// `points` (label, accuracy) must not rise by more than `tol` from one to the next.
pub(crate) fn non_increasing(name: &str, points: &[(String, f64)], tol: f64) -> Check {
    let rises: Vec<String> = points
        .windows(2)
        .filter(|w| w[1].1 > w[0].1 + tol)
        .map(|w| format!("{} → {}: {} → {}", w[0].0, w[1].0, pct(w[0].1), pct(w[1].1)))
        .collect();
    let all = points
        .iter()
        .map(|(l, a)| format!("{l}: {}", pct(*a)))
        .collect::<Vec<_>>()
        .join(", ");
    Check {
        name: name.into(),
        passed: rises.is_empty(),
        detail: if rises.is_empty() {
            all
        } else {
            format!("accuracy rises ({}); {all}", rises.join("; "))
        },
    }
}

/// `a` (the stronger attack's accuracy) must not exceed `b` by more than `tol`.
pub(crate) fn at_most(name: &str, a: (&str, f64), b: (&str, f64), tol: f64) -> Check {
    Check {
        name: name.into(),
        passed: a.1 <= b.1 + tol,
        detail: format!("{} {} vs {} {}", a.0, pct(a.1), b.0, pct(b.1)),
    }
}

/// `acc` must be at most `max`.
pub(crate) fn near_zero(name: &str, label: &str, acc: f64, max: f64) -> Check {
    Check {
        name: name.into(),
        passed: acc <= max,
        detail: format!("{label} {} (limit {})", pct(acc), pct(max)),
    }
}

/// Logs every failed check of a model (a table shows them too).
pub(crate) fn warn_failed(model: &str, checks: &[Check]) {
    for c in checks.iter().filter(|c| !c.passed) {
        tracing::warn!(
            model,
            check = c.name,
            detail = c.detail,
            "gradient-masking check failed"
        );
    }
}
