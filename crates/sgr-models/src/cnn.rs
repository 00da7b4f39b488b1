//! The classifier as a list of layers with their parameters, its forward pass on candle's layers, its
//! frozen copy for attacks, and PyTorch's initialisation.

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder, VarMap};
use rand::Rng;

use crate::arch::{CnnConfig, Layer};
use crate::layers::{max_pool2x2, relu, standardize};

/// One layer of [`Cnn`] with its parameters: the runtime counterpart of [`Layer`].
#[derive(Clone, Debug)]
pub(crate) enum Node {
    Conv {
        conv: Conv2d,
        padding: usize,
        relu: bool,
    },
    Relu,
    Pool,
    Flatten,
    Dense {
        linear: Linear,
        relu: bool,
    },
}

impl Node {
    fn frozen(&self) -> Self {
        match self {
            Node::Conv {
                conv,
                padding,
                relu,
            } => Node::Conv {
                conv: Conv2d::new(
                    conv.weight().detach(),
                    conv.bias().map(|b| b.detach()),
                    *conv.config(),
                ),
                padding: *padding,
                relu: *relu,
            },
            Node::Dense { linear, relu } => Node::Dense {
                linear: Linear::new(linear.weight().detach(), linear.bias().map(|b| b.detach())),
                relu: *relu,
            },
            other => other.clone(),
        }
    }

    /// Whether `[output > 0]` of this layer is the mask of a ReLU its input came from, when there is one:
    /// pools (at a window's arg-max the pooled value is the ReLU's output), flattens and ReLUs.
    pub(crate) fn keeps_relu_mask(&self) -> bool {
        matches!(self, Node::Pool | Node::Flatten | Node::Relu)
    }
}

/// The classifier described by a [`CnnConfig`]. `forward` maps `(B, C, H, W)` images in `[0, 1]` to
/// `(B, classes)` logits.
#[derive(Clone, Debug)]
pub struct Cnn {
    pub(crate) nodes: Vec<Node>,
    config: CnnConfig,
    pub(crate) plain_ops: bool,
    /// Made by [`Cnn::frozen`]: parameters detached, input gradients through one custom op.
    frozen: bool,
}

impl Cnn {
    /// Builds the model from `vb`, which must hold (or be able to create) every tensor of
    /// [`CnnConfig::param_shapes`].
    pub fn new(config: CnnConfig, vb: VarBuilder<'_>) -> Result<Self> {
        config.shapes().map_err(candle_core::Error::Msg)?;
        let mut shapes = config.param_shapes().into_iter();
        let mut next = || -> Result<Tensor> {
            let (name, shape) = shapes
                .next()
                .ok_or_else(|| candle_core::Error::Msg("parameter list too short".into()))?;
            vb.get(shape.as_slice(), &name)
        };
        let mut nodes = Vec::with_capacity(config.layers.len());
        for layer in &config.layers {
            nodes.push(match *layer {
                Layer::Conv { padding, relu, .. } => {
                    let (w, b) = (next()?, next()?);
                    // Padding is applied explicitly (a differentiable zero pad), so candle's convolution
                    // always runs "valid".
                    Node::Conv {
                        conv: Conv2d::new(w, Some(b), Conv2dConfig::default()),
                        padding,
                        relu,
                    }
                }
                Layer::Dense { relu, .. } => {
                    let (w, b) = (next()?, next()?);
                    Node::Dense {
                        linear: Linear::new(w, Some(b)),
                        relu,
                    }
                }
                Layer::Relu => Node::Relu,
                Layer::Pool => Node::Pool,
                Layer::Flatten => Node::Flatten,
            });
        }
        Ok(Self {
            nodes,
            config,
            plain_ops: false,
            frozen: false,
        })
    }

    pub fn config(&self) -> &CnnConfig {
        &self.config
    }

    /// Use candle's own layers everywhere (for comparison). By default, CPU tensors go through the fused
    /// channels-last ops of [`crate::ops`]; other devices always use candle's layers.
    pub fn set_plain_ops(&mut self, plain: bool) {
        self.plain_ops = plain;
    }

    /// Whether this input runs on the fused channels-last CPU ops of [`crate::ops`] (CPU, f32/f64, custom
    /// ops enabled) rather than candle's layers.
    pub fn uses_fast_ops(&self, x: &Tensor) -> bool {
        !self.plain_ops && x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
    }

    /// The same network with its parameters as plain (detached) tensors: backward passes through it compute
    /// input gradients only, not parameter gradients, which makes attacks about twice as fast. On the CPU
    /// path the whole network after standardisation is then one graph node whose backward is the explicit
    /// reverse pass of [`Cnn::log_lik_input_gradient`] (exact to any order in the input; tested against the
    /// unfrozen model). Later changes to the trained parameters are not seen by the frozen copy.
    pub fn frozen(&self) -> Self {
        Self {
            nodes: self.nodes.iter().map(Node::frozen).collect(),
            config: self.config.clone(),
            plain_ops: self.plain_ops,
            frozen: true,
        }
    }

    /// The forward pass on candle's layers (any device), `x` standardised, `(B, C, H, W)`.
    fn forward_plain(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for node in &self.nodes {
            x = match node {
                Node::Conv {
                    conv,
                    padding,
                    relu: r,
                    ..
                } => {
                    let input = if *padding > 0 {
                        x.pad_with_zeros(2, *padding, *padding)?
                            .pad_with_zeros(3, *padding, *padding)?
                    } else {
                        x
                    };
                    let y = conv.forward(&input)?;
                    if *r { relu(&y)? } else { y }
                }
                Node::Relu => relu(&x)?,
                Node::Pool => max_pool2x2(&x)?,
                Node::Flatten => x.flatten_from(1)?,
                Node::Dense { linear, relu: r } => {
                    let y = linear.forward(&x)?;
                    if *r { relu(&y)? } else { y }
                }
            };
        }
        Ok(x)
    }
}

impl Module for Cnn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("cnn_forward").entered();
        if self.uses_fast_ops(x) {
            if self.frozen && x.track_op() {
                let z = standardize(x)?.contiguous()?;
                return z.apply_op1(crate::input_grad::FrozenNet::new(self.clone()));
            }
            return Ok(self.forward_activations(&standardize(x)?)?.0);
        }
        self.forward_plain(&standardize(x)?)
    }
}

/// Fills `varmap` with PyTorch's default initialisation (weights and biases uniform in ±1/√fan_in),
/// drawn from a ChaCha8 generator seeded with `seed`, so the same seed gives the same model.
pub fn init_params(
    varmap: &VarMap,
    config: &CnnConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<()> {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    let mut fan_in = 1usize;
    for (name, shape) in config.param_shapes() {
        // param_shapes lists each weight before its bias; a bias uses its weight's fan-in.
        if name.ends_with("weight") {
            fan_in = shape[1..].iter().product();
        }
        let bound = 1.0 / (fan_in as f64).sqrt();
        let n: usize = shape.iter().product();
        let vals: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
        let t = Tensor::from_vec(vals, shape.as_slice(), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)?;
        data.insert(name, Var::from_tensor(&t)?);
    }
    Ok(())
}
