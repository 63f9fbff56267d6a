// Chat and text rendering into token ids with label masks.
//
//   chat: the tokenizer's chat template (chat_template.c)   labels on assistant turns + end of turn
//   text: <bos> text <eos>                                   labels on everything after <bos>
#include "data.h"
#include "data_private.h"

#include <stdlib.h>
#include <string.h>

void token_sequence_free(TokenSequence *seq) {
    free(seq->ids);
    free(seq->labels);
    *seq = (TokenSequence){0};
}

// Keeps labels as long as ids after ids grew.
static bool sync_label_capacity(TokenSequence *seq, Error *err) {
    if (seq->labels_capacity >= seq->ids_capacity) return true;
    int32_t *bigger = realloc(seq->labels, (size_t)seq->ids_capacity * sizeof *seq->labels);
    if (!bigger) return fail(err, "out of memory growing labels to %d tokens", seq->ids_capacity);
    seq->labels = bigger;
    seq->labels_capacity = seq->ids_capacity;
    return true;
}

bool seq_push_token(TokenSequence *seq, int32_t id, bool trained, Error *err) {
    if (!token_ids_reserve(&seq->ids, &seq->ids_capacity, (int64_t)seq->length + 1, err)) return false;
    if (!sync_label_capacity(seq, err)) return false;
    seq->ids[seq->length] = id;
    seq->labels[seq->length] = trained ? id : IGNORE_INDEX;
    seq->length++;
    return true;
}

bool seq_push_text(const Tokenizer *tok, TokenSequence *seq, const char *text, bool trained,
                      Error *err) {
    int start = seq->length;
    if (!tokenizer_encode(tok, text, strlen(text), &seq->ids, &seq->length, &seq->ids_capacity, err)) {
        return false;
    }
    if (!sync_label_capacity(seq, err)) return false;
    for (int i = start; i < seq->length; i++) seq->labels[i] = trained ? seq->ids[i] : IGNORE_INDEX;
    return true;
}

static bool parse_role(const char *role, LlavaRole *out, Error *err) {
    static const char *const names[] = {[LLAVA_SYSTEM] = "system", [LLAVA_USER] = "user",
                                        [LLAVA_ASSISTANT] = "assistant"};
    for (int i = 0; i < 3; i++) {
        if (strcmp(role, names[i]) == 0) return *out = (LlavaRole)i, true;
    }
    return fail(err, "unknown role \"%s\" (expected system, user or assistant)", role);
}

bool render_messages(const Tokenizer *tok, const char *const *roles, const char *const *contents,
                     int n_turns, TokenSequence *seq, Error *err) {
    LlavaRole *parsed = checked_malloc((size_t)(n_turns > 0 ? n_turns : 1) * sizeof *parsed, "chat roles", err);
    bool ok = parsed != NULL;
    for (int turn = 0; ok && turn < n_turns; turn++) {
        ok = parse_role(roles[turn], &parsed[turn], err);
        if (!ok) fail_context(err, "message %d: ", turn);
    }
    int image_end;
    ok = ok && render_chat(tok, parsed, contents, n_turns, (ImageSlots){0}, seq, &image_end, err);
    free(parsed);
    return ok;
}

bool render_text(const Tokenizer *tok, const char *text, TokenSequence *seq, Error *err) {
    seq->length = 0;
    return seq_push_token(seq, tokenizer_bos(tok), false, err) && seq_push_text(tok, seq, text, true, err) &&
           seq_push_token(seq, tokenizer_eos(tok), true, err);
}

// Moves seq's buffers into out, truncated to max_seq_len tokens.
static void sample_take(TokenSequence *seq, int max_seq_len, Sample *out) {
    out->truncated = seq->length > max_seq_len;
    out->length = out->truncated ? max_seq_len : seq->length;
    out->ids = seq->ids;
    out->labels = seq->labels;
}

bool sample_from_messages(const Tokenizer *tok, const char *const *roles,
                          const char *const *contents, int n_turns, int max_seq_len,
                          Sample *out, Error *err) {
    *out = (Sample){0};
    if (max_seq_len <= 0) return fail(err, "max_seq_len must be positive (got %d)", max_seq_len);
    TokenSequence seq = {0};
    if (!render_messages(tok, roles, contents, n_turns, &seq, err)) {
        token_sequence_free(&seq);
        return false;
    }
    sample_take(&seq, max_seq_len, out);
    return true;
}

bool sample_from_text(const Tokenizer *tok, const char *text, int max_seq_len, Sample *out,
                      Error *err) {
    *out = (Sample){0};
    if (max_seq_len <= 0) return fail(err, "max_seq_len must be positive (got %d)", max_seq_len);
    TokenSequence seq = {0};
    if (!render_text(tok, text, &seq, err)) {
        token_sequence_free(&seq);
        return false;
    }
    sample_take(&seq, max_seq_len, out);
    return true;
}

void sample_free(Sample *sample) {
    free(sample->ids);
    free(sample->labels);
    *sample = (Sample){0};
}
