// Patterns (PCRE2), normalizers and pre-tokenizers of a Hugging Face
// tokenizer, following the Rust `tokenizers` library step by step.
#include <stdlib.h>
#include <string.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include "hf_tokenizer_internal.h"

// ----------------------------------------------------------------------------
// patterns

// Rust's \s is Unicode White_Space; PCRE2's (UCP) misses U+0085, so add it.
static bool translate_regex(const char *regex, Buf *out, Error *err) {
    bool in_class = false;
    for (size_t i = 0; regex[i]; i++) {
        char c = regex[i];
        bool ok;
        if (c == '\\' && regex[i + 1] == 's') {
            ok = buf_append(out, in_class ? "\\s\\x{85}" : "[\\s\\x{85}]", in_class ? 8 : 10, err);
            i++;
        } else if (c == '\\' && regex[i + 1]) {
            ok = buf_append(out, regex + i, 2, err);
            i++;
        } else {
            if (c == '[') in_class = true;
            if (c == ']') in_class = false;
            ok = buf_append(out, &c, 1, err);
        }
        if (!ok) return false;
    }
    return buf_terminate(out, err);
}

bool pattern_compile_regex(Pattern *p, const char *regex, Error *err) {
    memset(p, 0, sizeof *p);
    Buf translated = {0};
    if (!translate_regex(regex, &translated, err)) {
        free(translated.data);
        return false;
    }
    int code;
    PCRE2_SIZE offset;
    p->regex = pcre2_compile((PCRE2_SPTR)translated.data, translated.len, PCRE2_UTF | PCRE2_UCP,
                             &code, &offset, NULL);
    free(translated.data);
    if (!p->regex) {
        PCRE2_UCHAR why[256];
        pcre2_get_error_message(code, why, sizeof why);
        return fail(err, "regex /%s/ at offset %zu: %s", regex, (size_t)offset, (char *)why);
    }
    return true;
}

bool pattern_set_literal(Pattern *p, const char *literal, Error *err) {
    memset(p, 0, sizeof *p);
    p->literal = checked_strdup(literal, err);
    p->literal_len = strlen(literal);
    return p->literal != NULL;
}

void pattern_free(Pattern *p) {
    free(p->literal);
    pcre2_code_free(p->regex);
    memset(p, 0, sizeof *p);
}

void spans_free(Spans *spans) {
    free(spans->at);
    memset(spans, 0, sizeof *spans);
}

static bool spans_push(Spans *spans, size_t start, size_t end, Error *err) {
    if (spans->count == spans->cap) {
        int cap = spans->cap ? 2 * spans->cap : 16;
        size_t *at = realloc(spans->at, 2 * (size_t)cap * sizeof *at);
        if (!at) return fail(err, "out of memory growing a list of %d regex matches", cap);
        spans->at = at;
        spans->cap = cap;
    }
    spans->at[2 * spans->count] = start;
    spans->at[2 * spans->count + 1] = end;
    spans->count++;
    return true;
}

static bool literal_find_all(const Pattern *p, const char *s, size_t n, Spans *out, Error *err) {
    if (p->literal_len == 0) return true;
    for (size_t start = 0; start + p->literal_len <= n;) {
        if (memcmp(s + start, p->literal, p->literal_len) != 0) {
            start++;
            continue;
        }
        if (!spans_push(out, start, start + p->literal_len, err)) return false;
        start += p->literal_len;
    }
    return true;
}

// Empty matches right after the previous match are skipped, as Rust's regex.
static bool regex_find_all(const Pattern *p, const char *s, size_t n, Spans *out, Error *err) {
    pcre2_match_data *match = pcre2_match_data_create_from_pattern(p->regex, NULL);
    if (!match) return fail(err, "out of memory creating PCRE2 match data");
    size_t from = 0, previous_end = SIZE_MAX;
    bool ok = true;
    while (ok && from <= n) {
        int rc = pcre2_match(p->regex, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, match, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR why[256];
            pcre2_get_error_message(rc, why, sizeof why);
            ok = fail(err, "regex match failed: %s", (char *)why);
            break;
        }
        PCRE2_SIZE *ovector = pcre2_get_ovector_pointer(match);
        size_t start = ovector[0], end = ovector[1];
        if (start == end) {
            if (end != previous_end) ok = spans_push(out, start, end, err);
            from = end < n ? end + (size_t)utf8_char_len(s + end, n - end) : n + 1;
        } else {
            ok = spans_push(out, start, end, err);
            from = end;
        }
        previous_end = end;
    }
    pcre2_match_data_free(match);
    return ok;
}

bool pattern_find_all(const Pattern *p, const char *s, size_t n, Spans *out, Error *err) {
    out->count = 0;
    return p->literal ? literal_find_all(p, s, n, out, err) : regex_find_all(p, s, n, out, err);
}

bool pattern_replace_all(const Pattern *p, const char *s, size_t n, const char *content,
                         Buf *out, Error *err) {
    Spans spans = {0};
    bool ok = pattern_find_all(p, s, n, &spans, err);
    size_t previous = 0;
    for (int i = 0; ok && i < spans.count; i++) {
        size_t start = spans.at[2 * i], end = spans.at[2 * i + 1];
        ok = buf_append(out, s + previous, start - previous, err) &&
             buf_append(out, content, strlen(content), err);
        previous = end;
    }
    ok = ok && buf_append(out, s + previous, n - previous, err);
    spans_free(&spans);
    return ok;
}

// ----------------------------------------------------------------------------
// normalizers

static bool unicode_normalize(NormalizerKind kind, const char *s, size_t n, Buf *out, Error *err) {
    UErrorCode status = U_ZERO_ERROR;
    const UNormalizer2 *form = kind == NORM_NFC    ? unorm2_getNFCInstance(&status)
                               : kind == NORM_NFD  ? unorm2_getNFDInstance(&status)
                               : kind == NORM_NFKC ? unorm2_getNFKCInstance(&status)
                                                   : unorm2_getNFKDInstance(&status);
    if (U_FAILURE(status)) return fail(err, "ICU normalizer: %s", u_errorName(status));
    int32_t utf16_len = 0, normal_len = 0, utf8_len = 0;
    // UTF-8 -> UTF-16 -> normalized UTF-16 -> UTF-8; a normal form grows text by at most 18x.
    UChar *utf16 = checked_malloc((n + 1) * sizeof(UChar), "UTF-16 text", err);
    UChar *normal = utf16 ? checked_malloc(18 * (n + 1) * sizeof(UChar), "UTF-16 text", err) : NULL;
    bool ok = normal != NULL;
    if (ok) u_strFromUTF8(utf16, (int32_t)n + 1, &utf16_len, s, (int32_t)n, &status);
    if (ok && U_SUCCESS(status)) {
        normal_len = unorm2_normalize(form, utf16, utf16_len, normal, 18 * ((int32_t)n + 1), &status);
    }
    if (ok && U_SUCCESS(status)) u_strToUTF8(NULL, 0, &utf8_len, normal, normal_len, &status);
    if (status == U_BUFFER_OVERFLOW_ERROR) status = U_ZERO_ERROR;
    ok = ok && U_SUCCESS(status) && buf_reserve(out, (size_t)utf8_len + 1, err);
    if (ok) u_strToUTF8(out->data + out->len, utf8_len + 1, NULL, normal, normal_len, &status);
    if (ok && U_FAILURE(status)) ok = fail(err, "ICU normalization: %s", u_errorName(status));
    if (ok) out->len += (size_t)utf8_len;
    free(utf16);
    free(normal);
    return ok;
}

static bool strip_whitespace(const Normalizer *nz, const char *s, size_t n, Buf *out, Error *err) {
    size_t start = 0, end = n;
    while (nz->strip_left && start < end) {
        int len = utf8_char_len(s + start, end - start);
        if (!is_unicode_whitespace(utf8_decode(s + start, len))) break;
        start += (size_t)len;
    }
    while (nz->strip_right && end > start) {
        size_t last = end - 1;
        while (last > start && ((uint8_t)s[last] & 0xC0) == 0x80) last--;
        if (!is_unicode_whitespace(utf8_decode(s + last, (int)(end - last)))) break;
        end = last;
    }
    return buf_append(out, s + start, end - start, err);
}

static bool apply_normalizer(const Normalizer *nz, const char *s, size_t n, Buf *out, Error *err) {
    switch (nz->kind) {
    case NORM_PREPEND:
        return (n == 0 || buf_append(out, nz->text, strlen(nz->text), err)) && buf_append(out, s, n, err);
    case NORM_REPLACE: return pattern_replace_all(&nz->pattern, s, n, nz->text, out, err);
    case NORM_STRIP: return strip_whitespace(nz, s, n, out, err);
    default: return unicode_normalize(nz->kind, s, n, out, err);
    }
}

bool normalize(const struct HfTokenizer *tok, const char *s, size_t n, Buf *out, Error *err) {
    out->len = 0;
    if (!buf_append(out, s, n, err)) return false;
    Buf next = {0};
    bool ok = true;
    for (int i = 0; ok && i < tok->n_normalizers; i++) {
        next.len = 0;
        ok = apply_normalizer(&tok->normalizers[i], out->data, out->len, &next, err);
        Buf swap = *out;
        *out = next;
        next = swap;
    }
    free(next.data);
    return ok;
}

// ----------------------------------------------------------------------------
// pre-tokenizers: each maps a list of pieces to a finer list

// Rust's NormalizedString::split: the matches and the gaps between them,
// merged or dropped by `behavior`; empty pieces are dropped.
static bool split_piece(const Pattern *pattern, SplitBehavior behavior, bool invert,
                        const char *s, size_t n, bool at_origin, Pieces *out, Error *err) {
    Spans matches = {0};
    if (!pattern_find_all(pattern, s, n, &matches, err)) return false;
    // every span of s in order, with whether it is a (non-inverted) match
    size_t count = 0, cap = 2 * (size_t)matches.count + 1;
    size_t *span = checked_malloc(2 * cap * sizeof *span, "split spans", err);
    bool *is_match = span ? checked_malloc(cap * sizeof *is_match, "split spans", err) : NULL;
    bool ok = is_match != NULL;
    size_t previous = 0;
    for (int i = 0; ok && i <= matches.count; i++) {
        size_t start = i < matches.count ? matches.at[2 * i] : n;
        size_t end = i < matches.count ? matches.at[2 * i + 1] : n;
        if (start > previous) span[2 * count] = previous, span[2 * count + 1] = start, is_match[count++] = invert;
        if (i < matches.count) span[2 * count] = start, span[2 * count + 1] = end, is_match[count++] = !invert;
        previous = end;
    }
    // merge neighbours per behavior into kept spans; Removed drops the matches
    size_t kept = 0;
    for (size_t i = 0; ok && i < count; i++) {
        bool merge = false;
        if (behavior == SPLIT_MERGED_WITH_PREVIOUS) merge = i > 0 && is_match[i] && !is_match[i - 1];
        if (behavior == SPLIT_MERGED_WITH_NEXT) merge = i > 0 && is_match[i - 1] && !is_match[i];
        if (behavior == SPLIT_CONTIGUOUS) merge = i > 0 && is_match[i] == is_match[i - 1];
        if (merge) {
            span[2 * (kept - 1) + 1] = span[2 * i + 1];
        } else if (!(behavior == SPLIT_REMOVED && is_match[i])) {
            span[2 * kept] = span[2 * i], span[2 * kept + 1] = span[2 * i + 1];
            kept++;
        }
    }
    for (size_t i = 0; ok && i < kept; i++) {
        size_t start = span[2 * i], len = span[2 * i + 1] - start;
        if (len > 0) ok = pieces_push(out, s + start, len, at_origin && start == 0, err);
    }
    free(span);
    free(is_match);
    spans_free(&matches);
    return ok;
}

static bool byte_level_piece(const struct HfTokenizer *tok, const PreTokenizer *pre, const char *s,
                             size_t n, bool at_origin, Pieces *out, Error *err) {
    Buf prefixed = {0};
    Pieces words = {0};
    bool ok = true;
    if (pre->add_prefix_space && (n == 0 || s[0] != ' ')) ok = buf_append(&prefixed, " ", 1, err);
    ok = ok && buf_append(&prefixed, s, n, err);
    if (ok && pre->use_regex) {
        ok = split_piece(&pre->pattern, SPLIT_ISOLATED, false, prefixed.data, prefixed.len, at_origin, &words, err);
    } else if (ok && prefixed.len > 0) {
        ok = pieces_push(&words, prefixed.data, prefixed.len, at_origin, err);
    }
    Buf mapped = {0};
    for (int w = 0; ok && w < words.count; w++) {
        mapped.len = 0;
        const uint8_t *bytes = (const uint8_t *)words.text.data + words.start[w];
        for (size_t i = 0; ok && i < words.len[w]; i++) ok = utf8_encode(&mapped, tok->byte_chars[bytes[i]], err);
        ok = ok && pieces_push(out, mapped.data, mapped.len, words.at_origin[w], err);
    }
    free(mapped.data);
    free(prefixed.data);
    pieces_free(&words);
    return ok;
}

static bool metaspace_piece(const PreTokenizer *pre, const char *s, size_t n, bool at_origin,
                            Pieces *out, Error *err) {
    size_t rep_len = strlen(pre->replacement);
    Buf replaced = {0};
    bool starts_with_rep = n >= 1 && (s[0] == ' ' || (n >= rep_len && memcmp(s, pre->replacement, rep_len) == 0));
    bool prepend = !starts_with_rep && (pre->prepend == PREPEND_ALWAYS || (pre->prepend == PREPEND_FIRST && at_origin));
    bool ok = !prepend || buf_append(&replaced, pre->replacement, rep_len, err);
    for (size_t i = 0; ok && i < n; i++) {
        ok = s[i] == ' ' ? buf_append(&replaced, pre->replacement, rep_len, err) : buf_append(&replaced, s + i, 1, err);
    }
    if (ok && pre->split) {
        Pattern rep = {.literal = (char *)pre->replacement, .literal_len = rep_len};
        ok = split_piece(&rep, SPLIT_MERGED_WITH_NEXT, false, replaced.data, replaced.len, at_origin, out, err);
    } else if (ok && replaced.len > 0) {
        ok = pieces_push(out, replaced.data, replaced.len, at_origin, err);
    }
    free(replaced.data);
    return ok;
}

static bool apply_pre_tokenizer(const struct HfTokenizer *tok, const PreTokenizer *pre,
                                const char *s, size_t n, bool at_origin, Pieces *out, Error *err) {
    switch (pre->kind) {
    case PRE_BYTE_LEVEL: return byte_level_piece(tok, pre, s, n, at_origin, out, err);
    case PRE_SPLIT: return split_piece(&pre->pattern, pre->behavior, pre->invert, s, n, at_origin, out, err);
    case PRE_METASPACE: return metaspace_piece(pre, s, n, at_origin, out, err);
    }
    return fail(err, "unknown pre-tokenizer kind %d", (int)pre->kind);
}

bool pre_tokenize(const struct HfTokenizer *tok, Pieces *in, Pieces *scratch, Error *err) {
    for (int p = 0; p < tok->n_pre_tokenizers; p++) {
        pieces_clear(scratch);
        for (int i = 0; i < in->count; i++) {
            if (!apply_pre_tokenizer(tok, &tok->pre_tokenizers[p], in->text.data + in->start[i],
                                     in->len[i], in->at_origin[i], scratch, err)) {
                return false;
            }
        }
        Pieces swap = *in;
        *in = *scratch;
        *scratch = swap;
    }
    return true;
}
