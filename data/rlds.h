// data/rlds.h: robot data for OpenVLA-style training: TFRecord files,
// tf.train.Example records, RLDS / TFDS episode folders and JSONL steps, and
// OpenVLA's action rules (prismatic/vla/action_tokenizer.py,
// prismatic/vla/datasets/rlds/utils/data_utils.py): statistics, q01/q99
// normalisation, 256-bin action tokens and the prompt.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "../core/core.h"
#include "../vision/vision.h"
#include "data.h"

#define ROBOT_ACTION_DIM_MAX 32

// ----------------------------------------------------------------------------
// TFRecord files (tfrecord.c): per record, little-endian,
//   uint64 length | uint32 masked CRC-32C of the 8 length bytes | data | uint32 masked CRC-32C of data

typedef struct TfRecordReader TfRecordReader;

typedef enum TfRecordStatus {
    TFRECORD_OK,      // *data, *size hold the next record
    TFRECORD_END,     // the file ended cleanly, after a whole record
    TFRECORD_BAD_CRC, // the data's CRC failed (err says so); the next call reads the record after it
    TFRECORD_BROKEN,  // the length's CRC failed or the file ends inside a record: nothing after it can be framed
} TfRecordStatus;

// Maps the file read-only; records are views into it, valid until close.
TfRecordReader *tfrecord_open(const char *path, Error *err);
void tfrecord_close(TfRecordReader *reader);
// The next record. Errors name the file, the record's index and byte offset, and the problem.
TfRecordStatus tfrecord_next(TfRecordReader *reader, const uint8_t **data, size_t *size, Error *err);
int64_t tfrecord_last_index(const TfRecordReader *reader);  // index of the record tfrecord_next last framed
int64_t tfrecord_last_offset(const TfRecordReader *reader); // its byte offset in the file
// Record `index` at the byte offset tfrecord_last_offset gave for it, framed and checked again.
bool tfrecord_read_at(const TfRecordReader *reader, int64_t offset, int64_t index, const uint8_t **data, size_t *size,
                      Error *err);
const char *tfrecord_path(const TfRecordReader *reader);

// ----------------------------------------------------------------------------
// tf.train.Example (example.c), decoded by hand from the protobuf wire format:
//   Example { Features features = 1; }   Features { map<string, Feature> feature = 1; }
//   Feature { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
//   BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
//   Int64List { repeated int64 value = 1 [packed]; }
// Packed and unpacked repeated fields are both read, unknown fields skipped,
// a repeated key keeps its last value (protobuf map semantics).

typedef enum FeatureKind { FEATURE_EMPTY, FEATURE_BYTES, FEATURE_FLOATS, FEATURE_INT64S } FeatureKind;

typedef struct ByteView {
    const uint8_t *data; // into the record
    size_t size;
} ByteView;

typedef struct Feature {
    char *key;
    FeatureKind kind;
    int64_t count;   // values of the kind
    ByteView *bytes; // (count,) FEATURE_BYTES: views into the record, valid while it is
    float *floats;   // (count,) FEATURE_FLOATS
    int64_t *int64s; // (count,) FEATURE_INT64S
} Feature;

typedef struct Example {
    int n_features;
    Feature *features;
} Example;

// Decodes a serialized Example; on failure err says what is malformed and at
// which byte, and out is empty. Free out with example_free either way.
bool example_parse(const uint8_t *data, size_t size, Example *out, Error *err);
void example_free(Example *example);
const Feature *example_feature(const Example *example, const char *key); // NULL when absent
const char *feature_kind_name(FeatureKind kind); // "bytes_list", "float_list", "int64_list", "no value"

// ----------------------------------------------------------------------------
// writing (rlds_write.c): TFRecord files, tf.train.Examples and RLDS folders as
// tensorflow-datasets writes them (scripts/check_rlds_folder.py reads one back with tfds)

typedef struct TfRecordWriter TfRecordWriter;

TfRecordWriter *tfrecord_writer_open(const char *path, Error *err); // creates or truncates path
bool tfrecord_write(TfRecordWriter *writer, const uint8_t *data, size_t size, Error *err);
uint64_t tfrecord_writer_bytes(const TfRecordWriter *writer); // framed bytes written so far
bool tfrecord_writer_close(TfRecordWriter *writer, Error *err);

// A tf.train.Example built feature by feature (keys in the order added; float
// and int64 lists packed, as TensorFlow serializes them). Start zeroed.
typedef struct ExampleEncoder {
    uint8_t *data; // the Features message so far
    size_t size, capacity;
} ExampleEncoder;

bool example_add_bytes(ExampleEncoder *encoder, const char *key, const ByteView *values, int64_t n, Error *err);
bool example_add_floats(ExampleEncoder *encoder, const char *key, const float *values, int64_t n, Error *err);
bool example_add_int64s(ExampleEncoder *encoder, const char *key, const int64_t *values, int64_t n, Error *err);
// The serialized Example (malloc'd); the encoder is emptied for the next one.
bool example_encoder_finish(ExampleEncoder *encoder, uint8_t **data, size_t *size, Error *err);
void example_encoder_free(ExampleEncoder *encoder);

// One step of an RLDS episode, as the Open X-Embodiment datasets hold them.
typedef struct RldsStep {
    const uint8_t *image; // encoded PNG or JPEG (the folder's image_format), image_width x image_height RGB
    size_t image_size;
    const char *instruction;                // language_instruction
    float action[ROBOT_ACTION_DIM_MAX];     // the first action_dim used
    float reward, discount;
    bool is_first, is_last, is_terminal;
} RldsStep;

typedef struct RldsWriterOptions {
    const char *dir;          // the dataset folder (created): dataset_info.json, features.json, the shards
    const char *name;         // dataset_info.json's name and the shards' prefix
    const char *split;        // NULL: "train"
    const char *version;      // NULL: "1.0.0"
    const char *image_format; // "png" (NULL) or "jpeg": features.json's encodingFormat
    int image_width, image_height;
    int action_dim;
    int episodes_per_shard;   // 0: 1000
} RldsWriterOptions;

typedef struct RldsWriter RldsWriter;

// One tf.train.Example per episode with its steps under "steps/" (action,
// discount, is_first, is_last, is_terminal, language_instruction,
// observation/image, reward), shards <name>-<split>.tfrecord-NNNNN-of-NNNNN;
// close writes features.json and, last, dataset_info.json (shardLengths, numBytes).
RldsWriter *rlds_writer_open(const RldsWriterOptions *options, Error *err);
bool rlds_write_episode(RldsWriter *writer, const RldsStep *steps, int n_steps, Error *err);
bool rlds_writer_close(RldsWriter *writer, Error *err); // frees the writer either way
void rlds_writer_abort(RldsWriter *writer);             // frees it, removing the shards written

// ----------------------------------------------------------------------------
// robot datasets (rlds.c): steps of (image, instruction, action)
//
// RLDS / TFDS folder, as Open X-Embodiment and LIBERO ship them:
//   dataset_info.json, features.json, <name>-<split>.tfrecord-NNNNN-of-NNNNN
// One tf.train.Example per episode, step fields flattened under "steps/":
// steps/observation/image (bytes_list: one encoded PNG / JPEG per step),
// steps/language_instruction (bytes_list, one per step), steps/action
// (float_list, steps * action_dim), steps/is_first, ...
// JSONL file: one step per line, {"image": path, "instruction": text,
// "action": [action_dim floats], "episode": id (optional)}; image paths are
// relative to `images` (a folder or archive, see image_store_open), by default
// the file's folder. Without "episode" every line is an episode of its own.


typedef struct RobotDataOptions {
    const char *path;            // RLDS / TFDS folder or JSONL file
    const char *split;           // RLDS split; NULL: "train"
    const char *images;          // JSONL: image folder or archive; NULL: the file's folder
    const char *image_key;       // step key below steps/; NULL: the first present of
                                 // observation/image, observation/image_0, observation/rgb, image
    const char *instruction_key; // NULL: language_instruction, observation/natural_language_instruction,
                                 // natural_language_instruction
    const char *action_key;      // NULL: action
    int action_dim;              // 0: features.json's shape of the action, else 7 (xyz, rpy, gripper)
    bool decode_images;          // decode every step's image at open (data check)
} RobotDataOptions;

typedef struct RobotDatasetStats {
    int64_t records;  // episodes (RLDS) or lines (JSONL) read, bad ones included
    int64_t episodes; // usable
    int64_t steps;    // usable
    int64_t skipped[SKIP_REASON_COUNT];
    int64_t skipped_total;
} RobotDatasetStats;

typedef struct RobotStep {
    int64_t episode;         // usable episode index
    int step;                // within its episode
    const char *instruction; // as stored (not lowercased)
    const float *action;     // (action_dim,) as stored, not normalised
} RobotStep;

typedef struct RobotDataset RobotDataset;

// True when path is an RLDS / TFDS folder (it holds dataset_info.json) or a
// JSONL file whose first record has an "action" field.
bool robot_data_detect(const char *path);
// Reads every episode once, keeping instructions and actions (images are read
// again on demand). A corrupt record (CRC, truncation: SKIP_CORRUPT_RECORD),
// a malformed episode (protobuf, missing key, wrong feature type, counts that
// disagree, non-finite action: SKIP_BAD_RECORD), a missing or (with
// decode_images) undecodable image is skipped with a reason, never an error;
// see robot_dataset_check_skips. No usable step at all is an error.
RobotDataset *robot_dataset_open(const RobotDataOptions *options, Error *err);
void robot_dataset_destroy(RobotDataset *dataset);
const char *robot_dataset_name(const RobotDataset *dataset); // dataset_info.json's name, or the JSONL file's stem
bool robot_dataset_is_rlds(const RobotDataset *dataset);
int robot_dataset_action_dim(const RobotDataset *dataset);
// The keys in use ("steps/observation/image" ...; JSONL: "image", ...).
void robot_dataset_keys(const RobotDataset *dataset, const char **image, const char **instruction,
                        const char **action);
int64_t robot_dataset_size(const RobotDataset *dataset); // usable steps
RobotStep robot_dataset_step(const RobotDataset *dataset, int64_t i);
// Step i's image, decoded to RGB as Pillow's convert('RGB').
bool robot_dataset_image(const RobotDataset *dataset, int64_t i, Image *out, Error *err);
const RobotDatasetStats *robot_dataset_stats(const RobotDataset *dataset);
int64_t robot_dataset_skipped_count(const RobotDataset *dataset);
const SkippedRecord *robot_dataset_skipped(const RobotDataset *dataset, int64_t i);
// Fails, naming the counts per reason and the first problem, when skipped
// records / records exceed max_fraction (data.max_skip_fraction).
bool robot_dataset_check_skips(const RobotDataset *dataset, double max_fraction, Error *err);

// ----------------------------------------------------------------------------
// action statistics and normalisation (action.c), as OpenVLA's
// get_dataset_statistics and normalize_action_and_proprio (BOUNDS_Q99)

typedef struct ActionStats {
    int dim;
    double mean[ROBOT_ACTION_DIM_MAX], std[ROBOT_ACTION_DIM_MAX]; // std: population (numpy's ddof 0)
    double min[ROBOT_ACTION_DIM_MAX], max[ROBOT_ACTION_DIM_MAX];
    double q01[ROBOT_ACTION_DIM_MAX], q99[ROBOT_ACTION_DIM_MAX]; // np.quantile, linear interpolation
    bool mask[ROBOT_ACTION_DIM_MAX]; // normalised dimensions (OXE's EEF_POS: all but the gripper)
    int64_t num_transitions, num_trajectories;
} ActionStats;

// OXE's mask for EEF_POS actions: every dimension but the last (the gripper).
void action_mask_default(int dim, bool *mask);
// Statistics of actions (n_steps, dim) from n_trajectories episodes.
bool action_stats_compute(const float *actions, int64_t n_steps, int dim, int64_t n_trajectories,
                          const bool *mask, ActionStats *out, Error *err);
// The same over a dataset's usable steps, with mask (NULL: action_mask_default).
bool robot_dataset_action_stats(const RobotDataset *dataset, const bool *mask, ActionStats *out, Error *err);
// OpenVLA's dataset_statistics.json: {name: {"action": {mean, std, max, min,
// q01, q99, mask}, "proprio": {...}, "num_transitions", "num_trajectories"}};
// without proprioception OpenVLA's proprio statistics are those of zeros.
bool action_stats_write_json(const ActionStats *stats, const char *dataset_name, const char *path, Error *err);
// Reads one dataset's entry of such a file (dataset_name NULL: the only one).
bool action_stats_read_json(const char *path, const char *dataset_name, ActionStats *out, Error *err);
// BOUNDS_Q99 in float32 as OpenVLA's TensorFlow graph: masked dimensions
// clip(2 (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1), others unchanged;
// dimensions with min == max become 0.
void action_normalize(const ActionStats *stats, const float *action, float *out);

// ----------------------------------------------------------------------------
// action tokens (action.c), as OpenVLA's ActionTokenizer: 256 uniform bins
// over [-1, 1] (np.linspace), token id = vocab_size - np.digitize(clip(x, -1, 1), bins),
// so ids vocab_size - 256 .. vocab_size - 1; decoding maps an id to the centre
// of bin clip(vocab_size - id - 1, 0, 254).

#define ACTION_BINS 256

typedef struct ActionTokenizer {
    int vocab_size;                   // the tokenizer's vocab_size (Llama 2: 32000, added tokens excluded)
    double bins[ACTION_BINS];         // edges
    double centers[ACTION_BINS - 1];  // (bins[i] + bins[i + 1]) / 2
} ActionTokenizer;

void action_tokenizer_init(ActionTokenizer *tokenizer, int vocab_size);
int32_t action_token_id(const ActionTokenizer *tokenizer, float normalized_value);
double action_token_value(const ActionTokenizer *tokenizer, int32_t token_id);

// Action metrics as OpenVLA's vla-scripts/finetune.py logs them, over the label
// positions whose target is an action token (target > action_token_begin_idx =
// vocab_size - 257; IGNORE_INDEX and </s> are not): action_accuracy = the share
// whose argmax is the target; action_l1_loss = mean |decode(argmax) - decode(target)|,
// both decoded to bin centres (normalised actions). Summed here; finetune.py
// averages per batch, an evaluation divides the sums over the whole held-out set.
typedef struct ActionMetricSums {
    int64_t n_action_tokens, n_correct;
    double l1_sum;
} ActionMetricSums;

void action_metrics_add(const ActionTokenizer *tokenizer, const int32_t *predicted, const int32_t *targets, int64_t n,
                        ActionMetricSums *sums);

// OpenVLA's inference prompt, as its deploy and evaluation scripts write it:
// "In: What action should the robot take to {instruction.lower()}?\nOut:"
// (lowercased with Unicode's default case mapping, as Python's str.lower). malloc'd.
char *openvla_prompt(const char *instruction, Error *err);
// One training sample as OpenVLA's RLDSBatchTransform makes it: the action's
// tokens decoded to text, PurePromptBuilder's "In: {question}\nOut: {action text}</s>"
// (each message with "<image>" removed and str.strip()ped, the instruction
// lowercased) tokenized with BOS; labels on the last action_dim + 1 tokens
// (the action and </s>), IGNORE_INDEX before. Needs a tokenizer.json tokenizer.
bool openvla_sample(const Tokenizer *tok, const ActionTokenizer *action_tokenizer, const char *instruction,
                    const float *normalized_action, int action_dim, Sample *out, Error *err);

// ----------------------------------------------------------------------------
// RobotLoader (robot_loader.c): robot steps as OpenVLA training samples behind
// a StepLoader, in the StepBatch shape VlmLoader fills (tokens, targets, one
// preprocessed image per row), so the image-text training path consumes them.

typedef struct RobotSampleOptions {
    const Tokenizer *tok;       // the model's tokenizer.json (openvla_sample)
    ActionStats stats;          // normalisation: the training data's (robot_dataset_action_stats)
    int action_vocab_size;      // ActionTokenizer's vocab_size: tokenizer_base_vocab_size (tokenizer.vocab_size)
    int n_image_tokens;         // placeholders right after BOS, where the projected patches go
    int32_t image_token_id;     // their id
    ImagePreprocess preprocess; // the step's image into (3, S, S)
    // OpenVLA's fused towers: the image also through this second preprocessing (the same size), the
    // row's pixels (6, S, S) = [preprocess | fused_preprocess] as PrismaticImageProcessor stacks them
    bool fused;
    ImagePreprocess fused_preprocess;
    // OpenVLA's RLDS pipeline (Octo's dlimp): the decoded image first resized to S x S by TensorFlow's
    // lanczos3 with antialias, rounded to 8 bits (image_resize_lanczos3_tf), then preprocessed
    bool dlimp_resize;
    int shuffle_buffer;         // bounded shuffle buffer of steps; 0 or 1: data order
} RobotSampleOptions;

// Step i as OpenVLA trains on it: BOS, n_image_tokens image_token_id positions
// (labels IGNORE_INDEX), then openvla_sample's ids after its BOS with their labels
// (the action normalised with options->stats).
bool robot_training_sample(const RobotDataset *dataset, const RobotSampleOptions *options, int64_t i, Sample *out,
                           Error *err);
// Order per epoch: the served steps in data order through a bounded shuffle
// buffer (as tf.data's shuffle: each output is a uniform pick among the buffer's
// steps, its place refilled by the next incoming step), the picks from
// (seed, epoch, output index), so (epoch, step in epoch) resumes exactly; a
// permutation, every served step once per epoch. Steps are dealt to optimizer
// steps, micro-batches and ranks as VlmLoader deals samples (the remainder dropped).
// A step whose image fails to load is recorded in the dataset's skips
// (SKIP_BAD_IMAGE) and replaced by the next position of the epoch's order whose
// image loads; the step fails once skips pass max_skip_fraction.
StepLoader *step_loader_robot(RobotDataset *dataset, const RobotSampleOptions *robot, const DataLoaderOptions *options,
                              double max_skip_fraction, Error *err);
