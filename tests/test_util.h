// Shared helpers for the cmocka tests.
#pragma once
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// core.h before cmocka.h: cmocka defines a fail() macro that would rewrite
// core's fail() declaration.
#include "core/core.h"
#include <cmocka.h>

// Fills x with uniform values in [lo, hi).
void fill_uniform(float *x, size_t n, float lo, float hi, Rng *rng);
// Fills x with NaN, so an op that leaves an output element unwritten fails.
void poison(float *x, size_t n);
// seq_start (B, T) of packed rows (kernels/ops.h): segments of the given
// lengths laid end to end, row after row; none may cross a row's end.
void packed_seq_start(int32_t *seq_start, int B, int T, const int *lengths, int n_lengths);
// Largest |a - b| / max(|b|, floor) over n elements.
double max_rel_error(const float *a, const double *b, size_t n, double floor);
// Asserts every element of x is finite.
void assert_all_finite(const float *x, size_t n);
// A fresh empty directory under /tmp for this test; returns its path (static buffer).
const char *make_temp_dir(const char *tag);
// Path of a shared fixture ("../shared/fixtures/" + rel) or NULL when absent.
const char *shared_fixture(const char *rel);
// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice for port 0).
int free_tcp_port(void);
// Runs a shell command through system(); returns its exit status.
int run_command(const char *command);
