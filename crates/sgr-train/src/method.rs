//! Training methods: the plug-in point of the training loop.
//!
//! A [`Method`] turns a batch into the loss to differentiate. The loop owns data, optimiser, checkpoints
//! and progress; a method owns its hyper-parameters and any state it carries across steps (saved with
//! the checkpoint through [`Method::state`] / [`Method::load_state`]). New methods implement the trait and
//! register in [`build_method`]; the loop does not change.

use std::collections::HashMap;

use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use sgr_data::{DatasetName, ImageSet};
use sgr_models::Cnn;

use crate::adam::Gradients;
use crate::gradients::{forward_pass, parameter_gradients};
use crate::settings::{CovKind, MethodName, SecondOrderMode, XiLabels};

/// What a method sees of one training step.
pub struct StepInput<'a> {
    pub model: &'a Cnn,
    /// The trainable parameters by PyTorch name.
    pub params: &'a VarMap,
    /// Images in `[0, 1]`, `(B, C, H, W)`, already augmented.
    pub x: &'a Tensor,
    /// Labels, `u32`, `(B,)`.
    pub y: &'a Tensor,
    /// Optimiser steps done before this one.
    pub step: u64,
    /// The run's seed (methods derive their random draws from `(seed, step)`).
    pub seed: u64,
}

impl std::fmt::Debug for StepInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepInput")
            .field("x", &self.x.shape())
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

/// What a method returns: the scalar to minimise, the clean logits (for training accuracy) and named
/// scalar metrics (e.g. the regulariser's value) recorded in run.json.
#[derive(Debug)]
pub struct StepOutput {
    /// The objective; its graph gives the parameter gradients unless `grads` holds them already.
    pub loss: Tensor,
    pub logits: Tensor,
    pub metrics: Vec<(String, Tensor)>,
    /// The objective's parameter gradients by name, where the method computed them without autograd
    /// (`loss` is then detached).
    pub grads: Option<HashMap<String, Tensor>>,
}

impl StepOutput {
    /// The parameter gradients of `loss`: those the method computed, or `loss.backward()`.
    pub fn gradients(&self) -> Result<Gradients> {
        Ok(match &self.grads {
            Some(g) => Gradients::Named(g.clone()),
            None => Gradients::Autograd(self.loss.backward()?),
        })
    }
}

pub trait Method: std::fmt::Debug + Send {
    /// The name used on the command line and in run.json.
    fn name(&self) -> MethodName;
    /// Every hyper-parameter of the method, for run.json.
    fn options(&self) -> &MethodOptions;
    fn loss(&mut self, input: &StepInput<'_>) -> Result<StepOutput>;
    /// State carried across steps, saved with the checkpoint.
    fn state(&self) -> Result<HashMap<String, Tensor>> {
        Ok(HashMap::new())
    }
    fn load_state(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}

/// Hyper-parameters of the methods, each resolved to the paper's default for the data set when not given;
/// run.json records the resolved values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodOptions {
    /// L2 coefficient for `wdecay`: the loss gains `wd/2 · Σ‖W‖²` over conv and dense weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Regularisation strength λ (GN/SGR), or the weight of the perturbed loss in eq. 3 (fgsm, pgd, lrc).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f64>,
    /// Perturbation budget in units of 1/255: FGSM/PGD for fgsm, pgd, fgsm-sgr, pgd-sgr; the noise scale
    /// for lrc.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// PGD iterations (step ε/5) for pgd and pgd-sgr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgd_steps: Option<usize>,
    /// Σ of SGR: `dense` or `covfun` (estimated from perturbations), `data` (the training set's
    /// covariance), `lrc` (synthetic, decay length `zeta`), `identity` (GN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cov: Option<CovKind>,
    /// Radius of the covariance function (`cov = covfun`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cov_radius: Option<usize>,
    /// Project the covariance function onto the PSD cone before use (`cov = covfun`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cov_psd: Option<bool>,
    /// Decay length ζ of the LRC covariance (`cov = lrc`, and the lrc method's noise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zeta: Option<f64>,
    /// EMA rate β of Σ̂.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// `exact` (double backprop), `fd` (central differences) or `fd-forward`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_order: Option<SecondOrderMode>,
    /// Largest pixel displacement of the finite-difference modes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_step: Option<f64>,
    /// Adds the uncentred term of eq. 12.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncentred: Option<bool>,
    /// Labels the perturbations ξ are made for: `true` or `predicted` (the model's most likely label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xi_labels: Option<XiLabels>,
    /// `c` of Algorithm 1: the mean diagonal Σ is scaled to (the training set's mean pixel variance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_to: Option<f64>,
}

impl MethodOptions {
    /// The first option set here that differs from `stored` (as JSON values), for `--resume` checks.
    pub fn conflict_with(&self, stored: &MethodOptions) -> Option<(String, String, String)> {
        let given = serde_json::to_value(self).ok()?;
        let stored = serde_json::to_value(stored).ok()?;
        let (given, stored) = (given.as_object()?, stored.as_object()?);
        given.iter().find_map(|(k, v)| {
            let s = stored.get(k).cloned().unwrap_or(serde_json::Value::Null);
            (s != *v).then(|| (k.clone(), v.to_string(), s.to_string()))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Regularizer(#[from] sgr_regularizers::RegError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// What a method may look at when it is built: the data set and its training split (for `c` and the data
/// covariance).
#[derive(Debug)]
pub struct MethodContext<'a> {
    pub dataset: DatasetName,
    pub train: &'a ImageSet,
}

/// Builds a method by name, filling in the paper's defaults for the data set where `options` leaves a value
/// unset (the returned method's [`Method::options`] holds every resolved value).
pub fn build_method(
    name: MethodName,
    ctx: &MethodContext<'_>,
    mut options: MethodOptions,
) -> std::result::Result<Box<dyn Method>, MethodError> {
    let cifar = ctx.dataset == DatasetName::Cifar10;
    match name {
        MethodName::Clean => Ok(Box::new(Clean { options })),
        MethodName::WeightDecay => {
            options
                .weight_decay
                .get_or_insert(if cifar { 5e-4 } else { 2e-4 });
            Ok(Box::new(WeightDecay { options }))
        }
        MethodName::Fgsm | MethodName::Pgd | MethodName::Lrc => Ok(Box::new(
            crate::adversarial::Augmented::new(name, ctx, options)?,
        )),
        MethodName::Gn
        | MethodName::SgrGrad
        | MethodName::SgrSign
        | MethodName::FgsmSgr
        | MethodName::PgdSgr => Ok(Box::new(crate::sgr::Sgr::new(name, ctx, options)?)),
    }
}

/// Mean softmax cross-entropy of `logits` against `y`.
pub fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    candle_nn::loss::cross_entropy(logits, y)
}

/// Adds `other`'s gradients into `into`, parameter by parameter.
pub(crate) fn add_gradients(
    into: &mut HashMap<String, Tensor>,
    other: impl IntoIterator<Item = (String, Tensor)>,
) -> Result<()> {
    for (name, g) in other {
        let sum = match into.get(&name) {
            Some(t) => (t + g)?,
            None => g,
        };
        into.insert(name, sum);
    }
    Ok(())
}

/// Standard training: softmax cross-entropy.
#[derive(Debug)]
pub struct Clean {
    options: MethodOptions,
}

impl Method for Clean {
    fn name(&self) -> MethodName {
        MethodName::Clean
    }
    fn options(&self) -> &MethodOptions {
        &self.options
    }
    fn loss(&mut self, input: &StepInput<'_>) -> Result<StepOutput> {
        let pass = forward_pass(input.model, input.x, input.y, false)?;
        let m = input.x.dim(0)? as f64;
        let grads = parameter_gradients(input.model, input.params, &pass, 1.0 / m, None)?;
        Ok(StepOutput {
            loss: pass.cross_entropy()?,
            logits: pass.logits()?,
            metrics: vec![],
            grads: Some(grads),
        })
    }
}

/// Cross-entropy plus the classic L2 penalty `wd/2 · Σ‖W‖²` on the weights (not the biases), added to the
/// loss as in TensorFlow; under Adam this differs from decoupled weight decay (AdamW).
#[derive(Debug)]
pub struct WeightDecay {
    options: MethodOptions,
}

impl Method for WeightDecay {
    fn name(&self) -> MethodName {
        MethodName::WeightDecay
    }
    fn options(&self) -> &MethodOptions {
        &self.options
    }
    fn loss(&mut self, input: &StepInput<'_>) -> Result<StepOutput> {
        let wd = self.options.weight_decay.unwrap_or(0.0);
        let pass = forward_pass(input.model, input.x, input.y, false)?;
        let m = input.x.dim(0)? as f64;
        let mut grads = parameter_gradients(input.model, input.params, &pass, 1.0 / m, None)?;
        let weights: Vec<(String, Var)> = {
            let data = input
                .params
                .data()
                .lock()
                .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
            let mut named: Vec<_> = data
                .iter()
                .filter(|(n, _)| n.ends_with(".weight"))
                .collect();
            named.sort_by(|a, b| a.0.cmp(b.0));
            named
                .into_iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        };
        let dtype = input.x.dtype();
        let mut l2 = Tensor::zeros((), dtype, input.x.device())?;
        for (_, w) in &weights {
            l2 = (l2 + w.as_tensor().detach().sqr()?.sum_all()?)?;
        }
        // ∇ wd/2 ‖W‖² = wd·W.
        let penalty = (l2 * (wd / 2.0))?.detach();
        let decay = weights
            .iter()
            .map(|(name, w)| Ok((name.clone(), (w.as_tensor().detach() * wd)?)))
            .collect::<Result<Vec<_>>>()?;
        add_gradients(&mut grads, decay)?;
        Ok(StepOutput {
            loss: (pass.cross_entropy()? + &penalty)?,
            logits: pass.logits()?,
            metrics: vec![("l2_penalty".into(), penalty)],
            grads: Some(grads),
        })
    }
}
