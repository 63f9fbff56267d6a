// Reading a Hugging Face tokenizer.json (json-c) into an HfTokenizer: the BPE
// model, added tokens and the normalizer / pre-tokenizer / post-processor /
// decoder, Sequences flattened into lists.
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "hf_tokenizer_internal.h"

// Ids index dense tables: one far beyond any real vocabulary (the largest
// are ~256k) is refused rather than allocated for (json-c also saturates ids
// over INT32_MAX to INT32_MAX, which would overflow max_id + 1).
#define TOKEN_ID_LIMIT (1 << 24)

// GPT-2's pre-tokenizer regex, used by ByteLevel with use_regex.
static const char *gpt2_regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// ----------------------------------------------------------------------------
// json helpers

static json_object *member(json_object *obj, const char *key) {
    json_object *value = NULL;
    if (!obj || !json_object_is_type(obj, json_type_object)) return NULL;
    return json_object_object_get_ex(obj, key, &value) ? value : NULL;
}

static const char *member_string(json_object *obj, const char *key) {
    json_object *value = member(obj, key);
    return value && json_object_is_type(value, json_type_string) ? json_object_get_string(value) : NULL;
}

static bool member_bool(json_object *obj, const char *key, bool fallback) {
    json_object *value = member(obj, key);
    return value && json_object_is_type(value, json_type_boolean) ? json_object_get_boolean(value) : fallback;
}

static int member_int(json_object *obj, const char *key, int fallback) {
    json_object *value = member(obj, key);
    return value && json_object_is_type(value, json_type_int) ? json_object_get_int(value) : fallback;
}

static bool is_array(json_object *obj) { return obj && json_object_is_type(obj, json_type_array); }

// Appends one zeroed element to a growable array of `size`-byte elements.
static void *push_element(void **array, int *count, size_t size, Error *err) {
    void *grown = realloc(*array, (size_t)(*count + 1) * size);
    if (!grown) return fail(err, "out of memory growing a tokenizer stage list"), NULL;
    *array = grown;
    void *element = (char *)grown + (size_t)(*count)++ * size;
    memset(element, 0, size);
    return element;
}

// {"String": "..."} or {"Regex": "..."}
static bool parse_pattern(json_object *obj, Pattern *p, const char *where, Error *err) {
    const char *literal = member_string(obj, "String");
    const char *regex = member_string(obj, "Regex");
    if (literal) return pattern_set_literal(p, literal, err);
    if (regex) return pattern_compile_regex(p, regex, err) || fail_context(err, "%s: ", where);
    return fail(err, "%s: pattern must be {\"String\": ...} or {\"Regex\": ...}", where);
}

static bool utf8_char_of(const char *s, char out[8], const char *where, Error *err) {
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 4 || utf8_valid_prefix(s, n) != n || utf8_char_len(s, n) != (int)n) {
        return fail(err, "%s: expected a single character, got \"%s\"", where, s ? s : "");
    }
    memcpy(out, s, n + 1);
    return true;
}

static bool parse_prepend_scheme(json_object *obj, PrependScheme *scheme, const char *where, Error *err) {
    const char *name = member_string(obj, "prepend_scheme");
    if (!name) *scheme = member_bool(obj, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
    else if (strcmp(name, "always") == 0) *scheme = PREPEND_ALWAYS;
    else if (strcmp(name, "first") == 0) *scheme = PREPEND_FIRST;
    else if (strcmp(name, "never") == 0) *scheme = PREPEND_NEVER;
    else return fail(err, "%s: unknown prepend_scheme \"%s\"", where, name);
    return true;
}

// ----------------------------------------------------------------------------
// normalizer, pre-tokenizer, decoder, post-processor

static bool parse_normalizer(HfTokenizer *tok, json_object *obj, Error *err) {
    if (!obj || json_object_is_type(obj, json_type_null)) return true;
    const char *type = member_string(obj, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        json_object *list = member(obj, "normalizers");
        if (!is_array(list)) return fail(err, "normalizer Sequence without a \"normalizers\" list");
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            if (!parse_normalizer(tok, json_object_array_get_idx(list, i), err)) return false;
        }
        return true;
    }
    Normalizer *nz = push_element((void **)&tok->normalizers, &tok->n_normalizers, sizeof *nz, err);
    if (!nz) return false;
    static const char *unicode_forms[] = {"NFC", "NFD", "NFKC", "NFKD"};
    static const NormalizerKind unicode_kinds[] = {NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD};
    for (int i = 0; type && i < 4; i++) {
        if (strcmp(type, unicode_forms[i]) == 0) return nz->kind = unicode_kinds[i], true;
    }
    if (type && strcmp(type, "Prepend") == 0) {
        nz->kind = NORM_PREPEND;
        nz->text = checked_strdup(member_string(obj, "prepend") ? member_string(obj, "prepend") : "", err);
        return nz->text != NULL;
    }
    if (type && strcmp(type, "Replace") == 0) {
        nz->kind = NORM_REPLACE;
        nz->text = checked_strdup(member_string(obj, "content") ? member_string(obj, "content") : "", err);
        return nz->text && parse_pattern(member(obj, "pattern"), &nz->pattern, "normalizer Replace", err);
    }
    if (type && strcmp(type, "Strip") == 0) {
        nz->kind = NORM_STRIP;
        nz->strip_left = member_bool(obj, "strip_left", true);
        nz->strip_right = member_bool(obj, "strip_right", true);
        return true;
    }
    tok->n_normalizers--;
    return fail(err, "normalizer type \"%s\" is not supported", type ? type : "(none)");
}

static bool parse_split_behavior(const char *name, SplitBehavior *behavior, Error *err) {
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    for (int i = 0; name && i < 5; i++) {
        if (strcmp(name, names[i]) == 0) return *behavior = (SplitBehavior)i, true;
    }
    return fail(err, "pre-tokenizer Split: unknown behavior \"%s\"", name ? name : "(none)");
}

static bool parse_pre_tokenizer(HfTokenizer *tok, json_object *obj, Error *err) {
    if (!obj || json_object_is_type(obj, json_type_null)) return true;
    const char *type = member_string(obj, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        json_object *list = member(obj, "pretokenizers");
        if (!is_array(list)) return fail(err, "pre-tokenizer Sequence without a \"pretokenizers\" list");
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            if (!parse_pre_tokenizer(tok, json_object_array_get_idx(list, i), err)) return false;
        }
        return true;
    }
    PreTokenizer *pre = push_element((void **)&tok->pre_tokenizers, &tok->n_pre_tokenizers, sizeof *pre, err);
    if (!pre) return false;
    if (type && strcmp(type, "ByteLevel") == 0) {
        pre->kind = PRE_BYTE_LEVEL;
        pre->add_prefix_space = member_bool(obj, "add_prefix_space", true);
        pre->use_regex = member_bool(obj, "use_regex", true);
        return !pre->use_regex || pattern_compile_regex(&pre->pattern, gpt2_regex, err);
    }
    if (type && strcmp(type, "Split") == 0) {
        pre->kind = PRE_SPLIT;
        pre->invert = member_bool(obj, "invert", false);
        return parse_split_behavior(member_string(obj, "behavior"), &pre->behavior, err) &&
               parse_pattern(member(obj, "pattern"), &pre->pattern, "pre-tokenizer Split", err);
    }
    if (type && strcmp(type, "Metaspace") == 0) {
        pre->kind = PRE_METASPACE;
        pre->split = member_bool(obj, "split", true);
        return utf8_char_of(member_string(obj, "replacement"), pre->replacement, "pre-tokenizer Metaspace", err) &&
               parse_prepend_scheme(obj, &pre->prepend, "pre-tokenizer Metaspace", err);
    }
    tok->n_pre_tokenizers--;
    return fail(err, "pre-tokenizer type \"%s\" is not supported", type ? type : "(none)");
}

static bool parse_decoder(HfTokenizer *tok, json_object *obj, Error *err) {
    if (!obj || json_object_is_type(obj, json_type_null)) return true;
    const char *type = member_string(obj, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        json_object *list = member(obj, "decoders");
        if (!is_array(list)) return fail(err, "decoder Sequence without a \"decoders\" list");
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            if (!parse_decoder(tok, json_object_array_get_idx(list, i), err)) return false;
        }
        return true;
    }
    Decoder *d = push_element((void **)&tok->decoders, &tok->n_decoders, sizeof *d, err);
    if (!d) return false;
    if (type && strcmp(type, "ByteLevel") == 0) return d->kind = DEC_BYTE_LEVEL, true;
    if (type && strcmp(type, "ByteFallback") == 0) return d->kind = DEC_BYTE_FALLBACK, true;
    if (type && strcmp(type, "Fuse") == 0) return d->kind = DEC_FUSE, true;
    if (type && strcmp(type, "Replace") == 0) {
        d->kind = DEC_REPLACE;
        d->content = checked_strdup(member_string(obj, "content") ? member_string(obj, "content") : "", err);
        return d->content && parse_pattern(member(obj, "pattern"), &d->pattern, "decoder Replace", err);
    }
    if (type && strcmp(type, "Strip") == 0) {
        char content[8];
        d->kind = DEC_STRIP;
        d->strip_start = member_int(obj, "start", 0);
        d->strip_stop = member_int(obj, "stop", 0);
        if (!utf8_char_of(member_string(obj, "content"), content, "decoder Strip", err)) return false;
        d->strip_char = utf8_decode(content, (int)strlen(content));
        return true;
    }
    if (type && strcmp(type, "Metaspace") == 0) {
        d->kind = DEC_METASPACE;
        return utf8_char_of(member_string(obj, "replacement"), d->replacement, "decoder Metaspace", err) &&
               parse_prepend_scheme(obj, &d->prepend, "decoder Metaspace", err);
    }
    tok->n_decoders--;
    return fail(err, "decoder type \"%s\" is not supported", type ? type : "(none)");
}

static bool append_ids(int32_t **ids, int *n, const int32_t *more, int n_more, Error *err) {
    int32_t *grown = realloc(*ids, (size_t)(*n + n_more + 1) * sizeof *grown);
    if (!grown) return fail(err, "out of memory in the post-processor");
    if (n_more > 0) memcpy(grown + *n, more, (size_t)n_more * sizeof *more);
    *ids = grown;
    *n += n_more;
    return true;
}

// Wraps the current template: prefix = before + prefix, suffix = suffix + after.
static bool wrap_template(HfTokenizer *tok, const int32_t *before, int n_before,
                          const int32_t *after, int n_after, Error *err) {
    int32_t *prefix = NULL;
    int n_prefix = 0;
    bool ok = append_ids(&prefix, &n_prefix, before, n_before, err) &&
              append_ids(&prefix, &n_prefix, tok->prefix_ids, tok->n_prefix, err) &&
              append_ids(&tok->suffix_ids, &tok->n_suffix, after, n_after, err);
    free(tok->prefix_ids);
    tok->prefix_ids = prefix;
    tok->n_prefix = n_prefix;
    return ok;
}

// TemplateProcessing "single": special tokens before and after sequence A.
static bool parse_template(HfTokenizer *tok, json_object *obj, Error *err) {
    json_object *single = member(obj, "single"), *specials = member(obj, "special_tokens");
    if (!is_array(single)) return fail(err, "post-processor TemplateProcessing without a \"single\" list");
    int32_t *before = NULL, *after = NULL;
    int n_before = 0, n_after = 0;
    bool seen_sequence = false, ok = true;
    for (size_t i = 0; ok && i < json_object_array_length(single); i++) {
        json_object *item = json_object_array_get_idx(single, i);
        json_object *special = member(item, "SpecialToken");
        if (member(item, "Sequence")) {
            seen_sequence = true;
            continue;
        }
        const char *name = member_string(special, "id");
        json_object *ids = member(member(specials, name ? name : ""), "ids");
        if (!name || !is_array(ids)) {
            ok = fail(err, "post-processor TemplateProcessing: special token \"%s\" has no ids", name ? name : "(none)");
            break;
        }
        for (size_t k = 0; ok && k < json_object_array_length(ids); k++) {
            int32_t id = json_object_get_int(json_object_array_get_idx(ids, k));
            ok = seen_sequence ? append_ids(&after, &n_after, &id, 1, err) : append_ids(&before, &n_before, &id, 1, err);
        }
    }
    ok = ok && wrap_template(tok, before, n_before, after, n_after, err);
    free(before);
    free(after);
    return ok;
}

// BertProcessing / RobertaProcessing: "cls": [token, id], "sep": [token, id].
static bool parse_cls_sep(HfTokenizer *tok, json_object *obj, Error *err) {
    json_object *cls = member(obj, "cls"), *sep = member(obj, "sep");
    if (!is_array(cls) || !is_array(sep) || json_object_array_length(cls) != 2 || json_object_array_length(sep) != 2) {
        return fail(err, "post-processor: \"cls\" and \"sep\" must be [token, id] pairs");
    }
    int32_t cls_id = json_object_get_int(json_object_array_get_idx(cls, 1));
    int32_t sep_id = json_object_get_int(json_object_array_get_idx(sep, 1));
    return wrap_template(tok, &cls_id, 1, &sep_id, 1, err);
}

static bool parse_post_processor(HfTokenizer *tok, json_object *obj, Error *err) {
    if (!obj || json_object_is_type(obj, json_type_null)) return true;
    const char *type = member_string(obj, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        json_object *list = member(obj, "processors");
        if (!is_array(list)) return fail(err, "post-processor Sequence without a \"processors\" list");
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            if (!parse_post_processor(tok, json_object_array_get_idx(list, i), err)) return false;
        }
        return true;
    }
    if (type && strcmp(type, "ByteLevel") == 0) return true; // only trims offsets
    if (type && strcmp(type, "TemplateProcessing") == 0) return parse_template(tok, obj, err);
    if (type && (strcmp(type, "BertProcessing") == 0 || strcmp(type, "RobertaProcessing") == 0)) {
        return parse_cls_sep(tok, obj, err);
    }
    return fail(err, "post-processor type \"%s\" is not supported", type ? type : "(none)");
}

// ----------------------------------------------------------------------------
// model and added tokens

// Copies every token text (vocab keys, added tokens) into one pool and fills
// id -> text; added tokens override the model's text for their id.
static bool build_token_table(HfTokenizer *tok, json_object *vocab, json_object *added, Error *err) {
    size_t pool_size = 0;
    int32_t max_id = -1;
    json_object_object_foreach(vocab, key, value) {
        int32_t id = json_object_get_int(value);
        if (!json_object_is_type(value, json_type_int) || id < 0) return fail(err, "model.vocab[\"%s\"] is not a non-negative id", key);
        if (id >= TOKEN_ID_LIMIT) return fail(err, "model.vocab[\"%s\"]: id %d is over the limit of %d", key, id, TOKEN_ID_LIMIT);
        pool_size += strlen(key) + 1;
        if (id > max_id) max_id = id;
    }
    for (size_t i = 0; added && i < json_object_array_length(added); i++) {
        json_object *entry = json_object_array_get_idx(added, i);
        const char *content = member_string(entry, "content");
        int32_t id = member_int(entry, "id", -1);
        if (!content || id < 0) return fail(err, "added_tokens[%zu] needs \"content\" and a non-negative \"id\"", i);
        if (id >= TOKEN_ID_LIMIT) return fail(err, "added_tokens[%zu]: id %d is over the limit of %d", i, id, TOKEN_ID_LIMIT);
        pool_size += strlen(content) + 1;
        if (id > max_id) max_id = id;
    }
    tok->n_ids = max_id + 1;
    tok->pool = checked_malloc(pool_size + 1, "token texts", err);
    tok->id_text = tok->pool ? checked_calloc((size_t)tok->n_ids + 1, sizeof *tok->id_text, "token table", err) : NULL;
    tok->id_len = tok->id_text ? checked_calloc((size_t)tok->n_ids + 1, sizeof *tok->id_len, "token table", err) : NULL;
    tok->id_special = tok->id_len ? checked_calloc((size_t)tok->n_ids + 1, sizeof *tok->id_special, "token table", err) : NULL;
    if (!tok->id_special || !strmap_init(&tok->vocab, (size_t)json_object_object_length(vocab), err)) return false;
    size_t used = 0;
    json_object_object_foreach(vocab, text, id_value) {
        int32_t id = json_object_get_int(id_value);
        size_t len = strlen(text);
        char *copy = memcpy(tok->pool + used, text, len + 1);
        used += len + 1;
        tok->id_text[id] = copy;
        tok->id_len[id] = (uint32_t)len;
        if (!strmap_put(&tok->vocab, copy, len, id, err)) return false;
    }
    tok->n_added = added ? (int)json_object_array_length(added) : 0;
    tok->added = checked_calloc((size_t)tok->n_added + 1, sizeof *tok->added, "added tokens", err);
    if (!tok->added || !strmap_init(&tok->added_vocab, (size_t)tok->n_added, err)) return false;
    for (int i = 0; i < tok->n_added; i++) {
        json_object *entry = json_object_array_get_idx(added, (size_t)i);
        AddedToken *a = &tok->added[i];
        const char *content = member_string(entry, "content");
        a->id = member_int(entry, "id", -1);
        a->len = strlen(content);
        a->content = memcpy(tok->pool + used, content, a->len + 1);
        used += a->len + 1;
        a->special = member_bool(entry, "special", false);
        a->lstrip = member_bool(entry, "lstrip", false);
        a->rstrip = member_bool(entry, "rstrip", false);
        a->single_word = member_bool(entry, "single_word", false);
        a->normalized = member_bool(entry, "normalized", !a->special);
        tok->id_text[a->id] = a->content;
        tok->id_len[a->id] = (uint32_t)a->len;
        tok->id_special[a->id] = a->special;
        if (!strmap_put(&tok->added_vocab, a->content, a->len, a->id, err)) return false;
    }
    return true;
}

// Counting sort of the added tokens by first byte, for matching them in text.
static bool index_added_tokens(HfTokenizer *tok, Error *err) {
    int counts[257] = {0};
    for (int i = 0; i < tok->n_added; i++) {
        if (tok->added[i].len) counts[(uint8_t)tok->added[i].content[0] + 1]++;
    }
    for (int b = 0; b < 256; b++) counts[b + 1] += counts[b];
    memcpy(tok->added_byte_start, counts, sizeof counts);
    tok->added_by_byte = checked_malloc((size_t)(tok->n_added + 1) * sizeof(int), "added token index", err);
    if (!tok->added_by_byte) return false;
    for (int i = 0; i < tok->n_added; i++) {
        if (tok->added[i].len) tok->added_by_byte[counts[(uint8_t)tok->added[i].content[0]]++] = i;
    }
    return true;
}

static int32_t vocab_id(const HfTokenizer *tok, const char *text, size_t len) {
    return strmap_get(&tok->vocab, text, len);
}

// One merge "a b" (or ["a", "b"]) of rank `rank`: ids of a, b and a+b.
static bool add_merge(HfTokenizer *tok, const char *left, size_t left_len, const char *right,
                      size_t right_len, int32_t rank, Buf *joined, Error *err) {
    size_t prefix_len = tok->subword_prefix ? strlen(tok->subword_prefix) : 0;
    const char *tail = right;
    size_t tail_len = right_len;
    if (prefix_len && right_len >= prefix_len && memcmp(right, tok->subword_prefix, prefix_len) == 0) {
        tail += prefix_len, tail_len -= prefix_len;
    }
    joined->len = 0;
    if (!buf_append(joined, left, left_len, err) || !buf_append(joined, tail, tail_len, err)) return false;
    int32_t a = vocab_id(tok, left, left_len), b = vocab_id(tok, right, right_len);
    int32_t merged = vocab_id(tok, joined->data, joined->len);
    if (a < 0 || b < 0 || merged < 0) {
        return fail(err, "model.merges[%d] \"%.*s %.*s\": token %.*s is not in the vocab", rank,
                    (int)left_len, left, (int)right_len, right,
                    (int)(a < 0 ? left_len : b < 0 ? right_len : joined->len),
                    a < 0 ? left : b < 0 ? right : joined->data);
    }
    pairmap_put(&tok->merges, a, b, rank, merged);
    return true;
}

static bool parse_merges(HfTokenizer *tok, json_object *merges, Error *err) {
    size_t count = is_array(merges) ? json_object_array_length(merges) : 0;
    if (!pairmap_init(&tok->merges, count, err)) return false;
    Buf joined = {0};
    bool ok = true;
    for (size_t i = 0; ok && i < count; i++) {
        json_object *merge = json_object_array_get_idx(merges, i);
        const char *line = json_object_is_type(merge, json_type_string) ? json_object_get_string(merge) : NULL;
        const char *space = line ? strchr(line, ' ') : NULL;
        if (space) {
            ok = add_merge(tok, line, (size_t)(space - line), space + 1, strlen(space + 1), (int32_t)i, &joined, err);
        } else if (is_array(merge) && json_object_array_length(merge) == 2) {
            json_object *left = json_object_array_get_idx(merge, 0), *right = json_object_array_get_idx(merge, 1);
            ok = add_merge(tok, json_object_get_string(left), (size_t)json_object_get_string_len(left),
                           json_object_get_string(right), (size_t)json_object_get_string_len(right),
                           (int32_t)i, &joined, err);
        } else {
            ok = fail(err, "model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", i);
        }
    }
    free(joined.data);
    return ok;
}

static bool parse_model(HfTokenizer *tok, json_object *model, json_object *added, Error *err) {
    const char *type = member_string(model, "type");
    json_object *vocab = member(model, "vocab");
    if (type && strcmp(type, "BPE") != 0) return fail(err, "model type \"%s\" is not supported (only BPE)", type);
    if (!vocab || !json_object_is_type(vocab, json_type_object)) return fail(err, "model.vocab is missing or not an object");
    tok->byte_fallback = member_bool(model, "byte_fallback", false);
    tok->fuse_unk = member_bool(model, "fuse_unk", false);
    tok->ignore_merges = member_bool(model, "ignore_merges", false);
    const char *prefix = member_string(model, "continuing_subword_prefix");
    const char *suffix = member_string(model, "end_of_word_suffix");
    if (prefix && !(tok->subword_prefix = checked_strdup(prefix, err))) return false;
    if (suffix && !(tok->word_suffix = checked_strdup(suffix, err))) return false;
    if (!build_token_table(tok, vocab, added, err) || !index_added_tokens(tok, err)) return false;
    const char *unk = member_string(model, "unk_token");
    tok->unk_id = unk ? vocab_id(tok, unk, strlen(unk)) : -1;
    if (unk && tok->unk_id < 0) return fail(err, "model.unk_token \"%s\" is not in the vocab", unk);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        tok->byte_ids[b] = vocab_id(tok, name, 6);
    }
    return parse_merges(tok, member(model, "merges"), err);
}

static bool parse_tokenizer(HfTokenizer *tok, json_object *root, Error *err) {
    json_object *added = member(root, "added_tokens");
    if (added && !is_array(added)) return fail(err, "added_tokens is not a list");
    byte_level_tables(tok->byte_chars, tok->char_bytes);
    json_object *decoder = member(root, "decoder");
    tok->has_decoder = decoder && !json_object_is_type(decoder, json_type_null);
    return parse_model(tok, member(root, "model"), added, err) &&
           parse_normalizer(tok, member(root, "normalizer"), err) &&
           parse_pre_tokenizer(tok, member(root, "pre_tokenizer"), err) &&
           parse_post_processor(tok, member(root, "post_processor"), err) &&
           parse_decoder(tok, decoder, err);
}

HfTokenizer *hf_tokenizer_load(const char *path, Error *err) {
    char *text = NULL;
    size_t size = 0;
    if (!read_file(path, &text, &size, err)) return NULL;
    json_tokener *tokener = json_tokener_new();
    json_object *root = tokener ? json_tokener_parse_ex(tokener, text, (int)size) : NULL;
    if (!root) {
        fail(err, "%s: invalid JSON: %s", path,
             tokener ? json_tokener_error_desc(json_tokener_get_error(tokener)) : "out of memory");
    }
    if (tokener) json_tokener_free(tokener);
    free(text);
    if (!root) return NULL;
    HfTokenizer *tok = checked_calloc(1, sizeof *tok, "tokenizer", err);
    bool ok = tok && parse_tokenizer(tok, root, err);
    json_object_put(root);
    if (!ok) {
        if (tok) fail_context(err, "%s: ", path);
        hf_tokenizer_destroy(tok);
        return NULL;
    }
    return tok;
}

static void stages_free(HfTokenizer *tok) {
    for (int i = 0; i < tok->n_normalizers; i++) {
        pattern_free(&tok->normalizers[i].pattern);
        free(tok->normalizers[i].text);
    }
    for (int i = 0; i < tok->n_pre_tokenizers; i++) pattern_free(&tok->pre_tokenizers[i].pattern);
    for (int i = 0; i < tok->n_decoders; i++) {
        pattern_free(&tok->decoders[i].pattern);
        free(tok->decoders[i].content);
    }
    free(tok->normalizers);
    free(tok->pre_tokenizers);
    free(tok->decoders);
}

void hf_tokenizer_destroy(HfTokenizer *tok) {
    if (!tok) return;
    stages_free(tok);
    strmap_free(&tok->vocab);
    strmap_free(&tok->added_vocab);
    pairmap_free(&tok->merges);
    free(tok->subword_prefix);
    free(tok->word_suffix);
    free(tok->pool);
    free(tok->id_text);
    free(tok->id_len);
    free(tok->id_special);
    free(tok->added);
    free(tok->added_by_byte);
    free(tok->prefix_ids);
    free(tok->suffix_ids);
    free(tok);
}
