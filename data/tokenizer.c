// Tokenizers behind one interface: the byte-level one (ids 0..255 are the
// bytes of the UTF-8 text, then the specials below; specials enter a sequence
// through their ids, never through text) and a Hugging Face tokenizer.json
// with its tokenizer_config.json (BOS/EOS/pad tokens, chat template).
#include "data.h"
#include "data_private.h"

#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define BYTE_VOCAB 256

static const char *const byte_specials[] = {
    "<bos>", "<eos>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>",
};
#define N_BYTE_SPECIALS ((int)(sizeof byte_specials / sizeof byte_specials[0]))

struct Tokenizer {
    HfTokenizer *hf;         // NULL for the byte tokenizer
    int vocab_size;
    int bos_id, eos_id, pad_id;
    ChatTemplate chat_template;
    char template_source[4096 + 64]; // the file the recognised (or unrecognised) template came from; "" none
};

Tokenizer *tokenizer_bytes(Error *err) {
    Tokenizer *tok = checked_calloc(1, sizeof *tok, "the byte tokenizer", err);
    if (!tok) return NULL;
    tok->vocab_size = BYTE_VOCAB + N_BYTE_SPECIALS;
    tok->bos_id = tokenizer_token_id(tok, "<bos>");
    tok->eos_id = tokenizer_token_id(tok, "<eos>");
    tok->pad_id = tokenizer_token_id(tok, "<pad>");
    tok->chat_template = CHAT_TEMPLATE_BYTES;
    return tok;
}

// ----------------------------------------------------------------------------
// Hugging Face folders

// A special token of tokenizer_config.json: "<s>" or {"content": "<s>", ...}; NULL when absent.
static const char *config_token(json_object *config, const char *key) {
    json_object *value;
    if (!config || !json_object_object_get_ex(config, key, &value)) return NULL;
    if (json_object_is_type(value, json_type_object) && !json_object_object_get_ex(value, "content", &value))
        return NULL;
    return json_object_is_type(value, json_type_string) ? json_object_get_string(value) : NULL;
}

// chat_template: a string, or a list of {name, template} where "default" counts.
static const char *config_chat_template(json_object *config) {
    json_object *value;
    if (!config || !json_object_object_get_ex(config, "chat_template", &value)) return NULL;
    if (json_object_is_type(value, json_type_string)) return json_object_get_string(value);
    if (!json_object_is_type(value, json_type_array)) return NULL;
    for (size_t i = 0; i < json_object_array_length(value); i++) {
        json_object *entry = json_object_array_get_idx(value, i), *name, *text;
        if (json_object_object_get_ex(entry, "name", &name) && json_object_object_get_ex(entry, "template", &text) &&
            strcmp(json_object_get_string(name), "default") == 0)
            return json_object_get_string(text);
    }
    return NULL;
}

// The id of the configured token, else of the first known spelling present.
static int special_id(const HfTokenizer *hf, const char *configured, const char *const *known) {
    if (configured) return hf_tokenizer_token_to_id(hf, configured);
    for (; *known; known++) {
        int id = hf_tokenizer_token_to_id(hf, *known);
        if (id >= 0) return id;
    }
    return -1;
}

static bool resolve_specials(Tokenizer *tok, json_object *config, const char *path, Error *err) {
    static const char *const bos_names[] = {"<|begin_of_text|>", "<s>", "<bos>", "<|endoftext|>", NULL};
    static const char *const eos_names[] = {"<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", NULL};
    static const char *const none[] = {NULL};
    tok->bos_id = special_id(tok->hf, config_token(config, "bos_token"), bos_names);
    tok->eos_id = special_id(tok->hf, config_token(config, "eos_token"), eos_names);
    int pad = special_id(tok->hf, config_token(config, "pad_token"), none);
    tok->pad_id = pad >= 0 ? pad : tok->eos_id;
    if (tok->bos_id < 0) return fail(err, "%s: no BOS token (bos_token in tokenizer_config.json, or <s>)", path);
    if (tok->eos_id < 0) return fail(err, "%s: no EOS token (eos_token in tokenizer_config.json, or </s>)", path);
    return true;
}

// The chat template: chat_template.jinja beside tokenizer.json (transformers 5
// saves it there, and prefers it), else tokenizer_config.json's chat_template.
static bool load_chat_template(Tokenizer *tok, const char *folder, json_object *config, const char *config_path,
                               Error *err) {
    char jinja_path[4096 + 32], *jinja_text = NULL;
    size_t size;
    snprintf(jinja_path, sizeof jinja_path, "%s/chat_template.jinja", folder);
    if (path_exists(jinja_path) && !read_file(jinja_path, &jinja_text, &size, err)) return false;
    const char *jinja = jinja_text ? jinja_text : config_chat_template(config);
    tok->chat_template = jinja ? chat_template_recognise(jinja) : CHAT_TEMPLATE_NONE;
    if (jinja) snprintf(tok->template_source, sizeof tok->template_source, "%s", jinja_text ? jinja_path : config_path);
    free(jinja_text);
    return true;
}

// Reads tokenizer_config.json and chat_template.jinja beside tokenizer.json, when there are.
static bool load_hf_config(Tokenizer *tok, const char *folder, const char *json_path, Error *err) {
    char config_path[4096 + 32];
    snprintf(config_path, sizeof config_path, "%s/tokenizer_config.json", folder);
    json_object *config = NULL;
    if (path_exists(config_path) && !(config = json_object_from_file(config_path)))
        return fail(err, "%s: not valid JSON (%s)", config_path, json_util_get_last_err());
    bool ok = resolve_specials(tok, config, json_path, err) && load_chat_template(tok, folder, config, config_path, err);
    json_object_put(config);
    return ok;
}

static bool is_directory(const char *path) {
    struct stat info;
    return stat(path, &info) == 0 && S_ISDIR(info.st_mode);
}

Tokenizer *tokenizer_load(const char *model_dir_or_file, Error *err) {
    char folder[4096], json_path[4096 + 32];
    snprintf(folder, sizeof folder, "%s", model_dir_or_file);
    if (is_directory(folder)) {
        snprintf(json_path, sizeof json_path, "%s/tokenizer.json", folder);
        if (!path_exists(json_path)) return tokenizer_bytes(err);
    } else {
        snprintf(json_path, sizeof json_path, "%s", model_dir_or_file);
        char *slash = strrchr(folder, '/');
        if (slash) *slash = '\0';
        else snprintf(folder, sizeof folder, ".");
    }
    Tokenizer *tok = checked_calloc(1, sizeof *tok, "a tokenizer", err);
    if (!tok) return NULL;
    if (!(tok->hf = hf_tokenizer_load(json_path, err)) || !load_hf_config(tok, folder, json_path, err)) {
        tokenizer_destroy(tok);
        return NULL;
    }
    tok->vocab_size = hf_tokenizer_vocab_size(tok->hf);
    return tok;
}

void tokenizer_destroy(Tokenizer *tok) {
    if (tok) hf_tokenizer_destroy(tok->hf);
    free(tok);
}

bool tokenizer_set_chat_template(Tokenizer *tok, const char *name, Error *err) {
    if (strcmp(name, "auto") == 0) return true;
    if (!tok->hf) return fail(err, "chat template '%s' needs a tokenizer.json; the byte tokenizer has its own", name);
    return chat_template_from_name(name, &tok->chat_template, err);
}

const char *tokenizer_chat_template(const Tokenizer *tok) { return chat_template_name(tok->chat_template); }

bool tokenizer_check_chat_template(const Tokenizer *tok, Error *err) {
    if (tok->chat_template != CHAT_TEMPLATE_NONE) return true;
    if (tok->template_source[0])
        return fail(err, "%s: its chat template is none of those lora-train renders (llama3, llama2, vicuna_v1); set "
                         "data.template", tok->template_source);
    return fail(err, "no chat template: the tokenizer's folder has no chat_template.jinja and no chat_template in "
                     "tokenizer_config.json; set data.template");
}

ChatTemplate tokenizer_template_kind(const Tokenizer *tok) { return tok->chat_template; }
const HfTokenizer *tokenizer_hf(const Tokenizer *tok) { return tok->hf; }

int tokenizer_vocab_size(const Tokenizer *tok) { return tok->vocab_size; }
int tokenizer_base_vocab_size(const Tokenizer *tok) {
    return tok->hf ? hf_tokenizer_model_vocab_size(tok->hf) : tok->vocab_size;
}
int tokenizer_bos(const Tokenizer *tok) { return tok->bos_id; }
int tokenizer_eos(const Tokenizer *tok) { return tok->eos_id; }
int tokenizer_pad(const Tokenizer *tok) { return tok->pad_id; }

int tokenizer_token_id(const Tokenizer *tok, const char *token) {
    if (tok->hf) return hf_tokenizer_token_to_id(tok->hf, token);
    for (int i = 0; i < N_BYTE_SPECIALS; i++) {
        if (strcmp(byte_specials[i], token) == 0) return BYTE_VOCAB + i;
    }
    return -1;
}

bool token_ids_reserve(int32_t **ids, int *capacity, int64_t needed, Error *err) {
    if (needed <= *capacity) return true;
    if (needed > INT_MAX) return fail(err, "token sequence of %lld ids is too long", (long long)needed);
    int64_t grown = *capacity < 64 ? 64 : 2 * (int64_t)*capacity;
    if (grown < needed) grown = needed;
    if (grown > INT_MAX) grown = INT_MAX;
    int32_t *bigger = realloc(*ids, (size_t)grown * sizeof **ids);
    if (!bigger) return fail(err, "out of memory growing a token sequence to %lld ids", (long long)grown);
    *ids = bigger;
    *capacity = (int)grown;
    return true;
}

static bool encode_hf(const Tokenizer *tok, const char *text, size_t len, int32_t **ids, int *n_ids, int *capacity,
                      Error *err) {
    int32_t *encoded = NULL;
    int n_encoded = 0;
    if (!hf_tokenizer_encode(tok->hf, text, len, false, &encoded, &n_encoded, err)) return false;
    bool ok = token_ids_reserve(ids, capacity, (int64_t)*n_ids + n_encoded, err);
    if (ok) memcpy(*ids + *n_ids, encoded, (size_t)n_encoded * sizeof *encoded), *n_ids += n_encoded;
    free(encoded);
    return ok;
}

bool tokenizer_encode(const Tokenizer *tok, const char *text, size_t len, int32_t **ids,
                      int *n_ids, int *capacity, Error *err) {
    if (tok->hf) return encode_hf(tok, text, len, ids, n_ids, capacity, err);
    if (!token_ids_reserve(ids, capacity, (int64_t)*n_ids + (int64_t)len, err)) return false;
    const unsigned char *bytes = (const unsigned char *)text;
    for (size_t i = 0; i < len; i++) (*ids)[(*n_ids)++] = bytes[i];
    return true;
}

char *tokenizer_decode(const Tokenizer *tok, const int32_t *ids, int n_ids, Error *err) {
    if (tok->hf) return hf_tokenizer_decode(tok->hf, ids, n_ids, false, err);
    size_t length = 0;
    for (int i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= tok->vocab_size) {
            fail(err, "decoding: token id %d at position %d is outside the vocabulary [0, %d)", ids[i], i,
                 tok->vocab_size);
            return NULL;
        }
        length += ids[i] < BYTE_VOCAB ? 1 : strlen(byte_specials[ids[i] - BYTE_VOCAB]);
    }
    char *text = checked_malloc(length + 1, "decoded text", err);
    if (!text) return NULL;
    char *cursor = text;
    for (int i = 0; i < n_ids; i++) {
        if (ids[i] < BYTE_VOCAB) {
            *cursor++ = (char)ids[i];
        } else {
            const char *special = byte_specials[ids[i] - BYTE_VOCAB];
            size_t special_len = strlen(special);
            memcpy(cursor, special, special_len);
            cursor += special_len;
        }
    }
    *cursor = '\0';
    return text;
}
