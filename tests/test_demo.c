// The README's first command: `lora-train demo` trains LoRA + projector on
// synthetic pictures and answers held-out colour / shape questions far above
// chance (25% colours, 33% shapes) afterwards.
#include "test_util.h"

#include "trainer/trainer.h"

static void test_demo_accuracy(void **state) {
    DemoAccuracy before, after;
    Error err;
    if (!vlm_demo_run(make_temp_dir("demo"), NULL, 0, &before, &after, &err)) fail_msg("demo: %s", err.message);
    print_message("held-out accuracy %.3f -> %.3f (colour %.3f, shape %.3f)\n", before.overall, after.overall,
                  after.colour, after.shape);
    assert_true(before.overall < 0.5);
    assert_true(after.overall >= 0.9);
    assert_true(after.colour > 0.5 && after.shape > 0.5); // both kinds of question, not one
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_demo_accuracy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
