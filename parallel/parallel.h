// parallel: ranks, the rendezvous store, collectives and ZeRO.
//
// A job of world_size processes (ranks) speaks torchrun's environment
// protocol. Rank 0 hosts a small TCP key-value store on MASTER_ADDR:
// MASTER_PORT that every rank joins; the collectives bootstrap through it
// (the CPU implementation publishes its socket address, NCCL its unique id).
// Every blocking call gives up after a timeout with a message naming the
// rank it was waiting for, so a dead or hung rank ends the job.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"
#include "../kernels/ops.h"
#include "../offload/offload.h"
#include "../optim/optim.h"

// ----------------------------------------------------------------------------
// ranks

#define DIST_ADDR_MAX 256

typedef struct RankInfo {
    int rank, world_size;              // global
    int local_rank, local_world_size;  // on this node
    char master_addr[DIST_ADDR_MAX];
    int master_port;
} RankInfo;

// RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
// (torchrun, lora-launch), else SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID
// (MASTER_ADDR / MASTER_PORT still from the environment), else one rank.
// A malformed or inconsistent variable is an error naming it.
bool rank_info_from_env(RankInfo *info, Error *err);

// Rank r's contiguous shard of a flat buffer of n elements split in
// world_size shards of ceil(n / world_size) (the last ones shorter, possibly
// empty: the padding is virtual): [*begin, *end).
void dist_shard_range(size_t n, int world_size, int rank, size_t *begin, size_t *end);
// n rounded up to a multiple of world_size: world_size equal shards of
// ceil(n / world_size), dist_shard_range's with the padding made real. The
// flat buffers given to reduce_scatter_sum and all_gather have this many
// elements, as ncclReduceScatter and ncclAllGather need equal blocks.
size_t dist_padded_size(size_t n, int world_size);
// The part of [begin, end) inside rank r's shard of n: [*owned_begin,
// *owned_end), empty (both equal) when they do not meet.
void dist_owned_range(size_t n, int world_size, int rank, size_t begin, size_t end, size_t *owned_begin,
                      size_t *owned_end);

// ----------------------------------------------------------------------------
// rendezvous store

typedef struct Store Store;

// Rank 0 serves the store on master_addr:master_port (a thread) and every
// rank connects to it, retrying until timeout_s.
Store *store_create(const RankInfo *info, double timeout_s, Error *err);
void store_destroy(Store *store);
bool store_set(Store *store, const char *key, const void *value, size_t size, Error *err);
// Waits (up to the store's timeout) until key is set; *value is malloc'd.
bool store_get(Store *store, const char *key, void **value, size_t *size, Error *err);
// Waits until every key is set.
bool store_wait(Store *store, const char *const *keys, int n_keys, Error *err);

// ----------------------------------------------------------------------------
// collectives: one table, a CPU implementation and NCCL

typedef struct Collectives Collectives;

// Buffers are the backend's memory (host for the CPU, device for NCCL). On a
// GPU the calls return once enqueued: each collective runs after the work
// already issued on the compute stream, and the compute issued later waits
// for it (events), so the host never waits for the device there; `wait` is
// where it does, and checks the peers. On the CPU they return when done
// (reduce_scatter_range_start: when queued). An error (a peer gone or silent
// past the timeout) names the rank.
struct Collectives {
    const char *name; // "single", "cpu" or "nccl"
    int rank, world_size;
    void *state;
    // x (n) = sum over ranks of x; dtype DTYPE_F32 or DTYPE_F64.
    bool (*all_reduce_sum)(Collectives *c, void *x, size_t n, DType dtype, Error *err);
    // In place on a flat fp32 buffer x of n elements and room for
    // dist_padded_size(n) (the padding is scratch: finite in, unspecified
    // out): afterwards this rank's shard (dist_shard_range) holds the sum over
    // ranks; the rest is unspecified. NCCL: one ncclReduceScatter.
    bool (*reduce_scatter_sum)(Collectives *c, float *x, size_t n, Error *err);
    // The same for the elements [begin, end) of x (n) only: each one's sum
    // over ranks lands on the rank whose shard of n holds it; the rest of
    // [begin, end) is unspecified, elements outside it are untouched. A
    // bucket of the backward: NCCL reduces each owner's piece to its owner
    // (grouped ncclReduce calls, as DeepSpeed's ZeRO-2 reduces a bucket per
    // partition), so no padding is needed.
    bool (*reduce_scatter_range_sum)(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err);
    // reduce_scatter_range_sum started in the background (the CPU: queued to
    // a communication thread that owns the sockets until the queue drains;
    // NCCL: on the communication stream after the compute issued so far),
    // so the caller goes on computing. x[begin, end) must not be touched
    // until join_reductions or wait; every other call is ordered after the
    // started ones (the CPU: waits for them).
    bool (*reduce_scatter_range_start)(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err);
    // The work issued next is ordered after every reduction started: NCCL
    // makes the compute stream wait for them (an event, the host goes on);
    // the CPU waits for them as `wait` does.
    bool (*join_reductions)(Collectives *c, Error *err);
    // Waits on the host until every collective issued has run; fails with the
    // first error. NCCL: a peer that died or hung fails it once its watchdog
    // thread has aborted the communicator (on its error, or a collective
    // without progress for the timeout, waited for or not), so no later
    // device work waits on it.
    // Call before a blocking host read of anything a collective, or compute
    // ordered after one, writes: behind a hung collective that read never returns.
    bool (*wait)(Collectives *c, Error *err);
    // How many started reductions are known to have finished since creation
    // (the CPU: as each finishes; NCCL: at wait). Tests observe overlap with it.
    size_t (*reductions_finished)(Collectives *c);
    // *event: an event (cudaEvent_t) recorded on the communication stream
    // after the reductions started so far, for a copy of their results on
    // another stream to wait on (NCCL); NULL where a started reduction's
    // result may be read once reductions_finished counts it (the CPU, single).
    bool (*reductions_event)(Collectives *c, void **event, Error *err);
    // In place on x (n, room for dist_padded_size(n) as reduce_scatter_sum):
    // every rank's shard is copied to all ranks. NCCL: one ncclAllGather.
    bool (*all_gather)(Collectives *c, float *x, size_t n, Error *err);
    // bytes of x on root copied to every rank.
    bool (*broadcast)(Collectives *c, void *x, size_t bytes, int root, Error *err);
    // Returns once every rank has reached it (NCCL: an all-reduce, waited for).
    bool (*barrier)(Collectives *c, Error *err);
    void (*destroy)(Collectives *c);
};

// World size 1: every call returns at once.
Collectives *collectives_single(Error *err);
// Processes over TCP sockets (rank 0 in the middle, summing in rank order, so
// results are the same bits on every rank). timeout_s bounds every wait.
Collectives *collectives_cpu(Store *store, const RankInfo *info, double timeout_s, Error *err);
// NCCL on the CUDA backend's device (ops_cuda: LOCAL_RANK's), unique id shared through the store. NULL
// with a reason when built without CUDA.
Collectives *collectives_nccl(Store *store, const RankInfo *info, double timeout_s, Error *err);
// The NCCL library's version (ncclGetVersion: 22105 = 2.21.5); 0 when built without NCCL.
int nccl_version(void);
void collectives_destroy(Collectives *c);

// ----------------------------------------------------------------------------
// ZeRO: gradient reduction and the optimizer step over the flat buffer

typedef struct ZeroOptions {
    int stage;               // 0: all-reduce gradients; 2: shard gradients and optimizer state
    bool overlap_comm;       // stage 2: reduce-scatter gradient buckets during the backward
    size_t bucket_elements;  // with overlap_comm: ranges are merged until a bucket holds this many (0: per range)
    bool offload_cpu;        // the shard's masters, moments and gradients in pinned host memory
    bool delayed_update;     // with offload_cpu: step k's CPU AdamW overlaps step k + 1 (one update late)
    float beta1, beta2, eps, weight_decay;
    float max_grad_norm;     // 0 = no clipping
} ZeroOptions;

typedef struct Zero Zero;

// params (n_params, backend memory) are the current parameters, the same on
// every rank; the optimizer state covers this rank's shard (stage 2) or all.
// grads (n_params, backend memory) is the buffer the backward adds into.
// Both have room for dist_padded_size(n_params, world_size) floats, the
// padding zeros (ModelOptions.flat_shards), for the collectives' equal shards.
Zero *zero_create(const Ops *ops, Collectives *coll, const float *params, float *grads, size_t n_params,
                  const ZeroOptions *options, Error *err);
void zero_destroy(Zero *zero);
// Elements of the flat buffer this rank's optimizer state covers.
size_t zero_shard_size(const Zero *zero);
// grads (n) hold this rank's share of the step's gradient (already scaled by
// 1 / global label tokens). Sums them over ranks (all-reduce, or
// reduce-scatter at stage 2), computes the global grad norm, clips, runs
// AdamW (on the owned shard at stage 2, then all-gathers the parameters).
// After zero_reduce_micro_batch the shard is already summed over ranks.
// *norm_out: the norm before clipping.
// A non-finite norm, or one above zero_set_norm_limit's, leaves parameters
// and optimizer state untouched (every rank sees the same global norm, so
// all skip together).
// With offload the shard's gradient is clipped and stepped on the host: the
// copies made during the last micro-batch's backward, else downloaded here.
// With delayed_update the AdamW of this step runs on a thread and params
// receive the previous step's update instead (stage 2: all-gathered).
// zero_step_issue, then zero_step_norm.
bool zero_step(Zero *zero, float *params, float *grads, float lr, float *norm_out, Error *err);
// The step of zero_step without reading its norm. Without offload the norm's
// square stays on the device (all-reduced there at stage 2), the clip
// coefficient and the skip are decided there (the clip_by_norm op, the adamw
// op's skip rule), and the collectives are ordered on the device, so the host
// does not wait for the device. With offload the host reads the norm first
// (zero_wait, then the download).
bool zero_step_issue(Zero *zero, float *params, float *grads, float lr, Error *err);
// *norm: the norm before clipping of the step issued last: zero_wait, then its
// one download (without offload), which waits for the step; counts the AdamW
// step when it was taken, so zero_state's step (the bias correction) advances
// only for applied steps. zero_step_issue fails until the norm has been read.
// Fails when a collective of the step failed (a peer died or hung).
bool zero_step_norm(Zero *zero, float *norm, Error *err);
// Waits on the host for the collectives issued so far (Collectives.wait): a
// dead or hung peer fails here within the timeout. Before a blocking host read
// of device memory written after them (the loss, a checkpoint's parameters).
bool zero_wait(Zero *zero, Error *err);
// The norm above which the following zero_steps skip the update (INFINITY, the default: none);
// set before zero_step_issue, not between it and zero_step_norm (which judges the step by it again).
void zero_set_norm_limit(Zero *zero, float limit);
// delayed_update: waits for the update in flight and writes it into params
// (all ranks call it together), then zero_wait; afterwards params and
// zero_state are current. Without delayed_update it does nothing.
bool zero_flush(Zero *zero, float *params, Error *err);
// The model's gradient-ready hook (StepOptions.grads_ready, context: the
// Zero): grads[begin, end) is final for this micro-batch. Stage 2 with
// overlap_comm merges adjacent ranges into a bucket and, once it holds
// bucket_elements, starts its reduce-scatter in the background while the
// backward goes on; otherwise does nothing. A failure is kept and returned
// by zero_reduce_micro_batch, which must follow the backward (before
// zero_step or any other collective); a range is reported once per micro-batch.
void zero_grads_ready(void *zero, size_t begin, size_t end);
// Before each micro-batch's backward: last = the step's last micro-batch.
// With offload_cpu and overlap_comm (stage 2) that micro-batch copies each
// bucket's owned piece into the host gradient buffer as soon as its
// reduction is done (earlier ones accumulate on the device), so zero_step
// downloads nothing. Without the call zero_step downloads the shard.
void zero_begin_micro_batch(Zero *zero, bool last);
// Stage 2, after each micro-batch's backward added into grads (n), on every
// rank: reduce-scatters what the buckets did not cover and orders what
// follows after the buckets in flight (join_reductions: NCCL on the device,
// without a host wait), so this rank's shard holds its gradient summed over
// ranks and micro-batches so far, and zeroes the rest of grads (the next
// backward adds into it); in a copying micro-batch (zero_begin_micro_batch)
// it waits on the host for the reductions and the copies, so the host holds
// the shard on return.
// Stage 0: does nothing.
bool zero_reduce_micro_batch(Zero *zero, float *grads, Error *err);
// With offload: the host buffer (zero_shard_size) the step's gradient shard
// goes into, for tests that watch the copies; NULL without offload.
const float *zero_offloaded_grads(const Zero *zero);

// This rank's optimizer state, for checkpoints (after zero_flush): AdamW moments of the flat
// buffer's elements [begin, begin + count), in host memory with offload and
// backend memory otherwise, and the steps taken.
typedef struct ZeroState {
    size_t begin, count;
    float *m, *v;
    bool on_host;
    int step;
} ZeroState;

ZeroState zero_state(const Zero *zero);
// After a resume wrote params (backend, n) and the moments in place: the step
// count and, with offload, the host masters from params.
void zero_restore(Zero *zero, const float *params, int step);
