//! The Markdown sections of every evaluation report (white-box, transfer, AutoAttack, covariance, spread over
//! seeds, the paper's tables beside ours); the prose states the settings from the library's own constants.

use std::fmt::Write as _;

use sgr_attacks::Norm;

use crate::autoattack::{AutoAttackEval, AutoAttackRow, UNBOUNDED_LIMIT, autoattack_legend};
use crate::checks::tolerance_text;
use crate::figures::CovAnalysis;
use crate::table::{Table, fmt_pct};
use crate::transfer::TransferMatrix;
use crate::whitebox::{WhiteboxRow, whitebox_table};
use crate::{autoattack_table, paper};

/// The white-box section: the table, what each column means, and the masking checks of every row.
pub fn whitebox_markdown(dataset: &str, eps_255: f64, rows: &[WhiteboxRow]) -> String {
    let n = rows.first().map_or(0, |r| r.images);
    let mut md = format!(
        "## White-box accuracy (%) on {dataset}, ε = {eps_255:.0}/255, first {n} test images\n\n"
    );
    md += &whitebox_table(rows).to_markdown();
    let (nf, nm) = rows
        .first()
        .map_or((0, 0), |r| (r.fool_images, r.masking.images));
    let deepfool = sgr_attacks::DeepFool::default();
    let _ = write!(
        md,
        "\nRAND: uniform noise in [−ε, ε]. FGM: one step of L2 norm ε. FGSM: one step ε·sign(g). PGD: {} steps \
         of ε/5 (L∞, no random start). FOOL: DeepFool's ρ = mean ‖r‖₂/‖x‖₂ (overshoot {}, ≤ {} iterations) \
         on {nf} images. All attacks use the true labels; inputs are clipped to [0, 1].{}\n\n",
        rows.first()
            .and_then(|r| r.masking.steps_curve.first())
            .map_or(10, |p| p.0),
        deepfool.overshoot,
        deepfool.max_iter,
        rows.iter()
            .find(|r| r.aa.is_some())
            .map_or(String::new(), |r| format!(
                " AA: AutoAttack's standard suite (APGD-CE, APGD-T, FAB-T, Square; L∞, 100 iterations, 9 \
                 targets, 5,000 queries) on the first {} images; `cargo xtask eval-autoattack` gives each \
                 attack's column and its own masking checks.",
                r.aa_images
            ))
    );
    let _ = write!(
        md,
        "### Gradient-masking checks ({nm} images)\n\nAccuracy must fall with ε (PGD at ε/2, ε, 2ε, 255/255) and \
         must not rise with twice the PGD steps; PGD at 255/255 must reach ≤ {} %; PGD must beat FGSM and FGSM \
         must beat random noise (tolerance: {}).\n\n",
        100.0 * UNBOUNDED_LIMIT,
        tolerance_text()
    );
    for r in rows {
        let failed: Vec<_> = r.masking.failed().collect();
        if failed.is_empty() {
            let _ = writeln!(
                md,
                "- **{}**: all {} checks pass. ε sweep: {}.",
                r.model,
                r.masking.checks.len(),
                r.masking
                    .eps_curve
                    .iter()
                    .map(|(e, a)| format!("{:.0}/255 {:.1} %", e * 255.0, 100.0 * a))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        } else {
            for c in failed {
                let _ = writeln!(md, "- **{}: FLAGGED**, {}: {}", r.model, c.name, c.detail);
            }
        }
    }
    md
}

/// The transfer section: the matrix and its masking check.
pub fn transfer_markdown(dataset: &str, eps_255: f64, m: &TransferMatrix) -> String {
    let mut md = format!(
        "## PGD-{} transfer accuracy (%) on {dataset}, ε = {eps_255:.0}/255, first {} test images\n\n\
         Rows: the evaluated model; columns: the model whose PGD examples it sees. Diagonal: white-box; \
         **bold**: transfer. `(!)` marks a transfer attack stronger than the white-box one (a masking sign).\n\n",
        m.steps, m.images
    );
    md += &m.table().to_markdown();
    let failed: Vec<_> = m.checks.iter().filter(|c| !c.passed).collect();
    md += "\n";
    if failed.is_empty() {
        md += "Masking check: no transferred attack beats a white-box attack.\n";
    } else {
        for c in failed {
            let _ = writeln!(md, "- **FLAGGED**: {}: {}", c.name, c.detail);
        }
    }
    md
}

/// The covariance section of `model`'s adversarial perturbations, linking the figures under `fig_prefix`.
pub fn covariance_markdown(model: &str, a: &CovAnalysis, fig_prefix: &str) -> String {
    let mut md = format!(
        "## Covariance of adversarial perturbations of {model} ({} test images, ε = {:.0}/255)\n\n\
         | perturbation | mean ‖δ‖₂ | mean per-pixel variance |\n|:--|--:|--:|\n",
        a.images,
        a.eps * 255.0
    );
    for (name, norm, var) in &a.perturbations {
        let _ = writeln!(md, "| {name} | {norm:.3} | {var:.3e} |");
    }
    let _ = write!(
        md,
        "\nFig. 1: covariance matrices (centre crop, 25 % trimmed on each side, each scaled to max |entry| = 1) \
         beside the training data's.\n\n![]({fig_prefix}fig1_perturbation_covariance.png)\n\n\
         Fig. 2: covariance functions of the PGD perturbations (Algorithm 1: raw second moments by rounded pixel \
         distance).\n\n![]({fig_prefix}fig2_covariance_functions.png)\n\n\
         Fig. 5: the synthetic long-range-correlated covariances for ζ ∈ {{1, 2, 4, 8}} and the data's.\n\n\
         ![]({fig_prefix}fig5_lrc_covariances.png)\n"
    );
    md
}

/// ε as the report states it: `32/255` for L∞, the plain number for L2.
fn eps_text(cfg: &AutoAttackEval, eps: f64) -> (&'static str, String) {
    if cfg.suite.norm == Norm::LInf {
        ("L∞", format!("{:.0}/255", eps * 255.0))
    } else {
        ("L2", format!("{eps}"))
    }
}

/// The AutoAttack section: robust accuracy after each attack, the legend, and every flagged masking check.
pub fn autoattack_markdown(
    dataset: &str,
    eps: f64,
    cfg: &AutoAttackEval,
    rows: &[AutoAttackRow],
) -> String {
    let n = rows.first().map_or(0, |r| r.images);
    let (norm, eps) = eps_text(cfg, eps);
    let mut md = format!(
        "## AutoAttack robust accuracy (%) on {dataset}, {norm} ε = {eps}, first {n} test images\n\n"
    );
    md += &autoattack_table(rows).to_markdown();
    let _ = write!(md, "\n{}\n\n", autoattack_legend(cfg));
    for r in rows {
        for c in r.failed() {
            let _ = writeln!(md, "- **{}: FLAGGED**, {}: {}", r.model, c.name, c.detail);
        }
    }
    md
}

/// `{"n", "eps_255", "norm", "dataset", "models": {NAME: {"clean", "robust", <attack>: robust after it,
/// "pgd-K", "seconds", "<attack>_seconds", "masking_flags"}}}`.
pub fn autoattack_json(
    dataset: &str,
    eps: f64,
    cfg: &AutoAttackEval,
    rows: &[AutoAttackRow],
) -> serde_json::Value {
    let models: serde_json::Map<String, serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            o.insert("clean".into(), r.clean.into());
            o.insert("robust".into(), r.robust.into());
            for (a, v) in &r.after {
                o.insert(a.name().into(), (*v).into());
            }
            o.insert(format!("pgd-{}", r.pgd_steps), r.pgd.into());
            o.insert("seconds".into(), r.total_seconds().into());
            for (a, v) in &r.seconds {
                o.insert(format!("{}_seconds", a.name()), (*v).into());
            }
            o.insert(
                "masking_flags".into(),
                r.failed()
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>()
                    .into(),
            );
            (r.model.clone(), o.into())
        })
        .collect();
    serde_json::json!({
        "n": rows.first().map_or(0, |r| r.images),
        "eps_255": eps * 255.0,
        "norm": if cfg.suite.norm == Norm::LInf { "linf" } else { "l2" },
        "dataset": dataset,
        "models": models,
    })
}

/// Mean and sample standard deviation (n − 1) of at least two values.
pub fn mean_sd(v: &[f64]) -> Option<(f64, f64)> {
    if v.len() < 2 {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    Some((mean, sd))
}

/// "Spread over seeds": per method with at least two rows (one per seed), mean ± sample standard deviation
/// of each white-box column in %. Empty when no method has two.
pub fn seed_spread_markdown(groups: &[(String, Vec<&WhiteboxRow>)]) -> String {
    let with_aa = groups.iter().flat_map(|g| &g.1).any(|r| r.aa.is_some());
    let mut header = vec![
        "TRAIN. METH.",
        "seeds",
        "TEST",
        "RAND",
        "FGM",
        "FGSM",
        "PGD",
    ];
    if with_aa {
        header.push("AA");
    }
    let mut t = Table::new(header);
    let mut any = false;
    for (method, rows) in groups {
        if rows.len() < 2 {
            continue;
        }
        any = true;
        let stat = |f: &dyn Fn(&WhiteboxRow) -> Option<f64>| {
            let v: Vec<f64> = rows
                .iter()
                .filter_map(|r| f(r))
                .map(|x| 100.0 * x)
                .collect();
            mean_sd(&v).map_or("–".to_string(), |(m, s)| format!("{m:.2} ± {s:.2}"))
        };
        let mut row = vec![
            method.clone(),
            rows.len().to_string(),
            stat(&|r| Some(r.test)),
            stat(&|r| Some(r.rand)),
            stat(&|r| Some(r.fgm)),
            stat(&|r| Some(r.fgsm)),
            stat(&|r| Some(r.pgd)),
        ];
        if with_aa {
            row.push(stat(&|r| r.aa));
        }
        t.push(row);
    }
    if !any {
        return String::new();
    }
    format!(
        "\n### Spread over seeds (mean ± sample standard deviation, %)\n\n{}\n",
        t.to_markdown()
    )
}

/// The paper's budget for a data set's white-box table (Table 3), in 1/255.
pub fn paper_eps_255(dataset: &str) -> f64 {
    if dataset.starts_with("cifar") {
        4.0
    } else {
        32.0
    }
}

/// Our white-box rows beside the paper's Table 3 (`ours / paper` per cell; AA, which postdates the paper,
/// without a paper figure). `method_of` maps a row's model name to its training method. Empty when no row
/// has a paper counterpart.
pub fn paper_whitebox_markdown(
    dataset: &str,
    rows: &[WhiteboxRow],
    method_of: &dyn Fn(&str) -> String,
) -> String {
    if !rows
        .iter()
        .any(|r| paper::whitebox_row(dataset, &method_of(&r.model)).is_some())
    {
        return String::new();
    }
    let mut md = format!(
        "\n### Beside the paper (Table 3, ε = {:.0}/255; ours / paper)\n\n",
        paper_eps_255(dataset)
    );
    let with_aa = rows.iter().any(|r| r.aa.is_some());
    let mut header = vec!["TRAIN. METH.", "TEST", "RAND", "FGM", "FGSM", "PGD"];
    if with_aa {
        header.push("AA (ours)");
    }
    header.push("FOOL");
    let mut t = Table::new(header);
    for r in rows {
        let p = paper::whitebox_row(dataset, &method_of(&r.model));
        let cell = |ours: f64, i: usize| {
            let o = fmt_pct(ours);
            p.map_or(o.clone(), |p| format!("{o} / {:.1}", p.1[i]))
        };
        let mut row = vec![
            r.model.clone(),
            cell(r.test, 0),
            cell(r.rand, 1),
            cell(r.fgm, 2),
            cell(r.fgsm, 3),
            cell(r.pgd, 4),
        ];
        if with_aa {
            row.push(r.aa.map_or_else(|| "–".into(), fmt_pct));
        }
        row.push(p.map_or(format!("{:.3}", r.fool_rho), |p| {
            format!("{:.3} / {:.3}", r.fool_rho, p.2)
        }));
        t.push(row);
    }
    md += &t.to_markdown();
    md
}

/// The paper's MNIST transfer matrix (Table 4, ε = 32 or 64) for the models of `m`, in the same order; empty on
/// other data sets or budgets, or when no pair has a paper figure.
pub fn paper_transfer_markdown(
    dataset: &str,
    m: &TransferMatrix,
    method_of: &dyn Fn(&str) -> String,
) -> String {
    let eps_255 = m.eps_255();
    let entry = |t: &str, s: &str| paper::mnist_transfer(eps_255, &method_of(t), &method_of(s));
    if !dataset.starts_with("mnist") || !m.models.iter().any(|x| entry(x, x).is_some()) {
        return String::new();
    }
    let mut md = format!(
        "\n### The paper's MNIST transfer matrix for the same models (Table 4, ε = {eps_255:.0}/255, PGD-40, full test set{})\n\n",
        if eps_255 > 32.0 {
            "; the paper's PGD and FGSM models trained at this ε"
        } else {
            ""
        }
    );
    let mut header = vec!["TRAIN. METH.".to_string()];
    header.extend(m.models.iter().cloned());
    let mut t = Table::new(header);
    for target in &m.models {
        let mut row = vec![target.clone()];
        for source in &m.models {
            row.push(entry(target, source).map_or("–".into(), |v| format!("{v:.1}")));
        }
        t.push(row);
    }
    md += &t.to_markdown();
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, test: f64, pgd: f64, aa: Option<f64>) -> WhiteboxRow {
        let v = serde_json::json!({
            "model": model, "images": 100, "eps": 32.0 / 255.0, "test": test, "rand": test,
            "fgm": test, "fgsm": pgd, "pgd": pgd, "fool_rho": 0.2, "fool_images": 10,
            "masking": {"images": 10, "eps_curve": [], "steps_curve": [], "checks": []},
            "aa": aa, "aa_images": if aa.is_some() { 50 } else { 0 },
        });
        serde_json::from_value(v).expect("a white-box row")
    }

    /// The text with every run of whitespace as one space (tables pad their cells).
    fn squeeze(md: &str) -> String {
        md.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn seed_spread_gives_mean_and_sample_sd_per_method_with_two_seeds_or_more() {
        let rows = [
            row("sgr-sign-s0", 0.99, 0.70, None),
            row("sgr-sign-s1", 0.99, 0.72, None),
            row("sgr-sign-s2", 0.99, 0.74, None),
            row("gn-s0", 0.98, 0.80, None),
        ];
        let groups = vec![
            ("sgr-sign".to_string(), rows[..3].iter().collect()),
            ("gn".to_string(), vec![&rows[3]]),
        ];
        let md = squeeze(&seed_spread_markdown(&groups));
        // PGD 70, 72, 74 %: mean 72, sample SD 2; TEST identical: SD 0. gn has one seed: no row.
        assert!(md.contains("| sgr-sign | 3 | 99.00 ± 0.00 |"), "{md}");
        assert!(md.contains("| 72.00 ± 2.00 |"), "{md}");
        assert!(!md.contains("| gn |") && !md.contains("AA"), "{md}");
        assert_eq!(seed_spread_markdown(&groups[1..]), "");
        // An AA column appears when a row has AA; rows without it do not count.
        let with_aa = [
            row("a", 0.9, 0.5, Some(0.4)),
            row("b", 0.9, 0.5, Some(0.6)),
            row("c", 0.9, 0.5, None),
        ];
        let md = squeeze(&seed_spread_markdown(&[(
            "m".into(),
            with_aa.iter().collect(),
        )]));
        assert!(
            md.contains("| AA |") && md.contains("| 50.00 ± 14.14 |"),
            "{md}"
        );
    }

    #[test]
    fn paper_cells_sit_beside_ours_by_training_method() {
        let rows = [
            row("sgr-sign-s0", 0.9947, 0.7113, Some(0.5)),
            row("mine", 0.9, 0.1, None),
        ];
        let method_of = |m: &str| m.trim_end_matches("-s0").to_string();
        let md = squeeze(&paper_whitebox_markdown("mnist", &rows, &method_of));
        // The paper's MNIST SGR row: 99.5 test, 89.5 PGD (Table 3); a model without a paper row keeps ours only.
        assert!(md.contains("| sgr-sign-s0 | 99.5 / 99.5 |"), "{md}");
        assert!(md.contains("71.1 / 89.5"), "{md}");
        assert!(md.contains("| mine | 90.0 |"), "{md}");
        assert_eq!(
            paper_whitebox_markdown("fashion-mnist", &rows, &method_of),
            ""
        );
    }

    #[test]
    fn the_paper_transfer_table_follows_the_budget() {
        let m = |eps_255: f64| -> TransferMatrix {
            serde_json::from_value(serde_json::json!({
                "models": ["clean-s0", "sgr-sign-s0"], "images": 10, "eps": eps_255 / 255.0, "steps": 40,
                "test": [0.99, 0.99], "accuracy": [[0.0, 0.9], [0.9, 0.5]], "checks": [],
            }))
            .expect("a transfer matrix")
        };
        let method_of = |x: &str| x.trim_end_matches("-s0").to_string();
        // Table 4 at ε = 64: clean under its own PGD 0.6, sgr-sign under clean's 95.1, under its own 2.4.
        let md = squeeze(&paper_transfer_markdown("mnist", &m(64.0), &method_of));
        assert!(
            md.contains("ε = 64/255") && md.contains("trained at this ε"),
            "{md}"
        );
        assert!(md.contains("| clean-s0 | 0.6 | 38.1 |"), "{md}");
        assert!(md.contains("| sgr-sign-s0 | 95.1 | 2.4 |"), "{md}");
        let md = squeeze(&paper_transfer_markdown("mnist", &m(32.0), &method_of));
        assert!(md.contains("| sgr-sign-s0 | 98.8 | 86.9 |"), "{md}");
        assert_eq!(paper_transfer_markdown("mnist", &m(16.0), &method_of), "");
        assert_eq!(paper_transfer_markdown("cifar10", &m(32.0), &method_of), "");
    }

    #[test]
    fn mean_and_sample_sd_match_their_formulas() {
        assert_eq!(mean_sd(&[1.0]), None);
        let (m, s) = mean_sd(&[1.0, 2.0, 6.0]).expect("three values");
        // mean 3; squared deviations 4 + 1 + 9 = 14; 14 / 2 = 7.
        assert!((m - 3.0).abs() < 1e-15 && (s - 7f64.sqrt()).abs() < 1e-15);
    }
}
