// vision: decoding vs Pillow 9.4 (Image.open(f).convert("RGB")) and preprocessing vs
// Hugging Face CLIPImageProcessor / LLaVA-1.5 pad, on ../shared/fixtures/images, whose
// reference/manifest.json maps each source image to its .npy references.
#include <dirent.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "vision/vision.h"

#define FIXTURES "images"

// ----------------------------------------------------------------------------
// a minimal .npy reader: version 1/2 header, C order, '|u1' or '<f4'

typedef struct Npy {
    char descr[8];
    int ndim;
    int64_t shape[4];
    size_t count;
    uint8_t *data; // points into raw
    char *raw;
} Npy;

static bool parse_npy_shape(const char *header, Npy *npy) {
    const char *p = strstr(header, "'shape':");
    if (p == NULL || (p = strchr(p, '(')) == NULL) return false;
    p++;
    npy->ndim = 0;
    npy->count = 1;
    while (*p != ')' && npy->ndim < 4) {
        char *end = NULL;
        long long v = strtoll(p, &end, 10);
        if (end == p) break;
        npy->shape[npy->ndim++] = v;
        npy->count *= (size_t)v;
        p = end;
        while (*p == ',' || *p == ' ') p++;
    }
    return *p == ')';
}

static bool load_npy(const char *path, Npy *npy) {
    Error err = {0};
    size_t size = 0;
    *npy = (Npy){0};
    if (!read_file(path, &npy->raw, &size, &err)) return false;
    if (size < 12 || memcmp(npy->raw, "\x93NUMPY", 6) != 0) return false;
    const uint8_t *u = (const uint8_t *)npy->raw;
    // version 1: u16 header length at 8; version 2: u32
    size_t header_len = (size_t)u[8] | (size_t)u[9] << 8;
    if (u[6] != 1) header_len |= (size_t)u[10] << 16 | (size_t)u[11] << 24;
    size_t header_start = u[6] == 1 ? 10 : 12, start = header_start + header_len;
    if (start > size) return false;
    char *header = strndup(npy->raw + header_start, header_len);
    const char *descr = strstr(header, "'descr': '");
    bool ok = descr != NULL && strstr(header, "'fortran_order': False") != NULL &&
              sscanf(descr, "'descr': '%7[^']'", npy->descr) == 1 && parse_npy_shape(header, npy);
    free(header);
    size_t item = strcmp(npy->descr, "<f4") == 0 ? 4 : 1;
    ok = ok && start + npy->count * item == size;
    npy->data = (uint8_t *)npy->raw + start;
    return ok;
}

static void free_npy(Npy *npy) { free(npy->raw); }

// ----------------------------------------------------------------------------
// fixtures

static char fixture_root[1024];

static int setup_fixtures(void **state) {
    const char *root = shared_fixture(FIXTURES "/reference/manifest.json");
    if (root == NULL) return 0;
    snprintf(fixture_root, sizeof fixture_root, "%s", shared_fixture(FIXTURES));
    return 0;
}

static void require_fixtures(void) {
    if (fixture_root[0] == '\0') {
        print_message("shared image fixtures ../shared/fixtures/" FIXTURES " are absent\n");
        skip();
    }
}

static const char *fixture_path(const char *rel) {
    static char path[2048];
    snprintf(path, sizeof path, "%s/%s", fixture_root, rel);
    return path;
}

static json_object *load_manifest(void) {
    json_object *manifest = json_object_from_file(fixture_path("reference/manifest.json"));
    assert_non_null(manifest);
    return manifest;
}

// manifest["files"]: fixture path -> {"rgb": ..., "crop": ..., "pad": ...}
static json_object *manifest_files(json_object *manifest) {
    json_object *files = NULL;
    assert_true(json_object_object_get_ex(manifest, "files", &files));
    return files;
}

static const char *entry_string(json_object *entry, const char *key) {
    json_object *value = NULL;
    return json_object_object_get_ex(entry, key, &value) ? json_object_get_string(value) : NULL;
}

static void decode_fixture(const char *rel, Image *image) {
    // The truncated progressive JPEG (scans cut short, then EOI) is Pillow's decode of
    // what is there; this decoder wants that asked for explicitly.
    ImageDecodeOptions options = {.allow_truncated = strstr(rel, "truncated") != NULL};
    Error err = {0};
    bool ok = image_decode_file_with(fixture_path(rel), &options, image, &err);
    if (!ok) print_message("%s\n", err.message);
    assert_true(ok);
}

// ----------------------------------------------------------------------------
// decoding

static void test_decode_matches_pillow(void **state) {
    require_fixtures();
    json_object *manifest = load_manifest();
    int checked = 0;
    json_object_object_foreach(manifest_files(manifest), rel, entry) {
        const char *rgb = entry_string(entry, "rgb");
        if (rgb == NULL) continue;
        Npy ref;
        assert_true(load_npy(fixture_path(rgb), &ref));
        assert_string_equal(ref.descr, "|u1");
        assert_int_equal(ref.ndim, 3);
        Image image;
        decode_fixture(rel, &image);
        assert_int_equal(image.height, ref.shape[0]);
        assert_int_equal(image.width, ref.shape[1]);
        assert_int_equal(ref.shape[2], 3);
        size_t differing = 0;
        for (size_t i = 0; i < ref.count; i++) differing += image.pixels[i] != ref.data[i];
        if (differing != 0) {
            print_message("%s: %zu of %zu bytes differ\n", rel, differing, ref.count);
        }
        assert_int_equal(differing, 0);
        image_free(&image);
        free_npy(&ref);
        checked++;
    }
    print_message("%d images byte-identical to Pillow\n", checked);
    assert_true(checked >= 30);
    json_object_put(manifest);
}

// Every PNG suite file decodes; greyscale ones expand to R == G == B.
static void test_pngsuite_decodes(void **state) {
    require_fixtures();
    DIR *dir = opendir(fixture_path("pngsuite"));
    assert_non_null(dir);
    int decoded = 0;
    for (struct dirent *e; (e = readdir(dir)) != NULL;) {
        size_t len = strlen(e->d_name);
        if (len < 4 || strcmp(e->d_name + len - 4, ".png") != 0) continue;
        char rel[512];
        snprintf(rel, sizeof rel, "pngsuite/%s", e->d_name);
        Image image;
        decode_fixture(rel, &image);
        assert_true(image.width > 0 && image.height > 0);
        if (strstr(e->d_name, "n0g") != NULL || strstr(e->d_name, "n4a") != NULL) {
            for (size_t i = 0; i < (size_t)image.width * image.height; i++) {
                assert_int_equal(image.pixels[3 * i], image.pixels[3 * i + 1]);
                assert_int_equal(image.pixels[3 * i], image.pixels[3 * i + 2]);
            }
        }
        image_free(&image);
        decoded++;
    }
    closedir(dir);
    assert_true(decoded >= 30);
}

static void assert_decode_fails(const char *rel, const ImageDecodeOptions *options,
                                const char *problem) {
    Image image = {.width = 7};
    Error err = {0};
    assert_false(image_decode_file_with(fixture_path(rel), options, &image, &err));
    print_message("%s -> %s\n", rel, err.message);
    assert_non_null(strstr(err.message, rel));
    assert_non_null(strstr(err.message, problem));
    assert_null(image.pixels);
    assert_int_equal(image.width, 0);
}

static void test_corrupt_files_fail(void **state) {
    require_fixtures();
    const ImageDecodeOptions strict = {0}, lenient = {.allow_truncated = true};
    assert_decode_fails("corrupt/invalid-crc32.png", &strict, "CRC");
    assert_decode_fails("corrupt/invalid-trunc.png", &strict, "truncated");
    assert_decode_fails("corrupt/invalid-trunc.png", &lenient, "truncated");
    assert_decode_fails("corrupt/video-001.progressive.truncated.jpeg", &strict, "truncated");
}

static void test_memory_decode_rejects_bad_buffers(void **state) {
    Image image;
    Error err = {0};
    assert_false(image_decode_memory("", 0, "empty.png", &image, &err));
    assert_non_null(strstr(err.message, "empty.png"));
    assert_non_null(strstr(err.message, "empty"));

    const char garbage[] = "GIF89a this is not an image we decode";
    assert_false(image_decode_memory(garbage, sizeof garbage, "garbage.bin", &image, &err));
    assert_non_null(strstr(err.message, "garbage.bin"));
    assert_non_null(strstr(err.message, "not a PNG or JPEG"));

    const uint8_t png_signature_only[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0};
    assert_false(image_decode_memory(png_signature_only, sizeof png_signature_only, "sig.png",
                                     &image, &err));
    assert_non_null(strstr(err.message, "sig.png: invalid PNG"));

    uint8_t jpeg_noise[64] = {0xff, 0xd8, 0xff, 0xe0};
    for (size_t i = 4; i < sizeof jpeg_noise; i++) jpeg_noise[i] = (uint8_t)(i * 37);
    assert_false(image_decode_memory(jpeg_noise, sizeof jpeg_noise, "noise.jpg", &image, &err));
    assert_non_null(strstr(err.message, "noise.jpg: invalid JPEG"));
    assert_null(image.pixels);
}

// Memory and file decoding agree, and a prefix of a valid JPEG is an error by default.
static void test_memory_decode_matches_file(void **state) {
    require_fixtures();
    const char *rel = "jpeg/video-001.q50.420.jpeg";
    char *data = NULL;
    size_t size = 0;
    Error err = {0};
    assert_true(read_file(fixture_path(rel), &data, &size, &err));
    Image from_memory, from_file;
    assert_true(image_decode_memory(data, size, "in-memory", &from_memory, &err));
    decode_fixture(rel, &from_file);
    assert_int_equal(from_memory.width, from_file.width);
    size_t bytes = (size_t)from_file.width * from_file.height * 3;
    assert_memory_equal(from_memory.pixels, from_file.pixels, bytes);
    image_free(&from_memory);
    assert_false(image_decode_memory(data, size / 2, "half.jpg", &from_memory, &err));
    assert_non_null(strstr(err.message, "half.jpg: invalid JPEG: image data is truncated"));
    // Allowed, the missing rows come out (libjpeg's fake EOI) but the top half is intact.
    const ImageDecodeOptions lenient = {.allow_truncated = true};
    assert_true(image_decode_memory_with(data, size / 2, "half.jpg", &lenient, &from_memory, &err));
    assert_int_equal(from_memory.height, from_file.height);
    assert_memory_equal(from_memory.pixels, from_file.pixels, (size_t)from_file.width * 16 * 3);
    image_free(&from_memory);
    image_free(&from_file);
    free(data);
}

// ----------------------------------------------------------------------------
// preprocessing

static double max_abs_difference(const float *a, const float *b, size_t n) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)a[i] - (double)b[i]));
    return worst;
}

static void check_preprocess(const Image *image, const char *rel, const char *ref_path,
                             ImageFit fit, double *worst) {
    Npy ref;
    assert_true(load_npy(fixture_path(ref_path), &ref));
    assert_string_equal(ref.descr, "<f4");
    assert_int_equal(ref.count, 3 * 336 * 336);
    float *out = malloc(ref.count * sizeof(float));
    assert_non_null(out);
    ImagePreprocess p = image_preprocess_clip336(fit);
    Error err = {0};
    assert_true(image_preprocess(image, &p, out, &err));
    double diff = max_abs_difference(out, (const float *)ref.data, ref.count);
    const char *kind = fit == IMAGE_FIT_PAD ? "pad" : "crop";
    print_message("%-32s %-4s max abs error %.3g\n", rel, kind, diff);
    assert_true(diff < 0.02);
    *worst = fmax(*worst, diff);
    free(out);
    free_npy(&ref);
}

static void test_preprocess_matches_clip336(void **state) {
    require_fixtures();
    json_object *manifest = load_manifest();
    double worst = 0.0;
    int checked = 0;
    json_object_object_foreach(manifest_files(manifest), rel, entry) {
        const char *crop = entry_string(entry, "crop"), *pad = entry_string(entry, "pad");
        if (crop == NULL || pad == NULL) continue;
        Image image;
        decode_fixture(rel, &image);
        check_preprocess(&image, rel, crop, IMAGE_FIT_CROP, &worst);
        check_preprocess(&image, rel, pad, IMAGE_FIT_PAD, &worst);
        image_free(&image);
        checked++;
    }
    print_message("clip336 crop/pad: %d images, worst max abs error %.3g\n", checked, worst);
    assert_true(checked >= 7);
    json_object_put(manifest);
}

// A flat colour stays flat through bicubic resizing (weights sum to 2^22).
static void test_resize_keeps_flat_colour(void **state) {
    Image flat;
    Error err = {0};
    assert_true(image_alloc(&flat, 123, 45, &err));
    for (size_t i = 0; i < 123 * 45; i++) memcpy(flat.pixels + 3 * i, (uint8_t[3]){200, 3, 97}, 3);
    Image resized;
    assert_true(image_resize_bicubic(&flat, 300, 17, &resized, &err));
    assert_int_equal(resized.width, 300);
    assert_int_equal(resized.height, 17);
    for (size_t i = 0; i < 300 * 17; i++) {
        assert_memory_equal(resized.pixels + 3 * i, flat.pixels, 3);
    }
    image_free(&resized);
    image_free(&flat);
}

// SigLIP-style square resize: on an image already at the target size it is the
// identity, so mean 0 / std 1 gives float32(v * (1 / 255)) exactly; and on a square
// image it agrees with the CLIP crop path.
static void test_square_preprocess(void **state) {
    Image image;
    Error err = {0};
    assert_true(image_alloc(&image, 224, 224, &err));
    Rng rng;
    rng_seed(&rng, 7);
    for (size_t i = 0; i < 224 * 224 * 3; i++) image.pixels[i] = (uint8_t)rng_below(&rng, 256);
    const float zero[3] = {0, 0, 0}, one[3] = {1, 1, 1};
    ImagePreprocess p = image_preprocess_square(224, zero, one);
    float *out = malloc(3 * 224 * 224 * sizeof(float));
    assert_non_null(out);
    assert_true(image_preprocess(&image, &p, out, &err));
    for (int c = 0; c < 3; c++) {
        for (size_t i = 0; i < 224 * 224; i++) {
            float rescaled = (float)(image.pixels[3 * i + c] * (1.0 / 255.0)); // HF rescale
            assert_true(out[c * 224 * 224 + i] == rescaled);
        }
    }
    float *cropped = malloc(3 * 336 * 336 * sizeof(float));
    float *squashed = malloc(3 * 336 * 336 * sizeof(float));
    assert_true(cropped != NULL && squashed != NULL);
    ImagePreprocess crop = image_preprocess_clip336(IMAGE_FIT_CROP);
    ImagePreprocess squash = image_preprocess_square(336, crop.mean, crop.std);
    assert_true(image_preprocess(&image, &crop, cropped, &err));
    assert_true(image_preprocess(&image, &squash, squashed, &err));
    assert_memory_equal(cropped, squashed, 3 * 336 * 336 * sizeof(float));
    free(cropped);
    free(squashed);
    free(out);
    image_free(&image);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_matches_pillow),
        cmocka_unit_test(test_pngsuite_decodes),
        cmocka_unit_test(test_corrupt_files_fail),
        cmocka_unit_test(test_memory_decode_rejects_bad_buffers),
        cmocka_unit_test(test_memory_decode_matches_file),
        cmocka_unit_test(test_preprocess_matches_clip336),
        cmocka_unit_test(test_resize_keeps_flat_colour),
        cmocka_unit_test(test_square_preprocess),
    };
    return cmocka_run_group_tests(tests, setup_fixtures, NULL);
}
