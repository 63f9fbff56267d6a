// `lora-train data check --config FILE`: opens the dataset exactly as training
// would, decoding every image, and reports its counts and every skipped record.
#include <stdio.h>

#include "data/data.h"
#include "train_private.h"

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

static void print_skipped(const VlmDataset *dataset) {
    for (int64_t i = 0; i < vlm_dataset_skipped_count(dataset); i++) {
        const SkippedRecord *skip = vlm_dataset_skipped(dataset, i);
        printf("skipped record %lld%s%s%s: %s: %s\n", (long long)skip->record, skip->id[0] ? " (id '" : "",
               skip->id, skip->id[0] ? "')" : "", skip_reason_name(skip->reason), skip->message);
    }
}

static void print_counts(const Config *config, const VlmDatasetOptions *options, const VlmDataset *dataset,
                         double seconds) {
    const VlmDatasetStats *s = vlm_dataset_stats(dataset);
    printf("%s: %lld records in %.1f s\n", config->data.path, (long long)s->records, seconds);
    printf("  usable samples   %lld (%lld with an image)\n", (long long)s->samples, (long long)s->images);
    printf("  images           %d x %d (vision.tower_preset %s), fit %s\n", options->preprocess.size,
           options->preprocess.size, config->vision.tower_preset, config->vision.image_fit);
    printf("  tokens           %lld (%lld label tokens)\n", (long long)s->tokens, (long long)s->label_tokens);
    printf("  truncated        %lld (max_seq_len %d)\n", (long long)s->truncated, config->data.max_seq_len);
    printf("  skipped          %lld\n", (long long)s->skipped_total);
    for (int reason = 0; reason < SKIP_REASON_COUNT; reason++) {
        if (s->skipped[reason]) printf("    %s: %lld\n", skip_reason_name((SkipReason)reason), (long long)s->skipped[reason]);
    }
}

int data_check_main(const Config *config) {
    Error err = {{0}};
    LlamaConfig llama;
    HfLayout layout;
    Tokenizer *tok = config_llama_config(config, &llama, &layout, &err) ? config_tokenizer(config, &err) : NULL;
    VlmDatasetOptions options;
    bool ready = tok && dataset_options(config, tok, llama.vocab_size, &options, &err);
    double start = time_seconds();
    VlmDataset *dataset = ready ? vlm_dataset_open(&options, &err) : NULL;
    int status = 0;
    if (!dataset) {
        fprintf(stderr, "lora-train data check: %s\n", err.message);
        status = 1;
    } else {
        print_skipped(dataset);
        print_counts(config, &options, dataset, time_seconds() - start);
        if (!vlm_dataset_check_skips(dataset, config->data.max_skip_fraction, &err)) {
            fprintf(stderr, "lora-train data check: %s\n", err.message);
            status = 1;
        }
    }
    vlm_dataset_destroy(dataset);
    tokenizer_destroy(tok);
    return status;
}
