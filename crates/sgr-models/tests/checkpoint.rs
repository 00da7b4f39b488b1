//! Checkpoints: save/load round trips for every test network, PyTorch names and metadata, bad files named.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`

use candle_core::{DType, Device, Module};
use sgr_models::{CnnConfig, load_model, save_model};
use sgr_testutil::{model, rand_tensor, scalar};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

#[test]
fn save_load_round_trip_keeps_predictions_and_infers_the_architecture() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut configs = vec![CnnConfig::mnist(), CnnConfig::cifar10()];
    configs.extend(sgr_testutil::other_archs(3).into_iter().map(|(_, c)| c));
    for (k, config) in configs.into_iter().enumerate() {
        let (m, vm) = model(config.clone(), 42, DType::F32);
        let path = dir.path().join(format!("model{k}.safetensors"));
        save_model(&vm, &config, &path)?;
        let (m2, _) = load_model(&path, DType::F32, &Device::Cpu)?;
        assert_eq!(m2.config(), &config);
        let x = rand_tensor(
            &[3, config.in_channels, config.height, config.width],
            1,
            0.0,
            1.0,
        )
        .to_dtype(DType::F32)?;
        let d = (m.forward(&x)? - m2.forward(&x)?)?.abs()?.max_all()?;
        assert_eq!(scalar(&d), 0.0);
        // PyTorch names, layouts and metadata.
        let bytes = std::fs::read(&path)?;
        let st = safetensors::SafeTensors::deserialize(&bytes)?;
        let mut names = st.names();
        names.sort();
        let shapes = config.param_shapes();
        assert_eq!(names.len(), shapes.len());
        for (name, shape) in &shapes {
            assert_eq!(st.tensor(name)?.shape(), shape.as_slice(), "{name}");
        }
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let info: serde_json::Value =
            serde_json::from_str(&meta.metadata().as_ref().unwrap()["sgr"]).unwrap();
        assert_eq!(info["arch"], config.spec());
        assert_eq!(
            CnnConfig::parse(
                info["arch"].as_str().unwrap(),
                (config.in_channels, config.height, config.width),
                config.classes
            )?,
            config,
            "the recorded spec rebuilds the network"
        );
        // Same parameters, same bytes.
        let again = dir.path().join("again.safetensors");
        save_model(&vm, &config, &again)?;
        assert!(bytes == std::fs::read(&again)?, "saving is deterministic");
    }
    Ok(())
}

#[test]
fn same_seed_same_model_other_seed_other_model() -> TestResult {
    let a = model(CnnConfig::mnist(), 5, DType::F32).1;
    let b = model(CnnConfig::mnist(), 5, DType::F32).1;
    let c = model(CnnConfig::mnist(), 6, DType::F32).1;
    let get = |vm: &candle_nn::VarMap| {
        vm.data().lock().unwrap()["conv1.weight"]
            .as_tensor()
            .clone()
    };
    assert_eq!(scalar(&(get(&a) - get(&b))?.abs()?.sum_all()?), 0.0);
    assert!(scalar(&(get(&a) - get(&c))?.abs()?.sum_all()?) > 0.0);
    // PyTorch's default bound 1/sqrt(fan_in): conv1 fan_in = 9.
    let max = scalar(&get(&a).abs()?.max_all()?);
    assert!(max <= 1.0 / 3.0 && max > 0.3);
    Ok(())
}

#[test]
fn bad_checkpoints_give_errors_naming_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file")?;
    let msg = load_model(&junk, DType::F32, &Device::Cpu)
        .err()
        .expect("should fail")
        .to_string();
    assert!(msg.contains("junk.safetensors"), "{msg}");
    let missing = dir.path().join("missing.safetensors");
    let msg = load_model(&missing, DType::F32, &Device::Cpu)
        .err()
        .expect("should fail")
        .to_string();
    assert!(msg.contains("missing.safetensors"), "{msg}");
    // A file with a tensor missing.
    let t = candle_core::Tensor::zeros((32, 1, 3, 3), DType::F32, &Device::Cpu)?;
    let partial = dir.path().join("partial.safetensors");
    candle_core::safetensors::save(
        &[("conv1.weight".to_string(), t)].into_iter().collect(),
        &partial,
    )?;
    let msg = load_model(&partial, DType::F32, &Device::Cpu)
        .err()
        .expect("should fail")
        .to_string();
    assert!(
        msg.contains("partial.safetensors") && msg.contains("conv2.weight"),
        "{msg}"
    );
    Ok(())
}
