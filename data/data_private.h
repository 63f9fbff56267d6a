// data (private): shared between the files of the data module.
#pragma once
#include "data.h"

// A growing sequence of token ids with per-token labels, the common form of
// chat and text records before truncation.
typedef struct TokenSequence {
    int32_t *ids;
    int32_t *labels;  // parallel to ids: the id where trained on, IGNORE_INDEX elsewhere
    int length;
    int ids_capacity;
    int labels_capacity;
} TokenSequence;

// Grows *ids so that it holds at least `needed` ids (amortized doubling).
bool token_ids_reserve(int32_t **ids, int *capacity, int64_t needed, Error *err);

void token_sequence_free(TokenSequence *seq);
// Renders a chat (see sample_from_messages) or a text record (sample_from_text)
// after seq->length = 0, reusing seq's buffers.
bool render_messages(const Tokenizer *tok, const char *const *roles, const char *const *contents,
                     int n_turns, TokenSequence *seq, Error *err);
bool render_text(const Tokenizer *tok, const char *text, TokenSequence *seq, Error *err);

// ----------------------------------------------------------------------------
// chat templates (chat_template.c)

typedef enum ChatTemplate {
    CHAT_TEMPLATE_NONE,      // a tokenizer.json without a recognised chat_template
    CHAT_TEMPLATE_BYTES,     // the byte tokenizer's role markers
    CHAT_TEMPLATE_LLAMA3,
    CHAT_TEMPLATE_LLAMA2,
    CHAT_TEMPLATE_VICUNA_V1,
    CHAT_TEMPLATE_PLAIN,
} ChatTemplate;

ChatTemplate chat_template_recognise(const char *jinja);
bool chat_template_from_name(const char *name, ChatTemplate *out, Error *err);
const char *chat_template_name(ChatTemplate chat_template);
ChatTemplate tokenizer_template_kind(const Tokenizer *tok);
const HfTokenizer *tokenizer_hf(const Tokenizer *tok); // NULL for the byte tokenizer

// Image positions: each "<image>" in a turn becomes n_tokens x token_id
// (labels IGNORE_INDEX); n_tokens 0 leaves "<image>" as text.
typedef struct ImageSlots {
    int n_tokens;
    int32_t token_id;
} ImageSlots;

// Renders the chat by the tokenizer's template into seq (after seq->length =
// 0); *image_end = index after the last image token (0 without images).
bool render_chat(const Tokenizer *tok, const LlavaRole *roles, const char *const *contents, int n_turns,
                 ImageSlots images, TokenSequence *seq, int *image_end, Error *err);

// hf_tokenizer_encode without special tokens, for text that starts the input
// (at_origin) or continues it; mark_tokens[i] = index of the token holding
// byte marks[i] (ascending; n_ids for the end), as transformers' char_to_token.
bool hf_tokenizer_encode_marked(const HfTokenizer *tok, const char *text, size_t len, bool at_origin,
                                const size_t *marks, int n_marks, int32_t **ids, int *n_ids, int *mark_tokens,
                                Error *err);

// The pad id of the tokenizer the dataset was opened with.
int32_t dataset_pad_id(const Dataset *dataset);

// Appends one token / the tokens of text, labelled with themselves when trained.
bool seq_push_token(TokenSequence *seq, int32_t id, bool trained, Error *err);
bool seq_push_text(const Tokenizer *tok, TokenSequence *seq, const char *text, bool trained, Error *err);

// One row of T: tokens = ids padded with pad; targets[t] = labels[t + 1], and
// IGNORE_INDEX at the sample's last token and on padding. Returns the number
// of targets that are not IGNORE_INDEX.
int64_t step_fill_row(const Sample *sample, int T, int32_t pad, int32_t *tokens, int32_t *targets);

// The dataset's image side (S of its (3, S, S) tensors) and tokenizer.
int vlm_dataset_image_size(const VlmDataset *dataset);
const Tokenizer *vlm_dataset_tokenizer(const VlmDataset *dataset);

// ---- epoch order, shared by DataLoader and VlmLoader (dataloader.c)

// order = the permutation of n_samples for epoch: identity, or a shuffle
// seeded from (seed, epoch).
void epoch_order(int64_t *order, int64_t n_samples, uint64_t seed, int epoch, bool shuffle);
// Moves a position past the end of an epoch into the following epochs.
void normalize_epoch_position(int64_t steps_per_epoch, int *epoch, int64_t *step_in_epoch);
