//! ReLU and its backward (a mask by the output's sign) as one op each, each the other's derivative.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{Float, binary_storage};

/// `x·[r > 0]` for tensors of one shape.
#[derive(Clone, Copy, Debug)]
struct MaskPositive;

fn mask_positive<T: Float>(g: &[T], r: &[T]) -> Vec<T> {
    g.par_iter()
        .zip(r)
        .with_min_len(1 << 12)
        .map(|(g, r)| if *r > T::default() { *g } else { T::default() })
        .collect()
}

impl CustomOp2 for MaskPositive {
    fn name(&self) -> &'static str {
        "sgr-mask-positive"
    }
    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        sr: &CpuStorage,
        lr: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if lg.dims() != lr.dims() {
            candle_core::bail!(
                "{}: shapes {:?} and {:?} differ",
                self.name(),
                lg.dims(),
                lr.dims()
            );
        }
        let out = binary_storage(
            self.name(),
            (sg, lg),
            (sr, lr),
            mask_positive,
            mask_positive,
        )?;
        Ok((out, lg.shape().clone()))
    }
    fn bwd(
        &self,
        _g: &Tensor,
        r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Linear in g; piecewise constant in r (zero derivative almost everywhere, as autograd's ReLU).
        Ok((Some(relu_backward(grad, r)?), None))
    }
}

/// ReLU as one op whose backward is one op ([`relu_backward`]). Any shape; CPU only.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.apply_op2(&x, MaskPositive)
}

/// ReLU's backward: `grad·[r > 0]`, where `r` is the ReLU's output (or its input). Differentiable in `grad`.
pub fn relu_backward(grad: &Tensor, r: &Tensor) -> Result<Tensor> {
    grad.contiguous()?.apply_op2(&r.contiguous()?, MaskPositive)
}
