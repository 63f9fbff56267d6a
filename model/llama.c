// model: Llama decoder with LoRA on any of its seven linears.
//
// Per layer, with N = B * T tokens, C hidden, H query heads, KV kv heads:
//   ln1 = rmsnorm(x)                      q, k, v = lora_linear(ln1)
//   q, k = rope(q), rope(k)               att = causal_gqa_attention(q, k, v)
//   mid = x + lora_linear_o(att)          ln2 = rmsnorm(mid)
//   h = silu(lora_linear_gate(ln2)) * lora_linear_up(ln2)
//   out = mid + lora_linear_down(h)
// lora_linear(x) = x W^T + s * (dropout(x) A^T) B^T, W frozen, A and B trainable.
#include <math.h>
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

typedef struct LayerActs { // what one layer's backward reads; (N, ...) each
    void *ln1, *ln2;        // (N, C) normalised inputs of attention and MLP
    float *rstd1, *rstd2;   // (N)
    void *q, *k, *v;        // (N, H*hd), (N, KV*hd), (N, KV*hd), after rope
    void *att;              // (N, H*hd) attention output
    float *lse;             // (B, H, T)
    void *mid;              // (N, C) residual after attention
    void *gate, *up, *h;    // (N, I), h = silu(gate) * up
    void *lora_h[LORA_TARGET_COUNT]; // (N, r) dropout(x) A^T of each targeted linear
} LayerActs;

typedef struct FrozenEntry {
    char name[PARAM_NAME_MAX];
    Tensor tensor;   // data in backend memory (NULL for an NF4 linear)
    Nf4Weight *nf4;  // the NF4 linear, or NULL
} FrozenEntry;

struct Model {
    const Ops *ops;
    ModelOptions options;
    LlamaConfig config;
    LoraConfig lora;
    size_t act_size; // bytes per activation element

    // frozen weights: one allocation
    void *frozen_block;
    void *embed_tokens;       // (V, C)
    LayerWeights *layers;     // (L)
    void *final_norm;         // (C)
    void *lm_head;            // (V, C), embed_tokens when tied
    FrozenEntry *frozen;
    int n_frozen;
    Nf4Weight *nf4;           // (L, LORA_TARGET_COUNT) with options.nf4, else NULL
    void *nf4_weight;         // (largest linear) act_dtype: the dequantized weight of the running linear
    float *nf4_absmax;        // its fp32 absmax (double quant)

    // trainable parameters: fp32 masters, gradients, compute copy
    ParamTable params;
    float *param_data, *grad_data;  // flat_capacity floats: params.total, then zeros up to ZeRO's equal shards
    void *param_act;
    LoraSlot *slots;          // (L, LORA_TARGET_COUNT), A == NULL where not targeted
    Projector projector;      // w1 == NULL without one
    FusedProjector fused;     // OpenVLA's (ModelOptions.projector_kind), W == NULL without one

    // activations: one allocation sized for (max_batch, max_seq_len)
    void *act_block;
    size_t act_bytes;
    void **layer_input;       // (L + 1) x (N, C); layer_input[L] feeds the final norm
    LayerActs *acts;          // L of them, or 1 reused when checkpointing
    void *final_ln;           // (N, C)
    float *final_rstd;        // (N)
    void *logits;             // (chunk, V)
    void *d_res, *d_ln, *d_final_ln; // (N, C)
    void *dq, *dk, *dv, *d_att;      // (N, H*hd), (N, KV*hd) x 2, (N, H*hd)
    void *d_gate, *d_up, *d_h;       // (N, I)
    void *lora_x, *lora_dx;          // (N, max in) dropout(x) and its gradient
    void *lora_dh;                   // (N, r)
    int32_t *tokens, *targets, *positions; // (N)
    int32_t *seq_start;                    // (N) of a packed batch
    float *inv_freq;                 // (hd / 2)
    float *loss;                     // scalar: the loss sum of the step's micro-batches so far
    int32_t *host_positions;         // (N) host memory: the batch's positions before their upload
    int32_t *host_image_rows;        // (max_image_rows) host memory: the image tokens' positions
    int n_image_rows;                // of the current batch
    const void *image_features;      // (n_image_rows, projector_in) of the current batch
};

// ----------------------------------------------------------------------------
// shapes

static int q_width(const LlamaConfig *c) { return c->n_heads * c->head_dim; }
static int kv_width(const LlamaConfig *c) { return c->n_kv_heads * c->head_dim; }

// in and out features of a targeted linear
static void linear_shape(const LlamaConfig *c, LoraTarget t, int *in, int *out) {
    switch (t) {
    case LORA_Q: *in = c->hidden_size; *out = q_width(c); break;
    case LORA_K:
    case LORA_V: *in = c->hidden_size; *out = kv_width(c); break;
    case LORA_O: *in = q_width(c); *out = c->hidden_size; break;
    case LORA_GATE:
    case LORA_UP: *in = c->hidden_size; *out = c->intermediate_size; break;
    default: *in = c->intermediate_size; *out = c->hidden_size; break;
    }
}

static const char *module_group(LoraTarget t) { return t <= LORA_O ? "self_attn" : "mlp"; }

static int max_linear_in(const LlamaConfig *c) {
    int widest = c->hidden_size;
    if (q_width(c) > widest) widest = q_width(c);
    if (c->intermediate_size > widest) widest = c->intermediate_size;
    return widest;
}

static bool has_projector(const Model *m) { return m->options.projector_in > 0; }
static bool is_openvla(const Model *m) { return has_projector(m) && m->options.projector_kind == PROJECTOR_OPENVLA; }
static bool has_lora_towers(const Model *m) {
    return is_openvla(m) && m->lora.target_towers && m->options.lora_towers != NULL;
}

// ----------------------------------------------------------------------------
// memory layout: each layout function assigns pointers from an Arena over a
// base and returns the bytes used; a first pass with base = NULL measures.

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

static size_t layout_frozen(Model *m, uint8_t *base) {
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

static void layout_layer_acts(Model *m, Arena *arena, LayerActs *a) {
    const LlamaConfig *c = &m->config;
    size_t N = (size_t)m->options.max_batch * m->options.max_seq_len, s = m->act_size;
    a->ln1 = arena_take(arena, N * c->hidden_size * s);
    a->ln2 = arena_take(arena, N * c->hidden_size * s);
    a->rstd1 = arena_take(arena, N * sizeof(float));
    a->rstd2 = arena_take(arena, N * sizeof(float));
    a->q = arena_take(arena, N * q_width(c) * s);
    a->k = arena_take(arena, N * kv_width(c) * s);
    a->v = arena_take(arena, N * kv_width(c) * s);
    a->att = arena_take(arena, N * q_width(c) * s);
    a->lse = arena_take(arena, N * c->n_heads * sizeof(float));
    a->mid = arena_take(arena, N * c->hidden_size * s);
    a->gate = arena_take(arena, N * c->intermediate_size * s);
    a->up = arena_take(arena, N * c->intermediate_size * s);
    a->h = arena_take(arena, N * c->intermediate_size * s);
    for (int t = 0; t < LORA_TARGET_COUNT; t++) {
        a->lora_h[t] = m->lora.targets[t] ? arena_take(arena, N * m->lora.r * s) : NULL;
    }
}

static void layout_fused_projector(Model *m, Arena *arena) {
    FusedProjector *p = &m->fused;
    size_t R = (size_t)m->options.max_image_rows, C = (size_t)m->config.hidden_size, s = m->act_size;
    size_t in = (size_t)p->fc[0].in, wide = (size_t)p->fc[0].out, widest = wide > C ? wide : C;
    p->h1 = arena_take(arena, R * wide * s);
    p->g1 = arena_take(arena, R * wide * s);
    p->h2 = arena_take(arena, R * C * s);
    p->g2 = arena_take(arena, R * C * s);
    p->out = arena_take(arena, R * C * s);
    for (int k = 0; k < FUSED_PROJECTOR_LINEARS; k++)
        p->lora_h[k] = p->fc[k].A ? arena_take(arena, R * m->lora.r * s) : NULL;
    p->d_out = arena_take(arena, R * C * s);
    p->d_g2 = arena_take(arena, R * C * s);
    p->d_g1 = arena_take(arena, R * wide * s);
    p->d_h1 = arena_take(arena, R * wide * s);
    p->d_features = m->options.image_feature_grads ? arena_take(arena, R * in * s) : NULL;
    p->scratch.x_dropped = arena_take(arena, R * widest * s);
    p->scratch.dx_dropped = arena_take(arena, R * widest * s);
    p->scratch.dh = arena_take(arena, R * m->lora.r * s);
    p->rows = arena_take(arena, R * sizeof(int32_t));
}

static int lm_head_chunk(const Model *m) {
    int N = m->options.max_batch * m->options.max_seq_len;
    int chunk = m->options.lm_head_chunk;
    return chunk > 0 && chunk < N ? chunk : N;
}

static size_t layout_activations(Model *m, uint8_t *base) {
    const LlamaConfig *c = &m->config;
    size_t N = (size_t)m->options.max_batch * m->options.max_seq_len, s = m->act_size;
    Arena arena = {base, 0};
    for (int l = 0; l <= c->n_layers; l++) m->layer_input[l] = arena_take(&arena, N * c->hidden_size * s);
    int n_acts = m->options.activation_checkpointing ? 1 : c->n_layers;
    for (int l = 0; l < n_acts; l++) layout_layer_acts(m, &arena, &m->acts[l]);
    m->final_ln = arena_take(&arena, N * c->hidden_size * s);
    m->final_rstd = arena_take(&arena, N * sizeof(float));
    m->logits = arena_take(&arena, (size_t)lm_head_chunk(m) * c->vocab_size * s);
    m->d_res = arena_take(&arena, N * c->hidden_size * s);
    m->d_ln = arena_take(&arena, N * c->hidden_size * s);
    m->d_final_ln = arena_take(&arena, N * c->hidden_size * s);
    m->dq = arena_take(&arena, N * q_width(c) * s);
    m->dk = arena_take(&arena, N * kv_width(c) * s);
    m->dv = arena_take(&arena, N * kv_width(c) * s);
    m->d_att = arena_take(&arena, N * q_width(c) * s);
    m->d_gate = arena_take(&arena, N * c->intermediate_size * s);
    m->d_up = arena_take(&arena, N * c->intermediate_size * s);
    m->d_h = arena_take(&arena, N * c->intermediate_size * s);
    m->lora_x = arena_take(&arena, N * max_linear_in(c) * s);
    m->lora_dx = arena_take(&arena, N * max_linear_in(c) * s);
    m->lora_dh = arena_take(&arena, N * m->lora.r * s);
    m->tokens = arena_take(&arena, N * sizeof(int32_t));
    m->targets = arena_take(&arena, N * sizeof(int32_t));
    m->positions = arena_take(&arena, N * sizeof(int32_t));
    m->seq_start = arena_take(&arena, N * sizeof(int32_t));
    m->inv_freq = arena_take(&arena, (size_t)c->head_dim / 2 * sizeof(float));
    m->loss = arena_take(&arena, sizeof(float));
    if (m->projector.w1) {
        size_t R = (size_t)m->options.max_image_rows, C = (size_t)c->hidden_size;
        Projector *p = &m->projector;
        p->h1 = arena_take(&arena, R * C * s);
        p->g = arena_take(&arena, R * C * s);
        p->out = arena_take(&arena, R * C * s);
        p->d_out = arena_take(&arena, R * C * s);
        p->d_g = arena_take(&arena, R * C * s);
        p->d_features = m->options.image_feature_grads ? arena_take(&arena, R * p->in * s) : NULL;
        p->rows = arena_take(&arena, R * sizeof(int32_t));
    }
    if (is_openvla(m)) layout_fused_projector(m, &arena);
    return arena.used;
}

// ----------------------------------------------------------------------------
// trainable parameters

static bool build_param_table(Model *m, Error *err) {
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
                ParamEntry *e = &table->entries[table->count++];
                snprintf(e->name, sizeof e->name, "model.layers.%d.%s.%s.lora_%c.weight", l, module_group(t),
                         LORA_TARGET_NAMES[t], which ? 'B' : 'A');
                e->shape[0] = which ? out : m->lora.r;
                e->shape[1] = which ? m->lora.r : in;
                e->numel = (size_t)(e->shape[0] * e->shape[1]);
                e->offset = table->total;
                table->total += e->numel;
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

const ParamEntry *param_table_find(const ParamTable *table, const char *name) {
    for (int i = 0; i < table->count; i++) {
        if (strcmp(table->entries[i].name, name) == 0) return &table->entries[i];
    }
    return NULL;
}

// The flat buffers' floats: params.total rounded up to a multiple of
// options.flat_shards, so that ZeRO's shards are equal (ncclReduceScatter,
// ncclAllGather); the padding stays zero.
static size_t flat_capacity(const Model *m) {
    size_t shards = m->options.flat_shards > 1 ? (size_t)m->options.flat_shards : 1;
    return (m->params.total + shards - 1) / shards * shards;
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
            if (!is_a) p[j] = 0.0f;
            else if (m->lora.init == LORA_INIT_GAUSSIAN) p[j] = rng_normal(&rng) / (float)m->lora.r;
            else p[j] = (2.0f * rng_uniform(&rng) - 1.0f) * bound;
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

// ----------------------------------------------------------------------------
// creation

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
static size_t nf4_scratch_weight_bytes(const Model *m) { return largest_linear(&m->config) * m->act_size; }
static size_t nf4_scratch_absmax_bytes(const Model *m) {
    return nf4_blocks(largest_linear(&m->config), NF4_BLOCK) * sizeof(float);
}

static bool allocate_nf4(Model *m, Error *err) {
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

static size_t nf4_resident_bytes(const Model *m) {
    const LlamaConfig *c = &m->config;
    size_t bytes = 0;
    for (int i = 0; i < c->n_layers * LORA_TARGET_COUNT; i++) {
        int in, out;
        linear_shape(c, (LoraTarget)(i % LORA_TARGET_COUNT), &in, &out);
        bytes += nf4_weight_bytes(out, in, m->options.nf4_double_quant);
    }
    return bytes;
}

// The scratch the backend's ops take during a step of the largest batch
// (attention's backward), reserved at creation so the step allocates nothing.
static size_t backend_scratch_bytes(const Model *m) {
    return attention_backward_scratch_bytes(m->options.max_batch, m->options.max_seq_len, m->config.n_heads);
}

static bool allocate(Model *m, Error *err) {
    const Ops *ops = m->ops;
    size_t n = m->params.total, capacity = flat_capacity(m);
    m->param_data = ops->alloc(ops, capacity * sizeof(float), err);
    m->grad_data = m->param_data ? ops->alloc(ops, capacity * sizeof(float), err) : NULL;
    m->param_act = m->grad_data ? ops->alloc(ops, n * m->act_size, err) : NULL;
    if (!m->param_act) return fail_context(err, "trainable parameters: ");
    if (capacity > n) ops->zero(ops, m->param_data + n, (capacity - n) * sizeof(float));
    if (m->options.trainable_only) return true;

    if (m->options.nf4 && !allocate_nf4(m, err)) return false;
    size_t frozen_bytes = layout_frozen(m, NULL);
    m->frozen_block = ops->alloc(ops, frozen_bytes, err);
    if (!m->frozen_block) return fail_context(err, "frozen weights: ");
    layout_frozen(m, m->frozen_block);

    m->act_bytes = layout_activations(m, NULL);
    m->act_block = ops->alloc(ops, m->act_bytes, err);
    if (!m->act_block) return fail_context(err, "activations: ");
    layout_activations(m, m->act_block);
    ops->zero(ops, m->loss, sizeof(float));
    if (!ops->reserve_scratch(ops, backend_scratch_bytes(m), err)) return fail_context(err, "backend scratch: ");
    size_t N = (size_t)m->options.max_batch * m->options.max_seq_len;
    m->host_positions = checked_malloc(N * sizeof(int32_t), "batch positions", err);
    m->host_image_rows = checked_malloc(((size_t)m->options.max_image_rows + 1) * sizeof(int32_t), "image rows", err);
    return m->host_positions && m->host_image_rows;
}

// fc1 (4 in, in), fc2 (C, 4 in), fc3 (C, C); the adapters' rank and scale.
static void fused_projector_shape(Model *m) {
    int in = m->options.projector_in, C = m->config.hidden_size, wide = fused_projector_wide(in);
    int shapes[FUSED_PROJECTOR_LINEARS][2] = {{in, wide}, {wide, C}, {C, C}};
    for (int k = 0; k < FUSED_PROJECTOR_LINEARS; k++) {
        m->fused.fc[k] = (LoraLinear){.in = shapes[k][0], .out = shapes[k][1], .r = m->lora.r,
                                      .scale = lora_scale(&m->lora)};
    }
}

// The model's tables and parameter layout, nothing in backend memory yet.
static Model *model_shell(const ModelOptions *options, Error *err) {
    if (!llama_config_validate(&options->config, err)) return NULL;
    if (options->lora.r < 1) return fail(err, "lora.r must be at least 1"), NULL;
    if (options->max_batch < 1 || options->max_seq_len < 1)
        return fail(err, "micro-batch and sequence length must be at least 1"), NULL;
    if (options->projector_in > 0 && (options->max_image_rows < 1 || options->image_token_id < 0 ||
                                      options->image_token_id >= options->config.vocab_size))
        return fail(err, "projector: max_image_rows must be at least 1 and image_token_id %d inside the vocabulary (%d)",
                    options->image_token_id, options->config.vocab_size), NULL;
    Model *m = checked_calloc(1, sizeof *m, "model", err);
    if (!m) return NULL;
    m->ops = options->ops;
    m->options = *options;
    m->config = options->config;
    m->lora = options->lora;
    m->act_size = dtype_size(m->ops->act_dtype);
    if (is_openvla(m)) fused_projector_shape(m);
    int L = m->config.n_layers;
    m->layers = checked_calloc((size_t)L, sizeof(LayerWeights), "layer weights", err);
    size_t n_frozen = (size_t)L * 9 + 3 + 2 * FUSED_PROJECTOR_LINEARS;
    m->frozen = checked_calloc(n_frozen, sizeof(FrozenEntry), "frozen tensor table", err);
    m->layer_input = checked_calloc((size_t)L + 1, sizeof(void *), "layer inputs", err);
    m->acts = checked_calloc((size_t)L, sizeof(LayerActs), "layer activations", err);
    if (!m->layers || !m->frozen || !m->layer_input || !m->acts || !build_param_table(m, err)) {
        model_destroy(m);
        return NULL;
    }
    return m;
}

bool model_plan(const ModelOptions *options, ModelPlan *plan, Error *err) {
    Model *m = model_shell(options, err);
    if (!m) return false;
    size_t n = m->params.total;
    size_t capacity = flat_capacity(m);
    *plan = (ModelPlan){.frozen_bytes = layout_frozen(m, NULL), .n_params = n,
                        .param_bytes = capacity * sizeof(float) + n * m->act_size, .grad_bytes = capacity * sizeof(float),
                        .activation_bytes = layout_activations(m, NULL), .scratch_bytes = backend_scratch_bytes(m)};
    if (options->nf4) {
        plan->nf4_bytes = nf4_resident_bytes(m);
        plan->nf4_scratch_bytes = nf4_scratch_weight_bytes(m) + nf4_scratch_absmax_bytes(m);
    }
    model_destroy(m);
    return true;
}

Model *model_create(const ModelOptions *options, Error *err) {
    Model *m = model_shell(options, err);
    if (!m) return NULL;
    if (!allocate(m, err)) {
        model_destroy(m);
        return NULL;
    }
    if (!options->trainable_only) {
        float inv_freq[m->config.head_dim / 2];
        rope_inverse_frequencies(inv_freq, m->config.head_dim, m->config.rope_theta, &m->config.rope_scaling);
        m->ops->upload(m->ops, m->inv_freq, inv_freq, sizeof inv_freq);
    }
    if (!model_init_lora(m, options->seed, err)) {
        model_destroy(m);
        return NULL;
    }
    model_zero_grads(m);
    return m;
}

void model_destroy(Model *m) {
    if (!m) return;
    const Ops *ops = m->ops;
    ops->free(ops, m->frozen_block);
    for (int i = 0; m->nf4 && i < m->config.n_layers * LORA_TARGET_COUNT; i++) nf4_weight_free(&m->nf4[i], ops);
    free(m->nf4);
    ops->free(ops, m->nf4_weight);
    ops->free(ops, m->nf4_absmax);
    ops->free(ops, m->param_data);
    ops->free(ops, m->grad_data);
    ops->free(ops, m->param_act);
    ops->free(ops, m->act_block);
    free(m->layers);
    free(m->frozen);
    free(m->layer_input);
    free(m->acts);
    free(m->host_positions);
    free(m->host_image_rows);
    free(m->params.entries);
    free(m->slots);
    free(m);
}

const LlamaConfig *model_config(const Model *m) { return &m->config; }
const LoraConfig *model_lora(const Model *m) { return &m->lora; }
const Ops *model_ops(const Model *m) { return m->ops; }
const ParamTable *model_params(const Model *m) { return &m->params; }
float *model_param_data(Model *m) { return m->param_data; }
float *model_grad_data(Model *m) { return m->grad_data; }
const void *model_param_act(const Model *m) { return m->param_act; }
size_t model_activation_bytes(const Model *m) { return m->act_bytes; }

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

bool model_is_nf4(const Model *m) { return m->options.nf4; }

bool model_visit_nf4(Model *m, Nf4Visitor visit, void *context, Error *err) {
    for (int i = 0; i < m->n_frozen; i++) {
        if (m->frozen[i].nf4 && !visit(context, m->frozen[i].name, m->frozen[i].nf4, err)) return false;
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

// ----------------------------------------------------------------------------
// LoRA linear: forward and backward

typedef struct StepState {
    int B, T, N;
    const int32_t *seq_start; // m->seq_start for a packed batch, else NULL
    bool train;
    uint64_t dropout_seed;
    const StepOptions *options; // its grads_ready hook
} StepState;

static void *act_at(const Model *m, void *base, size_t elements) {
    return (uint8_t *)base + elements * m->act_size;
}

// W (out, in) of a linear in act_dtype: an NF4 weight is dequantized into
// m->nf4_weight first, the same values for the forward and the backward.
static const void *linear_weight(Model *m, int layer, LoraTarget t) {
    if (!m->options.nf4) return m->layers[layer].linear[t];
    nf4_weight_dequantize(&m->nf4[layer * LORA_TARGET_COUNT + t], m->ops, m->nf4_weight, m->nf4_absmax);
    return m->nf4_weight;
}

static bool dropout_active(const Model *m, const StepState *st) { return st->train && m->lora.dropout > 0; }

// Each (layer, target) draws its own mask, as PEFT gives each module its own Dropout.
static uint64_t dropout_seed_of(const StepState *st, int layer, LoraTarget t) {
    return rng_hash(st->dropout_seed, (uint64_t)layer * LORA_TARGET_COUNT + t);
}

// Linear t of a layer as lora_linear.h describes it; W (dequantized first with
// NF4) only where the caller multiplies by it.
static LoraLinear layer_linear(Model *m, const StepState *st, int layer, LoraTarget t, bool with_weight) {
    const LoraSlot *slot = &m->slots[layer * LORA_TARGET_COUNT + t];
    LoraLinear l = {.W = with_weight ? linear_weight(m, layer, t) : NULL, .A = slot->A, .B = slot->B, .r = m->lora.r,
                    .scale = lora_scale(&m->lora), .dropout = dropout_active(m, st) ? m->lora.dropout : 0.0f,
                    .dropout_seed = dropout_seed_of(st, layer, t)};
    linear_shape(&m->config, t, &l.in, &l.out);
    return l;
}

static LoraScratch lora_scratch(const Model *m) {
    return (LoraScratch){.x_dropped = m->lora_x, .dx_dropped = m->lora_dx, .dh = m->lora_dh};
}

// y (N, out) = x W^T + s * (dropout(x) A^T) B^T; lora_h (N, r) keeps dropout(x) A^T.
static void linear_forward(Model *m, const StepState *st, int layer, LoraTarget t, void *y, const void *x,
                           void *lora_h) {
    LoraLinear l = layer_linear(m, st, layer, t, true);
    LoraScratch scratch = lora_scratch(m);
    lora_linear_forward(m->ops, &l, m->param_act, &scratch, y, x, lora_h, st->N);
}

// Given dy (N, out): dx += dy W + dropout'(s * dy B A) (dx NULL: not computed);
// dB += s dy^T h; dA += (s dy B)^T dropout(x).
static void linear_backward(Model *m, const StepState *st, int layer, LoraTarget t, void *dx, const void *dy,
                            const void *x, const void *lora_h) {
    LoraLinear l = layer_linear(m, st, layer, t, dx != NULL);
    LoraScratch scratch = lora_scratch(m);
    lora_linear_backward(m->ops, &l, m->param_act, m->grad_data, &scratch, dx, dy, x, lora_h, st->N);
}

// ----------------------------------------------------------------------------
// one decoder layer

static LayerActs *acts_of(Model *m, int layer) {
    return &m->acts[m->options.activation_checkpointing ? 0 : layer];
}

static void layer_forward(Model *m, const StepState *st, int l, const void *x, void *x_out) {
    const Ops *ops = m->ops;
    const LlamaConfig *c = &m->config;
    const LayerWeights *w = &m->layers[l];
    LayerActs *a = acts_of(m, l);
    int N = st->N, C = c->hidden_size;
    ops->rmsnorm_forward(ops, a->ln1, a->rstd1, x, w->input_layernorm, N, C, c->rms_eps);
    linear_forward(m, st, l, LORA_Q, a->q, a->ln1, a->lora_h[LORA_Q]);
    linear_forward(m, st, l, LORA_K, a->k, a->ln1, a->lora_h[LORA_K]);
    linear_forward(m, st, l, LORA_V, a->v, a->ln1, a->lora_h[LORA_V]);
    ops->rope_forward(ops, a->q, m->positions, m->inv_freq, N, c->n_heads, c->head_dim);
    ops->rope_forward(ops, a->k, m->positions, m->inv_freq, N, c->n_kv_heads, c->head_dim);
    ops->attention_forward(ops, a->att, a->lse, a->q, a->k, a->v, st->seq_start, st->B, st->T, c->n_heads,
                           c->n_kv_heads, c->head_dim);
    linear_forward(m, st, l, LORA_O, a->mid, a->att, a->lora_h[LORA_O]);
    ops->residual_rmsnorm_forward(ops, a->ln2, a->rstd2, a->mid, x, w->post_attention_layernorm, N, C, c->rms_eps);
    linear_forward(m, st, l, LORA_GATE, a->gate, a->ln2, a->lora_h[LORA_GATE]);
    linear_forward(m, st, l, LORA_UP, a->up, a->ln2, a->lora_h[LORA_UP]);
    ops->swiglu_forward(ops, a->h, a->gate, a->up, (size_t)N * c->intermediate_size);
    linear_forward(m, st, l, LORA_DOWN, x_out, a->h, a->lora_h[LORA_DOWN]);
    ops->add_inplace(ops, x_out, a->mid, (size_t)N * C);
}

// On entry m->d_res holds dL/d(layer output); on return dL/d(layer input x),
// unless need_dx is false (the first layer of a text batch: only the frozen
// embedding would read it), when the LoRA gradients are all it computes.
static void layer_backward(Model *m, const StepState *st, int l, const void *x, bool need_dx) {
    const Ops *ops = m->ops;
    const LlamaConfig *c = &m->config;
    const LayerWeights *w = &m->layers[l];
    const LayerActs *a = acts_of(m, l);
    int N = st->N, C = c->hidden_size;
    size_t s = m->act_size, n_mlp = (size_t)N * c->intermediate_size;
    // out = mid + down(h)
    ops->zero(ops, m->d_h, n_mlp * s);
    linear_backward(m, st, l, LORA_DOWN, m->d_h, m->d_res, a->h, a->lora_h[LORA_DOWN]);
    ops->zero(ops, m->d_gate, n_mlp * s);
    ops->zero(ops, m->d_up, n_mlp * s);
    ops->swiglu_backward(ops, m->d_gate, m->d_up, m->d_h, a->gate, a->up, n_mlp);
    ops->zero(ops, m->d_ln, (size_t)N * C * s);
    linear_backward(m, st, l, LORA_GATE, m->d_ln, m->d_gate, a->ln2, a->lora_h[LORA_GATE]);
    linear_backward(m, st, l, LORA_UP, m->d_ln, m->d_up, a->ln2, a->lora_h[LORA_UP]);
    ops->rmsnorm_backward(ops, m->d_res, m->d_ln, a->mid, w->post_attention_layernorm, a->rstd2, N, C);
    // mid = x + o(att)
    ops->zero(ops, m->d_att, (size_t)N * q_width(c) * s);
    linear_backward(m, st, l, LORA_O, m->d_att, m->d_res, a->att, a->lora_h[LORA_O]);
    ops->zero(ops, m->dq, (size_t)N * q_width(c) * s);
    ops->zero(ops, m->dk, (size_t)N * kv_width(c) * s);
    ops->zero(ops, m->dv, (size_t)N * kv_width(c) * s);
    ops->attention_backward(ops, m->dq, m->dk, m->dv, m->d_att, a->att, a->lse, a->q, a->k, a->v, st->seq_start, st->B,
                            st->T, c->n_heads, c->n_kv_heads, c->head_dim);
    ops->rope_backward(ops, m->dq, m->positions, m->inv_freq, N, c->n_heads, c->head_dim);
    ops->rope_backward(ops, m->dk, m->positions, m->inv_freq, N, c->n_kv_heads, c->head_dim);
    void *d_ln = need_dx ? m->d_ln : NULL;
    if (need_dx) ops->zero(ops, m->d_ln, (size_t)N * C * s);
    linear_backward(m, st, l, LORA_Q, d_ln, m->dq, a->ln1, a->lora_h[LORA_Q]);
    linear_backward(m, st, l, LORA_K, d_ln, m->dk, a->ln1, a->lora_h[LORA_K]);
    linear_backward(m, st, l, LORA_V, d_ln, m->dv, a->ln1, a->lora_h[LORA_V]);
    if (need_dx) ops->rmsnorm_backward(ops, m->d_res, m->d_ln, x, w->input_layernorm, a->rstd1, N, C);
}

// ----------------------------------------------------------------------------
// whole model

static int32_t *image_rows(Model *m) { return is_openvla(m) ? m->fused.rows : m->projector.rows; }

// The projector's adapters with this step's dropout (seeds after the decoder's).
static FusedProjector fused_for_step(const Model *m, const StepState *st) {
    FusedProjector p = m->fused;
    for (int k = 0; k < FUSED_PROJECTOR_LINEARS; k++) {
        p.fc[k].dropout = dropout_active(m, st) ? m->lora.dropout : 0.0f;
        p.fc[k].dropout_seed = rng_hash(st->dropout_seed, (uint64_t)m->config.n_layers * LORA_TARGET_COUNT + k);
    }
    return p;
}

// The positions of image_token_id in tokens, which must number n_image_rows.
static bool upload_image_rows(Model *m, const Batch *batch, Error *err) {
    int N = batch->B * batch->T, R = batch->n_image_rows;
    m->n_image_rows = 0;
    m->image_features = NULL;
    if (!has_projector(m)) {
        if (R > 0) return fail(err, "the batch has %d image feature rows but the model has no projector", R);
        return true;
    }
    if (R > m->options.max_image_rows)
        return fail(err, "the batch has %d image feature rows; the model was sized for %d", R,
                    m->options.max_image_rows);
    if (R > 0 && !batch->image_features) return fail(err, "the batch has %d image rows but no features", R);
    int found = 0;
    for (int i = 0; i < N; i++) {
        if (batch->tokens[i] != m->options.image_token_id) continue;
        if (found < R) m->host_image_rows[found] = i;
        found++;
    }
    if (found != R)
        return fail(err, "the batch has %d image tokens (id %d) but %d image feature rows", found,
                    m->options.image_token_id, R);
    m->ops->upload_async(m->ops, image_rows(m), m->host_image_rows, (size_t)R * sizeof(int32_t));
    m->n_image_rows = R;
    m->image_features = batch->image_features;
    return true;
}

// RoPE positions: i % T, or with seq_start the offset in the token's segment.
// Each seq_start entry starts a segment (t) or continues the previous token's.
static bool batch_positions(const Batch *batch, int32_t *positions, Error *err) {
    for (int i = 0; i < batch->B * batch->T; i++) {
        int t = i % batch->T;
        int start = batch->seq_start ? batch->seq_start[i] : 0;
        if (batch->seq_start && start != t && (t == 0 || start != batch->seq_start[i - 1]))
            return fail(err, "seq_start %d at row %d, position %d neither starts a segment there nor continues "
                             "the previous token's", start, i / batch->T, t);
        positions[i] = t - start;
    }
    return true;
}

static bool upload_batch(Model *m, const Batch *batch, StepState *st, Error *err) {
    if (batch->B < 1 || batch->T < 1 || batch->B > m->options.max_batch || batch->T > m->options.max_seq_len)
        return fail(err, "batch (%d, %d) does not fit the model's activations (%d, %d)", batch->B, batch->T,
                    m->options.max_batch, m->options.max_seq_len);
    st->B = batch->B;
    st->T = batch->T;
    st->N = batch->B * batch->T;
    for (int i = 0; i < st->N; i++) {
        int id = batch->tokens[i], target = batch->targets ? batch->targets[i] : -100;
        if (id < 0 || id >= m->config.vocab_size || target < -100 || target >= m->config.vocab_size ||
            (target < 0 && target != -100))
            return fail(err, "token %d or target %d at position %d is outside the vocabulary (%d)", id, target, i,
                        m->config.vocab_size);
    }
    if (!batch_positions(batch, m->host_positions, err) || !upload_image_rows(m, batch, err)) return false;
    size_t bytes = (size_t)st->N * sizeof(int32_t);
    const Ops *ops = m->ops;
    ops->upload_async(ops, m->tokens, batch->tokens, bytes);
    ops->upload_async(ops, m->positions, m->host_positions, bytes);
    st->seq_start = batch->seq_start ? m->seq_start : NULL;
    if (batch->seq_start) ops->upload_async(ops, m->seq_start, batch->seq_start, bytes);
    if (batch->targets) ops->upload_async(ops, m->targets, batch->targets, bytes);
    return true;
}

// Embedding, every layer, final norm: m->final_ln holds the (N, C) hidden states.
static void forward_trunk(Model *m, const StepState *st) {
    const Ops *ops = m->ops;
    const LlamaConfig *c = &m->config;
    ops->embedding_forward(ops, m->layer_input[0], m->tokens, m->embed_tokens, st->N, c->hidden_size);
    if (m->n_image_rows > 0) { // splice: image features replace the image tokens' embeddings
        const void *projected = m->projector.out;
        if (is_openvla(m)) {
            FusedProjector fused = fused_for_step(m, st);
            fused_projector_forward(ops, &fused, m->param_act, m->image_features, m->n_image_rows);
            projected = m->fused.out;
        } else {
            projector_forward(ops, &m->projector, m->param_act, m->image_features, m->n_image_rows);
        }
        ops->scatter_rows(ops, m->layer_input[0], image_rows(m), projected, m->n_image_rows, c->hidden_size);
    }
    for (int l = 0; l < c->n_layers; l++) layer_forward(m, st, l, m->layer_input[l], m->layer_input[l + 1]);
    ops->rmsnorm_forward(ops, m->final_ln, m->final_rstd, m->layer_input[c->n_layers], m->final_norm, st->N,
                         c->hidden_size, c->rms_eps);
}

// lm_head + cross-entropy in chunks of tokens: logits never exceed (chunk, V).
// With gradients, d_final_ln = sum over chunks of dlogits @ lm_head.
static void lm_head_loss(Model *m, const StepState *st, float grad_scale) {
    const Ops *ops = m->ops;
    int C = m->config.hidden_size, V = m->config.vocab_size, chunk = lm_head_chunk(m);
    if (!st->options->accumulate_loss) ops->zero(ops, m->loss, sizeof(float));
    for (int start = 0; start < st->N; start += chunk) {
        int rows = st->N - start < chunk ? st->N - start : chunk;
        const void *hidden = act_at(m, m->final_ln, (size_t)start * C);
        ops->matmul(ops, m->logits, hidden, m->lm_head, rows, V, C, false, true, 1.0f, 0.0f);
        ops->cross_entropy(ops, m->loss, st->train ? m->logits : NULL, m->logits, m->targets + start, rows, V,
                           grad_scale);
        if (st->train) {
            void *d_hidden = act_at(m, m->d_final_ln, (size_t)start * C);
            ops->matmul(ops, d_hidden, m->logits, m->lm_head, rows, C, V, false, false, 1.0f, 0.0f);
        }
    }
}

// [*begin, *end) of the flat buffer: layer l's LoRA tensors (every layer
// targets the same linears), or with l = n_layers the projector's (adapters or weights), not the towers'
// adapters after it (their gradients come from the towers' backward, after model_step).
static void param_range(const Model *m, int l, size_t *begin, size_t *end) {
    const ParamTable *t = &m->params;
    int per_layer = t->n_decoder_lora / m->config.n_layers, first = l * per_layer;
    bool projector = l == m->config.n_layers;
    int last = projector ? t->count - 1 - t->n_tower_lora : first + per_layer - 1;
    *begin = first <= last ? t->entries[first].offset : 0;
    *end = first <= last ? t->entries[last].offset + t->entries[last].numel : 0;
}

static void notify_grads_ready(const Model *m, const StepState *st, int l) {
    if (!st->options->grads_ready) return;
    size_t begin, end;
    param_range(m, l, &begin, &end);
    if (end > begin) st->options->grads_ready(st->options->grads_ready_context, begin, end);
}

static void backward(Model *m, const StepState *st) {
    const Ops *ops = m->ops;
    const LlamaConfig *c = &m->config;
    int L = c->n_layers;
    ops->zero(ops, m->d_res, (size_t)st->N * c->hidden_size * m->act_size);
    ops->rmsnorm_backward(ops, m->d_res, m->d_final_ln, m->layer_input[L], m->final_norm, m->final_rstd, st->N,
                          c->hidden_size);
    for (int l = L - 1; l >= 0; l--) {
        // Recompute: layer l's output buffer is no longer read, and the
        // recomputation writes the same values (dropout masks are counter-based).
        if (m->options.activation_checkpointing) layer_forward(m, st, l, m->layer_input[l], m->layer_input[l + 1]);
        layer_backward(m, st, l, m->layer_input[l], l > 0 || m->n_image_rows > 0);
        notify_grads_ready(m, st, l);
    }
    bool fused_backward = m->lora.target_projector || m->fused.d_features; // else nothing to compute
    if (m->n_image_rows > 0 && is_openvla(m) && fused_backward) { // m->d_res = dL/d(embeddings)
        FusedProjector fused = fused_for_step(m, st);
        fused_projector_backward(ops, &fused, m->param_act, m->grad_data, m->image_features, m->d_res,
                                 m->n_image_rows);
    } else if (m->n_image_rows > 0 && !is_openvla(m)) {
        projector_backward(ops, &m->projector, m->param_act, m->grad_data, m->image_features, m->d_res,
                           m->n_image_rows);
    }
    notify_grads_ready(m, st, L);
}

// Issues the micro-batch's ops and returns: nothing here waits for the device.
bool model_step(Model *m, const Batch *batch, const StepOptions *options, Error *err) {
    StepState st = {.train = options->train, .dropout_seed = options->dropout_seed, .options = options};
    if (!batch->targets) return fail(err, "model_step needs targets");
    if (!upload_batch(m, batch, &st, err)) return false;
    forward_trunk(m, &st);
    lm_head_loss(m, &st, options->grad_scale);
    if (st.train) backward(m, &st);
    if (m->ops->check && !m->ops->check(m->ops, err)) return fail_context(err, "%s backend: ", m->ops->name);
    return true;
}

// The one host wait of a step: the download completes every op issued so far.
bool model_loss_sum(Model *m, double *loss_sum, Error *err) {
    float loss;
    m->ops->download(m->ops, &loss, m->loss, sizeof loss);
    if (m->ops->check && !m->ops->check(m->ops, err)) return fail_context(err, "%s backend: ", m->ops->name);
    *loss_sum = loss;
    return true;
}

bool model_logits(Model *m, const Batch *batch, float *logits, Error *err) {
    StepState st = {.train = false};
    if (!upload_batch(m, batch, &st, err)) return false;
    forward_trunk(m, &st);
    int C = m->config.hidden_size, V = m->config.vocab_size, chunk = lm_head_chunk(m);
    for (int start = 0; start < st.N; start += chunk) {
        int rows = st.N - start < chunk ? st.N - start : chunk;
        m->ops->matmul(m->ops, m->logits, act_at(m, m->final_ln, (size_t)start * C), m->lm_head, rows, V, C, false,
                       true, 1.0f, 0.0f);
        m->ops->download_f32(m->ops, logits + (size_t)start * V, m->logits, (size_t)rows * V);
    }
    if (m->ops->check && !m->ops->check(m->ops, err)) return fail_context(err, "%s backend: ", m->ops->name);
    return true;
}

bool model_image_embeddings(Model *m, float *out, Error *err) {
    const void *projected = is_openvla(m) ? m->fused.out : m->projector.out;
    size_t n = (size_t)m->n_image_rows * m->config.hidden_size;
    if (n > 0) m->ops->download_f32(m->ops, out, projected, n);
    if (m->ops->check && !m->ops->check(m->ops, err)) return fail_context(err, "%s backend: ", m->ops->name);
    return true;
}

// -log softmax(row)[target] in double, and the row's first largest logit's id.
static double row_loss_and_argmax(const float *row, int V, int target, int *argmax_out) {
    int argmax = 0;
    for (int v = 1; v < V; v++)
        if (row[v] > row[argmax]) argmax = v;
    double sum = 0;
    for (int v = 0; v < V; v++) sum += exp((double)row[v] - row[argmax]);
    *argmax_out = argmax;
    return log(sum) + row[argmax] - row[target];
}

// Per batch row: its label tokens and their argmax hits.
typedef struct AnswerCounts {
    int *labels, *hits; // (B,) each
} AnswerCounts;

bool model_eval_batch(Model *m, const Batch *batch, EvalSums *sums, Error *err) {
    return model_eval_batch_argmax(m, batch, sums, NULL, err);
}

bool model_eval_batch_argmax(Model *m, const Batch *batch, EvalSums *sums, int32_t *argmax, Error *err) {
    StepState st = {.train = false};
    if (!upload_batch(m, batch, &st, err)) return false;
    forward_trunk(m, &st);
    int C = m->config.hidden_size, V = m->config.vocab_size, chunk = lm_head_chunk(m);
    float *row = checked_malloc((size_t)V * sizeof(float), "an evaluation row of logits", err);
    AnswerCounts answers = {.labels = row ? checked_calloc(2 * (size_t)batch->B, sizeof(int), "answer counts", err) : NULL};
    if (!answers.labels) {
        free(row);
        return false;
    }
    answers.hits = answers.labels + batch->B;
    for (int start = 0; start < st.N; start += chunk) {
        int rows = st.N - start < chunk ? st.N - start : chunk;
        m->ops->matmul(m->ops, m->logits, act_at(m, m->final_ln, (size_t)start * C), m->lm_head, rows, V, C, false,
                       true, 1.0f, 0.0f);
        for (int r = 0; r < rows; r++) {
            int target = batch->targets[start + r];
            if (target == -100) continue;
            m->ops->download_f32(m->ops, row, act_at(m, m->logits, (size_t)r * V), (size_t)V);
            int best;
            sums->loss_sum += row_loss_and_argmax(row, V, target, &best);
            bool hit = best == target;
            if (argmax) argmax[start + r] = best;
            sums->n_correct += hit;
            sums->n_label_tokens++;
            int batch_row = (start + r) / batch->T;
            answers.labels[batch_row]++;
            answers.hits[batch_row] += hit;
        }
    }
    for (int b = 0; b < batch->B; b++) {
        sums->n_answers += answers.labels[b] > 0;
        sums->n_answers_exact += answers.labels[b] > 0 && answers.hits[b] == answers.labels[b];
    }
    free(answers.labels);
    free(row);
    if (m->ops->check && !m->ops->check(m->ops, err)) return fail_context(err, "%s backend: ", m->ops->name);
    return true;
}
