//! Scratch timing of the dense covariance update pieces (batch 128, MNIST size).
use candle_core::{DType, Device, Tensor};
use sgr_covariance::{Covariance, Dense, Ema};
fn main() -> anyhow::Result<()> {
    let xi = Tensor::rand(-1f32, 1f32, (128, 1, 28, 28), &Device::Cpu)?.sign()?;
    let mut ema = Ema::new(0.1)?;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let d = Dense::second_moments(&xi)?;
        let t1 = std::time::Instant::now();
        let s = ema.update(d)?.clone();
        let t2 = std::time::Instant::now();
        let md = s.mean_diag();
        let t3 = std::time::Instant::now();
        let g = Tensor::rand(-1f32, 1f32, (128, 1, 28, 28), &Device::Cpu)?;
        let t4 = std::time::Instant::now();
        let v = s.matvec(&g)?;
        let t5 = std::time::Instant::now();
        let _ = (v, md, DType::F32);
        println!(
            "moments {:.1} ema {:.1} md {:.1} matvec {:.1} ms",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3,
            (t5 - t4).as_secs_f64() * 1e3
        );
    }
    Ok(())
}
#[allow(dead_code)]
fn mm() -> anyhow::Result<()> {
    let x = Tensor::rand(-1f32, 1f32, (128, 784), &Device::Cpu)?;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let a = x.t()?.matmul(&x)?;
        let t1 = std::time::Instant::now();
        let xt = x.t()?.contiguous()?;
        let b = xt.matmul(&x)?;
        let t2 = std::time::Instant::now();
        let c = a.to_dtype(DType::F64)?;
        let t3 = std::time::Instant::now();
        let _ = (b, c);
        println!(
            "t-matmul {:.1} contiguous-matmul {:.1} to f64 {:.1}",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3
        );
    }
    Ok(())
}
