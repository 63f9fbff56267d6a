// lora-train demo: a vision-language model learns to name the colour and the
// kind of a shape in a picture. Synthetic pictures (shapes of four colours and
// three kinds on a noisy background) are encoded as PNG and JPEG and packed in
// a tar with their LLaVA records; train_run then trains LoRA + projector over a
// tiny random Llama and a frozen tiny random CLIP tower, reading the pictures
// in place. Held-out accuracy of greedy answers is printed before and after.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "data/data.h"
#include "trainer.h"
#include "vision/vision.h"

enum { IMAGE_SIZE = 32, N_TRAIN = 768, N_HELD_OUT = 96, MAX_ANSWER = 10 };

static const char *const COLOUR_NAMES[] = {"red", "green", "blue", "yellow"};
static const uint8_t COLOURS[][3] = {{220, 40, 40}, {40, 190, 60}, {50, 80, 230}, {235, 215, 40}};
static const char *const KIND_NAMES[] = {"square", "circle", "triangle"};
enum { N_COLOURS = 4, N_KINDS = 3 };

typedef struct DemoSample {
    int colour, kind;
    bool asks_colour;
} DemoSample;

// ----------------------------------------------------------------------------
// pictures

static bool inside(int kind, int x, int y, int cx, int cy, int half) {
    int dx = x - cx, dy = y - cy;
    if (kind == 0) return abs(dx) <= half && abs(dy) <= half;
    if (kind == 1) return dx * dx + dy * dy <= half * half;
    return dy >= -half && dy <= half && 2 * abs(dx) <= dy + half; // apex up
}

// A shape of half-size 8-12 px near the centre (within 2 px): the tiny
// frozen tower and LoRA learn what it is within a minute; anywhere in the
// picture, telling shapes apart needs translation invariance that the tiny
// model does not learn from a few hundred examples.
static void draw(Image *image, int colour, int kind, Rng *rng) {
    int half = 8 + (int)rng_below(rng, 5);
    int cx = IMAGE_SIZE / 2 - 2 + (int)rng_below(rng, 5);
    int cy = IMAGE_SIZE / 2 - 2 + (int)rng_below(rng, 5);
    for (int y = 0; y < IMAGE_SIZE; y++) {
        for (int x = 0; x < IMAGE_SIZE; x++) {
            uint8_t *px = image->pixels + ((size_t)y * IMAGE_SIZE + x) * 3;
            bool in = inside(kind, x, y, cx, cy, half);
            for (int c = 0; c < 3; c++) px[c] = in ? COLOURS[colour][c] : (uint8_t)(100 + rng_below(rng, 40));
        }
    }
}

// Draws sample i's picture and encodes it (PNG for even i, JPEG for odd) into *encoded.
static bool make_sample(DemoSample *s, int i, Rng *rng, uint8_t **encoded, size_t *encoded_size, Error *err) {
    s->colour = (int)rng_below(rng, N_COLOURS);
    s->kind = (int)rng_below(rng, N_KINDS);
    s->asks_colour = rng_below(rng, 2) == 0;
    Image picture;
    if (!image_alloc(&picture, IMAGE_SIZE, IMAGE_SIZE, err)) return false;
    draw(&picture, s->colour, s->kind, rng);
    bool ok = i % 2 == 0 ? image_encode_png(&picture, encoded, encoded_size, err)
                         : image_encode_jpeg(&picture, 90, encoded, encoded_size, err);
    image_free(&picture);
    return ok;
}

static const char *question_of(const DemoSample *s) { return s->asks_colour ? "colour?" : "shape?"; }
static const char *answer_of(const DemoSample *s) {
    return s->asks_colour ? COLOUR_NAMES[s->colour] : KIND_NAMES[s->kind];
}

// ----------------------------------------------------------------------------
// the dataset on disk: images.tar (NNNNN.png / NNNNN.jpg), train.json and
// held_out.json (LLaVA records)

static bool write_record(FILE *records, const DemoSample *s, int i, bool first) {
    return fprintf(records,
                   "%s{\"id\": \"%05d\", \"image\": \"%05d.%s\", \"conversations\": ["
                   "{\"from\": \"human\", \"value\": \"<image>\\n%s\"}, {\"from\": \"gpt\", \"value\": \"%s\"}]}",
                   first ? "[\n" : ",\n", i, i, i % 2 ? "jpg" : "png", question_of(s), answer_of(s)) > 0;
}

static bool write_records(const char *path, const DemoSample *samples, int from, int to, Error *err) {
    FILE *records = fopen(path, "w");
    if (!records) return fail(err, "%s: cannot create", path);
    bool ok = true;
    for (int i = from; ok && i < to; i++) ok = write_record(records, &samples[i], i, i == from);
    ok = fprintf(records, "\n]\n") > 0 && ok;
    return (fclose(records) == 0 && ok) || fail(err, "%s: write failed", path);
}

static bool write_pictures(const char *tar_path, DemoSample *samples, Error *err) {
    TarWriter *tar = tar_writer_open(tar_path, err);
    if (!tar) return false;
    Rng rng;
    rng_seed(&rng, 2024);
    bool ok = true;
    for (int i = 0; ok && i < N_TRAIN + N_HELD_OUT; i++) {
        uint8_t *encoded = NULL;
        size_t size = 0;
        char name[32];
        snprintf(name, sizeof name, "%05d.%s", i, i % 2 ? "jpg" : "png");
        ok = make_sample(&samples[i], i, &rng, &encoded, &size, err) && tar_writer_add(tar, name, encoded, size, err);
        free(encoded);
    }
    return tar_writer_close(tar, err) && ok;
}

static bool make_dataset(const char *dir, DemoSample *samples, Error *err) {
    char path[1100];
    snprintf(path, sizeof path, "%s/images.tar", dir);
    printf("writing %d pictures (PNG and JPEG) in %s and their LLaVA records\n", N_TRAIN + N_HELD_OUT, path);
    if (!make_dirs(dir, err) || !write_pictures(path, samples, err)) return false;
    snprintf(path, sizeof path, "%s/train.json", dir);
    if (!write_records(path, samples, 0, N_TRAIN, err)) return false;
    snprintf(path, sizeof path, "%s/held_out.json", dir);
    return write_records(path, samples, N_TRAIN, N_TRAIN + N_HELD_OUT, err);
}

// ----------------------------------------------------------------------------
// the recipe

static bool set_all(Config *config, const char *const *assignments, int n, Error *err) {
    for (int i = 0; i < n; i++) {
        if (!config_set(config, assignments[i], err)) return false;
    }
    return true;
}

// The demo's recipe, then the caller's settings ("key=value", as --set) over it
// (validated once the data is written).
static bool demo_config(const char *dir, const char *const *settings, int n_settings, Config *config, Error *err) {
    config_defaults(config);
    snprintf(config->model.path, CONFIG_PATH_MAX, "%s/model", dir);
    snprintf(config->data.path, CONFIG_PATH_MAX, "%s/train.json", dir);
    snprintf(config->data.images, CONFIG_PATH_MAX, "%s/images.tar", dir);
    snprintf(config->vision.tower, CONFIG_PATH_MAX, "%s/tower.safetensors", dir);
    snprintf(config->checkpoint.dir, CONFIG_PATH_MAX, "%s/out", dir);
    static const char *const recipe[] = {
        "model.create_if_missing=demo", "vision.tower_preset=tiny", "data.image_tokens=16", "data.max_seq_len=40",
        "lora.r=8", "lora.alpha=16", "lora.dropout=0", "lora.target=all", "train.micro_batch=16",
        "train.max_steps=600", "train.lr=5e-3", "train.schedule=cosine", "train.warmup=15", "train.weight_decay=0",
        "train.max_grad_norm=1", "train.seed=5", "train.log_every=50", "train.backend=cpu",
        "checkpoint.every_steps=0"};
    return set_all(config, recipe, (int)(sizeof recipe / sizeof recipe[0]), err) &&
           (set_all(config, settings, n_settings, err) || fail_context(err, "--set: "));
}

// ----------------------------------------------------------------------------
// evaluation: greedy answers to the held-out records, through the same
// rendering and preprocessing as training

typedef struct Evaluator {
    const Ops *ops;
    Tokenizer *tok;
    ClipTower *tower;
    Model *model;
    VlmDataset *held_out;
    void *features;  // (P, D) backend memory
    float *logits;   // (max_seq_len, V)
} Evaluator;

static bool evaluator_open(Evaluator *e, const Config *config, const char *dir, Error *err) {
    e->ops = ops_cpu();
    ClipVisionConfig clip;
    ModelOptions options = {.ops = e->ops, .max_batch = 1, .max_seq_len = config->data.max_seq_len,
                            .seed = config->train.seed, .image_token_id = 0};
    options.lora = (LoraConfig){.r = config->lora.r, .alpha = config->lora.alpha};
    memcpy(options.lora.targets, config->lora.targets, sizeof options.lora.targets);
    if (!(e->tok = tokenizer_bytes(err)) || !clip_config_preset(config->vision.tower_preset, &clip, err) ||
        !hf_read_llama_config(config->model.path, &options.config, err))
        return false;
    options.projector_in = clip.hidden_size;
    options.max_image_rows = clip_n_patches(&clip);
    e->tower = clip_tower_create(e->ops, &clip, 1, err);
    e->model = e->tower ? model_create(&options, err) : NULL;
    if (!e->model || !clip_load_weights(e->tower, config->vision.tower, err) ||
        !hf_load_weights(e->model, config->model.path, err))
        return false;
    char path[1100];
    snprintf(path, sizeof path, "%s/held_out.json", dir);
    ImagePreprocess preprocess = image_preprocess_clip336(IMAGE_FIT_PAD);
    preprocess.size = clip.image_size;
    VlmDatasetOptions data = {.path = path, .images = config->data.images, .tok = e->tok,
                              .max_seq_len = config->data.max_seq_len, .n_image_tokens = clip_n_patches(&clip),
                              .image_token_id = 0, .preprocess = preprocess};
    e->held_out = vlm_dataset_open(&data, err);
    e->features = e->held_out
                      ? e->ops->alloc(e->ops, (size_t)clip_n_patches(&clip) * clip.hidden_size * sizeof(float), err)
                      : NULL;
    e->logits = checked_malloc((size_t)config->data.max_seq_len * options.config.vocab_size * sizeof(float), "logits",
                               err);
    return e->features && e->logits;
}

static void evaluator_close(Evaluator *e) {
    free(e->logits);
    if (e->features) e->ops->free(e->ops, e->features);
    vlm_dataset_destroy(e->held_out);
    if (e->model) model_destroy(e->model);
    clip_tower_destroy(e->tower);
    tokenizer_destroy(e->tok);
}

// Greedy tokens after the sample's prompt (its ids before the first label)
// until <eos>; *correct when they are the labelled answer.
static bool answer_is_correct(Evaluator *e, const Sample *sample, bool *correct, Error *err) {
    const LlamaConfig *c = model_config(e->model);
    int32_t tokens[64];
    int prompt = 0, limit = sample->length < 64 ? sample->length : 64;
    while (prompt < sample->length && sample->labels[prompt] == IGNORE_INDEX) prompt++;
    memcpy(tokens, sample->ids, (size_t)prompt * sizeof(int32_t));
    int n = prompt;
    *correct = true;
    for (int t = prompt; t < limit; t++) {
        Batch batch = {.B = 1, .T = n, .tokens = tokens, .n_image_rows = clip_n_patches(clip_tower_config(e->tower)),
                       .image_features = e->features};
        if (!model_logits(e->model, &batch, e->logits, err)) return false;
        const float *last = e->logits + (size_t)(n - 1) * c->vocab_size;
        int best = 1; // the image token (0) is never an answer
        for (int v = 2; v < c->vocab_size; v++) best = last[v] > last[best] ? v : best;
        if (best != sample->labels[t]) *correct = false;
        if (best != sample->labels[t] || best == c->eos_token_id) return true;
        tokens[n++] = best;
    }
    return true;
}

// Accuracy over the held-out records, overall and per question kind.
static bool held_out_accuracy(Evaluator *e, const DemoSample *samples, DemoAccuracy *accuracy, Error *err) {
    int correct[2] = {0}, asked[2] = {0};
    for (int64_t i = 0; i < vlm_dataset_size(e->held_out); i++) {
        VlmSample sample;
        bool skipped, right = false;
        if (!vlm_dataset_load(e->held_out, i, &sample, &skipped, err)) return false;
        bool ok = skipped || (clip_tower_forward(e->tower, sample.image, 1, e->features, err) &&
                              answer_is_correct(e, &sample.text, &right, err));
        vlm_sample_free(&sample);
        if (!ok) return false;
        int kind = samples[N_TRAIN + i].asks_colour ? 0 : 1;
        asked[kind]++;
        correct[kind] += right;
    }
    accuracy->overall = (double)(correct[0] + correct[1]) / N_HELD_OUT;
    accuracy->colour = asked[0] ? (double)correct[0] / asked[0] : 0;
    accuracy->shape = asked[1] ? (double)correct[1] / asked[1] : 0;
    return true;
}

static void print_accuracy(const char *when, const DemoAccuracy *accuracy) {
    printf("held-out accuracy %s: %.1f%% (colour questions %.1f%%, shape questions %.1f%%)\n", when,
           100 * accuracy->overall, 100 * accuracy->colour, 100 * accuracy->shape);
}

// ----------------------------------------------------------------------------

static bool train_and_evaluate(const char *dir, const Config *config, DemoSample *samples, DemoAccuracy *before,
                               DemoAccuracy *after, Error *err) {
    TrainSummary summary;
    if (!train_run(config, &summary, err)) return false;
    Evaluator e = {0};
    bool ok = evaluator_open(&e, config, dir, err) && held_out_accuracy(&e, samples, before, err);
    if (ok) {
        print_accuracy("before training", before);
        printf("  (counted: greedy answers that spell the right name exactly; an untrained model spells almost none,\n"
               "   where picking one of the names at random would score 25%% colours, 33%% shapes)\n");
    }
    ok = ok && adapter_load(e.model, summary.adapter_dir, err) && held_out_accuracy(&e, samples, after, err);
    if (ok) {
        print_accuracy("after training", after);
        printf("adapter and projector: %s\n", summary.adapter_dir);
    }
    evaluator_close(&e);
    return ok;
}

bool vlm_demo_run(const char *dir, const char *const *settings, int n_settings, DemoAccuracy *before,
                  DemoAccuracy *after, Error *err) {
    DemoAccuracy unused_before, unused_after;
    if (!before) before = &unused_before;
    if (!after) after = &unused_after;
    Config config;
    DemoSample *samples = checked_calloc(N_TRAIN + N_HELD_OUT, sizeof *samples, "demo samples", err);
    if (!samples) return false;
    bool ok = demo_config(dir, settings, n_settings, &config, err) && make_dataset(dir, samples, err) &&
              config_validate(&config, err) &&
              train_and_evaluate(dir, &config, samples, before, after, err);
    free(samples);
    return ok;
}
