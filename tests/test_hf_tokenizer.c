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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_reference_cases),
        cmocka_unit_test(test_project_reference_cases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
