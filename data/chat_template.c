// Chat templates: a chat (roles, contents) -> token ids and labels.
//
//   bytes      <bos> (<|role|> content [<eos> if assistant])*            (byte tokenizer)
//   llama3     <|begin_of_text|> (<|start_header_id|>role<|end_header_id|>\n\n trim(content) <|eot_id|>)*
//   llama2     (<s>[INST] [<<SYS>>\n system \n<</SYS>>\n\n] strip(user) [/INST] " " strip(answer) " " </s>)*
//   vicuna_v1  <s> system " " ("USER: " user " " "ASSISTANT: " answer </s>)*      (LLaVA's conv_vicuna_v1)
//   plain      <s> (user | answer "\n")*                                         (LLaVA's conv_llava_plain)
//
// Labels cover the assistant's text and its end-of-turn token (for llama2 the
// " answer </s>" span); everything else is IGNORE_INDEX. The Hugging Face
// templates render the same string as the Jinja templates in
// scripts/ref_chat_templates.py and tokenize it as transformers'
// apply_chat_template does: the whole string at once, so every id matches;
// a token is labelled when it holds a byte of an assistant span.
#include "data.h"
#include "data_private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const TEMPLATE_NAMES[] = {
    [CHAT_TEMPLATE_NONE] = "none",     [CHAT_TEMPLATE_BYTES] = "bytes",         [CHAT_TEMPLATE_LLAMA3] = "llama3",
    [CHAT_TEMPLATE_LLAMA2] = "llama2", [CHAT_TEMPLATE_VICUNA_V1] = "vicuna_v1", [CHAT_TEMPLATE_PLAIN] = "plain",
};

static const char VICUNA_SYSTEM[] = "A chat between a curious user and an artificial intelligence assistant. "
                                    "The assistant gives helpful, detailed, and polite answers to the user's "
                                    "questions.";

const char *chat_template_name(ChatTemplate chat_template) { return TEMPLATE_NAMES[chat_template]; }

bool chat_template_from_name(const char *name, ChatTemplate *out, Error *err) {
    for (int t = CHAT_TEMPLATE_LLAMA3; t <= CHAT_TEMPLATE_PLAIN; t++) {
        if (strcmp(name, TEMPLATE_NAMES[t]) == 0) return *out = (ChatTemplate)t, true;
    }
    return fail(err, "unknown chat template '%s' (known: llama3, llama2, vicuna_v1, plain, auto)", name);
}

ChatTemplate chat_template_recognise(const char *jinja) {
    if (strstr(jinja, "<|start_header_id|>") && strstr(jinja, "<|eot_id|>")) return CHAT_TEMPLATE_LLAMA3;
    if (strstr(jinja, "[INST]") && strstr(jinja, "<<SYS>>")) return CHAT_TEMPLATE_LLAMA2;
    if (strstr(jinja, "ASSISTANT:")) return CHAT_TEMPLATE_VICUNA_V1;
    return CHAT_TEMPLATE_NONE;
}

// ----------------------------------------------------------------------------
// the rendered string and its assistant spans

typedef struct Span {
    size_t start, end; // bytes [start, end) of the rendered text
} Span;

typedef struct Rendered {
    char *text;
    size_t length, capacity;
    Span *spans;
    int n_spans, spans_capacity;
} Rendered;

static void rendered_free(Rendered *r) {
    free(r->text);
    free(r->spans);
}

static bool append(Rendered *r, const char *s, size_t n, Error *err) {
    if (r->length + n + 1 > r->capacity) {
        size_t capacity = 2 * (r->length + n + 1) + 256;
        char *bigger = realloc(r->text, capacity);
        if (!bigger) return fail(err, "out of memory rendering a chat of %zu bytes", capacity);
        r->text = bigger;
        r->capacity = capacity;
    }
    memcpy(r->text + r->length, s, n);
    r->length += n;
    r->text[r->length] = '\0';
    return true;
}

static bool append_str(Rendered *r, const char *s, Error *err) { return append(r, s, strlen(s), err); }

// Opens an assistant span at the current end; close_span ends it.
static bool open_span(Rendered *r, Error *err) {
    if (r->n_spans == r->spans_capacity) {
        int capacity = r->spans_capacity ? 2 * r->spans_capacity : 8;
        Span *bigger = realloc(r->spans, (size_t)capacity * sizeof *bigger);
        if (!bigger) return fail(err, "out of memory for %d assistant turns", capacity);
        r->spans = bigger;
        r->spans_capacity = capacity;
    }
    r->spans[r->n_spans++] = (Span){r->length, r->length};
    return true;
}

static void close_span(Rendered *r) { r->spans[r->n_spans - 1].end = r->length; }

// Python's str.isspace for the code point at s (ASCII, \x1c-\x1f, Latin-1 and Unicode spaces).
static size_t space_length(const char *s, size_t n) {
    static const char *const wide[] = {"\xc2\x85", "\xc2\xa0", "\xe1\x9a\x80", "\xe2\x80\xa8", "\xe2\x80\xa9",
                                       "\xe2\x80\xaf", "\xe2\x81\x9f", "\xe3\x80\x80"};
    unsigned char c = (unsigned char)s[0];
    if (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f)) return 1;
    if (n >= 3 && c == 0xe2 && (unsigned char)s[1] == 0x80 && (unsigned char)s[2] >= 0x80 &&
        (unsigned char)s[2] <= 0x8a)
        return 3; // U+2000..U+200A
    for (size_t i = 0; i < sizeof wide / sizeof wide[0]; i++) {
        size_t len = strlen(wide[i]);
        if (n >= len && memcmp(s, wide[i], len) == 0) return len;
    }
    return 0;
}

// Appends s with leading and trailing whitespace removed (Jinja's trim, str.strip()).
static bool append_stripped(Rendered *r, const char *s, Error *err) {
    size_t n = strlen(s), len;
    while (n > 0 && (len = space_length(s, n)) > 0) s += len, n -= len;
    size_t end = 0; // after the last byte that is not whitespace (spaces never start with a UTF-8 continuation byte)
    for (size_t at = 0; at < n;) {
        len = space_length(s + at, n - at);
        at += len ? len : 1;
        if (!len) end = at;
    }
    return append(r, s, end, err);
}

// ----------------------------------------------------------------------------
// the templates, as their Jinja texts

static const char *role_name(LlavaRole role) {
    return role == LLAVA_SYSTEM ? "system" : role == LLAVA_USER ? "user" : "assistant";
}

static bool check_system_first(const LlavaRole *roles, int n_turns, Error *err) {
    for (int turn = 1; turn < n_turns; turn++) {
        if (roles[turn] == LLAVA_SYSTEM) return fail(err, "message %d: only the first message may be a system prompt", turn);
    }
    return true;
}

static bool render_llama3(const char *bos, const LlavaRole *roles, const char *const *contents, int n_turns,
                          Rendered *r, Error *err) {
    if (n_turns > 0 && !append_str(r, bos, err)) return false;
    for (int turn = 0; turn < n_turns; turn++) {
        bool is_assistant = roles[turn] == LLAVA_ASSISTANT;
        if (!append_str(r, "<|start_header_id|>", err) || !append_str(r, role_name(roles[turn]), err) ||
            !append_str(r, "<|end_header_id|>\n\n", err) || (is_assistant && !open_span(r, err)) ||
            !append_stripped(r, contents[turn], err) || !append_str(r, "<|eot_id|>", err))
            return false;
        if (is_assistant) close_span(r);
    }
    return true;
}

static bool render_llama2_turn(const char *bos, const char *eos, LlavaRole role, const char *content,
                               Rendered *r, Error *err) {
    if (role == LLAVA_USER)
        return append_str(r, bos, err) && append_str(r, "[INST] ", err) && append_stripped(r, content, err) &&
               append_str(r, " [/INST]", err);
    if (!open_span(r, err) || !append_str(r, " ", err) || !append_stripped(r, content, err) ||
        !append_str(r, " ", err) || !append_str(r, eos, err))
        return false;
    close_span(r);
    return true;
}

// The system prompt joins the first user message: "<<SYS>>\n" system "\n<</SYS>>\n\n" user.
static bool render_llama2(const char *bos, const char *eos, const LlavaRole *roles, const char *const *contents,
                          int n_turns, Rendered *r, Error *err) {
    int first = n_turns > 0 && roles[0] == LLAVA_SYSTEM;
    for (int turn = first; turn < n_turns; turn++) {
        bool user_expected = (turn - first) % 2 == 0;
        if ((roles[turn] == LLAVA_USER) != user_expected || roles[turn] == LLAVA_SYSTEM)
            return fail(err, "message %d: llama2 needs roles alternating user/assistant/... (found %s)", turn,
                        role_name(roles[turn]));
        const char *content = contents[turn];
        char *joined = NULL;
        if (first && turn == 1) {
            size_t size = strlen(contents[0]) + strlen(content) + 32;
            if (!(joined = checked_malloc(size, "a system prompt", err))) return false;
            snprintf(joined, size, "<<SYS>>\n%s\n<</SYS>>\n\n%s", contents[0], content);
            content = joined;
        }
        bool ok = render_llama2_turn(bos, eos, roles[turn], content, r, err);
        free(joined);
        if (!ok) return false;
    }
    return true;
}

static bool render_vicuna_v1(const char *bos, const char *eos, const LlavaRole *roles, const char *const *contents,
                             int n_turns, Rendered *r, Error *err) {
    int first = n_turns > 0 && roles[0] == LLAVA_SYSTEM;
    if (!check_system_first(roles, n_turns, err) || !append_str(r, bos, err) ||
        !append_str(r, first ? contents[0] : VICUNA_SYSTEM, err) || !append_str(r, " ", err))
        return false;
    for (int turn = first; turn < n_turns; turn++) {
        bool ok = roles[turn] == LLAVA_USER
                      ? append_str(r, "USER: ", err) && append_str(r, contents[turn], err) && append_str(r, " ", err)
                      : append_str(r, "ASSISTANT: ", err) && open_span(r, err) &&
                            append_str(r, contents[turn], err) && append_str(r, eos, err);
        if (!ok) return false;
        if (roles[turn] == LLAVA_ASSISTANT) close_span(r);
    }
    return true;
}

static bool render_plain(const char *bos, const LlavaRole *roles, const char *const *contents, int n_turns,
                         Rendered *r, Error *err) {
    if (!append_str(r, bos, err)) return false;
    for (int turn = 0; turn < n_turns; turn++) {
        bool is_assistant = roles[turn] == LLAVA_ASSISTANT;
        if ((is_assistant && !open_span(r, err)) || !append_str(r, contents[turn], err) ||
            (is_assistant && !append_str(r, "\n", err)))
            return false;
        if (is_assistant) close_span(r);
    }
    return true;
}

static bool render_string(const Tokenizer *tok, const LlavaRole *roles, const char *const *contents, int n_turns,
                          Rendered *r, Error *err) {
    const HfTokenizer *hf = tokenizer_hf(tok);
    const char *bos = hf_tokenizer_id_to_token(hf, tokenizer_bos(tok));
    const char *eos = hf_tokenizer_id_to_token(hf, tokenizer_eos(tok));
    switch (tokenizer_template_kind(tok)) {
    case CHAT_TEMPLATE_LLAMA3: return render_llama3(bos, roles, contents, n_turns, r, err);
    case CHAT_TEMPLATE_LLAMA2: return render_llama2(bos, eos, roles, contents, n_turns, r, err);
    case CHAT_TEMPLATE_VICUNA_V1: return render_vicuna_v1(bos, eos, roles, contents, n_turns, r, err);
    case CHAT_TEMPLATE_PLAIN: return render_plain(bos, roles, contents, n_turns, r, err);
    default: return tokenizer_check_chat_template(tok, err);
    }
}

// ----------------------------------------------------------------------------
// tokenizing the rendered string

// Tokenizes text[from, to) and labels the tokens that hold assistant bytes.
static bool push_piece(const Tokenizer *tok, const Rendered *r, size_t from, size_t to, TokenSequence *seq,
                       Error *err) {
    size_t *marks = checked_malloc((size_t)(2 * r->n_spans + 1) * sizeof *marks, "span marks", err);
    int *mark_tokens = checked_malloc((size_t)(2 * r->n_spans + 1) * sizeof *mark_tokens, "span marks", err);
    int n_marks = 0;
    for (int i = 0; marks && mark_tokens && i < r->n_spans; i++) {
        if (r->spans[i].end <= from || r->spans[i].start >= to) continue;
        marks[n_marks++] = (r->spans[i].start > from ? r->spans[i].start : from) - from;
        marks[n_marks++] = (r->spans[i].end < to ? r->spans[i].end : to) - from;
    }
    int32_t *ids = NULL;
    int n_ids = 0;
    bool ok = marks && mark_tokens &&
              hf_tokenizer_encode_marked(tokenizer_hf(tok), r->text + from, to - from, from == 0, marks, n_marks,
                                         &ids, &n_ids, mark_tokens, err);
    for (int t = 0, span = 0; ok && t < n_ids; t++) {
        while (span < n_marks && t >= mark_tokens[span + 1]) span += 2;
        ok = seq_push_token(seq, ids[t], span < n_marks && t >= mark_tokens[span], err);
    }
    free(ids);
    free(marks);
    free(mark_tokens);
    return ok;
}

static bool push_rendered(const Tokenizer *tok, const Rendered *r, ImageSlots images, TokenSequence *seq,
                          int *image_end, Error *err) {
    static const size_t placeholder_length = sizeof LLAVA_IMAGE_PLACEHOLDER - 1;
    size_t from = 0;
    for (const char *at; images.n_tokens > 0 && (at = strstr(r->text + from, LLAVA_IMAGE_PLACEHOLDER));
         from = (size_t)(at - r->text) + placeholder_length) {
        if (!push_piece(tok, r, from, (size_t)(at - r->text), seq, err)) return false;
        for (int i = 0; i < images.n_tokens; i++)
            if (!seq_push_token(seq, images.token_id, false, err)) return false;
        *image_end = seq->length;
    }
    return push_piece(tok, r, from, r->length, seq, err);
}

// ----------------------------------------------------------------------------
// the byte tokenizer's rendering

static bool role_marker_id(const Tokenizer *tok, LlavaRole role, int32_t *id, Error *err) {
    static const char *const markers[] = {[LLAVA_SYSTEM] = "<|system|>", [LLAVA_USER] = "<|user|>",
                                          [LLAVA_ASSISTANT] = "<|assistant|>"};
    *id = tokenizer_token_id(tok, markers[role]);
    return *id >= 0 || fail(err, "the tokenizer has no %s token for role \"%s\"", markers[role], role_name(role));
}

// content with each <image> expanded.
static bool push_byte_content(const Tokenizer *tok, ImageSlots images, TokenSequence *seq, const char *content,
                              bool trained, int *image_end, Error *err) {
    static const size_t placeholder_length = sizeof LLAVA_IMAGE_PLACEHOLDER - 1;
    for (const char *next; images.n_tokens > 0 && (next = strstr(content, LLAVA_IMAGE_PLACEHOLDER));
         content = next + placeholder_length) {
        char *text = strndup(content, (size_t)(next - content));
        if (!text) return fail(err, "out of memory rendering a record");
        bool ok = seq_push_text(tok, seq, text, trained, err);
        free(text);
        for (int i = 0; ok && i < images.n_tokens; i++) ok = seq_push_token(seq, images.token_id, false, err);
        if (!ok) return false;
        *image_end = seq->length;
    }
    return seq_push_text(tok, seq, content, trained, err);
}

static bool render_bytes(const Tokenizer *tok, const LlavaRole *roles, const char *const *contents, int n_turns,
                         ImageSlots images, TokenSequence *seq, int *image_end, Error *err) {
    if (!seq_push_token(seq, tokenizer_bos(tok), false, err)) return false;
    for (int turn = 0; turn < n_turns; turn++) {
        bool is_assistant = roles[turn] == LLAVA_ASSISTANT;
        int32_t marker;
        if (!role_marker_id(tok, roles[turn], &marker, err) || !seq_push_token(seq, marker, false, err) ||
            !push_byte_content(tok, images, seq, contents[turn], is_assistant, image_end, err))
            return fail_context(err, "message %d: ", turn);
        if (is_assistant && !seq_push_token(seq, tokenizer_eos(tok), true, err)) return false;
    }
    return true;
}

bool render_chat(const Tokenizer *tok, const LlavaRole *roles, const char *const *contents, int n_turns,
                 ImageSlots images, TokenSequence *seq, int *image_end, Error *err) {
    seq->length = 0;
    *image_end = 0;
    if (tokenizer_template_kind(tok) == CHAT_TEMPLATE_BYTES)
        return render_bytes(tok, roles, contents, n_turns, images, seq, image_end, err);
    Rendered rendered = {0};
    bool ok = render_string(tok, roles, contents, n_turns, &rendered, err) &&
              append(&rendered, "", 0, err) && push_rendered(tok, &rendered, images, seq, image_end, err);
    rendered_free(&rendered);
    return ok;
}
