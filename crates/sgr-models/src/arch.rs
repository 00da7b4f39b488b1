//! The network description: a sequence of layers, the spec string that names it, and the parameter names.
//!
//! Every path of the model (candle's layers, the channels-last forward/reverse/tangent passes, the explicit
//! weight gradients) walks [`CnnConfig::layers`]; nothing else knows the architecture.

use serde::{Deserialize, Serialize};

/// One layer of a sequential image classifier. Per-image standardisation always comes first (it is the
/// model's input layer, outside this list); after it, spatial layers work on `(C, H, W)` maps, a `Flatten`
/// turns them into `(C·H·W)` features in `(C, H, W)` order, and dense layers follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layer {
    /// Stride-1 `k × k` convolution with bias (`padding` zeros on each side: 0 is "valid", `(k − 1)/2`
    /// "same"), followed by a ReLU when `relu`.
    Conv {
        out: usize,
        k: usize,
        padding: usize,
        relu: bool,
    },
    /// `max(x, 0)` with derivative 0 at 0.
    Relu,
    /// 2×2 max-pooling with stride 2 (odd sizes floored), gradients to each window's first maximum.
    Pool,
    /// `(C, H, W)` maps to `C·H·W` features, in PyTorch's `flatten(1)` order.
    Flatten,
    /// `y = x Wᵀ + b`, followed by a ReLU when `relu`.
    Dense { out: usize, relu: bool },
}

impl Layer {
    /// Whether the layer has a weight and a bias.
    pub fn has_params(&self) -> bool {
        matches!(self, Layer::Conv { .. } | Layer::Dense { .. })
    }

    /// Whether the layer's output is a ReLU's output.
    pub fn ends_with_relu(&self) -> bool {
        match self {
            Layer::Conv { relu, .. } | Layer::Dense { relu, .. } => *relu,
            Layer::Relu => true,
            Layer::Pool | Layer::Flatten => false,
        }
    }

    /// The layer's token in a spec string (`None` for a flatten, which is implied).
    fn token(&self) -> Option<String> {
        match *self {
            Layer::Conv {
                out,
                k,
                padding,
                relu,
            } => {
                let mut t = format!("conv{out}");
                if k != 3 {
                    t.push_str(&format!("-k{k}"));
                }
                if padding > 0 {
                    if 2 * padding + 1 == k {
                        t.push_str("-same");
                    } else {
                        t.push_str(&format!("-p{padding}"));
                    }
                }
                if !relu {
                    t.push_str("-linear");
                }
                Some(t)
            }
            Layer::Relu => Some("relu".into()),
            Layer::Pool => Some("pool".into()),
            Layer::Flatten => None,
            Layer::Dense { out, relu } => Some(if relu {
                format!("fc{out}")
            } else {
                format!("fc{out}-linear")
            }),
        }
    }
}

/// The shape of an activation: spatial `(C, H, W)` maps or flat features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActShape {
    Maps { c: usize, h: usize, w: usize },
    Flat(usize),
}

/// A sequential classifier: input shape, layers, classes. The paper's two CNNs (Table 5) are the presets
/// [`CnnConfig::mnist`] and [`CnnConfig::cifar10`]; any other stack is written as a spec string
/// ([`CnnConfig::parse`]), e.g. `conv32,conv32,pool,conv64,conv64,pool,fc200,fc200`. Parameters are named as
/// in PyTorch: `conv1…convN` and `fc1…fcM` in order, weights `[out, in, k, k]` and `[out, in]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CnnConfig {
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
    /// The layers after standardisation; the last is the dense output layer without ReLU.
    pub layers: Vec<Layer>,
}

/// The spec of the paper's MNIST CNN (Table 5).
pub const MNIST_SPEC: &str = "conv32,conv32,pool,conv64,conv64,pool,fc200,fc200";
/// The spec of the paper's CIFAR-10 CNN (Table 5).
pub const CIFAR10_SPEC: &str = "conv64,conv64,pool,conv128,conv128,pool,fc256,fc256";

impl CnnConfig {
    /// MNIST: params = [32, 32, 64, 64, 200, 200, 10] on 1×28×28.
    pub fn mnist() -> Self {
        Self::parse(MNIST_SPEC, (1, 28, 28), 10).expect("the MNIST preset is valid")
    }

    /// CIFAR-10: params = [64, 64, 128, 128, 256, 256, 10] on 3×32×32.
    pub fn cifar10() -> Self {
        Self::parse(CIFAR10_SPEC, (3, 32, 32), 10).expect("the CIFAR-10 preset is valid")
    }

    /// A network for `(channels, height, width)` images from `arch`: a preset name (`mnist`, `cifar10`, or
    /// `paper` for the paper's model of that image type) or a spec string (see [`CnnConfig::parse`]).
    pub fn from_arch(
        arch: &str,
        (c, h, w): (usize, usize, usize),
        classes: usize,
    ) -> Result<Self, String> {
        match arch {
            "paper" => Self::parse(
                if c == 3 { CIFAR10_SPEC } else { MNIST_SPEC },
                (c, h, w),
                classes,
            ),
            "mnist" => Self::parse(MNIST_SPEC, (c, h, w), classes),
            "cifar10" => Self::parse(CIFAR10_SPEC, (c, h, w), classes),
            spec => Self::parse(spec, (c, h, w), classes),
        }
    }

    /// Parses a spec: comma-separated layers after standardisation, the dense output layer of `classes`
    /// units implied. Tokens: `conv<C>` (3×3, valid, ReLU) with optional `-k<K>` (kernel size), `-same`
    /// (zero padding `(K − 1)/2`) or `-p<P>`, `-linear` (no ReLU); `pool` (2×2 max); `relu`; `flatten`
    /// (implied before the first dense layer); `fc<N>` (dense + ReLU) with optional `-linear`.
    pub fn parse(
        spec: &str,
        (c, h, w): (usize, usize, usize),
        classes: usize,
    ) -> Result<Self, String> {
        let mut layers = Vec::new();
        for raw in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            layers.push(parse_token(raw)?);
        }
        if !layers.contains(&Layer::Flatten) {
            let first_dense = layers
                .iter()
                .position(|l| matches!(l, Layer::Dense { .. }))
                .unwrap_or(layers.len());
            layers.insert(first_dense, Layer::Flatten);
        }
        layers.push(Layer::Dense {
            out: classes,
            relu: false,
        });
        let config = Self {
            in_channels: c,
            height: h,
            width: w,
            classes,
            layers,
        };
        config.shapes()?;
        Ok(config)
    }

    /// The canonical spec string (the output layer and the implied flatten left out): what checkpoints
    /// record and `--arch` takes.
    pub fn spec(&self) -> String {
        let body = &self.layers[..self.layers.len().saturating_sub(1)];
        body.iter()
            .filter_map(Layer::token)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The output shape of every layer, checking that the sequence is well formed (kernels fit, pooling has
    /// at least 2×2 to work on, spatial layers before the flatten, dense layers after, one flatten, a dense
    /// output layer of `classes` units without ReLU).
    pub fn shapes(&self) -> Result<Vec<ActShape>, String> {
        let (c, h, w) = (self.in_channels, self.height, self.width);
        if c == 0 || h == 0 || w == 0 || self.classes == 0 {
            return Err(format!(
                "input {c}×{h}×{w} with {} classes: every size must be at least 1",
                self.classes
            ));
        }
        let mut cur = ActShape::Maps { c, h, w };
        let mut out = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let at = |msg: String| format!("layer {} ({}): {msg}", i + 1, describe(layer));
            cur = match (*layer, cur) {
                (
                    Layer::Conv {
                        out: o, k, padding, ..
                    },
                    ActShape::Maps { h, w, .. },
                ) => {
                    if o == 0 || k == 0 {
                        return Err(at("channels and kernel size must be at least 1".into()));
                    }
                    let (ph, pw) = (h + 2 * padding, w + 2 * padding);
                    if k > ph || k > pw {
                        return Err(at(format!("a {k}×{k} kernel does not fit {h}×{w} maps")));
                    }
                    ActShape::Maps {
                        c: o,
                        h: ph + 1 - k,
                        w: pw + 1 - k,
                    }
                }
                (Layer::Pool, ActShape::Maps { c, h, w }) => {
                    if h < 2 || w < 2 {
                        return Err(at(format!("cannot pool {h}×{w} maps")));
                    }
                    ActShape::Maps {
                        c,
                        h: h / 2,
                        w: w / 2,
                    }
                }
                (Layer::Flatten, ActShape::Maps { c, h, w }) => ActShape::Flat(c * h * w),
                (Layer::Relu, s) => s,
                (Layer::Dense { out: o, .. }, ActShape::Flat(_)) => {
                    if o == 0 {
                        return Err(at("a dense layer needs at least 1 unit".into()));
                    }
                    ActShape::Flat(o)
                }
                (Layer::Flatten, ActShape::Flat(_)) => {
                    return Err(at("the features are flat already (one flatten only)".into()));
                }
                (Layer::Conv { .. } | Layer::Pool, ActShape::Flat(_)) => {
                    return Err(at("spatial layers must come before the dense layers".into()));
                }
                (Layer::Dense { .. }, ActShape::Maps { .. }) => {
                    return Err(at("a dense layer needs a flatten before it".into()));
                }
            };
            out.push(cur);
        }
        match self.layers.last() {
            Some(Layer::Dense {
                out: o,
                relu: false,
            }) if *o == self.classes => Ok(out),
            _ => Err(format!(
                "the last layer must be a dense layer of {} units without ReLU",
                self.classes
            )),
        }
    }

    pub fn input_dim(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    /// Shapes of every parameter, in PyTorch's names and layouts (`conv1…`, `fc1…` in order; each weight
    /// before its bias).
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let (mut convs, mut denses) = (0, 0);
        let mut input = ActShape::Maps {
            c: self.in_channels,
            h: self.height,
            w: self.width,
        };
        let shapes = self.shapes().unwrap_or_default();
        for (layer, shape) in self.layers.iter().zip(shapes) {
            match (*layer, input) {
                (Layer::Conv { out: o, k, .. }, ActShape::Maps { c, .. }) => {
                    convs += 1;
                    out.push((format!("conv{convs}.weight"), vec![o, c, k, k]));
                    out.push((format!("conv{convs}.bias"), vec![o]));
                }
                (Layer::Dense { out: o, .. }, ActShape::Flat(n)) => {
                    denses += 1;
                    out.push((format!("fc{denses}.weight"), vec![o, n]));
                    out.push((format!("fc{denses}.bias"), vec![o]));
                }
                _ => {}
            }
            input = shape;
        }
        out
    }
}

fn describe(layer: &Layer) -> String {
    layer.token().unwrap_or_else(|| "flatten".into())
}

fn parse_token(raw: &str) -> Result<Layer, String> {
    let bad = |why: &str| {
        format!(
            "layer '{raw}': {why} (expected conv<C>[-k<K>][-same|-p<P>][-linear], pool, relu, flatten or fc<N>[-linear])"
        )
    };
    let mut parts = raw.split('-');
    let head = parts.next().unwrap_or_default().to_ascii_lowercase();
    let mods: Vec<String> = parts.map(|m| m.to_ascii_lowercase()).collect();
    let number = |s: &str| -> Result<usize, String> {
        s.parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("sizes are positive integers"))
    };
    match head.as_str() {
        "pool" | "relu" | "flatten" if !mods.is_empty() => Err(bad("takes no options")),
        "pool" => Ok(Layer::Pool),
        "relu" => Ok(Layer::Relu),
        "flatten" => Ok(Layer::Flatten),
        h if h.starts_with("conv") => {
            let out = number(&h[4..])?;
            let (mut k, mut padding, mut same, mut relu) = (3, 0, false, true);
            for m in &mods {
                match m.as_str() {
                    "same" => same = true,
                    "valid" => padding = 0,
                    "linear" => relu = false,
                    m if m.starts_with('k') => k = number(&m[1..])?,
                    m if m.starts_with('p') => {
                        padding = m[1..]
                            .parse()
                            .map_err(|_| bad("padding is a non-negative integer"))?
                    }
                    _ => return Err(bad(&format!("unknown option '-{m}'"))),
                }
            }
            if same {
                if k % 2 == 0 {
                    return Err(bad("'same' padding needs an odd kernel size"));
                }
                padding = (k - 1) / 2;
            }
            Ok(Layer::Conv {
                out,
                k,
                padding,
                relu,
            })
        }
        h if h.starts_with("fc") => {
            let out = number(&h[2..])?;
            let mut relu = true;
            for m in &mods {
                match m.as_str() {
                    "linear" => relu = false,
                    _ => return Err(bad(&format!("unknown option '-{m}'"))),
                }
            }
            Ok(Layer::Dense { out, relu })
        }
        _ => Err(bad("unknown layer")),
    }
}
