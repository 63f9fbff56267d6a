// Hugging Face tokenizer.json: every case of every shared fixture's
// reference.json (made by the Rust `tokenizers` library) must match exactly:
// ids, ids with special tokens, token texts and the decoded string.
#include <dirent.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"
#include "test_util.h"

static bool ids_equal(const int32_t *ids, int n, json_object *expected) {
    if (!expected || (int)json_object_array_length(expected) != n) return false;
    for (int i = 0; i < n; i++) {
        if (ids[i] != json_object_get_int(json_object_array_get_idx(expected, (size_t)i))) return false;
    }
    return true;
}

static bool tokens_equal(const HfTokenizer *tok, const int32_t *ids, int n, json_object *expected) {
    if (!expected || (int)json_object_array_length(expected) != n) return false;
    for (int i = 0; i < n; i++) {
        const char *token = hf_tokenizer_id_to_token(tok, ids[i]);
        const char *want = json_object_get_string(json_object_array_get_idx(expected, (size_t)i));
        if (!token || strcmp(token, want) != 0) return false;
    }
    return true;
}

static void print_ids(const char *label, const int32_t *ids, int n) {
    char line[1024];
    int used = snprintf(line, sizeof line, "%s:", label);
    for (int i = 0; i < n && used < (int)sizeof line - 16; i++) used += snprintf(line + used, sizeof line - used, " %d", ids[i]);
    print_message("    %s\n", line);
}

// Checks one reference case; prints what differs. Returns true when all match.
static bool check_case(const HfTokenizer *tok, json_object *c, const char *name, int index) {
    json_object *text_obj = NULL, *ids_obj = NULL, *special_obj = NULL, *tokens_obj = NULL, *decoded_obj = NULL;
    json_object *skipped_obj = NULL; // decode(ids_with_special, skip_special_tokens=true), when given
    json_object_object_get_ex(c, "text", &text_obj);
    json_object_object_get_ex(c, "ids", &ids_obj);
    json_object_object_get_ex(c, "ids_with_special", &special_obj);
    json_object_object_get_ex(c, "tokens", &tokens_obj);
    json_object_object_get_ex(c, "decoded", &decoded_obj);
    json_object_object_get_ex(c, "decoded_skip_special", &skipped_obj);
    const char *text = json_object_get_string(text_obj);
    size_t len = (size_t)json_object_get_string_len(text_obj);
    Error err = {0};
    int32_t *ids = NULL, *special = NULL;
    int n = 0, n_special = 0;
    bool ok = hf_tokenizer_encode(tok, text, len, false, &ids, &n, &err) &&
              hf_tokenizer_encode(tok, text, len, true, &special, &n_special, &err);
    char *decoded = ok ? hf_tokenizer_decode(tok, ids, n, false, &err) : NULL;
    char *skipped = ok && skipped_obj ? hf_tokenizer_decode(tok, special, n_special, true, &err) : NULL;
    bool ids_ok = ok && ids_equal(ids, n, ids_obj);
    bool special_ok = ok && ids_equal(special, n_special, special_obj);
    bool tokens_ok = ok && tokens_equal(tok, ids, n, tokens_obj);
    bool decoded_ok = decoded && strcmp(decoded, json_object_get_string(decoded_obj)) == 0;
    bool skipped_ok = !skipped_obj || (skipped && strcmp(skipped, json_object_get_string(skipped_obj)) == 0);
    bool pass = ids_ok && special_ok && tokens_ok && decoded_ok && skipped_ok;
    if (!pass) {
        print_message("  %s case %d %s: ids %s, ids_with_special %s, tokens %s, decoded %s, skip_special %s %s\n",
                      name, index, json_object_to_json_string(text_obj), ids_ok ? "ok" : "DIFFER",
                      special_ok ? "ok" : "DIFFER", tokens_ok ? "ok" : "DIFFER", decoded_ok ? "ok" : "DIFFER",
                      skipped_ok ? "ok" : "DIFFER", err.message);
        if (ok && !ids_ok) print_ids("got ids", ids, n);
        if (ok && !special_ok) print_ids("got ids_with_special", special, n_special);
        if (decoded && !decoded_ok) print_message("    got decoded: %s\n", decoded);
        if (skipped && !skipped_ok) print_message("    got decoded with skip_special_tokens: %s\n", skipped);
    }
    free(ids);
    free(special);
    free(decoded);
    free(skipped);
    return pass;
}

// Runs every case of one fixture directory; returns the number of failures.
static int check_fixture(const char *dir, const char *name) {
    char path[1100];
    Error err = {0};
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    HfTokenizer *tok = hf_tokenizer_load(path, &err);
    if (!tok) fail_msg("%s", err.message);
    snprintf(path, sizeof path, "%s/reference.json", dir);
    json_object *reference = json_object_from_file(path);
    json_object *cases = NULL;
    if (!reference || !json_object_object_get_ex(reference, "cases", &cases)) fail_msg("%s: no \"cases\"", path);
    int n_cases = (int)json_object_array_length(cases), passed = 0;
    for (int i = 0; i < n_cases; i++) passed += check_case(tok, json_object_array_get_idx(cases, (size_t)i), name, i);
    print_message("hf_tokenizer %s: %d/%d reference cases identical\n", name, passed, n_cases);
    json_object_put(reference);
    hf_tokenizer_destroy(tok);
    return n_cases - passed;
}

// Checks every <root>/<name>/ holding a reference.json; returns how many.
static int check_fixture_root(const char *root, int *failures) {
    DIR *dir = opendir(root);
    assert_non_null(dir);
    int n_tokenizers = 0;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s/reference.json", root, entry->d_name);
        if (entry->d_name[0] == '.' || !path_exists(path)) continue;
        snprintf(path, sizeof path, "%s/%s", root, entry->d_name);
        *failures += check_fixture(path, entry->d_name);
        n_tokenizers++;
    }
    closedir(dir);
    return n_tokenizers;
}

// Real tokenizers (GPT-2, Mistral) against tokenizers 0.22.2.
static void test_shared_reference_cases(void **state) {
    const char *root = shared_fixture("tokenizers");
    if (!root) {
        print_message("no ../shared/fixtures/tokenizers: real tokenizers not checked\n");
        skip();
    }
    char path[1024];
    snprintf(path, sizeof path, "%s", root);
    int failures = 0;
    assert_true(check_fixture_root(path, &failures) > 0);
    assert_int_equal(failures, 0);
}

// Small trained tokenizers covering the other components (scripts/ref_hf_tokenizer.py).
static void test_project_reference_cases(void **state) {
    const char *root = "tests/fixtures/hf_tokenizer";
    if (!path_exists(root)) {
        print_message("no %s (run scripts/ref_hf_tokenizer.py)\n", root);
        skip();
    }
    int failures = 0;
    assert_int_equal(check_fixture_root(root, &failures), 3);
    assert_int_equal(failures, 0);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

// Loading a bad tokenizer.json fails with a message naming the problem.
static void expect_load_error(const char *dir, const char *json, const char *needle) {
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    write_text(path, json);
    Error err = {0};
    HfTokenizer *tok = hf_tokenizer_load(path, &err);
    assert_null(tok);
    if (!strstr(err.message, needle) || !strstr(err.message, path)) fail_msg("error \"%s\" lacks \"%s\"", err.message, needle);
}

static void test_load_errors(void **state) {
    const char *dir = make_temp_dir("hf_tokenizer");
    Error err = {0};
    assert_null(hf_tokenizer_load("/nonexistent/tokenizer.json", &err));
    assert_non_null(strstr(err.message, "/nonexistent/tokenizer.json"));
    expect_load_error(dir, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0", "invalid JSON");
    expect_load_error(dir, "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", "\"Unigram\" is not supported");
    expect_load_error(dir, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
                      "token ab is not in the vocab");
    expect_load_error(dir, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                           " \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(a\"}, \"behavior\": \"Isolated\"}}",
                      "pre-tokenizer Split: regex /(a/");
    expect_load_error(dir, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                           " \"normalizer\": {\"type\": \"Lowercase\"}}", "normalizer type \"Lowercase\" is not supported");
}

// Vocabulary lookups, invalid UTF-8 input and unknown ids on GPT-2.
static void test_vocabulary_and_bad_input(void **state) {
    const char *path = shared_fixture("tokenizers/gpt2/tokenizer.json");
    if (!path) {
        print_message("no ../shared/fixtures/tokenizers/gpt2: vocabulary not checked\n");
        skip();
    }
    Error err = {0};
    HfTokenizer *tok = hf_tokenizer_load(path, &err);
    if (!tok) fail_msg("%s", err.message);
    assert_int_equal(hf_tokenizer_vocab_size(tok), 50257);
    assert_int_equal(hf_tokenizer_token_to_id(tok, "<|endoftext|>"), 50256);
    assert_int_equal(hf_tokenizer_token_to_id(tok, "\xc4\xa0world"), 995); // "Ġworld"
    assert_int_equal(hf_tokenizer_token_to_id(tok, "no such token"), -1);
    assert_true(hf_tokenizer_is_special(tok, 50256));
    assert_false(hf_tokenizer_is_special(tok, 995));
    assert_string_equal(hf_tokenizer_id_to_token(tok, 15496), "Hello");
    assert_null(hf_tokenizer_id_to_token(tok, 50257));
    int32_t *ids = NULL;
    int n = 0;
    assert_false(hf_tokenizer_encode(tok, "ok\xff", 3, false, &ids, &n, &err));
    assert_non_null(strstr(err.message, "not valid UTF-8 (byte 2)"));
    int32_t bad[] = {15496, 50257};
    assert_null(hf_tokenizer_decode(tok, bad, 2, false, &err));
    assert_non_null(strstr(err.message, "token id 50257 at position 1"));
    int32_t with_special[] = {15496, 50256, 995};
    char *text = hf_tokenizer_decode(tok, with_special, 3, true, &err);
    assert_string_equal(text, "Hello \xc4\xa0world"); // no decoder in GPT-2's file: tokens joined by spaces
    free(text);
    hf_tokenizer_destroy(tok);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_reference_cases),
        cmocka_unit_test(test_project_reference_cases),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_vocabulary_and_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
