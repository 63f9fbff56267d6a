// model private: the Model struct and what its files share. The model is split
// by concern: frozen.c (the frozen weights' layout and table), activations.c
// (the activation arena's layout), params.c (the trainable parameters' table and
// LoRA init), nf4.c (QLoRA's NF4 linears), model.c (creation, the memory plan,
// accessors) and llama.c (the step: forward, backward, evaluation).
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "lora_linear.h"
#include "projector.h"
#include "fused_projector.h"

typedef struct LoraSlot { // one targeted linear of one layer
    const ParamEntry *A;  // (r, in)
    const ParamEntry *B;  // (out, r)
} LoraSlot;

typedef struct LayerActs {           // what one layer's backward reads; (N, ...) each
    void *ln1, *ln2;                 // (N, C) normalised inputs of attention and MLP
    float *rstd1, *rstd2;            // (N)
    void *q, *k, *v;                 // (N, H*hd), (N, KV*hd), (N, KV*hd), before rope (attention rotates q, k)
    void *att;                       // (N, H*hd) attention output
    float *lse;                      // (B, H, T)
    void *mid;                       // (N, C) residual after attention
    void *gate, *up, *h;             // (N, I), h = silu(gate) * up
    void *lora_h[LORA_TARGET_COUNT]; // (N, r) dropout(x) A^T of each targeted linear
} LayerActs;

typedef struct FrozenEntry {
    char name[PARAM_NAME_MAX];
    Tensor tensor;  // data in backend memory (NULL for an NF4 linear)
    Nf4Weight *nf4; // the NF4 linear, or NULL
} FrozenEntry;

struct Model {
    const Ops *ops;
    ModelOptions options;
    LlamaConfig config;
    LoraConfig lora;
    size_t act_size; // bytes per activation element

    // frozen weights: one allocation
    void *frozen_block;
    void *embed_tokens;   // (V, C)
    LayerWeights *layers; // (L)
    void *final_norm;     // (C)
    void *lm_head;        // (V, C), embed_tokens when tied
    FrozenEntry *frozen;
    int n_frozen;
    Nf4Weight *nf4;    // (L, LORA_TARGET_COUNT) with options.nf4, else NULL
    void *nf4_weight;  // (largest linear) act_dtype: the dequantized weight of the running linear
    float *nf4_absmax; // its fp32 absmax (double quant)

    // trainable parameters: fp32 masters, gradients, compute copy
    ParamTable params;
    float *param_data, *grad_data; // flat_capacity floats: params.total, then zeros up to ZeRO's equal shards
    void *param_act;
    LoraSlot *slots;      // (L, LORA_TARGET_COUNT), A == NULL where not targeted
    Projector projector;  // w1 == NULL without one
    FusedProjector fused; // OpenVLA's (ModelOptions.projector_kind), W == NULL without one

    // activations: one allocation sized for (max_batch, max_seq_len)
    void *act_block;
    size_t act_bytes;
    void **layer_input;                    // (L + 1) x (N, C); layer_input[L] feeds the final norm
    LayerActs *acts;                       // L of them, or 1 reused when checkpointing
    void *final_ln;                        // (N, C)
    float *final_rstd;                     // (N)
    void *logits;                          // (chunk, V)
    void *d_res, *d_ln, *d_final_ln;       // (N, C)
    void *dq, *dk, *dv, *d_att;            // (N, H*hd), (N, KV*hd) x 2, (N, H*hd)
    void *d_gate, *d_up, *d_h;             // (N, I)
    void *lora_x, *lora_dx;                // (N, max in) dropout(x) and its gradient
    void *lora_dh;                         // (N, r)
    int32_t *tokens, *targets, *positions; // (N)
    int32_t *seq_start;                    // (N) of a packed batch
    float *inv_freq;                       // (hd / 2)
    float *loss;                           // scalar: the loss sum of the step's micro-batches so far
    int32_t *host_positions;               // (N) host memory: the batch's positions before their upload
    int32_t *host_image_rows;              // (max_image_rows) host memory: the image tokens' positions
    int n_image_rows;                      // of the current batch
    const void *image_features;            // (n_image_rows, projector_in) of the current batch
};

// ----------------------------------------------------------------------------
// shapes

static inline int q_width(const LlamaConfig *c) { return c->n_heads * c->head_dim; }
static inline int kv_width(const LlamaConfig *c) { return c->n_kv_heads * c->head_dim; }

// in and out features of a targeted linear
static inline void linear_shape(const LlamaConfig *c, LoraTarget t, int *in, int *out) {
    switch (t) {
    case LORA_Q:
        *in = c->hidden_size;
        *out = q_width(c);
        break;
    case LORA_K:
    case LORA_V:
        *in = c->hidden_size;
        *out = kv_width(c);
        break;
    case LORA_O:
        *in = q_width(c);
        *out = c->hidden_size;
        break;
    case LORA_GATE:
    case LORA_UP:
        *in = c->hidden_size;
        *out = c->intermediate_size;
        break;
    default:
        *in = c->intermediate_size;
        *out = c->hidden_size;
        break;
    }
}

static inline const char *module_group(LoraTarget t) { return t <= LORA_O ? "self_attn" : "mlp"; }

static inline int max_linear_in(const LlamaConfig *c) {
    int widest = c->hidden_size;
    if (q_width(c) > widest) widest = q_width(c);
    if (c->intermediate_size > widest) widest = c->intermediate_size;
    return widest;
}

static inline bool has_projector(const Model *m) { return m->options.projector_in > 0; }
static inline bool is_openvla(const Model *m) {
    return has_projector(m) && m->options.projector_kind == PROJECTOR_OPENVLA;
}
static inline bool has_lora_towers(const Model *m) {
    return is_openvla(m) && m->lora.target_towers && m->options.lora_towers != NULL;
}

static inline int lm_head_chunk(const Model *m) {
    int N = m->options.max_batch * m->options.max_seq_len;
    int chunk = m->options.lm_head_chunk;
    return chunk > 0 && chunk < N ? chunk : N;
}

// The flat buffers' floats: params.total rounded up to a multiple of
// options.flat_shards, so that ZeRO's shards are equal (ncclReduceScatter,
// ncclAllGather); the padding stays zero.
static inline size_t flat_capacity(const Model *m) {
    size_t shards = m->options.flat_shards > 1 ? (size_t)m->options.flat_shards : 1;
    return (m->params.total + shards - 1) / shards * shards;
}

// ----------------------------------------------------------------------------
// across the model's files

// frozen.c: assigns the frozen weights from base (NULL: measures); the bytes used.
size_t layout_frozen(Model *m, uint8_t *base);
// activations.c: assigns the activations from base (NULL: measures); the bytes used.
size_t layout_activations(Model *m, uint8_t *base);
// params.c: the ParamTable of the targeted linears (and projector) and the LoRA slots.
bool build_param_table(Model *m, Error *err);
// nf4.c: the NF4 linears and their dequantization scratch; their bytes.
bool nf4_linears_allocate(Model *m, Error *err);
size_t nf4_linears_bytes(const Model *m);
size_t nf4_scratch_weight_bytes(const Model *m);
size_t nf4_scratch_absmax_bytes(const Model *m);
// W (out, in) of a layer's linear in act_dtype: an NF4 weight is dequantized into
// m->nf4_weight first, the same values for the forward and the backward.
const void *layer_linear_weight(Model *m, int layer, LoraTarget t);
