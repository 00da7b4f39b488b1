//! The regularizers: Ω = σ/(2m) Σ gᵀΣ̂g with Σ̂ an EMA of perturbation second moments (SGR) or the identity (GN).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use sgr_covariance::{ChannelStructure, CovFun, Covariance, Dense, Ema, Identity, MeanEma, Scaled};

use crate::error::{RegError, Result};
use crate::grad::{InputGradient, log_likelihood, omega_from_product, omega_value};
use crate::second_order::{SecondOrder, ensure_double_backprop};

/// Where the covariance `Σ` of the regularizer comes from.
#[derive(Clone, Debug)]
pub enum CovSpec {
    /// `Σ = I`: gradient-norm regularization (GN).
    Identity,
    /// Running average of the dense second-moment matrices of the perturbations (eq. 14–15).
    EmaDense,
    /// Running average of the paper's covariance function of rounded pixel distance up to `radius`
    /// (eq. 16). With `psd` the average is projected onto the PSD cone before use, which keeps `Ω ≥ 0`;
    /// without it the paper's representation is used as it is and `Ω` can be negative.
    EmaCovFun {
        radius: usize,
        structure: ChannelStructure,
        psd: bool,
    },
    /// A fixed covariance (the data set's, a synthetic LRC one): perturbations are ignored.
    Fixed(Arc<dyn Covariance>),
}

impl CovSpec {
    pub fn name(&self) -> String {
        match self {
            Self::Identity => "identity".into(),
            Self::EmaDense => "dense".into(),
            Self::EmaCovFun { radius, psd, .. } => {
                format!("covfun(R={radius}{})", if *psd { ", psd" } else { "" })
            }
            Self::Fixed(c) => format!("fixed {}", c.kind()),
        }
    }

    /// Whether [`Regularizer::observe`] learns from perturbations.
    pub fn learns(&self) -> bool {
        matches!(self, Self::EmaDense | Self::EmaCovFun { .. })
    }
}

/// Everything that defines a [`GradientRegularizer`].
#[derive(Clone, Debug)]
pub struct RegularizerConfig {
    /// Image shape `(C, H, W)`.
    pub shape: (usize, usize, usize),
    pub cov: CovSpec,
    /// EMA rate β of Σ̂ (the paper: 0.1).
    pub beta: f64,
    /// `c`: the mean diagonal Σ is scaled to (Algorithm 1 uses the data covariance's mean diagonal).
    pub target_mean_diag: f64,
    pub second_order: SecondOrder,
    /// Adds the uncentred term `−1/m Σ_i g_iᵀ μ` of eq. 12, with `μ` the running mean of `ξ` scaled by `√σ_t`.
    pub uncentred: bool,
}

/// The regularizer's contribution to one step.
#[derive(Debug)]
pub struct Penalty {
    /// A scalar whose value is `Ω` and whose gradient with respect to the parameters is `∇_θ Ω` (exact, or
    /// the finite-difference surrogate).
    pub omega: Tensor,
    /// `Ω`, detached.
    pub value: Tensor,
}

/// A regularizer of the input gradient: it may learn a covariance from perturbations and turns an input
/// gradient into a penalty.
pub trait Regularizer: std::fmt::Debug + Send {
    fn config(&self) -> &RegularizerConfig;
    /// Updates the running estimate with a batch of perturbations `ξ` `(B, C, H, W)` (Algorithm 1); a
    /// no-op for fixed covariances.
    fn observe(&mut self, xi: &Tensor) -> Result<()>;
    /// The covariance `Ω` uses now: `σ_t Σ̂_t`, scaled to the target mean diagonal.
    fn covariance(&self) -> Result<Arc<dyn Covariance>>;
    /// `Ω` for the input gradients of `ig` (from [`crate::input_gradient`], with its graph in exact mode).
    /// In exact mode, [`RegError::NoDoubleBackprop`](crate::RegError::NoDoubleBackprop) unless candle's
    /// double backprop works in this thread.
    fn penalty(&self, model: &dyn Module, y: &Tensor, ig: &InputGradient) -> Result<Penalty>;
    /// `Ω` for plain (detached) input gradients `g` `(m, …)` and its gradient `∂Ω/∂g = (Σ g − μ)/m`
    /// (`Σ` is symmetric), for models that differentiate `⟨∂Ω/∂g, g⟩` themselves (exact second order
    /// without an autograd graph, e.g. `Cnn::explicit_gradients`).
    fn penalty_adjoint(&self, g: &Tensor) -> Result<(Tensor, Tensor)>;
    /// State carried across steps (for checkpoints).
    fn state(&self) -> Result<HashMap<String, Tensor>>;
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
}

#[derive(Clone, Debug)]
enum CovState {
    Fixed,
    Dense(Ema<Dense>),
    CovFun(Ema<CovFun>),
}

/// SGR and GN: see the crate's documentation.
#[derive(Debug)]
pub struct GradientRegularizer {
    config: RegularizerConfig,
    state: CovState,
    mean: Option<MeanEma>,
    /// σ_t Σ̂_t and √σ_t μ̂_t, recomputed on every update.
    current: Option<(Arc<dyn Covariance>, Option<Tensor>)>,
}

impl GradientRegularizer {
    /// Checks the settings. Exact mode needs candle's double backprop only where the penalty is built for
    /// autograd ([`Regularizer::penalty`], which checks it); [`Regularizer::penalty_adjoint`], for explicit
    /// second-order gradients, needs none.
    pub fn new(config: RegularizerConfig) -> Result<Self> {
        let (c, h, w) = config.shape;
        if c == 0 || h == 0 || w == 0 {
            return Err(RegError::Config(format!("empty image shape {c}x{h}x{w}")));
        }
        if !(config.target_mean_diag > 0.0 && config.target_mean_diag.is_finite()) {
            return Err(RegError::Config(format!(
                "the target mean diagonal c must be positive, got {}",
                config.target_mean_diag
            )));
        }
        let state = match &config.cov {
            CovSpec::Identity | CovSpec::Fixed(_) => CovState::Fixed,
            CovSpec::EmaDense => CovState::Dense(Ema::new(config.beta)?),
            CovSpec::EmaCovFun { .. } => CovState::CovFun(Ema::new(config.beta)?),
        };
        if config.uncentred && !config.cov.learns() {
            return Err(RegError::Config(
                "the uncentred term needs a covariance estimated from perturbations".into(),
            ));
        }
        let mean = if config.uncentred {
            Some(MeanEma::new(config.beta)?)
        } else {
            None
        };
        let mut r = Self {
            config,
            state,
            mean,
            current: None,
        };
        let fixed: Option<Arc<dyn Covariance>> = match &r.config.cov {
            CovSpec::Identity => Some(Arc::new(Identity::new(r.config.shape))),
            CovSpec::Fixed(cov) => {
                if cov.shape() != r.config.shape {
                    return Err(RegError::Config(format!(
                        "the covariance is for images {:?}, the data are {:?}",
                        cov.shape(),
                        r.config.shape
                    )));
                }
                Some(cov.clone())
            }
            _ => None,
        };
        if let Some(cov) = fixed {
            r.current = Some((r.scale(cov)?.0, None));
        }
        Ok(r)
    }

    fn scale(&self, cov: Arc<dyn Covariance>) -> Result<(Arc<dyn Covariance>, f64)> {
        let md = cov.mean_diag();
        if !(md > 0.0 && md.is_finite()) {
            return Err(RegError::State(format!(
                "the covariance has mean diagonal {md}: cannot scale it (all perturbations zero?)"
            )));
        }
        let sigma = self.config.target_mean_diag / md;
        Ok((Arc::new(Scaled::new(cov, sigma)?), sigma))
    }

    fn refresh(&mut self) -> Result<()> {
        let raw: Arc<dyn Covariance> = match (&self.state, &self.config.cov) {
            (CovState::Dense(e), _) => match e.get() {
                Some(d) => Arc::new(d.clone()),
                None => return Ok(()),
            },
            (CovState::CovFun(e), CovSpec::EmaCovFun { psd, .. }) => match e.get() {
                Some(cf) if *psd => Arc::new(cf.project_psd()?),
                Some(cf) => Arc::new(cf.clone()),
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        let (cov, sigma) = self.scale(raw)?;
        let mu = match &self.mean {
            Some(m) => m.get().map(|mu| mu * sigma.sqrt()).transpose()?,
            None => None,
        };
        self.current = Some((cov, mu));
        Ok(())
    }

    /// Updates seen by the running average (0 for fixed covariances).
    pub fn updates(&self) -> u64 {
        match &self.state {
            CovState::Fixed => 0,
            CovState::Dense(e) => e.updates(),
            CovState::CovFun(e) => e.updates(),
        }
    }

    /// `√σ_t μ̂_t`, the mean used by the uncentred term (None when it is off or nothing was observed).
    pub fn scaled_mean(&self) -> Option<Tensor> {
        self.current.as_ref().and_then(|c| c.1.clone())
    }

    fn current(&self) -> Result<&(Arc<dyn Covariance>, Option<Tensor>)> {
        self.current.as_ref().ok_or_else(|| {
            RegError::State("no perturbations observed yet: call observe() before penalty()".into())
        })
    }
}

/// `v − μ` for a batch `v` `(m, …)` and a per-item mean `μ` (`v` itself without one): the direction of the
/// penalty's gradient, `m·∂Ω/∂g`.
fn minus_mean(v: Tensor, mu: Option<&Tensor>) -> Result<Tensor> {
    Ok(match mu {
        Some(mu) => {
            let mu = mu.to_dtype(v.dtype())?.to_device(v.device())?;
            v.broadcast_sub(&mu.unsqueeze(0)?)?
        }
        None => v,
    })
}

fn scalar_tensor(v: f64) -> Result<Tensor> {
    Ok(Tensor::new(&[v], &Device::Cpu)?)
}

fn get<'a>(state: &'a HashMap<String, Tensor>, key: &str) -> Result<&'a Tensor> {
    state
        .get(key)
        .ok_or_else(|| RegError::State(format!("the saved state has no '{key}'")))
}

impl Regularizer for GradientRegularizer {
    fn config(&self) -> &RegularizerConfig {
        &self.config
    }

    fn observe(&mut self, xi: &Tensor) -> Result<()> {
        let _span = tracing::debug_span!("observe", cov = %self.config.cov.name()).entered();
        let (c, h, w) = self.config.shape;
        if xi.rank() != 4 || xi.dims()[1..] != [c, h, w] {
            return Err(RegError::Config(format!(
                "perturbations of shape {:?}, expected (B, {c}, {h}, {w})",
                xi.dims()
            )));
        }
        match (&mut self.state, &self.config.cov) {
            (CovState::Fixed, _) => return Ok(()),
            (CovState::Dense(e), _) => {
                e.update(Dense::second_moments(xi)?)?;
            }
            (
                CovState::CovFun(e),
                CovSpec::EmaCovFun {
                    radius, structure, ..
                },
            ) => {
                e.update(CovFun::estimate(xi, *radius as i64, *structure)?)?;
            }
            (CovState::CovFun(_), _) => unreachable!("covfun state without a covfun spec"),
        }
        if let Some(m) = &mut self.mean {
            m.update(xi)?;
        }
        self.refresh()
    }

    fn covariance(&self) -> Result<Arc<dyn Covariance>> {
        Ok(self.current()?.0.clone())
    }

    fn penalty(&self, model: &dyn Module, y: &Tensor, ig: &InputGradient) -> Result<Penalty> {
        let _span =
            tracing::debug_span!("penalty", mode = self.config.second_order.name()).entered();
        let (cov, mu) = self.current()?;
        let step = match self.config.second_order {
            SecondOrder::Exact => {
                // Without double backprop the graph of `ig.grad` would be cut and the second-order term
                // silently missing.
                ensure_double_backprop()?;
                let omega = omega_value(&ig.grad, cov.as_ref(), mu.as_ref())?;
                let value = omega.detach();
                return Ok(Penalty { omega, value });
            }
            SecondOrder::Central { step } | SecondOrder::Forward { step } => step,
        };
        let g = ig.grad.detach();
        let v = cov.matvec(&g)?;
        let value = omega_from_product(&g, &v, mu.as_ref())?.detach();
        let v = minus_mean(v, mu.as_ref())?.detach();
        let m = g.dim(0)?;
        let amax = v.flatten_from(1)?.abs()?.max(1)?;
        let tiny = if v.dtype() == DType::F64 {
            1e-300
        } else {
            1e-30
        };
        // s_i = step / max|v_i|: the largest pixel moves by `step`.
        let s = (amax.clamp(tiny, f64::MAX)?.recip()? * step)?;
        let mut bshape = vec![m];
        bshape.extend(std::iter::repeat_n(1, v.rank() - 1));
        let shift = v.broadcast_mul(&s.reshape(bshape)?)?;
        let x = ig.x.detach();
        let plus = log_likelihood(&model.forward(&(&x + &shift)?)?, y)?;
        let diff = match self.config.second_order {
            SecondOrder::Central { .. } => {
                let minus = log_likelihood(&model.forward(&(&x - &shift)?)?, y)?;
                ((plus - minus)? / (s * 2.0)?)?
            }
            _ => ((plus - &ig.log_lik)? / s)?,
        };
        let surrogate = (diff.sum_all()? / m as f64)?;
        let omega = ((&surrogate - surrogate.detach())? + &value)?;
        Ok(Penalty { omega, value })
    }

    fn penalty_adjoint(&self, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let _span = tracing::debug_span!("penalty_adjoint").entered();
        let (cov, mu) = self.current()?;
        let g = g.detach();
        let v = cov.matvec(&g)?;
        let value = omega_from_product(&g, &v, mu.as_ref())?;
        let adjoint = (minus_mean(v, mu.as_ref())? / g.dim(0)? as f64)?;
        Ok((value, adjoint))
    }

    fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        match &self.state {
            CovState::Fixed => return Ok(out),
            CovState::Dense(e) => {
                if let Some(d) = e.get() {
                    out.insert("sigma.matrix".into(), d.matrix().clone());
                }
                out.insert("sigma.updates".into(), scalar_tensor(e.updates() as f64)?);
            }
            CovState::CovFun(e) => {
                if let Some(cf) = e.get() {
                    let curves = cf.curves().to_vec();
                    let n = curves.len();
                    out.insert(
                        "sigma.curves".into(),
                        Tensor::from_vec(curves, n, &Device::Cpu)?,
                    );
                }
                out.insert("sigma.updates".into(), scalar_tensor(e.updates() as f64)?);
            }
        }
        if let Some(mu) = self.mean.as_ref().and_then(|m| m.get()) {
            out.insert("mu".into(), mu.clone());
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let beta = self.config.beta;
        let updates = |state: &HashMap<String, Tensor>| -> Result<u64> {
            Ok(get(state, "sigma.updates")?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?
                .first()
                .copied()
                .unwrap_or(0.0) as u64)
        };
        match (&mut self.state, &self.config.cov) {
            (CovState::Fixed, _) => return Ok(()),
            (CovState::Dense(e), _) => {
                let n = updates(state)?;
                *e = match state.get("sigma.matrix") {
                    Some(m) => Ema::with_state(
                        beta,
                        Dense::new(self.config.shape, &m.to_dtype(DType::F64)?)?,
                        n,
                    )?,
                    None => Ema::new(beta)?,
                };
            }
            (
                CovState::CovFun(e),
                CovSpec::EmaCovFun {
                    radius, structure, ..
                },
            ) => {
                let n = updates(state)?;
                *e = match state.get("sigma.curves") {
                    Some(c) => Ema::with_state(
                        beta,
                        CovFun::new(
                            self.config.shape,
                            *radius as i64,
                            *structure,
                            c.to_dtype(DType::F64)?.to_vec1::<f64>()?,
                        )?,
                        n,
                    )?,
                    None => Ema::new(beta)?,
                };
            }
            (CovState::CovFun(_), _) => unreachable!("covfun state without a covfun spec"),
        }
        if self.mean.is_some() {
            self.mean = Some(match state.get("mu") {
                Some(mu) => MeanEma::with_state(beta, mu)?,
                None => MeanEma::new(beta)?,
            });
        }
        self.refresh()
    }
}
