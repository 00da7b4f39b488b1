//! The two CNNs of the paper (Table 5) for MNIST and CIFAR-10, built from candle-nn layers.
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
//! * Parameter names and layouts are PyTorch's (`conv1.weight` `[out, in, 3, 3]`, `fc1.weight` `[out, in]`,
//!   flatten in `(C, H, W)` order): a PyTorch module of the same architecture loads a checkpoint with
//!   `load_state_dict` (see `tests/pytorch_compat.py`).

mod checkpoint;
mod cnn;
mod device;
mod explicit;
pub mod fsutil;
mod input_grad;
mod layers;
pub mod ops;

pub use checkpoint::{ModelError, load_model, load_model_from_tensors, save_model};
pub use cnn::{Cnn, CnnConfig, init_params};
pub use device::{DeviceKind, make_device};
pub use explicit::ExplicitPass;
pub use layers::{max_pool2x2, standardize};
