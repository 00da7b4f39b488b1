//! End-to-end tests of the `cargo xtask` command line, run against the built binary.
//!
//! The PyTorch-compatibility check needs `python3` with `numpy` and `safetensors` (`.ci/run` installs them);
//! set `SGR_PYTHON` to use another interpreter. Where torch is installed too, it also loads the checkpoint
//! into a real `torch.nn.Module`.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`

use std::path::Path;
use std::process::Command;

mod common;
use common::{err, ok, repo_root, xtask};

use candle_core::{DType, Device, Module, Tensor};
use sgr_data::{DatasetName, Split};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn python() -> String {
    std::env::var("SGR_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `∇_x Σ_i log softmax(f(x_i))[y_i]` by candle's autograd, on the channels-last ops or candle's layers.
fn input_gradient(model: &sgr_models::Cnn, plain: bool, x: &Tensor, y: &Tensor) -> Tensor {
    let mut net = model.clone();
    net.set_plain_ops(plain);
    sgr_regularizers::input_gradient(&net, x, y, false)
        .unwrap()
        .grad
}

/// Writes the first `n` test images with sgr's logits and input gradients (both code paths) for them, then
/// runs the numpy/PyTorch oracle (which differentiates the network by hand and by torch's autograd).
fn check_pytorch_compat(run: &Path, n: usize) {
    let (model, _) =
        sgr_models::load_model(&run.join("model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let test = sgr_data::load_split(DatasetName::MnistSubset, None, Split::Test).unwrap();
    let (x, y) = test.range(0, n, DType::F32, &Device::Cpu).unwrap();
    let logits = model.forward(&x).unwrap();
    let grad = input_gradient(&model, false, &x, &y);
    let grad_plain = input_gradient(&model, true, &x, &y);
    let fixture = run.join("compat-fixture.safetensors");
    let tensors: std::collections::HashMap<String, Tensor> = [
        ("x".to_string(), x),
        ("logits".to_string(), logits),
        ("y".to_string(), y),
        ("grad".to_string(), grad),
        ("grad_candle_layers".to_string(), grad_plain),
    ]
    .into();
    candle_core::safetensors::save(&tensors, &fixture).unwrap();
    let script = repo_root().join("tests/pytorch_compat.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(run.join("model.safetensors"))
        .arg(&fixture)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} {}: {e}; install Python 3 or set SGR_PYTHON",
                python(),
                script.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "PyTorch-compatibility check failed: {stdout}\n{stderr}\n(needs `pip install numpy safetensors`; see README)"
    );
    eprintln!("pytorch_compat: {stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["n"], n);
    assert_eq!(report["ok"], true);
    for key in ["numpy_grad_rel_error", "numpy_grad_candle_layers_rel_error"] {
        assert!(report[key].as_f64().unwrap() < 1e-3, "{key}: {stdout}");
    }
}

#[test]
fn default_clean_and_sgr_sign_training_reach_their_accuracy_and_load_in_pytorch() -> TestResult {
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("clean");
    let run_s = run.to_str().unwrap();
    // The README's command with nothing but an output folder.
    let stdout = ok(&xtask(&["train", "--method", "clean", "--out", run_s]));
    assert!(stdout.contains("test accuracy"), "{stdout}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json"))?)?;
    assert_eq!(record["status"], "complete");
    assert_eq!(record["dataset"], "mnist-subset");
    assert_eq!(record["test_images"], 1000);
    let acc = record["history"].as_array().unwrap().last().unwrap()["test_accuracy"]
        .as_f64()
        .unwrap();
    assert!(
        acc >= 0.97,
        "clean training on the embedded subset reached {acc}"
    );

    // eval --json agrees with the run's own last measurement.
    let stdout = ok(&xtask(&["eval", "--checkpoint", run_s, "--json"]));
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("one JSON object on stdout");
    assert_eq!(v["n"], 1000);
    assert!((v["accuracy"].as_f64().unwrap() - acc).abs() < 1e-12);
    // The model file alone works too.
    let file = run.join("model.safetensors");
    let stdout = ok(&xtask(&[
        "eval",
        "--checkpoint",
        file.to_str().unwrap(),
        "--json",
        "--test-limit",
        "100",
    ]));
    let v: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(v["n"], 100);

    check_pytorch_compat(&run, 200);

    // Running again into the same folder does not overwrite it.
    let before = std::fs::read(&file)?;
    let msg = err(&xtask(&["train", "--method", "clean", "--out", run_s]));
    assert!(msg.contains("--resume"), "{msg}");
    assert!(
        before == std::fs::read(&file)?,
        "the checkpoint was overwritten"
    );

    // The README's main command: SGR-sign with every default. It keeps accuracy and is more robust to the
    // same PGD attack than the clean model above.
    let sgr = dir.path().join("sgr-sign");
    let stdout = ok(&xtask(&[
        "train",
        "--method",
        "sgr-sign",
        "--out",
        sgr.to_str().unwrap(),
    ]));
    eprintln!("{stdout}");
    assert!(stdout.contains("regularizer Ω"), "{stdout}");
    assert!(
        stdout.contains("PGD-10") && stdout.contains("32/255"),
        "{stdout}"
    );
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sgr.join("run.json"))?)?;
    let o = &rec["method_options"];
    assert_eq!(o["lambda"], 1.0);
    assert_eq!(o["second_order"], "exact");
    assert_eq!(o["cov"], "dense");
    assert!((o["scale_to"].as_f64().unwrap() - 0.0671).abs() < 1e-3);
    let sgr_acc = rec["history"].as_array().unwrap().last().unwrap()["test_accuracy"]
        .as_f64()
        .unwrap();
    assert!(
        sgr_acc >= 0.95,
        "sgr-sign on the embedded subset reached {sgr_acc}"
    );
    let omega = rec["history"].as_array().unwrap().last().unwrap()["metrics"]["omega"]
        .as_f64()
        .unwrap();
    assert!(omega > 0.0);
    let sgr_pgd = rec["final_eval"]["pgd_accuracy"].as_f64().unwrap();
    let clean_pgd = record_pgd(&run);
    eprintln!("PGD-10 at 32/255: clean {clean_pgd}, sgr-sign {sgr_pgd}");
    assert!(
        sgr_pgd > clean_pgd,
        "sgr-sign PGD accuracy {sgr_pgd} is not above the clean model's {clean_pgd}"
    );
    Ok(())
}

fn record_pgd(run: &Path) -> f64 {
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(rec["final_eval"]["images"], 1000);
    assert_eq!(rec["final_eval"]["eps_255"], 32.0);
    rec["final_eval"]["pgd_accuracy"].as_f64().unwrap()
}

#[test]
fn resume_from_the_command_line_extends_a_run() -> TestResult {
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("r");
    let run_s = run.to_str().unwrap();
    let small = [
        "--train-limit",
        "256",
        "--test-limit",
        "64",
        "--batch-size",
        "64",
    ];
    let mut args = vec![
        "train", "--method", "wdecay", "--epochs", "1", "--out", run_s,
    ];
    args.extend(small);
    ok(&xtask(&args));
    ok(&xtask(&[
        "train", "--out", run_s, "--resume", "--epochs", "2",
    ]));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json"))?)?;
    assert_eq!(record["epochs_done"], 2);
    assert_eq!(record["steps_done"], 8);
    assert_eq!(record["method"], "wdecay");
    assert_eq!(record["method_options"]["weight_decay"], 2e-4);
    assert_eq!(record["train_images"], 256);
    let msg = err(&xtask(&[
        "train", "--out", run_s, "--resume", "--seed", "9",
    ]));
    assert!(msg.contains("--seed") && msg.contains('9'), "{msg}");
    Ok(())
}

#[test]
fn bad_input_gives_one_clear_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("x");
    let out_s = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["train", "--dataset", "imagenet", "--out", out_s],
            vec!["imagenet", "mnist-subset"],
        ),
        (
            vec!["train", "--dataset", "mnist", "--out", out_s],
            vec!["mnist", "--data-dir"],
        ),
        (
            vec![
                "train",
                "--dataset",
                "mnist",
                "--data-dir",
                "/no/such/dir",
                "--out",
                out_s,
            ],
            vec!["/no/such/dir"],
        ),
        (
            vec!["train", "--method", "nonsense", "--out", out_s],
            vec!["nonsense", "clean"],
        ),
        (
            vec!["train", "--augment", "rotate", "--out", out_s],
            vec!["rotate"],
        ),
        (
            vec!["train", "--device", "tpu", "--out", out_s],
            vec!["tpu"],
        ),
        (
            vec!["eval", "--checkpoint", "/no/such/model.safetensors"],
            vec!["/no/such/model.safetensors"],
        ),
    ];
    for (args, needles) in cases {
        let msg = err(&xtask(&args));
        for n in needles {
            assert!(msg.contains(n), "{args:?}: '{n}' not in: {msg}");
        }
        assert!(!msg.contains("panicked"), "{args:?}: {msg}");
    }
    if !cfg!(feature = "cuda") {
        let msg = err(&xtask(&[
            "train", "--device", "cuda", "--out", out_s, "--epochs", "1",
        ]));
        assert!(msg.to_lowercase().contains("cuda"), "{msg}");
    }
    Ok(())
}

#[test]
fn ctrl_c_saves_and_the_run_resumes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("r");
    let run_s = run.to_str().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "train",
            "--train-limit",
            "640",
            "--test-limit",
            "64",
            "--batch-size",
            "32",
            "--epochs",
            "50",
            "--out",
            run_s,
        ])
        .env("SGR_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Wait for the first checkpoint (written before the first step), then a little training.
    let start = std::time::Instant::now();
    while !run.join("run.json").is_file() && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("--resume"), "{stdout}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json"))?)?;
    assert_eq!(record["status"], "interrupted");
    let steps = record["steps_done"].as_u64().unwrap();
    assert!(steps > 0 && steps < 50 * 20, "stopped after {steps} steps");
    // Resume for one more epoch's worth and finish.
    ok(&xtask(&[
        "train",
        "--out",
        run_s,
        "--resume",
        "--epochs",
        &(record["epochs_done"].as_u64().unwrap() + 1).to_string(),
    ]));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json"))?)?;
    assert_eq!(record["status"], "complete");
    Ok(())
}

/// `--arch`: networks off the paper's path train on the fast exact path (sgr-sign: double backprop written
/// out), record their spec, reload from the checkpoint alone and mean the same network to numpy and PyTorch.
#[test]
fn other_architectures_train_record_their_spec_and_load_in_pytorch() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for (name, spec) in [
        ("lenet", "conv6-k5-same,pool,conv16-k5,pool,fc120,fc84"),
        ("mlp", "fc64,fc32"),
    ] {
        let run = dir.path().join(name);
        let run_s = run.to_str().unwrap_or_default();
        #[rustfmt::skip]
        let stdout = ok(&xtask(&[
            "train", "--method", "sgr-sign", "--arch", spec, "--epochs", "1", "--train-limit", "512",
            "--test-limit", "200", "--pgd-eval-images", "0", "--out", run_s,
        ]));
        assert!(stdout.contains("done: sgr-sign"), "{stdout}");
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("run.json"))?)?;
        assert_eq!(record["arch"], spec);
        let (model, _) = sgr_models::load_model(&run, DType::F32, &Device::Cpu)?;
        assert_eq!(model.config().spec(), spec);
        check_pytorch_compat(&run, 100);
        // Resuming with another network is refused, naming the flag.
        #[rustfmt::skip]
        let msg = err(&xtask(&[
            "train", "--out", run_s, "--resume", "--epochs", "2", "--arch", "fc10",
        ]));
        assert!(msg.contains("--arch"), "{msg}");
    }
    // A bad spec names the flag and the layer.
    let msg = err(&xtask(&[
        "train",
        "--arch",
        "conv8,dense4",
        "--out",
        dir.path().join("bad").to_str().unwrap_or_default(),
    ]));
    assert!(msg.contains("--arch") && msg.contains("'dense4'"), "{msg}");
    Ok(())
}

/// `--checkpoint-every`: a run killed with SIGKILL at random moments, many times per epoch, still makes
/// progress, and once finished equals an uninterrupted run bit for bit (the model, and Adam's and Σ̂'s state).
#[test]
fn runs_killed_at_random_moments_resume_to_the_same_bytes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (straight, killed) = (dir.path().join("straight"), dir.path().join("killed"));
    #[rustfmt::skip]
    let args = |out: &Path| -> Vec<String> {
        ["train", "--method", "sgr-sign", "--epochs", "2", "--train-limit", "1280", "--batch-size", "64",
         "--test-limit", "100", "--pgd-eval-images", "0", "--checkpoint-every", "1", "--out"]
            .iter().map(|s| s.to_string()).chain([out.display().to_string()]).collect()
    };
    let a = args(&straight);
    ok(&xtask(&a.iter().map(String::as_str).collect::<Vec<_>>()));

    // Kill after a pseudo-random 0.3–1.3 s, again and again, resuming each time. On a loaded machine a window
    // may pass before the first step is saved: after an attempt that saved nothing the window doubles (up to
    // 32×), so the test measures resumption, not the machine's speed.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let (mut kills, mut finished, mut scale) = (0, false, 1u64);
    let saved = || std::fs::read(killed.join("run.json")).unwrap_or_default();
    for _ in 0..200 {
        let before = saved();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(args(&killed)).env("SGR_LOG", "warn");
        if killed.join("run.json").exists() {
            cmd.arg("--resume");
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let wait = std::time::Duration::from_millis((300 + state % 1000) * scale);
        let start = std::time::Instant::now();
        while start.elapsed() < wait && child.try_wait()?.is_none() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut stderr)?;
            }
            assert!(status.success(), "a resumed run failed: {stderr}");
            finished = true;
            break;
        }
        child.kill()?; // SIGKILL on Unix
        child.wait()?;
        kills += 1;
        scale = if saved() == before {
            (scale * 2).min(32)
        } else {
            1
        };
    }
    assert!(finished, "no progress after {kills} kills");
    eprintln!("finished after {kills} kills");
    assert!(
        kills >= 3,
        "the run should have been killed several times ({kills})"
    );
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            std::fs::read(straight.join(file))? == std::fs::read(killed.join(file))?,
            "{file} differs from the uninterrupted run's"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(&killed)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".next-") || n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "pending files left: {leftovers:?}");
    Ok(())
}

/// `gpu-check` as a dry run on the CPU (the device side on candle's layers and the conv2d Σv, the path GPUs
/// take for the models): every step runs and report.md shows them; a step that fails fails the command and
/// is marked in the report. `cuda-toolkit` refuses releases it cannot lay out, naming the flag.
#[test]
fn gpu_check_dry_run_on_the_cpu_reports_every_step() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("gc");
    let out_s = out.to_str().unwrap_or_default();
    ok(&xtask(&[
        "gpu-check",
        "--device",
        "cpu",
        "--quick",
        "--out",
        out_s,
    ]));
    let report = std::fs::read_to_string(out.join("report.md"))?;
    for row in [
        "| selftest | ok",
        "| train-short | ok",
        "| train-short-cpu | ok",
        "| mnist-epoch | not run",
    ] {
        assert!(report.contains(row), "{row} missing from:\n{report}");
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        out.join("selftest/selftest.json"),
    )?)?;
    let checks = json["checks"].as_array().cloned().unwrap_or_default();
    assert!(checks.len() > 50, "{} checks", checks.len());
    assert!(checks.iter().all(|c| c["passed"] == true));
    assert!(out.join("selftest/matvec-timings.png").exists());
    // The same seeded run on the same path twice gives the same loss and accuracies (times differ).
    let line = |name: &str| {
        report
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(", loss").nth(1))
            .map(str::to_string)
    };
    assert_eq!(
        line("Short SGR-sign run on the device"),
        line("The same run on the CPU")
    );

    // A binary that fails every step.
    let bad = dir.path().join("bad");
    let e = err(&xtask(&[
        "gpu-check",
        "--device",
        "cpu",
        "--quick",
        "--binary",
        "/bin/false",
        "--out",
        bad.to_str().unwrap_or_default(),
    ]));
    assert!(e.contains("failed steps: selftest"), "{e}");
    let report = std::fs::read_to_string(bad.join("report.md"))?;
    assert!(report.contains("| selftest | FAILED"), "{report}");

    let e = err(&xtask(&["cuda-toolkit", "--cuda", "12.4", "--dir", out_s]));
    assert!(e.contains("--cuda 12.4") && e.contains("13.0"), "{e}");
    Ok(())
}
