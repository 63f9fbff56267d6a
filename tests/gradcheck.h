// Finite-difference checking shared by the op tests: a double-precision
// reference forward of up to three inputs, the central-difference gradient of
// L = sum(out * w) with respect to one of them, and comparisons of fp32
// results against double references.
#pragma once
#include "test_util.h"

#define GRADCHECK_MAX_INPUTS 3
#define FD_EPS 1e-5
#define FD_TOL 1e-4
#define FORWARD_TOL 1e-5

typedef struct Problem Problem;
struct Problem {
    double *inputs[GRADCHECK_MAX_INPUTS]; // double copies of the op's inputs, owned
    size_t input_sizes[GRADCHECK_MAX_INPUTS];
    size_t out_size;
    void (*forward)(const Problem *p, double *out);
    const void *shape; // the op's sizes and constant arguments
    int N, C;          // row shape, for row-wise ops
};

// Reads exactly `count` whitespace-separated numbers from tests/fixtures/ops/<name>
// (scripts/ref_ops.py); skips the test when the file is missing.
double *load_fixture(const char *name, size_t count);

// (L(x + eps) - L(x - eps)) / 2 eps for every element x of input `which`.
double *fd_gradient(const Problem *p, int which, const double *w);
double *reference_forward(const Problem *p);
void free_problem(Problem *p);

float *random_floats(size_t n, float lo, float hi, Rng *rng);
float *poisoned_floats(size_t n);
float *copy_floats(const float *x, size_t n);
double *to_double(const float *x, size_t n);
// Asserts got ~ want: |got - want| / max(|want|, 1e-2 max|want|) < tol.
void assert_close(const char *what, const float *got, const double *want, size_t n, double tol);
// Asserts after - before ~ want: the backward added its gradient into a buffer
// that held `before`.
void assert_increment(const char *what, const float *after, const float *before, const double *want, size_t n,
                      double tol);
