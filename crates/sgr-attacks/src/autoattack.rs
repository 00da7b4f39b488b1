//! AutoAttack's standard suite (Croce & Hein, ICML 2020): APGD-CE → APGD-T → FAB-T → Square, each on the points
//! still robust, per-point worst case; driven in small resumable units of work.
//!
//! The suite's whole progress is an [`AutoAttackState`] (serde): which points are still robust, which attack and
//! chunk of points comes next, Square's search state. [`AutoAttack::step`] does one unit (one chunk of
//! `batch_size` points for APGD-CE, one target for APGD-T and FAB-T, one segment of 100 iterations for Square)
//! and returns; a caller saves the state between units and can stop anywhere. Every random draw derives from
//! `(seed, attack, point, target or segment)`, so a resumed run ends with the same numbers as an
//! uninterrupted one.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::Module;
use serde::{Deserialize, Serialize};

use crate::apgd::{Batch, host};
use crate::logits::{LogitLoss, logits_rows};
use crate::square::SquarePoint;
use crate::{Apgd, ApgdTargeted, FabTargeted, Norm, Square, check_eps};

/// One attack of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AaAttack {
    ApgdCe,
    ApgdT,
    FabT,
    Square,
}

impl AaAttack {
    /// The standard version's attacks, in order.
    pub const STANDARD: [AaAttack; 4] = [
        AaAttack::ApgdCe,
        AaAttack::ApgdT,
        AaAttack::FabT,
        AaAttack::Square,
    ];

    /// The name reports and flags use: `apgd-ce`, `apgd-t`, `fab-t`, `square`.
    pub fn name(self) -> &'static str {
        match self {
            AaAttack::ApgdCe => "apgd-ce",
            AaAttack::ApgdT => "apgd-t",
            AaAttack::FabT => "fab-t",
            AaAttack::Square => "square",
        }
    }

    /// Whether the attack follows gradients (Square does not).
    pub fn uses_gradients(self) -> bool {
        self != AaAttack::Square
    }
}

impl std::str::FromStr for AaAttack {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        AaAttack::STANDARD
            .into_iter()
            .find(|a| a.name() == s.trim())
            .ok_or_else(|| {
                format!("unknown attack '{s}': expected apgd-ce, apgd-t, fab-t or square")
            })
    }
}

/// The suite's settings; [`Default`] is AutoAttack's standard version at ε = 8/255, L∞.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoAttack {
    pub norm: Norm,
    /// Budget in pixel units.
    pub eps: f64,
    pub attacks: Vec<AaAttack>,
    pub seed: u64,
    /// Points attacked together.
    pub batch_size: usize,
    pub apgd_steps: usize,
    pub fab_steps: usize,
    pub square_queries: usize,
    /// Target classes of APGD-T and FAB-T.
    pub targets: usize,
}

impl Default for AutoAttack {
    fn default() -> Self {
        Self {
            norm: Norm::LInf,
            eps: 8.0 / 255.0,
            attacks: AaAttack::STANDARD.to_vec(),
            seed: 0,
            batch_size: 250,
            apgd_steps: 100,
            fab_steps: 100,
            square_queries: 5000,
            targets: 9,
        }
    }
}

/// Where a run of the suite stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoAttackState {
    /// The number of points.
    pub n: usize,
    /// Points the model classifies correctly without attack.
    pub clean: Vec<bool>,
    /// Points no attack has broken so far.
    pub robust: Vec<bool>,
    /// The attack (index into the suite's list) that broke each point.
    pub broken_by: Vec<Option<usize>>,
    /// The attack now running (the list's length once done).
    pub attack: usize,
    /// The points robust when that attack began, attacked in chunks of `batch_size`.
    pub queue: Vec<usize>,
    pub chunk: usize,
    /// The unit within the chunk: target rank (APGD-T, FAB-T) or Square's segment (0: initialisation).
    pub stage: usize,
    /// Square's search on the current chunk: (point, state).
    pub square: Vec<(usize, SquarePoint)>,
    /// Robust accuracy after each finished attack.
    pub after: Vec<f64>,
    /// Seconds spent in each attack (summed over resumed sessions).
    pub seconds: Vec<f64>,
}

impl AutoAttackState {
    pub fn done(&self) -> bool {
        self.attack >= self.seconds.len()
    }

    pub fn clean_accuracy(&self) -> f64 {
        self.clean.iter().filter(|&&c| c).count() as f64 / self.n.max(1) as f64
    }

    pub fn robust_accuracy(&self) -> f64 {
        self.robust.iter().filter(|&&c| c).count() as f64 / self.n.max(1) as f64
    }

    /// Points of the current attack's queue not yet attacked (the current chunk counts as left).
    pub fn points_left(&self, batch_size: usize) -> usize {
        self.queue
            .len()
            .saturating_sub(self.chunk * batch_size.max(1))
    }
}

/// What one [`AutoAttack::step`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// The attack the unit belonged to.
    pub attack: AaAttack,
    /// Whether that attack finished with this unit.
    pub attack_done: bool,
    /// Whether the whole suite is done.
    pub done: bool,
}

impl AutoAttack {
    fn validate(&self) -> Result<()> {
        check_eps(self.eps)?;
        if self.attacks.is_empty() {
            candle_core::bail!("AutoAttack needs at least one attack");
        }
        if self.batch_size == 0 {
            candle_core::bail!("AutoAttack's batch size must be positive");
        }
        if self.norm == Norm::L2 && self.attacks.contains(&AaAttack::Square) {
            candle_core::bail!(
                "Square is implemented for L∞ only; for --norm l2 run apgd-ce,apgd-t,fab-t"
            );
        }
        Ok(())
    }

    /// The state before any attack: clean predictions of `model` on `x` (`(N, C, H, W)`) with labels `y`.
    pub fn start(&self, model: &dyn Module, x: &Tensor, y: &Tensor) -> Result<AutoAttackState> {
        self.validate()?;
        let n = x.dim(0)?;
        if y.dims() != [n] {
            candle_core::bail!("AutoAttack: {n} images but labels shaped {:?}", y.dims());
        }
        let mut clean = Vec::with_capacity(n);
        for s in (0..n).step_by(self.batch_size) {
            let len = self.batch_size.min(n - s);
            let pred = model
                .forward(&x.narrow(0, s, len)?.detach())?
                .argmax(D::Minus1)?
                .eq(&y.narrow(0, s, len)?.to_dtype(DType::U32)?)?
                .to_device(&Device::Cpu)?
                .to_vec1::<u8>()?;
            clean.extend(pred.into_iter().map(|v| v != 0));
        }
        let queue = (0..n).filter(|&i| clean[i]).collect();
        Ok(AutoAttackState {
            n,
            robust: clean.clone(),
            clean,
            broken_by: vec![None; n],
            attack: 0,
            queue,
            chunk: 0,
            stage: 0,
            square: Vec::new(),
            after: Vec::new(),
            seconds: vec![0.0; self.attacks.len()],
        })
    }

    /// Runs the whole suite: the state when done.
    pub fn run_all(&self, model: &dyn Module, x: &Tensor, y: &Tensor) -> Result<AutoAttackState> {
        let mut state = self.start(model, x, y)?;
        while !self.step(model, x, y, &mut state)?.done {}
        Ok(state)
    }

    /// Units of work [`AutoAttack::step`] spends on one chunk of `attack` for a `classes`-class model: one
    /// for APGD-CE, one per target for APGD-T and FAB-T, Square's initialisation and each of its segments.
    pub fn units_per_chunk(&self, attack: AaAttack, classes: usize) -> usize {
        match attack {
            AaAttack::ApgdCe => 1,
            AaAttack::ApgdT | AaAttack::FabT => crate::target_runs(self.targets, classes).max(1),
            AaAttack::Square => self.square_queries.div_ceil(crate::SQUARE_SEGMENT) + 1,
        }
    }

    /// Checks that `state` belongs to this suite and these points.
    pub fn check_state(&self, state: &AutoAttackState, n: usize) -> Result<()> {
        let fits = state.n == n
            && state.clean.len() == n
            && state.robust.len() == n
            && state.broken_by.len() == n
            && state.seconds.len() == self.attacks.len()
            && state.after.len() <= self.attacks.len()
            && state.attack <= self.attacks.len()
            && state.queue.iter().all(|&i| i < n);
        if !fits {
            candle_core::bail!(
                "the saved AutoAttack state does not fit these settings ({} points, {} attacks)",
                n,
                self.attacks.len()
            );
        }
        Ok(())
    }

    /// Does one unit of work and advances `state`.
    pub fn step(
        &self,
        model: &dyn Module,
        x: &Tensor,
        y: &Tensor,
        state: &mut AutoAttackState,
    ) -> Result<StepReport> {
        self.validate()?;
        self.check_state(state, x.dim(0)?)?;
        if state.attack >= self.attacks.len() {
            return Ok(StepReport {
                attack: *self.attacks.last().unwrap_or(&AaAttack::ApgdCe),
                attack_done: true,
                done: true,
            });
        }
        let attack = self.attacks[state.attack];
        let t0 = std::time::Instant::now();
        let bs = self.batch_size;
        let start = state.chunk * bs;
        if start < state.queue.len() {
            let chunk: Vec<usize> =
                state.queue[start..(start + bs).min(state.queue.len())].to_vec();
            let _span = tracing::debug_span!(
                "autoattack_unit",
                attack = attack.name(),
                chunk = state.chunk,
                stage = state.stage
            )
            .entered();
            let chunk_done = self.unit(model, x, y, state, attack, &chunk)?;
            if chunk_done {
                state.chunk += 1;
                state.stage = 0;
                state.square.clear();
            } else {
                state.stage += 1;
            }
        }
        state.seconds[state.attack] += t0.elapsed().as_secs_f64();
        let attack_done = state.chunk * bs >= state.queue.len();
        if attack_done {
            state.after.push(state.robust_accuracy());
            state.attack += 1;
            state.queue = (0..state.n).filter(|&i| state.robust[i]).collect();
            state.chunk = 0;
            state.stage = 0;
        }
        Ok(StepReport {
            attack,
            attack_done,
            done: state.attack >= self.attacks.len(),
        })
    }

    fn mark(&self, state: &mut AutoAttackState, point: usize) {
        state.robust[point] = false;
        state.broken_by[point] = Some(state.attack);
    }

    /// One unit of `attack` on the chunk; whether the chunk is finished.
    fn unit(
        &self,
        model: &dyn Module,
        x: &Tensor,
        y: &Tensor,
        state: &mut AutoAttackState,
        attack: AaAttack,
        chunk: &[usize],
    ) -> Result<bool> {
        let idx = Tensor::new(
            chunk
                .iter()
                .map(|&i| i as u32)
                .collect::<Vec<_>>()
                .as_slice(),
            x.device(),
        )?;
        let xc = x.index_select(&idx, 0)?;
        let (rows, ys) = host(&xc, &y.index_select(&idx, 0)?)?;
        // The chunk's points still robust, as positions in the chunk.
        let live: Vec<usize> = (0..chunk.len())
            .filter(|&k| state.robust[chunk[k]])
            .collect();
        let batch = Batch::new(live.iter().map(|&k| rows[k].as_slice()).collect(), &xc);
        let ids: Vec<u64> = live.iter().map(|&k| chunk[k] as u64).collect();
        let sub_y: Vec<usize> = live.iter().map(|&k| ys[k]).collect();
        let k_classes = || -> Result<(Vec<Vec<f64>>, usize)> {
            let z = logits_rows(model, &xc)?;
            let k = z.first().map_or(0, Vec::len);
            Ok((live.iter().map(|&p| z[p].clone()).collect(), k))
        };
        match attack {
            AaAttack::ApgdCe => {
                let apgd = Apgd {
                    norm: self.norm,
                    steps: self.apgd_steps,
                    loss: LogitLoss::Ce,
                    seed: self.seed,
                    ..Apgd::default()
                };
                let res = apgd.run_batch(model, &batch, &ids, &sub_y, self.eps)?;
                for (a, &k) in live.iter().enumerate() {
                    if res[a].is_some() {
                        self.mark(state, chunk[k]);
                    }
                }
                Ok(true)
            }
            AaAttack::ApgdT => {
                let t = ApgdTargeted {
                    norm: self.norm,
                    steps: self.apgd_steps,
                    targets: self.targets,
                    seed: self.seed,
                    ..ApgdTargeted::default()
                };
                let (zl, k) = k_classes()?;
                let runs = t.runs(k);
                if state.stage < runs && !live.is_empty() {
                    let res =
                        t.run_target(model, &batch, &ids, &sub_y, &zl, state.stage, self.eps)?;
                    for (a, &p) in live.iter().enumerate() {
                        if res[a].is_some() {
                            self.mark(state, chunk[p]);
                        }
                    }
                }
                Ok(state.stage + 1 >= runs || live.is_empty())
            }
            AaAttack::FabT => {
                let fab = FabTargeted {
                    norm: self.norm,
                    steps: self.fab_steps,
                    targets: self.targets,
                    ..FabTargeted::default()
                };
                let (zl, k) = k_classes()?;
                let runs = fab.runs(k);
                if state.stage < runs && !live.is_empty() {
                    let res = fab.run_target(model, &batch, &sub_y, &zl, state.stage)?;
                    for (a, &p) in live.iter().enumerate() {
                        if res[a].as_ref().is_some_and(|f| f.distance <= self.eps) {
                            self.mark(state, chunk[p]);
                        }
                    }
                }
                Ok(state.stage + 1 >= runs || live.is_empty())
            }
            AaAttack::Square => {
                if x.rank() != 4 {
                    candle_core::bail!("Square needs (N, C, H, W) images, got {:?}", x.dims());
                }
                let sq = Square {
                    queries: self.square_queries,
                    seed: self.seed,
                    ..Square::default()
                };
                if state.stage == 0 {
                    let pts = sq.init(model, &batch, &ids, &sub_y, self.eps)?;
                    state.square = live.iter().map(|&p| chunk[p]).zip(pts).collect();
                } else {
                    // The points of the chunk that entered the search (all robust at its start).
                    let pos: Vec<usize> = state
                        .square
                        .iter()
                        .map(|(p, _)| chunk.iter().position(|c| c == p))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| {
                            candle_core::Error::Msg(
                                "Square's saved points are not in this chunk".into(),
                            )
                        })?;
                    let sbatch = Batch::new(pos.iter().map(|&k| rows[k].as_slice()).collect(), &xc);
                    let sids: Vec<u64> = pos.iter().map(|&k| chunk[k] as u64).collect();
                    let sy: Vec<usize> = pos.iter().map(|&k| ys[k]).collect();
                    let mut pts: Vec<SquarePoint> =
                        state.square.iter().map(|(_, s)| s.clone()).collect();
                    sq.segment(
                        model,
                        &sbatch,
                        &sids,
                        &sy,
                        self.eps,
                        &mut pts,
                        state.stage - 1,
                    )?;
                    for (slot, p) in state.square.iter_mut().zip(pts) {
                        slot.1 = p;
                    }
                }
                let finished =
                    state.stage >= sq.segments() || state.square.iter().all(|(_, s)| s.broken());
                if finished {
                    let broken: Vec<usize> = state
                        .square
                        .iter()
                        .filter(|(_, s)| s.broken())
                        .map(|(p, _)| *p)
                        .collect();
                    for p in broken {
                        self.mark(state, p);
                    }
                }
                Ok(finished)
            }
        }
    }
}
