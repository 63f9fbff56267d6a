// Vision-language datasets: LLaVA records checked once at open (what would
// make training fail or mislead is skipped, with a reason and a log entry),
// then rendered and their images loaded one sample at a time.
//
//   sample: the chat by the tokenizer's template (chat_template.c), where each
//           "<image>" becomes n_image_tokens x image_token_id (labels -100);
//           labels cover gpt turns and their end-of-turn token; the rest is -100.
#include "data.h"
#include "data_private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct VlmDataset {
    VlmDatasetOptions options;
    char *path, *images_path;   // copies of options.path / options.images
    LlavaIndex *index;
    ImageStore *images;         // NULL for text only
    int64_t *usable;            // (n_usable,) record positions of usable samples
    int64_t n_usable;
    uint8_t *load_failed;       // (n_usable,) its image failed to load during training
    SkippedRecord *skipped;
    int64_t n_skipped, skipped_capacity;
    VlmDatasetStats stats;
};

static const char *const SKIP_REASON_NAMES[SKIP_REASON_COUNT] = {
    [SKIP_BAD_RECORD] = "bad record",
    [SKIP_EMPTY_CONVERSATION] = "empty conversation",
    [SKIP_NO_PLACEHOLDER] = "no <image> in the text",
    [SKIP_PLACEHOLDER_MISMATCH] = "<image> count mismatch",
    [SKIP_MISSING_IMAGE] = "missing image",
    [SKIP_BAD_IMAGE] = "corrupt image",
    [SKIP_IMAGE_TRUNCATED] = "image beyond max_seq_len",
    [SKIP_CORRUPT_RECORD] = "corrupt TFRecord",
};

const char *skip_reason_name(SkipReason reason) {
    return reason >= 0 && reason < SKIP_REASON_COUNT ? SKIP_REASON_NAMES[reason] : "unknown";
}

void vlm_sample_free(VlmSample *sample) {
    sample_free(&sample->text);
    free(sample->image);
    *sample = (VlmSample){0};
}

// ----------------------------------------------------------------------------
// the skip list

static bool record_skip(VlmDataset *dataset, int64_t record, const char *id, SkipReason reason,
                        const char *message, Error *err) {
    if (dataset->n_skipped == dataset->skipped_capacity) {
        int64_t capacity = dataset->skipped_capacity ? 2 * dataset->skipped_capacity : 64;
        SkippedRecord *bigger = realloc(dataset->skipped, (size_t)capacity * sizeof *bigger);
        if (!bigger) return fail(err, "out of memory for %lld skipped records", (long long)capacity);
        dataset->skipped = bigger;
        dataset->skipped_capacity = capacity;
    }
    SkippedRecord *entry = &dataset->skipped[dataset->n_skipped++];
    *entry = (SkippedRecord){.record = record, .reason = reason};
    snprintf(entry->id, sizeof entry->id, "%s", id ? id : "");
    snprintf(entry->message, sizeof entry->message, "%s", message);
    dataset->stats.skipped[reason]++;
    dataset->stats.skipped_total++;
    return true;
}

// ----------------------------------------------------------------------------
// rendering

static int count_placeholders(const LlavaRecord *record) {
    int count = 0;
    for (int turn = 0; turn < record->n_turns; turn++) {
        for (const char *at = record->values[turn]; (at = strstr(at, LLAVA_IMAGE_PLACEHOLDER)); at++) count++;
    }
    return count;
}

static bool render_record(const VlmDatasetOptions *o, const LlavaRecord *record, TokenSequence *seq,
                          int *image_end, Error *err) {
    ImageSlots images = {.n_tokens = o->n_image_tokens, .token_id = o->image_token_id};
    return render_chat(o->tok, record->roles, (const char *const *)record->values, record->n_turns, images, seq,
                       image_end, err);
}

// ----------------------------------------------------------------------------
// checks of one record, in the order a reader would notice

static bool has_gpt_content(const LlavaRecord *record) {
    for (int turn = 0; turn < record->n_turns; turn++)
        if (record->roles[turn] == LLAVA_ASSISTANT && record->values[turn][0] != '\0') return true;
    return false;
}

// Text-level problems: returns SKIP_REASON_COUNT when there are none.
static SkipReason text_problem(const VlmDataset *dataset, const LlavaRecord *record, char *why, size_t why_size) {
    if (record->n_turns == 0) return snprintf(why, why_size, "\"conversations\" is empty"), SKIP_EMPTY_CONVERSATION;
    if (!has_gpt_content(record))
        return snprintf(why, why_size, "no gpt turn with text to train on"), SKIP_EMPTY_CONVERSATION;
    int placeholders = count_placeholders(record);
    if (record->image && placeholders == 0)
        return snprintf(why, why_size, "image '%s' is given but no turn has <image>", record->image),
               SKIP_NO_PLACEHOLDER;
    int n_images = record->image != NULL;
    if (placeholders > n_images)
        return snprintf(why, why_size, "<image> appears %d times for %d image(s)", placeholders, n_images),
               SKIP_PLACEHOLDER_MISMATCH;
    if (record->image && !dataset->images)
        return snprintf(why, why_size, "image '%s': no image folder or archive is configured", record->image),
               SKIP_MISSING_IMAGE;
    if (record->image && !image_store_has(dataset->images, record->image))
        return snprintf(why, why_size, "image '%s' is not in %s", record->image, dataset->images_path),
               SKIP_MISSING_IMAGE;
    return SKIP_REASON_COUNT;
}

// Reads, decodes and preprocesses the record's image into out (3, S, S).
static bool load_image(const VlmDataset *dataset, const char *name, float *out, Error *err) {
    uint8_t *bytes = NULL;
    size_t size = 0;
    if (!image_store_read(dataset->images, name, &bytes, &size, err)) return false;
    Image image = {0};
    bool ok = image_decode_memory(bytes, size, name, &image, err) &&
              image_preprocess(&image, &dataset->options.preprocess, out, err);
    image_free(&image);
    free(bytes);
    return ok;
}

static size_t image_floats(const VlmDataset *dataset) {
    size_t size = (size_t)dataset->options.preprocess.size;
    return 3 * size * size;
}

// ----------------------------------------------------------------------------
// the open-time scan

typedef struct ScanScratch {
    TokenSequence seq;
    float *image; // (3, S, S) when decoding images
} ScanScratch;

static void count_usable(VlmDataset *dataset, const TokenSequence *seq, bool has_image) {
    int max_len = dataset->options.max_seq_len;
    int length = seq->length < max_len ? seq->length : max_len;
    VlmDatasetStats *stats = &dataset->stats;
    stats->samples++;
    stats->images += has_image;
    stats->tokens += length;
    stats->truncated += seq->length > max_len;
    for (int t = 1; t < length; t++) stats->label_tokens += seq->labels[t] != IGNORE_INDEX;
}

// Checks record i; a usable one is appended to dataset->usable.
static bool scan_record(VlmDataset *dataset, int64_t i, ScanScratch *scratch, Error *err) {
    LlavaRecord record;
    Error why = {{0}};
    if (!llava_record_read(dataset->index, i, &record, &why)) {
        bool ok = record_skip(dataset, i, record.id, SKIP_BAD_RECORD, why.message, err);
        llava_record_free(&record);
        return ok;
    }
    SkipReason reason = text_problem(dataset, &record, why.message, sizeof why.message);
    int image_end = 0;
    if (reason == SKIP_REASON_COUNT && !render_record(&dataset->options, &record, &scratch->seq, &image_end, &why))
        reason = SKIP_BAD_RECORD;
    if (reason == SKIP_REASON_COUNT && image_end > dataset->options.max_seq_len) {
        snprintf(why.message, sizeof why.message, "the image's tokens end at %d, past max_seq_len %d", image_end,
                 dataset->options.max_seq_len);
        reason = SKIP_IMAGE_TRUNCATED;
    }
    if (reason == SKIP_REASON_COUNT && record.image && dataset->options.decode_images &&
        !load_image(dataset, record.image, scratch->image, &why))
        reason = SKIP_BAD_IMAGE;
    bool ok = true;
    if (reason != SKIP_REASON_COUNT) ok = record_skip(dataset, i, record.id, reason, why.message, err);
    else dataset->usable[dataset->n_usable++] = i, count_usable(dataset, &scratch->seq, record.image != NULL);
    llava_record_free(&record);
    return ok;
}

static bool scan_records(VlmDataset *dataset, Error *err) {
    int64_t n_records = llava_index_count(dataset->index);
    dataset->stats.records = n_records;
    dataset->usable = checked_malloc((size_t)(n_records > 0 ? n_records : 1) * sizeof *dataset->usable,
                                     "the usable-record list", err);
    ScanScratch scratch = {0};
    if (dataset->options.decode_images)
        scratch.image = checked_malloc(image_floats(dataset) * sizeof(float), "an image tensor", err);
    dataset->load_failed = checked_calloc((size_t)(n_records > 0 ? n_records : 1), 1, "the load-failure flags", err);
    bool ok = dataset->usable && dataset->load_failed && (!dataset->options.decode_images || scratch.image);
    char what[1024];
    snprintf(what, sizeof what, "checking and tokenizing the records of %s", dataset->path);
    Progress progress;
    progress_begin(&progress, what, (double)n_records, false);
    for (int64_t i = 0; ok && i < n_records; i++) {
        ok = scan_record(dataset, i, &scratch, err);
        progress_update(&progress, (double)(i + 1));
    }
    if (ok) progress_end(&progress);
    token_sequence_free(&scratch.seq);
    free(scratch.image);
    return ok;
}

// ----------------------------------------------------------------------------
// public

static bool check_options(const VlmDatasetOptions *o, Error *err) {
    if (!o->tok) return fail(err, "%s: no tokenizer", o->path);
    if (!tokenizer_check_chat_template(o->tok, err)) return fail_context(err, "%s: ", o->path);
    if (o->max_seq_len < 2) return fail(err, "%s: max_seq_len must be at least 2 (got %d)", o->path, o->max_seq_len);
    if (o->n_image_tokens < 1) return fail(err, "%s: n_image_tokens must be positive (got %d)", o->path, o->n_image_tokens);
    if (o->preprocess.size < 1) return fail(err, "%s: the image size must be positive", o->path);
    return true;
}

static bool open_parts(VlmDataset *dataset, const VlmDatasetOptions *options, Error *err) {
    dataset->options = *options;
    dataset->path = checked_strdup(options->path, err);
    dataset->images_path = checked_strdup(options->images ? options->images : "", err);
    if (!dataset->path || !dataset->images_path) return false;
    dataset->options.path = dataset->path;
    dataset->options.images = dataset->images_path;
    dataset->index = llava_index_open(options->path, err);
    if (!dataset->index) return false;
    if (dataset->images_path[0] && !(dataset->images = image_store_open(dataset->images_path, err))) return false;
    return scan_records(dataset, err);
}

VlmDataset *vlm_dataset_open(const VlmDatasetOptions *options, Error *err) {
    if (!check_options(options, err)) return NULL;
    VlmDataset *dataset = checked_calloc(1, sizeof *dataset, "a vision-language dataset", err);
    if (dataset && !open_parts(dataset, options, err)) {
        vlm_dataset_destroy(dataset);
        return NULL;
    }
    return dataset;
}

void vlm_dataset_destroy(VlmDataset *dataset) {
    if (!dataset) return;
    llava_index_destroy(dataset->index);
    image_store_destroy(dataset->images);
    free(dataset->usable);
    free(dataset->load_failed);
    free(dataset->skipped);
    free(dataset->path);
    free(dataset->images_path);
    free(dataset);
}

int64_t vlm_dataset_size(const VlmDataset *dataset) { return dataset->n_usable; }
const VlmDatasetStats *vlm_dataset_stats(const VlmDataset *dataset) { return &dataset->stats; }
int64_t vlm_dataset_skipped_count(const VlmDataset *dataset) { return dataset->n_skipped; }

const SkippedRecord *vlm_dataset_skipped(const VlmDataset *dataset, int64_t i) {
    return i >= 0 && i < dataset->n_skipped ? &dataset->skipped[i] : NULL;
}

bool vlm_dataset_check_skips(const VlmDataset *dataset, double max_fraction, Error *err) {
    const VlmDatasetStats *stats = &dataset->stats;
    double fraction = stats->records ? (double)stats->skipped_total / (double)stats->records : 0.0;
    if (fraction <= max_fraction) return true;
    char counts[512] = "";
    for (int reason = 0; reason < SKIP_REASON_COUNT; reason++) {
        if (!stats->skipped[reason]) continue;
        size_t used = strlen(counts);
        snprintf(counts + used, sizeof counts - used, "%s%s: %lld", used ? ", " : "",
                 skip_reason_name((SkipReason)reason), (long long)stats->skipped[reason]);
    }
    return fail(err, "%s: %lld of %lld records skipped (%.2f%%), over data.max_skip_fraction %.2f%% (%s)",
                dataset->path, (long long)stats->skipped_total, (long long)stats->records, 100.0 * fraction,
                100.0 * max_fraction, counts);
}

static bool load_record(VlmDataset *dataset, int64_t record_index, VlmSample *out, bool *skipped, Error *err) {
    LlavaRecord record;
    if (!llava_record_read(dataset->index, record_index, &record, err)) return llava_record_free(&record), false;
    TokenSequence seq = {0};
    int image_end = 0;
    bool ok = render_record(&dataset->options, &record, &seq, &image_end, err);
    out->text = (Sample){.ids = seq.ids, .labels = seq.labels, .truncated = seq.length > dataset->options.max_seq_len};
    out->text.length = out->text.truncated ? dataset->options.max_seq_len : seq.length;
    out->has_image = record.image != NULL;
    if (ok && out->has_image) out->image = checked_malloc(image_floats(dataset) * sizeof(float), "an image tensor", err);
    ok = ok && (!out->has_image || out->image);
    Error why = {{0}};
    if (ok && out->has_image && !load_image(dataset, record.image, out->image, &why)) {
        *skipped = true;
        ok = record_skip(dataset, record_index, record.id, SKIP_BAD_IMAGE, why.message, err);
    }
    llava_record_free(&record);
    return ok;
}

bool vlm_dataset_load(VlmDataset *dataset, int64_t i, VlmSample *out, bool *skipped, Error *err) {
    *out = (VlmSample){0};
    *skipped = false;
    if (i < 0 || i >= dataset->n_usable) return fail(err, "%s: no sample %lld", dataset->path, (long long)i);
    if (dataset->load_failed[i]) return *skipped = true, true;
    bool ok = load_record(dataset, dataset->usable[i], out, skipped, err);
    if (ok && *skipped) {
        dataset->load_failed[i] = 1;
        dataset->stats.samples--;
        dataset->stats.images--;
    }
    if (!ok || *skipped) vlm_sample_free(out);
    if (!ok) fail_context(err, "%s: record %lld: ", dataset->path, (long long)dataset->usable[i]);
    return ok;
}

int vlm_dataset_image_size(const VlmDataset *dataset) { return dataset->options.preprocess.size; }
const Tokenizer *vlm_dataset_tokenizer(const VlmDataset *dataset) { return dataset->options.tok; }

int32_t llava_image_token_id(const Tokenizer *tok, int model_vocab) {
    int added = tokenizer_token_id(tok, LLAVA_IMAGE_PLACEHOLDER);
    if (added >= 0 && added < model_vocab) return added;
    int past_text = tokenizer_vocab_size(tok);
    return past_text < model_vocab ? past_text : 0;
}
