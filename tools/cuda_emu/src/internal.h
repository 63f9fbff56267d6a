// cuda_emu internals shared by the runtime (runtime.cpp, launch.cpp), the
// cuBLASLt stand-in (cublaslt.cpp) and the NCCL stand-in (nccl.cpp).
//
// Execution model: nothing runs when it is issued. Every stream is a queue of
// Work; work runs only when the host waits for it (cudaStreamSynchronize,
// cudaEventSynchronize/Query, cudaDeviceSynchronize, cudaFree, a synchronous
// copy), in an order chosen among what CUDA allows (stream order, events, the
// legacy default stream), forward, reverse or seeded random
// (CUDA_EMU_SCHEDULE). So a host read of memory that an unfinished copy fills
// sees the old bytes, as on a GPU that has not got there yet.
//
// One process-wide recursive mutex (emu::Lock) guards all emulator state;
// every API function takes it; Work::run() is called with it held.
#pragma once
#include <cuda_runtime.h>

#include <memory>
#include <string>

namespace emu {

// A unit of stream work.
struct Work {
    virtual ~Work() {}
    // For messages: "kernel rmsnorm_forward_kernel", "cublasLtMatmul", "ncclAllReduce".
    virtual std::string name() const = 0;
    // Does the work, or as much of it as it can: true when finished; false
    // when it waits on something outside this process (only NCCL work does);
    // it is called again later. A failure is reported with emu::fault().
    virtual bool run() = 0;
    // Whether it reads or writes memory in [begin, end): cudaFree of memory
    // that queued work still uses is a fault (CUDA only "may" wait for it).
    virtual bool touches(const char * /*begin*/, const char * /*end*/) const { return false; }
};

// Whether p lies in [begin, end).
static inline bool within(const void *p, const char *begin, const char *end) {
    return (const char *)p >= begin && (const char *)p < end;
}

// Appends work to a stream (NULL or cudaStreamLegacy: the legacy default
// stream). Checks the handle; cudaErrorInvalidResourceHandle for a bad one.
cudaError_t enqueue(cudaStream_t stream, std::unique_ptr<Work> work);

// What a pointer points into.
enum class Memory { unknown, device, pinned };
struct Region {
    Memory kind;
    char *base;     // start of the allocation
    size_t bytes;   // its size as requested
};
// The allocation holding ptr (kind unknown when none: ordinary host memory).
Region find(const void *ptr);
// True when [ptr, ptr + bytes) lies inside one device allocation; otherwise
// records a fault naming `what` (for example "cublasLtMatmul: A") and returns false.
bool check_device_range(const void *ptr, size_t bytes, const char *what);

// An error found while work runs (an out-of-bounds write, a barrier not
// reached, a refused cuBLASLt case): printed to stderr with the message, and
// made the sticky error every later runtime call returns, as a GPU fault is.
void fault(cudaError_t code, const char *format, ...) __attribute__((format(printf, 2, 3)));
// An error of the call being made (bad argument, refused launch): returned by
// the next cudaGetLastError, not sticky.
void set_last_error(cudaError_t code);

// The process-wide lock; RAII.
struct Lock {
    Lock();
    ~Lock();
};
// Releases the lock for about 100 microseconds (a blocking wait polls with this).
void nap();
// Counts a host-side poll that found something not done (cuda_emu_host_waits).
void count_host_wait();

// After work on ptr's allocation: a fault naming `after` when its guard
// bytes were overwritten. True when intact (or ptr is in no allocation).
bool check_guards(const void *ptr, const char *after);

// CUDA_EMU_SCHEDULE: the order threads of a block, blocks of a grid and
// ready streams are run in: forward (the default), reverse, or random:SEED.
enum class ScheduleOrder { forward, reverse, random };
struct Schedule {
    ScheduleOrder order;
    uint64_t seed;
};
Schedule schedule_mode();

// Seeded randomness of the schedule (CUDA_EMU_SCHEDULE=random:SEED), for
// stand-ins that choose an order: a number in [0, n).
unsigned pick(unsigned n);

}  // namespace emu
