//! `Σ v` for a batch of 128: structured covariance functions against the dense product, and the bytes each
//! representation holds. Run with `cargo bench -p sgr-covariance`.

use std::hint::black_box;
use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use sgr_covariance::{ChannelStructure, CovFun, Covariance, Dense};

fn lrc_like(shape: (usize, usize, usize), radius: i64) -> CovFun {
    CovFun::from_fn(shape, radius, ChannelStructure::IntraInter, |a, b, r| {
        let e = (-(r as f64) / 4.0).exp();
        if a == b { e } else { 0.5 * e }
    })
    .expect("valid covariance function")
}

fn bench(c: &mut Criterion) {
    let batch = 128;
    for shape in [(1usize, 28usize, 28usize), (3, 32, 32), (3, 224, 224)] {
        let (ch, h, w) = shape;
        let v = Tensor::randn(0f32, 1f32, (batch, ch, h, w), &Device::Cpu).expect("randn");
        let mut group = c.benchmark_group(format!("matvec_b{batch}_{ch}x{h}x{w}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        let full = CovFun::full_radius(h, w) as i64;
        for radius in [2i64, 4, 8, full] {
            let cov = lrc_like(shape, radius);
            let label = if radius == full {
                "full".to_string()
            } else {
                radius.to_string()
            };
            eprintln!("{ch}x{h}x{w} covfun R={label}: {} bytes", cov.bytes());
            group.bench_function(format!("covfun_R{label}"), |b| {
                b.iter(|| black_box(cov.matvec(&v).expect("matvec")))
            });
        }
        let d = ch * h * w;
        if d <= 4096 {
            let dense =
                Dense::new(shape, &lrc_like(shape, 8).to_dense().expect("dense")).expect("dense");
            eprintln!("{ch}x{h}x{w} dense: {} bytes", dense.bytes());
            let _ = dense.matvec(&v);
            group.bench_function("dense", |b| {
                b.iter(|| black_box(dense.matvec(&v).expect("matvec")))
            });
        } else {
            eprintln!(
                "{ch}x{h}x{w} dense: would need {} bytes (f64), not run",
                d * d * 8
            );
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
