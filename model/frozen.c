// model: the frozen weights: one allocation carved per Hugging Face tensor
// name (an NF4 linear's entry points at its Nf4Weight instead), looked up and
// visited by name, and transformers' random init for tests and the demo.
#include "model_private.h"

static void add_frozen(Model *m, Arena *arena, void **slot, const char *name, int64_t rows, int64_t cols) {
    *slot = arena_take(arena, (size_t)(rows * (cols ? cols : 1)) * m->act_size);
    if (!arena->base) return;
    FrozenEntry *e = &m->frozen[m->n_frozen++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->tensor = (Tensor){.dtype = m->ops->act_dtype, .ndim = cols ? 2 : 1, .shape = {rows, cols}, .data = *slot};
}

// An NF4 linear takes no act_dtype memory: its entry points at its Nf4Weight.
static void add_frozen_linear(Model *m, Arena *arena, int layer, LoraTarget t, const char *name) {
    int in, out;
    linear_shape(&m->config, t, &in, &out);
    if (!m->options.nf4) {
        add_frozen(m, arena, &m->layers[layer].linear[t], name, out, in);
        return;
    }
    if (!arena->base) return;
    FrozenEntry *e = &m->frozen[m->n_frozen++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->tensor = (Tensor){.dtype = m->ops->act_dtype, .ndim = 2, .shape = {out, in}};
    e->nf4 = &m->nf4[layer * LORA_TARGET_COUNT + t];
}

size_t layout_frozen(Model *m, uint8_t *base) {
    const LlamaConfig *c = &m->config;
    Arena arena = {base, 0};
    char name[PARAM_NAME_MAX];
    m->n_frozen = 0;
    add_frozen(m, &arena, &m->embed_tokens, "model.embed_tokens.weight", c->vocab_size, c->hidden_size);
    for (int l = 0; l < c->n_layers; l++) {
        LayerWeights *w = &m->layers[l];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        add_frozen(m, &arena, &w->input_layernorm, name, c->hidden_size, 0);
        for (int t = 0; t < LORA_TARGET_COUNT; t++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, module_group(t), LORA_TARGET_NAMES[t]);
            add_frozen_linear(m, &arena, l, (LoraTarget)t, name);
        }
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        add_frozen(m, &arena, &w->post_attention_layernorm, name, c->hidden_size, 0);
    }
    add_frozen(m, &arena, &m->final_norm, "model.norm.weight", c->hidden_size, 0);
    if (c->tie_embeddings) {
        m->lm_head = m->embed_tokens;
    } else {
        add_frozen(m, &arena, &m->lm_head, "lm_head.weight", c->vocab_size, c->hidden_size);
    }
    for (int k = 0; is_openvla(m) && k < FUSED_PROJECTOR_LINEARS; k++) {
        LoraLinear *l = &m->fused.fc[k];
        snprintf(name, sizeof name, "projector.fc%d.weight", k + 1);
        add_frozen(m, &arena, (void **)&l->W, name, l->out, l->in);
        snprintf(name, sizeof name, "projector.fc%d.bias", k + 1);
        add_frozen(m, &arena, (void **)&l->b, name, l->out, 0);
    }
    return arena.used;
}

bool model_frozen_tensor(Model *m, const char *name, Tensor *out, Error *err) {
    for (int i = 0; i < m->n_frozen; i++) {
        if (strcmp(m->frozen[i].name, name) == 0) {
            if (m->frozen[i].nf4) return fail(err, "frozen tensor '%s' is NF4 (see model_visit_nf4)", name);
            *out = m->frozen[i].tensor;
            return true;
        }
    }
    return fail(err, "the model has no frozen tensor '%s' (it has %s, ..., %s)", name, m->frozen[0].name,
                m->frozen[m->n_frozen - 1].name);
}

bool model_visit_frozen(Model *m, FrozenVisitor visit, void *context, Error *err) {
    for (int i = 0; i < m->n_frozen; i++) {
        if (!m->frozen[i].nf4 && !visit(context, m->frozen[i].name, &m->frozen[i].tensor, err)) return false;
    }
    return true;
}

// transformers' LlamaPreTrainedModel._init_weights: linears and embeddings
// N(0, initializer_range^2), RMSNorm weights 1, biases (OpenVLA's projector) 0.
bool model_init_random_base(Model *m, uint64_t seed, Error *err) {
    float std = m->config.initializer_range > 0 ? m->config.initializer_range : 0.02f;
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = 0; i < m->n_frozen; i++) {
        Tensor *t = &m->frozen[i].tensor;
        size_t n = (size_t)tensor_numel(t);
        float *host = checked_malloc(n * sizeof(float), m->frozen[i].name, err);
        if (!host) return fail_context(err, "random base weights: ");
        bool bias = strstr(m->frozen[i].name, ".bias") != NULL;
        for (size_t j = 0; j < n; j++) host[j] = t->ndim == 1 ? (bias ? 0.0f : 1.0f) : std * rng_normal(&rng);
        bool ok = m->frozen[i].nf4 ? nf4_weight_quantize_from(m->frozen[i].nf4, m->ops, host, err)
                                   : (m->ops->upload_f32(m->ops, t->data, host, n), m->ops->check(m->ops, err));
        free(host);
        if (!ok) return fail_context(err, "random base weight %s: ", m->frozen[i].name);
    }
    return true;
}
