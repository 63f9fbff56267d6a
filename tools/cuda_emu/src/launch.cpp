// cuda_emu kernels: launch checks, and blocks run one at a time with every
// thread a fiber on its own stack. A fiber runs until it finishes or reaches
// __syncthreads or a warp intrinsic; the block's scheduler resumes fibers in
// the schedule's order (forward, reverse, seeded random) and releases a
// barrier when every thread of the block waits at it, a warp intrinsic when
// every lane of its mask has arrived. A barrier or intrinsic that can never
// complete (threads exited, took another branch, masks disagree) is a fault
// naming the kernel, the block and the source line, not a hang.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "internal.h"

// ----------------------------------------------------------------------------
// stack switching: x86-64 saves the callee-saved registers on the stack it
// leaves (MXCSR and the x87 control word are never changed here, so they are
// not switched); other machines use ucontext.

#if defined(__x86_64__)
extern "C" void emu_switch_stack(void **save_sp, void *load_sp);
asm(R"(
    .text
    .globl emu_switch_stack
    .type emu_switch_stack, @function
emu_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_stack, .-emu_switch_stack
    .section .note.GNU-stack,"",@progbits
    .text
)");
#else
#include <ucontext.h>
#endif

namespace emu {

const uint3 *current_thread_idx;
uint3 block_idx;
dim3 block_dim, grid_dim;

enum { STACK_BYTES = 128 * 1024, MAX_THREADS = 1024, DEFAULT_DYNAMIC_SHARED = 48 * 1024,
       MAX_DYNAMIC_SHARED = 227 * 1024, SHARED_GUARD = 64 };

enum class FiberState { ready, at_barrier, at_warp_op, done };

struct WarpOpSlot;

struct Fiber {
#if defined(__x86_64__)
    void *sp;
#else
    ucontext_t context;
#endif
    char *stack;  // STACK_BYTES above a PROT_NONE page
    uint3 idx;
    int warp, lane;
    FiberState state;
    WarpOpSlot *waiting_on;
};

// One warp intrinsic in progress: the lanes of `mask` deposit their values,
// the last to arrive completes it, each reads and leaves.
struct WarpOpSlot {
    bool used, complete;
    WarpOpKind kind;
    unsigned mask, arrived, left;
    uint64_t value[32];
    const char *where;
};

struct Warp {
    WarpOpSlot slots[32];
    WarpOpSlot *latest;  // the slot opened last: where lanes in lockstep meet
};

// The block being run.
struct Block {
    const KernelLaunch *spec;
    std::vector<Fiber *> fibers;
    std::vector<Warp> warps;
    char *dynamic_shared;
    const char *barrier_file;
    int barrier_line;
    size_t n_done;
    bool failed;
};

static std::vector<Fiber *> fiber_pool;
static Fiber *current;
static Block block;
static const std::function<void()> *block_body;
#if defined(__x86_64__)
static void *scheduler_sp;
#else
static ucontext_t scheduler_context;
#endif

static Fiber *new_fiber() {
    long page = sysconf(_SC_PAGESIZE);
    char *memory = (char *)mmap(NULL, STACK_BYTES + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) {
        perror("cuda_emu: mmap of a fiber stack");
        abort();
    }
    if (mprotect(memory, page, PROT_NONE) != 0) {  // an overflow faults instead of corrupting
        perror("cuda_emu: mprotect of a fiber stack's guard page");
        abort();
    }
    Fiber *f = new Fiber();
    f->stack = memory + page;
    return f;
}

static void to_scheduler(Fiber *f) {
#if defined(__x86_64__)
    emu_switch_stack(&f->sp, scheduler_sp);
#else
    swapcontext(&f->context, &scheduler_context);
#endif
}

// From fiber `from` straight to `to`, without the scheduler in between.
static void hand_off(Fiber *from, Fiber *to) {
    current = to;
    current_thread_idx = &to->idx;
#if defined(__x86_64__)
    emu_switch_stack(&from->sp, to->sp);
#else
    swapcontext(&from->context, &to->context);
#endif
}

static void resume(Fiber *f) {
    current = f;
    current_thread_idx = &f->idx;
#if defined(__x86_64__)
    emu_switch_stack(&scheduler_sp, f->sp);
#else
    swapcontext(&scheduler_context, &f->context);
#endif
}

static void fiber_main() {
    Fiber *f = current;
    (*block_body)();
    f->state = FiberState::done;
    block.n_done++;
    to_scheduler(f);  // never resumed
    abort();
}

// A fresh start for f: its first resume enters fiber_main at the top of its stack.
static void prepare(Fiber *f) {
    f->state = FiberState::ready;
    f->waiting_on = NULL;
#if defined(__x86_64__)
    // As emu_switch_stack leaves a stack: r15, r14, r13, r12, rbx, rbp, then
    // the return address (fiber_main) and a null slot that stands for
    // fiber_main's own return address, so its frame is 16-byte aligned.
    uint64_t *top = (uint64_t *)(f->stack + STACK_BYTES);
    uint64_t *sp = top - 8;
    for (int i = 0; i < 6; i++) sp[i] = 0;
    sp[6] = (uint64_t)(uintptr_t)fiber_main;
    sp[7] = 0;
    f->sp = sp;
#else
    getcontext(&f->context);
    f->context.uc_stack.ss_sp = f->stack;
    f->context.uc_stack.ss_size = STACK_BYTES;
    f->context.uc_link = NULL;
    makecontext(&f->context, fiber_main, 0);
#endif
}

// ----------------------------------------------------------------------------
// faults inside a block: reported once, and the block is abandoned

static void describe_block(char *out, size_t size) {
    snprintf(out, size, "kernel %s, block (%u, %u, %u)", block.spec->name, block_idx.x, block_idx.y, block_idx.z);
}

static void block_fault(const char *what) {
    char where[256];
    describe_block(where, sizeof where);
    fault(cudaErrorLaunchFailure, "%s: %s", where, what);
    block.failed = true;
}

// From inside a fiber: report and never run this thread again.
static void fiber_fault(const char *what) {
    block_fault(what);
    to_scheduler(current);
    abort();
}

// ----------------------------------------------------------------------------
// __syncthreads

void syncthreads(const char *file, int line) {
    Fiber *f = current;
    if (!block.barrier_file) {
        block.barrier_file = file, block.barrier_line = line;
    } else if (block.barrier_line != line || strcmp(block.barrier_file, file) != 0) {
        char what[512];
        snprintf(what, sizeof what,
                 "threads wait at different __syncthreads: thread (%u, %u, %u) at %s:%d, others at %s:%d",
                 f->idx.x, f->idx.y, f->idx.z, file, line, block.barrier_file, block.barrier_line);
        fiber_fault(what);
    }
    f->state = FiberState::at_barrier;
    to_scheduler(f);
}

// Called by the scheduler when no fiber is ready: the barrier opens when
// every thread waits at it; false when it cannot open.
static bool open_barrier() {
    size_t waiting = 0, exited = 0, first_exited = 0;
    for (size_t i = 0; i < block.fibers.size(); i++) {
        FiberState s = block.fibers[i]->state;
        waiting += s == FiberState::at_barrier;
        if (s == FiberState::done && exited++ == 0) first_exited = i;
    }
    if (waiting == 0) return false;
    if (waiting + exited == block.fibers.size() && exited > 0) {
        char what[512];
        snprintf(what, sizeof what,
                 "__syncthreads at %s:%d is never reached by %zu threads that exited (thread %zu the first)",
                 block.barrier_file, block.barrier_line, exited, first_exited);
        block_fault(what);
        return false;
    }
    if (waiting != block.fibers.size()) return false;
    for (Fiber *f : block.fibers) f->state = FiberState::ready;
    block.barrier_file = NULL;
    return true;
}

// ----------------------------------------------------------------------------
// warp intrinsics

static const char *kind_name(WarpOpKind kind) {
    static const char *names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                                  "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp", "mma.sync",
                                  "ldmatrix"};
    return names[kind];
}

// The lane a shuffle reads, or `lane` itself where CUDA returns the caller's own value.
static int source_lane(WarpOpKind kind, int lane, int param, int width) {
    int segment = lane & ~(width - 1);
    switch (kind) {
        case SHFL_IDX: return segment + (param & (width - 1));
        case SHFL_UP: return (lane - segment) >= param ? lane - param : lane;
        case SHFL_DOWN: return (lane - segment) + param < width ? lane + param : lane;
        case SHFL_XOR: {
            int source = lane ^ param;
            return source < segment + width ? source : lane;  // a later group: own value
        }
        default: return lane;
    }
}

static uint64_t warp_result(const WarpOpSlot *op, WarpOpKind kind, int lane, int param, int width) {
    if (kind == BALLOT || kind == ANY || kind == ALL) {
        unsigned votes = 0;
        for (int l = 0; l < 32; l++)
            if ((op->mask >> l & 1u) && op->value[l]) votes |= 1u << l;
        return kind == BALLOT ? votes : kind == ANY ? votes != 0 : votes == op->mask;
    }
    if (kind == SYNCWARP || kind == MMA || kind == LDMATRIX) return 0;
    int source = source_lane(kind, lane, param, width);
    if (!(op->mask >> source & 1u)) {
        char what[256];
        snprintf(what, sizeof what, "%s in lane %d reads lane %d, which is not in the mask 0x%08x", kind_name(kind),
                 lane, source, op->mask);
        fiber_fault(what);
    }
    return op->value[source];
}

static bool joinable(const WarpOpSlot *op, unsigned bit) {
    return op && op->used && !op->complete && (op->mask & bit) && !(op->arrived & bit);
}

static WarpOpSlot *join_or_open(Warp &w, WarpOpKind kind, unsigned mask, unsigned bit) {
    if (joinable(w.latest, bit) && w.latest->mask == mask && w.latest->kind == kind) return w.latest;
    WarpOpSlot *free_slot = NULL;
    for (WarpOpSlot &op : w.slots) {
        if (!op.used) {
            if (!free_slot) free_slot = &op;
            continue;
        }
        if (op.complete || !(op.mask & bit) || (op.arrived & bit)) continue;
        if (op.mask != mask || op.kind != kind) {
            char what[256];
            snprintf(what, sizeof what, "lanes of warp %d disagree: %s with mask 0x%08x meets %s with mask 0x%08x",
                     current->warp, kind_name(kind), mask, kind_name(op.kind), op.mask);
            fiber_fault(what);
        }
        return &op;
    }
    if (!free_slot) fiber_fault("more than 32 warp intrinsics in flight in one warp");
    free_slot->used = true, free_slot->complete = false, free_slot->kind = kind;
    free_slot->mask = mask, free_slot->arrived = 0, free_slot->left = 0;
    w.latest = free_slot;
    return free_slot;
}

// A ready lane of f's warp, in the schedule's order after f: lanes waiting
// at a warp intrinsic hand over to each other without the scheduler.
static Fiber *next_ready_lane(const Fiber *f) {
    size_t first = (size_t)f->warp * 32;
    int n = (int)std::min<size_t>(32, block.fibers.size() - first);
    Schedule mode = schedule_mode();
    int start = mode.order == ScheduleOrder::random ? (int)pick((unsigned)n) : f->lane;
    int step = mode.order == ScheduleOrder::reverse ? n - 1 : 1;
    for (int i = 1; i <= n; i++) {
        Fiber *lane = block.fibers[first + (start + i * step) % n];
        if (lane->state == FiberState::ready) return lane;
    }
    return NULL;
}

static void run_matrix_op(const WarpOpSlot *op);

uint64_t warp_op(WarpOpKind kind, unsigned mask, uint64_t value, int param, int width) {
    Fiber *f = current;
    unsigned bit = 1u << f->lane;
    if (!(mask & bit)) {
        char what[256];
        snprintf(what, sizeof what, "lane %d calls %s with mask 0x%08x, which does not name it", f->lane,
                 kind_name(kind), mask);
        fiber_fault(what);
    }
    if (width < 1 || width > 32 || (width & (width - 1))) fiber_fault("a shuffle width that is not a power of two <= 32");
    Warp &w = block.warps[f->warp];
    WarpOpSlot *op = join_or_open(w, kind, mask, bit);
    op->value[f->lane] = value;
    op->arrived |= bit;
    if (op->arrived == op->mask) {
        op->complete = true;
        if (kind == MMA || kind == LDMATRIX) run_matrix_op(op);
        Fiber **lanes = &block.fibers[(size_t)f->warp * 32];
        for (int l = 0; l < 32; l++)
            if ((op->mask >> l & 1u) && l != f->lane) lanes[l]->state = FiberState::ready;
    } else {
        f->state = FiberState::at_warp_op;
        f->waiting_on = op;
        Fiber *next = next_ready_lane(f);
        if (next)
            hand_off(f, next);
        else
            to_scheduler(f);
    }
    uint64_t result = warp_result(op, kind, f->lane, param, width);
    op->left |= bit;
    if (op->left == op->mask) op->used = false;
    return result;
}

// ----------------------------------------------------------------------------
// tensor-core instructions (kernels/cuda/mma.cuh): every lane deposits a
// pointer to its operands on its own stack; the last lane to arrive gathers
// the 32 lanes' registers into whole matrices by the PTX ISA's fragment
// tables, computes, and scatters each lane's result registers back.

static const unsigned FULL_WARP = 0xffffffffu;

struct MmaLane {
    float *d;
    const uint32_t *a, *b;
};

struct LdmatrixLane {
    uint32_t *r;
    int n_matrices;
    bool trans;
    const char *row;
};

static float bf16_half(uint32_t reg, int half) {
    uint32_t bits = (half ? reg >> 16 : reg & 0xffffu) << 16;
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

// Lane l = 4 g + t: A[g + 8 (r & 1)][2t + e + 8 (r >> 1)] = half e of a[r];
// B[2t + e + 8 r][g] = half e of b[r]; C[g + 8 (i >> 1)][2t + (i & 1)] = c[i].
// Each product of two bf16 is exact in fp32; D = C + sum over k = 0..15 in
// order, a running fp32 sum that starts at 0 (the tensor core's own order and
// rounding inside the sum are not modelled).
static void run_mma(const WarpOpSlot *op) {
    float A[16][16], B[16][8], C[16][8];
    const MmaLane *lanes[32];
    for (int l = 0; l < 32; l++) {
        lanes[l] = (const MmaLane *)(uintptr_t)op->value[l];
        int g = l / 4, t = l % 4;
        for (int r = 0; r < 4; r++)
            for (int e = 0; e < 2; e++) A[g + 8 * (r & 1)][2 * t + e + 8 * (r >> 1)] = bf16_half(lanes[l]->a[r], e);
        for (int r = 0; r < 2; r++)
            for (int e = 0; e < 2; e++) B[2 * t + e + 8 * r][g] = bf16_half(lanes[l]->b[r], e);
        for (int i = 0; i < 4; i++) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = lanes[l]->d[i];
    }
    for (int l = 0; l < 32; l++) {
        int g = l / 4, t = l % 4;
        for (int i = 0; i < 4; i++) {
            int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
            float sum = 0.0f;
            for (int k = 0; k < 16; k++) sum += A[row][k] * B[k][col];
            lanes[l]->d[i] = C[row][col] + sum;
        }
    }
}

extern "C" char __start_cuda_emu_shared[] __attribute__((weak));
extern "C" char __stop_cuda_emu_shared[] __attribute__((weak));

static bool in_shared_memory(const char *p, size_t bytes) {
    const char *dyn = block.dynamic_shared, *dyn_end = dyn + block.spec->shared_bytes;
    if (p >= dyn && p + bytes <= dyn_end) return true;
    return __start_cuda_emu_shared && p >= __start_cuda_emu_shared && p + bytes <= __stop_cuda_emu_shared;
}

// Lane i (i < 8 n) addresses row i % 8 of matrix i / 8; register j of lane
// l = 4 g + t gets matrix j's M[g][2t], M[g][2t + 1] (.trans: M[2t][g],
// M[2t + 1][g]), the first in the low half. The rows are read when the last
// lane arrives; the addresses of lanes >= 8 n are ignored, as on sm_80 and later.
static void run_ldmatrix(const WarpOpSlot *op) {
    const LdmatrixLane *lanes[32];
    for (int l = 0; l < 32; l++) lanes[l] = (const LdmatrixLane *)(uintptr_t)op->value[l];
    int n = lanes[0]->n_matrices;
    bool trans = lanes[0]->trans;
    for (int l = 0; l < 32; l++)
        if (lanes[l]->n_matrices != n || lanes[l]->trans != trans)
            fiber_fault("ldmatrix: the lanes of a warp disagree on .num or .trans");
    uint16_t M[4][8][8];
    for (int i = 0; i < 8 * n; i++) {
        const char *row = lanes[i]->row;
        if ((uintptr_t)row % 16 != 0 || !in_shared_memory(row, 16)) {
            char what[192];
            snprintf(what, sizeof what, "ldmatrix: lane %d's row address %p is not 16 bytes of shared memory, "
                     "16-byte aligned", i, (const void *)row);
            fiber_fault(what);
        }
        memcpy(M[i / 8][i % 8], row, 16);
    }
    for (int l = 0; l < 32; l++) {
        int g = l / 4, t = l % 4;
        for (int j = 0; j < n; j++) {
            uint16_t lo = trans ? M[j][2 * t][g] : M[j][g][2 * t];
            uint16_t hi = trans ? M[j][2 * t + 1][g] : M[j][g][2 * t + 1];
            lanes[l]->r[j] = (uint32_t)lo | (uint32_t)hi << 16;
        }
    }
}

static void run_matrix_op(const WarpOpSlot *op) {
    if (op->kind == MMA)
        run_mma(op);
    else
        run_ldmatrix(op);
}

void warp_mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    MmaLane lane{d, a, b};
    warp_op(MMA, FULL_WARP, (uint64_t)(uintptr_t)&lane, 0, 32);
}

void warp_ldmatrix(uint32_t *r, int n_matrices, bool trans, const void *row) {
    if (n_matrices != 1 && n_matrices != 2 && n_matrices != 4) fiber_fault("ldmatrix: .num is not x1, x2 or x4");
    LdmatrixLane lane{r, n_matrices, trans, (const char *)row};
    warp_op(LDMATRIX, FULL_WARP, (uint64_t)(uintptr_t)&lane, 0, 32);
}

void check_vector_access(const void *p, size_t bytes) {
    if ((uintptr_t)p % bytes == 0) return;
    char what[128];
    snprintf(what, sizeof what, "misaligned address: a %zu-byte vector access at %p", bytes, p);
    fiber_fault(what);
}

// ----------------------------------------------------------------------------
// running a block

static std::vector<size_t> thread_order(size_t n) {
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    Schedule mode = schedule_mode();
    if (mode.order == ScheduleOrder::reverse) std::reverse(order.begin(), order.end());
    if (mode.order == ScheduleOrder::random)
        for (size_t i = n; i > 1; i--) std::swap(order[i - 1], order[pick((unsigned)i)]);
    return order;
}

static void report_deadlock() {
    std::string what = "threads wait forever:";
    int shown = 0;
    for (const Fiber *f : block.fibers) {
        if (f->state != FiberState::at_warp_op || shown++ >= 4) continue;
        const WarpOpSlot *op = f->waiting_on;
        char line[192];
        snprintf(line, sizeof line, " thread %u in %s with mask 0x%08x (lanes missing: 0x%08x);", f->idx.x,
                 kind_name(op->kind), op->mask, op->mask & ~op->arrived);
        what += line;
    }
    if (block.barrier_file) what += " others at __syncthreads " + std::string(block.barrier_file) + ":" +
                                    std::to_string(block.barrier_line);
    block_fault(what.c_str());
}

static bool run_block(const std::vector<size_t> &order) {
    for (Fiber *f : block.fibers) prepare(f);
    block.barrier_file = NULL;
    block.n_done = 0;
    for (Warp &w : block.warps) {
        for (WarpOpSlot &op : w.slots) op.used = false;
        w.latest = NULL;
    }
    while (block.n_done < block.fibers.size()) {
        bool ran = false;
        for (size_t i : order) {
            Fiber *f = block.fibers[i];
            if (f->state != FiberState::ready) continue;
            resume(f);
            ran = true;
            if (block.failed) return false;
        }
        if (ran || block.n_done == block.fibers.size()) continue;
        if (open_barrier()) continue;
        if (!block.failed) report_deadlock();
        return false;
    }
    return true;
}

void *dynamic_shared() { return block.dynamic_shared; }

static void fill_shared_memory(size_t dynamic_bytes) {
    if (__start_cuda_emu_shared) memset(__start_cuda_emu_shared, 0xFF, __stop_cuda_emu_shared - __start_cuda_emu_shared);
    memset(block.dynamic_shared, 0xFF, dynamic_bytes);
    memset(block.dynamic_shared + dynamic_bytes, 0xA5, SHARED_GUARD);
}

static bool shared_guard_intact(size_t dynamic_bytes) {
    for (size_t i = 0; i < SHARED_GUARD; i++)
        if ((unsigned char)block.dynamic_shared[dynamic_bytes + i] != 0xA5) return false;
    return true;
}

static uint3 block_coordinates(size_t linear, dim3 grid) {
    return {(unsigned)(linear % grid.x), (unsigned)(linear / grid.x % grid.y),
            (unsigned)(linear / ((size_t)grid.x * grid.y))};
}

// The kernel as stream work: every block in the schedule's order.
struct KernelWork : Work {
    KernelLaunch spec;
    std::string kernel_name;
    std::shared_ptr<const std::function<void()>> body;
    std::vector<const void *> pointers;

    std::string name() const override { return "kernel " + kernel_name; }
    bool touches(const char *begin, const char *end) const override {
        for (const void *p : pointers)
            if (within(p, begin, end)) return true;
        return false;
    }

    bool run() override {
        spec.name = kernel_name.c_str();
        size_t threads = (size_t)spec.block.x * spec.block.y * spec.block.z;
        size_t n_blocks = (size_t)spec.grid.x * spec.grid.y * spec.grid.z;
        while (fiber_pool.size() < threads) fiber_pool.push_back(new_fiber());
        std::vector<char> shared(spec.shared_bytes + SHARED_GUARD + 16);
        block = Block{&spec, {}, std::vector<Warp>((threads + 31) / 32), shared.data(), NULL, 0, 0, false};
        for (size_t t = 0; t < threads; t++) {
            Fiber *f = fiber_pool[t];
            f->idx = {(unsigned)(t % spec.block.x), (unsigned)(t / spec.block.x % spec.block.y),
                      (unsigned)(t / ((size_t)spec.block.x * spec.block.y))};
            f->warp = (int)(t / 32), f->lane = (int)(t % 32);
            block.fibers.push_back(f);
        }
        block_dim = spec.block, grid_dim = spec.grid;
        block_body = body.get();
        std::vector<size_t> thread_ord = thread_order(threads), block_ord = thread_order(n_blocks);
        for (size_t b : block_ord) {
            block_idx = block_coordinates(b, spec.grid);
            fill_shared_memory(spec.shared_bytes);
            if (!run_block(thread_ord)) break;
            if (!shared_guard_intact(spec.shared_bytes)) {
                block_fault("wrote past the end of its dynamic shared memory");
                break;
            }
        }
        std::string after = "kernel " + kernel_name;
        for (const void *p : pointers) check_guards(p, after.c_str());
        return true;
    }
};

static std::map<const void *, int> max_dynamic_shared;

cudaError_t set_max_dynamic_shared(const void *function, int bytes) {
    Lock lock;
    if (bytes < 0 || bytes > MAX_DYNAMIC_SHARED) return cudaErrorInvalidValue;
    max_dynamic_shared[function] = bytes;
    return cudaSuccess;
}

static const char *configuration_error(const KernelLaunch &spec) {
    size_t threads = (size_t)spec.block.x * spec.block.y * spec.block.z;
    if (threads == 0 || threads > MAX_THREADS || spec.block.z > 64) return "block size is 0 or over 1024 threads";
    if (spec.grid.x == 0 || spec.grid.y == 0 || spec.grid.z == 0 || spec.grid.x > 2147483647u ||
        spec.grid.y > 65535 || spec.grid.z > 65535)
        return "grid dimensions outside (1..2^31-1, 1..65535, 1..65535)";
    auto raised = max_dynamic_shared.find(spec.function);
    size_t limit = raised == max_dynamic_shared.end() ? (size_t)DEFAULT_DYNAMIC_SHARED : (size_t)raised->second;
    if (spec.shared_bytes > limit) return "dynamic shared memory over the kernel's limit (48 KiB unless raised)";
    return NULL;
}

// Pointer arguments must be null, device memory, or pinned host memory
// (which a GPU reaches through unified addressing).
static bool pointers_reachable(const KernelLaunch &spec, const void *const *pointers, int n) {
    for (int i = 0; i < n; i++) {
        if (!pointers[i] || find(pointers[i]).kind != Memory::unknown) continue;
        fault(cudaErrorIllegalAddress, "kernel %s: pointer argument %p is neither device nor pinned memory",
              spec.name, pointers[i]);
        return false;
    }
    return true;
}

void launch(const KernelLaunch &spec, std::shared_ptr<const std::function<void()>> body, const void *const *pointers,
            int n_pointers) {
    Lock lock;
    if (const char *why = configuration_error(spec)) {
        fprintf(stderr, "cuda_emu: launch of %s refused: %s\n", spec.name, why);
        set_last_error(cudaErrorInvalidConfiguration);
        return;
    }
    if (!pointers_reachable(spec, pointers, n_pointers)) return;
    auto work = std::make_unique<KernelWork>();
    work->spec = spec;
    work->kernel_name = spec.name;
    work->body = std::move(body);
    work->pointers.assign(pointers, pointers + n_pointers);
    cudaError_t rc = enqueue(spec.stream, std::move(work));
    if (rc != cudaSuccess) set_last_error(rc);
}

}  // namespace emu
