//! Network descriptions: spec strings parse to the expected layers and back, presets are the paper's
//! Table 5, bad specs are refused with the offending layer named, and checkpoints without the recorded
//! network (PyTorch's `save_file`, sgr before layer lists) still load as the paper's CNN.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use sgr_models::{CnnConfig, Layer, load_model, save_model};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

#[test]
fn presets_are_the_papers_cnns() -> Result<(), String> {
    let m = CnnConfig::mnist();
    assert_eq!(
        m.spec(),
        "conv32,conv32,pool,conv64,conv64,pool,fc200,fc200"
    );
    let conv = |out| Layer::Conv {
        out,
        k: 3,
        padding: 0,
        relu: true,
    };
    let dense = |out, relu| Layer::Dense { out, relu };
    assert_eq!(
        m.layers,
        vec![
            conv(32),
            conv(32),
            Layer::Pool,
            conv(64),
            conv(64),
            Layer::Pool,
            Layer::Flatten,
            dense(200, true),
            dense(200, true),
            dense(10, false)
        ]
    );
    // fc1 sees 64 maps of 4×4 (28 → 26 → 24 → 12 → 10 → 8 → 4).
    let shapes = m.param_shapes();
    assert_eq!(shapes[8], ("fc1.weight".to_string(), vec![200, 1024]));
    assert_eq!(shapes.len(), 14);
    let c = CnnConfig::cifar10();
    assert_eq!(c.param_shapes()[8].1, vec![256, 128 * 5 * 5]);
    assert_eq!(CnnConfig::from_arch("paper", (3, 32, 32), 10)?, c);
    assert_eq!(CnnConfig::from_arch("mnist", (1, 28, 28), 10)?, m);
    Ok(())
}

#[test]
fn specs_parse_and_print_canonically() -> Result<(), String> {
    let c = CnnConfig::parse(
        " Conv6-k5-same , pool,conv16-k5,pool,flatten,fc120,fc84-linear,relu ",
        (1, 28, 28),
        10,
    )?;
    assert_eq!(
        c.spec(),
        "conv6-k5-same,pool,conv16-k5,pool,fc120,fc84-linear,relu"
    );
    assert_eq!(
        c.layers[0],
        Layer::Conv {
            out: 6,
            k: 5,
            padding: 2,
            relu: true
        }
    );
    // The canonical spec parses back to the same network.
    assert_eq!(CnnConfig::parse(&c.spec(), (1, 28, 28), 10)?, c);
    // 28 → same 28 → pool 14 → valid 10 → pool 5: fc1 sees 16·5·5.
    assert_eq!(c.param_shapes()[4].1, vec![120, 400]);
    // An MLP: the flatten comes first; an explicit padding; an empty spec is a linear classifier.
    let mlp = CnnConfig::parse("fc50", (1, 4, 4), 3)?;
    assert_eq!(mlp.layers[0], Layer::Flatten);
    assert_eq!(mlp.param_shapes()[0].1, vec![50, 16]);
    let padded = CnnConfig::parse("conv4-k3-p2", (1, 6, 6), 2)?;
    assert_eq!(padded.spec(), "conv4-p2");
    assert_eq!(padded.param_shapes()[2].1, vec![2, 4 * 8 * 8]);
    assert_eq!(CnnConfig::parse("", (1, 2, 2), 2)?.param_shapes().len(), 2);
    Ok(())
}

#[test]
fn bad_specs_name_the_layer() -> TestResult {
    for (spec, hw, needle) in [
        ("conv32,conv", 28, "layer 'conv'"),
        ("conv32-k4-same", 28, "odd kernel"),
        ("conv8-x1", 28, "unknown option '-x1'"),
        ("fc10,conv8", 28, "spatial layers must come before"),
        ("conv8-k9", 6, "does not fit 6×6"),
        ("pool,pool,pool", 4, "cannot pool 1×1"),
        ("dropout", 28, "unknown layer"),
        ("flatten,flatten", 28, "one flatten only"),
        ("pool-2", 28, "takes no options"),
        ("conv0", 28, "positive integers"),
    ] {
        let err = CnnConfig::parse(spec, (1, hw, hw), 10).expect_err(spec);
        assert!(err.contains(needle), "{spec}: {err}");
    }
    Ok(())
}

#[test]
fn checkpoints_without_a_recorded_network_load_as_the_papers_cnn() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = CnnConfig::mnist();
    let (m, vm) = sgr_testutil::model(config.clone(), 3, DType::F32);
    let x = sgr_testutil::rand_tensor(&[2, 1, 28, 28], 4, 0.0, 1.0).to_dtype(DType::F32)?;
    let want = m.forward(&x)?;
    let tensors: HashMap<String, Tensor> = {
        let data = vm.data().lock().map_err(|_| anyhow::anyhow!("lock"))?;
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    };
    // As PyTorch writes it: no metadata.
    let bare = dir.path().join("bare.safetensors");
    candle_core::safetensors::save(&tensors, &bare)?;
    // As sgr wrote it before networks were layer lists: `config` with `convs`/`hidden`.
    let old = dir.path().join("old.safetensors");
    let meta = HashMap::from([(
        "sgr".to_string(),
        r#"{"arch":"mnist-cnn","config":{"in_channels":1,"height":28,"width":28,"convs":[32,32,64,64],"hidden":[200,200],"classes":10}}"#.to_string(),
    )]);
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    std::fs::write(&old, safetensors::serialize(named, Some(meta))?)?;
    for path in [&bare, &old] {
        let (loaded, _) = load_model(path, DType::F32, &Device::Cpu)?;
        assert_eq!(loaded.config(), &config);
        let got = loaded.forward(&x)?;
        assert_eq!(sgr_testutil::max_abs_diff(&got, &want), 0.0);
    }
    // A network off the paper's path needs its metadata: with it, it loads; a tensor of the wrong
    // shape is named.
    let (_, other) = sgr_testutil::other_archs(1).remove(1);
    let (_, ovm) = sgr_testutil::model(other.clone(), 5, DType::F32);
    let path = dir.path().join("lenet.safetensors");
    save_model(&ovm, &other, &path)?;
    assert_eq!(
        load_model(&path, DType::F32, &Device::Cpu)?.0.config(),
        &other
    );
    let mut wrong = other.clone();
    wrong.layers[0] = Layer::Conv {
        out: 5,
        k: 5,
        padding: 2,
        relu: true,
    };
    let (_, wvm) = sgr_testutil::model(wrong.clone(), 5, DType::F32);
    save_model(&wvm, &other, &path)?;
    let err = load_model(&path, DType::F32, &Device::Cpu)
        .err()
        .ok_or_else(|| anyhow::anyhow!("shapes differ from the recorded network"))?
        .to_string();
    assert!(err.contains("conv1.weight has shape [5, 1, 5, 5]"), "{err}");
    assert!(err.contains("lenet.safetensors"), "{err}");
    Ok(())
}
