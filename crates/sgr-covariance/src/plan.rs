//! Direct-or-FFT decisions of the CPU kernels as inspectable values: the product `Σ v`
//! ([`crate::KernelSet::cpu_plan`]) and the displacement sums of the estimators share this type.

/// Which CPU algorithm a computation takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuPath {
    /// Direct sums over the taps.
    Direct,
    /// Zero-padded FFTs of the given size.
    Fft,
}

/// A cost model's verdict: the predicted cost of each path (in the model's units: nanoseconds per image for the
/// product, operation counts for the estimators) and the cheaper one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuPlan {
    pub path: CpuPath,
    pub direct_cost: f64,
    pub fft_cost: f64,
    /// The FFT grid `(ny, nx)` the FFT path would use.
    pub fft_shape: (usize, usize),
}

impl CpuPlan {
    /// The cheaper of the two (direct on a tie).
    pub fn cheaper(direct_cost: f64, fft_cost: f64, fft_shape: (usize, usize)) -> Self {
        Self {
            path: if fft_cost < direct_cost {
                CpuPath::Fft
            } else {
                CpuPath::Direct
            },
            direct_cost,
            fft_cost,
            fft_shape,
        }
    }
}
