//! Sequential image classifiers described once as a list of layers ([`CnnConfig`], [`Layer`]): the paper's
//! two CNNs (Table 5) for MNIST and CIFAR-10 as presets, any stack of convolutions (any kernel size, valid or
//! same padding), ReLUs, 2×2 max-pools and dense layers from a spec string.
//!
//! * Inputs are images in `[0, 1]`; per-image standardisation is the model's first layer
//!   ([`standardize`]), so attacks and clipping work in pixel space.
//! * On the CPU (f32/f64) the network runs on the fused channels-last ops of [`ops`] (convolution + bias +
//!   ReLU, ReLU, max-pool, each exact to any order and tested against candle's layers); elsewhere, or with
//!   [`Cnn::set_plain_ops`], on candle's layers, with max-pooling as [`max_pool2x2`], element-wise selects
//!   that route gradients to each window's first maximum like PyTorch, exact to any order (candle's
//!   `max_pool2d` backward is not, and a `max` reduction's backward duplicates tied gradients), and a ReLU
//!   whose derivative at 0 is 0 (candle's is 1).
//! * [`Cnn::frozen`] detaches the parameters; on the CPU its network is then one graph node whose backward is
//!   the explicit reverse pass ([`Cnn::log_lik_input_gradient`]), which makes attacks' input gradients cheap.
//! * [`Cnn::explicit_pass`] and [`Cnn::explicit_gradients`] give the parameter gradients of
//!   `CE + P(∇_x log p)` on the CPU path without autograd (the second derivative as a tangent forward pass);
//!   the training methods use them there.
//! * Every path walks the one layer list: candle's layers ([`Cnn`]'s `forward` off the fast path), the
//!   channels-last forward, reverse (input adjoint) and tangent passes, and the weight gradients.
//! * Parameter names and layouts are PyTorch's (`conv1.weight` `[out, in, k, k]`, `fc1.weight` `[out, in]`,
//!   numbered in order, flatten in `(C, H, W)` order); checkpoints record the spec, so a PyTorch module built
//!   from it loads them with `load_state_dict` (see `tests/pytorch_compat.py`).

mod arch;
mod checkpoint;
mod cnn;
mod device;
mod explicit;
pub mod fsutil;
mod input_grad;
mod layers;
pub mod ops;

pub use arch::{ActShape, CIFAR10_SPEC, CnnConfig, Layer, MNIST_SPEC};
pub use checkpoint::{ModelError, load_model, load_model_from_tensors, save_model};
pub use cnn::{Cnn, init_params};
pub use device::{DeviceKind, make_device};
pub use explicit::ExplicitPass;
pub use layers::{max_pool2x2, standardize};
