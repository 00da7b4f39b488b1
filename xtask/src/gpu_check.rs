//! `cargo xtask gpu-check`: the prepared check of the CUDA path, in one call of at most a few minutes —
//! build with `--features cuda`, the self-test (Σv kernel, gradients, models, an SGR-sign step against the
//! CPU, Σv timings), a short training run and a timed full MNIST SGR-sign epoch — with its log, report and
//! figure in one folder.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use sgr_models::DeviceKind;

#[derive(Debug, Args)]
pub struct GpuCheckCmd {
    /// Folder for gpu-check.log, report.md, the self-test's files and the training runs (replaced).
    #[arg(long, default_value = "gpu-check")]
    out: PathBuf,
    /// The device to check (`cpu` runs every step on the CPU, without the CUDA build: a dry run).
    #[arg(long, default_value = "cuda", value_parser = crate::common::parse_device)]
    device: DeviceKind,
    /// MNIST folder for the timed full epoch (without it the epoch is reported as not run).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A CUDA-enabled xtask binary to use instead of building one.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Total time budget in seconds; each step gets what is left.
    #[arg(long, default_value_t = 480)]
    budget: u64,
    /// Small sizes everywhere (for the tests of this command).
    #[arg(long)]
    quick: bool,
    /// Folders with the CUDA libraries a prebuilt --binary links to (libcublas, libcurand, libnvrtc…), added
    /// to LD_LIBRARY_PATH; without it, missing ones (`ldd`) are looked for in the usual places and in Python's
    /// site-packages (pip-installed PyTorch keeps them under nvidia/*/lib).
    #[arg(long)]
    lib_dir: Vec<PathBuf>,
}

struct Step {
    name: &'static str,
    status: String,
    seconds: f64,
    log: String,
}

struct Runner {
    out: PathBuf,
    log: File,
    /// Extra environment of every step (LD_LIBRARY_PATH for a prebuilt binary).
    env: Vec<(String, String)>,
    start: Instant,
    budget: Duration,
    steps: Vec<Step>,
}

impl Runner {
    fn say(&mut self, line: &str) {
        eprintln!("gpu-check: {line}");
        let _ = writeln!(
            self.log,
            "[{:7.1} s] {line}",
            self.start.elapsed().as_secs_f64()
        );
    }

    /// Runs one step with its output in `<name>.log`, killed when the budget is spent. True if it succeeded.
    fn step(&mut self, name: &'static str, cmd: &mut Command) -> Result<bool> {
        let log_name = format!("{name}.log");
        let log = File::create(self.out.join(&log_name))?;
        self.say(&format!("{name}: {cmd:?}"));
        let t0 = Instant::now();
        let mut child = cmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("{name}: cannot start {:?}", cmd.get_program()))?;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break if s.success() {
                    "ok".to_string()
                } else {
                    format!("FAILED ({s})")
                };
            }
            if self.start.elapsed() > self.budget {
                let _ = child.kill();
                let _ = child.wait();
                break "FAILED (out of time: killed)".to_string();
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let seconds = t0.elapsed().as_secs_f64();
        self.say(&format!(
            "{name}: {status} after {seconds:.1} s (log {log_name})"
        ));
        let ok = status == "ok";
        self.steps.push(Step {
            name,
            status,
            seconds,
            log: log_name,
        });
        Ok(ok)
    }

    fn skip(&mut self, name: &'static str, why: &str) {
        self.say(&format!("{name}: not run ({why})"));
        self.steps.push(Step {
            name,
            status: format!("not run: {why}"),
            seconds: 0.0,
            log: String::new(),
        });
    }
}

pub fn run(cmd: GpuCheckCmd) -> Result<()> {
    if cmd.out.exists() {
        std::fs::remove_dir_all(&cmd.out)
            .with_context(|| format!("--out: cannot replace {}", cmd.out.display()))?;
    }
    std::fs::create_dir_all(&cmd.out).with_context(|| format!("--out {}", cmd.out.display()))?;
    let mut r = Runner {
        log: File::create(cmd.out.join("gpu-check.log"))?,
        env: vec![],
        out: cmd.out.clone(),
        start: Instant::now(),
        budget: Duration::from_secs(cmd.budget),
        steps: vec![],
    };
    let device = cmd.device.to_string();
    r.say(&format!("device {device}, budget {} s", cmd.budget));
    if let Ok(o) = Command::new("nvidia-smi").output() {
        let _ = std::fs::write(cmd.out.join("nvidia-smi.txt"), &o.stdout);
    }

    // 1. The binary.
    let binary = match (&cmd.binary, cmd.device) {
        (Some(b), _) => b.clone(),
        (None, DeviceKind::Cpu) => std::env::current_exe()?,
        (None, _) => {
            let target = PathBuf::from("target/gpu");
            let feature = if cmd.device == DeviceKind::Metal {
                "metal"
            } else {
                "cuda"
            };
            let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            build
                .args(["build", "--release", "-p", "xtask", "--features", feature])
                .env("CARGO_TARGET_DIR", &target);
            // candle-kernels compiles its GGUF/MoE library with half the cores unless told otherwise
            // (15 large files, about a minute each): on a GPU machine's time every core counts.
            if std::env::var_os("CUDAFORGE_THREADS").is_none() {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                build.env("CUDAFORGE_THREADS", cores.to_string());
            }
            let built = r.step("build", &mut build)?;
            if !built {
                return finish(&mut r, &cmd);
            }
            target.join("release").join("xtask")
        }
    };
    if cmd.binary.is_some() || !cmd.lib_dir.is_empty() {
        let dirs = library_dirs(&mut r, &binary, &cmd.lib_dir);
        if !dirs.is_empty() {
            let mut all: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            if let Ok(old) = std::env::var("LD_LIBRARY_PATH") {
                all.push(old);
            }
            r.env.push(("LD_LIBRARY_PATH".into(), all.join(":")));
        }
    }
    let out_of = |sub: &str| cmd.out.join(sub);

    // 2. The self-test.
    let mut selftest = Command::new(&binary);
    selftest
        .args(["gpu-selftest", "--device", &device, "--out"])
        .arg(out_of("selftest"));
    if cmd.quick {
        selftest.arg("--quick");
    }
    r.step("selftest", &mut selftest)?;

    // One epoch of SGR-sign, seed 0, into OUT/<name>.
    let train = |name: &str, dev: &str, data: &[&str]| {
        let mut c = Command::new(&binary);
        c.args([
            "train", "--method", "sgr-sign", "--epochs", "1", "--seed", "0", "--device", dev,
        ])
        .args(data)
        .arg("--out")
        .arg(out_of(name));
        c
    };

    // 3. A short SGR-sign run on the embedded MNIST subset (no data needed), on the device and on the CPU.
    let limit = if cmd.quick { "256" } else { "2048" };
    let short = [
        "--dataset",
        "mnist-subset",
        "--train-limit",
        limit,
        "--pgd-eval-images",
        "100",
    ];
    for (name, dev) in [("train-short", device.as_str()), ("train-short-cpu", "cpu")] {
        r.step(name, &mut train(name, dev, &short))?;
    }

    // 4. A full MNIST SGR-sign epoch, timed.
    match &cmd.data_dir {
        Some(d) if !cmd.quick => {
            let dir = d.to_string_lossy();
            let full = ["--dataset", "mnist", "--data-dir", dir.as_ref()];
            r.step("mnist-epoch", &mut train("mnist-epoch", &device, &full))?;
        }
        Some(_) => r.skip("mnist-epoch", "--quick"),
        None => r.skip("mnist-epoch", "no --data-dir"),
    }
    finish(&mut r, &cmd)
}

/// Folders to add to LD_LIBRARY_PATH: `given`, then for each library `ldd` reports missing, the first folder
/// of the usual places holding it.
fn library_dirs(r: &mut Runner, binary: &Path, given: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = given.to_vec();
    let missing: Vec<String> = Command::new("ldd")
        .arg(binary)
        .envs(given.iter().map(|d| ("LD_LIBRARY_PATH", d.as_os_str())))
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("not found"))
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if missing.is_empty() {
        return dirs;
    }
    let mut roots: Vec<PathBuf> = [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/opt/conda/lib",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    if let Ok(o) = Command::new("python3")
        .args([
            "-c",
            "import site; print('\\n'.join(site.getsitepackages()))",
        ])
        .output()
    {
        roots.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| PathBuf::from(l).join("nvidia")),
        );
    }
    for lib in &missing {
        match roots.iter().find_map(|root| find_file(root, lib, 3)) {
            Some(dir) => {
                r.say(&format!("{lib}: found in {}", dir.display()));
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
            None => r.say(&format!("{lib}: not found (pass --lib-dir)")),
        }
    }
    dirs
}

/// The folder under `root` (at most `depth` levels down) that holds a file named `name`.
fn find_file(root: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    if root.join(name).exists() {
        return Some(root.to_path_buf());
    }
    if depth == 0 {
        return None;
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    subdirs.iter().find_map(|d| find_file(d, name, depth - 1))
}

/// Writes report.md from the steps and what they left, and fails if a step failed.
fn finish(r: &mut Runner, cmd: &GpuCheckCmd) -> Result<()> {
    let mut md = format!(
        "# gpu-check on {}\n\nTotal {:.0} s of a {} s budget. Logs: gpu-check.log and one per step.\n\n\
         | step | status | seconds | log |\n|---|---|---:|---|\n",
        cmd.device,
        r.start.elapsed().as_secs_f64(),
        cmd.budget
    );
    for s in &r.steps {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {} |\n",
            s.name, s.status, s.seconds, s.log
        ));
    }
    for (name, title) in [
        ("train-short", "Short SGR-sign run on the device"),
        ("train-short-cpu", "The same run on the CPU"),
        ("mnist-epoch", "Full MNIST SGR-sign epoch on the device"),
    ] {
        if let Some(line) = run_summary(&cmd.out.join(name)) {
            md.push_str(&format!("\n{title}: {line}\n"));
        }
    }
    if let Ok(s) = std::fs::read_to_string(cmd.out.join("selftest").join("selftest.md")) {
        md.push('\n');
        md.push_str(&s.replacen("# ", "## ", 1));
    }
    std::fs::write(cmd.out.join("report.md"), md)?;
    let failed: Vec<&str> = r
        .steps
        .iter()
        .filter(|s| s.status.starts_with("FAILED"))
        .map(|s| s.name)
        .collect();
    r.say(&format!("report: {}", cmd.out.join("report.md").display()));
    if !failed.is_empty() {
        bail!("gpu-check: failed steps: {}", failed.join(", "));
    }
    Ok(())
}

/// One line from a run folder's run.json: epoch time, throughput, loss, accuracy, the PGD check.
fn run_summary(dir: &Path) -> Option<String> {
    let rec = sgr_train::read_record(dir).ok()?;
    let e = rec.history.last()?;
    let mut line = format!(
        "{} images in {:.1} s ({:.0} images/s), loss {:.4}, train accuracy {:.2} %, test accuracy {:.2} %",
        rec.train_images,
        e.seconds,
        e.images_per_second,
        e.loss,
        100.0 * e.train_accuracy,
        100.0 * e.test_accuracy
    );
    if let Some(f) = &rec.final_eval {
        line.push_str(&format!(
            ", PGD-10 {:.1} % on {} images",
            100.0 * f.pgd_accuracy,
            f.images
        ));
    }
    Some(line)
}
