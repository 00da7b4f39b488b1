//! Safetensors checkpoints: saving with the network's spec in the metadata, loading (also PyTorch's files).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::arch::CnnConfig;
use crate::cnn::Cnn;
use crate::fsutil::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable safetensors file: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("{path}: not a checkpoint of an sgr network: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Writes every variable of `varmap` to `path` as safetensors (atomically), with PyTorch names and the
/// architecture in the header metadata: one key, `sgr`, holding `{"arch": SPEC, "config": CnnConfig}` as
/// JSON (one key only, so that the same parameters always give the same bytes). Loading needs nothing else.
pub fn save_model(varmap: &VarMap, config: &CnnConfig, path: &Path) -> Result<(), ModelError> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, _) in config.param_shapes() {
        let var = data.get(&name).ok_or_else(|| ModelError::BadCheckpoint {
            path: path.to_owned(),
            reason: format!("the model has no parameter {name}"),
        })?;
        tensors.push((name, var.as_tensor().to_device(&Device::Cpu)?));
    }
    let mut meta = HashMap::new();
    let info = serde_json::json!({ "arch": config.spec(), "config": config });
    meta.insert("sgr".to_string(), info.to_string());
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| ModelError::BadFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    write_atomic(path, &bytes).map_err(|source| ModelError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Makes the error for a readable file that is not a checkpoint of an sgr network, naming `path`.
fn bad_checkpoint(path: &Path) -> impl Fn(String) -> ModelError + '_ {
    move |reason| ModelError::BadCheckpoint {
        path: path.to_owned(),
        reason,
    }
}

/// The network a checkpoint's header describes (`None` for files without sgr's metadata, and for those
/// written before networks were layer lists: their `config` has no `layers`).
fn config_from_metadata(path: &Path, bytes: &[u8]) -> Result<Option<CnnConfig>, ModelError> {
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| ModelError::BadFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let Some(info) = meta.metadata().as_ref().and_then(|m| m.get("sgr")) else {
        return Ok(None);
    };
    let bad = bad_checkpoint(path);
    let json: serde_json::Value =
        serde_json::from_str(info).map_err(|e| bad(format!("metadata 'sgr' is not JSON: {e}")))?;
    let config = &json["config"];
    if config.get("layers").is_none() {
        return Ok(None);
    }
    let config: CnnConfig = serde_json::from_value(config.clone())
        .map_err(|e| bad(format!("metadata 'sgr.config': {e}")))?;
    config
        .shapes()
        .map_err(|e| bad(format!("metadata 'sgr.config': {e}")))?;
    Ok(Some(config))
}

/// The paper's CNN (Table 5) fitted to the tensors' shapes: for checkpoints without a recorded network
/// (PyTorch's `save_file`, sgr before layer lists). Square images, four 3×3 valid convolutions.
fn infer_paper_cnn(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
) -> Result<CnnConfig, ModelError> {
    let bad = bad_checkpoint(path);
    let dims = |name: &str| -> Result<Vec<usize>, ModelError> {
        tensors.get(name).map(|t| t.dims().to_vec()).ok_or_else(|| {
            bad(format!(
                "missing tensor {name} (and no network in the metadata)"
            ))
        })
    };
    let c1 = dims("conv1.weight")?;
    if c1.len() != 4 {
        return Err(bad(format!(
            "conv1.weight has shape {c1:?}, expected [out, in, 3, 3]"
        )));
    }
    let convs = [
        c1[0],
        dims("conv2.weight")?[0],
        dims("conv3.weight")?[0],
        dims("conv4.weight")?[0],
    ];
    let f1 = dims("fc1.weight")?;
    let f2 = dims("fc2.weight")?;
    let f3 = dims("fc3.weight")?;
    if f1.len() != 2 || f2.len() != 2 || f3.len() != 2 {
        return Err(bad("fc weights must be [out, in]".into()));
    }
    // fc1 inputs = convs[3] · s · s for square images; s = ((hw − 4)/2 − 4)/2.
    let spatial = f1[1] / convs[3].max(1);
    let s = (spatial as f64).sqrt().round() as usize;
    if s * s * convs[3] != f1[1] {
        return Err(bad(format!(
            "fc1.weight in-features {} are not conv4 maps × a square",
            f1[1]
        )));
    }
    let hw = (s * 2 + 4) * 2 + 4;
    let spec = format!(
        "conv{},conv{},pool,conv{},conv{},pool,fc{},fc{}",
        convs[0], convs[1], convs[2], convs[3], f1[0], f2[0]
    );
    CnnConfig::parse(&spec, (c1[1], hw, hw), f3[0]).map_err(bad)
}

/// Checks that `tensors` hold every parameter of `config` with its shape, and nothing else.
fn check_tensors(
    path: &Path,
    config: &CnnConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<(), ModelError> {
    let bad = bad_checkpoint(path);
    let shapes = config.param_shapes();
    for (name, shape) in &shapes {
        let found = tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| {
                bad(format!(
                    "missing tensor {name} of network '{}'",
                    config.spec()
                ))
            })?;
        if &found != shape {
            return Err(bad(format!(
                "{name} has shape {found:?}, expected {shape:?}"
            )));
        }
    }
    if let Some(extra) = tensors
        .keys()
        .find(|k| !shapes.iter().any(|(n, _)| n == *k))
    {
        return Err(bad(format!(
            "unexpected tensor {extra} for network '{}'",
            config.spec()
        )));
    }
    Ok(())
}

/// Builds the paper's CNN (Table 5) from named tensors (PyTorch layout), fitted to their shapes. The
/// returned `VarMap` holds the parameters as trainable variables. For other networks use [`load_model`],
/// which reads the network from the checkpoint's metadata.
pub fn load_model_from_tensors(
    path: &Path,
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<(Cnn, VarMap), ModelError> {
    let config = infer_paper_cnn(path, &tensors)?;
    build(path, config, tensors, dtype, device)
}

fn build(
    path: &Path,
    config: CnnConfig,
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<(Cnn, VarMap), ModelError> {
    check_tensors(path, &config, &tensors)?;
    let varmap = VarMap::new();
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        for (name, _) in config.param_shapes() {
            let t = tensors[&name].to_dtype(dtype)?.to_device(device)?;
            data.insert(name, Var::from_tensor(&t)?);
        }
    }
    let model = Cnn::new(config, VarBuilder::from_varmap(&varmap, dtype, device))?;
    Ok((model, varmap))
}

/// Loads a checkpoint written by [`save_model`] (the network from its metadata), or one without sgr's
/// network metadata (PyTorch's `safetensors.torch.save_file` with the same names, sgr before layer lists) as
/// the paper's CNN fitted to its shapes. `path` may be the `.safetensors` file or a run folder holding `model.safetensors`.
pub fn load_model(path: &Path, dtype: DType, device: &Device) -> Result<(Cnn, VarMap), ModelError> {
    let file = if path.is_dir() {
        path.join("model.safetensors")
    } else {
        path.to_owned()
    };
    let bytes = std::fs::read(&file).map_err(|source| ModelError::Io {
        path: file.clone(),
        source,
    })?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
        ModelError::BadFile {
            path: file.clone(),
            reason: e.to_string(),
        }
    })?;
    match config_from_metadata(&file, &bytes)? {
        Some(config) => build(&file, config, tensors, dtype, device),
        None => load_model_from_tensors(&file, tensors, dtype, device),
    }
}
