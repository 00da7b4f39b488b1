use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::cnn::{Cnn, CnnConfig};
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
    #[error("{path}: not a checkpoint of the paper's CNN: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Writes every variable of `varmap` to `path` as safetensors (atomically), with PyTorch names and the
/// architecture in the header metadata: one key, `sgr`, holding `{"arch": …, "config": …}` as JSON (one key
/// only, so that the same parameters always give the same bytes).
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
    let info = serde_json::json!({ "arch": config.arch_name(), "config": config });
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

fn infer_config(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<CnnConfig, ModelError> {
    let bad = |reason: String| ModelError::BadCheckpoint {
        path: path.to_owned(),
        reason,
    };
    let dims = |name: &str| -> Result<Vec<usize>, ModelError> {
        tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| bad(format!("missing tensor {name}")))
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
    let cfg = CnnConfig {
        in_channels: c1[1],
        height: hw,
        width: hw,
        convs,
        hidden: [f1[0], f2[0]],
        classes: f3[0],
    };
    for (name, shape) in cfg.param_shapes() {
        let found = dims(&name)?;
        if found != shape {
            return Err(bad(format!(
                "{name} has shape {found:?}, expected {shape:?}"
            )));
        }
    }
    Ok(cfg)
}

/// Builds a model from named tensors (PyTorch layout), inferring the architecture from their shapes.
/// The returned `VarMap` holds the parameters as trainable variables.
pub fn load_model_from_tensors(
    path: &Path,
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<(Cnn, VarMap), ModelError> {
    let config = infer_config(path, &tensors)?;
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

/// Loads a checkpoint written by [`save_model`] (or by PyTorch's `safetensors.torch.save_file` with the same
/// names). `path` may be the `.safetensors` file or a run folder holding `model.safetensors`.
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
    load_model_from_tensors(&file, tensors, dtype, device)
}
