// model: the step of the Llama decoder with LoRA on any of its seven linears:
// forward, backward and evaluation of a micro-batch.
//
// Per layer, with N = B * T tokens, C hidden, H query heads, KV kv heads:
//   ln1 = rmsnorm(x)                      q, k, v = lora_linear(ln1)
//   att = causal_gqa_attention(rope(q), rope(k), v)   (RoPE applied inside attention as q, k load)
//   mid = x + lora_linear_o(att)          ln2 = rmsnorm(mid)
//   h = silu(lora_linear_gate(ln2)) * lora_linear_up(ln2)
//   out = mid + lora_linear_down(h)
// lora_linear(x) = x W^T + s * (dropout(x) A^T) B^T, W frozen, A and B trainable.
#include <math.h>

#include "model_private.h"

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

static bool dropout_active(const Model *m, const StepState *st) { return st->train && m->lora.dropout > 0; }

// Each (layer, target) draws its own mask, as PEFT gives each module its own Dropout.
static uint64_t dropout_seed_of(const StepState *st, int layer, LoraTarget t) {
    return rng_hash(st->dropout_seed, (uint64_t)layer * LORA_TARGET_COUNT + t);
}

// Linear t of a layer as lora_linear.h describes it; W (dequantized first with
// NF4) only where the caller multiplies by it.
static LoraLinear layer_linear(Model *m, const StepState *st, int layer, LoraTarget t, bool with_weight) {
    const LoraSlot *slot = &m->slots[layer * LORA_TARGET_COUNT + t];
    LoraLinear l = {.W = with_weight ? layer_linear_weight(m, layer, t) : NULL,
                    .A = slot->A,
                    .B = slot->B,
                    .r = m->lora.r,
                    .scale = lora_scale(&m->lora),
                    .dropout = dropout_active(m, st) ? m->lora.dropout : 0.0f,
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
    AttentionRope rope = {m->positions, m->inv_freq};
    ops->attention_forward(ops, a->att, a->lse, a->q, a->k, a->v, st->seq_start, &rope, st->B, st->T, c->n_heads,
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
    AttentionRope rope = {m->positions, m->inv_freq};
    ops->attention_backward(ops, m->dq, m->dk, m->dv, m->d_att, a->att, a->lse, a->q, a->k, a->v, st->seq_start, &rope,
                            st->B, st->T, c->n_heads, c->n_kv_heads, c->head_dim);
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
    int *labels = row ? checked_calloc(2 * (size_t)batch->B, sizeof(int), "answer counts", err) : NULL;
    AnswerCounts answers = {.labels = labels};
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
