//! AutoAttack beside run folders (feature `experiment`): a run evaluated with `eval-autoattack --out
//! RUN/autoattack` is reused — reached through a link, from a folder that predates recorded digests — and a
//! folder started with other settings is refused, never silently reused.
#![cfg(feature = "experiment")]

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use sgr_attacks::{AaAttack, AutoAttack};
use sgr_data::DatasetName;
use sgr_eval::AutoAttackEval;
use sgr_eval::experiment::{
    AutoAttackFolder, AutoAttackSettings, ResultCache, Setup, TestData, autoattack_beside_runs,
    autoattack_rows,
};
use sgr_models::{CnnConfig, DeviceKind, init_params, save_model};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn run_folder(dir: &Path, seed: u64) -> TestResult {
    std::fs::create_dir_all(dir)?;
    let vm = VarMap::new();
    let config = CnnConfig::mnist();
    init_params(&vm, &config, seed, DType::F32, &Device::Cpu)?;
    save_model(&vm, &config, &dir.join("model.safetensors"))?;
    Ok(())
}

fn open(dir: &Path) -> sgr_eval::Result<Setup> {
    Setup::open(
        &[dir.to_path_buf()],
        &TestData {
            dataset: Some(DatasetName::MnistSubset),
            data_dir: None,
            test_limit: 40,
            eps_255: None,
            device: DeviceKind::Cpu,
        },
    )
}

fn suite(s: &Setup, apgd_steps: usize) -> AutoAttackEval {
    AutoAttackEval {
        suite: AutoAttack {
            eps: s.eps,
            attacks: vec![AaAttack::ApgdCe],
            apgd_steps,
            batch_size: 6,
            ..AutoAttack::default()
        },
        pgd_steps: 2,
        masking_images: 4,
    }
}

#[test]
fn a_run_evaluated_beside_its_model_is_reused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let run = tmp.path().join("run");
    run_folder(&run, 3)?;
    let s = open(&run)?;
    let cfg = suite(&s, 4);
    let go = AtomicBool::new(false);
    // Counts units of attack work: a reused result does none.
    let units = std::cell::Cell::new(0usize);
    let count = |_: usize, _: &sgr_attacks::AutoAttackState| units.set(units.get() + 1);

    // What `eval-autoattack --checkpoints RUN --out RUN/autoattack` does.
    let settings = AutoAttackSettings::new(std::slice::from_ref(&run), &s, &cfg)?;
    assert_eq!(settings.digests.len(), 1);
    let folder = AutoAttackFolder::open(&run.join("autoattack"), &settings, false)?;
    let first = autoattack_rows(&s, &cfg, Some(&folder), &go, count)?.ok_or("stopped")?;
    assert!(
        first[0].clean > 0.0 && units.get() > 0,
        "the test needs points to attack: clean {}",
        first[0].clean
    );

    // A folder written before digests were recorded, reached through a link: matched by resolved path.
    let file = run.join("autoattack/settings.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    v.as_object_mut().ok_or("object")?.remove("digests");
    std::fs::write(&file, serde_json::to_string(&v)?)?;
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&run, &link)?;
    let s2 = open(&link)?;
    units.set(0);
    let again = autoattack_beside_runs(&s2, 0, &cfg, None, &go, count)?.ok_or("stopped")?;
    assert_eq!(
        units.get(),
        0,
        "attacked again instead of reusing the finished run"
    );
    assert_eq!(again[0].robust, first[0].robust);
    assert_eq!(again[0].after, first[0].after);
    assert_eq!(again[0].images, 40);

    // Other settings: the folder is refused, naming it.
    let err = autoattack_beside_runs(&s2, 0, &suite(&s, 5), None, &go, count)
        .err()
        .ok_or("a folder of other settings was reused")?;
    assert!(err.to_string().contains("autoattack"), "{err}");

    // With a cache, the finished row is kept and outlives the state folder.
    let cache = ResultCache::new(&tmp.path().join("cache"));
    autoattack_beside_runs(&s2, 0, &cfg, Some(&cache), &go, count)?.ok_or("stopped")?;
    std::fs::remove_dir_all(run.join("autoattack"))?;
    let cached =
        autoattack_beside_runs(&s2, 0, &cfg, Some(&cache), &go, count)?.ok_or("stopped")?;
    assert_eq!(cached[0].robust, first[0].robust);
    assert_eq!(
        units.get(),
        0,
        "attacked again instead of using the cached row"
    );

    // Another model in the same place (other bytes): the cache does not answer for it.
    run_folder(&run, 4)?;
    let s3 = open(&link)?;
    autoattack_beside_runs(&s3, 0, &cfg, Some(&cache), &go, count)?.ok_or("stopped")?;
    assert!(
        units.get() > 0,
        "a changed checkpoint reused a stored result"
    );
    Ok(())
}
