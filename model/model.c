// model: creation from options (the tables, then one allocation each for the
// trainable buffers, the frozen weights and the activations), the same layout
// measured without allocating (model_plan), destruction and accessors.
#include "model_private.h"

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

    if (m->options.nf4 && !nf4_linears_allocate(m, err)) return false;
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
        m->fused.fc[k] =
            (LoraLinear){.in = shapes[k][0], .out = shapes[k][1], .r = m->lora.r, .scale = lora_scale(&m->lora)};
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
        return fail(err,
                    "projector: max_image_rows must be at least 1 and image_token_id %d inside the vocabulary (%d)",
                    options->image_token_id, options->config.vocab_size),
               NULL;
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
    *plan = (ModelPlan){.frozen_bytes = layout_frozen(m, NULL),
                        .n_params = n,
                        .param_bytes = capacity * sizeof(float) + n * m->act_size,
                        .grad_bytes = capacity * sizeof(float),
                        .activation_bytes = layout_activations(m, NULL),
                        .scratch_bytes = backend_scratch_bytes(m)};
    if (options->nf4) {
        plan->nf4_bytes = nf4_linears_bytes(m);
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
