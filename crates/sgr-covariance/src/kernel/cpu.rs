//! The CPU kernels of `Σ v`: direct correlations on zero-padded planes (register-blocked, parallel over the
//! batch) and pair-packed FFTs, chosen per kernel set by [`KernelSet::cpu_plan`].

use rayon::prelude::*;
use rustfft::FftNum;
use rustfft::num_complex::Complex;

use super::{ChannelStructure, FftKernels, KernelSet};
use crate::fft::{Plan2d, fast_len};
use crate::plan::{CpuPath, CpuPlan};

impl KernelSet {
    fn nonzeros(&self, k: usize) -> usize {
        self.table(k).iter().filter(|v| **v != 0.0).count()
    }

    /// How `Σ v` runs on the CPU: the FFT path when predicted faster. Per image, the direct path costs
    /// `(number of correlations) · H·W · taps`, the FFT path `C · n·log₂n` (two images share each complex
    /// transform; C forward and C inverse). Constants measured on the benchmark (2 cores, f32, batch 128):
    /// 0.11 ns per direct tap-pixel, 0.33 ns per `n·log₂n` unit; costs are in nanoseconds per image.
    pub fn cpu_plan(&self) -> CpuPlan {
        let (ny, nx) = (fast_len(self.h + self.ry), fast_len(self.w + self.rx));
        let n = (ny * nx) as f64;
        let c = self.c as f64;
        let fft_cost = 0.33 * c * n * n.log2();
        let max_nnz = (0..self.n_tables())
            .map(|k| self.nonzeros(k))
            .max()
            .unwrap_or(0) as f64;
        let correlations = match self.structure {
            ChannelStructure::IntraInter if self.c == 1 => 1.0,
            ChannelStructure::IntraInter => c + 1.0,
            ChannelStructure::Full => c * c,
        };
        let direct_cost = 0.11 * correlations * max_nnz * (self.h * self.w) as f64;
        CpuPlan::cheaper(direct_cost, fft_cost, (ny, nx))
    }

    fn build_fft_kernels<T: Elem>(&self) -> FftKernels<T> {
        let plan = Plan2d::<T>::new(fast_len(self.h + self.ry), fast_len(self.w + self.rx));
        let (kw, ry, rx) = (2 * self.rx + 1, self.ry as i64, self.rx as i64);
        let spectrum = |table: &[f64]| {
            // g(m) = K(−m) placed with wrap-around: circular convolution with g is correlation with K.
            let mut buf = vec![Complex::new(T::zero(), T::zero()); plan.ny * plan.nx];
            for dy in -ry..=ry {
                for dx in -rx..=rx {
                    let my = (-dy).rem_euclid(plan.ny as i64) as usize;
                    let mx = (-dx).rem_euclid(plan.nx as i64) as usize;
                    let k = table[(dy + ry) as usize * kw + (dx + rx) as usize];
                    buf[my * plan.nx + mx] =
                        Complex::new(T::from(k).unwrap_or_else(T::nan), T::zero());
                }
            }
            plan.forward_t(&mut buf, plan.ny)
        };
        let spectra = self
            .correlation_tables()
            .iter()
            .map(|t| spectrum(t))
            .collect();
        FftKernels { plan, spectra }
    }

    fn apply_fft<T: Elem>(&self, va: &[T], vb: Option<&[T]>, oa: &mut [T], ob: Option<&mut [T]>) {
        // Two real images ride in one complex transform (a + i·b): Σ is real and linear, so the real part
        // of the result is Σa and the imaginary part Σb. Spectra stay in the transposed layout of
        // `Plan2d::forward_t`, as the kernels' spectra do.
        let fk = T::fft_kernels(self);
        let (h, w) = (self.h, self.w);
        let hw = h * w;
        let plan = &fk.plan;
        let (ny, nx) = (plan.ny, plan.nx);
        let n = ny * nx;
        let zero = Complex::new(T::zero(), T::zero());
        let mut buf = vec![zero; h * nx];
        let mut sum = if self.structure == ChannelStructure::IntraInter && self.c > 1 {
            vec![zero; n]
        } else {
            vec![]
        };
        let spectra: Vec<Vec<Complex<T>>> = (0..self.c)
            .map(|c| {
                for i in 0..h {
                    for j in 0..w {
                        let re = va[c * hw + i * w + j];
                        let im = vb.map_or(T::zero(), |b| b[c * hw + i * w + j]);
                        buf[i * nx + j] = Complex::new(re, im);
                    }
                    for j in w..nx {
                        buf[i * nx + j] = zero;
                    }
                }
                let spec = plan.forward_t(&mut buf, h);
                if !sum.is_empty() {
                    sum.iter_mut().zip(&spec).for_each(|(s, x)| *s = *s + *x);
                }
                spec
            })
            .collect();
        let mut acc = vec![zero; n];
        let mut rows = Vec::with_capacity(h * nx);
        let mut ob = ob;
        for c in 0..self.c {
            match self.structure {
                ChannelStructure::IntraInter if self.c == 1 => {
                    for (a, (x, k)) in acc.iter_mut().zip(spectra[0].iter().zip(&fk.spectra[0])) {
                        *a = *x * *k;
                    }
                }
                ChannelStructure::IntraInter => {
                    let (d, i) = (&fk.spectra[0], &fk.spectra[1]);
                    for k in 0..n {
                        acc[k] = spectra[c][k] * d[k] + sum[k] * i[k];
                    }
                }
                ChannelStructure::Full => {
                    acc.iter_mut().for_each(|a| *a = zero);
                    for (c2, sp) in spectra.iter().enumerate().take(self.c) {
                        let ks = &fk.spectra[c * self.c + c2];
                        for k in 0..n {
                            acc[k] = acc[k] + sp[k] * ks[k];
                        }
                    }
                }
            }
            plan.inverse_t(&mut acc, h, &mut rows);
            for i in 0..h {
                for j in 0..w {
                    let z = rows[i * nx + j];
                    oa[c * hw + i * w + j] = z.re;
                    if let Some(ob) = ob.as_deref_mut() {
                        ob[c * hw + i * w + j] = z.im;
                    }
                }
            }
        }
    }

    /// `Σ v` for a batch stored row-major as `B × (C·H·W)` values: the FFT path per image for long ranges,
    /// else direct correlations on a batch-innermost layout (long contiguous axpys, parallel over rows).
    pub(crate) fn apply_batch<T: Elem>(&self, v: &[T]) -> Vec<T> {
        let d = self.dim();
        if self.cpu_plan().path == CpuPath::Fft {
            let mut out = vec![T::zero(); v.len()];
            out.par_chunks_mut(2 * d)
                .zip(v.par_chunks(2 * d))
                .for_each(|(o, x)| {
                    let (oa, ob) = o.split_at_mut(d);
                    if x.len() == 2 * d {
                        self.apply_fft(&x[..d], Some(&x[d..]), oa, Some(ob));
                    } else {
                        self.apply_fft(x, None, oa, None);
                    }
                });
            return out;
        }
        self.apply_direct_batch(v)
    }

    fn apply_direct_batch<T: Elem>(&self, v: &[T]) -> Vec<T> {
        let d = self.dim();
        let mut out = vec![T::zero(); v.len()];
        let convert = |t: &[f64]| -> Vec<T> {
            t.iter()
                .map(|&x| T::from(x).unwrap_or_else(T::nan))
                .collect()
        };
        // Kernels as tap lists (offset, weight), zeros skipped.
        let tables: Vec<Vec<T>> = self
            .correlation_tables()
            .iter()
            .map(|t| convert(t))
            .collect();
        let taps: Vec<Vec<(usize, T)>> = tables.iter().map(|t| self.taps(t)).collect();
        out.par_chunks_mut(d)
            .zip(v.par_chunks(d))
            .for_each(|(o, x)| self.apply_direct_image(x, o, &taps));
        out
    }

    /// Nonzero taps of a table as (offset into a padded plane, weight).
    fn taps<T: Elem>(&self, table: &[T]) -> Vec<(usize, T)> {
        let (ry, rx) = (self.ry as i64, self.rx as i64);
        let pw = self.w + 2 * self.rx + PAD_LANES;
        let kw = 2 * rx + 1;
        let mut taps = Vec::new();
        for dy in -ry..=ry {
            for dx in -rx..=rx {
                let wgt = table[((dy + ry) * kw + dx + rx) as usize];
                if wgt != T::zero() {
                    taps.push((((dy + ry) as usize) * pw + (dx + rx) as usize, wgt));
                }
            }
        }
        taps
    }

    /// `Σ v` for one image by direct correlation on zero-padded planes: every output row is processed in
    /// blocks of `PAD_LANES` pixels held in registers while all taps add into them.
    fn apply_direct_image<T: Elem>(&self, v: &[T], out: &mut [T], taps: &[Vec<(usize, T)>]) {
        let (c, h, w, ry, rx) = (self.c, self.h, self.w, self.ry, self.rx);
        let hw = h * w;
        let pw = w + 2 * rx + PAD_LANES;
        let ph = h + 2 * ry;
        let pad = |plane: &[T], buf: &mut Vec<T>| {
            buf.clear();
            buf.resize(ph * pw, T::zero());
            for i in 0..h {
                buf[(i + ry) * pw + rx..(i + ry) * pw + rx + w]
                    .copy_from_slice(&plane[i * w..(i + 1) * w]);
            }
        };
        let mut padded: Vec<Vec<T>> = vec![Vec::new(); c];
        for ch in 0..c {
            pad(&v[ch * hw..(ch + 1) * hw], &mut padded[ch]);
        }
        match self.structure {
            ChannelStructure::IntraInter if c == 1 => {
                correlate_padded(&padded[0], &taps[0], &mut out[..hw], h, w, pw, false)
            }
            ChannelStructure::IntraInter => {
                let mut sum = vec![T::zero(); ph * pw];
                for p in &padded {
                    sum.iter_mut().zip(p).for_each(|(s, &x)| *s += x);
                }
                let mut shared = vec![T::zero(); hw];
                correlate_padded(&sum, &taps[1], &mut shared, h, w, pw, false);
                for ch in 0..c {
                    let o = &mut out[ch * hw..(ch + 1) * hw];
                    o.copy_from_slice(&shared);
                    correlate_padded(&padded[ch], &taps[0], o, h, w, pw, true);
                }
            }
            ChannelStructure::Full => {
                for ch in 0..c {
                    let o = &mut out[ch * hw..(ch + 1) * hw];
                    for (c2, p) in padded.iter().enumerate() {
                        correlate_padded(p, &taps[ch * c + c2], o, h, w, pw, c2 > 0);
                    }
                }
            }
        }
    }
}

/// Extra zero columns on the right of a padded plane, so a full block can always be read.
const PAD_LANES: usize = 16;

/// `out (+)= K ⋆ plane` where `plane` is zero-padded (`ry` rows above/below, `rx` columns left, `rx + 16`
/// right) and taps are offsets into it.
fn correlate_padded<T: Elem>(
    plane: &[T],
    taps: &[(usize, T)],
    out: &mut [T],
    h: usize,
    w: usize,
    pw: usize,
    add: bool,
) {
    for i in 0..h {
        let row = &mut out[i * w..(i + 1) * w];
        let mut j = 0;
        while j < w {
            let n = PAD_LANES.min(w - j);
            let mut acc = [T::zero(); PAD_LANES];
            if add {
                acc[..n].copy_from_slice(&row[j..j + n]);
            }
            let base = i * pw + j;
            for &(off, wgt) in taps {
                let s = &plane[base + off..base + off + PAD_LANES];
                for k in 0..PAD_LANES {
                    acc[k] += wgt * s[k];
                }
            }
            row[j..j + n].copy_from_slice(&acc[..n]);
            j += PAD_LANES;
        }
    }
}

/// Element types of the CPU kernels.
pub(crate) trait Elem:
    num_traits::Float + std::ops::AddAssign + FftNum + Send + Sync + 'static
{
    fn fft_kernels(k: &KernelSet) -> &FftKernels<Self>;
}

impl Elem for f32 {
    fn fft_kernels(k: &KernelSet) -> &FftKernels<Self> {
        k.fft32.get_or_init(|| k.build_fft_kernels())
    }
}

impl Elem for f64 {
    fn fft_kernels(k: &KernelSet) -> &FftKernels<Self> {
        k.fft64.get_or_init(|| k.build_fft_kernels())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both CPU paths, forced, against the dense matrix, for both structures and dtypes, odd batch sizes
    /// (an image without a partner in the FFT path's pairs) and widths that are not a multiple of the
    /// register block.
    #[test]
    fn direct_and_fft_paths_agree_with_the_dense_matrix() -> crate::Result<()> {
        for (c, h, w, r, structure) in [
            (1usize, 5usize, 7usize, 2usize, ChannelStructure::IntraInter),
            (3, 6, 19, 3, ChannelStructure::IntraInter),
            (2, 9, 4, 8, ChannelStructure::Full),
            (3, 4, 17, 1, ChannelStructure::Full),
        ] {
            let (ry, rx) = (r.min(h - 1), r.min(w - 1));
            let len = (2 * ry + 1) * (2 * rx + 1);
            let n = match structure {
                ChannelStructure::IntraInter => 2,
                ChannelStructure::Full => c * c,
            };
            // Symmetric tables: K_{ab}(δ) = K_{ba}(−δ).
            let mut tables = vec![0f64; n * len];
            for k in 0..n {
                let (a, b) = if structure == ChannelStructure::Full {
                    (k / c, k % c)
                } else {
                    (0, k)
                };
                for dy in -(ry as i64)..=ry as i64 {
                    for dx in -(rx as i64)..=rx as i64 {
                        let (lo, hi) = (a.min(b), a.max(b));
                        let order = if structure == ChannelStructure::IntraInter {
                            std::cmp::Ordering::Equal
                        } else {
                            a.cmp(&b)
                        };
                        let (sy, sx) = match order {
                            std::cmp::Ordering::Less => (dy, dx),
                            std::cmp::Ordering::Greater => (-dy, -dx),
                            std::cmp::Ordering::Equal => (dy, dx).max((-dy, -dx)),
                        };
                        let v = ((lo * 7 + hi * 3 + (sy + 9) as usize * 5 + (sx + 9) as usize * 11)
                            % 13) as f64
                            / 13.0
                            - 0.3;
                        tables[k * len
                            + (dy + ry as i64) as usize * (2 * rx + 1)
                            + (dx + rx as i64) as usize] = v;
                    }
                }
            }
            let ks = KernelSet::new((c, h, w), (ry, rx), structure, tables)?;
            let d = ks.dim();
            let dense = sgr_testutil::flat_f64(&ks.to_dense()?);
            let b = 3;
            let v: Vec<f64> = (0..b * d)
                .map(|i| ((i * 37 % 101) as f64) / 50.0 - 1.0)
                .collect();
            let want: Vec<f64> = (0..b * d)
                .map(|q| {
                    let (bi, row) = (q / d, q % d);
                    (0..d).map(|k| dense[row * d + k] * v[bi * d + k]).sum()
                })
                .collect();
            let direct = ks.apply_direct_batch(&v);
            let mut fft = vec![0f64; b * d];
            {
                let (first, rest) = fft.split_at_mut(2 * d);
                let (oa, ob) = first.split_at_mut(d);
                ks.apply_fft(&v[..d], Some(&v[d..2 * d]), oa, Some(ob));
                ks.apply_fft(&v[2 * d..], None, rest, None);
            }
            for q in 0..b * d {
                assert!(
                    (direct[q] - want[q]).abs() < 1e-10,
                    "direct {c}x{h}x{w} r{r} {structure:?}"
                );
                assert!(
                    (fft[q] - want[q]).abs() < 1e-9,
                    "fft {c}x{h}x{w} r{r} {structure:?}"
                );
            }
            let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            let d32 = ks.apply_direct_batch(&v32);
            for q in 0..b * d {
                assert!((d32[q] as f64 - want[q]).abs() < 1e-4);
            }
        }
        Ok(())
    }
}
