//! Worst-of-N correlated-noise accuracy (paper sec. 4.3, Fig. 3 and 4).

use candle_core::{D, Device, Tensor};
use serde::{Deserialize, Serialize};
use sgr_attacks::{NoiseSource, WorstOfN};

use crate::{Named, Result, batch_seed, batches, check_data};

/// Accuracy under the worst of `draws` noise draws `x + ε·ξ` (clipped to `[0, 1]`): an example counts as
/// correct only if every draw is classified correctly. The noise of batch `b`, draw `d` derives from
/// `(seed, b, d)` alone, so every model sees the same draws. Examples already broken are not evaluated again.
#[allow(clippy::too_many_arguments)]
pub fn worst_of_n_accuracy(
    model: &dyn candle_nn::Module,
    source: &NoiseSource,
    x: &Tensor,
    y: &Tensor,
    eps: f64,
    draws: usize,
    seed: u64,
    batch_size: usize,
) -> Result<f64> {
    let n = check_data(x, y)?;
    let _span = tracing::debug_span!("worst_of_n", eps, draws, images = n).entered();
    let mut correct = 0usize;
    for (i, (s, len)) in batches(n, batch_size).enumerate() {
        let (xb, yb) = (x.narrow(0, s, len)?, y.narrow(0, s, len)?);
        let labels = yb.to_vec1::<u32>()?;
        let mut alive: Vec<u32> = (0..len as u32).collect();
        let bseed = batch_seed(seed, 2, i);
        for d in 0..draws.max(1) {
            if alive.is_empty() {
                break;
            }
            let noise = WorstOfN::draw_noise(source, bseed, d, len)?
                .to_dtype(x.dtype())?
                .to_device(x.device())?
                .reshape(xb.dims())?;
            let idx = Tensor::new(alive.as_slice(), &Device::Cpu)?.to_device(x.device())?;
            let xp = (xb.index_select(&idx, 0)? + (noise.index_select(&idx, 0)? * eps)?)?
                .clamp(0.0, 1.0)?;
            let pred = model.forward(&xp)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            alive = alive
                .iter()
                .zip(&pred)
                .filter(|&(&a, &p)| p == labels[a as usize])
                .map(|(&a, _)| a)
                .collect();
        }
        correct += alive.len();
    }
    Ok(correct as f64 / n as f64)
}

/// One model's accuracy at a series of settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrcCurve {
    pub model: String,
    /// `(x, accuracy)`; `x` is the swept quantity (ζ or ε).
    pub points: Vec<(f64, f64)>,
}

/// [`worst_of_n_accuracy`] of one model at each `(x, source, ε)` setting.
pub fn lrc_curve(
    model: Named<'_>,
    settings: &[(f64, &NoiseSource, f64)],
    x: &Tensor,
    y: &Tensor,
    draws: usize,
    seed: u64,
    batch_size: usize,
) -> Result<LrcCurve> {
    let _span = tracing::info_span!("lrc_curve", model = model.name).entered();
    let points = settings
        .iter()
        .map(|&(v, src, eps)| {
            Ok((
                v,
                worst_of_n_accuracy(model.model, src, x, y, eps, draws, seed, batch_size)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LrcCurve {
        model: model.name.to_string(),
        points,
    })
}
