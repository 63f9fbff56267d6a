// Private to data/hf_tokenizer*.c: the parts of a Hugging Face tokenizer.json
// (normalizer -> pre-tokenizer -> BPE model -> post-processor; decoder) as C
// structs, and the small containers they are built from.
#pragma once
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"

// ----------------------------------------------------------------------------
// containers

// A growable byte string (not NUL-terminated unless buf_terminate is called).
typedef struct Buf {
    char *data;
    size_t len, cap;
} Buf;

bool buf_reserve(Buf *b, size_t extra, Error *err);
bool buf_append(Buf *b, const void *data, size_t n, Error *err);
bool buf_terminate(Buf *b, Error *err);

// A list of strings held back to back in one Buf: piece i is
// text.data[start[i] .. start[i] + len[i]). `at_origin` marks the piece that
// begins the whole input text (Metaspace's prepend_scheme "first").
typedef struct Pieces {
    Buf text;
    size_t *start, *len;
    bool *at_origin;
    int count, cap;
} Pieces;

bool pieces_push(Pieces *p, const char *s, size_t n, bool at_origin, Error *err);
void pieces_clear(Pieces *p);
void pieces_free(Pieces *p);

// Open-addressing hash map from byte strings to int32 (keys are borrowed).
typedef struct StrMap {
    const char **keys;
    uint32_t *key_len;
    int32_t *values;
    size_t cap; // power of two
    size_t count;
} StrMap;

bool strmap_init(StrMap *m, size_t expected, Error *err);
bool strmap_put(StrMap *m, const char *key, size_t len, int32_t value, Error *err);
int32_t strmap_get(const StrMap *m, const char *key, size_t len); // -1 when absent
void strmap_free(StrMap *m);

// Merge table: (left id, right id) -> (rank, merged id).
typedef struct PairMap {
    uint64_t *keys; // UINT64_MAX marks an empty slot
    int32_t *rank, *merged;
    size_t cap;
} PairMap;

bool pairmap_init(PairMap *m, size_t expected, Error *err);
void pairmap_put(PairMap *m, int32_t left, int32_t right, int32_t rank, int32_t merged);
bool pairmap_get(const PairMap *m, int32_t left, int32_t right, int32_t *rank, int32_t *merged);
void pairmap_free(PairMap *m);

// ----------------------------------------------------------------------------
// UTF-8 and GPT-2's byte <-> unicode map

int utf8_char_len(const char *s, size_t n); // length of the char at s (1 when invalid)
// Offset of the first invalid byte, or n when s is valid UTF-8.
size_t utf8_valid_prefix(const char *s, size_t n);
bool utf8_encode(Buf *b, uint32_t cp, Error *err);
uint32_t utf8_decode(const char *s, int len);
bool is_unicode_whitespace(uint32_t cp); // White_Space, as Rust's char::is_whitespace
// Appends s with invalid sequences replaced by U+FFFD, as Rust's from_utf8_lossy.
bool utf8_append_lossy(Buf *b, const char *s, size_t n, Error *err);
// GPT-2 bytes_to_unicode: byte -> code point, and its inverse (-1 when none).
#define BYTE_LEVEL_CHARS 324
void byte_level_tables(uint32_t byte_chars[256], int16_t char_bytes[BYTE_LEVEL_CHARS]);

// ----------------------------------------------------------------------------
// patterns: a literal string or a PCRE2 regex (UTF + UCP)

typedef struct Pattern {
    char *literal; // NULL for a regex
    size_t literal_len;
    pcre2_code *regex;
} Pattern;

bool pattern_compile_regex(Pattern *p, const char *regex, Error *err);
bool pattern_set_literal(Pattern *p, const char *literal, Error *err);
void pattern_free(Pattern *p);
// Match spans [at[2i], at[2i+1]) in order, non-overlapping, as Rust's find_iter.
typedef struct Spans {
    size_t *at;
    int count, cap;
} Spans;

bool pattern_find_all(const Pattern *p, const char *s, size_t n, Spans *out, Error *err);
void spans_free(Spans *spans);
// Appends s to out with every match replaced by content.
bool pattern_replace_all(const Pattern *p, const char *s, size_t n, const char *content,
                         Buf *out, Error *err);

// ----------------------------------------------------------------------------
// pipeline stages

typedef enum NormalizerKind {
    NORM_PREPEND, NORM_REPLACE, NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_STRIP
} NormalizerKind;

typedef struct Normalizer {
    NormalizerKind kind;
    char *text; // Prepend: the prefix; Replace: the content
    Pattern pattern;
    bool strip_left, strip_right;
} Normalizer;

typedef enum PreTokenizerKind { PRE_BYTE_LEVEL, PRE_SPLIT, PRE_METASPACE } PreTokenizerKind;

typedef enum SplitBehavior {
    SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_WITH_PREVIOUS, SPLIT_MERGED_WITH_NEXT,
    SPLIT_CONTIGUOUS
} SplitBehavior;

typedef enum PrependScheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } PrependScheme;

typedef struct PreTokenizer {
    PreTokenizerKind kind;
    Pattern pattern;         // Split; ByteLevel with use_regex: GPT-2's regex
    SplitBehavior behavior;  // Split
    bool invert;             // Split
    bool add_prefix_space;   // ByteLevel
    bool use_regex;          // ByteLevel
    char replacement[8];     // Metaspace, UTF-8
    PrependScheme prepend;   // Metaspace
    bool split;              // Metaspace
} PreTokenizer;

typedef enum DecoderKind {
    DEC_BYTE_LEVEL, DEC_REPLACE, DEC_BYTE_FALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE
} DecoderKind;

typedef struct Decoder {
    DecoderKind kind;
    Pattern pattern;      // Replace
    char *content;        // Replace
    uint32_t strip_char;  // Strip
    int strip_start, strip_stop;
    char replacement[8];  // Metaspace
    PrependScheme prepend;
} Decoder;

typedef struct AddedToken {
    int32_t id;
    char *content;
    size_t len;
    bool special, lstrip, rstrip, single_word, normalized;
} AddedToken;

struct HfTokenizer {
    // BPE model
    StrMap vocab;
    PairMap merges;
    int32_t unk_id; // -1 without an unk_token
    bool byte_fallback, fuse_unk, ignore_merges;
    char *subword_prefix, *word_suffix; // NULL when absent
    int32_t byte_ids[256];              // "<0xXX>" ids for byte_fallback, -1 when absent
    uint32_t byte_chars[256];           // ByteLevel: byte -> code point
    int16_t char_bytes[BYTE_LEVEL_CHARS]; // and back, -1 for other code points
    // every token's text by id (added tokens override the model's)
    char *pool;
    const char **id_text;
    uint32_t *id_len;
    bool *id_special;
    int n_ids; // max id + 1
    // added tokens, matched before the model
    AddedToken *added;
    int n_added;
    int *added_by_byte;         // indices into added, sorted by first byte
    int added_byte_start[257];  // added_by_byte[added_byte_start[b] ..] start with byte b
    StrMap added_vocab;
    // pipeline
    Normalizer *normalizers;
    int n_normalizers;
    PreTokenizer *pre_tokenizers;
    int n_pre_tokenizers;
    int32_t *prefix_ids, *suffix_ids; // post-processor, for add_special_tokens
    int n_prefix, n_suffix;
    Decoder *decoders;
    int n_decoders;
    bool has_decoder; // without one, decode joins tokens with " "
};

bool normalize(const struct HfTokenizer *tok, const char *s, size_t n, Buf *out, Error *err);
// Splits `in` into words through every pre-tokenizer in turn.
bool pre_tokenize(const struct HfTokenizer *tok, Pieces *in, Pieces *scratch, Error *err);
bool decode_tokens(const struct HfTokenizer *tok, Pieces *tokens, Pieces *scratch, Error *err);
