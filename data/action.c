// OpenVLA's action rules: dataset statistics (get_dataset_statistics),
// BOUNDS_Q99 normalisation (normalize_action_and_proprio), the 256-bin
// ActionTokenizer, the prompt (PurePromptBuilder) and the training sample
// (RLDSBatchTransform).
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unicode/uchar.h>
#include <unicode/ustring.h>
#include <unicode/utf8.h>

#include "data_private.h"

// ----------------------------------------------------------------------------
// statistics

void action_mask_default(int dim, bool *mask) {
    for (int i = 0; i < dim; i++) mask[i] = i < dim - 1;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// np.quantile's default ("linear"): sorted[k] + (sorted[k + 1] - sorted[k]) * g at k + g = q (n - 1),
// written for g >= 0.5 as sorted[k + 1] - (sorted[k + 1] - sorted[k]) (1 - g), as numpy's _lerp.
static double quantile_sorted(const double *sorted, int64_t n, double q) {
    double position = q * (double)(n - 1);
    int64_t below = (int64_t)floor(position);
    if (below >= n - 1) return sorted[n - 1];
    double g = position - (double)below, a = sorted[below], b = sorted[below + 1], diff = b - a;
    return g >= 0.5 ? b - diff * (1.0 - g) : a + diff * g;
}

// numpy computes over float32 actions and returns float32: each statistic is rounded so.
static double as_float32(double value) { return (double)(float)value; }

bool action_stats_compute(const float *actions, int64_t n_steps, int dim, int64_t n_trajectories,
                          const bool *mask, ActionStats *out, Error *err) {
    memset(out, 0, sizeof *out);
    if (n_steps < 1 || dim < 1 || dim > ROBOT_ACTION_DIM_MAX)
        return fail(err, "action statistics of %lld steps of dimension %d", (long long)n_steps, dim);
    double *column = checked_malloc((size_t)n_steps * sizeof *column, "action column", err);
    if (!column) return false;
    out->dim = dim;
    for (int j = 0; j < dim; j++) {
        double sum = 0, squares = 0;
        for (int64_t i = 0; i < n_steps; i++) sum += (column[i] = actions[i * dim + j]);
        double mean = sum / (double)n_steps;
        for (int64_t i = 0; i < n_steps; i++) squares += (column[i] - mean) * (column[i] - mean);
        qsort(column, (size_t)n_steps, sizeof *column, compare_doubles);
        out->mean[j] = as_float32(mean);
        out->std[j] = as_float32(sqrt(squares / (double)n_steps));
        out->min[j] = column[0];
        out->max[j] = column[n_steps - 1];
        out->q01[j] = as_float32(quantile_sorted(column, n_steps, 0.01));
        out->q99[j] = as_float32(quantile_sorted(column, n_steps, 0.99));
        out->mask[j] = mask[j];
    }
    free(column);
    out->num_transitions = n_steps;
    out->num_trajectories = n_trajectories;
    return true;
}

bool robot_dataset_action_stats(const RobotDataset *dataset, const bool *mask, ActionStats *out, Error *err) {
    int dim = robot_dataset_action_dim(dataset);
    int64_t n = robot_dataset_size(dataset);
    bool default_mask[ROBOT_ACTION_DIM_MAX];
    action_mask_default(dim, default_mask);
    float *actions = checked_malloc((size_t)n * (size_t)dim * sizeof *actions, "actions", err);
    if (!actions) return false;
    for (int64_t i = 0; i < n; i++) memcpy(actions + i * dim, robot_dataset_step(dataset, i).action, dim * sizeof *actions);
    bool ok = action_stats_compute(actions, n, dim, robot_dataset_stats(dataset)->episodes, mask ? mask : default_mask,
                                   out, err);
    free(actions);
    return ok;
}

// ----------------------------------------------------------------------------
// dataset_statistics.json

static json_object *number_array(const double *values, int n) {
    json_object *array = json_object_new_array_ext(n);
    for (int i = 0; i < n; i++) json_object_array_add(array, json_object_new_double(values[i]));
    return array;
}

// {mean, std, max, min, q01, q99[, mask]} in get_dataset_statistics's order.
static json_object *stats_object(const ActionStats *s, bool zeros) {
    static const double ZEROS[ROBOT_ACTION_DIM_MAX];
    json_object *object = json_object_new_object();
    const double *columns[6] = {s->mean, s->std, s->max, s->min, s->q01, s->q99};
    static const char *const NAMES[6] = {"mean", "std", "max", "min", "q01", "q99"};
    for (int k = 0; k < 6; k++) json_object_object_add(object, NAMES[k], number_array(zeros ? ZEROS : columns[k], s->dim));
    if (!zeros) {
        json_object *mask = json_object_new_array_ext(s->dim);
        for (int i = 0; i < s->dim; i++) json_object_array_add(mask, json_object_new_boolean(s->mask[i]));
        json_object_object_add(object, "mask", mask);
    }
    return object;
}

bool action_stats_write_json(const ActionStats *stats, const char *dataset_name, const char *path, Error *err) {
    json_object *entry = json_object_new_object(), *root = json_object_new_object();
    json_object_object_add(entry, "action", stats_object(stats, false));
    json_object_object_add(entry, "proprio", stats_object(stats, true));
    json_object_object_add(entry, "num_transitions", json_object_new_int64(stats->num_transitions));
    json_object_object_add(entry, "num_trajectories", json_object_new_int64(stats->num_trajectories));
    json_object_object_add(root, dataset_name, entry);
    bool ok = json_object_to_file_ext(path, root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED) == 0;
    json_object_put(root);
    return ok || fail(err, "%s: cannot write: %s", path, json_util_get_last_err());
}

static bool read_numbers(json_object *action, const char *key, double *out, int *dim, const char *path, Error *err) {
    json_object *array;
    if (!json_object_object_get_ex(action, key, &array) || !json_object_is_type(array, json_type_array))
        return fail(err, "%s: action.%s: not an array", path, key);
    int n = (int)json_object_array_length(array);
    if (n < 1 || n > ROBOT_ACTION_DIM_MAX || (*dim && n != *dim))
        return fail(err, "%s: action.%s: %d values (expected %d)", path, key, n, *dim ? *dim : 7);
    *dim = n;
    for (int i = 0; i < n; i++) {
        json_object *value = json_object_array_get_idx(array, (size_t)i);
        bool is_bool = json_object_is_type(value, json_type_boolean);
        if (!is_bool && !json_object_is_type(value, json_type_double) && !json_object_is_type(value, json_type_int))
            return fail(err, "%s: action.%s[%d]: not a number", path, key, i);
        out[i] = is_bool ? (double)json_object_get_boolean(value) : json_object_get_double(value);
    }
    return true;
}

static bool read_entry(json_object *entry, const char *path, ActionStats *out, Error *err) {
    json_object *action, *count;
    if (!json_object_object_get_ex(entry, "action", &action)) return fail(err, "%s: no \"action\" statistics", path);
    double *columns[6] = {out->mean, out->std, out->max, out->min, out->q01, out->q99};
    static const char *const NAMES[6] = {"mean", "std", "max", "min", "q01", "q99"};
    for (int k = 0; k < 6; k++)
        if (!read_numbers(action, NAMES[k], columns[k], &out->dim, path, err)) return false;
    double mask[ROBOT_ACTION_DIM_MAX];
    if (json_object_object_get_ex(action, "mask", &count)) { // absent: every dimension, as OpenVLA's default
        if (!read_numbers(action, "mask", mask, &out->dim, path, err)) return false;
    } else {
        for (int i = 0; i < out->dim; i++) mask[i] = 1;
    }
    for (int i = 0; i < out->dim; i++) out->mask[i] = mask[i] != 0;
    if (json_object_object_get_ex(entry, "num_transitions", &count)) out->num_transitions = json_object_get_int64(count);
    if (json_object_object_get_ex(entry, "num_trajectories", &count))
        out->num_trajectories = json_object_get_int64(count);
    return true;
}

bool action_stats_read_json(const char *path, const char *dataset_name, ActionStats *out, Error *err) {
    memset(out, 0, sizeof *out);
    json_object *root = json_object_from_file(path), *entry = NULL;
    if (!root || !json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        return fail(err, "%s: not a JSON object: %s", path, json_util_get_last_err());
    }
    if (dataset_name) {
        json_object_object_get_ex(root, dataset_name, &entry);
    } else if (json_object_object_length(root) == 1) {
        json_object_object_foreach(root, key, value) {
            (void)key;
            entry = value;
        }
    }
    bool ok = entry ? read_entry(entry, path, out, err)
          : dataset_name ? fail(err, "%s: no statistics of dataset '%s'", path, dataset_name)
                         : fail(err, "%s: %d datasets: name the one to read", path, json_object_object_length(root));
    json_object_put(root);
    return ok;
}

// ----------------------------------------------------------------------------
// normalisation

void action_normalize(const ActionStats *s, const float *action, float *out) {
    for (int i = 0; i < s->dim; i++) {
        float x = action[i];
        if (s->mask[i]) {
            float low = (float)s->q01[i], range = (float)(s->q99[i] - s->q01[i] + 1e-8); // numpy float64, then float32
            x = 2.0f * (x - low) / range - 1.0f;
            x = x < -1.0f ? -1.0f : x > 1.0f ? 1.0f : x;
        }
        out[i] = s->min[i] == s->max[i] ? 0.0f : x;
    }
}

// ----------------------------------------------------------------------------
// action tokens

void action_tokenizer_init(ActionTokenizer *t, int vocab_size) {
    t->vocab_size = vocab_size;
    double step = 2.0 / (double)(ACTION_BINS - 1); // np.linspace(-1, 1, 256): i * step + start, the last = stop
    for (int i = 0; i < ACTION_BINS; i++) t->bins[i] = (double)i * step + -1.0;
    t->bins[ACTION_BINS - 1] = 1.0;
    for (int i = 0; i < ACTION_BINS - 1; i++) t->centers[i] = (t->bins[i] + t->bins[i + 1]) / 2.0;
}

// np.digitize(x, bins) for increasing bins: the number of edges <= x (NaN sorts last: all of them).
static int digitize(const ActionTokenizer *t, double x) {
    if (isnan(x)) return ACTION_BINS;
    int lo = 0, hi = ACTION_BINS;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (t->bins[mid] <= x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

int32_t action_token_id(const ActionTokenizer *t, float value) {
    float clipped = value < -1.0f ? -1.0f : value > 1.0f ? 1.0f : value; // np.clip keeps float32 and NaN
    return t->vocab_size - digitize(t, (double)clipped);
}

double action_token_value(const ActionTokenizer *t, int32_t token_id) {
    int64_t bin = (int64_t)t->vocab_size - token_id - 1;
    bin = bin < 0 ? 0 : bin > ACTION_BINS - 2 ? ACTION_BINS - 2 : bin;
    return t->centers[bin];
}

void action_metrics_add(const ActionTokenizer *t, const int32_t *predicted, const int32_t *targets, int64_t n,
                        ActionMetricSums *sums) {
    int32_t begin = t->vocab_size - (ACTION_BINS + 1); // ActionTokenizer.action_token_begin_idx
    for (int64_t i = 0; i < n; i++) {
        if (targets[i] <= begin) continue;
        sums->n_action_tokens++;
        sums->n_correct += predicted[i] == targets[i];
        sums->l1_sum += fabs(action_token_value(t, predicted[i]) - action_token_value(t, targets[i]));
    }
}

// ----------------------------------------------------------------------------
// prompt

// UTF-8 lowercased with Unicode's default full case mapping (Python's str.lower).
static char *lowercase_utf8(const char *text, Error *err) {
    UErrorCode status = U_ZERO_ERROR;
    int32_t n16 = 0, lower16 = 0, n8 = 0;
    u_strFromUTF8(NULL, 0, &n16, text, -1, &status);
    if (status != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(status)) {
        fail(err, "instruction is not valid UTF-8: %s", u_errorName(status));
        return NULL;
    }
    status = U_ZERO_ERROR;
    int32_t capacity = 3 * n16 + 1; // a lowercase mapping grows a string at most threefold
    UChar *utf16 = checked_malloc(((size_t)n16 + 1 + (size_t)capacity) * sizeof *utf16, "instruction", err);
    if (!utf16) return NULL;
    UChar *lower = utf16 + n16 + 1;
    u_strFromUTF8(utf16, n16 + 1, NULL, text, -1, &status);
    lower16 = U_SUCCESS(status) ? u_strToLower(lower, capacity, utf16, n16, "", &status) : 0;
    if (U_SUCCESS(status)) u_strToUTF8(NULL, 0, &n8, lower, lower16, &status);
    if (status == U_BUFFER_OVERFLOW_ERROR) status = U_ZERO_ERROR;
    char *out = U_SUCCESS(status) ? checked_malloc((size_t)n8 + 1, "instruction", err) : NULL;
    if (out) u_strToUTF8(out, n8 + 1, NULL, lower, lower16, &status);
    free(utf16);
    if (U_FAILURE(status)) {
        free(out);
        fail(err, "lowercasing the instruction: %s", u_errorName(status));
        return NULL;
    }
    return out;
}

char *openvla_prompt(const char *instruction, Error *err) {
    static const char PREFIX[] = "In: What action should the robot take to ", SUFFIX[] = "?\nOut:";
    char *lower = lowercase_utf8(instruction, err);
    if (!lower) return NULL;
    size_t size = sizeof PREFIX - 1 + strlen(lower) + sizeof SUFFIX;
    char *prompt = checked_malloc(size, "prompt", err);
    if (prompt) snprintf(prompt, size, "%s%s%s", PREFIX, lower, SUFFIX);
    free(lower);
    return prompt;
}

// ----------------------------------------------------------------------------
// training sample

// Python's str.isspace: White_Space, and the separators U+001C..U+001F.
static bool is_python_space(UChar32 c) { return u_isUWhiteSpace(c) || (c >= 0x1c && c <= 0x1f); }

// PurePromptBuilder.add_turn's message.replace("<image>", "").strip() (malloc'd).
static char *prompt_message(const char *text, Error *err) {
    static const char IMAGE[] = "<image>";
    size_t n = strlen(text), kept = 0;
    char *out = checked_malloc(n + 1, "prompt message", err);
    if (!out) return NULL;
    for (size_t i = 0; i < n;) {
        if (strncmp(text + i, IMAGE, sizeof IMAGE - 1) == 0) i += sizeof IMAGE - 1;
        else out[kept++] = text[i++];
    }
    int32_t start = 0, end = (int32_t)kept, at;
    UChar32 c;
    for (at = start; at < end; start = at) { // leading spaces
        U8_NEXT(out, at, end, c);
        if (c < 0 || !is_python_space(c)) break;
    }
    for (at = end; at > start; end = at) { // trailing spaces
        U8_PREV(out, start, at, c);
        if (c < 0 || !is_python_space(c)) break;
    }
    memmove(out, out + start, (size_t)(end - start));
    out[end - start] = '\0';
    return out;
}

// "In: {human}\nOut: {gpt}</s>" as PurePromptBuilder.get_prompt after the two turns of RLDSBatchTransform.
static char *openvla_training_text(const char *instruction, const char *action_text, Error *err) {
    char *lower = lowercase_utf8(instruction, err), *question = NULL, *human = NULL, *gpt = NULL, *text = NULL;
    if (lower && asprintf(&question, "What action should the robot take to %s?", lower) < 0) question = NULL;
    if (lower && !question) fail(err, "out of memory for the prompt");
    human = question ? prompt_message(question, err) : NULL;
    gpt = human ? prompt_message(action_text, err) : NULL;
    if (gpt && asprintf(&text, "In: %s\nOut: %s</s>", human, gpt[0] ? gpt : " ") < 0) text = NULL;
    if (gpt && !text) fail(err, "out of memory for the prompt");
    free(lower);
    free(question);
    free(human);
    free(gpt);
    return text;
}

bool openvla_sample(const Tokenizer *tok, const ActionTokenizer *action_tokenizer, const char *instruction,
                    const float *normalized_action, int action_dim, Sample *out, Error *err) {
    memset(out, 0, sizeof *out);
    const HfTokenizer *hf = tokenizer_hf(tok);
    if (!hf) return fail(err, "OpenVLA samples need the model's tokenizer.json (action tokens are its last ids)");
    int32_t action_ids[ROBOT_ACTION_DIM_MAX];
    for (int i = 0; i < action_dim; i++) action_ids[i] = action_token_id(action_tokenizer, normalized_action[i]);
    char *action_text = hf_tokenizer_decode(hf, action_ids, action_dim, false, err);
    char *text = action_text ? openvla_training_text(instruction, action_text, err) : NULL;
    int n_ids = 0;
    bool ok = text && hf_tokenizer_encode(hf, text, strlen(text), true, &out->ids, &n_ids, err);
    free(action_text);
    free(text);
    out->labels = ok ? checked_malloc((size_t)n_ids * sizeof *out->labels, "labels", err) : NULL;
    if (!out->labels) {
        sample_free(out);
        return false;
    }
    out->length = n_ids;
    int first_label = n_ids - (action_dim + 1); // labels[: -(len(action) + 1)] = IGNORE_INDEX
    for (int t = 0; t < n_ids; t++) out->labels[t] = t >= first_label ? out->ids[t] : IGNORE_INDEX;
    return true;
}
