// model configuration: LoRA targets and scale, validation, named presets.
#include <math.h>
#include <string.h>

#include "model.h"

const char *const LORA_TARGET_NAMES[LORA_TARGET_COUNT] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
};

bool lora_target_from_name(const char *name, LoraTarget *out) {
    static const char *const SHORT_NAMES[LORA_TARGET_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};
    for (int t = 0; t < LORA_TARGET_COUNT; t++) {
        if (strcmp(name, LORA_TARGET_NAMES[t]) == 0 || strcmp(name, SHORT_NAMES[t]) == 0) {
            *out = (LoraTarget)t;
            return true;
        }
    }
    return false;
}

float lora_scale(const LoraConfig *lora) {
    return lora->rslora ? lora->alpha / sqrtf((float)lora->r) : lora->alpha / (float)lora->r;
}

bool llama_config_validate(const LlamaConfig *c, Error *err) {
    if (c->vocab_size < 1 || c->hidden_size < 1 || c->intermediate_size < 1 || c->n_layers < 1)
        return fail(err, "model config: vocab_size, hidden_size, intermediate_size and num_hidden_layers must be positive");
    if (c->n_heads < 1 || c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads != 0)
        return fail(err, "model config: num_attention_heads (%d) must be a positive multiple of num_key_value_heads (%d)",
                    c->n_heads, c->n_kv_heads);
    if (c->head_dim < 2 || c->head_dim % 2 != 0)
        return fail(err, "model config: head_dim (%d) must be even and at least 2", c->head_dim);
    if (!(c->rms_eps > 0) || !(c->rope_theta > 0))
        return fail(err, "model config: rms_norm_eps and rope_theta must be positive");
    if (c->rope_scaling.llama3 && !(c->rope_scaling.factor > 0 && c->rope_scaling.low_freq_factor > 0 &&
                                    c->rope_scaling.high_freq_factor > c->rope_scaling.low_freq_factor &&
                                    c->rope_scaling.original_max_position > 0))
        return fail(err, "model config: rope_scaling llama3 needs factor > 0, high_freq_factor > low_freq_factor > 0 "
                         "and original_max_position_embeddings > 0");
    return true;
}

typedef struct Preset {
    const char *name;
    LlamaConfig config;
} Preset;

#define LLAMA3_SCALING {.llama3 = true, .factor = 8, .low_freq_factor = 1, .high_freq_factor = 4, \
                        .original_max_position = 8192}

// The byte-level presets (data/'s 256 bytes + 6 specials) are random stand-ins
// for a pretrained model: their init std is 1/sqrt(hidden) rather than 0.02, so
// that the frozen lm_head can express confident predictions (logit range is
// about std * hidden) and LoRA alone can learn a task on them.
static const Preset PRESETS[] = {
    {"tiny", {.vocab_size = 262, .hidden_size = 32, .intermediate_size = 64, .n_layers = 2, .n_heads = 4,
              .n_kv_heads = 2, .head_dim = 8, .max_position = 512, .rms_eps = 1e-5f, .rope_theta = 10000,
              .bos_token_id = 256, .eos_token_id = 257, .initializer_range = 0.1767767f}},
    {"demo", {.vocab_size = 262, .hidden_size = 64, .intermediate_size = 176, .n_layers = 2, .n_heads = 4,
              .n_kv_heads = 2, .head_dim = 16, .max_position = 512, .rms_eps = 1e-5f, .rope_theta = 10000,
              .bos_token_id = 256, .eos_token_id = 257, .initializer_range = 0.125f}},
    {"small", {.vocab_size = 262, .hidden_size = 256, .intermediate_size = 688, .n_layers = 4, .n_heads = 8,
               .n_kv_heads = 4, .head_dim = 32, .max_position = 2048, .rms_eps = 1e-5f, .rope_theta = 10000,
               .bos_token_id = 256, .eos_token_id = 257, .initializer_range = 0.0625f}},
    // The second CPU benchmark shape (bench/, docs/BENCHMARKS.md): ~155M parameters, Llama 2's vocabulary size.
    {"medium", {.vocab_size = 32000, .hidden_size = 1024, .intermediate_size = 2816, .n_layers = 8, .n_heads = 16,
                .n_kv_heads = 8, .head_dim = 64, .max_position = 2048, .rms_eps = 1e-5f, .rope_theta = 10000,
                .bos_token_id = 1, .eos_token_id = 2, .initializer_range = 0.02f}},
    {"llama3-8b", {.vocab_size = 128256, .hidden_size = 4096, .intermediate_size = 14336, .n_layers = 32,
                   .n_heads = 32, .n_kv_heads = 8, .head_dim = 128, .max_position = 8192, .rms_eps = 1e-5f,
                   .rope_theta = 500000, .bos_token_id = 128000, .eos_token_id = 128001,
                   .initializer_range = 0.02f}},
    {"llama3.1-8b", {.vocab_size = 128256, .hidden_size = 4096, .intermediate_size = 14336, .n_layers = 32,
                     .n_heads = 32, .n_kv_heads = 8, .head_dim = 128, .max_position = 131072, .rms_eps = 1e-5f,
                     .rope_theta = 500000, .rope_scaling = LLAMA3_SCALING, .bos_token_id = 128000,
                     .eos_token_id = 128001, .initializer_range = 0.02f}},
};

bool llama_config_preset(const char *name, LlamaConfig *out, Error *err) {
    char names[256] = "";
    for (size_t i = 0; i < sizeof PRESETS / sizeof PRESETS[0]; i++) {
        if (strcmp(name, PRESETS[i].name) == 0) {
            *out = PRESETS[i].config;
            return true;
        }
        strncat(names, i ? ", " : "", sizeof names - strlen(names) - 1);
        strncat(names, PRESETS[i].name, sizeof names - strlen(names) - 1);
    }
    return fail(err, "unknown model preset '%s' (known: %s)", name, names);
}
