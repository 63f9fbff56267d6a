// model: QLoRA's base linears stored as NF4 (quant/quant.h), each dequantized
// into one act_dtype scratch right before its matmuls.
#include "model_private.h"

static size_t largest_linear(const LlamaConfig *c) {
    size_t largest = 0;
    for (int t = 0; t < LORA_TARGET_COUNT; t++) {
        int in, out;
        linear_shape(c, (LoraTarget)t, &in, &out);
        if ((size_t)in * out > largest) largest = (size_t)in * out;
    }
    return largest;
}

// The scratch an NF4 linear is dequantized into before its matmul: the
// weight (largest linear, act_dtype), then its fp32 absmax (double quant).
size_t nf4_scratch_weight_bytes(const Model *m) { return largest_linear(&m->config) * m->act_size; }
size_t nf4_scratch_absmax_bytes(const Model *m) {
    return nf4_blocks(largest_linear(&m->config), NF4_BLOCK) * sizeof(float);
}

bool nf4_linears_allocate(Model *m, Error *err) {
    const LlamaConfig *c = &m->config;
    m->nf4 = checked_calloc((size_t)c->n_layers * LORA_TARGET_COUNT, sizeof(Nf4Weight), "NF4 weights", err);
    if (!m->nf4) return false;
    for (int i = 0; i < c->n_layers * LORA_TARGET_COUNT; i++) {
        int in, out;
        linear_shape(c, (LoraTarget)(i % LORA_TARGET_COUNT), &in, &out);
        if (!nf4_weight_alloc(&m->nf4[i], m->ops, out, in, m->options.nf4_double_quant, err))
            return fail_context(err, "NF4 weights: ");
    }
    m->nf4_weight = m->ops->alloc(m->ops, nf4_scratch_weight_bytes(m), err);
    m->nf4_absmax = m->nf4_weight ? m->ops->alloc(m->ops, nf4_scratch_absmax_bytes(m), err) : NULL;
    return m->nf4_absmax ? true : fail_context(err, "NF4 dequantization scratch: ");
}

size_t nf4_linears_bytes(const Model *m) {
    const LlamaConfig *c = &m->config;
    size_t bytes = 0;
    for (int i = 0; i < c->n_layers * LORA_TARGET_COUNT; i++) {
        int in, out;
        linear_shape(c, (LoraTarget)(i % LORA_TARGET_COUNT), &in, &out);
        bytes += nf4_weight_bytes(out, in, m->options.nf4_double_quant);
    }
    return bytes;
}

const void *layer_linear_weight(Model *m, int layer, LoraTarget t) {
    if (!m->options.nf4) return m->layers[layer].linear[t];
    nf4_weight_dequantize(&m->nf4[layer * LORA_TARGET_COUNT + t], m->ops, m->nf4_weight, m->nf4_absmax);
    return m->nf4_weight;
}

bool model_is_nf4(const Model *m) { return m->options.nf4; }

bool model_visit_nf4(Model *m, Nf4Visitor visit, void *context, Error *err) {
    for (int i = 0; i < m->n_frozen; i++) {
        if (m->frozen[i].nf4 && !visit(context, m->frozen[i].name, m->frozen[i].nf4, err)) return false;
    }
    return true;
}
