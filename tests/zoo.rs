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
