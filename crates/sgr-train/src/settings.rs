//! Typed run settings: each setting that was a string is an enum, parsed once at the edge (flags, run.json)
//! with one error that lists the choices, and written back under the same names.

use serde::{Deserialize, Serialize};

/// An enum of named choices: `FromStr` (the names, with aliases, and an error listing them), `Display`,
/// `name()`, `ALL`; serde uses the same names.
macro_rules! named_choices {
    ($(#[$meta:meta])* $vis:vis enum $ty:ident ($what:literal) {
        $($(#[$vmeta:meta])* $variant:ident = $name:literal $(| $alias:literal)*,)+
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        $vis enum $ty {
            $($(#[$vmeta])* #[serde(rename = $name $(, alias = $alias)*)] $variant,)+
        }

        impl $ty {
            /// Every choice, in the order the help text lists them.
            pub const ALL: &'static [$ty] = &[$($ty::$variant,)+];

            /// The name on the command line and in run.json.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim() {
                    $($name $(| $alias)* => Ok($ty::$variant),)+
                    other => Err(format!(
                        "unknown {} '{other}': expected {}",
                        $what,
                        $ty::ALL.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
                    )),
                }
            }
        }
    };
}

named_choices! {
    /// The training methods of the paper.
    pub enum MethodName ("method") {
        Clean = "clean",
        WeightDecay = "wdecay",
        Fgsm = "fgsm",
        Pgd = "pgd",
        Gn = "gn",
        SgrGrad = "sgr-grad",
        SgrSign = "sgr-sign",
        FgsmSgr = "fgsm-sgr",
        PgdSgr = "pgd-sgr",
        Lrc = "lrc",
    }
}

impl MethodName {
    /// Gradient regularisers with a strength λ: gn and the four SGR variants.
    pub fn is_regularized(self) -> bool {
        matches!(
            self,
            MethodName::Gn
                | MethodName::SgrGrad
                | MethodName::SgrSign
                | MethodName::FgsmSgr
                | MethodName::PgdSgr
        )
    }
}

named_choices! {
    /// Σ of the gradient regularisers.
    pub enum CovKind ("--cov") {
        /// Σ = I (GN).
        Identity = "identity",
        /// An EMA of the perturbations' second moments, as a dense `d × d` matrix.
        Dense = "dense",
        /// The same estimate as a covariance function of pixel distance.
        Covfun = "covfun",
        /// The training set's covariance, fixed.
        Data = "data",
        /// The synthetic long-range-correlated covariance, fixed.
        Lrc = "lrc",
    }
}

named_choices! {
    /// How Ω's parameter gradient (a second derivative) is computed.
    pub enum SecondOrderMode ("--second-order") {
        /// Exact: double backprop, or its explicit form on the CPU path.
        Exact = "exact",
        /// Central differences of first-order gradients.
        Fd = "fd" | "fd-central",
        /// One-sided differences.
        FdForward = "fd-forward",
    }
}

named_choices! {
    /// The labels SGR's perturbations ξ are made for.
    pub enum XiLabels ("--xi-labels") {
        True = "true",
        /// The model's most likely label.
        Predicted = "predicted",
    }
}

named_choices! {
    /// The floating-point type of parameters and activations.
    pub enum FloatType ("--dtype") {
        F32 = "f32",
        F64 = "f64",
    }
}

impl FloatType {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::F64 => candle_core::DType::F64,
        }
    }
}

named_choices! {
    /// How the learning rate evolves over the run.
    pub enum LrSchedule ("--lr-schedule") {
        /// The paper's constant rate.
        Constant = "constant",
        /// Half-cosine decay from the base rate to 0 over all steps of the run (`lr·(1 + cos(π·t/T))/2`).
        Cosine = "cosine",
    }
}

impl LrSchedule {
    /// The rate for step `t` (0-based) of `total` steps.
    pub fn lr_at(self, base: f64, t: u64, total: u64) -> f64 {
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine => {
                let frac = (t as f64 / total.max(1) as f64).min(1.0);
                base * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())
            }
        }
    }
}
