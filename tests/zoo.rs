//! The model zoo (`zoo/`) loads from the repository alone and reproduces what each model's run.json says: clean and
//! PGD-10 accuracy at ε = 32/255 on the first 1,000 MNIST test images, which are the embedded test subset.

use std::path::PathBuf;

use candle_core::{DType, Device};
use sgr_data::DatasetName;

fn zoo_runs() -> anyhow::Result<Vec<PathBuf>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../zoo/mnist");
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("run.json").exists())
        .collect();
    runs.sort();
    Ok(runs)
}

#[test]
fn every_zoo_model_recomputes_its_recorded_check() -> anyhow::Result<()> {
    let runs = zoo_runs()?;
    assert!(!runs.is_empty(), "the zoo holds no MNIST model");
    let test = sgr_data::load(DatasetName::MnistSubset, None)?.test;
    for dir in runs {
        let record = sgr_train::read_record(&dir)?;
        let (model, _) =
            sgr_models::load_model(&dir.join("model.safetensors"), DType::F32, &Device::Cpu)?;
        let fe = record
            .final_eval
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no final check", dir.display()));
        assert_eq!(
            (record.dataset, fe.split.as_str(), fe.images),
            (DatasetName::Mnist, "test", 1000),
            "{}",
            dir.display()
        );
        let (clean, pgd) = sgr_train::pgd_accuracy(
            &model,
            &test,
            fe.images,
            fe.eps_255 / 255.0,
            DType::F32,
            &Device::Cpu,
        )?;
        assert_eq!(
            (clean, pgd),
            (fe.clean_accuracy, fe.pgd_accuracy),
            "{}: recomputed (clean, PGD) differ from run.json",
            dir.display()
        );
    }
    Ok(())
}

/// A cell of the README's table as a fraction: `99.44 %` → 0.9944; `None` for anything else ("not yet run").
fn percent(cell: &str) -> Option<f64> {
    cell.trim()
        .strip_suffix('%')
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v / 100.0)
}

/// The README's table states what the committed evaluations measured: test and PGD-10 from
/// `eval/whitebox.json` (all 10,000 test images), AA from its AA column or `autoattack/autoattack.json`; every
/// model folder has a row.
#[test]
fn the_zoo_table_matches_the_committed_evaluations() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../zoo");
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let rows: Vec<Vec<&str>> = readme
        .lines()
        .filter(|l| l.starts_with("| [") && l.contains("](mnist/"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    let runs = zoo_runs()?;
    assert_eq!(rows.len(), runs.len(), "one README row per zoo model");
    for dir in runs {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let row = rows
            .iter()
            .find(|r| r[1].starts_with(&format!("[{name}]")))
            .unwrap_or_else(|| panic!("no README row for {name}"));
        // | model | method | λ | seed | test | PGD-10 | AA | recompute |
        let record = sgr_train::read_record(&dir)?;
        assert_eq!(row[2], record.method.to_string(), "{name}: method");
        assert_eq!(row[4], record.seed.to_string(), "{name}: seed");
        let wb: Vec<sgr_eval::WhiteboxRow> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("eval/whitebox.json"))?)?;
        let wb = &wb[0];
        assert_eq!(
            wb.images, 10_000,
            "{name}: the table is on the full test set"
        );
        let close = |cell: &str, v: f64, digits: i32| {
            percent(cell)
                .is_some_and(|c| (c - v).abs() <= 0.5 * 10f64.powi(-digits) / 100.0 + 1e-12)
        };
        assert!(
            close(row[5], wb.test, 2),
            "{name}: test {} vs {}",
            row[5],
            wb.test
        );
        assert!(
            close(row[6], wb.pgd, 2),
            "{name}: PGD-10 {} vs {}",
            row[6],
            wb.pgd
        );
        let aa_file = dir.join("autoattack/autoattack.json");
        let aa = if let Some(aa) = wb.aa {
            Some(aa)
        } else if aa_file.exists() {
            let rows: Vec<serde_json::Value> =
                serde_json::from_str(&std::fs::read_to_string(&aa_file)?)?;
            rows[0]["robust"].as_f64()
        } else {
            None
        };
        match aa {
            Some(aa) => assert!(close(row[7], aa, 1), "{name}: AA {} vs {aa}", row[7]),
            None => assert!(
                percent(row[7]).is_none(),
                "{name}: AA stated but not on record"
            ),
        }
    }
    Ok(())
}
