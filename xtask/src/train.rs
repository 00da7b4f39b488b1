//! `train`: the command-line front end of `sgr_train::train`, with a progress bar and Ctrl-C handling.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sgr_data::DatasetName;
use sgr_models::DeviceKind;
use sgr_train::{Event, MethodOptions, Observer, RunStatus, TrainArgs};

use crate::common::{parse_dataset, parse_device, stderr_is_terminal};

#[derive(Debug, Args)]
pub struct TrainCmd {
    /// Training method: clean, wdecay, fgsm, pgd, gn, sgr-grad, sgr-sign, fgsm-sgr, pgd-sgr or lrc
    /// (default clean).
    #[arg(long)]
    method: Option<sgr_train::MethodName>,
    /// The network: paper (the paper's CNN for the data set, default), mnist, cifar10, or a spec of
    /// comma-separated layers after the per-image standardisation, the output layer implied:
    /// conv<C>[-k<K>][-same|-p<P>][-linear] (3×3 valid + ReLU by default), pool (2×2 max), relu, flatten
    /// (implied before the first fc), fc<N>[-linear]; e.g. conv32,conv32,pool,conv64,conv64,pool,fc200,fc200.
    #[arg(long)]
    arch: Option<String>,
    /// mnist-subset (embedded, the default), mnist, fashion-mnist or cifar10.
    #[arg(long, value_parser = parse_dataset)]
    dataset: Option<DatasetName>,
    /// Folder with the data set's files (IDX for MNIST/Fashion-MNIST, binary batches for CIFAR-10).
    /// Without it: the embedded subset for mnist-subset, a hub download otherwise (feature `hub`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Epochs to train in total (default: 12 on mnist-subset, 50 otherwise; on --resume: extends the run).
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Adam learning rate (default 1e-3).
    #[arg(long)]
    lr: Option<f64>,
    /// Learning-rate schedule: constant (the paper; default) or cosine (default on mnist-subset).
    #[arg(long)]
    lr_schedule: Option<sgr_train::LrSchedule>,
    /// Seed for initialisation, data order and augmentation (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Augmentation: none, crop, flip, or crop,flip (default: none for digits, crop,flip for cifar10).
    #[arg(long)]
    augment: Option<String>,
    /// L2 coefficient for --method wdecay (default 2e-4 MNIST, 5e-4 CIFAR-10).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Regularisation strength λ (gn/sgr methods; paper defaults per data set, e.g. sgr-sign 1.0 on MNIST),
    /// or the weight of the perturbed loss for fgsm, pgd and lrc (default 0.5).
    #[arg(long)]
    lambda: Option<f64>,
    /// Perturbation budget in units of 1/255 for fgsm, pgd, fgsm-sgr, pgd-sgr (default 32 MNIST, 4 CIFAR-10)
    /// and the noise scale of lrc (default 76.5, i.e. 0.3).
    #[arg(long)]
    eps: Option<f64>,
    /// PGD iterations for pgd and pgd-sgr (default 10, step ε/5).
    #[arg(long)]
    pgd_steps: Option<usize>,
    /// Σ of the sgr methods: dense (default up to 1,024 pixels), covfun (default above), data, lrc.
    #[arg(long)]
    cov: Option<sgr_train::CovKind>,
    /// Radius of --cov covfun (default 8).
    #[arg(long)]
    cov_radius: Option<usize>,
    /// Project --cov covfun onto the PSD cone before use: true (default) or false (the paper's raw estimate).
    #[arg(long)]
    cov_psd: Option<bool>,
    /// Decay length ζ of --cov lrc and of the lrc method's noise (default 8).
    #[arg(long)]
    zeta: Option<f64>,
    /// EMA rate β of the covariance estimate (default 0.1).
    #[arg(long)]
    beta: Option<f64>,
    /// Second-order gradients of gn/sgr: exact (double backprop), fd (central differences) or fd-forward.
    #[arg(long)]
    second_order: Option<sgr_train::SecondOrderMode>,
    /// Largest pixel displacement of the finite-difference modes (default 1e-3).
    #[arg(long)]
    fd_step: Option<f64>,
    /// Add the uncentred term of eq. 12 (sgr methods).
    #[arg(long)]
    uncentred: bool,
    /// Labels the perturbations ξ are made for: true or predicted (default: true for sgr-grad/sgr-sign,
    /// predicted for fgsm-sgr/pgd-sgr).
    #[arg(long)]
    xi_labels: Option<sgr_train::XiLabels>,
    /// The mean diagonal Σ is scaled to (default: the training set's mean pixel variance, Algorithm 1).
    #[arg(long)]
    scale_to: Option<f64>,
    /// Test images for the PGD check after training (default 1000; 0 skips it).
    #[arg(long)]
    pgd_eval_images: Option<usize>,
    /// Use only the first N training images.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    test_limit: Option<usize>,
    /// Hold out the last N training images (e.g. 5000 on MNIST) and measure each epoch's accuracy and the
    /// final PGD check on them instead of the test set: for choosing λ without looking at the test set.
    #[arg(long)]
    validation: Option<usize>,
    /// Output folder (default runs/<dataset>-<method>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out where it stopped.
    #[arg(long)]
    resume: bool,
    /// Save within epochs: every N steps (e.g. 200) or after a time (30s, 10m, 1h; default 10m). Each epoch's
    /// end always saves. Any checkpoint resumes bit-identically, also after the process was killed.
    #[arg(long)]
    checkpoint_every: Option<sgr_train::CheckpointEvery>,
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: DeviceKind,
    /// f32 (default) or f64.
    #[arg(long)]
    dtype: Option<sgr_train::FloatType>,
    /// Run on candle's own layers and autograd (double backprop for exact gn/sgr) instead of the fast
    /// channels-last CPU ops with explicit gradients: the same numbers up to rounding, several times
    /// slower; for comparing the two (other devices always use candle's layers).
    #[arg(long)]
    plain_ops: bool,
}

/// Draws training progress: a bar on a terminal, epoch lines in the log.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new() -> Self {
        let bar = stderr_is_terminal().then(|| {
            let bar = ProgressBar::new(1);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        });
        Self { bar }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A flag Ctrl-C sets: the loop finishes its step, saves and stops. A second Ctrl-C exits at once.
pub fn interrupt_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without saving the step in progress");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing this step and saving (press Ctrl-C again to abort)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

impl Observer for Progress {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start {
                record,
                epoch,
                batch,
                batches,
            } => {
                tracing::info!(
                    method = %record.method, dataset = %record.dataset, train = record.train_images,
                    test = record.test_images, epochs = record.epochs, augment = %record.augment.describe(),
                    "{} at epoch {}, batch {batch}/{batches}", if record.steps_done > 0 { "resuming" } else { "starting" }, epoch + 1
                );
            }
            Event::Step {
                epoch,
                batch,
                batches,
                loss,
                accuracy,
                images_per_second,
            } => {
                if let Some(bar) = &self.bar {
                    if batch == 1 || bar.length() != Some(batches as u64) {
                        bar.set_length(batches as u64);
                        bar.set_prefix(format!("epoch {}", epoch + 1));
                    }
                    bar.set_position(batch as u64);
                    bar.set_message(format!(
                        "loss {loss:.4} acc {:.3} {images_per_second:.0} img/s",
                        accuracy
                    ));
                }
            }
            Event::Epoch {
                record,
                epochs,
                split,
            } => {
                if let Some(bar) = &self.bar {
                    bar.reset();
                }
                let extra: String = record
                    .metrics
                    .iter()
                    .map(|(k, v)| format!(" {k}={v:.4}"))
                    .collect();
                let line = format!(
                    "epoch {}/{epochs}: loss {:.4} train acc {:.4} {} acc {:.4} ({:.0} img/s, {:.1} s){extra}",
                    record.epoch,
                    record.loss,
                    record.train_accuracy,
                    if split == "test" { "test" } else { "val" },
                    record.test_accuracy,
                    record.images_per_second,
                    record.seconds
                );
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => tracing::info!("{line}"),
                }
            }
            Event::Interrupted { record } => {
                tracing::info!(
                    "stopped after {} steps; checkpoint saved, continue with --resume",
                    record.steps_done
                );
            }
        }
    }
}

pub fn run(cmd: TrainCmd) -> anyhow::Result<()> {
    let out = cmd.out.clone().unwrap_or_else(|| {
        let ds = cmd.dataset.unwrap_or(DatasetName::MnistSubset);
        PathBuf::from("runs").join(format!(
            "{ds}-{}",
            cmd.method.unwrap_or(sgr_train::MethodName::Clean)
        ))
    });
    let args = TrainArgs {
        method: cmd.method,
        arch: cmd.arch,
        method_options: MethodOptions {
            weight_decay: cmd.weight_decay,
            lambda: cmd.lambda,
            eps: cmd.eps,
            pgd_steps: cmd.pgd_steps,
            cov: cmd.cov,
            cov_radius: cmd.cov_radius,
            cov_psd: cmd.cov_psd,
            zeta: cmd.zeta,
            beta: cmd.beta,
            second_order: cmd.second_order,
            fd_step: cmd.fd_step,
            uncentred: cmd.uncentred.then_some(true),
            xi_labels: cmd.xi_labels,
            scale_to: cmd.scale_to,
        },
        dataset: cmd.dataset,
        data_dir: cmd.data_dir,
        epochs: cmd.epochs,
        batch_size: cmd.batch_size,
        lr: cmd.lr,
        lr_schedule: cmd.lr_schedule,
        seed: cmd.seed,
        augment: cmd.augment,
        train_limit: cmd.train_limit,
        test_limit: cmd.test_limit,
        validation: cmd.validation,
        device: cmd.device,
        dtype: cmd.dtype,
        pgd_eval_images: cmd.pgd_eval_images,
        plain_ops: cmd.plain_ops,
        checkpoint_every: cmd.checkpoint_every,
    };

    let stop = interrupt_flag()?;
    let mut progress = Progress::new();
    let record = sgr_train::train(args, &out, cmd.resume, &stop, &mut progress)
        .with_context(|| format!("training into {}", out.display()))?;
    progress.finish();
    let acc = record
        .final_test_accuracy()
        .map(|a| format!("{:.2} %", 100.0 * a))
        .unwrap_or_else(|| "n/a".into());
    match record.status {
        RunStatus::Complete => {
            println!(
                "done: {} on {} for {} epochs; {} accuracy {acc} on {} images; checkpoint {}",
                record.method,
                record.dataset,
                record.epochs_done,
                record.eval_split(),
                record.eval_images(),
                out.join(sgr_train::MODEL_FILE).display()
            );
            if let Some(omega) = record.history.last().and_then(|e| e.metrics.get("omega")) {
                println!(
                    "regularizer Ω (mean over the last epoch): {omega:.6}; λ = {}",
                    record.method_options.lambda.unwrap_or(0.0)
                );
            }
            if let Some(f) = &record.final_eval {
                println!(
                    "{} at ε = {}/255: accuracy {:.2} % on the first {} {} images (clean {:.2} %)",
                    f.attack,
                    f.eps_255,
                    100.0 * f.pgd_accuracy,
                    f.images,
                    f.split,
                    100.0 * f.clean_accuracy
                );
            }
        }
        _ => println!(
            "stopped after epoch {} (step {}); test accuracy so far {acc}; resume with: cargo xtask train --out {} --resume",
            record.epochs_done,
            record.steps_done,
            out.display()
        ),
    }
    Ok(())
}
