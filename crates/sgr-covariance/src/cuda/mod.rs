//! The CUDA kernel of the covariance-function product (`cov_matvec.cu`): its launch parameters, and with the
//! `cuda` feature the launch itself and a once-per-device self-check against the conv2d fallback.
//!
//! The kernel is compiled to PTX by `build.rs` with nvcc, not at run time through NVRTC: a syntax or type error
//! in the kernel then fails `cargo build`/`cargo check --features cuda` (and CI, which runs that check with
//! nvcc from PyPI wheels) instead of the first GPU run, and nothing is compiled on the user's machine at run time.

#[cfg(any(feature = "cuda", test))]
use crate::kernel::{ChannelStructure, KernelSet};

/// What `cov_matvec.cu` is given for a kernel set: its mode and tables (see the kernel's header comment).
#[cfg(any(feature = "cuda", test))]
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LaunchTables {
    /// 0: one channel; 1: intra/inter with `C > 1` (`[intra − inter, inter]`); 2: the full `C × C` table.
    pub mode: i32,
    pub tables: Vec<f64>,
}

#[cfg(any(feature = "cuda", test))]
pub(crate) fn launch_tables(k: &KernelSet) -> LaunchTables {
    let mode = match k.structure() {
        _ if k.shape().0 == 1 => 0,
        ChannelStructure::IntraInter => 1,
        ChannelStructure::Full => 2,
    };
    LaunchTables {
        mode,
        tables: k.correlation_tables().concat(),
    }
}

#[cfg(feature = "cuda")]
pub(crate) use device::cuda_fwd;
#[cfg(feature = "cuda")]
pub use device::kernel_ready;

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod device {
    use std::sync::{Arc, Mutex};

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{
        CudaDevice, CudaStorage, DType, Device, DeviceLocation, Layout, Shape, Tensor, WithDType,
    };

    use super::launch_tables;
    use crate::kernel::{ChannelStructure, KernelSet};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cov_matvec.ptx"));
    const MODULE: &str = "sgr_cov_matvec";
    /// Threads per block along each axis (`TILE` in the kernel).
    const TILE: usize = 16;
    /// CUDA's limit on `gridDim.z`; larger batches are launched in parts.
    const MAX_GRID_Z: usize = 65_535;

    /// `Σ v` on a CUDA device for a contiguous `(B, C·H·W)` input.
    pub(crate) fn cuda_fwd(
        k: &KernelSet,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (start, end) = crate::kernel::contiguous_range(layout)?;
        let dev = storage.device().clone();
        let _span = tracing::trace_span!("cov_matvec_cuda", n = end - start).entered();
        let slice = match storage.dtype() {
            DType::F32 => {
                let out = launch::<f32>(
                    k,
                    &dev,
                    storage.as_cuda_slice()?,
                    start,
                    end,
                    "cov_matvec_f32",
                )?;
                CudaStorage::wrap_cuda_slice(out, dev)
            }
            DType::F64 => {
                let out = launch::<f64>(
                    k,
                    &dev,
                    storage.as_cuda_slice()?,
                    start,
                    end,
                    "cov_matvec_f64",
                )?;
                CudaStorage::wrap_cuda_slice(out, dev)
            }
            other => {
                candle_core::bail!("sgr-cov-matvec: unsupported dtype {other:?} (f32 and f64 only)")
            }
        };
        Ok((slice, layout.shape().clone()))
    }

    fn launch<T: DeviceRepr + WithDType + CudaDType>(
        k: &KernelSet,
        dev: &CudaDevice,
        src: &CudaSlice<T>,
        start: usize,
        end: usize,
        name: &str,
    ) -> candle_core::Result<CudaSlice<T>> {
        let (c, h, w) = k.shape();
        let d = k.dim();
        let (ry, rx) = k.half_extent();
        let lt = launch_tables(k);
        let b = (end - start) / d;
        let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        let tables: Vec<T> = lt.tables.iter().map(|&x| T::from_f64(x)).collect();
        let tables = dev.clone_htod(&tables)?;
        // SAFETY: every element is written by the kernel (one thread per output pixel and channel).
        let mut out = unsafe { dev.alloc::<T>(b * d)? };
        let blocks_per_image = if lt.mode == 2 { c } else { 1 };
        let per_launch = MAX_GRID_Z / blocks_per_image;
        let dims = [c, h, w, ry, rx].map(|x| x as i32);
        let mut first = 0;
        while first < b {
            let n = per_launch.min(b - first);
            let v = src.slice(start + first * d..start + (first + n) * d);
            let mut o = out.slice_mut(first * d..(first + n) * d);
            let cfg = LaunchConfig {
                grid_dim: (
                    w.div_ceil(TILE) as u32,
                    h.div_ceil(TILE) as u32,
                    (n * blocks_per_image) as u32,
                ),
                block_dim: (TILE as u32, TILE as u32, 1),
                shared_mem_bytes: 0,
            };
            let mut builder = func.builder();
            builder.arg(&v);
            builder.arg(&mut o);
            builder.arg(&tables);
            for x in &dims {
                builder.arg(x);
            }
            builder.arg(&lt.mode);
            // SAFETY: the argument list matches `cov_matvec_{f32,f64}(const T*, T*, const T*, int × 6)`; the
            // kernel reads `n·d` values of `v`, all `tables` and writes `n·d` values of `o`, all in bounds.
            unsafe { builder.launch(cfg) }.w()?;
            first += n;
        }
        Ok(out)
    }

    /// Devices (by ordinal) whose kernel passed (`true`) or failed (`false`) the self-check.
    static CHECKED: Mutex<Vec<(usize, bool)>> = Mutex::new(Vec::new());

    /// Whether `Σ v` on this CUDA device uses the kernel (`false` for other devices). The first call per device compares the kernel with
    /// the conv2d fallback on small pseudo-random inputs (f32 and f64, one and three channels, both
    /// structures, radii up to the full image); if they disagree or the launch fails, it warns once and the
    /// device stays on the fallback. (The kernel passed `cargo xtask gpu-check` on an H200; the check guards other GPUs.)
    pub fn kernel_ready(device: &Device) -> bool {
        let DeviceLocation::Cuda { gpu_id } = device.location() else {
            return false;
        };
        let mut checked = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, ok)) = checked.iter().find(|(id, _)| *id == gpu_id) {
            return *ok;
        }
        let ok = match self_check(device) {
            Ok(()) => {
                tracing::debug!(
                    gpu_id,
                    "sgr-covariance: CUDA Σv kernel passed its self-check"
                );
                true
            }
            Err(e) => {
                tracing::warn!(
                    gpu_id,
                    "sgr-covariance: the CUDA Σv kernel failed its self-check ({e}); using the conv2d \
                     fallback on this device"
                );
                false
            }
        };
        checked.push((gpu_id, ok));
        ok
    }

    fn self_check(device: &Device) -> std::result::Result<(), String> {
        let cases = [
            ((1, 9, 21), (3, 5), ChannelStructure::IntraInter),
            ((3, 17, 18), (4, 2), ChannelStructure::IntraInter),
            ((2, 7, 5), (6, 4), ChannelStructure::Full),
            ((3, 20, 19), (19, 18), ChannelStructure::IntraInter),
        ];
        for (i, (shape, r, structure)) in cases.into_iter().enumerate() {
            let ks = Arc::new(
                KernelSet::pseudo_random(shape, r, structure, i as u64)
                    .map_err(|e| e.to_string())?,
            );
            for dtype in [DType::F32, DType::F64] {
                let err = compare(&ks, dtype, device).map_err(|e| e.to_string())?;
                let tol = if dtype == DType::F32 { 1e-4 } else { 1e-10 };
                if err > tol {
                    return Err(format!(
                        "{shape:?} radius {r:?} {structure:?} {dtype:?}: relative difference {err:.2e} > {tol:.0e}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Largest difference between the kernel and the fallback, relative to the largest value.
    fn compare(ks: &Arc<KernelSet>, dtype: DType, device: &Device) -> crate::Result<f64> {
        let (c, h, w) = ks.shape();
        let b = 3;
        let v: Vec<f64> = (0..b * c * h * w)
            .map(|i| ((i * 7919 + 13) % 1009) as f64 / 504.5 - 1.0)
            .collect();
        let v = Tensor::from_vec(v, (b, c, h, w), device)?.to_dtype(dtype)?;
        let got = ks.matvec_on(&v, crate::MatvecPath::Kernel)?;
        let want = ks.matvec_reference(&v)?;
        let scale = want
            .abs()?
            .max_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            .max(1e-30);
        let diff = (got - want)?
            .abs()?
            .max_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        Ok(diff / scale)
    }
}

#[cfg(test)]
mod tests {
    //! The kernel source run on the CPU through `emulate.cpp` (a C++ compiler is all it needs), against the
    //! dense matrix: the same tiling, chunking, halo and mode logic the GPU executes.

    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;

    fn compile_emulator(dir: &Path) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cuda/emulate.cpp");
        let exe = dir.join("emulate");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let out = Command::new(&cxx)
            .args(["-std=c++20", "-O2", "-pthread", "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("this test compiles the CUDA kernel as C++ and needs a C++20 compiler ({cxx}, or set CXX): {e}"));
        assert!(
            out.status.success(),
            "compiling {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        exe
    }

    /// Runs the emulated kernel for a batch `v` (f64 or, with `f32`, rounded to f32) and returns Σv in f64.
    fn emulate(exe: &Path, dir: &Path, k: &KernelSet, v: &[f64], f32: bool) -> Vec<f64> {
        let (c, h, w) = k.shape();
        let (ry, rx) = k.half_extent();
        let lt = launch_tables(k);
        let b = v.len() / k.dim();
        let mut bytes = Vec::new();
        let width = if f32 { 4 } else { 8 };
        for x in [b, c, h, w, ry, rx, lt.mode as usize, width] {
            bytes.extend_from_slice(&(x as i32).to_le_bytes());
        }
        for x in lt.tables.iter().chain(v) {
            if f32 {
                bytes.extend_from_slice(&(*x as f32).to_le_bytes());
            } else {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
        }
        let (input, output) = (dir.join("in.bin"), dir.join("out.bin"));
        std::fs::write(&input, bytes).expect("write input");
        let status = Command::new(exe)
            .arg(&input)
            .arg(&output)
            .status()
            .expect("run emulator");
        assert!(status.success(), "emulator failed: {status}");
        let raw = std::fs::read(&output).expect("read output");
        if f32 {
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                .collect()
        } else {
            raw.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        }
    }

    #[test]
    fn kernel_source_run_on_the_cpu_equals_the_dense_product() -> crate::Result<()> {
        let dir = std::env::temp_dir().join(format!("sgr-cuda-emulation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let exe = compile_emulator(&dir);
        // Shapes: smaller than a tile, several tiles with ragged edges, radii inside a chunk, several chunks
        // (2r + 1 > 16) and the full image; anisotropic radii catch a swapped axis.
        let cases = [
            (
                (1usize, 5usize, 7usize),
                (2usize, 1usize),
                ChannelStructure::IntraInter,
            ),
            ((1, 23, 18), (9, 3), ChannelStructure::IntraInter),
            ((3, 17, 33), (3, 11), ChannelStructure::IntraInter),
            ((3, 20, 19), (19, 18), ChannelStructure::IntraInter),
            ((2, 9, 18), (8, 17), ChannelStructure::Full),
            ((3, 6, 5), (1, 2), ChannelStructure::Full),
            ((1, 4, 4), (3, 3), ChannelStructure::Full),
        ];
        for (i, (shape, r, structure)) in cases.into_iter().enumerate() {
            let k = KernelSet::pseudo_random(shape, r, structure, 17 + i as u64)?;
            let d = k.dim();
            let b = 2;
            let v: Vec<f64> = (0..b * d)
                .map(|q| ((q * 37 + i) % 101) as f64 / 50.0 - 1.0)
                .collect();
            let dense = k.to_dense()?.flatten_all()?.to_vec1::<f64>()?;
            let want: Vec<f64> = (0..b * d)
                .map(|q| {
                    let (bi, row) = (q / d, q % d);
                    (0..d).map(|j| dense[row * d + j] * v[bi * d + j]).sum()
                })
                .collect();
            let scale = want.iter().fold(1f64, |m, x| m.max(x.abs()));
            for f32 in [false, true] {
                let got = emulate(&exe, &dir, &k, &v, f32);
                assert_eq!(got.len(), want.len());
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
                let tol = if f32 { 1e-4 } else { 1e-12 } * scale;
                assert!(
                    err < tol,
                    "{shape:?} r{r:?} {structure:?} f32={f32}: error {err:.3e}"
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
