// The YAML configuration: one table of keys drives loading, --set overrides,
// type and range checks, did-you-mean suggestions and writing the config back.
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "../data/rlds.h"
#include "trainer.h"

// ----------------------------------------------------------------------------
// the key table

typedef enum KeyType {
    KEY_INT,
    KEY_FLOAT,
    KEY_BOOL,
    KEY_STRING,   // free text (paths, names)
    KEY_ENUM,     // text that must be one of key->allowed
    KEY_SCHEDULE, // one of key->allowed, stored as its index (Schedule)
    KEY_SEED,     // uint64_t
    KEY_TARGETS,  // "all" | "all-linear" | [q_proj, v_proj, ...] into bool[LORA_TARGET_COUNT]
} KeyType;

// Numeric bounds: lo/hi, each inclusive unless marked open.
typedef struct Range {
    double lo, hi;
    bool lo_open, hi_open;
} Range;

#define AT_LEAST(x) {(x), INFINITY, false, false}
#define ABOVE(x) {(x), INFINITY, true, false}
#define UNIT_HALF_OPEN {0.0, 1.0, false, true} // [0, 1)
#define UNIT_CLOSED {0.0, 1.0, false, false}   // [0, 1]

typedef struct ConfigKey {
    const char *path;            // "train.lr"
    KeyType type;
    size_t offset;               // of the field in Config
    size_t size;                 // of the field (string capacity)
    Range range;                 // KEY_INT, KEY_FLOAT
    const char *const *allowed;  // NULL-terminated; KEY_ENUM, KEY_SCHEDULE, or KEY_INT values
    bool required;               // KEY_STRING: must not be empty
    const char *exists_unless;   // KEY_STRING: a non-empty value must exist on disk unless this key is set
    const char *help;
} ConfigKey;

static const char *const QUANTIZE_VALUES[] = {"none", "nf4", NULL};
static const char *const INIT_VALUES[] = {"kaiming", "gaussian", NULL};
static const char *const TEMPLATE_VALUES[] = {"auto", "llama3", "llama2", "vicuna_v1", "plain", NULL};
static const char *const SCHEDULE_VALUES[] = {"constant", "linear", "cosine", NULL}; // Schedule order
static const char *const BACKEND_VALUES[] = {"auto", "cpu", "cuda", NULL};
static const char *const ZERO_STAGE_VALUES[] = {"0", "2", NULL};
static const char *const OFFLOAD_VALUES[] = {"none", "cpu", NULL};
static const char *const LOW_DISK_VALUES[] = {"wait", "abort", NULL};
static const char *const IMAGE_FIT_VALUES[] = {"pad", "crop", "squash", NULL};
static const char *const PROJECTOR_VALUES[] = {"mlp2x_gelu", NULL};
static const char *const DATA_FORMAT_VALUES[] = {"auto", "jsonl", "llava", "rlds", "robot_jsonl", NULL};
static const char *const CLIP_PRESET_VALUES[] = {"auto", "clip-vit-large-patch14-336", "tiny", NULL};

#define FIELD(member) .offset = offsetof(Config, member), .size = sizeof(((Config *)0)->member)

static const ConfigKey KEYS[] = {
    {"model.path", KEY_STRING, FIELD(model.path), .required = true,
     .exists_unless = "model.create_if_missing", .help = "Hugging Face model folder"},
    {"model.name", KEY_STRING, FIELD(model.name),
     .help = "Hugging Face id of model.path (adapter_config.json's base_model_name_or_path)"},
    {"model.create_if_missing", KEY_STRING, FIELD(model.create_if_missing),
     .help = "preset written at model.path when absent (empty: never)"},
    {"model.quantize", KEY_ENUM, FIELD(model.quantize), .allowed = QUANTIZE_VALUES,
     .help = "frozen weights: none or nf4 (QLoRA)"},
    {"model.double_quant", KEY_BOOL, FIELD(model.double_quant),
     .help = "nf4: quantize the absmax to 8 bits too (bitsandbytes' compress_statistics)"},
    {"lora.r", KEY_INT, FIELD(lora.r), .range = AT_LEAST(1), .help = "LoRA rank"},
    {"lora.alpha", KEY_FLOAT, FIELD(lora.alpha), .range = ABOVE(0), .help = "scale = alpha / r"},
    {"lora.dropout", KEY_FLOAT, FIELD(lora.dropout), .range = UNIT_HALF_OPEN,
     .help = "dropout on the LoRA input"},
    {"lora.target", KEY_TARGETS, FIELD(lora.targets),
     .help = "all (the decoder's seven linears), all-linear (PEFT's: every linear but lm_head), or a list of "
             "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj"},
    {"lora.rslora", KEY_BOOL, FIELD(lora.rslora), .help = "scale = alpha / sqrt(r)"},
    {"lora.init", KEY_ENUM, FIELD(lora.init), .allowed = INIT_VALUES,
     .help = "A init: kaiming (PEFT) or gaussian N(0, 1/r)"},
    {"data.path", KEY_STRING, FIELD(data.path), .required = true,
     .exists_unless = "data.create_if_missing", .help = "JSONL dataset"},
    {"data.images", KEY_STRING, FIELD(data.images), .exists_unless = "data.create_if_missing",
     .help = "image folder or archive (empty: text only)"},
    {"data.create_if_missing", KEY_STRING, FIELD(data.create_if_missing),
     .help = "synthetic generator written at data.path when absent (empty: never)"},
    {"data.max_seq_len", KEY_INT, FIELD(data.max_seq_len), .range = AT_LEAST(2),
     .help = "tokens per sample, longer ones are truncated"},
    {"data.template", KEY_ENUM, FIELD(data.chat_template), .allowed = TEMPLATE_VALUES,
     .help = "chat template; auto: recognised from tokenizer_config.json's chat_template"},
    {"data.shuffle", KEY_BOOL, FIELD(data.shuffle), .help = "shuffle every epoch"},
    {"data.pack", KEY_BOOL, FIELD(data.pack),
     .help = "pack several samples into each row of max_seq_len (text only); attention and RoPE positions "
             "restart at every sample"},
    {"data.image_tokens", KEY_INT, FIELD(data.image_tokens), .range = AT_LEAST(0),
     .help = "positions each <image> expands to; 0: the tower's features per image (576 for CLIP ViT-L/14-336)"},
    {"data.max_skip_fraction", KEY_FLOAT, FIELD(data.max_skip_fraction), .range = UNIT_CLOSED,
     .help = "skipped records / records above this stops training"},
    {"data.eval_path", KEY_STRING, FIELD(data.eval_path),
     .help = "held-out data in data.path's format, evaluated every train.eval_every steps and at the end (empty: none)"},
    {"data.eval_fraction", KEY_FLOAT, FIELD(data.eval_fraction), .range = UNIT_HALF_OPEN,
     .help = "instead of data.eval_path: this fraction of data.path held out from training (a split fixed by "
             "train.seed; 0: none)"},
    {"data.format", KEY_ENUM, FIELD(data.format), .allowed = DATA_FORMAT_VALUES,
     .help = "auto (as data check tells), jsonl (text), llava, rlds (RLDS / TFDS folder) or robot_jsonl (JSONL steps)"},
    {"data.image_key", KEY_STRING, FIELD(data.image_key),
     .help = "robot data: the step's image key, e.g. observation/image (empty: the first of the OXE defaults present)"},
    {"data.instruction_key", KEY_STRING, FIELD(data.instruction_key),
     .help = "robot data: the step's instruction key (empty: language_instruction or the OXE alternatives)"},
    {"data.action_key", KEY_STRING, FIELD(data.action_key), .help = "robot data: the step's action key (empty: action)"},
    {"data.shuffle_buffer", KEY_INT, FIELD(data.shuffle_buffer), .range = AT_LEAST(0),
     .help = "robot data: steps in the bounded shuffle buffer (OpenVLA's shuffle_buffer_size; 0 or 1: data order)"},
    {"train.micro_batch", KEY_INT, FIELD(train.micro_batch), .range = AT_LEAST(1),
     .help = "samples per forward/backward"},
    {"train.grad_accum", KEY_INT, FIELD(train.grad_accum), .range = AT_LEAST(1),
     .help = "micro-batches per optimizer step"},
    {"train.max_steps", KEY_INT, FIELD(train.max_steps), .range = AT_LEAST(0),
     .help = "optimizer steps (0: from epochs)"},
    {"train.epochs", KEY_INT, FIELD(train.epochs), .range = AT_LEAST(0),
     .help = "passes over the data when max_steps is 0"},
    {"train.lr", KEY_FLOAT, FIELD(train.lr), .range = ABOVE(0), .help = "peak learning rate"},
    {"train.schedule", KEY_SCHEDULE, FIELD(train.schedule), .allowed = SCHEDULE_VALUES,
     .help = "learning-rate schedule after warmup"},
    {"train.warmup", KEY_FLOAT, FIELD(train.warmup), .range = AT_LEAST(0),
     .help = "< 1: ratio of total steps; >= 1: steps"},
    {"train.min_lr_ratio", KEY_FLOAT, FIELD(train.min_lr_ratio), .range = UNIT_CLOSED,
     .help = "cosine floor as a fraction of lr"},
    {"train.weight_decay", KEY_FLOAT, FIELD(train.weight_decay), .range = AT_LEAST(0),
     .help = "AdamW decoupled weight decay"},
    {"train.beta1", KEY_FLOAT, FIELD(train.beta1), .range = UNIT_HALF_OPEN, .help = "AdamW beta1"},
    {"train.beta2", KEY_FLOAT, FIELD(train.beta2), .range = UNIT_HALF_OPEN, .help = "AdamW beta2"},
    {"train.eps", KEY_FLOAT, FIELD(train.eps), .range = AT_LEAST(0), .help = "AdamW epsilon"},
    {"train.max_grad_norm", KEY_FLOAT, FIELD(train.max_grad_norm), .range = AT_LEAST(0),
     .help = "global gradient-norm clip (0: none)"},
    {"train.seed", KEY_SEED, FIELD(train.seed), .help = "seed of init, dropout and shuffling"},
    {"train.log_every", KEY_INT, FIELD(train.log_every), .range = AT_LEAST(1),
     .help = "optimizer steps between log lines"},
    {"train.eval_every", KEY_INT, FIELD(train.eval_every), .range = AT_LEAST(0),
     .help = "optimizer steps between evaluations of the held-out data (0: only at the end)"},
    {"train.activation_checkpointing", KEY_BOOL, FIELD(train.activation_checkpointing),
     .help = "keep only layer inputs, recompute in backward"},
    {"train.backend", KEY_ENUM, FIELD(train.backend), .allowed = BACKEND_VALUES,
     .help = "auto picks cuda when a GPU is present"},
    {"train.max_bad_steps", KEY_INT, FIELD(train.max_bad_steps), .range = AT_LEAST(1),
     .help = "bad steps in a row (non-finite or outlier, each skipped) before the run stops with a checkpoint"},
    {"train.skip_loss_zscore", KEY_FLOAT, FIELD(train.skip_loss_zscore), .range = AT_LEAST(0),
     .help = "skip a step whose loss is more than this many standard deviations above the mean of the last "
             "skip_window accepted steps (0: off; llm.c's examples use 5)"},
    {"train.skip_grad_zscore", KEY_FLOAT, FIELD(train.skip_grad_zscore), .range = AT_LEAST(0),
     .help = "the same for the gradient norm before clipping (0: off)"},
    {"train.skip_window", KEY_INT, FIELD(train.skip_window), .range = {10, 1000, false, false},
     .help = "accepted steps the z-scores look back on; they apply once 10 are in it"},
    {"checkpoint.dir", KEY_STRING, FIELD(checkpoint.dir), .required = true,
     .help = "run folder: step-NNNNNN/ checkpoints"},
    {"checkpoint.every_steps", KEY_INT, FIELD(checkpoint.every_steps), .range = AT_LEAST(0),
     .help = "optimizer steps between checkpoints (0: only at the end)"},
    {"checkpoint.keep_last", KEY_INT, FIELD(checkpoint.keep_last), .range = AT_LEAST(0),
     .help = "checkpoints kept (0: all)"},
    {"checkpoint.keep_best", KEY_BOOL, FIELD(checkpoint.keep_best),
     .help = "keep the adapter of the best eval loss so far in best/ (needs held-out data)"},
    {"checkpoint.on_low_disk", KEY_ENUM, FIELD(checkpoint.on_low_disk), .allowed = LOW_DISK_VALUES,
     .help = "when a checkpoint does not fit: wait (re-check every 30 s) or abort; both stop resumably"},
    {"checkpoint.low_disk_wait_minutes", KEY_FLOAT, FIELD(checkpoint.low_disk_wait_minutes), .range = AT_LEAST(0),
     .help = "how long on_low_disk: wait waits for space before stopping"},
    {"vision.tower", KEY_STRING, FIELD(vision.tower), .exists_unless = "model.create_if_missing",
     .help = "CLIP vision tower: safetensors file or folder (CLIPVisionModel or llava-hf keys); empty = a llava-hf "
             "model.path's own, else text only"},
    {"vision.tower_preset", KEY_ENUM, FIELD(vision.tower_preset), .allowed = CLIP_PRESET_VALUES,
     .help = "the tower's shape; auto: a llava-hf model.path's vision_config, else clip-vit-large-patch14-336"},
    {"vision.feature_layer", KEY_INT, FIELD(vision.feature_layer), .range = {-64, 64, false, false},
     .help = "hidden state the features come from (-2: penultimate, as LLaVA); 0: a llava-hf model.path's "
             "vision_feature_layer, else -2"},
    {"vision.image_fit", KEY_ENUM, FIELD(vision.image_fit), .allowed = IMAGE_FIT_VALUES,
     .help = "pad: expand to square with the mean colour (LLaVA-1.5); crop: CLIP's center crop"},
    {"vision.projector", KEY_ENUM, FIELD(vision.projector), .allowed = PROJECTOR_VALUES,
     .help = "vision-language projector: Linear, GELU, Linear"},
    {"vision.projector_init", KEY_STRING, FIELD(vision.projector_init), .exists_unless = "model.create_if_missing",
     .help = "starting projector: safetensors file or folder (llava-hf or model.mm_projector.0/2 names); empty = "
             "a llava-hf model.path's own, else random"},
    {"vision.train_projector", KEY_BOOL, FIELD(vision.train_projector), .help = "update the projector"},
    {"zero.stage", KEY_INT, FIELD(zero.stage), .range = AT_LEAST(0), .allowed = ZERO_STAGE_VALUES,
     .help = "0: replicated optimizer state; 2: sharded state and gradients"},
    {"zero.offload", KEY_ENUM, FIELD(zero.offload), .allowed = OFFLOAD_VALUES,
     .help = "cpu: optimizer state in pinned host memory"},
    {"zero.delayed_update", KEY_BOOL, FIELD(zero.delayed_update),
     .help = "offload cpu: step k's CPU AdamW overlaps step k+1, which sees parameters one update old"},
    {"zero.overlap_comm", KEY_BOOL, FIELD(zero.overlap_comm),
     .help = "stage 2: reduce-scatter gradient buckets during the backward, as each layer's are final"},
    {"zero.bucket_mb", KEY_FLOAT, FIELD(zero.bucket_mb), .range = AT_LEAST(0),
     .help = "overlap_comm: MB of fp32 gradients per bucket (PyTorch DDP's bucket_cap_mb); 0 = one per layer"},
    {"dist.timeout_s", KEY_FLOAT, FIELD(dist.timeout_s), .range = ABOVE(0),
     .help = "seconds a rank waits for another before failing the job"},
};

#define N_KEYS (sizeof KEYS / sizeof KEYS[0])

static void *field_of(Config *config, const ConfigKey *key) { return (char *)config + key->offset; }
static const void *const_field_of(const Config *config, const ConfigKey *key) {
    return (const char *)config + key->offset;
}

static const ConfigKey *find_key(const char *path) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(KEYS[i].path, path) == 0) return &KEYS[i];
    return NULL;
}

// Length of the section part of a key path ("train" in "train.lr").
static size_t section_length(const char *path) {
    const char *dot = strchr(path, '.');
    return dot ? (size_t)(dot - path) : strlen(path);
}

static bool is_section(const char *name) {
    size_t length = strlen(name);
    for (size_t i = 0; i < N_KEYS; i++)
        if (section_length(KEYS[i].path) == length && strncmp(KEYS[i].path, name, length) == 0) return true;
    return false;
}

static int find_allowed(const char *const *allowed, const char *value) {
    for (int i = 0; allowed[i]; i++)
        if (strcmp(allowed[i], value) == 0) return i;
    return -1;
}

// "none, nf4" into buf.
static const char *allowed_list(const char *const *allowed, char *buf, size_t buf_size) {
    buf[0] = '\0';
    for (int i = 0; allowed[i]; i++) {
        size_t used = strlen(buf);
        snprintf(buf + used, buf_size - used, "%s%s", i ? ", " : "", allowed[i]);
    }
    return buf;
}

// ----------------------------------------------------------------------------
// did-you-mean

// A key path for an unknown one: the same leaf name in another section first
// ("model.lr" -> "train.lr"), else the nearest path within edit distance 3.
static const char *suggest_key(const char *path) {
    const char *dot = strrchr(path, '.');
    const char *leaf = dot ? dot + 1 : path;
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(strrchr(KEYS[i].path, '.') + 1, leaf) == 0) return KEYS[i].path;
    const char *best = NULL;
    int best_distance = 4;
    for (size_t i = 0; i < N_KEYS; i++) {
        int distance = edit_distance(path, KEYS[i].path);
        if (distance < best_distance) best = KEYS[i].path, best_distance = distance;
    }
    return best;
}

// The nearest section name within edit distance 3, written into buf, or NULL.
static const char *suggest_section(const char *name, char *buf, size_t buf_size) {
    int best_distance = 4;
    const char *best = NULL;
    for (size_t i = 0; i < N_KEYS; i++) {
        int length = (int)section_length(KEYS[i].path);
        snprintf(buf, buf_size, "%.*s", length, KEYS[i].path);
        int distance = edit_distance(name, buf);
        if (distance < best_distance) best = KEYS[i].path, best_distance = distance;
    }
    if (!best) return NULL;
    snprintf(buf, buf_size, "%.*s", (int)section_length(best), best);
    return buf;
}

// Keys earlier versions had, with what replaced them.
static const char *const REMOVED_KEYS[][2] = {
    {"vision.chat_template", "the chat template is data.template (auto: the model folder's own)"},
};

static bool fail_unknown_key(const char *path, Error *err) {
    for (size_t i = 0; i < sizeof REMOVED_KEYS / sizeof REMOVED_KEYS[0]; i++)
        if (strcmp(path, REMOVED_KEYS[i][0]) == 0)
            return fail(err, "'%s' is no longer a setting: %s; remove it", path, REMOVED_KEYS[i][1]);
    const char *suggestion = suggest_key(path);
    if (!suggestion) return fail(err, "unknown key '%s'", path);
    return fail(err, "unknown key '%s' (did you mean '%s'?)", path, suggestion);
}

static bool fail_unknown_section(const char *name, Error *err) {
    char buf[CONFIG_NAME_MAX];
    const char *suggestion = suggest_section(name, buf, sizeof buf);
    if (!suggestion) return fail(err, "unknown section '%s'", name);
    return fail(err, "unknown section '%s' (did you mean '%s'?)", name, suggestion);
}

// ----------------------------------------------------------------------------
// checks of one stored value against its key

static bool in_range(double value, const Range *range) {
    bool above_lo = range->lo_open ? value > range->lo : value >= range->lo;
    bool below_hi = range->hi_open ? value < range->hi : value <= range->hi;
    return above_lo && below_hi;
}

// "> 0", ">= 1", "in [0, 1)" into buf.
static const char *range_text(const Range *range, char *buf, size_t buf_size) {
    if (isinf(range->hi))
        snprintf(buf, buf_size, "%s %g", range->lo_open ? ">" : ">=", range->lo);
    else
        snprintf(buf, buf_size, "in %c%g, %g%c", range->lo_open ? '(' : '[', range->lo, range->hi,
                 range->hi_open ? ')' : ']');
    return buf;
}

static bool check_number(const ConfigKey *key, double value, const char *text, Error *err) {
    char buf[64];
    if (!in_range(value, &key->range))
        return fail(err, "%s: %s is out of range (must be %s)", key->path, text,
                    range_text(&key->range, buf, sizeof buf));
    return true;
}

static bool check_allowed(const ConfigKey *key, const char *value, Error *err) {
    char buf[256];
    if (find_allowed(key->allowed, value) < 0)
        return fail(err, "%s: '%s' is not one of: %s", key->path, value,
                    allowed_list(key->allowed, buf, sizeof buf));
    return true;
}

static bool check_int(const ConfigKey *key, int value, Error *err) {
    char text[32];
    snprintf(text, sizeof text, "%d", value);
    if (!check_number(key, value, text, err)) return false;
    return !key->allowed || check_allowed(key, text, err);
}

static bool check_float(const ConfigKey *key, float value, Error *err) {
    char text[32];
    snprintf(text, sizeof text, "%g", value);
    if (!isfinite(value)) return fail(err, "%s: expected a finite number, got %s", key->path, text);
    return check_number(key, value, text, err);
}

// What config_to_yaml needs: terminated strings and a known schedule.
static bool check_representable(const Config *config, const ConfigKey *key, Error *err) {
    const void *field = const_field_of(config, key);
    if ((key->type == KEY_STRING || key->type == KEY_ENUM) && memchr(field, '\0', key->size) == NULL)
        return fail(err, "%s: value is not NUL-terminated", key->path);
    Schedule schedule = key->type == KEY_SCHEDULE ? *(const Schedule *)field : SCHEDULE_CONSTANT;
    if (schedule != SCHEDULE_CONSTANT && schedule != SCHEDULE_LINEAR && schedule != SCHEDULE_COSINE)
        return fail(err, "%s: invalid schedule value %d", key->path, (int)schedule);
    return true;
}

static bool check_targets(const ConfigKey *key, const bool *targets, Error *err) {
    for (int t = 0; t < LORA_TARGET_COUNT; t++)
        if (targets[t]) return true;
    return fail(err, "%s: no module selected", key->path);
}

// Type, range and allowed-value checks of the key's stored value.
static bool check_key(const Config *config, const ConfigKey *key, Error *err) {
    if (!check_representable(config, key, err)) return false;
    const void *field = const_field_of(config, key);
    switch (key->type) {
    case KEY_INT: return check_int(key, *(const int *)field, err);
    case KEY_FLOAT: return check_float(key, *(const float *)field, err);
    case KEY_ENUM: return check_allowed(key, field, err);
    case KEY_TARGETS: return check_targets(key, field, err);
    case KEY_STRING:
    case KEY_SCHEDULE:
    case KEY_BOOL:
    case KEY_SEED: return true;
    }
    return fail(err, "%s: unknown key type", key->path);
}

// ----------------------------------------------------------------------------
// parsing YAML values into fields

static bool is_plain_null(const yaml_node_t *node) {
    const char *text = (const char *)node->data.scalar.value;
    return node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           (text[0] == '\0' || strcmp(text, "~") == 0 || strcmp(text, "null") == 0);
}

static bool parse_int(const ConfigKey *key, const char *text, int *out, Error *err) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (end == text || *end != '\0')
        return fail(err, "%s: expected an integer, got '%s'", key->path, text);
    if (errno == ERANGE || value < INT_MIN || value > INT_MAX)
        return fail(err, "%s: %s is out of range (must fit in a 32-bit integer)", key->path, text);
    *out = (int)value;
    return check_int(key, *out, err);
}

static bool parse_float(const ConfigKey *key, const char *text, float *out, Error *err) {
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (end == text || *end != '\0' || isnan(value))
        return fail(err, "%s: expected a number, got '%s'", key->path, text);
    if (errno == ERANGE || !isfinite((float)value))
        return fail(err, "%s: %s is out of range for a 32-bit float", key->path, text);
    *out = (float)value;
    return check_number(key, *out, text, err);
}

static bool parse_bool(const ConfigKey *key, const char *text, bool *out, Error *err) {
    if (strcmp(text, "true") == 0) return *out = true, true;
    if (strcmp(text, "false") == 0) return *out = false, true;
    return fail(err, "%s: expected true or false, got '%s'", key->path, text);
}

static bool parse_seed(const ConfigKey *key, const char *text, uint64_t *out, Error *err) {
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (end == text || *end != '\0' || text[0] == '-' || text[0] == '+')
        return fail(err, "%s: expected a non-negative integer, got '%s'", key->path, text);
    if (errno == ERANGE) return fail(err, "%s: %s does not fit in 64 bits", key->path, text);
    *out = (uint64_t)value;
    return true;
}

static bool parse_string(const ConfigKey *key, const yaml_node_t *node, char *out, Error *err) {
    const char *text = (const char *)node->data.scalar.value;
    size_t length = node->data.scalar.length;
    if (key->type == KEY_STRING && is_plain_null(node)) length = 0;
    if (memchr(text, '\0', length)) return fail(err, "%s: value contains a NUL byte", key->path);
    if (length >= key->size)
        return fail(err, "%s: value is %zu bytes, longer than the %zu allowed", key->path, length, key->size - 1);
    memcpy(out, text, length);
    out[length] = '\0';
    return key->type != KEY_ENUM || check_allowed(key, out, err);
}

static bool parse_schedule(const ConfigKey *key, const char *text, Schedule *out, Error *err) {
    if (!check_allowed(key, text, err)) return false;
    *out = (Schedule)find_allowed(key->allowed, text);
    return true;
}

// "q_proj, k_proj, ..." into buf.
static const char *target_list(char *buf, size_t buf_size) {
    buf[0] = '\0';
    for (int t = 0; t < LORA_TARGET_COUNT; t++) {
        size_t used = strlen(buf);
        snprintf(buf + used, buf_size - used, "%s%s", t ? ", " : "", LORA_TARGET_NAMES[t]);
    }
    return buf;
}

static bool parse_target_list(const ConfigKey *key, yaml_document_t *doc, const yaml_node_t *node,
                              bool *targets, Error *err) {
    char names[256];
    if (node->data.sequence.items.start == node->data.sequence.items.top)
        return fail(err, "%s: the list of modules is empty", key->path);
    memset(targets, 0, LORA_TARGET_COUNT * sizeof(bool));
    for (yaml_node_item_t *item = node->data.sequence.items.start; item < node->data.sequence.items.top; item++) {
        yaml_node_t *entry = yaml_document_get_node(doc, *item);
        if (!entry || entry->type != YAML_SCALAR_NODE)
            return fail(err, "%s: expected a list of module names", key->path);
        const char *name = (const char *)entry->data.scalar.value;
        LoraTarget target;
        if (!lora_target_from_name(name, &target))
            return fail(err, "%s: unknown module '%s' (expected some of: %s, or their short forms)", key->path,
                        name, target_list(names, sizeof names));
        targets[target] = true;
    }
    return true;
}

// lora.target (the key's field, config->lora.targets) and lora.all_linear beside it.
static bool parse_targets(const ConfigKey *key, yaml_document_t *doc, const yaml_node_t *node, Config *config,
                          Error *err) {
    config->lora.all_linear = false;
    if (node->type == YAML_SEQUENCE_NODE) return parse_target_list(key, doc, node, config->lora.targets, err);
    const char *text = (const char *)node->data.scalar.value;
    if (strcmp(text, "all") != 0 && strcmp(text, "all-linear") != 0)
        return fail(err, "%s: expected 'all', 'all-linear' or a list like [q_proj, v_proj], got '%s'", key->path,
                    text);
    for (int t = 0; t < LORA_TARGET_COUNT; t++) config->lora.targets[t] = true;
    config->lora.all_linear = strcmp(text, "all-linear") == 0;
    return true;
}

// Parses node (a scalar, or a sequence for lora.target) into the key's field.
static bool apply_node(Config *config, const ConfigKey *key, yaml_document_t *doc, const yaml_node_t *node,
                       Error *err) {
    if (node->type == YAML_MAPPING_NODE || (node->type == YAML_SEQUENCE_NODE && key->type != KEY_TARGETS))
        return fail(err, "%s: expected a single value, got a %s", key->path,
                    node->type == YAML_MAPPING_NODE ? "mapping" : "list");
    void *field = field_of(config, key);
    const char *text = node->type == YAML_SCALAR_NODE ? (const char *)node->data.scalar.value : "";
    switch (key->type) {
    case KEY_INT: return parse_int(key, text, field, err);
    case KEY_FLOAT: return parse_float(key, text, field, err);
    case KEY_BOOL: return parse_bool(key, text, field, err);
    case KEY_STRING:
    case KEY_ENUM: return parse_string(key, node, field, err);
    case KEY_SCHEDULE: return parse_schedule(key, text, field, err);
    case KEY_SEED: return parse_seed(key, text, field, err);
    case KEY_TARGETS: return parse_targets(key, doc, node, config, err);
    }
    return fail(err, "%s: unknown key type", key->path);
}

// ----------------------------------------------------------------------------
// loading a YAML document

typedef struct Loader {
    yaml_document_t *doc;
    Config *config;
    bool seen[N_KEYS];       // keys given so far, to reject duplicates
    const yaml_node_t *where; // node of the last error
} Loader;

static bool load_mapping(Loader *loader, const char *prefix, const yaml_node_t *mapping, Error *err);

static bool load_pair(Loader *loader, const char *prefix, const yaml_node_t *name, const yaml_node_t *value,
                      Error *err) {
    loader->where = name;
    if (name->type != YAML_SCALAR_NODE) return fail(err, "expected a key name, got a %s",
                                                    name->type == YAML_MAPPING_NODE ? "mapping" : "list");
    char path[2 * CONFIG_NAME_MAX];
    int length = snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", name->data.scalar.value);
    if (length < 0 || (size_t)length >= sizeof path) return fail(err, "key '%.64s...' is too long", path);
    const ConfigKey *key = find_key(path);
    if (key) {
        size_t index = (size_t)(key - KEYS);
        if (loader->seen[index]) return fail(err, "%s: given more than once", path);
        loader->seen[index] = true;
        loader->where = value;
        return apply_node(loader->config, key, loader->doc, value, err);
    }
    if (is_section(path)) {
        if (value->type == YAML_SCALAR_NODE && is_plain_null(value)) return true; // "zero:" with no keys
        if (value->type != YAML_MAPPING_NODE) return fail(err, "%s: expected a mapping of keys, it is a section", path);
        return load_mapping(loader, path, value, err);
    }
    if (!prefix[0] && !strchr(path, '.') && value->type == YAML_MAPPING_NODE) return fail_unknown_section(path, err);
    return fail_unknown_key(path, err);
}

static bool load_mapping(Loader *loader, const char *prefix, const yaml_node_t *mapping, Error *err) {
    for (yaml_node_pair_t *pair = mapping->data.mapping.pairs.start; pair < mapping->data.mapping.pairs.top; pair++) {
        yaml_node_t *name = yaml_document_get_node(loader->doc, pair->key);
        yaml_node_t *value = yaml_document_get_node(loader->doc, pair->value);
        if (!name || !value) return fail(err, "malformed YAML mapping");
        if (!load_pair(loader, prefix, name, value, err)) return false;
    }
    return true;
}

// Parses text as one YAML document; on a syntax error, err says why and *where is its position.
static bool parse_document(yaml_document_t *doc, const char *text, size_t length, yaml_mark_t *where, Error *err) {
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) return fail(err, "cannot initialize the YAML parser");
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, length);
    bool ok = yaml_parser_load(&parser, doc);
    if (!ok) {
        *where = parser.problem_mark;
        fail(err, "YAML syntax error: %s%s%s", parser.problem ? parser.problem : "unknown problem",
             parser.context ? " " : "", parser.context ? parser.context : "");
    }
    yaml_parser_delete(&parser);
    return ok;
}

bool config_load_yaml(Config *config, const char *path, Error *err) {
    char *text;
    size_t length;
    if (!read_file(path, &text, &length, err)) return fail_context(err, "reading config: ");
    yaml_document_t doc;
    yaml_mark_t where;
    bool ok = parse_document(&doc, text, length, &where, err);
    free(text);
    if (!ok) return fail_context(err, "%s:%zu:%zu: ", path, where.line + 1, where.column + 1);
    Config loaded = *config;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    Loader loader = {.doc = &doc, .config = &loaded, .where = root};
    if (root && root->type == YAML_SCALAR_NODE && is_plain_null(root)) root = NULL;
    if (root && root->type != YAML_MAPPING_NODE) {
        ok = fail(err, "%s: expected a mapping of sections at the top level", path);
    } else if (root && !load_mapping(&loader, "", root, err)) {
        ok = fail_context(err, "%s:%zu:%zu: ", path, loader.where->start_mark.line + 1,
                          loader.where->start_mark.column + 1);
    }
    yaml_document_delete(&doc);
    if (ok) *config = loaded;
    return ok;
}

bool config_set(Config *config, const char *assignment, Error *err) {
    const char *equals = strchr(assignment, '=');
    if (!equals) return fail(err, "'%s': expected key.path=value", assignment);
    char path[2 * CONFIG_NAME_MAX];
    size_t path_length = (size_t)(equals - assignment);
    if (path_length >= sizeof path) return fail(err, "'%.64s...': key is too long", assignment);
    memcpy(path, assignment, path_length);
    path[path_length] = '\0';
    const ConfigKey *key = find_key(path);
    if (!key && is_section(path)) return fail(err, "'%s' is a section: set one of its keys, as %s.key=value", path, path);
    if (!key) return fail_unknown_key(path, err);
    yaml_document_t doc;
    yaml_mark_t where;
    if (!parse_document(&doc, equals + 1, strlen(equals + 1), &where, err))
        return fail_context(err, "%s: value '%s': ", path, equals + 1);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    yaml_node_t empty = {.type = YAML_SCALAR_NODE,
                         .data.scalar = {.value = (yaml_char_t *)"", .style = YAML_PLAIN_SCALAR_STYLE}};
    Config updated = *config;
    bool ok = apply_node(&updated, key, &doc, root ? root : &empty, err);
    yaml_document_delete(&doc);
    if (ok) *config = updated;
    return ok;
}

// ----------------------------------------------------------------------------
// defaults and validation

void config_defaults(Config *config) {
    memset(config, 0, sizeof *config);
    snprintf(config->model.quantize, CONFIG_NAME_MAX, "none");
    config->model.double_quant = true;
    config->lora.r = 8;
    config->lora.alpha = 8.0f;
    config->lora.dropout = 0.0f;
    config->lora.targets[LORA_Q] = true;
    config->lora.targets[LORA_V] = true;
    config->lora.rslora = false;
    snprintf(config->lora.init, CONFIG_NAME_MAX, "kaiming");
    config->data.max_seq_len = 2048;
    snprintf(config->data.chat_template, CONFIG_NAME_MAX, "auto");
    config->data.shuffle = true;
    config->data.pack = false;
    config->data.image_tokens = 0;
    config->data.max_skip_fraction = 0.01f;
    snprintf(config->data.format, CONFIG_NAME_MAX, "auto");
    config->data.shuffle_buffer = 100000;
    config->train.micro_batch = 1;
    config->train.grad_accum = 1;
    config->train.max_steps = 0;
    config->train.epochs = 1;
    config->train.lr = 2e-4f;
    config->train.schedule = SCHEDULE_LINEAR;
    config->train.warmup = 0.0f;
    config->train.min_lr_ratio = 0.0f;
    config->train.weight_decay = 0.0f;
    config->train.beta1 = 0.9f;
    config->train.beta2 = 0.999f;
    config->train.eps = 1e-8f;
    config->train.max_grad_norm = 1.0f;
    config->train.seed = 42;
    config->train.log_every = 1;
    config->train.activation_checkpointing = false;
    snprintf(config->train.backend, CONFIG_NAME_MAX, "auto");
    snprintf(config->checkpoint.dir, CONFIG_PATH_MAX, "runs/lora-train");
    config->checkpoint.every_steps = 0;
    config->checkpoint.keep_last = 0;
    snprintf(config->checkpoint.on_low_disk, CONFIG_NAME_MAX, "wait");
    config->checkpoint.low_disk_wait_minutes = 30.0f;
    config->train.max_bad_steps = 10;
    config->train.skip_loss_zscore = 0.0f;
    config->train.skip_grad_zscore = 0.0f;
    config->train.skip_window = 100;
    config->zero.stage = 0;
    snprintf(config->zero.offload, CONFIG_NAME_MAX, "none");
    config->zero.delayed_update = false;
    config->zero.overlap_comm = true;
    config->zero.bucket_mb = 25.0f;
    config->dist.timeout_s = 300.0f;
    snprintf(config->vision.tower_preset, CONFIG_NAME_MAX, "auto");
    config->vision.feature_layer = 0;
    snprintf(config->vision.image_fit, CONFIG_NAME_MAX, "pad");
    snprintf(config->vision.projector, CONFIG_NAME_MAX, "mlp2x_gelu");
    config->vision.train_projector = true;
}

// Hugging Face ids of the vision tower presets (model/vision_tower.c): where a recipe's tower comes from.
// A vision.tower file with tower_preset auto is clip-vit-large-patch14-336's (train_vlm.c).
static const char *tower_preset_id(const char *preset) {
    bool clip_large = strcmp(preset, "clip-vit-large-patch14-336") == 0 || strcmp(preset, "auto") == 0;
    return clip_large ? "openai/clip-vit-large-patch14-336" : NULL;
}

// What a missing input is and how to get it, after "key: 'value' does not exist".
static void missing_input_hint(const Config *config, const ConfigKey *key, char *hint, size_t size) {
    const char *value = const_field_of(config, key);
    char folder[CONFIG_PATH_MAX];
    snprintf(folder, sizeof folder, "%s", value);
    char *slash = strrchr(folder, '/');
    if (slash) *slash = '\0';
    const char *tower_id = tower_preset_id(config->vision.tower_preset);
    if (strcmp(key->path, "model.path") == 0 && config->model.name[0])
        snprintf(hint, size, "this recipe expects %s (model.name): huggingface-cli download %s --local-dir %s "
                 "(a gated model needs its licence accepted on huggingface.co and huggingface-cli login)",
                 config->model.name, config->model.name, value);
    else if (strcmp(key->path, "model.path") == 0)
        snprintf(hint, size, "a Hugging Face model folder: huggingface-cli download <id> --local-dir %s (and set "
                 "model.name: <id>), or model.create_if_missing: tiny|demo|small for a random model", value);
    else if (strcmp(key->path, "vision.tower") == 0 && tower_id)
        snprintf(hint, size, "vision.tower_preset %s is %s: huggingface-cli download %s model.safetensors "
                 "--local-dir %s", config->vision.tower_preset, tower_id, tower_id, slash ? folder : ".");
    else if (strcmp(key->path, "vision.projector_init") == 0)
        snprintf(hint, size, "a pretrained projector (LLaVA's pretraining stage writes it), or empty for a random one");
    else if (strcmp(key->path, "data.path") == 0)
        snprintf(hint, size, "the dataset (JSONL chats or texts, LLaVA JSON); LLaVA-1.5's: huggingface-cli download "
                 "liuhaotian/LLaVA-Instruct-150K llava_v1_5_mix665k.json --repo-type dataset --local-dir %s",
                 slash ? folder : ".");
    else if (strcmp(key->path, "data.images") == 0)
        snprintf(hint, size, "the images the records name: a folder or a .tar / .tar.gz / .zip");
    else
        snprintf(hint, size, "%s", key->help);
}

// A required string must be set; a path must exist unless its create_if_missing
// key names a generator. A missing one is added to missing (a line each).
static bool check_path_key(const Config *config, const ConfigKey *key, char *missing, size_t size, Error *err) {
    const char *value = const_field_of(config, key);
    if (key->required && value[0] == '\0') return fail(err, "%s: must be set", key->path);
    if (!key->exists_unless || value[0] == '\0' || path_exists(value)) return true;
    const ConfigKey *creator = find_key(key->exists_unless);
    if (((const char *)const_field_of(config, creator))[0] != '\0') return true;
    char hint[4 * CONFIG_PATH_MAX];
    missing_input_hint(config, key, hint, sizeof hint);
    size_t used = strlen(missing);
    snprintf(missing + used, size - used, "\n  %s: '%s' does not exist: %.1500s", key->path, value, hint);
    return true;
}

// Held-out data comes from one source, and evaluation or keep_best needs it.
static bool check_eval_keys(const Config *config, Error *err) {
    bool eval_file = config->data.eval_path[0] != '\0';
    if (eval_file && config->data.eval_fraction > 0)
        return fail(err, "data.eval_path and data.eval_fraction: set one of them, not both");
    if (eval_file && !path_exists(config->data.eval_path))
        return fail(err, "data.eval_path: '%s' does not exist", config->data.eval_path);
    if (eval_file || config->data.eval_fraction > 0) return true;
    if (config->train.eval_every > 0)
        return fail(err, "train.eval_every: %d, but there is no held-out data (set data.eval_path or "
                         "data.eval_fraction)", config->train.eval_every);
    if (config->checkpoint.keep_best)
        return fail(err, "checkpoint.keep_best: there is no held-out data to judge by (set data.eval_path or "
                         "data.eval_fraction)");
    return true;
}

static bool is_directory(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

const char *config_data_format(const Config *config) {
    if (strcmp(config->data.format, "auto") != 0) return config->data.format;
    if (robot_data_detect(config->data.path)) return is_directory(config->data.path) ? "rlds" : "robot_jsonl";
    return config->data.images[0] || config->vision.tower[0] ? "llava" : "jsonl";
}

bool config_is_robot_data(const Config *config) {
    const char *format = config_data_format(config);
    return strcmp(format, "rlds") == 0 || strcmp(format, "robot_jsonl") == 0;
}

// data.format against the other data keys: robot keys for robot data alone,
// image-text keys for llava or robot data, no packing with images.
static bool check_data_format(const Config *config, Error *err) {
    const char *format = config_data_format(config);
    bool robot = config_is_robot_data(config), image_text = config->data.images[0] || config->vision.tower[0];
    const char *robot_key = config->data.image_key[0] ? "data.image_key"
                            : config->data.instruction_key[0] ? "data.instruction_key"
                            : config->data.action_key[0] ? "data.action_key" : NULL;
    if (robot_key && !robot)
        return fail(err, "%s: only robot data has step keys, and data.format is %s%s", robot_key, format,
                    strcmp(config->data.format, "auto") == 0 ? " (auto: data.path is no RLDS folder or JSONL of steps)" : "");
    if (strcmp(format, "jsonl") == 0 && image_text)
        return fail(err, "data.format: jsonl is text data, but data.images or vision.tower is set (use llava or auto)");
    if (strcmp(format, "llava") == 0 && !image_text)
        return fail(err, "data.format: llava needs data.images or vision.tower");
    if (config->data.pack && (image_text || robot))
        return fail(err, "data.pack: packing is for text data only; this config is image-text (data.images or "
                         "vision.tower is set, or robot data): set data.pack to false");
    return true;
}

bool config_validate_allowing_missing(const Config *config, char *missing, size_t size, int *n_missing, Error *err) {
    missing[0] = '\0';
    *n_missing = 0;
    for (size_t i = 0; i < N_KEYS; i++) {
        if (!check_key(config, &KEYS[i], err)) return false;
        size_t before = strlen(missing);
        if (KEYS[i].type == KEY_STRING && !check_path_key(config, &KEYS[i], missing, size, err)) return false;
        *n_missing += strlen(missing) != before;
    }
    if (config->train.max_steps == 0 && config->train.epochs < 1)
        return fail(err, "train.epochs: must be >= 1 when train.max_steps is 0 (got %d)", config->train.epochs);
    if (!check_eval_keys(config, err)) return false;
    return check_data_format(config, err);
}

bool config_validate(const Config *config, Error *err) {
    char missing[ERROR_MESSAGE_MAX - 64];
    int n_missing;
    if (!config_validate_allowing_missing(config, missing, sizeof missing, &n_missing, err)) return false;
    if (n_missing == 1) return fail(err, "%s", missing + 3); // "key: 'value' does not exist: ..."
    if (n_missing > 1) return fail(err, "%d inputs are missing:%s", n_missing, missing);
    return true;
}

// ----------------------------------------------------------------------------
// writing the config back as YAML

// The shortest %g text that reads back as exactly value.
static void write_float(FILE *out, float value) {
    char text[32];
    for (int precision = 1; precision <= 9; precision++) {
        snprintf(text, sizeof text, "%.*g", precision, value);
        if (strtof(text, NULL) == value) break;
    }
    fputs(text, out);
}

// A double-quoted YAML scalar: escapes backslash, quote and control bytes.
static void write_quoted(FILE *out, const char *text) {
    fputc('"', out);
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\') fprintf(out, "\\%c", *c);
        else if (*c < 0x20 || *c == 0x7f) fprintf(out, "\\x%02x", *c);
        else fputc(*c, out);
    }
    fputc('"', out);
}

static void write_targets(FILE *out, const Config *config) {
    const bool *targets = config->lora.targets;
    if (config->lora.all_linear) {
        fputs("all-linear", out);
        return;
    }
    fputc('[', out);
    bool first = true;
    for (int t = 0; t < LORA_TARGET_COUNT; t++) {
        if (!targets[t]) continue;
        fprintf(out, "%s%s", first ? "" : ", ", LORA_TARGET_NAMES[t]);
        first = false;
    }
    fputc(']', out);
}

static void write_value(FILE *out, const Config *config, const ConfigKey *key) {
    const void *field = const_field_of(config, key);
    switch (key->type) {
    case KEY_INT: fprintf(out, "%d", *(const int *)field); break;
    case KEY_FLOAT: write_float(out, *(const float *)field); break;
    case KEY_BOOL: fputs(*(const bool *)field ? "true" : "false", out); break;
    case KEY_STRING: write_quoted(out, field); break;
    case KEY_ENUM: fputs(field, out); break;
    case KEY_SCHEDULE: fputs(key->allowed[*(const Schedule *)field], out); break;
    case KEY_SEED: fprintf(out, "%" PRIu64, *(const uint64_t *)field); break;
    case KEY_TARGETS: write_targets(out, config); break;
    }
}

char *config_to_yaml(const Config *config, Error *err) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (!check_representable(config, &KEYS[i], err)) return NULL;
    char *text = NULL;
    size_t length = 0;
    FILE *out = open_memstream(&text, &length);
    if (!out) return fail(err, "config_to_yaml: open_memstream: %s", strerror(errno)), NULL;
    const char *section = "";
    size_t section_len = 0;
    for (size_t i = 0; i < N_KEYS; i++) {
        const ConfigKey *key = &KEYS[i];
        size_t length_here = section_length(key->path);
        if (length_here != section_len || strncmp(key->path, section, section_len) != 0) {
            section = key->path, section_len = length_here;
            fprintf(out, "%.*s:\n", (int)section_len, section);
        }
        fprintf(out, "  %s: ", key->path + section_len + 1);
        write_value(out, config, key);
        fprintf(out, "  # %s\n", key->help);
    }
    bool ok = !ferror(out);
    if (fclose(out) != 0) ok = false;
    if (!ok) {
        free(text);
        return fail(err, "config_to_yaml: writing to memory failed"), NULL;
    }
    return text;
}
