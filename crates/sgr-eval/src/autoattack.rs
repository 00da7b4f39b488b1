//! AutoAttack evaluation: robust accuracy after each attack of the standard suite, PGD beside it, and the
//! gradient-masking checks AutoAttack's authors recommend; driven resumably.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use sgr_attacks::{AaAttack, Apgd, Attack, AutoAttack, AutoAttackState, Norm, Pgd, StepReport};

use crate::checks::{Check, at_most, near_zero, tolerance};
use crate::{Named, Result, Table, accuracy, adversarial_set, check_data, fmt_pct};

/// How far Square may lower the accuracy the gradient attacks left before the row is flagged (0.2 points,
/// AutoAttack's own warning threshold).
pub const SQUARE_GAIN_LIMIT: f64 = 0.002;

/// The accuracy an attack with an unbounded budget must reach.
pub const UNBOUNDED_LIMIT: f64 = 0.02;

/// Settings of an AutoAttack evaluation: the suite, and the extra runs behind the masking checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoAttackEval {
    pub suite: AutoAttack,
    /// Steps of the PGD column (step ε/5, no random start: the white-box table's PGD).
    pub pgd_steps: usize,
    /// APGD-CE with an unbounded budget runs on the first this many images (0: all).
    pub masking_images: usize,
}

impl Default for AutoAttackEval {
    fn default() -> Self {
        Self {
            suite: AutoAttack::default(),
            pgd_steps: 10,
            masking_images: 200,
        }
    }
}

/// One model's row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoAttackRow {
    pub model: String,
    pub images: usize,
    pub eps: f64,
    pub norm: Norm,
    pub clean: f64,
    /// PGD at the same ε and norm (`pgd_steps` steps of ε/5, no random start).
    pub pgd: f64,
    pub pgd_steps: usize,
    /// Robust accuracy after each attack (cumulative, as AutoAttack reports it).
    pub after: Vec<(AaAttack, f64)>,
    /// After the last attack: the AA column.
    pub robust: f64,
    /// Seconds each attack took (summed over resumed sessions).
    pub seconds: Vec<(AaAttack, f64)>,
    pub checks: Vec<Check>,
}

impl AutoAttackRow {
    pub fn total_seconds(&self) -> f64 {
        self.seconds.iter().map(|s| s.1).sum()
    }

    pub fn after_attack(&self, a: AaAttack) -> Option<f64> {
        self.after.iter().find(|p| p.0 == a).map(|p| p.1)
    }

    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

/// Runs `suite` from `state` (or from the start) until it is done or `progress`, called after every unit of
/// work, breaks; calls `save` at least every `save_every`, after each attack, and when it returns.
#[allow(clippy::too_many_arguments)]
pub fn run_suite(
    model: Named<'_>,
    x: &Tensor,
    y: &Tensor,
    suite: &AutoAttack,
    state: Option<AutoAttackState>,
    save_every: Duration,
    mut save: impl FnMut(&AutoAttackState) -> Result<()>,
    mut progress: impl FnMut(&AutoAttackState, &StepReport) -> ControlFlow<()>,
) -> Result<AutoAttackState> {
    let n = check_data(x, y)?;
    let _span = tracing::info_span!("autoattack", model = model.name, images = n).entered();
    let mut state = match state {
        Some(s) => {
            suite.check_state(&s, n)?;
            s
        }
        None => {
            let s = suite.start(model.model, x, y)?;
            save(&s)?;
            s
        }
    };
    let mut saved = Instant::now();
    while state.attack < suite.attacks.len() {
        let report = suite.step(model.model, x, y, &mut state)?;
        let flow = progress(&state, &report);
        if report.attack_done {
            tracing::info!(
                attack = report.attack.name(),
                robust = state.robust_accuracy(),
                "attack done"
            );
        }
        if flow.is_break() {
            save(&state)?;
            break;
        }
        if report.attack_done || report.done || saved.elapsed() >= save_every {
            save(&state)?;
            saved = Instant::now();
        }
    }
    Ok(state)
}

/// The row of a finished run: its accuracies, the PGD column and the masking checks (which run PGD and an
/// unbounded APGD-CE on `x`).
pub fn autoattack_row(
    model: Named<'_>,
    x: &Tensor,
    y: &Tensor,
    cfg: &AutoAttackEval,
    state: &AutoAttackState,
) -> Result<AutoAttackRow> {
    let n = check_data(x, y)?;
    let suite = &cfg.suite;
    if !state.done() || state.after.len() != suite.attacks.len() {
        return Err(crate::EvalError::Invalid(format!(
            "the AutoAttack run of {} has not finished",
            model.name
        )));
    }
    let bs = suite.batch_size;
    let m = model.model;
    let pgd = Pgd {
        steps: cfg.pgd_steps,
        norm: suite.norm,
        ..Pgd::whitebox()
    };
    let pgd_acc = accuracy(
        m,
        &adversarial_set(x, y, bs, |_, xb, yb| pgd.run(m, xb, yb, suite.eps))?,
        y,
        bs,
    )?;
    let after: Vec<(AaAttack, f64)> = suite
        .attacks
        .iter()
        .copied()
        .zip(state.after.iter().copied())
        .collect();
    let mut checks = Vec::new();
    if let Some(i) = suite.attacks.iter().position(|&a| a == AaAttack::Square) {
        if i > 0 && suite.attacks[..i].iter().any(|a| a.uses_gradients()) {
            let (before, after) = (state.after[i - 1], state.after[i]);
            checks.push(Check {
                name: "Square adds little to the gradient attacks".into(),
                passed: before - after <= SQUARE_GAIN_LIMIT + 1e-12,
                detail: format!(
                    "before Square {:.1} %, after {:.1} % (limit {:.1} points)",
                    100.0 * before,
                    100.0 * after,
                    100.0 * SQUARE_GAIN_LIMIT
                ),
            });
        }
    }
    if let Some(i) = suite.attacks.iter().position(|&a| a == AaAttack::ApgdCe) {
        checks.push(at_most(
            "APGD-CE at least as strong as PGD",
            ("APGD-CE", state.after[i]),
            (&format!("PGD-{}", cfg.pgd_steps), pgd_acc),
            tolerance(n),
        ));
    }
    let nm = if cfg.masking_images == 0 {
        n
    } else {
        cfg.masking_images.min(n)
    };
    let (xm, ym) = (x.narrow(0, 0, nm)?, y.narrow(0, 0, nm)?);
    // The largest budget that matters: the whole box.
    let unbounded = match suite.norm {
        Norm::LInf => 1.0,
        Norm::L2 => ((x.elem_count() / n) as f64).sqrt(),
    };
    let apgd = Apgd {
        norm: suite.norm,
        steps: suite.apgd_steps,
        seed: suite.seed,
        ..Apgd::default()
    };
    let open = accuracy(
        m,
        &adversarial_set(&xm, &ym, bs, |_, xb, yb| apgd.run(m, xb, yb, unbounded))?,
        &ym,
        bs,
    )?;
    checks.push(near_zero(
        "APGD-CE with an unbounded budget reaches ~0 %",
        &format!("APGD-CE at ε = {unbounded} ({nm} images)"),
        open,
        UNBOUNDED_LIMIT.max(tolerance(nm)),
    ));
    crate::checks::warn_failed(model.name, &checks);
    Ok(AutoAttackRow {
        model: model.name.to_string(),
        images: n,
        eps: suite.eps,
        norm: suite.norm,
        clean: state.clean_accuracy(),
        pgd: pgd_acc,
        pgd_steps: cfg.pgd_steps,
        robust: state.robust_accuracy(),
        seconds: suite
            .attacks
            .iter()
            .copied()
            .zip(state.seconds.iter().copied())
            .collect(),
        after,
        checks,
    })
}

/// `MODEL | TEST | PGD-k | APGD-CE | … | AA | seconds | masking checks`, accuracies in %.
pub fn autoattack_table(rows: &[AutoAttackRow]) -> Table {
    let attacks: Vec<AaAttack> = rows
        .first()
        .map(|r| r.after.iter().map(|p| p.0).collect())
        .unwrap_or_default();
    let mut header = vec![
        "MODEL".to_string(),
        "TEST".into(),
        format!("PGD-{}", rows.first().map_or(10, |r| r.pgd_steps)),
    ];
    header.extend(attacks.iter().map(|a| a.name().to_uppercase()));
    header.extend(["AA".into(), "seconds".into(), "masking checks".into()]);
    let mut t = Table::new(header);
    for r in rows {
        let mut row = vec![r.model.clone(), fmt_pct(r.clean), fmt_pct(r.pgd)];
        row.extend(r.after.iter().map(|p| fmt_pct(p.1)));
        let failed: Vec<&str> = r.failed().map(|c| c.name.as_str()).collect();
        row.extend([
            fmt_pct(r.robust),
            format!(
                "{:.0} ({})",
                r.total_seconds(),
                r.seconds
                    .iter()
                    .map(|s| format!("{:.0}", s.1))
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
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

/// What the table's columns mean, generated from the settings.
pub fn autoattack_legend(cfg: &AutoAttackEval) -> String {
    let s = &cfg.suite;
    let norm = match s.norm {
        Norm::LInf => "L∞",
        Norm::L2 => "L2",
    };
    format!(
        "AutoAttack (Croce & Hein 2020), {norm}, each attack on the points still robust after the previous ones \
         (columns: robust accuracy after it, cumulative; AA = after the last). APGD-CE: {apgd} iterations, \
         cross-entropy, random start; APGD-T: targeted DLR loss, {apgd} iterations per target, the {t} most likely \
         other classes; FAB-T: {fab} iterations per target, a point broken where the smallest perturbation found \
         is within ε; Square: {sq} queries, margin loss, no gradients. PGD-{pgd}: steps of ε/5, no random start. \
         Masking checks: Square may lower the gradient attacks' accuracy by at most {sg:.1} points; APGD-CE must \
         be at least as strong as PGD-{pgd}; APGD-CE with an unbounded budget must reach ≤ {ub:.0} %. Seed {seed}.",
        apgd = s.apgd_steps,
        t = s.targets,
        fab = s.fab_steps,
        sq = s.square_queries,
        pgd = cfg.pgd_steps,
        sg = 100.0 * SQUARE_GAIN_LIMIT,
        ub = 100.0 * UNBOUNDED_LIMIT,
        seed = s.seed,
    )
}
