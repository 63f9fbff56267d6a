// cuda_emu: NCCL on the CPU, for ranks that are processes on one machine.
//
// The unique id names a POSIX shared memory segment: a header, one record per
// rank (its pid, whether it is present, two step counters) and one slot per
// rank. A collective is stream work (emu::Work) that moves its data in steps
// of at most a slot: every rank copies its chunk into its own slot and
// publishes `written`; once all have, each reads the slots it needs (reducing
// in rank order 0..n-1, so every rank gets the same bits) and publishes
// `read`; a slot is refilled only after every rank has read the step before.
// Waiting never blocks: run() returns false and is called again. A peer that
// exited, aborted or left while others wait for it becomes the communicator's
// error (ncclRemoteError); its work then hangs, as NCCL's kernels do, until
// ncclCommAbort ends it. The name is unlinked once every rank has joined (or
// when a rank leaves before that), so a crashed job leaves no segment behind.
#include <nccl.h>

#include "internal.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace {

constexpr size_t SLOT_BYTES = 4 << 20;  // one rank's share of a step
constexpr size_t PAGE_BYTES = 4096;
constexpr int MAX_RANKS = 1024;
constexpr uint64_t MAGIC = 0x6c6f72615f6e636cull;  // "lora_ncl"
constexpr unsigned CONFIG_MAGIC = 0xcafebeef;
constexpr char NAME_PREFIX[] = "/lora_emu_nccl_";
constexpr auto PID_CHECK_INTERVAL = std::chrono::milliseconds(20);

enum Presence : int32_t { ABSENT, JOINED, LEFT, ABORTED };

// Shared memory: the header, then one record per rank, then the slots.
struct alignas(64) Header {
    std::atomic<uint64_t> magic;
    std::atomic<int32_t> joined;  // ranks that have claimed their record
};
struct alignas(64) RankRecord {
    std::atomic<uint64_t> written;  // steps whose chunk this rank has put in its slot
    std::atomic<uint64_t> read;     // steps whose slots this rank has finished reading
    std::atomic<int32_t> pid;       // set before presence becomes JOINED
    std::atomic<int32_t> presence;
};
static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<int32_t>::is_always_lock_free,
              "shared memory atomics must be lock-free");

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }
size_t slots_offset(int nranks) { return round_up(sizeof(Header) + nranks * sizeof(RankRecord), PAGE_BYTES); }
size_t segment_bytes(int nranks) { return slots_offset(nranks) + nranks * SLOT_BYTES; }

std::string vformat(const char *format, va_list args) {
    char text[512];
    vsnprintf(text, sizeof text, format, args);
    return text;
}

std::string format(const char *format, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char *format, ...) {
    va_list args;
    va_start(args, format);
    std::string text = vformat(format, args);
    va_end(args);
    return text;
}

}  // namespace

// One rank's communicator. Collectives still queued hold it, so it outlives
// its handle (ncclCommDestroy/Abort) until they are done.
struct ncclComm {
    std::string name;  // of the shared memory segment
    int nranks = 0, rank = 0;
    bool blocking = true;
    char *base = nullptr;  // the mapping
    bool member = false;   // this rank's record is ours
    bool joined = false;   // every rank has joined
    bool finalized = false, aborted = false;
    uint64_t steps = 0;                 // steps done, over all collectives
    uint64_t issued = 0, finished = 0;  // collectives enqueued; run to the end (they run in issue order)
    ncclResult_t error = ncclSuccess;
    std::string message;  // for ncclGetLastError
    std::chrono::steady_clock::time_point last_pid_check;

    Header &header() { return *reinterpret_cast<Header *>(base); }
    RankRecord &record(int r) { return reinterpret_cast<RankRecord *>(base + sizeof(Header))[r]; }
    char *slot(int r) { return base + slots_offset(nranks) + r * SLOT_BYTES; }
    bool all_joined() { return header().joined.load(std::memory_order_acquire) == nranks; }

    // Tells the peers that this rank is gone.
    void leave(Presence how) {
        if (member) record(rank).presence.store(how, std::memory_order_release);
    }

    ~ncclComm() {
        if (!base) return;
        leave(aborted ? ABORTED : LEFT);
        if (munmap(base, segment_bytes(nranks)) != 0)
            fprintf(stderr, "cuda_emu nccl: munmap %s: %s\n", name.c_str(), strerror(errno));
    }
};

namespace {

std::map<ncclComm *, std::shared_ptr<ncclComm>> live_comms;  // by handle
std::string process_message;                                 // ncclGetLastError(NULL)
thread_local int group_depth;

std::shared_ptr<ncclComm> lookup(ncclComm_t handle) {
    auto it = live_comms.find(handle);
    return it == live_comms.end() ? nullptr : it->second;
}

// Records a failed call's message for ncclGetLastError and returns code.
ncclResult_t refuse(ncclComm *comm, ncclResult_t code, const char *format, ...) __attribute__((format(printf, 3, 4)));
ncclResult_t refuse(ncclComm *comm, ncclResult_t code, const char *format, ...) {
    va_list args;
    va_start(args, format);
    process_message = vformat(format, args);
    va_end(args);
    if (comm) comm->message = process_message;
    return code;
}

// The communicator's asynchronous error: the first one sticks.
void fail_async(ncclComm &c, ncclResult_t code, const std::string &message) {
    if (c.error != ncclSuccess) return;
    c.error = code;
    refuse(&c, code, "%s", message.c_str());
}

void remove_name(const ncclComm &c) {
    if (shm_unlink(c.name.c_str()) != 0 && errno != ENOENT)
        fprintf(stderr, "cuda_emu nccl: shm_unlink %s: %s\n", c.name.c_str(), strerror(errno));
}

// False when the process is gone or a zombie (kill(pid, 0) still sees
// zombies); true when it runs or /proc cannot tell.
bool process_alive(int pid) {
    char path[64], stat[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno != ENOENT && errno != ESRCH;
    ssize_t n = read(fd, stat, sizeof stat - 1);
    int read_errno = errno;
    if (close(fd) != 0) return true;
    if (n <= 0) return n == 0 || read_errno != ESRCH;
    stat[n] = '\0';
    const char *end_of_name = strrchr(stat, ')');  // "pid (name) state ..."; the name may hold ')'
    if (!end_of_name || end_of_name[1] != ' ') return true;
    return end_of_name[2] != 'Z' && end_of_name[2] != 'X';
}

// Why rank r will never catch up, or "" when it still may: it aborted, left
// (its communicator is destroyed), or its process exited. Reading /proc is
// costly, so pids are looked at only when check_pid.
std::string peer_failure(ncclComm &c, int r, bool check_pid) {
    RankRecord &peer = c.record(r);
    int presence = peer.presence.load(std::memory_order_acquire);
    int pid = peer.pid.load(std::memory_order_relaxed);
    if (presence == ABORTED) return format("rank %d (pid %d) aborted the communicator", r, pid);
    if (presence == LEFT) return format("rank %d (pid %d) destroyed the communicator", r, pid);
    if (presence == JOINED && check_pid && !process_alive(pid)) return format("rank %d (pid %d) exited", r, pid);
    return "";
}

bool pid_check_due(ncclComm &c) {
    auto now = std::chrono::steady_clock::now();
    if (now - c.last_pid_check < PID_CHECK_INTERVAL) return false;
    c.last_pid_check = now;
    return true;
}

// Whether every rank has joined. A joined rank that is gone before that
// fails the communicator (no rank leaves properly before all have joined).
bool poll_join(ncclComm &c) {
    if (!c.joined) c.joined = c.all_joined();
    if (c.joined) return true;
    bool check_pids = pid_check_due(c);
    for (int r = 0; r < c.nranks && c.error == ncclSuccess; r++) {
        std::string why = peer_failure(c, r, check_pids);
        if (why.empty()) continue;
        if ((c.joined = c.all_joined())) return true;  // it left after the last rank joined
        fail_async(c, ncclRemoteError, why + " (waiting for all ranks to join)");
    }
    return false;
}

// Whether every rank's `counter` has reached `step`. A rank behind that never
// will becomes the communicator's error.
bool peers_reached(ncclComm &c, std::atomic<uint64_t> RankRecord::*counter, uint64_t step, const char *what) {
    bool reached = true, check_pids = false;
    for (int r = 0; r < c.nranks && c.error == ncclSuccess; r++) {
        std::atomic<uint64_t> &count = c.record(r).*counter;
        if (count.load(std::memory_order_acquire) >= step) continue;
        if (reached) check_pids = pid_check_due(c);  // once, when some rank is behind
        reached = false;
        std::string why = peer_failure(c, r, check_pids);
        if (!why.empty() && count.load(std::memory_order_acquire) < step)
            fail_async(c, ncclRemoteError, why + " (waiting for it in " + what + ")");
    }
    return reached;
}

// ---- Opening the segment and joining.

ncclResult_t map_segment(ncclComm &c) {
    size_t bytes = segment_bytes(c.nranks);
    int fd = shm_open(c.name.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) return refuse(nullptr, ncclSystemError, "shm_open %s: %s", c.name.c_str(), strerror(errno));
    struct stat st;
    ncclResult_t rc = ncclSuccess;
    if (fstat(fd, &st) != 0)
        rc = refuse(nullptr, ncclSystemError, "fstat %s: %s", c.name.c_str(), strerror(errno));
    else if (st.st_size != 0 && (size_t)st.st_size != bytes)
        rc = refuse(nullptr, ncclInvalidUsage, "rank %d: the communicator's ranks disagree on nranks (%d here)", c.rank,
                    c.nranks);
    // Allocates every page now: a full /dev/shm is an error here, not a SIGBUS later.
    else if (int err = posix_fallocate(fd, 0, bytes))
        rc = refuse(nullptr, ncclSystemError, "allocating %zu bytes of shared memory %s: %s", bytes, c.name.c_str(),
                    strerror(err));
    else if ((c.base = (char *)mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
        c.base = nullptr;
        rc = refuse(nullptr, ncclSystemError, "mmap %s: %s", c.name.c_str(), strerror(errno));
    }
    if (close(fd) != 0 && rc == ncclSuccess)
        rc = refuse(nullptr, ncclSystemError, "close %s: %s", c.name.c_str(), strerror(errno));
    return rc;
}

// Claims this rank's record; the last rank to join unlinks the name.
ncclResult_t join(ncclComm &c) {
    uint64_t magic = 0;
    if (!c.header().magic.compare_exchange_strong(magic, MAGIC) && magic != MAGIC)
        return refuse(nullptr, ncclInvalidUsage, "%s is not a cuda_emu NCCL segment", c.name.c_str());
    RankRecord &me = c.record(c.rank);
    int32_t pid = 0;
    if (!me.pid.compare_exchange_strong(pid, (int32_t)getpid()))
        return refuse(nullptr, ncclInvalidUsage, "rank %d joined twice (pids %d and %d)", c.rank, pid, (int)getpid());
    me.presence.store(JOINED, std::memory_order_release);
    c.member = true;
    if (c.header().joined.fetch_add(1, std::memory_order_acq_rel) + 1 == c.nranks) remove_name(c);
    return ncclSuccess;
}

ncclResult_t check_init_arguments(ncclComm_t *out, int nranks, const ncclUniqueId &id, int rank,
                                  const ncclConfig_t *config) {
    if (!out) return refuse(nullptr, ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
    if (nranks < 1 || nranks > MAX_RANKS)
        return refuse(nullptr, ncclInvalidArgument, "ncclCommInitRank: nranks %d is not in [1, %d]", nranks, MAX_RANKS);
    if (rank < 0 || rank >= nranks)
        return refuse(nullptr, ncclInvalidArgument, "ncclCommInitRank: rank %d is not in [0, %d)", rank, nranks);
    if (!memchr(id.internal, '\0', sizeof id.internal) || strncmp(id.internal, NAME_PREFIX, strlen(NAME_PREFIX)) != 0)
        return refuse(nullptr, ncclInvalidArgument, "ncclCommInitRank: the unique id is not from ncclGetUniqueId");
    if (config && config->magic != CONFIG_MAGIC)
        return refuse(nullptr, ncclInvalidArgument,
                      "ncclCommInitRankConfig: config is not from NCCL_CONFIG_INITIALIZER");
    if (config && config->blocking != NCCL_CONFIG_UNDEF_INT && config->blocking != 0 && config->blocking != 1)
        return refuse(nullptr, ncclInvalidArgument, "ncclCommInitRankConfig: blocking is %d, not 0 or 1",
                      config->blocking);
    return ncclSuccess;
}

// ---- Reductions: dst[i] = src[0][i] op src[1][i] op ... in rank order.

// How a type is loaded into the type it is reduced in, and stored back.
template <typename T, typename Acc = T>
struct Plain {
    using Stored = T;
    static Acc load(T x) { return x; }
    static T store(Acc a) { return (T)a; }
};
struct Bfloat16 {
    using Stored = uint16_t;
    static float load(uint16_t x) {
        uint32_t bits = (uint32_t)x << 16;
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }
    static uint16_t store(float f) {  // round to nearest even; NaN stays NaN
        uint32_t bits;
        memcpy(&bits, &f, sizeof bits);
        if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
        return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1)) >> 16);
    }
};

// Integer sums and products wrap, as on a GPU.
template <ncclRedOp_t OP, typename A>
A combine(A a, A b) {
    if constexpr (std::is_integral_v<A> && (OP == ncclSum || OP == ncclAvg || OP == ncclProd)) {
        using U = std::make_unsigned_t<A>;
        return (A)(OP == ncclProd ? (U)a * (U)b : (U)a + (U)b);
    }
    if constexpr (OP == ncclSum || OP == ncclAvg) return a + b;
    if constexpr (OP == ncclProd) return a * b;
    if constexpr (OP == ncclMax) return a < b ? b : a;
    if constexpr (OP == ncclMin) return b < a ? b : a;
}

template <typename Codec, ncclRedOp_t OP>
void reduce_as(void *dst, const std::vector<const char *> &srcs, size_t n) {
    using T = typename Codec::Stored;
    auto *out = (T *)dst;
    int nranks = (int)srcs.size();
    for (size_t i = 0; i < n; i++) {
        auto acc = Codec::load(((const T *)srcs[0])[i]);
        for (int r = 1; r < nranks; r++) acc = combine<OP>(acc, Codec::load(((const T *)srcs[r])[i]));
        if constexpr (OP == ncclAvg) acc = (decltype(acc))(acc / nranks);
        out[i] = Codec::store(acc);
    }
}

template <typename Codec>
void reduce_with(ncclRedOp_t op, void *dst, const std::vector<const char *> &srcs, size_t n) {
    switch (op) {
    case ncclSum: return reduce_as<Codec, ncclSum>(dst, srcs, n);
    case ncclProd: return reduce_as<Codec, ncclProd>(dst, srcs, n);
    case ncclMax: return reduce_as<Codec, ncclMax>(dst, srcs, n);
    case ncclMin: return reduce_as<Codec, ncclMin>(dst, srcs, n);
    default: return reduce_as<Codec, ncclAvg>(dst, srcs, n);
    }
}

void reduce(ncclDataType_t type, ncclRedOp_t op, void *dst, const std::vector<const char *> &srcs, size_t n) {
    switch (type) {
    case ncclInt8: return reduce_with<Plain<int8_t>>(op, dst, srcs, n);
    case ncclUint8: return reduce_with<Plain<uint8_t>>(op, dst, srcs, n);
    case ncclInt32: return reduce_with<Plain<int32_t>>(op, dst, srcs, n);
    case ncclUint32: return reduce_with<Plain<uint32_t>>(op, dst, srcs, n);
    case ncclInt64: return reduce_with<Plain<int64_t>>(op, dst, srcs, n);
    case ncclUint64: return reduce_with<Plain<uint64_t>>(op, dst, srcs, n);
    case ncclFloat16: return reduce_with<Plain<_Float16, float>>(op, dst, srcs, n);
    case ncclFloat32: return reduce_with<Plain<float>>(op, dst, srcs, n);
    case ncclFloat64: return reduce_with<Plain<double>>(op, dst, srcs, n);
    default: return reduce_with<Bfloat16>(op, dst, srcs, n);
    }
}

// Bytes per element; 0 for a type that does not exist.
size_t type_size(ncclDataType_t type) {
    switch (type) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
    }
}

// ---- Collectives.

enum class Kind { all_reduce, reduce_scatter, all_gather, reduce, broadcast };

const char *kind_name(Kind kind) {
    switch (kind) {
    case Kind::all_reduce: return "ncclAllReduce";
    case Kind::reduce_scatter: return "ncclReduceScatter";
    case Kind::all_gather: return "ncclAllGather";
    case Kind::reduce: return "ncclReduce";
    default: return "ncclBroadcast";
    }
}

struct Call {
    Kind kind;
    const char *send;
    char *recv;
    size_t count;  // per rank's block: count, recvcount or sendcount
    ncclDataType_t type;
    ncclRedOp_t op;
    int root;
};

struct Collective final : emu::Work {
    std::shared_ptr<ncclComm> comm;
    Call call;
    uint64_t ticket;       // its place in the communicator's issue order
    size_t done = 0;       // elements of each block finished
    bool written = false;  // this step's chunk is in the slot

    Collective(std::shared_ptr<ncclComm> owner, const Call &what, uint64_t place)
        : comm(std::move(owner)), call(what), ticket(place) {}
    std::string name() const override { return kind_name(call.kind); }
    bool touches(const char *begin, const char *end) const override {
        return emu::within(call.send, begin, end) || emu::within(call.recv, begin, end);
    }
    bool run() override;

    size_t chunk_elements() const {
        size_t per_step = SLOT_BYTES / type_size(call.type);
        if (call.kind == Kind::reduce_scatter) per_step /= comm->nranks;  // a piece of every block
        return std::min(per_step, call.count - done);
    }
    void write_chunk(size_t n);
    void read_chunk(size_t n);
};

void Collective::write_chunk(size_t n) {
    ncclComm &c = *comm;
    size_t es = type_size(call.type);
    char *mine = c.slot(c.rank);
    if (call.kind == Kind::reduce_scatter) {
        for (int b = 0; b < c.nranks; b++) memcpy(mine + b * n * es, call.send + (b * call.count + done) * es, n * es);
    } else if (call.kind != Kind::broadcast || c.rank == call.root) {
        memcpy(mine, call.send + done * es, n * es);
    }
}

void Collective::read_chunk(size_t n) {
    ncclComm &c = *comm;
    size_t es = type_size(call.type);
    size_t offset = call.kind == Kind::reduce_scatter ? c.rank * n * es : 0;
    std::vector<const char *> slots;
    for (int r = 0; r < c.nranks; r++) slots.push_back(c.slot(r) + offset);
    switch (call.kind) {
    case Kind::reduce:
        if (c.rank != call.root) return;
        [[fallthrough]];
    case Kind::all_reduce:
    case Kind::reduce_scatter: return reduce(call.type, call.op, call.recv + done * es, slots, n);
    case Kind::all_gather:
        for (int b = 0; b < c.nranks; b++) memcpy(call.recv + (b * call.count + done) * es, slots[b], n * es);
        return;
    case Kind::broadcast: memcpy(call.recv + done * es, slots[call.root], n * es); return;
    }
}

// One step: fill the slot once every rank has read the previous step, then
// read once every rank has written this one.
bool Collective::run() {
    ncclComm &c = *comm;
    if (c.aborted) return true;  // an aborted communicator's work ends at once
    if (c.error != ncclSuccess || c.finished != ticket) return false;  // hung, or an earlier collective runs first
    const char *what = kind_name(call.kind);
    while (done < call.count) {
        size_t n = chunk_elements();
        if (!written) {
            if (!peers_reached(c, &RankRecord::read, c.steps, what)) return false;
            write_chunk(n);
            c.record(c.rank).written.store(c.steps + 1, std::memory_order_release);
            written = true;
        }
        if (!peers_reached(c, &RankRecord::written, c.steps + 1, what)) return false;
        read_chunk(n);
        c.record(c.rank).read.store(++c.steps, std::memory_order_release);
        written = false;
        done += n;
    }
    c.finished++;
    return true;
}

// Elements of sendbuff and recvbuff this rank uses (0: not used here).
void buffer_elements(const Call &call, const ncclComm &c, size_t *send, size_t *recv) {
    bool root = c.rank == call.root;
    size_t all = call.count * c.nranks;
    switch (call.kind) {
    case Kind::all_reduce: *send = call.count, *recv = call.count; return;
    case Kind::reduce_scatter: *send = all, *recv = call.count; return;
    case Kind::all_gather: *send = call.count, *recv = all; return;
    case Kind::reduce: *send = call.count, *recv = root ? call.count : 0; return;
    case Kind::broadcast: *send = root ? call.count : 0, *recv = call.count; return;
    }
}

bool is_reduction(Kind kind) {
    return kind == Kind::all_reduce || kind == Kind::reduce_scatter || kind == Kind::reduce;
}

ncclResult_t check_buffer(ncclComm &c, const char *what, const char *which, const void *ptr, size_t elements,
                          size_t es) {
    if (elements == 0) return ncclSuccess;
    std::string where = format("%s: %s", what, which);
    if (emu::check_device_range(ptr, elements * es, where.c_str())) return ncclSuccess;
    return refuse(&c, ncclInvalidArgument, "%s %p is not %zu bytes of device memory", where.c_str(), ptr,
                  elements * es);
}

// Checks a collective's arguments and queues it on the stream.
ncclResult_t issue(const Call &call, ncclComm_t handle, cudaStream_t stream) {
    const char *what = kind_name(call.kind);
    std::shared_ptr<ncclComm> comm = lookup(handle);
    if (!comm) return refuse(nullptr, ncclInvalidArgument, "%s: invalid communicator %p", what, (void *)handle);
    ncclComm &c = *comm;
    if (c.error != ncclSuccess) return c.error;
    if (!poll_join(c))
        return c.error != ncclSuccess ? c.error
                                      : refuse(&c, ncclInvalidUsage, "%s: the communicator is still joining", what);
    if (c.finalized) return refuse(&c, ncclInvalidUsage, "%s: the communicator is finalized", what);
    size_t es = type_size(call.type);
    if (es == 0) return refuse(&c, ncclInvalidArgument, "%s: invalid datatype %d", what, (int)call.type);
    if (is_reduction(call.kind) && (unsigned)call.op >= ncclNumOps)
        return refuse(&c, ncclInvalidArgument, "%s: invalid reduction %d", what, (int)call.op);
    if ((call.kind == Kind::reduce || call.kind == Kind::broadcast) && (call.root < 0 || call.root >= c.nranks))
        return refuse(&c, ncclInvalidArgument, "%s: root %d is not in [0, %d)", what, call.root, c.nranks);
    size_t bytes;
    if (__builtin_mul_overflow(call.count, es * c.nranks, &bytes))
        return refuse(&c, ncclInvalidArgument, "%s: count %zu is too large", what, call.count);
    if (call.count == 0) return ncclSuccess;
    size_t send_elements = 0, recv_elements = 0;
    buffer_elements(call, c, &send_elements, &recv_elements);
    if (ncclResult_t rc = check_buffer(c, what, "sendbuff", call.send, send_elements, es)) return rc;
    if (ncclResult_t rc = check_buffer(c, what, "recvbuff", call.recv, recv_elements, es)) return rc;
    cudaError_t err = emu::enqueue(stream, std::make_unique<Collective>(comm, call, c.issued));
    if (err != cudaSuccess) return refuse(&c, ncclUnhandledCudaError, "%s: %s", what, cudaGetErrorString(err));
    c.issued++;
    return ncclSuccess;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetVersion(int *version) {
    emu::Lock lock;
    if (!version) return refuse(nullptr, ncclInvalidArgument, "ncclGetVersion: version is NULL");
    *version = NCCL_VERSION_CODE;
    return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t result) {
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}

const char *ncclGetLastError(ncclComm_t comm) {
    emu::Lock lock;
    std::shared_ptr<ncclComm> c = lookup(comm);
    return c && !c->message.empty() ? c->message.c_str() : process_message.c_str();
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    emu::Lock lock;
    if (!id) return refuse(nullptr, ncclInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
    uint64_t nonce;
    if (getrandom(&nonce, sizeof nonce, 0) != (ssize_t)sizeof nonce)
        return refuse(nullptr, ncclSystemError, "ncclGetUniqueId: getrandom: %s", strerror(errno));
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "%s%d_%016llx", NAME_PREFIX, (int)getpid(), (unsigned long long)nonce);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *out, int nranks, ncclUniqueId id, int rank, ncclConfig_t *config) {
    emu::Lock lock;
    if (ncclResult_t rc = check_init_arguments(out, nranks, id, rank, config)) return rc;
    *out = nullptr;
    auto comm = std::make_shared<ncclComm>();
    comm->name = id.internal;
    comm->nranks = nranks;
    comm->rank = rank;
    comm->blocking = !config || config->blocking != 0;
    if (ncclResult_t rc = map_segment(*comm)) return rc;
    if (ncclResult_t rc = join(*comm)) return rc;
    while (comm->blocking && !poll_join(*comm) && comm->error == ncclSuccess) emu::nap();
    if (comm->error != ncclSuccess) {
        comm->aborted = true;
        remove_name(*comm);
        return comm->error;
    }
    live_comms[comm.get()] = comm;
    *out = comm.get();
    return comm->blocking ? ncclSuccess : ncclInProgress;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    return ncclCommInitRankConfig(comm, nranks, id, rank, nullptr);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async_error) {
    emu::Lock lock;
    std::shared_ptr<ncclComm> c = lookup(comm);
    if (!c) return refuse(nullptr, ncclInvalidArgument, "ncclCommGetAsyncError: invalid communicator %p", (void *)comm);
    if (!async_error) return refuse(c.get(), ncclInvalidArgument, "ncclCommGetAsyncError: asyncError is NULL");
    bool ready = poll_join(*c);
    *async_error = c->error != ncclSuccess ? c->error : ready ? ncclSuccess : ncclInProgress;
    if (*async_error == ncclInProgress) emu::count_host_wait();  // the caller polls until it is not
    return ncclSuccess;
}

// Work already queued still runs when its stream is waited for; nothing is
// left for finalize to do here.
ncclResult_t ncclCommFinalize(ncclComm_t comm) {
    emu::Lock lock;
    std::shared_ptr<ncclComm> c = lookup(comm);
    if (!c) return refuse(nullptr, ncclInvalidArgument, "ncclCommFinalize: invalid communicator %p", (void *)comm);
    c->finalized = true;
    return c->blocking ? ncclSuccess : ncclInProgress;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    emu::Lock lock;
    if (!comm) return ncclSuccess;
    std::shared_ptr<ncclComm> c = lookup(comm);
    if (!c) return refuse(nullptr, ncclInvalidArgument, "ncclCommDestroy: invalid communicator %p", (void *)comm);
    if (!c->all_joined()) remove_name(*c);
    live_comms.erase(comm);
    return ncclSuccess;
}

// Tells the peers at once; this rank's queued collectives end without running.
ncclResult_t ncclCommAbort(ncclComm_t comm) {
    emu::Lock lock;
    if (!comm) return ncclSuccess;
    std::shared_ptr<ncclComm> c = lookup(comm);
    if (!c) return refuse(nullptr, ncclInvalidArgument, "ncclCommAbort: invalid communicator %p", (void *)comm);
    c->aborted = true;
    c->leave(ABORTED);
    if (!c->all_joined()) remove_name(*c);
    live_comms.erase(comm);
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    emu::Lock lock;
    return issue({Kind::all_reduce, (const char *)sendbuff, (char *)recvbuff, count, datatype, op, 0}, comm, stream);
}

ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    emu::Lock lock;
    return issue({Kind::reduce_scatter, (const char *)sendbuff, (char *)recvbuff, recvcount, datatype, op, 0}, comm,
                 stream);
}

ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
    emu::Lock lock;
    return issue({Kind::all_gather, (const char *)sendbuff, (char *)recvbuff, sendcount, datatype, ncclSum, 0}, comm,
                 stream);
}

ncclResult_t ncclReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                        int root, ncclComm_t comm, cudaStream_t stream) {
    emu::Lock lock;
    return issue({Kind::reduce, (const char *)sendbuff, (char *)recvbuff, count, datatype, op, root}, comm, stream);
}

ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
    emu::Lock lock;
    return issue({Kind::broadcast, (const char *)sendbuff, (char *)recvbuff, count, datatype, ncclSum, root}, comm,
                 stream);
}

ncclResult_t ncclGroupStart(void) {
    emu::Lock lock;
    group_depth++;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void) {
    emu::Lock lock;
    if (group_depth == 0) return refuse(nullptr, ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    group_depth--;
    return ncclSuccess;
}

}  // extern "C"
