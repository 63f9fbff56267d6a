// Decoders of a Hugging Face tokenizer: each maps a list of token strings to
// another (Rust's decode_chain); the results are concatenated at the end.
#include <stdlib.h>
#include <string.h>

#include "hf_tokenizer_internal.h"

static const char *piece(const Pieces *p, int i) { return p->text.data + p->start[i]; }

// Tokens' chars mapped back through GPT-2's byte map (a token with any other
// char keeps its own bytes), all joined, then read as lossy UTF-8.
static bool decode_byte_level(const struct HfTokenizer *tok, const Pieces *in, Pieces *out, Error *err) {
    Buf bytes = {0}, text = {0};
    bool ok = true;
    for (int i = 0; ok && i < in->count; i++) {
        const char *s = piece(in, i);
        size_t start = bytes.len;
        bool mapped = true;
        for (size_t at = 0; ok && mapped && at < in->len[i];) {
            int len = utf8_char_len(s + at, in->len[i] - at);
            uint32_t cp = utf8_decode(s + at, len);
            int byte = cp < BYTE_LEVEL_CHARS ? tok->char_bytes[cp] : -1;
            uint8_t b = (uint8_t)byte;
            mapped = byte >= 0;
            ok = !mapped || buf_append(&bytes, &b, 1, err);
            at += (size_t)len;
        }
        if (!mapped) {
            bytes.len = start;
            ok = ok && buf_append(&bytes, s, in->len[i], err);
        }
    }
    ok = ok && utf8_append_lossy(&text, bytes.data, bytes.len, err);
    ok = ok && pieces_push(out, text.data, text.len, false, err);
    free(bytes.data);
    free(text.data);
    return ok;
}

// Runs of "<0xXX>" tokens become their UTF-8 text, or one U+FFFD per byte
// when the run is not valid UTF-8.
static bool flush_bytes(Buf *run, Pieces *out, Error *err) {
    bool ok = true;
    if (run->len > 0 && utf8_valid_prefix(run->data, run->len) == run->len) {
        ok = pieces_push(out, run->data, run->len, false, err);
    } else {
        for (size_t i = 0; ok && i < run->len; i++) ok = pieces_push(out, "\xEF\xBF\xBD", 3, false, err);
    }
    run->len = 0;
    return ok;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool decode_byte_fallback(const Pieces *in, Pieces *out, Error *err) {
    Buf run = {0};
    bool ok = true;
    for (int i = 0; ok && i < in->count; i++) {
        const char *s = piece(in, i);
        bool is_byte = in->len[i] == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' &&
                       hex_digit(s[3]) >= 0 && hex_digit(s[4]) >= 0;
        if (is_byte) {
            uint8_t b = (uint8_t)(hex_digit(s[3]) * 16 + hex_digit(s[4]));
            ok = buf_append(&run, &b, 1, err);
        } else {
            ok = flush_bytes(&run, out, err) && pieces_push(out, s, in->len[i], false, err);
        }
    }
    ok = ok && flush_bytes(&run, out, err);
    free(run.data);
    return ok;
}

static bool decode_fuse(const Pieces *in, Pieces *out, Error *err) {
    Buf all = {0};
    bool ok = true;
    for (int i = 0; ok && i < in->count; i++) ok = buf_append(&all, piece(in, i), in->len[i], err);
    ok = ok && pieces_push(out, all.data, all.len, false, err);
    free(all.data);
    return ok;
}

// Removes up to `start` leading and `stop` trailing copies of one char.
static bool decode_strip(const Decoder *d, const Pieces *in, Pieces *out, Error *err) {
    bool ok = true;
    for (int i = 0; ok && i < in->count; i++) {
        const char *s = piece(in, i);
        size_t begin = 0, end = in->len[i];
        for (int k = 0; k < d->strip_start && begin < end; k++) {
            int len = utf8_char_len(s + begin, end - begin);
            if (utf8_decode(s + begin, len) != d->strip_char) break;
            begin += (size_t)len;
        }
        for (int k = 0; k < d->strip_stop && end > begin; k++) {
            size_t last = end - 1;
            while (last > begin && ((uint8_t)s[last] & 0xC0) == 0x80) last--;
            if (utf8_decode(s + last, (int)(end - last)) != d->strip_char) break;
            end = last;
        }
        ok = pieces_push(out, s + begin, end - begin, false, err);
    }
    return ok;
}

static bool decode_replace(const Decoder *d, const Pieces *in, Pieces *out, Error *err) {
    Buf replaced = {0};
    bool ok = true;
    for (int i = 0; ok && i < in->count; i++) {
        replaced.len = 0;
        ok = pattern_replace_all(&d->pattern, piece(in, i), in->len[i], d->content, &replaced, err) &&
             pieces_push(out, replaced.data, replaced.len, false, err);
    }
    free(replaced.data);
    return ok;
}

// The replacement char becomes a space, except in the first token where it
// is dropped (unless prepend_scheme is "never").
static bool decode_metaspace(const Decoder *d, const Pieces *in, Pieces *out, Error *err) {
    size_t rep_len = strlen(d->replacement);
    Buf text = {0};
    bool ok = true;
    for (int i = 0; ok && i < in->count; i++) {
        const char *s = piece(in, i);
        text.len = 0;
        for (size_t at = 0; ok && at < in->len[i];) {
            bool is_rep = at + rep_len <= in->len[i] && memcmp(s + at, d->replacement, rep_len) == 0;
            if (is_rep && !(i == 0 && d->prepend != PREPEND_NEVER)) ok = buf_append(&text, " ", 1, err);
            if (!is_rep) ok = buf_append(&text, s + at, 1, err);
            at += is_rep ? rep_len : 1;
        }
        ok = ok && pieces_push(out, text.data, text.len, false, err);
    }
    free(text.data);
    return ok;
}

static bool apply_decoder(const struct HfTokenizer *tok, const Decoder *d, const Pieces *in,
                          Pieces *out, Error *err) {
    switch (d->kind) {
    case DEC_BYTE_LEVEL: return decode_byte_level(tok, in, out, err);
    case DEC_REPLACE: return decode_replace(d, in, out, err);
    case DEC_BYTE_FALLBACK: return decode_byte_fallback(in, out, err);
    case DEC_FUSE: return decode_fuse(in, out, err);
    case DEC_STRIP: return decode_strip(d, in, out, err);
    case DEC_METASPACE: return decode_metaspace(d, in, out, err);
    }
    return fail(err, "unknown decoder kind %d", (int)d->kind);
}

bool decode_tokens(const struct HfTokenizer *tok, Pieces *tokens, Pieces *scratch, Error *err) {
    for (int i = 0; i < tok->n_decoders; i++) {
        pieces_clear(scratch);
        if (!apply_decoder(tok, &tok->decoders[i], tokens, scratch, err)) return false;
        Pieces swap = *tokens;
        *tokens = *scratch;
        *scratch = swap;
    }
    return true;
}
