//! Adam (Kingma & Ba) with state we own, so that it can be saved and a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::{Result, Tensor, Var, backprop::GradStore};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    /// The paper's learning rate 1e-3 and the usual moments (PyTorch's defaults).
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Where [`Adam::step`] reads each parameter's gradient: an autograd [`GradStore`] (by variable) or
/// gradients computed explicitly (by parameter name).
pub trait ParamGradients {
    fn gradient(&self, name: &str, var: &Var) -> Option<&Tensor>;
}

impl ParamGradients for GradStore {
    fn gradient(&self, _name: &str, var: &Var) -> Option<&Tensor> {
        self.get(var.as_tensor())
    }
}

impl ParamGradients for HashMap<String, Tensor> {
    fn gradient(&self, name: &str, _var: &Var) -> Option<&Tensor> {
        self.get(name)
    }
}

/// The parameter gradients of one step, as a method produced them.
#[derive(Debug)]
pub enum Gradients {
    /// From `loss.backward()`.
    Autograd(GradStore),
    /// Computed without autograd, by parameter name (e.g. `Cnn::explicit_gradients`).
    Named(HashMap<String, Tensor>),
}

impl ParamGradients for Gradients {
    fn gradient(&self, name: &str, var: &Var) -> Option<&Tensor> {
        match self {
            Self::Autograd(g) => g.gradient(name, var),
            Self::Named(g) => g.gradient(name, var),
        }
    }
}

/// Adam over named variables. Unlike candle-nn's `AdamW`, a parameter without a gradient is an error, not a
/// silent skip: a missing (e.g. second-order) gradient must never go unnoticed.
#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
}

impl Adam {
    pub fn new(mut vars: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            config,
            vars,
            m,
            v,
            step: 0,
        })
    }

    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Changes the learning rate for the following steps (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update from the gradients in `grads`.
    pub fn step(&mut self, grads: &impl ParamGradients) -> Result<()> {
        self.step += 1;
        let AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
        } = self.config;
        let bc1 = 1.0 - beta1.powi(self.step as i32);
        let bc2 = 1.0 - beta2.powi(self.step as i32);
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let g = grads
                .gradient(name, var)
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!("Adam: no gradient for parameter {name}"))
                })?
                .detach();
            let m = ((&self.m[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + eps)?)?;
            var.set(&(var.as_tensor().detach() - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moment estimates (`adam.m.<name>`, `adam.v.<name>`) and the step count (`adam.step`, u32 pair
    /// hi/lo), ready for safetensors.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("adam.m.{name}"), self.m[i].clone());
            out.insert(format!("adam.v.{name}"), self.v[i].clone());
        }
        let step = [(self.step >> 32) as u32, self.step as u32];
        out.insert(
            "adam.step".into(),
            Tensor::new(&step, &candle_core::Device::Cpu)?,
        );
        Ok(out)
    }

    /// Restores a state written by [`Adam::state`].
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: &str| {
            state
                .get(k)
                .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks {k}")))
        };
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let t = var.as_tensor();
            let m = get(&format!("adam.m.{name}"))?
                .to_dtype(t.dtype())?
                .to_device(t.device())?;
            let v = get(&format!("adam.v.{name}"))?
                .to_dtype(t.dtype())?
                .to_device(t.device())?;
            if m.dims() != t.dims() || v.dims() != t.dims() {
                candle_core::bail!(
                    "optimizer state for {name} has shape {:?}, parameter has {:?}",
                    m.dims(),
                    t.dims()
                );
            }
            self.m[i] = m;
            self.v[i] = v;
        }
        let s = get("adam.step")?.to_vec1::<u32>()?;
        if s.len() != 2 {
            candle_core::bail!("adam.step must hold two u32 values");
        }
        self.step = ((s[0] as u64) << 32) | s[1] as u64;
        Ok(())
    }
}
