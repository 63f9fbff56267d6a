// Chat templates: ids and assistant labels of multi-turn chats (with and
// without a system turn) against transformers' apply_chat_template(...,
// tokenize=True, return_assistant_tokens_mask=True) on the tokenizer
// fixtures (tests/fixtures/chat_templates, from scripts/ref_chat_templates.py);
// recognition of the template from tokenizer_config.json's chat_template or
// chat_template.jinja (transformers 5), and an unrecognised one reported once;
// tokenizer_load's choice of kind; LLaVA records through the same templates.
#include "test_util.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"

#define FIXTURES "tests/fixtures/chat_templates/"
#define MAX_TURNS 8
#define IMAGE_TOKENS 3
#define PNG_FIXTURE "images/pngsuite/basn2c08.png"

typedef struct Chat {
    const char *roles[MAX_TURNS];
    const char *contents[MAX_TURNS];
    int n_turns;
} Chat;

typedef struct Reference {
    json_object *root;
    char folder[512]; // the tokenizer's folder
} Reference;

// Loads FIXTURES<case>.json; skips when its tokenizer folder is absent.
static Reference load_reference(const char *case_name) {
    char path[256];
    snprintf(path, sizeof path, FIXTURES "%s.json", case_name);
    Reference ref = {.root = json_object_from_file(path)};
    if (!ref.root) fail_msg("%s: %s", path, json_util_get_last_err());
    json_object *folder;
    assert_true(json_object_object_get_ex(ref.root, "tokenizer", &folder));
    snprintf(ref.folder, sizeof ref.folder, "%s", json_object_get_string(folder));
    char tokenizer_json[600];
    snprintf(tokenizer_json, sizeof tokenizer_json, "%s/tokenizer.json", ref.folder);
    if (!path_exists(tokenizer_json)) {
        json_object_put(ref.root);
        print_message("%s is missing\n", tokenizer_json);
        skip();
    }
    return ref;
}

static json_object *member(json_object *obj, const char *key) {
    json_object *value;
    if (!json_object_object_get_ex(obj, key, &value)) fail_msg("reference has no \"%s\"", key);
    return value;
}

static Chat chat_of(json_object *rendering) {
    json_object *messages = member(rendering, "messages");
    Chat chat = {.n_turns = (int)json_object_array_length(messages)};
    assert_true(chat.n_turns <= MAX_TURNS);
    for (int i = 0; i < chat.n_turns; i++) {
        json_object *message = json_object_array_get_idx(messages, (size_t)i);
        chat.roles[i] = json_object_get_string(member(message, "role"));
        chat.contents[i] = json_object_get_string(member(message, "content"));
    }
    return chat;
}

static Tokenizer *load_tokenizer(const char *path) {
    Error err = {0};
    Tokenizer *tok = tokenizer_load(path, &err);
    if (!tok) fail_msg("tokenizer_load(%s): %s", path, err.message);
    return tok;
}

// ids equal the reference; labels are the id where the mask is 1, -100 elsewhere.
static void assert_matches(const int32_t *ids, const int32_t *labels, int length, json_object *rendering,
                           const char *what) {
    json_object *ref_ids = member(rendering, "ids"), *mask = member(rendering, "assistant_mask");
    if (length != (int)json_object_array_length(ref_ids))
        fail_msg("%s: %d ids, transformers has %d", what, length, (int)json_object_array_length(ref_ids));
    for (int t = 0; t < length; t++) {
        int expected = json_object_get_int(json_object_array_get_idx(ref_ids, (size_t)t));
        bool trained = json_object_get_int(json_object_array_get_idx(mask, (size_t)t)) == 1;
        if (ids[t] != expected) fail_msg("%s: id %d at %d, transformers has %d", what, ids[t], t, expected);
        if (labels[t] != (trained ? ids[t] : IGNORE_INDEX))
            fail_msg("%s: label %d at %d (id %d), assistant mask %d", what, labels[t], t, ids[t], trained);
    }
}

static void check_rendering(const Tokenizer *tok, json_object *rendering, const char *what) {
    Chat chat = chat_of(rendering);
    Sample sample;
    Error err = {0};
    if (!sample_from_messages(tok, chat.roles, chat.contents, chat.n_turns, 1 << 20, &sample, &err))
        fail_msg("%s: %s", what, err.message);
    assert_matches(sample.ids, sample.labels, sample.length, rendering, what);
    sample_free(&sample);
}

static void check_case(const char *case_name) {
    Reference ref = load_reference(case_name);
    Tokenizer *tok = load_tokenizer(ref.folder);
    json_object *renderings = member(ref.root, "renderings");
    for (size_t i = 0; i < json_object_array_length(renderings); i++) {
        json_object *rendering = json_object_array_get_idx(renderings, i);
        const char *template_name = json_object_get_string(member(rendering, "template"));
        Error err = {0};
        assert_true(tokenizer_set_chat_template(tok, template_name, &err));
        assert_string_equal(tokenizer_chat_template(tok), template_name);
        char what[128];
        snprintf(what, sizeof what, "%s %s chat %zu", case_name, template_name, i);
        check_rendering(tok, rendering, what);
    }
    tokenizer_destroy(tok);
    json_object_put(ref.root);
}

static void test_llama3_style(void **state) { (void)state; check_case("llama3_style"); }
static void test_sentencepiece_style(void **state) { (void)state; check_case("sentencepiece_style"); }
static void test_mistral(void **state) { (void)state; check_case("mistral"); }

// ----------------------------------------------------------------------------
// recognition from tokenizer_config.json

static void copy_file(const char *from, const char *to) {
    char *data;
    size_t size;
    Error err = {0};
    if (!read_file(from, &data, &size, &err)) fail_msg("%s", err.message);
    FILE *f = fopen(to, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, size, f), size);
    assert_int_equal(fclose(f), 0);
    free(data);
}

// A model folder: the case's tokenizer.json and a tokenizer_config.json whose
// chat_template is FIXTURES<template>.jinja.
static const char *make_model_folder(const Reference *ref, const char *template_name) {
    const char *dir = make_temp_dir(template_name);
    char from[600], to[600], jinja_path[256];
    snprintf(from, sizeof from, "%s/tokenizer.json", ref->folder);
    snprintf(to, sizeof to, "%s/tokenizer.json", dir);
    copy_file(from, to);
    snprintf(jinja_path, sizeof jinja_path, FIXTURES "%s.jinja", template_name);
    char *jinja;
    size_t size;
    Error err = {0};
    if (!read_file(jinja_path, &jinja, &size, &err)) fail_msg("%s", err.message);
    json_object *config = json_object_new_object();
    json_object_object_add(config, "bos_token", json_object_get(member(ref->root, "bos_token")));
    json_object *eos = json_object_new_object();
    json_object_object_add(eos, "content", json_object_get(member(ref->root, "eos_token")));
    json_object_object_add(config, "eos_token", eos);
    json_object_object_add(config, "chat_template", json_object_new_string_len(jinja, (int)size));
    snprintf(to, sizeof to, "%s/tokenizer_config.json", dir);
    assert_int_equal(json_object_to_file(to, config), 0);
    json_object_put(config);
    free(jinja);
    return dir;
}

static void check_recognised(const char *case_name, const char *template_name) {
    Reference ref = load_reference(case_name);
    const char *dir = make_model_folder(&ref, template_name);
    Tokenizer *tok = load_tokenizer(dir);
    assert_string_equal(tokenizer_chat_template(tok), template_name);
    Error err = {0};
    assert_true(tokenizer_set_chat_template(tok, "auto", &err));
    assert_string_equal(tokenizer_chat_template(tok), template_name);
    json_object *renderings = member(ref.root, "renderings");
    for (size_t i = 0; i < json_object_array_length(renderings); i++) {
        json_object *rendering = json_object_array_get_idx(renderings, i);
        if (strcmp(json_object_get_string(member(rendering, "template")), template_name) == 0)
            check_rendering(tok, rendering, template_name);
    }
    tokenizer_destroy(tok);
    assert_true(remove_tree(dir, &err));
    json_object_put(ref.root);
}

static void test_recognised_from_config(void **state) {
    (void)state;
    check_recognised("llama3_style", "llama3");
    check_recognised("sentencepiece_style", "llama2");
    check_recognised("sentencepiece_style", "vicuna_v1");
}

static void write_text_file(const char *dir, const char *name, const char *text) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

// transformers 5 keeps the template in chat_template.jinja (and prefers it);
// a template lora-train cannot render stops a chat dataset with one error that
// names the file, instead of skipping every record for the same reason.
static void test_chat_template_jinja(void **state) {
    (void)state;
    Reference ref = load_reference("sentencepiece_style");
    const char *dir = make_model_folder(&ref, "llama2");
    char *llama3;
    size_t size;
    Error err = {0};
    if (!read_file(FIXTURES "llama3.jinja", &llama3, &size, &err)) fail_msg("%s", err.message);
    write_text_file(dir, "chat_template.jinja", llama3);
    free(llama3);
    Tokenizer *tok = load_tokenizer(dir);
    assert_string_equal(tokenizer_chat_template(tok), "llama3");
    tokenizer_destroy(tok);

    write_text_file(dir, "chat_template.jinja", "{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}");
    tok = load_tokenizer(dir);
    assert_string_equal(tokenizer_chat_template(tok), "none");
    char records[600];
    snprintf(records, sizeof records, "%s/chats.jsonl", dir);
    FILE *f = fopen(records, "w");
    assert_non_null(f);
    for (int i = 0; i < 400; i++)
        fprintf(f, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n");
    assert_int_equal(fclose(f), 0);
    assert_null(dataset_open_jsonl(records, tok, 64, &err));
    assert_non_null(strstr(err.message, "chats.jsonl:1: "));
    assert_non_null(strstr(err.message, "chat_template.jinja: its chat template is none of those"));
    assert_non_null(strstr(err.message, "set data.template"));
    VlmDatasetOptions options = {.path = records, .images = dir, .tok = tok, .max_seq_len = 64, .n_image_tokens = 1,
                                 .image_token_id = 0, .preprocess = image_preprocess_clip336(IMAGE_FIT_PAD)};
    assert_null(vlm_dataset_open(&options, &err));
    assert_non_null(strstr(err.message, "chat_template.jinja: its chat template is none of those"));
    tokenizer_destroy(tok);
    assert_true(remove_tree(dir, &err));
    json_object_put(ref.root);
}

// ----------------------------------------------------------------------------
// tokenizer kinds and errors

static void test_kinds_and_errors(void **state) {
    (void)state;
    const char *dir = make_temp_dir("no-tokenizer");
    Tokenizer *bytes = load_tokenizer(dir);
    assert_string_equal(tokenizer_chat_template(bytes), "bytes");
    assert_int_equal(tokenizer_vocab_size(bytes), 262);
    Error err = {0};
    assert_false(tokenizer_set_chat_template(bytes, "llama3", &err));
    assert_non_null(strstr(err.message, "llama3"));
    tokenizer_destroy(bytes);

    Tokenizer *tok = load_tokenizer("tests/fixtures/hf_tokenizer/sentencepiece_style/tokenizer.json");
    assert_string_equal(tokenizer_chat_template(tok), "none");
    assert_int_equal(tokenizer_token_id(tok, "<s>"), tokenizer_bos(tok));
    const char *roles[] = {"user", "assistant"}, *contents[] = {"hi", "hello"};
    Sample sample;
    assert_false(sample_from_messages(tok, roles, contents, 2, 64, &sample, &err));
    assert_non_null(strstr(err.message, "data.template"));
    assert_false(tokenizer_set_chat_template(tok, "chatml", &err));
    assert_non_null(strstr(err.message, "chatml"));
    assert_true(tokenizer_set_chat_template(tok, "llama2", &err));
    const char *unordered[] = {"assistant", "user"};
    assert_false(sample_from_messages(tok, unordered, contents, 2, 64, &sample, &err));
    assert_non_null(strstr(err.message, "alternating"));
    tokenizer_destroy(tok);
    assert_true(remove_tree(dir, &err));
}

// ----------------------------------------------------------------------------
// LLaVA records

static const char *llava_role(const char *role) { return strcmp(role, "user") == 0 ? "human" : "gpt"; }

// One JSONL record of the rendering's chat; with_image adds "image": "cat.png".
static void write_record(FILE *f, json_object *rendering, bool with_image) {
    Chat chat = chat_of(rendering);
    json_object *record = json_object_new_object(), *turns = json_object_new_array();
    if (with_image) json_object_object_add(record, "image", json_object_new_string("cat.png"));
    for (int i = 0; i < chat.n_turns; i++) {
        json_object *turn = json_object_new_object();
        json_object_object_add(turn, "from", json_object_new_string(llava_role(chat.roles[i])));
        json_object_object_add(turn, "value", json_object_new_string(chat.contents[i]));
        json_object_array_add(turns, turn);
    }
    json_object_object_add(record, "conversations", turns);
    fprintf(f, "%s\n", json_object_to_json_string_ext(record, JSON_C_TO_STRING_PLAIN));
    json_object_put(record);
}

static void load_sample(VlmDataset *dataset, int64_t i, VlmSample *sample) {
    Error err = {0};
    bool skipped = false;
    if (!vlm_dataset_load(dataset, i, sample, &skipped, &err)) fail_msg("%s", err.message);
    assert_false(skipped);
}

// Chat 0 (no <image>) as a text-only record renders as transformers does; chat
// 2 with its image has IMAGE_TOKENS image ids in place of "<image>" and the
// same trained ids as transformers.
static void test_llava_records(void **state) {
    (void)state;
    const char *png = shared_fixture(PNG_FIXTURE);
    if (!png) {
        print_message("../shared/fixtures/" PNG_FIXTURE " is missing\n");
        skip();
    }
    Reference ref = load_reference("llama3_style");
    const char *dir = make_model_folder(&ref, "llama3");
    char records[600], image[600];
    snprintf(records, sizeof records, "%s/records.jsonl", dir);
    snprintf(image, sizeof image, "%s/cat.png", dir);
    copy_file(png, image);
    json_object *renderings = member(ref.root, "renderings");
    json_object *plain_chat = json_object_array_get_idx(renderings, 0), *image_chat = json_object_array_get_idx(renderings, 2);
    FILE *f = fopen(records, "w");
    assert_non_null(f);
    write_record(f, plain_chat, false);
    write_record(f, image_chat, true);
    assert_int_equal(fclose(f), 0);

    Tokenizer *tok = load_tokenizer(dir);
    int32_t image_token = tokenizer_vocab_size(tok);
    static const float MEAN[3] = {0.5f, 0.5f, 0.5f}, STD[3] = {0.5f, 0.5f, 0.5f};
    VlmDatasetOptions options = {.path = records, .images = dir, .tok = tok, .max_seq_len = 4096,
                                 .n_image_tokens = IMAGE_TOKENS, .image_token_id = image_token,
                                 .preprocess = image_preprocess_square(8, MEAN, STD)};
    Error err = {0};
    VlmDataset *dataset = vlm_dataset_open(&options, &err);
    if (!dataset) fail_msg("%s", err.message);
    assert_int_equal(vlm_dataset_size(dataset), 2);

    VlmSample text_only = {0}, with_image = {0};
    load_sample(dataset, 0, &text_only);
    assert_matches(text_only.text.ids, text_only.text.labels, text_only.text.length, plain_chat, "text-only record");
    load_sample(dataset, 1, &with_image);
    assert_true(with_image.has_image);
    int n_image = 0, n_trained = 0;
    json_object *ref_ids = member(image_chat, "ids"), *mask = member(image_chat, "assistant_mask");
    for (int t = 0; t < with_image.text.length; t++) {
        n_image += with_image.text.ids[t] == image_token;
        if (with_image.text.labels[t] == IGNORE_INDEX) continue;
        while (json_object_get_int(json_object_array_get_idx(mask, (size_t)n_trained)) == 0) n_trained++;
        assert_int_equal(with_image.text.labels[t], json_object_get_int(json_object_array_get_idx(ref_ids, (size_t)n_trained)));
        n_trained++;
    }
    assert_int_equal(n_image, IMAGE_TOKENS);
    vlm_sample_free(&text_only);
    vlm_sample_free(&with_image);
    vlm_dataset_destroy(dataset);
    tokenizer_destroy(tok);
    assert_true(remove_tree(dir, &err));
    json_object_put(ref.root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama3_style),
        cmocka_unit_test(test_sentencepiece_style),
        cmocka_unit_test(test_mistral),
        cmocka_unit_test(test_recognised_from_config),
        cmocka_unit_test(test_chat_template_jinja),
        cmocka_unit_test(test_kinds_and_errors),
        cmocka_unit_test(test_llava_records),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
