// Hugging Face tokenizer.json (BPE), identical to the Rust `tokenizers`
// library: added tokens split out first, then per remaining segment
// normalizer -> pre-tokenizer -> BPE; the post-processor's special tokens
// around the result. Decoding runs the decoder chain over the token texts.
#include <stdlib.h>
#include <string.h>
#include <unicode/uchar.h>

#include "data.h"
#include "hf_tokenizer_internal.h"

typedef struct IdList {
    int32_t *ids;
    int count, cap;
} IdList;

static bool ids_push(IdList *list, int32_t id, Error *err) {
    if (list->count == list->cap) {
        int cap = list->cap ? 2 * list->cap : 64;
        int32_t *ids = realloc(list->ids, (size_t)cap * sizeof *ids);
        if (!ids) return fail(err, "out of memory growing a list of %d token ids", cap);
        list->ids = ids;
        list->cap = cap;
    }
    list->ids[list->count++] = id;
    return true;
}

static bool ids_push_all(IdList *list, const int32_t *ids, int n, Error *err) {
    for (int i = 0; i < n; i++) {
        if (!ids_push(list, ids[i], err)) return false;
    }
    return true;
}

// ----------------------------------------------------------------------------
// BPE model

// A word's symbols before merging, as Rust's BPE::merge_word: one per char
// (continuing_subword_prefix on all but the first, end_of_word_suffix on the
// last); a char missing from the vocab becomes its "<0xXX>" bytes with
// byte_fallback, else unk (consecutive unks fused with fuse_unk).
static bool initial_symbols(const HfTokenizer *tok, const char *w, size_t n, IdList *symbols, Error *err) {
    Buf s = {0};
    bool ok = true, pending_unk = false;
    for (size_t at = 0; ok && at < n;) {
        int len = utf8_char_len(w + at, n - at);
        s.len = 0;
        if (at > 0 && tok->subword_prefix) ok = buf_append(&s, tok->subword_prefix, strlen(tok->subword_prefix), err);
        ok = ok && buf_append(&s, w + at, (size_t)len, err);
        if (at + (size_t)len == n && tok->word_suffix) ok = ok && buf_append(&s, tok->word_suffix, strlen(tok->word_suffix), err);
        at += (size_t)len;
        int32_t id = ok ? strmap_get(&tok->vocab, s.data, s.len) : -1;
        if (!ok) break;
        if (id >= 0) {
            if (pending_unk) ok = ids_push(symbols, tok->unk_id, err);
            pending_unk = false;
            ok = ok && ids_push(symbols, id, err);
            continue;
        }
        bool all_bytes = tok->byte_fallback;
        for (size_t i = 0; all_bytes && i < s.len; i++) all_bytes = tok->byte_ids[(uint8_t)s.data[i]] >= 0;
        if (all_bytes) {
            for (size_t i = 0; ok && i < s.len; i++) ok = ids_push(symbols, tok->byte_ids[(uint8_t)s.data[i]], err);
            continue;
        }
        if (tok->unk_id < 0) continue;
        if (pending_unk && !tok->fuse_unk) ok = ids_push(symbols, tok->unk_id, err);
        pending_unk = true;
    }
    if (ok && pending_unk) ok = ids_push(symbols, tok->unk_id, err);
    free(s.data);
    return ok;
}

// Rust's Word::merge_all: a min-heap of candidate merges ordered by (rank,
// position) over a doubly linked list of symbols; stale entries are skipped
// when popped. O(n log n) in the symbols of a word, which for tokenizers
// without a pre-tokenizer (Mistral, Llama 2) is a whole text segment.
typedef struct Merge {
    int32_t rank, merged;
    int pos;
} Merge;

typedef struct MergeScratch {
    Merge *heap;
    int *prev, *next;
    bool *removed;
    int n_heap, cap_heap, cap_symbols;
} MergeScratch;

static bool merge_before(Merge a, Merge b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static bool heap_push(MergeScratch *m, Merge merge, Error *err) {
    if (m->n_heap == m->cap_heap) {
        int cap = m->cap_heap ? 2 * m->cap_heap : 64;
        Merge *heap = realloc(m->heap, (size_t)cap * sizeof *heap);
        if (!heap) return fail(err, "out of memory growing the BPE merge queue to %d", cap);
        m->heap = heap;
        m->cap_heap = cap;
    }
    int i = m->n_heap++;
    while (i > 0 && merge_before(merge, m->heap[(i - 1) / 2])) {
        m->heap[i] = m->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    m->heap[i] = merge;
    return true;
}

static Merge heap_pop(MergeScratch *m) {
    Merge top = m->heap[0], last = m->heap[--m->n_heap];
    int i = 0;
    for (;;) {
        int child = 2 * i + 1;
        if (child >= m->n_heap) break;
        if (child + 1 < m->n_heap && merge_before(m->heap[child + 1], m->heap[child])) child++;
        if (!merge_before(m->heap[child], last)) break;
        m->heap[i] = m->heap[child];
        i = child;
    }
    m->heap[i] = last;
    return top;
}

static bool push_pair(const HfTokenizer *tok, MergeScratch *m, const int32_t *ids, int pos, Error *err) {
    int32_t rank, merged;
    if (pos < 0 || m->next[pos] < 0 || !pairmap_get(&tok->merges, ids[pos], ids[m->next[pos]], &rank, &merged)) return true;
    return heap_push(m, (Merge){rank, merged, pos}, err);
}

static bool scratch_reserve(MergeScratch *m, int n, Error *err) {
    if (n <= m->cap_symbols) return true;
    int *prev = realloc(m->prev, (size_t)n * sizeof *prev);
    if (prev) m->prev = prev;
    int *next = prev ? realloc(m->next, (size_t)n * sizeof *next) : NULL;
    if (next) m->next = next;
    bool *removed = next ? realloc(m->removed, (size_t)n * sizeof *removed) : NULL;
    if (!removed) return fail(err, "out of memory for a word of %d BPE symbols", n);
    m->removed = removed;
    m->cap_symbols = n;
    return true;
}

static bool merge_symbols(const HfTokenizer *tok, IdList *symbols, MergeScratch *m, Error *err) {
    int n = symbols->count;
    int32_t *ids = symbols->ids;
    if (!scratch_reserve(m, n, err)) return false;
    m->n_heap = 0;
    for (int i = 0; i < n; i++) m->prev[i] = i - 1, m->next[i] = i + 1 < n ? i + 1 : -1, m->removed[i] = false;
    for (int i = 0; i + 1 < n; i++) {
        if (!push_pair(tok, m, ids, i, err)) return false;
    }
    while (m->n_heap > 0) {
        Merge top = heap_pop(m);
        int right = m->next[top.pos];
        int32_t rank, merged;
        if (m->removed[top.pos] || right < 0) continue;
        if (!pairmap_get(&tok->merges, ids[top.pos], ids[right], &rank, &merged) || merged != top.merged) continue;
        ids[top.pos] = top.merged;
        m->removed[right] = true;
        m->next[top.pos] = m->next[right];
        if (m->next[right] >= 0) m->prev[m->next[right]] = top.pos;
        if (!push_pair(tok, m, ids, m->prev[top.pos], err) || !push_pair(tok, m, ids, top.pos, err)) return false;
    }
    int kept = 0;
    for (int i = 0; i < n; i++) {
        if (!m->removed[i]) ids[kept++] = ids[i];
    }
    symbols->count = kept;
    return true;
}

static bool bpe_word(const HfTokenizer *tok, const char *w, size_t n, IdList *symbols, MergeScratch *m,
                     IdList *out, Error *err) {
    if (n == 0) return true;
    int32_t whole = tok->ignore_merges ? strmap_get(&tok->vocab, w, n) : -1;
    if (whole >= 0) return ids_push(out, whole, err);
    symbols->count = 0;
    return initial_symbols(tok, w, n, symbols, err) && merge_symbols(tok, symbols, m, err) &&
           ids_push_all(out, symbols->ids, symbols->count, err);
}

// ----------------------------------------------------------------------------
// added tokens

typedef struct Segment {
    size_t start, end;
    int32_t added_id; // -1 for text between added tokens
} Segment;

typedef struct Segments {
    Segment *at;
    int count, cap;
} Segments;

static bool segments_push(Segments *list, size_t start, size_t end, int32_t added_id, Error *err) {
    if (list->count == list->cap) {
        int cap = list->cap ? 2 * list->cap : 16;
        Segment *at = realloc(list->at, (size_t)cap * sizeof *at);
        if (!at) return fail(err, "out of memory growing a list of %d text segments", cap);
        list->at = at;
        list->cap = cap;
    }
    list->at[list->count++] = (Segment){start, end, added_id};
    return true;
}

// Leftmost-longest match of an added token (of the `normalized` kind) in
// s[from..n): index into tok->added, or -1.
static int next_added(const HfTokenizer *tok, const char *s, size_t n, size_t from, bool normalized, size_t *start) {
    for (size_t i = from; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int best = -1;
        for (int k = tok->added_byte_start[b]; k < tok->added_byte_start[b + 1]; k++) {
            const AddedToken *a = &tok->added[tok->added_by_byte[k]];
            if (a->normalized != normalized || a->len > n - i || memcmp(s + i, a->content, a->len) != 0) continue;
            if (best < 0 || a->len > tok->added[best].len) best = tok->added_by_byte[k];
        }
        if (best >= 0) return *start = i, best;
    }
    return -1;
}

static uint32_t char_before(const char *s, size_t end, size_t *start) {
    size_t at = end - 1;
    while (at > 0 && ((uint8_t)s[at] & 0xC0) == 0x80) at--;
    *start = at;
    return utf8_decode(s + at, (int)(end - at));
}

static bool is_word_char(uint32_t cp) {
    bool numeric = (U_GET_GC_MASK(cp) & (U_GC_ND_MASK | U_GC_NL_MASK | U_GC_NO_MASK)) != 0;
    return cp == '_' || numeric || u_hasBinaryProperty((UChar32)cp, UCHAR_ALPHABETIC);
}

// Rust's AddedVocabulary::find_matches: segments of s, added tokens widened
// over neighbouring whitespace by lstrip/rstrip, single_word tokens only
// between non-word chars.
static bool split_on_added(const HfTokenizer *tok, const char *s, size_t n, bool normalized, Segments *out, Error *err) {
    size_t from = 0, done = 0, start;
    int k;
    while ((k = next_added(tok, s, n, from, normalized, &start)) >= 0) {
        const AddedToken *a = &tok->added[k];
        size_t stop = start + a->len, at;
        from = stop;
        if (a->single_word) {
            bool word_before = start > 0 && is_word_char(char_before(s, start, &at));
            int len = stop < n ? utf8_char_len(s + stop, n - stop) : 0;
            bool word_after = stop < n && is_word_char(utf8_decode(s + stop, len));
            if (word_before || word_after) continue;
        }
        if (a->lstrip) {
            size_t left = start;
            while (left > 0 && is_unicode_whitespace(char_before(s, left, &at))) left = at;
            start = left > done ? left : done;
        }
        while (a->rstrip && stop < n) {
            int len = utf8_char_len(s + stop, n - stop);
            if (!is_unicode_whitespace(utf8_decode(s + stop, len))) break;
            stop += (size_t)len;
        }
        if (done < start && !segments_push(out, done, start, -1, err)) return false;
        if (!segments_push(out, start, stop, a->id, err)) return false;
        done = stop;
    }
    return done == n || segments_push(out, done, n, -1, err);
}

// ----------------------------------------------------------------------------
// encode

typedef struct EncodeState {
    IdList out, symbols;
    MergeScratch merges;
    Buf normalized;
    Pieces words, scratch;
    Segments raw, inner;
} EncodeState;

// One normalized stretch of text without added tokens: pre-tokenize, BPE.
static bool encode_words(const HfTokenizer *tok, EncodeState *st, const char *s, size_t n, bool at_origin, Error *err) {
    pieces_clear(&st->words);
    if (n == 0) return true;
    if (!pieces_push(&st->words, s, n, at_origin, err)) return false;
    if (!pre_tokenize(tok, &st->words, &st->scratch, err)) return false;
    for (int i = 0; i < st->words.count; i++) {
        if (!bpe_word(tok, st->words.text.data + st->words.start[i], st->words.len[i], &st->symbols, &st->merges, &st->out, err)) {
            return false;
        }
    }
    return true;
}

// A raw segment between non-normalized added tokens: normalize it, then split
// on the normalized added tokens.
static bool encode_segment(const HfTokenizer *tok, EncodeState *st, const char *s, size_t n, bool at_origin, Error *err) {
    if (!normalize(tok, s, n, &st->normalized, err)) return false;
    st->inner.count = 0;
    if (!split_on_added(tok, st->normalized.data, st->normalized.len, true, &st->inner, err)) return false;
    for (int i = 0; i < st->inner.count; i++) {
        Segment seg = st->inner.at[i];
        bool ok = seg.added_id >= 0 ? ids_push(&st->out, seg.added_id, err)
                                    : encode_words(tok, st, st->normalized.data + seg.start, seg.end - seg.start,
                                                   at_origin && seg.start == 0, err);
        if (!ok) return false;
    }
    return true;
}

static void encode_state_free(EncodeState *st) {
    free(st->out.ids);
    free(st->symbols.ids);
    free(st->merges.heap);
    free(st->merges.prev);
    free(st->merges.next);
    free(st->merges.removed);
    free(st->normalized.data);
    pieces_free(&st->words);
    pieces_free(&st->scratch);
    free(st->raw.at);
    free(st->inner.at);
}

// Index of the token of raw segment s[0..n) (ids, n_ids) that holds byte
// `mark` (0 < mark < n), as transformers' char_to_token: the ids that the
// segment cut at mark shares with the whole segment come before it.
static bool token_at_mark(const HfTokenizer *tok, const char *s, size_t mark, bool at_origin, const int32_t *ids,
                          int n_ids, int *token, Error *err) {
    EncodeState cut = {0};
    bool ok = encode_segment(tok, &cut, s, mark, at_origin, err);
    int shared = 0;
    while (ok && shared < cut.out.count && shared < n_ids && cut.out.ids[shared] == ids[shared]) shared++;
    encode_state_free(&cut);
    *token = shared;
    return ok;
}

// Encodes text into st->out; for each byte offset marks[i] (ascending),
// mark_tokens[i] = index of the token holding it (n_ids at the end of text).
// at_origin: text is the start of the input (Metaspace's "first" scheme).
static bool encode_text(const HfTokenizer *tok, EncodeState *st, const char *text, size_t len, bool add_special_tokens,
                        bool at_origin, const size_t *marks, int n_marks, int *mark_tokens, Error *err) {
    size_t valid = utf8_valid_prefix(text, len);
    if (valid != len) return fail(err, "text to tokenize is not valid UTF-8 (byte %zu)", valid);
    if (add_special_tokens && !ids_push_all(&st->out, tok->prefix_ids, tok->n_prefix, err)) return false;
    if (!split_on_added(tok, text, len, false, &st->raw, err)) return false;
    int next_mark = 0;
    for (int i = 0; i < st->raw.count; i++) {
        Segment seg = st->raw.at[i];
        int first = st->out.count;
        bool origin = at_origin && seg.start == 0;
        bool ok = seg.added_id >= 0 ? ids_push(&st->out, seg.added_id, err)
                                    : encode_segment(tok, st, text + seg.start, seg.end - seg.start, origin, err);
        for (; ok && next_mark < n_marks && marks[next_mark] < seg.end; next_mark++) {
            size_t inside = marks[next_mark] > seg.start ? marks[next_mark] - seg.start : 0;
            mark_tokens[next_mark] = first;
            if (inside > 0 && seg.added_id < 0) {
                int token;
                ok = token_at_mark(tok, text + seg.start, inside, origin, st->out.ids + first, st->out.count - first,
                                   &token, err);
                mark_tokens[next_mark] = first + token;
            }
        }
        if (!ok) return false;
    }
    for (; next_mark < n_marks; next_mark++) mark_tokens[next_mark] = st->out.count;
    return !add_special_tokens || ids_push_all(&st->out, tok->suffix_ids, tok->n_suffix, err);
}

// Moves st's ids into *ids (never NULL, even when empty) and frees the rest.
static bool encode_finish(EncodeState *st, bool ok, int32_t **ids, int *n_ids, Error *err) {
    ok = ok && ids_push(&st->out, 0, err);
    if (ok) {
        *ids = st->out.ids;
        *n_ids = st->out.count - 1; // the pushed 0 keeps an empty result non-NULL
        st->out.ids = NULL;
    }
    encode_state_free(st);
    return ok;
}

bool hf_tokenizer_encode(const HfTokenizer *tok, const char *text, size_t len, bool add_special_tokens,
                         int32_t **ids, int *n_ids, Error *err) {
    EncodeState st = {0};
    bool ok = encode_text(tok, &st, text, len, add_special_tokens, true, NULL, 0, NULL, err);
    return encode_finish(&st, ok, ids, n_ids, err);
}

bool hf_tokenizer_encode_marked(const HfTokenizer *tok, const char *text, size_t len, bool at_origin,
                                const size_t *marks, int n_marks, int32_t **ids, int *n_ids, int *mark_tokens,
                                Error *err) {
    EncodeState st = {0};
    bool ok = encode_text(tok, &st, text, len, false, at_origin, marks, n_marks, mark_tokens, err);
    return encode_finish(&st, ok, ids, n_ids, err);
}

// ----------------------------------------------------------------------------
// decode and vocabulary

static bool join_tokens(const HfTokenizer *tok, Pieces *tokens, Buf *out, Error *err) {
    Pieces scratch = {0};
    bool ok = !tok->has_decoder || decode_tokens(tok, tokens, &scratch, err);
    for (int i = 0; ok && i < tokens->count; i++) {
        if (!tok->has_decoder && i > 0) ok = buf_append(out, " ", 1, err);
        ok = ok && buf_append(out, tokens->text.data + tokens->start[i], tokens->len[i], err);
    }
    pieces_free(&scratch);
    return ok && buf_terminate(out, err);
}

char *hf_tokenizer_decode(const HfTokenizer *tok, const int32_t *ids, int n, bool skip_special_tokens, Error *err) {
    Pieces tokens = {0};
    Buf text = {0};
    bool ok = true;
    for (int i = 0; ok && i < n; i++) {
        const char *token = hf_tokenizer_id_to_token(tok, ids[i]);
        if (!token) ok = fail(err, "decode: token id %d at position %d is not in the vocabulary (size %d)", ids[i], i, tok->n_ids);
        else if (!(skip_special_tokens && tok->id_special[ids[i]])) ok = pieces_push(&tokens, token, tok->id_len[ids[i]], false, err);
    }
    ok = ok && join_tokens(tok, &tokens, &text, err);
    pieces_free(&tokens);
    if (!ok) {
        free(text.data);
        return NULL;
    }
    return text.data;
}

const char *hf_tokenizer_id_to_token(const HfTokenizer *tok, int id) {
    return id >= 0 && id < tok->n_ids ? tok->id_text[id] : NULL;
}

int hf_tokenizer_token_to_id(const HfTokenizer *tok, const char *token) {
    size_t len = strlen(token);
    int32_t id = strmap_get(&tok->added_vocab, token, len);
    return id >= 0 ? id : strmap_get(&tok->vocab, token, len);
}

int hf_tokenizer_vocab_size(const HfTokenizer *tok) { return tok->n_ids; }
int hf_tokenizer_model_vocab_size(const HfTokenizer *tok) { return (int)tok->vocab.count; }

bool hf_tokenizer_is_special(const HfTokenizer *tok, int id) {
    return id >= 0 && id < tok->n_ids && tok->id_special[id];
}
