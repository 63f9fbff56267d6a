// lora-train demo --vla: a vision-language-action model learns to steer a
// robot arm's tip to the object an instruction names. A synthetic 4 x 4 grid
// world is drawn in C (the tip and an object of one of four colours and three
// shapes), episodes of steps "move to the red circle" -> a 7-D action
// (dx, dy, 0, 0, 0, 0, gripper: one cell a step, the gripper closing on
// arrival) are written as a genuine RLDS dataset (data/rlds_write.c), and
// train_run trains LoRA + projector on them as OpenVLA data (RobotLoader:
// 256-bin action tokens, the OpenVLA prompt). Held-out action-token accuracy and
// L1 (OpenVLA's finetune.py metrics) are printed before and after.
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "data/rlds.h"
#include "trainer.h"
#include "vision/vision.h"

enum { GRID = 4, CELL = 8, PICTURE = GRID * CELL, ACTION_DIM = 7, N_TRAIN = 500, N_HELD_OUT = 40, MAX_STEPS = GRID };

// ----------------------------------------------------------------------------
// the model: the one place that chooses the demo's, VLA_DEMO_MODEL, of two shapes, both at 16 x 16 pixels in
// 4 x 4 patches (one patch per grid cell) over a tiny Llama, written with random weights:
// VLA_MODEL_LLAVA: a CLIP-layout tower, the trainable mlp2x_gelu projector, LoRA on the decoder;
// VLA_MODEL_OPENVLA: an OpenVLA folder (hf_save_openvla), two timm towers of test_openvla's fixture shapes
// (DINOv2-like with class and register tokens, SigLIP-like) side by side into the frozen 3-layer projector,
// PEFT's all-linear adapters on all of it. The demo trains the OpenVLA-shaped one: held-out action tokens
// 0% -> 89.8% in its 200 steps (9 s on 2 idle cores; 88.8% before openvla-7b's bfloat16-rounded DINOv2
// mean / std) against 82.5% for a model blind to the picture; it reads the picture later than the
// LLaVA-shaped one (at 80 steps it is still at the blind 82.5%, the LLaVA-shaped one at 87.3%).

static const VlaModelShape VLA_DEMO_MODEL = VLA_MODEL_OPENVLA;
static const char *const VLA_MODEL[2][3] = {
    [VLA_MODEL_LLAVA] = {"model.create_if_missing=demo", // the tower below is written with random weights
                         "vision.tower_preset=tiny", "data.image_tokens=16"},
    [VLA_MODEL_OPENVLA] = {"data.image_tokens=16", "lora.target=all-linear", "lora.init=gaussian"}, // finetune.py's
};
static const char *const VLA_LLAMA_PRESET = "demo"; // its shape; the vocabulary is the demo tokenizer's
enum { VLA_IMAGE = 16, VLA_PATCH = 4 };
static const int VLA_TOWER_WIDTH[2] = {32, 24}, VLA_TOWER_MLP[2] = {128, 89}, VLA_TOWER_DEPTH[2] = {3, 4};

// The training recipe over it (--set applies after these).
static const char *const VLA_RECIPE[] = {
    "data.format=rlds", "data.max_seq_len=48", "data.shuffle_buffer=256", "lora.r=8", "lora.alpha=16",
    "lora.dropout=0", "lora.target=all", "train.micro_batch=16", "train.max_steps=200", "train.lr=5e-3",
    "train.schedule=cosine", "train.warmup=15", "train.weight_decay=0", "train.max_grad_norm=1", "train.seed=5",
    "train.log_every=50", "train.backend=cpu", "train.eval_every=0", "checkpoint.every_steps=0"};

static const char *const COLOUR_NAMES[] = {"red", "green", "blue", "yellow"};
static const uint8_t COLOURS[][3] = {{220, 40, 40}, {40, 190, 60}, {50, 80, 230}, {235, 215, 40}};
static const char *const KIND_NAMES[] = {"square", "circle", "triangle"};
enum { N_COLOURS = 4, N_KINDS = 3 };

// ----------------------------------------------------------------------------
// the tokenizer: a small Llama-2-style tokenizer.json (SentencePiece BPE with
// byte fallback, as openvla-7b's) whose last 256 tokens are single characters,
// so OpenVLA's action tokens (the vocabulary's last 256 ids) decode to text and
// tokenize back to themselves; the prompt's words are whole tokens.

#define SPACE "\xe2\x96\x81" // U+2581, SentencePiece's space
#define ACTION_CHAR_FIRST 0x4e00 // CJK ideographs: one character, one token

static const char *const WORDS[] = {"In", "What", "action", "should", "the", "robot", "take", "to", "move", "red",
                                    "green", "blue", "yellow", "square", "circle", "triangle", NULL};

static void add_token(json_object *vocab, const char *token, int *n) {
    if (json_object_object_get_ex(vocab, token, NULL)) return;
    json_object_object_add(vocab, token, json_object_new_int((*n)++));
}

// "▁w", "▁wo", ... as tokens, each from the one before and a character (merges "▁ w", "▁w o", ...).
static void add_word(json_object *vocab, json_object *merges, json_object *seen, const char *word, int *n) {
    char prefix[64] = SPACE, merge[80];
    for (size_t i = 0, length = strlen(prefix); word[i] && length + 1 < sizeof prefix; i++, length++) {
        snprintf(merge, sizeof merge, "%s %c", prefix, word[i]);
        prefix[length] = word[i];
        prefix[length + 1] = '\0';
        if (json_object_object_get_ex(seen, merge, NULL)) continue;
        json_object_object_add(seen, merge, NULL);
        json_object_array_add(merges, json_object_new_string(merge));
        add_token(vocab, prefix, n);
    }
}

static json_object *special_token(int id, const char *content) {
    json_object *token = json_object_new_object();
    json_object_object_add(token, "id", json_object_new_int(id));
    json_object_object_add(token, "content", json_object_new_string(content));
    json_object_object_add(token, "single_word", json_object_new_boolean(0));
    json_object_object_add(token, "lstrip", json_object_new_boolean(0));
    json_object_object_add(token, "rstrip", json_object_new_boolean(0));
    json_object_object_add(token, "normalized", json_object_new_boolean(0));
    json_object_object_add(token, "special", json_object_new_boolean(1));
    return token;
}

static json_object *typed(const char *type) {
    json_object *object = json_object_new_object();
    json_object_object_add(object, "type", json_object_new_string(type));
    return object;
}

static json_object *replace(const char *from, const char *to) {
    json_object *object = typed("Replace"), *pattern = json_object_new_object();
    json_object_object_add(pattern, "String", json_object_new_string(from));
    json_object_object_add(object, "pattern", pattern);
    json_object_object_add(object, "content", json_object_new_string(to));
    return object;
}

static json_object *sequence(const char *key, json_object *a, json_object *b, json_object *c, json_object *d) {
    json_object *object = typed("Sequence"), *list = json_object_new_array();
    json_object *items[] = {a, b, c, d};
    for (int i = 0; i < 4; i++)
        if (items[i]) json_object_array_add(list, items[i]);
    json_object_object_add(object, key, list);
    return object;
}

// {"SpecialToken": {"id": "<s>", "type_id": t}} or {"Sequence": {"id": "A", "type_id": t}}.
static json_object *template_piece(const char *kind, const char *id, int type_id) {
    json_object *piece = json_object_new_object(), *spec = json_object_new_object();
    json_object_object_add(spec, "id", json_object_new_string(id));
    json_object_object_add(spec, "type_id", json_object_new_int(type_id));
    json_object_object_add(piece, kind, spec);
    return piece;
}

// Llama 2's post-processor: BOS before each sequence.
static json_object *bos_template(void) {
    json_object *post = typed("TemplateProcessing"), *single = json_object_new_array(), *pair = json_object_new_array();
    json_object_array_add(single, template_piece("SpecialToken", "<s>", 0));
    json_object_array_add(single, template_piece("Sequence", "A", 0));
    json_object_array_add(pair, template_piece("SpecialToken", "<s>", 0));
    json_object_array_add(pair, template_piece("Sequence", "A", 0));
    json_object_array_add(pair, template_piece("SpecialToken", "<s>", 1));
    json_object_array_add(pair, template_piece("Sequence", "B", 1));
    json_object *specials = json_object_new_object(), *entry = json_object_new_object(), *ids = json_object_new_array();
    json_object *tokens = json_object_new_array();
    json_object_array_add(ids, json_object_new_int(1));
    json_object_array_add(tokens, json_object_new_string("<s>"));
    json_object_object_add(entry, "id", json_object_new_string("<s>"));
    json_object_object_add(entry, "ids", ids);
    json_object_object_add(entry, "tokens", tokens);
    json_object_object_add(specials, "<s>", entry);
    json_object_object_add(post, "single", single);
    json_object_object_add(post, "pair", pair);
    json_object_object_add(post, "special_tokens", specials);
    return post;
}

// Llama 2's normalizer (prepend ▁, spaces as ▁), post-processor and decoder.
static void add_pipeline(json_object *root) {
    json_object *prepend = typed("Prepend"), *strip = typed("Strip");
    json_object_object_add(prepend, "prepend", json_object_new_string(SPACE));
    json_object_object_add(root, "normalizer", sequence("normalizers", prepend, replace(" ", SPACE), NULL, NULL));
    json_object_object_add(root, "pre_tokenizer", NULL);
    json_object_object_add(root, "post_processor", bos_template());
    json_object_object_add(strip, "content", json_object_new_string(" "));
    json_object_object_add(strip, "start", json_object_new_int(1));
    json_object_object_add(strip, "stop", json_object_new_int(0));
    json_object_object_add(root, "decoder", sequence("decoders", replace(SPACE, " "), typed("ByteFallback"),
                                                     typed("Fuse"), strip));
}

// Writes dir/tokenizer.json; *vocab_size receives its vocabulary's size.
static bool write_tokenizer(const char *dir, int *vocab_size, Error *err) {
    json_object *root = json_object_new_object(), *model = typed("BPE"), *vocab = json_object_new_object();
    json_object *merges = json_object_new_array(), *seen = json_object_new_object(), *added = json_object_new_array();
    int n = 0;
    static const char *const SPECIALS[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++) {
        json_object_array_add(added, special_token(n, SPECIALS[i]));
        add_token(vocab, SPECIALS[i], &n);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        add_token(vocab, name, &n);
    }
    add_token(vocab, SPACE, &n);
    for (char c = '!'; c <= '~'; c++) add_token(vocab, (char[]){c, '\0'}, &n);
    for (int i = 0; WORDS[i]; i++) add_word(vocab, merges, seen, WORDS[i], &n);
    for (int i = 0; i < ACTION_BINS; i++) {
        int code = ACTION_CHAR_FIRST + i; // 3 bytes of UTF-8
        char text[4] = {(char)(0xe0 | code >> 12), (char)(0x80 | (code >> 6 & 0x3f)), (char)(0x80 | (code & 0x3f)), 0};
        add_token(vocab, text, &n);
    }
    json_object_put(seen);
    json_object_object_add(model, "unk_token", json_object_new_string("<unk>"));
    json_object_object_add(model, "fuse_unk", json_object_new_boolean(1));
    json_object_object_add(model, "byte_fallback", json_object_new_boolean(1));
    json_object_object_add(model, "vocab", vocab);
    json_object_object_add(model, "merges", merges);
    json_object_object_add(root, "version", json_object_new_string("1.0"));
    json_object_object_add(root, "added_tokens", added);
    add_pipeline(root);
    json_object_object_add(root, "model", model);
    char path[1100];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    bool ok = json_object_to_file_ext(path, root, JSON_C_TO_STRING_PLAIN) == 0;
    json_object_put(root);
    *vocab_size = n;
    return ok || fail(err, "%s: cannot write: %s", path, json_util_get_last_err());
}

// The towers: OpenVLA's presets at the demo's sizes.
static bool demo_towers(ClipVisionConfig towers[2], Error *err) {
    if (!clip_config_preset("dinov2-vit-l14-reg4", &towers[0], err) ||
        !clip_config_preset("siglip-so400m-14", &towers[1], err))
        return false;
    for (int k = 0; k < 2; k++) {
        ClipVisionConfig *c = &towers[k];
        c->hidden_size = VLA_TOWER_WIDTH[k], c->intermediate_size = VLA_TOWER_MLP[k], c->n_layers = VLA_TOWER_DEPTH[k];
        c->n_heads = 4, c->image_size = VLA_IMAGE, c->patch_size = VLA_PATCH;
    }
    return true;
}

// The LLaVA-shaped model's Llama (its tower is written by the run, model.create_if_missing).
static bool write_llava_model(const char *dir, const LlamaConfig *config, int vocab, uint64_t seed, Error *err) {
    ModelOptions options = {.ops = ops_cpu(), .config = *config, .max_batch = 1, .max_seq_len = 1,
                            .lora = {.r = 1, .alpha = 1}, .seed = seed};
    Model *model = model_create(&options, err);
    if (!model) return false;
    printf("creating a random '%s'-shaped Llama with a %d-token vocabulary in %s\n", VLA_LLAMA_PRESET, vocab, dir);
    bool ok = model_init_random_base(model, seed, err) && hf_save_model_as(model, dir, DTYPE_F32, err);
    model_destroy(model);
    return ok;
}

// The OpenVLA-shaped folder: the Llama, the projector and both towers.
static bool write_openvla_model(const char *dir, const LlamaConfig *config, int vocab, uint64_t seed, Error *err) {
    ClipVisionConfig towers[2];
    if (!demo_towers(towers, err)) return false;
    ModelOptions options = {.ops = ops_cpu(), .config = *config, .max_batch = 1, .max_seq_len = 1,
                            .lora = {.r = 1, .alpha = 1}, .seed = seed, .projector_kind = PROJECTOR_OPENVLA,
                            .projector_in = VLA_TOWER_WIDTH[0] + VLA_TOWER_WIDTH[1], .image_token_id = vocab,
                            .max_image_rows = 1};
    Model *model = model_create(&options, err);
    FusedFeaturizer *featurizer = model ? fused_featurizer_create(ops_cpu(), towers, 1, err) : NULL;
    bool ok = featurizer != NULL;
    if (ok) printf("creating a random OpenVLA-shaped model ('%s'-shaped Llama, %d-token vocabulary) in %s\n",
                   VLA_LLAMA_PRESET, vocab, dir);
    for (int k = 0; ok && k < 2; k++)
        clip_tower_init_random(fused_featurizer_tower(featurizer, k), seed ^ (0xc11bULL + (uint64_t)k));
    ok = ok && model_init_random_base(model, seed, err) && hf_save_openvla(model, featurizer, dir, err);
    fused_featurizer_destroy(featurizer);
    model_destroy(model);
    return ok;
}

// dir/: a random model of shape, the Llama of VLA_LLAMA_PRESET's shape over the demo tokenizer (its
// vocabulary and one more id, the image token or placeholder), unless already there.
static bool write_model(const char *dir, VlaModelShape shape, uint64_t seed, Error *err) {
    char path[1100];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (path_exists(path)) return true;
    LlamaConfig config;
    int vocab;
    if (!make_dirs(dir, err) || !write_tokenizer(dir, &vocab, err) ||
        !llama_config_preset(VLA_LLAMA_PRESET, &config, err))
        return false;
    config.vocab_size = vocab + 1;
    config.bos_token_id = 1;
    config.eos_token_id = 2;
    return shape == VLA_MODEL_LLAVA ? write_llava_model(dir, &config, vocab, seed, err)
                                    : write_openvla_model(dir, &config, vocab, seed, err);
}

// ----------------------------------------------------------------------------
// the world: a 4 x 4 grid of 8-pixel cells; the tip moves one cell a step
// (diagonals too) towards the target and closes the gripper on arrival

typedef struct Scene {
    int target_x, target_y, target_colour, target_kind;
    int tip_x, tip_y;
} Scene;

static bool inside(int kind, int dx, int dy, int half) {
    if (kind == 0) return abs(dx) <= half && abs(dy) <= half;
    if (kind == 1) return dx * dx + dy * dy <= half * half + 1;
    return dy >= -half && dy <= half && 2 * abs(dx) <= dy + half; // apex up
}

static void draw_object(Image *image, int cell_x, int cell_y, int colour, int kind) {
    for (int y = 0; y < CELL; y++) {
        for (int x = 0; x < CELL; x++) {
            if (!inside(kind, 2 * x - (CELL - 1), 2 * y - (CELL - 1), CELL - 2)) continue;
            uint8_t *px = image->pixels + ((size_t)(cell_y * CELL + y) * PICTURE + cell_x * CELL + x) * 3;
            memcpy(px, COLOURS[colour], 3);
        }
    }
}

// The scene on a noisy grey floor; the tip a black dot in its cell's centre. (A
// distractor of another colour makes the task one of reading the instruction
// too; the tiny model then gains far less over an image-blind one in a minute.)
static void draw_scene(const Scene *s, Image *image, Rng *rng) {
    for (size_t i = 0; i < (size_t)PICTURE * PICTURE * 3; i++) image->pixels[i] = (uint8_t)(120 + rng_below(rng, 30));
    draw_object(image, s->target_x, s->target_y, s->target_colour, s->target_kind);
    for (int y = CELL / 2 - 2; y < CELL / 2 + 2; y++)
        for (int x = CELL / 2 - 2; x < CELL / 2 + 2; x++)
            memset(image->pixels + ((size_t)(s->tip_y * CELL + y) * PICTURE + s->tip_x * CELL + x) * 3, 10, 3);
}

static int sign(int v) { return (v > 0) - (v < 0); }

static Scene random_scene(Rng *rng) {
    Scene s = {.target_colour = (int)rng_below(rng, N_COLOURS), .target_kind = (int)rng_below(rng, N_KINDS)};
    int cells = GRID * GRID, target = (int)rng_below(rng, cells);
    int tip = (target + 1 + (int)rng_below(rng, cells - 1)) % cells; // another cell
    s.target_x = target % GRID, s.target_y = target / GRID;
    s.tip_x = tip % GRID, s.tip_y = tip / GRID;
    return s;
}

// ----------------------------------------------------------------------------
// episodes as RLDS

// One episode into the writer: a step per cell on the way, the last at the target with the gripper closing.
static bool write_episode(RldsWriter *writer, Rng *rng, Image *picture, Error *err) {
    Scene s = random_scene(rng);
    char instruction[64];
    snprintf(instruction, sizeof instruction, "move to the %s %s", COLOUR_NAMES[s.target_colour],
             KIND_NAMES[s.target_kind]);
    RldsStep steps[MAX_STEPS];
    uint8_t *encoded[MAX_STEPS] = {0};
    int n = 0;
    bool ok = true;
    for (bool arrived = false; ok && !arrived; n++) {
        int dx = sign(s.target_x - s.tip_x), dy = sign(s.target_y - s.tip_y);
        arrived = dx == 0 && dy == 0;
        draw_scene(&s, picture, rng);
        steps[n] = (RldsStep){.instruction = instruction, .action = {(float)dx, (float)dy, 0, 0, 0, 0, 0},
                              .reward = arrived, .discount = 1, .is_first = n == 0, .is_last = arrived,
                              .is_terminal = arrived};
        steps[n].action[ACTION_DIM - 1] = arrived ? 1.0f : -1.0f; // the gripper closes on arrival
        ok = image_encode_png(picture, &encoded[n], &steps[n].image_size, err);
        steps[n].image = encoded[n];
        s.tip_x += dx, s.tip_y += dy;
    }
    ok = ok && rlds_write_episode(writer, steps, n, err);
    for (int i = 0; i < n; i++) free(encoded[i]);
    return ok;
}

static bool write_rlds(const char *dir, int n_episodes, uint64_t seed, Error *err) {
    RldsWriterOptions options = {.dir = dir, .name = "vla_demo", .image_width = PICTURE, .image_height = PICTURE,
                                 .action_dim = ACTION_DIM, .episodes_per_shard = 256};
    RldsWriter *writer = rlds_writer_open(&options, err);
    Image picture;
    if (!writer || !image_alloc(&picture, PICTURE, PICTURE, err)) {
        rlds_writer_abort(writer);
        return false;
    }
    Rng rng;
    rng_seed(&rng, seed);
    bool ok = true;
    for (int e = 0; ok && e < n_episodes; e++) ok = write_episode(writer, &rng, &picture, err);
    image_free(&picture);
    if (!ok) {
        rlds_writer_abort(writer);
        return false;
    }
    return rlds_writer_close(writer, err);
}

// ----------------------------------------------------------------------------
// the run

static bool set_all(Config *config, const char *const *assignments, int n, Error *err) {
    for (int i = 0; i < n; i++) {
        if (!config_set(config, assignments[i], err)) return false;
    }
    return true;
}

static bool vla_config(const char *dir, VlaModelShape shape, const char *const *settings, int n_settings,
                       Config *config, Error *err) {
    config_defaults(config);
    snprintf(config->model.path, CONFIG_PATH_MAX, "%s/model", dir);
    snprintf(config->data.path, CONFIG_PATH_MAX, "%s/rlds/vla_demo", dir);
    snprintf(config->data.eval_path, CONFIG_PATH_MAX, "%s/rlds_held_out/vla_demo", dir);
    if (shape == VLA_MODEL_LLAVA) snprintf(config->vision.tower, CONFIG_PATH_MAX, "%s/tower.safetensors", dir);
    snprintf(config->checkpoint.dir, CONFIG_PATH_MAX, "%s/out", dir);
    return set_all(config, VLA_RECIPE, (int)(sizeof VLA_RECIPE / sizeof *VLA_RECIPE), err) &&
           set_all(config, VLA_MODEL[shape], 3, err) &&
           (set_all(config, settings, n_settings, err) || fail_context(err, "--set: "));
}

static bool make_data(const char *dir, const Config *config, Error *err) {
    char train[1100], held_out[1100];
    snprintf(train, sizeof train, "%s/1.0.0", config->data.path);
    snprintf(held_out, sizeof held_out, "%s/1.0.0", config->data.eval_path);
    printf("writing %d training and %d held-out episodes of a %dx%d grid world as RLDS in %s/rlds*\n", N_TRAIN,
           N_HELD_OUT, GRID, GRID, dir);
    return remove_tree(train, err) && remove_tree(held_out, err) && write_rlds(train, N_TRAIN, 2024, err) &&
           write_rlds(held_out, N_HELD_OUT, 4048, err);
}

// ----------------------------------------------------------------------------
// the image-blind reference: each dimension's most common training token,
// whatever the picture and instruction (what learning the constant dimensions
// and the usual moves alone scores)

// Step i's action tokens, normalised with the training statistics.
static void step_tokens(const RobotDataset *d, int64_t i, const ActionStats *stats, const ActionTokenizer *tok,
                        int32_t *tokens) {
    float normalized[ACTION_DIM];
    action_normalize(stats, robot_dataset_step(d, i).action, normalized);
    for (int k = 0; k < ACTION_DIM; k++) tokens[k] = action_token_id(tok, normalized[k]);
}

// The most common token of each dimension over the training steps.
static void most_common_tokens(const RobotDataset *train, const ActionStats *stats, const ActionTokenizer *tok,
                               int32_t *mode) {
    int64_t counts[ACTION_DIM][ACTION_BINS] = {{0}};
    int32_t tokens[ACTION_DIM];
    for (int64_t i = 0; i < robot_dataset_size(train); i++) {
        step_tokens(train, i, stats, tok, tokens);
        for (int k = 0; k < ACTION_DIM; k++) counts[k][tok->vocab_size - 1 - tokens[k]]++;
    }
    for (int k = 0; k < ACTION_DIM; k++) {
        int best = 0;
        for (int b = 1; b < ACTION_BINS; b++) best = counts[k][b] > counts[k][best] ? b : best;
        mode[k] = tok->vocab_size - 1 - best;
    }
}

static bool blind_reference(const Config *config, double *accuracy, double *l1, Error *err) {
    RobotDataOptions options = {.path = config->data.path};
    RobotDataset *train = robot_dataset_open(&options, err), *held_out = NULL;
    options.path = config->data.eval_path;
    ActionStats stats;
    Tokenizer *tok = train ? tokenizer_load(config->model.path, err) : NULL;
    bool ok = tok && robot_dataset_action_stats(train, NULL, &stats, err) &&
              (held_out = robot_dataset_open(&options, err)) != NULL;
    if (ok) {
        ActionTokenizer action_tokenizer;
        action_tokenizer_init(&action_tokenizer, tokenizer_base_vocab_size(tok));
        int32_t mode[ACTION_DIM], tokens[ACTION_DIM];
        most_common_tokens(train, &stats, &action_tokenizer, mode);
        ActionMetricSums sums = {0};
        for (int64_t i = 0; i < robot_dataset_size(held_out); i++) {
            step_tokens(held_out, i, &stats, &action_tokenizer, tokens);
            action_metrics_add(&action_tokenizer, mode, tokens, ACTION_DIM, &sums);
        }
        *accuracy = (double)sums.n_correct / (double)sums.n_action_tokens;
        *l1 = sums.l1_sum / (double)sums.n_action_tokens;
    }
    tokenizer_destroy(tok);
    robot_dataset_destroy(held_out);
    robot_dataset_destroy(train);
    return ok;
}

// ----------------------------------------------------------------------------

bool vla_demo_prepare(const char *dir, VlaModelShape shape, const char *const *settings, int n_settings,
                      Config *config, Error *err) {
    return vla_config(dir, shape, settings, n_settings, config, err) &&
           write_model(config->model.path, shape, config->train.seed, err) && make_data(dir, config, err) &&
           config_validate(config, err);
}

bool vla_demo_run(const char *dir, const char *const *settings, int n_settings, VlaDemoResult *result, Error *err) {
    VlaDemoResult unused;
    if (!result) result = &unused;
    Config config;
    TrainSummary summary;
    TrainControl control = {.eval_before = true};
    double start = time_seconds();
    if (!vla_demo_prepare(dir, VLA_DEMO_MODEL, settings, n_settings, &config, err) ||
        !train_run_with(&config, &control, &summary, err) ||
        !blind_reference(&config, &result->accuracy_blind, &result->l1_blind, err))
        return false;
    *result = (VlaDemoResult){.accuracy_before = summary.before_eval_action_accuracy,
                              .l1_before = summary.before_eval_action_l1,
                              .accuracy_after = summary.eval_action_accuracy, .l1_after = summary.eval_action_l1,
                              .accuracy_blind = result->accuracy_blind, .l1_blind = result->l1_blind,
                              .seconds = time_seconds() - start};
    printf("held-out action tokens (%d episodes): accuracy %.1f%% -> %.1f%% (chance: 1 bin in 256, 0.4%%), "
           "L1 %.3f -> %.3f (normalised actions in [-1, 1])\n", N_HELD_OUT, 100 * result->accuracy_before,
           100 * result->accuracy_after, result->l1_before, result->l1_after);
    printf("  ignoring the picture and the instruction (each dimension's most common training token): accuracy %.1f%%, "
           "L1 %.3f\n", 100 * result->accuracy_blind, result->l1_blind);
    printf("RLDS data: %s (tensorflow-datasets reads it: scripts/check_rlds_folder.py %s/1.0.0)\n", config.data.path,
           config.data.path);
    printf("adapter, projector and dataset_statistics.json: %s (%.0f s in all)\n", summary.adapter_dir,
           result->seconds);
    return true;
}
