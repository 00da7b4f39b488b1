//! The fused convolution and its input- and weight-gradient ops (im2col + one gemm per chunk of images), closed
//! under differentiation.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::relu::{relu, relu_backward};
use super::{Float, binary_storage, contiguous, dims4};

/// Geometry of a valid, stride-1, `k × k` convolution on `(B, H, W, C)` images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geom {
    h: usize,
    w: usize,
    c: usize,
    k: usize,
}

impl Geom {
    fn oh(&self) -> usize {
        self.h + 1 - self.k
    }
    fn ow(&self) -> usize {
        self.w + 1 - self.k
    }
    /// Output positions per image.
    fn l(&self) -> usize {
        self.oh() * self.ow()
    }
    /// Columns of the im2col matrix: `k·k·C` in `(di, dj, c)` order.
    fn kk(&self) -> usize {
        self.k * self.k * self.c
    }
    fn image(&self) -> usize {
        self.h * self.w * self.c
    }
    /// Images per work item of a batch of `b`: enough to give `gemm` a tall matrix, few enough for the
    /// im2col buffer to stay in the L2 cache (256 K elements) and for the batch to split into at least
    /// eight items (load balance). Depends only on the shapes, so results do not depend on the number of
    /// threads.
    fn chunk(&self, b: usize) -> usize {
        ((1 << 18) / (self.l() * self.kk()).max(1))
            .min(b.div_ceil(8))
            .max(1)
    }
}

/// im2col of consecutive images `x` (`n` images) into `cols` (`n·L × kk`).
fn unfold<T: Float>(x: &[T], g: Geom, cols: &mut [T]) {
    let (ow, kk, rowlen) = (g.ow(), g.kk(), g.k * g.c);
    for (img, out) in x.chunks(g.image()).zip(cols.chunks_mut(g.l() * kk)) {
        for i in 0..g.oh() {
            for j in 0..ow {
                let row = &mut out[(i * ow + j) * kk..(i * ow + j + 1) * kk];
                for di in 0..g.k {
                    let src = ((i + di) * g.w + j) * g.c;
                    row[di * rowlen..(di + 1) * rowlen].copy_from_slice(&img[src..src + rowlen]);
                }
            }
        }
    }
}

/// col2im, the adjoint of [`unfold`]: adds `cols` (`n·L × kk`) into the zeroed images `x`.
fn fold<T: Float>(cols: &[T], g: Geom, x: &mut [T]) {
    let (ow, kk, rowlen) = (g.ow(), g.kk(), g.k * g.c);
    for (img, col) in x.chunks_mut(g.image()).zip(cols.chunks(g.l() * kk)) {
        img.fill(T::default());
        for i in 0..g.oh() {
            for j in 0..ow {
                let row = &col[(i * ow + j) * kk..(i * ow + j + 1) * kk];
                for di in 0..g.k {
                    let dst = ((i + di) * g.w + j) * g.c;
                    for (d, s) in img[dst..dst + rowlen]
                        .iter_mut()
                        .zip(&row[di * rowlen..(di + 1) * rowlen])
                    {
                        *d += *s;
                    }
                }
            }
        }
    }
}

/// `dst (m × n) = [dst +] a (m × k) · b (k × n)`, with explicit row/column strides, single-threaded.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    a: &[T],
    (a_rs, a_cs): (usize, usize),
    b: &[T],
    (b_rs, b_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= m * n, "gemm: destination too small");
    if k > 0 {
        assert!(
            (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
            "gemm: lhs too small"
        );
        assert!(
            (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
            "gemm: rhs too small"
        );
    }
    // SAFETY: the assertions above keep every index gemm reads or writes inside the slices (dst is row
    // major m × n), and the three slices cannot alias (one is borrowed mutably).
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `out (B·L × O) = relu?(unfold(x) · wmᵀ + bias)` with `wm` `(O, kk)`.
fn conv_fwd<T: Float>(x: &[T], wm: &[T], bias: Option<&[T]>, relu: bool, g: Geom) -> Vec<T> {
    let (l, kk) = (g.l(), g.kk());
    let o = wm.len() / kk;
    let b = x.len() / g.image();
    let n = g.chunk(b);
    let mut out = vec![T::default(); b * l * o];
    out.par_chunks_mut(n * l * o)
        .zip(x.par_chunks(n * g.image()))
        .for_each(|(out, x)| {
            let rows = out.len() / o;
            T::with_scratch(rows * kk, |cols| {
                unfold(x, g, cols);
                gemm((rows, o, kk), out, false, cols, (kk, 1), wm, (1, kk));
            });
            if let Some(bias) = bias {
                for row in out.chunks_mut(o) {
                    for (v, b) in row.iter_mut().zip(bias) {
                        *v += *b;
                    }
                }
            }
            if relu {
                for v in out.iter_mut() {
                    *v = v.relu();
                }
            }
        });
    out
}

/// `dx = fold(dy · wm)·[mask > 0]`: the convolution's input gradient, `dy` `(B·L × O)`, optionally followed by
/// the backward of the ReLU whose output `mask` (shaped like `dx`) entered the convolution.
fn conv_input_grad<T: Float>(dy: &[T], wm: &[T], mask: Option<&[T]>, g: Geom) -> Vec<T> {
    let (l, kk) = (g.l(), g.kk());
    let o = wm.len() / kk;
    let b = dy.len() / (l * o);
    let n = g.chunk(b);
    let mut dx = vec![T::default(); b * g.image()];
    dx.par_chunks_mut(n * g.image())
        .zip(dy.par_chunks(n * l * o))
        .enumerate()
        .for_each(|(i, (dx, dy))| {
            let rows = dy.len() / o;
            T::with_scratch(rows * kk, |cols| {
                gemm((rows, kk, o), cols, false, dy, (o, 1), wm, (kk, 1));
                fold(cols, g, dx);
            });
            if let Some(mask) = mask {
                let start = i * n * g.image();
                let mask = &mask[start..start + dx.len()];
                for (v, r) in dx.iter_mut().zip(mask) {
                    // Zero where the input was not positive (NaN included): one comparison in the hot loop.
                    #[allow(clippy::neg_cmp_op_on_partial_ord)]
                    if !(*r > T::default()) {
                        *v = T::default();
                    }
                }
            }
        });
    dx
}

/// `dW (O × kk) = Σ_b dy_bᵀ · unfold(x_b)`: the convolution's weight gradient. The batch is split into at
/// most 16 tasks (in parallel), each accumulating its L2-sized chunks of images into one partial sum; the
/// partials are added in task order. Both splits depend only on the shapes (deterministic), and the final
/// sum stays short when a chunk is a single image (large layers).
fn conv_weight_grad<T: Float>(x: &[T], dy: &[T], o: usize, g: Geom) -> Vec<T> {
    let (l, kk) = (g.l(), g.kk());
    let b = x.len() / g.image();
    let n = g.chunk(b);
    let per_task = b.div_ceil(16).div_ceil(n) * n;
    let partials: Vec<Vec<T>> = x
        .par_chunks(per_task * g.image())
        .zip(dy.par_chunks(per_task * l * o))
        .map(|(x, dy)| {
            let mut acc = vec![T::default(); o * kk];
            for (i, (x, dy)) in x
                .chunks(n * g.image())
                .zip(dy.chunks(n * l * o))
                .enumerate()
            {
                let rows = dy.len() / o;
                T::with_scratch(rows * kk, |cols| {
                    unfold(x, g, cols);
                    gemm((o, kk, rows), &mut acc, i > 0, dy, (1, o), cols, (kk, 1));
                });
            }
            acc
        })
        .collect();
    let mut total = vec![T::default(); o * kk];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// `relu?(conv(x, wm) + bias)`; `x` `(B, H, W, C)`, `wm` `(O, k·k·C)`, `bias` `(O,)` → `(B, OH, OW, O)`.
#[derive(Clone, Copy, Debug)]
struct ConvBiasAct {
    k: usize,
    relu: bool,
}

/// `conv(x, wm)` without bias or activation (the derivatives of the other two convolution ops).
#[derive(Clone, Copy, Debug)]
struct Conv {
    k: usize,
}

/// `(dy, wm)` → `dx` `(B, H, W, C)`.
#[derive(Clone, Copy, Debug)]
struct ConvInputGrad {
    g: Geom,
}

/// `(x, dy)` → `dW` `(O, k·k·C)`.
#[derive(Clone, Copy, Debug)]
struct ConvWeightGrad {
    k: usize,
}

fn conv_geom(x: &Layout, k: usize, name: &str) -> Result<(usize, Geom)> {
    let (b, h, w, c) = dims4(x, name)?;
    if k == 0 || k > h || k > w {
        candle_core::bail!("{name}: kernel {k} does not fit images {h}x{w}");
    }
    Ok((b, Geom { h, w, c, k }))
}

/// An optional third operand (a bias, a mask) as a slice of the main input's dtype: `(f32, f64)` views, at
/// most one of them set.
#[allow(clippy::type_complexity)]
fn optional_operand<'a>(
    name: &str,
    what: &str,
    operand: Option<(&'a CpuStorage, &Layout)>,
    like: &CpuStorage,
) -> Result<(Option<&'a [f32]>, Option<&'a [f64]>)> {
    Ok(match (operand, like) {
        (None, _) => (None, None),
        (Some((CpuStorage::F32(v), l)), CpuStorage::F32(_)) => {
            (Some(contiguous(v, l, name)?), None)
        }
        (Some((CpuStorage::F64(v), l)), CpuStorage::F64(_)) => {
            (None, Some(contiguous(v, l, name)?))
        }
        (Some(_), _) => candle_core::bail!("{name}: {what} dtype differs"),
    })
}

fn run_conv(
    k: usize,
    relu: bool,
    name: &str,
    (sx, lx): (&CpuStorage, &Layout),
    (sw, lw): (&CpuStorage, &Layout),
    bias: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let (b, g) = conv_geom(lx, k, name)?;
    let (o, kk) = lw.shape().dims2()?;
    if kk != g.kk() {
        candle_core::bail!(
            "{name}: weight {:?} does not match input {:?}",
            lw.dims(),
            lx.dims()
        );
    }
    let (b32, b64) = optional_operand(name, "bias", bias, sx)?;
    let out = binary_storage(
        name,
        (sx, lx),
        (sw, lw),
        |x, w| conv_fwd(x, w, b32, relu, g),
        |x, w| conv_fwd(x, w, b64, relu, g),
    )?;
    Ok((out, Shape::from((b, g.oh(), g.ow(), o))))
}

/// Shared backward of the convolution: `gp` is the gradient at the pre-activation, `(B, OH, OW, O)`.
/// Gradients are computed only for the arguments that are part of a graph (a frozen model's weights, or the
/// data entering the first layer, get none).
fn conv_bwd(
    x: &Tensor,
    wm: &Tensor,
    gp: &Tensor,
    k: usize,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (_, h, w, c) = x.dims4()?;
    let gp = gp.contiguous()?;
    let dx = x
        .track_op()
        .then(|| {
            gp.apply_op2(
                wm,
                ConvInputGrad {
                    g: Geom { h, w, c, k },
                },
            )
        })
        .transpose()?;
    let dw = wm
        .track_op()
        .then(|| x.apply_op2(&gp, ConvWeightGrad { k }))
        .transpose()?;
    Ok((dx, dw))
}

/// Sums over every dimension but the last, `(…, O)` → `(O,)`, as one product with a row of ones (candle's
/// reduction over leading dimensions is slow); differentiable.
pub(crate) fn sum_leading(t: &Tensor) -> Result<Tensor> {
    let o = t.dim(candle_core::D::Minus1)?;
    let n = t.elem_count() / o.max(1);
    Tensor::ones((1, n), t.dtype(), t.device())?
        .matmul(&t.reshape((n, o))?)?
        .reshape(o)
}

impl CustomOp3 for ConvBiasAct {
    fn name(&self) -> &'static str {
        "sgr-conv-bias-act"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        run_conv(
            self.k,
            self.relu,
            self.name(),
            (sx, lx),
            (sw, lw),
            Some((sb, lb)),
        )
    }
    fn bwd(
        &self,
        x: &Tensor,
        wm: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gp = if self.relu {
            relu_backward(grad, res)?
        } else {
            grad.clone()
        };
        let (dx, dw) = conv_bwd(x, wm, &gp, self.k)?;
        let db = bias.track_op().then(|| sum_leading(&gp)).transpose()?;
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "sgr-conv"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        run_conv(self.k, false, self.name(), (sx, lx), (sw, lw), None)
    }
    fn bwd(
        &self,
        x: &Tensor,
        wm: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        conv_bwd(x, wm, grad, self.k)
    }
}

fn run_input_grad(
    g: Geom,
    name: &str,
    (sd, ld): (&CpuStorage, &Layout),
    (sw, lw): (&CpuStorage, &Layout),
    mask: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let (b, oh, ow, o) = dims4(ld, name)?;
    if (oh, ow) != (g.oh(), g.ow()) || lw.dims() != [o, g.kk()] {
        candle_core::bail!(
            "{name}: gradient {:?} and weight {:?} do not match images {}x{}x{}",
            ld.dims(),
            lw.dims(),
            g.h,
            g.w,
            g.c
        );
    }
    let shape = Shape::from((b, g.h, g.w, g.c));
    if let Some((_, lm)) = mask
        && lm.dims() != shape.dims()
    {
        candle_core::bail!("{name}: mask {:?} is not {:?}", lm.dims(), shape.dims());
    }
    let (m32, m64) = optional_operand(name, "mask", mask, sd)?;
    let out = binary_storage(
        name,
        (sd, ld),
        (sw, lw),
        |d, w| conv_input_grad(d, w, m32, g),
        |d, w| conv_input_grad(d, w, m64, g),
    )?;
    Ok((out, shape))
}

/// Backward of the input-gradient op for the incoming gradient `grad` (already masked where a mask applies).
fn input_grad_bwd(
    dy: &Tensor,
    wm: &Tensor,
    grad: &Tensor,
    k: usize,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    // ⟨G, fold(dy·wm)⟩ = ⟨unfold(G)·wmᵀ, dy⟩ = ⟨wm, dyᵀ·unfold(G)⟩.
    let grad = grad.contiguous()?;
    let d_dy = dy
        .track_op()
        .then(|| grad.apply_op2(wm, Conv { k }))
        .transpose()?;
    let d_wm = wm
        .track_op()
        .then(|| grad.apply_op2(&dy.contiguous()?, ConvWeightGrad { k }))
        .transpose()?;
    Ok((d_dy, d_wm))
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "sgr-conv-input-grad"
    }
    fn cpu_fwd(
        &self,
        sd: &CpuStorage,
        ld: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        run_input_grad(self.g, self.name(), (sd, ld), (sw, lw), None)
    }
    fn bwd(
        &self,
        dy: &Tensor,
        wm: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        input_grad_bwd(dy, wm, grad, self.g.k)
    }
}

/// `(dy, wm, r)` → `fold(dy·wm)·[r > 0]`: the input gradient followed by the backward of the ReLU whose output
/// `r` was the convolution's input (one op instead of two in the explicit reverse pass).
#[derive(Clone, Copy, Debug)]
struct ConvInputGradMasked {
    g: Geom,
}

impl CustomOp3 for ConvInputGradMasked {
    fn name(&self) -> &'static str {
        "sgr-conv-input-grad-masked"
    }
    fn cpu_fwd(
        &self,
        sd: &CpuStorage,
        ld: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sr: &CpuStorage,
        lr: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        run_input_grad(self.g, self.name(), (sd, ld), (sw, lw), Some((sr, lr)))
    }
    fn bwd(
        &self,
        dy: &Tensor,
        wm: &Tensor,
        r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Linear in dy and wm after the constant mask; piecewise constant in r.
        let (d_dy, d_wm) = input_grad_bwd(dy, wm, &relu_backward(grad, r)?, self.g.k)?;
        Ok((d_dy, d_wm, None))
    }
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "sgr-conv-weight-grad"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sd: &CpuStorage,
        ld: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, g) = conv_geom(lx, self.k, self.name())?;
        let (b2, oh, ow, o) = dims4(ld, self.name())?;
        if b != b2 || (oh, ow) != (g.oh(), g.ow()) {
            candle_core::bail!(
                "{}: input {:?} and gradient {:?} do not match",
                self.name(),
                lx.dims(),
                ld.dims()
            );
        }
        let out = binary_storage(
            self.name(),
            (sx, lx),
            (sd, ld),
            |x, d| conv_weight_grad(x, d, o, g),
            |x, d| conv_weight_grad(x, d, o, g),
        )?;
        Ok((out, Shape::from((o, g.kk()))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        dy: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // ⟨G, dyᵀ·unfold(x)⟩ = ⟨fold(dy·G), x⟩ = ⟨unfold(x)·Gᵀ, dy⟩.
        let (_, h, w, c) = x.dims4()?;
        let grad = grad.contiguous()?;
        let d_x = x
            .track_op()
            .then(|| {
                dy.contiguous()?.apply_op2(
                    &grad,
                    ConvInputGrad {
                        g: Geom { h, w, c, k: self.k },
                    },
                )
            })
            .transpose()?;
        let d_dy = dy
            .track_op()
            .then(|| x.apply_op2(&grad, Conv { k: self.k }))
            .transpose()?;
        Ok((d_x, d_dy))
    }
}

/// The convolution's weight `(O, C, k, k)` (PyTorch's layout) as the `(O, k·k·C)` matrix of the NHWC ops.
fn weight_matrix(weight: &Tensor) -> Result<Tensor> {
    let (o, c, k, k2) = weight.dims4()?;
    if k != k2 {
        candle_core::bail!("conv2d_nhwc: kernel {:?} is not square", weight.dims());
    }
    weight
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((o, k * k * c))
}

fn check_conv(x: &Tensor, weight: &Tensor, name: &str) -> Result<usize> {
    let (_, h, w, c) = x.dims4()?;
    let (_, c2, k, k2) = weight.dims4()?;
    if c != c2 || k != k2 || k > h || k > w {
        candle_core::bail!(
            "{name}: input {:?} (B, H, W, C) and kernel {:?} (O, C, k, k) do not match",
            x.dims(),
            weight.dims()
        );
    }
    Ok(k)
}

/// Valid, stride-1 2-D convolution (cross-correlation, PyTorch semantics) of channels-last `x` `(B, H, W, C)`
/// with `weight` `(O, C, k, k)` (PyTorch's layout), plus `bias` `(O,)`, then ReLU if `relu`: `(B, OH, OW, O)`.
/// Gradients of any order through `x`, `weight` and `bias`. CPU only.
pub fn conv2d_nhwc(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let k = check_conv(x, weight, "conv2d_nhwc")?;
    let x = x.contiguous()?;
    let wm = weight_matrix(weight)?;
    match bias {
        Some(bias) => {
            if bias.dims() != [weight.dim(0)?] {
                candle_core::bail!(
                    "conv2d_nhwc: bias {:?} does not match kernel {:?}",
                    bias.dims(),
                    weight.dims()
                );
            }
            x.apply_op3(&wm, &bias.contiguous()?, ConvBiasAct { k, relu })
        }
        None => {
            let out = x.apply_op2(&wm, Conv { k })?;
            if relu { self::relu(&out) } else { Ok(out) }
        }
    }
}

/// The input gradient of [`conv2d_nhwc`] (before bias and ReLU): `dy` `(B, OH, OW, O)` back to
/// `(B, H, W, C)` through `weight` `(O, C, k, k)`. Differentiable in `dy` and `weight` to any order.
pub fn conv2d_nhwc_input_grad(
    dy: &Tensor,
    weight: &Tensor,
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let (_, oh, ow, o) = dy.dims4()?;
    let (o2, c, k, k2) = weight.dims4()?;
    if o != o2 || k != k2 || oh + k - 1 != h || ow + k - 1 != w {
        candle_core::bail!(
            "conv2d_nhwc_input_grad: gradient {:?}, kernel {:?} and input size {h}x{w} do not match",
            dy.dims(),
            weight.dims()
        );
    }
    dy.contiguous()?.apply_op2(
        &weight_matrix(weight)?,
        ConvInputGrad {
            g: Geom { h, w, c, k },
        },
    )
}

/// `relu_backward(conv2d_nhwc_input_grad(dy, weight, (H, W)), r)` in one op, where `r` `(B, H, W, C)` is the
/// ReLU output that entered the convolution. Differentiable in `dy` and `weight` to any order.
pub fn conv2d_nhwc_input_grad_masked(dy: &Tensor, weight: &Tensor, r: &Tensor) -> Result<Tensor> {
    let (_, h, w, c) = r.dims4()?;
    let (_, oh, ow, o) = dy.dims4()?;
    let (o2, c2, k, k2) = weight.dims4()?;
    if o != o2 || c != c2 || k != k2 || oh + k - 1 != h || ow + k - 1 != w {
        candle_core::bail!(
            "conv2d_nhwc_input_grad_masked: gradient {:?}, kernel {:?} and mask {:?} do not match",
            dy.dims(),
            weight.dims(),
            r.dims()
        );
    }
    dy.contiguous()?.apply_op3(
        &weight_matrix(weight)?,
        &r.contiguous()?,
        ConvInputGradMasked {
            g: Geom { h, w, c, k },
        },
    )
}

/// The weight gradient of [`conv2d_nhwc`] (before bias and ReLU): `Σ_b dy_bᵀ · unfold(x_b)` for `x`
/// `(B, H, W, C)` and `dy` `(B, OH, OW, O)`, as `(O, C, k, k)` in PyTorch's layout. Differentiable in `x` and
/// `dy` to any order.
pub fn conv2d_nhwc_weight_grad(x: &Tensor, dy: &Tensor, k: usize) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (b2, oh, ow, o) = dy.dims4()?;
    if b != b2 || k == 0 || k > h || k > w || oh + k - 1 != h || ow + k - 1 != w {
        candle_core::bail!(
            "conv2d_nhwc_weight_grad: input {:?}, gradient {:?} and kernel size {k} do not match",
            x.dims(),
            dy.dims()
        );
    }
    x.contiguous()?
        .apply_op2(&dy.contiguous()?, ConvWeightGrad { k })?
        .reshape((o, k, k, c))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}
