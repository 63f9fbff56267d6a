// cuda_emu: the device side of CUDA C++ for kernels compiled by g++.
// Kernel bodies run as one fiber per thread (launch.cpp). The .cu sources are
// unchanged except for two mechanical rewrites at build time (rewrite.cmake):
//   k<<<grid, block, smem, stream>>>(args)  ->  ::emu::Launch("k", grid, block, smem, stream).run(k, args)
//   extern __shared__ T name[];             ->  T *name = (T *)::emu::dynamic_shared();
// Static __shared__ variables are static storage in one ELF section: blocks
// run one at a time, and the section is refilled with 0xFF before each block.
// __forceinline__ functions get internal linkage, so that a __shared__
// variable inside one is one per .cu file, as nvcc compiles them (whole
// program per file), and no section-placed variable is a COMDAT duplicate.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ static inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static __attribute__((section("cuda_emu_shared")))

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

static const int warpSize = 32;

namespace emu {

extern const uint3 *current_thread_idx;  // the running fiber's threadIdx
extern uint3 block_idx;
extern dim3 block_dim, grid_dim;

void *dynamic_shared();
void syncthreads(const char *file, int line);

enum WarpOpKind { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, BALLOT, ANY, ALL, SYNCWARP, MMA, LDMATRIX };
// Every lane of `mask` calls it with the same kind and mask; returns the
// value of the source lane (shuffles) or the vote. MMA and LDMATRIX: `value`
// points to the lane's operands, which the last lane to arrive reads and
// whose results it writes for every lane (launch.cpp).
uint64_t warp_op(WarpOpKind kind, unsigned mask, uint64_t value, int param, int width);

// The tensor-core instructions of kernels/cuda/mma.cuh, with the PTX ISA's
// fragment layouts, as collectives of the whole warp (all 32 lanes, or a fault):
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 with C = D = d, and
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16 (row: this lane's
// row address, in the block's shared memory, 16-byte aligned).
void warp_mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2]);
void warp_ldmatrix(uint32_t *r, int n_matrices, bool trans, const void *row);

// A vector load or store of `bytes` at p (ld / st .v4.b32: 16) faults unless p is a multiple of bytes, as on a
// GPU (kernels/cuda/cuda_common.cuh's load8 / store8 call it).
void check_vector_access(const void *p, size_t bytes);

template <typename T>
T shuffle(WarpOpKind kind, unsigned mask, T var, int param, int width) {
    static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value, "shuffle of a large type");
    uint64_t bits = 0;
    memcpy(&bits, &var, sizeof var);
    bits = warp_op(kind, mask, bits, param, width);
    T out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

struct KernelLaunch {
    const char *name;
    const void *function;
    dim3 grid, block;
    size_t shared_bytes;
    cudaStream_t stream;
};
// Checks the configuration and queues the kernel: body() runs once per
// thread; `pointers` are the pointer arguments, checked to be device or
// pinned memory and, after the kernel, the guards of their allocations.
void launch(const KernelLaunch &spec, std::shared_ptr<const std::function<void()>> body, const void *const *pointers,
            int n_pointers);

template <typename T>
void collect_pointer(const T &value, const void **pointers, int *n) {
    if constexpr (std::is_pointer<T>::value) pointers[(*n)++] = (const void *)value;
}

class Launch {
   public:
    Launch(const char *name, dim3 grid, dim3 block, size_t shared_bytes = 0, cudaStream_t stream = 0)
        : spec_{name, nullptr, grid, block, shared_bytes, stream} {}

    // The arguments convert to the kernel's parameter types here, at the
    // launch, as CUDA copies them.
    template <typename... P, typename... A>
    void run(void (*kernel)(P...), A &&...args) {
        static_assert(sizeof...(P) == sizeof...(A), "wrong number of kernel arguments");
        auto params = std::make_shared<std::tuple<std::decay_t<P>...>>(std::forward<A>(args)...);
        const void *pointers[sizeof...(P) + 1];
        int n_pointers = 0;
        std::apply([&](const auto &...p) { (collect_pointer(p, pointers, &n_pointers), ...); }, *params);
        spec_.function = (const void *)kernel;
        auto body = std::make_shared<const std::function<void()>>([kernel, params] { std::apply(kernel, *params); });
        launch(spec_, body, pointers, n_pointers);
    }

   private:
    KernelLaunch spec_;
};

cudaError_t set_max_dynamic_shared(const void *function, int bytes);

}  // namespace emu

#define threadIdx (*::emu::current_thread_idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)

template <typename T>
cudaError_t cudaFuncSetAttribute(T *function, cudaFuncAttribute attribute, int value) {
    if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
    return ::emu::set_max_dynamic_shared((const void *)function, value);
}

// ---- warp intrinsics (width: a power of two up to 32, as CUDA requires) ----
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    return ::emu::shuffle(::emu::SHFL_IDX, mask, var, src_lane, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return ::emu::shuffle(::emu::SHFL_UP, mask, var, (int)delta, width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return ::emu::shuffle(::emu::SHFL_DOWN, mask, var, (int)delta, width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    return ::emu::shuffle(::emu::SHFL_XOR, mask, var, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
    return (unsigned)::emu::warp_op(::emu::BALLOT, mask, predicate != 0, 0, 32);
}
inline int __any_sync(unsigned mask, int predicate) {
    return (int)::emu::warp_op(::emu::ANY, mask, predicate != 0, 0, 32);
}
inline int __all_sync(unsigned mask, int predicate) {
    return (int)::emu::warp_op(::emu::ALL, mask, predicate != 0, 0, 32);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::warp_op(::emu::SYNCWARP, mask, 0, 0, 32); }

// ---- atomics: fibers switch only at barriers and warp intrinsics, so a
// read-modify-write is atomic ----
template <typename T>
inline T atomicAdd(T *address, T value) {
    T old = *address;
    *address = old + value;
    return old;
}
template <typename T>
inline T atomicMax(T *address, T value) {
    T old = *address;
    if (value > old) *address = value;
    return old;
}
template <typename T>
inline T atomicMin(T *address, T value) {
    T old = *address;
    if (value < old) *address = value;
    return old;
}
template <typename T>
inline T atomicExch(T *address, T value) {
    T old = *address;
    *address = value;
    return old;
}
template <typename T>
inline T atomicCAS(T *address, T compare, T value) {
    T old = *address;
    if (old == compare) *address = value;
    return old;
}

// ---- device math: what CUDA adds to <math.h> ----
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
// Rounded fp32 operations: the emulated kernels are built with
// -ffp-contract=off, so no product is fused into an FMA anywhere.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
