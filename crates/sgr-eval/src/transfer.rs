//! The PGD transfer matrix (paper Table 1 right, Table 4).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use sgr_attacks::{Attack, Pgd};

use crate::checks::{Check, tolerance};
use crate::{Named, Result, Table, accuracy, adversarial_set, check_data, fmt_pct};

/// Settings; [`Default`] is the paper's: PGD-40 with steps of ε/5 at ε = 32/255.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransferConfig {
    pub eps: f64,
    pub steps: usize,
    pub batch_size: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            eps: 32.0 / 255.0,
            steps: 40,
            batch_size: 256,
        }
    }
}

/// `accuracy[t][s]`: model `t` on the PGD examples of source model `s`; the diagonal is white-box.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferMatrix {
    pub models: Vec<String>,
    pub images: usize,
    pub eps: f64,
    pub steps: usize,
    pub test: Vec<f64>,
    pub accuracy: Vec<Vec<f64>>,
    /// One check per model: no transferred attack beats the white-box one (else the white-box attack is
    /// being masked on that model).
    pub checks: Vec<Check>,
}

/// Makes each source model's PGD set once (N attack runs for N models) and feeds it to every model.
pub fn transfer_matrix(
    models: &[Named<'_>],
    x: &Tensor,
    y: &Tensor,
    cfg: &TransferConfig,
) -> Result<TransferMatrix> {
    let columns = (0..models.len())
        .map(|s| transfer_column(models, s, x, y, cfg))
        .collect::<Result<Vec<_>>>()?;
    TransferMatrix::from_columns(models, x, y, cfg, &columns)
}

/// One column of the matrix: the accuracy of every model on the PGD examples of `models[source]` (the
/// expensive part, one attack run; [`TransferMatrix::from_columns`] assembles the columns).
pub fn transfer_column(
    models: &[Named<'_>],
    source: usize,
    x: &Tensor,
    y: &Tensor,
    cfg: &TransferConfig,
) -> Result<Vec<f64>> {
    let src = models.get(source).ok_or_else(|| {
        crate::EvalError::Invalid(format!(
            "transfer source {source} of {} models",
            models.len()
        ))
    })?;
    let adv = transfer_examples(*src, x, y, cfg)?;
    models
        .iter()
        .map(|target| accuracy(target.model, &adv, y, cfg.batch_size))
        .collect()
}

/// The PGD examples of `source` that its column feeds to every model (`cfg.steps` steps of ε/5, no random
/// start): the expensive part of a column.
pub fn transfer_examples(
    source: Named<'_>,
    x: &Tensor,
    y: &Tensor,
    cfg: &TransferConfig,
) -> Result<Tensor> {
    let n = check_data(x, y)?;
    let attack = Pgd {
        steps: cfg.steps,
        ..Pgd::whitebox()
    };
    let _span = tracing::info_span!("transfer_source", model = source.name, images = n).entered();
    let adv = adversarial_set(x, y, cfg.batch_size, |_, xb, yb| {
        attack.run(source.model, xb, yb, cfg.eps)
    })?;
    tracing::info!(source = source.name, "transfer set done");
    Ok(adv)
}

impl TransferMatrix {
    /// ε in units of 1/255, rounded to 6 decimals (so that 64/255·255 reads 64, as the paper's tables and
    /// run names write it).
    pub fn eps_255(&self) -> f64 {
        (self.eps * 255.0 * 1e6).round() / 1e6
    }

    /// The matrix from its columns (`columns[s][t]`: model `t` on the PGD examples of model `s`, as
    /// [`transfer_column`] makes them), with every model's clean accuracy and the masking checks.
    pub fn from_columns(
        models: &[Named<'_>],
        x: &Tensor,
        y: &Tensor,
        cfg: &TransferConfig,
        columns: &[Vec<f64>],
    ) -> Result<Self> {
        let n = check_data(x, y)?;
        let k = models.len();
        if columns.len() != k || columns.iter().any(|c| c.len() != k) {
            return Err(crate::EvalError::Invalid(format!(
                "a transfer matrix of {k} models needs {k} columns of {k} accuracies"
            )));
        }
        let test = models
            .iter()
            .map(|m| accuracy(m.model, x, y, cfg.batch_size))
            .collect::<Result<Vec<_>>>()?;
        let acc: Vec<Vec<f64>> = (0..k)
            .map(|t| (0..k).map(|s| columns[s][t]).collect())
            .collect();
        let tol = tolerance(n);
        let checks = (0..k)
            .map(|t| {
                let worse: Vec<String> = (0..k)
                    .filter(|&s| s != t && acc[t][s] < acc[t][t] - tol)
                    .map(|s| format!("from {} {}", models[s].name, fmt_pct(acc[t][s])))
                    .collect();
                Check {
                    name: format!(
                        "transfer attacks on {} no stronger than white-box",
                        models[t].name
                    ),
                    passed: worse.is_empty(),
                    detail: if worse.is_empty() {
                        format!("white-box {} ≤ every transfer", fmt_pct(acc[t][t]))
                    } else {
                        format!("white-box {} but {}", fmt_pct(acc[t][t]), worse.join(", "))
                    },
                }
            })
            .collect();
        Ok(Self {
            models: models.iter().map(|m| m.name.to_string()).collect(),
            images: n,
            eps: cfg.eps,
            steps: cfg.steps,
            test,
            accuracy: acc,
            checks,
        })
    }
}

impl TransferMatrix {
    /// The paper's layout: rows are the evaluated models, `TEST`, then one column per source model.
    /// Off-diagonal (transfer) entries are bold as in the paper; an entry below its row's white-box
    /// accuracy (a masking sign) is marked `(!)`.
    pub fn table(&self) -> Table {
        let mut header = vec!["TRAIN. METH.".to_string(), "TEST".to_string()];
        header.extend(self.models.iter().cloned());
        let mut t = Table::new(header);
        let tol = tolerance(self.images);
        for (i, name) in self.models.iter().enumerate() {
            let mut row = vec![name.clone(), fmt_pct(self.test[i])];
            for (j, &a) in self.accuracy[i].iter().enumerate() {
                row.push(if i == j {
                    fmt_pct(a)
                } else if a < self.accuracy[i][i] - tol {
                    format!("**{}** (!)", fmt_pct(a))
                } else {
                    format!("**{}**", fmt_pct(a))
                });
            }
            t.push(row);
        }
        t
    }

    /// The same numbers without Markdown emphasis, for CSV.
    pub fn plain_table(&self) -> Table {
        let mut t = self.table();
        for row in &mut t.rows {
            for c in row.iter_mut().skip(2) {
                *c = c.replace("**", "").replace(" (!)", "");
            }
        }
        t
    }
}
