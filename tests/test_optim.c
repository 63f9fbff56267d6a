// optim: schedules, AdamW and gradient clipping against transformers / torch
// numbers (scripts/ref_optim.py -> tests/fixtures/optim/), on the CPU backend.
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim/optim.h"

enum { SCHEDULE_STEPS = 24, MAX_PARAMS = 16 };

static FILE *open_fixture(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "tests/fixtures/optim/%s", name);
    FILE *f = fopen(path, "r");
    if (!f) {
        print_message("missing fixture %s (run scripts/ref_optim.py)\n", path);
        skip();
    }
    return f;
}

static void read_floats(FILE *f, float *x, int n) {
    for (int i = 0; i < n; i++) assert_int_equal(fscanf(f, "%f", &x[i]), 1);
}

static double rel_error(double got, double want) {
    return fabs(got - want) / fmax(fabs(want), 1e-12);
}

// ----------------------------------------------------------------------------
// schedules

static Schedule schedule_kind(const char *name) {
    if (strcmp(name, "linear") == 0) return SCHEDULE_LINEAR;
    if (strcmp(name, "cosine") == 0) return SCHEDULE_COSINE;
    assert_string_equal(name, "constant");
    return SCHEDULE_CONSTANT;
}

static void test_schedules_match_transformers(void **state) {
    FILE *f = open_fixture("schedules.txt");
    char name[16];
    LrSchedule schedule;
    int cases = 0;
    while (fscanf(f, "%15s %d %d %f %f", name, &schedule.warmup_steps, &schedule.total_steps,
                  &schedule.peak_lr, &schedule.min_lr_ratio) == 5) {
        schedule.kind = schedule_kind(name);
        float want[SCHEDULE_STEPS];
        read_floats(f, want, SCHEDULE_STEPS);
        for (int step = 0; step < SCHEDULE_STEPS; step++) {
            float lr = lr_at_step(&schedule, step);
            if (fabsf(lr - want[step]) > 1e-6f * schedule.peak_lr) {
                fail_msg("%s warmup %d min_lr_ratio %g step %d: lr %g, transformers %g", name,
                         schedule.warmup_steps, schedule.min_lr_ratio, step, lr, want[step]);
            }
        }
        cases++;
    }
    fclose(f);
    assert_int_equal(cases, 6);
}

static void test_warmup_steps_match_transformers(void **state) {
    FILE *f = open_fixture("warmup_steps.txt");
    float warmup;
    int total, want, cases = 0;
    while (fscanf(f, "%f %d %d", &warmup, &total, &want) == 3) {
        assert_int_equal(warmup_steps_from(warmup, total), want);
        cases++;
    }
    fclose(f);
    assert_int_equal(cases, 5);
}

// ----------------------------------------------------------------------------
// AdamW: 5 steps of torch.optim.AdamW(lr 1e-2, weight_decay 0.1)

static void test_adamw_matches_torch(void **state) {
    FILE *f = open_fixture("adamw.txt");
    int n, steps;
    assert_int_equal(fscanf(f, "%d %d", &n, &steps), 2);
    assert_true(n <= MAX_PARAMS);
    float params[MAX_PARAMS], grads[MAX_PARAMS], want[MAX_PARAMS];
    read_floats(f, params, n);
    AdamW opt;
    Error err = {{0}};
    assert_true(adamw_init(&opt, ops_cpu(), n, 0.9f, 0.999f, 1e-8f, 0.1f, &err));
    for (int i = 0; i < n; i++) assert_true(opt.m[i] == 0.0f && opt.v[i] == 0.0f);
    for (int step = 1; step <= steps; step++) {
        read_floats(f, grads, n);
        read_floats(f, want, n);
        adamw_step(&opt, params, grads, 1e-2f);
        assert_int_equal(opt.step, step);
        for (int i = 0; i < n; i++) {
            if (rel_error(params[i], want[i]) > 1e-6) {
                fail_msg("step %d param %d: %.9g, torch %.9g", step, i, params[i], want[i]);
            }
        }
    }
    adamw_destroy(&opt);
    assert_null(opt.m);
    fclose(f);
}

// ----------------------------------------------------------------------------
// gradient norm and clipping vs torch.nn.utils.clip_grad_norm_

static void test_clip_matches_torch(void **state) {
    enum { N = 12 };
    FILE *f = open_fixture("clip.txt");
    const Ops *ops = ops_cpu();
    float max_norm, want_norm, grads[N], want[N], scratch = NAN;
    int cases = 0;
    while (fscanf(f, "%f %f", &max_norm, &want_norm) == 2) {
        read_floats(f, grads, N);
        read_floats(f, want, N);
        float norm = grad_norm(ops, grads, N, &scratch);
        assert_true(rel_error(norm, want_norm) < 1e-6);
        float coef = clip_grads(ops, grads, N, norm, max_norm);
        assert_true(norm > max_norm ? coef < 1.0f : coef == 1.0f);
        for (int i = 0; i < N; i++) assert_true(rel_error(grads[i], want[i]) < 1e-6);
        cases++;
    }
    fclose(f);
    assert_int_equal(cases, 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedules_match_transformers),
        cmocka_unit_test(test_warmup_steps_match_transformers),
        cmocka_unit_test(test_adamw_matches_torch),
        cmocka_unit_test(test_clip_matches_torch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
