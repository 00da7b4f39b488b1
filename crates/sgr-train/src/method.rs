//! Training methods: the plug-in point of the training loop.
//!
//! A [`Method`] turns a batch into the loss to differentiate. The loop owns data, optimiser, checkpoints
//! and progress; a method owns its hyper-parameters and any state it carries across steps (saved with
//! the checkpoint through [`Method::state`] / [`Method::load_state`]). New methods implement the trait and
//! register in [`build_method`]; the loop does not change.

use std::collections::HashMap;

use candle_core::{Module, Result, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use sgr_data::DatasetName;
use sgr_models::Cnn;

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
    pub loss: Tensor,
    pub logits: Tensor,
    pub metrics: Vec<(String, Tensor)>,
}

pub trait Method: std::fmt::Debug + Send {
    /// The name used on the command line and in run.json.
    fn name(&self) -> &str;
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

/// Hyper-parameters of the methods, each resolved to the paper's default for the data set when not given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodOptions {
    /// L2 coefficient for `wdecay`: the loss gains `wd/2 · Σ‖W‖²` over conv and dense weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
}

/// The names [`build_method`] accepts.
pub const METHODS: &[&str] = &["clean", "wdecay"];

#[derive(Debug, thiserror::Error)]
#[error("unknown method '{0}': expected one of {known}", known = METHODS.join(", "))]
pub struct UnknownMethod(pub String);

/// Builds a method by name, filling in the paper's defaults for `dataset` where `options` leaves a value unset.
pub fn build_method(
    name: &str,
    dataset: DatasetName,
    mut options: MethodOptions,
) -> std::result::Result<Box<dyn Method>, UnknownMethod> {
    match name {
        "clean" => Ok(Box::new(Clean { options })),
        "wdecay" => {
            let default = if dataset == DatasetName::Cifar10 {
                5e-4
            } else {
                2e-4
            };
            options.weight_decay.get_or_insert(default);
            Ok(Box::new(WeightDecay { options }))
        }
        other => Err(UnknownMethod(other.to_string())),
    }
}

/// Mean softmax cross-entropy of `logits` against `y`.
pub fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    candle_nn::loss::cross_entropy(logits, y)
}

/// Standard training: softmax cross-entropy.
#[derive(Debug)]
pub struct Clean {
    options: MethodOptions,
}

impl Method for Clean {
    fn name(&self) -> &str {
        "clean"
    }
    fn options(&self) -> &MethodOptions {
        &self.options
    }
    fn loss(&mut self, input: &StepInput<'_>) -> Result<StepOutput> {
        let logits = input.model.forward(input.x)?;
        let loss = cross_entropy(&logits, input.y)?;
        Ok(StepOutput {
            loss,
            logits,
            metrics: vec![],
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
    fn name(&self) -> &str {
        "wdecay"
    }
    fn options(&self) -> &MethodOptions {
        &self.options
    }
    fn loss(&mut self, input: &StepInput<'_>) -> Result<StepOutput> {
        let wd = self.options.weight_decay.unwrap_or(0.0);
        let logits = input.model.forward(input.x)?;
        let ce = cross_entropy(&logits, input.y)?;
        let weights: Vec<Var> = {
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
            named.into_iter().map(|(_, v)| v.clone()).collect()
        };
        let mut l2 = Tensor::zeros((), ce.dtype(), ce.device())?;
        for w in &weights {
            l2 = (l2 + w.as_tensor().sqr()?.sum_all()?)?;
        }
        let penalty = (l2 * (wd / 2.0))?;
        let loss = (&ce + &penalty)?;
        Ok(StepOutput {
            loss,
            logits,
            metrics: vec![("l2_penalty".into(), penalty)],
        })
    }
}
