use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder, VarMap};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::layers::{max_pool2x2, relu, standardize};

/// The architecture of Table 5: four 3×3 valid convolutions (two, pool, two, pool) and three dense layers,
/// ReLU after every layer but the last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CnnConfig {
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    /// Feature maps of conv1..conv4.
    pub convs: [usize; 4],
    /// Units of fc1 and fc2.
    pub hidden: [usize; 2],
    pub classes: usize,
}

impl CnnConfig {
    /// MNIST: params = [32, 32, 64, 64, 200, 200, 10] on 1×28×28.
    pub fn mnist() -> Self {
        Self {
            in_channels: 1,
            height: 28,
            width: 28,
            convs: [32, 32, 64, 64],
            hidden: [200, 200],
            classes: 10,
        }
    }

    /// CIFAR-10: params = [64, 64, 128, 128, 256, 256, 10] on 3×32×32.
    pub fn cifar10() -> Self {
        Self {
            in_channels: 3,
            height: 32,
            width: 32,
            convs: [64, 64, 128, 128],
            hidden: [256, 256],
            classes: 10,
        }
    }

    /// The paper's model for images of `channels` channels: CIFAR's for colour, MNIST's otherwise.
    pub fn for_image(channels: usize, height: usize, width: usize) -> Self {
        let base = if channels == 3 {
            Self::cifar10()
        } else {
            Self::mnist()
        };
        Self {
            in_channels: channels,
            height,
            width,
            ..base
        }
    }

    /// Spatial size after the feature blocks: each block is two valid 3×3 convs then a 2×2 pool.
    pub fn feature_hw(&self) -> (usize, usize) {
        let block = |s: usize| s.saturating_sub(4) / 2;
        (block(block(self.height)), block(block(self.width)))
    }

    /// Inputs of fc1: `convs[3] · h · w` in (C, H, W) order.
    pub fn flat_features(&self) -> usize {
        let (h, w) = self.feature_hw();
        self.convs[3] * h * w
    }

    pub fn input_dim(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    /// Shapes of every parameter, in PyTorch's names and layouts.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let c = self.convs;
        let ins = [self.in_channels, c[0], c[1], c[2]];
        let mut out = Vec::new();
        for k in 0..4 {
            out.push((format!("conv{}.weight", k + 1), vec![c[k], ins[k], 3, 3]));
            out.push((format!("conv{}.bias", k + 1), vec![c[k]]));
        }
        let dims = [
            self.flat_features(),
            self.hidden[0],
            self.hidden[1],
            self.classes,
        ];
        for k in 0..3 {
            out.push((format!("fc{}.weight", k + 1), vec![dims[k + 1], dims[k]]));
            out.push((format!("fc{}.bias", k + 1), vec![dims[k + 1]]));
        }
        out
    }

    /// A short name stored in checkpoint metadata.
    pub fn arch_name(&self) -> &'static str {
        if self.in_channels == 3 {
            "cifar10-cnn"
        } else {
            "mnist-cnn"
        }
    }
}

/// The classifier. `forward` maps `(B, C, H, W)` images in `[0, 1]` to `(B, classes)` logits.
#[derive(Clone, Debug)]
pub struct Cnn {
    pub(crate) conv1: Conv2d,
    pub(crate) conv2: Conv2d,
    pub(crate) conv3: Conv2d,
    pub(crate) conv4: Conv2d,
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    pub(crate) fc3: Linear,
    config: CnnConfig,
    pub(crate) plain_ops: bool,
    /// Made by [`Cnn::frozen`]: parameters detached, input gradients through one custom op.
    frozen: bool,
}

impl Cnn {
    /// Builds the model from `vb`, which must hold (or be able to create) every tensor of
    /// [`CnnConfig::param_shapes`].
    pub fn new(config: CnnConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let shapes = config.param_shapes();
        let get = |i: usize| vb.get(shapes[i].1.as_slice(), &shapes[i].0);
        let conv = |i: usize| -> Result<Conv2d> {
            Ok(Conv2d::new(
                get(2 * i)?,
                Some(get(2 * i + 1)?),
                Conv2dConfig::default(),
            ))
        };
        let fc = |i: usize| -> Result<Linear> {
            Ok(Linear::new(get(8 + 2 * i)?, Some(get(9 + 2 * i)?)))
        };
        Ok(Self {
            conv1: conv(0)?,
            conv2: conv(1)?,
            conv3: conv(2)?,
            conv4: conv(3)?,
            fc1: fc(0)?,
            fc2: fc(1)?,
            fc3: fc(2)?,
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
        let conv = |c: &Conv2d| {
            Conv2d::new(
                c.weight().detach(),
                c.bias().map(|b| b.detach()),
                *c.config(),
            )
        };
        let fc = |l: &Linear| Linear::new(l.weight().detach(), l.bias().map(|b| b.detach()));
        Self {
            conv1: conv(&self.conv1),
            conv2: conv(&self.conv2),
            conv3: conv(&self.conv3),
            conv4: conv(&self.conv4),
            fc1: fc(&self.fc1),
            fc2: fc(&self.fc2),
            fc3: fc(&self.fc3),
            config: self.config.clone(),
            plain_ops: self.plain_ops,
            frozen: true,
        }
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
        let x = standardize(x)?;
        let x = relu(&self.conv1.forward(&x)?)?;
        let x = max_pool2x2(&relu(&self.conv2.forward(&x)?)?)?;
        let x = relu(&self.conv3.forward(&x)?)?;
        let x = max_pool2x2(&relu(&self.conv4.forward(&x)?)?)?;
        let x = x.flatten_from(1)?;
        let x = relu(&self.fc1.forward(&x)?)?;
        let x = relu(&self.fc2.forward(&x)?)?;
        self.fc3.forward(&x)
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
