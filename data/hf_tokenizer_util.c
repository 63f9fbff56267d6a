// Containers (byte strings, piece lists, hash maps) and UTF-8 helpers for the
// Hugging Face tokenizer.
#include <stdlib.h>
#include <string.h>

#include "hf_tokenizer_internal.h"

// ----------------------------------------------------------------------------
// Buf and Pieces

bool buf_reserve(Buf *b, size_t extra, Error *err) {
    if (b->len + extra <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra) cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data) return fail(err, "out of memory growing a tokenizer buffer to %zu bytes", cap);
    b->data = data;
    b->cap = cap;
    return true;
}

bool buf_append(Buf *b, const void *data, size_t n, Error *err) {
    if (!buf_reserve(b, n, err)) return false;
    if (n) memcpy(b->data + b->len, data, n);
    b->len += n;
    return true;
}

bool buf_terminate(Buf *b, Error *err) {
    if (!buf_reserve(b, 1, err)) return false;
    b->data[b->len] = '\0';
    return true;
}

bool pieces_push(Pieces *p, const char *s, size_t n, bool at_origin, Error *err) {
    if (p->count == p->cap) {
        int cap = p->cap ? 2 * p->cap : 16;
        size_t *start = realloc(p->start, cap * sizeof *start);
        if (start) p->start = start;
        size_t *len = start ? realloc(p->len, cap * sizeof *len) : NULL;
        if (len) p->len = len;
        bool *origin = len ? realloc(p->at_origin, cap * sizeof *origin) : NULL;
        if (!origin) return fail(err, "out of memory growing a list of %d tokenizer pieces", cap);
        p->at_origin = origin;
        p->cap = cap;
    }
    p->start[p->count] = p->text.len;
    p->len[p->count] = n;
    p->at_origin[p->count] = at_origin;
    if (!buf_append(&p->text, s, n, err)) return false;
    p->count++;
    return true;
}

void pieces_clear(Pieces *p) {
    p->count = 0;
    p->text.len = 0;
}

void pieces_free(Pieces *p) {
    free(p->text.data);
    free(p->start);
    free(p->len);
    free(p->at_origin);
    memset(p, 0, sizeof *p);
}

// ----------------------------------------------------------------------------
// hash maps (linear probing, load factor <= 1/2)

static size_t capacity_for(size_t expected) {
    size_t cap = 16;
    while (cap < 2 * expected + 2) cap *= 2;
    return cap;
}

bool strmap_init(StrMap *m, size_t expected, Error *err) {
    memset(m, 0, sizeof *m);
    m->cap = capacity_for(expected);
    m->keys = checked_calloc(m->cap, sizeof *m->keys, "tokenizer hash map", err);
    m->key_len = m->keys ? checked_calloc(m->cap, sizeof *m->key_len, "tokenizer hash map", err) : NULL;
    m->values = m->key_len ? checked_calloc(m->cap, sizeof *m->values, "tokenizer hash map", err) : NULL;
    if (!m->values) strmap_free(m);
    return m->values != NULL;
}

static size_t strmap_slot(const StrMap *m, const char *key, size_t len) {
    size_t mask = m->cap - 1;
    size_t i = (size_t)fnv1a64(key, len, FNV1A64_INIT) & mask;
    while (m->keys[i] && !(m->key_len[i] == len && memcmp(m->keys[i], key, len) == 0)) {
        i = (i + 1) & mask;
    }
    return i;
}

static bool strmap_grow(StrMap *m, Error *err) {
    StrMap bigger;
    if (!strmap_init(&bigger, m->cap, err)) return false;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        size_t slot = strmap_slot(&bigger, m->keys[i], m->key_len[i]);
        bigger.keys[slot] = m->keys[i];
        bigger.key_len[slot] = m->key_len[i];
        bigger.values[slot] = m->values[i];
    }
    bigger.count = m->count;
    strmap_free(m);
    *m = bigger;
    return true;
}

bool strmap_put(StrMap *m, const char *key, size_t len, int32_t value, Error *err) {
    if (2 * (m->count + 1) > m->cap && !strmap_grow(m, err)) return false;
    size_t slot = strmap_slot(m, key, len);
    if (!m->keys[slot]) m->count++;
    m->keys[slot] = key;
    m->key_len[slot] = (uint32_t)len;
    m->values[slot] = value;
    return true;
}

int32_t strmap_get(const StrMap *m, const char *key, size_t len) {
    if (!m->cap) return -1;
    size_t slot = strmap_slot(m, key, len);
    return m->keys[slot] ? m->values[slot] : -1;
}

void strmap_free(StrMap *m) {
    free(m->keys);
    free(m->key_len);
    free(m->values);
    memset(m, 0, sizeof *m);
}

static uint64_t pair_key(int32_t left, int32_t right) {
    return ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
}

static size_t pair_slot(const PairMap *m, uint64_t key) {
    size_t mask = m->cap - 1;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 20) & mask;
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & mask;
    return i;
}

bool pairmap_init(PairMap *m, size_t expected, Error *err) {
    memset(m, 0, sizeof *m);
    m->cap = capacity_for(expected);
    m->keys = checked_malloc(m->cap * sizeof *m->keys, "BPE merge table", err);
    m->rank = m->keys ? checked_malloc(m->cap * sizeof *m->rank, "BPE merge table", err) : NULL;
    m->merged = m->rank ? checked_malloc(m->cap * sizeof *m->merged, "BPE merge table", err) : NULL;
    if (!m->merged) {
        pairmap_free(m);
        return false;
    }
    memset(m->keys, 0xff, m->cap * sizeof *m->keys);
    return true;
}

// Sized up front by pairmap_init for every merge; a repeated pair keeps its
// last rank, as a Rust HashMap built from the merges list does.
void pairmap_put(PairMap *m, int32_t left, int32_t right, int32_t rank, int32_t merged) {
    uint64_t key = pair_key(left, right);
    size_t slot = pair_slot(m, key);
    m->keys[slot] = key;
    m->rank[slot] = rank;
    m->merged[slot] = merged;
}

bool pairmap_get(const PairMap *m, int32_t left, int32_t right, int32_t *rank, int32_t *merged) {
    if (!m->cap) return false;
    size_t slot = pair_slot(m, pair_key(left, right));
    if (m->keys[slot] == UINT64_MAX) return false;
    *rank = m->rank[slot];
    *merged = m->merged[slot];
    return true;
}

void pairmap_free(PairMap *m) {
    free(m->keys);
    free(m->rank);
    free(m->merged);
    memset(m, 0, sizeof *m);
}

// ----------------------------------------------------------------------------
// UTF-8

// Length of the valid UTF-8 sequence at s, or the negated length of its
// maximal invalid prefix (Unicode's "maximal subpart", as Rust's Utf8Chunks).
static int utf8_sequence(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    int need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) need = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) need = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else return -1;
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n || s[i] < lo || s[i] > hi) return -i;
        lo = 0x80, hi = 0xBF;
    }
    return need;
}

int utf8_char_len(const char *s, size_t n) {
    int len = utf8_sequence((const uint8_t *)s, n);
    return len > 0 ? len : 1;
}

size_t utf8_valid_prefix(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        int len = utf8_sequence((const uint8_t *)s + i, n - i);
        if (len < 0) return i;
        i += (size_t)len;
    }
    return n;
}

bool utf8_encode(Buf *b, uint32_t cp, Error *err) {
    char out[4];
    int n;
    if (cp < 0x80) out[0] = (char)cp, n = 1;
    else if (cp < 0x800) out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
    else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12), out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
    } else {
        out[0] = (char)(0xF0 | cp >> 18), out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), out[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
    }
    return buf_append(b, out, (size_t)n, err);
}

uint32_t utf8_decode(const char *s, int len) {
    const uint8_t *u = (const uint8_t *)s;
    if (len == 1) return u[0];
    uint32_t cp = u[0] & (0x7F >> len);
    for (int i = 1; i < len; i++) cp = cp << 6 | (u[i] & 0x3F);
    return cp;
}

bool utf8_append_lossy(Buf *b, const char *s, size_t n, Error *err) {
    static const char replacement[] = "\xEF\xBF\xBD"; // U+FFFD
    size_t i = 0;
    while (i < n) {
        int len = utf8_sequence((const uint8_t *)s + i, n - i);
        bool ok = len > 0 ? buf_append(b, s + i, (size_t)len, err) : buf_append(b, replacement, 3, err);
        if (!ok) return false;
        i += (size_t)(len > 0 ? len : -len);
    }
    return true;
}

// GPT-2: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100 upwards in byte order.
void byte_level_tables(uint32_t byte_chars[256], int16_t char_bytes[BYTE_LEVEL_CHARS]) {
    uint32_t next_shifted = 256;
    for (int cp = 0; cp < BYTE_LEVEL_CHARS; cp++) char_bytes[cp] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        byte_chars[b] = printable ? (uint32_t)b : next_shifted++;
        char_bytes[byte_chars[b]] = (int16_t)b;
    }
}

bool is_unicode_whitespace(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}
