//! Results kept across runs (feature `experiment`): AutoAttack beside run folders — a run evaluated with
//! `eval-autoattack --out RUN/autoattack` is reused, reached through a link, from a folder that predates recorded
//! digests, and a folder started with other settings is refused, never silently reused — and the transfer
//! matrix's stored columns, reused cell by cell when models are added or retrained; a white-box row stored beside
//! a run by `eval-whitebox --out RUN/eval --resume` is reused by `reproduce`, only for the same checkpoint.
#![cfg(feature = "experiment")]

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use sgr_attacks::{AaAttack, AutoAttack};
use sgr_data::DatasetName;
use sgr_eval::experiment::{
    AutoAttackFolder, AutoAttackSettings, RUN_WHITEBOX_CACHE, ResultCache, Setup, TestData,
    autoattack_beside_runs, autoattack_rows,
};
use sgr_eval::{AutoAttackEval, WhiteboxConfig, WhiteboxRow};
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
    open_all(&[dir.to_path_buf()])
}

fn open_all(dirs: &[std::path::PathBuf]) -> sgr_eval::Result<Setup> {
    Setup::open(
        dirs,
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

#[test]
fn a_whitebox_row_stored_beside_a_run_is_reused_for_that_checkpoint_only() -> TestResult {
    let tmp = tempfile::tempdir()?;
    // A zoo model evaluated for its own table, reached by `reproduce` through a link under another name.
    let run = tmp.path().join("gn-l10-s0");
    run_folder(&run, 3)?;
    let link = tmp.path().join("gn-s0");
    std::os::unix::fs::symlink(&run, &link)?;
    let s = open(&run)?;
    let cfg = WhiteboxConfig {
        eps: s.eps,
        pgd_steps: 2,
        batch_size: 8,
        deepfool_images: 4,
        masking_images: 4,
        deepfool_max_iter: 5,
        ..WhiteboxConfig::default()
    };
    // What `eval-whitebox --checkpoints RUN --out RUN/eval --resume` stores.
    let beside = ResultCache::new(&run.join(RUN_WHITEBOX_CACHE));
    let own = s.whitebox_rows(&cfg, Some(&beside))?;
    assert_eq!(own[0].model, "gn-l10-s0");
    // Mark the stored row (an accuracy no evaluation of 40 images gives): reuse returns it, a recomputation not.
    let file = run.join(RUN_WHITEBOX_CACHE).join("gn-l10-s0.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    v["result"]["test"] = serde_json::json!(0.123);
    std::fs::write(&file, serde_json::to_string(&v)?)?;

    let report = ResultCache::new(&tmp.path().join("report-cache"));
    let rows = open(&link)?.whitebox_rows_beside_runs(&cfg, &report)?;
    assert_eq!(
        rows[0].test, 0.123,
        "recomputed instead of reusing the stored row"
    );
    assert_eq!(rows[0].model, "gn-s0", "the row shows the report's name");
    assert_eq!(rows[0].pgd, own[0].pgd);
    assert!(
        report.reused_seconds() > 0.0,
        "its computing time counts as reused"
    );
    // Copied into the report's cache: it outlives the run's folder.
    std::fs::remove_dir_all(run.join("eval"))?;
    let again = open(&link)?.whitebox_rows_beside_runs(&cfg, &report)?;
    assert_eq!(again[0].test, 0.123);

    // Other settings, or another checkpoint in the same place: computed, not taken from beside the run.
    let beside_again = s.whitebox_rows(&cfg, Some(&beside))?;
    std::fs::write(&file, serde_json::to_string(&v)?)?;
    let other = WhiteboxConfig {
        pgd_steps: 3,
        ..cfg.clone()
    };
    let fresh = open(&link)?.whitebox_rows_beside_runs(&other, &report)?;
    assert_ne!(fresh[0].test, 0.123);
    run_folder(&run, 4)?;
    std::fs::remove_dir_all(tmp.path().join("report-cache"))?;
    let retrained: Vec<WhiteboxRow> = open(&link)?.whitebox_rows_beside_runs(&cfg, &report)?;
    assert_ne!(
        retrained[0].test, 0.123,
        "a changed checkpoint reused a stored row"
    );
    assert_eq!(beside_again[0].test, own[0].test);
    Ok(())
}

#[test]
fn transfer_columns_are_kept_per_target_and_a_new_model_costs_no_attack_on_the_others() -> TestResult
{
    let tmp = tempfile::tempdir()?;
    let [a, b, c] = ["a", "b", "c"].map(|n| tmp.path().join(n));
    for (dir, seed) in [(&a, 1), (&b, 2), (&c, 3)] {
        run_folder(dir, seed)?;
    }
    let cache = ResultCache::new(&tmp.path().join("cache"));
    let cfg = sgr_eval::TransferConfig {
        eps: 32.0 / 255.0,
        steps: 3,
        batch_size: 16,
    };
    let two = open_all(&[a.clone(), b.clone()])?;
    let first = two.transfer_matrix(&cfg, Some(&cache))?;
    assert_eq!(first, two.transfer_matrix(&cfg, None)?);
    let adv_files = |dir: &Path| -> std::io::Result<Vec<std::path::PathBuf>> {
        let mut v: Vec<_> = std::fs::read_dir(dir.join("adv"))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        v.sort();
        Ok(v)
    };
    let before = adv_files(&tmp.path().join("cache"))?;
    assert_eq!(before.len(), 2, "{before:?}");
    let stamps = before
        .iter()
        .map(|p| std::fs::metadata(p)?.modified())
        .collect::<std::io::Result<Vec<_>>>()?;

    // Edit a's stored cell for target b: a later matrix shows the edit (the cell was reused, not recomputed).
    let column = tmp.path().join("cache/a.json");
    let mut stored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&column)?)?;
    let cells = stored["result"].as_array_mut().ok_or("cells")?;
    assert_eq!(cells.len(), 2);
    cells[1]["accuracy"] = serde_json::json!(0.125);
    std::fs::write(&column, stored.to_string())?;

    // A third model: its column is one attack; a's and b's columns gain c's cell from their stored examples.
    let three = open_all(&[a.clone(), b.clone(), c.clone()])?;
    let cached = three.transfer_matrix(&cfg, Some(&cache))?;
    let fresh = three.transfer_matrix(&cfg, None)?;
    assert_eq!(
        cached.accuracy[1][0], 0.125,
        "the stored cell was not reused"
    );
    for t in 0..3 {
        for s in 0..3 {
            if (t, s) != (1, 0) {
                assert_eq!(cached.accuracy[t][s], fresh.accuracy[t][s], "cell {t} {s}");
            }
        }
    }
    let after = adv_files(&tmp.path().join("cache"))?;
    assert_eq!(after.len(), 3);
    for (p, stamp) in before.iter().zip(&stamps) {
        assert_eq!(
            &std::fs::metadata(p)?.modified()?,
            stamp,
            "{} made again",
            p.display()
        );
    }

    // b retrained (another checkpoint): its column is attacked again (its old examples removed), and the
    // other columns evaluate the new b on their stored examples.
    run_folder(&b, 9)?;
    let retrained = open_all(&[a.clone(), b.clone(), c.clone()])?;
    let m = retrained.transfer_matrix(&cfg, Some(&cache))?;
    assert_eq!(m.accuracy, retrained.transfer_matrix(&cfg, None)?.accuracy);
    assert_eq!(adv_files(&tmp.path().join("cache"))?.len(), 3);
    assert!(
        !before[1].exists(),
        "b's examples under its old checkpoint are left behind"
    );
    assert_eq!(
        std::fs::metadata(&before[0])?.modified()?,
        stamps[0],
        "a's examples made again"
    );
    Ok(())
}

/// Columns stored by the earlier layout (a key naming every target, one accuracy per target) are still read.
#[test]
fn transfer_columns_of_the_earlier_layout_are_reused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let [a, b] = ["a", "b"].map(|n| tmp.path().join(n));
    run_folder(&a, 1)?;
    run_folder(&b, 2)?;
    let cfg = sgr_eval::TransferConfig {
        eps: 32.0 / 255.0,
        steps: 2,
        batch_size: 16,
    };
    let s = open_all(&[a.clone(), b.clone()])?;
    let digest = |d: &Path| sgr_eval::experiment::file_digest(&d.join("model.safetensors"));
    let (da, db) = (digest(&a)?, digest(&b)?);
    let cache_dir = tmp.path().join("cache");
    std::fs::create_dir_all(&cache_dir)?;
    for (name, source, accs) in [("a", &da, [0.25, 0.5]), ("b", &db, [0.75, 0.875])] {
        let old = serde_json::json!({
            "key": {
                "config": cfg, "source": source, "targets": [["a", da], ["b", db]],
                "dataset": "mnist-subset", "images": 40,
            },
            "result": accs,
        });
        std::fs::write(cache_dir.join(format!("{name}.json")), old.to_string())?;
    }
    let m = s.transfer_matrix(&cfg, Some(&ResultCache::new(&cache_dir)))?;
    // accuracy[target][source]
    assert_eq!(m.accuracy, vec![vec![0.25, 0.75], vec![0.5, 0.875]]);
    assert!(!cache_dir.join("adv").exists(), "an attack ran");
    Ok(())
}
