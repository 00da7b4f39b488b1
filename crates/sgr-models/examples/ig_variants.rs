//! Scratch: gemm shapes for the conv input gradient.
#[allow(unsafe_code)]
fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    acc: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            acc,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
fn main() {
    peak();
    let (h, c, o, k) = (26usize, 32usize, 32usize, 3usize);
    let oh = h - 2;
    let imgs = 64; // per thread-equivalent (single thread)
    let dy = vec![0.5f32; imgs * oh * oh * o];
    let wm = vec![0.25f32; o * k * k * c];
    let flops = 2.0 * (imgs * oh * oh * o * k * k * c) as f64;
    // (a) current: cols = dy · wm (rows × kk, K = o), per chunk of 4 images
    let kk = k * k * c;
    let mut cols = vec![0f32; 4 * oh * oh * kk];
    let t = std::time::Instant::now();
    for ch in 0..imgs / 4 {
        let rows = 4 * oh * oh;
        let d = &dy[ch * rows * o..(ch + 1) * rows * o];
        gemm_f32(rows, kk, o, &mut cols, kk, false, d, o, 1, &wm, kk, 1);
    }
    let ta = t.elapsed().as_secs_f64();
    println!(
        "(a) gemm only: {:.1} ms, {:.0} GFLOP/s",
        ta * 1e3,
        flops / ta / 1e9
    );
    // (c) shifted: dy padded to width h, 9 gemms per image accumulating into dx
    let dyp = vec![0.5f32; imgs * oh * h * o];
    let mut dx = vec![0f32; imgs * h * h * c];
    // per-offset weight blocks W_s (o × c): wm is (o, kk) with kk in (di, dj, c) order
    let t = std::time::Instant::now();
    for im in 0..imgs {
        let d = &dyp[im * oh * h * o..(im + 1) * oh * h * o];
        let x = &mut dx[im * h * h * c..(im + 1) * h * h * c];
        let m = oh * h - 2; // rows so that p + shift stays inside
        for di in 0..k {
            for dj in 0..k {
                let shift = di * h + dj;
                let off = (di * k + dj) * c;
                gemm_f32(
                    m,
                    c,
                    o,
                    &mut x[shift * c..],
                    c,
                    true,
                    d,
                    o,
                    1,
                    &wm[off..],
                    kk,
                    1,
                );
            }
        }
    }
    let tc = t.elapsed().as_secs_f64();
    println!(
        "(c) shifted 9 gemms: {:.1} ms, {:.0} GFLOP/s (useful)",
        tc * 1e3,
        flops / tc / 1e9
    );
    // (b) padded conv: cols2 (rows' × kk) · wflip (kk × c), K = 288
    let mut out = vec![0f32; 4 * h * h * c];
    let colsb = vec![0.5f32; 4 * h * h * kk];
    let t = std::time::Instant::now();
    for _ in 0..imgs / 4 {
        gemm_f32(
            4 * h * h,
            c,
            kk,
            &mut out,
            c,
            false,
            &colsb,
            kk,
            1,
            &wm,
            c,
            1,
        );
    }
    let tb = t.elapsed().as_secs_f64();
    println!(
        "(b) padded gemm only: {:.1} ms, {:.0} GFLOP/s (useful)",
        tb * 1e3,
        flops / tb / 1e9
    );
}
#[allow(dead_code)]
fn peak() {
    for (m, n, k) in [
        (512usize, 512usize, 512usize),
        (4608, 32, 288),
        (4608, 288, 32),
        (32, 288, 4608),
        (4608, 64, 576),
        (4608, 288, 64),
        (4608, 32, 32),
    ] {
        let a = vec![0.5f32; m * k];
        let b = vec![0.5f32; k * n];
        let mut c = vec![0f32; m * n];
        let reps = (2e9 / (2.0 * (m * n * k) as f64)) as usize + 1;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            gemm_f32(m, n, k, &mut c, n, false, &a, k, 1, &b, n, 1);
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "{m}x{n}x{k}: {:.0} GFLOP/s",
            2.0 * (m * n * k * reps) as f64 / s / 1e9
        );
    }
}
