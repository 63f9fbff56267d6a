// Byte-level tokenizer: ids 0..255 are the bytes of the UTF-8 text, followed by
// the special tokens below. Encoding text yields bytes only; specials enter a
// sequence through their ids (tokenizer_token_id), never through text.
#include "data.h"
#include "data_private.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define BYTE_VOCAB 256

static const char *const byte_specials[] = {
    "<bos>", "<eos>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>",
};
#define N_BYTE_SPECIALS ((int)(sizeof byte_specials / sizeof byte_specials[0]))

struct Tokenizer {
    int vocab_size;
    int bos_id, eos_id, pad_id;
};

Tokenizer *tokenizer_bytes(Error *err) {
    Tokenizer *tok = checked_calloc(1, sizeof *tok, "the byte tokenizer", err);
    if (!tok) return NULL;
    tok->vocab_size = BYTE_VOCAB + N_BYTE_SPECIALS;
    tok->bos_id = tokenizer_token_id(tok, "<bos>");
    tok->eos_id = tokenizer_token_id(tok, "<eos>");
    tok->pad_id = tokenizer_token_id(tok, "<pad>");
    return tok;
}

void tokenizer_destroy(Tokenizer *tok) { free(tok); }

int tokenizer_vocab_size(const Tokenizer *tok) { return tok->vocab_size; }
int tokenizer_bos(const Tokenizer *tok) { return tok->bos_id; }
int tokenizer_eos(const Tokenizer *tok) { return tok->eos_id; }
int tokenizer_pad(const Tokenizer *tok) { return tok->pad_id; }

int tokenizer_token_id(const Tokenizer *tok, const char *token) {
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

bool tokenizer_encode(const Tokenizer *tok, const char *text, size_t len, int32_t **ids,
                      int *n_ids, int *capacity, Error *err) {
    if (!token_ids_reserve(ids, capacity, (int64_t)*n_ids + (int64_t)len, err)) return false;
    const unsigned char *bytes = (const unsigned char *)text;
    for (size_t i = 0; i < len; i++) (*ids)[(*n_ids)++] = bytes[i];
    return true;
}

char *tokenizer_decode(const Tokenizer *tok, const int32_t *ids, int n_ids, Error *err) {
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
