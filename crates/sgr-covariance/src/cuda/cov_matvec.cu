// The covariance-function product Σv on CUDA: direct 2-D correlations with zero padding, tiled in shared memory.
//
// out_c(p) = Σ_{c'} Σ_δ K_{cc'}(δ) v_{c'}(p + δ), δ = (dy, dx), |dy| ≤ ry, |dx| ≤ rx; tables are
// (2ry+1) × (2rx+1), entry (dy + ry, dx + rx), row-major (the layout of sgr-covariance's KernelSet).
//
// Modes (the `tables` argument holds, in this order):
//   0  one channel:          [K]
//   1  intra/inter, C > 1:   [K_intra − K_inter, K_inter]; out_c = (K_intra − K_inter) ⋆ v_c + K_inter ⋆ Σ_c' v_c'
//                            — C + 1 single-channel correlations per image instead of C²
//   2  full C × C:           C·C tables, row-major over (c, c')
//
// Grid: x = column tiles, y = row tiles, z = image (modes 0, 1) or image · C + output channel (mode 2).
// Block: TILE × TILE threads, one output pixel each. In mode 1 a block computes every output channel of its
// tile, so the shared correlation K_inter ⋆ Σ_c' v_c' is done once per tile and kept in a register.
//
// The kernel's taps are visited in chunks of at most KC × KC: per chunk the block stages the image slab it
// needs ((TILE + KC − 1)² values, zeros outside the image) and the chunk of the table in shared memory, so
// shared memory stays at (31² + 16²) values whatever the radius (9.7 KB in f64), and every tap costs two
// shared-memory reads and one fused multiply-add.
//
// This file is compiled to PTX by build.rs (nvcc --ptx) and loaded by src/cuda.rs. It also compiles as plain
// C++ with the small emulation header of tests/cuda_emulation, which runs it on the CPU in the tests.

#ifndef SGR_CUDA_EMULATION
#define SGR_MIN(a, b) ((a) < (b) ? (a) : (b))
#endif

#define TILE 16
#define KC 16
#define SLAB (TILE + KC - 1)

// Σ over one correlation of the block's tile: `sel` ≥ 0 correlates channel `sel` of the image, sel < 0 the
// sum over all channels. Every thread of the block must call this (it synchronises).
template <typename T>
__device__ T correlate_tile(const T* __restrict__ img, int sel, const T* __restrict__ table, int C, int H, int W,
                            int ry, int rx, T* slab, T* taps) {
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tid = ty * TILE + tx;
    const int kh = 2 * ry + 1, kw = 2 * rx + 1;
    const long hw = (long)H * W;
    T acc = 0;
    for (int cy = 0; cy < kh; cy += KC) {
        for (int cx = 0; cx < kw; cx += KC) {
            const int ny = SGR_MIN(KC, kh - cy), nx = SGR_MIN(KC, kw - cx);
            // Image rows y0 + [0, TILE + ny − 1) and columns x0 + [0, TILE + nx − 1) feed this chunk.
            const int y0 = blockIdx.y * TILE + cy - ry;
            const int x0 = blockIdx.x * TILE + cx - rx;
            __syncthreads();  // the previous chunk's reads are done
            for (int i = tid; i < SLAB * SLAB; i += TILE * TILE) {
                const int sy = i / SLAB, sx = i % SLAB;
                const int gy = y0 + sy, gx = x0 + sx;
                T val = 0;
                if (sy < TILE + ny - 1 && sx < TILE + nx - 1 && gy >= 0 && gy < H && gx >= 0 && gx < W) {
                    const long at = (long)gy * W + gx;
                    if (sel >= 0) {
                        val = img[sel * hw + at];
                    } else {
                        for (int c = 0; c < C; ++c) val += img[c * hw + at];
                    }
                }
                slab[i] = val;
            }
            for (int i = tid; i < KC * KC; i += TILE * TILE) {
                const int ky = i / KC, kx = i % KC;
                taps[i] = (ky < ny && kx < nx) ? table[(cy + ky) * kw + cx + kx] : T(0);
            }
            __syncthreads();
            for (int ky = 0; ky < ny; ++ky) {
                const T* row = slab + (ty + ky) * SLAB + tx;
                const T* k = taps + ky * KC;
                for (int kx = 0; kx < nx; ++kx) acc += k[kx] * row[kx];
            }
        }
    }
    return acc;
}

template <typename T>
__device__ void cov_matvec(const T* __restrict__ v, T* __restrict__ out, const T* __restrict__ tables, int C,
                           int H, int W, int ry, int rx, int mode) {
    __shared__ T slab[SLAB * SLAB];
    __shared__ T taps[KC * KC];
    const int x = blockIdx.x * TILE + threadIdx.x;
    const int y = blockIdx.y * TILE + threadIdx.y;
    const bool inside = x < W && y < H;
    const long hw = (long)H * W;
    const long table_len = (long)(2 * ry + 1) * (2 * rx + 1);
    if (mode == 2) {
        const int b = blockIdx.z / C, c = blockIdx.z % C;
        const T* img = v + (long)b * C * hw;
        T acc = 0;
        for (int c2 = 0; c2 < C; ++c2)
            acc += correlate_tile(img, c2, tables + (c * C + c2) * table_len, C, H, W, ry, rx, slab, taps);
        if (inside) out[((long)b * C + c) * hw + (long)y * W + x] = acc;
    } else if (mode == 1) {
        const int b = blockIdx.z;
        const T* img = v + (long)b * C * hw;
        const T shared = correlate_tile(img, -1, tables + table_len, C, H, W, ry, rx, slab, taps);
        for (int c = 0; c < C; ++c) {
            const T own = correlate_tile(img, c, tables, C, H, W, ry, rx, slab, taps);
            if (inside) out[((long)b * C + c) * hw + (long)y * W + x] = own + shared;
        }
    } else {
        const int b = blockIdx.z;
        const T acc = correlate_tile(v + (long)b * hw, 0, tables, 1, H, W, ry, rx, slab, taps);
        if (inside) out[(long)b * hw + (long)y * W + x] = acc;
    }
}

extern "C" __global__ void cov_matvec_f32(const float* v, float* out, const float* tables, int C, int H, int W,
                                          int ry, int rx, int mode) {
    cov_matvec<float>(v, out, tables, C, H, W, ry, rx, mode);
}

extern "C" __global__ void cov_matvec_f64(const double* v, double* out, const double* tables, int C, int H, int W,
                                          int ry, int rx, int mode) {
    cov_matvec<double>(v, out, tables, C, H, W, ry, rx, mode);
}
