//! `cargo xtask …`: the sgr command line. A thin layer over the library crates: it parses flags, sets up
//! logging and progress display, and calls into `sgr-train` and friends.

mod alloc;
mod analyze_cov;
mod bench;
mod bench_autoattack;
mod common;
mod cuda_toolkit;
mod eval;
mod eval_autoattack;
mod eval_lrc;
mod eval_transfer;
mod eval_whitebox;
mod evalkit;
mod figures;
mod gpu_check;
mod gpu_selftest;
mod reproduce;
mod train;

use clap::{Parser, Subcommand};

// Training allocates and frees many large tensors per step; glibc's malloc returns them to the kernel each
// time (mmap/munmap, page faults, TLB shootdowns: ~20 % of a step). mimalloc keeps them.
#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    version,
    about = "Adversarially robust training with structured gradient regularization"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a classifier with a training method; writes OUT/model.safetensors and OUT/run.json.
    Train(Box<train::TrainCmd>),
    /// Clean test accuracy of a checkpoint.
    Eval(eval::EvalCmd),
    /// White-box table (paper Table 1 left / 3): TEST, RAND, FGM, FGSM, PGD, FOOL, with masking checks.
    EvalWhitebox(eval_whitebox::WhiteboxCmd),
    /// AutoAttack (APGD-CE, APGD-T, FAB-T, Square): robust accuracy after each attack, resumable.
    EvalAutoattack(eval_autoattack::AutoAttackCmd),
    /// PGD transfer matrix (paper Table 1 right / 4): one attack run per source model.
    EvalTransfer(eval_transfer::TransferCmd),
    /// Worst-of-100 correlated-noise accuracy against ζ and ε (paper Fig. 3, 4), LRC and data covariance.
    EvalLrc(eval_lrc::LrcCmd),
    /// Covariance of adversarial perturbations, covariance functions, LRC covariances (paper Fig. 1, 2, 5).
    AnalyzeCov(analyze_cov::AnalyzeCovCmd),
    /// Softmax along the line from an input to ±5× its PGD perturbation (paper Fig. 6).
    Trajectories(figures::TrajectoriesCmd),
    /// Originals, PGD adversarials and rescaled perturbations, one per class (paper Fig. 7, 8).
    Samples(figures::SamplesCmd),
    /// Train every method and run every evaluation into one folder with report.md.
    Reproduce(Box<reproduce::ReproduceCmd>),
    /// Time training steps of both models (batch 128) and compare with PyTorch where available.
    Bench(bench::BenchCmd),
    /// Install nvcc and the CUDA headers from PyPI wheels into a cache folder; print the `export` lines to use.
    CudaToolkit(cuda_toolkit::CudaToolkitCmd),
    /// The prepared CUDA check: build with --features cuda, kernel and gradient checks against the CPU, a short
    /// training run, timings; log, report.md and figures in one folder.
    GpuCheck(gpu_check::GpuCheckCmd),
    /// The device-side checks of gpu-check (run by it, in a binary built for the device).
    #[command(hide = true)]
    GpuSelftest(gpu_selftest::GpuSelftestCmd),
}

#[allow(unsafe_code)]
fn main() -> std::process::ExitCode {
    alloc::keep_freed_memory();
    // Exact double backprop (the gn/sgr methods' default) needs Candle to keep the graphs of gradients; it
    // reads this variable once per thread, at that thread's first backward pass. Set it before anything
    // else runs. SAFETY: no other thread exists yet, so nothing reads the environment concurrently.
    if std::env::var_os(sgr_regularizers::DOUBLE_BACKPROP_ENV).is_none() {
        unsafe { std::env::set_var(sgr_regularizers::DOUBLE_BACKPROP_ENV, "1") };
    }
    common::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(cmd) => train::run(*cmd),
        Command::Eval(cmd) => eval::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::EvalWhitebox(cmd) => eval_whitebox::run(cmd),
        Command::EvalAutoattack(cmd) => eval_autoattack::run(cmd),
        Command::EvalTransfer(cmd) => eval_transfer::run(cmd),
        Command::EvalLrc(cmd) => eval_lrc::run(cmd),
        Command::AnalyzeCov(cmd) => analyze_cov::run(cmd),
        Command::Trajectories(cmd) => figures::run_trajectories(cmd),
        Command::Samples(cmd) => figures::run_samples(cmd),
        Command::Reproduce(cmd) => reproduce::run(*cmd),
        Command::CudaToolkit(cmd) => cuda_toolkit::run(cmd),
        Command::GpuCheck(cmd) => gpu_check::run(cmd),
        Command::GpuSelftest(cmd) => gpu_selftest::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
