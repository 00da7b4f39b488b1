//! Table layout (golden files), figures' numbers, and that every plot is a readable PNG.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use sgr_eval::figures::{centre_crop, covariance_curves, one_per_class, trajectories};
use sgr_eval::plot::{Heatmap, LinePanel, Series, Tile, heatmaps, image_grid, line_chart};
use sgr_eval::{Check, MaskingReport, Named, TransferMatrix, WhiteboxRow, whitebox_table};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert!(
        actual == expected,
        "{name} changed (UPDATE_GOLDEN=1 rewrites it):\n{actual}"
    );
}

fn row(model: &str, acc: [f64; 5], rho: f64, failed: bool) -> WhiteboxRow {
    WhiteboxRow {
        model: model.into(),
        images: 1000,
        eps: 32.0 / 255.0,
        test: acc[0],
        rand: acc[1],
        fgm: acc[2],
        fgsm: acc[3],
        pgd: acc[4],
        fool_rho: rho,
        fool_images: 1000,
        aa: None,
        aa_images: 0,
        masking: MaskingReport {
            images: 1000,
            eps_curve: vec![],
            steps_curve: vec![],
            checks: vec![Check {
                name: "PGD at ε = 255/255 reaches ~0 %".into(),
                passed: !failed,
                detail: String::new(),
            }],
        },
    }
}

#[test]
fn whitebox_markdown_and_csv_layout() -> TestResult {
    let rows = [
        row("clean", [0.994, 0.994, 0.98, 0.891, 0.448], 0.159, false),
        row(
            "sgr-sign",
            [0.995, 0.995, 0.995, 0.949, 0.8951],
            0.30149,
            true,
        ),
    ];
    let t = whitebox_table(&rows);
    golden("whitebox.md", &t.to_markdown());
    golden("whitebox.csv", &t.to_csv());
    Ok(())
}

#[test]
fn transfer_markdown_layout() -> TestResult {
    let m = TransferMatrix {
        models: vec!["clean".into(), "sgr-sign".into()],
        images: 1000,
        eps: 32.0 / 255.0,
        steps: 40,
        test: vec![0.994, 0.995],
        accuracy: vec![vec![0.247, 0.957], vec![0.988, 0.869]],
        checks: vec![],
    };
    golden("transfer.md", &m.table().to_markdown());
    assert_eq!(
        m.plain_table().to_csv(),
        "TRAIN. METH.,TEST,clean,sgr-sign\nclean,99.4,24.7,95.7\nsgr-sign,99.5,98.8,86.9\n"
    );
    // A transfer entry below the row's white-box accuracy is marked.
    let mut bad = m.clone();
    bad.accuracy[1][0] = 0.5;
    assert!(bad.table().to_markdown().contains("**50.0** (!)"));
    Ok(())
}

#[test]
fn centre_crop_keeps_the_middle_half() -> TestResult {
    // 8×8 matrix with entry (i, j) = 10·i + j: rows and columns 2..6 remain.
    let m: Vec<f64> = (0..64).map(|k| (10 * (k / 8) + k % 8) as f64).collect();
    let (c, n) = centre_crop(&m, 8);
    assert_eq!(n, 4);
    assert_eq!(&c[..4], &[22.0, 23.0, 24.0, 25.0]);
    assert_eq!(&c[12..], &[52.0, 53.0, 54.0, 55.0]);
    Ok(())
}

#[test]
fn covariance_curves_of_channel_copies() -> TestResult {
    // Three identical channels: every inter-channel curve equals the intra-channel ones.
    let plane = sgr_testutil::rand_tensor(&[6, 1, 5, 5], 3, -1.0, 1.0);
    let xi = Tensor::cat(&[&plane, &plane, &plane], 1)?;
    let c = covariance_curves("copies", &xi, 3)?;
    assert_eq!(c.curves.len(), 6); // 3 intra + 3 inter
    let intra = &c.curves[0].2;
    for (a, b, f) in &c.curves {
        assert_eq!(f.len(), 4, "({a}, {b})");
        for (u, v) in f.iter().zip(intra) {
            assert!((u - v).abs() < 1e-12);
        }
    }
    // f(0) is the mean squared entry.
    let ms = plane.sqr()?.mean_all()?.to_scalar::<f64>()?;
    assert!((intra[0] - ms).abs() < 1e-12);
    Ok(())
}

#[test]
fn trajectory_at_zero_is_the_clean_softmax() -> TestResult {
    let (cnn, _vars) = sgr_testutil::model(sgr_testutil::tiny_config(1), 5, DType::F32);
    let x = sgr_testutil::rand_tensor(&[3, 1, 16, 16], 9, 0.0, 1.0).to_dtype(DType::F32)?;
    let y = Tensor::new(&[0u32, 1, 2], &Device::Cpu)?;
    let ts = [-1.0, 0.0, 1.0];
    let tr = trajectories(
        Named {
            name: "tiny",
            model: &cnn,
        },
        &x,
        &y,
        0.1,
        &ts,
    )?;
    assert_eq!(tr.len(), 3);
    let clean = candle_nn::ops::softmax(&cnn.forward(&x)?, 1)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    for (i, t) in tr.iter().enumerate() {
        assert_eq!(t.probs.len(), 3);
        for (a, b) in t.probs[1].iter().zip(&clean[i]) {
            assert!((a - b).abs() < 1e-6);
        }
        for p in &t.probs {
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        }
    }
    let y = Tensor::new(&[3u32, 1, 3, 0, 1], &Device::Cpu)?;
    assert_eq!(one_per_class(&y, 4)?, vec![3, 1, 0]);
    Ok(())
}

/// Reads a PNG: (width, height, fraction of pixels that are not white).
fn png_info(path: &Path) -> (u32, u32, f64) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bpp = info.line_size / info.width as usize;
    let px = &buf[..info.buffer_size()];
    let inked = px
        .chunks(bpp)
        .filter(|p| p.iter().take(3).any(|&v| v < 250))
        .count();
    (
        info.width,
        info.height,
        inked as f64 / (info.width * info.height) as f64,
    )
}

#[test]
fn plots_are_png_files_with_content() -> TestResult {
    let dir = tempfile::tempdir()?;
    let chart = dir.path().join("chart.png");
    line_chart(
        &chart,
        &LinePanel {
            title: "accuracy vs ζ".into(),
            x_label: "ζ".into(),
            y_label: "accuracy".into(),
            series: vec![
                Series {
                    label: "clean".into(),
                    points: vec![(1.0, 0.9), (2.0, 0.7), (4.0, 0.5)],
                },
                Series {
                    label: "sgr-sign".into(),
                    points: vec![(1.0, 0.95), (2.0, 0.9), (4.0, 0.8)],
                },
            ],
            y_range: (0.0, 1.0),
            legend: true,
        },
    )?;
    let (w, h, ink) = png_info(&chart);
    assert_eq!((w, h), (640, 440));
    assert!(ink > 0.01 && ink < 0.5, "{ink}");

    let maps = dir.path().join("maps.png");
    let m = Heatmap {
        title: "identity".into(),
        values: (0..16).map(|k| f64::from(k % 5 == 0)).collect(),
        n: 4,
    };
    heatmaps(&maps, "two maps", &[m.clone(), m])?;
    let (_, _, ink) = png_info(&maps);
    assert!(ink > 0.05, "{ink}");

    let grid = dir.path().join("grid.png");
    let tile = Tile {
        pixels: (0..3 * 4 * 4).map(|k| (k % 7) as f32 / 7.0).collect(),
        shape: (3, 4, 4),
        caption: "cat".into(),
    };
    image_grid(&grid, "grid", &[("row".into(), vec![tile.clone(), tile])])?;
    let (_, _, ink) = png_info(&grid);
    assert!(ink > 0.05, "{ink}");

    // A path that cannot be written is an error naming it, not a panic.
    let bad = dir.path().join("missing-dir").join("x.png");
    let err = line_chart(
        &bad,
        &LinePanel {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            series: vec![],
            y_range: (0.0, 1.0),
            legend: false,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("missing-dir"), "{err}");
    Ok(())
}

/// Writes example figures to `$SGR_EVAL_PLOT_DIR` for looking at them (no assertions beyond success).
#[test]
fn example_figures_for_inspection() -> TestResult {
    let Some(dir) = std::env::var_os("SGR_EVAL_PLOT_DIR") else {
        return Ok(());
    };
    let dir = Path::new(&dir);
    let (cnn, _vars) = sgr_testutil::model(sgr_testutil::tiny_config(1), 5, DType::F32);
    let x = sgr_testutil::rand_tensor(&[4, 1, 16, 16], 9, 0.0, 1.0).to_dtype(DType::F32)?;
    let y = Tensor::new(&[0u32, 1, 2, 3], &Device::Cpu)?;
    let tr = trajectories(
        Named {
            name: "tiny",
            model: &cnn,
        },
        &x,
        &y,
        0.1,
        &[-5.0, -2.5, 0.0, 2.5, 5.0],
    )?;
    sgr_eval::figures::plot_trajectories(
        &dir.join("traj.png"),
        0.1,
        &[tr.clone(), tr],
        &["a", "b", "c", "d", "e"],
    )?;
    sgr_eval::figures::samples(
        &dir.join("samples.png"),
        Named {
            name: "tiny",
            model: &cnn,
        },
        &x,
        &y,
        &[0.1, 0.2],
        &["a", "b", "c", "d", "e"],
    )?;
    let data = sgr_testutil::rand_tensor(&[50, 1, 16, 16], 2, 0.0, 1.0).to_dtype(DType::F32)?;
    sgr_eval::figures::analyze_covariance(&cnn, &x, &y, &data, 0.1, 4, 6, dir)?;
    Ok(())
}

#[test]
fn whitebox_table_shows_autoattack_after_pgd_where_run() -> TestResult {
    let mut with = row("sgr-sign", [0.995, 0.995, 0.995, 0.949, 0.8951], 0.3, false);
    with.aa = Some(0.8123);
    with.aa_images = 1000;
    let without = row("clean", [0.994, 0.994, 0.98, 0.891, 0.448], 0.159, false);
    let t = whitebox_table(&[with, without]);
    let pgd = t.header.iter().position(|h| h == "PGD").unwrap();
    assert_eq!(t.header[pgd + 1], "AA");
    assert_eq!(t.rows[0][pgd + 1], "81.2");
    assert_eq!(t.rows[1][pgd + 1], "–");
    // Without any AutoAttack run the paper's layout is unchanged.
    let plain = whitebox_table(&[row(
        "clean",
        [0.994, 0.994, 0.98, 0.891, 0.448],
        0.159,
        false,
    )]);
    assert!(!plain.header.iter().any(|h| h == "AA"));
    Ok(())
}

/// The correlated-noise evaluation: one curve per model and figure, one point per setting; at ε = 0 every
/// draw is the clean image, so the worst-of-N accuracy is the clean accuracy, counted here directly; bad
/// noise scales are refused.
#[test]
fn lrc_evaluation_at_zero_noise_is_clean_accuracy() -> anyhow::Result<()> {
    let (a, _va) = sgr_testutil::model(sgr_testutil::tiny_config(1), 5, DType::F32);
    let (b, _vb) = sgr_testutil::model(sgr_testutil::tiny_config(1), 6, DType::F32);
    let x = sgr_testutil::rand_tensor(&[12, 1, 16, 16], 3, 0.0, 1.0).to_dtype(DType::F32)?;
    let y = Tensor::new(&[0u32, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1], &Device::Cpu)?;
    let train = sgr_testutil::rand_tensor(&[40, 1, 16, 16], 4, 0.0, 1.0).to_dtype(DType::F32)?;
    let models = [
        Named {
            name: "a",
            model: &a,
        },
        Named {
            name: "b",
            model: &b,
        },
    ];
    let settings = sgr_eval::LrcSettings {
        draws: 5,
        zetas: vec![1.0, 4.0],
        lrc_eps: 0.3,
        eps_list: vec![0.0, 0.2, 0.5],
        seed: 7,
        batch_size: 5,
    };
    let r = sgr_eval::lrc_evaluation(&models, &x, &y, &train, &settings)?;
    assert_eq!((r.images, r.draws), (12, 5));
    for curves in [&r.by_zeta, &r.by_eps_zeta8, &r.by_eps_data_cov] {
        assert_eq!(curves.len(), 2);
        assert_eq!(
            (curves[0].model.as_str(), curves[1].model.as_str()),
            ("a", "b")
        );
    }
    assert_eq!(r.by_zeta[0].points.len(), 2);
    for (k, m) in models.iter().enumerate() {
        let pred = m.model.forward(&x)?.argmax(1)?.to_vec1::<u32>()?;
        let clean = pred
            .iter()
            .zip(y.to_vec1::<u32>()?)
            .filter(|(p, y)| **p == *y)
            .count();
        let clean = clean as f64 / 12.0;
        assert_eq!(r.by_eps_zeta8[k].points[0], (0.0, clean));
        assert_eq!(r.by_eps_data_cov[k].points[0], (0.0, clean));
        // The worst of several draws is never above the clean accuracy.
        assert!(
            r.by_eps_zeta8[k]
                .points
                .iter()
                .all(|p| p.1 <= clean + 1e-12)
        );
    }
    let md = sgr_eval::lrc_markdown("tiny", &r, "figs/");
    assert!(
        md.contains("figs/fig3_lrc_zeta.png") && md.contains("worst of 5 draws"),
        "{md}"
    );
    let bad = sgr_eval::LrcSettings {
        eps_list: vec![-0.1],
        ..settings
    };
    let err = sgr_eval::lrc_evaluation(&models, &x, &y, &train, &bad).expect_err("negative ε");
    assert!(err.to_string().contains("--eps-list"), "{err}");
    Ok(())
}
