// `lora-train data check --config FILE`: opens the dataset exactly as training
// would (text JSONL, LLaVA records with every image decoded, or robot data: an
// RLDS / TFDS folder or JSONL steps, every step's image decoded; the demo data
// written first when data.create_if_missing says so) and reports its counts
// and the skipped records: a count per reason and the first few of each.
#include <stdio.h>

#include "data/data.h"
#include "data/rlds.h"
#include "train_private.h"

#define EXAMPLES_PER_REASON 3

// Training's dataset options (image size, fit, image tokens, the image token
// against the model's vocabulary), every image decoded at open.
static bool dataset_options(const Config *config, const Tokenizer *tok, int model_vocab, VlmDatasetOptions *options,
                            Error *err) {
    VlmSetup setup;
    if (!vlm_setup(config, &setup, err) ||
        !vlm_dataset_options(config, tok, vlm_image_token_id(&setup, tok, model_vocab), options, err))
        return false;
    options->decode_images = true;
    return true;
}

typedef const SkippedRecord *(*SkippedAt)(const void *dataset, int64_t i);

// "    missing image: 7" and the first EXAMPLES_PER_REASON records skipped for it (their number
// first unless the message names the record, as robot data's do).
static void print_record_skips(const int64_t *counts, int64_t n_skipped, SkippedAt skipped_at, const void *dataset,
                               bool number_records) {
    for (int reason = 0; reason < SKIP_REASON_COUNT; reason++) {
        if (!counts[reason]) continue;
        printf("    %s: %lld\n", skip_reason_name((SkipReason)reason), (long long)counts[reason]);
        int shown = 0;
        for (int64_t i = 0; i < n_skipped && shown < EXAMPLES_PER_REASON; i++) {
            const SkippedRecord *skip = skipped_at(dataset, i);
            if (skip->reason != (SkipReason)reason) continue;
            if (number_records)
                printf("      record %lld%s%s%s: ", (long long)skip->record, skip->id[0] ? " (id '" : "", skip->id,
                       skip->id[0] ? "')" : "");
            printf("%s%s\n", number_records ? "" : "      ", skip->message);
            shown++;
        }
        if (counts[reason] > shown) printf("      ... %lld more\n", (long long)(counts[reason] - shown));
    }
}

static const SkippedRecord *vlm_skipped_at(const void *dataset, int64_t i) { return vlm_dataset_skipped(dataset, i); }
static const SkippedRecord *robot_skipped_at(const void *dataset, int64_t i) {
    return robot_dataset_skipped(dataset, i);
}

static void print_vlm_skips(const VlmDataset *dataset) {
    print_record_skips(vlm_dataset_stats(dataset)->skipped, vlm_dataset_skipped_count(dataset), vlm_skipped_at,
                       dataset, true);
}

static void print_vlm_counts(const Config *config, const VlmDatasetOptions *options, const VlmDataset *dataset,
                             double seconds) {
    const VlmDatasetStats *s = vlm_dataset_stats(dataset);
    printf("%s: %lld LLaVA records in %.1f s\n", config->data.path, (long long)s->records, seconds);
    printf("  usable samples   %lld (%lld with an image)\n", (long long)s->samples, (long long)s->images);
    printf("  images           %d x %d (vision.tower_preset %s), fit %s\n", options->preprocess.size,
           options->preprocess.size, config->vision.tower_preset, config->vision.image_fit);
    printf("  tokens           %lld (%lld label tokens)\n", (long long)s->tokens, (long long)s->label_tokens);
    printf("  truncated        %lld (max_seq_len %d)\n", (long long)s->truncated, config->data.max_seq_len);
    printf("  skipped          %lld\n", (long long)s->skipped_total);
    print_vlm_skips(dataset);
}

static bool check_vlm(const Config *config, const Tokenizer *tok, int model_vocab, Error *err) {
    VlmDatasetOptions options;
    if (!dataset_options(config, tok, model_vocab, &options, err)) return false;
    double start = time_seconds();
    VlmDataset *dataset = vlm_dataset_open(&options, err);
    if (!dataset) return false;
    print_vlm_counts(config, &options, dataset, time_seconds() - start);
    bool ok = vlm_dataset_check_skips(dataset, config->data.max_skip_fraction, err);
    vlm_dataset_destroy(dataset);
    return ok;
}

static void print_text_skips(const Dataset *dataset) {
    int64_t n = dataset_skipped_count(dataset);
    for (int reason = 0; reason < SKIP_REASON_COUNT; reason++) {
        int64_t count = 0;
        for (int64_t i = 0; i < n; i++) count += dataset_skipped(dataset, i)->reason == (SkipReason)reason;
        if (!count) continue;
        printf("    %s: %lld\n", skip_reason_name((SkipReason)reason), (long long)count);
        int shown = 0;
        for (int64_t i = 0; i < n && shown < EXAMPLES_PER_REASON; i++) {
            const DatasetSkip *skip = dataset_skipped(dataset, i);
            if (skip->reason != (SkipReason)reason) continue;
            printf("      %s\n", skip->message);
            shown++;
        }
        if (count > shown) printf("      ... %lld more\n", (long long)(count - shown));
    }
}

static void print_text_counts(const Config *config, const Tokenizer *tok, const Dataset *dataset, double seconds) {
    int64_t samples = dataset_size(dataset), skipped = dataset_skipped_count(dataset), tokens = 0, labels = 0;
    for (int64_t i = 0; i < samples; i++) {
        const Sample *sample = dataset_sample(dataset, i);
        tokens += sample->length;
        for (int t = 0; t < sample->length; t++) labels += sample->labels[t] != IGNORE_INDEX;
    }
    printf("%s: %lld JSONL records (messages / text) in %.1f s, chat template %s\n", config->data.path,
           (long long)(samples + skipped), seconds, tokenizer_chat_template(tok));
    printf("  usable samples   %lld\n", (long long)samples);
    printf("  tokens           %lld (%lld label tokens)\n", (long long)tokens, (long long)labels);
    printf("  truncated        %lld (max_seq_len %d)\n", (long long)dataset_truncated_count(dataset),
           config->data.max_seq_len);
    printf("  skipped          %lld\n", (long long)skipped);
    print_text_skips(dataset);
}

static bool check_text(const Config *config, const Tokenizer *tok, Error *err) {
    if (!data_create_if_missing(config, true, err)) return false;
    double start = time_seconds();
    Dataset *dataset = dataset_open_jsonl(config->data.path, tok, config->data.max_seq_len, err);
    if (!dataset) return false;
    print_text_counts(config, tok, dataset, time_seconds() - start);
    bool ok = dataset_check_skips(dataset, config->data.max_skip_fraction, err);
    dataset_destroy(dataset);
    return ok;
}

// The keys in use, the counts, the per-dimension action statistics OpenVLA normalises with (q01 / q99).
static void print_robot_counts(const Config *config, const RobotDataset *dataset, double seconds) {
    const RobotDatasetStats *s = robot_dataset_stats(dataset);
    const char *image, *instruction, *action;
    robot_dataset_keys(dataset, &image, &instruction, &action);
    bool rlds = robot_dataset_is_rlds(dataset);
    printf("%s: %s '%s', %lld %s in %.1f s\n", config->data.path, rlds ? "RLDS dataset" : "JSONL robot steps",
           robot_dataset_name(dataset), (long long)s->records, rlds ? "episode records" : "lines", seconds);
    printf("  keys             image %s, instruction %s, action %s (%d-D)\n", image, instruction, action,
           robot_dataset_action_dim(dataset));
    printf("  usable episodes  %lld\n", (long long)s->episodes);
    printf("  usable steps     %lld\n", (long long)s->steps);
    ActionStats stats;
    Error err = {{0}};
    if (robot_dataset_action_stats(dataset, NULL, &stats, &err)) {
        printf("  action q01       ");
        for (int i = 0; i < stats.dim; i++) printf(" %8.4f", stats.q01[i]);
        printf("\n  action q99       ");
        for (int i = 0; i < stats.dim; i++) printf(" %8.4f", stats.q99[i]);
        printf("\n  normalised       ");
        for (int i = 0; i < stats.dim; i++) printf(" %8s", stats.mask[i] ? "yes" : "no");
        printf("\n");
    }
    printf("  skipped          %lld\n", (long long)s->skipped_total);
    print_record_skips(s->skipped, robot_dataset_skipped_count(dataset), robot_skipped_at, dataset, false);
}

// Robot data needs no tokenizer to be checked: every step's image is decoded.
static bool check_robot(const Config *config, Error *err) {
    const char *image = config->data.image_key, *instruction = config->data.instruction_key;
    const char *action = config->data.action_key;
    RobotDataOptions options = {.path = config->data.path, .images = config->data.images, .decode_images = true,
                                .image_key = image[0] ? image : NULL, .instruction_key = instruction[0] ? instruction : NULL,
                                .action_key = action[0] ? action : NULL};
    double start = time_seconds();
    RobotDataset *dataset = robot_dataset_open(&options, err);
    if (!dataset) return false;
    print_robot_counts(config, dataset, time_seconds() - start);
    bool ok = robot_dataset_check_skips(dataset, config->data.max_skip_fraction, err);
    robot_dataset_destroy(dataset);
    return ok;
}

int data_check_main(const Config *config) {
    Error err = {{0}};
    if (config_is_robot_data(config)) {
        bool ok = check_robot(config, &err);
        if (!ok) fprintf(stderr, "lora-train data check: %s\n", err.message);
        return ok ? 0 : 1;
    }
    LlamaConfig llama;
    HfLayout layout;
    Tokenizer *tok = config_llama_config(config, &llama, &layout, &err) ? config_tokenizer(config, &err) : NULL;
    bool ok = tok && (run_is_vlm(config) ? check_vlm(config, tok, llama.vocab_size, &err) : check_text(config, tok, &err));
    if (!ok) fprintf(stderr, "lora-train data check: %s\n", err.message);
    tokenizer_destroy(tok);
    return ok ? 0 : 1;
}
