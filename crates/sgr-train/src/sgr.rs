//! Gradient-regularised training (Algorithm 1): `CE + λ·Ω`, with `Ω` from `sgr-regularizers` and, for the
//! SGR variants, `Σ̂` learnt from perturbations `ξ`:
//!
//! | method | ξ |
//! |---|---|
//! | `gn` | none (`Σ = I`) |
//! | `sgr-grad` | the loss gradient `∇_x CE` |
//! | `sgr-sign` | its sign |
//! | `fgsm-sgr` | the FGSM perturbation `x̃ − x` |
//! | `pgd-sgr` | the PGD perturbation `x̃ − x` |
//!
//! Any SGR variant can instead use a fixed `Σ`: `--cov data` (the training set's covariance) or
//! `--cov lrc --zeta Z` (sec. 4.3).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use sgr_attacks::{Attack, Fgsm, Pgd, loss_gradient};
use sgr_covariance::{ChannelStructure, Covariance, Dense, Stationary};
use sgr_data::{DatasetName, ImageSet};
use sgr_regularizers::{
    CovSpec, GradientRegularizer, InputGradient, Regularizer, RegularizerConfig, SecondOrder,
    input_gradient_split,
};

use crate::adversarial::{check_positive, default_eps_255};
use crate::gradients::{forward_pass, parameter_gradients};
use crate::method::{Method, MethodContext, MethodError, MethodOptions, StepInput, StepOutput};
use crate::settings::{CovKind, MethodName, SecondOrderMode, XiLabels};

/// Images the data covariance (`--cov data`) is estimated from, at most.
pub const DATA_COV_IMAGES: usize = 10_000;

/// λ of Tables 3–4 (white-box/transfer experiments) for a method and data set.
pub fn default_lambda(method: MethodName, dataset: DatasetName) -> f64 {
    let cifar = dataset == DatasetName::Cifar10;
    match (method, cifar) {
        (MethodName::Gn, false) => 5.0,
        (MethodName::Gn, true) => 0.075,
        (MethodName::SgrGrad, _) => 0.1,
        (MethodName::SgrSign, false) => 1.0,
        (MethodName::SgrSign, true) => 0.5,
        (MethodName::FgsmSgr, _) => 0.5,
        (MethodName::PgdSgr, false) => 1.0,
        (MethodName::PgdSgr, true) => 0.5,
        _ => 1.0,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Xi {
    None,
    Gradient,
    Sign,
    Fgsm,
    Pgd { steps: usize },
}

/// `gn`, `sgr-grad`, `sgr-sign`, `fgsm-sgr`, `pgd-sgr`.
#[derive(Debug)]
pub struct Sgr {
    name: MethodName,
    options: MethodOptions,
    reg: GradientRegularizer,
    xi: Xi,
    lambda: f64,
    eps: f64,
    predicted_labels: bool,
}

/// The centred covariance of (up to [`DATA_COV_IMAGES`]) training images, accumulated in chunks.
pub fn data_covariance(train: &ImageSet) -> Result<Dense> {
    let n = train.len().min(DATA_COV_IMAGES);
    let d = train.image_len();
    let mut sum = Tensor::zeros(d, DType::F64, &Device::Cpu)?;
    let mut outer = Tensor::zeros((d, d), DType::F64, &Device::Cpu)?;
    for start in (0..n).step_by(1000) {
        let (x, _) = train
            .range(start, (start + 1000).min(n), DType::F64, &Device::Cpu)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let x = x.flatten_from(1)?;
        sum = (sum + x.sum(0)?)?;
        outer = (outer + x.t()?.matmul(&x)?)?;
    }
    let mu = (sum / n as f64)?.unsqueeze(1)?;
    let cov = ((outer / n as f64)? - mu.matmul(&mu.t()?)?)?;
    Dense::new(train.shape(), &cov).map_err(candle_core::Error::from)
}

fn config_err(msg: String) -> MethodError {
    MethodError::Config(msg)
}

impl Sgr {
    pub fn new(
        name: MethodName,
        ctx: &MethodContext<'_>,
        mut o: MethodOptions,
    ) -> std::result::Result<Self, MethodError> {
        let shape = ctx.train.shape();
        let d = shape.0 * shape.1 * shape.2;
        let gn = name == MethodName::Gn;
        let cov = *o.cov.get_or_insert(if gn {
            CovKind::Identity
        } else if d <= 1024 {
            CovKind::Dense
        } else {
            CovKind::Covfun
        });
        if gn && cov != CovKind::Identity {
            return Err(config_err(format!(
                "gn regularises with Σ = I; --cov {cov} is for the sgr methods"
            )));
        }
        let default_lambda = if cov == CovKind::Lrc {
            5.0
        } else {
            default_lambda(name, ctx.dataset)
        };
        let lambda = check_positive("--lambda", *o.lambda.get_or_insert(default_lambda))?;
        let beta = *o.beta.get_or_insert(0.1);
        if !(beta > 0.0 && beta <= 1.0) {
            return Err(config_err(format!("--beta must be in (0, 1], got {beta}")));
        }
        let c = *o
            .scale_to
            .get_or_insert_with(|| ctx.train.mean_pixel_variance());
        let fd_step = *o.fd_step.get_or_insert(SecondOrder::DEFAULT_STEP);
        let mode = *o.second_order.get_or_insert(SecondOrderMode::Exact);
        let step = SecondOrder::check_step(fd_step)?;
        let second_order = match mode {
            SecondOrderMode::Exact => SecondOrder::Exact,
            SecondOrderMode::Fd => SecondOrder::Central { step },
            SecondOrderMode::FdForward => SecondOrder::Forward { step },
        };
        let spec = match cov {
            CovKind::Identity => CovSpec::Identity,
            CovKind::Dense => CovSpec::EmaDense,
            CovKind::Covfun => CovSpec::EmaCovFun {
                radius: *o.cov_radius.get_or_insert(8),
                structure: ChannelStructure::IntraInter,
                psd: *o.cov_psd.get_or_insert(true),
            },
            CovKind::Data => {
                CovSpec::Fixed(Arc::new(data_covariance(ctx.train)?) as Arc<dyn Covariance>)
            }
            CovKind::Lrc => {
                let zeta = *o.zeta.get_or_insert(8.0);
                CovSpec::Fixed(Arc::new(
                    Stationary::lrc(shape, zeta).map_err(candle_core::Error::from)?,
                ) as Arc<dyn Covariance>)
            }
        };
        let xi = if !spec.learns() {
            Xi::None
        } else {
            match name {
                MethodName::SgrGrad => Xi::Gradient,
                MethodName::SgrSign => Xi::Sign,
                MethodName::FgsmSgr => Xi::Fgsm,
                _ => Xi::Pgd {
                    steps: *o.pgd_steps.get_or_insert(10),
                },
            }
        };
        let uses_attack = matches!(xi, Xi::Fgsm | Xi::Pgd { .. });
        let eps = if uses_attack {
            check_positive("--eps", *o.eps.get_or_insert(default_eps_255(ctx.dataset)))? / 255.0
        } else {
            0.0
        };
        let predicted_labels = if xi == Xi::None {
            false
        } else {
            let labels = *o.xi_labels.get_or_insert(if uses_attack {
                XiLabels::Predicted
            } else {
                XiLabels::True
            });
            labels == XiLabels::Predicted
        };
        let uncentred = *o.uncentred.get_or_insert(false);
        let reg = GradientRegularizer::new(RegularizerConfig {
            shape,
            cov: spec,
            beta,
            target_mean_diag: c,
            second_order,
            uncentred,
        })?;
        Ok(Self {
            name,
            options: o,
            reg,
            xi,
            lambda,
            eps,
            predicted_labels,
        })
    }

    /// Exact mode: Ω's value and adjoint `∂Ω/∂g` from the input gradient, then the parameter gradients of
    /// `CE + λ·⟨∂Ω/∂g, g⟩` (the same as those of `CE + λΩ`) through the one gradient entry point — the explicit
    /// second derivative on the CPU path, double backprop elsewhere.
    fn exact_step(&mut self, input: &StepInput<'_>) -> Result<StepOutput> {
        let pass = forward_pass(input.model, input.x, input.y, true)?;
        let grad = pass.input_grad().ok_or_else(|| {
            candle_core::Error::Msg("a pass asked for the input gradient came without it".into())
        })?;
        let ig = InputGradient {
            x: input.x.detach(),
            logits: pass.logits()?,
            log_lik: pass.log_lik(),
            grad,
        };
        if self.xi != Xi::None {
            let xi = self.perturbations(input, &ig)?;
            self.reg.observe(&xi)?;
        }
        let (omega, adjoint) = self.reg.penalty_adjoint(&ig.grad)?;
        let m = input.x.dim(0)? as f64;
        let grads = parameter_gradients(
            input.model,
            input.params,
            &pass,
            1.0 / m,
            Some(&(adjoint * self.lambda)?),
        )?;
        let ce = pass.cross_entropy()?;
        let loss = (&ce + (&omega * self.lambda)?)?;
        Ok(StepOutput {
            loss,
            logits: ig.logits,
            metrics: vec![("ce".into(), ce), ("omega".into(), omega)],
            grads: Some(grads),
        })
    }

    /// The perturbations ξ of Algorithm 1 for this batch.
    fn perturbations(&self, input: &StepInput<'_>, ig: &InputGradient) -> Result<Tensor> {
        let x = input.x;
        if let Xi::Gradient | Xi::Sign = self.xi {
            // ∇_x CE_i = −g_i for the true labels; recomputed where the prediction differs when asked.
            let mut d = ig.grad.detach().neg()?;
            if self.predicted_labels {
                let y_hat = ig.logits.detach().argmax(candle_core::D::Minus1)?;
                let differ = y_hat
                    .ne(input.y)?
                    .to_dtype(DType::U32)?
                    .sum_all()?
                    .to_scalar::<u32>()?;
                if differ > 0 {
                    let frozen = input.model.frozen();
                    d = loss_gradient(&frozen, x, &y_hat)?.0;
                }
            }
            return if self.xi == Xi::Sign { d.sign() } else { Ok(d) };
        }
        let frozen = input.model.frozen();
        let y = if self.predicted_labels {
            ig.logits.detach().argmax(candle_core::D::Minus1)?
        } else {
            input.y.clone()
        };
        let adv = match self.xi {
            Xi::Fgsm => Fgsm.run(&frozen, x, &y, self.eps)?,
            Xi::Pgd { steps } => Pgd {
                steps,
                ..Pgd::whitebox()
            }
            .run(&frozen, x, &y, self.eps)?,
            _ => unreachable!(),
        };
        adv - x
    }
}

impl Method for Sgr {
    fn name(&self) -> MethodName {
        self.name
    }
    fn options(&self) -> &MethodOptions {
        &self.options
    }
    fn loss(&mut self, input: &StepInput<'_>) -> Result<StepOutput> {
        if self.reg.config().second_order == SecondOrder::Exact {
            return self.exact_step(input);
        }
        // The finite-difference surrogates of the second derivative: the regulariser's own autograd route.
        let ig = input_gradient_split(input.model, &input.model.frozen(), input.x, input.y)?;
        if self.xi != Xi::None {
            let xi = self.perturbations(input, &ig)?;
            self.reg.observe(&xi)?;
        }
        let p = self.reg.penalty(input.model, input.y, &ig)?;
        let ce = ig.log_lik.mean(0)?.neg()?;
        let loss = (&ce + (&p.omega * self.lambda)?)?;
        Ok(StepOutput {
            loss,
            logits: ig.logits.detach(),
            metrics: vec![("ce".into(), ce.detach()), ("omega".into(), p.value)],
            grads: None,
        })
    }
    fn state(&self) -> Result<HashMap<String, Tensor>> {
        Ok(self.reg.state()?)
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(self.reg.load_state(state)?)
    }
}
