// data: byte tokenizer, chat/text rendering, JSONL datasets, the loader and the
// demo data. Reference ids, labels and shifted targets come from
// scripts/ref_data.py (Python's UTF-8, torch's padding and HF's label shift).
#include "test_util.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"

#define RECORDS_PATH "tests/fixtures/data/records.jsonl"
#define EXPECTED_PATH "tests/fixtures/data/expected.json"

// ----------------------------------------------------------------------------
// helpers

static Tokenizer *byte_tokenizer(void) {
    Error err = {0};
    Tokenizer *tok = tokenizer_bytes(&err);
    if (!tok) fail_msg("tokenizer_bytes: %s", err.message);
    return tok;
}

static void write_text_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static json_object *load_expected(void) {
    json_object *expected = json_object_from_file(EXPECTED_PATH);
    if (!expected) {
        print_message("%s is missing: run scripts/ref_data.py\n", EXPECTED_PATH);
        skip();
    }
    return expected;
}

static json_object *get(json_object *obj, const char *key) {
    json_object *value = NULL;
    if (!json_object_object_get_ex(obj, key, &value)) fail_msg("fixture has no key \"%s\"", key);
    return value;
}

// Asserts n int32 values equal the JSON array of ints, naming the first mismatch.
static void assert_ids_equal(const int32_t *actual, int n, json_object *expected, const char *what) {
    assert_int_equal(n, (int)json_object_array_length(expected));
    for (int i = 0; i < n; i++) {
        int want = json_object_get_int(json_object_array_get_idx(expected, (size_t)i));
        if (actual[i] != want) fail_msg("%s[%d] = %d, reference %d", what, i, actual[i], want);
    }
}

static Dataset *open_dataset(const char *path, int max_seq_len, const Tokenizer *tok) {
    Error err = {0};
    Dataset *dataset = dataset_open_jsonl(path, tok, max_seq_len, &err);
    if (!dataset) fail_msg("dataset_open_jsonl: %s", err.message);
    return dataset;
}

// ----------------------------------------------------------------------------
// tokenizer

static void test_byte_round_trip(void **state) {
    Tokenizer *tok = byte_tokenizer();
    char text[300];
    const char *utf8 = "Caf\xc3\xa9 \xe2\x98\x95 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80";
    size_t utf8_len = strlen(utf8);
    memcpy(text, utf8, utf8_len);
    for (int b = 0; b < 256; b++) text[utf8_len + (size_t)b] = (char)b; // every byte, NUL included
    size_t len = utf8_len + 256;
    int32_t *ids = NULL;
    int n_ids = 0, capacity = 0;
    Error err = {0};
    assert_true(tokenizer_encode(tok, text, len, &ids, &n_ids, &capacity, &err));
    assert_int_equal(n_ids, (int)len);
    for (size_t i = 0; i < len; i++) assert_int_equal(ids[i], (unsigned char)text[i]);
    assert_int_equal(ids[6], 0xe2); // the first byte of U+2615, not a code point
    char *decoded = tokenizer_decode(tok, ids, n_ids, &err);
    assert_non_null(decoded);
    assert_memory_equal(decoded, text, len);
    assert_int_equal(decoded[len], '\0');
    free(decoded);
    free(ids);
    tokenizer_destroy(tok);
}

static void test_special_tokens(void **state) {
    Tokenizer *tok = byte_tokenizer();
    assert_int_equal(tokenizer_vocab_size(tok), 262);
    assert_int_equal(tokenizer_bos(tok), 256);
    assert_int_equal(tokenizer_eos(tok), 257);
    assert_int_equal(tokenizer_pad(tok), 258);
    const char *names[] = {"<bos>", "<eos>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"};
    for (int i = 0; i < 6; i++) assert_int_equal(tokenizer_token_id(tok, names[i]), 256 + i);
    assert_int_equal(tokenizer_token_id(tok, "<|bot|>"), -1);
    assert_int_equal(tokenizer_token_id(tok, "a"), -1);

    int32_t *ids = NULL;
    int n_ids = 0, capacity = 0;
    Error err = {0};
    assert_true(tokenizer_encode(tok, "<bos>", 5, &ids, &n_ids, &capacity, &err));
    assert_int_equal(n_ids, 5); // text never becomes a special token
    for (int i = 0; i < n_ids; i++) assert_true(ids[i] < 256);
    free(ids);

    int32_t mixed[] = {256, 'h', 'i', 261, 257, 258, 259, 260};
    char *decoded = tokenizer_decode(tok, mixed, 8, &err);
    assert_string_equal(decoded, "<bos>hi<|assistant|><eos><pad><|system|><|user|>");
    free(decoded);
    int32_t bad[] = {'a', 262};
    assert_null(tokenizer_decode(tok, bad, 2, &err));
    assert_non_null(strstr(err.message, "262"));
    tokenizer_destroy(tok);
}

// ----------------------------------------------------------------------------
// samples

static void test_three_turn_chat_labels(void **state) {
    json_object *expected = load_expected();
    json_object *reference = json_object_array_get_idx(get(expected, "samples"), 0);
    Tokenizer *tok = byte_tokenizer();
    const char *roles[] = {"system", "user", "assistant"};
    const char *contents[] = {"Be brief.", "Hi?", "Hello."};
    Sample sample;
    Error err = {0};
    assert_true(sample_from_messages(tok, roles, contents, 3, 1024, &sample, &err));
    assert_false(sample.truncated);
    assert_ids_equal(sample.ids, sample.length, get(reference, "ids"), "ids");
    assert_ids_equal(sample.labels, sample.length, get(reference, "labels"), "labels");
    // Spot checks of the layout: <bos><|system|>Be brief.<|user|>Hi?<|assistant|>Hello.<eos>
    assert_int_equal(sample.ids[0], 256);
    assert_int_equal(sample.ids[1], 259);
    assert_int_equal(sample.ids[11], 260);
    assert_int_equal(sample.ids[15], 261);
    assert_int_equal(sample.labels[15], IGNORE_INDEX);
    assert_int_equal(sample.labels[16], 'H');
    assert_int_equal(sample.labels[22], 257);
    for (int t = 0; t < 16; t++) assert_int_equal(sample.labels[t], IGNORE_INDEX);
    sample_free(&sample);
    tokenizer_destroy(tok);
    json_object_put(expected);
}

static void test_truncation_and_text(void **state) {
    Tokenizer *tok = byte_tokenizer();
    Sample sample;
    Error err = {0};
    assert_true(sample_from_text(tok, "abcdef", 100, &sample, &err));
    int32_t full[] = {256, 'a', 'b', 'c', 'd', 'e', 'f', 257};
    assert_int_equal(sample.length, 8);
    assert_false(sample.truncated);
    assert_memory_equal(sample.ids, full, sizeof full);
    assert_int_equal(sample.labels[0], IGNORE_INDEX);
    assert_memory_equal(sample.labels + 1, full + 1, sizeof full - sizeof full[0]);
    sample_free(&sample);

    assert_true(sample_from_text(tok, "abcdef", 4, &sample, &err));
    assert_int_equal(sample.length, 4);
    assert_true(sample.truncated);
    assert_memory_equal(sample.ids, full, 4 * sizeof full[0]);
    sample_free(&sample);

    const char *roles[] = {"user", "assistant"};
    const char *contents[] = {"q", "answer"};
    assert_true(sample_from_messages(tok, roles, contents, 2, 5, &sample, &err));
    assert_true(sample.truncated);
    assert_int_equal(sample.length, 5); // <bos><|user|>q<|assistant|>a
    assert_int_equal(sample.labels[4], 'a');
    sample_free(&sample);

    assert_false(sample_from_text(tok, "abc", 0, &sample, &err));
    assert_non_null(strstr(err.message, "max_seq_len"));
    tokenizer_destroy(tok);
}

static void test_unknown_role(void **state) {
    Tokenizer *tok = byte_tokenizer();
    const char *roles[] = {"user", "bot"};
    const char *contents[] = {"hi", "hello"};
    Sample sample;
    Error err = {0};
    assert_false(sample_from_messages(tok, roles, contents, 2, 64, &sample, &err));
    assert_non_null(strstr(err.message, "\"bot\""));
    assert_non_null(strstr(err.message, "message 1"));
    tokenizer_destroy(tok);
}

// ----------------------------------------------------------------------------
// datasets

static void test_dataset_matches_reference(void **state) {
    json_object *expected = load_expected();
    int max_seq_len = json_object_get_int(get(expected, "max_seq_len"));
    json_object *samples = get(expected, "samples");
    Tokenizer *tok = byte_tokenizer();
    Dataset *dataset = open_dataset(RECORDS_PATH, max_seq_len, tok);
    assert_int_equal(dataset_size(dataset), (int64_t)json_object_array_length(samples));
    int64_t n_truncated = 0;
    for (int64_t i = 0; i < dataset_size(dataset); i++) {
        json_object *reference = json_object_array_get_idx(samples, (size_t)i);
        const Sample *sample = dataset_sample(dataset, i);
        assert_ids_equal(sample->ids, sample->length, get(reference, "ids"), "ids");
        assert_ids_equal(sample->labels, sample->length, get(reference, "labels"), "labels");
        assert_int_equal(sample->truncated, json_object_get_boolean(get(reference, "truncated")));
        n_truncated += sample->truncated;
        Error err = {0};
        char *decoded = tokenizer_decode(tok, sample->ids, sample->length, &err);
        assert_string_equal(decoded, json_object_get_string(get(reference, "decoded")));
        free(decoded);
    }
    assert_int_equal(n_truncated, 1);
    assert_int_equal(dataset_truncated_count(dataset), n_truncated);
    assert_null(dataset_sample(dataset, dataset_size(dataset)));
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
    json_object_put(expected);
}

// Each bad record sits on line 3, after a good line and a blank one.
static void test_malformed_lines(void **state) {
    static const struct { const char *line, *problem; } cases[] = {
        {"{\"text\": \"abc\"", "invalid JSON"},
        {"{\"text\": \"abc\"} trailing", "unexpected text after the record"},
        {"[1, 2]", "not a JSON object"},
        {"{\"prompt\": \"x\"}", "neither \"messages\" nor \"text\""},
        {"{\"text\": 5}", "\"text\" is not a string"},
        {"{\"messages\": {}}", "\"messages\" is not an array"},
        {"{\"messages\": [\"hi\"]}", "message 0 is not an object"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": [1]}]}", "message 0: \"content\""},
        {"{\"messages\": [{\"content\": \"x\"}]}", "message 0: \"role\""},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}", "no assistant turn"},
        {"{\"messages\": []}", "no assistant turn"},
        {"{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}, {\"role\": \"robot\", \"content\": \"y\"}]}",
         "unknown role \"robot\""},
    };
    Tokenizer *tok = byte_tokenizer();
    char path[512], text[512], prefix[600];
    snprintf(path, sizeof path, "%s/bad.jsonl", make_temp_dir("data-bad"));
    snprintf(prefix, sizeof prefix, "%s:3: ", path);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(text, sizeof text, "{\"text\": \"fine\"}\n   \n%s\n{\"text\": \"after\"}\n", cases[i].line);
        write_text_file(path, text);
        Error err = {0};
        Dataset *dataset = dataset_open_jsonl(path, tok, 64, &err);
        if (!dataset) fail_msg("case %zu: %s", i, err.message);
        assert_int_equal(dataset_size(dataset), 2);
        assert_int_equal(dataset_skipped_count(dataset), 1);
        const DatasetSkip *skip = dataset_skipped(dataset, 0);
        assert_int_equal(skip->line, 3);
        if (strncmp(skip->message, prefix, strlen(prefix)) != 0 || !strstr(skip->message, cases[i].problem)) {
            fail_msg("case %zu: reason \"%s\", wanted prefix \"%s\" and \"%s\"", i, skip->message, prefix,
                     cases[i].problem);
        }
        assert_true(dataset_check_skips(dataset, 0.5, &err));
        assert_false(dataset_check_skips(dataset, 0.01, &err));
        assert_non_null(strstr(err.message, "1 of 3 records skipped"));
        dataset_destroy(dataset);
    }
    write_text_file(path, "{\"foo\": 1}\n[]\n");
    Error err = {0};
    assert_null(dataset_open_jsonl(path, tok, 64, &err));
    print_message("%s\n", err.message);
    assert_non_null(strstr(err.message, "no usable records: all 2 skipped"));
    assert_non_null(strstr(err.message, "bad.jsonl:1: "));
    write_text_file(path, "\n \n");
    assert_null(dataset_open_jsonl(path, tok, 64, &err));
    assert_non_null(strstr(err.message, "no records"));
    assert_null(dataset_open_jsonl("/nonexistent/data.jsonl", tok, 64, &err));
    assert_non_null(strstr(err.message, "/nonexistent/data.jsonl"));
    tokenizer_destroy(tok);
}

// ----------------------------------------------------------------------------
// loader

static DataLoader *make_loader(const Dataset *dataset, DataLoaderOptions options) {
    Error err = {0};
    DataLoader *loader = dataloader_create(dataset, &options, &err);
    if (!loader) fail_msg("dataloader_create: %s", err.message);
    return loader;
}

static void test_loader_matches_reference(void **state) {
    json_object *expected = load_expected();
    int T = json_object_get_int(get(expected, "max_seq_len"));
    Tokenizer *tok = byte_tokenizer();
    Dataset *dataset = open_dataset(RECORDS_PATH, T, tok);
    json_object *cases = get(expected, "loader");
    for (size_t i = 0; i < json_object_array_length(cases); i++) {
        json_object *ref = json_object_array_get_idx(cases, i);
        DataLoaderOptions options = {
            .micro_batch = json_object_get_int(get(ref, "micro_batch")),
            .grad_accum = json_object_get_int(get(ref, "grad_accum")),
            .world_size = json_object_get_int(get(ref, "world_size")),
            .rank = json_object_get_int(get(ref, "rank")),
            .max_seq_len = T, .seed = 1, .shuffle = false,
        };
        DataLoader *loader = make_loader(dataset, options);
        const StepBatch *batch = dataloader_next(loader);
        int n = batch->n_micro * batch->B * batch->T;
        assert_ids_equal(batch->tokens, n, get(ref, "tokens"), "tokens");
        assert_ids_equal(batch->targets, n, get(ref, "targets"), "targets");
        assert_int_equal(batch->n_label_tokens, json_object_get_int64(get(ref, "n_label_tokens")));
        dataloader_destroy(loader);
    }
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
    json_object_put(expected);
}

#define N_RECORDS 24

// Writes N_RECORDS text records "record NN" + 0..8 x's, so a row's tokens name its sample.
static Dataset *numbered_dataset(const Tokenizer *tok) {
    char path[512], line[64];
    snprintf(path, sizeof path, "%s/numbered.jsonl", make_temp_dir("data-numbered"));
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (int i = 0; i < N_RECORDS; i++) {
        snprintf(line, sizeof line, "record %02d %.*s", i, i % 9, "xxxxxxxxx");
        fprintf(f, "{\"text\": \"%s\"}\n", line);
    }
    assert_int_equal(fclose(f), 0);
    return open_dataset(path, 64, tok);
}

// The dataset index a row came from, read from "<bos>record NN".
static int row_sample_index(const int32_t *tokens) {
    char text[10];
    for (int i = 0; i < 9; i++) text[i] = (char)tokens[1 + i];
    text[9] = '\0';
    int index = -1;
    if (sscanf(text, "record %d", &index) != 1) fail_msg("row does not start with a record number");
    return index;
}

// Checks every row of the step against its sample; returns the label recount.
static int64_t check_step_rows(const Dataset *dataset, const StepBatch *batch, int *indices) {
    int64_t n_labels = 0;
    for (int row = 0; row < batch->n_micro * batch->B; row++) {
        const int32_t *tokens = batch->tokens + row * batch->T, *targets = batch->targets + row * batch->T;
        indices[row] = row_sample_index(tokens);
        const Sample *sample = dataset_sample(dataset, indices[row]);
        int length = sample->length < batch->T ? sample->length : batch->T;
        for (int t = 0; t < batch->T; t++) {
            assert_int_equal(tokens[t], t < length ? sample->ids[t] : 258);
            assert_int_equal(targets[t], t + 1 < length ? sample->labels[t + 1] : IGNORE_INDEX);
            n_labels += targets[t] != IGNORE_INDEX;
        }
    }
    return n_labels;
}

static const DataLoaderOptions base_options = {
    .micro_batch = 2, .grad_accum = 2, .max_seq_len = 14, .seed = 7, .shuffle = true, .rank = 0, .world_size = 1,
};

// Runs one epoch; fills order[N_RECORDS] with the sample indices in step order.
static void run_epoch(DataLoader *loader, const Dataset *dataset, int epoch, int *order) {
    int64_t steps = dataloader_steps_per_epoch(loader);
    int per_step = base_options.micro_batch * base_options.grad_accum;
    for (int64_t step = 0; step < steps; step++) {
        const StepBatch *batch = dataloader_next(loader);
        assert_int_equal(batch->epoch, epoch);
        int64_t recount = check_step_rows(dataset, batch, order + step * per_step);
        assert_int_equal(batch->n_label_tokens, recount);
    }
}

static void test_loader_epochs(void **state) {
    Tokenizer *tok = byte_tokenizer();
    Dataset *dataset = numbered_dataset(tok);
    DataLoader *loader = make_loader(dataset, base_options);
    assert_int_equal(dataloader_steps_per_epoch(loader), N_RECORDS / 4);
    int epoch0[N_RECORDS], epoch1[N_RECORDS], again[N_RECORDS];
    run_epoch(loader, dataset, 0, epoch0);
    run_epoch(loader, dataset, 1, epoch1);
    int seen0[N_RECORDS] = {0}, seen1[N_RECORDS] = {0};
    for (int i = 0; i < N_RECORDS; i++) {
        seen0[epoch0[i]]++;
        seen1[epoch1[i]]++;
    }
    for (int i = 0; i < N_RECORDS; i++) {
        assert_int_equal(seen0[i], 1);
        assert_int_equal(seen1[i], 1);
    }
    assert_memory_not_equal(epoch0, epoch1, sizeof epoch0);

    DataLoader *same_seed = make_loader(dataset, base_options);
    run_epoch(same_seed, dataset, 0, again);
    assert_memory_equal(epoch0, again, sizeof epoch0);
    DataLoaderOptions other = base_options;
    other.seed = 8;
    DataLoader *other_seed = make_loader(dataset, other);
    run_epoch(other_seed, dataset, 0, again);
    assert_memory_not_equal(epoch0, again, sizeof epoch0);
    other.shuffle = false;
    DataLoader *in_order = make_loader(dataset, other);
    run_epoch(in_order, dataset, 0, again);
    for (int i = 0; i < N_RECORDS; i++) assert_int_equal(again[i], i);

    dataloader_destroy(loader);
    dataloader_destroy(same_seed);
    dataloader_destroy(other_seed);
    dataloader_destroy(in_order);
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
}

static void test_loader_drops_remainder(void **state) {
    Tokenizer *tok = byte_tokenizer();
    Dataset *dataset = numbered_dataset(tok);
    DataLoaderOptions options = base_options;
    options.micro_batch = 5; // 10 samples a step: 2 steps, 4 samples dropped
    DataLoader *loader = make_loader(dataset, options);
    assert_int_equal(dataloader_steps_per_epoch(loader), 2);
    dataloader_next(loader);
    dataloader_next(loader);
    assert_int_equal(dataloader_next(loader)->epoch, 1);
    dataloader_destroy(loader);
    options.micro_batch = 13; // 26 > 24 samples: not one step
    Error err = {0};
    assert_null(dataloader_create(dataset, &options, &err));
    assert_non_null(strstr(err.message, "24 samples"));
    options.micro_batch = 1;
    options.rank = 2;
    options.world_size = 2;
    assert_null(dataloader_create(dataset, &options, &err));
    assert_non_null(strstr(err.message, "rank 2"));
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
}

// Ranks of world 2 (B 2, accum 1) split each global step of the world-1 loader (B 2, accum 2):
// rank r takes global rows r, r + 2.
static void test_loader_ranks_partition_step(void **state) {
    Tokenizer *tok = byte_tokenizer();
    Dataset *dataset = numbered_dataset(tok);
    DataLoader *global = make_loader(dataset, base_options);
    DataLoaderOptions rank_options = base_options;
    rank_options.grad_accum = 1;
    rank_options.world_size = 2;
    DataLoader *ranks[2];
    for (int r = 0; r < 2; r++) {
        rank_options.rank = r;
        ranks[r] = make_loader(dataset, rank_options);
        assert_int_equal(dataloader_steps_per_epoch(ranks[r]), dataloader_steps_per_epoch(global));
    }
    for (int step = 0; step < 8; step++) {
        int global_rows[4], rank_rows[2][2];
        const StepBatch *g = dataloader_next(global);
        check_step_rows(dataset, g, global_rows);
        int64_t n_labels = 0;
        for (int r = 0; r < 2; r++) {
            const StepBatch *b = dataloader_next(ranks[r]);
            n_labels += check_step_rows(dataset, b, rank_rows[r]);
            assert_int_equal(b->n_label_tokens, check_step_rows(dataset, b, rank_rows[r]));
            assert_int_equal(b->epoch, g->epoch);
        }
        for (int j = 0; j < 2; j++) {
            assert_int_equal(rank_rows[0][j], global_rows[2 * j]);
            assert_int_equal(rank_rows[1][j], global_rows[2 * j + 1]);
        }
        assert_int_equal(n_labels, g->n_label_tokens);
    }
    dataloader_destroy(global);
    dataloader_destroy(ranks[0]);
    dataloader_destroy(ranks[1]);
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
}

// ----------------------------------------------------------------------------
// packing

#define PACK_T 40 // two or three numbered samples (12 .. 20 tokens) per row
#define PAD_ID 258

static const DataLoaderOptions pack_options = {
    .micro_batch = 2, .grad_accum = 1, .max_seq_len = PACK_T, .seed = 7, .shuffle = true, .rank = 0,
    .world_size = 1, .pack = true,
};

// Checks one packed row: segments from position 0, each a whole sample (ids;
// targets its labels shifted, IGNORE_INDEX at its last token), then padding
// (pad ids, no labels) as one segment. Fills samples[] with the row's dataset
// indices; returns their count, *padding the padding's length and *n_labels
// the recount.
static int check_packed_row(const Dataset *dataset, const int32_t *tokens, const int32_t *targets,
                            const int32_t *seq_start, int *samples, int *padding, int64_t *n_labels) {
    int n_samples = 0, start = 0;
    *padding = 0;
    while (start < PACK_T) {
        int length = 1;
        while (start + length < PACK_T && seq_start[start + length] == start) length++;
        for (int t = start; t < start + length; t++) assert_int_equal(seq_start[t], start);
        if (tokens[start] == PAD_ID) { // padding: the rest of the row
            assert_int_equal(start + length, PACK_T);
            for (int t = start; t < PACK_T; t++) {
                assert_int_equal(tokens[t], PAD_ID);
                assert_int_equal(targets[t], IGNORE_INDEX);
            }
            *padding = length;
            break;
        }
        int index = row_sample_index(tokens + start);
        const Sample *sample = dataset_sample(dataset, index);
        assert_int_equal(length, sample->length);
        for (int t = 0; t < length; t++) {
            assert_int_equal(tokens[start + t], sample->ids[t]);
            assert_int_equal(targets[start + t], t + 1 < length ? sample->labels[t + 1] : IGNORE_INDEX);
            *n_labels += targets[start + t] != IGNORE_INDEX;
        }
        samples[n_samples++] = index;
        start += length;
    }
    return n_samples;
}

// Runs the loader's epoch `epoch` (it must be at its start); marks seen[index]
// for every sample and checks every row's layout, the label counts and the
// greedy packing (a row's padding is shorter than the next row's first sample).
static int64_t run_packed_epoch(DataLoader *loader, const Dataset *dataset, int epoch, int *seen) {
    int64_t steps = dataloader_steps_for_epochs(loader, epoch + 1) - dataloader_steps_for_epochs(loader, epoch);
    for (int64_t step = 0; step < steps; step++) {
        const StepBatch *batch = dataloader_next(loader);
        assert_int_equal(batch->epoch, epoch);
        assert_non_null(batch->seq_start);
        int64_t n_labels = 0;
        int previous_padding = -1;
        for (int row = 0; row < batch->n_micro * batch->B; row++) {
            int samples[PACK_T], padding;
            size_t at = (size_t)row * PACK_T;
            int n = check_packed_row(dataset, batch->tokens + at, batch->targets + at, batch->seq_start + at, samples,
                                     &padding, &n_labels);
            assert_true(n >= 1);
            if (previous_padding >= 0) assert_true(previous_padding < dataset_sample(dataset, samples[0])->length);
            previous_padding = padding;
            for (int i = 0; i < n; i++) seen[samples[i]]++;
        }
        assert_int_equal(batch->n_label_tokens, n_labels);
    }
    return steps;
}

static void test_pack_layout_and_epochs(void **state) {
    Tokenizer *tok = byte_tokenizer();
    Dataset *dataset = numbered_dataset(tok);
    DataLoader *loader = make_loader(dataset, pack_options);
    int64_t total_steps = 0;
    for (int epoch = 0; epoch < 3; epoch++) {
        int seen[N_RECORDS] = {0}, n_seen = 0;
        int64_t steps = run_packed_epoch(loader, dataset, epoch, seen);
        if (epoch == 0) assert_int_equal(steps, dataloader_steps_per_epoch(loader));
        for (int i = 0; i < N_RECORDS; i++) {
            assert_true(seen[i] <= 1);
            n_seen += seen[i];
        }
        // 375 tokens fill at least 10 rows of 40: 5 steps of 2 rows, each sample at most once
        assert_true(steps >= 5 && n_seen >= 2 * 2 * steps && n_seen <= N_RECORDS);
        total_steps += steps;
        int epoch_now;
        int64_t step_now;
        dataloader_position(loader, &epoch_now, &step_now);
        assert_int_equal(epoch_now, epoch + 1);
        assert_int_equal(step_now, 0);
    }
    assert_int_equal(dataloader_steps_for_epochs(loader, 3), total_steps);
    dataloader_destroy(loader);

    // In order, rows of 39: lengths 12 + 13 + 14 fill the first exactly; 15 + 16 and padding from 31
    DataLoaderOptions in_order = pack_options;
    in_order.shuffle = false;
    in_order.max_seq_len = 39;
    loader = make_loader(dataset, in_order);
    const StepBatch *batch = dataloader_next(loader);
    int at[] = {0, 11, 12, 24, 25, 38, 39, 39 + 14, 39 + 15, 39 + 30, 39 + 31, 2 * 39 - 1};
    int32_t want_starts[] = {0, 0, 12, 12, 25, 25, 0, 0, 15, 15, 31, 31};
    for (int i = 0; i < 12; i++) assert_int_equal(batch->seq_start[at[i]], want_starts[i]);
    assert_int_equal(batch->tokens[39 + 31], PAD_ID);
    assert_int_equal(batch->targets[11], IGNORE_INDEX); // a sample's last token predicts nothing
    dataloader_destroy(loader);
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
}

// Every position a run passes through, sought by a fresh loader, gives the same step;
// a step past an epoch's end lands in the next epoch.
static void test_pack_seek_resumes_exactly(void **state) {
    enum { STEPS = 14, TOKENS = 2 * PACK_T };
    Tokenizer *tok = byte_tokenizer();
    Dataset *dataset = numbered_dataset(tok);
    DataLoader *loader = make_loader(dataset, pack_options), *resumed = make_loader(dataset, pack_options);
    static int32_t tokens[STEPS][TOKENS], seq_start[STEPS][TOKENS];
    int epochs[STEPS];
    int64_t steps_in_epoch[STEPS];
    for (int step = 0; step < STEPS; step++) {
        dataloader_position(loader, &epochs[step], &steps_in_epoch[step]);
        const StepBatch *batch = dataloader_next(loader);
        memcpy(tokens[step], batch->tokens, sizeof tokens[step]);
        memcpy(seq_start[step], batch->seq_start, sizeof seq_start[step]);
    }
    assert_int_equal(epochs[STEPS - 1], 2); // the run crossed two epoch ends
    for (int step = STEPS - 1; step >= 0; step--) {
        dataloader_seek(resumed, epochs[step], steps_in_epoch[step]);
        const StepBatch *batch = dataloader_next(resumed);
        assert_memory_equal(batch->tokens, tokens[step], sizeof tokens[step]);
        assert_memory_equal(batch->seq_start, seq_start[step], sizeof seq_start[step]);
    }
    int64_t epoch0_steps = dataloader_steps_per_epoch(loader);
    dataloader_seek(resumed, 0, epoch0_steps + 1);
    int epoch;
    int64_t step_in_epoch;
    dataloader_position(resumed, &epoch, &step_in_epoch);
    assert_int_equal(epoch, 1);
    assert_int_equal(step_in_epoch, 1);
    assert_memory_equal(dataloader_next(resumed)->tokens, tokens[epoch0_steps + 1], sizeof tokens[0]);
    dataloader_destroy(loader);
    dataloader_destroy(resumed);
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
}

// Ranks of world 2 (B 1) take the global loader's (B 2) rows r and r + 2 ..: disjoint rows.
static void test_pack_ranks_take_disjoint_rows(void **state) {
    Tokenizer *tok = byte_tokenizer();
    Dataset *dataset = numbered_dataset(tok);
    DataLoader *global = make_loader(dataset, pack_options), *ranks[2];
    DataLoaderOptions rank_options = pack_options;
    rank_options.micro_batch = 1;
    rank_options.world_size = 2;
    for (int r = 0; r < 2; r++) {
        rank_options.rank = r;
        ranks[r] = make_loader(dataset, rank_options);
    }
    int64_t steps = dataloader_steps_for_epochs(global, 2);
    for (int r = 0; r < 2; r++) assert_int_equal(dataloader_steps_for_epochs(ranks[r], 2), steps);
    for (int64_t step = 0; step < steps; step++) {
        const StepBatch *g = dataloader_next(global);
        int64_t n_labels = 0;
        int seen[N_RECORDS] = {0};
        for (int r = 0; r < 2; r++) {
            const StepBatch *b = dataloader_next(ranks[r]);
            assert_int_equal(b->epoch, g->epoch);
            assert_memory_equal(b->tokens, g->tokens + r * PACK_T, PACK_T * sizeof(int32_t));
            assert_memory_equal(b->seq_start, g->seq_start + r * PACK_T, PACK_T * sizeof(int32_t));
            int samples[PACK_T], padding;
            int64_t rank_labels = 0;
            int n = check_packed_row(dataset, b->tokens, b->targets, b->seq_start, samples, &padding, &rank_labels);
            assert_int_equal(b->n_label_tokens, rank_labels);
            for (int i = 0; i < n; i++) assert_int_equal(seen[samples[i]]++, 0);
            n_labels += rank_labels;
        }
        assert_int_equal(n_labels, g->n_label_tokens);
    }
    dataloader_destroy(global);
    dataloader_destroy(ranks[0]);
    dataloader_destroy(ranks[1]);
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
}

static void test_pack_needs_one_step_of_rows(void **state) {
    Tokenizer *tok = byte_tokenizer();
    Dataset *dataset = numbered_dataset(tok);
    DataLoaderOptions options = pack_options;
    options.micro_batch = 11; // 375 tokens may fill only 10 rows of 40
    Error err = {0};
    assert_null(dataloader_create(dataset, &options, &err));
    assert_non_null(strstr(err.message, "as few as 10 rows"));
    options.micro_batch = 10;
    DataLoader *loader = make_loader(dataset, options);
    dataloader_destroy(loader);
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
}

#define SEEK_STEPS 9
#define STEP_TOKENS (2 * 2 * 14)

static void test_loader_seek_resumes_exactly(void **state) {
    Tokenizer *tok = byte_tokenizer();
    Dataset *dataset = numbered_dataset(tok);
    DataLoader *loader = make_loader(dataset, base_options);
    static int32_t tokens[SEEK_STEPS][STEP_TOKENS], targets[SEEK_STEPS][STEP_TOKENS];
    int64_t n_labels[SEEK_STEPS];
    int saved_epoch = -1;
    int64_t saved_step = -1;
    for (int step = 0; step < SEEK_STEPS; step++) {
        if (step == 4) dataloader_position(loader, &saved_epoch, &saved_step);
        const StepBatch *batch = dataloader_next(loader);
        memcpy(tokens[step], batch->tokens, sizeof tokens[step]);
        memcpy(targets[step], batch->targets, sizeof targets[step]);
        n_labels[step] = batch->n_label_tokens;
    }
    assert_int_equal(saved_epoch, 0);
    assert_int_equal(saved_step, 4);
    int epoch;
    int64_t step_in_epoch;
    dataloader_position(loader, &epoch, &step_in_epoch);
    assert_int_equal(epoch, 1); // 6 steps per epoch
    assert_int_equal(step_in_epoch, 3);

    DataLoader *resumed = make_loader(dataset, base_options);
    dataloader_seek(resumed, saved_epoch, saved_step);
    for (int step = 4; step < SEEK_STEPS; step++) {
        const StepBatch *batch = dataloader_next(resumed);
        assert_memory_equal(batch->tokens, tokens[step], sizeof tokens[step]);
        assert_memory_equal(batch->targets, targets[step], sizeof targets[step]);
        assert_int_equal(batch->n_label_tokens, n_labels[step]);
    }
    dataloader_seek(resumed, 1, 0); // a seek backwards rebuilds epoch 1's order
    assert_memory_equal(dataloader_next(resumed)->tokens, tokens[6], sizeof tokens[6]);
    dataloader_destroy(loader);
    dataloader_destroy(resumed);
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
}

// ----------------------------------------------------------------------------
// demo data

static const char *const demo_colours[] = {"red", "green", "blue", "yellow"};

static int shape_index(const char *shape) {
    const char *shapes[] = {"circle", "square", "star", "heart"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(shape, shapes[i]) == 0) return i;
    }
    fail_msg("unknown demo shape \"%s\"", shape);
    return -1;
}

// Checks one demo line against colour = colours[(shape + number) % 4]; returns 1 for a chat.
static int check_demo_record(json_object *record) {
    char shape[16], colour[16];
    int number;
    json_object *field;
    if (json_object_object_get_ex(record, "text", &field)) {
        assert_int_equal(sscanf(json_object_get_string(field), "The %15s number %d is %15[a-z].", shape, &number,
                                colour), 3);
        assert_string_equal(colour, demo_colours[(shape_index(shape) + number) % 4]);
        return 0;
    }
    json_object *messages = get(record, "messages");
    size_t n = json_object_array_length(messages);
    json_object *question = get(json_object_array_get_idx(messages, n - 2), "content");
    json_object *answer = get(json_object_array_get_idx(messages, n - 1), "content");
    assert_int_equal(sscanf(json_object_get_string(question), "What colour is the %15s number %d?", shape, &number),
                     2);
    assert_int_equal(sscanf(json_object_get_string(answer), "%15[a-z].", colour), 1);
    assert_string_equal(colour, demo_colours[(shape_index(shape) + number) % 4]);
    return 1;
}

static void test_demo_data(void **state) {
    const char *dir = make_temp_dir("data-demo");
    char a[512], b[512], c[512];
    snprintf(a, sizeof a, "%s/a.jsonl", dir);
    snprintf(b, sizeof b, "%s/b.jsonl", dir);
    snprintf(c, sizeof c, "%s/c.jsonl", dir);
    Error err = {0};
    assert_true(dataset_write_demo_jsonl(a, 200, 42, &err));
    assert_true(dataset_write_demo_jsonl(b, 200, 42, &err));
    assert_true(dataset_write_demo_jsonl(c, 200, 43, &err));
    char *text_a, *text_b, *text_c;
    size_t size_a, size_b, size_c;
    assert_true(read_file(a, &text_a, &size_a, &err));
    assert_true(read_file(b, &text_b, &size_b, &err));
    assert_true(read_file(c, &text_c, &size_c, &err));
    assert_int_equal(size_a, size_b);
    assert_memory_equal(text_a, text_b, size_a);
    assert_true(size_a != size_c || memcmp(text_a, text_c, size_a) != 0);

    int n_chats = 0, n_lines = 0;
    for (char *line = strtok(text_a, "\n"); line; line = strtok(NULL, "\n"), n_lines++) {
        json_object *record = json_tokener_parse(line);
        assert_non_null(record);
        n_chats += check_demo_record(record);
        json_object_put(record);
    }
    assert_int_equal(n_lines, 200);
    assert_in_range(n_chats, 100, 190); // mostly chats, some text records

    Tokenizer *tok = byte_tokenizer();
    Dataset *dataset = open_dataset(a, 64, tok); // every demo record fits in 64 tokens
    assert_int_equal(dataset_size(dataset), 200);
    assert_int_equal(dataset_truncated_count(dataset), 0);
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
    assert_false(dataset_write_demo_jsonl("/nonexistent/demo.jsonl", 10, 1, &err));
    assert_non_null(strstr(err.message, "/nonexistent/demo.jsonl"));
    free(text_a);
    free(text_b);
    free(text_c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_round_trip),
        cmocka_unit_test(test_special_tokens),
        cmocka_unit_test(test_three_turn_chat_labels),
        cmocka_unit_test(test_truncation_and_text),
        cmocka_unit_test(test_unknown_role),
        cmocka_unit_test(test_dataset_matches_reference),
        cmocka_unit_test(test_malformed_lines),
        cmocka_unit_test(test_loader_matches_reference),
        cmocka_unit_test(test_loader_epochs),
        cmocka_unit_test(test_loader_drops_remainder),
        cmocka_unit_test(test_loader_ranks_partition_step),
        cmocka_unit_test(test_loader_seek_resumes_exactly),
        cmocka_unit_test(test_pack_layout_and_epochs),
        cmocka_unit_test(test_pack_seek_resumes_exactly),
        cmocka_unit_test(test_pack_ranks_take_disjoint_rows),
        cmocka_unit_test(test_pack_needs_one_step_of_rows),
        cmocka_unit_test(test_demo_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
