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

// ----------------------------------------------------------------------------
// robot datasets (rlds.c, robot_jsonl.c)

#include "rlds.h"

typedef struct RobotStepEntry {
    int64_t episode;         // usable episode index
    int step;                // within it
    const char *instruction; // one of RobotDataset.strings
} RobotStepEntry;

typedef struct RobotEpisode { // RLDS: where its record is
    int shard;
    int64_t offset, record_index;
    int64_t first_step;
} RobotEpisode;

struct RobotDataset {
    RobotDataOptions options;
    const char *split;
    char *name;
    bool is_rlds;
    int action_dim;
    char image_key[256], instruction_key[256], action_key[256]; // resolved
    TfRecordReader **shards;
    int n_shards;
    int64_t shards_capacity;
    ImageStore *images; // JSONL: where "image" paths point
    char *image_root;   // JSONL: the file's folder when options.images is unset
    char **image_paths; // JSONL: (n_steps,)
    int64_t n_image_paths, image_paths_capacity;
    RobotEpisode *episodes;
    int64_t episodes_capacity;
    RobotStepEntry *steps;
    int64_t n_steps, steps_capacity;
    float *actions; // (n_steps, action_dim)
    int64_t actions_capacity;
    char **strings; // distinct consecutive instructions
    int64_t n_strings, strings_capacity;
    SkippedRecord *skipped;
    int64_t n_skipped, skipped_capacity;
    RobotDatasetStats stats;
};

// Grows *array (of *capacity elements of elem bytes) to hold needed.
bool robot_grow(void **array, int64_t *capacity, int64_t needed, size_t elem, Error *err);
// Appends a step of the episode stats.episodes (the one being read).
bool robot_add_step(RobotDataset *d, const char *instruction, size_t instruction_size, const float *action,
                    int step_in_episode, Error *err);
// Counts record as skipped for reason; false only without memory.
bool robot_skip(RobotDataset *d, int64_t record, SkipReason reason, Error *err, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
// False with the first non-finite dimension.
bool robot_action_finite(const float *action, int dim, int *bad_dim);
bool robot_jsonl_detect(const char *path);
bool robot_jsonl_open(RobotDataset *d, Error *err);
bool robot_jsonl_image(const RobotDataset *d, int64_t i, Image *out, Error *err);

// ----------------------------------------------------------------------------
// StepLoader's table (loader.c): a loader kind fills one and wraps itself with step_loader_wrap.

typedef struct StepLoaderKind {
    const StepBatch *(*next)(void *impl, Error *err);
    void (*position)(const void *impl, int *epoch, int64_t *step_in_epoch);
    void (*seek)(void *impl, int epoch, int64_t step_in_epoch);
    int64_t (*steps_per_epoch)(const void *impl);
    int64_t (*steps_for_epochs)(void *impl, int n_epochs);
    int64_t (*samples)(const void *impl);
    int64_t (*truncated)(const void *impl);
    void (*destroy)(void *impl);
} StepLoaderKind;

// A StepLoader owning impl (NULL impl gives NULL, err already set); on failure impl is destroyed.
StepLoader *step_loader_wrap(const StepLoaderKind *kind, void *impl, Error *err);
