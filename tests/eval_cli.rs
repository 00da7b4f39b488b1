//! End-to-end tests of the evaluation commands and `reproduce`, on tiny budgets: every command runs on the
//! embedded MNIST subset and on the 20-image CIFAR-10 sample (`tests/data/cifar10-sample`), and writes the
//! tables and figures it promises.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

mod common;
use common::{err, ok, repo_root, xtask};

use candle_core::{DType, Device};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A PNG file of at least 100×100 pixels.
fn assert_png(path: &Path) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    ));
    let info = decoder.read_info().unwrap();
    let (w, h) = (info.info().width, info.info().height);
    assert!(w >= 100 && h >= 100, "{}: {w}x{h}", path.display());
}

/// The numbers in the Markdown table row that starts with `| name `.
fn row(md: &str, name: &str) -> Vec<f64> {
    let line = md
        .lines()
        .find(|l| l.starts_with(&format!("| {name} ")))
        .unwrap_or_else(|| panic!("no row {name} in\n{md}"));
    line.split('|')
        .skip(2)
        .filter_map(|c| c.replace("**", "").replace("(!)", "").trim().parse().ok())
        .collect()
}

#[test]
fn eval_commands_on_the_mnist_subset() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for (run, method) in [(&a, "clean"), (&b, "gn")] {
        ok(&xtask(&[
            "train",
            "--method",
            method,
            "--train-limit",
            "600",
            "--epochs",
            "1",
            "--pgd-eval-images",
            "0",
            "--test-limit",
            "100",
            "--out",
            s(run),
        ]));
    }
    let out = dir.path().join("wb");
    let wb_args = [
        "eval-whitebox",
        "--checkpoints",
        s(&a),
        s(&b),
        "--test-limit",
        "60",
        "--deepfool-images",
        "10",
        "--masking-images",
        "30",
        "--out",
        s(&out),
    ];
    let md = ok(&xtask(&wb_args));
    for name in ["a", "b"] {
        let r = row(&md, name);
        assert_eq!(r.len(), 6, "{md}"); // TEST RAND FGM FGSM PGD FOOL
        // Attacks only lower accuracy on these models; PGD is at most FGSM (+ tolerance), FOOL is positive.
        assert!(
            r[4] <= r[0] && r[3] <= r[0] + 1e-9 && r[5] > 0.0,
            "{name}: {r:?}"
        );
    }
    assert!(md.contains("first 60 test images"), "{md}");
    for f in ["whitebox.md", "whitebox.csv", "whitebox.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // The same seed gives the same table.
    let again = ok(&xtask(&wb_args));
    assert!(again == md);

    // AutoAttack: a JSON summary whose accuracies fall attack by attack; a finished run is refused without
    // --resume, resumed with the same numbers, and refused with other settings.
    let out = dir.path().join("aa");
    let aa_args = [
        "eval-autoattack",
        "--checkpoints",
        s(&a),
        s(&b),
        "--test-limit",
        "30",
        "--apgd-steps",
        "10",
        "--fab-steps",
        "10",
        "--square-queries",
        "100",
        "--targets",
        "2",
        "--masking-images",
        "20",
        "--json",
        "--out",
        s(&out),
    ];
    let first: serde_json::Value = serde_json::from_str(&ok(&xtask(&aa_args)))?;
    assert_eq!(first["n"], 30);
    assert_eq!(first["eps_255"], 32.0);
    assert_eq!(first["norm"], "linf");
    for name in ["a", "b"] {
        let m = &first["models"][name];
        let mut prev = m["clean"].as_f64().unwrap();
        for attack in ["apgd-ce", "apgd-t", "fab-t", "square"] {
            let v = m[attack]
                .as_f64()
                .unwrap_or_else(|| panic!("{name} {attack}: {m}"));
            assert!((0.0..=prev + 1e-12).contains(&v), "{name} {attack}: {m}");
            prev = v;
        }
        assert_eq!(m["robust"].as_f64().unwrap(), prev);
        assert!(m["seconds"].as_f64().unwrap() > 0.0);
    }
    for f in [
        "autoattack.md",
        "autoattack.csv",
        "autoattack.json",
        "settings.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let refused = err(&xtask(&aa_args));
    assert!(refused.contains("--resume"), "{refused}");
    let mut resume_args = aa_args.to_vec();
    resume_args.push("--resume");
    let resumed: serde_json::Value = serde_json::from_str(&ok(&xtask(&resume_args)))?;
    for name in ["a", "b"] {
        for key in ["clean", "apgd-ce", "apgd-t", "fab-t", "square", "robust"] {
            assert_eq!(
                resumed["models"][name][key], first["models"][name][key],
                "{name} {key}"
            );
        }
    }
    resume_args.extend(["--eps", "64"]);
    let other = err(&xtask(&resume_args));
    assert!(other.contains("other checkpoints or settings"), "{other}");

    let out = dir.path().join("tr");
    // The last flag, --resume, is left out for the plain runs.
    let tr_args = [
        "eval-transfer",
        "--checkpoints",
        s(&a),
        s(&b),
        "--test-limit",
        "50",
        "--pgd-steps",
        "5",
        "--out",
        s(&out),
        "--resume",
    ];
    let plain = &tr_args[..tr_args.len() - 1];
    let md = ok(&xtask(plain));
    assert_eq!(row(&md, "a").len(), 3, "{md}"); // TEST, from a, from b
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("transfer.json"))?)?;
    assert_eq!(json["images"], 50);
    assert_eq!(json["accuracy"].as_array().unwrap().len(), 2);
    // --resume keeps each source's column in OUT/cache/transfer (and its PGD examples in OUT/cache/transfer/adv)
    // and reuses it: a stored column that was edited
    // shows up in the matrix (so it was not recomputed); without --resume the matrix is computed afresh.
    ok(&xtask(&tr_args));
    let column = out.join("cache/transfer/b.json");
    let mut stored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&column)?)?;
    // One cell per target checkpoint: b's examples fed to a, then to b.
    assert_eq!(
        [
            &stored["result"][0]["accuracy"],
            &stored["result"][1]["accuracy"]
        ],
        [&json["accuracy"][0][1], &json["accuracy"][1][1]]
    );
    stored["result"][0]["accuracy"] = serde_json::json!(0.125);
    std::fs::write(&column, stored.to_string())?;
    ok(&xtask(&tr_args));
    let reused: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("transfer.json"))?)?;
    assert_eq!(
        reused["accuracy"][0][1], 0.125,
        "the stored column was not reused"
    );
    assert_eq!(reused["accuracy"][0][0], json["accuracy"][0][0]);
    ok(&xtask(plain));
    let fresh: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("transfer.json"))?)?;
    assert_eq!(fresh["accuracy"], json["accuracy"]);

    let out = dir.path().join("lrc");
    let md = ok(&xtask(&[
        "eval-lrc",
        "--checkpoints",
        s(&a),
        s(&b),
        "--test-limit",
        "30",
        "--draws",
        "3",
        "--zetas",
        "1,8",
        "--eps-list",
        "0.1,0.5",
        "--data-cov-images",
        "500",
        "--out",
        s(&out),
    ]));
    assert!(md.contains("| 8 "), "{md}");
    for f in [
        "fig3_lrc_zeta.png",
        "fig4_lrc_eps.png",
        "fig4_data_cov_eps.png",
    ] {
        assert_png(&out.join(f));
    }

    let out = dir.path().join("cov");
    ok(&xtask(&[
        "analyze-cov",
        "--checkpoint",
        s(&a),
        "--test-limit",
        "20",
        "--data-cov-images",
        "300",
        "--out",
        s(&out),
    ]));
    for f in [
        "fig1_perturbation_covariance.png",
        "fig2_covariance_functions.png",
        "fig5_lrc_covariances.png",
    ] {
        assert_png(&out.join(f));
    }

    let out = dir.path().join("fig");
    ok(&xtask(&[
        "trajectories",
        "--checkpoints",
        s(&b),
        s(&a),
        "--images",
        "2",
        "--out",
        s(&out),
    ]));
    assert_png(&out.join("fig6_trajectories.png"));
    let text = ok(&xtask(&[
        "samples",
        "--checkpoint",
        s(&a),
        "--eps-list",
        "32,64",
        "--out",
        s(&out),
    ]));
    assert!(text.contains("ε = 64/255"), "{text}");
    assert_png(&out.join("fig7_samples.png"));

    // Bad input: a clear error naming the flag or file.
    let bad = xtask(&[
        "eval-whitebox",
        "--checkpoints",
        s(&dir.path().join("nope")),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nope"));
    Ok(())
}

#[test]
fn reproduce_writes_a_report() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("repro");
    let args = [
        "reproduce",
        "--methods",
        "clean,sgr-sign,fgsm",
        "--lrc-methods",
        "clean,sgr-sign",
        "--train-limit",
        "300",
        "--epochs",
        "1",
        "--method-epochs",
        "fgsm=2",
        "--test-limit",
        "20",
        "--deepfool-images",
        "5",
        "--lrc-test-limit",
        "10",
        "--lrc-draws",
        "2",
        "--cov-images",
        "10",
        "--autoattack-images",
        "10",
        "--out",
        s(&out),
    ];
    let md = ok(&xtask(&args));
    let report = std::fs::read_to_string(out.join("report.md"))?;
    assert!(report.starts_with("# Reproduction on mnist-subset") && md.contains("## Budget"));
    for section in [
        "## Budget",
        "## White-box",
        "Beside the paper",
        "transfer accuracy",
        "Fig. 3",
        "Fig. 6",
    ] {
        assert!(report.contains(section), "missing {section}");
    }
    // Transfer matrices at the paper's ε and 2ε (Table 4's 32 and 64), each beside the paper's.
    assert_eq!(
        report.matches("transfer accuracy (%)").count(),
        2,
        "{report}"
    );
    assert!(report.contains("Table 4, ε = 64/255"), "{report}");
    // AutoAttack's section, its state beside each run (where `eval-autoattack --out RUN/autoattack` puts it).
    assert!(report.contains("## AutoAttack robust accuracy"), "{report}");
    assert!(out.join("runs/sgr-sign/autoattack/settings.json").is_file());
    assert!(out.join("eval/autoattack.json").is_file());
    assert!(out.join("eval/transfer-eps64.json").is_file());
    // The paper trained its FGSM and PGD models anew for ε = 64: so does reproduce (by default at every
    // --transfer-eps), and the matrix at 64 uses that model in place of the one trained at 32.
    let fgsm64 = sgr_train::read_record(&out.join("runs/fgsm-eps64"))?;
    assert_eq!(fgsm64.method_options.eps, Some(64.0));
    // --method-epochs: fgsm's runs train 2 epochs, and each table that shows one says so.
    assert_eq!(fgsm64.epochs_done, 2);
    assert_eq!(
        sgr_train::read_record(&out.join("runs/fgsm"))?.epochs_done,
        2
    );
    for note in [
        "Trained for another number of epochs than the other models (1): fgsm (2).",
        "Trained for another number of epochs than the other models (1): fgsm-eps64 (2).",
    ] {
        // fgsm: below the white-box, AutoAttack and ε-32 transfer tables; fgsm-eps64: below ε 64's.
        let times = if note.contains("eps64") { 1 } else { 3 };
        assert_eq!(report.matches(note).count(), times, "{note}\n{report}");
    }
    let tm64: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        out.join("eval/transfer-eps64.json"),
    )?)?;
    let tm32: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        out.join("eval/transfer-eps32.json"),
    )?)?;
    assert_eq!(
        tm64["models"],
        serde_json::json!(["clean", "sgr-sign", "fgsm-eps64"])
    );
    assert_eq!(
        tm32["models"],
        serde_json::json!(["clean", "sgr-sign", "fgsm"])
    );
    assert!(
        report.contains("trained at ε = 64/255 (runs `…-eps64`)"),
        "{report}"
    );
    // TEST RAND FGM FGSM PGD AA FOOL, and the AA column after PGD.
    assert_eq!(row(&report, "sgr-sign").len(), 7, "{report}");
    let header: Vec<&str> = report
        .lines()
        .find(|l| l.starts_with("| TRAIN. METH."))
        .unwrap()
        .split('|')
        .map(str::trim)
        .collect();
    let pgd = header.iter().position(|h| *h == "PGD").unwrap();
    assert_eq!(header[pgd + 1], "AA", "{report}");
    // Every figure the report links exists.
    for link in report
        .split("](")
        .skip(1)
        .filter_map(|r| r.split(')').next())
    {
        if link.ends_with(".png") {
            assert_png(&out.join(link));
        }
    }
    // A second invocation keeps the trained runs (no retraining), reuses each model's white-box row, transfer
    // columns and noise curves (their cache files are not rewritten) and rewrites the same report.
    let cached = [
        "whitebox/sgr-sign.json",
        "transfer-eps32/sgr-sign.json",
        "transfer-eps64/clean.json",
        "lrc/sgr-sign.json",
        "autoattack/sgr-sign.json",
    ]
    .map(|f| out.join("eval/cache").join(f));
    let stamps = cached
        .iter()
        .map(|c| std::fs::metadata(c)?.modified())
        .collect::<std::io::Result<Vec<_>>>()?;
    let md2 = ok(&xtask(&args));
    assert!(!md2.contains("| train clean |"), "retrained:\n{md2}");
    for (c, stamp) in cached.iter().zip(&stamps) {
        assert_eq!(
            &std::fs::metadata(c)?.modified()?,
            stamp,
            "{} recomputed",
            c.display()
        );
    }
    assert_eq!(row(&md2, "sgr-sign"), row(&report, "sgr-sign"));
    // The budget table keeps what the reused results cost when they were computed.
    let stage = |md: &str, what: &str| {
        md.lines()
            .find(|l| l.starts_with(&format!("| {what} |")))
            .map(|l| l.split('|').map(str::trim).nth(3).unwrap_or("").to_string())
    };
    for what in [
        "white-box table",
        "AutoAttack",
        "transfer matrix, ε = 32/255",
        "correlated-noise curves",
    ] {
        assert_eq!(
            stage(&report, what).as_deref(),
            Some("–"),
            "{what}: nothing reused the first time"
        );
        let reused = stage(&md2, what).unwrap_or_default();
        assert!(reused.ends_with(" min"), "{what}: {reused}\n{md2}");
    }
    let section = |r: &str, from: &str| r[r.find(from).unwrap_or(0)..].trim_end().to_string();
    assert_eq!(
        section(&md2, "transfer accuracy"),
        section(&report, "transfer accuracy"),
        "the transfer and noise sections from the cache differ from the computed ones"
    );
    Ok(())
}

/// `--list-runs` plans pgd and fgsm once more per further --transfer-eps (the paper's Table 4), and
/// `--adversarial-eps` with the data set's own ε alone plans them once.
#[test]
fn reproduce_plans_adversarial_runs_per_transfer_eps() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("repro");
    let names = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "reproduce",
            "--methods",
            "clean,pgd,fgsm",
            "--transfer-eps",
            "32,64",
            "--out",
            s(&out),
            "--list-runs",
        ];
        args.extend_from_slice(extra);
        ok(&xtask(&args))
            .lines()
            .filter_map(|l| l.split(" --run ").nth(1).map(str::to_string))
            .collect()
    };
    assert_eq!(
        names(&[]),
        ["clean", "pgd", "pgd-eps64", "fgsm", "fgsm-eps64"]
    );
    assert_eq!(
        names(&["--adversarial-eps", "32"]),
        ["clean", "pgd", "fgsm"]
    );
    let e = err(&xtask(&[
        "reproduce",
        "--adversarial-eps",
        "0",
        "--out",
        s(&out),
        "--list-runs",
    ]));
    assert!(e.contains("--adversarial-eps"), "{e}");
    Ok(())
}

/// Seeds, a λ sweep on a validation split and the split into independent runs: `--list-runs` prints the
/// stages, each printed command trains its run, stage 2 refuses to start before the sweep has finished,
/// `--report-only` refuses unfinished runs (`--partial` reports on the finished ones, naming the others) and then
/// writes the sweep, the chosen λ and the spread over seeds.
#[test]
fn reproduce_splits_into_runs_with_seeds_and_a_lambda_sweep() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("repro");
    let base: Vec<String> = [
        "reproduce",
        "--methods",
        "clean,sgr-sign,sgr-grad",
        "--seeds",
        "0,1",
        "--seeded-methods",
        "clean,sgr-sign",
        "--lambda-sweep",
        "sgr-sign=0.5,2",
        "--sweep-epochs",
        "1",
        // 300 images for one epoch are too few for the paper's 0.1 points to mean anything: admit every λ.
        "--sweep-tolerance",
        "100",
        "--validation",
        "500",
        "--lrc-methods",
        "clean",
        "--train-limit",
        "300",
        "--epochs",
        "1",
        "--test-limit",
        "20",
        "--deepfool-images",
        "4",
        "--lrc-test-limit",
        "8",
        "--lrc-draws",
        "2",
        "--cov-images",
        "10",
        "--autoattack-images",
        "0",
        "--out",
        s(&out),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        xtask(&args)
    };
    let list = ok(&run(&["--list-runs"]));
    let commands: Vec<&str> = list.lines().filter(|l| !l.starts_with('#')).collect();
    let names: Vec<&str> = commands
        .iter()
        .filter_map(|c| c.split(" --run ").nth(1))
        .collect();
    assert_eq!(
        names,
        [
            "sweep/clean-s0",
            "sweep/sgr-sign-l0.5-s0",
            "sweep/sgr-sign-l2-s0",
            "clean-s0",
            "clean-s1",
            "sgr-sign-s0",
            "sgr-sign-s1",
            "sgr-grad-s0"
        ],
        "{list}"
    );
    assert!(
        list.contains("# stage 2")
            && commands
                .last()
                .is_some_and(|c| c.ends_with("--report-only"))
    );
    assert!(
        commands
            .iter()
            .all(|c| c.starts_with("cargo xtask reproduce --methods"))
    );

    // Nothing finished yet: the report and a stage-2 run refuse, naming what is missing.
    let e = err(&run(&["--report-only"]));
    assert!(
        e.contains("8 run(s) not finished") && e.contains("sweep/clean-s0"),
        "{e}"
    );
    let e = err(&run(&["--run", "sgr-sign-s1"]));
    assert!(e.contains("sweep"), "{e}");
    let e = err(&run(&["--run", "nope"]));
    assert!(e.contains("--run nope"), "{e}");

    // An interim report needs the sweep's choice of λ.
    let e = err(&run(&["--report-only", "--partial"]));
    assert!(
        e.contains("--partial") && e.contains("sweep/clean-s0"),
        "{e}"
    );

    // Every printed command, as printed (minus `cargo xtask`), in order; before the last run, an interim report
    // on the finished ones that names the run it leaves out and shows no row of it.
    let exec = |c: &str| {
        let args: Vec<&str> = c.split_whitespace().skip(2).collect();
        ok(&xtask(&args));
    };
    let (last_run, report_cmd) = (commands[commands.len() - 2], commands[commands.len() - 1]);
    assert!(last_run.ends_with("--run sgr-grad-s0"), "{last_run}");
    for c in &commands[..commands.len() - 2] {
        exec(c);
    }
    ok(&run(&["--report-only", "--partial"]));
    let interim = std::fs::read_to_string(out.join("report.md"))?;
    let has_row = |md: &str, name: &str| {
        md.lines()
            .any(|l| l.split('|').nth(1).map(str::trim) == Some(name))
    };
    assert!(
        interim.contains("**Interim report.** 1 planned run had not finished")
            && interim.contains("`sgr-grad-s0`")
            && interim
                .lines()
                .filter(|l| l.contains("sgr-grad-s0"))
                .count()
                == 1
            && has_row(&interim, "sgr-sign-s1")
            && interim
                .lines()
                .find(|l| l.starts_with("Made by"))
                .is_some_and(|l| !l.contains("--partial")),
        "{interim}"
    );
    exec(last_run);
    let sweep = sgr_train::read_record(&out.join("sweep/sgr-sign-l2-s0"))?;
    let fe = sweep.final_eval.expect("PGD on the validation split");
    assert_eq!(
        (sweep.validation_images, fe.split.as_str(), fe.images),
        (500, "validation", 500)
    );
    exec(report_cmd);
    let report = std::fs::read_to_string(out.join("report.md"))?;
    assert!(
        !report.contains("Interim report") && has_row(&report, "sgr-grad-s0"),
        "{report}"
    );
    // Each λ's accuracy gap to the clean model, with its paired noise on the 500 held-out images: the checkpoints
    // run again on the validation split reproduce the accuracies their runs recorded (no mismatch note), and the
    // gap is the discordant images' difference.
    assert!(
        report.contains("vs clean (± paired SE)")
            && report.contains("on the same 500 validation images")
            && !report.contains("disagree with their run.json"),
        "{report}"
    );
    let clean_acc: f64 = report
        .split("clean model at the same budget: ")
        .nth(1)
        .and_then(|r| r.split(" %").next())
        .and_then(|v| v.parse().ok())
        .expect("the clean reference's accuracy");
    for lambda in ["0.5", "2"] {
        let cells: Vec<String> = report
            .lines()
            .map(|l| {
                l.split('|')
                    .map(|c| c.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .find(|c| c.len() > 4 && c[1].trim_end_matches(" ◀") == lambda)
            .unwrap_or_else(|| panic!("no sweep row for λ {lambda}:\n{report}"));
        let acc: f64 = cells[2].trim_end_matches(" %").parse()?;
        let (d, se) = cells[3].split_once(" ± ").expect("d ± se");
        let (d, se): (f64, f64) = (d.parse()?, se.parse()?);
        let (b, c) = cells[4].split_once(" / ").expect("b / c");
        let (b, c): (f64, f64) = (b.parse()?, c.parse()?);
        assert!(
            (d - (acc - clean_acc)).abs() < 0.011,
            "λ {lambda}: {cells:?}"
        );
        assert!(
            (d - 100.0 * (b - c) / 500.0).abs() < 0.006,
            "λ {lambda}: {cells:?}"
        );
        assert!(
            se >= 0.0 && se <= 100.0 * ((b + c) / 500.0).sqrt() / 500f64.sqrt() + 0.006,
            "{cells:?}"
        );
    }
    let chosen: f64 = report
        .split("chosen λ = **")
        .nth(1)
        .and_then(|r| r.split("**").next())
        .and_then(|v| v.parse().ok())
        .expect("a chosen λ in the report");
    assert!(chosen == 0.5 || chosen == 2.0, "{chosen}");
    for (run, lambda) in [("sgr-sign-s1", chosen), ("sgr-grad-s0", chosen * 0.1)] {
        let r = sgr_train::read_record(&out.join("runs").join(run))?;
        let got = r.method_options.lambda.expect("λ");
        assert!(
            (got - lambda).abs() < 1e-12,
            "{run}: λ {got}, expected {lambda}"
        );
        assert_eq!(r.validation_images, 0, "final runs train on every image");
    }
    for section in [
        "## λ sweep",
        "Spread over seeds",
        "--seeds 0,1 ",
        "seeds 0, 1.",
    ] {
        assert!(report.contains(section), "missing {section}:\n{report}");
    }
    for method in ["clean", "sgr-sign"] {
        let spread = report.lines().find(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            cells.len() > 3 && cells[1] == method && cells[2] == "2" && cells[3].contains(" ± ")
        });
        assert!(spread.is_some(), "no spread row for {method}:\n{report}");
    }
    assert_png(&out.join("eval/lambda_sweep.png"));

    // A sweep run kept with its run.json only (checkpoints are large; a published sweep may drop them): its λ
    // loses the paired figure, the report says why, the rest stands.
    std::fs::remove_file(out.join("sweep/sgr-sign-l2-s0/model.safetensors"))?;
    exec(report_cmd);
    let kept_json_only = std::fs::read_to_string(out.join("report.md"))?;
    let lambda2: Vec<&str> = kept_json_only
        .lines()
        .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
        .find(|c| c.len() > 4 && c[1].trim_end_matches(" ◀") == "2")
        .unwrap_or_else(|| panic!("no sweep row for λ 2:\n{kept_json_only}"));
    assert!(
        lambda2[3..5] == ["–", "–"]
            && kept_json_only.contains("No paired error for the λ marked –")
            && kept_json_only.contains("`sweep/sgr-sign-l2-s0`")
            && kept_json_only.contains("vs clean (± paired SE)"),
        "{kept_json_only}"
    );
    std::fs::remove_file(out.join("sweep/clean-s0/model.safetensors"))?;
    exec(report_cmd);
    let unpaired = std::fs::read_to_string(out.join("report.md"))?;
    assert!(
        unpaired.contains("No paired error for this sweep")
            && unpaired.contains("vs clean (± 1 SE)")
            && !unpaired.contains("paired SE"),
        "{unpaired}"
    );

    // A folder holding another run than the plan's (here: trained at another λ, as a final run trained before
    // the sweep's choice changed would be) is neither counted nor resumed: the report and --run refuse, naming it.
    let edit = |run: &str, key: &str, value: serde_json::Value| -> anyhow::Result<()> {
        let file = out.join(run).join("run.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
        let (section, field) = key.split_once('.').unwrap_or(("", key));
        let target = if section.is_empty() {
            &mut v
        } else {
            &mut v[section]
        };
        target[field] = value;
        std::fs::write(&file, serde_json::to_string_pretty(&v)?)?;
        Ok(())
    };
    edit(
        "runs/sgr-sign-s1",
        "method_options.lambda",
        serde_json::json!(chosen * 4.0),
    )?;
    let e = err(&run(&["--report-only"]));
    assert!(
        e.contains("1 planned run folder(s) hold another run")
            && e.contains("sgr-sign-s1")
            && e.contains("--lambda"),
        "{e}"
    );
    let e = err(&run(&["--run", "sgr-sign-s1"]));
    assert!(e.contains("sgr-sign-s1") && e.contains("--lambda"), "{e}");
    edit("sweep/clean-s0", "seed", serde_json::json!(7))?;
    let e = err(&run(&["--report-only"]));
    assert!(
        e.contains("2 planned run folder(s)")
            && e.contains("sweep/clean-s0")
            && e.contains("--seed"),
        "{e}"
    );
    Ok(())
}

#[test]
fn eval_commands_on_the_cifar10_sample() -> TestResult {
    // No CIFAR-10 training set here: a seeded, untrained CIFAR-10 CNN exercises the whole path (loading the
    // binary batches, 3-channel attacks, covariance functions across channels, class names).
    let dir = tempfile::tempdir()?;
    let data: PathBuf = repo_root().join("tests/data/cifar10-sample");
    let mut ckpts = Vec::new();
    for seed in [1, 2] {
        let vm = candle_nn::VarMap::new();
        let cfg = sgr_models::CnnConfig::cifar10();
        sgr_models::init_params(&vm, &cfg, seed, DType::F32, &Device::Cpu)?;
        let p = dir.path().join(format!("cifar-{seed}.safetensors"));
        sgr_models::save_model(&vm, &cfg, &p)?;
        ckpts.push(p);
    }
    let common = ["--dataset", "cifar10", "--data-dir", s(&data)];
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(common);
        args.extend(["--out", s(&out)]);
        ok(&xtask(&args))
    };
    let md = run(&[
        "eval-whitebox",
        "--checkpoints",
        s(&ckpts[0]),
        "--deepfool-images",
        "4",
        "--masking-images",
        "8",
    ]);
    assert!(
        md.contains("cifar10, ε = 4/255, first 20 test images"),
        "{md}"
    );
    run(&[
        "eval-transfer",
        "--checkpoints",
        s(&ckpts[0]),
        s(&ckpts[1]),
        "--pgd-steps",
        "3",
    ]);
    run(&[
        "eval-lrc",
        "--checkpoints",
        s(&ckpts[0]),
        "--draws",
        "2",
        "--zetas",
        "2,8",
        "--eps-list",
        "0.3",
    ]);
    run(&[
        "analyze-cov",
        "--checkpoint",
        s(&ckpts[0]),
        "--test-limit",
        "6",
    ]);
    run(&[
        "trajectories",
        "--checkpoints",
        s(&ckpts[0]),
        "--images",
        "2",
    ]);
    run(&["samples", "--checkpoint", s(&ckpts[0])]);
    for f in [
        "whitebox.md",
        "transfer.md",
        "lrc.md",
        "fig1_perturbation_covariance.png",
        "fig2_covariance_functions.png",
        "fig6_trajectories.png",
        "fig7_samples.png",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    Ok(())
}
