//! Choosing λ on a validation split (paper sec. 7.3's rule, without the test set): the grid to sweep, the
//! selection from finished sweep runs, and the λ of the SGR variants that take sgr-sign's choice.

use std::fmt;

use sgr_data::DatasetName;

use crate::run::RunRecord;
use crate::settings::MethodName;
use crate::sgr::default_lambda;

/// The paper's rule: candidates within this many percentage points of the clean model's validation accuracy
/// are eligible.
pub const ACCURACY_TOLERANCE_POINTS: f64 = 0.1;

/// A method and the λ values to try for it: `sgr-sign=0.25,0.5,1,2,4,8`; `sgr-sign@20=…` trains this grid's runs
/// (and a clean reference beside them) for 20 epochs instead of the sweep's default.
#[derive(Clone, Debug, PartialEq)]
pub struct LambdaGrid {
    pub method: MethodName,
    pub lambdas: Vec<f64>,
    /// Epochs of this grid's runs (`None`: the sweep's default).
    pub epochs: Option<usize>,
}

impl std::str::FromStr for LambdaGrid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (m, list) = s.split_once('=').ok_or_else(|| {
            format!(
                "'{s}': expected METHOD=λ1,λ2,… or METHOD@EPOCHS=λ1,λ2,… (e.g. sgr-sign=0.25,0.5,1,2,4,8)"
            )
        })?;
        let (m, epochs) = match m.split_once('@') {
            None => (m, None),
            Some((m, e)) => match e.trim().parse::<usize>() {
                Ok(e) if e > 0 => (m, Some(e)),
                _ => return Err(format!("'{s}': '{e}' is not a positive number of epochs")),
            },
        };
        let method: MethodName = m.trim().parse().map_err(|e| format!("'{s}': {e}"))?;
        if !method.is_regularized() {
            return Err(format!(
                "'{s}': {method} has no λ to sweep (gn and the SGR variants do)"
            ));
        }
        let lambdas = list
            .split(',')
            .map(|v| match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(format!("'{s}': '{v}' is not a positive number")),
            })
            .collect::<Result<Vec<f64>, String>>()?;
        if lambdas.len() < 2 {
            return Err(format!("'{s}': a sweep needs at least two values"));
        }
        Ok(Self {
            method,
            lambdas,
            epochs,
        })
    }
}

impl fmt::Display for LambdaGrid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l: Vec<String> = self.lambdas.iter().map(|x| x.to_string()).collect();
        match self.epochs {
            Some(e) => write!(f, "{}@{e}={}", self.method, l.join(",")),
            None => write!(f, "{}={}", self.method, l.join(",")),
        }
    }
}

/// One swept λ and what its run measured on the validation split.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub lambda: f64,
    pub validation_accuracy: f64,
    pub pgd_accuracy: f64,
    pub pgd_images: usize,
    /// Within the tolerance of the clean model's accuracy.
    pub eligible: bool,
}

/// The outcome of a sweep for one method.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub method: MethodName,
    pub clean_accuracy: f64,
    pub candidates: Vec<Candidate>,
    pub chosen: f64,
    /// The eligibility tolerance used, in percentage points.
    pub tolerance_points: f64,
}

/// Why a sweep cannot be decided from its records.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("{0}")]
    Incomplete(String),
    #[error(
        "no λ of {method} is within {tolerance} points of the clean model's validation accuracy ({clean:.2} %)"
    )]
    NoneEligible {
        method: MethodName,
        clean: f64,
        tolerance: f64,
    },
}

fn validation_numbers(what: &str, r: &RunRecord) -> Result<(f64, f64, usize), SweepError> {
    if r.validation_images == 0 {
        return Err(SweepError::Incomplete(format!(
            "{what} has no validation split: sweep runs need --validation"
        )));
    }
    let acc = r
        .final_test_accuracy()
        .filter(|_| r.status == crate::run::RunStatus::Complete)
        .ok_or_else(|| SweepError::Incomplete(format!("{what} has not finished")))?;
    let fe = r
        .final_eval
        .as_ref()
        .filter(|f| f.split == "validation")
        .ok_or_else(|| {
            SweepError::Incomplete(format!("{what} has no PGD check on the validation split"))
        })?;
    Ok((acc, fe.pgd_accuracy, fe.images))
}

/// The paper's rule on a validation split: among the λ whose validation accuracy is at least the clean
/// model's minus `tolerance_points` ([`ACCURACY_TOLERANCE_POINTS`] in the paper), the highest PGD accuracy;
/// ties go to the higher validation accuracy, then to the smaller λ.
pub fn select_lambda(
    method: MethodName,
    clean: &RunRecord,
    runs: &[(f64, RunRecord)],
    tolerance_points: f64,
) -> Result<Selection, SweepError> {
    let (clean_accuracy, _, _) = validation_numbers("the clean sweep run", clean)?;
    let floor = clean_accuracy - tolerance_points / 100.0 - 1e-12;
    let mut candidates = runs
        .iter()
        .map(|(lambda, r)| {
            let (acc, pgd, images) =
                validation_numbers(&format!("the {method} run at λ = {lambda}"), r)?;
            Ok(Candidate {
                lambda: *lambda,
                validation_accuracy: acc,
                pgd_accuracy: pgd,
                pgd_images: images,
                eligible: acc >= floor,
            })
        })
        .collect::<Result<Vec<_>, SweepError>>()?;
    candidates.sort_by(|a, b| a.lambda.total_cmp(&b.lambda));
    let best = candidates
        .iter()
        .filter(|c| c.eligible)
        .max_by(|a, b| {
            a.pgd_accuracy
                .total_cmp(&b.pgd_accuracy)
                .then(a.validation_accuracy.total_cmp(&b.validation_accuracy))
                .then(b.lambda.total_cmp(&a.lambda))
        })
        .ok_or(SweepError::NoneEligible {
            method,
            clean: 100.0 * clean_accuracy,
            tolerance: tolerance_points,
        })?;
    Ok(Selection {
        method,
        clean_accuracy,
        chosen: best.lambda,
        candidates,
        tolerance_points,
    })
}

/// λ for an SGR variant that was not swept: sgr-sign's choice times the ratio of their paper values.
pub fn scaled_from_sgr_sign(method: MethodName, sgr_sign: f64, dataset: DatasetName) -> f64 {
    sgr_sign * default_lambda(method, dataset) / default_lambda(MethodName::SgrSign, dataset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_parse_and_refuse_what_cannot_be_swept() {
        let g: LambdaGrid = "sgr-sign=0.25, 0.5,1".parse().expect("valid");
        assert_eq!(
            (g.method, g.lambdas.clone()),
            (MethodName::SgrSign, vec![0.25, 0.5, 1.0])
        );
        assert_eq!(g.to_string(), "sgr-sign=0.25,0.5,1");
        assert_eq!(g.epochs, None);
        let g: LambdaGrid = "sgr-sign@20=1,2".parse().expect("valid");
        assert_eq!(
            (g.epochs, g.to_string().as_str()),
            (Some(20), "sgr-sign@20=1,2")
        );
        for (bad, says) in [
            ("sgr-sign", "METHOD="),
            ("sgr-sign@0=1,2", "'0'"),
            ("sgr-sign@x=1,2", "'x'"),
            ("clean=1,2", "no λ"),
            ("gn=1,-2", "'-2'"),
            ("gn=3", "at least two"),
            ("nope=1,2", "nope"),
        ] {
            let e = bad.parse::<LambdaGrid>().expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn variants_scale_with_the_paper_ratio() {
        // Paper (MNIST): sgr-sign 1, sgr-grad 0.1, fgsm-sgr 0.5.
        let m = DatasetName::Mnist;
        assert!((scaled_from_sgr_sign(MethodName::SgrGrad, 0.25, m) - 0.025).abs() < 1e-15);
        assert!((scaled_from_sgr_sign(MethodName::FgsmSgr, 0.25, m) - 0.125).abs() < 1e-15);
    }
}
