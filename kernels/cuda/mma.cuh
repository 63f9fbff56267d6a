// kernels/cuda private: the tensor-core instructions the flash attention kernels use, as inline device
// functions, with the register layouts of the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point
// type", "Warp-level matrix load instruction: ldmatrix"). Every lane of the warp calls each of them together.
// Under nvcc they are inline PTX (sm_80 and later); on the emulated backend (LORA_TRAIN_CUDA_EMU) warp
// collectives in tools/cuda_emu that gather the 32 lanes' registers and hand back each lane's fragment.
//
// Fragments, lane = 4 g + t (g = lane / 4, t = lane % 4); a .b32 register holds two bf16, the lower-indexed
// element in its low half:
//   A (16 x 16, row): a[0] = A[g][2t, 2t+1]   a[1] = A[g+8][2t, 2t+1]
//                     a[2] = A[g][2t+8, +9]   a[3] = A[g+8][2t+8, +9]
//   B (16 x 8, col):  b[0] = B[2t, 2t+1][g]   b[1] = B[2t+8, 2t+9][g]
//   C, D (16 x 8, fp32): c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g+8][2t, 2t+1]
// ldmatrix .m8n8 .b16: lane i gives the shared-memory address of row i % 8 of matrix i / 8 (8 contiguous
// bf16, 16-byte aligned; lanes 0..7 for .x1, 0..15 for .x2, all for .x4); register j of lane l gets matrix
// j's M[g][2t, 2t+1], or with .trans M[2t][g], M[2t+1][g].
#pragma once
#include <stdint.h>

#include "cuda_common.cuh"

// d (16 x 8) += a (16 x 16) b (16 x 8), bf16 products accumulated in fp32.
__device__ __forceinline__ void mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef LORA_TRAIN_CUDA_EMU
    ::emu::warp_mma_m16n8k16_bf16(d, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Four 8 x 8 matrices (an A fragment): r[j] from matrix j, rows addressed by lanes 8 j .. 8 j + 7.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const bf16 *row) {
#ifdef LORA_TRAIN_CUDA_EMU
    ::emu::warp_ldmatrix(r, 4, false, row);
#else
    unsigned address = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
#endif
}

// Two 8 x 8 matrices (a B fragment whose columns are rows in memory); lanes 0..15 give the addresses.
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const bf16 *row) {
#ifdef LORA_TRAIN_CUDA_EMU
    ::emu::warp_ldmatrix(r, 2, false, row);
#else
    unsigned address = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(address));
#endif
}

// Two 8 x 8 matrices transposed (a B fragment whose rows are rows in memory); lanes 0..15 give the addresses.
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const bf16 *row) {
#ifdef LORA_TRAIN_CUDA_EMU
    ::emu::warp_ldmatrix(r, 2, true, row);
#else
    unsigned address = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(address));
#endif
}

// Two floats rounded to bf16 and packed as one fragment register, lo in the low half.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16;
}

// The A fragment (16 x 16) of two C fragments side by side (columns 0..7 and 8..15), rounded to bf16: a
// product's result feeds the next product without leaving registers (FlashAttention-2's P V).
__device__ __forceinline__ void c_to_a(uint32_t a[4], const float left[4], const float right[4]) {
    a[0] = pack_bf16x2(left[0], left[1]);
    a[1] = pack_bf16x2(left[2], left[3]);
    a[2] = pack_bf16x2(right[0], right[1]);
    a[3] = pack_bf16x2(right[2], right[3]);
}
