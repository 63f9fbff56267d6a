// cuda_mma_probe (kernels/cuda_testing.h): one 16 x 16 x 8 product through mma.cuh's fragment functions, so
// that tests/gpu/test_gpu_flash.c pinpoints a layout error in them (or in the emulator's collectives) before
// it shows up inside the flash attention kernels.
#include "cuda_common.cuh"
#include "mma.cuh"
#include "../cuda_testing.h"

// One warp. lane = 4 g + t; fragments by mma.cuh's tables or through shared memory and ldmatrix.
__global__ void mma_probe_kernel(float *d, const bf16 *a, const bf16 *b, const float *c, int mode) {
    __shared__ __align__(16) bf16 a_tile[16 * 16], b_tile[16 * 16];
    int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    int b_elems = mode == 2 ? 8 * 16 : 16 * 8;
    for (int i = lane; i < 16 * 16; i += 32) a_tile[i] = a[i];
    for (int i = lane; i < b_elems; i += 32) b_tile[i] = b[i];
    __syncwarp();
    uint32_t af[4], bf[2];
    if (mode == 0) {
        for (int r = 0; r < 4; r++) {
            int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
            af[r] = pack_bf16x2(__bfloat162float(a[row * 16 + col]), __bfloat162float(a[row * 16 + col + 1]));
        }
        for (int r = 0; r < 2; r++) {
            int k = 2 * t + 8 * r;
            bf[r] = pack_bf16x2(__bfloat162float(b[k * 8 + g]), __bfloat162float(b[(k + 1) * 8 + g]));
        }
    } else {
        ldmatrix_x4(af, a_tile + (lane % 16) * 16 + lane / 16 * 8);
        if (mode == 1)
            ldmatrix_x2_trans(bf, b_tile + (lane % 16) * 8);         // B's rows k, 8 columns each
        else
            ldmatrix_x2(bf, b_tile + (lane % 8) * 16 + lane / 8 % 2 * 8);  // B^T's rows n, k 0-7 and 8-15
    }
    float acc[4];
    for (int i = 0; i < 4; i++) acc[i] = c[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
    mma_bf16_16816(acc, af, bf);
    for (int i = 0; i < 4; i++) d[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = acc[i];
}

void cuda_mma_probe(const Ops *ops, float *d, const void *a, const void *b, const float *c, int mode) {
    mma_probe_kernel<<<1, 32, 0, cuda_context(ops)->stream>>>(d, (const bf16 *)a, (const bf16 *)b, c, mode);
    launchCheck("mma_probe_kernel");
}
