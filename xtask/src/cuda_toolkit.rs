//! `cargo xtask cuda-toolkit`: nvcc, the CUDA headers and libdevice from PyPI wheels, for building the `cuda`
//! feature on machines without a CUDA installation (CI, laptops). Prints the environment on stdout.
//!
//! The wheels `nvidia-cuda-nvcc`, `nvidia-cuda-crt`, `nvidia-cuda-runtime`, `nvidia-nvvm` and `nvidia-cuda-cccl`
//! unpack into one `nvidia/cuXX` folder holding `bin/nvcc`, `nvvm/bin/cicc`, `nvvm/libdevice` and `include/`
//! (with CCCL's `nv/target`): everything `nvcc --ptx` needs. They hold no driver and no cuBLAS, so the result
//! compiles kernels (and `cargo check --features cuda`) but cannot link a CUDA binary: candle links cudarc
//! against `libcuda`, `libcublas`, `libcurand` and `libnvrtc`, which a GPU machine provides.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;

/// The five wheels; each is pinned to the same CUDA minor release.
const WHEELS: [&str; 5] = [
    "nvidia-cuda-nvcc",
    "nvidia-cuda-crt",
    "nvidia-cuda-runtime",
    "nvidia-nvvm",
    "nvidia-cuda-cccl",
];

/// CUDA releases whose wheels this command knows how to lay out and that candle's cudarc (0.19) supports.
const SUPPORTED: [&str; 5] = ["13.0", "13.1", "13.2", "13.3", "13.4"];

#[derive(Debug, Args)]
pub struct CudaToolkitCmd {
    /// Cache folder; the toolkit goes into DIR/cuda-VERSION (default: $SGR_CACHE_DIR, else
    /// $XDG_CACHE_HOME/sgr, else ~/.cache/sgr).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// CUDA release of the wheels (13.0 to 13.4: cudarc 0.19, which candle 0.11 uses, knows no later one).
    /// PTX from an older nvcc also loads on newer drivers, so the oldest is the safest.
    #[arg(long, default_value = "13.0")]
    cuda: String,
    /// Python with pip, used to download the wheels.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Install from wheel files already in this folder instead of downloading them (offline machines).
    #[arg(long)]
    wheels: Option<PathBuf>,
    /// Compute capability for candle's kernels (`CUDA_COMPUTE_CAP`) where `nvidia-smi` cannot tell it.
    #[arg(long, default_value_t = 90)]
    compute_cap: u32,
}

pub fn run(cmd: CudaToolkitCmd) -> Result<()> {
    if !SUPPORTED.contains(&cmd.cuda.as_str()) {
        bail!(
            "--cuda {}: choose one of {} (cudarc 0.19, used by candle 0.11, supports no other 13.x release)",
            cmd.cuda,
            SUPPORTED.join(", ")
        );
    }
    let cache = match &cmd.dir {
        Some(d) => d.clone(),
        None => default_cache()?,
    };
    let home = cache.join(format!("cuda-{}", cmd.cuda));
    if installed_version(&home).as_deref() == Some(cmd.cuda.as_str()) {
        eprintln!("cuda-toolkit: using {} (already installed)", home.display());
    } else {
        install(&cmd, &cache, &home)?;
    }
    smoke_test(&home)?;
    let home = std::fs::canonicalize(&home).with_context(|| format!("{}", home.display()))?;
    let (major, minor) = cmd.cuda.split_once('.').unwrap_or((&cmd.cuda, "0"));
    println!("export CUDA_HOME='{}'", home.display());
    println!("export PATH='{}':\"$PATH\"", home.join("bin").display());
    println!("export CUDARC_CUDA_VERSION={major}0{minor}0");
    if !has_nvidia_smi() {
        println!("export CUDA_COMPUTE_CAP={}", cmd.compute_cap);
    }
    Ok(())
}

fn default_cache() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("SGR_CACHE_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("sgr"));
    }
    match std::env::var_os("HOME") {
        Some(h) => Ok(PathBuf::from(h).join(".cache").join("sgr")),
        None => bail!(
            "no cache folder: pass --dir DIR (neither SGR_CACHE_DIR, XDG_CACHE_HOME nor HOME is set)"
        ),
    }
}

/// The release `bin/nvcc --version` reports, if the folder holds a working nvcc.
fn installed_version(home: &Path) -> Option<String> {
    let out = Command::new(home.join("bin").join("nvcc"))
        .arg("--version")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // "Cuda compilation tools, release 13.0, V13.0.88"
    let rest = text.split("release ").nth(1)?;
    Some(rest.split(',').next()?.trim().to_string())
}

fn install(cmd: &CudaToolkitCmd, cache: &Path, home: &Path) -> Result<()> {
    std::fs::create_dir_all(cache)
        .with_context(|| format!("--dir: cannot create {}", cache.display()))?;
    // Everything happens in a temporary folder next to the target and is renamed into place at the end,
    // so an interrupted install leaves nothing that looks installed.
    let tmp = cache.join(format!(".cuda-{}.tmp-{}", cmd.cuda, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<()> {
        let wheels = match &cmd.wheels {
            Some(w) => w.clone(),
            None => {
                let w = cache.join(format!("wheels-{}", cmd.cuda));
                download(cmd, &w)?;
                w
            }
        };
        let files = wheel_files(&wheels)?;
        let unpacked = tmp.join("unpacked");
        for f in &files {
            eprintln!("cuda-toolkit: unpacking {}", f.display());
            run_checked(
                Command::new(&cmd.python)
                    .args(["-m", "zipfile", "-e"])
                    .arg(f)
                    .arg(&unpacked),
                "unpacking a wheel",
            )?;
        }
        let major = cmd.cuda.split('.').next().unwrap_or("13");
        let root = unpacked.join("nvidia").join(format!("cu{major}"));
        for rel in ["bin", "nvvm/bin"] {
            for entry in std::fs::read_dir(root.join(rel)).with_context(|| {
                format!("the wheels hold no {rel} folder under nvidia/cu{major}")
            })? {
                make_executable(&entry?.path())?;
            }
        }
        for rel in [
            "bin/nvcc",
            "nvvm/bin/cicc",
            "include/cuda_fp16.h",
            "include/nv/target",
        ] {
            ensure!(
                root.join(rel).exists(),
                "the unpacked wheels lack {rel} (under {})",
                root.display()
            );
        }
        if home.exists() {
            std::fs::remove_dir_all(home)
                .with_context(|| format!("removing the stale {}", home.display()))?;
        }
        std::fs::rename(&root, home)
            .with_context(|| format!("moving the toolkit to {}", home.display()))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    match installed_version(home) {
        Some(v) if v == cmd.cuda => {
            eprintln!("cuda-toolkit: installed CUDA {v} in {}", home.display());
            Ok(())
        }
        other => bail!(
            "{}/bin/nvcc reports release {other:?}, expected {}",
            home.display(),
            cmd.cuda
        ),
    }
}

fn download(cmd: &CudaToolkitCmd, into: &Path) -> Result<()> {
    let have = wheel_files(into).map(|f| f.len()).unwrap_or(0);
    if have == WHEELS.len() {
        eprintln!("cuda-toolkit: wheels already in {}", into.display());
        return Ok(());
    }
    eprintln!(
        "cuda-toolkit: downloading {} (CUDA {}, about 100 MB) into {}",
        WHEELS.join(", "),
        cmd.cuda,
        into.display()
    );
    let pins: Vec<String> = WHEELS
        .iter()
        .map(|w| format!("{w}=={}.*", cmd.cuda))
        .collect();
    run_checked(
        Command::new(&cmd.python)
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                "--platform",
                "manylinux_2_17_x86_64",
                "--platform",
                "manylinux2014_x86_64",
                "--platform",
                "manylinux_2_12_x86_64",
                "--platform",
                "manylinux2010_x86_64",
                "-d",
            ])
            .arg(into)
            .args(&pins),
        "pip download (is pip installed for --python, and PyPI reachable?)",
    )
}

/// The newest wheel file of each of the five packages in a folder.
fn wheel_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("--wheels: cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for w in WHEELS {
        let prefix = format!("{}-", w.replace('-', "_"));
        let found = names
            .iter()
            .rev()
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .with_context(|| format!("no {w} wheel in {}", dir.display()))?;
        out.push(found.clone());
    }
    Ok(out)
}

/// Compiles a kernel using `cuda_fp16.h` to PTX, as candle's and sgr's build scripts will.
fn smoke_test(home: &Path) -> Result<()> {
    let dir = tempfile_dir()?;
    let src = dir.join("smoke.cu");
    std::fs::write(
        &src,
        "#include <cuda_fp16.h>\nextern \"C\" __global__ void k(__half* x) { x[threadIdx.x] = __float2half(1.0f); }\n",
    )?;
    let result = run_checked(
        Command::new(home.join("bin").join("nvcc"))
            .args(["--ptx", "-arch=compute_75", "-o"])
            .arg(dir.join("smoke.ptx"))
            .arg(&src),
        "nvcc smoke test (compiling a kernel that includes cuda_fp16.h to PTX)",
    );
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("sgr-cuda-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn has_nvidia_smi() -> bool {
    Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(unix)]
fn make_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if p.is_file() {
        let mut perm = std::fs::metadata(p)?.permissions();
        perm.set_mode(perm.mode() | 0o755);
        std::fs::set_permissions(p, perm)?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> Result<()> {
    Ok(())
}
