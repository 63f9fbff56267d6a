// bench: an op table that forwards every training op to a backend and
// records its wall time, call count, and the FLOPs and bytes each call must
// at least do (op_timer.c's cost model), and the floor time those take on an
// H100 / H200 at their peak rates (989.4 TFLOP/s bf16 dense; 3.35 / 4.8 TB/s). On an asynchronous backend (CUDA)
// each timed op is bracketed by synchronize(), so the time is the op's own
// (plus one launch and one synchronisation, a few microseconds): use it for
// time shares, and time throughput without it.
#pragma once
#include <stdbool.h>
#include <stdio.h>

#include "kernels/ops.h"

// base's table with the training ops timed (the rest forwarded as they are).
Ops op_timer_wrap(const Ops *base);
void op_timer_reset(void);
typedef struct OpTotals {
    long calls;
    double seconds, flops, bytes;
} OpTotals;
// The totals since the last reset of the op named `op` ("matmul", ...); false if it is not timed.
bool op_timer_totals(const char *op, OpTotals *totals);

// A GPU's peak rates: dense bf16 tensor-core FLOP/s and memory bytes/s.
typedef struct DevicePeak {
    const char *name;
    double flops, bytes_per_s;
} DevicePeak;
extern const DevicePeak DEVICE_H100, DEVICE_H200;
// The peaks of a device called `name` (cudaGetDeviceProperties' name), NULL when unknown.
const DevicePeak *device_peak_named(const char *name);

// Markdown table, largest share first: op, calls per step, ms per step, share,
// GFLOP and MB per step, the H100 and H200 floor times per step, and when
// `device` is not NULL (the GPU it ran on) the time as a multiple of its floor there.
void op_timer_print(FILE *out, int steps, const DevicePeak *device);
// The same as a JSON array of {"op", "calls_per_step", "ms_per_step", "share", "flops_per_step",
// "bytes_per_step", "h100_floor_ms", "h200_floor_ms"}.
void op_timer_print_json(FILE *out, int steps);
