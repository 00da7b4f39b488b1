//! The white-box table (paper Table 1 left, Table 3): TEST, RAND, FGM, FGSM, PGD-10, FOOL per model.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use sgr_attacks::{Attack, DeepFool, Fgm, Fgsm, Pgd, Rand};

use crate::checks::{MaskingReport, at_most, near_zero, non_increasing, tolerance};
use crate::{Named, Result, Table, accuracy, adversarial_set, batch_seed, check_data, fmt_pct};

/// Settings of a white-box evaluation; [`Default`] is the paper's (ε = 32/255, PGD-10 of ε/5, DeepFool
/// overshoot 0.02 and 100 iterations).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WhiteboxConfig {
    /// Attack budget in pixel units (the paper's ε/255).
    pub eps: f64,
    pub pgd_steps: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// DeepFool runs on the first this many images (0: all). It costs ~K backward passes per iteration.
    pub deepfool_images: usize,
    /// The masking sweeps (ε ∈ {ε/2, ε, 2ε, 1}, 2× steps) run on the first this many images (0: all).
    pub masking_images: usize,
    pub deepfool_max_iter: usize,
    /// AutoAttack (the AA column) with these settings (its ε is replaced by `eps`), on the first
    /// `autoattack_images` images (0: all); `None` leaves the column out.
    #[serde(default)]
    pub autoattack: Option<sgr_attacks::AutoAttack>,
    #[serde(default)]
    pub autoattack_images: usize,
}

impl Default for WhiteboxConfig {
    fn default() -> Self {
        Self {
            eps: 32.0 / 255.0,
            pgd_steps: 10,
            batch_size: 256,
            seed: 0,
            deepfool_images: 0,
            masking_images: 0,
            deepfool_max_iter: 100,
            autoattack: None,
            autoattack_images: 0,
        }
    }
}

/// One model's row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WhiteboxRow {
    pub model: String,
    pub images: usize,
    pub eps: f64,
    pub test: f64,
    pub rand: f64,
    pub fgm: f64,
    pub fgsm: f64,
    pub pgd: f64,
    /// DeepFool's ρ: mean ‖r‖₂/‖x‖₂ (DeepFool paper eq. 2) over `fool_images` images.
    pub fool_rho: f64,
    pub fool_images: usize,
    pub masking: MaskingReport,
    /// AutoAttack's robust accuracy on the first `aa_images` images, where asked for.
    #[serde(default)]
    pub aa: Option<f64>,
    #[serde(default)]
    pub aa_images: usize,
}

fn pgd(steps: usize) -> Pgd {
    Pgd {
        steps,
        ..Pgd::whitebox()
    }
}

fn pgd_accuracy(
    model: &Named<'_>,
    x: &Tensor,
    y: &Tensor,
    eps: f64,
    steps: usize,
    bs: usize,
) -> Result<f64> {
    let adv = adversarial_set(x, y, bs, |_, xb, yb| {
        pgd(steps).run(model.model, xb, yb, eps)
    })?;
    accuracy(model.model, &adv, y, bs)
}

/// Evaluates one model: clean accuracy, the four ε-bounded attacks, DeepFool's ρ, and the masking checks.
pub fn whitebox(
    model: Named<'_>,
    x: &Tensor,
    y: &Tensor,
    cfg: &WhiteboxConfig,
) -> Result<WhiteboxRow> {
    let n = check_data(x, y)?;
    let _span = tracing::info_span!("whitebox", model = model.name, images = n).entered();
    let (eps, bs, m) = (cfg.eps, cfg.batch_size, model.model);
    let test = accuracy(m, x, y, bs)?;
    let rand_adv = adversarial_set(x, y, bs, |i, xb, yb| {
        Rand {
            seed: batch_seed(cfg.seed, sgr_data::streams::WHITEBOX_NOISE, i),
        }
        .run(m, xb, yb, eps)
    })?;
    let rand = accuracy(m, &rand_adv, y, bs)?;
    let fgm = accuracy(
        m,
        &adversarial_set(x, y, bs, |_, xb, yb| Fgm.run(m, xb, yb, eps))?,
        y,
        bs,
    )?;
    let fgsm = accuracy(
        m,
        &adversarial_set(x, y, bs, |_, xb, yb| Fgsm.run(m, xb, yb, eps))?,
        y,
        bs,
    )?;
    let pgd_acc = pgd_accuracy(&model, x, y, eps, cfg.pgd_steps, bs)?;
    tracing::info!(
        test,
        rand,
        fgm,
        fgsm,
        pgd = pgd_acc,
        "white-box attacks done"
    );

    let nf = if cfg.deepfool_images == 0 {
        n
    } else {
        cfg.deepfool_images.min(n)
    };
    let deepfool = DeepFool {
        max_iter: cfg.deepfool_max_iter,
        ..DeepFool::default()
    };
    let mut rho_sum = 0.0;
    for (s, len) in crate::batches(nf, bs) {
        let r = deepfool.attack(m, &x.narrow(0, s, len)?)?;
        rho_sum += r.rho_per_example.iter().sum::<f64>();
    }
    let fool_rho = rho_sum / nf as f64;

    // Masking sweeps on the first `nm` images.
    let nm = if cfg.masking_images == 0 {
        n
    } else {
        cfg.masking_images.min(n)
    };
    let (xm, ym) = (x.narrow(0, 0, nm)?, y.narrow(0, 0, nm)?);
    let tol = tolerance(nm);
    let clean_m = accuracy(m, &xm, &ym, bs)?;
    let mut eps_curve = vec![(0.0, clean_m)];
    for e in [eps / 2.0, eps, (2.0 * eps).min(1.0), 1.0] {
        if eps_curve.last().is_some_and(|&(le, _)| e <= le) {
            continue;
        }
        // On the full set, the point at the table's ε is the table's PGD column: reuse it.
        let acc = if e == eps && nm == n {
            pgd_acc
        } else {
            pgd_accuracy(&model, &xm, &ym, e, cfg.pgd_steps, bs)?
        };
        eps_curve.push((e, acc));
    }
    let pgd_m = eps_curve
        .iter()
        .find(|(e, _)| *e == eps)
        .map_or(f64::NAN, |p| p.1);
    let more = 2 * cfg.pgd_steps.max(1);
    let steps_curve = vec![
        (cfg.pgd_steps, pgd_m),
        (more, pgd_accuracy(&model, &xm, &ym, eps, more, bs)?),
    ];
    let unbounded = eps_curve.last().map_or(f64::NAN, |p| p.1);
    let label = |e: f64| format!("ε {:.0}/255", e * 255.0);
    let checks = vec![
        non_increasing(
            "accuracy falls as ε grows",
            &eps_curve
                .iter()
                .map(|&(e, a)| (if e == 0.0 { "clean".into() } else { label(e) }, a))
                .collect::<Vec<_>>(),
            tol,
        ),
        non_increasing(
            "more PGD steps do not raise accuracy",
            &steps_curve
                .iter()
                .map(|&(k, a)| (format!("PGD-{k}"), a))
                .collect::<Vec<_>>(),
            tol,
        ),
        near_zero(
            "PGD at ε = 255/255 reaches ~0 %",
            "PGD at 255/255",
            unbounded,
            crate::UNBOUNDED_LIMIT.max(tol),
        ),
        at_most(
            "PGD at least as strong as FGSM",
            ("PGD", pgd_acc),
            ("FGSM", fgsm),
            tolerance(n),
        ),
        at_most(
            "FGSM at least as strong as random noise",
            ("FGSM", fgsm),
            ("RAND", rand),
            tolerance(n),
        ),
    ];
    let (aa, aa_images) = match &cfg.autoattack {
        Some(suite) => {
            let na = if cfg.autoattack_images == 0 {
                n
            } else {
                cfg.autoattack_images.min(n)
            };
            let suite = sgr_attacks::AutoAttack {
                eps,
                ..suite.clone()
            };
            let st = suite.run_all(m, &x.narrow(0, 0, na)?, &y.narrow(0, 0, na)?)?;
            tracing::info!(aa = st.robust_accuracy(), images = na, "AutoAttack done");
            (Some(st.robust_accuracy()), na)
        }
        None => (None, 0),
    };
    crate::checks::warn_failed(model.name, &checks);
    Ok(WhiteboxRow {
        model: model.name.to_string(),
        images: n,
        eps,
        test,
        rand,
        fgm,
        fgsm,
        pgd: pgd_acc,
        fool_rho,
        fool_images: nf,
        aa,
        aa_images,
        masking: MaskingReport {
            images: nm,
            eps_curve,
            steps_curve,
            checks,
        },
    })
}

/// The paper's layout: `TRAIN. METH. | TEST | RAND | FGM | FGSM | PGD | FOOL`, plus AutoAttack's `AA` after
/// `PGD` where a row has it, and a masking verdict.
pub fn whitebox_table(rows: &[WhiteboxRow]) -> Table {
    let with_aa = rows.iter().any(|r| r.aa.is_some());
    let mut header = vec!["TRAIN. METH.", "TEST", "RAND", "FGM", "FGSM", "PGD"];
    if with_aa {
        header.push("AA");
    }
    header.extend(["FOOL", "masking checks"]);
    let mut t = Table::new(header);
    for r in rows {
        let failed: Vec<&str> = r.masking.failed().map(|c| c.name.as_str()).collect();
        let mut row = vec![
            r.model.clone(),
            fmt_pct(r.test),
            fmt_pct(r.rand),
            fmt_pct(r.fgm),
            fmt_pct(r.fgsm),
            fmt_pct(r.pgd),
        ];
        if with_aa {
            row.push(r.aa.map_or_else(|| "–".into(), fmt_pct));
        }
        row.extend([
            format!("{:.3}", r.fool_rho),
            if failed.is_empty() {
                "ok".into()
            } else {
                format!("FLAGGED: {}", failed.join("; "))
            },
        ]);
        t.push(row);
    }
    t
}
