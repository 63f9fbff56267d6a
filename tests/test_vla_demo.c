// `lora-train demo --vla` (trainer/vla_demo.c) as it runs, 200 steps of the
// OpenVLA-shaped model (about 10 s on 2 idle cores): the episodes it writes are a genuine RLDS folder the reader opens, and after
// training the held-out action-token accuracy and L1 (OpenVLA's finetune.py
// metrics, logged in metrics.jsonl) are far better than before and than a
// model blind to the picture. configs/openvla.yaml loads.
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/rlds.h"
#include "trainer/trainer.h"

static void test_vla_demo_learns(void **state) {
    (void)state;
    char dir[512], path[700];
    snprintf(dir, sizeof dir, "%s", make_temp_dir("vla_demo"));
    const char *settings[] = {"train.log_every=50"};
    VlaDemoResult result;
    Error err = {{0}};
    if (!vla_demo_run(dir, settings, 1, &result, &err)) fail_msg("demo --vla: %s", err.message);
    print_message("action-token accuracy %.3f -> %.3f (blind %.3f), L1 %.3f -> %.3f (blind %.3f), %.0f s\n",
                  result.accuracy_before, result.accuracy_after, result.accuracy_blind, result.l1_before,
                  result.l1_after, result.l1_blind, result.seconds);
    assert_true(result.accuracy_before < 0.05);
    assert_true(result.l1_after < 0.5 * result.l1_before);
    // better than a model blind to the picture: the tip and the object's cells are read from it
    assert_true(result.accuracy_after > result.accuracy_blind + 0.02);
    assert_true(result.l1_after < 0.8 * result.l1_blind);

    snprintf(path, sizeof path, "%s/rlds_held_out/vla_demo", dir);
    RobotDataOptions options = {.path = path};
    RobotDataset *held_out = robot_dataset_open(&options, &err);
    if (!held_out) fail_msg("%s", err.message);
    assert_int_equal(robot_dataset_stats(held_out)->episodes, 40);
    assert_int_equal(robot_dataset_action_dim(held_out), 7);
    assert_non_null(strstr(robot_dataset_step(held_out, 0).instruction, "move to the "));
    robot_dataset_destroy(held_out);

    char *metrics;
    size_t size;
    snprintf(path, sizeof path, "%s/out/metrics.jsonl", dir);
    if (!read_file(path, &metrics, &size, &err)) fail_msg("%s", err.message);
    assert_non_null(strstr(metrics, "{\"step\": 0, \"eval_loss\""));
    assert_non_null(strstr(metrics, "\"eval_action_accuracy\""));
    assert_non_null(strstr(metrics, "\"eval_action_l1\""));
    free(metrics);
}

// configs/openvla.yaml loads, with finetune.py's defaults.
static void test_openvla_config_loads(void **state) {
    (void)state;
    Config config;
    Error err = {{0}};
    config_defaults(&config);
    if (!config_load_yaml(&config, "configs/openvla.yaml", &err)) fail_msg("%s", err.message);
    assert_int_equal(config.lora.r, 32);
    assert_true(config.lora.alpha == 16 && config.lora.dropout == 0);
    assert_string_equal(config.lora.init, "gaussian");
    assert_true(config.train.lr == 5e-4f && config.train.max_grad_norm == 0);
    assert_int_equal(config.train.micro_batch * config.train.grad_accum, 16);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openvla_config_loads),
        cmocka_unit_test(test_vla_demo_learns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
