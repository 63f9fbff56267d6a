// Vision-language data: image stores (folder, tar, pax tar, tar.gz, zip stored
// and deflated, written here with libarchive), the streaming LLaVA index on a
// generated multi-MB file, JSON vs JSONL, sample layout, skipping per reason,
// the loader and `lora-train data check`. Images come from the shared fixtures;
// the expected image tensors are vision's own preprocessing of the same file
// (vision is tested against Pillow in test_images).
#include "test_util.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"

#define PNG_FIXTURE "images/pngsuite/basn2c08.png"
#define JPEG_FIXTURE "images/jpeg/video-001.jpeg"
#define CORRUPT_FIXTURE "images/corrupt/invalid-crc32.png"
#define TRUNCATED_FIXTURE "images/corrupt/video-001.progressive.truncated.jpeg"
#define LONG_NAME "a/very/long/folder/name/that/does/not/fit/in/the/hundred/bytes/of/a/ustar/header/image-0001.png"
#define IMAGE_TOKENS 4
#define IMAGE_TOKEN_ID 300
#define IMAGE_SIZE 16

// ----------------------------------------------------------------------------
// helpers

static void read_fixture(const char *rel, char **data, size_t *size) {
    const char *path = shared_fixture(rel);
    if (!path) {
        print_message("../shared/fixtures/%s is missing\n", rel);
        skip();
    }
    Error err = {0};
    if (!read_file(path, data, size, &err)) fail_msg("%s", err.message);
}

static void write_bytes(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, size, f), size);
    assert_int_equal(fclose(f), 0);
}

static void copy_fixture(const char *rel, const char *dir, const char *name) {
    char *data;
    size_t size;
    read_fixture(rel, &data, &size);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    write_bytes(path, data, size);
    free(data);
}

typedef struct Member {
    const char *name;
    const char *fixture;
} Member;

static const Member MEMBERS[] = {
    {"./cat.png", PNG_FIXTURE}, {"photos/video.jpeg", JPEG_FIXTURE}, {LONG_NAME, PNG_FIXTURE},
};
#define N_MEMBERS 3

// Writes MEMBERS into an archive with libarchive (format/filter codes, zip options).
static void write_archive(const char *path, int format, int filter, const char *options) {
    struct archive *a = archive_write_new();
    assert_non_null(a);
    assert_int_equal(archive_write_set_format(a, format), ARCHIVE_OK);
    assert_int_equal(archive_write_add_filter(a, filter), ARCHIVE_OK);
    if (options) assert_int_equal(archive_write_set_options(a, options), ARCHIVE_OK);
    assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
    for (int i = 0; i < N_MEMBERS; i++) {
        char *data;
        size_t size;
        read_fixture(MEMBERS[i].fixture, &data, &size);
        struct archive_entry *entry = archive_entry_new();
        archive_entry_set_pathname(entry, MEMBERS[i].name);
        archive_entry_set_size(entry, (la_int64_t)size);
        archive_entry_set_filetype(entry, AE_IFREG);
        archive_entry_set_perm(entry, 0644);
        assert_int_equal(archive_write_header(a, entry), ARCHIVE_OK);
        assert_int_equal(archive_write_data(a, data, size), (la_ssize_t)size);
        archive_entry_free(entry);
        free(data);
    }
    assert_int_equal(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
}

// Every member reads back byte-identical to its fixture; absent names fail.
static void check_store(const char *path, int64_t expected_members, bool expect_spool) {
    Error err = {0};
    ImageStore *store = image_store_open(path, &err);
    if (!store) fail_msg("image_store_open(%s): %s", path, err.message);
    assert_int_equal(image_store_count(store), expected_members);
    assert_int_equal(image_store_spooled_bytes(store) > 0, expect_spool);
    for (int i = 0; i < N_MEMBERS; i++) {
        char *want;
        size_t want_size;
        read_fixture(MEMBERS[i].fixture, &want, &want_size);
        const char *name = MEMBERS[i].name[0] == '.' ? MEMBERS[i].name + 2 : MEMBERS[i].name;
        uint8_t *got = NULL;
        size_t got_size = 0;
        assert_true(image_store_has(store, name));
        if (!image_store_read(store, name, &got, &got_size, &err)) fail_msg("%s: %s", name, err.message);
        assert_int_equal(got_size, want_size);
        assert_memory_equal(got, want, want_size);
        free(got);
        free(want);
    }
    assert_false(image_store_has(store, "absent.png"));
    uint8_t *none = NULL;
    size_t none_size = 0;
    assert_false(image_store_read(store, "absent.png", &none, &none_size, &err));
    assert_non_null(strstr(err.message, "absent.png"));
    image_store_destroy(store);
}

// ----------------------------------------------------------------------------
// image stores

static void test_store_archives(void **state) {
    const char *dir = make_temp_dir("vlm-archives");
    char path[512];
    snprintf(path, sizeof path, "%s/ustar.tar", dir);
    write_archive(path, ARCHIVE_FORMAT_TAR_GNUTAR, ARCHIVE_FILTER_NONE, NULL);
    check_store(path, N_MEMBERS, false);
    snprintf(path, sizeof path, "%s/pax.tar", dir);
    write_archive(path, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED, ARCHIVE_FILTER_NONE, NULL);
    check_store(path, N_MEMBERS, false);
    snprintf(path, sizeof path, "%s/images.tar.gz", dir);
    write_archive(path, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED, ARCHIVE_FILTER_GZIP, NULL);
    check_store(path, N_MEMBERS, true);
    snprintf(path, sizeof path, "%s/stored.zip", dir);
    write_archive(path, ARCHIVE_FORMAT_ZIP, ARCHIVE_FILTER_NONE, "zip:compression=store");
    check_store(path, N_MEMBERS, false);
    snprintf(path, sizeof path, "%s/deflated.zip", dir);
    write_archive(path, ARCHIVE_FORMAT_ZIP, ARCHIVE_FILTER_NONE, "zip:compression=deflate");
    check_store(path, N_MEMBERS, true);
    Error err = {0};
    assert_true(remove_tree(dir, &err));
}

static void test_store_folder_and_errors(void **state) {
    const char *dir = make_temp_dir("vlm-folder");
    char sub[512], path[512];
    snprintf(sub, sizeof sub, "%s/photos", dir);
    Error err = {0};
    assert_true(make_dirs(sub, &err));
    snprintf(sub, sizeof sub, "%s/a/very/long/folder/name/that/does/not/fit/in/the/hundred/bytes/of/a/ustar/header", dir);
    assert_true(make_dirs(sub, &err));
    for (int i = 0; i < N_MEMBERS; i++) copy_fixture(MEMBERS[i].fixture, dir, MEMBERS[i].name);
    check_store(dir, 0, false);
    ImageStore *store = image_store_open(dir, &err);
    assert_non_null(store);
    uint8_t *data = NULL;
    size_t size = 0;
    assert_false(image_store_read(store, "../etc/passwd", &data, &size, &err));
    assert_non_null(strstr(err.message, "not a relative path"));
    image_store_destroy(store);
    snprintf(path, sizeof path, "%s/garbage.tar", dir);
    write_bytes(path, "this is not an archive at all", 29);
    assert_null(image_store_open(path, &err));
    assert_non_null(strstr(err.message, "garbage.tar"));
    snprintf(path, sizeof path, "%s/absent.tar", dir);
    assert_null(image_store_open(path, &err));
    assert_non_null(strstr(err.message, "absent.tar"));
    assert_true(remove_tree(dir, &err));
}

// ----------------------------------------------------------------------------
// the streaming index

// Record i's text value: braces, brackets, escaped quotes and backslashes
// inside strings must not confuse the scanner.
static void record_value(int i, char *buf, size_t size) {
    snprintf(buf, size, "Question %d: what is in {the} [image]? \\\"quoted\\\" back\\\\slash \\u00e9 %0*d", i,
             (i % 7) * 20, 0);
}

// Writes n records as a pretty-printed JSON array and as JSONL.
static void write_generated(const char *json_path, const char *jsonl_path, int n) {
    FILE *json = fopen(json_path, "wb"), *jsonl = fopen(jsonl_path, "wb");
    assert_non_null(json);
    assert_non_null(jsonl);
    fputs("[\n", json);
    char value[512];
    for (int i = 0; i < n; i++) {
        record_value(i, value, sizeof value);
        char record[1024];
        snprintf(record, sizeof record,
                 "{\"id\": \"%06d\", \"image\": \"img/%d.png\", \"conversations\": [{\"from\": \"human\", "
                 "\"value\": \"<image>\\n%s\"}, {\"from\": \"gpt\", \"value\": \"answer %d ]}\"}]}",
                 i, i % 10, value, i);
        fprintf(json, "  %s%s\n", record, i + 1 < n ? "," : "");
        fprintf(jsonl, "%s\n%s", record, i % 100 == 0 ? "\n" : "");
    }
    fputs("]\n", json);
    assert_int_equal(fclose(json), 0);
    assert_int_equal(fclose(jsonl), 0);
}

static void check_generated_record(const LlavaIndex *index, int i) {
    LlavaRecord record;
    Error err = {0};
    if (!llava_record_read(index, i, &record, &err)) fail_msg("record %d: %s", i, err.message);
    char id[16], image[32], answer[32];
    snprintf(id, sizeof id, "%06d", i);
    snprintf(image, sizeof image, "img/%d.png", i % 10);
    snprintf(answer, sizeof answer, "answer %d ]}", i);
    assert_string_equal(record.id, id);
    assert_string_equal(record.image, image);
    assert_int_equal(record.n_turns, 2);
    assert_int_equal(record.roles[0], LLAVA_USER);
    assert_int_equal(record.roles[1], LLAVA_ASSISTANT);
    assert_non_null(strstr(record.values[0], "\"quoted\" back\\slash \xc3\xa9"));
    assert_string_equal(record.values[1], answer);
    llava_record_free(&record);
}

static void test_streaming_index(void **state) {
    const char *dir = make_temp_dir("vlm-index");
    char json_path[512], jsonl_path[512];
    snprintf(json_path, sizeof json_path, "%s/records.json", dir);
    snprintf(jsonl_path, sizeof jsonl_path, "%s/records.jsonl", dir);
    enum { N = 20000 }; // about 6 MB each
    write_generated(json_path, jsonl_path, N);
    Error err = {0};
    LlavaIndex *json = llava_index_open(json_path, &err);
    if (!json) fail_msg("%s", err.message);
    LlavaIndex *jsonl = llava_index_open(jsonl_path, &err);
    if (!jsonl) fail_msg("%s", err.message);
    assert_false(llava_index_is_jsonl(json));
    assert_true(llava_index_is_jsonl(jsonl));
    assert_int_equal(llava_index_count(json), N);
    assert_int_equal(llava_index_count(jsonl), N);
    for (int i = 0; i < N; i += 997) {
        check_generated_record(json, i);
        check_generated_record(jsonl, i);
        int64_t json_offset, json_length, jsonl_offset, jsonl_length;
        llava_index_range(json, i, &json_offset, &json_length);
        llava_index_range(jsonl, i, &jsonl_offset, &jsonl_length);
        assert_int_equal(json_length, jsonl_length);
    }
    check_generated_record(json, N - 1);
    llava_index_destroy(json);
    llava_index_destroy(jsonl);
    assert_true(remove_tree(dir, &err));
}

static void expect_index_error(const char *dir, const char *text, const char *message) {
    char path[512];
    snprintf(path, sizeof path, "%s/bad.json", dir);
    write_bytes(path, text, strlen(text));
    Error err = {0};
    LlavaIndex *index = llava_index_open(path, &err);
    if (index) fail_msg("'%s' was accepted", text);
    if (!strstr(err.message, message)) fail_msg("'%s': got \"%s\", expected \"%s\"", text, err.message, message);
    assert_non_null(strstr(err.message, "bad.json"));
}

static void test_index_structure_errors(void **state) {
    const char *dir = make_temp_dir("vlm-index-errors");
    expect_index_error(dir, "", "empty");
    expect_index_error(dir, "  \"text\"", "neither a JSON array nor JSONL");
    expect_index_error(dir, "[{\"id\": 1}, 42]", "record 1 is not a JSON object");
    expect_index_error(dir, "[{\"id\": 1} {\"id\": 2}]", "expected ',' or ']' after record 0");
    expect_index_error(dir, "[{\"id\": \"}\"", "record 0 (byte 1) is not closed");
    expect_index_error(dir, "[{\"id\": 1}", "array is not closed");
    expect_index_error(dir, "[{\"id\": 1}] x", "text after the closing ']'");
    Error err = {0};
    assert_true(remove_tree(dir, &err));
}

// ----------------------------------------------------------------------------
// datasets

typedef struct Crafted {
    char dir[256], images[300], json[300], jsonl[300];
} Crafted;

// Record text of the crafted dataset: 3 good, then one of each bad kind.
static const char *const CRAFTED[] = {
    "{\"id\": \"good-png\", \"image\": \"cat.png\", \"conversations\": [{\"from\": \"human\", \"value\": "
    "\"<image>\\nColour?\"}, {\"from\": \"gpt\", \"value\": \"Red\"}]}",
    "{\"id\": \"good-jpeg\", \"image\": \"photos/video.jpeg\", \"conversations\": [{\"from\": \"human\", \"value\": "
    "\"What is it? <image>\"}, {\"from\": \"gpt\", \"value\": \"A frame\"}, {\"from\": \"human\", \"value\": "
    "\"Sure?\"}, {\"from\": \"gpt\", \"value\": \"Yes\"}]}",
    "{\"id\": \"text-only\", \"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", "
    "\"value\": \"Hello there, how can I help you today with your images?\"}]}",
    "{\"id\": \"missing\", \"image\": \"nope.png\", \"conversations\": [{\"from\": \"human\", \"value\": "
    "\"<image>\"}, {\"from\": \"gpt\", \"value\": \"x\"}]}",
    "{\"id\": \"corrupt\", \"image\": \"corrupt.png\", \"conversations\": [{\"from\": \"human\", \"value\": "
    "\"<image>\"}, {\"from\": \"gpt\", \"value\": \"x\"}]}",
    "{\"id\": \"truncated\", \"image\": \"truncated.jpeg\", \"conversations\": [{\"from\": \"human\", \"value\": "
    "\"<image>\"}, {\"from\": \"gpt\", \"value\": \"x\"}]}",
    "{\"id\": \"no-placeholder\", \"image\": \"cat.png\", \"conversations\": [{\"from\": \"human\", \"value\": "
    "\"Colour?\"}, {\"from\": \"gpt\", \"value\": \"Red\"}]}",
    "{\"id\": \"extra-placeholder\", \"conversations\": [{\"from\": \"human\", \"value\": \"<image> hi\"}, "
    "{\"from\": \"gpt\", \"value\": \"x\"}]}",
    "{\"id\": \"empty\", \"image\": \"cat.png\", \"conversations\": []}",
    "{\"id\": \"no-gpt\", \"conversations\": [{\"from\": \"human\", \"value\": \"anyone?\"}]}",
    "{\"id\": \"bad-role\", \"conversations\": [{\"from\": \"robot\", \"value\": \"beep\"}]}",
    "{\"id\": \"late-image\", \"image\": \"cat.png\", \"conversations\": [{\"from\": \"human\", \"value\": "
    "\"A long question that pushes the image past the end of the sequence <image>\"}, {\"from\": \"gpt\", "
    "\"value\": \"x\"}]}",
};
#define N_CRAFTED 12
#define N_GOOD 3
#define MAX_SEQ_LEN 48
#define TINY_TOWER_PATCHES 16

static void make_crafted(Crafted *c) {
    snprintf(c->dir, sizeof c->dir, "%s", make_temp_dir("vlm-crafted"));
    snprintf(c->images, sizeof c->images, "%s/images", c->dir);
    snprintf(c->json, sizeof c->json, "%s/records.json", c->dir);
    snprintf(c->jsonl, sizeof c->jsonl, "%s/records.jsonl", c->dir);
    char photos[320];
    snprintf(photos, sizeof photos, "%s/photos", c->images);
    Error err = {0};
    assert_true(make_dirs(photos, &err));
    copy_fixture(PNG_FIXTURE, c->images, "cat.png");
    copy_fixture(JPEG_FIXTURE, c->images, "photos/video.jpeg");
    copy_fixture(CORRUPT_FIXTURE, c->images, "corrupt.png");
    copy_fixture(TRUNCATED_FIXTURE, c->images, "truncated.jpeg");
    FILE *json = fopen(c->json, "wb"), *jsonl = fopen(c->jsonl, "wb");
    assert_non_null(json);
    assert_non_null(jsonl);
    fputs("[", json);
    for (int i = 0; i < N_CRAFTED; i++) {
        fprintf(json, "%s\n  %s", i ? "," : "", CRAFTED[i]);
        fprintf(jsonl, "%s\n", CRAFTED[i]);
    }
    fputs("\n]\n", json);
    fputs("{\"id\": \"broken\", \"conversations\": [\n", jsonl); // invalid JSON: only in the JSONL file
    assert_int_equal(fclose(json), 0);
    assert_int_equal(fclose(jsonl), 0);
}

static Tokenizer *byte_tokenizer(void) {
    Error err = {0};
    Tokenizer *tok = tokenizer_bytes(&err);
    if (!tok) fail_msg("%s", err.message);
    return tok;
}

static const float MEAN[3] = {0.5f, 0.5f, 0.5f}, STD[3] = {0.5f, 0.5f, 0.5f};

static VlmDataset *open_crafted(const char *path, const char *images, const Tokenizer *tok, bool decode) {
    VlmDatasetOptions options = {.path = path, .images = images, .tok = tok, .max_seq_len = MAX_SEQ_LEN,
                                 .n_image_tokens = IMAGE_TOKENS, .image_token_id = IMAGE_TOKEN_ID,
                                 .preprocess = image_preprocess_square(IMAGE_SIZE, MEAN, STD),
                                 .decode_images = decode};
    Error err = {0};
    VlmDataset *dataset = vlm_dataset_open(&options, &err);
    if (!dataset) fail_msg("vlm_dataset_open(%s): %s", path, err.message);
    return dataset;
}

static const SkippedRecord *find_skip(const VlmDataset *dataset, const char *id) {
    for (int64_t i = 0; i < vlm_dataset_skipped_count(dataset); i++)
        if (strcmp(vlm_dataset_skipped(dataset, i)->id, id) == 0) return vlm_dataset_skipped(dataset, i);
    fail_msg("record '%s' was not skipped", id);
    return NULL;
}

static void test_skips_per_reason(void **state) {
    Crafted c;
    make_crafted(&c);
    Tokenizer *tok = byte_tokenizer();
    VlmDataset *dataset = open_crafted(c.jsonl, c.images, tok, true);
    const VlmDatasetStats *s = vlm_dataset_stats(dataset);
    assert_int_equal(s->records, N_CRAFTED + 1);
    assert_int_equal(s->samples, N_GOOD);
    assert_int_equal(vlm_dataset_size(dataset), N_GOOD);
    assert_int_equal(s->images, 2);
    assert_int_equal(s->skipped[SKIP_BAD_RECORD], 2);        // bad-role, broken JSON
    assert_int_equal(s->skipped[SKIP_EMPTY_CONVERSATION], 2); // empty, no-gpt
    assert_int_equal(s->skipped[SKIP_NO_PLACEHOLDER], 1);
    assert_int_equal(s->skipped[SKIP_PLACEHOLDER_MISMATCH], 1);
    assert_int_equal(s->skipped[SKIP_MISSING_IMAGE], 1);
    assert_int_equal(s->skipped[SKIP_BAD_IMAGE], 2);          // crc error, truncated JPEG
    assert_int_equal(s->skipped[SKIP_IMAGE_TRUNCATED], 1);
    assert_int_equal(s->skipped_total, N_CRAFTED + 1 - N_GOOD);
    assert_non_null(strstr(find_skip(dataset, "missing")->message, "nope.png"));
    assert_non_null(strstr(find_skip(dataset, "corrupt")->message, "corrupt.png"));
    assert_non_null(strstr(find_skip(dataset, "bad-role")->message, "robot"));
    assert_int_equal(find_skip(dataset, "truncated")->reason, SKIP_BAD_IMAGE);
    assert_int_equal(vlm_dataset_skipped(dataset, vlm_dataset_skipped_count(dataset) - 1)->record, N_CRAFTED);
    Error err = {0};
    assert_true(vlm_dataset_check_skips(dataset, 0.8, &err));
    assert_false(vlm_dataset_check_skips(dataset, 0.5, &err));
    assert_non_null(strstr(err.message, "10 of 13 records skipped"));
    assert_non_null(strstr(err.message, "missing image: 1"));
    vlm_dataset_destroy(dataset);
    // Without decoding at open, corrupt images are found when their sample loads.
    dataset = open_crafted(c.json, c.images, tok, false);
    assert_int_equal(vlm_dataset_size(dataset), N_GOOD + 2);
    assert_int_equal(vlm_dataset_stats(dataset)->skipped[SKIP_BAD_IMAGE], 0);
    for (int64_t i = 0; i < vlm_dataset_size(dataset); i++) {
        VlmSample sample;
        bool skipped;
        assert_true(vlm_dataset_load(dataset, i, &sample, &skipped, &err));
        vlm_sample_free(&sample);
    }
    assert_int_equal(vlm_dataset_stats(dataset)->skipped[SKIP_BAD_IMAGE], 2);
    assert_int_equal(vlm_dataset_stats(dataset)->samples, N_GOOD);
    vlm_dataset_destroy(dataset);
    tokenizer_destroy(tok);
    assert_true(remove_tree(c.dir, &err));
}

// <bos> <|user|> "What is it? " [img x4] <|assistant|> "A frame" <eos> <|user|> "Sure?" <|assistant|> "Yes" <eos>
static void test_sample_layout(void **state) {
    Crafted c;
    make_crafted(&c);
    Tokenizer *tok = byte_tokenizer();
    VlmDataset *dataset = open_crafted(c.json, c.images, tok, true);
    VlmSample sample;
    bool skipped;
    Error err = {0};
    assert_true(vlm_dataset_load(dataset, 1, &sample, &skipped, &err));
    assert_false(skipped);
    int32_t want_ids[64], want_labels[64];
    int n = 0;
    const int user = tokenizer_token_id(tok, "<|user|>"), assistant = tokenizer_token_id(tok, "<|assistant|>");
    const int bos = tokenizer_bos(tok), eos = tokenizer_eos(tok);
#define PUSH(id, trained) (want_ids[n] = (id), want_labels[n] = (trained) ? (id) : IGNORE_INDEX, n++)
#define PUSH_TEXT(text, trained) for (const char *p = (text); *p; p++) PUSH((unsigned char)*p, trained)
    PUSH(bos, false);
    PUSH(user, false);
    PUSH_TEXT("What is it? ", false);
    for (int i = 0; i < IMAGE_TOKENS; i++) PUSH(IMAGE_TOKEN_ID, false);
    PUSH(assistant, false);
    PUSH_TEXT("A frame", true);
    PUSH(eos, true);
    PUSH(user, false);
    PUSH_TEXT("Sure?", false);
    PUSH(assistant, false);
    PUSH_TEXT("Yes", true);
    PUSH(eos, true);
#undef PUSH
#undef PUSH_TEXT
    assert_int_equal(sample.text.length, n);
    assert_false(sample.text.truncated);
    assert_memory_equal(sample.text.ids, want_ids, (size_t)n * sizeof(int32_t));
    assert_memory_equal(sample.text.labels, want_labels, (size_t)n * sizeof(int32_t));
    // The image tensor is vision's preprocessing of the JPEG.
    char *bytes;
    size_t size;
    read_fixture(JPEG_FIXTURE, &bytes, &size);
    Image image;
    float want[3 * IMAGE_SIZE * IMAGE_SIZE];
    ImagePreprocess p = image_preprocess_square(IMAGE_SIZE, MEAN, STD);
    assert_true(image_decode_memory(bytes, size, "video", &image, &err));
    assert_true(image_preprocess(&image, &p, want, &err));
    assert_true(sample.has_image);
    assert_memory_equal(sample.image, want, sizeof want);
    image_free(&image);
    free(bytes);
    vlm_sample_free(&sample);
    // The text-only record: truncated to MAX_SEQ_LEN, counted, no image.
    assert_true(vlm_dataset_load(dataset, 2, &sample, &skipped, &err));
    assert_true(sample.text.truncated);
    assert_int_equal(sample.text.length, MAX_SEQ_LEN);
    assert_false(sample.has_image);
    assert_null(sample.image);
    assert_int_equal(vlm_dataset_stats(dataset)->truncated, 1);
    vlm_sample_free(&sample);
    vlm_dataset_destroy(dataset);
    tokenizer_destroy(tok);
    assert_true(remove_tree(c.dir, &err));
}

static void test_json_and_jsonl_agree(void **state) {
    Crafted c;
    make_crafted(&c);
    Tokenizer *tok = byte_tokenizer();
    VlmDataset *json = open_crafted(c.json, c.images, tok, true);
    VlmDataset *jsonl = open_crafted(c.jsonl, c.images, tok, true);
    assert_int_equal(vlm_dataset_size(json), vlm_dataset_size(jsonl));
    const VlmDatasetStats *a = vlm_dataset_stats(json), *b = vlm_dataset_stats(jsonl);
    assert_int_equal(a->tokens, b->tokens);
    assert_int_equal(a->label_tokens, b->label_tokens);
    Error err = {0};
    for (int64_t i = 0; i < vlm_dataset_size(json); i++) {
        VlmSample x, y;
        bool skipped_x, skipped_y;
        assert_true(vlm_dataset_load(json, i, &x, &skipped_x, &err));
        assert_true(vlm_dataset_load(jsonl, i, &y, &skipped_y, &err));
        assert_int_equal(x.text.length, y.text.length);
        assert_memory_equal(x.text.ids, y.text.ids, (size_t)x.text.length * sizeof(int32_t));
        assert_memory_equal(x.text.labels, y.text.labels, (size_t)x.text.length * sizeof(int32_t));
        assert_int_equal(x.has_image, y.has_image);
        if (x.has_image) assert_memory_equal(x.image, y.image, 3 * IMAGE_SIZE * IMAGE_SIZE * sizeof(float));
        vlm_sample_free(&x);
        vlm_sample_free(&y);
    }
    vlm_dataset_destroy(json);
    vlm_dataset_destroy(jsonl);
    tokenizer_destroy(tok);
    assert_true(remove_tree(c.dir, &err));
}

// ----------------------------------------------------------------------------
// the loader

static VlmLoader *crafted_loader(VlmDataset *dataset, int rank, int world_size, double max_skip) {
    DataLoaderOptions options = {.micro_batch = 1, .grad_accum = 1, .max_seq_len = MAX_SEQ_LEN, .seed = 7,
                                 .shuffle = true, .rank = rank, .world_size = world_size};
    Error err = {0};
    VlmLoader *loader = vlm_loader_create(dataset, &options, max_skip, &err);
    if (!loader) fail_msg("%s", err.message);
    return loader;
}

// The token after <bos> <|user|> tells the good records apart: image id, 'W' or 'H'.
static int32_t row_key(const StepBatch *batch) { return batch->tokens[2]; }

static void test_loader_order_and_images(void **state) {
    Crafted c;
    make_crafted(&c);
    Tokenizer *tok = byte_tokenizer();
    VlmDataset *dataset = open_crafted(c.json, c.images, tok, true);
    VlmLoader *a = crafted_loader(dataset, 0, 1, 0.0), *b = crafted_loader(dataset, 0, 1, 0.0);
    assert_int_equal(vlm_loader_steps_per_epoch(a), N_GOOD);
    Error err = {0};
    int32_t epoch_keys[2][N_GOOD];
    for (int epoch = 0; epoch < 2; epoch++) {
        for (int step = 0; step < N_GOOD; step++) {
            const StepBatch *x = vlm_loader_next(a, &err), *y = vlm_loader_next(b, &err);
            assert_non_null(x);
            assert_non_null(y);
            assert_memory_equal(x->tokens, y->tokens, MAX_SEQ_LEN * sizeof(int32_t));
            assert_memory_equal(x->targets, y->targets, MAX_SEQ_LEN * sizeof(int32_t));
            assert_int_equal(x->image_size, IMAGE_SIZE);
            bool text_only = row_key(x) == 'H';
            assert_int_equal(x->has_image[0], !text_only);
            for (int t = 0; t < MAX_SEQ_LEN; t++)
                if (x->tokens[t] == IMAGE_TOKEN_ID) assert_int_equal(x->targets[t], IGNORE_INDEX);
            epoch_keys[epoch][step] = row_key(x);
        }
    }
    int found = 0; // each epoch is a permutation of the 3 samples
    for (int step = 0; step < N_GOOD; step++) found |= 1 << (epoch_keys[1][step] == 'H' ? 0 : epoch_keys[1][step] == 'W' ? 1 : 2);
    assert_int_equal(found, 7);
    vlm_loader_seek(b, 1, 0);
    const StepBatch *again = vlm_loader_next(b, &err);
    assert_int_equal(row_key(again), epoch_keys[1][0]);
    vlm_loader_destroy(a);
    vlm_loader_destroy(b);
    vlm_dataset_destroy(dataset);
    tokenizer_destroy(tok);
    assert_true(remove_tree(c.dir, &err));
}

static void test_loader_skip_limit(void **state) {
    Crafted c;
    make_crafted(&c);
    Tokenizer *tok = byte_tokenizer();
    // Not decoded at open: the two corrupt images are found by the loader.
    VlmDataset *dataset = open_crafted(c.json, c.images, tok, false);
    VlmLoader *lenient = crafted_loader(dataset, 0, 1, 1.0);
    Error err = {0};
    for (int step = 0; step < 2 * N_GOOD + 4; step++) {
        const StepBatch *batch = vlm_loader_next(lenient, &err);
        if (!batch) fail_msg("%s", err.message);
        assert_true(row_key(batch) != IMAGE_TOKEN_ID || batch->has_image[0]);
    }
    assert_int_equal(vlm_dataset_stats(dataset)->skipped[SKIP_BAD_IMAGE], 2);
    vlm_loader_destroy(lenient);
    vlm_dataset_destroy(dataset);
    dataset = open_crafted(c.json, c.images, tok, false);
    VlmLoader *strict = crafted_loader(dataset, 0, 1, 0.6);
    const StepBatch *batch = NULL;
    for (int step = 0; step < 2 * N_GOOD + 4 && (batch = vlm_loader_next(strict, &err)); step++) continue;
    assert_null(batch);
    assert_non_null(strstr(err.message, "max_skip_fraction"));
    vlm_loader_destroy(strict);
    vlm_dataset_destroy(dataset);
    tokenizer_destroy(tok);
    assert_true(remove_tree(c.dir, &err));
}

// ----------------------------------------------------------------------------
// the image token: one rule for training and `data check` (llava_image_token_id)

static void test_image_token_id(void **state) {
    Error err;
    Tokenizer *bytes = tokenizer_bytes(&err);
    assert_non_null(bytes);
    int V = tokenizer_vocab_size(bytes);
    assert_int_equal(tokenizer_token_id(bytes, LLAVA_IMAGE_PLACEHOLDER), -1);
    assert_int_equal(llava_image_token_id(bytes, V + 64), V);  // room past the text vocabulary: llava-hf's index
    assert_int_equal(llava_image_token_id(bytes, V), 0);       // none: NUL (data check used to say V, outside the model)
    tokenizer_destroy(bytes);
}

// ----------------------------------------------------------------------------
// lora-train data check

static int data_check(const Crafted *c, const char *max_skip, const char *log) {
    const char *bin = getenv("LORA_TRAIN_BIN");
    if (!bin) {
        print_message("LORA_TRAIN_BIN is not set (run through ctest)\n");
        skip();
    }
    char config[400], command[2048];
    snprintf(config, sizeof config, "%s/check.yaml", c->dir);
    FILE *f = fopen(config, "wb");
    assert_non_null(f);
    // the model's config (for the image token's vocabulary) from the tiny preset, the byte tokenizer;
    // the tiny tower: 16 x 16 images of 4 x 4 patches, cropped rather than padded (the defaults: 336, pad)
    fprintf(f, "model:\n  path: %s/no-model\n  create_if_missing: tiny\n", c->dir);
    fprintf(f, "data:\n  path: %s\n  images: %s\n  max_seq_len: %d\n  image_tokens: %d\n", c->jsonl, c->images,
            MAX_SEQ_LEN, TINY_TOWER_PATCHES);
    fprintf(f, "vision:\n  tower_preset: tiny\n  image_fit: crop\n");
    assert_int_equal(fclose(f), 0);
    snprintf(command, sizeof command, "%s data check --config %s --set data.max_skip_fraction=%s > %s 2>&1", bin,
             config, max_skip, log);
    return run_command(command);
}

static void test_data_check_cli(void **state) {
    Crafted c;
    make_crafted(&c);
    char log[400];
    snprintf(log, sizeof log, "%s/check.log", c.dir);
    assert_int_equal(data_check(&c, "0.9", log), 0);
    char *text;
    size_t size;
    Error err = {0};
    assert_true(read_file(log, &text, &size, &err));
    const char *expected[] = {
        "13 LLaVA records", "usable samples   3 (2 with an image)",
        "images           16 x 16 (vision.tower_preset tiny), fit crop",
        "truncated        2", // the text-only record and, with 16 image tokens, an image record
        "skipped          10",
        "    missing image: ", "      record 3 (id 'missing'): image 'nope.png' is not in",
        "    bad record: ", "      record 12: invalid JSON", "corrupt image: 2",
        "empty conversation: 2", "image beyond max_seq_len: 1",
    };
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        if (!strstr(text, expected[i])) fail_msg("data check output lacks \"%s\":\n%s", expected[i], text);
    free(text);
    assert_int_equal(data_check(&c, "0.5", log), 1);
    assert_true(read_file(log, &text, &size, &err));
    assert_non_null(strstr(text, "over data.max_skip_fraction 50.00%"));
    free(text);
    assert_true(remove_tree(c.dir, &err));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_archives),
        cmocka_unit_test(test_store_folder_and_errors),
        cmocka_unit_test(test_streaming_index),
        cmocka_unit_test(test_index_structure_errors),
        cmocka_unit_test(test_skips_per_reason),
        cmocka_unit_test(test_sample_layout),
        cmocka_unit_test(test_json_and_jsonl_agree),
        cmocka_unit_test(test_loader_order_and_images),
        cmocka_unit_test(test_loader_skip_limit),
        cmocka_unit_test(test_image_token_id),
        cmocka_unit_test(test_data_check_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
