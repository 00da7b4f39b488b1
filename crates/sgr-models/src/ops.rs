//! Faster CPU convolutions for training and attacks, exact to any order of differentiation.
//!
//! A valid (unpadded, stride-1) convolution is written as `unfold` (im2col), a matrix product with the
//! kernel, and a permutation. `unfold` and its adjoint `fold` (col2im, a scatter-add) are custom ops whose
//! backward passes are each other, and everything else is candle's `matmul`, whose forward and backward run on
//! the `gemm` crate. Candle's own CPU convolution backward (`conv_transpose2d` for input gradients, convolutions
//! for kernel gradients) runs naive loops and dominated training and attack steps.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// im2col for a valid `k × k` convolution of `(B, C, H, W)`: `(B, OH·OW, C·k·k)` with `OH = H − k + 1`.
#[derive(Clone, Copy, Debug)]
struct Unfold {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
}

/// col2im, the adjoint of [`Unfold`]: `(B, OH·OW, C·k·k)` → `(B, C, H, W)`, summing overlapping entries.
#[derive(Clone, Copy, Debug)]
struct Fold {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
}

fn contiguous<'a, T>(v: &'a [T], l: &Layout, name: &str) -> Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{name}: input must be contiguous")))?;
    Ok(&v[a..b])
}

fn unfold_into<T: Copy + Send + Sync + Default>(
    x: &[T],
    (c, h, w, k): (usize, usize, usize, usize),
) -> Vec<T> {
    let (oh, ow) = (h + 1 - k, w + 1 - k);
    let ckk = c * k * k;
    let per_in = c * h * w;
    let per_out = oh * ow * ckk;
    let b = x.len() / per_in;
    let mut out = vec![T::default(); b * per_out];
    out.par_chunks_mut(per_out)
        .zip(x.par_chunks(per_in))
        .for_each(|(o, img)| {
            for i in 0..oh {
                for j in 0..ow {
                    let row = &mut o[(i * ow + j) * ckk..(i * ow + j + 1) * ckk];
                    let mut q = 0;
                    for ch in 0..c {
                        for di in 0..k {
                            let src = &img
                                [ch * h * w + (i + di) * w + j..ch * h * w + (i + di) * w + j + k];
                            row[q..q + k].copy_from_slice(src);
                            q += k;
                        }
                    }
                }
            }
        });
    out
}

fn fold_into<T: Copy + Send + Sync + Default + std::ops::AddAssign>(
    cols: &[T],
    (c, h, w, k): (usize, usize, usize, usize),
) -> Vec<T> {
    let (oh, ow) = (h + 1 - k, w + 1 - k);
    let ckk = c * k * k;
    let per_in = oh * ow * ckk;
    let per_out = c * h * w;
    let b = cols.len() / per_in;
    let mut out = vec![T::default(); b * per_out];
    out.par_chunks_mut(per_out)
        .zip(cols.par_chunks(per_in))
        .for_each(|(img, o)| {
            for i in 0..oh {
                for j in 0..ow {
                    let row = &o[(i * ow + j) * ckk..(i * ow + j + 1) * ckk];
                    let mut q = 0;
                    for ch in 0..c {
                        for di in 0..k {
                            let dst = &mut img
                                [ch * h * w + (i + di) * w + j..ch * h * w + (i + di) * w + j + k];
                            for (d, s) in dst.iter_mut().zip(&row[q..q + k]) {
                                *d += *s;
                            }
                            q += k;
                        }
                    }
                }
            }
        });
    out
}

impl CustomOp1 for Unfold {
    fn name(&self) -> &'static str {
        "sgr-unfold"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let b = dims[0];
        let geom = (self.c, self.h, self.w, self.k);
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(unfold_into(contiguous(v, l, "unfold")?, geom)),
            CpuStorage::F64(v) => CpuStorage::F64(unfold_into(contiguous(v, l, "unfold")?, geom)),
            _ => candle_core::bail!("sgr-unfold: f32 or f64 only"),
        };
        let (oh, ow) = (self.h + 1 - self.k, self.w + 1 - self.k);
        Ok((out, Shape::from((b, oh * ow, self.c * self.k * self.k))))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let f = Fold {
            c: self.c,
            h: self.h,
            w: self.w,
            k: self.k,
        };
        Ok(Some(grad.contiguous()?.apply_op1(f)?))
    }
}

impl CustomOp1 for Fold {
    fn name(&self) -> &'static str {
        "sgr-fold"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let b = l.dims()[0];
        let geom = (self.c, self.h, self.w, self.k);
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(fold_into(contiguous(v, l, "fold")?, geom)),
            CpuStorage::F64(v) => CpuStorage::F64(fold_into(contiguous(v, l, "fold")?, geom)),
            _ => candle_core::bail!("sgr-fold: f32 or f64 only"),
        };
        Ok((out, Shape::from((b, self.c, self.h, self.w))))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let u = Unfold {
            c: self.c,
            h: self.h,
            w: self.w,
            k: self.k,
        };
        Ok(Some(grad.contiguous()?.apply_op1(u)?))
    }
}

/// Valid, stride-1 2-D convolution (cross-correlation, PyTorch semantics) of `x` `(B, C, H, W)` with `weight`
/// `(O, C, k, k)` plus `bias` `(O,)`, as unfold + matmul. Same numbers as `Tensor::conv2d` up to summation
/// order; gradients of any order through `x`, `weight` and `bias`. CPU only.
pub fn conv2d_valid(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, c2, k, k2) = weight.dims4()?;
    if c != c2 || k != k2 || k > h || k > w {
        candle_core::bail!(
            "conv2d_valid: input {:?} and kernel {:?} do not match",
            x.dims(),
            weight.dims()
        );
    }
    let (oh, ow) = (h + 1 - k, w + 1 - k);
    let cols = x.contiguous()?.apply_op1(Unfold { c, h, w, k })?; // (B, L, Ckk)
    let wmat = weight.reshape((o, c * k * k))?.t()?; // (Ckk, O)
    let out = cols
        .reshape((b * oh * ow, c * k * k))?
        .matmul(&wmat)?
        .reshape((b, oh * ow, o))?;
    let out = match bias {
        Some(bias) => out.broadcast_add(bias)?,
        None => out,
    };
    out.transpose(1, 2)?.reshape((b, o, oh, ow))
}

/// The input gradient of [`conv2d_valid`]: `dy` `(B, O, OH, OW)` back to `(B, C, H, W)` through `weight`
/// `(O, C, k, k)`, as a matrix product and `fold`. Built from differentiable ops, so it is itself
/// differentiable in `dy` and in `weight` (what double backprop needs). CPU only.
pub fn conv2d_valid_input_grad(
    dy: &Tensor,
    weight: &Tensor,
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let (b, o, oh, ow) = dy.dims4()?;
    let (o2, c, k, _) = weight.dims4()?;
    if o != o2 || oh + k - 1 != h || ow + k - 1 != w {
        candle_core::bail!(
            "conv2d_valid_input_grad: gradient {:?}, kernel {:?} and input size {h}x{w} do not match",
            dy.dims(),
            weight.dims()
        );
    }
    let dy = dy.flatten_from(2)?.transpose(1, 2)?.contiguous()?; // (B, L, O)
    let wmat = weight.reshape((o, c * k * k))?; // (O, Ckk)
    let cols = dy
        .reshape((b * oh * ow, o))?
        .matmul(&wmat)?
        .reshape((b, oh * ow, c * k * k))?;
    cols.apply_op1(Fold { c, h, w, k })
}
