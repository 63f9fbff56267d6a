// cuda_emu runtime: errors, the device, memory with guards, streams and
// events with deferred execution, copies. See internal.h for the model.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "internal.h"

namespace emu {

// ----------------------------------------------------------------------------
// the lock, the schedule, errors

static std::recursive_mutex big_lock;
static thread_local int lock_depth;  // levels of big_lock this thread holds
Lock::Lock() {
    big_lock.lock();
    lock_depth++;
}
Lock::~Lock() {
    lock_depth--;
    big_lock.unlock();
}

void nap() {
    int depth = lock_depth;
    for (int i = 0; i < depth; i++) big_lock.unlock();
    lock_depth = 0;
    struct timespec pause = {0, 100 * 1000};
    nanosleep(&pause, NULL);
    for (int i = 0; i < depth; i++) big_lock.lock();
    lock_depth = depth;
}

Schedule schedule_mode() {
    static Schedule mode = [] {
        Schedule s = {ScheduleOrder::forward, 0};
        const char *text = getenv("CUDA_EMU_SCHEDULE");
        if (!text || !*text || strcmp(text, "forward") == 0) return s;
        if (strcmp(text, "reverse") == 0) {
            s.order = ScheduleOrder::reverse;
        } else if (strncmp(text, "random", 6) == 0) {
            s.order = ScheduleOrder::random;
            s.seed = text[6] == ':' ? strtoull(text + 7, NULL, 10) : 1;
        } else {
            fprintf(stderr, "cuda_emu: CUDA_EMU_SCHEDULE='%s' is not forward, reverse or random:SEED\n", text);
            exit(2);
        }
        return s;
    }();
    return mode;
}

unsigned pick(unsigned n) {
    static std::mt19937_64 rng(schedule_mode().seed);
    return n <= 1 ? 0 : (unsigned)(rng() % n);
}

static cudaError_t sticky_error = cudaSuccess;
static cudaError_t last_error = cudaSuccess;

void fault(cudaError_t code, const char *format, ...) {
    char message[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    fprintf(stderr, "cuda_emu: %s\n", message);
    if (sticky_error == cudaSuccess) sticky_error = code;
}

void set_last_error(cudaError_t code) {
    if (last_error == cudaSuccess) last_error = code;
}

// The status an API call returns: the sticky fault if there was one.
static cudaError_t status(cudaError_t code = cudaSuccess) {
    if (sticky_error != cudaSuccess) return sticky_error;
    if (code != cudaSuccess) set_last_error(code);
    return code;
}

// ----------------------------------------------------------------------------
// memory: every allocation has GUARD bytes of GUARD_BYTE on both sides and
// starts filled with 0xFF (NaN as float and as bf16)

enum { GUARD = 256 };
static const unsigned char GUARD_BYTE = 0xA5;

struct Allocation {
    char *raw;     // what posix_memalign gave
    char *user;    // raw + GUARD, 256-aligned as cudaMalloc's
    size_t bytes;
    Memory kind;
};

static std::map<uintptr_t, Allocation> allocations;  // by user address
static size_t live_device_bytes, peak_device_bytes;

static const Allocation *allocation_of(const void *ptr) {
    uintptr_t address = (uintptr_t)ptr;
    auto it = allocations.upper_bound(address);
    if (it == allocations.begin()) return NULL;
    --it;
    const Allocation &a = it->second;
    return address < (uintptr_t)a.user + (a.bytes > 0 ? a.bytes : 1) ? &a : NULL;
}

Region find(const void *ptr) {
    Lock lock;
    const Allocation *a = allocation_of(ptr);
    if (!a) return {Memory::unknown, NULL, 0};
    return {a->kind, a->user, a->bytes};
}

bool check_device_range(const void *ptr, size_t bytes, const char *what) {
    Lock lock;
    const Allocation *a = allocation_of(ptr);
    if (a && a->kind == Memory::device && (const char *)ptr + bytes <= a->user + a->bytes) return true;
    if (!a || a->kind != Memory::device)
        fault(cudaErrorIllegalAddress, "%s: %p is not device memory", what, ptr);
    else
        fault(cudaErrorIllegalAddress, "%s: [%p, +%zu) runs %zu bytes past its allocation of %zu bytes at %p", what,
              ptr, bytes, (size_t)((const char *)ptr + bytes - (a->user + a->bytes)), a->bytes, (void *)a->user);
    return false;
}

static bool guards_intact(const Allocation &a) {
    for (size_t i = 0; i < GUARD; i++)
        if ((unsigned char)a.raw[i] != GUARD_BYTE || (unsigned char)a.user[a.bytes + i] != GUARD_BYTE) return false;
    return true;
}

bool check_guards(const void *ptr, const char *after) {
    Lock lock;
    const Allocation *a = allocation_of(ptr);
    if (!a || guards_intact(*a)) return true;
    fault(cudaErrorIllegalAddress, "%s wrote outside the %s allocation of %zu bytes at %p",
          after, a->kind == Memory::device ? "device" : "pinned", a->bytes, (void *)a->user);
    return false;
}

static cudaError_t allocate(void **ptr, size_t bytes, Memory kind) {
    if (!ptr) return status(cudaErrorInvalidValue);
    *ptr = NULL;
    size_t total = GUARD + bytes + GUARD;
    void *raw;
    if (posix_memalign(&raw, GUARD, total) != 0) return status(cudaErrorMemoryAllocation);
    Allocation a = {(char *)raw, (char *)raw + GUARD, bytes, kind};
    memset(a.raw, GUARD_BYTE, GUARD);
    memset(a.user, 0xFF, bytes);
    memset(a.user + bytes, GUARD_BYTE, GUARD);
    allocations[(uintptr_t)a.user] = a;
    if (kind == Memory::device) {
        live_device_bytes += bytes;
        peak_device_bytes = std::max(peak_device_bytes, live_device_bytes);
    }
    *ptr = a.user;
    return status();
}

static bool queued_work_touches(const Allocation &a);
static cudaError_t synchronize_all();

// cudaFree / cudaFreeHost: the memory must not be in use by queued work (the
// runtime may wait for the device first, but NVIDIA does not promise it, so
// code must have waited itself); then everything queued runs, as it would.
static cudaError_t release(void *ptr, Memory kind, const char *call) {
    if (!ptr) return status();
    auto it = allocations.find((uintptr_t)ptr);
    if (it == allocations.end() || it->second.kind != kind) return status(cudaErrorInvalidValue);
    if (queued_work_touches(it->second))
        fault(cudaErrorIllegalAddress, "%s(%p) while queued work still uses it: wait for the stream first", call, ptr);
    synchronize_all();
    check_guards(ptr, "an earlier kernel or copy");
    if (kind == Memory::device) live_device_bytes -= it->second.bytes;
    free(it->second.raw);
    allocations.erase(it);
    return status();
}

// ----------------------------------------------------------------------------
// streams: queues of work, each entry waiting on (stream, sequence) pairs
// it was ordered after by events or the legacy default stream

struct Dependency {
    CUstream_st *stream;
    uint64_t seq;
};

struct Entry {
    uint64_t seq;
    std::unique_ptr<Work> work;
    std::vector<Dependency> after;
};

}  // namespace emu

struct CUstream_st {
    int id;
    bool blocking;  // synchronizes with the legacy default stream
    bool destroyed;
    std::deque<emu::Entry> queue;
    uint64_t enqueued, completed;  // sequence numbers of the last entry queued and finished
};

struct CUevent_st {
    CUstream_st *stream;  // of the latest record; NULL: never recorded
    uint64_t seq;
    double completed_at;  // host seconds when seen complete, for cudaEventElapsedTime
    bool timing;
};

namespace emu {

static CUstream_st legacy_stream = {0, true, false, {}, 0, 0};
static std::vector<CUstream_st *> streams = {&legacy_stream};  // never freed: events may point at them

static bool is_legacy(cudaStream_t s) { return s == NULL || s == cudaStreamLegacy; }

static CUstream_st *stream_of(cudaStream_t s) {
    if (is_legacy(s)) return &legacy_stream;
    for (CUstream_st *known : streams)
        if (known == s && !known->destroyed) return known;
    return NULL;
}

static bool satisfied(const Dependency &d) { return d.stream->completed >= d.seq; }

// Work on the legacy stream waits for all blocking streams; work on a
// blocking stream waits for the legacy stream.
static std::vector<Dependency> implicit_dependencies(CUstream_st *s) {
    std::vector<Dependency> after;
    if (s == &legacy_stream) {
        for (CUstream_st *other : streams)
            if (other != s && other->blocking && other->enqueued > 0) after.push_back({other, other->enqueued});
    } else if (s->blocking && legacy_stream.enqueued > 0) {
        after.push_back({&legacy_stream, legacy_stream.enqueued});
    }
    return after;
}

static uint64_t push(CUstream_st *s, std::unique_ptr<Work> work, std::vector<Dependency> after) {
    std::vector<Dependency> implicit = implicit_dependencies(s);
    after.insert(after.end(), implicit.begin(), implicit.end());
    Entry e = {++s->enqueued, std::move(work), std::move(after)};
    s->queue.push_back(std::move(e));
    return s->enqueued;
}

cudaError_t enqueue(cudaStream_t stream, std::unique_ptr<Work> work) {
    Lock lock;
    CUstream_st *s = stream_of(stream);
    if (!s) return status(cudaErrorInvalidResourceHandle);
    if (sticky_error != cudaSuccess) return sticky_error;
    push(s, std::move(work), {});
    return cudaSuccess;
}

// After a fault the device is unusable: queued work is dropped.
static void drop_all_work() {
    for (CUstream_st *s : streams) {
        s->queue.clear();
        s->completed = s->enqueued;
    }
}

struct Target {
    CUstream_st *stream;
    uint64_t seq;
};

// How far each stream must run for the targets: the targets and, through
// the dependencies of the entries before them, everything they wait on.
static std::vector<uint64_t> needed_for(const std::vector<Target> &targets) {
    std::vector<uint64_t> need(streams.size(), 0);
    auto index_of = [](CUstream_st *s) { return (size_t)s->id; };
    std::vector<CUstream_st *> pending;
    for (const Target &t : targets)
        if (t.seq > need[index_of(t.stream)]) need[index_of(t.stream)] = t.seq, pending.push_back(t.stream);
    std::vector<uint64_t> scanned(streams.size(), 0);  // entries up to here already looked at
    while (!pending.empty()) {
        CUstream_st *s = pending.back();
        pending.pop_back();
        for (const Entry &e : s->queue) {
            if (e.seq <= scanned[index_of(s)]) continue;
            if (e.seq > need[index_of(s)]) break;
            for (const Dependency &d : e.after)
                if (d.seq > need[index_of(d.stream)]) need[index_of(d.stream)] = d.seq, pending.push_back(d.stream);
            scanned[index_of(s)] = e.seq;
        }
    }
    return need;
}

static bool run_entry(CUstream_st *s) {
    Entry &e = s->queue.front();
    if (!e.work->run()) return false;
    s->completed = e.seq;
    s->queue.pop_front();
    return true;
}

// Runs queued work until every target is complete, choosing among the
// streams whose next entry may run in the schedule's order. Blocking: waits
// (napping) while the only runnable work waits on another process;
// nonblocking: returns false then. False too after a fault.
// Per thread: drives (waits and polls) that found work to wait for, and NCCL
// polls in progress; a watchdog thread's polls are not the calling thread's waits.
static thread_local uint64_t host_waits;

void count_host_wait() { host_waits++; }

static bool drive(const std::vector<Target> &targets, bool blocking) {
    std::vector<uint64_t> need = needed_for(targets);
    std::vector<CUstream_st *> ready;
    std::vector<bool> stalled(streams.size(), false);
    for (bool first = true;; first = false) {
        if (sticky_error != cudaSuccess) {
            drop_all_work();
            return false;
        }
        ready.clear();
        bool done = true;
        for (CUstream_st *s : streams) {
            if (s->completed >= need[s->id]) continue;
            done = false;
            const Entry &head = s->queue.front();
            if (!stalled[s->id] && std::all_of(head.after.begin(), head.after.end(), satisfied)) ready.push_back(s);
        }
        if (done) return true;
        if (first) host_waits++;  // a poll (event or stream query) is the host waiting too
        if (ready.empty()) {
            if (!blocking) return false;
            nap();  // other threads may create streams meanwhile
            need.resize(streams.size(), 0);
            stalled.assign(streams.size(), false);
            continue;
        }
        Schedule mode = schedule_mode();
        size_t chosen = mode.order == ScheduleOrder::forward   ? 0
                        : mode.order == ScheduleOrder::reverse ? ready.size() - 1
                                                               : pick((unsigned)ready.size());
        CUstream_st *s = ready[chosen];
        if (run_entry(s)) {
            std::fill(stalled.begin(), stalled.end(), false);
        } else {
            stalled[s->id] = true;
        }
    }
}

static std::vector<Target> everything() {
    std::vector<Target> all;
    for (CUstream_st *s : streams) all.push_back({s, s->enqueued});
    return all;
}

static cudaError_t synchronize_all() {
    drive(everything(), true);
    return status();
}

static bool queued_work_touches(const Allocation &a) {
    const char *end = a.user + (a.bytes > 0 ? a.bytes : 1);
    for (CUstream_st *s : streams)
        for (const Entry &e : s->queue)
            if (e.work->touches(a.user, end)) return true;
    return false;
}

// ----------------------------------------------------------------------------
// copies and sets as stream work

struct Copy : Work {
    void *dst;
    const void *src;
    size_t bytes;
    std::vector<unsigned char> snapshot;  // a pageable source, taken at the call
    std::string name() const override { return "cudaMemcpyAsync"; }
    bool touches(const char *begin, const char *end) const override {
        return within(dst, begin, end) || (snapshot.empty() && within(src, begin, end));
    }
    bool run() override {
        memcpy(dst, snapshot.empty() ? src : snapshot.data(), bytes);
        check_guards(dst, "cudaMemcpyAsync");
        return true;
    }
};

struct Set : Work {
    void *dst;
    int value;
    size_t bytes;
    std::string name() const override { return "cudaMemsetAsync"; }
    bool touches(const char *begin, const char *end) const override { return within(dst, begin, end); }
    bool run() override {
        memset(dst, value, bytes);
        return true;
    }
};

static bool host_range_ok(const void *ptr, size_t bytes, const char *what) {
    const Allocation *a = allocation_of(ptr);
    if (!a) return true;  // pageable host memory: nothing to check
    if (a->kind == Memory::pinned && (const char *)ptr + bytes <= a->user + a->bytes) return true;
    if (a->kind == Memory::device) {
        fault(cudaErrorInvalidValue, "%s: %p is device memory, but the copy's kind says host", what, ptr);
        return false;
    }
    fault(cudaErrorInvalidValue, "%s: [%p, +%zu) runs past its pinned allocation of %zu bytes", what, ptr, bytes,
          a->bytes);
    return false;
}

static bool is_device(const void *ptr) {
    const Allocation *a = allocation_of(ptr);
    return a && a->kind == Memory::device;
}

// The side of a copy's operand: device, pinned host, or pageable host.
static bool check_side(const void *ptr, size_t bytes, bool device, const char *what) {
    return device ? check_device_range(ptr, bytes, what) : host_range_ok(ptr, bytes, what);
}

static cudaError_t copy_async(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream,
                              bool synchronous) {
    CUstream_st *s = stream_of(stream);
    if (!s) return status(cudaErrorInvalidResourceHandle);
    if (sticky_error != cudaSuccess) return sticky_error;
    if (bytes == 0) return status();
    if (kind == cudaMemcpyDefault) kind = (cudaMemcpyKind)((is_device(src) ? 2 : 0) + (is_device(dst) ? 1 : 0));
    bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDeviceToDevice) return status(cudaErrorInvalidValue);
    if (!check_side(src, bytes, src_device, "cudaMemcpyAsync source") ||
        !check_side(dst, bytes, dst_device, "cudaMemcpyAsync destination"))
        return status();
    auto copy = std::make_unique<Copy>();
    copy->dst = dst, copy->src = src, copy->bytes = bytes;
    bool pageable_src = !src_device && !allocation_of(src);
    bool pageable_dst = !dst_device && !allocation_of(dst);
    // From pageable memory CUDA stages the bytes before returning; into
    // pageable memory it returns once the copy is done.
    if (pageable_src) copy->snapshot.assign((const unsigned char *)src, (const unsigned char *)src + bytes);
    uint64_t seq = push(s, std::move(copy), {});
    if (synchronous || pageable_dst) drive({{s, seq}}, true);
    return status();
}

static cudaError_t set_async(void *ptr, int value, size_t bytes, cudaStream_t stream) {
    CUstream_st *s = stream_of(stream);
    if (!s) return status(cudaErrorInvalidResourceHandle);
    if (sticky_error != cudaSuccess) return sticky_error;
    if (bytes == 0) return status();
    if (!check_device_range(ptr, bytes, "cudaMemsetAsync")) return status();
    auto set = std::make_unique<Set>();
    set->dst = ptr, set->value = value, set->bytes = bytes;
    push(s, std::move(set), {});
    return status();
}

static double now_seconds() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static bool event_complete(cudaEvent_t e) { return !e->stream || e->stream->completed >= e->seq; }

static void note_completion(cudaEvent_t e) {
    if (e->completed_at == 0) e->completed_at = now_seconds();
}

}  // namespace emu

using namespace emu;

// ----------------------------------------------------------------------------
// the API

extern "C" {

const char *cudaGetErrorName(cudaError_t error) {
    switch (error) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInitializationError: return "cudaErrorInitializationError";
        case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
        case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
        case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
        case cudaErrorNotReady: return "cudaErrorNotReady";
        case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
        case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
        case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
        case cudaErrorNotSupported: return "cudaErrorNotSupported";
        default: return "cudaErrorUnknown";
    }
}

const char *cudaGetErrorString(cudaError_t error) {
    switch (error) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInitializationError: return "initialization error";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorInvalidResourceHandle: return "invalid resource handle";
        case cudaErrorNotReady: return "device not ready";
        case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
        case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
        case cudaErrorNotSupported: return "operation not supported";
        default: return "unknown error";
    }
}

cudaError_t cudaGetLastError(void) {
    Lock lock;
    if (sticky_error != cudaSuccess) return sticky_error;
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) {
    Lock lock;
    return sticky_error != cudaSuccess ? sticky_error : last_error;
}

// ---- the device: one, whose size and SM count the environment may set ----

static size_t env_size(const char *name, size_t fallback) {
    const char *text = getenv(name);
    return text && *text ? strtoull(text, NULL, 10) : fallback;
}

static size_t device_memory_bytes() { return env_size("CUDA_EMU_MEMORY_MB", 80 * 1024) << 20; }

cudaError_t cudaGetDeviceCount(int *count) {
    if (!count) return status(cudaErrorInvalidValue);
    *count = 1;
    return status();
}

cudaError_t cudaSetDevice(int device) { return status(device == 0 ? cudaSuccess : cudaErrorInvalidDevice); }

cudaError_t cudaGetDevice(int *device) {
    if (!device) return status(cudaErrorInvalidValue);
    *device = 0;
    return status();
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device) {
    if (!prop) return status(cudaErrorInvalidValue);
    if (device != 0) return status(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "cuda_emu (CPU emulation of an sm_90 device)");
    prop->totalGlobalMem = device_memory_bytes();
    prop->sharedMemPerBlock = 48 * 1024;
    prop->sharedMemPerBlockOptin = 227 * 1024;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = 1024, prop->maxThreadsDim[1] = 1024, prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 2147483647, prop->maxGridSize[1] = 65535, prop->maxGridSize[2] = 65535;
    prop->major = 9, prop->minor = 0;
    prop->multiProcessorCount = (int)env_size("CUDA_EMU_SMS", 4);
    return status();
}

cudaError_t cudaDriverGetVersion(int *version) {
    if (!version) return status(cudaErrorInvalidValue);
    *version = CUDART_VERSION;
    return status();
}

cudaError_t cudaRuntimeGetVersion(int *version) {
    if (!version) return status(cudaErrorInvalidValue);
    *version = CUDART_VERSION;
    return status();
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    Lock lock;
    size_t total = device_memory_bytes();
    if (free_bytes) *free_bytes = total > live_device_bytes ? total - live_device_bytes : 0;
    if (total_bytes) *total_bytes = total;
    return status();
}

cudaError_t cudaDeviceSynchronize(void) {
    Lock lock;
    return synchronize_all();
}

// ---- memory ----

cudaError_t cudaMalloc(void **ptr, size_t bytes) {
    Lock lock;
    if (live_device_bytes + bytes > device_memory_bytes()) return status(cudaErrorMemoryAllocation);
    return allocate(ptr, bytes, Memory::device);
}

cudaError_t cudaFree(void *ptr) {
    Lock lock;
    return release(ptr, Memory::device, "cudaFree");
}

cudaError_t cudaMallocHost(void **ptr, size_t bytes) {
    Lock lock;
    return allocate(ptr, bytes, Memory::pinned);
}

cudaError_t cudaHostAlloc(void **ptr, size_t bytes, unsigned int flags) {
    Lock lock;
    if (flags & ~(unsigned)(cudaHostAllocPortable | cudaHostAllocMapped)) return status(cudaErrorInvalidValue);
    return allocate(ptr, bytes, Memory::pinned);
}

cudaError_t cudaFreeHost(void *ptr) {
    Lock lock;
    return release(ptr, Memory::pinned, "cudaFreeHost");
}

uint64_t cuda_emu_host_waits(void) { return host_waits; }

size_t cuda_emu_peak_device_bytes(void) {
    Lock lock;
    return peak_device_bytes;
}

size_t cuda_emu_live_device_bytes(void) {
    Lock lock;
    return live_device_bytes;
}

// ---- copies ----

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    Lock lock;
    return copy_async(dst, src, bytes, kind, NULL, true);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    Lock lock;
    return copy_async(dst, src, bytes, kind, stream, false);
}

cudaError_t cudaMemset(void *ptr, int value, size_t bytes) {
    Lock lock;
    return set_async(ptr, value, bytes, NULL);
}

cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream) {
    Lock lock;
    return set_async(ptr, value, bytes, stream);
}

// ---- streams ----

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
    Lock lock;
    if (!stream || (flags & ~(unsigned)cudaStreamNonBlocking)) return status(cudaErrorInvalidValue);
    CUstream_st *s = new CUstream_st{(int)streams.size(), !(flags & cudaStreamNonBlocking), false, {}, 0, 0};
    streams.push_back(s);
    *stream = s;
    return status();
}

cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    Lock lock;
    CUstream_st *s = stream_of(stream);
    if (!s || s == &legacy_stream) return status(cudaErrorInvalidResourceHandle);
    drive({{s, s->enqueued}}, true);  // CUDA lets queued work finish
    s->destroyed = true;
    return status();
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    Lock lock;
    CUstream_st *s = stream_of(stream);
    if (!s) return status(cudaErrorInvalidResourceHandle);
    // The legacy stream waits for every blocking stream.
    std::vector<Target> targets = {{s, s->enqueued}};
    if (s == &legacy_stream)
        for (CUstream_st *other : streams)
            if (other->blocking) targets.push_back({other, other->enqueued});
    drive(targets, true);
    return status();
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
    Lock lock;
    CUstream_st *s = stream_of(stream);
    if (!s) return status(cudaErrorInvalidResourceHandle);
    if (!drive({{s, s->enqueued}}, false)) return status() != cudaSuccess ? status() : cudaErrorNotReady;
    return status();
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
    Lock lock;
    CUstream_st *s = stream_of(stream);
    if (!s || !event) return status(cudaErrorInvalidResourceHandle);
    if (flags != 0) return status(cudaErrorInvalidValue);
    if (!event->stream) return status();  // never recorded: nothing to wait for
    struct Wait : Work {
        std::string name() const override { return "cudaStreamWaitEvent"; }
        bool run() override { return true; }
    };
    push(s, std::make_unique<Wait>(), {{event->stream, event->seq}});
    return status();
}

// ---- events ----

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
    Lock lock;
    if (!event || (flags & ~(unsigned)(cudaEventBlockingSync | cudaEventDisableTiming)))
        return status(cudaErrorInvalidValue);
    *event = new CUevent_st{NULL, 0, 0, !(flags & cudaEventDisableTiming)};
    return status();
}

cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    Lock lock;
    if (!event) return status(cudaErrorInvalidResourceHandle);
    delete event;
    return status();
}

// The event stands for everything queued on the stream so far; on the legacy
// stream that includes the blocking streams' work, through its entry.
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    Lock lock;
    CUstream_st *s = stream_of(stream);
    if (!s || !event) return status(cudaErrorInvalidResourceHandle);
    struct Record : Work {
        std::string name() const override { return "cudaEventRecord"; }
        bool run() override { return true; }
    };
    event->seq = push(s, std::make_unique<Record>(), {});
    event->stream = s;
    event->completed_at = 0;
    return status();
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
    Lock lock;
    if (!event) return status(cudaErrorInvalidResourceHandle);
    if (event->stream) drive({{event->stream, event->seq}}, false);
    if (status() != cudaSuccess) return status();
    if (!event_complete(event)) return cudaErrorNotReady;
    note_completion(event);
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    Lock lock;
    if (!event) return status(cudaErrorInvalidResourceHandle);
    if (event->stream) drive({{event->stream, event->seq}}, true);
    if (event_complete(event)) note_completion(event);
    return status();
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    Lock lock;
    if (!ms || !start || !end) return status(cudaErrorInvalidResourceHandle);
    if (!start->timing || !end->timing) return status(cudaErrorInvalidResourceHandle);
    if (!event_complete(start) || !event_complete(end)) return status(cudaErrorNotReady);
    note_completion(start), note_completion(end);
    *ms = (float)((end->completed_at - start->completed_at) * 1e3);
    return status();
}

}  // extern "C"
