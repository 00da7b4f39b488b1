//! Fast CPU layers in channels-last (NHWC) layout, exact to any order of differentiation.
//!
//! Candle's own CPU convolution backward runs naive loops, its ReLU and max-pool backward passes take
//! several full passes over the activations each, and every node of a graph costs the backward pass a
//! zero-filled gradient buffer and an addition. The model's CPU path therefore runs on a few fused custom
//! ops over `(B, H, W, C)` activations:
//!
//! * [`conv2d_nhwc`]: valid, stride-1 convolution with optional bias and ReLU in one op; per chunk of images,
//!   im2col into a reused buffer and one `gemm` call (the crate candle's matmul runs on), parallel over the
//!   batch. Its derivatives are [`conv2d_nhwc_input_grad`] and the weight gradient, and the derivatives of
//!   those are each other and the convolution again, so the three ops are closed under differentiation
//!   (what exact double backprop needs).
//! * [`relu`] and [`relu_backward`]: `x·[x > 0]` and `g·[r > 0]`, one op each, each the other's derivative.
//! * [`max_pool2x2_nhwc`] and [`max_pool2x2_nhwc_backward`]: gather at / scatter to the first arg-max of each
//!   2×2 window, each the other's derivative.
//!
//! Every op is compared with the plain candle composition (values, first- and second-order gradients) in
//! `tests/ops.rs`. These ops have no GPU kernels: other devices use candle's layers.

use candle_core::{CpuStorage, Layout, Result};

mod conv;
mod layout;
mod pool;
mod relu;

pub(crate) use conv::sum_leading;
pub use conv::{
    conv2d_nhwc, conv2d_nhwc_input_grad, conv2d_nhwc_input_grad_masked, conv2d_nhwc_weight_grad,
};
pub use layout::{to_nchw, to_nhwc};
pub use pool::{max_pool2x2_nhwc, max_pool2x2_nhwc_backward, max_pool2x2_nhwc_gather};
pub use relu::{relu, relu_backward};

/// f32 or f64, the element types these kernels run on.
pub(crate) trait Float:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::AddAssign
    + 'static
{
    const ONE: Self;
    /// `max(self, 0)` (branch-free, so loops of it vectorise).
    fn relu(self) -> Self;
    /// Runs `f` on this thread's scratch buffer of at least `n` elements (contents unspecified), reused
    /// across calls so that im2col buffers are neither allocated nor zeroed per call.
    fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

macro_rules! float_impl {
    ($t:ty) => {
        impl Float for $t {
            const ONE: Self = 1.0;
            #[inline]
            fn relu(self) -> Self {
                self.max(0.0)
            }
            fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                thread_local! {
                    static SCRATCH: std::cell::RefCell<Vec<$t>> = const { std::cell::RefCell::new(Vec::new()) };
                }
                SCRATCH.with(|cell| {
                    // A nested call (none today) gets its own buffer instead of a borrow panic.
                    match cell.try_borrow_mut() {
                        Ok(mut buf) => {
                            if buf.len() < n {
                                buf.resize(n, 0.0);
                            }
                            f(&mut buf[..n])
                        }
                        Err(_) => f(&mut vec![0.0; n]),
                    }
                })
            }
        }
    };
}
float_impl!(f32);
float_impl!(f64);

/// The slice of a storage a contiguous layout covers (an error naming `name` otherwise).
pub(crate) fn contiguous<'a, T>(v: &'a [T], l: &Layout, name: &str) -> Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{name}: input must be contiguous")))?;
    Ok(&v[a..b])
}

/// Runs a kernel on two contiguous storages of one float dtype (`f32k` or `f64k`, the same kernel
/// instantiated twice).
pub(crate) fn binary_storage(
    name: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f32k: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
    f64k: impl FnOnce(&[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    Ok(match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            CpuStorage::F32(f32k(contiguous(a, l1, name)?, contiguous(b, l2, name)?))
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            CpuStorage::F64(f64k(contiguous(a, l1, name)?, contiguous(b, l2, name)?))
        }
        _ => candle_core::bail!("{name}: f32 or f64 inputs of one dtype only"),
    })
}

/// The four dimensions of a layout (an error naming `name` otherwise).
pub(crate) fn dims4(l: &Layout, name: &str) -> Result<(usize, usize, usize, usize)> {
    l.shape().dims4().map_err(|_| {
        candle_core::Error::Msg(format!("{name}: expected 4 dims, got {:?}", l.dims()))
    })
}
