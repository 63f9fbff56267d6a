// model: the activation arena, one allocation sized at creation for
// (max_batch, max_seq_len): each layer's saved tensors (or one reused set with
// activation checkpointing), the backward's gradients, the batch's ids and the
// projectors' rows.
#include "model_private.h"

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

size_t layout_activations(Model *m, uint8_t *base) {
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
