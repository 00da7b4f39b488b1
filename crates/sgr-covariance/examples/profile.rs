use candle_core::{Device, Tensor};
use sgr_covariance::{ChannelStructure, CovFun, Covariance};
fn main() {
    let r: i64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let c: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let cov = CovFun::from_fn((c, 32, 32), r, ChannelStructure::IntraInter, |a, b, r| {
        if a == b { 1.0 / (1.0 + r as f64) } else { 0.2 }
    })
    .unwrap();
    let v = Tensor::randn(0f32, 1f32, (128, c, 32, 32), &Device::Cpu).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..50 {
        let _ = cov.matvec(&v).unwrap();
    }
    println!("{:.3} ms", t.elapsed().as_secs_f64() * 1e3 / 50.0);
}
