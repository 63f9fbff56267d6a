// data: tokenizers, text datasets (JSONL), deterministic shuffling and batching.
//
// A DataLoader yields whole optimizer steps: grad_accum micro-batches of
// (micro_batch, max_seq_len) tokens and next-token targets, and the number of
// label tokens in the whole step, known before any forward pass.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "../core/core.h"

#define IGNORE_INDEX (-100)

// ----------------------------------------------------------------------------
// tokenizer

typedef struct Tokenizer Tokenizer;

// Byte-level tokenizer: ids 0..255 are bytes, then <bos>=256, <eos>=257,
// <pad>=258 and the chat markers (vocab 262). Serves the demo and tests until
// tokenizer.json support lands.
Tokenizer *tokenizer_bytes(Error *err);
void tokenizer_destroy(Tokenizer *tok);
int tokenizer_vocab_size(const Tokenizer *tok);
int tokenizer_bos(const Tokenizer *tok);
int tokenizer_eos(const Tokenizer *tok);
int tokenizer_pad(const Tokenizer *tok);
// Id of a special token by its text ("<|user|>"), or -1 when absent.
int tokenizer_token_id(const Tokenizer *tok, const char *token);
// Appends the ids of text to *ids (growing *ids and *capacity as needed).
bool tokenizer_encode(const Tokenizer *tok, const char *text, size_t len, int32_t **ids,
                      int *n_ids, int *capacity, Error *err);
// Decodes ids into a NUL-terminated malloc'd string.
char *tokenizer_decode(const Tokenizer *tok, const int32_t *ids, int n_ids, Error *err);

// ----------------------------------------------------------------------------
// samples

// One tokenized sample: ids and per-token labels (the id itself where the
// token is trained on, IGNORE_INDEX elsewhere), before shifting.
typedef struct Sample {
    int32_t *ids;
    int32_t *labels;
    int length;
    bool truncated;
} Sample;

void sample_free(Sample *sample);

// Chat rendering for {"messages": [...]} records with the byte tokenizer:
// "<bos>" then per turn a role marker and content, assistant turns ending
// with <eos>; labels cover assistant content and its <eos> only.
bool sample_from_messages(const Tokenizer *tok, const char *const *roles,
                          const char *const *contents, int n_turns, int max_seq_len,
                          Sample *out, Error *err);
// {"text": ...}: <bos> text <eos>, labels on everything after <bos>.
bool sample_from_text(const Tokenizer *tok, const char *text, int max_seq_len, Sample *out,
                      Error *err);

// ----------------------------------------------------------------------------
// datasets

typedef struct Dataset Dataset;

// Reads a JSONL file of {"messages": [{"role", "content"}...]} or {"text"}
// records, tokenizing each. A malformed line is an error naming the file,
// the line number and the problem.
Dataset *dataset_open_jsonl(const char *path, const Tokenizer *tok, int max_seq_len, Error *err);
void dataset_destroy(Dataset *dataset);
int64_t dataset_size(const Dataset *dataset);
int64_t dataset_truncated_count(const Dataset *dataset);
const Sample *dataset_sample(const Dataset *dataset, int64_t index);

// The demo's synthetic text data: short question/answer chats the tiny model
// can learn. Writes `n_records` JSONL lines to path.
bool dataset_write_demo_jsonl(const char *path, int n_records, uint64_t seed, Error *err);

// ----------------------------------------------------------------------------
// batching

typedef struct DataLoaderOptions {
    int micro_batch;       // B
    int grad_accum;        // micro-batches per optimizer step
    int max_seq_len;       // T
    uint64_t seed;
    bool shuffle;
    int rank, world_size;  // data parallel share (1 rank for now)
} DataLoaderOptions;

typedef struct StepBatch {
    int n_micro;
    int B, T;
    int32_t *tokens;        // (n_micro, B, T), padded with pad id
    int32_t *targets;       // (n_micro, B, T): labels shifted left by one, IGNORE_INDEX on padding
    int64_t n_label_tokens; // targets != IGNORE_INDEX over the whole step
    int epoch;              // the epoch the step's first sample came from
} StepBatch;

typedef struct DataLoader DataLoader;

// Order: a permutation of the dataset per epoch, from (seed, epoch); an epoch
// ends when fewer than micro_batch * grad_accum * world_size samples remain
// (the remainder is dropped, as torch's drop_last).
DataLoader *dataloader_create(const Dataset *dataset, const DataLoaderOptions *options, Error *err);
void dataloader_destroy(DataLoader *loader);
int64_t dataloader_steps_per_epoch(const DataLoader *loader);
// Fills the loader's StepBatch with the next step and returns it.
const StepBatch *dataloader_next(DataLoader *loader);
// Position for exact resume: (epoch, step within epoch).
void dataloader_position(const DataLoader *loader, int *epoch, int64_t *step_in_epoch);
void dataloader_seek(DataLoader *loader, int epoch, int64_t step_in_epoch);

// ----------------------------------------------------------------------------
// Hugging Face tokenizer.json (BPE), identical to the Rust `tokenizers` library

typedef struct HfTokenizer HfTokenizer;

// Loads a tokenizer.json with a BPE model (GPT-2, Llama 2/3, Mistral, ...).
// An unsupported component is an error naming it.
HfTokenizer *hf_tokenizer_load(const char *path, Error *err);
void hf_tokenizer_destroy(HfTokenizer *tok);
// Encodes UTF-8 text into a malloc'd array *ids of *n_ids ids (the caller
// frees it); add_special_tokens applies the post-processor (BOS etc.).
bool hf_tokenizer_encode(const HfTokenizer *tok, const char *text, size_t len,
                         bool add_special_tokens, int32_t **ids, int *n_ids, Error *err);
// Decodes ids into a malloc'd NUL-terminated string; an id outside the
// vocabulary is an error.
char *hf_tokenizer_decode(const HfTokenizer *tok, const int32_t *ids, int n,
                          bool skip_special_tokens, Error *err);
// Token text of an id (NULL when none), and id of a token text (-1 when none).
const char *hf_tokenizer_id_to_token(const HfTokenizer *tok, int id);
int hf_tokenizer_token_to_id(const HfTokenizer *tok, const char *token);
// Largest id + 1, over the model's vocab and the added tokens.
int hf_tokenizer_vocab_size(const HfTokenizer *tok);
bool hf_tokenizer_is_special(const HfTokenizer *tok, int id);
