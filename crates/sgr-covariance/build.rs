//! With the `cuda` feature: compiles `src/cuda/cov_matvec.cu` to PTX with nvcc (into OUT_DIR), so a kernel that
//! does not compile fails the build instead of the first GPU run.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let src = "src/cuda/cov_matvec.cu";
    println!("cargo::rerun-if-changed={src}");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "SGR_CUDA_ARCH", "PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let nvcc = std::env::var_os("NVCC")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            ["CUDA_HOME", "CUDA_PATH"].iter().find_map(|v| {
                let p = std::path::PathBuf::from(std::env::var_os(v)?).join("bin/nvcc");
                p.exists().then_some(p)
            })
        })
        .unwrap_or_else(|| "nvcc".into());
    // PTX for the oldest architecture CUDA 13 supports: the driver compiles it for the GPU at load time, so one
    // file serves every GPU from Turing on. SGR_CUDA_ARCH (e.g. 90) picks another.
    let arch = std::env::var("SGR_CUDA_ARCH").unwrap_or_else(|_| "75".into());
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("cov_matvec.ptx");
    let status = std::process::Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            "-std=c++17",
            &format!("-arch=compute_{arch}"),
            "-o",
        ])
        .arg(&out)
        .arg(src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("sgr-covariance: nvcc failed on {src} ({s})"),
        Err(e) => panic!(
            "sgr-covariance: the `cuda` feature compiles {src} with nvcc, which could not be run ({}: {e}). \
             Put nvcc on PATH or set NVCC / CUDA_HOME; without a CUDA installation, \
             `eval \"$(cargo xtask cuda-toolkit)\"` installs one from PyPI wheels.",
            nvcc.display()
        ),
    }
}
