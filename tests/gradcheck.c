#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

double *load_fixture(const char *name, size_t count) {
    char path[512];
    snprintf(path, sizeof path, "tests/fixtures/ops/%s", name);
    FILE *f = fopen(path, "r");
    if (!f) {
        print_message("missing fixture %s (run scripts/ref_ops.py)\n", path);
        skip();
    }
    double *values = malloc(count * sizeof(double));
    assert_non_null(values);
    size_t n = 0;
    while (n < count && fscanf(f, "%lf", &values[n]) == 1) n++;
    double extra;
    assert_int_equal(fscanf(f, "%lf", &extra), EOF);
    fclose(f);
    assert_int_equal(n, count);
    return values;
}

static double weighted_sum(const Problem *p, const double *w, double *out) {
    p->forward(p, out);
    double sum = 0.0;
    for (size_t i = 0; i < p->out_size; i++) sum += out[i] * w[i];
    return sum;
}

double *fd_gradient(const Problem *p, int which, const double *w) {
    size_t n = p->input_sizes[which];
    double *grad = malloc(n * sizeof(double)), *out = malloc(p->out_size * sizeof(double));
    assert_non_null(grad);
    assert_non_null(out);
    double *x = p->inputs[which];
    for (size_t i = 0; i < n; i++) {
        double saved = x[i];
        x[i] = saved + FD_EPS;
        double plus = weighted_sum(p, w, out);
        x[i] = saved - FD_EPS;
        double minus = weighted_sum(p, w, out);
        x[i] = saved;
        grad[i] = (plus - minus) / (2 * FD_EPS);
    }
    free(out);
    return grad;
}

double *reference_forward(const Problem *p) {
    double *out = malloc(p->out_size * sizeof(double));
    assert_non_null(out);
    p->forward(p, out);
    return out;
}

void free_problem(Problem *p) {
    for (int i = 0; i < GRADCHECK_MAX_INPUTS; i++) free(p->inputs[i]);
}

float *random_floats(size_t n, float lo, float hi, Rng *rng) {
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    fill_uniform(x, n, lo, hi, rng);
    return x;
}

float *poisoned_floats(size_t n) {
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    poison(x, n);
    return x;
}

float *copy_floats(const float *x, size_t n) {
    float *copy = malloc(n * sizeof(float));
    assert_non_null(copy);
    memcpy(copy, x, n * sizeof(float));
    return copy;
}

double *to_double(const float *x, size_t n) {
    double *d = malloc(n * sizeof(double));
    assert_non_null(d);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

void assert_close(const char *what, const float *got, const double *want, size_t n, double tol) {
    double largest = 0.0;
    for (size_t i = 0; i < n; i++) largest = fmax(largest, fabs(want[i]));
    double error = max_rel_error(got, want, n, largest * 1e-2 + 1e-12);
    if (!(error < tol)) fail_msg("%s: relative error %.3g >= %.3g", what, error, tol);
}

void assert_increment(const char *what, const float *after, const float *before, const double *want, size_t n,
                      double tol) {
    float *increment = malloc(n * sizeof(float));
    assert_non_null(increment);
    for (size_t i = 0; i < n; i++) increment[i] = after[i] - before[i];
    assert_close(what, increment, want, n, tol);
    free(increment);
}
