//! Displacement sums of perturbation batches: `T_{ab}(δ) = Σ_batch Σ_p a(p) b(p + δ)` over valid positions,
//! direct for small displacement boxes, through FFTs for large ones.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use rustfft::num_complex::Complex64;

use crate::error::{CovError, Result};
use crate::fft::{Plan2d, fast_len};
use crate::kernel::ChannelStructure;
use crate::plan::{CpuPath, CpuPlan};
use crate::repr::{batch_shape, check_finite};

/// A batch of images as f64 planes: `(B, C, H, W)`.
pub(crate) struct Planes {
    pub b: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f64>,
}

impl Planes {
    pub fn from_tensor(xi: &Tensor) -> Result<Self> {
        let (c, h, w) = batch_shape(xi)?;
        let b = xi.dim(0)?;
        if b == 0 {
            return Err(CovError::Invalid("an empty batch of perturbations".into()));
        }
        let x = xi.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
        check_finite(&x, "the perturbations ξ")?;
        let data = x.flatten_all()?.to_vec1::<f64>()?;
        Ok(Self { b, c, h, w, data })
    }

    pub fn plane(&self, b: usize, c: usize) -> &[f64] {
        let hw = self.h * self.w;
        &self.data[(b * self.c + c) * hw..(b * self.c + c + 1) * hw]
    }
}

/// Number of position pairs at displacement `(dy, dx)` in one `h × w` plane.
pub(crate) fn pair_count(h: usize, w: usize, dy: i64, dx: i64) -> f64 {
    ((h as i64 - dy.abs()).max(0) * (w as i64 - dx.abs()).max(0)) as f64
}

/// Sums `T(δ)` for a list of plane pairs, as a `(2ry+1) × (2rx+1)` table.
fn pair_sums(pairs: &[(&[f64], &[f64])], h: usize, w: usize, ry: usize, rx: usize) -> Vec<f64> {
    let (kh, kw) = (2 * ry + 1, 2 * rx + 1);
    let (ny, nx) = (fast_len(h + ry), fast_len(w + rx));
    let n = (ny * nx) as f64;
    // Operation counts: three transforms of ~5·n·log₂n flops per pair, against 2 flops per tap and pixel.
    let fft_cost = 3.0 * 5.0 * n * n.log2();
    let direct_cost = 2.0 * (kh * kw * h * w) as f64;
    if CpuPlan::cheaper(direct_cost, fft_cost, (ny, nx)).path == CpuPath::Fft {
        let plan = Plan2d::new(ny, nx);
        let acc = pairs
            .par_iter()
            .fold(
                || vec![Complex64::new(0.0, 0.0); ny * nx],
                |mut acc, (a, b)| {
                    let fa = plan.forward_real(a, h, w);
                    let fb = plan.forward_real(b, h, w);
                    for k in 0..acc.len() {
                        acc[k] += fa[k].conj() * fb[k];
                    }
                    acc
                },
            )
            .reduce(
                || vec![Complex64::new(0.0, 0.0); ny * nx],
                |mut x, y| {
                    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
                    x
                },
            );
        let mut acc = acc;
        plan.inverse(&mut acc);
        let mut out = vec![0f64; kh * kw];
        for dy in -(ry as i64)..=ry as i64 {
            for dx in -(rx as i64)..=rx as i64 {
                let (iy, ix) = (
                    dy.rem_euclid(ny as i64) as usize,
                    dx.rem_euclid(nx as i64) as usize,
                );
                out[(dy + ry as i64) as usize * kw + (dx + rx as i64) as usize] =
                    acc[iy * nx + ix].re;
            }
        }
        out
    } else {
        pairs
            .par_iter()
            .fold(
                || vec![0f64; kh * kw],
                |mut out, (a, b)| {
                    for dy in -(ry as i64)..=ry as i64 {
                        let (i0, i1) = ((-dy).max(0), (h as i64 - dy).min(h as i64));
                        for dx in -(rx as i64)..=rx as i64 {
                            let (j0, j1) = ((-dx).max(0), (w as i64 - dx).min(w as i64));
                            if j0 >= j1 {
                                continue;
                            }
                            let len = (j1 - j0) as usize;
                            let mut s = 0.0;
                            for i in i0..i1 {
                                let pa = (i * w as i64 + j0) as usize;
                                let pb = ((i + dy) * w as i64 + j0 + dx) as usize;
                                s += a[pa..pa + len]
                                    .iter()
                                    .zip(&b[pb..pb + len])
                                    .map(|(x, y)| x * y)
                                    .sum::<f64>();
                            }
                            out[(dy + ry as i64) as usize * kw + (dx + rx as i64) as usize] += s;
                        }
                    }
                    out
                },
            )
            .reduce(
                || vec![0f64; kh * kw],
                |mut x, y| {
                    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
                    x
                },
            )
    }
}

/// Displacement sums per kernel of a structure, with their pair counts:
/// IntraInter → `[intra, inter]` (sums over equal / different channel pairs); Full → `C·C` tables.
pub(crate) fn displacement_sums(
    p: &Planes,
    ry: usize,
    rx: usize,
    structure: ChannelStructure,
) -> (Vec<Vec<f64>>, Vec<f64>) {
    let _span = tracing::debug_span!("displacement_sums", b = p.b, c = p.c, ry, rx).entered();
    let (h, w, c) = (p.h, p.w, p.c);
    let (kh, kw) = (2 * ry + 1, 2 * rx + 1);
    let mut pairs_per_kernel: Vec<f64> = Vec::new();
    let tables = match structure {
        ChannelStructure::IntraInter => {
            let intra_pairs: Vec<(&[f64], &[f64])> = (0..p.b)
                .flat_map(|b| (0..c).map(move |ch| (b, ch)))
                .map(|(b, ch)| (p.plane(b, ch), p.plane(b, ch)))
                .collect();
            let intra = pair_sums(&intra_pairs, h, w, ry, rx);
            let inter = if c > 1 {
                let sums: Vec<Vec<f64>> = (0..p.b)
                    .map(|b| {
                        let mut s = vec![0f64; h * w];
                        for ch in 0..c {
                            s.iter_mut().zip(p.plane(b, ch)).for_each(|(a, x)| *a += x);
                        }
                        s
                    })
                    .collect();
                let sum_pairs: Vec<(&[f64], &[f64])> =
                    sums.iter().map(|s| (s.as_slice(), s.as_slice())).collect();
                let total = pair_sums(&sum_pairs, h, w, ry, rx);
                total.iter().zip(&intra).map(|(t, i)| t - i).collect()
            } else {
                vec![0f64; kh * kw]
            };
            pairs_per_kernel.push((p.b * c) as f64);
            pairs_per_kernel.push((p.b * c * (c - 1)) as f64);
            vec![intra, inter]
        }
        ChannelStructure::Full => {
            let mut out = Vec::with_capacity(c * c);
            for c1 in 0..c {
                for c2 in 0..c {
                    let pairs: Vec<(&[f64], &[f64])> =
                        (0..p.b).map(|b| (p.plane(b, c1), p.plane(b, c2))).collect();
                    out.push(pair_sums(&pairs, h, w, ry, rx));
                    pairs_per_kernel.push(p.b as f64);
                }
            }
            out
        }
    };
    (tables, pairs_per_kernel)
}
