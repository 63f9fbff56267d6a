// Chat and text rendering into token ids with label masks.
//
//   chat: <bos> (<|role|> content [<eos> if assistant])*    labels on assistant content + <eos>
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

// "user" -> id of "<|user|>"; fails for roles outside system/user/assistant.
bool role_marker_id(const Tokenizer *tok, const char *role, int32_t *id, Error *err) {
    static const char *const roles[] = {"system", "user", "assistant"};
    static const char *const markers[] = {"<|system|>", "<|user|>", "<|assistant|>"};
    for (int i = 0; i < 3; i++) {
        if (strcmp(role, roles[i]) != 0) continue;
        *id = tokenizer_token_id(tok, markers[i]);
        if (*id < 0) return fail(err, "the tokenizer has no %s token for role \"%s\"", markers[i], role);
        return true;
    }
    return fail(err, "unknown role \"%s\" (expected system, user or assistant)", role);
}

bool render_messages(const Tokenizer *tok, const char *const *roles, const char *const *contents,
                     int n_turns, TokenSequence *seq, Error *err) {
    seq->length = 0;
    if (!seq_push_token(seq, tokenizer_bos(tok), false, err)) return false;
    for (int turn = 0; turn < n_turns; turn++) {
        int32_t marker = -1;
        if (!role_marker_id(tok, roles[turn], &marker, err)) return fail_context(err, "message %d: ", turn);
        bool is_assistant = strcmp(roles[turn], "assistant") == 0;
        if (!seq_push_token(seq, marker, false, err)) return false;
        if (!seq_push_text(tok, seq, contents[turn], is_assistant, err)) return false;
        if (is_assistant && !seq_push_token(seq, tokenizer_eos(tok), true, err)) return false;
    }
    return true;
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
