// model: the trainable parameters: the ParamTable over one flat fp32 buffer
// (LoRA A and B of every targeted linear, layer by layer, then the projector's),
// PEFT's LoRA init, the compute copy and the gradients.
#include <math.h>

#include "model_private.h"

bool build_param_table(Model *m, Error *err) {
    const LlamaConfig *c = &m->config;
    int per_layer = 0;
    for (int t = 0; t < LORA_TARGET_COUNT; t++) per_layer += m->lora.targets[t] ? 2 : 0;
    ParamTable *table = &m->params;
    // room for OpenVLA's projector adapters and for the mlp2x projector's four (+ 1 as before)
    size_t capacity = (size_t)per_layer * c->n_layers + 2 * FUSED_PROJECTOR_LINEARS + 5;
    if (has_lora_towers(m)) capacity += (size_t)openvla_tower_lora_n_params(m->options.lora_towers);
    table->entries = checked_calloc(capacity, sizeof(ParamEntry), "parameter table", err);
    m->slots = checked_calloc((size_t)c->n_layers * LORA_TARGET_COUNT, sizeof(LoraSlot), "LoRA slots", err);
    if (!table->entries || !m->slots) return false;
    for (int l = 0; l < c->n_layers; l++) {
        for (int t = 0; t < LORA_TARGET_COUNT; t++) {
            if (!m->lora.targets[t]) continue;
            int in, out;
            linear_shape(c, (LoraTarget)t, &in, &out);
            for (int which = 0; which < 2; which++) { // lora_A (r, in), then lora_B (out, r)
                ParamEntry *e = param_table_append(table, which ? out : m->lora.r, which ? m->lora.r : in);
                snprintf(e->name, sizeof e->name, "model.layers.%d.%s.%s.lora_%c.weight", l, module_group(t),
                         LORA_TARGET_NAMES[t], which ? 'B' : 'A');
            }
            LoraSlot *slot = &m->slots[l * LORA_TARGET_COUNT + t];
            slot->A = &table->entries[table->count - 2];
            slot->B = &table->entries[table->count - 1];
        }
    }
    table->n_decoder_lora = table->count;
    if (is_openvla(m) && m->lora.target_projector) fused_projector_add_lora(&m->fused, table, m->lora.r);
    int towers_first = table->count;
    if (has_lora_towers(m)) openvla_tower_lora_add_params(m->options.lora_towers, m->lora.r, table);
    table->n_tower_lora = table->count - towers_first;
    table->n_lora = table->count;
    if (has_projector(m) && !is_openvla(m))
        projector_add_params(&m->projector, table, m->options.projector_in, c->hidden_size);
    return true;
}

ParamEntry *param_table_append(ParamTable *table, int64_t rows, int64_t cols) {
    ParamEntry *e = &table->entries[table->count++];
    e->shape[0] = rows;
    e->shape[1] = cols;
    e->numel = (size_t)(rows * cols);
    e->offset = table->total;
    table->total += e->numel;
    return e;
}

const ParamEntry *param_table_find(const ParamTable *table, const char *name) {
    for (int i = 0; i < table->count; i++) {
        if (strcmp(table->entries[i].name, name) == 0) return &table->entries[i];
    }
    return NULL;
}

// PEFT's init: A kaiming_uniform_(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)),
// or `gaussian` N(0, (1/r)^2); B = 0.
bool model_init_lora(Model *m, uint64_t seed, Error *err) {
    float *host = checked_malloc(m->params.total * sizeof(float) + 1, "the trainable parameters' initial values", err);
    if (!host) return false;
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = 0; i < m->params.n_lora; i++) {
        const ParamEntry *e = &m->params.entries[i];
        float *p = host + e->offset;
        bool is_a = strstr(e->name, "lora_A") != NULL;
        float bound = 1.0f / sqrtf((float)e->shape[1]);
        for (size_t j = 0; j < e->numel; j++) {
            if (!is_a)
                p[j] = 0.0f;
            else if (m->lora.init == LORA_INIT_GAUSSIAN)
                p[j] = rng_normal(&rng) / (float)m->lora.r;
            else
                p[j] = (2.0f * rng_uniform(&rng) - 1.0f) * bound;
        }
    }
    if (m->projector.w1) projector_init(&m->projector, host, &rng);
    m->ops->upload(m->ops, m->param_data, host, m->params.total * sizeof(float));
    free(host);
    model_sync_params(m);
    return m->ops->check(m->ops, err) || fail_context(err, "initialising the trainable parameters: ");
}

void model_sync_params(Model *m) { m->ops->params_to_act(m->ops, m->param_act, m->param_data, m->params.total); }

const void *model_image_feature_grads(const Model *m) {
    return is_openvla(m) ? m->fused.d_features : m->projector.d_features;
}

void model_zero_grads(Model *m) { m->ops->zero(m->ops, m->grad_data, flat_capacity(m) * sizeof(float)); }
