// data: tokenizers, text datasets (JSONL), deterministic shuffling and batching.
//
// A DataLoader yields whole optimizer steps: grad_accum micro-batches of
// (micro_batch, max_seq_len) tokens and next-token targets, and the number of
// label tokens in the whole step, known before any forward pass.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "../core/core.h"
#include "../vision/vision.h"

#define IGNORE_INDEX (-100)

// ----------------------------------------------------------------------------
// tokenizer

typedef struct Tokenizer Tokenizer;

// Byte-level tokenizer: ids 0..255 are bytes, then <bos>=256, <eos>=257,
// <pad>=258 and the chat markers (vocab 262). Serves the demo and tests.
Tokenizer *tokenizer_bytes(Error *err);
// A model folder's tokenizer.json (with tokenizer_config.json's bos/eos/pad
// tokens when present), or a tokenizer.json file; a folder without
// tokenizer.json gets the byte tokenizer. The chat template is recognised
// (llama3, llama2, vicuna_v1, else none) from chat_template.jinja beside it
// (transformers 5), else tokenizer_config.json's chat_template.
Tokenizer *tokenizer_load(const char *model_dir_or_file, Error *err);
// Chat templates by name: llama3, llama2 ([INST] with <<SYS>>), vicuna_v1
// (LLaVA-1.5), plain (LLaVA pretraining); "auto" keeps the recognised one.
// Labels cover assistant turns and their end-of-turn token (llama3
// <|eot_id|>, llama2 and vicuna_v1 </s>, plain "\n"). The byte tokenizer
// keeps its own rendering (see sample_from_messages) and takes only "auto".
bool tokenizer_set_chat_template(Tokenizer *tok, const char *name, Error *err);
const char *tokenizer_chat_template(const Tokenizer *tok); // "llama3", ..., "bytes", "none"
// True when chats can be rendered; else an error naming the file whose template
// was not recognised, or saying there was none: datasets of chats check it
// once, before their records, rather than skip every record for it.
bool tokenizer_check_chat_template(const Tokenizer *tok, Error *err);
void tokenizer_destroy(Tokenizer *tok);
int tokenizer_vocab_size(const Tokenizer *tok);
// transformers' tokenizer.vocab_size: the model's vocabulary without added
// tokens (tokenizer.json's model.vocab; the byte tokenizer's vocab_size).
int tokenizer_base_vocab_size(const Tokenizer *tok);
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

// Chat rendering for {"messages": [...]} records by the tokenizer's chat
// template. The byte tokenizer's: "<bos>" then per turn a role marker and
// content, assistant turns ending with <eos>; labels cover assistant content
// and its <eos> only.
bool sample_from_messages(const Tokenizer *tok, const char *const *roles,
                          const char *const *contents, int n_turns, int max_seq_len,
                          Sample *out, Error *err);
// {"text": ...}: <bos> text <eos>, labels on everything after <bos>.
bool sample_from_text(const Tokenizer *tok, const char *text, int max_seq_len, Sample *out,
                      Error *err);

// ----------------------------------------------------------------------------
// datasets

typedef struct Dataset Dataset;

typedef enum SkipReason {
    SKIP_BAD_RECORD,           // invalid JSON or fields
    SKIP_EMPTY_CONVERSATION,   // no turns, or no gpt turn to train on
    SKIP_NO_PLACEHOLDER,       // an image is given but the text has no <image>
    SKIP_PLACEHOLDER_MISMATCH, // <image> more often than images
    SKIP_MISSING_IMAGE,        // not in the folder / archive
    SKIP_BAD_IMAGE,            // corrupt or truncated image data
    SKIP_IMAGE_TRUNCATED,      // the image's tokens do not fit in max_seq_len
    SKIP_CORRUPT_RECORD,       // a TFRecord's CRC fails or its file ends inside it (robot data)
    SKIP_REASON_COUNT
} SkipReason;

const char *skip_reason_name(SkipReason reason); // "missing image", ...

// A record dataset_open_jsonl skipped: its line, why (SKIP_BAD_RECORD: invalid
// JSON or fields; SKIP_EMPTY_CONVERSATION: no assistant turn) and "path:line: problem".
typedef struct DatasetSkip {
    int64_t line;
    SkipReason reason;
    char message[256];
} DatasetSkip;

// Reads a JSONL file of {"messages": [{"role", "content"}...]} or {"text"}
// records, tokenizing each. A malformed line (bad JSON, neither kind of
// record, no assistant turn...) is skipped and listed with its line number
// and problem; a file with no usable record is an error.
Dataset *dataset_open_jsonl(const char *path, const Tokenizer *tok, int max_seq_len, Error *err);
void dataset_destroy(Dataset *dataset);
int64_t dataset_size(const Dataset *dataset); // usable samples
int64_t dataset_truncated_count(const Dataset *dataset);
const Sample *dataset_sample(const Dataset *dataset, int64_t index);
int64_t dataset_skipped_count(const Dataset *dataset);
const DatasetSkip *dataset_skipped(const Dataset *dataset, int64_t i);
// Fails, naming the file, the counts and the first problem, when skipped
// records / all records exceed max_fraction (data.max_skip_fraction).
bool dataset_check_skips(const Dataset *dataset, double max_fraction, Error *err);

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
    bool pack;             // several samples per row (DataLoader only; see below)
    const int64_t *subset; // the dataset's samples this loader serves, by index (NULL: all of them)
    int64_t n_subset;
} DataLoaderOptions;

// Splits samples 0 .. n_samples - 1 into training and held-out indices, both
// ascending and disjoint: round(fraction * n_samples) held out (at least 1,
// at most n_samples - 1), the first of a permutation drawn from seed alone, so
// the split is the same on every rank and every resume. Free both lists.
bool data_split_held_out(int64_t n_samples, double fraction, uint64_t seed, int64_t **train, int64_t *n_train,
                         int64_t **held_out, int64_t *n_held_out, Error *err);

typedef struct StepBatch {
    int n_micro;
    int B, T;
    int32_t *tokens;        // (n_micro, B, T), padded with pad id
    int32_t *targets;       // (n_micro, B, T): labels shifted left by one, IGNORE_INDEX on padding
    int32_t *seq_start;     // (n_micro, B, T) with packing: index within its row of the first token
                            // of each token's sample (padding is a sample of its own); else NULL
    int64_t n_label_tokens; // targets != IGNORE_INDEX over the whole step
    int epoch;              // the epoch the step's first sample came from
    // vision-language steps (VlmLoader); 0 / NULL for text steps
    int image_size;         // S
    int image_channels;     // 3, or 6 for OpenVLA's fused towers (RobotSampleOptions.fused)
    float *images;          // (n_micro, B, image_channels, S, S) preprocessed, zeros where a row has no image
    uint8_t *has_image;     // (n_micro, B)
} StepBatch;

typedef struct DataLoader DataLoader;

// Order: a permutation of the dataset (or of options.subset) per epoch, from (seed, epoch); an epoch
// ends when fewer than micro_batch * grad_accum * world_size samples remain
// (the remainder is dropped, as torch's drop_last).
// With options.pack each epoch's order is first packed greedily, in order,
// into rows of max_seq_len tokens: a sample (truncated to max_seq_len) joins
// the current row when it fits, else starts the next; the rest of a row is
// padding. Rows are then dealt to steps, micro-batches and ranks as samples
// are without packing, so an epoch's step count depends on (seed, epoch).
DataLoader *dataloader_create(const Dataset *dataset, const DataLoaderOptions *options, Error *err);
void dataloader_destroy(DataLoader *loader);
// Steps of epoch 0 (with packing, later epochs may hold a few more or fewer).
int64_t dataloader_steps_per_epoch(const DataLoader *loader);
// Steps of epochs 0 .. n_epochs - 1 together.
int64_t dataloader_steps_for_epochs(DataLoader *loader, int n_epochs);
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
int hf_tokenizer_model_vocab_size(const HfTokenizer *tok); // model.vocab's entries, added tokens excluded
bool hf_tokenizer_is_special(const HfTokenizer *tok, int id);

// ----------------------------------------------------------------------------
// image stores: a folder, or a .tar / .tar.gz / .tgz / .zip read in place

typedef struct ImageStore ImageStore;

// A folder is read file by file. An archive is indexed in one pass (member
// name -> offset, size): uncompressed tar and stored zip members are read in
// place with pread; gzip'd tars and deflated zip members are decompressed once
// into an anonymous in-memory file (no extraction to disk) and read from there.
ImageStore *image_store_open(const char *path, Error *err);
void image_store_destroy(ImageStore *store);
int64_t image_store_count(const ImageStore *store);         // archive members; 0 for a folder
int64_t image_store_spooled_bytes(const ImageStore *store); // decompressed bytes held in memory
// Names as LLaVA records spell them ("coco/train2017/1.jpg"; "./" prefixes ignored).
bool image_store_has(const ImageStore *store, const char *name);
// The member's bytes into a malloc'd *data (the caller frees it).
bool image_store_read(const ImageStore *store, const char *name, uint8_t **data, size_t *size, Error *err);

// An uncompressed tar archive written member by member; close also frees.
typedef struct TarWriter TarWriter;

TarWriter *tar_writer_open(const char *path, Error *err);
bool tar_writer_add(TarWriter *writer, const char *name, const uint8_t *data, size_t size, Error *err);
bool tar_writer_close(TarWriter *writer, Error *err);

// ----------------------------------------------------------------------------
// LLaVA records: [{id, image, conversations: [{from: human|gpt, value}]}, ...]
// as one JSON array, or one record per line (JSONL)

typedef struct LlavaIndex LlavaIndex;
typedef enum LlavaRole { LLAVA_SYSTEM, LLAVA_USER, LLAVA_ASSISTANT } LlavaRole;

typedef struct LlavaRecord {
    char *id;         // NULL when absent
    char *image;      // NULL for a text-only record
    int n_turns;
    LlavaRole *roles; // (n_turns,) human -> user, gpt -> assistant
    char **values;    // (n_turns,)
} LlavaRecord;

// Streams the file once, keeping each record's byte range only (the parsed
// document is never held). The format is told by the first byte: '[' or '{'.
// Structural errors of the array name the byte offset.
LlavaIndex *llava_index_open(const char *path, Error *err);
void llava_index_destroy(LlavaIndex *index);
int64_t llava_index_count(const LlavaIndex *index);
bool llava_index_is_jsonl(const LlavaIndex *index);
const char *llava_index_path(const LlavaIndex *index);
void llava_index_range(const LlavaIndex *index, int64_t i, int64_t *offset, int64_t *length);
// Parses record i with json-c; a malformed record is an error saying why
// (out->id is then the record's id when it could be read, else NULL; free out).
bool llava_record_read(const LlavaIndex *index, int64_t i, LlavaRecord *out, Error *err);
void llava_record_free(LlavaRecord *record);

// ----------------------------------------------------------------------------
// vision-language datasets: LLaVA records + images -> samples

#define LLAVA_IMAGE_PLACEHOLDER "<image>"

// The id of the image positions, for training and `data check` alike: the
// tokenizer's "<image>" token when it has one inside the model's vocabulary
// (llava-hf: 32000), else the id just past the text vocabulary when the
// model's embedding has room (llava-hf's image_token_index), else 0 (NUL,
// which text never holds).
int32_t llava_image_token_id(const Tokenizer *tok, int model_vocab);


typedef struct SkippedRecord {
    int64_t record;    // position in the file
    char id[96];       // the record's id ("" when absent)
    SkipReason reason;
    char message[256];
} SkippedRecord;

typedef struct VlmDatasetOptions {
    const char *path;           // LLaVA JSON or JSONL
    const char *images;         // image folder or archive; NULL or "" for text only
    const Tokenizer *tok;
    int max_seq_len;
    int n_image_tokens;         // positions per image, e.g. 576 = (336 / 14)^2 for CLIP-336
    int32_t image_token_id;     // id at those positions (features replace them)
    ImagePreprocess preprocess;
    bool decode_images;         // decode every image while opening (data check)
} VlmDatasetOptions;

typedef struct VlmDatasetStats {
    int64_t records;            // in the file
    int64_t samples;            // usable
    int64_t images;             // usable samples with an image
    int64_t tokens;             // over usable samples, after truncation
    int64_t label_tokens;
    int64_t truncated;
    int64_t skipped[SKIP_REASON_COUNT];
    int64_t skipped_total;
} VlmDatasetStats;

// A rendered sample: the chat by the tokenizer's template as
// sample_from_messages, each <image> expanded to n_image_tokens image_token_id positions with
// IGNORE_INDEX labels; labels on gpt turns and their <eos> only.
typedef struct VlmSample {
    Sample text;       // owns ids and labels
    bool has_image;
    float *image;      // (3, S, S) when has_image
} VlmSample;

void vlm_sample_free(VlmSample *sample);

typedef struct VlmDataset VlmDataset;

// Indexes the records, then checks each as training would (fields, turns,
// <image> placeholders, the image's presence, token counts; with
// decode_images also decoding every image). Bad records are skipped and
// logged, never an error: see vlm_dataset_check_skips.
VlmDataset *vlm_dataset_open(const VlmDatasetOptions *options, Error *err);
void vlm_dataset_destroy(VlmDataset *dataset);
int64_t vlm_dataset_size(const VlmDataset *dataset); // usable samples
const VlmDatasetStats *vlm_dataset_stats(const VlmDataset *dataset);
int64_t vlm_dataset_skipped_count(const VlmDataset *dataset);
const SkippedRecord *vlm_dataset_skipped(const VlmDataset *dataset, int64_t i);
// Fails, naming the counts per reason, when skipped / records > max_fraction.
bool vlm_dataset_check_skips(const VlmDataset *dataset, double max_fraction, Error *err);
// Renders usable sample i and decodes and preprocesses its image. An image
// that fails to decode marks the record skipped (*skipped = true, logged in
// the skip list) and returns true; false only on errors such as memory.
bool vlm_dataset_load(VlmDataset *dataset, int64_t i, VlmSample *out, bool *skipped, Error *err);

// Batching as DataLoader (per-epoch permutation from (seed, epoch), this
// rank's share of every step), with images. A sample skipped while loading is
// replaced by the next usable one in the epoch's order; the step fails when
// the skipped fraction passes max_skip_fraction.
typedef struct VlmLoader VlmLoader;

VlmLoader *vlm_loader_create(VlmDataset *dataset, const DataLoaderOptions *options, double max_skip_fraction,
                             Error *err);
void vlm_loader_destroy(VlmLoader *loader);
int64_t vlm_loader_steps_per_epoch(const VlmLoader *loader);
// The next step (the loader owns it), or NULL with err on failure.
const StepBatch *vlm_loader_next(VlmLoader *loader, Error *err);
void vlm_loader_position(const VlmLoader *loader, int *epoch, int64_t *step_in_epoch);
void vlm_loader_seek(VlmLoader *loader, int epoch, int64_t step_in_epoch);

// ----------------------------------------------------------------------------
// StepLoader: the one interface training and evaluation draw steps through,
// whichever data the run has (text: DataLoader, LLaVA: VlmLoader, robot steps:
// RobotLoader in rlds.h). It owns the loader it wraps, not the dataset.

typedef struct StepLoader StepLoader;

StepLoader *step_loader_text(const Dataset *dataset, const DataLoaderOptions *options, Error *err);
StepLoader *step_loader_vlm(VlmDataset *dataset, const DataLoaderOptions *options, double max_skip_fraction,
                            Error *err);
void step_loader_destroy(StepLoader *loader);
// The next step (the loader owns it), or NULL with err on failure.
const StepBatch *step_loader_next(StepLoader *loader, Error *err);
// Position for exact resume: (epoch, step within epoch), and back to it.
void step_loader_position(const StepLoader *loader, int *epoch, int64_t *step_in_epoch);
void step_loader_seek(StepLoader *loader, int epoch, int64_t step_in_epoch);
int64_t step_loader_steps_per_epoch(const StepLoader *loader); // of epoch 0
int64_t step_loader_steps_for_epochs(StepLoader *loader, int n_epochs);
int64_t step_loader_samples(const StepLoader *loader);   // served: the subset's or the dataset's
int64_t step_loader_truncated(const StepLoader *loader); // the dataset's samples cut to max_seq_len
