// Runs cov_matvec.cu unchanged on the CPU, for the tests of machines without a GPU: every block in turn, its
// TILE × TILE threads as real threads meeting at a barrier for __syncthreads, `__shared__` as static storage
// (one block runs at a time, so the block's threads share it as on a GPU).
//
// Usage: emulate IN OUT. IN holds eight int32 (B, C, H, W, ry, rx, mode, bytes per value: 4 or 8), then the
// tables and v in that type; OUT receives Σv (B·C·H·W values of the same type).

#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#define SGR_CUDA_EMULATION
#define SGR_MIN(a, b) std::min((a), (b))
#define __device__
#define __global__
#define __shared__ static
#define __restrict__

struct Dim3 {
    int x, y, z;
};
thread_local Dim3 threadIdx, blockIdx;
static std::barrier<>* block_barrier = nullptr;
static void __syncthreads() { block_barrier->arrive_and_wait(); }

#include "cov_matvec.cu"

template <typename T>
static void launch(void (*kernel)(const T*, T*, const T*, int, int, int, int, int, int), const T* v, T* out,
                   const T* tables, int B, int C, int H, int W, int ry, int rx, int mode) {
    const int gx = (W + TILE - 1) / TILE, gy = (H + TILE - 1) / TILE, gz = mode == 2 ? B * C : B;
    for (int z = 0; z < gz; ++z)
        for (int by = 0; by < gy; ++by)
            for (int bx = 0; bx < gx; ++bx) {
                std::barrier<> bar(TILE * TILE);
                block_barrier = &bar;
                std::vector<std::thread> threads;
                for (int ty = 0; ty < TILE; ++ty)
                    for (int tx = 0; tx < TILE; ++tx)
                        threads.emplace_back([=] {
                            threadIdx = {tx, ty, 0};
                            blockIdx = {bx, by, z};
                            kernel(v, out, tables, C, H, W, ry, rx, mode);
                        });
                for (auto& t : threads) t.join();
            }
}

template <typename T>
static int run(FILE* in, FILE* outf, const int32_t* h) {
    const int B = h[0], C = h[1], H = h[2], W = h[3], ry = h[4], rx = h[5], mode = h[6];
    const long table_len = (long)(2 * ry + 1) * (2 * rx + 1);
    const long n_tables = mode == 0 ? 1 : mode == 1 ? 2 : (long)C * C;
    const long n = (long)B * C * H * W;
    std::vector<T> tables(table_len * n_tables), v(n), out(n, T(-12345));
    if (fread(tables.data(), sizeof(T), tables.size(), in) != tables.size()) return 3;
    if (fread(v.data(), sizeof(T), v.size(), in) != v.size()) return 3;
    if constexpr (sizeof(T) == 4)
        launch<float>(cov_matvec_f32, v.data(), out.data(), tables.data(), B, C, H, W, ry, rx, mode);
    else
        launch<double>(cov_matvec_f64, v.data(), out.data(), tables.data(), B, C, H, W, ry, rx, mode);
    if (fwrite(out.data(), sizeof(T), out.size(), outf) != out.size()) return 4;
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: emulate IN OUT\n");
        return 2;
    }
    FILE* in = fopen(argv[1], "rb");
    FILE* out = fopen(argv[2], "wb");
    if (!in || !out) return 2;
    int32_t h[8];
    if (fread(h, 4, 8, in) != 8) return 3;
    const int rc = h[7] == 4 ? run<float>(in, out, h) : run<double>(in, out, h);
    fclose(in);
    fclose(out);
    return rc;
}
