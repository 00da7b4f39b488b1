//! Times the pieces of a covariance-function update as SGR-sign does it on CIFAR-10 (batch 128, radius 8,
//! intra/inter-channel, PSD projection) and on MNIST's dense Σ̂:
//! `cargo run --release -p sgr-covariance --example observe_cost`.
use std::time::Instant;

use candle_core::{Device, Tensor};
use sgr_covariance::{ChannelStructure, CovFun, Covariance, Dense, Ema};

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let xi = Tensor::rand(-1f32, 1f32, (128, 3, 32, 32), &Device::Cpu)?.sign()?;
    let g = Tensor::rand(-1f32, 1f32, (128, 3, 32, 32), &Device::Cpu)?;
    let mut ema = Ema::new(0.1)?;
    for _ in 0..4 {
        let t = Instant::now();
        let cf = CovFun::estimate(&xi, 8, ChannelStructure::IntraInter)?;
        let est = ms(t);
        let t = Instant::now();
        let s = ema.update(cf)?.clone();
        let up = ms(t);
        let t = Instant::now();
        let p = s.project_psd()?;
        let psd = ms(t);
        let t = Instant::now();
        let v = p.matvec(&g)?;
        let mv = ms(t);
        std::hint::black_box(v);
        println!("covfun: estimate {est:.1} ms, ema {up:.1}, project_psd {psd:.1}, matvec {mv:.1}");
    }
    let xi = Tensor::rand(-1f32, 1f32, (128, 1, 28, 28), &Device::Cpu)?.sign()?;
    let g = Tensor::rand(-1f32, 1f32, (128, 1, 28, 28), &Device::Cpu)?;
    let mut ema = Ema::new(0.1)?;
    for _ in 0..4 {
        let t = Instant::now();
        let d = Dense::second_moments(&xi)?;
        let est = ms(t);
        let t = Instant::now();
        let s = ema.update(d)?.clone();
        let up = ms(t);
        let t = Instant::now();
        let v = s.matvec(&g)?;
        let mv = ms(t);
        std::hint::black_box(v);
        println!("dense: second moments {est:.1} ms, ema {up:.1}, matvec {mv:.1}");
    }
    Ok(())
}
