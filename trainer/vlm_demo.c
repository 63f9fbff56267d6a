// lora-train demo: a vision-language model learns to name the colour and the
// kind of a shape in a picture. Synthetic pictures (shapes of four colours and
// three kinds on a noisy background) are encoded as PNG and JPEG and decoded
// back, a tiny random CLIP tower (frozen) feeds a projector and a tiny random
// Llama (LoRA), and the projector and LoRA are trained on the CPU. Held-out
// accuracy of greedy answers is printed before and after training.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "optim/optim.h"
#include "trainer.h"
#include "vision/vision.h"

enum {
    IMAGE_SIZE = 32, PATCH = 8, N_PATCHES = (IMAGE_SIZE / PATCH) * (IMAGE_SIZE / PATCH),
    N_TRAIN = 768, N_HELD_OUT = 96, MICRO_BATCH = 16, MAX_SEQ = 34, MAX_ANSWER = 10,
    IMAGE_TOKEN = 0, // the NUL byte: never in the demo's text
};

static const char *const COLOUR_NAMES[] = {"red", "green", "blue", "yellow"};
static const uint8_t COLOURS[][3] = {{220, 40, 40}, {40, 190, 60}, {50, 80, 230}, {235, 215, 40}};
static const char *const KIND_NAMES[] = {"square", "circle", "triangle"};
enum { N_COLOURS = 4, N_KINDS = 3 };

typedef struct DemoSample {
    int colour, kind;
    bool asks_colour;
    float image[3 * IMAGE_SIZE * IMAGE_SIZE]; // CHW, normalised
} DemoSample;

// ----------------------------------------------------------------------------
// pictures

static bool inside(int kind, int x, int y, int cx, int cy, int half) {
    int dx = x - cx, dy = y - cy;
    if (kind == 0) return abs(dx) <= half && abs(dy) <= half;
    if (kind == 1) return dx * dx + dy * dy <= half * half;
    return dy >= -half && dy <= half && 2 * abs(dx) <= dy + half; // apex up
}

static void draw(Image *image, int colour, int kind, Rng *rng) {
    int half = 8 + (int)rng_below(rng, 5);
    int cx = half + 1 + (int)rng_below(rng, (uint64_t)(IMAGE_SIZE - 2 * half - 2));
    int cy = half + 1 + (int)rng_below(rng, (uint64_t)(IMAGE_SIZE - 2 * half - 2));
    for (int y = 0; y < IMAGE_SIZE; y++) {
        for (int x = 0; x < IMAGE_SIZE; x++) {
            uint8_t *px = image->pixels + ((size_t)y * IMAGE_SIZE + x) * 3;
            bool in = inside(kind, x, y, cx, cy, half);
            for (int c = 0; c < 3; c++) px[c] = in ? COLOURS[colour][c] : (uint8_t)(100 + rng_below(rng, 40));
        }
    }
}

// Draws sample i's picture, encodes it (PNG for even i, JPEG for odd), decodes
// it back and preprocesses it into s->image; the encoded bytes go to *encoded.
static bool make_sample(DemoSample *s, int i, Rng *rng, uint8_t **encoded, size_t *encoded_size, Error *err) {
    s->colour = (int)rng_below(rng, N_COLOURS);
    s->kind = (int)rng_below(rng, N_KINDS);
    s->asks_colour = rng_below(rng, 2) == 0;
    Image picture, decoded;
    if (!image_alloc(&picture, IMAGE_SIZE, IMAGE_SIZE, err)) return false;
    draw(&picture, s->colour, s->kind, rng);
    bool ok = i % 2 == 0 ? image_encode_png(&picture, encoded, encoded_size, err)
                         : image_encode_jpeg(&picture, 90, encoded, encoded_size, err);
    image_free(&picture);
    if (!ok || !image_decode_memory(*encoded, *encoded_size, i % 2 ? "demo.jpg" : "demo.png", &decoded, err))
        return false;
    const float half[3] = {0.5f, 0.5f, 0.5f};
    ImagePreprocess preprocess = image_preprocess_square(IMAGE_SIZE, half, half);
    ok = image_preprocess(&decoded, &preprocess, s->image, err);
    image_free(&decoded);
    return ok;
}

static const char *question_of(const DemoSample *s) { return s->asks_colour ? "colour?" : "shape?"; }
static const char *answer_of(const DemoSample *s) {
    return s->asks_colour ? COLOUR_NAMES[s->colour] : KIND_NAMES[s->kind];
}

// <bos> <image> x N_PATCHES question; returns the prompt's length.
static int prompt_tokens(const DemoSample *s, int32_t *tokens, int bos) {
    int n = 0;
    tokens[n++] = bos;
    for (int p = 0; p < N_PATCHES; p++) tokens[n++] = IMAGE_TOKEN;
    for (const char *c = question_of(s); *c; c++) tokens[n++] = (uint8_t)*c;
    return n;
}

// Row b of a (B, MAX_SEQ) batch: prompt, answer, <eos>, padded with <eos>;
// targets are the next token on the answer and its <eos>, -100 elsewhere.
static void training_row(const DemoSample *s, int32_t *tokens, int32_t *targets, int bos, int eos) {
    int n = prompt_tokens(s, tokens, bos), prompt = n;
    for (const char *c = answer_of(s); *c; c++) tokens[n++] = (uint8_t)*c;
    tokens[n++] = eos;
    for (int t = 0; t < MAX_SEQ; t++) {
        if (t >= n) tokens[t] = eos;
        targets[t] = t >= prompt - 1 && t < n - 1 ? tokens[t + 1] : -100;
    }
}

// ----------------------------------------------------------------------------
// the model: frozen tower (its features computed once), projector + LoRA

typedef struct Demo {
    const Ops *ops;
    Model *model;
    AdamW optimizer;
    DemoSample *samples;  // N_TRAIN, then N_HELD_OUT
    float *features;      // (N_TRAIN + N_HELD_OUT, N_PATCHES, D_v): the frozen tower's output
    int vision_hidden;
    float *batch_features; // (MICRO_BATCH * N_PATCHES, D_v)
    float *logits;         // (MAX_SEQ, V)
    float *norm_scratch;
} Demo;

static bool compute_features(Demo *demo, Error *err) {
    ClipVisionConfig clip;
    if (!clip_config_preset("tiny", &clip, err)) return false;
    clip.image_size = IMAGE_SIZE;
    clip.patch_size = PATCH;
    demo->vision_hidden = clip.hidden_size;
    ClipTower *tower = clip_tower_create(demo->ops, &clip, MICRO_BATCH, err);
    if (!tower) return false;
    clip_tower_init_random(tower, 1);
    int total = N_TRAIN + N_HELD_OUT;
    size_t per_image = (size_t)N_PATCHES * clip.hidden_size, pixels = 3 * IMAGE_SIZE * IMAGE_SIZE;
    demo->features = checked_malloc((size_t)total * per_image * sizeof(float), "demo features", err);
    float *images = demo->features ? checked_malloc(MICRO_BATCH * pixels * sizeof(float), "demo images", err) : NULL;
    bool ok = images != NULL;
    for (int start = 0; ok && start < total; start += MICRO_BATCH) {
        int n = total - start < MICRO_BATCH ? total - start : MICRO_BATCH;
        for (int i = 0; i < n; i++) memcpy(images + i * pixels, demo->samples[start + i].image, pixels * sizeof(float));
        ok = clip_tower_forward(tower, images, n, demo->features + (size_t)start * per_image, err);
    }
    free(images);
    clip_tower_destroy(tower);
    return ok;
}

static bool create_model(Demo *demo, Error *err) {
    ModelOptions options = {.ops = demo->ops, .max_batch = MICRO_BATCH, .max_seq_len = MAX_SEQ, .seed = 5,
                            .projector_in = demo->vision_hidden, .image_token_id = IMAGE_TOKEN,
                            .max_image_rows = MICRO_BATCH * N_PATCHES};
    if (!llama_config_preset("demo", &options.config, err)) return false;
    options.lora = (LoraConfig){.r = 8, .alpha = 16};
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = true;
    demo->model = model_create(&options, err);
    if (!demo->model) return false;
    model_init_random_base(demo->model, 2);
    size_t n = model_params(demo->model)->total;
    demo->batch_features = checked_malloc((size_t)MICRO_BATCH * N_PATCHES * demo->vision_hidden * sizeof(float),
                                          "demo batch features", err);
    demo->logits = checked_malloc((size_t)MAX_SEQ * options.config.vocab_size * sizeof(float), "demo logits", err);
    demo->norm_scratch = demo->ops->alloc(sizeof(float), err);
    return demo->batch_features && demo->logits && demo->norm_scratch &&
           adamw_init(&demo->optimizer, demo->ops, n, 0.9f, 0.999f, 1e-8f, 0.0f, err);
}

static const float *features_of(const Demo *demo, int sample) {
    return demo->features + (size_t)sample * N_PATCHES * demo->vision_hidden;
}

// ----------------------------------------------------------------------------
// evaluation: greedy answers on the held-out pictures

static bool greedy_answer(Demo *demo, int sample, char *answer, Error *err) {
    const LlamaConfig *c = model_config(demo->model);
    int32_t tokens[MAX_SEQ];
    int n = prompt_tokens(&demo->samples[sample], tokens, c->bos_token_id), length = 0;
    while (length < MAX_ANSWER && n < MAX_SEQ) {
        Batch batch = {.B = 1, .T = n, .tokens = tokens, .n_image_rows = N_PATCHES,
                       .image_features = features_of(demo, sample)};
        if (!model_logits(demo->model, &batch, demo->logits, err)) return false;
        const float *last = demo->logits + (size_t)(n - 1) * c->vocab_size;
        int best = IMAGE_TOKEN + 1; // the image token is never an answer
        for (int v = best + 1; v < c->vocab_size; v++) best = last[v] > last[best] ? v : best;
        if (best == c->eos_token_id) break;
        tokens[n++] = best;
        answer[length++] = best > 0 && best < 256 ? (char)best : '?';
    }
    answer[length] = '\0';
    return true;
}

static bool held_out_accuracy(Demo *demo, double *accuracy, Error *err) {
    int correct = 0;
    for (int i = N_TRAIN; i < N_TRAIN + N_HELD_OUT; i++) {
        char answer[MAX_ANSWER + 1];
        if (!greedy_answer(demo, i, answer, err)) return false;
        correct += strcmp(answer, answer_of(&demo->samples[i])) == 0;
    }
    *accuracy = (double)correct / N_HELD_OUT;
    return true;
}

// ----------------------------------------------------------------------------
// training

static bool train_step(Demo *demo, int step, int total_steps, Rng *rng, double *loss, Error *err) {
    const LlamaConfig *c = model_config(demo->model);
    int32_t tokens[MICRO_BATCH * MAX_SEQ], targets[MICRO_BATCH * MAX_SEQ];
    size_t per_image = (size_t)N_PATCHES * demo->vision_hidden;
    int n_labels = 0;
    for (int b = 0; b < MICRO_BATCH; b++) {
        int sample = (int)rng_below(rng, N_TRAIN);
        training_row(&demo->samples[sample], tokens + b * MAX_SEQ, targets + b * MAX_SEQ, c->bos_token_id,
                     c->eos_token_id);
        memcpy(demo->batch_features + b * per_image, features_of(demo, sample), per_image * sizeof(float));
        for (int t = 0; t < MAX_SEQ; t++) n_labels += targets[b * MAX_SEQ + t] != -100;
    }
    Batch batch = {.B = MICRO_BATCH, .T = MAX_SEQ, .tokens = tokens, .targets = targets,
                   .n_image_rows = MICRO_BATCH * N_PATCHES, .image_features = demo->batch_features};
    StepOptions options = {.grad_scale = 1.0f / (float)n_labels, .train = true,
                           .dropout_seed = rng_hash(7, (uint64_t)step)};
    model_zero_grads(demo->model);
    if (!model_step(demo->model, &batch, &options, loss, err)) return false;
    *loss /= n_labels;
    size_t n = model_params(demo->model)->total;
    float *grads = model_grad_data(demo->model);
    clip_grads(demo->ops, grads, n, grad_norm(demo->ops, grads, n, demo->norm_scratch), 1.0f);
    LrSchedule schedule = {SCHEDULE_COSINE, 5e-3f, total_steps / 20, total_steps, 0.0f};
    adamw_step(&demo->optimizer, model_param_data(demo->model), grads, lr_at_step(&schedule, step));
    model_sync_params(demo->model);
    return true;
}

// ----------------------------------------------------------------------------
// the dataset on disk: images/NNNNN.{png,jpg} and records.json (LLaVA records)

static bool write_bytes(const char *path, const uint8_t *data, size_t size, Error *err) {
    FILE *f = fopen(path, "wb");
    if (!f) return fail(err, "%s: cannot create", path);
    bool ok = fwrite(data, 1, size, f) == size;
    ok = fclose(f) == 0 && ok;
    return ok || fail(err, "%s: write failed", path);
}

static bool write_record(FILE *records, const DemoSample *s, int i, const char *image_name) {
    return fprintf(records,
                   "%s{\"id\": \"%05d\", \"image\": \"%s\", \"conversations\": ["
                   "{\"from\": \"human\", \"value\": \"<image>\\n%s\"}, {\"from\": \"gpt\", \"value\": \"%s\"}]}",
                   i ? ",\n" : "[\n", i, image_name, question_of(s), answer_of(s)) > 0;
}

static bool make_dataset(Demo *demo, const char *dir, Error *err) {
    char path[1024], images_dir[1024];
    snprintf(images_dir, sizeof images_dir, "%s/images", dir);
    snprintf(path, sizeof path, "%s/records.json", dir);
    if (!make_dirs(images_dir, err)) return false;
    FILE *records = fopen(path, "w");
    if (!records) return fail(err, "%s: cannot create", path);
    int total = N_TRAIN + N_HELD_OUT;
    demo->samples = checked_calloc((size_t)total, sizeof(DemoSample), "demo samples", err);
    Rng rng;
    rng_seed(&rng, 2024);
    bool ok = demo->samples != NULL;
    for (int i = 0; ok && i < total; i++) {
        uint8_t *encoded = NULL;
        size_t size = 0;
        char name[64], file[1200];
        snprintf(name, sizeof name, "images/%05d.%s", i, i % 2 ? "jpg" : "png");
        snprintf(file, sizeof file, "%s/%s", dir, name);
        ok = make_sample(&demo->samples[i], i, &rng, &encoded, &size, err) && write_bytes(file, encoded, size, err);
        ok = ok && (write_record(records, &demo->samples[i], i, name) || fail(err, "%s: write failed", path));
        free(encoded);
    }
    ok = fprintf(records, "\n]\n") > 0 && ok;
    return (fclose(records) == 0 && ok) || fail(err, "%s: write failed", path);
}

// ----------------------------------------------------------------------------

static void demo_destroy(Demo *demo) {
    if (demo->model) model_destroy(demo->model);
    adamw_destroy(&demo->optimizer);
    if (demo->norm_scratch) demo->ops->free(demo->norm_scratch);
    free(demo->samples);
    free(demo->features);
    free(demo->batch_features);
    free(demo->logits);
}

static bool train_demo(Demo *demo, Error *err) {
    enum { STEPS = 300 };
    Rng rng;
    rng_seed(&rng, 99);
    double start = time_seconds(), loss = 0;
    for (int step = 0; step < STEPS; step++) {
        if (!train_step(demo, step, STEPS, &rng, &loss, err)) return false;
        if (step % 50 == 0 || step == STEPS - 1)
            printf("step %3d/%d  loss %.4f  %.1fs\n", step + 1, STEPS, loss, time_seconds() - start);
    }
    return true;
}

bool vlm_demo_run(const char *dir, Error *err) {
    Demo demo = {.ops = ops_cpu()};
    double before = 0, after = 0;
    char adapter_dir[1024];
    snprintf(adapter_dir, sizeof adapter_dir, "%s/adapter", dir);
    printf("writing %d pictures (PNG and JPEG) and their LLaVA records to %s\n", N_TRAIN + N_HELD_OUT, dir);
    bool ok = make_dataset(&demo, dir, err) && compute_features(&demo, err) && create_model(&demo, err) &&
              held_out_accuracy(&demo, &before, err);
    if (ok) {
        printf("held-out accuracy before training: %.1f%% (chance: 25%% colours, 33%% shapes)\n", 100 * before);
        ok = train_demo(&demo, err) && held_out_accuracy(&demo, &after, err);
    }
    if (ok) {
        printf("held-out accuracy after training:  %.1f%%\n", 100 * after);
        AdapterInfo info = {.base_model_name_or_path = "demo"};
        ok = adapter_save(demo.model, &info, adapter_dir, err);
    }
    if (ok) printf("adapter and projector: %s\n", adapter_dir);
    demo_destroy(&demo);
    return ok;
}
