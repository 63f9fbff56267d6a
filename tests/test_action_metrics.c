// OpenVLA's action metrics (action_metrics_add, data/action.c) against
// tests/fixtures/rlds/action_metrics.json: action_accuracy and action_l1_loss
// computed by scripts/ref_action_metrics.py with the lines of OpenVLA's
// vla-scripts/finetune.py (torch, numpy), on batches whose predictions include
// ids outside the action range and whose labels hold IGNORE_INDEX and </s>.
#include "test_util.h"

#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>

#include "data/rlds.h"

static json_object *get(json_object *object, const char *key) {
    json_object *value;
    if (!json_object_object_get_ex(object, key, &value)) fail_msg("no key '%s'", key);
    return value;
}

static int32_t *int_array(json_object *array, int64_t *n) {
    *n = (int64_t)json_object_array_length(array);
    int32_t *values = malloc((size_t)*n * sizeof *values);
    for (int64_t i = 0; i < *n; i++) values[i] = json_object_get_int(json_object_array_get_idx(array, (size_t)i));
    return values;
}

static void test_metrics_as_finetune_py(void **state) {
    (void)state;
    json_object *root = json_object_from_file("tests/fixtures/rlds/action_metrics.json");
    assert_non_null(root);
    json_object *cases = get(root, "cases");
    assert_true(json_object_array_length(cases) >= 3);
    for (size_t c = 0; c < json_object_array_length(cases); c++) {
        json_object *item = json_object_array_get_idx(cases, c);
        ActionTokenizer tok;
        action_tokenizer_init(&tok, json_object_get_int(get(item, "vocab_size")));
        int64_t n, n_targets;
        int32_t *predicted = int_array(get(item, "predicted"), &n);
        int32_t *targets = int_array(get(item, "targets"), &n_targets);
        assert_int_equal(n, n_targets);
        ActionMetricSums sums = {0};
        action_metrics_add(&tok, predicted, targets, n, &sums);
        assert_int_equal(sums.n_action_tokens, json_object_get_int64(get(item, "n_action_tokens")));
        assert_int_equal(sums.n_correct, json_object_get_int64(get(item, "n_correct")));
        double accuracy = (double)sums.n_correct / (double)sums.n_action_tokens;
        double l1 = sums.l1_sum / (double)sums.n_action_tokens;
        assert_true(fabs(accuracy - json_object_get_double(get(item, "action_accuracy"))) < 1e-7); // torch's float32
        assert_true(fabs(l1 - json_object_get_double(get(item, "action_l1_loss"))) < 1e-12);
        free(predicted);
        free(targets);
    }
    json_object_put(root);
}

// By hand, vocabulary 1000 (action tokens 744 .. 999): targets 999 (bin 0, centre -1 + 1/255) and 744
// (bin 254 clipped, centre 1 - 1/255); predictions 999 (hit) and 3 (no action token: decoded as bin 254).
static void test_by_hand(void **state) {
    (void)state;
    ActionTokenizer tok;
    action_tokenizer_init(&tok, 1000);
    const int32_t predicted[] = {999, 3, 999, 743}, targets[] = {999, 744, 2, -100};
    ActionMetricSums sums = {0};
    action_metrics_add(&tok, predicted, targets, 4, &sums);
    assert_int_equal(sums.n_action_tokens, 2);
    assert_int_equal(sums.n_correct, 1);
    assert_true(fabs(sums.l1_sum - 0.0) < 1e-15); // 3 and 744 decode alike: both clip to bin 254
    const int32_t far[] = {744};
    const int32_t first[] = {999};
    action_metrics_add(&tok, far, first, 1, &sums);
    assert_true(fabs(sums.l1_sum - (2.0 - 2.0 / 255.0)) < 1e-12);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_as_finetune_py),
        cmocka_unit_test(test_by_hand),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
