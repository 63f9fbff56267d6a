// Regression inputs the fuzzers (fuzz/) found: each must now fail with a
// clear error (or open cleanly), never crash or allocate what its header claims.
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#include "data/data.h"
#include "vision/vision.h"

#define CORPUS "fuzz/corpus/"

static void assert_message_has(const Error *err, const char *needle) {
    if (!strstr(err->message, needle)) fail_msg("error '%s' lacks '%s'", err->message, needle);
}

// A 1000000x1000000 PNG and a 65000x65000 JPEG of a few KB: refused from the
// header, as Pillow's DecompressionBombError (> 2 * 89478485 pixels).
static void test_image_bombs_are_refused(void **state) {
    const char *paths[] = {CORPUS "image/regress-bomb.png", CORPUS "image/regress-bomb.jpeg"};
    const char *sizes[] = {"1000000x1000000", "65000x65000"};
    for (int i = 0; i < 2; i++) {
        Image image;
        Error err = {0};
        assert_false(image_decode_file(paths[i], &image, &err));
        assert_null(image.pixels);
        assert_message_has(&err, sizes[i]);
        assert_message_has(&err, "exceeds the limit of 178956970");
    }
}

// A zip without a regular member: the store opens with an empty index (an
// empty table was once handed to qsort as NULL).
static void test_archive_without_members(void **state) {
    Error err = {0};
    ImageStore *store = image_store_open(CORPUS "archive/regress-no-members.zip", &err);
    assert_non_null(store);
    assert_int_equal(image_store_count(store), 0);
    assert_false(image_store_has(store, "a.png"));
    image_store_destroy(store);
}

// A 690-byte zip whose member header claims 3.75 GB: indexing fails on the
// missing data, naming the archive, instead of allocating what the header claims.
static void test_archive_member_lying_about_its_size(void **state) {
    Error err = {0};
    assert_null(image_store_open(CORPUS "archive/regress-lying-size.zip", &err));
    assert_message_has(&err, "regress-lying-size.zip");
    assert_message_has(&err, "Truncated ZIP file data");
}

// A tokenizer.json whose vocab gives "\u2581H" the id 1111...116 (40 digits):
// json-c saturates it to INT32_MAX, which once overflowed the table size.
static void test_tokenizer_id_beyond_any_vocabulary(void **state) {
    Error err = {0};
    assert_null(hf_tokenizer_load(CORPUS "tokenizer/regress-huge-id.json", &err));
    assert_message_has(&err, "id 2147483647 is over the limit of 16777216");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_image_bombs_are_refused),
        cmocka_unit_test(test_archive_without_members),
        cmocka_unit_test(test_archive_member_lying_about_its_size),
        cmocka_unit_test(test_tokenizer_id_beyond_any_vocabulary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
