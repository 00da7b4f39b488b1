//! Saving and loading covariances as safetensors: every representation is a set of named tensors plus a
//! `kind` tensor (the kind's name as bytes), so a run can save and resume `Σ̂`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::covfun::CovFun;
use crate::error::{CovError, Result};
use crate::kernel::{ChannelStructure, KernelSet};
use crate::repr::{Covariance, Dense, Identity, Scaled};
use crate::stationary::Stationary;

pub(crate) fn kind_tensor(name: &str) -> Result<Tensor> {
    Ok(Tensor::new(name.as_bytes(), &Device::Cpu)?)
}

fn text(t: &Tensor) -> Result<String> {
    String::from_utf8(t.to_vec1::<u8>()?).map_err(|e| CovError::Invalid(e.to_string()))
}

/// The tensors of `cov` under `prefix` (e.g. `sigma.`), including `<prefix>kind`.
pub fn to_tensors(cov: &dyn Covariance, prefix: &str) -> Result<HashMap<String, Tensor>> {
    let mut out: HashMap<String, Tensor> = cov
        .to_tensors()?
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect();
    out.insert(format!("{prefix}kind"), kind_tensor(cov.kind())?);
    Ok(out)
}

/// Rebuilds a covariance written by [`to_tensors`] with the same `prefix`.
pub fn from_tensors(t: &HashMap<String, Tensor>, prefix: &str) -> Result<Arc<dyn Covariance>> {
    let get = |k: &str| {
        t.get(&format!("{prefix}{k}"))
            .ok_or_else(|| CovError::Invalid(format!("missing tensor {prefix}{k}")))
    };
    let kind = text(get("kind")?)?;
    let shape = || -> Result<(usize, usize, usize)> {
        let s = get("shape")?.to_vec1::<u32>()?;
        if s.len() != 3 {
            return Err(CovError::Invalid(format!(
                "{prefix}shape must hold (C, H, W)"
            )));
        }
        Ok((s[0] as usize, s[1] as usize, s[2] as usize))
    };
    let structure = || -> Result<ChannelStructure> {
        match text(get("structure")?)?.as_str() {
            "intra-inter" => Ok(ChannelStructure::IntraInter),
            "full" => Ok(ChannelStructure::Full),
            other => Err(CovError::Invalid(format!(
                "unknown channel structure '{other}'"
            ))),
        }
    };
    let f64s = |k: &str| -> Result<(Vec<usize>, Vec<f64>)> {
        let t = get(k)?.to_dtype(DType::F64)?;
        Ok((t.dims().to_vec(), t.flatten_all()?.to_vec1::<f64>()?))
    };
    Ok(match kind.as_str() {
        "dense" => Arc::new(Dense::new(shape()?, get("matrix")?)?),
        "identity" => Arc::new(Identity::new(shape()?)),
        "covfun" => {
            let (dims, curves) = f64s("curves")?;
            Arc::new(CovFun::new(
                shape()?,
                dims[1] as i64 - 1,
                structure()?,
                curves,
            )?)
        }
        "stationary" => {
            let (dims, tables) = f64s("tables")?;
            Arc::new(Stationary::from_kernels(KernelSet::new(
                shape()?,
                ((dims[1] - 1) / 2, (dims[2] - 1) / 2),
                structure()?,
                tables,
            )?))
        }
        "scaled" => {
            let inner_prefix = format!("{prefix}inner.");
            let mut inner = t.clone();
            inner.insert(format!("{inner_prefix}kind"), get("inner_kind")?.clone());
            let scale = get("scale")?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
            Arc::new(Scaled::new(from_tensors(&inner, &inner_prefix)?, scale)?)
        }
        other => {
            return Err(CovError::Invalid(format!(
                "unknown covariance kind '{other}'"
            )));
        }
    })
}

/// Writes `cov` to a safetensors file.
pub fn save(cov: &dyn Covariance, path: &Path) -> Result<()> {
    candle_core::safetensors::save(&to_tensors(cov, "")?, path).map_err(|e| CovError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Reads a covariance written by [`save`].
pub fn load(path: &Path) -> Result<Arc<dyn Covariance>> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| CovError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    from_tensors(&t, "").map_err(|e| CovError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}
