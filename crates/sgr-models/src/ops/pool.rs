//! 2×2 max-pooling: a gather at each window's first arg-max and its scatter adjoint.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{Float, binary_storage, dims4};

/// For each 2×2 window of `x` `(B, H, W, C)`: `g` at the window's first arg-max (row-major), `(B, H/2, W/2, C)`.
#[derive(Clone, Copy, Debug)]
struct PoolGather;

/// The adjoint of [`PoolGather`]: `g` `(B, H/2, W/2, C)` placed at the arg-max of each window of `x`
/// `(B, H, W, C)`, zero elsewhere (odd trailing rows and columns included).
#[derive(Clone, Copy, Debug)]
struct PoolScatter;

/// Which of the four values is the first maximum (row-major window order, strict comparisons), as
/// branch-free selects so that loops over channels vectorise.
#[inline(always)]
fn first_argmax4<T: Float>(a: T, b: T, c: T, d: T) -> (bool, bool, bool) {
    // Later positions win only when strictly greater than every earlier one.
    let m_ab = if b > a { b } else { a };
    let pick_b = b > a;
    let pick_c = c > m_ab;
    let m_abc = if pick_c { c } else { m_ab };
    let pick_d = d > m_abc;
    (pick_b, pick_c, pick_d)
}

/// The four channel rows of window `(i, j)` of one image `(H, W, C)`: offsets of `(2i, 2j)`, `(2i, 2j+1)`,
/// `(2i+1, 2j)`, `(2i+1, 2j+1)`.
#[inline(always)]
fn window_offsets((w, c): (usize, usize), (i, j): (usize, usize)) -> [usize; 4] {
    let base = (2 * i * w + 2 * j) * c;
    [base, base + c, base + w * c, base + w * c + c]
}

fn pool_gather<T: Float>(g: &[T], x: &[T], (h, w, c): (usize, usize, usize)) -> Vec<T> {
    let (h2, w2) = (h / 2, w / 2);
    let b = x.len() / (h * w * c);
    let mut out = vec![T::default(); b * h2 * w2 * c];
    // Max-pooling itself (g is x): the value at the first arg-max is the maximum.
    let same = std::ptr::eq(g, x);
    out.par_chunks_mut(h2 * w2 * c)
        .zip(g.par_chunks(h * w * c).zip(x.par_chunks(h * w * c)))
        .for_each(|(o, (g, x))| {
            for i in 0..h2 {
                for j in 0..w2 {
                    let [p0, p1, p2, p3] = window_offsets((w, c), (i, j));
                    let o = &mut o[(i * w2 + j) * c..(i * w2 + j + 1) * c];
                    let (x0, x1, x2, x3) = (
                        &x[p0..p0 + c],
                        &x[p1..p1 + c],
                        &x[p2..p2 + c],
                        &x[p3..p3 + c],
                    );
                    if same {
                        for ch in 0..c {
                            let m = if x1[ch] > x0[ch] { x1[ch] } else { x0[ch] };
                            let m = if x2[ch] > m { x2[ch] } else { m };
                            o[ch] = if x3[ch] > m { x3[ch] } else { m };
                        }
                        continue;
                    }
                    let (g0, g1, g2, g3) = (
                        &g[p0..p0 + c],
                        &g[p1..p1 + c],
                        &g[p2..p2 + c],
                        &g[p3..p3 + c],
                    );
                    for ch in 0..c {
                        let (pb, pc, pd) = first_argmax4(x0[ch], x1[ch], x2[ch], x3[ch]);
                        let v = if pb { g1[ch] } else { g0[ch] };
                        let v = if pc { g2[ch] } else { v };
                        o[ch] = if pd { g3[ch] } else { v };
                    }
                }
            }
        });
    out
}

fn pool_scatter<T: Float>(g: &[T], x: &[T], (h, w, c): (usize, usize, usize)) -> Vec<T> {
    let (h2, w2) = (h / 2, w / 2);
    let mut out = vec![T::default(); x.len()];
    let zero = T::default();
    out.par_chunks_mut(h * w * c)
        .zip(g.par_chunks(h2 * w2 * c).zip(x.par_chunks(h * w * c)))
        .for_each(|(o, (g, x))| {
            for i in 0..h2 {
                for j in 0..w2 {
                    let [p0, p1, p2, p3] = window_offsets((w, c), (i, j));
                    let g = &g[(i * w2 + j) * c..(i * w2 + j + 1) * c];
                    for ch in 0..c {
                        let (pb, pc, pd) =
                            first_argmax4(x[p0 + ch], x[p1 + ch], x[p2 + ch], x[p3 + ch]);
                        // Exactly one of the four positions: the last window position that won.
                        let (w3, w2_, w1) = (pd, pc && !pd, pb && !pc && !pd);
                        let w0 = !(pb || pc || pd);
                        o[p0 + ch] = if w0 { g[ch] } else { zero };
                        o[p1 + ch] = if w1 { g[ch] } else { zero };
                        o[p2 + ch] = if w2_ { g[ch] } else { zero };
                        o[p3 + ch] = if w3 { g[ch] } else { zero };
                    }
                }
            }
        });
    out
}

fn pool_shapes(
    name: &str,
    lg: &Layout,
    lx: &Layout,
    gather: bool,
) -> Result<(usize, usize, usize)> {
    let (b, h, w, c) = dims4(lx, name)?;
    let (b2, gh, gw, c2) = dims4(lg, name)?;
    let want = if gather { (h, w) } else { (h / 2, w / 2) };
    if b != b2 || c != c2 || (gh, gw) != want || h < 2 || w < 2 {
        candle_core::bail!(
            "{name}: shapes {:?} and {:?} do not match",
            lg.dims(),
            lx.dims()
        );
    }
    Ok((h, w, c))
}

macro_rules! pool_op {
    ($op:ident, $name:literal, $kernel:ident, $gather:expr, $adjoint:ident) => {
        impl CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                sg: &CpuStorage,
                lg: &Layout,
                sx: &CpuStorage,
                lx: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                let (h, w, c) = pool_shapes(self.name(), lg, lx, $gather)?;
                let b = lx.dims()[0];
                let out = binary_storage(
                    self.name(),
                    (sg, lg),
                    (sx, lx),
                    |g, x| $kernel(g, x, (h, w, c)),
                    |g, x| $kernel(g, x, (h, w, c)),
                )?;
                let shape = if $gather {
                    Shape::from((b, h / 2, w / 2, c))
                } else {
                    Shape::from((b, h, w, c))
                };
                Ok((out, shape))
            }
            fn bwd(
                &self,
                _g: &Tensor,
                x: &Tensor,
                _res: &Tensor,
                grad: &Tensor,
            ) -> Result<(Option<Tensor>, Option<Tensor>)> {
                // Linear in g; the arg-max positions are piecewise constant in x.
                Ok((Some(grad.contiguous()?.apply_op2(x, $adjoint)?), None))
            }
        }
    };
}

pool_op!(
    PoolGather,
    "sgr-pool-gather",
    pool_gather,
    true,
    PoolScatter
);
pool_op!(
    PoolScatter,
    "sgr-pool-scatter",
    pool_scatter,
    false,
    PoolGather
);

/// 2×2 max-pooling with stride 2 on channels-last `(B, H, W, C)`, flooring odd sizes. Gradients of any order
/// (to the first arg-max of each window). CPU only.
pub fn max_pool2x2_nhwc(x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.apply_op2(&x, PoolGather)
}

/// The backward of [`max_pool2x2_nhwc`]: `grad` `(B, H/2, W/2, C)` routed to the arg-max positions of the
/// pooled input `x` `(B, H, W, C)`. Differentiable in `grad`.
pub fn max_pool2x2_nhwc_backward(grad: &Tensor, x: &Tensor) -> Result<Tensor> {
    grad.contiguous()?.apply_op2(&x.contiguous()?, PoolScatter)
}

/// `g` `(B, H, W, C)` read at the arg-max of each 2×2 window of `x` `(B, H, W, C)`: `(B, H/2, W/2, C)` (the
/// adjoint of [`max_pool2x2_nhwc_backward`]; `max_pool2x2_nhwc(x)` is the case `g = x`).
pub fn max_pool2x2_nhwc_gather(g: &Tensor, x: &Tensor) -> Result<Tensor> {
    if g.dims() != x.dims() {
        candle_core::bail!(
            "max_pool2x2_nhwc_gather: shapes {:?} and {:?} differ",
            g.dims(),
            x.dims()
        );
    }
    g.contiguous()?.apply_op2(&x.contiguous()?, PoolGather)
}
