//! Training on perturbed inputs (eq. 3): `(1 − λ)·CE(x) + λ·CE(x̃)`, with `x̃` an FGSM or PGD adversarial
//! example (made for the model's most likely label, sec. 7.2) or LRC noise (sec. 4.3).

use candle_core::{D, Result};
use sgr_attacks::{Attack, Fgsm, NoiseSource, Pgd, WorstOfN};
use sgr_data::DatasetName;

use crate::gradients::{forward_pass, parameter_gradients};
use crate::method::{
    Method, MethodContext, MethodError, MethodOptions, StepInput, StepOutput, add_gradients,
};
use crate::settings::MethodName;

/// The paper's attack budget for a data set, in units of 1/255: 32 (MNIST-like), 4 (CIFAR-10).
pub fn default_eps_255(dataset: DatasetName) -> f64 {
    if dataset == DatasetName::Cifar10 {
        4.0
    } else {
        32.0
    }
}

/// The LRC method's default noise scale (ε = 0.3 in pixel units, Fig. 3), in units of 1/255.
pub const LRC_EPS_255: f64 = 0.3 * 255.0;

/// A seed for the random draws of step `step` (PGD starts, LRC noise), from the run's seed and a stream tag,
/// through the same derivation as the data order and augmentation ([`sgr_data::seeded_rng`]).
pub(crate) fn step_seed(seed: u64, tag: u64, step: u64) -> u64 {
    use rand::RngCore;
    sgr_data::seeded_rng(seed, &[tag, step]).next_u64()
}

pub(crate) fn check_positive(what: &str, v: f64) -> std::result::Result<f64, MethodError> {
    if v >= 0.0 && v.is_finite() {
        Ok(v)
    } else {
        Err(MethodError::Config(format!(
            "{what} must be a non-negative number, got {v}"
        )))
    }
}

/// How the perturbed half of the batch is made.
#[derive(Debug)]
enum Perturb {
    Fgsm,
    Pgd { steps: usize },
    Lrc(NoiseSource),
}

/// `fgsm`, `pgd` and `lrc` training.
#[derive(Debug)]
pub struct Augmented {
    name: MethodName,
    options: MethodOptions,
    perturb: Perturb,
    lambda: f64,
    eps: f64,
}

impl Augmented {
    pub fn new(
        name: MethodName,
        ctx: &MethodContext<'_>,
        mut options: MethodOptions,
    ) -> std::result::Result<Self, MethodError> {
        let lambda = check_positive("--lambda", *options.lambda.get_or_insert(0.5))?;
        if lambda > 1.0 {
            return Err(MethodError::Config(format!(
                "--lambda weighs clean and perturbed loss (eq. 3) and must be in [0, 1], got {lambda}"
            )));
        }
        let perturb = match name {
            MethodName::Fgsm => Perturb::Fgsm,
            MethodName::Pgd => Perturb::Pgd {
                steps: *options.pgd_steps.get_or_insert(10),
            },
            _ => {
                let zeta = *options.zeta.get_or_insert(8.0);
                if !(zeta > 0.0 && zeta.is_finite()) {
                    return Err(MethodError::Config(format!(
                        "--zeta must be positive, got {zeta}"
                    )));
                }
                Perturb::Lrc(NoiseSource::lrc(ctx.train.shape(), zeta)?)
            }
        };
        let default_eps = if name == MethodName::Lrc {
            LRC_EPS_255
        } else {
            default_eps_255(ctx.dataset)
        };
        let eps = check_positive("--eps", *options.eps.get_or_insert(default_eps))? / 255.0;
        Ok(Self {
            name,
            options,
            perturb,
            lambda,
            eps,
        })
    }
}

impl Method for Augmented {
    fn name(&self) -> MethodName {
        self.name
    }
    fn options(&self) -> &MethodOptions {
        &self.options
    }
    fn loss(&mut self, input: &StepInput<'_>) -> Result<StepOutput> {
        let x = input.x;
        let (lc, la) = (1.0 - self.lambda, self.lambda);
        let m = x.dim(0)? as f64;
        let clean_pass = forward_pass(input.model, x, input.y, false)?;
        let logits = clean_pass.logits()?;
        let perturbed = match &self.perturb {
            Perturb::Lrc(source) => {
                let seed = step_seed(input.seed, sgr_data::streams::LRC_TRAINING, input.step);
                let noise = WorstOfN::draw_noise(source, seed, 0, x.dim(0)?)?
                    .to_dtype(x.dtype())?
                    .to_device(x.device())?;
                (x + (noise * self.eps)?)?.clamp(0.0, 1.0)?
            }
            attack => {
                let frozen = input.model.frozen();
                // The model's most likely labels, from the clean forward pass already made.
                let y_hat = logits.detach().argmax(D::Minus1)?;
                match attack {
                    Perturb::Fgsm => Fgsm.run(&frozen, x, &y_hat, self.eps)?,
                    Perturb::Pgd { steps } => Pgd {
                        steps: *steps,
                        random_start: true,
                        seed: step_seed(input.seed, sgr_data::streams::PGD_TRAINING, input.step),
                        ..Pgd::whitebox()
                    }
                    .run(&frozen, x, &y_hat, self.eps)?,
                    Perturb::Lrc(_) => unreachable!(),
                }
            }
        };
        let adv_pass = forward_pass(input.model, &perturbed.detach(), input.y, false)?;
        let mut grads = parameter_gradients(input.model, input.params, &clean_pass, lc / m, None)?;
        add_gradients(
            &mut grads,
            parameter_gradients(input.model, input.params, &adv_pass, la / m, None)?,
        )?;
        let (clean, adv) = (clean_pass.cross_entropy()?, adv_pass.cross_entropy()?);
        let loss = ((&clean * lc)? + (&adv * la)?)?;
        Ok(StepOutput {
            loss,
            logits,
            metrics: vec![("clean_ce".into(), clean), ("perturbed_ce".into(), adv)],
            grads: Some(grads),
        })
    }
}
