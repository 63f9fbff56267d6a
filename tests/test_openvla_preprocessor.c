// An OpenVLA folder's preprocessor_config.json (PrismaticImageProcessor): without one, each tower's
// preprocessing is openvla/openvla-7b's file's; its tvf_normalize_params, else its means / stds, give
// the pixels; what lora-train does not implement is refused, naming the file and the key. The OpenVLA
// folders lora-train writes (hf_save_openvla: demo --vla, tests) hold openvla-7b's file.
#include "test_util.h"

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "trainer/trainer.h"

#define FIXTURE_CONFIG "tests/fixtures/openvla/model/config.json"
enum { S = 16 }; // the fixture's image_sizes

// openvla/openvla-7b's preprocessor_config.json with its 224 replaced by the fixture's image size.
static const char *const OPENVLA_7B =
    "{\"auto_map\": {\"AutoImageProcessor\": \"processing_prismatic.PrismaticImageProcessor\","
    " \"AutoProcessor\": \"processing_prismatic.PrismaticProcessor\"},"
    " \"image_processor_type\": \"PrismaticImageProcessor\", \"image_resize_strategy\": \"resize-naive\","
    " \"input_sizes\": [[3, 16, 16], [3, 16, 16]], \"interpolations\": [\"bicubic\", \"bicubic\"],"
    " \"means\": [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]], \"processor_class\": \"PrismaticProcessor\","
    " \"stds\": [[0.229, 0.224, 0.225], [0.5, 0.5, 0.5]],"
    " \"tvf_crop_params\": [{\"output_size\": [16, 16]}, {\"output_size\": [16, 16]}],"
    " \"tvf_do_letterbox\": false, \"tvf_letterbox_fill\": null,"
    " \"tvf_normalize_params\": [{\"inplace\": false, \"mean\": [0.484375, 0.455078125, 0.40625],"
    " \"std\": [0.228515625, 0.2236328125, 0.224609375]},"
    " {\"inplace\": false, \"mean\": [0.5, 0.5, 0.5], \"std\": [0.5, 0.5, 0.5]}],"
    " \"tvf_resize_params\": [{\"antialias\": true, \"interpolation\": 3, \"max_size\": null, \"size\": [16, 16]},"
    " {\"antialias\": true, \"interpolation\": 3, \"max_size\": null, \"size\": [16, 16]}],"
    " \"use_fused_vision_backbone\": true}";

// OPENVLA_7B with key set to the JSON text value (NULL: removed).
static char *variant(const char *key, const char *value) {
    json_object *root = json_tokener_parse(OPENVLA_7B);
    assert_non_null(root);
    json_object_object_del(root, key);
    if (value) {
        json_object *v = json_tokener_parse(value);
        assert_true(v || strcmp(value, "null") == 0);
        json_object_object_add(root, key, v);
    }
    char *text = strdup(json_object_to_json_string(root));
    json_object_put(root);
    return text;
}

// A fresh folder: the fixture's config.json and, when not NULL, preprocessor_config.json.
static const char *write_folder(const char *preprocessor_json) {
    const char *dir = make_temp_dir("openvla_preprocessor");
    char path[4096], command[8192];
    snprintf(command, sizeof command, "cp %s %s/config.json", FIXTURE_CONFIG, dir);
    assert_int_equal(run_command(command), 0);
    if (!preprocessor_json) return dir;
    snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(preprocessor_json, f);
    assert_int_equal(fclose(f), 0);
    return dir;
}

static bool read_folder(const char *preprocessor_json, OpenVlaVision *vision, Error *err) {
    bool is_openvla = false;
    bool ok = hf_read_openvla(write_folder(preprocessor_json), &is_openvla, vision, err);
    assert_true(!ok || is_openvla);
    return ok;
}

static OpenVlaVision read_or_fail(const char *preprocessor_json) {
    OpenVlaVision vision;
    Error err;
    if (!read_folder(preprocessor_json, &vision, &err)) fail_msg("%s", err.message);
    return vision;
}

static void assert_same_preprocess(const ImagePreprocess *a, const ImagePreprocess *b) {
    assert_int_equal(a->fit, b->fit);
    assert_int_equal(a->size, b->size);
    assert_memory_equal(a->mean, b->mean, sizeof a->mean);
    assert_memory_equal(a->std, b->std, sizeof a->std);
}

// No file: openvla-7b's values, squashed to the towers' size; its file reads the same.
static void test_defaults_are_openvla_7b(void **state) {
    (void)state;
    static const float mean[2][3] = {{0.484375f, 0.455078125f, 0.40625f}, {0.5f, 0.5f, 0.5f}};
    static const float std[2][3] = {{0.228515625f, 0.2236328125f, 0.224609375f}, {0.5f, 0.5f, 0.5f}};
    OpenVlaVision none = read_or_fail(NULL), real = read_or_fail(OPENVLA_7B);
    for (int k = 0; k < 2; k++) {
        ImagePreprocess want = image_preprocess_square(S, mean[k], std[k]);
        assert_int_equal(want.fit, IMAGE_FIT_SQUASH);
        assert_same_preprocess(&none.preprocess[k], &want);
        assert_same_preprocess(&real.preprocess[k], &want);
    }
}

// A S x S test card: every channel a different ramp.
static Image test_card(void) {
    Image image;
    Error err;
    if (!image_alloc(&image, S, S, &err)) fail_msg("%s", err.message);
    for (int i = 0; i < S * S * 3; i++) image.pixels[i] = (uint8_t)(i * 37 % 256);
    return image;
}

// Tower k's pixels are (x / 255 - mean) / std with the file's mean and std (image_preprocess's float32 steps).
static void assert_pixels(const OpenVlaVision *vision, int k, const float mean[3], const float std[3]) {
    Image image = test_card();
    float got[3 * S * S];
    Error err;
    if (!image_preprocess(&image, &vision->preprocess[k], got, &err)) fail_msg("%s", err.message);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < S * S; i++) {
            float want = ((float)(image.pixels[i * 3 + c] * (1.0 / 255.0)) - mean[c]) / std[c];
            if (got[c * S * S + i] != want)
                fail_msg("tower %d channel %d pixel %d: %.9g, want %.9g", k, c, i, got[c * S * S + i], want);
        }
    image_free(&image);
}

static void test_means_and_stds_change_the_pixels(void **state) {
    (void)state;
    static const float mean[2][3] = {{0.25f, 0.5f, 0.75f}, {0.125f, 0.375f, 0.625f}};
    static const float std[2][3] = {{0.125f, 0.25f, 0.5f}, {0.75f, 1.5f, 2.0f}};
    char *normalize = variant("tvf_normalize_params",
                              "[{\"inplace\": false, \"mean\": [0.25, 0.5, 0.75], \"std\": [0.125, 0.25, 0.5]},"
                              " {\"inplace\": false, \"mean\": [0.125, 0.375, 0.625], \"std\": [0.75, 1.5, 2]}]");
    OpenVlaVision vision = read_or_fail(normalize);
    for (int k = 0; k < 2; k++) assert_pixels(&vision, k, mean[k], std[k]);
    free(normalize);

    // without tvf_normalize_params (what the constructor computes them from): means and stds
    char *no_normalize = variant("tvf_normalize_params", NULL);
    json_object *root = json_tokener_parse(no_normalize);
    json_object_object_add(root, "means", json_tokener_parse("[[0.25, 0.5, 0.75], [0.125, 0.375, 0.625]]"));
    json_object_object_add(root, "stds", json_tokener_parse("[[0.125, 0.25, 0.5], [0.75, 1.5, 2]]"));
    vision = read_or_fail(json_object_to_json_string(root));
    for (int k = 0; k < 2; k++) assert_pixels(&vision, k, mean[k], std[k]);
    json_object_put(root);
    free(no_normalize);
}

// key set to value is refused, the message naming the file and saying message.
static void assert_refused(const char *key, const char *value, const char *message) {
    char *text = variant(key, value);
    OpenVlaVision vision;
    Error err;
    if (read_folder(text, &vision, &err)) fail_msg("%s = %s was accepted", key, value ? value : "(absent)");
    print_message("%s\n", err.message);
    if (!strstr(err.message, "preprocessor_config.json: ") || !strstr(err.message, message))
        fail_msg("%s = %s: '%s' does not say '%s'", key, value ? value : "(absent)", err.message, message);
    free(text);
}

static void test_unsupported_values_name_the_key(void **state) {
    (void)state;
    assert_refused("image_resize_strategy", "\"letterbox\"", "image_resize_strategy is \"letterbox\"");
    assert_refused("image_resize_strategy", "\"resize-crop\"", "image_resize_strategy is \"resize-crop\"");
    assert_refused("image_resize_strategy", NULL, "image_resize_strategy is absent");
    assert_refused("tvf_do_letterbox", "true", "tvf_do_letterbox is true");
    assert_refused("use_fused_vision_backbone", "false", "use_fused_vision_backbone is false");
    assert_refused("input_sizes", "[[3, 16, 16], [3, 32, 32]]", "input_sizes[1] is [ 3, 32, 32 ]");
    assert_refused("input_sizes", "[[3, 16, 16]]", "input_sizes must be a list of two");
    assert_refused("interpolations", "[\"bilinear\", \"bicubic\"]", "interpolations[0] is \"bilinear\"");
    assert_refused("tvf_resize_params",
                   "[{\"interpolation\": 3, \"size\": [16, 16]}, {\"interpolation\": 2, \"size\": [16, 16]}]",
                   "tvf_resize_params[1] is");
    assert_refused("tvf_resize_params", "[{\"interpolation\": 3, \"size\": 16}, {\"interpolation\": 3, \"size\": 16}]",
                   "tvf_resize_params[0] is");
    assert_refused("tvf_crop_params", "[{\"output_size\": [16, 16]}, {\"output_size\": [14, 14]}]",
                   "tvf_crop_params[1] is");
    assert_refused("tvf_normalize_params",
                   "[{\"mean\": [0.5, 0.5, 0.5], \"std\": [0.5, 0, 0.5]}, {\"mean\": [0.5, 0.5, 0.5], \"std\": [0.5, "
                   "0.5, 0.5]}]",
                   "tvf_normalize_params[0]");
    assert_refused("means", "[[0.485, 0.456, 0.406]]", "means must be a list of two");
}

// demo --vla's OpenVLA-shaped folder (hf_save_openvla) holds openvla-7b's file at its image size.
static void test_written_folder_holds_openvla_7b_file(void **state) {
    (void)state;
    Config config;
    Error err = {{0}};
    if (!vla_demo_prepare(make_temp_dir("openvla_preprocessor_demo"), VLA_MODEL_OPENVLA, NULL, 0, &config, &err))
        fail_msg("%s", err.message);
    char path[4096];
    snprintf(path, sizeof path, "%s/preprocessor_config.json", config.model.path);
    json_object *written = json_object_from_file(path), *real = json_tokener_parse(OPENVLA_7B);
    assert_non_null(written);
    if (!json_object_equal(written, real))
        fail_msg("%s:\n%s\nis not openvla-7b's:\n%s", path, json_object_to_json_string(written), OPENVLA_7B);
    json_object_put(written), json_object_put(real);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_are_openvla_7b),
        cmocka_unit_test(test_means_and_stds_change_the_pixels),
        cmocka_unit_test(test_unsupported_values_name_the_key),
        cmocka_unit_test(test_written_folder_holds_openvla_7b_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
