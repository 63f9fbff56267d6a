// bench: an op table that forwards every training op to a backend and
// records its wall time and call count. On an asynchronous backend (CUDA)
// each timed op is bracketed by synchronize(), so the time is the op's own
// (plus one launch and one synchronisation, a few microseconds): use it for
// time shares, and time throughput without it.
#pragma once
#include <stdio.h>

#include "kernels/ops.h"

// base's table with the training ops timed (the rest forwarded as they are).
Ops op_timer_wrap(const Ops *base);
void op_timer_reset(void);
// Markdown table, largest share first: op, calls per step, ms per step, share.
void op_timer_print(FILE *out, int steps);
// The same as a JSON array of {"op", "calls_per_step", "ms_per_step", "share"}.
void op_timer_print_json(FILE *out, int steps);
