// image_resize_lanczos3_tf against TensorFlow's tf.image.resize(method="lanczos3",
// antialias=True) rounded to uint8, as OpenVLA's RLDS pipeline resizes its training
// images: tests/fixtures/tf_resize/, written by scripts/ref_tf_resize.py. Noise has no
// value near a rounding tie: every value must be equal. The scene's linear gradients,
// resized by 7/8, put 10,567 of its 150,528 values within 1e-4 of a tie (TensorFlow's
// own float output), where the fp32 summation order decides: there at most 1 apart,
// and at least 97% of all values equal.
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>

#include "vision/vision.h"

#define FIXTURES "tests/fixtures/tf_resize"

static void check_resize(const char *source, const char *expected, int width, int height, double min_equal) {
    char path[256];
    Image in = {0}, want = {0}, got = {0};
    Error err = {{0}};
    snprintf(path, sizeof path, FIXTURES "/%s", source);
    if (!image_decode_file(path, &in, &err)) fail_msg("%s", err.message);
    snprintf(path, sizeof path, FIXTURES "/%s", expected);
    if (!image_decode_file(path, &want, &err)) fail_msg("%s", err.message);
    assert_int_equal(want.width, width);
    assert_int_equal(want.height, height);
    if (!image_resize_lanczos3_tf(&in, width, height, &got, &err)) fail_msg("%s", err.message);
    size_t n = (size_t)width * height * 3, equal = 0;
    int worst = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)got.pixels[i] - (int)want.pixels[i]);
        equal += d == 0;
        if (d > worst) worst = d;
    }
    print_message("%s -> %dx%d: %zu of %zu values equal, largest difference %d\n", source, width, height, equal, n,
                  worst);
    assert_true(worst <= 1);
    assert_true((double)equal >= min_equal * (double)n);
    image_free(&in), image_free(&want), image_free(&got);
}

static void test_downsample(void **state) {
    (void)state;
    check_resize("noise.png", "noise_24x20.png", 24, 20, 1.0);
    check_resize("scene.png", "scene_224x224.png", 224, 224, 0.97); // LIBERO's 256 to OpenVLA's 224
}

static void test_upsample(void **state) {
    (void)state;
    check_resize("noise.png", "noise_80x72.png", 80, 72, 1.0);
}

static void test_same_size_is_identity(void **state) {
    (void)state;
    check_resize("noise.png", "noise_64x48.png", 64, 48, 1.0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_downsample),
        cmocka_unit_test(test_upsample),
        cmocka_unit_test(test_same_size_is_identity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
